//! Part `slot`: the station's slot size against distinct tokens a second
//! fleet-wide, against its byte budget (`slot_max_bytes`, 64 KiB by
//! default), on an 11-node ring at hold 0.
//!
//! The window is shortened to 6 buckets of 1 s so a run reaches its steady
//! state in seconds (the budget is per slot, whatever the window). Every
//! 50 ms, `rate / 20` fresh 32-byte tokens are put, spread evenly, into the
//! nodes' inboxes (in process: this part is about the catalog, not the
//! transport). From the end of the first window on, every node's
//! `slot_bytes` (kv `status`, written at each of its stops) is sampled
//! every 50 ms: max and mean, with the counters per bucket the budget
//! left (`window.capacity`), the rows in the slot, the window's
//! observations and the error bound Δ every count carries.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::runtime::Runtime;

use crate::common::fmt;
use crate::crossing::NODES;
use crate::fleet;
use crate::stream::pack;

/// The budget the ring runs with (the station's default).
const BUDGET: u64 = 65_536;
/// Window: buckets of 1 s.
const BUCKETS: u64 = 6;
/// The station call bound here (the default, 100 ms, is passed by some
/// over-budget stops when other work shares the 2 cores; a timed-out stop
/// leaves the slot unchanged, which would hide its size).
const TIMEOUT_MS: u64 = 1000;
/// How often tokens are fed and sizes sampled.
const TICK: Duration = Duration::from_millis(50);

/// Runs each rate (distinct tokens a second) for `secs` seconds, at each
/// of `capacities` (the station's `capacity`: counters per bucket before
/// the byte budget; 512 by default, larger ones leave the budget to bind).
///
/// # Errors
/// When the ring fails.
pub fn run(rt: &Runtime, rates: &[u64], secs: u64, capacities: &[u64]) -> Result<()> {
    println!(
        "slot size against distinct tokens a second: {NODES} nodes, hold 0, window {BUCKETS} x 1 s, \
         budget {BUDGET} B, {secs} s a rate, sampled after the first window, \
         station timeout {TIMEOUT_MS} ms"
    );
    println!(
        "  {:>8} {:>9}  {:>9} {:>9} {:>7}  {:>8} {:>6} {:>10} {:>8}  {:>10}  dropped  faults",
        "capacity",
        "tokens/s",
        "max B",
        "mean B",
        "/budget",
        "in force",
        "rows",
        "window N",
        "delta",
        "lap p50"
    );
    for &capacity in capacities {
        at_capacity(rt, rates, secs, capacity)?;
    }
    Ok(())
}

fn at_capacity(rt: &Runtime, rates: &[u64], secs: u64, capacity: u64) -> Result<()> {
    let buckets = BUCKETS.to_string();
    let capacity_s = capacity.to_string();
    let mut ring = fleet::start(
        rt,
        NODES,
        &[
            ("bucket_s", "1"),
            ("buckets", &buckets),
            ("capacity", &capacity_s),
        ],
        |c| c.station_timeout_ms = TIMEOUT_MS,
    )?;
    let r = (|| -> Result<()> {
        fleet::wait_until(Duration::from_secs(30), "every node's first stop", || {
            (0..NODES).all(|i| fleet::status(&ring, i).is_some())
        })?;
        let mut next_token = 0u64;
        for &rate in rates {
            let _ = fleet::laps(rt, &mut ring, 0)?;
            let faults0 = fleet::faults(&ring);
            let start = Instant::now();
            let (mut max, mut sum, mut samples, mut dropped) = (0u64, 0u64, 0u64, 0u64);
            let mut last = serde_json::Value::Null;
            let per_tick = (rate as f64 * TICK.as_secs_f64()).round() as u64;
            let mut tick = 0u32;
            while start.elapsed() < Duration::from_secs(secs) {
                tick += 1;
                let tokens: Vec<String> = (next_token..next_token + per_tick)
                    .map(|t| format!("d{t:031x}"))
                    .collect();
                next_token += per_tick;
                for (i, node) in ring.nodes.iter().enumerate() {
                    let mine = tokens.iter().skip(i).step_by(NODES).cloned();
                    let inbox = node.inbox("tokens").expect("tokens inbox");
                    for p in pack(mine, 60_000) {
                        if inbox.push(p.bytes).is_err() {
                            dropped += p.lines;
                        }
                    }
                }
                if start.elapsed() >= Duration::from_secs(BUCKETS) {
                    for i in 0..NODES {
                        if let Some(s) = fleet::status(&ring, i) {
                            let b = s["slot_bytes"].as_u64().unwrap_or(0);
                            max = max.max(b);
                            sum += b;
                            samples += 1;
                            if i == 0 {
                                last = s;
                            }
                        }
                    }
                }
                let due = start + TICK * tick;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let lap = fleet::lap_p50(&fleet::laps(rt, &mut ring, 0)?);
            let w = &last["window"];
            println!(
                "  {capacity:>8} {rate:>9}  {max:>9} {:>9} {:>6.1}%  {:>8} {:>6} {:>10} {:>8}  {:>10}  {dropped:>7}  {}",
                sum / samples.max(1),
                100.0 * max as f64 / BUDGET as f64,
                num(&w["capacity"]),
                num(&w["tokens"]),
                num(&w["observations"]),
                num(&w["error_bound"]),
                fmt(lap),
                fleet::faults(&ring) - faults0,
            );
        }
        Ok(())
    })();
    fleet::stop(rt, ring)?;
    r
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}
