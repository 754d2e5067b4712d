//! The deploy agent's decisions as a sans-IO state: events in, actions out.
//!
//! [`DeployState`] decides what to fetch and from whom, when a release
//! wins (publish order, conflicts, releases from the future, releases
//! refused for their signature), when to retry or give up on a source,
//! when to announce and what to relay. It never touches a socket, a file,
//! a timer or a clock: the agent ([`super::agent`]) feeds it [`Event`]s,
//! each carrying the time where it matters, and carries out the
//! [`Action`]s it returns (fetch, record, load, swap, announce, report).
//! What the store holds comes in through events too: the agent starts the
//! state from the store's records ([`DeployState::new`]) and reports every
//! change it makes on the state's behalf. Tests drive it by hand or
//! through the seeded simulation in `super::sim`, with no runtime.
//!
//! The rules themselves are told in [`super`]'s module docs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ed25519_dalek::VerifyingKey;

use super::sources::Sources;
use crate::model::sign;
use crate::model::{Announce, Conflict, Hash, MAX_AHEAD_MS, OrderKey, Payload, Release};

/// Release conflicts a node keeps for `status` (the newest ones).
pub const MAX_CONFLICTS: usize = 8;

/// A module fetched from a peer, its hash already checked against the
/// release's.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The module's bytes.
    pub bytes: Arc<Vec<u8>>,
    /// How it travelled (whole, or as a delta).
    pub payload: Payload,
    /// Bytes that travelled; 0 when the module was already in the store.
    pub wire_bytes: usize,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// The peer said it does not keep the module.
    pub missing: bool,
    /// One line naming the peer and the cause.
    pub message: String,
}

/// What happened, as the agent saw it.
#[derive(Debug)]
pub enum Event {
    /// A neighbour (`peer`) has these releases (hello, welcome, announce).
    PeerReleases {
        /// The neighbour's ring index.
        peer: usize,
        /// Its current releases.
        releases: Vec<Release>,
        /// Releases it is fetching itself (announced as on their way): it
        /// serves them as a stream while it receives them.
        coming: Vec<Release>,
        /// Current time (backoffs).
        now: Instant,
        /// Current wall-clock time, unix ms (releases from the future).
        now_ms: u64,
    },
    /// Periodic: releases seen at neighbours are looked at again (a fetch
    /// that failed is retried once its wait is over).
    Tick {
        /// Current time.
        now: Instant,
        /// Current wall-clock time, unix ms.
        now_ms: u64,
    },
    /// A fetch asked for by [`Action::Fetch`] ended.
    Fetched {
        /// The release fetched.
        release: Release,
        /// The peer asked.
        from: usize,
        /// The module, or why not.
        result: Result<Fetched, FetchError>,
        /// Current time.
        now: Instant,
    },
    /// [`Action::Record`] was carried out (`Err`: why the store refused).
    Recorded {
        /// The release.
        release: Release,
        /// Whether the module and the record were written.
        result: Result<(), String>,
        /// Current time.
        now: Instant,
    },
    /// [`Action::Keep`] was carried out and the module is kept: the
    /// release refused here can be passed on.
    Kept {
        /// The release.
        release: Release,
    },
    /// [`Action::Load`] ended: the station compiled and ran `init`, or not.
    Loaded {
        /// The release.
        release: Release,
        /// `Err`: why it does not load.
        result: Result<(), String>,
    },
    /// A release made here (push, rollback, changed file) was recorded as
    /// current and runs.
    Published {
        /// The release.
        release: Release,
    },
    /// The module with `hash` now runs as station `name` (any swap: a
    /// release, a local change, a rollback on this node).
    Running {
        /// Station name.
        name: String,
        /// The module.
        hash: Hash,
    },
}

/// What the agent is to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fetch `release`'s module from `peer`, offering the modules of its
    /// name this node keeps as delta bases; when the store already has it,
    /// take it from there (nothing travels). Answer with
    /// [`Event::Fetched`].
    Fetch {
        /// The release.
        release: Release,
        /// The peer's ring index.
        peer: usize,
        /// Why the previous source failed, when this is a retry.
        after: Option<String>,
    },
    /// Keep `bytes` and make `release` current in the store; answer with
    /// [`Event::Recorded`].
    Record {
        /// The release.
        release: Release,
        /// Its module.
        bytes: Arc<Vec<u8>>,
        /// How it travelled and how many bytes, when it did.
        fetched: Option<(Payload, usize)>,
    },
    /// Keep `bytes` (a release refused here, passed on to others); answer
    /// with [`Event::Kept`] once kept.
    Keep {
        /// The release.
        release: Release,
        /// Its module.
        bytes: Arc<Vec<u8>>,
    },
    /// Load (compile, run `init`) recorded release `release`; answer with
    /// [`Event::Loaded`].
    Load(Release),
    /// Swap the loaded station of `release` in (the one [`Event::Loaded`]
    /// was about).
    Swap(Release),
    /// Tell the successor our releases: those held, and those on their way
    /// here (relayed before the module is here).
    Announce(Announce),
    /// A deploy failed here; the running version stays. Report it.
    Fail {
        /// Station name.
        name: String,
        /// The version it is about, if a release.
        version: Option<u64>,
        /// One line: what and why.
        reason: String,
    },
    /// A release conflict, first seen now (already kept in
    /// [`DeployState::conflicts`]). Report it.
    Conflict(Conflict),
}

/// Which signed modules a node runs.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Keys trusted (empty: every module runs, signed or not).
    pub keys: Vec<VerifyingKey>,
    /// Modules this node was started with: trusted without a signature.
    pub local: Vec<Hash>,
}

/// The deploy decisions of one node.
pub struct DeployState {
    me: usize,
    trust: Trust,
    /// Per name, the store's current release.
    current: BTreeMap<String, Release>,
    /// Per name, the module running.
    running: BTreeMap<String, Hash>,
    /// Modules of current releases the store lost (moved aside as
    /// damaged): fetched back from a neighbour.
    missing: BTreeSet<Hash>,
    /// Releases being fetched or loaded, by name.
    pending: BTreeMap<String, Release>,
    /// The last releases each neighbour told us of.
    peers: BTreeMap<usize, Vec<Release>>,
    /// The releases each neighbour said it is fetching (on their way).
    coming: BTreeMap<usize, Vec<Release>>,
    /// Releases refused here for their signature: not fetched again.
    rejected: Vec<OrderKey>,
    /// Release conflicts seen here, newest last (at most [`MAX_CONFLICTS`]).
    conflicts: Vec<Conflict>,
    /// Who offered the releases being fetched, who lacks them, and who is
    /// not asked again for a while.
    sources: Sources,
    /// The newest refused release per name, passed on to the successor.
    relayed: BTreeMap<String, Release>,
}

impl DeployState {
    /// The state of node `me`, whose store holds `current` (every name's
    /// current release, version 0 included) and has lost the modules in
    /// `missing`; `running` is what runs per name.
    pub fn new(
        me: usize,
        trust: Trust,
        current: impl IntoIterator<Item = Release>,
        running: impl IntoIterator<Item = (String, Hash)>,
        missing: impl IntoIterator<Item = Hash>,
    ) -> Self {
        Self {
            me,
            trust,
            current: current.into_iter().map(|r| (r.name.clone(), r)).collect(),
            running: running.into_iter().collect(),
            missing: missing.into_iter().collect(),
            pending: BTreeMap::new(),
            peers: BTreeMap::new(),
            coming: BTreeMap::new(),
            rejected: Vec::new(),
            conflicts: Vec::new(),
            sources: Sources::default(),
            relayed: BTreeMap::new(),
        }
    }

    /// Handles one event; what to do is appended to `out`, in order.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::PeerReleases {
                peer,
                releases,
                coming,
                now,
                now_ms,
            } => {
                // A link coming up again repeats the same list: only a
                // changed one is news about which modules the peer keeps.
                let same_coming = self
                    .coming
                    .get(&peer)
                    .map_or(coming.is_empty(), |c| *c == coming);
                if self.peers.get(&peer) != Some(&releases) || !same_coming {
                    self.sources.announced(peer);
                }
                self.peers.insert(peer, releases);
                self.coming.insert(peer, coming);
                if self.consider(peer, now, now_ms, out) {
                    out.push(Action::Announce(self.announce()));
                }
            }
            Event::Tick { now, now_ms } => {
                let peers: Vec<usize> = self.peers.keys().copied().collect();
                let mut started = false;
                for peer in peers {
                    started |= self.consider(peer, now, now_ms, out);
                }
                if started {
                    out.push(Action::Announce(self.announce()));
                }
            }
            Event::Fetched {
                release,
                from,
                result,
                now,
            } => self.on_fetch_reply(release, from, result, now, out),
            Event::Recorded {
                release,
                result,
                now,
            } => self.on_recorded(release, result, now, out),
            Event::Kept { release } => {
                self.relayed.insert(release.name.clone(), release);
                out.push(Action::Announce(self.announce()));
            }
            Event::Loaded { release, result } => {
                if self.pending.get(&release.name) == Some(&release) {
                    self.pending.remove(&release.name);
                }
                if self.current.get(&release.name) != Some(&release) {
                    return; // a newer one arrived meanwhile
                }
                match result {
                    Ok(()) => out.push(Action::Swap(release)),
                    Err(e) => out.push(Action::Fail {
                        name: release.name.clone(),
                        version: Some(release.version),
                        reason: format!("{} does not load: {e}", release.label()),
                    }),
                }
            }
            Event::Published { release } => {
                self.pending.remove(&release.name);
                self.missing.remove(&release.hash);
                self.current.insert(release.name.clone(), release);
                out.push(Action::Announce(self.announce()));
            }
            Event::Running { name, hash } => {
                self.running.insert(name, hash);
            }
        }
    }

    /// Current releases (version >= 1), and releases refused here but
    /// passed on (when newer than ours): what neighbours compare.
    pub fn releases(&self) -> Vec<Release> {
        let mut out: Vec<Release> = self
            .current
            .values()
            .filter(|r| r.version > 0)
            .cloned()
            .collect();
        for r in self.relayed.values() {
            match out.iter_mut().find(|c| c.name == r.name) {
                Some(c) if r.newer_than(c) => *c = r.clone(),
                Some(_) => {}
                None => out.push(r.clone()),
            }
        }
        out
    }

    /// Releases being fetched here, newer than the current one of their
    /// name: relayed to the successor as on their way, before the module
    /// is here (one being loaded is current already).
    pub fn coming(&self) -> Vec<Release> {
        self.pending
            .values()
            .filter(|p| self.current.get(&p.name) != Some(*p))
            .cloned()
            .collect()
    }

    /// What to tell the successor: [`Self::releases`] held, and
    /// [`Self::coming`].
    pub fn announce(&self) -> Announce {
        Announce {
            held: self.releases(),
            coming: self.coming(),
        }
    }

    /// Release conflicts seen here, newest last.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// The release of `name` being fetched or loaded, if any.
    pub fn pending(&self, name: &str) -> Option<&Release> {
        self.pending.get(name)
    }

    /// The current release of `name`, as the store holds it.
    pub fn current(&self, name: &str) -> Option<&Release> {
        self.current.get(name)
    }

    /// The version and publish time of the next release of `name` made
    /// here at wall-clock time `now_ms`: a version above every one this
    /// node knows of the name (`history`, current, pending, conflicts set
    /// aside), and a publish time after what it has adopted (current,
    /// pending, and the kept side of its conflicts) and no earlier than
    /// now.
    ///
    /// # Errors
    /// See [`crate::model::next_stamp`]: the counter exhausted, or a
    /// release adopted here far in the future.
    pub fn next_stamp(&self, name: &str, history: &[Release], now_ms: u64) -> Result<(u64, u64)> {
        let conflicts = self.conflicts.iter().filter(|c| c.name == name);
        let current = self.current.get(name);
        let pending = self.pending.get(name);
        let known = history.iter().chain(current).chain(pending).chain(
            conflicts
                .clone()
                .flat_map(|c| c.kept.iter().chain(std::iter::once(&c.stale))),
        );
        let floor = current
            .into_iter()
            .chain(pending)
            .chain(conflicts.filter_map(|c| c.kept.as_ref()));
        crate::model::next_stamp(name, known, floor, now_ms)
    }

    /// Whether this node's trust settings accept `release` (its module's
    /// hash already checked).
    ///
    /// # Errors
    /// Unsigned while keys are trusted, a signer not trusted, or a bad
    /// signature: one line saying which.
    pub fn check_signature(&self, release: &Release) -> Result<()> {
        if self.trust.keys.is_empty() || self.trust.local.contains(&release.hash) {
            return Ok(());
        }
        let (Some(signer), Some(sig)) = (&release.signer, &release.signature) else {
            bail!("unsigned, and this node only runs modules signed by a trusted key");
        };
        let sig = sign::parse_hex::<64>(sig).context("signature")?;
        sign::verify(&self.trust.keys, &signer.0, &sig, &release.hash.0)
    }

    /// Starts fetching every release `peer` has (or is fetching itself)
    /// that is newer than ours; whether it started any (the successor is
    /// then told they are on their way).
    fn consider(&mut self, peer: usize, now: Instant, now_ms: u64, out: &mut Vec<Action>) -> bool {
        // Linked to ourselves (every other member down): nothing to learn,
        // and nothing to fetch from here.
        if peer == self.me {
            return false;
        }
        let Some(held) = self.peers.get(&peer) else {
            return false;
        };
        let coming = self.coming.get(&peer).into_iter().flatten();
        let list: Vec<Release> = held.iter().chain(coming).cloned().collect();
        let mut started = false;
        for rel in list {
            if rel.version == 0 || self.rejected.contains(&rel.key()) {
                continue; // refused once (hash or signature): not again
            }
            let current = self.current.get(&rel.name).cloned();
            let ahead = rel.published_ms.saturating_sub(now_ms);
            if ahead > MAX_AHEAD_MS {
                // Adopting it would make it win every comparison until the
                // clocks catch up: set aside and reported instead.
                let conflict = Conflict::future(&rel, current.as_ref(), ahead, Some(peer as u32));
                self.note_conflict(conflict, out);
                continue;
            }
            // Our own current release from the future (recorded here before
            // the clocks were put right, or by another history) orders
            // below any release published in the present.
            let own_ahead = current
                .as_ref()
                .map_or(0, |c| c.published_ms.saturating_sub(now_ms));
            let future_own = own_ahead > MAX_AHEAD_MS;
            if let Some(c) = current.as_ref().filter(|_| future_own) {
                let conflict = Conflict::future(c, Some(&rel), own_ahead, None);
                self.note_conflict(conflict, out);
            } else if let Some(c) = current.as_ref().filter(|c| rel.conflicts_with(c)) {
                let conflict = Conflict::of(&rel, c, Some(peer as u32));
                self.note_conflict(conflict, out);
            }
            if self.pending.get(&rel.name) == Some(&rel) {
                // Being fetched from another peer: this one is asked next
                // if that fails.
                self.sources.offered(&rel.name, rel.key(), peer);
                continue;
            }
            if self.sources.lacks(rel.key(), peer)
                || self.sources.backing_off(&rel.name, rel.key(), peer, now)
            {
                continue; // its fetch from this peer failed lately
            }
            // Our own current release counts as wanted when its module is
            // gone here (moved aside as damaged): fetched back like a newer
            // one. A module we have but do not run (a local rollback) is not.
            let lost = |c: &Release| {
                *c == rel
                    && self.running.get(&rel.name) != Some(&rel.hash)
                    && self.missing.contains(&rel.hash)
            };
            let newer = current
                .as_ref()
                .is_none_or(|c| (future_own && *c != rel) || rel.newer_than(c) || lost(c))
                && self
                    .pending
                    .get(&rel.name)
                    .is_none_or(|p| rel.newer_than(p));
            if !newer {
                continue;
            }
            self.pending.insert(rel.name.clone(), rel.clone());
            self.sources.asking(&rel.name, rel.key(), peer);
            // The publisher holds the module: asked should this source
            // fail (a neighbour relaying a release it never gets, or dying
            // mid-stream).
            let origin = rel.origin as usize;
            if origin != self.me && origin != peer {
                self.sources.offered(&rel.name, rel.key(), origin);
            }
            out.push(Action::Fetch {
                release: rel,
                peer,
                after: None,
            });
            started = true;
        }
        started
    }

    /// A fetch from `from` ended: a failure there moves on to the next
    /// peer that offered the release, if any.
    fn on_fetch_reply(
        &mut self,
        release: Release,
        from: usize,
        result: Result<Fetched, FetchError>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.pending.get(&release.name) != Some(&release) {
            return; // overtaken by a newer release
        }
        let e = match result {
            Ok(fetched) => return self.on_fetched(release, fetched, now, out),
            Err(e) => e,
        };
        // A peer that only said the release was on its way there and no
        // longer has it in flight gave up on it: asked again after a wait,
        // not taken for one that does not keep it.
        let held = self.peers.get(&from).is_some_and(|l| l.contains(&release));
        let missing = e.missing && held;
        let next = self
            .sources
            .failed(&release.name, release.key(), from, missing, now);
        match next {
            Some(peer) => {
                self.sources.asking(&release.name, release.key(), peer);
                out.push(Action::Fetch {
                    release,
                    peer,
                    after: Some(e.message),
                });
            }
            None => {
                self.pending.remove(&release.name);
                out.push(Action::Fail {
                    name: release.name.clone(),
                    version: Some(release.version),
                    reason: format!("{}: {}", release.label(), e.message),
                });
                // No longer on its way here.
                out.push(Action::Announce(self.announce()));
            }
        }
    }

    /// The module of pending `release` is here: checked against the trust
    /// settings, then recorded (or kept and passed on, when refused).
    fn on_fetched(
        &mut self,
        release: Release,
        fetched: Fetched,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if let Err(e) = self.check_signature(&release) {
            // Not ours to run, but the bytes are what the release names:
            // keep them and pass the release on, so nodes after this one
            // (which may trust other keys) still get it.
            self.rejected.push(release.key());
            out.push(Action::Keep {
                release: release.clone(),
                bytes: fetched.bytes,
            });
            self.give_up(&release, format!("{e:#}"), now, out);
            return;
        }
        let travelled = (fetched.wire_bytes > 0).then_some((fetched.payload, fetched.wire_bytes));
        out.push(Action::Record {
            release,
            bytes: fetched.bytes,
            fetched: travelled,
        });
    }

    fn on_recorded(
        &mut self,
        release: Release,
        result: Result<(), String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if let Err(e) = result {
            return self.give_up(&release, format!("recording it: {e}"), now, out);
        }
        self.sources.done(&release.name, release.key());
        self.missing.remove(&release.hash);
        self.current.insert(release.name.clone(), release.clone());
        // Pass it on before compiling: the next node fetches while we
        // compile.
        out.push(Action::Announce(self.announce()));
        out.push(Action::Load(release));
    }

    /// Pending `release` will not be installed here now: every peer waits
    /// before it is asked again, and the failure is reported.
    fn give_up(&mut self, release: &Release, cause: String, now: Instant, out: &mut Vec<Action>) {
        self.pending.remove(&release.name);
        self.sources
            .back_off(&release.name, release.key(), None, now);
        out.push(Action::Fail {
            name: release.name.clone(),
            version: Some(release.version),
            reason: format!("{}: {cause}", release.label()),
        });
        out.push(Action::Announce(self.announce()));
    }

    /// Keeps a release conflict and reports it (once per pair).
    fn note_conflict(&mut self, conflict: Conflict, out: &mut Vec<Action>) {
        // A release from the future is one report, whatever was kept.
        let same = |c: &Conflict| {
            c.stale.key() == conflict.stale.key()
                && (conflict.ahead_ms.is_some() && c.ahead_ms.is_some()
                    || c.kept.as_ref().map(Release::key)
                        == conflict.kept.as_ref().map(Release::key))
        };
        if self.conflicts.iter().any(same) {
            return;
        }
        self.conflicts.push(conflict.clone());
        if self.conflicts.len() > MAX_CONFLICTS {
            self.conflicts.remove(0);
        }
        out.push(Action::Conflict(conflict));
    }
}

#[cfg(test)]
mod tests;
