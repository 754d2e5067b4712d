//! One wasmtime engine as the station host uses it: the engine (component
//! model, async, epoch interruption, and fuel metering or not), its linker,
//! its epoch ticker, and the components compiled for it.
//!
//! Fuel metering is an engine setting (`Config::consume_fuel`), and it
//! makes every call slower (the cost is measured in the README, "Station
//! fuel"), so the host keeps two engines: a plain one, always there, and a
//! metered one built the first time a station with a fuel budget is
//! loaded. A node without `--station-fuel` never builds the metered one.
//! Compiled code belongs to one engine: a component compiled for one
//! cannot run in the other, and the compile cache keys its entries on the
//! engine's compatibility hash, which differs between the two.
//!
//! What this module does not own: the compile cache's format
//! ([`super::cache`]) and what a store holds ([`super::host_api`]).

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{Context, Result};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::worlds::{v01, v02};
use super::{EPOCH_TICK, StationState, wt};

/// An engine, its linker and the components compiled for it.
pub(super) struct HostEngine {
    pub(super) engine: Engine,
    pub(super) linker: Linker<StationState>,
    /// Compiled components by the sha-256 of their bytes: nodes sharing a
    /// process (tests, benches) compile each component once.
    pub(super) compiled: Mutex<HashMap<[u8; 32], Component>>,
}

impl HostEngine {
    /// Builds the engine (fuel metering on when `metered`) and its linker
    /// (our imports plus WASI p2 granting nothing), and starts its epoch
    /// ticker thread, which stops once the engine is dropped.
    ///
    /// # Errors
    /// When wasmtime cannot build the engine or link the imports, or the
    /// ticker thread cannot start.
    pub(super) fn new(metered: bool) -> Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(metered);
        let engine = wt(Engine::new(&config)).context("building the wasm engine")?;
        let mut linker = Linker::new(&engine);
        wt(wasmtime_wasi::p2::add_to_linker_async(&mut linker)).context("linking WASI")?;
        // Both versions' imports, one implementation behind them (see
        // `worlds`); `input-station@0.2` imports what `station@0.2` does.
        wt(v02::InputStation::add_to_linker::<_, HasSelf<_>>(
            &mut linker,
            |s| s,
        ))
        .context("linking the station imports of 0.2")?;
        wt(v01::Station::add_to_linker::<_, HasSelf<_>>(
            &mut linker,
            |s| s,
        ))
        .context("linking the station imports of 0.1")?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Self {
            engine,
            linker,
            compiled: Mutex::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{DefaultHasher, Hash, Hasher};

    use super::*;

    fn compat(e: &HostEngine) -> u64 {
        let mut h = DefaultHasher::new();
        e.engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    }

    /// The compile cache keys entries on this hash: code compiled for one
    /// engine is never handed to the other.
    #[test]
    fn metered_and_plain_engines_never_share_compiled_code() {
        let plain = HostEngine::new(false).unwrap();
        let metered = HostEngine::new(true).unwrap();
        assert_ne!(compat(&plain), compat(&metered));
        assert_eq!(compat(&plain), compat(&HostEngine::new(false).unwrap()));
    }
}
