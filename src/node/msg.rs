//! What the node's tasks hand each other: the owner's messages, an
//! established successor link as the owner holds it, the custody ack an
//! upstream link owes and the word on the particle the successor links'
//! pings carry.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::ring::state::{Beacon, DialResult, LinkId, UpstreamId};
use crate::ring::token::{Alive, Particle, ParticleId};
use crate::wire::{Frame, FrameWriter};

/// The write half of a successor link, shared by the owner (particles,
/// written directly: no task hop on the hot path) and the link's task
/// (pings). Held only for one frame's write.
pub(super) type SharedWriter = Arc<tokio::sync::Mutex<FrameWriter<crate::secure::LinkWrite>>>;

/// What this node's pings say of the particle: the owner writes it after
/// every protocol event (a short lock, no wake-up) and wakes the link tasks
/// through `news` only when the word is fresher by half a heartbeat than
/// the last news, so the particle's hot path costs no extra wake-up.
#[derive(Default)]
pub(super) struct BeaconCell {
    pub(super) value: std::sync::Mutex<Option<Beacon>>,
    pub(super) news: tokio::sync::Notify,
}

/// The custody acknowledgement an upstream connection owes its sender:
/// written by the owner, sent by the upstream task with its next pong, so
/// acks cost no extra wake-up on the particle's path.
pub(super) type AckSlot = Arc<std::sync::Mutex<Option<(ParticleId, u64)>>>;

/// An established successor link, as the owner holds it.
pub(super) struct Downlink {
    pub(super) writer: SharedWriter,
    pub(super) task: JoinHandle<()>,
    /// Cancelled by the owner when a particle write fails: the link's task
    /// then reads what the successor last said (a `Leave`?) and reports
    /// how the link ended.
    pub(super) broken: CancellationToken,
}

impl Downlink {
    /// Writes one frame within `limit`; whether it went out.
    pub(super) async fn write(&self, frame: &Frame, limit: Duration) -> bool {
        let mut w = self.writer.lock().await;
        matches!(timeout(limit, w.write_frame(frame)).await, Ok(Ok(())))
    }
}

impl Drop for Downlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Messages from the node's helper tasks to its owner task.
pub(super) enum Msg {
    Particle {
        particle: Particle,
        from: UpstreamId,
        ack: AckSlot,
    },
    UpstreamAlive(Option<Alive>),
    UpstreamClosed(UpstreamId),
    Dialed {
        link: LinkId,
        result: DialResult,
        downlink: Option<Downlink>,
    },
    /// A pong on a successor link; `rtt` is the round trip of the ping
    /// it answers (None when that ping is no longer remembered).
    Heard {
        link: LinkId,
        rtt: Option<std::time::Duration>,
    },
    /// The successor on this link is stopping cleanly.
    Left(LinkId),
    Forwarded {
        link: LinkId,
        id: ParticleId,
        hop: u64,
    },
    LinkLost {
        link: LinkId,
        why: String,
    },
    Status(oneshot::Sender<crate::status::Report>),
    /// A successor refused us as a second process of our member: this
    /// process is the duplicate and stops.
    Duplicate(String),
}

/// The first 12 characters of a ring hash, for messages.
pub(super) fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
