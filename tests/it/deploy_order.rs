//! Release order across a rebuilt ring (issue 8, section 4): a member that
//! returns with the state of a ring that was since rebuilt must not
//! override the operator's newest push, and the conflict is reported.

use std::time::Duration;

use ringhost::config::NodeConfig;
use ringhost::deploy::release::{Hash, Release};
use ringhost::observe::EventKind;

use crate::deploy::{
    addr, marker, push_to, quick, released, scratch, start_node, view, wait_running,
};
use crate::support::TestRing;

/// The scenario up to node 2's return: a 3-node ring with data
/// dirs gets marker v1..v3 (the last MARK-06); all stop; nodes 0 and 1 are
/// rebuilt from empty data dirs and get MARK-01, now v1, while node 2
/// stays away with its old records. Returns the ring (node 2 down), the
/// data root, the node settings and the rebuilt ring's release.
async fn rebuilt_ring(
    name: &str,
) -> (
    TestRing,
    std::path::PathBuf,
    impl Fn(&mut NodeConfig) + use<>,
    Release,
) {
    let data = scratch(name);
    let dir = data.clone();
    let configure = move |c: &mut NodeConfig| {
        quick(c);
        c.deploy.data_dir = Some(dir.join(c.index.to_string()));
    };
    let all = [0, 1, 2];
    let mut ring = TestRing::start(3, &configure).await;
    for n in [4, 5, 6] {
        let r = released(push_to(&addr(&ring, 0), "marker", &marker(n), &[]).await);
        wait_running(&ring, &all, "marker", r.hash, Duration::from_secs(20)).await;
    }
    for i in all {
        ring.nodes[i].take().unwrap().shutdown().await.unwrap();
    }
    for i in [0, 1] {
        std::fs::remove_dir_all(data.join(i.to_string())).unwrap();
        start_node(&mut ring, i, &configure).await;
    }
    let newest = released(push_to(&addr(&ring, 0), "marker", &marker(1), &[]).await);
    assert_eq!(newest.version, 1, "the rebuilt ring starts over");
    wait_running(
        &ring,
        &[0, 1],
        "marker",
        newest.hash,
        Duration::from_secs(20),
    )
    .await;
    (ring, data, configure, newest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_returning_with_old_state_does_not_override_a_rebuilt_ring() {
    let (mut ring, data, configure, newest) = rebuilt_ring("rebuild").await;
    let all = [0, 1, 2];

    // Node 2 returns with its old data dir (v3, MARK-06).
    start_node(&mut ring, 2, &configure).await;
    wait_running(&ring, &all, "marker", newest.hash, Duration::from_secs(20)).await;
    // Reported in the log (an event) and in the deploy view of the member
    // that came back.
    let ev = ring
        .wait_for(Duration::from_secs(10), "a deploy conflict reported", |e| {
            matches!(e.kind, EventKind::DeployConflict { .. })
        })
        .await;
    let EventKind::DeployConflict { station, message } = &ev.kind else {
        unreachable!()
    };
    assert_eq!(station, "marker");
    assert!(
        message.contains("v3") && message.contains("v1"),
        "{message}"
    );
    let v = view(&ring, 2);
    let c = v
        .conflicts
        .iter()
        .find(|c| c.name == "marker")
        .unwrap_or_else(|| panic!("node 2 reports the conflict: {v:?}"));
    assert_eq!(c.kept.as_ref().map(|k| k.hash), Some(newest.hash));
    assert_eq!((c.stale.version, c.stale.hash), (3, Hash::of(&marker(6))));
    // `ringhost status` shows it.
    let out = crate::deploy::ringhost(&["status", "--to", &addr(&ring, 2)]).await;
    let text = crate::deploy::text(&out);
    assert!(
        text.contains("CONFLICT") && text.contains("kept v1"),
        "{text}"
    );
    // And it stays that way: no node goes back to the stale side.
    ring.visits(90, Duration::from_secs(20)).await;
    for i in all {
        let v = view(&ring, i);
        let st = v.stations.iter().find(|s| s.name == "marker").unwrap();
        assert_eq!(st.running, newest.hash, "node {i}: {v:?}");
        assert_eq!(v.releases, vec![newest.clone()], "node {i}");
    }
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}

/// The same story, but the returning member's record says it was
/// published an hour from now: a clock ahead (or a record from another
/// history) does not win; it is set aside and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_member_whose_release_is_from_the_future_does_not_win() {
    let (mut ring, data, configure, newest) = rebuilt_ring("rebuild-future").await;
    let all = [0, 1, 2];
    crate::deploy_records::edit_current(&data.join("2"), "marker", |c| {
        c["published_ms"] = (c["published_ms"].as_u64().unwrap() + 3_600_000).into();
    });
    start_node(&mut ring, 2, &configure).await;
    wait_running(&ring, &all, "marker", newest.hash, Duration::from_secs(20)).await;
    ring.wait_for(
        Duration::from_secs(10),
        "the future release reported",
        |e| {
            matches!(&e.kind, EventKind::DeployConflict { message, .. }
            if message.contains("in the future") && message.contains("v3"))
        },
    )
    .await;
    ring.visits(60, Duration::from_secs(20)).await;
    for i in all {
        let v = view(&ring, i);
        let st = v.stations.iter().find(|s| s.name == "marker").unwrap();
        assert_eq!(st.running, newest.hash, "node {i}: {v:?}");
        assert_eq!(v.releases, vec![newest.clone()], "node {i}");
    }
    // Shown in status by the nodes that met both sides (node 2, which
    // held it, and node 0, to which it offered it).
    let out = crate::deploy::ringhost(&["status", "--to", &addr(&ring, 2)]).await;
    let text = crate::deploy::text(&out);
    assert!(
        text.contains("CONFLICT") && text.contains("in the future"),
        "{text}"
    );
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}
