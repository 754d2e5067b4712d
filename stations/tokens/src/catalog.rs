//! The fleet-wide catalog: what the slot holds, in memory. It owns the
//! sliding window of per-bucket summaries, the per-node merge watermarks, the
//! blocklist and the redemptions, and the operations on them (ageing, merging
//! a node's delta, applying events, expiry). Bytes are [`crate::codec`]'s
//! business, decisions [`crate::rules`]'.

use std::collections::{BTreeMap, HashMap};

use crate::nodeset::NodeSet;
use crate::summary::Summary;

/// Why a token is on the blocklist (or, for `Allow`, why rules leave it be).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// A `b` line.
    Manual = 0,
    /// The `total` rule.
    Total = 1,
    /// The `spread_nodes`/`spread_min` rule.
    Spread = 2,
    /// The per-node `rate` rule.
    Rate = 3,
    /// A `u` line: not blocked, and no rule blocks it until it expires.
    Allow = 4,
}

impl BlockKind {
    /// The kind's byte in the slot.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Manual,
            1 => Self::Total,
            2 => Self::Spread,
            3 => Self::Rate,
            4 => Self::Allow,
            _ => return None,
        })
    }

    /// Lower-case name (`manual`, `total`, `spread`, `rate`, `allow`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Total => "total",
            Self::Spread => "spread",
            Self::Rate => "rate",
            Self::Allow => "allow",
        }
    }
}

/// One blocklist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Manual, which rule, or an unblock's immunity.
    pub kind: BlockKind,
    /// The node that made the entry.
    pub origin: u32,
    /// When it was made (ms since the epoch, origin's clock): a later event
    /// for the same token wins, an earlier one is ignored.
    pub since_ms: u64,
    /// When it leaves the list (ms since the epoch); 0 for never.
    pub expires_ms: u64,
    /// Why, at most [`crate::input::MAX_REASON`] bytes.
    pub reason: String,
}

/// A one-time token's redemption as the fleet knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redemption {
    /// Where it was first redeemed.
    pub node: u32,
    /// When (ms since the epoch, that node's clock).
    pub at_ms: u64,
    /// When the record leaves the slot.
    pub expires_ms: u64,
    /// A second, different redemption (node, ms): the token is flagged.
    pub second: Option<(u32, u64)>,
}

/// What a node learnt from its inputs besides counts, applied to the slot at
/// its next stop (and again after a particle loss: applying is idempotent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `b TOKEN TTL_S REASON`.
    Block {
        /// The token.
        token: String,
        /// When the line arrived (ms since the epoch).
        at_ms: u64,
        /// Seconds until it expires; 0 for never.
        ttl_s: u64,
        /// Why.
        reason: String,
    },
    /// `u TOKEN`.
    Unblock {
        /// The token.
        token: String,
        /// When the line arrived.
        at_ms: u64,
    },
    /// `r TOKEN`.
    Redeem {
        /// The token.
        token: String,
        /// When the line arrived.
        at_ms: u64,
    },
}

/// The slot's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    /// One bucket's width, ms.
    pub bucket_ms: u64,
    /// The newest bucket's id (`unix_ms / bucket_ms`).
    pub head: u64,
    /// The window, oldest first: `buckets[i]` is bucket `head - (len-1) + i`.
    pub buckets: Vec<Summary<NodeSet>>,
    /// The counters per bucket in force (the configured capacity, or fewer
    /// when the byte budget shrank the summary).
    pub capacity: usize,
    /// Per node index, the last delta sequence number merged.
    pub watermarks: BTreeMap<u32, u64>,
    /// Blocked (and allowed) tokens.
    pub blocklist: BTreeMap<String, Block>,
    /// Redeemed one-time tokens.
    pub redemptions: BTreeMap<String, Redemption>,
}

/// A token's counts over the window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Guaranteed lower bound of its window count.
    pub lo: u64,
    /// Nodes known to have seen it in the window (a lower bound too).
    pub nodes: NodeSet,
}

impl Catalog {
    /// An empty catalog with `buckets` buckets of `bucket_ms`, newest at `now_ms`.
    pub fn new(bucket_ms: u64, buckets: usize, capacity: usize, now_ms: u64) -> Self {
        Self {
            bucket_ms,
            head: now_ms / bucket_ms,
            buckets: vec![Summary::new(); buckets],
            capacity,
            watermarks: BTreeMap::new(),
            blocklist: BTreeMap::new(),
            redemptions: BTreeMap::new(),
        }
    }

    /// The oldest bucket id in the window.
    pub fn oldest(&self) -> u64 {
        (self.head + 1).saturating_sub(self.buckets.len() as u64)
    }

    /// Moves the window so that bucket `id` is in it (drops the buckets that
    /// fall out). Never moves it back.
    pub fn advance_to(&mut self, id: u64) {
        if id <= self.head {
            return;
        }
        let shift = (id - self.head).min(self.buckets.len() as u64) as usize;
        self.buckets.drain(..shift);
        self.buckets
            .resize(self.buckets.len() + shift, Summary::new());
        self.head = id;
    }

    /// Adds node `node`'s counts for bucket `id` (advancing the window if it
    /// is newer; ignored if it already left) and reduces to the capacity.
    pub fn merge_counts(&mut self, id: u64, delta: &Summary, node: u32) {
        self.advance_to(id);
        if id < self.oldest() {
            return;
        }
        let i = (id - self.oldest()) as usize;
        let b = &mut self.buckets[i];
        b.merge(delta, |_| NodeSet::single(node));
        b.reduce(self.capacity);
    }

    /// Every kept token's window row.
    pub fn rows(&self) -> HashMap<&str, Row> {
        let mut rows: HashMap<&str, Row> = HashMap::new();
        for b in &self.buckets {
            for (t, c) in b.iter() {
                let r = rows.entry(t).or_default();
                r.lo += c.lo;
                r.nodes.union(&c.extra);
            }
        }
        rows
    }

    /// Observations in the window, fleet-wide (N).
    pub fn observations(&self) -> u64 {
        self.buckets.iter().map(Summary::total).sum()
    }

    /// The error of every window count: true count ≤ lo + this (Σ Δ).
    pub fn error(&self) -> u64 {
        self.buckets.iter().map(Summary::deficit).sum()
    }

    /// Drops blocklist entries and redemptions expired at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        let live = |e: u64| e == 0 || e > now_ms;
        self.blocklist.retain(|_, b| live(b.expires_ms));
        self.redemptions.retain(|_, r| live(r.expires_ms));
    }

    /// Applies `event` from node `node`. `allow_ttl_s` is how long an unblock
    /// keeps rules off the token, `redeem_ttl_s` how long a redemption is
    /// kept. Returns the token when a redemption made it newly flagged.
    pub fn apply(
        &mut self,
        event: &Event,
        node: u32,
        allow_ttl_s: u64,
        redeem_ttl_s: u64,
    ) -> Option<String> {
        match event {
            Event::Block {
                token,
                at_ms,
                ttl_s,
                reason,
            } => {
                // Saturating: a TTL of up to u64::MAX seconds is a valid line, and
                // a wrapped expiry would lie in the past (the block would
                // never exist).
                let expires_ms = if *ttl_s == 0 {
                    0
                } else {
                    at_ms.saturating_add(ttl_s.saturating_mul(1000))
                };
                self.put_manual(token, node, *at_ms, expires_ms, BlockKind::Manual, reason);
                None
            }
            Event::Unblock { token, at_ms } => {
                let expires_ms = at_ms.saturating_add(allow_ttl_s.saturating_mul(1000));
                self.put_manual(
                    token,
                    node,
                    *at_ms,
                    expires_ms,
                    BlockKind::Allow,
                    "unblocked",
                );
                None
            }
            Event::Redeem { token, at_ms } => self.redeem(
                token,
                node,
                *at_ms,
                at_ms.saturating_add(redeem_ttl_s.saturating_mul(1000)),
            ),
        }
    }

    /// A manual entry wins over any entry made earlier (by `since_ms`, then
    /// origin) and loses to a later one, so re-applying events is harmless.
    fn put_manual(
        &mut self,
        token: &str,
        node: u32,
        at_ms: u64,
        expires_ms: u64,
        kind: BlockKind,
        reason: &str,
    ) {
        if let Some(b) = self.blocklist.get(token) {
            if (b.since_ms, b.origin) > (at_ms, node) {
                return;
            }
        }
        self.blocklist.insert(
            token.to_string(),
            Block {
                kind,
                origin: node,
                since_ms: at_ms,
                expires_ms,
                reason: reason.to_string(),
            },
        );
    }

    /// Records a redemption; the same (node, time) twice is one redemption.
    pub fn redeem(
        &mut self,
        token: &str,
        node: u32,
        at_ms: u64,
        expires_ms: u64,
    ) -> Option<String> {
        match self.redemptions.get_mut(token) {
            None => {
                self.redemptions.insert(
                    token.to_string(),
                    Redemption {
                        node,
                        at_ms,
                        expires_ms,
                        second: None,
                    },
                );
                None
            }
            Some(r) if (r.node, r.at_ms) == (node, at_ms) => None,
            Some(r) if r.second.is_some() => None,
            Some(r) => {
                r.second = Some((node, at_ms));
                r.expires_ms = r.expires_ms.max(expires_ms);
                Some(token.to_string())
            }
        }
    }

    /// Adds a rule block unless the token has an entry already (blocked,
    /// or unblocked by hand).
    pub fn block_by_rule(&mut self, token: &str, block: Block) -> bool {
        if self.blocklist.contains_key(token) {
            return false;
        }
        self.blocklist.insert(token.to_string(), block);
        true
    }
}

/// The `info` of a `blocked` set entry: `<kind> (node <origin>): <reason>`.
pub fn block_info(b: &Block) -> String {
    format!("{} (node {}): {}", b.kind.name(), b.origin, b.reason)
}

/// The `info` of a `redeemed` or `flagged` set entry.
pub fn redemption_info(r: &Redemption) -> String {
    match r.second {
        None => format!("redeemed at node {} ({} ms)", r.node, r.at_ms),
        Some((n2, t2)) => format!(
            "redeemed twice: node {} ({} ms) and node {n2} ({t2} ms)",
            r.node, r.at_ms
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(tokens: &[(&str, u64)]) -> Summary {
        let mut s = Summary::new();
        for (t, n) in tokens {
            s.add(t, *n);
        }
        s
    }

    #[test]
    fn old_buckets_age_out_as_the_window_advances() {
        let mut c = Catalog::new(10_000, 3, 100, 100_000);
        c.merge_counts(10, &delta(&[("a", 5)]), 0);
        c.merge_counts(11, &delta(&[("a", 2)]), 1);
        assert_eq!(c.rows()["a"].lo, 7);
        assert_eq!(c.rows()["a"].nodes.len(), 2);
        c.advance_to(13);
        assert_eq!(c.rows()["a"].lo, 2);
        c.merge_counts(9, &delta(&[("a", 9)]), 0); // already gone
        assert_eq!(c.rows()["a"].lo, 2);
        c.advance_to(100);
        assert!(c.rows().is_empty());
    }

    #[test]
    fn later_manual_event_wins_and_reapplying_is_harmless() {
        let mut c = Catalog::new(10_000, 3, 100, 0);
        let block = Event::Block {
            token: "t".into(),
            at_ms: 1_000,
            ttl_s: 60,
            reason: "abuse".into(),
        };
        let unblock = Event::Unblock {
            token: "t".into(),
            at_ms: 2_000,
        };
        c.apply(&unblock, 2, 600, 3_600);
        c.apply(&block, 1, 600, 3_600); // older: ignored
        assert_eq!(c.blocklist["t"].kind, BlockKind::Allow);
        assert_eq!(c.blocklist["t"].expires_ms, 602_000);
        c.expire(602_000);
        assert!(c.blocklist.is_empty());
    }

    #[test]
    fn a_huge_ttl_saturates_instead_of_wrapping_into_the_past() {
        let mut c = Catalog::new(10_000, 3, 100, 0);
        let block = |token: &str| Event::Block {
            token: token.into(),
            at_ms: 1_700_000_000_000,
            ttl_s: u64::MAX,
            reason: "abuse".into(),
        };
        c.apply(&block("ovf"), 1, u64::MAX, u64::MAX);
        assert_eq!(c.blocklist["ovf"].expires_ms, u64::MAX);
        c.expire(1_800_000_000_000);
        assert!(c.blocklist.contains_key("ovf"), "expired at once");
        let unblock = Event::Unblock {
            token: "ovf".into(),
            at_ms: 1_700_000_000_001,
        };
        c.apply(&unblock, 1, u64::MAX, u64::MAX);
        assert_eq!(c.blocklist["ovf"].expires_ms, u64::MAX);
        assert_eq!(c.redeem("otp", 1, 10, u64::MAX), None);
    }

    #[test]
    fn a_second_redemption_elsewhere_is_flagged_once() {
        let mut c = Catalog::new(10_000, 3, 100, 0);
        assert_eq!(c.redeem("otp", 1, 10, 100), None);
        assert_eq!(c.redeem("otp", 1, 10, 100), None, "same redemption again");
        assert_eq!(c.redeem("otp", 4, 12, 102), Some("otp".into()));
        assert_eq!(c.redeem("otp", 5, 13, 103), None, "already flagged");
        assert_eq!(c.redemptions["otp"].second, Some((4, 12)));
    }
}
