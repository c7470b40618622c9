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
mod options;
mod plan;
mod reuse;
mod state;
mod worker;

pub use options::{RestoreError, RestoreOptions, RestoreProgress, RestoreSummary};

use crate::chunker::Chunker;
use crate::objects::{self, ObjectSource};
use crate::snapshot::{Node, NodeKind, SnapshotKind};
use crossbeam_channel::{bounded, unbounded};
use omesh_proto::ObjectId;
use plan::{Planner, Sel, parse_includes, plan_image};
use state::{Ctx, DirState, FileTask, Segment};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Restore snapshot `id` from `src`.
pub fn run(
    src: &dyn ObjectSource,
    id: &ObjectId,
    opts: &RestoreOptions,
    progress: Arc<RestoreProgress>,
) -> Result<RestoreSummary, RestoreError> {
    let started = Instant::now();
    let rec = src.snapshot(id)?;
    let (includes, excludes) = selection(opts)?;
    if includes.is_empty() && opts.excludes.is_empty() {
        progress.bytes_total.store(rec.bytes, Ordering::Relaxed);
    }
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
    if rec.kind == SnapshotKind::Files {
        includes_exist(src, id, &root_nodes, opts, &includes)?;
    }

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
            handles.push(s.spawn(move || worker::worker(ctx, trx, srx)));
        }
        drop(task_rx);
        let r = match rec.kind {
            SnapshotKind::Files => {
                let mut planner =
                    Planner { ctx, tx: task_tx, includes: &includes, excludes: &excludes, links: HashMap::new() };
                planner.plan_dir(&root, root_nodes, &mut Vec::new(), Sel::Partial.max_if(includes.is_empty()))
            }
            SnapshotKind::Image => plan_image(ctx, &root, root_nodes, &opts.target, task_tx),
        };
        ctx.progress.planned_all.store(true, Ordering::Relaxed);
        ctx.release(&root);
        for h in handles {
            h.join().map_err(|_| RestoreError::Internal("restore worker panicked".into()))?;
        }
        r
    });
    drop(root);
    plan_result?;
    if let Err(e) = rustix::fs::syncfs(&sync_fd) {
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

/// Include paths, each as its components.
type Includes = Vec<Vec<Vec<u8>>>;

/// The includes and excludes of `opts`, parsed and compiled.
fn selection(opts: &RestoreOptions) -> Result<(Includes, crate::backup::exclude::Excludes), RestoreError> {
    let includes = parse_includes(&opts.includes)?;
    let excludes = crate::backup::exclude::Excludes::new(&opts.excludes)
        .map_err(|e| RestoreError::Include(opts.excludes.join(" "), e))?;
    Ok((includes, excludes))
}

/// Every include must name something in the snapshot: a mistyped one would
/// restore nothing and look like success. Checked before anything is written.
fn includes_exist(
    src: &dyn ObjectSource,
    id: &ObjectId,
    root_nodes: &[Node],
    opts: &RestoreOptions,
    includes: &[Vec<Vec<u8>>],
) -> Result<(), RestoreError> {
    for (raw, inc) in opts.includes.iter().zip(includes) {
        if !in_snapshot(src, root_nodes, inc)? {
            return Err(RestoreError::Include(
                raw.clone(),
                format!(
                    "snapshot {} holds no such path (nothing was restored); list what it holds with `omesh ls {} DIR`",
                    id.short(),
                    id.short()
                ),
            ));
        }
    }
    Ok(())
}

/// What a restore of `id` with `opts` would restore (`restore --dry-run`):
/// the same selection (includes, excludes) walked without a target; no
/// data object is read, and nothing is written anywhere.
pub fn dry_run(src: &dyn ObjectSource, id: &ObjectId, opts: &RestoreOptions) -> Result<DryRun, RestoreError> {
    let rec = src.snapshot(id)?;
    let (includes, excludes) = selection(opts)?;
    let root_nodes = objects::load_dir(src, &rec.tree)?;
    if rec.kind == SnapshotKind::Files {
        includes_exist(src, id, &root_nodes, opts, &includes)?;
    }
    let mut out = DryRun { snapshot: id.to_hex(), ..Default::default() };
    let mut seen_links: std::collections::HashSet<(u64, u64)> = Default::default();
    let mut stack: Vec<(Vec<Vec<u8>>, Node, Sel)> = Vec::new();
    let top = Sel::Partial.max_if(includes.is_empty());
    for n in root_nodes.into_iter().rev() {
        stack.push((vec![], n, top));
    }
    while let Some((mut path, node, sel)) = stack.pop() {
        path.push(node.name.clone());
        let s = if sel == Sel::All { Sel::All } else { plan::select(&includes, &path) };
        if s == Sel::None || excludes.is_excluded(&plan::os_path(&path), &node.name) {
            continue;
        }
        if path.len() > crate::browse::MAX_DEPTH {
            return Err(RestoreError::Internal(format!("{}: nested too deep", plan::display(&path))));
        }
        let shown = plan::display(&path);
        match &node.kind {
            NodeKind::Dir { tree } => {
                // a directory on the way to an include is created, not restored
                if s == Sel::All {
                    out.dirs += 1;
                    out.paths.push(shown);
                }
                for c in objects::load_dir(src, tree)?.into_iter().rev() {
                    stack.push((path.clone(), c, s));
                }
            }
            NodeKind::File { size, .. } => {
                if node.unreadable {
                    out.unreadable.push(shown);
                    continue;
                }
                // a further name of a hard-link group is a link, as restore counts it
                if node.nlink <= 1 || seen_links.insert((node.dev, node.inode)) {
                    out.files += 1;
                    out.bytes += size;
                } else {
                    out.others += 1;
                }
                out.paths.push(shown);
            }
            NodeKind::Socket => {}
            _ => {
                out.others += 1;
                out.paths.push(shown);
            }
        }
    }
    Ok(out)
}

/// What `restore --dry-run` reports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DryRun {
    /// Snapshot id.
    pub snapshot: String,
    /// Files that would be restored.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, devices, fifos, and further names of hard-link groups.
    pub others: u64,
    /// Logical bytes of those files (each hard-link group once).
    pub bytes: u64,
    /// Files that would be skipped: unreadable at backup time.
    pub unreadable: Vec<String>,
    /// Every path that would be restored, in order.
    pub paths: Vec<String>,
}

/// Whether `path` (components below the snapshot's root) names an entry of
/// the tree whose root entries are `nodes`. One tree read per component.
fn in_snapshot(src: &dyn ObjectSource, nodes: &[Node], path: &[Vec<u8>]) -> Result<bool, RestoreError> {
    let mut owned: Vec<Node>;
    let mut here = nodes;
    for (i, c) in path.iter().enumerate() {
        let Some(n) = here.iter().find(|n| &n.name == c) else { return Ok(false) };
        if i + 1 == path.len() {
            return Ok(true);
        }
        match &n.kind {
            NodeKind::Dir { tree } => {
                owned = objects::load_dir(src, tree)?;
                here = &owned;
            }
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Whether a path is a block device (for image targets).
pub fn is_block_device(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.file_type().is_block_device()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{self, BackupOptions};
    use crate::store::{InitOptions, Store};
    use std::path::PathBuf;

    fn backed_up(t: &Path) -> (Store, ObjectId, PathBuf) {
        let s = Store::init(&t.join("store"), InitOptions::new("t")).unwrap();
        let src = t.join("src");
        std::fs::create_dir_all(src.join("etc/nginx")).unwrap();
        std::fs::create_dir_all(src.join("var")).unwrap();
        std::fs::write(src.join("etc/nginx/nginx.conf"), b"worker_processes 4;").unwrap();
        std::fs::write(src.join("etc/passwd"), b"root:x:0:0").unwrap();
        std::fs::write(src.join("var/log"), b"log").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("etc/link")).unwrap();
        let opts = BackupOptions { paths: vec![src.clone()], ..Default::default() };
        let r = backup::run(&s, &opts, Arc::default()).unwrap();
        (s, r.snapshot, src)
    }

    fn below(target: &Path, src: &Path) -> PathBuf {
        target.join(src.strip_prefix("/").unwrap())
    }

    #[test]
    fn the_planner_restores_only_what_is_included() {
        let t = tempfile::tempdir().unwrap();
        let (s, id, src) = backed_up(t.path());
        let target = t.path().join("target");
        let inc = format!("{}/etc/nginx", src.display());
        let opts =
            RestoreOptions { target: target.clone(), includes: vec![inc], threads: Some(2), ..Default::default() };
        let r = run(&s, &id, &opts, Arc::default()).unwrap();
        assert!(r.errors.is_empty(), "{r:?}");
        let root = below(&target, &src);
        assert_eq!(std::fs::read(root.join("etc/nginx/nginx.conf")).unwrap(), b"worker_processes 4;");
        assert!(!root.join("etc/passwd").exists());
        assert!(!root.join("var").exists());
        assert_eq!(r.files, 1);
    }

    #[test]
    fn a_symlink_planted_in_the_target_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (s, id, src) = backed_up(t.path());
        let target = t.path().join("target");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        // where restore will write etc/, an attacker put a link outside
        let root = below(&target, &src);
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        let opts = RestoreOptions { target: target.clone(), threads: Some(2), ..Default::default() };
        let r = run(&s, &id, &opts, Arc::default()).unwrap();
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside the target");
        assert!(std::fs::symlink_metadata(root.join("etc")).unwrap().is_dir());
        assert_eq!(std::fs::read_link(root.join("etc/link")).unwrap(), Path::new("/etc/passwd"));
    }

    #[test]
    fn an_unchanged_target_is_kept_and_a_changed_file_rebuilt() {
        let t = tempfile::tempdir().unwrap();
        let (s, id, src) = backed_up(t.path());
        let target = t.path().join("target");
        let opts = RestoreOptions { target: target.clone(), threads: Some(2), ..Default::default() };
        run(&s, &id, &opts, Arc::default()).unwrap();
        let again = run(&s, &id, &opts, Arc::default()).unwrap();
        assert_eq!(again.files_unchanged, again.files, "{again:?}");
        assert_eq!(again.bytes_written, 0);
        let f = below(&target, &src).join("etc/passwd");
        std::fs::write(&f, b"tampered!!").unwrap();
        let third = run(&s, &id, &opts, Arc::default()).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"root:x:0:0");
        assert_eq!(third.files_unchanged, third.files - 1);
    }
}
