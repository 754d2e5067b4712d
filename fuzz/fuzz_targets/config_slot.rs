//! The config bus's slot decoder, the pure logic of the `config` station
//! (`stations/config/src/logic.rs`, included here by path: the host has no
//! decoder of its own for that slot). A non-empty slot that decodes is
//! canonical: it re-encodes to the same bytes. A whole visit (`step`) with the slot and
//! an inbox item never panics, and its outgoing slot decodes.
#![no_main]

#[allow(dead_code)]
#[path = "../../stations/config/src/logic.rs"]
mod logic;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One byte: how much of the rest is an inbox item (after the slot).
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (slot, item) = rest.split_at(rest.len() - usize::from(n).min(rest.len()));
    // (An empty slot is an empty document, which encodes as 16 bytes.)
    if let Some(doc) = logic::decode_slot(slot).ok().filter(|_| !slot.is_empty()) {
        assert_eq!(
            logic::encode_slot(&doc),
            slot,
            "a decoded slot is canonical"
        );
    }
    let _ = logic::parse_item(item);
    let _ = logic::decode_meta(item);
    let step = logic::step(&logic::Local::default(), slot, &[item.to_vec()], 3);
    let out = logic::decode_slot(&step.slot).expect("a visit's slot decodes");
    assert_eq!(out, step.doc);
});
