//! The agent's network side: fetching a module from a peer (as a delta
//! against a module we have, when it can) and one request/reply exchange
//! with a node's ring port.

use super::*;
use crate::secure::{ClusterKeys, LinkRead};

impl Agent {
    /// Fetches `rel`'s module from `peer`; the answer comes back as
    /// [`DeployMsg::Fetched`]. The bytes land in the release's
    /// [`stream::Inflight`] as they arrive, so a successor asking meanwhile
    /// gets them streamed.
    ///
    /// # Errors
    /// When `peer` is not a member of the ring, or the release is bigger
    /// than the module bound.
    pub(super) fn start_fetch(&mut self, rel: Release, peer: usize) -> Result<(), FetchError> {
        let have_recorded = self
            .store
            .record(&rel.name)
            .map(|r| r.hashes())
            .unwrap_or_default();
        let mut have: Vec<Hash> = self.running.get(&rel.name).copied().into_iter().collect();
        have.extend(have_recorded);
        have.dedup();
        // Offer only bases we can patch.
        let bases: HashMap<Hash, Arc<Vec<u8>>> = have
            .iter()
            .filter_map(|h| self.store.module(h).map(|m| (*h, m)))
            .collect();
        have.retain(|h| bases.contains_key(h));
        let Some(addr) = self.config.ring.members().get(peer).map(|m| m.addr.clone()) else {
            return Err(FetchError {
                missing: false,
                message: format!("node {peer} is not a member of the ring"),
            });
        };
        let size = usize::try_from(rel.size).unwrap_or(usize::MAX);
        if size > MAX_MODULE_BYTES {
            return Err(FetchError {
                missing: false,
                message: format!(
                    "{} is {size} bytes, over the {MAX_MODULE_BYTES} byte module bound",
                    rel.label()
                ),
            });
        }
        let module = Arc::clone(
            self.inflight
                .entry(rel.hash)
                .or_insert_with(|| stream::Inflight::new(size)),
        );
        let max_frame = self.config.max_frame_bytes;
        let keys = self.config.cluster_keys.clone();
        let tx = self.tx.clone();
        let cache = self.deltas.clone();
        let pool = self.pool.clone();
        self.spawn_task(async move {
            let fetch = Fetch {
                addr: &addr,
                keys: keys.as_ref(),
                pool: &pool,
                max_frame,
            };
            let result = fetch
                .run(&rel, have, &bases, &cache, &module)
                .await
                .map_err(|e| FetchError {
                    missing: e.downcast_ref::<NotKept>().is_some(),
                    message: format!("fetching from {addr}: {e:#}"),
                });
            let _ = tx
                .send(DeployMsg::Fetched {
                    release: rel,
                    from: peer,
                    result,
                })
                .await;
        });
        Ok(())
    }
}

/// A peer's answer that it does not keep the module asked for.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotKept(String);

/// Bound on a whole fetch, streamed or not.
const FETCH_LIMIT: Duration = Duration::from_secs(60);

/// Bound on the wait for each frame of a streamed module.
const CHUNK_WAIT: Duration = Duration::from_secs(12);

/// One fetch from one peer.
struct Fetch<'a> {
    addr: &'a str,
    keys: Option<&'a ClusterKeys>,
    pool: &'a stream::Pool,
    max_frame: usize,
}

impl Fetch<'_> {
    /// Fetches `release`'s module, offering `have` as delta bases, into
    /// `module` (whole or streamed); rebuilds and checks it. Returns the
    /// module, how it came and the bytes that travelled.
    async fn run(
        &self,
        release: &Release,
        have: Vec<Hash>,
        bases: &HashMap<Hash, Arc<Vec<u8>>>,
        cache: &delta::Cache,
        module: &stream::Inflight,
    ) -> Result<(Arc<Vec<u8>>, Payload, usize)> {
        let req = Frame::Request(
            Request::Fetch {
                release: release.clone(),
                have,
                stream: true,
            },
            Bytes::new(),
        );
        tokio::time::timeout(
            FETCH_LIMIT,
            self.exchange(&req, release, bases, cache, module),
        )
        .await
        .map_err(|_| anyhow!("no whole answer from {} within {FETCH_LIMIT:?}", self.addr))?
    }

    async fn exchange(
        &self,
        req: &Frame,
        release: &Release,
        bases: &HashMap<Hash, Arc<Vec<u8>>>,
        cache: &delta::Cache,
        module: &stream::Inflight,
    ) -> Result<(Arc<Vec<u8>>, Payload, usize)> {
        // A kept connection first; one that fails before any answer (the
        // server closed it meanwhile, or an older one that serves a
        // single request per connection) gives way to a fresh one.
        let kept = match self.pool.take(self.addr) {
            Some(mut conn) => self.ask(&mut conn, req).await.ok().map(|a| (conn, a)),
            None => None,
        };
        let (mut conn, (reply, blob)) = match kept {
            Some(c) => c,
            None => {
                let connect = crate::secure::connect(self.addr, self.keys);
                let (r, w) = tokio::time::timeout(FETCH_TIMEOUT, connect)
                    .await
                    .map_err(|_| {
                        anyhow!("no connection to {} within {FETCH_TIMEOUT:?}", self.addr)
                    })??;
                let mut conn = stream::Conn {
                    reader: FrameReader::new(r, self.max_frame),
                    writer: FrameWriter::new(w, self.max_frame),
                };
                let answer = self.ask(&mut conn, req).await?;
                (conn, answer)
            }
        };
        if let Some(e) = reply.error {
            if reply.missing {
                self.pool.put(self.addr, conn);
                return Err(NotKept(e).into());
            }
            bail!("{e}");
        }
        let payload = reply.payload.context("reply without a payload")?;
        let (bytes, wire) = match (reply.stream, &payload) {
            (Some(n), _) => {
                if n != release.size {
                    bail!("a stream of {n} bytes for a module of {}", release.size);
                }
                receive(&mut conn.reader, module).await?;
                if module.received() as u64 != n {
                    bail!("the stream ended after {} of {n} bytes", module.received());
                }
                (module.read(0, module.size()).to_vec(), n as usize)
            }
            (None, Payload::Full) => (blob.to_vec(), blob.len()),
            (None, Payload::Delta { base }) => {
                let base_bytes = bases.get(base).with_context(|| {
                    format!("delta against {}, which we do not have", base.short())
                })?;
                let bytes = delta::apply(base_bytes, &blob, MAX_MODULE_BYTES)?;
                (bytes, blob.len())
            }
        };
        if Hash::of(&bytes) != release.hash {
            bail!("rebuilt module does not match the release hash");
        }
        if let Payload::Delta { base } = &payload {
            cache.put(*base, release.hash, blob.clone());
        }
        module.fill(&bytes);
        module.done();
        self.pool.put(self.addr, conn);
        Ok((Arc::new(bytes), payload, wire))
    }

    /// Sends `req` on `conn` and reads the reply's head.
    async fn ask(&self, conn: &mut stream::Conn, req: &Frame) -> Result<(Reply, Bytes)> {
        conn.writer.write_frame(req).await?;
        let answer = tokio::time::timeout(FETCH_TIMEOUT, conn.reader.read_frame())
            .await
            .map_err(|_| anyhow!("no answer from {} within {FETCH_TIMEOUT:?}", self.addr))?
            .map_err(|e| e.in_answer_of(self.addr))?;
        match answer {
            Some(Frame::Reply(reply, blob)) => Ok((reply, blob)),
            Some(other) => Err(anyhow!("unexpected {} in answer", other.kind_name())),
            None => Err(anyhow!(
                "{} closed the connection without answering",
                self.addr
            )),
        }
    }
}

/// Reads a streamed module's chunks into `module` until the empty chunk
/// that ends it.
async fn receive(reader: &mut FrameReader<LinkRead>, module: &stream::Inflight) -> Result<()> {
    loop {
        let frame = tokio::time::timeout(CHUNK_WAIT, reader.read_frame())
            .await
            .map_err(|_| anyhow!("the stream stalled for {CHUNK_WAIT:?}"))??;
        match frame {
            Some(Frame::Chunk(b)) if b.is_empty() => return Ok(()),
            Some(Frame::Chunk(b)) => module.append(&b)?,
            Some(other) => bail!("unexpected {} in a stream", other.kind_name()),
            None => bail!("the stream was cut after {} bytes", module.received()),
        }
    }
}

/// One request/reply exchange on a fresh connection to a node's ring port,
/// with the cluster keys when the ring has them (see `crate::secure`).
///
/// # Errors
/// When the node cannot be reached, fails authentication, answers with
/// something else, or not within `limit`.
pub async fn request(
    addr: &str,
    keys: Option<&ClusterKeys>,
    req: Request,
    blob: Bytes,
    max_frame: usize,
    limit: Duration,
) -> Result<(Reply, Bytes)> {
    let exchange = async {
        let (r, w) = crate::secure::connect(addr, keys).await?;
        let mut writer = FrameWriter::new(w, max_frame);
        let mut reader = FrameReader::new(r, max_frame);
        writer.write_frame(&Frame::Request(req, blob)).await?;
        let answer = reader
            .read_frame()
            .await
            .map_err(|e| e.in_answer_of(addr))?;
        match answer {
            Some(Frame::Reply(reply, blob)) => Ok((reply, blob)),
            Some(other) => Err(anyhow!("unexpected {} in answer", other.kind_name())),
            None => Err(anyhow!("{addr} closed the connection without answering")),
        }
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| anyhow!("no answer from {addr} within {limit:?}"))?
}
