//! Drop-in reloads: watches a node's station files and hands a file whose
//! contents changed to the deploy agent once it has settled.
//!
//! "Changed" means the sha-256 of the bytes the path now yields differs
//! from the last bytes handed on (at start: the bytes the node loaded).
//! Events only say *when to look*; the hash decides. So an event that
//! changes nothing (a read, a touch, a file rewritten with the same bytes)
//! costs one read and is dropped, and an invalid file is validated once,
//! not at every look.
//!
//! What is watched, per station file:
//! - the directory of the path itself, and of every symlink hop to the real
//!   file, and of every symlinked directory on the way, each as the real
//!   directory it is. This covers the Kubernetes ConfigMap layout
//!   (`dir/s.wasm -> ..data/s.wasm`, `..data -> ..2026_…`, updated by
//!   renaming a new `..data` over the old), a symlink whose target file is
//!   replaced, a symlink re-pointed, and editors that rename a temp file
//!   over the original. The chain is resolved again before every look, and
//!   directories it no longer passes through are dropped.
//! - Right after the watches are in place every file is looked at once:
//!   a file replaced between the node's first read and the watch start is
//!   picked up.
//! - A slow poll (every 3 s by default, `DeployConfig::poll_ms`) compares
//!   each file's identity (device, inode, size, mtime) as a backstop, for
//!   events that never come (hard links written elsewhere, filesystems
//!   without inotify, watcher errors, a watch limit reached); when file
//!   events cannot be had at all, the log says so once.
//!
//! A file is read only after it has stayed the same (identity, size, age)
//! for the settle time, so a copy in progress is not loaded; a file caught
//! half written anyway is not a valid component and is refused by
//! validation, and the rest of the copy brings a new change.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::Watcher;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::model::Hash;

/// Most symlink hops followed from one path (the kernel allows 40).
const MAX_HOPS: usize = 40;

/// A station file to watch.
#[derive(Debug, Clone)]
pub struct WatchedFile {
    /// Station name.
    pub name: String,
    /// The path as configured (may be relative, may be a symlink).
    pub path: PathBuf,
    /// sha-256 of the bytes the node loaded from it at start.
    pub loaded: Hash,
}

/// A watched station file that settled with new contents: what the
/// watch hands on (the deploy agent takes it as a message of its own,
/// through `From`, so this module does not know the agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// Station name.
    pub name: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// What identifies a file's contents without reading them.
type Stamp = (u64, u64, u64, Option<SystemTime>);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()))
}

struct Target {
    name: String,
    /// Absolute (not resolved) path.
    path: PathBuf,
    /// Directories watched for it.
    dirs: BTreeSet<PathBuf>,
    /// The contents last handed on (or loaded at start).
    hash: Hash,
    /// Identity at the last poll.
    polled: Option<Stamp>,
}

/// The watching task's state.
struct Watch<M> {
    targets: Vec<Target>,
    watcher: Option<notify::RecommendedWatcher>,
    /// Directories with a watch in place.
    watched: BTreeSet<PathBuf>,
    /// Targets to look at, with the stamp seen at the last look.
    dirty: HashMap<usize, Option<Stamp>>,
    settle: Duration,
    poll: Duration,
    agent: mpsc::Sender<M>,
    /// Whether "events unavailable" was logged.
    degraded: bool,
}

/// Sets up watches on `files` and returns the task that reports changed
/// files to `agent` until `cancel` (the caller spawns it, on its tracker).
/// A file is loaded once unchanged for `settle`; identities are compared
/// every `poll` whatever the events say. Never fails: without file events
/// it polls, and says so once.
pub fn start<M: From<FileChange> + Send + 'static>(
    files: Vec<WatchedFile>,
    settle: Duration,
    poll: Duration,
    agent: mpsc::Sender<M>,
    cancel: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let (ev_tx, ev_rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watch = Watch {
        targets: files
            .into_iter()
            .map(|f| Target {
                name: f.name,
                path: std::path::absolute(&f.path).unwrap_or(f.path),
                dirs: BTreeSet::new(),
                hash: f.loaded,
                polled: None,
            })
            .collect(),
        watcher: None,
        watched: BTreeSet::new(),
        dirty: HashMap::new(),
        settle,
        poll: poll.max(Duration::from_millis(100)),
        agent,
        degraded: false,
    };
    if !watch.targets.is_empty() {
        match notify::recommended_watcher(move |res| {
            let _ = ev_tx.send(res);
        }) {
            Ok(w) => watch.watcher = Some(w),
            Err(e) => watch.degrade(&e.to_string()),
        }
        for i in 0..watch.targets.len() {
            watch.rewatch(i);
            watch.targets[i].polled = stamp(&watch.targets[i].path);
            // The start-up look: the file may have changed since the node
            // read it, before these watches were in place.
            watch.dirty.insert(i, None);
        }
    }
    watch.run(ev_rx, cancel)
}

impl<M: From<FileChange> + Send + 'static> Watch<M> {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
        cancel: CancellationToken,
    ) {
        if self.targets.is_empty() {
            return;
        }
        let mut due = Some(Instant::now());
        let mut poll = tokio::time::interval_at(Instant::now() + self.poll, self.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep = async {
                match due {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                Some(ev) = events.recv() => {
                    if self.on_event(ev) && due.is_none() {
                        due = Some(Instant::now() + self.settle);
                    }
                }
                _ = poll.tick() => {
                    for i in 0..self.targets.len() {
                        let now = stamp(&self.targets[i].path);
                        if now != self.targets[i].polled {
                            self.targets[i].polled = now;
                            self.dirty.entry(i).or_insert(None);
                        }
                    }
                    if !self.dirty.is_empty() && due.is_none() {
                        due = Some(Instant::now() + self.settle);
                    }
                }
                () = sleep => {
                    due = None;
                    if self.look().await {
                        due = Some(Instant::now() + self.settle);
                    }
                }
            }
        }
    }

    /// Marks the targets an event may concern; whether any was.
    fn on_event(&mut self, ev: notify::Result<notify::Event>) -> bool {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                // Events may have been lost: look at everything.
                self.degrade(&e.to_string());
                self.dirty
                    .extend((0..self.targets.len()).map(|i| (i, None)));
                return true;
            }
        };
        // Opening or reading a file changes nothing (and our own reads
        // would otherwise wake us up again).
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return false;
        }
        let mut any = false;
        for (i, t) in self.targets.iter().enumerate() {
            let concerned = ev.need_rescan()
                || ev
                    .paths
                    .iter()
                    .any(|p| t.dirs.contains(p) || p.parent().is_some_and(|d| t.dirs.contains(d)));
            if concerned {
                self.dirty.entry(i).or_insert(None);
                any = true;
            }
        }
        any
    }

    /// Looks at the dirty targets: those that settled are re-resolved,
    /// read and hashed, and handed on if their contents changed. Whether
    /// any is still unsettled.
    async fn look(&mut self) -> bool {
        let mut settled = Vec::new();
        for (&i, last) in &mut self.dirty {
            let now = stamp(&self.targets[i].path);
            if now.is_some() && now == *last {
                settled.push(i);
            } else {
                // Changing, or gone (a rename in progress): look again.
                *last = now;
            }
        }
        for i in settled {
            self.dirty.remove(&i);
            // Watch the chain as it is now before reading: a change after
            // this brings an event, one before it is in what we read.
            self.rewatch(i);
            let t = &mut self.targets[i];
            t.polled = stamp(&t.path);
            let bytes = match tokio::fs::read(&t.path).await {
                Ok(b) => b,
                Err(e) => {
                    debug!(path = %t.path.display(), cause = %e, "station file unreadable; looking again");
                    self.dirty.insert(i, None);
                    continue;
                }
            };
            let hash = Hash::of(&bytes);
            if hash == t.hash {
                debug!(station = %t.name, "station file event, contents unchanged");
                continue;
            }
            t.hash = hash;
            debug!(station = %t.name, path = %t.path.display(), hash = %hash.short(), "station file changed");
            let msg = FileChange {
                name: t.name.clone(),
                bytes,
            };
            let _ = self.agent.send(msg.into()).await;
        }
        !self.dirty.is_empty()
    }

    /// Resolves target `i`'s chain again and brings the watches in line:
    /// new directories watched, ones no target passes through dropped.
    fn rewatch(&mut self, i: usize) {
        let dirs = chain_dirs(&self.targets[i].path);
        if dirs == self.targets[i].dirs && dirs.iter().all(|d| self.watched.contains(d)) {
            return;
        }
        self.targets[i].dirs = dirs;
        let wanted: BTreeSet<PathBuf> = self
            .targets
            .iter()
            .flat_map(|t| t.dirs.iter().cloned())
            .collect();
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for gone in self.watched.difference(&wanted) {
            let _ = w.unwatch(gone); // a deleted directory is unwatched already
        }
        self.watched.retain(|d| wanted.contains(d));
        let mut failed = None;
        for dir in wanted.difference(&self.watched.clone()) {
            match w.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                }
                Err(e) => failed = Some(format!("watching {}: {e}", dir.display())),
            }
        }
        if let Some(why) = failed {
            self.degrade(&why);
        }
    }

    /// Logs, once, that changes may only be seen by polling.
    fn degrade(&mut self, why: &str) {
        if !self.degraded {
            self.degraded = true;
            warn!(cause = %why, poll = ?self.poll, "file events unavailable for station files; polling them instead");
        }
    }
}

/// The directories whose entries decide what `path` yields: the directory
/// of the path and of every symlink hop from it, and of every symlinked
/// directory on the way, each as the real directory (canonical path).
pub fn chain_dirs(path: &Path) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    let mut budget = MAX_HOPS;
    add_chain(path, &mut dirs, &mut budget);
    dirs
}

fn add_chain(path: &Path, dirs: &mut BTreeSet<PathBuf>, budget: &mut usize) {
    let mut cur = path.to_path_buf();
    while *budget > 0 {
        *budget -= 1;
        let Some(parent) = cur.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return;
        };
        let parent = parent.to_path_buf();
        // A symlinked directory on the way (`..data`) is swapped in its
        // own directory: follow its chain too.
        let mut prefix = PathBuf::new();
        for part in parent.components() {
            prefix.push(part);
            if std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink()) {
                add_chain(&prefix, dirs, budget);
            }
        }
        dirs.insert(parent.canonicalize().unwrap_or_else(|_| parent.clone()));
        match std::fs::read_link(&cur) {
            Ok(target) => cur = parent.join(target), // an absolute target replaces
            Err(_) => return,                        // the file itself (or gone)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_chain_of_a_configmap_layout_covers_every_directory_a_swap_touches() {
        let root = std::env::temp_dir().join(format!("ringhost-chain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mount = root.join("mount");
        let real = mount.join("..2026_01");
        let other = root.join("elsewhere");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(real.join("s.wasm"), b"x").unwrap();
        std::fs::write(other.join("t.wasm"), b"y").unwrap();
        symlink("..2026_01", mount.join("..data")).unwrap();
        symlink("..data/s.wasm", mount.join("s.wasm")).unwrap();
        // A second hop out of the mount: link -> mount/s.wasm.
        symlink(mount.join("s.wasm"), root.join("link.wasm")).unwrap();

        let canon = |p: &Path| p.canonicalize().unwrap();
        let dirs = chain_dirs(&root.join("link.wasm"));
        let want: BTreeSet<PathBuf> = [canon(&root), canon(&mount), canon(&real)].into();
        assert_eq!(dirs, want);

        // Re-pointed elsewhere: the new directory is in the chain.
        std::fs::remove_file(mount.join("s.wasm")).unwrap();
        symlink(other.join("t.wasm"), mount.join("s.wasm")).unwrap();
        let dirs = chain_dirs(&root.join("link.wasm"));
        let want: BTreeSet<PathBuf> = [canon(&root), canon(&mount), canon(&other)].into();
        assert_eq!(dirs, want);

        // A symlink loop ends.
        symlink("loop-b", root.join("loop-a")).unwrap();
        symlink("loop-a", root.join("loop-b")).unwrap();
        assert_eq!(chain_dirs(&root.join("loop-a")), [canon(&root)].into());
        let _ = std::fs::remove_dir_all(&root);
    }
}
