//! The node's published sets (WIT interface `sets`): per station, named
//! sets of keys with an info string and an expiry, kept in memory for the
//! admin API to answer membership queries without calling the station.
//!
//! Shared like the kv store: one [`SetStore`] per node, cloned into every
//! station's environment and into the admin server; one mutex, held for
//! map operations only (no IO, no await, no allocation on a lookup).
//!
//! Limits (all or nothing per `put`): set names of at most
//! [`MAX_SET_NAME`] bytes of `[a-z0-9_-]`, keys and infos of at most
//! [`MAX_KEY_BYTES`] / [`MAX_INFO_BYTES`], and per station at most
//! [`MAX_ENTRIES`] entries and [`MAX_BYTES`] bytes (keys plus infos plus
//! [`ENTRY_OVERHEAD`] per entry) over all its sets.
//!
//! Expiry is by this node's wall clock: a lookup never answers an expired
//! entry; [`SetStore::sweep`] (run by the node every [`SWEEP_EVERY`])
//! removes them and reports an `expire` event for each.
//!
//! Lifetime: the node process's. A station whose instance traps or is
//! re-initialised keeps its sets; when a *different* module is swapped in
//! under the station's name, its sets are cleared
//! (`Pipeline::swap`), so a new release never leaves the old one's
//! entries behind.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Longest set name, in bytes (`[a-z0-9_-]` only).
pub const MAX_SET_NAME: usize = 64;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest info, in bytes.
pub const MAX_INFO_BYTES: usize = 1024;
/// Entries one station may publish, all its sets together.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Bytes one station's sets may hold: keys, infos and
/// [`ENTRY_OVERHEAD`] per entry.
pub const MAX_BYTES: usize = 128 << 20;
/// What one entry is counted for beyond its key and info.
pub const ENTRY_OVERHEAD: usize = 64;
/// How often the node removes expired entries (and reports them).
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Events buffered per set for its subscribers; one slower than this
/// gets `lagged`.
pub const EVENTS_BUFFER: usize = 4096;

/// One entry as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetEntry {
    /// The key.
    pub key: String,
    /// What the station says about it.
    pub info: String,
    /// When it expires, ms since the Unix epoch; 0: never.
    pub expires_unix_ms: u64,
}

/// A change to one set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SetEvent {
    /// An entry was added or replaced.
    Put(SetEntry),
    /// The station removed a key.
    Remove {
        /// The key.
        key: String,
    },
    /// An entry expired and was removed.
    Expire {
        /// The key.
        key: String,
    },
    /// The set was emptied (by the station, or because another module
    /// took over the station's name).
    Clear,
}

impl SetEvent {
    /// The event's name on an event stream.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Put(_) => "put",
            Self::Remove { .. } => "remove",
            Self::Expire { .. } => "expire",
            Self::Clear => "clear",
        }
    }
}

/// The node's sets, per station. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct SetStore {
    inner: Arc<Mutex<HashMap<String, StationSets>>>,
}

#[derive(Debug, Default)]
struct StationSets {
    sets: HashMap<String, Set>,
    entries: usize,
    bytes: usize,
}

#[derive(Debug)]
struct Set {
    entries: HashMap<String, Value>,
    /// (expiry, key) of the entries that expire.
    expiries: BTreeSet<(u64, String)>,
    /// Changes made to this set since the node started.
    changes: u64,
    events: broadcast::Sender<Arc<SetEvent>>,
}

#[derive(Debug, Clone)]
struct Value {
    info: String,
    expires_unix_ms: u64,
}

impl Default for Set {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            expiries: BTreeSet::new(),
            changes: 0,
            events: broadcast::channel(EVENTS_BUFFER).0,
        }
    }
}

fn cost(key: &str, info: &str) -> usize {
    key.len() + info.len() + ENTRY_OVERHEAD
}

fn live(v: &Value, now_ms: u64) -> bool {
    v.expires_unix_ms == 0 || v.expires_unix_ms > now_ms
}

impl Set {
    fn emit(&self, ev: SetEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(ev));
        }
    }

    /// Removes `key`, returning its cost.
    fn take(&mut self, key: &str) -> Option<usize> {
        let (k, v) = self.entries.remove_entry(key)?;
        if v.expires_unix_ms != 0 {
            self.expiries.remove(&(v.expires_unix_ms, k.clone()));
        }
        Some(cost(&k, &v.info))
    }
}

/// Checks a set name: 1 to [`MAX_SET_NAME`] bytes of `[a-z0-9_-]`.
///
/// # Errors
/// Naming the limit.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SET_NAME {
        return Err(format!(
            "set name {name:?} must be 1 to {MAX_SET_NAME} bytes"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!("set name {name:?} may hold only [a-z0-9_-]"));
    }
    Ok(())
}

impl SetStore {
    /// Adds `entries` to `station`'s set `name`, replacing entries of the
    /// same key; an entry already expired at `now_ms` is not added (and
    /// removes the key). All or nothing.
    ///
    /// # Errors
    /// A name, key or info too long, or the station's quota passed; the
    /// message names the limit and nothing changes.
    pub fn put(
        &self,
        station: &str,
        name: &str,
        entries: Vec<SetEntry>,
        now_ms: u64,
    ) -> Result<(), String> {
        check_name(name)?;
        for e in &entries {
            if e.key.len() > MAX_KEY_BYTES {
                return Err(format!(
                    "key of {} bytes is over the {MAX_KEY_BYTES} byte limit",
                    e.key.len()
                ));
            }
            if e.info.len() > MAX_INFO_BYTES {
                return Err(format!(
                    "info of {} bytes is over the {MAX_INFO_BYTES} byte limit",
                    e.info.len()
                ));
            }
        }
        let mut map = self.inner.lock().expect("sets lock");
        let st = map.entry(station.to_string()).or_default();
        // The quota, counted as if the whole batch were applied (the last
        // entry of a key wins, as when applied in order).
        let (mut n, mut bytes) = (st.entries, st.bytes);
        {
            let set = st.sets.get(name);
            let mut last: HashMap<&str, &SetEntry> = HashMap::with_capacity(entries.len());
            for e in &entries {
                last.insert(&e.key, e);
            }
            for (key, e) in last {
                if let Some(old) = set.and_then(|s| s.entries.get(key)) {
                    n -= 1;
                    bytes -= cost(key, &old.info);
                }
                if live_entry(e, now_ms) {
                    n += 1;
                    bytes += cost(key, &e.info);
                }
            }
        }
        if n > MAX_ENTRIES {
            return Err(format!(
                "sets quota: {n} entries would pass the {MAX_ENTRIES} entry limit of a station"
            ));
        }
        if bytes > MAX_BYTES {
            return Err(format!(
                "sets quota: {bytes} bytes would pass the {MAX_BYTES} byte limit of a station"
            ));
        }
        let set = st.sets.entry(name.to_string()).or_default();
        for e in entries {
            set.take(&e.key);
            set.changes += 1;
            if !live_entry(&e, now_ms) {
                set.emit(SetEvent::Remove { key: e.key });
                continue;
            }
            if e.expires_unix_ms != 0 {
                set.expiries.insert((e.expires_unix_ms, e.key.clone()));
            }
            set.entries.insert(
                e.key.clone(),
                Value {
                    info: e.info.clone(),
                    expires_unix_ms: e.expires_unix_ms,
                },
            );
            set.emit(SetEvent::Put(e));
        }
        st.entries = n;
        st.bytes = bytes;
        Ok(())
    }

    /// Removes `keys` from `station`'s set `name`; how many were there.
    pub fn remove(&self, station: &str, name: &str, keys: &[String], now_ms: u64) -> u32 {
        let mut map = self.inner.lock().expect("sets lock");
        let Some(st) = map.get_mut(station) else {
            return 0;
        };
        let Some(set) = st.sets.get_mut(name) else {
            return 0;
        };
        let mut removed = 0u32;
        for key in keys {
            let was_live = set
                .entries
                .get(key.as_str())
                .is_some_and(|v| live(v, now_ms));
            if let Some(c) = set.take(key) {
                st.entries -= 1;
                st.bytes -= c;
                set.changes += 1;
                if was_live {
                    removed += 1;
                    set.emit(SetEvent::Remove { key: key.clone() });
                } else {
                    set.emit(SetEvent::Expire { key: key.clone() });
                }
            }
        }
        removed
    }

    /// Empties `station`'s set `name`; how many live entries it had.
    pub fn clear(&self, station: &str, name: &str, now_ms: u64) -> u32 {
        let mut map = self.inner.lock().expect("sets lock");
        let Some(st) = map.get_mut(station) else {
            return 0;
        };
        let Some(set) = st.sets.get_mut(name) else {
            return 0;
        };
        let live_n = set.entries.values().filter(|v| live(v, now_ms)).count();
        let freed: usize = set.entries.iter().map(|(k, v)| cost(k, &v.info)).sum();
        st.entries -= set.entries.len();
        st.bytes -= freed;
        set.entries.clear();
        set.expiries.clear();
        set.changes += 1;
        set.emit(SetEvent::Clear);
        u32::try_from(live_n).unwrap_or(u32::MAX)
    }

    /// Empties every set of `station` (another module took its name).
    pub fn clear_station(&self, station: &str) {
        let mut map = self.inner.lock().expect("sets lock");
        if let Some(st) = map.get_mut(station) {
            for set in st.sets.values_mut() {
                if !set.entries.is_empty() {
                    set.entries.clear();
                    set.expiries.clear();
                    set.changes += 1;
                    set.emit(SetEvent::Clear);
                }
            }
            st.entries = 0;
            st.bytes = 0;
        }
    }

    /// Live entries of `station`'s set `name`.
    pub fn size(&self, station: &str, name: &str, now_ms: u64) -> u32 {
        let map = self.inner.lock().expect("sets lock");
        let n = map
            .get(station)
            .and_then(|st| st.sets.get(name))
            .map_or(0, |set| {
                // Entries not yet swept are the expiries at or before now.
                let expired = set.expiries.range(..(now_ms + 1, String::new())).count();
                set.entries.len() - expired
            });
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Calls `f` with the live entry of `key` in `station`'s set `name`,
    /// if any, under the lock (so a lookup allocates nothing itself).
    pub fn with_entry<R>(
        &self,
        station: &str,
        name: &str,
        key: &str,
        now_ms: u64,
        f: impl FnOnce(&str, &str, u64) -> R,
    ) -> Option<R> {
        let map = self.inner.lock().expect("sets lock");
        let (k, v) = map
            .get(station)?
            .sets
            .get(name)?
            .entries
            .get_key_value(key)?;
        live(v, now_ms).then(|| f(k, &v.info, v.expires_unix_ms))
    }

    /// The live entry of `key`, if any.
    pub fn get(&self, station: &str, name: &str, key: &str, now_ms: u64) -> Option<SetEntry> {
        self.with_entry(station, name, key, now_ms, |k, info, exp| SetEntry {
            key: k.to_string(),
            info: info.to_string(),
            expires_unix_ms: exp,
        })
    }

    /// Up to `limit` live entries of `station`'s set `name` (in no
    /// particular order) and how many live entries it has; `None` when
    /// the set does not exist.
    pub fn list(
        &self,
        station: &str,
        name: &str,
        limit: usize,
        now_ms: u64,
    ) -> Option<(Vec<SetEntry>, usize)> {
        let map = self.inner.lock().expect("sets lock");
        let set = map.get(station)?.sets.get(name)?;
        let mut total = 0;
        let mut out = Vec::with_capacity(limit.min(set.entries.len()));
        for (k, v) in &set.entries {
            if !live(v, now_ms) {
                continue;
            }
            total += 1;
            if out.len() < limit {
                out.push(SetEntry {
                    key: k.clone(),
                    info: v.info.clone(),
                    expires_unix_ms: v.expires_unix_ms,
                });
            }
        }
        Some((out, total))
    }

    /// The live entries of `station`'s set `name` and a receiver of every
    /// change after them (taken under one lock: nothing is missed or
    /// seen twice). The set is made if it does not exist, so a client may
    /// subscribe before the station publishes.
    ///
    /// # Errors
    /// A bad set name.
    pub fn subscribe(
        &self,
        station: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<(Vec<SetEntry>, broadcast::Receiver<Arc<SetEvent>>), String> {
        check_name(name)?;
        let mut map = self.inner.lock().expect("sets lock");
        let set = map
            .entry(station.to_string())
            .or_default()
            .sets
            .entry(name.to_string())
            .or_default();
        let entries = set
            .entries
            .iter()
            .filter(|(_, v)| live(v, now_ms))
            .map(|(k, v)| SetEntry {
                key: k.clone(),
                info: v.info.clone(),
                expires_unix_ms: v.expires_unix_ms,
            })
            .collect();
        Ok((entries, set.events.subscribe()))
    }

    /// Removes the entries expired at `now_ms`, reporting an `expire`
    /// event for each; how many were removed.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let mut map = self.inner.lock().expect("sets lock");
        let mut swept = 0;
        for st in map.values_mut() {
            for set in st.sets.values_mut() {
                while let Some((at, _)) = set.expiries.first() {
                    if *at > now_ms {
                        break;
                    }
                    let (_, key) = set.expiries.pop_first().expect("just seen");
                    if let Some(v) = set.entries.remove(&key) {
                        st.entries -= 1;
                        st.bytes -= cost(&key, &v.info);
                        set.changes += 1;
                        swept += 1;
                        set.emit(SetEvent::Expire { key });
                    }
                }
            }
        }
        swept
    }

    /// Per station and set: (station, set, entries, changes), for metrics.
    pub fn stats(&self) -> Vec<(String, String, usize, u64)> {
        let map = self.inner.lock().expect("sets lock");
        let mut out = Vec::new();
        for (station, st) in map.iter() {
            for (name, set) in &st.sets {
                out.push((
                    station.clone(),
                    name.clone(),
                    set.entries.len(),
                    set.changes,
                ));
            }
        }
        out
    }
}

fn live_entry(e: &SetEntry, now_ms: u64) -> bool {
    e.expires_unix_ms == 0 || e.expires_unix_ms > now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, info: &str, exp: u64) -> SetEntry {
        SetEntry {
            key: key.into(),
            info: info.into(),
            expires_unix_ms: exp,
        }
    }

    #[test]
    fn put_get_remove_clear() {
        let s = SetStore::default();
        s.put(
            "tok",
            "blocked",
            vec![entry("a", "1", 0), entry("b", "2", 0)],
            10,
        )
        .unwrap();
        assert_eq!(s.get("tok", "blocked", "a", 10), Some(entry("a", "1", 0)));
        assert_eq!(s.get("other", "blocked", "a", 10), None);
        assert_eq!(s.size("tok", "blocked", 10), 2);
        s.put("tok", "blocked", vec![entry("a", "3", 0)], 10)
            .unwrap();
        assert_eq!(s.get("tok", "blocked", "a", 10).unwrap().info, "3");
        assert_eq!(s.size("tok", "blocked", 10), 2);
        assert_eq!(s.remove("tok", "blocked", &["a".into(), "z".into()], 10), 1);
        assert_eq!(s.clear("tok", "blocked", 10), 1);
        assert_eq!(s.size("tok", "blocked", 10), 0);
    }

    #[test]
    fn limits_are_all_or_nothing_and_name_the_limit() {
        let s = SetStore::default();
        let e = s.put("t", "Bad", vec![], 0).unwrap_err();
        assert!(e.contains("[a-z0-9_-]"), "{e}");
        assert!(s.put("t", &"a".repeat(65), vec![], 0).is_err());
        let e = s
            .put(
                "t",
                "s",
                vec![entry("ok", "", 0), entry(&"k".repeat(1025), "", 0)],
                0,
            )
            .unwrap_err();
        assert!(e.contains("1024 byte limit"), "{e}");
        assert_eq!(s.size("t", "s", 0), 0);
        let e = s
            .put("t", "s", vec![entry("k", &"i".repeat(1025), 0)], 0)
            .unwrap_err();
        assert!(e.contains("info"), "{e}");
    }

    #[test]
    fn entry_quota_counts_all_sets_of_a_station() {
        let s = SetStore::default();
        let batch = |p: &str, n: usize| (0..n).map(|i| entry(&format!("{p}{i}"), "", 0)).collect();
        s.put("t", "a", batch("x", MAX_ENTRIES - 1), 0).unwrap();
        let e = s.put("t", "b", batch("y", 2), 0).unwrap_err();
        assert!(e.contains("1000000 entry limit"), "{e}");
        // Replacing an entry does not count twice.
        s.put("t", "a", batch("x", 1), 0).unwrap();
        s.put("t", "b", batch("y", 1), 0).unwrap();
        // Another station has its own quota.
        s.put("u", "a", batch("y", 2), 0).unwrap();
    }

    #[test]
    fn expired_entries_are_never_answered_and_sweeps_report_them() {
        let s = SetStore::default();
        let (_, mut rx) = s.subscribe("t", "s", 0).unwrap();
        s.put("t", "s", vec![entry("a", "", 100), entry("b", "", 0)], 50)
            .unwrap();
        assert!(s.get("t", "s", "a", 99).is_some());
        assert!(s.get("t", "s", "a", 100).is_none());
        assert_eq!(s.size("t", "s", 100), 1);
        assert_eq!(s.list("t", "s", 10, 100).unwrap().1, 1);
        assert_eq!(s.sweep(99), 0);
        assert_eq!(s.sweep(100), 1);
        let names: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.name())
            .collect();
        assert_eq!(names, ["put", "put", "expire"]);
    }

    #[test]
    fn another_module_clears_a_stations_sets() {
        let s = SetStore::default();
        s.put("t", "s", vec![entry("a", "", 0)], 0).unwrap();
        s.clear_station("t");
        assert_eq!(s.size("t", "s", 0), 0);
        s.put("t", "s", vec![entry("a", "", 0)], 0).unwrap();
    }
}
