//! The admin server's connection bounds (`ringhost::admin::listen`): a
//! flood of idle or half-sent connections cannot lock an operator out or
//! stop the particle, silent connections and slow bodies meet their
//! deadlines, and a server whose every connection is inside a request
//! answers `503` and recovers.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use ringhost::admin::client::AdminClient;
use ringhost::config::{AdminLimits, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admin::admin_of;
use crate::deploy::quick;
use crate::support::TestRing;

const T: Duration = Duration::from_secs(5);

fn limited(limits: AdminLimits) -> impl Fn(&mut NodeConfig) {
    move |c: &mut NodeConfig| {
        quick(c);
        if let Some(a) = c.admin.as_mut() {
            a.limits = limits;
        }
    }
}

/// Reads from `s` until the peer closes it (`Ok(bytes read)`), or `Err`
/// when it stays open past `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match read {
        Ok(()) => Ok(got),
        Err(_) => Err(format!(
            "still open after {within:?}; read {:?}",
            String::from_utf8_lossy(&got)
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_half_sent_connections_locks_out_no_operator() {
    let limits = AdminLimits {
        max_connections: 32,
        ..AdminLimits::default()
    };
    let mut ring = TestRing::start(3, limited(limits)).await;
    ring.visits(6, Duration::from_secs(10)).await;
    let admin = admin_of(&ring, 0);
    // Ten times the cap: half silent, half stopping inside the head.
    let mut flood = Vec::new();
    for k in 0..320 {
        let mut s = TcpStream::connect(&admin).await.expect("connect");
        if k % 2 == 1 {
            s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
        }
        flood.push(s);
    }
    // Kept open (the server's head deadline is 10 s, longer than this
    // test's requests): every one of these requests must still be served.
    let c = AdminClient::new(&admin, None);
    for _ in 0..5 {
        let r = c.status(T).await.expect("status answered during the flood");
        assert_eq!(r.node.index, 0);
    }
    // The particle kept moving through the node the flood is aimed at.
    let visits = ring.visits(9, Duration::from_secs(10)).await;
    assert!(visits.iter().any(|v| v.node == 0), "{visits:?}");
    // The oldest flood connections were closed to make room.
    let mut closed = 0;
    for s in flood.iter_mut().take(40) {
        if closed_within(s, Duration::from_millis(50)).await.is_ok() {
            closed += 1;
        }
    }
    assert!(closed > 0, "no flood connection was closed to make room");
    drop(flood);
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_slow_bodies_meet_their_deadlines() {
    let limits = AdminLimits {
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..AdminLimits::default()
    };
    let ring = TestRing::start(1, limited(limits)).await;
    let admin = admin_of(&ring, 0);

    // Silent from the start.
    let mut s = TcpStream::connect(&admin).await.unwrap();
    closed_within(&mut s, Duration::from_secs(3))
        .await
        .expect("a silent connection is closed");

    // A head that never ends (slowloris).
    let mut s = TcpStream::connect(&admin).await.unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    closed_within(&mut s, Duration::from_secs(3))
        .await
        .expect("an unfinished head is closed");
    assert!(started.elapsed() >= Duration::from_millis(200));

    // Kept alive after one answered request, then idle.
    let mut s = TcpStream::connect(&admin).await.unwrap();
    s.write_all(b"GET /v1/openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut s, Duration::from_secs(3))
        .await
        .expect("an idle kept-alive connection is closed");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );

    // A body that stops half-way: 408 naming the deadline.
    let mut s = TcpStream::connect(&admin).await.unwrap();
    s.write_all(
        b"PUT /v1/config/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"value\":",
    )
    .await
    .unwrap();
    let got = closed_within(&mut s, Duration::from_secs(3))
        .await
        .expect("a stalled body is answered and closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within"), "{text}");

    // The node still serves.
    let c = AdminClient::new(&admin, None);
    c.status(T).await.expect("status after the slow clients");
    ring.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_every_connection_is_busy_answers_503_and_recovers() {
    let limits = AdminLimits {
        max_connections: 4,
        ..AdminLimits::default()
    };
    let ring = TestRing::start(1, limited(limits)).await;
    let admin = admin_of(&ring, 0);
    // Four event streams: every connection is inside a request.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&admin).await.unwrap();
        s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("the stream answers")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        streams.push(s);
    }
    let c = AdminClient::new(&admin, None);
    let (code, body) = c
        .exchange(Method::GET, "/v1/status", None, T)
        .await
        .expect("an answer");
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("retry"), "{text}");
    // A tool's request meanwhile is sent again after the Retry-After:
    // one stream ends while it waits, and it is served.
    let waiting = tokio::spawn({
        let c = c.clone();
        async move { c.status(T).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(streams.pop());
    let r = waiting.await.unwrap().expect("served after a retry");
    assert_eq!(r.node.index, 0);
    // One stream ended: the next request is served.
    let deadline = Instant::now() + T;
    loop {
        let (code, _) = c
            .exchange(Method::GET, "/v1/status", None, T)
            .await
            .expect("an answer");
        if code == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {code} after a stream ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(streams);
    ring.shutdown().await;
}

/// The nice value of the thread whose `/proc` directory is `dir` (field
/// 19 of its `stat`).
fn nice_of(dir: &std::path::Path) -> Option<i32> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(16)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_runs_on_a_thread_of_its_own_nicer_than_the_node() {
    let ring = TestRing::start(1, quick).await;
    let c = AdminClient::new(&admin_of(&ring, 0), None);
    c.status(T).await.expect("status");
    let mine = nice_of("/proc/thread-self".as_ref()).expect("this thread's nice value");
    let admin: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim() == "ringhost-admin").then(|| nice_of(&t.path()))?
        })
        .collect();
    assert!(!admin.is_empty(), "no ringhost-admin thread");
    for nice in admin {
        assert_eq!(
            nice,
            (mine + ringhost::admin::listen::NICE).min(19),
            "the test thread runs at nice {mine}"
        );
    }
    ring.shutdown().await;
}

/// Established TCP sockets whose local port is `port` (the server's side
/// of its connections), from `/proc/net/tcp`: not disturbed by other
/// tests' sockets.
fn established_at(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1).and_then(|a| a.rsplit(':').next());
            let local = local.and_then(|p| u16::from_str_radix(p, 16).ok());
            local == Some(port) && f.get(3) == Some(&"01")
        })
        .count()
}

/// The outside tester's case: half-sent request heads flood the admin API;
/// connections closed to make room must close at once (they were held
/// for the stop grace, 2 s, so the node ran out of file descriptors far
/// past its bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_to_make_room_free_their_sockets_at_once() {
    let limits = AdminLimits {
        max_connections: 32,
        ..AdminLimits::default()
    };
    let ring = TestRing::start(1, limited(limits)).await;
    let admin = admin_of(&ring, 0);
    let c = AdminClient::new(&admin, None);
    c.status(T).await.expect("status");
    let port = ring.nodes[0].as_ref().unwrap().admin_addr().unwrap().port();
    let mut flood = Vec::new();
    for _ in 0..400 {
        let mut s = TcpStream::connect(&admin).await.expect("connect");
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        flood.push(s);
    }
    // The server's side of the flood (and of our kept-alive client).
    let deadline = Instant::now() + Duration::from_secs(1);
    let server_side = loop {
        let n = established_at(port);
        if n <= 32 + 8 || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        server_side <= 32 + 8,
        "{server_side} server sockets open for a bound of 32"
    );
    c.status(T).await.expect("status during the flood");
    drop(flood);
    ring.shutdown().await;
}

/// A body the server will not read to its end (over the limit) gets an
/// answer that says `connection: close`, so a pooled client never sends
/// its next request down a connection the server is closing (the CI
/// failure of `bad_requests_…`: the request after a refused 17 MiB push
/// met "connection closed before message completed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_left_unread_closes_its_connection_and_the_next_request_is_answered() {
    let ring = TestRing::start(1, quick).await;
    let c = AdminClient::new(&admin_of(&ring, 0), None);
    let big = || {
        Some((
            bytes::Bytes::from(vec![7u8; 17 << 20]),
            "application/octet-stream",
        ))
    };
    let mut closes = 0;
    for round in 0..20 {
        let (status, headers, _) = match c
            .exchange_full(Method::POST, "/v1/push?name=x", big(), T)
            .await
        {
            Ok(answer) => answer,
            // Refused while still sending: also fine (RFC 9110 §15.5.14).
            Err(_) => continue,
        };
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "round {round}");
        let says_close = headers
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        assert!(
            says_close,
            "round {round}: 413 without connection: close: {headers:?}"
        );
        closes += 1;
        // At once, on the same pooled client.
        let (status, _) = c
            .exchange(Method::GET, "/v1/status", None, T)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the request after a 413: {e:#}"));
        assert_eq!(status, StatusCode::OK, "round {round}");
    }
    assert!(closes > 0, "every large push was cut off before its answer");
    ring.shutdown().await;
}

/// A server that closes a kept-alive connection as the next request goes
/// out (its idle deadline, room made for another client): the client
/// sends an idempotent request once more on a new connection, and never
/// resends a `POST` (the server may have acted on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_closed_under_a_request_is_retried_only_when_idempotent() {
    use tokio::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\nnull";
    // Each connection: answer its first request, then read the second
    // one's head and close without a word. Counts requests seen.
    let server = tokio::spawn(async move {
        let mut heads = 0usize;
        let mut conns = 0usize;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && heads < 7 {
            // The two connections the client makes may come late on a
            // loaded machine; a third (a resent POST) would come within a
            // second of the second's close.
            let wait = if conns < 2 { T } else { Duration::from_secs(1) };
            let Ok(Ok((mut s, _))) = tokio::time::timeout(wait, listener.accept()).await else {
                break;
            };
            conns += 1;
            for answer in [true, false] {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(T, s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                if head.is_empty() {
                    break;
                }
                heads += 1;
                if answer {
                    s.write_all(ok.as_bytes()).await.unwrap();
                }
            }
        }
        heads
    });
    let c = AdminClient::new(&addr, None);
    let get = |c: AdminClient| async move { c.exchange(Method::GET, "/v1/status", None, T).await };
    // 1st connection: answered.
    assert_eq!(get(c.clone()).await.unwrap().0, StatusCode::OK);
    // Sent down the kept-alive connection, which closes: retried on a
    // 2nd connection, answered there.
    assert_eq!(get(c.clone()).await.unwrap().0, StatusCode::OK);
    // A POST down the 2nd connection meets the close: an error, not sent
    // again.
    let post = c
        .exchange(
            Method::POST,
            "/v1/rollback",
            Some((b"{}"[..].into(), "application/json")),
            T,
        )
        .await;
    assert!(post.is_err(), "{post:?}");
    drop(c);
    // 2 requests on the 1st connection, 2 on the 2nd (the POST went out
    // once): 4 heads; a resent POST would make 5.
    assert_eq!(server.await.unwrap(), 4);
}
