//! Cut-through: a module on its way here is served onwards as its bytes
//! arrive, and fetch connections are kept warm for the next fetch.
//!
//! - [`Inflight`]: the one copy of a module being fetched here (at most
//!   the release's size, itself at most the module bound). The fetch task
//!   is its only writer; any number of streams to successors read it. Its
//!   [`Progress`] says how far it got, and ends as `Done` only after this
//!   node checked the whole module's hash: a stream ends cleanly (empty
//!   chunk) only then, and is cut when the fetch fails or the bytes do not
//!   check, so nothing unchecked is ever taken as a module downstream.
//! - [`serve_stream`]: writes an inflight module to a requester as chunk
//!   frames, waiting (bounded) for the bytes still to come.
//! - [`Pool`]: idle fetch connections per address, reused by the next
//!   fetch (no TCP connect and cluster handshake per hop and release).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::sync::watch;

use crate::secure::{LinkRead, LinkWrite};
use crate::wire::{Frame, FrameReader, FrameWriter};

/// Largest chunk frame of a streamed module, in bytes: what a hop holds
/// back before passing bytes on (16 KiB: 1.3 ms at 100 Mbit/s).
pub const CHUNK_BYTES: usize = 16 * 1024;

/// How long a stream may wait for the next bytes from this node's own
/// source before it is cut.
pub const STREAM_STALL: Duration = Duration::from_secs(10);

/// How long an idle fetch connection is kept for reuse (the server keeps
/// its side open longer: [`IDLE_SERVED`]).
pub const IDLE_KEPT: Duration = Duration::from_secs(30);

/// How long the ring port keeps a fetch connection open for the next
/// request after answering one.
pub const IDLE_SERVED: Duration = Duration::from_secs(45);

/// How far the fetch of an inflight module got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// This many bytes are here, not yet checked.
    Receiving(usize),
    /// The whole module is here and its hash checked.
    Done,
    /// The fetch failed or the module did not check: streams are cut.
    Failed,
}

/// A module being fetched here, readable while it arrives.
pub struct Inflight {
    size: usize,
    data: Mutex<Vec<u8>>,
    progress: watch::Sender<Progress>,
}

impl Inflight {
    /// An empty inflight module of `size` bytes (the release's size).
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            size,
            data: Mutex::new(Vec::new()),
            progress: watch::Sender::new(Progress::Receiving(0)),
        })
    }

    /// A module held here (its hash checked), served as a stream.
    pub fn complete(module: &[u8]) -> Arc<Self> {
        let this = Self::new(module.len());
        this.lock().extend_from_slice(module);
        this.progress.send_replace(Progress::Done);
        this
    }

    /// The module's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes here so far.
    pub fn received(&self) -> usize {
        self.lock().len()
    }

    /// Where it stands.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Appends bytes as they arrive.
    ///
    /// # Errors
    /// When they would make it longer than its size (nothing is appended).
    pub fn append(&self, bytes: &[u8]) -> Result<()> {
        let len = {
            let mut data = self.lock();
            if data.len() + bytes.len() > self.size {
                bail!("stream longer than the release's {} bytes", self.size);
            }
            if data.capacity() == 0 {
                data.reserve_exact(self.size);
            }
            data.extend_from_slice(bytes);
            data.len()
        };
        self.progress.send_replace(Progress::Receiving(len));
        Ok(())
    }

    /// The whole module (rebuilt from a delta) arrived at once: it
    /// replaces what is here, when nothing was streamed yet.
    pub fn fill(&self, module: &[u8]) {
        let mut data = self.lock();
        if data.is_empty() && module.len() == self.size {
            data.extend_from_slice(module);
        }
    }

    /// The whole module is here and its hash checked.
    pub fn done(&self) {
        self.progress.send_replace(Progress::Done);
    }

    /// The fetch failed: streams reading it are cut.
    pub fn fail(&self) {
        self.progress.send_replace(Progress::Failed);
    }

    /// Bytes from `from`, at most `max` of them.
    pub fn read(&self, from: usize, max: usize) -> Bytes {
        let data = self.lock();
        let end = data.len().min(from.saturating_add(max));
        Bytes::copy_from_slice(data.get(from..end).unwrap_or_default())
    }

    /// Waits (at most `limit`) until the module is done or failed; the
    /// whole module when done.
    pub async fn finished(&self, limit: Duration) -> Option<Bytes> {
        let mut rx = self.progress.subscribe();
        let ended = rx.wait_for(|p| !matches!(p, Progress::Receiving(_)));
        let end = tokio::time::timeout(limit, ended).await;
        match end {
            Ok(Ok(p)) if *p == Progress::Done => Some(self.read(0, self.size)),
            _ => None,
        }
    }

    fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes `module` to `writer` as chunk frames while it arrives here, then
/// the empty chunk that ends the stream once it is done (checked here).
/// Each frame write is bounded by `write_limit`.
///
/// # Errors
/// When this node's fetch fails (the stream is cut: the requester
/// discards what it got), stalls for [`STREAM_STALL`], or the write fails.
pub async fn serve_stream<W: AsyncWrite + Unpin>(
    module: &Inflight,
    writer: &mut FrameWriter<W>,
    write_limit: Duration,
) -> Result<()> {
    let mut rx = module.subscribe();
    let mut sent = 0;
    loop {
        let progress = *rx.borrow_and_update();
        if progress == Progress::Failed {
            bail!("this node's own fetch of the module failed");
        }
        loop {
            let chunk = module.read(sent, CHUNK_BYTES);
            if chunk.is_empty() {
                break;
            }
            sent += chunk.len();
            write(writer, &Frame::Chunk(chunk), write_limit).await?;
        }
        if progress == Progress::Done {
            if sent == module.size() {
                return write(writer, &Frame::Chunk(Bytes::new()), write_limit).await;
            }
            if module.received() == sent {
                bail!("the module ended after {sent} of {} bytes", module.size());
            }
            continue; // the last bytes came with the news
        }
        match tokio::time::timeout(STREAM_STALL, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("this node's fetch of the module ended"),
            Err(_) => bail!("no bytes from this node's own source for {STREAM_STALL:?}"),
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    frame: &Frame,
    limit: Duration,
) -> Result<()> {
    match tokio::time::timeout(limit, writer.write_frame(frame)).await {
        Ok(r) => Ok(r?),
        Err(_) => bail!("writing to the requester took over {limit:?}"),
    }
}

/// An open fetch connection (sealed when the ring has cluster keys).
pub struct Conn {
    /// Its reading half.
    pub reader: FrameReader<LinkRead>,
    /// Its writing half.
    pub writer: FrameWriter<LinkWrite>,
}

/// Idle fetch connections by peer address, for the next fetch to reuse.
/// Fetch tasks take one out (nobody else uses it meanwhile) and put it
/// back after a clean exchange; one per address is kept.
#[derive(Clone, Default)]
pub struct Pool {
    idle: Arc<Mutex<HashMap<String, (Instant, Conn)>>>,
}

impl Pool {
    /// An idle connection to `addr`, if one was kept less than
    /// [`IDLE_KEPT`] ago.
    pub fn take(&self, addr: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let (since, conn) = idle.remove(addr)?;
        (since.elapsed() < IDLE_KEPT).then_some(conn)
    }

    /// Keeps `conn` to `addr` for the next fetch (replacing an older one).
    pub fn put(&self, addr: &str, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, (since, _)| since.elapsed() < IDLE_KEPT);
        idle.insert(addr.to_string(), (Instant::now(), conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_carries_bytes_as_they_arrive_and_ends_only_once_checked() {
        let module = Inflight::new(10);
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut writer = FrameWriter::new(a, 1 << 20);
        let mut reader = FrameReader::new(b, 1 << 20);
        let served = {
            let module = Arc::clone(&module);
            tokio::spawn(
                async move { serve_stream(&module, &mut writer, Duration::from_secs(1)).await },
            )
        };
        module.append(b"01234").unwrap();
        let first = reader.read_frame().await.unwrap();
        assert_eq!(first, Some(Frame::Chunk(Bytes::from_static(b"01234"))));
        module.append(b"56789").unwrap();
        let second = reader.read_frame().await.unwrap();
        assert_eq!(second, Some(Frame::Chunk(Bytes::from_static(b"56789"))));
        assert!(module.append(b"x").is_err(), "longer than its size");
        module.done();
        assert_eq!(
            reader.read_frame().await.unwrap(),
            Some(Frame::Chunk(Bytes::new()))
        );
        served.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_failed_fetch_cuts_the_stream_without_its_end() {
        let module = Inflight::new(10);
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut writer = FrameWriter::new(a, 1 << 20);
        let mut reader = FrameReader::new(b, 1 << 20);
        module.append(b"012").unwrap();
        let served = {
            let module = Arc::clone(&module);
            tokio::spawn(async move {
                let r = serve_stream(&module, &mut writer, Duration::from_secs(1)).await;
                drop(writer);
                r
            })
        };
        assert_eq!(
            reader.read_frame().await.unwrap(),
            Some(Frame::Chunk(Bytes::from_static(b"012")))
        );
        module.fail();
        assert!(served.await.unwrap().is_err());
        assert_eq!(reader.read_frame().await.unwrap(), None, "no end chunk");
        assert_eq!(module.finished(Duration::from_millis(10)).await, None);
    }
}
