//! The particle: the one token that circles the ring, and the invariants it
//! carries (generation, lap, hop, per-station slots).

use std::collections::BTreeMap;

/// The particle circling the ring.
///
/// Invariants, kept by [`super::state::RingState`]:
/// - `generation` never decreases at any node; a particle whose generation
///   is below the highest one a node has seen is dropped there.
/// - `hop` increases by one per stop; the injecting stop is hop 0.
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

    /// Total bytes of slot data carried.
    pub fn slot_bytes(&self) -> usize {
        self.slots.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}
