//! The cache's TCP server: one [`Store`] served over the memcached text
//! protocol ([`super::proto`]), one tracked task per connection.
//!
//! A client can end only its own connection:
//! - **At most [`CacheConfig::max_connections`] connections** (default
//!   1024, memcached's `-c`), bounded as the admin API's
//!   ([`crate::conns`]): a connection is *busy* only while a command runs
//!   and its reply is written, *idle* otherwise; at the cap the oldest
//!   idle connection is closed to admit a newcomer, and when every one is
//!   busy the newcomer gets `SERVER_ERROR too many open connections` and
//!   is closed. A flood of silent sockets therefore cycles through idle
//!   places (so does a pool of clients resting between requests: give a
//!   cap above the clients' pools).
//! - **A started command must be whole within
//!   [`CacheConfig::command_timeout_ms`]** (default 30 s) from its first
//!   byte, or the connection is closed: a slowloris holds nothing for
//!   long. A connection resting between commands has no timeout (clients
//!   keep pools open), only the eviction above.
//! - **A reply must be taken within [`CacheConfig::write_timeout_ms`]**
//!   (default 30 s) or the connection is closed; replies are written as
//!   they grow past [`FLUSH_AT`] bytes, so a client that pipelines
//!   requests and reads nothing holds at most about that much.
//! - Bytes held per connection are bounded by the parser's limits
//!   (a line, or one item's data block) plus one read.
//!
//! Every node serves its own store: keys are not yet spread over the ring
//! (that is the ring cache's later part, which sits on this server).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::exec::{execute, export};
use super::proto::{Command, Input, Limits, Parser, Reply, encode_value};
use super::store::{Store, StoreLimits};
use crate::config::CacheConfig;
use crate::conns::{Admitted, ConnTable};
use crate::lograte::LogBackoff;
use crate::metrics::Metrics;

/// Reply bytes gathered before they are written out mid-batch.
pub const FLUSH_AT: usize = 256 << 10;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 << 10;
/// Items the expiry sweep looks at per [`SWEEP_EVERY`].
const SWEEP_ITEMS: usize = 4096;
/// How often the expiry sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Pause after an accept error (out of file descriptors…).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What the `version` command answers: a memcached-style number first
/// (clients parse it), then who answers.
pub const VERSION: &str = concat!("1.6.0-ringhost-", env!("CARGO_PKG_VERSION"));

/// The store and the figures every connection shares.
pub struct Shared {
    store: Mutex<Store>,
    pub(super) config: CacheConfig,
    pub(super) started: Instant,
    pub(super) curr_connections: AtomicU64,
    pub(super) total_connections: AtomicU64,
}

impl Shared {
    /// An empty store with `config`'s bounds.
    pub fn new(config: CacheConfig) -> Arc<Self> {
        Arc::new(Self {
            store: Mutex::new(Store::new(StoreLimits {
                memory_bytes: config.memory_bytes,
                item_max: config.item_max_bytes,
            })),
            config,
            started: Instant::now(),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
        })
    }

    pub(super) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A short, panic-free critical section; a poisoned lock still
        // holds a consistent store (every method leaves it whole).
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn limits(&self) -> Limits {
        Limits {
            item_max: self.config.item_max_bytes,
            ..Limits::default()
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves `listener` until `cancel`, then closes every connection (a
/// command running finishes its reply first, within the write timeout).
/// Connections ended for a bound are counted in `metrics`' refusals
/// (port `cache`).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let c = &shared.config;
    let table = ConnTable::new(c.max_connections, c.max_connections);
    let tracker = TaskTracker::new();
    let mut logs = LogBackoff::default();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            _ = sweep.tick() => {
                let mut store = shared.store();
                store.sweep(unix_now(), SWEEP_ITEMS);
                export(&store, &metrics);
                continue;
            }
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    if let Some(held) = logs.check("accept", Instant::now()) {
                        warn!(cause = %e, held_back = held, "cache: accepting a connection failed");
                    }
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let admitted = table.admit(peer.ip());
        if admitted.as_ref().is_ok_and(Admitted::made_room) {
            metrics.refused("cache", "evicted");
        }
        let Ok(admitted) = admitted else {
            metrics.refused("cache", "full");
            if let Some(held) = logs.check("full", Instant::now()) {
                warn!(%peer, held_back = held, "cache: every connection is busy; a new one was refused");
            }
            // Best effort, never waiting: the socket buffer takes it.
            let _ = stream.try_write(b"SERVER_ERROR too many open connections\r\n");
            continue;
        };
        let shared = Arc::clone(&shared);
        let metrics = Arc::clone(&metrics);
        let stop = cancel.clone();
        tracker.spawn(async move {
            shared.curr_connections.fetch_add(1, Ordering::Relaxed);
            shared.total_connections.fetch_add(1, Ordering::Relaxed);
            match serve_conn(stream, &shared, &admitted, &stop).await {
                Ok(()) => {}
                Err(e) => {
                    if let Some(reason) = e.refusal() {
                        metrics.refused("cache", reason);
                    }
                    debug!(%peer, cause = %e, "cache connection closed");
                }
            }
            shared.curr_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    tracker.close();
    let bound = Duration::from_millis(shared.config.write_timeout_ms) + Duration::from_secs(1);
    let _ = tokio::time::timeout(bound, tracker.wait()).await;
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error("a command did not arrive whole in time")]
    SlowCommand,
    #[error("the client did not take its reply in time")]
    SlowReader,
    #[error("a command line was over the bound")]
    LineTooLong,
}

impl ConnError {
    /// The refusal reason this end is counted under (`None`: the client's
    /// own doing, such as a reset).
    fn refusal(&self) -> Option<&'static str> {
        match self {
            Self::Io(_) => None,
            Self::SlowCommand => Some("slow_command"),
            Self::SlowReader => Some("write"),
            Self::LineTooLong => Some("line_too_long"),
        }
    }
}

/// One connection: read, parse every whole input, run it, write replies.
async fn serve_conn(
    mut stream: TcpStream,
    shared: &Shared,
    admitted: &Admitted,
    cancel: &CancellationToken,
) -> Result<(), ConnError> {
    let write_timeout = Duration::from_millis(shared.config.write_timeout_ms);
    let command_timeout = Duration::from_millis(shared.config.command_timeout_ms);
    let mut parser = Parser::new(shared.limits());
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::new();
    // When the command now arriving began (`None` between commands).
    let mut partial_since: Option<Instant> = None;
    loop {
        let busy = admitted.busy();
        let mut progressed = false;
        while let Some(next) = parser.decode(&mut input) {
            progressed = true;
            let go_on = match next {
                Input::Command(Command::Quit) => false,
                Input::Command(cmd) => {
                    run(shared, cmd, &mut out, &mut stream, write_timeout).await?;
                    true
                }
                Input::Reply(r) => {
                    r.encode(&mut out);
                    true
                }
                Input::TooLarge {
                    key,
                    unlink,
                    noreply,
                } => {
                    if unlink {
                        shared.store().unlink(&key);
                    }
                    if !noreply {
                        Reply::ServerError("object too large for cache").encode(&mut out);
                    }
                    true
                }
                Input::Fatal(r) => {
                    r.encode(&mut out);
                    flush(&mut stream, &mut out, write_timeout).await?;
                    return Err(ConnError::LineTooLong);
                }
            };
            if !go_on {
                flush(&mut stream, &mut out, write_timeout).await?;
                return Ok(());
            }
            if out.len() >= FLUSH_AT {
                flush(&mut stream, &mut out, write_timeout).await?;
            }
        }
        flush(&mut stream, &mut out, write_timeout).await?;
        drop(busy);
        let mid_command = !input.is_empty() || !parser.between_commands();
        // The deadline runs from the first byte of the command now
        // arriving: a client pipelining steadily (each read ending inside
        // a command) starts a new one with every command completed.
        partial_since = match (mid_command, partial_since) {
            (false, _) => None,
            (true, Some(since)) if !progressed => Some(since),
            (true, _) => Some(Instant::now()),
        };
        let deadline = partial_since.map(|s| tokio::time::Instant::from_std(s + command_timeout));
        input.reserve(READ_CHUNK);
        let read = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, stream.read_buf(&mut input))
                    .await
                    .map_err(|_| ConnError::SlowCommand)?
                    .map_err(ConnError::Io),
                None => stream.read_buf(&mut input).await.map_err(ConnError::Io),
            }
        };
        // Reading is cancel-safe: the bytes live in `input`.
        let n = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = admitted.closed() => return Ok(()),
            r = read => r?,
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// Writes `out` whole within `timeout`, then empties it.
async fn flush(
    stream: &mut TcpStream,
    out: &mut BytesMut,
    timeout: Duration,
) -> Result<(), ConnError> {
    if out.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(timeout, stream.write_all(out))
        .await
        .map_err(|_| ConnError::SlowReader)??;
    out.clear();
    Ok(())
}

/// Runs one command against the store, appending its reply to `out`
/// (writing out a long list of values as it grows).
async fn run(
    shared: &Shared,
    cmd: Command,
    out: &mut BytesMut,
    stream: &mut TcpStream,
    write_timeout: Duration,
) -> Result<(), ConnError> {
    let now = unix_now();
    let (keys, cas, touch) = match cmd {
        Command::Get { keys, cas } => (keys, cas, None),
        Command::Gat { exptime, keys, cas } => (keys, cas, Some(exptime)),
        other => {
            if let Some(r) = execute(shared, other, now) {
                r.encode(out);
            }
            return Ok(());
        }
    };
    // Values are shared buffers: the lock is held for the lookups only.
    let hits: Vec<_> = {
        let mut store = shared.store();
        keys.into_iter()
            .filter_map(|k| {
                let hit = match touch {
                    Some(e) => store.gat(&k, e, now),
                    None => store.get(&k, now),
                };
                hit.map(|h| (k, h))
            })
            .collect()
    };
    for (key, hit) in hits {
        encode_value(out, &key, hit.flags, &hit.value, cas.then_some(hit.cas));
        if out.len() >= FLUSH_AT {
            flush(stream, out, write_timeout).await?;
        }
    }
    Reply::End.encode(out);
    Ok(())
}
