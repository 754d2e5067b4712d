//! A ring in a test: N nodes (each a [`Local`] and a model of its published
//! sets), one particle visiting them in ring order, a clock moved by hand,
//! crashes and particle losses. No host, no sockets; everything seeded.

use std::collections::BTreeMap;

use crate::catalog::Catalog;
use crate::codec;
use crate::local::{Folded, Local};
use crate::settings::Settings;
use crate::stop::{self, Outcome, SetOp, Stop};

/// One node: its station state, and its sets as its node would serve them.
pub struct Node {
    /// The station instance's memory.
    pub local: Local,
    /// set → key → (info, expires ms; 0 never).
    pub sets: BTreeMap<&'static str, BTreeMap<String, (String, u64)>>,
    /// The last slot this node passed on (what the host regenerates from).
    pub copy: Vec<u8>,
}

/// The ring.
pub struct Sim {
    /// Settings every node runs with.
    pub settings: Settings,
    /// The members, by index.
    pub nodes: Vec<Node>,
    /// The particle's slot, on its way to `next`.
    pub slot: Vec<u8>,
    /// The node the particle stops at next.
    pub next: usize,
    /// The clock, ms since the epoch.
    pub now_ms: u64,
    /// Stops made.
    pub stops: u64,
}

fn fresh_local(s: &Settings) -> Local {
    Local::new(s.bucket_ms(), s.buckets.into(), s.local_capacity)
}

impl Sim {
    /// `n` fresh nodes, the clock at `now_ms`, a brand-new (empty) particle.
    pub fn new(n: usize, settings: Settings, now_ms: u64) -> Self {
        let nodes = (0..n)
            .map(|_| Node {
                local: fresh_local(&settings),
                sets: BTreeMap::new(),
                copy: Vec::new(),
            })
            .collect();
        Self {
            settings,
            nodes,
            slot: Vec::new(),
            next: 0,
            now_ms,
            stops: 0,
        }
    }

    /// Gives node `i` one input (as `on-input` would), now.
    pub fn feed(&mut self, i: usize, input: &str) -> Folded {
        let mut out = Folded::default();
        let node = &mut self.nodes[i];
        node.local.fold(input.as_bytes(), self.now_ms, &mut out);
        for (t, info) in &out.flagged {
            let f = node.sets.entry("flagged").or_default();
            f.insert(t.clone(), (info.clone(), 0));
        }
        out
    }

    /// Feeds `o TOKEN` `n` times to node `i`, in one input.
    pub fn observe(&mut self, i: usize, token: &str, n: usize) {
        let line = format!("o {token}\n");
        self.feed(i, &line.repeat(n));
    }

    /// One stop at `next`; the particle moves on.
    pub fn step(&mut self) -> Outcome {
        let i = self.next;
        let st = Stop {
            node: i as u32,
            ring_size: self.nodes.len() as u32,
            now_ms: self.now_ms,
            slot: &self.slot,
        };
        let node = &mut self.nodes[i];
        let out = stop::stop(&mut node.local, &self.settings, Vec::new(), st);
        assert!(
            out.slot.len() <= self.settings.slot_max_bytes,
            "slot over budget"
        );
        for op in &out.ops {
            match op {
                SetOp::Clear(name) => {
                    node.sets.remove(name);
                }
                SetOp::Put(name, entries) => {
                    let set = node.sets.entry(name).or_default();
                    for e in entries {
                        set.insert(e.key.clone(), (e.info.clone(), e.expires_ms));
                    }
                }
                SetOp::Remove(name, keys) => {
                    let set = node.sets.entry(name).or_default();
                    for k in keys {
                        set.remove(k);
                    }
                }
            }
        }
        node.copy = out.slot.clone();
        self.slot = out.slot.clone();
        self.next = (i + 1) % self.nodes.len();
        self.stops += 1;
        out
    }

    /// Stops until the particle is back where it was (one lap).
    pub fn lap(&mut self) {
        for _ in 0..self.nodes.len() {
            self.step();
        }
    }

    /// Whether node `i` answers "blocked" for `token` now (expired entries
    /// are not served, as the node drops them).
    pub fn is_in(&self, i: usize, set: &str, token: &str) -> bool {
        self.nodes[i]
            .sets
            .get(set)
            .and_then(|s| s.get(token))
            .is_some_and(|(_, exp)| *exp == 0 || *exp > self.now_ms)
    }

    /// Whether node `i` serves `token` as blocked.
    pub fn blocked_at(&self, i: usize, token: &str) -> bool {
        self.is_in(i, "blocked", token)
    }

    /// Whether every node serves `token` as blocked.
    pub fn blocked_everywhere(&self, token: &str) -> bool {
        (0..self.nodes.len()).all(|i| self.blocked_at(i, token))
    }

    /// The particle's catalog.
    pub fn catalog(&self) -> Catalog {
        codec::decode(&self.slot).expect("the sim's slot decodes")
    }

    /// Node `i` restarts: its station memory and its sets are gone.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].local = fresh_local(&self.settings);
        self.nodes[i].sets.clear();
    }

    /// The particle is lost; node `i` regenerates it from its last copy
    /// and stops it first.
    pub fn lose_particle_from_copy_of(&mut self, i: usize) {
        self.slot = self.nodes[i].copy.clone();
        self.next = i;
    }

    /// The particle is lost and regenerated with an empty slot.
    pub fn lose_particle_empty(&mut self) {
        self.slot.clear();
    }
}
