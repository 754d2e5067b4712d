//! What `--station-fuel` costs: one call of the built-in `tick` station
//! (quiet, empty slot) on a reused instance, with fuel metering off and on,
//! runs alternating so a noisy neighbour hits both; the least budget with
//! which `tick` loads and runs (found by bisection); and how fast a
//! looping station (`spin`) burns fuel, to turn a budget into time.
//!
//! Run: `cargo bench --bench fuel` (add `-- --calls N`, default 100000 per
//! run).

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use ringhost::config::StationSpec;
use ringhost::station::{Station, StationError, StationHost};

use common::{fmt, load_station, percentiles, stop_context};

fn main() -> Result<()> {
    let calls: usize = std::env::args()
        .skip_while(|a| a != "--calls")
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let host = StationHost::new()?;
        let mut off = tick(&host, None).await?;
        let mut on = tick(&host, Some(1_000_000_000)).await?;
        let mut runs = Vec::new();
        for round in 1..=3 {
            runs.push((
                format!("fuel off, run {round}"),
                time_calls(&mut off, calls).await?,
            ));
            runs.push((
                format!("fuel on, run {round}"),
                time_calls(&mut on, calls).await?,
            ));
        }
        println!("station call, tick (quiet), empty slot, {calls} calls per run");
        println!("{:<20} {:>10} {:>10}", "", "p50", "mean");
        for (name, (p50, mean)) in &runs {
            println!("{name:<20} {:>10} {:>10}", ns(*p50), ns(*mean));
        }
        let best = |on: bool| {
            runs.iter()
                .filter(|(n, _)| n.contains(if on { "on" } else { "off" }))
                .map(|(_, (p50, _))| *p50)
                .min()
                .unwrap_or_default()
        };
        println!(
            "best p50: off {}, on {}: fuel costs {:.2}x",
            ns(best(false)),
            ns(best(true)),
            best(true).as_secs_f64() / best(false).as_secs_f64()
        );
        println!(
            "least budget with which tick loads and runs: {} units",
            least_fuel(&host).await?
        );
        let budget = 100_000_000;
        let took = burn(&host, budget).await?;
        println!(
            "spin (a loop) runs out of {budget} units in {}: {:.0} units/ms",
            fmt(took),
            budget as f64 / (took.as_secs_f64() * 1e3)
        );
        Ok(())
    })
}

fn ns(d: Duration) -> String {
    format!("{} ns", d.as_nanos())
}

/// How long the looping `spin` test station takes to use up `budget`
/// (the deadline set far beyond it), best of three.
async fn burn(host: &std::sync::Arc<StationHost>, budget: u64) -> Result<Duration> {
    let spin = std::path::Path::new(env!("RINGHOST_STATIONS_DIR")).join("spin.wasm");
    let spec = StationSpec::file(spin);
    let mut station = load_station(host, &spec, Some(budget), Duration::from_secs(60)).await?;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        match station.call(&stop_context(), &[]).await {
            Err(StationError::OutOfFuel(_)) => best = best.min(t.elapsed()),
            other => anyhow::bail!("spin should run out of fuel, got {other:?}"),
        }
    }
    Ok(best)
}

async fn tick(host: &std::sync::Arc<StationHost>, fuel: Option<u64>) -> Result<Station> {
    let spec = StationSpec::builtin("tick").with("quiet", "true");
    load_station(host, &spec, fuel, Duration::from_millis(100)).await
}

/// p50 of batches of 100 calls (per call), and the mean.
async fn time_calls(station: &mut Station, calls: usize) -> Result<(Duration, Duration)> {
    let ctx = stop_context();
    let mut slot = Vec::new();
    for _ in 0..1000 {
        slot = station.call(&ctx, &slot).await?.slot;
    }
    let mut per_call = Vec::with_capacity(calls / 100);
    let start = Instant::now();
    for _ in 0..calls / 100 {
        let t = Instant::now();
        for _ in 0..100 {
            slot = station.call(&ctx, &slot).await?.slot;
        }
        per_call.push(t.elapsed() / 100);
    }
    let mean = start.elapsed() / calls as u32;
    Ok((percentiles(per_call).0, mean))
}

/// The least budget with which loading `tick` and ten calls all succeed.
async fn least_fuel(host: &std::sync::Arc<StationHost>) -> Result<u64> {
    let ok = |fuel: u64| async move {
        let Ok(mut s) = tick(host, Some(fuel)).await else {
            return Ok(false);
        };
        let mut slot = Vec::new();
        for _ in 0..10 {
            match s.call(&stop_context(), &slot).await {
                Ok(v) => slot = v.slot,
                Err(StationError::OutOfFuel(_)) => return Ok(false),
                Err(e) => return Err(anyhow::Error::from(e)),
            }
        }
        Ok::<_, anyhow::Error>(true)
    };
    let (mut lo, mut hi) = (1u64, 100_000_000u64);
    if !ok(hi).await? {
        anyhow::bail!("tick needs more than {hi} units");
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ok(mid).await? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(hi)
}
