//! Ring health with real processes: SIGKILL, SIGSTOP/SIGCONT and restart of
//! node processes; the survivors re-form the ring, views converge, one
//! particle goes on. Observed through `ringhost status` and the tick lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ringhost::status::Report;

/// A ring of node processes on 127.0.0.1:base..base+n. Every child is
/// killed and reaped on drop, also when the test fails.
pub(crate) struct ProcRing {
    base: u16,
    n: usize,
    children: Vec<Option<Child>>,
    lines: mpsc::Receiver<(usize, String)>,
    tx: mpsc::Sender<(usize, String)>,
    /// Tick sequence numbers seen, with the node that logged them.
    ticks: Vec<(u64, usize)>,
    /// Extra flags for every node.
    extra: Vec<String>,
    /// Processes the nodes started themselves (respawns), to end on drop.
    strays: Vec<i32>,
}

impl Drop for ProcRing {
    fn drop(&mut self) {
        // Freeze every process of this ring first, so no survivor respawns
        // a member while we kill them; then kill and reap them all. Our
        // ring's port range is unique, so its command line names our
        // processes only (respawned ones too).
        let ours = processes_with(&self.ring_spec());
        for &pid in &ours {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        }
        for &pid in &ours {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for child in self.children.iter_mut().filter_map(Option::take) {
            reap(child);
        }
        // Respawned processes were re-parented to us (a subreaper) when
        // their parent died: reap them, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        for &pid in ours.iter().chain(&self.strays) {
            while Instant::now() < deadline {
                use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                    _ => break,
                }
            }
        }
    }
}

/// The ring-wide sequence number of a tick line.
fn tick_seq(line: &str) -> Option<u64> {
    if !line.contains(" tick ") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("seq="))
        .and_then(|v| v.parse().ok())
}

/// A block of `n` ports no other ring of this test binary uses: the first
/// block is picked at random per process, later ones follow it.
fn port_block(n: usize) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u32;
        // Below the kernel's ephemeral range (32768+), where outgoing
        // connections would take our ports.
        20_000 + (now ^ std::process::id()) % 10_000
    };
    let _ = NEXT.compare_exchange(0, start(), Ordering::SeqCst, Ordering::SeqCst);
    let base = NEXT.fetch_add(n as u32 + 8, Ordering::SeqCst);
    u16::try_from(base).expect("ports below 65536")
}

/// Pids of the processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

fn reap(mut child: Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
    let _ = child.kill();
    let _ = child.wait();
}

impl ProcRing {
    fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    pub(crate) fn start_with(n: usize, extra: &[&str]) -> Self {
        // Processes our nodes start (respawns) are re-parented to us when
        // their parent dies, so we can reap them.
        nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
        let base = port_block(n);
        let (tx, lines) = mpsc::channel();
        let mut ring = Self {
            base,
            n,
            children: (0..n).map(|_| None).collect(),
            lines,
            tx,
            ticks: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            strays: Vec::new(),
        };
        for i in 0..n {
            ring.spawn(i);
        }
        ring
    }

    fn ring_spec(&self) -> String {
        format!(
            "127.0.0.1:{}-{}",
            self.base,
            self.base as usize + self.n - 1
        )
    }

    pub(crate) fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.base as usize + i)
    }

    pub(crate) fn spawn(&mut self, i: usize) {
        let ring = format!(
            "127.0.0.1:{}-{}",
            self.base,
            self.base as usize + self.n - 1
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringhost"))
            .args([
                "--port",
                &(self.base as usize + i).to_string(),
                "--ring",
                &ring,
            ])
            .args(["--delay-ms", "5", "--failure-timeout-ms", "300"])
            // A free admin port: tools find it through the ring port.
            .args(["--admin", "127.0.0.1:0"])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((i, line)).is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(old) = self.children[i].replace(child) {
            reap(old);
        }
    }

    pub(crate) fn pid(&self, i: usize) -> Pid {
        Pid::from_raw(self.children[i].as_ref().expect("running").id() as i32)
    }

    pub(crate) fn sigkill(&mut self, i: usize) {
        let child = self.children[i].take().expect("running");
        reap(child);
    }

    /// Collects output lines (tick sequence numbers) until none is pending.
    fn drain(&mut self) {
        while let Ok((node, line)) = self.lines.try_recv() {
            if line.contains("Address already in use") {
                panic!("port taken: {line}");
            }
            if let Some(seq) = tick_seq(&line) {
                self.ticks.push((seq, node));
            }
        }
    }

    pub(crate) fn status(&self, i: usize) -> Option<Report> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(ringhost::status::query(
            &self.addr(i),
            None,
            Duration::from_secs(2),
        ))
        .ok()
    }

    /// Waits until every node in `live` reports exactly `live` as its live
    /// members, its successor up, and visits growing.
    pub(crate) fn wait_converged(
        &mut self,
        live: &[usize],
        within: Duration,
        what: &str,
    ) -> Duration {
        let start = Instant::now();
        let deadline = start + within;
        let mut last_visits: HashMap<usize, u64> = HashMap::new();
        loop {
            self.drain();
            let mut ok = true;
            for &i in live {
                match self.status(i) {
                    Some(r) => {
                        let members: Vec<usize> = r
                            .members
                            .iter()
                            .filter(|m| m.live)
                            .map(|m| m.index)
                            .collect();
                        // Visits grew since this wait first asked (a report
                        // may be served again for up to 200 ms: successive
                        // answers can be the same one).
                        let first = *last_visits.entry(i).or_insert(r.visits);
                        let moving = r.visits > first;
                        ok &= members == live && r.successor_up && moving;
                    }
                    None => ok = false,
                }
            }
            if ok {
                return start.elapsed();
            }
            if Instant::now() >= deadline {
                let reports: Vec<String> = live
                    .iter()
                    .map(|&i| match self.status(i) {
                        Some(r) => format!(
                            "node {i}: live {:?} successor {:?} up {} skipped {:?} particle {:?} here {} visits {}",
                            r.members.iter().filter(|m| m.live).map(|m| m.index).collect::<Vec<_>>(),
                            r.successor,
                            r.successor_up,
                            r.skipped,
                            r.particle.generation,
                            r.particle.here,
                            r.visits
                        ),
                        None => format!("node {i}: no status"),
                    })
                    .collect();
                panic!(
                    "{what}: not converged within {within:?}\n{}",
                    reports.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Over the next `window`, every tick sequence number is logged once:
    /// one particle.
    fn assert_one_particle(&mut self, window: Duration) {
        self.drain();
        let from = self.ticks.len();
        let end = Instant::now() + window;
        while Instant::now() < end {
            if let Ok((node, line)) = self.lines.recv_timeout(Duration::from_millis(50))
                && let Some(seq) = tick_seq(&line)
            {
                self.ticks.push((seq, node));
            }
        }
        let mut seqs: Vec<u64> = self.ticks[from..].iter().map(|t| t.0).collect();
        assert!(seqs.len() > 20, "ticks flow: {} in {window:?}", seqs.len());
        seqs.sort_unstable();
        let before = seqs.len();
        seqs.dedup();
        assert_eq!(
            seqs.len(),
            before,
            "a tick sequence number was logged twice: two particles"
        );
    }
}

#[test]
fn sigkill_sigstop_and_restart_heal_with_one_particle() {
    let mut ring = ProcRing::start(5);
    let all = [0, 1, 2, 3, 4];
    ring.wait_converged(&all, Duration::from_secs(60), "initial ring");
    ring.assert_one_particle(Duration::from_millis(500));

    // SIGKILL node 2: the others skip it.
    ring.sigkill(2);
    let took = ring.wait_converged(&[0, 1, 3, 4], Duration::from_secs(20), "after SIGKILL");
    eprintln!("SIGKILL healed (views converged) in {took:?}");
    ring.assert_one_particle(Duration::from_millis(500));

    // Restart it: spliced back in.
    ring.spawn(2);
    let took = ring.wait_converged(&all, Duration::from_secs(20), "after restart");
    eprintln!("restart rejoined in {took:?}");
    ring.assert_one_particle(Duration::from_millis(500));

    // SIGSTOP node 3 (its kernel still accepts connections): detected by
    // missing pongs; then SIGCONT: it comes back.
    kill(ring.pid(3), Signal::SIGSTOP).unwrap();
    let took = ring.wait_converged(&[0, 1, 2, 4], Duration::from_secs(20), "after SIGSTOP");
    eprintln!("SIGSTOP detected and healed in {took:?}");
    kill(ring.pid(3), Signal::SIGCONT).unwrap();
    let took = ring.wait_converged(&all, Duration::from_secs(20), "after SIGCONT");
    eprintln!("SIGCONT rejoined in {took:?}");
    ring.assert_one_particle(Duration::from_millis(500));
}

#[test]
fn killing_two_adjacent_nodes_and_all_but_one_keeps_a_particle_going() {
    let mut ring = ProcRing::start(5);
    ring.wait_converged(&[0, 1, 2, 3, 4], Duration::from_secs(60), "initial ring");
    ring.sigkill(1);
    ring.sigkill(2);
    ring.wait_converged(&[0, 3, 4], Duration::from_secs(20), "two adjacent killed");
    ring.assert_one_particle(Duration::from_millis(500));
    ring.sigkill(0);
    ring.sigkill(3);
    ring.wait_converged(&[4], Duration::from_secs(20), "all but one killed");
    ring.assert_one_particle(Duration::from_millis(500));
}

#[test]
fn no_false_failure_while_both_cpus_are_saturated() {
    let mut ring = ProcRing::start(5);
    let all = [0, 1, 2, 3, 4];
    ring.wait_converged(&all, Duration::from_secs(60), "initial ring");
    let downs_before: u64 = all
        .iter()
        .map(|&i| ring.status(i).expect("status").member_downs)
        .sum();
    // Two busy loops, one per core, for three seconds. The guard kills and
    // reaps them (the shell itself, by pid) even if the test fails.
    struct Hogs(Vec<Child>);
    impl Drop for Hogs {
        fn drop(&mut self) {
            for h in &mut self.0 {
                let _ = h.kill();
                let _ = h.wait();
            }
        }
    }
    let hogs = Hogs(
        (0..2)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .expect("spawn cpu hog")
            })
            .collect(),
    );
    let mut false_failures = Vec::new();
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok((node, line)) = ring.lines.recv_timeout(Duration::from_millis(50))
            && line.contains("declared dead")
        {
            false_failures.push((node, line));
        }
    }
    drop(hogs);
    assert!(
        false_failures.is_empty(),
        "false failures under CPU load: {false_failures:#?}"
    );
    let downs_after: u64 = all
        .iter()
        .map(|&i| ring.status(i).expect("status").member_downs)
        .sum();
    assert_eq!(downs_before, downs_after, "no member was declared dead");
    ring.wait_converged(&all, Duration::from_secs(10), "after the load");
}

#[test]
fn a_standalone_node_respawns_its_dead_successor() {
    let mut ring = ProcRing::start_with(4, &["--respawn"]);
    let all = [0, 1, 2, 3];
    ring.wait_converged(&all, Duration::from_secs(60), "initial ring");
    let old = ring.status(2).expect("status").node.pid;
    ring.sigkill(2);
    // Node 1 restarts member 2; the ring takes it back.
    let took = ring.wait_converged(&all, Duration::from_secs(30), "after respawn");
    eprintln!("respawned and rejoined in {took:?}");
    let new = ring
        .status(2)
        .expect("status of the respawned node")
        .node
        .pid;
    ring.strays.push(new as i32);
    assert_ne!(old, new, "a new process serves member 2");
    ring.assert_one_particle(Duration::from_millis(500));
}

#[test]
fn a_respawning_ring_stopped_with_sigterm_stays_stopped() {
    // SIGTERM is a clean stop: the node tells its predecessor it leaves,
    // and nobody respawns it; SIGTERM to every node stops the whole ring.
    let mut ring = ProcRing::start_with(3, &["--respawn"]);
    let all = [0, 1, 2];
    ring.wait_converged(&all, Duration::from_secs(60), "initial ring");
    let stop = |ring: &mut ProcRing, i: usize| {
        let mut child = ring.children[i].take().expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("sigterm");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "node {i} did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Start-up may have counted members not yet up as dead: count from here.
    let downs = ring.status(0).expect("status").member_downs;
    stop(&mut ring, 1);
    ring.wait_converged(&[0, 2], Duration::from_secs(20), "after node 1 left");
    // Far past the first respawn backoff (200 ms): nobody serves member 1.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(ring.status(1).is_none(), "member 1 was respawned");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = ring.status(0).expect("status");
    assert_eq!(r.member_downs, downs, "a leave is not a failure");
    stop(&mut ring, 2);
    stop(&mut ring, 0);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for i in all {
            assert!(ring.status(i).is_none(), "member {i} runs again");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        processes_with(&ring.ring_spec()).is_empty(),
        "processes of the ring left running"
    );
}

#[test]
fn killing_the_particle_holder_resends_the_same_particle() {
    // Node 2 holds the particle for 2 s, so we know where it is when we
    // kill it; the token timeout is longer than that hold.
    let mut ring = ProcRing::start_with(
        5,
        &[
            "--station",
            "tick",
            "--station",
            "delay:ms@2=2000",
            "--token-timeout-ms",
            "20000",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let generation = loop {
        if let Some(r) = ring.status(2)
            && r.particle.here
        {
            break r.particle.generation;
        }
        assert!(Instant::now() < deadline, "node 2 never held the particle");
        std::thread::sleep(Duration::from_millis(20));
    };
    ring.sigkill(2);
    let took = ring.wait_converged(&[0, 1, 3, 4], Duration::from_secs(20), "holder killed");
    eprintln!("holder killed: ring re-formed and moving in {took:?}");
    for i in [0, 1, 3, 4] {
        let r = ring.status(i).expect("status");
        assert_eq!(
            r.particle.generation, generation,
            "node {i}: the same particle goes on (resent, not regenerated)"
        );
    }
    ring.assert_one_particle(Duration::from_millis(500));
}

/// Node processes started by hand, their stdout lines sent as (k, line);
/// every one killed and reaped on drop, also when the test fails.
struct Nodes {
    children: Vec<Child>,
    tx: mpsc::Sender<(usize, String)>,
}

impl Nodes {
    fn new() -> (Self, mpsc::Receiver<(usize, String)>) {
        let (tx, rx) = mpsc::channel();
        (
            Self {
                children: Vec::new(),
                tx,
            },
            rx,
        )
    }

    /// Starts `ringhost ARGS` at INFO, its lines tagged `k`.
    fn spawn(&mut self, k: usize, args: &[&str]) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringhost"))
            .args(args)
            .args(["--admin", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node");
        let out = child.stdout.take().unwrap();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((k, line)).is_err() {
                    break;
                }
            }
        });
        self.children.push(child);
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in self.children.drain(..) {
            reap(c);
        }
    }
}

#[test]
fn a_station_logging_every_visit_at_full_speed_is_held_to_a_bounded_rate() {
    // `--delay-ms 0`: thousands of visits a second, each with a tick line;
    // the log carries at most the station log rate, and says how many
    // lines it held back.
    let base = port_block(2);
    let ring = format!("127.0.0.1:{base}-{}", base + 1);
    let (mut nodes, rx) = Nodes::new();
    for i in 0..2 {
        let port = (usize::from(base) + i).to_string();
        nodes.spawn(
            i,
            &[
                "--port",
                &port,
                "--ring",
                &ring,
                "--delay-ms",
                "0",
                "--no-watch",
            ],
        );
    }
    // From the first tick on, count for 3 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, line) = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a first tick");
        if tick_seq(&line).is_some() {
            break;
        }
    }
    let end = Instant::now() + Duration::from_secs(3);
    let (mut ticks, mut held, mut bytes) = ([0u64; 2], false, 0usize);
    let mut last_seq = 0;
    while Instant::now() < end {
        if let Ok((i, line)) = rx.recv_timeout(Duration::from_millis(50)) {
            bytes += line.len() + 1;
            held |= line.contains("log lines of this station held back");
            if let Some(seq) = tick_seq(&line) {
                ticks[i] += 1;
                last_seq = last_seq.max(seq);
            }
        }
    }
    drop(nodes);
    let rate = ringhost::station::LOG_LINES_PER_SEC;
    let bound = (ringhost::station::LOG_BURST + rate * 3.5) as u64;
    assert!(
        last_seq > 1000,
        "the particle runs at full speed: seq {last_seq}"
    );
    for (i, &n) in ticks.iter().enumerate() {
        assert!(
            n <= bound,
            "node {i}: {n} tick lines in 3 s (bound {bound})"
        );
    }
    assert!(held, "the log says lines were held back");
    assert!(bytes < 200_000, "{bytes} bytes of log in 3 s");
}

#[test]
fn refusals_are_logged_with_backoff_on_both_sides() {
    // Node A's ring names B as its successor; B was started with another
    // ring. A redials every probe interval; each side logs the refusal at
    // once, then after 1 s, 2 s, 4 s … not every 120 ms.
    let base = port_block(3);
    let (a, b) = (base, base + 1);
    let (mut nodes, rx) = Nodes::new();
    for (k, ring, port) in [
        (0, format!("127.0.0.1:{a}-{}", a + 1), a),
        (1, format!("127.0.0.1:{b}-{}", b + 1), b),
    ] {
        nodes.spawn(
            k,
            &["--port", &port.to_string(), "--ring", &ring, "--no-watch"],
        );
    }
    let end = Instant::now() + Duration::from_secs(5);
    let (mut dialer, mut refuser) = (0, 0);
    while Instant::now() < end {
        if let Ok((k, line)) = rx.recv_timeout(Duration::from_millis(50)) {
            if k == 0 && line.contains("a successor refused our link") {
                assert!(line.contains("ours to"), "{line}");
                dialer += 1;
            }
            if k == 1 && line.contains("upstream connection closed") {
                refuser += 1;
            }
        }
    }
    drop(nodes);
    // About 40 refusals in 5 s; logged at 0, 1 and 3 s.
    assert!((1..=4).contains(&dialer), "dialer logged {dialer} refusals");
    assert!(
        (1..=4).contains(&refuser),
        "refuser logged {refuser} refusals"
    );
}
