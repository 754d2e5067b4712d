//! Cluster keys: the secret every member of a ring holds, read from a key
//! file, reloaded while the node runs (rotation without a restart).
//!
//! A key file is text: one key per line, 64 hexadecimal digits (32 random
//! bytes, what `ringhost keygen --cluster` writes); blank lines and lines
//! starting with `#` are ignored. The first key is the one this node dials
//! with; every key in the file is accepted from a dialing peer. Rotation is
//! three edits of every node's file (see the README, "Trusted links"):
//! append the new key, move it first, drop the old one.
//!
//! A key is named in logs and status reports by its id, the first 8 bytes
//! of `SHA-256("ringhost cluster key id" ‖ key)` in hex: it says which key
//! a peer used without saying anything about the key itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Bytes in a cluster key.
pub const KEY_BYTES: usize = 32;

/// Keys a file may hold (rotation needs two; a few more is a mistake).
pub const MAX_KEYS: usize = 8;

/// Bytes a key file may have.
const MAX_FILE_BYTES: u64 = 64 << 10;

/// A cluster key: 32 secret bytes, the Noise pre-shared key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(pub [u8; KEY_BYTES]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", self.id())
    }
}

/// The public name of a cluster key (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl ClusterKey {
    /// A new random key (the operating system's generator).
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        let mut h = Sha256::new();
        h.update(b"ringhost cluster key id");
        h.update(self.0);
        let d = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        KeyId(id)
    }

    /// The key as a key file line (64 hex digits).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The keys a node holds at one moment: never empty, the first is the one
/// it dials with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<ClusterKey>,
}

impl KeySet {
    /// A set of `keys`, the first one dialed with.
    ///
    /// # Errors
    /// When `keys` is empty, holds more than [`MAX_KEYS`], or holds a key
    /// twice.
    pub fn new(keys: Vec<ClusterKey>) -> Result<Self> {
        if keys.is_empty() {
            bail!("no cluster key (a key is a line of 64 hex digits)");
        }
        if keys.len() > MAX_KEYS {
            bail!("{} cluster keys; at most {MAX_KEYS}", keys.len());
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].contains(k) {
                bail!("cluster key {} is listed twice", k.id());
            }
        }
        Ok(Self { keys })
    }

    /// Parses a key file's text (see the module docs).
    ///
    /// # Errors
    /// Naming the line that is not a key, or as [`KeySet::new`].
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(parse_key(line).with_context(|| format!("line {}", n + 1))?);
        }
        Self::new(keys)
    }

    /// The key this node dials with.
    pub fn primary(&self) -> &ClusterKey {
        &self.keys[0]
    }

    /// The held key with id `id`.
    pub fn find(&self, id: KeyId) -> Option<&ClusterKey> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// Every key's id, the primary first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(ClusterKey::id).collect()
    }
}

fn parse_key(line: &str) -> Result<ClusterKey> {
    if line.len() != 2 * KEY_BYTES || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "not a cluster key: expected {} hex digits, found {} characters",
            2 * KEY_BYTES,
            line.chars().count()
        );
    }
    let mut key = [0u8; KEY_BYTES];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&line[2 * i..2 * i + 2], 16).context("hex digit")?;
    }
    Ok(ClusterKey(key))
}

/// Reads and parses a key file.
///
/// # Errors
/// When the file cannot be read, is over 64 KiB, or does not parse.
pub fn read_file(path: &Path) -> Result<KeySet> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading cluster key file {}", path.display()))?
        .len();
    if len > MAX_FILE_BYTES {
        bail!(
            "cluster key file {} has {len} bytes; a key file has at most {MAX_FILE_BYTES}",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading cluster key file {}", path.display()))?;
    KeySet::parse(&text).with_context(|| format!("cluster key file {}", path.display()))
}

/// Writes a new key file holding one fresh key, readable by its owner
/// only (mode 0600); returns the key's id.
///
/// # Errors
/// When `path` exists already or cannot be written.
pub fn write_new_file(path: &Path) -> Result<KeyId> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = ClusterKey::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating cluster key file {}", path.display()))?;
    writeln!(
        f,
        "# ringhost cluster key {} (secret: every member holds this file)\n{}",
        key.id(),
        key.to_hex()
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(key.id())
}

/// A node's cluster keys as they are now, shared by its link tasks and
/// replaced when the key file changes (cheap to clone).
#[derive(Debug, Clone)]
pub struct ClusterKeys {
    current: Arc<RwLock<Arc<KeySet>>>,
    file: Option<PathBuf>,
    /// What the file looked like when last read: (modified, length).
    seen: Arc<RwLock<Option<(SystemTime, u64)>>>,
}

impl ClusterKeys {
    /// Keys read from `path`, reloaded by [`ClusterKeys::reload_if_changed`].
    ///
    /// # Errors
    /// As [`read_file`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let stamp = stamp(path);
        let set = read_file(path)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(set))),
            file: Some(path.to_path_buf()),
            seen: Arc::new(RwLock::new(stamp)),
        })
    }

    /// Fixed keys, with no file behind them (tests, benches).
    pub fn fixed(set: KeySet) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(set))),
            file: None,
            seen: Arc::new(RwLock::new(None)),
        }
    }

    /// The keys now.
    pub fn get(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the keys (what a reload does).
    pub fn set(&self, set: KeySet) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
    }

    /// The key file, when there is one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the key file again when its modification time or length
    /// changed since the last read. `Ok(Some(ids))` when the keys changed,
    /// `Ok(None)` when nothing did.
    ///
    /// # Errors
    /// When the changed file does not parse; the keys held stay as they
    /// were (a half-written file never leaves a node without keys).
    pub fn reload_if_changed(&self) -> Result<Option<Vec<KeyId>>> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let now = stamp(path);
        {
            let mut seen = self
                .seen
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == now {
                return Ok(None);
            }
            *seen = now;
        }
        let set = read_file(path)?;
        if *self.get() == set {
            return Ok(None);
        }
        let ids = set.ids();
        self.set(set);
        Ok(Some(ids))
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_parses_with_comments_and_names_a_bad_line() {
        let a = ClusterKey([1; 32]);
        let b = ClusterKey([2; 32]);
        let text = format!("# rotation\n\n{}\n  {}  \n", a.to_hex(), b.to_hex());
        let set = KeySet::parse(&text).unwrap();
        assert_eq!(set.primary(), &a);
        assert_eq!(set.ids(), vec![a.id(), b.id()]);
        assert_eq!(set.find(b.id()), Some(&b));
        assert!(set.find(ClusterKey([3; 32]).id()).is_none());

        let err = format!("{:#}", KeySet::parse("# only\nzz").unwrap_err());
        assert!(
            err.contains("line 2") && err.contains("64 hex digits"),
            "{err}"
        );
        let err = format!("{:#}", KeySet::parse("# nothing\n").unwrap_err());
        assert!(err.contains("no cluster key"), "{err}");
        let twice = format!("{}\n{}\n", a.to_hex(), a.to_hex());
        assert!(format!("{:#}", KeySet::parse(&twice).unwrap_err()).contains("twice"));
    }

    #[test]
    fn ids_differ_per_key_and_say_nothing_of_its_bytes() {
        let a = ClusterKey([1; 32]);
        assert_ne!(a.id(), ClusterKey([2; 32]).id());
        assert_eq!(a.id().to_string().len(), 16);
        assert!(!a.to_hex().contains(&a.id().to_string()));
    }

    #[test]
    fn a_new_key_file_is_private_and_reloads_only_when_changed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "ringhost-keys-test-{}-{:?}",
            std::process::id(),
            std::time::Instant::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.key");
        let id = write_new_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_new_file(&path).is_err(), "an existing file is kept");
        let keys = ClusterKeys::from_file(&path).unwrap();
        assert_eq!(keys.get().primary().id(), id);
        assert_eq!(keys.reload_if_changed().unwrap(), None);

        // A second key appended: both held, the first still dialed with.
        let extra = ClusterKey([9; 32]);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&extra.to_hex());
        text.push('\n');
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            keys.reload_if_changed().unwrap(),
            Some(vec![id, extra.id()])
        );

        // A broken file keeps the keys held.
        std::fs::write(&path, "not a key, and longer than before\n").unwrap();
        assert!(keys.reload_if_changed().is_err());
        assert_eq!(keys.get().ids(), vec![id, extra.id()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
