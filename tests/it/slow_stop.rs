//! A stop that keeps the particle longer than the token timeout (a slow
//! station up to its deadline, a long hold) is not a lost particle: its
//! heartbeats vouch for it, nobody regenerates, and every station's slot
//! writes go on unbroken.

use std::time::Duration;

use ringhost::config::{NodeConfig, StationSpec};
use ringhost::observe::EventKind;

use crate::support::{TestRing, assert_single_particle_in_ring_order, test_station};

/// Runs `laps` laps of a 4-node ring configured by `configure` and checks
/// one particle walked them all (one generation, consecutive hops) and the
/// ring-wide tick sequence rose by one at every stop.
async fn one_particle_and_every_tick(
    laps: usize,
    within: Duration,
    configure: impl Fn(&mut NodeConfig),
) {
    let mut ring = TestRing::start(4, configure).await;
    let visits = ring.visits(4 * laps, within).await;
    assert_single_particle_in_ring_order(&visits, 4);
    assert_eq!(visits[0].generation, 1, "the injected particle: {visits:?}");
    let seqs: Vec<u64> = ring
        .seen
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StationLog {
                station, message, ..
            } if station == "tick" => message
                .split_whitespace()
                .find_map(|w| w.strip_prefix("seq="))
                .and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect();
    assert!(seqs.len() >= 4 * laps - 1, "tick lines: {seqs:?}");
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "no slot write lost: {seqs:?}");
    }
    ring.shutdown().await;
}

/// `tick`, then a station that spins to its `deadline_ms` at every visit
/// (never rolled back).
fn tick_then_spin(c: &mut NodeConfig, deadline_ms: u64) {
    c.stations = vec![
        StationSpec::builtin("tick"),
        StationSpec::file(test_station("spin")),
    ];
    c.station_timeout_ms = deadline_ms;
    c.deploy.rollback_after = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_slower_than_the_token_timeout_does_not_livelock_the_ring() {
    // The field case: node 1 runs a station that spins until its 1.5 s
    // deadline at every visit; the token timeout is 1 s.
    one_particle_and_every_tick(4, Duration::from_secs(60), |c| {
        c.delay_ms = 20;
        if c.index == 1 {
            tick_then_spin(c, 1500);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_longer_than_the_token_timeout_does_not_livelock_the_ring() {
    // `delay` holds 1.5 s at node 2 and 1.2 s at node 3.
    one_particle_and_every_tick(3, Duration::from_secs(60), |c| {
        c.delay_ms = 5;
        let mut delay = StationSpec::builtin("delay");
        delay.config = vec![
            ("ms@2".into(), "1500".into()),
            ("ms@3".into(), "1200".into()),
        ];
        c.stations = vec![StationSpec::builtin("tick"), delay];
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_during_a_long_visit_passes_its_writes_on_before_it_leaves() {
    // Node 1 runs `tick` then a station spinning to its 1 s deadline. It is
    // stopped cleanly right after its tick wrote: it finishes the visit,
    // passes the particle on, and only then says it leaves, so the
    // predecessor does not resend an older copy and the tick sequence
    // goes on from node 1's write, once each.
    let mut ring = TestRing::start(3, |c| {
        c.delay_ms = 5;
        if c.index == 1 {
            tick_then_spin(c, 1000);
        }
    })
    .await;
    let seq_of = |e: &ringhost::observe::NodeEvent| match &e.kind {
        EventKind::StationLog {
            station, message, ..
        } if station == "tick" => message
            .split_whitespace()
            .find_map(|w| w.strip_prefix("seq="))
            .and_then(|v| v.parse::<u64>().ok()),
        _ => None,
    };
    // Node 1's second tick: it is now spinning.
    let mut seen_at_1 = 0;
    let ev = ring
        .wait_for(Duration::from_secs(30), "node 1 ticking", |e| {
            if e.node == 1 && seq_of(e).is_some() {
                seen_at_1 += 1;
            }
            seen_at_1 == 2
        })
        .await;
    let written = seq_of(&ev).expect("a tick line");
    let from = ring.seen.len();
    let node = ring.nodes[1].take().expect("node 1");
    tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .expect("node 1 stops within 10 s")
        .expect("node 1 stopped cleanly");
    // The others go on: the next ticks follow node 1's write, once each.
    ring.visits(2 * 4, Duration::from_secs(20)).await;
    let after: Vec<u64> = ring.seen[from..].iter().filter_map(seq_of).collect();
    assert!(after.len() >= 6, "ticks go on: {after:?}");
    assert_eq!(after[0], written + 1, "node 1's write went on: {after:?}");
    for w in after.windows(2) {
        assert_eq!(w[1], w[0] + 1, "each tick once: {after:?}");
    }
    ring.shutdown().await;
}
