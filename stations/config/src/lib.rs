//! The config bus (component `deploy_delta.wasm`): a replicated key/value
//! config that rides the particle. See README.md.
//!
//! # kv layout (read directly by the host: keep it exactly)
//!
//! | key | value |
//! | --- | --- |
//! | `cfg/<KEY>` | the value's bytes (UTF-8), for live keys only; deleted keys have none |
//! | `meta/<KEY>` | `{"ver":N,"node":I,"deleted":bool}` for every key ever written (tombstones too) |
//! | `version` | the config version (max `ver`), decimal ASCII, e.g. `12` |
//!
//! Nothing else is stored. `meta/` is the source of truth: the local copy is
//! rebuilt from it (with `cfg/`) at every visit, and a `cfg/<KEY>` with no
//! live `meta/<KEY>` is deleted.
//!
//! # Slot
//!
//! The whole document, binary, little-endian (see [`logic::encode_slot`]):
//! `"RCF1"`, `version: u64`, `count: u32`, then per entry in ascending key
//! order `key_len: u32, key, ver: u64, node: u32, kind: u8 (0 tombstone, 1
//! value)[, value_len: u32, value]`. An empty slot is an empty document.
//!
//! # Inbox
//!
//! Items are JSON `{"key":"K","value":"V"}`; `"value": null` deletes.
//! Malformed items are logged (warn) and dropped.

pub mod logic;

use logic::{cfg_key, encode_meta, meta_key, Entry, KvOp, Local};
use ringhost_station::{inbox, kv, Config, Station, StopContext, Visit};

struct ConfigBus;

impl Station for ConfigBus {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        Config::from(config)
            .ensure_known(&[])
            .map_err(|e| format!("config: {e}"))
    }

    fn on_particle(ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        let local = logic::load_local(&kv::keys(), kv::get);
        for w in &local.warnings {
            ringhost_station::warn(w);
        }
        let items = inbox::take(u32::MAX);
        let step = logic::step(&local, &slot, &items, ctx.node_index);
        if let Some(e) = &step.error {
            ringhost_station::error(e);
        }
        for w in &step.warnings {
            ringhost_station::warn(w);
        }
        persist(&local, &step.ops);
        Ok(Visit::pass(step.slot))
    }
}

/// Applies `ops` to kv, updates `version` and logs a version change. A
/// failed write (quota) is logged and leaves that key's old state; the slot
/// still carries the new one.
fn persist(local: &Local, ops: &[KvOp]) {
    let mut stored = local.doc.clone();
    for op in ops {
        match op {
            KvOp::Put { key, entry } => match put(key, entry, stored.entries.get(key)) {
                Ok(()) => {
                    stored.entries.insert(key.clone(), entry.clone());
                }
                Err(e) => ringhost_station::error(&format!("config: kv write of {key:?}: {e}")),
            },
            KvOp::DropStray { key } => {
                kv::delete(&cfg_key(key));
            }
        }
    }
    let version = stored.version().to_string();
    if local.stored_version.as_deref() != Some(version.as_bytes()) {
        if let Err(e) = kv::set(logic::VERSION_KEY, version.as_bytes()) {
            ringhost_station::error(&format!("config: kv write of \"version\": {e}"));
        }
    }
    if stored.version() != local.doc.version() {
        ringhost_station::info(&logic::version_line(&stored));
    }
}

/// Stores one entry: `cfg/<key>` then `meta/<key>`. If the meta write fails,
/// `cfg/<key>` goes back to `previous`, so the pair stays consistent.
fn put(key: &str, entry: &Entry, previous: Option<&Entry>) -> Result<(), String> {
    let cfg = cfg_key(key);
    match &entry.value {
        Some(v) => kv::set(&cfg, v.as_bytes())?,
        None => {
            kv::delete(&cfg);
        }
    }
    kv::set(&meta_key(key), &encode_meta(entry)).inspect_err(|_| {
        match previous.and_then(|p| p.value.as_deref()) {
            // Shrinking back to what fitted before.
            Some(old) => {
                let _ = kv::set(&cfg, old.as_bytes());
            }
            None => {
                kv::delete(&cfg);
            }
        }
    })
}

ringhost_station::export!(ConfigBus);
