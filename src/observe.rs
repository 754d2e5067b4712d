//! Events a node reports about itself, for tests, benchmarks and tools.
//!
//! The [`Observer`] is optional: in production it is off and emitting is a
//! no-op. When on, every node of a process can share one channel; since a
//! node emits a visit before it forwards the particle, the order in a
//! shared channel follows the particle.

use std::time::Duration;

use tokio::sync::mpsc;

/// One event of one node.
#[derive(Debug, Clone)]
pub struct NodeEvent {
    /// The node's index in the ring.
    pub node: usize,
    /// What happened.
    pub kind: EventKind,
}

/// What happened at a node.
#[derive(Debug, Clone)]
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
    /// A particle was dropped here.
    ParticleDropped {
        /// Its generation.
        generation: u64,
        /// Why.
        reason: String,
    },
}

/// Where a node sends its events; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Observer(Option<mpsc::UnboundedSender<NodeEvent>>);

impl Observer {
    /// An observer that drops everything.
    pub fn none() -> Self {
        Self(None)
    }

    /// An observer feeding a new channel, and the channel's receiver.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<NodeEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(Some(tx)), rx)
    }

    /// Whether events go anywhere.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Reports an event of node `node`.
    pub fn emit(&self, node: usize, kind: EventKind) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(NodeEvent { node, kind });
        }
    }
}
