//! A node's deploy records: modules by content hash and, per station name,
//! the current release and the ones before it. With a data dir both live
//! on disk (`modules/<sha256>.wasm`, `releases.json`), written to a temp
//! file and renamed, so a crash never leaves half a record; without one,
//! in memory only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::release::{Hash, Release};

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
                records = serde_json::from_slice(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
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

    /// Keeps module bytes (in memory, and on disk with a data dir).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn put_module(&mut self, bytes: Arc<Vec<u8>>) -> Result<Hash> {
        let hash = Hash::of(&bytes);
        if let Some(dir) = &self.dir {
            let path = dir.join("modules").join(format!("{hash}.wasm"));
            if !path.is_file() {
                write_atomic(&path, &bytes)?;
            }
        }
        self.modules.insert(hash, bytes);
        Ok(hash)
    }

    /// The module with `hash`, from memory or disk (a file whose bytes do
    /// not hash right is ignored).
    pub fn module(&mut self, hash: &Hash) -> Option<Arc<Vec<u8>>> {
        if let Some(m) = self.modules.get(hash) {
            return Some(Arc::clone(m));
        }
        let path = self
            .dir
            .as_ref()?
            .join("modules")
            .join(format!("{hash}.wasm"));
        let bytes = std::fs::read(&path).ok()?;
        if Hash::of(&bytes) != *hash {
            tracing::warn!(path = %path.display(), "module file does not match its hash; ignored");
            return None;
        }
        let bytes = Arc::new(bytes);
        self.modules.insert(*hash, Arc::clone(&bytes));
        Some(bytes)
    }

    /// Makes `release` the current one of its name (the old current goes
    /// to the history) and saves the records.
    ///
    /// # Errors
    /// When the records cannot be written.
    pub fn set_current(&mut self, release: Release) -> Result<()> {
        match self.records.get_mut(&release.name) {
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
        write_atomic(&dir.join("releases.json"), &json)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(version: u64, bytes: &[u8]) -> Release {
        Release {
            name: "s".into(),
            version,
            origin: 0,
            hash: Hash::of(bytes),
            size: bytes.len() as u64,
            config: vec![],
            signer: None,
            signature: None,
            published_ms: version,
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
}
