//! ringhost: a ring of servers with a particle circling through it, where
//! every stop runs hot-swappable WebAssembly stations.
//!
//! # Layout
//! - [`config`]: the ring enumeration, station specs, node settings.
//! - [`model`]: shared vocabulary: module hashes, releases, signatures,
//!   the requests that travel on a ring port's side connections.
//! - [`wire`]: frames and their encoding; knows nothing of rings.
//! - [`ring`]: the ring protocol as a sans-IO state machine.
//! - [`station`]: the wasm host (engine, linker, imports, pipeline).
//! - [`node`]: wires the protocol to sockets, timers and stations.
//! - [`observe`]: events nodes report, for tests and tools.
//! - [`status`]: a node's status report, its ring-port client, its figures.
//! - [`metrics`]: the Prometheus metrics of a node.
//! - [`admin`]: the admin HTTP API (server, client, bodies).
//! - [`cache`]: the memcached-compatible cache (`--cache`): codec, store,
//!   server.
//! - [`tool`]: the command-line tools (`status`, `members`, `push`…) over
//!   the admin API, in plain parameters.
//! - [`up`]: `ringhost up`, a whole local ring of node processes.
//! - [`lograte`]: backing off repeated log lines.
//! - [`respawn`]: `--respawn`, a node restarting its dead local successor.
//! - [`cli`]: command-line types and their translation into configs.
//! - [`durable`]: fsynced atomic writes, damaged files moved aside.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod config;
pub mod conns;
pub mod deploy;
pub mod durable;
pub mod lograte;
pub mod metrics;
pub mod model;
pub mod node;
pub mod observe;
pub mod respawn;
pub mod ring;
pub mod secure;
pub mod station;
pub mod status;
pub mod tool;
pub mod up;
pub mod wire;

use std::future::Future;

use anyhow::{Context, Result};

/// Exit code of a node that cannot bind its ring port (taken by another
/// program, or not an address of this machine). `ringhost up` does not
/// respawn such a node: it stops and names the port.
pub const EXIT_CANNOT_BIND: u8 = 3;

/// A node could not bind its ring port or its admin address: `main` exits
/// with [`EXIT_CANNOT_BIND`].
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the {what} {addr}: {cause}")]
pub struct BindError {
    /// Which port: `ring port` or `admin address`.
    pub what: &'static str,
    /// The address asked for.
    pub addr: String,
    /// Why (address in use, not local…); part of the message, not a
    /// separate cause, so it is said once.
    pub cause: std::io::Error,
}

/// Runs what the command line asks for until `shutdown` resolves; the
/// process's exit code (`status` and `members` give
/// [`tool::EXIT_DEGRADED`] for a ring that is not whole).
///
/// # Errors
/// Whatever stops the node or the ring from starting or running, with
/// context naming the thing.
pub async fn run(cli: cli::Cli, shutdown: impl Future<Output = ()>) -> Result<u8> {
    let ok = |r: Result<()>| r.map(|()| tool::EXIT_OK);
    let keys = cli.cluster_keys()?;
    if cli.command.is_some()
        && let Some(k) = &keys
    {
        // A tool asking a node at its ring address.
        admin::client::use_cluster_keys(k.clone());
    }
    match cli.command {
        Some(cli::Command::Up(args)) => {
            let json_logs = cli.log_format == cli::LogFormat::Json;
            ok(up::run(args, cli.cluster_key_file.as_deref(), json_logs, shutdown).await)
        }
        Some(cli::Command::Status(args)) => tool::view::status(&args.options(), shutdown).await,
        Some(cli::Command::Members(args)) => tool::view::members(&args.options(), shutdown).await,
        Some(cli::Command::Push(args)) => ok(tool::deploy::push(&args.options()?).await),
        Some(cli::Command::Rollback(args)) => {
            ok(
                tool::deploy::rollback(&args.to, &args.name, args.timeout_s, args.auth.token()?)
                    .await,
            )
        }
        Some(cli::Command::Config(cmd)) => {
            let (to, key, action, token) = cmd.options()?;
            ok(tool::deploy::config(&to, &key, &action, token).await)
        }
        Some(cli::Command::Tokens(cmd)) => run_tokens(cmd).await,
        Some(cli::Command::Keygen(args)) if args.cluster => {
            let out = args.out.unwrap_or_else(|| "cluster.key".into());
            let id = secure::keys::write_new_file(&out)?;
            eprintln!(
                "cluster key {id} written to {} (secret: copy it to every member, mode 0600)",
                out.display()
            );
            println!("{id}");
            Ok(tool::EXIT_OK)
        }
        Some(cli::Command::Keygen(args)) => ok(tool::deploy::keygen(
            &args.out.unwrap_or_else(|| "ringhost.key".into()),
        )),
        None => ok(run_node(cli.node, keys, shutdown).await),
    }
}

async fn run_tokens(cmd: cli::TokensCmd) -> Result<u8> {
    use cli::TokensCmd as T;
    use tool::tokens;
    match cmd {
        T::Status { at, json, limit } => tokens::status(&at.target()?, json, limit).await,
        T::Top { at, json, limit } => tokens::top(&at.target()?, json, limit).await,
        T::Block {
            token,
            at,
            ttl_s,
            reason,
            wait,
        } => {
            let block = Some((ttl_s, reason.as_str()));
            tokens::block(&at.target()?, &token, block, wait.duration()).await
        }
        T::Unblock { token, at, wait } => {
            tokens::block(&at.target()?, &token, None, wait.duration()).await
        }
        T::Observe {
            tokens: list,
            at,
            count,
            issued,
            redeemed,
        } => {
            let kind = cli::TokensCmd::observation(issued, redeemed);
            let sent = tokens::observe(&at.target()?, &list, kind, count).await?;
            eprintln!("{sent} observations posted to {}", at.to);
            Ok(tool::EXIT_OK)
        }
        T::Check { token, at, json } => tokens::check(&at.target()?, &token, json).await,
    }
}

async fn run_node(
    args: cli::NodeArgs,
    keys: Option<secure::ClusterKeys>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut config = args.to_config()?;
    let mut bind = args
        .listen
        .clone()
        .unwrap_or_else(|| config.me().addr.clone());
    match &keys {
        Some(k) => tracing::info!(
            keys = %k.get().ids().iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            "ring links are authenticated and encrypted with the cluster key (first: dialed with)"
        ),
        None => {
            let admin = config.admin.as_mut().map(|a| &mut a.listen);
            secure::loopback_only(&mut bind, admin, args.insecure);
        }
    }
    config.cluster_keys = keys;
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|cause| BindError {
            what: "ring port",
            addr: bind.clone(),
            cause,
        })?;
    let host = station::StationHost::with_cache(args.stations.cache_dir())?;
    let ring = config.ring.clone();
    let (observer, events) = if args.respawn {
        let (o, e) = observe::Observer::channel();
        (o, Some(e))
    } else {
        (observe::Observer::none(), None)
    };
    let handle = node::start(config, listener, host, observer).await?;
    // The respawn supervisor ends with the node (its cancel token); it is
    // awaited after the node's shutdown. Members it started are processes
    // of their own, meant to outlive this one.
    let supervisor = match events {
        Some(events) => {
            let launcher = respawn::Launcher::from_current_process()
                .context("finding this program to respawn members")?;
            Some(tokio::spawn(respawn::run(
                ring,
                launcher,
                events,
                handle.cancel_token(),
            )))
        }
        None => None,
    };
    let stdin_closed = async {
        if args.exit_on_stdin_eof {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 256];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            tracing::info!("supervisor gone (stdin closed); stopping");
        } else {
            std::future::pending::<()>().await;
        }
    };
    let stopped = handle.cancel_token();
    tokio::select! {
        () = shutdown => {}
        () = stdin_closed => {}
        // The node stopped by itself (refused as a duplicate member).
        () = stopped.cancelled() => {}
    }
    let stopped = handle.shutdown().await;
    if let Some(s) = supervisor
        && tokio::time::timeout(std::time::Duration::from_secs(5), s)
            .await
            .is_err()
    {
        tracing::warn!("the respawn supervisor did not end within 5 s of the node");
    }
    stopped
}
