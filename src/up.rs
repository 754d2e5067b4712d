//! `ringhost up`: a whole local ring, one node process per member.
//!
//! The supervisor starts every node as a child process of this executable,
//! prefixes their output with the node's port, and on Ctrl-C or SIGTERM
//! stops them all: SIGTERM first, SIGKILL after a grace period, and every
//! child is reaped. Each child also watches its stdin, a pipe from the
//! supervisor: if the supervisor dies, even by SIGKILL, the pipe closes and
//! every node exits by itself, so no node is ever orphaned.
//!
//! A node that dies is restarted with the same command line (unless
//! `--no-respawn`), with backoff, one start at a time per node, and given up
//! on loudly after repeated quick failures. The supervisor does it rather
//! than the dead node's predecessor because it owns every node process:
//! that way Ctrl-C still reaps them all.

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::cli::UpArgs;

/// How long nodes get to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Respawn policy: first retry delay, cap, and how many failed starts in a
/// row before giving up on a node.
pub const RESPAWN_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Cap on the respawn delay.
pub const RESPAWN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Consecutive short-lived starts after which a node is given up on.
pub const RESPAWN_MAX_FAILURES: u32 = 5;
/// A node that ran at least this long resets the failure count.
pub const RESPAWN_HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What a node keeper reports to the supervisor.
enum Report {
    Exited {
        port: u16,
        status: String,
    },
    GaveUp {
        port: u16,
    },
    /// The node could not bind its port: the ring cannot run as asked.
    CannotBind {
        port: u16,
    },
}

/// Checks that every node's port can be bound before any node starts, so
/// a port held by another program is named at once.
///
/// # Errors
/// The first port that cannot be bound, and why.
fn check_ports(host: &str, ports: impl Iterator<Item = u16>) -> Result<()> {
    for port in ports {
        if let Err(e) = std::net::TcpListener::bind((host, port)) {
            anyhow::bail!(
                "port {port} on {host} cannot be bound ({e}): another program holds it; \
                 stop it or choose other ports with --base-port"
            );
        }
    }
    Ok(())
}

/// The first node's admin port: `--admin-base-port`, or `--base-port` +
/// 1000.
///
/// # Errors
/// When the admin ports would pass 65535.
fn admin_base_port(args: &UpArgs) -> Result<u16> {
    let base = match args.admin_base_port {
        Some(p) => u32::from(p),
        None => u32::from(args.base_port) + 1000,
    };
    let last = base + u32::from(args.nodes.max(1)) - 1;
    if last > u32::from(u16::MAX) {
        anyhow::bail!("admin ports {base}-{last} pass 65535: choose a lower --admin-base-port");
    }
    // The admin ports are on 127.0.0.1; the ring ports on --host, which may
    // be the same interface: the two ranges must not meet.
    let ring = u32::from(args.base_port)..u32::from(args.base_port) + u32::from(args.nodes);
    if (base..=last).any(|p| ring.contains(&p)) {
        anyhow::bail!(
            "admin ports {base}-{last} overlap the ring ports {}-{}: choose another \
             --admin-base-port",
            ring.start,
            ring.end - 1
        );
    }
    Ok(u16::try_from(base).unwrap_or(u16::MAX))
}

/// Runs the ring until `shutdown` resolves, then stops every node.
///
/// # Errors
/// When the settings are invalid, a node cannot be started at all, or
/// every node has been given up on.
pub async fn run(
    args: UpArgs,
    cluster_key_file: Option<&std::path::Path>,
    json_logs: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let ring = args.ring()?;
    check_ports(&args.host, (0..args.nodes).map(|i| args.base_port + i))?;
    let admin_base = admin_base_port(&args)?;
    check_ports("127.0.0.1", (0..args.nodes).map(|i| admin_base + i))
        .map_err(|e| e.context("an admin port is taken: choose others with --admin-base-port"))?;
    // Check the stations once here rather than failing in every child, and
    // compile them once into the cache, so the nodes start in milliseconds
    // instead of each compiling the same code.
    let specs = args.stations.specs()?;
    let host = crate::station::StationHost::with_cache(args.stations.cache_dir())?;
    for spec in &specs {
        let bytes = crate::station::read_source(&spec.source).await?;
        let host = std::sync::Arc::clone(&host);
        let metered = args.stations.station_fuel.is_some();
        tokio::task::spawn_blocking(move || host.compile_for(&bytes, metered))
            .await
            .context("compile task")?
            .with_context(|| format!("station {}", spec.name))?;
    }
    drop(host);
    let program = match &args.node_program {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding the ringhost executable")?,
    };
    info!(%ring, nodes = args.nodes, respawn = !args.no_respawn, "starting a local ring");

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (report_tx, mut report_rx) = mpsc::channel::<Report>(64);
    let mut failure = None;
    for i in 0..args.nodes {
        let port = args.base_port + i;
        let mut cmd = Command::new(&program);
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--ring")
            .arg(&ring)
            .arg("--exit-on-stdin-eof")
            .arg("--admin")
            .arg(format!("127.0.0.1:{}", admin_base + i))
            .args(args.stations.to_args());
        if json_logs {
            cmd.args(["--log-format", "json"]);
        }
        if let Some(f) = cluster_key_file {
            cmd.arg("--cluster-key-file").arg(f);
        }
        if args.insecure {
            cmd.arg("--insecure");
        }
        if args.input_udp {
            cmd.args(["--input-udp", "auto"]);
        }
        if args.cache {
            cmd.args(["--cache", "auto", "--cache-memory-mib"])
                .arg(args.cache_memory_mib.to_string());
        }
        if let Some(dir) = &args.stations.data_dir {
            cmd.arg("--data-dir").arg(dir.join(port.to_string()));
        }
        // One watcher is enough: the first node pushes a changed station
        // file to the others.
        if i > 0 && !args.stations.no_watch {
            cmd.arg("--no-watch");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The first start must work; later ones are the keeper's business.
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                failure = Some(
                    anyhow::Error::new(e)
                        .context(format!("starting node {port} ({})", program.display())),
                );
                break;
            }
        };
        let keeper = Keeper {
            port,
            cmd,
            respawn: !args.no_respawn,
            stop: stop.clone(),
            tracker: tracker.clone(),
            report: report_tx.clone(),
            json_logs,
        };
        tracker.spawn(keeper.run(child));
    }
    drop(report_tx);
    if failure.is_none() {
        let admins = (0..args.nodes)
            .map(|i| (args.base_port + i, format!("127.0.0.1:{}", admin_base + i)))
            .collect();
        tracker.spawn(formation(admins, stop.clone()));
    }

    if failure.is_none() {
        tokio::pin!(shutdown);
        let mut given_up = 0u16;
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    info!("stopping the ring");
                    break;
                }
                r = report_rx.recv() => match r {
                    Some(Report::Exited { port, status }) => error!(port, %status, "node exited"),
                    Some(Report::CannotBind { port }) => {
                        failure = Some(anyhow::anyhow!(
                            "node {port} cannot bind its port (another program holds it?); \
                             stopping the ring"
                        ));
                        break;
                    }
                    Some(Report::GaveUp { port }) => {
                        error!(port, "node keeps failing; gave up respawning it");
                        given_up += 1;
                        if given_up == args.nodes {
                            failure = Some(anyhow::anyhow!("every node has exited"));
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
    }

    stop.cancel();
    tracker.close();
    if tokio::time::timeout(STOP_GRACE * 2, tracker.wait())
        .await
        .is_err()
    {
        warn!("some node output was still open after stopping");
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Keeps one node running: waits for it, restarts it with backoff when it
/// dies (never two at once: one keeper per node, one child at a time), and
/// stops it on `stop`. Every child it starts, it reaps.
struct Keeper {
    port: u16,
    cmd: Command,
    respawn: bool,
    stop: CancellationToken,
    tracker: TaskTracker,
    report: mpsc::Sender<Report>,
    /// The children write JSON lines: passed on as they are, not prefixed.
    json_logs: bool,
}

impl Keeper {
    async fn run(mut self, first: Child) {
        let mut child = first;
        let mut failures = 0u32;
        let mut backoff = RESPAWN_BACKOFF_MIN;
        loop {
            let started = Instant::now();
            // Keep the child's stdin open for as long as it should live.
            let stdin = child.stdin.take();
            if let Some(out) = child.stdout.take() {
                self.tracker.spawn(pump(out, self.port, self.json_logs));
            }
            if let Some(err) = child.stderr.take() {
                self.tracker.spawn(pump(err, self.port, self.json_logs));
            }
            let status = tokio::select! {
                status = child.wait() => status,
                () = self.stop.cancelled() => {
                    terminate(&mut child, self.port).await;
                    return;
                }
            };
            drop(stdin);
            let cannot_bind = status
                .as_ref()
                .is_ok_and(|s| s.code() == Some(i32::from(crate::EXIT_CANNOT_BIND)));
            let signal = status
                .as_ref()
                .ok()
                .and_then(std::os::unix::process::ExitStatusExt::signal);
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            let _ = self
                .report
                .send(Report::Exited {
                    port: self.port,
                    status,
                })
                .await;
            if cannot_bind {
                let _ = self
                    .report
                    .send(Report::CannotBind { port: self.port })
                    .await;
                return;
            }
            if !self.respawn {
                return;
            }
            if started.elapsed() >= RESPAWN_HEALTHY_AFTER {
                failures = 0;
                backoff = RESPAWN_BACKOFF_MIN;
            }
            failures += 1;
            if failures > RESPAWN_MAX_FAILURES {
                let _ = self.report.send(Report::GaveUp { port: self.port }).await;
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(RESPAWN_BACKOFF_MAX);
            warn!(port = self.port, attempt = failures, "respawning node");
            if let Some(signal) = signal {
                // Damaged compiled code is one way to die by a signal.
                warn!(
                    port = self.port,
                    signal,
                    "node died by a signal; it restarts checking every compile-cache entry's digest before loading it"
                );
            }
            child = match self.cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    error!(port = self.port, cause = %e, "respawn failed");
                    let _ = self.report.send(Report::GaveUp { port: self.port }).await;
                    return;
                }
            };
        }
    }
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`]; always reaps.
async fn terminate(child: &mut Child, port: u16) {
    if let Some(pid) = child.id() {
        let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        warn!(port, "node ignored SIGTERM; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// How long `up` reports the ring's formation before it says it is still
/// incomplete and stops counting.
const FORMATION_LIMIT: Duration = Duration::from_secs(60);

/// Reports the ring forming ("7/11 linked", on each change) from the
/// nodes' admin APIs (`(ring port, admin address)` each), then every
/// node's admin URL. Bounded by [`FORMATION_LIMIT`] and `stop`.
async fn formation(admins: Vec<(u16, String)>, stop: CancellationToken) {
    let started = Instant::now();
    let clients: Vec<_> = admins
        .iter()
        .map(|(_, a)| crate::admin::client::AdminClient::new(a, None))
        .collect();
    let total = clients.len();
    let mut last = None;
    loop {
        let asks = clients.iter().map(|c| c.status(Duration::from_millis(500)));
        let linked = futures::future::join_all(asks)
            .await
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.successor_up))
            .count();
        if last != Some(linked) && linked < total {
            info!("ring forming: {linked}/{total} linked");
        }
        last = Some(linked);
        if linked == total {
            info!(
                "ring formed: {total}/{total} linked in {} ms",
                started.elapsed().as_millis()
            );
            break;
        }
        if started.elapsed() >= FORMATION_LIMIT {
            warn!(
                "ring still forming after {} s: {linked}/{total} linked (`ringhost members --to \
                 {}` shows which)",
                FORMATION_LIMIT.as_secs(),
                admins[0].1
            );
            break;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    for (port, admin) in &admins {
        info!(
            "node {port}: admin API http://{admin} (dashboard: /, status: /v1/status, ring: \
             /v1/ring, metrics: /metrics)"
        );
    }
}

/// Copies a child's output to ours, a line at a time, prefixed by port
/// (JSON lines go as they are: each names its node in its span fields).
async fn pump(out: impl AsyncRead + Unpin, port: u16, json: bool) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if json {
            println!("{line}");
        } else {
            println!("{port} | {line}");
        }
    }
}
