//! Requests to a node's deploy agent and their replies. Operators send
//! push, rollback and config requests through the admin API (`crate::admin`
//! turns them into these); on the ring port only members' module fetches
//! are served ([`Request::is_member_traffic`]), as the first frame of a
//! connection of their own.

use serde::{Deserialize, Serialize};

use super::{Hash, Release};

/// A request to a node's deploy agent: from the admin API (push, rollback,
/// config), or from a member fetching a module over the ring port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Validate the module in the frame's blob and publish it ring-wide.
    Push {
        /// Station name.
        name: String,
        /// `init` config.
        #[serde(default)]
        config: Vec<(String, String)>,
        /// Signer's public key.
        #[serde(default)]
        signer: Option<Hash>,
        /// Signature over the module hash, hex.
        #[serde(default)]
        signature: Option<String>,
        /// Run it on this node only, without a release (what a deployer
        /// uploading to each node in turn does; the benchmark's baseline).
        #[serde(default)]
        local: bool,
    },
    /// Publish the previous version of `name` ring-wide.
    Rollback {
        /// Station name.
        name: String,
    },
    /// Send the module of `release` (a node catching up), as a delta
    /// against the first of `have` the server also has, else in full.
    Fetch {
        /// The wanted release.
        release: Release,
        /// Module hashes the asker has, best base first.
        have: Vec<Hash>,
        /// The asker takes a streamed answer: a [`Reply`] with
        /// [`Reply::stream`] set, then the module in chunk frames as the
        /// server receives it itself (cut-through). Absent (false) from
        /// nodes older than streaming: they are answered with the whole
        /// module once the server holds it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stream: bool,
    },
    /// Put a config write into the node's config-bus inbox.
    ConfigSet {
        /// Key.
        key: String,
        /// Value; `None` deletes.
        value: Option<String>,
    },
    /// Read a config key as this node has applied it.
    ConfigGet {
        /// Key.
        key: String,
    },
}

impl Request {
    /// Whether members send it to each other (a module fetch), as opposed
    /// to an operator's request (push, rollback, config), which only the
    /// admin API takes.
    pub fn is_member_traffic(&self) -> bool {
        matches!(self, Request::Fetch { .. })
    }

    /// The request's name in messages: `push`, `rollback`, `fetch`,
    /// `config set`, `config get`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Request::Push { .. } => "push",
            Request::Rollback { .. } => "rollback",
            Request::Fetch { .. } => "fetch",
            Request::ConfigSet { .. } => "config set",
            Request::ConfigGet { .. } => "config get",
        }
    }
}

/// How a fetched module travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Payload {
    /// The whole module is the blob.
    Full,
    /// The blob is a delta against the module with this hash.
    Delta {
        /// The base module.
        base: Hash,
    },
}

/// A config entry as one node has applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// The value; `None` when deleted or never set.
    pub value: Option<String>,
    /// The entry's version and writer, when known.
    pub ver: Option<u64>,
    /// The node that wrote it.
    pub node: Option<u32>,
    /// The node's config version (the highest entry version applied).
    pub config_version: u64,
    /// Writes waiting in this node's inbox for the particle.
    #[serde(default)]
    pub pending: u64,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Why the request failed; `None` on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The release published (push, rollback) or sent (fetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
    /// What the blob holds (fetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    /// A config entry (config get).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigEntry>,
    /// Push: the module and config are those of the current release
    /// (`release`), which stays; nothing new was published.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// Fetch: the error says the module is not kept on the answering node
    /// (another node may have it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// Fetch with `stream`: the module (whole) follows in chunk frames,
    /// this many bytes in all, ended by an empty chunk once the server has
    /// checked its hash; a stream cut before that is to be discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u64>,
}

impl Reply {
    /// A failure reply.
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            error: Some(msg.into()),
            ..Self::default()
        }
    }
}
