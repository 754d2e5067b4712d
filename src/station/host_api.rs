//! Our implementation of the WIT imports of `ringhost:station@0.2`
//! (`host`, `kv`, `inbox`, `sets`) and the per-store state they work on,
//! plus the sink that turns guest stdout/stderr into log lines. The 0.1
//! imports delegate to these ([`super::host_v01`]).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::sets::{SetEntry, SetStore};
use super::worlds::v02::ringhost::station::{host, inbox, kv, sets, types};
use crate::observe::{EventKind, Observer};

/// Largest log line a station may write; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;
/// Log lines per second one station instance may write to the node's log
/// (all levels, `host.log` and stdout/stderr together); lines beyond it
/// are counted and the count is logged with the next line let through. At
/// `--delay-ms 0` a station that logs every visit would otherwise write
/// megabytes a second. Observers (tests, tools) still get every line.
pub const LOG_LINES_PER_SEC: f64 = 50.0;
/// Lines a station may write in a burst above [`LOG_LINES_PER_SEC`].
pub const LOG_BURST: f64 = 100.0;
/// Total bytes (keys plus values) one station may keep in the kv store.
pub const KV_QUOTA_BYTES: usize = 1 << 20;
/// Pending messages one station's inbox may hold.
pub const INBOX_CAPACITY: usize = 10_000;
/// Pending bytes one station's inbox may hold (a station that never reads
/// its inbox holds at most this much of the node's memory).
pub const INBOX_MAX_BYTES: usize = 8 << 20;

/// The node-local key-value store, namespaced per station. Cloning shares
/// it. Short critical sections only, never held across an await.
#[derive(Debug, Clone, Default)]
pub struct KvStore {
    inner: Arc<Mutex<BTreeMap<String, Namespace>>>,
}

/// One station's keys and values.
type Namespace = BTreeMap<String, Vec<u8>>;

impl KvStore {
    /// The value of `key` in `station`'s namespace.
    pub fn get(&self, station: &str, key: &str) -> Option<Vec<u8>> {
        let map = self.inner.lock().expect("kv lock");
        map.get(station).and_then(|ns| ns.get(key)).cloned()
    }

    /// Stores `value` under `key` in `station`'s namespace.
    ///
    /// # Errors
    /// When the namespace would exceed [`KV_QUOTA_BYTES`]; nothing changes.
    pub fn set(&self, station: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        let mut map = self.inner.lock().expect("kv lock");
        let ns = map.entry(station.to_string()).or_default();
        let used: usize = ns.iter().map(|(k, v)| k.len() + v.len()).sum();
        let old = ns.get(key).map_or(0, |v| key.len() + v.len());
        let new_total = used - old + key.len() + value.len();
        if new_total > KV_QUOTA_BYTES {
            return Err(format!(
                "kv quota exceeded: {new_total} bytes > {KV_QUOTA_BYTES} for station {station}"
            ));
        }
        ns.insert(key.to_string(), value);
        Ok(())
    }

    /// Removes `key`; whether it was there.
    pub fn delete(&self, station: &str, key: &str) -> bool {
        let mut map = self.inner.lock().expect("kv lock");
        map.get_mut(station)
            .is_some_and(|ns| ns.remove(key).is_some())
    }

    /// The keys of `station`'s namespace that start with `prefix`, with
    /// their values, ascending.
    pub fn prefixed(&self, station: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let map = self.inner.lock().expect("kv lock");
        let Some(ns) = map.get(station) else {
            return Vec::new();
        };
        ns.range::<str, _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        ))
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
    }

    /// Keys of `station`'s namespace, ascending.
    pub fn keys(&self, station: &str) -> Vec<String> {
        let map = self.inner.lock().expect("kv lock");
        map.get(station)
            .map(|ns| ns.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// A station's queue of local inputs. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    inner: Arc<Mutex<Queue>>,
    /// Signalled at every push: the node's owner task waits on it for the
    /// inboxes of `input-station` stations (see [`Inbox::ready`]).
    ready: Arc<tokio::sync::Notify>,
}

/// An inbox's messages and their total size.
#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Inbox {
    /// Appends a message.
    ///
    /// # Errors
    /// When [`INBOX_CAPACITY`] messages are already pending, or the
    /// message would take the pending bytes over [`INBOX_MAX_BYTES`].
    pub fn push(&self, msg: Vec<u8>) -> Result<(), String> {
        let mut q = self.inner.lock().expect("inbox lock");
        if q.messages.len() >= INBOX_CAPACITY {
            return Err(format!("inbox full ({INBOX_CAPACITY} messages)"));
        }
        if q.bytes + msg.len() > INBOX_MAX_BYTES {
            return Err(format!(
                "inbox full ({} bytes pending; at most {INBOX_MAX_BYTES})",
                q.bytes
            ));
        }
        q.bytes += msg.len();
        q.messages.push_back(msg);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Removes messages, oldest first, up to `max` of them and, beyond the
    /// first, up to `max_bytes` in all (a first message larger than that
    /// is taken alone).
    pub fn take_batch(&self, max: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        let mut q = self.inner.lock().expect("inbox lock");
        let mut n = 0;
        let mut bytes = 0;
        for m in q.messages.iter().take(max) {
            if n > 0 && bytes + m.len() > max_bytes {
                break;
            }
            n += 1;
            bytes += m.len();
        }
        q.bytes -= bytes;
        q.messages.drain(..n).collect()
    }

    /// Completes once a message was pushed since the last completion (or
    /// [`Inbox::rearm`]). A permit is kept when nobody waits, so a push is
    /// never missed; a wake-up may find the inbox already empty.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Makes the next [`Inbox::ready`] complete at once: messages are
    /// still pending after a batch.
    pub fn rearm(&self) {
        self.ready.notify_one();
    }

    /// Removes up to `max` messages, oldest first.
    pub fn take(&self, max: usize) -> Vec<Vec<u8>> {
        let mut q = self.inner.lock().expect("inbox lock");
        let n = max.min(q.messages.len());
        let taken: Vec<Vec<u8>> = q.messages.drain(..n).collect();
        q.bytes -= taken.iter().map(Vec::len).sum::<usize>();
        taken
    }

    /// Pending message count.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("inbox lock").messages.len()
    }

    /// Whether no message is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The inboxes of a node's stations by name, shared by the deploy agent
/// (which registers a station's inbox when the station first runs) and
/// whoever feeds them (the admin API). Cloning shares it; locks are short.
#[derive(Debug, Clone, Default)]
pub struct Inboxes {
    inner: Arc<Mutex<std::collections::HashMap<String, Inbox>>>,
}

impl Inboxes {
    /// The inbox of station `name`, if it has run on this node.
    pub fn get(&self, name: &str) -> Option<Inbox> {
        self.inner.lock().expect("inboxes lock").get(name).cloned()
    }

    /// Registers `inbox` for `name` unless the name has one already (a
    /// new version of a station keeps the queue of the old).
    pub fn insert_if_absent(&self, name: &str, inbox: &Inbox) {
        self.inner
            .lock()
            .expect("inboxes lock")
            .entry(name.to_string())
            .or_insert_with(|| inbox.clone());
    }

    /// Whether station `name` has an inbox here.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.lock().expect("inboxes lock").contains_key(name)
    }
}

/// What every store of one station on one node shares.
#[derive(Debug, Clone)]
pub struct StationEnv {
    /// The station's name (its namespace).
    pub station: Arc<str>,
    /// Who this node is.
    pub node: types::NodeInfo,
    /// The node's kv store.
    pub kv: KvStore,
    /// This station's inbox.
    pub inbox: Inbox,
    /// The node's published sets.
    pub sets: SetStore,
    /// Where events go.
    pub observer: Observer,
    /// The node's start, the zero of `monotonic-ns`.
    pub epoch: Instant,
}

/// A token bucket of log lines, shared by every instance of one loaded
/// station (its `host.log`, stdout and stderr): a station that traps after
/// a burst of lines gets a fresh instance, not a fresh budget. Cloning
/// shares it.
#[derive(Debug, Clone)]
pub struct LogBudget {
    inner: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl LogBudget {
    /// A full bucket ([`LOG_BURST`] lines).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Bucket {
                tokens: LOG_BURST,
                at: Instant::now(),
                suppressed: 0,
            })),
        }
    }

    /// Whether a line may go to the log now; `Some(n)` with the lines held
    /// back since the last one let through.
    fn take(&self, now: Instant) -> Option<u64> {
        let mut b = self.inner.lock().expect("log budget lock");
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now;
        b.tokens = (b.tokens + elapsed * LOG_LINES_PER_SEC).min(LOG_BURST);
        if b.tokens < 1.0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.suppressed))
    }
}

/// Where one instance's log lines go: the node's log (within the budget)
/// and the observer (every line).
#[derive(Debug, Clone)]
struct LogSink {
    station: Arc<str>,
    node: u32,
    observer: Observer,
    budget: LogBudget,
}

impl LogSink {
    fn line(&self, level: types::Level, message: String) {
        use types::Level;
        if let Some(held) = self.budget.take(Instant::now()) {
            let station = &*self.station;
            if held > 0 {
                let note = format!(
                    "{held} log lines of this station held back from the node's log (over \
                     {LOG_LINES_PER_SEC} lines/s)"
                );
                tracing::warn!(station, "{note}");
                // Observers got every line: tell them the node's log did not.
                self.observer.emit(
                    self.node as usize,
                    EventKind::StationLog {
                        station: station.to_string(),
                        level: "warn".into(),
                        message: format!("host: {note}"),
                    },
                );
            }
            match level {
                Level::Trace => tracing::trace!(station, "{message}"),
                Level::Debug => tracing::debug!(station, "{message}"),
                Level::Info => tracing::info!(station, "{message}"),
                Level::Warn => tracing::warn!(station, "{message}"),
                Level::Error => tracing::error!(station, "{message}"),
            }
        }
        self.observer.emit(
            self.node as usize,
            EventKind::StationLog {
                station: self.station.to_string(),
                level: format!("{level:?}").to_lowercase(),
                message,
            },
        );
    }
}

/// The data of one wasmtime `Store`: one live instance of one station.
pub struct StationState {
    pub(super) env: StationEnv,
    log: LogSink,
    pub(super) limits: super::limits::StoreBudget,
    pub(super) call_started: Instant,
    pub(super) call_budget: std::time::Duration,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl StationState {
    pub(super) fn new(
        env: StationEnv,
        log_budget: LogBudget,
        memory_bytes: usize,
        budget: std::time::Duration,
    ) -> Self {
        let log = LogSink {
            station: env.station.clone(),
            node: env.node.index,
            observer: env.observer.clone(),
            budget: log_budget,
        };
        let out = |stream: &'static str| GuestOutput {
            log: log.clone(),
            stream,
        };
        // WASI is linked because std-built guests import it; it grants no
        // capability, and says so rather than lean on wasmtime-wasi's
        // defaults: no args, env or initial directory, no preopened
        // directories, stdin empty, stdout/stderr into the node's log (rate
        // limited), no TCP, UDP or name lookup and every socket address
        // refused. Clocks and random stay (std needs them, they reveal
        // nothing the `host` interface does not). tests/it/sandbox.rs
        // tries each from a station.
        let wasi = WasiCtxBuilder::new()
            .stdout(out("stdout"))
            .stderr(out("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let limits = super::limits::StoreBudget::new(memory_bytes);
        Self {
            env,
            log,
            limits,
            call_started: Instant::now(),
            call_budget: budget,
            wasi,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for StationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StationState {}

impl host::Host for StationState {
    fn log(&mut self, level: types::Level, mut message: String) {
        truncate_utf8(&mut message, MAX_LOG_LINE);
        self.log.line(level, message);
    }

    fn now_unix_ms(&mut self) -> u64 {
        unix_ms()
    }

    fn monotonic_ns(&mut self) -> u64 {
        u64::try_from(self.env.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn get_node_info(&mut self) -> types::NodeInfo {
        self.env.node.clone()
    }

    fn ring_config(&mut self, prefix: String) -> Vec<(String, String)> {
        ring_config(&self.env.kv, &prefix)
    }
}

/// The config bus's live keys starting with `prefix`, ascending, as this
/// node knows them: the config station keeps each live key `K` in its kv
/// namespace as `cfg/K` (see stations/config/README.md). Values that are
/// not UTF-8 (the station writes none) are skipped.
pub fn ring_config(kv: &KvStore, prefix: &str) -> Vec<(String, String)> {
    let full = format!("cfg/{prefix}");
    kv.prefixed(crate::model::CONFIG_STATION, &full)
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("cfg/")?.to_string();
            Some((key, String::from_utf8(v).ok()?))
        })
        .collect()
}

impl sets::Host for StationState {
    fn put(&mut self, name: String, entries: Vec<types::SetEntry>) -> Result<(), String> {
        let entries = entries
            .into_iter()
            .map(|e| SetEntry {
                key: e.key,
                info: e.info,
                expires_unix_ms: e.expires_unix_ms,
            })
            .collect();
        self.env
            .sets
            .put(&self.env.station, &name, entries, unix_ms())
    }

    fn remove(&mut self, name: String, keys: Vec<String>) -> u32 {
        self.env
            .sets
            .remove(&self.env.station, &name, &keys, unix_ms())
    }

    fn clear(&mut self, name: String) -> u32 {
        self.env.sets.clear(&self.env.station, &name, unix_ms())
    }

    fn size(&mut self, name: String) -> u32 {
        self.env.sets.size(&self.env.station, &name, unix_ms())
    }
}

impl kv::Host for StationState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        self.env.kv.get(&self.env.station, &key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.env.kv.set(&self.env.station, &key, value)
    }

    fn delete(&mut self, key: String) -> bool {
        self.env.kv.delete(&self.env.station, &key)
    }

    fn keys(&mut self) -> Vec<String> {
        self.env.kv.keys(&self.env.station)
    }
}

impl inbox::Host for StationState {
    fn take(&mut self, max: u32) -> Vec<Vec<u8>> {
        self.env.inbox.take(max as usize)
    }

    fn pending(&mut self) -> u32 {
        u32::try_from(self.env.inbox.len()).unwrap_or(u32::MAX)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

/// Guest stdout/stderr: complete lines become log lines of the station.
struct GuestOutput {
    log: LogSink,
    stream: &'static str,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.log.clone(),
            level: if self.stream == "stderr" {
                types::Level::Warn
            } else {
                types::Level::Info
            },
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    log: LogSink,
    level: types::Level,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit_complete_lines(&mut self, flush_all: bool) {
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if (flush_all && !self.buf.is_empty()) || self.buf.len() > MAX_LOG_LINE {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let mut text = String::from_utf8_lossy(line).into_owned();
        truncate_utf8(&mut text, MAX_LOG_LINE);
        self.log.line(self.level, text);
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.buf.extend_from_slice(data);
        this.emit_complete_lines(false);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.emit_complete_lines(true);
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit_complete_lines(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_namespaces_are_separate_and_quota_is_enforced() {
        let kv = KvStore::default();
        kv.set("a", "k", b"1".to_vec()).unwrap();
        assert_eq!(kv.get("a", "k"), Some(b"1".to_vec()));
        assert_eq!(kv.get("b", "k"), None);
        assert!(kv.set("a", "big", vec![0; KV_QUOTA_BYTES]).is_err());
        assert_eq!(kv.keys("a"), vec!["k".to_string()]);
        assert!(kv.delete("a", "k"));
        assert!(!kv.delete("a", "k"));
    }

    #[test]
    fn inbox_is_fifo_and_bounded() {
        let inbox = Inbox::default();
        for i in 0..INBOX_CAPACITY {
            inbox.push(vec![(i % 256) as u8]).unwrap();
        }
        assert!(inbox.push(vec![0]).is_err());
        assert_eq!(inbox.take(2), vec![vec![0], vec![1]]);
        assert_eq!(inbox.len(), INBOX_CAPACITY - 2);
        // Bytes are bounded too, and taking frees them.
        let inbox = Inbox::default();
        let chunk = INBOX_MAX_BYTES / 4;
        for _ in 0..4 {
            inbox.push(vec![0; chunk]).unwrap();
        }
        let e = inbox.push(vec![0]).unwrap_err();
        assert!(e.contains("bytes pending"), "{e}");
        assert_eq!(inbox.take(1).len(), 1);
        inbox.push(vec![0; chunk]).unwrap();
    }

    #[test]
    fn log_lines_beyond_the_rate_are_held_back_and_counted() {
        let budget = LogBudget::new();
        let t0 = Instant::now();
        let burst = LOG_BURST as usize;
        // A burst passes, then nothing within the same instant.
        for _ in 0..burst {
            assert_eq!(budget.take(t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(budget.take(t0), None);
        }
        // A second later: the rate's worth passes, the first one with the
        // count of what was held back.
        let t1 = t0 + std::time::Duration::from_secs(1);
        assert_eq!(budget.take(t1), Some(1000));
        let passed = 1 + (0..1000).filter(|_| budget.take(t1).is_some()).count();
        assert_eq!(passed, LOG_LINES_PER_SEC as usize);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let mut s = "é".repeat(MAX_LOG_LINE);
        truncate_utf8(&mut s, MAX_LOG_LINE);
        assert!(s.len() <= MAX_LOG_LINE + '…'.len_utf8());
    }
}
