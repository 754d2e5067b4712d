//! `on-input` dispatch (issue 12): inputs for an `input-station` station
//! are given to it between visits, in bounded batches, on the instance
//! that serves the particle; a trap in `on-input` is a station fault.

use std::time::{Duration, Instant};

use ringhost::config::StationSpec;
use ringhost::observe::EventKind;
use ringhost::station::KvStore;

use crate::deploy::quick;
use crate::support::{TestRing, test_station};

fn number(kv: &KvStore, key: &str) -> u64 {
    kv.get("inputs", key)
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn wait_count(kv: &KvStore, want: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while number(kv, "count") < want {
        assert!(
            Instant::now() < deadline,
            "count {} of {want} within {within:?}",
            number(kv, "count")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_reach_an_input_station_between_visits_in_bounded_batches() {
    // The particle is held 300 ms at each stop of this one-node ring:
    // inputs must not wait for it.
    let ring = TestRing::start(1, |c| {
        quick(c);
        c.delay_ms = 300;
        c.stations = vec![StationSpec::file(test_station("inputs"))];
    })
    .await;
    let node = ring.nodes[0].as_ref().unwrap();
    let kv = node.kv().clone();
    let inbox = node.inbox("inputs").unwrap();
    let n = 20_000u64;
    let started = Instant::now();
    let mut pushed = 0;
    while pushed < n {
        // The inbox holds 10,000: push as the station drains it.
        if inbox.push(pushed.to_le_bytes().to_vec()).is_ok() {
            pushed += 1;
        } else {
            tokio::task::yield_now().await;
        }
    }
    wait_count(&kv, n, Duration::from_secs(20)).await;
    eprintln!(
        "{n} inputs through on-input in {:?} ({} batches, largest {})",
        started.elapsed(),
        number(&kv, "batches"),
        number(&kv, "max_batch")
    );
    assert!(number(&kv, "batches") > 0, "on-input was called");
    assert!(number(&kv, "max_batch") <= 1024, "batches are bounded");
    assert_eq!(number(&kv, "overlap"), 0, "no batch during a visit");
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_on_input_is_a_station_fault_and_the_station_runs_on() {
    let mut ring = TestRing::start(1, |c| {
        quick(c);
        c.stations = vec![StationSpec::file(test_station("inputs"))];
    })
    .await;
    let node = ring.nodes[0].as_ref().unwrap();
    let kv = node.kv().clone();
    let inbox = node.inbox("inputs").unwrap();
    inbox.push(b"trap".to_vec()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = ring.next_event(deadline, "the on-input fault").await;
        if let EventKind::StationFault { station, cause } = ev.kind {
            assert_eq!(station, "inputs");
            assert!(cause.contains("trap"), "{cause}");
            break;
        }
    }
    // A fresh instance takes the next inputs (the trapped batch is gone).
    for i in 0..10u8 {
        ring.nodes[0]
            .as_ref()
            .unwrap()
            .inbox("inputs")
            .unwrap()
            .push(vec![i])
            .unwrap();
    }
    wait_count(&kv, 10, Duration::from_secs(10)).await;
    ring.shutdown().await;
}
