//! `--respawn` for standalone nodes: the seed's "holding its hand". When
//! this node declares its successor dead and that member lives on this
//! machine, it restarts it with this node's own command line (naming the
//! dead member instead), with backoff, never two starts at once for one
//! member, and gives up loudly after repeated failures.
//!
//! It listens to the node's events (successor linked, member down, member
//! up); it does not touch the ring protocol. Only a member this node has
//! been linked to is respawned: one that never answered (not started yet,
//! at boot) is left alone. Under `ringhost up` the supervisor respawns
//! instead, since it owns every node process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{RingLayout, is_local_host};
use crate::observe::{EventKind, NodeEvent};

/// Failed starts in a row before a member is given up on.
pub const MAX_FAILURES: u32 = 5;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How to start another member: this program, with these arguments, plus
/// `--name MEMBER`.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The executable.
    pub program: PathBuf,
    /// This node's own arguments without `--port`/`--name`.
    pub args: Vec<String>,
}

impl Launcher {
    /// This process's command line, minus the flags that pick the member.
    ///
    /// # Errors
    /// When the executable's path cannot be found.
    pub fn from_current_process() -> std::io::Result<Self> {
        let mut args = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "--port" || a == "--name" {
                it.next();
            } else if !(a.starts_with("--port=") || a.starts_with("--name=")) {
                args.push(a);
            }
        }
        Ok(Self {
            program: std::env::current_exe()?,
            args,
        })
    }
}

#[derive(Default)]
struct Slot {
    /// This node has linked to the member: it did run. A member never seen
    /// alive (not started yet, at boot) is not respawned.
    seen_alive: bool,
    running: bool,
    down: bool,
    failures: u32,
    retry_at: Option<Instant>,
    given_up: bool,
}

/// Runs until `cancel`: restarts local members this node declares dead.
pub async fn run(
    ring: RingLayout,
    launcher: Launcher,
    mut events: mpsc::UnboundedReceiver<NodeEvent>,
    cancel: CancellationToken,
) {
    let mut slots: HashMap<usize, Slot> = HashMap::new();
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(usize, String)>();
    loop {
        let next = slots
            .iter()
            .filter_map(|(&m, s)| s.retry_at.map(|t| (t, m)))
            .min();
        let due = async {
            match next {
                Some((t, m)) => {
                    tokio::time::sleep_until(t).await;
                    m
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            ev = events.recv() => match ev.map(|e| e.kind) {
                None => return,
                Some(EventKind::SuccessorLinked { successor }) => {
                    slots.entry(successor).or_default().seen_alive = true;
                }
                Some(EventKind::MemberDown { peer, left: true, .. }) => {
                    // A clean stop is the operator's will: not a death.
                    let slot = slots.entry(peer).or_default();
                    slot.down = false;
                    slot.retry_at = None;
                    info!(member = peer, "member left the ring; not respawning it");
                }
                Some(EventKind::MemberDown { peer, .. }) => {
                    let slot = slots.entry(peer).or_default();
                    slot.down = true;
                    if slot.seen_alive && !slot.running && slot.retry_at.is_none() && !slot.given_up {
                        slot.retry_at = Some(Instant::now());
                    }
                }
                Some(EventKind::MemberUp { peer }) => {
                    let slot = slots.entry(peer).or_default();
                    *slot = Slot { running: slot.running, seen_alive: true, ..Slot::default() };
                }
                Some(_) => {}
            },
            member = due => {
                let slot = slots.entry(member).or_default();
                slot.retry_at = None;
                if slot.running || !slot.down || slot.given_up {
                    continue;
                }
                let m = &ring.members()[member];
                if !is_local_host(&m.addr) {
                    warn!(member, name = %m.name, "cannot respawn a member on another machine");
                    slot.given_up = true;
                    continue;
                }
                let mut cmd = Command::new(&launcher.program);
                cmd.args(&launcher.args)
                    .args(["--name", &m.name])
                    .stdin(Stdio::null())
                    // Its own process group: a Ctrl-C meant for us does not
                    // stop the member we restarted.
                    .process_group(0);
                match cmd.spawn() {
                    Ok(mut child) => {
                        slot.running = true;
                        info!(member, name = %m.name, pid = child.id(), attempt = slot.failures + 1, "respawned dead successor");
                        let tx = exit_tx.clone();
                        tokio::spawn(async move {
                            let status = child.wait().await;
                            if let Some(signal) = status.as_ref().ok().and_then(std::os::unix::process::ExitStatusExt::signal) {
                                warn!(member, signal, "respawned member died by a signal; its next start checks every compile-cache entry's digest before loading it");
                            }
                            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                            let _ = tx.send((member, status));
                        });
                    }
                    Err(e) => {
                        error!(member, cause = %e, "respawn failed");
                        let _ = exit_tx.send((member, e.to_string()));
                    }
                }
            }
            Some((member, status)) = exit_rx.recv() => {
                let slot = slots.entry(member).or_default();
                slot.running = false;
                if !slot.down {
                    continue;
                }
                slot.failures += 1;
                if slot.failures >= MAX_FAILURES {
                    error!(member, failures = slot.failures, %status, "giving up respawning this member");
                    slot.given_up = true;
                } else {
                    let backoff = (BACKOFF_MIN * 2u32.pow(slot.failures - 1)).min(BACKOFF_MAX);
                    warn!(member, %status, ?backoff, "respawned member exited; retrying");
                    slot.retry_at = Some(Instant::now() + backoff);
                }
            }
        }
    }
}
