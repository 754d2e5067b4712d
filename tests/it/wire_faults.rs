//! Bad neighbours and bad bytes on the ring port: they lose their own
//! connection; the node stays up and the ring keeps going.

use std::time::{Duration, Instant};

use ringhost::config::{NodeConfig, RingLayout};
use ringhost::observe::{EventKind, Observer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{TestRing, assert_single_particle_in_ring_order, host};

/// After a fault, the particle still walks the ring with one generation.
async fn ring_still_circles(ring: &mut TestRing) {
    let visits = ring.visits(3 * 4, Duration::from_secs(20)).await;
    assert_single_particle_in_ring_order(&visits, 3);
}

/// Waits for node `node` to reject an upstream connection, returning why.
async fn rejection(ring: &mut TestRing, node: usize) -> String {
    let ev = ring
        .wait_for(Duration::from_secs(10), "an upstream rejection", |e| {
            e.node == node && matches!(e.kind, EventKind::UpstreamRejected { .. })
        })
        .await;
    match ev.kind {
        EventKind::UpstreamRejected { reason } => reason,
        _ => unreachable!(),
    }
}

/// Reads until the peer closes (bounded): the node hung up on us.
async fn assert_closed_by_peer(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // e.g. a refuse frame before the close
            Err(_) => panic!("the node did not close the connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbour_with_a_different_enumeration_is_refused() {
    let mut ring = TestRing::start(3, |c| c.delay_ms = 0).await;
    ring.visits(3, Duration::from_secs(20)).await;

    // A stranger whose ring is {itself, node 1}: node 1 is its successor.
    let stranger = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = ring.layout.members()[1].addr.clone();
    let other =
        RingLayout::from_addrs([stranger.local_addr().unwrap().to_string(), target]).unwrap();
    let (observer, mut events) = Observer::channel();
    let mut config = NodeConfig::new(other.clone(), 0);
    config.delay_ms = 0;
    let handle = ringhost::node::start(config, stranger, host(), observer)
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await.expect("stranger events").kind {
                EventKind::LinkRefused { reason } => return reason,
                _ => continue,
            }
        }
    })
    .await
    .expect("the stranger is refused within 10 s");
    // Each side names the hashes from its own side: "ours" is the
    // reader's own ring.
    let short = |h: &str| h[..12].to_string();
    let (theirs, ours) = (short(ring.layout.hash()), short(other.hash()));
    assert!(
        refused.contains(&format!(
            "its enumeration hashes to {theirs}, ours to {ours}"
        )),
        "{refused}"
    );
    let why = rejection(&mut ring, 1).await;
    assert!(
        why.contains(&format!("theirs hashes to {ours}, ours to {theirs}")),
        "{why}"
    );
    handle.shutdown().await.unwrap();
    ring_still_circles(&mut ring).await;
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_close_only_that_connection() {
    let mut ring = TestRing::start(3, |c| c.delay_ms = 0).await;
    ring.visits(3, Duration::from_secs(20)).await;
    let addr = ring.layout.members()[1].addr.clone();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    // A plausible length, then a kind byte that means nothing.
    s.write_all(b"\x00\x00\x00\x05\xffjunk").await.unwrap();
    let why = rejection(&mut ring, 1).await;
    assert!(why.contains("unknown frame kind"), "{why}");
    assert_closed_by_peer(&mut s).await;
    ring_still_circles(&mut ring).await;
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_only_that_connection() {
    let mut ring = TestRing::start(3, |c| c.delay_ms = 0).await;
    ring.visits(3, Duration::from_secs(20)).await;
    let addr = ring.layout.members()[2].addr.clone();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let why = rejection(&mut ring, 2).await;
    assert!(why.contains("larger than"), "{why}");
    assert_closed_by_peer(&mut s).await;
    ring_still_circles(&mut ring).await;
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_after_a_valid_hello_closes_only_that_connection() {
    let mut ring = TestRing::start(3, |c| c.delay_ms = 0).await;
    ring.visits(3, Duration::from_secs(20)).await;
    // Pose as node 0 (a valid hello), then cut a particle frame short.
    let mut s = crate::bounds::as_member_0(&ring).await;
    s.write_all(&100u32.to_be_bytes()).await.unwrap();
    s.write_all(b"\x10only-ten").await.unwrap();
    s.shutdown().await.unwrap();
    let why = rejection(&mut ring, 1).await;
    assert!(why.contains("bad frame"), "{why}");
    ring_still_circles(&mut ring).await;
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_dropped_at_the_handshake_deadline() {
    let mut ring = TestRing::start(3, |c| {
        c.delay_ms = 0;
        c.handshake_timeout_ms = 200;
    })
    .await;
    let addr = ring.layout.members()[0].addr.clone();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let why = rejection(&mut ring, 0).await;
    assert!(why.contains("no hello"), "{why}");
    assert_closed_by_peer(&mut s).await;
    ring_still_circles(&mut ring).await;
    ring.shutdown().await;
}

/// A dialer's hello that comes after the failure timeout (its first
/// segment lost and resent by TCP on a lossy link) is still answered: the
/// accepting side waits at least 2 s for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_resent_late_by_a_lossy_link_is_still_answered() {
    let ring = TestRing::start(3, |c| {
        c.delay_ms = 0;
        c.handshake_timeout_ms = 200;
        c.failure_timeout_ms = 200;
    })
    .await;
    let mut s = TcpStream::connect(&ring.layout.members()[1].addr)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(&crate::bounds::hello_of_member_0(&ring.layout))
        .await
        .unwrap();
    // An answer frame (a welcome, or a refusal naming why), not a close.
    let mut len = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut len)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the node closed a connection whose hello came 800 ms late: {read:?}"
    );
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_claiming_a_linked_member_is_refused() {
    let mut ring = TestRing::start(3, |c| c.delay_ms = 0).await;
    ring.visits(3, Duration::from_secs(20)).await;
    // Another process started as member 0 (same name), listening
    // elsewhere: it dials member 1, whose link from the real member 0 is
    // alive.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = NodeConfig::new(ring.layout.clone(), 0);
    config.delay_ms = 0;
    let twin = ringhost::node::start(config, listener, host(), Observer::none())
        .await
        .unwrap();
    let why = ring
        .wait_for(Duration::from_secs(10), "the conflict at node 1", |e| {
            e.node == 1
                && matches!(&e.kind, EventKind::UpstreamRejected { reason } if reason.contains("already linked"))
        })
        .await;
    eprintln!("{why:?}");
    // The twin knows it is the duplicate: it stops by itself, with an
    // error, instead of wandering on to another member.
    let ended = tokio::time::timeout(Duration::from_secs(10), twin.wait())
        .await
        .expect("the twin stops by itself within 10 s");
    let err = ended.expect_err("the twin stops with an error");
    let err = format!("{err:#}");
    assert!(
        err.contains("duplicate") && err.contains("member 0") && err.contains("already linked"),
        "{err}"
    );
    // The real member 0 keeps its place: one particle, in ring order.
    ring_still_circles(&mut ring).await;
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_requests_on_the_ring_port_are_refused_naming_the_admin_api() {
    use ringhost::deploy::agent::request;
    use ringhost::model::Request;
    let mut ring = TestRing::start(3, |c| c.delay_ms = 0).await;
    ring.visits(3, Duration::from_secs(20)).await;
    let addr = ring.layout.members()[1].addr.clone();
    let admin = ring.nodes[1]
        .as_ref()
        .and_then(|n| n.admin_addr())
        .expect("node 1 serves an admin API");
    let requests = [
        Request::Push {
            name: "tick".into(),
            config: vec![],
            signer: None,
            signature: None,
            local: false,
        },
        Request::Rollback {
            name: "tick".into(),
        },
        Request::ConfigSet {
            key: "k".into(),
            value: Some("v".into()),
        },
        Request::ConfigGet { key: "k".into() },
    ];
    for req in requests {
        let kind = req.kind_name();
        let blob = bytes::Bytes::from_static(b"\0asm");
        let (reply, _) = request(&addr, None, req, blob, 1 << 20, Duration::from_secs(10))
            .await
            .expect("an answer");
        let e = reply.error.expect("refused");
        assert!(
            e.contains(kind)
                && e.contains(&format!("admin API is at http://{admin} "))
                && e.contains("not served on the ring port"),
            "{e}"
        );
    }
    // Nothing reached the config bus; the ring goes on.
    let node = ringhost::admin::client::connect(&addr, None).await.unwrap();
    assert!(
        node.config_get("k").await.is_err(),
        "no config write landed"
    );
    ring_still_circles(&mut ring).await;
    ring.shutdown().await;

    // A node whose admin API is off says so instead of naming a URL.
    let ring = TestRing::start(2, |c| {
        c.delay_ms = 0;
        c.admin = None;
    })
    .await;
    let addr = ring.layout.members()[0].addr.clone();
    let req = Request::Rollback {
        name: "tick".into(),
    };
    let (reply, _) = request(
        &addr,
        None,
        req,
        bytes::Bytes::new(),
        1 << 20,
        Duration::from_secs(10),
    )
    .await
    .expect("an answer");
    let e = reply.error.expect("refused");
    assert!(
        e.contains("not served on the ring port")
            && e.contains("admin API is off")
            && !e.contains("http://"),
        "{e}"
    );
    // Today's tools never send such a request there: given the ring
    // address they ask it for the admin API, and say when it is off.
    let out = crate::deploy::ringhost(&["rollback", "tick", "--to", &addr]).await;
    let t = crate::deploy::text(&out);
    assert!(
        !out.status.success() && t.contains("whose admin API is off"),
        "{t}"
    );
    ring.shutdown().await;
}
