//! What the operator plane costs the particle: lap time of an 11-node ring
//! at zero delay running the tick station, quiet and under an operator's
//! load, alternately on the same ring; then the latency of `GET /v1/ring`.
//!
//! The load, as an operator's tools would make it:
//! - a scraper per node: `GET /metrics` every 100 ms on every node
//!   (starts staggered over the 100 ms, as Prometheus spreads its
//!   targets), over a kept-alive connection;
//! - one dashboard on node 0: `GET /v1/events` held open and read, and
//!   `GET /v1/ring` once a second, as the page does.
//!
//! The clients run on a runtime of their own (one thread), like a separate
//! process: they compete with the nodes for the machine's cores, not for
//! the nodes' tokio workers. They stand for a scraper and a browser on
//! other hosts, so their thread runs as nice as the nodes' admin threads
//! (`ringhost::admin::listen::NICE`); `--clients-nice 0` runs it at the
//! nodes' own priority.
//!
//! Run: `cargo bench --bench admin` (`-- --laps N` laps per run, default
//! 10000; `--rounds N` quiet/loaded pairs, default 5; `--ring-requests N`,
//! default 300; `--clients-nice N`, default 10).

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ringhost::admin::api::{Liveness, RingView};
use ringhost::admin::client::AdminClient;
use ringhost::node::NodeHandle;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use common::{TickRing, fmt, percentiles};
use tokio_util::sync::CancellationToken;

const NODES: usize = 11;
/// Laps discarded once the ring has formed, before the first run.
const WARMUP_LAPS: u64 = 200;
/// Discarded at the start of each run (the load's first requests connect).
const SETTLE: Duration = Duration::from_millis(300);
const SCRAPE_EVERY: Duration = Duration::from_millis(100);
const RING_POLL_EVERY: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The goal: the operator plane costs at most 5 % of the lap, judged
/// on the pooled p50 (all loaded laps against all quiet laps of the same
/// alternating runs, the estimate least moved by the machine's drift).
const GOAL: f64 = 1.05;
/// The clients' thread name, left out of the nodes' CPU time.
const CLIENT_THREAD: &str = "op-clients";
/// How much nicer than the nodes the clients' thread runs.
static CLIENTS_NICE: std::sync::atomic::AtomicI32 =
    std::sync::atomic::AtomicI32::new(ringhost::admin::listen::NICE);

struct Args {
    laps: usize,
    rounds: usize,
    ring_requests: usize,
}

fn arg(name: &str, default: usize) -> Result<usize> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .map(|v| v.parse().with_context(|| format!("{name} {v:?}")))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

fn main() -> Result<()> {
    let args = Args {
        laps: arg("--laps", 10_000)?,
        rounds: arg("--rounds", 5)?,
        ring_requests: arg("--ring-requests", 300)?,
    };
    let nice = arg("--clients-nice", ringhost::admin::listen::NICE as usize)?;
    CLIENTS_NICE.store(i32::try_from(nice)?, std::sync::atomic::Ordering::Relaxed);
    ensure!(
        args.laps > 0 && args.rounds > 0,
        "--laps and --rounds must be > 0"
    );
    // The nodes' runtime, as in the lap bench.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The clients' runtime: one thread of its own.
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(CLIENT_THREAD)
        .on_thread_start(elsewhere)
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&args, clients.handle().clone()));
    clients.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run(args: &Args, clients: Handle) -> Result<()> {
    let mut ring = Ring::start().await?;
    ring.wait_formed().await?;
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for loaded in [false, true] {
            let load = loaded.then(|| Load::start(&clients, &ring.0.admins));
            let laps = ring.laps(args.laps).await;
            let load = match load {
                Some(l) => Some(l.stop().await?),
                None => None,
            };
            let (laps, cpu) = laps?;
            runs.push(Run {
                round,
                lap: percentiles(laps.clone()),
                cpu_per_lap: cpu / laps.len() as u32,
                laps,
                load,
            });
        }
    }
    let ring_latency = clients
        .spawn(ring_latency(ring.0.admins.clone(), args.ring_requests))
        .await??;
    let encode = time_encode(&ring.0.nodes[0]);
    ring.0.shutdown().await?;
    report(args, &runs, &ring_latency);
    println!(
        "Metrics::encode alone (what a scrape costs the node besides HTTP): mean {} for {} B",
        fmt(encode.0),
        encode.1
    );
    Ok(())
}

/// Makes the clients' thread as nice as the admin API's (when the
/// process may): it stands for a scraper and a browser on other hosts, so
/// it should not take the cores from the nodes more than the nodes' own
/// admin threads may. `--clients-nice 0` keeps it at the nodes' priority.
fn elsewhere() {
    let nice = CLIENTS_NICE.load(std::sync::atomic::Ordering::Relaxed);
    let me = Some(rustix::thread::gettid());
    if let Ok(now) = rustix::process::getpriority_process(me) {
        let _ = rustix::process::setpriority_process(me, (now + nice).min(19));
    }
}

/// Mean time of one `/metrics` body (the text encoding alone), and its
/// size.
fn time_encode(node: &NodeHandle) -> (Duration, usize) {
    const N: u32 = 1000;
    let metrics = node.bus().metrics();
    let size = metrics.encode().len();
    let t = Instant::now();
    for _ in 0..N {
        std::hint::black_box(metrics.encode());
    }
    (t.elapsed() / N, size)
}

/// Eleven in-process nodes; node 0 reports its visits.
struct Ring(TickRing);

impl Ring {
    async fn start() -> Result<Self> {
        Ok(Self(TickRing::start(NODES).await?))
    }

    async fn wait_formed(&mut self) -> Result<()> {
        self.0.wait_laps(WARMUP_LAPS).await
    }

    /// `n` lap times at node 0, after [`SETTLE`], and the CPU time the
    /// process spent meanwhile outside the clients' thread.
    async fn laps(&mut self, n: usize) -> Result<(Vec<Duration>, Duration)> {
        self.0.drain();
        let deadline = Instant::now() + Duration::from_secs(120);
        let settled = Instant::now() + SETTLE;
        let mut times = Vec::with_capacity(n);
        let mut cpu_start = None;
        while times.len() < n {
            if let (_, Some(t)) = self.0.next_visit(deadline).await?
                && Instant::now() >= settled
            {
                if cpu_start.is_none() {
                    cpu_start = Some(node_cpu()?);
                }
                times.push(t);
            }
        }
        let cpu = node_cpu()?.saturating_sub(cpu_start.unwrap_or_default());
        Ok((times, cpu))
    }
}

/// CPU time of this process's threads but the clients' (Linux: the
/// scheduler's per-thread run time, `/proc/self/task/*/schedstat`).
fn node_cpu() -> Result<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let dir = task?.path();
        // A thread may end between listing and reading: skip it.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        if comm.trim() == CLIENT_THREAD {
            continue;
        }
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("parsing schedstat")?;
    }
    Ok(Duration::from_nanos(ns))
}

/// What one client did.
#[derive(Debug, Default, Clone)]
struct Tally {
    requests: u64,
    bytes: u64,
    errors: u64,
    events: u64,
    lagged: u64,
    latencies: Vec<Duration>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.events += other.events;
        self.lagged += other.lagged;
        self.latencies.extend(other.latencies);
    }
}

/// What the load did during one run.
struct LoadTally {
    elapsed: Duration,
    scrapes: Tally,
    ring_polls: Tally,
    stream: Tally,
}

/// The operator's clients, running on their own runtime.
struct Load {
    cancel: CancellationToken,
    started: Instant,
    scrapers: Vec<JoinHandle<Tally>>,
    ring_poll: JoinHandle<Tally>,
    stream: JoinHandle<Result<Tally>>,
}

impl Load {
    fn start(clients: &Handle, admins: &[String]) -> Self {
        let cancel = CancellationToken::new();
        let scrapers = admins
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let offset = SCRAPE_EVERY * i as u32 / admins.len() as u32;
                let client = AdminClient::new(a, None);
                clients.spawn(poll(
                    client,
                    "/metrics",
                    SCRAPE_EVERY,
                    offset,
                    cancel.clone(),
                ))
            })
            .collect();
        let ring_poll = clients.spawn(poll(
            AdminClient::new(&admins[0], None),
            "/v1/ring",
            RING_POLL_EVERY,
            Duration::ZERO,
            cancel.clone(),
        ));
        let stream = clients.spawn(read_events(admins[0].clone(), cancel.clone()));
        Self {
            cancel,
            started: Instant::now(),
            scrapers,
            ring_poll,
            stream,
        }
    }

    async fn stop(self) -> Result<LoadTally> {
        self.cancel.cancel();
        let elapsed = self.started.elapsed();
        let mut scrapes = Tally::default();
        for s in self.scrapers {
            scrapes.add(s.await?);
        }
        Ok(LoadTally {
            elapsed,
            scrapes,
            ring_polls: self.ring_poll.await?,
            stream: self.stream.await??,
        })
    }
}

/// `GET path` every `every` (first after `offset`) until `cancel`.
async fn poll(
    client: AdminClient,
    path: &'static str,
    every: Duration,
    offset: Duration,
    cancel: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return tally,
            _ = tick.tick() => {}
        }
        let t = Instant::now();
        match client
            .exchange(Method::GET, path, None, REQUEST_TIMEOUT)
            .await
        {
            Ok((StatusCode::OK, body)) => {
                tally.latencies.push(t.elapsed());
                tally.requests += 1;
                tally.bytes += body.len() as u64;
            }
            _ => tally.errors += 1,
        }
    }
}

/// Holds `GET /v1/events` open on `admin` and reads it until `cancel`.
async fn read_events(admin: String, cancel: CancellationToken) -> Result<Tally> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = hyper::Request::get(format!("http://{admin}/v1/events"))
        .header(hyper::header::ACCEPT, "text/event-stream")
        .body(Empty::new())?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, http.request(req))
        .await
        .context("GET /v1/events: no answer")??;
    if resp.status() != StatusCode::OK {
        bail!("GET /v1/events: {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut tally = Tally {
        requests: 1,
        ..Tally::default()
    };
    let mut pending = Vec::new();
    loop {
        let frame = tokio::select! {
            () = cancel.cancelled() => return Ok(tally),
            f = body.frame() => f,
        };
        let Some(frame) = frame else {
            bail!("GET /v1/events: the stream ended");
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        tally.bytes += data.len() as u64;
        pending.extend_from_slice(&data);
        // One event per blank-line-ended block with a `data:` line
        // (keep-alive comments have none).
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = pending.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
            if block.lines().any(|l| l.starts_with("data:")) {
                tally.events += 1;
            }
            if block.lines().any(|l| l == "event: lagged") {
                tally.lagged += 1;
            }
        }
    }
}

/// `GET /v1/ring` latency: `n` requests in turn, round the eleven nodes.
struct RingLatency {
    tally: Tally,
    answer_bytes: u64,
    all_live: bool,
}

async fn ring_latency(admins: Vec<String>, n: usize) -> Result<RingLatency> {
    let clients: Vec<_> = admins.iter().map(|a| AdminClient::new(a, None)).collect();
    // One request each first: connects, and the answer is checked.
    let mut all_live = true;
    for c in &clients {
        let view: RingView = c.ring(REQUEST_TIMEOUT).await?;
        all_live &= view.members.len() == NODES
            && view.members.iter().all(|m| m.liveness == Liveness::Live);
    }
    let mut tally = Tally::default();
    for i in 0..n {
        let t = Instant::now();
        let (status, body) = clients[i % clients.len()]
            .exchange(Method::GET, "/v1/ring", None, REQUEST_TIMEOUT)
            .await?;
        ensure!(status == StatusCode::OK, "GET /v1/ring: {status}");
        tally.latencies.push(t.elapsed());
        tally.requests += 1;
        tally.bytes += body.len() as u64;
    }
    Ok(RingLatency {
        answer_bytes: tally.bytes / tally.requests.max(1),
        all_live,
        tally,
    })
}

struct Run {
    round: usize,
    lap: (Duration, Duration),
    laps: Vec<Duration>,
    /// CPU time of the nodes (all threads but the clients') per lap.
    cpu_per_lap: Duration,
    load: Option<LoadTally>,
}

fn report(args: &Args, runs: &[Run], ring: &RingLatency) {
    let quiet: Vec<_> = runs.iter().filter(|r| r.load.is_none()).collect();
    let loaded: Vec<_> = runs.iter().filter(|r| r.load.is_some()).collect();
    let best = (
        quiet.iter().map(|r| r.lap.0).min().unwrap_or_default(),
        quiet.iter().map(|r| r.lap.1).min().unwrap_or_default(),
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "operator plane cost: lap time at node 0, {NODES} nodes on 127.0.0.1, zero delay, \
         tick station, {} laps per run",
        args.laps
    );
    println!(
        "load: GET /metrics on each of the {NODES} nodes every {} ms; one dashboard on node 0 \
         (GET /v1/events read, GET /v1/ring every {} s); clients at nice +{}, admin threads at nice +{}",
        SCRAPE_EVERY.as_millis(),
        RING_POLL_EVERY.as_secs(),
        CLIENTS_NICE.load(std::sync::atomic::Ordering::Relaxed),
        ringhost::admin::listen::NICE
    );
    println!(
        "{:<10} {:>10} {:>10} {:>8} {:>8} {:>9}   what the load did",
        "run", "p50", "p99", "/q p50", "/q p99", "cpu/lap"
    );
    for r in runs {
        let (name, what) = match &r.load {
            None => (format!("quiet {}", r.round), String::new()),
            Some(l) => (format!("loaded {}", r.round), describe(l)),
        };
        println!(
            "{:<10} {:>10} {:>10} {:>7.3}x {:>7.3}x {:>9}   {}",
            name,
            fmt(r.lap.0),
            fmt(r.lap.1),
            ratio(r.lap.0, best.0),
            ratio(r.lap.1, best.1),
            fmt(r.cpu_per_lap),
            what
        );
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[(v.len() - 1) / 2]
    };
    let med = (
        median(loaded.iter().map(|r| r.lap.0).collect()),
        median(loaded.iter().map(|r| r.lap.1).collect()),
    );
    let worst_quiet = (
        quiet.iter().map(|r| r.lap.0).max().unwrap_or_default(),
        quiet.iter().map(|r| r.lap.1).max().unwrap_or_default(),
    );
    println!(
        "{:<32} {:>7.3}x {:>7.3}x   (against the luckiest quiet run: biased high)",
        "ratio median loaded / best quiet",
        ratio(med.0, best.0),
        ratio(med.1, best.1)
    );
    println!(
        "{:<32} {:>7.3}x {:>7.3}x   (the noise: quiet runs among themselves)",
        "spread worst quiet / best quiet",
        ratio(worst_quiet.0, best.0),
        ratio(worst_quiet.1, best.1)
    );
    let pooled = |runs: &[&Run]| percentiles(runs.iter().flat_map(|r| r.laps.clone()).collect());
    let (pq, pl) = (pooled(&quiet), pooled(&loaded));
    println!(
        "{:<32} {:>7.3}x {:>7.3}x   (all loaded laps / all quiet laps: {} / {} p50, {} / {} p99)",
        "ratio pooled loaded / quiet",
        ratio(pl.0, pq.0),
        ratio(pl.1, pq.1),
        fmt(pl.0),
        fmt(pq.0),
        fmt(pl.1),
        fmt(pq.1)
    );
    let met = ratio(pl.0, pq.0) <= GOAL;
    println!(
        "goal: pooled loaded / quiet p50 <= {GOAL:.2}x: {}",
        if met { "met" } else { "NOT met" }
    );
    let cpu = |runs: &[&Run]| median(runs.iter().map(|r| r.cpu_per_lap).collect());
    let (cq, cl) = (cpu(&quiet), cpu(&loaded));
    println!(
        "nodes' CPU per lap, median: quiet {} loaded {} ({:+.1} %)",
        fmt(cq),
        fmt(cl),
        (ratio(cl, cq) - 1.0) * 100.0
    );
    let mut scrapes = Tally::default();
    for l in loaded.iter().filter_map(|r| r.load.as_ref()) {
        scrapes.add(l.scrapes.clone());
    }
    let (s50, s99) = percentiles(scrapes.latencies);
    println!(
        "GET /metrics latency under load: p50 {} p99 {}",
        fmt(s50),
        fmt(s99)
    );
    let (r50, r99) = percentiles(ring.tally.latencies.clone());
    println!(
        "GET /v1/ring latency, {NODES} nodes, {} requests round the {NODES} admin APIs: \
         p50 {} p99 {}   ({} B answers, every member live: {})",
        ring.tally.requests,
        fmt(r50),
        fmt(r99),
        ring.answer_bytes,
        if ring.all_live { "yes" } else { "NO" }
    );
}

fn describe(l: &LoadTally) -> String {
    let errors = l.scrapes.errors + l.ring_polls.errors + l.stream.errors;
    format!(
        "{:.1} s: {} scrapes, {}; {} events, {}{}; {} ring polls, {}{}",
        l.elapsed.as_secs_f64(),
        l.scrapes.requests,
        size(l.scrapes.bytes),
        l.stream.events,
        size(l.stream.bytes),
        if l.stream.lagged > 0 {
            format!(" ({} lagged)", l.stream.lagged)
        } else {
            String::new()
        },
        l.ring_polls.requests,
        size(l.ring_polls.bytes),
        if errors > 0 {
            format!("; {errors} FAILED requests")
        } else {
            String::new()
        }
    )
}

fn size(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else {
        format!("{:.1} KB", b as f64 / 1e3)
    }
}
