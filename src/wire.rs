//! The ring wire: frames, their encoding, the handshake messages, and
//! framed readers/writers over any `AsyncRead`/`AsyncWrite`.
//!
//! Every frame is a 4-byte big-endian length followed by a body whose first
//! byte is the frame kind. Control frames (hello, welcome, refuse) carry a
//! JSON body, easy to read in a capture. The particle, the hot path, has a
//! compact binary body. This module knows frames, not rings: what a frame
//! means is decided in `ring/` and `node.rs`.
//!
//! A peer's bad input (garbage, truncation, an oversized length, an unknown
//! kind) gives a [`WireError`], never a panic; the caller closes that one
//! connection.

use std::collections::BTreeMap;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::model::{Announce, Release, Reply, Request};
use crate::ring::token::{
    Alive, MAX_SLOT_BYTES, MAX_SLOT_NAME_BYTES, MAX_SLOTS, MAX_VIEW_BYTES, Particle, ParticleId,
};

/// Protocol version spoken on the ring port. Peers must match exactly.
pub const PROTOCOL_VERSION: u32 = 1;

const KIND_HELLO: u8 = 0x01;
const KIND_WELCOME: u8 = 0x02;
const KIND_REFUSE: u8 = 0x03;
const KIND_PARTICLE: u8 = 0x10;
const KIND_PING: u8 = 0x20;
const KIND_PONG: u8 = 0x21;
/// A ping's body with an [`Alive`]: number, generation, origin, age, relays.
const PING_ALIVE_BYTES: usize = 8 + 8 + 4 + 4 + 2;
const KIND_FORWARDED: u8 = 0x22;
const KIND_LEAVE: u8 = 0x23;
const KIND_STATUS_REQUEST: u8 = 0x30;
const KIND_STATUS: u8 = 0x31;
const KIND_ANNOUNCE: u8 = 0x40;
const KIND_REQUEST: u8 = 0x41;
const KIND_REPLY: u8 = 0x42;
const KIND_CHUNK: u8 = 0x43;

/// One entry of an announce frame's JSON list: a release, marked when it
/// is on its way rather than held. Nodes older than relaying read the list
/// as `Vec<Release>` and ignore the mark (they ask for the module; the
/// sender answers once it holds it).
#[derive(Serialize, Deserialize)]
struct AnnounceEntry {
    #[serde(flatten)]
    release: Release,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    coming: bool,
}

/// The first frame a dialing node sends to its successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// Hex sha-256 of the sender's ring enumeration.
    pub ring_hash: String,
    /// The sender's index in the enumeration.
    pub from_index: u32,
    /// The sender's name in the enumeration.
    pub from_name: String,
    /// The sender's current station releases (deployed ones), so a node
    /// that missed a deploy catches up.
    #[serde(default)]
    pub releases: Vec<Release>,
    /// Random, drawn once per node process: two processes claiming one
    /// member have different ones (0: an older node that sends none).
    #[serde(default)]
    pub instance: u64,
}

/// The accepting node's answer when it takes the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// [`PROTOCOL_VERSION`] of the acceptor.
    pub version: u32,
    /// The acceptor's index in the enumeration.
    pub node_index: u32,
    /// The highest particle the acceptor has seen, if any: a node that
    /// (re)starts learns that a ring is already running.
    #[serde(default)]
    pub seen: Option<ParticleId>,
    /// The acceptor's current station releases, as in [`Hello`].
    #[serde(default)]
    pub releases: Vec<Release>,
    /// The acceptor reads pings that carry an [`Alive`] (absent from
    /// nodes older than that: they get plain 8-byte pings).
    #[serde(default)]
    pub beacons: bool,
}

/// The accepting node's answer when it refuses the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refuse {
    /// Why, in words, for the dialer's log.
    pub reason: String,
    /// The acceptor's ring hash, when the rings differ: the dialer words
    /// the mismatch from its own side ("ours", "theirs").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<String>,
    /// The dialer claims a member another live process already runs: it is
    /// a duplicate and should stop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// A frame on the ring port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Dialer → acceptor, first frame.
    Hello(Hello),
    /// Acceptor → dialer: link accepted.
    Welcome(Welcome),
    /// Acceptor → dialer: link refused; the acceptor closes after it.
    Refuse(Refuse),
    /// The particle, predecessor → successor.
    Particle(Particle),
    /// Predecessor → successor, every heartbeat interval (and at once when
    /// the sender learns the particle is alive), with the sender's freshest
    /// word on the particle when the successor said it takes one
    /// ([`Welcome::beacons`]). 8 bytes of body without it, 26 with it.
    Ping {
        /// The ping's number, echoed by the pong.
        n: u64,
        /// The particle known alive, if the sender knows it.
        alive: Option<Alive>,
    },
    /// Successor → predecessor, answering a ping with its number.
    Pong(u64),
    /// Successor → predecessor: the particle `id` received at `hop` was
    /// passed on (or dropped as stale): custody moved on.
    Forwarded {
        /// The particle.
        id: ParticleId,
        /// The hop it was received with.
        hop: u64,
    },
    /// Successor → predecessor: the successor is stopping cleanly (a
    /// leave, not a failure: it is not to be respawned).
    Leave,
    /// A member (gathering `/v1/ring`) or a tool (finding the admin API)
    /// asks for the node's status report (instead of a hello).
    StatusRequest,
    /// The node's status, as JSON text (see `status.rs`).
    Status(String),
    /// Predecessor → successor: the sender's releases changed (held, and
    /// on their way). On the wire a JSON list of releases, those on their
    /// way marked `"coming": true`.
    Announce(Announce),
    /// A member's module fetch (instead of a hello), with a blob (empty
    /// for a fetch). Other requests are answered with a refusal naming
    /// the admin API: operators' requests do not travel on the ring port.
    Request(Request, Bytes),
    /// The answer to a request, with a blob (a module or delta for a
    /// fetch).
    Reply(Reply, Bytes),
    /// After a [`Reply`] with [`Reply::stream`] set: the next bytes of the
    /// module, in order; an empty chunk ends the stream (the server checked
    /// the module's hash). Raw bytes, no head.
    Chunk(Bytes),
}

/// Why bytes from a peer could not be read as a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed in the middle of a frame.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The length prefix exceeds the configured maximum.
    #[error("frame larger than the {max} byte limit")]
    TooLarge {
        /// The limit in force.
        max: usize,
    },
    /// A zero-length frame has no kind byte.
    #[error("empty frame")]
    Empty,
    /// The kind byte names no frame.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A control frame's JSON did not parse.
    #[error("bad control frame: {0}")]
    Json(#[from] serde_json::Error),
    /// A binary body is cut short or has trailing bytes.
    #[error("malformed {what}")]
    Malformed {
        /// What was being read.
        what: &'static str,
    },
    /// A frame's content breaks one of the protocol's bounds (a particle
    /// with too many slots, an oversized slot…); refused at decode and
    /// never encoded.
    #[error("{frame} with {got} {what}, over the bound of {max}")]
    OverBound {
        /// The frame kind.
        frame: &'static str,
        /// What is counted.
        what: &'static str,
        /// How many the frame has.
        got: usize,
        /// The bound.
        max: usize,
    },
}

impl WireError {
    /// Whether the bytes were not ringhost frames at all (as opposed to a
    /// connection that failed): what a tool sees when the address it was
    /// given is some other kind of server.
    pub fn is_foreign(&self) -> bool {
        !matches!(self, WireError::Io(_))
    }

    /// This error as the reader of `peer`'s first answer should see it:
    /// bytes that are not ringhost frames name the peer as something else
    /// (an HTTP server's answer otherwise reads as a frame over the size
    /// limit).
    pub fn in_answer_of(self, peer: &str) -> anyhow::Error {
        if self.is_foreign() {
            anyhow::anyhow!(
                "{peer} is not a ringhost node: its answer is not a ringhost frame \
                 (is that the node's ring port?)"
            )
        } else {
            anyhow::Error::new(self).context(format!(
                "reading the answer of {peer} (is it a ringhost node's ring port?)"
            ))
        }
    }
}

impl Frame {
    /// Encodes the frame body (without the length prefix).
    ///
    /// # Errors
    /// [`WireError::OverBound`] for a particle over a bound of
    /// [`crate::ring::token`] (nothing is written then); a JSON error for a
    /// control frame that does not serialize.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        match self {
            Frame::Hello(h) => json_body(out, KIND_HELLO, h)?,
            Frame::Welcome(w) => json_body(out, KIND_WELCOME, w)?,
            Frame::Refuse(r) => json_body(out, KIND_REFUSE, r)?,
            Frame::Ping { n, alive } => {
                out.put_u8(KIND_PING);
                out.put_u64(*n);
                if let Some(a) = alive {
                    out.put_u64(a.id.generation);
                    out.put_u32(a.id.origin);
                    out.put_u32(a.age_ms);
                    out.put_u16(a.relays);
                }
            }
            Frame::Pong(n) => {
                out.put_u8(KIND_PONG);
                out.put_u64(*n);
            }
            Frame::Forwarded { id, hop } => {
                out.put_u8(KIND_FORWARDED);
                out.put_u64(id.generation);
                out.put_u32(id.origin);
                out.put_u64(*hop);
            }
            Frame::Announce(a) => {
                let held = a.held.iter().map(|r| (r, false));
                let list: Vec<AnnounceEntry> = held
                    .chain(a.coming.iter().map(|r| (r, true)))
                    .map(|(r, coming)| AnnounceEntry {
                        release: r.clone(),
                        coming,
                    })
                    .collect();
                json_body(out, KIND_ANNOUNCE, &list)?
            }
            Frame::Chunk(bytes) => {
                out.reserve(1 + bytes.len());
                out.put_u8(KIND_CHUNK);
                out.put_slice(bytes);
            }
            Frame::Request(req, blob) => json_blob(out, KIND_REQUEST, req, blob)?,
            Frame::Reply(reply, blob) => json_blob(out, KIND_REPLY, reply, blob)?,
            Frame::StatusRequest => out.put_u8(KIND_STATUS_REQUEST),
            Frame::Leave => out.put_u8(KIND_LEAVE),
            Frame::Status(json) => {
                out.put_u8(KIND_STATUS);
                out.put_slice(json.as_bytes());
            }
            Frame::Particle(p) => {
                if let Some((what, got, max)) = p.over_bound() {
                    return Err(WireError::OverBound {
                        frame: "particle",
                        what,
                        got,
                        max,
                    });
                }
                out.reserve(p.encoded_len());
                out.put_u8(KIND_PARTICLE);
                out.put_u64(p.generation);
                out.put_u64(p.lap);
                out.put_u64(p.hop);
                out.put_u32(p.origin);
                // Within u16, u8 and u32 by the bounds checked above.
                out.put_u16(p.view.len() as u16);
                out.put_slice(&p.view);
                out.put_u16(p.slots.len() as u16);
                for (name, data) in &p.slots {
                    out.put_u8(name.len() as u8);
                    out.put_slice(name.as_bytes());
                    out.put_u32(data.len() as u32);
                    out.put_slice(data);
                }
            }
        }
        Ok(())
    }

    /// Decodes a frame body (without the length prefix).
    ///
    /// # Errors
    /// [`WireError`] on any malformed input; never panics.
    pub fn decode(mut body: Bytes) -> Result<Frame, WireError> {
        if body.is_empty() {
            return Err(WireError::Empty);
        }
        let kind = body.get_u8();
        match kind {
            KIND_HELLO => Ok(Frame::Hello(serde_json::from_slice(&body)?)),
            KIND_WELCOME => Ok(Frame::Welcome(serde_json::from_slice(&body)?)),
            KIND_REFUSE => Ok(Frame::Refuse(serde_json::from_slice(&body)?)),
            KIND_PARTICLE => decode_particle(body).map(Frame::Particle),
            KIND_PING => {
                let alive = match body.len() {
                    8 => None,
                    PING_ALIVE_BYTES => {
                        let n = body.get_u64();
                        let generation = body.get_u64();
                        let origin = body.get_u32();
                        let age_ms = body.get_u32();
                        let relays = body.get_u16();
                        return Ok(Frame::Ping {
                            n,
                            alive: Some(Alive {
                                id: ParticleId { generation, origin },
                                age_ms,
                                relays,
                            }),
                        });
                    }
                    _ => return Err(WireError::Malformed { what: "ping" }),
                };
                Ok(Frame::Ping {
                    n: body.get_u64(),
                    alive,
                })
            }
            KIND_PONG => {
                if body.len() != 8 {
                    return Err(WireError::Malformed { what: "pong" });
                }
                Ok(Frame::Pong(body.get_u64()))
            }
            KIND_FORWARDED => {
                if body.len() != 8 + 4 + 8 {
                    return Err(WireError::Malformed { what: "forwarded" });
                }
                let generation = body.get_u64();
                let origin = body.get_u32();
                let hop = body.get_u64();
                Ok(Frame::Forwarded {
                    id: ParticleId { generation, origin },
                    hop,
                })
            }
            KIND_ANNOUNCE => {
                let list: Vec<AnnounceEntry> = serde_json::from_slice(&body)?;
                let mut a = Announce::default();
                for e in list {
                    match e.coming {
                        true => a.coming.push(e.release),
                        false => a.held.push(e.release),
                    }
                }
                Ok(Frame::Announce(a))
            }
            KIND_CHUNK => Ok(Frame::Chunk(body)),
            KIND_REQUEST => {
                let (head, blob) = split_json_blob(body)?;
                Ok(Frame::Request(serde_json::from_slice(&head)?, blob))
            }
            KIND_REPLY => {
                let (head, blob) = split_json_blob(body)?;
                Ok(Frame::Reply(serde_json::from_slice(&head)?, blob))
            }
            KIND_STATUS_REQUEST if body.is_empty() => Ok(Frame::StatusRequest),
            KIND_LEAVE if body.is_empty() => Ok(Frame::Leave),
            KIND_LEAVE => Err(WireError::Malformed { what: "leave" }),
            KIND_STATUS_REQUEST => Err(WireError::Malformed {
                what: "status request",
            }),
            KIND_STATUS => String::from_utf8(body.to_vec())
                .map(Frame::Status)
                .map_err(|_| WireError::Malformed { what: "status" }),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

impl Frame {
    /// The frame's kind, for logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Refuse(_) => "refuse",
            Frame::Particle(_) => "particle",
            Frame::Ping { .. } => "ping",
            Frame::Pong(_) => "pong",
            Frame::Forwarded { .. } => "forwarded",
            Frame::StatusRequest => "status request",
            Frame::Leave => "leave",
            Frame::Status(_) => "status",
            Frame::Announce(_) => "announce",
            Frame::Request(..) => "request",
            Frame::Reply(..) => "reply",
            Frame::Chunk(_) => "chunk",
        }
    }
}

fn json_body<T: Serialize>(out: &mut BytesMut, kind: u8, value: &T) -> Result<(), WireError> {
    let json = serde_json::to_vec(value)?;
    out.put_u8(kind);
    out.put_slice(&json);
    Ok(())
}

/// A JSON head (length-prefixed) followed by a binary blob.
fn json_blob<T: Serialize>(
    out: &mut BytesMut,
    kind: u8,
    head: &T,
    blob: &[u8],
) -> Result<(), WireError> {
    let json = serde_json::to_vec(head)?;
    let len = u32::try_from(json.len()).map_err(|_| WireError::OverBound {
        frame: "request/reply",
        what: "head bytes",
        got: json.len(),
        max: u32::MAX as usize,
    })?;
    out.reserve(1 + 4 + json.len() + blob.len());
    out.put_u8(kind);
    out.put_u32(len);
    out.put_slice(&json);
    out.put_slice(blob);
    Ok(())
}

fn split_json_blob(mut body: Bytes) -> Result<(Bytes, Bytes), WireError> {
    let bad = || WireError::Malformed {
        what: "request/reply",
    };
    if body.remaining() < 4 {
        return Err(bad());
    }
    let n = body.get_u32() as usize;
    if body.remaining() < n {
        return Err(bad());
    }
    let head = body.split_to(n);
    Ok((head, body))
}

fn decode_particle(mut b: Bytes) -> Result<Particle, WireError> {
    const WHAT: &str = "particle";
    let bad = || WireError::Malformed { what: WHAT };
    if b.remaining() < 8 * 3 + 4 + 2 {
        return Err(bad());
    }
    let generation = b.get_u64();
    let lap = b.get_u64();
    let hop = b.get_u64();
    let origin = b.get_u32();
    let over = |what, got, max| WireError::OverBound {
        frame: WHAT,
        what,
        got,
        max,
    };
    let v = usize::from(b.get_u16());
    if v > MAX_VIEW_BYTES {
        return Err(over("view bytes", v, MAX_VIEW_BYTES));
    }
    if b.remaining() < v + 2 {
        return Err(bad());
    }
    let view = b.split_to(v).to_vec();
    let n = usize::from(b.get_u16());
    if n > MAX_SLOTS {
        return Err(over("slots", n, MAX_SLOTS));
    }
    let mut slots = BTreeMap::new();
    for _ in 0..n {
        if b.remaining() < 1 {
            return Err(bad());
        }
        let name_len = usize::from(b.get_u8());
        if name_len > MAX_SLOT_NAME_BYTES {
            return Err(over("slot name bytes", name_len, MAX_SLOT_NAME_BYTES));
        }
        if b.remaining() < name_len + 4 {
            return Err(bad());
        }
        let name = String::from_utf8(b.split_to(name_len).to_vec()).map_err(|_| bad())?;
        let len = b.get_u32() as usize;
        if len > MAX_SLOT_BYTES {
            return Err(over("slot bytes", len, MAX_SLOT_BYTES));
        }
        if b.remaining() < len {
            return Err(bad());
        }
        let data = b.split_to(len).to_vec();
        if slots.insert(name, data).is_some() {
            return Err(WireError::Malformed {
                what: "particle (duplicate slot)",
            });
        }
    }
    if b.has_remaining() {
        return Err(WireError::Malformed {
            what: "particle (trailing bytes)",
        });
    }
    Ok(Particle {
        generation,
        lap,
        hop,
        origin,
        view,
        slots,
    })
}

fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Reads frames from a byte stream. Cancel-safe: the read buffer lives in
/// the reader, so a cancelled `read_frame` loses nothing.
pub struct FrameReader<R> {
    inner: FramedRead<R, LengthDelimitedCodec>,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `io`, refusing frames longer than `max_frame_bytes`.
    pub fn new(io: R, max_frame_bytes: usize) -> Self {
        Self {
            inner: FramedRead::new(io, codec(max_frame_bytes)),
            max: max_frame_bytes,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream.
    ///
    /// # Errors
    /// [`WireError`] when the stream fails or a frame is malformed.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, WireError> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Ok(body)) => Frame::decode(body.freeze()).map(Some),
            Some(Err(e)) => {
                let too_large = e.get_ref().is_some_and(|inner| {
                    inner.is::<tokio_util::codec::LengthDelimitedCodecError>()
                });
                if too_large {
                    Err(WireError::TooLarge { max: self.max })
                } else {
                    Err(WireError::Io(e))
                }
            }
        }
    }
}

/// Writes frames to a byte stream.
pub struct FrameWriter<W> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps `io`.
    pub fn new(io: W, max_frame_bytes: usize) -> Self {
        Self {
            inner: FramedWrite::new(io, codec(max_frame_bytes)),
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// Encodes and sends one frame, flushing it.
    ///
    /// Not cancel-safe: a cancelled write may leave half a frame on the
    /// stream, so callers bound it with a timeout and drop the link when it
    /// fires rather than racing it in a `select!`.
    ///
    /// # Errors
    /// When the stream fails or the frame exceeds the maximum size.
    pub async fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        self.buf.clear();
        frame
            .encode(&mut self.buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let body = self.buf.split().freeze();
        self.inner.send(body).await
    }

    /// Shuts the write side (a TCP FIN): the peer reads the end of the
    /// stream after the last frame (every `write_frame` flushed its frame).
    ///
    /// # Errors
    /// When the stream fails.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.inner.get_mut().shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn sample_particle() -> Particle {
        let mut p = Particle::new(7, 3);
        p.lap = 11;
        p.hop = 123;
        p.slots.insert("tick".into(), 42u64.to_le_bytes().to_vec());
        p.slots.insert("empty".into(), Vec::new());
        p.slots.insert("big".into(), vec![0xab; 1024]);
        p.view = vec![0b1011_0111, 0b0000_0101];
        p
    }

    fn sample_release() -> Release {
        let hash = crate::model::Hash([0xcd; 32]);
        Release {
            size: 1234,
            ..Release::sample("tick", 3, 1, hash, 1_700_000_000_000)
        }
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                ring_hash: "ab".repeat(32),
                from_index: 4,
                from_name: "dc1/prod/0".into(),
                releases: vec![sample_release()],
                instance: 0x5eed,
            }),
            Frame::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                node_index: 5,
                seen: Some(ParticleId {
                    generation: 3,
                    origin: 2,
                }),
                releases: vec![],
                beacons: true,
            }),
            Frame::Announce(Announce::held(vec![sample_release()])),
            Frame::Announce(Announce {
                held: vec![sample_release()],
                coming: vec![sample_release()],
            }),
            Frame::Chunk(Bytes::from_static(b"module bytes")),
            Frame::Chunk(Bytes::new()),
            Frame::Request(
                Request::Push {
                    name: "tick".into(),
                    config: vec![("quiet".into(), "true".into())],
                    signer: None,
                    signature: None,
                    local: false,
                },
                Bytes::from_static(b"\0asm module bytes"),
            ),
            Frame::Reply(Reply::error("nope"), Bytes::new()),
            Frame::Ping { n: 77, alive: None },
            Frame::Ping {
                n: 78,
                alive: Some(Alive {
                    id: ParticleId {
                        generation: 9,
                        origin: 1,
                    },
                    age_ms: 250,
                    relays: 3,
                }),
            },
            Frame::Pong(77),
            Frame::Leave,
            Frame::Forwarded {
                id: ParticleId {
                    generation: 9,
                    origin: 4,
                },
                hop: 1234,
            },
            Frame::StatusRequest,
            Frame::Status("{\"ok\":true}".into()),
            Frame::Refuse(Refuse {
                reason: "ring mismatch".into(),
                ring_hash: Some("cd".repeat(32)),
                duplicate: true,
            }),
            Frame::Particle(sample_particle()),
            Frame::Particle(Particle::new(1, 0)),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in all_frames() {
            let mut b = BytesMut::new();
            f.encode(&mut b).unwrap();
            assert_eq!(Frame::decode(b.freeze()).unwrap(), f);
        }
    }

    #[test]
    fn every_truncation_of_a_particle_is_an_error_not_a_panic() {
        let mut b = BytesMut::new();
        Frame::Particle(sample_particle()).encode(&mut b).unwrap();
        let full = b.freeze();
        for cut in 0..full.len() {
            assert!(Frame::decode(full.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut extra = BytesMut::from(&full[..]);
        extra.put_u8(0);
        assert!(matches!(
            Frame::decode(extra.freeze()),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn garbage_gives_decode_errors() {
        assert!(matches!(Frame::decode(Bytes::new()), Err(WireError::Empty)));
        assert!(matches!(
            Frame::decode(Bytes::from_static(b"\xffhello")),
            Err(WireError::UnknownKind(0xff))
        ));
        assert!(matches!(
            Frame::decode(Bytes::from_static(b"\x01{not json")),
            Err(WireError::Json(_))
        ));
        // Pseudo-random bodies never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Frame::decode(Bytes::from(body));
        }
    }

    #[tokio::test]
    async fn frames_cross_a_duplex_stream() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a, 1 << 20);
        let mut r = FrameReader::new(b, 1 << 20);
        for f in all_frames() {
            w.write_frame(&f).await.unwrap();
            assert_eq!(r.read_frame().await.unwrap(), Some(f));
        }
        drop(w);
        assert_eq!(r.read_frame().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_and_truncated_streams_are_errors() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(b, 1024);
        a.write_all(&(1_000_000u32).to_be_bytes()).await.unwrap();
        assert!(matches!(
            r.read_frame().await,
            Err(WireError::TooLarge { max: 1024 })
        ));

        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(b, 1024);
        a.write_all(&100u32.to_be_bytes()).await.unwrap();
        a.write_all(b"\x10short").await.unwrap();
        drop(a);
        assert!(matches!(r.read_frame().await, Err(WireError::Io(_))));
    }

    /// A particle's body written field by field, with no bound checked
    /// (what a hostile peer may send).
    fn raw_particle_body(view: usize, slots: &[(String, usize)]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u64(1);
        b.put_u64(0);
        b.put_u64(0);
        b.put_u32(0);
        b.put_u16(view as u16);
        b.put_slice(&vec![0u8; view]);
        b.put_u16(slots.len() as u16);
        for (name, len) in slots {
            b.put_u8(name.len() as u8);
            b.put_slice(name.as_bytes());
            b.put_u32(*len as u32);
            b.put_slice(&vec![0u8; *len]);
        }
        b.freeze()
    }

    #[test]
    fn particles_over_a_bound_are_refused_at_decode_and_never_encoded() {
        // Zero-padded: written in the order the particle keeps them.
        let names = |n: usize| -> Vec<(String, usize)> {
            (0..n).map(|i| (format!("s{i:05}"), 0)).collect()
        };
        let cases: Vec<(Bytes, &str)> = vec![
            (raw_particle_body(0, &names(MAX_SLOTS + 1)), "65 slots"),
            (raw_particle_body(0, &names(65_535)), "65535 slots"),
            (
                raw_particle_body(0, &[("x".repeat(65), 0)]),
                "65 slot name bytes",
            ),
            (
                raw_particle_body(0, &[("big".into(), MAX_SLOT_BYTES + 1)]),
                "1048577 slot bytes",
            ),
            (
                raw_particle_body(MAX_VIEW_BYTES + 1, &[]),
                "8193 view bytes",
            ),
        ];
        for (body, says) in cases {
            let err = decode_particle(body).expect_err(says);
            assert!(matches!(err, WireError::OverBound { .. }), "{err}");
            assert!(err.to_string().contains(says), "{err} / {says}");
        }
        // At the bounds: decodes, and encodes back to the same bytes.
        let at = raw_particle_body(MAX_VIEW_BYTES, &names(MAX_SLOTS));
        let p = decode_particle(at.clone()).expect("at the bounds");
        let mut out = BytesMut::new();
        Frame::Particle(p.clone()).encode(&mut out).unwrap();
        let first = out[1..].iter().zip(at.iter()).position(|(a, b)| a != b);
        assert!(
            out[1..] == at[..],
            "re-encoded bytes differ at {first:?}: {} vs {} bytes",
            out.len() - 1,
            at.len()
        );
        assert_eq!(out.len(), p.encoded_len());
        // One more slot: the encoder refuses it and writes nothing.
        let mut over = p;
        over.slots.insert("one-more".into(), vec![1]);
        let mut out = BytesMut::new();
        let err = Frame::Particle(over).encode(&mut out).unwrap_err();
        assert!(matches!(err, WireError::OverBound { .. }), "{err}");
        assert!(out.is_empty());
    }

    #[test]
    fn an_announce_with_releases_on_their_way_still_reads_as_a_release_list() {
        let a = Announce {
            held: vec![sample_release()],
            coming: vec![Release {
                version: 4,
                ..sample_release()
            }],
        };
        let mut out = BytesMut::new();
        Frame::Announce(a.clone()).encode(&mut out).unwrap();
        assert_eq!(out[0], KIND_ANNOUNCE);
        // What a node older than relaying decodes: every entry a release.
        let old: Vec<Release> = serde_json::from_slice(&out[1..]).unwrap();
        assert_eq!(old, [a.held.clone(), a.coming.clone()].concat());
        // And an older node's list reads as held releases.
        let mut body = vec![KIND_ANNOUNCE];
        body.extend(serde_json::to_vec(&vec![sample_release()]).unwrap());
        let decoded = Frame::decode(Bytes::from(body)).unwrap();
        assert_eq!(
            decoded,
            Frame::Announce(Announce::held(vec![sample_release()]))
        );
    }
}
