//! The node's status snapshot, shared by the admin API and the ring
//! port's status request, so operator load never reaches the particle.
//!
//! Only the owner task builds a status report (it owns the state). A
//! request takes the last report when it is younger than [`FRESH`];
//! otherwise one refresh is asked of the owner and every request that
//! arrives meanwhile waits for that same refresh (single flight: a
//! `tokio::sync::Mutex` around the refresh). However many requests come,
//! the owner builds at most about one report per [`FRESH`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use super::msg::Msg;
use crate::status::Report;

/// How old a report may be and still be served.
pub(super) const FRESH: Duration = Duration::from_millis(200);

/// The last report the owner built, when, and its JSON once a ring-port
/// request has asked for it (serialized here, off the owner task, at most
/// once per report).
struct Taken {
    report: Arc<Report>,
    json: Arc<OnceLock<Arc<str>>>,
    at: Instant,
}

/// A report as a request gets it.
type Shot = (Arc<Report>, Arc<OnceLock<Arc<str>>>);

/// The status snapshot of one node (see the module docs).
pub(super) struct StatusSnapshot {
    ask: mpsc::Sender<Msg>,
    last: std::sync::Mutex<Option<Taken>>,
    /// Held by the one request refreshing; the others wait on it.
    refresh: tokio::sync::Mutex<()>,
    /// Reports the owner built for this snapshot (it counts them).
    built: Arc<AtomicU64>,
}

impl StatusSnapshot {
    /// A snapshot that asks the owner through `ask`; `built` is the
    /// owner's count of reports built.
    pub(super) fn new(ask: mpsc::Sender<Msg>, built: Arc<AtomicU64>) -> Self {
        Self {
            ask,
            last: std::sync::Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            built,
        }
    }

    /// How many status reports the owner has built so far.
    pub(super) fn built(&self) -> u64 {
        self.built.load(Ordering::Relaxed)
    }

    /// The last report if it is younger than [`FRESH`] or was built after
    /// `since` (a refresh this caller waited for).
    fn usable(&self, since: Instant) -> Option<Shot> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|t| t.at.elapsed() < FRESH || t.at >= since)
            .map(|t| (Arc::clone(&t.report), Arc::clone(&t.json)))
    }

    /// The node's status report, waiting at most `limit` (for the refresh
    /// lock and the owner's answer together). `None` when the owner is
    /// gone (the node stops) or did not answer within `limit`.
    pub(super) async fn get(&self, limit: Duration) -> Option<Arc<Report>> {
        self.shot(limit).await.map(|(report, _)| report)
    }

    /// [`Self::get`] as JSON (what a member's status request is answered
    /// with).
    pub(super) async fn get_json(&self, limit: Duration) -> Option<Arc<str>> {
        let (report, json) = self.shot(limit).await?;
        let json = json.get_or_init(|| match serde_json::to_string(&*report) {
            Ok(j) => j.into(),
            // A report is plain data: this cannot happen; say so rather
            // than answer nothing.
            Err(e) => format!("{{\"error\":\"status report did not serialize: {e}\"}}").into(),
        });
        Some(Arc::clone(json))
    }

    async fn shot(&self, limit: Duration) -> Option<Shot> {
        let since = Instant::now();
        if let Some(shot) = self.usable(since) {
            return Some(shot);
        }
        timeout(limit, async {
            let _refreshing = self.refresh.lock().await;
            // Another request refreshed while this one waited.
            if let Some(shot) = self.usable(since) {
                return Some(shot);
            }
            let (tx, rx) = oneshot::channel();
            self.ask.send(Msg::Status(tx)).await.ok()?;
            let report = Arc::new(rx.await.ok()?);
            let json = Arc::new(OnceLock::new());
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Taken {
                report: Arc::clone(&report),
                json: Arc::clone(&json),
                at: Instant::now(),
            });
            Some((report, json))
        })
        .await
        .ok()
        .flatten()
    }
}
