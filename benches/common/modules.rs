//! Station modules made for deploy benches: the marker station with one
//! constant changed (`with_mark`), and modules padded to a size with an
//! incompressible custom section (`padded`), so their size is real for
//! transfer, hashing and deltas while the code to compile stays small.
//! Included with `#[path]` by benches/deploy.rs and benches/fleet_deploy.rs.

#![allow(dead_code)]

use anyhow::{Context, Result, ensure};

/// The marker station's constant, as built.
pub const MARK: &[u8; 16] = b"RINGHOST-MARK-00";

/// Where the marker bytes are; they must appear exactly once.
pub fn mark_offset(module: &[u8]) -> Result<usize> {
    let mut hits = module
        .windows(MARK.len())
        .enumerate()
        .filter(|(_, w)| *w == MARK);
    let (at, _) = hits.next().context("marker bytes not found")?;
    ensure!(hits.next().is_none(), "marker bytes appear more than once");
    Ok(at)
}

/// `module` with its marker set to `RINGHOST-MARK-NN`: a valid module
/// that differs in one constant.
pub fn with_mark(module: &[u8], n: u8) -> Result<Vec<u8>> {
    ensure!(n < 100, "marker number {n} has more than two digits");
    let at = mark_offset(module)?;
    let mut out = module.to_vec();
    out[at..at + 16].copy_from_slice(format!("RINGHOST-MARK-{n:02}").as_bytes());
    Ok(out)
}

/// Deterministic incompressible bytes (xorshift64).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn leb128(mut v: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub fn leb128_len(v: usize) -> usize {
    let mut out = Vec::new();
    leb128(v, &mut out);
    out.len()
}

/// `module` with a custom section `pad` of noise appended, `total` bytes
/// in all (or `module` as is when it is already that large).
pub fn padded(module: &[u8], total: usize, seed: u64) -> Vec<u8> {
    const NAME: &[u8] = b"pad";
    let head = 1 + NAME.len(); // name length (one LEB byte) + name
    // Section: id byte, LEB payload size, payload (head + data).
    let data_len = (1..=5)
        .filter_map(|size_len| {
            let data = total.checked_sub(module.len() + 1 + size_len + head)?;
            (leb128_len(head + data) == size_len).then_some(data)
        })
        .next();
    let Some(data_len) = data_len else {
        return module.to_vec();
    };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(module);
    out.push(0x00);
    leb128(head + data_len, &mut out);
    leb128(NAME.len(), &mut out);
    out.extend_from_slice(NAME);
    out.extend_from_slice(&noise(data_len, seed));
    debug_assert_eq!(out.len(), total);
    out
}
