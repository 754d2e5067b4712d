//! A release is not its module (issue 9 follow-up): the same module pushed
//! with another config is another release. A fault report of the release
//! being replaced is not counted against its successor of the same module,
//! `push` names a rollback to another release of the same module, and
//! `members` shows the version each member really runs.

use std::time::{Duration, Instant};

use ringhost::deploy::release::Hash;

use crate::deploy::{addr, push_to, released, ringhost, text, view};
use crate::support::{TestRing, test_station};

/// Waits until node `i` runs version `version` of station `name` (the
/// version it reports as running, not its current release).
async fn wait_running_version(
    ring: &TestRing,
    i: usize,
    name: &str,
    version: u64,
    within: Duration,
) {
    let mut rx = ring.nodes[i].as_ref().expect("node running").deploy_view();
    let found = tokio::time::timeout(
        within,
        rx.wait_for(|v| {
            v.stations
                .iter()
                .any(|s| s.name == name && s.running_version == Some(version))
        }),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(
        found,
        "node {i} does not run {name} v{version} within {within:?}: {:#?}",
        rx.borrow().stations
    );
}

/// What `ringhost members` said: its exit code, the line of each member
/// (by ring address) and the whole output.
struct Members {
    code: i32,
    lines: Vec<String>,
    text: String,
}

/// `ringhost members --to to`, asked again (members' reports may be up to
/// 200 ms old) until `expected` holds or `within` passes: what it said
/// last.
async fn members_until(
    ring: &TestRing,
    to: &str,
    within: Duration,
    expected: impl Fn(&Members) -> bool,
) -> Members {
    let deadline = Instant::now() + within;
    loop {
        let out = ringhost(&["members", "--to", to]).await;
        let t = text(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines = (0..ring.nodes.len())
            .map(|i| {
                let member = addr(ring, i);
                stdout
                    .lines()
                    .find(|l| l.contains(&member))
                    .unwrap_or_else(|| panic!("no line for member {i} ({member}): {t}"))
                    .to_string()
            })
            .collect();
        let said = Members {
            code: out.status.code().unwrap_or(-1),
            lines,
            text: t,
        };
        if expected(&said) || Instant::now() >= deadline {
            return said;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tester's three pushes of one module on five nodes: v1 traps at every
/// stop, v2 (`every=100000`) never does, v3 (`every=1`) traps again. v1's
/// fault reports still on their way when v2 swaps in name v1 and are
/// ignored: the v2 push succeeds on every node (before: "keeps faulting,
/// nothing to roll back to" on a node that never ran a visit of v2). After
/// v3 every node runs v2 again, `push` says so with the rollback wording,
/// and `members` shows v2 on every member and exits 0 (before: v3 shown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_module_pushed_with_three_configs_is_three_releases() {
    let ring = TestRing::start(5, |c| {
        c.delay_ms = 2;
        c.deploy.watch = false;
    })
    .await;
    let to = addr(&ring, 0);
    let trap = test_station("trap");
    let f = trap.to_str().expect("a UTF-8 path");
    let short = Hash::of(&std::fs::read(&trap).expect("trap station built")).short();

    // v1 traps at every stop and has nothing to roll back to: a failure.
    let out = ringhost(&["push", f, "--to", &to]).await;
    assert!(!out.status.success(), "v1 fails: {}", text(&out));
    let all: Vec<usize> = (0..5).collect();
    for &i in &all {
        wait_running_version(&ring, i, "trap", 1, Duration::from_secs(20)).await;
    }

    let out = ringhost(&["push", f, "--config", "every=100000", "--to", &to]).await;
    let t = text(&out);
    assert!(out.status.success(), "v2 runs everywhere: {t}");
    assert!(t.contains("trap v2"), "{t}");
    assert!(t.contains("runs on every live node"), "{t}");
    for &i in &all {
        let st = view(&ring, i)
            .stations
            .into_iter()
            .find(|s| s.name == "trap");
        let st = st.expect("a trap station");
        assert_eq!(st.running_version, Some(2), "node {i}: {st:?}");
        assert_eq!(st.rolled_back, None, "node {i}: {st:?}");
    }

    let out = ringhost(&["push", f, "--config", "every=1", "--to", &to]).await;
    let t = text(&out);
    assert!(!out.status.success(), "v3 fails: {t}");
    crate::deploy_rollback::assert_each_rolled_back(&out, &ring, &all, &format!("v2 ({short})"));
    assert!(
        t.contains(&format!(
            "5/5 nodes rolled back from it (they run v2 ({short}) now)"
        )),
        "{t}"
    );
    for &i in &all {
        wait_running_version(&ring, i, "trap", 2, Duration::from_secs(20)).await;
    }

    let shown = format!("trap v2 ({})", &short[..8]);
    let all_v2 = |m: &Members| m.code == 0 && m.lines.iter().all(|l| l.contains(&shown));
    let m = members_until(&ring, &to, Duration::from_secs(10), all_v2).await;
    assert!(
        all_v2(&m),
        "members shows {shown:?} everywhere, exit 0: {}",
        m.text
    );
    ring.shutdown().await;
}

/// One node that never rolls back keeps running a trapping v2 while the
/// others roll back to v1 of the same module: `members` shows each member's
/// version and exits 2 (before: v2 everywhere, "all live, same versions",
/// exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_shows_the_release_each_member_runs_and_exits_2_when_they_differ() {
    let ring = TestRing::start(3, |c| {
        c.delay_ms = 2;
        c.deploy.watch = false;
        if c.index == 2 {
            c.deploy.rollback_after = 0;
        }
    })
    .await;
    let to = addr(&ring, 0);
    let trap = std::fs::read(test_station("trap")).expect("trap station built");
    let short = Hash::of(&trap).short();
    let v1 = released(push_to(&to, "trap", &trap, &[("every", "100000")]).await);
    for i in 0..3 {
        wait_running_version(&ring, i, "trap", v1.version, Duration::from_secs(20)).await;
    }
    let m = members_until(&ring, &to, Duration::from_secs(10), |m| m.code == 0).await;
    assert_eq!(m.code, 0, "all run v1: {}", m.text);

    let v2 = released(push_to(&to, "trap", &trap, &[("every", "1")]).await);
    assert_eq!((v1.version, v2.version), (1, 2));
    wait_running_version(&ring, 2, "trap", 2, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut rx = ring.nodes[i].as_ref().expect("node running").deploy_view();
        let rolled = tokio::time::timeout(
            left,
            rx.wait_for(|v| {
                v.stations.iter().any(|s| {
                    s.name == "trap"
                        && s.version == 2
                        && s.running_version == Some(1)
                        && s.rolled_back.is_some()
                })
            }),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(
            rolled,
            "node {i} rolls back to v1: {:#?}",
            rx.borrow().stations
        );
    }

    let shown = |i: usize| format!("trap v{} ({})", if i == 2 { 2 } else { 1 }, &short[..8]);
    let differ = |m: &Members| {
        m.code == 2
            && m.lines
                .iter()
                .enumerate()
                .all(|(i, l)| l.contains(&shown(i)))
    };
    let m = members_until(&ring, &to, Duration::from_secs(10), differ).await;
    assert!(
        differ(&m),
        "members shows v1 on members 0 and 1, v2 on member 2, exit 2: {}",
        m.text
    );
    assert!(m.text.contains("versions differ"), "{}", m.text);
    ring.shutdown().await;
}
