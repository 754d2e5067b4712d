//! The memcached text protocol's replies and their encoding (the parser
//! is in [`super::proto`]).

use bytes::BytesMut;

/// A reply line (values are written with [`encode_value`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `STORED`.
    Stored,
    /// `NOT_STORED`: the condition of add/replace/append/prepend failed.
    NotStored,
    /// `EXISTS`: a cas on an item changed since it was read.
    Exists,
    /// `NOT_FOUND`: no such item.
    NotFound,
    /// `DELETED`.
    Deleted,
    /// `TOUCHED`.
    Touched,
    /// `OK` (flush_all, verbosity).
    Ok,
    /// `RESET` (stats reset).
    Reset,
    /// `END`: the end of a list of values.
    End,
    /// The result of `incr`/`decr`.
    Number(u64),
    /// An unknown command or a wrong number of arguments.
    Error,
    /// `CLIENT_ERROR <msg>`: the client sent something wrong.
    ClientError(&'static str),
    /// `SERVER_ERROR <msg>`: the server cannot do it.
    ServerError(&'static str),
    /// `VERSION <v>`.
    Version(String),
    /// `STAT name value` lines then `END`.
    Stats(Vec<(String, String)>),
}

impl Reply {
    /// Appends the reply's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let word: &[u8] = match self {
            Self::Stored => b"STORED",
            Self::NotStored => b"NOT_STORED",
            Self::Exists => b"EXISTS",
            Self::NotFound => b"NOT_FOUND",
            Self::Deleted => b"DELETED",
            Self::Touched => b"TOUCHED",
            Self::Ok => b"OK",
            Self::Reset => b"RESET",
            Self::End => b"END",
            Self::Error => b"ERROR",
            Self::Number(n) => {
                out.extend_from_slice(n.to_string().as_bytes());
                b""
            }
            Self::ClientError(m) => {
                out.extend_from_slice(b"CLIENT_ERROR ");
                m.as_bytes()
            }
            Self::ServerError(m) => {
                out.extend_from_slice(b"SERVER_ERROR ");
                m.as_bytes()
            }
            Self::Version(v) => {
                out.extend_from_slice(b"VERSION ");
                v.as_bytes()
            }
            Self::Stats(lines) => {
                for (k, v) in lines {
                    out.extend_from_slice(format!("STAT {k} {v}\r\n").as_bytes());
                }
                b"END"
            }
        };
        out.extend_from_slice(word);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends one `VALUE <key> <flags> <bytes> [<cas unique>]` block (the
/// caller ends the list with [`Reply::End`]).
pub fn encode_value(out: &mut BytesMut, key: &[u8], flags: u32, value: &[u8], cas: Option<u64>) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    let head = match cas {
        Some(c) => format!(" {flags} {} {c}\r\n", value.len()),
        None => format!(" {flags} {}\r\n", value.len()),
    };
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
