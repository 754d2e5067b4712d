//! The Corosync driver (tests/fleet/corosync.rs) on a throwaway fleet of its
//! own: host namespaces with `eth0` on a kernel bridge that lives in one more
//! namespace. Nothing is added to the root namespace; the namespaces, the
//! corosync processes and the files go away on drop, also on panic (the
//! files stay then, and the path is printed).
//!
//! Needs root and Corosync 3: without root the tests print "skipped: needs
//! root" and pass; without `corosync` they fail when `CI` is set, else skip.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use crate::corosync_driver::{CorosyncRing, EventKind, Host};

/// Whether this process may make namespaces and run corosync; says why not.
fn can_run() -> bool {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: needs root");
        return false;
    }
    let found = Command::new("corosync").arg("-v").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "corosync is not installed (CI installs it in .ci/run)"
        );
        println!("skipped: corosync is not installed (apt-get install corosync)");
    }
    found
}

/// Host namespaces `rhc<pid>-<n>-h<i>` with `eth0` = 10.77.1.<i+1>/16, all
/// on `br0` in `rhc<pid>-<n>-sw`, plus a scratch directory.
struct Fleet {
    prefix: String,
    hosts: Vec<Host>,
    dir: PathBuf,
    made: Vec<String>,
    /// Keep the files after a failure, to read the logs.
    keep: bool,
}

impl Fleet {
    fn new(n: usize) -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "rhc{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("ringhost-{prefix}"));
        let mut fleet = Self {
            prefix,
            hosts: Vec::new(),
            dir,
            made: Vec::new(),
            keep: false,
        };
        std::fs::create_dir_all(&fleet.dir)
            .with_context(|| format!("creating {}", fleet.dir.display()))?;
        let sw = fleet.netns("sw")?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = fleet.netns(&format!("h{i}"))?;
            let port = format!("v{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            let addr = Ipv4Addr::new(10, 77, 1, i as u8 + 1);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            fleet.hosts.push(Host { netns: ns, addr });
        }
        Ok(fleet)
    }

    /// Runs `test` on a new fleet of `n` hosts; keeps the files (and says
    /// where) when it fails.
    fn with<T>(n: usize, test: impl FnOnce(&Fleet) -> Result<T>) -> Result<T> {
        let mut fleet = Self::new(n)?;
        let result = test(&fleet);
        fleet.keep = result.is_err();
        result
    }

    fn netns(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.made.push(ns.clone());
        Ok(ns)
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("{e:#}");
            }
        }
        if self.keep || std::thread::panicking() {
            eprintln!("corosync files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits for `cond` over the ring's events, up to `within`.
fn wait_event(
    ring: &CorosyncRing,
    within: Duration,
    what: &str,
    cond: impl Fn(&crate::corosync_driver::Event) -> bool,
) -> Result<crate::corosync_driver::Event> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(e) = ring.events().into_iter().find(|e| cond(e)) {
            return Ok(e);
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "no {what} within {within:?}; logs in {}",
                ring.dir().display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn since(at: SystemTime, from: SystemTime) -> Duration {
    at.duration_since(from).unwrap_or_default()
}

/// Host `i`'s effective totem timers, as `corosync-cmapctl` reports them.
fn runtime_timers(fleet: &Fleet, i: usize) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &fleet.hosts[i].netns])
        .args(["corosync-cmapctl", "runtime.config.totem."])
        .output()
        .context("running corosync-cmapctl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let wanted = ["token", "consensus", "token_retransmit", "join", "merge"];
    Ok(text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("runtime.config.totem.")?;
            let (key, value) = rest.split_once(" (u32) = ")?;
            wanted.contains(&key).then(|| format!("{key} {value} ms"))
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// SIGKILL one host of a ring of `n`, measure, restart it, measure.
/// Returns (detection, working again, rejoin after restart), and prints the
/// effective timers.
fn kill_and_rejoin(
    n: usize,
    token_ms: Option<u32>,
    within: Duration,
) -> Result<(Duration, Duration, Duration)> {
    Fleet::with(n, |fleet| {
        let mut ring = CorosyncRing::start(fleet.dir(), &fleet.hosts, token_ms)?;
        let all: Vec<usize> = (0..n).collect();
        ring.wait_members(&all, within)?;
        println!(
            "corosync, {n} hosts, token {token_ms:?}: {}",
            runtime_timers(fleet, 0)?
        );

        let victim = n - 1;
        let survivors: Vec<usize> = (0..victim).collect();
        let killed_at = SystemTime::now();
        ring.kill(victim)?;
        ring.wait_members(&survivors, within)?;
        let after = |e: &crate::corosync_driver::Event| e.at >= killed_at && e.host != victim;
        let detected = wait_event(&ring, within, "token loss", |e| {
            after(e) && e.kind == EventKind::TokenLost
        })?;
        // Each survivor installs a ring of the survivors with the victim left;
        // the ring works again once the last of them has.
        let memberships = ring.memberships();
        let mut working = killed_at;
        for &host in &survivors {
            let (at, _, _) = memberships
                .iter()
                .find(|(at, h, m)| {
                    *at >= killed_at
                        && *h == host
                        && m.left.contains(&victim)
                        && m.members == survivors
                })
                .with_context(|| {
                    format!("host {host} logged no ring of {survivors:?} without {victim}")
                })?;
            working = working.max(*at);
        }

        let restarted_at = SystemTime::now();
        ring.restart(victim)?;
        ring.wait_members(&all, within)?;
        let rejoined = wait_event(&ring, within, "rejoin", |e| {
            e.at >= restarted_at
                && e.host == 0
                && matches!(&e.kind, EventKind::Membership(m) if m.joined.contains(&victim))
        })?;
        Ok((
            since(detected.at, killed_at),
            since(working, killed_at),
            since(rejoined.at, restarted_at),
        ))
    })
}

#[test]
fn corosync_ring_forms_again_without_a_killed_host_and_takes_it_back() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    let token_ms = 300;
    let (detect, working, rejoin) = kill_and_rejoin(3, Some(token_ms), Duration::from_secs(10))?;
    println!(
        "corosync, 3 hosts, token {token_ms} ms, SIGKILL: detection {detect:?}, \
         working ring again {working:?}, rejoin after restart {rejoin:?}"
    );
    // Totem cannot tell a fault before the token times out; consensus
    // (1.2 × token) follows, then the new ring.
    assert!(
        detect >= Duration::from_millis(u64::from(token_ms) / 2),
        "{detect:?}"
    );
    assert!(detect < Duration::from_secs(3), "{detect:?}");
    assert!(working >= detect, "{working:?} before {detect:?}");
    assert!(working < Duration::from_secs(5), "{working:?}");
    Ok(())
}

#[test]
fn corosync_instances_keep_their_membership_apart_from_a_stopped_one() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    Fleet::with(3, |fleet| {
        let ring = CorosyncRing::start(fleet.dir(), &fleet.hosts, Some(300))?;
        let within = Duration::from_secs(10);
        ring.wait_members(&[0, 1, 2], within)?;
        // Each namespace's IPC reaches its own instance: ask host 1's.
        let out = Command::new("ip")
            .args(["netns", "exec", &fleet.hosts[1].netns])
            .args(["corosync-quorumtool", "-l"])
            .output()
            .context("running corosync-quorumtool")?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("h1 (local)"), "{text}");

        ring.signal(2, Signal::SIGSTOP)?;
        ring.wait_members(&[0, 1], within)?;
        ring.signal(2, Signal::SIGCONT)?;
        ring.wait_members(&[0, 1, 2], within)?;
        Ok(())
    })
}

/// Corosync's defaults on 11 hosts: about 20 s per kill, so not in the
/// suite. `cargo test --test it corosync_defaults -- --ignored --nocapture`.
#[test]
#[ignore = "about a minute; measures Corosync's default timers on 11 hosts"]
fn corosync_defaults_on_eleven_hosts_measured() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    for (n, token) in [(3, None), (3, Some(300)), (11, None), (11, Some(200))] {
        let (detect, working, rejoin) = kill_and_rejoin(n, token, Duration::from_secs(40))?;
        println!(
            "corosync, {n} hosts, token {token:?}, SIGKILL: detection {detect:?}, \
             working ring again {working:?}, rejoin after restart {rejoin:?}"
        );
    }
    Ok(())
}

/// A link cut on a tuned ring: Corosync reforms the survivors' ring over and
/// over while the link comes back (about every consensus time, nothing
/// joined or left) and takes about 8 s to take the host back, so this is a
/// measurement, not part of the suite:
/// `cargo test --test it corosync_ring_takes -- --ignored --nocapture`.
#[test]
#[ignore = "about 13 s; measures Corosync's rejoin after a link cut"]
fn corosync_ring_takes_back_a_host_whose_link_was_down() -> Result<()> {
    if !can_run() {
        return Ok(());
    }
    Fleet::with(3, |fleet| {
        let ring = CorosyncRing::start(fleet.dir(), &fleet.hosts, Some(300))?;
        let within = Duration::from_secs(40);
        ring.wait_members(&[0, 1, 2], within)?;
        let cut = &fleet.hosts[2].netns;
        let down_at = SystemTime::now();
        ip(&["-n", cut, "link", "set", "eth0", "down"])?;
        ring.wait_members(&[0, 1], within)?;
        // The cut-off host goes on alone (and keeps running).
        ring.wait_members(&[2], within)?;
        // A cut lasts a while (this is the fault, not a wait): long enough for
        // knet to declare the link dead on both sides.
        std::thread::sleep(Duration::from_secs(3));
        let up_at = SystemTime::now();
        ip(&["-n", cut, "link", "set", "eth0", "up"])?;
        ring.wait_members(&[0, 1, 2], within)?;
        let left = wait_event(&ring, within, "ring without host 2", |e| {
            e.at >= down_at
                && e.host == 0
                && matches!(&e.kind, EventKind::Membership(m) if m.left == [2])
        })?;
        let back = wait_event(&ring, within, "host 2 back", |e| {
            e.at >= up_at
                && e.host == 0
                && matches!(&e.kind, EventKind::Membership(m) if m.members == [0, 1, 2])
        })?;
        let memberships = ring.memberships();
        let churn = |from: SystemTime, to: SystemTime| {
            memberships
                .iter()
                .filter(|(at, host, m)| {
                    *host == 0 && *at > from && *at < to && m.joined.is_empty() && m.left.is_empty()
                })
                .count()
        };
        let (churn_cut, churn_up) = (churn(left.at, up_at), churn(up_at, back.at));
        println!(
            "corosync, 3 hosts, token 300 ms, eth0 down: working ring again {:?}, \
         rejoin after link up {:?}; host 0 formed {churn_cut} rings without a change \
         while cut, {churn_up} after link up",
            since(left.at, down_at),
            since(back.at, up_at)
        );
        Ok(())
    })
}
