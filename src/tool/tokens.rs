//! `ringhost tokens`: the operator's side of the built-in `tokens` station
//! (stations/tokens/README.md), over a node's admin API.
//!
//! - `status`: the node's kv `status` document (rules, window, slot size,
//!   blocklist counts) and the blocked set.
//! - `top`: the heavy hitters, each with its guaranteed count (a lower
//!   bound), upper bound and the nodes that saw it.
//! - `block` / `unblock`: a manual block (`b TOKEN TTL_S REASON`) or
//!   unblock (`u TOKEN`) posted to the node's inbox; it travels the ring on
//!   the particle. The tool then waits until every live member's `blocked`
//!   set agrees, and says how long that took.
//! - `observe`: observation lines (`o`, or `i` issued / `r` redeemed) in
//!   inbox batches of at most [`BATCH_BYTES`].
//! - `check`: whether a token is blocked (exit [`EXIT_BLOCKED`]), redeemed
//!   or flagged as redeemed twice, from the node's memory.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::{EXIT_ERROR, EXIT_OK};
use crate::admin::api::{KvEntry, Liveness};
use crate::admin::client::{self, AdminClient};
use crate::admin::sets::SetListing;
use crate::station::sets::SetEntry;

/// Exit code of `check` for a blocked (or flagged) token.
pub const EXIT_BLOCKED: u8 = 2;

/// Most bytes of lines in one inbox post (the admin API takes 64 KiB).
pub const BATCH_BYTES: usize = 60 * 1024;

/// The name the built-in station runs under unless renamed.
pub const DEFAULT_STATION: &str = "tokens";

/// Longest token the station takes, bytes (stations/tokens/README.md).
const MAX_TOKEN: usize = 256;

/// Deadline of one request.
const REQUEST: Duration = Duration::from_secs(5);

/// Where and how a `tokens` command speaks.
#[derive(Debug, Clone)]
pub struct Target {
    /// The node's admin or ring address.
    pub to: String,
    /// The station's name on the ring.
    pub station: String,
    /// Bearer token for the mutating requests (the inbox posts).
    pub token: Option<String>,
}

/// What one observation line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// `o`: seen here (counted by the rules).
    Seen,
    /// `i`: a one-time token issued here.
    Issued,
    /// `r`: a one-time token redeemed here.
    Redeemed,
}

impl Observation {
    fn letter(self) -> char {
        match self {
            Self::Seen => 'o',
            Self::Issued => 'i',
            Self::Redeemed => 'r',
        }
    }
}

/// The heavy hitter rows of the station's kv `status`.
#[derive(Debug, Deserialize)]
struct Status {
    node: usize,
    rules: Rules,
    window: Window,
    slot_bytes: u64,
    slot_max_bytes: u64,
    blocklist: Blocklist,
    redeemed: u64,
    flagged: u64,
    top: Vec<TopRow>,
    local: LocalStats,
}

#[derive(Debug, Deserialize)]
struct Rules {
    total: u64,
    spread_nodes: u64,
    spread_min: u64,
    rate_per_s: u64,
    block_ttl_s: u64,
    redeem_ttl_s: u64,
}

#[derive(Debug, Deserialize)]
struct Window {
    bucket_s: u64,
    buckets: u64,
    seconds: u64,
    observations: u64,
    error_bound: u64,
    capacity: u64,
    tokens: u64,
}

#[derive(Debug, Deserialize)]
struct Blocklist {
    blocked: u64,
    manual: u64,
    total: u64,
    spread: u64,
    rate: u64,
    allowed: u64,
}

#[derive(Debug, Deserialize)]
struct TopRow {
    token: String,
    count: u64,
    upper: u64,
    error: u64,
    nodes: u64,
}

#[derive(Debug, Deserialize)]
struct LocalStats {
    seen: u64,
    issued: u64,
    redeemed: u64,
    manual: u64,
    bad_lines: u64,
    seq: u64,
}

/// The station's kv `status` as raw JSON text.
async fn status_text(c: &AdminClient, station: &str) -> Result<String> {
    let path = format!("/v1/stations/{station}/kv/status");
    let entry: KvEntry = c
        .call(Method::GET, &path, None, REQUEST)
        .await
        .with_context(|| {
            format!(
                "reading station {station:?}'s status (is the tokens station running \
                 there, under that name? --station NAME if renamed)"
            )
        })?;
    entry
        .value
        .with_context(|| format!("station {station:?}'s kv status is not text"))
}

async fn status_doc(c: &AdminClient, station: &str) -> Result<Status> {
    let text = status_text(c, station).await?;
    serde_json::from_str(&text)
        .with_context(|| format!("station {station:?}'s kv status is not a tokens status document"))
}

/// A set's live entries on the node (`limit` at most).
async fn set_entries(
    c: &AdminClient,
    station: &str,
    set: &str,
    limit: usize,
) -> Result<SetListing> {
    let path = format!("/v1/stations/{station}/sets/{set}?limit={limit}");
    c.call(Method::GET, &path, None, REQUEST).await
}

/// The entry of `key` in `set` on the node behind `c`, if any.
async fn lookup(c: &AdminClient, station: &str, set: &str, key: &str) -> Result<Option<SetEntry>> {
    let query = serde_urlencoded::to_string([("key", key)]).context("encoding the key")?;
    let path = format!("/v1/stations/{station}/sets/{set}?{query}");
    let (status, body) = c.exchange(Method::GET, &path, None, REQUEST).await?;
    match status {
        StatusCode::OK => {
            Ok(Some(serde_json::from_slice(&body).with_context(|| {
                format!("{} GET {path}: not a set entry", c.addr())
            })?))
        }
        StatusCode::NOT_FOUND => Ok(None),
        s => bail!(
            "{} GET {path}: {s}: {}",
            c.addr(),
            String::from_utf8_lossy(&body)
        ),
    }
}

/// `ringhost tokens status`: prints the node's status document (raw with
/// `json`) and up to `limit` blocked tokens.
///
/// # Errors
/// When the node cannot be reached or runs no such station.
pub async fn status(t: &Target, json: bool, limit: usize) -> Result<u8> {
    let c = client::connect(&t.to, t.token.clone()).await?;
    if json {
        println!("{}", status_text(&c, &t.station).await?);
        return Ok(EXIT_OK);
    }
    let s = status_doc(&c, &t.station).await?;
    let blocked = set_entries(&c, &t.station, "blocked", limit).await?;
    print!("{}", render_status(&s, &blocked, now_unix_ms()));
    Ok(EXIT_OK)
}

fn off(v: u64, text: String) -> String {
    if v == 0 { "off".into() } else { text }
}

fn render_status(s: &Status, blocked: &SetListing, now_ms: u64) -> String {
    use std::fmt::Write;
    let r = &s.rules;
    let w = &s.window;
    let b = &s.blocklist;
    let l = &s.local;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tokens at node {}: slot {} of {} bytes",
        s.node, s.slot_bytes, s.slot_max_bytes
    );
    let _ = writeln!(
        out,
        "window: {} s ({} x {} s), {} observations, {} tokens kept \
         (capacity {}); a count is a lower bound, at most {} under the truth",
        w.seconds, w.buckets, w.bucket_s, w.observations, w.tokens, w.capacity, w.error_bound
    );
    let _ = writeln!(
        out,
        "rules: total {}, spread {}, rate {}; blocks last {} s, redemptions {} s",
        off(r.total, format!(">= {}", r.total)),
        off(
            r.spread_nodes,
            format!(">= {} nodes and >= {}", r.spread_nodes, r.spread_min)
        ),
        off(r.rate_per_s, format!(">= {}/s at one node", r.rate_per_s)),
        r.block_ttl_s,
        r.redeem_ttl_s
    );
    let _ = writeln!(
        out,
        "blocklist: {} blocked (manual {}, total {}, spread {}, rate {}), {} unblocked by hand; \
         {} redeemed, {} flagged",
        b.blocked, b.manual, b.total, b.spread, b.rate, b.allowed, s.redeemed, s.flagged
    );
    let _ = writeln!(
        out,
        "this node: {} seen, {} issued, {} redeemed, {} manual, {} bad lines, {} deltas sealed",
        l.seen, l.issued, l.redeemed, l.manual, l.bad_lines, l.seq
    );
    let mut entries = blocked.entries.clone();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    if !entries.is_empty() {
        let _ = writeln!(out, "blocked here ({} live):", blocked.total);
        let width = entries
            .iter()
            .map(|e| shown(&e.key).chars().count())
            .max()
            .unwrap_or(0);
        for e in &entries {
            let _ = writeln!(
                out,
                "  {:width$}  {}  {}",
                shown(&e.key),
                expiry(e.expires_unix_ms, now_ms),
                shown(&e.info)
            );
        }
        if blocked.total > entries.len() {
            let _ = writeln!(
                out,
                "  … and {} more (--limit)",
                blocked.total - entries.len()
            );
        }
    }
    out
}

/// `s` safe to print on an operator's terminal: control characters (a
/// client's token may hold ESC sequences that clear a screen or hide
/// rows) are written as `\u{..}` escapes, everything else as it is.
fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out.into()
}

fn expiry(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        "no expiry".into()
    } else {
        format!(
            "expires in {} s",
            at_ms.saturating_sub(now_ms).div_ceil(1000)
        )
    }
}

fn now_unix_ms() -> u64 {
    crate::station::unix_ms()
}

/// `ringhost tokens top`: the heavy hitters (at most `limit`; the station
/// keeps its `top` setting's worth).
///
/// # Errors
/// When the node cannot be reached or runs no such station.
pub async fn top(t: &Target, json: bool, limit: usize) -> Result<u8> {
    let c = client::connect(&t.to, t.token.clone()).await?;
    let s = status_doc(&c, &t.station).await?;
    let rows = &s.top[..s.top.len().min(limit)];
    if json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"token": r.token, "count": r.count, "upper": r.upper,
                                   "error": r.error, "nodes": r.nodes})
            })
            .collect();
        println!("{}", serde_json::Value::from(v));
        return Ok(EXIT_OK);
    }
    print!("{}", render_top(&s, rows));
    Ok(EXIT_OK)
}

fn render_top(s: &Status, rows: &[TopRow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "heavy hitters over the last {} s at node {} ({} observations; a count is a \
         lower bound, the true count is at most count + {})",
        s.window.seconds, s.node, s.window.observations, s.window.error_bound
    );
    let width = rows
        .iter()
        .map(|r| shown(&r.token).chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let _ = writeln!(
        out,
        "{:width$}  {:>10}  {:>10}  {:>5}",
        "TOKEN", "COUNT", "AT MOST", "NODES"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:width$}  {:>10}  {:>10}  {:>5}",
            shown(&r.token),
            r.count,
            r.upper,
            r.nodes
        );
    }
    out
}

/// A token as the station takes it: 1..=256 bytes, no ASCII whitespace.
///
/// # Errors
/// Naming what is wrong with it.
pub fn check_token(token: &str) -> Result<()> {
    ensure!(!token.is_empty(), "a token cannot be empty");
    ensure!(
        token.len() <= MAX_TOKEN,
        "token of {} bytes: the tokens station takes at most {MAX_TOKEN}",
        token.len()
    );
    ensure!(
        !token.bytes().any(|b| b.is_ascii_whitespace()),
        "token {token:?} contains whitespace, which the tokens station's lines cannot carry"
    );
    Ok(())
}

/// Posts `body` (lines) to the station's inbox.
async fn post_lines(c: &AdminClient, station: &str, body: String) -> Result<()> {
    let path = format!("/v1/stations/{station}/inbox");
    let _: serde_json::Value = c
        .call(
            Method::POST,
            &path,
            Some((Bytes::from(body), "text/plain")),
            REQUEST,
        )
        .await?;
    Ok(())
}

/// `ringhost tokens observe`: one line per token (`count` times each) in
/// batches of at most [`BATCH_BYTES`]. Returns the lines sent.
///
/// # Errors
/// On a bad token (before anything is sent) or a refused post (what was
/// posted before it stays posted; the error says how many lines).
pub async fn observe(t: &Target, tokens: &[String], kind: Observation, count: u64) -> Result<u64> {
    for tok in tokens {
        check_token(tok)?;
    }
    let c = client::connect(&t.to, t.token.clone()).await?;
    let mut sent = 0u64;
    let mut batch = String::new();
    let mut in_batch = 0u64;
    for tok in tokens {
        for _ in 0..count {
            let line = format!("{} {tok}\n", kind.letter());
            if batch.len() + line.len() > BATCH_BYTES {
                post_lines(&c, &t.station, std::mem::take(&mut batch))
                    .await
                    .with_context(|| format!("after {sent} lines were posted"))?;
                sent += in_batch;
                in_batch = 0;
            }
            batch.push_str(&line);
            in_batch += 1;
        }
    }
    if !batch.is_empty() {
        post_lines(&c, &t.station, batch)
            .await
            .with_context(|| format!("after {sent} lines were posted"))?;
        sent += in_batch;
    }
    Ok(sent)
}

/// `ringhost tokens block` (`Some(ttl, reason)`) or `unblock` (`None`):
/// posts the event, then (unless `wait` is zero) waits until every live
/// member's `blocked` set agrees, at most `wait`.
///
/// # Errors
/// On a bad token or reason, an unreachable node, or when the members do
/// not agree within `wait` (naming those that do not).
pub async fn block(
    t: &Target,
    token: &str,
    block: Option<(u64, &str)>,
    wait: Duration,
) -> Result<u8> {
    check_token(token)?;
    let line = match block {
        Some((ttl_s, reason)) => {
            ensure!(
                !reason.contains(['\n', '\r']),
                "a reason is one line of text"
            );
            format!("b {token} {ttl_s} {reason}\n")
        }
        None => format!("u {token}\n"),
    };
    let c = client::connect(&t.to, t.token.clone()).await?;
    let started = Instant::now();
    post_lines(&c, &t.station, line).await?;
    let verb = if block.is_some() {
        "blocked"
    } else {
        "unblocked"
    };
    if wait.is_zero() {
        println!(
            "{}: {verb} at {}; it travels the ring on the particle",
            shown(token),
            t.to
        );
        return Ok(EXIT_OK);
    }
    let deadline = started + wait;
    let members = live_admins(&c).await?;
    let mut pending: BTreeSet<(usize, String)> = members.into_iter().collect();
    let total = pending.len();
    loop {
        let mut still = BTreeSet::new();
        for (index, addr) in &pending {
            let m = AdminClient::new(addr, None);
            let agrees = match lookup(&m, &t.station, "blocked", token).await {
                Ok(e) => e.is_some() == block.is_some(),
                Err(_) => false,
            };
            if !agrees {
                still.insert((*index, addr.clone()));
            }
        }
        pending = still;
        if pending.is_empty() {
            println!(
                "{}: {verb} on {total}/{total} live members in {} ms",
                shown(token),
                started.elapsed().as_millis()
            );
            return Ok(EXIT_OK);
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = pending.iter().map(|(i, a)| format!("{i} ({a})")).collect();
            eprintln!(
                "{}: {verb} on {}/{total} live members after {} ms; not yet at: {}",
                shown(token),
                total - pending.len(),
                started.elapsed().as_millis(),
                names.join(", ")
            );
            return Ok(EXIT_ERROR);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin addresses of the members the node reports live.
async fn live_admins(c: &AdminClient) -> Result<Vec<(usize, String)>> {
    let ring = c.ring(REQUEST).await?;
    let live: Vec<_> = ring
        .members
        .into_iter()
        .filter(|m| m.liveness == Liveness::Live)
        .filter_map(|m| Some((m.index, m.admin?)))
        .collect();
    ensure!(
        !live.is_empty(),
        "{} reports no live member with an admin API to check",
        c.addr()
    );
    Ok(live)
}

/// `ringhost tokens check`: prints whether `token` is blocked, redeemed or
/// flagged at the node; [`EXIT_BLOCKED`] when blocked or flagged.
///
/// # Errors
/// On a bad token, an unreachable node, or no such station.
pub async fn check(t: &Target, token: &str, json: bool) -> Result<u8> {
    check_token(token)?;
    let c = client::connect(&t.to, t.token.clone()).await?;
    // A lookup in a set of a station that is not there (a wrong --station,
    // a node without it, one restarted and not yet past its first stop)
    // answers 404 like a token that is not blocked: make sure the station
    // runs and has published before saying "not blocked".
    status_doc(&c, &t.station).await?;
    let blocked = lookup(&c, &t.station, "blocked", token).await?;
    let redeemed = lookup(&c, &t.station, "redeemed", token).await?;
    let flagged = lookup(&c, &t.station, "flagged", token).await?;
    let code = if blocked.is_some() || flagged.is_some() {
        EXIT_BLOCKED
    } else {
        EXIT_OK
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"token": token, "blocked": blocked, "redeemed": redeemed,
                               "flagged": flagged})
        );
        return Ok(code);
    }
    let now = now_unix_ms();
    let mut said = false;
    for (what, e) in [
        ("blocked", &blocked),
        ("flagged", &flagged),
        ("redeemed", &redeemed),
    ] {
        if let Some(e) = e {
            println!(
                "{}: {what}: {} ({})",
                shown(token),
                shown(&e.info),
                expiry(e.expires_unix_ms, now)
            );
            said = true;
        }
    }
    if !said {
        println!("{}: not blocked", shown(token));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Status {
        serde_json::from_str(
            r#"{"node":2,"at_ms":1700000000000,
 "rules":{"total":100000,"spread_nodes":0,"spread_min":1000,"rate_per_s":0,"block_ttl_s":600,"redeem_ttl_s":3600},
 "window":{"bucket_s":10,"buckets":6,"seconds":60,"head_bucket":170000000,"observations":123456,
           "error_bound":240,"capacity":512,"tokens":2048},
 "slot_bytes":40123,"slot_max_bytes":65536,
 "blocklist":{"blocked":3,"manual":1,"total":1,"spread":1,"rate":0,"allowed":1},
 "redeemed":10,"flagged":1,
 "top":[{"token":"abc","count":5000,"upper":5240,"error":240,"nodes":7}],
 "local":{"seen":999,"issued":0,"redeemed":0,"manual":0,"bad_lines":0,"seq":41,"chunks":32,"ambiguous_chunks":0}}"#,
        )
        .expect("the station README's example parses")
    }

    #[test]
    fn status_names_rules_bounds_and_blocked_entries() {
        let listing = SetListing {
            station: "tokens".into(),
            set: "blocked".into(),
            total: 2,
            entries: vec![SetEntry {
                key: "evil".into(),
                info: "manual (node 1): abuse".into(),
                expires_unix_ms: 1_700_000_030_500,
            }],
        };
        let text = render_status(&doc(), &listing, 1_700_000_000_000);
        assert!(text.contains("slot 40123 of 65536 bytes"), "{text}");
        assert!(text.contains("at most 240 under the truth"), "{text}");
        assert!(
            text.contains("total >= 100000, spread off, rate off"),
            "{text}"
        );
        assert!(text.contains("3 blocked (manual 1"), "{text}");
        assert!(
            text.contains("evil  expires in 31 s  manual (node 1): abuse"),
            "{text}"
        );
        assert!(text.contains("and 1 more"), "{text}");
    }

    #[test]
    fn top_prints_lower_and_upper_bounds() {
        let s = doc();
        let text = render_top(&s, &s.top);
        assert!(text.contains("at most count + 240"), "{text}");
        let row = text.lines().find(|l| l.starts_with("abc")).expect("a row");
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, ["abc", "5000", "5240", "7"]);
    }

    #[test]
    fn control_characters_of_a_client_token_never_reach_the_terminal() {
        let mut s = doc();
        s.top[0].token = "\u{1b}[2J\u{1b}[Hcleared\u{7}".into();
        let text = render_top(&s, &s.top);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("\\u{1b}[2J\\u{1b}[Hcleared\\u{7}"), "{text}");
        assert_eq!(shown("plain-token"), "plain-token");
    }

    #[test]
    fn tokens_the_station_cannot_take_are_refused_before_sending() {
        assert!(check_token("ok-token_1").is_ok());
        assert!(check_token("").is_err());
        assert!(check_token("two words").is_err());
        assert!(check_token("tab\there").is_err());
        assert!(check_token(&"x".repeat(257)).is_err());
        assert!(check_token(&"x".repeat(256)).is_ok());
    }
}
