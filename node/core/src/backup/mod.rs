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
mod finisher;
pub mod hook;
pub mod meta;
mod options;
mod packer;
mod pipeline;
mod read_ahead;
mod reader;
pub mod stream;
mod walker;
mod worker;

pub use options::{BackupError, BackupOptions, BackupSummary, ParentChoice, Progress, Warning, absolute};

use crate::chunker::Chunker;
use crate::snapshot::{Node, SnapshotKind, SnapshotRecord};
use crate::store::{Store, WriteStats};
use crossbeam_channel::bounded;
use exclude::Excludes;
use meta::NameCache;
use omesh_proto::ObjectId;
use options::{Res, normalise_roots};
use pipeline::{ChunkJob, Counts, Ctx, DirSlot, FileJob, PackItem, PendingDir, Slot};
use std::collections::HashMap;
use std::fs::{self};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

fn now_ns() -> i64 {
    crate::time::now_ns()
}

/// Run a backup into `store`, with its hooks: the pre hook first (its
/// failure aborts the backup before anything is read or written), the post
/// hook after, whatever happened (its failure is a warning of a saved
/// snapshot, and only logged beside a failed one). A dry run
/// ([`BackupOptions::dry_run`]) reads and chunks everything, writes
/// nothing (not even to a writable store) and runs no hooks.
pub fn run(store: &Store, opts: &BackupOptions, progress: Arc<Progress>) -> Res<BackupSummary> {
    if opts.dry_run {
        // nothing is saved, so there is nothing to make consistent
        return run_body(store, opts, progress);
    }
    let env = hook::HookEnv {
        source: store.config().source.clone(),
        paths: match (&opts.image, &opts.stdin) {
            (Some(i), _) => vec![i.display().to_string()],
            (None, Some(s)) => vec![s.path()],
            (None, None) => opts.paths.iter().map(|p| p.display().to_string()).collect(),
        },
        ..Default::default()
    };
    if let Some(pre) = &opts.hooks.pre {
        hook::run("pre", pre, opts.hooks.timeout, &env)
            .map_err(|e| BackupError::Hook(format!("{e}; nothing was backed up")))?;
    }
    let r = run_body(store, opts, progress);
    let Some(post) = &opts.hooks.post else { return r };
    let env = env.after(r.as_ref().map(|s| (&s.snapshot, !s.warnings.is_empty())).map_err(|e| e.to_string()));
    match (hook::run("post", post, opts.hooks.timeout, &env), r) {
        (Ok(()), r) => r,
        (Err(e), Ok(mut s)) => {
            tracing::warn!(error = %e, "post hook failed; the snapshot is saved");
            s.warnings.push(Warning { path: "(post hook)".into(), message: e });
            Ok(s)
        }
        (Err(e), Err(b)) => {
            tracing::error!(error = %e, "post hook failed too");
            Err(b)
        }
    }
}

fn run_body(store: &Store, opts: &BackupOptions, progress: Arc<Progress>) -> Res<BackupSummary> {
    let started = Instant::now();
    let start_ns = now_ns();
    // garbage collection waits for this session before sweeping anything
    // it condemned meanwhile (objects this backup writes or dedups against)
    let _session = store.session();
    let keys = store.keys()?.clone();
    let excludes = Excludes::new(&opts.excludes)
        .and_then(|e| e.with_markers(&opts.exclude_if_present, opts.exclude_caches))
        .map_err(BackupError::Options)?;
    let kind = if opts.image.is_some() { SnapshotKind::Image } else { SnapshotKind::Files };
    if opts.image.is_some() && !opts.paths.is_empty() {
        return Err(BackupError::Options("--image backs up one device or image; do not also give paths".into()));
    }
    if opts.stdin.is_some() && (opts.image.is_some() || !opts.paths.is_empty()) {
        return Err(BackupError::Options(
            "--stdin backs up one stream; do not also give paths or --image (with --stdin-from-command, the \
             command comes after `--`)"
                .into(),
        ));
    }
    if opts.image.is_none() && opts.paths.is_empty() && opts.stdin.is_none() {
        return Err(BackupError::Options("nothing to back up: give one or more paths (or --image DEVICE)".into()));
    }
    let roots: Vec<PathBuf> = match (&opts.image, &opts.stdin) {
        (Some(p), _) => vec![absolute(p)?],
        (None, Some(_)) => Vec::new(),
        (None, None) => normalise_roots(&opts.paths)?,
    };
    let paths: Vec<String> = match &opts.stdin {
        // the stream is the file /NAME of the snapshot
        Some(s) => vec![s.path()],
        None => roots.iter().map(|p| p.display().to_string()).collect(),
    };
    let host = opts.hostname.clone().unwrap_or_else(hostname);

    let parent = match &opts.parent {
        // a stream has no files to reuse
        _ if opts.stdin.is_some() => None,
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
            // what this run will likely cover: the parent's size, for a
            // percentage and an ETA before the walk has seen everything
            progress.bytes_expected.store(rec.bytes, std::sync::atomic::Ordering::Relaxed);
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
        dry: opts.dry_run.then(Default::default),
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
        let packer = s.spawn(move || packer::packer(ctx, pack_rx));
        for _ in 0..workers {
            let rx = chunk_rx.clone();
            let ptx = pack_tx.clone();
            s.spawn(move || worker::chunk_worker(ctx, rx, ptx));
        }
        drop(chunk_rx);
        for _ in 0..readers {
            let rx = file_rx.clone();
            let ctx_tx = chunk_tx.clone();
            let ptx = pack_tx.clone();
            s.spawn(move || reader::reader(ctx, rx, ctx_tx, ptx));
        }
        drop(file_rx);
        drop(chunk_tx);
        let fin_ptx = pack_tx.clone();
        drop(pack_tx);
        let finisher = s.spawn(move || finisher::finisher(ctx, dir_rx, fin_ptx));

        // metadata read-ahead: with a cold cache the walker would wait for
        // every directory and inode in turn; a second thread walking the
        // same tree ahead of it turns those waits into cache hits
        let walk_done = &walk_done;
        if opts.image.is_none() && opts.stdin.is_none() {
            let roots = &roots;
            s.spawn(move || read_ahead::read_ahead(ctx, roots, walk_done));
        }
        let mut walker = walker::Walker { ctx, file_tx, dir_tx, hardlinks: HashMap::new() };
        let walked = match (&opts.image, &opts.stdin) {
            (Some(img), _) => walker.image_root(img, root_slot.clone()),
            (None, Some(input)) => walker.stream_root(input, root_slot.clone()),
            (None, None) => walker.virtual_root(&roots, parent_root.as_deref(), root_slot.clone()),
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
    let id = if opts.dry_run { ObjectId::ZERO } else { store.write_snapshot(&rec)? };
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
        dry_run: opts.dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::ChunkerParams;
    use crate::snapshot::{Content, Extent, NodeKind};
    use crate::store::InitOptions;
    use omesh_proto::ObjectId;
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    fn store(dir: &Path) -> Store {
        let mut o = InitOptions::new("t");
        o.chunker = ChunkerParams { min_bytes: 4096, avg_bytes: 16384, max_bytes: 65536 };
        o.pack_bytes = 1 << 20;
        Store::init(&dir.join("store"), o).unwrap()
    }

    fn opts(paths: &[&Path]) -> BackupOptions {
        BackupOptions { paths: paths.iter().map(|p| p.to_path_buf()).collect(), ..Default::default() }
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        let mut r = crate::sample::Rng::new(seed as u64);
        r.bytes(n)
    }

    /// The root tree's nodes, down `path` (names of directories).
    fn dir(s: &Store, snap: &ObjectId, path: &[&str]) -> Vec<crate::snapshot::Node> {
        let rec = s.load_snapshot(snap).unwrap();
        let mut nodes = s.load_dir(&rec.tree).unwrap();
        for name in path {
            let n = nodes.iter().find(|n| n.name == name.as_bytes()).unwrap_or_else(|| panic!("no {name}"));
            let NodeKind::Dir { tree } = n.kind else { panic!("{name} is not a directory") };
            nodes = s.load_dir(&tree).unwrap();
        }
        nodes
    }

    fn parts(p: &Path) -> Vec<&str> {
        p.iter().skip(1).map(|c| c.to_str().unwrap()).collect()
    }

    #[test]
    fn the_walker_reuses_unchanged_files_and_reads_changed_ones() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a"), data(200_000, 1)).unwrap();
        std::fs::write(src.join("sub/b"), data(50_000, 2)).unwrap();
        let first = run(&s, &opts(&[&src]), Arc::default()).unwrap();
        // (dirs also counts the directories above the backed-up path)
        assert_eq!((first.files, first.files_unchanged), (2, 0), "{first:?}");
        assert_eq!(first.parent, None);
        std::fs::OpenOptions::new().append(true).open(src.join("sub/b")).unwrap().write_all(b"more").unwrap();
        let second = run(&s, &opts(&[&src]), Arc::default()).unwrap();
        assert_eq!(second.parent, Some(first.snapshot), "the previous snapshot of the same paths is the parent");
        assert_eq!(second.files_unchanged, 1, "{second:?}");
        assert!(second.bytes_read < 60_000, "only the changed file is read: {second:?}");
        let b = dir(&s, &second.snapshot, &[&parts(&src)[..], &["sub"]].concat());
        let NodeKind::File { size, .. } = b[0].kind else { panic!() };
        assert_eq!(size, 50_004);
    }

    #[test]
    fn excludes_and_the_store_itself_are_not_backed_up() {
        let t = tempfile::tempdir().unwrap();
        // the store lives inside the tree being backed up
        let s = store(t.path());
        std::fs::write(t.path().join("keep.txt"), b"keep").unwrap();
        std::fs::write(t.path().join("skip.tmp"), b"skip").unwrap();
        let mut o = opts(&[t.path()]);
        o.excludes = vec!["*.tmp".into()];
        let r = run(&s, &o, Arc::default()).unwrap();
        let names: Vec<String> = dir(&s, &r.snapshot, &parts(t.path())).iter().map(|n| n.name_lossy()).collect();
        assert_eq!(names, vec!["keep.txt"], "neither the excluded file nor the store itself");
    }

    #[test]
    fn the_reader_keeps_holes_and_hardlinks_share_one_content() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let f = std::fs::File::create(src.join("sparse")).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&data(10_000, 3), 4 << 20).unwrap();
        drop(f);
        std::fs::write(src.join("x"), data(30_000, 4)).unwrap();
        std::fs::hard_link(src.join("x"), src.join("y")).unwrap();
        let r = run(&s, &opts(&[&src]), Arc::default()).unwrap();
        assert!(r.bytes_read < 1 << 20, "holes are not read: {r:?}");
        let nodes = dir(&s, &r.snapshot, &parts(&src));
        let content = |name: &str| match &nodes.iter().find(|n| n.name == name.as_bytes()).unwrap().kind {
            NodeKind::File { content: Content::Inline(e), .. } => e.clone(),
            k => panic!("{k:?}"),
        };
        let sparse = content("sparse");
        assert!(matches!(sparse.first(), Some(Extent::Hole { .. })), "{sparse:?}");
        assert!(matches!(sparse.last(), Some(Extent::Hole { .. })), "{sparse:?}");
        assert_eq!(sparse.iter().map(|e| e.len()).sum::<u64>(), 8 << 20);
        assert_eq!(content("x"), content("y"));
    }

    #[test]
    fn the_finisher_splits_a_huge_directory_into_parts() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let src = t.path().join("many");
        std::fs::create_dir_all(&src).unwrap();
        let n = crate::snapshot::MAX_TREE_PART_ENTRIES + 100;
        for i in 0..n {
            std::fs::write(src.join(format!("f{i:05}")), []).unwrap();
        }
        let r = run(&s, &opts(&[&src]), Arc::default()).unwrap();
        let rec = s.load_snapshot(&r.snapshot).unwrap();
        // the parts read back as one sorted directory
        let nodes = dir(&s, &r.snapshot, &parts(&src));
        assert_eq!(nodes.len(), n);
        assert!(nodes.windows(2).all(|w| w[0].name < w[1].name));
        // and the head tree really links a second part
        let mut top = s.load_dir(&rec.tree).unwrap();
        for c in &parts(&src)[..parts(&src).len() - 1] {
            let NodeKind::Dir { tree } = top.iter().find(|x| x.name == c.as_bytes()).unwrap().kind else { panic!() };
            top = s.load_dir(&tree).unwrap();
        }
        let NodeKind::Dir { tree } = top[0].kind else { panic!() };
        let head = crate::objects::load_tree_part(&s as &dyn crate::objects::ObjectSource, &tree).unwrap();
        assert_eq!(head.more.len(), 1, "{} entries fit in two parts", n);
    }

    #[test]
    fn bad_paths_and_options_are_refused_before_anything_is_written() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let before = s.object_count().unwrap();
        let e = run(&s, &opts(&[&t.path().join("does-not-exist")]), Arc::default()).unwrap_err();
        assert!(matches!(e, BackupError::Path { .. }), "{e}");
        let e = run(&s, &BackupOptions::default(), Arc::default()).unwrap_err();
        assert!(matches!(e, BackupError::Options(_)), "{e}");
        let mut o = opts(&[t.path()]);
        o.excludes = vec!["[".into()];
        assert!(matches!(run(&s, &o, Arc::default()).unwrap_err(), BackupError::Options(_)));
        assert_eq!(s.object_count().unwrap(), before);
        assert!(s.snapshot_ids().unwrap().is_empty());
    }

    #[test]
    fn a_dry_run_writes_nothing_and_counts_what_the_real_run_adds() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a"), data(300_000, 5)).unwrap();
        std::fs::write(src.join("sub/b"), data(70_000, 6)).unwrap();
        std::fs::write(src.join("sub/a-again"), data(300_000, 5)).unwrap();
        let before = s.object_count().unwrap();
        let mut o = opts(&[&src]);
        o.dry_run = true;
        // the first read of a directory after it changed moves its atime,
        // which the backup records: the runs compared come after one read
        run(&s, &o, Arc::default()).unwrap();
        let dry = run(&s, &o, Arc::default()).unwrap();
        assert!(dry.dry_run && dry.snapshot == ObjectId::ZERO, "{dry:?}");
        assert_eq!(s.object_count().unwrap(), before, "a dry run writes no object");
        assert!(s.snapshot_ids().unwrap().is_empty(), "and no snapshot");
        let real = run(&s, &opts(&[&src]), Arc::default()).unwrap();
        assert_eq!(
            (dry.files, dry.bytes, dry.objects_added, dry.bytes_added),
            (real.files, real.bytes, real.objects_added, real.bytes_added),
            "the dry run counts exactly what the real run added"
        );
        // on a store opened read-only (a daemon holds the lock) it works too,
        // and with everything stored it would add nothing
        drop(s);
        let ro =
            Store::open(&t.path().join("store"), crate::store::Access::Read, crate::store::KeySource::Default).unwrap();
        let again = run(&ro, &o, Arc::default()).unwrap();
        assert_eq!((again.objects_added, again.bytes_added, again.files), (0, 0, 3), "{again:?}");
    }

    #[test]
    fn a_stream_is_stored_as_one_file_and_a_failing_producer_saves_nothing() {
        use stream::{CommandStream, PlainStream, StreamInput};
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let bytes = data(900_000, 7);
        let input = StreamInput::new("db.sql", Box::new(PlainStream(std::io::Cursor::new(bytes.clone())))).unwrap();
        let mut o = BackupOptions { stdin: Some(input), ..Default::default() };
        let r = run(&s, &o, Arc::default()).unwrap();
        assert_eq!((r.files, r.bytes), (1, 900_000), "{r:?}");
        let rec = s.load_snapshot(&r.snapshot).unwrap();
        assert_eq!(rec.paths, vec!["/db.sql".to_string()]);
        let root = s.load_dir(&rec.tree).unwrap();
        assert_eq!((root.len(), root[0].name.as_slice(), root[0].mode), (1, &b"db.sql"[..], 0o600));
        let NodeKind::File { size, content: Content::Inline(ext) } = &root[0].kind else { panic!() };
        assert_eq!(*size, 900_000);
        let mut back = Vec::new();
        for e in ext {
            let Extent::Data { id, .. } = e else { panic!("a stream has no holes") };
            back.extend(crate::objects::ObjectSource::get(&s, id, omesh_proto::ObjectKind::Blob).unwrap());
        }
        assert!(back == bytes, "the stored file is the stream");
        // a command that writes something and then fails: no snapshot
        let argv: Vec<std::ffi::OsString> =
            ["sh", "-c", "head -c 200000 /dev/urandom; exit 2"].iter().map(Into::into).collect();
        o.stdin = Some(StreamInput::new("db.sql", Box::new(CommandStream::new(&argv).unwrap())).unwrap());
        let e = run(&s, &o, Arc::default()).unwrap_err();
        assert!(matches!(e, BackupError::Stream(_)) && e.to_string().contains("no snapshot was saved"), "{e}");
        assert_eq!(s.snapshot_ids().unwrap(), vec![r.snapshot], "only the first snapshot exists");
        // a stream with paths is refused
        o.paths = vec![t.path().into()];
        o.stdin = Some(StreamInput::new("x", Box::new(PlainStream(std::io::empty()))).unwrap());
        assert!(matches!(run(&s, &o, Arc::default()).unwrap_err(), BackupError::Options(_)));
    }
}
