//! Deploy records a node reads back from its data dir that it must not
//! trust blindly (issue 8, sections 3 and 4): a publish time far in the
//! future, a version counter at its maximum, a recorded module that is
//! missing while no neighbour is up.

use std::path::Path;
use std::time::{Duration, Instant};

use ringhost::config::NodeConfig;
use ringhost::deploy::release::Hash;
use ringhost::observe::{EventKind, NodeEvent};

use crate::deploy::{
    addr, marker, push_to, quick, released, scratch, start_node, view, wait_running,
};
use crate::support::TestRing;

/// Changes the current release of `name` in a stopped node's
/// `releases.json`.
pub(crate) fn edit_current(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("releases.json");
    let mut records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut records[name]["current"]);
    std::fs::write(&path, serde_json::to_vec(&records).unwrap()).unwrap();
}

/// Every event the ring reports during `window` (an observation window:
/// what must not happen in it).
pub(crate) async fn events_during(ring: &mut TestRing, window: Duration) -> Vec<NodeEvent> {
    let end = Instant::now() + window;
    let mut out = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(
        end.saturating_duration_since(Instant::now()),
        ring.events.recv(),
    )
    .await
    {
        ring.seen.push(ev.clone());
        out.push(ev);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_from_the_future_is_not_adopted_nor_carried_on_and_a_full_counter_refuses() {
    let data = scratch("future");
    let dir = data.clone();
    let configure = move |c: &mut NodeConfig| {
        quick(c);
        c.deploy.data_dir = Some(dir.join(c.index.to_string()));
    };
    let mut ring = TestRing::start(2, &configure).await;
    let first = released(push_to(&addr(&ring, 0), "marker", &marker(1), &[]).await);
    wait_running(
        &ring,
        &[0, 1],
        "marker",
        first.hash,
        Duration::from_secs(20),
    )
    .await;
    for i in [0, 1] {
        ring.nodes[i].take().unwrap().shutdown().await.unwrap();
    }
    // Node 0's record now says it was published an hour from now; node 1
    // starts from scratch.
    edit_current(&data.join("0"), "marker", |c| {
        c["published_ms"] = (c["published_ms"].as_u64().unwrap() + 3_600_000).into();
    });
    std::fs::remove_dir_all(data.join("1")).unwrap();
    for i in [0, 1] {
        start_node(&mut ring, i, &configure).await;
    }
    // Node 1 meets it and sets it aside, reported once.
    let ev = ring
        .wait_for(Duration::from_secs(10), "the future release reported", |e| {
            matches!(&e.kind, EventKind::DeployConflict { message, .. } if message.contains("in the future"))
        })
        .await;
    assert_eq!(ev.node, 1);
    let v = view(&ring, 1);
    assert!(
        v.stations.iter().all(|s| s.name != "marker") && v.releases.is_empty(),
        "node 1 neither runs nor carries it on: {v:?}"
    );
    let c = v
        .conflicts
        .iter()
        .find(|c| c.name == "marker")
        .expect("in status");
    assert!(c.ahead_ms.is_some_and(|a| a > 3_500_000), "{c:?}");
    // A push on node 0 would have to be stamped after it: refused, naming it.
    let reply = push_to(&addr(&ring, 0), "marker", &marker(2), &[]).await;
    let e = reply.error.expect("refused");
    assert!(
        e.contains("marker v1") && e.contains("in the future"),
        "{e}"
    );
    // A push on node 1 is stamped now, and node 0 gives up its record from
    // the future for it.
    let second = released(push_to(&addr(&ring, 1), "marker", &marker(2), &[]).await);
    assert_eq!(second.version, 2, "above every version node 1 knows");
    wait_running(
        &ring,
        &[0, 1],
        "marker",
        second.hash,
        Duration::from_secs(20),
    )
    .await;

    // A version counter at its maximum: a clear refusal, and the node
    // still answers.
    for i in [0, 1] {
        ring.nodes[i].take().unwrap().shutdown().await.unwrap();
    }
    edit_current(&data.join("0"), "marker", |c| {
        c["version"] = u64::MAX.into()
    });
    edit_current(&data.join("1"), "marker", |c| {
        c["version"] = u64::MAX.into()
    });
    for i in [0, 1] {
        start_node(&mut ring, i, &configure).await;
    }
    for _ in 0..2 {
        let reply = push_to(&addr(&ring, 0), "marker", &marker(3), &[]).await;
        let e = reply.error.expect("refused");
        assert!(e.contains("version counter of marker exhausted"), "{e}");
    }
    let reply = push_to(&addr(&ring, 0), "other", &marker(3), &[]).await;
    assert_eq!(released(reply).version, 1, "the agent still works");
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_recorded_module_runs_the_older_one_and_is_never_fetched_from_oneself() {
    let data = scratch("missing");
    let dir = data.clone();
    let configure = move |c: &mut NodeConfig| {
        quick(c);
        c.deploy.data_dir = Some(dir.join(c.index.to_string()));
    };
    let mut ring = TestRing::start(2, &configure).await;
    let mut hashes = Vec::new();
    for n in [1, 2] {
        let r = released(push_to(&addr(&ring, 0), "marker", &marker(n), &[]).await);
        wait_running(&ring, &[0, 1], "marker", r.hash, Duration::from_secs(20)).await;
        hashes.push(r.hash);
    }
    for i in [0, 1] {
        ring.nodes[i].take().unwrap().shutdown().await.unwrap();
    }
    let module = data
        .join("0")
        .join("modules")
        .join(format!("{}.wasm", hashes[1]));
    std::fs::remove_file(&module).unwrap();
    // Node 0 alone: it runs v1 meanwhile and does not ask itself for v2.
    start_node(&mut ring, 0, &configure).await;
    wait_running(&ring, &[0], "marker", hashes[0], Duration::from_secs(10)).await;
    let failures: Vec<_> = events_during(&mut ring, Duration::from_secs(4))
        .await
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::DeployFailed { .. }))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    // Its neighbour brings v2 back.
    start_node(&mut ring, 1, &configure).await;
    wait_running(&ring, &[0, 1], "marker", hashes[1], Duration::from_secs(20)).await;
    assert_eq!(Hash::of(&marker(2)), hashes[1]);
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}

/// A member that returned with a record from the future (set aside as a
/// conflict) before a push runs the pushed release: `push` succeeds and
/// does not call the set-aside record newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_not_superseded_by_a_record_from_the_future_set_aside_before_it() {
    let data = scratch("future-push");
    let dir = data.clone();
    let configure = move |c: &mut NodeConfig| {
        quick(c);
        c.deploy.data_dir = Some(dir.join(c.index.to_string()));
    };
    let mut ring = TestRing::start(3, &configure).await;
    for n in [2, 4, 6] {
        let r = released(push_to(&addr(&ring, 0), "marker", &marker(n), &[]).await);
        wait_running(&ring, &[0, 1, 2], "marker", r.hash, Duration::from_secs(20)).await;
    }
    for i in [0, 1, 2] {
        ring.nodes[i].take().unwrap().shutdown().await.unwrap();
    }
    // Nodes 0 and 1 are rebuilt; node 2 returns with its v3 an hour ahead.
    for i in ["0", "1"] {
        std::fs::remove_dir_all(data.join(i)).unwrap();
    }
    edit_current(&data.join("2"), "marker", |c| {
        c["published_ms"] = (c["published_ms"].as_u64().unwrap() + 3_600_000).into();
    });
    for i in [0, 1, 2] {
        start_node(&mut ring, i, &configure).await;
    }
    // Its neighbours meet the record and set it aside.
    ring.wait_for(Duration::from_secs(10), "node 2's record set aside", |e| {
        matches!(&e.kind, EventKind::DeployConflict { message, .. } if message.contains("in the future"))
    })
    .await;
    let file = data.join("mark01.wasm");
    std::fs::write(&file, marker(1)).unwrap();
    let out = crate::deploy::ringhost(&[
        "push",
        file.to_str().unwrap(),
        "--as",
        "marker",
        "--to",
        &addr(&ring, 0),
    ])
    .await;
    let t = crate::deploy::text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("superseded"), "{t}");
    wait_running(
        &ring,
        &[0, 1, 2],
        "marker",
        Hash::of(&marker(1)),
        Duration::from_secs(10),
    )
    .await;
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}
