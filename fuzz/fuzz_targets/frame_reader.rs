//! `FrameReader` over an arbitrary byte stream with a small frame limit
//! (4 KiB), delivered in chunks of a fuzzed size so frames and length
//! prefixes split across reads: every read ends in a frame, a clean end or
//! an error, never a panic or a hang.
#![no_main]

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use ringhost::wire::{FrameReader, WireError};
use tokio::io::{AsyncRead, ReadBuf};

const MAX_FRAME: usize = 4096;

/// Hands out `data` at most `step` bytes per read.
struct Chunks<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let io = Chunks {
        data: stream,
        step: usize::from(step).max(1),
    };
    runtime().block_on(async {
        let mut reader = FrameReader::new(io, MAX_FRAME);
        // Each frame takes at least its 4-byte length prefix.
        for _ in 0..=stream.len() / 4 {
            match reader.read_frame().await {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(WireError::TooLarge { max }) => {
                    assert_eq!(max, MAX_FRAME);
                    return;
                }
                Err(_) => return,
            }
        }
        panic!("more frames than the stream can hold");
    });
});
