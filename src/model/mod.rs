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
pub use release::{Conflict, MAX_AHEAD_MS, OrderKey, Release, next_stamp, settings};
pub use request::{ConfigEntry, Payload, Reply, Request};

/// The name of the config-bus station (`ringhost config`).
pub const CONFIG_STATION: &str = "deploy-delta";
