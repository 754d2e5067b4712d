//! What the benches share: an in-process ring running the built-in tick
//! station, whose node 0 reports its visits, and how figures are printed.
//!
//! Included by each bench with `mod common;` (a bench uses only part of
//! it, hence `allow(dead_code)`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ringhost::config::{NodeConfig, RingLayout, StationSpec};
use ringhost::node::NodeHandle;
use ringhost::observe::{EventKind, NodeEvent, Observer};
use ringhost::station::StationHost;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;

/// `n` in-process nodes on 127.0.0.1 at zero delay running `tick`
/// (quiet), each with its admin API on 127.0.0.1:0 (`NodeConfig::new`'s
/// default); only node 0 reports its visits, so observing costs one node,
/// not `n`.
pub struct TickRing {
    pub nodes: Vec<NodeHandle>,
    /// The nodes' admin addresses (`host:port`), in ring order.
    pub admins: Vec<String>,
    events: UnboundedReceiver<NodeEvent>,
}

impl TickRing {
    /// Starts the ring (it forms on its own; see [`Self::next_visit`]).
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_with(n, |_| {}).await
    }

    /// [`Self::start`], each node's config adjusted by `configure` last.
    pub async fn start_with(n: usize, configure: impl Fn(&mut NodeConfig)) -> Result<Self> {
        let host = StationHost::new()?;
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let layout = RingLayout::from_addrs(
            listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.to_string()))
                .collect::<Result<Vec<_>, _>>()?,
        )?;
        let (observer, events) = Observer::channel();
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let mut config = NodeConfig::new(layout.clone(), i);
            config.delay_ms = 0;
            config.stations = vec![StationSpec::builtin("tick").with("quiet", "true")];
            configure(&mut config);
            let obs = if i == 0 {
                observer.clone()
            } else {
                Observer::none()
            };
            nodes.push(ringhost::node::start(config, listener, Arc::clone(&host), obs).await?);
        }
        let admins = nodes
            .iter()
            .map(|n| {
                n.admin_addr()
                    .map(|a| a.to_string())
                    .context("a node without an admin API")
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            nodes,
            admins,
            events,
        })
    }

    /// The next visit at node 0 before `deadline`: its lap number and lap
    /// time (`None` for a particle's first lap).
    ///
    /// # Errors
    /// When no visit comes before `deadline`.
    pub async fn next_visit(&mut self, deadline: Instant) -> Result<(u64, Option<Duration>)> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = tokio::time::timeout(left, self.events.recv())
                .await
                .context("ring too slow")?
                .context("events ended")?;
            if let EventKind::Visit { lap, lap_time, .. } = ev.kind {
                return Ok((lap, lap_time));
            }
        }
    }

    /// Drops the visits reported so far.
    pub fn drain(&mut self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Waits (at most 30 s) until node 0 has seen lap `laps`.
    pub async fn wait_laps(&mut self, laps: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.next_visit(deadline).await?.0 < laps {}
        Ok(())
    }

    /// Stops every node.
    pub async fn shutdown(self) -> Result<()> {
        for n in self.nodes {
            n.shutdown().await?;
        }
        Ok(())
    }
}

/// A duration as `12.3 us` below a millisecond, else `1.234 ms`.
pub fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} us", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    }
}

/// p50 and p99 (nearest rank) of `v`; zeros when empty.
pub fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99))
}

/// Loads `spec` alone, as a one-member node named `bench` would, with a
/// 64 MiB memory cap, no rollback, `fuel` units per call (`None`: off) and
/// `call_timeout` per call.
///
/// # Errors
/// When the station does not load.
pub async fn load_station(
    host: &Arc<StationHost>,
    spec: &StationSpec,
    fuel: Option<u64>,
    call_timeout: Duration,
) -> Result<ringhost::station::Station> {
    use ringhost::station::{Inbox, KvStore, NodeInfo, StationEnv, StationLimits};
    let env = StationEnv {
        station: spec.name.as_str().into(),
        node: NodeInfo {
            name: "bench".into(),
            index: 0,
            ring_size: 1,
            ring_hash: String::new(),
        },
        kv: KvStore::default(),
        inbox: Inbox::default(),
        sets: Default::default(),
        observer: Observer::none(),
        epoch: Instant::now(),
    };
    let limits = StationLimits {
        call_timeout,
        fuel,
        memory_bytes: 64 << 20,
        rollback_after: 0,
        rollback_window: Duration::ZERO,
    };
    host.load(spec, env, limits).await
}

/// The stop a benched station call is made at (node 0 of 11, lap 1).
pub fn stop_context() -> ringhost::station::StopContext {
    ringhost::station::StopContext {
        node_name: "bench".into(),
        node_index: 0,
        ring_size: 11,
        generation: 1,
        lap: 1,
        hop: 1,
        now_unix_ms: 0,
        last_lap_us: Some(100),
    }
}
