//! Moved to [`crate::model::sign`] (signatures are shared vocabulary);
//! re-exported here so `deploy::sign` paths keep compiling.

pub use crate::model::sign::*;
