//! Fast deploys: a new station version travels the ring as a delta and
//! every node hot-swaps it.
//!
//! # How a version travels
//! - `ringhost push` sends a module to one node. That node checks it
//!   (size, signature when the node has `--trust` keys), compiles it,
//!   checks it against the station world and runs its `init`; only then
//!   does it become a [`release::Release`]: name, a version one above the
//!   highest it knows, its publish time, its own index as origin, the
//!   module's sha-256. A push of the module and config (compared as
//!   settings: last value per key, key order irrelevant) that the node
//!   runs as its current release, version 0 included, publishes nothing
//!   (the reply says `unchanged`).
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
//! - Relay and cut-through: a node that starts fetching a release tells
//!   its successor at once that it is on its way (the announce marks it
//!   `coming`), so every node learns of a release within one trip round
//!   the ring, long before the module gets there. The successor asks for
//!   it straight away, taking a stream: the node serves the module's bytes
//!   as they arrive (one copy per release, at most the release's size) and
//!   ends the stream only once it has checked the whole module's hash.
//!   Every node checks the full hash (and signature) itself before it
//!   records, announces as held, compiles or runs anything; a stream that
//!   is cut (the source failed, died or its bytes did not check) is
//!   discarded and the module fetched again from the next source, the
//!   release's publisher among them. A delta still needs its whole base
//!   and target, so a node holding a base waits for the whole module.
//!   Module bytes never travel on the ring link.
//! - Fetch connections are kept (30 s) and reused for the next fetch from
//!   the same neighbour: a hop pays the TCP connect and the cluster
//!   handshake once, not per release.
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
//!   [`release::Conflict`]: the newer publish is kept, and the nodes that
//!   meet both releases (the member holding the stale one and the
//!   neighbours it offers it to) log it once, show it in `status` and to
//!   `push`; the others only ever see the kept release. A node's next
//!   release of the name takes a version above every one it knows
//!   (set-aside ones included). Wall clocks only decide between releases
//!   that never saw each other, within a bound: a release published more
//!   than [`release::MAX_AHEAD_MS`] (60 s) ahead of a node's clock is not
//!   adopted there (a conflict), a node's own record from that far ahead
//!   gives way to any release of the present, and a push that would have
//!   to be stamped after such a release is refused rather than carrying
//!   the skew on.
//! - A failed fetch is retried after 1 s, doubling up to 60 s; a node
//!   never fetches from itself (linked to itself when every other member
//!   is down), and while its recorded module is missing it runs the newest
//!   older module of the station it can verify.
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
//! One task per node owns all of this ([`agent::Agent`]): it is the IO
//! shell (sockets, store, station host) around [`decide::DeployState`],
//! the sans-IO state that makes the decisions above (what to fetch, from
//! whom, when a release wins, when to retry, what to announce and relay).
//! A seeded simulation of several nodes' states over a lossy network with
//! crashes (`sim`, tests only) checks them.

pub mod agent;
pub mod decide;
pub mod delta;
pub mod release;
pub mod sign;
#[cfg(test)]
mod sim;
mod sources;
pub mod store;
pub mod watch;

pub use crate::model::CONFIG_STATION;
