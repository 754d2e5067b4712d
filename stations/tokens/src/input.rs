//! The input format: UTF-8 lines, one observation each. Parsing only.
//!
//! ```text
//! o TOKEN                   seen here
//! i TOKEN                   a one-time token issued here
//! r TOKEN                   a one-time token redeemed here
//! b TOKEN TTL_S [REASON…]   block fleet-wide for TTL_S seconds (0 = until unblocked)
//! u TOKEN                   unblock fleet-wide
//! ```
//!
//! Fields are separated by one or more ASCII spaces or tabs; a line ends at
//! `\n` (a trailing `\r` is dropped); empty lines are skipped. A token is
//! 1..=[`MAX_TOKEN`] bytes of UTF-8 without ASCII whitespace. A reason is the
//! rest of the line, trimmed, cut to [`MAX_REASON`] bytes (at a character
//! boundary); empty means `manual`.

/// Longest token, in bytes.
pub const MAX_TOKEN: usize = 256;
/// Longest reason kept, in bytes.
pub const MAX_REASON: usize = 128;

/// One parsed line, borrowing the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// `o TOKEN`
    Seen(&'a str),
    /// `i TOKEN`
    Issued(&'a str),
    /// `r TOKEN`
    Redeemed(&'a str),
    /// `b TOKEN TTL_S REASON…`
    Block {
        /// The token.
        token: &'a str,
        /// Seconds until the block expires; 0 for never.
        ttl_s: u64,
        /// Why (cut to [`MAX_REASON`] bytes; `manual` when none was given).
        reason: &'a str,
    },
    /// `u TOKEN`
    Unblock(&'a str),
}

/// Why a line was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadLine {
    /// Not UTF-8.
    NotUtf8,
    /// The first field is not one of `o i r b u`.
    UnknownKind,
    /// No token, or one longer than [`MAX_TOKEN`] bytes.
    BadToken,
    /// Fields missing or left over, or a TTL that is not a number.
    BadFields,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadLine::NotUtf8 => "not UTF-8",
            BadLine::UnknownKind => "unknown kind (want o, i, r, b or u)",
            BadLine::BadToken => "token missing or over 256 bytes",
            BadLine::BadFields => "wrong fields",
        })
    }
}

/// Calls `f` with every non-empty line of `batch` (without its `\n`/`\r\n`).
#[inline]
pub fn for_each_line(batch: &[u8], mut f: impl FnMut(&[u8])) {
    for line in batch.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            f(line);
        }
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses one line (no `\n`).
///
/// # Errors
/// [`BadLine`] says why the line is skipped.
#[inline]
pub fn parse(line: &[u8]) -> Result<Line<'_>, BadLine> {
    let line = std::str::from_utf8(line).map_err(|_| BadLine::NotUtf8)?;
    let bytes = line.as_bytes();
    if bytes.len() < 3 || !is_space(bytes[1]) {
        return Err(BadLine::UnknownKind);
    }
    let kind = bytes[0];
    let rest = line[2..].trim_start_matches([' ', '\t']);
    let (token, rest) = match rest.find([' ', '\t']) {
        Some(i) => (&rest[..i], rest[i..].trim_start_matches([' ', '\t'])),
        None => (rest, ""),
    };
    if token.is_empty() || token.len() > MAX_TOKEN || token.bytes().any(|b| b.is_ascii_whitespace())
    {
        return Err(BadLine::BadToken);
    }
    match kind {
        b'o' | b'i' | b'r' | b'u' if !rest.is_empty() => Err(BadLine::BadFields),
        b'o' => Ok(Line::Seen(token)),
        b'i' => Ok(Line::Issued(token)),
        b'r' => Ok(Line::Redeemed(token)),
        b'u' => Ok(Line::Unblock(token)),
        b'b' => {
            let (ttl, reason) = match rest.find([' ', '\t']) {
                Some(i) => (&rest[..i], rest[i..].trim()),
                None => (rest, ""),
            };
            let ttl_s = ttl.parse().map_err(|_| BadLine::BadFields)?;
            Ok(Line::Block {
                token,
                ttl_s,
                reason: cut(if reason.is_empty() { "manual" } else { reason }),
            })
        }
        _ => Err(BadLine::UnknownKind),
    }
}

/// `s` cut to [`MAX_REASON`] bytes at a character boundary.
pub fn cut(s: &str) -> &str {
    if s.len() <= MAX_REASON {
        return s;
    }
    let mut end = MAX_REASON;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses() {
        assert_eq!(parse(b"o abc"), Ok(Line::Seen("abc")));
        assert_eq!(parse(b"i k1"), Ok(Line::Issued("k1")));
        assert_eq!(parse(b"r k1"), Ok(Line::Redeemed("k1")));
        assert_eq!(parse(b"u k1"), Ok(Line::Unblock("k1")));
        assert_eq!(
            parse(b"b k1 60 credential  stuffing "),
            Ok(Line::Block {
                token: "k1",
                ttl_s: 60,
                reason: "credential  stuffing"
            })
        );
        assert_eq!(
            parse(b"b k1 0"),
            Ok(Line::Block {
                token: "k1",
                ttl_s: 0,
                reason: "manual"
            })
        );
    }

    #[test]
    fn bad_lines_say_why() {
        assert_eq!(parse(b"x abc"), Err(BadLine::UnknownKind));
        assert_eq!(parse(b"oabc"), Err(BadLine::UnknownKind));
        assert_eq!(parse(b"o a b"), Err(BadLine::BadFields));
        assert_eq!(parse(b"b a soon"), Err(BadLine::BadFields));
        assert_eq!(parse(b"o \xff"), Err(BadLine::NotUtf8));
        let long = format!("o {}", "a".repeat(257));
        assert_eq!(parse(long.as_bytes()), Err(BadLine::BadToken));
        let max = format!("o {}", "a".repeat(256));
        assert!(parse(max.as_bytes()).is_ok());
    }

    #[test]
    fn lines_split_on_newlines_and_skip_empty_ones() {
        let mut seen = Vec::new();
        for_each_line(b"o a\r\n\no b\n", |l| seen.push(l.to_vec()));
        assert_eq!(seen, vec![b"o a".to_vec(), b"o b".to_vec()]);
    }

    #[test]
    fn reasons_are_cut_at_a_char_boundary() {
        let r = "é".repeat(100);
        assert!(cut(&r).len() <= MAX_REASON);
        assert!(cut(&r).len() >= MAX_REASON - 1);
    }
}
