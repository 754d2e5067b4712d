//! The particle: the one token that circles the ring, and the invariants it
//! carries (generation, lap, hop, per-station slots).

use std::collections::BTreeMap;

/// Most slots a particle carries: one per station name, so a ring runs at
/// most this many distinct stations. A particle with more is refused at
/// decode, and a station whose slot would be one more is not run.
pub const MAX_SLOTS: usize = 64;

/// Longest slot name (a station name is 1–64 bytes).
pub const MAX_SLOT_NAME_BYTES: usize = 64;

/// Largest slot a station may return (1 MiB); a larger one is a fault, and
/// a particle carrying one is refused at decode.
pub const MAX_SLOT_BYTES: usize = 1 << 20;

/// Longest live-member bitmap: one bit per member of a ring of at most
/// 65536 members.
pub const MAX_VIEW_BYTES: usize = 65536 / 8;

/// Bytes of a particle's encoding besides its view and slots: the kind
/// byte, generation, lap, hop, origin, the view's and the slot count's
/// lengths.
pub const PARTICLE_HEAD_BYTES: usize = 1 + 8 * 3 + 4 + 2 + 2;

/// Bytes one slot adds to a particle's encoding besides its data: the
/// name's length byte, the name, the data's 4-byte length.
pub fn slot_overhead(name: &str) -> usize {
    1 + name.len() + 4
}

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
/// - for one id, `hop` only grows: each send advances it by the ring
///   distance from the sender to its successor (one, plus one per member
///   skipped), so the particle carries the same hop at a member whichever
///   members were skipped on the way, a resent copy and the original meet
///   with the same hop, and the later one is dropped as a duplicate;
/// - `lap` increases by one each time the particle arrives at `origin`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Particle {
    /// Which particle this is; a regenerated particle has a higher one.
    pub generation: u64,
    /// Completed laps.
    pub lap: u64,
    /// Ring steps since injection: each send adds the distance in the
    /// enumeration to the successor (members skipped count).
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

    /// The size of this particle's frame body on the wire, in bytes.
    pub fn encoded_len(&self) -> usize {
        PARTICLE_HEAD_BYTES
            + self.view.len()
            + self
                .slots
                .iter()
                .map(|(k, v)| slot_overhead(k) + v.len())
                .sum::<usize>()
    }

    /// The first bound of this module the particle breaks, if any, as
    /// (what, how many, the bound).
    pub fn over_bound(&self) -> Option<(&'static str, usize, usize)> {
        if self.view.len() > MAX_VIEW_BYTES {
            return Some(("view bytes", self.view.len(), MAX_VIEW_BYTES));
        }
        if self.slots.len() > MAX_SLOTS {
            return Some(("slots", self.slots.len(), MAX_SLOTS));
        }
        for (name, data) in &self.slots {
            if name.len() > MAX_SLOT_NAME_BYTES {
                return Some(("slot name bytes", name.len(), MAX_SLOT_NAME_BYTES));
            }
            if data.len() > MAX_SLOT_BYTES {
                return Some(("slot bytes", data.len(), MAX_SLOT_BYTES));
            }
        }
        None
    }
}
