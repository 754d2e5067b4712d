//! A successor that stops cleanly is never taken for a failed one, even
//! when its `Leave` and the connection's end reach the node while the node
//! is busy and a write to that successor fails before the `Leave` is seen.

use std::time::Duration;

use ringhost::config::{NodeConfig, RingLayout, StationSpec};
use ringhost::observe::{EventKind, Observer};
use ringhost::wire::{Frame, FrameReader, FrameWriter, PROTOCOL_VERSION, Welcome};
use tokio::net::TcpListener;

use crate::support::{host, test_station};

// Member 0 is a real node whose visits block its owner (a station that
// spins until its call times out); member 1 is played here. Once member 0
// holds the particle (its ping says so), member 1 says `Leave` and resets
// the connection, as a stopping node does when it closes with frames
// unread. Member 0 then writes the particle to it and the write fails
// before the `Leave` was taken: the member left, it did not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_followed_by_a_reset_is_a_leave_even_when_a_write_fails_first() {
    let me = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let layout = RingLayout::from_addrs([
        me.local_addr().unwrap().to_string(),
        fake.local_addr().unwrap().to_string(),
    ])
    .unwrap();
    let mut config = NodeConfig::new(layout.clone(), 0);
    config.delay_ms = 0;
    config.stations = vec![StationSpec::file(test_station("spin"))];
    config.station_timeout_ms = 400;
    // No failure detection on the way: only the link's end decides.
    config.heartbeat_interval_ms = 100;
    config.failure_timeout_ms = 20_000;
    config.token_timeout_ms = 60_000;
    let (observer, mut events) = Observer::channel();
    let node = ringhost::node::start(config, me, host(), observer)
        .await
        .unwrap();

    let story = async {
        let (stream, _) = fake.accept().await.unwrap();
        // Closing with a frame unread resets the connection; linger 0
        // makes the reset certain whatever member 0 sent meanwhile.
        stream.set_zero_linger().unwrap();
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r, 1 << 20);
        let mut writer = FrameWriter::new(w, 1 << 20);
        match reader.read_frame().await.unwrap() {
            Some(Frame::Hello(_)) => {}
            other => panic!("expected a hello, got {other:?}"),
        }
        writer
            .write_frame(&Frame::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                node_index: 1,
                seen: None,
                releases: Vec::new(),
                beacons: true,
            }))
            .await
            .unwrap();
        // A ping that vouches for a particle: member 0 holds it and is
        // in its (blocking) visit.
        loop {
            match reader.read_frame().await.unwrap() {
                Some(Frame::Ping { alive: Some(_), .. }) => break,
                Some(_) => continue,
                None => panic!("member 0 closed the link"),
            }
        }
        writer.write_frame(&Frame::Leave).await.unwrap();
        drop((reader, writer));
        drop(fake); // member 1 is gone: a redial is refused
        loop {
            let ev = events.recv().await.expect("node events");
            if let EventKind::MemberDown {
                peer: 1,
                left,
                reason,
                ..
            } = ev.kind
            {
                return (left, reason);
            }
        }
    };
    let (left, reason) = tokio::time::timeout(Duration::from_secs(20), story)
        .await
        .expect("member 0 never declared member 1 down within 20 s");
    assert!(left, "a clean leave was taken for a failure: {reason}");
    node.shutdown().await.unwrap();
}
