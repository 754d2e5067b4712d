//! The secure channel under the frame layer: a Noise handshake keyed by the
//! cluster key, then sealed records both ways. `wire` still sees a byte
//! stream and frames; this module sees records and never frames.
//!
//! # On the wire
//! ```text
//! dialer   → MAGIC "RHN\x01" ‖ key id (8) ‖ len (u16 BE) ‖ Noise message 1 (-> psk, e)
//! listener → MAGIC ‖ verdict (1) ‖ [verdict 0: len (u16 BE) ‖ Noise message 2 (<- e, ee)]
//! then, each way: records, len (u16 BE) ‖ AES-256-GCM ciphertext of at
//! most 65 519 bytes of stream and its 16-byte tag (len ≤ 65 535).
//! ```
//! The pattern is `Noise_NNpsk0_25519_AESGCM_SHA256` (Noise rev. 34,
//! §9.4): both ends prove they hold the cluster key (message 1's tag is
//! keyed by it, message 2's too), the ephemeral Diffie-Hellman gives each
//! link keys of its own (forward secrecy). The key id and the magic are the
//! Noise prologue, so a changed id fails the handshake. A replayed message
//! 1 gets a message 2, but the replayer lacks the ephemeral secret, so its
//! first record fails to open: nothing it sends is ever acted on. A
//! verdict other than 0 is unauthenticated (a man in the middle could
//! forge it, as it could cut the link): it only words the dialer's error.
//!
//! Nonces are the record counts of each direction (64 bits, never
//! wrapping in a link's life); a record that fails to open ends the link.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::keys::{KeyId, KeySet};

/// The first bytes of a dialer's handshake and of the listener's answer.
pub const MAGIC: [u8; 4] = *b"RHN\x01";

/// The Noise protocol name (see the module docs for why).
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// Bytes of a record's ciphertext at most (Noise's message limit).
pub const MAX_RECORD: usize = 65_535;

/// AEAD tag bytes per record.
const TAG: usize = 16;

/// Stream bytes one record carries at most.
pub const MAX_PLAIN: usize = MAX_RECORD - TAG;

/// A handshake message's bytes at most (message 1 and 2 are 48 bytes).
const MAX_HANDSHAKE_MSG: usize = 1024;

/// The listener's verdicts.
const VERDICT_OK: u8 = 0;
const VERDICT_UNKNOWN_KEY: u8 = 1;
const VERDICT_FAILED: u8 = 2;
/// Sent by a listener without cluster keys to a dialer that has some.
pub(crate) const VERDICT_NO_KEY: u8 = 3;

/// Why a handshake did not make a channel. Each says what the peer did,
/// for the log line "peer … failed authentication: …".
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The peer sent something other than the cluster handshake.
    #[error(
        "it sent no cluster handshake (a node started without --cluster-key-file, an older \
         ringhost, or not a ringhost member)"
    )]
    NoHandshake,
    /// The peer closed without sending a byte (a port probe).
    #[error("it closed without sending anything")]
    Left,
    /// The peer offers the handshake, but this node has no cluster key.
    #[error(
        "it offers the cluster handshake, but this node has no cluster key \
         (start it with --cluster-key-file)"
    )]
    WeHaveNoKey,
    /// The dialer named a key this node does not hold.
    #[error("it uses cluster key {theirs}, and this node holds {ours}")]
    UnknownKey {
        /// The id the dialer sent.
        theirs: KeyId,
        /// The ids this node holds.
        ours: String,
    },
    /// The listener has no cluster key at all.
    #[error(
        "it has no cluster key (a node started without --cluster-key-file): give it the ring's \
         key file"
    )]
    TheyHaveNoKey,
    /// The listener does not hold the key this node dialed with.
    #[error("it does not hold our cluster key {0} (it holds another; see its log)")]
    TheyLackOurKey(KeyId),
    /// A Noise message did not verify: the peer does not hold the key it
    /// named, or the message was changed on the way.
    #[error("the handshake did not verify with cluster key {0} (a different key, or tampered)")]
    Rejected(KeyId),
    /// Malformed handshake bytes.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The connection failed or closed during the handshake.
    #[error("connection failed during the handshake: {0}")]
    Io(#[from] io::Error),
}

fn builder(prologue: &[u8]) -> Result<snow::Builder<'_>, AuthError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| AuthError::Malformed(format!("noise params: {e}")))?;
    Ok(snow::Builder::new(params).prologue(prologue))
}

fn prologue(id: KeyId) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&MAGIC);
    p[4..].copy_from_slice(&id.0);
    p
}

fn noise_err(id: KeyId) -> impl Fn(snow::Error) -> AuthError {
    move |_| AuthError::Rejected(id)
}

/// Dials: runs the dialer's side of the handshake on `io` with `keys`'
/// primary key. The caller bounds it in time.
///
/// # Errors
/// [`AuthError`] naming what went wrong.
pub async fn initiate<S>(io: &mut S, keys: &KeySet) -> Result<Arc<Session>, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = keys.primary();
    let id = key.id();
    let pro = prologue(id);
    let mut hs = builder(&pro)?
        .psk(0, &key.0)
        .build_initiator()
        .map_err(noise_err(id))?;
    let mut msg = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs.write_message(&[], &mut msg).map_err(noise_err(id))?;
    let mut out = Vec::with_capacity(14 + n);
    out.extend_from_slice(&pro);
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&msg[..n]);
    io.write_all(&out).await?;
    io.flush().await?;

    let mut head = [0u8; 5];
    io.read_exact(&mut head).await?;
    if head[..4] != MAGIC {
        return Err(AuthError::NoHandshake);
    }
    match head[4] {
        VERDICT_OK => {}
        VERDICT_UNKNOWN_KEY => return Err(AuthError::TheyLackOurKey(id)),
        VERDICT_FAILED => return Err(AuthError::Rejected(id)),
        VERDICT_NO_KEY => return Err(AuthError::TheyHaveNoKey),
        v => return Err(AuthError::Malformed(format!("verdict {v}"))),
    }
    let reply = read_handshake_msg(io).await?;
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    hs.read_message(&reply, &mut payload)
        .map_err(noise_err(id))?;
    let t = hs.into_stateless_transport_mode().map_err(noise_err(id))?;
    Ok(Session::new(t, id))
}

/// What a listener read first on a connection.
pub enum FirstBytes {
    /// The cluster handshake's magic: call [`respond`].
    Handshake,
    /// Anything else: these bytes (up to 4), the start of a plain stream.
    Plain(Vec<u8>),
}

/// Reads the first 4 bytes a dialer sent (fewer when it closes first).
///
/// # Errors
/// When the connection fails.
pub async fn first_bytes<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<FirstBytes> {
    let mut got = Vec::with_capacity(4);
    let mut buf = [0u8; 4];
    while got.len() < 4 {
        let n = io.read(&mut buf[..4 - got.len()]).await?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(if got == MAGIC {
        FirstBytes::Handshake
    } else {
        FirstBytes::Plain(got)
    })
}

/// Listens: runs the listener's side of the handshake on `io`, whose
/// magic [`first_bytes`] read, with any of `keys`. The caller bounds it in
/// time.
///
/// # Errors
/// [`AuthError`] naming what the dialer did wrong (it is told a verdict
/// first, when that helps its operator).
pub async fn respond<S>(io: &mut S, keys: &KeySet) -> Result<Arc<Session>, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut raw_id = [0u8; 8];
    io.read_exact(&mut raw_id).await?;
    let id = KeyId(raw_id);
    let msg = read_handshake_msg(io).await?;
    let refuse = |verdict: u8| {
        let mut v = [0u8; 5];
        v[..4].copy_from_slice(&MAGIC);
        v[4] = verdict;
        v
    };
    let Some(key) = keys.find(id) else {
        let _ = io.write_all(&refuse(VERDICT_UNKNOWN_KEY)).await;
        let ours = keys
            .ids()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(AuthError::UnknownKey { theirs: id, ours });
    };
    let pro = prologue(id);
    let mut hs = builder(&pro)?
        .psk(0, &key.0)
        .build_responder()
        .map_err(noise_err(id))?;
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    if hs.read_message(&msg, &mut payload).is_err() {
        let _ = io.write_all(&refuse(VERDICT_FAILED)).await;
        return Err(AuthError::Rejected(id));
    }
    let mut reply = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs.write_message(&[], &mut reply).map_err(noise_err(id))?;
    let mut out = Vec::with_capacity(7 + n);
    out.extend_from_slice(&refuse(VERDICT_OK));
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&reply[..n]);
    io.write_all(&out).await?;
    io.flush().await?;
    let t = hs.into_stateless_transport_mode().map_err(noise_err(id))?;
    Ok(Session::new(t, id))
}

async fn read_handshake_msg<S: AsyncRead + Unpin>(io: &mut S) -> Result<Vec<u8>, AuthError> {
    let mut len = [0u8; 2];
    io.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > MAX_HANDSHAKE_MSG {
        return Err(AuthError::Malformed(format!(
            "a handshake message of {len} bytes (1..={MAX_HANDSHAKE_MSG})"
        )));
    }
    let mut msg = vec![0u8; len];
    io.read_exact(&mut msg).await?;
    Ok(msg)
}

/// One link's keys after the handshake, shared by its two halves (each
/// keeps its own nonce).
pub struct Session {
    transport: StatelessTransportState,
    id: KeyId,
}

impl Session {
    fn new(transport: StatelessTransportState, id: KeyId) -> Arc<Self> {
        Arc::new(Self { transport, id })
    }

    /// The cluster key the link was made with.
    pub fn key_id(&self) -> KeyId {
        self.id
    }
}

/// The reading half of a secure channel: an [`AsyncRead`] of the stream
/// the peer's records carry.
pub struct SealedRead<R> {
    io: R,
    session: Arc<Session>,
    nonce: u64,
    /// Raw bytes read, not yet a whole record.
    raw: BytesMut,
    /// Opened bytes not yet read.
    plain: BytesMut,
}

impl<R> SealedRead<R> {
    /// Reads records from `io`; `leftover` is what the handshake read past
    /// its end (nothing, with the handshake above).
    pub fn new(io: R, session: Arc<Session>) -> Self {
        Self {
            io,
            session,
            nonce: 0,
            raw: BytesMut::with_capacity(8 << 10),
            plain: BytesMut::new(),
        }
    }

    /// Opens the record at the head of `raw`, if a whole one is there.
    fn open_one(&mut self) -> io::Result<bool> {
        if self.raw.len() < 2 {
            return Ok(false);
        }
        let len = usize::from(u16::from_be_bytes([self.raw[0], self.raw[1]]));
        if len < TAG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a sealed record of {len} bytes (at least {TAG})"),
            ));
        }
        if self.raw.len() < 2 + len {
            self.raw.reserve(2 + len - self.raw.len());
            return Ok(false);
        }
        let start = self.plain.len();
        self.plain.resize(start + len - TAG, 0);
        let n = self
            .session
            .transport
            .read_message(self.nonce, &self.raw[2..2 + len], &mut self.plain[start..])
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a sealed record did not open: changed on the way, replayed, or not from \
                     the peer that made the handshake",
                )
            })?;
        self.plain.truncate(start + n);
        self.nonce += 1;
        self.raw.advance(2 + len);
        Ok(true)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SealedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.open_one()? {
                continue;
            }
            // Read more raw bytes into the spare capacity.
            if this.raw.capacity() - this.raw.len() < 4096 {
                this.raw.reserve(16 << 10);
            }
            let start = this.raw.len();
            let cap = this.raw.capacity();
            this.raw.resize(cap, 0);
            let mut rb = ReadBuf::new(&mut this.raw[start..]);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.raw.truncate(start + n);
            ready!(polled)?;
            if n == 0 {
                return if this.raw.is_empty() {
                    Poll::Ready(Ok(())) // a clean end between records
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed inside a sealed record",
                    )))
                };
            }
        }
    }
}

/// The writing half of a secure channel: an [`AsyncWrite`] whose bytes go
/// out in sealed records (one per `write`, at most [`MAX_PLAIN`] bytes).
pub struct SealedWrite<W> {
    io: W,
    session: Arc<Session>,
    nonce: u64,
    /// Sealed bytes not yet written to `io`.
    out: BytesMut,
}

impl<W> SealedWrite<W> {
    /// Writes records to `io`.
    pub fn new(io: W, session: Arc<Session>) -> Self {
        Self {
            io,
            session,
            nonce: 0,
            out: BytesMut::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin> SealedWrite<W> {
    /// Writes out what is sealed and not yet written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SealedWrite<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = buf.len().min(MAX_PLAIN);
        this.out.resize(2 + take + TAG, 0);
        let n = this
            .session
            .transport
            .write_message(this.nonce, &buf[..take], &mut this.out[2..])
            .map_err(|e| io::Error::other(format!("sealing a record: {e}")))?;
        this.nonce += 1;
        let len = u16::try_from(n).map_err(|_| io::Error::other("record over 64 KiB"))?;
        this.out[..2].copy_from_slice(&len.to_be_bytes());
        this.out.truncate(2 + n);
        // Start writing at once; what is left goes out on flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
