//! The [`Pipeline`]: the stations of one node, run in order at every
//! stop, with the bounds a visit must keep (slot count, particle size)
//! and the fault reports that lead to automatic rollbacks.
//!
//! What this module does not own: running one call ([`super::Station`]).

use std::time::Duration;

use super::{FaultReport, Inbox, MAX_HOLD_MS, Station, StationError, StopContext, unix_ms};
use crate::ring::token::{MAX_SLOTS, Particle, slot_overhead};

/// The stations of one node, run in order at every stop.
pub struct Pipeline {
    stations: Vec<Station>,
    node_index: usize,
    /// Stations due for an automatic rollback, with the last fault.
    faulty: Vec<FaultReport>,
    /// Largest particle (encoded frame body, bytes) a visit may leave.
    particle_budget: usize,
}

/// The stop facts shared by every station of one stop.
#[derive(Debug, Clone)]
pub struct StopBase {
    /// Node name.
    pub node_name: String,
    /// Node index.
    pub node_index: u32,
    /// Ring size.
    pub ring_size: u32,
    /// Time since the previous stop here.
    pub lap_time: Option<Duration>,
}

impl Pipeline {
    /// A pipeline over loaded stations.
    ///
    /// `particle_budget` is the largest particle, in encoded bytes, a
    /// visit may leave (the node's frame limit): a station whose slot
    /// would make the particle larger, or that would add a slot past
    /// [`crate::ring::token::MAX_SLOTS`], faults with
    /// [`StationError::BadOutput`] and the particle goes on with its old
    /// slot, so a node never holds a particle it cannot send.
    pub fn new(stations: Vec<Station>, node_index: usize, particle_budget: usize) -> Self {
        Self {
            stations,
            node_index,
            faulty: Vec::new(),
            particle_budget,
        }
    }

    /// Puts `station` in place of the one with its name (returning the old
    /// one), or appends it. Called between visits, never during a call.
    ///
    /// When the new station is another module than the old, the sets the
    /// old one published are cleared: a new release must not leave its
    /// predecessor's entries behind forever (the same module again, with
    /// another config or version, keeps them; see [`super::sets`]).
    pub fn swap(&mut self, station: Station) -> Option<Station> {
        match self.stations.iter_mut().find(|s| s.name == station.name) {
            Some(slot) => {
                if slot.hash != station.hash {
                    station.env.sets.clear_station(&station.name);
                }
                Some(std::mem::replace(slot, station))
            }
            None => {
                self.stations.push(station);
                None
            }
        }
    }

    /// Stations that faulted often enough to be rolled back, each once,
    /// naming exactly what faulted.
    pub fn take_faulty(&mut self) -> Vec<FaultReport> {
        std::mem::take(&mut self.faulty)
    }

    /// The stations, in order.
    pub fn stations(&self) -> &[Station] {
        &self.stations
    }

    /// Whether any station takes inputs as they arrive (`input-station`).
    /// When none does, the owner task never waits on inboxes.
    pub fn takes_inputs(&self) -> bool {
        self.stations.iter().any(|s| s.world().takes_inputs())
    }

    /// The inboxes of the `input-station` stations (shared handles), to
    /// wait on with [`inputs_ready`] without borrowing the pipeline.
    pub fn input_inboxes(&self) -> Vec<Inbox> {
        self.stations
            .iter()
            .filter(|s| s.world().takes_inputs())
            .map(|s| s.inbox().clone())
            .collect()
    }

    /// Gives each `input-station` station one batch of its pending inputs
    /// (`on-input`), in pipeline order. Called by the owner task between
    /// visits, so a particle arriving meanwhile waits for these calls only
    /// (one batch per station, each bounded in count, bytes and time). A
    /// station with inputs still pending is woken again, so the owner
    /// comes back to it after what else waits. A fault is counted and
    /// reported like a visit's.
    pub async fn dispatch_inputs(&mut self) {
        for i in 0..self.stations.len() {
            let station = &mut self.stations[i];
            match station.call_input().await {
                Ok(0) => {}
                Ok(_) => {
                    if !station.inbox().is_empty() {
                        station.inbox().rearm();
                    }
                }
                // Not running (init failed, retried later): its inputs
                // wait in the inbox for a later push or the particle.
                Err(StationError::Init(_)) => {}
                Err(e) => {
                    if !station.inbox().is_empty() {
                        station.inbox().rearm();
                    }
                    self.fault(i, e);
                }
            }
        }
    }

    /// Counts and reports an `on-input` fault of station `i`, queueing a
    /// rollback report when it is due.
    fn fault(&mut self, i: usize, e: StationError) {
        let station = &mut self.stations[i];
        if station.report_fault_as(
            self.node_index,
            &e,
            "on-input call failed; the batch's inputs are gone",
        ) {
            // The count and window go into the cause, so the rollback's
            // report says what it was due to.
            let cause = format!(
                "{} faults within {} s, the last: {e}",
                station.recent_faults.len(),
                station.limits.rollback_window.as_secs_f64()
            );
            station.recent_faults.clear();
            self.faulty.push(FaultReport {
                name: station.name.clone(),
                id: station.id(),
                cause,
            });
        }
    }

    /// Runs every station on the particle, updating each station's slot in
    /// place, and returns the longest hold asked for.
    pub async fn run(&mut self, base: &StopBase, particle: &mut Particle) -> Duration {
        let ctx = StopContext {
            node_name: base.node_name.clone(),
            node_index: base.node_index,
            ring_size: base.ring_size,
            generation: particle.generation,
            lap: particle.lap,
            hop: particle.hop,
            now_unix_ms: unix_ms(),
            last_lap_us: base
                .lap_time
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        };
        let mut hold_ms = 0u32;
        for station in &mut self.stations {
            let had = particle.slots.contains_key(&station.name);
            if !had && particle.slots.len() >= MAX_SLOTS {
                let e = StationError::BadOutput(format!(
                    "not run: the particle already carries {} slots, the bound",
                    particle.slots.len()
                ));
                station.report_fault(self.node_index, &e);
                continue;
            }
            let slot = particle.slots.remove(&station.name).unwrap_or_default();
            let result = station.call(&ctx, &slot).await.and_then(|visit| {
                let size = particle.encoded_len() + slot_overhead(&station.name) + visit.slot.len();
                if size > self.particle_budget {
                    Err(StationError::BadOutput(format!(
                        "its slot of {} bytes would make the particle {size} bytes, over the \
                         node's frame limit of {} bytes",
                        visit.slot.len(),
                        self.particle_budget
                    )))
                } else {
                    Ok(visit)
                }
            });
            match result {
                Ok(visit) => {
                    hold_ms = hold_ms.max(visit.hold_ms.min(MAX_HOLD_MS));
                    particle.slots.insert(station.name.clone(), visit.slot);
                }
                Err(e) => {
                    if station.report_fault(self.node_index, &e) {
                        // The count and window go into the cause, so the
                        // rollback's report says what it was due to.
                        let cause = format!(
                            "{} faults within {} s, the last: {e}",
                            station.recent_faults.len(),
                            station.limits.rollback_window.as_secs_f64()
                        );
                        station.recent_faults.clear();
                        self.faulty.push(FaultReport {
                            name: station.name.clone(),
                            id: station.id(),
                            cause,
                        });
                    }
                    if !slot.is_empty() {
                        particle.slots.insert(station.name.clone(), slot);
                    }
                }
            }
        }
        Duration::from_millis(u64::from(hold_ms))
    }
}

/// Completes once an input was pushed to one of `inboxes` (never, when
/// there is none). Cancel-safe: a push's wake-up is kept until taken.
pub async fn inputs_ready(inboxes: Vec<Inbox>) {
    if inboxes.is_empty() {
        return std::future::pending().await;
    }
    let waits: Vec<_> = inboxes.iter().map(|i| Box::pin(i.ready())).collect();
    futures::future::select_all(waits).await;
}
