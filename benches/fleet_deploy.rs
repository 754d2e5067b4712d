//! Deploys across a real network: 11 `ringhost` processes in network
//! namespaces (tests/fleet) with shaped links, a ~100 KB and a ~1 MB
//! station pushed through the ring from the operator's host, against the
//! same module uploaded from there to each node in turn.
//!
//! Run: `cargo bench --bench fleet_deploy` (needs root, iproute2,
//! nftables, ethtool; skips with a message otherwise). Options:
//! `--runs N` (default 3; the median is shown), `--profiles dc,wan`,
//! `--hosts 11`, `--detail` (per node: when it had the module and when it
//! ran it, for every run), `--ring-order dc` (the ring file grouped by
//! datacentre instead of the harness's order, which alternates them so
//! that under `wan` every hop of the ring crosses the WAN).
//!
//! - ring: `ringhost push --no-wait` run on the operator's host `ctl`
//!   against node 0 (`--to` its ring port: the tool finds the admin API
//!   from the node's status; node 0 is in ctl's datacentre; a tool run
//!   that fails under loss is tried again, at most three times, the time
//!   counted from the first; `--to` the admin address works as well: a
//!   ring probe that gets no verdict is tried as an admin API); the node
//!   validates the module, publishes a release and the ring carries it on.
//! - one by one: from ctl, a `local` push to each node's admin API in
//!   turn, waiting for each answer (each node validates and runs it,
//!   nothing travels between nodes), as `benches/deploy.rs`'s baseline.
//!
//! Both are timed from just before the first request leaves ctl until the
//! last node logs "station swapped in" for that station: the nodes'
//! log timestamps share the machine's clock, so the time is exact to the
//! log's resolution, with no polling in it. Every run pushes a fresh
//! station name with fresh bytes (no delta base, no compile cache: nodes
//! run with `--cache-dir none`). The big modules are the `marker` test
//! station with a custom section of incompressible bytes appended, as in
//! `benches/deploy.rs`.
//!
//! One fleet per profile serves all its runs; each push has a deadline
//! ([`DEADLINE`]), so a stuck deploy fails the bench instead of hanging.

#[path = "common/args.rs"]
mod args;
#[path = "../tests/fleet/mod.rs"]
mod fleet;
use args::arg;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use ringhost::admin::client::{AdminClient, PushParams};

use fleet::{ADMIN_PORT, Fleet, Profile, RING_PORT, Spec};

/// Bound on one deploy (push until every node runs it).
const DEADLINE: Duration = Duration::from_secs(90);
/// Bound on the ring forming.
const FORM: Duration = Duration::from_secs(60);
#[path = "common/modules.rs"]
mod modules;
use modules::{mark_offset, padded, with_mark};
const TOKEN: &str = "fleet-admin-token";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringhost"))
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("fleet_deploy: {e:#}");
        std::process::exit(1);
    }
}

fn bench() -> Result<()> {
    if let Some(why) = fleet::unavailable() {
        println!("skipped: the fleet deploy bench {why}");
        return Ok(());
    }
    // Ctrl-C (or a kill) removes the hosts' namespaces on the way out.
    fleet::netns::clean_up_on_signals(fleet::PREFIX);
    let runs: usize = arg("--runs", 3)?;
    ensure!(runs > 0, "--runs must be at least 1");
    let hosts: usize = arg("--hosts", 11)?;
    ensure!(hosts >= 2, "--hosts must be at least 2");
    let profiles: String = arg("--profiles", "dc,wan".to_string())?;
    let detail = std::env::args().any(|a| a == "--detail");
    let order: String = arg("--ring-order", "index".to_string())?;
    ensure!(
        order == "index" || order == "dc",
        "--ring-order is index or dc"
    );
    let marker = std::fs::read(Path::new(env!("RINGHOST_STATIONS_DIR")).join("marker.wasm"))
        .context("reading marker.wasm")?;
    mark_offset(&marker).context("marker.wasm")?;

    let sizes = [("100 KB", 100_000usize), ("1 MB", 1_000_000)];
    let mut rows = Vec::new();
    let mut seed = 0u64;
    for pname in profiles.split(',').filter(|p| !p.is_empty()) {
        let profile = Profile::by_name(pname)?;
        let mut fleet = Fleet::build(
            bin(),
            &Spec {
                hosts,
                profile: profile.clone(),
                seed: 11,
                node_args: vec!["--delay-ms".into(), "10".into()],
            },
        )?;
        if order == "dc" {
            group_by_dc(&fleet)?;
        }
        let t0 = fleet::now();
        fleet.start_all()?;
        fleet.wait_formed(t0, FORM)?;
        for (label, size) in sizes {
            let mut row = Row {
                profile: profile.name,
                label,
                bytes: 0,
                ring: Vec::new(),
                one: Vec::new(),
            };
            for run in 0..runs {
                seed += 1;
                let module = with_mark(&padded(&marker, size, seed), (run % 90) as u8)?;
                row.bytes = module.len();
                let name = format!("big{seed}r");
                let r = ring_push(&fleet, &name, &module)
                    .with_context(|| format!("{pname} {label} run {}: ring push", run + 1))?;
                seed += 1;
                let module = with_mark(&padded(&marker, size, seed), (run % 90) as u8)?;
                let name = format!("big{seed}o");
                let o = one_by_one(&fleet, &name, &module)
                    .with_context(|| format!("{pname} {label} run {}: one by one", run + 1))?;
                eprintln!(
                    "{pname} {label} run {}/{runs}: ring {:.0} ms, one by one {:.0} ms",
                    run + 1,
                    r.total * 1e3,
                    o.total * 1e3
                );
                if r.failures > 0 {
                    eprintln!("  ({} fetches failed and were retried)", r.failures);
                }
                if detail {
                    r.print("ring");
                    o.print("one by one");
                }
                row.ring.push(r);
                row.one.push(o);
            }
            rows.push(row);
        }
        drop(fleet);
    }
    report(hosts, runs, &rows);
    Ok(())
}

/// Rewrites the fleet's ring file with the members grouped by datacentre
/// (`dc1/…` first), so only the hops between datacentres cross the WAN;
/// the harness's own order alternates datacentres, so every hop does.
fn group_by_dc(fleet: &Fleet) -> Result<()> {
    let mut hosts: Vec<&fleet::Host> = fleet.hosts.iter().collect();
    hosts.sort_by_key(|h| h.dc);
    let ring: String = hosts
        .iter()
        .map(|h| format!("{} = \"{}\"\n", h.name, h.at(RING_PORT)))
        .collect();
    std::fs::write(fleet.ring_file(), ring).context("rewriting the ring file")
}

// ---------------------------------------------------------------------
// Deploys

/// One deploy measured, in seconds from its start.
struct Deploy {
    /// Start -> the last node ran it.
    total: f64,
    /// Per node: when it had the module (ring: "module fetched", or the
    /// origin's "published a release"), when it ran it.
    nodes: BTreeMap<usize, (Option<f64>, f64)>,
    /// When the first node began validating the pushed module (the
    /// upload had arrived).
    validating: Option<f64>,
    /// "deploy failed here" lines about it (a fetch that failed, retried).
    failures: usize,
}

impl Deploy {
    /// Ring deploys: the mean time from one node having the module to the
    /// next one having it (in the order they got it), in seconds.
    fn per_hop(&self) -> Option<f64> {
        let mut has: Vec<f64> = self.nodes.values().filter_map(|n| n.0).collect();
        has.sort_by(f64::total_cmp);
        let (first, last) = (has.first()?, has.last()?);
        (has.len() > 1).then(|| (last - first) / (has.len() - 1) as f64)
    }

    /// Ring deploys: when the last node had the module, in seconds.
    fn all_have(&self) -> Option<f64> {
        let has: Vec<f64> = self.nodes.values().filter_map(|n| n.0).collect();
        (has.len() == self.nodes.len()).then(|| has.into_iter().fold(0.0, f64::max))
    }

    /// Ring deploys: node 0's validation of the upload (compile and
    /// `init`, before any other node has the module), in seconds.
    fn first_compile(&self) -> Option<f64> {
        Some(self.nodes.get(&0)?.1 - self.validating?)
    }

    fn print(&self, what: &str) {
        if let Some(v) = self.validating {
            eprintln!("  {what}: upload arrived at {:.0} ms", v * 1e3);
        }
        eprintln!("  {what}: node  has-it ms  runs-it ms");
        for (i, (has, runs)) in &self.nodes {
            eprintln!(
                "  {i:>4} {:>10} {:>10.0}",
                has.map_or("-".into(), |h| format!("{:.0}", h * 1e3)),
                runs * 1e3
            );
        }
    }
}

/// The value of `key=` in a log line (tracing's `key=value` fields).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Collects log lines from `since` until every node logged "station
/// swapped in" for `name`; also notes when each had the module.
fn wait_all_run(fleet: &Fleet, name: &str, since: f64) -> Result<Deploy> {
    let deadline = Instant::now() + DEADLINE;
    let mut has: BTreeMap<usize, f64> = BTreeMap::new();
    let mut runs: BTreeMap<usize, f64> = BTreeMap::new();
    let mut validating = None;
    let mut failures = 0;
    let release = format!("release={name} ");
    while runs.len() < fleet.len() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            let missing: Vec<usize> = (0..fleet.len()).filter(|i| !runs.contains_key(i)).collect();
            bail!(
                "{name} not running on nodes {missing:?} within {DEADLINE:?}; node {} said:\n{}",
                missing[0],
                fleet.log_tail(missing[0], 15)
            );
        };
        let Some(l) = fleet.next_line(left.min(Duration::from_millis(500))) else {
            continue;
        };
        if l.at < since {
            continue;
        }
        if l.text.contains("station swapped in") && field(&l.text, "station") == Some(name) {
            runs.entry(l.node).or_insert(l.at);
        } else if l.text.contains(&release)
            && (l.text.contains("module fetched") || l.text.contains("published a release"))
        {
            has.entry(l.node).or_insert(l.at);
        } else if l.text.contains("validating a pushed module")
            && field(&l.text, "station") == Some(name)
        {
            validating.get_or_insert(l.at - since);
        } else if l.text.contains("deploy failed") && field(&l.text, "station") == Some(name) {
            // A failed fetch is retried (after 1 s, doubling): counted,
            // and the deadline decides.
            failures += 1;
        }
    }
    let total = runs.values().copied().fold(since, f64::max) - since;
    let nodes = runs
        .iter()
        .map(|(&i, &r)| (i, (has.get(&i).map(|h| h - since), r - since)))
        .collect();
    Ok(Deploy {
        total,
        nodes,
        validating,
        failures,
    })
}

/// `ringhost push --no-wait` from ctl to node 0; waits (on the logs) for
/// every node to run it.
fn ring_push(fleet: &Fleet, name: &str, module: &[u8]) -> Result<Deploy> {
    let file = fleet.dir().join(format!("{name}.wasm"));
    std::fs::write(&file, module)?;
    fleet.drain();
    let since = fleet::now();
    // One tool run can fail under loss (its connection is refused or cut
    // before the node answers): tried again, up to three times, the time
    // still counted from the first. A push that did arrive answers the
    // next try with "unchanged".
    let mut tries = Vec::new();
    for _ in 0..3 {
        let out = fleet
            .tool(&[
                "push",
                file.to_str().context("module path")?,
                "--to",
                &fleet.hosts[0].at(RING_PORT),
                "--as",
                name,
                "--no-wait",
            ])
            .output()
            .context("running ringhost push")?;
        if out.status.success() {
            break;
        }
        tries.push(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    ensure!(tries.len() < 3, "ringhost push failed 3 times: {tries:?}");
    for t in &tries {
        eprintln!("  ringhost push failed once, tried again: {t}");
    }
    let d = wait_all_run(fleet, name, since);
    let _ = std::fs::remove_file(&file);
    d
}

/// From ctl, a `local` push of `module` to each node's admin API in turn
/// (waiting for each answer); then waits (on the logs) for every swap.
fn one_by_one(fleet: &Fleet, name: &str, module: &[u8]) -> Result<Deploy> {
    fleet.drain();
    let since = fleet::now();
    let admins: Vec<String> = fleet.hosts.iter().map(|h| h.at(ADMIN_PORT)).collect();
    let blob = Bytes::from(module.to_vec());
    let ns = &fleet.ctl.ns;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            ns.enter()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                for (i, addr) in admins.iter().enumerate() {
                    let params = PushParams {
                        name: name.to_string(),
                        local: true,
                        ..PushParams::default()
                    };
                    tokio::time::timeout(
                        DEADLINE,
                        AdminClient::new(addr, Some(TOKEN.into())).push(&params, blob.clone()),
                    )
                    .await
                    .with_context(|| format!("local push to node {i} ({addr}): no answer"))?
                    .with_context(|| format!("local push to node {i} ({addr})"))?;
                }
                Ok(())
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the upload thread panicked"))?
    })?;
    wait_all_run(fleet, name, since)
}

// ---------------------------------------------------------------------
// Report

struct Row {
    profile: &'static str,
    label: &'static str,
    bytes: usize,
    ring: Vec<Deploy>,
    one: Vec<Deploy>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn report(hosts: usize, runs: usize, rows: &[Row]) {
    println!();
    println!(
        "deploys to {hosts} ringhost processes in network namespaces, from the operator's host, \
         median of {runs} runs (cargo bench --bench fleet_deploy)"
    );
    println!(
        "{:<8} {:<7} {:>9} {:>10} {:>10} {:>14} {:>7} {:>7} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "profile",
        "module",
        "bytes",
        "all have",
        "all run",
        "one-by-one ms",
        "run/1b1",
        "have/1b1",
        "compile",
        "hop ms",
        "node 0 ms",
        "upload at",
        "retries"
    );
    for r in rows {
        let ring = median(r.ring.iter().map(|d| d.total).collect());
        let one = median(r.one.iter().map(|d| d.total).collect());
        let have = median(r.ring.iter().filter_map(Deploy::all_have).collect());
        let hop = median(r.ring.iter().filter_map(Deploy::per_hop).collect());
        let compile = median(r.ring.iter().filter_map(Deploy::first_compile).collect());
        let first = median(
            r.ring
                .iter()
                .filter_map(|d| d.nodes.get(&0).map(|n| n.1))
                .collect(),
        );
        println!(
            "{:<8} {:<7} {:>9} {:>10.0} {:>10.0} {:>14.0} {:>7.2} {:>8.2} {:>9.0} {:>9.0} {:>10.0} {:>10.0} {:>9}",
            r.profile,
            r.label,
            r.bytes,
            have * 1e3,
            ring * 1e3,
            one * 1e3,
            ring / one,
            have / one,
            compile * 1e3,
            hop * 1e3,
            first * 1e3,
            median(r.ring.iter().filter_map(|d| d.validating).collect()) * 1e3,
            r.ring.iter().map(|d| d.failures).sum::<usize>()
        );
    }
    println!(
        "  all have (ms): ring push until every node had the module, its hash checked (\"module fetched\"); \
         all run (ms): until every node logged \"station swapped in\"; one by one: a local push to each node \
         in turn, until the last swap. run/1b1, have/1b1: ring / one by one."
    );
    println!(
        "  compile: node 0's validation of the upload (compile, init), alone on the machine; \
         hop: mean time from one node having the module to the next; \
         node 0: push until node 0 ran it (tool start, upload, validation); \
         upload at: when node 0 began validating the upload (the tool's probes before it); \
         retries: fetches that failed and were retried, all runs."
    );
    println!(
        "  the ring's nodes compile at once on this machine's shared cores (the one-by-one nodes one \
         after another); on separate hosts, all run would be about all have + compile."
    );
}
