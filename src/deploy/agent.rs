//! The deploy agent: one task per node that owns the node's deploy state
//! (module store, release records, what runs) and does every slow thing
//! off the particle's path: fetching, checking, compiling, running `init`.
//! The node's owner task only ever receives a ready [`Station`] and swaps
//! it in between two visits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::release::{
    ConfigEntry, Conflict, Hash, MAX_AHEAD_MS, OrderKey, Payload, Release, Reply, Request, settings,
};
use super::sources::Sources;
use super::store::Store;
use super::{CONFIG_STATION, delta, sign};
use crate::config::{NodeConfig, StationSource};
use crate::observe::{EventKind, Observer};
use crate::station::{
    Inbox, KvStore, MAX_MODULE_BYTES, NodeInfo, Station, StationEnv, StationHost, StationLimits,
    read_source,
};
use crate::wire::{Frame, FrameReader, FrameWriter};

/// Bound on one fetch (connect, request, reply).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How often releases seen at neighbours are looked at again (a fetch
/// that failed is retried this often).
const RECHECK: Duration = Duration::from_secs(1);

/// Release conflicts a node keeps for `status` (the newest ones).
const MAX_CONFLICTS: usize = 8;

/// What the agent asks of the node's owner task.
pub enum OwnerCmd {
    /// Run `station` in place of the one with its name.
    Swap {
        /// The loaded, initialised station.
        station: Box<Station>,
        /// Its release version, if it is one.
        version: Option<u64>,
    },
    /// Tell the successor about our current releases.
    Announce(Vec<Release>),
}

/// Messages to the agent.
pub enum DeployMsg {
    /// A neighbour (`peer`) has these releases (hello, welcome, announce).
    PeerReleases {
        /// The neighbour's ring index.
        peer: usize,
        /// Its current releases.
        releases: Vec<Release>,
    },
    /// A request from a tool or a node, to answer on `reply`.
    Request {
        /// The request.
        req: Request,
        /// Its blob.
        blob: Bytes,
        /// Where the answer goes.
        reply: oneshot::Sender<(Reply, Bytes)>,
    },
    /// Station `name` faulted often enough to be rolled back here.
    Faulty {
        /// Station name.
        name: String,
        /// The module that faulted: a report about a module no longer
        /// running (it was replaced while the report waited) is ignored.
        hash: Hash,
        /// The last fault.
        cause: String,
    },
    /// A watched station file settled with new contents.
    FileChanged {
        /// Station name.
        name: String,
        /// The file's bytes.
        bytes: Vec<u8>,
    },
    Fetched {
        release: Release,
        /// The peer asked.
        from: usize,
        result: Result<(Arc<Vec<u8>>, Payload, usize), FetchError>,
    },
    Loaded {
        job: Job,
        result: Result<Box<Station>, String>,
    },
}

impl From<super::watch::FileChange> for DeployMsg {
    fn from(c: super::watch::FileChange) -> Self {
        Self::FileChanged {
            name: c.name,
            bytes: c.bytes,
        }
    }
}

/// Why a station is being loaded.
pub enum Job {
    /// A release received from a neighbour.
    Install(Release),
    /// A new release made here (push, rollback, file drop), published once
    /// it loads.
    Publish {
        name: String,
        config: Vec<(String, String)>,
        bytes: Arc<Vec<u8>>,
        signer: Option<Hash>,
        signature: Option<String>,
        reply: Option<oneshot::Sender<(Reply, Bytes)>>,
    },
    /// A change kept to this node (a file with --no-push-on-change, a
    /// local push).
    Local {
        name: String,
        reply: Option<oneshot::Sender<(Reply, Bytes)>>,
    },
    /// An automatic rollback on this node.
    LocalRollback { to: Release, cause: String },
}

/// One station's deploy state, as `ringhost status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationDeploy {
    /// Station name.
    pub name: String,
    /// Current release version (0: as started).
    pub version: u64,
    /// The node that published it.
    pub origin: u32,
    /// The current release's module hash.
    pub hash: Hash,
    /// The current release's publish time (unix ms; 0: as started).
    #[serde(default)]
    pub published_ms: u64,
    /// The module actually running.
    pub running: Hash,
    /// Why the last release tried here is not running, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The version `error` is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_version: Option<u64>,
    /// An automatic rollback in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
}

/// The agent's state as others read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployView {
    /// Current releases of version >= 1 (what neighbours compare).
    pub releases: Vec<Release>,
    /// Per station.
    pub stations: Vec<StationDeploy>,
    /// Modules fetched whole.
    pub fetched_full: u64,
    /// Modules fetched as deltas.
    pub fetched_delta: u64,
    /// Bytes received by fetches.
    pub fetched_bytes: u64,
    /// Release conflicts seen here (version and publish order disagreed),
    /// newest last; the newer publish was kept each time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
}

/// The node's side of the agent.
pub struct DeployHandle {
    /// Messages to the agent.
    pub tx: mpsc::Sender<DeployMsg>,
    /// Its published state.
    pub view: watch::Receiver<DeployView>,
}

/// What a node starts with: its stations and the agent to run.
pub struct Started {
    /// The stations to run, in order.
    pub stations: Vec<Station>,
    /// The inboxes of those stations.
    pub inboxes: Vec<(String, Inbox)>,
    /// The agent, to be run with [`Agent::run`].
    pub agent: Agent,
    /// The node's handle on it.
    pub handle: DeployHandle,
    /// Commands for the owner task.
    pub owner_rx: mpsc::Receiver<OwnerCmd>,
    /// The node's station files with the hash of what was read from each
    /// (what the watcher compares against).
    pub files: Vec<super::watch::WatchedFile>,
}

/// Shared pieces every station of this node is built with.
#[derive(Clone)]
struct EnvBase {
    node: NodeInfo,
    kv: KvStore,
    observer: Observer,
    epoch: Instant,
}

impl EnvBase {
    fn env(&self, name: &str, inbox: Inbox) -> StationEnv {
        StationEnv {
            station: name.into(),
            node: self.node.clone(),
            kv: self.kv.clone(),
            inbox,
            observer: self.observer.clone(),
            epoch: self.epoch,
        }
    }
}

/// What faulted: a module and its config (`None`: not known, any config).
type Faulted = (Hash, Option<Vec<(String, String)>>);

/// The deploy agent of one node.
pub struct Agent {
    config: Arc<NodeConfig>,
    host: Arc<StationHost>,
    store: Store,
    base: EnvBase,
    limits: StationLimits,
    inboxes: HashMap<String, Inbox>,
    running: HashMap<String, Hash>,
    errors: HashMap<String, (Option<u64>, String)>,
    rolled_back: HashMap<String, String>,
    /// Per name, the release swapped in last (when it was one).
    runs: HashMap<String, Release>,
    /// Per name, what faulted here often enough to be rolled back: module
    /// and config (`None`: not known, any config of that module). A
    /// rollback never returns to one of these.
    faulted: HashMap<String, Vec<Faulted>>,
    /// Names with an automatic rollback being loaded.
    rolling: Vec<String>,
    /// Releases being fetched or loaded, by name.
    pending: HashMap<String, Release>,
    /// The last releases each neighbour told us of.
    peers: HashMap<usize, Vec<Release>>,
    /// Modules this node was started with: trusted without a signature.
    local: Vec<Hash>,
    sign_key: Option<SigningKey>,
    /// Releases refused here for their signature: not fetched again.
    rejected: Vec<OrderKey>,
    /// Release conflicts seen here, newest last (at most [`MAX_CONFLICTS`]).
    conflicts: Vec<Conflict>,
    /// Who offered the releases being fetched, who lacks them, and who is
    /// not asked again for a while.
    sources: Sources,
    /// The newest refused release per name, passed on to the successor.
    relayed: std::collections::BTreeMap<String, Release>,
    /// Deltas made or received, to serve the next node without redoing.
    deltas: delta::Cache,
    counters: (u64, u64, u64),
    /// Events of the message being handled: sent after the view that
    /// shows their effect is published, so whoever sees an event and then
    /// reads the view finds it there.
    events: Vec<EventKind>,
    tx: mpsc::Sender<DeployMsg>,
    rx: mpsc::Receiver<DeployMsg>,
    owner: mpsc::Sender<OwnerCmd>,
    view: watch::Sender<DeployView>,
}

/// Loads a node's stations — the latest release it recorded for each name
/// (when it has a data dir), else what it was started with — and builds
/// its agent.
///
/// # Errors
/// When a configured station fails to load, or the data dir is unusable.
pub async fn start(
    config: Arc<NodeConfig>,
    host: Arc<StationHost>,
    node: NodeInfo,
    kv: KvStore,
    observer: Observer,
    limits: StationLimits,
) -> Result<Started> {
    let mut store = Store::open(config.deploy.data_dir.as_deref())?;
    let sign_key = match &config.deploy.sign_key {
        Some(p) => Some(sign::read_key(p)?),
        None => None,
    };
    let base = EnvBase {
        node,
        kv,
        observer,
        epoch: Instant::now(),
    };
    let mut stations = Vec::new();
    let mut inboxes = Vec::new();
    let mut local = Vec::new();
    let mut files = Vec::new();
    let mut names: Vec<String> = config.stations.iter().map(|s| s.name.clone()).collect();
    // Stations added by pushes run after the configured ones, in the order
    // they were added.
    let mut added: Vec<(u64, &String)> = store
        .records()
        .iter()
        .filter(|(name, _)| !names.contains(name))
        .map(|(name, r)| (r.added_ms, name))
        .collect();
    added.sort();
    names.extend(added.into_iter().map(|(_, n)| n.clone()));
    for name in names {
        let inbox = Inbox::default();
        let spec = config.stations.iter().find(|s| s.name == name);
        // The configured module, recorded as version 0 if nothing newer.
        let mut configured = None;
        if let Some(spec) = spec {
            let bytes = Arc::new(read_source(&spec.source).await?);
            configured = Some((spec, Arc::clone(&bytes)));
            let hash = store.put_module(Arc::clone(&bytes))?;
            local.push(hash);
            if let StationSource::File(path) = &spec.source {
                files.push(super::watch::WatchedFile {
                    name: name.clone(),
                    path: path.clone(),
                    loaded: hash,
                });
            }
            if store.record(&name).is_none() {
                store.set_current(Release {
                    name: name.clone(),
                    version: 0,
                    origin: config.index as u32,
                    hash,
                    size: bytes.len() as u64,
                    config: spec.config.clone(),
                    signer: None,
                    signature: None,
                    published_ms: 0,
                })?;
            }
        }
        let current = store.record(&name).map(|r| r.current.clone());
        let mut loaded = None;
        if let Some(rel) = current.filter(|r| r.version > 0) {
            match store.module(&rel.hash) {
                Some(bytes) => {
                    let env = base.env(&name, inbox.clone());
                    match host
                        .load_bytes(&name, &rel.config, bytes, env, limits)
                        .await
                    {
                        Ok(s) => {
                            info!(release = %rel.label(), "running the recorded release");
                            loaded = Some(s);
                        }
                        Err(e) => {
                            warn!(release = %rel.label(), cause = %e, "recorded release does not load; running the configured one")
                        }
                    }
                }
                None => warn!(release = %rel.label(), "module of the recorded release missing"),
            }
            if loaded.is_none() {
                loaded = load_older(&mut store, &host, &base, &name, &inbox, limits).await;
            }
        }
        let station = match (loaded, configured) {
            (Some(s), _) => s,
            (None, Some((spec, bytes))) => {
                let env = base.env(&name, inbox.clone());
                host.load_bytes(&name, &spec.config, bytes, env, limits)
                    .await
                    .with_context(|| format!("loading station {name:?}"))?
            }
            (None, None) => continue,
        };
        inboxes.push((name.clone(), inbox));
        stations.push(station);
    }
    let (tx, rx) = mpsc::channel(64);
    let (owner_tx, owner_rx) = mpsc::channel(16);
    let (view_tx, view_rx) = watch::channel(DeployView::default());
    let mut agent = Agent {
        config,
        host,
        store,
        base,
        limits,
        inboxes: inboxes.iter().cloned().collect(),
        running: stations
            .iter()
            .map(|s| (s.name().to_string(), s.hash()))
            .collect(),
        errors: HashMap::new(),
        rolled_back: HashMap::new(),
        runs: HashMap::new(),
        faulted: HashMap::new(),
        rolling: Vec::new(),
        pending: HashMap::new(),
        peers: HashMap::new(),
        local,
        sign_key,
        rejected: Vec::new(),
        conflicts: Vec::new(),
        sources: Sources::default(),
        relayed: Default::default(),
        deltas: delta::Cache::default(),
        counters: (0, 0, 0),
        events: Vec::new(),
        tx: tx.clone(),
        rx,
        owner: owner_tx,
        view: view_tx,
    };
    agent.publish_view();
    Ok(Started {
        stations,
        inboxes,
        agent,
        handle: DeployHandle { tx, view: view_rx },
        owner_rx,
        files,
    })
}

impl Agent {
    /// Runs until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.settle();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                Some(msg) = self.rx.recv() => self.on_msg(msg).await,
                _ = recheck.tick() => {
                    let peers: Vec<_> = self.peers.keys().copied().collect();
                    for peer in peers {
                        self.consider(peer);
                    }
                    self.settle();
                }
            }
        }
    }

    async fn on_msg(&mut self, msg: DeployMsg) {
        match msg {
            DeployMsg::PeerReleases { peer, releases } => {
                // A link coming up again repeats the same list: only a
                // changed one is news about which modules the peer keeps.
                if self.peers.get(&peer) != Some(&releases) {
                    self.sources.announced(peer);
                }
                self.peers.insert(peer, releases);
                self.consider(peer);
            }
            DeployMsg::Request { req, blob, reply } => self.on_request(req, blob, reply),
            DeployMsg::Faulty { name, hash, cause } => self.on_faulty(name, hash, cause),
            DeployMsg::FileChanged { name, bytes } => self.on_file(name, bytes),
            DeployMsg::Fetched {
                release,
                from,
                result,
            } => self.on_fetch_reply(release, from, result),
            DeployMsg::Loaded { job, result } => self.on_loaded(job, result).await,
        }
        self.settle();
    }

    /// Publishes the view, then the events that led to it.
    fn settle(&mut self) {
        self.publish_view();
        for kind in std::mem::take(&mut self.events) {
            self.base.observer.emit(self.config.index, kind);
        }
    }

    fn me(&self) -> u32 {
        self.config.index as u32
    }

    fn current(&self, name: &str) -> Option<&Release> {
        self.store.record(name).map(|r| &r.current)
    }

    /// Starts fetching every release `peer` has that is newer than ours.
    fn consider(&mut self, peer: usize) {
        // Linked to ourselves (every other member down): nothing to learn,
        // and nothing to fetch from here.
        if peer == self.config.index {
            return;
        }
        let Some(list) = self.peers.get(&peer).cloned() else {
            return;
        };
        let now_ms = crate::station::unix_ms();
        for rel in list {
            if rel.version == 0 {
                continue;
            }
            if self.rejected.contains(&rel.key()) {
                continue; // refused once (hash or signature): not again
            }
            let current = self.current(&rel.name).cloned();
            let ahead = rel.published_ms.saturating_sub(now_ms);
            if ahead > MAX_AHEAD_MS {
                // Adopting it would make it win every comparison until the
                // clocks catch up: set aside and reported instead.
                let conflict = Conflict::future(&rel, current.as_ref(), ahead, Some(peer as u32));
                self.note_conflict(conflict);
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
                self.note_conflict(conflict);
            } else if let Some(c) = current.as_ref().filter(|c| rel.conflicts_with(c)) {
                let conflict = Conflict::of(&rel, c, Some(peer as u32));
                self.note_conflict(conflict);
            }
            if self.pending.get(&rel.name) == Some(&rel) {
                // Being fetched from another peer: this one is asked next
                // if that fails.
                self.sources.offered(&rel.name, rel.key(), peer);
                continue;
            }
            if self.sources.lacks(rel.key(), peer)
                || self.sources.backing_off(&rel.name, rel.key(), peer)
            {
                continue; // its fetch from this peer failed lately
            }
            // Our own current release counts as wanted when its module is
            // gone here (moved aside as damaged): fetched back like a newer
            // one. A module we have but do not run (a local rollback) is not.
            let lost = |me: &mut Self, c: &Release| {
                *c == rel
                    && me.running.get(&rel.name) != Some(&rel.hash)
                    && me.store.module(&rel.hash).is_none()
            };
            let newer = current
                .is_none_or(|c| (future_own && c != rel) || rel.newer_than(&c) || lost(self, &c))
                && self
                    .pending
                    .get(&rel.name)
                    .is_none_or(|p| rel.newer_than(p));
            if !newer {
                continue;
            }
            debug!(release = %rel.label(), peer, "neighbour has a newer release");
            self.pending.insert(rel.name.clone(), rel.clone());
            if let Some(bytes) = self.store.module(&rel.hash) {
                // Already here (a rollback to a module we had).
                self.on_fetched(rel, Ok((bytes, Payload::Full, 0)));
                continue;
            }
            self.start_fetch(rel, peer);
        }
    }

    /// Fetches pending release `rel`'s module from `peer`; the answer
    /// comes back as [`DeployMsg::Fetched`].
    fn start_fetch(&mut self, rel: Release, peer: usize) {
        self.sources.asking(&rel.name, rel.key(), peer);
        let have_recorded = self
            .store
            .record(&rel.name)
            .map(|r| r.hashes())
            .unwrap_or_default();
        let mut have: Vec<Hash> = self.running.get(&rel.name).copied().into_iter().collect();
        have.extend(have_recorded);
        have.dedup();
        // Offer only bases we can patch.
        let bases: HashMap<Hash, Arc<Vec<u8>>> = have
            .iter()
            .filter_map(|h| self.store.module(h).map(|m| (*h, m)))
            .collect();
        have.retain(|h| bases.contains_key(h));
        let Some(addr) = self.config.ring.members().get(peer).map(|m| m.addr.clone()) else {
            self.pending.remove(&rel.name);
            return;
        };
        let max_frame = self.config.max_frame_bytes;
        let tx = self.tx.clone();
        let cache = self.deltas.clone();
        tokio::spawn(
            async move {
                let result = fetch(&addr, &rel, have, &bases, &cache, max_frame)
                    .await
                    .map_err(|e| FetchError {
                        missing: e.downcast_ref::<NotKept>().is_some(),
                        message: format!("fetching from {addr}: {e:#}"),
                    });
                let _ = tx
                    .send(DeployMsg::Fetched {
                        release: rel,
                        from: peer,
                        result,
                    })
                    .await;
            }
            .in_current_span(),
        );
    }

    /// A fetch from `from` ended: a failure there moves on to the next
    /// peer that offered the release, if any.
    fn on_fetch_reply(
        &mut self,
        release: Release,
        from: usize,
        result: Result<(Arc<Vec<u8>>, Payload, usize), FetchError>,
    ) {
        if self.pending.get(&release.name) != Some(&release) {
            return; // overtaken by a newer release
        }
        let e = match result {
            Ok(fetched) => return self.on_fetched(release, Ok(fetched)),
            Err(e) => e,
        };
        let next = self
            .sources
            .failed(&release.name, release.key(), from, e.missing);
        match next {
            Some(peer) => {
                info!(release = %release.label(), cause = %e.message, next = peer,
                    "fetch failed; asking the next neighbour that has it");
                self.start_fetch(release, peer);
            }
            None => {
                self.pending.remove(&release.name);
                self.fail(
                    &release.name,
                    Some(release.version),
                    format!("{}: {}", release.label(), e.message),
                );
            }
        }
    }

    fn on_fetched(
        &mut self,
        release: Release,
        result: Result<(Arc<Vec<u8>>, Payload, usize), String>,
    ) {
        if self.pending.get(&release.name) != Some(&release) {
            return; // overtaken by a newer release
        }
        // The bytes match the release hash: `fetch` checked what it
        // rebuilt, and the store is content-addressed.
        let checked = result.and_then(|(bytes, payload, wire_bytes)| {
            if let Err(e) = self.check_signature(&release) {
                // Not ours to run, but the bytes are what the release
                // names: keep them and pass the release on, so nodes after
                // this one (which may trust other keys) still get it.
                self.rejected.push(release.key());
                if self.store.put_module(Arc::clone(&bytes)).is_ok() {
                    self.relayed.insert(release.name.clone(), release.clone());
                    self.announce();
                }
                return Err(format!("{e:#}"));
            }
            if wire_bytes > 0 {
                match payload {
                    Payload::Full => self.counters.0 += 1,
                    Payload::Delta { .. } => self.counters.1 += 1,
                }
                self.counters.2 += wire_bytes as u64;
                info!(release = %release.label(), ?payload, bytes = wire_bytes, "module fetched");
            }
            Ok(bytes)
        });
        let recorded = checked.and_then(|bytes| {
            self.store
                .put_module(Arc::clone(&bytes))
                .and_then(|_| self.store.set_current(release.clone()))
                .map(|()| bytes)
                .map_err(|e| format!("recording it: {e:#}"))
        });
        let bytes = match recorded {
            Ok(b) => {
                self.sources.done(&release.name, release.key());
                // A rollback here was from the release this one replaces:
                // the note is not about the new one (which, until it is
                // swapped in, may be the very module the rollback runs).
                self.rolled_back.remove(&release.name);
                b
            }
            Err(e) => {
                self.pending.remove(&release.name);
                self.sources.back_off(&release.name, release.key(), None);
                self.fail(
                    &release.name,
                    Some(release.version),
                    format!("{}: {e}", release.label()),
                );
                return;
            }
        };
        // Pass it on before compiling: the next node fetches while we
        // compile.
        self.announce();
        self.spawn_load(
            release.name.clone(),
            release.config.clone(),
            bytes,
            Job::Install(release),
        );
    }

    /// Loads (compiles, runs `init`) a new version of `name` made here;
    /// once it loads it becomes a release and travels.
    fn publish(
        &self,
        name: String,
        config: Vec<(String, String)>,
        bytes: Arc<Vec<u8>>,
        signer: Option<Hash>,
        signature: Option<String>,
        reply: Option<oneshot::Sender<(Reply, Bytes)>>,
    ) {
        let job = Job::Publish {
            name: name.clone(),
            config: config.clone(),
            bytes: Arc::clone(&bytes),
            signer,
            signature,
            reply,
        };
        self.spawn_load(name, config, bytes, job);
    }

    /// Whether this node's trust settings accept `release` (its module's
    /// hash already checked by the caller).
    fn check_signature(&self, release: &Release) -> Result<()> {
        if self.config.deploy.trust.is_empty() || self.local.contains(&release.hash) {
            return Ok(());
        }
        let (Some(signer), Some(sig)) = (&release.signer, &release.signature) else {
            bail!("unsigned, and this node only runs modules signed by a trusted key");
        };
        let sig = sign::parse_hex::<64>(sig).context("signature")?;
        sign::verify(&self.config.deploy.trust, &signer.0, &sig, &release.hash.0)
    }

    fn spawn_load(
        &self,
        name: String,
        config: Vec<(String, String)>,
        bytes: Arc<Vec<u8>>,
        job: Job,
    ) {
        let host = Arc::clone(&self.host);
        let inbox = self.inboxes.get(&name).cloned().unwrap_or_default();
        let env = self.base.env(&name, inbox);
        let limits = self.limits;
        let tx = self.tx.clone();
        tokio::spawn(
            async move {
                let result = host
                    .load_bytes(&name, &config, bytes, env, limits)
                    .await
                    .map(Box::new)
                    .map_err(|e| format!("{e:#}"));
                let _ = tx.send(DeployMsg::Loaded { job, result }).await;
            }
            .in_current_span(),
        );
    }

    async fn on_loaded(&mut self, job: Job, result: Result<Box<Station>, String>) {
        match job {
            Job::Install(release) => {
                if self.pending.get(&release.name) == Some(&release) {
                    self.pending.remove(&release.name);
                }
                if self.current(&release.name) != Some(&release) {
                    return; // a newer one arrived meanwhile
                }
                match result {
                    Ok(station) => self.swap(station, Some(release.version)).await,
                    Err(e) => self.fail(
                        &release.name,
                        Some(release.version),
                        format!("{} does not load: {e}", release.label()),
                    ),
                }
            }
            Job::Publish {
                name,
                config,
                bytes,
                signer,
                signature,
                reply,
            } => {
                let station = match result {
                    Ok(s) => s,
                    Err(e) => {
                        let e = format!("refused, nothing propagates: {e}");
                        match reply {
                            Some(r) => {
                                warn!(station = %name, cause = %e, "push refused");
                                self.events.push(EventKind::DeployFailed {
                                    station: name.clone(),
                                    reason: e.clone(),
                                });
                                let _ = r.send((Reply::error(e), Bytes::new()));
                            }
                            None => self.fail(&name, None, e),
                        }
                        return;
                    }
                };
                let (version, published_ms) = match self.next_stamp(&name) {
                    Ok(stamp) => stamp,
                    Err(e) => {
                        let e = format!("publishing {name} refused, nothing propagates: {e:#}");
                        warn!(station = %name, cause = %e, "cannot publish");
                        match reply {
                            Some(r) => {
                                let _ = r.send((Reply::error(e), Bytes::new()));
                            }
                            None => self.fail(&name, None, e),
                        }
                        return;
                    }
                };
                let release = Release {
                    name: name.clone(),
                    version,
                    origin: self.me(),
                    hash: station.hash(),
                    size: bytes.len() as u64,
                    config,
                    signer,
                    signature,
                    published_ms,
                };
                let recorded = self
                    .store
                    .put_module(bytes)
                    .and_then(|_| self.store.set_current(release.clone()));
                if let Err(e) = recorded {
                    if let Some(r) = reply {
                        let _ = r.send((Reply::error(format!("{e:#}")), Bytes::new()));
                    }
                    return;
                }
                self.pending.remove(&name);
                info!(release = %release.label(), "published a release");
                self.swap(station, Some(version)).await;
                self.announce();
                if let Some(r) = reply {
                    let _ = r.send((
                        Reply {
                            release: Some(release),
                            ..Reply::default()
                        },
                        Bytes::new(),
                    ));
                }
            }
            Job::Local { name, reply } => match result {
                Ok(station) => {
                    info!(station = %name, "new version running on this node only");
                    self.swap(station, None).await;
                    if let Some(r) = reply {
                        let _ = r.send((Reply::default(), Bytes::new()));
                    }
                }
                Err(e) => {
                    let e = format!("refused: {e}");
                    match reply {
                        Some(r) => {
                            let _ = r.send((Reply::error(e), Bytes::new()));
                        }
                        None => self.fail(&name, None, e),
                    }
                }
            },
            Job::LocalRollback { to, cause } => {
                self.rolling.retain(|n| *n != to.name);
                self.on_rolled_back(to, cause, result).await;
            }
        }
    }

    /// An automatic rollback to `to` loaded (or not).
    async fn on_rolled_back(
        &mut self,
        to: Release,
        cause: String,
        result: Result<Box<Station>, String>,
    ) {
        match result {
            Ok(station) => {
                let what = format!(
                    "rolled back to v{} ({}) after repeated faults: {cause}",
                    to.version,
                    to.hash.short()
                );
                warn!(station = %to.name, "{what}");
                self.events.push(EventKind::RolledBack {
                    station: to.name.clone(),
                    cause: what.clone(),
                });
                self.rolled_back.insert(to.name.clone(), what);
                self.swap(station, Some(to.version)).await;
            }
            Err(e) => {
                self.fail(
                    &to.name,
                    None,
                    format!("rollback to v{} failed: {e}", to.version),
                );
                // Not a place to return to: try the one before.
                self.faulted
                    .entry(to.name.clone())
                    .or_default()
                    .push((to.hash, Some(to.config.clone())));
                if let Some(running) = self.running.get(&to.name).copied() {
                    self.on_faulty(to.name, running, cause);
                }
            }
        }
    }

    async fn swap(&mut self, station: Box<Station>, version: Option<u64>) {
        let name = station.name().to_string();
        self.running.insert(name.clone(), station.hash());
        let release = version.and_then(|v| {
            let record = self.store.record(&name)?;
            std::iter::once(&record.current)
                .chain(record.history.iter().rev())
                .find(|r| r.version == v && r.hash == station.hash())
                .cloned()
        });
        match release {
            Some(r) => self.runs.insert(name.clone(), r),
            None => self.runs.remove(&name),
        };
        self.errors.remove(&name);
        if version.is_some_and(|v| self.current(&name).is_some_and(|c| c.version == v)) {
            self.rolled_back.remove(&name);
        }
        self.inboxes
            .entry(name)
            .or_insert_with(|| station.inbox().clone());
        let _ = self.owner.send(OwnerCmd::Swap { station, version }).await;
    }

    fn fail(&mut self, name: &str, version: Option<u64>, reason: String) {
        warn!(station = %name, %reason, "deploy failed here; the running version stays");
        self.events.push(EventKind::DeployFailed {
            station: name.to_string(),
            reason: reason.clone(),
        });
        self.errors.insert(name.to_string(), (version, reason));
    }

    /// The version and publish time of the next release of `name` made
    /// here: a version above every one this node knows of the name
    /// (current, history, pending, conflicts set aside), and a publish time
    /// after what it has adopted (current, pending, and the kept side of
    /// its conflicts) and no earlier than now.
    ///
    /// # Errors
    /// See [`super::release::next_stamp`]: the counter exhausted, or a
    /// release adopted here far in the future.
    fn next_stamp(&self, name: &str) -> Result<(u64, u64)> {
        let record = self.store.record(name);
        let conflicts = self.conflicts.iter().filter(|c| c.name == name);
        let known = record
            .into_iter()
            .flat_map(|r| r.history.iter().chain(std::iter::once(&r.current)))
            .chain(self.pending.get(name))
            .chain(
                conflicts
                    .clone()
                    .flat_map(|c| c.kept.iter().chain(std::iter::once(&c.stale))),
            );
        let floor = record
            .map(|r| &r.current)
            .into_iter()
            .chain(self.pending.get(name))
            .chain(conflicts.filter_map(|c| c.kept.as_ref()));
        super::release::next_stamp(name, known, floor, crate::station::unix_ms())
    }

    /// Logs and keeps a release conflict (once per pair).
    fn note_conflict(&mut self, conflict: Conflict) {
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
        let message = conflict.message();
        warn!(station = %conflict.name, "{message}");
        self.events.push(EventKind::DeployConflict {
            station: conflict.name.clone(),
            message,
        });
        self.conflicts.push(conflict);
        if self.conflicts.len() > MAX_CONFLICTS {
            self.conflicts.remove(0);
        }
    }

    fn announce(&self) {
        let list = self.releases();
        let _ = self.owner.try_send(OwnerCmd::Announce(list));
    }

    /// Current releases (version >= 1), and releases refused here but
    /// passed on (when newer than ours): what neighbours compare.
    fn releases(&self) -> Vec<Release> {
        let mut out: Vec<Release> = self
            .store
            .records()
            .values()
            .filter(|r| r.current.version > 0)
            .map(|r| r.current.clone())
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

    fn publish_view(&mut self) {
        let stations = self
            .store
            .records()
            .iter()
            .filter_map(|(name, rec)| {
                let running = *self.running.get(name)?;
                Some(StationDeploy {
                    name: name.clone(),
                    version: rec.current.version,
                    origin: rec.current.origin,
                    hash: rec.current.hash,
                    published_ms: rec.current.published_ms,
                    running,
                    error: self.errors.get(name).map(|e| e.1.clone()),
                    failed_version: self.errors.get(name).and_then(|e| e.0),
                    rolled_back: self.rolled_back.get(name).cloned(),
                })
            })
            .collect();
        let view = DeployView {
            releases: self.releases(),
            stations,
            fetched_full: self.counters.0,
            fetched_delta: self.counters.1,
            fetched_bytes: self.counters.2,
            conflicts: self.conflicts.clone(),
        };
        self.view.send_if_modified(|v| {
            let changed = *v != view;
            *v = view;
            changed
        });
    }

    fn on_request(&mut self, req: Request, blob: Bytes, reply: oneshot::Sender<(Reply, Bytes)>) {
        match req {
            Request::Push {
                name,
                config,
                signer,
                signature,
                local,
            } => {
                // A config is settings: stored sorted, last value per key.
                let config = settings(&config);
                let bytes = Arc::new(blob.to_vec());
                let fake = Release {
                    name: name.clone(),
                    version: 1,
                    origin: self.me(),
                    hash: Hash::of(&bytes),
                    size: bytes.len() as u64,
                    config: config.clone(),
                    signer,
                    signature: signature.clone(),
                    published_ms: 0,
                };
                let check = check_name(&name)
                    .and_then(|()| self.check_signature(&fake))
                    .map_err(|e| format!("push of {name} refused: {e:#}"));
                if let Err(e) = check {
                    warn!(station = %name, reason = %e, "push refused");
                    let _ = reply.send((Reply::error(e), Bytes::new()));
                    return;
                }
                // What runs here is what was pushed (a release, or the
                // module the node was started with, version 0): nothing to
                // publish.
                let current = self.current(&name).filter(|c| {
                    c.hash == fake.hash
                        && settings(&c.config) == config
                        && self.running.get(&name) == Some(&c.hash)
                        && !self.rolled_back.contains_key(&name)
                });
                if let (false, Some(c)) = (local, current) {
                    info!(release = %c.label(), "push of the module already current: nothing to do");
                    let answer = Reply {
                        release: Some(c.clone()),
                        unchanged: true,
                        ..Reply::default()
                    };
                    let _ = reply.send((answer, Bytes::new()));
                    return;
                }
                info!(station = %name, bytes = bytes.len(), local, "validating a pushed module");
                if local {
                    let job = Job::Local {
                        name: name.clone(),
                        reply: Some(reply),
                    };
                    self.spawn_load(name, config, bytes, job);
                    return;
                }
                self.publish(name, config, bytes, signer, signature, Some(reply));
            }
            Request::Rollback { name } => {
                let prev = self.store.record(&name).map(|r| r.previous().cloned());
                let prev = match prev {
                    None => Err(format!("this node runs no station named {name:?}")),
                    Some(None) => Err(format!("{name} has no previous version to roll back to")),
                    Some(Some(p)) => self
                        .store
                        .module(&p.hash)
                        .map(|b| (p, b))
                        .ok_or_else(|| format!("{name}: the previous module is not kept here")),
                };
                match prev {
                    Ok((p, bytes)) => {
                        info!(station = %name, to = %p.label(), "rolling back ring-wide");
                        self.publish(name, p.config, bytes, p.signer, p.signature, Some(reply));
                    }
                    Err(e) => {
                        let _ = reply.send((Reply::error(e), Bytes::new()));
                    }
                }
            }
            Request::Fetch { release, have } => {
                let Some(target) = self.store.module(&release.hash) else {
                    let reply_missing = Reply {
                        missing: true,
                        ..Reply::error(format!("{} is not kept here", release.label()))
                    };
                    let _ = reply.send((reply_missing, Bytes::new()));
                    return;
                };
                let base = have
                    .iter()
                    .filter(|h| **h != release.hash)
                    .find_map(|h| self.store.module(h).map(|m| (*h, m)));
                let cache = self.deltas.clone();
                tokio::task::spawn_blocking(move || {
                    let mut answer = (Payload::Full, Bytes::from(target.to_vec()));
                    if let Some((base, base_bytes)) = base {
                        let d = cache.get(&base, &release.hash).or_else(|| {
                            let d = Bytes::from(delta::make(&base_bytes, &target).ok()?);
                            cache.put(base, release.hash, d.clone());
                            Some(d)
                        });
                        if let Some(d) = d.filter(|d| d.len() < target.len()) {
                            answer = (Payload::Delta { base }, d);
                        }
                    }
                    let (payload, blob) = answer;
                    let _ = reply.send((
                        Reply {
                            release: Some(release),
                            payload: Some(payload),
                            ..Reply::default()
                        },
                        blob,
                    ));
                });
            }
            Request::ConfigSet { key, value } => {
                let answer = match self.inboxes.get(CONFIG_STATION) {
                    None => Reply::error(format!(
                        "this node does not run the {CONFIG_STATION} station (start it with --station {CONFIG_STATION})"
                    )),
                    Some(inbox) => {
                        let msg = serde_json::json!({ "key": key, "value": value });
                        match inbox.push(msg.to_string().into_bytes()) {
                            Ok(()) => Reply::default(),
                            Err(e) => Reply::error(e),
                        }
                    }
                };
                let _ = reply.send((answer, Bytes::new()));
            }
            Request::ConfigGet { key } => {
                let answer = if self.inboxes.contains_key(CONFIG_STATION) {
                    Reply {
                        config: Some(self.config_entry(&key)),
                        ..Reply::default()
                    }
                } else {
                    Reply::error(format!(
                        "this node does not run the {CONFIG_STATION} station"
                    ))
                };
                let _ = reply.send((answer, Bytes::new()));
            }
        }
    }

    fn config_entry(&self, key: &str) -> ConfigEntry {
        let kv = &self.base.kv;
        #[derive(Deserialize)]
        struct Meta {
            ver: u64,
            node: u32,
        }
        let meta: Option<Meta> = kv
            .get(CONFIG_STATION, &format!("meta/{key}"))
            .and_then(|m| serde_json::from_slice(&m).ok());
        ConfigEntry {
            value: kv
                .get(CONFIG_STATION, &format!("cfg/{key}"))
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
            ver: meta.as_ref().map(|m| m.ver),
            node: meta.as_ref().map(|m| m.node),
            config_version: kv
                .get(CONFIG_STATION, "version")
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            pending: self
                .inboxes
                .get(CONFIG_STATION)
                .map_or(0, |i| i.len() as u64),
        }
    }

    /// Station `name` faulted often enough here: what runs is marked as
    /// faulted, and the node rolls back to the newest recorded release that
    /// has not faulted here (whatever ran before, a rolled-back-to version
    /// included), or says once that it keeps faulting.
    fn on_faulty(&mut self, name: String, hash: Hash, cause: String) {
        if self.rolling.contains(&name) {
            return; // a rollback is loading: what faulted is replaced soon
        }
        let Some(running) = self.running.get(&name).copied() else {
            return;
        };
        if running != hash {
            return; // about a module already replaced (a swap overtook it)
        }
        let config = self
            .runs
            .get(&name)
            .filter(|r| r.hash == running)
            .map(|r| r.config.clone());
        let faulted = self.faulted.entry(name.clone()).or_default();
        if !faulted.contains(&(running, config.clone())) {
            faulted.push((running, config));
        }
        let faulted = &self.faulted[&name];
        let has_faulted = |r: &Release| {
            faulted
                .iter()
                .any(|(h, c)| *h == r.hash && c.as_ref().is_none_or(|c| *c == r.config))
        };
        let candidates: Vec<Release> = self
            .store
            .record(&name)
            .map(|r| {
                r.history
                    .iter()
                    .rev()
                    .chain(std::iter::once(&r.current))
                    .filter(|p| !has_faulted(p))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let prev = candidates
            .into_iter()
            .find_map(|p| self.store.module(&p.hash).map(|bytes| (p, bytes)));
        let Some((prev, bytes)) = prev else {
            let what = format!("keeps faulting, nothing to roll back to: {cause}");
            if self
                .rolled_back
                .get(&name)
                .is_some_and(|r| r.starts_with("keeps faulting"))
            {
                return; // said once
            }
            warn!(station = %name, %cause, "station keeps faulting and has no version left to roll back to that has not faulted here");
            self.events.push(EventKind::RolledBack {
                station: name.clone(),
                cause: what.clone(),
            });
            self.rolled_back.insert(name, what);
            return;
        };
        self.rolling.push(name.clone());
        self.spawn_load(
            name,
            prev.config.clone(),
            bytes,
            Job::LocalRollback { to: prev, cause },
        );
    }

    fn on_file(&mut self, name: String, bytes: Vec<u8>) {
        let hash = Hash::of(&bytes);
        if self.running.get(&name) == Some(&hash) {
            return;
        }
        let config = self
            .current(&name)
            .map(|c| c.config.clone())
            .unwrap_or_default();
        if !self.config.deploy.push_on_change {
            let job = Job::Local {
                name: name.clone(),
                reply: None,
            };
            self.spawn_load(name, config, Arc::new(bytes), job);
            return;
        }
        let (signer, signature) = match &self.sign_key {
            Some(k) => (
                Some(Hash(*k.verifying_key().as_bytes())),
                Some(crate::config::hex(&sign::sign(k, &hash.0))),
            ),
            None => (None, None),
        };
        let bytes = Arc::new(bytes);
        let probe = Release {
            name: name.clone(),
            version: 1,
            origin: self.me(),
            hash,
            size: bytes.len() as u64,
            config: config.clone(),
            signer,
            signature: signature.clone(),
            published_ms: 0,
        };
        if let Err(e) = self.check_signature(&probe) {
            self.fail(
                &name,
                None,
                format!("changed file refused: {e:#} (give the node --key to sign its own files)"),
            );
            return;
        }
        info!(station = %name, bytes = bytes.len(), "station file changed; validating");
        self.publish(name, config, bytes, signer, signature, None);
    }
}

/// The newest older release of `name` whose module is on disk (verified
/// by its hash) and loads, run while the recorded one is missing or
/// damaged; the neighbours bring that one back.
async fn load_older(
    store: &mut Store,
    host: &Arc<StationHost>,
    base: &EnvBase,
    name: &str,
    inbox: &Inbox,
    limits: StationLimits,
) -> Option<Station> {
    let record = store.record(name)?;
    let current = record.current.clone();
    let older: Vec<Release> = record
        .history
        .iter()
        .rev()
        .filter(|r| r.hash != current.hash)
        .cloned()
        .collect();
    for r in older {
        let Some(bytes) = store.module(&r.hash) else {
            continue;
        };
        let env = base.env(name, inbox.clone());
        if let Ok(s) = host.load_bytes(name, &r.config, bytes, env, limits).await {
            warn!(
                release = %current.label(),
                meanwhile = %r.label(),
                "the recorded release cannot run here; running an older one until a neighbour brings it back"
            );
            return Some(s);
        }
    }
    None
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "station name {name:?}: use 1-64 letters, digits, '-' or '_'"
        ))
    }
}

/// Why a fetch failed.
pub struct FetchError {
    /// The peer said it does not keep the module.
    missing: bool,
    /// One line naming the peer and the cause.
    message: String,
}

/// A peer's answer that it does not keep the module asked for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotKept(String);

/// Fetches `release`'s module from the node at `addr`, offering `have` as
/// delta bases; rebuilds and checks it. Returns the module, how it came
/// and the bytes that travelled.
async fn fetch(
    addr: &str,
    release: &Release,
    have: Vec<Hash>,
    bases: &HashMap<Hash, Arc<Vec<u8>>>,
    cache: &delta::Cache,
    max_frame: usize,
) -> Result<(Arc<Vec<u8>>, Payload, usize)> {
    let (reply, blob) = request(
        addr,
        Request::Fetch {
            release: release.clone(),
            have,
        },
        Bytes::new(),
        max_frame,
        FETCH_TIMEOUT,
    )
    .await?;
    if let Some(e) = reply.error {
        if reply.missing {
            return Err(NotKept(e).into());
        }
        bail!("{e}");
    }
    let payload = reply.payload.context("reply without a payload")?;
    let bytes = match &payload {
        Payload::Full => blob.to_vec(),
        Payload::Delta { base } => {
            let base_bytes = bases
                .get(base)
                .with_context(|| format!("delta against {}, which we do not have", base.short()))?;
            delta::apply(base_bytes, &blob, MAX_MODULE_BYTES)?
        }
    };
    if Hash::of(&bytes) != release.hash {
        bail!("rebuilt module does not match the release hash");
    }
    if let Payload::Delta { base } = &payload {
        cache.put(*base, release.hash, blob.clone());
    }
    Ok((Arc::new(bytes), payload, blob.len()))
}

/// One request/reply exchange on a fresh connection to a node's ring port.
///
/// # Errors
/// When the node cannot be reached, answers with something else, or not
/// within `limit`.
pub async fn request(
    addr: &str,
    req: Request,
    blob: Bytes,
    max_frame: usize,
    limit: Duration,
) -> Result<(Reply, Bytes)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut writer = FrameWriter::new(w, max_frame);
        let mut reader = FrameReader::new(r, max_frame);
        writer.write_frame(&Frame::Request(req, blob)).await?;
        let answer = reader
            .read_frame()
            .await
            .map_err(|e| e.in_answer_of(addr))?;
        match answer {
            Some(Frame::Reply(reply, blob)) => Ok((reply, blob)),
            Some(other) => Err(anyhow!("unexpected {} in answer", other.kind_name())),
            None => Err(anyhow!("{addr} closed the connection without answering")),
        }
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| anyhow!("no answer from {addr} within {limit:?}"))?
}
