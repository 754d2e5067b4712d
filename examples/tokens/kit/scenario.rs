//! The tokens demo's story, shared by `tokens-demo` and
//! `tests/it/tokens_demo.rs`: a ring of node processes running the
//! `tokens` station, two application servers beside each node (one
//! enforcing the ring's `blocked` set, one counting on its own as
//! fail2ban does), and a load that sends the same requests to both.
//!
//! The load: one abusive token sent `threshold − 1` times to every server
//! (round robin, one request every [`Params::abuse_interval`]), so no
//! server on its own ever sees it `threshold` times; and legitimate
//! tokens, each sent at most [`Params::legit_max`] times in all, spread
//! round robin from a random server, so each stays under the ring's rule
//! and under every server's threshold.
//!
//! The ring's rule is the station's spread rule: `spread_nodes` = n/2 + 1
//! distinct nodes and `spread_min` = half the abusive requests, so the
//! fleet-wide count crosses the rule halfway through the attack (the
//! *crossing*: the request that makes the fleet-wide count reach
//! `spread_min` at `spread_nodes` nodes, as the load counts them). The
//! other rules are off (`total=0`).
//!
//! Measured: when each ring-guarded server learnt of the block (from its
//! node's event stream), from the crossing, in ms and in laps (the lap
//! p50 the nodes report); when the station made the block (its `since`,
//! which is the entry's expiry − `block_ttl_s`); requests refused on each
//! side; legitimate tokens in any blocked set.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;

use super::app::{App, AppConfig, Guard, unix_ms};
use super::nodes::{Nodes, RingSpec};

/// Life of a rule block, s (the station's `block_ttl_s`): longer than
/// any run, so a block seen is a block kept.
pub const BLOCK_TTL_S: u64 = 600;
/// Window of the per-node servers (the station's default window is the
/// same: 6 buckets of 10 s).
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long reports wait to fill a datagram.
pub const FLUSH: Duration = Duration::from_millis(5);
/// Deadline of one request to an application server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The station's name.
const STATION: &str = "tokens";

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Nodes in the ring (and application servers of each kind).
    pub nodes: usize,
    /// The per-node servers refuse a token seen this many times in
    /// [`WINDOW`]; the abusive token is sent `threshold − 1` times to each.
    pub per_node_threshold: u32,
    /// The particle's hold at each stop (`--delay-ms`).
    pub delay_ms: u64,
    /// Time between two abusive requests.
    pub abuse_interval: Duration,
    /// Legitimate tokens.
    pub legit_tokens: usize,
    /// Seed of the legitimate load.
    pub seed: u64,
    /// The `ringhost` executable.
    pub ringhost: PathBuf,
    /// Where the node logs go.
    pub log_dir: PathBuf,
}

impl Params {
    /// Abusive requests to each server.
    pub fn abuse_per_node(&self) -> u32 {
        self.per_node_threshold - 1
    }
    /// Abusive requests in all.
    pub fn abuse_total(&self) -> u32 {
        self.abuse_per_node() * self.nodes as u32
    }
    /// The ring's rule: distinct nodes.
    pub fn spread_nodes(&self) -> usize {
        self.nodes / 2 + 1
    }
    /// The ring's rule: fleet-wide count (half the attack).
    pub fn spread_min(&self) -> u32 {
        self.abuse_total() / 2
    }
    /// Most requests of one legitimate token (4/5 of the rule).
    pub fn legit_max(&self) -> u32 {
        self.spread_min() * 4 / 5
    }
    /// The tokens station's `--station` spec.
    pub fn station_spec(&self) -> String {
        format!(
            "{STATION}:spread_nodes={},spread_min={},total=0,block_ttl_s={BLOCK_TTL_S}",
            self.spread_nodes(),
            self.spread_min()
        )
    }

    fn check(&self) -> Result<()> {
        ensure!(self.nodes >= 3, "at least 3 nodes");
        ensure!(
            self.per_node_threshold >= 3,
            "a per-node threshold of at least 3"
        );
        ensure!(
            self.spread_min() as usize >= self.nodes,
            "the attack must cross the rule after one request to every node"
        );
        // Round robin keeps a legitimate token under every server's
        // threshold.
        ensure!(
            self.legit_max().div_ceil(self.nodes as u32) < self.per_node_threshold,
            "legitimate tokens would reach the per-node threshold"
        );
        Ok(())
    }
}

/// One request of the load.
#[derive(Debug, Clone)]
struct Planned {
    at: Duration,
    token: String,
    app: usize,
    abusive: bool,
}

/// What one request got.
#[derive(Debug, Clone)]
struct Answered {
    planned: Planned,
    ring: u16,
    per_node: u16,
    done: Instant,
    done_unix_ms: u64,
}

/// One node's side of the outcome.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// Abusive requests sent to each of its servers.
    pub abuse_sent: u32,
    /// Of those, refused by the per-node server.
    pub per_node_refused: u32,
    /// Of those, refused by the ring-guarded server.
    pub ring_refused: u32,
    /// When its ring-guarded server learnt of the block, from the
    /// crossing (`None`: never).
    pub blocked_after: Option<Duration>,
}

/// What a run showed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The parameters.
    pub params: Params,
    /// The abusive token.
    pub abusive: String,
    /// Lap p50 over the nodes after the attack, ms.
    pub lap_ms: f64,
    /// The crossing request's number among the abusive ones (1-based).
    pub crossing_request: usize,
    /// From the start of the load to the crossing.
    pub crossing_at: Duration,
    /// The ring's block entry (its reason).
    pub block_info: Option<String>,
    /// From the crossing to the station making the block (its `since`),
    /// ms (negative: clock granularity).
    pub block_made_after_ms: Option<i64>,
    /// Per node.
    pub rows: Vec<NodeRow>,
    /// Legitimate requests sent (to each kind of server).
    pub legit_requests: u32,
    /// Legitimate requests refused by per-node servers.
    pub legit_refused_per_node: u32,
    /// Legitimate requests refused by ring-guarded servers.
    pub legit_refused_ring: u32,
    /// Legitimate tokens in any ring-guarded server's blocked set at the
    /// end.
    pub legit_blocked: Vec<String>,
    /// Observations in node 0's view of the ring's window at the end, and
    /// the number reported.
    pub observations: (u64, u64),
    /// Reports the servers could not send.
    pub reports_dropped: u64,
}

impl Outcome {
    /// Nodes whose ring-guarded server blocked the abusive token.
    pub fn ring_blocked_nodes(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.blocked_after.is_some())
            .count()
    }
    /// Nodes whose per-node server refused the abusive token at least once.
    pub fn per_node_blocked_nodes(&self) -> usize {
        self.rows.iter().filter(|r| r.per_node_refused > 0).count()
    }
    /// From the crossing to the last node learning of the block.
    pub fn last_blocked(&self) -> Option<Duration> {
        self.rows.iter().map(|r| r.blocked_after).max().flatten()
    }

    fn laps(&self, ms: f64) -> String {
        if self.lap_ms > 0.0 {
            format!("{:.2} laps", ms / self.lap_ms)
        } else {
            "? laps".into()
        }
    }

    /// The side-by-side report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let p = &self.params;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tokens demo: {} nodes (lap p50 {:.1} ms), abusive token {:?} sent {} times to each \
             app server ({} in all, one every {} ms), {} legitimate tokens ({} requests, at most \
             {} each); every request goes to both servers beside its node",
            p.nodes,
            self.lap_ms,
            self.abusive,
            p.abuse_per_node(),
            p.abuse_total(),
            p.abuse_interval.as_millis(),
            p.legit_tokens,
            self.legit_requests,
            p.legit_max()
        );
        let _ = writeln!(
            s,
            "  per-node (fail2ban's model): a server refuses a token it saw {} times in {} s",
            p.per_node_threshold,
            WINDOW.as_secs()
        );
        let _ = writeln!(
            s,
            "  ring (tokens station):       blocked fleet-wide once seen >= {} times at >= {} \
             nodes in 60 s",
            p.spread_min(),
            p.spread_nodes()
        );
        let _ = writeln!(
            s,
            "fleet-wide crossing: abusive request #{} of {}, {} ms into the attack",
            self.crossing_request,
            p.abuse_total(),
            self.crossing_at.as_millis()
        );
        let _ = writeln!(
            s,
            "\nnode  abusive sent  per-node refused  ring refused  ring blocked after the crossing"
        );
        for (i, r) in self.rows.iter().enumerate() {
            let after = match r.blocked_after {
                Some(d) => {
                    let ms = d.as_secs_f64() * 1e3;
                    format!("{ms:7.1} ms  ({})", self.laps(ms))
                }
                None => "never".into(),
            };
            let _ = writeln!(
                s,
                "{i:>4}  {:>12}  {:>16}  {:>12}  {after}",
                r.abuse_sent, r.per_node_refused, r.ring_refused
            );
        }
        let _ = writeln!(s);
        if let (Some(info), Some(made)) = (&self.block_info, self.block_made_after_ms) {
            let last = self.last_blocked().map(|d| d.as_secs_f64() * 1e3);
            let _ = writeln!(
                s,
                "the ring's block: \"{info}\"\n  made by the station {made} ms ({}) after the \
                 crossing; on every node {} after the block",
                self.laps(made as f64),
                match last {
                    Some(l) if self.ring_blocked_nodes() == p.nodes => {
                        let d = l - made as f64;
                        format!("{d:.1} ms ({})", self.laps(d))
                    }
                    _ => "not yet".into(),
                }
            );
        } else {
            let _ = writeln!(s, "the ring did not block the abusive token");
        }
        let _ = writeln!(
            s,
            "legitimate: {} requests; refused per-node {}, ring {}; legitimate tokens in a \
             blocked set: {}",
            self.legit_requests,
            self.legit_refused_per_node,
            self.legit_refused_ring,
            if self.legit_blocked.is_empty() {
                "none".to_string()
            } else {
                self.legit_blocked.join(", ")
            }
        );
        let _ = writeln!(
            s,
            "reports: {} observations in the ring's window of {} reported ({} reports dropped)",
            self.observations.0, self.observations.1, self.reports_dropped
        );
        let abusive_ring: u32 = self.rows.iter().map(|r| r.ring_refused).sum();
        let abusive_per_node: u32 = self.rows.iter().map(|r| r.per_node_refused).sum();
        let _ = writeln!(
            s,
            "\nper-node counting: blocked the abusive token on {}/{} nodes, refused {} of its {} \
             requests",
            self.per_node_blocked_nodes(),
            p.nodes,
            abusive_per_node,
            p.abuse_total()
        );
        let _ = writeln!(
            s,
            "the ring:          blocked it on {}/{} nodes{}, refused {} of its {} requests; \
             legitimate tokens blocked: {}",
            self.ring_blocked_nodes(),
            p.nodes,
            match self.last_blocked() {
                Some(d) if self.ring_blocked_nodes() == p.nodes => {
                    let ms = d.as_secs_f64() * 1e3;
                    format!(" within {ms:.1} ms ({}) of the crossing", self.laps(ms))
                }
                _ => String::new(),
            },
            abusive_ring,
            p.abuse_total(),
            self.legit_blocked.len()
        );
        s
    }
}

/// The load's requests, ordered by time.
fn plan(p: &Params, abusive: &str) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(p.seed);
    let mut out = Vec::new();
    let total = p.abuse_total();
    for k in 0..total {
        out.push(Planned {
            at: p.abuse_interval * k,
            token: abusive.to_string(),
            app: k as usize % p.nodes,
            abusive: true,
        });
    }
    let span = p.abuse_interval * total;
    let max = p.legit_max().max(1);
    for j in 0..p.legit_tokens {
        let token = format!("customer-{j:03}-{:08x}", rng.random::<u32>());
        let count = rng.random_range(max / 4..=max).max(1);
        let first = rng.random_range(0..p.nodes);
        for m in 0..count {
            out.push(Planned {
                at: span.mul_f64(rng.random::<f64>()),
                token: token.clone(),
                app: (first + m as usize) % p.nodes,
                abusive: false,
            });
        }
    }
    out.sort_by_key(|r| r.at);
    out
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// GET with the token in `x-api-key`: the status code (0: no answer).
async fn ask(client: &HttpClient, app: std::net::SocketAddr, token: &str) -> u16 {
    let Ok(req) = hyper::Request::get(format!("http://{app}/resource"))
        .header("x-api-key", token)
        .body(Empty::new())
    else {
        return 0;
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) => resp.status().as_u16(),
        _ => 0,
    }
}

/// Node 0's count of observations in the ring's window (kv `status`).
async fn window_observations(nodes: &Nodes) -> Option<u64> {
    let c = ringhost::admin::client::connect(&nodes.ring_addr(0), None)
        .await
        .ok()?;
    let entry: ringhost::admin::api::KvEntry = c
        .call(
            hyper::Method::GET,
            &format!("/v1/stations/{STATION}/kv/status"),
            None,
            Duration::from_secs(5),
        )
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(entry.value.as_deref()?).ok()?;
    v["window"]["observations"].as_u64()
}

/// Waits until `ok` or `within` passes; whether it held.
async fn until(within: Duration, mut ok: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ok().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the story and says what happened. Every process and task it
/// starts ends before it returns (or when its future is dropped).
///
/// # Errors
/// Bad parameters, the ring did not form, a server could not start.
pub async fn run(p: Params) -> Result<Outcome> {
    p.check()?;
    let mut nodes = Nodes::start(&RingSpec {
        bin: p.ringhost.clone(),
        n: p.nodes,
        stations: vec![p.station_spec()],
        delay_ms: p.delay_ms,
        log_dir: p.log_dir.clone(),
    })?;
    nodes.wait_ring().await?;

    let mut ring_apps = Vec::new();
    let mut per_node_apps = Vec::new();
    for i in 0..p.nodes {
        let ring = AppConfig {
            guard: Guard::Ring {
                node: nodes.ring_addr(i),
                udp: nodes.udp_addr(i),
                station: STATION.into(),
            },
            flush: FLUSH,
        };
        let per_node = AppConfig {
            guard: Guard::PerNode {
                threshold: p.per_node_threshold,
                window: WINDOW,
            },
            flush: FLUSH,
        };
        ring_apps.push(App::start(ring, TcpListener::bind("127.0.0.1:0").await?).await?);
        per_node_apps.push(App::start(per_node, TcpListener::bind("127.0.0.1:0").await?).await?);
    }
    for a in &ring_apps {
        a.wait_synced(Duration::from_secs(30)).await?;
    }

    let abusive = format!(
        "abuser-{:08x}",
        StdRng::seed_from_u64(!p.seed).random::<u32>()
    );
    let planned = plan(&p, &abusive);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for r in planned {
        tokio::time::sleep_until(start + r.at).await;
        let (ra, pa) = (ring_apps[r.app].addr(), per_node_apps[r.app].addr());
        let client = client.clone();
        tasks.spawn(async move {
            let (ring, per_node) =
                tokio::join!(ask(&client, ra, &r.token), ask(&client, pa, &r.token));
            Answered {
                planned: r,
                ring,
                per_node,
                done: Instant::now(),
                done_unix_ms: unix_ms(),
            }
        });
    }
    let mut answers = Vec::new();
    while let Some(a) = tasks.join_next().await {
        answers.push(a.context("a request task")?);
    }
    answers.sort_by_key(|a| a.planned.at);
    ensure!(
        answers.iter().all(|a| a.ring != 0 && a.per_node != 0),
        "some requests got no answer"
    );

    // The crossing, as the load counts it.
    let mut seen = std::collections::BTreeSet::new();
    let mut count = 0;
    let mut crossing = None;
    for a in answers.iter().filter(|a| a.planned.abusive) {
        count += 1;
        seen.insert(a.planned.app);
        if count >= p.spread_min() && seen.len() >= p.spread_nodes() {
            crossing = Some((count as usize, a.planned.at, a.done, a.done_unix_ms));
            break;
        }
    }
    let (crossing_request, crossing_at, crossed, crossed_unix_ms) =
        crossing.context("the load never crossed the rule")?;

    // Every ring-guarded server learns of the block (bounded), then a few
    // laps more so a late block of a legitimate token would show.
    let lap_ms = nodes.lap_ms(0).await.unwrap_or(0.0);
    let lap = Duration::from_secs_f64(lap_ms.max(10.0) / 1e3);
    let blocked_everywhere = (lap * 40).max(Duration::from_secs(15));
    until(blocked_everywhere, async || {
        ring_apps.iter().all(|a| a.blocked(&abusive).is_some())
    })
    .await;
    let reported = answers.len() as u64;
    let mut observations = 0;
    until((lap * 20).max(Duration::from_secs(10)), async || {
        observations = window_observations(&nodes).await.unwrap_or(0);
        observations >= reported
    })
    .await;
    tokio::time::sleep((lap * 3).max(Duration::from_millis(300))).await;

    let mut lap_sum = 0.0;
    let mut laps = 0;
    for i in 0..p.nodes {
        if let Some(l) = nodes.lap_ms(i).await {
            lap_sum += l;
            laps += 1;
        }
    }
    let lap_ms = if laps > 0 {
        lap_sum / laps as f64
    } else {
        lap_ms
    };

    let mut rows = Vec::new();
    let mut block_info = None;
    let mut block_made_after_ms = None;
    for (i, app) in ring_apps.iter().enumerate() {
        let mine = answers
            .iter()
            .filter(|a| a.planned.abusive && a.planned.app == i);
        let b = app.blocked(&abusive);
        if let Some(b) = &b
            && block_info.is_none()
        {
            block_info = Some(b.info.clone());
            let since = b.expires_unix_ms as i64 - (BLOCK_TTL_S * 1000) as i64;
            block_made_after_ms = Some(since - crossed_unix_ms as i64);
        }
        rows.push(NodeRow {
            abuse_sent: mine.clone().count() as u32,
            per_node_refused: mine.clone().filter(|a| a.per_node == 403).count() as u32,
            ring_refused: mine.filter(|a| a.ring == 403).count() as u32,
            blocked_after: b.map(|b| b.at.saturating_duration_since(crossed)),
        });
    }
    let legit = answers.iter().filter(|a| !a.planned.abusive);
    let mut legit_blocked: Vec<String> = ring_apps
        .iter()
        .flat_map(|a| a.blocked_tokens())
        .filter(|t| *t != abusive)
        .collect();
    legit_blocked.sort();
    legit_blocked.dedup();
    let reports_dropped = ring_apps.iter().map(|a| a.counts().reports_dropped).sum();
    let outcome = Outcome {
        abusive,
        lap_ms,
        crossing_request,
        crossing_at,
        block_info,
        block_made_after_ms,
        rows,
        legit_requests: legit.clone().count() as u32,
        legit_refused_per_node: legit.clone().filter(|a| a.per_node == 403).count() as u32,
        legit_refused_ring: legit.filter(|a| a.ring == 403).count() as u32,
        legit_blocked,
        observations: (observations, reported),
        reports_dropped,
        params: p,
    };
    for a in ring_apps.into_iter().chain(per_node_apps) {
        a.shutdown().await;
    }
    drop(nodes);
    Ok(outcome)
}
