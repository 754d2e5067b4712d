//! Trusted links: every connection between members (ring links, module
//! fetches, the status reports members gather) is mutually authenticated
//! and encrypted when the node holds cluster keys ([`keys`]); the secure
//! channel ([`channel`]) sits under the frame layer, so `wire` and the
//! protocols above it see the same frames either way.
//!
//! Without cluster keys a node speaks plain frames and binds loopback only
//! unless `--insecure` (see `crate::config::NodeConfig::cluster_keys`).
//!
//! Why Noise with a pre-shared key and AES-GCM, measured on this project's
//! machine (2 cores), release build, `snow` 0.9: a handshake costs
//! 0.2–0.3 ms for both ends together; a 100-byte record sealed and opened
//! costs 0.35 µs with ring's AES-GCM against 4.0 µs with the pure-Rust
//! ChaCha20-Poly1305 (1 KiB: 0.67 µs vs 5.5 µs). A hop moves about two
//! small frames (the particle and its custody ack), so AES-GCM keeps the
//! cost per lap within a few percent (`cargo bench --bench lap`, the
//! "sealed" row). Mutual TLS would bring a certificate authority to run
//! and certificates to renew for the same guarantee; one shared secret per
//! ring is what the operator already manages for the deploy signing key.

pub mod channel;
pub mod keys;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub use channel::AuthError;
use channel::{FirstBytes, SealedRead, SealedWrite, Session};
pub use keys::{ClusterKey, ClusterKeys, KeyId, KeySet};

/// The reading half of a member link, plain or sealed.
pub enum LinkRead {
    /// Plain frames; `prefix` is what was read to tell it from a handshake.
    Plain {
        /// Bytes read before the stream (served first).
        prefix: Bytes,
        /// The socket.
        io: OwnedReadHalf,
    },
    /// Sealed records.
    Sealed(SealedRead<OwnedReadHalf>),
}

/// The writing half of a member link, plain or sealed.
pub enum LinkWrite {
    /// Plain frames.
    Plain(OwnedWriteHalf),
    /// Sealed records.
    Sealed(SealedWrite<OwnedWriteHalf>),
}

impl LinkWrite {
    /// Whether the link is sealed.
    pub fn is_sealed(&self) -> bool {
        matches!(self, Self::Sealed(_))
    }
}

impl AsyncRead for LinkRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain { prefix, io } => {
                if prefix.is_empty() {
                    Pin::new(io).poll_read(cx, buf)
                } else {
                    let n = prefix.len().min(buf.remaining());
                    buf.put_slice(&prefix[..n]);
                    prefix.advance(n);
                    Poll::Ready(Ok(()))
                }
            }
            Self::Sealed(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LinkWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_write(cx, buf),
            Self::Sealed(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_flush(cx),
            Self::Sealed(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_shutdown(cx),
            Self::Sealed(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

fn sealed(stream: TcpStream, session: &Arc<Session>) -> (LinkRead, LinkWrite) {
    let (r, w) = stream.into_split();
    (
        LinkRead::Sealed(SealedRead::new(r, session.clone())),
        LinkWrite::Sealed(SealedWrite::new(w, session.clone())),
    )
}

/// The dialer's side of a member link on a connected `stream`: the
/// handshake with `keys`' primary key when there are keys, plain halves
/// otherwise. The caller bounds it in time.
///
/// # Errors
/// [`AuthError`] when the handshake fails.
pub async fn dialed(
    mut stream: TcpStream,
    keys: Option<&ClusterKeys>,
) -> Result<(LinkRead, LinkWrite), AuthError> {
    let _ = stream.set_nodelay(true);
    match keys {
        None => {
            let (r, w) = stream.into_split();
            Ok((
                LinkRead::Plain {
                    prefix: Bytes::new(),
                    io: r,
                },
                LinkWrite::Plain(w),
            ))
        }
        Some(keys) => {
            let session = channel::initiate(&mut stream, &keys.get()).await?;
            Ok(sealed(stream, &session))
        }
    }
}

/// Connects to a member at `addr` and makes the link ([`dialed`]).
///
/// # Errors
/// A connect error, or an [`AuthError`] (as an `anyhow` error naming
/// `addr`).
pub async fn connect(
    addr: &str,
    keys: Option<&ClusterKeys>,
) -> anyhow::Result<(LinkRead, LinkWrite)> {
    use anyhow::Context as _;
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    dialed(stream, keys)
        .await
        .map_err(|e| anyhow::anyhow!("peer {addr} failed authentication: {e}"))
}

/// The listener's side of a member link on an accepted `stream`: with
/// keys, the dialer must make the handshake with one of them; without, it
/// must speak plain frames. The caller bounds it in time.
///
/// Each refused dialer is told, so both logs say why: a dialer with keys
/// gets the "no key here" verdict; a plain one gets `plain_refusal`, bytes
/// the caller made (its protocol's refusal: this layer knows no frames).
///
/// # Errors
/// [`AuthError`] naming what the dialer did.
pub async fn accepted(
    mut stream: TcpStream,
    keys: Option<&ClusterKeys>,
    plain_refusal: &[u8],
) -> Result<(LinkRead, LinkWrite), AuthError> {
    use tokio::io::AsyncWriteExt;
    let first = channel::first_bytes(&mut stream).await?;
    match (first, keys) {
        (FirstBytes::Handshake, Some(keys)) => {
            let session = channel::respond(&mut stream, &keys.get()).await?;
            Ok(sealed(stream, &session))
        }
        (FirstBytes::Handshake, None) => {
            let mut verdict = channel::MAGIC.to_vec();
            verdict.push(channel::VERDICT_NO_KEY);
            let _ = stream.write_all(&verdict).await;
            Err(AuthError::WeHaveNoKey)
        }
        (FirstBytes::Plain(b), Some(_)) if b.is_empty() => Err(AuthError::Left),
        (FirstBytes::Plain(_), Some(_)) => {
            let _ = stream.write_all(plain_refusal).await;
            Err(AuthError::NoHandshake)
        }
        (FirstBytes::Plain(prefix), None) => {
            let (r, w) = stream.into_split();
            Ok((
                LinkRead::Plain {
                    prefix: Bytes::from(prefix),
                    io: r,
                },
                LinkWrite::Plain(w),
            ))
        }
    }
}

/// Whether `addr` (`host:port`) names a loopback address only
/// (`127.0.0.0/8`, `::1`, `localhost`); `0.0.0.0` and other names are not.
pub fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// For a node without cluster keys: moves the ring address `ring` and the
/// admin address `admin` to loopback (same port) unless `insecure`, and
/// warns once saying what it did and how to listen beyond loopback.
pub fn loopback_only(ring: &mut String, admin: Option<&mut String>, insecure: bool) {
    if insecure {
        tracing::warn!(
            ring = %ring,
            "--insecure: ring links are plain and unauthenticated; anyone who reaches the ring \
             port can speak the ring protocol"
        );
        return;
    }
    let mut moved = Vec::new();
    let mut to_loopback = |addr: &mut String| {
        if is_loopback(addr) {
            return;
        }
        let port = addr.rsplit_once(':').map_or("0", |(_, p)| p).to_string();
        let was = std::mem::replace(addr, format!("127.0.0.1:{port}"));
        moved.push(format!("{was} -> {addr}"));
    };
    to_loopback(ring);
    if let Some(a) = admin {
        to_loopback(a);
    }
    if moved.is_empty() {
        tracing::warn!(
            "ring links are not authenticated (no --cluster-key-file): listening on loopback \
             only; make a key with `ringhost keygen --cluster` and give every member \
             --cluster-key-file"
        );
    } else {
        tracing::warn!(
            moved = %moved.join(", "),
            "no --cluster-key-file: listening on loopback only instead of beyond it; give every \
             member the same --cluster-key-file (`ringhost keygen --cluster`), or --insecure to \
             listen beyond loopback with plain links"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn keys(bytes: &[u8]) -> ClusterKeys {
        ClusterKeys::fixed(
            KeySet::new(bytes.iter().map(|b| ClusterKey([*b; 32])).collect()).unwrap(),
        )
    }

    /// A listener on port 0 with `server`'s keys; `dial` runs the dialer
    /// with `client`'s. Both sides' results.
    async fn link(
        server: Option<ClusterKeys>,
        client: Option<ClusterKeys>,
    ) -> (
        Result<(LinkRead, LinkWrite), AuthError>,
        anyhow::Result<(LinkRead, LinkWrite)>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accept = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            accepted(s, server.as_ref(), b"").await
        });
        let dial = connect(&addr, client.as_ref()).await;
        (accept.await.unwrap(), dial)
    }

    #[test]
    fn without_keys_only_loopback_addresses_are_kept() {
        assert!(is_loopback("127.0.0.1:3000") && is_loopback("127.9.9.9:1"));
        assert!(is_loopback("[::1]:3000") && is_loopback("localhost:3000"));
        assert!(!is_loopback("0.0.0.0:3000") && !is_loopback("10.0.0.7:3000"));
        assert!(!is_loopback("node7.example:3000"));
        let (mut ring, mut admin) = ("10.0.0.7:3000".to_string(), "0.0.0.0:4000".to_string());
        loopback_only(&mut ring, Some(&mut admin), false);
        assert_eq!(
            (ring.as_str(), admin.as_str()),
            ("127.0.0.1:3000", "127.0.0.1:4000")
        );
        let mut ring = "10.0.0.7:3000".to_string();
        loopback_only(&mut ring, None, true);
        assert_eq!(ring, "10.0.0.7:3000", "--insecure keeps it");
    }

    #[tokio::test]
    async fn a_sealed_link_carries_a_stream_both_ways_in_records() {
        let (srv, cli) = link(Some(keys(&[1])), Some(keys(&[1]))).await;
        let (mut sr, mut sw) = srv.unwrap();
        let (mut cr, mut cw) = cli.unwrap();
        assert!(sw.is_sealed() && cw.is_sealed());
        // More than one record (65 519 bytes each), and small writes.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            cw.write_all(&sent).await.unwrap();
            cw.write_all(b"end").await.unwrap();
            cw.flush().await.unwrap();
            cw
        });
        let mut got = vec![0u8; big.len() + 3];
        sr.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..big.len()], &big[..]);
        assert_eq!(&got[big.len()..], b"end");
        sw.write_all(b"back").await.unwrap();
        sw.flush().await.unwrap();
        let mut back = [0u8; 4];
        cr.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        // A clean end reads as the end of the stream.
        let mut cw = writer.await.unwrap();
        cw.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(sr.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_peer_with_another_key_is_refused_and_both_sides_say_why() {
        let (srv, cli) = link(Some(keys(&[1])), Some(keys(&[2]))).await;
        let srv = srv.err().expect("refused").to_string();
        assert!(
            srv.contains("uses cluster key") && srv.contains("holds"),
            "{srv}"
        );
        let cli = format!("{:#}", cli.err().expect("refused"));
        assert!(
            cli.contains("failed authentication") && cli.contains("does not hold our"),
            "{cli}"
        );
    }

    #[tokio::test]
    async fn plain_and_sealed_peers_refuse_each_other_by_name() {
        // A plain dialer (a frame's length first) to a keyed listener.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(&[0, 0, 0, 1, 7]).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let e = accepted(s, Some(&keys(&[1])), b"")
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, AuthError::NoHandshake), "{e}");
        assert!(e.to_string().contains("--cluster-key-file"), "{e}");
        // A port probe (connects, sends nothing, leaves) is not a failure.
        drop(TcpStream::connect(addr).await.unwrap());
        let (s, _) = l.accept().await.unwrap();
        let e = accepted(s, Some(&keys(&[1])), b"")
            .await
            .err()
            .expect("nothing");
        assert!(matches!(e, AuthError::Left), "{e}");
        // A keyed dialer to a plain listener.
        let (srv, cli) = link(None, Some(keys(&[1]))).await;
        assert!(
            matches!(srv, Err(AuthError::WeHaveNoKey)),
            "{:?}",
            srv.err()
        );
        assert!(cli.is_err());
    }

    #[tokio::test]
    async fn a_listener_holding_two_keys_takes_either_and_a_dialer_uses_its_first() {
        let (srv, cli) = link(Some(keys(&[1, 2])), Some(keys(&[2]))).await;
        assert!(srv.is_ok() && cli.is_ok());
        let (srv, cli) = link(Some(keys(&[2, 1])), Some(keys(&[1, 2]))).await;
        assert!(srv.is_ok() && cli.is_ok());
    }

    /// A dialer's bytes (handshake and first record) recorded by a relay
    /// in the middle and replayed later: the handshake gets an answer, but
    /// the record cannot open, so nothing the replayer sends is read.
    #[tokio::test]
    async fn a_replayed_handshake_gets_no_frame_through() {
        let k = keys(&[5]);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let real = l.local_addr().unwrap();
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        // The relay: dialer -> listener bytes recorded, both ways relayed.
        let recorder = tokio::spawn(async move {
            let (mut from, _) = relay.accept().await.unwrap();
            let mut to = TcpStream::connect(real).await.unwrap();
            let (mut fr, mut fw) = from.split();
            let (mut tr, mut tw) = to.split();
            let mut recorded = Vec::new();
            let up = async {
                let mut buf = [0u8; 4096];
                loop {
                    let n = fr.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    recorded.extend_from_slice(&buf[..n]);
                    tw.write_all(&buf[..n]).await.unwrap();
                }
                let _ = tw.shutdown().await;
            };
            let down = tokio::io::copy(&mut tr, &mut fw);
            let _ = tokio::join!(up, down);
            recorded
        });
        let honest = {
            let k = k.clone();
            tokio::spawn(async move {
                let s = TcpStream::connect(relay_addr).await.unwrap();
                let (_r, mut w) = dialed(s, Some(&k)).await.unwrap();
                w.write_all(b"hello").await.unwrap();
                w.shutdown().await.unwrap();
            })
        };
        let (s, _) = l.accept().await.unwrap();
        let (mut r, w) = accepted(s, Some(&k), b"").await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        honest.await.unwrap();
        drop((r, w));
        let recorded = recorder.await.unwrap();
        assert!(recorded.len() > 14 + 5, "recorded {} bytes", recorded.len());

        // Replayed to the listener.
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (mut r, _w) = accepted(s, Some(&k), b"").await.unwrap();
            let mut buf = [0u8; 64];
            r.read(&mut buf).await
        });
        let mut replay = TcpStream::connect(real).await.unwrap();
        replay.write_all(&recorded).await.unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the listener reads the replayed record")
            .unwrap();
        let e = read.expect_err("a replayed record must not open");
        assert!(e.to_string().contains("did not open"), "{e}");
    }

    /// Seeded random and mutated bytes where a listener expects the
    /// handshake, and where a reader expects sealed records: every one
    /// ends in a clean error (or the end of the stream), never a panic or
    /// a hang. (A cheap, always-run cousin of the fuzz targets.)
    #[tokio::test]
    async fn random_handshakes_and_records_end_in_clean_errors() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let held = keys(&[3]).get();
        // A real dialer's first bytes, to mutate.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let dialer = {
            let held = held.clone();
            tokio::spawn(async move { channel::initiate(&mut a, &held).await.map(|_| ()) })
        };
        let mut honest = vec![0u8; 4 + 8 + 2 + 48];
        b.read_exact(&mut honest).await.unwrap();
        drop(b);
        let _ = dialer.await;
        for round in 0..2000 {
            let mut bytes = if round % 2 == 0 {
                honest.clone()
            } else {
                let n = rng.random_range(0..120);
                let mut v = channel::MAGIC.to_vec();
                v.extend((0..n).map(|_| rng.random::<u8>()));
                v
            };
            let flips = rng.random_range(1..4);
            for _ in 0..flips {
                let at = rng.random_range(4..bytes.len().max(5));
                if at < bytes.len() {
                    bytes[at] ^= 1 << rng.random_range(0..8);
                }
            }
            let (mut near, mut far) = tokio::io::duplex(1 << 16);
            far.write_all(&bytes).await.unwrap();
            drop(far);
            let got = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                channel::first_bytes(&mut near).await.unwrap();
                channel::respond(&mut near, &held).await
            })
            .await
            .expect("a handshake from bytes that end never hangs");
            assert!(got.is_err(), "round {round}: {bytes:?} made a link");
        }
        // Records: a real session's reader fed random or mutated records.
        for round in 0..2000 {
            let (mut d, mut l) = tokio::io::duplex(1 << 16);
            let held2 = held.clone();
            let (ds, ls) = tokio::join!(channel::initiate(&mut d, &held2), async {
                channel::first_bytes(&mut l).await.unwrap();
                channel::respond(&mut l, &held2).await
            });
            let (ds, ls) = (ds.unwrap(), ls.unwrap());
            let mut sealed = Vec::new();
            {
                let mut w = SealedWrite::new(&mut sealed, ds);
                w.write_all(b"a frame's worth of bytes").await.unwrap();
                w.flush().await.unwrap();
            }
            if round % 2 == 0 {
                let at = rng.random_range(0..sealed.len());
                sealed[at] ^= 1 << rng.random_range(0..8);
            } else {
                let n = rng.random_range(0..64);
                sealed = (0..n).map(|_| rng.random::<u8>()).collect();
            }
            let mut r = SealedRead::new(&sealed[..], ls);
            let mut out = Vec::new();
            let read = r.read_to_end(&mut out).await;
            assert!(
                read.is_err() || out.is_empty(),
                "round {round}: changed bytes opened as {out:?}"
            );
        }
    }
}
