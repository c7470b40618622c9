//! The read-only FUSE file system of `omesh mount` (fuser): snapshots as
//! directories, every read fetching (and verifying, through
//! [`ObjectSource`]) only the chunks it covers, with a bounded chunk cache.
//!
//! Inodes are given out as directories are listed: 1 is the root; with
//! `--all` the root holds one directory per snapshot (`TIME_SHORTID`) and a
//! `latest` symlink. Hard links of one snapshot share an inode. Nothing is
//! ever written: every write request is refused by the kernel (`ro`).

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEntry, ReplyXattr, Request,
};
use omesh_core::objects::{self, ObjectSource};
use omesh_core::snapshot::{Extent, Node, NodeKind, SnapshotRecord};
use omesh_proto::{ObjectId, ObjectKind};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache what it was told (nothing changes).
const TTL: Duration = Duration::from_secs(3600);

/// A directory's entries: (name, inode), in name order.
type Children = Arc<Vec<(Vec<u8>, u64)>>;

enum What {
    /// The root of `--all`: the snapshots.
    Snapshots,
    /// The root directory of a snapshot (its tree).
    SnapshotRoot { tree: ObjectId, time_ns: i64 },
    /// An entry of a snapshot.
    Entry(Box<Node>),
    /// The `latest` link of `--all`.
    Latest(Vec<u8>),
}

struct Inode {
    what: What,
    parent: u64,
    /// (name, inode) once listed
    children: Option<Children>,
    /// a file's extents with their offsets, once read
    extents: Option<Arc<Vec<(u64, Extent)>>>,
    /// which snapshot (for hard links)
    snap: usize,
}

struct State {
    inodes: Vec<Inode>,
    /// (snapshot, dev, inode at backup time) → inode, for hard links
    links: HashMap<(usize, u64, u64), u64>,
    /// chunk cache: id → bytes, oldest first for eviction
    cache: HashMap<ObjectId, Arc<Vec<u8>>>,
    order: VecDeque<ObjectId>,
    cached_bytes: usize,
}

/// The file system.
pub struct SnapshotFs {
    src: Arc<dyn ObjectSource + Send + Sync>,
    state: Mutex<State>,
    cache_limit: usize,
    uid: u32,
    gid: u32,
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// A name for a snapshot's directory under `--all`.
pub fn snapshot_dir_name(id: &ObjectId, r: &SnapshotRecord) -> String {
    let t = omesh_core::time::rfc3339_ns(r.start_ns);
    // 2026-12-03T12:55:20.052560319+00:00 → 2026-12-03T12:55:20Z
    let t = t.get(..19).unwrap_or(&t).to_string();
    format!("{t}Z_{}", id.short())
}

impl SnapshotFs {
    /// One snapshot at the root.
    pub fn one(src: Arc<dyn ObjectSource + Send + Sync>, rec: &SnapshotRecord, cache_limit: usize) -> Self {
        let root = Inode {
            what: What::SnapshotRoot { tree: rec.tree, time_ns: rec.start_ns },
            parent: 1,
            children: None,
            extents: None,
            snap: 0,
        };
        Self::with_root(src, root, Vec::new(), cache_limit)
    }

    /// Every snapshot of `snaps` (oldest first) under the root, and `latest`.
    pub fn all(
        src: Arc<dyn ObjectSource + Send + Sync>,
        snaps: &[(ObjectId, SnapshotRecord)],
        cache_limit: usize,
    ) -> Self {
        let root = Inode { what: What::Snapshots, parent: 1, children: None, extents: None, snap: 0 };
        let mut more = Vec::new();
        let mut children = Vec::new();
        for (i, (id, r)) in snaps.iter().enumerate() {
            let name = snapshot_dir_name(id, r);
            more.push(Inode {
                what: What::SnapshotRoot { tree: r.tree, time_ns: r.start_ns },
                parent: 1,
                children: None,
                extents: None,
                snap: i,
            });
            children.push((name.into_bytes(), 2 + i as u64));
        }
        if let Some((id, r)) = snaps.last() {
            more.push(Inode {
                what: What::Latest(snapshot_dir_name(id, r).into_bytes()),
                parent: 1,
                children: None,
                extents: None,
                snap: 0,
            });
            children.push((b"latest".to_vec(), 2 + snaps.len() as u64));
        }
        let mut fs = Self::with_root(src, root, more, cache_limit);
        fs.state.get_mut().expect("fresh").inodes[1].children = Some(Arc::new(children));
        fs
    }

    fn with_root(src: Arc<dyn ObjectSource + Send + Sync>, root: Inode, more: Vec<Inode>, cache_limit: usize) -> Self {
        // inode 0 is unused; 1 is the root
        let unused = Inode { what: What::Snapshots, parent: 0, children: None, extents: None, snap: 0 };
        let mut inodes = vec![unused, root];
        inodes.extend(more);
        SnapshotFs {
            src,
            state: Mutex::new(State {
                inodes,
                links: HashMap::new(),
                cache: HashMap::new(),
                order: VecDeque::new(),
                cached_bytes: 0,
            }),
            cache_limit,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    fn attr(&self, ino: u64, i: &Inode) -> FileAttr {
        let base = |kind, perm: u16, size: u64, t: SystemTime| FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        match &i.what {
            What::Snapshots => base(FileType::Directory, 0o555, 0, UNIX_EPOCH),
            What::SnapshotRoot { time_ns, .. } => base(FileType::Directory, 0o555, 0, time(*time_ns)),
            What::Latest(t) => base(FileType::Symlink, 0o777, t.len() as u64, UNIX_EPOCH),
            What::Entry(n) => {
                let (kind, size, rdev) = match &n.kind {
                    NodeKind::File { size, .. } => (FileType::RegularFile, *size, 0),
                    NodeKind::Dir { .. } => (FileType::Directory, 0, 0),
                    NodeKind::Symlink { target } => (FileType::Symlink, target.len() as u64, 0),
                    NodeKind::Fifo => (FileType::NamedPipe, 0, 0),
                    NodeKind::CharDev { rdev } => (FileType::CharDevice, 0, *rdev),
                    NodeKind::BlockDev { rdev } => (FileType::BlockDevice, 0, *rdev),
                    NodeKind::Socket => (FileType::Socket, 0, 0),
                };
                // the kernel's 32-bit device encoding
                let (major, minor) = (libc::major(rdev), libc::minor(rdev));
                let rdev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                let stored: u64 = match (&n.kind, &i.extents) {
                    (NodeKind::File { .. }, Some(e)) => {
                        e.iter().map(|(_, x)| if let Extent::Data { len, .. } = x { *len as u64 } else { 0 }).sum()
                    }
                    _ => size,
                };
                FileAttr {
                    ino: INodeNo(ino),
                    size,
                    blocks: stored.div_ceil(512),
                    atime: time(n.atime_ns),
                    mtime: time(n.mtime_ns),
                    ctime: time(n.ctime_ns),
                    crtime: time(n.mtime_ns),
                    kind,
                    perm: (n.mode & 0o7777) as u16,
                    nlink: if matches!(n.kind, NodeKind::File { .. }) {
                        n.nlink.clamp(1, u32::MAX as u64) as u32
                    } else {
                        1
                    },
                    uid: n.uid,
                    gid: n.gid,
                    rdev,
                    blksize: 4096,
                    flags: 0,
                }
            }
        }
    }

    /// The tree a directory inode lists, if it is one.
    fn tree_of(i: &Inode) -> Option<ObjectId> {
        match &i.what {
            What::SnapshotRoot { tree, .. } => Some(*tree),
            What::Entry(n) => match &n.kind {
                NodeKind::Dir { tree } => Some(*tree),
                _ => None,
            },
            _ => None,
        }
    }

    /// The children of directory `ino`, listing it on first use.
    fn children(&self, ino: u64) -> Result<Children, Errno> {
        let tree = {
            let st = self.state.lock().expect("fs state");
            let i = st.inodes.get(ino as usize).ok_or(Errno::ENOENT)?;
            if let Some(c) = &i.children {
                return Ok(c.clone());
            }
            Self::tree_of(i).ok_or(Errno::ENOTDIR)?
        };
        // fetched without the lock: a slow peer must not stall other requests
        let nodes = objects::load_dir(self.src.as_ref(), &tree).map_err(|e| {
            tracing::warn!(error = %e, "a directory of the mounted snapshot could not be read");
            Errno::EIO
        })?;
        let mut st = self.state.lock().expect("fs state");
        if let Some(c) = &st.inodes[ino as usize].children {
            return Ok(c.clone());
        }
        let snap = st.inodes[ino as usize].snap;
        let mut list = Vec::with_capacity(nodes.len());
        for n in nodes {
            let key = (snap, n.dev, n.inode);
            let linked = matches!(n.kind, NodeKind::File { .. }) && n.nlink > 1;
            if linked && let Some(&existing) = st.links.get(&key) {
                list.push((n.name.clone(), existing));
                continue;
            }
            let new = st.inodes.len() as u64;
            let name = n.name.clone();
            st.inodes.push(Inode { what: What::Entry(Box::new(n)), parent: ino, children: None, extents: None, snap });
            if linked {
                st.links.insert(key, new);
            }
            list.push((name, new));
        }
        let list = Arc::new(list);
        st.inodes[ino as usize].children = Some(list.clone());
        Ok(list)
    }

    fn extents(&self, ino: u64) -> Result<Arc<Vec<(u64, Extent)>>, Errno> {
        let (content, size) = {
            let st = self.state.lock().expect("fs state");
            let i = st.inodes.get(ino as usize).ok_or(Errno::ENOENT)?;
            if let Some(e) = &i.extents {
                return Ok(e.clone());
            }
            match &i.what {
                What::Entry(n) => match &n.kind {
                    NodeKind::File { size, content } if !n.unreadable => (content.clone(), *size),
                    NodeKind::File { .. } => return Err(Errno::EIO),
                    _ => return Err(Errno::EISDIR),
                },
                _ => return Err(Errno::EISDIR),
            }
        };
        let ext = objects::load_extents(self.src.as_ref(), &content, size).map_err(|e| {
            tracing::warn!(error = %e, "a file's content list could not be read");
            Errno::EIO
        })?;
        let mut at = 0u64;
        let with_offsets: Vec<(u64, Extent)> = ext
            .into_iter()
            .map(|e| {
                let o = at;
                at += e.len();
                (o, e)
            })
            .collect();
        let e = Arc::new(with_offsets);
        self.state.lock().expect("fs state").inodes[ino as usize].extents = Some(e.clone());
        Ok(e)
    }

    fn blob(&self, id: &ObjectId, len: u32) -> Result<Arc<Vec<u8>>, Errno> {
        if let Some(b) = self.state.lock().expect("fs state").cache.get(id) {
            return Ok(b.clone());
        }
        let b = self.src.get(id, ObjectKind::Blob).map_err(|e| {
            tracing::warn!(error = %e, "a chunk of a mounted file could not be read");
            Errno::EIO
        })?;
        if b.len() != len as usize {
            return Err(Errno::EIO);
        }
        let b = Arc::new(b);
        let mut st = self.state.lock().expect("fs state");
        if st.cache.insert(*id, b.clone()).is_none() {
            st.order.push_back(*id);
            st.cached_bytes += b.len();
        }
        while st.cached_bytes > self.cache_limit {
            let Some(old) = st.order.pop_front() else { break };
            if let Some(x) = st.cache.remove(&old) {
                st.cached_bytes -= x.len();
            }
        }
        Ok(b)
    }

    fn xattrs(&self, ino: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let st = self.state.lock().expect("fs state");
        match st.inodes.get(ino as usize).map(|i| &i.what) {
            Some(What::Entry(n)) => n.xattrs.clone(),
            _ => Vec::new(),
        }
    }
}

fn kind_of(i: &Inode) -> FileType {
    match &i.what {
        What::Snapshots | What::SnapshotRoot { .. } => FileType::Directory,
        What::Latest(_) => FileType::Symlink,
        What::Entry(n) => match n.kind {
            NodeKind::File { .. } => FileType::RegularFile,
            NodeKind::Dir { .. } => FileType::Directory,
            NodeKind::Symlink { .. } => FileType::Symlink,
            NodeKind::Fifo => FileType::NamedPipe,
            NodeKind::CharDev { .. } => FileType::CharDevice,
            NodeKind::BlockDev { .. } => FileType::BlockDevice,
            NodeKind::Socket => FileType::Socket,
        },
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let children = match self.children(parent.0) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        let Some((_, ino)) = children.iter().find(|(n, _)| n.as_slice() == name.as_bytes()) else {
            return reply.error(Errno::ENOENT);
        };
        let st = self.state.lock().expect("fs state");
        let attr = self.attr(*ino, &st.inodes[*ino as usize]);
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.state.lock().expect("fs state");
        match st.inodes.get(ino.0 as usize) {
            Some(i) if ino.0 >= 1 => reply.attr(&TTL, &self.attr(ino.0, i)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let st = self.state.lock().expect("fs state");
        match st.inodes.get(ino.0 as usize).map(|i| &i.what) {
            Some(What::Latest(t)) => reply.data(t),
            Some(What::Entry(n)) => match &n.kind {
                NodeKind::Symlink { target } => reply.data(target),
                _ => reply.error(Errno::EINVAL),
            },
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let ext = match self.extents(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let total: u64 = ext.last().map(|(o, e)| o + e.len()).unwrap_or(0);
        let end = offset.saturating_add(size as u64).min(total);
        if offset >= end {
            return reply.data(&[]);
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        // the first extent that reaches past offset
        let mut i = ext.partition_point(|(o, e)| o + e.len() <= offset);
        while i < ext.len() && (out.len() as u64) < end - offset {
            let (start, e) = &ext[i];
            let from = (offset + out.len() as u64).saturating_sub(*start);
            let upto = (end - start).min(e.len());
            match e {
                Extent::Hole { .. } => out.resize(out.len() + (upto - from) as usize, 0),
                Extent::Data { id, len } => match self.blob(id, *len) {
                    Ok(b) => out.extend_from_slice(&b[from as usize..upto as usize]),
                    Err(e) => return reply.error(e),
                },
            }
            i += 1;
        }
        reply.data(&out);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let children = match self.children(ino.0) {
            Ok(c) => c,
            Err(e) => return reply.error(e),
        };
        let parent = self.state.lock().expect("fs state").inodes[ino.0 as usize].parent;
        let mut all: Vec<(u64, FileType, &[u8])> =
            vec![(ino.0, FileType::Directory, b"."), (parent, FileType::Directory, b"..")];
        let st = self.state.lock().expect("fs state");
        for (name, c) in children.iter() {
            all.push((*c, kind_of(&st.inodes[*c as usize]), name));
        }
        for (k, (i, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), k as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        // nothing is ever written: nothing to flush
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino.0).into_iter().find(|(k, _)| k.as_slice() == name.as_bytes()) {
            Some((_, v)) => reply_xattr(reply, size, &v),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut names = Vec::new();
        for (k, _) in self.xattrs(ino.0) {
            names.extend_from_slice(&k);
            names.push(0);
        }
        reply_xattr(reply, size, &names);
    }
}
