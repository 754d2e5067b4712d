//! Events a node reports about itself, for tests, benchmarks, tools and
//! the admin plane.
//!
//! An [`Observer`] has two optional outlets:
//! - a test channel ([`Observer::channel`]): every event, unbounded; every
//!   node of a process can share one, and since a node emits a visit
//!   before it forwards the particle, the order in a shared channel
//!   follows the particle;
//! - a node's [`Bus`] (set by `node::start`): every event drives the
//!   node's [`Metrics`], and goes out on a bounded broadcast for
//!   `GET /v1/events`, visits sampled to at most [`VISITS_PER_SECOND`]. A
//!   slow subscriber loses events (it is told how many), it never slows
//!   the node: sending on a broadcast does not wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::metrics::Metrics;

/// At most this many visits a second go out on a node's [`Bus`].
pub const VISITS_PER_SECOND: u64 = 10;

/// Events a [`Bus`] keeps for a subscriber that reads behind.
pub const BUS_CAPACITY: usize = 1024;

/// One event of one node.
#[derive(Debug, Clone)]
pub struct NodeEvent {
    /// The node's index in the ring.
    pub node: usize,
    /// What happened.
    pub kind: EventKind,
}

/// What happened at a node. As JSON (`/v1/events`): an object whose
/// `type` is the variant's name in snake case, with its fields; durations
/// are in seconds (`lap_time_s`, `pause_s`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The particle stopped here and the stations ran.
    Visit {
        /// Particle generation.
        generation: u64,
        /// Completed laps.
        lap: u64,
        /// Stops since injection.
        hop: u64,
        /// Time since the previous stop at this node.
        #[serde(rename = "lap_time_s", serialize_with = "secs_opt")]
        lap_time: Option<Duration>,
    },
    /// A station wrote a log line (via `host.log`, stdout or stderr).
    StationLog {
        /// Station name.
        station: String,
        /// `trace`, `debug`, `info`, `warn` or `error`.
        level: String,
        /// The line.
        message: String,
    },
    /// A station call failed (trap, timeout, memory, guest error, init).
    StationFault {
        /// Station name.
        station: String,
        /// Why, in words.
        cause: String,
    },
    /// The link to the successor is up.
    SuccessorLinked {
        /// The successor's index.
        successor: usize,
    },
    /// This node declared its successor `peer` dead (or not started yet)
    /// and skips it.
    MemberDown {
        /// The member.
        peer: usize,
        /// Why.
        reason: String,
        /// It said it was stopping (a clean leave, not a failure).
        left: bool,
        /// The node had known the member up since it started; `false`: the
        /// member has not started yet (not a failure).
        ever_up: bool,
    },
    /// Member `peer` answered a probe and was spliced back in.
    MemberUp {
        /// The member.
        peer: usize,
    },
    /// This node's view of live members changed.
    ViewChanged {
        /// Live members, ascending.
        live: Vec<usize>,
    },
    /// A station version started running here (pushed, fetched, rolled
    /// back or dropped in).
    StationSwapped {
        /// Station name.
        station: String,
        /// Its release version (`None`: a local change, not a release).
        version: Option<u64>,
        /// sha-256 of the module, hex.
        hash: String,
        /// How long the owner task paused to swap it in.
        #[serde(rename = "pause_s", serialize_with = "secs")]
        pause: Duration,
    },
    /// A release was refused or failed here; the old version keeps running.
    DeployFailed {
        /// Station name.
        station: String,
        /// Why.
        reason: String,
    },
    /// Two releases of a station whose version and publish order
    /// disagree met here; the newer publish was kept.
    DeployConflict {
        /// Station name.
        station: String,
        /// What was kept and what set aside, in words.
        message: String,
    },
    /// A station that kept faulting was rolled back to its previous
    /// version on this node.
    RolledBack {
        /// Station name.
        station: String,
        /// What happened.
        cause: String,
    },
    /// The successor refused our link.
    LinkRefused {
        /// The successor's reason.
        reason: String,
    },
    /// A connection on our ring port was closed for bad input or a refused
    /// hello.
    UpstreamRejected {
        /// Why.
        reason: String,
    },
    /// This node created a particle: the first one (`regenerated` false)
    /// or a new one after none arrived within the token timeout.
    ParticleCreated {
        /// Its generation.
        generation: u64,
        /// It replaces a lost one.
        regenerated: bool,
    },
    /// A particle was dropped here.
    ParticleDropped {
        /// Its generation.
        generation: u64,
        /// Why.
        reason: String,
    },
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn secs_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// An event as the admin plane sends it.
#[derive(Debug, Clone, Serialize)]
pub struct BusEvent {
    /// Ascending per node, from 1; a gap means events were left out
    /// (sampled visits are not counted, so there is no gap for them).
    pub id: u64,
    /// The node's index in the ring.
    pub node: usize,
    /// Unix time of the event, milliseconds.
    pub at_ms: u64,
    /// What happened (`type` and its fields, flattened).
    #[serde(flatten)]
    pub kind: EventKind,
}

/// One node's event bus: drives its metrics and feeds the admin plane's
/// event stream.
#[derive(Debug)]
pub struct Bus {
    tx: broadcast::Sender<BusEvent>,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    /// Milliseconds since `epoch` of the last visit sent (sampling;
    /// `u64::MAX`: none yet).
    last_visit_ms: AtomicU64,
    epoch: Instant,
}

impl Bus {
    /// A bus over `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BUS_CAPACITY);
        Arc::new(Self {
            tx,
            metrics,
            next_id: AtomicU64::new(1),
            last_visit_ms: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        })
    }

    /// A new subscriber, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.tx.subscribe()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn publish(&self, node: usize, kind: &EventKind) {
        let m = &self.metrics;
        match kind {
            EventKind::Visit {
                generation,
                lap_time,
                ..
            } => {
                m.visit(*generation, *lap_time);
                if !self.visit_due() {
                    return;
                }
            }
            EventKind::StationFault { station, .. } => m.station_fault(station),
            EventKind::MemberDown {
                left: false,
                ever_up: true,
                ..
            } => _ = m.failures.inc(),
            EventKind::ViewChanged { live } => {
                _ = m.live_members.set(i64::try_from(live.len()).unwrap_or(0));
            }
            EventKind::StationSwapped { .. } => _ = m.swaps.inc(),
            EventKind::RolledBack { .. } => _ = m.rollbacks.inc(),
            EventKind::ParticleCreated {
                regenerated: true, ..
            } => _ = m.regenerations.inc(),
            // Station log lines are many and are in the node's log.
            EventKind::StationLog { .. } => return,
            _ => {}
        }
        if self.tx.receiver_count() == 0 {
            return;
        }
        let event = BusEvent {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            node,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            kind: kind.clone(),
        };
        let _ = self.tx.send(event);
    }

    /// Whether a visit goes out now (at most [`VISITS_PER_SECOND`]).
    fn visit_due(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_visit_ms.load(Ordering::Relaxed);
        (last == u64::MAX || now.saturating_sub(last) >= 1000 / VISITS_PER_SECOND)
            && self
                .last_visit_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Where a node sends its events; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Observer {
    tests: Option<mpsc::UnboundedSender<NodeEvent>>,
    bus: Option<Arc<Bus>>,
}

impl Observer {
    /// An observer that drops everything.
    pub fn none() -> Self {
        Self::default()
    }

    /// An observer feeding a new channel, and the channel's receiver.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<NodeEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                tests: Some(tx),
                bus: None,
            },
            rx,
        )
    }

    /// This observer, also feeding `bus`.
    pub fn with_bus(mut self, bus: Arc<Bus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Whether events go to a channel (a bus alone does not count: it
    /// takes what it needs without the caller building extra events).
    pub fn is_on(&self) -> bool {
        self.tests.is_some()
    }

    /// The node's metrics, when a bus is set.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.bus.as_ref().map(|b| &b.metrics)
    }

    /// Reports an event of node `node`.
    pub fn emit(&self, node: usize, kind: EventKind) {
        if let Some(bus) = &self.bus {
            bus.publish(node, &kind);
        }
        if let Some(tx) = &self.tests {
            let _ = tx.send(NodeEvent { node, kind });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_samples_visits_and_numbers_what_it_sends() {
        let bus = Bus::new(Arc::new(Metrics::new()));
        let mut rx = bus.subscribe();
        let observer = Observer::none().with_bus(Arc::clone(&bus));
        for hop in 0..50 {
            observer.emit(
                1,
                EventKind::Visit {
                    generation: 1,
                    lap: 0,
                    hop,
                    lap_time: None,
                },
            );
        }
        observer.emit(1, EventKind::MemberUp { peer: 2 });
        let first = rx.try_recv().expect("the first visit goes out");
        assert_eq!((first.id, first.node), (1, 1));
        let next = rx.try_recv().expect("the member event");
        assert_eq!(next.id, 2, "49 visits within 100 ms were left out");
        let json = serde_json::to_value(&next).unwrap();
        assert_eq!(json["type"], "member_up");
        assert_eq!(json["peer"], 2);
        assert_eq!(bus.metrics().visits.get(), 50, "metrics count every visit");
    }
}
