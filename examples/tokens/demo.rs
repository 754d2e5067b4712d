//! `tokens-demo`: one command that shows the ring catching a token spread
//! over the whole fleet, side by side with per-node counting (fail2ban's
//! model), which never catches it. See `kit/scenario.rs` for the story.
//!
//! ```text
//! cargo build && cargo run --example tokens-demo
//! ```
//!
//! Starts an N-node local ring (`ringhost` processes on 127.0.0.1, ports
//! picked at random in 20000..30000) with the `tokens` station, two app
//! servers per node, the load, and prints the report. The `ringhost`
//! binary is looked up next to this example (`target/<profile>/ringhost`;
//! `cargo run --example` does not build it: `cargo build` first, with the
//! same profile), or given with `--ringhost`. Bounded: the whole run has a
//! deadline (`--timeout-s`); every process it started is killed and
//! reaped at the end, on an error, and on Ctrl-C or SIGTERM.

#[path = "kit/mod.rs"]
mod kit;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use kit::scenario::{self, Params};

/// The tokens demo: a spread attack against per-node counting and the ring.
#[derive(Debug, Parser)]
struct Args {
    /// Nodes in the ring.
    #[arg(long, default_value_t = 11)]
    nodes: usize,
    /// The per-node servers refuse a token seen this many times in 60 s;
    /// the abusive token is sent one time fewer to each.
    #[arg(long, default_value_t = 10)]
    per_node_threshold: u32,
    /// Legitimate tokens.
    #[arg(long, default_value_t = 40)]
    legit_tokens: usize,
    /// Time between two abusive requests, ms.
    #[arg(long, default_value_t = 20)]
    abuse_interval_ms: u64,
    /// The particle's hold at each stop (`ringhost --delay-ms`).
    #[arg(long, default_value_t = 5)]
    delay_ms: u64,
    /// Seed of the legitimate load.
    #[arg(long, default_value_t = 12)]
    seed: u64,
    /// The ringhost executable (default: next to this example).
    #[arg(long)]
    ringhost: Option<PathBuf>,
    /// Keep the node logs (default: removed after a successful run).
    #[arg(long)]
    keep_logs: bool,
    /// Deadline of the whole run, seconds.
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
}

/// `target/<profile>/ringhost`, beside `target/<profile>/examples/<this>`.
fn ringhost_next_to_me() -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding this executable")?;
    let profile_dir = me
        .parent()
        .and_then(|examples| examples.parent())
        .context("this executable has no target/<profile> directory")?;
    let bin = profile_dir.join("ringhost");
    if !bin.is_file() {
        let profile = profile_dir
            .file_name()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let flag = if profile == "release" {
            " --release"
        } else {
            ""
        };
        bail!(
            "{} is missing: build it first with `cargo build{flag}` (cargo run --example \
             does not build the ringhost binary), or pass --ringhost PATH",
            bin.display()
        );
    }
    Ok(bin)
}

/// Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn demo(a: Args) -> Result<bool> {
    let ringhost = match a.ringhost {
        Some(p) => p,
        None => ringhost_next_to_me()?,
    };
    let log_dir = std::env::temp_dir().join(format!("ringhost-tokens-demo-{}", std::process::id()));
    let params = Params {
        nodes: a.nodes,
        per_node_threshold: a.per_node_threshold,
        delay_ms: a.delay_ms,
        abuse_interval: Duration::from_millis(a.abuse_interval_ms),
        legit_tokens: a.legit_tokens,
        seed: a.seed,
        ringhost,
        log_dir: log_dir.clone(),
    };
    eprintln!(
        "starting {} nodes ({}; logs in {}) and {} app servers...",
        params.nodes,
        params.station_spec(),
        log_dir.display(),
        params.nodes * 2
    );
    let run = tokio::time::timeout(Duration::from_secs(a.timeout_s), scenario::run(params));
    // Ctrl-C or SIGTERM drops the run: its servers stop and its nodes
    // are killed and reaped as they drop.
    let outcome = tokio::select! {
        r = run => match r {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => bail!("{e:#} (node logs: {})", log_dir.display()),
            Err(_) => bail!(
                "the demo did not finish within {} s (node logs: {})",
                a.timeout_s,
                log_dir.display()
            ),
        },
        _ = interrupted() => {
            if !a.keep_logs {
                let _ = std::fs::remove_dir_all(&log_dir);
            }
            eprintln!("interrupted: every process started was killed and reaped");
            return Ok(false);
        }
    };
    println!("{}", outcome.render());
    let shown = outcome.per_node_blocked_nodes() == 0
        && outcome.ring_blocked_nodes() == a.nodes
        && outcome.legit_blocked.is_empty();
    if !a.keep_logs && shown {
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        println!("node logs: {}", log_dir.display());
    }
    Ok(shown)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match demo(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("tokens-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
