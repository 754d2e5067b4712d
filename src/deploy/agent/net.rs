//! The agent's network side: fetching a module from a peer (as a delta
//! against a module we have, when it can) and one request/reply exchange
//! with a node's ring port.

use super::*;
use crate::secure::ClusterKeys;

impl Agent {
    /// Fetches `rel`'s module from `peer`; the answer comes back as
    /// [`DeployMsg::Fetched`].
    ///
    /// # Errors
    /// When `peer` is not a member of the ring.
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
        let max_frame = self.config.max_frame_bytes;
        let keys = self.config.cluster_keys.clone();
        let tx = self.tx.clone();
        let cache = self.deltas.clone();
        self.spawn_task(async move {
            let result = fetch(&addr, keys.as_ref(), &rel, have, &bases, &cache, max_frame)
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

/// Fetches `release`'s module from the node at `addr`, offering `have` as
/// delta bases; rebuilds and checks it. Returns the module, how it came
/// and the bytes that travelled.
async fn fetch(
    addr: &str,
    keys: Option<&ClusterKeys>,
    release: &Release,
    have: Vec<Hash>,
    bases: &HashMap<Hash, Arc<Vec<u8>>>,
    cache: &delta::Cache,
    max_frame: usize,
) -> Result<(Arc<Vec<u8>>, Payload, usize)> {
    let (reply, blob) = request(
        addr,
        keys,
        Request::Fetch {
            release: release.clone(),
            have,
        },
        Bytes::new(),
        max_frame,
        FETCH_TIMEOUT,
    )
    .await?;
    if let Some(e) = reply.error {
        if reply.missing {
            return Err(NotKept(e).into());
        }
        bail!("{e}");
    }
    let payload = reply.payload.context("reply without a payload")?;
    let bytes = match &payload {
        Payload::Full => blob.to_vec(),
        Payload::Delta { base } => {
            let base_bytes = bases
                .get(base)
                .with_context(|| format!("delta against {}, which we do not have", base.short()))?;
            delta::apply(base_bytes, &blob, MAX_MODULE_BYTES)?
        }
    };
    if Hash::of(&bytes) != release.hash {
        bail!("rebuilt module does not match the release hash");
    }
    if let Payload::Delta { base } = &payload {
        cache.put(*base, release.hash, blob.clone());
    }
    Ok((Arc::new(bytes), payload, blob.len()))
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
