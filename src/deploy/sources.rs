//! Where a release's module can be fetched from: every neighbour that
//! offered the release being fetched, tried in turn, and the neighbours
//! that said they do not keep it (not asked again for that release until
//! they announce anew). Plain state, no I/O and no clock: the time comes
//! in as an argument ([`super::decide`] owns it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::OrderKey;

/// The first wait before a failed fetch of a release is tried again; it
/// doubles with every failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two tries of a failed fetch.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The fetch sources of the releases being fetched, by station name.
#[derive(Default)]
pub(super) struct Sources {
    offers: HashMap<String, Offer>,
    /// Per release: the peers that answered that they do not keep its
    /// module.
    lacking: HashMap<OrderKey, Vec<usize>>,
    /// Per name, a release whose fetch failed: the peers that failed it
    /// (`None`: the failure was ours, every peer waits), the instant before
    /// which they are not asked again, and the wait after the next failure.
    retry: HashMap<String, Retry>,
}

/// The release being fetched for one name.
struct Offer {
    key: OrderKey,
    /// The peer being asked now.
    asking: usize,
    /// Peers that offered it too, to ask next (oldest offer first).
    next: Vec<usize>,
}

struct Retry {
    key: OrderKey,
    peers: Option<Vec<usize>>,
    until: Instant,
    wait: Duration,
}

impl Sources {
    /// A fetch of release `key` of `name` from `peer` starts.
    pub(super) fn asking(&mut self, name: &str, key: OrderKey, peer: usize) {
        match self.offers.get_mut(name) {
            Some(o) if o.key == key => {
                o.asking = peer;
                o.next.retain(|p| *p != peer);
            }
            _ => {
                let offer = Offer {
                    key,
                    asking: peer,
                    next: Vec::new(),
                };
                self.offers.insert(name.to_string(), offer);
            }
        }
    }

    /// `peer` offers release `key` of `name`, which is being fetched from
    /// another peer: kept as the next source to ask.
    pub(super) fn offered(&mut self, name: &str, key: OrderKey, peer: usize) {
        if self.lacks(key, peer) {
            return;
        }
        if let Some(o) = self.offers.get_mut(name).filter(|o| o.key == key)
            && o.asking != peer
            && !o.next.contains(&peer)
        {
            o.next.push(peer);
        }
    }

    /// Whether `peer` said it does not keep release `key`'s module (and
    /// has not announced since).
    pub(super) fn lacks(&self, key: OrderKey, peer: usize) -> bool {
        self.lacking.get(&key).is_some_and(|l| l.contains(&peer))
    }

    /// Whether a fetch of release `key` of `name` from `peer` is to wait:
    /// it failed there (or here) lately.
    pub(super) fn backing_off(&self, name: &str, key: OrderKey, peer: usize, now: Instant) -> bool {
        self.retry.get(name).is_some_and(|r| {
            r.key == key && now < r.until && r.peers.as_ref().is_none_or(|p| p.contains(&peer))
        })
    }

    /// The fetch of release `key` of `name` from `peer` failed; `missing`
    /// when the peer said it does not keep the module. Returns the next
    /// peer that offered the release, now being asked, or `None` when
    /// there is none left (the release then waits, see [`Self::back_off`]).
    pub(super) fn failed(
        &mut self,
        name: &str,
        key: OrderKey,
        peer: usize,
        missing: bool,
        now: Instant,
    ) -> Option<usize> {
        if missing {
            let lacking = self.lacking.entry(key).or_default();
            if !lacking.contains(&peer) {
                lacking.push(peer);
            }
        } else {
            self.back_off(name, key, Some(peer), now);
        }
        let lacking = &self.lacking;
        let o = self.offers.get_mut(name).filter(|o| o.key == key)?;
        o.next
            .retain(|p| *p != peer && !lacking.get(&key).is_some_and(|l| l.contains(p)));
        if o.next.is_empty() {
            self.offers.remove(name);
            return None;
        }
        o.asking = o.next.remove(0);
        Some(o.asking)
    }

    /// Holds off the next fetch of release `key` of `name` from `peer`
    /// (`None`: from any peer): 1 s, doubling with each failure of the same
    /// release up to [`RETRY_MAX`].
    pub(super) fn back_off(
        &mut self,
        name: &str,
        key: OrderKey,
        peer: Option<usize>,
        now: Instant,
    ) {
        let (wait, mut peers) = match self.retry.remove(name) {
            Some(r) if r.key == key => (r.wait, r.peers),
            _ => (RETRY_FIRST, Some(Vec::new())),
        };
        match (peer, peers.as_mut()) {
            (Some(p), Some(list)) if !list.contains(&p) => list.push(p),
            (Some(_), _) => {}
            (None, _) => peers = None,
        }
        let retry = Retry {
            key,
            peers,
            until: now + wait,
            wait: (wait * 2).min(RETRY_MAX),
        };
        self.retry.insert(name.to_string(), retry);
    }

    /// Release `key` of `name` was fetched: its sources are forgotten.
    pub(super) fn done(&mut self, name: &str, key: OrderKey) {
        self.retry.remove(name);
        self.offers.remove(name);
        self.lacking.remove(&key);
    }

    /// `peer` announced a changed list of releases: it is asked again for
    /// any of them.
    pub(super) fn announced(&mut self, peer: usize) {
        self.lacking.retain(|_, l| {
            l.retain(|p| *p != peer);
            !l.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Hash;

    fn key(v: u64) -> OrderKey {
        (v, 0, 0, Hash::of(&v.to_le_bytes()))
    }

    #[test]
    fn a_peer_without_the_module_gives_way_to_the_next_that_offered_it() {
        let mut s = Sources::default();
        let now = Instant::now();
        s.asking("m", key(3), 1);
        s.offered("m", key(3), 2);
        s.offered("m", key(3), 1); // the one being asked: not queued twice
        assert_eq!(s.failed("m", key(3), 1, true, now), Some(2));
        assert!(s.lacks(key(3), 1));
        assert!(!s.backing_off("m", key(3), 2, now));
        // Peer 2 fails too: nobody left.
        assert_eq!(s.failed("m", key(3), 2, true, now), None);
        // Peer 1 is not queued again until it announces.
        s.asking("m", key(3), 0);
        s.offered("m", key(3), 1);
        assert_eq!(s.failed("m", key(3), 0, false, now), None);
        s.announced(1);
        assert!(!s.lacks(key(3), 1));
    }

    #[test]
    fn a_failed_peer_backs_off_and_the_others_do_not() {
        let mut s = Sources::default();
        let now = Instant::now();
        s.asking("m", key(3), 1);
        assert_eq!(s.failed("m", key(3), 1, false, now), None);
        assert!(s.backing_off("m", key(3), 1, now));
        assert!(!s.backing_off("m", key(3), 2, now));
        assert!(!s.backing_off("m", key(4), 1, now));
        s.back_off("m", key(3), None, now);
        assert!(s.backing_off("m", key(3), 2, now));
        s.done("m", key(3));
        assert!(!s.backing_off("m", key(3), 1, now));
    }
}
