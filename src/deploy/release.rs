//! Moved to [`crate::model`] (below the wire and the stations, which use
//! it too); re-exported here so `deploy::release` paths keep compiling.

pub use crate::model::{
    ConfigEntry, Conflict, Hash, MAX_AHEAD_MS, OrderKey, Payload, Release, Reply, Request,
    next_stamp, settings,
};
