//! Blocking HTTP/1.1 on plain `std::net` sockets, as an application
//! server's check would be written: one kept-alive connection, a request
//! written whole, the answer read by its `Content-Length` (or chunks).
//! Also an SSE reader that reports each `"key":"…"` it sees, and a raw TCP
//! echo server (the latency floor of a loopback round trip).
//!
//! Every read has a timeout ([`IO_TIMEOUT`]): a stuck server ends the
//! bench with an error, never a hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::Sender;
use std::sync::{Arc, atomic::AtomicBool, atomic::Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Bound on each read and write of the clients here.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One kept-alive HTTP/1.1 connection.
pub struct Http {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Http {
    /// Connects to `addr` (`host:port`).
    ///
    /// # Errors
    /// When the connection fails.
    pub fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Self {
            reader: BufReader::with_capacity(64 << 10, stream),
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads its answer: status and body.
    ///
    /// # Errors
    /// On I/O errors or an answer that is not HTTP/1.1.
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "Content-Type: text/plain\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = Vec::with_capacity(head.len() + body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
        self.reader.get_mut().write_all(&out)?;
        let (status, length, chunked) = read_head(&mut self.reader)?;
        let body = if chunked {
            read_chunked(&mut self.reader)?
        } else {
            let mut b = vec![0; length.unwrap_or(0)];
            self.reader.read_exact(&mut b)?;
            b
        };
        Ok((status, body))
    }
}

/// Reads a response head: status, `Content-Length`, whether chunked.
fn read_head(r: &mut impl BufRead) -> Result<(u16, Option<usize>, bool)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed in a response head");
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, length, chunked));
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = Some(v.parse()?);
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
}

fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim(), 16).context("chunk size")?;
        let start = body.len();
        body.resize(start + size + 2, 0);
        r.read_exact(&mut body[start..])?;
        body.truncate(start + size);
        if size == 0 {
            return Ok(body);
        }
    }
}

/// Reads the SSE stream at `path` on `addr` on a thread of its own and
/// sends `(tag, key, arrival)` for every `"key":"…"` it sees, until `stop`
/// (checked at least every 200 ms). Returns once the stream's head is read.
///
/// # Errors
/// When the stream cannot be opened.
pub fn watch_keys(
    addr: &str,
    path: &str,
    tag: usize,
    to: Sender<(usize, String, Instant)>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let (status, _, _) = read_head(&mut reader)?;
    if status != 200 {
        bail!("{path}: status {status}");
    }
    Ok(std::thread::spawn(move || {
        // Keys are found in the raw bytes (chunk-size lines never hold
        // `"key":"`); a key cut between two reads is kept in `pending`.
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        while !stop.load(Ordering::Relaxed) {
            let n = match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(_) => return,
            };
            let now = Instant::now();
            pending.extend_from_slice(&buf[..n]);
            let mut used = 0;
            while let Some(at) = find(&pending[used..], b"\"key\":\"") {
                let start = used + at + 7;
                let Some(len) = pending[start..].iter().position(|&b| b == b'"') else {
                    break;
                };
                let key = String::from_utf8_lossy(&pending[start..start + len]).into_owned();
                if to.send((tag, key, now)).is_err() {
                    return;
                }
                used = start + len;
            }
            // Keep a tail that may hold the start of a cut key.
            let keep_from = if find(&pending[used..], b"\"key\":\"").is_some() {
                used
            } else {
                pending.len().saturating_sub(16).max(used)
            };
            pending.drain(..keep_from);
        }
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A TCP echo server on 127.0.0.1:0 (one thread per connection, until
/// the client closes): the floor under any request-answer latency here.
///
/// # Errors
/// When binding fails.
pub fn echo_server() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                let mut buf = [0u8; 512];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// One round trip of `msg` through an echo connection.
///
/// # Errors
/// On I/O errors.
pub fn echo_once(s: &mut TcpStream, msg: &[u8]) -> Result<()> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    Ok(())
}
