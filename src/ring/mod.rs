//! The ring protocol, free of I/O.
//!
//! - [`token`]: the particle and its invariants.
//! - [`state`]: one node's protocol as a state machine (events in, actions
//!   out), driven by `node.rs` and tested without sockets.
//!
//! The ring: members are enumerated once, the same way everywhere. Member
//! `i` serves member `i-1` (its predecessor, upstream) and dials member
//! `i+1` (its successor, downstream), one TCP connection per ring edge. The
//! lowest-indexed member injects the particle (generation 1) as soon as its
//! successor link is up; from then on the particle is only ever forwarded,
//! so exactly one circulates. A node that receives a particle whose
//! generation is below the highest it has seen drops it.

pub mod state;
pub mod token;
