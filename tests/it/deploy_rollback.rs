//! Automatic rollback on a node (issue 8 follow-up): fault accounting goes
//! on after a rollback, and a rollback never returns to a version that
//! already faulted on the node; `ringhost push` of a version the nodes
//! roll back says so, naming what each member runs now.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ringhost::observe::EventKind;

use ringhost::deploy::release::Hash;

use crate::deploy::{
    addr, marker, push_to, quick, released, ringhost, scratch, text, view, wait_running,
};
use crate::support::TestRing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_to_version_that_faults_is_rolled_back_further_and_never_returned_to() {
    let mut ring = TestRing::start(3, quick).await;
    let all = [0, 1, 2];
    let to = addr(&ring, 0);
    let v1 = released(push_to(&to, "marker", &marker(1), &[]).await);
    wait_running(&ring, &all, "marker", v1.hash, Duration::from_secs(20)).await;
    // v2 faults, but only every 100 visits; v3 follows at once and faults
    // at every visit. Each node rolls back to v2, sees v2 fault too and
    // goes on to v1 (before the fix: v2 kept faulting, nothing happened).
    let v2 = released(push_to(&to, "marker", &marker(2), &[("trap_after", "100")]).await);
    wait_running(&ring, &all, "marker", v2.hash, Duration::from_secs(20)).await;
    let v3 = released(push_to(&to, "marker", &marker(3), &[("trap_after", "0")]).await);
    assert_eq!(v3.version, 3);
    wait_running(&ring, &all, "marker", v1.hash, Duration::from_secs(30)).await;
    for i in all {
        let v = view(&ring, i);
        let st = v.stations.iter().find(|s| s.name == "marker").unwrap();
        let said = st.rolled_back.as_deref().unwrap_or_default();
        assert!(said.contains("rolled back to v1"), "node {i}: {said}");
    }

    // v4 faults at once: the rollback skips v3 and v2, which faulted here.
    while let Ok(ev) = ring.events.try_recv() {
        ring.seen.push(ev); // reports of the rollbacks above
    }
    let v4 = released(push_to(&to, "marker", &marker(4), &[("trap_after", "0")]).await);
    assert_eq!(v4.version, 4);
    let mut rolled: BTreeSet<usize> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rolled.len() < 3 {
        let ev = ring.next_event(deadline, "three rollbacks of v4").await;
        if let EventKind::RolledBack { station, cause } = &ev.kind {
            assert_eq!(station, "marker");
            assert!(
                cause.starts_with("rolled back to v1 "),
                "node {}: {cause}",
                ev.node
            );
            rolled.insert(ev.node);
        }
    }
    wait_running(&ring, &all, "marker", v1.hash, Duration::from_secs(20)).await;
    ring.shutdown().await;
}

/// A version that traps after two good stops is rolled back by every node
/// (3 faults within 10 s): `push` waits for the rollbacks once it sees the
/// faults, names on each member's line the rollback and the version the
/// member runs now, counts the rollbacks in its summary and exits 1
/// (before: "FAILED: the station faulted running it", with no word of the
/// rollback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_nodes_roll_back_names_the_rollback_and_what_each_member_runs_now() {
    let ring = TestRing::start(3, |c| {
        c.delay_ms = 50;
        c.deploy.watch = false;
    })
    .await;
    let to = addr(&ring, 0);
    let dir = scratch("rolled-back");
    let file = dir.join("marker.wasm");
    std::fs::write(&file, marker(1)).unwrap();
    let f = file.to_str().unwrap().to_string();
    let out = ringhost(&["push", &f, "--to", &to]).await;
    assert!(out.status.success(), "{}", text(&out));
    let v1 = Hash::of(&marker(1)).short();

    std::fs::write(&file, marker(2)).unwrap();
    let out = ringhost(&["push", &f, "--to", &to, "--config", "trap_after=2"]).await;
    let t = text(&out);
    assert!(!out.status.success(), "exit 1: {t}");
    assert_each_rolled_back(&out, &ring, &[0, 1, 2], &format!("v1 ({v1})"));
    assert!(
        t.contains(&format!(
            "is not running everywhere; 3/3 nodes rolled back from it (they run v1 ({v1}) now)"
        )),
        "{t}"
    );
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `push`'s output `out` names, on the line of each of `members`, the
/// rollback (after 3 faults within 10 s) to `to` (`"v1 (hash)"`) and that
/// the member runs it now.
pub(crate) fn assert_each_rolled_back(
    out: &std::process::Output,
    ring: &TestRing,
    members: &[usize],
    to: &str,
) {
    let t = text(out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for &i in members {
        let member = addr(ring, i);
        let line = stdout
            .lines()
            .find(|l| l.contains(&member))
            .unwrap_or_else(|| panic!("no line for member {i} ({member}): {t}"));
        for said in [
            "FAILED, ROLLED BACK".to_string(),
            format!("rolled back to {to} after 3 faults within 10 s"),
            format!("it runs {to} now"),
        ] {
            assert!(
                line.contains(&said),
                "member {i}: {said:?} missing in {line:?}"
            );
        }
    }
}
