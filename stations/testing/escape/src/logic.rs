//! The escape station's attempts, as plain functions over std and a small
//! kv trait, so they can be unit tested on the build machine.

use core::hint::black_box;
use std::io::Write;
use std::time::Duration;

use ringhost_station::Config;

/// Largest slot the host accepts (`ring::token::MAX_SLOT_BYTES`, 1 MiB).
pub const MAX_SLOT_BYTES: usize = 1 << 20;

/// Lines written by one `log-flood` visit (half with `host.log`, half on
/// stdout).
pub const FLOOD_LINES: usize = 2_000;

/// The key `kv-plant` writes and `kv-other` looks for.
pub const SECRET_KEY: &str = "secret";

/// What to try at every stop (`try=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Read `/etc/passwd` (and a relative path).
    FsRead,
    /// List `/` and `.`.
    FsList,
    /// Connect over TCP to `127.0.0.1:port`, bind a UDP socket, resolve
    /// `localhost`.
    Socket,
    /// Read the environment, the arguments and the working directory.
    Env,
    /// Write [`SECRET_KEY`] into this station's own namespace (the victim
    /// side of `kv-other`).
    KvPlant,
    /// Read station `victim`'s [`SECRET_KEY`] by every key spelling that
    /// might reach another namespace.
    KvOther,
    /// Allocate until memory cannot grow.
    Memory,
    /// Spin forever in pure compute.
    Loop,
    /// Block in a host call (a WASI clock sleep) for an hour.
    Sleep,
    /// Return a slot one byte over [`MAX_SLOT_BYTES`].
    BigSlot,
    /// Write [`FLOOD_LINES`] log lines in one visit.
    LogFlood,
    /// Write [`FLOOD_LINES`] log lines, then trap (a fresh instance must
    /// not get a fresh log budget).
    LogFloodTrap,
    /// Call `exit(3)` (WASI `cli/exit`).
    Exit,
}

impl Attempt {
    /// All attempts with their `try=` names.
    pub const ALL: &'static [(&'static str, Attempt)] = &[
        ("fs-read", Attempt::FsRead),
        ("fs-list", Attempt::FsList),
        ("socket", Attempt::Socket),
        ("env", Attempt::Env),
        ("kv-plant", Attempt::KvPlant),
        ("kv-other", Attempt::KvOther),
        ("memory", Attempt::Memory),
        ("loop", Attempt::Loop),
        ("sleep", Attempt::Sleep),
        ("big-slot", Attempt::BigSlot),
        ("log-flood", Attempt::LogFlood),
        ("log-flood-trap", Attempt::LogFloodTrap),
        ("exit", Attempt::Exit),
    ];

    /// The `try=` name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("?", |(n, _)| n)
    }
}

/// The station's settings, from its config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What to try.
    pub attempt: Attempt,
    /// The TCP port `socket` connects to on 127.0.0.1.
    pub port: u16,
    /// The station whose namespace `kv-other` tries to read.
    pub victim: String,
}

impl Settings {
    /// Reads `try` (required), `port` (default 1) and `victim` (default
    /// `victim`).
    ///
    /// # Errors
    /// When `try` is missing or unknown, or `port` is not a port.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let name = config.get("try").ok_or("try=… is required")?;
        let attempt = Attempt::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| format!("unknown try={name}"))?;
        Ok(Self {
            attempt,
            port: config.get_or("port", 1u16)?,
            victim: config.get("victim").unwrap_or("victim").to_string(),
        })
    }
}

/// What an attempt got.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Refused, with the error the station got.
    Denied(String),
    /// It worked: what the station could see or do.
    Allowed(String),
    /// Return this as the slot.
    Slot(Vec<u8>),
    /// Nothing to report (the attempt itself is the test).
    Done,
}

/// The station's kv namespace, as the host offers it.
pub trait Kv {
    /// `kv.get`.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// `kv.set`.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    /// `kv.keys`.
    fn keys(&self) -> Vec<String>;
}

/// Makes the attempt `settings` names.
pub fn attempt(settings: &Settings, kv: &dyn Kv) -> Outcome {
    match settings.attempt {
        Attempt::FsRead => fs_read(),
        Attempt::FsList => fs_list(),
        Attempt::Socket => socket(settings.port),
        Attempt::Env => env(),
        Attempt::KvPlant => match kv.set(SECRET_KEY, b"the victim's secret") {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Allowed(format!("kv-plant could not write: {e}")),
        },
        Attempt::KvOther => kv_other(&settings.victim, kv),
        Attempt::Memory => {
            let mut kept: Vec<Vec<u8>> = Vec::new();
            loop {
                kept.push(black_box(vec![0xA5u8; 1 << 20]));
                black_box(&kept);
            }
        }
        Attempt::Loop => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n).wrapping_add(1);
            }
        }
        Attempt::Sleep => {
            std::thread::sleep(Duration::from_secs(3600));
            Outcome::Allowed("slept an hour".into())
        }
        Attempt::BigSlot => Outcome::Slot(vec![0x5A; MAX_SLOT_BYTES + 1]),
        Attempt::LogFlood => {
            flood();
            Outcome::Done
        }
        Attempt::LogFloodTrap => {
            flood();
            panic!("escape: trapping after the flood")
        }
        Attempt::Exit => std::process::exit(3),
    }
}

/// Writes [`FLOOD_LINES`] lines, half with `host.log`, half on stdout.
fn flood() {
    for i in 0..FLOOD_LINES / 2 {
        ringhost_station::info(&format!("flood line {i}"));
        let _ = writeln!(std::io::stdout(), "flood stdout line {i}");
    }
}

/// Joins the results of several tries: allowed if any was.
fn all_denied(tries: Vec<(&str, Result<String, String>)>) -> Outcome {
    let allowed: Vec<String> = tries
        .iter()
        .filter_map(|(what, r)| r.as_ref().ok().map(|ok| format!("{what}: {ok}")))
        .collect();
    if !allowed.is_empty() {
        return Outcome::Allowed(allowed.join("; "));
    }
    Outcome::Denied(
        tries
            .into_iter()
            .map(|(what, r)| format!("{what}: {}", r.err().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

fn fs_read() -> Outcome {
    let read = |p: &str| {
        std::fs::read(p)
            .map(|b| format!("read {} bytes", b.len()))
            .map_err(|e| e.to_string())
    };
    all_denied(vec![
        ("/etc/passwd", read("/etc/passwd")),
        ("Cargo.toml", read("Cargo.toml")),
    ])
}

fn fs_list() -> Outcome {
    let list = |p: &str| {
        std::fs::read_dir(p)
            .map(|d| format!("{} entries", d.count()))
            .map_err(|e| e.to_string())
    };
    all_denied(vec![("/", list("/")), (".", list("."))])
}

fn socket(port: u16) -> Outcome {
    use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .map(|s| format!("connected from {:?}", s.local_addr()))
        .map_err(|e| e.to_string());
    let udp = UdpSocket::bind("0.0.0.0:0")
        .map(|s| format!("bound {:?}", s.local_addr()))
        .map_err(|e| e.to_string());
    let dns = ("localhost", port)
        .to_socket_addrs()
        .map(|a| format!("resolved {:?}", a.collect::<Vec<_>>()))
        .map_err(|e| e.to_string());
    all_denied(vec![
        ("tcp connect", tcp),
        ("udp bind", udp),
        ("dns lookup", dns),
    ])
}

fn env() -> Outcome {
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let args: Vec<String> = std::env::args().collect();
    let cwd = std::env::current_dir();
    let mut seen = Vec::new();
    if !vars.is_empty() {
        seen.push(format!("{} variables ({})", vars.len(), vars.join(",")));
    }
    if !args.is_empty() {
        seen.push(format!("{} arguments", args.len()));
    }
    // With no initial directory from the host, wasi-libc starts at its own
    // root "/" (which maps to no host directory): only another one would
    // tell the station something.
    if let Ok(dir) = &cwd {
        if dir.as_os_str() != "/" {
            seen.push(format!("working directory {}", dir.display()));
        }
    }
    if seen.is_empty() {
        Outcome::Denied(format!(
            "no variables, no arguments, working directory {:?}",
            cwd.map(|d| d.display().to_string())
        ))
    } else {
        Outcome::Allowed(seen.join("; "))
    }
}

/// Every spelling of "station `victim`'s key" a path- or prefix-based
/// namespace might let through.
pub fn other_keys(victim: &str) -> Vec<String> {
    [
        format!("{victim}/{SECRET_KEY}"),
        format!("../{victim}/{SECRET_KEY}"),
        format!("{victim}:{SECRET_KEY}"),
        format!("{victim}\0{SECRET_KEY}"),
        format!("/{victim}/{SECRET_KEY}"),
        format!("{victim}.{SECRET_KEY}"),
    ]
    .into()
}

fn kv_other(victim: &str, kv: &dyn Kv) -> Outcome {
    let mut leaks = Vec::new();
    for key in other_keys(victim) {
        if let Some(v) = kv.get(&key) {
            leaks.push(format!("get({key:?}) gave {} bytes", v.len()));
        }
    }
    // Its own namespace is all it may list; the secret must not be there.
    if kv.get(SECRET_KEY).is_some() {
        leaks.push(format!("get({SECRET_KEY:?}) gave the victim's value"));
    }
    let keys = kv.keys();
    if !keys.is_empty() {
        leaks.push(format!("keys() listed {keys:?}"));
    }
    if leaks.is_empty() {
        Outcome::Denied(format!(
            "nothing of station {victim}'s namespace is reachable ({} spellings tried, keys() empty)",
            other_keys(victim).len()
        ))
    } else {
        Outcome::Allowed(leaks.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attempt_parses_by_its_name() {
        for (name, attempt) in Attempt::ALL {
            let config = Config::from(vec![("try".to_string(), name.to_string())]);
            let s = Settings::from_config(&config).unwrap();
            assert_eq!(s.attempt, *attempt);
            assert_eq!(attempt.name(), *name);
        }
        let bad = Config::from(vec![("try".to_string(), "fly".to_string())]);
        assert!(Settings::from_config(&bad).is_err());
    }

    #[test]
    fn big_slot_is_one_byte_over_the_bound() {
        let s = Settings {
            attempt: Attempt::BigSlot,
            port: 1,
            victim: "v".into(),
        };
        struct NoKv;
        impl Kv for NoKv {
            fn get(&self, _: &str) -> Option<Vec<u8>> {
                None
            }
            fn set(&self, _: &str, _: &[u8]) -> Result<(), String> {
                Ok(())
            }
            fn keys(&self) -> Vec<String> {
                Vec::new()
            }
        }
        match attempt(&s, &NoKv) {
            Outcome::Slot(b) => assert_eq!(b.len(), MAX_SLOT_BYTES + 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(kv_other("v", &NoKv), Outcome::Denied(_)));
    }
}
