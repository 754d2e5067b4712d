//! Datagram ingest: inputs for the node's stations over UDP
//! (`--input-udp ADDR`, loopback only unless `--insecure`: inputs are not
//! authenticated) and a Unix datagram socket (`--input-unix PATH`, made
//! with mode 0660 and removed when the node stops).
//!
//! A datagram is `STATION NAME` `\n` payload: the payload (any bytes, at
//! most [`MAX_PAYLOAD`]) becomes one input in that station's inbox, as if
//! posted to `POST /v1/stations/NAME/inbox`. A datagram for no station of
//! this node, for a full inbox, without the newline, or too large is
//! dropped and counted (`inputs_dropped_total{reason}`), with one log
//! line per reason at backed-off intervals; nothing stops the socket but
//! the node stopping. Memory stays bounded under a flood: one receive
//! buffer per socket, and the inboxes' own bounds.
//!
//! What this module does not own: the inboxes (`crate::station`) and who
//! reads them (the stations, `on-input` or `inbox.take`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{UdpSocket, UnixDatagram};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::lograte::LogBackoff;
use crate::metrics::{DropLabels, Metrics};
use crate::station::{Inbox, Inboxes};

/// Largest payload a datagram input may carry (the admin API's inbox
/// body limit).
pub const MAX_PAYLOAD: usize = 64 << 10;

/// Longest station name taken from a datagram.
const MAX_NAME: usize = 256;

/// Inboxes looked up by name, remembered per socket (a station's inbox
/// never changes once registered).
const CACHE_MAX: usize = 1024;

/// Delivers datagrams to inboxes and counts what it drops.
struct Delivery {
    inboxes: Inboxes,
    metrics: Arc<Metrics>,
    cache: HashMap<Vec<u8>, Inbox>,
    log: LogBackoff,
    socket: &'static str,
}

impl Delivery {
    fn new(inboxes: Inboxes, metrics: Arc<Metrics>, socket: &'static str) -> Self {
        Self {
            inboxes,
            metrics,
            cache: HashMap::new(),
            log: LogBackoff::default(),
            socket,
        }
    }

    fn deliver(&mut self, datagram: &[u8]) {
        if let Err(reason) = self.try_deliver(datagram) {
            self.metrics
                .inputs_dropped
                .get_or_create(&DropLabels { reason })
                .inc();
            if let Some(held) = self.log.check(reason, Instant::now()) {
                warn!(
                    socket = self.socket,
                    reason,
                    held_back = held,
                    "datagram input dropped"
                );
            }
        } else {
            self.metrics.inputs_received.inc();
        }
    }

    fn try_deliver(&mut self, datagram: &[u8]) -> Result<(), &'static str> {
        let nl = datagram
            .iter()
            .take(MAX_NAME + 1)
            .position(|&b| b == b'\n')
            .ok_or("malformed")?;
        let (name, payload) = (&datagram[..nl], &datagram[nl + 1..]);
        if name.is_empty() {
            return Err("malformed");
        }
        if payload.len() > MAX_PAYLOAD {
            return Err("too_large");
        }
        let inbox = match self.cache.get(name) {
            Some(i) => i,
            None => {
                let text = std::str::from_utf8(name).map_err(|_| "malformed")?;
                let inbox = self.inboxes.get(text).ok_or("unknown_station")?;
                if self.cache.len() >= CACHE_MAX {
                    self.cache.clear();
                }
                self.cache.entry(name.to_vec()).or_insert(inbox)
            }
        };
        inbox.push(payload.to_vec()).map_err(|_| "inbox_full")
    }
}

/// Receives datagrams on `socket` until `cancel`.
pub(super) async fn serve_udp(
    socket: UdpSocket,
    inboxes: Inboxes,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut d = Delivery::new(inboxes, metrics, "udp");
    // One more than a payload and its name: larger datagrams are cut to
    // this and dropped as too large.
    let mut buf = vec![0u8; MAX_PAYLOAD + MAX_NAME + 2];
    loop {
        let n = tokio::select! {
            () = cancel.cancelled() => return,
            r = socket.recv(&mut buf) => r,
        };
        match n {
            Ok(n) => d.deliver(&buf[..n]),
            // A UDP receive error (an ICMP report of an earlier send) is
            // not the socket's end.
            Err(e) => {
                if d.log.check("recv", Instant::now()).is_some() {
                    warn!(cause = %e, "input socket receive failed");
                }
            }
        }
    }
}

/// Receives datagrams on the Unix socket at `path` until `cancel`, then
/// removes the socket file.
pub(super) async fn serve_unix(
    socket: UnixDatagram,
    path: PathBuf,
    inboxes: Inboxes,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut d = Delivery::new(inboxes, metrics, "unix");
    let mut buf = vec![0u8; MAX_PAYLOAD + MAX_NAME + 2];
    loop {
        let n = tokio::select! {
            () = cancel.cancelled() => break,
            r = socket.recv(&mut buf) => r,
        };
        match n {
            Ok(n) => d.deliver(&buf[..n]),
            Err(e) => {
                if d.log.check("recv", Instant::now()).is_some() {
                    warn!(cause = %e, "input socket receive failed");
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Binds the Unix datagram socket at `path` with mode 0660. A socket file
/// left there by a node that died is replaced; any other file is not.
///
/// # Errors
/// When the path holds something else, or binding fails.
pub(super) fn bind_unix(path: &std::path::Path) -> anyhow::Result<UnixDatagram> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "--input-unix {}: the path exists and is not a socket",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let socket = UnixDatagram::bind(path)
        .map_err(|e| anyhow::anyhow!("binding --input-unix {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> (Delivery, Inbox) {
        let inboxes = Inboxes::default();
        let inbox = Inbox::default();
        inboxes.insert_if_absent("tok", &inbox);
        (
            Delivery::new(inboxes, Arc::new(Metrics::new()), "test"),
            inbox,
        )
    }

    #[test]
    fn a_datagram_is_a_station_name_a_newline_and_the_payload() {
        let (mut d, inbox) = delivery();
        assert_eq!(d.try_deliver(b"tok\nabc\n"), Ok(()));
        assert_eq!(d.try_deliver(b"tok\n"), Ok(()));
        assert_eq!(inbox.take(10), vec![b"abc\n".to_vec(), Vec::new()]);
    }

    #[test]
    fn bad_datagrams_are_dropped_with_a_reason() {
        let (mut d, _) = delivery();
        assert_eq!(d.try_deliver(b"no newline"), Err("malformed"));
        assert_eq!(d.try_deliver(b"\npayload"), Err("malformed"));
        assert_eq!(d.try_deliver(b"other\nx"), Err("unknown_station"));
        let mut big = b"tok\n".to_vec();
        big.resize(4 + MAX_PAYLOAD + 1, 0);
        assert_eq!(d.try_deliver(&big), Err("too_large"));
        for _ in 0..crate::station::INBOX_CAPACITY {
            d.try_deliver(b"tok\nx").unwrap();
        }
        assert_eq!(d.try_deliver(b"tok\nx"), Err("inbox_full"));
        d.deliver(b"tok\nx");
        let dropped = d
            .metrics
            .inputs_dropped
            .get_or_create(&DropLabels {
                reason: "inbox_full",
            })
            .get();
        assert_eq!(dropped, 1);
    }
}
