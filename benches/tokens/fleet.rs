//! In-process rings running the built-in `tokens` station (and only it),
//! and what the parts read from them: each node's kv `status` document
//! (stations/tokens/README.md, "kv"), straight from the node's kv store,
//! and node 0's lap times.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ringhost::config::{NodeConfig, StationSpec};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::common::{TickRing, percentiles};

/// Starts `n` nodes at zero delay running `tokens` with `settings` (init
/// config, `key=value`), each node's config then adjusted by `configure`.
///
/// # Errors
/// When a node does not start.
pub fn start(
    rt: &Runtime,
    n: usize,
    settings: &[(&str, &str)],
    configure: impl Fn(&mut NodeConfig),
) -> Result<TickRing> {
    let mut spec = StationSpec::builtin("tokens");
    for (k, v) in settings {
        spec = spec.with(k, v);
    }
    rt.block_on(TickRing::start_with(n, |c| {
        c.stations = vec![spec.clone()];
        configure(c);
    }))
}

/// Node `i`'s tokens status (`None` before its first stop).
pub fn status(ring: &TickRing, i: usize) -> Option<Value> {
    let raw = ring.nodes[i].kv().get("tokens", "status")?;
    serde_json::from_slice(&raw).ok()
}

/// A number at `path` (`/`-separated) in node `i`'s status; 0 if absent.
pub fn stat(ring: &TickRing, i: usize, path: &str) -> u64 {
    status(ring, i)
        .and_then(|s| s.pointer(path).and_then(Value::as_u64))
        .unwrap_or(0)
}

/// `token`'s count (lower bound) in node `i`'s status `top`; 0 if absent.
pub fn top_count(ring: &TickRing, i: usize, token: &str) -> u64 {
    status(ring, i)
        .and_then(|s| {
            s["top"]
                .as_array()?
                .iter()
                .find(|r| r["token"] == token)
                .and_then(|r| r["count"].as_u64())
        })
        .unwrap_or(0)
}

/// Waits (polling every 2 ms) until `ok` holds, at most `within`.
///
/// # Errors
/// When it does not hold in time (the error names `what`).
pub fn wait_until(within: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > within {
            bail!("not within {within:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(start.elapsed())
}

/// Lap times of node 0's visits reported since the last call (already
/// buffered), then of `more` visits to come.
///
/// # Errors
/// When the ring stops turning for 30 s.
pub fn laps(rt: &Runtime, ring: &mut TickRing, more: usize) -> Result<Vec<Duration>> {
    let mut got = Vec::new();
    rt.block_on(async {
        // A deadline already past still takes what is buffered.
        while let Ok((_, t)) = ring.next_visit(Instant::now()).await {
            got.extend(t);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..more {
            got.extend(ring.next_visit(deadline).await?.1);
        }
        anyhow::Ok(())
    })
    .context("lap times")?;
    Ok(got)
}

/// p50 of `laps` (zero when empty).
pub fn lap_p50(laps: &[Duration]) -> Duration {
    percentiles(laps.to_vec()).0
}

/// The tokens station's faults (failed calls: traps, timeouts) summed
/// over the ring's nodes, read from their metrics
/// (`ringhost_station_faults_total{station="tokens"}`).
pub fn faults(ring: &TickRing) -> u64 {
    let key = "ringhost_station_faults_total{station=\"tokens\"} ";
    ring.nodes
        .iter()
        .map(|n| {
            n.bus()
                .metrics()
                .encode()
                .lines()
                .find_map(|l| {
                    l.strip_prefix(key)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Stops the ring's nodes.
///
/// # Errors
/// When a node's shutdown fails.
pub fn stop(rt: &Runtime, ring: TickRing) -> Result<()> {
    rt.block_on(ring.shutdown())
}
