//! Where the soak's nodes run: a [`Fleet`] of network namespaces (root),
//! or real `ringhost` processes on 127.0.0.1 otherwise. The loopback ring
//! takes a block of fixed ports (ringhost's ring ports cannot be 0: every
//! member must know every address beforehand), picked at random per run
//! below the kernel's ephemeral range, as `tests/it/health.rs` does.
//! Loopback allows the process faults only (kill, stop, restart).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::super::{ADMIN_PORT, Fleet, Line, RING_PORT, node_flags, spawn_logged};

/// The nodes under test.
pub enum Nodes {
    /// Hosts in network namespaces on the delaying switch.
    Fleet(Box<Fleet>),
    /// Processes on 127.0.0.1.
    Loopback(Loopback),
}

/// What the tools need to reach the nodes, cloneable into the operations
/// thread: the binary, the namespace to run in (none on loopback), the
/// cluster key and admin token, the nodes' addresses.
#[derive(Debug, Clone)]
pub struct Reach {
    /// The `ringhost` binary.
    pub bin: PathBuf,
    /// The operator's namespace (tools and HTTP run inside it).
    pub netns: Option<String>,
    /// The cluster key file.
    pub key_file: PathBuf,
    /// The admin token file.
    pub token_file: PathBuf,
    /// Each node's ring address (`host:port`).
    pub ring: Vec<String>,
    /// Each node's admin address (`host:port`).
    pub admin: Vec<String>,
    /// A directory for the operations' scratch files.
    pub scratch: PathBuf,
}

impl Nodes {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        match self {
            Nodes::Fleet(f) => f.len(),
            Nodes::Loopback(l) => l.children.len(),
        }
    }

    /// Whether link faults (link down, cuts, loss) can be injected.
    pub fn has_network(&self) -> bool {
        matches!(self, Nodes::Fleet(_))
    }

    /// Starts node `i`.
    ///
    /// # Errors
    /// When it runs already or cannot be spawned.
    pub fn start(&mut self, i: usize) -> Result<()> {
        match self {
            Nodes::Fleet(f) => f.start(i),
            Nodes::Loopback(l) => l.start(i),
        }
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        match self {
            Nodes::Fleet(f) => f.kill(i),
            Nodes::Loopback(l) => l.kill(i),
        }
    }

    /// The PID of node `i`, if started (it may have exited since).
    pub fn pid(&self, i: usize) -> Option<Pid> {
        match self {
            Nodes::Fleet(f) => f.pid(i),
            Nodes::Loopback(l) => l.children[i].as_ref().map(|c| Pid::from_raw(c.id() as i32)),
        }
    }

    /// Whether node `i`'s process runs (started, and not exited: a zombie
    /// counts as exited).
    pub fn running(&self, i: usize) -> bool {
        self.pid(i).is_some_and(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
                .unwrap_or(false)
        })
    }

    /// Sends `sig` to node `i`.
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

    /// Host `i`'s interface down or up.
    ///
    /// # Errors
    /// On loopback, or when `ip` fails.
    pub fn link(&self, i: usize, up: bool) -> Result<()> {
        self.fleet()?.link(i, up)
    }

    /// Cuts (or heals) everything between hosts `a` and `b`.
    ///
    /// # Errors
    /// On loopback, or when nft fails.
    pub fn cut(&self, a: usize, b: usize, cut: bool) -> Result<()> {
        self.fleet()?.cut(a, b, cut)
    }

    /// Host `i`'s output loss, per mille; `None` sets the profile's back.
    ///
    /// # Errors
    /// On loopback, or when nft fails.
    pub fn set_loss(&self, i: usize, per_mille: Option<u32>) -> Result<()> {
        let f = self.fleet()?;
        f.set_loss(i, per_mille.unwrap_or(f.profile.loss_per_mille))
    }

    fn fleet(&self) -> Result<&Fleet> {
        match self {
            Nodes::Fleet(f) => Ok(f),
            Nodes::Loopback(_) => bail!("no network faults on loopback"),
        }
    }

    /// The next log line of any node, waiting at most `within`.
    pub fn next_line(&self, within: Duration) -> Option<Line> {
        match self {
            Nodes::Fleet(f) => f.next_line(within),
            Nodes::Loopback(l) => l.rx.recv_timeout(within).ok(),
        }
    }

    /// Every line logged and not taken yet.
    pub fn drain(&self) -> Vec<Line> {
        match self {
            Nodes::Fleet(f) => f.drain(),
            Nodes::Loopback(l) => l.rx.try_iter().collect(),
        }
    }

    /// The working directory (ring file, keys, logs).
    pub fn dir(&self) -> &Path {
        match self {
            Nodes::Fleet(f) => f.dir(),
            Nodes::Loopback(l) => &l.dir,
        }
    }

    /// How the tools reach the nodes; `bin` is the `ringhost` binary.
    pub fn reach(&self, bin: &Path) -> Reach {
        match self {
            Nodes::Fleet(f) => Reach {
                bin: bin.to_owned(),
                netns: Some(f.ctl.ns.name().to_owned()),
                key_file: f.key_file(),
                token_file: f.dir().join("admin.token"),
                ring: f.hosts.iter().map(|h| h.at(RING_PORT)).collect(),
                admin: f.hosts.iter().map(|h| h.at(ADMIN_PORT)).collect(),
                scratch: f.dir().to_owned(),
            },
            Nodes::Loopback(l) => Reach {
                bin: bin.to_owned(),
                netns: None,
                key_file: l.dir.join("cluster.key"),
                token_file: l.dir.join("admin.token"),
                ring: (0..l.children.len()).map(|i| l.ring_addr(i)).collect(),
                admin: (0..l.children.len()).map(|i| l.admin_addr(i)).collect(),
                scratch: l.dir.clone(),
            },
        }
    }

    /// The last `n` lines node `i` logged.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let text = fs::read_to_string(self.dir().join(format!("node-{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// `ringhost` processes on 127.0.0.1, ring ports `base..base+n`, admin
/// ports `base+n..base+2n`, keyed like a fleet. Dropping it kills and
/// reaps every node and removes its directory.
pub struct Loopback {
    bin: PathBuf,
    base: u16,
    children: Vec<Option<Child>>,
    node_args: Vec<String>,
    dir: PathBuf,
    tx: mpsc::Sender<Line>,
    rx: mpsc::Receiver<Line>,
}

impl Loopback {
    /// Makes the key, token and ring of `n` nodes (none started).
    ///
    /// # Errors
    /// When the directory or the key cannot be made.
    pub fn build(bin: &Path, n: usize, seed: u64, node_args: Vec<String>) -> Result<Loopback> {
        // Below the ephemeral range (32768+), where outgoing connections
        // would take our ports; the run's seed and pid spread parallel runs.
        let spread = (seed ^ u64::from(std::process::id())) % 9_000;
        let base = u16::try_from(21_000 + spread).context("port block")?;
        let dir = std::env::temp_dir().join(format!("rhsoak{}-{base}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let out = Command::new(bin)
            .args(["keygen", "--cluster", "--out"])
            .arg(dir.join("cluster.key"))
            .output()
            .context("ringhost keygen")?;
        if !out.status.success() {
            bail!("keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
        fs::write(dir.join("admin.token"), "soak-admin-token\n")?;
        let (tx, rx) = mpsc::channel();
        Ok(Loopback {
            bin: bin.to_owned(),
            base,
            children: (0..n).map(|_| None).collect(),
            node_args,
            dir,
            tx,
            rx,
        })
    }

    fn ring_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", usize::from(self.base) + i)
    }

    fn admin_addr(&self, i: usize) -> String {
        format!(
            "127.0.0.1:{}",
            usize::from(self.base) + self.children.len() + i
        )
    }

    fn start(&mut self, i: usize) -> Result<()> {
        if self.children[i].is_some() {
            bail!("node {i} is already running");
        }
        let n = self.children.len();
        let ring = format!("127.0.0.1:{}-{}", self.base, usize::from(self.base) + n - 1);
        let mut command = Command::new(&self.bin);
        node_flags(&mut command, &self.dir, &self.node_args)
            .args(["--ring", &ring, "--port"])
            .arg((usize::from(self.base) + i).to_string())
            .args(["--admin", &self.admin_addr(i)]);
        let log = self.dir.join(format!("node-{i}.log"));
        let child = spawn_logged(&mut command, i, &log, &self.tx)?;
        self.children[i] = Some(child);
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
