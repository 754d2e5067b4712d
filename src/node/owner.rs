//! The owner task: it owns the node's [`RingState`] and [`Pipeline`],
//! turns messages from the link tasks into protocol events, takes them in
//! an order that favours the newest particle and puts control events
//! (probe results, pongs, custody acks) ahead of a visit, runs the
//! stations inline and carries out the protocol's actions.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::NodeConfig;
use crate::deploy::agent::{DeployMsg, DeployView, OwnerCmd};
use crate::lograte::LogBackoff;
use crate::observe::{EventKind, Observer};
use crate::ring::state::{
    Action, DialResult, DropReason, Event, LinkId, Origin, RingState, UpstreamId,
};
use crate::ring::token::ParticleId;
use crate::station::{Pipeline, StopBase};
use crate::status::{self, Samples};
use crate::wire::{Frame, Hello, PROTOCOL_VERSION};

use super::downlink::{DialError, Dialed, LinkEnds, dial, run_downlink};
use super::msg::{AckSlot, BeaconCell, Downlink, Msg};

/// How often the owner ticks the protocol (deadlines are checked at this
/// granularity).
pub const TICK: Duration = Duration::from_millis(20);

/// Measurements the owner keeps for `ringhost status`.
#[derive(Default)]
pub(super) struct Stats {
    laps: Samples,
    stays: Samples,
    /// When the particle now here arrived, to time its stay.
    arrived: Option<Instant>,
    visits: u64,
    member_downs: u64,
}

pub(super) struct Owner {
    pub(super) config: Arc<NodeConfig>,
    pub(super) state: RingState,
    pub(super) pipeline: Pipeline,
    pub(super) observer: Observer,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) deploy_tx: mpsc::Sender<DeployMsg>,
    pub(super) deploy_view: watch::Receiver<DeployView>,
    pub(super) links: HashMap<LinkId, Downlink>,
    pub(super) upstreams: HashMap<UpstreamId, AckSlot>,
    pub(super) hold_until: Option<tokio::time::Instant>,
    pub(super) seen_tx: watch::Sender<Option<ParticleId>>,
    /// What the link tasks' pings say of the particle.
    pub(super) beacon: Arc<BeaconCell>,
    /// The sighting the link tasks were last woken for.
    pub(super) beacon_news: Option<Instant>,
    /// Backs off repeated refusal lines (a probe every probe interval).
    pub(super) refusals: LogBackoff,
    /// Drawn at start: tells this process from another claiming our name.
    pub(super) instance: u64,
    /// Why the node stopped by itself (refused as a duplicate member).
    pub(super) fatal: Option<String>,
    /// The successor last reported linked (to log changes only).
    pub(super) linked: Option<usize>,
    /// Members already reported as not started yet (said once each).
    pub(super) not_started_told: BTreeSet<usize>,
    pub(super) stats: Stats,
    /// Status reports built (read through the node's status snapshot).
    pub(super) reports_built: Arc<std::sync::atomic::AtomicU64>,
    pub(super) started: Instant,
    pub(super) addr: SocketAddr,
    /// The bound admin API address (`None`: off), for the status report.
    pub(super) admin_addr: Option<SocketAddr>,
    /// The node's key-value store (the config version is read from it).
    pub(super) kv: crate::station::KvStore,
    pub(super) cancel: CancellationToken,
    /// Cancelled when the owner ends (see `start`).
    pub(super) released: CancellationToken,
    pub(super) tracker: TaskTracker,
}

impl Owner {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut deploy_rx: mpsc::Receiver<OwnerCmd>,
    ) -> Result<()> {
        // However the owner ends (even by a panic), the upstream links may
        // then say the node leaves.
        let _released = self.released.clone().drop_guard();
        let mut events = VecDeque::from([Event::Start {
            now: Instant::now(),
        }]);
        let mut next_tick = tokio::time::Instant::now() + TICK;
        loop {
            self.drain(&mut events, &mut rx).await;
            // A tick is due whatever else waits: a node whose every visit
            // is long, with messages always queued, still probes, detects
            // failures and times out.
            let now = tokio::time::Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                events.push_back(Event::Tick {
                    now: Instant::now(),
                });
                continue;
            }
            let hold = self.hold_until;
            // Empty (no allocation) unless a station takes inputs.
            let inboxes = self.pipeline.input_inboxes();
            let takes_inputs = !inboxes.is_empty();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    self.leave().await;
                    break;
                }
                () = sleep_until_opt(hold), if hold.is_some() => {
                    self.hold_until = None;
                    events.push_back(Event::HoldElapsed { now: Instant::now() });
                }
                Some(msg) = rx.recv() => self.on_msg(msg, &mut events),
                Some(cmd) = deploy_rx.recv() => self.on_deploy(cmd).await,
                // Inputs for `input-station` stations: one bounded batch
                // each, between visits (never during one: this task runs
                // the visits), after any message waiting.
                () = crate::station::inputs_ready(inboxes), if takes_inputs => {
                    self.pipeline.dispatch_inputs().await;
                    for report in self.pipeline.take_faulty() {
                        let _ = self.deploy_tx.try_send(DeployMsg::Faulty(report));
                    }
                }
                () = tokio::time::sleep_until(next_tick) => {}
            }
        }
        info!("node stopped");
        match self.fatal.take() {
            Some(why) => Err(anyhow::anyhow!(
                "refused as a duplicate: {why}; stop the other process or start this one \
                 as another member"
            )),
            None => Ok(()),
        }
    }

    async fn drain(&mut self, events: &mut VecDeque<Event>, rx: &mut mpsc::Receiver<Msg>) {
        let mut actions = Vec::new();
        while let Some(mut event) = events.pop_front() {
            if matches!(event, Event::ParticleArrived { .. }) {
                // A visit may be long: first take what already arrived, so
                // a newer particle waiting behind this one is visited
                // instead (this one is then dropped as stale), rather than
                // every queued particle costing a visit of its own; and
                // what is not a particle (probe results, pongs, custody
                // acks) is handled before the visit, not after it.
                for _ in 0..rx.max_capacity() {
                    let Ok(msg) = rx.try_recv() else { break };
                    self.on_msg(msg, events);
                }
                event = newest_particle_first(event, events);
                match controls_first(event, events) {
                    Some(first) => event = first,
                    None => continue,
                }
            }
            self.state.handle(event, &mut actions);
            // Before the actions: a visit runs inline, and the link tasks
            // must vouch for the particle meanwhile.
            self.publish_beacon();
            for action in std::mem::take(&mut actions) {
                self.execute(action, events).await;
            }
        }
        let linked = self
            .state
            .successor()
            .filter(|_| self.state.downstream_up());
        if linked != self.linked {
            self.linked = linked;
            if let Some(successor) = linked {
                info!(successor, "linked to successor");
                self.observer
                    .emit(self.config.index, EventKind::SuccessorLinked { successor });
            }
        }
        let seen = self.state.seen();
        self.seen_tx.send_if_modified(|s| {
            let changed = *s != seen;
            *s = seen;
            changed
        });
    }

    /// Hands the protocol's word on the particle to the link tasks; wakes
    /// them only when it is fresher by half a heartbeat than the last news.
    fn publish_beacon(&mut self) {
        let beacon = self.state.beacon();
        *self.beacon.value.lock().expect("beacon lock") = beacon;
        let half = Duration::from_millis(self.config.heartbeat_interval_ms) / 2;
        if let Some(at) = beacon.map(|b| b.vouched_at(Instant::now()))
            && self.beacon_news.is_none_or(|last| at > last + half)
        {
            self.beacon_news = Some(at);
            self.beacon.news.notify_waiters();
        }
    }

    /// Leaving the ring: pass on a particle we hold instead of taking it
    /// down with us.
    async fn leave(&mut self) {
        let mut actions = Vec::new();
        self.state.release(Instant::now(), &mut actions);
        let mut ignored = VecDeque::new();
        for action in actions {
            match action {
                Action::Send { .. } => {
                    info!("passing the particle on before stopping");
                    self.execute(action, &mut ignored).await;
                }
                Action::Ack { .. } => self.execute(action, &mut ignored).await,
                _ => {}
            }
        }
    }

    /// Runs a command of the deploy agent. Only ever between two visits:
    /// the owner runs stations inline, so no call is in progress here.
    async fn on_deploy(&mut self, cmd: OwnerCmd) {
        match cmd {
            OwnerCmd::Swap { station, version } => {
                let name = station.name().to_string();
                let hash = station.hash();
                let started = Instant::now();
                let old = self.pipeline.swap(*station);
                let pause = started.elapsed();
                let bound = self.config.visit_bound(self.pipeline.stations().len());
                self.state.set_visit_bound(bound);
                // Dropping an instance takes tens of microseconds: not on
                // the particle's path.
                if let Some(old) = old {
                    tokio::task::spawn_blocking(move || drop(old));
                }
                info!(station = %name, ?version, hash = %hash.short(), ?pause, "station swapped in");
                self.observer.emit(
                    self.config.index,
                    EventKind::StationSwapped {
                        station: name,
                        version,
                        hash: hash.to_string(),
                        pause,
                    },
                );
            }
            OwnerCmd::Announce(releases) => {
                let Some(d) = self.state.successor_link().and_then(|l| self.links.get(&l)) else {
                    return; // the handshake of the next link carries them
                };
                let limit = Duration::from_millis(self.config.write_timeout_ms);
                if !d.write(&Frame::Announce(releases), limit).await {
                    debug!("announce not written; the next handshake carries it");
                }
            }
        }
    }

    fn on_msg(&mut self, msg: Msg, events: &mut VecDeque<Event>) {
        let now = Instant::now();
        match msg {
            Msg::Particle {
                particle,
                from,
                ack,
            } => {
                self.upstreams.insert(from, ack);
                events.push_back(Event::ParticleArrived {
                    particle,
                    from,
                    now,
                });
            }
            Msg::UpstreamAlive(alive) => events.push_back(Event::UpstreamAlive { alive, now }),
            Msg::UpstreamClosed(id) => {
                self.upstreams.remove(&id);
            }
            Msg::Dialed {
                link,
                result,
                downlink,
            } => {
                match &result {
                    DialResult::Up { .. } => {
                        if let Some(d) = downlink {
                            self.links.insert(link, d);
                        }
                    }
                    DialResult::Refused(reason) => {
                        if let Some(held) = self.refusals.check(reason, Instant::now()) {
                            error!(%reason, repeats_held_back = held, "a successor refused our link");
                        }
                        self.observer.emit(
                            self.config.index,
                            EventKind::LinkRefused {
                                reason: reason.clone(),
                            },
                        );
                    }
                    DialResult::Failed(why) => debug!(link, %why, "dial failed"),
                    DialResult::LocalDown(why) => {
                        if let Some(held) =
                            self.refusals.check("local network down", Instant::now())
                        {
                            warn!(
                                %why,
                                repeats_held_back = held,
                                "this node's network is down (no route out): retrying the same member, blaming none"
                            );
                        }
                    }
                }
                events.push_back(Event::Dialed { link, result, now });
            }
            Msg::Heard { link, rtt } => events.push_back(Event::Heard { link, rtt, now }),
            Msg::Left(link) => {
                if self.links.remove(&link).is_some() {
                    events.push_back(Event::Left { link, now });
                }
            }
            Msg::Forwarded { link, id, hop } => {
                events.push_back(Event::Forwarded { link, id, hop, now });
            }
            Msg::LinkLost { link, why } => {
                if self.links.remove(&link).is_some() {
                    debug!(link, %why, "successor link lost");
                    events.push_back(Event::LinkLost { link, now });
                }
            }
            Msg::Status(reply) => {
                self.reports_built
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = reply.send(self.status_report());
            }
            Msg::Duplicate(why) => {
                error!(%why, "another live process runs this member; this one stops");
                self.fatal = Some(why);
                self.cancel.cancel();
            }
        }
    }

    async fn execute(&mut self, action: Action, events: &mut VecDeque<Event>) {
        let me = self.config.index;
        match action {
            Action::Dial { link, peer, after } => self.spawn_dial(link, peer, after),
            Action::Close { link } => {
                self.links.remove(&link);
            }
            Action::Visit { mut particle, stop } => {
                let base = StopBase {
                    node_name: self.config.me().name.clone(),
                    node_index: me as u32,
                    ring_size: self.config.ring.len() as u32,
                    lap_time: stop.lap_time,
                };
                let hold = self.pipeline.run(&base, &mut particle).await;
                for report in self.pipeline.take_faulty() {
                    let _ = self.deploy_tx.try_send(DeployMsg::Faulty(report));
                }
                let hold = hold.max(Duration::from_millis(self.config.delay_ms));
                if let Some(t) = stop.lap_time {
                    self.stats.laps.push(t);
                }
                self.stats.arrived.get_or_insert_with(Instant::now);
                self.stats.visits += 1;
                debug!(id = %particle.id(), lap = particle.lap, hop = particle.hop, "particle visited");
                self.observer.emit(
                    me,
                    EventKind::Visit {
                        generation: particle.generation,
                        lap: particle.lap,
                        hop: particle.hop,
                        lap_time: stop.lap_time,
                    },
                );
                events.push_back(Event::VisitDone {
                    particle,
                    hold,
                    now: Instant::now(),
                });
            }
            Action::Hold(d) => {
                self.hold_until = Some(tokio::time::Instant::now() + d);
            }
            Action::Send { link, particle } => {
                if let Some(arrived) = self.stats.arrived.take() {
                    let stay = arrived.elapsed();
                    self.stats.stays.push(stay);
                    if let Some(m) = self.observer.metrics() {
                        m.hop_stay.observe(stay);
                    }
                }
                let limit = Duration::from_millis(self.config.write_timeout_ms);
                match self.links.get(&link) {
                    Some(d) => {
                        if !d.write(&Frame::Particle(particle), limit).await {
                            // The link is gone or jammed: the protocol still
                            // holds a copy (in flight) and resends it on the
                            // next link. Whether the successor failed or
                            // said it leaves, only the link's reader knows
                            // (a `Leave` may wait unread): its task reports
                            // `Left` or `LinkLost`.
                            d.broken.cancel();
                        }
                    }
                    None => events.push_back(Event::LinkLost {
                        link,
                        now: Instant::now(),
                    }),
                }
            }
            Action::Ack { to, id, hop } => {
                if let Some(slot) = self.upstreams.get(&to) {
                    *slot.lock().expect("ack slot") = Some((id, hop));
                }
            }
            Action::Created { id, why } => {
                let regenerated = match why {
                    Origin::Injected => {
                        info!(particle = %id, "particle injected");
                        false
                    }
                    Origin::Regenerated => {
                        warn!(particle = %id, "no particle within the token timeout: regenerated one");
                        true
                    }
                };
                self.observer.emit(
                    self.config.index,
                    EventKind::ParticleCreated {
                        generation: id.generation,
                        regenerated,
                    },
                );
            }
            Action::Dropped { id, reason } => {
                let reason = match reason {
                    DropReason::Stale { current } => format!("stale (current {current})"),
                    DropReason::Duplicate => "duplicate".into(),
                    DropReason::Superseded { by } => format!("superseded by {by}"),
                };
                debug!(particle = %id, %reason, "particle dropped");
                self.observer.emit(
                    me,
                    EventKind::ParticleDropped {
                        generation: id.generation,
                        reason,
                    },
                );
            }
            Action::MemberDown {
                peer,
                reason,
                left,
                ever_up,
            } => {
                let name = &self.config.ring.members()[peer].name;
                if left {
                    info!(member = peer, %name, "successor left the ring; skipping it");
                } else if !ever_up {
                    // Not a failure: the member has not been up since this
                    // node started (a ring forming). Said once per member.
                    if self.not_started_told.insert(peer) {
                        info!(member = peer, %name, "member not started yet; skipping it until it answers");
                    } else {
                        debug!(member = peer, %name, %reason, "member still not started; skipping it");
                    }
                } else {
                    self.stats.member_downs += 1;
                    warn!(member = peer, %name, %reason, "successor declared dead; skipping it");
                }
                self.observer.emit(
                    me,
                    EventKind::MemberDown {
                        peer,
                        reason,
                        left,
                        ever_up,
                    },
                );
            }
            Action::MemberUp { peer, first } => {
                let name = &self.config.ring.members()[peer].name;
                if first {
                    info!(member = peer, %name, "member started; spliced into the ring");
                } else {
                    info!(member = peer, %name, "member back; spliced into the ring");
                }
                self.observer.emit(me, EventKind::MemberUp { peer });
            }
            Action::ViewChanged { live } => {
                info!(live = ?live, "membership view changed");
                self.observer.emit(me, EventKind::ViewChanged { live });
            }
        }
    }

    /// Dials `peer` for `link` after `after`, on the node's tracker, and
    /// reports the result (with the link, when up) to the owner.
    fn spawn_dial(&mut self, link: LinkId, peer: usize, after: Duration) {
        let addr = self.config.ring.members()[peer].addr.clone();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            ring_hash: self.config.ring.hash().to_string(),
            from_index: self.config.index as u32,
            from_name: self.config.me().name.clone(),
            releases: self.deploy_view.borrow().releases.clone(),
            instance: self.instance,
        };
        let tx = self.tx.clone();
        let deploy_tx = self.deploy_tx.clone();
        let beacon = Arc::clone(&self.beacon);
        let config = Arc::clone(&self.config);
        let cancel = self.cancel.clone();
        let tracker = self.tracker.clone();
        let span = info_span!("link", link, peer);
        self.tracker.spawn(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = async {
                        tokio::time::sleep(after).await;
                        let (result, downlink) = match dial(&addr, hello, &config).await {
                            Ok(Dialed { writer, reader, peer_seen, releases, beacons }) => {
                                let _ = deploy_tx.send(DeployMsg::PeerReleases { peer, releases, coming: Vec::new() }).await;
                                let writer = Arc::new(tokio::sync::Mutex::new(writer));
                                let beacon = beacons.then_some(beacon);
                                let broken = CancellationToken::new();
                                let task = tracker.spawn(
                                    run_downlink(link, Arc::clone(&writer), reader, tx.clone(), Arc::clone(&config), beacon, LinkEnds { node: cancel.clone(), broken: broken.clone() })
                                        .in_current_span(),
                                );
                                (DialResult::Up { peer_seen }, Some(Downlink { writer, task, broken }))
                            }
                            Err(DialError::Ended(e)) => (e, None),
                            Err(DialError::Duplicate(why)) => {
                                let _ = tx.send(Msg::Duplicate(why.clone())).await;
                                (DialResult::Refused(why), None)
                            }
                        };
                        let _ = tx.send(Msg::Dialed { link, result, downlink }).await;
                    } => {}
                }
            }
            .instrument(span),
        );
    }

    fn status_report(&self) -> status::Report {
        let members = self.config.ring.members();
        let view = self.state.view();
        let timing = self.state.successor_timing();
        status::Report {
            node: status::NodeRef {
                index: self.config.index,
                name: self.config.me().name.clone(),
                addr: self.addr.to_string(),
                pid: std::process::id(),
            },
            ring_size: members.len(),
            ring_hash: self.config.ring.hash().to_string(),
            members: members
                .iter()
                .enumerate()
                .map(|(i, m)| status::MemberStatus {
                    index: i,
                    name: m.name.clone(),
                    addr: m.addr.clone(),
                    live: view[i],
                })
                .collect(),
            successor: self.state.successor(),
            successor_up: self.state.downstream_up(),
            skipped: self.state.skipped(),
            particle: status::ParticleStatus {
                generation: self.state.seen().map(|s| s.generation),
                origin: self.state.seen().map(|s| s.origin),
                here: self.state.has_particle(),
            },
            visits: self.stats.visits,
            member_downs: self.stats.member_downs,
            lap_ms: self.stats.laps.summary_ms(),
            stay_ms: self.stats.stays.summary_ms(),
            stations: self
                .pipeline
                .stations()
                .iter()
                .map(|s| status::StationStatus {
                    name: s.name().to_string(),
                    faults: s.faults(),
                    version: s.version(),
                })
                .collect(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            deploy: self.deploy_view.borrow().clone(),
            admin: self.admin_addr.map(|a| a.to_string()),
            linked_ever: (0..members.len())
                .filter(|&i| i != self.config.index && self.state.ever_up(i))
                .collect(),
            config_version: status::config_version(&self.kv),
            cluster_keys: self
                .config
                .cluster_keys
                .as_ref()
                .map(|k| k.get().ids().iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            successor_rtt_ms: timing
                .and_then(|(rtt, _)| rtt)
                .map(|d| d.as_secs_f64() * 1e3),
            failure_timeout_ms: timing.map(|(_, t)| t.as_secs_f64() * 1e3),
        }
    }
}

/// Of `event` (a particle arrival) and the arrivals queued in `events`,
/// returns the one with the highest particle id, putting `event` back at
/// the front of the queue if another was newer.
fn newest_particle_first(event: Event, events: &mut VecDeque<Event>) -> Event {
    let id = |e: &Event| match e {
        Event::ParticleArrived { particle, .. } => Some(particle.id()),
        _ => None,
    };
    let Some(first) = id(&event) else {
        return event;
    };
    let newest = events
        .iter()
        .enumerate()
        .filter_map(|(k, e)| id(e).map(|i| (i, k)))
        .max()
        .filter(|&(i, _)| i > first);
    match newest.and_then(|(_, k)| events.remove(k)) {
        Some(newer) => {
            events.push_front(event);
            newer
        }
        None => event,
    }
}

/// Moves the events queued behind particle arrival `event` that are not
/// arrivals ahead of it, keeping their order: `None` when there were any
/// (`event` now waits behind them, the caller pops again), else `event`.
fn controls_first(event: Event, events: &mut VecDeque<Event>) -> Option<Event> {
    let arrival = |e: &Event| matches!(e, Event::ParticleArrived { .. });
    if events.iter().all(arrival) {
        return Some(event);
    }
    let (arrivals, mut controls): (VecDeque<Event>, VecDeque<Event>) =
        events.drain(..).partition(arrival);
    controls.push_back(event);
    controls.extend(arrivals);
    *events = controls;
    None
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::token::Particle;

    fn arrival(generation: u64, from: UpstreamId) -> Event {
        Event::ParticleArrived {
            particle: Particle::new(generation, 0),
            from,
            now: Instant::now(),
        }
    }

    fn generations(events: &VecDeque<Event>) -> Vec<u64> {
        events
            .iter()
            .map(|e| match e {
                Event::ParticleArrived { particle, .. } => particle.generation,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn the_newest_queued_particle_is_visited_first_and_the_older_wait_to_be_dropped() {
        let now = Instant::now();
        let mut events = VecDeque::from([
            arrival(3, 1),
            Event::Tick { now },
            arrival(5, 1),
            arrival(4, 1),
        ]);
        let first = newest_particle_first(arrival(2, 1), &mut events);
        assert!(
            matches!(first, Event::ParticleArrived { ref particle, .. } if particle.generation == 5)
        );
        // The one taken first goes back to the front; the rest keep order.
        assert_eq!(generations(&events), vec![2, 3, 0, 4]);
        // Nothing newer queued: the event itself, the queue untouched.
        let first = newest_particle_first(arrival(9, 1), &mut events);
        assert!(
            matches!(first, Event::ParticleArrived { ref particle, .. } if particle.generation == 9)
        );
        assert_eq!(generations(&events), vec![2, 3, 0, 4]);
        // What is not an arrival goes first; the arrival waits behind it.
        assert!(controls_first(first, &mut events).is_none());
        assert_eq!(generations(&events), vec![0, 9, 2, 3, 4]);
        events.pop_front();
        let first = events.pop_front().expect("the arrival");
        assert!(controls_first(first, &mut events).is_some());
    }
}
