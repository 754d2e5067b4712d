//! The `faults` and `calm` runs on Corosync 3, on the same hosts, with the
//! same injector as ringhost's (see `tests/fleet/corosync.rs` for what its
//! log lines mean and how instances are kept apart).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use nix::sys::signal::Signal;

use super::corosync::{CorosyncRing, EventKind, Host};
use super::fleet::Fleet;
use super::{Fault, Figures};

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Starts Corosync on every host of `fleet` (whose ringhost nodes must be
/// stopped) and waits for one membership of all.
pub fn start(fleet: &Fleet, token_ms: Option<u32>) -> Result<CorosyncRing> {
    let hosts: Vec<Host> = fleet
        .hosts
        .iter()
        .map(|h| Host {
            netns: h.ns.name().to_owned(),
            addr: h.addr,
        })
        .collect();
    let dir = fleet.dir().join(format!(
        "corosync-{}",
        token_ms.map_or("defaults".into(), |t| t.to_string())
    ));
    std::fs::create_dir_all(&dir)?;
    let ring = CorosyncRing::start(&dir, &hosts, token_ms)?;
    let all: Vec<usize> = (0..hosts.len()).collect();
    ring.wait_members(&all, Duration::from_secs(90))?;
    Ok(ring)
}

/// One round of `fault` on host `k`, as [`super::round`] does for
/// ringhost: detection is a survivor's "A processor failed" (token lost),
/// working again its next membership without `k`, rejoin a membership of
/// all after healing. A membership in which a host other than `k` left is
/// a false failure; one in which nobody joined or left is counted as an
/// interruption (a round in which the ring delivered nothing).
pub fn round(
    c: &mut CorosyncRing,
    fleet: &Fleet,
    fault: Fault,
    k: usize,
    f: &mut Figures,
) -> Result<()> {
    let n = fleet.len();
    let within = Duration::from_secs(45);
    let since = SystemTime::now();
    let t0 = secs(since);
    match fault {
        Fault::Kill => c.kill(k)?,
        Fault::Stop => c.signal(k, Signal::SIGSTOP)?,
        Fault::LinkDown => fleet.link(k, false)?,
        Fault::Restart => c.signal(k, Signal::SIGTERM)?,
    }
    f.injected += 1;
    let (mut detected, mut working) = (None, None);
    let deadline = Instant::now() + within;
    while working.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        for e in c
            .events()
            .into_iter()
            .filter(|e| e.at >= since && e.host != k)
        {
            match &e.kind {
                EventKind::TokenLost if detected.is_none() => detected = Some(secs(e.at)),
                EventKind::Membership(m) if working.is_none() && !m.members.contains(&k) => {
                    working = Some(secs(e.at));
                }
                _ => {}
            }
        }
    }
    match (detected, working) {
        (Some(d), Some(w)) => {
            f.detect.push((d - t0) * 1e3);
            f.working.push((w - t0) * 1e3);
        }
        (None, Some(w)) => {
            // A clean leave forms the new ring with no token lost.
            f.detect.push((w - t0) * 1e3);
            f.working.push((w - t0) * 1e3);
        }
        _ => f.missed += 1,
    }
    let healed = SystemTime::now();
    let t1 = secs(healed);
    match fault {
        Fault::Kill => c.restart(k)?,
        Fault::Stop => c.signal(k, Signal::SIGCONT)?,
        Fault::LinkDown => fleet.link(k, true)?,
        Fault::Restart => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.pid(k).is_some_and(|p| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), None).is_ok()
            }) && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            c.restart(k)?;
        }
    }
    let mut rejoined = None;
    let deadline = Instant::now() + within;
    while rejoined.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        rejoined = c
            .memberships()
            .into_iter()
            .find(|(at, host, m)| *at >= healed && *host != k && m.members.len() == n)
            .map(|(at, _, _)| secs(at));
    }
    match rejoined {
        Some(at) => f.rejoin.push((at - t1) * 1e3),
        None => f.missed += 1,
    }
    let all: Vec<usize> = (0..n).collect();
    let _ = c.wait_members(&all, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    for (_, host, m) in c
        .memberships()
        .into_iter()
        .filter(|(at, _, _)| *at >= since)
    {
        if host == k {
            continue;
        }
        if m.left.iter().any(|&l| l != k) {
            f.false_failures += 1;
        } else if m.joined.is_empty() && m.left.is_empty() {
            f.interruptions += 1;
        }
    }
    Ok(())
}

/// Counts, over `window`, token losses and memberships on a Corosync ring
/// with nothing injected: each is a false failure (or an interruption).
pub fn calm(c: &CorosyncRing, window: Duration) -> (usize, usize) {
    let since = SystemTime::now();
    std::thread::sleep(window);
    let events: Vec<_> = c.events().into_iter().filter(|e| e.at >= since).collect();
    let lost = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TokenLost))
        .count();
    let memberships = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Membership(_)))
        .count();
    (lost, memberships)
}
