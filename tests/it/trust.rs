//! Trusted links (`ringhost::secure`): a ring whose members hold the
//! cluster key forms and circulates over sealed links; a node with another
//! key or none is refused before any frame of its is acted on, and both
//! sides say why; the key is rotated on a live ring with no particle lost
//! and no member refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ringhost::config::NodeConfig;
use ringhost::observe::{EventKind, NodeEvent};
use ringhost::secure::{self, ClusterKey, ClusterKeys, KeySet};

use crate::support::TestRing;

fn quick(c: &mut NodeConfig) {
    c.delay_ms = 2;
    c.failure_timeout_ms = 400;
    c.token_timeout_ms = 1500;
}

fn fixed(bytes: &[u8]) -> ClusterKeys {
    ClusterKeys::fixed(KeySet::new(bytes.iter().map(|b| ClusterKey([*b; 32])).collect()).unwrap())
}

fn refusal(ev: &NodeEvent) -> Option<(usize, &str)> {
    match &ev.kind {
        EventKind::LinkRefused { reason } | EventKind::UpstreamRejected { reason } => {
            Some((ev.node, reason.as_str()))
        }
        _ => None,
    }
}

/// Waits until both a dialer's refusal and a listener's rejection naming
/// authentication have been seen; returns them (node, reason).
async fn both_sides_refuse(ring: &mut TestRing, within: Duration) -> Vec<(usize, String)> {
    let deadline = Instant::now() + within;
    let mut dialer = None;
    let mut listener = None;
    while dialer.is_none() || listener.is_none() {
        let ev = ring
            .next_event(deadline, "both sides' authentication refusals")
            .await;
        match &ev.kind {
            EventKind::LinkRefused { reason } if reason.contains("authentication") => {
                dialer = Some((ev.node, reason.clone()));
            }
            EventKind::UpstreamRejected { reason } if reason.contains("failed authentication") => {
                listener = Some((ev.node, reason.clone()));
            }
            _ => {}
        }
    }
    vec![dialer.unwrap(), listener.unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_ring_circulates_and_members_report_their_key() {
    let keys = fixed(&[1]);
    let mut ring = TestRing::start(4, |c| {
        quick(c);
        c.cluster_keys = Some(keys.clone());
    })
    .await;
    let visits = ring.visits(24, Duration::from_secs(20)).await;
    crate::support::assert_single_particle_in_ring_order(&visits, 4);
    let addr = ring.layout.members()[2].addr.clone();
    let report = ringhost::status::query(&addr, Some(&keys), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        report.cluster_keys,
        vec![ClusterKey([1; 32]).id().to_string()]
    );
    // Without the key, the ring port answers nothing.
    let plain = ringhost::status::query(&addr, None, Duration::from_secs(5)).await;
    assert!(plain.is_err(), "a plain status request was answered");
    // A tool without it is told what to pass.
    let tool = ringhost::admin::client::connect(&addr, None).await;
    let err = format!("{:#}", tool.expect_err("a keyless tool is refused"));
    assert!(err.contains("pass the ring's --cluster-key-file"), "{err}");
    assert!(
        ring.seen.iter().all(|e| refusal(e).is_none()),
        "{:?}",
        ring.seen
    );
    ring.shutdown().await;
}

/// One member with another key, then one with none: each is refused both
/// ways (the ring goes around it), with a line on both sides naming
/// authentication, and the others' particle keeps circulating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_another_key_or_none_is_refused_on_both_sides() {
    for odd in [Some(fixed(&[2])), None] {
        let good = fixed(&[1]);
        let mut ring = TestRing::start(3, |c| {
            quick(c);
            c.cluster_keys = if c.index == 2 {
                odd.clone()
            } else {
                Some(good.clone())
            };
        })
        .await;
        let said = both_sides_refuse(&mut ring, Duration::from_secs(20)).await;
        let (listener, reason) = &said[1];
        assert!(
            reason.contains("peer 127.0.0.1:"),
            "node {listener}: {reason}"
        );
        let text = format!("{said:?}");
        if odd.is_some() {
            assert!(text.contains("cluster key"), "{text}");
        } else {
            assert!(text.contains("--cluster-key-file"), "{text}");
        }
        // Members 0 and 1 circulate; 2 is never visited by their particle.
        let visits = ring.visits(20, Duration::from_secs(20)).await;
        let good_visits = visits.iter().filter(|v| v.node != 2).count();
        assert!(good_visits >= 10, "{visits:?}");
        ring.shutdown().await;
    }
}

fn write_keys(path: &Path, keys: &[&ClusterKey]) {
    let text: String = keys.iter().map(|k| format!("{}\n", k.to_hex())).collect();
    // Write then rename: a node never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until every member reports `want` as its key ids, in order.
async fn all_hold(ring: &TestRing, keys: &[ClusterKeys], want: &[&ClusterKey], within: Duration) {
    let want: Vec<String> = want.iter().map(|k| k.id().to_string()).collect();
    let deadline = Instant::now() + within;
    for (i, m) in ring.layout.members().iter().enumerate() {
        loop {
            let r = ringhost::status::query(&m.addr, Some(&keys[i]), Duration::from_secs(2)).await;
            if r.as_ref().is_ok_and(|r| r.cluster_keys == want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} holds {:?}, not {want:?}",
                r.map(|r| r.cluster_keys)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The README's three-step rotation on a live 11-member ring, each member
/// reading its own key file: append the new key, put it first, drop the
/// old one. One particle throughout (no regeneration), no refusal; after
/// it, the old key opens no link and the new one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_key_rotates_on_a_live_ring_with_no_particle_lost() {
    const N: usize = 11;
    let dir: PathBuf = std::env::temp_dir().join(format!("ringhost-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
    let files: Vec<PathBuf> = (0..N).map(|i| dir.join(format!("{i}.key"))).collect();
    for f in &files {
        write_keys(f, &[&old]);
    }
    let keys: Vec<ClusterKeys> = files
        .iter()
        .map(|f| ClusterKeys::from_file(f).unwrap())
        .collect();
    let mut ring = TestRing::start(N, |c| {
        quick(c);
        c.cluster_keys = Some(keys[c.index].clone());
    })
    .await;
    let first = ring.visits(2 * N, Duration::from_secs(30)).await;
    let generation = first[0].generation;

    let steps: [&[&ClusterKey]; 3] = [&[&old, &new], &[&new, &old], &[&new]];
    for step in steps {
        for f in &files {
            write_keys(f, step);
        }
        all_hold(&ring, &keys, step, Duration::from_secs(10)).await;
        // A lap or two under the new files.
        let visits = ring.visits(2 * N, Duration::from_secs(20)).await;
        assert!(
            visits.iter().all(|v| v.generation == generation),
            "{visits:?}"
        );
    }
    // Through the whole rotation: no particle regenerated, no refusal.
    let bad: Vec<&NodeEvent> = ring
        .seen
        .iter()
        .filter(|e| {
            refusal(e).is_some()
                || matches!(
                    e.kind,
                    EventKind::ParticleCreated {
                        regenerated: true,
                        ..
                    }
                )
        })
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    // Links made now use the new key: a dialer with the old one is
    // refused, one with the new one is let in.
    let addr = ring.layout.members()[0].addr.clone();
    let with_old = ClusterKeys::fixed(KeySet::new(vec![old.clone()]).unwrap());
    let refused = secure::connect(&addr, Some(&with_old)).await;
    let err = format!(
        "{:#}",
        refused.err().expect("the old key still opens a link")
    );
    assert!(err.contains("does not hold our cluster key"), "{err}");
    ringhost::status::query(&addr, Some(&keys[0]), Duration::from_secs(5))
        .await
        .expect("the new key opens a link");
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The credential rows of the bad-input table (the rest are in
/// `bad_input.rs`, on a ring without keys): each sent to member 1 of a
/// keyed ring, each checked the same four ways: the node's rejection names
/// the cause, its admin API still answers, the particle still circulates
/// in ring order, and nothing the sender said was acted on (member 1's
/// view of the ring is as before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_rows_are_refused_before_any_frame_and_the_ring_goes_on() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    const N: usize = 3;
    let keys = fixed(&[7]);
    let mut ring = TestRing::start(N, |c| {
        quick(c);
        c.cluster_keys = Some(keys.clone());
    })
    .await;
    ring.visits(2 * N, Duration::from_secs(20)).await;
    let target = ring.layout.members()[1].addr.clone();

    // What an honest member sends on a fresh link (handshake and one
    // sealed status request), recorded by a relay in the middle.
    let recorded = {
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap().to_string();
        let to = target.clone();
        let recorder = tokio::spawn(async move {
            let (mut from, _) = relay.accept().await.unwrap();
            let mut upstream = TcpStream::connect(&to).await.unwrap();
            let (mut fr, mut fw) = from.split();
            let (mut ur, mut uw) = upstream.split();
            let mut got = Vec::new();
            let up = async {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = fr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = uw.shutdown().await;
            };
            let down = tokio::io::copy(&mut ur, &mut fw);
            let _ = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(up, down) })
                .await;
            got
        });
        ringhost::status::query(&relay_addr, Some(&keys), Duration::from_secs(5))
            .await
            .expect("the honest request is answered");
        recorder.await.unwrap()
    };

    // A plain hello, as member 0 would send it without a key.
    let plain_hello = crate::bounds::hello_of_member_0(&ring.layout);
    enum Sent {
        /// These bytes on a fresh connection.
        Raw(Vec<u8>),
        /// A dial with these keys.
        Dial(ClusterKeys),
    }
    let rows = [
        (
            "no credentials (a plain hello)",
            "sent no cluster handshake",
            Sent::Raw(plain_hello),
        ),
        (
            "wrong credentials (another cluster key)",
            "uses cluster key",
            Sent::Dial(fixed(&[8])),
        ),
        ("a replayed handshake", "did not open", Sent::Raw(recorded)),
    ];
    let admin = crate::admin::admin_of(&ring, 1);
    let client = ringhost::admin::client::AdminClient::new(&admin, None);
    for (row, cause, send) in rows {
        let before = client.status(Duration::from_secs(5)).await.unwrap();
        let seen = ring.seen.len();
        // The connection stays open until the node closes it.
        let _conn = match send {
            Sent::Raw(bytes) => {
                let mut s = TcpStream::connect(&target).await.unwrap();
                s.write_all(&bytes).await.unwrap();
                Some(s)
            }
            Sent::Dial(k) => {
                let _ = secure::connect(&target, Some(&k)).await;
                None
            }
        };
        // 1. The rejection names the cause.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let named = ring.seen[seen..].iter().any(|e| {
                matches!(&e.kind, EventKind::UpstreamRejected { reason }
                    if e.node == 1 && reason.contains(cause))
            });
            if named {
                break;
            }
            ring.next_event(deadline, &format!("{row}: a rejection naming {cause:?}"))
                .await;
        }
        // 2. Up. 3. Circulating, one particle in ring order.
        let after = client
            .status(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{row}: admin API: {e:#}"));
        let visits = ring.visits(2 * N, Duration::from_secs(20)).await;
        crate::support::assert_single_particle_in_ring_order(&visits, N);
        // 4. Nothing acted on: member 1's view and releases as before.
        let live =
            |r: &ringhost::status::Report| r.members.iter().map(|m| m.live).collect::<Vec<_>>();
        assert_eq!(live(&before), live(&after), "{row}");
        assert_eq!(before.deploy.releases, after.deploy.releases, "{row}");
    }
    ring.shutdown().await;
}
