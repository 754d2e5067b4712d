//! What a deploy is made of: content hashes, releases (a station name at a
//! version), and the control messages tools and nodes exchange.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A sha-256, shown and sent as hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The sha-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self(Sha256::digest(bytes).into())
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        crate::config::hex(&self.0[..6])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::config::hex(&self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl std::str::FromStr for Hash {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        super::sign::parse_hex::<32>(s).map(Self)
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One version of one station, as every node records it. Releases of a
/// name are totally ordered by (version, origin, hash): two pushes of the
/// same name on different nodes pick the same winner everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The station's name (its slot in the particle).
    pub name: String,
    /// Increases with every push or rollback of this name. 0 is the
    /// version a node was started with; it never travels.
    pub version: u64,
    /// The ring index of the node that published it.
    pub origin: u32,
    /// sha-256 of the component bytes.
    pub hash: Hash,
    /// Component size in bytes.
    pub size: u64,
    /// The station's `init` config.
    #[serde(default)]
    pub config: Vec<(String, String)>,
    /// ed25519 public key of the signer, if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<Hash>,
    /// The signature over the module hash (hex), if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Release {
    /// The order key.
    pub fn key(&self) -> (u64, u32, Hash) {
        (self.version, self.origin, self.hash)
    }

    /// Whether `self` supersedes `other` (same name assumed).
    pub fn newer_than(&self, other: &Release) -> bool {
        self.key() > other.key()
    }

    /// `name v3 (abcdef012345)`, for logs and tools.
    pub fn label(&self) -> String {
        format!("{} v{} ({})", self.name, self.version, self.hash.short())
    }
}

/// A request a tool (or a node fetching a module) sends as the first frame
/// of its own connection to a node's ring port.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(version: u64, origin: u32, h: u8) -> Release {
        Release {
            name: "s".into(),
            version,
            origin,
            hash: Hash([h; 32]),
            size: 1,
            config: vec![],
            signer: None,
            signature: None,
        }
    }

    #[test]
    fn releases_order_by_version_then_origin_then_hash() {
        assert!(rel(2, 0, 0).newer_than(&rel(1, 9, 9)));
        assert!(rel(2, 3, 0).newer_than(&rel(2, 1, 9)));
        assert!(rel(2, 3, 5).newer_than(&rel(2, 3, 4)));
        assert!(!rel(2, 3, 4).newer_than(&rel(2, 3, 4)));
    }

    #[test]
    fn messages_round_trip_as_json() {
        let r = rel(3, 1, 0xab);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(&"ab".repeat(32)), "{json}");
        assert_eq!(serde_json::from_str::<Release>(&json).unwrap(), r);
        let req = Request::Fetch {
            release: r,
            have: vec![Hash([1; 32])],
        };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains("\"op\":\"fetch\""), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), req);
        assert!(serde_json::from_str::<Hash>("\"zz\"").is_err());
    }
}
