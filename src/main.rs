//! The `ringhost` binary: parse the command line, set up logging, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // A usage error exits 1, like any other error: 2 is what `status` and
    // `members` say of a ring that is not whole (clap would exit 2).
    let cli = match ringhost::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match cli.log_format {
        ringhost::cli::LogFormat::Json => logs.json().init(),
        ringhost::cli::LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
    }
    raise_fd_limit();
    // Before the runtime's threads start: they inherit this thread's mask.
    unblock_stop_signals();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(ringhost::run(cli, shutdown_signal()));
    // A blocking stdin read (the supervisor watch) never ends by itself:
    // don't let it hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ringhost::BindError>().is_some() {
                ExitCode::from(ringhost::EXIT_CANNOT_BIND)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Unblocks SIGINT and SIGTERM in this thread (and so in every thread
/// started after it): the node stops on them (see [`shutdown_signal`]),
/// but a signal mask is inherited across `fork` and `exec`, and a parent
/// that blocks them (a supervisor or harness that takes them with
/// `sigwait`; Rust's `std::process::Command` does not reset the mask of
/// the programs it starts) would leave a SIGTERM pending forever: the node
/// would never stop but by SIGKILL, and would never pass on the particle
/// or say that it leaves. Nothing changes when they are not blocked; a
/// failure (it cannot fail for these signals) is logged.
fn unblock_stop_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if let Err(e) = set.thread_unblock() {
        tracing::warn!(cause = %e, "could not unblock SIGINT and SIGTERM");
    }
}

/// Raises the soft limit on open files to the hard one (as Go's runtime
/// and most servers do): a node's bounds (512 admin connections, 256 on
/// the ring port, refusals in flight, links, modules) need more than the
/// common soft default of 1024 under a flood. Nothing changes when the
/// hard limit is no higher or the call is refused.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (now.current, now.maximum)
        && soft < hard
    {
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::debug!(cause = %e, "could not raise the open-file limit"),
        }
    }
}
