//! Drop-in reloads: watches a node's station files and hands a changed
//! file to the deploy agent once it has settled.
//!
//! A file is read only after it has stayed the same size and age for the
//! settle time, so a copy in progress is not loaded; a file caught half
//! written anyway is not a valid component and is refused by validation,
//! and the rest of the copy brings a new change event. Editors that write a
//! temporary file and rename it over the original are seen too: the
//! directory is watched, not the file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::agent::DeployMsg;

/// Starts watching `files` (station name, path); changes go to `agent`.
///
/// # Errors
/// When a file's directory cannot be watched.
pub fn spawn(
    files: Vec<(String, PathBuf)>,
    settle: Duration,
    agent: mpsc::Sender<DeployMsg>,
    cancel: CancellationToken,
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            for p in ev.paths {
                let _ = ev_tx.send(p);
            }
        }
    })
    .context("starting the file watcher")?;
    let mut targets: HashMap<PathBuf, String> = HashMap::new();
    for (name, path) in files {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let dir = dir
            .canonicalize()
            .with_context(|| format!("watching {}", path.display()))?;
        let file = path.file_name().context("station path has no file name")?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
        targets.insert(dir.join(file), name);
    }
    tokio::spawn(
        async move {
            let _watcher = watcher; // dropped (unwatched) when this ends
            // Changed files and the (size, mtime) last seen, with when to
            // look again.
            let mut dirty: HashMap<PathBuf, Option<(u64, SystemTime)>> = HashMap::new();
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                let sleep = async {
                    match due {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    Some(path) = ev_rx.recv() => {
                        if targets.contains_key(&path) {
                            dirty.entry(path).or_insert(None);
                            due = Some(tokio::time::Instant::now() + settle);
                        }
                    }
                    () = sleep => {
                        due = None;
                        let mut settled = Vec::new();
                        for (path, last) in &mut dirty {
                            let now = std::fs::metadata(path)
                                .ok()
                                .and_then(|m| Some((m.len(), m.modified().ok()?)));
                            if now.is_some() && now == *last {
                                settled.push(path.clone());
                            } else {
                                *last = now;
                                due = Some(tokio::time::Instant::now() + settle);
                            }
                        }
                        for path in settled {
                            dirty.remove(&path);
                            let name = targets[&path].clone();
                            match tokio::fs::read(&path).await {
                                Ok(bytes) => {
                                    debug!(station = %name, path = %path.display(), "station file settled");
                                    let _ = agent.send(DeployMsg::FileChanged { name, bytes }).await;
                                }
                                Err(e) => warn!(path = %path.display(), cause = %e, "reading changed station file"),
                            }
                        }
                        // Files that vanished (a rename in progress) stay
                        // dirty until they come back.
                        if !dirty.is_empty() && due.is_none() {
                            due = Some(tokio::time::Instant::now() + settle);
                        }
                    }
                }
            }
        }
        .in_current_span(),
    );
    Ok(())
}
