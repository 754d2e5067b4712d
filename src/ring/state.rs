//! The sans-IO ring protocol of one node: events in, actions out.
//!
//! [`RingState`] never touches a socket, a timer or a clock. The node's
//! owner task (`node.rs`) feeds it [`Event`]s, each carrying the current
//! time where it matters, plus a periodic [`Event::Tick`], and carries out
//! the [`Action`]s it returns. Tests drive it by hand or through
//! [`super::testing::Net`], with no runtime. The protocol itself (custody,
//! generations, views, why no duplicate survives) is told in
//! [`super`]'s module docs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::rtt::RttEstimator;
use super::token::{Alive, Particle, ParticleId};

/// Fixed parameters of the protocol at one node.
#[derive(Debug, Clone)]
pub struct RingParams {
    /// This node's index in the enumeration.
    pub me: usize,
    /// Members in the enumeration.
    pub size: usize,
    /// First retry delay when no member at all can be dialed.
    pub backoff_min: Duration,
    /// Cap on that retry delay.
    pub backoff_max: Duration,
    /// A successor that sends nothing (no pong, no ack) for this long is
    /// declared dead and skipped; a link whose measured round trips need
    /// longer gets longer ([`super::rtt`]).
    pub failure_timeout: Duration,
    /// How often the successor is pinged (its pongs are the round-trip
    /// samples).
    pub heartbeat: Duration,
    /// How often each skipped member is probed for its return.
    pub probe_interval: Duration,
    /// Backstop: with no particle seen for this long (plus a stagger by
    /// rank), a node that still has a live predecessor regenerates one.
    /// Time the particle spends at a member that says so in its heartbeats
    /// (a slow station, a long hold) does not count: see [`Beacon`].
    pub token_timeout: Duration,
    /// Longest one visit can take here (every station call is interrupted
    /// at its deadline): this node tells its successor it holds the
    /// particle for at most this long per visit, so a wedged node stops
    /// vouching for the particle.
    pub visit_bound: Duration,
    /// Longest a dial may keep the particle waiting here (the particle
    /// waits, or its custody must be resent, while the successor is being
    /// dialed): past it the member is skipped and the next one dialed, so
    /// a particle never sits at a dial for as long as the others' token
    /// timeout and is never taken for lost while it lives. A dial with no
    /// particle waiting on it keeps the owner's own, longer, bound.
    pub dial_hold: Duration,
}

impl RingParams {
    /// Parameters with short test-friendly timers.
    pub fn for_test(me: usize, size: usize) -> Self {
        Self {
            me,
            size,
            backoff_min: Duration::from_millis(5),
            backoff_max: Duration::from_millis(50),
            failure_timeout: Duration::from_millis(300),
            heartbeat: Duration::from_millis(60),
            probe_interval: Duration::from_millis(50),
            token_timeout: Duration::from_millis(600),
            visit_bound: Duration::from_millis(200),
            dial_hold: Duration::from_millis(250),
        }
    }
}

/// Identifies one attempt to link to a successor (a dial or a probe); the
/// owner task keys its sockets by it.
pub type LinkId = u64;

/// Identifies the upstream connection a particle came from, so custody can
/// be acknowledged on it.
pub type UpstreamId = u64;

/// How a dial ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialResult {
    /// Connected and welcomed. `peer_seen` is the highest particle the peer
    /// has seen (it tells a restarted node that a ring already exists).
    Up {
        /// The peer's highest particle id, if any.
        peer_seen: Option<ParticleId>,
    },
    /// The peer answered and refused (different ring or version).
    Refused(String),
    /// No connection, or no answer in time.
    Failed(String),
    /// This node cannot send at all (its own network is down: no route
    /// to the member's network). Nobody is blamed: the same member is
    /// dialed again after a backoff, as a node alone does with itself.
    LocalDown(String),
}

/// What happened, as seen by the node's owner task.
#[derive(Debug)]
pub enum Event {
    /// The node started.
    Start {
        /// Current time.
        now: Instant,
    },
    /// Periodic: checks every deadline (heartbeats, probes, token timeout).
    Tick {
        /// Current time.
        now: Instant,
    },
    /// A dial or probe ended.
    Dialed {
        /// Which attempt.
        link: LinkId,
        /// How it ended.
        result: DialResult,
        /// Current time.
        now: Instant,
    },
    /// An established link to a successor failed or closed.
    LinkLost {
        /// Which link.
        link: LinkId,
        /// Current time.
        now: Instant,
    },
    /// The successor on `link` said it is stopping cleanly: skip it at
    /// once, and as a member that left, not one that failed.
    Left {
        /// Which link.
        link: LinkId,
        /// Current time.
        now: Instant,
    },
    /// The successor on `link` sent something (a pong): it is alive.
    Heard {
        /// Which link.
        link: LinkId,
        /// The round trip of the ping this pong answers, if known.
        rtt: Option<Duration>,
        /// Current time.
        now: Instant,
    },
    /// The successor on `link` passed particle `id` at `hop` on: custody
    /// moved past it.
    Forwarded {
        /// Which link.
        link: LinkId,
        /// The particle.
        id: ParticleId,
        /// The hop it was sent with.
        hop: u64,
        /// Current time.
        now: Instant,
    },
    /// A predecessor pinged us: we are part of a ring.
    UpstreamAlive {
        /// What the ping said of the particle, if anything.
        alive: Option<Alive>,
        /// Current time.
        now: Instant,
    },
    /// A particle arrived from upstream connection `from`.
    ParticleArrived {
        /// The particle as received.
        particle: Particle,
        /// Where it came from.
        from: UpstreamId,
        /// Arrival time.
        now: Instant,
    },
    /// The station pipeline finished with the particle.
    VisitDone {
        /// The particle with its updated slots.
        particle: Particle,
        /// How long to hold it.
        hold: Duration,
        /// Current time.
        now: Instant,
    },
    /// The hold asked by [`Action::Hold`] is over.
    HoldElapsed {
        /// Current time.
        now: Instant,
    },
}

/// Facts about one stop, computed by the protocol for the stations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopInfo {
    /// Time since the particle's previous stop at this node.
    pub lap_time: Option<Duration>,
}

/// What this node knows of the particle's liveness, for its heartbeats:
/// published by the owner task after every event, turned into an [`Alive`]
/// by the link task at each ping (the owner may be busy running stations
/// then; the beacon says so by itself through `held_until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beacon {
    /// The highest particle seen here.
    pub id: ParticleId,
    /// The latest time it is known alive (passed here, or heard of).
    pub alive_at: Instant,
    /// Links that fact crossed before reaching this node (0: seen here).
    pub relays: u16,
    /// While the particle is here: until when this node vouches for it.
    pub held_until: Option<Instant>,
}

impl Beacon {
    /// The word on the particle to send at `now`: age zero while it is
    /// held here (up to `held_until`), else the age of the freshest fact.
    pub fn alive(&self, now: Instant) -> Alive {
        let held = self.held_until.is_some_and(|u| now <= u);
        let since = self
            .held_until
            .map_or(self.alive_at, |u| u.max(self.alive_at));
        let age = if held {
            Duration::ZERO
        } else {
            now.saturating_duration_since(since)
        };
        Alive {
            id: self.id,
            age_ms: u32::try_from(age.as_millis()).unwrap_or(u32::MAX),
            relays: if held { 0 } else { self.relays },
        }
    }

    /// The instant the particle is vouched alive at, as of `now`.
    pub fn vouched_at(&self, now: Instant) -> Instant {
        now.checked_sub(Duration::from_millis(u64::from(self.alive(now).age_ms)))
            .unwrap_or(now)
    }
}

/// Why a particle was dropped at this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Its id is below the highest this node has seen.
    Stale {
        /// The highest id seen here.
        current: ParticleId,
    },
    /// Same particle at a hop this node has already seen: a resent copy.
    Duplicate,
    /// A newer particle arrived while this node held this one.
    Superseded {
        /// The newer particle.
        by: ParticleId,
    },
}

/// Why a new particle was made here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The first particle of a fresh ring (lowest node, link up).
    Injected,
    /// No particle for longer than the token timeout.
    Regenerated,
}

/// What the owner task must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Dial member `peer` after waiting `after`; report [`Event::Dialed`].
    Dial {
        /// The attempt's id.
        link: LinkId,
        /// Member to dial.
        peer: usize,
        /// Delay before the attempt.
        after: Duration,
    },
    /// Close a link (or abandon an attempt).
    Close {
        /// Which link.
        link: LinkId,
    },
    /// Run the station pipeline; report [`Event::VisitDone`].
    Visit {
        /// The particle, with `lap` advanced for this stop.
        particle: Particle,
        /// Facts about this stop.
        stop: StopInfo,
    },
    /// Wait, then report [`Event::HoldElapsed`].
    Hold(Duration),
    /// Send the particle on `link`.
    Send {
        /// Which link.
        link: LinkId,
        /// The particle.
        particle: Particle,
    },
    /// Tell upstream connection `to` that we passed `id` at `hop` on (or
    /// dropped it): its sender may forget its copy.
    Ack {
        /// Upstream connection.
        to: UpstreamId,
        /// The particle.
        id: ParticleId,
        /// The hop it arrived with.
        hop: u64,
    },
    /// A new particle was made here (for the log).
    Created {
        /// Its id.
        id: ParticleId,
        /// Why.
        why: Origin,
    },
    /// A particle was dropped here (for the log).
    Dropped {
        /// The dropped particle.
        id: ParticleId,
        /// Why.
        reason: DropReason,
    },
    /// This node declared member `peer` dead and skips it.
    MemberDown {
        /// The member.
        peer: usize,
        /// Why, in words.
        reason: String,
        /// It said it was stopping (a clean leave, not a failure).
        left: bool,
        /// This node has known the member up since it started (linked to
        /// it, or found it live in a particle's view after a lap); `false`:
        /// the member has not started yet, as far as this node knows.
        ever_up: bool,
    },
    /// Member `peer` answered again and is spliced back in.
    MemberUp {
        /// The member.
        peer: usize,
        /// This node had never known the member up before: it started
        /// (rather than came back).
        first: bool,
    },
    /// This node's view of live members changed.
    ViewChanged {
        /// Live members, ascending.
        live: Vec<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// Dialing since `since` (after any backoff).
    Connecting {
        since: Instant,
    },
    Up {
        last_heard: Instant,
    },
}

#[derive(Debug, Clone)]
struct Link {
    id: LinkId,
    peer: usize,
    state: LinkState,
    /// Round trips measured on this link.
    rtt: RttEstimator,
    /// Set on a redial after the link to the same peer was lost: one more
    /// failure and the peer is skipped.
    redial: bool,
}

#[derive(Debug, Clone)]
struct Probe {
    link: Option<LinkId>,
    next_at: Instant,
}

/// A particle sent but not yet passed on by the successor: kept so it can
/// be resent if the successor dies with it.
#[derive(Debug, Clone)]
struct InFlight {
    link: LinkId,
    /// As sent (its hop advanced to the successor's).
    particle: Particle,
    /// Its hop here, before the advance.
    base_hop: u64,
}

/// Where the particle at this node came from, to acknowledge custody.
#[derive(Debug, Clone, Copy)]
struct Came {
    conn: UpstreamId,
    id: ParticleId,
    hop: u64,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Visiting {
        from: Option<Came>,
    },
    Holding {
        particle: Particle,
        from: Option<Came>,
    },
    Waiting {
        particle: Particle,
        from: Option<Came>,
    },
}

/// The ring protocol state of one node. See the module docs of
/// [`crate::ring`].
#[derive(Debug)]
pub struct RingState {
    p: RingParams,
    next_link: LinkId,
    primary: Option<Link>,
    /// Members between this node and its successor that it declared dead,
    /// with their probes.
    skipped: BTreeMap<usize, Probe>,
    /// A successful probe waiting for custody to clear before the switch.
    pending_switch: Option<Link>,
    backoff: Duration,
    phase: Phase,
    seen: Option<ParticleId>,
    last_hop: u64,
    in_flight: Option<InFlight>,
    /// The last particle this node forwarded, with its hop here (for
    /// regeneration).
    last_copy: Option<Particle>,
    /// The latest time the particle is known alive: it passed here, or a
    /// heartbeat said so (then `alive_relays` links away).
    last_particle_at: Instant,
    alive_relays: u16,
    /// When this node last learned of a particle newer than any it had
    /// seen ([`Self::adopt_seen`]): no regeneration within a token
    /// timeout of it.
    learned_at: Option<Instant>,
    /// While the particle is here: until when heartbeats vouch for it.
    held_until: Option<Instant>,
    last_visit: Option<Instant>,
    last_lap: Option<Duration>,
    upstream_heard: Option<Instant>,
    /// Start of the current stretch of pings from upstream (one with no
    /// gap longer than the failure timeout).
    upstream_since: Option<Instant>,
    last_tick: Option<Instant>,
    view: Vec<bool>,
    /// Members this node has known up since it started: a link to them
    /// came up, or a particle back from a full lap said they were live.
    /// A member never up is "not started yet", not a failure.
    ever_up: Vec<bool>,
    created: bool,
}

impl RingState {
    /// A node that has not started; `now` is its start time.
    ///
    /// # Panics
    /// If `me` is outside the ring.
    pub fn new(p: RingParams, now: Instant) -> Self {
        assert!(p.me < p.size, "node index inside the ring");
        Self {
            backoff: p.backoff_min,
            view: vec![true; p.size],
            ever_up: vec![false; p.size],
            p,
            next_link: 1,
            primary: None,
            skipped: BTreeMap::new(),
            pending_switch: None,
            phase: Phase::Idle,
            seen: None,
            last_hop: 0,
            in_flight: None,
            last_copy: None,
            last_particle_at: now,
            alive_relays: 0,
            learned_at: None,
            held_until: None,
            last_visit: None,
            last_lap: None,
            upstream_heard: None,
            upstream_since: None,
            last_tick: None,
            created: false,
        }
    }

    /// The member this node currently sends to (or tries to).
    pub fn successor(&self) -> Option<usize> {
        self.primary.as_ref().map(|l| l.peer)
    }

    /// Whether the link to the successor is up.
    pub fn downstream_up(&self) -> bool {
        self.primary
            .as_ref()
            .is_some_and(|l| matches!(l.state, LinkState::Up { .. }))
    }

    /// The link to the successor, when it is up.
    pub fn successor_link(&self) -> Option<LinkId> {
        self.primary
            .as_ref()
            .filter(|l| matches!(l.state, LinkState::Up { .. }))
            .map(|l| l.id)
    }

    /// The highest particle id seen here.
    pub fn seen(&self) -> Option<ParticleId> {
        self.seen
    }

    /// Whether this node currently has the particle.
    pub fn has_particle(&self) -> bool {
        !matches!(self.phase, Phase::Idle)
    }

    /// Members this node skipped (declared dead), ascending.
    pub fn skipped(&self) -> Vec<usize> {
        self.skipped.keys().copied().collect()
    }

    /// This node's view: `view()[i]` says whether member `i` is live.
    pub fn view(&self) -> &[bool] {
        &self.view
    }

    /// Whether this node has known member `i` up since it started (see
    /// [`Action::MemberDown`]); `false` for an index outside the ring.
    pub fn ever_up(&self, i: usize) -> bool {
        self.ever_up.get(i).copied().unwrap_or(false)
    }

    /// Live members in this node's view.
    pub fn live_members(&self) -> Vec<usize> {
        (0..self.p.size).filter(|&i| self.view[i]).collect()
    }

    /// The last lap time measured here.
    pub fn last_lap(&self) -> Option<Duration> {
        self.last_lap
    }

    /// What this node's heartbeats say of the particle (nothing before it
    /// has seen one).
    pub fn beacon(&self) -> Option<Beacon> {
        Some(Beacon {
            id: self.seen?,
            alive_at: self.last_particle_at,
            relays: self.alive_relays,
            held_until: self.held_until,
        })
    }

    /// Changes the visit bound (the station pipeline grew or shrank).
    pub fn set_visit_bound(&mut self, bound: Duration) {
        self.p.visit_bound = bound;
    }

    /// Feeds one event; the actions to carry out are appended to `out`.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Start { now } => {
                self.last_particle_at = now;
                // The clock of the pause check starts here: a first visit
                // that keeps the owner busy is not the successor's silence.
                self.last_tick = Some(now);
                self.dial_next_candidate(self.p.me, now, out);
            }
            Event::Tick { now } => self.tick(now, out),
            Event::Dialed { link, result, now } => self.on_dialed(link, result, now, out),
            Event::LinkLost { link, now } => self.on_link_lost(link, now, out),
            Event::Left { link, now } => self.on_left(link, now, out),
            Event::Heard { link, rtt, now } => self.on_heard(link, rtt, now),
            Event::Forwarded { link, id, hop, now } => {
                self.on_heard(link, None, now);
                if self.in_flight.as_ref().is_some_and(|f| {
                    f.link == link && f.particle.id() == id && f.particle.hop == hop
                }) {
                    self.in_flight = None;
                    self.maybe_switch(now, out);
                }
            }
            Event::UpstreamAlive { alive, now } => {
                let gap = self
                    .upstream_heard
                    .is_none_or(|t| now.saturating_duration_since(t) > self.p.failure_timeout);
                if gap {
                    self.upstream_since = Some(now);
                }
                self.upstream_heard = Some(now);
                if let Some(alive) = alive {
                    self.on_alive(alive, now);
                }
            }
            Event::ParticleArrived {
                particle,
                from,
                now,
            } => self.on_particle(particle, Some(from), now, out),
            Event::VisitDone {
                particle,
                hold,
                now,
            } => {
                let Phase::Visiting { from } = self.phase else {
                    return; // superseded during the visit
                };
                if hold.is_zero() {
                    self.forward(particle, from, now, out);
                } else {
                    self.phase = Phase::Holding { particle, from };
                    self.held_until = Some(now + hold);
                    out.push(Action::Hold(hold));
                }
            }
            Event::HoldElapsed { now } => {
                if let Phase::Holding { .. } = self.phase {
                    let Phase::Holding { particle, from } =
                        std::mem::replace(&mut self.phase, Phase::Idle)
                    else {
                        unreachable!()
                    };
                    self.forward(particle, from, now, out);
                }
            }
        }
    }

    /// Leaving the ring: a particle held here is forwarded at once rather
    /// than lost with this node (it goes out only if the link is up).
    pub fn release(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Phase::Holding { .. } = self.phase {
            let Phase::Holding { particle, from } = std::mem::replace(&mut self.phase, Phase::Idle)
            else {
                unreachable!()
            };
            self.forward(particle, from, now, out);
        }
    }

    // ----- links -------------------------------------------------------

    fn new_link(&mut self) -> LinkId {
        let id = self.next_link;
        self.next_link += 1;
        id
    }

    /// How many steps after this node `peer` comes in ring order (this
    /// node itself: the ring's size).
    fn distance(&self, peer: usize) -> usize {
        let n = self.p.size;
        match (peer + n - self.p.me) % n {
            0 => n,
            d => d,
        }
    }

    /// Members after `from`, in ring order, ending with this node itself.
    fn after(&self, from: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.p.size;
        (1..=n).map(move |k| (from + k) % n)
    }

    /// Dials the first member after `from` that is not skipped (this node
    /// itself when every other member is skipped: a ring of one).
    fn dial_next_candidate(&mut self, from: usize, now: Instant, out: &mut Vec<Action>) {
        let me = self.p.me;
        let peer = self
            .after(from)
            .find(|&c| c == me || !self.skipped.contains_key(&c))
            .unwrap_or(me);
        self.dial(peer, Duration::ZERO, now, out);
    }

    /// Makes `peer` the successor being dialed, `after` a backoff.
    fn dial(&mut self, peer: usize, after: Duration, now: Instant, out: &mut Vec<Action>) {
        let link = self.new_link();
        self.primary = Some(Link {
            id: link,
            peer,
            state: LinkState::Connecting { since: now + after },
            rtt: RttEstimator::default(),
            redial: false,
        });
        out.push(Action::Dial { link, peer, after });
    }

    fn on_dialed(&mut self, link: LinkId, result: DialResult, now: Instant, out: &mut Vec<Action>) {
        // A probe?
        if let Some((&peer, _)) = self.skipped.iter().find(|(_, p)| p.link == Some(link)) {
            match result {
                DialResult::Up { peer_seen } => {
                    self.adopt_seen(peer_seen, now);
                    let probe_link = Link {
                        id: link,
                        peer,
                        state: LinkState::Up { last_heard: now },
                        rtt: RttEstimator::default(),
                        redial: false,
                    };
                    // Several probes may answer while the switch waits:
                    // the closest member after us is the successor.
                    let pending_closer = self
                        .pending_switch
                        .as_ref()
                        .is_some_and(|p| self.distance(p.peer) < self.distance(peer));
                    if pending_closer {
                        out.push(Action::Close { link });
                        self.reprobe(peer, now);
                    } else if let Some(old) = self.pending_switch.replace(probe_link) {
                        out.push(Action::Close { link: old.id });
                        self.reprobe(old.peer, now);
                    }
                    self.maybe_switch(now, out);
                }
                DialResult::Refused(_) | DialResult::Failed(_) | DialResult::LocalDown(_) => {
                    if let Some(p) = self.skipped.get_mut(&peer) {
                        p.link = None;
                        p.next_at = now + self.p.probe_interval;
                    }
                }
            }
            return;
        }
        let Some(primary) = self.primary.as_mut().filter(|l| l.id == link) else {
            out.push(Action::Close { link }); // stale attempt
            return;
        };
        match result {
            DialResult::Up { peer_seen } => {
                primary.state = LinkState::Up { last_heard: now };
                let peer = primary.peer;
                if peer != self.p.me {
                    self.backoff = self.p.backoff_min;
                }
                self.ever_up[peer] = true;
                self.adopt_seen(peer_seen, now);
                self.mark_live(peer, out);
                self.on_primary_up(now, out);
            }
            DialResult::LocalDown(_) => {
                // Our network is down, not the member: try it again.
                let (peer, after) = (primary.peer, self.backoff);
                self.backoff = (self.backoff * 2).min(self.p.backoff_max);
                self.dial(peer, after, now, out);
            }
            DialResult::Refused(reason) | DialResult::Failed(reason) => {
                let peer = primary.peer;
                if peer == self.p.me {
                    // Cannot even reach ourselves: retry with a capped
                    // backoff rather than spin.
                    let after = self.backoff;
                    self.backoff = (self.backoff * 2).min(self.p.backoff_max);
                    self.dial(peer, after, now, out);
                    return;
                }
                self.skip(peer, reason, now, out);
                self.dial_next_candidate(peer, now, out);
            }
        }
    }

    fn on_link_lost(&mut self, link: LinkId, now: Instant, out: &mut Vec<Action>) {
        if self.pending_switch.as_ref().is_some_and(|l| l.id == link) {
            let lost = self.pending_switch.take().expect("checked");
            self.reprobe(lost.peer, now);
            return;
        }
        let Some(primary) = self.primary.as_ref().filter(|l| l.id == link) else {
            return;
        };
        let peer = primary.peer;
        let was_redial = primary.redial;
        if was_redial || !matches!(primary.state, LinkState::Up { .. }) {
            if peer != self.p.me {
                self.skip(peer, "link lost again".into(), now, out);
            }
            self.dial_next_candidate(peer, now, out);
            return;
        }
        // Lost once: the peer may live (a dropped connection); redial it
        // once before skipping it.
        self.dial(peer, Duration::ZERO, now, out);
        if let Some(l) = self.primary.as_mut() {
            l.redial = true;
        }
    }

    fn on_left(&mut self, link: LinkId, now: Instant, out: &mut Vec<Action>) {
        let Some(peer) = self
            .primary
            .as_ref()
            .filter(|l| l.id == link)
            .map(|l| l.peer)
        else {
            // A probe's link, or one already replaced: as if lost.
            return self.on_link_lost(link, now, out);
        };
        out.push(Action::Close { link });
        if peer != self.p.me {
            self.skip_as(
                peer,
                "left the ring (stopped cleanly)".into(),
                true,
                now,
                out,
            );
        }
        self.dial_next_candidate(peer, now, out);
    }

    fn on_heard(&mut self, link: LinkId, rtt: Option<Duration>, now: Instant) {
        for l in self
            .primary
            .iter_mut()
            .chain(self.pending_switch.iter_mut())
        {
            if l.id == link
                && let LinkState::Up { last_heard } = &mut l.state
            {
                *last_heard = now;
                if let Some(r) = rtt {
                    l.rtt.sample(r);
                }
            }
        }
    }

    /// The failure timeout of link `l`: the configured one, or longer when
    /// its round trips need it ([`super::rtt`]).
    fn link_timeout(&self, l: &Link) -> Duration {
        l.rtt
            .failure_timeout(self.p.failure_timeout, self.p.heartbeat)
    }

    /// The successor link's smoothed round trip (if measured yet) and its
    /// failure timeout.
    pub fn successor_timing(&self) -> Option<(Option<Duration>, Duration)> {
        self.primary
            .as_ref()
            .filter(|l| matches!(l.state, LinkState::Up { .. }))
            .map(|l| (l.rtt.srtt(), self.link_timeout(l)))
    }

    /// A probe's link went away before the switch: probe that member
    /// again later (else it would stay skipped for good).
    fn reprobe(&mut self, peer: usize, now: Instant) {
        if let Some(p) = self.skipped.get_mut(&peer) {
            p.link = None;
            p.next_at = now + self.p.probe_interval;
        }
    }

    /// Declares `peer` dead: skip it and probe it from now on.
    fn skip(&mut self, peer: usize, reason: String, now: Instant, out: &mut Vec<Action>) {
        self.skip_as(peer, reason, false, now, out);
    }

    /// Skips `peer`, which failed or (`left`) said it was stopping.
    fn skip_as(
        &mut self,
        peer: usize,
        reason: String,
        left: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if peer == self.p.me || self.skipped.contains_key(&peer) {
            return;
        }
        self.skipped.insert(
            peer,
            Probe {
                link: None,
                next_at: now + self.p.probe_interval,
            },
        );
        out.push(Action::MemberDown {
            peer,
            reason,
            left,
            ever_up: self.ever_up[peer],
        });
        if self.view[peer] {
            self.view[peer] = false;
            out.push(Action::ViewChanged {
                live: self.live_members(),
            });
        }
    }

    fn mark_live(&mut self, peer: usize, out: &mut Vec<Action>) {
        if !self.view[peer] {
            self.view[peer] = true;
            out.push(Action::ViewChanged {
                live: self.live_members(),
            });
        }
    }

    /// The primary link just came up: resend what was in flight, send what
    /// waits, or inject the first particle.
    fn on_primary_up(&mut self, now: Instant, out: &mut Vec<Action>) {
        let link = self.primary.as_ref().expect("primary is up").id;
        // Everything between us and the new successor is skipped; anything
        // beyond it is now the successor's business.
        let succ = self.primary.as_ref().expect("primary").peer;
        let between: BTreeSet<usize> = self.after(self.p.me).take_while(|&c| c != succ).collect();
        let beyond: Vec<usize> = self
            .skipped
            .keys()
            .copied()
            .filter(|c| !between.contains(c))
            .collect();
        for c in beyond {
            if let Some(Probe { link: Some(l), .. }) = self.skipped.remove(&c) {
                out.push(Action::Close { link: l });
            }
        }
        if let Some(f) = self.in_flight.take() {
            // The old successor may have died with it. Resend the same
            // particle, its hop advanced to the new successor's, so a copy
            // the old successor did pass on is recognised downstream as a
            // duplicate and dropped.
            let mut particle = f.particle;
            particle.hop = f.base_hop;
            self.send(link, particle, now, out);
        } else if let Phase::Waiting { .. } = self.phase {
            let Phase::Waiting { particle, from } = std::mem::replace(&mut self.phase, Phase::Idle)
            else {
                unreachable!()
            };
            self.send_and_ack(link, particle, from, now, out);
        } else if self.p.me == 0 && self.seen.is_none() && !self.created && !self.has_particle() {
            self.create(Origin::Injected, now, out);
        }
    }

    /// Switches to a probed (closer) successor once nothing is in flight
    /// on the current one.
    fn maybe_switch(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.in_flight.is_some() || self.pending_switch.is_none() {
            return;
        }
        let new = self.pending_switch.take().expect("checked");
        if let Some(old) = self.primary.replace(new.clone()) {
            out.push(Action::Close { link: old.id });
        }
        self.skipped.remove(&new.peer);
        let first = !std::mem::replace(&mut self.ever_up[new.peer], true);
        out.push(Action::MemberUp {
            peer: new.peer,
            first,
        });
        self.mark_live(new.peer, out);
        self.on_primary_up(now, out);
    }

    // ----- time --------------------------------------------------------

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        // A long gap since our previous tick means *we* were paused
        // (SIGSTOP, a starved CPU) or busy (a long visit): the silence we
        // see is ours, so blame nobody this time; restart the clocks
        // instead. Probes go on: a node whose every visit is long still
        // splices back the members it skipped.
        let gap = now.saturating_duration_since(self.last_tick.unwrap_or(now));
        self.last_tick = Some(now);
        let paused = gap > self.p.failure_timeout / 2;
        if paused {
            for l in self
                .primary
                .iter_mut()
                .chain(self.pending_switch.iter_mut())
            {
                if let LinkState::Up { last_heard } = &mut l.state {
                    *last_heard = now;
                }
            }
            self.last_particle_at = (self.last_particle_at + gap).min(now);
        }
        self.probe_due(now, out);
        if paused {
            return;
        }
        // Failure detection on the successor link.
        if let Some(l) = &self.primary
            && let LinkState::Up { last_heard } = l.state
            && l.peer != self.p.me
            && now.saturating_duration_since(last_heard) > self.link_timeout(l)
        {
            let (peer, id, timeout) = (l.peer, l.id, self.link_timeout(l));
            out.push(Action::Close { link: id });
            self.skip(peer, format!("silent for more than {timeout:?}"), now, out);
            self.dial_next_candidate(peer, now, out);
        }
        // A dial the particle waits on, unanswered for the dial hold: the
        // member is skipped (and probed) and the particle goes round it,
        // before the others' token timeout takes it for lost.
        if let Some(l) = &self.primary
            && let LinkState::Connecting { since } = l.state
            && l.peer != self.p.me
            && (matches!(self.phase, Phase::Waiting { .. }) || self.in_flight.is_some())
            && now.saturating_duration_since(since) > self.p.dial_hold
        {
            let (peer, id, hold) = (l.peer, l.id, self.p.dial_hold);
            out.push(Action::Close { link: id });
            self.skip(
                peer,
                format!("no answer to a dial within {hold:?} while the particle waited"),
                now,
                out,
            );
            self.dial_next_candidate(peer, now, out);
        }
        // A probed link that went silent before the switch: drop it, probe
        // again later.
        if let Some(l) = &self.pending_switch
            && let LinkState::Up { last_heard } = l.state
            && now.saturating_duration_since(last_heard) > self.link_timeout(l)
        {
            let l = self.pending_switch.take().expect("checked");
            out.push(Action::Close { link: l.id });
            self.reprobe(l.peer, now);
        }
        // Token timeout: regenerate, if we are still part of a ring: a
        // predecessor has pinged steadily for a failure timeout. A burst
        // after a silence is not one: frames a predecessor queued before
        // it dropped the connection arrive that way when a cut heals, and
        // then the connection ends.
        if !self.has_particle() && self.in_flight.is_none() {
            let timeout = self.p.failure_timeout;
            let upstream_live = self
                .upstream_heard
                .is_some_and(|t| now.saturating_duration_since(t) <= timeout)
                && self
                    .upstream_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= timeout);
            let since = self
                .learned_at
                .map_or(self.last_particle_at, |t| t.max(self.last_particle_at));
            if upstream_live
                && self.downstream_up()
                && now.saturating_duration_since(since) > self.token_timeout()
            {
                self.create(Origin::Regenerated, now, out);
            }
        }
    }

    /// Dials the skipped members whose probe is due.
    fn probe_due(&mut self, now: Instant, out: &mut Vec<Action>) {
        let due: Vec<usize> = self
            .skipped
            .iter()
            .filter(|(_, p)| p.link.is_none() && p.next_at <= now)
            .map(|(&peer, _)| peer)
            .collect();
        for peer in due {
            let link = self.new_link();
            if let Some(p) = self.skipped.get_mut(&peer) {
                p.link = Some(link);
            }
            out.push(Action::Dial {
                link,
                peer,
                after: Duration::ZERO,
            });
        }
    }

    /// The token timeout at this node: at least three laps, staggered by
    /// rank among live members so the lowest regenerates first and its
    /// particle reaches the others before their timers fire.
    fn token_timeout(&self) -> Duration {
        let lap = self.last_lap.unwrap_or_default();
        let base = self.p.token_timeout.max(lap * 3);
        let live = self.live_members();
        let rank = live.iter().position(|&m| m == self.p.me).unwrap_or(0) as u32;
        let per_hop = (lap / live.len().max(1) as u32).max(Duration::from_millis(10));
        base + (per_hop * 4) * rank
    }

    // ----- the particle ------------------------------------------------

    /// A peer has seen particle `peer_seen`. When it is newer than any
    /// seen here, this node learns that a ring went on without it (it
    /// started, or comes back from being cut off): it gives that particle
    /// a token timeout from now to arrive before it makes one of its own
    /// from an old copy (signs of a live predecessor it gets meanwhile may
    /// be stale: frames queued on a connection the predecessor has since
    /// dropped). Not a sighting: its heartbeats do not vouch for it.
    fn adopt_seen(&mut self, peer_seen: Option<ParticleId>, now: Instant) {
        if let Some(id) = peer_seen
            && self.seen.is_none_or(|s| id > s)
        {
            self.seen = Some(id);
            self.last_hop = 0;
            self.learned_at = Some(now);
        }
    }

    /// A heartbeat from upstream vouches for a particle: it counts as a
    /// sighting `age` ago, unless it is about an older particle than ours
    /// or has crossed as many links as there are live members (it would be
    /// our own word coming back round).
    fn on_alive(&mut self, alive: Alive, now: Instant) {
        if self.seen.is_some_and(|s| alive.id < s)
            || usize::from(alive.relays) + 1 >= self.live_members().len().max(2)
        {
            return;
        }
        let Some(at) = now.checked_sub(Duration::from_millis(u64::from(alive.age_ms))) else {
            return;
        };
        // A particle this node has not met yet (it just started): it now
        // knows one exists, as from a welcome.
        self.adopt_seen(Some(alive.id), now);
        if at > self.last_particle_at {
            self.last_particle_at = at;
            self.alive_relays = alive.relays + 1;
        }
    }

    /// The particle is here from `now`: it is seen alive, and vouched for
    /// in heartbeats for at most the visit bound.
    fn arrived_here(&mut self, now: Instant) {
        self.last_particle_at = now;
        self.alive_relays = 0;
        self.held_until = Some(now + self.p.visit_bound);
    }

    fn create(&mut self, why: Origin, now: Instant, out: &mut Vec<Action>) {
        self.created = true;
        let generation = self.seen.map_or(1, |s| s.generation + 1);
        let mut particle = match (why, self.last_copy.take()) {
            // Keep the slots (station state) of the last copy we had.
            (Origin::Regenerated, Some(copy)) => Particle {
                generation,
                origin: self.p.me as u32,
                ..copy
            },
            _ => Particle::new(generation, self.p.me as u32),
        };
        particle.view = encode_view(&self.view);
        let id = particle.id();
        self.seen = Some(id);
        self.last_hop = particle.hop;
        self.arrived_here(now);
        out.push(Action::Created { id, why });
        self.phase = Phase::Visiting { from: None };
        if self.last_visit.is_none() {
            self.last_visit = Some(now);
        }
        out.push(Action::Visit {
            particle,
            stop: StopInfo { lap_time: None },
        });
    }

    fn on_particle(
        &mut self,
        mut particle: Particle,
        conn: Option<UpstreamId>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let id = particle.id();
        let from = conn.map(|conn| Came {
            conn,
            id,
            hop: particle.hop,
        });
        let ack = |out: &mut Vec<Action>| {
            if let Some(c) = from {
                out.push(Action::Ack {
                    to: c.conn,
                    id: c.id,
                    hop: c.hop,
                });
            }
        };
        if let Some(seen) = self.seen {
            if id < seen {
                out.push(Action::Dropped {
                    id,
                    reason: DropReason::Stale { current: seen },
                });
                ack(out);
                return;
            }
            if id == seen && (particle.hop <= self.last_hop || self.has_particle()) {
                out.push(Action::Dropped {
                    id,
                    reason: DropReason::Duplicate,
                });
                ack(out);
                return;
            }
        }
        // A newer particle replaces one held here.
        if self.has_particle() {
            let old = match std::mem::replace(&mut self.phase, Phase::Idle) {
                Phase::Holding { particle, .. } | Phase::Waiting { particle, .. } => {
                    Some(particle.id())
                }
                _ => self.seen,
            };
            if let Some(old) = old {
                out.push(Action::Dropped {
                    id: old,
                    reason: DropReason::Superseded { by: id },
                });
            }
        }
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.particle.id() < id)
        {
            self.in_flight = None;
        }
        // Our own particle back, a lap later: whoever held it passed it on.
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.particle.id() == id)
        {
            self.in_flight = None;
        }
        self.seen = Some(id);
        self.last_hop = particle.hop;
        self.arrived_here(now);
        if particle.origin as usize == self.p.me {
            particle.lap += 1;
        }
        self.merge_view(&mut particle, out);
        let lap_time = self.last_visit.map(|t| now.saturating_duration_since(t));
        self.last_visit = Some(now);
        if lap_time.is_some() {
            self.last_lap = lap_time;
        }
        self.phase = Phase::Visiting { from };
        out.push(Action::Visit {
            particle,
            stop: StopInfo { lap_time },
        });
        // Custody is clear while the particle is here: a good moment to
        // switch to a probed successor.
        self.maybe_switch(now, out);
    }

    /// Writes this node's segment of the view into the particle (itself
    /// live, the members it skips dead) and adopts the rest.
    fn merge_view(&mut self, particle: &mut Particle, out: &mut Vec<Action>) {
        let mut view =
            decode_view(&particle.view, self.p.size).unwrap_or_else(|| self.view.clone());
        view[self.p.me] = true;
        for &s in self.skipped.keys() {
            view[s] = false;
        }
        if let Some(succ) = self.successor()
            && self.downstream_up()
        {
            view[succ] = true;
        }
        particle.view = encode_view(&view);
        // After a full lap every live member's segment has been written
        // by its owner: a member marked live there was up.
        if particle.lap > 0 {
            for (up, &live) in self.ever_up.iter_mut().zip(&view) {
                *up |= live;
            }
        }
        if view != self.view {
            self.view = view;
            out.push(Action::ViewChanged {
                live: self.live_members(),
            });
        }
    }

    fn forward(
        &mut self,
        particle: Particle,
        from: Option<Came>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match &self.primary {
            Some(l) if matches!(l.state, LinkState::Up { .. }) => {
                let link = l.id;
                self.send_and_ack(link, particle, from, now, out);
            }
            _ => {
                // No successor to vouch to: the particle waits here.
                self.held_until = None;
                self.phase = Phase::Waiting { particle, from };
            }
        }
    }

    fn send_and_ack(
        &mut self,
        link: LinkId,
        particle: Particle,
        from: Option<Came>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.send(link, particle, now, out);
        if let Some(c) = from {
            // Custody moved on: our predecessor may forget its copy.
            out.push(Action::Ack {
                to: c.conn,
                id: c.id,
                hop: c.hop,
            });
        }
    }

    /// Sends `particle` (its hop as it arrived here) on `link`, the
    /// primary: its hop advances by the ring distance to the successor
    /// (the members skipped count), so the particle carries the same hop
    /// at a member whichever way it came, and a resent copy meets the
    /// original's hop there and is dropped as a duplicate.
    fn send(&mut self, link: LinkId, mut particle: Particle, now: Instant, out: &mut Vec<Action>) {
        let base_hop = particle.hop;
        let peer = self
            .primary
            .as_ref()
            .filter(|l| l.id == link)
            .map_or(self.p.me, |l| l.peer);
        particle.hop += self.distance(peer) as u64;
        // `last_hop` records arrivals only: in a ring of one, the particle
        // sent now arrives here again, `size` hops on.
        self.phase = Phase::Idle;
        self.last_particle_at = now;
        self.alive_relays = 0;
        self.held_until = None;
        self.in_flight = Some(InFlight {
            link,
            particle: particle.clone(),
            base_hop,
        });
        // Kept as it was here: a particle regenerated from it starts at
        // this node's hop.
        self.last_copy = Some(Particle {
            hop: base_hop,
            ..particle.clone()
        });
        out.push(Action::Send { link, particle });
    }
}

/// The view as a bitmap, bit `i` for member `i`.
pub fn encode_view(view: &[bool]) -> Vec<u8> {
    let mut bytes = vec![0u8; view.len().div_ceil(8)];
    for (i, &live) in view.iter().enumerate() {
        if live {
            bytes[i / 8] |= 1 << (i % 8);
        }
    }
    bytes
}

/// Reads a view bitmap for a ring of `size`; `None` when the length does
/// not fit (a particle from before any view was written).
pub fn decode_view(bytes: &[u8], size: usize) -> Option<Vec<bool>> {
    if bytes.len() != size.div_ceil(8) {
        return None;
    }
    Some(
        (0..size)
            .map(|i| bytes[i / 8] & (1 << (i % 8)) != 0)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::{Faults, Net, assert_one_particle_in_order};

    const MS: Duration = Duration::from_millis(1);

    fn settled(net: &mut Net, live: &[usize], window: Duration) {
        let from = net.now();
        net.run(window);
        let stops = net.stops_since(from);
        assert!(stops.len() > live.len() * 3, "the ring moves: {stops:?}");
        assert_one_particle_in_order(&stops, live);
        for &i in live {
            assert_eq!(net.state(i).live_members(), live, "view at node {i}");
        }
    }

    #[test]
    fn a_fresh_ring_forms_and_circulates_one_particle() {
        let mut net = Net::new(5, 1);
        net.run(200 * MS);
        settled(&mut net, &[0, 1, 2, 3, 4], 500 * MS);
        assert_eq!(net.created(), 1, "one injection, no regeneration");
    }

    /// A node of 3 linked to member 2 at `t`, its pongs answering at
    /// `rtt`: returns the state and the link.
    fn linked_with_round_trips(rtt: Duration, t: Instant) -> (RingState, LinkId) {
        let mut s = RingState::new(RingParams::for_test(1, 3), t);
        let mut out = Vec::new();
        s.handle(Event::Start { now: t }, &mut out);
        let Some(Action::Dial { link, peer: 2, .. }) = out.pop() else {
            panic!("{out:?}")
        };
        s.handle(
            Event::Dialed {
                link,
                result: DialResult::Up { peer_seen: None },
                now: t,
            },
            &mut out,
        );
        for i in 1..=20 {
            let now = t + i * 60 * MS;
            s.handle(
                Event::Heard {
                    link,
                    rtt: Some(rtt),
                    now,
                },
                &mut out,
            );
            s.handle(Event::Tick { now }, &mut out);
        }
        (s, link)
    }

    /// Ticks every 60 ms from `from` for `span` with nothing heard; the
    /// member declared dead, if one was.
    fn silent_for(s: &mut RingState, from: Instant, span: Duration) -> Option<usize> {
        let mut out = Vec::new();
        let mut now = from;
        while now < from + span {
            now += 60 * MS;
            s.handle(Event::Tick { now }, &mut out);
            if let Some(peer) = out.iter().find_map(|a| match a {
                Action::MemberDown { peer, .. } => Some(*peer),
                _ => None,
            }) {
                return Some(peer);
            }
        }
        None
    }

    /// Node 1 of 3, linked to 2: it passes generation 1 on at `t` + 1.3 s,
    /// then hears nothing from upstream for 3 s while its successor
    /// answers. The state, its successor link, and the time then.
    fn passed_on_then_cut_off_from_upstream(t: Instant) -> (RingState, LinkId, Instant) {
        let (mut s, link) = linked_with_round_trips(MS, t);
        let mut out = Vec::new();
        let mut now = t + 1300 * MS;
        let particle = Particle::new(1, 0);
        s.handle(
            Event::ParticleArrived {
                particle,
                from: 7,
                now,
            },
            &mut out,
        );
        let Some(Action::Visit { particle, .. }) = out.pop() else {
            panic!("{out:?}")
        };
        let hold = Duration::ZERO;
        s.handle(
            Event::VisitDone {
                particle,
                hold,
                now,
            },
            &mut out,
        );
        let Some((id, hop)) = out.iter().find_map(|a| match a {
            Action::Send { particle, .. } => Some((particle.id(), particle.hop)),
            _ => None,
        }) else {
            panic!("{out:?}")
        };
        s.handle(Event::Forwarded { link, id, hop, now }, &mut out);
        for _ in 0..50 {
            now += 60 * MS;
            let rtt = None;
            s.handle(Event::Heard { link, rtt, now }, &mut out);
            s.handle(Event::Tick { now }, &mut out);
        }
        assert!(
            !out.iter().any(|a| matches!(a, Action::Created { .. })),
            "no regeneration without a live predecessor"
        );
        (s, link, now)
    }

    /// Ticks every 20 ms from `from` for `span` (pinged from upstream at
    /// each tick when `pinged`; the successor on `link` answering): how
    /// long until the node regenerated, if it did.
    fn regenerates_within(
        s: &mut RingState,
        link: LinkId,
        from: Instant,
        span: Duration,
        pinged: bool,
    ) -> Option<Duration> {
        let mut out = Vec::new();
        let mut now = from;
        while now < from + span {
            now += 20 * MS;
            if pinged {
                s.handle(Event::UpstreamAlive { alive: None, now }, &mut out);
            }
            let rtt = None;
            s.handle(Event::Heard { link, rtt, now }, &mut out);
            s.handle(Event::Tick { now }, &mut out);
            if out.iter().any(|a| matches!(a, Action::Created { .. })) {
                return Some(now - from);
            }
        }
        None
    }

    /// The soak (seed 417942): member 1 held an old copy, was cut off
    /// while the ring made a newer particle, and came back. Its successor's
    /// welcome told it of the newer particle, and it regenerated at once
    /// from its copy 63 stops old. Learning of a newer particle now gives
    /// that particle a token timeout to arrive first; if it never does, the
    /// node still regenerates after it.
    #[test]
    fn a_node_back_from_being_cut_off_waits_for_the_newer_particle_before_making_one() {
        let (mut s, link, now) = passed_on_then_cut_off_from_upstream(Instant::now());
        let mut out = Vec::new();
        s.handle(Event::LinkLost { link, now }, &mut out);
        let Some(Action::Dial { link, .. }) =
            out.drain(..).find(|a| matches!(a, Action::Dial { .. }))
        else {
            panic!("a redial")
        };
        // Back: the welcome names a newer particle; a predecessor pings.
        let newer = ParticleId {
            generation: 2,
            origin: 0,
        };
        let result = DialResult::Up {
            peer_seen: Some(newer),
        };
        s.handle(Event::Dialed { link, result, now }, &mut out);
        let waited = regenerates_within(&mut s, link, now, 500 * MS, true);
        assert_eq!(waited, None, "waits for it");
        let after = regenerates_within(&mut s, link, now + 500 * MS, 2000 * MS, true);
        assert!(after.is_some(), "a particle that never comes is remade");
    }

    /// The soak (seed 158154): member 9 was cut off from its predecessor,
    /// which skipped it and dropped the connection. When the cut healed,
    /// the pings queued on that connection arrived at once before it
    /// ended, made its upstream look live, and it regenerated from its
    /// copy 125 stops old while the ring's particle went round it. A
    /// burst after a silence is not a live predecessor; steady pings for a
    /// failure timeout are.
    #[test]
    fn pings_queued_before_a_predecessor_dropped_the_link_do_not_make_a_node_regenerate() {
        let (mut s, link, now) = passed_on_then_cut_off_from_upstream(Instant::now());
        let mut out = Vec::new();
        for k in 0..5 {
            let now = now + k * MS;
            s.handle(Event::UpstreamAlive { alive: None, now }, &mut out);
        }
        let burst = regenerates_within(&mut s, link, now + 5 * MS, 1000 * MS, false);
        assert_eq!(burst, None, "a burst is not a live predecessor");
        let steady = regenerates_within(&mut s, link, now + 1005 * MS, 1500 * MS, true);
        assert!(steady.is_some(), "steady pings and no particle: remade");
    }

    #[test]
    fn a_node_whose_own_network_is_down_redials_the_same_member_and_blames_none() {
        let t = Instant::now();
        let mut s = RingState::new(RingParams::for_test(1, 4), t);
        let mut out = Vec::new();
        s.handle(Event::Start { now: t }, &mut out);
        let Some(Action::Dial {
            mut link, peer: 2, ..
        }) = out.pop()
        else {
            panic!("{out:?}")
        };
        let mut last_after = Duration::ZERO;
        for _ in 0..3 {
            out.clear();
            let result = DialResult::LocalDown("no route".into());
            s.handle(
                Event::Dialed {
                    link,
                    result,
                    now: t,
                },
                &mut out,
            );
            assert!(
                !out.iter().any(|a| matches!(a, Action::MemberDown { .. })),
                "{out:?}"
            );
            let Some(Action::Dial {
                link: next,
                peer: 2,
                after,
            }) = out.pop()
            else {
                panic!("redials member 2: {out:?}")
            };
            assert!(
                after >= last_after && after >= 5 * MS,
                "backs off: {after:?}"
            );
            (link, last_after) = (next, after);
        }
        assert!(s.skipped().is_empty(), "nobody skipped");
    }

    #[test]
    fn a_link_with_long_round_trips_gets_a_longer_failure_timeout() {
        // for_test: 300 ms configured, 60 ms heartbeat.
        let t = Instant::now();
        let (mut near, _) = linked_with_round_trips(2 * MS, t);
        let last = t + 1200 * MS;
        assert_eq!(near.successor_timing().map(|(_, f)| f), Some(300 * MS));
        assert_eq!(
            silent_for(&mut near, last, 420 * MS),
            Some(2),
            "short round trips: 300 ms"
        );
        // 250 ms round trips: 3 x (250 + 4 x small) + 60 > 800 ms.
        let (mut far, _) = linked_with_round_trips(250 * MS, t);
        let (srtt, timeout) = far.successor_timing().expect("linked");
        assert!(srtt.is_some_and(|r| r >= 240 * MS), "{srtt:?}");
        assert!(timeout >= 800 * MS, "{timeout:?}");
        assert_eq!(
            silent_for(&mut far, last, 780 * MS),
            None,
            "not dead at 780 ms"
        );
        assert_eq!(
            silent_for(&mut far, last + 780 * MS, 2000 * MS),
            Some(2),
            "dead later"
        );
    }

    #[test]
    fn a_probe_link_lost_before_the_switch_is_probed_again() {
        let mut s = RingState::new(RingParams::for_test(1, 4), Instant::now());
        let t = Instant::now();
        let mut out = Vec::new();
        s.handle(Event::Start { now: t }, &mut out);
        let Some(Action::Dial { link: first, .. }) = out.pop() else {
            panic!()
        };
        // Member 2 refuses: skipped; member 3 answers.
        out.clear();
        s.handle(
            Event::Dialed {
                link: first,
                result: DialResult::Failed("refused".into()),
                now: t,
            },
            &mut out,
        );
        let Some(Action::Dial {
            link: to3, peer: 3, ..
        }) = out.pop()
        else {
            panic!("{out:?}")
        };
        s.handle(
            Event::Dialed {
                link: to3,
                result: DialResult::Up { peer_seen: None },
                now: t,
            },
            &mut out,
        );
        // A particle goes out (custody pending), then the probe of 2 works.
        s.handle(
            Event::ParticleArrived {
                particle: Particle::new(1, 0),
                from: 9,
                now: t,
            },
            &mut out,
        );
        s.handle(
            Event::VisitDone {
                particle: Particle::new(1, 0),
                hold: Duration::ZERO,
                now: t,
            },
            &mut out,
        );
        out.clear();
        let t1 = t + Duration::from_millis(60);
        s.handle(Event::Tick { now: t1 }, &mut out);
        let Some(Action::Dial {
            link: probe,
            peer: 2,
            ..
        }) = out.pop()
        else {
            panic!("{out:?}")
        };
        s.handle(
            Event::Dialed {
                link: probe,
                result: DialResult::Up { peer_seen: None },
                now: t1,
            },
            &mut out,
        );
        assert_eq!(s.successor(), Some(3), "switch waits for custody");
        // The probe link dies before the switch: member 2 is probed again.
        s.handle(
            Event::LinkLost {
                link: probe,
                now: t1,
            },
            &mut out,
        );
        out.clear();
        s.handle(
            Event::Heard {
                link: to3,
                rtt: None,
                now: t1 + Duration::from_millis(100),
            },
            &mut out,
        );
        s.handle(
            Event::Tick {
                now: t1 + Duration::from_millis(120),
            },
            &mut out,
        );
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Dial { peer: 2, .. })),
            "member 2 probed again: {out:?}"
        );
    }

    #[test]
    fn a_member_never_up_is_not_started_and_one_that_was_up_fails() {
        let mut net = Net::new(3, 11);
        // Members 1 and 2 are down before anything is delivered: node 0
        // starts alone and has never known them up.
        net.crash(1);
        net.crash(2);
        net.run(300 * MS);
        let alone: Vec<_> = net.member_downs.iter().filter(|d| d.0 == 0).collect();
        assert!(!alone.is_empty(), "node 0 skipped them: {alone:?}");
        assert_eq!(net.failures, [], "no failure declared");
        assert!(!net.state(0).ever_up(1) && !net.state(0).ever_up(2));
        // Member 1 starts and is spliced in; then it dies: a failure.
        net.restart(1);
        net.run(500 * MS);
        assert_eq!(net.state(0).successor(), Some(1), "member 1 spliced in");
        assert!(net.state(0).ever_up(1) && !net.state(0).ever_up(2));
        assert_eq!(net.failures, [], "a member starting is no failure");
        net.crash(1);
        net.run(800 * MS);
        assert_eq!(net.failures, [(0, 1)], "only member 1 failed, at node 0");
    }

    #[test]
    fn view_bitmap_round_trips() {
        let v = vec![true, false, true, true, false, false, false, true, true];
        assert_eq!(decode_view(&encode_view(&v), 9), Some(v));
        assert_eq!(decode_view(&[0xff], 9), None);
    }

    #[test]
    fn crash_of_a_node_without_the_particle_is_healed_within_200_ms() {
        let mut net = Net::new(5, 2);
        net.run(300 * MS);
        // Crash a node that neither holds the particle nor receives it.
        let holder = net.holder().expect("a particle exists");
        let victim = (holder + 2) % 5;
        net.crash(victim);
        let t = net.now();
        net.run(200 * MS);
        let after: Vec<_> = net.stops_since(t);
        assert!(
            after.len() > 4,
            "particle moving again within 200 ms: {after:?}"
        );
        let live: Vec<usize> = (0..5).filter(|&i| i != victim).collect();
        settled(&mut net, &live, 500 * MS);
        assert_eq!(net.created(), 1, "no regeneration for a crash off the path");
    }

    #[test]
    fn crash_of_the_holder_resends_the_same_particle_without_a_duplicate() {
        for seed in 0..20 {
            let mut net = Net::new(5, seed);
            net.hold = 20 * MS; // the particle sits at each stop a while
            net.run(300 * MS + (seed as u32) * 7 * MS);
            let victim = net.holder().expect("a particle exists");
            net.crash(victim);
            let t = net.now();
            net.run(200 * MS);
            assert!(
                net.stops_since(t).len() >= 3,
                "seed {seed}: particle moving again within 200 ms"
            );
            let live: Vec<usize> = (0..5).filter(|&i| i != victim).collect();
            settled(&mut net, &live, 600 * MS);
            assert_eq!(net.created(), 1, "seed {seed}: resent, not regenerated");
        }
    }

    /// The soak's seed 417942 again, on the code with the dial hold: node 0
    /// already skips a dead member 1 and passes the particle straight to 2,
    /// then dies before its custody ack (it rides on a pong) reaches node
    /// 4, and 4 resends past 0 and 1. When a send advanced the hop by one
    /// whatever it skipped, that copy reached 2 with a higher hop than the
    /// original had, after the original had gone on, and was taken for
    /// new: stops were made twice.
    #[test]
    fn a_resend_past_a_node_that_already_skipped_members_is_a_duplicate_downstream() {
        for seed in 0..10 {
            let mut net = Net::new(5, seed);
            // About one stop per simulation step, to catch the moment.
            net.latency = 3 * MS;
            net.run(300 * MS);
            net.crash(1);
            net.run(600 * MS + (seed as u32) * 13 * MS);
            // Step until node 0 has just sent the particle on to 2, its
            // custody ack to 4 still owed; kill 0 then.
            let mut prev = net.holder();
            let mut killed = false;
            for _ in 0..400 {
                net.run(5 * MS);
                let now = net.holder();
                if prev == Some(0) && now == Some(2) {
                    net.crash(0);
                    killed = true;
                    break;
                }
                prev = now;
            }
            assert!(killed, "seed {seed}: node 0 passed the particle to 2");
            let t = net.now();
            net.run(1000 * MS);
            assert_one_particle_in_order(&net.stops_since(t), &[2, 3, 4]);
            assert_eq!(net.created(), 1, "seed {seed}: resent, not regenerated");
        }
    }

    #[test]
    fn hung_holder_is_skipped_then_its_stale_copy_is_dropped_on_resume() {
        let mut net = Net::new(5, 3);
        net.hold = 20 * MS;
        net.run(300 * MS);
        let victim = net.holder().unwrap();
        net.hang(victim);
        let t = net.now();
        net.run(700 * MS);
        let after = net.stops_since(t);
        assert!(
            after.iter().any(|s| s.at >= t + 600 * MS),
            "moving again after the failure timeout: {after:?}"
        );
        let live: Vec<usize> = (0..5).filter(|&i| i != victim).collect();
        settled(&mut net, &live, 500 * MS);
        // SIGCONT: the node wakes with a stale copy; one lap later there is
        // one particle again, and the node is spliced back in. Waking, it
        // does not blame its own successor for the silence it slept through.
        let downs_before = net.member_downs.len();
        net.resume(victim);
        net.run(600 * MS);
        settled(&mut net, &[0, 1, 2, 3, 4], 600 * MS);
        let woke: Vec<_> = net.member_downs[downs_before..]
            .iter()
            .filter(|(by, _)| *by == victim)
            .collect();
        assert!(woke.is_empty(), "false failures after waking: {woke:?}");
    }

    /// The CI soak's seed 417942: member 1's host was cut off and node 0
    /// restarted meanwhile. The particle reached 0 while 0 dialed 1, and
    /// waited there for the dial's own bound (1.5 s), past the others'
    /// token timeout: another node took it for lost and made a second
    /// one, and stops were logged twice. The same happens to any node
    /// whose successor dies and whose next candidate cannot answer. Run
    /// once with the dial hold as long as the dial (the field's case, to
    /// show the scenario does make a second particle) and once as set.
    fn restart_beside_a_cut_off_member(seed: u64, dial_hold: Duration) -> Net {
        let mut net = Net::with_params(5, seed, move |i| RingParams {
            dial_hold,
            ..RingParams::for_test(i, 5)
        });
        net.dial_limit = 1500 * MS;
        net.hold = 2 * MS;
        net.run(300 * MS);
        net.partition(&[1], &[0, 2, 3, 4]);
        net.run(600 * MS);
        net.crash(0);
        net.run(100 * MS);
        net.restart(0);
        // Member 1, alone, makes a particle of its own ~5 s after the cut
        // (a partition keeps both sides going): stop before.
        net.run(2500 * MS);
        net
    }

    /// Stops at the members that were not cut off with another particle
    /// than the first one.
    fn second_particle_stops(net: &Net) -> usize {
        let first = net.stops[0].id;
        net.stops
            .iter()
            .filter(|s| s.node != 1 && s.id != first)
            .count()
    }

    #[test]
    fn a_particle_waiting_on_a_dial_that_gets_no_answer_goes_round_the_member_in_time() {
        let mut regenerated_without = 0;
        for seed in 0..10 {
            let net = restart_beside_a_cut_off_member(seed, 10_000 * MS);
            regenerated_without += usize::from(second_particle_stops(&net) > 0);
            let mut net =
                restart_beside_a_cut_off_member(seed, RingParams::for_test(0, 5).dial_hold);
            assert_eq!(
                second_particle_stops(&net),
                0,
                "seed {seed}: taken for lost while it waited"
            );
            settled(&mut net, &[0, 2, 3, 4], 500 * MS);
        }
        assert!(
            regenerated_without > 0,
            "the field's case (a dial holding the particle 1.5 s) made a second particle"
        );
    }

    /// A ring of `n` whose visits may take up to `bound`.
    fn net_with_visit_bound(n: usize, seed: u64, bound: Duration) -> Net {
        Net::with_params(n, seed, move |i| RingParams {
            visit_bound: bound,
            ..RingParams::for_test(i, n)
        })
    }

    #[test]
    fn a_stop_longer_than_the_token_timeout_is_not_a_lost_particle() {
        // The field case: one member's station takes 1.5 s per visit, the
        // token timeout is 0.6 s. Its heartbeats vouch for the particle, so
        // nobody regenerates, and one particle keeps its order.
        for seed in 0..8 {
            let mut net = net_with_visit_bound(4, seed, 2000 * MS);
            net.hold = 20 * MS;
            // Every member in turn is the slow one; twice, two of them.
            net.slow.insert((seed % 4) as usize, 1500 * MS);
            if seed >= 4 {
                net.slow.insert(((seed + 2) % 4) as usize, 1200 * MS);
            }
            net.run(500 * MS);
            let from = net.now();
            net.run(10_000 * MS);
            assert_eq!(net.created(), 1, "seed {seed}: only the injected particle");
            let stops = net.stops_since(from);
            assert!(
                stops.len() >= 4 * 3,
                "seed {seed}: laps go on: {}",
                stops.len()
            );
            assert_one_particle_in_order(&stops, &[0, 1, 2, 3]);
            assert!(
                net.member_downs.is_empty(),
                "seed {seed}: {:?}",
                net.member_downs
            );
        }
    }

    #[test]
    fn a_slow_member_alone_at_first_splices_the_others_in_and_the_ring_settles() {
        // The slow member starts alone (a ring of one, visits of 1.5 s at
        // full speed), the others join: its probes must still go out and
        // splice them in, the closest first, and the particles the others
        // made meanwhile must not queue up behind its slow visits.
        for seed in 0..4 {
            let mut net = net_with_visit_bound(4, seed, 2000 * MS);
            net.hold = Duration::ZERO;
            net.slow.insert(0, 1500 * MS);
            for i in 1..4 {
                net.crash(i);
            }
            net.run(200 * MS);
            for i in 1..4 {
                net.restart(i);
            }
            net.run(8_000 * MS);
            let created = net.created();
            settled(&mut net, &[0, 1, 2, 3], 8_000 * MS);
            assert_eq!(net.created(), created, "seed {seed}: no more regeneration");
        }
    }

    #[test]
    fn holds_longer_than_the_token_timeout_at_every_stop_are_not_a_lost_particle() {
        // Every stop holds 1.5 s (a `delay` station): a lap takes 16.5 s in
        // a ring of 11, far beyond the 0.6 s token timeout; the word that
        // the particle is held crosses the ring with each heartbeat.
        let mut net = Net::new(11, 7);
        net.hold = 1500 * MS;
        net.run(300 * MS);
        let from = net.now();
        net.run(30_000 * MS);
        assert_eq!(net.created(), 1, "only the injected particle");
        let stops = net.stops_since(from);
        assert!(stops.len() >= 15, "{} stops", stops.len());
        assert_one_particle_in_order(&stops, &(0..11).collect::<Vec<_>>());
    }

    #[test]
    fn a_member_busy_past_its_visit_bound_no_longer_vouches_and_the_ring_regenerates() {
        // A wedged owner (visits far past the bound its stations allow)
        // must not keep the ring waiting for ever.
        let mut net = net_with_visit_bound(4, 1, 200 * MS);
        net.slow.insert(2, 60_000 * MS);
        net.run(3_000 * MS);
        assert!(net.created() >= 2, "a particle was regenerated");
        let stops = net.stops_since(net.now().saturating_sub(1000 * MS));
        assert!(
            stops.iter().any(|s| s.node == 3) && stops.iter().any(|s| s.node == 0),
            "the others go on: {stops:?}"
        );
    }

    #[test]
    fn a_restarted_node_rejoins_without_a_new_particle() {
        let mut net = Net::new(5, 4);
        net.run(300 * MS);
        net.crash(0); // even the node that injected
        net.run(300 * MS);
        settled(&mut net, &[1, 2, 3, 4], 300 * MS);
        net.restart(0);
        let t = net.now();
        net.run(500 * MS);
        let back = net.stops_since(t).iter().position(|s| s.node == 0);
        assert!(back.is_some(), "node 0 visited again within 500 ms");
        settled(&mut net, &[0, 1, 2, 3, 4], 500 * MS);
        assert_eq!(net.created(), 1, "the restarted node did not inject");
    }

    #[test]
    fn two_adjacent_crashes_with_the_particle_regenerate_a_newer_one() {
        let mut net = Net::new(6, 5);
        net.hold = 30 * MS;
        net.run(300 * MS);
        let h = net.holder().unwrap();
        // The holder and its predecessor (which kept the copy) both die.
        net.crash(h);
        net.crash((h + 5) % 6);
        net.run(3000 * MS);
        let live: Vec<usize> = (0..6).filter(|&i| i != h && i != (h + 5) % 6).collect();
        settled(&mut net, &live, 500 * MS);
        // The stagger makes the lowest eligible node regenerate first; a
        // second regeneration elsewhere is possible, and superseded within
        // a lap (what `settled` checks).
        assert!(net.created() >= 2, "a regeneration happened");
    }

    #[test]
    fn partition_keeps_both_sides_going_and_heals_into_one_particle() {
        let mut net = Net::new(6, 6);
        net.run(300 * MS);
        net.partition(&[0, 1, 2], &[3, 4, 5]);
        net.run(3000 * MS);
        let t = net.now();
        net.run(500 * MS);
        let stops = net.stops_since(t);
        for side in [[0usize, 1, 2], [3, 4, 5]] {
            let s: Vec<_> = stops
                .iter()
                .copied()
                .filter(|s| side.contains(&s.node))
                .collect();
            assert!(s.len() > 3, "side {side:?} keeps circulating");
            assert_one_particle_in_order(&s, &side);
        }
        net.heal();
        net.run(1500 * MS);
        settled(&mut net, &[0, 1, 2, 3, 4, 5], 600 * MS);
    }

    #[test]
    fn seeded_chaos_with_lost_duplicated_and_reordered_frames_converges() {
        for seed in 0..12u64 {
            let mut net = Net::new(5, 100 + seed);
            net.run(200 * MS);
            net.faults = Faults {
                drop: 0.05,
                dup: 0.05,
                jitter: 3 * MS,
            };
            net.run(1500 * MS);
            let victim = (seed % 5) as usize;
            net.crash(victim);
            net.run(800 * MS);
            net.restart(victim);
            net.run(800 * MS);
            net.faults = Faults::default();
            net.run(3000 * MS);
            settled(&mut net, &[0, 1, 2, 3, 4], 800 * MS);
        }
    }
}
