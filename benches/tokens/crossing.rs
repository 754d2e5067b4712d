//! Part `block`: the time from crossing a rule to blocked on every node of
//! an 11-node ring, at hold 0 and 50 ms (the station's `hold_ms`), in ms
//! and in laps (node 0's lap p50 over the same trials).
//!
//! Each trial: a fresh token gets `total − 1` observations spread over
//! the nodes (posted to their inboxes); once every node's status counts
//! them (merged into the catalog), one more observation is posted to one
//! node (rotating) over its admin API: that POST is the crossing (t0).
//! Every node's `blocked` set is watched over its SSE stream
//! (`GET /v1/stations/tokens/sets/blocked/events`), one reader thread per
//! node; and in each node's memory by an in-process subscriber of its set
//! store (a thread per node; from that moment `GET .../blocked/{token}`
//! answers blocked). A node's time is when the token's `put` event
//! reached the reader. Printed for both: first node blocked (the ingest
//! and the wait for the particle at the crossing node), last node blocked
//! (every node), and last − first (the issue's "every node enforces it
//! within one lap of the crossing"), p50 and max over the trials, in ms
//! and in laps.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ringhost::station::sets::SetEvent;
use ringhost::station::unix_ms;
use tokio::runtime::Runtime;

use crate::common::{fmt, percentiles};
use crate::fleet;
use crate::http::{Http, watch_keys};

/// Ring size of this part.
pub const NODES: usize = 11;
/// The total rule of this part's ring.
const TOTAL: u64 = 1000;

/// Runs `trials` trials at each hold; `sse`: also watch by SSE (11 more
/// reader threads, and the admin threads' writes, on the same cores).
///
/// # Errors
/// When the ring fails or a block does not reach every node in 30 s.
pub fn run(rt: &Runtime, trials: usize, sse: bool) -> Result<()> {
    println!(
        "crossing a rule to blocked on every node: {NODES} nodes, total rule {TOTAL}, \
         {trials} trials per hold, watched in every node's memory{}",
        if sse {
            " and by SSE on every node"
        } else {
            " (no SSE)"
        }
    );
    println!(
        "  {:<24} {:>10}   {:>21}   {:>21}   {:>21}",
        "hold, watched by",
        "lap p50",
        "first blocked p50/max",
        "all blocked p50/max",
        "all - first p50/max"
    );
    for hold in [0u64, 50] {
        let hold_s = hold.to_string();
        let total_s = TOTAL.to_string();
        let mut ring = fleet::start(
            rt,
            NODES,
            &[("total", &total_s), ("hold_ms", &hold_s), ("top", "64")],
            |_| {},
        )?;
        let r = trials_on(rt, &mut ring, trials, hold, sse);
        let faults = fleet::faults(&ring);
        fleet::stop(rt, ring)?;
        let t = r?;
        let lap = fleet::lap_p50(&t.laps);
        let mut stops = t.stops.clone();
        stops.sort_unstable();
        println!(
            "  {:<24} {:>10}   all - first in stops (ring-wide visits): p50 {} max {} \
             (a lap is {NODES} stops); {faults} station faults",
            format!("{hold} ms"),
            "",
            stops.get(stops.len() / 2).copied().unwrap_or(0),
            stops.last().copied().unwrap_or(0),
        );
        for (by, w) in [("node memory", &t.memory), ("SSE clients", &t.sse)] {
            if w.first.is_empty() {
                continue;
            }
            let stats = |v: &[Duration]| {
                (
                    percentiles(v.to_vec()).0,
                    v.iter().max().copied().unwrap_or_default(),
                )
            };
            let cols = [stats(&w.first), stats(&w.all), stats(&w.spread)];
            let label = format!("{hold} ms, {by}");
            println!(
                "  {label:<24} {:>10}   {}",
                fmt(lap),
                cols.iter()
                    .map(|(a, b)| format!("{:>10}/{:<10}", fmt(*a), fmt(*b)))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
            let laps = |d: Duration| d.as_secs_f64() / lap.as_secs_f64();
            println!(
                "  {:<24} {:>10}   {}",
                "",
                "in laps",
                cols.iter()
                    .map(|(a, b)| format!("{:>10.2}/{:<10.2}", laps(*a), laps(*b)))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
        }
    }
    Ok(())
}

/// Times from the crossing, per trial, as one kind of watcher saw them.
#[derive(Default)]
struct Seen {
    first: Vec<Duration>,
    all: Vec<Duration>,
    spread: Vec<Duration>,
}

impl Seen {
    fn add(&mut self, t0: Instant, when: &HashMap<usize, Instant>) {
        let first = *when.values().min().expect("nodes");
        let last = *when.values().max().expect("nodes");
        self.first.push(first - t0);
        self.all.push(last - t0);
        self.spread.push(last - first);
    }
}

struct Trials {
    sse: Seen,
    memory: Seen,
    /// Ring-wide stops between the first and the last node's block.
    stops: Vec<u64>,
    laps: Vec<Duration>,
}

fn trials_on(
    rt: &Runtime,
    ring: &mut crate::common::TickRing,
    trials: usize,
    hold: u64,
    sse: bool,
) -> Result<Trials> {
    fleet::wait_until(Duration::from_secs(30), "every node's first stop", || {
        (0..NODES).all(|i| fleet::status(ring, i).is_some())
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut readers = Vec::new();
    for (i, admin) in ring.admins.iter().enumerate().filter(|_| sse) {
        readers.push(watch_keys(
            admin,
            "/v1/stations/tokens/sets/blocked/events",
            i,
            tx.clone(),
            Arc::clone(&stop),
        )?);
    }
    // In-process subscribers, tagged NODES + i. They end when the ring
    // stops (the stores' senders go) or at their next event after `rx`
    // is gone.
    // Each also sends the ring's stops so far (every node's visit
    // counter, summed) as it wakes: how many stops the block took to
    // spread, whatever the lap time then (noisy by the wake-up delay).
    let metrics: Vec<_> = ring
        .nodes
        .iter()
        .map(|n| Arc::clone(n.bus().metrics()))
        .collect();
    let (stops_tx, stops_rx) = mpsc::channel::<(usize, String, u64)>();
    for (i, node) in ring.nodes.iter().enumerate() {
        let (_, mut sub) = node
            .sets()
            .subscribe("tokens", "blocked", unix_ms())
            .map_err(anyhow::Error::msg)?;
        let (tx, stops_tx, metrics) = (tx.clone(), stops_tx.clone(), metrics.clone());
        std::thread::spawn(move || {
            while let Ok(ev) = sub.blocking_recv() {
                if let SetEvent::Put(e) = &*ev {
                    let now = Instant::now();
                    let stops = metrics.iter().map(|m| m.visits.get()).sum();
                    if tx.send((NODES + i, e.key.clone(), now)).is_err()
                        || stops_tx.send((i, e.key.clone(), stops)).is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
    let mut clients = ring
        .admins
        .iter()
        .map(|a| Http::connect(a))
        .collect::<Result<Vec<_>>>()?;
    let _ = fleet::laps(rt, ring, 0)?;
    let mut out = Trials {
        sse: Seen::default(),
        memory: Seen::default(),
        stops: Vec::new(),
        laps: Vec::new(),
    };
    let wait = Duration::from_secs(30) + Duration::from_millis(hold * 50);
    let result = (|| -> Result<()> {
        for trial in 0..trials {
            let token = format!("cross-{hold}-{trial}");
            // total − 1 over the nodes, round robin.
            let per = (TOTAL - 1) / NODES as u64;
            for (i, c) in clients.iter_mut().enumerate() {
                let n = per + u64::from((i as u64) < (TOTAL - 1) % NODES as u64);
                post(c, &format!("o {token}\n").repeat(n as usize))?;
            }
            fleet::wait_until(wait, "the share merged at every node", || {
                (0..NODES).all(|i| fleet::top_count(ring, i, &token) == TOTAL - 1)
            })?;
            while rx.try_recv().is_ok() {}
            while stops_rx.try_recv().is_ok() {}
            let at = trial % NODES;
            let t0 = Instant::now();
            post(&mut clients[at], &format!("o {token}\n"))?;
            let mut when: HashMap<usize, Instant> = HashMap::new();
            let deadline = Instant::now() + wait;
            let watchers = if sse { 2 * NODES } else { NODES };
            while when.len() < watchers {
                let left = deadline.saturating_duration_since(Instant::now());
                let (node, key, t) = rx.recv_timeout(left).with_context(|| {
                    format!("{token}: {} of {watchers} watchers saw it", when.len())
                })?;
                if key == token {
                    when.entry(node).or_insert(t);
                }
            }
            let (by_sse, by_memory): (HashMap<usize, Instant>, HashMap<usize, Instant>) =
                when.into_iter().partition(|(n, _)| *n < NODES);
            if sse {
                out.sse.add(t0, &by_sse);
            }
            out.memory.add(t0, &by_memory);
            let mut stops: HashMap<usize, u64> = HashMap::new();
            while let Ok((node, key, n)) = stops_rx.try_recv() {
                if key == token {
                    stops.entry(node).or_insert(n);
                }
            }
            if stops.len() == NODES {
                let (lo, hi) = (stops.values().min(), stops.values().max());
                out.stops.push(hi.zip(lo).map_or(0, |(h, l)| h - l));
            }
            out.laps.extend(fleet::laps(rt, ring, 0)?);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
    result?;
    ensure!(!out.laps.is_empty(), "no lap times");
    Ok(out)
}

/// POSTs `lines` to the tokens inbox on `c`.
///
/// # Errors
/// Any answer but 202.
pub fn post(c: &mut Http, lines: &str) -> Result<()> {
    let (status, body) = c.request("POST", "/v1/stations/tokens/inbox", lines.as_bytes())?;
    if status != 202 {
        bail!("inbox POST: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
