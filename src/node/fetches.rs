//! Members' module fetches on the ring port: each answered by the deploy
//! agent, whole or (a module still on its way here) streamed as it
//! arrives; the connection then stays open a while for the asker's next
//! fetch, so a hop does not pay a TCP connect and cluster handshake per
//! release.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::deploy::agent::{DeployMsg, Served, stream};
use crate::model::{Reply, Request};
use crate::secure::{LinkRead, LinkWrite};
use crate::wire::{Frame, FrameReader, FrameWriter};

/// Bound on the agent's answer to one fetch (a delta of a big module
/// takes a while to make; a non-streaming asker waits for a module still
/// on its way here).
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// One fetch connection on the ring port, past its first frame.
pub(super) struct Conn<'a> {
    pub(super) reader: &'a mut FrameReader<LinkRead>,
    pub(super) writer: &'a mut FrameWriter<LinkWrite>,
    pub(super) deploy_tx: &'a mpsc::Sender<DeployMsg>,
    /// The node stops.
    pub(super) cancel: &'a CancellationToken,
    /// Bound on each frame written.
    pub(super) write_limit: Duration,
}

impl Conn<'_> {
    /// Answers `first` and every further member request on the connection
    /// until the asker closes it, sends something else, stays idle for
    /// [`stream::IDLE_SERVED`], or the node stops.
    pub(super) async fn serve(self, first: Request) {
        let mut req = first;
        loop {
            let Some(answer) = self.ask(req).await else {
                return; // the node stops
            };
            let sent = match answer {
                Served::Whole(reply, blob) => {
                    let frame = Frame::Reply(reply, blob);
                    matches!(
                        timeout(self.write_limit, self.writer.write_frame(&frame)).await,
                        Ok(Ok(()))
                    )
                }
                Served::Stream(reply, module) => {
                    let head = Frame::Reply(reply, Bytes::new());
                    let wrote = timeout(self.write_limit, self.writer.write_frame(&head)).await;
                    if !matches!(wrote, Ok(Ok(()))) {
                        return;
                    }
                    match stream::serve_stream(&module, self.writer, self.write_limit).await {
                        Ok(()) => true,
                        Err(e) => {
                            debug!(cause = %e, "module stream cut");
                            false
                        }
                    }
                }
            };
            if !sent {
                return; // the asker discards what it got
            }
            let next = tokio::select! {
                () = self.cancel.cancelled() => return,
                r = timeout(stream::IDLE_SERVED, self.reader.read_frame()) => r,
            };
            match next {
                Ok(Ok(Some(Frame::Request(r, _)))) if r.is_member_traffic() => req = r,
                _ => return,
            }
        }
    }

    /// The agent's answer to `req`; `None` when the node stops.
    async fn ask(&self, req: Request) -> Option<Served> {
        let failed = |why: &str| Served::Whole(Reply::error(why), Bytes::new());
        let Request::Fetch {
            release,
            have,
            stream,
        } = req
        else {
            return Some(failed("only fetches are served here"));
        };
        let (tx, rx) = oneshot::channel();
        let msg = DeployMsg::Fetch {
            release,
            have,
            stream,
            reply: tx,
        };
        if self.deploy_tx.send(msg).await.is_err() {
            return Some(failed("node stopping"));
        }
        tokio::select! {
            () = self.cancel.cancelled() => None,
            r = timeout(ANSWER_LIMIT, rx) => Some(match r {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => failed("request dropped"),
                Err(_) => failed("request timed out"),
            }),
        }
    }
}
