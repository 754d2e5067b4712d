//! The Misra–Gries summary every count goes through: node-local deltas, this
//! node's window and the slot's buckets. It owns the counters and their error
//! bound; it knows nothing of time, nodes or the slot's bytes.
//!
//! # Bounds (Misra–Gries 1982; mergeability: Agarwal et al. 2012, "Mergeable
//! summaries", §2)
//!
//! A summary has seen `total` observations (N). Each kept token has a counter
//! `lo`, and the summary has one `deficit` (Δ). For every token `t` with true
//! count `f(t)` among those N observations (`lo(t) = 0` when `t` is not kept):
//!
//! ```text
//! lo(t) <= f(t) <= lo(t) + Δ            and          Δ <= (N - Σ lo) / (k + 1)
//! ```
//!
//! where `k` is the smallest capacity the summary (or any summary merged into
//! it) was ever reduced to. `lo` is the *guaranteed lower bound* rules decide
//! on; `Δ` is every entry's error. Why it holds: adding an observation adds 1
//! to N and to one counter; [`Summary::merge`] adds N, the counters and Δ; a
//! [`Summary::reduce`] to `k` subtracts the (k+1)-th largest counter `c` from
//! at least `k + 1` counters (Σ lo drops by at least `(k + 1) c`) and adds `c`
//! to Δ. So each token loses at most Δ from its counter and the second
//! inequality survives every step.
//!
//! Keys are `Box<str>` in a std `HashMap` with its random SipHash keys: the
//! tokens come from the attacker, so the table must not be collision-prone.

use std::collections::HashMap;

/// What rides with a counter besides its value: nothing for node-local
/// summaries, the set of nodes that saw the token for the slot's buckets.
pub trait Payload: Default + Clone {
    /// Folds `other` (the same token's payload from another summary) in.
    fn absorb(&mut self, other: &Self);
}

impl Payload for () {
    fn absorb(&mut self, _other: &Self) {}
}

/// One kept token: its lower-bound count and its payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counter<V> {
    /// Guaranteed lower bound of the token's count (see the module doc).
    pub lo: u64,
    /// The payload (e.g. the nodes that saw it).
    pub extra: V,
}

/// A Misra–Gries summary with mergeable, lower-bound counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary<V = ()> {
    entries: HashMap<Box<str>, Counter<V>>,
    total: u64,
    deficit: u64,
}

impl<V: Payload> Summary<V> {
    /// An empty summary.
    pub fn new() -> Self {
        Self {
            entries: HashMap::new(),
            total: 0,
            deficit: 0,
        }
    }

    /// Rebuilds a summary from its parts (the slot decoder). The caller
    /// vouches for the invariant; counters of 0 are dropped.
    pub fn from_parts(
        entries: impl IntoIterator<Item = (Box<str>, Counter<V>)>,
        total: u64,
        deficit: u64,
    ) -> Self {
        let entries = entries.into_iter().filter(|(_, c)| c.lo > 0).collect();
        Self {
            entries,
            total,
            deficit,
        }
    }

    /// Counts `n` observations of `token` (no reduction: call
    /// [`Summary::reduce`] when [`Summary::len`] passes the capacity).
    #[inline]
    pub fn add(&mut self, token: &str, n: u64) {
        self.total += n;
        match self.entries.get_mut(token) {
            Some(c) => c.lo += n,
            None => {
                self.entries.insert(
                    token.into(),
                    Counter {
                        lo: n,
                        extra: V::default(),
                    },
                );
            }
        }
    }

    /// Adds `other` (observations disjoint from this summary's) in, mapping
    /// its payload with `extra`: counters, N and Δ add up. Reduce afterwards.
    pub fn merge<W>(&mut self, other: &Summary<W>, extra: impl Fn(&W) -> V) {
        self.total += other.total;
        self.deficit += other.deficit;
        for (token, c) in &other.entries {
            let e = extra(&c.extra);
            match self.entries.get_mut(token) {
                Some(mine) => {
                    mine.lo += c.lo;
                    mine.extra.absorb(&e);
                }
                None => {
                    self.entries
                        .insert(token.clone(), Counter { lo: c.lo, extra: e });
                }
            }
        }
    }

    /// Keeps at most `k` counters: subtracts the (k+1)-th largest counter
    /// from all, drops those left at 0 and adds it to Δ (see the module doc).
    /// Returns the amount subtracted (0 when nothing had to go).
    pub fn reduce(&mut self, k: usize) -> u64 {
        if self.entries.len() <= k {
            return 0;
        }
        let mut values: Vec<u64> = self.entries.values().map(|c| c.lo).collect();
        // Descending: index k is the (k+1)-th largest.
        let (_, &mut cut, _) = values.select_nth_unstable_by(k, |a, b| b.cmp(a));
        self.entries.retain(|_, c| {
            c.lo = c.lo.saturating_sub(cut);
            c.lo > 0
        });
        self.deficit += cut;
        cut
    }

    /// The token's guaranteed lower bound (0 when not kept).
    pub fn lower(&self, token: &str) -> u64 {
        self.entries.get(token).map_or(0, |c| c.lo)
    }

    /// The token's counter, if kept.
    pub fn get(&self, token: &str) -> Option<&Counter<V>> {
        self.entries.get(token)
    }

    /// Mutable access to a kept token's counter (payload updates).
    pub fn get_mut(&mut self, token: &str) -> Option<&mut Counter<V>> {
        self.entries.get_mut(token)
    }

    /// Observations seen (N), including those no longer attributed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Δ: the most any token's true count exceeds its `lo`.
    pub fn deficit(&self) -> u64 {
        self.deficit
    }

    /// Kept tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was ever counted.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The kept tokens, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Counter<V>)> {
        self.entries.iter().map(|(k, v)| (&**k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{zipf_stream, Rng};

    fn exact(stream: &[String]) -> HashMap<&str, u64> {
        let mut m = HashMap::new();
        for t in stream {
            *m.entry(t.as_str()).or_insert(0) += 1;
        }
        m
    }

    fn check_bounds(s: &Summary, truth: &HashMap<&str, u64>, k: usize) {
        let n = s.total();
        let sum_lo: u64 = s.iter().map(|(_, c)| c.lo).sum();
        assert!(s.deficit() * (k as u64 + 1) <= n - sum_lo, "Δ bound");
        for (t, &f) in truth {
            let lo = s.lower(t);
            assert!(
                lo <= f && f <= lo + s.deficit(),
                "{t}: {lo} <= {f} <= {lo}+Δ"
            );
        }
    }

    #[test]
    fn reduced_summary_brackets_exact_counts_on_a_zipf_stream() {
        let mut rng = Rng::new(7);
        let stream = zipf_stream(&mut rng, 200_000, 50_000, 1.1);
        let truth = exact(&stream);
        let k = 256;
        let mut s = Summary::<()>::new();
        for t in &stream {
            s.add(t, 1);
            if s.len() > 2 * k {
                s.reduce(k);
            }
        }
        s.reduce(k);
        assert!(s.len() <= k);
        check_bounds(&s, &truth, k);
        assert!(s.deficit() <= 200_000 / 257);
    }

    #[test]
    fn merged_summaries_keep_the_bound_of_the_whole_stream() {
        let mut rng = Rng::new(11);
        let stream = zipf_stream(&mut rng, 120_000, 30_000, 1.0);
        let truth = exact(&stream);
        let k = 128;
        let mut merged = Summary::<()>::new();
        for part in stream.chunks(7_919) {
            let mut s = Summary::<()>::new();
            for t in part {
                s.add(t, 1);
                if s.len() > 2 * k {
                    s.reduce(k);
                }
            }
            s.reduce(k);
            merged.merge(&s, |_| ());
            merged.reduce(k);
        }
        assert_eq!(merged.total(), 120_000);
        check_bounds(&merged, &truth, k);
    }

    #[test]
    fn reduce_keeps_at_most_k_even_with_ties() {
        let mut s = Summary::<()>::new();
        for i in 0..10 {
            s.add(&format!("t{i}"), 5);
        }
        assert_eq!(s.reduce(3), 5);
        assert_eq!(s.len(), 0);
        assert_eq!(s.deficit(), 5);
    }
}
