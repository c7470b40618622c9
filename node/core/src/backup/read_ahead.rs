//! Metadata read-ahead: a thread that walks the tree a little ahead of the
//! walker, only statting, so a cold cache turns the walker's waits into
//! cache hits; it stops by itself when lookups run at cache speed.

use super::pipeline::*;
use std::fs::{self};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Walk the tree the walker is about to walk, in about the same order,
/// reading directories and inodes into the kernel's caches (and nothing
/// else: results are dropped). It follows the walker's rules (excludes, one
/// file system, the store's own directory) so it reads nothing the backup
/// would not, and stops as soon as the walker is done.
/// Walk the tree the walker is about to walk, in about the same order,
/// reading directories and inodes into the kernel's caches (and nothing
/// else: results are dropped). It follows the walker's rules (excludes, one
/// file system, the store's own directory) so it reads nothing the backup
/// would not, and stops as soon as the walker is done.
pub(super) fn read_ahead(ctx: &Ctx<'_>, roots: &[PathBuf], done: &AtomicBool) {
    // from the cache, a lookup (with its share of the directory read) takes
    // 2-3 µs; from disk, over 10 µs on average. When a stretch of lookups
    // runs at cache speed, reading ahead only costs CPU: stop.
    const WINDOW: u64 = 1024;
    const WARM: std::time::Duration = std::time::Duration::from_millis(5);
    let mut looked = 0u64;
    let mut window = Instant::now();
    for root in roots {
        let Ok(m) = fs::symlink_metadata(root) else { continue };
        if !m.is_dir() {
            continue;
        }
        let root_dev = m.dev();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            let mut names: Vec<std::ffi::OsString> = rd.flatten().map(|e| e.file_name()).collect();
            names.sort();
            let mut subdirs = Vec::new();
            for name in names {
                if done.load(Ordering::Relaxed) || ctx.failed() {
                    return;
                }
                let path = dir.join(&name);
                if ctx.excludes.is_excluded(&path, name.as_bytes()) {
                    continue;
                }
                let Ok(m) = fs::symlink_metadata(&path) else { continue };
                looked += 1;
                if looked.is_multiple_of(WINDOW) {
                    if window.elapsed() < WARM {
                        tracing::debug!(looked, "metadata is cached; read-ahead stops");
                        return;
                    }
                    window = Instant::now();
                }
                if m.is_dir()
                    && !(ctx.one_fs && m.dev() != root_dev)
                    && ctx.skip_dir != Some((m.dev(), m.ino()))
                    && ctx.excludes.excluded_dir(&path).is_none()
                {
                    subdirs.push(path);
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
    }
}
