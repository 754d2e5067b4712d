//! The table-driven bad-input suite (issue 10): one row per bad input, all
//! sent to one ring in turn (three nodes, and a fourth member played by the
//! test: it never takes a link, so the ring runs without it, and it serves
//! corrupt deltas), and every row checked the same four ways:
//! 1. a clear error naming the cause, in the answer the sender got or in
//!    the node's log (its events);
//! 2. the node is still up: its admin API answers a status request;
//! 3. the particle still circulates: two more laps, one generation, every
//!    member in ring order;
//! 4. nothing propagated: the other members' releases, running stations
//!    and config are as they were before the row.
//!
//! The inputs come from the tests that study each one on its own
//! (wire_faults.rs, bounds.rs, sandbox.rs, admin.rs, deploy.rs, the test
//! stations): this suite reuses their helpers and fixtures, so a new kind
//! of bad input is one more row here.
//!
//! The credential rows (no credentials, wrong credentials, a replayed
//! handshake) need a ring with a cluster key: they are the same table, with
//! the same four checks, in
//! `trust::credential_rows_are_refused_before_any_frame_and_the_ring_goes_on`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use ringhost::admin::client::{AdminClient, PushParams};
use ringhost::config::{AdminConfig, NodeConfig, StationSpec};
use ringhost::deploy::release::{Hash, Release};
use ringhost::deploy::sign;
use ringhost::model::{CONFIG_MAX_VALUE_BYTES, CONFIG_STATION};
use ringhost::model::{Payload, Reply, Request};
use ringhost::observe::EventKind;
use ringhost::wire::{Frame, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::admin::admin_of;
use crate::bounds::as_member_0;
use crate::deploy::{addr, marker, push_to, released, view, wait_running};
use crate::support::{TestRing, assert_single_particle_among, test_station};

/// Members of the ring: the live nodes, then the fake member.
const MEMBERS: usize = 4;
/// The live nodes (members 0..NODES).
const NODES: usize = 3;
/// The member the test plays.
const FAKE: usize = 3;
/// The member most rows aim at.
const TARGET: usize = 1;
/// The member whose admin API wants a bearer token for mutating requests.
const TOKEN_NODE: usize = 0;
const TOKEN: &str = "s3cret";
/// The member that accepts only signed modules.
const TRUST_NODE: usize = 2;
/// The name pushed faulting stations run under (on [`TARGET`] only).
const SUSPECT: &str = "suspect";
/// The config key the oversized write aims at.
const CONFIG_KEY: &str = "bad-input";
/// A bound on each wait of a row.
const WAIT: Duration = Duration::from_secs(20);

/// One bad input.
#[derive(Debug, Clone, Copy)]
enum Input {
    /// Bytes sent on a fresh connection to the ring port.
    RingBytes(fn() -> Vec<u8>),
    /// Bytes sent after a valid hello (posing as member 0).
    AfterHello(fn() -> Vec<u8>),
    /// A hello from the wrong protocol version.
    WrongVersion,
    /// A hello from a ring with another enumeration.
    WrongRing,
    /// Many more silent sockets than the ring port takes.
    HalfOpenFlood,
    /// A module pushed through the admin API that must be refused.
    Push(fn() -> Vec<u8>),
    /// A station pushed (to this node only) that faults at every visit.
    Faulting {
        station: &'static str,
        config: &'static [(&'static str, &'static str)],
    },
    /// A config write with a value over the bound.
    OversizedConfig,
    /// A mutating admin request with a wrong bearer token.
    BadToken,
    /// A release announced by the fake member, whose module it then
    /// serves as a corrupt delta.
    CorruptDelta,
}

/// One row of the table.
struct Row {
    name: &'static str,
    /// The member the input goes to.
    node: usize,
    input: Input,
    /// The error, in the answer or the log, must contain this.
    cause: &'static str,
}

const ROWS: &[Row] = &[
    Row {
        name: "garbage frame",
        node: TARGET,
        // A plausible length, then a kind byte that means nothing.
        input: Input::RingBytes(|| b"\x00\x00\x00\x05\xffjunk".to_vec()),
        cause: "unknown frame kind",
    },
    Row {
        name: "truncated frame",
        node: TARGET,
        // A particle frame announced as 100 bytes, cut after 9.
        input: Input::AfterHello(|| {
            let mut b = 100u32.to_be_bytes().to_vec();
            b.extend_from_slice(b"\x10only-ten");
            b
        }),
        cause: "bad frame",
    },
    Row {
        name: "oversized frame",
        node: TARGET,
        input: Input::RingBytes(|| u32::MAX.to_be_bytes().to_vec()),
        cause: "larger than",
    },
    Row {
        name: "wrong-version hello",
        node: TARGET,
        input: Input::WrongVersion,
        cause: "protocol version",
    },
    Row {
        name: "wrong ring",
        node: TARGET,
        input: Input::WrongRing,
        cause: "ring enumeration differs",
    },
    Row {
        name: "invalid wasm",
        node: TARGET,
        input: Input::Push(|| b"this is not wasm".to_vec()),
        cause: "compiling",
    },
    Row {
        name: "core module",
        node: TARGET,
        input: Input::Push(|| b"\0asm\x01\0\0\0".to_vec()),
        cause: "component",
    },
    Row {
        name: "wrong WIT world",
        node: TARGET,
        // An empty component: it exports none of the station world.
        input: Input::Push(|| b"\0asm\x0d\0\x01\0".to_vec()),
        cause: "export",
    },
    Row {
        name: "unsigned module where signatures are required",
        node: TRUST_NODE,
        input: Input::Push(|| marker(40)),
        cause: "unsigned",
    },
    Row {
        name: "trapping station",
        node: TARGET,
        input: Input::Faulting {
            station: "trap",
            config: &[("every", "1")],
        },
        cause: "trap",
    },
    Row {
        name: "looping station",
        node: TARGET,
        input: Input::Faulting {
            station: "spin",
            config: &[],
        },
        cause: "timeout",
    },
    Row {
        name: "memory-hogging station",
        node: TARGET,
        input: Input::Faulting {
            station: "hog",
            config: &[],
        },
        cause: "memory limit",
    },
    Row {
        name: "corrupt delta",
        // The fake member's successor: the member it announces to.
        node: 0,
        input: Input::CorruptDelta,
        cause: "applying the delta",
    },
    Row {
        name: "oversized config value",
        node: TARGET,
        input: Input::OversizedConfig,
        // The config bus's own bound, named with the value's size (the
        // admin API's body bound for config writes leaves room for a value
        // at the bound, escaped).
        cause: "the config value is 65537 bytes, more than 65536",
    },
    Row {
        name: "admin request with a bad token",
        node: TOKEN_NODE,
        input: Input::BadToken,
        cause: "Bearer",
    },
    // Last of the ring-port rows: the flood's sockets that outlive it end
    // at the handshake deadline, each with a rejection of its own.
    Row {
        name: "flood of half-open connections",
        node: TARGET,
        input: Input::HalfOpenFlood,
        cause: "evicted",
    },
];

/// The ring every row runs on: `tick` and the config bus everywhere, a
/// small memory cap (the hog row), a token on one admin API and a trusted
/// key on another member.
fn configure(c: &mut NodeConfig, trusted: ed25519_dalek::VerifyingKey) {
    c.delay_ms = 2;
    c.deploy.watch = false;
    c.station_memory_bytes = 8 << 20;
    c.max_ring_connections = 32;
    c.stations = vec![
        StationSpec::builtin("tick"),
        StationSpec::builtin(CONFIG_STATION),
    ];
    if c.index == TOKEN_NODE {
        let mut admin = AdminConfig::at("127.0.0.1:0", Some(TOKEN.into()));
        admin.require_token = true;
        c.admin = Some(admin);
    }
    if c.index == TRUST_NODE {
        c.deploy.trust = vec![trusted];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_refused_naming_its_cause_and_the_ring_goes_on() {
    let trusted = sign::generate().verifying_key();
    let live: Vec<usize> = (0..NODES).collect();
    let mut ring = TestRing::start_in_order(MEMBERS, &live, |c| configure(c, trusted)).await;
    let fake = TcpListener::bind(addr(&ring, FAKE))
        .await
        .expect("rebind the fake member's port");
    let fake = tokio::spawn(serve_corrupt_deltas(fake));
    ring.visits(2 * NODES, WAIT).await;
    // A release every node but the one that trusts a key runs: the base
    // the corrupt delta claims to patch.
    let base = released(push_to(&addr(&ring, TARGET), "marker", &marker(41), &[]).await);
    wait_running(&ring, &[0, 1], "marker", base.hash, WAIT).await;
    let started = Instant::now();
    for row in ROWS {
        let t = Instant::now();
        check_row(&mut ring, row).await;
        eprintln!("row {:?}: ok in {:.2?}", row.name, t.elapsed());
    }
    eprintln!("{} rows in {:.2?}", ROWS.len(), started.elapsed());
    fake.abort();
    ring.shutdown().await;
}

/// The fake member's port: a fetch is answered with a delta that is not
/// one; anything else (a successor's link or probe) is dropped unanswered,
/// so the live nodes keep the member skipped.
async fn serve_corrupt_deltas(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let (r, w) = stream.into_split();
            let mut reader = FrameReader::new(r, 1 << 20);
            let Ok(Ok(Some(Frame::Request(Request::Fetch { have, .. }, _)))) =
                tokio::time::timeout(Duration::from_secs(5), reader.read_frame()).await
            else {
                return;
            };
            let Some(base) = have.first().copied() else {
                return;
            };
            let reply = Reply {
                payload: Some(Payload::Delta { base }),
                ..Reply::default()
            };
            let blob = Bytes::from_static(b"\x14not a zstd frame at all");
            let mut writer = FrameWriter::new(w, 1 << 20);
            let _ = writer.write_frame(&Frame::Reply(reply, blob)).await;
        });
    }
}

/// Sends `row`'s input and checks the four things every row is checked
/// for.
async fn check_row(ring: &mut TestRing, row: &Row) {
    let before = others(ring, row.node).await;
    let sent_at_hop = last_hop(ring);
    let error = send(ring, row).await;
    // 1. A clear error naming the cause.
    assert!(
        error.contains(row.cause),
        "{}: the error {error:?} should name {:?}",
        row.name,
        row.cause
    );
    // 2. The node is still up.
    let status = AdminClient::new(&admin_of(ring, row.node), None)
        .status(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{}: node {} does not answer: {e:#}", row.name, row.node));
    assert_eq!(status.node.index, row.node, "{}", row.name);
    // 3. The particle still circulates: two laps after the input went in.
    let mut visits = Vec::new();
    while visits.len() < 2 * NODES {
        visits.extend(
            ring.visits(1, WAIT)
                .await
                .into_iter()
                .filter(|v| v.hop > sent_at_hop),
        );
    }
    assert_single_particle_among(&visits, NODES, MEMBERS);
    // 4. Nothing propagated.
    let after = others(ring, row.node).await;
    assert_eq!(before, after, "{}: the other members changed", row.name);
}

/// The hop of the last visit seen so far (0: none).
fn last_hop(ring: &TestRing) -> u64 {
    ring.seen
        .iter()
        .rev()
        .find_map(|e| match e.kind {
            EventKind::Visit { hop, .. } => Some(hop),
            _ => None,
        })
        .unwrap_or(0)
}

/// What the members other than `node` run and know: their releases, their
/// stations (name and module) and whether [`CONFIG_KEY`] is set there.
async fn others(ring: &TestRing, node: usize) -> Vec<(Vec<Release>, Vec<(String, Hash)>, bool)> {
    let mut out = Vec::new();
    for i in (0..NODES).filter(|&i| i != node) {
        let v = view(ring, i);
        let stations = v.stations.iter().map(|s| (s.name.clone(), s.running));
        let key_set = AdminClient::new(&admin_of(ring, i), None)
            .config_get(CONFIG_KEY)
            .await
            .is_ok();
        out.push((v.releases, stations.collect(), key_set));
    }
    out
}

/// Sends `row`'s input to its node; returns the error it caused, from the
/// answer or the node's events.
async fn send(ring: &mut TestRing, row: &Row) -> String {
    let node = row.node;
    match row.input {
        Input::RingBytes(bytes) => {
            let mut s = TcpStream::connect(addr(ring, node)).await.unwrap();
            s.write_all(&bytes()).await.unwrap();
            let why = rejection(ring, node, row.cause).await;
            drop(s);
            why
        }
        Input::AfterHello(bytes) => {
            assert_eq!(node, 1, "as_member_0 speaks to member 1");
            let mut s = as_member_0(ring).await;
            s.write_all(&bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            rejection(ring, node, row.cause).await
        }
        Input::WrongVersion | Input::WrongRing => {
            let wrong_version = matches!(row.input, Input::WrongVersion);
            let hello = Hello {
                version: PROTOCOL_VERSION + u32::from(wrong_version),
                ring_hash: if wrong_version {
                    ring.layout.hash().to_string()
                } else {
                    "f".repeat(64)
                },
                from_index: 0,
                from_name: ring.layout.members()[0].name.clone(),
                releases: vec![],
                instance: 7,
            };
            let _s = send_hello(&addr(ring, node), hello).await;
            rejection(ring, node, row.cause).await
        }
        Input::HalfOpenFlood => {
            let to = addr(ring, node);
            let mut flood = Vec::new();
            for _ in 0..320 {
                flood.push(TcpStream::connect(&to).await.expect("connect"));
            }
            let metrics = ring.nodes[node].as_ref().unwrap().bus().metrics().encode();
            drop(flood);
            metrics
                .lines()
                .find(|l| {
                    l.starts_with("ringhost_connections_refused_total{") && l.contains("evicted")
                })
                .unwrap_or_default()
                .to_string()
        }
        Input::Push(module) => push_to(&addr(ring, node), "marker", &module(), &[])
            .await
            .error
            .unwrap_or_else(|| panic!("{}: the push was accepted", row.name)),
        Input::Faulting { station, config } => {
            let module = std::fs::read(test_station(station)).expect("test station built");
            push_here(ring, node, module, config).await;
            let cause = fault(ring, node, row.cause).await;
            // Replace it (there is nothing to roll back to), so the next
            // row starts from a healthy pipeline.
            let echo = ringhost::station::builtin::bytes("echo").expect("built in");
            push_here(ring, node, echo.to_vec(), &[]).await;
            cause
        }
        Input::OversizedConfig => {
            let c = AdminClient::new(&admin_of(ring, node), None);
            // A value at the bound, written as JSON, fits the body bound
            // (the row's key ends unset again: nothing left behind).
            c.config_set("at-the-bound", Some("\u{1}".repeat(CONFIG_MAX_VALUE_BYTES)))
                .await
                .expect("a value at the bound is taken");
            c.config_set("at-the-bound", None)
                .await
                .expect("and deleted");
            let big = "x".repeat(CONFIG_MAX_VALUE_BYTES + 1);
            let e = c
                .config_set(CONFIG_KEY, Some(big))
                .await
                .expect_err("an oversized value is refused");
            format!("{e:#}")
        }
        Input::CorruptDelta => {
            assert_eq!(node, (FAKE + 1) % MEMBERS, "the fake announces downstream");
            let base = view(ring, node)
                .releases
                .into_iter()
                .find(|r| r.name == "marker")
                .expect("node runs the base release");
            let module = marker(42);
            let release = Release {
                version: base.version + 1,
                origin: FAKE as u32,
                hash: Hash::of(&module),
                size: module.len() as u64,
                published_ms: base.published_ms + 1,
                ..base
            };
            let hello = Hello {
                version: PROTOCOL_VERSION,
                ring_hash: ring.layout.hash().to_string(),
                from_index: FAKE as u32,
                from_name: ring.layout.members()[FAKE].name.clone(),
                releases: vec![release],
                instance: 42,
            };
            let s = send_hello(&addr(ring, node), hello).await;
            let what = format!("node {node} failing the fetch with {:?}", row.cause);
            let ev = ring
                .wait_for(WAIT, &what, |e| {
                    e.node == node
                        && matches!(&e.kind, EventKind::DeployFailed { reason, .. } if reason.contains(row.cause))
                })
                .await;
            drop(s);
            match ev.kind {
                EventKind::DeployFailed { reason, .. } => reason,
                _ => unreachable!(),
            }
        }
        Input::BadToken => {
            let c = AdminClient::new(&admin_of(ring, node), Some("wrong".into()));
            let body = Bytes::from_static(b"{\"name\":\"tick\"}");
            let (code, answer) = c
                .exchange(
                    Method::POST,
                    "/v1/rollback",
                    Some((body, "application/json")),
                    Duration::from_secs(5),
                )
                .await
                .expect("an answer");
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{}", row.name);
            String::from_utf8_lossy(&answer).into_owned()
        }
    }
}

/// A connection to `to` with `hello` sent on it.
async fn send_hello(to: &str, hello: Hello) -> TcpStream {
    let mut body = bytes::BytesMut::new();
    Frame::Hello(hello).encode(&mut body).unwrap();
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&body).await.unwrap();
    s
}

/// Pushes `module` as [`SUSPECT`] to node `node` only (no release, so
/// nothing is announced), and waits until the node runs it.
///
/// The answer is not relied on: the admin API answers a local push that
/// succeeded with 500 "the deploy agent answered without a release" (the
/// agent has no release to give for it); the swap is the evidence.
async fn push_here(ring: &mut TestRing, node: usize, module: Vec<u8>, config: &[(&str, &str)]) {
    let hash = ringhost::config::hex(&Hash::of(&module).0);
    let params = PushParams {
        name: SUSPECT.into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        signer: None,
        signature: None,
        local: true,
    };
    // A local push publishes no release: the answer says so.
    let answer = AdminClient::new(&admin_of(ring, node), None)
        .push(&params, Bytes::from(module))
        .await
        .unwrap_or_else(|e| panic!("a local push to node {node}: {e:#}"));
    assert!(answer.local && answer.release.is_none(), "{answer:?}");
    let what = format!("node {node} running the pushed {SUSPECT}");
    ring.wait_for(WAIT, &what, |e| {
        e.node == node
            && matches!(&e.kind, EventKind::StationSwapped { station, hash: h, .. } if station == SUSPECT && *h == hash)
    })
    .await;
}

/// The reason of node `node`'s next upstream rejection naming `cause`.
async fn rejection(ring: &mut TestRing, node: usize, cause: &str) -> String {
    let what = format!("node {node} rejecting a connection for {cause:?}");
    let ev = ring
        .wait_for(WAIT, &what, |e| {
            e.node == node
                && matches!(&e.kind, EventKind::UpstreamRejected { reason } if reason.contains(cause))
        })
        .await;
    match ev.kind {
        EventKind::UpstreamRejected { reason } => reason,
        _ => unreachable!(),
    }
}

/// The cause of the next fault of [`SUSPECT`] at node `node` naming
/// `cause` (an earlier row's suspect may still fault before its
/// replacement is swapped in); panics on a fault of any other station.
async fn fault(ring: &mut TestRing, node: usize, cause: &str) -> String {
    let what = format!("{SUSPECT} faulting at node {node} with {cause:?}");
    let ev = ring
        .wait_for(WAIT, &what, |e| {
            if let EventKind::StationFault {
                station,
                cause: why,
            } = &e.kind
            {
                assert_eq!(station, SUSPECT, "only {SUSPECT} faults ({why})");
                e.node == node && why.contains(cause)
            } else {
                false
            }
        })
        .await;
    match ev.kind {
        EventKind::StationFault { cause, .. } => cause,
        _ => unreachable!(),
    }
}
