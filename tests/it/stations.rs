//! Misbehaving stations: traps, endless loops, unbounded allocation and a
//! failing init. The ring keeps going and the fault names station and cause.

use std::time::{Duration, Instant};

use ringhost::config::{NodeConfig, StationSpec};
use ringhost::observe::EventKind;

use crate::support::{
    TestRing, assert_single_particle_in_ring_order, bind_ring, host, test_station,
};

/// Runs a 3-node ring with `bad` before tick on every node, and checks
/// that faults naming `bad` with `cause` appear while the particle keeps
/// circling with tick's slot intact.
/// The sequence number in a tick station's log line (`… seq=N …`).
pub(crate) fn tick_seq(message: &str) -> u64 {
    message
        .split_whitespace()
        .find_map(|w| w.strip_prefix("seq="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tick seq in {message:?}"))
}

async fn ring_survives(bad: StationSpec, cause: &str, configure: impl Fn(&mut NodeConfig)) {
    let name = bad.name.clone();
    let mut ring = TestRing::start(3, |c| {
        c.delay_ms = 0;
        c.stations = vec![bad.clone(), StationSpec::builtin("tick")];
        configure(c);
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut faults = 0;
    let mut visits = Vec::new();
    let mut tick_seqs = Vec::new();
    while faults < 6 || visits.len() < 12 {
        let ev = ring.next_event(deadline, "faults and visits").await;
        match ev.kind {
            EventKind::StationFault { station, cause: c } => {
                assert_eq!(station, name, "fault names the station");
                assert!(c.contains(cause), "cause {c:?} should mention {cause:?}");
                if faults == 0 {
                    eprintln!("first fault of {name}: {c}");
                }
                faults += 1;
            }
            EventKind::Visit { .. } => visits.extend(crate::support::Visit::of(&ev)),
            EventKind::StationLog {
                station, message, ..
            } if station == "tick" => {
                tick_seqs.push(tick_seq(&message));
            }
            _ => {}
        }
    }
    assert_single_particle_in_ring_order(&visits, 3);
    // The healthy station's slot travelled on untouched by the faults.
    for w in tick_seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "tick sequence unbroken: {tick_seqs:?}");
    }
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_station_is_reinstantiated_and_the_ring_keeps_going() {
    let trap = StationSpec::file(test_station("trap")).with("every", "2");
    ring_survives(trap, "trap", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_is_interrupted_at_its_deadline() {
    let spin = StationSpec::file(test_station("spin"));
    ring_survives(spin, "timeout", |c| c.station_timeout_ms = 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_hits_the_memory_limit() {
    let hog = StationSpec::file(test_station("hog"));
    ring_survives(hog, "memory", |c| c.station_memory_bytes = 8 << 20).await;
}

#[tokio::test]
async fn failing_init_refuses_to_start_with_a_clear_error() {
    crate::support::init_tracing();
    let (layout, mut listeners) = bind_ring(2).await;
    let mut config = NodeConfig::new(layout, 0);
    config.stations = vec![StationSpec::file(test_station("badinit"))];
    let err = ringhost::node::start(
        config,
        listeners.remove(0),
        host(),
        ringhost::observe::Observer::none(),
    )
    .await
    .err()
    .expect("a station whose init fails is refused");
    let text = format!("{err:#}");
    assert!(text.contains("badinit"), "{text}");
    assert!(text.contains("refusing to start"), "{text}");
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused() {
    crate::support::init_tracing();
    let dir = std::env::temp_dir().join(format!("ringhost-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("garbage.wasm");
    std::fs::write(&path, b"definitely not wasm").unwrap();
    let (layout, mut listeners) = bind_ring(2).await;
    let mut config = NodeConfig::new(layout, 0);
    config.stations = vec![StationSpec::file(&path)];
    let err = ringhost::node::start(
        config,
        listeners.remove(0),
        host(),
        ringhost::observe::Observer::none(),
    )
    .await
    .err()
    .expect("garbage is refused");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!("{err:#}");
    assert!(text.contains("compiling the component"), "{text}");
}
