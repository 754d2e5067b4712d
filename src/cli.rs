//! Command-line types (clap derive) and their translation into validated
//! configs. Nothing here does I/O beyond reading a ring file.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{
    AdminConfig, CacheConfig, DEFAULT_RING, NodeConfig, RingLayout, StationSpec, split_host_port,
};
use crate::station::builtin;
use crate::tool::deploy::{ConfigAction, PushOptions};
use crate::tool::view::ViewOptions;

mod tokens;
pub use tokens::{At, TokensCmd, Wait};

/// A ring of servers with a particle circling through it; every stop runs
/// WebAssembly stations.
///
/// With no subcommand, runs one node of the ring:
///   ringhost --port 3000 --station stations/tick.wasm
#[derive(Debug, Parser)]
#[command(name = "ringhost", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Run a whole local ring instead of one node.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// One node's settings (when no subcommand is given).
    #[command(flatten)]
    pub node: NodeArgs,
    /// Log line format: `text`, or `json` (one object a line). The level
    /// filter is `RUST_LOG` (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The ring's cluster key file (`ringhost keygen --cluster`), the same
    /// on every member: ring links, module fetches and member status
    /// requests are authenticated and encrypted with it, and a node
    /// without it is refused. A node re-reads it when it changes (key
    /// rotation without a restart: see the README). Tools use it to ask a
    /// node at its ring address.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "RINGHOST_CLUSTER_KEY_FILE"
    )]
    pub cluster_key_file: Option<PathBuf>,
}

impl Cli {
    /// The cluster keys, read from `--cluster-key-file`.
    ///
    /// # Errors
    /// When the file cannot be read or holds no valid key.
    pub fn cluster_keys(&self) -> Result<Option<crate::secure::ClusterKeys>> {
        self.cluster_key_file
            .as_deref()
            .map(crate::secure::ClusterKeys::from_file)
            .transpose()
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object a line.
    Json,
}

/// How a tool authenticates to a node's admin API.
#[derive(Debug, Clone, Args)]
pub struct TokenArg {
    /// File holding the admin token of the node (needed for push,
    /// rollback and config writes when its admin API is not on a
    /// loopback address).
    #[arg(long, value_name = "FILE", env = "RINGHOST_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenArg {
    /// The token, read from the file.
    ///
    /// # Errors
    /// When the file cannot be read or is empty.
    pub fn token(&self) -> Result<Option<String>> {
        self.token_file.as_deref().map(read_token).transpose()
    }
}

/// Reads a token file: its contents, trimmed.
///
/// # Errors
/// When it cannot be read or holds nothing.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the admin token file {}: {e}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!("the admin token file {} is empty", path.display());
    }
    Ok(t)
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a whole local ring: one node process per member, logs
    /// prefixed by node. Ctrl-C or SIGTERM stops every node.
    Up(UpArgs),
    /// Ask a node for its view of the ring: members and liveness, lap and
    /// stay times, the particle's generation.
    ///
    /// "visits here": stops the particle made at this node since it
    /// started. "successors declared dead": times this node found its
    /// successor silent or unreachable and skipped it (a member that
    /// stopped cleanly, a leave, is not counted). "lap ms": time between
    /// two visits here. "stay here ms": from the particle's arrival here to
    /// its departure (stations and hold only; the links are in the lap).
    Status(StatusArgs),
    /// The ring-wide table, as one node gathers it from every member:
    /// member, address, live / dead / not-started, lap p50, faults, and
    /// the stations with their versions. Exit code 0 when every member is
    /// live and runs the same versions, 2 when not, 1 on error.
    Members(StatusArgs),
    /// Push a station module to the whole ring: the node at --to validates
    /// it (compiles it, checks the station world, runs init), then it
    /// travels the ring as a delta and every node hot-swaps it. Waits until
    /// every live node runs it; exits non-zero naming nodes that failed.
    Push(PushArgs),
    /// Bring back the previous version of a station, ring-wide.
    Rollback(RollbackArgs),
    /// Read and write the ring's replicated config (the deploy-delta
    /// station must run on the nodes).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Make an ed25519 key pair for signing pushes: the secret key in
    /// --out, the public key beside it with the extension replaced by .pub
    /// (deploy.key and deploy.pub).
    Keygen(KeygenArgs),
    /// Token correlation (the built-in `tokens` station): status, heavy
    /// hitters, manual blocks that travel the ring, observations, checks.
    #[command(subcommand)]
    Tokens(TokensCmd),
}

/// `ringhost push`.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// The component (`.wasm`) to push.
    pub file: PathBuf,
    /// A node of the ring (`host:port`).
    #[arg(long, value_parser = node_addr)]
    pub to: String,
    /// Station name (default: the file name without `.wasm`).
    #[arg(long = "as", value_name = "NAME")]
    pub name: Option<String>,
    /// `init` config, `key=value`; repeatable.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Sign the module with this secret key file (see `ringhost keygen`;
    /// not the `.pub` file, which is refused).
    #[arg(long, value_name = "KEY")]
    pub key: Option<PathBuf>,
    /// Give up waiting after this long.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout_s: u64,
    /// Return once the first node has accepted it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub auth: TokenArg,
}

/// `ringhost rollback`.
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// Station name.
    pub name: String,
    /// A node of the ring (`host:port`).
    #[arg(long, value_parser = node_addr)]
    pub to: String,
    /// Give up waiting after this long.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout_s: u64,
    #[command(flatten)]
    pub auth: TokenArg,
}

/// `ringhost config`.
#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCmd {
    /// Set KEY to VALUE; returns once the write has left the node on the
    /// particle (it then reaches every node within a lap).
    Set {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// A node of the ring (`host:port`).
        #[arg(long, value_parser = node_addr)]
        to: String,
        #[command(flatten)]
        auth: TokenArg,
    },
    /// Delete KEY ring-wide.
    Delete {
        /// Key.
        key: String,
        /// A node of the ring (`host:port`).
        #[arg(long, value_parser = node_addr)]
        to: String,
        #[command(flatten)]
        auth: TokenArg,
    },
    /// Print KEY's value as the node has applied it (exit 1 if unset, with
    /// or without --json).
    Get {
        /// Key.
        key: String,
        /// A node of the ring (`host:port`).
        #[arg(long, value_parser = node_addr)]
        to: String,
        /// Print the entry's version and writer too, as JSON (an unset key
        /// prints its entry and still exits 1).
        #[arg(long)]
        json: bool,
    },
}

/// `ringhost keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key. The public key goes beside it, the
    /// extension replaced by `.pub` (`deploy.key` -> `deploy.pub`; `deploy`
    /// -> `deploy.pub`). Neither file may exist yet. With --cluster: the
    /// cluster key file (default `cluster.key`).
    #[arg(long, value_name = "KEY")]
    pub out: Option<PathBuf>,
    /// Make a cluster key file (for --cluster-key-file: one random 32-byte
    /// key, mode 0600) instead of a deploy signing key pair.
    #[arg(long)]
    pub cluster: bool,
}

/// `ringhost status` and `ringhost members`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The node's admin address or ring address (`host:port`).
    #[arg(long, value_parser = node_addr)]
    pub to: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

impl StatusArgs {
    /// In plain parameters.
    pub fn options(&self) -> ViewOptions {
        ViewOptions {
            to: self.to.clone(),
            json: self.json,
            watch: self.watch,
            token: None,
        }
    }
}

impl PushArgs {
    /// In plain parameters.
    ///
    /// # Errors
    /// When the token file cannot be read.
    pub fn options(&self) -> Result<PushOptions> {
        Ok(PushOptions {
            file: self.file.clone(),
            to: self.to.clone(),
            name: self.name.clone(),
            config: self.config.clone(),
            key: self.key.clone(),
            timeout_s: self.timeout_s,
            no_wait: self.no_wait,
            token: self.auth.token()?,
        })
    }
}

impl ConfigCmd {
    /// The node, the key, the action and the token.
    ///
    /// # Errors
    /// When the token file cannot be read.
    pub fn options(&self) -> Result<(String, String, ConfigAction, Option<String>)> {
        Ok(match self {
            Self::Set {
                key,
                value,
                to,
                auth,
            } => (
                to.clone(),
                key.clone(),
                ConfigAction::Set(value.clone()),
                auth.token()?,
            ),
            Self::Delete { key, to, auth } => {
                (to.clone(), key.clone(), ConfigAction::Delete, auth.token()?)
            }
            Self::Get { key, to, json } => (
                to.clone(),
                key.clone(),
                ConfigAction::Get { json: *json },
                None,
            ),
        })
    }
}

/// A node's address as tools take it (`--to`): `host:port`. A bare port
/// or a name without a port is refused with the form to use.
///
/// # Errors
/// When `arg` has no `:port` part or the port is not a number.
pub fn node_addr(arg: &str) -> Result<String, String> {
    if arg.parse::<u16>().is_ok() {
        return Err(format!(
            "{arg:?} is a port alone; give host:port, e.g. 127.0.0.1:{arg}"
        ));
    }
    match arg.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(arg.into()),
        _ => Err(format!(
            "{arg:?} is not host:port; give e.g. 127.0.0.1:3000"
        )),
    }
}

/// Settings shared by a single node and by every node of `up`.
#[derive(Debug, Clone, Args)]
pub struct StationArgs {
    /// A station to run at every stop, in order; repeatable. A `.wasm`
    /// component path or a built-in (tick, delay, echo, deploy-delta, tokens), with optional
    /// settings and name: `[NAME=]SOURCE[:key=value,...]`, e.g.
    /// `stations/delay.wasm:ms=100,ms@3=500`. Default: the built-in tick.
    #[arg(long = "station", value_name = "SPEC")]
    pub stations: Vec<String>,

    /// Hold the particle at least this long at every stop (0 = full speed).
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub delay_ms: u64,

    /// Deadline of one station call; a call past it is interrupted.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub station_timeout_ms: u64,

    /// Linear memory limit of one station instance.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub station_memory_mib: usize,

    /// Fuel budget of one station call, in wasmtime fuel units (about one
    /// per wasm instruction), beside --station-timeout-ms: a call that
    /// uses it up is interrupted like a timeout. Default: no fuel metering
    /// (it slows every call; see the README, "Station fuel").
    #[arg(long, value_name = "UNITS")]
    pub station_fuel: Option<u64>,

    /// A successor silent this long (no pong, no ack) is declared dead;
    /// it is pinged every fifth of it. A link whose measured round trips
    /// need longer gets longer (3 x RTO + ping interval). The default was
    /// measured on shaped links: no false failure in 10 minutes at 5 %
    /// packet loss (README, "A real fleet").
    #[arg(long, value_name = "MS", default_value_t = 400)]
    pub failure_timeout_ms: u64,

    /// Backstop for a lost particle: regenerate after this long without
    /// one (at least three laps).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub token_timeout_ms: u64,

    /// Where compiled stations are cached between runs (default:
    /// $XDG_CACHE_HOME/ringhost or ~/.cache/ringhost; `none` disables).
    /// Entries are checked by sha-256 before loading; a damaged one is
    /// recompiled.
    #[arg(long, value_name = "DIR", env = "RINGHOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Keep deployed modules and release records here, so a restarted
    /// node runs the latest version it had (`up`: one subdirectory per
    /// node). Damaged files are moved aside (`*.damaged-<time>`). Default:
    /// in memory only.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Accept only modules signed by this public key (hex, or a file
    /// holding it); repeatable.
    #[arg(long, value_name = "PUBKEY")]
    pub trust: Vec<String>,

    /// Sign modules dropped into watched station files with this key.
    #[arg(long, value_name = "KEY")]
    pub key: Option<PathBuf>,

    /// Do not watch station files for changes.
    #[arg(long)]
    pub no_watch: bool,

    /// Apply a changed station file on this node only, instead of pushing
    /// it to the whole ring.
    #[arg(long)]
    pub no_push_on_change: bool,

    /// Roll a station back on this node after this many traps, timeouts or
    /// failed inits within --rollback-window-ms (0: never).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub rollback_after: u32,

    /// The window for --rollback-after.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub rollback_window_ms: u64,
}

/// Running one node.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// This node's port: picks the member of the ring with that port.
    #[arg(long)]
    pub port: Option<u16>,

    /// This node's member name in the ring (instead of --port).
    #[arg(long, conflicts_with = "port")]
    pub name: Option<String>,

    /// The ring enumeration, identical on every node: a range
    /// (127.0.0.1:3000-3010), a list (a:1,b:2), or a file of
    /// `name = "host:port"` lines.
    #[arg(long, value_name = "RING", default_value = DEFAULT_RING)]
    pub ring: String,

    /// Address to bind the ring port to (default: the member's address).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Address of the admin HTTP API (status, ring view, events, metrics,
    /// push…), or `off`. Default: 127.0.0.1 at the ring port + 1000. A
    /// non-loopback address needs --admin-token-file.
    #[arg(long, value_name = "ADDR|off")]
    pub admin: Option<String>,

    /// File holding the admin API's bearer token: required with a
    /// non-loopback --admin; mutating requests must then carry
    /// `Authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Listen beyond loopback without a cluster key: ring links are then
    /// plain, and anyone who reaches the port can speak the ring protocol.
    /// Without this flag and without --cluster-key-file, the ring and
    /// admin ports are bound to loopback only.
    #[arg(long)]
    pub insecure: bool,

    /// Receive station inputs as UDP datagrams (`STATION\npayload`) on
    /// this address, or `auto`: 127.0.0.1 at the ring port + 2000. Inputs
    /// are not authenticated: a non-loopback address needs --insecure.
    #[arg(long, value_name = "ADDR|auto")]
    pub input_udp: Option<String>,

    /// Receive station inputs as datagrams (`STATION\npayload`) on a Unix
    /// datagram socket made at this path (mode 0660, removed at exit).
    #[arg(long, value_name = "PATH")]
    pub input_unix: Option<PathBuf>,

    /// Serve a memcached-compatible cache (text protocol) on this address,
    /// or `auto`: 127.0.0.1 at the ring port + 8211 (3000 -> 11211). Each
    /// node serves its own store for now (keys are not spread over the
    /// ring). Not authenticated: a non-loopback address needs --insecure.
    #[arg(long, value_name = "ADDR|auto")]
    pub cache: Option<String>,

    /// Memory bound of the cache in MiB (items are evicted least recently
    /// used first past it).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub cache_memory_mib: usize,

    /// Restart a dead successor that lives on this machine, with this
    /// node's command line (under `ringhost up` the supervisor does it).
    #[arg(long)]
    pub respawn: bool,

    /// Exit when standard input closes (used by `ringhost up`, so nodes
    /// never outlive their supervisor).
    #[arg(long, hide = true)]
    pub exit_on_stdin_eof: bool,

    #[command(flatten)]
    pub stations: StationArgs,
}

/// `ringhost up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 11)]
    pub nodes: u16,

    /// Port of the first node; the others follow.
    #[arg(long, default_value_t = 3000)]
    pub base_port: u16,

    /// Host all nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// Do not restart nodes that die.
    #[arg(long)]
    pub no_respawn: bool,

    /// Pass --insecure to every node (listen beyond loopback without a
    /// cluster key).
    #[arg(long)]
    pub insecure: bool,

    /// Admin API port of the first node (on 127.0.0.1); the others
    /// follow. Default: --base-port + 1000.
    #[arg(long)]
    pub admin_base_port: Option<u16>,

    /// Give every node a UDP datagram input (`--input-udp auto`: each
    /// node on 127.0.0.1 at its ring port + 2000, so 5000–5010 by
    /// default).
    #[arg(long)]
    pub input_udp: bool,

    /// Give every node a memcached-compatible cache (`--cache auto`: each
    /// node on 127.0.0.1 at its ring port + 8211, so 11211–11221 by
    /// default).
    #[arg(long)]
    pub cache: bool,

    /// The cache memory bound of each node in MiB (with --cache).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub cache_memory_mib: usize,

    /// The program to run for each node (default: this executable).
    #[arg(long, hide = true)]
    pub node_program: Option<PathBuf>,

    #[command(flatten)]
    pub stations: StationArgs,
}

impl StationArgs {
    /// The compile cache directory to use, if any.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match &self.cache_dir {
            Some(d) if d.as_os_str() == "none" => None,
            Some(d) => Some(d.clone()),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|base| base.join("ringhost")),
        }
    }

    /// Parsed station specs (the built-in tick when none is given).
    ///
    /// # Errors
    /// When a spec does not parse or names a missing file.
    pub fn specs(&self) -> Result<Vec<StationSpec>> {
        if self.stations.is_empty() {
            return Ok(vec![StationSpec::builtin("tick")]);
        }
        self.stations
            .iter()
            .map(|s| StationSpec::parse(s, builtin::NAMES))
            .collect()
    }

    /// The flags to give a child node so it runs the same stations.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.stations {
            out.push("--station".into());
            out.push(s.clone());
        }
        out.extend([
            "--delay-ms".into(),
            self.delay_ms.to_string(),
            "--station-timeout-ms".into(),
            self.station_timeout_ms.to_string(),
            "--station-memory-mib".into(),
            self.station_memory_mib.to_string(),
            "--failure-timeout-ms".into(),
            self.failure_timeout_ms.to_string(),
            "--token-timeout-ms".into(),
            self.token_timeout_ms.to_string(),
        ]);
        for t in &self.trust {
            out.extend(["--trust".into(), t.clone()]);
        }
        if let Some(k) = &self.key {
            out.extend(["--key".into(), k.display().to_string()]);
        }
        if let Some(fuel) = self.station_fuel {
            out.extend(["--station-fuel".into(), fuel.to_string()]);
        }
        if self.no_watch {
            out.push("--no-watch".into());
        }
        if self.no_push_on_change {
            out.push("--no-push-on-change".into());
        }
        out.extend([
            "--rollback-after".into(),
            self.rollback_after.to_string(),
            "--rollback-window-ms".into(),
            self.rollback_window_ms.to_string(),
        ]);
        if let Some(dir) = self.cache_dir() {
            out.push("--cache-dir".into());
            out.push(dir.display().to_string());
        } else {
            out.extend(["--cache-dir".into(), "none".into()]);
        }
        out
    }

    fn apply(&self, config: &mut NodeConfig) -> Result<()> {
        config.stations = self.specs()?;
        config.delay_ms = self.delay_ms;
        config.station_timeout_ms = self.station_timeout_ms;
        config.station_memory_bytes = self.station_memory_mib << 20;
        config.station_fuel = self.station_fuel;
        config.failure_timeout_ms = self.failure_timeout_ms;
        config.handshake_timeout_ms = self.failure_timeout_ms;
        config.heartbeat_interval_ms = (self.failure_timeout_ms / 5).max(1);
        config.token_timeout_ms = self.token_timeout_ms;
        let d = &mut config.deploy;
        d.data_dir.clone_from(&self.data_dir);
        d.trust = self
            .trust
            .iter()
            .map(|t| crate::deploy::sign::parse_public(t))
            .collect::<Result<_>>()?;
        d.sign_key.clone_from(&self.key);
        d.watch = !self.no_watch;
        d.push_on_change = !self.no_push_on_change;
        d.rollback_after = self.rollback_after;
        d.rollback_window_ms = self.rollback_window_ms;
        Ok(())
    }
}

/// `--cache auto` puts a node's cache this far above its ring port (3000
/// -> 11211, memcached's port).
pub const CACHE_PORT_OFFSET: u16 = 8211;

/// Whether `addr` (`host:port`) is a loopback address.
fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
        || addr.starts_with("localhost:")
}

impl NodeArgs {
    /// The validated node config.
    ///
    /// # Errors
    /// When the ring does not parse, the node is not a member, or a
    /// setting is invalid.
    pub fn to_config(&self) -> Result<NodeConfig> {
        let ring = RingLayout::parse(&self.ring)?;
        let index = match (&self.name, self.port) {
            (Some(name), _) => ring.index_by_name(name)?,
            (None, Some(port)) => ring.index_by_port(port)?,
            (None, None) => bail!(
                "say which member this node is: --port PORT or --name NAME \
                 (or run a whole local ring with `ringhost up`)"
            ),
        };
        let mut config = NodeConfig::new(ring, index);
        self.stations.apply(&mut config)?;
        config.admin = self.admin_config(&config)?;
        config.input_udp = self.input_udp_config(&config)?;
        config.input_unix.clone_from(&self.input_unix);
        config.cache = self.cache_config(&config)?;
        config.validate()?;
        Ok(config)
    }

    /// `--cache`: `auto` is 127.0.0.1 at the ring port + 8211; an address
    /// beyond loopback needs `--insecure`.
    ///
    /// # Errors
    /// A non-loopback address without `--insecure`, no port 8211 above the
    /// ring port, or a memory bound under 1 MiB or too large.
    fn cache_config(&self, config: &NodeConfig) -> Result<Option<CacheConfig>> {
        let Some(given) = self.cache.as_deref() else {
            return Ok(None);
        };
        let listen = if given == "auto" {
            let ring_addr = self.listen.as_deref().unwrap_or(&config.me().addr);
            let (_, port) = split_host_port(ring_addr)?;
            let cache = port.checked_add(CACHE_PORT_OFFSET).ok_or_else(|| {
                anyhow::anyhow!("ring port {port} has no port 8211 above it: give --cache ADDR")
            })?;
            format!("127.0.0.1:{cache}")
        } else {
            given.to_string()
        };
        if !is_loopback(&listen) && !self.insecure {
            bail!(
                "--cache {listen} is not a loopback address: the cache protocol is not \
                 authenticated; pass --insecure to serve it to the network"
            );
        }
        let mut cache = CacheConfig::at(listen);
        cache.memory_bytes = self
            .cache_memory_mib
            .checked_mul(1 << 20)
            .filter(|_| self.cache_memory_mib >= 1)
            .ok_or_else(|| anyhow::anyhow!("--cache-memory-mib must be at least 1 (and fit)"))?;
        Ok(Some(cache))
    }

    /// `--input-udp`: `auto` is 127.0.0.1 at the ring port + 2000; an
    /// address beyond loopback needs `--insecure`.
    ///
    /// # Errors
    /// A non-loopback address without `--insecure`, or no port 2000 above.
    fn input_udp_config(&self, config: &NodeConfig) -> Result<Option<String>> {
        let Some(given) = self.input_udp.as_deref() else {
            return Ok(None);
        };
        let addr = if given == "auto" {
            let ring_addr = self.listen.as_deref().unwrap_or(&config.me().addr);
            let (_, port) = split_host_port(ring_addr)?;
            let udp = port.checked_add(2000).ok_or_else(|| {
                anyhow::anyhow!("ring port {port} has no port 2000 above it: give --input-udp ADDR")
            })?;
            format!("127.0.0.1:{udp}")
        } else {
            given.to_string()
        };
        if !is_loopback(&addr) && !self.insecure {
            bail!(
                "--input-udp {addr} is not a loopback address: datagram inputs are not \
                 authenticated; pass --insecure to accept them from the network"
            );
        }
        Ok(Some(addr))
    }

    /// The admin API settings: `--admin`, or 127.0.0.1 at the ring port
    /// + 1000; `None` for `--admin off`.
    ///
    /// # Errors
    /// When the ring port has no admin port 1000 above it, or the token
    /// file cannot be read.
    fn admin_config(&self, config: &NodeConfig) -> Result<Option<AdminConfig>> {
        let token = self
            .admin_token_file
            .as_deref()
            .map(read_token)
            .transpose()?;
        let listen = match self.admin.as_deref() {
            Some("off") => return Ok(None),
            Some(addr) => addr.to_string(),
            None => {
                let ring_addr = self.listen.as_deref().unwrap_or(&config.me().addr);
                let (_, port) = split_host_port(ring_addr)?;
                let admin = port.checked_add(1000).ok_or_else(|| {
                    anyhow::anyhow!(
                        "ring port {port} has no admin port 1000 above it: give --admin ADDR"
                    )
                })?;
                format!("127.0.0.1:{admin}")
            }
        };
        Ok(Some(AdminConfig::at(listen, token)))
    }
}

impl UpArgs {
    /// The ring `up` starts.
    ///
    /// # Errors
    /// When the port range overflows or is empty.
    pub fn ring(&self) -> Result<String> {
        if self.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        let last = u32::from(self.base_port) + u32::from(self.nodes) - 1;
        if last > u32::from(u16::MAX) {
            bail!(
                "--base-port {} + --nodes {} passes port 65535",
                self.base_port,
                self.nodes
            );
        }
        Ok(format!("{}:{}-{}", self.host, self.base_port, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_picks_the_member_and_defaults_to_tick() {
        let cli = Cli::parse_from(["ringhost", "--port", "3004"]);
        let cfg = cli.node.to_config().unwrap();
        assert_eq!(cfg.index, 4);
        assert_eq!(cfg.ring.len(), 11);
        assert_eq!(cfg.stations, vec![StationSpec::builtin("tick")]);
    }

    #[test]
    fn tools_take_host_and_port_and_say_so_for_a_bare_port() {
        let err = Cli::try_parse_from(["ringhost", "status", "--to", "3000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("127.0.0.1:3000"), "{err}");
        let err = node_addr("localhost").unwrap_err();
        assert!(err.contains("host:port"), "{err}");
        assert_eq!(node_addr("127.0.0.1:3000").unwrap(), "127.0.0.1:3000");
        assert_eq!(node_addr("[::1]:3000").unwrap(), "[::1]:3000");
        assert!(node_addr("node-a.example:3000").is_ok());
    }

    #[test]
    fn a_node_must_say_who_it_is() {
        let cli = Cli::parse_from(["ringhost"]);
        assert!(cli.node.to_config().is_err());
    }

    #[test]
    fn up_takes_its_flags_and_builds_the_ring() {
        let cli = Cli::parse_from([
            "ringhost",
            "up",
            "--nodes",
            "3",
            "--base-port",
            "4000",
            "--station",
            "delay:ms=5",
            "--delay-ms",
            "0",
        ]);
        let Some(Command::Up(up)) = cli.command else {
            panic!("up parsed")
        };
        assert_eq!(up.ring().unwrap(), "127.0.0.1:4000-4002");
        assert_eq!(up.stations.delay_ms, 0);
        assert!(up.stations.to_args().contains(&"delay:ms=5".to_string()));
    }

    #[test]
    fn station_fuel_is_off_by_default_and_up_passes_it_to_its_nodes() {
        let cli = Cli::parse_from(["ringhost", "--port", "3000"]);
        assert_eq!(cli.node.to_config().unwrap().station_fuel, None);
        let cli = Cli::parse_from(["ringhost", "--port", "3000", "--station-fuel", "5000000"]);
        assert_eq!(cli.node.to_config().unwrap().station_fuel, Some(5_000_000));
        let cli = Cli::parse_from(["ringhost", "--port", "3000", "--station-fuel", "0"]);
        let err = format!("{:#}", cli.node.to_config().unwrap_err());
        assert!(err.contains("station fuel must be > 0"), "{err}");
        let cli = Cli::parse_from(["ringhost", "up", "--station-fuel", "7"]);
        let Some(Command::Up(up)) = cli.command else {
            panic!("up parsed")
        };
        let args = up.stations.to_args();
        assert!(
            args.windows(2).any(|w| w == ["--station-fuel", "7"]),
            "{args:?}"
        );
    }

    #[test]
    fn cache_auto_sits_8211_above_the_ring_port_and_needs_insecure_beyond_loopback() {
        let cfg = Cli::parse_from(["ringhost", "--port", "3000"])
            .node
            .to_config()
            .unwrap();
        assert!(cfg.cache.is_none());
        let cli = Cli::parse_from(["ringhost", "--port", "3002", "--cache", "auto"]);
        let cache = cli.node.to_config().unwrap().cache.unwrap();
        assert_eq!(cache.listen, "127.0.0.1:11213");
        assert_eq!(cache.memory_bytes, 64 << 20);
        let cli = Cli::parse_from([
            "ringhost",
            "--port",
            "3000",
            "--cache",
            "127.0.0.1:0",
            "--cache-memory-mib",
            "8",
        ]);
        assert_eq!(
            cli.node.to_config().unwrap().cache.unwrap().memory_bytes,
            8 << 20
        );
        let cli = Cli::parse_from(["ringhost", "--port", "3000", "--cache", "0.0.0.0:11211"]);
        let err = cli.node.to_config().unwrap_err().to_string();
        assert!(err.contains("--insecure"), "{err}");
        let cli = Cli::parse_from([
            "ringhost",
            "--port",
            "3000",
            "--cache",
            "auto",
            "--cache-memory-mib",
            "0",
        ]);
        assert!(cli.node.to_config().is_err());
    }
}
