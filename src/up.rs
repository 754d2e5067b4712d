//! `ringhost up`: a whole local ring, one node process per member.
//!
//! The supervisor starts every node as a child process of this executable,
//! prefixes their output with the node's port, and on Ctrl-C or SIGTERM
//! stops them all: SIGTERM first, SIGKILL after a grace period, and every
//! child is reaped. Each child also watches its stdin, a pipe from the
//! supervisor: if the supervisor dies, even by SIGKILL, the pipe closes and
//! every node exits by itself, so no node is ever orphaned.
//!
//! Not here yet: respawning crashed nodes (the ring-health work).

use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::cli::UpArgs;

/// How long nodes get to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Runs the ring until `shutdown` resolves, then stops every node.
///
/// # Errors
/// When the settings are invalid or a node cannot be started (the nodes
/// already started are stopped first).
pub async fn run(args: UpArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    let ring = args.ring()?;
    // Check the stations once here rather than failing in every child.
    args.stations.specs()?;
    let program = match &args.node_program {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("finding the ringhost executable")?,
    };
    info!(%ring, nodes = args.nodes, "starting a local ring");

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (exited_tx, mut exited_rx) = mpsc::channel::<(u16, ExitStatus)>(64);
    // Keep every child's stdin open for as long as we live.
    let mut stdins: Vec<ChildStdin> = Vec::new();
    let mut started = 0usize;
    let mut failure = None;
    for i in 0..args.nodes {
        let port = args.base_port + i;
        let mut cmd = Command::new(&program);
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--ring")
            .arg(&ring)
            .arg("--exit-on-stdin-eof")
            .args(args.stations.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                failure = Some(
                    anyhow::Error::new(e)
                        .context(format!("starting node {port} ({})", program.display())),
                );
                break;
            }
        };
        if let Some(stdin) = child.stdin.take() {
            stdins.push(stdin);
        }
        if let Some(out) = child.stdout.take() {
            tracker.spawn(pump(out, port));
        }
        if let Some(err) = child.stderr.take() {
            tracker.spawn(pump(err, port));
        }
        tracker.spawn(supervise(child, port, stop.clone(), exited_tx.clone()));
        started += 1;
    }
    drop(exited_tx);

    if failure.is_none() {
        tokio::pin!(shutdown);
        let mut alive = started;
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    info!("stopping the ring");
                    break;
                }
                Some((port, status)) = exited_rx.recv() => {
                    error!(port, %status, "node exited");
                    alive -= 1;
                    if alive == 0 {
                        failure = Some(anyhow::anyhow!("every node has exited"));
                        break;
                    }
                }
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
    drop(stdins);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Waits for one child; on `stop`, sends SIGTERM, then SIGKILL after
/// [`STOP_GRACE`]. Always reaps the child.
async fn supervise(
    mut child: Child,
    port: u16,
    stop: CancellationToken,
    exited: mpsc::Sender<(u16, ExitStatus)>,
) {
    tokio::select! {
        status = child.wait() => {
            match status {
                Ok(status) => { let _ = exited.send((port, status)).await; }
                Err(e) => error!(port, cause = %e, "waiting for node failed"),
            }
        }
        () = stop.cancelled() => {
            if let Some(pid) = child.id() {
                let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
                let _ = kill(pid, Signal::SIGTERM);
            }
            match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    warn!(port, "node ignored SIGTERM; killing it");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
    }
}

/// Copies a child's output to ours, a line at a time, prefixed by port.
async fn pump(out: impl AsyncRead + Unpin, port: u16) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{port} | {line}");
    }
}

/// Rejects nonsense before any process starts.
///
/// # Errors
/// When there would be no node to start.
pub fn check(args: &UpArgs) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    Ok(())
}
