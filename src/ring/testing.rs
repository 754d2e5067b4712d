//! `Net`: a deterministic, seeded simulation of a whole ring of
//! [`RingState`]s, with no sockets and no clock. It plays the owner task's
//! part (dials, links, pings, stations that return at once) and injects
//! faults: crashes, hangs (SIGSTOP), partitions, slow stations (a visit
//! that keeps the owner busy while the node's link tasks go on pinging),
//! and dropped, duplicated, delayed and reordered frames.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::state::{Action, DialResult, Event, LinkId, RingParams, RingState, UpstreamId};
use super::token::{Particle, ParticleId};

/// One stop, as the simulation saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// Simulated time since the start.
    pub at: Duration,
    /// The node.
    pub node: usize,
    /// The particle.
    pub id: ParticleId,
    /// Its hop.
    pub hop: u64,
}

/// Fault rates applied to particle and ack frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Probability a frame is lost.
    pub drop: f64,
    /// Probability a frame is delivered twice.
    pub dup: f64,
    /// Extra random delay, up to this much (reorders frames).
    pub jitter: Duration,
}

#[derive(Debug)]
enum Delivery {
    Particle {
        from: usize,
        link: LinkId,
        particle: Particle,
    },
    Forwarded {
        link: LinkId,
        id: ParticleId,
        hop: u64,
    },
    Dialed {
        link: LinkId,
        result: DialResult,
        peer: usize,
    },
    LinkLost(LinkId),
    HoldElapsed,
    /// A pong on `link`.
    Heard(LinkId),
    /// A ping from upstream, as the owner task gets it.
    Alive(Option<super::token::Alive>),
    /// A slow visit ends.
    VisitDone(Particle),
}

struct SimNode {
    state: RingState,
    up: bool,
    hung: bool,
    /// Running a slow visit: events wait, pings still go out.
    busy: bool,
    /// Taken off the owner's queue before a slow visit began: handled as
    /// soon as it ends, before anything newer.
    pulled: Vec<Delivery>,
    /// Links this node dialed that are up: link id -> peer.
    links: BTreeMap<LinkId, usize>,
    /// Events that arrived while hung, replayed on resume.
    backlog: Vec<Delivery>,
}

/// The simulated ring.
pub struct Net {
    t0: Instant,
    now: Duration,
    rng: StdRng,
    nodes: Vec<SimNode>,
    params: Box<dyn Fn(usize) -> RingParams>,
    queue: Vec<(Duration, u64, usize, Delivery)>,
    seq: u64,
    cut: BTreeSet<(usize, usize)>,
    /// Applied to particle and ack frames.
    pub faults: Faults,
    /// Every stop so far.
    pub stops: Vec<Stop>,
    /// Every "member down" declared: (by node, member).
    pub member_downs: Vec<(usize, usize)>,
    /// Those of `member_downs` about a member the node had known up: the
    /// failures (the others are members not started yet).
    pub failures: Vec<(usize, usize)>,
    /// Hold at every stop.
    pub hold: Duration,
    /// Nodes whose visits take this long (their owner is busy meanwhile).
    pub slow: BTreeMap<usize, Duration>,
    /// How long a dial to a member that cannot answer (cut off, or
    /// hung) takes to fail: the owner's own bound on a dial.
    pub dial_limit: Duration,
    latency: Duration,
    last_ping: Duration,
    created: u64,
}

const STEP: Duration = Duration::from_millis(5);
const PING: Duration = Duration::from_millis(100);

impl Net {
    /// A ring of `n` nodes with [`RingParams::for_test`], all started.
    pub fn new(n: usize, seed: u64) -> Self {
        Self::with_params(n, seed, move |i| RingParams::for_test(i, n))
    }

    /// A ring of `n` nodes with the given parameters, all started.
    pub fn with_params(
        n: usize,
        seed: u64,
        params: impl Fn(usize) -> RingParams + 'static,
    ) -> Self {
        let t0 = Instant::now();
        let mut net = Self {
            t0,
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            nodes: Vec::new(),
            params: Box::new(params),
            queue: Vec::new(),
            seq: 0,
            cut: BTreeSet::new(),
            faults: Faults::default(),
            stops: Vec::new(),
            member_downs: Vec::new(),
            failures: Vec::new(),
            hold: Duration::from_millis(1),
            slow: BTreeMap::new(),
            dial_limit: Duration::from_millis(500),
            latency: Duration::from_micros(200),
            last_ping: Duration::ZERO,
            created: 0,
        };
        for i in 0..n {
            let state = RingState::new((net.params)(i), t0);
            net.nodes.push(SimNode {
                state,
                up: true,
                hung: false,
                busy: false,
                pulled: Vec::new(),
                links: BTreeMap::new(),
                backlog: Vec::new(),
            });
        }
        for i in 0..n {
            net.event(i, Event::Start { now: t0 });
        }
        net
    }

    fn instant(&self) -> Instant {
        self.t0 + self.now
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The state of node `i`.
    pub fn state(&self, i: usize) -> &RingState {
        &self.nodes[i].state
    }

    /// Whether node `i` runs (not crashed).
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].up
    }

    /// Particles made since the start (injections and regenerations).
    pub fn created(&self) -> u64 {
        self.created
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[b].up && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn schedule(&mut self, after: Duration, node: usize, d: Delivery) {
        self.seq += 1;
        self.queue.push((self.now + after, self.seq, node, d));
    }

    /// Schedules a frame with the fault rates applied.
    fn frame(&mut self, node: usize, d: Delivery, dup: impl Fn() -> Delivery) {
        if self.rng.random_bool(self.faults.drop) {
            return;
        }
        let jitter = |rng: &mut StdRng, max: Duration| {
            if max.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_micros(rng.random_range(0..max.as_micros() as u64))
            }
        };
        let extra = jitter(&mut self.rng, self.faults.jitter);
        self.schedule(self.latency + extra, node, d);
        if self.rng.random_bool(self.faults.dup) {
            let extra = jitter(&mut self.rng, self.faults.jitter);
            self.schedule(self.latency + extra, node, dup());
        }
    }

    fn event(&mut self, i: usize, e: Event) {
        if !self.nodes[i].up {
            return;
        }
        let mut out = Vec::new();
        self.nodes[i].state.handle(e, &mut out);
        let mut pending: Vec<Action> = out;
        while !pending.is_empty() {
            let mut next = Vec::new();
            for a in pending {
                self.act(i, a, &mut next);
            }
            pending = next;
        }
    }

    fn act(&mut self, i: usize, a: Action, more: &mut Vec<Action>) {
        let now = self.instant();
        match a {
            Action::Dial { link, peer, after } => {
                let (wait, result) = if self.reachable(i, peer) && !self.nodes[peer].hung {
                    (
                        after + self.latency * 2,
                        DialResult::Up {
                            peer_seen: self.nodes[peer].state.seen(),
                        },
                    )
                } else if self.nodes[peer].up {
                    // Partitioned or hung: the hello goes unanswered.
                    (
                        after + self.dial_limit,
                        DialResult::Failed("timeout".into()),
                    )
                } else {
                    (after + self.latency, DialResult::Failed("refused".into()))
                };
                self.schedule(wait, i, Delivery::Dialed { link, result, peer });
            }
            Action::Close { link } => {
                self.nodes[i].links.remove(&link);
            }
            Action::Visit { particle, .. } => {
                self.stops.push(Stop {
                    at: self.now,
                    node: i,
                    id: particle.id(),
                    hop: particle.hop,
                });
                if let Some(&d) = self.slow.get(&i) {
                    self.nodes[i].busy = true;
                    self.queue
                        .push((self.now + d, self.seq, i, Delivery::VisitDone(particle)));
                    self.seq += 1;
                    return;
                }
                let mut out = Vec::new();
                self.nodes[i].state.handle(
                    Event::VisitDone {
                        particle,
                        hold: self.hold,
                        now,
                    },
                    &mut out,
                );
                more.extend(out);
            }
            Action::Hold(d) => self.schedule(d, i, Delivery::HoldElapsed),
            Action::Send { link, particle } => {
                if let Some(&peer) = self.nodes[i].links.get(&link)
                    && self.reachable(i, peer)
                {
                    let copy = particle.clone();
                    self.frame(
                        peer,
                        Delivery::Particle {
                            from: i,
                            link,
                            particle,
                        },
                        || Delivery::Particle {
                            from: i,
                            link,
                            particle: copy.clone(),
                        },
                    );
                }
            }
            Action::Ack { to, id, hop } => {
                let (from, link) = split_upstream(to);
                if self.reachable(i, from) {
                    self.frame(from, Delivery::Forwarded { link, id, hop }, || {
                        Delivery::Forwarded { link, id, hop }
                    });
                }
            }
            Action::Created { .. } => self.created += 1,
            Action::MemberDown { peer, ever_up, .. } => {
                self.member_downs.push((i, peer));
                if ever_up {
                    self.failures.push((i, peer));
                }
            }
            Action::Dropped { .. } | Action::MemberUp { .. } | Action::ViewChanged { .. } => {}
        }
    }

    fn deliver(&mut self, i: usize, d: Delivery) {
        if !self.nodes[i].up {
            return;
        }
        if self.nodes[i].hung || (self.nodes[i].busy && !matches!(d, Delivery::VisitDone(_))) {
            self.nodes[i].backlog.push(d);
            return;
        }
        self.take(i, d);
    }

    /// The owner takes `d` now (busy or not).
    fn take(&mut self, i: usize, d: Delivery) {
        let now = self.instant();
        let e = match d {
            Delivery::Particle {
                from,
                link,
                particle,
            } => Event::ParticleArrived {
                particle,
                from: upstream_id(from, link),
                now,
            },
            Delivery::Forwarded { link, id, hop } => Event::Forwarded { link, id, hop, now },
            Delivery::Dialed { link, result, peer } => {
                // A peer that went away since the attempt started.
                let result = match result {
                    DialResult::Up { .. } if !self.reachable(i, peer) => {
                        DialResult::Failed("gone".into())
                    }
                    r => r,
                };
                if matches!(result, DialResult::Up { .. }) {
                    self.nodes[i].links.insert(link, peer);
                }
                Event::Dialed { link, result, now }
            }
            Delivery::LinkLost(link) => {
                self.nodes[i].links.remove(&link);
                Event::LinkLost { link, now }
            }
            Delivery::HoldElapsed => Event::HoldElapsed { now },
            Delivery::Alive(alive) => Event::UpstreamAlive { alive, now },
            Delivery::Heard(link) => Event::Heard {
                link,
                rtt: None,
                now,
            },
            Delivery::VisitDone(particle) => {
                // As node.rs: what the owner took off its queue before the
                // visit comes first, then the visit's end, then a tick (it
                // came due meanwhile), then what piled up: what is not a
                // particle, then the newest particle, then the older ones.
                for d in std::mem::take(&mut self.nodes[i].pulled) {
                    self.take(i, d);
                }
                self.nodes[i].busy = false;
                self.event(
                    i,
                    Event::VisitDone {
                        particle,
                        hold: self.hold,
                        now,
                    },
                );
                self.event(i, Event::Tick { now });
                let mut backlog = std::mem::take(&mut self.nodes[i].backlog);
                let newest = backlog
                    .iter()
                    .enumerate()
                    .filter_map(|(k, d)| match d {
                        Delivery::Particle { particle, .. } => Some((particle.id(), k)),
                        _ => None,
                    })
                    .max();
                // What is not a particle first, then the newest particle.
                if let Some((_, k)) = newest {
                    let d = backlog.remove(k);
                    let (mut ordered, particles): (Vec<_>, Vec<_>) = backlog
                        .into_iter()
                        .partition(|d| !matches!(d, Delivery::Particle { .. }));
                    ordered.push(d);
                    ordered.extend(particles);
                    backlog = ordered;
                }
                let mut rest = backlog.into_iter();
                for d in rest.by_ref() {
                    self.deliver(i, d);
                    if self.nodes[i].busy {
                        break;
                    }
                }
                // A visit started: the owner had taken the rest already.
                self.nodes[i].pulled.extend(rest);
                return;
            }
        };
        self.event(i, e);
    }

    /// Runs the simulation for `d`.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += STEP;
            // Deliver everything due, in time order (ties by sequence).
            loop {
                let due = self
                    .queue
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, ..))| *t <= self.now)
                    .min_by_key(|(_, (t, s, ..))| (*t, *s))
                    .map(|(k, _)| k);
                let Some(k) = due else { break };
                let (_, _, node, d) = self.queue.swap_remove(k);
                self.deliver(node, d);
            }
            if self.now - self.last_ping >= PING {
                self.last_ping = self.now;
                self.heartbeats();
            }
            let now = self.instant();
            for i in 0..self.nodes.len() {
                if self.nodes[i].up && !self.nodes[i].hung && !self.nodes[i].busy {
                    self.event(i, Event::Tick { now });
                }
            }
        }
    }

    /// Pings and pongs on every link between two running, reachable nodes;
    /// each ping carries what its sender's beacon says of the particle.
    /// Link tasks ping and pong even while their owner is busy.
    fn heartbeats(&mut self) {
        let now = self.instant();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up || self.nodes[i].hung {
                continue;
            }
            let links: Vec<(LinkId, usize)> =
                self.nodes[i].links.iter().map(|(&l, &p)| (l, p)).collect();
            for (link, peer) in links {
                if self.reachable(i, peer) && !self.nodes[peer].hung {
                    let alive = self.nodes[i].state.beacon().map(|b| b.alive(now));
                    self.deliver(peer, Delivery::Alive(alive));
                    if self.nodes[i].busy {
                        self.nodes[i].backlog.push(Delivery::Heard(link));
                    } else {
                        self.event(
                            i,
                            Event::Heard {
                                link,
                                rtt: None,
                                now,
                            },
                        );
                    }
                }
            }
        }
    }

    /// SIGKILL: node `i` stops, and its peers see their links to it fail.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].up = false;
        self.nodes[i].hung = false;
        self.nodes[i].busy = false;
        self.nodes[i].pulled.clear();
        self.nodes[i].links.clear();
        self.nodes[i].backlog.clear();
        for j in 0..self.nodes.len() {
            let lost: Vec<LinkId> = self.nodes[j]
                .links
                .iter()
                .filter(|(_, p)| **p == i)
                .map(|(l, _)| *l)
                .collect();
            for link in lost {
                self.schedule(self.latency, j, Delivery::LinkLost(link));
            }
        }
    }

    /// Starts node `i` afresh (a restart after a crash).
    pub fn restart(&mut self, i: usize) {
        let now = self.instant();
        self.nodes[i] = SimNode {
            state: RingState::new((self.params)(i), now),
            up: true,
            hung: false,
            busy: false,
            pulled: Vec::new(),
            links: BTreeMap::new(),
            backlog: Vec::new(),
        };
        self.event(i, Event::Start { now });
    }

    /// SIGSTOP: node `i` keeps its sockets but processes nothing.
    pub fn hang(&mut self, i: usize) {
        self.nodes[i].hung = true;
    }

    /// SIGCONT: node `i` processes what piled up.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].hung = false;
        for d in std::mem::take(&mut self.nodes[i].backlog) {
            self.deliver(i, d);
        }
    }

    /// Cuts every link between the two groups (both ways, black-holed).
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x.min(y), x.max(y)));
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// The node holding the particle, or the destination of one in flight.
    pub fn holder(&self) -> Option<usize> {
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].up && self.nodes[i].state.has_particle())
            .or_else(|| {
                self.queue.iter().find_map(|(_, _, node, d)| {
                    matches!(d, Delivery::Particle { .. }).then_some(*node)
                })
            })
    }

    /// Stops since simulated time `from`.
    pub fn stops_since(&self, from: Duration) -> Vec<Stop> {
        self.stops
            .iter()
            .copied()
            .filter(|s| s.at >= from)
            .collect()
    }
}

fn upstream_id(from: usize, link: LinkId) -> UpstreamId {
    ((from as u64) << 40) | link
}

fn split_upstream(id: UpstreamId) -> (usize, LinkId) {
    ((id >> 40) as usize, id & ((1 << 40) - 1))
}

/// Checks that `stops` are one particle walking the live members in ring
/// order: one id, hops increasing, each stop at the next live member.
///
/// # Panics
/// With the first offending pair of stops.
pub fn assert_one_particle_in_order(stops: &[Stop], live: &[usize]) {
    assert!(!stops.is_empty(), "no stops at all");
    for w in stops.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(a.id, b.id, "two particles: {a:?} then {b:?}");
        assert!(b.hop > a.hop, "hops go back: {a:?} then {b:?}");
        let k = live
            .iter()
            .position(|&m| m == a.node)
            .expect("stop at a live member");
        assert_eq!(
            b.node,
            live[(k + 1) % live.len()],
            "ring order: {a:?} then {b:?}"
        );
    }
}
