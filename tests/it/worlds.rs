//! The worlds a node runs (issue 12): stations of `ringhost:station@0.1`
//! beside those of 0.2 (`station` and `input-station`), pushed and swapped
//! alike; `host.ring-config`; a component of no supported world refused.

use std::time::{Duration, Instant};

use ringhost::config::StationSpec;
use ringhost::model::CONFIG_STATION;
use ringhost::observe::EventKind;
use ringhost::station::World;
use ringhost::tool::deploy as client;

use crate::deploy::{addr, push_to, quick, released, wait_logged, wait_running};
use crate::support::{TestRing, host, test_station};

/// Waits until `pred` holds, polling node memory (no IO involved).
async fn wait_until(within: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !pred() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn each_component_is_of_the_world_its_imports_and_exports_say() {
    let host = host();
    let world = |name: &str| {
        let bytes = std::fs::read(test_station(name)).expect("test station built");
        host.compile(&bytes).expect("compiles").world()
    };
    assert_eq!(world("v01"), World::StationV01);
    assert_eq!(world("inputs"), World::InputStationV02);
    let tick = ringhost::station::builtin::bytes("tick").unwrap();
    assert_eq!(host.compile(tick).unwrap().world(), World::StationV02);
}

/// A component importing `ringhost:station/types@0.3.0` (a version this
/// node does not run), written out in the component binary format.
fn component_of_version_0_3() -> Vec<u8> {
    let name = b"ringhost:station/types@0.3.0";
    let mut c = b"\0asm\x0d\x00\x01\x00".to_vec();
    // Type section: one instance type with no declarations.
    c.extend_from_slice(&[0x07, 0x03, 0x01, 0x42, 0x00]);
    // Import section: that instance, under `name`.
    let mut import = vec![0x01, 0x00, name.len() as u8];
    import.extend_from_slice(name);
    import.extend_from_slice(&[0x05, 0x00]);
    c.push(0x0a);
    c.push(import.len() as u8);
    c.extend_from_slice(&import);
    c
}

#[tokio::test]
async fn a_component_of_no_supported_world_is_refused_naming_the_worlds() {
    let err = match host().compile(&component_of_version_0_3()) {
        Ok(_) => panic!("a 0.3 component was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("ringhost:station@0.3.0"), "{err}");
    for world in [
        "ringhost:station/station@0.1.x",
        "ringhost:station/station@0.2.x",
        "ringhost:station/input-station@0.2.x",
    ] {
        assert!(err.contains(world), "{err} should name {world}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v01_station_runs_beside_v02_stations_and_is_pushed_and_swapped_like_any() {
    let mut ring = TestRing::start(3, |c| {
        quick(c);
        c.stations = vec![
            StationSpec::file(test_station("v01")),
            StationSpec::builtin("tick"),
            StationSpec::file(test_station("inputs")),
        ];
    })
    .await;
    let all = [0, 1, 2];
    wait_logged(&mut ring, &all, "v01 visit", Duration::from_secs(10)).await;
    wait_logged(&mut ring, &all, "seq=", Duration::from_secs(10)).await;
    // The 0.2 input station ran too (its kv is written at every stop).
    for i in all {
        let kv = ring.nodes[i].as_ref().unwrap().kv().clone();
        wait_until(Duration::from_secs(10), "inputs ran", || {
            kv.get("inputs", "count").is_some()
        })
        .await;
    }
    // Pushed as a release with another config: every node swaps it in,
    // and its slot (the visit count) carries on.
    let bytes = std::fs::read(test_station("v01")).unwrap();
    let r = released(push_to(&addr(&ring, 0), "v01", &bytes, &[("tag", "b")]).await);
    wait_running(&ring, &all, "v01", r.hash, Duration::from_secs(20)).await;
    wait_logged(&mut ring, &all, "tag=b", Duration::from_secs(10)).await;
    let counts: Vec<u64> = ring
        .seen
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StationLog {
                station, message, ..
            } if station == "v01" => message
                .split_whitespace()
                .nth(2)
                .and_then(|n| n.parse().ok()),
            _ => None,
        })
        .collect();
    for w in counts.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "one slot, carried across the swap: {counts:?}"
        );
    }
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_sees_a_config_key_once_the_write_has_reached_its_node() {
    let ring = TestRing::start(3, |c| {
        quick(c);
        c.stations = vec![
            StationSpec::builtin(CONFIG_STATION),
            StationSpec::file(test_station("inputs")),
        ];
    })
    .await;
    client::set(&addr(&ring, 1), "test.color", Some("blue".into()))
        .await
        .unwrap();
    client::set(&addr(&ring, 2), "other", Some("x".into()))
        .await
        .unwrap();
    for i in 0..3 {
        let kv = ring.nodes[i].as_ref().unwrap().kv().clone();
        wait_until(
            Duration::from_secs(10),
            "the station saw test.color",
            || kv.get("inputs", "cfg").as_deref() == Some(b"test.color=blue".as_slice()),
        )
        .await;
        // It is what the node's config bus holds, key by key.
        assert_eq!(
            ringhost::station::ring_config(&kv, "test."),
            vec![("test.color".to_string(), "blue".to_string())]
        );
    }
    ring.shutdown().await;
}
