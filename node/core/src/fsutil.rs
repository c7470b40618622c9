//! Small file-system helpers shared by backup and restore.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;

/// Whether a file is likely sparse (allocated less than its size).
pub fn sparse_hint(m: &Metadata) -> bool {
    m.file_type().is_file() && m.blocks().saturating_mul(512) < m.size()
}

/// Data ranges `(offset, len)` of a file, skipping holes with
/// SEEK_DATA/SEEK_HOLE when `sparse`; the whole file otherwise or when the
/// file system cannot tell.
pub fn data_ranges(f: &File, size: u64, sparse: bool) -> std::io::Result<Vec<(u64, u64)>> {
    if !sparse {
        return Ok(if size > 0 { vec![(0, size)] } else { vec![] });
    }
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOTSUP) => {
                return Ok(vec![(0, size)]);
            }
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(data))?.min(size);
        out.push((data, hole - data));
        pos = hole;
    }
    Ok(out)
}

/// Nanoseconds since the epoch → rustix timespec.
pub fn timespec(ns: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) as _ }
}

/// Give `path` the owner and group of its directory when this process runs
/// as root and they differ: a file a root CLI writes into a data directory
/// that a daemon running as another user manages must stay manageable by
/// that daemon. A no-op for any other user (who can only create files it
/// owns) and when they already match.
pub fn own_like_parent(path: &std::path::Path) -> std::io::Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let Some(dir) = path.parent() else { return Ok(()) };
    let d = std::fs::metadata(if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir })?;
    let m = std::fs::symlink_metadata(path)?;
    if (m.uid(), m.gid()) != (d.uid(), d.gid()) {
        std::os::unix::fs::lchown(path, Some(d.uid()), Some(d.gid()))?;
    }
    Ok(())
}
