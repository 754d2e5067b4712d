//! A node's deploy records: modules by content hash and, per station name,
//! the current release and the ones before it. With a data dir both live
//! on disk (`modules/<sha256>.wasm`, `releases.json`), written to a temp
//! file, fsynced, renamed, and the directory fsynced
//! ([`crate::durable::write_atomic`]), so a crash or power loss never
//! leaves half a record; without one, in memory only.
//!
//! What is on disk can still be damaged (a disk, another program, a power
//! loss on a filesystem that lies about syncs). A `releases.json` that does
//! not parse, or a module file whose bytes do not hash to its name, is
//! moved aside (`<name>.damaged-<unix seconds>`) with one log line and
//! forgotten: the node starts from its configured stations and the modules
//! it can verify, and catches up from its neighbours by the link
//! handshake, like a node that was down.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::{Hash, Release};

/// Releases kept per name, besides the current one.
const HISTORY: usize = 8;

/// The releases of one station name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The newest release accepted.
    pub current: Release,
    /// Older releases, oldest first.
    #[serde(default)]
    pub history: Vec<Release>,
    /// When the name was first recorded (unix ms): stations added by a
    /// push keep their pipeline order across restarts.
    #[serde(default)]
    pub added_ms: u64,
}

impl Record {
    /// The release a rollback brings back: the newest older one with a
    /// different module.
    pub fn previous(&self) -> Option<&Release> {
        self.history
            .iter()
            .rev()
            .find(|r| r.hash != self.current.hash)
    }

    /// Module hashes this record knows, best delta base first.
    pub fn hashes(&self) -> Vec<Hash> {
        let mut out = vec![self.current.hash];
        for r in self.history.iter().rev() {
            if !out.contains(&r.hash) {
                out.push(r.hash);
            }
        }
        out
    }
}

/// Modules and release records.
pub struct Store {
    dir: Option<PathBuf>,
    modules: HashMap<Hash, Arc<Vec<u8>>>,
    records: BTreeMap<String, Record>,
}

impl Store {
    /// Opens (creating) `dir`, or an in-memory store.
    ///
    /// # Errors
    /// When the directory cannot be created or `releases.json` is corrupt.
    pub fn open(dir: Option<&Path>) -> Result<Self> {
        let mut records = BTreeMap::new();
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir.join("modules"))
                .with_context(|| format!("creating data dir {}", dir.display()))?;
            let path = dir.join("releases.json");
            if path.is_file() {
                let text =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                match serde_json::from_slice(&text) {
                    Ok(r) => records = r,
                    Err(e) => {
                        let aside = crate::durable::move_aside(&path)?;
                        tracing::warn!(
                            path = %path.display(),
                            moved_to = %aside.display(),
                            cause = %e,
                            "release records damaged; moved aside, starting from the configured stations (neighbours bring the rest)"
                        );
                    }
                }
            }
        }
        Ok(Self {
            dir: dir.map(Path::to_path_buf),
            modules: HashMap::new(),
            records,
        })
    }

    /// The record of `name`.
    pub fn record(&self, name: &str) -> Option<&Record> {
        self.records.get(name)
    }

    /// All records.
    pub fn records(&self) -> &BTreeMap<String, Record> {
        &self.records
    }

    /// Keeps module bytes (in memory, and on disk with a data dir). A
    /// damaged file already at the module's path is moved aside and
    /// rewritten.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn put_module(&mut self, bytes: Arc<Vec<u8>>) -> Result<Hash> {
        let hash = Hash::of(&bytes);
        if !self.modules.contains_key(&hash)
            && let Some(path) = self.module_path(&hash)
            && self.read_verified(&path, &hash).is_none()
        {
            crate::durable::write_atomic(&path, &bytes)?;
        }
        self.modules.insert(hash, bytes);
        Ok(hash)
    }

    /// The module with `hash`, from memory or disk (a file whose bytes do
    /// not hash right is moved aside, and the module is missing).
    pub fn module(&mut self, hash: &Hash) -> Option<Arc<Vec<u8>>> {
        if let Some(m) = self.modules.get(hash) {
            return Some(Arc::clone(m));
        }
        let path = self.module_path(hash)?;
        let bytes = Arc::new(self.read_verified(&path, hash)?);
        self.modules.insert(*hash, Arc::clone(&bytes));
        Some(bytes)
    }

    fn module_path(&self, hash: &Hash) -> Option<PathBuf> {
        Some(
            self.dir
                .as_ref()?
                .join("modules")
                .join(format!("{hash}.wasm")),
        )
    }

    /// The bytes of module file `path` if they hash to `hash`. A file that
    /// does not is moved aside (one log line); a missing one is `None`.
    fn read_verified(&self, path: &Path, hash: &Hash) -> Option<Vec<u8>> {
        let bytes = std::fs::read(path).ok()?;
        if Hash::of(&bytes) == *hash {
            return Some(bytes);
        }
        match crate::durable::move_aside(path) {
            Ok(aside) => tracing::warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                "module file damaged (its bytes do not match its sha-256 name); moved aside"
            ),
            Err(e) => tracing::warn!(
                path = %path.display(),
                cause = %format!("{e:#}"),
                "module file damaged (its bytes do not match its sha-256 name); ignored"
            ),
        }
        None
    }

    /// Makes `release` the current one of its name (the old current goes
    /// to the history) and saves the records.
    ///
    /// # Errors
    /// When the records cannot be written.
    pub fn set_current(&mut self, release: Release) -> Result<()> {
        match self.records.get_mut(&release.name) {
            // The same release again (its module fetched back): no history.
            Some(rec) if rec.current.key() == release.key() => rec.current = release,
            Some(rec) => {
                let old = std::mem::replace(&mut rec.current, release);
                rec.history.retain(|r| r.key() != old.key());
                rec.history.push(old);
                if rec.history.len() > HISTORY {
                    rec.history.remove(0);
                }
            }
            None => {
                self.records.insert(
                    release.name.clone(),
                    Record {
                        current: release,
                        history: Vec::new(),
                        added_ms: crate::station::unix_ms(),
                    },
                );
            }
        }
        self.save()
    }

    fn save(&self) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(&self.records).expect("records serialize");
        crate::durable::write_atomic(&dir.join("releases.json"), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(version: u64, bytes: &[u8]) -> Release {
        Release {
            size: bytes.len() as u64,
            ..Release::sample("s", version, 0, Hash::of(bytes), version)
        }
    }

    #[test]
    fn records_and_modules_survive_a_reopen_and_previous_skips_same_module() {
        let dir = std::env::temp_dir().join(format!("ringhost-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = Store::open(Some(&dir)).unwrap();
            for (v, m) in [(0, b"a"), (1, b"b"), (2, b"b"), (3, b"c")] {
                s.put_module(Arc::new(m.to_vec())).unwrap();
                s.set_current(rel(v, m)).unwrap();
            }
        }
        let mut s = Store::open(Some(&dir)).unwrap();
        let rec = s.record("s").unwrap().clone();
        assert_eq!(rec.current.version, 3);
        assert_eq!(rec.previous().unwrap().version, 2);
        assert_eq!(rec.hashes().len(), 3);
        assert_eq!(s.module(&Hash::of(b"b")).unwrap().as_slice(), b"b");
        // A tampered module file is not served.
        let path = dir.join("modules").join(format!("{}.wasm", Hash::of(b"a")));
        std::fs::write(&path, b"x").unwrap();
        let mut s = Store::open(Some(&dir)).unwrap();
        assert!(s.module(&Hash::of(b"a")).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn damaged(dir: &Path, name: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}.damaged-"))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn damaged_release_records_are_moved_aside_and_the_store_opens_empty() {
        let dir = std::env::temp_dir().join(format!("ringhost-store-dmg-{}", std::process::id()));
        for (what, bytes) in [
            ("zero-length", Vec::new()),
            (
                "truncated",
                b"{\"s\": {\"current\": {\"name\": \"s\", \"ver".to_vec(),
            ),
            ("garbage", vec![0xff, 0x00, 0x13, 0x37]),
            ("zeroed", vec![0; 300]),
            ("wrong shape", b"[1, 2, 3]".to_vec()),
        ] {
            let _ = std::fs::remove_dir_all(&dir);
            {
                let mut s = Store::open(Some(&dir)).unwrap();
                s.put_module(Arc::new(b"a".to_vec())).unwrap();
                s.set_current(rel(1, b"a")).unwrap();
            }
            let path = dir.join("releases.json");
            std::fs::write(&path, &bytes).unwrap();
            let mut s = Store::open(Some(&dir)).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert!(s.records().is_empty(), "{what}: nothing recorded");
            let aside = damaged(&dir, "releases.json");
            assert_eq!(aside.len(), 1, "{what}: moved aside once");
            assert_eq!(
                std::fs::read(&aside[0]).unwrap(),
                bytes,
                "{what}: kept as it was"
            );
            assert!(!path.exists(), "{what}: no damaged records left in place");
            // Still usable: a new record is written and read back.
            s.set_current(rel(2, b"a")).unwrap();
            let s = Store::open(Some(&dir)).unwrap();
            assert_eq!(s.record("s").unwrap().current.version, 2, "{what}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_module_file_not_matching_its_name_is_moved_aside_and_rewritten_when_put_again() {
        let dir = std::env::temp_dir().join(format!("ringhost-store-mod-{}", std::process::id()));
        let modules = dir.join("modules");
        for (what, bad) in [
            ("zero-length", Vec::new()),
            ("truncated", b"modu".to_vec()),
            ("bit-flipped", b"modulE bytes".to_vec()),
        ] {
            let _ = std::fs::remove_dir_all(&dir);
            let good = b"module bytes".to_vec();
            let hash = Hash::of(&good);
            let path = modules.join(format!("{hash}.wasm"));
            Store::open(Some(&dir))
                .unwrap()
                .put_module(Arc::new(good.clone()))
                .unwrap();
            std::fs::write(&path, &bad).unwrap();
            let mut s = Store::open(Some(&dir)).unwrap();
            assert!(s.module(&hash).is_none(), "{what}: not served");
            assert_eq!(
                damaged(&modules, &format!("{hash}.wasm")).len(),
                1,
                "{what}"
            );
            assert!(s.module(&hash).is_none(), "{what}: still missing");
            // A damaged file in place is replaced when the module comes again.
            std::fs::write(&path, &bad).unwrap();
            let mut s = Store::open(Some(&dir)).unwrap();
            s.put_module(Arc::new(good.clone())).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), good, "{what}: rewritten");
            let mut s = Store::open(Some(&dir)).unwrap();
            assert_eq!(s.module(&hash).unwrap().as_slice(), good.as_slice());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
