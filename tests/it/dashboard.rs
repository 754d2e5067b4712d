//! The dashboard (issue 9): its files as the admin API serves them, and
//! the page itself in real headless Chromium on a ring of 11 `ringhost`
//! processes: 11 members live, the particle moving, a SIGKILLed member
//! marked dead within 1 s, a pushed version on every live member's row.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver`
//! (`.ci/run` installs them). Without `/usr/bin/chromedriver` it is
//! skipped with a message, except under CI (`CI` set), where it fails.
//! `RINGHOST_SCREENSHOT=path.png` makes it save a screenshot of the page.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use ringhost::admin::client::{AdminClient, PushParams};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::deploy::{marker, quick};
use crate::health::ProcRing;
use crate::support::{TestRing, test_station};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The head of an HTTP/1.1 answer to `GET path` (with `extra` header
/// lines), lower-cased, and its body when `whole` (else the head only: an
/// event stream does not end).
async fn get_raw(addr: &str, path: &str, extra: &str, whole: bool) -> (String, String) {
    let read = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
        tcp.write_all(req.as_bytes()).await.expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = tcp.read(&mut buf).await.expect("read");
            got.extend_from_slice(&buf[..n]);
            let head_done = got.windows(4).any(|w| w == b"\r\n\r\n");
            if n == 0 || (!whole && head_done) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&got).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_ascii_lowercase(), body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {addr} within 5 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_files_are_served_with_their_types_and_no_cache() {
    let ring = TestRing::start(2, quick).await;
    let admin = ring.nodes[0]
        .as_ref()
        .and_then(|n| n.admin_addr())
        .expect("admin on")
        .to_string();
    for (path, kind, says) in [
        ("/", "text/html", "<script src=\"/dashboard.js\">"),
        ("/dashboard.js", "text/javascript", "/v1/events"),
        ("/dashboard.css", "text/css", "#particle"),
    ] {
        let (head, body) = get_raw(&admin, path, "", true).await;
        assert!(head.starts_with("http/1.1 200"), "GET {path}: {head}");
        assert!(
            head.contains(&format!("content-type: {kind}; charset=utf-8")),
            "GET {path}: {head}"
        );
        assert!(
            head.contains("cache-control: no-cache"),
            "GET {path}: {head}"
        );
        assert!(body.contains(says), "GET {path} holds {says:?}");
    }
    // The event stream is open to a page of a ring member's host (the
    // dashboard of another member), not to another site.
    let origin = |o: &str| format!("Origin: {o}\r\nAccept: text/event-stream\r\n");
    let (head, _) = get_raw(&admin, "/v1/events", &origin("http://127.0.0.1:1"), false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://127.0.0.1:1"),
        "{head}"
    );
    let (head, _) = get_raw(&admin, "/v1/events", &origin("http://evil.example"), false).await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    ring.shutdown().await;
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ringhost-it-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A chromedriver child in a process group of its own, with the browsers
/// it starts: all are killed and reaped on drop, also when the test fails.
struct Chromedriver {
    child: Option<Child>,
    url: String,
}

impl Chromedriver {
    /// Starts chromedriver on a free port: one picked by binding port 0
    /// and releasing it, so another program may take it first; then the
    /// driver exits or never listens, and we try another.
    fn start(driver: &Path, profile: &TempDir) -> Self {
        use std::os::unix::process::CommandExt;
        let mut tries = Vec::new();
        for _ in 0..5 {
            let port = StdListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let child = Command::new(driver)
                .arg(format!("--port={port}"))
                .process_group(0)
                // Chromium's crash handler keeps its database under the
                // config home, not the profile: keep it in the temp dir too.
                .env("XDG_CONFIG_HOME", profile.0.join("config"))
                .env("XDG_CACHE_HOME", profile.0.join("cache"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromedriver");
            let mut me = Self {
                child: Some(child),
                url: format!("http://127.0.0.1:{port}"),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return me;
                }
                let exited = me
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some());
                if exited || Instant::now() >= deadline {
                    tries.push(port);
                    break; // `me` drops: killed and reaped.
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("chromedriver did not listen on any of ports {tries:?}");
    }

    /// A headless Chromium session with a fresh profile in `profile`.
    async fn session(&self, profile: &TempDir) -> Client {
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--user-data-dir={}", profile.0.display()));
        let caps = json!({ "goog:chromeOptions": { "binary": CHROMIUM, "args": args } });
        let Json::Object(caps) = caps else {
            unreachable!("an object literal")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        let session = builder.capabilities(caps).connect(&self.url);
        tokio::time::timeout(Duration::from_secs(30), session)
            .await
            .expect("a Chromium session within 30 s")
            .expect("chromedriver starts Chromium")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The group is the driver's pid; the browsers it started are in it.
        let group = Pid::from_raw(child.id() as i32);
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
        // Browsers orphaned by the driver's death are re-parented to this
        // process when it is a subreaper (ProcRing makes it one): reap
        // them, with a deadline. Chromium's crash handlers are in sessions
        // of their own (they end by themselves when their browser does):
        // reap those that became ours, by their pids.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match waitpid(Pid::from_raw(-group.as_raw()), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                Ok(_) => {}
                Err(_) => break, // no child of that group left
            }
        }
        for pid in children_named("chrome_crashpad") {
            while Instant::now() < deadline {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                    _ => break,
                }
            }
        }
    }
}

/// This process's children whose command name (`comm`, at most 15
/// bytes) starts with `name`.
fn children_named(name: &str) -> Vec<Pid> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, not ") ".
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map_or("", |(_, c)| c);
        let ppid = rest.split_whitespace().nth(1).unwrap_or("");
        if ppid == me && comm.starts_with(name) {
            out.push(Pid::from_raw(pid));
        }
    }
    out
}

/// Whether a script's answer means "yes" (JS truthiness, roughly).
fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64() != Some(0.0),
        Json::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Runs `script` (a function body returning a value) in the page until its
/// answer is truthy, within `within`; the answer and how long it took.
async fn wait_js(c: &Client, within: Duration, what: &str, script: &str) -> (Json, Duration) {
    let start = Instant::now();
    loop {
        let got = c
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{what}: script failed: {e}"));
        if truthy(&got) {
            return (got, start.elapsed());
        }
        if start.elapsed() >= within {
            let page = c
                .execute(
                    "return document.getElementById('summary').textContent",
                    vec![],
                )
                .await;
            panic!("{what}: not within {within:?}; last answer {got}, page says {page:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The driver at `path`; `Ok(None)` (the browser test is skipped, with a
/// message) when it is missing on a developer machine; an error under CI
/// (`ci`), where a missing driver fails the test.
fn driver_or_skip(path: &Path, ci: bool) -> Result<Option<&Path>, String> {
    if path.exists() {
        return Ok(Some(path));
    }
    if ci {
        return Err(format!(
            "{} is missing under CI: install Debian's chromium and chromium-driver",
            path.display()
        ));
    }
    eprintln!(
        "SKIPPED the_dashboard_shows_the_ring_live_in_headless_chromium: {} is missing \
         (apt-get install chromium chromium-driver); under CI this fails",
        path.display()
    );
    Ok(None)
}

#[test]
fn a_missing_chromedriver_skips_the_browser_test_locally_and_fails_it_under_ci() {
    let absent = Path::new("/nonexistent/chromedriver");
    assert_eq!(driver_or_skip(absent, false), Ok(None));
    assert!(driver_or_skip(absent, true).is_err(), "under CI it fails");
    let here = Path::new(env!("CARGO_BIN_EXE_ringhost"));
    assert_eq!(driver_or_skip(here, true), Ok(Some(here)));
}

const N: usize = 11;
const KILLED: usize = 5;

#[test]
fn the_dashboard_shows_the_ring_live_in_headless_chromium() {
    let ci = std::env::var_os("CI").is_some();
    let Some(driver) =
        driver_or_skip(Path::new(CHROMEDRIVER), ci).unwrap_or_else(|e| panic!("{e}"))
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let marker_path = test_station("marker");
    let marker_path = marker_path.to_str().expect("a UTF-8 path");
    let mut ring = ProcRing::start_with(
        N,
        &["--station", "tick", "--station", marker_path, "--no-watch"],
    );
    let all: Vec<usize> = (0..N).collect();
    ring.wait_converged(&all, Duration::from_secs(90), "11 processes form a ring");
    let admin = ring
        .status(0)
        .and_then(|r| r.admin)
        .expect("node 0 reports its admin address");

    // Dropped in reverse order: the browsers go before their profile.
    let profile = TempDir::new("chromium-profile");
    let chromedriver = Chromedriver::start(driver, &profile);
    let page = rt.block_on(chromedriver.session(&profile));
    let within = Duration::from_secs(20);

    rt.block_on(async {
        page.goto(&format!("http://{admin}/"))
            .await
            .expect("open the page");
        let (live, t) = wait_js(
            &page,
            within,
            "11 members live",
            "const rows = document.querySelectorAll('tr[data-member][data-state=\"live\"]');
             const dots = document.querySelectorAll('#ring g.member[data-state=\"live\"]');
             return rows.length === 11 && dots.length === 11 ? rows.length : null;",
        )
        .await;
        eprintln!("the page shows {live} live members after {t:?}");
        let (seen, t) = wait_js(
            &page,
            within,
            "the particle moves around the ring",
            "window.seenAt = window.seenAt || new Set();
             const at = document.getElementById('particle').getAttribute('data-at');
             if (at !== null) window.seenAt.add(at);
             return window.seenAt.size >= 4 ? [...window.seenAt] : null;",
        )
        .await;
        eprintln!("the particle was seen at members {seen} within {t:?}");
    });

    let killed_at = Instant::now();
    ring.sigkill(KILLED);
    rt.block_on(wait_js(
        &page,
        Duration::from_secs(5),
        "the killed member is marked dead",
        &format!(
            "const row = document.querySelector('tr[data-member=\"{KILLED}\"]');
             const dot = document.querySelector('#ring g.member[data-member=\"{KILLED}\"]');
             return row && dot && row.dataset.state === 'dead' && dot.dataset.state === 'dead';"
        ),
    ));
    // From the signal to the script seeing it (an upper bound).
    let took = killed_at.elapsed();
    eprintln!(
        "the page marked member {KILLED} dead {} ms after its SIGKILL",
        took.as_millis()
    );
    assert!(
        took <= Duration::from_secs(1),
        "member {KILLED} marked dead only {took:?} after the kill"
    );

    rt.block_on(async {
        let client = AdminClient::new(&admin, None);
        let params = PushParams {
            name: "marker".into(),
            ..PushParams::default()
        };
        // Every text the deploy box shows while the push travels.
        page.execute(
            "window.progress = [];
             new MutationObserver(() => {
               const t = document.getElementById('deploy').textContent;
               if (window.progress[window.progress.length - 1] !== t) window.progress.push(t);
             }).observe(document.getElementById('deploy'), { childList: true, subtree: true });",
            vec![],
        )
        .await
        .expect("watch the deploy box");
        let answer = client
            .push(&params, Bytes::from(marker(1)))
            .await
            .expect("push accepted");
        let version = answer.release.expect("a published release").version;
        let (_, t) = wait_js(
            &page,
            Duration::from_secs(30),
            "the new version on every live member's row",
            &format!(
                "const rows = [...document.querySelectorAll('tr[data-member][data-state=\"live\"]')];
                 return rows.length === {live} && rows.every(r =>
                   r.querySelector('[data-station=\"marker\"][data-version=\"{version}\"]'));",
                live = N - 1
            ),
        )
        .await;
        eprintln!(
            "marker v{version} shown on all {} live rows {} ms after the push answered",
            N - 1,
            t.as_millis()
        );
        let (progress, _) = wait_js(
            &page,
            within,
            "the push's progress",
            "const d = document.querySelector('#deploy [data-deploy=\"marker\"]');
             return d ? d.textContent : null;",
        )
        .await;
        let want = format!("marker v{version}: {live}/{live} live members", live = N - 1);
        assert!(progress.as_str().is_some_and(|p| p.contains(&want)), "{progress} says {want}");
        let seen = page
            .execute("return window.progress;", vec![])
            .await
            .expect("the deploy box's texts");
        eprintln!("the deploy box showed, in order: {seen}");
        let travelling = format!("marker v{version}: ");
        let partial = seen.as_array().into_iter().flatten().any(|t| {
            t.as_str().is_some_and(|t| {
                t.starts_with(&travelling) && !t.contains(&format!("{live}/{live}", live = N - 1))
            })
        });
        assert!(partial, "progress shown while the push travelled: {seen}");
        if let Some(path) = std::env::var_os("RINGHOST_SCREENSHOT") {
            // A picture worth keeping: every lap-time sparkline filled.
            wait_js(
                &page,
                within,
                "sparklines filled",
                "return [...model.members.values()]
                   .filter(m => m.state === 'live').every(m => m.laps.length >= 30);",
            )
            .await;
            let png = page.screenshot().await.expect("screenshot");
            std::fs::write(&path, png).expect("write the screenshot");
            eprintln!("screenshot saved to {}", Path::new(&path).display());
        }
        page.close().await.expect("close the browser");
    });
    drop(chromedriver);
    drop(profile);
}
