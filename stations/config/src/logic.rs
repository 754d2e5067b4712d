//! The config bus's logic, free of host calls so it runs in `cargo test`.
//!
//! A [`Doc`] maps each key to an [`Entry`] (a value or a tombstone, stamped
//! with `(ver, node)`). Merging keeps, per key, the entry with the larger
//! `(ver, node, value)` — a total order, so merging is commutative,
//! associative and idempotent and every node converges on the same document
//! whatever order copies meet in. The `value` part only breaks the tie of
//! two different writes stamped alike (possible after a node lost its kv
//! with its process); there `None` (tombstone) sorts below any value.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// kv prefix of live values: `cfg/<KEY>` = the value's UTF-8 bytes.
pub const CFG_PREFIX: &str = "cfg/";
/// kv prefix of entry stamps: `meta/<KEY>` = `{"ver":N,"node":I,"deleted":bool}`.
pub const META_PREFIX: &str = "meta/";
/// kv key of the config version (max `ver`), as decimal ASCII.
pub const VERSION_KEY: &str = "version";

/// Longest key an inbox item may set, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest value an inbox item may set, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// First bytes of a non-empty slot (format 1).
pub const SLOT_MAGIC: &[u8; 4] = b"RCF1";

/// One key's state: its value (`None` = deleted) and who wrote it when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value, or `None` for a tombstone.
    pub value: Option<String>,
    /// The config version this write created.
    pub ver: u64,
    /// The index of the node that made the write.
    pub node: u32,
}

impl Entry {
    fn rank(&self) -> (u64, u32, Option<&str>) {
        (self.ver, self.node, self.value.as_deref())
    }

    /// Whether `self` wins over `other` in a merge.
    pub fn beats(&self, other: &Entry) -> bool {
        self.rank() > other.rank()
    }
}

/// The whole replicated config: every key ever written, tombstones included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Doc {
    /// Entries by key, ascending.
    pub entries: BTreeMap<String, Entry>,
}

impl Doc {
    /// The config version: the largest `ver` of any entry, 0 when empty.
    pub fn version(&self) -> u64 {
        self.entries.values().map(|e| e.ver).max().unwrap_or(0)
    }

    /// How many keys have a value (tombstones not counted).
    pub fn live_keys(&self) -> usize {
        self.entries.values().filter(|e| e.value.is_some()).count()
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).and_then(|e| e.value.as_deref())
    }

    /// Keeps `entry` for `key` if the key is new or `entry` beats the
    /// current one; returns whether it was kept.
    pub fn offer(&mut self, key: &str, entry: Entry) -> bool {
        match self.entries.get_mut(key) {
            Some(current) if !entry.beats(current) => false,
            Some(current) => {
                *current = entry;
                true
            }
            None => {
                self.entries.insert(key.to_string(), entry);
                true
            }
        }
    }

    /// Merges `other` into `self`: per key, the winning entry.
    pub fn merge(&mut self, other: &Doc) {
        for (key, entry) in &other.entries {
            self.offer(key, entry.clone());
        }
    }

    /// `a` merged with `b`.
    pub fn merged(a: &Doc, b: &Doc) -> Doc {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    /// Applies a local write as the next version, made by `node`.
    pub fn apply(&mut self, write: Write, node: u32) {
        let entry = Entry {
            value: write.value,
            ver: self.version().saturating_add(1),
            node,
        };
        // `offer`, not insert: at the (unreachable) u64 ceiling the stamp
        // ties, and every node must still choose alike.
        self.offer(&write.key, entry);
    }
}

/// One inbox item: set `key` to `value`, or delete it (`value: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The key.
    pub key: String,
    /// The new value; `None` deletes.
    pub value: Option<String>,
}

/// Parses an inbox item: a JSON object `{"key":"K","value":"V"}`, `"value":
/// null` deleting. `key` must be a non-empty string of at most
/// [`MAX_KEY_BYTES`]; `value` a string of at most [`MAX_VALUE_BYTES`] or
/// null. Other fields are ignored.
pub fn parse_item(bytes: &[u8]) -> Result<Write, String> {
    let json: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(obj) = json else {
        return Err("not a JSON object".to_string());
    };
    let key = match obj.get("key") {
        Some(Value::String(k)) if k.is_empty() => return Err("\"key\" is empty".to_string()),
        Some(Value::String(k)) if k.len() > MAX_KEY_BYTES => {
            return Err(format!(
                "\"key\" is {} bytes, more than {MAX_KEY_BYTES}",
                k.len()
            ))
        }
        Some(Value::String(k)) => k.clone(),
        Some(_) => return Err("\"key\" is not a string".to_string()),
        None => return Err("no \"key\"".to_string()),
    };
    let value = match obj.get("value") {
        Some(Value::Null) => None,
        Some(Value::String(v)) if v.len() > MAX_VALUE_BYTES => {
            return Err(format!(
                "\"value\" is {} bytes, more than {MAX_VALUE_BYTES}",
                v.len()
            ))
        }
        Some(Value::String(v)) => Some(v.clone()),
        Some(_) => return Err("\"value\" is neither a string nor null".to_string()),
        None => return Err("no \"value\" (use null to delete)".to_string()),
    };
    Ok(Write { key, value })
}

/// Encodes a document as a slot (format 1, all integers little-endian):
///
/// ```text
/// "RCF1"                      4 bytes, magic
/// version                     u64, the max ver of the entries
/// count                       u32, number of entries
/// count times, keys strictly ascending (byte order):
///   key_len  u32, key        UTF-8, non-empty
///   ver      u64
///   node     u32
///   kind     u8: 0 = tombstone, 1 = value
///   if kind = 1: value_len u32, value UTF-8
/// ```
///
/// An empty document still encodes (13 bytes); an empty slot decodes as an
/// empty document.
pub fn encode_slot(doc: &Doc) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + doc.entries.len() * 32);
    out.extend_from_slice(SLOT_MAGIC);
    out.extend_from_slice(&doc.version().to_le_bytes());
    out.extend_from_slice(&len_u32(doc.entries.len()).to_le_bytes());
    for (key, entry) in &doc.entries {
        out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&entry.ver.to_le_bytes());
        out.extend_from_slice(&entry.node.to_le_bytes());
        match &entry.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&len_u32(v.len()).to_le_bytes());
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
    out
}

fn len_u32(n: usize) -> u32 {
    // Slots are at most 1 MiB; anything longer is cut off by the host anyway.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decodes a slot made by [`encode_slot`]; empty = empty document. Any
/// deviation (magic, truncation, trailing bytes, bad UTF-8, empty, unsorted
/// or repeated keys, a version that is not the max ver) is an error.
pub fn decode_slot(slot: &[u8]) -> Result<Doc, String> {
    if slot.is_empty() {
        return Ok(Doc::default());
    }
    let mut r = Reader { buf: slot, pos: 0 };
    if r.take(4, "magic")? != SLOT_MAGIC {
        return Err("bad magic (expected \"RCF1\")".to_string());
    }
    let version = r.u64("version")?;
    let count = r.u32("entry count")?;
    let mut doc = Doc::default();
    let mut previous: Option<String> = None;
    for i in 0..count {
        let key_len = r.u32("key length")? as usize;
        let key = r.utf8(key_len, "key")?;
        if key.is_empty() {
            return Err(format!("entry {i} has an empty key"));
        }
        if previous.as_deref().is_some_and(|p| p >= key.as_str()) {
            return Err(format!("entry {i} key {key:?} is out of order"));
        }
        let ver = r.u64("ver")?;
        let node = r.u32("node")?;
        let value = match r.take(1, "kind")?[0] {
            0 => None,
            1 => {
                let len = r.u32("value length")? as usize;
                Some(r.utf8(len, "value")?)
            }
            k => return Err(format!("entry {i} has kind {k} (expected 0 or 1)")),
        };
        previous = Some(key.clone());
        doc.entries.insert(key, Entry { value, ver, node });
    }
    if r.pos != slot.len() {
        return Err(format!("{} trailing bytes", slot.len() - r.pos));
    }
    if version != doc.version() {
        return Err(format!(
            "version {version} is not the entries' max ver {}",
            doc.version()
        ));
    }
    Ok(doc)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| format!("truncated at byte {} reading {what}", self.pos))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        Ok(u64::from_le_bytes(le))
    }

    fn utf8(&mut self, n: usize, what: &str) -> Result<String, String> {
        let at = self.pos;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} at byte {at} is not UTF-8"))
    }
}

/// The kv key of `key`'s value.
pub fn cfg_key(key: &str) -> String {
    format!("{CFG_PREFIX}{key}")
}

/// The kv key of `key`'s stamp.
pub fn meta_key(key: &str) -> String {
    format!("{META_PREFIX}{key}")
}

/// The `meta/<KEY>` value of an entry, exactly
/// `{"ver":N,"node":I,"deleted":bool}`.
pub fn encode_meta(entry: &Entry) -> Vec<u8> {
    format!(
        "{{\"ver\":{},\"node\":{},\"deleted\":{}}}",
        entry.ver,
        entry.node,
        entry.value.is_none()
    )
    .into_bytes()
}

/// Parses a `meta/<KEY>` value: `(ver, node, deleted)`.
pub fn decode_meta(bytes: &[u8]) -> Result<(u64, u32, bool), String> {
    let json: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let ver = json.get("ver").and_then(Value::as_u64);
    let node = json
        .get("node")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    let deleted = json.get("deleted").and_then(Value::as_bool);
    match (ver, node, deleted) {
        (Some(ver), Some(node), Some(deleted)) => Ok((ver, node, deleted)),
        _ => Err("expected {\"ver\":u64,\"node\":u32,\"deleted\":bool}".to_string()),
    }
}

/// This node's copy as read from kv.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Local {
    /// The entries of every readable `meta/<KEY>` (with its `cfg/<KEY>`).
    pub doc: Doc,
    /// The keys K that have a `cfg/K` in kv (to find strays).
    pub cfg_keys: BTreeSet<String>,
    /// The raw value of the `version` key.
    pub stored_version: Option<Vec<u8>>,
    /// Problems found (unreadable entries are skipped).
    pub warnings: Vec<String>,
}

/// Reads the local copy from the station's kv `keys` (as `kv.keys`
/// returns them) through `get`. An unreadable `meta/K`, or a live one whose
/// `cfg/K` is missing or not UTF-8, is skipped with a warning.
pub fn load_local(keys: &[String], mut get: impl FnMut(&str) -> Option<Vec<u8>>) -> Local {
    let mut local = Local {
        stored_version: get(VERSION_KEY),
        ..Local::default()
    };
    for kv_key in keys {
        if let Some(key) = kv_key.strip_prefix(CFG_PREFIX) {
            local.cfg_keys.insert(key.to_string());
        }
    }
    for kv_key in keys {
        let Some(key) = kv_key.strip_prefix(META_PREFIX) else {
            continue;
        };
        let Some(raw) = get(kv_key) else {
            continue;
        };
        let (ver, node, deleted) = match decode_meta(&raw) {
            Ok(m) => m,
            Err(e) => {
                local
                    .warnings
                    .push(format!("config: kv {kv_key:?}: {e}; ignoring the entry"));
                continue;
            }
        };
        let value = if deleted {
            None
        } else {
            match get(&cfg_key(key)).map(String::from_utf8) {
                Some(Ok(v)) => Some(v),
                Some(Err(_)) => {
                    local.warnings.push(format!(
                        "config: kv \"{CFG_PREFIX}{key}\" is not UTF-8; ignoring the entry"
                    ));
                    continue;
                }
                None => {
                    local.warnings.push(format!(
                        "config: kv \"{CFG_PREFIX}{key}\" is missing; ignoring the entry"
                    ));
                    continue;
                }
            }
        };
        local
            .doc
            .entries
            .insert(key.to_string(), Entry { value, ver, node });
    }
    local
}

/// A change to make in kv.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Store `entry` for `key`: `cfg/<key>` (set, or delete for a tombstone)
    /// and `meta/<key>`.
    Put {
        /// The config key.
        key: String,
        /// Its new entry.
        entry: Entry,
    },
    /// Delete `cfg/<key>`, a value with no live entry behind it.
    DropStray {
        /// The config key.
        key: String,
    },
}

/// What one visit produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The merged document with the inbox applied.
    pub doc: Doc,
    /// Its encoding: the new slot.
    pub slot: Vec<u8>,
    /// The kv changes that bring the local copy to `doc`, by key.
    pub ops: Vec<KvOp>,
    /// Warnings to log (dropped inbox items).
    pub warnings: Vec<String>,
    /// An error to log (a malformed slot, replaced by the local copy).
    pub error: Option<String>,
}

/// One visit: merges the slot into the local copy, applies the inbox items
/// in order as writes by `node`, and lists the kv changes.
pub fn step(local: &Local, slot: &[u8], items: &[Vec<u8>], node: u32) -> Step {
    let mut doc = local.doc.clone();
    let mut error = None;
    match decode_slot(slot) {
        Ok(incoming) => doc.merge(&incoming),
        Err(e) => {
            error = Some(format!(
                "config: malformed slot ({e}); starting from the local copy"
            ))
        }
    }
    let mut warnings = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match parse_item(item) {
            Ok(write) => doc.apply(write, node),
            Err(e) => warnings.push(format!(
                "config: dropping inbox item {i}: {e}: {}",
                preview(item)
            )),
        }
    }
    let mut ops = Vec::new();
    for (key, entry) in &doc.entries {
        if local.doc.entries.get(key) != Some(entry) {
            ops.push(KvOp::Put {
                key: key.clone(),
                entry: entry.clone(),
            });
        }
    }
    for key in &local.cfg_keys {
        let replaced = ops
            .iter()
            .any(|op| matches!(op, KvOp::Put { key: k, .. } if k == key));
        if doc.get(key).is_none() && !replaced {
            ops.push(KvOp::DropStray { key: key.clone() });
        }
    }
    Step {
        slot: encode_slot(&doc),
        doc,
        ops,
        warnings,
        error,
    }
}

/// The first 80 bytes of an item, for a log line.
fn preview(item: &[u8]) -> String {
    let cut = &item[..item.len().min(80)];
    let mut text = format!("{:?}", String::from_utf8_lossy(cut));
    if item.len() > cut.len() {
        text.push('…');
    }
    text
}

/// The info line logged when the applied version changes, exactly
/// `config version=<N> keys=<live keys>`.
pub fn version_line(doc: &Doc) -> String {
    format!("config version={} keys={}", doc.version(), doc.live_keys())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: Option<&str>, ver: u64, node: u32) -> Entry {
        Entry {
            value: value.map(str::to_string),
            ver,
            node,
        }
    }

    fn doc(entries: &[(&str, Option<&str>, u64, u32)]) -> Doc {
        let mut d = Doc::default();
        for &(k, v, ver, node) in entries {
            d.entries.insert(k.to_string(), entry(v, ver, node));
        }
        d
    }

    fn item(key: &str, value: Option<&str>) -> Vec<u8> {
        serde_json::json!({ "key": key, "value": value })
            .to_string()
            .into_bytes()
    }

    /// A small deterministic generator (xorshift), for pseudo-random docs.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_doc(rng: &mut Rng) -> Doc {
        let mut d = Doc::default();
        for _ in 0..rng.below(8) {
            let key = format!("k{}", rng.below(5));
            let value = match rng.below(4) {
                0 => None,
                n => Some(format!("v{n}")),
            };
            // Small ranges so stamps collide often.
            d.offer(
                &key,
                Entry {
                    value,
                    ver: rng.below(4),
                    node: rng.below(3) as u32,
                },
            );
        }
        d
    }

    #[test]
    fn merge_is_commutative_associative_idempotent() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let (a, b, c) = (
                random_doc(&mut rng),
                random_doc(&mut rng),
                random_doc(&mut rng),
            );
            assert_eq!(Doc::merged(&a, &b), Doc::merged(&b, &a), "{a:?} {b:?}");
            assert_eq!(
                Doc::merged(&Doc::merged(&a, &b), &c),
                Doc::merged(&a, &Doc::merged(&b, &c))
            );
            assert_eq!(Doc::merged(&a, &a), a);
            let ab = Doc::merged(&a, &b);
            assert_eq!(Doc::merged(&ab, &b), ab);
            assert_eq!(Doc::merged(&a, &Doc::default()), a);
        }
    }

    #[test]
    fn larger_ver_then_larger_node_wins() {
        let a = doc(&[("k", Some("old"), 3, 2)]);
        let b = doc(&[("k", Some("new"), 4, 0)]);
        assert_eq!(Doc::merged(&a, &b).get("k"), Some("new"));
        assert_eq!(Doc::merged(&b, &a).get("k"), Some("new"));
        let c = doc(&[("k", Some("node1"), 4, 1)]);
        assert_eq!(Doc::merged(&b, &c).get("k"), Some("node1"));
        assert_eq!(Doc::merged(&c, &b).get("k"), Some("node1"));
    }

    #[test]
    fn concurrent_writes_resolve_alike_on_every_node() {
        // Nodes 1 and 2 both see version 5 and write the same key at once.
        let base = doc(&[("x", Some("0"), 5, 0)]);
        let mut n1 = base.clone();
        let mut n2 = base.clone();
        n1.apply(
            Write {
                key: "k".into(),
                value: Some("from1".into()),
            },
            1,
        );
        n2.apply(
            Write {
                key: "k".into(),
                value: Some("from2".into()),
            },
            2,
        );
        assert_eq!(n1.entries["k"], entry(Some("from1"), 6, 1));
        assert_eq!(n2.entries["k"], entry(Some("from2"), 6, 2));
        // Whatever order the copies meet in, on whichever node.
        let orders = [
            Doc::merged(&n1, &n2),
            Doc::merged(&n2, &n1),
            Doc::merged(&Doc::merged(&base, &n2), &n1),
            Doc::merged(&Doc::merged(&n1, &base), &n2),
        ];
        for d in &orders {
            assert_eq!(d, &orders[0]);
            assert_eq!(d.get("k"), Some("from2"));
            assert_eq!(d.version(), 6);
        }
    }

    #[test]
    fn same_stamp_different_values_still_converges() {
        let a = doc(&[("k", Some("a"), 7, 1)]);
        let b = doc(&[("k", Some("b"), 7, 1)]);
        let t = doc(&[("k", None, 7, 1)]);
        assert_eq!(Doc::merged(&a, &b), Doc::merged(&b, &a));
        assert_eq!(Doc::merged(&a, &b).get("k"), Some("b"));
        assert_eq!(Doc::merged(&a, &t), Doc::merged(&t, &a));
    }

    #[test]
    fn tombstones_win_over_older_values_and_lose_to_newer() {
        let value = doc(&[("k", Some("v"), 2, 0)]);
        let tomb = doc(&[("k", None, 3, 1)]);
        for d in [Doc::merged(&value, &tomb), Doc::merged(&tomb, &value)] {
            assert_eq!(d.get("k"), None);
            assert_eq!(d.entries["k"], entry(None, 3, 1));
            assert_eq!(d.live_keys(), 0);
            assert_eq!(d.version(), 3);
        }
        let revived = doc(&[("k", Some("again"), 4, 0)]);
        assert_eq!(Doc::merged(&tomb, &revived).get("k"), Some("again"));
        assert_eq!(Doc::merged(&revived, &tomb).get("k"), Some("again"));
    }

    #[test]
    fn inbox_items_apply_in_order_as_successive_versions() {
        let local = Local {
            doc: doc(&[("z", Some("0"), 10, 4)]),
            ..Local::default()
        };
        let items = vec![
            item("a", Some("1")),
            item("b", Some("2")),
            item("a", Some("3")),
            item("z", None),
        ];
        let s = step(&local, &[], &items, 3);
        assert_eq!(s.doc.entries["b"], entry(Some("2"), 12, 3));
        assert_eq!(s.doc.entries["a"], entry(Some("3"), 13, 3));
        assert_eq!(s.doc.entries["z"], entry(None, 14, 3));
        assert_eq!(s.doc.version(), 14);
        assert_eq!(s.doc.live_keys(), 2);
        assert!(s.warnings.is_empty() && s.error.is_none());
    }

    #[test]
    fn writes_go_above_the_merged_version() {
        let local = Local {
            doc: doc(&[("a", Some("1"), 2, 0)]),
            ..Local::default()
        };
        let slot = encode_slot(&doc(&[("b", Some("x"), 9, 5)]));
        let s = step(&local, &slot, &[item("c", Some("y"))], 0);
        assert_eq!(s.doc.entries["c"], entry(Some("y"), 10, 0));
    }

    #[test]
    fn malformed_items_are_dropped() {
        let bad: Vec<Vec<u8>> = vec![
            b"not json".to_vec(),
            b"[1,2]".to_vec(),
            b"{\"value\":\"v\"}".to_vec(),
            b"{\"key\":3,\"value\":\"v\"}".to_vec(),
            b"{\"key\":\"\",\"value\":\"v\"}".to_vec(),
            b"{\"key\":\"k\"}".to_vec(),
            b"{\"key\":\"k\",\"value\":5}".to_vec(),
            b"{\"key\":\"k\",\"value\":\"\xff\"}".to_vec(),
            vec![0xff, 0xfe, 0x00],
            Vec::new(),
            item(&"k".repeat(MAX_KEY_BYTES + 1), Some("v")),
            item("k", Some(&"v".repeat(MAX_VALUE_BYTES + 1))),
        ];
        for b in &bad {
            assert!(parse_item(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        let mut items = bad.clone();
        items.insert(3, item("ok", Some("1")));
        items.push(item("ok2", None));
        let s = step(&Local::default(), &[], &items, 1);
        assert_eq!(s.warnings.len(), bad.len());
        assert!(s.warnings[0].starts_with("config: dropping inbox item 0: not JSON"));
        assert_eq!(s.doc.entries["ok"], entry(Some("1"), 1, 1));
        assert_eq!(s.doc.entries["ok2"], entry(None, 2, 1));
        assert_eq!(s.doc.entries.len(), 2);
    }

    #[test]
    fn item_extra_fields_and_limits() {
        assert_eq!(
            parse_item(br#"{"key":"a/b","value":"x y","note":1}"#),
            Ok(Write {
                key: "a/b".into(),
                value: Some("x y".into())
            })
        );
        assert_eq!(
            parse_item(br#"{"key":"k","value":null}"#),
            Ok(Write {
                key: "k".into(),
                value: None
            })
        );
        assert!(parse_item(&item(&"k".repeat(MAX_KEY_BYTES), Some(""))).is_ok());
        assert!(parse_item(&item("k", Some(&"v".repeat(MAX_VALUE_BYTES)))).is_ok());
    }

    #[test]
    fn slot_round_trip_and_exact_layout() {
        assert_eq!(decode_slot(&[]), Ok(Doc::default()));
        let empty = encode_slot(&Doc::default());
        assert_eq!(empty, b"RCF1\0\0\0\0\0\0\0\0\0\0\0\0".to_vec());
        assert_eq!(decode_slot(&empty), Ok(Doc::default()));

        let d = doc(&[("a", Some("hé"), 2, 1), ("b", None, 3, 0)]);
        let bytes = encode_slot(&d);
        let mut want = b"RCF1".to_vec();
        want.extend(3u64.to_le_bytes());
        want.extend(2u32.to_le_bytes());
        want.extend(1u32.to_le_bytes());
        want.extend(b"a");
        want.extend(2u64.to_le_bytes());
        want.extend(1u32.to_le_bytes());
        want.push(1);
        want.extend(3u32.to_le_bytes());
        want.extend("hé".as_bytes());
        want.extend(1u32.to_le_bytes());
        want.extend(b"b");
        want.extend(3u64.to_le_bytes());
        want.extend(0u32.to_le_bytes());
        want.push(0);
        assert_eq!(bytes, want);
        assert_eq!(decode_slot(&bytes), Ok(d));

        let mut rng = Rng(42);
        for _ in 0..200 {
            let d = random_doc(&mut rng);
            assert_eq!(decode_slot(&encode_slot(&d)), Ok(d));
        }
    }

    #[test]
    fn malformed_slots_are_errors() {
        let good = encode_slot(&doc(&[("a", Some("1"), 2, 1), ("b", None, 3, 0)]));
        let mut cases: Vec<Vec<u8>> = vec![
            b"RCF2".to_vec(),
            b"xyz".to_vec(),
            good[..good.len() - 1].to_vec(),
            [good.as_slice(), &[0]].concat(),
        ];
        // Wrong version.
        let mut v = good.clone();
        v[4] = 9;
        cases.push(v);
        // Bad kind.
        let mut k = good.clone();
        let last = k.len() - 1;
        k[last] = 7;
        cases.push(k);
        // Keys out of order / repeated / empty.
        for keys in [["b", "a"], ["a", "a"]] {
            let mut s = b"RCF1".to_vec();
            s.extend(1u64.to_le_bytes());
            s.extend(2u32.to_le_bytes());
            for key in keys {
                s.extend(1u32.to_le_bytes());
                s.extend(key.as_bytes());
                s.extend(1u64.to_le_bytes());
                s.extend(0u32.to_le_bytes());
                s.push(0);
            }
            cases.push(s);
        }
        let mut e = b"RCF1".to_vec();
        e.extend(0u64.to_le_bytes());
        e.extend(1u32.to_le_bytes());
        e.extend(0u32.to_le_bytes());
        e.extend(0u64.to_le_bytes());
        e.extend(0u32.to_le_bytes());
        e.push(0);
        cases.push(e);
        // A huge length must not allocate or panic.
        let mut h = b"RCF1".to_vec();
        h.extend(0u64.to_le_bytes());
        h.extend(u32::MAX.to_le_bytes());
        h.extend(u32::MAX.to_le_bytes());
        cases.push(h);
        for c in &cases {
            assert!(decode_slot(c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn malformed_slot_starts_from_local_copy() {
        let local = Local {
            doc: doc(&[("a", Some("1"), 4, 2)]),
            ..Local::default()
        };
        let s = step(&local, b"garbage", &[item("b", Some("2"))], 0);
        assert!(s
            .error
            .as_deref()
            .unwrap()
            .starts_with("config: malformed slot (bad magic"));
        assert_eq!(s.doc.get("a"), Some("1"));
        assert_eq!(s.doc.entries["b"], entry(Some("2"), 5, 0));
        assert_eq!(decode_slot(&s.slot), Ok(s.doc.clone()));
    }

    #[test]
    fn lost_particle_is_refilled_from_local_copy() {
        // A fresh particle (empty slot) picks up what this node knew.
        let local = Local {
            doc: doc(&[("a", Some("1"), 4, 2), ("gone", None, 5, 1)]),
            ..Local::default()
        };
        let s = step(&local, &[], &[], 0);
        assert_eq!(s.doc, local.doc);
        assert!(s.ops.is_empty());
        assert_eq!(decode_slot(&s.slot), Ok(local.doc));
    }

    #[test]
    fn meta_format() {
        assert_eq!(
            encode_meta(&entry(Some("v"), 12, 3)),
            br#"{"ver":12,"node":3,"deleted":false}"#.to_vec()
        );
        assert_eq!(
            encode_meta(&entry(None, 1, 0)),
            br#"{"ver":1,"node":0,"deleted":true}"#.to_vec()
        );
        assert_eq!(
            decode_meta(br#"{"ver":12,"node":3,"deleted":false}"#),
            Ok((12, 3, false))
        );
        assert!(decode_meta(br#"{"ver":-1,"node":3,"deleted":false}"#).is_err());
        assert!(decode_meta(br#"{"ver":1,"node":4294967296,"deleted":false}"#).is_err());
        assert!(decode_meta(b"nope").is_err());
    }

    fn kv_of(d: &Doc) -> BTreeMap<String, Vec<u8>> {
        let mut kv = BTreeMap::new();
        for (k, e) in &d.entries {
            if let Some(v) = &e.value {
                kv.insert(cfg_key(k), v.clone().into_bytes());
            }
            kv.insert(meta_key(k), encode_meta(e));
        }
        kv.insert(
            VERSION_KEY.to_string(),
            d.version().to_string().into_bytes(),
        );
        kv
    }

    fn load(kv: &BTreeMap<String, Vec<u8>>) -> Local {
        let keys: Vec<String> = kv.keys().cloned().collect();
        load_local(&keys, |k| kv.get(k).cloned())
    }

    /// Runs the ops the way lib.rs does, on a map.
    fn run(kv: &mut BTreeMap<String, Vec<u8>>, s: &Step) {
        for op in &s.ops {
            match op {
                KvOp::Put { key, entry } => {
                    match &entry.value {
                        Some(v) => kv.insert(cfg_key(key), v.clone().into_bytes()),
                        None => kv.remove(&cfg_key(key)),
                    };
                    kv.insert(meta_key(key), encode_meta(entry));
                }
                KvOp::DropStray { key } => {
                    kv.remove(&cfg_key(key));
                }
            }
        }
        kv.insert(
            VERSION_KEY.to_string(),
            s.doc.version().to_string().into_bytes(),
        );
    }

    #[test]
    fn kv_round_trip() {
        let d = doc(&[
            ("a", Some("1"), 2, 1),
            ("b", None, 3, 0),
            ("c/d", Some(""), 1, 2),
        ]);
        let local = load(&kv_of(&d));
        assert_eq!(local.doc, d);
        assert_eq!(local.stored_version, Some(b"3".to_vec()));
        assert!(local.warnings.is_empty());
        assert_eq!(
            local.cfg_keys,
            ["a", "c/d"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn kv_ops_write_only_changes_and_match_the_doc() {
        let mut kv = kv_of(&doc(&[("a", Some("1"), 2, 1), ("b", Some("x"), 3, 0)]));
        let slot = encode_slot(&doc(&[("a", Some("1"), 2, 1), ("c", Some("new"), 4, 2)]));
        let s = step(&load(&kv), &slot, &[item("b", None)], 1);
        assert_eq!(
            s.ops,
            vec![
                KvOp::Put {
                    key: "b".into(),
                    entry: entry(None, 5, 1)
                },
                KvOp::Put {
                    key: "c".into(),
                    entry: entry(Some("new"), 4, 2)
                },
            ]
        );
        run(&mut kv, &s);
        assert_eq!(kv, kv_of(&s.doc));
        assert_eq!(kv.get("cfg/b"), None);
        assert_eq!(
            kv["meta/b"],
            br#"{"ver":5,"node":1,"deleted":true}"#.to_vec()
        );
        assert_eq!(kv["version"], b"5".to_vec());
        // Nothing new: nothing to write.
        let again = step(&load(&kv), &s.slot, &[], 1);
        assert!(again.ops.is_empty());
        assert_eq!(again.slot, s.slot);
    }

    #[test]
    fn unreadable_kv_entries_are_skipped_and_repaired() {
        let mut kv = BTreeMap::new();
        kv.insert("meta/bad".to_string(), b"{".to_vec());
        kv.insert(
            "meta/nocfg".to_string(),
            encode_meta(&entry(Some("v"), 1, 0)),
        );
        kv.insert("cfg/stray".to_string(), b"left over".to_vec());
        kv.insert("cfg/latin".to_string(), vec![0xe9]);
        kv.insert(
            "meta/latin".to_string(),
            encode_meta(&entry(Some("x"), 2, 0)),
        );
        let local = load(&kv);
        assert!(local.doc.entries.is_empty());
        assert_eq!(local.warnings.len(), 3, "{:?}", local.warnings);
        // The slot knows "nocfg": the local copy is rewritten from it; the
        // stray and the non-UTF-8 values go.
        let slot = encode_slot(&doc(&[("nocfg", Some("v"), 1, 0)]));
        let s = step(&local, &slot, &[], 0);
        run(&mut kv, &s);
        assert_eq!(kv.get("cfg/nocfg"), Some(&b"v".to_vec()));
        assert_eq!(kv.get("cfg/stray"), None);
        assert_eq!(kv.get("cfg/latin"), None);
    }

    #[test]
    fn version_line_format() {
        let d = doc(&[("a", Some("1"), 2, 1), ("b", None, 7, 0)]);
        assert_eq!(version_line(&d), "config version=7 keys=1");
        assert_eq!(version_line(&Doc::default()), "config version=0 keys=0");
    }

    #[test]
    fn ring_converges() {
        // Three nodes, writes in their inboxes, the particle goes around
        // twice: every node ends with the same copy.
        let mut kvs: Vec<BTreeMap<String, Vec<u8>>> = vec![BTreeMap::new(); 3];
        let mut inboxes = [
            vec![item("k", Some("n0")), item("a", Some("1"))],
            vec![item("k", Some("n1"))],
            vec![item("a", None), b"junk".to_vec()],
        ];
        let mut slot = Vec::new();
        for _lap in 0..2 {
            for (node, kv) in kvs.iter_mut().enumerate() {
                let items = std::mem::take(&mut inboxes[node]);
                let s = step(&load(kv), &slot, &items, node as u32);
                run(kv, &s);
                slot = s.slot;
            }
        }
        let final_doc = decode_slot(&slot).unwrap();
        for kv in &kvs {
            assert_eq!(load(kv).doc, final_doc);
        }
        assert_eq!(final_doc.get("k"), Some("n1"));
        assert_eq!(final_doc.get("a"), None);
        assert_eq!(final_doc.version(), 4);
    }
}
