//! The ring protocol, free of I/O.
//!
//! - [`token`]: the particle, its id and its invariants.
//! - [`state`]: one node's protocol as a state machine (events in, actions
//!   out), driven by `node.rs` and tested without sockets.
//! - `testing` (tests only): `Net`, a seeded simulation of a whole ring
//!   with crashes, hangs, partitions and lossy, duplicating, reordering
//!   links.
//!
//! # The ring
//!
//! Members are enumerated once, the same way everywhere. Each node sends
//! the particle to its *successor*: the first member after it in the
//! enumeration that answers. It dials that member (connect + hello, within
//! the handshake timeout); a refused or unanswered dial, a link lost twice
//! in a row, or a link silent for the failure timeout (pings every
//! heartbeat interval, answered by pongs from the successor's link task,
//! not its station pipeline) declares that member dead: the node *skips*
//! it and dials the next one. It keeps *probing* every skipped member; the
//! first probe that succeeds splices the member back in. Since every node
//! applies the same rule, the live members re-form one ring in
//! enumeration order, and a member that returns is back within a probe
//! interval. A member the node has never known up since it started (no
//! link to it came up, and no particle back from a full lap marked it
//! live) is *not started yet* rather than dead: skipped and probed the
//! same way, but not reported as a failure.
//!
//! # Custody, and why a crash loses nothing
//!
//! A node that sends the particle keeps a copy (*in flight*) until its
//! successor acknowledges that it passed it on (the ack rides on the next
//! pong), or the particle comes round again. If the successor dies or is
//! declared dead while the copy is in flight, the node resends the same
//! particle to its new successor, with the hop advanced by the number of
//! members it skips. Hops of one particle only grow, and each node drops
//! an arrival whose hop is not above the last it saw: so if the dead node
//! had in fact passed the particle on, the resent copy meets a node that
//! already saw that hop and is dropped there. A crash of the holder costs
//! a dial, not a timeout, and no new particle is made.
//!
//! # Generations, and why no duplicate survives
//!
//! A particle's id is `(generation, origin)`, ordered. Each node remembers
//! the highest id it has seen and drops any particle below it where it is
//! met; a node holding a particle that sees a higher one drops its own.
//! New particles appear only two ways:
//! - *injection*: the lowest-indexed member makes generation 1 once its
//!   successor link is up, unless the successor's welcome says a particle
//!   already exists (so a restarted member never injects a second one);
//! - *regeneration*: a node that has seen no particle for the token
//!   timeout (at least three laps, staggered by the node's rank among live
//!   members so the lowest goes first and its particle arrives before the
//!   others' timers fire), that has nothing in flight, and that still has a
//!   live predecessor (pings arriving: it is part of a ring, not cut off)
//!   makes generation `highest seen + 1`, carrying the slots of the last
//!   copy it forwarded.
//!
//! # Heartbeats vouch for the particle
//!
//! "No particle seen here for the token timeout" is not "no particle": a
//! member may hold it far longer (a station running up to its deadline, a
//! long hold). So every ping carries the sender's freshest word on the
//! particle ([`token::Alive`]): its id, how long ago it was known alive,
//! and across how many links that word came. A member that holds the
//! particle says "alive now", for at most its visit bound (its stations'
//! deadlines) or its hold; its successor takes that as a sighting and
//! passes it on in its own pings, sent at once when the news is fresher by
//! half a heartbeat, so word crosses the ring in link latencies. The token
//! timeout runs from the latest sighting, seen or heard. Word of a particle
//! older than the one a node has seen is ignored, and word that has crossed
//! as many links as there are live members is dropped, so it never comes
//! back round to vouch for itself: when the particle is really lost, the
//! word stops with it and ages out everywhere. A frozen (SIGSTOP) or
//! wedged holder sends no word, or stops at its bound.
//!
//! # Leaving
//!
//! A node stopped cleanly (SIGTERM, Ctrl-C) passes on a particle it holds
//! and tells its predecessor it leaves; the predecessor skips it at once
//! and reports a leave, not a failure, so `--respawn` does not restart it.
//!
//! A newer particle travels the same ring, in the same direction, as any
//! older one; within one lap it has visited every node, after which the
//! older one is dropped at its next stop. So two particles coexist for at
//! most about one lap after a regeneration, a false suspicion, or the
//! healing of a partition (each side kept its own particle; the higher id
//! wins).
//!
//! # The view
//!
//! The particle carries a bitmap of live members. At each stop a node
//! writes its own segment (itself live, the members it skips dead, its
//! successor live) and adopts the rest, so every node's view converges
//! within one lap of a change; changes are logged.
pub mod rtt;
pub mod state;
#[cfg(test)]
pub mod testing;
pub mod token;
