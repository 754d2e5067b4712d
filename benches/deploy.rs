//! Deploy speed on an 11-node in-process ring at zero delay:
//!
//! 1. propagation: a ~100 KB and a ~1 MB station pushed once to node 0
//!    (the ring carries it: the first push of a name ships the whole
//!    module at every hop, a second push of a one-constant change ships a
//!    zstd delta), against a client uploading it to each node in turn
//!    (`local` pushes, one after the other);
//! 2. delta sizes, and the time to make and apply one;
//! 3. the pause the particle sees: the owner task's swap pause
//!    (`StationSwapped`), and the largest gap between consecutive visits
//!    while a deploy runs, against the usual gap.
//!
//! Run: `cargo bench --bench deploy` (add `-- --runs N` to change the
//! number of runs per figure; the median is shown).
//!
//! The big modules are the `marker` test station with a custom section of
//! incompressible bytes appended, so their size is real for transfer,
//! hashing and deltas, while the code to compile is the marker's.
//!
//! Every node gets its own `StationHost` (as separate processes would): a
//! shared host would compile each module once for the whole ring. Every
//! measurement runs on a fresh ring with modules no node has seen, so no
//! store or compile cache flatters it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use ringhost::admin::client::{AdminClient, PushParams};
use ringhost::config::{NodeConfig, RingLayout, StationSpec};
use ringhost::deploy::agent::DeployView;
use ringhost::deploy::delta;
use ringhost::deploy::release::Hash;
use ringhost::node::NodeHandle;
use ringhost::observe::{EventKind, NodeEvent, Observer};
use ringhost::station::StationHost;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const NODES: usize = 11;
#[path = "common/modules.rs"]
mod modules;
use modules::{mark_offset, padded, with_mark};
/// Bound on any one wait (a push to the whole ring, a ring forming).
const WAIT: Duration = Duration::from_secs(120);
/// Laps the particle makes before a ring counts as settled.
const SETTLE_LAPS: u64 = 50;
/// The quiet window measured before each push.
const QUIET: Duration = Duration::from_secs(1);

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(3);
    ensure!(runs > 0, "--runs must be at least 1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(runs))
}

async fn run(runs: usize) -> Result<()> {
    let dir = std::path::Path::new(env!("RINGHOST_STATIONS_DIR"));
    let marker = std::fs::read(dir.join("marker.wasm")).context("reading marker.wasm")?;
    let marker2 = std::fs::read(dir.join("marker2.wasm")).context("reading marker2.wasm")?;
    mark_offset(&marker).context("marker.wasm")?;
    mark_offset(&marker2).context("marker2.wasm")?;

    // A padded module must be a valid station (the push validates it);
    // check with a throwaway host so no ring's cache sees it.
    let probe = with_mark(&padded(&marker, 100_000, 99), 99)?;
    let host = StationHost::new()?;
    tokio::task::spawn_blocking(move || host.compile(&probe).map(drop))
        .await?
        .context("wasmtime refuses the marker with a custom section appended")?;

    let sizes = [("100 KB", 100_000usize), ("1 MB", 1_000_000)];
    let deltas = delta_sizes(&marker, &marker2)?;

    let mut rows = Vec::new();
    let mut seed = 0u64;
    for (label, size) in sizes {
        let mut row = SizeRow {
            label,
            bytes: padded(&marker, size, 1).len(),
            ..SizeRow::default()
        };
        for run in 0..runs {
            seed += 1;
            eprintln!("{label}: run {}/{runs}", run + 1);
            let base = padded(&marker, size, seed);
            row.compile.push(compile_time(with_mark(&base, 90)?).await?);
            // Ring push: first push of a name, then a one-constant change.
            let first = with_mark(&base, (2 * run) as u8 % 90)?;
            let update = with_mark(&base, (2 * run + 1) as u8 % 90)?;
            let mut ring = Ring::start().await?;
            ring.settle().await?;
            let r1 = ring.ring_push("big", first).await?;
            let r2 = ring.ring_push("big", update).await?;
            ring.shutdown().await?;
            // Baseline on a fresh ring: upload to each node in turn.
            seed += 1;
            let other = with_mark(&padded(&marker, size, seed), (2 * run) as u8 % 90)?;
            let mut ring = Ring::start().await?;
            ring.settle().await?;
            let b = ring.one_by_one("big2", other).await?;
            ring.shutdown().await?;
            row.first.push(r1);
            row.update.push(r2);
            row.baseline.push(b);
        }
        rows.push(row);
    }

    print_report(runs, &rows, &deltas);
    Ok(())
}

// ---------------------------------------------------------------------
// Modules

/// One compile of `module` on a fresh engine (what each node pays).
async fn compile_time(module: Vec<u8>) -> Result<Duration> {
    let host = StationHost::new()?;
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        host.compile(&module)?;
        Ok(t.elapsed())
    })
    .await?
}

// ---------------------------------------------------------------------
// Deltas

struct DeltaRow {
    what: &'static str,
    full: usize,
    delta: usize,
    make: Duration,
}

struct Deltas {
    rows: Vec<DeltaRow>,
    apply_1mb: Duration,
}

fn delta_sizes(marker: &[u8], marker2: &[u8]) -> Result<Deltas> {
    let measure = |what, old: &[u8], new: &[u8]| -> Result<DeltaRow> {
        let mut times = Vec::new();
        let mut d = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            d = delta::make(old, new)?;
            times.push(t.elapsed());
        }
        ensure!(
            delta::apply(old, &d, 8 << 20)? == new,
            "{what}: delta does not round-trip"
        );
        Ok(DeltaRow {
            what,
            full: new.len(),
            delta: d.len(),
            make: median(times),
        })
    };
    let big = padded(marker, 1_000_000, 1);
    let big7 = with_mark(&big, 7)?;
    let rows = vec![
        measure(
            "marker, one constant (MARK-00 -> MARK-07)",
            marker,
            &with_mark(marker, 7)?,
        )?,
        measure("marker -> marker2, small logic change", marker, marker2)?,
        measure("1 MB module, one constant", &big, &big7)?,
        // The same pad after marker2: a small code change to a 1 MB module.
        measure(
            "1 MB module, small logic change",
            &big,
            &padded(marker2, big.len() - marker.len() + marker2.len(), 1),
        )?,
    ];
    let d = delta::make(&big, &big7)?;
    let mut times = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let out = delta::apply(&big, &d, 8 << 20)?;
        times.push(t.elapsed());
        ensure!(out == big7, "1 MB delta does not round-trip");
    }
    Ok(Deltas {
        rows,
        apply_1mb: median(times),
    })
}

// ---------------------------------------------------------------------
// Events

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Off,
    Quiet,
    Deploy,
}

/// What one deploy window saw.
#[derive(Default, Clone, Debug)]
struct Window {
    visits: u64,
    max_gap: Duration,
    max_lap: Duration,
}

/// Kept by the event collector; read by the bench between phases.
struct Collect {
    phase: Phase,
    last_visit: Option<Instant>,
    quiet_gaps: Vec<Duration>,
    quiet_laps: Vec<Duration>,
    window: Window,
    /// (node, module hash hex, pause).
    swaps: Vec<(usize, String, Duration)>,
    failures: Vec<String>,
}

fn collector(
    mut events: mpsc::UnboundedReceiver<NodeEvent>,
    state: Arc<Mutex<Collect>>,
    laps: watch::Sender<u64>,
    swaps: watch::Sender<usize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let now = Instant::now();
            let mut c = state.lock().expect("collector lock");
            match ev.kind {
                EventKind::Visit { lap, lap_time, .. } => {
                    let gap = c.last_visit.map(|l| now - l);
                    c.last_visit = Some(now);
                    match c.phase {
                        Phase::Off => {}
                        Phase::Quiet => {
                            c.quiet_gaps.extend(gap);
                            c.quiet_laps.extend(lap_time);
                        }
                        Phase::Deploy => {
                            let w = &mut c.window;
                            w.visits += 1;
                            w.max_gap = w.max_gap.max(gap.unwrap_or_default());
                            w.max_lap = w.max_lap.max(lap_time.unwrap_or_default());
                        }
                    }
                    if ev.node == 0 {
                        laps.send_if_modified(|l| {
                            let changed = *l != lap;
                            *l = lap;
                            changed
                        });
                    }
                }
                EventKind::StationSwapped { hash, pause, .. } => {
                    c.swaps.push((ev.node, hash, pause));
                    let n = c.swaps.len();
                    swaps.send_replace(n);
                }
                EventKind::DeployFailed { station, reason } => {
                    c.failures
                        .push(format!("node {}: {station}: {reason}", ev.node));
                    let n = c.swaps.len();
                    swaps.send_replace(n);
                }
                _ => {}
            }
        }
    })
}

// ---------------------------------------------------------------------
// Ring

/// One push measured.
#[derive(Clone, Debug)]
struct PushRun {
    /// Request sent -> every node has recorded the release, its bytes
    /// checked against the hash (before compiling it).
    all_recorded: Option<Duration>,
    /// Request sent -> every node runs it (deploy view).
    all_running: Duration,
    /// Request sent -> node 0's reply.
    reply: Duration,
    /// Swap pauses at each node.
    pauses: Vec<Duration>,
    /// The particle during the deploy.
    window: Window,
    /// The quiet window before it: p50 visit gap and lap time.
    quiet_gap: Duration,
    quiet_lap: Duration,
    /// Bytes fetched ring-wide, and how.
    fetched_bytes: u64,
    fetched_full: u64,
    fetched_delta: u64,
}

struct Ring {
    handles: Vec<NodeHandle>,
    /// Each node's admin API (pushes go through it, as the tools' do).
    admins: Vec<AdminClient>,
    views: Vec<watch::Receiver<DeployView>>,
    state: Arc<Mutex<Collect>>,
    laps: watch::Receiver<u64>,
    swaps: watch::Receiver<usize>,
    collector: tokio::task::JoinHandle<()>,
}

impl Ring {
    async fn start() -> Result<Self> {
        let mut listeners = Vec::new();
        for _ in 0..NODES {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let addrs = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let layout = RingLayout::from_addrs(addrs)?;
        let (observer, events) = Observer::channel();
        let state = Arc::new(Mutex::new(Collect {
            phase: Phase::Off,
            last_visit: None,
            quiet_gaps: Vec::new(),
            quiet_laps: Vec::new(),
            window: Window::default(),
            swaps: Vec::new(),
            failures: Vec::new(),
        }));
        let (laps_tx, laps) = watch::channel(0);
        let (swaps_tx, swaps) = watch::channel(0);
        let collector = collector(events, Arc::clone(&state), laps_tx, swaps_tx);
        let mut handles = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let mut config = NodeConfig::new(layout.clone(), i);
            config.delay_ms = 0;
            config.deploy.watch = false;
            config.stations = vec![StationSpec::builtin("tick").with("quiet", "true")];
            // Its own engine and compile cache, like a separate process.
            let host = StationHost::new()?;
            handles.push(ringhost::node::start(config, listener, host, observer.clone()).await?);
        }
        let views = handles.iter().map(NodeHandle::deploy_view).collect();
        let admins = handles
            .iter()
            .map(|h| {
                let addr = h.admin_addr().context("admin API on")?;
                Ok(AdminClient::new(&addr.to_string(), None))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            handles,
            admins,
            views,
            state,
            laps,
            swaps,
            collector,
        })
    }

    /// Waits until the particle has made [`SETTLE_LAPS`] laps.
    async fn settle(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if *self.laps.borrow_and_update() >= SETTLE_LAPS {
                return Ok(());
            }
            tokio::time::timeout_at(deadline, self.laps.changed())
                .await
                .with_context(|| format!("the ring did not make {SETTLE_LAPS} laps in {WAIT:?}"))?
                .context("event collector ended")?;
        }
    }

    fn set_phase(&self, phase: Phase) {
        let mut c = self.state.lock().expect("collector lock");
        c.phase = phase;
        if phase == Phase::Deploy {
            c.window = Window::default();
        }
    }

    /// Measures the particle for [`QUIET`], then returns the p50 visit gap
    /// and lap time of that window.
    async fn quiet(&self) -> Result<(Duration, Duration)> {
        {
            let mut c = self.state.lock().expect("collector lock");
            c.quiet_gaps.clear();
            c.quiet_laps.clear();
            c.phase = Phase::Quiet;
        }
        // A measurement window, not a synchronisation.
        tokio::time::sleep(QUIET).await;
        let mut c = self.state.lock().expect("collector lock");
        c.phase = Phase::Off;
        ensure!(
            c.quiet_gaps.len() > 100,
            "only {} visits in the quiet second",
            c.quiet_gaps.len()
        );
        Ok((
            median(std::mem::take(&mut c.quiet_gaps)),
            median(std::mem::take(&mut c.quiet_laps)),
        ))
    }

    fn fetched(&self) -> (u64, u64, u64) {
        self.views.iter().fold((0, 0, 0), |acc, v| {
            let v = v.borrow();
            (
                acc.0 + v.fetched_bytes,
                acc.1 + v.fetched_full,
                acc.2 + v.fetched_delta,
            )
        })
    }

    fn failures(&self) -> Vec<String> {
        self.state.lock().expect("collector lock").failures.clone()
    }

    /// Pushes `module` as `name` to node 0 for the whole ring; times until
    /// every node's deploy view shows it running.
    async fn ring_push(&mut self, name: &str, module: Vec<u8>) -> Result<PushRun> {
        let hash = Hash::of(&module);
        let (quiet_gap, quiet_lap) = self.quiet().await?;
        let before = self.fetched();
        let swaps_before = self.state.lock().expect("collector lock").swaps.len();
        let blob = Bytes::from(module);
        let deadline = tokio::time::Instant::now() + WAIT;
        self.set_phase(Phase::Deploy);
        let start = Instant::now();
        let waiters: Vec<_> = self
            .views
            .iter()
            .enumerate()
            .map(|(i, v)| tokio::spawn(running(i, v.clone(), name.to_string(), hash, deadline)))
            .collect();
        let params = PushParams {
            name: name.to_string(),
            ..PushParams::default()
        };
        self.admins[0]
            .push(&params, blob)
            .await
            .with_context(|| format!("push of {name}"))?;
        let reply_at = start.elapsed();
        let (mut recorded, mut last) = (start, start);
        for w in waiters {
            match w.await? {
                Ok((r, t)) => {
                    recorded = recorded.max(r);
                    last = last.max(t);
                }
                Err(e) => bail!("{e:#}; deploy failures: {:?}", self.failures()),
            }
        }
        let all_running = last - start;
        self.set_phase(Phase::Off);
        let window = self.state.lock().expect("collector lock").window.clone();
        // The owner tasks report their swaps right after the views change.
        let pauses = self
            .swap_pauses(swaps_before, hash, NODES, deadline)
            .await?;
        let after = self.fetched();
        Ok(PushRun {
            all_recorded: Some(recorded - start),
            all_running,
            reply: reply_at,
            pauses,
            window,
            quiet_gap,
            quiet_lap,
            fetched_bytes: after.0 - before.0,
            fetched_full: after.1 - before.1,
            fetched_delta: after.2 - before.2,
        })
    }

    /// Waits for `count` swaps of module `hash` reported after the first
    /// `skip`, and returns their pauses.
    async fn swap_pauses(
        &mut self,
        skip: usize,
        hash: Hash,
        count: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<Duration>> {
        let hex = hash.to_string();
        loop {
            self.swaps.borrow_and_update();
            let pauses: Vec<Duration> = {
                let c = self.state.lock().expect("collector lock");
                c.swaps[skip.min(c.swaps.len())..]
                    .iter()
                    .filter(|s| s.1 == hex)
                    .map(|s| s.2)
                    .collect()
            };
            if pauses.len() >= count {
                return Ok(pauses);
            }
            tokio::time::timeout_at(deadline, self.swaps.changed())
                .await
                .with_context(|| {
                    format!(
                        "only {} of {count} swaps of {} reported; failures: {:?}",
                        pauses.len(),
                        hash.short(),
                        self.failures()
                    )
                })?
                .context("event collector ended")?;
        }
    }

    /// The baseline: uploads `module` as `name` to every node in turn
    /// (`local` pushes: that node validates and runs it, nothing travels),
    /// waiting for each reply.
    async fn one_by_one(&mut self, name: &str, module: Vec<u8>) -> Result<PushRun> {
        let hash = Hash::of(&module);
        let (quiet_gap, quiet_lap) = self.quiet().await?;
        let swaps_before = self.state.lock().expect("collector lock").swaps.len();
        let blob = Bytes::from(module);
        let deadline = tokio::time::Instant::now() + WAIT;
        self.set_phase(Phase::Deploy);
        let start = Instant::now();
        let mut reply_at = Duration::ZERO;
        for (i, admin) in self.admins.iter().enumerate() {
            let params = PushParams {
                name: name.to_string(),
                local: true,
                ..PushParams::default()
            };
            admin
                .push(&params, blob.clone())
                .await
                .with_context(|| format!("local push of {name} to node {i}"))?;
            if i == 0 {
                reply_at = start.elapsed();
            }
        }
        let all_running = start.elapsed();
        self.set_phase(Phase::Off);
        let window = self.state.lock().expect("collector lock").window.clone();
        for (i, v) in self.views.iter().enumerate() {
            let v = v.borrow();
            let s = v.stations.iter().find(|s| s.name == name);
            // A local push makes no release record, so the view may not
            // list it; when it does, it must be this module.
            if let Some(s) = s {
                ensure!(
                    s.running == hash,
                    "node {i} does not run the uploaded module"
                );
            }
        }
        let pauses = self
            .swap_pauses(swaps_before, hash, NODES, deadline)
            .await?;
        Ok(PushRun {
            all_recorded: None,
            all_running,
            reply: reply_at,
            pauses,
            window,
            quiet_gap,
            quiet_lap,
            fetched_bytes: 0,
            fetched_full: 0,
            fetched_delta: 0,
        })
    }

    async fn shutdown(self) -> Result<()> {
        for (i, h) in self.handles.into_iter().enumerate() {
            tokio::time::timeout(Duration::from_secs(10), h.shutdown())
                .await
                .with_context(|| format!("node {i} did not stop within 10 s"))??;
        }
        self.collector.abort();
        Ok(())
    }
}

/// Waits until node `i`'s view shows `name` running module `hash`;
/// returns when it first saw the release recorded (the module's bytes
/// checked and stored, before the compile) and when it saw it running.
async fn running(
    i: usize,
    mut view: watch::Receiver<DeployView>,
    name: String,
    hash: Hash,
    deadline: tokio::time::Instant,
) -> Result<(Instant, Instant)> {
    let mut recorded = None;
    loop {
        {
            let v = view.borrow_and_update();
            let now = Instant::now();
            if v.releases.iter().any(|r| r.name == name && r.hash == hash) {
                recorded.get_or_insert(now);
            }
            if let Some(s) = v.stations.iter().find(|s| s.name == name) {
                if s.running == hash {
                    return Ok((*recorded.get_or_insert(now), now));
                }
                if s.hash == hash
                    && let Some(e) = &s.error
                {
                    bail!("node {i}: {name} failed: {e}");
                }
            }
        }
        tokio::time::timeout_at(deadline, view.changed())
            .await
            .with_context(|| {
                format!(
                    "node {i} does not run {name} ({}) within {WAIT:?}",
                    hash.short()
                )
            })?
            .with_context(|| format!("node {i} stopped"))?;
    }
}

// ---------------------------------------------------------------------
// Report

#[derive(Default)]
struct SizeRow {
    label: &'static str,
    bytes: usize,
    compile: Vec<Duration>,
    first: Vec<PushRun>,
    update: Vec<PushRun>,
    baseline: Vec<PushRun>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[v.len() / 2]
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn max(v: impl IntoIterator<Item = Duration>) -> Duration {
    v.into_iter().max().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} us", d.as_secs_f64() * 1e6)
    } else {
        ms(d)
    }
}

fn size(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.2} MB", n as f64 / 1e6)
    } else if n >= 10_000 {
        format!("{:.1} KB", n as f64 / 1e3)
    } else {
        format!("{n} B")
    }
}

fn print_report(runs: usize, rows: &[SizeRow], deltas: &Deltas) {
    println!();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "deploy, {NODES} in-process nodes on 127.0.0.1, zero delay, {cpus} CPUs, \
         median of {runs} runs (cargo bench --bench deploy)"
    );
    println!();
    println!("1. propagation to all {NODES} nodes");
    println!(
        "{:<8} {:>9}  {:<28} {:>12} {:>12} {:>8} {:>10}  between nodes",
        "module", "bytes", "deploy", "all have it", "all run it", "speedup", "node 0"
    );
    for r in rows {
        let base = median(r.baseline.iter().map(|p| p.all_running).collect());
        for (what, v) in [
            ("ring push, new name", &r.first),
            ("ring push, one-constant chg", &r.update),
            ("one by one (baseline)", &r.baseline),
        ] {
            // The median run, by time until all run it.
            let mut v: Vec<&PushRun> = v.iter().collect();
            v.sort_by_key(|p| p.all_running);
            let p = v[v.len() / 2];
            let wire = if p.all_recorded.is_some() {
                format!(
                    "{} full + {} delta, {}",
                    p.fetched_full,
                    p.fetched_delta,
                    size(p.fetched_bytes)
                )
            } else {
                format!("{NODES} uploads, {}", size((NODES * r.bytes) as u64))
            };
            println!(
                "{:<8} {:>9}  {:<28} {:>12} {:>12} {:>7.2}x {:>10}  {}",
                r.label,
                r.bytes,
                what,
                p.all_recorded.map_or("-".into(), ms),
                ms(p.all_running),
                base.as_secs_f64() / p.all_running.as_secs_f64(),
                ms(p.reply),
                wire,
            );
        }
    }
    let compiles: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.label, ms(median(r.compile.clone()))))
        .collect();
    println!(
        "  all have it: every node has the release, its bytes checked (sha-256), before compiling."
    );
    println!(
        "  all run it: every node's deploy view shows it running (compiled, init run, handed to the owner)."
    );
    println!(
        "  speedup: one by one / this deploy (all run it). node 0: its reply (one by one: the first reply)."
    );
    println!(
        "  one compile on an idle fresh engine, for scale: {}.",
        compiles.join(", ")
    );
    println!();
    println!("2. delta sizes (zstd, old module as reference prefix; level 19 up to 4 MB, 9 above)");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "change", "module", "delta", "make"
    );
    for d in &deltas.rows {
        println!(
            "{:<44} {:>10} {:>10} {:>10}",
            d.what,
            size(d.full as u64),
            size(d.delta as u64),
            ms(d.make)
        );
    }
    println!(
        "delta::apply, 1 MB module, one constant: {} (median of 9)",
        ms(deltas.apply_1mb)
    );
    println!();
    println!("3. what the particle sees (all runs pooled; quiet = the second before each deploy)");
    println!(
        "{:<22} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>8}",
        "deploy", "swap p50", "swap max", "gap quiet", "gap max", "lap quiet", "lap max", "visits"
    );
    for r in rows {
        for (what, v) in [
            ("ring push, new", &r.first),
            ("ring push, change", &r.update),
            ("one by one", &r.baseline),
        ] {
            let pauses: Vec<Duration> = v.iter().flat_map(|p| p.pauses.clone()).collect();
            println!(
                "{:<22} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>8}",
                format!("{} {what}", r.label),
                us(median(pauses.clone())),
                us(max(pauses)),
                us(median(v.iter().map(|p| p.quiet_gap).collect())),
                us(max(v.iter().map(|p| p.window.max_gap))),
                us(median(v.iter().map(|p| p.quiet_lap).collect())),
                us(max(v.iter().map(|p| p.window.max_lap))),
                median_u64(v.iter().map(|p| p.window.visits).collect()),
            );
        }
    }
    println!(
        "  swap: the owner task's pause to swap the station in (StationSwapped), p50/max over all nodes."
    );
    println!(
        "  gap: time between consecutive visits ring-wide (p50 of the quiet second, max during the deploy)."
    );
    println!(
        "  lap: node-measured lap time (p50 quiet, max during the deploy). visits: during the deploy (median)."
    );
}
