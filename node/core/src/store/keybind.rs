//! The one data key a replica store's snapshots are under (`bound-key` in
//! the store's directory): the first key id its source names is recorded,
//! another is refused until an administrator accepts it. Written like every
//! small store file (`atomic`): never visible half-written, and the first
//! binding never replaces one (of two racing first pushes, one binds and
//! the other is compared with it).

use super::atomic::{write_atomic, write_new_at};
use super::error::{Result, StoreError};
use std::path::Path;

/// Name of the key-binding file in a store's directory.
pub const BOUND_KEY_FILE: &str = "bound-key";

/// Outcome of [`bind_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyBinding {
    /// Recorded now.
    New,
    /// Already bound to that key.
    Same,
    /// Bound to this other key id: refused.
    Other(String),
}

/// The key id the store at `dir` is bound to, if any. Read on every call
/// (`omesh key accept` changes it beside a running daemon) and checked like
/// anything read from disk.
pub fn bound_key(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(BOUND_KEY_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { op: "reading", path, source }),
    };
    let id = std::str::from_utf8(&text).unwrap_or("").trim();
    if !omesh_proto::msg::valid_key_id(id) {
        return Err(StoreError::Config {
            path,
            reason: "expected one key id (hex digits); accept the source's key again with `omesh key accept`".into(),
        });
    }
    Ok(Some(id.to_string()))
}

/// Bind the store at `dir` to `key_id`: recorded when it has no binding,
/// compared when it has one; `accept` (an administrator's `omesh key
/// accept`) replaces it. The file gets the directory's owner (a root CLI
/// writing into the daemon user's store).
pub fn bind_key(dir: &Path, key_id: &str, accept: bool) -> Result<KeyBinding> {
    let compare = |b: Option<String>| match b {
        Some(b) if b == key_id => Ok(KeyBinding::Same),
        Some(b) => Ok(KeyBinding::Other(b)),
        None => Err(StoreError::Config { path: dir.join(BOUND_KEY_FILE), reason: "vanished while binding".into() }),
    };
    let data = format!("{key_id}\n");
    let tmp = dir.join("tmp");
    if accept {
        write_atomic(dir, &tmp, BOUND_KEY_FILE, data.as_bytes())?;
    } else {
        if let Some(b) = bound_key(dir)? {
            return compare(Some(b));
        }
        if !write_new_at(dir, &tmp, BOUND_KEY_FILE, data.as_bytes(), None)? {
            return compare(bound_key(dir)?);
        }
    }
    let path = dir.join(BOUND_KEY_FILE);
    crate::fsutil::own_like_parent(&path).map_err(StoreError::io("changing the owner of", &path))?;
    Ok(KeyBinding::New)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_key_binds_another_is_refused_until_accepted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tmp")).unwrap();
        assert_eq!(bound_key(d.path()).unwrap(), None);
        assert_eq!(bind_key(d.path(), "aa", false).unwrap(), KeyBinding::New);
        assert_eq!(bind_key(d.path(), "aa", false).unwrap(), KeyBinding::Same);
        assert_eq!(bind_key(d.path(), "bb", false).unwrap(), KeyBinding::Other("aa".into()));
        assert_eq!(bind_key(d.path(), "bb", true).unwrap(), KeyBinding::New);
        assert_eq!(bound_key(d.path()).unwrap().as_deref(), Some("bb"));
        std::fs::write(d.path().join(BOUND_KEY_FILE), "not hex\n").unwrap();
        let e = bound_key(d.path()).unwrap_err().to_string();
        assert!(e.contains(BOUND_KEY_FILE) && e.contains("omesh key accept"), "{e}");
    }
}
