//! Directory-relative file operations that never follow a symlink.
//!
//! Restore holds an open descriptor for every directory it writes into and
//! does everything relative to it with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`.
//! A symlink planted in the target (or restored earlier from the snapshot
//! itself) is replaced, never traversed, so no byte lands outside the target.
//! New files are created exclusively under a temporary name and renamed into
//! place only when complete.

use crate::snapshot::Node;
use rustix::fs::{AtFlags, Mode, OFlags, XattrFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// Directory open flags: never follow a final symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Open an existing directory entry as a directory, refusing symlinks.
pub fn open_dir_at(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// Make sure `name` in `dir` is a real directory we can write into, and open
/// it. A file or symlink in the way is removed; a directory is reused.
/// Returns whether the directory was created now (so it is empty).
pub fn ensure_dir_at(dir: impl AsFd + Copy, name: &OsStr) -> io::Result<(OwnedFd, bool)> {
    ensure_dir_inner(dir, name)
}

fn ensure_dir_inner(dir: impl AsFd + Copy, name: &OsStr) -> io::Result<(OwnedFd, bool)> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => return open_dir_at(dir, name).map(|f| (f, true)),
        Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    match open_dir_at(dir, name) {
        Ok(fd) => {
            // make sure we can write into an existing directory; its final
            // mode is applied when its contents are done
            let st = rustix::fs::fstat(&fd)?;
            if st.st_mode & 0o700 != 0o700 {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o700))?;
            }
            Ok((fd, false))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) || e.raw_os_error() == Some(libc::ELOOP) => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
            open_dir_at(dir, name).map(|f| (f, true))
        }
        Err(e) => Err(e),
    }
}

/// A fresh temporary name in a restore directory.
pub fn tmp_name() -> OsString {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("random source");
    OsString::from(format!(".omesh-restore-{}", hex::encode(r)))
}

/// Create a new file exclusively (never opening an existing one).
pub fn create_exclusive(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    create_exclusive_mode(dir, name, 0o600)
}

/// Create a new file exclusively with permission bits `mode` (subject to
/// the umask).
pub fn create_exclusive_mode(dir: impl AsFd, name: &OsStr, mode: u32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o777),
    )?)
}

/// The process umask (read from /proc, without changing it).
pub fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string())))
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022)
}

/// Open an existing regular file for reading, refusing symlinks; `None`
/// when there is nothing usable under that name.
pub fn open_existing_file(dir: impl AsFd, name: &OsStr) -> Option<(std::fs::File, rustix::fs::Stat)> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    Some((std::fs::File::from(fd), st))
}

/// Rename `tmp` over `name` in the same directory. A directory in the way is
/// an error (restore never deletes a directory tree).
pub fn replace_at(dir: impl AsFd + Copy, tmp: &OsStr, name: &OsStr) -> io::Result<()> {
    match rustix::fs::renameat(dir, tmp, dir, name) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
            if e == Errno::ISDIR || e == Errno::NOTEMPTY || e == Errno::EXIST {
                Err(io::Error::other("a directory is in the way; move it aside and restore again"))
            } else {
                Err(e.into())
            }
        }
    }
}

/// Remove a temporary file (error paths).
pub fn remove_tmp(dir: impl AsFd, tmp: &OsStr) {
    let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
}

/// Whether an existing file's metadata already is what `n` restores
/// (mode, owner when `chown`, modification time; no extended attributes to
/// set): then nothing needs to be applied to it at all.
pub fn meta_matches(st: &rustix::fs::Stat, n: &Node, chown: bool) -> bool {
    let mtime = st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64;
    st.st_mode & 0o7777 == n.mode & 0o7777
        && (!chown || (st.st_uid == n.uid && st.st_gid == n.gid))
        && mtime == n.mtime_ns
        && n.xattrs.is_empty()
}

/// Whether `a` in `da` and `b` in `db` are the same file (no symlink followed).
pub fn same_file(da: impl AsFd, a: &OsStr, db: impl AsFd, b: &OsStr) -> bool {
    let st = |d, n| rustix::fs::statat(d, n, AtFlags::SYMLINK_NOFOLLOW).ok();
    match (st(da.as_fd(), a), st(db.as_fd(), b)) {
        (Some(x), Some(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

fn ids(n: &Node) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (Some(rustix::fs::Uid::from_raw(n.uid)), Some(rustix::fs::Gid::from_raw(n.gid)))
}

fn times(n: &Node) -> rustix::fs::Timestamps {
    rustix::fs::Timestamps {
        last_access: crate::fsutil::timespec(n.atime_ns),
        last_modification: crate::fsutil::timespec(n.mtime_ns),
    }
}

/// Problems applying metadata that do not fail the file.
pub type MetaWarnings = Vec<String>;

/// Apply owner, mode, xattrs and times to an open file or directory.
/// Ownership is set only when `chown` (we run as root).
pub fn apply_meta_fd(fd: impl AsFd + Copy, n: &Node, chown: bool) -> io::Result<MetaWarnings> {
    apply_meta_known(fd, n, chown, None)
}

/// As [`apply_meta_fd`] for a file we just created with mode `created_mode`
/// as (euid, egid): skips the calls that would change nothing.
pub fn apply_meta_known(
    fd: impl AsFd + Copy,
    n: &Node,
    chown: bool,
    created: Option<(u32, u32, u32)>,
) -> io::Result<MetaWarnings> {
    let mut warn = Vec::new();
    let (owner_ok, mode_ok) = match created {
        Some((mode, uid, gid)) => (uid == n.uid && gid == n.gid, mode == n.mode & 0o7777),
        None => (false, false),
    };
    if chown && !owner_ok {
        let (u, g) = ids(n);
        rustix::fs::fchown(fd, u, g)?;
    }
    for (k, v) in &n.xattrs {
        if let Err(e) = rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, XattrFlags::empty()) {
            warn.push(format!("extended attribute {} not restored: {e}", String::from_utf8_lossy(k)));
        }
    }
    // after chown, which clears set-id bits
    if !(mode_ok && (owner_ok || !chown)) {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(n.mode & 0o7777))?;
    }
    rustix::fs::futimens(fd, &times(n))?;
    Ok(warn)
}

/// Apply metadata to a symlink by name: every call is a no-follow call
/// (`lchown`, `lsetxattr`, `utimensat` with `AT_SYMLINK_NOFOLLOW`), so
/// whatever has the name by then is changed itself, nothing it points to.
/// (Fifos and device nodes go through [`put_node`].)
pub fn apply_meta_at(dir: impl AsFd + Copy, name: &OsStr, n: &Node, chown: bool) -> io::Result<MetaWarnings> {
    let mut warn = Vec::new();
    if chown {
        let (u, g) = ids(n);
        rustix::fs::chownat(dir, name, u, g, AtFlags::SYMLINK_NOFOLLOW)?;
    }
    if !n.xattrs.is_empty() {
        // lsetxattr through the directory descriptor: /proc/self/fd/N is the
        // directory we hold, and the final name is not followed
        let p = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir.as_fd()));
        let mut path = p.into_bytes();
        path.extend_from_slice(name.as_bytes());
        let path = OsStr::from_bytes(&path);
        for (k, v) in &n.xattrs {
            if let Err(e) = rustix::fs::lsetxattr(path, OsStr::from_bytes(k), v, XattrFlags::empty()) {
                warn.push(format!("extended attribute {} not restored: {e}", String::from_utf8_lossy(k)));
            }
        }
    }
    rustix::fs::utimensat(dir, name, &times(n), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(warn)
}

/// Create a symlink atomically (temp name + rename over whatever is there,
/// unless it is a directory).
pub fn put_symlink(dir: impl AsFd + Copy, name: &OsStr, target: &[u8]) -> io::Result<()> {
    let tmp = tmp_name();
    rustix::fs::symlinkat(OsStr::from_bytes(target), dir, &tmp)?;
    replace_at(dir, &tmp, name)
}

/// Create a fifo or device node with its metadata, atomically: it is made
/// under a temporary name, its metadata is applied through a descriptor of
/// that very inode (never by name, so nothing swapped in is touched), and it
/// is renamed into place.
pub fn put_node(
    dir: impl AsFd + Copy,
    name: &OsStr,
    ft: rustix::fs::FileType,
    rdev: u64,
    n: &Node,
    chown: bool,
) -> io::Result<MetaWarnings> {
    let tmp = tmp_name();
    rustix::fs::mknodat(dir, &tmp, ft, Mode::from_raw_mode(0o600), rdev)?;
    crate::failpoint::hit("restore.special_created");
    let r = apply_meta_special(dir, &tmp, ft, n, chown);
    match r {
        Ok(w) => replace_at(dir, &tmp, name).map(|()| w),
        Err(e) => {
            let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
            Err(e)
        }
    }
}

/// Metadata of a fifo or device node we just created at `name`: opened
/// with `O_PATH | O_NOFOLLOW` (which opens no device and follows nothing),
/// checked to be the node we made (its type, one link, owned by us), then
/// changed through `/proc/self/fd`, which names that inode and nothing else.
fn apply_meta_special(
    dir: impl AsFd + Copy,
    name: &OsStr,
    ft: rustix::fs::FileType,
    n: &Node,
    chown: bool,
) -> io::Result<MetaWarnings> {
    let fd = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != ft
        || st.st_nlink != 1
        || st.st_uid != rustix::process::geteuid().as_raw()
    {
        return Err(io::Error::other(
            "the new node was replaced by something else before its metadata was applied; nothing of it was changed",
        ));
    }
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let mut warn = Vec::new();
    if chown {
        let (u, g) = ids(n);
        rustix::fs::chownat(&fd, "", u, g, AtFlags::EMPTY_PATH)?;
    }
    for (k, v) in &n.xattrs {
        if let Err(e) = rustix::fs::setxattr(path.as_str(), OsStr::from_bytes(k), v, XattrFlags::empty()) {
            warn.push(format!("extended attribute {} not restored: {e}", String::from_utf8_lossy(k)));
        }
    }
    // after chown, which clears set-id bits
    rustix::fs::chmod(path.as_str(), Mode::from_raw_mode(n.mode & 0o7777))?;
    rustix::fs::utimensat(rustix::fs::CWD, path.as_str(), &times(n), AtFlags::empty())?;
    Ok(warn)
}
