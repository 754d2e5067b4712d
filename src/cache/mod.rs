//! The cache: a memcached-compatible item store served by every node
//! that runs with `--cache ADDR` (issue 13, first part).
//!
//! Layers, each knowing only those below it:
//! - [`proto`]: the memcached text protocol as a sans-IO codec (bytes in,
//!   commands out), [`reply`]: replies to bytes;
//! - [`store`]: a node-local store (items, LRU eviction under a memory
//!   bound, expiry, cas uniques, counters), pure, with time as an input;
//! - [`server`]: a TCP server running one store over the codec, with
//!   bounded connections (`exec.rs`: commands against the store, its
//!   figures).
//!
//! Today every node serves its own store: a key set on one node is not
//! seen on another. The ring cache (keys owned through consistent hashing
//! over the enumeration, forwarding to the owner, a replica on the
//! successor, hand-off fenced by the membership epoch) is to sit between
//! the server and the store: the server will hand a parsed command to a
//! router that runs it on the local store or forwards it, without changing
//! the codec or the store.

mod exec;
pub mod proto;
pub mod reply;
pub mod server;
pub mod store;
