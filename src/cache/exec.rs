//! Running a command that is not a retrieval against the store, and the
//! figures the store reports (`stats`, `/metrics`). The server
//! ([`super::server`]) owns the connections; retrievals are run there, as
//! their replies are written out as they grow.

use std::sync::atomic::Ordering;

use super::proto::{Command, Reply};
use super::server::{Shared, VERSION};
use super::store::{Arith, Store, Stored};
use crate::metrics::{CacheLabels, Metrics};

/// The reply of a command that is not a retrieval (`None`: `noreply`).
pub(super) fn execute(shared: &Shared, cmd: Command, now: u64) -> Option<Reply> {
    let (reply, noreply) = match cmd {
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            noreply,
        } => {
            let r = match shared.store().store(mode, &key, flags, exptime, value, now) {
                Stored::Stored => Reply::Stored,
                Stored::NotStored => Reply::NotStored,
                Stored::Exists => Reply::Exists,
                Stored::NotFound => Reply::NotFound,
                // Only append/prepend get here: the parser refuses a
                // value over the limit before its data arrives.
                Stored::TooLarge => Reply::ServerError("out of memory storing object"),
            };
            (r, noreply)
        }
        Command::Delete { key, noreply } => {
            let r = if shared.store().delete(&key, now) {
                Reply::Deleted
            } else {
                Reply::NotFound
            };
            (r, noreply)
        }
        Command::Arith {
            incr,
            key,
            delta,
            noreply,
        } => {
            let r = match shared.store().arith(incr, &key, delta, now) {
                Arith::Value(n) => Reply::Number(n),
                Arith::NotFound => Reply::NotFound,
                Arith::NonNumeric => {
                    Reply::ClientError("cannot increment or decrement non-numeric value")
                }
            };
            (r, noreply)
        }
        Command::Touch {
            key,
            exptime,
            noreply,
        } => {
            let r = if shared.store().touch(&key, exptime, now) {
                Reply::Touched
            } else {
                Reply::NotFound
            };
            (r, noreply)
        }
        Command::FlushAll { delay, noreply } => {
            shared.store().flush_all(delay, now);
            (Reply::Ok, noreply)
        }
        Command::Stats { args } => (stats(shared, args.as_deref(), now), false),
        Command::Version => (Reply::Version(VERSION.into()), false),
        Command::Verbosity { noreply } => (Reply::Ok, noreply),
        Command::Get { .. } | Command::Gat { .. } | Command::Quit => return None,
    };
    (!noreply).then_some(reply)
}

/// `stats`, `stats reset`, `stats settings`; other groups are `ERROR`
/// (memcached's answer to a group it does not know).
fn stats(shared: &Shared, args: Option<&str>, now: u64) -> Reply {
    let c = &shared.config;
    match args {
        None => {}
        Some("reset") => {
            shared.store().reset_counters();
            return Reply::Reset;
        }
        Some("settings") => {
            let lines = [
                ("maxbytes", c.memory_bytes.to_string()),
                ("maxconns", c.max_connections.to_string()),
                ("item_size_max", c.item_max_bytes.to_string()),
                ("evictions", "on".into()),
                ("cas_enabled", "yes".into()),
            ];
            return Reply::Stats(lines.map(|(k, v)| (k.to_string(), v)).into());
        }
        Some(_) => return Reply::Error,
    }
    let store = shared.store();
    let n = store.counters();
    let mut lines = vec![
        ("pid", std::process::id().to_string()),
        ("uptime", shared.started.elapsed().as_secs().to_string()),
        ("time", now.to_string()),
        ("version", VERSION.to_string()),
        ("pointer_size", (usize::BITS).to_string()),
        (
            "curr_connections",
            shared.curr_connections.load(Ordering::Relaxed).to_string(),
        ),
        (
            "total_connections",
            shared.total_connections.load(Ordering::Relaxed).to_string(),
        ),
    ];
    let counters = [
        ("cmd_get", n.cmd_get),
        ("cmd_set", n.cmd_set),
        ("cmd_flush", n.cmd_flush),
        ("cmd_touch", n.cmd_touch),
        ("get_hits", n.get_hits),
        ("get_misses", n.get_misses),
        ("get_expired", n.get_expired),
        ("get_flushed", n.get_flushed),
        ("delete_misses", n.delete_misses),
        ("delete_hits", n.delete_hits),
        ("incr_misses", n.incr_misses),
        ("incr_hits", n.incr_hits),
        ("decr_misses", n.decr_misses),
        ("decr_hits", n.decr_hits),
        ("cas_misses", n.cas_misses),
        ("cas_hits", n.cas_hits),
        ("cas_badval", n.cas_badval),
        ("touch_hits", n.touch_hits),
        ("touch_misses", n.touch_misses),
        ("limit_maxbytes", c.memory_bytes as u64),
        ("curr_items", store.len() as u64),
        ("total_items", n.total_items),
        ("bytes", store.bytes() as u64),
        ("evictions", n.evictions),
        ("reclaimed", n.reclaimed),
    ];
    lines.extend(counters.map(|(k, v)| (k, v.to_string())));
    Reply::Stats(lines.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Copies the store's figures into the node's metrics.
pub(super) fn export(store: &Store, metrics: &Metrics) {
    let n = store.counters();
    for (op, value) in [
        ("get_hit", n.get_hits),
        ("get_miss", n.get_misses),
        ("set", n.cmd_set),
        ("delete_hit", n.delete_hits),
        ("delete_miss", n.delete_misses),
        ("eviction", n.evictions),
        ("reclaimed", n.reclaimed),
        ("flush", n.cmd_flush),
    ] {
        metrics
            .cache_ops
            .get_or_create(&CacheLabels { op })
            .inner()
            .store(value, Ordering::Relaxed);
    }
    metrics
        .cache_items
        .set(i64::try_from(store.len()).unwrap_or(i64::MAX));
    metrics
        .cache_bytes
        .set(i64::try_from(store.bytes()).unwrap_or(i64::MAX));
}
