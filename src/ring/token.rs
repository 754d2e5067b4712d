//! The particle: the one token that circles the ring, and the invariants it
//! carries (generation, lap, hop, per-station slots).

use std::collections::BTreeMap;

/// Which particle: compared by generation, then by origin, so two
/// particles made at once on two sides of a partition still order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ParticleId {
    /// Generation: one more than the highest seen where it was made.
    pub generation: u64,
    /// Index of the node that made it.
    pub origin: u32,
}

impl std::fmt::Display for ParticleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.generation, self.origin)
    }
}

/// A heartbeat's word on the particle: "particle `id` was alive `age_ms`
/// ago, as learnt `relays` links upstream of the sender" (0: the sender
/// holds it or passed it itself).
///
/// Every ping carries the sender's freshest such fact, so a node far from a
/// member that holds the particle for long (a slow station, a long hold)
/// knows it is not lost and does not regenerate one. The age is measured
/// on each node's own clock and only ever grows along the way (transit time
/// is not added, which is why `relays` is bounded by the live members: the
/// fact never comes back round to make itself fresher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alive {
    /// The particle known alive.
    pub id: ParticleId,
    /// How long ago, in milliseconds, on the sender's clock.
    pub age_ms: u32,
    /// Links the fact crossed before the sender.
    pub relays: u16,
}

/// The particle circling the ring.
///
/// Invariants, kept by [`super::state::RingState`]:
/// - the highest [`ParticleId`] a node has seen never decreases; a particle
///   with a lower id is dropped where it is met;
/// - for one id, `hop` only grows: by one per stop, and by one more per
///   member skipped, so a resent copy and the original carry the same hop
///   at the same member and the later one is dropped as a duplicate;
/// - `lap` increases by one each time the particle arrives at `origin`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Particle {
    /// Which particle this is; a regenerated particle has a higher one.
    pub generation: u64,
    /// Completed laps.
    pub lap: u64,
    /// Stops since injection.
    pub hop: u64,
    /// Index of the node that injected this particle; laps count at it.
    pub origin: u32,
    /// Live members as this particle last heard: bit `i` for member `i`
    /// (empty until the first stop writes it).
    pub view: Vec<u8>,
    /// One private slot per station name: bytes only that station reads
    /// and writes.
    pub slots: BTreeMap<String, Vec<u8>>,
}

impl Particle {
    /// A fresh particle injected at `origin`.
    pub fn new(generation: u64, origin: u32) -> Self {
        Self {
            generation,
            origin,
            ..Self::default()
        }
    }

    /// The particle's identity, ordered: a higher id supersedes a lower.
    pub fn id(&self) -> ParticleId {
        ParticleId {
            generation: self.generation,
            origin: self.origin,
        }
    }

    /// Total bytes of slot data carried.
    pub fn slot_bytes(&self) -> usize {
        self.slots.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}
