//! The token-correlation station in the soak: observations and manual
//! blocks flow during the chaos, and at the end every node must enforce
//! the same blocklist, one that follows from what was acknowledged.
//!
//! - observations: `POST /v1/stations/tokens/inbox` at a random node,
//!   three observations of that node's own legitimate tokens
//!   (`legit-NODE-J`, seen at no other node) and [`SPREAD_PER_POST`] of
//!   the abusive token [`SPREAD`]; acknowledged on `202`.
//! - manual blocks and unblocks of `man0`…`man3`: `ringhost tokens
//!   block|unblock`, acknowledged when the tool exits 0 (every live member
//!   agreed).
//!
//! Invariants (see [`problems`]): every node's `blocked` set is the same;
//! no legitimate token is blocked (each is seen at one node, under the
//! spread rule's node count, and far under `total`); [`SPREAD`] is
//! blocked everywhere when the acknowledged observations that survived
//! (their node not killed or restarted within [`MERGE_WINDOW`] s of the
//! post) came from at least [`SPREAD_NODES`] nodes and number at least
//! [`SPREAD_MIN`]; each `manK` is blocked or not as its last acknowledged
//! operation left it, or as a later unacknowledged one did.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::Rng;
use rand::rngs::StdRng;

use super::super::now;
use super::check::FaultSpan;
use super::nodes::Reach;

/// The station's name on the nodes.
pub const STATION: &str = "tokens";
/// Distinct nodes the spread rule asks for.
pub const SPREAD_NODES: usize = 4;
/// Observations (fleet-wide, in the window) the spread rule asks for.
pub const SPREAD_MIN: u32 = 40;
/// The abusive token, observed at every node.
pub const SPREAD: &str = "spread";
/// Observations of [`SPREAD`] per post.
pub const SPREAD_PER_POST: u32 = 2;
/// Tokens blocked and unblocked by hand.
pub const MANUAL: usize = 4;
/// Seconds after its post within which a node's kill or restart may have
/// lost an observation (its inbox and pending observations live in
/// memory until its next stops).
pub const MERGE_WINDOW: f64 = 10.0;

/// The `--station` argument: the spread rule on, a window of two hours
/// (so nothing ages out during a soak) and blocks that outlive it.
pub fn station_arg() -> String {
    format!(
        "{STATION}:spread_nodes={SPREAD_NODES},spread_min={SPREAD_MIN},bucket_s=3600,buckets=2,block_ttl_s=86400"
    )
}

/// What a token operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Posted observations.
    Observe,
    /// `tokens block`.
    Block,
    /// `tokens unblock`.
    Unblock,
}

/// One token operation, as sent.
#[derive(Debug, Clone)]
pub struct TokenOp {
    /// The node it went to.
    pub node: usize,
    /// When it was sent and when its answer came (epoch seconds).
    pub sent: f64,
    /// When its answer came (or the tool was given up on).
    pub done: f64,
    /// What it was.
    pub kind: Kind,
    /// The manual token (blocks and unblocks), empty for observations.
    pub token: String,
    /// Whether it was acknowledged.
    pub acked: bool,
}

/// Sends one random token operation to `node`.
///
/// # Errors
/// When the tool cannot be started.
pub fn op(reach: &Reach, rng: &mut StdRng, node: usize) -> Result<TokenOp> {
    let sent = now();
    let mut op = TokenOp {
        node,
        sent,
        done: sent,
        kind: Kind::Observe,
        token: String::new(),
        acked: false,
    };
    if rng.random_range(0..4) == 0 {
        op.token = format!("man{}", rng.random_range(0..MANUAL));
        let verb = if rng.random_bool(0.6) {
            op.kind = Kind::Block;
            "block"
        } else {
            op.kind = Kind::Unblock;
            "unblock"
        };
        let args = [
            "tokens",
            verb,
            op.token.as_str(),
            "--to",
            &reach.ring[node],
            "--timeout-s",
            "10",
        ];
        op.acked = reach.run_tool(&args, Duration::from_secs(15))?;
    } else {
        let mut body = String::new();
        for _ in 0..3 {
            body.push_str(&format!("o legit-{node}-{}\n", rng.random_range(0..5)));
        }
        for _ in 0..SPREAD_PER_POST {
            body.push_str(&format!("o {SPREAD}\n"));
        }
        op.acked = reach
            .http(
                node,
                "POST",
                &format!("/v1/stations/{STATION}/inbox"),
                &body,
            )
            .is_ok_and(|(code, _)| code == 202);
    }
    op.done = now();
    Ok(op)
}

/// The tokens in node `i`'s `blocked` set.
///
/// # Errors
/// When the node does not answer, or the listing is not whole.
pub fn blocked(reach: &Reach, i: usize) -> Result<BTreeSet<String>> {
    let path = format!("/v1/stations/{STATION}/sets/blocked?limit=100000");
    let (code, body) = reach.http(i, "GET", &path, "")?;
    if code != 200 {
        bail!("node {i}: GET {path}: {code} {body}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("node {i}: GET {path}: {body}"))?;
    let keys: BTreeSet<String> = v["entries"]
        .as_array()
        .context("no entries")?
        .iter()
        .filter_map(|e| e["key"].as_str().map(str::to_owned))
        .collect();
    if v["total"].as_u64() != Some(keys.len() as u64) {
        bail!("node {i}: GET {path}: listing not whole: {body}");
    }
    Ok(keys)
}

/// What the token operations add up to: the nodes and observations of
/// [`SPREAD`] that survived, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Findings {
    /// Distinct nodes with a surviving acknowledged observation post.
    pub spread_nodes: usize,
    /// Surviving acknowledged observations of [`SPREAD`].
    pub spread_seen: u32,
    /// Whether [`SPREAD`] had to be blocked everywhere.
    pub spread_due: bool,
}

/// The invariants above, on every node's `blocked` set (`state[i]`):
/// a list of what does not hold (empty when all do).
pub fn problems(
    ops: &[TokenOp],
    state: &[BTreeSet<String>],
    spans: &[FaultSpan],
) -> (Vec<String>, Findings) {
    let mut problems = Vec::new();
    if let Some(first) = state.first() {
        for (i, s) in state.iter().enumerate().skip(1) {
            if s != first {
                problems.push(format!(
                    "node {i} blocks {s:?}, node 0 blocks {first:?}: the blocklists differ"
                ));
            }
        }
    }
    for (i, s) in state.iter().enumerate() {
        let legit: Vec<&String> = s.iter().filter(|t| t.starts_with("legit-")).collect();
        if !legit.is_empty() {
            problems.push(format!(
                "node {i} blocks legitimate tokens {legit:?} (each seen at one node only)"
            ));
        }
    }
    // The spread token: what the ring must have seen.
    let mut findings = Findings::default();
    let mut nodes = BTreeSet::new();
    for op in ops.iter().filter(|o| o.kind == Kind::Observe && o.acked) {
        let lost = spans.iter().any(|s| {
            (s.kind == "SIGKILL" || s.kind == "restart")
                && s.explains(&[op.node], op.sent, op.done + MERGE_WINDOW)
        });
        if !lost {
            nodes.insert(op.node);
            findings.spread_seen += SPREAD_PER_POST;
        }
    }
    findings.spread_nodes = nodes.len();
    findings.spread_due = nodes.len() >= SPREAD_NODES && findings.spread_seen >= SPREAD_MIN;
    if findings.spread_due {
        for (i, s) in state.iter().enumerate() {
            if !s.contains(SPREAD) {
                problems.push(format!(
                    "node {i} does not block {SPREAD:?}, seen {} times at {} nodes after surviving faults (rule: >= {SPREAD_MIN} at >= {SPREAD_NODES} nodes)",
                    findings.spread_seen,
                    nodes.len()
                ));
            }
        }
    }
    // Manual tokens: the last acknowledged operation, or a later one.
    let mut by_token: BTreeMap<&str, Vec<&TokenOp>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.kind != Kind::Observe) {
        by_token.entry(op.token.as_str()).or_default().push(op);
    }
    for (token, list) in by_token {
        let Some(last) = list.iter().rposition(|o| o.acked) else {
            continue;
        };
        let allowed: BTreeSet<bool> = list[last..].iter().map(|o| o.kind == Kind::Block).collect();
        for (i, s) in state.iter().enumerate() {
            if !allowed.contains(&s.contains(token)) {
                problems.push(format!(
                    "node {i}: {token} blocked = {}, but the last acknowledged operation was {:?} at node {} (later unacknowledged: {:?})",
                    s.contains(token),
                    list[last].kind,
                    list[last].node,
                    list[last + 1..].iter().map(|o| o.kind).collect::<Vec<_>>()
                ));
            }
        }
    }
    (problems, findings)
}
