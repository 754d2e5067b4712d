//! The wasm host: one [`StationHost`] (engine, linker, epoch ticker) per
//! process, a [`Station`] per loaded component, and the [`Pipeline`] a node
//! runs at every stop.
//!
//! Isolation rules, so a station can end a call but never the node:
//! - every store has a memory limit, for all its memories together
//!   ([`limits`]; growing past it traps);
//! - every call has a deadline enforced with epoch interruption: the guest
//!   yields to tokio at each epoch tick and is interrupted once its budget
//!   is spent; a call blocked in a host import (a WASI sleep or poll runs
//!   no wasm, so no epoch check) is dropped at the same deadline by a
//!   wall-clock timeout ([`guarded`]);
//! - optionally (`--station-fuel`), every call also has a fuel budget: the
//!   store is refilled before each call and traps when the guest has run
//!   that many fuel units (about one per wasm instruction), whatever the
//!   machine's speed; such stations run on a fuel-metered engine
//!   ([`engine`]);
//! - WASI grants nothing (see `host_api::StationState::new`) and the log
//!   budget is the station's, not the instance's;
//! - after a trap, the instance (and its store) is thrown away; the next
//!   visit instantiates afresh from the pre-linked component and runs
//!   `init` again;
//! - a failed call leaves the station's slot as it was.
//!
//! What this module does not own: when stations run (the ring protocol) and
//! where components come from on disk (`node.rs`, later the deploy code).

mod cache;
mod engine;
mod host_api;
mod host_v01;
mod limits;
mod pipeline;
pub mod sets;
pub mod worlds;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use wasmtime::component::Component;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use engine::HostEngine;
use host_api::LogBudget;
pub use host_api::{
    INBOX_CAPACITY, Inbox, Inboxes, KvStore, LOG_BURST, LOG_LINES_PER_SEC, StationEnv,
    StationState, ring_config, unix_ms,
};
pub use pipeline::{Pipeline, StopBase, inputs_ready};
pub use sets::SetStore;
pub use worlds::{StationPre, World};

use crate::config::{StationSource, StationSpec};
use crate::model::Hash;
use crate::observe::EventKind;

pub use worlds::v02::ringhost::station::types::NodeInfo;
pub use worlds::v02::{StopContext, Visit};

/// How often the epoch advances. A call's deadline is checked at this
/// granularity, and a long-running guest yields to tokio this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

pub use crate::ring::token::MAX_SLOT_BYTES;

/// Largest component a node loads.
pub const MAX_MODULE_BYTES: usize = 8 << 20;

/// Most inputs one `on-input` call is given.
pub const INPUT_BATCH_MAX: usize = 1024;

/// Most input bytes one `on-input` call is given (beyond its first input).
/// 256 KiB: the `tokens` station folds that in about 3 ms of CPU (its
/// fold rate, 2.7–3.4 M observations/s in wasm, `cargo bench --bench
/// tokens`), so a call stays far inside the default 100 ms deadline even
/// when it waits for a core on a loaded host; at 1 MiB such calls timed
/// out under load and their batch was lost with the instance's state.
pub const INPUT_BATCH_BYTES: usize = 256 << 10;

/// Longest hold a station may ask for; longer asks are clamped.
pub const MAX_HOLD_MS: u32 = 60_000;

/// The components built into the binary.
pub mod builtin {
    /// Names of the built-in stations.
    pub const NAMES: &[&str] = &[
        "tick",
        "delay",
        "echo",
        "tokens",
        crate::model::CONFIG_STATION,
    ];

    /// The component bytes of built-in station `name`.
    pub fn bytes(name: &str) -> Option<&'static [u8]> {
        match name {
            "tick" => Some(include_bytes!(concat!(
                env!("RINGHOST_STATIONS_DIR"),
                "/tick.wasm"
            ))),
            "delay" => Some(include_bytes!(concat!(
                env!("RINGHOST_STATIONS_DIR"),
                "/delay.wasm"
            ))),
            "echo" => Some(include_bytes!(concat!(
                env!("RINGHOST_STATIONS_DIR"),
                "/echo.wasm"
            ))),
            "tokens" => Some(include_bytes!(concat!(
                env!("RINGHOST_STATIONS_DIR"),
                "/tokens.wasm"
            ))),
            crate::model::CONFIG_STATION => Some(include_bytes!(concat!(
                env!("RINGHOST_STATIONS_DIR"),
                "/deploy_delta.wasm"
            ))),
            _ => None,
        }
    }
}

/// Why one station call failed. In every case the particle goes on with
/// the station's slot unchanged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StationError {
    /// The guest trapped (panic, unreachable, bad memory access…). The
    /// instance is discarded.
    #[error("trap: {0}")]
    Trap(String),
    /// The call ran past its deadline and was interrupted. The instance is
    /// discarded.
    #[error("timeout: call exceeded its {0:?} budget")]
    Timeout(Duration),
    /// The call used up its fuel budget (this many units) and was
    /// interrupted. The instance is discarded.
    #[error("ran out of fuel ({0} units)")]
    OutOfFuel(u64),
    /// The guest tried to grow its memory past the limit. The instance is
    /// discarded.
    #[error("memory limit: {0}")]
    Memory(String),
    /// The guest returned an error. The instance is kept.
    #[error("station error: {0}")]
    Guest(String),
    /// The guest returned something the host refuses (an oversized slot).
    /// The instance is kept.
    #[error("bad output: {0}")]
    BadOutput(String),
    /// Instantiation or `init` failed; the station is skipped until a later
    /// retry succeeds.
    #[error("init failed: {0}")]
    Init(String),
}

impl StationError {
    fn discards_instance(&self) -> bool {
        matches!(
            self,
            Self::Trap(_) | Self::Timeout(_) | Self::OutOfFuel(_) | Self::Memory(_) | Self::Init(_)
        )
    }
}

/// Process-wide wasm machinery: a plain engine (with its linker and epoch
/// ticker) and, once a station with a fuel budget is loaded, a metered one
/// (see [`engine`]).
pub struct StationHost {
    plain: HostEngine,
    /// Built on first use: fuel metering slows every call, so a host whose
    /// stations have no fuel budget never has it on.
    metered: std::sync::Mutex<Option<Arc<HostEngine>>>,
    /// Where compiled components are kept between runs, if anywhere.
    cache: Option<cache::CompileCache>,
}

impl StationHost {
    /// Builds the plain engine (component model, async, epoch
    /// interruption) and its linker (our imports plus WASI p2 granting
    /// nothing), and starts its epoch ticker thread, which stops once the
    /// engine is dropped.
    ///
    /// # Errors
    /// When wasmtime cannot build the engine or link the imports.
    pub fn new() -> Result<Arc<Self>> {
        Self::with_cache(None)
    }

    /// Like [`StationHost::new`], keeping compiled components in
    /// `cache_dir` so a restart (or the next node process) skips compiling.
    ///
    /// # Errors
    /// As [`StationHost::new`]; an unusable cache directory only disables
    /// the cache.
    pub fn with_cache(cache_dir: Option<std::path::PathBuf>) -> Result<Arc<Self>> {
        let plain = HostEngine::new(false)?;
        let cache = cache_dir.and_then(cache::CompileCache::open);
        Ok(Arc::new(Self {
            plain,
            metered: Default::default(),
            cache,
        }))
    }

    /// The plain engine (no fuel metering).
    pub fn engine(&self) -> &Engine {
        &self.plain.engine
    }

    /// The metered engine, built on first use.
    fn metered(&self) -> Result<Arc<HostEngine>> {
        let mut slot = self.metered.lock().expect("metered engine lock");
        if let Some(e) = &*slot {
            return Ok(Arc::clone(e));
        }
        let e = Arc::new(HostEngine::new(true).context("building the fuel-metered engine")?);
        *slot = Some(Arc::clone(&e));
        Ok(e)
    }

    /// Compiles component bytes for the plain engine and checks them
    /// against the station world. CPU-heavy: call it off the async threads
    /// (see [`Self::load`]).
    ///
    /// # Errors
    /// When the bytes are not a component, or it does not fit the world
    /// (missing exports, imports we do not provide).
    pub fn compile(&self, bytes: &[u8]) -> Result<StationPre> {
        self.compile_for(bytes, false)
    }

    /// [`Self::compile`] for the metered engine when `metered` (stations
    /// run with a fuel budget), else for the plain one: `ringhost up`
    /// fills the compile cache for the engine its nodes will use.
    ///
    /// # Errors
    /// As [`Self::compile`]; also when the metered engine cannot be built.
    pub fn compile_for(&self, bytes: &[u8], metered: bool) -> Result<StationPre> {
        self.compile_hashed(Hash::of(bytes), bytes, metered)
            .map(|(pre, _)| pre)
    }

    /// [`Self::compile_for`] for bytes whose sha-256 the caller already
    /// has; also returns the engine the code belongs to.
    fn compile_hashed(
        &self,
        hash: Hash,
        bytes: &[u8],
        metered: bool,
    ) -> Result<(StationPre, Engine)> {
        let metered_engine;
        let host = if metered {
            metered_engine = self.metered()?;
            &*metered_engine
        } else {
            &self.plain
        };
        let key = hash.0;
        let cached = host.compiled.lock().expect("cache lock").get(&key).cloned();
        let component = match cached {
            Some(c) => c,
            None => {
                let c = self.compile_or_load(&host.engine, &key, bytes)?;
                host.compiled
                    .lock()
                    .expect("cache lock")
                    .insert(key, c.clone());
                c
            }
        };
        let world = World::of(&component, &host.engine)?;
        let pre = wt(host.linker.instantiate_pre(&component)).with_context(|| {
            format!(
                "linking the component as {} (this node runs {})",
                world.name(),
                worlds::SUPPORTED
            )
        })?;
        let pre = wt(StationPre::new(pre, world)).with_context(|| {
            format!(
                "the component does not export the functions of {} (this node runs {})",
                world.name(),
                worlds::SUPPORTED
            )
        })?;
        Ok((pre, host.engine.clone()))
    }

    /// Compiles `bytes`, or loads the compiled code from the disk cache
    /// (checked by digest first; see [`cache`]). A miss compiles and
    /// rewrites the entry.
    fn compile_or_load(&self, engine: &Engine, key: &[u8; 32], bytes: &[u8]) -> Result<Component> {
        if let Some(c) = self.cache.as_ref().and_then(|c| c.load(engine, key)) {
            return Ok(c);
        }
        let c = wt(Component::new(engine, bytes)).context("compiling the component")?;
        if let Some(cache) = &self.cache {
            cache.store(engine, key, &c);
        }
        Ok(c)
    }

    /// Reads (for files), compiles (on a blocking thread) and instantiates
    /// a station, running its `init` once to validate it.
    ///
    /// # Errors
    /// When the file cannot be read, the component is invalid, or its
    /// `init` fails.
    pub async fn load(
        self: &Arc<Self>,
        spec: &StationSpec,
        env: StationEnv,
        limits: StationLimits,
    ) -> Result<Station> {
        let bytes = read_source(&spec.source).await?;
        self.load_bytes(&spec.name, &spec.config, Arc::new(bytes), env, limits)
            .await
    }

    /// Compiles (on a blocking thread) and instantiates component `bytes`
    /// as station `name`, running its `init` once to validate it. Nothing
    /// of the node changes: the caller decides whether to run the result.
    ///
    /// # Errors
    /// When the bytes are too large, not a component of the station world,
    /// or `init` fails.
    pub async fn load_bytes(
        self: &Arc<Self>,
        name: &str,
        config: &[(String, String)],
        bytes: Arc<Vec<u8>>,
        env: StationEnv,
        limits: StationLimits,
    ) -> Result<Station> {
        if bytes.len() > MAX_MODULE_BYTES {
            anyhow::bail!(
                "station {name}: module of {} bytes exceeds the {MAX_MODULE_BYTES} byte limit",
                bytes.len()
            );
        }
        let host = Arc::clone(self);
        let hash = Hash::of(&bytes);
        let metered = limits.fuel.is_some();
        let (pre, engine) =
            tokio::task::spawn_blocking(move || host.compile_hashed(hash, &bytes, metered))
                .await
                .context("compile task")?
                .map_err(|e| anyhow!("station {name}: {}", one_line(&format!("{e:#}"))))?;
        let mut station = Station {
            name: name.to_string(),
            config: config.to_vec(),
            hash,
            version: None,
            engine,
            pre,
            live: None,
            env,
            limits,
            log_budget: LogBudget::new(),
            faults: 0,
            recent_faults: VecDeque::new(),
            next_init_retry: None,
            last_fault_log: None,
            suppressed_logs: 0,
        };
        station
            .ensure_live()
            .await
            .map_err(|e| anyhow!("station {name}: {}", one_line(&e.to_string())))?;
        Ok(station)
    }
}

/// The component bytes of a station source.
///
/// # Errors
/// When the file cannot be read or the built-in does not exist.
pub async fn read_source(source: &StationSource) -> Result<Vec<u8>> {
    match source {
        StationSource::Builtin(name) => Ok(builtin::bytes(name)
            .with_context(|| format!("no built-in station {name:?}"))?
            .to_vec()),
        StationSource::File(path) => tokio::fs::read(path)
            .await
            .with_context(|| format!("reading station {}", path.display())),
    }
}

/// `text` (an error chain) as one line of at most [`MAX_ERROR_CHARS`]
/// characters: wasmparser and friends put multi-line debug dumps (byte
/// arrays) in their messages, and a log line must stay one line.
pub fn one_line(text: &str) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = line.char_indices().nth(MAX_ERROR_CHARS) {
        line.truncate(cut);
        line.push('…');
    }
    line
}

/// Longest error text [`one_line`] keeps.
pub const MAX_ERROR_CHARS: usize = 300;

/// Resource bounds of one station.
#[derive(Debug, Clone, Copy)]
pub struct StationLimits {
    /// Bound on one call.
    pub call_timeout: Duration,
    /// Fuel budget of one call, in wasmtime fuel units (about one per wasm
    /// instruction); `None`: no fuel metering (the default; metering
    /// costs time on every call). Instantiation and `init` get the same
    /// budget.
    pub fuel: Option<u64>,
    /// Linear memory limit of one instance.
    pub memory_bytes: usize,
    /// Faults (traps, timeouts, memory, init) within `rollback_window`
    /// that make the node roll this station back; 0 never does.
    pub rollback_after: u32,
    /// The window for `rollback_after`.
    pub rollback_window: Duration,
}

struct Live {
    store: Store<StationState>,
    bindings: worlds::Exports,
}

/// One loaded station: its pre-linked component and, when healthy, a live
/// instance.
pub struct Station {
    name: String,
    config: Vec<(String, String)>,
    hash: Hash,
    /// The release this instance runs as (set by the deploy agent when it
    /// swaps it in; `None`: not a release).
    version: Option<u64>,
    /// The engine `pre` was compiled for (plain, or metered when
    /// `limits.fuel` is set).
    engine: Engine,
    pre: StationPre,
    live: Option<Live>,
    env: StationEnv,
    limits: StationLimits,
    /// Shared by every instance, so a trap does not refill it.
    log_budget: LogBudget,
    faults: u64,
    /// When the recent instance-ending faults happened (auto-rollback).
    recent_faults: VecDeque<Instant>,
    next_init_retry: Option<Instant>,
    last_fault_log: Option<Instant>,
    suppressed_logs: u64,
}

impl Station {
    /// The station's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Faults since load.
    pub fn faults(&self) -> u64 {
        self.faults
    }

    /// sha-256 of the component.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The world the component is of.
    pub fn world(&self) -> World {
        self.pre.world()
    }

    /// The config the station was loaded with (`key=value` pairs).
    pub fn config(&self) -> &[(String, String)] {
        &self.config
    }

    /// The version of the release this station runs as (`None`: not a
    /// release: a module run on this node only, or as started).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// Says which release this station runs as; the deploy agent calls it
    /// before the station is swapped in.
    pub fn set_version(&mut self, version: Option<u64>) {
        self.version = version;
    }

    /// What this station is, exactly: module, config and release version.
    /// The same module pushed twice with another config (or again as a
    /// new version) is another identity.
    pub fn id(&self) -> StationId {
        StationId {
            hash: self.hash,
            config: self.config.clone(),
            version: self.version,
        }
    }

    /// The station's environment (kv, inbox…), to build a successor
    /// version sharing it.
    pub fn env(&self) -> &StationEnv {
        &self.env
    }

    /// This station's inbox.
    pub fn inbox(&self) -> &Inbox {
        &self.env.inbox
    }

    fn new_store(&self) -> Store<StationState> {
        let state = StationState::new(
            self.env.clone(),
            self.log_budget.clone(),
            self.limits.memory_bytes,
            self.limits.call_timeout,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Checked at every epoch tick during a call: yield to tokio so the
        // node's other tasks run, and interrupt once the budget is spent.
        store.epoch_deadline_callback(|ctx| {
            let s = ctx.data();
            if s.call_started.elapsed() >= s.call_budget {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    fn begin_call(store: &mut Store<StationState>, fuel: Option<u64>) {
        store.data_mut().call_started = Instant::now();
        // The callback above only runs once a deadline is reached; a
        // deadline of one tick makes it run from the first tick on.
        store.set_epoch_deadline(1);
        if let Some(units) = fuel {
            // Refilled, not added to: a call never inherits what an earlier
            // one left. Only a metered store is given fuel (set_fuel fails
            // on a plain one), and a station with a fuel limit always has one.
            let set = store.set_fuel(units);
            debug_assert!(
                set.is_ok(),
                "a station with fuel runs on the metered engine"
            );
        }
    }

    async fn ensure_live(&mut self) -> Result<(), StationError> {
        if self.live.is_some() {
            return Ok(());
        }
        if let Some(t) = self.next_init_retry
            && Instant::now() < t
        {
            return Err(StationError::Init(
                "waiting to retry after a failed init".into(),
            ));
        }
        let mut store = self.new_store();
        let limits = self.limits;
        Self::begin_call(&mut store, limits.fuel);
        let result = async {
            let timeout = limits.call_timeout;
            let bindings = guarded(timeout, self.pre.instantiate_async(&mut store))
                .await
                .map_err(|e| classify(e, &limits))?;
            Self::begin_call(&mut store, limits.fuel);
            match guarded(timeout, bindings.call_init(&mut store, &self.config)).await {
                Ok(Ok(())) => Ok(bindings),
                Ok(Err(msg)) => Err(StationError::Init(msg)),
                Err(e) => Err(StationError::Init(classify(e, &limits).to_string())),
            }
        }
        .await;
        match result {
            Ok(bindings) => {
                self.live = Some(Live { store, bindings });
                self.next_init_retry = None;
                Ok(())
            }
            Err(e) => {
                self.next_init_retry = Some(Instant::now() + Duration::from_secs(1));
                Err(match e {
                    StationError::Init(_) => e,
                    other => StationError::Init(other.to_string()),
                })
            }
        }
    }

    /// Runs `on-particle` once. On any failure the caller keeps the old
    /// slot; after a trap, timeout or memory fault the instance is dropped
    /// and re-made on the next call.
    ///
    /// # Errors
    /// [`StationError`], saying why.
    pub async fn call(&mut self, ctx: &StopContext, slot: &[u8]) -> Result<Visit, StationError> {
        self.ensure_live().await?;
        let limits = self.limits;
        let timeout = limits.call_timeout;
        let live = self.live.as_mut().expect("ensure_live made an instance");
        Self::begin_call(&mut live.store, limits.fuel);
        let began = Instant::now();
        let call = live.bindings.call_on_particle(&mut live.store, ctx, slot);
        let result = match guarded(timeout, call).await {
            Ok(Ok(visit)) if visit.slot.len() > MAX_SLOT_BYTES => {
                Err(StationError::BadOutput(format!(
                    "slot of {} bytes exceeds the {MAX_SLOT_BYTES} byte limit",
                    visit.slot.len()
                )))
            }
            Ok(Ok(visit)) => Ok(visit),
            Ok(Err(msg)) => Err(StationError::Guest(msg)),
            Err(e) => Err(classify(e, &limits)),
        };
        if let Some(m) = self.env.observer.metrics() {
            m.station_call(&self.name, began.elapsed());
        }
        if let Err(e) = &result
            && e.discards_instance()
        {
            // A trapped instance (and its store) cannot be re-entered.
            self.live = None;
        }
        result
    }

    /// Runs `on-input` once with a batch taken from the inbox (at most
    /// [`INPUT_BATCH_MAX`] inputs and [`INPUT_BATCH_BYTES`] bytes), if any
    /// is pending; `Ok(0)` when none was, or the station does not take
    /// inputs. The inputs of a failed batch are gone (the WIT says so);
    /// after a trap, timeout or memory fault the instance is dropped and
    /// re-made on the next call, as after a visit's.
    ///
    /// # Errors
    /// [`StationError`], saying why; an `Init` error leaves the inputs in
    /// the inbox.
    pub async fn call_input(&mut self) -> Result<usize, StationError> {
        if !self.world().takes_inputs() || self.env.inbox.is_empty() {
            return Ok(0);
        }
        self.ensure_live().await?;
        let batch = self
            .env
            .inbox
            .take_batch(INPUT_BATCH_MAX, INPUT_BATCH_BYTES);
        if batch.is_empty() {
            return Ok(0);
        }
        let limits = self.limits;
        let live = self.live.as_mut().expect("ensure_live made an instance");
        Self::begin_call(&mut live.store, limits.fuel);
        let began = Instant::now();
        let call = live.bindings.call_on_input(&mut live.store, &batch);
        let result = match guarded(limits.call_timeout, async {
            call.await.unwrap_or_else(|| Ok(Ok(())))
        })
        .await
        {
            Ok(Ok(())) => Ok(batch.len()),
            Ok(Err(msg)) => Err(StationError::Guest(msg)),
            Err(e) => Err(classify(e, &limits)),
        };
        if let Some(m) = self.env.observer.metrics() {
            m.station_call(&self.name, began.elapsed());
        }
        if let Err(e) = &result
            && e.discards_instance()
        {
            self.live = None;
        }
        result
    }

    /// Counts a fault, logs it (rate-limited) and says whether the
    /// station is now due for an automatic rollback.
    fn report_fault(&mut self, node: usize, err: &StationError) -> bool {
        self.report_fault_as(
            node,
            err,
            "station call failed; particle passed on with the slot unchanged",
        )
    }

    /// [`Self::report_fault`] with the log line's message given (an
    /// `on-input` fault has no particle to pass on).
    fn report_fault_as(&mut self, node: usize, err: &StationError, message: &'static str) -> bool {
        self.faults += 1;
        let mut rollback_due = false;
        if err.discards_instance() && self.limits.rollback_after > 0 {
            let now = Instant::now();
            self.recent_faults.push_back(now);
            while self
                .recent_faults
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.limits.rollback_window)
            {
                self.recent_faults.pop_front();
            }
            rollback_due = self.recent_faults.len() >= self.limits.rollback_after as usize;
        }
        self.env.observer.emit(
            node,
            EventKind::StationFault {
                station: self.name.clone(),
                cause: err.to_string(),
            },
        );
        // At full speed a broken station faults thousands of times a
        // second: log the first, then at most one line a second.
        let now = Instant::now();
        let due = self
            .last_fault_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            tracing::warn!(
                station = %self.name,
                cause = %err,
                faults = self.faults,
                suppressed = self.suppressed_logs,
                "{message}"
            );
            self.last_fault_log = Some(now);
            self.suppressed_logs = 0;
        } else {
            self.suppressed_logs += 1;
        }
        rollback_due
    }
}

/// Runs one guest call (instantiate, `init`, `on-particle`) with a
/// wall-clock bound of `timeout` plus two epoch ticks. Epoch interruption
/// only fires while wasm runs; a guest blocked in a host import (a WASI
/// clock sleep, a poll) would otherwise hold the node's owner task past
/// the visit bound, and the ring would give the particle up for lost. On
/// expiry the call's future is dropped (wasmtime unwinds the guest's
/// stack) and the result is an interrupt trap, so the caller discards the
/// instance as after any timeout.
async fn guarded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    match tokio::time::timeout(timeout + 2 * EPOCH_TICK, call).await {
        Ok(result) => result,
        Err(_) => Err(wasmtime::Error::new(Trap::Interrupt)),
    }
}

/// Turns wasmtime's error type into ours (kept inside this module).
fn wt<T>(r: wasmtime::Result<T>) -> Result<T> {
    r.map_err(anyhow::Error::from)
}

fn classify(err: wasmtime::Error, limits: &StationLimits) -> StationError {
    // Name the innermost guest function (stations keep their name section),
    // so a trap says where it happened without the whole backtrace.
    let place = err
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| bt.frames().iter().find_map(|f| f.func_name()))
        .map(|f| format!(" (in {f})"))
        .unwrap_or_default();
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => StationError::Timeout(limits.call_timeout),
            Trap::OutOfFuel => StationError::OutOfFuel(limits.fuel.unwrap_or_default()),
            other => StationError::Trap(format!("{other}{place}")),
        };
    }
    let err = anyhow::Error::from(err);
    let root = err.root_cause().to_string();
    if root.contains("forcing trap when growing memory") {
        StationError::Memory(format!("{root}{place}"))
    } else {
        StationError::Trap(format!("{root}{place}"))
    }
}

/// What a loaded station is: not its module alone, since one module runs
/// as several releases (pushed with another config, or again as a newer
/// version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationId {
    /// sha-256 of the component.
    pub hash: Hash,
    /// The config it was loaded with.
    pub config: Vec<(String, String)>,
    /// The release version it runs as (`None`: not a release).
    pub version: Option<u64>,
}

/// A station that faulted often enough to be rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultReport {
    /// Station name.
    pub name: String,
    /// Exactly what faulted: a report about a station no longer running
    /// (replaced while the report waited) is about something else.
    pub id: StationId,
    /// What made it due: `"3 faults within 10 s, the last: …"`.
    pub cause: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_error_becomes_one_bounded_line() {
        let dump = "bad magic number - expected=[\n    0x0,\n    0x61,\n] (at offset 0x0)";
        assert_eq!(
            one_line(dump),
            "bad magic number - expected=[ 0x0, 0x61, ] (at offset 0x0)"
        );
        let long = one_line(&"x ".repeat(1000));
        assert_eq!(long.chars().count(), MAX_ERROR_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
