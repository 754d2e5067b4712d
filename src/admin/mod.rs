//! The operator plane: each node's admin HTTP API, and the client the
//! command-line tools use to speak to it.
//!
//! - [`api`]: request and reply bodies (JSON), shared by both sides.
//! - [`server`]: the axum server a node runs beside its ring listener
//!   (`--admin ADDR`, default 127.0.0.1 at the ring port + 1000).
//! - [`listen`]: how the server takes connections (its own thread,
//!   bounded connections, header and body deadlines).
//! - [`dashboard`]: the page served at `/` (plain HTML/JS/CSS in the
//!   binary) and the event stream's cross-origin rule it needs.
//! - [`sets`]: membership queries on the sets stations publish, answered
//!   from node memory (the hot path of an application server).
//! - [`client`]: a small HTTP/1 client (hyper) for the tools, and how a
//!   tool finds a node's admin API from its ring address.
//!
//! What this module does not own: the node's state. It reads it through
//! the handles `node::start` gives it (a status request to the owner
//! task, the deploy agent's request channel, the kv store, the inboxes,
//! the event bus and metrics).

pub mod api;
pub mod client;
pub mod dashboard;
pub mod listen;
pub mod server;
pub mod sets;
