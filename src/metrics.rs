//! Prometheus metrics of one node: what `GET /metrics` serves.
//!
//! Names follow the Prometheus conventions: the `ringhost_` prefix, base
//! units (`_seconds`, `_bytes`), `_total` on counters. The text is
//! produced by `prometheus-client` (OpenMetrics text, which Prometheus
//! scrapes as is), and turned into the 0.0.4 text format for scrapers
//! that ask for `text/plain`.
//!
//! The particle's path only touches atomics here: [`Metrics::visit`] and
//! [`Metrics::hop`] bump counters and [`AtomicHistogram`] buckets, with no
//! lock and no allocation; a station's call duration takes a read lock on
//! the station map (held for one bucket increment; the write lock is only
//! taken the first time a station name is seen). Figures the node already
//! keeps elsewhere (deploy fetches, the config version) are copied in at
//! scrape time by the admin server, not on the particle's path.
//!
//! This module does not serve anything; `admin::server` does, in the
//! format the scraper asks for ([`exposition`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

pub mod exposition;

pub use exposition::Format;

/// Upper bounds (seconds) of the lap histogram's buckets.
pub const LAP_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) of the hop and station-call histograms' buckets.
pub const SHORT_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
];

/// A histogram of durations kept in atomics: observing is a few relaxed
/// atomic adds, never a lock or an allocation. Cheap to clone (shared).
#[derive(Clone)]
pub struct AtomicHistogram(Arc<HistogramCells>);

struct HistogramCells {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these bucket upper bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(HistogramCells {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }))
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let c = &self.0;
        let secs = d.as_secs_f64();
        let i = c
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(c.bounds.len());
        c.counts[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        c.sum_ns.fetch_add(ns, Ordering::Relaxed);
        c.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    fn encode_into(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let c = &self.0;
        let buckets: Vec<(f64, u64)> = c
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(c.counts.iter().map(|n| n.load(Ordering::Relaxed)))
            .collect();
        let sum = c.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        // The count is the buckets' total, so the two always agree even
        // while an observation is half recorded.
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

impl fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AtomicHistogram({} observations)", self.count())
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        self.encode_into(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One station's figures.
struct StationFigures {
    calls: AtomicHistogram,
    faults: AtomicU64,
}

/// Per-station figures by name, shared by the two families that show
/// them.
#[derive(Clone, Default)]
struct Stations(Arc<RwLock<BTreeMap<String, StationFigures>>>);

impl Stations {
    fn with(&self, name: &str, f: impl FnOnce(&StationFigures)) {
        {
            let map = self.0.read().expect("station metrics lock");
            if let Some(s) = map.get(name) {
                return f(s);
            }
        }
        let mut map = self.0.write().expect("station metrics lock");
        let s = map
            .entry(name.to_string())
            .or_insert_with(|| StationFigures {
                calls: AtomicHistogram::new(SHORT_BUCKETS),
                faults: AtomicU64::new(0),
            });
        f(s);
    }
}

impl fmt::Debug for Stations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stations")
    }
}

/// The `station`-labelled call duration histograms.
#[derive(Debug, Clone)]
struct StationCalls(Stations);

impl EncodeMetric for StationCalls {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let map = self.0.0.read().expect("station metrics lock");
        for (name, s) in map.iter() {
            let labels = [("station", name.as_str())];
            s.calls.encode_into(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The `station`-labelled fault counters.
#[derive(Debug, Clone)]
struct StationFaults(Stations);

impl EncodeMetric for StationFaults {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let map = self.0.0.read().expect("station metrics lock");
        for (name, s) in map.iter() {
            let labels = [("station", name.as_str())];
            let n = s.faults.load(Ordering::Relaxed);
            encoder
                .encode_family(&labels)?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Labels of an admin request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's pattern (`/v1/stations/{name}/kv/{key}`), or
    /// `unmatched`.
    pub route: String,
    /// The HTTP status code.
    pub code: u16,
}

/// Labels of the refusal counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `ring`, `admin` or `cache`.
    pub port: &'static str,
    /// Which bound or check: `full` (every connection busy), `evicted`
    /// (an idle connection closed to make room), `handshake` (no or a bad
    /// hello in time), `frame` (a malformed, unexpected or over-bound
    /// frame), `refused` (a hello refused: another ring, a duplicate
    /// member), `write` (a write failed or timed out); on the cache port
    /// also `slow_command` (a command not whole in time) and
    /// `line_too_long`.
    pub reason: &'static str,
}

/// Labels of the dropped-input counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `unknown_station`, `inbox_full`, `malformed` or `too_large`.
    pub reason: &'static str,
}

/// Labels of the cache operations counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `get_hit`, `get_miss`, `set`, `delete_hit`, `delete_miss`,
    /// `eviction`, `reclaimed` (an expired item removed), `flush`.
    pub op: &'static str,
}

/// Labels of the published-set metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetLabels {
    /// The station.
    pub station: String,
    /// The set.
    pub set: String,
}

/// Labels of the fetch counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// `whole` or `delta`.
    pub kind: &'static str,
}

/// One node's metrics. Shared (`Arc`) by the owner task, the stations, the
/// deploy agent (through the [`crate::observe::Observer`]) and the admin
/// server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Stops the particle made here.
    pub visits: Counter,
    /// Laps measured here (a visit with a lap time).
    pub laps: Counter,
    /// Lap times.
    pub lap: AtomicHistogram,
    /// The particle's stay here, arrival to departure.
    pub hop_stay: AtomicHistogram,
    /// The particle's generation last seen here.
    pub generation: Gauge,
    /// Particles this node created after losing one.
    pub regenerations: Counter,
    /// Live members in this node's view.
    pub live_members: Gauge,
    /// Successors declared dead (a clean leave is not counted).
    pub failures: Counter,
    /// Station versions swapped in.
    pub swaps: Counter,
    /// Stations rolled back here.
    pub rollbacks: Counter,
    /// Module fetches by kind (copied from the deploy view at scrape).
    pub fetches: Family<FetchLabels, Counter>,
    /// Bytes received by fetches, by kind (copied at scrape).
    pub fetched_bytes: Family<FetchLabels, Counter>,
    /// The config version applied here (copied at scrape).
    pub config_version: Gauge,
    /// Datagram inputs put in an inbox.
    pub inputs_received: Counter,
    /// Datagram inputs dropped, by reason.
    pub inputs_dropped: Family<DropLabels, Counter>,
    /// Entries per published set (copied at scrape; expired entries not
    /// yet swept are counted).
    pub set_entries: Family<SetLabels, Gauge>,
    /// Changes per published set since the node started (copied at
    /// scrape).
    pub set_changes: Family<SetLabels, Counter>,
    /// Admin requests by route and status code.
    pub admin_requests: Family<RequestLabels, Counter>,
    /// Connections ended or refused for a bound or a failed check, by
    /// port and reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// The cache's operations, by kind (copied from its store every
    /// second; `stats reset` on the cache port resets them too, which
    /// Prometheus takes as a counter reset).
    pub cache_ops: Family<CacheLabels, Counter>,
    /// Items the cache holds (copied every second).
    pub cache_items: Gauge,
    /// Bytes the cache's items are charged (copied every second).
    pub cache_bytes: Gauge,
    stations: Stations,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts a connection ended or refused on `port` for `reason` (see
    /// [`RefusalLabels`]).
    pub fn refused(&self, port: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { port, reason })
            .inc();
    }

    /// Every family registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ringhost");
        let visits = Counter::default();
        let laps = Counter::default();
        let lap = AtomicHistogram::new(LAP_BUCKETS);
        let hop_stay = AtomicHistogram::new(SHORT_BUCKETS);
        let generation = Gauge::default();
        let regenerations = Counter::default();
        let live_members = Gauge::default();
        let failures = Counter::default();
        let swaps = Counter::default();
        let rollbacks = Counter::default();
        let fetches = Family::<FetchLabels, Counter>::default();
        let fetched_bytes = Family::<FetchLabels, Counter>::default();
        let config_version = Gauge::default();
        let set_entries = Family::<SetLabels, Gauge>::default();
        let inputs_received = Counter::default();
        let inputs_dropped = Family::<DropLabels, Counter>::default();
        let set_changes = Family::<SetLabels, Counter>::default();
        let admin_requests = Family::<RequestLabels, Counter>::default();
        let refusals = Family::<RefusalLabels, Counter>::default();
        let cache_ops = Family::<CacheLabels, Counter>::default();
        let cache_items = Gauge::default();
        let cache_bytes = Gauge::default();
        let stations = Stations::default();
        let r = &mut registry;
        r.register(
            "visits",
            "Stops the particle made at this node",
            visits.clone(),
        );
        r.register("laps", "Laps measured at this node", laps.clone());
        r.register_with_unit(
            "lap",
            "Time between two visits of the particle at this node",
            Unit::Seconds,
            lap.clone(),
        );
        r.register_with_unit(
            "hop",
            "The particle's stay at this node, from arrival to departure (stations and hold)",
            Unit::Seconds,
            hop_stay.clone(),
        );
        r.register(
            "particle_generation",
            "Generation of the newest particle seen at this node",
            generation.clone(),
        );
        r.register(
            "particle_regenerations",
            "Particles this node created because none arrived within the token timeout",
            regenerations.clone(),
        );
        r.register(
            "live_members",
            "Members live in this node's view",
            live_members.clone(),
        );
        r.register(
            "failures_declared",
            "Successors this node declared dead (clean leaves not counted)",
            failures.clone(),
        );
        r.register_with_unit(
            "station_call",
            "Duration of one station call",
            Unit::Seconds,
            StationCalls(stations.clone()),
        );
        r.register(
            "station_faults",
            "Failed station calls (trap, timeout, memory, guest error, init)",
            StationFaults(stations.clone()),
        );
        r.register(
            "station_swaps",
            "Station versions swapped in",
            swaps.clone(),
        );
        r.register(
            "station_rollbacks",
            "Stations rolled back at this node after repeated faults",
            rollbacks.clone(),
        );
        r.register(
            "inputs_received",
            "Datagram inputs (--input-udp, --input-unix) put in a station's inbox",
            inputs_received.clone(),
        );
        r.register(
            "inputs_dropped",
            "Datagram inputs dropped, by reason (unknown_station, inbox_full, malformed, \
             too_large)",
            inputs_dropped.clone(),
        );
        r.register(
            "set_entries",
            "Entries of each set a station publishes on this node",
            set_entries.clone(),
        );
        r.register(
            "set_changes",
            "Changes (puts, removals, expiries, clears) of each published set",
            set_changes.clone(),
        );
        r.register(
            "deploy_fetches",
            "Modules fetched from other nodes, whole or as deltas",
            fetches.clone(),
        );
        r.register_with_unit(
            "deploy_fetched",
            "Bytes received by module fetches, by kind (whole module or delta)",
            Unit::Bytes,
            fetched_bytes.clone(),
        );
        r.register(
            "config_version",
            "Highest replicated config entry version applied at this node",
            config_version.clone(),
        );
        r.register(
            "admin_requests",
            "Admin API requests by route and status code",
            admin_requests.clone(),
        );
        r.register(
            "connections_refused",
            "Connections ended or refused for a bound or a failed check, by port and reason",
            refusals.clone(),
        );
        r.register(
            "cache_operations",
            "Operations of the memcached-compatible cache (--cache), by kind",
            cache_ops.clone(),
        );
        r.register("cache_items", "Items the cache holds", cache_items.clone());
        r.register_with_unit(
            "cache_memory",
            "Bytes the cache's items are charged (key + value + per-item overhead)",
            Unit::Bytes,
            cache_bytes.clone(),
        );
        Self {
            registry,
            visits,
            laps,
            lap,
            hop_stay,
            generation,
            regenerations,
            live_members,
            failures,
            swaps,
            rollbacks,
            fetches,
            fetched_bytes,
            config_version,
            set_entries,
            set_changes,
            inputs_received,
            inputs_dropped,
            admin_requests,
            refusals,
            cache_ops,
            cache_items,
            cache_bytes,
            stations,
        }
    }

    /// A visit: the particle's generation and the lap time, if measured.
    pub fn visit(&self, generation: u64, lap_time: Option<Duration>) {
        self.visits.inc();
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        if let Some(t) = lap_time {
            self.laps.inc();
            self.lap.observe(t);
        }
    }

    /// One station call and how long it took.
    pub fn station_call(&self, station: &str, took: Duration) {
        self.stations.with(station, |s| s.calls.observe(took));
    }

    /// One failed station call.
    pub fn station_fault(&self, station: &str) {
        self.stations
            .with(station, |s| _ = s.faults.fetch_add(1, Ordering::Relaxed));
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The metrics in `format` (see [`Format::negotiate`]).
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Text004 => exposition::to_text_004(&self.encode()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_follow_the_naming_conventions_and_histograms_accumulate() {
        let m = Metrics::new();
        m.visit(7, Some(Duration::from_millis(3)));
        m.visit(7, None);
        m.station_call("tick", Duration::from_micros(40));
        m.station_fault("tick");
        m.fetches
            .get_or_create(&FetchLabels { kind: "delta" })
            .inc();
        m.fetched_bytes
            .get_or_create(&FetchLabels { kind: "delta" })
            .inc_by(812);
        let text = m.encode();
        for line in [
            "# TYPE ringhost_visits counter",
            "ringhost_visits_total 2",
            "ringhost_laps_total 1",
            "# TYPE ringhost_lap_seconds histogram",
            "ringhost_lap_seconds_count 1",
            "ringhost_lap_seconds_bucket{le=\"0.005\"} 1",
            "ringhost_lap_seconds_bucket{le=\"0.002\"} 0",
            "ringhost_lap_seconds_bucket{le=\"+Inf\"} 1",
            "ringhost_particle_generation 7",
            "ringhost_station_call_seconds_count{station=\"tick\"} 1",
            "ringhost_station_faults_total{station=\"tick\"} 1",
            "ringhost_deploy_fetches_total{kind=\"delta\"} 1",
            "# TYPE ringhost_deploy_fetched_bytes counter",
            "ringhost_deploy_fetched_bytes_total{kind=\"delta\"} 812",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
