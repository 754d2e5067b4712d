//! `ringhost status` and `ringhost members`: one node's report and the
//! ring-wide table, printed once or redrawn every second (`--watch`).
//!
//! Exit codes: [`EXIT_OK`] when every member is live and (for `members`)
//! all run the same station versions, [`EXIT_DEGRADED`] when not,
//! [`EXIT_ERROR`] (through an `Err`) when the node cannot be asked.

use std::fmt::Write as _;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Result;

use super::{EXIT_DEGRADED, EXIT_OK};
use crate::admin::api::RingView;
use crate::admin::client::{AdminClient, connect};
use crate::status::{self, Report};

#[cfg(doc)]
use super::EXIT_ERROR;

/// Bound on one fetch (`GET /v1/status` or `/v1/ring`).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often `--watch` redraws.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What `status` and `members` print and how.
#[derive(Debug, Clone, Default)]
pub struct ViewOptions {
    /// A node (admin or ring address).
    pub to: String,
    /// Print JSON instead of text.
    pub json: bool,
    /// Redraw every [`WATCH_EVERY`] until `shutdown`.
    pub watch: bool,
    /// Bearer token (not needed to read; kept for symmetry).
    pub token: Option<String>,
}

/// `ringhost status`: the exit code.
///
/// # Errors
/// When the node cannot be reached or answers something else.
pub async fn status(opts: &ViewOptions, shutdown: impl Future<Output = ()>) -> Result<u8> {
    let node = connect(&opts.to, opts.token.clone()).await?;
    let json = opts.json;
    repeat(opts.watch, shutdown, || async {
        let report = node.status(FETCH_TIMEOUT).await?;
        let text = if json {
            serde_json::to_string_pretty(&report)? + "\n"
        } else {
            status::render(&report)
        };
        Ok((text, status_code(&report)))
    })
    .await
}

/// `ringhost members`: the exit code.
///
/// # Errors
/// When the node cannot be reached or answers something else.
pub async fn members(opts: &ViewOptions, shutdown: impl Future<Output = ()>) -> Result<u8> {
    let node = connect(&opts.to, opts.token.clone()).await?;
    let json = opts.json;
    repeat(opts.watch, shutdown, || ring_once(&node, json)).await
}

async fn ring_once(node: &AdminClient, json: bool) -> Result<(String, u8)> {
    let mut ring = node.ring(FETCH_TIMEOUT).await?;
    let code = if ring.healthy { EXIT_OK } else { EXIT_DEGRADED };
    let text = if json {
        // The table's figures, not every member's whole report.
        for m in &mut ring.members {
            m.report = None;
        }
        serde_json::to_string_pretty(&ring)? + "\n"
    } else {
        render_ring(&ring)
    };
    Ok((text, code))
}

/// Prints what `once` gives, once or every [`WATCH_EVERY`] until
/// `shutdown`; the last exit code.
async fn repeat<F, Fut>(watch: bool, shutdown: impl Future<Output = ()>, mut once: F) -> Result<u8>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(String, u8)>>,
{
    tokio::pin!(shutdown);
    let clear = watch && std::io::stdout().is_terminal();
    loop {
        let (text, code) = once().await?;
        {
            let mut out = std::io::stdout().lock();
            if clear {
                let _ = out.write_all(b"\x1b[2J\x1b[H");
            }
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        if !watch {
            return Ok(code);
        }
        tokio::select! {
            () = &mut shutdown => return Ok(code),
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

/// `status`'s exit code: every member live in the node's view.
pub fn status_code(r: &Report) -> u8 {
    if r.members.iter().all(|m| m.live) {
        EXIT_OK
    } else {
        EXIT_DEGRADED
    }
}

/// The ring-wide table.
pub fn render_ring(r: &RingView) -> String {
    let mut s = String::new();
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    let _ = writeln!(
        s,
        "ring of {} (hash {}), as node {} sees it: {}",
        r.ring_size,
        status::prefix(&r.ring_hash, 12),
        r.node,
        if r.healthy {
            "all live, same versions"
        } else {
            "NOT all live or versions differ"
        }
    );
    let _ = writeln!(
        s,
        "{:>3}  {:<16} {:<22} {:<12} {:>8} {:>6}  STATIONS",
        "#", "MEMBER", "ADDRESS", "STATE", "LAP P50", "FAULTS"
    );
    for m in &r.members {
        let stations = m
            .stations
            .iter()
            .map(|st| {
                let hash = st.hash.as_deref().map_or("-", |h| status::prefix(h, 8));
                format!("{} v{} ({hash})", st.name, st.version)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "{:>3}  {:<16} {:<22} {:<12} {:>8} {:>6}  {}",
            m.index,
            m.name,
            m.addr,
            m.liveness.word(),
            f(m.lap_p50_ms),
            m.faults,
            if stations.is_empty() { "-" } else { &stations }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a hostile or buggy node may answer: hashes and names that are
    /// not ASCII (a byte slice of them would split a character), member
    /// and successor numbers past the ring, no figures.
    fn hostile_report() -> Report {
        serde_json::from_value(serde_json::json!({
            "node": {"index": 7, "name": "€€€", "addr": "x", "pid": 1},
            "ring_size": 2,
            "ring_hash": "a€€€€€€€€€€€",
            "members": [
                {"index": 5, "name": "n€", "addr": "a€€", "live": true},
                {"index": 99, "name": "", "addr": "", "live": false}
            ],
            "successor": 1000,
            "successor_up": true,
            "skipped": [4000, 7],
            "particle": {"generation": null, "origin": 4_000_000_000u32, "here": false},
            "visits": 0,
            "member_downs": 0,
            "lap_ms": {"samples": 0, "last": null, "p50": null, "p99": null},
            "stay_ms": {"samples": 0, "last": null, "p50": null, "p99": null},
            "stations": [{"name": "t€€", "faults": 1}],
            "uptime_s": -1.0,
            "linked_ever": [12345]
        }))
        .expect("a report")
    }

    #[test]
    fn a_hostile_report_renders_without_a_panic() {
        let r = hostile_report();
        let text = status::render(&r);
        assert!(text.contains("a€€€€€€€€€€€"), "{text}");
        let view = RingView {
            node: 9,
            ring_size: 1,
            ring_hash: "a€€€€€€€€€€€".into(),
            members: vec![crate::admin::api::MemberView {
                stations: vec![crate::admin::api::StationVersion {
                    name: "t".into(),
                    version: 1,
                    hash: Some("a€€€€€€€€€".into()),
                    faults: 0,
                }],
                ..crate::admin::api::MemberView::from_report(true, r)
            }],
            healthy: true,
        };
        let table = render_ring(&view);
        assert!(table.contains("a€€€€€€€€€€"), "{table}");
        assert!(table.contains("(a€€€€€€€)"), "{table}");
    }
}
