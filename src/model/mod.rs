//! The shared vocabulary of deploys, below every module that speaks it:
//! content hashes ([`Hash`]), releases and their order ([`Release`],
//! [`OrderKey`], [`Conflict`]), module signatures ([`sign`]) and the
//! requests and replies that travel on their own connections to a ring
//! port ([`Request`], [`Reply`], [`Payload`]).
//!
//! Plain data and pure functions: it imports nothing of the deploy agent,
//! the wire, the stations, the node or the tools. The deploy agent decides
//! what to do with these values ([`crate::deploy`]); the wire carries them
//! ([`crate::wire`]); the stations are named by their hash.

pub mod hash;
pub mod release;
pub mod request;
pub mod sign;

pub use hash::Hash;
pub use release::{Announce, Conflict, MAX_AHEAD_MS, OrderKey, Release, next_stamp, settings};
pub use request::{ConfigEntry, Payload, Reply, Request};

/// The name of the config-bus station (`ringhost config`).
pub const CONFIG_STATION: &str = "deploy-delta";

/// The longest config key, in bytes: the config station's own limit
/// (`MAX_KEY_BYTES` in `stations/config/src/logic.rs`), checked here first
/// so a write it would drop is refused to the writer instead.
pub const CONFIG_MAX_KEY_BYTES: usize = 1024;

/// The longest config value, in bytes (the config station's
/// `MAX_VALUE_BYTES`).
pub const CONFIG_MAX_VALUE_BYTES: usize = 64 * 1024;

/// Checks a config write against the config station's limits.
///
/// # Errors
/// An empty key, a key over [`CONFIG_MAX_KEY_BYTES`] or a value over
/// [`CONFIG_MAX_VALUE_BYTES`], named with its size.
pub fn check_config_write(key: &str, value: Option<&str>) -> Result<(), String> {
    if key.is_empty() {
        return Err("the config key is empty".into());
    }
    if key.len() > CONFIG_MAX_KEY_BYTES {
        return Err(format!(
            "the config key is {} bytes, more than {CONFIG_MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if let Some(v) = value.filter(|v| v.len() > CONFIG_MAX_VALUE_BYTES) {
        return Err(format!(
            "the config value is {} bytes, more than {CONFIG_MAX_VALUE_BYTES}",
            v.len()
        ));
    }
    Ok(())
}
