//! Releases (a station name at a version), their order, and the conflicts
//! nodes report when two orders disagree.

use serde::{Deserialize, Serialize};

use super::Hash;

/// One version of one station, as every node records it. Releases of a
/// name are totally ordered by (publish time, version, origin, hash): see
/// [`Release::key`]; two pushes of the same name on different nodes pick
/// the same winner everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The station's name (its slot in the particle).
    pub name: String,
    /// Increases with every push or rollback of this name. 0 is the
    /// version a node was started with; it never travels.
    pub version: u64,
    /// The ring index of the node that published it.
    pub origin: u32,
    /// sha-256 of the component bytes.
    pub hash: Hash,
    /// Component size in bytes.
    pub size: u64,
    /// The station's `init` config.
    #[serde(default)]
    pub config: Vec<(String, String)>,
    /// ed25519 public key of the signer, if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<Hash>,
    /// The signature over the module hash (hex), if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When it was published, in unix milliseconds: the publisher's wall
    /// clock, but always after every release of the name the publisher
    /// knew (a hybrid clock), so within one history it grows with the
    /// version. 0 for version 0 and for records written before releases
    /// carried it.
    #[serde(default)]
    pub published_ms: u64,
}

/// What a node tells its successor about releases (the announce frame):
/// the releases it holds (current, and refused ones it passes on), and
/// the newer ones it is fetching now ("on their way"), relayed before the
/// module is here so that every node learns of a release within one trip
/// round the ring. A successor may fetch a coming release from the node
/// as a stream (cut-through); nothing is recorded before its hash checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announce {
    /// Releases held (module here and checked).
    pub held: Vec<Release>,
    /// Releases being fetched, newer than the held one of their name.
    pub coming: Vec<Release>,
}

impl Announce {
    /// An announce of held releases only.
    pub fn held(held: Vec<Release>) -> Self {
        Self {
            held,
            coming: Vec::new(),
        }
    }
}

/// A release's place in the order of its name: (publish time in unix ms,
/// version, origin, hash), compared left to right.
pub type OrderKey = (u64, u64, u32, Hash);

impl Release {
    /// The order key: publish time first, then version, origin and hash.
    ///
    /// Within one history (each release published by a node that knew the
    /// one before) time and version grow together, so this is the version
    /// order. Releases published without knowledge of each other (two
    /// pushes at once, or a ring rebuilt from empty data dirs while a
    /// member with the old records was away) are ordered by when they were
    /// published: the operator's newest push wins, whatever the version
    /// numbers say. Where the two orders disagree the pair is a
    /// [`Conflict`], reported by the nodes that meet both releases.
    pub fn key(&self) -> OrderKey {
        (self.published_ms, self.version, self.origin, self.hash)
    }

    /// Whether `self` supersedes `other` (same name assumed).
    pub fn newer_than(&self, other: &Release) -> bool {
        self.key() > other.key()
    }

    /// Whether version order and publish order disagree for `self` and
    /// `other` (same name assumed): a higher version published earlier,
    /// which only happens to releases made without knowledge of each
    /// other.
    pub fn conflicts_with(&self, other: &Release) -> bool {
        use std::cmp::Ordering::{Greater, Less};
        matches!(
            (
                self.version.cmp(&other.version),
                self.published_ms.cmp(&other.published_ms)
            ),
            (Greater, Less) | (Less, Greater)
        )
    }

    /// `name v3 (abcdef012345)`, for logs and tools.
    pub fn label(&self) -> String {
        format!("{} v{} ({})", self.name, self.version, self.hash.short())
    }
}

/// How far ahead of a node's wall clock a release's publish time may be
/// (unix ms) and still be adopted there, and how far ahead of it a node
/// stamps a release of its own: 60 s. Clocks of a ring differ by far less
/// when they are synchronised at all; a publish time further ahead is a
/// clock set wrong, or a record from another history, and adopting it
/// would let that release win every order comparison until the clocks
/// catch up (see [`Conflict`]).
pub const MAX_AHEAD_MS: u64 = 60_000;

/// A release of a name that is not adopted silently, as `status` and
/// `push` show it: either two releases whose version order and publish
/// order disagree (see [`Release::key`]), typically a member returning
/// with the records of a ring that was rebuilt while it was away, where
/// the newer publish wins; or a release published more than
/// [`MAX_AHEAD_MS`] ahead of the reporting node's clock, which is set
/// aside. Reported by the nodes that met both sides (the one holding the
/// stale release and the ones it offered it to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The station name.
    pub name: String,
    /// The release kept: the one published later, or (for a release from
    /// the future) what the node had, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<Release>,
    /// The release set aside: a higher version published earlier, or a
    /// release from the future.
    pub stale: Release,
    /// How far (ms) `stale` was published ahead of the reporting node's
    /// clock when it was set aside for that; `None` for an order conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead_ms: Option<u64>,
    /// The ring index of the member that held the other side, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<u32>,
}

impl Conflict {
    /// The pair ordered: `a` and `b` must conflict (see
    /// [`Release::conflicts_with`]).
    pub fn of(a: &Release, b: &Release, peer: Option<u32>) -> Self {
        let (kept, stale) = if a.newer_than(b) { (a, b) } else { (b, a) };
        Self {
            name: kept.name.clone(),
            kept: Some(kept.clone()),
            stale: stale.clone(),
            ahead_ms: None,
            peer,
        }
    }

    /// `stale` set aside because it was published `ahead_ms` after `now`
    /// (more than [`MAX_AHEAD_MS`]); `kept` is what the node has instead.
    pub fn future(
        stale: &Release,
        kept: Option<&Release>,
        ahead_ms: u64,
        peer: Option<u32>,
    ) -> Self {
        Self {
            name: stale.name.clone(),
            kept: kept.cloned(),
            stale: stale.clone(),
            ahead_ms: Some(ahead_ms),
            peer,
        }
    }

    /// Whether `release` is one of the two sides.
    pub fn involves(&self, release: &Release) -> bool {
        self.stale.key() == release.key()
            || self.kept.as_ref().is_some_and(|k| k.key() == release.key())
    }

    /// One line for logs and tools.
    pub fn message(&self) -> String {
        let from = self
            .peer
            .map_or(String::new(), |p| format!(" (other side: node {p})"));
        let Some(kept) = self.kept.as_ref().filter(|_| self.ahead_ms.is_none()) else {
            let ahead = self.ahead_ms.unwrap_or(0);
            let kept = self.kept.as_ref().map_or(String::new(), |k| {
                format!("; kept v{} ({})", k.version, k.hash.short())
            });
            return format!(
                "release conflict on {}: v{} ({}) was published {:.0} s in the future: a clock \
                 ahead, or a record from another history; not adopted{kept}{from}",
                self.name,
                self.stale.version,
                self.stale.hash.short(),
                ahead as f64 / 1e3,
            );
        };
        let earlier = kept.published_ms.saturating_sub(self.stale.published_ms);
        format!(
            "release conflict on {}: v{} ({}) has the higher version but was published {:.1} s \
             before v{} ({}); kept v{}, the newer publish, set v{} aside{from}; \
             a ring rebuilt while a member with old records was away?",
            self.name,
            self.stale.version,
            self.stale.hash.short(),
            earlier as f64 / 1e3,
            kept.version,
            kept.hash.short(),
            kept.version,
            self.stale.version,
        )
    }
}

/// A station config as settings: the last value given for a key wins and
/// the order of distinct keys does not matter. Returned sorted by key,
/// which is how releases carry it, so two configs with the same settings
/// are equal lists.
pub fn settings(config: &[(String, String)]) -> Vec<(String, String)> {
    let map: std::collections::BTreeMap<&str, &str> = config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    map.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The version and publish time (unix ms) of the next release of a name
/// made at wall-clock time `now_ms`: a version above every one in
/// `known`, and a publish time after every one in `floor` (the releases
/// the new one must order after: what the node has adopted) and no
/// earlier than `now_ms`.
///
/// # Errors
/// When the version counter is at its maximum ("version counter of NAME
/// exhausted"), or when ordering after a release of `floor` would take the
/// publish time more than [`MAX_AHEAD_MS`] past `now_ms` (naming that
/// release): publishing would carry its clock skew on.
pub fn next_stamp<'a>(
    name: &str,
    known: impl IntoIterator<Item = &'a Release>,
    floor: impl IntoIterator<Item = &'a Release>,
    now_ms: u64,
) -> anyhow::Result<(u64, u64)> {
    let top = known.into_iter().map(|r| r.version).max().unwrap_or(0);
    let version = top.checked_add(1).ok_or_else(|| {
        anyhow::anyhow!(
            "version counter of {name} exhausted (v{top} is recorded); \
             the version cannot go higher"
        )
    })?;
    let latest = floor.into_iter().max_by_key(|r| r.published_ms);
    let mut published = now_ms;
    if let Some(r) = latest {
        let after = r.published_ms.saturating_add(1);
        let ahead = after.saturating_sub(now_ms);
        if ahead > MAX_AHEAD_MS {
            anyhow::bail!(
                "{} was published {:.0} s in the future of this node's clock (a clock ahead, \
                 or a record from another history); a release ordered after it would carry \
                 that skew on: correct the clock, or push to a node that has not adopted it",
                r.label(),
                ahead as f64 / 1e3
            );
        }
        published = published.max(after);
    }
    Ok((version, published))
}

#[cfg(test)]
impl Release {
    /// A release for tests: one byte, no config, unsigned.
    pub(crate) fn sample(
        name: &str,
        version: u64,
        origin: u32,
        hash: Hash,
        published_ms: u64,
    ) -> Self {
        Self {
            name: name.into(),
            version,
            origin,
            hash,
            size: 1,
            config: vec![],
            signer: None,
            signature: None,
            published_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Request;

    fn rel(version: u64, origin: u32, h: u8) -> Release {
        at(version, origin, h, version * 1000)
    }

    fn at(version: u64, origin: u32, h: u8, published_ms: u64) -> Release {
        Release::sample("s", version, origin, Hash([h; 32]), published_ms)
    }

    #[test]
    fn releases_order_by_publish_time_then_version_origin_and_hash() {
        assert!(rel(2, 0, 0).newer_than(&rel(1, 9, 9)));
        assert!(at(2, 3, 0, 5).newer_than(&at(2, 1, 9, 5)));
        assert!(at(2, 3, 5, 5).newer_than(&at(2, 3, 4, 5)));
        assert!(!rel(2, 3, 4).newer_than(&rel(2, 3, 4)));
        // A rebuilt ring's v1 published after the old ring's v3 wins.
        let (old_v3, new_v1) = (at(3, 2, 6, 1_000), at(1, 0, 1, 9_000));
        assert!(new_v1.newer_than(&old_v3));
        assert!(new_v1.conflicts_with(&old_v3) && old_v3.conflicts_with(&new_v1));
        let c = Conflict::of(&old_v3, &new_v1, Some(2));
        assert_eq!((c.kept.as_ref().unwrap().version, c.stale.version), (1, 3));
        let m = c.message();
        assert!(
            m.contains("v3") && m.contains("kept v1") && m.contains("8.0 s"),
            "{m}"
        );
        // One history, or two pushes at once of the same version: no
        // conflict.
        assert!(!rel(2, 0, 0).conflicts_with(&rel(1, 0, 0)));
        assert!(!at(1, 0, 0, 5).conflicts_with(&at(1, 3, 1, 7)));
        // Records from before publish times: version order.
        assert!(at(3, 0, 0, 0).newer_than(&at(2, 0, 0, 0)));
    }

    #[test]
    fn configs_compare_as_settings() {
        let kv = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ab = settings(&kv(&[("a", "1"), ("b", "2")]));
        assert_eq!(ab, settings(&kv(&[("b", "2"), ("a", "1")])));
        assert_eq!(ab, settings(&kv(&[("a", "0"), ("b", "2"), ("a", "1")])));
        assert_ne!(ab, settings(&kv(&[("a", "1"), ("b", "2"), ("a", "0")])));
    }

    #[test]
    fn stamps_refuse_an_exhausted_counter_and_a_floor_far_in_the_future() {
        let now = 1_000_000_000;
        let (a, b) = (at(2, 0, 1, now - 5), at(7, 0, 2, now - 9));
        assert_eq!(next_stamp("s", [&a, &b], [&a], now).unwrap(), (8, now));
        // Just ahead (a neighbour's clock a little fast): after it.
        let near = at(3, 0, 3, now + 500);
        assert_eq!(
            next_stamp("s", [&near], [&near], now).unwrap(),
            (4, now + 501)
        );
        let max = at(u64::MAX, 0, 4, now);
        let e = next_stamp("s", [&max], [&max], now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version counter of s exhausted"), "{e}");
        let far = at(3, 0, 5, now + 3_600_000);
        let e = next_stamp("s", [&far], [&far], now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s v3") && e.contains("3600 s in the future"),
            "{e}"
        );
        // Known only for its version (set aside): no floor.
        assert_eq!(next_stamp("s", [&far], [&a], now).unwrap(), (4, now));
        let top = at(3, 0, 6, u64::MAX);
        assert!(next_stamp("s", [&top], [&top], now).is_err());
        let c = Conflict::future(&far, Some(&a), 3_600_000, Some(2));
        let m = c.message();
        assert!(
            m.contains("3600 s in the future") && m.contains("kept v2"),
            "{m}"
        );
        assert!(c.involves(&far) && c.involves(&a) && !c.involves(&b));
    }

    #[test]
    fn messages_round_trip_as_json() {
        let r = rel(3, 1, 0xab);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(&"ab".repeat(32)), "{json}");
        assert_eq!(serde_json::from_str::<Release>(&json).unwrap(), r);
        let req = Request::Fetch {
            release: r,
            have: vec![Hash([1; 32])],
            stream: true,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("\"op\":\"fetch\""), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), req);
        assert!(serde_json::from_str::<Hash>("\"zz\"").is_err());
    }
}
