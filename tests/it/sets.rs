//! Published sets over the admin API (issue 12): a station's `sets.put`
//! answered by `GET /v1/stations/NAME/sets/SET/KEY` from node memory,
//! listed, and streamed as events; the lookup's latency on loopback with a
//! kept-alive connection is printed (not asserted).

use std::time::{Duration, Instant};

use ringhost::config::StationSpec;
use ringhost::station::sets::SetEntry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::admin::admin_of;
use crate::deploy::quick;
use crate::support::{TestRing, test_station};

/// One GET on a kept-alive connection: (status, body).
async fn get(conn: &mut BufReader<TcpStream>, path: &str) -> (u16, Vec<u8>) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n");
    conn.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0;
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await.unwrap();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_key_is_answered_listed_and_streamed_from_node_memory() {
    let ring = TestRing::start(1, |c| {
        quick(c);
        c.stations = vec![StationSpec::file(test_station("inputs"))];
    })
    .await;
    let admin = admin_of(&ring, 0);
    let node = ring.nodes[0].as_ref().unwrap();
    // A subscriber before the station publishes gets the puts as they come.
    let mut events = TcpStream::connect(&admin).await.unwrap();
    events
        .write_all(b"GET /v1/stations/inputs/sets/seen/events HTTP/1.1\r\nHost: n\r\n\r\n")
        .await
        .unwrap();
    let mut events = BufReader::new(events);
    // The (empty) snapshot ends with `synced`: the subscription is in place.
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while line.trim() != "event: synced" {
            line.clear();
            events.read_line(&mut line).await.unwrap();
        }
    })
    .await
    .expect("synced");

    node.inbox("inputs")
        .unwrap()
        .push(b"set:tok-1".to_vec())
        .unwrap();
    let mut conn = BufReader::new(TcpStream::connect(&admin).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let path = "/v1/stations/inputs/sets/seen/tok-1";
    loop {
        let (status, body) = get(&mut conn, path).await;
        if status == 200 {
            let e: SetEntry = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (e.key.as_str(), e.info.as_str(), e.expires_unix_ms),
                ("tok-1", "on-input", 0)
            );
            break;
        }
        assert_eq!(status, 404);
        assert!(Instant::now() < deadline, "tok-1 never published");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _) = get(&mut conn, "/v1/stations/inputs/sets/seen/absent").await;
    assert_eq!(status, 404);
    let (status, body) = get(&mut conn, "/v1/stations/inputs/sets/seen?limit=10").await;
    assert_eq!(status, 200);
    let listing: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listing["total"], 1);
    assert_eq!(listing["entries"][0]["key"], "tok-1");
    // A set never published to lists empty (a station that blocked
    // nothing yet), as its subscription starts empty.
    let (status, body) = get(&mut conn, "/v1/stations/inputs/sets/never?limit=10").await;
    assert_eq!(status, 200);
    let listing: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (listing["total"].clone(), listing["entries"].clone()),
        (0.into(), serde_json::json!([]))
    );
    let (status, _) = get(&mut conn, "/v1/stations/inputs/sets/Bad!").await;
    assert_eq!(status, 400);

    // The stream: the put, as it happened.
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.iter().any(|l: &String| l.contains("tok-1")) {
            line.clear();
            events.read_line(&mut line).await.unwrap();
            if line.starts_with("event:") || line.starts_with("data:") {
                seen.push(line.trim().to_string());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no put event: {seen:?}"));
    // (The snapshot's `synced` data line may come first.)
    let first = seen.iter().find(|l| l.starts_with("event:"));
    assert_eq!(first.map(String::as_str), Some("event: put"), "{seen:?}");

    // The lookup's latency, kept-alive client on loopback (debug build:
    // the lead measures release).
    let n = 5000;
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, _) = get(&mut conn, path).await;
        took.push(t.elapsed());
        assert_eq!(status, 200);
    }
    took.sort();
    eprintln!(
        "set lookup over HTTP, {n} kept-alive GETs: p50 {:?} p99 {:?} max {:?}",
        took[n / 2],
        took[n * 99 / 100],
        took[n - 1]
    );
    ring.shutdown().await;
}
