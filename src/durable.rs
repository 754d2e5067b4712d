//! Files that survive a power loss: written to a temp file, fsynced,
//! renamed over the target, and the directory fsynced so the rename itself
//! is on disk; and damaged files moved aside rather than deleted, so an
//! operator can still look at them.
//!
//! Knows nothing of what the files hold (release records, modules, compiled
//! code): callers decide what is damaged.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` so that after a crash at any point the path
/// holds either its old contents or all of `bytes`: a temp file next to it
/// is written and fsynced, renamed over `path`, then the directory is
/// fsynced. The temp file is removed if any step fails.
///
/// # Errors
/// When the temp file cannot be written or synced, or the rename fails
/// (each naming the file). A failed directory sync is an error too.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| -> Result<()> {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_dir(path)
}

/// Fsyncs the directory holding `path`, so a rename or create in it is
/// durable.
///
/// # Errors
/// When the directory cannot be opened or synced.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Renames a damaged file to `<name>.damaged-<unix seconds>[-n]` next to it
/// (kept for a look, never loaded again) and returns the new path.
///
/// # Errors
/// When the rename fails.
pub fn move_aside(path: &Path) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Never over an earlier damaged copy (two in one second).
    let aside = (0..100)
        .map(|n| {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".damaged-{secs}"));
            if n > 0 {
                name.push(format!("-{n}"));
            }
            path.with_file_name(name)
        })
        .find(|p| !p.exists())
        .context("too many damaged copies")?;
    std::fs::rename(path, &aside)
        .with_context(|| format!("moving damaged {} aside", path.display()))?;
    let _ = sync_dir(path);
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("ringhost-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let aside = move_aside(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(std::fs::read(&aside).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "only the moved-aside file is left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
