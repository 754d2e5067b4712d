//! The tokens example (`examples/tokens`, issue 12) at a small scale: the
//! demo's own code (`examples/tokens/kit`, included here) runs a ring of
//! real node processes with the `tokens` station, a ring-guarded and a
//! per-node-counting application server beside each node, and the spread
//! attack with legitimate traffic beside it.

#[path = "../../examples/tokens/kit/mod.rs"]
mod kit;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kit::app::{App, AppConfig, Guard};
use kit::scenario::{self, Params};

/// A directory removed when dropped (also when the test fails).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(what: &str) -> TempDir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    TempDir(std::env::temp_dir().join(format!("ringhost-it-{what}-{}-{nanos}", std::process::id())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_blocks_a_spread_token_everywhere_that_per_node_counting_never_blocks() {
    let logs = temp_dir("tokens-demo");
    let n = 5;
    let params = Params {
        nodes: n,
        per_node_threshold: 10,
        delay_ms: 5,
        abuse_interval: Duration::from_millis(20),
        legit_tokens: 15,
        seed: 7,
        ringhost: PathBuf::from(env!("CARGO_BIN_EXE_ringhost")),
        log_dir: logs.0.clone(),
    };
    let out = tokio::time::timeout(Duration::from_secs(120), scenario::run(params))
        .await
        .expect("the demo finished within 120 s")
        .expect("the demo ran");
    let report = out.render();
    eprintln!("{report}");

    // Per-node counting: every server saw the token under its threshold.
    for (i, r) in out.rows.iter().enumerate() {
        assert_eq!(r.abuse_sent, 9, "node {i}\n{report}");
        assert_eq!(r.per_node_refused, 0, "per-node refused at {i}\n{report}");
    }
    // The ring: blocked on every node, by the spread rule.
    assert_eq!(out.ring_blocked_nodes(), n, "{report}");
    let info = out.block_info.as_deref().expect("a block");
    assert!(info.starts_with("spread (node "), "{info}");
    // The crossing is where the load crossed the rule: 22 of 45 (at 5
    // nodes, so at >= 3 distinct nodes).
    assert_eq!(out.crossing_request, 22, "{report}");
    // No legitimate token blocked, on either side.
    assert!(out.legit_blocked.is_empty(), "{report}");
    assert_eq!(out.legit_refused_ring, 0, "{report}");
    assert_eq!(out.legit_refused_per_node, 0, "{report}");
    assert!(out.legit_requests > 0, "{report}");
}

/// Status code of a GET with `token` in `x-api-key`.
async fn status_of(addr: std::net::SocketAddr, token: &str) -> u16 {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::get(format!("http://{addr}/x"))
        .header("x-api-key", token)
        .body(Empty::new())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("an answer within 5 s")
        .expect("an answer")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_per_node_server_refuses_a_token_at_its_threshold() {
    let app = App::start(
        AppConfig {
            guard: Guard::PerNode {
                threshold: 3,
                window: Duration::from_secs(60),
            },
            flush: Duration::from_millis(5),
        },
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let a = app.addr();
    let got = [
        status_of(a, "t").await,
        status_of(a, "t").await,
        status_of(a, "u").await,
        status_of(a, "t").await,
        status_of(a, "has space").await,
    ];
    assert_eq!(got, [200, 200, 200, 403, 400]);
    app.shutdown().await;
}

/// Waits until `ok`, at most 30 s, naming `what` on failure.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `ringhost tokens ARGS --to ADDR`, which must succeed.
fn tokens_tool(args: &[&str], to: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .arg("tokens")
        .args(args)
        .args(["--to", to])
        .output()
        .expect("ringhost tokens");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_ring_guarded_server_keeps_its_blocks_through_a_restart_of_its_node() {
    // ProcRing blocks on its own runtime: the server runs on this one's
    // workers, the ring is driven from the test thread between block_ons.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut ring = crate::health::ProcRing::start_with(
        3,
        &["--station", "tokens:total=1000000", "--input-udp", "auto"],
    );
    let all = [0, 1, 2];
    ring.wait_converged(&all, Duration::from_secs(60), "initial ring");
    let node = ring.addr(0);
    let (host, port) = node.rsplit_once(':').unwrap();
    let udp = format!("{host}:{}", port.parse::<u16>().unwrap() + 2000);
    let app = rt.block_on(async {
        let app = App::start(
            AppConfig {
                guard: Guard::Ring {
                    node: node.clone(),
                    udp,
                    station: "tokens".into(),
                },
                flush: Duration::from_millis(5),
            },
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
        .unwrap();
        app.wait_synced(Duration::from_secs(30)).await.unwrap();
        app
    });
    let a = app.addr();
    let status = |token: &str| rt.block_on(status_of(a, token));
    assert_eq!(status("mallory"), 200);

    // A block made at another node reaches this server's mirror.
    tokens_tool(
        &["block", "mallory", "--reason", "abuse desk"],
        &ring.addr(1),
    );
    rt.block_on(until("blocked in the mirror", || {
        app.blocked("mallory").is_some()
    }));
    assert_eq!(status("mallory"), 403);
    assert_eq!(status("alice"), 200);

    // Its node dies: the server keeps enforcing what it knew.
    ring.sigkill(0);
    assert_eq!(status("mallory"), 403);
    // The node comes back (with a new admin port): the server finds it
    // through its ring port, and a fresh snapshot holds the block.
    ring.spawn(0);
    ring.wait_converged(&all, Duration::from_secs(60), "node 0 back");
    let mirror = app.mirror().expect("ring mode");
    rt.block_on(until("a second stream synced", || {
        mirror.streams_synced() >= 2
    }));
    rt.block_on(until("blocked after the restart", || {
        app.blocked("mallory").is_some()
    }));
    assert_eq!(status("mallory"), 403);

    // An unblock made elsewhere reaches it through the new stream.
    tokens_tool(&["unblock", "mallory"], &ring.addr(2));
    rt.block_on(until("unblocked in the mirror", || {
        app.blocked("mallory").is_none()
    }));
    assert_eq!(status("mallory"), 200);
    rt.block_on(app.shutdown());
}
