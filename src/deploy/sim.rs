//! `Sim`: a deterministic, seeded simulation of a ring of deploy agents'
//! [`DeployState`]s, with no sockets, no files and no clock. It plays the
//! agents' part (store, fetches, loads, the ring links that carry
//! announcements and the handshake) over a network that loses and delays
//! messages, with nodes that crash (losing everything but their disk) and
//! return, and wall clocks that differ per node. A node asked for a module
//! it is still fetching itself streams it (cut-through): the answer waits
//! until the node holds it, and is cut when the node dies or gives up on
//! it meanwhile; a streamed answer can arrive corrupt (the asker's hash
//! check fails). It checks, as it goes, that no node ever adopts a release
//! older than the one it had.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::decide::{Action, DeployState, Event, FetchError, Fetched, Trust};
use crate::model::{Conflict, Hash, OrderKey, Payload, Release};

/// The wall clock (unix ms) at the simulation's start.
const EPOCH_MS: u64 = 1_700_000_000_000;
/// The agent's recheck period.
const TICK: Duration = Duration::from_secs(1);
/// How long a fetch from a node that does not answer takes to fail.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a streaming server looks again at its own fetch.
const STREAM_STEP: Duration = Duration::from_millis(5);

/// What a node keeps on disk: it survives a crash.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// Per name, the current release.
    pub current: BTreeMap<String, Release>,
    /// Per name, the releases before it, oldest first.
    pub history: BTreeMap<String, Vec<Release>>,
    /// Modules kept.
    pub modules: BTreeSet<Hash>,
}

/// One simulated node.
pub struct SimNode {
    /// Running (not crashed).
    pub up: bool,
    /// Bumped by each crash: messages to an earlier life are lost.
    life: u64,
    state: DeployState,
    trust: Trust,
    /// Its store.
    pub disk: Disk,
    /// The module running per name.
    pub running: BTreeMap<String, Hash>,
    /// How far its wall clock is ahead of the simulation's (ms; negative:
    /// behind).
    pub skew_ms: i64,
    /// The successor it is linked to.
    linked: Option<usize>,
    /// Deploy failures it reported.
    pub failures: Vec<String>,
}

#[derive(Debug)]
enum Delivery {
    /// `from`'s releases reach `to` (announce, hello or welcome).
    Releases {
        to: usize,
        from: usize,
        releases: Vec<Release>,
        coming: Vec<Release>,
    },
    /// A link from `a` to its successor `b` comes up: hello and welcome.
    Handshake { a: usize, b: usize },
    /// `asker` asks `to` for `release`'s module; `since`: when it first
    /// reached `to` while `to` was still fetching it (streaming).
    FetchRequest {
        to: usize,
        asker: usize,
        release: Release,
        since: Option<Duration>,
    },
    /// The answer reaches the asker.
    FetchReply {
        to: usize,
        from: usize,
        release: Release,
        result: Result<Fetched, FetchError>,
    },
    /// A load ends (always well: stations are not what is tested here).
    Loaded { to: usize, release: Release },
}

/// The simulated ring.
pub struct Sim {
    t0: Instant,
    now: Duration,
    rng: StdRng,
    /// The nodes, by ring index.
    pub nodes: Vec<SimNode>,
    /// Pending deliveries by (time, sequence), with the life of the node
    /// they are for.
    queue: BTreeMap<(Duration, u64), (u64, Delivery)>,
    seq: u64,
    last_tick: Duration,
    /// Every module ever made, by hash.
    modules: BTreeMap<Hash, Arc<Vec<u8>>>,
    made: u64,
    /// Probability that a fetch or an announcement is lost (a lost
    /// announcement is a link reset: the handshake repeats later).
    pub drop: f64,
    /// Messages take between 1 ms and this long.
    pub latency: Duration,
    /// Conflicts reported: (node, conflict).
    pub conflicts: Vec<(usize, Conflict)>,
    /// Fetch requests sent: (asker, peer, release).
    pub fetches: Vec<(usize, usize, OrderKey)>,
    /// Fetch requests sent to a peer that did not hold the module yet (it
    /// announced it as on its way): (asker, peer, release).
    pub early_fetches: Vec<(usize, usize, OrderKey)>,
    /// Probability that a streamed answer arrives corrupt.
    pub corrupt: f64,
    /// Streamed answers that arrived corrupt, and streams cut (the source
    /// died or gave up mid-stream).
    pub bad_streams: (usize, usize),
    /// Per link (from, to), when its last announcement arrives.
    link_last: BTreeMap<(usize, usize), Duration>,
    /// Violations seen: a node adopting a release older than its own.
    pub regressions: Vec<String>,
}

impl Sim {
    /// `n` nodes, all up, each running version 0 of the stations `names`
    /// (the same module everywhere), with no skew and no losses.
    pub fn new(n: usize, seed: u64, names: &[&str]) -> Self {
        let mut sim = Self {
            t0: Instant::now(),
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            last_tick: Duration::ZERO,
            modules: BTreeMap::new(),
            made: 0,
            drop: 0.0,
            latency: Duration::from_millis(20),
            conflicts: Vec::new(),
            fetches: Vec::new(),
            early_fetches: Vec::new(),
            corrupt: 0.0,
            bad_streams: (0, 0),
            link_last: BTreeMap::new(),
            regressions: Vec::new(),
        };
        let mut disk = Disk::default();
        for name in names {
            let bytes = sim.module(&format!("{name} as configured"));
            let hash = Hash::of(&bytes);
            disk.modules.insert(hash);
            disk.current
                .insert(name.to_string(), sim.release(name, 0, 0, hash, 0));
        }
        for i in 0..n {
            let trust = Trust {
                keys: Vec::new(),
                local: disk.modules.iter().copied().collect(),
            };
            let state = DeployState::new(i, trust.clone(), [], [], []);
            sim.nodes.push(SimNode {
                up: false,
                life: 0,
                state,
                trust,
                disk: disk.clone(),
                running: BTreeMap::new(),
                skew_ms: 0,
                linked: None,
                failures: Vec::new(),
            });
            sim.start(i);
        }
        sim.relink();
        sim
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Node `i`'s wall clock, unix ms.
    pub fn clock_ms(&self, i: usize) -> u64 {
        (EPOCH_MS + self.now.as_millis() as u64).saturating_add_signed(self.nodes[i].skew_ms)
    }

    /// Node `i` crashes: everything but its disk is lost.
    pub fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.up = false;
        node.life += 1;
        node.linked = None;
        node.running.clear();
        self.relink();
    }

    /// Node `i` starts (again) from its disk, running its recorded
    /// releases.
    pub fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.up {
            return;
        }
        node.up = true;
        node.running = node
            .disk
            .current
            .iter()
            .map(|(n, r)| (n.clone(), r.hash))
            .collect();
        node.state = DeployState::new(
            i,
            node.trust.clone(),
            node.disk.current.values().cloned(),
            node.running.clone(),
            [],
        );
        self.relink();
    }

    /// An operator pushes a new module of `name` to node `i`: it is
    /// published there as a release. Returns it, or why it was refused.
    ///
    /// # Errors
    /// The node is down, or refuses to stamp a release.
    pub fn push(&mut self, i: usize, name: &str) -> Result<Release, String> {
        if !self.nodes[i].up {
            return Err(format!("node {i} is down"));
        }
        self.made += 1;
        let bytes = self.module(&format!("{name} build {}", self.made));
        let hash = Hash::of(&bytes);
        let now_ms = self.clock_ms(i);
        let node = &self.nodes[i];
        let history = node.disk.history.get(name).cloned().unwrap_or_default();
        let (version, published_ms) = node
            .state
            .next_stamp(name, &history, now_ms)
            .map_err(|e| format!("{e:#}"))?;
        let release = self.release(name, version, i as u32, hash, published_ms);
        self.record(i, &release);
        self.nodes[i].running.insert(name.to_string(), hash);
        let running = Event::Running {
            name: name.to_string(),
            hash,
        };
        self.feed(i, running);
        self.feed(
            i,
            Event::Published {
                release: release.clone(),
            },
        );
        Ok(release)
    }

    /// Runs the simulation for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_tick = self.last_tick + TICK;
            let next = self.queue.keys().next().map(|k| k.0);
            let t = next.map_or(next_tick, |n| n.min(next_tick));
            if t > end {
                self.now = end;
                return;
            }
            self.now = t;
            if t == next_tick {
                self.last_tick = t;
                for i in 0..self.nodes.len() {
                    if self.nodes[i].up {
                        let tick = Event::Tick {
                            now: self.t0 + self.now,
                            now_ms: self.clock_ms(i),
                        };
                        self.feed(i, tick);
                    }
                }
            }
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (life, delivery) = entry.remove();
                self.deliver(life, delivery);
            }
        }
    }

    /// The releases of version >= 1 every live node records as current,
    /// when they all agree, every live node runs them and nothing is being
    /// fetched; else what differs.
    ///
    /// # Errors
    /// One line naming the first node that differs.
    pub fn converged(&self) -> Result<BTreeMap<String, Release>, String> {
        let mut agreed: Option<(usize, BTreeMap<String, Release>)> = None;
        for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.up) {
            let current: BTreeMap<String, Release> = node
                .disk
                .current
                .iter()
                .filter(|(_, r)| r.version > 0)
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
            for (name, r) in &current {
                if node.running.get(name) != Some(&r.hash) {
                    return Err(format!(
                        "node {i} records {} but does not run it",
                        r.label()
                    ));
                }
                if let Some(p) = node.state.pending(name) {
                    return Err(format!("node {i} still fetches {}", p.label()));
                }
            }
            match &agreed {
                None => agreed = Some((i, current)),
                Some((j, a)) if *a != current => {
                    let show = |m: &BTreeMap<String, Release>| {
                        m.values()
                            .map(Release::label)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    return Err(format!(
                        "node {i} has [{}], node {j} has [{}]",
                        show(&current),
                        show(a)
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(agreed.map(|a| a.1).unwrap_or_default())
    }

    fn module(&mut self, content: &str) -> Arc<Vec<u8>> {
        let bytes = Arc::new(content.as_bytes().to_vec());
        self.modules.insert(Hash::of(&bytes), Arc::clone(&bytes));
        bytes
    }

    fn release(&self, name: &str, version: u64, origin: u32, hash: Hash, ms: u64) -> Release {
        Release {
            name: name.to_string(),
            version,
            origin,
            hash,
            size: self.modules.get(&hash).map_or(0, |m| m.len() as u64),
            config: Vec::new(),
            signer: None,
            signature: None,
            published_ms: ms,
        }
    }

    /// The first live member after `i` in ring order (`i` itself when it
    /// is alone).
    fn successor(&self, i: usize) -> usize {
        let n = self.nodes.len();
        (1..n)
            .map(|k| (i + k) % n)
            .find(|j| self.nodes[*j].up)
            .unwrap_or(i)
    }

    /// Links every live node to its successor, if it is not already.
    fn relink(&mut self) {
        for a in 0..self.nodes.len() {
            if !self.nodes[a].up {
                continue;
            }
            let b = self.successor(a);
            if self.nodes[a].linked != Some(b) {
                self.nodes[a].linked = Some(b);
                let life = self.nodes[b].life;
                self.send(life, Delivery::Handshake { a, b });
            }
        }
    }

    fn send(&mut self, life: u64, delivery: Delivery) {
        let max = self.latency.as_millis().max(1) as u64;
        let delay = Duration::from_millis(self.rng.random_range(1..=max));
        self.send_after(delay, life, delivery);
    }

    fn send_after(&mut self, delay: Duration, life: u64, delivery: Delivery) {
        self.seq += 1;
        self.queue
            .insert((self.now + delay, self.seq), (life, delivery));
    }

    fn deliver(&mut self, life: u64, delivery: Delivery) {
        let to = match &delivery {
            Delivery::Releases { to, .. }
            | Delivery::FetchReply { to, .. }
            | Delivery::Loaded { to, .. }
            | Delivery::Handshake { b: to, .. }
            | Delivery::FetchRequest { to, .. } => *to,
        };
        let request = matches!(delivery, Delivery::FetchRequest { .. });
        if !request && (!self.nodes[to].up || self.nodes[to].life != life) {
            return; // for a life that ended
        }
        match delivery {
            Delivery::Releases {
                to,
                from,
                releases,
                coming,
            } => {
                let event = Event::PeerReleases {
                    peer: from,
                    releases,
                    coming,
                    now: self.t0 + self.now,
                    now_ms: self.clock_ms(to),
                };
                self.feed(to, event);
            }
            Delivery::Handshake { a, b } => {
                if !self.nodes[a].up || self.nodes[a].linked != Some(b) || a == b {
                    return;
                }
                for (to, from) in [(b, a), (a, b)] {
                    let event = Event::PeerReleases {
                        peer: from,
                        releases: self.nodes[from].state.releases(),
                        coming: Vec::new(),
                        now: self.t0 + self.now,
                        now_ms: self.clock_ms(to),
                    };
                    self.feed(to, event);
                }
            }
            Delivery::FetchRequest {
                to,
                asker,
                release,
                since,
            } => {
                let asker_life = life;
                let reply = |result| Delivery::FetchReply {
                    to: asker,
                    from: to,
                    release: release.clone(),
                    result,
                };
                let cut = |why: &str| FetchError {
                    missing: false,
                    message: format!("stream from node {to} {why}"),
                };
                let fetching = self.nodes[to].up
                    && !self.nodes[to].disk.modules.contains(&release.hash)
                    && self.nodes[to].state.pending(&release.name) == Some(&release);
                if since.is_some() && !self.nodes[to].up {
                    // The source died mid-stream: the connection drops.
                    self.bad_streams.1 += 1;
                    self.send(asker_life, reply(Err(cut("cut: source gone"))));
                } else if fetching {
                    // Cut-through: streamed as it arrives there.
                    let since = since.unwrap_or(self.now);
                    if self.now - since > FETCH_TIMEOUT {
                        self.send(asker_life, reply(Err(cut("stalled"))));
                    } else {
                        let again = Delivery::FetchRequest {
                            to,
                            asker,
                            release: release.clone(),
                            since: Some(since),
                        };
                        self.send_after(STREAM_STEP, life, again);
                    }
                } else if since.is_some() && !self.nodes[to].disk.modules.contains(&release.hash) {
                    // The source gave up on it mid-stream.
                    self.bad_streams.1 += 1;
                    self.send(asker_life, reply(Err(cut("cut: source gave up"))));
                } else if since.is_some() && self.rng.random_bool(self.corrupt) {
                    self.bad_streams.0 += 1;
                    self.send(
                        asker_life,
                        reply(Err(cut("does not match the release hash"))),
                    );
                } else if !self.nodes[to].up {
                    let e = FetchError {
                        missing: false,
                        message: format!("no answer from node {to}"),
                    };
                    self.send_after(FETCH_TIMEOUT, asker_life, reply(Err(e)));
                } else if self.nodes[to].disk.modules.contains(&release.hash) {
                    let bytes = Arc::clone(&self.modules[&release.hash]);
                    let fetched = Fetched {
                        wire_bytes: bytes.len(),
                        bytes,
                        payload: Payload::Full,
                    };
                    self.send(asker_life, reply(Ok(fetched)));
                } else {
                    let e = FetchError {
                        missing: true,
                        message: format!("{} is not kept at node {to}", release.label()),
                    };
                    self.send(asker_life, reply(Err(e)));
                }
            }
            Delivery::FetchReply {
                to,
                from,
                release,
                result,
            } => {
                let now = self.t0 + self.now;
                let event = Event::Fetched {
                    release,
                    from,
                    result,
                    now,
                };
                self.feed(to, event);
            }
            Delivery::Loaded { to, release } => {
                let event = Event::Loaded {
                    release,
                    result: Ok(()),
                };
                self.feed(to, event);
            }
        }
    }

    /// Feeds node `i` one event and carries out its actions, with the
    /// events they lead to at once.
    fn feed(&mut self, i: usize, event: Event) {
        let mut events = vec![event];
        while !events.is_empty() {
            let event = events.remove(0);
            let mut actions = Vec::new();
            self.nodes[i].state.handle(event, &mut actions);
            for action in actions {
                self.execute(i, action, &mut events);
            }
        }
    }

    fn execute(&mut self, i: usize, action: Action, events: &mut Vec<Event>) {
        let now = self.t0 + self.now;
        let life = self.nodes[i].life;
        match action {
            Action::Fetch { release, peer, .. } => {
                if self.nodes[i].disk.modules.contains(&release.hash) {
                    let bytes = Arc::clone(&self.modules[&release.hash]);
                    let fetched = Fetched {
                        bytes,
                        payload: Payload::Full,
                        wire_bytes: 0,
                    };
                    events.push(Event::Fetched {
                        release,
                        from: peer,
                        result: Ok(fetched),
                        now,
                    });
                    return;
                }
                self.fetches.push((i, peer, release.key()));
                if self.rng.random_bool(self.drop) {
                    let e = FetchError {
                        missing: false,
                        message: format!("connection to node {peer} reset"),
                    };
                    let reply = Delivery::FetchReply {
                        to: i,
                        from: peer,
                        release,
                        result: Err(e),
                    };
                    self.send(life, reply);
                } else {
                    if !self.nodes[peer].disk.modules.contains(&release.hash) {
                        self.early_fetches.push((i, peer, release.key()));
                    }
                    let request = Delivery::FetchRequest {
                        to: peer,
                        asker: i,
                        release,
                        since: None,
                    };
                    self.send(life, request);
                }
            }
            Action::Record { release, .. } => {
                self.record(i, &release);
                events.push(Event::Recorded {
                    release,
                    result: Ok(()),
                    now,
                });
            }
            Action::Keep { release, .. } => {
                self.nodes[i].disk.modules.insert(release.hash);
                events.push(Event::Kept { release });
            }
            Action::Load(release) => self.send(life, Delivery::Loaded { to: i, release }),
            Action::Swap(release) => {
                self.nodes[i]
                    .running
                    .insert(release.name.clone(), release.hash);
                events.push(Event::Running {
                    name: release.name,
                    hash: release.hash,
                });
            }
            Action::Announce(announce) => {
                let Some(to) = self.nodes[i].linked.filter(|to| *to != i) else {
                    return;
                };
                let to_life = self.nodes[to].life;
                if self.rng.random_bool(self.drop) {
                    // The link breaks: the announcement is lost and the
                    // handshake repeats once it is dialed again.
                    let delay = Duration::from_millis(self.rng.random_range(50..500));
                    self.send_after(delay, to_life, Delivery::Handshake { a: i, b: to });
                } else {
                    let delivery = Delivery::Releases {
                        to,
                        from: i,
                        releases: announce.held,
                        coming: announce.coming,
                    };
                    // A link is one TCP stream: its announcements arrive
                    // in the order they were sent.
                    let max = self.latency.as_millis().max(1) as u64;
                    let delay = Duration::from_millis(self.rng.random_range(1..=max));
                    let last = self.link_last.get(&(i, to)).copied().unwrap_or_default();
                    let at = (self.now + delay).max(last + Duration::from_micros(1));
                    self.link_last.insert((i, to), at);
                    self.send_after(at - self.now, to_life, delivery);
                }
            }
            Action::Fail { reason, .. } => self.nodes[i].failures.push(reason),
            Action::Conflict(c) => self.conflicts.push((i, c)),
        }
    }

    /// Node `i`'s store makes `release` current (checking it is not older
    /// than what it replaces).
    fn record(&mut self, i: usize, release: &Release) {
        let disk = &mut self.nodes[i].disk;
        disk.modules.insert(release.hash);
        if let Some(old) = disk.current.get(&release.name) {
            if release.key() < old.key() {
                self.regressions.push(format!(
                    "at {:?} node {i} adopted {} (published {}) after {} (published {})",
                    self.now,
                    release.label(),
                    release.published_ms,
                    old.label(),
                    old.published_ms
                ));
            }
            if old.key() != release.key() {
                let old = old.clone();
                disk.history
                    .entry(release.name.clone())
                    .or_default()
                    .push(old);
            }
        }
        disk.current.insert(release.name.clone(), release.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Runs `sim` until it converges (checked every simulated second) or
    /// `limit` passes.
    fn settle(sim: &mut Sim, limit: Duration) -> Result<BTreeMap<String, Release>, String> {
        let end = sim.now() + limit;
        loop {
            sim.run_for(SECOND);
            match sim.converged() {
                Ok(c) => return Ok(c),
                Err(e) if sim.now() >= end => return Err(format!("not converged: {e}")),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn concurrent_releases_resolve_to_the_newer_publish_everywhere_with_a_conflict_reported() {
        let mut sim = Sim::new(5, 1, &["m"]);
        sim.run_for(SECOND);
        // Node 0's clock is 2 s ahead: its v1 is the newer publish. Node 2
        // publishes v1 and v2 at the same moment, before either hears of
        // the other: its v2 has the higher version but the older publish.
        sim.nodes[0].skew_ms = 2_000;
        let newer = sim.push(0, "m").expect("push at node 0");
        sim.push(2, "m").expect("first push at node 2");
        let stale = sim.push(2, "m").expect("second push at node 2");
        assert_eq!((newer.version, stale.version), (1, 2));
        let end = settle(&mut sim, Duration::from_secs(30)).expect("converges");
        assert_eq!(end["m"], newer, "the newer publish wins everywhere");
        assert!(
            sim.conflicts
                .iter()
                .any(|(_, c)| c.kept.as_ref() == Some(&newer) && c.stale == stale),
            "the conflict is reported: {:?}",
            sim.conflicts
        );
        assert_eq!(sim.regressions, Vec::<String>::new());
    }

    #[test]
    fn a_node_returning_mid_deploy_with_an_older_record_catches_up_and_does_not_roll_back() {
        let mut sim = Sim::new(5, 2, &["m"]);
        sim.push(0, "m").expect("push v1");
        settle(&mut sim, Duration::from_secs(10)).expect("v1 everywhere");
        // Node 3 goes away while v2 travels, and v3 is pushed meanwhile.
        sim.push(0, "m").expect("push v2");
        sim.run_for(Duration::from_millis(15));
        sim.crash(3);
        sim.run_for(5 * SECOND);
        let v3 = sim.push(1, "m").expect("push v3");
        sim.run_for(5 * SECOND);
        assert_eq!(sim.nodes[3].disk.current["m"].version, 1, "node 3 was away");
        sim.start(3);
        let end = settle(&mut sim, Duration::from_secs(30)).expect("converges");
        assert_eq!(end["m"], v3, "the returning node catches up");
        assert_eq!(sim.regressions, Vec::<String>::new());
        assert!(sim.conflicts.is_empty(), "{:?}", sim.conflicts);
    }

    #[test]
    fn a_lossy_network_still_brings_the_release_to_every_node() {
        let mut sim = Sim::new(4, 3, &["m"]);
        sim.drop = 0.5;
        let v1 = sim.push(0, "m").expect("push");
        sim.run_for(Duration::from_secs(20));
        sim.drop = 0.0;
        let end = settle(&mut sim, Duration::from_secs(120)).expect("converges");
        assert_eq!(end["m"], v1);
    }

    #[test]
    fn a_release_is_relayed_ahead_of_its_module_and_streamed_hop_to_hop() {
        let mut sim = Sim::new(8, 4, &["m"]);
        sim.latency = Duration::from_millis(1);
        sim.run_for(SECOND);
        let v1 = sim.push(0, "m").expect("push");
        let end = settle(&mut sim, Duration::from_secs(10)).expect("converges");
        assert_eq!(end["m"], v1);
        // Every node after node 1 asked its predecessor before that one
        // held the module: it had heard the release was on its way.
        for i in 2..8 {
            assert!(
                sim.early_fetches.contains(&(i, i - 1, v1.key())),
                "node {i} did not ask early: {:?}",
                sim.early_fetches
            );
        }
        assert_eq!(sim.regressions, Vec::<String>::new());
    }

    #[test]
    fn a_source_dying_mid_stream_is_replaced_by_the_publisher() {
        let mut sim = Sim::new(6, 5, &["m"]);
        sim.latency = Duration::from_millis(1);
        sim.run_for(SECOND);
        let v1 = sim.push(0, "m").expect("push");
        // Run until node 3 streams from node 2, which does not hold it yet.
        while !sim.early_fetches.iter().any(|f| f.0 == 3 && f.1 == 2) {
            assert!(sim.now() < 5 * SECOND, "node 3 never streamed from node 2");
            sim.run_for(Duration::from_millis(1));
        }
        assert!(!sim.nodes[2].disk.modules.contains(&v1.hash));
        sim.crash(2);
        let end = settle(&mut sim, Duration::from_secs(30)).expect("the others converge");
        assert_eq!(end["m"], v1);
        assert!(
            sim.fetches.contains(&(3, 0, v1.key())),
            "node 3 fell back to the publisher: {:?}",
            sim.fetches
        );
        // Node 2 returns and catches up.
        sim.start(2);
        let end = settle(&mut sim, Duration::from_secs(30)).expect("converges");
        assert_eq!(end["m"], v1);
        assert_eq!(sim.nodes[2].disk.current["m"], v1);
        assert_eq!(sim.regressions, Vec::<String>::new());
    }

    #[test]
    fn corrupt_streams_are_discarded_and_fetched_again() {
        let mut sim = Sim::new(6, 6, &["m"]);
        sim.corrupt = 0.5;
        sim.run_for(SECOND);
        let v1 = sim.push(0, "m").expect("push");
        sim.run_for(Duration::from_secs(5));
        sim.corrupt = 0.0;
        let end = settle(&mut sim, Duration::from_secs(120)).expect("converges");
        assert_eq!(end["m"], v1);
        assert!(sim.bad_streams.0 >= 1, "no stream arrived corrupt");
        assert_eq!(sim.regressions, Vec::<String>::new());
    }

    /// One random schedule: pushes, crashes and returns over a lossy,
    /// delaying network with skewed clocks, then a quiet period.
    fn random_schedule(seed: u64) -> Result<(), String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(5..=11);
        let names = ["a", "b"];
        let mut sim = Sim::new(n, seed, &names);
        sim.drop = rng.random_range(0.0..0.3);
        sim.corrupt = rng.random_range(0.0..0.2);
        sim.latency = Duration::from_millis(rng.random_range(1..200));
        for node in &mut sim.nodes {
            node.skew_ms = rng.random_range(-5_000..5_000);
        }
        for _ in 0..rng.random_range(5..40) {
            let i = rng.random_range(0..n);
            match rng.random_range(0..10) {
                0..6 => {
                    let name = names[rng.random_range(0..names.len())];
                    let _ = sim.push(i, name);
                }
                6..8 if sim.nodes.iter().filter(|n| n.up).count() > 2 => sim.crash(i),
                _ => sim.start(i),
            }
            sim.run_for(Duration::from_millis(rng.random_range(0..3_000)));
        }
        sim.drop = 0.0;
        sim.corrupt = 0.0;
        // Long enough for the longest retry wait (60 s) and a fetch timeout.
        settle(&mut sim, Duration::from_secs(200))?;
        if let Some(r) = sim.regressions.first() {
            return Err(r.clone());
        }
        Ok(())
    }

    #[test]
    fn random_schedules_converge_to_one_release_per_station_and_never_go_back() {
        for seed in 0..300 {
            let outcome = std::panic::catch_unwind(|| random_schedule(seed));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("seed {seed}: {e}"),
                Err(_) => panic!("seed {seed} panicked"),
            }
        }
    }
}
