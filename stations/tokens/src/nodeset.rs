//! A set of ring member indices (a bitset), the "distinct nodes that saw a
//! token" of the slot.

use crate::summary::Payload;

/// Member indices `0..ring-size`, one bit each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSet(Vec<u64>);

impl NodeSet {
    /// The set holding only `node`.
    pub fn single(node: u32) -> Self {
        let mut s = Self::default();
        s.insert(node);
        s
    }

    /// Adds `node`.
    pub fn insert(&mut self, node: u32) {
        let (w, b) = ((node / 64) as usize, node % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }

    /// Adds every member of `other`.
    pub fn union(&mut self, other: &NodeSet) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    /// How many members.
    pub fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    /// Whether no member.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64u32)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w as u32 * 64 + b)
        })
    }
}

impl Payload for NodeSet {
    fn absorb(&mut self, other: &Self) {
        self.union(other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_counts_distinct_members() {
        let mut a = NodeSet::single(3);
        a.insert(70);
        let mut b = NodeSet::single(3);
        b.insert(1);
        a.union(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 3, 70]);
    }
}
