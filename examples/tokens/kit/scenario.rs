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
pub use super::report::{NodeRow, Outcome};

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

/// The servers beside the nodes: ring-guarded, per-node.
struct Servers {
    ring: Vec<App>,
    per_node: Vec<App>,
}

impl Servers {
    /// Two servers beside each node, the ring-guarded ones synced.
    async fn start(p: &Params, nodes: &Nodes) -> Result<Self> {
        let mut s = Self {
            ring: Vec::new(),
            per_node: Vec::new(),
        };
        for i in 0..p.nodes {
            let ring = Guard::Ring {
                node: nodes.ring_addr(i),
                udp: nodes.udp_addr(i),
                station: STATION.into(),
            };
            let per_node = Guard::PerNode {
                threshold: p.per_node_threshold,
                window: WINDOW,
            };
            for (guard, list) in [(ring, &mut s.ring), (per_node, &mut s.per_node)] {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                list.push(
                    App::start(
                        AppConfig {
                            guard,
                            flush: FLUSH,
                        },
                        listener,
                    )
                    .await?,
                );
            }
        }
        for a in &s.ring {
            a.wait_synced(Duration::from_secs(30)).await?;
        }
        Ok(s)
    }

    /// Sends every planned request, at its time, to both servers beside
    /// its node; the answers in plan order.
    async fn send(&self, planned: Vec<Planned>) -> Result<Vec<Answered>> {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let start = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for r in planned {
            tokio::time::sleep_until(start + r.at).await;
            let (ra, pa) = (self.ring[r.app].addr(), self.per_node[r.app].addr());
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
        Ok(answers)
    }

    async fn shutdown(self) {
        for a in self.ring.into_iter().chain(self.per_node) {
            a.shutdown().await;
        }
    }
}

/// The crossing as the load counts it: the abusive request that makes the
/// count reach `spread_min` at `spread_nodes` distinct nodes.
struct Crossing {
    /// Its number among the abusive requests, 1-based.
    request: usize,
    /// Its time in the plan.
    at: Duration,
    /// When it was answered.
    done: Instant,
    done_unix_ms: u64,
}

fn crossing(p: &Params, answers: &[Answered]) -> Option<Crossing> {
    let mut seen = std::collections::BTreeSet::new();
    let abusive = answers.iter().filter(|a| a.planned.abusive);
    for (k, a) in abusive.enumerate() {
        seen.insert(a.planned.app);
        if k + 1 >= p.spread_min() as usize && seen.len() >= p.spread_nodes() {
            return Some(Crossing {
                request: k + 1,
                at: a.planned.at,
                done: a.done,
                done_unix_ms: a.done_unix_ms,
            });
        }
    }
    None
}

/// The mean of the nodes' lap p50, ms (0 when none answers).
async fn mean_lap_ms(nodes: &Nodes) -> f64 {
    let mut laps = Vec::new();
    for i in 0..nodes.len() {
        laps.extend(nodes.lap_ms(i).await);
    }
    if laps.is_empty() {
        0.0
    } else {
        laps.iter().sum::<f64>() / laps.len() as f64
    }
}

/// Runs the story and says what happened. Every process and task it
/// starts ends before it returns (or when its future is dropped).
///
/// # Errors
/// Bad parameters, the ring did not form, a server could not start, a
/// request got no answer.
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
    let servers = Servers::start(&p, &nodes).await?;
    let abusive = format!(
        "abuser-{:08x}",
        StdRng::seed_from_u64(!p.seed).random::<u32>()
    );
    let answers = servers.send(plan(&p, &abusive)).await?;
    let crossed = crossing(&p, &answers).context("the load never crossed the rule")?;

    // Every ring-guarded server learns of the block (bounded); every
    // report is counted; then a few laps more, so a late block of a
    // legitimate token would show.
    let lap = Duration::from_secs_f64(mean_lap_ms(&nodes).await.max(10.0) / 1e3);
    until((lap * 40).max(Duration::from_secs(15)), async || {
        servers.ring.iter().all(|a| a.blocked(&abusive).is_some())
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

    let outcome = Outcome::new(
        p,
        &servers.ring,
        &answers,
        abusive,
        &crossed,
        mean_lap_ms(&nodes).await,
        (observations, reported),
    );
    servers.shutdown().await;
    drop(nodes);
    Ok(outcome)
}

impl Outcome {
    /// What the answers and the ring-guarded servers show.
    fn new(
        params: Params,
        ring: &[App],
        answers: &[Answered],
        abusive: String,
        crossed: &Crossing,
        lap_ms: f64,
        observations: (u64, u64),
    ) -> Self {
        let mut rows = Vec::new();
        let mut block_info = None;
        let mut block_made_after_ms = None;
        for (i, app) in ring.iter().enumerate() {
            let mine = answers
                .iter()
                .filter(|a| a.planned.abusive && a.planned.app == i);
            let b = app.blocked(&abusive);
            if let Some(b) = &b
                && block_info.is_none()
            {
                block_info = Some(b.info.clone());
                let since = b.expires_unix_ms as i64 - (BLOCK_TTL_S * 1000) as i64;
                block_made_after_ms = Some(since - crossed.done_unix_ms as i64);
            }
            rows.push(NodeRow {
                abuse_sent: mine.clone().count() as u32,
                per_node_refused: mine.clone().filter(|a| a.per_node == 403).count() as u32,
                ring_refused: mine.filter(|a| a.ring == 403).count() as u32,
                blocked_after: b.map(|b| b.at.saturating_duration_since(crossed.done)),
            });
        }
        let legit = answers.iter().filter(|a| !a.planned.abusive);
        let mut legit_blocked: Vec<String> = ring
            .iter()
            .flat_map(|a| a.blocked_tokens())
            .filter(|t| *t != abusive)
            .collect();
        legit_blocked.sort();
        legit_blocked.dedup();
        Self {
            abusive,
            lap_ms,
            crossing_request: crossed.request,
            crossing_at: crossed.at,
            block_info,
            block_made_after_ms,
            rows,
            legit_requests: legit.clone().count() as u32,
            legit_refused_per_node: legit.clone().filter(|a| a.per_node == 403).count() as u32,
            legit_refused_ring: legit.filter(|a| a.ring == 403).count() as u32,
            legit_blocked,
            observations,
            reports_dropped: ring.iter().map(|a| a.counts().reports_dropped).sum(),
            params,
        }
    }
}
