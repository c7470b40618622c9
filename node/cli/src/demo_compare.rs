//! Tree comparison used by the demo to prove a restore is identical.

use std::path::Path;

/// Compare two trees: names, types, file bytes, symlink targets.
pub fn dirs_equal(a: &Path, b: &Path) -> std::io::Result<bool> {
    let ma = std::fs::symlink_metadata(a)?;
    let mb = match std::fs::symlink_metadata(b) {
        Ok(m) => m,
        Err(_) => return Ok(false),
    };
    if ma.file_type() != mb.file_type() {
        return Ok(false);
    }
    if ma.is_dir() {
        let mut na: Vec<_> = std::fs::read_dir(a)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        let mut nb: Vec<_> = std::fs::read_dir(b)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        na.sort();
        nb.sort();
        if na != nb {
            return Ok(false);
        }
        for n in na {
            if !dirs_equal(&a.join(&n), &b.join(&n))? {
                return Ok(false);
            }
        }
        Ok(true)
    } else if ma.file_type().is_symlink() {
        Ok(std::fs::read_link(a)? == std::fs::read_link(b)?)
    } else if ma.is_file() {
        Ok(ma.len() == mb.len() && std::fs::read(a)? == std::fs::read(b)?)
    } else {
        Ok(true)
    }
}
