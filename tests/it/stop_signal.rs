//! A node stops on SIGTERM even when it was started with SIGTERM blocked,
//! and whatever its successor link does.
//!
//! A signal mask is inherited across `exec`, and Rust's
//! `std::process::Command` (the toolchain of `rust-toolchain.toml`) does
//! not reset it: the fleet bench blocked SIGINT, SIGTERM and SIGHUP in all
//! its threads to take them with `sigwait`, every node it started had
//! SIGTERM blocked, and the `restart` fault's SIGTERM stayed pending while
//! the node ran on (issue 11's `wan` run: "node 4 did not stop within 10 s
//! of SIGTERM"). The node now unblocks the signals it stops on.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

/// Bound on the stop: the leave's grace (200 ms per link), the runtime's
/// shutdown (200 ms) and a debug build's exit, with room to spare.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// Runs `command` from a thread of its own whose signal mask blocks SIGINT
/// and SIGTERM, as a parent taking them with `sigwait` would.
fn spawn_with_stop_signals_blocked(mut command: Command) -> std::io::Result<Child> {
    std::thread::spawn(move || {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block()
            .expect("block SIGINT and SIGTERM in this thread");
        command.spawn()
    })
    .join()
    .expect("the spawning thread")
}

/// The blocked-signal mask (`SigBlk`, hex) that `/proc/self/status` shows
/// a program started like the node.
fn mask_a_child_inherits() -> u64 {
    // Exec'd directly: a shell in between may reset its own mask.
    let mut grep = Command::new("grep");
    grep.args(["SigBlk", "/proc/self/status"])
        .stdout(Stdio::piped());
    let out = spawn_with_stop_signals_blocked(grep)
        .expect("spawn grep")
        .wait_with_output()
        .expect("grep's output");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().trim_start_matches("SigBlk:").trim();
    u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("SigBlk {text:?}: {e}"))
}

/// Kills and reaps the node if the test ends before it exited.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_node_started_with_sigterm_blocked_and_a_silent_successor_stops_on_sigterm() {
    // The scenario needs a parent whose blocked mask reaches the node.
    let sigterm_bit = 1u64 << (Signal::SIGTERM as i32 - 1);
    assert_ne!(
        mask_a_child_inherits() & sigterm_bit,
        0,
        "a child no longer inherits the blocked mask: start the node another way"
    );
    // The successor: a port that takes connections (the kernel completes
    // them) and never answers a hello, so dials hang until their timeout.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind the silent successor");
    let dir = std::env::temp_dir().join(format!("ringhost-stop-signal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let ring = dir.join("ring.txt");
    std::fs::write(
        &ring,
        format!(
            "a = \"127.0.0.1:1\"\nb = \"{}\"\n",
            silent.local_addr().expect("address")
        ),
    )
    .expect("ring file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringhost"));
    command
        .arg("--ring")
        .arg(&ring)
        .args(["--name", "a", "--listen", "127.0.0.1:0", "--admin", "off"])
        .args(["--cache-dir", "none"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut node = Reaped(Some(
        spawn_with_stop_signals_blocked(command).expect("spawn the node"),
    ));
    let child = node.0.as_mut().expect("running");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let (tx, lines) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    // Started, and dialing the silent successor (the first dial is cut
    // off after 1.5 s; a SIGTERM meanwhile must not wait for it).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("the node did not start: {seen:#?}"));
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!("the node did not start: {seen:#?}");
        });
        let started = line.contains("node started");
        seen.push(line);
        if started {
            break;
        }
    }
    // The node has read its ring file.
    let _ = std::fs::remove_dir_all(&dir);
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let child = node.0.as_mut().expect("running");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if sent.elapsed() > STOP_WITHIN {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let masks: Vec<&str> = status
                .lines()
                .filter(|l| l.starts_with("SigBlk") || l.starts_with("ShdPnd"))
                .collect();
            panic!("the node did not stop within {STOP_WITHIN:?} of SIGTERM ({masks:?})");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = sent.elapsed();
    node.0 = None;
    eprintln!("stopped {took:?} after SIGTERM: {status}");
    assert!(status.success(), "a clean stop exits 0: {status}");
    // The rest of its output, up to the end of its pipes (bounded).
    let mut said = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => break,
        }
    }
    assert!(
        said.iter().any(|l| l.contains("node stopped")),
        "the node stopped by itself, not by a signal's default action: {said:#?}"
    );
}
