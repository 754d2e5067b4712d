//! Rings of real `ringhost` processes in network namespaces with shaped
//! links (tests/fleet). Needs root, iproute2, nftables, ethtool.
//!
//! - `cargo bench --bench fleet -- relay`: what the harness's switch adds
//!   by itself (round trips through it with no delay set, against a
//!   kernel bridge), and how close its delays come to the profile's.
//! - `cargo bench --bench fleet -- calm --profile dc --minutes 10
//!   [--hosts 11] [--stress 2]`: no fault injected; counts false failures
//!   (a member declared dead, a particle regenerated), and the lap p50/p99.
//!   `--stress K` saturates the CPUs with `stress-ng` processes started in
//!   K hosts. `--corosync defaults|MS` runs Corosync 3 instead (token
//!   timeout from its defaults, or MS) and counts its token losses and
//!   memberships formed.
//! - `cargo bench --bench fleet -- faults --profile dc [--rounds 5]`:
//!   SIGKILL (then restart), SIGSTOP (then SIGCONT), link down (`ip link
//!   set eth0 down` in the host, then up) and a clean restart, each on a
//!   different member per round; prints detection (fault -> the
//!   predecessor declares the member dead or gone), working ring again
//!   (fault -> the particle reaches the member's successor), rejoin (heal
//!   -> the member is spliced back) and false failures (any other member
//!   declared dead). Times come from the nodes' log timestamps (one
//!   machine, one clock).

#[path = "../tests/fleet/mod.rs"]
mod fleet;

#[path = "../tests/fleet/corosync.rs"]
mod corosync;

#[path = "fleet/coro.rs"]
mod coro;

use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use fleet::{Delay, Fleet, Profile, RING_PORT, Spec};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}: bad value")),
        None => Ok(default),
    }
}

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_ringhost"))
}

fn main() -> Result<()> {
    if let Some(why) = fleet::unavailable() {
        println!("skipped: the fleet bench {why}");
        return Ok(());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map(String::as_str)
    {
        Some("relay") => relay(),
        Some("calm") => calm(),
        Some("faults") => faults(),
        _ => {
            println!(
                "usage: cargo bench --bench fleet -- relay | calm [--profile P] [--minutes M] [--hosts N] [--stress K]"
            );
            Ok(())
        }
    }
}

/// Round trips (TCP connect) from the operator's host to host 0.
fn round_trips(fleet: &Fleet, n: usize) -> Result<Vec<Duration>> {
    let ns = &fleet.ctl.ns;
    let to: std::net::SocketAddr = fleet.hosts[0].at(RING_PORT).parse()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter()?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                v.push(t.elapsed());
            }
            v.sort();
            Ok(v)
        })
        .join()
        .expect("thread")
    })
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn relay() -> Result<()> {
    let n = 500;
    println!("round trips ctl -> host 0 (TCP connect), {n} each, ms p50 / p99");
    for (label, delay) in [
        ("no delay set", Delay::ZERO),
        ("lan 0.2 ± 0.05 one way", Delay::micros(200, 50)),
        ("dc 1 ± 0.3 one way", Delay::micros(1000, 300)),
    ] {
        let mut p = Profile::none();
        p.local = delay;
        p.remote = delay;
        let mut fleet = Fleet::build(bin(), &spec(1, p, vec![]))?;
        fleet.start_all()?;
        fleet.wait_formed(0.0, Duration::from_secs(20))?;
        let v = round_trips(&fleet, n)?;
        let expect = 2.0 * delay.mean.as_secs_f64() * 1e3;
        println!(
            "  {label:<24} {:>7.3} / {:>7.3}   (2 x mean = {expect:.3}; added {:.3} at p50)",
            pct(&v, 0.5),
            pct(&v, 0.99),
            pct(&v, 0.5) - expect
        );
    }
    Ok(())
}

fn spec(hosts: usize, profile: Profile, node_args: Vec<String>) -> Spec {
    Spec {
        hosts,
        profile,
        seed: 1,
        node_args,
    }
}

/// Starts `stress-ng --cpu 2` in host `i` (killed by the fleet's
/// namespace cleanup, and by `Hog`'s drop).
struct Hog(Child);

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn calm() -> Result<()> {
    let profile = Profile::by_name(&arg("--profile", "dc".to_string())?)?;
    let minutes: f64 = arg("--minutes", 1.0)?;
    let hosts: usize = arg("--hosts", 11)?;
    let stress: usize = arg("--stress", 0)?;
    let hold: u64 = arg("--delay-ms", 10)?;
    let extra: String = arg("--node-args", String::new())?;
    let mut node_args = vec!["--delay-ms".to_string(), hold.to_string()];
    node_args.extend(extra.split_whitespace().map(String::from));
    let corosync: String = arg("--corosync", String::new())?;
    let mut fleet = Fleet::build(bin(), &spec(hosts, profile.clone(), node_args))?;
    let hogs = |fleet: &Fleet| -> Result<Vec<Hog>> {
        let mut hogs = Vec::new();
        for k in 0..stress {
            let i = (k * hosts) / stress.max(1);
            hogs.push(Hog(fleet.hosts[i]
                .ns
                .command("stress-ng")
                .args(["--cpu", "2", "--quiet"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("stress-ng (Debian package stress-ng)")?));
        }
        Ok(hogs)
    };
    if !corosync.is_empty() {
        let token_ms = if corosync == "defaults" {
            None
        } else {
            Some(corosync.parse()?)
        };
        let c = coro::start(&fleet, token_ms)?;
        let hogs = hogs(&fleet)?;
        let (lost, memberships) = coro::calm(&c, Duration::from_secs_f64(minutes * 60.0));
        drop(hogs);
        println!(
            "Corosync 3 (token {corosync}), {hosts} hosts, {} over {minutes} min, stress on {stress} hosts: tokens lost {lost}, memberships formed {memberships} (false failures: every one)",
            profile.name
        );
        return Ok(());
    }
    let t0 = fleet::now();
    fleet.start_all()?;
    let formed = fleet.wait_formed(t0, Duration::from_secs(60))?;
    println!(
        "{hosts} hosts, profile {} ({:?}), formed in {:.0} ms",
        profile.name,
        profile,
        (formed - t0) * 1e3
    );
    let hogs = hogs(&fleet)?;
    let start = fleet::now();
    let end = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let (mut dead, mut regen, mut ticks) = (Vec::new(), 0u64, 0u64);
    let mut laps: Vec<f64> = Vec::new();
    let mut last_at_0: Option<f64> = None;
    while Instant::now() < end {
        let Some(l) = fleet.next_line(Duration::from_millis(200)) else {
            continue;
        };
        if l.at < start {
            continue;
        }
        if l.text.contains("declared dead") {
            println!("FALSE FAILURE: node {} {}", l.node, l.text);
            dead.push(l);
        } else if l.text.contains("regenerated") {
            println!("regenerated: node {} {}", l.node, l.text);
            regen += 1;
        } else if l.text.contains(" tick ") {
            ticks += 1;
            if l.node == 0 {
                if let Some(prev) = last_at_0 {
                    laps.push(l.at - prev);
                }
                last_at_0 = Some(l.at);
            }
        }
    }
    drop(hogs);
    laps.sort_by(f64::total_cmp);
    let q = |p: f64| {
        laps.get(((laps.len() as f64 - 1.0) * p).round() as usize)
            .map_or(f64::NAN, |v| v * 1e3)
    };
    println!(
        "{} over {minutes} min, stress on {stress} hosts: false failures {}, regenerations {regen}, ticks {ticks}, laps {} (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
        profile.name,
        dead.len(),
        laps.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    let (fwd, drop) = fleet.switch_counts();
    println!("switch: {fwd} frames forwarded, {drop} refused by a full port");
    if ticks == 0 {
        bail!("no tick seen");
    }
    Ok(())
}

/// A fault injected, then healed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Stop,
    LinkDown,
    Restart,
}

impl Fault {
    const ALL: [Fault; 4] = [Fault::Kill, Fault::Stop, Fault::LinkDown, Fault::Restart];

    fn label(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::Stop => "SIGSTOP",
            Fault::LinkDown => "link down",
            Fault::Restart => "restart",
        }
    }
}

/// Figures of one fault kind, in ms.
#[derive(Default)]
struct Figures {
    detect: Vec<f64>,
    working: Vec<f64>,
    rejoin: Vec<f64>,
    injected: u64,
    missed: u64,
    false_failures: u64,
    /// Corosync only: memberships formed with nobody joined or left.
    interruptions: u64,
}

fn member_of(text: &str) -> Option<usize> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("member="))
        .and_then(|v| v.parse().ok())
}

fn med_max(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!("{:.0} / {:.0}", s[s.len() / 2], s[s.len() - 1])
}

/// One round of `fault` on member `k`: inject, time detection and the
/// particle at the successor, heal, time the rejoin, let the ring settle.
fn round(fleet: &mut Fleet, fault: Fault, k: usize, f: &mut Figures) -> Result<()> {
    use nix::sys::signal::Signal;
    let n = fleet.len();
    let (pred, succ) = ((k + n - 1) % n, (k + 1) % n);
    let within = Duration::from_secs(15);
    let t0 = fleet::now();
    match fault {
        Fault::Kill => fleet.kill(k),
        Fault::Stop => fleet.signal(k, Signal::SIGSTOP)?,
        Fault::LinkDown => fleet.link(k, false)?,
        Fault::Restart => fleet.signal(k, Signal::SIGTERM)?,
    }
    f.injected += 1;
    let mut detected = None;
    let mut working = None;
    let deadline = Instant::now() + within;
    while (detected.is_none() || working.is_none()) && Instant::now() < deadline {
        let Some(l) = fleet.next_line(Duration::from_millis(100)) else {
            continue;
        };
        if l.at < t0 {
            continue;
        }
        let about = member_of(&l.text);
        // Member k's own log is its side of the fault (cut off, it finds
        // every other member unreachable): only the others can be wrong.
        if l.text.contains("declared dead") && about != Some(k) && l.node != k {
            f.false_failures += 1;
            println!(
                "  false failure during {} of {k}: node {} {}",
                fault.label(),
                l.node,
                l.text
            );
        }
        if detected.is_none()
            && l.node == pred
            && about == Some(k)
            && (l.text.contains("declared dead") || l.text.contains("left the ring"))
        {
            detected = Some(l.at);
        }
        if working.is_none() && l.node == succ && l.text.contains(" tick ") && detected.is_some() {
            working = Some(l.at);
        }
    }
    match (detected, working) {
        (Some(d), Some(w)) => {
            f.detect.push((d - t0) * 1e3);
            f.working.push((w - t0) * 1e3);
        }
        _ => f.missed += 1,
    }
    // Heal.
    let t1 = fleet::now();
    match fault {
        Fault::Kill => fleet.start(k)?,
        Fault::Stop => fleet.signal(k, Signal::SIGCONT)?,
        Fault::LinkDown => fleet.link(k, true)?,
        Fault::Restart => {
            // Wait for the clean exit, then start again.
            if !fleet.wait_exit(k, Duration::from_secs(10)) {
                println!("  node {k} did not stop within 10 s of SIGTERM");
                fleet.kill(k);
            }
            fleet.start(k)?;
        }
    }
    let rejoined = fleet.wait_line(t1, within, |l| {
        l.text.contains("spliced into the ring") && member_of(&l.text) == Some(k)
    });
    match rejoined {
        Some(l) => f.rejoin.push((l.at - t1) * 1e3),
        None => f.missed += 1,
    }
    // Settle: a lap or two with no failure reported.
    let settle = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < settle {
        if let Some(l) = fleet.next_line(Duration::from_millis(100))
            && l.text.contains("declared dead")
        {
            f.false_failures += 1;
            println!(
                "  false failure after healing {k}: node {} {}",
                l.node, l.text
            );
        }
    }
    Ok(())
}

fn print_table(title: &str, table: &[(Fault, Figures)]) {
    println!("{title}");
    println!(
        "  {:<10} {:>18} {:>18} {:>18} {:>9} {:>7} {:>6} {:>7}",
        "fault",
        "detect ms med/max",
        "working ms med/max",
        "rejoin ms med/max",
        "injected",
        "missed",
        "false",
        "reforms"
    );
    for (fault, f) in table {
        println!(
            "  {:<10} {:>18} {:>18} {:>18} {:>9} {:>7} {:>6} {:>7}",
            fault.label(),
            med_max(&f.detect),
            med_max(&f.working),
            med_max(&f.rejoin),
            f.injected,
            f.missed,
            f.false_failures,
            f.interruptions
        );
    }
}

fn faults() -> Result<()> {
    let profile = Profile::by_name(&arg("--profile", "dc".to_string())?)?;
    let rounds: usize = arg("--rounds", 5)?;
    let hosts: usize = arg("--hosts", 11)?;
    let hold: u64 = arg("--delay-ms", 10)?;
    let extra: String = arg("--node-args", String::new())?;
    let mut node_args = vec!["--delay-ms".to_string(), hold.to_string()];
    node_args.extend(extra.split_whitespace().map(String::from));
    let mut fleet = Fleet::build(bin(), &spec(hosts, profile.clone(), node_args))?;
    let t0 = fleet::now();
    fleet.start_all()?;
    fleet.wait_formed(t0, Duration::from_secs(60))?;
    println!(
        "ringhost: {hosts} hosts, profile {}, {rounds} rounds per fault, {hold} ms hold per stop",
        profile.name
    );
    let mut table = Vec::new();
    for (j, fault) in Fault::ALL.into_iter().enumerate() {
        let mut f = Figures::default();
        for r in 0..rounds {
            let k = 1 + (r * 3 + j) % (hosts - 1);
            round(&mut fleet, fault, k, &mut f)?;
        }
        table.push((fault, f));
    }
    print_table(&format!("ringhost, profile {}", profile.name), &table);
    for i in 0..hosts {
        fleet.kill(i);
    }
    let tokens: Vec<String> = arg("--corosync", "defaults,200".to_string())?
        .split(',')
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    for token in tokens {
        let token_ms: Option<u32> = if token == "defaults" {
            None
        } else {
            Some(token.parse()?)
        };
        let mut c = match coro::start(&fleet, token_ms) {
            Ok(c) => c,
            Err(e) => {
                println!(
                    "Corosync 3 (token {token}), profile {}: {e:#}",
                    profile.name
                );
                continue;
            }
        };
        let mut table = Vec::new();
        for (j, fault) in Fault::ALL.into_iter().enumerate() {
            let mut f = Figures::default();
            for r in 0..rounds {
                let k = 1 + (r * 3 + j) % (hosts - 1);
                coro::round(&mut c, &fleet, fault, k, &mut f)?;
            }
            table.push((fault, f));
        }
        print_table(
            &format!("Corosync 3 (token {token}), profile {}", profile.name),
            &table,
        );
    }
    Ok(())
}
