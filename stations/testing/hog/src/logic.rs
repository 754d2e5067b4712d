//! The hog station's logic: allocate and touch memory without bound.

use core::hint::black_box;

/// Size of each allocation.
pub const CHUNK: usize = 1 << 20;

/// Allocates `CHUNK`-byte buffers, writing every byte of each, and keeps
/// them all; stops after `limit` chunks, or never when `limit` is `None`
/// (until allocation fails, which aborts). Returns the chunks kept.
pub fn hog(limit: Option<usize>) -> Vec<Vec<u8>> {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    while limit.is_none_or(|limit| kept.len() < limit) {
        // A non-zero fill writes every page: fresh wasm memory is already
        // zeroed, so a zeroed allocation might not touch it.
        let chunk = vec![0xA5u8; CHUNK];
        kept.push(black_box(chunk));
    }
    black_box(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_hog_touches_memory() {
        let kept = hog(Some(3));
        assert_eq!(kept.len(), 3);
        assert!(kept
            .iter()
            .all(|c| c.len() == CHUNK && c.iter().all(|&b| b == 0xA5)));
    }
}
