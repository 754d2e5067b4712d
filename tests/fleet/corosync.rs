//! A Corosync 3 ring on a fleet's network namespaces, for measuring Corosync
//! beside ringhost with the same faults (issue 11).
//!
//! Owns: one `corosync -f` child per host (started with `ip netns exec`), its
//! config, state, lock and log files under one directory, and reading the
//! membership changes back out of the logs. Does not own the namespaces, the
//! links or their shaping (the fleet harness makes those), nor the faults
//! other than signals and restarts (a link cut is `ip link set eth0 down` in
//! the host's namespace, done by the harness).
//!
//! This file is included with `#[path]` by benches and by `tests/it`; each
//! uses a part of it, hence the `dead_code` allowance below.
//!
//! # What each instance gets
//!
//! - `hostN/corosync.conf`: the nodelist of all hosts (node id = index + 1,
//!   `ring0_addr` = the host's address), knet over UDP (port 5405 in each
//!   namespace), no crypto, votequorum, logging to `hostN/corosync.log` with
//!   `timestamp: hires` (milliseconds), `state_dir: hostN/state`.
//! - A private `/run`: `corosync` takes an `flock` on the hard-coded
//!   `/var/run/corosync.pid`, and a second instance on the same machine exits
//!   with status 18, "Another Corosync instance is already running." (checked:
//!   also when the two are in different network namespaces). `ip netns exec`
//!   already runs its command in a mount namespace of its own (a slave of the
//!   root one), so the command binds `hostN/run` over `/var/run` there and
//!   then execs corosync: nothing changes in the root mount namespace, a
//!   system corosync (Debian's package starts one) does not collide, and the
//!   child's PID is corosync's own.
//! - IPC (`corosync-quorumtool`, `corosync-cmapctl`): libqb's server sockets
//!   are abstract unix sockets, which belong to a network namespace, so every
//!   namespace has its own `cmap`, `quorum`, `cpg` servers without collision;
//!   `ip netns exec NS corosync-quorumtool -l` talks to that host's instance.
//!   We pick `qb_ipc_type: socket` and `blackbox: off` because libqb's default
//!   shared-memory ring buffers and flight recorder live as files in
//!   `/dev/shm` (named by PID), which a SIGKILLed instance leaves behind.
//! - State: each instance writes `ringid_<nodeid>` into its own `state_dir`.
//! - `TZ=UTC` so the log's timestamps (which have no year and no zone) parse
//!   into a `SystemTime` comparable with the caller's clock readings.
//! - knet pings every sixteenth of the token timeout (at least every
//!   25 ms) instead of every quarter ([`knet_ping`]; the ping timeout stays
//!   the default half), see "Loss" below.
//! - `move_to_root_cgroup: no` keeps the children in the caller's cgroup.
//!   Otherwise Corosync's defaults stand, including `sched_rr` (each instance
//!   runs SCHED_RR at priority 99, as it does in production).
//!
//! # Timers (corosync 3.1.7, as `corosync-cmapctl runtime.config.totem.` reports them)
//!
//! Corosync's real token timeout is `token + (N − 2) × token_coefficient`
//! for N ≥ 3 nodes (defaults: `token` 3000 ms, `token_coefficient` 650 ms),
//! and `consensus` defaults to 1.2 × that:
//!
//! | ring                              | token   | consensus | token_retransmit |
//! |-----------------------------------|---------|-----------|------------------|
//! | defaults, N = 3                   | 3650 ms | 4380 ms   | 869 ms           |
//! | defaults, N = 11                  | 8850 ms | 10620 ms  | 2107 ms          |
//! | plain `token: 300`, N = 3         | 950 ms  | 1140 ms   | 226 ms           |
//! | `Some(300)` here, N = 3           | 300 ms  | 360 ms    | 71 ms            |
//! | `Some(200)` here, N = 11          | 200 ms  | 240 ms    | 47 ms            |
//!
//! So a tuned ring ([`CorosyncRing::start`] with `Some(ms)`) also sets
//! `token_coefficient: 0`: the token timeout is then exactly `ms` for any N.
//!
//! # Detection, a working ring again, rejoin
//!
//! Totem notices a fault only as a token that does not come back:
//! - **Detection** is a survivor's `A processor failed, forming new
//!   configuration: token timed out (T ms), waiting C ms for consensus.`
//!   ([`EventKind::TokenLost`]), one token timeout after the last token it
//!   saw (so at most `token` after the fault).
//! - **A working ring again** is `A new membership (R) was formed. Members
//!   left: …` on the survivors ([`EventKind::Membership`] with the victim in
//!   `left`; "Completed service synchronization" follows within a few ms).
//!   It comes `consensus` after detection: the membership round waits that
//!   long for the processor that is gone.
//! - **Rejoin** is a membership with the victim in `joined`, logged by the
//!   old members; the returning process first logs a ring of itself alone,
//!   then one where all the others joined. It waits for knet to see the link
//!   up (its ping interval is derived from the token), then a merge.
//!
//! Measured on this kind of machine (2 cores, a kernel bridge, no shaping),
//! SIGKILL of one host, then a restart
//! (`cargo test --test it corosync_defaults -- --ignored --nocapture`,
//! three runs):
//!
//! | ring                       | detection | working again | rejoin after restart |
//! |----------------------------|-----------|---------------|----------------------|
//! | defaults, N = 3            | 3.64 s    | 8.02 s        | 2.9 s                |
//! | defaults, N = 11           | 8.84 s    | 19.48 s       | 7.0–9.5 s            |
//! | `Some(300)`, N = 3         | 0.29 s    | 0.65 s        | 1.0 s                |
//! | `Some(200)`, N = 11        | 0.19 s    | 0.45 s        | 1.05 s               |
//!
//! A link cut (`ip link set eth0 down` in one host of `Some(300)`, N = 3,
//! held 3 s; `cargo test --test it corosync_ring_takes -- --ignored
//! --nocapture`, three runs): the survivors' ring works again after 0.66 s,
//! and the cut host goes on as a ring of one. After `eth0` comes back up,
//! the survivors form a new ring about every 0.7 s with nobody joined or
//! left (11 times; each is a membership round in which the ring delivers
//! nothing) and take the host back only after 7.8 s. Such rounds show as
//! [`EventKind::Membership`] with `joined` and `left` empty: count them as
//! interruptions. When the link came back within a few hundred ms of the
//! cut, the rejoin took 0.2 s once and 9 s with 19 such rounds twice.

//!
//! # Loss
//!
//! knet declares a link down when no pong came back within
//! `knet_ping_timeout`, by default `token / knet_pong_count` = half the
//! token timeout, with a ping every `token / (2 × knet_pong_count)`
//! (`runtime.config.totem.interface.0.knet_ping_interval` 2212 ms and
//! `knet_ping_timeout` 4425 ms on 11 nodes with the defaults). That is two
//! pings per timeout, and the second one's pong comes back a round trip
//! (and up to a heartbeat tick) after the first ping's deadline minus one
//! interval: on the `wan` profile (2 % loss at each sender, so about 4 % of
//! pings get no pong; 40 ms round trips) a single lost ping or pong takes
//! the link down, and it comes back up only after `knet_pong_count` pongs,
//! about 4.4 s later. Across 110 directed links that is a link down
//! somewhere every second or two, e.g. (2026-12-02, the driver's
//! defaults before this change):
//!
//! ```text
//! 00:55:18.983 [KNET  ] link: host: 4 link: 0 is down
//! 00:55:23.983 [KNET  ] rx: host: 4 link: 0 is up
//! 00:55:18.835 [TOTEM ] Token has not been received in 9723 ms
//! 00:55:34.191 [TOTEM ] Token has not been received in 25081 ms
//! ```
//!
//! Totem's messages to a host whose link is down are dropped, so the token
//! or a commit token is lost, the membership round starts over, and in
//! 90 s the 11 instances never installed a membership of all (once one did
//! after 33 s and lost a member again 22 s later). With the loss rule
//! flushed from every host, the same ring formed within 13 s and no link
//! went down again. So the driver keeps the timeout and pings eight times
//! per timeout: a link goes down only after about eight pings in a row
//! lost (0.04⁸ ≈ 10⁻¹¹), a real failure still within the same timeout.
//! With that, the defaults formed a ring of all 11 on `wan` within 8 s and
//! lost no token in a minute (`cargo bench --bench fleet -- calm --profile
//! wan --corosync defaults --minutes 1`: tokens lost 0, memberships 0).
//!
//! A 200 ms token cannot work on `wan` whatever knet does: the hosts
//! alternate datacentres in node-id order (host `i` is in `i % 3`), so
//! every hop of Totem's ring crosses between datacentres and one rotation
//! of the token takes 11 × 20 ms ± 5 = about 220 ms, more than the token
//! timeout. Each instance stays a ring of itself; its log cycles through
//! `Token has not been received in 590 ms`, `A new membership (1.15) was
//! formed. Members` (nobody joined) and `Process pause detected for …
//! ms, flushing membership messages` (the 11 instances at real-time
//! priority starve each other in those rounds on 2 cores).
//! The token and consensus timeouts, which decide detection, stay
//! Corosync's (defaults, or the tuned token).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The cluster name every instance's config carries.
const CLUSTER_NAME: &str = "ringhost-cmp";

/// How often [`CorosyncRing::wait_members`] rereads the logs.
const POLL: Duration = Duration::from_millis(20);

/// A fleet host as Corosync sees it: the network namespace it runs in and the
/// address it binds knet to (an address of that namespace's `eth0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Name of the network namespace (as `ip netns` lists it).
    pub netns: String,
    /// The host's address on the fleet's network, e.g. 10.77.1.1.
    pub addr: Ipv4Addr,
}

/// Something a host's corosync logged, with the log's own timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When the instance logged it (millisecond resolution, from `timestamp:
    /// hires`).
    pub at: SystemTime,
    /// Index (into the hosts given to [`CorosyncRing::start`]) of the logger.
    pub host: usize,
    /// PID of the corosync process that logged it (one per start).
    pub pid: u32,
    /// What was logged.
    pub kind: EventKind,
}

/// The log lines that matter for fault measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `Corosync Cluster Engine … starting up`: a new process; its membership
    /// is empty until it logs one.
    Started,
    /// `A processor failed, forming new configuration`: the token timed out,
    /// i.e. this host detected a fault.
    TokenLost,
    /// `A new membership (ring) was formed. Members joined: … left: …`.
    Membership(Membership),
}

/// One membership a host installed. Hosts are indexes into the hosts given to
/// [`CorosyncRing::start`] (Corosync node id − 1), each list sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Corosync's ring id, e.g. `1.1c` (representative node id . sequence).
    pub ring: String,
    /// Every member of the new ring: the previous members of this process,
    /// plus `joined`, minus `left`.
    pub members: Vec<usize>,
    /// Members of the new ring that were not in this process's previous one.
    pub joined: Vec<usize>,
    /// Members of the previous ring that are not in the new one.
    pub left: Vec<usize>,
}

/// N corosync processes, one per host namespace, started by
/// [`CorosyncRing::start`]. Dropping it SIGKILLs and reaps every child it
/// started.
pub struct CorosyncRing {
    dir: PathBuf,
    hosts: Vec<Host>,
    children: Mutex<Vec<Option<Child>>>,
    logs: Mutex<Vec<LogReader>>,
}

impl CorosyncRing {
    /// Writes a config per host under `dir` (created if missing) and starts
    /// `ip netns exec NS corosync -f -c FILE` for every host, as children
    /// whose stdout and stderr go to `dir/hostN/out.txt`.
    ///
    /// `token_ms`: `None` keeps Corosync's defaults (`token` 3000 ms plus
    /// 650 ms per node beyond two); `Some(ms)` sets `token: ms` and
    /// `token_coefficient: 0`, so the token timeout is `ms` for any N.
    /// Consensus is Corosync's automatic 1.2 × token either way.
    ///
    /// # Errors
    /// No hosts; a file that cannot be written; `ip` that cannot be spawned.
    /// Instances that start but fail (a namespace that does not exist, a
    /// missing `corosync`) show as an error of [`Self::wait_members`].
    pub fn start(dir: &Path, hosts: &[Host], token_ms: Option<u32>) -> Result<Self> {
        if hosts.is_empty() {
            bail!("a corosync ring needs at least one host");
        }
        let mut logs = Vec::new();
        for i in 0..hosts.len() {
            let host_dir = dir.join(format!("host{i}"));
            for sub in ["state", "run"] {
                let path = host_dir.join(sub);
                fs::create_dir_all(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
            }
            let conf = host_dir.join("corosync.conf");
            fs::write(&conf, config(hosts, i, token_ms, &host_dir))
                .with_context(|| format!("writing {}", conf.display()))?;
            logs.push(LogReader::new(i, host_dir.join("corosync.log")));
        }
        let ring = Self {
            dir: dir.to_path_buf(),
            hosts: hosts.to_vec(),
            children: Mutex::new((0..hosts.len()).map(|_| None).collect()),
            logs: Mutex::new(logs),
        };
        for i in 0..hosts.len() {
            ring.spawn(i)?;
        }
        Ok(ring)
    }

    /// The hosts, in the order given to [`Self::start`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The directory holding every host's files (`hostN/corosync.log`, …).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until every host in `members` runs and its current process last
    /// installed a membership of exactly `members` (indexes, any order).
    /// Hosts outside `members` are not looked at.
    ///
    /// # Errors
    /// After `within`, naming what each host last saw (or how it exited); at
    /// once if a host in `members` is out of range or not running.
    pub fn wait_members(&self, members: &[usize], within: Duration) -> Result<()> {
        let want: BTreeSet<usize> = members.iter().copied().collect();
        if let Some(&i) = want.iter().find(|&&i| i >= self.hosts.len()) {
            bail!("host {i} is not in this ring of {}", self.hosts.len());
        }
        let deadline = Instant::now() + within;
        loop {
            let mut waiting = Vec::new();
            {
                let mut children = self.children.lock().expect("children lock");
                let mut logs = self.logs.lock().expect("logs lock");
                for &i in &want {
                    let Some(child) = children[i].as_mut() else {
                        bail!("host {i}: corosync is not running (killed and not restarted)");
                    };
                    if let Some(status) = child.try_wait().context("checking a corosync child")? {
                        children[i] = None;
                        bail!(
                            "host {i}: corosync exited ({status}); {}",
                            tail(&self.dir.join(format!("host{i}/out.txt")))
                        );
                    }
                    logs[i].read_new()?;
                    let current = &logs[i].members;
                    if !logs[i].formed || current != &want {
                        waiting.push((i, current.iter().copied().collect::<Vec<_>>()));
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut seen = String::new();
                for (i, m) in &waiting {
                    let _ = write!(seen, "; host {i} has {m:?}");
                }
                bail!(
                    "corosync ring did not reach membership {:?} within {within:?}{seen} \
                     (logs in {})",
                    want,
                    self.dir.display()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every event logged so far by every host (all processes, including
    /// killed ones), ordered by time, then host.
    ///
    /// A log that cannot be read (yet) contributes the events read from it
    /// so far; the next call retries. Lines that are not corosync's format
    /// are skipped.
    pub fn events(&self) -> Vec<Event> {
        let mut logs = self.logs.lock().expect("logs lock");
        let mut all = Vec::new();
        for log in logs.iter_mut() {
            // An unreadable log stays as far as it was read; the caller's
            // deadline reports the missing event.
            let _ = log.read_new();
            all.extend(log.events.iter().cloned());
        }
        all.sort_by_key(|e| (e.at, e.host));
        all
    }

    /// The memberships among [`Self::events`], with who logged them and when.
    pub fn memberships(&self) -> Vec<(SystemTime, usize, Membership)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Membership(m) => Some((e.at, e.host, m)),
                _ => None,
            })
            .collect()
    }

    /// PID of host `i`'s corosync, if it runs (also when stopped).
    pub fn pid(&self, i: usize) -> Option<u32> {
        let children = self.children.lock().expect("children lock");
        children.get(i)?.as_ref().map(Child::id)
    }

    /// Sends `sig` to host `i`'s corosync (e.g. SIGSTOP, SIGCONT). SIGKILL
    /// through here leaves the process unreaped until [`Self::kill`],
    /// [`Self::restart`] or drop; prefer [`Self::kill`].
    ///
    /// # Errors
    /// Host `i` is not running, or `kill(2)` fails.
    pub fn signal(&self, i: usize, sig: Signal) -> Result<()> {
        let pid = self
            .pid(i)
            .with_context(|| format!("host {i}: corosync is not running"))?;
        kill(Pid::from_raw(pid as i32), sig)
            .with_context(|| format!("sending {sig} to corosync of host {i} (pid {pid})"))
    }

    /// SIGKILLs host `i`'s corosync and reaps it.
    ///
    /// # Errors
    /// Host `i` is not running, or the signal or wait fails.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let child = self
            .children
            .get_mut()
            .expect("children lock")
            .get_mut(i)
            .and_then(Option::take)
            .with_context(|| format!("host {i}: corosync is not running"))?;
        end(child).with_context(|| format!("killing corosync of host {i}"))
    }

    /// Starts host `i`'s corosync again with the same config, state and log
    /// (appended to); kills and reaps the running one first, if any.
    ///
    /// # Errors
    /// `i` out of range, or killing or spawning fails.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if i >= self.hosts.len() {
            bail!("host {i} is not in this ring of {}", self.hosts.len());
        }
        if self.pid(i).is_some() {
            self.kill(i)?;
        }
        self.spawn(i)
    }

    fn spawn(&self, i: usize) -> Result<()> {
        let host_dir = self.dir.join(format!("host{i}"));
        let out_path = host_dir.join("out.txt");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .with_context(|| format!("opening {}", out_path.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("duplicating {}", out_path.display()))?;
        let netns = &self.hosts[i].netns;
        // `ip netns exec` gives its command a mount namespace of its own;
        // the lock file there is private (module docs). `exec` keeps the PID.
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "sh", "-c"])
            .arg(r#"mount --bind "$1" /var/run && exec corosync -f -c "$2""#)
            .arg("sh")
            .arg(host_dir.join("run"))
            .arg(host_dir.join("corosync.conf"))
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting corosync in netns {netns} (ip netns exec)"))?;
        self.children.lock().expect("children lock")[i] = Some(child);
        Ok(())
    }
}

impl Drop for CorosyncRing {
    fn drop(&mut self) {
        let children = self.children.get_mut().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut().filter_map(Option::take) {
            // Nothing to do about a failure here; the PID is ours either way.
            let _ = end(child);
        }
    }
}

/// SIGKILLs a child (stopped ones too) and reaps it.
fn end(mut child: Child) -> Result<()> {
    let pid = Pid::from_raw(child.id() as i32);
    match kill(pid, Signal::SIGKILL) {
        // ESRCH cannot happen before the wait below reaps it, but an
        // already exited child is fine either way.
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => return Err(e).context("SIGKILL"),
    }
    child.wait().context("reaping")?;
    Ok(())
}

/// Corosync's token timeout in ms for a ring of `n` hosts: `token_ms`
/// (with `token_coefficient: 0`), or its defaults, 3000 + (n − 2) × 650
/// (see the module docs).
pub fn token_timeout_ms(token_ms: Option<u32>, n: usize) -> u32 {
    match token_ms {
        Some(ms) => ms,
        None => {
            let extra = u32::try_from(n.saturating_sub(2)).unwrap_or(u32::MAX);
            3000u32.saturating_add(extra.saturating_mul(650))
        }
    }
}

/// The knet link's ping interval and timeout (ms) for a token timeout of
/// `token` ms: the timeout is Corosync's default (`token /
/// knet_pong_count`, the count being 2), the interval a sixteenth of the
/// token instead of its default quarter (see the module docs, "Loss"), and
/// at least [`KNET_PING_FLOOR_MS`].
pub fn knet_ping(token: u32) -> (u32, u32) {
    ((token / 16).max(KNET_PING_FLOOR_MS), (token / 2).max(1))
}

/// The shortest knet ping interval the driver sets: 110 links of an
/// 11-host ring pinging every 25 ms are already about 9000 packets a
/// second (pings and pongs) through the harness's userspace switch.
pub const KNET_PING_FLOOR_MS: u32 = 25;

/// The config of host `me` (corosync node id `me + 1`).
fn config(hosts: &[Host], me: usize, token_ms: Option<u32>, host_dir: &Path) -> String {
    let mut totem = String::new();
    if let Some(ms) = token_ms {
        let _ = write!(totem, "  token: {ms}\n  token_coefficient: 0\n");
    }
    let (ping_interval, ping_timeout) = knet_ping(token_timeout_ms(token_ms, hosts.len()));
    let _ = write!(
        totem,
        "  interface {{\n    linknumber: 0\n    knet_ping_interval: {ping_interval}\n    \
         knet_ping_timeout: {ping_timeout}\n  }}\n"
    );
    let mut nodes = String::new();
    for (i, h) in hosts.iter().enumerate() {
        let _ = write!(
            nodes,
            "  node {{\n    name: h{i}\n    nodeid: {}\n    ring0_addr: {}\n  }}\n",
            i + 1,
            h.addr
        );
    }
    let log = host_dir.join("corosync.log");
    let state = host_dir.join("state");
    format!(
        "# host {me}: written by tests/fleet/corosync.rs\n\
         totem {{\n  version: 2\n  cluster_name: {CLUSTER_NAME}\n  transport: knet\n\
         \x20 crypto_cipher: none\n  crypto_hash: none\n{totem}}}\n\
         logging {{\n  to_stderr: no\n  to_syslog: no\n  to_logfile: yes\n\
         \x20 logfile: {}\n  timestamp: hires\n  blackbox: off\n}}\n\
         quorum {{\n  provider: corosync_votequorum\n}}\n\
         system {{\n  state_dir: {}\n  qb_ipc_type: socket\n  move_to_root_cgroup: no\n}}\n\
         nodelist {{\n{nodes}}}\n",
        log.display(),
        state.display()
    )
}

/// Reads one host's log as it grows (across restarts: corosync appends).
struct LogReader {
    host: usize,
    path: PathBuf,
    offset: u64,
    /// The tail after the last newline, completed by the next read.
    partial: String,
    /// Members as the last process installed them.
    members: BTreeSet<usize>,
    /// The last process has installed a membership.
    formed: bool,
    events: Vec<Event>,
}

impl LogReader {
    fn new(host: usize, path: PathBuf) -> Self {
        Self {
            host,
            path,
            offset: 0,
            partial: String::new(),
            members: BTreeSet::new(),
            formed: false,
            events: Vec::new(),
        }
    }

    /// Parses whatever was appended since the last call. A log that does not
    /// exist yet is empty.
    fn read_new(&mut self) -> Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        file.seek(SeekFrom::Start(self.offset))
            .with_context(|| format!("seeking in {}", self.path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", self.path.display()))?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(());
        };
        let complete: String = self.partial.drain(..=end).collect();
        for line in complete.lines() {
            self.line(line);
        }
        Ok(())
    }

    fn line(&mut self, line: &str) {
        let Some((at, pid, message)) = split_line(line, SystemTime::now()) else {
            return;
        };
        let kind = if message.contains("Corosync Cluster Engine") && message.contains("starting up")
        {
            self.members.clear();
            self.formed = false;
            EventKind::Started
        } else if message.starts_with("A processor failed, forming new configuration") {
            EventKind::TokenLost
        } else if let Some((ring, joined, left)) = parse_membership(message) {
            // Node ids are index + 1; anything else is not one of ours.
            let index = |ids: Vec<u32>| -> Vec<usize> {
                ids.into_iter()
                    .filter_map(|id| (id as usize).checked_sub(1))
                    .collect()
            };
            let (joined, left) = (index(joined), index(left));
            self.members.extend(joined.iter().copied());
            for l in &left {
                self.members.remove(l);
            }
            self.formed = true;
            EventKind::Membership(Membership {
                ring,
                members: self.members.iter().copied().collect(),
                joined,
                left,
            })
        } else {
            return;
        };
        self.events.push(Event {
            at,
            host: self.host,
            pid,
            kind,
        });
    }
}

/// Splits `Dec 01 02:11:01.558 [738] host corosync notice  [TOTEM ] message`
/// into time, PID and message. The stamp has no year: take `now`'s, or the
/// year before when that would put the line more than a day in the future.
fn split_line(line: &str, now: SystemTime) -> Option<(SystemTime, u32, &str)> {
    let mut words = line.split_whitespace();
    let (month, day, clock) = (words.next()?, words.next()?, words.next()?);
    let pid = words
        .next()?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    // The message follows the subsystem tag, `[TOTEM ]` (padded to 6).
    let tag = line.find("] ").and_then(|first| {
        let rest = &line[first + 2..];
        rest.find("] ").map(|second| first + 2 + second + 2)
    })?;
    let message = line[tag..].trim();
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let day: u32 = day.parse().ok()?;
    let (hms, millis) = match clock.split_once('.') {
        Some((hms, ms)) => (hms, ms.parse::<u64>().ok()?),
        None => (clock, 0),
    };
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    let now_secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let year = civil_year(now_secs / 86_400);
    let at = |year: i64| -> Option<SystemTime> {
        let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
        let ms = ((days * 24 + h) * 60 + m) * 60 * 1000 + s * 1000 + millis;
        Some(UNIX_EPOCH + Duration::from_millis(ms))
    };
    let mut when = at(year)?;
    if when > now + Duration::from_secs(86_400) {
        when = at(year - 1)?;
    }
    Some((when, pid, message))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `A new membership (1.1c) was formed. Members joined: 2 3 left: 4` into
/// ring id, joined and left node ids.
fn parse_membership(message: &str) -> Option<(String, Vec<u32>, Vec<u32>)> {
    let rest = message.strip_prefix("A new membership (")?;
    let (ring, rest) = rest.split_once(')')?;
    let rest = rest.strip_prefix(" was formed.")?;
    let (mut joined, mut left) = (Vec::new(), Vec::new());
    let mut list = None;
    for word in rest.split_whitespace() {
        match word {
            "Members" => {}
            "joined:" => list = Some(&mut joined),
            "left:" => list = Some(&mut left),
            id => list.as_mut()?.push(id.parse().ok()?),
        }
    }
    Some((ring.to_string(), joined, left))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of day `days` since 1970-01-01 (the inverse of the above, year
/// only).
fn civil_year(days: u64) -> i64 {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

/// The last few lines of a child's captured output, for an error message.
fn tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().rev().take(3).collect();
            if lines.is_empty() {
                format!("{} is empty", path.display())
            } else {
                let last: Vec<&str> = lines.into_iter().rev().collect();
                format!("{} ends: {}", path.display(), last.join(" | "))
            }
        }
        Err(e) => format!("{} unreadable: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    // Unused where this file is included by a bench (no test harness
    // there: its #[test] functions are not compiled).
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn log_line_splits_into_time_pid_and_message() {
        let now = UNIX_EPOCH + Duration::from_secs(1_764_554_000); // 2025-12-01
        let (at, pid, msg) = split_line(
            "Dec 01 02:11:02.698 [738] vm corosync notice  [TOTEM ] A new membership (1.d) \
             was formed. Members left: 3",
            now,
        )
        .expect("parses");
        assert_eq!(pid, 738);
        assert_eq!(msg, "A new membership (1.d) was formed. Members left: 3");
        // 2025-12-01T02:11:02.698Z
        assert_eq!(
            at,
            UNIX_EPOCH + Duration::from_millis(1_764_555_062_698),
            "{at:?}"
        );
    }

    #[test]
    fn stamp_from_late_last_year_is_not_put_in_the_future() {
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 3600); // 2026-01-01T01:00Z
        let (at, _, _) =
            split_line("Dec 31 23:59:59.000 [1] h corosync notice  [MAIN  ] x", now).unwrap();
        assert_eq!(at, UNIX_EPOCH + Duration::from_secs(1_767_225_599));
    }

    #[test]
    fn knet_pings_eight_times_per_ping_timeout_which_stays_corosyncs_default() {
        let hosts: Vec<Host> = (0..11)
            .map(|i| Host {
                netns: format!("h{i}"),
                addr: Ipv4Addr::new(10, 77, 1, i + 1),
            })
            .collect();
        // Defaults on 11 nodes: token 8850 ms, knet's default timeout 4425.
        assert_eq!(token_timeout_ms(None, 11), 8850);
        let conf = config(&hosts, 0, None, Path::new("/x"));
        assert!(
            conf.contains("knet_ping_interval: 553\n")
                && conf.contains("knet_ping_timeout: 4425\n"),
            "{conf}"
        );
        assert!(
            !conf.contains("token:"),
            "the token stays the default: {conf}"
        );
        let conf = config(&hosts, 0, Some(200), Path::new("/x"));
        assert!(
            conf.contains("token: 200\n")
                && conf.contains("knet_ping_interval: 25\n")
                && conf.contains("knet_ping_timeout: 100\n"),
            "{conf}"
        );
    }

    #[test]
    fn membership_line_gives_joined_and_left() {
        assert_eq!(
            parse_membership("A new membership (3.e) was formed. Members joined: 1 2 left: 4"),
            Some(("3.e".into(), vec![1, 2], vec![4]))
        );
        assert_eq!(
            parse_membership("A new membership (3.e) was formed. Members"),
            Some(("3.e".into(), vec![], vec![]))
        );
        assert_eq!(parse_membership("Completed service synchronization"), None);
    }
}
