//! `deploy::delta::apply` on an arbitrary base and delta: `Ok` with at
//! most `max_len` bytes, or a clean `Err`; never a panic. run.sh runs it
//! with a malloc limit, so an allocation past the documented bound (the
//! window a real delta for this base and `max_len` needs) is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringhost::deploy::delta;

/// The output bound given to `apply`.
const MAX_LEN: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // Two bytes say how much of the rest is the base.
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes(*head)).min(rest.len());
    let (base, patch) = rest.split_at(split);
    if let Ok(out) = delta::apply(base, patch, MAX_LEN) {
        assert!(out.len() <= MAX_LEN);
    }
});
