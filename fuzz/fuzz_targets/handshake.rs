//! The handshake frames (hello, welcome, refuse): the first input byte
//! picks the kind, the rest is the JSON body. Whatever decodes re-encodes,
//! and decode(encode(decode(x))) == decode(x).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ringhost::wire::Frame;

/// The kind bytes of hello, welcome and refuse (see `wire.rs`).
const KINDS: [u8; 3] = [0x01, 0x02, 0x03];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let mut body = Vec::with_capacity(data.len());
    body.push(KINDS[usize::from(pick) % KINDS.len()]);
    body.extend_from_slice(json);
    let Ok(first) = Frame::decode(Bytes::from(body)) else {
        return;
    };
    assert!(matches!(
        first,
        Frame::Hello(_) | Frame::Welcome(_) | Frame::Refuse(_)
    ));
    let mut out = BytesMut::new();
    first
        .encode(&mut out)
        .expect("a decoded handshake re-encodes");
    let again = Frame::decode(out.freeze()).expect("a re-encoded handshake decodes");
    assert_eq!(again, first);
});
