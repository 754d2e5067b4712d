//! An in-memory mirror of one node's `blocked` set, fed by the set's event
//! stream (`GET /v1/stations/STATION/sets/blocked/events`: the live
//! entries as `put`, then `synced`, then every change: `put`, `remove`,
//! `expire`, `clear`, or `lagged` for a reader too slow).
//!
//! The stream is reopened, with a capped backoff, when it ends, lags, sends
//! nothing for [`STREAM_IDLE`] or cannot be opened; the node's admin API is
//! looked up again through its ring address each time (a restarted node
//! binds a new admin port). While it is down the mirror keeps what it knew
//! (a known block stays enforced); a reopened stream's snapshot replaces
//! it at `synced`.
//!
//! What it owns: the mirror and the task that follows the stream. Not the
//! verdict (that is `app`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::app::unix_ms;

/// Bound on opening the event stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream with no byte for this long is reopened (the node sends a
/// keep-alive comment every 15 s).
pub const STREAM_IDLE: Duration = Duration::from_secs(40);
/// Backoff between attempts to reopen the stream: first, cap.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// A blocked token as this server knows it.
#[derive(Debug, Clone)]
pub struct Blocked {
    /// The node's reason, e.g. `spread (node 3): …`.
    pub info: String,
    /// When the block ends, ms since the Unix epoch (0: never).
    pub expires_unix_ms: u64,
    /// When this server first learnt of it (kept across a clear and
    /// republish, and across a reopened stream).
    pub at: Instant,
    /// The same, ms since the Unix epoch.
    pub at_unix_ms: u64,
}

/// The mirror of a node's `blocked` set.
#[derive(Debug, Default)]
pub struct Mirror {
    blocked: Mutex<HashMap<String, Blocked>>,
    /// The entries of the last `clear`: a station that restarts clears
    /// its sets and republishes them, and a token put again keeps when
    /// this server first learnt of it.
    cleared: Mutex<HashMap<String, Blocked>>,
    synced: AtomicBool,
    /// Streams opened (1 after the first).
    opened: AtomicU64,
}

impl Mirror {
    /// `token`'s reason when it is blocked.
    pub fn info(&self, token: &str) -> Option<String> {
        self.lock().get(token).map(|b| b.info.clone())
    }

    /// `token`'s entry.
    pub fn get(&self, token: &str) -> Option<Blocked> {
        self.lock().get(token).cloned()
    }

    /// The blocked tokens.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Streams opened so far (each one that reached `synced`).
    pub fn streams_synced(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Waits until a first snapshot has arrived.
    ///
    /// # Errors
    /// None within `within`.
    pub async fn wait_synced(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while !self.synced.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                bail!("the node's blocked set was not synced within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Blocked>> {
        self.blocked.lock().expect("not poisoned")
    }

    /// Applies one event to the mirror (or to the snapshot being built).
    fn apply(
        &self,
        snapshot: &mut Option<HashMap<String, Blocked>>,
        event: &str,
        data: &str,
    ) -> Result<(), String> {
        match event {
            "synced" => {
                let fresh = snapshot.take().unwrap_or_default();
                let mut blocked = self.lock();
                let old = std::mem::replace(&mut *blocked, fresh);
                for (k, b) in blocked.iter_mut() {
                    if let Some(o) = old.get(k) {
                        b.at = o.at;
                        b.at_unix_ms = o.at_unix_ms;
                    }
                }
                self.opened.fetch_add(1, Ordering::Relaxed);
                self.synced.store(true, Ordering::Release);
                return Ok(());
            }
            "lagged" => return Err(format!("lagged: {data}")),
            _ => {}
        }
        let ev: SetEvent =
            serde_json::from_str(data).map_err(|e| format!("bad event {data:?}: {e}"))?;
        tracing::debug!(?ev, snapshot = snapshot.is_some(), "blocked set event");
        let mut live = self.lock();
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
                let earlier = self.cleared.lock().expect("not poisoned").remove(&key);
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
                tracing::info!(
                    "the node cleared its blocked set (a station restart republishes it)"
                );
                *self.cleared.lock().expect("not poisoned") = std::mem::take(map);
            }
        }
        Ok(())
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
    /// Reopen it; whether it had synced (the backoff starts over).
    Reopen {
        why: String,
        synced: bool,
    },
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Follows the `blocked` set of `station` at the node `node` (its ring or
/// admin address; `admin`: its admin API as first found) until `cancel`.
pub async fn follow(
    mirror: Arc<Mirror>,
    node: String,
    admin: String,
    station: String,
    cancel: CancellationToken,
) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut admin = Some(admin);
    let mut backoff = BACKOFF.0;
    loop {
        let end = match admin.take() {
            Some(a) => {
                let uri = format!("http://{a}/v1/stations/{station}/sets/blocked/events");
                stream_once(&client, &uri, &mirror, &cancel).await
            }
            None => StreamEnd::Reopen {
                why: "admin API not found".into(),
                synced: false,
            },
        };
        match end {
            StreamEnd::Cancelled => return,
            StreamEnd::Reopen { why, synced } => {
                tracing::warn!(%why, node, "blocked set stream ended; reopening");
                if synced {
                    backoff = BACKOFF.0;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF.1);
        // A restarted node has a new admin port: ask its ring port again
        // (bounded: two probes of at most a few seconds).
        let found = tokio::select! {
            _ = cancel.cancelled() => return,
            c = ringhost::admin::client::connect(&node, None) => c,
        };
        match found {
            Ok(c) => admin = Some(c.addr().to_string()),
            Err(e) => tracing::debug!(cause = %format!("{e:#}"), node, "admin API not found"),
        }
    }
}

async fn stream_once(
    client: &HttpClient,
    uri: &str,
    mirror: &Mirror,
    cancel: &CancellationToken,
) -> StreamEnd {
    let reopen = |why: String, synced: bool| StreamEnd::Reopen { why, synced };
    let req = match hyper::Request::get(uri).body(Empty::new()) {
        Ok(req) => req,
        Err(e) => return reopen(e.to_string(), false),
    };
    let resp = tokio::select! {
        _ = cancel.cancelled() => return StreamEnd::Cancelled,
        resp = tokio::time::timeout(CONNECT_TIMEOUT, client.request(req)) => resp,
    };
    let mut body = match resp {
        Ok(Ok(resp)) if resp.status().is_success() => resp.into_body(),
        Ok(Ok(resp)) => return reopen(format!("answer {}", resp.status()), false),
        Ok(Err(e)) => return reopen(e.to_string(), false),
        Err(_) => return reopen(format!("no answer within {CONNECT_TIMEOUT:?}"), false),
    };
    // Until `synced`, the snapshot builds a fresh map (a reopened stream
    // starts over); entries already known keep when we learnt of them.
    let mut snapshot: Option<HashMap<String, Blocked>> = Some(HashMap::new());
    let mut pending = Vec::new();
    let mut event = String::new();
    let mut data = String::new();
    loop {
        let synced = snapshot.is_none();
        let frame = tokio::select! {
            _ = cancel.cancelled() => return StreamEnd::Cancelled,
            f = tokio::time::timeout(STREAM_IDLE, body.frame()) => f,
        };
        let chunk = match frame {
            Err(_) => return reopen(format!("silent for {STREAM_IDLE:?}"), synced),
            Ok(None) => return reopen("closed".into(), synced),
            Ok(Some(Err(e))) => return reopen(e.to_string(), synced),
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
                let done = mirror.apply(&mut snapshot, &event, &data);
                event.clear();
                data.clear();
                if let Err(why) = done {
                    return reopen(why, snapshot.is_none());
                }
            }
        }
    }
}
