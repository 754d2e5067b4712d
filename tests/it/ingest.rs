//! Datagram ingest (issue 12): `STATION\npayload` datagrams over UDP and a
//! Unix socket become inputs in the station's inbox; what cannot be
//! delivered is dropped and counted, never stopping the socket.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ringhost::config::StationSpec;
use ringhost::metrics::DropLabels;
use ringhost::node::NodeHandle;
use ringhost::station::INBOX_CAPACITY;
use tokio::net::{UdpSocket, UnixDatagram};

use crate::deploy::{quick, scratch};
use crate::support::{TestRing, test_station};

fn received(node: &NodeHandle) -> u64 {
    node.bus().metrics().inputs_received.get()
}

fn dropped(node: &NodeHandle, reason: &'static str) -> u64 {
    node.bus()
        .metrics()
        .inputs_dropped
        .get_or_create(&DropLabels { reason })
        .get()
}

fn counted(node: &NodeHandle) -> u64 {
    node.kv()
        .get("inputs", "count")
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn wait_until(within: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !pred() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_at_a_moderate_rate_all_reach_an_input_station() {
    let ring = TestRing::start(1, |c| {
        quick(c);
        c.input_udp = Some("127.0.0.1:0".into());
        // A batch lost to a call timeout on a loaded machine (debug
        // wasmtime) would be a loss this test is not about.
        c.station_timeout_ms = 5000;
        c.stations = vec![StationSpec::file(test_station("inputs"))];
    })
    .await;
    let node = ring.nodes[0].as_ref().unwrap();
    let to = node.input_udp_addr().expect("udp input on");
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sender.connect(to).await.unwrap();
    let n = 100_000u64;
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        // Paced: a burst of 100, then wait for the node to take it (the
        // kernel's socket buffer, ~200 KiB of ~1 KiB per datagram, not the
        // node, would drop a blind flood).
        for _ in 0..100 {
            let mut d = b"inputs\n".to_vec();
            d.extend_from_slice(&sent.to_le_bytes());
            sender.send(&d).await.unwrap();
            sent += 1;
        }
        wait_until(Duration::from_secs(10), "the node took the burst", || {
            received(node) >= sent
        })
        .await;
    }
    wait_until(Duration::from_secs(20), "the station counted all", || {
        counted(node) >= n
    })
    .await;
    let took = started.elapsed();
    eprintln!(
        "{n} datagram inputs reached the station in {took:?}: {:.0}/s (debug build)",
        n as f64 / took.as_secs_f64()
    );
    assert_eq!(counted(node), n, "none lost, none twice");
    assert_eq!(dropped(node, "inbox_full"), 0);
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_dropped_and_counted_and_bad_datagrams_too() {
    // tick never reads its inbox: it fills, and the rest is dropped.
    let ring = TestRing::start(1, |c| {
        quick(c);
        c.input_udp = Some("127.0.0.1:0".into());
        c.stations = vec![StationSpec::builtin("tick")];
    })
    .await;
    let node = ring.nodes[0].as_ref().unwrap();
    let to = node.input_udp_addr().expect("udp input on");
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sender.connect(to).await.unwrap();
    // Flood until the node has dropped some for a full inbox (on a loaded
    // machine the kernel may drop much of a burst before the node reads).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while dropped(node, "inbox_full") == 0 {
        assert!(
            Instant::now() < deadline,
            "no inbox_full drop after {sent} datagrams"
        );
        for _ in 0..INBOX_CAPACITY {
            sender
                .send(format!("tick\n{sent}").as_bytes())
                .await
                .unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(received(node), INBOX_CAPACITY as u64);
    // Bad datagrams, resent until counted (the kernel may still hold
    // the flood's tail, and drop them).
    let deadline = Instant::now() + Duration::from_secs(10);
    while dropped(node, "unknown_station") == 0 || dropped(node, "malformed") == 0 {
        assert!(Instant::now() < deadline, "bad datagrams not counted");
        sender.send(b"nobody\nx").await.unwrap();
        sender.send(b"no newline").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(received(node), INBOX_CAPACITY as u64);
    assert_eq!(node.inbox("tick").unwrap().len(), INBOX_CAPACITY);
    eprintln!(
        "flood of {sent}: {} received, {} dropped as inbox_full (the rest lost in the kernel)",
        received(node),
        dropped(node, "inbox_full")
    );
    // The socket still serves.
    node.inbox("tick").unwrap().take(1);
    sender.send(b"tick\nafter").await.unwrap();
    wait_until(Duration::from_secs(5), "a datagram after the flood", || {
        received(node) == INBOX_CAPACITY as u64 + 1
    })
    .await;
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_datagram_socket_takes_inputs_and_is_removed_at_exit() {
    let path = scratch("ingest").join("inputs.sock");
    let p = path.clone();
    let ring = TestRing::start(1, move |c| {
        quick(c);
        c.input_unix = Some(p.clone());
        c.stations = vec![StationSpec::file(test_station("inputs"))];
    })
    .await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let node = ring.nodes[0].as_ref().unwrap();
    let sender = UnixDatagram::unbound().unwrap();
    for _ in 0..10 {
        sender.send_to(b"inputs\nx", &path).await.unwrap();
    }
    wait_until(Duration::from_secs(10), "the station counted 10", || {
        counted(node) == 10
    })
    .await;
    ring.shutdown().await;
    assert!(!path.exists(), "socket file removed at exit");
}
