//! `ringhost status`: what a node reports about itself and the ring, the
//! client that asks for it, and the small sample buffers behind its
//! latency figures.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

use crate::wire::{Frame, FrameReader, FrameWriter};

/// A node's answer to a status request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Who answered.
    pub node: NodeRef,
    /// Members in the enumeration.
    pub ring_size: usize,
    /// Hex sha-256 of the enumeration.
    pub ring_hash: String,
    /// Every member and whether this node's view holds it live.
    pub members: Vec<MemberStatus>,
    /// The member this node sends the particle to.
    pub successor: Option<usize>,
    /// Whether that link is up.
    pub successor_up: bool,
    /// Members this node skips (declared dead) and probes.
    pub skipped: Vec<usize>,
    /// The particle as this node knows it.
    pub particle: ParticleStatus,
    /// Stops made at this node.
    pub visits: u64,
    /// Successors this node declared dead since it started.
    pub member_downs: u64,
    /// Lap times measured here.
    pub lap_ms: Summary,
    /// The particle's stay at this node: from its arrival to its departure
    /// (stations and hold; the link to the successor is not in it, so at
    /// `--delay-ms 0` it is microseconds while the lap is the sum of every
    /// stay and every link). Read by older tools as `hop_ms`.
    #[serde(alias = "hop_ms")]
    pub stay_ms: Summary,
    /// The station pipeline.
    pub stations: Vec<StationStatus>,
    /// Seconds since the node started.
    pub uptime_s: f64,
    /// Releases and what runs (see `deploy`).
    #[serde(default)]
    pub deploy: crate::deploy::agent::DeployView,
    /// The bound address of the node's admin HTTP API (`None`: off).
    /// Missing in reports of nodes older than the admin API.
    #[serde(default)]
    pub admin: Option<String>,
    /// Highest replicated config entry version applied here (0: none).
    #[serde(default)]
    pub config_version: u64,
    /// Members this node has known up since it started (a link to one came
    /// up, or a particle back from a full lap marked it live): tells a dead
    /// member from one not started yet.
    #[serde(default)]
    pub linked_ever: Vec<usize>,
    /// The ids of the cluster keys this node holds, the one it dials with
    /// first (empty: plain, unauthenticated links; see `crate::secure`).
    #[serde(default)]
    pub cluster_keys: Vec<String>,
    /// Smoothed round trip to the successor in ms (ping to pong, RFC 6298
    /// smoothing; `None` before the first pong or with no link up).
    #[serde(default)]
    pub successor_rtt_ms: Option<f64>,
    /// The successor link's failure timeout in ms: `--failure-timeout-ms`,
    /// or longer when the link's round trips need it (`ring::rtt`).
    #[serde(default)]
    pub failure_timeout_ms: Option<f64>,
}

/// The config version the node has applied, as the config station keeps
/// it in its kv namespace (0 when it does not run or has applied nothing).
pub fn config_version(kv: &crate::station::KvStore) -> u64 {
    kv.get(crate::deploy::CONFIG_STATION, "version")
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A node's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRef {
    /// Index in the enumeration.
    pub index: usize,
    /// Name in the enumeration.
    pub name: String,
    /// Bound ring address.
    pub addr: String,
    /// The node's process id.
    #[serde(default)]
    pub pid: u32,
}

/// One member as seen by the reporting node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Index.
    pub index: usize,
    /// Name.
    pub name: String,
    /// Address.
    pub addr: String,
    /// Live in the reporting node's view.
    pub live: bool,
}

/// The particle as the reporting node knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParticleStatus {
    /// Highest generation seen.
    pub generation: Option<u64>,
    /// Origin of that particle.
    pub origin: Option<u32>,
    /// Whether the particle is at this node now.
    pub here: bool,
}

/// A station's health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StationStatus {
    /// Name.
    pub name: String,
    /// Failed calls since load.
    pub faults: u64,
    /// The release version the running instance is (`None`: not a
    /// release, or a node older than this field): what `faults` are of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Percentiles of a sample buffer, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Samples behind the figures (the most recent ones).
    pub samples: usize,
    /// The latest sample.
    pub last: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// The most recent [`Samples::CAPACITY`] durations.
#[derive(Debug, Default)]
pub struct Samples {
    buf: VecDeque<Duration>,
}

impl Samples {
    /// How many samples are kept.
    pub const CAPACITY: usize = 1024;

    /// Adds a sample, forgetting the oldest beyond capacity.
    pub fn push(&mut self, d: Duration) {
        if self.buf.len() == Self::CAPACITY {
            self.buf.pop_front();
        }
        self.buf.push_back(d);
    }

    /// Percentiles in milliseconds.
    pub fn summary_ms(&self) -> Summary {
        let mut v: Vec<Duration> = self.buf.iter().copied().collect();
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pick =
            |q: f64| (!v.is_empty()).then(|| ms(v[((v.len() - 1) as f64 * q).round() as usize]));
        Summary {
            samples: v.len(),
            last: self.buf.back().copied().map(ms),
            p50: pick(0.5),
            p99: pick(0.99),
        }
    }
}

/// Asks the node at `addr` for its status over its ring port, with the
/// cluster keys when the ring has them (see `crate::secure`).
///
/// # Errors
/// When the node cannot be reached, fails authentication, or answers
/// something else.
pub async fn query(
    addr: &str,
    keys: Option<&crate::secure::ClusterKeys>,
    within: Duration,
) -> Result<Report> {
    let ask = async {
        let (r, w) = crate::secure::connect(addr, keys).await?;
        let mut reader = FrameReader::new(r, 16 << 20);
        let mut writer = FrameWriter::new(w, 16 << 20);
        writer.write_frame(&Frame::StatusRequest).await?;
        let answer = reader
            .read_frame()
            .await
            .map_err(|e| e.in_answer_of(addr))?;
        match answer {
            Some(Frame::Status(json)) => {
                serde_json::from_str(&json).context("parsing the status report")
            }
            Some(Frame::Refuse(r)) => bail!("{addr} refused: {}", r.reason),
            Some(other) => bail!("{addr} answered with a {} frame", other.kind_name()),
            None => bail!(
                "{addr} closed the connection without answering: is it a ringhost node's ring \
                 port? (a ring with a cluster key answers only members: give the tool \
                 --cluster-key-file, or ask the admin API)"
            ),
        }
    };
    timeout(within, ask).await.with_context(|| {
        format!("{addr} did not answer a status request within {within:?}: is it a ringhost node's ring port?")
    })?
}

/// The first `n` characters of `s` (a hash or a name a node sent, shown
/// short): never splits a character, whatever bytes the node put there.
pub fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(at, _)| &s[..at])
}

/// The report for a person.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let _ = writeln!(
        s,
        "node {} ({}) at {}, pid {}, up {:.1} s; ring of {} (hash {})",
        r.node.index,
        r.node.name,
        r.node.addr,
        r.node.pid,
        r.uptime_s,
        r.ring_size,
        prefix(&r.ring_hash, 12)
    );
    let _ = match r.cluster_keys.split_first() {
        None => writeln!(s, "ring links: plain (no cluster key)"),
        Some((first, [])) => {
            writeln!(
                s,
                "ring links: sealed with cluster key {}",
                prefix(first, 16)
            )
        }
        Some((first, rest)) => writeln!(
            s,
            "ring links: sealed with cluster key {} (also accepting {})",
            prefix(first, 16),
            rest.iter()
                .map(|k| prefix(k, 16))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let _ = writeln!(
        s,
        "admin API: {}; config version {}",
        r.admin.as_deref().unwrap_or("off"),
        r.config_version
    );
    let _ = writeln!(
        s,
        "particle: generation {} from node {}{}; visits here {}",
        r.particle.generation.map_or("-".into(), |g| g.to_string()),
        r.particle.origin.map_or("-".into(), |o| o.to_string()),
        if r.particle.here { ", here now" } else { "" },
        r.visits
    );
    let _ = writeln!(
        s,
        "successor: {} ({}{}); skipped: {:?}; successors declared dead: {}",
        r.successor.map_or("-".into(), |x| x.to_string()),
        if r.successor_up { "up" } else { "down" },
        match (r.successor_rtt_ms, r.failure_timeout_ms) {
            (Some(rtt), Some(t)) => format!(", round trip {rtt:.3} ms, failure timeout {t:.0} ms"),
            (None, Some(t)) => format!(", failure timeout {t:.0} ms"),
            _ => String::new(),
        },
        r.skipped,
        r.member_downs
    );
    let _ = writeln!(
        s,
        "lap ms: last {} p50 {} p99 {} ({} samples); stay here ms: p50 {} p99 {}",
        f(r.lap_ms.last),
        f(r.lap_ms.p50),
        f(r.lap_ms.p99),
        r.lap_ms.samples,
        f(r.stay_ms.p50),
        f(r.stay_ms.p99)
    );
    let _ = writeln!(s, "members:");
    for m in &r.members {
        let _ = writeln!(
            s,
            "  {:>3} {:<24} {:<22} {}",
            m.index,
            m.name,
            m.addr,
            if m.live {
                "live"
            } else if m.index == r.node.index || r.linked_ever.contains(&m.index) {
                "DEAD"
            } else {
                "not started yet"
            }
        );
    }
    for st in &r.stations {
        let d = r.deploy.stations.iter().find(|d| d.name == st.name);
        let version = d.map_or(String::new(), |d| {
            let mut v = format!(" v{} ({})", d.version, d.hash.short());
            // Another release of the same module (another config) is
            // another thing running, too.
            if d.running_release() != Some(d.version) || d.running != d.hash {
                v += &format!(", running {}", d.running_label());
            }
            v
        });
        let _ = writeln!(s, "station {}{version}: {} faults", st.name, st.faults);
        for note in d.iter().flat_map(|d| d.error.iter().chain(&d.rolled_back)) {
            let _ = writeln!(s, "  {note}");
        }
    }
    let d = &r.deploy;
    for c in &d.conflicts {
        let _ = writeln!(s, "CONFLICT {}", c.message());
    }
    if d.fetched_full + d.fetched_delta > 0 {
        let _ = writeln!(
            s,
            "fetched modules: {} whole, {} as deltas, {} bytes",
            d.fetched_full, d.fetched_delta, d.fetched_bytes
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_the_latest_and_give_percentiles() {
        let mut s = Samples::default();
        assert_eq!(s.summary_ms().p50, None);
        for i in 1..=2000u64 {
            s.push(Duration::from_millis(i));
        }
        let sum = s.summary_ms();
        assert_eq!(sum.samples, Samples::CAPACITY);
        assert_eq!(sum.last, Some(2000.0));
        let p50 = sum.p50.unwrap();
        assert!((1480.0..=1490.0).contains(&p50), "{p50}");
    }
}
