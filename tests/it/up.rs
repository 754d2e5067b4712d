//! `ringhost up` as a real process tree: the ring forms, ticks flow, and
//! stopping it (SIGTERM, or SIGKILL of the supervisor) leaves no process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Owns the supervisor and the node pids seen; on drop (also when a test
/// fails) kills and reaps whatever is left.
struct Tree {
    up: Option<Child>,
    nodes: Vec<i32>,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(mut up) = self.up.take() {
            let _ = up.kill();
            let _ = up.wait();
        }
        for &pid in &self.nodes {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let _ = wait_gone(&self.nodes, deadline);
    }
}

/// Orphaned nodes are re-parented to us (a subreaper), so we can reap them.
fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).expect("set child subreaper");
}

fn alive(pid: i32) -> bool {
    // Reap it if it is our (re-parented) zombie child.
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // Field 3 is the state; a zombie is dead but not yet reaped.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
    }
}

/// Waits until no pid in `pids` is alive; false at the deadline.
fn wait_gone(pids: &[i32], deadline: Instant) -> bool {
    loop {
        if pids.iter().all(|&p| !alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of the processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let _state = rest.next();
        if rest.next().and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn spawn_up(nodes: u16, base_port: u16) -> Tree {
    let mut up = Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .args(["up", "--nodes", &nodes.to_string(), "--base-port"])
        .arg(base_port.to_string())
        .args(["--delay-ms", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringhost up");
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(up.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(up.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    Tree {
        up: Some(up),
        nodes: Vec::new(),
        lines: rx,
        log: Vec::new(),
    }
}

impl Tree {
    /// Waits until every node has logged a tick; Err if a port was taken.
    fn wait_ticks_from_all(&mut self, nodes: usize, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut ticked = vec![false; nodes];
        while !ticked.iter().all(|&t| t) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!(
                    "no ticks from every node within {within:?}: {ticked:?}\n{}",
                    self.log.join("\n")
                ),
            };
            if line.contains("Address already in use") {
                return Err(line);
            }
            if let Some(i) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("index="))
                .and_then(|v| v.parse::<usize>().ok())
                && line.contains(" tick seq=")
            {
                ticked[i] = true;
            }
            self.log.push(line);
        }
        Ok(())
    }

    /// Waits until `count` output lines seen so far (or coming) contain
    /// `needle`.
    fn wait_logged(&mut self, needle: &str, count: usize, within: Duration) {
        let seen = |log: &[String]| log.iter().filter(|l| l.contains(needle)).count();
        while seen(&self.log) < count {
            self.wait_line(needle, within);
        }
    }

    /// Waits for an output line containing `needle`.
    fn wait_line(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no line with {needle:?} within {within:?}:\n{}",
                    self.log.join("\n")
                )
            });
            let hit = line.contains(needle);
            self.log.push(line);
            if hit {
                return;
            }
        }
    }

    fn record_nodes(&mut self, expect: usize) {
        let up = self.up.as_ref().unwrap().id();
        self.nodes = children_of(up);
        assert_eq!(self.nodes.len(), expect, "one process per node");
    }

    fn wait_up_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let up = self.up.as_mut().unwrap();
        loop {
            if let Some(status) = up.try_wait().unwrap() {
                self.up = None;
                return status;
            }
            assert!(Instant::now() < deadline, "ringhost up did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts `up` on a free-looking port range, retrying if a port is taken.
fn start_ring(nodes: u16) -> Tree {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let seed = u64::from(std::process::id()) ^ now;
    for attempt in 0..4u64 {
        // Below the kernel's ephemeral range (32768+).
        let base = 20_000 + ((seed.wrapping_mul(7919) + attempt * 1237) % 10_000) as u16;
        let mut tree = spawn_up(nodes, base);
        match tree.wait_ticks_from_all(nodes as usize, Duration::from_secs(60)) {
            Ok(()) => return tree,
            Err(line) => eprintln!("port range {base} busy ({line}); trying another"),
        }
    }
    panic!("no free port range for ringhost up");
}

#[test]
fn up_forms_a_ring_and_sigterm_leaves_no_process() {
    become_subreaper();
    let mut tree = start_ring(3);
    tree.record_nodes(3);
    // It says when the ring has formed, then where each admin API is.
    tree.wait_logged("ring formed: 3/3 linked", 1, Duration::from_secs(30));
    tree.wait_logged("admin API http://127.0.0.1:", 3, Duration::from_secs(10));
    // One node crashes: the supervisor respawns it, and the new process
    // ticks again.
    kill(Pid::from_raw(tree.nodes[2]), Signal::SIGKILL).unwrap();
    tree.wait_line("node exited", Duration::from_secs(20));
    tree.wait_line("respawning node", Duration::from_secs(20));
    tree.wait_ticks_from_all(3, Duration::from_secs(30))
        .unwrap();
    let before = tree.nodes.clone();
    tree.record_nodes(3);
    assert_ne!(before, tree.nodes, "node 2 is a new process");
    let mut all_pids = before;
    all_pids.extend(tree.nodes.iter().copied());
    let up = tree.up.as_ref().unwrap().id();
    kill(Pid::from_raw(up as i32), Signal::SIGTERM).unwrap();
    let status = tree.wait_up_exit(Duration::from_secs(20));
    assert!(status.success(), "up exits cleanly on SIGTERM: {status}");
    assert!(
        wait_gone(&all_pids, Instant::now() + Duration::from_secs(10)),
        "node processes left behind: {all_pids:?}"
    );
}

#[test]
fn killing_the_supervisor_takes_every_node_down() {
    become_subreaper();
    let mut tree = start_ring(3);
    tree.record_nodes(3);
    let up = tree.up.as_ref().unwrap().id();
    kill(Pid::from_raw(up as i32), Signal::SIGKILL).unwrap();
    tree.wait_up_exit(Duration::from_secs(10));
    let nodes = tree.nodes.clone();
    assert!(
        wait_gone(&nodes, Instant::now() + Duration::from_secs(10)),
        "orphaned node processes: {nodes:?}"
    );
    assert!(!Path::new(&format!("/proc/{}", nodes[0])).exists() || !alive(nodes[0]));
}

#[test]
fn a_node_that_keeps_dying_is_respawned_with_backoff_then_given_up_loudly() {
    // A "node" that exits at once: the supervisor restarts it five times,
    // backing off, then gives up; with every node given up, `up` fails.
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .args(["up", "--nodes", "1", "--base-port", "29999"])
        .args(["--node-program", "/bin/false"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringhost up");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(out.wait_with_output());
    });
    let output = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("up gives up within 60 s")
        .expect("up's output");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "up fails when every node is given up"
    );
    assert_eq!(text.matches("respawning node").count(), 5, "{text}");
    assert!(text.contains("gave up respawning"), "{text}");
    // Backoff 200 + 400 + 800 + 1600 + 3200 ms between the six starts.
    assert!(
        started.elapsed() >= Duration::from_millis(6000),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn up_with_a_port_taken_by_another_program_names_it_and_fails() {
    become_subreaper();
    // Another program holds a port of the range.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().unwrap().port();
    let mut tree = spawn_up(3, port - 1);
    let status = tree.wait_up_exit(Duration::from_secs(30));
    while let Ok(line) = tree.lines.recv_timeout(Duration::from_millis(200)) {
        tree.log.push(line);
    }
    assert!(!status.success(), "up must fail: {status}");
    let log = tree.log.join("\n");
    assert!(
        log.contains(&format!("port {port} ")) && log.contains("another program"),
        "names the port: {log}"
    );
    assert!(!log.contains(" tick seq="), "no ring ran: {log}");

    // A node alone on a taken port exits with its own code, which `up`
    // reads should the port be taken between its check and the start.
    let out = Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .args(["--port", &port.to_string(), "--ring"])
        .arg(format!("127.0.0.1:{port}-{}", port + 1))
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    assert_eq!(
        out.status.code(),
        Some(i32::from(ringhost::EXIT_CANNOT_BIND)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(holder);
}

#[test]
fn admin_ports_overlapping_ring_ports_are_refused_before_any_node_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringhost"))
        .args(["up", "--nodes", "2", "--base-port", "4840"])
        .args(["--admin-base-port", "4841"])
        .stdin(Stdio::null())
        .output()
        .expect("run ringhost up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("admin ports 4841-4842 overlap the ring ports 4840-4841"),
        "{err}"
    );
}
