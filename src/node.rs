//! One ring node: wiring only. It binds the ring protocol
//! ([`crate::ring::state`]) to sockets, timers and the station pipeline.
//!
//! Tasks, each owning its piece of state:
//! - the **owner** task owns the [`RingState`], the [`Pipeline`] and the
//!   write half of the successor link; it runs the stations inline (the
//!   particle is at this node, nothing else is waiting on it) and is the
//!   only writer to the successor;
//! - the **accept** task takes connections on the ring port and spawns an
//!   **upstream** task per connection, which checks the hello and forwards
//!   particles to the owner over a bounded channel;
//! - a **dial** task per attempt connects to the successor and hands the
//!   link to the owner; a **downstream reader** watches the link for EOF.
//!
//! A peer's bad input ends that peer's connection, logged once; it never
//! ends the node. Everything stops when the node's cancellation token is
//! cancelled ([`NodeHandle::shutdown`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::NodeConfig;
use crate::observe::{EventKind, Observer};
use crate::ring::state::{Action, DropReason, Event, RingParams, RingState};
use crate::ring::token::Particle;
use crate::station::{
    Inbox, KvStore, NodeInfo, Pipeline, StationEnv, StationHost, StationLimits, StopBase,
};
use crate::wire::{
    Frame, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION, Refuse, Welcome, WireError,
};

/// Messages from the node's helper tasks to its owner task.
enum Msg {
    Particle(Particle),
    Dialed {
        attempt: u64,
        result: Result<Downlink, DialError>,
    },
    DownstreamClosed {
        attempt: u64,
        why: String,
    },
}

struct Downlink {
    writer: FrameWriter<OwnedWriteHalf>,
    reader: JoinHandle<()>,
}

impl Drop for Downlink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug)]
enum DialError {
    Refused(String),
    Failed(String),
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
}

impl NodeHandle {
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
    let me = config.me().clone();
    let node_info = NodeInfo {
        name: me.name.clone(),
        index: config.index as u32,
        ring_size: config.ring.len() as u32,
        ring_hash: config.ring.hash().to_string(),
    };
    let span = info_span!("node", idx = config.index);
    let kv = KvStore::default();
    let epoch = Instant::now();
    let limits = StationLimits {
        call_timeout: config.station_timeout(),
        memory_bytes: config.station_memory_bytes,
    };
    let mut stations = Vec::new();
    let mut inboxes = Vec::new();
    for spec in &config.stations {
        let env = StationEnv {
            station: spec.name.as_str().into(),
            node: node_info.clone(),
            kv: kv.clone(),
            inbox: Inbox::default(),
            observer: observer.clone(),
            epoch,
        };
        inboxes.push((spec.name.clone(), env.inbox.clone()));
        let station = host
            .load(spec, env, limits)
            .instrument(span.clone())
            .await
            .with_context(|| format!("loading station {:?}", spec.name))?;
        stations.push(station);
    }
    let pipeline = Pipeline::new(stations, config.index);

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (tx, rx) = mpsc::channel(64);
    let config = Arc::new(config);

    tracker.spawn(
        accept_loop(
            listener,
            Arc::clone(&config),
            tx.clone(),
            observer.clone(),
            cancel.clone(),
            tracker.clone(),
        )
        .instrument(span.clone()),
    );
    let owner = Owner {
        config: Arc::clone(&config),
        state: RingState::new(RingParams {
            me: config.index,
            size: config.ring.len(),
            backoff_min: Duration::from_millis(config.dial_backoff_min_ms),
            backoff_max: Duration::from_millis(config.dial_backoff_max_ms),
        }),
        pipeline,
        observer,
        tx,
        downlink: None,
        attempt: 0,
        hold_until: None,
        last_refusal: None,
        cancel: cancel.clone(),
        tracker: tracker.clone(),
    };
    info!(
        parent: &span,
        addr = %addr,
        name = %me.name,
        ring = %config.ring.describe(),
        ring_hash = &config.ring.hash()[..12],
        stations = ?config.stations.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "node started"
    );
    let owner = tracker.spawn(owner.run(rx).instrument(span));
    Ok(NodeHandle {
        addr,
        index: config.index,
        cancel,
        tracker,
        owner: Some(owner),
        kv,
        inboxes,
    })
}

struct Owner {
    config: Arc<NodeConfig>,
    state: RingState,
    pipeline: Pipeline,
    observer: Observer,
    tx: mpsc::Sender<Msg>,
    downlink: Option<(u64, Downlink)>,
    attempt: u64,
    hold_until: Option<tokio::time::Instant>,
    last_refusal: Option<String>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Result<()> {
        let mut events = VecDeque::from([Event::Start]);
        let mut actions = Vec::new();
        loop {
            while let Some(event) = events.pop_front() {
                self.state.handle(event, &mut actions);
                for action in std::mem::take(&mut actions) {
                    self.execute(action, &mut events).await;
                }
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
                    events.push_back(Event::HoldElapsed);
                }
                Some(msg) = rx.recv() => self.on_msg(msg, &mut events),
            }
        }
        info!("node stopped");
        Ok(())
    }

    /// Leaving the ring: pass on a particle we hold instead of taking it
    /// down with us.
    async fn leave(&mut self) {
        let mut actions = Vec::new();
        self.state.release(&mut actions);
        let mut ignored = VecDeque::new();
        for action in actions {
            if let Action::Send(_) = action {
                info!("passing the particle on before stopping");
                self.execute(action, &mut ignored).await;
            }
        }
    }

    fn on_msg(&mut self, msg: Msg, events: &mut VecDeque<Event>) {
        match msg {
            Msg::Particle(particle) => events.push_back(Event::ParticleArrived {
                particle,
                now: Instant::now(),
            }),
            Msg::Dialed { attempt, result } if attempt == self.attempt => match result {
                Ok(link) => {
                    info!(successor = self.state.successor(), "linked to successor");
                    self.last_refusal = None;
                    self.downlink = Some((attempt, link));
                    self.observer.emit(
                        self.config.index,
                        EventKind::SuccessorLinked {
                            successor: self.state.successor(),
                        },
                    );
                    events.push_back(Event::DownstreamUp);
                }
                Err(DialError::Refused(reason)) => {
                    if self.last_refusal.as_deref() != Some(reason.as_str()) {
                        error!(
                            successor = self.state.successor(),
                            %reason,
                            "successor refused our link"
                        );
                        self.last_refusal = Some(reason.clone());
                    }
                    self.observer.emit(
                        self.config.index,
                        EventKind::LinkRefused {
                            reason: reason.clone(),
                        },
                    );
                    events.push_back(Event::DownstreamFailed {
                        refused: Some(reason),
                    });
                }
                Err(DialError::Failed(why)) => {
                    debug!(successor = self.state.successor(), %why, "dial failed");
                    events.push_back(Event::DownstreamFailed { refused: None });
                }
            },
            Msg::Dialed { .. } => {} // a stale attempt; its link drops here
            Msg::DownstreamClosed { attempt, why } => {
                if self.downlink.as_ref().is_some_and(|(a, _)| *a == attempt) {
                    info!(successor = self.state.successor(), %why, "successor link lost");
                    self.downlink = None;
                    events.push_back(Event::DownstreamFailed { refused: None });
                }
            }
        }
    }

    async fn execute(&mut self, action: Action, events: &mut VecDeque<Event>) {
        match action {
            Action::Dial { peer, after } => {
                self.downlink = None;
                self.attempt += 1;
                let attempt = self.attempt;
                let addr = self.config.ring.members()[peer].addr.clone();
                let hello = Hello {
                    version: PROTOCOL_VERSION,
                    ring_hash: self.config.ring.hash().to_string(),
                    from_index: self.config.index as u32,
                    from_name: self.config.me().name.clone(),
                };
                let tx = self.tx.clone();
                let config = Arc::clone(&self.config);
                let cancel = self.cancel.clone();
                let tracker = self.tracker.clone();
                self.tracker.spawn(
                    async move {
                        tokio::select! {
                            () = cancel.cancelled() => {}
                            () = async {
                                tokio::time::sleep(after).await;
                                let result = dial(&addr, hello, &config)
                                    .await
                                    .map(|(writer, reader)| Downlink {
                                        writer,
                                        reader: tracker.spawn(watch_downstream(
                                            reader,
                                            attempt,
                                            tx.clone(),
                                            cancel.clone(),
                                        ).in_current_span()),
                                    });
                                let _ = tx.send(Msg::Dialed { attempt, result }).await;
                            } => {}
                        }
                    }
                    .in_current_span(),
                );
            }
            Action::Visit { mut particle, stop } => {
                if particle.hop == 0 {
                    self.state.stamp_injection(Instant::now());
                }
                let base = StopBase {
                    node_name: self.config.me().name.clone(),
                    node_index: self.config.index as u32,
                    ring_size: self.config.ring.len() as u32,
                    lap_time: stop.lap_time,
                };
                let hold = self.pipeline.run(&base, &mut particle).await;
                let hold = hold.max(Duration::from_millis(self.config.delay_ms));
                debug!(
                    generation = particle.generation,
                    lap = particle.lap,
                    hop = particle.hop,
                    "particle visited"
                );
                self.observer.emit(
                    self.config.index,
                    EventKind::Visit {
                        generation: particle.generation,
                        lap: particle.lap,
                        hop: particle.hop,
                        lap_time: stop.lap_time,
                    },
                );
                events.push_back(Event::VisitDone { particle, hold });
            }
            Action::Hold(d) => {
                self.hold_until = Some(tokio::time::Instant::now() + d);
            }
            Action::Send(particle) => {
                let frame = Frame::Particle(particle);
                let sent = match self.downlink.as_mut() {
                    Some((_, link)) => {
                        let limit = Duration::from_millis(self.config.write_timeout_ms);
                        match timeout(limit, link.writer.write_frame(&frame)).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!("write timed out after {limit:?}")),
                        }
                    }
                    None => Err("no successor link".to_string()),
                };
                if let Err(why) = sent {
                    warn!(%why, "sending the particle failed; it waits for a new link");
                    self.downlink = None;
                    let Frame::Particle(particle) = frame else {
                        unreachable!("built above")
                    };
                    events.push_back(Event::SendFailed(particle));
                }
            }
            Action::Injected { generation } => {
                info!(generation, "particle injected");
            }
            Action::Dropped { generation, reason } => {
                let reason = match reason {
                    DropReason::Stale { current } => {
                        format!("stale generation (current {current})")
                    }
                    DropReason::Duplicate => "duplicate: this node already has one".into(),
                };
                warn!(generation, %reason, "particle dropped");
                self.observer.emit(
                    self.config.index,
                    EventKind::ParticleDropped { generation, reason },
                );
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Connects to the successor and exchanges hellos, all within the
/// handshake timeout.
async fn dial(
    addr: &str,
    hello: Hello,
    config: &NodeConfig,
) -> Result<(FrameWriter<OwnedWriteHalf>, FrameReader<OwnedReadHalf>), DialError> {
    let limit = Duration::from_millis(config.handshake_timeout_ms);
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| DialError::Failed(format!("connect {addr}: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| DialError::Failed(e.to_string()))?;
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r, config.max_frame_bytes);
        let mut writer = FrameWriter::new(w, config.max_frame_bytes);
        writer
            .write_frame(&Frame::Hello(hello))
            .await
            .map_err(|e| DialError::Failed(format!("sending hello: {e}")))?;
        match reader.read_frame().await {
            Ok(Some(Frame::Welcome(w))) if w.version == PROTOCOL_VERSION => Ok((writer, reader)),
            Ok(Some(Frame::Welcome(w))) => Err(DialError::Refused(format!(
                "successor speaks protocol {}, we speak {PROTOCOL_VERSION}",
                w.version
            ))),
            Ok(Some(Frame::Refuse(r))) => Err(DialError::Refused(r.reason)),
            Ok(Some(other)) => Err(DialError::Failed(format!(
                "unexpected answer to hello: {other:?}"
            ))),
            Ok(None) => Err(DialError::Failed("closed during handshake".into())),
            Err(e) => Err(DialError::Failed(format!("handshake: {e}"))),
        }
    };
    match timeout(limit, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Failed(format!(
            "handshake with {addr} timed out after {limit:?}"
        ))),
    }
}

/// Watches the successor link for its end. The successor sends nothing
/// after its welcome, so any frame is a protocol error.
async fn watch_downstream(
    mut reader: FrameReader<OwnedReadHalf>,
    attempt: u64,
    tx: mpsc::Sender<Msg>,
    cancel: CancellationToken,
) {
    let why = tokio::select! {
        () = cancel.cancelled() => return,
        r = reader.read_frame() => match r {
            Ok(None) => "closed by the successor".to_string(),
            Ok(Some(f)) => format!("unexpected frame from the successor: {f:?}"),
            Err(e) => e.to_string(),
        },
    };
    let _ = tx.send(Msg::DownstreamClosed { attempt, why }).await;
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<NodeConfig>,
    tx: mpsc::Sender<Msg>,
    observer: Observer,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(1);
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(1);
                let span = info_span!("upstream", peer = %peer);
                tracker.spawn(
                    serve_upstream(
                        stream,
                        Arc::clone(&config),
                        tx.clone(),
                        observer.clone(),
                        cancel.clone(),
                    )
                    .instrument(span),
                );
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                warn!(cause = %e, "accept failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// Serves one connection on the ring port: hello check, then particles.
async fn serve_upstream(
    stream: TcpStream,
    config: Arc<NodeConfig>,
    tx: mpsc::Sender<Msg>,
    observer: Observer,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, config.max_frame_bytes);
    let mut writer = FrameWriter::new(w, config.max_frame_bytes);
    let reject = |reason: String| {
        warn!(%reason, "upstream connection closed");
        observer.emit(config.index, EventKind::UpstreamRejected { reason });
    };

    let limit = Duration::from_millis(config.handshake_timeout_ms);
    let first = tokio::select! {
        () = cancel.cancelled() => return,
        r = timeout(limit, reader.read_frame()) => r,
    };
    let hello = match first {
        Ok(Ok(Some(Frame::Hello(h)))) => h,
        Ok(Ok(Some(other))) => return reject(format!("expected hello, got {}", kind(&other))),
        Ok(Ok(None)) => return, // connected and left: a port probe
        Ok(Err(e)) => return reject(format!("bad hello: {e}")),
        Err(_) => return reject(format!("no hello within {limit:?}")),
    };
    if let Err(reason) = check_hello(&hello, &config) {
        let _ = timeout(
            limit,
            writer.write_frame(&Frame::Refuse(Refuse {
                reason: reason.clone(),
            })),
        )
        .await;
        return reject(format!("refused {}: {reason}", hello.from_name));
    }
    let welcome = Frame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        node_index: config.index as u32,
    });
    match timeout(limit, writer.write_frame(&welcome)).await {
        Ok(Ok(())) => {}
        _ => return reject("could not send welcome".into()),
    }
    info!(predecessor = hello.from_index, "predecessor linked");
    // Keep the write half alive: dropping it would close our side.
    let _writer = writer;
    loop {
        let frame = tokio::select! {
            () = cancel.cancelled() => return,
            r = reader.read_frame() => r,
        };
        match frame {
            Ok(Some(Frame::Particle(p))) => {
                if tx.send(Msg::Particle(p)).await.is_err() {
                    return; // the node is stopping
                }
            }
            Ok(Some(other)) => {
                return reject(format!("unexpected {} on an upstream link", kind(&other)));
            }
            Ok(None) => {
                info!(predecessor = hello.from_index, "predecessor link closed");
                return;
            }
            Err(e) => return reject(wire_reason(&e)),
        }
    }
}

fn wire_reason(e: &WireError) -> String {
    format!("bad frame: {e}")
}

fn kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "hello",
        Frame::Welcome(_) => "welcome",
        Frame::Refuse(_) => "refuse",
        Frame::Particle(_) => "particle",
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
