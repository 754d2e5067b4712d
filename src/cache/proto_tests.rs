use super::*;

fn parse_all(input: &[u8]) -> Vec<Input> {
    let mut p = Parser::new(Limits::default());
    let mut buf = BytesMut::from(input);
    std::iter::from_fn(|| p.decode(&mut buf)).collect()
}

fn one(input: &[u8]) -> Input {
    let mut all = parse_all(input);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn encoded(r: &Reply) -> String {
    let mut out = BytesMut::new();
    r.encode(&mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

#[test]
fn a_storage_command_fed_one_byte_at_a_time_comes_out_whole_once() {
    let input = b"set k 5 -1 3 noreply\r\nabc\r\nget k\r\n";
    let mut p = Parser::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &byte in input {
        buf.extend_from_slice(&[byte]);
        while let Some(i) = p.decode(&mut buf) {
            got.push(i);
        }
    }
    assert_eq!(
        got,
        vec![
            Input::Command(Command::Store {
                mode: StoreMode::Set,
                key: b("k"),
                flags: 5,
                exptime: -1,
                value: b("abc"),
                noreply: true,
            }),
            Input::Command(Command::Get {
                keys: vec![b("k")],
                cas: false
            }),
        ]
    );
    assert!(p.between_commands() && buf.is_empty());
}

#[test]
fn every_command_parses_with_its_arguments() {
    assert_eq!(
        one(b"gets a b  c\n"),
        Input::Command(Command::Get {
            keys: vec![b("a"), b("b"), b("c")],
            cas: true
        })
    );
    assert_eq!(
        one(b"gats 100 a\r\n"),
        Input::Command(Command::Gat {
            exptime: 100,
            keys: vec![b("a")],
            cas: true
        })
    );
    assert_eq!(
        one(b"cas k 0 0 1 77\r\nx\r\n"),
        Input::Command(Command::Store {
            mode: StoreMode::Cas(77),
            key: b("k"),
            flags: 0,
            exptime: 0,
            value: b("x"),
            noreply: false,
        })
    );
    assert_eq!(
        one(b"decr k 18446744073709551615\r\n"),
        Input::Command(Command::Arith {
            incr: false,
            key: b("k"),
            delta: u64::MAX,
            noreply: false
        })
    );
    assert_eq!(
        one(b"delete k 0 noreply\r\n"),
        Input::Command(Command::Delete {
            key: b("k"),
            noreply: true
        })
    );
    assert_eq!(
        one(b"touch k 10 noreply\r\n"),
        Input::Command(Command::Touch {
            key: b("k"),
            exptime: 10,
            noreply: true
        })
    );
    assert_eq!(
        one(b"flush_all noreply\r\n"),
        Input::Command(Command::FlushAll {
            delay: 0,
            noreply: true
        })
    );
    assert_eq!(
        one(b"flush_all 30\r\n"),
        Input::Command(Command::FlushAll {
            delay: 30,
            noreply: false
        })
    );
    assert_eq!(
        one(b"stats settings\r\n"),
        Input::Command(Command::Stats {
            args: Some("settings".into())
        })
    );
    assert_eq!(one(b"version\r\n"), Input::Command(Command::Version));
    assert_eq!(
        one(b"verbosity 1 noreply\r\n"),
        Input::Command(Command::Verbosity { noreply: true })
    );
    assert_eq!(one(b"quit\r\n"), Input::Command(Command::Quit));
}

#[test]
fn bad_lines_get_memcacheds_replies() {
    let bad = Input::Reply(BAD_FORMAT);
    assert_eq!(one(b"bogus\r\n"), Input::Reply(Reply::Error));
    assert_eq!(one(b"\r\n"), Input::Reply(Reply::Error));
    assert_eq!(one(b"get\r\n"), Input::Reply(Reply::Error));
    assert_eq!(one(b"set k 0 0\r\n"), Input::Reply(Reply::Error));
    let long = format!("get {}\r\n", "k".repeat(251));
    assert_eq!(one(long.as_bytes()), bad);
    assert_eq!(one(b"get a\x01b\r\n"), bad);
    // Negative or overflowing numbers; the data block is not swallowed.
    assert_eq!(
        parse_all(b"set k 0 0 -1\r\nget k\r\n")[0],
        Input::Reply(BAD_FORMAT)
    );
    assert_eq!(
        parse_all(b"set k 0 0 -1\r\nget k\r\n")[1],
        Input::Command(Command::Get {
            keys: vec![b("k")],
            cas: false
        })
    );
    assert_eq!(one(b"set k 4294967296 0 1\r\n"), bad);
    assert_eq!(one(b"set k 0 2147483648 1\r\n"), bad);
    assert_eq!(one(b"cas k 0 0 1 -5\r\n"), bad);
    assert_eq!(
        one(b"incr k -1\r\n"),
        Input::Reply(Reply::ClientError("invalid numeric delta argument"))
    );
    assert_eq!(
        one(b"incr k 18446744073709551616\r\n"),
        Input::Reply(Reply::ClientError("invalid numeric delta argument"))
    );
    assert_eq!(
        one(b"touch k x\r\n"),
        Input::Reply(Reply::ClientError("invalid exptime argument"))
    );
    assert_eq!(
        one(b"delete k 5\r\n"),
        Input::Reply(Reply::ClientError(
            "bad command line format.  Usage: delete <key> [noreply]"
        ))
    );
}

#[test]
fn a_data_block_without_its_terminator_is_a_bad_data_chunk() {
    assert_eq!(
        parse_all(b"set k 0 0 3\r\nabcd\r\n"),
        vec![
            Input::Reply(Reply::ClientError("bad data chunk")),
            // The rest of the line is read as a command, as memcached does.
            Input::Reply(Reply::Error),
        ]
    );
    assert_eq!(parse_all(b"set k 0 0 3 noreply\r\nabcXY"), vec![]);
}

#[test]
fn a_value_over_the_item_limit_is_refused_and_swallowed_as_it_arrives() {
    let limits = Limits {
        item_max: 1 << 12,
        ..Limits::default()
    };
    let mut p = Parser::new(limits);
    let mut buf = BytesMut::from(&b"set big 0 0 100000\r\n"[..]);
    assert_eq!(
        p.decode(&mut buf),
        Some(Input::TooLarge {
            key: b("big"),
            unlink: true,
            noreply: false
        })
    );
    // 100000 bytes arrive in chunks: none is kept.
    for _ in 0..100 {
        buf.extend_from_slice(&[b'x'; 1000]);
        assert_eq!(p.decode(&mut buf), None);
        assert!(buf.is_empty());
    }
    buf.extend_from_slice(b"\r\nversion\r\n");
    assert_eq!(p.decode(&mut buf), Some(Input::Command(Command::Version)));
}

#[test]
fn a_line_past_the_bound_closes_the_connection_without_growing() {
    let mut p = Parser::new(Limits::default());
    let mut buf = BytesMut::from(&[b'x'; 2047][..]);
    assert_eq!(p.decode(&mut buf), None);
    buf.extend_from_slice(b"x");
    assert_eq!(
        p.decode(&mut buf),
        Some(Input::Fatal(Reply::ClientError("line too long")))
    );
    // A long multi-key get is allowed up to its own bound.
    let keys: Vec<String> = (0..500).map(|i| format!("key{i}")).collect();
    let line = format!("get {}\r\n", keys.join(" "));
    assert!(line.len() > 2048);
    match one(line.as_bytes()) {
        Input::Command(Command::Get { keys, .. }) => assert_eq!(keys.len(), 500),
        other => panic!("{other:?}"),
    }
}

#[test]
fn replies_encode_as_the_protocol_spells_them() {
    assert_eq!(encoded(&Reply::Stored), "STORED\r\n");
    assert_eq!(encoded(&Reply::Number(42)), "42\r\n");
    assert_eq!(
        encoded(&Reply::ClientError("bad data chunk")),
        "CLIENT_ERROR bad data chunk\r\n"
    );
    assert_eq!(
        encoded(&Reply::ServerError("object too large for cache")),
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(
        encoded(&Reply::Stats(vec![("pid".into(), "7".into())])),
        "STAT pid 7\r\nEND\r\n"
    );
    let mut out = BytesMut::new();
    encode_value(&mut out, b"k", 3, b"abc", Some(9));
    encode_value(&mut out, b"j", 0, b"", None);
    assert_eq!(&out[..], b"VALUE k 3 3 9\r\nabc\r\nVALUE j 0 0\r\n\r\n");
}
