//! Part `check`: how fast an application server learns whether a token is
//! blocked, on node 0 of an 11-node ring at hold 0 (the ring turning as
//! fast as it can on the same cores).
//!
//! - HTTP: `GET /v1/stations/tokens/sets/blocked/{key}` on one kept-alive
//!   connection, for a blocked key (200) and an unknown one (404);
//!   baselines on the same server and connection kind: `GET /nope` (the
//!   router's 404, nothing looked up), and a raw TCP echo round trip (a
//!   thread echoing on 127.0.0.1). The four are interleaved, request by
//!   request, so they share the machine's moments.
//! - Stream: the time from a `put` in node 0's `blocked` set (what the
//!   station does at the stop a block lands) to its event at an SSE
//!   client of `/v1/stations/tokens/sets/blocked/events`; baseline: the
//!   same event at an in-process subscriber on a thread of its own (the
//!   set store's broadcast, no HTTP).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ringhost::station::sets::{SetEntry, SetEvent};
use ringhost::station::unix_ms;
use tokio::runtime::Runtime;

use crate::common::{TickRing, fmt, percentiles};
use crate::crossing::{NODES, post};
use crate::fleet;
use crate::http::{Http, echo_once, echo_server, watch_keys};

/// Runs `n` checks of each kind and `n / 4` stream events.
///
/// # Errors
/// When the ring or a client fails.
pub fn run(rt: &Runtime, n: usize) -> Result<()> {
    let mut ring = fleet::start(rt, NODES, &[("total", "1000")], |_| {})?;
    let r = on(rt, &mut ring, n);
    fleet::stop(rt, ring)?;
    r
}

fn on(rt: &Runtime, ring: &mut TickRing, n: usize) -> Result<()> {
    let admin = ring.admins[0].clone();
    let mut c = Http::connect(&admin)?;
    post(&mut c, "b evil-token 0 bench\n")?;
    fleet::wait_until(
        Duration::from_secs(30),
        "the manual block at node 0",
        || {
            ring.nodes[0]
                .sets()
                .get("tokens", "blocked", "evil-token", unix_ms())
                .is_some()
        },
    )?;
    let lap = fleet::lap_p50(&fleet::laps(rt, ring, 200)?);
    println!(
        "check latency at node 0 of {NODES} (ring turning, lap p50 {}), {n} requests each, \
         one kept-alive connection per kind, interleaved",
        fmt(lap)
    );
    let echo_addr = echo_server()?;
    let mut echo = std::net::TcpStream::connect(&echo_addr)?;
    echo.set_nodelay(true)?;
    echo.set_read_timeout(Some(crate::http::IO_TIMEOUT))?;
    let mut conns: Vec<Http> = (0..3)
        .map(|_| Http::connect(&admin))
        .collect::<Result<_>>()?;
    let kinds: [(&str, &str, u16); 3] = [
        (
            "GET .../sets/blocked/{key}, blocked",
            "/v1/stations/tokens/sets/blocked/evil-token",
            200,
        ),
        (
            "GET .../sets/blocked/{key}, not blocked",
            "/v1/stations/tokens/sets/blocked/good-token",
            404,
        ),
        ("GET /nope (router 404, baseline)", "/nope", 404),
    ];
    let mut times: Vec<Vec<Duration>> = (0..4).map(|_| Vec::with_capacity(n)).collect();
    for round in 0..n + 100 {
        for (k, (_, path, want)) in kinds.iter().enumerate() {
            let t = Instant::now();
            let (status, _) = conns[k].request("GET", path, &[])?;
            let took = t.elapsed();
            ensure!(status == *want, "{path}: {status}, not {want}");
            if round >= 100 {
                times[k].push(took);
            }
        }
        let t = Instant::now();
        echo_once(&mut echo, b"GET /v1/x HTTP/1.1\r\nHost: x\r\n\r\n")?;
        if round >= 100 {
            times[3].push(t.elapsed());
        }
    }
    let pct: Vec<(Duration, Duration)> = times.into_iter().map(percentiles).collect();
    let base = pct[2];
    let names = kinds
        .iter()
        .map(|k| k.0)
        .chain(["raw TCP echo, 32 B (baseline)"]);
    println!(
        "  {:<42} {:>10} {:>10}   /404 p50  /404 p99   /echo p50",
        "", "p50", "p99"
    );
    for (name, (p50, p99)) in names.zip(&pct) {
        println!(
            "  {name:<42} {:>10} {:>10}   {:>7.2}x  {:>7.2}x   {:>8.2}x",
            fmt(*p50),
            fmt(*p99),
            ratio(*p50, base.0),
            ratio(*p99, base.1),
            ratio(*p50, pct[3].0),
        );
    }
    stream(ring, &admin, (n / 4).max(10), base)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// The stream's latency: `events` puts into node 0's `blocked` set, 5 ms
/// apart, each timed to its SSE event and to an in-process subscriber.
fn stream(ring: &TickRing, admin: &str, events: usize, base: (Duration, Duration)) -> Result<()> {
    let sets = ring.nodes[0].sets().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let sse = watch_keys(
        admin,
        "/v1/stations/tokens/sets/blocked/events",
        0,
        tx.clone(),
        Arc::clone(&stop),
    )?;
    let (_, mut sub) = sets
        .subscribe("tokens", "blocked", unix_ms())
        .map_err(anyhow::Error::msg)?;
    let local = std::thread::spawn(move || {
        while let Ok(ev) = sub.blocking_recv() {
            if let SetEvent::Put(e) = &*ev
                && tx.send((1, e.key.clone(), Instant::now())).is_err()
            {
                return;
            }
        }
    });
    let mut sse_times = Vec::new();
    let mut local_times = Vec::new();
    let result = (|| -> Result<()> {
        // Wait for the snapshot's events to pass.
        std::thread::sleep(Duration::from_millis(200));
        while rx.try_recv().is_ok() {}
        for i in 0..events + 20 {
            let key = format!("stream-{i}");
            let entry = SetEntry {
                key: key.clone(),
                info: "bench (node 0): latency probe".into(),
                expires_unix_ms: unix_ms() + 60_000,
            };
            let t0 = Instant::now();
            sets.put("tokens", "blocked", vec![entry], unix_ms())
                .map_err(anyhow::Error::msg)?;
            let (mut got_sse, mut got_local) = (None, None);
            let deadline = Instant::now() + Duration::from_secs(10);
            while got_sse.is_none() || got_local.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                let (who, k, t) = rx
                    .recv_timeout(left)
                    .with_context(|| format!("the event of {key}"))?;
                if k == key {
                    if who == 0 {
                        got_sse = Some(t - t0);
                    } else {
                        got_local = Some(t - t0);
                    }
                }
            }
            if i >= 20 {
                sse_times.extend(got_sse);
                local_times.extend(got_local);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = sse.join();
    // The subscriber ends when the store's sender does (the ring stops).
    drop(local);
    result?;
    let (s50, s99) = percentiles(sse_times);
    let (l50, l99) = percentiles(local_times);
    println!(
        "  SSE: set put to event at the client, {events} events: p50 {} p99 {}   \
         ({:.2}x / {:.2}x the router 404; in-process subscriber p50 {} p99 {})",
        fmt(s50),
        fmt(s99),
        ratio(s50, base.0),
        ratio(s99, base.1),
        fmt(l50),
        fmt(l99)
    );
    Ok(())
}
