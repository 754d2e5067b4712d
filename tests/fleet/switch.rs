//! A userspace Ethernet switch that delays frames: the harness's stand-in
//! for `tc netem`, which this kernel lacks.
//!
//! Every host's `eth0` is one end of a veth pair whose other end (`p{i}`)
//! lives in the switch's namespace. A thread in that namespace reads whole
//! frames from every port (`AF_PACKET`), and sends each to the port that
//! owns its destination MAC (broadcasts to all others) once its delay has
//! passed: the profile's mean ± a uniform jitter, local or remote by the
//! two hosts' datacentres. Frames between one pair keep their order. So
//! every packet — SYNs, data, ACKs, ARP — crosses a real delay, and the
//! hosts' TCP stacks measure real round trips and retransmit for real.
//!
//! Loss and bandwidth are not done here: nftables and `tbf` in the hosts
//! (see `Fleet`). What the switch adds by itself with no delay configured
//! is measured by the `fleet` bench (`relay` row).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::netns::Netns;
use super::packet;
use super::profile::Delay;

/// One port of the switch.
#[derive(Debug, Clone)]
pub struct Port {
    /// The interface in the switch's namespace (`p3`).
    pub ifname: String,
    /// The MAC address of the host behind it: frames from another source
    /// are not taken from this port (they are the switch's own sends).
    pub mac: [u8; 6],
    /// The host's datacentre.
    pub dc: usize,
}

/// Counters of the switch.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames delivered to a port.
    pub forwarded: AtomicU64,
    /// Frames the kernel refused to take on a port (its queue was full).
    pub dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Delays {
    local: Delay,
    remote: Delay,
}

/// The running switch; stopped and joined on drop.
pub struct Switch {
    stop: Arc<AtomicBool>,
    delays: Arc<Mutex<Delays>>,
    /// Its counters.
    pub stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl Switch {
    /// Starts the switch thread in `ns` over `ports` (their interfaces
    /// must exist there and be up). `seed` seeds the jitter.
    ///
    /// # Errors
    /// When a port's packet socket cannot be opened.
    pub fn start(
        ns: &Netns,
        ports: Vec<Port>,
        local: Delay,
        remote: Delay,
        seed: u64,
    ) -> Result<Switch> {
        let stop = Arc::new(AtomicBool::new(false));
        let delays = Arc::new(Mutex::new(Delays { local, remote }));
        let stats = Arc::new(Stats::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let ns_name = ns.name().to_owned();
        let thread = {
            let (stop, delays, stats) = (stop.clone(), delays.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("switch {ns_name}"))
                .spawn(move || {
                    let fds = open_ports(&ns_name, &ports);
                    let fds = match fds {
                        Ok(fds) => {
                            let _ = ready_tx.send(Ok(()));
                            fds
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    run(&ports, &fds, &stop, &delays, &stats, seed);
                })?
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the switch thread did not start")??;
        Ok(Switch {
            stop,
            delays,
            stats,
            thread: Some(thread),
        })
    }

    /// Changes the delays from now on.
    pub fn set_delays(&self, local: Delay, remote: Delay) {
        *self.delays.lock().expect("delays") = Delays { local, remote };
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_ports(ns_name: &str, ports: &[Port]) -> Result<Vec<OwnedFd>> {
    let f = std::fs::File::open(format!("/run/netns/{ns_name}"))
        .with_context(|| format!("opening namespace {ns_name}"))?;
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .with_context(|| format!("entering namespace {ns_name}"))?;
    // The network must not stall when the hosts' processes (11 nodes,
    // Corosync at real-time priority, CPU hogs) load this machine's
    // cores: a real fleet's switches do not share its CPUs.
    let _ = packet::realtime();
    // Wake-ups at the delay asked, not 50 µs later.
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
    ports
        .iter()
        .map(|p| {
            let fd = packet::open(&p.ifname)?;
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 4 << 20);
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(&fd, 4 << 20);
            Ok(fd)
        })
        .collect()
}

/// A frame waiting for its departure time.
struct Due {
    at: Instant,
    seq: u64,
    port: usize,
    frame: Arc<[u8]>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

fn run(
    ports: &[Port],
    fds: &[OwnedFd],
    stop: &AtomicBool,
    delays: &Mutex<Delays>,
    stats: &Stats,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let by_mac: HashMap<[u8; 6], usize> =
        ports.iter().enumerate().map(|(i, p)| (p.mac, i)).collect();
    let mut queue: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut last: HashMap<(usize, usize), Instant> = HashMap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = queue.peek().map_or(Duration::from_millis(20), |d| {
            d.0.at
                .saturating_duration_since(now)
                .min(Duration::from_millis(20))
        });
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let mut polls: Vec<rustix::event::PollFd<'_>> = fds
            .iter()
            .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
            .collect();
        let _ = rustix::event::poll(&mut polls, Some(&timeout));
        let readable: Vec<usize> = polls
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.revents().is_empty())
            .map(|(i, _)| i)
            .collect();
        drop(polls);
        let d = *delays.lock().expect("delays");
        for from in readable {
            while let Ok((n, _)) =
                rustix::net::recv(&fds[from], &mut buf, rustix::net::RecvFlags::DONTWAIT)
            {
                if n < 14 || buf[6..12] != ports[from].mac {
                    continue;
                }
                let frame: Arc<[u8]> = Arc::from(&buf[..n]);
                let dst: [u8; 6] = buf[0..6].try_into().expect("6 bytes");
                let targets: Vec<usize> = if dst[0] & 1 == 1 {
                    (0..ports.len()).filter(|&o| o != from).collect()
                } else {
                    by_mac
                        .get(&dst)
                        .copied()
                        .filter(|&o| o != from)
                        .into_iter()
                        .collect()
                };
                let now = Instant::now();
                for to in targets {
                    let delay = if ports[from].dc == ports[to].dc {
                        d.local
                    } else {
                        d.remote
                    };
                    let mut at = now + sample(&mut rng, delay);
                    let prev = last.entry((from, to)).or_insert(at);
                    at = at.max(*prev);
                    *prev = at;
                    seq += 1;
                    queue.push(Reverse(Due {
                        at,
                        seq,
                        port: to,
                        frame: frame.clone(),
                    }));
                }
            }
        }
        let now = Instant::now();
        while queue.peek().is_some_and(|d| d.0.at <= now) {
            let Reverse(due) = queue.pop().expect("peeked");
            match rustix::net::send(&fds[due.port], &due.frame, rustix::net::SendFlags::DONTWAIT) {
                Ok(_) => stats.forwarded.fetch_add(1, Ordering::Relaxed),
                Err(_) => stats.dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// `mean` ± a uniform jitter, never below zero.
fn sample(rng: &mut StdRng, d: Delay) -> Duration {
    if d.jitter.is_zero() {
        return d.mean;
    }
    let j = i64::try_from(d.jitter.as_nanos()).unwrap_or(i64::MAX);
    let mean = i64::try_from(d.mean.as_nanos()).unwrap_or(i64::MAX);
    let ns = (mean + rng.random_range(-j..=j)).max(0);
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}
