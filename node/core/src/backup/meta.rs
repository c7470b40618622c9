//! Reading file metadata into snapshot nodes: stat fields, owner names and
//! extended attributes (which carry POSIX ACLs and SELinux labels).

use crate::snapshot::{Node, NodeKind};
use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

/// Caches uid/gid → name lookups (each is an NSS call).
#[derive(Default)]
pub struct NameCache {
    users: Mutex<HashMap<u32, Option<String>>>,
    groups: Mutex<HashMap<u32, Option<String>>>,
}

impl NameCache {
    /// User name of `uid`.
    pub fn user(&self, uid: u32) -> Option<String> {
        self.users
            .lock()
            .expect("names lock")
            .entry(uid)
            .or_insert_with(|| nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name))
            .clone()
    }
    /// Group name of `gid`.
    pub fn group(&self, gid: u32) -> Option<String> {
        self.groups
            .lock()
            .expect("names lock")
            .entry(gid)
            .or_insert_with(|| nix::unistd::Group::from_gid(gid.into()).ok().flatten().map(|g| g.name))
            .clone()
    }
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Build a node from `lstat` metadata; the kind-specific part is filled in
/// by the caller for files and directories.
pub fn node_from_meta(name: &[u8], m: &Metadata, kind: NodeKind, names: &NameCache) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        user: names.user(m.uid()),
        group: names.group(m.gid()),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        atime_ns: ns(m.atime(), m.atime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        inode: m.ino(),
        dev: m.dev(),
        nlink: m.nlink(),
        xattrs: Vec::new(),
        warning: None,
        unreadable: false,
    }
}

/// Kind for non-file, non-directory entries. `None` for regular files and
/// directories.
pub fn special_kind(path: &Path, m: &Metadata) -> std::io::Result<Option<NodeKind>> {
    let ft = m.file_type();
    Ok(Some(if ft.is_symlink() {
        NodeKind::Symlink { target: std::fs::read_link(path)?.as_os_str().as_bytes().to_vec() }
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::CharDev { rdev: m.rdev() }
    } else if ft.is_block_device() {
        NodeKind::BlockDev { rdev: m.rdev() }
    } else if ft.is_socket() {
        NodeKind::Socket
    } else {
        return Ok(None);
    }))
}

/// Extended attributes of `path` (not following symlinks), sorted by name.
/// Filesystems without xattr support yield an empty list.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use rustix::io::Errno;
    let mut names = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let need: usize = rustix::fs::llistxattr(path, &mut [0u8; 0][..]).map_err(std::io::Error::from)?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(Errno::NOTSUP) | Err(Errno::PERM) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cname = std::ffi::OsStr::from_bytes(name);
        let mut val = vec![0u8; 256];
        let got = loop {
            match rustix::fs::lgetxattr(path, cname, &mut val[..]) {
                Ok(n) => break Some(n),
                Err(Errno::RANGE) => {
                    let need: usize =
                        rustix::fs::lgetxattr(path, cname, &mut [0u8; 0][..]).map_err(std::io::Error::from)?;
                    val.resize(need.max(val.len() * 2), 0);
                }
                // vanished between list and get
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(n) = got {
            val.truncate(n);
            out.push((name.to_vec(), val));
        }
    }
    out.sort();
    Ok(out)
}
