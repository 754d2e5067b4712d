//! Network namespaces made and removed by the harness, and the commands
//! run in them (iproute2, nftables, ethtool).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

/// A network namespace this process made (`ip netns add`); removed on
/// drop (`ip netns del`), after killing any process still in it — only
/// processes started in it by this harness can be there.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes namespace `name` with its loopback up.
    ///
    /// # Errors
    /// When `ip netns add` fails (not root, name taken).
    pub fn add(name: &str) -> Result<Netns> {
        run(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("making network namespace {name}"))?;
        let ns = Netns { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS…`.
    ///
    /// # Errors
    /// When it exits non-zero (its stderr in the error).
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program args…` inside the namespace
    /// (`ip netns exec`, which execs it: the child's PID is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args…` inside the namespace and waits for it.
    ///
    /// # Errors
    /// When it exits non-zero.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<()> {
        run(self.command(program).args(args))
    }

    /// Loads an nftables script (`nft -f -`) inside the namespace.
    ///
    /// # Errors
    /// When nft rejects it.
    pub fn nft(&self, script: &str) -> Result<()> {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (Debian package nftables)")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "nft in {}: {}\n{script}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Moves the calling thread into the namespace: sockets it opens from
    /// then on belong there (they stay there whichever thread uses them).
    ///
    /// # Errors
    /// When setns fails.
    pub fn enter(&self) -> Result<()> {
        let f = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .with_context(|| format!("entering namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// SIGKILLs every process in namespace `name` (`ip netns pids`).
fn kill_all_in(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs a command to completion; an error carries its stderr.
fn run(c: &mut Command) -> Result<()> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Why the harness cannot run here, if it cannot: not root, or a tool
/// missing (`ip`, `nft`, `ethtool`, `tc`).
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("nft", "nftables"),
        ("ethtool", "ethtool"),
    ] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("needs {tool} (Debian package {package})"));
        }
    }
    None
}

/// Removes this process's namespaces (`{prefix}{pid}-…`) and kills what
/// runs in them.
pub fn remove_own(prefix: &str) {
    let own = format!("{prefix}{}-", std::process::id());
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&own) {
            kill_all_in(&name);
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP remove this process's namespaces and
/// what runs in them ([`remove_own`]) before it exits (status 128 + the
/// signal), so a bench stopped with Ctrl-C leaves nothing behind. Call it
/// first in `main`.
///
/// The signals are caught by handlers (tokio's, which write to a pipe read
/// by a thread of its own), never blocked: a signal mask is inherited by
/// every thread and, across `exec`, by every child (Rust's
/// `std::process::Command` does not reset it), and this harness's nodes
/// stop on SIGTERM. With the signals blocked here (as this function did
/// until 2026-12-02), every node started by the bench had SIGTERM blocked
/// (`/proc/PID/status`: `SigBlk: 0000000000004003`, and after a `kill
/// -TERM`, `ShdPnd: 0000000000004000`), so the `restart` fault's SIGTERM
/// stayed pending and the node ran on. A handler is reset to the default
/// action by `exec`, so children start as if nothing was installed.
///
/// # Panics
/// If the handlers cannot be installed.
pub fn clean_up_on_signals(prefix: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime for the signal handlers");
    // Installed here, before returning: no window in which a Ctrl-C
    // kills the bench without the clean-up.
    let mut streams = {
        let _in_runtime = runtime.enter();
        [
            (libc::SIGINT, SignalKind::interrupt()),
            (libc::SIGTERM, SignalKind::terminate()),
            (libc::SIGHUP, SignalKind::hangup()),
        ]
        .map(|(number, kind)| (number, signal(kind).expect("install a signal handler")))
    };
    std::thread::spawn(move || {
        let number = runtime.block_on(async move {
            let [(a, sa), (b, sb), (c, sc)] = &mut streams;
            tokio::select! {
                _ = sa.recv() => *a,
                _ = sb.recv() => *b,
                _ = sc.recv() => *c,
            }
        });
        let name = nix::sys::signal::Signal::try_from(number).map_or("a signal", |s| s.as_str());
        eprintln!("{name}: removing this run's namespaces and processes");
        remove_own(prefix);
        std::process::exit(128 + number);
    });
}

/// Removes namespaces left by earlier runs of this harness whose process
/// is gone (a run that was SIGKILLed cannot clean up after itself).
/// Namespaces are named `{prefix}{pid}-…`.
pub fn sweep_stale(prefix: &str) {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            kill_all_in(&name);
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}
