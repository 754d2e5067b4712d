//! Writes the fuzz targets' seed corpus (`fuzz/corpus/<target>/`): a few
//! small valid inputs per target, made with the real encoders so they stay
//! valid as the formats change. Run from the repository root:
//!
//! ```text
//! cargo run --example fuzz_seeds [-- OUT_DIR]   # default fuzz/corpus
//! ```
//!
//! The input layout of each target (selector bytes, splits) is described
//! at the top of its file in `fuzz/fuzz_targets/`.

// The config station's pure logic, as the `config_slot` target includes it.
#[allow(dead_code)]
#[rustfmt::skip]
#[path = "../stations/config/src/logic.rs"]
mod config_logic;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use ringhost::deploy::delta;
use ringhost::model::{ConfigEntry, Conflict, Hash, Payload, Release, Reply, Request};
use ringhost::ring::token::{Alive, Particle, ParticleId};
use ringhost::wire::{Frame, Hello, PROTOCOL_VERSION, Refuse, Welcome};

fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("fuzz/corpus"), PathBuf::from);
    let frames = frames();
    let bodies: Vec<Vec<u8>> = frames.iter().map(body).collect::<Result<_>>()?;

    let mut seeds = Seeds::new(&out);
    for (i, (f, b)) in frames.iter().zip(&bodies).enumerate() {
        seeds.put(
            "frame_decode",
            &format!("{i:02}-{}", f.kind_name()),
            b.clone(),
        )?;
    }
    for (step, name) in [(255u8, "whole"), (1, "byte-by-byte"), (7, "chunks-of-7")] {
        let mut stream = vec![step];
        for b in &bodies {
            stream.extend_from_slice(&u32::try_from(b.len())?.to_be_bytes());
            stream.extend_from_slice(b);
        }
        seeds.put("frame_reader", name, stream)?;
    }
    for (f, b) in frames.iter().zip(&bodies) {
        let pick = match f {
            Frame::Hello(_) => 0u8,
            Frame::Welcome(_) => 1,
            Frame::Refuse(_) => 2,
            Frame::Particle(p) => {
                seeds.put(
                    "particle_roundtrip",
                    &format!("slots-{}", p.slots.len()),
                    b[1..].to_vec(),
                )?;
                continue;
            }
            _ => continue,
        };
        seeds.put("handshake", f.kind_name(), prefixed(pick, &b[1..]))?;
    }
    deltas(&mut seeds)?;
    model_json(&mut seeds)?;
    config_slots(&mut seeds)?;
    admin_requests(&mut seeds)?;
    println!("wrote {} seeds under {}", seeds.count, out.display());
    Ok(())
}

struct Seeds<'a> {
    root: &'a Path,
    count: usize,
}

impl<'a> Seeds<'a> {
    fn new(root: &'a Path) -> Self {
        Self { root, count: 0 }
    }

    fn put(&mut self, target: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join(name.replace([' ', '/'], "-"));
        std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
        self.count += 1;
        Ok(())
    }
}

fn prefixed(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(rest);
    v
}

fn body(f: &Frame) -> Result<Vec<u8>> {
    let mut b = BytesMut::new();
    f.encode(&mut b)?;
    Ok(b.to_vec())
}

fn release() -> Release {
    Release {
        name: "tick".into(),
        version: 3,
        origin: 1,
        hash: Hash::of(b"module"),
        size: 1234,
        config: vec![("quiet".into(), "true".into())],
        signer: Some(Hash([7; 32])),
        signature: Some("ab".repeat(64)),
        published_ms: 1_700_000_000_000,
    }
}

fn frames() -> Vec<Frame> {
    let mut particle = Particle::new(7, 3);
    particle.lap = 11;
    particle.hop = 123;
    particle.view = vec![0b1011_0111, 0b101];
    particle
        .slots
        .insert("tick".into(), 42u64.to_le_bytes().to_vec());
    particle.slots.insert("empty".into(), Vec::new());
    let id = ParticleId {
        generation: 9,
        origin: 1,
    };
    vec![
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            ring_hash: "ab".repeat(32),
            from_index: 4,
            from_name: "dc1/prod/0".into(),
            releases: vec![release()],
            instance: 0x5eed,
        }),
        Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            node_index: 5,
            seen: Some(id),
            releases: vec![],
            beacons: true,
        }),
        Frame::Refuse(Refuse {
            reason: "ring mismatch".into(),
            ring_hash: Some("cd".repeat(32)),
            duplicate: true,
        }),
        Frame::Particle(particle),
        Frame::Particle(Particle::new(1, 0)),
        Frame::Ping { n: 77, alive: None },
        Frame::Ping {
            n: 78,
            alive: Some(Alive {
                id,
                age_ms: 250,
                relays: 3,
            }),
        },
        Frame::Pong(77),
        Frame::Forwarded { id, hop: 1234 },
        Frame::Leave,
        Frame::StatusRequest,
        Frame::Status("{\"ok\":true}".into()),
        Frame::Announce(ringhost::model::Announce {
            held: vec![release()],
            coming: vec![release()],
        }),
        Frame::Chunk(Bytes::from_static(b"module bytes")),
        Frame::Request(
            Request::Fetch {
                release: release(),
                have: vec![Hash([1; 32])],
                stream: true,
            },
            Bytes::new(),
        ),
        Frame::Reply(
            Reply {
                release: Some(release()),
                payload: Some(Payload::Delta {
                    base: Hash([1; 32]),
                }),
                ..Reply::default()
            },
            Bytes::from_static(b"\x14delta bytes"),
        ),
    ]
}

/// `base_len: u16 LE, base, delta`.
fn deltas(seeds: &mut Seeds) -> Result<()> {
    let base: Vec<u8> = (0..600u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut changed = base.clone();
    changed[300..310].copy_from_slice(b"RINGHOST-1");
    changed.extend_from_slice(b"and a tail");
    let cases = [
        ("one-change", base.clone(), changed),
        ("from-nothing", Vec::new(), b"a whole module".to_vec()),
        ("to-nothing", base.clone(), Vec::new()),
    ];
    for (name, base, target) in cases {
        let d = delta::make(&base, &target)?;
        let mut input = u16::try_from(base.len())?.to_le_bytes().to_vec();
        input.extend_from_slice(&base);
        input.extend_from_slice(&d);
        seeds.put("delta_apply", name, input)?;
    }
    Ok(())
}

/// `pick % 7` chooses the type, as in `fuzz_targets/model_json.rs`.
fn model_json(seeds: &mut Seeds) -> Result<()> {
    let conflict = Conflict::future(&release(), Some(&release()), 90_000, Some(2));
    let entry = ConfigEntry {
        value: Some("v".into()),
        ver: Some(3),
        node: Some(1),
        config_version: 3,
        pending: 1,
    };
    let push = Request::Push {
        name: "tick".into(),
        config: vec![("a".into(), "1".into())],
        signer: None,
        signature: None,
        local: true,
    };
    let items: Vec<(u8, &str, Vec<u8>)> = vec![
        (0, "release", json(&release())?),
        (1, "request-push", json(&push)?),
        (
            1,
            "request-fetch",
            json(&Request::Fetch {
                release: release(),
                have: vec![Hash([2; 32])],
                stream: false,
            })?,
        ),
        (
            1,
            "request-config-set",
            json(&Request::ConfigSet {
                key: "k".into(),
                value: None,
            })?,
        ),
        (2, "reply-error", json(&Reply::error("nope"))?),
        (3, "payload-full", json(&Payload::Full)?),
        (4, "config-entry", json(&entry)?),
        (5, "conflict", json(&conflict)?),
        (6, "releases", json(&vec![release(), release()])?),
    ];
    for (pick, name, body) in items {
        seeds.put("model_json", name, prefixed(pick, &body))?;
    }
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

/// `item_len: u8, slot, item` (the item is the last `item_len` bytes).
fn config_slots(seeds: &mut Seeds) -> Result<()> {
    let items: Vec<Vec<u8>> = [
        r#"{"key":"feature.x","value":"on"}"#,
        r#"{"key":"limit","value":"10"}"#,
        r#"{"key":"old","value":null}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let local = config_logic::Local::default();
    let full = config_logic::step(&local, &[], &items, 2).slot;
    let one = config_logic::step(&local, &[], &items[..1], 0).slot;
    let cases = [
        ("empty", Vec::new(), items[0].clone()),
        ("three-keys", full.clone(), items[1].clone()),
        ("one-key", one, Vec::new()),
        ("three-keys-bad-item", full, b"{\"key\":\"\"}".to_vec()),
    ];
    for (name, slot, item) in cases {
        let mut input = vec![u8::try_from(item.len())?];
        input.extend_from_slice(&slot);
        input.extend_from_slice(&item);
        seeds.put("config_slot", name, input)?;
    }
    Ok(())
}

/// `pick % 4`: 0 rollback body, 1 config body, 2 push query, 3 kv query.
fn admin_requests(seeds: &mut Seeds) -> Result<()> {
    let signer = Hash([9; 32]);
    let cases: Vec<(u8, &str, String)> = vec![
        (0, "rollback", r#"{"name":"tick"}"#.into()),
        (1, "config", r#"{"value":"on"}"#.into()),
        (2, "push", "name=tick".into()),
        (
            2,
            "push-full",
            format!(
                "name=tick&config=quiet%3Dtrue&config=a=b&signer={signer}&signature={}&local",
                "ab".repeat(64)
            ),
        ),
        (3, "kv-prefix", "prefix=cfg%2F".into()),
    ];
    for (pick, name, text) in cases {
        seeds.put("admin_request", name, prefixed(pick, text.as_bytes()))?;
    }
    Ok(())
}
