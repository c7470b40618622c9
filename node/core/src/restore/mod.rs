//! Restore: write a snapshot (or parts of it) into a target directory, or an
//! image snapshot onto a file or block device.
//!
//! Safety rules, enforced here and in [`fsops`]:
//! - every name comes from a validated tree (no '/', NUL, '.', '..', no
//!   duplicates), and every write is relative to a directory descriptor
//!   opened with `O_NOFOLLOW` from the target down, so nothing is written
//!   outside the target whatever symlinks the target or the snapshot holds;
//! - files are built under an exclusive temporary name and renamed into
//!   place only when every byte has been verified, so a damaged object
//!   fails that file loudly and leaves the previous content (or nothing);
//! - data already in the target is reused: a file whose content matches is
//!   kept (only metadata is applied), and a changed file is rebuilt from the
//!   matching chunks of the old one plus only the objects that differ.
//!
//! Work is spread over a pool: whole files for small ones, segments of a few
//! chunks for large ones, so one big image restores on every core.

pub mod fsops;

use crate::backup::Warning;
use crate::chunker::Chunker;
use crate::objects::{self, ObjectSource, SourceError};
use crate::snapshot::{Extent, Node, NodeKind, SnapshotKind};
use crossbeam_channel::{Receiver, Sender, bounded, select, unbounded};
use omesh_proto::{ObjectId, ObjectKind};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Data extents per segment of a large file.
const SEGMENT_EXTENTS: usize = 8;

/// What to restore where.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Target directory (files snapshots) or file/device (image snapshots).
    pub target: PathBuf,
    /// Restore only these snapshot paths (and what is below them).
    pub includes: Vec<String>,
    /// Worker threads (default: available cores, at least 4 for I/O overlap).
    pub threads: Option<usize>,
}

/// Live counters.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Files completed.
    pub files: AtomicU64,
    /// Bytes written from fetched objects.
    pub bytes_written: AtomicU64,
    /// Bytes kept or copied from data already in the target.
    pub bytes_reused: AtomicU64,
    /// Total logical bytes planned (grows while planning).
    pub bytes_planned: AtomicU64,
}

/// Outcome of a restore.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreSummary {
    /// Snapshot id.
    pub snapshot: String,
    /// Target.
    pub target: String,
    /// Files restored or kept.
    pub files: u64,
    /// Files already identical in the target (only metadata applied).
    pub files_unchanged: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, fifos, devices, hardlinks.
    pub others: u64,
    /// Bytes written from fetched objects.
    pub bytes_written: u64,
    /// Bytes reused from the target.
    pub bytes_reused: u64,
    /// Seconds.
    pub seconds: f64,
    /// Entries that could not be restored. Non-empty means failure.
    pub errors: Vec<Warning>,
    /// Non-fatal problems (metadata that could not be applied).
    pub warnings: Vec<Warning>,
}

/// Errors that stop a restore before it writes anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// Target problem.
    #[error("restore target {path}: {reason}")]
    Target {
        /// target
        path: PathBuf,
        /// what is wrong
        reason: String,
    },
    /// An include path is not valid.
    #[error("--include {0:?}: {1}")]
    Include(String, String),
    /// The snapshot or its trees cannot be read.
    #[error("{0}")]
    Source(#[from] SourceError),
    /// Internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

struct DirState {
    fd: OwnedFd,
    /// Created by this restore: known to hold nothing we did not put there.
    fresh: bool,
    node: Option<Node>,
    path: String,
    pending: AtomicUsize,
    parent: Option<Arc<DirState>>,
}

enum LinkState {
    Waiting(Vec<LinkReq>),
    Ready(Arc<DirState>, OsString),
    Failed(String),
}

struct LinkGroup {
    state: Mutex<LinkState>,
}

struct LinkReq {
    dir: Arc<DirState>,
    name: OsString,
    path: String,
}

struct FileTask {
    dir: Arc<DirState>,
    name: OsString,
    node: Node,
    path: String,
    link: Option<Arc<LinkGroup>>,
}

/// A file being written in segments.
struct FileJob {
    task: FileTask,
    out: File,
    /// Temporary name to rename over the final one when done.
    tmp: Option<OsString>,
    /// Created directly under the final name (nothing was there): removed
    /// again if anything fails.
    fresh: bool,
    in_place: bool,
    old: Option<OldFile>,
    remaining: AtomicUsize,
    error: Mutex<Option<String>>,
}

struct OldFile {
    file: File,
    /// chunk id → offset of a matching chunk in the old file
    map: HashMap<ObjectId, u64>,
}

struct Segment {
    job: Arc<FileJob>,
    extents: Vec<(u64, Extent)>,
}

struct Ctx<'a> {
    src: &'a dyn ObjectSource,
    image: bool,
    umask: u32,
    euid: u32,
    egid: u32,
    chunker: Chunker,
    chown: bool,
    progress: Arc<RestoreProgress>,
    errors: Mutex<Vec<Warning>>,
    warnings: Mutex<Vec<Warning>>,
    counts: Mutex<(u64, u64, u64, u64)>, // files, unchanged, dirs, others
    seg_tx: Sender<Segment>,
}

impl Ctx<'_> {
    fn error(&self, path: &str, msg: impl Into<String>) {
        let message = msg.into();
        tracing::error!(path, "{message}");
        self.errors.lock().expect("errors lock").push(Warning { path: path.into(), message });
    }
    fn warn(&self, path: &str, msg: impl Into<String>) {
        let message = msg.into();
        tracing::warn!(path, "{message}");
        self.warnings.lock().expect("warnings lock").push(Warning { path: path.into(), message });
    }
    fn count(&self, f: impl FnOnce(&mut (u64, u64, u64, u64))) {
        f(&mut self.counts.lock().expect("counts lock"))
    }

    /// One child of `d` is finished; when all are, apply the directory's
    /// own metadata (after its contents, which would change its mtime) and
    /// tell its parent.
    fn release(&self, d: &Arc<DirState>) {
        if d.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(n) = &d.node {
                match fsops::apply_meta_fd(&d.fd, n, self.chown) {
                    Ok(w) => w.into_iter().for_each(|w| self.warn(&d.path, w)),
                    Err(e) => self.warn(&d.path, format!("directory metadata not restored: {e}")),
                }
            }
            if let Some(p) = &d.parent {
                self.release(p);
            }
        }
    }
}

/// Which part of the tree an entry falls in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sel {
    All,
    Partial,
    None,
}

fn parse_includes(includes: &[String]) -> Result<Vec<Vec<Vec<u8>>>, RestoreError> {
    includes
        .iter()
        .map(|s| {
            let comps: Vec<Vec<u8>> =
                s.split('/').filter(|c| !c.is_empty() && *c != ".").map(|c| c.as_bytes().to_vec()).collect();
            if comps.iter().any(|c| c == b"..") {
                return Err(RestoreError::Include(s.clone(), "must not contain '..'".into()));
            }
            Ok(comps)
        })
        .collect()
}

fn select(includes: &[Vec<Vec<u8>>], path: &[Vec<u8>]) -> Sel {
    if includes.is_empty() {
        return Sel::All;
    }
    let mut partial = false;
    for inc in includes {
        if inc.len() <= path.len() && path[..inc.len()] == inc[..] {
            return Sel::All;
        }
        if inc.len() > path.len() && inc[..path.len()] == path[..] {
            partial = true;
        }
    }
    if partial { Sel::Partial } else { Sel::None }
}

/// Restore snapshot `id` from `src`.
pub fn run(
    src: &dyn ObjectSource,
    id: &ObjectId,
    opts: &RestoreOptions,
    progress: Arc<RestoreProgress>,
) -> Result<RestoreSummary, RestoreError> {
    let started = Instant::now();
    let rec = src.snapshot(id)?;
    let includes = parse_includes(&opts.includes)?;
    let threads =
        opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)).max(1);
    let workers = threads.max(4);
    let (seg_tx, seg_rx) = unbounded::<Segment>();
    let ctx = Ctx {
        src,
        image: rec.kind == SnapshotKind::Image,
        umask: fsops::current_umask(),
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
        chunker: Chunker::new(src.keys().gear(), src.chunker_params()),
        chown: rustix::process::geteuid().is_root(),
        progress: progress.clone(),
        errors: Mutex::new(Vec::new()),
        warnings: Mutex::new(Vec::new()),
        counts: Mutex::new((0, 0, 0, 0)),
        seg_tx,
    };
    let root_nodes = objects::load_dir(src, &rec.tree)?;
    let target_display = opts.target.display().to_string();

    let (task_tx, task_rx) = bounded::<FileTask>(workers * 8);
    let target_fd: OwnedFd = match rec.kind {
        SnapshotKind::Files => {
            std::fs::create_dir_all(&opts.target)
                .map_err(|e| RestoreError::Target { path: opts.target.clone(), reason: e.to_string() })?;
            rustix::fs::open(
                &opts.target,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| RestoreError::Target {
                path: opts.target.clone(),
                reason: format!("not an accessible directory: {e}"),
            })?
        }
        SnapshotKind::Image => {
            if !includes.is_empty() {
                return Err(RestoreError::Include(
                    opts.includes[0].clone(),
                    "an image snapshot is restored whole".into(),
                ));
            }
            let parent = opts.target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            rustix::fs::open(
                parent,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| RestoreError::Target {
                path: parent.into(),
                reason: format!("directory of the image target is not accessible: {e}"),
            })?
        }
    };
    let sync_fd = rustix::io::dup(&target_fd).map_err(|e| RestoreError::Internal(e.to_string()))?;
    let root = Arc::new(DirState {
        fd: target_fd,
        fresh: false,
        node: None,
        path: target_display.clone(),
        pending: AtomicUsize::new(1),
        parent: None,
    });

    let plan_result = std::thread::scope(|s| -> Result<(), RestoreError> {
        let ctx = &ctx;
        let mut handles = Vec::new();
        for _ in 0..workers {
            let trx = task_rx.clone();
            let srx = seg_rx.clone();
            handles.push(s.spawn(move || worker(ctx, trx, srx)));
        }
        drop(task_rx);
        let r = match rec.kind {
            SnapshotKind::Files => {
                let mut planner = Planner { ctx, tx: task_tx, includes: &includes, links: HashMap::new() };
                planner.plan_dir(&root, root_nodes, &mut Vec::new(), Sel::Partial.max_if(includes.is_empty()))
            }
            SnapshotKind::Image => plan_image(ctx, &root, root_nodes, &opts.target, task_tx),
        };
        ctx.release(&root);
        for h in handles {
            h.join().map_err(|_| RestoreError::Internal("restore worker panicked".into()))?;
        }
        r
    });
    drop(root);
    plan_result?;
    if std::env::var_os("NOSYNC").is_none()
        && let Err(e) = rustix::fs::syncfs(&sync_fd)
    {
        ctx.error(&target_display, format!("flushing the restored data to disk failed: {e}"));
    }
    let (files, unchanged, dirs, others) = *ctx.counts.lock().expect("counts lock");
    let mut errors = std::mem::take(&mut *ctx.errors.lock().expect("errors lock"));
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    let warnings = std::mem::take(&mut *ctx.warnings.lock().expect("warnings lock"));
    Ok(RestoreSummary {
        snapshot: id.to_hex(),
        target: target_display,
        files,
        files_unchanged: unchanged,
        dirs,
        others,
        bytes_written: progress.bytes_written.load(Ordering::Relaxed),
        bytes_reused: progress.bytes_reused.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        errors,
        warnings,
    })
}

impl Sel {
    fn max_if(self, all: bool) -> Sel {
        if all { Sel::All } else { self }
    }
}

fn plan_image(
    ctx: &Ctx<'_>,
    root: &Arc<DirState>,
    nodes: Vec<Node>,
    target: &Path,
    tx: Sender<FileTask>,
) -> Result<(), RestoreError> {
    let node = match nodes.into_iter().next() {
        Some(n) if matches!(n.kind, NodeKind::File { .. }) => n,
        _ => {
            return Err(RestoreError::Source(SourceError {
                message: "image snapshot has no image file in its root tree".into(),
                damage: true,
            }));
        }
    };
    let name = target
        .file_name()
        .ok_or_else(|| RestoreError::Target { path: target.into(), reason: "needs a file or device name".into() })?;
    root.pending.fetch_add(1, Ordering::AcqRel);
    ctx.progress.bytes_planned.fetch_add(file_size(&node), Ordering::Relaxed);
    tx.send(FileTask {
        dir: root.clone(),
        name: name.to_os_string(),
        node,
        path: target.display().to_string(),
        link: None,
    })
    .map_err(|_| RestoreError::Internal("restore workers stopped".into()))
}

fn file_size(n: &Node) -> u64 {
    match &n.kind {
        NodeKind::File { size, .. } => *size,
        _ => 0,
    }
}

struct Planner<'c, 'a> {
    ctx: &'c Ctx<'a>,
    tx: Sender<FileTask>,
    includes: &'c [Vec<Vec<u8>>],
    links: HashMap<(u64, u64), Arc<LinkGroup>>,
}

fn display(path: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for c in path {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    if s.is_empty() { "/".into() } else { s }
}

impl Planner<'_, '_> {
    fn plan_dir(
        &mut self,
        dir: &Arc<DirState>,
        nodes: Vec<Node>,
        path: &mut Vec<Vec<u8>>,
        sel: Sel,
    ) -> Result<(), RestoreError> {
        for node in nodes {
            path.push(node.name.clone());
            let s = if sel == Sel::All { Sel::All } else { select(self.includes, path) };
            if s != Sel::None {
                self.plan_node(dir, node, path, s)?;
            }
            path.pop();
        }
        Ok(())
    }

    fn plan_node(
        &mut self,
        dir: &Arc<DirState>,
        node: Node,
        path: &mut Vec<Vec<u8>>,
        sel: Sel,
    ) -> Result<(), RestoreError> {
        let ctx = self.ctx;
        let p = display(path);
        let name = OsStr::from_bytes(&node.name).to_os_string();
        match &node.kind {
            NodeKind::Dir { tree } => {
                let tree = *tree;
                if sel == Sel::Partial && node.unreadable {
                    return Ok(());
                }
                let children = match objects::load_dir(ctx.src, &tree) {
                    Ok(c) => c,
                    Err(e) => {
                        ctx.error(&p, format!("directory not restored: {e}"));
                        return Ok(());
                    }
                };
                let (fd, fresh) = match fsops::ensure_dir_at(&dir.fd, &name) {
                    Ok(x) => x,
                    Err(e) => {
                        ctx.error(&p, format!("cannot create directory: {e}"));
                        return Ok(());
                    }
                };
                if node.unreadable {
                    ctx.warn(&p, "directory was unreadable at backup time; restored empty");
                }
                ctx.count(|c| c.2 += 1);
                dir.pending.fetch_add(1, Ordering::AcqRel);
                let sub = Arc::new(DirState {
                    fd,
                    fresh,
                    node: Some(node),
                    path: p,
                    pending: AtomicUsize::new(1),
                    parent: Some(dir.clone()),
                });
                let r = self.plan_dir(&sub, children, path, sel);
                ctx.release(&sub);
                r
            }
            NodeKind::File { .. } => {
                if node.unreadable {
                    ctx.error(
                        &p,
                        "not restored: the file was unreadable at backup time, so its content is not in the snapshot",
                    );
                    return Ok(());
                }
                ctx.progress.bytes_planned.fetch_add(file_size(&node), Ordering::Relaxed);
                let mut link = None;
                if node.nlink > 1 {
                    let key = (node.dev, node.inode);
                    if let Some(g) = self.links.get(&key) {
                        dir.pending.fetch_add(1, Ordering::AcqRel);
                        ctx.count(|c| c.3 += 1);
                        add_link(ctx, g, LinkReq { dir: dir.clone(), name, path: p });
                        return Ok(());
                    }
                    let g = Arc::new(LinkGroup { state: Mutex::new(LinkState::Waiting(Vec::new())) });
                    self.links.insert(key, g.clone());
                    link = Some(g);
                }
                dir.pending.fetch_add(1, Ordering::AcqRel);
                self.tx
                    .send(FileTask { dir: dir.clone(), name, node, path: p, link })
                    .map_err(|_| RestoreError::Internal("restore workers stopped".into()))
            }
            NodeKind::Symlink { target } => {
                let r = fsops::put_symlink(&dir.fd, &name, target)
                    .and_then(|_| fsops::apply_meta_at(&dir.fd, &name, &node, ctx.chown, true));
                self.special_done(&p, r);
                Ok(())
            }
            NodeKind::Fifo | NodeKind::CharDev { .. } | NodeKind::BlockDev { .. } => {
                let (ft, rdev) = match node.kind {
                    NodeKind::Fifo => (rustix::fs::FileType::Fifo, 0),
                    NodeKind::CharDev { rdev } => (rustix::fs::FileType::CharacterDevice, rdev),
                    NodeKind::BlockDev { rdev } => (rustix::fs::FileType::BlockDevice, rdev),
                    _ => unreachable!(),
                };
                let r = fsops::put_node(&dir.fd, &name, ft, rdev)
                    .and_then(|_| fsops::apply_meta_at(&dir.fd, &name, &node, ctx.chown, false));
                self.special_done(&p, r);
                Ok(())
            }
            NodeKind::Socket => {
                ctx.warn(&p, "unix socket not restored (sockets are created by their server)");
                Ok(())
            }
        }
    }

    fn special_done(&self, p: &str, r: std::io::Result<fsops::MetaWarnings>) {
        match r {
            Ok(w) => {
                self.ctx.count(|c| c.3 += 1);
                w.into_iter().for_each(|w| self.ctx.warn(p, w));
            }
            Err(e) => self.ctx.error(p, format!("not restored: {e}")),
        }
    }
}

fn add_link(ctx: &Ctx<'_>, g: &Arc<LinkGroup>, req: LinkReq) {
    let mut st = g.state.lock().expect("link lock");
    match &mut *st {
        LinkState::Waiting(v) => v.push(req),
        LinkState::Ready(d, n) => {
            let (d, n) = (d.clone(), n.clone());
            drop(st);
            do_link(ctx, &d, &n, req);
        }
        LinkState::Failed(m) => {
            let m = m.clone();
            drop(st);
            ctx.error(&req.path, format!("hard link not restored: {m}"));
            ctx.release(&req.dir);
        }
    }
}

fn complete_link(ctx: &Ctx<'_>, g: &Arc<LinkGroup>, result: Result<(Arc<DirState>, OsString), String>) {
    let waiting = {
        let mut st = g.state.lock().expect("link lock");
        let new = match &result {
            Ok((d, n)) => LinkState::Ready(d.clone(), n.clone()),
            Err(m) => LinkState::Failed(m.clone()),
        };
        match std::mem::replace(&mut *st, new) {
            LinkState::Waiting(v) => v,
            _ => Vec::new(),
        }
    };
    for req in waiting {
        match &result {
            Ok((d, n)) => do_link(ctx, d, n, req),
            Err(m) => {
                ctx.error(&req.path, format!("hard link not restored: {m}"));
                ctx.release(&req.dir);
            }
        }
    }
}

fn do_link(ctx: &Ctx<'_>, pdir: &Arc<DirState>, pname: &OsStr, req: LinkReq) {
    let tmp = fsops::tmp_name();
    let r = rustix::fs::linkat(&pdir.fd, pname, &req.dir.fd, &tmp, rustix::fs::AtFlags::empty())
        .map_err(std::io::Error::from)
        .and_then(|_| fsops::replace_at(&req.dir.fd, &tmp, &req.name));
    if let Err(e) = r {
        ctx.error(&req.path, format!("hard link not restored: {e}"));
    }
    ctx.release(&req.dir);
}

// ---------------------------------------------------------------- workers

fn worker(ctx: &Ctx<'_>, tasks: Receiver<FileTask>, segs: Receiver<Segment>) {
    loop {
        if let Ok(s) = segs.try_recv() {
            run_segment(ctx, s);
            continue;
        }
        select! {
            recv(segs) -> s => if let Ok(s) = s { run_segment(ctx, s) },
            recv(tasks) -> t => match t {
                Ok(t) => run_task(ctx, t),
                Err(_) => {
                    while let Ok(s) = segs.try_recv() {
                        run_segment(ctx, s);
                    }
                    return;
                }
            },
        }
    }
}

/// Check whether an existing file already holds exactly these extents.
fn matches_exactly(ctx: &Ctx<'_>, f: &File, extents: &[(u64, Extent)]) -> bool {
    let keys = ctx.src.keys();
    let mut buf = Vec::new();
    for (off, e) in extents {
        match e {
            Extent::Data { id, len } => {
                buf.resize(*len as usize, 0);
                if f.read_exact_at(&mut buf, *off).is_err() || keys.object_id(&buf) != *id {
                    return false;
                }
            }
            Extent::Hole { len } => {
                let mut pos = *off;
                let end = off + len;
                // a hole reads as zeros; check in bounded pieces
                while pos < end {
                    let n = (end - pos).min(1 << 20) as usize;
                    buf.resize(n, 0);
                    if f.read_exact_at(&mut buf, pos).is_err() || buf.iter().any(|&b| b != 0) {
                        return false;
                    }
                    pos += n as u64;
                }
            }
        }
    }
    true
}

/// Map chunk id → offset for the chunks of an existing file.
fn chunk_map(ctx: &Ctx<'_>, f: &File, size: u64, sparse: bool) -> HashMap<ObjectId, u64> {
    let mut map = HashMap::new();
    let keys = ctx.src.keys();
    let Ok(ranges) = crate::fsutil::data_ranges(f, size, sparse) else {
        return map;
    };
    for (start, len) in ranges {
        let mut off = start;
        let reader = ReadAt { f, pos: start };
        let _ = ctx.chunker.for_each_chunk(reader, len, |data| {
            map.entry(keys.object_id(&data)).or_insert(off);
            off += data.len() as u64;
            Ok(())
        });
    }
    map
}

struct ReadAt<'a> {
    f: &'a File,
    pos: u64,
}
impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn offsets(extents: Vec<Extent>) -> Vec<(u64, Extent)> {
    let mut off = 0;
    extents
        .into_iter()
        .map(|e| {
            let o = off;
            off += e.len();
            (o, e)
        })
        .collect()
}

fn run_task(ctx: &Ctx<'_>, task: FileTask) {
    let NodeKind::File { size, content } = &task.node.kind else { unreachable!("only files are tasks") };
    let size = *size;
    let extents = match objects::load_extents(ctx.src, content, size) {
        Ok(e) => offsets(e),
        Err(e) => return fail_task(ctx, task, format!("not restored: {e}")),
    };
    // image onto an existing block device: write in place
    let existing_dev = if ctx.image {
        rustix::fs::statat(&task.dir.fd, &task.name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .filter(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::BlockDevice)
    } else {
        None
    };
    if existing_dev.is_some() {
        let dev = match rustix::fs::openat(
            &task.dir.fd,
            &task.name,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(e) => return fail_task(ctx, task, format!("cannot open device: {e}")),
        };
        let devsize = dev
            .metadata()
            .map(|_| ())
            .ok()
            .and_then(|_| rustix::fs::seek(&dev, rustix::fs::SeekFrom::End(0)).ok())
            .unwrap_or(0);
        if devsize < size {
            return fail_task(ctx, task, format!("device holds {devsize} bytes but the image is {size} bytes"));
        }
        return start_job(ctx, task, dev, None, false, true, None, extents);
    }
    // existing regular file (not a symlink, not shared with other names);
    // a directory this restore created holds none
    let old = if task.dir.fresh {
        None
    } else {
        fsops::open_existing_file(&task.dir.fd, &task.name).filter(|(_, st)| st.st_nlink == 1)
    };
    if let Some((f, st)) = &old {
        if st.st_size as u64 == size && matches_exactly(ctx, f, &extents) {
            let r = fsops::apply_meta_fd(f, &task.node, ctx.chown);
            ctx.progress.bytes_reused.fetch_add(size, Ordering::Relaxed);
            ctx.count(|c| {
                c.0 += 1;
                c.1 += 1
            });
            ctx.progress.files.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok(w) => w.into_iter().for_each(|w| ctx.warn(&task.path, w)),
                Err(e) => ctx.warn(&task.path, format!("metadata not restored: {e}")),
            }
            if let Some(g) = &task.link {
                complete_link(ctx, g, Ok((task.dir.clone(), task.name.clone())));
            }
            ctx.release(&task.dir);
            return;
        }
    }
    let old = old.map(|(f, st)| {
        let sparse = (st.st_blocks as u64).saturating_mul(512) < st.st_size as u64;
        let map = chunk_map(ctx, &f, st.st_size as u64, sparse);
        OldFile { file: f, map }
    });
    // nothing under the name: create the final name exclusively (a
    // failure removes it again); something there: build a temporary file
    // and rename it over, so the old content stays until the new is whole
    let mode = task.node.mode & 0o777;
    let direct = if old.is_none() {
        match fsops::create_exclusive_mode(&task.dir.fd, &task.name, mode) {
            Ok(fd) => Some(File::from(fd)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => None,
            Err(e) => return fail_task(ctx, task, format!("cannot create file: {e}")),
        }
    } else {
        None
    };
    let (out, tmp, fresh) = match direct {
        Some(f) => (f, None, true),
        None => {
            let tmp = fsops::tmp_name();
            match fsops::create_exclusive(&task.dir.fd, &tmp) {
                Ok(fd) => (File::from(fd), Some(tmp), false),
                Err(e) => return fail_task(ctx, task, format!("cannot create file: {e}")),
            }
        }
    };
    // writes extend the file; only a trailing hole needs an explicit size
    if matches!(extents.last(), Some((_, Extent::Hole { .. }))) {
        if let Err(e) = out.set_len(size) {
            fsops::remove_tmp(&task.dir.fd, tmp.as_deref().unwrap_or(&task.name));
            return fail_task(ctx, task, format!("cannot size file: {e}"));
        }
    }
    start_job(ctx, task, out, tmp, fresh, false, old, extents);
}

#[allow(clippy::too_many_arguments)]
fn start_job(
    ctx: &Ctx<'_>,
    task: FileTask,
    out: File,
    tmp: Option<OsString>,
    fresh: bool,
    in_place: bool,
    old: Option<OldFile>,
    extents: Vec<(u64, Extent)>,
) {
    let data_count = extents.iter().filter(|(_, e)| matches!(e, Extent::Data { .. })).count();
    let segments: Vec<Vec<(u64, Extent)>> = if in_place || data_count > SEGMENT_EXTENTS {
        let mut v: Vec<Vec<(u64, Extent)>> = vec![Vec::new()];
        let mut n = 0;
        for e in extents {
            if n >= SEGMENT_EXTENTS {
                v.push(Vec::new());
                n = 0;
            }
            if matches!(e.1, Extent::Data { .. }) || in_place {
                n += 1;
            }
            v.last_mut().expect("non-empty").push(e);
        }
        v
    } else {
        vec![extents]
    };
    let job = Arc::new(FileJob {
        task,
        out,
        tmp,
        fresh,
        in_place,
        old,
        remaining: AtomicUsize::new(segments.len()),
        error: Mutex::new(None),
    });
    let mut iter = segments.into_iter();
    let first = iter.next().unwrap_or_default();
    for s in iter {
        let _ = ctx.seg_tx.send(Segment { job: job.clone(), extents: s });
    }
    run_segment(ctx, Segment { job, extents: first });
}

fn run_segment(ctx: &Ctx<'_>, seg: Segment) {
    let job = &seg.job;
    if job.error.lock().expect("job lock").is_none() {
        for (off, e) in &seg.extents {
            if let Err(m) = write_extent(ctx, job, *off, e) {
                let mut g = job.error.lock().expect("job lock");
                if g.is_none() {
                    *g = Some(m);
                }
                break;
            }
        }
    }
    if job.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        finish_job(ctx, seg.job);
    }
}

fn write_extent(ctx: &Ctx<'_>, job: &FileJob, off: u64, e: &Extent) -> Result<(), String> {
    let keys = ctx.src.keys();
    match e {
        Extent::Hole { len } => {
            if job.in_place {
                // a device keeps old bytes where the image has a hole: zero
                // them unless they already are
                let mut pos = off;
                let end = off + len;
                let mut buf = Vec::new();
                while pos < end {
                    let n = (end - pos).min(1 << 20) as usize;
                    buf.resize(n, 0);
                    job.out.read_exact_at(&mut buf, pos).map_err(|e| format!("read failed at offset {pos}: {e}"))?;
                    if buf.iter().any(|&b| b != 0) {
                        buf.iter_mut().for_each(|b| *b = 0);
                        job.out.write_all_at(&buf, pos).map_err(|e| format!("write failed at offset {pos}: {e}"))?;
                        ctx.progress.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
                    } else {
                        ctx.progress.bytes_reused.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    pos += n as u64;
                }
            }
            Ok(())
        }
        Extent::Data { id, len } => {
            let len = *len as usize;
            if job.in_place {
                let mut buf = vec![0u8; len];
                if job.out.read_exact_at(&mut buf, off).is_ok() && keys.object_id(&buf) == *id {
                    ctx.progress.bytes_reused.fetch_add(len as u64, Ordering::Relaxed);
                    return Ok(());
                }
            }
            if let Some(old) = &job.old {
                if let Some(&o) = old.map.get(id) {
                    let mut buf = vec![0u8; len];
                    if old.file.read_exact_at(&mut buf, o).is_ok() && keys.object_id(&buf) == *id {
                        job.out.write_all_at(&buf, off).map_err(|e| format!("write failed at offset {off}: {e}"))?;
                        ctx.progress.bytes_reused.fetch_add(len as u64, Ordering::Relaxed);
                        return Ok(());
                    }
                }
            }
            let data =
                ctx.src.get(id, ObjectKind::Blob).map_err(|e| format!("data at offset {off} not available: {e}"))?;
            if data.len() != len {
                return Err(format!("object {} has {} bytes, the file expects {len}", id.short(), data.len()));
            }
            job.out.write_all_at(&data, off).map_err(|e| format!("write failed at offset {off}: {e}"))?;
            ctx.progress.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
            Ok(())
        }
    }
}

fn finish_job(ctx: &Ctx<'_>, job: Arc<FileJob>) {
    let job = match Arc::try_unwrap(job) {
        Ok(j) => j,
        Err(_) => unreachable!("last segment holds the only reference"),
    };
    let FileJob { task, out, tmp, fresh, in_place, error, .. } = job;
    let err = error.into_inner().expect("job lock");
    if let Some(m) = err {
        if let Some(t) = &tmp {
            fsops::remove_tmp(&task.dir.fd, t);
        }
        if fresh {
            fsops::remove_tmp(&task.dir.fd, &task.name);
        }
        drop(out);
        return fail_task(ctx, task, format!("not restored: {m}"));
    }
    let meta = if in_place {
        Ok(Vec::new())
    } else if fresh {
        let created = (task.node.mode & 0o777) & !ctx.umask;
        fsops::apply_meta_known(&out, &task.node, ctx.chown, Some((created, ctx.euid, ctx.egid)))
    } else {
        fsops::apply_meta_fd(&out, &task.node, ctx.chown)
    };
    match meta {
        Ok(w) => w.into_iter().for_each(|w| ctx.warn(&task.path, w)),
        Err(e) => ctx.warn(&task.path, format!("metadata not restored: {e}")),
    }
    if in_place {
        if let Err(e) = out.sync_all() {
            return fail_task(ctx, task, format!("flushing the device failed: {e}"));
        }
    }
    drop(out);
    if let Some(t) = &tmp {
        if let Err(e) = fsops::replace_at(&task.dir.fd, t, &task.name) {
            return fail_task(ctx, task, format!("not restored: {e}"));
        }
    }
    ctx.count(|c| c.0 += 1);
    ctx.progress.files.fetch_add(1, Ordering::Relaxed);
    if let Some(g) = &task.link {
        complete_link(ctx, g, Ok((task.dir.clone(), task.name.clone())));
    }
    ctx.release(&task.dir);
}

fn fail_task(ctx: &Ctx<'_>, task: FileTask, msg: String) {
    ctx.error(&task.path, msg.clone());
    if let Some(g) = &task.link {
        complete_link(ctx, g, Err(format!("its first name {} failed", task.path)));
    }
    ctx.release(&task.dir);
}

/// Whether a path is a block device (for image targets).
pub fn is_block_device(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.file_type().is_block_device()).unwrap_or(false)
}
