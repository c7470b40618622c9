//! Durable small-file writes: temporary name under `tmp/`, fsync, rename,
//! fsync of the directory. Every file a store creates outside packs goes
//! through here, so none is ever visible half-written.

use super::error::{Result, StoreError};
use super::pack::sync_dir;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Write a small file durably: temp, fsync, rename, fsync directory.
pub fn write_atomic(dir: &Path, tmp_dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    write_durable(dir, tmp_dir, name, data, None, true).map(|_| ())
}

/// Write a new small file durably, with a given modification time, never
/// replacing one of that name: the temporary file is hard-linked into place
/// (which fails when the name exists) instead of renamed. Returns whether
/// it was written (false: the name existed, nothing changed).
pub(super) fn write_new_at(
    dir: &Path,
    tmp_dir: &Path,
    name: &str,
    data: &[u8],
    mtime: Option<std::time::SystemTime>,
) -> Result<bool> {
    write_durable(dir, tmp_dir, name, data, mtime, false)
}

fn write_durable(
    dir: &Path,
    tmp_dir: &Path,
    name: &str,
    data: &[u8],
    mtime: Option<std::time::SystemTime>,
    replace: bool,
) -> Result<bool> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).expect("random source");
    let tmp = tmp_dir.join(format!("{name}.{}.tmp", hex::encode(rnd)));
    let dest = dir.join(name);
    let r = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        if let Some(t) = mtime {
            f.set_modified(t)?;
        }
        f.sync_all()?;
        Ok::<_, std::io::Error>(())
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io { op: "writing", path: tmp, source: e });
    }
    if replace {
        fs::rename(&tmp, &dest).map_err(StoreError::io("renaming into", &dest))?;
    } else {
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(StoreError::Io { op: "linking into", path: dest, source: e }),
        }
    }
    sync_dir(dir).map_err(StoreError::io("syncing", dir))?;
    Ok(true)
}
