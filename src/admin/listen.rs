//! How the admin server takes its connections: on a thread of its own,
//! bounded in number, each with deadlines, so that no client and no flood
//! of clients can hold the node's workers or lock out an operator.
//!
//! - **Its own thread.** The server runs on a single-threaded tokio
//!   runtime on a thread named `ringhost-admin` ([`spawn_thread`]), not on
//!   the node's workers: a scrape, a dashboard or a burst of requests is
//!   scheduled by the kernel beside the particle's tasks instead of
//!   queueing in front of them on a worker. On Linux that thread runs
//!   [`NICE`] steps nicer than the node (`setpriority` on its thread id):
//!   when the cores are contended the kernel runs the particle's workers
//!   first, and the admin thread still gets about a tenth of a core's
//!   share against each busy worker (CFS weights: nice 0 = 1024, nice 10 =
//!   110), so it is slowed, never starved.
//! - **At most [`AdminLimits::max_connections`] open connections** (default
//!   512). When a connection arrives at the cap, the
//!   oldest connection that is not inside a request (one that has not yet
//!   sent a whole request head, or a kept-alive one between requests) is
//!   closed to make room, so a flood of idle or half-open sockets cannot
//!   lock out a new client; when every connection is inside a request
//!   (event streams, pushes), the newcomer gets a `503` with
//!   `Retry-After: 1` and is closed.
//! - **A request head must arrive within [`AdminLimits::header_timeout`]**
//!   (default 10 s), counted from when the server waits for
//!   it: this is also the idle timeout of a kept-alive connection (hyper's
//!   `header_read_timeout`).
//! - **A request body must arrive within [`AdminLimits::body_timeout`]**
//!   (default 30 s), or the request is answered `408`
//!   ([`read_body_in_time`], a router layer; bodies are read whole by
//!   every endpoint anyway).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::api::ErrorBody;
use crate::config::AdminLimits;
use crate::conns::{Admitted, ConnTable};
use crate::lograte::LogBackoff;
use crate::metrics::Metrics;

/// Longest request body any endpoint takes: what [`read_body_in_time`]
/// reads at most before the endpoint's own limit applies.
const MAX_BODY: usize = super::api::PUSH_BODY_LIMIT;
/// How much nicer than the node the admin thread runs (see the module
/// docs).
pub const NICE: i32 = 10;
/// Pause after an accept error (out of file descriptors, …) before the
/// next accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Runs `serve` on a single-threaded runtime on a new thread named
/// `ringhost-admin`; the returned future ends when that thread has ended
/// (so the node's task tracker can wait for it).
///
/// # Errors
/// When the thread or its runtime cannot be made.
pub fn spawn_thread<F>(serve: F) -> std::io::Result<impl Future<Output = ()> + Send + 'static>
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ringhost-admin".into())
        .spawn(move || {
            yield_to_the_ring();
            runtime.block_on(serve);
            // Tasks still running (a connection past its grace) end here.
            runtime.shutdown_timeout(Duration::from_millis(100));
            drop(done_tx);
        })?;
    Ok(async move {
        let _ = done_rx.await;
    })
}

/// Makes the calling thread [`NICE`] steps nicer (up to 19); a failure
/// (a platform without per-thread nice values) leaves it as it is.
fn yield_to_the_ring() {
    let me = Some(rustix::thread::gettid());
    let result = rustix::process::getpriority_process(me)
        .and_then(|now| rustix::process::setpriority_process(me, (now + NICE).min(19)));
    if let Err(e) = result {
        debug!(cause = %e, "the admin thread keeps the node's priority");
    }
}

/// Accepts connections on `listener` and serves each with `router` until
/// `cancel`; then closes idle connections at once and gives requests
/// inside `grace` to end.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: AdminLimits,
    cancel: CancellationToken,
    grace: Duration,
    metrics: Arc<Metrics>,
) {
    let table = ConnTable::new(limits.max_connections, limits.max_idle_per_source);
    let tracker = TaskTracker::new();
    let mut logs = LogBackoff::default();
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    if let Some(held) = logs.check("accept", Instant::now()) {
                        warn!(cause = %e, held_back = held, "admin API: accepting a connection failed");
                    }
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let admitted = table.admit(peer.ip());
        if admitted.as_ref().is_ok_and(Admitted::made_room) {
            metrics.refused("admin", "evicted");
        }
        let Ok(conn) = admitted else {
            metrics.refused("admin", "full");
            if let Some(held) = logs.check("full", Instant::now()) {
                warn!(
                    peer = %peer,
                    max = limits.max_connections,
                    held_back = held,
                    "admin API: every connection is inside a request; a new one was refused (503)"
                );
            }
            if refusing.load(Ordering::Acquire) < MAX_REFUSALS {
                let refusing = Arc::clone(&refusing);
                refusing.fetch_add(1, Ordering::AcqRel);
                tracker.spawn(async move {
                    refuse(stream).await;
                    refusing.fetch_sub(1, Ordering::AcqRel);
                });
            }
            continue;
        };
        let router = router.clone();
        let stop = cancel.clone();
        tracker.spawn(async move {
            serve_one(stream, peer, router, conn, limits, stop, grace).await;
        });
    }
    tracker.close();
    // Every connection saw `cancel` and has `grace` to end; this bound
    // only guards against one that ignores it.
    let _ = tokio::time::timeout(grace + Duration::from_millis(500), tracker.wait()).await;
}

/// Refusals in flight at most; past it a connection over the cap is
/// closed without an answer.
const MAX_REFUSALS: usize = 64;
/// Time a refused connection gets to send its request head before the
/// `503` (an HTTP client takes an answer sent before its request for a
/// broken connection).
const REFUSAL_READ: Duration = Duration::from_secs(1);

/// Answers a connection over the cap with a `503` once its request head
/// is in (or [`REFUSAL_READ`] has passed) and closes it: bounded in time
/// (about 2 s) and in bytes read (8 KiB).
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(REFUSAL_READ, async {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while head.len() < 8 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = serde_json::to_string(&ErrorBody {
        error: "this node's admin API has every connection busy with a request; retry shortly"
            .into(),
    })
    .unwrap_or_default();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves one connection until the client ends it, a deadline passes, or
/// `close`/`stop` fires (then in-flight requests get `grace`).
async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    conn: Admitted,
    limits: AdminLimits,
    stop: CancellationToken,
    grace: Duration,
) {
    let _ = stream.set_nodelay(true);
    let place = &conn;
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let busy = place.busy();
        let router = router.clone();
        async move {
            let response = router.oneshot(req.map(Body::new)).await?;
            // The request stays busy until its body is sent (an event
            // stream is busy as long as it is open).
            Ok::<_, std::convert::Infallible>(response.map(move |body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &busy;
                    frame
                }))
            }))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        r = connection.as_mut() => Some(r),
        () = conn.closed() => {
            // Evicted to make room: its place is already taken, so it
            // closes now, not after a grace (a flood of half-sent heads
            // would otherwise hold sockets past the bound). One that
            // started a request meanwhile finishes it.
            if !conn.is_busy() {
                return;
            }
            None
        }
        () = stop.cancelled() => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(grace, connection.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(peer = %peer, cause = %e, "admin connection ended");
    }
}

/// Router layer: reads a request's whole body within the body deadline
/// (`408` past it, `413` past the largest body any endpoint takes), then
/// hands the request on with the body in memory; the endpoint's own size
/// limit still applies.
pub async fn read_body_in_time(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let has_body = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let read = http_body_util::Limited::new(body, MAX_BODY).collect();
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(collected)) => {
            let body = Body::from(collected.to_bytes());
            next.run(Request::from_parts(parts, body)).await
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            closing(error(StatusCode::PAYLOAD_TOO_LARGE, body_too_large()))
        }
        Ok(Err(e)) => closing(error(
            StatusCode::BAD_REQUEST,
            format!("reading the request body: {e}"),
        )),
        Err(_) => closing(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                deadline.as_secs_f64()
            ),
        )),
    }
}

/// Marks an answer given before the request body was read to its end:
/// the server closes that connection after it (hyper cannot find the next
/// request's start), so it says `connection: close` (RFC 9112 §9.6) and a
/// pooled client does not send its next request down it.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

fn error(code: StatusCode, why: String) -> Response {
    (code, axum::Json(ErrorBody { error: why })).into_response()
}

/// The `413` reason, naming the limits (a rejection does not say which
/// endpoint's limit it hit).
pub(crate) fn body_too_large() -> String {
    format!(
        "request body exceeds this endpoint's size limit (a pushed module: at most {} bytes; \
         a config write: at most {} bytes of JSON; other bodies: at most {} bytes)",
        crate::station::MAX_MODULE_BYTES,
        super::api::CONFIG_BODY_LIMIT,
        super::api::BODY_LIMIT
    )
}
