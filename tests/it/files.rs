//! Station files and data on disk: symlinked station files (the Kubernetes
//! ConfigMap layout, a replaced target, a re-pointed hop), a file replaced
//! while the node starts, an invalid file validated once, and damaged
//! compile-cache entries, release records and module files.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ringhost::config::{Hook, NodeConfig, StationSpec};
use ringhost::deploy::release::Hash;
use ringhost::node::{self, NodeHandle};
use ringhost::observe::EventKind;
use ringhost::station::StationHost;

use crate::deploy::{marker, push_to, released, scratch, start_node};
use crate::support::TestRing;

/// Writes `bytes` to a temp file and renames it over `path`.
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Makes (or atomically replaces) symlink `link` pointing at `target`.
fn repoint(link: &Path, target: &Path) {
    let mut name = link.file_name().unwrap().to_os_string();
    name.push("_tmp"); // as the kubelet names it: `..data_tmp`
    let tmp = link.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Config of a one-node ring running station `m` from `file`, watched.
fn watching(file: &Path) -> impl Fn(&mut NodeConfig) + use<> {
    let spec = StationSpec::parse(&format!("m={}", file.display()), &[]).unwrap();
    move |c: &mut NodeConfig| {
        c.delay_ms = 5;
        c.stations = vec![spec.clone()];
        c.deploy.watch = true;
        c.deploy.settle_ms = 50;
        // Longer than any wait here: changes must come through events.
        c.deploy.poll_ms = 60_000;
    }
}

/// Waits until node `i` runs module `bytes` as station `m`.
async fn wait_running(ring: &TestRing, i: usize, bytes: &[u8], what: &str) {
    wait_node_running(ring.nodes[i].as_ref().expect("node running"), bytes, what).await;
}

async fn wait_node_running(node: &NodeHandle, bytes: &[u8], what: &str) {
    let hash = Hash::of(bytes);
    let mut rx = node.deploy_view();
    let within = Duration::from_secs(10);
    let found = tokio::time::timeout(
        within,
        rx.wait_for(|v| {
            v.stations
                .iter()
                .any(|s| s.name == "m" && s.running == hash)
        }),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(
        found,
        "{what}: node does not run {} within {within:?}: {:#?}",
        hash.short(),
        rx.borrow().stations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_swap_of_the_data_symlink_reloads_the_station() {
    // mount/s.wasm -> ..data/s.wasm, ..data -> ..2026_01 (Kubernetes).
    let mount = scratch("configmap");
    let version = |n: u8| {
        let dir = mount.join(format!("..2026_{n:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s.wasm"), marker(n)).unwrap();
        PathBuf::from(dir.file_name().unwrap())
    };
    let first = version(1);
    symlink(&first, mount.join("..data")).unwrap();
    symlink("..data/s.wasm", mount.join("s.wasm")).unwrap();
    let ring = TestRing::start(1, watching(&mount.join("s.wasm"))).await;
    wait_running(&ring, 0, &marker(1), "as started").await;

    // An update the way the kubelet does it: a new timestamped directory,
    // `..data` swapped by rename, the old directory removed.
    for n in [2, 3] {
        let next = version(n);
        repoint(&mount.join("..data"), &next);
        let _ = std::fs::remove_dir_all(mount.join(format!("..2026_{:02}", n - 1)));
        wait_running(&ring, 0, &marker(n), &format!("after swap {n}")).await;
    }
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_whose_target_file_is_replaced_reloads_the_station() {
    let root = scratch("target");
    std::fs::create_dir_all(root.join("conf")).unwrap();
    std::fs::create_dir_all(root.join("real")).unwrap();
    let real = root.join("real").join("s.wasm");
    std::fs::write(&real, marker(1)).unwrap();
    symlink("../real/s.wasm", root.join("conf").join("s.wasm")).unwrap();
    let ring = TestRing::start(1, watching(&root.join("conf").join("s.wasm"))).await;
    wait_running(&ring, 0, &marker(1), "as started").await;

    replace_file(&real, &marker(2));
    wait_running(&ring, 0, &marker(2), "target renamed over").await;
    std::fs::write(&real, marker(3)).unwrap();
    wait_running(&ring, 0, &marker(3), "target rewritten in place").await;
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_re_pointed_to_another_file_reloads_the_station() {
    // conf/s.wasm -> ../links/current.wasm -> ../v1/s.wasm; the middle hop
    // is re-pointed, in a directory the configured path is not in.
    let root = scratch("repoint");
    for d in ["conf", "links", "v1", "v2"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("v1").join("s.wasm"), marker(1)).unwrap();
    std::fs::write(root.join("v2").join("s.wasm"), marker(2)).unwrap();
    let current = root.join("links").join("current.wasm");
    symlink("../v1/s.wasm", &current).unwrap();
    symlink("../links/current.wasm", root.join("conf").join("s.wasm")).unwrap();
    let ring = TestRing::start(1, watching(&root.join("conf").join("s.wasm"))).await;
    wait_running(&ring, 0, &marker(1), "as started").await;

    repoint(&current, Path::new("../v2/s.wasm"));
    wait_running(&ring, 0, &marker(2), "hop re-pointed").await;
    // The new chain is watched: a change in v2 is seen, v1 no longer counts.
    replace_file(&root.join("v2").join("s.wasm"), &marker(3));
    wait_running(&ring, 0, &marker(3), "new target replaced").await;
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_while_the_node_starts_is_picked_up() {
    let dir = scratch("startup");
    let file = dir.join("s.wasm");
    std::fs::write(&file, marker(1)).unwrap();
    let configure = watching(&file);
    let replaced = file.clone();
    // Runs after the node has read (and compiled) the file and before it
    // watches it: the window the issue names.
    let hook = Hook(Arc::new(move || replace_file(&replaced, &marker(2))));
    let ring = TestRing::start(1, move |c| {
        configure(c);
        c.deploy.before_watch = Some(hook.clone());
    })
    .await;
    wait_running(&ring, 0, &marker(2), "replaced during start").await;
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_no_file_event_reports_is_found_by_the_slow_poll() {
    // conf/s.wasm is a hard link to real/s.wasm, rewritten in place through
    // real/: inotify reports that to watchers of real/ only, so the node
    // (watching conf/) gets no event, as on a filesystem without inotify.
    let root = scratch("poll");
    std::fs::create_dir_all(root.join("conf")).unwrap();
    std::fs::create_dir_all(root.join("real")).unwrap();
    let real = root.join("real").join("s.wasm");
    std::fs::write(&real, marker(1)).unwrap();
    std::fs::hard_link(&real, root.join("conf").join("s.wasm")).unwrap();
    let configure = watching(&root.join("conf").join("s.wasm"));
    let ring = TestRing::start(1, move |c| {
        configure(c);
        c.deploy.poll_ms = 500;
    })
    .await;
    wait_running(&ring, 0, &marker(1), "as started").await;
    std::fs::write(&real, marker(2)).unwrap();
    wait_running(&ring, 0, &marker(2), "changed without an event").await;
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
}

/// Counts `DeployFailed` events of node 0 arriving within `within`,
/// checking each reason is one line.
async fn failures_within(ring: &mut TestRing, within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    let mut n = 0;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, ring.events.recv()).await {
        if let EventKind::DeployFailed { reason, .. } = &ev.kind {
            assert!(!reason.contains('\n'), "one line: {reason}");
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_invalid_station_file_is_validated_once_and_a_change_again() {
    let dir = scratch("invalid");
    let file = dir.join("s.wasm");
    std::fs::write(&file, marker(1)).unwrap();
    let mut ring = TestRing::start(1, watching(&file)).await;
    wait_running(&ring, 0, &marker(1), "as started").await;

    // Not a component (its parse error is a multi-line dump in wasmparser).
    replace_file(&file, b"garbage, not a component");
    assert_eq!(
        failures_within(&mut ring, Duration::from_secs(3)).await,
        1,
        "validated exactly once while unchanged"
    );
    // Another invalid file is a change: checked once more.
    replace_file(&file, b"\0asm other garbage");
    assert_eq!(failures_within(&mut ring, Duration::from_secs(2)).await, 1);
    replace_file(&file, &marker(2));
    wait_running(&ring, 0, &marker(2), "a valid file again").await;
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// File offset and size of the `.text` section of an ELF image.
fn elf_text(elf: &[u8]) -> (usize, usize) {
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, size, count, names) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let strtab = u64_at(shoff + names * size + 0x18);
    (0..count)
        .map(|i| shoff + i * size)
        .find(|&sh| elf[strtab + u32_at(sh)..].starts_with(b".text\0"))
        .map(|sh| (u64_at(sh + 0x18), u64_at(sh + 0x20)))
        .expect("a .text section")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_its_station_although_the_compile_cache_entry_is_damaged_in_text() {
    let dir = scratch("cache");
    let cache = dir.join("cache");
    let file = dir.join("s.wasm");
    // A module of its own, so no other test's compile is reused.
    std::fs::write(&file, marker(77)).unwrap();
    StationHost::with_cache(Some(cache.clone()))
        .unwrap()
        .compile(&marker(77))
        .unwrap();
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a cache entry");
    let mut bytes = std::fs::read(&entry).unwrap();
    let elf = bytes
        .windows(4)
        .position(|w| w == b"\x7fELF")
        .expect("compiled code in the entry");
    // All of .text becomes `ud2`: whatever runs of it traps at once
    // (without the digest check the node dies by SIGILL).
    let (text, len) = elf_text(&bytes[elf..]);
    for pair in bytes[elf + text..][..len].chunks_mut(2) {
        pair.copy_from_slice(&[0x0f, 0x0b][..pair.len()]);
    }
    std::fs::write(&entry, &bytes).unwrap();

    // A restart: a fresh host over the same cache.
    crate::support::init_tracing();
    let (layout, mut listeners) = crate::support::bind_ring(1).await;
    let mut config = NodeConfig::new(layout, 0);
    watching(&file)(&mut config);
    config.deploy.watch = false;
    let (observer, mut events) = ringhost::observe::Observer::channel();
    let fresh = StationHost::with_cache(Some(cache.clone())).unwrap();
    let node = node::start(config, listeners.remove(0), fresh, observer)
        .await
        .expect("node starts with a damaged cache entry");
    wait_node_running(&node, &marker(77), "from a damaged cache").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut logged = false;
    while !logged {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the station runs and logs")
            .expect("events");
        logged = matches!(&ev.kind, EventKind::StationLog { message, .. } if message.contains("RINGHOST-MARK-77"));
    }
    node.shutdown().await.unwrap();
    let rewritten = std::fs::read(&entry).expect("entry rewritten");
    assert_ne!(rewritten, bytes, "the damaged entry was replaced");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn push(addr: &str, bytes: &[u8]) -> Hash {
    released(push_to(addr, "m", bytes, &[]).await).hash
}

fn moved_aside(dir: &Path, name: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().starts_with(&format!("{name}.damaged-"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_release_records_and_modules_are_moved_aside_and_the_node_catches_up() {
    let root = scratch("data");
    let file = root.join("s.wasm");
    std::fs::write(&file, marker(1)).unwrap();
    let base = watching(&file);
    let data = root.clone();
    let configure = move |c: &mut NodeConfig| {
        base(c);
        c.deploy.watch = false;
        c.deploy.data_dir = Some(data.join(c.index.to_string()));
    };
    let mut ring = TestRing::start(2, &configure).await;
    let v1 = marker(2);
    let addr = ring.layout.members()[0].addr.clone();
    assert_eq!(push(&addr, &v1).await, Hash::of(&v1));
    wait_running(&ring, 1, &v1, "pushed").await;

    let node_dir = root.join("1");
    let records = node_dir.join("releases.json");
    let module = node_dir
        .join("modules")
        .join(format!("{}.wasm", Hash::of(&v1)));
    let good = std::fs::read(&records).unwrap();
    let mut damages: Vec<(&str, PathBuf, Vec<u8>)> = vec![
        ("zero-length records", records.clone(), Vec::new()),
        (
            "truncated records",
            records.clone(),
            good[..good.len() / 2].to_vec(),
        ),
        (
            "garbage records",
            records.clone(),
            b"\x00\xffnot json".to_vec(),
        ),
        (
            "truncated module",
            module.clone(),
            v1[..v1.len() / 3].to_vec(),
        ),
    ];
    let mut flipped = v1.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 16] {
        *b ^= 0xa5;
    }
    damages.push(("bit-flipped module", module.clone(), flipped));
    for (n, (what, path, bytes)) in damages.into_iter().enumerate() {
        ring.nodes[1].take().unwrap().shutdown().await.unwrap();
        std::fs::write(&path, &bytes).unwrap();
        start_node(&mut ring, 1, &configure).await;
        // It starts on what it can verify, then catches up from node 0.
        wait_running(&ring, 1, &v1, what).await;
        let (dir, name) = (path.parent().unwrap(), path.file_name().unwrap());
        let name = name.to_string_lossy();
        let kind_before = if name == "releases.json" { n } else { n - 3 };
        assert_eq!(
            moved_aside(dir, &name),
            kind_before + 1,
            "{what}: moved aside"
        );
        let now = std::fs::read(&path).unwrap();
        if name == "releases.json" {
            let text = String::from_utf8(now).expect("records rewritten as text");
            assert!(text.contains(&Hash::of(&v1).to_string()), "{what}: {text}");
        } else {
            assert_eq!(now, v1, "{what}: module rewritten");
        }
    }
    ring.shutdown().await;
    let _ = std::fs::remove_dir_all(&root);
}
