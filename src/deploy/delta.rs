//! Binary deltas between two versions of a module: zstd with the old
//! module as a reference prefix (what `zstd --patch-from` does), long
//! distance matching on and a window covering the whole base, so the
//! unchanged bulk of a module costs a few bytes.
//!
//! A delta is only ever applied to the base it was made from; the result's
//! sha-256 is checked by the caller, so a wrong base gives a clear error,
//! never a wrong module.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use bytes::Bytes;

use crate::model::Hash;

/// zstd level for deltas. Measured on a 1 MB module: a one-constant
/// change gives 104 B at level 19 (150 ms), 108 B at 9 (27 ms), 174 B at 3
/// (2.4 ms); a small code change 2.2 KB at level 9, under 2 KB at 19. A
/// delta is made once per release (each node passes on the one it got), so
/// the tightest level is affordable up to a few MB; above, level 9 keeps it
/// to tens of ms.
fn level(target: usize) -> i32 {
    if target <= 4 << 20 { 19 } else { 9 }
}

/// log2 of the window: at least the base plus the target, at least 1 MiB.
fn window_log(base: usize, target: usize) -> u32 {
    let need = (base + target).max(1 << 20);
    (usize::BITS - (need - 1).leading_zeros()).min(30)
}

/// A delta that turns `base` into `target`.
///
/// # Errors
/// When zstd refuses its parameters (modules over 1 GiB).
pub fn make(base: &[u8], target: &[u8]) -> Result<Vec<u8>> {
    let wlog = window_log(base.len(), target.len());
    let mut enc = zstd::stream::Encoder::with_ref_prefix(Vec::new(), level(target.len()), base)
        .context("zstd encoder")?;
    enc.long_distance_matching(true)?;
    enc.window_log(wlog)?;
    enc.include_checksum(false)?;
    enc.set_pledged_src_size(Some(target.len() as u64))?;
    enc.write_all(target)?;
    let mut out = enc.finish()?;
    // The decoder needs the window to allow it; carry it in one byte.
    out.insert(0, wlog as u8);
    Ok(out)
}

/// Rebuilds the target from `base` and a delta made by [`make`]. The result
/// is cut off at `max_len` bytes (a larger output is an error), and the
/// decoder's window is at most what [`make`] uses for this base and a
/// target of `max_len` bytes (the next power of two of `base.len() +
/// max_len`, at least 1 MiB): zstd allocates the window a frame declares,
/// so a hostile delta cannot make it allocate more than about
/// `2 * (base.len() + max_len)` bytes, nor output more than `max_len`.
///
/// # Errors
/// When the delta is malformed, declares a larger window, needs another
/// base, or expands past `max_len`.
pub fn apply(base: &[u8], delta: &[u8], max_len: usize) -> Result<Vec<u8>> {
    let Some((&wlog, body)) = delta.split_first() else {
        bail!("empty delta");
    };
    let most = window_log(base.len(), max_len);
    if !(10..=most).contains(&u32::from(wlog)) {
        bail!(
            "delta has a bad window (2^{wlog}; a delta of at most {max_len} bytes \
             on a {} byte base needs at most 2^{most})",
            base.len()
        );
    }
    let mut dec = zstd::stream::Decoder::with_ref_prefix(body, base).context("zstd decoder")?;
    dec.window_log_max(u32::from(wlog))?;
    let mut out = Vec::new();
    dec.take(max_len as u64 + 1)
        .read_to_end(&mut out)
        .context("applying the delta")?;
    if out.len() > max_len {
        bail!("delta expands past {max_len} bytes");
    }
    Ok(out)
}

/// Deltas made or received lately, by (base, target) module hash: each
/// node of a ring is asked for the same delta its predecessor was asked
/// for, so it passes on the one it received instead of making it again.
#[derive(Clone, Default)]
pub struct Cache {
    inner: Arc<Mutex<VecDeque<Cached>>>,
}

/// A delta with its (base, target) hashes.
type Cached = ((Hash, Hash), Bytes);

/// Deltas kept.
const CACHED: usize = 16;

impl Cache {
    /// The delta from `base` to `target`, if kept.
    pub fn get(&self, base: &Hash, target: &Hash) -> Option<Bytes> {
        let q = self.inner.lock().expect("delta cache");
        q.iter()
            .find(|(k, _)| k == &(*base, *target))
            .map(|(_, d)| d.clone())
    }

    /// Keeps a delta (the oldest goes when full).
    pub fn put(&self, base: Hash, target: Hash, delta: Bytes) {
        let mut q = self.inner.lock().expect("delta cache");
        if q.iter().any(|(k, _)| k == &(base, target)) {
            return;
        }
        if q.len() >= CACHED {
            q.pop_front();
        }
        q.push_back(((base, target), delta));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic incompressible bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_one_constant_change_to_a_megabyte_is_tiny_and_round_trips() {
        let base = noise(1 << 20, 7);
        let mut target = base.clone();
        target[500_000..500_016].copy_from_slice(b"RINGHOST-MARK-07");
        let delta = make(&base, &target).unwrap();
        assert!(delta.len() < 2048, "delta {} bytes", delta.len());
        assert_eq!(apply(&base, &delta, 2 << 20).unwrap(), target);
    }

    #[test]
    fn wrong_base_or_garbage_or_too_large_is_an_error_or_a_different_result() {
        let base = noise(200_000, 1);
        let mut target = base.clone();
        target.extend_from_slice(b"more");
        let delta = make(&base, &target).unwrap();
        // Another base never yields the target (callers check the hash).
        let other = noise(200_000, 2);
        assert_ne!(apply(&other, &delta, 1 << 20).ok(), Some(target.clone()));
        assert!(apply(&base, b"", 1 << 20).is_err());
        assert!(apply(&base, b"\x14garbage", 1 << 20).is_err());
        assert!(apply(&base, &delta, 1000).is_err(), "max_len enforced");
        // A delta from nothing is a compressed full module.
        let full = make(&[], &target).unwrap();
        assert_eq!(apply(&[], &full, 1 << 20).unwrap(), target);
    }

    /// A zstd frame (no checksum, no content size) declaring a window of
    /// 2^`wlog` bytes, holding `data` in one raw block; the delta's own
    /// window byte says the same.
    fn delta_declaring_window(wlog: u8, data: &[u8]) -> Vec<u8> {
        let mut d = vec![wlog];
        d.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
        d.push(0x00); // frame header: no content size, not single-segment
        d.push((wlog - 10) << 3); // window descriptor: exponent, no mantissa
        let block = 1 | (u32::try_from(data.len()).unwrap() << 3); // last, raw
        d.extend_from_slice(&block.to_le_bytes()[..3]);
        d.extend_from_slice(data);
        d
    }

    #[test]
    fn a_delta_declaring_a_window_larger_than_base_and_max_len_need_is_refused() {
        // zstd allocates the window a frame declares: before the bound,
        // 1 GiB for a five-byte output.
        let huge = delta_declaring_window(30, b"hello");
        let err = apply(b"", &huge, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("bad window (2^30"), "{err}");
        // The same frame with the window a real delta would have is fine.
        let fits = delta_declaring_window(20, b"hello");
        assert_eq!(apply(b"", &fits, 1 << 20).unwrap(), b"hello");
        // The bound grows with the base and max_len, as make's window does.
        let base = noise(3 << 20, 5);
        let mut target = base.clone();
        target.extend_from_slice(b"tail");
        let delta = make(&base, &target).unwrap();
        assert_eq!(delta[0], 23);
        assert_eq!(apply(&base, &delta, 4 << 20).unwrap(), target);
        assert!(apply(&base[..1 << 20], &delta, 1 << 20).is_err());
    }
}
