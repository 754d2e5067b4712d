//! Every input has a bound (issue 10): what a peer sends past one is
//! refused on that peer's connection with a reason, and the node keeps
//! passing the particle.

use std::collections::BTreeMap;
use std::time::Duration;

use ringhost::observe::EventKind;
use ringhost::ring::token::{MAX_SLOTS, Particle};
use ringhost::wire::{Frame, Hello, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{TestRing, assert_single_particle_in_ring_order};

/// The frame of `p` as raw bytes, without the encoder's bound checks
/// (what a hostile or buggy peer can send): length prefix and body.
fn raw_particle(p: &Particle) -> Vec<u8> {
    let mut body = vec![0x10];
    body.extend_from_slice(&p.generation.to_be_bytes());
    body.extend_from_slice(&p.lap.to_be_bytes());
    body.extend_from_slice(&p.hop.to_be_bytes());
    body.extend_from_slice(&p.origin.to_be_bytes());
    body.extend_from_slice(&(p.view.len() as u16).to_be_bytes());
    body.extend_from_slice(&p.view);
    body.extend_from_slice(&(p.slots.len() as u16).to_be_bytes());
    for (name, data) in &p.slots {
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&(data.len() as u32).to_be_bytes());
        body.extend_from_slice(data);
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// A connection to member 1 posing as member 0, hello sent.
pub(crate) async fn as_member_0(ring: &TestRing) -> TcpStream {
    let mut s = TcpStream::connect(&ring.layout.members()[1].addr)
        .await
        .unwrap();
    s.write_all(&hello_of_member_0(&ring.layout)).await.unwrap();
    s
}

/// The plain hello member 0 of `layout` sends, framed (length first).
pub(crate) fn hello_of_member_0(layout: &ringhost::config::RingLayout) -> Vec<u8> {
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        ring_hash: layout.hash().to_string(),
        from_index: 0,
        from_name: layout.members()[0].name.clone(),
        releases: vec![],
        instance: 0,
    });
    let mut body = bytes::BytesMut::new();
    hello.encode(&mut body).unwrap();
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    framed
}

fn particle_with_slots(generation: u64, slots: usize) -> Particle {
    Particle {
        generation,
        lap: 1,
        hop: 1,
        origin: 0,
        view: vec![0b111],
        slots: (0..slots)
            .map(|i| (format!("s{i:05}"), Vec::new()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The field case: a particle claiming 65535 slots was decoded, the node
/// added its own slot and its encoder panicked in the owner task (the port
/// stayed open, no particle ever left again). Now the decoder refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_particle_with_too_many_slots_is_refused_and_the_ring_goes_on() {
    let mut ring = TestRing::start(3, |c| c.delay_ms = 0).await;
    ring.visits(3, Duration::from_secs(20)).await;
    let mut s = as_member_0(&ring).await;
    s.write_all(&raw_particle(&particle_with_slots(1_000_000, 65_535)))
        .await
        .unwrap();
    let ev = ring
        .wait_for(Duration::from_secs(10), "the particle refused", |e| {
            e.node == 1 && matches!(e.kind, EventKind::UpstreamRejected { .. })
        })
        .await;
    let EventKind::UpstreamRejected { reason } = ev.kind else {
        unreachable!()
    };
    assert!(
        reason.contains(&format!("65535 slots, over the bound of {MAX_SLOTS}")),
        "{reason}"
    );
    let metrics = ring.nodes[1].as_ref().unwrap().bus().metrics().encode();
    assert!(
        metrics.contains(r#"ringhost_connections_refused_total{port="ring",reason="frame"} 1"#),
        "{metrics}"
    );
    let visits = ring.visits(12, Duration::from_secs(20)).await;
    assert_single_particle_in_ring_order(&visits, 3);
    assert!(
        visits.iter().all(|v| v.generation < 1_000_000),
        "{visits:?}"
    );
    ring.shutdown().await;
}

/// A variant: a particle exactly at the slot bound is taken, a station
/// that would add one more slot is not run (a fault saying why), and the
/// particle goes on round the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_particle_at_the_slot_bound_goes_on_without_a_new_slot() {
    let mut ring = TestRing::start(3, |c| c.delay_ms = 0).await;
    ring.visits(3, Duration::from_secs(20)).await;
    let mut s = as_member_0(&ring).await;
    s.write_all(&raw_particle(&particle_with_slots(1_000_000, MAX_SLOTS)))
        .await
        .unwrap();
    let ev = ring
        .wait_for(Duration::from_secs(20), "the tick station not run", |e| {
            e.node == 1 && matches!(e.kind, EventKind::StationFault { .. })
        })
        .await;
    let EventKind::StationFault { station, cause } = ev.kind else {
        unreachable!()
    };
    assert_eq!(station, "tick");
    assert!(cause.contains("already carries 64 slots"), "{cause}");
    // The big particle went on: every member visits it (or, should a
    // loaded machine make a member regenerate meanwhile, its successor:
    // a generation above it, never the old ring's).
    let mut seen = [false; 3];
    ring.wait_for(Duration::from_secs(20), "every member visiting it", |e| {
        if let EventKind::Visit { generation, .. } = e.kind
            && generation >= 1_000_000
        {
            seen[e.node] = true;
        }
        seen.iter().all(|s| *s)
    })
    .await;
    drop(s);
    ring.shutdown().await;
}

/// A predecessor that sends pings but never reads: the node's pongs fill
/// the connection, a pong write times out, and that ends the link (before,
/// only the loop over the pending frames ended: the connection, perhaps
/// holding half a frame, went on being served and the custody ack taken
/// out for it was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_times_out_on_an_upstream_link_ends_that_link() {
    let mut ring = TestRing::start(3, |c| {
        c.delay_ms = 0;
        c.write_timeout_ms = 200;
    })
    .await;
    ring.visits(3, Duration::from_secs(20)).await;
    let s = as_member_0(&ring).await;
    let (mut rd, mut wr) = s.into_split();
    // Pings until the node hangs up (bounded: 2M pings, 26 MB, or 30 s).
    let mut body = bytes::BytesMut::new();
    Frame::Ping { n: 1, alive: None }.encode(&mut body).unwrap();
    let mut one = (body.len() as u32).to_be_bytes().to_vec();
    one.extend_from_slice(&body);
    let batch: Vec<u8> = one.repeat(10_000);
    let pinger = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for _ in 0..200 {
            let wrote = tokio::time::timeout_at(deadline, wr.write_all(&batch)).await;
            if !matches!(wrote, Ok(Ok(()))) {
                return;
            }
        }
    });
    let ev = ring
        .wait_for(Duration::from_secs(30), "the link ended on a stuck write", |e| {
            e.node == 1
                && matches!(&e.kind, EventKind::UpstreamRejected { reason } if reason.contains("timed out"))
        })
        .await;
    let EventKind::UpstreamRejected { reason } = ev.kind else {
        unreachable!()
    };
    assert!(
        reason.contains("writing a pong timed out after 200 ms"),
        "{reason}"
    );
    // The node closed the connection: reading what it sent ends.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match tokio::io::AsyncReadExt::read(&mut rd, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the node kept the connection open");
    pinger.abort();
    let visits = ring.visits(12, Duration::from_secs(20)).await;
    assert_single_particle_in_ring_order(&visits, 3);
    ring.shutdown().await;
}

/// A flood of silent sockets on the ring port (many times its connection
/// bound): established links keep the particle going, a status request
/// still gets its answer, and the flood's oldest sockets were closed to
/// make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_sockets_on_the_ring_port_stops_nothing() {
    let mut ring = TestRing::start(3, |c| {
        c.delay_ms = 0;
        c.max_ring_connections = 32;
    })
    .await;
    ring.visits(3, Duration::from_secs(20)).await;
    let addr = ring.layout.members()[1].addr.clone();
    let mut flood = Vec::new();
    for _ in 0..640 {
        flood.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let report = ringhost::status::query(&addr, None, Duration::from_secs(5))
        .await
        .expect("a status answer during the flood");
    assert_eq!(report.node.index, 1);
    let visits = ring.visits(12, Duration::from_secs(20)).await;
    assert_single_particle_in_ring_order(&visits, 3);
    let metrics = ring.nodes[1].as_ref().unwrap().bus().metrics().encode();
    let evicted = metrics
        .lines()
        .find(|l| l.starts_with("ringhost_connections_refused_total{") && l.contains("evicted"))
        .unwrap_or_else(|| panic!("no evictions counted:\n{metrics}"));
    let n: f64 = evicted.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 600.0, "{evicted}");
    drop(flood);
    ring.shutdown().await;
}

/// Tasks a node starts are tracked: a module fetch hanging on a peer that
/// never answers does not outlive the node's `shutdown` (before, the
/// deploy agent's fetches and loads were spawned loose and ran on after
/// it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_fetch_in_flight_and_leaves_no_task() {
    use ringhost::config::NodeConfig;
    use ringhost::model::{Hash, Release};
    use ringhost::observe::Observer;

    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    // Member 0 is this test: it dials member 1 announcing a release, and
    // accepts member 1's fetch without ever answering it.
    let (layout, mut listeners) = crate::support::bind_ring(2).await;
    let fake = listeners.remove(0);
    let mut config = NodeConfig::new(layout.clone(), 1);
    config.delay_ms = 0;
    config.deploy.watch = false;
    let node = ringhost::node::start(
        config,
        listeners.remove(0),
        crate::support::host(),
        Observer::none(),
    )
    .await
    .expect("node 1 starts");
    let release = Release {
        name: "marker".into(),
        version: 1,
        origin: 0,
        hash: Hash([7; 32]),
        size: 1000,
        config: vec![],
        signer: None,
        signature: None,
        published_ms: 1,
    };
    let mut s = TcpStream::connect(&layout.members()[1].addr).await.unwrap();
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        ring_hash: layout.hash().to_string(),
        from_index: 0,
        from_name: layout.members()[0].name.clone(),
        releases: vec![release],
        instance: 0,
    });
    let mut body = bytes::BytesMut::new();
    hello.encode(&mut body).unwrap();
    s.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&body).await.unwrap();
    // The fetch arrives at the fake member 0 and hangs there.
    let (fetch, _) = tokio::time::timeout(Duration::from_secs(10), fake.accept())
        .await
        .expect("member 1 fetches from member 0 within 10 s")
        .unwrap();
    let stopped = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .expect("shutdown returns within 10 s")
        .expect("a clean shutdown");
    assert!(
        stopped.elapsed() < Duration::from_secs(6),
        "{:?}",
        stopped.elapsed()
    );
    // Nothing the node started is alive (a loose fetch task would be,
    // waiting on the fetch's answer).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tasks() > before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tasks(), before, "tasks left after shutdown");
    drop((fetch, s));
}

/// Deeply nested JSON (30,000 levels), on the admin API and in a ring-port
/// frame: a clear refusal of that request or connection, no stack
/// overflow, and the node keeps serving. (Every body and control frame is
/// decoded into a typed struct, which refuses the first level of the
/// wrong shape; serde_json's depth limit of 128 covers any untyped
/// value.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_refused_and_the_node_goes_on() {
    use hyper::{Method, StatusCode};
    use ringhost::admin::client::AdminClient;

    let mut ring = TestRing::start(3, |c| c.delay_ms = 0).await;
    ring.visits(3, Duration::from_secs(20)).await;
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));

    // The admin API: 60 KB of nesting, under the body limit.
    let admin = crate::admin::admin_of(&ring, 1);
    let c = AdminClient::new(&admin, None);
    let body = bytes::Bytes::from(nested(30_000));
    let (code, answer) = c
        .exchange(
            Method::POST,
            "/v1/rollback",
            Some((body, "application/json")),
            Duration::from_secs(5),
        )
        .await
        .expect("an answer");
    assert!(code.is_client_error(), "{code}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("JSON"), "{text}");

    // The ring port: a control frame (announce) whose JSON nests as deep.
    let mut s = as_member_0(&ring).await;
    let mut frame = vec![0x40];
    frame.extend_from_slice(nested(30_000).as_bytes());
    s.write_all(&(frame.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&frame).await.unwrap();
    let ev = ring
        .wait_for(Duration::from_secs(10), "the frame refused", |e| {
            e.node == 1 && matches!(e.kind, EventKind::UpstreamRejected { .. })
        })
        .await;
    let EventKind::UpstreamRejected { reason } = ev.kind else {
        unreachable!()
    };
    assert!(reason.contains("bad frame: bad control frame"), "{reason}");

    let r = c
        .status(Duration::from_secs(5))
        .await
        .expect("still serving");
    assert_eq!(r.node.index, 1);
    assert_eq!(
        c.exchange(Method::GET, "/v1/status", None, Duration::from_secs(5))
            .await
            .expect("an answer")
            .0,
        StatusCode::OK
    );
    let visits = ring.visits(12, Duration::from_secs(20)).await;
    assert_single_particle_in_ring_order(&visits, 3);
    ring.shutdown().await;
}
