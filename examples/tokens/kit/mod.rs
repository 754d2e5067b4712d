//! The tokens example's shared code, included with `#[path]` by the
//! `tokens-app` and `tokens-demo` examples and by
//! `tests/it/tokens_demo.rs`, so the test runs the demo's own code.
//!
//! - `app`: the application server beside a node (ring-guarded or
//!   per-node counting).
//! - `mirror`: the in-memory copy of a node's `blocked` set (its event
//!   stream).
//! - `nodes`: a local ring of `ringhost` processes, reaped on drop.
//! - `scenario`: the demo's story; `report`: what it showed, printed
//!   side by side.

// Each including target uses a different part of the kit.
#![allow(dead_code)]

pub mod app;
pub mod mirror;
pub mod nodes;
pub mod report;
pub mod scenario;
