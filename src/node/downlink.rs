//! Successor links: dialing a member (connect and hello, within the
//! handshake timeout) and the task that watches an established link
//! (pings, pongs, custody acks, the link's end). The owner writes
//! particles to the link's writer itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::model::Release;
use crate::ring::state::{DialResult, LinkId};
use crate::ring::token::ParticleId;
use crate::secure::{self, LinkRead, LinkWrite};
use crate::wire::{Frame, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION};

use super::msg::{BeaconCell, Msg, SharedWriter, short};

/// A link to a successor, handshake done.
pub(super) struct Dialed {
    pub(super) writer: FrameWriter<LinkWrite>,
    pub(super) reader: FrameReader<LinkRead>,
    /// The successor's highest particle.
    pub(super) peer_seen: Option<ParticleId>,
    /// The successor's current releases.
    pub(super) releases: Vec<Release>,
    /// The successor reads pings that carry an [`Alive`].
    pub(super) beacons: bool,
}

/// How a dial that did not link ended.
pub(super) enum DialError {
    /// Failed or refused, for the protocol.
    Ended(DialResult),
    /// Refused because another live process runs our member: this
    /// process is the duplicate.
    Duplicate(String),
}

/// The least time a dial gets to connect and exchange hellos (the
/// handshake timeout when longer). Linux resends a lost handshake segment
/// after 200 ms or more, so a dial bounded by the failure timeout (400 ms)
/// failed on a lossy network, or beside a busy CPU, and declared a live
/// member dead. A silent successor is still skipped by its link's failure
/// timeout and a crashed one refuses the connect at once; and a dial the
/// particle waits on is cut short by the ring protocol's dial hold
/// ([`crate::ring::state::RingParams::dial_hold`], the handshake timeout),
/// so the particle never waits this long.
const DIAL_FLOOR: Duration = Duration::from_millis(1500);

/// Connects to a member and exchanges hellos, all within the handshake
/// timeout or [`DIAL_FLOOR`], the longer.
pub(super) async fn dial(
    addr: &str,
    hello: Hello,
    config: &NodeConfig,
) -> Result<Dialed, DialError> {
    let limit = Duration::from_millis(config.handshake_timeout_ms).max(DIAL_FLOOR);
    let attempt = async {
        let e = DialError::Ended;
        let stream = connect(addr).await.map_err(|err| {
            let why = format!("connect {addr}: {err}");
            // No route from here: this node's network is down.
            e(if err.kind() == std::io::ErrorKind::NetworkUnreachable {
                DialResult::LocalDown(why)
            } else {
                DialResult::Failed(why)
            })
        })?;
        let (r, w) = secure::dialed(stream, config.cluster_keys.as_ref())
            .await
            .map_err(|err| {
                let why = format!("peer {addr} failed authentication: {err}");
                // A connection that broke is a failure; a peer that
                // answered without our key refuses the link (logged).
                e(match err {
                    secure::AuthError::Io(_) => DialResult::Failed(why),
                    _ => DialResult::Refused(why),
                })
            })?;
        let mut reader = FrameReader::new(r, config.max_frame_bytes);
        let mut writer = FrameWriter::new(w, config.max_frame_bytes);
        writer
            .write_frame(&Frame::Hello(hello))
            .await
            .map_err(|err| e(DialResult::Failed(format!("sending hello: {err}"))))?;
        match reader.read_frame().await {
            Ok(Some(Frame::Welcome(w))) if w.version == PROTOCOL_VERSION => Ok(Dialed {
                writer,
                reader,
                peer_seen: w.seen,
                releases: w.releases,
                beacons: w.beacons,
            }),
            Ok(Some(Frame::Welcome(w))) => Err(e(DialResult::Refused(format!(
                "successor speaks protocol {}, we speak {PROTOCOL_VERSION}",
                w.version
            )))),
            Ok(Some(Frame::Refuse(r))) if r.duplicate => Err(DialError::Duplicate(r.reason)),
            Ok(Some(Frame::Refuse(r))) => Err(e(DialResult::Refused(match r.ring_hash {
                // Worded from our side: the reader of our log is "ours".
                Some(theirs) => format!(
                    "{addr} runs another ring: its enumeration hashes to {}, ours to {} ({}); \
                     every node must be started with the same --ring",
                    short(&theirs),
                    short(config.ring.hash()),
                    config.ring.describe()
                ),
                None => r.reason,
            }))),
            Ok(Some(other)) => Err(e(DialResult::Failed(format!(
                "unexpected {} in answer to hello",
                other.kind_name()
            )))),
            Ok(None) => Err(e(DialResult::Failed("closed during handshake".into()))),
            Err(err) => Err(e(DialResult::Failed(format!("handshake: {err}")))),
        }
    };
    match timeout(limit, attempt).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Ended(DialResult::Failed(format!(
            "handshake with {addr} timed out after {limit:?}"
        )))),
    }
}

/// A second connect (a fresh SYN) goes out this long after the first
/// while the first is unanswered: Linux resends a lost SYN only after 1 s,
/// so on a lossy network one lost SYN cost a dial a whole second.
const RESYN_AFTER: Duration = Duration::from_millis(200);

/// Connects to `addr`, racing a second attempt from [`RESYN_AFTER`] on;
/// the first to connect wins. Errors: the first attempt's, when both
/// fail (a refusal or "network unreachable" comes back at once, before
/// any second attempt).
async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let first = TcpStream::connect(addr);
    tokio::pin!(first);
    tokio::select! {
        r = &mut first => return r,
        () = tokio::time::sleep(RESYN_AFTER) => {}
    }
    let second = TcpStream::connect(addr);
    tokio::pin!(second);
    tokio::select! {
        r = &mut first => match r {
            Ok(s) => Ok(s),
            Err(e) => second.await.map_err(|_| e),
        },
        r = &mut second => match r {
            Ok(s) => Ok(s),
            Err(e) => first.await.map_err(|_| e),
        },
    }
}

/// What ends a successor link's task.
pub(super) struct LinkEnds {
    /// The node stops: end without a report.
    pub(super) node: CancellationToken,
    /// The owner's particle write failed: report how the link ended.
    pub(super) broken: CancellationToken,
}

/// Watches one link to a successor: pings it and reports what comes back
/// (pongs, custody acks) and the link's end. The owner writes particles to
/// the shared writer itself. Ends when the owner drops the link (aborting
/// this task), the link fails (a write of its own or, through
/// `ends.broken`, of the owner's), or the node stops; a failed link is
/// reported as `Left` when the successor said `Leave` before the end.
///
/// With `beacon` (the successor reads them), every ping carries what this
/// node knows of the particle, and a ping goes out at once when the owner
/// has fresher news by half a heartbeat: word that a member holds the
/// particle crosses the ring in link latencies, not in heartbeats.
pub(super) async fn run_downlink(
    link: LinkId,
    writer: SharedWriter,
    mut reader: FrameReader<LinkRead>,
    tx: mpsc::Sender<Msg>,
    config: Arc<NodeConfig>,
    beacon: Option<Arc<BeaconCell>>,
    ends: LinkEnds,
) {
    let write_limit = Duration::from_millis(config.write_timeout_ms);
    let heartbeat = Duration::from_millis(config.heartbeat_interval_ms);
    let mut ping = tokio::time::interval(heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    // When the last pings went out, by number: a pong echoes its ping's
    // number, so each pong is one round-trip sample.
    let mut sent: VecDeque<(u64, Instant)> = VecDeque::with_capacity(PINGS_REMEMBERED);
    let why = loop {
        let news = async {
            match &beacon {
                Some(b) => b.news.notified().await,
                None => std::future::pending().await,
            }
        };
        let send = tokio::select! {
            () = ends.node.cancelled() => return,
            () = ends.broken.cancelled() => break "a particle write failed".to_string(),
            _ = ping.tick() => true,
            () = news => true,
            r = reader.read_frame() => {
                let msg = match r {
                    Ok(Some(Frame::Pong(k))) => Msg::Heard {
                        link,
                        rtt: round_trip(&mut sent, k, Instant::now()),
                    },
                    Ok(Some(Frame::Forwarded { id, hop })) => Msg::Forwarded { link, id, hop },
                    Ok(Some(Frame::Leave)) => {
                        let _ = tx.send(Msg::Left(link)).await;
                        return;
                    }
                    Ok(Some(other)) => break format!("unexpected {} from the successor", other.kind_name()),
                    Ok(None) => break "closed by the successor".to_string(),
                    Err(e) => break e.to_string(),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                false
            }
        };
        if send {
            // The write happens here, never inside the select, so a frame
            // is never cut in half by a cancelled branch.
            n += 1;
            let b = beacon
                .as_ref()
                .and_then(|b| *b.value.lock().expect("beacon lock"));
            let alive = b.map(|b| b.alive(Instant::now()));
            let mut w = writer.lock().await;
            if sent.len() == PINGS_REMEMBERED {
                sent.pop_front();
            }
            sent.push_back((n, Instant::now()));
            match timeout(write_limit, w.write_frame(&Frame::Ping { n, alive })).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break format!("write: {e}"),
                Err(_) => break format!("write timed out after {write_limit:?}"),
            }
        }
    };
    let msg = last_word(link, &mut reader, &tx, why).await;
    let _ = tx.send(msg).await;
}

/// Pings whose send time a link remembers for round-trip samples.
const PINGS_REMEMBERED: usize = 64;

/// The round trip of ping `k`, answered at `now`, forgetting it and every
/// ping before it (a pong answers them all: the link is in order).
fn round_trip(sent: &mut VecDeque<(u64, Instant)>, k: u64, now: Instant) -> Option<Duration> {
    let mut at = None;
    while let Some(&(n, t)) = sent.front() {
        if n > k {
            break;
        }
        sent.pop_front();
        if n == k {
            at = Some(t);
        }
    }
    at.map(|t| now.saturating_duration_since(t))
}

/// How long a link that failed on a write is still read for a `Leave`.
const LAST_WORD_GRACE: Duration = Duration::from_millis(200);

/// How the link ended: `Left` when the successor said `Leave` before the
/// end, else `LinkLost`. A write (a ping here, a particle by the owner)
/// can fail before the reader got to a `Leave` already received: a
/// successor that stops resets the connection when it closes with our
/// frames unread. So the frames still in the socket are read first
/// (bounded: a jammed peer that sends nothing ends as lost), and a clean
/// stop is never taken for a failure, whichever side noticed the end.
async fn last_word(
    link: LinkId,
    reader: &mut FrameReader<LinkRead>,
    tx: &mpsc::Sender<Msg>,
    why: String,
) -> Msg {
    let read = async {
        loop {
            match reader.read_frame().await {
                Ok(Some(Frame::Leave)) => return true,
                Ok(Some(Frame::Forwarded { id, hop })) => {
                    let _ = tx.send(Msg::Forwarded { link, id, hop }).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
    };
    match timeout(LAST_WORD_GRACE, read).await {
        Ok(true) => Msg::Left(link),
        _ => Msg::LinkLost { link, why },
    }
}
