//! The memcached text protocol as a sans-IO codec: a [`Parser`] fed bytes
//! (partial input allowed) that yields [`Input`]s, and the [`Reply`]
//! encoder. It knows no store and no socket.
//!
//! Behaviour follows memcached's `doc/protocol.txt` and, where that is
//! silent, memcached 1.6's `proto_text.c`:
//! - tokens are split on spaces; a line ends in `\n` (a `\r` before it is
//!   dropped);
//! - a key is 1–250 bytes with no control character; a longer key, a
//!   malformed number (flags are `u32`, exptime and byte counts `i32`, a
//!   cas unique `u64`) or a negative byte count is `CLIENT_ERROR bad
//!   command line format`, and (as memcached) the data block that follows
//!   is *not* swallowed;
//! - a value whose item would exceed the item size limit is `SERVER_ERROR
//!   object too large for cache` and its data block is swallowed (for
//!   `set`, the old item of the key is removed: [`Input::TooLarge`]);
//! - a data block not ended by `\r\n` is `CLIENT_ERROR bad data chunk`;
//! - `noreply` silences every reply of that command but errors of
//!   parsing the line (as memcached);
//! - an unknown command or a wrong number of arguments is `ERROR`.
//!
//! Bounds: a command line is at most [`Limits::max_line`] bytes (2048, as
//! memcached's no-newline check), a retrieval line (`get`, `gets`, `gat`,
//! `gats`, many keys) at most [`Limits::max_get_line`]. Past the bound the
//! parser yields [`Input::Fatal`]: there is no way to find the next
//! command, so the connection is closed (memcached closes it too). The
//! parser never holds more than the caller's buffer: a data block is
//! taken only when whole, and a swallowed one is dropped as it arrives.

use bytes::{Buf, Bytes, BytesMut};

pub use super::reply::{Reply, encode_value};

/// Longest key in bytes (protocol.txt).
pub const MAX_KEY: usize = 250;

/// Byte bounds of the parser.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest command line (bytes, newline included); default 2048.
    pub max_line: usize,
    /// Longest retrieval line (`get`/`gets`/`gat`/`gats` with many keys);
    /// default 256 KiB (about a thousand 250-byte keys).
    pub max_get_line: usize,
    /// Largest item: key + value + [`super::store::ITEM_OVERHEAD`] bytes
    /// (default 1 MiB, memcached's `-I`).
    pub item_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 2048,
            max_get_line: 256 << 10,
            item_max: 1 << 20,
        }
    }
}

/// How a storage command stores (protocol.txt "Storage commands").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Store whatever is there.
    Set,
    /// Store only if the key holds nothing.
    Add,
    /// Store only if the key holds something.
    Replace,
    /// Add the data after the item's (flags and exptime untouched).
    Append,
    /// Add the data before the item's (flags and exptime untouched).
    Prepend,
    /// Store only if the item's cas unique is still this one.
    Cas(u64),
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `get`/`gets` of `keys` (with cas uniques when `cas`).
    Get { keys: Vec<Bytes>, cas: bool },
    /// `gat`/`gats`: get and touch with `exptime`.
    Gat {
        exptime: i64,
        keys: Vec<Bytes>,
        cas: bool,
    },
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas` (`exptime` as
    /// sent: see `super::store::expiry`).
    Store {
        mode: StoreMode,
        key: Bytes,
        flags: u32,
        exptime: i64,
        value: Bytes,
        noreply: bool,
    },
    /// `delete`.
    Delete { key: Bytes, noreply: bool },
    /// `incr` (`incr == true`) or `decr` by `delta`.
    Arith {
        incr: bool,
        key: Bytes,
        delta: u64,
        noreply: bool,
    },
    /// `touch`.
    Touch {
        key: Bytes,
        exptime: i64,
        noreply: bool,
    },
    /// `flush_all [delay]`: items stored before now + `delay` seconds
    /// become invalid then.
    FlushAll { delay: i64, noreply: bool },
    /// `stats [args]` (the arguments joined by spaces).
    Stats { args: Option<String> },
    /// `version`.
    Version,
    /// `verbosity LEVEL` (accepted and ignored, as memcached's ascii mode
    /// does with the level beyond its logging).
    Verbosity { noreply: bool },
    /// `quit`: close the connection.
    Quit,
}

/// What the parser yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A whole command to run.
    Command(Command),
    /// Answer this and go on (the line or data was refused; nothing to run).
    Reply(Reply),
    /// A storage command with a value over the item size limit: answer
    /// `SERVER_ERROR object too large for cache` unless `noreply`; for a
    /// `set` (`unlink`), remove the key's old item. The data block is
    /// being swallowed.
    TooLarge {
        key: Bytes,
        unlink: bool,
        noreply: bool,
    },
    /// Answer this and close the connection (the stream cannot be
    /// resynchronised).
    Fatal(Reply),
}

/// A storage command waiting for its data block.
#[derive(Debug)]
struct Pending {
    mode: StoreMode,
    key: Bytes,
    flags: u32,
    exptime: i64,
    len: usize,
    noreply: bool,
}

#[derive(Debug)]
enum State {
    Line,
    Data(Pending),
    Swallow(usize),
}

/// The incremental parser of one connection.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    state: State,
}

const BAD_FORMAT: Reply = Reply::ClientError("bad command line format");

impl Parser {
    /// A parser waiting for a command line.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Line,
        }
    }

    /// Whether the parser waits for a new command line (not for a data
    /// block, nor swallowing one).
    pub fn between_commands(&self) -> bool {
        matches!(self.state, State::Line)
    }

    /// Takes the next whole input off the front of `buf`; `None` when
    /// more bytes are needed (what is there stays, or is swallowed).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Input> {
        loop {
            match &mut self.state {
                State::Swallow(left) => {
                    let n = (*left).min(buf.len());
                    buf.advance(n);
                    *left -= n;
                    if *left > 0 {
                        return None;
                    }
                    self.state = State::Line;
                }
                State::Data(p) => {
                    if buf.len() < p.len + 2 {
                        return None;
                    }
                    let block = buf.split_to(p.len + 2);
                    let State::Data(p) = std::mem::replace(&mut self.state, State::Line) else {
                        unreachable!("matched above")
                    };
                    if &block[p.len..] != b"\r\n" {
                        if p.noreply {
                            continue;
                        }
                        return Some(Input::Reply(Reply::ClientError("bad data chunk")));
                    }
                    // A copy, not a slice of `buf`: a stored slice would
                    // keep the whole read buffer it shares alive, memory
                    // the store's bound does not see.
                    let value = Bytes::copy_from_slice(&block[..p.len]);
                    return Some(Input::Command(Command::Store {
                        mode: p.mode,
                        key: p.key,
                        flags: p.flags,
                        exptime: p.exptime,
                        value,
                        noreply: p.noreply,
                    }));
                }
                State::Line => {
                    let limit = if is_retrieval(buf) {
                        self.limits.max_get_line
                    } else {
                        self.limits.max_line
                    };
                    let Some(end) = buf.iter().take(limit).position(|&b| b == b'\n') else {
                        if buf.len() >= limit {
                            return Some(Input::Fatal(Reply::ClientError("line too long")));
                        }
                        return None;
                    };
                    let line = buf.split_to(end + 1).freeze();
                    let line = line.slice(..end);
                    let line = match line.last() {
                        Some(b'\r') => line.slice(..line.len() - 1),
                        _ => line,
                    };
                    if let Some(input) = self.on_line(&line) {
                        return Some(input);
                    }
                    // A storage line: its data block may be in `buf` already.
                }
            }
        }
    }

    /// The input of one command line; `None` for a storage line now
    /// waiting for its data block.
    fn on_line(&mut self, line: &Bytes) -> Option<Input> {
        let tokens: Vec<Bytes> = line
            .split(|&b| b == b' ')
            .filter(|t| !t.is_empty())
            .map(|t| line.slice_ref(t))
            .collect();
        let Some((name, args)) = tokens.split_first() else {
            return Some(Input::Reply(Reply::Error));
        };
        let noreply = args.last().is_some_and(|t| &t[..] == b"noreply");
        let reply = |r| Some(Input::Reply(r));
        let cmd = |c| Some(Input::Command(c));
        match &name[..] {
            b"get" | b"gets" if !args.is_empty() => match keys(args) {
                Some(keys) => cmd(Command::Get {
                    keys,
                    cas: &name[..] == b"gets",
                }),
                None => reply(BAD_FORMAT),
            },
            b"gat" | b"gats" if args.len() >= 2 => {
                let Some(exptime) = int32(&args[0]) else {
                    return reply(Reply::ClientError("invalid exptime argument"));
                };
                match keys(&args[1..]) {
                    Some(keys) => cmd(Command::Gat {
                        exptime,
                        keys,
                        cas: &name[..] == b"gats",
                    }),
                    None => reply(BAD_FORMAT),
                }
            }
            b"set" | b"add" | b"replace" | b"append" | b"prepend"
                if args.len() == 4 || args.len() == 5 =>
            {
                let mode = match &name[..] {
                    b"set" => StoreMode::Set,
                    b"add" => StoreMode::Add,
                    b"replace" => StoreMode::Replace,
                    b"append" => StoreMode::Append,
                    _ => StoreMode::Prepend,
                };
                self.storage(mode, args, noreply)
            }
            b"cas" if args.len() == 5 || args.len() == 6 => match uint64(&args[4]) {
                Some(unique) => self.storage(StoreMode::Cas(unique), args, noreply),
                None => reply(BAD_FORMAT),
            },
            b"delete" if !args.is_empty() && args.len() <= 3 => {
                let hold_zero = args.get(1).is_some_and(|t| &t[..] == b"0");
                let valid = match args.len() {
                    1 => true,
                    2 => hold_zero || noreply,
                    _ => hold_zero && noreply,
                };
                if !valid {
                    return reply(Reply::ClientError(
                        "bad command line format.  Usage: delete <key> [noreply]",
                    ));
                }
                match key(&args[0]) {
                    Some(key) => cmd(Command::Delete { key, noreply }),
                    None => reply(BAD_FORMAT),
                }
            }
            b"incr" | b"decr" if args.len() == 2 || args.len() == 3 => {
                let Some(key) = key(&args[0]) else {
                    return reply(BAD_FORMAT);
                };
                match uint64(&args[1]) {
                    Some(delta) => cmd(Command::Arith {
                        incr: &name[..] == b"incr",
                        key,
                        delta,
                        noreply,
                    }),
                    None => reply(Reply::ClientError("invalid numeric delta argument")),
                }
            }
            b"touch" if args.len() == 2 || args.len() == 3 => {
                let Some(key) = key(&args[0]) else {
                    return reply(BAD_FORMAT);
                };
                match int32(&args[1]) {
                    Some(exptime) => cmd(Command::Touch {
                        key,
                        exptime,
                        noreply,
                    }),
                    None => reply(Reply::ClientError("invalid exptime argument")),
                }
            }
            b"flush_all" if args.len() <= 2 => {
                let delay = match args.first() {
                    Some(t) if &t[..] != b"noreply" => int32(t),
                    _ => Some(0),
                };
                if args.len() == 2 && !noreply {
                    return reply(Reply::Error);
                }
                match delay {
                    Some(delay) => cmd(Command::FlushAll { delay, noreply }),
                    None => reply(BAD_FORMAT),
                }
            }
            b"stats" => {
                let args = (!args.is_empty()).then(|| {
                    args.iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                });
                cmd(Command::Stats { args })
            }
            // memcached 1.6 answers `version` whatever follows it.
            b"version" => cmd(Command::Version),
            // memcached 1.6 takes `verbosity noreply` silently too.
            b"verbosity" if args.len() == 1 || args.len() == 2 => {
                cmd(Command::Verbosity { noreply })
            }
            b"quit" if args.is_empty() => cmd(Command::Quit),
            _ => reply(Reply::Error),
        }
    }

    /// A storage command line: checks it and waits for (or swallows) the
    /// data block.
    fn storage(&mut self, mode: StoreMode, args: &[Bytes], noreply: bool) -> Option<Input> {
        let (Some(key), Some(flags), Some(exptime), Some(len)) = (
            key(&args[0]),
            uint32(&args[1]),
            int32(&args[2]),
            int32(&args[3]),
        ) else {
            return Some(Input::Reply(BAD_FORMAT));
        };
        let Ok(len) = usize::try_from(len) else {
            return Some(Input::Reply(BAD_FORMAT));
        };
        if key.len() + len + super::store::ITEM_OVERHEAD > self.limits.item_max {
            self.state = State::Swallow(len + 2);
            return Some(Input::TooLarge {
                key,
                unlink: mode == StoreMode::Set,
                noreply,
            });
        }
        self.state = State::Data(Pending {
            mode,
            key,
            flags,
            exptime,
            len,
            noreply,
        });
        None
    }
}

fn is_retrieval(buf: &[u8]) -> bool {
    [&b"get "[..], b"gets ", b"gat ", b"gats "]
        .iter()
        .any(|p| buf.starts_with(p))
}

/// A valid key: 1–250 bytes, no control characters (nor space: tokens
/// never hold one).
fn key(t: &Bytes) -> Option<Bytes> {
    (t.len() <= MAX_KEY && t.iter().all(|&b| b > b' ' && b != 0x7f)).then(|| t.clone())
}

fn keys(ts: &[Bytes]) -> Option<Vec<Bytes>> {
    ts.iter().map(key).collect()
}

fn uint64(t: &[u8]) -> Option<u64> {
    if t.is_empty() || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

fn uint32(t: &[u8]) -> Option<u32> {
    u32::try_from(uint64(t)?).ok()
}

fn int32(t: &[u8]) -> Option<i64> {
    let (neg, digits) = match t.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, t),
    };
    let n = i64::try_from(uint64(digits)?).ok()?;
    let n = if neg { -n } else { n };
    (i64::from(i32::MIN)..=i64::from(i32::MAX))
        .contains(&n)
        .then_some(n)
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
