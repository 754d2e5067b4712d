//! A node-local item store: what one memcached instance holds. Pure: no
//! IO, no clock (every operation takes `now`, Unix seconds), so eviction
//! and expiry are tested with an injected time.
//!
//! - **Items** carry flags (`u32`), an expiry (Unix second, 0 = never), a
//!   cas unique (`u64`, from a per-store counter that every write bumps:
//!   set, append, incr…; `touch` keeps it, as memcached) and the value.
//! - **Memory bound**: an item is charged `key + value +`
//!   [`ITEM_OVERHEAD`] bytes; storing past [`StoreLimits::memory_bytes`]
//!   evicts least recently used items first (every hit and write makes an
//!   item most recent; memcached bumps at most once a minute, an
//!   optimisation this store does not need). An expired item evicted is
//!   counted as `reclaimed`, a live one as `evictions`.
//! - **Item size limit**: an item charged over [`StoreLimits::item_max`]
//!   bytes is refused ([`Stored::TooLarge`]).
//! - **Expiry** (protocol.txt): an exptime of 0 never expires, a negative
//!   one has expired already, one up to 30 days is seconds from now, one
//!   above is a Unix time. An expired item is removed lazily when touched
//!   by a command, and by [`Store::sweep`], which looks at a bounded
//!   number of items per call, resuming where the last call stopped.
//! - `flush_all DELAY` invalidates, once `now + DELAY` is reached, every
//!   item stored before it; `flush_all` with no delay empties the store.
//!
//! It knows nothing of the ring: the owner and replica roles of the ring
//! cache sit above it, over this same API.

use std::collections::{BTreeMap, HashMap};

use bytes::{Bytes, BytesMut};

use super::proto::StoreMode;

/// Bytes charged per item beside its key and value: an estimate of the
/// index entries (hash map slot, LRU map entry, item header); memcached's
/// own item header is 48–56 bytes on 64-bit machines.
pub const ITEM_OVERHEAD: usize = 64;

/// Expiry times above this many seconds are Unix times (protocol.txt:
/// 30 days).
pub const RELATIVE_MAX: i64 = 60 * 60 * 24 * 30;

/// The store's bounds.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Bytes of items held at most (charged as the module docs say).
    pub memory_bytes: usize,
    /// Largest item, charged the same way (default 1 MiB).
    pub item_max: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            item_max: 1 << 20,
        }
    }
}

/// One held item.
#[derive(Debug, Clone)]
struct Item {
    flags: u32,
    /// Unix second it expires at; 0: never.
    expires: u64,
    cas: u64,
    value: Bytes,
    /// Unix second it was stored (for a delayed `flush_all`).
    stored: u64,
    /// Its place in the LRU order.
    lru: u64,
}

/// What a retrieval found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The item's flags.
    pub flags: u32,
    /// The item's cas unique.
    pub cas: u64,
    /// The value.
    pub value: Bytes,
}

/// The outcome of a storage command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// `STORED`.
    Stored,
    /// `NOT_STORED`: add on a held key, replace/append/prepend on a
    /// missing one.
    NotStored,
    /// `EXISTS`: cas unique changed since it was read.
    Exists,
    /// `NOT_FOUND`: cas on a missing key.
    NotFound,
    /// The item is over the size limit (nothing changed).
    TooLarge,
}

/// The outcome of `incr`/`decr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    /// The new value.
    Value(u64),
    /// No such item.
    NotFound,
    /// The value is not a decimal number below 2^64 (nothing changed).
    NonNumeric,
}

/// Counters, named as memcached's `stats` names them.
#[derive(Debug, Clone, Copy, Default)]
#[allow(missing_docs)]
pub struct Counters {
    pub cmd_get: u64,
    pub cmd_set: u64,
    pub cmd_flush: u64,
    pub cmd_touch: u64,
    pub get_hits: u64,
    pub get_misses: u64,
    pub get_expired: u64,
    pub get_flushed: u64,
    pub delete_misses: u64,
    pub delete_hits: u64,
    pub incr_misses: u64,
    pub incr_hits: u64,
    pub decr_misses: u64,
    pub decr_hits: u64,
    pub cas_misses: u64,
    pub cas_hits: u64,
    pub cas_badval: u64,
    pub touch_hits: u64,
    pub touch_misses: u64,
    pub evictions: u64,
    pub reclaimed: u64,
    pub total_items: u64,
}

/// The item store (see the module docs).
#[derive(Debug)]
pub struct Store {
    limits: StoreLimits,
    items: HashMap<Bytes, Item>,
    /// LRU order: oldest first.
    lru: BTreeMap<u64, Bytes>,
    next_lru: u64,
    next_cas: u64,
    bytes: usize,
    /// A delayed flush: items stored before this second are invalid from
    /// it on.
    flush_at: Option<u64>,
    /// Where the next sweep resumes (an LRU place).
    sweep_from: u64,
    counters: Counters,
}

/// Bytes an item is charged.
pub fn charge(key: &[u8], value_len: usize) -> usize {
    key.len() + value_len + ITEM_OVERHEAD
}

/// The Unix second an exptime from the protocol expires at (0: never).
pub fn expiry(exptime: i64, now: u64) -> u64 {
    match exptime {
        0 => 0,
        e if e < 0 => 1,
        e if e > RELATIVE_MAX => e.unsigned_abs(),
        e => now + e.unsigned_abs(),
    }
}

impl Store {
    /// An empty store.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            items: HashMap::new(),
            lru: BTreeMap::new(),
            next_lru: 0,
            next_cas: 1,
            bytes: 0,
            flush_at: None,
            sweep_from: 0,
            counters: Counters::default(),
        }
    }

    /// The bounds.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Zeroes the counters (`stats reset`).
    pub fn reset_counters(&mut self) {
        self.counters = Counters::default();
    }

    /// Items held (some may have expired, not yet removed).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes charged for the items held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// `get`/`gets` of one key.
    pub fn get(&mut self, key: &[u8], now: u64) -> Option<Hit> {
        self.counters.cmd_get += 1;
        let hit = self.live(key, now).then(|| self.bump(key));
        match hit {
            Some(h) => {
                self.counters.get_hits += 1;
                Some(h)
            }
            None => {
                self.counters.get_misses += 1;
                None
            }
        }
    }

    /// `gat`/`gats` of one key: a get that also sets the expiry.
    pub fn gat(&mut self, key: &[u8], exptime: i64, now: u64) -> Option<Hit> {
        self.counters.cmd_touch += 1;
        self.counters.cmd_get += 1;
        if !self.live(key, now) {
            self.counters.touch_misses += 1;
            self.counters.get_misses += 1;
            return None;
        }
        self.counters.touch_hits += 1;
        self.counters.get_hits += 1;
        if let Some(item) = self.items.get_mut(key) {
            item.expires = expiry(exptime, now);
        }
        Some(self.bump(key))
    }

    /// `touch`: sets the expiry; whether the key was held.
    pub fn touch(&mut self, key: &[u8], exptime: i64, now: u64) -> bool {
        self.counters.cmd_touch += 1;
        if !self.live(key, now) {
            self.counters.touch_misses += 1;
            return false;
        }
        self.counters.touch_hits += 1;
        if let Some(item) = self.items.get_mut(key) {
            item.expires = expiry(exptime, now);
        }
        self.bump(key);
        true
    }

    /// A storage command.
    pub fn store(
        &mut self,
        mode: StoreMode,
        key: &Bytes,
        flags: u32,
        exptime: i64,
        value: Bytes,
        now: u64,
    ) -> Stored {
        self.counters.cmd_set += 1;
        let held = self.live(key, now);
        let (flags, expires, value) = match mode {
            StoreMode::Set => (flags, expiry(exptime, now), value),
            StoreMode::Add if held => {
                // memcached makes the held item most recent on a failed add.
                self.bump(key);
                return Stored::NotStored;
            }
            StoreMode::Add => (flags, expiry(exptime, now), value),
            StoreMode::Replace | StoreMode::Append | StoreMode::Prepend if !held => {
                return Stored::NotStored;
            }
            StoreMode::Replace => (flags, expiry(exptime, now), value),
            StoreMode::Append | StoreMode::Prepend => {
                let old = &self.items[&key[..]];
                let mut joined = BytesMut::with_capacity(old.value.len() + value.len());
                let (first, second) = if mode == StoreMode::Append {
                    (&old.value, &value)
                } else {
                    (&value, &old.value)
                };
                joined.extend_from_slice(first);
                joined.extend_from_slice(second);
                (old.flags, old.expires, joined.freeze())
            }
            StoreMode::Cas(_) if !held => {
                self.counters.cas_misses += 1;
                return Stored::NotFound;
            }
            StoreMode::Cas(unique) if self.items[&key[..]].cas != unique => {
                self.counters.cas_badval += 1;
                return Stored::Exists;
            }
            StoreMode::Cas(_) => {
                self.counters.cas_hits += 1;
                (flags, expiry(exptime, now), value)
            }
        };
        if charge(key, value.len()) > self.limits.item_max {
            return Stored::TooLarge;
        }
        self.insert(key.clone(), flags, expires, value, now);
        Stored::Stored
    }

    /// `delete`: whether the key was held.
    pub fn delete(&mut self, key: &[u8], now: u64) -> bool {
        if self.live(key, now) {
            self.unlink(key);
            self.counters.delete_hits += 1;
            true
        } else {
            self.counters.delete_misses += 1;
            false
        }
    }

    /// `incr` (wraps at 2^64) or `decr` (stops at 0).
    pub fn arith(&mut self, incr: bool, key: &Bytes, delta: u64, now: u64) -> Arith {
        let held = self.live(key, now);
        let c = &mut self.counters;
        let count = match (incr, held) {
            (true, true) => &mut c.incr_hits,
            (true, false) => &mut c.incr_misses,
            (false, true) => &mut c.decr_hits,
            (false, false) => &mut c.decr_misses,
        };
        *count += 1;
        if !held {
            return Arith::NotFound;
        }
        let item = &self.items[&key[..]];
        let Some(n) = numeric(&item.value) else {
            return Arith::NonNumeric;
        };
        let n = if incr {
            n.wrapping_add(delta)
        } else {
            n.saturating_sub(delta)
        };
        let (flags, expires) = (item.flags, item.expires);
        self.insert(key.clone(), flags, expires, n.to_string().into(), now);
        Arith::Value(n)
    }

    /// `flush_all DELAY` (see the module docs).
    pub fn flush_all(&mut self, delay: i64, now: u64) {
        self.counters.cmd_flush += 1;
        if delay <= 0 {
            self.items.clear();
            self.lru.clear();
            self.bytes = 0;
            self.flush_at = None;
        } else {
            self.flush_at = Some(expiry(delay, now));
        }
    }

    /// Removes `key`'s item whatever its state (a `set` refused as too
    /// large, so no stale value stays).
    pub fn unlink(&mut self, key: &[u8]) {
        if let Some(item) = self.items.remove(key) {
            self.lru.remove(&item.lru);
            self.bytes -= charge(key, item.value.len());
        }
    }

    /// Looks at up to `max` items, oldest first from where the last sweep
    /// stopped, removing those expired or flushed; how many it removed.
    pub fn sweep(&mut self, now: u64, max: usize) -> usize {
        let mut seen = Vec::with_capacity(max);
        seen.extend(
            self.lru
                .range(self.sweep_from..)
                .take(max)
                .map(|(&at, k)| (at, k.clone())),
        );
        self.sweep_from = match seen.last() {
            Some(&(at, _)) if seen.len() == max => at + 1,
            _ => 0,
        };
        let mut removed = 0;
        for (_, key) in seen {
            if !self.valid(&self.items[&key], now) {
                self.unlink(&key);
                self.counters.reclaimed += 1;
                removed += 1;
            }
        }
        removed
    }

    /// Whether `key` holds a valid item; an expired or flushed one is
    /// removed on the way (lazy expiry).
    fn live(&mut self, key: &[u8], now: u64) -> bool {
        let Some(item) = self.items.get(key) else {
            return false;
        };
        if self.valid(item, now) {
            return true;
        }
        if self.flushed(item, now) {
            self.counters.get_flushed += 1;
        } else {
            self.counters.get_expired += 1;
        }
        self.counters.reclaimed += 1;
        self.unlink(key);
        false
    }

    fn flushed(&self, item: &Item, now: u64) -> bool {
        self.flush_at
            .is_some_and(|at| at <= now && item.stored < at)
    }

    fn valid(&self, item: &Item, now: u64) -> bool {
        let expired = item.expires != 0 && item.expires <= now;
        !expired && !self.flushed(item, now)
    }

    /// Makes a held item the most recent; what a hit returns.
    fn bump(&mut self, key: &[u8]) -> Hit {
        let lru = self.next_lru;
        self.next_lru += 1;
        let item = self.items.get_mut(key).expect("bump of a held key");
        let k = self
            .lru
            .remove(&item.lru)
            .expect("every item is in the LRU");
        item.lru = lru;
        self.lru.insert(lru, k);
        Hit {
            flags: item.flags,
            cas: item.cas,
            value: item.value.clone(),
        }
    }

    /// Stores an item (charged at most `item_max`, checked by the caller),
    /// replacing the key's old one, evicting the least recently used
    /// items until it fits.
    fn insert(&mut self, key: Bytes, flags: u32, expires: u64, value: Bytes, now: u64) {
        self.unlink(&key);
        // Held keys own their bytes: a key sliced out of a request line
        // would keep that line's whole buffer alive.
        let key = Bytes::copy_from_slice(&key);
        let cost = charge(&key, value.len());
        while self.bytes + cost > self.limits.memory_bytes {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            let item = self.items.remove(&oldest).expect("LRU keys are held");
            self.bytes -= charge(&oldest, item.value.len());
            if self.valid(&item, now) {
                self.counters.evictions += 1;
            } else {
                self.counters.reclaimed += 1;
            }
        }
        let cas = self.next_cas;
        self.next_cas += 1;
        let lru = self.next_lru;
        self.next_lru += 1;
        self.lru.insert(lru, key.clone());
        self.bytes += cost;
        self.counters.total_items += 1;
        self.items.insert(
            key,
            Item {
                flags,
                expires,
                cas,
                value,
                stored: now,
                lru,
            },
        );
    }
}

/// The value as memcached's `incr` reads it: decimal digits, then
/// nothing but spaces (memcached's `strtoull` check), below 2^64.
fn numeric(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii_end();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
