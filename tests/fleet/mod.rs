//! Test hosts in network namespaces: a fleet of `ringhost` nodes on one
//! machine whose links have real latency, loss and bandwidth.
//!
//! Used by the integration tests (`tests/it/fleet.rs`, the chaos soak)
//! and the benches (`benches/fleet.rs`), included as a module with
//! `#[path]`. Needs root, iproute2, nftables and ethtool; callers skip
//! with [`unavailable`]'s reason when it cannot run.
//!
//! Layout of one fleet (names carry this process's id, so parallel tests
//! and leftovers of a killed run never collide; [`netns::sweep_stale`]
//! removes the latter):
//!
//! ```text
//!   rhf{pid}-{k}-h0 … h{n-1}     one namespace per host: eth0 = 10.77.{dc+1}.{i+1}/16
//!   rhf{pid}-{k}-ctl             the operator's machine: eth0 = 10.77.0.250/16
//!   rhf{pid}-{k}-sw              the switch: ports p0 … p{n-1}, pctl (veth peers)
//! ```
//!
//! Nothing is added to the root namespace. Shaping, per [`Profile`]:
//! delay and jitter in the [`switch::Switch`]; loss with an nftables rule
//! in every host's output chain (`numgen random mod 1000 < N drop`: the
//! kernel drops the packet, TCP retransmits it); bandwidth with a `tbf`
//! qdisc on every host's `eth0`. Offloads (TSO/GSO/checksum) are off on
//! the hosts' interfaces so the switch sees wire-sized, checksummed
//! frames.
//!
//! Faults: [`Fleet::kill`], [`Fleet::signal`] (SIGSTOP/SIGCONT),
//! [`Fleet::restart`], [`Fleet::link`] (`ip link set eth0 down|up` in a
//! host), [`Fleet::cut`] (drop everything between two hosts, both ways)
//! and [`Fleet::set_loss`] (a loss burst).

#![allow(dead_code)]

pub mod netns;
mod packet;
pub mod profile;
pub mod soak;
pub mod switch;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub use netns::{Netns, unavailable};
pub use profile::{Delay, Profile};
use switch::{Port, Switch};

/// Every namespace of this harness starts with this.
pub const PREFIX: &str = "rhf";

/// The ring port of every node (each host has its own address).
pub const RING_PORT: u16 = 3000;
/// The admin port of every node, on the host's address.
pub const ADMIN_PORT: u16 = 4000;

/// One log line of a node, with its timestamp.
#[derive(Debug, Clone)]
pub struct Line {
    /// Which host logged it.
    pub node: usize,
    /// Its timestamp, seconds since the Unix epoch.
    pub at: f64,
    /// The whole line.
    pub text: String,
}

/// One test host.
#[derive(Debug)]
pub struct Host {
    /// Its namespace.
    pub ns: Netns,
    /// Its address on the fleet's network.
    pub addr: Ipv4Addr,
    /// Its member name in the ring file (`dc2/prod/0`).
    pub name: String,
    /// Its datacentre (0-based).
    pub dc: usize,
}

impl Host {
    /// `addr:port`.
    pub fn at(&self, port: u16) -> String {
        format!("{}:{port}", self.addr)
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Number of hosts (one node each).
    pub hosts: usize,
    /// How links are shaped.
    pub profile: Profile,
    /// Seeds the switch's jitter.
    pub seed: u64,
    /// Extra arguments for every node (`--delay-ms 10` …).
    pub node_args: Vec<String>,
}

/// A running fleet. Dropping it kills every node (by PID), stops the
/// switch and removes every namespace, also when a test panics.
pub struct Fleet {
    nodes: Vec<Option<Child>>,
    switch: Option<Switch>,
    /// The hosts, by member index.
    pub hosts: Vec<Host>,
    /// The operator's host (tools, clients, one-by-one uploads).
    pub ctl: Host,
    /// The switch's namespace.
    pub switch_ns: Netns,
    /// The shaping in force.
    pub profile: Profile,
    dir: PathBuf,
    bin: PathBuf,
    node_args: Vec<String>,
    tx: mpsc::Sender<Line>,
    rx: mpsc::Receiver<Line>,
}

static FLEETS: AtomicU32 = AtomicU32::new(0);

impl Fleet {
    /// Makes the namespaces, the switch and the shaping; starts no node
    /// (see [`Fleet::start_all`]). `bin` is the `ringhost` binary.
    ///
    /// # Errors
    /// When a namespace, link, rule or qdisc cannot be made (the partial
    /// fleet is removed before returning).
    pub fn build(bin: &Path, spec: &Spec) -> Result<Fleet> {
        if let Some(why) = unavailable() {
            bail!("the fleet harness cannot run here: {why}");
        }
        netns::sweep_stale(PREFIX);
        let k = FLEETS.fetch_add(1, Ordering::SeqCst);
        let base = format!("{PREFIX}{}-{k}", std::process::id());
        let dir = std::env::temp_dir().join(&base);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let switch_ns = Netns::add(&format!("{base}-sw"))?;
        let profile = spec.profile.clone();
        let mut per_dc = vec![0usize; profile.dcs.max(1)];
        let mut hosts = Vec::with_capacity(spec.hosts);
        let mut ports = Vec::with_capacity(spec.hosts + 1);
        for i in 0..spec.hosts {
            let dc = profile.dc_of(i);
            let name = format!("dc{}/prod/{}", dc + 1, per_dc[dc]);
            per_dc[dc] += 1;
            let addr = Ipv4Addr::new(10, 77, u8::try_from(dc + 1)?, u8::try_from(i + 1)?);
            let mac = [0x02, 0x77, 0, 0, 0, u8::try_from(i)?];
            let ns = Netns::add(&format!("{base}-h{i}"))?;
            let host = Host { ns, addr, name, dc };
            plug(&host, &switch_ns, &format!("p{i}"), mac, &profile)?;
            ports.push(Port {
                ifname: format!("p{i}"),
                mac,
                dc,
            });
            hosts.push(host);
        }
        let ctl = Host {
            ns: Netns::add(&format!("{base}-ctl"))?,
            addr: Ipv4Addr::new(10, 77, 0, 250),
            name: "ctl".into(),
            dc: 0,
        };
        let ctl_mac = [0x02, 0x77, 0, 0, 0xff, 0xfa];
        plug(&ctl, &switch_ns, "pctl", ctl_mac, &profile)?;
        ports.push(Port {
            ifname: "pctl".into(),
            mac: ctl_mac,
            dc: 0,
        });
        let switch = Switch::start(&switch_ns, ports, profile.local, profile.remote, spec.seed)?;
        let ring: String = hosts
            .iter()
            .map(|h| format!("{} = \"{}\"\n", h.name, h.at(RING_PORT)))
            .collect();
        fs::write(dir.join("ring.txt"), ring)?;
        let key = dir.join("cluster.key");
        let out = Command::new(bin)
            .args(["keygen", "--cluster", "--out"])
            .arg(&key)
            .output()
            .context("ringhost keygen")?;
        if !out.status.success() {
            bail!("keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
        fs::write(dir.join("admin.token"), "fleet-admin-token\n")?;
        let (tx, rx) = mpsc::channel();
        Ok(Fleet {
            nodes: (0..spec.hosts).map(|_| None).collect(),
            switch: Some(switch),
            hosts,
            ctl,
            switch_ns,
            profile,
            dir,
            bin: bin.to_owned(),
            node_args: spec.node_args.clone(),
            tx,
            rx,
        })
    }

    /// The fleet's working directory (ring file, keys, node logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster key file every node and tool uses.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("cluster.key")
    }

    /// The ring file.
    pub fn ring_file(&self) -> PathBuf {
        self.dir.join("ring.txt")
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Starts every node.
    ///
    /// # Errors
    /// When a node cannot be spawned.
    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.hosts.len() {
            self.start(i)?;
        }
        Ok(())
    }

    /// Starts node `i` in its host (after a kill: a restart).
    ///
    /// # Errors
    /// When it cannot be spawned.
    pub fn start(&mut self, i: usize) -> Result<()> {
        if self.nodes[i].is_some() {
            bail!("node {i} is already running");
        }
        let h = &self.hosts[i];
        let mut command = h.ns.command(self.bin.to_str().context("binary path")?);
        node_flags(&mut command, &self.dir, &self.node_args)
            .arg("--ring")
            .arg(self.ring_file())
            .args(["--name", &h.name])
            .args(["--admin", &h.at(ADMIN_PORT)]);
        let log = self.dir.join(format!("node-{i}.log"));
        let child = spawn_logged(&mut command, i, &log, &self.tx)?;
        self.nodes[i] = Some(child);
        Ok(())
    }

    /// The PID of node `i`, if running.
    pub fn pid(&self, i: usize) -> Option<Pid> {
        self.nodes[i]
            .as_ref()
            .map(|c| Pid::from_raw(i32::try_from(c.id()).unwrap_or(0)))
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to node `i` (SIGSTOP, SIGCONT…).
    ///
    /// # Errors
    /// When it is not running.
    pub fn signal(&self, i: usize, sig: Signal) -> Result<()> {
        let pid = self
            .pid(i)
            .with_context(|| format!("node {i} is not running"))?;
        nix::sys::signal::kill(pid, sig)?;
        Ok(())
    }

    /// Waits up to `within` for node `i` to exit by itself (after a
    /// SIGTERM), reaping it; false if it still runs.
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let Some(c) = self.nodes[i].as_mut() else {
                return true;
            };
            if let Ok(Some(_)) = c.try_wait() {
                self.nodes[i] = None;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills node `i` and starts it again.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.start(i)
    }

    /// Sets host `i`'s interface down or up (`ip link set eth0 down|up`).
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn link(&self, i: usize, up: bool) -> Result<()> {
        let h = &self.hosts[i];
        // The address, the qdisc and the nftables table survive a down/up;
        // the connected route comes back with the link.
        h.ns.ip(&["link", "set", "eth0", if up { "up" } else { "down" }])
    }

    /// Drops (or, with `cut` false, stops dropping) every packet between
    /// hosts `a` and `b`, both ways.
    ///
    /// # Errors
    /// When nft fails.
    pub fn cut(&self, a: usize, b: usize, cut: bool) -> Result<()> {
        let verb = if cut { "add" } else { "delete" };
        for (x, y) in [(a, b), (b, a)] {
            self.hosts[x].ns.nft(&format!(
                "{verb} element inet rhf cut {{ {} }}\n",
                self.hosts[y].addr
            ))?;
        }
        Ok(())
    }

    /// Sets the loss at host `i`'s output to `per_mille` / 1000 of packets
    /// (a burst: set it back to the profile's afterwards).
    ///
    /// # Errors
    /// When nft fails.
    pub fn set_loss(&self, i: usize, per_mille: u32) -> Result<()> {
        self.hosts[i].ns.nft(&loss_script(per_mille))
    }

    /// Changes the switch's delays from now on.
    pub fn set_delays(&self, local: Delay, remote: Delay) {
        if let Some(s) = &self.switch {
            s.set_delays(local, remote);
        }
    }

    /// Frames the switch delivered and dropped so far.
    pub fn switch_counts(&self) -> (u64, u64) {
        self.switch.as_ref().map_or((0, 0), |s| {
            (
                s.stats.forwarded.load(Ordering::Relaxed),
                s.stats.dropped.load(Ordering::Relaxed),
            )
        })
    }

    /// A `ringhost` tool command run on the operator's host, with the
    /// cluster key (`status`, `members`, `push`…).
    pub fn tool(&self, args: &[&str]) -> Command {
        let mut c = self.ctl.ns.command(self.bin.to_str().unwrap_or("ringhost"));
        c.args(args);
        // The global flag must follow a subcommand; the variable need not.
        c.env("RINGHOST_CLUSTER_KEY_FILE", self.key_file());
        c.env("RINGHOST_ADMIN_TOKEN_FILE", self.dir.join("admin.token"));
        c
    }

    /// The next log line (any node), waiting at most `within`.
    pub fn next_line(&self, within: Duration) -> Option<Line> {
        self.rx.recv_timeout(within).ok()
    }

    /// Waits for a line at or after `since` (epoch seconds) matching
    /// `pred`; lines before it are dropped. `None` at the deadline.
    pub fn wait_line(
        &self,
        since: f64,
        within: Duration,
        mut pred: impl FnMut(&Line) -> bool,
    ) -> Option<Line> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.rx.recv_timeout(left).ok()?;
            if line.at >= since && pred(&line) {
                return Some(line);
            }
        }
    }

    /// Every line logged so far that nobody took yet.
    pub fn drain(&self) -> Vec<Line> {
        self.rx.try_iter().collect()
    }

    /// Waits until every running node has seen the particle, counting
    /// from `since`: a formed ring. Returns when the last one ticked.
    ///
    /// # Errors
    /// At the deadline, naming the nodes not seen.
    pub fn wait_formed(&self, since: f64, within: Duration) -> Result<f64> {
        let mut left: std::collections::BTreeSet<usize> = (0..self.hosts.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        let deadline = Instant::now() + within;
        let mut last = since;
        while !left.is_empty() {
            let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
                bail!(
                    "the ring did not form within {within:?}: no tick yet at {left:?} (logs in {})",
                    self.dir.display()
                );
            };
            if let Ok(l) = self.rx.recv_timeout(wait)
                && l.at >= since
                && l.text.contains(" tick ")
                && left.remove(&l.node)
            {
                last = l.at;
            }
        }
        Ok(last)
    }

    /// The last `n` lines node `i` logged (for failure messages).
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let text = fs::read_to_string(self.dir.join(format!("node-{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        self.switch.take();
        // The namespaces go with their fields; the directory last, unless
        // RINGHOST_FLEET_KEEP is set (to read the nodes' logs afterwards).
        if std::env::var_os("RINGHOST_FLEET_KEEP").is_some() {
            eprintln!("fleet: kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Connects `host` to the switch: a veth pair made directly in the two
/// namespaces, addressed, offloads off, then the host's nftables table and
/// qdisc.
fn plug(host: &Host, switch: &Netns, port: &str, mac: [u8; 6], p: &Profile) -> Result<()> {
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let out = Command::new("ip")
        .args([
            "link",
            "add",
            "eth0",
            "address",
            &mac,
            "netns",
            host.ns.name(),
        ])
        .args(["type", "veth", "peer", "name", port, "netns", switch.name()])
        .output()?;
    if !out.status.success() {
        bail!(
            "making the veth pair of {}: {}",
            host.ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let cidr = format!("{}/16", host.addr);
    host.ns.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
    host.ns.exec(
        "ethtool",
        &[
            "-K", "eth0", "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ],
    )?;
    host.ns
        .exec("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
    host.ns.ip(&["link", "set", "eth0", "up"])?;
    switch.ip(&["link", "set", port, "up"])?;
    host.ns.nft(&format!(
        "table inet rhf {{
           set cut {{ type ipv4_addr; }}
           chain loss {{ }}
           chain shape {{ ip daddr @cut drop; jump loss; }}
           chain output {{ type filter hook output priority 0; policy accept; oifname \"eth0\" jump shape; }}
           chain input {{ type filter hook input priority 0; policy accept; iifname \"eth0\" ip saddr @cut drop; }}
         }}\n{}",
        loss_script(p.loss_per_mille)
    ))?;
    if let Some(rate) = p.rate_mbit {
        host.ns.exec(
            "tc",
            &[
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                &format!("{rate}mbit"),
                "burst",
                "64kb",
                "latency",
                "100ms",
            ],
        )?;
    }
    Ok(())
}

/// The nft commands that set a host's loss to `per_mille`.
fn loss_script(per_mille: u32) -> String {
    let mut s = String::from("flush chain inet rhf loss\n");
    if per_mille >= 1000 {
        s.push_str("add rule inet rhf loss drop\n");
    } else if per_mille > 0 {
        s.push_str(&format!(
            "add rule inet rhf loss numgen random mod 1000 < {per_mille} drop\n"
        ));
    }
    s
}

/// Adds what every fleet node starts with, in a host or on loopback: the
/// cluster key and admin token files in `dir` (`cluster.key`,
/// `admin.token`), no compile cache, the run's `node_args`, info logs and
/// no stdin.
pub fn node_flags<'a>(
    command: &'a mut Command,
    dir: &Path,
    node_args: &[String],
) -> &'a mut Command {
    command
        .arg("--cluster-key-file")
        .arg(dir.join("cluster.key"))
        .arg("--admin-token-file")
        .arg(dir.join("admin.token"))
        .args(["--cache-dir", "none"])
        .args(node_args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
}

/// Spawns `command` (node `node`) with its stdout and stderr read line
/// by line on threads of their own: each line is appended to `log` and
/// sent, with its timestamp, on `tx`.
///
/// # Errors
/// When it cannot be spawned or the log file opened.
pub fn spawn_logged(
    command: &mut Command,
    node: usize,
    log: &Path,
    tx: &mpsc::Sender<Line>,
) -> Result<Child> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting node {node}"))?;
    let log = fs::OpenOptions::new().create(true).append(true).open(log)?;
    for out in [
        Box::new(child.stdout.take().context("stdout")?) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().context("stderr")?),
    ] {
        let tx = tx.clone();
        let mut log = log.try_clone()?;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(text) = line else { break };
                let _ = writeln!(log, "{text}");
                let at = line_time(&text).unwrap_or_else(now);
                if tx.send(Line { node, at, text }).is_err() {
                    break;
                }
            }
        });
    }
    Ok(child)
}

/// Now, in seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The RFC 3339 timestamp of a log line (`2026-12-01T02:03:04.123456Z`),
/// in seconds since the Unix epoch.
pub fn line_time(line: &str) -> Option<f64> {
    let t = line
        .split_whitespace()
        .find(|w| w.ends_with('Z') && w.contains('T'))?;
    let (date, clock) = t.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut c = clock.split(':');
    let h: f64 = c.next()?.parse().ok()?;
    let min: f64 = c.next()?.parse().ok()?;
    let s: f64 = c.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}
