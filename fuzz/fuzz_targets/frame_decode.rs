//! `Frame::decode` on arbitrary bytes: an error or a frame, never a panic;
//! whatever decodes re-encodes and decodes back to the same frame.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ringhost::wire::Frame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let _ = frame.kind_name();
    let mut out = BytesMut::new();
    frame.encode(&mut out).expect("a decoded frame re-encodes");
    let again = Frame::decode(out.freeze()).expect("a re-encoded frame decodes");
    assert_eq!(again, frame);
});
