//! Backup: turn a set of paths (or one block device/image) into a snapshot.
//!
//! The pipeline uses every core with bounded channels between stages:
//!
//! ```text
//! walker ──files──▶ readers (read, chunk) ──chunks──▶ workers (hash, dedup,
//!    │                     │                          compress, encrypt)
//!    │ dirs (post-order)   └──lists──┐                      │
//!    ▼                               ▼                      ▼
//! finisher (build trees) ──trees──▶ packer (append to packs, fsync, index)
//! ```
//!
//! A read-ahead thread walks the same tree a little ahead of the walker and
//! only stats, so that with a cold cache the walker finds directories and
//! inodes cached instead of waiting for each in turn; it stops by itself
//! when lookups run at cache speed.
//!
//! Memory is bounded by the channel capacities times the maximum chunk size,
//! whatever the size of the tree. A file whose size, mtime, ctime and inode
//! match the parent snapshot reuses its extents without being read (after
//! checking the referenced objects are still in the store). A file that
//! changes while it is read is read again once, then stored with a warning.
//! Unreadable files and directories are recorded as such (never silently
//! missing) and make the run end with warnings.

pub mod exclude;
pub mod meta;

use crate::chunker::Chunker;
use crate::snapshot::{
    Content, Extent, ExtentList, MAX_INLINE_EXTENTS, MAX_LIST_EXTENTS, MAX_TREE_PART_ENTRIES, Node, NodeKind,
    SnapshotKind, SnapshotRecord, Tree,
};
use crate::store::{PackSink, Store, StoreError, WriteStats};
use crossbeam_channel::{Receiver, Sender, bounded};
use exclude::Excludes;
use meta::NameCache;
use omesh_proto::{ObjectId, ObjectKind};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata};
use std::io::{Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Which snapshot to use as parent for the fast path.
#[derive(Clone, Debug, Default)]
pub enum ParentChoice {
    /// Latest snapshot of the same source, host, paths and kind.
    #[default]
    Auto,
    /// No parent: read everything.
    None,
    /// This snapshot.
    Id(ObjectId),
}

/// What to back up and how.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Paths to back up (files or directories).
    pub paths: Vec<PathBuf>,
    /// Back up this block device or disk image as one file instead.
    pub image: Option<PathBuf>,
    /// Exclude patterns (see [`exclude`]).
    pub excludes: Vec<String>,
    /// Do not descend into other file systems.
    pub one_file_system: bool,
    /// Parent for the fast path.
    pub parent: ParentChoice,
    /// Tags stored in the snapshot.
    pub tags: Vec<String>,
    /// Host name to record (default: this host's).
    pub hostname: Option<String>,
    /// Worker threads (default: available cores).
    pub threads: Option<usize>,
    /// Files read at once (default: 4 per core, 4 to 16).
    pub read_concurrency: Option<usize>,
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files finished.
    pub files: AtomicU64,
    /// Logical bytes of finished files.
    pub bytes: AtomicU64,
    /// Bytes read from disk.
    pub bytes_read: AtomicU64,
    /// Record bytes added to the store.
    pub bytes_added: AtomicU64,
    /// Entries found by the walker.
    pub entries_seen: AtomicU64,
}

/// One warning: a path and what went wrong.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Warning {
    /// Affected path.
    pub path: String,
    /// What happened.
    pub message: String,
}

/// Result of a backup.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackupSummary {
    /// New snapshot id.
    #[serde(with = "omesh_proto::id::hex")]
    pub snapshot: ObjectId,
    /// Parent used for the fast path.
    #[serde(with = "omesh_proto::id::hex::option")]
    pub parent: Option<ObjectId>,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries.
    pub others: u64,
    /// Logical bytes of all files.
    pub bytes: u64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Bytes the store grew by.
    pub bytes_added: u64,
    /// Objects added.
    pub objects_added: u64,
    /// Files reused from the parent without reading.
    pub files_unchanged: u64,
    /// Wall time.
    pub seconds: f64,
    /// Warnings (unreadable or changed files).
    pub warnings: Vec<Warning>,
}

/// Backup failures (per-file problems are warnings, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A path given on the command line cannot be backed up.
    #[error("cannot back up {path}: {reason}")]
    Path {
        /// path
        path: PathBuf,
        /// why
        reason: String,
    },
    /// Invalid options.
    #[error("{0}")]
    Options(String),
    /// A pipeline thread panicked (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

type Res<T> = Result<T, BackupError>;

/// A value produced by one thread and awaited by another.
struct Slot<T> {
    v: Mutex<Option<T>>,
    cv: Condvar,
}

impl<T: Clone> Slot<T> {
    fn new() -> Arc<Self> {
        Arc::new(Slot { v: Mutex::new(None), cv: Condvar::new() })
    }
    fn set(&self, v: T) {
        *self.v.lock().expect("slot lock") = Some(v);
        self.cv.notify_all();
    }
    fn wait(&self) -> T {
        let mut g = self.v.lock().expect("slot lock");
        while g.is_none() {
            g = self.cv.wait(g).expect("slot lock");
        }
        g.clone().expect("checked")
    }
}

/// What a reader produced for one file.
#[derive(Clone, Debug)]
struct FileOut {
    size: u64,
    content: Content,
    warning: Option<String>,
    unreadable: bool,
}

type FileSlot = Arc<Slot<FileOut>>;
type DirSlot = Arc<Slot<ObjectId>>;

struct FileJob {
    path: PathBuf,
    image: bool,
    slot: FileSlot,
}

struct ChunkJob {
    data: Vec<u8>,
    zero_is_hole: bool,
    seq: usize,
    reply: Sender<(usize, Result<Extent, String>)>,
}

struct PackItem {
    id: ObjectId,
    kind: ObjectKind,
    bytes: Vec<u8>,
}

enum Wait {
    Ready,
    File(FileSlot),
    Dir(DirSlot),
}

struct PendingNode {
    node: Node,
    wait: Wait,
}

struct PendingDir {
    nodes: Vec<PendingNode>,
    slot: DirSlot,
}

/// Shared state of one run.
struct Ctx<'s> {
    store: &'s Store,
    chunker: Chunker,
    excludes: Excludes,
    one_fs: bool,
    names: NameCache,
    progress: Arc<Progress>,
    warnings: Mutex<Vec<Warning>>,
    failed: AtomicBool,
    error: Mutex<Option<BackupError>>,
    counts: Mutex<Counts>,
    skip_dir: Option<(u64, u64)>,
    /// Tokens: how many large files may be chunked at once.
    large_files: (Sender<()>, Receiver<()>),
}

#[derive(Default, Clone, Copy)]
struct Counts {
    files: u64,
    dirs: u64,
    others: u64,
    bytes: u64,
    unchanged: u64,
}

impl Ctx<'_> {
    fn warn(&self, path: &Path, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(path = %path.display(), "{message}");
        self.warnings.lock().expect("warnings lock").push(Warning { path: path.display().to_string(), message });
    }
    fn fail(&self, e: BackupError) {
        let mut g = self.error.lock().expect("error lock");
        if g.is_none() {
            *g = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

fn now_ns() -> i64 {
    crate::time::now_ns()
}

/// Run a backup into `store`.
pub fn run(store: &Store, opts: &BackupOptions, progress: Arc<Progress>) -> Res<BackupSummary> {
    let started = Instant::now();
    let start_ns = now_ns();
    // garbage collection waits for this session before sweeping anything
    // it condemned meanwhile (objects this backup writes or dedups against)
    let _session = store.session();
    let keys = store.keys()?.clone();
    let excludes = Excludes::new(&opts.excludes).map_err(BackupError::Options)?;
    let kind = if opts.image.is_some() { SnapshotKind::Image } else { SnapshotKind::Files };
    if opts.image.is_some() && !opts.paths.is_empty() {
        return Err(BackupError::Options("--image backs up one device or image; do not also give paths".into()));
    }
    if opts.image.is_none() && opts.paths.is_empty() {
        return Err(BackupError::Options("nothing to back up: give one or more paths (or --image DEVICE)".into()));
    }
    let roots: Vec<PathBuf> = match &opts.image {
        Some(p) => vec![absolute(p)?],
        None => normalise_roots(&opts.paths)?,
    };
    let paths: Vec<String> = roots.iter().map(|p| p.display().to_string()).collect();
    let host = opts.hostname.clone().unwrap_or_else(hostname);

    let parent = match &opts.parent {
        ParentChoice::None => None,
        ParentChoice::Id(id) => Some(*id),
        ParentChoice::Auto => {
            let (snaps, _) = store.snapshots()?;
            let mut want = paths.clone();
            want.sort();
            snaps
                .iter()
                .rev()
                .find(|(_, r)| {
                    let mut p = r.paths.clone();
                    p.sort();
                    r.hostname == host && r.source == store.config().source && p == want && r.kind == kind
                })
                .map(|(id, _)| *id)
        }
    };
    let parent_root: Option<Vec<Node>> = match parent {
        Some(id) => {
            let rec = store.load_snapshot(&id)?;
            Some(store.load_dir(&rec.tree)?)
        }
        None => None,
    };

    let store_dir_id = fs::metadata(store.dir()).ok().map(|m| (m.dev(), m.ino()));
    let ctx = Ctx {
        store,
        chunker: Chunker::new(keys.gear(), store.config().chunker),
        excludes,
        one_fs: opts.one_file_system,
        names: NameCache::default(),
        progress: progress.clone(),
        warnings: Mutex::new(Vec::new()),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        counts: Mutex::new(Counts::default()),
        skip_dir: store_dir_id,
        large_files: bounded(16),
    };
    let threads =
        opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)).max(1);
    // reading is latency-bound (cold inodes, small files): keep several
    // reads in flight per core
    let readers = opts.read_concurrency.unwrap_or((threads * 4).clamp(4, 16)).max(1);
    let workers = threads;
    for _ in 0..(workers * 2).max(4) {
        let _ = ctx.large_files.0.send(());
    }

    let (file_tx, file_rx) = bounded::<FileJob>(readers * 4);
    let (chunk_tx, chunk_rx) = bounded::<ChunkJob>(workers * 2);
    let (pack_tx, pack_rx) = bounded::<PackItem>(workers * 2);
    let (dir_tx, dir_rx) = bounded::<PendingDir>(64);

    let root_slot: DirSlot = Slot::new();
    let mut write_stats = WriteStats::default();
    let walk_done = AtomicBool::new(false);
    std::thread::scope(|s| -> Res<()> {
        let ctx = &ctx;
        let packer = s.spawn(move || packer(ctx, pack_rx));
        for _ in 0..workers {
            let rx = chunk_rx.clone();
            let ptx = pack_tx.clone();
            s.spawn(move || chunk_worker(ctx, rx, ptx));
        }
        drop(chunk_rx);
        for _ in 0..readers {
            let rx = file_rx.clone();
            let ctx_tx = chunk_tx.clone();
            let ptx = pack_tx.clone();
            s.spawn(move || reader(ctx, rx, ctx_tx, ptx));
        }
        drop(file_rx);
        drop(chunk_tx);
        let fin_ptx = pack_tx.clone();
        drop(pack_tx);
        let finisher = s.spawn(move || finisher(ctx, dir_rx, fin_ptx));

        // metadata read-ahead: with a cold cache the walker would wait for
        // every directory and inode in turn; a second thread walking the
        // same tree ahead of it turns those waits into cache hits
        let walk_done = &walk_done;
        if opts.image.is_none() {
            let roots = &roots;
            s.spawn(move || read_ahead(ctx, roots, walk_done));
        }
        let mut walker = Walker { ctx, file_tx, dir_tx, hardlinks: HashMap::new() };
        let walked = match &opts.image {
            Some(img) => walker.image_root(img, root_slot.clone()),
            None => walker.virtual_root(&roots, parent_root.as_deref(), root_slot.clone()),
        };
        walk_done.store(true, Ordering::Relaxed);
        if let Err(e) = walked {
            ctx.fail(e);
        }
        drop(walker);
        finisher.join().map_err(|_| BackupError::Internal("tree builder panicked".into()))?;
        match packer.join() {
            Ok(Some(st)) => write_stats = st,
            Ok(None) => {}
            Err(_) => return Err(BackupError::Internal("packer panicked".into())),
        }
        Ok(())
    })?;
    if let Some(e) = ctx.error.lock().expect("error lock").take() {
        return Err(e);
    }
    let tree = root_slot.wait();
    let counts = *ctx.counts.lock().expect("counts lock");
    let warnings = std::mem::take(&mut *ctx.warnings.lock().expect("warnings lock"));
    let bytes_read = progress.bytes_read.load(Ordering::Relaxed);
    let rec = SnapshotRecord {
        source: store.config().source.clone(),
        hostname: host,
        paths,
        kind,
        tree,
        parent,
        start_ns,
        end_ns: now_ns(),
        files: counts.files,
        dirs: counts.dirs,
        others: counts.others,
        bytes: counts.bytes,
        bytes_read,
        bytes_added: write_stats.bytes,
        warnings: warnings.len() as u64,
        tags: opts.tags.clone(),
        program: format!("omesh {}", env!("CARGO_PKG_VERSION")),
    };
    crate::failpoint::hit("backup.before_commit");
    let id = store.write_snapshot(&rec)?;
    Ok(BackupSummary {
        snapshot: id,
        parent,
        files: counts.files,
        dirs: counts.dirs,
        others: counts.others,
        bytes: counts.bytes,
        bytes_read,
        bytes_added: write_stats.bytes,
        objects_added: write_stats.objects,
        files_unchanged: counts.unchanged,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
    })
}

fn absolute(p: &Path) -> Res<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| BackupError::Path { path: p.into(), reason: e.to_string() })?;
    // normalise "." and ".." lexically without following the final symlink
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

/// Absolute, deduplicated roots; a root inside another is dropped.
fn normalise_roots(paths: &[PathBuf]) -> Res<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = Vec::new();
    for p in paths {
        let a = absolute(p)?;
        fs::symlink_metadata(&a).map_err(|e| BackupError::Path { path: a.clone(), reason: e.to_string() })?;
        v.push(a);
    }
    v.sort();
    v.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in v {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- walker

struct Walker<'c, 's> {
    ctx: &'c Ctx<'s>,
    file_tx: Sender<FileJob>,
    dir_tx: Sender<PendingDir>,
    hardlinks: HashMap<(u64, u64), FileSlot>,
}

/// Node of the virtual tree that joins several roots under `/`.
#[derive(Default)]
struct VDir {
    children: BTreeMap<Vec<u8>, VEntry>,
}
enum VEntry {
    Dir(VDir),
    Root(PathBuf),
}

impl Walker<'_, '_> {
    fn emit(&self, d: PendingDir) -> Res<()> {
        self.dir_tx.send(d).map_err(|_| BackupError::Internal("tree builder stopped".into()))
    }

    fn virtual_root(&mut self, roots: &[PathBuf], parent: Option<&[Node]>, slot: DirSlot) -> Res<()> {
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

    fn image_root(&mut self, img: &Path, slot: DirSlot) -> Res<()> {
        let m = fs::metadata(img).map_err(|e| BackupError::Path { path: img.into(), reason: e.to_string() })?;
        let ft = m.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(BackupError::Path {
                path: img.into(),
                reason: "--image needs a regular file (disk image) or a block device".into(),
            });
        }
        let fslot = Slot::new();
        self.file_tx
            .send(FileJob { path: img.into(), image: true, slot: fslot.clone() })
            .map_err(|_| BackupError::Internal("readers stopped".into()))?;
        let mut node = meta::node_from_meta(
            b"image",
            &m,
            NodeKind::File { size: 0, content: Content::Inline(vec![]) },
            &self.ctx.names,
        );
        node.mode = m.mode() & 0o7777;
        self.ctx.counts.lock().expect("counts").files += 1;
        self.emit(PendingDir { nodes: vec![PendingNode { node, wait: Wait::File(fslot) }], slot })
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
            if let Some(p) = pnode {
                if let NodeKind::File { size, content } = &p.kind {
                    if !p.unreadable
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
                }
            }
            if m.nlink() > 1 {
                if let Some(slot) = self.hardlinks.get(&(m.dev(), m.ino())) {
                    return Ok(Some(PendingNode { node, wait: Wait::File(slot.clone()) }));
                }
            }
            let slot = Slot::new();
            if m.nlink() > 1 {
                self.hardlinks.insert((m.dev(), m.ino()), slot.clone());
            }
            self.file_tx
                .send(FileJob { path: path.into(), image: false, slot: slot.clone() })
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
            Content::Lists(l) => ids.extend_from_slice(l),
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

/// Walk the tree the walker is about to walk, in about the same order,
/// reading directories and inodes into the kernel's caches (and nothing
/// else: results are dropped). It follows the walker's rules (excludes, one
/// file system, the store's own directory) so it reads nothing the backup
/// would not, and stops as soon as the walker is done.
fn read_ahead(ctx: &Ctx<'_>, roots: &[PathBuf], done: &AtomicBool) {
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
                if looked % WINDOW == 0 {
                    if window.elapsed() < WARM {
                        tracing::debug!(looked, "metadata is cached; read-ahead stops");
                        return;
                    }
                    window = Instant::now();
                }
                if m.is_dir() && !(ctx.one_fs && m.dev() != root_dev) && ctx.skip_dir != Some((m.dev(), m.ino())) {
                    subdirs.push(path);
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
    }
}

fn find_node<'a>(nodes: &'a [Node], name: &[u8]) -> Option<&'a Node> {
    nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &nodes[i])
}

// ---------------------------------------------------------------- readers

fn reader(ctx: &Ctx<'_>, rx: Receiver<FileJob>, chunk_tx: Sender<ChunkJob>, pack_tx: Sender<PackItem>) {
    let mut scratch = Vec::new();
    for job in rx {
        let out = if ctx.failed() {
            FileOut { size: 0, content: Content::Inline(vec![]), warning: None, unreadable: true }
        } else {
            read_file(ctx, &job, &chunk_tx, &pack_tx, &mut scratch)
        };
        // a large file's buffer is not kept for the small files that follow
        if scratch.len() > 1 << 20 {
            scratch = Vec::new();
        }
        ctx.progress.files.fetch_add(1, Ordering::Relaxed);
        ctx.progress.bytes.fetch_add(out.size, Ordering::Relaxed);
        if job.image {
            // a block device's size is only known once opened
            ctx.counts.lock().expect("counts").bytes += out.size;
        }
        job.slot.set(out);
    }
}

fn unreadable(ctx: &Ctx<'_>, path: &Path, e: impl std::fmt::Display) -> FileOut {
    let msg = format!("cannot read file: {e}; its content is not in this snapshot");
    ctx.warn(path, msg.clone());
    FileOut { size: 0, content: Content::Inline(vec![]), warning: Some(msg), unreadable: true }
}

/// (size, mtime, ctime) identity used to detect changes during a read.
fn stamp(m: &Metadata) -> (u64, i64, i64, i64, i64) {
    (m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

fn read_file(
    ctx: &Ctx<'_>,
    job: &FileJob,
    chunk_tx: &Sender<ChunkJob>,
    pack_tx: &Sender<PackItem>,
    scratch: &mut Vec<u8>,
) -> FileOut {
    let mut last_err = None;
    for attempt in 0..2 {
        let mut f =
            match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME).open(&job.path) {
                Ok(f) => f,
                // O_NOATIME is refused for files we do not own
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&job.path) {
                        Ok(f) => f,
                        Err(e) => return unreadable(ctx, &job.path, e),
                    }
                }
                Err(e) => return unreadable(ctx, &job.path, e),
            };
        let before = match f.metadata() {
            Ok(m) => m,
            Err(e) => return unreadable(ctx, &job.path, e),
        };
        let size = if job.image && before.file_type().is_block_device() {
            match f.seek(SeekFrom::End(0)).and_then(|n| f.seek(SeekFrom::Start(0)).map(|_| n)) {
                Ok(n) => n,
                Err(e) => return unreadable(ctx, &job.path, e),
            }
        } else {
            before.size()
        };
        // large files are bandwidth- and CPU-bound: only a few are chunked
        // at once, which bounds memory to a few full read buffers
        let _token = if size > ctx.chunker.large_file_bytes() { ctx.large_files.1.recv().ok() } else { None };
        let res = chunk_file(ctx, &mut f, size, job.image, crate::fsutil::sparse_hint(&before), chunk_tx, scratch);
        if let Some(t) = _token {
            let _ = ctx.large_files.0.send(t);
        }
        let (extents, _read) = match res {
            Ok(x) => x,
            Err(e) => return unreadable(ctx, &job.path, e),
        };
        let after = f.metadata().ok();
        let changed = !job.image && after.as_ref().map(stamp) != Some(stamp(&before));
        let content = match into_content(ctx, extents, pack_tx) {
            Ok(c) => c,
            Err(e) => return unreadable(ctx, &job.path, e),
        };
        let out_size = match &content {
            Content::Inline(e) => e.iter().map(|x| x.len()).sum(),
            Content::Lists(_) => size,
        };
        if !changed {
            return FileOut { size: out_size, content, warning: None, unreadable: false };
        }
        last_err = Some(FileOut { size: out_size, content, warning: None, unreadable: false });
        if attempt == 0 {
            tracing::info!(path = %job.path.display(), "file changed while being read; reading it again");
        }
    }
    let mut out = last_err.expect("two attempts made");
    let msg = "file changed while it was being read (twice); the stored content may mix old and new data".to_string();
    ctx.warn(&job.path, msg.clone());
    out.warning = Some(msg);
    out
}

fn chunk_file(
    ctx: &Ctx<'_>,
    f: &mut File,
    size: u64,
    image: bool,
    sparse: bool,
    chunk_tx: &Sender<ChunkJob>,
    scratch: &mut Vec<u8>,
) -> std::io::Result<(Vec<Extent>, u64)> {
    let ranges = crate::fsutil::data_ranges(f, size, sparse)?;
    let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
    // the layout: Some(n) = n-th chunk result, None = a hole of given length
    let mut layout: Vec<Result<usize, u64>> = Vec::new();
    let mut seq = 0usize;
    let mut pos = 0u64;
    let mut read = 0u64;
    for (start, len) in ranges {
        if start > pos {
            layout.push(Err(start - pos));
        }
        f.seek(SeekFrom::Start(start))?;
        let n = ctx.chunker.for_each_chunk_with(scratch, &mut *f, len, |data| {
            if ctx.failed() {
                return Err(std::io::Error::other("backup aborted"));
            }
            ctx.progress.bytes_read.fetch_add(data.len() as u64, Ordering::Relaxed);
            layout.push(Ok(seq));
            chunk_tx
                .send(ChunkJob { data, zero_is_hole: image, seq, reply: reply_tx.clone() })
                .map_err(|_| std::io::Error::other("chunk workers stopped"))?;
            seq += 1;
            Ok(())
        })?;
        read += n;
        pos = start + n;
        if n < len {
            break; // file shrank while reading; change detection reports it
        }
    }
    if pos < size && sparse {
        layout.push(Err(size - pos));
    }
    drop(reply_tx);
    let mut results: Vec<Option<Extent>> = vec![None; seq];
    for _ in 0..seq {
        let (i, r) = reply_rx.recv().map_err(|_| std::io::Error::other("chunk workers stopped"))?;
        results[i] = Some(r.map_err(std::io::Error::other)?);
    }
    let mut extents = Vec::with_capacity(layout.len());
    for l in layout {
        let e = match l {
            Ok(i) => results[i].take().expect("every chunk answered"),
            Err(len) => Extent::Hole { len },
        };
        // merge adjacent holes
        match (extents.last_mut(), &e) {
            (Some(Extent::Hole { len: a }), Extent::Hole { len: b }) => *a += b,
            _ => extents.push(e),
        }
    }
    Ok((extents, read))
}

/// Inline extents, or list objects for very large files.
fn into_content(ctx: &Ctx<'_>, extents: Vec<Extent>, pack_tx: &Sender<PackItem>) -> Result<Content, String> {
    if extents.len() <= MAX_INLINE_EXTENTS {
        return Ok(Content::Inline(extents));
    }
    let mut ids = Vec::new();
    for part in extents.chunks(MAX_LIST_EXTENTS) {
        let (links, plain) = ExtentList { extents: part.to_vec() }.encode();
        ids.push(put_object(ctx, ObjectKind::List, &plain, links, pack_tx).map_err(|e| e.to_string())?);
    }
    Ok(Content::Lists(ids))
}

fn put_object(
    ctx: &Ctx<'_>,
    kind: ObjectKind,
    plain: &[u8],
    links: Vec<ObjectId>,
    pack_tx: &Sender<PackItem>,
) -> Result<ObjectId, StoreError> {
    let id = ctx.store.keys()?.id_for(kind, &links, plain);
    if ctx.store.claim(&id)? {
        let (id2, bytes) = ctx.store.seal(kind, plain, links)?;
        debug_assert_eq!(id, id2);
        pack_tx.send(PackItem { id, kind, bytes }).map_err(|_| StoreError::Io {
            op: "queueing object for",
            path: ctx.store.dir().into(),
            source: std::io::Error::other("packer stopped"),
        })?;
    }
    Ok(id)
}

// ---------------------------------------------------------------- workers

fn chunk_worker(ctx: &Ctx<'_>, rx: Receiver<ChunkJob>, pack_tx: Sender<PackItem>) {
    let keys = match ctx.store.keys() {
        Ok(k) => k.clone(),
        Err(e) => {
            ctx.fail(e.into());
            for j in rx {
                let _ = j.reply.send((j.seq, Err("no key".into())));
            }
            return;
        }
    };
    for job in rx {
        let len = job.data.len() as u32;
        if job.zero_is_hole && job.data.iter().all(|&b| b == 0) {
            let _ = job.reply.send((job.seq, Ok(Extent::Hole { len: len as u64 })));
            continue;
        }
        let id = keys.object_id(&job.data);
        let r = (|| -> Result<(), StoreError> {
            if ctx.store.claim(&id)? {
                let (_, bytes) = ctx.store.seal(ObjectKind::Blob, &job.data, Vec::new())?;
                pack_tx.send(PackItem { id, kind: ObjectKind::Blob, bytes }).map_err(|_| StoreError::Io {
                    op: "queueing object for",
                    path: ctx.store.dir().into(),
                    source: std::io::Error::other("packer stopped"),
                })?;
            }
            Ok(())
        })();
        let reply = match r {
            Ok(()) => Ok(Extent::Data { id, len }),
            Err(e) => {
                let m = e.to_string();
                ctx.fail(e.into());
                Err(m)
            }
        };
        let _ = job.reply.send((job.seq, reply));
    }
}

// ---------------------------------------------------------------- packer

fn packer(ctx: &Ctx<'_>, rx: Receiver<PackItem>) -> Option<WriteStats> {
    let mut sink: PackSink<&Store> = match ctx.store.sink() {
        Ok(s) => s,
        Err(e) => {
            ctx.fail(e.into());
            for _ in rx {}
            return None;
        }
    };
    for item in rx {
        if ctx.failed() {
            continue; // drain so senders never block
        }
        if let Err(e) = sink.add(item.id, item.kind, &item.bytes) {
            ctx.fail(e.into());
            continue;
        }
        ctx.progress.bytes_added.store(sink.stats().bytes, Ordering::Relaxed);
    }
    if ctx.failed() {
        return None;
    }
    match sink.finish() {
        Ok(st) => Some(st),
        Err(e) => {
            ctx.fail(e.into());
            None
        }
    }
}

// ---------------------------------------------------------------- finisher

fn finisher(ctx: &Ctx<'_>, rx: Receiver<PendingDir>, pack_tx: Sender<PackItem>) {
    for d in rx {
        let mut entries = Vec::with_capacity(d.nodes.len());
        for p in d.nodes {
            let mut node = p.node;
            match p.wait {
                Wait::Ready => {}
                Wait::Dir(s) => node.kind = NodeKind::Dir { tree: s.wait() },
                Wait::File(s) => {
                    let out = s.wait();
                    node.kind = NodeKind::File { size: out.size, content: out.content };
                    if out.warning.is_some() {
                        node.warning = out.warning;
                    }
                    node.unreadable = out.unreadable;
                }
            }
            entries.push(node);
        }
        if ctx.failed() {
            d.slot.set(ObjectId::ZERO);
            continue;
        }
        match write_tree(ctx, entries, &pack_tx) {
            Ok(id) => d.slot.set(id),
            Err(e) => {
                ctx.fail(e.into());
                d.slot.set(ObjectId::ZERO);
            }
        }
    }
}

/// Rough encoded size of a node, to split huge directories into parts.
fn node_weight(n: &Node) -> (usize, usize) {
    let mut links = Vec::new();
    n.links(&mut links);
    let bytes =
        128 + n.name.len() + n.xattrs.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + links.len() * 40;
    (bytes, links.len())
}

/// Write a directory as one or more tree parts; returns the head's id.
fn write_tree(ctx: &Ctx<'_>, entries: Vec<Node>, pack_tx: &Sender<PackItem>) -> Result<ObjectId, StoreError> {
    const PART_BYTES: usize = 4 * 1024 * 1024;
    const PART_LINKS: usize = 65_536;
    let mut parts: Vec<Vec<Node>> = vec![Vec::new()];
    let (mut bytes, mut links) = (0usize, 0usize);
    for n in entries {
        let (b, l) = node_weight(&n);
        let cur = parts.last().expect("non-empty");
        if !cur.is_empty() && (cur.len() >= MAX_TREE_PART_ENTRIES || bytes + b > PART_BYTES || links + l > PART_LINKS) {
            parts.push(Vec::new());
            bytes = 0;
            links = 0;
        }
        bytes += b;
        links += l;
        parts.last_mut().expect("non-empty").push(n);
    }
    let mut more = Vec::new();
    let head = parts.remove(0);
    for p in parts {
        let (links, plain) = Tree { entries: p, more: vec![] }.encode();
        more.push(put_object(ctx, ObjectKind::Tree, &plain, links, pack_tx)?);
    }
    let (links, plain) = Tree { entries: head, more }.encode();
    put_object(ctx, ObjectKind::Tree, &plain, links, pack_tx)
}
