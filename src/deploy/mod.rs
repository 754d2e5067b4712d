//! Fast deploys: a new station version travels the ring as a delta and
//! every node hot-swaps it.
//!
//! # How a version travels
//! - `ringhost push` sends a module to one node. That node checks it
//!   (size, signature when the node has `--trust` keys), compiles it,
//!   checks it against the station world and runs its `init`; only then
//!   does it become a [`release::Release`]: name, a version one above the
//!   highest it knows, its publish time, its own index as origin, the
//!   module's sha-256. A push of the module and config the current release
//!   already has publishes nothing (the reply says `unchanged`).
//! - A node with a new current release tells its successor on the ring
//!   link (an `announce` frame: its current releases). A node that sees a
//!   release newer than its own fetches the module from that neighbour on
//!   a separate connection, offering the hashes it has: the neighbour
//!   answers with a zstd delta against one of them ([`delta`]) or, lacking
//!   a common base, the whole module. The receiver rebuilds it, checks the
//!   hash (and the signature), records it, announces it onwards, and only
//!   then compiles and initialises it, so the release moves on while this
//!   node compiles. The owner task swaps the ready station in between two
//!   visits; the station's slot on the particle carries on.
//! - Order: a release carries its publish time (unix ms), stamped by the
//!   publisher as a hybrid clock: its wall clock, but always after every
//!   release of the name it knew, so along one history the time grows with
//!   the version. Releases of a name are ordered by (publish time, version,
//!   origin, hash) ([`release::Release::key`]): pushes of the same name on
//!   two nodes resolve to the same winner everywhere, and releases made
//!   without knowledge of each other resolve to the later publish. That is
//!   what keeps a member returning with the records of a ring rebuilt while
//!   it was away (empty data dirs, versions counted from 1 again) from
//!   overriding the operator's newest push with its higher version. When
//!   version order and publish order disagree the pair is a
//!   [`release::Conflict`]: the newer publish is kept, and every node that
//!   sees the pair logs it, shows it in `status` and to `push`. A node's
//!   next release of the name takes a version above every one it knows
//!   (set-aside ones included). Wall clocks only decide between releases
//!   that never saw each other; a publisher's clock far ahead can still
//!   win such a race, which the conflict report makes visible.
//! - The link handshake (hello and welcome) carries both sides' current
//!   releases, so a node that was down or cut off during a deploy catches
//!   up as soon as it links again, in either direction.
//! - With `--data-dir`, modules and release records survive a restart
//!   ([`store`]); the node runs the latest release it recorded.
//! - `rollback NAME` publishes the previous module of NAME as a new
//!   release (a higher version), so it travels like any other. A station
//!   that keeps trapping is rolled back on its own node only (not a
//!   release: the ring's version stays, the node reports it).
//! - Compiled code never travels; each node compiles (or loads its own
//!   compile cache, keyed by module hash and engine).
//!
//! One task per node owns all of this ([`agent::Agent`]).

pub mod agent;
pub mod client;
pub mod delta;
pub mod release;
pub mod sign;
pub mod store;
pub mod watch;

/// The name of the config-bus station (`ringhost config`).
pub const CONFIG_STATION: &str = "deploy-delta";
