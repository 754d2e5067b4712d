//! The secure channel under the frame layer (`ringhost::secure::channel`):
//! arbitrary bytes where a listener expects a dialer's handshake (first
//! byte 0: after the magic), and arbitrary bytes where a sealed reader
//! expects records of a real session (first byte 1). Every input ends in
//! a clean error or the end of the stream: never a link made, a panic or
//! a hang.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ringhost::secure::channel::{self, SealedRead, Session};
use ringhost::secure::{ClusterKey, KeySet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| KeySet::new(vec![ClusterKey([7; 32])]).expect("one key"))
}

/// The listener's half of one real session, made once.
fn session() -> Arc<Session> {
    static S: OnceLock<Arc<Session>> = OnceLock::new();
    S.get_or_init(|| {
        runtime().block_on(async {
            let (mut d, mut l) = tokio::io::duplex(1 << 16);
            let dialer =
                tokio::spawn(async move { channel::initiate(&mut d, keys()).await.map(|_| ()) });
            channel::first_bytes(&mut l).await.expect("magic");
            let listener = channel::respond(&mut l, keys()).await;
            dialer.await.expect("dialer task").expect("dialer");
            listener.expect("listener")
        })
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Made outside `block_on` (it blocks on the runtime itself, once).
    let session = session();
    runtime().block_on(async {
        if mode % 2 == 0 {
            let (mut near, mut far) = tokio::io::duplex(1 << 17);
            far.write_all(&channel::MAGIC).await.expect("room");
            far.write_all(rest).await.expect("room");
            drop(far);
            channel::first_bytes(&mut near).await.expect("in memory");
            let made = channel::respond(&mut near, keys()).await;
            assert!(made.is_err(), "arbitrary bytes made a link");
        } else {
            let mut r = SealedRead::new(rest, session);
            let mut out = Vec::new();
            if r.read_to_end(&mut out).await.is_ok() {
                assert!(out.is_empty(), "arbitrary bytes opened as a record");
            }
        }
    });
});
