//! Validated configuration: the ring enumeration ([`RingLayout`]), station
//! specs ([`StationSpec`]) and the per-node settings ([`NodeConfig`]).
//!
//! This module owns parsing and validation only. The CLI (`cli.rs`) turns
//! flags into these types; nothing below reads flags or environment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

/// The default ring of the seed prototype: 11 nodes on 127.0.0.1:3000–3010.
pub const DEFAULT_RING: &str = "127.0.0.1:3000-3010";

/// One member of the ring enumeration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's name (`dc1/prod/0`, or its address when none was given).
    pub name: String,
    /// `host:port` to dial; resolved at dial time.
    pub addr: String,
}

/// The ring enumeration: who is in the ring and in which order. Picked at
/// start and identical on every node (checked with [`RingLayout::hash`] in
/// the link handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingLayout {
    members: Vec<Member>,
    hash: String,
}

impl RingLayout {
    /// Builds a layout from members.
    ///
    /// # Errors
    /// When the list is empty, or a name or address appears twice.
    pub fn new(members: Vec<Member>) -> Result<Self> {
        ensure!(!members.is_empty(), "the ring enumeration has no members");
        ensure!(
            members.len() <= u32::MAX as usize,
            "the ring enumeration is too large"
        );
        for (i, m) in members.iter().enumerate() {
            ensure!(!m.name.is_empty(), "member {i} has an empty name");
            ensure!(
                !m.name.contains(['\n', '=']),
                "member name {:?} contains '=' or a newline",
                m.name
            );
            split_host_port(&m.addr).with_context(|| format!("member {:?}", m.name))?;
            if let Some(j) = members[..i].iter().position(|o| o.name == m.name) {
                bail!(
                    "member name {:?} appears twice (positions {j} and {i})",
                    m.name
                );
            }
            if let Some(j) = members[..i].iter().position(|o| o.addr == m.addr) {
                bail!("address {} appears twice (positions {j} and {i})", m.addr);
            }
        }
        let mut h = Sha256::new();
        for m in &members {
            h.update(m.name.as_bytes());
            h.update(b"=");
            h.update(m.addr.as_bytes());
            h.update(b"\n");
        }
        let hash = hex(&h.finalize());
        Ok(Self { members, hash })
    }

    /// A layout whose members are named by their addresses.
    ///
    /// # Errors
    /// As [`RingLayout::new`].
    pub fn from_addrs<I, S>(addrs: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: fmt::Display,
    {
        Self::new(
            addrs
                .into_iter()
                .map(|a| Member {
                    name: a.to_string(),
                    addr: a.to_string(),
                })
                .collect(),
        )
    }

    /// Parses `--ring`: a range `host:3000-3010`, a comma-separated list of
    /// `host:port`, or the path of a file with one `name = "host:port"` per
    /// line (`#` starts a comment).
    ///
    /// # Errors
    /// When the text is none of those, names a missing file, or the result
    /// is invalid as in [`RingLayout::new`].
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let path = Path::new(spec);
        if path.is_file() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading ring file {}", path.display()))?;
            return Self::parse_file(&text)
                .with_context(|| format!("in ring file {}", path.display()));
        }
        if spec.contains(',') {
            let addrs: Vec<&str> = spec
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            return Self::from_addrs(addrs);
        }
        let (host, port) = split_host_port_str(spec).with_context(|| {
            format!(
                "--ring {spec:?} is not a file, a range (127.0.0.1:3000-3010) or a list (a:1,b:2)"
            )
        })?;
        if let Some((lo, hi)) = port.split_once('-') {
            let lo: u16 = lo
                .parse()
                .with_context(|| format!("bad first port {lo:?} in {spec:?}"))?;
            let hi: u16 = hi
                .parse()
                .with_context(|| format!("bad last port {hi:?} in {spec:?}"))?;
            ensure!(lo <= hi, "port range {lo}-{hi} is empty");
            return Self::from_addrs((lo..=hi).map(|p| join_host_port(host, p)));
        }
        Self::from_addrs([spec])
    }

    fn parse_file(text: &str) -> Result<Self> {
        let mut members = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (name, addr) = line
                .split_once('=')
                .with_context(|| format!("line {}: expected `name = \"host:port\"`", n + 1))?;
            let unquote = |s: &str| s.trim().trim_matches('"').to_string();
            members.push(Member {
                name: unquote(name),
                addr: unquote(addr),
            });
        }
        Self::new(members)
    }

    /// The members in ring order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a layout has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Hex sha-256 of the enumeration (names, addresses, order).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The index of the member whose port is `port` (and, when several
    /// share the port, whose host is local).
    ///
    /// # Errors
    /// When no member, or more than one non-local member, has that port.
    pub fn index_by_port(&self, port: u16) -> Result<usize> {
        let hits: Vec<usize> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| split_host_port(&m.addr).is_ok_and(|(_, p)| p == port))
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            [] => bail!(
                "no member of the ring has port {port} (ring: {})",
                self.describe()
            ),
            many => {
                let local: Vec<usize> = many
                    .iter()
                    .copied()
                    .filter(|&i| is_local_host(&self.members[i].addr))
                    .collect();
                match local.as_slice() {
                    [i] => Ok(*i),
                    _ => bail!("several members have port {port}: pick one with --name"),
                }
            }
        }
    }

    /// The index of the member called `name`.
    ///
    /// # Errors
    /// When no member has that name.
    pub fn index_by_name(&self, name: &str) -> Result<usize> {
        self.members
            .iter()
            .position(|m| m.name == name)
            .with_context(|| format!("no member of the ring is named {name:?}"))
    }

    /// A short human description (`127.0.0.1:3000 … 127.0.0.1:3010, 11 members`).
    pub fn describe(&self) -> String {
        let first = &self.members[0].name;
        let last = &self.members[self.members.len() - 1].name;
        if self.members.len() == 1 {
            format!("{first}, 1 member")
        } else {
            format!("{first} … {last}, {} members", self.members.len())
        }
    }
}

/// Whether `host:port` names this machine (`localhost` or a loopback IP).
pub fn is_local_host(addr: &str) -> bool {
    split_host_port(addr).is_ok_and(|(h, _)| {
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

fn split_host_port_str(s: &str) -> Result<(&str, &str)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{s:?} has no :port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ensure!(!host.is_empty(), "{s:?} has an empty host");
    Ok((host, port))
}

/// Splits `host:port` (IPv6 hosts in brackets).
///
/// # Errors
/// When there is no port or it is not a number.
pub fn split_host_port(s: &str) -> Result<(&str, u16)> {
    let (host, port) = split_host_port_str(s)?;
    let port = port
        .parse()
        .with_context(|| format!("{s:?}: port {port:?} is not a number from 0 to 65535"))?;
    Ok((host, port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Where a station's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StationSource {
    /// A component built into the binary (`tick`, `delay`, `echo`).
    Builtin(String),
    /// A `.wasm` component file.
    File(PathBuf),
}

/// One station of the pipeline: where it comes from, its name, its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationSpec {
    /// The station's name: it keys the slot in the particle, the kv
    /// namespace and the inbox. Defaults to the file stem.
    pub name: String,
    /// The component.
    pub source: StationSource,
    /// `key=value` settings passed to the station's `init`, in order.
    pub config: Vec<(String, String)>,
}

impl StationSpec {
    /// Parses `--station`: `SOURCE[:key=value[,key=value…]]`, where SOURCE is
    /// a `.wasm` path or the name of a built-in station, optionally prefixed
    /// with `NAME=` to rename it (`fast=stations/delay.wasm:ms=1`).
    ///
    /// # Errors
    /// When a setting is not `key=value`, the name is invalid, or SOURCE is
    /// neither an existing `.wasm` file nor a built-in station.
    pub fn parse(spec: &str, builtins: &[&str]) -> Result<Self> {
        let (head, settings) = match spec.split_once(':') {
            Some((h, s)) => (h, Some(s)),
            None => (spec, None),
        };
        let (rename, source) = match head.split_once('=') {
            Some((n, s)) => (Some(n.trim()), s.trim()),
            None => (None, head.trim()),
        };
        ensure!(!source.is_empty(), "--station {spec:?} names no station");
        let mut config = Vec::new();
        for kv in settings.into_iter().flat_map(|s| s.split(',')) {
            if kv.trim().is_empty() {
                continue;
            }
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("station setting {kv:?} in {spec:?} is not key=value"))?;
            ensure!(!k.trim().is_empty(), "empty key in station setting {kv:?}");
            config.push((k.trim().to_string(), v.trim().to_string()));
        }
        let source_path = Path::new(source);
        let (default_name, source) = if source.ends_with(".wasm") || source.contains('/') {
            ensure!(
                source_path.is_file(),
                "station file {} does not exist{}",
                source_path.display(),
                if source.starts_with("stations/") {
                    " (build the stations first: stations/build.sh)"
                } else {
                    ""
                }
            );
            let stem = source_path
                .file_stem()
                .and_then(|s| s.to_str())
                .context("station file has no usable name")?;
            (
                stem.to_string(),
                StationSource::File(source_path.to_path_buf()),
            )
        } else if builtins.contains(&source) {
            (
                source.to_string(),
                StationSource::Builtin(source.to_string()),
            )
        } else {
            bail!(
                "--station {source:?} is neither a .wasm file nor a built-in station ({})",
                builtins.join(", ")
            );
        };
        let name = rename.map_or(default_name, str::to_string);
        validate_station_name(&name)?;
        Ok(Self {
            name,
            source,
            config,
        })
    }

    /// A built-in station with no config.
    pub fn builtin(name: &str) -> Self {
        Self {
            name: name.to_string(),
            source: StationSource::Builtin(name.to_string()),
            config: Vec::new(),
        }
    }

    /// A station from a file, named after its stem, with no config.
    ///
    /// # Panics
    /// If the path has no UTF-8 file stem.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("station path has a UTF-8 stem")
            .to_string();
        Self {
            name,
            source: StationSource::File(path),
            config: Vec::new(),
        }
    }

    /// Adds a `key=value` setting.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_string(), value.to_string()));
        self
    }
}

/// A station name: 1–64 characters of `[A-Za-z0-9_.-]`.
///
/// # Errors
/// When the name does not fit.
pub fn validate_station_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')),
        "station name {name:?} must be 1-64 characters of letters, digits, '_', '-', '.'"
    );
    Ok(())
}

/// Everything one node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The ring enumeration, the same on every node.
    pub ring: RingLayout,
    /// This node's position in `ring`.
    pub index: usize,
    /// The station pipeline, run in this order at every stop.
    pub stations: Vec<StationSpec>,
    /// Minimum time to hold the particle at each stop (the stations may ask
    /// for more).
    pub delay_ms: u64,
    /// First retry delay when dialing the successor fails.
    pub dial_backoff_min_ms: u64,
    /// Cap on the retry delay (kept short so a ring forms fast whatever
    /// the start order).
    pub dial_backoff_max_ms: u64,
    /// Bound on TCP connect plus the hello exchange.
    pub handshake_timeout_ms: u64,
    /// Open connections on the ring port at most (links, fetches, status
    /// requests and connections not past their hello yet). At the bound a
    /// connection not past its hello makes room for a newcomer; when all
    /// are past it, the newcomer is closed (see `crate::conns`).
    pub max_ring_connections: usize,
    /// How often a node pings its successor.
    pub heartbeat_interval_ms: u64,
    /// A successor silent this long is declared dead and skipped.
    pub failure_timeout_ms: u64,
    /// How often a skipped member is probed for its return.
    pub probe_interval_ms: u64,
    /// Backstop for a lost particle: with none seen for this long (at
    /// least three laps, staggered by rank), one is regenerated.
    pub token_timeout_ms: u64,
    /// Bound on one write to the successor.
    pub write_timeout_ms: u64,
    /// Bound on one station call (`init` or `on-particle`).
    pub station_timeout_ms: u64,
    /// Linear memory limit of each station instance.
    pub station_memory_bytes: usize,
    /// Fuel budget of one station call, in wasmtime fuel units (about one
    /// per wasm instruction executed), beside the `station_timeout_ms`
    /// deadline: a call that uses it up traps and is reported like a
    /// timeout ("ran out of fuel (N units)"). `None` (the default): no
    /// fuel metering, which costs time on every call (README, "Station
    /// fuel").
    pub station_fuel: Option<u64>,
    /// Largest frame accepted on the ring port.
    pub max_frame_bytes: usize,
    /// Deploy settings.
    pub deploy: DeployConfig,
    /// The admin HTTP API (`None`: off).
    pub admin: Option<AdminConfig>,
    /// The cluster keys every member link and fetch is authenticated and
    /// encrypted with (`--cluster-key-file`, see `crate::secure`); `None`:
    /// plain links, which a node only accepts on loopback unless
    /// `--insecure`.
    pub cluster_keys: Option<crate::secure::ClusterKeys>,
    /// Where datagram inputs arrive over UDP (`--input-udp`; `None`:
    /// off). See `node::ingest`.
    pub input_udp: Option<String>,
    /// Where datagram inputs arrive over a Unix datagram socket
    /// (`--input-unix`; `None`: off).
    pub input_unix: Option<std::path::PathBuf>,
    /// The memcached-compatible cache this node serves (`--cache`;
    /// `None`: off). See `crate::cache`.
    pub cache: Option<CacheConfig>,
}

/// A node's cache server (see `crate::cache::server` for the bounds).
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Address to bind (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// Bytes of items held at most (`--cache-memory-mib`, default 64 MiB),
    /// charged as `crate::cache::store` says.
    pub memory_bytes: usize,
    /// Largest item (key + value + per-item overhead), default 1 MiB.
    pub item_max_bytes: usize,
    /// Open connections at most (default 1024).
    pub max_connections: usize,
    /// Time a started command gets to arrive whole (default 30 s).
    pub command_timeout_ms: u64,
    /// Time a client gets to take a reply (default 30 s).
    pub write_timeout_ms: u64,
}

impl CacheConfig {
    /// The cache at `listen` with the default bounds.
    pub fn at(listen: impl Into<String>) -> Self {
        Self {
            listen: listen.into(),
            memory_bytes: 64 << 20,
            item_max_bytes: 1 << 20,
            max_connections: 1024,
            command_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
        }
    }

    /// Checks the bounds, saying what is wrong in words.
    ///
    /// # Errors
    /// When the item limit is under 1 KiB or over the memory bound, or a
    /// timeout or the connection cap is zero.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.item_max_bytes >= 1 << 10,
            "the cache item size limit must be at least 1 KiB"
        );
        ensure!(
            self.memory_bytes >= self.item_max_bytes,
            "the cache memory bound ({} bytes) must hold one item of the size limit ({} bytes)",
            self.memory_bytes,
            self.item_max_bytes
        );
        ensure!(
            self.max_connections > 0,
            "the cache must take at least one connection"
        );
        ensure!(
            self.command_timeout_ms > 0 && self.write_timeout_ms > 0,
            "the cache's timeouts must be > 0"
        );
        Ok(())
    }
}

/// A node's admin HTTP API (see `crate::admin`).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address to bind (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// The bearer token mutating requests must carry when
    /// `require_token` (read from `--admin-token-file`).
    pub token: Option<String>,
    /// Whether mutating requests need the token. [`AdminConfig::at`] sets
    /// it when `listen` is not a loopback address; tests may force it.
    pub require_token: bool,
    /// Bounds on the server's connections (see `crate::admin::listen`).
    pub limits: AdminLimits,
}

/// Bounds on an admin server's connections (see `crate::admin::listen`
/// for what happens at each).
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Open connections at most (default 512).
    pub max_connections: usize,
    /// Time a connection gets to send a whole request head; also the idle
    /// timeout of a kept-alive connection (default 10 s).
    pub header_timeout: Duration,
    /// Time a request gets to send its whole body (default 30 s: a pushed
    /// module of 8 MiB at about 300 KB/s).
    pub body_timeout: Duration,
    /// Connections from one address that may be idle at once (default
    /// 128); a newer one from that address closes its oldest idle one.
    pub max_idle_per_source: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_idle_per_source: 128,
        }
    }
}

impl AdminConfig {
    /// The admin API at `listen`, with `token`.
    pub fn at(listen: impl Into<String>, token: Option<String>) -> Self {
        let listen = listen.into();
        let require_token = !is_local_host(&listen);
        Self {
            listen,
            token,
            require_token,
            limits: AdminLimits::default(),
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// When the address does not parse, or is not a loopback address and
    /// no token is set (anyone who reaches it could push modules), or the
    /// token is empty.
    pub fn validate(&self) -> Result<()> {
        split_host_port(&self.listen)
            .with_context(|| format!("admin address {:?}", self.listen))?;
        if let Some(t) = &self.token {
            ensure!(!t.is_empty(), "the admin token is empty");
        }
        ensure!(
            self.token.is_some() || (is_local_host(&self.listen) && !self.require_token),
            "the admin address {} is not a loopback address and no token is set: give \
             --admin-token-file FILE (mutating requests then need `Authorization: Bearer \
             <token>`), or bind the admin API to 127.0.0.1",
            self.listen
        );
        Ok(())
    }
}

/// How a node takes new station versions.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// Where modules and release records are kept (none: in memory).
    pub data_dir: Option<std::path::PathBuf>,
    /// Keys whose signatures this node accepts; empty: accept unsigned.
    pub trust: Vec<ed25519_dalek::VerifyingKey>,
    /// Key to sign modules dropped into watched files with.
    pub sign_key: Option<std::path::PathBuf>,
    /// Watch station files and reload them on change.
    pub watch: bool,
    /// Push a reloaded file to the whole ring (else: this node only).
    pub push_on_change: bool,
    /// Instance-ending faults within `rollback_window_ms` that roll a
    /// station back on this node; 0 never does.
    pub rollback_after: u32,
    /// The window for `rollback_after`.
    pub rollback_window_ms: u64,
    /// How long a file must stay unchanged before it is loaded.
    pub settle_ms: u64,
    /// How often watched files' identities are compared regardless of
    /// file events (the backstop where events never come).
    pub poll_ms: u64,
    /// Run after the node has read its station files and before it starts
    /// watching them (tests change a file in that window).
    pub before_watch: Option<Hook>,
}

/// A callback for tests, run at a fixed point of a node's start.
#[derive(Clone)]
pub struct Hook(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            data_dir: None,
            trust: Vec::new(),
            sign_key: None,
            watch: true,
            push_on_change: true,
            rollback_after: 3,
            rollback_window_ms: 10_000,
            settle_ms: 200,
            poll_ms: 3000,
            before_watch: None,
        }
    }
}

impl NodeConfig {
    /// Defaults for node `index` of `ring`, running the built-in `tick`.
    pub fn new(ring: RingLayout, index: usize) -> Self {
        Self {
            ring,
            index,
            stations: vec![StationSpec::builtin("tick")],
            delay_ms: 0,
            dial_backoff_min_ms: 5,
            dial_backoff_max_ms: 50,
            handshake_timeout_ms: 400,
            max_ring_connections: 256,
            heartbeat_interval_ms: 80,
            failure_timeout_ms: 400,
            probe_interval_ms: 100,
            token_timeout_ms: 1000,
            write_timeout_ms: 1000,
            station_timeout_ms: 100,
            station_memory_bytes: 64 << 20,
            station_fuel: None,
            max_frame_bytes: 16 << 20,
            deploy: DeployConfig::default(),
            admin: Some(AdminConfig::at("127.0.0.1:0", None)),
            cluster_keys: None,
            input_udp: None,
            input_unix: None,
            cache: None,
        }
    }

    /// Checks the settings, saying what is wrong in words.
    ///
    /// # Errors
    /// On an out-of-range index, an empty pipeline, duplicate station
    /// names, or a zero timeout or limit.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.index < self.ring.len(),
            "node index {} is outside the ring of {} members",
            self.index,
            self.ring.len()
        );
        ensure!(!self.stations.is_empty(), "the station pipeline is empty");
        for (i, s) in self.stations.iter().enumerate() {
            validate_station_name(&s.name)?;
            ensure!(
                !self.stations[..i].iter().any(|o| o.name == s.name),
                "two stations are named {:?}: rename one with NAME=path",
                s.name
            );
        }
        ensure!(
            self.dial_backoff_min_ms > 0 && self.dial_backoff_min_ms <= self.dial_backoff_max_ms,
            "dial backoff must satisfy 0 < min <= max"
        );
        ensure!(
            self.handshake_timeout_ms > 0,
            "handshake timeout must be > 0"
        );
        ensure!(self.write_timeout_ms > 0, "write timeout must be > 0");
        ensure!(
            self.max_ring_connections >= 8,
            "the ring port must take at least 8 connections"
        );
        ensure!(self.station_timeout_ms > 0, "station timeout must be > 0");
        ensure!(
            self.station_memory_bytes >= 1 << 20,
            "station memory limit must be at least 1 MiB"
        );
        ensure!(
            self.station_fuel != Some(0),
            "station fuel must be > 0 (leave it unset for no fuel limit)"
        );
        ensure!(
            self.max_frame_bytes >= 64 << 10,
            "max frame size must be at least 64 KiB"
        );
        if let Some(admin) = &self.admin {
            admin.validate()?;
        }
        if let Some(cache) = &self.cache {
            cache.validate()?;
        }
        Ok(())
    }

    /// This node's member entry.
    pub fn me(&self) -> &Member {
        &self.ring.members()[self.index]
    }

    /// The ring protocol's parameters.
    pub fn ring_params(&self) -> crate::ring::state::RingParams {
        crate::ring::state::RingParams {
            me: self.index,
            size: self.ring.len(),
            backoff_min: Duration::from_millis(self.dial_backoff_min_ms),
            backoff_max: Duration::from_millis(self.dial_backoff_max_ms),
            failure_timeout: Duration::from_millis(self.failure_timeout_ms),
            heartbeat: Duration::from_millis(self.heartbeat_interval_ms),
            probe_interval: Duration::from_millis(self.probe_interval_ms),
            token_timeout: Duration::from_millis(self.token_timeout_ms),
            visit_bound: self.visit_bound(self.stations.len()),
            dial_hold: Duration::from_millis(self.handshake_timeout_ms),
        }
    }

    /// Longest a visit of a pipeline of `stations` can take: every call is
    /// interrupted at the station deadline; the owner's own work between
    /// calls is given 100 ms more.
    pub fn visit_bound(&self, stations: usize) -> Duration {
        self.station_timeout() * u32::try_from(stations.max(1)).unwrap_or(u32::MAX)
            + Duration::from_millis(100)
    }

    /// Duration helper for `station_timeout_ms`.
    pub fn station_timeout(&self) -> Duration {
        Duration::from_millis(self.station_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &[&str] = &["tick", "delay", "echo"];

    #[test]
    fn range_gives_eleven_members_in_port_order() {
        let r = RingLayout::parse(DEFAULT_RING).unwrap();
        assert_eq!(r.len(), 11);
        assert_eq!(r.members()[0].addr, "127.0.0.1:3000");
        assert_eq!(r.members()[10].addr, "127.0.0.1:3010");
        assert_eq!(r.index_by_port(3004).unwrap(), 4);
        assert!(r.index_by_port(4000).is_err());
    }

    #[test]
    fn list_and_file_forms_parse() {
        let r = RingLayout::parse("127.0.0.1:1, 127.0.0.1:2").unwrap();
        assert_eq!(r.len(), 2);
        let f = RingLayout::parse_file(
            "# fleet\ndc1/prod/0 = \"10.1.0.7:3000\"\ndc2/prod/0 = \"10.2.0.7:3000\" # eu\n",
        )
        .unwrap();
        assert_eq!(f.members()[1].name, "dc2/prod/0");
        assert_eq!(f.members()[1].addr, "10.2.0.7:3000");
        assert_eq!(f.index_by_name("dc1/prod/0").unwrap(), 0);
    }

    #[test]
    fn hash_depends_on_order_and_names() {
        let a = RingLayout::parse("127.0.0.1:1,127.0.0.1:2").unwrap();
        let b = RingLayout::parse("127.0.0.1:2,127.0.0.1:1").unwrap();
        let c = RingLayout::parse("127.0.0.1:1-2").unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), c.hash());
    }

    #[test]
    fn bad_rings_are_refused_with_reasons() {
        for bad in [
            "nonsense",
            "127.0.0.1:3010-3000",
            "127.0.0.1:1,127.0.0.1:1",
            "host:notaport",
        ] {
            assert!(RingLayout::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn station_specs_parse_builtins_settings_and_renames() {
        let s = StationSpec::parse("delay:ms=20,ms@3=200", B).unwrap();
        assert_eq!(s.name, "delay");
        assert_eq!(s.source, StationSource::Builtin("delay".into()));
        assert_eq!(
            s.config,
            vec![("ms".into(), "20".into()), ("ms@3".into(), "200".into())]
        );
        let r = StationSpec::parse("slow=delay:ms=5", B).unwrap();
        assert_eq!(r.name, "slow");
        assert!(StationSpec::parse("nope", B).is_err());
        assert!(StationSpec::parse("missing/file.wasm", B).is_err());
        assert!(StationSpec::parse("delay:ms", B).is_err());
    }

    #[test]
    fn duplicate_station_names_fail_validation() {
        let mut c = NodeConfig::new(RingLayout::parse("127.0.0.1:1-2").unwrap(), 0);
        c.stations = vec![StationSpec::builtin("tick"), StationSpec::builtin("tick")];
        assert!(c.validate().is_err());
        c.stations.pop();
        c.validate().unwrap();
    }
}
