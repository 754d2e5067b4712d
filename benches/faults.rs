//! Repeats faults on an 11-node ring of real `ringhost` processes and
//! prints, per fault: detection time, time until the particle circulates
//! again, rejoin time (median and max), and failures reported against
//! faults injected.
//!
//! Run: `cargo bench --bench faults` (`-- --rounds N`, default 10 per fault).
//!
//! Faults: SIGKILL (then restart), SIGSTOP (then SIGCONT), a black-holed
//! link (an in-process proxy in front of one member; then healed). Times
//! come from the nodes' own log timestamps (one machine, one clock):
//! - detection: fault -> the predecessor logs "successor declared dead";
//! - circulating: fault -> the first tick at the faulty node's successor;
//! - rejoin: the node listens again (restart: its "node started" line;
//!   SIGCONT or healed link: the moment of healing) -> "member back".

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const NODES: usize = 11;

/// Seconds since midnight UTC, from a log line's RFC 3339 timestamp.
fn line_time(line: &str) -> Option<f64> {
    let t = line
        .split_whitespace()
        .find(|w| w.ends_with('Z') && w.contains('T'))?;
    let clock = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_of_day() -> f64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

struct Line {
    node: usize,
    at: f64,
    text: String,
}

struct Ring {
    ports: Vec<u16>,
    listen: Vec<u16>,
    ring: String,
    children: Vec<Option<Child>>,
    tx: mpsc::Sender<Line>,
    rx: mpsc::Receiver<Line>,
}

impl Drop for Ring {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Ring {
    fn spawn(&mut self, i: usize) -> Result<()> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringhost"))
            .args(["--port", &self.ports[i].to_string(), "--ring", &self.ring])
            .args(["--listen", &format!("127.0.0.1:{}", self.listen[i])])
            .args(["--delay-ms", "10"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning ringhost")?;
        let out = child.stdout.take().context("stdout")?;
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(text) = line else { break };
                let Some(at) = line_time(&text) else { continue };
                if tx.send(Line { node: i, at, text }).is_err() {
                    break;
                }
            }
        });
        self.children[i] = Some(child);
        Ok(())
    }

    fn pid(&self, i: usize) -> Pid {
        Pid::from_raw(self.children[i].as_ref().expect("running").id() as i32)
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for a line matching `pred` at or after `since`.
    fn wait(&self, since: f64, within: Duration, pred: impl Fn(&Line) -> bool) -> Option<f64> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.rx.recv_timeout(left).ok()?;
            if line.at >= since && pred(&line) {
                return Some(line.at);
            }
        }
    }

    /// Drops pending lines, counting "declared dead" ones by member.
    fn drain(&self, downs: &mut HashMap<usize, u64>) {
        while let Ok(l) = self.rx.try_recv() {
            count_down(&l, downs);
        }
    }
}

fn member_of(text: &str) -> Option<usize> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("member="))
        .and_then(|v| v.parse().ok())
}

fn count_down(l: &Line, downs: &mut HashMap<usize, u64>) {
    if l.text.contains("successor declared dead")
        && let Some(m) = member_of(&l.text)
    {
        *downs.entry(m).or_default() += 1;
    }
}

/// A proxy in front of one member: forwards, or black-holes while `cut`.
fn start_proxy(port: u16, target: u16, cut: Arc<AtomicBool>) -> Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            for (mut r, mut w) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let cut = cut.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if !cut.load(Ordering::SeqCst) && w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = w.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    Ok(())
}

#[derive(Default)]
struct Figures {
    detect: Vec<f64>,
    circulate: Vec<f64>,
    rejoin: Vec<f64>,
    injected: u64,
    reported: u64,
    false_failures: u64,
}

fn med_max(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!("{:.0} / {:.0}", s[s.len() / 2] * 1e3, s[s.len() - 1] * 1e3)
}

fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(10);
    let seed = u64::from(std::process::id()) ^ (now_of_day() * 1e6) as u64;
    // Below the kernel's ephemeral range (32768+).
    let base = 20_000 + (seed % 10_000) as u16;
    let ports: Vec<u16> = (0..NODES as u16).map(|i| base + i).collect();
    // Member 5 sits behind a proxy on its ring port; it listens on another.
    let proxied = 5;
    let mut listen = ports.clone();
    listen[proxied] = base + 100;
    let cut = Arc::new(AtomicBool::new(false));
    start_proxy(ports[proxied], listen[proxied], cut.clone())?;
    let (tx, rx) = mpsc::channel();
    let mut ring = Ring {
        ring: format!("127.0.0.1:{}-{}", ports[0], ports[NODES - 1]),
        ports,
        listen,
        children: (0..NODES).map(|_| None).collect(),
        tx,
        rx,
    };
    for i in 0..NODES {
        ring.spawn(i)?;
    }
    // Ready when the last node has ticked.
    if ring
        .wait(0.0, Duration::from_secs(30), |l| {
            l.node == NODES - 1 && l.text.contains(" tick ")
        })
        .is_none()
    {
        bail!("the ring did not form");
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut downs = HashMap::new();
    ring.drain(&mut downs);

    let mut table: Vec<(&str, Figures)> = Vec::new();
    for fault in ["kill", "stop", "cut"] {
        let mut f = Figures::default();
        let mut before: HashMap<usize, u64> = HashMap::new();
        ring.drain(&mut before);
        for round in 0..rounds {
            // A different member each round (the proxied one for cuts),
            // never member 0's neighbours twice in a row.
            let k = if fault == "cut" {
                proxied
            } else {
                1 + (round * 3) % (NODES - 1)
            };
            let succ = (k + 1) % NODES;
            let pred = (k + NODES - 1) % NODES;
            let t0 = now_of_day();
            match fault {
                "kill" => ring.kill9(k),
                "stop" => kill(ring.pid(k), Signal::SIGSTOP)?,
                _ => cut.store(true, Ordering::SeqCst),
            }
            f.injected += 1;
            let detected = ring.wait(t0, Duration::from_secs(5), |l| {
                l.node == pred
                    && l.text.contains("successor declared dead")
                    && member_of(&l.text) == Some(k)
            });
            if let Some(t) = detected {
                f.detect.push(t - t0);
                f.reported += 1;
            }
            if let Some(t) = ring.wait(t0, Duration::from_secs(5), |l| {
                l.node == succ && l.text.contains(" tick ")
            }) {
                f.circulate.push(t - t0);
            }
            if std::env::var_os("FAULTS_VERBOSE").is_some() {
                eprintln!(
                    "{fault} round {round}: member {k}, detected {:?}, circulating {:?}",
                    detected.map(|t| t - t0),
                    f.circulate.last()
                );
            }
            // Heal, then time the rejoin.
            let t1 = now_of_day();
            match fault {
                "kill" => ring.spawn(k)?,
                "stop" => kill(ring.pid(k), Signal::SIGCONT)?,
                _ => cut.store(false, Ordering::SeqCst),
            }
            // A restarted node is listening once it logs "node started".
            let listening = if fault == "kill" {
                ring.wait(t1, Duration::from_secs(10), |l| {
                    l.node == k && l.text.contains("node started")
                })
                .unwrap_or(t1)
            } else {
                t1
            };
            let rejoined = ring.wait(listening, Duration::from_secs(10), |l| {
                l.text.contains("member back") && member_of(&l.text) == Some(k)
            });
            if let Some(t) = rejoined {
                f.rejoin.push(t - listening);
            }
            // Let the ring settle a lap or two before the next fault.
            std::thread::sleep(Duration::from_millis(400));
            let mut round_downs = HashMap::new();
            ring.drain(&mut round_downs);
            f.false_failures += round_downs
                .iter()
                .filter(|(m, _)| **m != k)
                .map(|(_, c)| *c)
                .sum::<u64>();
        }
        table.push((fault, f));
    }

    println!(
        "{NODES} nodes, {rounds} rounds per fault, failure timeout 500 ms, 10 ms hold per stop"
    );
    println!(
        "{:<6} {:>16} {:>18} {:>14} {:>9} {:>9} {:>7}",
        "fault",
        "detect ms med/max",
        "circulate ms med/max",
        "rejoin ms med/max",
        "injected",
        "reported",
        "false"
    );
    for (name, f) in &table {
        println!(
            "{:<6} {:>16} {:>18} {:>14} {:>9} {:>9} {:>7}",
            name,
            med_max(&f.detect),
            med_max(&f.circulate),
            med_max(&f.rejoin),
            f.injected,
            f.reported,
            f.false_failures
        );
    }
    Ok(())
}
