//! The deploy agent: one task per node that owns the node's deploy state
//! (module store, release records, what runs) and does every slow thing
//! off the particle's path: fetching, checking, compiling, running `init`.
//! The node's owner task only ever receives a ready [`Station`] and swaps
//! it in between two visits.
//!
//! The decisions (what to fetch from whom, when a release wins, when to
//! retry, what to announce) are [`DeployState`]'s; the agent is the shell
//! that feeds it events and carries out its actions with the store, the
//! network and the station host.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

pub use super::decide::FetchError;
use super::decide::{Action, DeployState, Event, Fetched, Trust};
use super::store::Store;
use super::{CONFIG_STATION, delta, sign};
use crate::config::{NodeConfig, StationSource};
use crate::model::{
    Announce, ConfigEntry, Conflict, Hash, Payload, Release, Reply, Request, settings,
};
use crate::observe::{EventKind, Observer};
use crate::station::{
    FaultReport, Inbox, Inboxes, KvStore, MAX_MODULE_BYTES, NodeInfo, SetStore, Station,
    StationEnv, StationHost, StationId, StationLimits, read_source,
};
use crate::wire::{Frame, FrameReader, FrameWriter};

mod boot;
mod local;
mod net;
mod requests;
pub mod stream;

pub use boot::start;
pub use net::request;

/// Bound on one fetch (connect, request, reply).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How often releases seen at neighbours are looked at again (a fetch
/// that failed is retried this often).
const RECHECK: Duration = Duration::from_secs(1);

/// What the agent asks of the node's owner task.
pub enum OwnerCmd {
    /// Run `station` in place of the one with its name.
    Swap {
        /// The loaded, initialised station.
        station: Box<Station>,
        /// Its release version, if it is one.
        version: Option<u64>,
    },
    /// Tell the successor about our releases (held, and on their way).
    Announce(Announce),
}

/// The agent's answer to a member's fetch on the ring port.
pub enum Served {
    /// A reply and its blob (the module, a delta, or nothing on error).
    Whole(Reply, Bytes),
    /// A reply with [`Reply::stream`] set, then the module as it arrives
    /// here ([`stream::serve_stream`]).
    Stream(Reply, Arc<stream::Inflight>),
}

/// Messages to the agent.
pub enum DeployMsg {
    /// A neighbour (`peer`) has these releases (hello, welcome, announce).
    PeerReleases {
        /// The neighbour's ring index.
        peer: usize,
        /// Its current releases.
        releases: Vec<Release>,
        /// Releases it is fetching (on their way there).
        coming: Vec<Release>,
    },
    /// A member's module fetch on the ring port: answered whole, or
    /// streamed while the module is still on its way here (`stream`: the
    /// asker takes a stream).
    Fetch {
        /// The release wanted.
        release: Release,
        /// Modules the asker has (delta bases), best first.
        have: Vec<Hash>,
        /// The asker takes a streamed answer.
        stream: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<Served>,
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
    /// A station faulted often enough to be rolled back here. The report
    /// names exactly what faulted (module, config, release version): one
    /// about a station no longer running (replaced while the report
    /// waited, maybe by the same module as another release) is ignored.
    Faulty(FaultReport),
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
    /// The version of the release running (which, after an automatic
    /// rollback, is older than `version`); `None`: the module the node was
    /// started with, one run on this node only, or a node older than this
    /// field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_version: Option<u64>,
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

impl StationDeploy {
    /// Whether the member runs `release` itself: its module *and* its
    /// version (one module runs as several releases, with other configs).
    /// A report without `running_version` (a node older than that field,
    /// or a module the node was started with) is judged by the module and
    /// by whether `release` is the member's current one.
    pub fn runs(&self, release: &Release) -> bool {
        self.running == release.hash
            && match self.running_version {
                Some(v) => v == release.version,
                None => self.version == release.version && self.hash == release.hash,
            }
    }

    /// The version of the release running, as well as this report tells:
    /// `running_version`, else (a node older than that field, or the
    /// module it was started with) the current version when the current
    /// module runs; `None`: a module that is no release.
    pub fn running_release(&self) -> Option<u64> {
        self.running_version
            .or_else(|| (self.running == self.hash).then_some(self.version))
    }

    /// What runs, in words: `v1 (e4aa3580bfd0)`, or `module …` when it is
    /// no release.
    pub fn running_label(&self) -> String {
        match self.running_release() {
            Some(v) => format!("v{v} ({})", self.running.short()),
            None => format!("module {}", self.running.short()),
        }
    }
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
    /// Bytes received by fetches (whole and delta).
    pub fetched_bytes: u64,
    /// Of those, bytes of modules fetched whole.
    #[serde(default)]
    pub fetched_bytes_full: u64,
    /// Of those, bytes of deltas.
    #[serde(default)]
    pub fetched_bytes_delta: u64,
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
    /// The inboxes of the node's stations, those started with and those
    /// that run later (shared with the agent, which registers them).
    pub inboxes: Inboxes,
    /// The node's published sets (shared with every station).
    pub sets: SetStore,
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
    sets: SetStore,
}

impl EnvBase {
    fn env(&self, name: &str, inbox: Inbox) -> StationEnv {
        StationEnv {
            station: name.into(),
            node: self.node.clone(),
            kv: self.kv.clone(),
            inbox,
            sets: self.sets.clone(),
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
    inboxes: Inboxes,
    running: HashMap<String, Hash>,
    /// Per name, exactly what was swapped in last (module, config,
    /// release version): what a fault report must name to count.
    ids: HashMap<String, StationId>,
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
    sign_key: Option<SigningKey>,
    /// The decisions: what to fetch, from whom, what wins.
    state: DeployState,
    /// Deltas made or received, to serve the next node without redoing.
    deltas: delta::Cache,
    /// Modules being fetched here, by hash: served onwards while they
    /// arrive (one copy each; dropped once the fetch ends).
    inflight: HashMap<Hash, Arc<stream::Inflight>>,
    /// Idle fetch connections, reused by the next fetch.
    pool: stream::Pool,
    /// Fetches and their bytes so far: (whole, delta) counts, then
    /// (whole, delta) bytes.
    counters: ([u64; 2], [u64; 2]),
    /// Events of the message being handled: sent after the view that
    /// shows their effect is published, so whoever sees an event and then
    /// reads the view finds it there.
    events: Vec<EventKind>,
    tx: mpsc::Sender<DeployMsg>,
    rx: mpsc::Receiver<DeployMsg>,
    owner: mpsc::Sender<OwnerCmd>,
    view: watch::Sender<DeployView>,
    /// The fetches and loads this agent started: each ends at `stop`, and
    /// [`Agent::run`] returns only once they have.
    tasks: TaskTracker,
    /// The node stops (set from `run`'s token).
    stop: CancellationToken,
}

/// Bound on the wait for the agent's fetches and loads once the node
/// stops (each ends at the stop; a compile already running on a blocking
/// thread is left to finish there, unawaited).
const TASKS_STOP_WAIT: Duration = Duration::from_secs(5);

impl Agent {
    /// Runs until `cancel`, then waits (at most [`TASKS_STOP_WAIT`]) for
    /// the fetches and loads it started, which end at `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.stop = cancel.clone();
        self.serve(&cancel).await;
        self.tasks.close();
        if tokio::time::timeout(TASKS_STOP_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = self.tasks.len(),
                "deploy tasks still running after the stop; left behind"
            );
        }
    }

    /// Starts `task` as one of the agent's tracked tasks; it is dropped
    /// when the node stops.
    fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = task => {}
                }
            }
            .in_current_span(),
        );
    }

    async fn serve(&mut self, cancel: &CancellationToken) {
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.settle();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                Some(msg) = self.rx.recv() => self.on_msg(msg).await,
                _ = recheck.tick() => {
                    let tick = Event::Tick { now: Instant::now(), now_ms: crate::station::unix_ms() };
                    self.apply(tick, None).await;
                    self.settle();
                }
            }
        }
    }

    async fn on_msg(&mut self, msg: DeployMsg) {
        match msg {
            DeployMsg::PeerReleases {
                peer,
                releases,
                coming,
            } => {
                let event = Event::PeerReleases {
                    peer,
                    releases,
                    coming,
                    now: Instant::now(),
                    now_ms: crate::station::unix_ms(),
                };
                self.apply(event, None).await;
            }
            DeployMsg::Request { req, blob, reply } => self.on_request(req, blob, reply),
            DeployMsg::Fetch {
                release,
                have,
                stream,
                reply,
            } => {
                let answer = requests::Answer::new(move |served| {
                    let _ = reply.send(served);
                });
                self.on_fetch(release, have, stream, answer);
            }
            DeployMsg::Faulty(report) => self.on_faulty(report),
            DeployMsg::FileChanged { name, bytes } => self.on_file(name, bytes),
            DeployMsg::Fetched {
                release,
                from,
                result,
            } => {
                // Bytes already streamed onwards cannot be taken back: a
                // failed fetch that got some cuts the streams reading it,
                // and a retry starts a fresh copy.
                let started = |m: &Arc<stream::Inflight>| m.received() > 0;
                if result.is_err()
                    && self.inflight.get(&release.hash).is_some_and(started)
                    && let Some(m) = self.inflight.remove(&release.hash)
                {
                    m.fail();
                }
                let ok = result.is_ok();
                let result = result.map(|(bytes, payload, wire_bytes)| Fetched {
                    bytes,
                    payload,
                    wire_bytes,
                });
                let event = Event::Fetched {
                    release: release.clone(),
                    from,
                    result,
                    now: Instant::now(),
                };
                self.apply(event, None).await;
                // Done (kept in the store now), or given up on.
                let fetching = self.state.pending(&release.name) == Some(&release) && !ok;
                if !fetching {
                    let gone = self.inflight.remove(&release.hash);
                    if let Some(m) = gone.filter(|_| !ok) {
                        m.fail();
                    }
                }
            }
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

    /// Feeds `event` to the decisions and carries out what they ask, with
    /// the events that carrying it out produces, until none is left.
    /// `station` is the loaded station an [`Event::Loaded`] is about.
    async fn apply(&mut self, event: Event, mut station: Option<Box<Station>>) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            let mut actions = Vec::new();
            self.state.handle(event, &mut actions);
            for action in actions {
                self.execute(action, &mut station, &mut events).await;
            }
        }
    }

    /// Carries out one action; what it leads to is queued on `events`.
    async fn execute(
        &mut self,
        action: Action,
        station: &mut Option<Box<Station>>,
        events: &mut VecDeque<Event>,
    ) {
        match action {
            Action::Fetch {
                release,
                peer,
                after,
            } => {
                match after {
                    Some(cause) => info!(release = %release.label(), %cause, next = peer,
                        "fetch failed; asking the next neighbour that has it"),
                    None => {
                        debug!(release = %release.label(), peer, "neighbour has a newer release")
                    }
                }
                if let Some(bytes) = self.store.module(&release.hash) {
                    // Already here (a rollback to a module we had).
                    events.push_back(Event::Fetched {
                        release,
                        from: peer,
                        result: Ok(Fetched {
                            bytes,
                            payload: Payload::Full,
                            wire_bytes: 0,
                        }),
                        now: Instant::now(),
                    });
                    return;
                }
                if let Err(e) = self.start_fetch(release.clone(), peer) {
                    events.push_back(Event::Fetched {
                        release,
                        from: peer,
                        result: Err(e),
                        now: Instant::now(),
                    });
                }
            }
            Action::Record {
                release,
                bytes,
                fetched,
            } => {
                if let Some((payload, wire_bytes)) = fetched {
                    let kind = usize::from(matches!(payload, Payload::Delta { .. }));
                    self.counters.0[kind] += 1;
                    self.counters.1[kind] += wire_bytes as u64;
                    info!(release = %release.label(), ?payload, bytes = wire_bytes, "module fetched");
                }
                let result = self
                    .store
                    .put_module(bytes)
                    .and_then(|_| self.store.set_current(release.clone()))
                    .map_err(|e| format!("{e:#}"));
                if result.is_ok() {
                    // A rollback here was from the release this one
                    // replaces: the note is not about the new one (which,
                    // until it is swapped in, may be the very module the
                    // rollback runs).
                    self.rolled_back.remove(&release.name);
                }
                events.push_back(Event::Recorded {
                    release,
                    result,
                    now: Instant::now(),
                });
            }
            Action::Keep { release, bytes } => {
                if self.store.put_module(bytes).is_ok() {
                    events.push_back(Event::Kept { release });
                }
            }
            Action::Load(release) => match self.store.module(&release.hash) {
                Some(bytes) => self.spawn_load(
                    release.name.clone(),
                    release.config.clone(),
                    bytes,
                    Job::Install(release),
                ),
                None => events.push_back(Event::Loaded {
                    result: Err(format!(
                        "the module of {} is not kept here",
                        release.label()
                    )),
                    release,
                }),
            },
            Action::Swap(release) => {
                if let Some(station) = station.take() {
                    self.swap(station, Some(release.version)).await;
                }
            }
            Action::Announce(announce) => {
                let _ = self.owner.try_send(OwnerCmd::Announce(announce));
            }
            Action::Fail {
                name,
                version,
                reason,
            } => self.fail(&name, version, reason),
            Action::Conflict(conflict) => {
                let message = conflict.message();
                warn!(station = %conflict.name, "{message}");
                self.events.push(EventKind::DeployConflict {
                    station: conflict.name.clone(),
                    message,
                });
            }
        }
    }

    fn spawn_load(
        &self,
        name: String,
        config: Vec<(String, String)>,
        bytes: Arc<Vec<u8>>,
        job: Job,
    ) {
        let host = Arc::clone(&self.host);
        let inbox = self.inboxes.get(&name).unwrap_or_default();
        let env = self.base.env(&name, inbox);
        let limits = self.limits;
        let tx = self.tx.clone();
        self.spawn_task(async move {
            let result = host
                .load_bytes(&name, &config, bytes, env, limits)
                .await
                .map(Box::new)
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send(DeployMsg::Loaded { job, result }).await;
        });
    }

    async fn on_loaded(&mut self, job: Job, result: Result<Box<Station>, String>) {
        match job {
            Job::Install(release) => {
                let (station, result) = match result {
                    Ok(station) => (Some(station), Ok(())),
                    Err(e) => (None, Err(e)),
                };
                self.apply(Event::Loaded { release, result }, station).await;
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
                info!(release = %release.label(), "published a release");
                self.swap(station, Some(version)).await;
                let published = Event::Published {
                    release: release.clone(),
                };
                self.apply(published, None).await;
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

    async fn swap(&mut self, mut station: Box<Station>, version: Option<u64>) {
        station.set_version(version);
        let name = station.name().to_string();
        self.running.insert(name.clone(), station.hash());
        self.ids.insert(name.clone(), station.id());
        let running = Event::Running {
            name: name.clone(),
            hash: station.hash(),
        };
        self.state.handle(running, &mut Vec::new());
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
        self.inboxes.insert_if_absent(&name, station.inbox());
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
    /// here now: see [`DeployState::next_stamp`].
    ///
    /// # Errors
    /// See [`crate::model::next_stamp`]: the counter exhausted, or a
    /// release adopted here far in the future.
    fn next_stamp(&self, name: &str) -> Result<(u64, u64)> {
        let history = self
            .store
            .record(name)
            .map_or(&[][..], |r| r.history.as_slice());
        self.state
            .next_stamp(name, history, crate::station::unix_ms())
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
                    running_version: self
                        .runs
                        .get(name)
                        .filter(|r| r.hash == running)
                        .map(|r| r.version),
                    error: self.errors.get(name).map(|e| e.1.clone()),
                    failed_version: self.errors.get(name).and_then(|e| e.0),
                    rolled_back: self.rolled_back.get(name).cloned(),
                })
            })
            .collect();
        let view = DeployView {
            releases: self.state.releases(),
            stations,
            fetched_full: self.counters.0[0],
            fetched_delta: self.counters.0[1],
            fetched_bytes: self.counters.1[0] + self.counters.1[1],
            fetched_bytes_full: self.counters.1[0],
            fetched_bytes_delta: self.counters.1[1],
            conflicts: self.state.conflicts().to_vec(),
        };
        self.view.send_if_modified(|v| {
            let changed = *v != view;
            *v = view;
            changed
        });
    }
}
