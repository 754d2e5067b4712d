//! Start-up is quiet and honest: a member that has never been up since a
//! node started is "not started yet" (one INFO line), not a failure; a
//! member that was up and went away is a WARN "declared dead".

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringhost::config::NodeConfig;
use ringhost::node;
use ringhost::observe::{EventKind, NodeEvent, Observer};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::support::{bind_ring, host};

/// The log lines of the nodes polled on the test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("log lock").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The next event of node 0 that `pred` accepts, within `within`.
async fn node0_event(
    events: &mut UnboundedReceiver<NodeEvent>,
    within: Duration,
    what: &str,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> EventKind {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(ev)) if ev.node == 0 && pred(&ev.kind) => return ev.kind,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

// A current-thread runtime: node 0's tasks are polled on this thread, so
// the subscriber set here sees every line node 0 logs. Member 1 runs on a
// thread and runtime of its own, which is dropped to crash it: its tasks
// end unpolled and its sockets close, as when a process is killed.
#[tokio::test]
async fn members_not_started_yet_are_told_once_and_a_member_that_was_up_is_declared_dead() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (layout, mut listeners) = bind_ring(3).await;
    // Member 2's port stays bound and never answers: a node not started.
    let _never_started = listeners.pop().expect("listener 2");
    let member1 = listeners.pop().expect("listener 1");
    let (observer, mut events) = Observer::channel();
    let node0 = node::start(
        NodeConfig::new(layout.clone(), 0),
        listeners.pop().expect("listener 0"),
        host(),
        observer.clone(),
    )
    .await
    .expect("node 0 starts");

    // Node 0 alone: it skips members 1 and 2, which it never knew up.
    for peer in [1, 2] {
        let down = node0_event(
            &mut events,
            Duration::from_secs(10),
            &format!("node 0 skipping member {peer}"),
            |k| matches!(k, EventKind::MemberDown { peer: p, .. } if *p == peer),
        )
        .await;
        assert!(
            matches!(
                down,
                EventKind::MemberDown {
                    ever_up: false,
                    left: false,
                    ..
                }
            ),
            "member {peer} is not started yet, not failed: {down:?}"
        );
    }

    // Member 1 starts: node 0 splices it in.
    let member1 = member1.into_std().expect("listener 1 to std");
    let (crash_tx, crash_rx) = std::sync::mpsc::channel::<()>();
    let (config1, observer1) = (NodeConfig::new(layout.clone(), 1), observer.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime of member 1");
        let handle = rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(member1).expect("listener 1");
            let handle = node::start(config1, listener, host(), observer1)
                .await
                .expect("node 1 starts");
            // Run the node until the test crashes it.
            let wait = tokio::task::spawn_blocking(move || crash_rx.recv());
            let _ = tokio::time::timeout(Duration::from_secs(60), wait).await;
            handle
        });
        drop(rt); // every task of member 1 ends here, unpolled
        drop(handle);
    });
    node0_event(
        &mut events,
        Duration::from_secs(10),
        "node 0 splicing member 1 in",
        |k| matches!(k, EventKind::MemberUp { peer: 1 }),
    )
    .await;

    // Member 1 crashes: node 0 knew it up, so this is a failure.
    crash_tx.send(()).expect("member 1 waits for the crash");
    thread.join().expect("member 1's thread");
    let down = node0_event(
        &mut events,
        Duration::from_secs(10),
        "node 0 declaring member 1 dead",
        |k| matches!(k, EventKind::MemberDown { peer: 1, .. }),
    )
    .await;
    assert!(
        matches!(
            down,
            EventKind::MemberDown {
                ever_up: true,
                left: false,
                ..
            }
        ),
        "member 1 was up: {down:?}"
    );
    node0.shutdown().await.expect("node 0 stops cleanly");

    let lines = log.lines();
    let with = |what: &str, member: usize| -> Vec<&String> {
        lines
            .iter()
            .filter(|l| l.contains(what) && l.contains(&format!("member={member} ")))
            .collect()
    };
    for member in [1, 2] {
        assert_eq!(
            with("not started yet", member).len(),
            1,
            "one INFO line for member {member}: {lines:#?}"
        );
    }
    assert!(with("not started yet", 1)[0].contains("INFO"), "{lines:#?}");
    assert!(with("declared dead", 2).is_empty(), "{lines:#?}");
    let dead = with("declared dead", 1);
    assert!(
        dead.len() == 1 && dead[0].contains("WARN"),
        "one WARN for member 1, after it was up: {lines:#?}"
    );
}
