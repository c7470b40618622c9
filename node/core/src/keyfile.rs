//! Key files: the one secret a source's snapshots depend on.
//!
//! A key file is TOML with a format tag, the source name, the public key
//! fingerprint and the 32-byte secret in hex. It is written with mode 0600
//! through a temporary file and a rename, and refused when it is readable by
//! group or others (like ssh refuses an open private key).

use crate::crypto::{SECRET_BYTES, Secret};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FORMAT: &str = "omesh-key-v1";
/// A key file with rotated epochs (`omesh key rotate`): the v1 fields and
/// `epochs`, the secrets added by each rotation, oldest first. An omesh
/// that predates rotation refuses it by its format instead of reading only
/// the first secret and failing later on what newer epochs sealed.
const FORMAT_EPOCHS: &str = "omesh-key-v2";
/// A sealed export of a key with rotated epochs.
const SEALED_FORMAT_EPOCHS: &str = "omesh-key-sealed-v2";
/// A key file whose secret is sealed with a passphrase (`key export
/// --passphrase`): Argon2id stretches the passphrase into a key for
/// XChaCha20-Poly1305, whose associated data binds the source, key id and
/// KDF parameters, so none of them can be altered without the open failing.
const SEALED_FORMAT: &str = "omesh-key-sealed-v1";

/// Argon2id cost of a new sealed export: 256 MiB, 3 passes, 1 lane
/// (about a second on a server core; OWASP's minimum is 19 MiB, 2 passes).
pub const KDF_MEMORY_KIB: u32 = 256 * 1024;
/// Argon2id passes.
pub const KDF_PASSES: u32 = 3;
/// The most memory a sealed file may ask for (a hostile file must not make
/// import allocate without bound).
pub const KDF_MEMORY_KIB_MAX: u32 = 2 * 1024 * 1024;
/// The most passes a sealed file may ask for.
pub const KDF_PASSES_MAX: u32 = 16;

/// Errors reading or writing a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// File missing or unreadable.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// key file
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// File could not be written.
    #[error("cannot write key file {path}: {source}")]
    Write {
        /// key file
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// Not a key file.
    #[error("{path} is not an omesh key file: {reason}")]
    Parse {
        /// key file
        path: PathBuf,
        /// what is wrong
        reason: String,
    },
    /// Permissions too open.
    #[error("key file {path} is accessible by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
        /// key file
        path: PathBuf,
        /// mode
        mode: u32,
    },
    /// Refusing to overwrite.
    #[error("key file {0} already exists; refusing to overwrite a key (move it away first)")]
    Exists(PathBuf),
    /// The passphrase does not open a sealed key file (or the file was altered).
    #[error("the passphrase does not open {0} (wrong passphrase, or the file was altered); nothing was written")]
    WrongPassphrase(PathBuf),
    /// A sealed key file and no passphrase.
    #[error(
        "{0} is sealed with a passphrase; give it (prompted on a terminal, or --passphrase-file FILE, or OMESH_KEY_PASSPHRASE)"
    )]
    NeedsPassphrase(PathBuf),
}

/// A sealed key file's contents.
#[derive(Serialize, Deserialize)]
struct SealedToml {
    format: String,
    source: String,
    key_id: String,
    created: String,
    kdf: String,
    kdf_memory_kib: u32,
    kdf_passes: u32,
    kdf_lanes: u32,
    salt: String,
    nonce: String,
    sealed: String,
    /// rotated epochs sealed after the first secret (v2 only)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epochs: Option<u32>,
}

impl SealedToml {
    fn aad(&self) -> Vec<u8> {
        let epochs = self.epochs.map(|n| format!("\n{n}")).unwrap_or_default();
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}{epochs}",
            self.format,
            self.source,
            self.key_id,
            self.created,
            self.kdf,
            self.kdf_memory_kib,
            self.kdf_passes,
            self.kdf_lanes,
            self.salt
        )
        .into_bytes()
    }
}

fn stretch(passphrase: &[u8], salt: &[u8], m: u32, t: u32, p: u32) -> Result<zeroize::Zeroizing<[u8; 32]>, String> {
    let params = argon2::Params::new(m, t, p, Some(32)).map_err(|e| e.to_string())?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase, salt, &mut out[..]).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Whether a v2 key file may hold `n` rotated epochs (at least one: a key
/// never rotated is a v1 file; at most [`crate::crypto::MAX_EPOCHS`] in all).
fn rotated_ok(n: usize) -> bool {
    (1..crate::crypto::MAX_EPOCHS).contains(&n)
}

/// Whether key file text is sealed with a passphrase.
pub fn is_sealed(text: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("format").and_then(|f| f.as_str()).map(|f| f == SEALED_FORMAT || f == SEALED_FORMAT_EPOCHS))
        .unwrap_or(false)
}

/// The contents of a key file.
#[derive(Serialize, Deserialize)]
struct KeyFileToml {
    format: String,
    source: String,
    key_id: String,
    created: String,
    secret: String,
    /// rotated secrets, oldest first (v2 only)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    epochs: Vec<String>,
}

/// A loaded key.
#[derive(Debug, Clone)]
pub struct KeyFile {
    /// Source (node) the key belongs to.
    pub source: String,
    /// The first secret (epoch 0): ids, chunker, key id.
    pub secret: Secret,
    /// Secrets added by `omesh key rotate`, oldest first (epochs 1...).
    pub epochs: Vec<Secret>,
    /// Creation time as written.
    pub created: String,
}

impl KeyFile {
    /// A new random key for `source`.
    pub fn generate(source: &str) -> Self {
        KeyFile {
            source: source.to_string(),
            secret: Secret::generate(),
            epochs: Vec::new(),
            created: crate::time::rfc3339(crate::time::now()),
        }
    }

    /// Public fingerprint (of the first secret: rotation keeps it).
    pub fn key_id(&self) -> String {
        self.secret.key_id()
    }

    /// The derived keys of every epoch.
    pub fn keys(&self) -> crate::crypto::Keys {
        crate::crypto::Keys::derive_epochs(&self.secret, &self.epochs)
    }

    /// Number of epochs (1 before any rotation).
    pub fn epoch_count(&self) -> usize {
        1 + self.epochs.len()
    }

    /// Add a new epoch (`omesh key rotate`): a fresh random secret that
    /// new objects are sealed under from now on. Returns the new epoch's
    /// number; refuses beyond [`crate::crypto::MAX_EPOCHS`].
    pub fn rotate(&mut self) -> Result<usize, String> {
        if self.epoch_count() >= crate::crypto::MAX_EPOCHS {
            return Err(format!(
                "the key of {} has {} epochs, the most a key may have; start a new key instead",
                self.source,
                self.epoch_count()
            ));
        }
        self.epochs.push(Secret::generate());
        Ok(self.epochs.len())
    }

    /// Serialize to the key file text.
    pub fn to_text(&self) -> String {
        let t = KeyFileToml {
            format: if self.epochs.is_empty() { FORMAT } else { FORMAT_EPOCHS }.into(),
            source: self.source.clone(),
            key_id: self.key_id(),
            created: self.created.clone(),
            secret: hex::encode(self.secret.expose()),
            epochs: self.epochs.iter().map(|e| hex::encode(e.expose())).collect(),
        };
        format!(
            "# omesh key for source {:?}. Anyone holding this file can read every snapshot\n\
             # of that source; without it, none can be restored. Keep a copy off this server.\n{}",
            self.source,
            toml::to_string(&t).expect("key file serializes")
        )
    }

    /// The key file text with the secret sealed under `passphrase`
    /// (Argon2id at `memory_kib`/`passes`, XChaCha20-Poly1305).
    pub fn to_sealed_text(&self, passphrase: &[u8], memory_kib: u32, passes: u32) -> Result<String, String> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
        getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
        let mut t = SealedToml {
            format: if self.epochs.is_empty() { SEALED_FORMAT } else { SEALED_FORMAT_EPOCHS }.into(),
            epochs: (!self.epochs.is_empty()).then_some(self.epochs.len() as u32),
            source: self.source.clone(),
            key_id: self.key_id(),
            created: self.created.clone(),
            kdf: "argon2id".into(),
            kdf_memory_kib: memory_kib,
            kdf_passes: passes,
            kdf_lanes: 1,
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            sealed: String::new(),
        };
        let k = stretch(passphrase, &salt, memory_kib, passes, 1)?;
        let c = chacha20poly1305::XChaCha20Poly1305::new((&*k).into());
        let aad = t.aad();
        let mut secrets = zeroize::Zeroizing::new(self.secret.expose().to_vec());
        for e in &self.epochs {
            secrets.extend_from_slice(e.expose());
        }
        let ct = c
            .encrypt((&nonce).into(), Payload { msg: &secrets, aad: &aad })
            .map_err(|_| "sealing failed".to_string())?;
        t.sealed = hex::encode(ct);
        Ok(format!(
            "# omesh key for source {:?}, sealed with a passphrase (Argon2id + XChaCha20-Poly1305).\n\
             # `omesh key import` asks for the passphrase. Without both, nothing can be restored.\n{}",
            self.source,
            toml::to_string(&t).expect("sealed key file serializes")
        ))
    }

    /// Open sealed key file text with `passphrase`; `path` is for messages.
    pub fn from_sealed_text(text: &str, path: &Path, passphrase: &[u8]) -> Result<Self, KeyFileError> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let perr = |reason: String| KeyFileError::Parse { path: path.to_path_buf(), reason };
        let t: SealedToml = toml::from_str(text).map_err(|e| perr(e.to_string()))?;
        let rotated = match (t.format.as_str(), t.epochs) {
            (SEALED_FORMAT, None) => 0,
            (SEALED_FORMAT_EPOCHS, Some(n)) if rotated_ok(n as usize) => n as usize,
            _ => {
                return Err(perr(format!(
                    "format {:?} with {:?} epochs is not {SEALED_FORMAT:?}, or {SEALED_FORMAT_EPOCHS:?} with 1 to {} \
                     epochs",
                    t.format,
                    t.epochs,
                    crate::crypto::MAX_EPOCHS - 1
                )));
            }
        };
        if t.kdf != "argon2id" {
            return Err(perr(format!("kdf {:?} is not argon2id", t.kdf)));
        }
        // bound before allocating: the file says how much memory to use
        if t.kdf_memory_kib > KDF_MEMORY_KIB_MAX || t.kdf_passes > KDF_PASSES_MAX || t.kdf_lanes != 1 {
            return Err(perr(format!(
                "its KDF asks for {} KiB, {} passes, {} lanes; this omesh opens at most {KDF_MEMORY_KIB_MAX} KiB, \
                 {KDF_PASSES_MAX} passes, 1 lane",
                t.kdf_memory_kib, t.kdf_passes, t.kdf_lanes
            )));
        }
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 24];
        hex::decode_to_slice(&t.salt, &mut salt).map_err(|_| perr("salt is not 32 hex digits".into()))?;
        hex::decode_to_slice(&t.nonce, &mut nonce).map_err(|_| perr("nonce is not 48 hex digits".into()))?;
        let ct = hex::decode(&t.sealed).map_err(|_| perr("sealed is not hex".into()))?;
        let want = SECRET_BYTES * (1 + rotated) + 16;
        if ct.len() != want {
            return Err(perr(format!("sealed holds {} bytes, expected {want}", ct.len())));
        }
        let k = stretch(passphrase, &salt, t.kdf_memory_kib, t.kdf_passes, 1).map_err(perr)?;
        let c = chacha20poly1305::XChaCha20Poly1305::new((&*k).into());
        let aad = t.aad();
        let pt = zeroize::Zeroizing::new(
            c.decrypt((&nonce).into(), Payload { msg: &ct, aad: &aad })
                .map_err(|_| KeyFileError::WrongPassphrase(path.to_path_buf()))?,
        );
        let mut secrets = pt.chunks_exact(SECRET_BYTES).map(|c| {
            let mut b = [0u8; SECRET_BYTES];
            b.copy_from_slice(c);
            Secret::from_bytes(b)
        });
        let secret = secrets.next().expect("at least one secret");
        let kf = KeyFile { source: t.source, secret, epochs: secrets.collect(), created: t.created };
        if kf.key_id() != t.key_id {
            return Err(perr("the opened secret does not match its key_id; the file is damaged".into()));
        }
        Ok(kf)
    }

    /// Parse key file text; `path` is for messages.
    pub fn from_text(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let perr = |reason: String| KeyFileError::Parse { path: path.to_path_buf(), reason };
        if is_sealed(text) {
            return Err(KeyFileError::NeedsPassphrase(path.to_path_buf()));
        }
        let t: KeyFileToml = toml::from_str(text).map_err(|e| perr(e.to_string()))?;
        match (t.format.as_str(), t.epochs.len()) {
            (FORMAT, 0) => {}
            (FORMAT_EPOCHS, n) if rotated_ok(n) => {}
            _ => {
                return Err(perr(format!(
                    "format is {:?} with {} rotated epochs; expected {FORMAT:?}, or {FORMAT_EPOCHS:?} with 1 to {} \
                     (a key file written by a newer omesh needs that omesh)",
                    t.format,
                    t.epochs.len(),
                    crate::crypto::MAX_EPOCHS - 1
                )));
            }
        }
        let secret = |h: &str, what: &str| {
            let mut b = [0u8; SECRET_BYTES];
            hex::decode_to_slice(h.trim(), &mut b).map_err(|_| perr(format!("{what} is not 64 hex digits")))?;
            Ok::<_, KeyFileError>(Secret::from_bytes(b))
        };
        let epochs = t
            .epochs
            .iter()
            .enumerate()
            .map(|(i, h)| secret(h, &format!("epoch {}", i + 1)))
            .collect::<Result<_, _>>()?;
        let k = KeyFile { source: t.source, secret: secret(&t.secret, "secret")?, epochs, created: t.created };
        if k.key_id() != t.key_id {
            return Err(perr(format!(
                "key_id {} does not match the secret (expected {}); the file is damaged",
                t.key_id,
                k.key_id()
            )));
        }
        Ok(k)
    }

    /// Load from a file, refusing group/other-accessible files.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let meta = fs::metadata(path).map_err(|source| KeyFileError::Read { path: path.into(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions { path: path.into(), mode });
        }
        let text = fs::read_to_string(path).map_err(|source| KeyFileError::Read { path: path.into(), source })?;
        Self::from_text(&text, path)
    }

    /// Write atomically with mode 0600; refuses to replace an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        if path.exists() {
            return Err(KeyFileError::Exists(path.into()));
        }
        self.replace(path)
    }

    /// Write atomically with mode 0600 over whatever is at `path` (a
    /// rotation, an upgrade to a newer export of the same key): written
    /// whole to a temporary file, synced, then renamed over it, so a crash
    /// leaves the old file or the new one, never a mix.
    pub fn replace(&self, path: &Path) -> Result<(), KeyFileError> {
        write_private_atomic(path, self.to_text().as_bytes())
            .map_err(|source| KeyFileError::Write { path: path.into(), source })
    }

    /// Whether `other` is this key at another point of its rotations: the
    /// same key id, and the epochs of the one with fewer are the first
    /// epochs of the other.
    pub fn same_lineage(&self, other: &KeyFile) -> bool {
        self.key_id() == other.key_id() && self.epochs.iter().zip(&other.epochs).all(|(a, b)| a.expose() == b.expose())
    }
}

/// Write `data` to `path` with mode 0600: temp file, fsync, rename, fsync dir.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, data, 0o600)
}

/// Write `data` to `path` with `mode` the same way (a reader sees the old
/// file or the new one, never a part, and the new one survives a crash).
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp =
        dir.join(format!(".{}.tmp-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("key"), std::process::id()));
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    let r = (|| {
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_key_file_keeps_every_epoch_in_plain_and_sealed_form() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        let mut k = KeyFile::generate("srv-a");
        assert!(k.to_text().contains("\"omesh-key-v1\""), "a key never rotated keeps the v1 format");
        let id = k.key_id();
        assert_eq!(k.rotate().unwrap(), 1);
        assert_eq!(k.rotate().unwrap(), 2);
        k.save(&p).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"omesh-key-v2\"") && text.contains("epochs"), "{text}");
        let l = KeyFile::load(&p).unwrap();
        assert_eq!((l.key_id(), l.epoch_count()), (id.clone(), 3));
        assert_eq!(l.epochs[1].expose(), k.epochs[1].expose());
        let sealed = k.to_sealed_text(b"correct horse", 64, 1).unwrap();
        assert!(sealed.contains("omesh-key-sealed-v2") && is_sealed(&sealed));
        let o = KeyFile::from_sealed_text(&sealed, &p, b"correct horse").unwrap();
        assert_eq!((o.key_id(), o.epoch_count()), (id, 3));
        assert_eq!(o.epochs[0].expose(), k.epochs[0].expose());
        // the epoch count is authenticated: altering it breaks the seal
        let altered = sealed.replace("epochs = 2", "epochs = 1");
        assert!(KeyFile::from_sealed_text(&altered, &p, b"correct horse").is_err());
        // a file claiming v2 without epochs is refused
        let bad = text.replace("omesh-key-v2", "omesh-key-v1");
        assert!(KeyFile::from_text(&bad, &p).is_err());
    }

    #[test]
    fn round_trip_and_permissions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        let k = KeyFile::generate("srv-a");
        k.save(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let l = KeyFile::load(&p).unwrap();
        assert_eq!(l.key_id(), k.key_id());
        assert_eq!(l.source, "srv-a");
        assert!(matches!(k.save(&p), Err(KeyFileError::Exists(_))));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(KeyFile::load(&p), Err(KeyFileError::Permissions { .. })));
        let text = k.to_text().replace(&k.key_id(), "00000000000000000000000000000000");
        assert!(matches!(KeyFile::from_text(&text, &p), Err(KeyFileError::Parse { .. })));
    }
}

#[cfg(test)]
mod sealed_tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_with_its_passphrase_only_and_refuses_alteration() {
        let k = KeyFile::generate("srv-a");
        let p = Path::new("k.sealed");
        // small cost: the parameters are under test, not the cost
        let text = k.to_sealed_text(b"correct horse", 1024, 1).unwrap();
        assert!(is_sealed(&text));
        assert!(!text.contains(&hex::encode(k.secret.expose())), "the secret is in the clear");
        let back = KeyFile::from_sealed_text(&text, p, b"correct horse").unwrap();
        assert_eq!(back.key_id(), k.key_id());
        assert_eq!(back.secret.expose(), k.secret.expose());
        assert!(matches!(KeyFile::from_sealed_text(&text, p, b"wrong"), Err(KeyFileError::WrongPassphrase(_))));
        assert!(matches!(KeyFile::from_text(&text, p), Err(KeyFileError::NeedsPassphrase(_))));
        // every bound field is authenticated
        for (from, to) in [("srv-a", "srv-b"), ("kdf_passes = 1", "kdf_passes = 2")] {
            let altered = text.replace(from, to);
            assert!(KeyFile::from_sealed_text(&altered, p, b"correct horse").is_err(), "{from} -> {to} opened");
        }
        // a hostile file cannot make import allocate without bound
        let greedy = text.replace("kdf_memory_kib = 1024", "kdf_memory_kib = 4000000000");
        let e = KeyFile::from_sealed_text(&greedy, p, b"correct horse").unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
    }
}
