//! A cut link with both processes alive: a fault-injecting TCP proxy sits
//! in front of one node (the ring enumeration names the proxy). Dropped
//! connections are redialed; a black-holed link is detected by missing
//! pongs; the node is skipped, does not make a particle of its own, and is
//! spliced back when the link heals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ringhost::config::{NodeConfig, RingLayout};
use ringhost::observe::{EventKind, Observer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{TestRing, Visit, host, init_tracing};

/// Forwards connections to `target`. While `black_hole` is set it forwards
/// nothing (sockets stay open); `cut` closes every open connection.
struct Proxy {
    black_hole: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(listener: TcpListener, target: String) -> Self {
        let black_hole = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(tokio::sync::Notify::new());
        let stop = CancellationToken::new();
        let (bh, ct, st) = (black_hole.clone(), cut.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    () = st.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (bh, ct, st) = (bh.clone(), ct.clone(), st.clone());
                tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let pipe = |mut r: tokio::net::tcp::OwnedReadHalf,
                                mut w: tokio::net::tcp::OwnedWriteHalf,
                                bh: Arc<AtomicBool>| async move {
                        let mut buf = vec![0u8; 16 << 10];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if !bh.load(Ordering::SeqCst) && w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let mut up = tokio::spawn(pipe(cr, sw, bh.clone()));
                    let mut down = tokio::spawn(pipe(sr, cw, bh));
                    tokio::select! {
                        () = st.cancelled() => {}
                        () = ct.notified() => {}
                        _ = &mut up => {}
                        _ = &mut down => {}
                    }
                    // Aborting the pipes drops their halves: both
                    // connections close.
                    up.abort();
                    down.abort();
                });
            }
        });
        Self {
            black_hole,
            cut,
            stop,
            task,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

/// Starts a node on each listener with short failure timers, all
/// reporting to one observer.
async fn fast_ring(
    layout: RingLayout,
    listeners: Vec<TcpListener>,
    configure: impl Fn(&mut NodeConfig),
) -> TestRing {
    let (observer, events) = Observer::channel();
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let mut c = NodeConfig::new(layout.clone(), i);
        c.delay_ms = 2;
        c.failure_timeout_ms = 300;
        c.heartbeat_interval_ms = 50;
        c.handshake_timeout_ms = 300;
        configure(&mut c);
        let node = ringhost::node::start(c, l, host(), observer.clone()).await;
        nodes.push(Some(node.expect("node starts")));
    }
    TestRing {
        layout,
        nodes,
        events,
        observer,
        seen: Vec::new(),
        all_started: Instant::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_link_is_skipped_without_a_second_particle_and_heals() {
    init_tracing();
    let n = 4;
    let behind = 2;
    // Real listeners for every node, plus a proxy listener for node 2: the
    // ring names the proxy, so every link into node 2 crosses it.
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let real = addrs[behind].clone();
    addrs[behind] = proxy_listener.local_addr().unwrap().to_string();
    let proxy = Proxy::start(proxy_listener, real).await;
    let layout = RingLayout::from_addrs(addrs).unwrap();
    let mut ring = fast_ring(layout, listeners, |_| {}).await;
    let first = ring.visits(3 * n, Duration::from_secs(20)).await;
    let generation = first[0].generation;

    // Dropped connections (both processes live): redialed, no skip needed.
    proxy.cut.notify_waiters();
    ring.visits(3 * n, Duration::from_secs(20)).await;

    // Black hole: node 1 sees no pongs and skips node 2.
    proxy.black_hole.store(true, Ordering::SeqCst);
    ring.wait_for(
        Duration::from_secs(10),
        "node 1 declares node 2 dead",
        |e| e.node == 1 && matches!(e.kind, EventKind::MemberDown { peer, .. } if peer == behind),
    )
    .await;
    // The ring goes on without node 2, with the same particle: node 2,
    // cut off from its predecessor, must not make one of its own.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut during = Vec::new();
    while Instant::now() < deadline {
        let ev = ring
            .next_event(Instant::now() + Duration::from_secs(5), "visits")
            .await;
        during.extend(Visit::of(&ev));
    }
    let others: Vec<&Visit> = during.iter().filter(|v| v.node != behind).collect();
    assert!(
        others.len() > 20,
        "the ring kept going: {} visits",
        others.len()
    );
    assert!(
        during.iter().all(|v| v.generation == generation),
        "one particle, no regeneration while node 2 was cut off"
    );

    // Heal: node 1's probe gets through and splices node 2 back in.
    proxy.black_hole.store(false, Ordering::SeqCst);
    proxy.cut.notify_waiters();
    ring.wait_for(Duration::from_secs(10), "node 2 spliced back", |e| {
        e.node == 1 && matches!(e.kind, EventKind::MemberUp { peer } if peer == behind)
    })
    .await;
    let after = ring.visits(4 * n, Duration::from_secs(20)).await;
    crate::support::assert_single_particle_in_ring_order(&after[n..], n);
    ring.shutdown().await;
}

/// Which side of a partition each member is on; `None`: no partition.
type Sides = Arc<std::sync::Mutex<Option<Vec<u8>>>>;

/// A ring-aware fault proxy in front of member `me`: it reads the dialer's
/// hello to learn who is calling, and black-holes the connection while a
/// partition puts the two on different sides.
async fn partition_proxy(listener: TcpListener, me: usize, target: String, sides: Sides) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        let sides = sides.clone();
        tokio::spawn(async move {
            // The first frame: a hello names the dialer.
            let mut len = [0u8; 4];
            if client.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            if body.len() > 1 << 20 || client.read_exact(&mut body).await.is_err() {
                return;
            }
            let from = match ringhost::wire::Frame::decode(body.clone().into()) {
                Ok(ringhost::wire::Frame::Hello(h)) => Some(h.from_index as usize),
                _ => None,
            };
            let Ok(mut server) = TcpStream::connect(&target).await else {
                return;
            };
            let blocked = move || {
                let s = sides.lock().unwrap();
                match (s.as_ref(), from) {
                    (Some(s), Some(f)) => s[f] != s[me],
                    _ => false,
                }
            };
            if blocked() {
                // Hold the connection open and silent: a black hole.
                let mut sink = [0u8; 4096];
                while let Ok(n) = client.read(&mut sink).await {
                    if n == 0 || !blocked() {
                        return; // healed: let the dialer reconnect cleanly
                    }
                }
                return;
            }
            if server.write_all(&len).await.is_err() || server.write_all(&body).await.is_err() {
                return;
            }
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let b1 = blocked.clone();
            let up = async move {
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || (!b1() && sw.write_all(&buf[..n]).await.is_err()) {
                        return;
                    }
                }
            };
            let down = async move {
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || (!blocked() && cw.write_all(&buf[..n]).await.is_err()) {
                        return;
                    }
                }
            };
            tokio::select! {
                () = up => {}
                () = down => {}
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_keeps_both_sides_circulating_and_heals_into_one_particle() {
    init_tracing();
    let n = 6;
    let mut real = Vec::new();
    let mut proxies = Vec::new();
    for _ in 0..n {
        real.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        proxies.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let layout = RingLayout::from_addrs(
        proxies
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let sides: Sides = Arc::default();
    let mut proxy_tasks = Vec::new();
    for (m, p) in proxies.into_iter().enumerate() {
        let target = real[m].local_addr().unwrap().to_string();
        proxy_tasks.push(tokio::spawn(partition_proxy(p, m, target, sides.clone())));
    }
    let mut ring = fast_ring(layout, real, |c| c.token_timeout_ms = 600).await;
    ring.visits(3 * n, Duration::from_secs(20)).await;

    // Partition {0,1,2} | {3,4,5}.
    *sides.lock().unwrap() = Some(vec![0, 0, 0, 1, 1, 1]);
    // Give both sides time to notice and regenerate where needed, then
    // check both circulate.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        ring.next_event(Instant::now() + Duration::from_secs(5), "events")
            .await;
    }
    let mut per_side = [0usize; 2];
    let window = Instant::now() + Duration::from_secs(1);
    while Instant::now() < window {
        let ev = ring
            .next_event(Instant::now() + Duration::from_secs(5), "visits")
            .await;
        if let EventKind::Visit { .. } = ev.kind {
            per_side[usize::from(ev.node >= 3)] += 1;
        }
    }
    assert!(
        per_side[0] > 10 && per_side[1] > 10,
        "both sides circulate during the partition: {per_side:?}"
    );

    // Heal: one ring, one particle, everyone live again.
    *sides.lock().unwrap() = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let visits = ring.visits(3 * n, Duration::from_secs(20)).await;
        let one = visits.windows(2).all(|w| {
            w[1].generation == w[0].generation
                && w[1].hop > w[0].hop
                && w[1].node == (w[0].node + 1) % n
        });
        if one {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no single ring within 20 s of healing"
        );
    }
    // Every node's latest view (views change only with events) is whole.
    for i in 0..n {
        let last = ring.seen.iter().rev().find_map(|e| match &e.kind {
            EventKind::ViewChanged { live } if e.node == i => Some(live.clone()),
            _ => None,
        });
        assert_eq!(
            last.map(|l| l.len()),
            Some(n),
            "node {i}'s view after healing"
        );
    }
    ring.shutdown().await;
    for t in proxy_tasks {
        t.abort();
    }
}
