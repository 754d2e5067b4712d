//! The memcached-compatible cache (`--cache`, issue 13 first part): a node
//! started with a cache on 127.0.0.1:0, driven by a raw TCP client
//! through every command and error reply, its bounds (item size, memory,
//! connections, slow and garbage clients), and memcached's own
//! conformance checks (`memccapable -a`) when the tool is installed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringhost::config::{CacheConfig, NodeConfig};
use ringhost::metrics::{CacheLabels, RefusalLabels};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::deploy::quick;
use crate::support::TestRing;

/// Bound on every wait for a reply.
const REPLY_WAIT: Duration = Duration::from_secs(10);

async fn node_with_cache(tune: impl Fn(&mut CacheConfig)) -> TestRing {
    TestRing::start(1, |c: &mut NodeConfig| {
        quick(c);
        let mut cache = CacheConfig::at("127.0.0.1:0");
        tune(&mut cache);
        c.cache = Some(cache);
    })
    .await
}

fn cache_addr(ring: &TestRing) -> std::net::SocketAddr {
    ring.nodes[0]
        .as_ref()
        .and_then(|n| n.cache_addr())
        .expect("the node serves a cache")
}

struct Client(TcpStream);

impl Client {
    async fn connect(ring: &TestRing) -> Self {
        let s = tokio::time::timeout(REPLY_WAIT, TcpStream::connect(cache_addr(ring)))
            .await
            .expect("connect in time")
            .expect("connect");
        Self(s)
    }

    /// Sends `req` and checks the reply is exactly `want`.
    async fn ask(&mut self, req: &[u8], want: &str) {
        self.0.write_all(req).await.expect("send");
        let got = self.read_exactly(want.len()).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "reply to {:?}",
            String::from_utf8_lossy(&req[..req.len().min(80)])
        );
    }

    /// Sends a `noreply` request, then `version`: the next reply must be
    /// the version (nothing was answered to the first).
    async fn quiet(&mut self, req: &[u8]) {
        let mut both = req.to_vec();
        both.extend_from_slice(b"version\r\n");
        self.0.write_all(&both).await.expect("send");
        let got = self.read_exactly(8).await;
        assert_eq!(
            &got,
            b"VERSION ",
            "{:?} answered",
            String::from_utf8_lossy(req)
        );
        self.read_line().await;
    }

    async fn read_exactly(&mut self, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(REPLY_WAIT, self.0.read_exact(&mut got))
            .await
            .expect("a reply in time")
            .expect("a whole reply");
        got
    }

    async fn read_line(&mut self) -> String {
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            line.extend(self.read_exactly(1).await);
        }
        String::from_utf8_lossy(&line).into_owned()
    }

    /// The `gets` cas unique of `key`.
    async fn cas_of(&mut self, key: &str) -> u64 {
        self.0
            .write_all(format!("gets {key}\r\n").as_bytes())
            .await
            .expect("send");
        let head = self.read_line().await;
        let unique = head
            .split_whitespace()
            .nth(4)
            .expect("a cas unique")
            .parse()
            .expect("a number");
        let _value = self.read_line().await;
        assert_eq!(self.read_line().await, "END\r\n");
        unique
    }

    /// Waits for the server to close the connection (read gives 0 or an
    /// error), skipping what it still sends.
    async fn closed_by_server(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.0.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Connections the cache ended for `reason` (the node's refusals metric).
fn refused(ring: &TestRing, reason: &'static str) -> u64 {
    let node = ring.nodes[0].as_ref().expect("node up");
    node.bus()
        .metrics()
        .refusals
        .get_or_create(&RefusalLabels {
            port: "cache",
            reason,
        })
        .get()
}

/// Waits (at most 10 s) until the cache has ended a connection for
/// `reason`.
async fn wait_refused(ring: &TestRing, reason: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused(ring, reason) == 0 {
        assert!(
            Instant::now() < deadline,
            "no cache connection ended for {reason}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_and_every_error_reply_over_a_raw_connection() {
    let ring = node_with_cache(|_| {}).await;
    let mut c = Client::connect(&ring).await;
    // Storage, retrieval, flags.
    c.ask(b"set a 42 0 5\r\nhello\r\n", "STORED\r\n").await;
    c.ask(b"get a nope\r\n", "VALUE a 42 5\r\nhello\r\nEND\r\n")
        .await;
    c.ask(b"add a 0 0 1\r\nx\r\n", "NOT_STORED\r\n").await;
    c.ask(b"add b 0 0 1\r\nx\r\n", "STORED\r\n").await;
    c.ask(b"replace nope 0 0 1\r\nx\r\n", "NOT_STORED\r\n")
        .await;
    c.ask(b"replace b 1 0 1\r\ny\r\n", "STORED\r\n").await;
    c.ask(b"append a 0 0 1\r\n!\r\n", "STORED\r\n").await;
    c.ask(b"prepend a 0 0 1\r\n<\r\n", "STORED\r\n").await;
    c.ask(b"prepend nope 0 0 1\r\n<\r\n", "NOT_STORED\r\n")
        .await;
    c.ask(
        b"get a b\r\n",
        "VALUE a 42 7\r\n<hello!\r\nVALUE b 1 1\r\ny\r\nEND\r\n",
    )
    .await;
    // cas: the unique from gets, then a stale one.
    let unique = c.cas_of("a").await;
    c.ask(
        format!("cas a 0 0 1 {}\r\nz\r\n", unique + 1000).as_bytes(),
        "EXISTS\r\n",
    )
    .await;
    c.ask(
        format!("cas a 7 0 1 {unique}\r\nz\r\n").as_bytes(),
        "STORED\r\n",
    )
    .await;
    c.ask(
        format!("cas a 7 0 1 {unique}\r\nw\r\n").as_bytes(),
        "EXISTS\r\n",
    )
    .await;
    c.ask(b"cas nope 0 0 1 1\r\nz\r\n", "NOT_FOUND\r\n").await;
    assert_ne!(c.cas_of("a").await, unique);
    // delete.
    c.ask(b"delete b\r\n", "DELETED\r\n").await;
    c.ask(b"delete b\r\n", "NOT_FOUND\r\n").await;
    c.ask(
        b"delete b 5\r\n",
        "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
    )
    .await;
    // incr/decr: wrap at 2^64, floor at 0, text refused, bad deltas.
    c.ask(b"set n 0 0 20\r\n18446744073709551615\r\n", "STORED\r\n")
        .await;
    c.ask(b"incr n 2\r\n", "1\r\n").await;
    c.ask(b"decr n 5\r\n", "0\r\n").await;
    c.ask(b"incr n 41\r\n", "41\r\n").await;
    c.ask(b"incr nope 1\r\n", "NOT_FOUND\r\n").await;
    c.ask(
        b"incr a 1\r\n",
        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    )
    .await;
    c.ask(
        b"incr n -1\r\n",
        "CLIENT_ERROR invalid numeric delta argument\r\n",
    )
    .await;
    c.ask(
        b"decr n 18446744073709551616\r\n",
        "CLIENT_ERROR invalid numeric delta argument\r\n",
    )
    .await;
    // Expiry: negative is gone at once, > 30 days is a Unix time.
    c.ask(b"set gone 0 -1 1\r\nx\r\n", "STORED\r\n").await;
    c.ask(b"get gone\r\n", "END\r\n").await;
    c.ask(b"set past 0 2592001 1\r\nx\r\n", "STORED\r\n").await;
    c.ask(b"get past\r\n", "END\r\n").await;
    let later = unix_now() + 3600;
    c.ask(
        format!("set future 0 {later} 1\r\nx\r\n").as_bytes(),
        "STORED\r\n",
    )
    .await;
    c.ask(b"get future\r\n", "VALUE future 0 1\r\nx\r\nEND\r\n")
        .await;
    // touch, gat, gats.
    c.ask(b"touch future -1\r\n", "TOUCHED\r\n").await;
    c.ask(b"get future\r\n", "END\r\n").await;
    c.ask(b"touch nope 10\r\n", "NOT_FOUND\r\n").await;
    c.ask(
        b"touch n x\r\n",
        "CLIENT_ERROR invalid exptime argument\r\n",
    )
    .await;
    c.ask(b"gat 100 n nope\r\n", "VALUE n 0 2\r\n41\r\nEND\r\n")
        .await;
    c.0.write_all(b"gats 0 n\r\n").await.unwrap();
    assert!(c.read_line().await.starts_with("VALUE n 0 2 "));
    assert_eq!(c.read_line().await, "41\r\n");
    assert_eq!(c.read_line().await, "END\r\n");
    c.ask(
        b"gat 0 n -\x01\r\n",
        "CLIENT_ERROR bad command line format\r\n",
    )
    .await;
    // noreply on every command that takes it.
    for req in [
        &b"set q 0 0 1 noreply\r\n1\r\n"[..],
        b"add q 0 0 1 noreply\r\n1\r\n",
        b"replace q 0 0 1 noreply\r\n2\r\n",
        b"append q 0 0 1 noreply\r\n0\r\n",
        b"prepend q 0 0 1 noreply\r\n1\r\n",
        b"cas q 0 0 1 1 noreply\r\n1\r\n",
        b"incr q 1 noreply\r\n",
        b"decr q 2 noreply\r\n",
        b"touch q 0 noreply\r\n",
        b"verbosity 1 noreply\r\n",
        b"delete nope noreply\r\n",
    ] {
        c.quiet(req).await;
    }
    c.ask(b"get q\r\n", "VALUE q 0 3\r\n119\r\nEND\r\n").await;
    // Protocol errors.
    c.ask(b"bogus\r\n", "ERROR\r\n").await;
    c.ask(b"get\r\n", "ERROR\r\n").await;
    c.ask(b"set k 0 0\r\n", "ERROR\r\n").await;
    let long_key = "k".repeat(251);
    c.ask(
        format!("get {long_key}\r\n").as_bytes(),
        "CLIENT_ERROR bad command line format\r\n",
    )
    .await;
    c.ask(
        b"set k 0 0 -1\r\n",
        "CLIENT_ERROR bad command line format\r\n",
    )
    .await;
    c.ask(
        b"set k 4294967296 0 1\r\n",
        "CLIENT_ERROR bad command line format\r\n",
    )
    .await;
    c.ask(
        b"set k 0 0 3\r\nabcd\r\n",
        "CLIENT_ERROR bad data chunk\r\nERROR\r\n",
    )
    .await;
    // Too large: refused, the data swallowed, and a set drops the old value.
    c.ask(b"set big 0 0 1\r\nx\r\n", "STORED\r\n").await;
    let mut huge = b"set big 0 0 2000000\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 2_000_000));
    huge.extend_from_slice(b"\r\n");
    c.ask(&huge, "SERVER_ERROR object too large for cache\r\n")
        .await;
    c.ask(b"get big\r\n", "END\r\n").await;
    // Stats, verbosity, version, flush_all.
    c.0.write_all(b"stats\r\n").await.unwrap();
    let mut stats = Vec::new();
    loop {
        let line = c.read_line().await;
        if line == "END\r\n" {
            break;
        }
        stats.push(line);
    }
    let stat = |name: &str| {
        stats
            .iter()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .map(|v| v.trim_end().to_string())
            .unwrap_or_else(|| panic!("no stat {name} in {stats:?}"))
    };
    assert!(stat("get_hits").parse::<u64>().unwrap() >= 8);
    assert!(stat("get_misses").parse::<u64>().unwrap() >= 5);
    assert_eq!(stat("curr_connections"), "1");
    assert!(stat("version").starts_with("1.6.0-ringhost"));
    c.ask(b"stats reset\r\n", "RESET\r\n").await;
    c.ask(b"stats nonsense\r\n", "ERROR\r\n").await;
    c.ask(b"verbosity 1\r\n", "OK\r\n").await;
    c.ask(b"flush_all 0\r\n", "OK\r\n").await;
    c.ask(b"get a n q\r\n", "END\r\n").await;
    c.quiet(b"flush_all noreply\r\n").await;
    c.ask(
        b"version\r\n",
        &format!("VERSION {}\r\n", ringhost::cache::server::VERSION),
    )
    .await;
    // quit closes, and a line past 2048 bytes closes its connection.
    c.0.write_all(b"quit\r\n").await.unwrap();
    assert!(c.closed_by_server(REPLY_WAIT).await);
    let mut c = Client::connect(&ring).await;
    c.ask(&[b'x'; 3000], "CLIENT_ERROR line too long\r\n").await;
    assert!(c.closed_by_server(REPLY_WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_huge_lines_slow_clients_and_a_flood_end_only_their_own_connections() {
    let ring = node_with_cache(|c| {
        c.command_timeout_ms = 300;
        c.max_connections = 8;
    })
    .await;
    let mut good = Client::connect(&ring).await;
    good.ask(b"set k 0 0 2\r\nok\r\n", "STORED\r\n").await;
    // Garbage: errors, the connection stays.
    let mut junk = Client::connect(&ring).await;
    junk.ask(b"\x00\xff\xfe garbage\r\n", "ERROR\r\n").await;
    // A slowloris: half a command, then silence, is closed.
    let mut slow = Client::connect(&ring).await;
    slow.0.write_all(b"set s 0 0 10\r\nabc").await.unwrap();
    assert!(slow.closed_by_server(Duration::from_secs(10)).await);
    // A huge line: closed.
    let mut huge = Client::connect(&ring).await;
    let _ = huge.0.write_all(&vec![b'g'; 1 << 20]).await;
    assert!(huge.closed_by_server(Duration::from_secs(10)).await);
    // Neither the garbage nor the closed clients cost the others anything.
    junk.ask(b"get k\r\n", "VALUE k 0 2\r\nok\r\nEND\r\n").await;
    good.ask(b"get k\r\n", "VALUE k 0 2\r\nok\r\nEND\r\n").await;
    // A flood of silent sockets past the cap cycles through idle places.
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(Client::connect(&ring).await);
    }
    // The good connection was idle, so it may have been evicted: a fresh
    // one always gets in and is served.
    let mut again = Client::connect(&ring).await;
    again
        .ask(b"get k\r\n", "VALUE k 0 2\r\nok\r\nEND\r\n")
        .await;
    wait_refused(&ring, "slow_command").await;
    wait_refused(&ring, "line_too_long").await;
    wait_refused(&ring, "evicted").await;
    drop((good, junk, flood));
    assert!(ring.nodes[0].is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_bound_evicts_the_least_recently_used_items() {
    let ring = node_with_cache(|c| {
        c.memory_bytes = 64 << 10;
        c.item_max_bytes = 8 << 10;
    })
    .await;
    let mut c = Client::connect(&ring).await;
    let value = "v".repeat(1000);
    for i in 0..200 {
        c.ask(
            format!("set key{i} 0 0 1000\r\n{value}\r\n").as_bytes(),
            "STORED\r\n",
        )
        .await;
        if i == 10 {
            // key0 is read: it is now more recent than key1..key10.
            c.ask(
                b"get key0\r\n",
                &format!("VALUE key0 0 1000\r\n{value}\r\nEND\r\n"),
            )
            .await;
        }
        if i == 65 {
            // About 61 items fit (1069 bytes charged each): five evicted,
            // the least recently used ones, so key1 but not key0.
            c.ask(b"get key1\r\n", "END\r\n").await;
            c.ask(
                b"get key0\r\n",
                &format!("VALUE key0 0 1000\r\n{value}\r\nEND\r\n"),
            )
            .await;
        }
    }
    c.ask(
        b"get key199\r\n",
        &format!("VALUE key199 0 1000\r\n{value}\r\nEND\r\n"),
    )
    .await;
    c.0.write_all(b"stats\r\n").await.unwrap();
    let (mut evictions, mut bytes) = (None, None);
    loop {
        let line = c.read_line().await;
        if line == "END\r\n" {
            break;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[1] {
            "evictions" => evictions = f[2].parse::<u64>().ok(),
            "bytes" => bytes = f[2].parse::<u64>().ok(),
            _ => {}
        }
    }
    let (evictions, bytes) = (evictions.unwrap(), bytes.unwrap());
    // The same figures reach the node's metrics within a second or so.
    let node = ring.nodes[0].as_ref().expect("node up");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exported = |op| {
        node.bus()
            .metrics()
            .cache_ops
            .get_or_create(&CacheLabels { op })
            .get()
    };
    while exported("eviction") != evictions || exported("get_hit") < 2 {
        assert!(
            Instant::now() < deadline,
            "the cache's figures never reached /metrics"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        node.bus().metrics().cache_bytes.get(),
        i64::try_from(bytes).unwrap()
    );
    println!(
        "cache under a 64 KiB bound after 200 sets of 1000 bytes: evictions {evictions}, bytes {bytes}"
    );
    assert!(evictions >= 130, "{evictions}");
    assert!(bytes <= 64 << 10, "{bytes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memccapable_ascii_passes_against_a_node() {
    let found = std::process::Command::new("memccapable")
        .arg("-h")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "memccapable is not installed (CI installs libmemcached-tools in .ci/run)"
        );
        println!("skipped: memccapable is not installed (apt-get install libmemcached-tools)");
        return;
    }
    let ring = node_with_cache(|_| {}).await;
    let port = cache_addr(&ring).port().to_string();
    let run = tokio::process::Command::new("memccapable")
        .args(["-a", "-t", "10", "-h", "127.0.0.1", "-p", &port])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("memccapable ends within 120 s")
        .expect("memccapable runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(stdout.contains("All tests passed"), "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_all_answered_in_order_and_the_cache_stops_with_its_node() {
    let mut ring = node_with_cache(|_| {}).await;
    let addr = cache_addr(&ring);
    let mut c = Client::connect(&ring).await;
    // 2000 sets and gets in one write, split at arbitrary points by TCP.
    let mut batch = Vec::new();
    let mut want = String::new();
    for i in 0..2000 {
        batch.extend_from_slice(
            format!("set p{i} {i} 0 4\r\nv{:03}\r\nget p{i}\r\n", i % 1000).as_bytes(),
        );
        want.push_str(&format!(
            "STORED\r\nVALUE p{i} {i} 4\r\nv{:03}\r\nEND\r\n",
            i % 1000
        ));
    }
    c.ask(&batch, &want).await;
    // Stopping the node closes its connections and its port.
    let node = ring.nodes[0].take().expect("node up");
    tokio::time::timeout(Duration::from_secs(20), node.shutdown())
        .await
        .expect("the node stops in time")
        .expect("the node stops cleanly");
    assert!(c.closed_by_server(REPLY_WAIT).await);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the cache port is closed"
    );
}
