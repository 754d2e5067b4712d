//! Lap time of an 11-node ring at zero delay running the tick station,
//! against a raw TCP ring of the same shape with no wasm (the physical
//! limit on this box), and the cost of one station call with a 1 KB slot.
//!
//! Run: `cargo bench --bench lap` (add `-- --laps N` to change the count).
//! Both rings run in this process, on the same runtime, one after the
//! other, so the ratio compares like with like.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use ringhost::config::StationSpec;
use ringhost::station::StationHost;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{TickRing, fmt, load_station, percentiles, stop_context};

const NODES: usize = 11;
const WARMUP_LAPS: usize = 200;

fn main() -> Result<()> {
    let laps: usize = std::env::args()
        .skip_while(|a| a != "--laps")
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(3000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Raw before and after, compared against the faster of the two, so
        // a noisy neighbour cannot flatter the ratio.
        let raw1 = raw_ring(laps).await?;
        let ring1 = ringhost_ring(laps, false).await?;
        let sealed1 = ringhost_ring(laps, true).await?;
        let ring2 = ringhost_ring(laps, false).await?;
        let sealed2 = ringhost_ring(laps, true).await?;
        let raw2 = raw_ring(laps).await?;
        let best = |a: (Duration, Duration), b: (Duration, Duration)| (a.0.min(b.0), a.1.min(b.1));
        let ring = best(ring1, ring2);
        let sealed = best(sealed1, sealed2);
        let raw = (raw1.0.min(raw2.0), raw1.1.min(raw2.1));
        let call = station_call(100_000).await?;
        let empty = station_call_empty(100_000).await?;
        println!("lap time, {NODES} nodes on 127.0.0.1, zero delay, {laps} laps each");
        println!("{:<28} {:>10} {:>10}", "", "p50", "p99");
        for (name, r) in [("raw TCP ring, run 1", raw1), ("raw TCP ring, run 2", raw2)] {
            println!("{:<28} {:>10} {:>10}", name, fmt(r.0), fmt(r.1));
        }
        println!(
            "{:<28} {:>10} {:>10}",
            "ringhost + tick station",
            fmt(ring.0),
            fmt(ring.1)
        );
        println!(
            "{:<28} {:>9.2}x {:>9.2}x   (goal <= 1.5x)",
            "ratio ringhost / best raw",
            ring.0.as_secs_f64() / raw.0.as_secs_f64(),
            ring.1.as_secs_f64() / raw.1.as_secs_f64()
        );
        for (name, r) in [
            ("sealed links, run 1", sealed1),
            ("sealed links, run 2", sealed2),
        ] {
            println!("{:<28} {:>10} {:>10}", name, fmt(r.0), fmt(r.1));
        }
        println!(
            "{:<28} {:>9.2}x {:>9.2}x   (goal <= 1.2x)",
            "ratio sealed / plain",
            sealed.0.as_secs_f64() / ring.0.as_secs_f64(),
            sealed.1.as_secs_f64() / ring.1.as_secs_f64()
        );
        println!(
            "station call, echo, 1 KB slot: p50 {} mean {}   (goal <= 3 us)",
            fmt(call.0),
            fmt(call.1)
        );
        println!(
            "station call, echo, empty slot: p50 {} mean {}   (baseline for the slot copy)",
            fmt(empty.0),
            fmt(empty.1)
        );
        Ok(())
    })
}

/// Raw ring: each member reads a 64-byte message from its predecessor and
/// writes it to its successor; member 0 times the laps.
async fn raw_ring(laps: usize) -> Result<(Duration, Duration)> {
    const MSG: usize = 64;
    let mut listeners = Vec::new();
    for _ in 0..NODES {
        listeners.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let addrs: Vec<_> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    // Connect every edge i -> i+1.
    let mut outs = Vec::new();
    for i in 0..NODES {
        let s = TcpStream::connect(addrs[(i + 1) % NODES]).await?;
        s.set_nodelay(true)?;
        outs.push(s);
    }
    let mut ins = Vec::new();
    for l in &listeners {
        let (s, _) = l.accept().await?;
        s.set_nodelay(true)?;
        ins.push(s);
    }
    // ins[i] is member i's upstream, outs[i] its downstream.
    let mut tasks = Vec::new();
    let mut ins = ins.into_iter();
    let mut outs = outs.into_iter();
    let mut origin = (ins.next().unwrap(), outs.next().unwrap());
    let _ = &mut origin;
    for _ in 1..NODES {
        let (mut r, mut w) = (ins.next().unwrap(), outs.next().unwrap());
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; MSG];
            while r.read_exact(&mut buf).await.is_ok() {
                if w.write_all(&buf).await.is_err() {
                    break;
                }
            }
        }));
    }
    // The origin runs on a worker like every other member (and like
    // ringhost's nodes), not on the thread driving `block_on`.
    let origin = tokio::spawn(async move {
        let mut buf = [7u8; MSG];
        let mut times = Vec::with_capacity(laps);
        let mut last = Instant::now();
        origin.1.write_all(&buf).await?;
        for lap in 0..(WARMUP_LAPS + laps) {
            origin.0.read_exact(&mut buf).await?;
            let now = Instant::now();
            if lap >= WARMUP_LAPS {
                times.push(now - last);
            }
            last = now;
            origin.1.write_all(&buf).await?;
        }
        anyhow::Ok(times)
    });
    let times = origin.await??;
    for t in tasks {
        t.abort();
    }
    Ok(percentiles(times))
}

/// ringhost ring: 11 in-process nodes running the built-in tick station;
/// node 0 reports its lap times. `sealed`: every member holds one cluster
/// key, so every link is authenticated and encrypted (`ringhost::secure`).
async fn ringhost_ring(laps: usize, sealed: bool) -> Result<(Duration, Duration)> {
    let keys = ringhost::secure::ClusterKeys::fixed(ringhost::secure::KeySet::new(vec![
        ringhost::secure::ClusterKey::generate(),
    ])?);
    let mut ring = TickRing::start_with(NODES, |c| {
        c.cluster_keys = sealed.then(|| keys.clone());
    })
    .await?;
    let mut times = Vec::with_capacity(laps);
    let deadline = Instant::now() + Duration::from_secs(120);
    while times.len() < laps {
        if let (lap, Some(t)) = ring.next_visit(deadline).await?
            && lap as usize > WARMUP_LAPS
        {
            times.push(t);
        }
    }
    ring.shutdown().await?;
    Ok(percentiles(times))
}

async fn echo_station() -> Result<ringhost::station::Station> {
    let host = StationHost::new()?;
    let spec = StationSpec::builtin("echo");
    load_station(&host, &spec, None, Duration::from_millis(100)).await
}

async fn time_calls(slot: &[u8], calls: usize) -> Result<(Duration, Duration)> {
    let mut station = echo_station().await?;
    let ctx = stop_context();
    for _ in 0..1000 {
        station.call(&ctx, slot).await?;
    }
    // Time batches of 100 calls so the clock's own cost stays out.
    let mut per_call = Vec::with_capacity(calls / 100);
    let start = Instant::now();
    for _ in 0..calls / 100 {
        let t = Instant::now();
        for _ in 0..100 {
            let v = station.call(&ctx, slot).await?;
            debug_assert_eq!(v.slot.len(), slot.len());
        }
        per_call.push(t.elapsed() / 100);
    }
    let mean = start.elapsed() / calls as u32;
    Ok((percentiles(per_call).0, mean))
}

async fn station_call(calls: usize) -> Result<(Duration, Duration)> {
    time_calls(&[0x5a; 1024], calls).await
}

async fn station_call_empty(calls: usize) -> Result<(Duration, Duration)> {
    time_calls(&[], calls).await
}
