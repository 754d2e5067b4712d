//! One stop of the particle, free of host calls: decode the slot, age it,
//! seal and merge this node's delta exactly once, apply events, run the
//! rules, fit the byte budget, encode, and say which set entries change and
//! what to log. The glue ([`crate`]'s `lib.rs`) does the host calls.

use std::collections::BTreeMap;

use crate::catalog::{block_info, redemption_info, Block, BlockKind, Catalog, Event};
use crate::codec::{self, encode_block, encode_redemption, DecodeError};
use crate::local::{Local, Mirror};
use crate::settings::Settings;
use crate::status;

/// Severity of a log line (maps to the WIT `level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Per-stop detail.
    Debug,
    /// Blocks made, config changes.
    Info,
    /// Flagged redemptions, ambiguous rebuilds, bad config.
    Warn,
    /// A malformed slot.
    Error,
}

/// One entry to publish (the WIT `set-entry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetEntry {
    /// The token.
    pub key: String,
    /// Why it is in the set.
    pub info: String,
    /// Expiry, ms since the epoch; 0 for never.
    pub expires_ms: u64,
}

/// A change to a published set (the WIT `sets` calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetOp {
    /// `sets.clear(name)`.
    Clear(&'static str),
    /// `sets.put(name, entries)`.
    Put(&'static str, Vec<SetEntry>),
    /// `sets.remove(name, keys)`.
    Remove(&'static str, Vec<String>),
}

/// The sets this station publishes.
pub const SETS: [&str; 3] = ["blocked", "redeemed", "flagged"];

/// A stop as the host describes it.
#[derive(Clone, Copy, Debug)]
pub struct Stop<'a> {
    /// This node's index in the ring.
    pub node: u32,
    /// Members in the ring.
    pub ring_size: u32,
    /// Wall clock, ms since the epoch.
    pub now_ms: u64,
    /// The slot as it arrived (empty the first time).
    pub slot: &'a [u8],
}

/// What a stop produces.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The new slot (at most `slot_max_bytes`).
    pub slot: Vec<u8>,
    /// How long to hold the particle.
    pub hold_ms: u32,
    /// Set changes, in order.
    pub ops: Vec<SetOp>,
    /// Lines to log.
    pub logs: Vec<(Level, String)>,
    /// The kv `status` document (JSON).
    pub status: String,
    /// Tokens blocked by a rule at this stop.
    pub new_blocks: Vec<String>,
    /// The counters per bucket the byte budget cut the summary to, if it
    /// had to.
    pub shrunk_to: Option<usize>,
}

/// Runs one stop. `ring_warnings` are the ring config's complaints (logged
/// when they change).
pub fn stop(local: &mut Local, s: &Settings, ring_warnings: Vec<String>, st: Stop) -> Outcome {
    let mut logs = Vec::new();
    if ring_warnings != local.last_config_warnings {
        for w in &ring_warnings {
            logs.push((Level::Warn, w.clone()));
        }
        local.last_config_warnings = ring_warnings;
    }
    let mut cat = open(s, &st, &mut logs);
    local.reconfigure(s.bucket_ms(), s.buckets.into(), s.local_capacity);
    cat.advance_to(st.now_ms / cat.bucket_ms);
    cat.expire(st.now_ms);

    let node = st.node;
    let watermark = cat.watermarks.get(&node).copied();
    let sealed: Vec<(u64, String)> = local
        .seal(watermark)
        .map(|c| {
            let b = c.delta.buckets.iter();
            b.flat_map(|(&id, s)| s.iter().map(move |(t, _)| (id, t.to_string())))
                .collect()
        })
        .unwrap_or_default();
    local.age(cat.oldest());
    let flagged = merge(&mut cat, local, watermark, node, s, &mut logs);
    cat.watermarks.insert(node, local.last_seq());

    let mut new_blocks = run_rules(&mut cat, local, s, &sealed, &st);
    let before: Vec<String> = cat
        .blocklist
        .keys()
        .chain(cat.redemptions.keys())
        .cloned()
        .collect();
    let (slot, shrunk_to) = fit(&mut cat, s.slot_max_bytes);
    // What the byte budget dropped is said, never silent: a rule block
    // the budget drops at once is not logged as blocked.
    let dropped: Vec<&String> = before
        .iter()
        .filter(|t| !cat.blocklist.contains_key(*t) && !cat.redemptions.contains_key(*t))
        .collect();
    if !dropped.is_empty() {
        let first: Vec<&str> = dropped.iter().take(5).map(|t| t.as_str()).collect();
        logs.push((
            Level::Warn,
            format!(
                "tokens: the slot's byte budget ({} bytes; blocklist 3/8, redemptions 1/4) dropped {} \
                 blocklist entries or redemptions: {}; raise slot_max_bytes or shorten block_ttl_s / redeem_ttl_s",
                s.slot_max_bytes,
                dropped.len(),
                first.join(", ")
            ),
        ));
    }
    new_blocks.retain(|t| cat.blocklist.contains_key(t));
    if !new_blocks.is_empty() {
        let names: Vec<String> = new_blocks
            .iter()
            .take(5)
            .map(|t| format!("{t} ({})", cat.blocklist[t].kind.name()))
            .collect();
        logs.push((
            Level::Info,
            format!(
                "tokens: blocked {} tokens: {}",
                new_blocks.len(),
                names.join(", ")
            ),
        ));
    }
    for t in flagged.iter().take(5) {
        // (One the byte budget dropped is named in its warning above.)
        if let Some(r) = cat.redemptions.get(t) {
            let info = redemption_info(r);
            logs.push((Level::Warn, format!("tokens: one-time token {t} {info}")));
        }
    }

    local.last_lists = (cat.blocklist.clone(), cat.redemptions.clone());
    let ops = publish(local, &cat, st.now_ms);
    let status = status::render(&cat, local, s, &st, slot.len());
    Outcome {
        slot,
        hold_ms: s.hold_ms,
        ops,
        logs,
        status,
        new_blocks,
        shrunk_to,
    }
}

/// The slot's catalog in this ring's geometry (an empty slot, a malformed
/// one or one of another geometry starts an empty window).
fn open(s: &Settings, st: &Stop, logs: &mut Vec<(Level, String)>) -> Catalog {
    let fresh = || Catalog::new(s.bucket_ms(), s.buckets as usize, s.capacity, st.now_ms);
    let mut cat = if st.slot.is_empty() {
        fresh()
    } else {
        match codec::decode(st.slot) {
            Ok(c) => c,
            Err(e) => {
                logs.push((Level::Error, malformed(&e)));
                fresh()
            }
        }
    };
    if cat.bucket_ms != s.bucket_ms() || cat.buckets.len() != s.buckets as usize {
        logs.push((
            Level::Info,
            format!(
                "tokens: window now {} x {} s; counts restart",
                s.buckets, s.bucket_s
            ),
        ));
        let f = fresh();
        (cat.bucket_ms, cat.head, cat.buckets) = (f.bucket_ms, f.head, f.buckets);
    }
    cat.capacity = s.capacity;
    cat
}

fn malformed(e: &DecodeError) -> String {
    format!("tokens: malformed slot ({e}); starting from an empty catalog, rebuilt from the nodes' local state")
}

/// Merges into `cat` what it lacks of this node's deltas: those numbered
/// above its watermark; or, when the slot has none for this node (it never
/// saw this node: a new or regenerated particle), this node's whole window,
/// all kept events and the lists of the last slot this node wrote. Returns
/// the tokens newly flagged.
fn merge(
    cat: &mut Catalog,
    local: &mut Local,
    watermark: Option<u64>,
    node: u32,
    s: &Settings,
    logs: &mut Vec<(Level, String)>,
) -> Vec<String> {
    let mut events: Vec<Event> = Vec::new();
    match watermark {
        None => {
            for (&id, counts) in local.window() {
                cat.merge_counts(id, counts, node);
            }
            events.extend(local.chunks().flat_map(|c| c.delta.events.iter().cloned()));
        }
        Some(w) => {
            let mut ambiguous = 0;
            for c in local.chunks() {
                if c.after >= w {
                    for (&id, counts) in &c.delta.buckets {
                        cat.merge_counts(id, counts, node);
                    }
                    events.extend(c.delta.events.iter().cloned());
                } else if c.upto > w {
                    ambiguous += 1;
                }
            }
            if ambiguous > 0 {
                logs.push((
                    Level::Warn,
                    format!("tokens: the slot's watermark for this node ({w}) falls inside a coalesced delta; its counts are left out (undercount, never a double count)"),
                ));
                local.stats.ambiguous_chunks += ambiguous;
            }
        }
    }
    let mut flagged = Vec::new();
    for e in events {
        if let Some(t) = cat.apply(&e, node, s.block_ttl_s, s.redeem_ttl_s) {
            flagged.push(t);
        }
    }
    if watermark.is_none() {
        flagged.extend(give_back(cat, local));
    }
    flagged
}

/// Puts the lists of the last slot this node wrote into `cat` (a particle
/// that never saw this node): later entries win, redemptions merge.
fn give_back(cat: &mut Catalog, local: &Local) -> Vec<String> {
    let (blocks, redemptions) = &local.last_lists;
    for (t, b) in blocks {
        let newer = cat
            .blocklist
            .get(t)
            .is_none_or(|mine| (mine.since_ms, mine.origin) < (b.since_ms, b.origin));
        if newer {
            cat.blocklist.insert(t.clone(), b.clone());
        }
    }
    let mut flagged = Vec::new();
    for (t, r) in redemptions {
        let mut firsts = vec![(r.node, r.at_ms)];
        firsts.extend(r.second);
        for (n, at) in firsts {
            flagged.extend(cat.redeem(t, n, at, r.expires_ms));
        }
    }
    flagged
}

/// The rules, on guaranteed lower bounds; returns the tokens blocked.
fn run_rules(
    cat: &mut Catalog,
    local: &Local,
    s: &Settings,
    sealed: &[(u64, String)],
    st: &Stop,
) -> Vec<String> {
    let window_s = u64::from(s.bucket_s) * u64::from(s.buckets);
    let mut found: BTreeMap<String, (BlockKind, String)> = BTreeMap::new();
    for (t, row) in cat.rows() {
        if cat.blocklist.contains_key(t) {
            continue;
        }
        if s.total > 0 && row.lo >= s.total {
            let why = format!("at least {} in {window_s} s >= total {}", row.lo, s.total);
            found.insert(t.to_string(), (BlockKind::Total, why));
        } else if s.spread_nodes > 0 && row.nodes.len() >= s.spread_nodes && row.lo >= s.spread_min
        {
            let why = format!(
                "at least {} in {window_s} s at {} nodes >= spread {} nodes, {}",
                row.lo,
                row.nodes.len(),
                s.spread_nodes,
                s.spread_min
            );
            found.insert(t.to_string(), (BlockKind::Spread, why));
        }
    }
    if s.rate > 0 {
        let need = s.rate * u64::from(s.bucket_s);
        for (id, t) in sealed {
            let n = local.window().get(id).map_or(0, |w| w.lower(t));
            if n >= need && !cat.blocklist.contains_key(t) {
                let why = format!("at least {n} in {} s here >= rate {}/s", s.bucket_s, s.rate);
                found.entry(t.clone()).or_insert((BlockKind::Rate, why));
            }
        }
    }
    let mut blocked = Vec::new();
    for (t, (kind, reason)) in found {
        let block = Block {
            kind,
            origin: st.node,
            since_ms: st.now_ms,
            expires_ms: st.now_ms.saturating_add(s.block_ttl_s.saturating_mul(1000)),
            reason: crate::input::cut(&reason).to_string(),
        };
        if cat.block_by_rule(&t, block) {
            blocked.push(t);
        }
    }
    blocked
}

/// Encodes `cat` in at most `max` bytes: the blocklist keeps at most 3/8 of
/// them (rule entries and unblocks go first, soonest expiry first; manual
/// blocks last), the redemptions 1/4 (oldest first), and the summary shrinks
/// (every bucket reduced to fewer counters, see [`crate::summary`]) until
/// the whole fits. Only a header and watermarks over `max` (rings of
/// thousands of nodes at a 4 KiB budget) could exceed it. Returns the slot
/// and, if the summary had to shrink, the counters per bucket it kept.
pub fn fit(cat: &mut Catalog, max: usize) -> (Vec<u8>, Option<usize>) {
    let mut shrunk = None;
    trim(&mut cat.blocklist, max * 3 / 8, encode_block, |b| {
        let never = if b.expires_ms == 0 {
            u64::MAX
        } else {
            b.expires_ms
        };
        (b.kind == BlockKind::Manual, never)
    });
    trim(&mut cat.redemptions, max / 4, encode_redemption, |r| {
        (r.second.is_some(), r.at_ms)
    });
    loop {
        let parts = codec::encode_parts(cat);
        if parts.len() <= max {
            return (parts.concat(), shrunk);
        }
        let widest = cat.buckets.iter().map(|b| b.len()).max().unwrap_or(0);
        if widest == 0 {
            cat.blocklist.clear();
            cat.redemptions.clear();
            return (codec::encode(cat), shrunk);
        }
        let over = parts.len() - max;
        let keep = parts.rows.len().saturating_sub(over) as u128;
        let k = (widest as u128 * keep / parts.rows.len() as u128) as usize;
        let k = (k * 15 / 16).min(widest - 1);
        for b in &mut cat.buckets {
            b.reduce(k);
        }
        cat.capacity = cat.capacity.min(k);
        shrunk = Some(cat.capacity);
    }
}

/// Drops entries of `map`, lowest `rank` first, until their bytes fit `max`.
fn trim<V, R: Ord>(
    map: &mut BTreeMap<String, V>,
    max: usize,
    encode: fn(&mut Vec<u8>, &str, &V),
    rank: impl Fn(&V) -> R,
) {
    let mut buf = Vec::new();
    let mut sizes: Vec<(R, usize, String)> = map
        .iter()
        .map(|(k, v)| {
            buf.clear();
            encode(&mut buf, k, v);
            (rank(v), buf.len(), k.clone())
        })
        .collect();
    let mut total: usize = sizes.iter().map(|s| s.1).sum::<usize>() + 10;
    if total <= max {
        return;
    }
    sizes.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
    for (_, n, k) in sizes {
        if total <= max {
            break;
        }
        map.remove(&k);
        total -= n;
    }
}

/// The set changes that bring what this node published to `cat`'s lists.
/// A redemption that left the slot before its expiry (the byte budget
/// dropped it) stays in this node's `redeemed` set until it expires: nodes
/// remember more than the slot can carry.
fn publish(local: &mut Local, cat: &Catalog, now_ms: u64) -> Vec<SetOp> {
    let mut want: Mirror = SETS.iter().map(|&s| (s, BTreeMap::new())).collect();
    for (t, b) in &cat.blocklist {
        if b.kind != BlockKind::Allow {
            let blocked = want.get_mut("blocked").expect("a set");
            blocked.insert(t.clone(), (block_info(b), b.expires_ms));
        }
    }
    for (t, r) in &cat.redemptions {
        let entry = (redemption_info(r), r.expires_ms);
        if r.second.is_some() {
            let flagged = want.get_mut("flagged").expect("a set");
            flagged.insert(t.clone(), entry.clone());
        }
        let redeemed = want.get_mut("redeemed").expect("a set");
        redeemed.insert(t.clone(), entry);
    }
    let had = local.published.take();
    if let Some(before) = had.as_ref().and_then(|m| m.get("redeemed")) {
        let redeemed = want.get_mut("redeemed").expect("a set");
        for (t, (info, exp)) in before {
            if *exp > now_ms && !redeemed.contains_key(t) {
                redeemed.insert(t.clone(), (info.clone(), *exp));
            }
        }
    }
    let mut ops = Vec::new();
    for name in SETS {
        let now = &want[name];
        let before = had.as_ref().and_then(|m| m.get(name));
        if had.is_none() {
            ops.push(SetOp::Clear(name));
        }
        let puts: Vec<SetEntry> = now
            .iter()
            .filter(|(k, v)| before.and_then(|b| b.get(*k)) != Some(v))
            .map(|(k, (info, exp))| SetEntry {
                key: k.clone(),
                info: info.clone(),
                expires_ms: *exp,
            })
            .collect();
        if !puts.is_empty() {
            ops.push(SetOp::Put(name, puts));
        }
        if let Some(b) = before {
            let gone: Vec<String> = b
                .keys()
                .filter(|k| !now.contains_key(*k))
                .cloned()
                .collect();
            if !gone.is_empty() {
                ops.push(SetOp::Remove(name, gone));
            }
        }
    }
    local.published = Some(want);
    ops
}
