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
//!
//! Files: this one starts a node and wires its tasks ([`NodeHandle`]);
//! `owner.rs` is the owner task and the order in which it takes events;
//! `downlink.rs` dials successors and runs the successor link;
//! `upstream.rs` accepts connections on the ring port and serves
//! predecessors (hello checks, member claims) and requests; `msg.rs` holds
//! what the tasks hand each other (the owner's messages, links, ack slots).

mod downlink;
mod fetches;
pub mod ingest;
mod msg;
mod owner;
mod snapshot;
mod upstream;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::admin;
use crate::config::NodeConfig;
use crate::deploy::agent::{self as deploy, DeployView};
use crate::lograte::LogBackoff;
use crate::metrics::Metrics;
use crate::observe::{Bus, Observer};
use crate::ring::state::RingState;
use crate::station::{Inbox, Inboxes, KvStore, NodeInfo, Pipeline, StationHost, StationLimits};

pub use owner::TICK;
use owner::{Owner, Stats};
use snapshot::StatusSnapshot;
use upstream::{Claims, Upstreams, accept_loop};

/// Bound on an admin status request's wait for the snapshot (the
/// refresh lock and the owner's answer).
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// A running node. Dropping it cancels the node without waiting; call
/// [`NodeHandle::shutdown`] to wait for every task to end.
pub struct NodeHandle {
    addr: SocketAddr,
    index: usize,
    cancel: CancellationToken,
    tracker: TaskTracker,
    owner: Option<JoinHandle<Result<()>>>,
    kv: KvStore,
    inboxes: Inboxes,
    sets: crate::station::SetStore,
    deploy_view: watch::Receiver<DeployView>,
    admin: Option<SocketAddr>,
    input_udp: Option<SocketAddr>,
    cache: Option<SocketAddr>,
    bus: Arc<Bus>,
    status: Arc<StatusSnapshot>,
}

impl NodeHandle {
    /// The address the admin API is bound to (`None`: off).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The address datagram inputs are received on (`None`: off).
    pub fn input_udp_addr(&self) -> Option<SocketAddr> {
        self.input_udp
    }

    /// The address the memcached-compatible cache is bound to (`None`:
    /// off).
    pub fn cache_addr(&self) -> Option<SocketAddr> {
        self.cache
    }

    /// The node's event bus and metrics (what the admin API serves).
    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// The node's deploy state (releases, what runs), as it changes.
    pub fn deploy_view(&self) -> watch::Receiver<DeployView> {
        self.deploy_view.clone()
    }

    /// How many status reports the owner task has built since the node
    /// started (every admin and ring-port status request is served from a
    /// shared snapshot; see `node/snapshot.rs`).
    pub fn status_reports_built(&self) -> u64 {
        self.status.built()
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

    /// The inbox of station `name`, if the station has run on this node.
    /// The sets this node's stations publish.
    pub fn sets(&self) -> &crate::station::SetStore {
        &self.sets
    }

    pub fn inbox(&self, name: &str) -> Option<Inbox> {
        self.inboxes.get(name)
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
    let input_udp = match &config.input_udp {
        Some(a) => Some(
            tokio::net::UdpSocket::bind(a)
                .await
                .with_context(|| format!("binding --input-udp {a}"))?,
        ),
        None => None,
    };
    let cache_listener = match &config.cache {
        Some(c) => Some(
            TcpListener::bind(&c.listen)
                .await
                .map_err(|cause| crate::BindError {
                    what: "cache address",
                    addr: c.listen.clone(),
                    cause,
                })?,
        ),
        None => None,
    };
    let input_unix = match &config.input_unix {
        Some(p) => Some((ingest::bind_unix(p)?, p.clone())),
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
        fuel: config.station_fuel,
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
    let pipeline = Pipeline::new(started.stations, config.index, config.max_frame_bytes);
    let inboxes = started.inboxes;
    let sets = started.sets;
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

    tracker.spawn(sweep_sets(sets.clone(), cancel.clone()));
    let input_udp_addr = input_udp.as_ref().and_then(|s| s.local_addr().ok());
    if let Some(socket) = input_udp {
        let task = ingest::serve_udp(
            socket,
            inboxes.clone(),
            Arc::clone(bus.metrics()),
            cancel.clone(),
        );
        tracker.spawn(task.instrument(span.clone()));
    }
    let cache_addr = match (cache_listener, &config.cache) {
        (Some(listener), Some(settings)) => {
            let bound = listener.local_addr().ok();
            let shared = crate::cache::server::Shared::new(settings.clone());
            let metrics = Arc::clone(bus.metrics());
            let task = crate::cache::server::serve(listener, shared, metrics, cancel.clone());
            tracker.spawn(task.instrument(span.clone()));
            bound
        }
        _ => None,
    };
    if let Some((socket, path)) = input_unix {
        let task = ingest::serve_unix(
            socket,
            path,
            inboxes.clone(),
            Arc::clone(bus.metrics()),
            cancel.clone(),
        );
        tracker.spawn(task.instrument(span.clone()));
    }

    if let Some(keys) = config.cluster_keys.clone().filter(|k| k.file().is_some()) {
        tracker.spawn(reload_keys(keys, cancel.clone()).instrument(span.clone()));
    }

    // Cancelled by the owner once it has passed on a particle it held (or
    // found none) while stopping: only then do the upstream links say the
    // node leaves, so no predecessor resends what this node is still
    // visiting.
    let released = CancellationToken::new();
    let reports_built = Arc::default();
    let status = Arc::new(StatusSnapshot::new(tx.clone(), Arc::clone(&reports_built)));
    tracker.spawn(
        accept_loop(
            listener,
            Upstreams {
                config: Arc::clone(&config),
                admin: admin_addr,
                tx: tx.clone(),
                seen: seen_rx,
                observer: observer.clone(),
                cancel: cancel.clone(),
                released: released.clone(),
                deploy_tx: deploy_tx.clone(),
                deploy_view: deploy_view.clone(),
                claims: Claims::default(),
                log: Arc::default(),
                status: Arc::clone(&status),
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
        not_started_told: BTreeSet::new(),
        stats: Stats::default(),
        reports_built,
        started: Instant::now(),
        addr,
        admin_addr,
        kv: kv.clone(),
        cancel: cancel.clone(),
        released,
        tracker: tracker.clone(),
    };
    if let (Some(listener), Some(settings)) = (admin_listener, &config.admin) {
        let snapshot = Arc::clone(&status);
        let status: admin::server::StatusFn = Arc::new(move || {
            let snapshot = Arc::clone(&snapshot);
            Box::pin(async move { snapshot.get(STATUS_WAIT).await })
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
            sets: sets.clone(),
            bus: Arc::clone(&bus),
            cluster_keys: config.cluster_keys.clone(),
        };
        // The admin server runs on a thread of its own (see
        // `admin::listen`); its listener moves to that thread's runtime.
        let listener = listener
            .into_std()
            .context("handing the admin listener to its thread")?;
        let stop = cancel.clone();
        let admin_span = span.clone();
        let ended = admin::listen::spawn_thread(
            async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => admin::server::serve(l, ctx, stop).await,
                    Err(e) => warn!(cause = %e, "the admin API could not take its listener"),
                }
            }
            .instrument(admin_span),
        )
        .context("starting the admin API's thread")?;
        tracker.spawn(ended);
    }
    info!(
        parent: &span,
        addr = %addr,
        admin = %admin_addr.map_or("off".to_string(), |a| format!("http://{a}")),
        cache = %cache_addr.map_or("off".to_string(), |a| a.to_string()),
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
        sets,
        deploy_view,
        input_udp: input_udp_addr,
        cache: cache_addr,
        admin: admin_addr,
        bus,
        status,
    })
}

/// How often a node looks at its cluster key file for a change (one
/// `stat` each time).
pub const KEY_FILE_POLL: Duration = Duration::from_secs(1);

/// Re-reads the cluster key file when it changes (every
/// [`KEY_FILE_POLL`]) until `cancel`: links made after that use the new
/// keys; links up keep the keys they were made with. A file that does not
/// parse keeps the keys held, with a warning.
async fn reload_keys(keys: crate::secure::ClusterKeys, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(KEY_FILE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match keys.reload_if_changed() {
            Ok(None) => {}
            Ok(Some(ids)) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                tracing::info!(
                    keys = %ids.join(", "),
                    "cluster key file changed: now dialing with the first, accepting all"
                );
            }
            Err(e) => tracing::warn!(
                cause = %format!("{e:#}"),
                "cluster key file changed but does not read; keeping the keys held"
            ),
        }
    }
}

/// Removes expired set entries every [`crate::station::sets::SWEEP_EVERY`]
/// (reporting an `expire` event for each) until the node stops. Lookups
/// never answer an expired entry meanwhile; this only frees the memory
/// and tells subscribers.
async fn sweep_sets(sets: crate::station::SetStore, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(crate::station::sets::SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {
                sets.sweep(crate::station::unix_ms());
            }
        }
    }
}
