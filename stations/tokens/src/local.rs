//! Node-local state: what `on-input` folds observations into, what this node
//! keeps to rebuild a lost particle, and the mirror of the sets it published.
//! Lives in the station instance's memory (lost on a trap, reload or restart:
//! see the README's "Faults").
//!
//! - `pending`: observations since the last stop, per bucket, as Misra–Gries
//!   summaries of `local_capacity` counters (grown to twice that, then
//!   reduced: amortised O(1) per observation), plus events (`b`, `u`, `r`).
//! - At a stop, `pending` is *sealed* as delta number `seq` (above both this
//!   node's last number and the slot's watermark for it) into `chunks` (the
//!   deltas, newest last, each with its sequence range) and `window` (the sum
//!   of this node's sealed counts per bucket).
//! - Chunks leave once their buckets left the window; beyond [`MAX_CHUNKS`]
//!   the two oldest are coalesced (losing the boundary between them).

use std::collections::{BTreeMap, HashSet, VecDeque};

use crate::catalog::Event;
use crate::input::{self, BadLine, Line};
use crate::summary::Summary;

/// Deltas kept one by one; older ones are coalesced pairwise.
pub const MAX_CHUNKS: usize = 32;
/// At most one bad-line warning per this many ms.
pub const BAD_LINE_WARN_MS: u64 = 10_000;

/// Observations of one or more visits, by bucket, and events.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    /// Bucket id → counts.
    pub buckets: BTreeMap<u64, Summary>,
    /// `b`, `u` and `r` lines, in arrival order.
    pub events: Vec<Event>,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.events.is_empty()
    }

    fn absorb(&mut self, other: Delta, capacity: usize) {
        for (id, s) in other.buckets {
            let mine = self.buckets.entry(id).or_default();
            mine.merge(&s, |_| ());
            mine.reduce(capacity);
        }
        self.events.extend(other.events);
    }
}

/// Sealed deltas `after+1 ..= upto`.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// The sequence number before the first delta in the chunk.
    pub after: u64,
    /// The last delta's sequence number.
    pub upto: u64,
    /// Their observations and events.
    pub delta: Delta,
}

/// Counters since the instance started (for the kv `status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `o` lines.
    pub seen: u64,
    /// `i` lines.
    pub issued: u64,
    /// `r` lines.
    pub redeemed: u64,
    /// `b` and `u` lines.
    pub manual: u64,
    /// Skipped lines.
    pub bad_lines: u64,
    /// Chunks skipped at a rebuild because a watermark fell inside them.
    pub ambiguous_chunks: u64,
}

/// What [`Local::fold`] tells the glue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// A warning to log about bad lines (at most one per [`BAD_LINE_WARN_MS`]).
    pub warning: Option<String>,
    /// One-time tokens redeemed again on this node (already published as
    /// redeemed here, or twice since the last stop), with the `info` to
    /// publish in `flagged` now (no expiry: the next stop replaces it with
    /// the slot's entry); warn.
    pub flagged: Vec<(String, String)>,
}

/// The sets as this node last published them: set → key → (info, expiry ms).
pub type Mirror = BTreeMap<&'static str, BTreeMap<String, (String, u64)>>;

/// This node's state.
#[derive(Debug)]
pub struct Local {
    bucket_ms: u64,
    buckets: u64,
    capacity: usize,
    pending: Delta,
    pending_redeemed: HashSet<String>,
    chunks: VecDeque<Chunk>,
    window: BTreeMap<u64, Summary>,
    last_seq: u64,
    /// What this node published, for the diff at the next stop; `None`
    /// until the first stop of this instance (it clears the sets first).
    pub published: Option<Mirror>,
    /// Counters.
    pub stats: Stats,
    bad_since_warn: u64,
    last_bad: Option<BadLine>,
    next_bad_warn_ms: u64,
    last_event_ms: u64,
    /// The blocklist and redemptions of the last slot this node wrote: given
    /// back to a particle that never saw this node (a regenerated one).
    pub last_lists: Lists,
    /// The ring-config warnings logged last (logged again only on change).
    pub last_config_warnings: Vec<String>,
}

/// A catalog's blocklist and redemptions.
pub type Lists = (
    BTreeMap<String, crate::catalog::Block>,
    BTreeMap<String, crate::catalog::Redemption>,
);

impl Local {
    /// Empty state for windows of `buckets` × `bucket_ms` and summaries of
    /// `capacity` counters.
    pub fn new(bucket_ms: u64, buckets: u64, capacity: usize) -> Self {
        Self {
            bucket_ms,
            buckets,
            capacity,
            pending: Delta::default(),
            pending_redeemed: HashSet::new(),
            chunks: VecDeque::new(),
            window: BTreeMap::new(),
            last_seq: 0,
            published: None,
            stats: Stats::default(),
            bad_since_warn: 0,
            last_bad: None,
            next_bad_warn_ms: 0,
            last_event_ms: 0,
            last_lists: Lists::default(),
            last_config_warnings: Vec::new(),
        }
    }

    /// Folds one input (UTF-8 lines) that arrived at `now_ms`.
    ///
    /// Event times are this node's clock, made unique per node (a second
    /// event in the same millisecond gets the next one), so that two
    /// redemptions are never mistaken for one.
    pub fn fold(&mut self, input: &[u8], now_ms: u64, out: &mut Folded) {
        let id = now_ms / self.bucket_ms;
        let mut stamp = self.last_event_ms.max(now_ms.saturating_sub(1));
        let mut next_ms = || {
            stamp += 1;
            stamp
        };
        let cap = self.capacity;
        let bucket = self.pending.buckets.entry(id).or_default();
        input::for_each_line(input, |line| match input::parse(line) {
            Ok(Line::Seen(t)) => {
                self.stats.seen += 1;
                bucket.add(t, 1);
                if bucket.len() > 2 * cap {
                    bucket.reduce(cap);
                }
            }
            Ok(Line::Issued(_)) => self.stats.issued += 1,
            Ok(Line::Redeemed(t)) => {
                self.stats.redeemed += 1;
                let known = self
                    .published
                    .as_ref()
                    .is_some_and(|m| m.get("redeemed").is_some_and(|r| r.contains_key(t)));
                if !self.pending_redeemed.insert(t.to_string()) || known {
                    let info = format!("redeemed again at this node ({now_ms} ms)");
                    if let Some(m) = &mut self.published {
                        let f = m.entry("flagged").or_default();
                        f.insert(t.to_string(), (info.clone(), 0));
                    }
                    out.flagged.push((t.to_string(), info));
                }
                self.pending.events.push(Event::Redeem {
                    token: t.to_string(),
                    at_ms: next_ms(),
                });
            }
            Ok(Line::Block {
                token,
                ttl_s,
                reason,
            }) => {
                self.stats.manual += 1;
                self.pending.events.push(Event::Block {
                    token: token.to_string(),
                    at_ms: next_ms(),
                    ttl_s,
                    reason: reason.to_string(),
                });
            }
            Ok(Line::Unblock(t)) => {
                self.stats.manual += 1;
                self.pending.events.push(Event::Unblock {
                    token: t.to_string(),
                    at_ms: next_ms(),
                });
            }
            Err(e) => {
                self.stats.bad_lines += 1;
                self.bad_since_warn += 1;
                self.last_bad = Some(e);
            }
        });
        self.last_event_ms = stamp;
        if self.bad_since_warn > 0 && now_ms >= self.next_bad_warn_ms {
            out.warning = Some(format!(
                "tokens: skipped {} bad input lines (last: {})",
                self.bad_since_warn,
                self.last_bad.expect("set with the count")
            ));
            self.bad_since_warn = 0;
            self.next_bad_warn_ms = now_ms + BAD_LINE_WARN_MS;
        }
    }

    /// Switches to a new window geometry or capacity. A geometry change
    /// drops the counts (their buckets mean nothing in the new one) but keeps
    /// events and sequence numbers.
    pub fn reconfigure(&mut self, bucket_ms: u64, buckets: u64, capacity: usize) {
        if (bucket_ms, buckets) != (self.bucket_ms, self.buckets) {
            self.pending.buckets.clear();
            self.window.clear();
            for c in &mut self.chunks {
                c.delta.buckets.clear();
            }
        }
        (self.bucket_ms, self.buckets, self.capacity) = (bucket_ms, buckets, capacity);
    }

    /// Seals `pending` as the next delta, numbered above `watermark` (the
    /// slot's for this node) and above every number this node used. Returns
    /// the sealed chunk (none if nothing was pending).
    pub fn seal(&mut self, watermark: Option<u64>) -> Option<&Chunk> {
        self.last_seq = self.last_seq.max(watermark.unwrap_or(0));
        self.pending_redeemed.clear();
        let mut delta = std::mem::take(&mut self.pending);
        delta.buckets.retain(|_, s| !s.is_empty());
        if delta.is_empty() {
            return None;
        }
        for (id, s) in &mut delta.buckets {
            s.reduce(self.capacity);
            let w = self.window.entry(*id).or_default();
            w.merge(s, |_| ());
            w.reduce(self.capacity);
        }
        let after = self.last_seq;
        self.last_seq += 1;
        self.chunks.push_back(Chunk {
            after,
            upto: self.last_seq,
            delta,
        });
        while self.chunks.len() > MAX_CHUNKS {
            let first = self.chunks.pop_front().expect("more than MAX_CHUNKS");
            let second = self.chunks.front_mut().expect("more than MAX_CHUNKS");
            let mut merged = first.delta;
            merged.absorb(std::mem::take(&mut second.delta), self.capacity);
            second.delta = merged;
            second.after = first.after;
        }
        self.chunks.back()
    }

    /// Drops what left the window (buckets before `oldest`, and chunks with
    /// nothing newer, or whose events are all before `oldest`'s start).
    pub fn age(&mut self, oldest: u64) {
        self.window.retain(|&id, _| id >= oldest);
        let start_ms = oldest * self.bucket_ms;
        self.chunks.retain_mut(|c| {
            c.delta.buckets.retain(|&id, _| id >= oldest);
            let events_live = c.delta.events.iter().any(|e| event_ms(e) >= start_ms);
            !c.delta.buckets.is_empty() || events_live
        });
    }

    /// The last sequence number this node sealed (or learnt from a slot).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The kept chunks, oldest first.
    pub fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter()
    }

    /// This node's sealed counts in the window, by bucket.
    pub fn window(&self) -> &BTreeMap<u64, Summary> {
        &self.window
    }

    /// Distinct tokens held in `pending`.
    pub fn pending_tokens(&self) -> usize {
        self.pending.buckets.values().map(Summary::len).sum()
    }
}

/// When an event happened.
pub fn event_ms(e: &Event) -> u64 {
    match e {
        Event::Block { at_ms, .. } | Event::Unblock { at_ms, .. } | Event::Redeem { at_ms, .. } => {
            *at_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_counted_and_warned_about_once_per_period() {
        let mut l = Local::new(10_000, 6, 64);
        let mut out = Folded::default();
        l.fold(b"o a\nzz\no b c\no a\n", 1_000, &mut out);
        assert_eq!(l.stats.bad_lines, 2);
        assert_eq!(l.stats.seen, 2);
        assert!(out.warning.as_deref().unwrap().contains("skipped 2"));
        let mut out = Folded::default();
        l.fold(b"??\n", 2_000, &mut out);
        assert_eq!(out.warning, None, "rate-limited");
        l.fold(b"o x\n", 11_000, &mut out);
        assert!(out.warning.as_deref().unwrap().contains("skipped 1"));
    }

    #[test]
    fn sealing_numbers_deltas_above_the_slot_watermark() {
        let mut l = Local::new(10_000, 6, 64);
        let mut out = Folded::default();
        assert!(l.seal(Some(5)).is_none());
        l.fold(b"o a\n", 1_000, &mut out);
        let c = l.seal(Some(5)).unwrap();
        assert_eq!((c.after, c.upto), (5, 6));
        l.fold(b"o a\n", 1_000, &mut out);
        let c = l.seal(Some(2)).unwrap();
        assert_eq!((c.after, c.upto), (6, 7));
        assert_eq!(l.window()[&0].lower("a"), 2);
    }

    #[test]
    fn chunks_beyond_the_limit_are_coalesced_oldest_first() {
        let mut l = Local::new(10_000, 6, 64);
        let mut out = Folded::default();
        for _ in 0..MAX_CHUNKS + 3 {
            l.fold(b"o a\n", 1_000, &mut out);
            l.seal(None);
        }
        let c: Vec<_> = l.chunks().map(|c| (c.after, c.upto)).collect();
        assert_eq!(c.len(), MAX_CHUNKS);
        assert_eq!(c[0], (0, 4));
        assert_eq!(c[1], (4, 5));
        assert_eq!(l.chunks().next().unwrap().delta.buckets[&0].lower("a"), 4);
    }

    #[test]
    fn pending_memory_is_bounded_under_a_flood_of_distinct_tokens() {
        let mut l = Local::new(10_000, 6, 100);
        let mut out = Folded::default();
        let batch: String = (0..100_000).map(|i| format!("o flood-{i}\n")).collect();
        l.fold(batch.as_bytes(), 1_000, &mut out);
        assert!(l.pending_tokens() <= 200);
    }
}
