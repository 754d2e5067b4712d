//! Predecessor links: the accept loop on the ring port and the task per
//! connection, which checks the hello (protocol, ring, membership, a
//! member claimed twice), answers pings, forwards particles to the owner
//! and writes their custody acks; or answers a status request or a request
//! (push, fetch, config…) on a connection of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::NodeConfig;
use crate::conns::{Admitted, ConnTable};
use crate::deploy::agent::{DeployMsg, DeployView};
use crate::lograte::LogBackoff;
use crate::model::Reply;
use crate::observe::{EventKind, Observer};
use crate::ring::state::UpstreamId;
use crate::ring::token::ParticleId;
use crate::secure::{self, LinkRead, LinkWrite};
use crate::wire::{Frame, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION, Refuse, Welcome};

use super::msg::{AckSlot, Msg, short};
use super::snapshot::StatusSnapshot;

/// How long a stopping node waits for a predecessor to take its `Leave`
/// and close the link (a peer on the same machine takes well under a
/// millisecond).
const LEAVE_GRACE: Duration = Duration::from_millis(200);

/// The least time an accepted connection gets to complete its cluster
/// handshake and hello (`--failure-timeout-ms` when longer). On a lossy
/// link a dialer's first segment lost twice is resent by TCP after 200 +
/// 400 ms (Linux's minimum RTO, doubled), so the failure timeout (500 ms)
/// would cut off healthy members, fetches and tools; 2 s covers three
/// resends. The dialing side keeps the failure timeout: it is what finds
/// a frozen successor. A flood of idle connections gains nothing from the
/// longer wait: the oldest idle one makes room for a new one (`conns`).
const ACCEPT_HANDSHAKE_FLOOR: Duration = Duration::from_secs(2);

/// The live upstream link of one predecessor member, to refuse a second
/// process claiming the same member while the first is alive.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    conn: UpstreamId,
    instance: u64,
    addr: SocketAddr,
    last_heard: Instant,
}

/// Predecessor member index → its live link.
pub(super) type Claims = Arc<std::sync::Mutex<HashMap<u32, Claim>>>;

/// What every upstream connection task needs.
#[derive(Clone)]
pub(super) struct Upstreams {
    pub(super) claims: Claims,
    /// Backs off repeated rejection lines (a peer redialing every probe).
    pub(super) log: Arc<std::sync::Mutex<LogBackoff>>,
    pub(super) config: Arc<NodeConfig>,
    /// The bound address of the node's admin API (`None`: off), named to
    /// operator requests that arrive on the ring port.
    pub(super) admin: Option<SocketAddr>,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) seen: watch::Receiver<Option<ParticleId>>,
    pub(super) observer: Observer,
    pub(super) cancel: CancellationToken,
    /// The owner is done with the particle while stopping.
    pub(super) released: CancellationToken,
    pub(super) deploy_tx: mpsc::Sender<DeployMsg>,
    pub(super) deploy_view: watch::Receiver<DeployView>,
    /// The status snapshot a status request is answered from.
    pub(super) status: Arc<StatusSnapshot>,
}

/// Connections from one address that may wait for their hello at once; a
/// newer one from that address makes its oldest one close (see
/// `crate::conns`).
const PENDING_PER_SOURCE: usize = 32;

/// Accepts connections on the ring port until the node has released the
/// particle while stopping (not at the stop itself: a predecessor that
/// redials meanwhile must reach a node that tells it it leaves, not a
/// closed port that reads as a failure).
pub(super) async fn accept_loop(listener: TcpListener, ctx: Upstreams, tracker: TaskTracker) {
    let mut backoff = Duration::from_millis(1);
    let mut next_id: UpstreamId = 1;
    let table = ConnTable::new(ctx.config.max_ring_connections, PENDING_PER_SOURCE);
    loop {
        let accepted = tokio::select! {
            () = ctx.released.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(1);
                let admitted = table.admit(peer.ip());
                let metrics = ctx.observer.metrics();
                if admitted.as_ref().is_ok_and(Admitted::made_room) {
                    metrics.inspect(|m| m.refused("ring", "evicted"));
                }
                let Ok(place) = admitted else {
                    metrics.inspect(|m| m.refused("ring", "full"));
                    let held = ctx
                        .log
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .check("ring port full", Instant::now());
                    if let Some(held) = held {
                        warn!(
                            peer = %peer,
                            max = ctx.config.max_ring_connections,
                            repeats_held_back = held,
                            "ring port: every connection is past its hello; a new one was closed"
                        );
                    }
                    continue;
                };
                let span = info_span!("upstream", peer = %peer);
                let id = next_id;
                next_id += 1;
                tracker.spawn(serve_upstream(id, stream, ctx.clone(), place).instrument(span));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                warn!(cause = %e, "accept failed");
                tokio::select! {
                    () = ctx.released.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// The answer to an operator request (`kind`: push, rollback, config…)
/// sent to the ring port: names the node's admin API URL, or says it is
/// off. An admin API bound to every interface is named at `local_ip`, the
/// address the requester reached this node at (when known).
fn refusal(kind: &str, admin: Option<SocketAddr>, local_ip: Option<std::net::IpAddr>) -> String {
    match admin {
        Some(mut a) => {
            if let Some(ip) = local_ip.filter(|_| a.ip().is_unspecified()) {
                a.set_ip(ip);
            }
            format!(
                "{kind} is not served on the ring port: this node's admin API is at \
                 http://{a} (a ringhost tool of this version uses it, given `--to {a}` or \
                 this ring address)"
            )
        }
        None => format!(
            "{kind} is not served on the ring port, and this node's admin API is off \
             (it was started with `--admin off`; restart it with `--admin ADDR`)"
        ),
    }
}

/// Serves one connection on the ring port: a hello (then pings, particles
/// and announces), a status request, or a request (push, fetch, config…).
async fn serve_upstream(id: UpstreamId, stream: TcpStream, ctx: Upstreams, place: Admitted) {
    let Upstreams {
        config,
        admin,
        tx,
        seen,
        observer,
        cancel,
        released,
        deploy_tx,
        deploy_view,
        claims,
        log,
        status,
    } = ctx;
    let _ = stream.set_nodelay(true);
    let Ok(remote) = stream.peer_addr() else {
        return; // gone already
    };
    // Where the peer reached us: names an admin API bound everywhere.
    let local_ip = stream.local_addr().ok().map(|a| a.ip());
    // `key`: what repeats of the same rejection share in the log's
    // backoff (a reason naming the peer's port never repeats).
    let reject_as = |kind: &'static str, reason: String, key: &str| {
        if let Some(m) = observer.metrics() {
            m.refused("ring", kind);
        }
        let held = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(key, Instant::now());
        if let Some(held) = held {
            warn!(%reason, repeats_held_back = held, "upstream connection closed");
        }
        observer.emit(config.index, EventKind::UpstreamRejected { reason });
    };
    let reject = |kind: &'static str, reason: String| {
        let key = reason.clone();
        reject_as(kind, reason, &key);
    };

    let limit = Duration::from_millis(config.handshake_timeout_ms).max(ACCEPT_HANDSHAKE_FLOOR);
    // A predecessor that (re)dials while this node is stopping is welcomed
    // and then told the node leaves: until the particle is released the
    // node is a member, and after that it says `Leave` on every link.
    let first = tokio::select! {
        () = released.cancelled() => return,
        () = place.closed() => {
            debug!("closed before its hello to make room for a newer connection");
            return;
        }
        r = timeout(limit, open(stream, &config)) => r,
    };
    // Past its first frame: no longer evicted to make room.
    let _busy = place.busy();
    let (mut reader, mut writer, first) = match first {
        Ok(Ok(opened)) => opened,
        Ok(Err(secure::AuthError::Left)) => return, // connected and left: a port probe
        Ok(Err(e)) => {
            // Nothing it sent was read as a frame.
            let key = format!("auth {} {e}", remote.ip());
            return reject_as(
                "auth",
                format!("peer {remote} failed authentication: {e}"),
                &key,
            );
        }
        Err(_) => return reject("handshake", format!("no hello within {limit:?}")),
    };
    let mut hello = match first {
        Ok(Some(Frame::Hello(h))) => h,
        Ok(Some(Frame::StatusRequest)) => {
            if let Some(json) = status.get_json(limit).await {
                let frame = Frame::Status(json.to_string());
                let _ = timeout(limit, writer.write_frame(&frame)).await;
            }
            return;
        }
        Ok(Some(Frame::Request(req, _))) if !req.is_member_traffic() => {
            // The ring port carries member traffic only: operator requests
            // (push, rollback, config) go to the admin API.
            let why = refusal(req.kind_name(), admin, local_ip);
            let limit = Duration::from_millis(config.write_timeout_ms).max(limit);
            let _ = timeout(
                limit,
                writer.write_frame(&Frame::Reply(Reply::error(why), Bytes::new())),
            )
            .await;
            return;
        }
        Ok(Some(Frame::Request(req, _))) => {
            // A member's module fetch; the connection stays open (bounded)
            // for its next one.
            let write_limit = Duration::from_millis(config.write_timeout_ms).max(limit) * 10;
            let conn = super::fetches::Conn {
                reader: &mut reader,
                writer: &mut writer,
                deploy_tx: &deploy_tx,
                cancel: &cancel,
                write_limit,
            };
            return conn.serve(req).await;
        }
        Ok(Some(other)) => {
            return reject(
                "handshake",
                format!("expected hello, got {}", other.kind_name()),
            );
        }
        Ok(None) => return, // connected and left: a port probe
        Err(e) => return reject("handshake", format!("bad hello: {e}")),
    };
    let failure_timeout = Duration::from_millis(config.failure_timeout_ms);
    let mut duplicate = false;
    let checked = check_hello(&hello, &config).and_then(|()| {
        duplicate = true;
        claim(
            &claims,
            &hello,
            Claim {
                conn: id,
                instance: hello.instance,
                addr: remote,
                last_heard: Instant::now(),
            },
            failure_timeout,
        )
    });
    if let Err(reason) = checked {
        let ring_hash =
            (hello.ring_hash != config.ring.hash()).then(|| config.ring.hash().to_string());
        let _ = timeout(
            limit,
            writer.write_frame(&Frame::Refuse(Refuse {
                reason: reason.clone(),
                ring_hash,
                duplicate,
            })),
        )
        .await;
        return reject(
            "refused",
            format!("refused {} from {}: {reason}", hello.from_name, remote.ip()),
        );
    }
    let welcome = Frame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        node_index: config.index as u32,
        seen: *seen.borrow(),
        releases: deploy_view.borrow().releases.clone(),
        beacons: true,
    });
    match timeout(limit, writer.write_frame(&welcome)).await {
        Ok(Ok(())) => {}
        _ => return reject("write", "could not send welcome".into()),
    }
    debug!(predecessor = hello.from_index, "predecessor linked");
    let predecessor = hello.from_index as usize;
    let _ = deploy_tx
        .send(DeployMsg::PeerReleases {
            peer: predecessor,
            releases: std::mem::take(&mut hello.releases),
            coming: Vec::new(),
        })
        .await;
    let ack: AckSlot = Arc::default();
    let write_limit = Duration::from_millis(config.write_timeout_ms);
    let end = loop {
        // A clean stop: once the owner has passed on the particle it held
        // (it may be in a long visit still; pings are answered meanwhile),
        // tell the predecessor this is a leave, so it skips us at once
        // and nobody respawns us.
        let frame = tokio::select! {
            () = released.cancelled() => return say_leave(&mut writer, &mut reader, &ack, write_limit).await,
            r = reader.read_frame() => r,
        };
        let n = match frame {
            Ok(Some(Frame::Particle(particle))) => {
                let msg = Msg::Particle {
                    particle,
                    from: id,
                    ack: Arc::clone(&ack),
                };
                if tx.send(msg).await.is_err() {
                    return say_leave(&mut writer, &mut reader, &ack, write_limit).await; // the node is stopping
                }
                continue;
            }
            Ok(Some(Frame::Announce(announce))) => {
                let msg = DeployMsg::PeerReleases {
                    peer: predecessor,
                    releases: announce.held,
                    coming: announce.coming,
                };
                if deploy_tx.send(msg).await.is_err() {
                    // The agent is gone: the node is stopping.
                    return say_leave(&mut writer, &mut reader, &ack, write_limit).await;
                }
                continue;
            }
            Ok(Some(Frame::Ping { n, alive })) => (n, alive),
            Ok(Some(other)) => {
                break Some((
                    "frame",
                    format!("unexpected {} on an upstream link", other.kind_name()),
                ));
            }
            Ok(None) => break None,
            Err(e) => break Some(("frame", format!("bad frame: {e}"))),
        };
        let (n, alive) = n;
        let mine = Claim {
            conn: id,
            instance: hello.instance,
            addr: remote,
            last_heard: Instant::now(),
        };
        if let Err(why) = claim(&claims, &hello, mine, failure_timeout) {
            break Some(("refused", why));
        }
        if tx.send(Msg::UpstreamAlive(alive)).await.is_err() {
            return say_leave(&mut writer, &mut reader, &ack, write_limit).await;
        }
        // Custody acks ride along with the pongs.
        let owed = ack.lock().expect("ack slot").take();
        let mut out = Vec::with_capacity(2);
        if let Some((id, hop)) = owed {
            out.push(Frame::Forwarded { id, hop });
        }
        out.push(Frame::Pong(n));
        // A failed or timed-out write ends the link: the stream may hold
        // half a frame, and a custody ack not sent is resent as a
        // particle by the predecessor on its next link (the copy is
        // dropped here as a duplicate).
        if let Some(why) = write_all(&mut writer, &out, write_limit).await {
            break Some(("write", why));
        }
    };
    let _ = tx.send(Msg::UpstreamClosed(id)).await;
    {
        let mut claims = claims.lock().expect("claims lock");
        if claims.get(&hello.from_index).is_some_and(|c| c.conn == id) {
            claims.remove(&hello.from_index);
        }
    }
    match end {
        Some((kind, reason)) => reject(kind, reason),
        None => debug!(predecessor = hello.from_index, "predecessor link closed"),
    }
}

/// The link's halves as frames, and its first frame: the cluster handshake
/// first when the node holds keys (see `crate::secure`).
async fn open(
    stream: TcpStream,
    config: &NodeConfig,
) -> Result<
    (
        FrameReader<LinkRead>,
        FrameWriter<LinkWrite>,
        Result<Option<Frame>, crate::wire::WireError>,
    ),
    secure::AuthError,
> {
    let (r, w) = secure::accepted(stream, config.cluster_keys.as_ref(), plain_refusal()).await?;
    let mut reader = FrameReader::new(r, config.max_frame_bytes);
    let writer = FrameWriter::new(w, config.max_frame_bytes);
    let first = reader.read_frame().await;
    Ok((reader, writer, first))
}

/// What a plain dialer is told by a node whose ring links need the
/// cluster key: a `Refuse` frame (length first), so its log says why too.
/// Encoded once per process.
fn plain_refusal() -> &'static [u8] {
    static FRAMED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FRAMED.get_or_init(|| {
        let refuse = Frame::Refuse(Refuse {
            reason: "failed authentication: this ring's links are authenticated; start the \
                     node or tool with the ring's --cluster-key-file (the same key file as \
                     every member)"
                .into(),
            ring_hash: None,
            duplicate: false,
        });
        let mut body = bytes::BytesMut::new();
        // A small frame of fixed fields: it always encodes.
        if refuse.encode(&mut body).is_err() {
            return Vec::new();
        }
        let mut framed = u32::try_from(body.len())
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&body);
        framed
    })
}

/// Writes `frames` in order, each within `limit`; the reason of the first
/// that fails or times out.
async fn write_all(
    writer: &mut FrameWriter<LinkWrite>,
    frames: &[Frame],
    limit: Duration,
) -> Option<String> {
    for f in frames {
        match timeout(limit, writer.write_frame(f)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(format!("writing a {} failed: {e}", f.kind_name())),
            Err(_) => {
                return Some(format!(
                    "writing a {} timed out after {} ms (the predecessor does not read)",
                    f.kind_name(),
                    limit.as_millis()
                ));
            }
        }
    }
    None
}

/// Tells the predecessor this node leaves, after the custody ack it is
/// owed (the particle went on: no need to resend it), then closes the link
/// gracefully: our side is shut (a FIN after the `Leave`) and what the
/// predecessor still sends (pings, a particle) is read and dropped until it
/// closes its side on reading the `Leave`. Closing with its frames unread
/// would reset the connection: the reset can discard a `Leave` still
/// queued here, and makes the predecessor's next write fail before it has
/// read the `Leave`, so a clean stop would look like a failure. Bounded,
/// so a stuck peer does not hold up the stop.
async fn say_leave(
    writer: &mut FrameWriter<LinkWrite>,
    reader: &mut FrameReader<LinkRead>,
    ack: &AckSlot,
    write_limit: Duration,
) {
    let limit = write_limit.min(LEAVE_GRACE);
    let owed = ack.lock().expect("ack slot").take();
    let said = timeout(limit, async {
        if let Some((id, hop)) = owed {
            writer.write_frame(&Frame::Forwarded { id, hop }).await?;
        }
        writer.write_frame(&Frame::Leave).await?;
        writer.shutdown().await
    })
    .await;
    if !matches!(said, Ok(Ok(()))) {
        return;
    }
    let _ = timeout(LEAVE_GRACE, async {
        while let Ok(Some(_)) = reader.read_frame().await {}
    })
    .await;
}

/// Records `mine` as the live link of member `hello.from_index`, unless
/// another process (another instance) holds that member on a link heard
/// within `failure_timeout`: then the member is claimed twice (two nodes
/// started with one name), and the newcomer is refused. Nodes too old to
/// send an instance (0) are not checked.
fn claim(
    claims: &Claims,
    hello: &Hello,
    mine: Claim,
    failure_timeout: Duration,
) -> Result<(), String> {
    let mut claims = claims.lock().expect("claims lock");
    match claims.get(&hello.from_index) {
        Some(c)
            if c.instance != mine.instance
                && c.instance != 0
                && mine.instance != 0
                && mine.last_heard.saturating_duration_since(c.last_heard) <= failure_timeout =>
        {
            // No ports or times in the words: the log backs off repeats of
            // a line, and a redialing process comes from a new port each time.
            Err(format!(
                "member {} ({}) is already linked from {}, alive; a second process claims it \
                 from {}: two nodes started as the same member?",
                hello.from_index,
                hello.from_name,
                c.addr.ip(),
                mine.addr.ip()
            ))
        }
        _ => {
            claims.insert(hello.from_index, mine);
            Ok(())
        }
    }
}

fn check_hello(hello: &Hello, config: &NodeConfig) -> Result<(), String> {
    if hello.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} differs from ours ({PROTOCOL_VERSION})",
            hello.version
        ));
    }
    if hello.ring_hash != config.ring.hash() {
        return Err(format!(
            "ring enumeration differs: theirs hashes to {}, ours to {} ({}); \
             every node must be started with the same --ring",
            short(&hello.ring_hash),
            short(config.ring.hash()),
            config.ring.describe()
        ));
    }
    let members = config.ring.members();
    match members.get(hello.from_index as usize) {
        Some(m) if m.name == hello.from_name => Ok(()),
        _ => Err(format!(
            "{:?} at index {} is not a member of this ring",
            hello.from_name, hello.from_index
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_requests_on_the_ring_port_are_told_the_admin_url_or_that_it_is_off() {
        let lo: SocketAddr = "127.0.0.1:4000".parse().expect("an address");
        let e = refusal("push", Some(lo), Some([127, 0, 0, 2].into()));
        assert!(
            e.starts_with("push is not served on the ring port")
                && e.contains("admin API is at http://127.0.0.1:4000 "),
            "{e}"
        );
        let everywhere: SocketAddr = "0.0.0.0:4001".parse().expect("an address");
        let e = refusal("rollback", Some(everywhere), Some([10, 0, 0, 5].into()));
        assert!(e.contains("http://10.0.0.5:4001 "), "{e}");
        let e = refusal("config-set", None, None);
        assert!(
            e.contains("admin API is off") && !e.contains("http://"),
            "{e}"
        );
    }
}
