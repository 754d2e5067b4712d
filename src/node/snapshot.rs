//! The node's status snapshot, shared by the admin API and the ring
//! port's status request, so operator load never reaches the particle.
//!
//! Only the owner task builds a status report (it owns the state). A
//! request takes the last report when it is younger than [`FRESH`];
//! otherwise one refresh is asked of the owner and every request that
//! arrives meanwhile waits for that same refresh (single flight: a
//! `tokio::sync::Mutex` around the refresh). However many requests come,
//! the owner builds at most about one report per [`FRESH`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use super::msg::Msg;

/// How old a report may be and still be served.
pub(super) const FRESH: Duration = Duration::from_millis(200);

/// The last report the owner built (JSON), and when it was built.
struct Taken {
    json: Arc<str>,
    at: Instant,
}

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
    fn usable(&self, since: Instant) -> Option<Arc<str>> {
        let last = self.last.lock().expect("status snapshot lock");
        last.as_ref()
            .filter(|t| t.at.elapsed() < FRESH || t.at >= since)
            .map(|t| Arc::clone(&t.json))
    }

    /// The node's status report as JSON, waiting at most `limit` (for the
    /// refresh lock and the owner's answer together). `None` when the
    /// owner is gone (the node stops) or did not answer within `limit`.
    pub(super) async fn get(&self, limit: Duration) -> Option<Arc<str>> {
        let since = Instant::now();
        if let Some(json) = self.usable(since) {
            return Some(json);
        }
        timeout(limit, async {
            let _refreshing = self.refresh.lock().await;
            // Another request refreshed while this one waited.
            if let Some(json) = self.usable(since) {
                return Some(json);
            }
            let (tx, rx) = oneshot::channel();
            self.ask.send(Msg::Status(tx)).await.ok()?;
            let json: Arc<str> = rx.await.ok()?.into();
            *self.last.lock().expect("status snapshot lock") = Some(Taken {
                json: Arc::clone(&json),
                at: Instant::now(),
            });
            Some(json)
        })
        .await
        .ok()
        .flatten()
    }
}
