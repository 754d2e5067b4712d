//! Test station: `marker` with a small logic change (to measure the binary
//! delta of a code change). Same body, same marker bytes; it logs `logic=2`
//! and writes the lap into the slot's first 8 bytes. See README.md.

#[path = "../../marker/src/body.rs"]
mod body;

use ringhost_station::StopContext;

/// Logged as `logic=2`.
const LOGIC: u32 = 2;

/// The slot with its first 8 bytes replaced by the lap (u64 little-endian);
/// a shorter slot grows to 8 bytes, the rest of a longer one is kept.
fn next_slot(ctx: &StopContext, mut slot: Vec<u8>) -> Vec<u8> {
    if slot.len() < 8 {
        slot.resize(8, 0);
    }
    slot[..8].copy_from_slice(&ctx.lap.to_le_bytes());
    slot
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::tests::ctx;

    #[test]
    fn lap_in_first_eight_bytes() {
        assert_eq!(next_slot(&ctx(5), Vec::new()), 5u64.to_le_bytes().to_vec());
        assert_eq!(
            next_slot(&ctx(1), vec![9, 9, 9]),
            1u64.to_le_bytes().to_vec()
        );
        let mut want = 258u64.to_le_bytes().to_vec();
        want.extend([7, 7]);
        assert_eq!(
            next_slot(&ctx(258), vec![1, 1, 1, 1, 1, 1, 1, 1, 7, 7]),
            want
        );
        assert_eq!(LOGIC, 2);
    }
}
