//! Cut-through (issue 11): a node still receiving a module streams it to
//! whoever asks meanwhile, ends the stream only once it checked the
//! module's hash, and cuts it when its own source fails (the asker
//! discards it; the node fetches again).
//!
//! Member 0 is played by the test: it links to node 1 as its predecessor
//! (a hello naming a release) and serves node 1's fetch of the module by
//! hand, half of it first, so what node 1 serves meanwhile is observed
//! rather than timed.

use std::time::Duration;

use bytes::Bytes;
use ringhost::deploy::release::{Hash, Payload, Release, Reply, Request};
use ringhost::model::Announce;
use ringhost::wire::{Frame, FrameReader, FrameWriter, Hello, PROTOCOL_VERSION};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::deploy::{addr, marker, quick, view, wait_running};
use crate::support::TestRing;

/// Members of the ring; member 0 is the test.
const MEMBERS: usize = 3;
const FAKE: usize = 0;
/// Bound on each wait.
const WAIT: Duration = Duration::from_secs(20);
const MAX_FRAME: usize = 16 << 20;

type Reader = FrameReader<OwnedReadHalf>;
type Writer = FrameWriter<OwnedWriteHalf>;

fn framed(stream: TcpStream) -> (Reader, Writer) {
    let (r, w) = stream.into_split();
    (
        FrameReader::new(r, MAX_FRAME),
        FrameWriter::new(w, MAX_FRAME),
    )
}

async fn read(reader: &mut Reader) -> Option<Frame> {
    tokio::time::timeout(WAIT, reader.read_frame())
        .await
        .expect("a frame in time")
        .ok()
        .flatten()
}

fn release_of(module: &[u8], version: u64) -> Release {
    Release {
        name: "marker".into(),
        version,
        origin: FAKE as u32,
        hash: Hash::of(module),
        size: module.len() as u64,
        config: Vec::new(),
        signer: None,
        signature: None,
        published_ms: ringhost::station::unix_ms() - 1_000 + version,
    }
}

/// The next fetch of `release` that reaches member 0's port (other
/// connections, like node 2 dialing its successor, are dropped).
async fn next_fetch(fake: &TcpListener, release: &Release) -> (Reader, Writer, bool) {
    loop {
        let (stream, _) = tokio::time::timeout(WAIT, fake.accept())
            .await
            .expect("a connection to member 0 in time")
            .expect("accept");
        let (mut reader, writer) = framed(stream);
        let first = tokio::time::timeout(Duration::from_secs(2), reader.read_frame()).await;
        if let Ok(Ok(Some(Frame::Request(
            Request::Fetch {
                release: r, stream, ..
            },
            _,
        )))) = first
            && r == *release
        {
            return (reader, writer, stream);
        }
    }
}

/// Asks node `i` for `release`'s module as its successor would; the
/// reply's head.
async fn ask(ring: &TestRing, i: usize, release: &Release) -> (Reader, Reply) {
    let stream = TcpStream::connect(addr(ring, i)).await.expect("connect");
    let (mut reader, mut writer) = framed(stream);
    let req = Request::Fetch {
        release: release.clone(),
        have: Vec::new(),
        stream: true,
    };
    writer
        .write_frame(&Frame::Request(req, Bytes::new()))
        .await
        .expect("send the fetch");
    let Some(Frame::Reply(reply, _)) = read(&mut reader).await else {
        panic!("no reply head from node {i}");
    };
    // The writer is dropped: the node reads the end after the stream.
    (reader, reply)
}

/// Reads chunks until `want` bytes came (or the stream ended).
async fn chunks(reader: &mut Reader, got: &mut Vec<u8>, want: usize) -> Option<bool> {
    while got.len() < want {
        match read(reader).await? {
            Frame::Chunk(b) if b.is_empty() => return Some(true),
            Frame::Chunk(b) => got.extend_from_slice(&b),
            other => panic!("unexpected {} in a stream", other.kind_name()),
        }
    }
    Some(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_still_arriving_is_streamed_onwards_and_a_cut_source_is_not_passed_on() {
    let live = [1, 2];
    let mut ring = TestRing::start_in_order(MEMBERS, &live, quick).await;
    let fake = TcpListener::bind(addr(&ring, FAKE))
        .await
        .expect("rebind member 0's port");
    ring.visits(4, WAIT).await;

    // Member 0 links to node 1, holding v1.
    let module = marker(21);
    let v1 = release_of(&module, 1);
    let layout = &ring.layout;
    let link = TcpStream::connect(addr(&ring, 1)).await.expect("connect");
    let (mut link_reader, mut link_writer) = framed(link);
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        ring_hash: layout.hash().to_string(),
        from_index: FAKE as u32,
        from_name: layout.members()[FAKE].name.clone(),
        releases: vec![v1.clone()],
        instance: 0x5eed,
    });
    link_writer.write_frame(&hello).await.expect("hello");
    assert!(matches!(
        read(&mut link_reader).await,
        Some(Frame::Welcome(_))
    ));

    // Node 1 fetches v1 from member 0, taking a stream: half of it comes.
    let (fetch_reader, mut fetch, streamed) = next_fetch(&fake, &v1).await;
    assert!(streamed, "node 1 takes a streamed answer");
    let half = module.len() / 2;
    let head = Reply {
        release: Some(v1.clone()),
        payload: Some(Payload::Full),
        stream: Some(module.len() as u64),
        ..Reply::default()
    };
    fetch
        .write_frame(&Frame::Reply(head, Bytes::new()))
        .await
        .unwrap();
    let first = Bytes::copy_from_slice(&module[..half]);
    fetch.write_frame(&Frame::Chunk(first)).await.unwrap();

    // Its successor's fetch meanwhile is streamed what node 1 has so far.
    let (mut from_1, reply) = ask(&ring, 1, &v1).await;
    assert_eq!(reply.error, None);
    assert_eq!(reply.stream, Some(module.len() as u64), "a stream");
    let mut got = Vec::new();
    assert_eq!(chunks(&mut from_1, &mut got, half).await, Some(false));
    assert_eq!(got, module[..half], "the bytes node 1 received so far");
    // ... before node 1 holds the module: nothing recorded or running.
    let v = view(&ring, 1);
    assert!(!v.releases.contains(&v1), "node 1 holds v1 already: {v:?}");
    assert!(v.stations.iter().all(|s| s.hash != v1.hash));

    // The rest arrives, node 1 checks it, and only then ends its stream.
    let rest = Bytes::copy_from_slice(&module[half..]);
    fetch.write_frame(&Frame::Chunk(rest)).await.unwrap();
    fetch
        .write_frame(&Frame::Chunk(Bytes::new()))
        .await
        .unwrap();
    assert_eq!(
        chunks(&mut from_1, &mut got, usize::MAX).await,
        Some(true),
        "the stream ends with its end chunk"
    );
    assert_eq!(got, module, "the whole module, as member 0 sent it");
    wait_running(&ring, &[1, 2], "marker", v1.hash, WAIT).await;
    // Member 0 closes the fetch connection node 1 keeps for reuse (as a
    // node older than reuse does): node 1 dials afresh next time.
    drop((fetch, fetch_reader));

    // v2: member 0 dies mid-stream. Node 1's stream to its successor is
    // cut (no end chunk), and node 1 fetches v2 again.
    let module2 = marker(22);
    let v2 = release_of(&module2, 2);
    let announce = Frame::Announce(Announce::held(vec![v2.clone()]));
    link_writer.write_frame(&announce).await.expect("announce");
    let (fetch_reader, mut fetch, _) = next_fetch(&fake, &v2).await;
    let head = Reply {
        release: Some(v2.clone()),
        payload: Some(Payload::Full),
        stream: Some(module2.len() as u64),
        ..Reply::default()
    };
    fetch
        .write_frame(&Frame::Reply(head, Bytes::new()))
        .await
        .unwrap();
    let half = module2.len() / 2;
    let first = Bytes::copy_from_slice(&module2[..half]);
    fetch.write_frame(&Frame::Chunk(first)).await.unwrap();
    let (mut from_1, reply) = ask(&ring, 1, &v2).await;
    assert_eq!(reply.stream, Some(module2.len() as u64));
    let mut got = Vec::new();
    assert_eq!(chunks(&mut from_1, &mut got, half).await, Some(false));
    drop((fetch, fetch_reader));
    assert_eq!(
        chunks(&mut from_1, &mut got, usize::MAX).await,
        None,
        "the stream is cut without its end"
    );
    // Asked again (after its back-off), member 0 answers whole this time.
    let serving = tokio::spawn(serve_whole(fake, v2.clone(), module2));
    wait_running(&ring, &[1, 2], "marker", v2.hash, WAIT).await;
    serving.abort();
    drop((link_reader, link_writer));
    ring.shutdown().await;
}

/// Member 0's port from now on: every fetch of `release` is answered with
/// the whole module, at once.
async fn serve_whole(fake: TcpListener, release: Release, module: Vec<u8>) {
    loop {
        let (reader, mut writer, _) = next_fetch(&fake, &release).await;
        let whole = Reply {
            release: Some(release.clone()),
            payload: Some(Payload::Full),
            ..Reply::default()
        };
        let frame = Frame::Reply(whole, Bytes::from(module.clone()));
        let _ = writer.write_frame(&frame).await;
        tokio::spawn(async move {
            // Kept open until the asker closes it.
            let mut reader = reader;
            let _ = reader.read_frame().await;
            drop(writer);
        });
    }
}
