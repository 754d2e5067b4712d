//! The push/config/keygen tools as a new user meets them (issue 8,
//! section 5): what they check before sending, how they name a peer that
//! is not a node, and the exit codes they give.

use std::time::{Duration, Instant};

use ringhost::config::StationSpec;
use ringhost::deploy::release::Hash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::deploy::{addr, marker, marker_at, quick, ringhost, scratch, text, view, wait_running};
use crate::support::TestRing;

/// At the default hold (50 ms a stop), a version that passes `init` and
/// traps at every visit is rolled back by every node a few visits after
/// it started running everywhere: `push` waits that long and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_every_node_rolls_back_fails_and_a_repeat_push_is_a_no_op() {
    let ring = TestRing::start(3, |c| {
        c.delay_ms = 50;
        c.deploy.watch = false;
    })
    .await;
    let dir = scratch("settle");
    let file = dir.join("marker.wasm");
    std::fs::write(&file, marker(1)).unwrap();
    let (f, to) = (file.to_str().unwrap().to_string(), addr(&ring, 0));
    let out = ringhost(&["push", &f, "--to", &to]).await;
    assert!(out.status.success(), "{}", text(&out));
    let good = Hash::of(&marker(1));

    // The same module again: nothing new, and it says so.
    let out = ringhost(&["push", &f, "--to", &addr(&ring, 2)]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing to push"), "{}", text(&out));
    for i in 0..3 {
        let st = marker_at(&ring, i);
        assert_eq!((st.version, st.running), (1, good), "node {i}");
    }

    std::fs::write(&file, marker(2)).unwrap();
    let out = ringhost(&["push", &f, "--to", &to, "--config", "trap_after=0"]).await;
    assert!(!out.status.success(), "exit 1: {}", text(&out));
    // Named by its first fault, or by the rollback when that came first.
    let t = text(&out);
    assert!(
        t.contains("rolled back") || t.contains("faulted running it"),
        "{t}"
    );
    wait_running(&ring, &[0, 1, 2], "marker", good, Duration::from_secs(10)).await;
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the client can check itself, it checks before sending: the
/// module limit (a 9 MB and a 20 MB file), the `--to` form, and the kind
/// of key file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_refuses_oversized_modules_bare_ports_and_public_keys_naming_them() {
    let dir = scratch("checks");
    for (mb, size) in [(9, 9_000_000usize), (20, 20_000_000)] {
        let file = dir.join(format!("big{mb}.wasm"));
        std::fs::write(&file, vec![0u8; size]).unwrap();
        let out = ringhost(&["push", file.to_str().unwrap(), "--to", "127.0.0.1:1"]).await;
        let t = text(&out);
        assert!(!out.status.success(), "{t}");
        assert!(
            t.contains("module limit") && t.contains(&size.to_string()),
            "{mb} MB: {t}"
        );
        assert!(!t.contains("frame"), "{t}");
    }
    let module = dir.join("marker.wasm");
    std::fs::write(&module, marker(1)).unwrap();
    let m = module.to_str().unwrap();

    let out = ringhost(&["push", m, "--to", "3000"]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("127.0.0.1:3000"), "{}", text(&out));

    let key = dir.join("deploy");
    let out = ringhost(&["keygen", "--out", key.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out));
    let public = dir.join("deploy.pub");
    let out = ringhost(&[
        "push",
        m,
        "--to",
        "127.0.0.1:1",
        "--key",
        public.to_str().unwrap(),
    ])
    .await;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("deploy.pub") && t.contains("public key file"),
        "{t}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that answers with something else (HTTP) and one that says
/// nothing: `push` and `status` say the address is not a ringhost node,
/// within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_say_when_the_address_is_not_a_ringhost_node() {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_addr, silent_addr) = (
        http.local_addr().unwrap().to_string(),
        silent.local_addr().unwrap().to_string(),
    );
    let servers = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                Ok((mut s, _)) = http.accept() => {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 512];
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
                    });
                }
                Ok((s, _)) = silent.accept() => held.push(s),
            }
        }
    });
    let dir = scratch("foreign");
    let module = dir.join("marker.wasm");
    std::fs::write(&module, marker(1)).unwrap();
    let m = module.to_str().unwrap();
    for peer in [&http_addr, &silent_addr] {
        for args in [vec!["push", m, "--to", peer], vec!["status", "--to", peer]] {
            let started = Instant::now();
            let out = ringhost(&args).await;
            let t = text(&out);
            assert!(!out.status.success(), "{args:?}: {t}");
            assert!(
                t.contains("not a ringhost node") || t.contains("is it a ringhost node"),
                "{args:?}: {t}"
            );
            assert!(!t.contains("16777216"), "{args:?}: {t}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{args:?} took {:?}",
                started.elapsed()
            );
        }
    }
    servers.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `config get` of a key that is not set exits 1, with and without
/// `--json` (which still prints the entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_get_of_an_unset_key_exits_1_in_both_forms() {
    let ring = TestRing::start(2, |c| {
        quick(c);
        c.stations = vec![StationSpec::builtin("deploy-delta")];
    })
    .await;
    let to = addr(&ring, 0);
    let plain = ringhost(&["config", "get", "nope", "--to", &to]).await;
    assert_eq!(plain.status.code(), Some(1), "{}", text(&plain));
    assert!(text(&plain).contains("nope is not set"), "{}", text(&plain));
    let json = ringhost(&["config", "get", "nope", "--to", &to, "--json"]).await;
    assert_eq!(json.status.code(), Some(1), "{}", text(&json));
    let entry: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(entry["value"].is_null(), "{entry}");
    let help = ringhost(&["config", "get", "--help"]).await;
    assert!(text(&help).contains("exit 1"), "{}", text(&help));
    ring.shutdown().await;
}

/// Any fault of the pushed station on any node while the push settles
/// fails it: a new station that traps at every visit (nothing to roll
/// back to), and a version that traps only after a few good visits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_station_faults_anywhere_while_it_settles_fails() {
    let ring = TestRing::start(3, |c| {
        c.delay_ms = 50;
        c.deploy.watch = false;
    })
    .await;
    let to = addr(&ring, 0);
    let trap = crate::support::test_station("trap");
    let out = ringhost(&["push", trap.to_str().unwrap(), "--to", &to]).await;
    let t = text(&out);
    assert!(!out.status.success(), "exit 1: {t}");
    assert!(
        t.contains("not running everywhere") && t.contains("fault"),
        "{t}"
    );

    let dir = scratch("faults");
    let file = dir.join("marker.wasm");
    std::fs::write(&file, marker(1)).unwrap();
    let f = file.to_str().unwrap().to_string();
    let out = ringhost(&["push", &f, "--to", &to]).await;
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&file, marker(2)).unwrap();
    let out = ringhost(&["push", &f, "--to", &to, "--config", "trap_after=4"]).await;
    let t = text(&out);
    assert!(!out.status.success(), "exit 1: {t}");
    assert!(t.contains("faulted running it"), "{t}");
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A push of what already runs is a no-op even when what runs is the
/// module the node was started with (version 0), and configs compare as
/// settings: the same keys and values in another order are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_what_runs_is_a_no_op_and_configs_compare_as_settings() {
    let ring = TestRing::start(2, quick).await;
    let to = addr(&ring, 0);
    let tick = crate::support::test_station("tick");
    let v0 = view(&ring, 0);
    let running = v0.stations.iter().find(|s| s.name == "tick").unwrap();
    assert_eq!(running.running, Hash::of(&std::fs::read(&tick).unwrap()));
    let out = ringhost(&["push", tick.to_str().unwrap(), "--as", "tick", "--to", &to]).await;
    let t = text(&out);
    assert!(out.status.success() && t.contains("nothing to push"), "{t}");
    assert!(view(&ring, 0).releases.is_empty(), "no tick v1");

    let dir = scratch("settings");
    let file = dir.join("marker.wasm");
    std::fs::write(&file, marker(1)).unwrap();
    let f = file.to_str().unwrap().to_string();
    let (a, b) = ("trap_after=1000000", "fail_init=0");
    let out = ringhost(&["push", &f, "--to", &to, "--config", a, "--config", b]).await;
    assert!(out.status.success(), "{}", text(&out));
    let hash = Hash::of(&marker(1));
    wait_running(&ring, &[0, 1], "marker", hash, Duration::from_secs(20)).await;
    let out = ringhost(&["push", &f, "--to", &to, "--config", b, "--config", a]).await;
    let t = text(&out);
    assert!(out.status.success() && t.contains("nothing to push"), "{t}");
    let out = ringhost(&[
        "push",
        &f,
        "--to",
        &to,
        "--config",
        "trap_after=3",
        "--config",
        b,
        "--config",
        a,
    ])
    .await;
    assert!(
        text(&out).contains("nothing to push"),
        "last value wins: {}",
        text(&out)
    );
    assert_eq!(marker_at(&ring, 0).version, 1);
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
