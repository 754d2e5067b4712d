//! The admin API's request and reply bodies (JSON). `openapi.yaml` beside
//! this file describes the same shapes for other tools.
//!
//! Every error is a 4xx or 5xx status with an [`ErrorBody`]. `GET
//! /v1/status` answers a [`crate::status::Report`]; the deploy endpoints
//! answer a [`DeployAnswer`]; `GET /v1/config/{key}` a
//! [`crate::deploy::release::ConfigEntry`].

use serde::{Deserialize, Serialize};

use crate::deploy::release::{Hash, Release, Request};
use crate::status::Report;

/// Body limit of `POST /v1/push`: the module limit and a little more.
pub const PUSH_BODY_LIMIT: usize = crate::station::MAX_MODULE_BYTES + (64 << 10);

/// Body limit of every other request.
pub const BODY_LIMIT: usize = 64 << 10;

/// Body limit of `PUT /v1/config/{key}`: a value at the config bus's
/// bound ([`crate::model::CONFIG_MAX_VALUE_BYTES`]) as a JSON string, each
/// byte escaped at worst to 6 (`\u00XX`), and the object around it; the
/// value's own bound is checked after decoding (422 naming it).
pub const CONFIG_BODY_LIMIT: usize = 6 * crate::model::CONFIG_MAX_VALUE_BYTES + 1024;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, naming the thing (one line).
    pub error: String,
}

/// Whether a member runs, as the answering node finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    /// It answered a status request within the deadline.
    Live,
    /// It did not answer, and the answering node has seen it up before.
    Dead,
    /// It did not answer, and the answering node has never seen it up
    /// (not started yet).
    NotStarted,
}

impl Liveness {
    /// The word a table shows.
    pub fn word(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Dead => "dead",
            Self::NotStarted => "not-started",
        }
    }
}

/// `GET /v1/ring`: the ring as the answering node sees it, with what each
/// reachable member reports of itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RingView {
    /// The answering node's index.
    pub node: usize,
    /// Members in the enumeration.
    pub ring_size: usize,
    /// Hex sha-256 of the enumeration.
    pub ring_hash: String,
    /// Every member, in ring order.
    pub members: Vec<MemberView>,
    /// Every member is live and all run the same stations at the same
    /// versions (what `ringhost members` exits 0 for).
    pub healthy: bool,
}

/// One member in a [`RingView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    /// Index in the enumeration.
    pub index: usize,
    /// Name in the enumeration.
    pub name: String,
    /// Ring address.
    pub addr: String,
    /// Whether it runs.
    pub liveness: Liveness,
    /// Live in the answering node's view of the ring.
    pub in_view: bool,
    /// Why it was not reached (`liveness` not live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its admin API address, as it reports it.
    #[serde(default)]
    pub admin: Option<String>,
    /// Its process id.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Seconds since it started.
    #[serde(default)]
    pub uptime_s: Option<f64>,
    /// Its stations, in pipeline order.
    #[serde(default)]
    pub stations: Vec<StationVersion>,
    /// Lap time median at that member, milliseconds.
    #[serde(default)]
    pub lap_p50_ms: Option<f64>,
    /// Lap time 99th percentile, milliseconds.
    #[serde(default)]
    pub lap_p99_ms: Option<f64>,
    /// Failed station calls there, all stations.
    #[serde(default)]
    pub faults: u64,
    /// Its config version.
    #[serde(default)]
    pub config_version: Option<u64>,
    /// Its whole status report (what `push` watches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<Report>>,
}

/// A station on one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StationVersion {
    /// Name.
    pub name: String,
    /// The version of the release it runs (0: as the node started, or
    /// no release). After an automatic rollback this is the version rolled
    /// back to, not the member's current release: one module may run as
    /// several releases, so the hash alone does not tell.
    pub version: u64,
    /// sha-256 of the running module, hex (`None`: not known).
    pub hash: Option<String>,
    /// Failed calls since load.
    pub faults: u64,
}

impl MemberView {
    /// A member that answered with `report`.
    pub fn from_report(in_view: bool, report: Report) -> Self {
        let stations = report
            .stations
            .iter()
            .map(|s| {
                let d = report.deploy.stations.iter().find(|d| d.name == s.name);
                StationVersion {
                    name: s.name.clone(),
                    version: d.and_then(|d| d.running_release()).unwrap_or(0),
                    hash: d.map(|d| d.running.to_string()),
                    faults: s.faults,
                }
            })
            .collect();
        Self {
            index: report.node.index,
            name: report.node.name.clone(),
            addr: report.node.addr.clone(),
            liveness: Liveness::Live,
            in_view,
            error: None,
            admin: report.admin.clone(),
            pid: Some(report.node.pid),
            uptime_s: Some(report.uptime_s),
            faults: report.stations.iter().map(|s| s.faults).sum(),
            lap_p50_ms: report.lap_ms.p50,
            lap_p99_ms: report.lap_ms.p99,
            config_version: Some(report.config_version),
            stations,
            report: Some(Box::new(report)),
        }
    }
}

/// Whether every member is live and runs the same stations at the same
/// versions and modules (what each runs, not what it records as current).
pub fn is_healthy(members: &[MemberView]) -> bool {
    let versions = |m: &MemberView| -> Vec<(String, u64, Option<String>)> {
        m.stations
            .iter()
            .map(|s| (s.name.clone(), s.version, s.hash.clone()))
            .collect()
    };
    members.iter().all(|m| m.liveness == Liveness::Live)
        && members
            .windows(2)
            .all(|w| versions(&w[0]) == versions(&w[1]))
}

/// `POST /v1/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackBody {
    /// The station to roll back ring-wide.
    pub name: String,
}

/// `PUT /v1/config/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigBody {
    /// The new value.
    pub value: String,
}

/// The answer to a push or rollback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployAnswer {
    /// The release published (or, when `unchanged`, the current one);
    /// `None` for a push with `local=true`, which runs the module on the
    /// node asked only and publishes no release.
    #[serde(default)]
    pub release: Option<Release>,
    /// A `local=true` push: the module runs on this node only.
    #[serde(default)]
    pub local: bool,
    /// A push of the module and config already current: nothing new.
    #[serde(default)]
    pub unchanged: bool,
}

/// `GET /v1/stations/{name}/kv/{key}`, and each entry of a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvEntry {
    /// Key.
    pub key: String,
    /// The value as text, when it is UTF-8.
    #[serde(default)]
    pub value: Option<String>,
    /// The value in hex, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
}

impl KvEntry {
    /// The entry for `key` holding `bytes`.
    pub fn new(key: String, bytes: Vec<u8>) -> Self {
        match String::from_utf8(bytes) {
            Ok(v) => Self {
                key,
                value: Some(v),
                value_hex: None,
            },
            Err(e) => Self {
                key,
                value: None,
                value_hex: Some(crate::config::hex(e.as_bytes())),
            },
        }
    }
}

/// `GET /v1/stations/{name}/kv?prefix=…`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvListing {
    /// The station.
    pub station: String,
    /// Entries whose key starts with the prefix, ascending, at most
    /// [`KV_LIST_MAX`].
    pub entries: Vec<KvEntry>,
    /// More keys matched than were listed.
    pub truncated: bool,
}

/// Most entries one listing returns.
pub const KV_LIST_MAX: usize = 1000;

/// `POST /v1/stations/{name}/inbox`: taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxAnswer {
    /// Messages now waiting in the station's inbox.
    pub pending: usize,
}

/// The query of `GET /v1/stations/{name}/kv?prefix=…`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrefixQuery {
    /// List only keys that start with it (empty: every key).
    #[serde(default)]
    pub prefix: String,
}

/// The push request a `POST /v1/push` query asks for:
/// `name=NAME&config=KEY=VALUE&signer=HEX&signature=HEX&local=true`
/// (`config` repeats; `local` is true for `true`, `1` or no value).
///
/// # Errors
/// One line naming what is wrong: a query that does not decode, an unknown
/// parameter, a config that is not `KEY=VALUE`, a signer that is not 64 hex
/// digits, a missing or invalid station name.
pub fn push_request(query: &str) -> Result<Request, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| format!("query: {e}"))?;
    let (mut name, mut config, mut signer, mut signature, mut local) =
        (None, Vec::new(), None, None, false);
    for (k, v) in pairs {
        match k.as_str() {
            "name" => name = Some(v),
            "config" => {
                let (ck, cv) = v
                    .split_once('=')
                    .ok_or_else(|| format!("config {v:?}: expected KEY=VALUE"))?;
                config.push((ck.to_string(), cv.to_string()));
            }
            "signer" => {
                signer = Some(v.parse::<Hash>().map_err(|e| format!("signer: {e:#}"))?);
            }
            "signature" => signature = Some(v),
            "local" => local = matches!(v.as_str(), "true" | "1" | ""),
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    let name = name.ok_or("the query must name the station: ?name=NAME")?;
    crate::config::validate_station_name(&name).map_err(|e| format!("{e:#}"))?;
    Ok(Request::Push {
        name,
        config,
        signer,
        signature,
        local,
    })
}
