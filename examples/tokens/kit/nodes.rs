//! A local ring of `ringhost` node processes for the tokens demo: one
//! process per node on 127.0.0.1, each with its admin API on a free port
//! and a datagram socket for station inputs (`--input-udp`, ring port +
//! 2000). Owns the children: [`Nodes`] kills and reaps every one of them
//! when dropped (also when the demo fails or is interrupted).
//!
//! A ring is a list of known addresses, so the ring ports cannot be bound
//! to 0: a block of ports below the kernel's ephemeral range is picked at
//! random per run (as `tests/it/health.rs` does), and a node that cannot
//! bind its port ends the start with its log's last lines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long [`Nodes::wait_ring`] waits for every node to see the whole
/// ring live.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// Offset of a node's datagram input port above its ring port (the
/// node's `--input-udp auto` rule).
pub const UDP_OFFSET: u16 = 2000;

/// How a ring of node processes is started.
#[derive(Debug, Clone)]
pub struct RingSpec {
    /// The `ringhost` executable.
    pub bin: PathBuf,
    /// Number of nodes.
    pub n: usize,
    /// `--station` specs, in order.
    pub stations: Vec<String>,
    /// `--delay-ms`: the particle's hold at each stop, ms.
    pub delay_ms: u64,
    /// Where each node's stdout and stderr go (`node-I.log`).
    pub log_dir: PathBuf,
}

/// Running node processes; killed and reaped on drop.
pub struct Nodes {
    base: u16,
    children: Vec<Child>,
    log_dir: PathBuf,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        // Only the children we started, by their handle (no name match).
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// A random base port for `n` nodes: 20000..28000, so base + n + 2000
/// stays under 32768, where the kernel's ephemeral ports start.
fn random_base() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    20_000 + ((nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 8_000) as u16
}

impl Nodes {
    /// Starts `spec.n` node processes forming one ring.
    ///
    /// # Errors
    /// When the executable cannot be started.
    pub fn start(spec: &RingSpec) -> Result<Self> {
        std::fs::create_dir_all(&spec.log_dir)
            .with_context(|| format!("creating {}", spec.log_dir.display()))?;
        let base = random_base();
        let ring = format!("127.0.0.1:{}-{}", base, base as usize + spec.n - 1);
        let mut nodes = Self {
            base,
            children: Vec::new(),
            log_dir: spec.log_dir.clone(),
        };
        for i in 0..spec.n {
            let port = base + i as u16;
            let log = std::fs::File::create(nodes.log_path(i))
                .with_context(|| format!("creating {}", nodes.log_path(i).display()))?;
            let mut cmd = Command::new(&spec.bin);
            cmd.args(["--port", &port.to_string(), "--ring", &ring])
                .args(["--delay-ms", &spec.delay_ms.to_string()])
                .args(["--failure-timeout-ms", "500"])
                .args(["--admin", "127.0.0.1:0"])
                .args(["--input-udp", &format!("127.0.0.1:{}", port + UDP_OFFSET)]);
            for s in &spec.stations {
                cmd.args(["--station", s]);
            }
            let child = cmd
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", spec.bin.display()))?;
            nodes.children.push(child);
        }
        Ok(nodes)
    }

    /// Node `i`'s log file.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.log_dir.join(format!("node-{i}.log"))
    }

    /// The directory of the node logs.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Node `i`'s ring address (`ringhost` tools find its admin API
    /// through it).
    pub fn ring_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.base as usize + i)
    }

    /// Node `i`'s datagram input address.
    pub fn udp_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.base as usize + i + UDP_OFFSET as usize)
    }

    /// Fails with the node's last log lines if a node has exited.
    fn check_alive(&mut self) -> Result<()> {
        for i in 0..self.children.len() {
            if let Some(status) = self.children[i].try_wait()? {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "node {i} exited ({status}); the last lines of {}:\n{}",
                    self.log_path(i).display(),
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    /// Waits until every node reports the whole ring live and particle
    /// visits growing; the lap time p50 (ms) node 0 reports then.
    ///
    /// # Errors
    /// A node exited, or [`FORM_TIMEOUT`] passed.
    pub async fn wait_ring(&mut self) -> Result<f64> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let n = self.children.len();
        let mut first_visits: Vec<Option<u64>> = vec![None; n];
        loop {
            self.check_alive()?;
            let mut ready = 0;
            for (i, first) in first_visits.iter_mut().enumerate() {
                let Ok(r) =
                    ringhost::status::query(&self.ring_addr(i), None, Duration::from_secs(1)).await
                else {
                    continue;
                };
                let live = r.members.iter().filter(|m| m.live).count();
                let visits0 = *first.get_or_insert(r.visits);
                if live == n && r.successor_up && r.visits > visits0 {
                    ready += 1;
                }
            }
            if ready == n {
                return Ok(self.lap_ms(0).await.unwrap_or(0.0));
            }
            if Instant::now() >= deadline {
                bail!(
                    "the ring of {n} nodes did not form within {FORM_TIMEOUT:?} ({ready} ready; logs in {})",
                    self.log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lap time p50 node `i` measured, ms.
    pub async fn lap_ms(&self, i: usize) -> Option<f64> {
        ringhost::status::query(&self.ring_addr(i), None, Duration::from_secs(2))
            .await
            .ok()
            .and_then(|r| r.lap_ms.p50)
    }
}
