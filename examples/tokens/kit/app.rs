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
//!   memory from its event stream (`mirror`), so a check is one hash
//!   lookup.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::mirror;
pub use super::mirror::{Blocked, Mirror};

/// Most bytes in one report datagram (a node takes 64 KiB of payload).
pub const BATCH_BYTES: usize = 60 * 1024;
/// Tokens waiting to be reported; past this, reports are dropped (and
/// counted) rather than slowing requests.
pub const REPORT_QUEUE: usize = 100_000;
/// Longest token the station takes, bytes.
pub const MAX_TOKEN: usize = 256;

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
    mirror: Arc<Mirror>,
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
                let mirror = Arc::new(Mirror::default());
                let follow = mirror::follow(
                    mirror.clone(),
                    node.clone(),
                    admin,
                    station.clone(),
                    cancel.clone(),
                );
                (
                    Mode::Ring(RingState {
                        mirror,
                        reports: tx,
                    }),
                    Some((follow, socket, rx, station.clone())),
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
        if let Some((follow, socket, rx, station)) = ring {
            tracker.spawn(report(
                socket,
                rx,
                station.clone(),
                config.flush,
                shared.clone(),
                cancel.clone(),
            ));
            tracker.spawn(follow);
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
        match &self.shared.mode {
            Mode::Ring(r) => r.mirror.wait_synced(within).await,
            Mode::PerNode(_) => Ok(()),
        }
    }

    /// Ring mode: `token`'s block as this server knows it.
    pub fn blocked(&self, token: &str) -> Option<Blocked> {
        match &self.shared.mode {
            Mode::Ring(r) => r.mirror.get(token),
            Mode::PerNode(_) => None,
        }
    }

    /// Ring mode: every token blocked here now.
    pub fn blocked_tokens(&self) -> Vec<String> {
        match &self.shared.mode {
            Mode::Ring(r) => r.mirror.keys(),
            Mode::PerNode(_) => Vec::new(),
        }
    }

    /// Ring mode: the node's mirror.
    pub fn mirror(&self) -> Option<&Mirror> {
        match &self.shared.mode {
            Mode::Ring(r) => Some(&r.mirror),
            Mode::PerNode(_) => None,
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
            r.mirror.info(&token)
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
