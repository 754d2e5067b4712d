use super::*;

const T0: u64 = 1_800_000_000;

fn k(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn set(store: &mut Store, key: &str, value: &str, exptime: i64, now: u64) -> Stored {
    store.store(StoreMode::Set, &k(key), 0, exptime, k(value), now)
}

fn value(store: &mut Store, key: &str, now: u64) -> Option<String> {
    store
        .get(key.as_bytes(), now)
        .map(|h| String::from_utf8(h.value.to_vec()).unwrap())
}

fn small(items: usize, value_len: usize) -> Store {
    let per = charge(b"k0", value_len);
    Store::new(StoreLimits {
        memory_bytes: per * items,
        item_max: per,
    })
}

#[test]
fn the_least_recently_used_item_is_evicted_first() {
    let v = "v".repeat(100);
    let mut s = small(3, 100);
    for key in ["k0", "k1", "k2"] {
        assert_eq!(set(&mut s, key, &v, 0, T0), Stored::Stored);
    }
    // k0 is read, so k1 is now the least recently used.
    assert!(value(&mut s, "k0", T0).is_some());
    set(&mut s, "k3", &v, 0, T0);
    assert_eq!(value(&mut s, "k1", T0), None);
    assert!(value(&mut s, "k0", T0).is_some());
    // k2 is next.
    set(&mut s, "k4", &v, 0, T0);
    assert_eq!(value(&mut s, "k2", T0), None);
    assert_eq!(s.counters().evictions, 2);
    assert_eq!(s.len(), 3);
    assert!(s.bytes() <= s.limits().memory_bytes);
}

#[test]
fn expiry_counts_relative_seconds_unix_times_and_negatives() {
    let mut s = Store::new(StoreLimits::default());
    set(&mut s, "rel", "1", 10, T0);
    set(&mut s, "abs", "2", i64::try_from(T0).unwrap() + 5, T0);
    set(&mut s, "neg", "3", -1, T0);
    set(&mut s, "never", "4", 0, T0);
    assert_eq!(value(&mut s, "neg", T0), None);
    assert_eq!(value(&mut s, "abs", T0 + 4).as_deref(), Some("2"));
    assert_eq!(value(&mut s, "abs", T0 + 5), None);
    assert_eq!(value(&mut s, "rel", T0 + 9).as_deref(), Some("1"));
    assert_eq!(value(&mut s, "rel", T0 + 10), None);
    assert_eq!(value(&mut s, "never", T0 + 1_000_000).as_deref(), Some("4"));
    assert_eq!(s.counters().get_expired, 3);
    // touch and gat move the expiry.
    set(&mut s, "t", "5", 10, T0);
    assert!(s.touch(b"t", 100, T0 + 5));
    assert!(s.gat(b"t", 0, T0 + 50).is_some());
    assert_eq!(value(&mut s, "t", T0 + 10_000).as_deref(), Some("5"));
}

#[test]
fn the_sweep_removes_expired_items_a_bounded_number_at_a_time() {
    let mut s = Store::new(StoreLimits::default());
    for i in 0..10 {
        set(&mut s, &format!("e{i}"), "x", 5, T0);
        set(&mut s, &format!("l{i}"), "x", 0, T0);
    }
    assert_eq!(s.sweep(T0 + 1, 100), 0);
    // 20 items, 4 looked at per call: five calls see them all.
    let removed: usize = (0..5).map(|_| s.sweep(T0 + 5, 4)).sum();
    assert_eq!(removed, 10);
    assert_eq!(s.len(), 10);
    assert_eq!(s.bytes(), 10 * charge(b"l0", 1));
}

#[test]
fn add_replace_append_prepend_and_cas_follow_the_protocol() {
    let mut s = Store::new(StoreLimits::default());
    let key = k("a");
    assert_eq!(
        s.store(StoreMode::Replace, &key, 0, 0, k("x"), T0),
        Stored::NotStored
    );
    assert_eq!(
        s.store(StoreMode::Append, &key, 0, 0, k("x"), T0),
        Stored::NotStored
    );
    assert_eq!(
        s.store(StoreMode::Add, &key, 7, 0, k("mid"), T0),
        Stored::Stored
    );
    assert_eq!(
        s.store(StoreMode::Add, &key, 0, 0, k("x"), T0),
        Stored::NotStored
    );
    s.store(StoreMode::Append, &key, 1, 0, k(">"), T0);
    s.store(StoreMode::Prepend, &key, 1, 0, k("<"), T0);
    let hit = s.get(b"a", T0).unwrap();
    assert_eq!((&hit.value[..], hit.flags), (&b"<mid>"[..], 7));
    let cas = hit.cas;
    assert_eq!(
        s.store(StoreMode::Cas(cas + 1), &key, 0, 0, k("no"), T0),
        Stored::Exists
    );
    assert_eq!(
        s.store(StoreMode::Cas(cas), &key, 0, 0, k("yes"), T0),
        Stored::Stored
    );
    assert_eq!(
        s.store(StoreMode::Cas(cas), &key, 0, 0, k("again"), T0),
        Stored::Exists
    );
    assert_eq!(
        s.store(StoreMode::Cas(1), &k("none"), 0, 0, k("x"), T0),
        Stored::NotFound
    );
    assert_ne!(s.get(b"a", T0).unwrap().cas, cas);
}

#[test]
fn incr_wraps_decr_floors_and_text_is_refused() {
    let mut s = Store::new(StoreLimits::default());
    set(&mut s, "n", "18446744073709551615", 0, T0);
    assert_eq!(s.arith(true, &k("n"), 2, T0), Arith::Value(1));
    assert_eq!(s.arith(false, &k("n"), 5, T0), Arith::Value(0));
    set(&mut s, "txt", "abc", 0, T0);
    assert_eq!(s.arith(true, &k("txt"), 1, T0), Arith::NonNumeric);
    assert_eq!(s.arith(true, &k("none"), 1, T0), Arith::NotFound);
    set(&mut s, "big", "18446744073709551616", 0, T0);
    assert_eq!(s.arith(true, &k("big"), 1, T0), Arith::NonNumeric);
    set(&mut s, "sp", "10 ", 0, T0);
    assert_eq!(s.arith(false, &k("sp"), 1, T0), Arith::Value(9));
    assert_eq!(value(&mut s, "sp", T0).as_deref(), Some("9"));
}

#[test]
fn flush_all_with_a_delay_invalidates_only_what_was_stored_before_it() {
    let mut s = Store::new(StoreLimits::default());
    set(&mut s, "old", "1", 0, T0);
    s.flush_all(10, T0);
    assert_eq!(value(&mut s, "old", T0 + 9).as_deref(), Some("1"));
    set(&mut s, "new", "2", 0, T0 + 10);
    assert_eq!(value(&mut s, "old", T0 + 10), None);
    assert_eq!(value(&mut s, "new", T0 + 11).as_deref(), Some("2"));
    s.flush_all(0, T0 + 11);
    assert!(s.is_empty() && s.bytes() == 0);
}

#[test]
fn an_item_over_the_size_limit_is_refused_and_changes_nothing() {
    let mut s = small(4, 100);
    set(&mut s, "k0", "v", 0, T0);
    let big = "x".repeat(101);
    assert_eq!(set(&mut s, "k1", &big, 0, T0), Stored::TooLarge);
    // Appending past the limit is refused too.
    let near = "y".repeat(100);
    set(&mut s, "k2", &near, 0, T0);
    assert_eq!(
        s.store(StoreMode::Append, &k("k2"), 0, 0, k("z"), T0),
        Stored::TooLarge
    );
    assert_eq!(value(&mut s, "k2", T0), Some(near));
    assert_eq!(s.len(), 2);
}
