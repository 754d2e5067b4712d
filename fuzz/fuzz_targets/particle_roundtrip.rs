//! Particle bodies: a decoded particle is within every bound, re-encodes
//! without error to exactly `encoded_len` bytes, and decodes back equal.
//! Adding one more slot (what a node does before passing it on) is either
//! encoded or refused with `OverBound`, never a panic.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ringhost::ring::token::MAX_SLOT_NAME_BYTES;
use ringhost::wire::{Frame, WireError};

/// The particle's kind byte (see `wire.rs`).
const KIND_PARTICLE: u8 = 0x10;

fuzz_target!(|data: &[u8]| {
    let mut body = Vec::with_capacity(data.len() + 1);
    body.push(KIND_PARTICLE);
    body.extend_from_slice(data);
    let Ok(Frame::Particle(p)) = Frame::decode(Bytes::from(body)) else {
        return;
    };
    assert_eq!(p.over_bound(), None, "a decoded particle is within bounds");
    let mut out = BytesMut::new();
    Frame::Particle(p.clone())
        .encode(&mut out)
        .expect("a decoded particle re-encodes");
    assert_eq!(out.len(), p.encoded_len());
    let again = Frame::decode(out.freeze()).expect("a re-encoded particle decodes");
    assert_eq!(again, Frame::Particle(p.clone()));

    let mut grown = p;
    grown
        .slots
        .insert("n".repeat(MAX_SLOT_NAME_BYTES), data.to_vec());
    let mut out = BytesMut::new();
    match Frame::Particle(grown).encode(&mut out) {
        Ok(()) => {}
        Err(WireError::OverBound { .. }) => assert!(out.is_empty()),
        Err(e) => panic!("unexpected encode error: {e}"),
    }
});
