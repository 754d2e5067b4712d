//! The application server of the tokens example: an HTTP server that sits
//! beside one ringhost node and decides, for each request, whether to
//! serve it, from the caller's token (header `x-api-key`, or `?token=`).
//!
//! Two guards, so the two models can run side by side on the same traffic:
//!
//! - [`Guard::Ring`]: the fleet's verdict. Every token seen is reported to
//!   the local node in batches over its datagram socket (`--input-udp`;
//!   one datagram = `STATION\n` then lines `o TOKEN`, at most
//!   [`BATCH_BYTES`], sent every [`AppConfig::flush`] or when full; the
//!   request never waits for it). The node's `blocked` set is mirrored in
//!   memory from its event stream (`GET
//!   /v1/stations/STATION/sets/blocked/events`: the live entries, `synced`,
//!   then every change), so a check is one hash lookup; the stream is
//!   reopened (with a fresh snapshot) when it ends, lags or falls silent.
//! - [`Guard::PerNode`]: what a user does today, fail2ban's model: this
//!   server counts each token on its own over a sliding window and refuses
//!   a token once it has seen it `threshold` times in the window.
//!
//! Answers: 200 `ok`, 403 `blocked: <why>`, 400 without a valid token (1 to
//! 256 bytes, no ASCII whitespace: the station's token syntax).
//!
//! Not here: authentication of the datagrams (loopback only), TLS.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most bytes in one report datagram (a node takes 64 KiB of payload).
pub const BATCH_BYTES: usize = 60 * 1024;
/// Tokens waiting to be reported; past this, reports are dropped (and
/// counted) rather than slowing requests.
pub const REPORT_QUEUE: usize = 100_000;
/// Longest token the station takes, bytes.
pub const MAX_TOKEN: usize = 256;
/// Bound on opening the event stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream with no byte for this long is reopened (the node sends a
/// keep-alive comment every 15 s).
const STREAM_IDLE: Duration = Duration::from_secs(40);
/// Backoff between attempts to reopen the stream: first, cap.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// How a server guards its requests.
#[derive(Debug, Clone)]
pub enum Guard {
    /// Report to the local node and enforce the fleet's `blocked` set.
    Ring {
        /// The node's admin API or ring address (`ringhost` tools accept
        /// either; the ring port's status names the admin API).
        node: String,
        /// The node's datagram input socket (`--input-udp`).
        udp: String,
        /// The tokens station's name on the ring.
        station: String,
    },
    /// Count on this server only: refuse a token seen `threshold` times
    /// within `window`.
    PerNode {
        /// Requests within the window at which a token is refused.
        threshold: u32,
        /// The sliding window.
        window: Duration,
    },
}

/// An application server's settings.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The guard.
    pub guard: Guard,
    /// Longest a report waits before its datagram is sent.
    pub flush: Duration,
}

/// A blocked token as this server knows it.
#[derive(Debug, Clone)]
pub struct Blocked {
    /// The node's reason, e.g. `spread (node 3): …`.
    pub info: String,
    /// When the block ends, ms since the Unix epoch (0: never).
    pub expires_unix_ms: u64,
    /// When this server learnt of it.
    pub at: Instant,
    /// The same, ms since the Unix epoch.
    pub at_unix_ms: u64,
}

/// Counts of what the server answered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Requests served (200).
    pub served: u64,
    /// Requests refused (403).
    pub denied: u64,
    /// Reports dropped because the queue was full.
    pub reports_dropped: u64,
    /// Report datagrams sent.
    pub datagrams: u64,
}

struct RingState {
    blocked: Mutex<HashMap<String, Blocked>>,
    /// The entries of the last `clear`: a station that restarts clears
    /// its sets and republishes them, and a token put again keeps when
    /// this server first learnt of it.
    cleared: Mutex<HashMap<String, Blocked>>,
    synced: AtomicBool,
    reports: mpsc::Sender<String>,
}

struct PerNodeState {
    threshold: u32,
    window: Duration,
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
}

enum Mode {
    Ring(RingState),
    PerNode(PerNodeState),
}

struct Shared {
    mode: Mode,
    served: AtomicU64,
    denied: AtomicU64,
    dropped: AtomicU64,
    datagrams: AtomicU64,
}

/// A running application server. [`App::shutdown`] stops it and waits
/// for its tasks; dropping it cancels them.
pub struct App {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for App {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// ms since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether `t` is a token the station takes.
pub fn valid_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_TOKEN && !t.bytes().any(|b| b.is_ascii_whitespace())
}

impl App {
    /// Starts serving on `listener`; in ring mode also the reporter and
    /// the `blocked` stream (which [`App::wait_synced`] waits for).
    ///
    /// # Errors
    /// Ring mode: the node's admin API cannot be found, or the datagram
    /// socket cannot be opened.
    pub async fn start(config: AppConfig, listener: TcpListener) -> Result<Self> {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let addr = listener.local_addr()?;
        let mode = match &config.guard {
            Guard::Ring { node, udp, station } => {
                let admin = ringhost::admin::client::connect(node, None)
                    .await
                    .with_context(|| format!("finding the admin API of node {node}"))?
                    .addr()
                    .to_string();
                let socket = UdpSocket::bind("127.0.0.1:0").await?;
                socket
                    .connect(udp)
                    .await
                    .with_context(|| format!("datagram socket to {udp}"))?;
                let (tx, rx) = mpsc::channel(REPORT_QUEUE);
                (
                    Mode::Ring(RingState {
                        blocked: Mutex::new(HashMap::new()),
                        cleared: Mutex::new(HashMap::new()),
                        synced: AtomicBool::new(false),
                        reports: tx,
                    }),
                    Some((admin, socket, rx, station.clone())),
                )
            }
            Guard::PerNode { threshold, window } => (
                Mode::PerNode(PerNodeState {
                    threshold: *threshold,
                    window: *window,
                    seen: Mutex::new(HashMap::new()),
                }),
                None,
            ),
        };
        let (mode, ring) = mode;
        let shared = Arc::new(Shared {
            mode,
            served: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
        });
        if let Some((admin, socket, rx, station)) = ring {
            tracker.spawn(report(
                socket,
                rx,
                station.clone(),
                config.flush,
                shared.clone(),
                cancel.clone(),
            ));
            tracker.spawn(follow_blocked(
                admin,
                station,
                shared.clone(),
                cancel.clone(),
            ));
        } else {
            tracker.spawn(sweep(shared.clone(), cancel.clone()));
        }
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let stop = cancel.clone();
        tracker.spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(cause = %e, "application server stopped");
            }
        });
        tracker.close();
        Ok(Self {
            addr,
            shared,
            cancel,
            tracker,
        })
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ring mode: waits until the `blocked` set's snapshot has arrived.
    /// Per-node mode: at once.
    ///
    /// # Errors
    /// Not synced within `within`.
    pub async fn wait_synced(&self, within: Duration) -> Result<()> {
        let Mode::Ring(r) = &self.shared.mode else {
            return Ok(());
        };
        let deadline = Instant::now() + within;
        while !r.synced.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                bail!(
                    "the blocked set of the node beside {} was not synced within {within:?}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Ring mode: `token`'s block as this server knows it.
    pub fn blocked(&self, token: &str) -> Option<Blocked> {
        match &self.shared.mode {
            Mode::Ring(r) => r.blocked.lock().expect("not poisoned").get(token).cloned(),
            Mode::PerNode(_) => None,
        }
    }

    /// Ring mode: every token blocked here now.
    pub fn blocked_tokens(&self) -> Vec<String> {
        match &self.shared.mode {
            Mode::Ring(r) => r
                .blocked
                .lock()
                .expect("not poisoned")
                .keys()
                .cloned()
                .collect(),
            Mode::PerNode(_) => Vec::new(),
        }
    }

    /// What it answered so far.
    pub fn counts(&self) -> Counts {
        Counts {
            served: self.shared.served.load(Ordering::Relaxed),
            denied: self.shared.denied.load(Ordering::Relaxed),
            reports_dropped: self.shared.dropped.load(Ordering::Relaxed),
            datagrams: self.shared.datagrams.load(Ordering::Relaxed),
        }
    }

    /// Stops serving (reports still queued are sent) and waits for every
    /// task of this server.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The caller's token: `x-api-key`, else `?token=`.
fn token_of(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(v) = headers.get("x-api-key") {
        return v.to_str().ok().map(str::to_string);
    }
    let q: TokenQuery = serde_urlencoded::from_str(uri.query()?).ok()?;
    q.token
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(token) = token_of(&headers, &uri).filter(|t| valid_token(t)) else {
        return (
            StatusCode::BAD_REQUEST,
            "a token is needed: header x-api-key or ?token= (1-256 bytes, no whitespace)\n",
        )
            .into_response();
    };
    let refused = match &shared.mode {
        Mode::Ring(r) => {
            // Every token seen is reported, refused or not: the fleet's
            // counts are what the servers saw.
            if r.reports.try_send(token.clone()).is_err() {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            r.blocked
                .lock()
                .expect("not poisoned")
                .get(&token)
                .map(|b| b.info.clone())
        }
        Mode::PerNode(p) => p.record(&token),
    };
    match refused {
        Some(why) => {
            shared.denied.fetch_add(1, Ordering::Relaxed);
            (StatusCode::FORBIDDEN, format!("blocked: {why}\n")).into_response()
        }
        None => {
            shared.served.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, "ok\n").into_response()
        }
    }
}

impl PerNodeState {
    /// Counts one request of `token`; `Some(why)` when it is refused.
    fn record(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("not poisoned");
        let times = seen.entry(token.to_string()).or_default();
        while times
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.window)
        {
            times.pop_front();
        }
        times.push_back(now);
        (times.len() >= self.threshold as usize).then(|| {
            format!(
                "seen {} times here in {} s >= per-node threshold {}",
                times.len(),
                self.window.as_secs(),
                self.threshold
            )
        })
    }
}

/// Per-node mode: forgets tokens whose window is empty, so memory follows
/// the tokens seen in the last window.
async fn sweep(shared: Arc<Shared>, cancel: CancellationToken) {
    let Mode::PerNode(p) = &shared.mode else {
        return;
    };
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = Instant::now();
        p.seen.lock().expect("not poisoned").retain(|_, times| {
            times
                .back()
                .is_some_and(|&t| now.duration_since(t) < p.window)
        });
    }
}

/// Ring mode: batches reported tokens into datagrams `STATION\no T\n…`.
async fn report(
    socket: UdpSocket,
    mut rx: mpsc::Receiver<String>,
    station: String,
    flush: Duration,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let header = format!("{station}\n");
    let mut buf = String::with_capacity(BATCH_BYTES + MAX_TOKEN + 4);
    loop {
        // Wait for the first token of a batch.
        let first = tokio::select! {
            t = rx.recv() => t,
            _ = cancel.cancelled() => None,
        };
        let Some(first) = first else { break };
        buf.clear();
        buf.push_str(&header);
        push_line(&mut buf, &first);
        let deadline = tokio::time::Instant::now() + flush;
        let mut open = true;
        while buf.len() < BATCH_BYTES {
            tokio::select! {
                t = rx.recv() => match t {
                    Some(t) => push_line(&mut buf, &t),
                    None => { open = false; break }
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = cancel.cancelled() => { open = false; break }
            }
        }
        send(&socket, &buf, &shared).await;
        if !open {
            break;
        }
    }
    // Shutting down: what is still queued goes out too.
    rx.close();
    buf.clear();
    buf.push_str(&header);
    while let Ok(t) = rx.try_recv() {
        push_line(&mut buf, &t);
        if buf.len() >= BATCH_BYTES {
            send(&socket, &buf, &shared).await;
            buf.truncate(header.len());
        }
    }
    if buf.len() > header.len() {
        send(&socket, &buf, &shared).await;
    }
}

fn push_line(buf: &mut String, token: &str) {
    buf.push_str("o ");
    buf.push_str(token);
    buf.push('\n');
}

async fn send(socket: &UdpSocket, buf: &str, shared: &Shared) {
    // A datagram to a node not listening yet fails: that batch is lost,
    // as a datagram may be; the counts say so.
    match tokio::time::timeout(Duration::from_secs(1), socket.send(buf.as_bytes())).await {
        Ok(Ok(_)) => {
            shared.datagrams.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One event of the set's stream.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum SetEvent {
    Put {
        key: String,
        info: String,
        expires_unix_ms: u64,
    },
    Remove {
        key: String,
    },
    Expire {
        key: String,
    },
    Clear,
}

/// Why a stream ended.
enum StreamEnd {
    Cancelled,
    Reopen(String),
}

/// Ring mode: mirrors the node's `blocked` set, reopening the stream (with
/// backoff) whenever it ends.
async fn follow_blocked(
    admin: String,
    station: String,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let Mode::Ring(r) = &shared.mode else { return };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{admin}/v1/stations/{station}/sets/blocked/events");
    let mut backoff = BACKOFF.0;
    loop {
        match stream_once(&client, &uri, r, &cancel).await {
            StreamEnd::Cancelled => return,
            StreamEnd::Reopen(why) => {
                tracing::warn!(%why, uri, "blocked set stream ended; reopening");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

async fn stream_once(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: &str,
    r: &RingState,
    cancel: &CancellationToken,
) -> StreamEnd {
    let req = match hyper::Request::get(uri).body(Empty::new()) {
        Ok(req) => req,
        Err(e) => return StreamEnd::Reopen(e.to_string()),
    };
    let resp = tokio::select! {
        _ = cancel.cancelled() => return StreamEnd::Cancelled,
        resp = tokio::time::timeout(CONNECT_TIMEOUT, client.request(req)) => resp,
    };
    let mut body = match resp {
        Ok(Ok(resp)) if resp.status().is_success() => resp.into_body(),
        Ok(Ok(resp)) => return StreamEnd::Reopen(format!("answer {}", resp.status())),
        Ok(Err(e)) => return StreamEnd::Reopen(e.to_string()),
        Err(_) => return StreamEnd::Reopen(format!("no answer within {CONNECT_TIMEOUT:?}")),
    };
    // Until `synced`, the snapshot builds a fresh map (a reopened stream
    // starts over); entries already known keep when we learnt of them.
    let mut snapshot: Option<HashMap<String, Blocked>> = Some(HashMap::new());
    let mut pending = Vec::new();
    let mut event = String::new();
    let mut data = String::new();
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return StreamEnd::Cancelled,
            f = tokio::time::timeout(STREAM_IDLE, body.frame()) => f,
        };
        let chunk = match frame {
            Err(_) => return StreamEnd::Reopen(format!("silent for {STREAM_IDLE:?}")),
            Ok(None) => return StreamEnd::Reopen("closed".into()),
            Ok(Some(Err(e))) => return StreamEnd::Reopen(e.to_string()),
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !event.is_empty() {
                let done = apply(r, &mut snapshot, &event, &data);
                event.clear();
                data.clear();
                if let Err(why) = done {
                    return StreamEnd::Reopen(why);
                }
            }
        }
    }
}

/// Applies one event to the mirror (or the snapshot being built).
fn apply(
    r: &RingState,
    snapshot: &mut Option<HashMap<String, Blocked>>,
    event: &str,
    data: &str,
) -> Result<(), String> {
    match event {
        "synced" => {
            let fresh = snapshot.take().unwrap_or_default();
            let mut blocked = r.blocked.lock().expect("not poisoned");
            let old = std::mem::replace(&mut *blocked, fresh);
            for (k, b) in blocked.iter_mut() {
                if let Some(o) = old.get(k) {
                    b.at = o.at;
                    b.at_unix_ms = o.at_unix_ms;
                }
            }
            r.synced.store(true, Ordering::Release);
            return Ok(());
        }
        "lagged" => return Err(format!("lagged: {data}")),
        _ => {}
    }
    let ev: SetEvent =
        serde_json::from_str(data).map_err(|e| format!("bad event {data:?}: {e}"))?;
    tracing::debug!(?ev, snapshot = snapshot.is_some(), "blocked set event");
    let mut live = r.blocked.lock().expect("not poisoned");
    let map = match snapshot.as_mut() {
        Some(m) => m,
        None => &mut *live,
    };
    match ev {
        SetEvent::Put {
            key,
            info,
            expires_unix_ms,
        } => {
            let earlier = r.cleared.lock().expect("not poisoned").remove(&key);
            let e = map.entry(key).or_insert_with(|| {
                earlier.unwrap_or_else(|| Blocked {
                    info: String::new(),
                    expires_unix_ms,
                    at: Instant::now(),
                    at_unix_ms: unix_ms(),
                })
            });
            e.info = info;
            e.expires_unix_ms = expires_unix_ms;
        }
        SetEvent::Remove { key } | SetEvent::Expire { key } => {
            map.remove(&key);
        }
        SetEvent::Clear => {
            tracing::info!("the node cleared its blocked set (a station restart republishes it)");
            *r.cleared.lock().expect("not poisoned") = std::mem::take(map);
        }
    }
    Ok(())
}
