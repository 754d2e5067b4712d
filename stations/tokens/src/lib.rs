//! The `tokens` station: fleet-wide token correlation riding the particle
//! (ringhost issue 12). See README.md for the inputs, the slot's bytes, the
//! rules and their bounds.
//!
//! # Layout
//!
//! - [`input`]: the line format; [`settings`]: init and ring config.
//! - [`summary`]: the mergeable Misra–Gries summary and its error bound;
//!   [`nodeset`]: the nodes that saw a token.
//! - [`local`]: node-local state folded by `on-input`, sealed per stop.
//! - [`catalog`]: the slot's content and its operations; [`codec`]: its bytes.
//! - [`stop`]: one stop, exactly-once merge, rules, byte budget, set diffs;
//!   [`status`]: the kv `status` JSON.
//! - this file: the host glue, the only place with host calls (bound to
//!   `ringhost:station/input-station@0.2.0` directly until the SDK moves to
//!   0.2.0).

pub mod catalog;
pub mod codec;
pub mod input;
pub mod local;
pub mod nodeset;
pub mod settings;
pub mod status;
pub mod stop;
pub mod summary;

#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod testkit;

use std::sync::Mutex;

use bindings::ringhost::station::{host, inbox, kv, sets, types};
use bindings::{StopContext, Visit};
use local::{Folded, Local};
use settings::Settings;
use stop::{Level, SetOp, Stop};

/// The code `wit_bindgen::generate!` makes for the 0.2.0 world.
#[allow(missing_docs, clippy::too_many_arguments)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "ringhost:station/input-station@0.2.0",
    });
}

/// The kv key of the status document.
pub const STATUS_KEY: &str = "status";
/// Inputs a stop folds from the inbox, at most: the rest waits for
/// `on-input` between stops (the host gives it batches of at most 256 KiB).
/// Kept small because a stop holds the particle: 8 inputs of the 60 KB an
/// application server may batch fold in a few milliseconds, where 1024
/// could take a second of a loaded host's CPU and run into the call bound.
const INBOX_BATCH: u32 = 8;

/// The instance's state: settings from `init` and the node-local state.
struct State {
    init: Settings,
    local: Local,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn log(level: Level, msg: &str) {
    let level = match level {
        Level::Debug => types::Level::Debug,
        Level::Info => types::Level::Info,
        Level::Warn => types::Level::Warn,
        Level::Error => types::Level::Error,
    };
    host::log(level, msg);
}

fn with_state<T>(f: impl FnOnce(&mut State) -> Result<T, String>) -> Result<T, String> {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.as_mut().ok_or("tokens: not initialised")?;
    f(state)
}

/// Folds inputs and does what [`Folded`] asks (warn, publish flagged).
fn fold(local: &mut Local, inputs: &[Vec<u8>]) {
    let now = host::now_unix_ms();
    let mut out = Folded::default();
    for input in inputs {
        local.fold(input, now, &mut out);
    }
    if let Some(w) = &out.warning {
        log(Level::Warn, w);
    }
    if !out.flagged.is_empty() {
        for (t, info) in out.flagged.iter().take(5) {
            log(Level::Warn, &format!("tokens: one-time token {t} {info}"));
        }
        let entries: Vec<types::SetEntry> = out
            .flagged
            .into_iter()
            .map(|(key, info)| types::SetEntry {
                key,
                info,
                expires_unix_ms: 0,
            })
            .collect();
        if let Err(e) = sets::put("flagged", &entries) {
            log(Level::Error, &format!("tokens: publishing flagged: {e}"));
        }
    }
}

/// Applies set changes; a failure is logged and makes the next stop
/// republish everything.
fn apply(local: &mut Local, ops: Vec<SetOp>) {
    for op in ops {
        match op {
            SetOp::Clear(name) => {
                sets::clear(name);
            }
            SetOp::Remove(name, keys) => {
                sets::remove(name, &keys);
            }
            SetOp::Put(name, entries) => {
                let entries: Vec<types::SetEntry> = entries
                    .into_iter()
                    .map(|e| types::SetEntry {
                        key: e.key,
                        info: e.info,
                        expires_unix_ms: e.expires_ms,
                    })
                    .collect();
                if let Err(e) = sets::put(name, &entries) {
                    log(Level::Error, &format!("tokens: publishing {name}: {e}"));
                    local.published = None;
                }
            }
        }
    }
}

struct Tokens;

impl bindings::Guest for Tokens {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let init = Settings::from_init(&config)?;
        let local = Local::new(init.bucket_ms(), init.buckets.into(), init.local_capacity);
        *STATE.lock().unwrap_or_else(|p| p.into_inner()) = Some(State { init, local });
        Ok(())
    }

    fn on_particle(ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        with_state(|state| {
            // One batch at most: the host folds the rest with `on-input`
            // between stops. Draining until empty held the particle for as
            // long as senders kept the inbox full (a stop ran into its
            // call bound under a steady flood, and the instance was lost).
            let inputs = inbox::take(INBOX_BATCH);
            if !inputs.is_empty() {
                fold(&mut state.local, &inputs);
            }
            let ring = host::ring_config(settings::RING_PREFIX);
            let (settings, warnings) = state.init.with_ring(&ring);
            let st = Stop {
                node: ctx.node_index,
                ring_size: ctx.ring_size,
                now_ms: ctx.now_unix_ms,
                slot: &slot,
            };
            let out = stop::stop(&mut state.local, &settings, warnings, st);
            apply(&mut state.local, out.ops);
            for (level, line) in &out.logs {
                log(*level, line);
            }
            if let Err(e) = kv::set(STATUS_KEY, out.status.as_bytes()) {
                log(
                    Level::Warn,
                    &format!("tokens: kv write of {STATUS_KEY:?}: {e}"),
                );
            }
            Ok(Visit {
                slot: out.slot,
                hold_ms: out.hold_ms,
            })
        })
    }

    fn on_input(inputs: Vec<Vec<u8>>) -> Result<(), String> {
        with_state(|state| {
            fold(&mut state.local, &inputs);
            Ok(())
        })
    }
}

bindings::export!(Tokens with_types_in bindings);
