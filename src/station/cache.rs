//! The compile cache (`--cache-dir`): compiled components kept on disk so a
//! restart, or the next node process, skips compiling.
//!
//! An entry is `<module sha-256>-<engine compatibility hash>.cwasm` and
//! holds a header ([`MAGIC`]), the sha-256 of the compiled code, then the
//! code wasmtime serialized. The digest is checked on the bytes in memory
//! **before** they are handed to wasmtime: wasmtime validates an artifact's
//! header and engine settings but not its machine code, so a flipped byte
//! in `.text` would otherwise run (and kill the node with SIGILL). Any
//! damage (truncated, zeroed, garbage, a flipped bit anywhere, an entry of
//! an older format) is a miss: logged once, removed, and rewritten by the
//! compile that follows. This holds for every start, so a node respawned
//! after dying by a signal never trusts the cache blindly either.
//!
//! What this module does not own: compiling, and which engine is used
//! (`StationHost`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of every entry: the format and its version.
pub const MAGIC: &[u8; 16] = b"RINGHOST-CWASM-1";

const HEADER: usize = MAGIC.len() + 32;

/// A directory of compiled components, checked by digest before loading.
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// Uses (creating) `dir`; `None`, with a warning, when it cannot be
    /// created (the node then compiles every time).
    pub fn open(dir: PathBuf) -> Option<Self> {
        match std::fs::create_dir_all(&dir) {
            Ok(()) => Some(Self { dir }),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), cause = %e, "compile cache disabled");
                None
            }
        }
    }

    /// The entry path for module `key` compiled by `engine`.
    pub fn entry_path(&self, engine: &Engine, key: &[u8; 32]) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.dir.join(format!(
            "{}-{:016x}.cwasm",
            crate::config::hex(key),
            h.finish()
        ))
    }

    /// The compiled component for module `key`, if a sound entry is
    /// cached. A damaged entry is logged (one line), removed, and missed.
    pub fn load(&self, engine: &Engine, key: &[u8; 32]) -> Option<Component> {
        let path = self.entry_path(engine, key);
        let bytes = std::fs::read(&path).ok()?;
        let loaded = check_entry(&bytes).and_then(|code| load_checked(engine, code));
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), cause = %e, "compile cache entry damaged or stale; recompiling and rewriting it");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes `component`'s code as the entry for module `key` (fsynced,
    /// renamed into place). A failure only costs a compile next time.
    pub fn store(&self, engine: &Engine, key: &[u8; 32], component: &Component) {
        let Ok(code) = component.serialize() else {
            return;
        };
        let path = self.entry_path(engine, key);
        if let Err(e) = crate::durable::write_atomic(&path, &entry_bytes(&code)) {
            tracing::warn!(path = %path.display(), cause = %format!("{e:#}"), "compile cache entry not written");
        }
    }
}

/// An entry's bytes: header, digest, code.
fn entry_bytes(code: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + code.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&Sha256::digest(code));
    out.extend_from_slice(code);
    out
}

/// The code in an entry, if its header and digest are right.
///
/// # Errors
/// Naming what is wrong: too short, another format, digest mismatch.
fn check_entry(bytes: &[u8]) -> Result<&[u8]> {
    if bytes.len() <= HEADER {
        bail!("{} bytes, shorter than an entry", bytes.len());
    }
    let (magic, rest) = bytes.split_at(MAGIC.len());
    if magic != MAGIC {
        bail!("not a ringhost cache entry of this format");
    }
    let (digest, code) = rest.split_at(32);
    if Sha256::digest(code).as_slice() != digest {
        bail!("digest mismatch: the compiled code is damaged");
    }
    Ok(code)
}

/// Loads code whose digest was just checked.
///
/// The only unsafe code in ringhost. `Component::deserialize` is unsafe
/// because the bytes are trusted to be code this wasmtime compiled: ours
/// are (we wrote them, keyed by the module hash and the engine's
/// compatibility hash, and the digest proves they are the bytes we wrote,
/// checked on the very buffer loaded, so nothing can change in between);
/// wasmtime still checks the header, version and engine settings (a
/// mismatch is an error, a miss); and compiled code never comes from
/// another machine. Whoever can write our cache directory and forge a
/// digest can already replace our binary.
#[allow(unsafe_code)]
fn load_checked(engine: &Engine, code: &[u8]) -> Result<Component> {
    // SAFETY: see above; the bytes are ours, digest-checked, and wasmtime
    // validates the artifact's header.
    unsafe { Component::deserialize(engine, code) }.map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::station::{StationHost, builtin};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringhost-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Fills the cache in `dir` with echo's entry; returns its path.
    fn filled(dir: &Path) -> PathBuf {
        let echo = builtin::bytes("echo").expect("built in");
        StationHost::with_cache(Some(dir.to_path_buf()))
            .unwrap()
            .compile(echo)
            .unwrap();
        let entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect();
        assert_eq!(entries.len(), 1, "one entry: {entries:?}");
        entries[0].clone()
    }

    /// File offset and size of the `.text` section of an ELF image.
    fn elf_text(elf: &[u8]) -> (usize, usize) {
        let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
        let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
        assert_eq!(&elf[..4], b"\x7fELF", "wasmtime artifacts are ELF");
        let (shoff, shentsize, shnum, shstrndx) =
            (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
        let strtab = u64_at(shoff + shstrndx * shentsize + 0x18);
        (0..shnum)
            .map(|i| shoff + i * shentsize)
            .find(|&sh| {
                let name = strtab + u32_at(sh);
                elf[name..].starts_with(b".text\0")
            })
            .map(|sh| (u64_at(sh + 0x18), u64_at(sh + 0x20)))
            .expect("a .text section")
    }

    /// A fresh host (a restart) compiles echo through the damaged cache,
    /// runs nothing it should not, and leaves a sound entry behind.
    fn restart_recovers(dir: &Path, entry: &Path, sound: &[u8]) {
        let echo = builtin::bytes("echo").expect("built in");
        let host = StationHost::with_cache(Some(dir.to_path_buf())).unwrap();
        host.compile(echo)
            .expect("compiles despite the damaged entry");
        let rewritten = std::fs::read(entry).expect("entry rewritten");
        assert!(check_entry(&rewritten).is_ok(), "rewritten entry is sound");
        assert_eq!(rewritten.len(), sound.len());
        // And the next restart loads it.
        let cache = CompileCache::open(dir.to_path_buf()).unwrap();
        assert!(
            cache
                .load(host.engine(), &crate::model::Hash::of(echo).0)
                .is_some()
        );
    }

    #[test]
    fn compile_cache_is_reused_and_every_kind_of_damage_is_a_miss_that_rewrites_the_entry() {
        let dir = scratch("damage");
        let entry = filled(&dir);
        let sound = std::fs::read(&entry).unwrap();
        assert!(check_entry(&sound).is_ok());
        let code = &sound[HEADER..];
        let (text_at, text_len) = elf_text(code);
        assert!(text_len > 64, ".text holds code");

        let mut damages: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", sound[..sound.len() / 2].to_vec()),
            ("truncated to the header", sound[..HEADER].to_vec()),
            ("empty", Vec::new()),
            ("zeroed", vec![0; sound.len()]),
            ("garbage", b"not compiled code".repeat(100)),
            ("old format (no digest)", code.to_vec()),
        ];
        // 16 bytes flipped inside .text (the SIGILL case), and elsewhere.
        for (what, at) in [
            ("16 bytes flipped in .text", HEADER + text_at + text_len / 2),
            ("flipped in the ELF header", HEADER + 8),
            ("flipped in the digest", MAGIC.len() + 3),
            ("flipped in the last bytes", sound.len() - 16),
        ] {
            let mut bad = sound.clone();
            for b in &mut bad[at..at + 16] {
                *b ^= 0xa5;
            }
            damages.push((what, bad));
        }
        let mut one_bit = sound.clone();
        one_bit[HEADER + text_at + 7] ^= 0x01;
        damages.push(("one bit flipped in .text", one_bit));

        for (what, bad) in damages {
            std::fs::write(&entry, &bad).unwrap();
            assert!(
                check_entry(&bad).is_err(),
                "{what}: detected before loading"
            );
            restart_recovers(&dir, &entry, &sound);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
