//! The soak's operations, on a thread of their own (inside the operator's
//! namespace when there is one): station pushes, config writes and station
//! inputs at random nodes, each recorded with whether it was
//! acknowledged.
//!
//! - push: the `echo` station with a custom section `soak` holding a
//!   counter appended (so every push is a new module, hence a new
//!   release), as station `soak`, `ringhost push --to NODE`; acknowledged
//!   when the tool exits 0 (every live node runs it).
//! - config write: `ringhost config set soak/kJ vN --to NODE`; acknowledged
//!   when it exits 0 (the write left that node on the particle).
//! - input: `POST /v1/stations/deploy-delta/inbox` on a node's admin API,
//!   a config bus item `{"key":"in/D/N","value":"N"}` (a key of its own,
//!   so whether it arrived everywhere can be checked); acknowledged on
//!   `202`. An inbox lives in memory: a node killed before its next visit
//!   loses it.
//! - tokens (4 in 14): observations and manual blocks for the `tokens`
//!   station, see [`super::tokens`].

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::super::now;
use super::nodes::Reach;

/// The config bus station (built in), run on every node: config writes
/// and inputs go through it.
pub const CONFIG_STATION: &str = "deploy-delta";

/// Keys the config writes go to (`soak/k0` …).
pub const CONFIG_KEYS: usize = 8;

/// One operation, as sent.
#[derive(Debug, Clone)]
pub struct Op {
    /// The node it went to.
    pub node: usize,
    /// When it was sent and when its answer came (epoch seconds).
    pub sent: f64,
    /// When its answer came (or the tool was given up on).
    pub done: f64,
    /// The config key it wrote (config writes and inputs).
    pub key: String,
    /// The value it wrote, or the push's counter.
    pub value: String,
    /// Whether it was acknowledged.
    pub acked: bool,
}

/// Every operation of a run.
#[derive(Debug, Default, Clone)]
pub struct OpLog {
    /// Station pushes.
    pub pushes: Vec<Op>,
    /// Config writes, in the order sent.
    pub configs: Vec<Op>,
    /// Station inputs.
    pub inputs: Vec<Op>,
    /// Token observations, blocks and unblocks.
    pub tokens: Vec<super::tokens::TokenOp>,
}

/// Moves the calling thread into namespace `name` (its children start
/// there too).
///
/// # Errors
/// When the namespace cannot be opened or entered.
pub fn enter(name: &str) -> Result<()> {
    use std::os::fd::AsFd;
    let f = std::fs::File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("opening namespace {name}"))?;
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .with_context(|| format!("entering namespace {name}"))
}

impl Reach {
    /// A `ringhost` tool command with the key and token in its
    /// environment (run from a thread inside the namespace).
    fn tool(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("RINGHOST_CLUSTER_KEY_FILE", &self.key_file)
            .env("RINGHOST_ADMIN_TOKEN_FILE", &self.token_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Runs a tool, killing it at `within`: whether it exited 0.
    pub fn run_tool(&self, args: &[&str], within: Duration) -> Result<bool> {
        let mut child = self
            .tool(args)
            .spawn()
            .with_context(|| format!("running ringhost {}", args[0]))?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One HTTP/1.1 request to node `i`'s admin API with the admin token:
    /// the status and the body.
    ///
    /// # Errors
    /// When the node cannot be reached or answers garbage within 5 s.
    pub fn http(&self, i: usize, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let token = std::fs::read_to_string(&self.token_file)?;
        let addr = self.admin[i]
            .to_socket_addrs()?
            .next()
            .context("admin address")?;
        let within = Duration::from_secs(5);
        let mut s = TcpStream::connect_timeout(&addr, within)
            .with_context(|| format!("connecting to node {i}'s admin API {addr}"))?;
        s.set_read_timeout(Some(within))?;
        s.set_write_timeout(Some(within))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            token.trim(),
            body.len()
        )?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .with_context(|| format!("reading node {i}'s answer to {method} {path}"))?;
        let reply = String::from_utf8_lossy(&reply);
        let (head, body) = reply.split_once("\r\n\r\n").context("no end of head")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            unchunk(body)
        } else {
            body.to_owned()
        };
        Ok((status, body))
    }
}

/// The body of a chunked reply.
fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `module` with a custom section `soak` holding `counter` appended.
pub fn distinct(module: &[u8], counter: u64) -> Vec<u8> {
    const NAME: &[u8] = b"soak";
    let payload_len = 1 + NAME.len() + 8;
    let mut out = module.to_vec();
    out.push(0x00); // custom section id
    out.push(u8::try_from(payload_len).expect("small"));
    out.push(u8::try_from(NAME.len()).expect("small"));
    out.extend_from_slice(NAME);
    out.extend_from_slice(&counter.to_le_bytes());
    out
}

/// Runs operations until `stop` is set, choosing with a generator seeded
/// by `seed`: a push now and then, config writes and inputs, 0.1–0.5 s
/// apart.
///
/// # Errors
/// When the namespace cannot be entered or the station file read (an
/// operation that fails is recorded as not acknowledged, not an error).
pub fn run(reach: &Reach, seed: u64, station: &Path, stop: &AtomicBool) -> Result<OpLog> {
    if let Some(ns) = &reach.netns {
        enter(ns)?;
    }
    let module =
        std::fs::read(station).with_context(|| format!("reading station {}", station.display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = OpLog::default();
    let n = reach.ring.len();
    let mut counter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        counter += 1;
        let node = rng.random_range(0..n);
        let sent = now();
        let mut op = Op {
            node,
            sent,
            done: sent,
            key: String::new(),
            value: counter.to_string(),
            acked: false,
        };
        match rng.random_range(0..14) {
            0 => {
                let file = reach.scratch.join(format!("soak-{counter}.wasm"));
                std::fs::write(&file, distinct(&module, counter))?;
                let path = file.to_string_lossy().into_owned();
                let to = &reach.ring[node];
                let args = [
                    "push",
                    path.as_str(),
                    "--as",
                    "soak",
                    "--to",
                    to,
                    "--timeout-s",
                    "20",
                ];
                op.acked = reach.run_tool(&args, Duration::from_secs(25))?;
                let _ = std::fs::remove_file(&file);
                op.done = now();
                log.pushes.push(op);
            }
            1..=5 => {
                op.key = format!("soak/k{}", rng.random_range(0..CONFIG_KEYS));
                op.value = format!("v{counter}");
                let args = [
                    "config",
                    "set",
                    op.key.as_str(),
                    op.value.as_str(),
                    "--to",
                    &reach.ring[node],
                ];
                op.acked = reach.run_tool(&args, Duration::from_secs(20))?;
                op.done = now();
                log.configs.push(op);
            }
            10..=13 => log.tokens.push(super::tokens::op(reach, &mut rng, node)?),
            _ => {
                op.key = format!("in/{}/{counter}", counter % 10);
                let body = format!("{{\"key\":\"{}\",\"value\":\"{counter}\"}}", op.key);
                op.acked = reach
                    .http(
                        node,
                        "POST",
                        &format!("/v1/stations/{CONFIG_STATION}/inbox"),
                        &body,
                    )
                    .is_ok_and(|(code, _)| code == 202);
                op.done = now();
                log.inputs.push(op);
            }
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(100..500)));
    }
    Ok(log)
}

/// The config bus entries node `i` has applied under `prefix` (the kv
/// keys without their `cfg/` prefix, and values).
///
/// # Errors
/// When the node does not answer, or the listing is truncated.
pub fn applied(reach: &Reach, i: usize, prefix: &str) -> Result<Vec<(String, String)>> {
    let path = format!("/v1/stations/{CONFIG_STATION}/kv?prefix=cfg/{prefix}");
    let (code, body) = reach.http(i, "GET", &path, "")?;
    if code != 200 {
        bail!("node {i}: GET {path}: {code} {body}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("node {i}: GET {path}: {body}"))?;
    if v["truncated"].as_bool() == Some(true) {
        bail!("node {i}: GET {path}: listing truncated");
    }
    Ok(v["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let key = e["key"].as_str()?.strip_prefix("cfg/")?.to_owned();
                    Some((key, e["value"].as_str()?.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default())
}
