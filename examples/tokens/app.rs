//! `tokens-app`: an HTTP application server that sits beside one ringhost
//! node running the `tokens` station and consults it before serving each
//! request (see `kit/app.rs`); or, with `--per-node-threshold N`, counts
//! tokens on its own as fail2ban does.
//!
//! ```text
//! cargo run --example tokens-app -- --listen 127.0.0.1:8080 --node 127.0.0.1:3000
//! curl -H 'x-api-key: alice' http://127.0.0.1:8080/anything     # 200 ok
//! ringhost tokens block alice --to 127.0.0.1:3000
//! curl -H 'x-api-key: alice' http://127.0.0.1:8080/anything     # 403 blocked: manual …
//! ```
//!
//! The node needs `--station tokens` and `--input-udp` (the default here
//! is its `auto` address: 127.0.0.1 at the ring port + 2000).

#[path = "kit/mod.rs"]
mod kit;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use kit::app::{App, AppConfig, Guard};

/// An application server guarded by its ringhost node's token blocklist.
#[derive(Debug, Parser)]
struct Args {
    /// Where to serve HTTP.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The node beside this server: its ring or admin address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    node: String,
    /// The node's datagram input socket (default: the node address's port
    /// + 2000, the node's `--input-udp auto`).
    #[arg(long)]
    input_udp: Option<String>,
    /// The tokens station's name on the ring.
    #[arg(long, default_value = "tokens")]
    station: String,
    /// Instead of the ring: refuse a token this server saw N times in the
    /// window (fail2ban's model; no node needed).
    #[arg(long, value_name = "N")]
    per_node_threshold: Option<u32>,
    /// The per-node window, seconds.
    #[arg(long, default_value_t = 60)]
    window_s: u64,
    /// Longest a report waits before its datagram is sent, ms.
    #[arg(long, default_value_t = 5)]
    flush_ms: u64,
}

fn guard(a: &Args) -> Result<Guard> {
    if let Some(threshold) = a.per_node_threshold {
        if threshold == 0 {
            bail!("--per-node-threshold must be at least 1");
        }
        return Ok(Guard::PerNode {
            threshold,
            window: Duration::from_secs(a.window_s),
        });
    }
    let udp = match &a.input_udp {
        Some(u) => u.clone(),
        None => {
            let (host, port) = a.node.rsplit_once(':').context("--node is HOST:PORT")?;
            let port: u16 = port.parse().context("--node's port")?;
            let udp = port
                .checked_add(kit::nodes::UDP_OFFSET)
                .context("no port 2000 above --node's: give --input-udp")?;
            format!("{host}:{udp}")
        }
    };
    Ok(Guard::Ring {
        node: a.node.clone(),
        udp,
        station: a.station.clone(),
    })
}

async fn serve(a: Args) -> Result<()> {
    let config = AppConfig {
        guard: guard(&a)?,
        flush: Duration::from_millis(a.flush_ms),
    };
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let app = App::start(config.clone(), listener).await?;
    app.wait_synced(Duration::from_secs(30)).await?;
    eprintln!(
        "tokens-app: serving on http://{} ({:?})",
        app.addr(),
        config.guard
    );
    tokio::signal::ctrl_c().await?;
    let c = app.counts();
    app.shutdown().await;
    eprintln!(
        "tokens-app: {} served, {} refused, {} report datagrams, {} reports dropped",
        c.served, c.denied, c.datagrams, c.reports_dropped
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match serve(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokens-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}
