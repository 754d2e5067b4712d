//! Test harness: in-process rings on 127.0.0.1 with listeners bound to port
//! 0, one shared event channel, and waits that always have a deadline.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ringhost::config::{NodeConfig, RingLayout};
use ringhost::node::{self, NodeHandle};
use ringhost::observe::{EventKind, NodeEvent, Observer};
use ringhost::station::StationHost;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;

/// One engine for the whole test binary: components compile once.
pub fn host() -> Arc<StationHost> {
    static HOST: OnceLock<Arc<StationHost>> = OnceLock::new();
    HOST.get_or_init(|| StationHost::new().expect("station host"))
        .clone()
}

/// Path of a test station component built by build.rs.
pub fn test_station(name: &str) -> PathBuf {
    PathBuf::from(env!("RINGHOST_STATIONS_DIR")).join(format!("{name}.wasm"))
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Binds `n` listeners on 127.0.0.1:0 and makes the ring of their addresses.
pub async fn bind_ring(n: usize) -> (RingLayout, Vec<TcpListener>) {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    (RingLayout::from_addrs(addrs).expect("layout"), listeners)
}

/// A visit seen by the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    pub node: usize,
    pub generation: u64,
    pub lap: u64,
    pub hop: u64,
    pub lap_time: Option<Duration>,
}

impl Visit {
    /// The visit `ev` reports, if it is one.
    pub fn of(ev: &NodeEvent) -> Option<Self> {
        match ev.kind {
            EventKind::Visit {
                generation,
                lap,
                hop,
                lap_time,
            } => Some(Self {
                node: ev.node,
                generation,
                lap,
                hop,
                lap_time,
            }),
            _ => None,
        }
    }
}

pub struct TestRing {
    pub layout: RingLayout,
    pub nodes: Vec<Option<NodeHandle>>,
    pub events: UnboundedReceiver<NodeEvent>,
    /// The observer every node reports to (for nodes started later).
    pub observer: Observer,
    /// Every event received so far, in order.
    pub seen: Vec<NodeEvent>,
    /// When the last node finished starting.
    pub all_started: Instant,
}

impl TestRing {
    /// Starts an `n`-node ring, nodes started in `order`, each node's
    /// config adjusted by `configure`.
    pub async fn start_in_order(
        n: usize,
        order: &[usize],
        configure: impl Fn(&mut NodeConfig),
    ) -> Self {
        init_tracing();
        let (layout, listeners) = bind_ring(n).await;
        let (observer, events) = Observer::channel();
        let mut listeners: Vec<Option<TcpListener>> = listeners.into_iter().map(Some).collect();
        let mut nodes: Vec<Option<NodeHandle>> = (0..n).map(|_| None).collect();
        for &i in order {
            let mut config = NodeConfig::new(layout.clone(), i);
            configure(&mut config);
            let listener = listeners[i].take().expect("each node starts once");
            let handle = node::start(config, listener, host(), observer.clone())
                .await
                .expect("node starts");
            nodes[i] = Some(handle);
        }
        Self {
            layout,
            nodes,
            events,
            observer,
            seen: Vec::new(),
            all_started: Instant::now(),
        }
    }

    pub async fn start(n: usize, configure: impl Fn(&mut NodeConfig)) -> Self {
        let order: Vec<usize> = (0..n).collect();
        Self::start_in_order(n, &order, configure).await
    }

    /// The next event, or a panic naming `what` once `deadline` passes.
    pub async fn next_event(&mut self, deadline: Instant, what: &str) -> NodeEvent {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.events.recv()).await {
            Ok(Some(ev)) => {
                self.seen.push(ev.clone());
                ev
            }
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Err(_) => panic!(
                "timed out waiting for {what}; last events: {:#?}",
                &self.seen[self.seen.len().saturating_sub(8)..]
            ),
        }
    }

    /// Waits for the next `count` visits (within `within`).
    pub async fn visits(&mut self, count: usize, within: Duration) -> Vec<Visit> {
        let deadline = Instant::now() + within;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let what = format!("{count} visits (have {})", out.len());
            let ev = self.next_event(deadline, &what).await;
            out.extend(Visit::of(&ev));
        }
        out
    }

    /// Waits until `pred` holds for some event, returning it.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&NodeEvent) -> bool,
    ) -> NodeEvent {
        let deadline = Instant::now() + within;
        loop {
            let ev = self.next_event(deadline, what).await;
            if pred(&ev) {
                return ev;
            }
        }
    }

    /// Stops every node and waits for their tasks.
    pub async fn shutdown(mut self) {
        for handle in self.nodes.iter_mut().filter_map(Option::take) {
            tokio::time::timeout(Duration::from_secs(10), handle.shutdown())
                .await
                .expect("node stops within 10 s")
                .expect("node stopped cleanly");
        }
    }
}

/// Asserts that visits form one unbroken particle walk: consecutive hops,
/// one generation, each at the member after the previous one (a ring of
/// `n` members, all live).
pub fn assert_single_particle_in_ring_order(visits: &[Visit], n: usize) {
    assert_single_particle_among(visits, n, n);
}

/// As [`assert_single_particle_in_ring_order`] where only members
/// `0..live` of a ring of `members` run: each stop at the next live one,
/// the hop advanced by the ring distance (members skipped count).
pub fn assert_single_particle_among(visits: &[Visit], live: usize, members: usize) {
    for w in visits.windows(2) {
        let (a, b) = (w[0], w[1]);
        // A ring of one: the particle comes back a whole ring on.
        let steps = match (b.node + members - a.node) % members {
            0 => members,
            d => d,
        };
        assert_eq!(
            b.hop,
            a.hop + steps as u64,
            "hops must follow each other (two particles?): {a:?} then {b:?}"
        );
        assert_eq!(b.generation, a.generation, "one generation: {a:?} {b:?}");
        assert_eq!(b.node, (a.node + 1) % live, "ring order: {a:?} then {b:?}");
    }
}
