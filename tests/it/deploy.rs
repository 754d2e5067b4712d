//! Fast deploys: pushes reach every node (as deltas when the node has the
//! previous version), invalid or unsigned modules never travel, a node
//! that was down catches up, versions survive restarts, rollbacks (asked
//! for and automatic), concurrent pushes converge, file drops, and the
//! config bus.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringhost::admin::{self, api::DeployAnswer, client::PushParams};
use ringhost::config::{NodeConfig, StationSpec};
use ringhost::deploy::agent::{DeployView, StationDeploy};
use ringhost::deploy::release::{Hash, Release, Reply};
use ringhost::deploy::sign;
use ringhost::observe::EventKind;
use ringhost::tool::deploy as client;
use tokio::net::TcpListener;

use crate::support::{TestRing, assert_single_particle_in_ring_order, host, test_station};

const MARK: &[u8; 16] = b"RINGHOST-MARK-00";

/// The marker station with its 16-byte marker replaced by
/// `RINGHOST-MARK-<n>`: a valid module with a one-constant change.
pub(crate) fn marker(n: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(test_station("marker")).expect("marker station built");
    let at = bytes
        .windows(16)
        .position(|w| w == MARK)
        .expect("marker bytes in the module");
    bytes[at..at + 16].copy_from_slice(format!("RINGHOST-MARK-{n:02}").as_bytes());
    bytes
}

pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringhost-it-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) async fn push_to(
    addr: &str,
    name: &str,
    bytes: &[u8],
    config: &[(&str, &str)],
) -> Reply {
    push_signed(addr, name, bytes, config, None, None).await
}

async fn push_signed(
    addr: &str,
    name: &str,
    bytes: &[u8],
    config: &[(&str, &str)],
    signer: Option<Hash>,
    signature: Option<String>,
) -> Reply {
    let params = PushParams {
        name: name.into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        signer,
        signature,
        local: false,
    };
    let node = admin::client::connect(addr, None)
        .await
        .expect("the node's admin API");
    answer(node.push(&params, Bytes::copy_from_slice(bytes)).await)
}

/// A deploy answer of the admin API as the ring's reply: the release, or
/// the error's text.
fn answer(result: anyhow::Result<DeployAnswer>) -> Reply {
    match result {
        Ok(a) => Reply {
            release: a.release,
            unchanged: a.unchanged,
            ..Reply::default()
        },
        Err(e) => Reply::error(format!("{e:#}")),
    }
}

pub(crate) fn released(reply: Reply) -> Release {
    assert_eq!(reply.error, None, "push accepted");
    reply.release.expect("a release")
}

pub(crate) fn addr(ring: &TestRing, i: usize) -> String {
    ring.layout.members()[i].addr.clone()
}

pub(crate) fn view(ring: &TestRing, i: usize) -> DeployView {
    ring.nodes[i]
        .as_ref()
        .expect("node running")
        .deploy_view()
        .borrow()
        .clone()
}

/// What node `i` says of its `marker` station.
pub(crate) fn marker_at(ring: &TestRing, i: usize) -> StationDeploy {
    view(ring, i)
        .stations
        .into_iter()
        .find(|s| s.name == "marker")
        .unwrap_or_else(|| panic!("node {i} runs a marker station"))
}

/// Waits until every node in `nodes` runs module `hash` as `name`.
pub(crate) async fn wait_running(
    ring: &TestRing,
    nodes: &[usize],
    name: &str,
    hash: Hash,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    for &i in nodes {
        let mut rx = ring.nodes[i].as_ref().expect("node running").deploy_view();
        let left = deadline.saturating_duration_since(Instant::now());
        let ok = tokio::time::timeout(
            left,
            rx.wait_for(|v| {
                v.stations
                    .iter()
                    .any(|s| s.name == name && s.running == hash)
            }),
        )
        .await;
        let found = ok.is_ok_and(|r| r.is_ok());
        assert!(
            found,
            "node {i} does not run {name} {} within {within:?}: {:#?}",
            hash.short(),
            rx.borrow().stations
        );
    }
}

/// Waits until each node in `nodes` has logged a line containing `text`.
pub(crate) async fn wait_logged(
    ring: &mut TestRing,
    nodes: &[usize],
    text: &str,
    within: Duration,
) {
    let mut missing: BTreeSet<usize> = nodes.iter().copied().collect();
    let already: Vec<usize> = ring
        .seen
        .iter()
        .filter(
            |e| matches!(&e.kind, EventKind::StationLog { message, .. } if message.contains(text)),
        )
        .map(|e| e.node)
        .collect();
    for n in already {
        missing.remove(&n);
    }
    let deadline = Instant::now() + within;
    while !missing.is_empty() {
        let what = format!("{text:?} logged by nodes {missing:?}");
        let ev = ring.next_event(deadline, &what).await;
        if let EventKind::StationLog { message, .. } = &ev.kind
            && message.contains(text)
        {
            missing.remove(&ev.node);
        }
    }
}

pub(crate) fn quick(c: &mut NodeConfig) {
    c.delay_ms = 2;
    c.deploy.watch = false;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_all_eleven_nodes_and_a_change_travels_as_a_small_delta() {
    let mut ring = TestRing::start(11, quick).await;
    let all: Vec<usize> = (0..11).collect();
    let v1 = released(push_to(&addr(&ring, 0), "marker", &marker(1), &[]).await);
    assert_eq!((v1.version, v1.origin), (1, 0));
    wait_running(&ring, &all, "marker", v1.hash, Duration::from_secs(30)).await;
    wait_logged(
        &mut ring,
        &all,
        "marker=RINGHOST-MARK-01",
        Duration::from_secs(20),
    )
    .await;
    let before: Vec<DeployView> = all.iter().map(|&i| view(&ring, i)).collect();

    // A one-constant change, pushed elsewhere: every other node fetches a
    // delta against the version it runs.
    let v2 = released(push_to(&addr(&ring, 5), "marker", &marker(2), &[]).await);
    assert_eq!((v2.version, v2.origin), (2, 5));
    wait_running(&ring, &all, "marker", v2.hash, Duration::from_secs(30)).await;
    wait_logged(
        &mut ring,
        &all,
        "marker=RINGHOST-MARK-02",
        Duration::from_secs(20),
    )
    .await;
    for &i in &all {
        let (a, b) = (&before[i], view(&ring, i));
        if i == 5 {
            assert_eq!(
                b.fetched_delta, a.fetched_delta,
                "the publisher fetches nothing"
            );
            continue;
        }
        assert_eq!(b.fetched_delta, a.fetched_delta + 1, "node {i}: one delta");
        assert_eq!(b.fetched_full, a.fetched_full, "node {i}: no full module");
        let shipped = b.fetched_bytes - a.fetched_bytes;
        assert!(shipped <= 2048, "node {i}: delta of {shipped} bytes");
        assert_eq!(
            (
                b.fetched_bytes_delta - a.fetched_bytes_delta,
                b.fetched_bytes_full - a.fetched_bytes_full
            ),
            (shipped, 0),
            "node {i}: the bytes counted as a delta's"
        );
        let st = b.stations.iter().find(|s| s.name == "marker").unwrap();
        assert_eq!(
            (st.version, st.hash, st.error.as_deref()),
            (2, v2.hash, None)
        );
    }
    // The particle went on as one, through both swaps.
    let visits = ring.visits(40, Duration::from_secs(20)).await;
    assert_single_particle_in_ring_order(&visits, 11);
    assert!(
        ring.seen.iter().any(
            |e| matches!(&e.kind, EventKind::StationSwapped { version: Some(2), pause, .. } if *pause < Duration::from_millis(50))
        ),
        "swaps reported with their pause"
    );
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_modules_are_refused_by_the_first_node_and_never_travel() {
    let ring = TestRing::start(3, quick).await;
    let to = addr(&ring, 1);
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("garbage", b"this is not wasm".to_vec(), vec![], "compiling"),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            vec![],
            "component",
        ),
        (
            "wrong world",
            b"\0asm\x0d\0\x01\0".to_vec(),
            vec![],
            "export",
        ),
        (
            "failing init",
            marker(3),
            vec![("fail_init", "1")],
            "told to fail init",
        ),
        ("too large", vec![0u8; 9 << 20], vec![], "exceeds"),
    ];
    for (what, bytes, config, hint) in cases {
        let reply = push_to(&to, "marker", &bytes, &config).await;
        let err = reply.error.unwrap_or_else(|| panic!("{what} accepted"));
        assert!(
            err.contains(hint),
            "{what}: {err:?} should mention {hint:?}"
        );
        assert!(reply.release.is_none());
    }
    let reply = push_to(&to, "bad/name", &marker(3), &[]).await;
    assert!(reply.error.is_some_and(|e| e.contains("station name")));
    // Nothing was published, so there is nothing to travel.
    for i in 0..3 {
        let v = view(&ring, i);
        assert!(v.releases.is_empty(), "node {i}: {:?}", v.releases);
        assert!(v.stations.iter().all(|s| s.name != "marker"));
    }
    // The node is fine: a valid push goes through.
    let ok = released(push_to(&to, "marker", &marker(3), &[]).await);
    wait_running(
        &ring,
        &[0, 1, 2],
        "marker",
        ok.hash,
        Duration::from_secs(20),
    )
    .await;
    ring.shutdown().await;
}

pub(crate) async fn start_node(
    ring: &mut TestRing,
    i: usize,
    configure: &impl Fn(&mut NodeConfig),
) {
    let listener = TcpListener::bind(&ring.layout.members()[i].addr)
        .await
        .expect("rebind the member's port");
    let mut config = NodeConfig::new(ring.layout.clone(), i);
    configure(&mut config);
    let observer = ring.observer.clone();
    let handle = ringhost::node::start(config, listener, host(), observer)
        .await
        .expect("node restarts");
    ring.nodes[i] = Some(handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_deploys_catches_up_in_full_and_restarts_keep_the_version() {
    let data = scratch("data");
    let dir = data.clone();
    let configure = move |c: &mut NodeConfig| {
        quick(c);
        c.deploy.data_dir = Some(dir.join(c.index.to_string()));
    };
    let mut ring = TestRing::start(4, &configure).await;
    ring.nodes[2].take().unwrap().shutdown().await.unwrap();
    let v1 = released(push_to(&addr(&ring, 0), "marker", &marker(1), &[]).await);
    wait_running(
        &ring,
        &[0, 1, 3],
        "marker",
        v1.hash,
        Duration::from_secs(20),
    )
    .await;
    let v2 = released(push_to(&addr(&ring, 3), "marker", &marker(2), &[]).await);
    wait_running(
        &ring,
        &[0, 1, 3],
        "marker",
        v2.hash,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(view(&ring, 1).fetched_delta, 1, "node 1 had v1: a delta");

    // Node 2 comes back knowing nothing of marker: it catches up from a
    // neighbour's handshake, with the whole module (no base to patch).
    start_node(&mut ring, 2, &configure).await;
    wait_running(&ring, &[2], "marker", v2.hash, Duration::from_secs(20)).await;
    let v = view(&ring, 2);
    assert_eq!((v.fetched_full, v.fetched_delta), (1, 0), "{v:?}");
    wait_logged(
        &mut ring,
        &[2],
        "marker=RINGHOST-MARK-02",
        Duration::from_secs(20),
    )
    .await;

    // The whole ring restarts: every node runs v2 from its data dir before
    // it has talked to anyone.
    for i in 0..4 {
        ring.nodes[i].take().unwrap().shutdown().await.unwrap();
    }
    for i in 0..4 {
        start_node(&mut ring, i, &configure).await;
        let v = view(&ring, i);
        let st = v
            .stations
            .iter()
            .find(|s| s.name == "marker")
            .expect("marker kept");
        assert_eq!((st.version, st.running), (2, v2.hash), "node {i}");
    }
    wait_logged(
        &mut ring,
        &[0, 1, 2, 3],
        "marker=RINGHOST-MARK-02",
        Duration::from_secs(20),
    )
    .await;
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_ring_wide_and_automatic_rollback_of_a_trapping_version() {
    let mut ring = TestRing::start(3, quick).await;
    let all = [0, 1, 2];
    let v1 = released(push_to(&addr(&ring, 0), "marker", &marker(1), &[]).await);
    wait_running(&ring, &all, "marker", v1.hash, Duration::from_secs(20)).await;
    let v2 = released(push_to(&addr(&ring, 0), "marker", &marker(2), &[]).await);
    wait_running(&ring, &all, "marker", v2.hash, Duration::from_secs(20)).await;

    let node = admin::client::connect(&addr(&ring, 2), None).await.unwrap();
    let v3 = released(answer(node.rollback("marker").await));
    assert_eq!((v3.version, v3.hash, v3.origin), (3, v1.hash, 2));
    wait_running(&ring, &all, "marker", v1.hash, Duration::from_secs(20)).await;
    wait_logged(
        &mut ring,
        &all,
        "marker=RINGHOST-MARK-01",
        Duration::from_secs(20),
    )
    .await;

    // A version that passes init but traps at every visit: each node rolls
    // it back on its own, and says so.
    let bad = released(
        push_to(
            &addr(&ring, 1),
            "marker",
            &marker(4),
            &[("trap_after", "0")],
        )
        .await,
    );
    assert_eq!(bad.version, 4);
    let mut rolled: BTreeSet<usize> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rolled.len() < 3 {
        let ev = ring.next_event(deadline, "three automatic rollbacks").await;
        if let EventKind::RolledBack { station, cause } = &ev.kind {
            assert_eq!(station, "marker");
            assert!(cause.contains("v3"), "{cause}");
            rolled.insert(ev.node);
        }
    }
    wait_running(&ring, &all, "marker", v1.hash, Duration::from_secs(20)).await;
    for i in all {
        let v = view(&ring, i);
        let st = v.stations.iter().find(|s| s.name == "marker").unwrap();
        assert_eq!(st.version, 4, "the ring's version stays");
        assert!(st.rolled_back.is_some(), "node {i} reports the rollback");
    }
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_modules_signed_by_a_trusted_key_are_accepted() {
    let trusted = sign::generate();
    let stranger = sign::generate();
    let public = trusted.verifying_key();
    let ring = TestRing::start(3, move |c| {
        quick(c);
        c.deploy.trust = vec![public];
    })
    .await;
    let to = addr(&ring, 0);
    let module = marker(5);
    let hash = Hash::of(&module);
    let sig = |k: &ed25519_dalek::SigningKey, h: &Hash| {
        (
            Some(Hash(*k.verifying_key().as_bytes())),
            Some(ringhost::config::hex(&sign::sign(k, &h.0))),
        )
    };
    let unsigned = push_to(&to, "marker", &module, &[]).await;
    assert!(unsigned.error.unwrap().contains("unsigned"));
    let (signer, signature) = sig(&stranger, &hash);
    let foreign = push_signed(&to, "marker", &module, &[], signer, signature).await;
    assert!(foreign.error.unwrap().contains("does not trust"));
    let (signer, signature) = sig(&trusted, &Hash::of(b"another module"));
    let wrong = push_signed(&to, "marker", &module, &[], signer, signature).await;
    assert!(wrong.error.unwrap().contains("bad signature"));
    for i in 0..3 {
        assert!(view(&ring, i).releases.is_empty(), "nothing travelled");
    }
    let (signer, signature) = sig(&trusted, &hash);
    let ok = released(push_signed(&to, "marker", &module, &[], signer, signature).await);
    wait_running(
        &ring,
        &[0, 1, 2],
        "marker",
        ok.hash,
        Duration::from_secs(20),
    )
    .await;
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_of_one_name_converge_on_the_same_winner() {
    let ring = TestRing::start(5, quick).await;
    let (a, b) = (addr(&ring, 0), addr(&ring, 3));
    let (m6, m7) = (marker(6), marker(7));
    let (ra, rb) = tokio::join!(
        push_to(&a, "marker", &m6, &[]),
        push_to(&b, "marker", &m7, &[])
    );
    let (ra, rb) = (released(ra), released(rb));
    let winner = if ra.newer_than(&rb) { ra } else { rb };
    wait_running(
        &ring,
        &[0, 1, 2, 3, 4],
        "marker",
        winner.hash,
        Duration::from_secs(20),
    )
    .await;
    for i in 0..5 {
        let v = view(&ring, i);
        assert_eq!(v.releases, vec![winner.clone()], "node {i}");
    }
    ring.shutdown().await;
}

fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_dropped_on_one_node_is_validated_and_pushed_to_the_ring() {
    let dir = scratch("drop");
    let file = dir.join("marker.wasm");
    std::fs::write(&file, marker(0)).unwrap();
    let spec = StationSpec::parse(file.to_str().unwrap(), &[]).unwrap();
    let mut ring = TestRing::start(3, move |c| {
        quick(c);
        c.stations.push(spec.clone());
        c.deploy.watch = c.index == 0;
        c.deploy.settle_ms = 100;
    })
    .await;
    let all = [0, 1, 2];

    // Garbage: refused on node 0, nothing travels.
    replace_file(&file, b"garbage, not a component");
    let ev = ring
        .wait_for(Duration::from_secs(10), "the bad file refused", |e| {
            matches!(e.kind, EventKind::DeployFailed { .. })
        })
        .await;
    assert_eq!(ev.node, 0);
    for i in all {
        assert!(view(&ring, i).releases.is_empty(), "nothing travelled");
    }

    // A copy in progress: half the file, then the rest, well within the
    // settle time. Only the whole file loads; no failure in between.
    let good = marker(8);
    let failures_before = count_failures(&ring);
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await; // a slow copier
    std::fs::write(&file, &good).unwrap();
    wait_running(
        &ring,
        &all,
        "marker",
        Hash::of(&good),
        Duration::from_secs(20),
    )
    .await;
    wait_logged(
        &mut ring,
        &all,
        "marker=RINGHOST-MARK-08",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        count_failures(&ring),
        failures_before,
        "half a file never loads"
    );
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn count_failures(ring: &TestRing) -> usize {
    ring.seen
        .iter()
        .filter(|e| matches!(e.kind, EventKind::DeployFailed { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_writes_converge_on_every_node_and_concurrent_writes_agree() {
    let ring = TestRing::start(5, |c| {
        quick(c);
        c.stations = vec![StationSpec::builtin("deploy-delta")];
    })
    .await;
    client::set(&addr(&ring, 0), "color", Some("blue".into()))
        .await
        .unwrap();
    wait_config(&ring, "color", |e| e.value.as_deref() == Some("blue")).await;

    // Two writers, one key, at once: every node ends with the same entry.
    let (via1, via3) = (addr(&ring, 1), addr(&ring, 3));
    let (a, b) = tokio::join!(
        client::set(&via1, "size", Some("small".into())),
        client::set(&via3, "size", Some("large".into()))
    );
    a.unwrap();
    b.unwrap();
    let first = client::get(&addr(&ring, 0), "size").await.unwrap();
    wait_config(&ring, "size", |e| e.ver.is_some()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut entries = Vec::new();
        for i in 0..5 {
            entries.push(client::get(&addr(&ring, i), "size").await.unwrap());
        }
        if entries.windows(2).all(|w| w[0] == w[1]) {
            assert!(matches!(
                entries[0].value.as_deref(),
                Some("small" | "large")
            ));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never agreed: {entries:?} (first {first:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every node is on the same config version.
    let mut versions = BTreeSet::new();
    for i in 0..5 {
        versions.insert(
            client::get(&addr(&ring, i), "size")
                .await
                .unwrap()
                .config_version,
        );
    }
    assert_eq!(versions.len(), 1, "one config version: {versions:?}");
    // A delete travels too.
    client::set(&addr(&ring, 2), "color", None).await.unwrap();
    wait_config(&ring, "color", |e| e.value.is_none()).await;
    ring.shutdown().await;
}

async fn wait_config(
    ring: &TestRing,
    key: &str,
    pred: impl Fn(&ringhost::deploy::release::ConfigEntry) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..ring.nodes.len() {
        loop {
            let e = client::get(&addr(ring, i), key).await.unwrap();
            if pred(&e) {
                break;
            }
            assert!(Instant::now() < deadline, "node {i}: {key} is {e:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Config writes made through a node that is then SIGKILLed are not lost,
/// and a burst of writes through every node all arrive everywhere.
#[test]
fn config_writes_survive_a_node_crash_and_none_is_lost() {
    let mut ring = crate::health::ProcRing::start_with(4, &["--station", "deploy-delta"]);
    ring.wait_converged(&[0, 1, 2, 3], Duration::from_secs(20), "ring formed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut keys = Vec::new();
    for n in 0..20 {
        let via = ring.addr(n % 4);
        let key = format!("k{n}");
        rt.block_on(client::set(&via, &key, Some(format!("v{n}"))))
            .unwrap_or_else(|e| panic!("set {key} via {via}: {e:#}"));
        keys.push((key, format!("v{n}")));
    }
    // The last write went through node 3; kill it at once.
    ring.sigkill(3);
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0..3 {
        for (key, value) in &keys {
            loop {
                let got = rt.block_on(client::get(&ring.addr(i), key));
                if let Ok(e) = &got
                    && e.value.as_deref() == Some(value.as_str())
                {
                    break;
                }
                assert!(Instant::now() < deadline, "node {i}: {key} lost ({got:?})");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

pub(crate) async fn ringhost(args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("ringhost {args:?} within 60 s"))
        .expect("ringhost runs")
}

pub(crate) fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_push_and_rollback_commands_report_what_happened() {
    let dir = scratch("cli");
    let key = dir.join("deploy.key");
    let out = ringhost(&["keygen", "--out", key.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out));
    let public = sign::parse_public(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let ring = TestRing::start(3, move |c| {
        quick(c);
        c.deploy.trust = vec![public];
    })
    .await;
    let to = addr(&ring, 1);
    let file = dir.join("marker.wasm");
    std::fs::write(&file, marker(1)).unwrap();
    let f = file.to_str().unwrap();
    let k = key.to_str().unwrap();

    let out = ringhost(&["push", f, "--to", &to]).await;
    assert!(!out.status.success(), "unsigned push refused");
    assert!(text(&out).contains("unsigned"), "{}", text(&out));

    let out = ringhost(&["push", f, "--to", &to, "--key", k]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("marker v1") && text(&out).contains("runs on every live node"),
        "{}",
        text(&out)
    );
    let good = Hash::of(&marker(1));
    wait_running(&ring, &[0, 1, 2], "marker", good, Duration::from_secs(5)).await;

    // Passes validation, traps at every visit: every node rolls it back,
    // and the command says so and fails.
    std::fs::write(&file, marker(2)).unwrap();
    let out = ringhost(&[
        "push",
        f,
        "--to",
        &to,
        "--key",
        k,
        "--config",
        "trap_after=0",
    ])
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rolled back"), "{}", text(&out));

    let out = ringhost(&["rollback", "marker", "--to", &addr(&ring, 0)]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("marker v3"), "{}", text(&out));
    for i in 0..3 {
        let st = marker_at(&ring, i);
        assert_eq!((st.version, st.running, st.rolled_back), (3, good, None));
    }
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Real processes: a node frozen (SIGSTOP) during one deploy and a node
/// killed (SIGKILL) during another both catch up when they come back; the
/// push command counts them as unreachable, not as failed.
#[test]
fn frozen_and_killed_nodes_catch_up_on_deploys_they_missed() {
    use nix::sys::signal::{Signal, kill};
    let mut ring = crate::health::ProcRing::start_with(4, &["--no-watch"]);
    ring.wait_converged(&[0, 1, 2, 3], Duration::from_secs(20), "ring formed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = scratch("proc-deploy");
    let push = |rt: &tokio::runtime::Runtime, to: String, n: u8| -> Hash {
        let file = dir.join(format!("marker{n}.wasm"));
        std::fs::write(&file, marker(n)).unwrap();
        let args = ringhost::tool::deploy::PushOptions {
            file,
            to,
            name: Some("marker".into()),
            timeout_s: 30,
            ..Default::default()
        };
        rt.block_on(ringhost::tool::deploy::push(&args))
            .unwrap_or_else(|e| panic!("push {n}: {e:#}"));
        Hash::of(&marker(n))
    };
    let wait_runs = |ring: &crate::health::ProcRing, i: usize, hash: Hash| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let report = ring.status(i);
            let runs = report.as_ref().is_some_and(|r| {
                r.deploy
                    .stations
                    .iter()
                    .any(|s| s.name == "marker" && s.running == hash)
            });
            if runs {
                return report.unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never ran {}: {:?}",
                hash.short(),
                report.map(|r| r.deploy)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    kill(ring.pid(2), Signal::SIGSTOP).unwrap();
    let h1 = push(&rt, ring.addr(0), 1);
    kill(ring.pid(2), Signal::SIGCONT).unwrap();
    wait_runs(&ring, 2, h1);

    ring.sigkill(1);
    let h2 = push(&rt, ring.addr(3), 2);
    ring.spawn(1);
    let report = wait_runs(&ring, 1, h2);
    // The restarted node had nothing (no data dir): the whole module.
    assert_eq!(report.deploy.fetched_full, 1, "{:?}", report.deploy);
    for i in [0, 2, 3] {
        wait_runs(&ring, i, h2);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ring-wide tick sequence lives in the station's slot: swapping in a
/// new version of `tick` (same module, new config) on every node carries
/// the slot on, so the sequence neither resets nor skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_carries_the_station_slot_on() {
    let mut ring = TestRing::start(3, |c| {
        c.delay_ms = 5;
        c.deploy.watch = false;
    })
    .await;
    let tick = std::fs::read(test_station("tick")).unwrap();
    let mut seqs = Vec::new();
    let mut swapped = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pushed = false;
    // Ticks before, during and after the swap on all three nodes.
    while swapped.len() < 3 || seqs.len() < 60 {
        let ev = ring.next_event(deadline, "ticks around the swap").await;
        match &ev.kind {
            EventKind::StationLog { message, .. } if message.starts_with("tick ") => {
                let seq = message
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("seq="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .expect("tick line has seq");
                seqs.push(seq);
            }
            EventKind::StationSwapped { station, .. } if station == "tick" => {
                swapped.insert(ev.node);
            }
            _ => {}
        }
        if !pushed && seqs.len() >= 20 {
            pushed = true;
            let reply = push_to(&addr(&ring, 0), "tick", &tick, &[("quiet", "false")]).await;
            assert_eq!(released(reply).version, 1);
        }
    }
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "tick sequence continues across the swap: {seqs:?}"
        );
    }
    ring.shutdown().await;
}

/// Every node checks what it fetches: a node that trusts a key refuses an
/// unsigned release that its neighbours accept, keeps its version, says
/// so, and still passes the release on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_trust_refuses_an_unsigned_release_from_its_neighbour() {
    let key = sign::generate().verifying_key();
    let mut ring = TestRing::start(3, move |c| {
        quick(c);
        if c.index == 1 {
            c.deploy.trust = vec![key];
        }
    })
    .await;
    let v1 = released(push_to(&addr(&ring, 0), "marker", &marker(1), &[]).await);
    let ev = ring
        .wait_for(
            Duration::from_secs(20),
            "node 1 refusing the release",
            |e| e.node == 1 && matches!(e.kind, EventKind::DeployFailed { .. }),
        )
        .await;
    let EventKind::DeployFailed { reason, .. } = ev.kind else {
        unreachable!()
    };
    assert!(reason.contains("unsigned"), "{reason}");
    wait_running(&ring, &[0, 2], "marker", v1.hash, Duration::from_secs(20)).await;
    // Node 1 passed the release on (node 2 got it through it) but runs
    // none of it.
    let v = view(&ring, 1);
    assert!(v.stations.iter().all(|s| s.name != "marker"), "{v:?}");
    let st = v.stations.iter().find(|s| s.name == "tick").unwrap();
    assert_eq!(st.version, 0);
    ring.shutdown().await;
}
