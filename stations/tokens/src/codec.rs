//! The slot's bytes: [`encode`] and [`decode`] of a [`Catalog`]. The layout
//! is documented byte by byte in the README ("Slot"); in short: a fixed
//! 22-byte header (`"RTOK"`, version 1, bucket ms, bucket count, head bucket,
//! capacity), then LEB128 varints: watermarks, per-bucket totals and
//! deficits, token rows (sorted), blocklist (sorted), redemptions (sorted).

use std::collections::BTreeMap;

use crate::catalog::{Block, BlockKind, Catalog, Redemption};
use crate::input::{MAX_REASON, MAX_TOKEN};
use crate::nodeset::NodeSet;
use crate::summary::{Counter, Summary};

/// The slot's first four bytes.
pub const MAGIC: &[u8; 4] = b"RTOK";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Most buckets a window may have (the row mask is a u32).
pub const MAX_BUCKETS: usize = 32;
/// Highest node index the slot accepts (keeps a bad slot from allocating).
pub const MAX_NODE: u32 = 1 << 16;

/// Why a slot was refused. The caller starts from an empty catalog (see
/// README: a malformed slot is treated like a lost one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not `"RTOK"`.
    BadMagic,
    /// A version this code does not read.
    BadVersion(u8),
    /// Ended inside a field.
    Truncated,
    /// Bytes after the last section.
    TrailingBytes(usize),
    /// A field out of its range, named.
    Invalid(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadMagic => f.write_str("bad magic"),
            DecodeError::BadVersion(v) => write!(f, "unknown version {v}"),
            DecodeError::Truncated => f.write_str("truncated"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} trailing bytes"),
            DecodeError::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

fn put_var(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_token(out: &mut Vec<u8>, t: &str) {
    out.push((t.len() - 1) as u8);
    out.extend_from_slice(t.as_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_var(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The slot's sections, encoded apart (the byte budget trims them apart).
pub struct Parts {
    /// Header, watermarks and bucket totals.
    pub head: Vec<u8>,
    /// Token rows.
    pub rows: Vec<u8>,
    /// Blocklist.
    pub blocks: Vec<u8>,
    /// Redemptions.
    pub redemptions: Vec<u8>,
}

impl Parts {
    /// The slot's size in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.rows.len() + self.blocks.len() + self.redemptions.len()
    }

    /// Whether empty (never: the header is always there).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot.
    pub fn concat(self) -> Vec<u8> {
        let mut v = self.head;
        v.extend_from_slice(&self.rows);
        v.extend_from_slice(&self.blocks);
        v.extend_from_slice(&self.redemptions);
        v
    }
}

/// The catalog's bytes.
pub fn encode(c: &Catalog) -> Vec<u8> {
    encode_parts(c).concat()
}

/// The catalog's bytes by section.
pub fn encode_parts(c: &Catalog) -> Parts {
    let mut head = Vec::with_capacity(64);
    head.extend_from_slice(MAGIC);
    head.push(VERSION);
    head.extend_from_slice(&(c.bucket_ms as u32).to_le_bytes());
    head.push(c.buckets.len() as u8);
    head.extend_from_slice(&c.head.to_le_bytes());
    head.extend_from_slice(&(c.capacity as u32).to_le_bytes());
    put_var(&mut head, c.watermarks.len() as u64);
    for (&n, &s) in &c.watermarks {
        put_var(&mut head, n.into());
        put_var(&mut head, s);
    }
    for b in &c.buckets {
        put_var(&mut head, b.total());
        put_var(&mut head, b.deficit());
    }
    Parts {
        head,
        rows: encode_rows(c),
        blocks: encode_blocks(&c.blocklist),
        redemptions: encode_redemptions(&c.redemptions),
    }
}

fn encode_rows(c: &Catalog) -> Vec<u8> {
    let mut rows: BTreeMap<&str, Vec<(usize, &Counter<NodeSet>)>> = BTreeMap::new();
    for (i, b) in c.buckets.iter().enumerate() {
        for (t, ctr) in b.iter() {
            rows.entry(t).or_default().push((i, ctr));
        }
    }
    let mut out = Vec::with_capacity(rows.len() * 24);
    put_var(&mut out, rows.len() as u64);
    for (t, cells) in rows {
        put_token(&mut out, t);
        let mask: u64 = cells.iter().map(|(i, _)| 1u64 << i).sum();
        put_var(&mut out, mask);
        for (_, ctr) in cells {
            put_var(&mut out, ctr.lo);
            put_var(&mut out, ctr.extra.len().into());
            let mut prev: Option<u32> = None;
            for n in ctr.extra.iter() {
                put_var(&mut out, prev.map_or(n, |p| n - p - 1).into());
                prev = Some(n);
            }
        }
    }
    out
}

/// One blocklist entry's bytes (also used to size the blocklist).
pub fn encode_block(out: &mut Vec<u8>, t: &str, b: &Block) {
    put_token(out, t);
    out.push(b.kind as u8);
    put_var(out, b.origin.into());
    put_var(out, b.since_ms);
    put_var(out, b.expires_ms);
    put_str(out, &b.reason);
}

fn encode_blocks(list: &BTreeMap<String, Block>) -> Vec<u8> {
    let mut out = Vec::new();
    put_var(&mut out, list.len() as u64);
    for (t, b) in list {
        encode_block(&mut out, t, b);
    }
    out
}

/// One redemption's bytes (also used to size the redemptions).
pub fn encode_redemption(out: &mut Vec<u8>, t: &str, r: &Redemption) {
    put_token(out, t);
    put_var(out, r.node.into());
    put_var(out, r.at_ms);
    put_var(out, r.expires_ms);
    match r.second {
        None => out.push(0),
        Some((n, at)) => {
            out.push(1);
            put_var(out, n.into());
            put_var(out, at);
        }
    }
}

fn encode_redemptions(list: &BTreeMap<String, Redemption>) -> Vec<u8> {
    let mut out = Vec::new();
    put_var(&mut out, list.len() as u64);
    for (t, r) in list {
        encode_redemption(&mut out, t, r);
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.b.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn var(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(DecodeError::Invalid("varint"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid("varint"))
    }

    fn node(&mut self) -> Result<u32, DecodeError> {
        let n = self.var()?;
        if n >= u64::from(MAX_NODE) {
            return Err(DecodeError::Invalid("node index"));
        }
        Ok(n as u32)
    }

    fn token(&mut self) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u8()?) + 1;
        debug_assert!(len <= MAX_TOKEN);
        let t = std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::Invalid("token"))?;
        if t.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(DecodeError::Invalid("token"));
        }
        Ok(t)
    }

    fn string(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        let len = self.var()?;
        if len > max as u64 {
            return Err(DecodeError::Invalid("string length"));
        }
        std::str::from_utf8(self.take(len as usize)?).map_err(|_| DecodeError::Invalid("string"))
    }

    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.var()?;
        // Every item takes at least one byte: more than what is left is a lie.
        if n > (self.b.len() - self.at) as u64 {
            return Err(DecodeError::Invalid(what));
        }
        Ok(n as usize)
    }
}

/// The catalog in `slot`.
///
/// # Errors
/// [`DecodeError`] for anything but a well-formed slot of version 1
/// (garbage never panics).
pub fn decode(slot: &[u8]) -> Result<Catalog, DecodeError> {
    let mut r = Reader { b: slot, at: 0 };
    if r.take(4)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let v = r.u8()?;
    if v != VERSION {
        return Err(DecodeError::BadVersion(v));
    }
    let bucket_ms = u64::from(u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")));
    let nb = usize::from(r.u8()?);
    if bucket_ms == 0 || nb == 0 || nb > MAX_BUCKETS {
        return Err(DecodeError::Invalid("window"));
    }
    let head = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
    let capacity = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
    let mut watermarks = BTreeMap::new();
    let mut last = None;
    for _ in 0..r.count("watermark count")? {
        let n = r.node()?;
        if last.is_some_and(|l| l >= n) {
            return Err(DecodeError::Invalid("watermark order"));
        }
        last = Some(n);
        watermarks.insert(n, r.var()?);
    }
    let mut totals = Vec::with_capacity(nb);
    for _ in 0..nb {
        totals.push((r.var()?, r.var()?));
    }
    let mut cells: Vec<Vec<(Box<str>, Counter<NodeSet>)>> = vec![Vec::new(); nb];
    let mut prev: Option<&str> = None;
    for _ in 0..r.count("row count")? {
        let t = r.token()?;
        if prev.is_some_and(|p| p >= t) {
            return Err(DecodeError::Invalid("row order"));
        }
        prev = Some(t);
        let mask = r.var()?;
        if mask == 0 || mask >> nb != 0 {
            return Err(DecodeError::Invalid("bucket mask"));
        }
        for (i, cell) in cells.iter_mut().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let lo = r.var()?;
            if lo == 0 {
                return Err(DecodeError::Invalid("count"));
            }
            let mut nodes = NodeSet::default();
            let mut at: Option<u64> = None;
            for _ in 0..r.count("node count")? {
                let gap = r.var()?;
                let n = at.map_or(Some(gap), |a| a.checked_add(gap + 1));
                let n = n.filter(|&n| n < u64::from(MAX_NODE));
                let n = n.ok_or(DecodeError::Invalid("node index"))?;
                nodes.insert(n as u32);
                at = Some(n);
            }
            cell.push((t.into(), Counter { lo, extra: nodes }));
        }
    }
    let buckets = cells
        .into_iter()
        .zip(totals)
        .map(|(cell, (total, deficit))| Summary::from_parts(cell, total, deficit))
        .collect();
    let mut blocklist = BTreeMap::new();
    let mut prev: Option<&str> = None;
    for _ in 0..r.count("block count")? {
        let t = r.token()?;
        if prev.is_some_and(|p| p >= t) {
            return Err(DecodeError::Invalid("blocklist order"));
        }
        prev = Some(t);
        let kind = BlockKind::from_u8(r.u8()?).ok_or(DecodeError::Invalid("block kind"))?;
        let block = Block {
            kind,
            origin: r.node()?,
            since_ms: r.var()?,
            expires_ms: r.var()?,
            reason: r.string(MAX_REASON)?.to_string(),
        };
        blocklist.insert(t.to_string(), block);
    }
    let mut redemptions = BTreeMap::new();
    let mut prev: Option<&str> = None;
    for _ in 0..r.count("redemption count")? {
        let t = r.token()?;
        if prev.is_some_and(|p| p >= t) {
            return Err(DecodeError::Invalid("redemption order"));
        }
        prev = Some(t);
        let (node, at_ms, expires_ms) = (r.node()?, r.var()?, r.var()?);
        let second = match r.u8()? {
            0 => None,
            1 => Some((r.node()?, r.var()?)),
            _ => return Err(DecodeError::Invalid("redemption flag")),
        };
        let red = Redemption {
            node,
            at_ms,
            expires_ms,
            second,
        };
        redemptions.insert(t.to_string(), red);
    }
    if r.at != slot.len() {
        return Err(DecodeError::TrailingBytes(slot.len() - r.at));
    }
    Ok(Catalog {
        bucket_ms,
        head,
        buckets,
        capacity,
        watermarks,
        blocklist,
        redemptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Event;
    use crate::testkit::Rng;

    fn sample() -> Catalog {
        let mut c = Catalog::new(10_000, 6, 64, 1_700_000_000_000);
        let mut d = Summary::new();
        d.add("alpha", 3);
        d.add(&"z".repeat(256), 1);
        d.add("é", 200);
        c.merge_counts(c.head, &d, 3);
        c.merge_counts(c.head - 2, &d, 200);
        c.watermarks.insert(3, 17);
        c.watermarks.insert(200, 1 << 40);
        let b = Event::Block {
            token: "bad".into(),
            at_ms: 5,
            ttl_s: 0,
            reason: "manual".into(),
        };
        c.apply(&b, 2, 600, 3600);
        c.redeem("otp", 1, 10, 20);
        c.redeem("otp", 2, 11, 21);
        c.redeem("otp2", 1, 10, 20);
        c
    }

    #[test]
    fn a_catalog_round_trips() {
        let c = sample();
        let bytes = encode(&c);
        assert_eq!(&bytes[..4], MAGIC);
        assert_eq!(decode(&bytes).unwrap(), c);
        assert_eq!(encode_parts(&c).len(), bytes.len());
    }

    #[test]
    fn garbage_truncation_and_trailing_bytes_are_errors_not_panics() {
        let bytes = encode(&sample());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::TrailingBytes(1)));
        let mut rng = Rng::new(3);
        for _ in 0..20_000 {
            let mut b = bytes.clone();
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.next_u64() as u8;
            let _ = decode(&b);
            let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect();
            let _ = decode(&junk);
        }
        assert_eq!(decode(b"XTOK"), Err(DecodeError::BadMagic));
    }
}
