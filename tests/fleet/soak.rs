//! A bounded chaos soak: eleven `ringhost` nodes (hosts in network
//! namespaces with root, processes on 127.0.0.1 otherwise) under random,
//! bounded faults while stations are pushed, config written and inputs
//! posted; then, after healing everything, the invariants.
//!
//! Every random choice (faults, their targets and durations, operations)
//! comes from one generator seeded by [`SoakConfig::seed`], printed first,
//! so a run's schedule is reproducible from it (what the nodes make of it
//! depends on timing as well).
//!
//! Faults, planned in full from the seed before the nodes start: a new
//! one every 1–3 s, each healed after 0.3–3 s; one that would touch a
//! node another active fault touches, or make more than [`MAX_ACTIVE`],
//! is skipped (the schedule says so). Kinds: SIGKILL
//! (healed by a start), SIGSTOP (SIGCONT), a clean restart (SIGTERM, then
//! a start once it exited), and with namespaces also link down (up), a cut
//! between two hosts (healed) and a loss burst of 10–30 % at one host
//! (back to the profile's). Operations: see [`ops`].
//!
//! Invariants, checked within [`SETTLE`] and [`STAGE`] after the last heal (see
//! [`check`] for the exact rules): every node's process runs and `ringhost
//! members` exits 0 (all live, the same station versions everywhere);
//! exactly one particle (the last two laps are one walk in ring order);
//! every acknowledged config write applied everywhere (each key holds its
//! last acknowledged value, or a later unacknowledged one, at every node);
//! every acknowledged input applied everywhere unless its node was killed
//! soon after; no tick sequence number twice among committed visits; no
//! false failure outside injected faults; the token station's blocklist
//! the same everywhere and what the acknowledged operations make it
//! ([`tokens`]).

pub mod check;
pub mod nodes;
pub mod ops;
pub mod tokens;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Fleet, Line, Profile, Spec, now};
use check::{FaultSpan, Tick};
use nodes::{Loopback, Nodes, Reach};
use ops::OpLog;

/// Faults active at once, at most.
pub const MAX_ACTIVE: usize = 2;
/// Time allowed after the last heal for every node to be live and run the
/// same stations.
pub const SETTLE: Duration = Duration::from_secs(90);
/// Time allowed for each later end-state check (one particle, config).
pub const STAGE: Duration = Duration::from_secs(30);
/// A failure declaration or redone stop this long (seconds) after a fault
/// touching it ended is still explained by it.
pub const EXPLAIN_WINDOW: f64 = 2.0;
/// The nodes' token timeout (the default), in seconds.
const TOKEN_TIMEOUT: f64 = 1.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Seeds every random choice.
    pub seed: u64,
    /// How long faults and operations go on.
    pub duration: Duration,
    /// Number of nodes.
    pub hosts: usize,
    /// Link shaping (namespaces only).
    pub profile: Profile,
    /// Run on 127.0.0.1 even when namespaces are available.
    pub loopback: bool,
}

impl SoakConfig {
    /// Eleven hosts on the `dc` profile for `duration`.
    pub fn new(seed: u64, duration: Duration) -> SoakConfig {
        SoakConfig {
            seed,
            duration,
            hosts: 11,
            profile: Profile::dc(),
            loopback: false,
        }
    }

    /// From the environment: `RINGHOST_SOAK_SEED` (default: from the
    /// clock), `RINGHOST_SOAK_MINUTES` (default `minutes`),
    /// `RINGHOST_SOAK_PROFILE` (default `dc`), `RINGHOST_SOAK_LOOPBACK=1`.
    ///
    /// # Errors
    /// When one of them does not parse.
    pub fn from_env(minutes: f64) -> Result<SoakConfig> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let seed = match var("RINGHOST_SOAK_SEED") {
            Some(s) => s.parse().context("RINGHOST_SOAK_SEED: not a number")?,
            // The clock's milliseconds: a different seed per run, short to type.
            None => (now() * 1000.0) as u64 % 1_000_000,
        };
        let minutes: f64 = match var("RINGHOST_SOAK_MINUTES") {
            Some(m) => m.parse().context("RINGHOST_SOAK_MINUTES: not a number")?,
            None => minutes,
        };
        let mut cfg = SoakConfig::new(seed, Duration::from_secs_f64(minutes * 60.0));
        if let Some(p) = var("RINGHOST_SOAK_PROFILE") {
            cfg.profile = Profile::by_name(&p)?;
        }
        cfg.loopback = var("RINGHOST_SOAK_LOOPBACK").is_some_and(|v| v != "0");
        Ok(cfg)
    }
}

/// What a soak did and checked.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    /// The seed.
    pub seed: u64,
    /// `namespaces (profile P)` or `loopback`.
    pub mode: String,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Operations sent and acknowledged.
    pub ops: OpLog,
    /// Acknowledged inputs found applied everywhere.
    pub inputs_applied: usize,
    /// What the tick analysis found.
    pub ticks: check::TickFindings,
    /// What the token operations added up to.
    pub tokens: tokens::Findings,
    /// The invariants checked (all held when the report is returned).
    pub invariants: Vec<&'static str>,
    /// Every fault injected, one line each (UTC time, offset, what, how
    /// long), kept beside the node logs when a run fails.
    pub schedule: Vec<String>,
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let acked = |v: &[ops::Op]| v.iter().filter(|o| o.acked).count();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "soak seed {} on {}", self.seed, self.mode)?;
        writeln!(f, "  faults: {}", faults.join(", "))?;
        writeln!(
            f,
            "  acknowledged: pushes {}/{}, config writes {}/{}, inputs {}/{} ({} applied everywhere)",
            acked(&self.ops.pushes),
            self.ops.pushes.len(),
            acked(&self.ops.configs),
            self.ops.configs.len(),
            acked(&self.ops.inputs),
            self.ops.inputs.len(),
            self.inputs_applied
        )?;
        let tokens = |k: tokens::Kind| {
            let ops: Vec<&tokens::TokenOp> =
                self.ops.tokens.iter().filter(|o| o.kind == k).collect();
            format!("{}/{}", ops.iter().filter(|o| o.acked).count(), ops.len())
        };
        writeln!(
            f,
            "  tokens: observation posts {}, blocks {}, unblocks {}; {:?} seen {} times at {} nodes after faults (blocked everywhere: {})",
            tokens(tokens::Kind::Observe),
            tokens(tokens::Kind::Block),
            tokens(tokens::Kind::Unblock),
            tokens::SPREAD,
            self.tokens.spread_seen,
            self.tokens.spread_nodes,
            if self.tokens.spread_due {
                "due, checked"
            } else {
                "not due"
            }
        )?;
        writeln!(
            f,
            "  ticks {}: stops redone {}, rolled back {}, superseded {}, regenerations {}",
            self.ticks.ticks,
            self.ticks.redone,
            self.ticks.rolled_back,
            self.ticks.superseded,
            self.ticks.regenerations
        )?;
        write!(
            f,
            "  invariants checked ({}): {}",
            self.invariants.len(),
            self.invariants.join("; ")
        )
    }
}

/// A fault kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kill,
    Stop,
    Restart,
    LinkDown,
    Cut,
    Loss,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Kill => "SIGKILL",
            Kind::Stop => "SIGSTOP",
            Kind::Restart => "restart",
            Kind::LinkDown => "link down",
            Kind::Cut => "cut",
            Kind::Loss => "loss burst",
        }
    }
}

/// A fault in force.
struct Active {
    kind: Kind,
    nodes: Vec<usize>,
    heal_at: Instant,
    /// Its index in the spans.
    span: usize,
    /// For a restart: when SIGTERM was sent.
    since: Instant,
}

/// Runs the soak: builds the nodes, runs faults and operations for the
/// configured duration, heals, and checks the invariants. `bin` is the
/// `ringhost` binary. Prints the seed first.
///
/// # Errors
/// Any violated invariant (each named, with the seed, and where the node
/// logs were kept), or a harness failure.
pub fn run(bin: &Path, cfg: &SoakConfig) -> Result<SoakReport> {
    println!(
        "soak seed {}: rerun with RINGHOST_SOAK_SEED={}",
        cfg.seed, cfg.seed
    );
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let node_args: Vec<String> = [
        "--delay-ms",
        "10",
        "--station",
        "tick",
        "--station",
        ops::CONFIG_STATION,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--station".to_owned(), tokens::station_arg()])
    .collect();
    let namespaces = !cfg.loopback && super::unavailable().is_none();
    let mut nodes = if namespaces {
        let spec = Spec {
            hosts: cfg.hosts,
            profile: cfg.profile.clone(),
            seed: cfg.seed,
            node_args,
        };
        Nodes::Fleet(Box::new(Fleet::build(bin, &spec)?))
    } else {
        Nodes::Loopback(Loopback::build(bin, cfg.hosts, cfg.seed, node_args)?)
    };
    let mut report = SoakReport {
        seed: cfg.seed,
        mode: if namespaces {
            format!("{} namespaces (profile {})", cfg.hosts, cfg.profile.name)
        } else {
            format!("{} loopback processes", cfg.hosts)
        },
        ..SoakReport::default()
    };
    println!("{}, {:?}", report.mode, cfg.duration);
    let result = soak(bin, cfg, &mut rng, &mut nodes, &mut report);
    match result {
        Ok(violations) if violations.is_empty() => Ok(report),
        Ok(violations) => {
            let kept = keep_logs(&nodes, cfg.seed, &report.schedule);
            bail!(
                "soak seed {} (rerun with RINGHOST_SOAK_SEED={}): {} violation(s):\n  {}\n{report}\nnode logs in {kept}",
                cfg.seed,
                cfg.seed,
                violations.len(),
                violations.join("\n  ")
            )
        }
        Err(e) => {
            let kept = keep_logs(&nodes, cfg.seed, &report.schedule);
            Err(e.context(format!(
                "soak seed {} (rerun with RINGHOST_SOAK_SEED={}); node logs in {kept}",
                cfg.seed, cfg.seed
            )))
        }
    }
}

/// Copies the node logs where they outlive the nodes' directory, with
/// the fault schedule (`faults.txt`).
fn keep_logs(nodes: &Nodes, seed: u64, schedule: &[String]) -> String {
    let to = std::env::temp_dir().join(format!("ringhost-soak-{seed}"));
    let _ = std::fs::create_dir_all(&to);
    let _ = std::fs::write(to.join("faults.txt"), schedule.join("\n") + "\n");
    for i in 0..nodes.len() {
        let name = format!("node-{i}.log");
        let _ = std::fs::copy(nodes.dir().join(&name), to.join(&name));
    }
    to.display().to_string()
}

/// The soak proper: the violations found.
fn soak(
    bin: &Path,
    cfg: &SoakConfig,
    rng: &mut StdRng,
    nodes: &mut Nodes,
    report: &mut SoakReport,
) -> Result<Vec<String>> {
    let n = nodes.len();
    let mut lines: Vec<Line> = Vec::new();
    let t0 = now();
    for i in 0..n {
        nodes.start(i)?;
    }
    wait_ticks(nodes, &mut lines, t0, Duration::from_secs(60)).context("the ring did not form")?;
    let formed = now();
    println!("formed in {:.1} s", formed - t0);
    let reach = nodes.reach(bin);
    let station = Path::new(env!("RINGHOST_STATIONS_DIR")).join("echo.wasm");
    let ops_seed: u64 = rng.random();
    let stop = AtomicBool::new(false);
    let mut spans: Vec<FaultSpan> = Vec::new();
    let mut violations = Vec::new();
    let oplog = std::thread::scope(|s| {
        let ops = s.spawn(|| ops::run(&reach, ops_seed, &station, &stop));
        let chaos = chaos(
            cfg,
            rng,
            nodes,
            &mut lines,
            &mut spans,
            &mut violations,
            &mut report.schedule,
        );
        stop.store(true, Ordering::Relaxed);
        let oplog = ops.join().expect("operations thread");
        chaos?;
        oplog
    })?;
    for s in &spans {
        *report.faults.entry(s.kind).or_default() += 1;
    }
    report.ops = oplog;
    println!("healed; checking");
    settle(nodes, &reach, &mut lines, report, &spans, &mut violations)?;
    // The whole history, in time order (lines of different nodes arrive
    // through different threads).
    lines.retain(|l| l.at >= formed);
    lines.sort_by(|a, b| a.at.total_cmp(&b.at));
    let ticks: Vec<Tick> = lines.iter().filter_map(Tick::of).collect();
    // A killed or restarted node is not back when its process starts but
    // when the particle reaches it again (its stations compile first).
    for s in spans
        .iter_mut()
        .filter(|s| s.kind == Kind::Kill.label() || s.kind == Kind::Restart.label())
    {
        if let Some(t) = ticks.iter().find(|t| t.node == s.nodes[0] && t.at >= s.end) {
            s.end = t.at;
        }
    }
    // A stop whose tick station call then failed (its deadline passed
    // after it logged) went on with the slot unchanged: not committed.
    let failed: Vec<(usize, f64)> = lines
        .iter()
        .filter(|l| l.text.contains("station call failed") && l.text.contains("station=tick"))
        .map(|l| (l.node, l.at))
        .collect();
    let mut aborted = vec![false; ticks.len()];
    for &(node, at) in &failed {
        if let Some(k) = ticks.iter().rposition(|t| t.node == node && t.at <= at)
            && at - ticks[k].at < 2.0
        {
            aborted[k] = true;
        }
    }
    let ticks: Vec<Tick> = ticks
        .iter()
        .zip(&aborted)
        .filter(|(_, a)| !**a)
        .map(|(t, _)| *t)
        .collect();
    let regens: Vec<(usize, f64)> = lines
        .iter()
        .filter(|l| l.text.contains("regenerated one"))
        .map(|l| (l.node, l.at))
        .collect();
    report.ticks =
        check::committed_ticks(&ticks, &regens, &spans, EXPLAIN_WINDOW, TOKEN_TIMEOUT, n);
    violations.extend(check::isolated_regenerations(&lines, n));
    violations.extend(report.ticks.violations.iter().cloned());
    report
        .invariants
        .push("no tick seq twice among committed visits");
    violations.extend(check::false_failures(&lines, &spans, EXPLAIN_WINDOW));
    report.invariants.push("no false failure outside faults");
    Ok(violations)
}

/// Collects lines until every node logged a tick after `since`.
fn wait_ticks(nodes: &Nodes, lines: &mut Vec<Line>, since: f64, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut left: Vec<bool> = vec![true; nodes.len()];
    while left.iter().any(|&l| l) {
        let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
            let missing: Vec<usize> = (0..left.len()).filter(|&i| left[i]).collect();
            bail!("no tick within {within:?} at nodes {missing:?}");
        };
        if let Some(l) = nodes.next_line(wait) {
            if l.at >= since && Tick::of(&l).is_some() {
                left[l.node] = false;
            }
            lines.push(l);
        }
    }
    Ok(())
}

/// Injects and heals faults for the configured duration, then heals all.
fn chaos(
    cfg: &SoakConfig,
    rng: &mut StdRng,
    nodes: &mut Nodes,
    lines: &mut Vec<Line>,
    spans: &mut Vec<FaultSpan>,
    violations: &mut Vec<String>,
    schedule: &mut Vec<String>,
) -> Result<()> {
    let plan = plan(cfg, rng, nodes.len(), nodes.has_network());
    let t0 = Instant::now();
    let end = t0 + cfg.duration;
    let mut active: Vec<Active> = Vec::new();
    let mut next = plan.iter().peekable();
    loop {
        let now_i = Instant::now();
        if now_i >= end {
            break;
        }
        // Heal what is due.
        let mut k = 0;
        while k < active.len() {
            if active[k].heal_at <= now_i && heal(nodes, &active[k], violations)? {
                let a = active.remove(k);
                spans[a.span].end = now();
            } else {
                k += 1;
            }
        }
        while let Some(p) = next.next_if(|p| t0 + p.at <= now_i) {
            let busy = active
                .iter()
                .any(|a| p.nodes.iter().any(|x| a.nodes.contains(x)));
            let what = match p.kind {
                Kind::Loss => format!("{} {}‰", p.kind.label(), p.per_mille),
                _ => p.kind.label().to_owned(),
            };
            if busy || active.len() >= MAX_ACTIVE {
                schedule.push(format!(
                    "{} +{:.3} s: skipped {what} {:?} (node busy, or {MAX_ACTIVE} faults active)",
                    check::clock(now()),
                    p.at.as_secs_f64(),
                    p.nodes
                ));
                continue;
            }
            // Stamped before the fault: its effects follow at once.
            let started = now();
            inject(nodes, p.kind, &p.nodes, p.per_mille)?;
            schedule.push(format!(
                "{} +{:.3} s: {what} {:?} for {:.3} s",
                check::clock(started),
                p.at.as_secs_f64(),
                p.nodes,
                p.heal_in.as_secs_f64()
            ));
            println!("fault {}", schedule.last().expect("just pushed"));
            spans.push(FaultSpan {
                kind: p.kind.label(),
                nodes: p.nodes.clone(),
                start: started,
                end: f64::INFINITY,
            });
            active.push(Active {
                kind: p.kind,
                nodes: p.nodes.clone(),
                heal_at: now_i + p.heal_in,
                span: spans.len() - 1,
                since: now_i,
            });
        }
        if let Some(l) = nodes.next_line(Duration::from_millis(20)) {
            lines.push(l);
        }
        lines.extend(nodes.drain());
    }
    // Heal everything still in force (a restart waits for its exit).
    while !active.is_empty() {
        let a = active.remove(0);
        if heal(nodes, &a, violations)? {
            spans[a.span].end = now();
        } else {
            active.push(a);
            std::thread::sleep(Duration::from_millis(20));
        }
        lines.extend(nodes.drain());
    }
    Ok(())
}

/// One planned fault.
struct Planned {
    /// When, from the start of the faults.
    at: Duration,
    kind: Kind,
    /// The node, and for a cut the other end.
    nodes: Vec<usize>,
    /// For a loss burst.
    per_mille: u32,
    heal_in: Duration,
}

/// The whole fault plan, drawn from `rng` before anything runs, so the
/// same seed plans the same faults whatever the nodes do; a planned fault
/// that meets a busy node, or [`MAX_ACTIVE`] faults in force, is skipped
/// (and says so in the schedule).
fn plan(cfg: &SoakConfig, rng: &mut StdRng, n: usize, network: bool) -> Vec<Planned> {
    let mut kinds = vec![Kind::Kill, Kind::Stop, Kind::Restart];
    if network {
        kinds.extend([Kind::LinkDown, Kind::Cut, Kind::Loss]);
    }
    let mut out = Vec::new();
    let mut at = secs(rng, 1.0, 3.0);
    while at < cfg.duration {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let a = rng.random_range(0..n);
        let mut nodes = vec![a];
        if kind == Kind::Cut {
            // Half the cuts between ring neighbours, where they matter most.
            let b = if n < 3 || rng.random_bool(0.5) {
                (a + 1) % n
            } else {
                (a + rng.random_range(2..n)) % n
            };
            nodes.push(b);
        }
        out.push(Planned {
            at,
            kind,
            nodes,
            per_mille: rng.random_range(100..=300),
            heal_in: secs(rng, 0.3, 3.0),
        });
        at += secs(rng, 1.0, 3.0);
    }
    out
}

fn secs(rng: &mut StdRng, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(rng.random_range(lo..hi))
}

fn inject(nodes: &mut Nodes, kind: Kind, touched: &[usize], per_mille: u32) -> Result<()> {
    let a = touched[0];
    match kind {
        Kind::Kill => nodes.kill(a),
        Kind::Stop => nodes.signal(a, Signal::SIGSTOP)?,
        Kind::Restart => nodes.signal(a, Signal::SIGTERM)?,
        Kind::LinkDown => nodes.link(a, false)?,
        Kind::Cut => nodes.cut(a, touched[1], true)?,
        Kind::Loss => nodes.set_loss(a, Some(per_mille))?,
    }
    Ok(())
}

/// Heals `a`; false when it cannot be yet (a restart whose node has not
/// exited), so it is tried again. A node that does not stop within 10 s
/// of SIGTERM is a violation, and killed.
fn heal(nodes: &mut Nodes, a: &Active, violations: &mut Vec<String>) -> Result<bool> {
    let i = a.nodes[0];
    match a.kind {
        Kind::Kill => nodes.start(i)?,
        Kind::Stop => nodes.signal(i, Signal::SIGCONT)?,
        Kind::Restart => {
            if nodes.running(i) {
                if a.since.elapsed() < Duration::from_secs(10) {
                    return Ok(false);
                }
                violations.push(format!(
                    "node {i} still ran 10 s after SIGTERM:\n{}",
                    nodes.log_tail(i, 20)
                ));
            }
            nodes.kill(i);
            nodes.start(i)?;
        }
        Kind::LinkDown => nodes.link(i, true)?,
        Kind::Cut => nodes.cut(i, a.nodes[1], false)?,
        Kind::Loss => nodes.set_loss(i, None)?,
    }
    Ok(true)
}

/// Runs `f` on a thread inside the operator's namespace (if any).
fn in_ns<T: Send>(reach: &Reach, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = &reach.netns {
                ops::enter(ns)?;
            }
            Ok(f())
        })
        .join()
        .expect("namespace thread")
    })
}

/// After the last heal: waits (up to [`SETTLE`]) for each end-state
/// invariant, adding a violation for each that does not come to hold.
fn settle(
    nodes: &mut Nodes,
    reach: &Reach,
    lines: &mut Vec<Line>,
    report: &mut SoakReport,
    spans: &[FaultSpan],
    violations: &mut Vec<String>,
) -> Result<()> {
    let n = nodes.len();
    let deadline = Instant::now() + SETTLE;
    for i in 0..n {
        if !nodes.running(i) {
            violations.push(format!(
                "node {i} is not running after healing:\n{}",
                nodes.log_tail(i, 20)
            ));
        }
    }
    report.invariants.push("every node's process runs");
    // Every member live, the same station versions everywhere.
    let mut last = String::new();
    let healthy = loop {
        lines.extend(nodes.drain());
        let out = in_ns(reach, || {
            reach_tool(reach, &["members", "--to", &reach.ring[0]]).output()
        })??;
        if out.status.success() {
            break true;
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !healthy {
        violations.push(format!(
            "`ringhost members` did not exit 0 within {SETTLE:?} of healing:\n{last}"
        ));
    }
    report
        .invariants
        .push("members: all live, same station versions");
    // One particle: the last two laps are one walk in ring order.
    let from = now();
    let deadline = Instant::now() + STAGE;
    let one = loop {
        if let Some(l) = nodes.next_line(Duration::from_millis(100)) {
            lines.push(l);
        }
        lines.extend(nodes.drain());
        let mut recent: Vec<Tick> = lines
            .iter()
            .filter(|l| l.at >= from)
            .filter_map(Tick::of)
            .collect();
        recent.sort_by(|a, b| a.at.total_cmp(&b.at));
        let tail = &recent[recent.len().saturating_sub(2 * n + 1)..];
        if tail.len() == 2 * n + 1 && check::single_particle(tail, n).is_ok() {
            break Ok(());
        }
        if Instant::now() >= deadline && tail.len() == 2 * n + 1 {
            break check::single_particle(tail, n);
        }
        if Instant::now() >= deadline + STAGE {
            break Err(format!("only {} ticks after healing", recent.len()));
        }
    };
    if let Err(e) = one {
        violations.push(format!("exactly one particle: {e}"));
    }
    report
        .invariants
        .push("exactly one particle (two laps in ring order)");
    // Config writes and inputs, applied everywhere.
    let deadline = Instant::now() + STAGE;
    let problems = loop {
        lines.extend(nodes.drain());
        let applied = in_ns(reach, || config_state(reach, n))?;
        let problems = match applied {
            Ok(state) => config_problems(&report.ops, &state, spans, &mut report.inputs_applied),
            Err(e) => vec![format!("{e:#}")],
        };
        if problems.is_empty() || Instant::now() >= deadline {
            break problems;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    violations.extend(problems);
    report
        .invariants
        .push("acknowledged config writes applied everywhere");
    report
        .invariants
        .push("acknowledged inputs applied everywhere (unless their node was killed)");
    // Token blocklists: the same everywhere, following what was acknowledged.
    let deadline = Instant::now() + STAGE;
    let problems = loop {
        lines.extend(nodes.drain());
        let state = in_ns(reach, || {
            (0..n)
                .map(|i| tokens::blocked(reach, i))
                .collect::<Result<Vec<_>>>()
        })?;
        let problems = match state {
            Ok(state) => {
                let (problems, findings) = tokens::problems(&report.ops.tokens, &state, spans);
                report.tokens = findings;
                problems
            }
            Err(e) => vec![format!("{e:#}")],
        };
        if problems.is_empty() || Instant::now() >= deadline {
            break problems;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    violations.extend(problems);
    report.invariants.push(
        "tokens: one blocklist everywhere, no legitimate token blocked, the spread token blocked once due, manual blocks as last acknowledged",
    );
    Ok(())
}

fn reach_tool(reach: &Reach, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(&reach.bin);
    c.args(args)
        .env("RINGHOST_CLUSTER_KEY_FILE", &reach.key_file)
        .env("RINGHOST_ADMIN_TOKEN_FILE", &reach.token_file);
    c
}

/// Every node's applied config (`soak/…` and `in/…` keys).
fn config_state(reach: &Reach, n: usize) -> Result<Vec<BTreeMap<String, String>>> {
    (0..n)
        .map(|i| {
            let mut m: BTreeMap<String, String> =
                ops::applied(reach, i, "soak/")?.into_iter().collect();
            for d in 0..10 {
                m.extend(ops::applied(reach, i, &format!("in/{d}/"))?);
            }
            Ok(m)
        })
        .collect()
}

/// What is wrong with the applied config `state` (one map per node) given
/// the operations sent; counts the inputs found everywhere.
fn config_problems(
    ops: &OpLog,
    state: &[BTreeMap<String, String>],
    spans: &[FaultSpan],
    inputs_applied: &mut usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    for j in 0..ops::CONFIG_KEYS {
        let key = format!("soak/k{j}");
        let writes: Vec<&ops::Op> = ops.configs.iter().filter(|o| o.key == key).collect();
        let Some(last) = writes.iter().rposition(|o| o.acked) else {
            continue;
        };
        let allowed: Vec<&str> = writes[last..].iter().map(|o| o.value.as_str()).collect();
        for (i, m) in state.iter().enumerate() {
            let got = m.get(&key).map(String::as_str);
            if !got.is_some_and(|v| allowed.contains(&v)) {
                problems.push(format!(
                    "config {key}: node {i} has {got:?}, the last acknowledged write was {:?} (to node {} at {}; later unacknowledged: {:?})",
                    writes[last].value,
                    writes[last].node,
                    check::clock(writes[last].sent),
                    &allowed[1..]
                ));
            }
        }
    }
    *inputs_applied = 0;
    for op in ops.inputs.iter().filter(|o| o.acked) {
        let missing: Vec<usize> = (0..state.len())
            .filter(|&i| state[i].get(&op.key) != Some(&op.value))
            .collect();
        if missing.is_empty() {
            *inputs_applied += 1;
            continue;
        }
        // An inbox lives in memory until the node's next visit.
        let lost = spans.iter().any(|s| {
            (s.kind == "SIGKILL" || s.kind == "restart")
                && s.explains(&[op.node], op.sent, op.done + 10.0)
        });
        if !lost {
            problems.push(format!(
                "input {} (node {} at {}) missing at nodes {missing:?}",
                op.key,
                op.node,
                check::clock(op.sent)
            ));
        }
    }
    problems
}
