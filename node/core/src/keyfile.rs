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
}

/// The contents of a key file.
#[derive(Serialize, Deserialize)]
struct KeyFileToml {
    format: String,
    source: String,
    key_id: String,
    created: String,
    secret: String,
}

/// A loaded key.
#[derive(Debug, Clone)]
pub struct KeyFile {
    /// Source (node) the key belongs to.
    pub source: String,
    /// The secret.
    pub secret: Secret,
    /// Creation time as written.
    pub created: String,
}

impl KeyFile {
    /// A new random key for `source`.
    pub fn generate(source: &str) -> Self {
        KeyFile {
            source: source.to_string(),
            secret: Secret::generate(),
            created: crate::time::rfc3339(crate::time::now()),
        }
    }

    /// Public fingerprint.
    pub fn key_id(&self) -> String {
        self.secret.key_id()
    }

    /// Serialize to the key file text.
    pub fn to_text(&self) -> String {
        let t = KeyFileToml {
            format: FORMAT.into(),
            source: self.source.clone(),
            key_id: self.key_id(),
            created: self.created.clone(),
            secret: hex::encode(self.secret.expose()),
        };
        format!(
            "# omesh key for source {:?}. Anyone holding this file can read every snapshot\n\
             # of that source; without it, none can be restored. Keep a copy off this server.\n{}",
            self.source,
            toml::to_string(&t).expect("key file serializes")
        )
    }

    /// Parse key file text; `path` is for messages.
    pub fn from_text(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let perr = |reason: String| KeyFileError::Parse { path: path.to_path_buf(), reason };
        let t: KeyFileToml = toml::from_str(text).map_err(|e| perr(e.to_string()))?;
        if t.format != FORMAT {
            return Err(perr(format!("format is {:?}, expected {FORMAT:?}", t.format)));
        }
        let mut b = [0u8; SECRET_BYTES];
        hex::decode_to_slice(t.secret.trim(), &mut b).map_err(|_| perr("secret is not 64 hex digits".into()))?;
        let k = KeyFile { source: t.source, secret: Secret::from_bytes(b), created: t.created };
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
        write_private_atomic(path, self.to_text().as_bytes())
            .map_err(|source| KeyFileError::Write { path: path.into(), source })
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
