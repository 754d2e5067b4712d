//! Token correlation (issue 12) on rings of real node processes running
//! the built-in `tokens` station: each rule, expiry, manual blocks and
//! unblocks through `ringhost tokens`, one-time tokens, a node crash in
//! the middle of a window and a particle loss. The station's own logic
//! (sketch bounds against exact counts, the slot size bound, exactly-once
//! merging) is tested natively in `stations/tokens`.

use std::process::Command;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use ringhost::admin::api::KvEntry;
use ringhost::admin::client::{self, AdminClient};
use ringhost::station::sets::SetEntry;
use serde_json::Value;

use crate::health::ProcRing;

/// A ring of `n` processes running tick and tokens with `settings`.
fn ring(n: usize, settings: &str, extra: &[&str]) -> ProcRing {
    let tokens = format!("tokens:{settings}");
    let mut args = vec!["--station", "tick", "--station", "deploy-delta"];
    args.extend(["--station", tokens.as_str()]);
    args.extend(extra);
    ProcRing::start_with(n, &args)
}

/// Blocking calls to each node's admin API (found through its ring port).
struct Admins {
    rt: tokio::runtime::Runtime,
    clients: Vec<Option<AdminClient>>,
}

impl Admins {
    fn new(ring: &ProcRing, n: usize) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut admins = Self {
            rt,
            clients: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            admins.connect(ring, i);
        }
        admins
    }

    /// (Re)finds node `i`'s admin API, waiting for the node to answer.
    fn connect(&mut self, ring: &ProcRing, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = ring.addr(i);
        let c = loop {
            match self.rt.block_on(client::connect(&addr, None)) {
                Ok(c) => break c,
                Err(e) => assert!(Instant::now() < deadline, "node {i} never answered: {e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.clients[i] = Some(c);
    }

    fn client(&self, i: usize) -> &AdminClient {
        self.clients[i].as_ref().expect("connected")
    }

    /// Posts observation lines to node `i`'s tokens inbox.
    fn post(&self, i: usize, lines: &str) {
        let body = Some((bytes::Bytes::from(lines.to_string()), "text/plain"));
        let _: Value = self
            .rt
            .block_on(self.client(i).call(
                Method::POST,
                "/v1/stations/tokens/inbox",
                body,
                Duration::from_secs(5),
            ))
            .expect("inbox post");
    }

    /// `token` observed `count` times at node `i`.
    fn observe(&self, i: usize, token: &str, count: usize) {
        self.post(i, &format!("o {token}\n").repeat(count));
    }

    /// `key`'s entry in `set` at node `i`.
    fn lookup(&self, i: usize, set: &str, key: &str) -> Option<SetEntry> {
        let path = format!("/v1/stations/tokens/sets/{set}?key={key}");
        let (status, body) = self
            .rt
            .block_on(
                self.client(i)
                    .exchange(Method::GET, &path, None, Duration::from_secs(5)),
            )
            .expect("lookup");
        match status {
            StatusCode::OK => Some(serde_json::from_slice(&body).expect("an entry")),
            StatusCode::NOT_FOUND => None,
            s => panic!("lookup at node {i}: {s}"),
        }
    }

    /// Node `i`'s tokens status document (`Null` before its first stop).
    fn status(&self, i: usize) -> Value {
        let got: anyhow::Result<KvEntry> = self.rt.block_on(self.client(i).call(
            Method::GET,
            "/v1/stations/tokens/kv/status",
            None,
            Duration::from_secs(5),
        ));
        match got {
            Ok(e) => serde_json::from_str(&e.value.expect("text")).expect("json"),
            Err(e) if format!("{e:#}").contains("404") => Value::Null,
            Err(e) => panic!("kv status at node {i}: {e:#}"),
        }
    }

    /// `token`'s count in node `i`'s view of the catalog (0 if not in top).
    fn count(&self, i: usize, token: &str) -> u64 {
        let s = self.status(i);
        let Some(top) = s["top"].as_array() else {
            return 0;
        };
        top.iter()
            .find(|r| r["token"] == token)
            .map_or(0, |r| r["count"].as_u64().unwrap())
    }

    /// Waits until `ok` holds at every node of `nodes`; the time it took.
    fn until(&self, nodes: &[usize], what: &str, ok: impl Fn(&Self, usize) -> bool) -> Duration {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(30);
        let mut pending: Vec<usize> = nodes.to_vec();
        while !pending.is_empty() {
            pending.retain(|&i| !ok(self, i));
            assert!(
                Instant::now() < deadline,
                "{what}: not at nodes {pending:?} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }
}

/// The lap p50 at node `i`, ms.
fn lap_ms(ring: &ProcRing, i: usize) -> f64 {
    ring.status(i).and_then(|r| r.lap_ms.p50).unwrap_or(0.0)
}

#[test]
fn a_spread_token_is_blocked_everywhere_within_a_lap_and_legitimate_ones_never() {
    let n = 5;
    let ring = ring(n, "spread_nodes=5,spread_min=10,total=1000", &[]);
    let a = Admins::new(&ring, n);
    // Legitimate traffic: each node's own customers, many requests each,
    // never at 5 nodes and far from the total.
    for i in 0..n {
        a.observe(i, &format!("customer-{i}"), 200);
    }
    // The spread attack: 2 per node (under any per-node threshold) at 4
    // nodes, then 2 at the fifth: 10 at 5 nodes crosses the spread rule.
    for i in 0..n - 1 {
        a.observe(i, "attacker", 2);
    }
    a.until(
        &(0..n).collect::<Vec<_>>(),
        "4 nodes' share merged",
        |a, i| a.count(i, "attacker") == 8,
    );
    assert!(
        (0..n).all(|i| a.lookup(i, "blocked", "attacker").is_none()),
        "below the rule: not blocked"
    );
    a.observe(n - 1, "attacker", 2);
    let took = a.until(&(0..n).collect::<Vec<_>>(), "blocked", |a, i| {
        a.lookup(i, "blocked", "attacker").is_some()
    });
    let lap = lap_ms(&ring, 0);
    eprintln!(
        "spread attack: blocked on all {n} nodes {} ms after the crossing observation \
         was posted (lap p50 {lap:.1} ms)",
        took.as_millis()
    );
    let e = a.lookup(0, "blocked", "attacker").unwrap();
    assert!(e.info.starts_with("spread (node "), "{}", e.info);
    for i in 0..n {
        for j in 0..n {
            let c = format!("customer-{j}");
            assert!(a.lookup(i, "blocked", &c).is_none(), "{c} blocked at {i}");
        }
    }
}

#[test]
fn total_and_rate_rules_follow_the_config_bus_and_blocks_expire() {
    let n = 3;
    // Total at 30 fleet-wide; blocks last 2 s.
    let ring = ring(n, "total=30,block_ttl_s=2,bucket_s=1,buckets=4", &[]);
    let a = Admins::new(&ring, n);
    let all: Vec<usize> = (0..n).collect();
    a.observe(0, "heavy", 15);
    a.observe(1, "heavy", 15);
    a.until(&all, "total rule", |a, i| {
        a.lookup(i, "blocked", "heavy")
            .is_some_and(|e| e.info.starts_with("total (node "))
    });
    // The block expires on every node (2 s), and the old counts have left
    // the 4 s window or stay under the rule.
    a.until(&all, "expiry", |a, i| {
        a.lookup(i, "blocked", "heavy").is_none()
    });

    // Total off, rate on through the config bus: 20/s at one node.
    let bin = env!("CARGO_BIN_EXE_ringhost");
    for (k, v) in [("tokens.total", "0"), ("tokens.rate", "20")] {
        let out = Command::new(bin)
            .args(["config", "set", k, v, "--to", &ring.addr(0)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    a.until(&all, "rules from the bus", |a, i| {
        let s = a.status(i);
        s["rules"]["rate_per_s"] == 20 && s["rules"]["total"] == 0
    });
    // 19 at each node within a second: under the rate everywhere, and
    // the total rule is off.
    for i in 0..n {
        a.observe(i, "busy", 19);
    }
    a.observe(2, "flood", 100);
    a.until(&all, "rate rule", |a, i| {
        a.lookup(i, "blocked", "flood")
            .is_some_and(|e| e.info.starts_with("rate (node 2)"))
    });
    for i in 0..n {
        assert!(
            a.lookup(i, "blocked", "busy").is_none(),
            "busy blocked at {i}"
        );
    }
}

fn tool(ring: &ProcRing, args: &[&str], node: usize) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .arg("tokens")
        .args(args)
        .args(["--to", &ring.addr(node)])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn manual_blocks_and_unblocks_travel_the_ring_through_the_cli() {
    let n = 4;
    let ring = ring(n, "total=1000000", &[]);
    let _a = Admins::new(&ring, n);
    let (code, out) = tool(&ring, &["block", "mallory", "--reason", "abuse desk"], 1);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("blocked on 4/4 live members"), "{out}");
    for i in 0..n {
        let (code, out) = tool(&ring, &["check", "mallory"], i);
        assert_eq!(code, 2, "node {i}: {out}");
        assert!(out.contains("manual (node 1): abuse desk"), "{out}");
    }
    let (code, out) = tool(&ring, &["check", "alice"], 3);
    assert_eq!((code, out.trim()), (0, "alice: not blocked"));
    // A token spelt like the set's event route is still a token.
    let (code, out) = tool(&ring, &["block", "events", "--ttl-s", "1"], 2);
    assert_eq!(code, 0, "{out}");
    let (code, _) = tool(&ring, &["check", "events"], 0);
    assert_eq!(code, 2);

    let (code, out) = tool(&ring, &["unblock", "mallory"], 3);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("unblocked on 4/4 live members"), "{out}");
    // The unblock holds the rules off it: a flood now does not block it.
    let (code, out) = tool(&ring, &["status"], 0);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 unblocked by hand"), "{out}");
    // Bad input is refused before anything is sent.
    let (code, out) = tool(&ring, &["observe", "two words"], 0);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("whitespace"), "{out}");
    let (code, out) = tool(&ring, &["status", "--station", "nope"], 0);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nope"), "{out}");
    // A check against a station that is not there is an error, never "not
    // blocked" (its set lookups answer 404 like a token not blocked).
    for station in ["nope", "tick"] {
        let (code, out) = tool(&ring, &["check", "mallory", "--station", station], 0);
        assert_eq!(code, 1, "check --station {station}: {out}");
        assert!(!out.contains("not blocked"), "{out}");
    }
}

#[test]
fn a_second_redemption_anywhere_in_the_fleet_is_flagged_everywhere() {
    let n = 4;
    let ring = ring(n, "total=1000000", &[]);
    let a = Admins::new(&ring, n);
    let all: Vec<usize> = (0..n).collect();
    a.post(0, "i coupon-1\ni coupon-2\n");
    a.post(1, "r coupon-1\nr coupon-2\n");
    a.until(&all, "redeemed", |a, i| {
        a.lookup(i, "redeemed", "coupon-1").is_some()
    });
    assert!(
        all.iter()
            .all(|&i| a.lookup(i, "flagged", "coupon-1").is_none()),
        "one redemption is not flagged"
    );
    a.post(3, "r coupon-1\n");
    a.until(&all, "flagged", |a, i| {
        a.lookup(i, "flagged", "coupon-1").is_some()
    });
    let e = a.lookup(2, "flagged", "coupon-1").unwrap();
    assert!(
        e.info.contains("node 1") && e.info.contains("node 3"),
        "{}",
        e.info
    );
    assert!(
        all.iter()
            .all(|&i| a.lookup(i, "flagged", "coupon-2").is_none())
    );
}

#[test]
fn counts_survive_a_node_crash_and_a_particle_loss() {
    let n = 5;
    // Node 1 holds the particle for 1.5 s at every lap, so we know where
    // it is when we kill nodes 0 and 1 together (the holder and the
    // predecessor keeping its copy): the particle is lost.
    let mut ring = ring(
        n,
        "total=100",
        &["--station", "delay:ms@1=1500", "--token-timeout-ms", "4000"],
    );
    let a = Admins::new(&ring, n);
    // 40 at node 2, merged into the particle, then node 2 dies.
    a.observe(2, "spread", 40);
    a.until(&[0, 1, 3, 4], "merged", |a, i| a.count(i, "spread") >= 40);
    ring.sigkill(2);
    ring.wait_converged(&[0, 1, 3, 4], Duration::from_secs(30), "node 2 killed");
    // Its 40 still count: 30 at node 3 and 30 at node 4 cross 100.
    a.observe(3, "spread", 30);
    a.observe(4, "spread", 30);
    a.until(
        &[0, 1, 3, 4],
        "blocked with a dead node's counts",
        |a, i| a.lookup(i, "blocked", "spread").is_some(),
    );
    // Another token, under the rule, seen at nodes 3 and 4 only.
    a.observe(3, "later", 35);
    a.observe(4, "later", 35);
    a.until(&[0, 1, 3, 4], "later merged", |a, i| {
        a.count(i, "later") >= 70
    });

    let generation = ring.status(3).unwrap().particle.generation;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ring.status(1).is_some_and(|r| r.particle.here) {
        assert!(Instant::now() < deadline, "node 1 never held the particle");
        std::thread::sleep(Duration::from_millis(10));
    }
    ring.sigkill(0);
    ring.sigkill(1);
    ring.wait_converged(&[3, 4], Duration::from_secs(30), "particle lost");
    let regenerated = ring.status(3).unwrap().particle.generation;
    assert!(regenerated > generation, "the particle was regenerated");
    // The regenerated catalog is rebuilt from nodes 3 and 4's windows: the
    // 70 are there again, and 31 more cross the rule.
    a.until(&[3, 4], "rebuilt", |a, i| a.count(i, "later") >= 70);
    assert!(
        [3, 4]
            .iter()
            .all(|&i| a.lookup(i, "blocked", "spread").is_some()),
        "the blocklist survives the loss"
    );
    a.observe(4, "later", 31);
    a.until(&[3, 4], "blocked after the loss", |a, i| {
        a.lookup(i, "blocked", "later").is_some()
    });
}

/// A steady flood into one node's inbox never holds its stop: the stop
/// folds one batch and leaves the rest to `on-input`. (It drained the
/// inbox until empty: a sender keeping the inbox full held the stop until
/// its call deadline, the instance was dropped and its unsealed counts
/// with it; `cargo bench --bench tokens -- --part ingest --ingest-obs
/// 3000000` showed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_flood_into_the_inbox_never_holds_the_stop() {
    use ringhost::config::StationSpec;

    use crate::support::TestRing;

    let ring = TestRing::start(1, |c| {
        c.delay_ms = 10;
        c.station_timeout_ms = 1000;
        c.stations = vec![StationSpec::builtin("tokens").with("total", "0")];
    })
    .await;
    let node = ring.nodes[0].as_ref().unwrap();
    let seen = || -> u64 {
        node.kv()
            .get("tokens", "status")
            .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
            .and_then(|s| s["local"]["seen"].as_u64())
            .unwrap_or(0)
    };
    let faults = || -> u64 {
        let key = "ringhost_station_faults_total{station=\"tokens\"} ";
        node.bus()
            .metrics()
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let inbox = loop {
        if let Some(i) = node.inbox("tokens") {
            break i;
        }
        assert!(Instant::now() < deadline, "no tokens inbox");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Payloads of 2000 tokens (60 KB), made beforehand so the sender is
    // faster than the fold: the inbox is kept at 64 of them for 4 s.
    let payloads: Vec<Vec<u8>> = (0..256)
        .map(|p| {
            (0..2000)
                .map(|i| format!("o t{p:08}-{i:05}-padding-pad\n"))
                .collect::<String>()
                .into_bytes()
        })
        .collect();
    let mut sent = 0u64;
    let start = Instant::now();
    for p in payloads.iter().cycle() {
        if start.elapsed() > Duration::from_secs(4) {
            break;
        }
        while inbox.len() >= 64 {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        inbox.push(p.clone()).unwrap();
        sent += 2000;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen() < sent {
        assert_eq!(faults(), 0, "a stop or batch failed under the flood");
        assert!(
            Instant::now() < deadline,
            "folded {} of {sent} within 30 s",
            seen()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen(), sent);
    assert_eq!(faults(), 0, "no stop ran into its bound");
}
