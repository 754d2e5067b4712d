//! The deploy vocabulary's JSON (`model::release`, `model::request`): the
//! first byte picks a type, the rest is parsed as its JSON. Whatever parses
//! serializes and parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringhost::model::{ConfigEntry, Conflict, Payload, Release, Reply, Request};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T>(json: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(first) = serde_json::from_slice::<T>(json) else {
        return;
    };
    let text = serde_json::to_vec(&first).expect("a parsed value serializes");
    let again: T = serde_json::from_slice(&text).expect("a serialized value parses");
    assert_eq!(again, first);
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    match pick % 7 {
        0 => round_trip::<Release>(json),
        1 => round_trip::<Request>(json),
        2 => round_trip::<Reply>(json),
        3 => round_trip::<Payload>(json),
        4 => round_trip::<ConfigEntry>(json),
        5 => round_trip::<Conflict>(json),
        _ => round_trip::<Vec<Release>>(json),
    }
    if let Ok(release) = serde_json::from_slice::<Release>(json) {
        let _ = release.label();
        let _ = release.newer_than(&release);
    }
    if let Ok(conflict) = serde_json::from_slice::<Conflict>(json) {
        let _ = conflict.message();
    }
});
