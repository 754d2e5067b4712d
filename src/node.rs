//! One ring node: wiring only. It binds the ring protocol
//! ([`crate::ring::state`]) to sockets, timers and the station pipeline.
//!
//! Tasks, each owning its piece of state:
//! - the **owner** task owns the [`RingState`] and the [`Pipeline`]; it
//!   runs the stations inline (the particle is at this node, nothing else
//!   waits on it), ticks the protocol every [`TICK`], and is the only one
//!   that decides what goes on which link;
//! - a **downlink** task per successor link (dial or probe) owns that
//!   socket: it writes what the owner queues, pings every heartbeat
//!   interval, and reports pongs, custody acks and the link's end;
//! - the **accept** task spawns an **upstream** task per connection on the
//!   ring port, which checks the hello (or answers a status request),
//!   answers pings, forwards particles to the owner and writes its acks.
//!
//! A peer's bad input ends that peer's connection, logged once; it never
//! ends the node. Everything stops when the node's cancellation token is
//! cancelled ([`NodeHandle::shutdown`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::admin;
use crate::config::NodeConfig;
use crate::deploy::agent::{self as deploy, DeployMsg, DeployView, OwnerCmd};
use crate::deploy::release::{Release, Reply};
use crate::lograte::LogBackoff;
use crate::metrics::Metrics;
use crate::observe::{Bus, EventKind, Observer};
use crate::ring::state::{
    Action, Beacon, DialResult, DropReason, Event, LinkId, Origin, RingState, UpstreamId,
};
use crate::ring::token::{Alive, Particle, ParticleId};
use crate::station::{Inbox, KvStore, NodeInfo, Pipeline, StationHost, StationLimits, StopBase};
use crate::status::{self, Samples};
use crate::wire::{Frame, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION, Refuse, Welcome};

/// How often the owner ticks the protocol (deadlines are checked at this
/// granularity).
pub const TICK: Duration = Duration::from_millis(20);

/// The write half of a successor link, shared by the owner (particles,
/// written directly: no task hop on the hot path) and the link's task
/// (pings). Held only for one frame's write.
type SharedWriter = Arc<tokio::sync::Mutex<FrameWriter<OwnedWriteHalf>>>;

/// What this node's pings say of the particle: the owner writes it after
/// every protocol event (a short lock, no wake-up) and wakes the link tasks
/// through `news` only when the word is fresher by half a heartbeat than
/// the last news, so the particle's hot path costs no extra wake-up.
#[derive(Default)]
struct BeaconCell {
    value: std::sync::Mutex<Option<Beacon>>,
    news: tokio::sync::Notify,
}

/// The custody acknowledgement an upstream connection owes its sender:
/// written by the owner, sent by the upstream task with its next pong, so
/// acks cost no extra wake-up on the particle's path.
type AckSlot = Arc<std::sync::Mutex<Option<(ParticleId, u64)>>>;

/// An established successor link, as the owner holds it.
struct Downlink {
    writer: SharedWriter,
    task: JoinHandle<()>,
}

impl Downlink {
    /// Writes one frame within `limit`; whether it went out.
    async fn write(&self, frame: &Frame, limit: Duration) -> bool {
        let mut w = self.writer.lock().await;
        matches!(timeout(limit, w.write_frame(frame)).await, Ok(Ok(())))
    }
}

impl Drop for Downlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Messages from the node's helper tasks to its owner task.
enum Msg {
    Particle {
        particle: Particle,
        from: UpstreamId,
        ack: AckSlot,
    },
    UpstreamAlive(Option<Alive>),
    UpstreamClosed(UpstreamId),
    Dialed {
        link: LinkId,
        result: DialResult,
        downlink: Option<Downlink>,
    },
    Heard(LinkId),
    /// The successor on this link is stopping cleanly.
    Left(LinkId),
    Forwarded {
        link: LinkId,
        id: ParticleId,
        hop: u64,
    },
    LinkLost {
        link: LinkId,
        why: String,
    },
    Status(oneshot::Sender<String>),
    /// A successor refused us as a second process of our member: this
    /// process is the duplicate and stops.
    Duplicate(String),
}

/// A running node. Dropping it cancels the node without waiting; call
/// [`NodeHandle::shutdown`] to wait for every task to end.
pub struct NodeHandle {
    addr: SocketAddr,
    index: usize,
    cancel: CancellationToken,
    tracker: TaskTracker,
    owner: Option<JoinHandle<Result<()>>>,
    kv: KvStore,
    inboxes: Vec<(String, Inbox)>,
    deploy_view: watch::Receiver<DeployView>,
    admin: Option<SocketAddr>,
    bus: Arc<Bus>,
}

impl NodeHandle {
    /// The address the admin API is bound to (`None`: off).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The node's event bus and metrics (what the admin API serves).
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// The node's deploy state (releases, what runs), as it changes.
    pub fn deploy_view(&self) -> watch::Receiver<DeployView> {
        self.deploy_view.clone()
    }

    /// The address the ring port is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node's index in the ring.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The node's kv store (all stations' namespaces).
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// The inbox of station `name`, if the node runs it.
    pub fn inbox(&self, name: &str) -> Option<&Inbox> {
        self.inboxes.iter().find(|(n, _)| n == name).map(|(_, i)| i)
    }

    /// A token that stops the node when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits until the node stops by itself or its token is cancelled, and
    /// returns the owner task's result.
    ///
    /// # Errors
    /// When the owner task failed or panicked.
    pub async fn wait(mut self) -> Result<()> {
        let owner = self.owner.take().expect("owner handle present");
        let result = owner.await.context("node task panicked")?;
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        result
    }

    /// Stops the node and waits for all of its tasks.
    ///
    /// # Errors
    /// When the owner task failed or panicked.
    pub async fn shutdown(self) -> Result<()> {
        self.cancel.cancel();
        self.wait().await
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts a node on an already-bound listener (tests bind port 0 and pass
/// the listener in, so no port is ever raced).
///
/// # Errors
/// When the config is invalid or a station fails to load or initialise.
pub async fn start(
    config: NodeConfig,
    listener: TcpListener,
    host: Arc<StationHost>,
    observer: Observer,
) -> Result<NodeHandle> {
    config.validate()?;
    let addr = listener
        .local_addr()
        .context("reading the listener address")?;
    let admin_listener = match &config.admin {
        Some(a) => Some(admin::server::bind(a).await?),
        None => None,
    };
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr().context("reading the admin address")?),
        None => None,
    };
    let bus = Bus::new(Arc::new(Metrics::new()));
    bus.metrics()
        .live_members
        .set(i64::try_from(config.ring.len()).unwrap_or(i64::MAX));
    let observer = observer.with_bus(Arc::clone(&bus));
    let me = config.me().clone();
    let node_info = NodeInfo {
        name: me.name.clone(),
        index: config.index as u32,
        ring_size: config.ring.len() as u32,
        ring_hash: config.ring.hash().to_string(),
    };
    let span = info_span!("node", idx = config.index);
    let kv = KvStore::default();
    let limits = StationLimits {
        call_timeout: config.station_timeout(),
        memory_bytes: config.station_memory_bytes,
        rollback_after: config.deploy.rollback_after,
        rollback_window: Duration::from_millis(config.deploy.rollback_window_ms),
    };
    let config = Arc::new(config);
    let started = deploy::start(
        Arc::clone(&config),
        Arc::clone(&host),
        node_info,
        kv.clone(),
        observer.clone(),
        limits,
    )
    .instrument(span.clone())
    .await?;
    let pipeline = Pipeline::new(started.stations, config.index);
    let inboxes = started.inboxes;
    let deploy_tx = started.handle.tx.clone();
    let deploy_view = started.handle.view.clone();

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (tx, rx) = mpsc::channel(256);
    let (seen_tx, seen_rx) = watch::channel(None);

    tracker.spawn(started.agent.run(cancel.clone()).instrument(span.clone()));
    if let Some(hook) = &config.deploy.before_watch {
        (hook.0)();
    }
    if config.deploy.watch {
        let _entered = span.enter();
        let watch = crate::deploy::watch::start(
            started.files,
            Duration::from_millis(config.deploy.settle_ms),
            Duration::from_millis(config.deploy.poll_ms),
            deploy_tx.clone(),
            cancel.clone(),
        );
        tracker.spawn(watch.instrument(span.clone()));
    }

    // Cancelled by the owner once it has passed on a particle it held (or
    // found none) while stopping: only then do the upstream links say the
    // node leaves, so no predecessor resends what this node is still
    // visiting.
    let released = CancellationToken::new();
    tracker.spawn(
        accept_loop(
            listener,
            Upstreams {
                config: Arc::clone(&config),
                tx: tx.clone(),
                seen: seen_rx,
                observer: observer.clone(),
                cancel: cancel.clone(),
                released: released.clone(),
                deploy_tx: deploy_tx.clone(),
                deploy_view: deploy_view.clone(),
                claims: Claims::default(),
                log: Arc::default(),
            },
            tracker.clone(),
        )
        .instrument(span.clone()),
    );
    let owner = Owner {
        state: RingState::new(config.ring_params(), Instant::now()),
        config: Arc::clone(&config),
        pipeline,
        observer,
        tx,
        deploy_tx,
        deploy_view: deploy_view.clone(),
        links: HashMap::new(),
        upstreams: HashMap::new(),
        hold_until: None,
        seen_tx,
        beacon: Arc::default(),
        beacon_news: None,
        refusals: LogBackoff::default(),
        instance: rand::random::<u64>() | 1,
        fatal: None,
        linked: None,
        stats: Stats::default(),
        started: Instant::now(),
        addr,
        admin_addr,
        kv: kv.clone(),
        cancel: cancel.clone(),
        released,
        tracker: tracker.clone(),
    };
    if let (Some(listener), Some(settings)) = (admin_listener, &config.admin) {
        let ask = owner.tx.clone();
        let status: admin::server::StatusFn = Arc::new(move || {
            let ask = ask.clone();
            Box::pin(async move {
                let (otx, orx) = oneshot::channel();
                ask.send(Msg::Status(otx)).await.ok()?;
                serde_json::from_str(&orx.await.ok()?).ok()
            })
        });
        let ctx = admin::server::AdminContext {
            config: settings.clone(),
            index: config.index,
            ring: config.ring.clone(),
            status,
            deploy_tx: owner.deploy_tx.clone(),
            deploy_view: deploy_view.clone(),
            kv: kv.clone(),
            inboxes: inboxes.clone(),
            bus: Arc::clone(&bus),
        };
        tracker.spawn(admin::server::serve(listener, ctx, cancel.clone()).instrument(span.clone()));
    }
    info!(
        parent: &span,
        addr = %addr,
        admin = %admin_addr.map_or("off".to_string(), |a| format!("http://{a}")),
        name = %me.name,
        ring = %config.ring.describe(),
        ring_hash = &config.ring.hash()[..12],
        stations = ?owner.pipeline.stations().iter().map(|s| s.name()).collect::<Vec<_>>(),
        "node started"
    );
    let owner = tracker.spawn(owner.run(rx, started.owner_rx).instrument(span));
    Ok(NodeHandle {
        addr,
        index: config.index,
        cancel,
        tracker,
        owner: Some(owner),
        kv,
        inboxes,
        deploy_view,
        admin: admin_addr,
        bus,
    })
}

/// Measurements the owner keeps for `ringhost status`.
#[derive(Default)]
struct Stats {
    laps: Samples,
    stays: Samples,
    /// When the particle now here arrived, to time its stay.
    arrived: Option<Instant>,
    visits: u64,
    member_downs: u64,
    /// Successors linked to since start (they were up).
    linked_ever: std::collections::BTreeSet<usize>,
}

struct Owner {
    config: Arc<NodeConfig>,
    state: RingState,
    pipeline: Pipeline,
    observer: Observer,
    tx: mpsc::Sender<Msg>,
    deploy_tx: mpsc::Sender<DeployMsg>,
    deploy_view: watch::Receiver<DeployView>,
    links: HashMap<LinkId, Downlink>,
    upstreams: HashMap<UpstreamId, AckSlot>,
    hold_until: Option<tokio::time::Instant>,
    seen_tx: watch::Sender<Option<ParticleId>>,
    /// What the link tasks' pings say of the particle.
    beacon: Arc<BeaconCell>,
    /// The sighting the link tasks were last woken for.
    beacon_news: Option<Instant>,
    /// Backs off repeated refusal lines (a probe every probe interval).
    refusals: LogBackoff,
    /// Drawn at start: tells this process from another claiming our name.
    instance: u64,
    /// Why the node stopped by itself (refused as a duplicate member).
    fatal: Option<String>,
    /// The successor last reported linked (to log changes only).
    linked: Option<usize>,
    stats: Stats,
    started: Instant,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    kv: KvStore,
    cancel: CancellationToken,
    /// Cancelled when the owner ends (see `start`).
    released: CancellationToken,
    tracker: TaskTracker,
}

impl Owner {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut deploy_rx: mpsc::Receiver<OwnerCmd>,
    ) -> Result<()> {
        // However the owner ends (even by a panic), the upstream links may
        // then say the node leaves.
        let _released = self.released.clone().drop_guard();
        let mut events = VecDeque::from([Event::Start {
            now: Instant::now(),
        }]);
        let mut next_tick = tokio::time::Instant::now() + TICK;
        loop {
            self.drain(&mut events, &mut rx).await;
            // A tick is due whatever else waits: a node whose every visit
            // is long, with messages always queued, still probes, detects
            // failures and times out.
            let now = tokio::time::Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                events.push_back(Event::Tick {
                    now: Instant::now(),
                });
                continue;
            }
            let hold = self.hold_until;
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    self.leave().await;
                    break;
                }
                () = sleep_until_opt(hold), if hold.is_some() => {
                    self.hold_until = None;
                    events.push_back(Event::HoldElapsed { now: Instant::now() });
                }
                Some(msg) = rx.recv() => self.on_msg(msg, &mut events),
                Some(cmd) = deploy_rx.recv() => self.on_deploy(cmd).await,
                () = tokio::time::sleep_until(next_tick) => {}
            }
        }
        info!("node stopped");
        match self.fatal.take() {
            Some(why) => Err(anyhow::anyhow!(
                "refused as a duplicate: {why}; stop the other process or start this one \
                 as another member"
            )),
            None => Ok(()),
        }
    }

    async fn drain(&mut self, events: &mut VecDeque<Event>, rx: &mut mpsc::Receiver<Msg>) {
        let mut actions = Vec::new();
        while let Some(mut event) = events.pop_front() {
            if matches!(event, Event::ParticleArrived { .. }) {
                // A visit may be long: first take what already arrived, so
                // a newer particle waiting behind this one is visited
                // instead (this one is then dropped as stale), rather than
                // every queued particle costing a visit of its own; and
                // what is not a particle (probe results, pongs, custody
                // acks) is handled before the visit, not after it.
                for _ in 0..rx.max_capacity() {
                    let Ok(msg) = rx.try_recv() else { break };
                    self.on_msg(msg, events);
                }
                event = newest_particle_first(event, events);
                match controls_first(event, events) {
                    Some(first) => event = first,
                    None => continue,
                }
            }
            self.state.handle(event, &mut actions);
            // Before the actions: a visit runs inline, and the link tasks
            // must vouch for the particle meanwhile.
            self.publish_beacon();
            for action in std::mem::take(&mut actions) {
                self.execute(action, events).await;
            }
        }
        let linked = self
            .state
            .successor()
            .filter(|_| self.state.downstream_up());
        if linked != self.linked {
            self.linked = linked;
            if let Some(successor) = linked {
                self.stats.linked_ever.insert(successor);
                info!(successor, "linked to successor");
                self.observer
                    .emit(self.config.index, EventKind::SuccessorLinked { successor });
            }
        }
        let seen = self.state.seen();
        self.seen_tx.send_if_modified(|s| {
            let changed = *s != seen;
            *s = seen;
            changed
        });
    }

    /// Hands the protocol's word on the particle to the link tasks; wakes
    /// them only when it is fresher by half a heartbeat than the last news.
    fn publish_beacon(&mut self) {
        let beacon = self.state.beacon();
        *self.beacon.value.lock().expect("beacon lock") = beacon;
        let half = Duration::from_millis(self.config.heartbeat_interval_ms) / 2;
        if let Some(at) = beacon.map(|b| b.vouched_at(Instant::now()))
            && self.beacon_news.is_none_or(|last| at > last + half)
        {
            self.beacon_news = Some(at);
            self.beacon.news.notify_waiters();
        }
    }

    /// Leaving the ring: pass on a particle we hold instead of taking it
    /// down with us.
    async fn leave(&mut self) {
        let mut actions = Vec::new();
        self.state.release(Instant::now(), &mut actions);
        let mut ignored = VecDeque::new();
        for action in actions {
            match action {
                Action::Send { .. } => {
                    info!("passing the particle on before stopping");
                    self.execute(action, &mut ignored).await;
                }
                Action::Ack { .. } => self.execute(action, &mut ignored).await,
                _ => {}
            }
        }
    }

    /// Runs a command of the deploy agent. Only ever between two visits:
    /// the owner runs stations inline, so no call is in progress here.
    async fn on_deploy(&mut self, cmd: OwnerCmd) {
        match cmd {
            OwnerCmd::Swap { station, version } => {
                let name = station.name().to_string();
                let hash = station.hash();
                let started = Instant::now();
                let old = self.pipeline.swap(*station);
                let pause = started.elapsed();
                let bound = self.config.visit_bound(self.pipeline.stations().len());
                self.state.set_visit_bound(bound);
                // Dropping an instance takes tens of microseconds: not on
                // the particle's path.
                if let Some(old) = old {
                    tokio::task::spawn_blocking(move || drop(old));
                }
                info!(station = %name, ?version, hash = %hash.short(), ?pause, "station swapped in");
                self.observer.emit(
                    self.config.index,
                    EventKind::StationSwapped {
                        station: name,
                        version,
                        hash: hash.to_string(),
                        pause,
                    },
                );
            }
            OwnerCmd::Announce(releases) => {
                let Some(d) = self.state.successor_link().and_then(|l| self.links.get(&l)) else {
                    return; // the handshake of the next link carries them
                };
                let limit = Duration::from_millis(self.config.write_timeout_ms);
                if !d.write(&Frame::Announce(releases), limit).await {
                    debug!("announce not written; the next handshake carries it");
                }
            }
        }
    }

    fn on_msg(&mut self, msg: Msg, events: &mut VecDeque<Event>) {
        let now = Instant::now();
        match msg {
            Msg::Particle {
                particle,
                from,
                ack,
            } => {
                self.upstreams.insert(from, ack);
                events.push_back(Event::ParticleArrived {
                    particle,
                    from,
                    now,
                });
            }
            Msg::UpstreamAlive(alive) => events.push_back(Event::UpstreamAlive { alive, now }),
            Msg::UpstreamClosed(id) => {
                self.upstreams.remove(&id);
            }
            Msg::Dialed {
                link,
                result,
                downlink,
            } => {
                match &result {
                    DialResult::Up { .. } => {
                        if let Some(d) = downlink {
                            self.links.insert(link, d);
                        }
                    }
                    DialResult::Refused(reason) => {
                        if let Some(held) = self.refusals.check(reason, Instant::now()) {
                            error!(%reason, repeats_held_back = held, "a successor refused our link");
                        }
                        self.observer.emit(
                            self.config.index,
                            EventKind::LinkRefused {
                                reason: reason.clone(),
                            },
                        );
                    }
                    DialResult::Failed(why) => debug!(link, %why, "dial failed"),
                }
                events.push_back(Event::Dialed { link, result, now });
            }
            Msg::Heard(link) => events.push_back(Event::Heard { link, now }),
            Msg::Left(link) => {
                if self.links.remove(&link).is_some() {
                    events.push_back(Event::Left { link, now });
                }
            }
            Msg::Forwarded { link, id, hop } => {
                events.push_back(Event::Forwarded { link, id, hop, now });
            }
            Msg::LinkLost { link, why } => {
                if self.links.remove(&link).is_some() {
                    debug!(link, %why, "successor link lost");
                    events.push_back(Event::LinkLost { link, now });
                }
            }
            Msg::Status(reply) => {
                let _ = reply.send(self.status_json());
            }
            Msg::Duplicate(why) => {
                error!(%why, "another live process runs this member; this one stops");
                self.fatal = Some(why);
                self.cancel.cancel();
            }
        }
    }

    async fn execute(&mut self, action: Action, events: &mut VecDeque<Event>) {
        let me = self.config.index;
        match action {
            Action::Dial { link, peer, after } => self.spawn_dial(link, peer, after),
            Action::Close { link } => {
                self.links.remove(&link);
            }
            Action::Visit { mut particle, stop } => {
                let base = StopBase {
                    node_name: self.config.me().name.clone(),
                    node_index: me as u32,
                    ring_size: self.config.ring.len() as u32,
                    lap_time: stop.lap_time,
                };
                let hold = self.pipeline.run(&base, &mut particle).await;
                for (name, hash, cause) in self.pipeline.take_faulty() {
                    let _ = self
                        .deploy_tx
                        .try_send(DeployMsg::Faulty { name, hash, cause });
                }
                let hold = hold.max(Duration::from_millis(self.config.delay_ms));
                if let Some(t) = stop.lap_time {
                    self.stats.laps.push(t);
                }
                self.stats.arrived.get_or_insert_with(Instant::now);
                self.stats.visits += 1;
                debug!(id = %particle.id(), lap = particle.lap, hop = particle.hop, "particle visited");
                self.observer.emit(
                    me,
                    EventKind::Visit {
                        generation: particle.generation,
                        lap: particle.lap,
                        hop: particle.hop,
                        lap_time: stop.lap_time,
                    },
                );
                events.push_back(Event::VisitDone {
                    particle,
                    hold,
                    now: Instant::now(),
                });
            }
            Action::Hold(d) => {
                self.hold_until = Some(tokio::time::Instant::now() + d);
            }
            Action::Send { link, particle } => {
                if let Some(arrived) = self.stats.arrived.take() {
                    let stay = arrived.elapsed();
                    self.stats.stays.push(stay);
                    if let Some(m) = self.observer.metrics() {
                        m.hop_stay.observe(stay);
                    }
                }
                let limit = Duration::from_millis(self.config.write_timeout_ms);
                let sent = match self.links.get(&link) {
                    Some(d) => d.write(&Frame::Particle(particle), limit).await,
                    None => false,
                };
                if !sent {
                    // The link is gone or jammed: the protocol still holds a
                    // copy (in flight) and resends it on the next link.
                    self.links.remove(&link);
                    events.push_back(Event::LinkLost {
                        link,
                        now: Instant::now(),
                    });
                }
            }
            Action::Ack { to, id, hop } => {
                if let Some(slot) = self.upstreams.get(&to) {
                    *slot.lock().expect("ack slot") = Some((id, hop));
                }
            }
            Action::Created { id, why } => {
                let regenerated = match why {
                    Origin::Injected => {
                        info!(particle = %id, "particle injected");
                        false
                    }
                    Origin::Regenerated => {
                        warn!(particle = %id, "no particle within the token timeout: regenerated one");
                        true
                    }
                };
                self.observer.emit(
                    me,
                    EventKind::ParticleCreated {
                        generation: id.generation,
                        regenerated,
                    },
                );
            }
            Action::Dropped { id, reason } => {
                let reason = match reason {
                    DropReason::Stale { current } => format!("stale (current {current})"),
                    DropReason::Duplicate => "duplicate".into(),
                    DropReason::Superseded { by } => format!("superseded by {by}"),
                };
                debug!(particle = %id, %reason, "particle dropped");
                self.observer.emit(
                    me,
                    EventKind::ParticleDropped {
                        generation: id.generation,
                        reason,
                    },
                );
            }
            Action::MemberDown { peer, reason, left } => {
                let name = &self.config.ring.members()[peer].name;
                if left {
                    info!(member = peer, %name, "successor left the ring; skipping it");
                } else {
                    self.stats.member_downs += 1;
                    warn!(member = peer, %name, %reason, "successor declared dead; skipping it");
                }
                self.observer
                    .emit(me, EventKind::MemberDown { peer, reason, left });
            }
            Action::MemberUp { peer } => {
                let name = &self.config.ring.members()[peer].name;
                info!(member = peer, %name, "member back; spliced into the ring");
                self.observer.emit(me, EventKind::MemberUp { peer });
            }
            Action::ViewChanged { live } => {
                info!(live = ?live, "membership view changed");
                self.observer.emit(me, EventKind::ViewChanged { live });
            }
        }
    }

    fn spawn_dial(&mut self, link: LinkId, peer: usize, after: Duration) {
        let addr = self.config.ring.members()[peer].addr.clone();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            ring_hash: self.config.ring.hash().to_string(),
            from_index: self.config.index as u32,
            from_name: self.config.me().name.clone(),
            releases: self.deploy_view.borrow().releases.clone(),
            instance: self.instance,
        };
        let tx = self.tx.clone();
        let deploy_tx = self.deploy_tx.clone();
        let beacon = Arc::clone(&self.beacon);
        let config = Arc::clone(&self.config);
        let cancel = self.cancel.clone();
        let tracker = self.tracker.clone();
        let span = info_span!("link", link, peer);
        self.tracker.spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = async {
                        tokio::time::sleep(after).await;
                        let (result, downlink) = match dial(&addr, hello, &config).await {
                            Ok(Dialed { writer, reader, peer_seen, releases, beacons }) => {
                                let _ = deploy_tx.send(DeployMsg::PeerReleases { peer, releases }).await;
                                let writer = Arc::new(tokio::sync::Mutex::new(writer));
                                let beacon = beacons.then_some(beacon);
                                let task = tracker.spawn(
                                    run_downlink(link, Arc::clone(&writer), reader, tx.clone(), Arc::clone(&config), beacon, cancel.clone())
                                        .in_current_span(),
                                );
                                (DialResult::Up { peer_seen }, Some(Downlink { writer, task }))
                            }
                            Err(DialError::Ended(e)) => (e, None),
                            Err(DialError::Duplicate(why)) => {
                                let _ = tx.send(Msg::Duplicate(why.clone())).await;
                                (DialResult::Refused(why), None)
                            }
                        };
                        let _ = tx.send(Msg::Dialed { link, result, downlink }).await;
                    } => {}
                }
            }
            .instrument(span),
        );
    }

    fn status_json(&self) -> String {
        let members = self.config.ring.members();
        let view = self.state.view();
        let report = status::Report {
            node: status::NodeRef {
                index: self.config.index,
                name: self.config.me().name.clone(),
                addr: self.addr.to_string(),
                pid: std::process::id(),
            },
            ring_size: members.len(),
            ring_hash: self.config.ring.hash().to_string(),
            members: members
                .iter()
                .enumerate()
                .map(|(i, m)| status::MemberStatus {
                    index: i,
                    name: m.name.clone(),
                    addr: m.addr.clone(),
                    live: view[i],
                })
                .collect(),
            successor: self.state.successor(),
            successor_up: self.state.downstream_up(),
            skipped: self.state.skipped(),
            particle: status::ParticleStatus {
                generation: self.state.seen().map(|s| s.generation),
                origin: self.state.seen().map(|s| s.origin),
                here: self.state.has_particle(),
            },
            visits: self.stats.visits,
            member_downs: self.stats.member_downs,
            lap_ms: self.stats.laps.summary_ms(),
            stay_ms: self.stats.stays.summary_ms(),
            stations: self
                .pipeline
                .stations()
                .iter()
                .map(|s| status::StationStatus {
                    name: s.name().to_string(),
                    faults: s.faults(),
                })
                .collect(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            deploy: self.deploy_view.borrow().clone(),
            admin: self.admin_addr.map(|a| a.to_string()),
            linked_ever: self.stats.linked_ever.iter().copied().collect(),
            config_version: status::config_version(&self.kv),
        };
        serde_json::to_string(&report).expect("status serializes")
    }
}

/// Of `event` (a particle arrival) and the arrivals queued in `events`,
/// returns the one with the highest particle id, putting `event` back at
/// the front of the queue if another was newer.
fn newest_particle_first(event: Event, events: &mut VecDeque<Event>) -> Event {
    let id = |e: &Event| match e {
        Event::ParticleArrived { particle, .. } => Some(particle.id()),
        _ => None,
    };
    let Some(first) = id(&event) else {
        return event;
    };
    let newest = events
        .iter()
        .enumerate()
        .filter_map(|(k, e)| id(e).map(|i| (i, k)))
        .max()
        .filter(|&(i, _)| i > first);
    match newest.and_then(|(_, k)| events.remove(k)) {
        Some(newer) => {
            events.push_front(event);
            newer
        }
        None => event,
    }
}

/// Moves the events queued behind particle arrival `event` that are not
/// arrivals ahead of it, keeping their order: `None` when there were any
/// (`event` now waits behind them, the caller pops again), else `event`.
fn controls_first(event: Event, events: &mut VecDeque<Event>) -> Option<Event> {
    let arrival = |e: &Event| matches!(e, Event::ParticleArrived { .. });
    if events.iter().all(arrival) {
        return Some(event);
    }
    let (arrivals, mut controls): (VecDeque<Event>, VecDeque<Event>) =
        events.drain(..).partition(arrival);
    controls.push_back(event);
    controls.extend(arrivals);
    *events = controls;
    None
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A link to a successor, handshake done.
struct Dialed {
    writer: FrameWriter<OwnedWriteHalf>,
    reader: FrameReader<OwnedReadHalf>,
    /// The successor's highest particle.
    peer_seen: Option<ParticleId>,
    /// The successor's current releases.
    releases: Vec<Release>,
    /// The successor reads pings that carry an [`Alive`].
    beacons: bool,
}

/// How a dial that did not link ended.
enum DialError {
    /// Failed or refused, for the protocol.
    Ended(DialResult),
    /// Refused because another live process runs our member: this
    /// process is the duplicate.
    Duplicate(String),
}

/// Connects to a member and exchanges hellos, all within the handshake
/// timeout.
async fn dial(addr: &str, hello: Hello, config: &NodeConfig) -> Result<Dialed, DialError> {
    let limit = Duration::from_millis(config.handshake_timeout_ms);
    let attempt = async {
        let e = DialError::Ended;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| e(DialResult::Failed(format!("connect {addr}: {err}"))))?;
        stream
            .set_nodelay(true)
            .map_err(|err| e(DialResult::Failed(err.to_string())))?;
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r, config.max_frame_bytes);
        let mut writer = FrameWriter::new(w, config.max_frame_bytes);
        writer
            .write_frame(&Frame::Hello(hello))
            .await
            .map_err(|err| e(DialResult::Failed(format!("sending hello: {err}"))))?;
        match reader.read_frame().await {
            Ok(Some(Frame::Welcome(w))) if w.version == PROTOCOL_VERSION => Ok(Dialed {
                writer,
                reader,
                peer_seen: w.seen,
                releases: w.releases,
                beacons: w.beacons,
            }),
            Ok(Some(Frame::Welcome(w))) => Err(e(DialResult::Refused(format!(
                "successor speaks protocol {}, we speak {PROTOCOL_VERSION}",
                w.version
            )))),
            Ok(Some(Frame::Refuse(r))) if r.duplicate => Err(DialError::Duplicate(r.reason)),
            Ok(Some(Frame::Refuse(r))) => Err(e(DialResult::Refused(match r.ring_hash {
                // Worded from our side: the reader of our log is "ours".
                Some(theirs) => format!(
                    "{addr} runs another ring: its enumeration hashes to {}, ours to {} ({}); \
                     every node must be started with the same --ring",
                    short(&theirs),
                    short(config.ring.hash()),
                    config.ring.describe()
                ),
                None => r.reason,
            }))),
            Ok(Some(other)) => Err(e(DialResult::Failed(format!(
                "unexpected {} in answer to hello",
                other.kind_name()
            )))),
            Ok(None) => Err(e(DialResult::Failed("closed during handshake".into()))),
            Err(err) => Err(e(DialResult::Failed(format!("handshake: {err}")))),
        }
    };
    match timeout(limit, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Ended(DialResult::Failed(format!(
            "handshake with {addr} timed out after {limit:?}"
        )))),
    }
}

/// Watches one link to a successor: pings it and reports what comes back
/// (pongs, custody acks) and the link's end. The owner writes particles to
/// the shared writer itself. Ends when the owner drops the link (aborting
/// this task), the link fails, or the node stops.
///
/// With `beacon` (the successor reads them), every ping carries what this
/// node knows of the particle, and a ping goes out at once when the owner
/// has fresher news by half a heartbeat: word that a member holds the
/// particle crosses the ring in link latencies, not in heartbeats.
async fn run_downlink(
    link: LinkId,
    writer: SharedWriter,
    mut reader: FrameReader<OwnedReadHalf>,
    tx: mpsc::Sender<Msg>,
    config: Arc<NodeConfig>,
    beacon: Option<Arc<BeaconCell>>,
    cancel: CancellationToken,
) {
    let write_limit = Duration::from_millis(config.write_timeout_ms);
    let heartbeat = Duration::from_millis(config.heartbeat_interval_ms);
    let mut ping = tokio::time::interval(heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    let why = loop {
        let news = async {
            match &beacon {
                Some(b) => b.news.notified().await,
                None => std::future::pending().await,
            }
        };
        let send = tokio::select! {
            () = cancel.cancelled() => return,
            _ = ping.tick() => true,
            () = news => true,
            r = reader.read_frame() => {
                let msg = match r {
                    Ok(Some(Frame::Pong(_))) => Msg::Heard(link),
                    Ok(Some(Frame::Forwarded { id, hop })) => Msg::Forwarded { link, id, hop },
                    Ok(Some(Frame::Leave)) => {
                        let _ = tx.send(Msg::Left(link)).await;
                        return;
                    }
                    Ok(Some(other)) => break format!("unexpected {} from the successor", other.kind_name()),
                    Ok(None) => break "closed by the successor".to_string(),
                    Err(e) => break e.to_string(),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                false
            }
        };
        if send {
            // The write happens here, never inside the select, so a frame
            // is never cut in half by a cancelled branch.
            n += 1;
            let b = beacon
                .as_ref()
                .and_then(|b| *b.value.lock().expect("beacon lock"));
            let alive = b.map(|b| b.alive(Instant::now()));
            let mut w = writer.lock().await;
            match timeout(write_limit, w.write_frame(&Frame::Ping { n, alive })).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break format!("write: {e}"),
                Err(_) => break format!("write timed out after {write_limit:?}"),
            }
        }
    };
    let _ = tx.send(Msg::LinkLost { link, why }).await;
}

/// The live upstream link of one predecessor member, to refuse a second
/// process claiming the same member while the first is alive.
#[derive(Debug, Clone, Copy)]
struct Claim {
    conn: UpstreamId,
    instance: u64,
    addr: SocketAddr,
    last_heard: Instant,
}

/// Predecessor member index → its live link.
type Claims = Arc<std::sync::Mutex<HashMap<u32, Claim>>>;

/// What every upstream connection task needs.
#[derive(Clone)]
struct Upstreams {
    claims: Claims,
    /// Backs off repeated rejection lines (a peer redialing every probe).
    log: Arc<std::sync::Mutex<LogBackoff>>,
    config: Arc<NodeConfig>,
    tx: mpsc::Sender<Msg>,
    seen: watch::Receiver<Option<ParticleId>>,
    observer: Observer,
    cancel: CancellationToken,
    /// The owner is done with the particle while stopping.
    released: CancellationToken,
    deploy_tx: mpsc::Sender<DeployMsg>,
    deploy_view: watch::Receiver<DeployView>,
}

async fn accept_loop(listener: TcpListener, ctx: Upstreams, tracker: TaskTracker) {
    let mut backoff = Duration::from_millis(1);
    let mut next_id: UpstreamId = 1;
    loop {
        let accepted = tokio::select! {
            () = ctx.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(1);
                let span = info_span!("upstream", peer = %peer);
                let id = next_id;
                next_id += 1;
                tracker.spawn(serve_upstream(id, stream, ctx.clone()).instrument(span));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                warn!(cause = %e, "accept failed");
                tokio::select! {
                    () = ctx.cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// Serves one connection on the ring port: a hello (then pings, particles
/// and announces), a status request, or a request (push, fetch, config…).
async fn serve_upstream(id: UpstreamId, stream: TcpStream, ctx: Upstreams) {
    let Upstreams {
        config,
        tx,
        seen,
        observer,
        cancel,
        released,
        deploy_tx,
        deploy_view,
        claims,
        log,
    } = ctx;
    let _ = stream.set_nodelay(true);
    let Ok(remote) = stream.peer_addr() else {
        return; // gone already
    };
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, config.max_frame_bytes);
    let mut writer = FrameWriter::new(w, config.max_frame_bytes);
    let reject = |reason: String| {
        let held = log
            .lock()
            .expect("log backoff lock")
            .check(&reason, Instant::now());
        if let Some(held) = held {
            warn!(%reason, repeats_held_back = held, "upstream connection closed");
        }
        observer.emit(config.index, EventKind::UpstreamRejected { reason });
    };

    let limit = Duration::from_millis(config.handshake_timeout_ms);
    let first = tokio::select! {
        () = cancel.cancelled() => return,
        r = timeout(limit, reader.read_frame()) => r,
    };
    let mut hello = match first {
        Ok(Ok(Some(Frame::Hello(h)))) => h,
        Ok(Ok(Some(Frame::StatusRequest))) => {
            let (otx, orx) = oneshot::channel();
            if tx.send(Msg::Status(otx)).await.is_ok()
                && let Ok(Ok(json)) = timeout(limit, orx).await
            {
                let _ = timeout(limit, writer.write_frame(&Frame::Status(json))).await;
            }
            return;
        }
        Ok(Ok(Some(Frame::Request(req, blob)))) => {
            // Pushes compile and run init before answering; fetches of big
            // modules compute a delta: allow them time, bounded.
            let answer_limit = Duration::from_secs(60);
            let (otx, orx) = oneshot::channel();
            let msg = DeployMsg::Request {
                req,
                blob,
                reply: otx,
            };
            let failed = |why: &str| (Reply::error(why), Bytes::new());
            let (reply, blob) = if deploy_tx.send(msg).await.is_err() {
                failed("node stopping")
            } else {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = timeout(answer_limit, orx) => match r {
                        Ok(Ok(answer)) => answer,
                        Ok(Err(_)) => failed("request dropped"),
                        Err(_) => failed("request timed out"),
                    },
                }
            };
            let write_limit = Duration::from_millis(config.write_timeout_ms).max(limit) * 10;
            let _ = timeout(write_limit, writer.write_frame(&Frame::Reply(reply, blob))).await;
            return;
        }
        Ok(Ok(Some(other))) => {
            return reject(format!("expected hello, got {}", other.kind_name()));
        }
        Ok(Ok(None)) => return, // connected and left: a port probe
        Ok(Err(e)) => return reject(format!("bad hello: {e}")),
        Err(_) => return reject(format!("no hello within {limit:?}")),
    };
    let failure_timeout = Duration::from_millis(config.failure_timeout_ms);
    let mut duplicate = false;
    let checked = check_hello(&hello, &config).and_then(|()| {
        duplicate = true;
        claim(
            &claims,
            &hello,
            Claim {
                conn: id,
                instance: hello.instance,
                addr: remote,
                last_heard: Instant::now(),
            },
            failure_timeout,
        )
    });
    if let Err(reason) = checked {
        let ring_hash =
            (hello.ring_hash != config.ring.hash()).then(|| config.ring.hash().to_string());
        let _ = timeout(
            limit,
            writer.write_frame(&Frame::Refuse(Refuse {
                reason: reason.clone(),
                ring_hash,
                duplicate,
            })),
        )
        .await;
        return reject(format!(
            "refused {} from {}: {reason}",
            hello.from_name,
            remote.ip()
        ));
    }
    let welcome = Frame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        node_index: config.index as u32,
        seen: *seen.borrow(),
        releases: deploy_view.borrow().releases.clone(),
        beacons: true,
    });
    match timeout(limit, writer.write_frame(&welcome)).await {
        Ok(Ok(())) => {}
        _ => return reject("could not send welcome".into()),
    }
    debug!(predecessor = hello.from_index, "predecessor linked");
    let predecessor = hello.from_index as usize;
    let _ = deploy_tx
        .send(DeployMsg::PeerReleases {
            peer: predecessor,
            releases: std::mem::take(&mut hello.releases),
        })
        .await;
    let ack: AckSlot = Arc::default();
    let write_limit = Duration::from_millis(config.write_timeout_ms);
    let end = loop {
        // A clean stop: once the owner has passed on the particle it held
        // (it may be in a long visit still; pings are answered meanwhile),
        // tell the predecessor this is a leave, so it skips us at once
        // and nobody respawns us.
        let frame = tokio::select! {
            () = released.cancelled() => return say_leave(&mut writer, &ack, write_limit).await,
            r = reader.read_frame() => r,
        };
        let n = match frame {
            Ok(Some(Frame::Particle(particle))) => {
                let msg = Msg::Particle {
                    particle,
                    from: id,
                    ack: Arc::clone(&ack),
                };
                if tx.send(msg).await.is_err() {
                    return say_leave(&mut writer, &ack, write_limit).await; // the node is stopping
                }
                continue;
            }
            Ok(Some(Frame::Announce(releases))) => {
                let msg = DeployMsg::PeerReleases {
                    peer: predecessor,
                    releases,
                };
                if deploy_tx.send(msg).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Some(Frame::Ping { n, alive })) => (n, alive),
            Ok(Some(other)) => {
                break Some(format!(
                    "unexpected {} on an upstream link",
                    other.kind_name()
                ));
            }
            Ok(None) => break None,
            Err(e) => break Some(format!("bad frame: {e}")),
        };
        let (n, alive) = n;
        let mine = Claim {
            conn: id,
            instance: hello.instance,
            addr: remote,
            last_heard: Instant::now(),
        };
        if let Err(why) = claim(&claims, &hello, mine, failure_timeout) {
            break Some(why);
        }
        if tx.send(Msg::UpstreamAlive(alive)).await.is_err() {
            return say_leave(&mut writer, &ack, write_limit).await;
        }
        // Custody acks ride along with the pongs.
        let owed = ack.lock().expect("ack slot").take();
        let mut out = Vec::with_capacity(2);
        if let Some((id, hop)) = owed {
            out.push(Frame::Forwarded { id, hop });
        }
        out.push(Frame::Pong(n));
        for f in &out {
            match timeout(write_limit, writer.write_frame(f)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    };
    let _ = tx.send(Msg::UpstreamClosed(id)).await;
    {
        let mut claims = claims.lock().expect("claims lock");
        if claims.get(&hello.from_index).is_some_and(|c| c.conn == id) {
            claims.remove(&hello.from_index);
        }
    }
    match end {
        Some(reason) => reject(reason),
        None => debug!(predecessor = hello.from_index, "predecessor link closed"),
    }
}

/// Tells the predecessor this node leaves, after the custody ack it is
/// owed (the particle went on: no need to resend it), bounded so a stuck
/// peer does not hold up the stop.
async fn say_leave(writer: &mut FrameWriter<OwnedWriteHalf>, ack: &AckSlot, write_limit: Duration) {
    let limit = write_limit.min(Duration::from_millis(200));
    let owed = ack.lock().expect("ack slot").take();
    let _ = timeout(limit, async {
        if let Some((id, hop)) = owed {
            writer.write_frame(&Frame::Forwarded { id, hop }).await?;
        }
        writer.write_frame(&Frame::Leave).await
    })
    .await;
}

/// Records `mine` as the live link of member `hello.from_index`, unless
/// another process (another instance) holds that member on a link heard
/// within `failure_timeout`: then the member is claimed twice (two nodes
/// started with one name), and the newcomer is refused. Nodes too old to
/// send an instance (0) are not checked.
fn claim(
    claims: &Claims,
    hello: &Hello,
    mine: Claim,
    failure_timeout: Duration,
) -> Result<(), String> {
    let mut claims = claims.lock().expect("claims lock");
    match claims.get(&hello.from_index) {
        Some(c)
            if c.instance != mine.instance
                && c.instance != 0
                && mine.instance != 0
                && mine.last_heard.saturating_duration_since(c.last_heard) <= failure_timeout =>
        {
            // No ports or times in the words: the log backs off repeats of
            // a line, and a redialing process comes from a new port each time.
            Err(format!(
                "member {} ({}) is already linked from {}, alive; a second process claims it \
                 from {}: two nodes started as the same member?",
                hello.from_index,
                hello.from_name,
                c.addr.ip(),
                mine.addr.ip()
            ))
        }
        _ => {
            claims.insert(hello.from_index, mine);
            Ok(())
        }
    }
}

fn check_hello(hello: &Hello, config: &NodeConfig) -> Result<(), String> {
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} differs from ours ({PROTOCOL_VERSION})",
            hello.version
        ));
    }
    if hello.ring_hash != config.ring.hash() {
        return Err(format!(
            "ring enumeration differs: theirs hashes to {}, ours to {} ({}); \
             every node must be started with the same --ring",
            short(&hello.ring_hash),
            short(config.ring.hash()),
            config.ring.describe()
        ));
    }
    let members = config.ring.members();
    match members.get(hello.from_index as usize) {
        Some(m) if m.name == hello.from_name => Ok(()),
        _ => Err(format!(
            "{:?} at index {} is not a member of this ring",
            hello.from_name, hello.from_index
        )),
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(generation: u64, from: UpstreamId) -> Event {
        Event::ParticleArrived {
            particle: Particle::new(generation, 0),
            from,
            now: Instant::now(),
        }
    }

    fn generations(events: &VecDeque<Event>) -> Vec<u64> {
        events
            .iter()
            .map(|e| match e {
                Event::ParticleArrived { particle, .. } => particle.generation,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn the_newest_queued_particle_is_visited_first_and_the_older_wait_to_be_dropped() {
        let now = Instant::now();
        let mut events = VecDeque::from([
            arrival(3, 1),
            Event::Tick { now },
            arrival(5, 1),
            arrival(4, 1),
        ]);
        let first = newest_particle_first(arrival(2, 1), &mut events);
        assert!(
            matches!(first, Event::ParticleArrived { ref particle, .. } if particle.generation == 5)
        );
        // The one taken first goes back to the front; the rest keep order.
        assert_eq!(generations(&events), vec![2, 3, 0, 4]);
        // Nothing newer queued: the event itself, the queue untouched.
        let first = newest_particle_first(arrival(9, 1), &mut events);
        assert!(
            matches!(first, Event::ParticleArrived { ref particle, .. } if particle.generation == 9)
        );
        assert_eq!(generations(&events), vec![2, 3, 0, 4]);
        // What is not an arrival goes first; the arrival waits behind it.
        assert!(controls_first(first, &mut events).is_none());
        assert_eq!(generations(&events), vec![0, 9, 2, 3, 4]);
        events.pop_front();
        let first = events.pop_front().expect("the arrival");
        assert!(controls_first(first, &mut events).is_some());
    }
}
