//! Test station built against the frozen `ringhost:station@0.1.0` (its own
//! bindings, not the SDK, which is on 0.2): proves a node still runs 0.1
//! stations beside 0.2 ones. At every stop it counts its visits in its
//! slot (u64 little-endian), stores the count in kv `visits`, and logs
//! `v01 visit N tag=T` (T: its `tag` config, default `a`).

wit_bindgen::generate!({
    // Relative to this crate's Cargo.toml directory (stations/testing/v01).
    path: "../../../wit/v0.1",
    world: "ringhost:station/station@0.1.0",
});

use ringhost::station::{host, kv, types::Level};

struct V01;

static mut TAG: String = String::new();

fn tag() -> String {
    // Single-threaded wasm: no other access can race this one.
    #[allow(static_mut_refs)]
    unsafe {
        TAG.clone()
    }
}

impl Guest for V01 {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut t = "a".to_string();
        for (k, v) in config {
            match k.as_str() {
                "tag" => t = v,
                other => return Err(format!("v01: unknown config key {other:?}")),
            }
        }
        #[allow(static_mut_refs)]
        unsafe {
            TAG = t;
        }
        Ok(())
    }

    fn on_particle(_ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        let n = match slot.len() {
            0 => 0,
            8 => u64::from_le_bytes(slot.try_into().expect("8 bytes")),
            n => return Err(format!("v01: slot of {n} bytes")),
        } + 1;
        kv::set("visits", &n.to_le_bytes()).map_err(|e| format!("v01: {e}"))?;
        host::log(Level::Info, &format!("v01 visit {n} tag={}", tag()));
        Ok(Visit {
            slot: n.to_le_bytes().to_vec(),
            hold_ms: 0,
        })
    }
}

export!(V01);
