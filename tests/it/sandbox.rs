//! The station sandbox, audited (issue 10): the `escape` test station tries,
//! at every stop, one thing a station must not do. One row per attempt, each
//! run on its own in-process 3-node ring with `escape` (and `tick`) on every
//! node, asserting that the attempt is denied or bounded, that an event says
//! so (the station's own log line with the error it got, or a fault naming
//! the cause), and that the particle keeps circling: one generation, every
//! member visited in ring order, `tick`'s slot unbroken. The log-flood rows
//! also count the lines that reached the node's log (a tracing layer on the
//! test's own runtime threads) against the rate limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringhost::config::{NodeConfig, StationSpec};
use ringhost::observe::EventKind;
use ringhost::station::{LOG_BURST, LOG_LINES_PER_SEC};
use tokio::net::TcpListener;
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::stations::tick_seq;
use crate::support::{TestRing, Visit, assert_single_particle_in_ring_order, test_station};

/// How a row's denial shows.
#[derive(Debug, Clone, Copy)]
enum Evidence {
    /// The station logs `try=NAME: denied: …` (the error it got); the text
    /// after it must contain this.
    Denied(&'static str),
    /// A `StationFault` of `escape` whose cause contains this.
    Fault(&'static str),
    /// A host note in escape's log stream containing this (the node's log
    /// held lines back).
    HostNote(&'static str),
}

struct Row {
    attempt: &'static str,
    evidence: Evidence,
    /// Adjusts each node's config (deadline, memory cap).
    configure: fn(&mut NodeConfig),
}

fn no_change(_: &mut NodeConfig) {}

/// 2000 host calls take longer than the default 100 ms in a debug build
/// on a busy machine: the flood is the test, not the deadline.
fn flood_deadline(c: &mut NodeConfig) {
    c.station_timeout_ms = 2_000;
}

const ROWS: &[Row] = &[
    Row {
        attempt: "fs-read",
        evidence: Evidence::Denied("/etc/passwd"),
        configure: no_change,
    },
    Row {
        attempt: "fs-list",
        evidence: Evidence::Denied("/:"),
        configure: no_change,
    },
    Row {
        attempt: "socket",
        evidence: Evidence::Denied("tcp connect"),
        configure: no_change,
    },
    Row {
        attempt: "env",
        evidence: Evidence::Denied("no variables"),
        configure: no_change,
    },
    Row {
        attempt: "kv-other",
        evidence: Evidence::Denied("nothing of station victim"),
        configure: no_change,
    },
    Row {
        attempt: "memory",
        evidence: Evidence::Fault("memory limit"),
        configure: |c| c.station_memory_bytes = 8 << 20,
    },
    Row {
        attempt: "loop",
        evidence: Evidence::Fault("timeout"),
        configure: |c| c.station_timeout_ms = 20,
    },
    Row {
        attempt: "sleep",
        evidence: Evidence::Fault("timeout"),
        configure: |c| c.station_timeout_ms = 50,
    },
    Row {
        attempt: "big-slot",
        evidence: Evidence::Fault("exceeds the 1048576 byte limit"),
        // Filling 1 MiB takes a while on a loaded machine: a deadline far
        // above it, so the size bound (not the deadline) ends the call.
        configure: |c| c.station_timeout_ms = 2_000,
    },
    Row {
        attempt: "log-flood",
        evidence: Evidence::HostNote("held back"),
        configure: flood_deadline,
    },
    Row {
        attempt: "log-flood-trap",
        evidence: Evidence::HostNote("held back"),
        configure: flood_deadline,
    },
    Row {
        attempt: "exit",
        evidence: Evidence::Fault("exit"),
        configure: no_change,
    },
];

/// Runs `row` on a 3-node ring and checks it.
async fn run_row(row: &Row) {
    // A listener the `socket` attempt tries to reach: it must never accept.
    let bait = TcpListener::bind("127.0.0.1:0").await.expect("bind bait");
    let port = bait.local_addr().expect("bait addr").port().to_string();
    let mut escape = StationSpec::file(test_station("escape"))
        .with("try", row.attempt)
        .with("port", &port);
    if row.attempt == "kv-other" {
        escape = escape.with("victim", "victim");
    }
    let mut victim = StationSpec::file(test_station("escape")).with("try", "kv-plant");
    victim.name = "victim".into();
    let mut ring = TestRing::start(3, |c| {
        c.delay_ms = 5;
        c.stations = vec![victim.clone(), escape.clone(), StationSpec::builtin("tick")];
        (row.configure)(c);
    })
    .await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut evidence = Vec::new();
    let mut visits: Vec<Visit> = Vec::new();
    let mut tick_seqs = Vec::new();
    let what = format!("try={}: evidence and visits", row.attempt);
    while evidence.len() < 3 || visits.len() < 12 {
        let ev = ring.next_event(deadline, &what).await;
        match ev.kind {
            EventKind::StationLog {
                station, message, ..
            } if station == "escape" || station == "victim" => {
                assert!(
                    !message.contains("ALLOWED"),
                    "try={}: the sandbox let it through: {message}",
                    row.attempt
                );
                let found = match row.evidence {
                    Evidence::Denied(text) => message
                        .strip_prefix(&format!("try={}: denied: ", row.attempt))
                        .is_some_and(|rest| rest.contains(text)),
                    Evidence::HostNote(text) => {
                        message.starts_with("host:") && message.contains(text)
                    }
                    Evidence::Fault(_) => false,
                };
                if found {
                    evidence.push(message);
                }
            }
            EventKind::StationLog {
                station, message, ..
            } if station == "tick" => {
                tick_seqs.push(tick_seq(&message));
            }
            EventKind::StationFault { station, cause } => {
                assert_eq!(station, "escape", "only escape faults ({cause})");
                match row.evidence {
                    Evidence::Fault(text) => {
                        assert!(
                            cause.contains(text),
                            "try={}: cause {cause:?} should name {text:?}",
                            row.attempt
                        );
                        evidence.push(cause);
                    }
                    // The flood-then-trap row traps after its flood.
                    _ if row.attempt == "log-flood-trap" => {}
                    _ => panic!("try={}: unexpected fault: {cause}", row.attempt),
                }
            }
            EventKind::ParticleCreated {
                generation,
                regenerated: true,
            } => panic!(
                "try={}: the particle was lost and regenerated (generation {generation})",
                row.attempt
            ),
            EventKind::Visit { .. } => visits.extend(Visit::of(&ev)),
            _ => {}
        }
    }
    eprintln!("try={}: {}", row.attempt, evidence[0]);
    assert_single_particle_in_ring_order(&visits, 3);
    for w in tick_seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "tick sequence unbroken: {tick_seqs:?}");
    }
    ring.shutdown().await;
    // Nothing ever reached the bait listener.
    let accepted = tokio::time::timeout(Duration::from_millis(1), bait.accept()).await;
    assert!(
        accepted.is_err(),
        "try={}: a station connected to the bait listener",
        row.attempt
    );
}

async fn run(attempt: &str) {
    let row = ROWS
        .iter()
        .find(|r| r.attempt == attempt)
        .expect("a row for the attempt");
    run_row(row).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_denies_reading_a_file() {
    run("fs-read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_denies_listing_a_directory() {
    run("fs-list").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_denies_sockets_and_name_lookup() {
    run("socket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_gives_an_empty_environment() {
    run("env").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_keeps_another_stations_kv_out_of_reach() {
    run("kv-other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_stops_memory_growth_at_the_cap() {
    run("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_interrupts_a_loop_at_its_deadline() {
    run("loop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_ends_a_call_blocked_in_a_host_sleep_at_its_deadline() {
    run("sleep").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_refuses_a_slot_over_the_bound() {
    run("big-slot").await;
}

#[test]
fn sandbox_holds_back_a_log_flood() {
    run_counting_node_log("log-flood");
}

#[test]
fn sandbox_holds_back_a_log_flood_across_traps() {
    run_counting_node_log("log-flood-trap");
}

/// Counts, per station, the station lines the node's log wrote (the
/// station's own lines, not the host's notes about them).
#[derive(Clone, Default)]
struct NodeLog(Arc<Mutex<HashMap<String, usize>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for NodeLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        // Station lines are written by the host API module with a
        // `station` field; its "held back" notes are not station lines.
        if event.metadata().target() != "ringhost::station::host_api" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(station) = fields.station
            && !fields.message.contains("held back")
        {
            *self.0.lock().unwrap().entry(station).or_default() += 1;
        }
    }
}

#[derive(Default)]
struct Fields {
    station: Option<String>,
    message: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "station" {
            self.station = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "station" => self.station = Some(format!("{value:?}").trim_matches('"').to_string()),
            _ => {}
        }
    }
}

/// Runs the row of `attempt` on a runtime whose threads log into a
/// [`NodeLog`], and checks that the escape station's lines in the node's
/// log stayed within the rate limit: at most [`LOG_BURST`] plus
/// [`LOG_LINES_PER_SEC`] a second per node, however often the station
/// traps and comes back as a fresh instance.
fn run_counting_node_log(attempt: &str) {
    crate::support::init_tracing();
    let log = NodeLog::default();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(log.clone()));
    let on_threads = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // The runtime's threads end with it, and the guard with them.
            std::mem::forget(tracing::dispatcher::set_default(&on_threads));
        })
        .build()
        .expect("runtime");
    let started = Instant::now();
    tracing::dispatcher::with_default(&dispatch, || rt.block_on(run(attempt)));
    let elapsed = started.elapsed().as_secs_f64();
    drop(rt);
    let lines = log.0.lock().unwrap().get("escape").copied().unwrap_or(0);
    let bound = 3.0 * (LOG_BURST + LOG_LINES_PER_SEC * elapsed);
    eprintln!("try={attempt}: {lines} lines in the node log in {elapsed:.2} s (bound {bound:.0})");
    assert!(lines > 0, "try={attempt}: the capture saw no station line");
    assert!(
        lines as f64 <= bound,
        "try={attempt}: {lines} station lines reached the node log in {elapsed:.2} s, over the \
         bound of {bound:.0} (3 nodes × ({LOG_BURST} + {LOG_LINES_PER_SEC}/s))"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_turns_exit_into_a_fault() {
    run("exit").await;
}

/// With a fuel budget and a deadline far above what the budget takes,
/// the looping station ends on fuel, and the fault (the node's log line)
/// says so with the budget; the ring goes on as with the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_ends_a_loop_when_its_fuel_runs_out() {
    run_row(&Row {
        attempt: "loop",
        evidence: Evidence::Fault("ran out of fuel (2000000 units)"),
        configure: |c| {
            c.station_timeout_ms = 5_000;
            c.station_fuel = Some(2_000_000);
        },
    })
    .await;
}

/// A fuel budget well above what `tick` needs changes nothing: no fault,
/// the particle goes round in ring order and tick's count is unbroken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fuel_set_high_the_tick_station_runs_as_without() {
    let mut ring = TestRing::start(3, |c| {
        c.delay_ms = 2;
        c.station_fuel = Some(10_000_000);
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut visits = Vec::new();
    let mut tick_seqs = Vec::new();
    while visits.len() < 30 || tick_seqs.len() < 30 {
        let ev = ring.next_event(deadline, "30 visits and tick lines").await;
        match ev.kind {
            EventKind::StationLog {
                station, message, ..
            } if station == "tick" => tick_seqs.push(tick_seq(&message)),
            EventKind::StationFault { station, cause } => {
                panic!("{station} faulted with fuel set high: {cause}")
            }
            EventKind::Visit { .. } => visits.extend(Visit::of(&ev)),
            _ => {}
        }
    }
    assert_single_particle_in_ring_order(&visits, 3);
    for w in tick_seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "tick sequence unbroken: {tick_seqs:?}");
    }
    ring.shutdown().await;
}

#[test]
fn every_row_has_a_test() {
    let tests = include_str!("sandbox.rs");
    for row in ROWS {
        assert!(
            tests.contains(&format!("(\"{}\")", row.attempt)),
            "row {} has no test",
            row.attempt
        );
    }
}
