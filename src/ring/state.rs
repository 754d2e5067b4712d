//! The sans-IO ring protocol of one node: events in, actions out.
//!
//! [`RingState`] never touches a socket, a timer or a clock. The node's
//! owner task (`node.rs`) feeds it [`Event`]s (a link came up, a particle
//! arrived, the stations finished, a hold elapsed), carrying the current
//! time where it matters, and carries out the [`Action`]s it returns (dial,
//! run the stations, hold, send). Tests drive it by hand, with no runtime.
//!
//! One node's view of the particle moves through these phases:
//!
//! ```text
//!   Idle --ParticleArrived--> Visiting --VisitDone(hold>0)--> Holding
//!     ^                          |                              |
//!     |                     VisitDone(0)                  HoldElapsed
//!     |                          v                              v
//!     +------------Send---- (forward) <-------------------------+
//!                                |  successor link down
//!                                v
//!                             Waiting --DownstreamUp--> Send
//! ```

use std::time::{Duration, Instant};

use super::token::Particle;

/// Fixed parameters of the protocol at one node.
#[derive(Debug, Clone)]
pub struct RingParams {
    /// This node's index in the enumeration.
    pub me: usize,
    /// Members in the enumeration.
    pub size: usize,
    /// First retry delay after a failed dial.
    pub backoff_min: Duration,
    /// Cap on the retry delay.
    pub backoff_max: Duration,
}

/// What happened, as seen by the node's owner task.
#[derive(Debug)]
pub enum Event {
    /// The node started: begin dialing the successor.
    Start,
    /// The link to the successor is up (connected and welcomed).
    DownstreamUp,
    /// Dialing the successor failed, or the established link was lost.
    /// `refused` holds the successor's reason when it refused the hello.
    DownstreamFailed {
        /// The successor's refusal, if it refused.
        refused: Option<String>,
    },
    /// Sending to the successor failed; the particle is handed back so it
    /// is not lost, and goes out again once a link is up.
    SendFailed(Particle),
    /// A particle arrived from the predecessor at time `now`.
    ParticleArrived {
        /// The particle as received.
        particle: Particle,
        /// Arrival time on this node's monotonic clock.
        now: Instant,
    },
    /// The station pipeline finished with the particle.
    VisitDone {
        /// The particle with its updated slots.
        particle: Particle,
        /// How long the stations (and the node's delay) ask to hold it.
        hold: Duration,
    },
    /// The hold asked by [`Action::Hold`] is over.
    HoldElapsed,
}

/// Facts about one stop, computed by the protocol for the stations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopInfo {
    /// Time since the particle's previous stop at this node.
    pub lap_time: Option<Duration>,
}

/// Why a particle was dropped at this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Its generation is below the highest this node has seen.
    Stale {
        /// The highest generation seen here.
        current: u64,
    },
    /// This node already holds a particle of the same generation.
    Duplicate,
}

/// What the owner task must do.
#[derive(Debug)]
pub enum Action {
    /// Dial successor `peer` after waiting `after`.
    Dial {
        /// Index of the member to dial.
        peer: usize,
        /// Backoff before the attempt.
        after: Duration,
    },
    /// Run the station pipeline on the particle, then report
    /// [`Event::VisitDone`].
    Visit {
        /// The particle, with `lap` already advanced for this stop.
        particle: Particle,
        /// Facts about this stop.
        stop: StopInfo,
    },
    /// Wait, then report [`Event::HoldElapsed`].
    Hold(Duration),
    /// Send the particle to the successor.
    Send(Particle),
    /// A particle was injected here (for the log).
    Injected {
        /// Its generation.
        generation: u64,
    },
    /// A particle was dropped here (for the log).
    Dropped {
        /// The dropped particle's generation.
        generation: u64,
        /// Why.
        reason: DropReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Dialing,
    Up,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Visiting,
    Holding(Particle),
    Waiting(Particle),
}

/// The ring protocol state of one node. See the module docs.
#[derive(Debug)]
pub struct RingState {
    params: RingParams,
    link: Link,
    backoff: Duration,
    phase: Phase,
    /// Highest generation seen (0 = none yet).
    generation: u64,
    injected: bool,
    last_visit: Option<Instant>,
}

impl RingState {
    /// A node that has not started.
    ///
    /// # Panics
    /// If `me` is outside the ring.
    pub fn new(params: RingParams) -> Self {
        assert!(params.me < params.size, "node index inside the ring");
        Self {
            backoff: params.backoff_min,
            params,
            link: Link::Dialing,
            phase: Phase::Idle,
            generation: 0,
            injected: false,
            last_visit: None,
        }
    }

    /// Index of the successor this node dials.
    pub fn successor(&self) -> usize {
        (self.params.me + 1) % self.params.size
    }

    /// Highest particle generation seen here.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the link to the successor is up.
    pub fn downstream_up(&self) -> bool {
        self.link == Link::Up
    }

    /// Whether this node currently has the particle (visiting, holding or
    /// waiting for a link).
    pub fn has_particle(&self) -> bool {
        !matches!(self.phase, Phase::Idle)
    }

    /// Feeds one event; the actions to carry out are appended to `out`.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Start => {
                self.link = Link::Dialing;
                out.push(Action::Dial {
                    peer: self.successor(),
                    after: Duration::ZERO,
                });
            }
            Event::DownstreamUp => {
                self.link = Link::Up;
                self.backoff = self.params.backoff_min;
                if let Phase::Waiting(_) = self.phase {
                    let Phase::Waiting(p) = std::mem::replace(&mut self.phase, Phase::Idle) else {
                        unreachable!()
                    };
                    out.push(Action::Send(p));
                } else if self.params.me == 0 && !self.injected && self.generation == 0 {
                    self.inject(out);
                }
            }
            Event::DownstreamFailed { refused } => {
                self.link = Link::Dialing;
                // A refusal (different ring, different version) will not fix
                // itself quickly: retry at the cap rather than hammering.
                let after = if refused.is_some() {
                    self.params.backoff_max
                } else {
                    self.backoff
                };
                self.backoff = (self.backoff * 2).min(self.params.backoff_max);
                out.push(Action::Dial {
                    peer: self.successor(),
                    after,
                });
            }
            Event::SendFailed(p) => {
                self.phase = Phase::Waiting(p);
                if self.link == Link::Up {
                    self.handle(Event::DownstreamFailed { refused: None }, out);
                }
            }
            Event::ParticleArrived { mut particle, now } => {
                if particle.generation < self.generation {
                    out.push(Action::Dropped {
                        generation: particle.generation,
                        reason: DropReason::Stale {
                            current: self.generation,
                        },
                    });
                    return;
                }
                if self.has_particle() {
                    out.push(Action::Dropped {
                        generation: particle.generation,
                        reason: DropReason::Duplicate,
                    });
                    return;
                }
                self.generation = particle.generation;
                if particle.origin as usize == self.params.me && particle.hop > 0 {
                    particle.lap += 1;
                }
                self.visit(particle, now, out);
            }
            Event::VisitDone { particle, hold } => {
                debug_assert!(matches!(self.phase, Phase::Visiting));
                if hold.is_zero() {
                    self.forward(particle, out);
                } else {
                    self.phase = Phase::Holding(particle);
                    out.push(Action::Hold(hold));
                }
            }
            Event::HoldElapsed => {
                if let Phase::Holding(_) = self.phase {
                    let Phase::Holding(p) = std::mem::replace(&mut self.phase, Phase::Idle) else {
                        unreachable!()
                    };
                    self.forward(p, out);
                }
            }
        }
    }

    fn inject(&mut self, out: &mut Vec<Action>) {
        self.injected = true;
        self.generation += 1;
        let particle = Particle::new(self.generation, self.params.me as u32);
        out.push(Action::Injected {
            generation: self.generation,
        });
        // The injecting stop has no arrival time of its own; the owner task
        // stamps its clock when it runs the visit.
        self.phase = Phase::Visiting;
        out.push(Action::Visit {
            particle,
            stop: StopInfo { lap_time: None },
        });
    }

    /// Records the arrival time for lap measurement and starts a visit.
    fn visit(&mut self, particle: Particle, now: Instant, out: &mut Vec<Action>) {
        let lap_time = self.last_visit.map(|t| now.saturating_duration_since(t));
        self.last_visit = Some(now);
        self.phase = Phase::Visiting;
        out.push(Action::Visit {
            particle,
            stop: StopInfo { lap_time },
        });
    }

    fn forward(&mut self, mut particle: Particle, out: &mut Vec<Action>) {
        particle.hop += 1;
        if self.link == Link::Up {
            self.phase = Phase::Idle;
            out.push(Action::Send(particle));
        } else {
            self.phase = Phase::Waiting(particle);
        }
    }

    /// Leaving the ring: a particle held here is forwarded at once rather
    /// than lost with this node (it goes out only if the link is up).
    pub fn release(&mut self, out: &mut Vec<Action>) {
        if let Phase::Holding(_) = self.phase {
            let Phase::Holding(p) = std::mem::replace(&mut self.phase, Phase::Idle) else {
                unreachable!()
            };
            self.forward(p, out);
        }
    }

    /// Records that the injecting node's own first stop happened at `now`,
    /// so its first lap time is measured like everyone else's.
    pub fn stamp_injection(&mut self, now: Instant) {
        if self.last_visit.is_none() {
            self.last_visit = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(me: usize, size: usize) -> RingParams {
        RingParams {
            me,
            size,
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(50),
        }
    }

    fn step(s: &mut RingState, e: Event) -> Vec<Action> {
        let mut out = Vec::new();
        s.handle(e, &mut out);
        out
    }

    /// Runs the visit with no hold, returning what was sent.
    fn pass_through(s: &mut RingState, acts: Vec<Action>) -> Option<Particle> {
        let mut sent = None;
        for a in acts {
            match a {
                Action::Visit { particle, .. } => {
                    let more = step(
                        s,
                        Event::VisitDone {
                            particle,
                            hold: Duration::ZERO,
                        },
                    );
                    sent = pass_through(s, more).or(sent);
                }
                Action::Send(p) => sent = Some(p),
                _ => {}
            }
        }
        sent
    }

    #[test]
    fn start_dials_the_successor_and_wraps_at_the_end() {
        let mut s = RingState::new(params(2, 3));
        let acts = step(&mut s, Event::Start);
        assert!(matches!(acts[..], [Action::Dial { peer: 0, after }] if after.is_zero()));
    }

    #[test]
    fn lowest_node_injects_once_its_link_is_up_and_only_once() {
        let mut s = RingState::new(params(0, 3));
        step(&mut s, Event::Start);
        let acts = step(&mut s, Event::DownstreamUp);
        assert!(matches!(acts[0], Action::Injected { generation: 1 }));
        let sent = pass_through(&mut s, acts).expect("particle sent");
        assert_eq!((sent.generation, sent.hop, sent.lap), (1, 1, 0));
        // Link flaps: no second particle.
        step(&mut s, Event::DownstreamFailed { refused: None });
        let acts = step(&mut s, Event::DownstreamUp);
        assert!(acts.is_empty(), "{acts:?}");
    }

    #[test]
    fn other_nodes_never_inject() {
        let mut s = RingState::new(params(1, 3));
        step(&mut s, Event::Start);
        assert!(step(&mut s, Event::DownstreamUp).is_empty());
    }

    #[test]
    fn lap_counts_at_the_origin_and_lap_time_uses_arrival_times() {
        let t0 = Instant::now();
        let mut s = RingState::new(params(0, 2));
        step(&mut s, Event::Start);
        let acts = step(&mut s, Event::DownstreamUp);
        s.stamp_injection(t0);
        let mut p = pass_through(&mut s, acts).unwrap();
        p.hop += 1; // the other node's stop
        let acts = step(
            &mut s,
            Event::ParticleArrived {
                particle: p,
                now: t0 + Duration::from_millis(7),
            },
        );
        match &acts[0] {
            Action::Visit { particle, stop } => {
                assert_eq!(particle.lap, 1);
                assert_eq!(stop.lap_time, Some(Duration::from_millis(7)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_with_stale_generation_is_dropped() {
        let mut s = RingState::new(params(1, 3));
        let now = Instant::now();
        let acts = step(
            &mut s,
            Event::ParticleArrived {
                particle: Particle::new(5, 0),
                now,
            },
        );
        pass_through(&mut s, acts);
        let acts = step(
            &mut s,
            Event::ParticleArrived {
                particle: Particle::new(4, 0),
                now,
            },
        );
        assert!(matches!(
            acts[..],
            [Action::Dropped {
                generation: 4,
                reason: DropReason::Stale { current: 5 }
            }]
        ));
    }

    #[test]
    fn second_particle_while_holding_one_is_dropped_as_duplicate() {
        let mut s = RingState::new(params(1, 3));
        let now = Instant::now();
        step(
            &mut s,
            Event::ParticleArrived {
                particle: Particle::new(1, 0),
                now,
            },
        );
        let acts = step(
            &mut s,
            Event::ParticleArrived {
                particle: Particle::new(1, 0),
                now,
            },
        );
        assert!(matches!(
            acts[..],
            [Action::Dropped {
                reason: DropReason::Duplicate,
                ..
            }]
        ));
    }

    #[test]
    fn hold_then_forward_and_particle_waits_for_a_link() {
        let mut s = RingState::new(params(1, 3));
        step(&mut s, Event::Start);
        let now = Instant::now();
        let acts = step(
            &mut s,
            Event::ParticleArrived {
                particle: Particle::new(1, 0),
                now,
            },
        );
        let Action::Visit { particle, .. } = acts.into_iter().next().unwrap() else {
            panic!()
        };
        let acts = step(
            &mut s,
            Event::VisitDone {
                particle,
                hold: Duration::from_millis(30),
            },
        );
        assert!(matches!(acts[..], [Action::Hold(d)] if d == Duration::from_millis(30)));
        // Link still down: the particle waits, nothing is lost.
        assert!(step(&mut s, Event::HoldElapsed).is_empty());
        assert!(s.has_particle());
        let acts = step(&mut s, Event::DownstreamUp);
        assert!(matches!(&acts[..], [Action::Send(p)] if p.hop == 1));
        assert!(!s.has_particle());
    }

    #[test]
    fn release_forwards_a_held_particle_at_once() {
        let mut s = RingState::new(params(1, 3));
        step(&mut s, Event::Start);
        step(&mut s, Event::DownstreamUp);
        let acts = step(
            &mut s,
            Event::ParticleArrived {
                particle: Particle::new(1, 0),
                now: Instant::now(),
            },
        );
        let Action::Visit { particle, .. } = acts.into_iter().next().unwrap() else {
            panic!()
        };
        step(
            &mut s,
            Event::VisitDone {
                particle,
                hold: Duration::from_secs(60),
            },
        );
        let mut out = Vec::new();
        s.release(&mut out);
        assert!(matches!(&out[..], [Action::Send(p)] if p.hop == 1));
    }

    #[test]
    fn failed_send_keeps_the_particle_and_redials_with_capped_backoff() {
        let mut s = RingState::new(params(1, 3));
        step(&mut s, Event::Start);
        step(&mut s, Event::DownstreamUp);
        let acts = step(&mut s, Event::SendFailed(Particle::new(1, 0)));
        assert!(matches!(acts[..], [Action::Dial { peer: 2, .. }]));
        assert!(s.has_particle());
        let mut delays = Vec::new();
        for _ in 0..6 {
            for a in step(&mut s, Event::DownstreamFailed { refused: None }) {
                if let Action::Dial { after, .. } = a {
                    delays.push(after.as_millis());
                }
            }
        }
        assert_eq!(delays, vec![10, 20, 40, 50, 50, 50]);
        let acts = step(&mut s, Event::DownstreamUp);
        assert!(matches!(acts[..], [Action::Send(_)]));
    }

    /// A whole ring of states with frames carried by hand: exactly one
    /// particle, visiting nodes in ring order.
    #[test]
    fn a_ring_of_five_states_visits_in_order_with_one_particle() {
        let n = 5;
        let mut nodes: Vec<RingState> = (0..n).map(|i| RingState::new(params(i, n))).collect();
        let mut in_flight: Vec<(usize, Particle)> = Vec::new();
        // Bring links up in reverse order: node 0 injects only when its own
        // link is up, whatever the others do.
        for i in (0..n).rev() {
            step(&mut nodes[i], Event::Start);
            let acts = step(&mut nodes[i], Event::DownstreamUp);
            if let Some(p) = pass_through(&mut nodes[i], acts) {
                in_flight.push(((i + 1) % n, p));
            }
        }
        let mut visits = Vec::new();
        let now = Instant::now();
        for _ in 0..(3 * n) {
            assert_eq!(in_flight.len(), 1, "exactly one particle in flight");
            let (to, p) = in_flight.pop().unwrap();
            let acts = step(&mut nodes[to], Event::ParticleArrived { particle: p, now });
            if let Some(Action::Visit { particle, .. }) = acts.first() {
                visits.push((to, particle.hop, particle.lap));
            }
            let sent = pass_through(&mut nodes[to], acts).unwrap();
            in_flight.push(((to + 1) % n, sent));
        }
        let order: Vec<usize> = visits.iter().map(|v| v.0).collect();
        let expected: Vec<usize> = (0..3 * n).map(|h| (h + 1) % n).collect();
        assert_eq!(order, expected);
        assert!(
            visits
                .iter()
                .all(|&(node, hop, _)| (hop as usize) % n == node)
        );
        assert_eq!(visits.last().unwrap().2, 3);
    }
}
