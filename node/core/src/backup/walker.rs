//! The walker: visits the tree in order, stats every entry, decides what
//! is unchanged since the parent snapshot, and hands files to the readers
//! and finished directories (post-order) to the finisher.

use super::meta::{self};
use super::options::{BackupError, Res};
use super::pipeline::*;
use crate::snapshot::{Content, Extent, Node, NodeKind};
use crossbeam_channel::Sender;
use omesh_proto::ObjectId;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

pub(super) struct Walker<'c, 's> {
    pub(super) ctx: &'c Ctx<'s>,
    pub(super) file_tx: Sender<FileJob>,
    pub(super) dir_tx: Sender<PendingDir>,
    pub(super) hardlinks: HashMap<(u64, u64), FileSlot>,
}

/// Node of the virtual tree that joins several roots under `/`.
#[derive(Default)]
pub(super) struct VDir {
    children: BTreeMap<Vec<u8>, VEntry>,
}
pub(super) enum VEntry {
    Dir(VDir),
    Root(PathBuf),
}

impl Walker<'_, '_> {
    fn emit(&self, d: PendingDir) -> Res<()> {
        self.dir_tx.send(d).map_err(|_| BackupError::Internal("tree builder stopped".into()))
    }

    pub(super) fn virtual_root(&mut self, roots: &[PathBuf], parent: Option<&[Node]>, slot: DirSlot) -> Res<()> {
        let mut top = VDir::default();
        for r in roots {
            let comps: Vec<&[u8]> = r.iter().skip(1).map(|c| c.as_bytes()).collect();
            if comps.is_empty() {
                // backing up "/" itself: its children are the roots
                let m = fs::symlink_metadata(r)
                    .map_err(|e| BackupError::Path { path: r.clone(), reason: e.to_string() })?;
                let dev = m.dev();
                return self.walk_dir(r, &m, parent, slot, dev);
            }
            let mut cur = &mut top;
            for (i, c) in comps.iter().enumerate() {
                if i + 1 == comps.len() {
                    cur.children.insert(c.to_vec(), VEntry::Root(r.clone()));
                } else {
                    let e = cur.children.entry(c.to_vec()).or_insert_with(|| VEntry::Dir(VDir::default()));
                    cur = match e {
                        VEntry::Dir(d) => d,
                        VEntry::Root(_) => unreachable!("roots inside roots were removed"),
                    };
                }
            }
        }
        self.walk_virtual(Path::new("/"), &top, parent, slot)
    }

    fn walk_virtual(&mut self, path: &Path, v: &VDir, parent: Option<&[Node]>, slot: DirSlot) -> Res<()> {
        let mut nodes = Vec::new();
        for (name, entry) in &v.children {
            let child_path = path.join(std::ffi::OsStr::from_bytes(name));
            let pnode = parent.and_then(|p| find_node(p, name));
            match entry {
                VEntry::Dir(sub) => {
                    let m = fs::symlink_metadata(&child_path)
                        .map_err(|e| BackupError::Path { path: child_path.clone(), reason: e.to_string() })?;
                    let sub_parent = self.parent_subdir(pnode);
                    let s = Slot::new();
                    self.walk_virtual(&child_path, sub, sub_parent.as_deref(), s.clone())?;
                    let mut node =
                        meta::node_from_meta(name, &m, NodeKind::Dir { tree: ObjectId::ZERO }, &self.ctx.names);
                    node.xattrs = meta::read_xattrs(&child_path).unwrap_or_default();
                    self.ctx.counts.lock().expect("counts").dirs += 1;
                    nodes.push(PendingNode { node, wait: Wait::Dir(s) });
                }
                VEntry::Root(p) => {
                    let m = fs::symlink_metadata(p)
                        .map_err(|e| BackupError::Path { path: p.clone(), reason: e.to_string() })?;
                    let dev = m.dev();
                    if let Some(n) = self.entry(p, name, m, pnode, dev)? {
                        nodes.push(n);
                    }
                }
            }
        }
        self.emit(PendingDir { nodes, slot })
    }

    fn parent_subdir(&self, pnode: Option<&Node>) -> Option<Vec<Node>> {
        match pnode.map(|n| &n.kind) {
            Some(NodeKind::Dir { tree }) => match self.ctx.store.load_dir(tree) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(error = %e, "parent snapshot tree unreadable; reading files in full");
                    None
                }
            },
            _ => None,
        }
    }

    pub(super) fn image_root(&mut self, img: &Path, slot: DirSlot) -> Res<()> {
        let m = fs::metadata(img).map_err(|e| BackupError::Path { path: img.into(), reason: e.to_string() })?;
        let ft = m.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(BackupError::Path {
                path: img.into(),
                reason: "--image needs a regular file (disk image) or a block device".into(),
            });
        }
        let mut node = meta::node_from_meta(
            b"image",
            &m,
            NodeKind::File { size: 0, content: Content::Inline(vec![]) },
            &self.ctx.names,
        );
        node.mode = m.mode() & 0o7777;
        self.one_file_root(img.into(), true, None, node, slot)
    }

    /// A root of one file (an image or a stream): its job to the readers,
    /// its node the root's only entry.
    fn one_file_root(
        &mut self,
        path: PathBuf,
        image: bool,
        stream: Option<super::stream::StreamInput>,
        node: Node,
        slot: DirSlot,
    ) -> Res<()> {
        let fslot = Slot::new();
        self.file_tx
            .send(FileJob { path, image, ident: None, stream, slot: fslot.clone() })
            .map_err(|_| BackupError::Internal("readers stopped".into()))?;
        self.ctx.counts.lock().expect("counts").files += 1;
        self.emit(PendingDir { nodes: vec![PendingNode { node, wait: Wait::File(fslot) }], slot })
    }

    /// A stream as the one file of the root: owned by this process's user,
    /// mode 0600 (a database dump is as private as the database), the time
    /// of the backup as its times.
    pub(super) fn stream_root(&mut self, input: &super::stream::StreamInput, slot: DirSlot) -> Res<()> {
        let now = crate::time::now_ns();
        let node = Node {
            name: input.name.as_bytes().to_vec(),
            kind: NodeKind::File { size: 0, content: Content::Inline(vec![]) },
            mode: 0o600,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            user: None,
            group: None,
            mtime_ns: now,
            atime_ns: now,
            ctime_ns: now,
            inode: 0,
            dev: 0,
            nlink: 1,
            xattrs: Vec::new(),
            warning: None,
            unreadable: false,
        };
        self.one_file_root(format!("(stdin as {})", input.name).into(), false, Some(input.clone()), node, slot)
    }

    /// Handle one entry (file, dir, special). Returns None when excluded.
    fn entry(
        &mut self,
        path: &Path,
        name: &[u8],
        m: Metadata,
        pnode: Option<&Node>,
        root_dev: u64,
    ) -> Res<Option<PendingNode>> {
        self.ctx.progress.entries_seen.fetch_add(1, Ordering::Relaxed);
        if self.ctx.excludes.is_excluded(path, name) {
            return Ok(None);
        }
        let ft = m.file_type();
        if ft.is_dir() && self.ctx.skip_dir == Some((m.dev(), m.ino())) {
            tracing::info!(path = %path.display(), "skipping the store's own directory");
            return Ok(None);
        }
        if ft.is_dir()
            && let Some(why) = self.ctx.excludes.excluded_dir(path)
        {
            tracing::info!(path = %path.display(), reason = %why, "directory excluded");
            return Ok(None);
        }
        let xattrs = match meta::read_xattrs(path) {
            Ok(x) => x,
            Err(e) => {
                self.ctx.warn(path, format!("cannot read extended attributes: {e}"));
                Vec::new()
            }
        };
        if ft.is_dir() {
            let s = Slot::new();
            let mut node = meta::node_from_meta(name, &m, NodeKind::Dir { tree: ObjectId::ZERO }, &self.ctx.names);
            node.xattrs = xattrs;
            self.ctx.counts.lock().expect("counts").dirs += 1;
            if self.ctx.one_fs && m.dev() != root_dev {
                // a mount point: record the directory, not the other file system
                self.emit(PendingDir { nodes: vec![], slot: s.clone() })?;
            } else {
                let sub_parent = self.parent_subdir(pnode);
                self.walk_dir(path, &m, sub_parent.as_deref(), s.clone(), root_dev)?;
                if self.ctx.failed() {
                    return Err(BackupError::Internal("aborted".into()));
                }
            }
            // walk_dir may have flagged the directory unreadable
            if let Some(w) = self.take_dir_warning(path) {
                node.warning = Some(w);
                node.unreadable = true;
            }
            return Ok(Some(PendingNode { node, wait: Wait::Dir(s) }));
        }
        if ft.is_file() {
            let mut node = meta::node_from_meta(
                name,
                &m,
                NodeKind::File { size: m.size(), content: Content::Inline(vec![]) },
                &self.ctx.names,
            );
            node.xattrs = xattrs;
            {
                let mut c = self.ctx.counts.lock().expect("counts");
                c.files += 1;
                c.bytes += m.size();
            }
            // parent fast path
            if let Some(p) = pnode
                && let NodeKind::File { size, content } = &p.kind
                && !p.unreadable
                && p.warning.is_none()
                && *size == m.size()
                && p.mtime_ns == node.mtime_ns
                && p.ctime_ns == node.ctime_ns
                && p.inode == node.inode
                && self.content_present(content)
            {
                node.kind = NodeKind::File { size: *size, content: content.clone() };
                self.ctx.counts.lock().expect("counts").unchanged += 1;
                self.ctx.progress.files.fetch_add(1, Ordering::Relaxed);
                self.ctx.progress.bytes.fetch_add(*size, Ordering::Relaxed);
                return Ok(Some(PendingNode { node, wait: Wait::Ready }));
            }
            if m.nlink() > 1
                && let Some(slot) = self.hardlinks.get(&(m.dev(), m.ino()))
            {
                return Ok(Some(PendingNode { node, wait: Wait::File(slot.clone()) }));
            }
            let slot = Slot::new();
            if m.nlink() > 1 {
                self.hardlinks.insert((m.dev(), m.ino()), slot.clone());
            }
            self.file_tx
                .send(FileJob {
                    path: path.into(),
                    image: false,
                    ident: Some((m.dev(), m.ino())),
                    stream: None,
                    slot: slot.clone(),
                })
                .map_err(|_| BackupError::Internal("readers stopped".into()))?;
            return Ok(Some(PendingNode { node, wait: Wait::File(slot) }));
        }
        let kind = match meta::special_kind(path, &m) {
            Ok(Some(k)) => k,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.ctx.warn(path, format!("cannot read symlink: {e}"));
                return Ok(None);
            }
        };
        let mut node = meta::node_from_meta(name, &m, kind, &self.ctx.names);
        node.xattrs = xattrs;
        self.ctx.counts.lock().expect("counts").others += 1;
        Ok(Some(PendingNode { node, wait: Wait::Ready }))
    }

    fn take_dir_warning(&mut self, path: &Path) -> Option<String> {
        let w = self.ctx.warnings.lock().expect("warnings lock");
        let p = path.display().to_string();
        w.iter()
            .rev()
            .find(|x| x.path == p && x.message.starts_with("cannot read directory"))
            .map(|x| x.message.clone())
    }

    fn content_present(&self, content: &Content) -> bool {
        let mut ids: Vec<ObjectId> = Vec::new();
        match content {
            Content::Inline(ext) => {
                for e in ext {
                    if let Extent::Data { id, .. } = e {
                        ids.push(*id);
                    }
                }
            }
            Content::Lists(l) => {
                // a format-1 extent list carries no seals, and holders refuse
                // one below a format-2 snapshot: such a file is read again
                // (once), which rewrites its lists in format 2
                let v2 = |id: &ObjectId| {
                    self.ctx.store.record_header(id).is_ok_and(|h| h.format == omesh_proto::RecordFormat::V2)
                };
                if !l.iter().all(v2) {
                    return false;
                }
                ids.extend_from_slice(l)
            }
        }
        matches!(self.ctx.store.contains_many(&ids), Ok(v) if v.iter().all(|x| *x))
    }

    fn walk_dir(
        &mut self,
        path: &Path,
        _m: &Metadata,
        parent: Option<&[Node]>,
        slot: DirSlot,
        root_dev: u64,
    ) -> Res<()> {
        let rd = match fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) => {
                self.ctx.warn(path, format!("cannot read directory: {e}; it is recorded empty"));
                return self.emit(PendingDir { nodes: vec![], slot });
            }
        };
        let mut names: Vec<Vec<u8>> = Vec::new();
        for e in rd {
            match e {
                Ok(e) => names.push(e.file_name().as_bytes().to_vec()),
                Err(e) => {
                    self.ctx.warn(path, format!("cannot read directory: {e}; listing is incomplete"));
                    break;
                }
            }
        }
        names.sort();
        let mut nodes = Vec::with_capacity(names.len());
        for name in names {
            if self.ctx.failed() {
                return Err(BackupError::Internal("aborted".into()));
            }
            let child = path.join(std::ffi::OsStr::from_bytes(&name));
            let m = match fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted meanwhile
                Err(e) => {
                    self.ctx.warn(&child, format!("cannot stat: {e}"));
                    continue;
                }
            };
            let pnode = parent.and_then(|p| find_node(p, &name));
            if let Some(n) = self.entry(&child, &name, m, pnode, root_dev)? {
                nodes.push(n);
            }
        }
        self.emit(PendingDir { nodes, slot })
    }
}

pub(super) fn find_node<'a>(nodes: &'a [Node], name: &[u8]) -> Option<&'a Node> {
    nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &nodes[i])
}
