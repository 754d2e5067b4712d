//! The tokens station's figures (issue 12), each beside a baseline run in
//! the same process:
//!
//! 1. `ingest`: observations folded per second into one node, by UDP and
//!    Unix datagrams and HTTP inbox batches; baselines the station's fold
//!    in wasm with no transport, and the same datagrams into a plain UDP
//!    sink (`tokens/ingest.rs`). Goal: ≥ 500k/s with datagram batches.
//! 2. `block`: crossing a rule to blocked on all 11 nodes, in ms and laps,
//!    at hold 0 and 50 ms (`tokens/crossing.rs`).
//! 3. `check`: check latency p50/p99, HTTP lookups and the SSE stream;
//!    baselines a router 404 on the same server, a raw TCP echo and an
//!    in-process set subscriber (`tokens/check.rs`).
//! 4. `slot`: slot bytes against distinct tokens a second, vs the 64 KiB
//!    budget (`tokens/slot.rs`).
//! 5. `precision`: precision/recall of the total rule against exact counts
//!    of a seeded stream (`tokens/precision.rs`).
//!
//! Nodes run in process (one tokio runtime of 2 workers, as in the other
//! benches); clients are plain threads with blocking sockets, as an
//! application server beside the node would be.
//!
//! Run: `cargo bench --bench tokens` (all parts, about two minutes), or
//! pick: `-- --part ingest|block|check|slot|precision` (comma-separated);
//! sizes: `--ingest-obs N` (1000000), `--trials N` (10 per hold),
//! `--block-watch both|memory` (both: node memory and SSE; memory: no SSE
//! readers), `--checks N` (2000), `--slot-rates A,B,C` (1000,10000,100000),
//! `--slot-secs N` (10), `--slot-capacities A,B` (512,20000),
//! `--precision-obs N` (220000).

mod common;

#[path = "common/args.rs"]
mod args;
#[path = "tokens/check.rs"]
mod check;
#[path = "tokens/crossing.rs"]
mod crossing;
#[path = "tokens/fleet.rs"]
mod fleet;
#[path = "tokens/http.rs"]
mod http;
#[path = "tokens/ingest.rs"]
mod ingest;
#[path = "tokens/precision.rs"]
mod precision;
#[path = "tokens/slot.rs"]
mod slot;
#[path = "tokens/stream.rs"]
mod stream;

use anyhow::{Result, bail};

use args::arg;

const PARTS: [&str; 5] = ["ingest", "block", "check", "slot", "precision"];

fn main() -> Result<()> {
    let parts: String = arg("--part", PARTS.join(","))?;
    let parts: Vec<&str> = parts.split(',').collect();
    for p in &parts {
        if !PARTS.contains(p) {
            bail!("--part {p:?}: one of {}", PARTS.join(", "));
        }
    }
    let rates: String = arg("--slot-rates", "1000,10000,100000".to_string())?;
    let rates = rates
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<u64>, _>>()?;
    // Node warnings (station faults, drops) go to stderr; RUST_LOG to change.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let capacities: String = arg("--slot-capacities", "512,20000".to_string())?;
    let capacities = capacities
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<u64>, _>>()?;
    let watch_sse = match arg("--block-watch", "both".to_string())?.as_str() {
        "both" => true,
        "memory" => false,
        w => bail!("--block-watch {w:?}: both or memory"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for part in PARTS.iter().filter(|p| parts.contains(p)) {
        match *part {
            "ingest" => ingest::run(&rt, arg("--ingest-obs", 1_000_000)?)?,
            "block" => crossing::run(&rt, arg("--trials", 10)?, watch_sse)?,
            "check" => check::run(&rt, arg("--checks", 2000)?)?,
            "slot" => slot::run(&rt, &rates, arg("--slot-secs", 10)?, &capacities)?,
            "precision" => precision::run(&rt, arg("--precision-obs", 220_000)?)?,
            _ => unreachable!("checked above"),
        }
        println!();
    }
    Ok(())
}

/// A rate as `1.23 M` / `456.7 k`.
fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else {
        format!("{:.1} k", per_s / 1e3)
    }
}
