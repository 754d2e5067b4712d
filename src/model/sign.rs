//! Module signatures: ed25519 over the module's sha-256 (with a domain
//! prefix, so a signature made for ringhost means nothing elsewhere).
//!
//! Key files hold hex text under a one-line `#` header naming their kind:
//! a secret key file the 32-byte seed ([`SECRET_HEADER`]), a public key
//! file the 32-byte verifying key ([`PUBLIC_HEADER`]). A file of the wrong
//! kind is refused, naming it. Files from before the headers (bare hex)
//! are still read; a bare one named `*.pub` is taken as a public key.
//! `--trust` takes either the hex itself or the path of a file holding it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::config::hex;

const DOMAIN: &[u8] = b"ringhost station module v1\0";

/// First line of a secret key file.
pub const SECRET_HEADER: &str = "# ringhost secret key (ed25519 seed, hex): keep it private";

/// First line of a public key file.
pub const PUBLIC_HEADER: &str =
    "# ringhost public key (ed25519, hex): give it to nodes with --trust";

/// What a key file says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Secret,
    Public,
    /// Bare hex, from before the headers.
    Unmarked,
}

/// The kind of a key file's text and its hex (the lines not starting
/// with `#`).
fn key_text(text: &str) -> (KeyKind, String) {
    let mut kind = KeyKind::Unmarked;
    let mut hex = String::new();
    for line in text.lines().map(str::trim) {
        match line.strip_prefix('#') {
            Some(c) if c.contains("ringhost secret key") => kind = KeyKind::Secret,
            Some(c) if c.contains("ringhost public key") => kind = KeyKind::Public,
            Some(_) => {}
            None => hex.push_str(line),
        }
    }
    (kind, hex)
}

fn message(hash: &[u8; 32]) -> Vec<u8> {
    [DOMAIN, hash.as_slice()].concat()
}

/// A new random signing key.
pub fn generate() -> SigningKey {
    let seed: [u8; 32] = rand::random();
    SigningKey::from_bytes(&seed)
}

/// Signs a module hash.
pub fn sign(key: &SigningKey, hash: &[u8; 32]) -> [u8; 64] {
    key.sign(&message(hash)).to_bytes()
}

/// Checks that `signature` by `signer` over `hash` is valid and that
/// `signer` is one of `trusted`.
///
/// # Errors
/// Saying which of the two failed.
pub fn verify(
    trusted: &[VerifyingKey],
    signer: &[u8; 32],
    signature: &[u8; 64],
    hash: &[u8; 32],
) -> Result<()> {
    let key = trusted
        .iter()
        .find(|k| k.as_bytes() == signer)
        .with_context(|| format!("signed by {}, which this node does not trust", hex(signer)))?;
    key.verify(&message(hash), &Signature::from_bytes(signature))
        .map_err(|_| anyhow::anyhow!("bad signature (by {})", hex(signer)))
}

/// Parses 2n hex digits.
///
/// # Errors
/// When the text is not exactly `N` bytes of hex.
pub fn parse_hex<const N: usize>(text: &str) -> Result<[u8; N]> {
    let text = text.trim();
    if text.len() != 2 * N || !text.is_ascii() {
        bail!("expected {} hex digits, got {:?}", 2 * N, short(text));
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("not hex: {:?}", short(text)))?;
    }
    Ok(out)
}

fn short(s: &str) -> &str {
    s.get(..s.len().min(20)).unwrap_or(s)
}

/// Reads a secret key file written by [`write_key`].
/// # Errors
/// When the file is missing, does not hold a key, or holds a public key
/// (the `.pub` file where the secret key belongs).
pub fn read_key(path: &Path) -> Result<SigningKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading key {}", path.display()))?;
    let (kind, hex) = key_text(&text);
    let public = kind == KeyKind::Public
        || (kind == KeyKind::Unmarked && path.extension().is_some_and(|e| e == "pub"));
    if public {
        bail!(
            "{} is a public key file; signing needs the secret key file `ringhost keygen` wrote \
             beside it (without .pub)",
            path.display()
        );
    }
    let seed = parse_hex::<32>(&hex).with_context(|| format!("key {}", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes a secret key (owner-only permissions) and its public key beside
/// it ([`public_path`]: `deploy.key` -> `deploy.pub`); returns the public
/// key's hex.
///
/// # Errors
/// When either file cannot be written or already exists, or `path` itself
/// ends in `.pub`.
pub fn write_key(path: &Path, key: &SigningKey) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pub_path = public_path(path);
    if pub_path == path {
        bail!(
            "{}: the secret key file cannot end in .pub (that is where the public key goes); \
             use e.g. deploy.key",
            path.display()
        );
    }
    if pub_path.exists() {
        bail!(
            "{} already exists (the public key of {} would go there)",
            pub_path.display(),
            path.display()
        );
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| creating(path, e))?;
    writeln!(f, "{SECRET_HEADER}\n{}", hex(&key.to_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    let public = hex(key.verifying_key().as_bytes());
    let mut p = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pub_path)
        .map_err(|e| creating(&pub_path, e))?;
    write!(p, "{PUBLIC_HEADER}\n{public}\n")
        .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok(public)
}

/// Why a key file could not be created, in words: it exists (never
/// overwritten), or the cause (a missing directory, permissions…).
fn creating(path: &Path, e: std::io::Error) -> anyhow::Error {
    let what = if e.kind() == std::io::ErrorKind::AlreadyExists {
        format!(
            "{} already exists: keygen never overwrites a key",
            path.display()
        )
    } else {
        format!("creating {}", path.display())
    };
    anyhow::Error::new(e).context(what)
}

/// Where [`write_key`] puts the public key of the secret key file `path`:
/// beside it, the extension replaced by `.pub` (`deploy.key` ->
/// `deploy.pub`).
pub fn public_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("pub")
}

/// A trusted public key given as hex or as the path of a file holding it.
///
/// # Errors
/// When it is neither, or names a secret key file.
pub fn parse_public(arg: &str) -> Result<VerifyingKey> {
    let text = if Path::new(arg).is_file() {
        std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?
    } else {
        arg.to_string()
    };
    let (kind, text) = key_text(&text);
    if kind == KeyKind::Secret {
        bail!("{arg} is a secret key file; --trust takes the public key (the .pub file)");
    }
    let bytes = parse_hex::<32>(&text).context("--trust takes a public key (hex) or its file")?;
    VerifyingKey::from_bytes(&bytes).context("not an ed25519 public key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_check_key_and_hash() {
        let a = generate();
        let b = generate();
        let trusted = [a.verifying_key()];
        let hash = [7u8; 32];
        let sig = sign(&a, &hash);
        let signer = *a.verifying_key().as_bytes();
        verify(&trusted, &signer, &sig, &hash).unwrap();
        let err = verify(&trusted, &signer, &sig, &[8u8; 32]).unwrap_err();
        assert!(err.to_string().contains("bad signature"), "{err}");
        let by_b = sign(&b, &hash);
        let err = verify(&trusted, b.verifying_key().as_bytes(), &by_b, &hash).unwrap_err();
        assert!(err.to_string().contains("does not trust"), "{err}");
        // A's key claiming B's signature fails too.
        assert!(verify(&trusted, &signer, &by_b, &hash).is_err());
    }

    #[test]
    fn key_files_round_trip() {
        let dir = std::env::temp_dir().join(format!("ringhost-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("deploy.key");
        let key = generate();
        let public = write_key(&path, &key).unwrap();
        assert!(write_key(&path, &key).is_err(), "never overwrites a key");
        assert_eq!(read_key(&path).unwrap().to_bytes(), key.to_bytes());
        let from_file = parse_public(dir.join("deploy.pub").to_str().unwrap()).unwrap();
        assert_eq!(from_file, key.verifying_key());
        assert_eq!(parse_public(&public).unwrap(), key.verifying_key());
        assert!(parse_public("zz").is_err());
        // `--out k.key` writes k.key and k.pub (what the help says); a key
        // path ending in .pub would be overwritten by its own public key,
        // and an existing public key is never overwritten.
        let k = dir.join("k.key");
        write_key(&k, &key).unwrap();
        assert!(dir.join("k.pub").is_file() && public_path(&k) == dir.join("k.pub"));
        let e = format!("{:#}", write_key(&dir.join("x.pub"), &key).unwrap_err());
        assert!(
            e.contains("x.pub") && e.contains("cannot end in .pub"),
            "{e}"
        );
        assert!(!dir.join("x.pub").exists());
        std::fs::write(dir.join("y.pub"), "other").unwrap();
        let e = format!("{:#}", write_key(&dir.join("y.key"), &key).unwrap_err());
        assert!(e.contains("y.pub already exists"), "{e}");
        assert!(!dir.join("y.key").exists(), "nothing written");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_file_of_the_wrong_kind_is_refused_naming_it() {
        let dir = std::env::temp_dir().join(format!("ringhost-kind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("deploy");
        let key = generate();
        write_key(&path, &key).unwrap();
        let pub_path = dir.join("deploy.pub");
        let err = format!("{:#}", read_key(&pub_path).unwrap_err());
        assert!(err.contains("deploy.pub is a public key file"), "{err}");
        let err = format!("{:#}", parse_public(path.to_str().unwrap()).unwrap_err());
        assert!(err.contains("is a secret key file"), "{err}");
        // Files from before the headers: bare hex still reads, and a bare
        // `.pub` file is still taken for a public key.
        let old = dir.join("old.key");
        std::fs::write(&old, format!("{}\n", hex(&key.to_bytes()))).unwrap();
        assert_eq!(read_key(&old).unwrap().to_bytes(), key.to_bytes());
        let old_pub = dir.join("old.pub");
        std::fs::write(
            &old_pub,
            format!("{}\n", hex(key.verifying_key().as_bytes())),
        )
        .unwrap();
        assert!(read_key(&old_pub).is_err());
        assert_eq!(
            parse_public(old_pub.to_str().unwrap()).unwrap(),
            key.verifying_key()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
