//! Part `ingest`: observations folded per second into one node, by the way
//! they arrive (UDP datagrams, Unix datagrams, HTTP inbox batches), against
//! two baselines run in the same process: the same datagrams into a plain
//! UDP sink on the nodes' runtime (the transport's ceiling), and the
//! station's fold in wasm with no transport (inputs put straight into its
//! inbox, `on-input` called in a loop: the station's ceiling).
//!
//! The stream: `--ingest-obs` observations (default 1,000,000) of
//! Zipf(1.0) over 100k tokens of 26 bytes, as `o TOKEN\n` lines packed in
//! payloads of at most 60,000 bytes (about 2,060 observations each).
//!
//! Counted as folded: the station's own `local.seen` (kv `status`, written
//! at each stop), not what was sent. The node is a ring of one at 10 ms
//! delay (a stop every 10 ms, as a node of a busy ring sees the particle;
//! inputs are folded between stops). Senders are well-behaved: a datagram
//! goes when at most 2 are in the kernel's buffer (212 KB by default) and
//! at most 64 inputs wait in the station's inbox; an HTTP batch answered
//! 429 is sent again. Drops are counted and printed.

use std::net::UdpSocket as StdUdp;
use std::os::unix::net::UnixDatagram as StdUnix;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ringhost::config::StationSpec;
use ringhost::metrics::DropLabels;
use ringhost::node::NodeHandle;
use ringhost::station::StationHost;
use tokio::runtime::Runtime;

use crate::common::{TickRing, load_station, stop_context};
use crate::http::Http;
use crate::stream::{Payload, Zipf, pack, token};
use crate::{fleet, rate};

/// Largest payload of observation lines.
const PAYLOAD_BYTES: usize = 60_000;
/// Inputs a sender lets wait in the station's inbox.
const MAX_PENDING: usize = 64;
/// Datagrams a sender lets wait in the kernel's receive buffer.
const MAX_IN_FLIGHT: u64 = 2;
/// No progress for this long ends a measurement (drops happened).
const STALL: Duration = Duration::from_secs(3);

/// Runs the part with `obs` observations per way.
///
/// # Errors
/// When a node or socket fails.
pub fn run(rt: &Runtime, obs: u64) -> Result<()> {
    let mut zipf = Zipf::new(100_000, 1.0, 12);
    let payloads = pack(
        (0..obs).map(|_| token("tok-", zipf.sample())),
        PAYLOAD_BYTES,
    );
    let lines: u64 = payloads.iter().map(|p| p.lines).sum();
    let bytes: usize = payloads.iter().map(|p| p.bytes.len()).sum();
    println!(
        "ingest into one node: {lines} observations, Zipf(1.0) over 100k tokens of 26 B, \
         {} payloads of <= {PAYLOAD_BYTES} B ({:.1} MB)",
        payloads.len(),
        bytes as f64 / 1e6
    );
    let fold = wasm_fold(rt, &payloads)?;
    println!(
        "  station fold in wasm, no transport (baseline)   {:>10}/s",
        rate(fold)
    );
    let sink = udp_sink(rt, &payloads)?;
    println!(
        "  UDP datagrams into a plain sink (baseline)      {:>10}/s",
        rate(sink)
    );

    let sock = std::env::temp_dir().join(format!("ringhost-tokbench-{}.sock", std::process::id()));
    let mut ring = fleet::start(rt, 1, &[("total", "0")], |c| {
        c.delay_ms = 10;
        c.input_udp = Some("127.0.0.1:0".into());
        c.input_unix = Some(sock.clone());
        c.station_timeout_ms = 1000;
    })?;
    let result = through_node(rt, &mut ring, &payloads, &sock, (fold, sink));
    fleet::stop(rt, ring)?;
    let _ = std::fs::remove_file(&sock);
    result.map(|_| ())
}

fn through_node(
    rt: &Runtime,
    ring: &mut TickRing,
    payloads: &[Payload],
    sock: &std::path::Path,
    (fold, sink): (f64, f64),
) -> Result<()> {
    fleet::wait_until(Duration::from_secs(30), "first stop", || {
        fleet::status(ring, 0).is_some()
    })?;
    let _ = fleet::laps(rt, ring, 0)?;
    let node = &ring.nodes[0];
    let udp = node.input_udp_addr().context("udp input")?;
    let admin = ring.admins[0].clone();
    let ways: [(&str, Way); 3] = [
        ("UDP datagrams (--input-udp)", Way::Udp(udp.to_string())),
        (
            "Unix datagrams (--input-unix)",
            Way::Unix(sock.to_path_buf()),
        ),
        ("HTTP POST inbox, kept alive", Way::Http(admin)),
    ];
    for (name, way) in ways {
        let faults0 = fleet::faults(ring);
        let m = measure(node, ring, payloads, way)?;
        let faults = fleet::faults(ring) - faults0;
        println!(
            "  {name:<32} folded {:>10}/s  {:>5.2}x fold  {:>5.2}x sink  ({} of {} folded in {:.2} s, {} dropped, {faults} faults)",
            rate(m.rate),
            m.rate / fold,
            m.rate / sink,
            m.folded,
            m.sent,
            m.took.as_secs_f64(),
            m.dropped
        );
    }
    Ok(())
}

/// How observations reach the node.
enum Way {
    Udp(String),
    Unix(std::path::PathBuf),
    Http(String),
}

struct Measured {
    rate: f64,
    folded: u64,
    sent: u64,
    took: Duration,
    dropped: u64,
}

fn dropped(node: &NodeHandle) -> u64 {
    ["unknown_station", "inbox_full", "malformed", "too_large"]
        .into_iter()
        .map(|reason| {
            node.bus()
                .metrics()
                .inputs_dropped
                .get_or_create(&DropLabels { reason })
                .get()
        })
        .sum()
}

fn measure(node: &NodeHandle, ring: &TickRing, payloads: &[Payload], way: Way) -> Result<Measured> {
    let inbox = node.inbox("tokens").context("tokens inbox")?;
    let metrics = Arc::clone(node.bus().metrics());
    let seen0 = fleet::stat(ring, 0, "/local/seen");
    let dropped0 = dropped(node);
    let lines: u64 = payloads.iter().map(|p| p.lines).sum();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let sender = {
        let (payloads, sent, stop) = (payloads.to_vec(), Arc::clone(&sent), Arc::clone(&stop));
        std::thread::spawn(move || -> Result<()> {
            // Waits until the node has room; false when told to stop.
            let room = |datagrams: u64| {
                while inbox.len() >= MAX_PENDING
                    || datagrams > metrics.inputs_received.get() + MAX_IN_FLIGHT
                {
                    if stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
                true
            };
            let received0 = metrics.inputs_received.get();
            match way {
                Way::Udp(addr) => {
                    let s = StdUdp::bind("127.0.0.1:0")?;
                    s.connect(&addr)?;
                    for (i, p) in payloads.iter().enumerate() {
                        if !room(received0 + i as u64) {
                            break;
                        }
                        s.send(&datagram(p))?;
                        sent.fetch_add(p.lines, Ordering::Relaxed);
                    }
                }
                Way::Unix(path) => {
                    let s = StdUnix::unbound()?;
                    s.connect(&path)?;
                    s.set_write_timeout(Some(Duration::from_secs(5)))?;
                    for (i, p) in payloads.iter().enumerate() {
                        if !room(received0 + i as u64) {
                            break;
                        }
                        s.send(&datagram(p))?;
                        sent.fetch_add(p.lines, Ordering::Relaxed);
                    }
                }
                Way::Http(addr) => {
                    let mut c = Http::connect(&addr)?;
                    for p in &payloads {
                        if !room(0) {
                            break;
                        }
                        loop {
                            let (status, body) =
                                c.request("POST", "/v1/stations/tokens/inbox", &p.bytes)?;
                            match status {
                                202 => break,
                                429 => std::thread::sleep(Duration::from_micros(200)),
                                s => bail!("inbox POST: {s} {}", String::from_utf8_lossy(&body)),
                            }
                        }
                        sent.fetch_add(p.lines, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        })
    };
    // Folded so far, and when it last grew.
    let (mut folded, mut last) = (0, start);
    while folded < lines && last.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(5));
        let now = fleet::stat(ring, 0, "/local/seen").saturating_sub(seen0);
        if now > folded {
            (folded, last) = (now, Instant::now());
        }
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender thread")?;
    let took = last - start;
    ensure!(folded > 0, "nothing folded");
    Ok(Measured {
        rate: folded as f64 / took.as_secs_f64(),
        folded,
        sent: sent.load(Ordering::Relaxed),
        took,
        dropped: dropped(node) - dropped0,
    })
}

/// `tokens\n` then the payload: one datagram input for the station.
fn datagram(p: &Payload) -> Vec<u8> {
    let mut d = Vec::with_capacity(p.bytes.len() + 7);
    d.extend_from_slice(b"tokens\n");
    d.extend_from_slice(&p.bytes);
    d
}

/// The station alone: payloads pushed into its inbox, `on-input` called
/// until it is empty; observations per second (checked against its
/// `local.seen` after one stop).
fn wasm_fold(rt: &Runtime, payloads: &[Payload]) -> Result<f64> {
    rt.block_on(async {
        let host = StationHost::new()?;
        let spec = StationSpec::builtin("tokens").with("total", "0");
        let mut st = load_station(&host, &spec, None, Duration::from_secs(1)).await?;
        let inbox = st.inbox().clone();
        let start = Instant::now();
        for chunk in payloads.chunks(MAX_PENDING) {
            for p in chunk {
                inbox
                    .push(p.bytes.clone())
                    .map_err(|e| anyhow::anyhow!(e))?;
            }
            while st.call_input().await? > 0 {}
        }
        let took = start.elapsed();
        st.call(&stop_context(), &[]).await?;
        let status = st.env().kv.get("tokens", "status").context("status")?;
        let status: serde_json::Value = serde_json::from_slice(&status)?;
        let lines: u64 = payloads.iter().map(|p| p.lines).sum();
        ensure!(
            status["local"]["seen"] == lines,
            "the station folded {} of {lines}",
            status["local"]["seen"]
        );
        Ok(lines as f64 / took.as_secs_f64())
    })
}

/// The same datagrams into a UDP socket on the nodes' runtime whose task
/// only counts the lines it receives; observations per second.
fn udp_sink(rt: &Runtime, payloads: &[Payload]) -> Result<f64> {
    let socket = rt.block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))?;
    let addr = socket.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let lines = Arc::new(AtomicU64::new(0));
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = {
        let (received, lines, cancel) = (Arc::clone(&received), Arc::clone(&lines), cancel.clone());
        rt.spawn(async move {
            let mut buf = vec![0u8; 70_000];
            loop {
                let n = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = socket.recv(&mut buf) => r,
                };
                if let Ok(n) = n {
                    let l = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                    lines.fetch_add(l - 1, Ordering::Relaxed);
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let total: u64 = payloads.iter().map(|p| p.lines).sum();
    let s = StdUdp::bind("127.0.0.1:0")?;
    s.connect(addr)?;
    let start = Instant::now();
    for (i, p) in payloads.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while i as u64 > received.load(Ordering::Relaxed) + MAX_IN_FLIGHT {
            ensure!(
                Instant::now() < deadline,
                "the sink took no datagram for 5 s"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
        s.send(&datagram(p))?;
    }
    fleet::wait_until(STALL, "the sink took every datagram", || {
        lines.load(Ordering::Relaxed) >= total
    })?;
    let took = start.elapsed();
    cancel.cancel();
    rt.block_on(task)?;
    Ok(total as f64 / took.as_secs_f64())
}
