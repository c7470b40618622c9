//! Garbage collection: reclaim objects no snapshot references, while
//! backups and incoming replicas keep writing.
//!
//! There is no exclusive lock. A run has three steps, with progress kept in
//! `DIR/gc.redb` so a killed run resumes where it stopped:
//!
//! 1. **Mark** everything reachable from the snapshots present, with the
//!    store's graph walker (`walk`) over a frontier kept in `gc.redb` beside
//!    the marks and committed in batches: an object is marked when it is
//!    discovered and leaves the frontier once its links are marked, so a
//!    resumed walk continues exactly where it stopped, cycles end, and
//!    memory is one batch, not the store.
//! 2. **Sweep** the set condemned by an earlier step 3, once (a) the grace
//!    period has passed, (b) every backup in flight when it was condemned
//!    has ended, and then, holding the store's sweep lock (which excludes
//!    every "is it present?" answer to a writer and every snapshot commit):
//!    (c) snapshots committed since the mark are marked too, and (d)
//!    objects a writer was told are present since condemnation ("rescued")
//!    are spared. Everything else condemned and still unmarked leaves the
//!    index.
//! 3. **Condemn** whatever is unmarked now, recording the time and the
//!    backups in flight. With no grace period and nothing in flight it is
//!    swept at once.
//!
//! Then packs are reclaimed: a pack with nothing live is retired, one with
//! at least `repack_unused` of its bytes unreferenced is rewritten with only
//! its live objects, and then more packs, the most unreferenced first, until
//! the unreferenced bytes left are at most `max_unused` of the live bytes
//! (so a store after forget and gc is within that of a clean store of the
//! same snapshots; `max_repack_bytes` bounds the copying). Retired packs wait in `trash/` for one grace period so
//! a reader that looked an object up before the move still finds it.
//!
//! Why nothing live is lost: an object a snapshot references is marked
//! (step 2c covers snapshots committed during the run). An object a backup
//! in flight will reference was either written or deduplicated by it before
//! condemnation (the backup was in flight, so the sweep waits for it to
//! commit, which marks the object) or deduplicated after (rescued, 2d), or
//! reused from its parent snapshot (marked). A replica's snapshot is
//! committed only after its objects are checked present under the same
//! lock, so a sweep cannot slip between the check and the commit.
//!
//! The mark refuses to go on when a referenced object is missing or
//! unreadable: what lies below it is unknown, so nothing may be condemned
//! (run `omesh scrub` or `omesh verify` first).

pub use super::gcdb::GcDbError;
use super::gcdb::{Batch, CONDEMNED, FRONTIER, GcDb, MARKED_SNAPSHOTS, MARKS, pending_condemned};
use super::walk::{DEFAULT_LIMIT, Frontier, GraphWalk, Visit, WalkError, resolve_local};
use crate::store::index::Location;
use crate::store::{RepackStats, Store, StoreError};
use crate::units::ByteSize;
use omesh_proto::ObjectId;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Bytes of a pack before its first record.
const PACK_HEADER: u64 = crate::store::pack::PACK_MAGIC.len() as u64;

/// Objects marked per transaction.
const MARK_BATCH: usize = 50_000;

/// Tuning.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Condemned objects are swept no earlier than this; retired packs are
    /// deleted no earlier than this.
    pub grace: Duration,
    /// Rewrite a pack when at least this fraction of it is unreferenced.
    pub repack_unused: f64,
    /// Then rewrite the most unreferenced packs until the unreferenced
    /// bytes left are at most this fraction of the live bytes.
    pub max_unused: f64,
    /// Most live bytes rewritten per run (bounds one run's I/O).
    pub max_repack_bytes: u64,
    /// Set (by a stopping daemon) to end the run after the mark batch in
    /// progress; the marks so far are kept and the next run resumes.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            repack_unused: d_repack(),
            max_unused: d_max_unused(),
            max_repack_bytes: 4 << 30,
            stop: None,
        }
    }
}

/// `[gc]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Condemned objects wait at least this long before they are swept.
    #[serde(default = "d_grace")]
    pub grace_secs: u64,
    /// Rewrite a pack when this fraction of it is unreferenced.
    #[serde(default = "d_repack")]
    pub repack_unused: f64,
    /// Then rewrite the most unreferenced packs until the unreferenced
    /// bytes left are at most this fraction of the live bytes.
    #[serde(default = "d_max_unused")]
    pub max_unused: f64,
    /// Most live data rewritten per run.
    #[serde(default = "d_max_repack")]
    pub max_repack: ByteSize,
}

fn d_grace() -> u64 {
    3600
}
fn d_repack() -> f64 {
    0.2
}
fn d_max_unused() -> f64 {
    // 1% left unreferenced, plus packing differences, keeps a store within
    // 2% of a clean one (at 2% it was at the edge: 2.1% in one run)
    0.01
}
fn d_max_repack() -> ByteSize {
    ByteSize(4 << 30)
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace_secs: d_grace(),
            repack_unused: d_repack(),
            max_unused: d_max_unused(),
            max_repack: d_max_repack(),
        }
    }
}

impl GcConfig {
    /// As options.
    pub fn options(&self) -> GcOptions {
        GcOptions {
            grace: Duration::from_secs(self.grace_secs),
            repack_unused: self.repack_unused,
            max_unused: self.max_unused,
            max_repack_bytes: self.max_repack.0,
            stop: None,
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Store directory.
    pub store: String,
    /// Snapshots whose objects were marked.
    pub snapshots: u64,
    /// Objects marked live.
    pub marked: u64,
    /// Objects swept from the index this run.
    pub swept: u64,
    /// Condemned objects spared because a writer used them.
    pub rescued: u64,
    /// Objects condemned (swept by a later run, or this one).
    pub condemned: u64,
    /// Why a condemned set is not swept yet.
    pub waiting: Option<String>,
    /// Packs rewritten or retired.
    pub repack: RepackStats,
    /// Bytes of retired packs deleted from `trash/`.
    pub trash_freed: u64,
    /// Store size before and after (pack bytes in the index).
    pub bytes_before: u64,
    /// After.
    pub bytes_after: u64,
    /// Whether the mark resumed an interrupted run.
    pub resumed: bool,
    /// Seconds.
    pub seconds: f64,
}

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The progress database.
    #[error(transparent)]
    Db(#[from] GcDbError),
    /// A snapshot references an object that cannot be read.
    #[error(
        "store {store}: snapshot {snapshot} references object {object} that is {why}; garbage collection stopped without removing anything (run `omesh scrub` to repair it from a replica, or `omesh verify`)"
    )]
    Damaged {
        /// store
        store: String,
        /// snapshot
        snapshot: String,
        /// object
        object: String,
        /// missing or why unreadable
        why: String,
    },
    /// The run was told to stop.
    #[error(
        "garbage collection stopped because the node is shutting down; its progress is kept and the next run resumes"
    )]
    Stopped,
}

/// The mark's frontier, in `gc.redb` beside the marks (one write
/// transaction per batch), so a killed mark resumes exactly: an object is
/// marked when it is discovered and stays in `FRONTIER` until its links are
/// marked too. So once the frontier is empty, everything reachable from
/// the snapshots walked is marked.
struct GcFrontier<'t> {
    marks: redb::Table<'t, [u8; 32], ()>,
    frontier: redb::Table<'t, [u8; 32], ()>,
}

impl Frontier for GcFrontier<'_> {
    type Error = redb::StorageError;

    fn discover(&mut self, id: ObjectId) -> Result<bool, Self::Error> {
        if self.marks.get(id.0)?.is_some() {
            return Ok(false);
        }
        self.marks.insert(id.0, ())?;
        self.frontier.insert(id.0, ())?;
        Ok(true)
    }

    fn take(&mut self, max: usize) -> Result<Vec<ObjectId>, Self::Error> {
        let mut out = Vec::new();
        for r in self.frontier.iter()? {
            out.push(ObjectId(r?.0.value()));
            if out.len() >= max {
                break;
            }
        }
        for id in &out {
            self.frontier.remove(id.0)?;
        }
        Ok(out)
    }
}

/// Mark everything reachable from `snaps` not marked yet (continuing an
/// interrupted walk first). Returns (snapshots newly marked, objects newly
/// marked).
fn mark(store: &Store, db: &GcDb, snaps: &[ObjectId], stop: Option<&AtomicBool>) -> Result<(u64, u64), GcError> {
    let stopped = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let mut done_snaps = 0;
    let mut marked = 0;
    let store_name = store.dir().display().to_string();
    for snap in snaps {
        {
            let tx = db.db.begin_read().map_err(|e| db.err(e))?;
            if tx.open_table(MARKED_SNAPSHOTS).map_err(|e| db.err(e))?.get(snap.0).map_err(|e| db.err(e))?.is_some() {
                continue;
            }
        }
        let raw = match store.read_snapshot_record(snap) {
            Ok(r) => r,
            // forgotten while we were starting: nothing to mark
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let (_, roots) = omesh_proto::record::links_of(&raw).map_err(|e| GcError::Damaged {
            store: store_name.clone(),
            snapshot: snap.short(),
            object: snap.short(),
            why: format!("unreadable ({e})"),
        })?;
        let damaged = |object: &ObjectId, why: String| GcError::Damaged {
            store: store_name.clone(),
            snapshot: snap.short(),
            object: object.short(),
            why,
        };
        let mut roots = Some(roots);
        loop {
            // between batches: everything marked so far is committed
            if stopped() {
                return Err(GcError::Stopped);
            }
            let tx = db.db.begin_write().map_err(|e| db.err(e))?;
            let done = {
                let marks = tx.open_table(MARKS).map_err(|e| db.err(e))?;
                let frontier = tx.open_table(FRONTIER).map_err(|e| db.err(e))?;
                let mut walk = GraphWalk::new(GcFrontier { marks, frontier }, DEFAULT_LIMIT);
                let werr = |e: WalkError<redb::StorageError>| -> GcError {
                    match e {
                        WalkError::Frontier(e) => db.err(e).into(),
                        WalkError::TooLarge(t) => damaged(snap, t.to_string()),
                    }
                };
                if let Some(r) = roots.take() {
                    walk.discover_all(&r).map_err(werr)?;
                }
                let mut steps = 0;
                let done = loop {
                    let batch = walk.next_batch((MARK_BATCH - steps).min(4096)).map_err(werr)?;
                    if batch.is_empty() {
                        break true;
                    }
                    steps += batch.len();
                    for id in batch {
                        let v =
                            resolve_local(store, &id, None).map_err(|e| damaged(&id, format!("unreadable ({e})")))?;
                        if v == Visit::Missing {
                            return Err(damaged(&id, "missing".into()));
                        }
                        walk.visit(&v).map_err(werr)?;
                    }
                    if steps >= MARK_BATCH {
                        break false;
                    }
                };
                marked += walk.discovered();
                crate::failpoint::hit("gc.mark_batch");
                done
            };
            if done {
                tx.open_table(MARKED_SNAPSHOTS).map_err(|e| db.err(e))?.insert(snap.0, ()).map_err(|e| db.err(e))?;
                done_snaps += 1;
            }
            tx.commit().map_err(|e| db.err(e))?;
            if done {
                break;
            }
        }
    }
    Ok((done_snaps, marked))
}

fn now_ns(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Why `batch` cannot be swept yet (None: it can).
fn sweep_blocker(store: &Store, batch: &Batch, grace: Duration, now: SystemTime) -> Option<String> {
    let age_ns = now_ns(now) - batch.condemned_at_ns;
    if age_ns < grace.as_nanos() as i64 {
        let left = (grace.as_nanos() as i64 - age_ns) / 1_000_000_000;
        return Some(format!("{} condemned objects wait {left}s more (grace period)", batch.objects));
    }
    if !store.sessions_ended(batch.instance, &batch.sessions) {
        return Some(format!(
            "{} condemned objects wait for a backup that was running when they were condemned",
            batch.objects
        ));
    }
    None
}

/// Sweep `batch` (its conditions hold). Returns (swept, rescued).
fn sweep(store: &Store, db: &GcDb) -> Result<(u64, u64), GcError> {
    // snapshots committed since the mark (outside the lock: usually all of them)
    mark(store, db, &store.snapshot_ids()?, None)?;
    let _excl = store.sweep_guard();
    // and any committed in between
    mark(store, db, &store.snapshot_ids()?, None)?;
    let rescued = store.rescued();
    let tx = db.db.begin_read().map_err(|e| db.err(e))?;
    let marks = tx.open_table(MARKS).map_err(|e| db.err(e))?;
    let condemned = tx.open_table(CONDEMNED).map_err(|e| db.err(e))?;
    let mut doomed = Vec::new();
    let mut swept = 0;
    let mut spared = 0;
    for r in condemned.iter().map_err(|e| db.err(e))? {
        let (k, _) = r.map_err(|e| db.err(e))?;
        let id = ObjectId(k.value());
        if marks.get(id.0).map_err(|e| db.err(e))?.is_some() {
            continue;
        }
        if rescued.contains(&id) {
            spared += 1;
            continue;
        }
        doomed.push(id);
        if doomed.len() >= MARK_BATCH {
            swept += store.remove_objects(&doomed)?;
            doomed.clear();
        }
    }
    swept += store.remove_objects(&doomed)?;
    store.set_condemned(None);
    drop(condemned);
    drop(marks);
    drop(tx);
    db.clear_condemned()?;
    crate::failpoint::hit("gc.after_sweep");
    Ok((swept, spared))
}

/// Condemn every indexed object that is not marked. Returns the count.
fn condemn(store: &Store, db: &GcDb, now: SystemTime) -> Result<u64, GcError> {
    let tx = db.db.begin_read().map_err(|e| db.err(e))?;
    let marks = tx.open_table(MARKS).map_err(|e| db.err(e))?;
    let mut unmarked: Vec<ObjectId> = Vec::new();
    let mut err = None;
    let mut total = 0u64;
    let mut flush = |ids: &mut Vec<ObjectId>| -> Result<(), GcError> {
        if ids.is_empty() {
            return Ok(());
        }
        let w = db.db.begin_write().map_err(|e| db.err(e))?;
        {
            let mut t = w.open_table(CONDEMNED).map_err(|e| db.err(e))?;
            for id in ids.iter() {
                t.insert(id.0, ()).map_err(|e| db.err(e))?;
            }
        }
        w.commit().map_err(|e| db.err(e))?;
        total += ids.len() as u64;
        ids.clear();
        Ok(())
    };
    // the sessions in flight now: objects they wrote or reused are among the
    // unmarked, and the sweep must wait for them to commit
    let (instance, sessions) = store.active_sessions();
    db.clear_condemned()?;
    store.for_each_object(|id, _| {
        if err.is_some() {
            return;
        }
        match marks.get(id.0) {
            Ok(Some(_)) => {}
            Ok(None) => {
                unmarked.push(id);
                if unmarked.len() >= MARK_BATCH
                    && let Err(e) = flush(&mut unmarked)
                {
                    err = Some(e);
                }
            }
            Err(e) => err = Some(db.err(e).into()),
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    flush(&mut unmarked)?;
    drop(marks);
    drop(tx);
    if total > 0 {
        let b = Batch { condemned_at_ns: now_ns(now), instance, sessions, objects: total };
        db.set_meta("batch", Some(&serde_json::to_vec(&b).expect("serializes")))?;
        store.set_condemned(Some(db.view()?));
    }
    Ok(total)
}

/// Retire packs with nothing live, rewrite packs that are mostly garbage,
/// then the most unreferenced others until what is left unreferenced is
/// within `max_unused` of the live bytes.
fn reclaim(store: &Store, opts: &GcOptions) -> Result<RepackStats, GcError> {
    let packs = store.packs()?;
    let mut live_bytes: HashMap<u64, u64> = HashMap::new();
    store.for_each_object(|_, loc| *live_bytes.entry(loc.pack).or_default() += loc.len as u64)?;
    let mut chosen: HashSet<u64> = HashSet::new();
    let mut budget = opts.max_repack_bytes;
    // (seq, record bytes, live bytes); a pack is its magic followed by its records
    let mut by_garbage: Vec<(u64, u64, u64)> = packs
        .iter()
        .map(|(seq, _, size)| (*seq, size.saturating_sub(PACK_HEADER), live_bytes.get(seq).copied().unwrap_or(0)))
        .collect();
    // the emptiest first: most space for the least copying
    by_garbage.sort_by(|a, b| (a.2 as f64 / a.1.max(1) as f64).total_cmp(&(b.2 as f64 / b.1.max(1) as f64)));
    let total_live: u64 = by_garbage.iter().map(|p| p.2).sum();
    let allowed = (opts.max_unused.clamp(0.0, 1.0) * total_live as f64) as u64;
    let mut unused_left: u64 = by_garbage.iter().map(|p| p.1.saturating_sub(p.2)).sum();
    for (seq, size, live) in by_garbage {
        let unused = size.saturating_sub(live);
        if unused == 0 {
            // sorted by live fraction: every pack from here on is full
            break;
        }
        let mostly_garbage = live == 0 || unused as f64 / size as f64 >= opts.repack_unused;
        if !mostly_garbage && unused_left <= allowed {
            // nor is any later pack (their unused fraction is smaller)
            break;
        }
        if live > budget {
            continue;
        }
        budget -= live;
        unused_left -= unused;
        chosen.insert(seq);
    }
    if chosen.is_empty() {
        return Ok(RepackStats::default());
    }
    let mut live: Vec<(ObjectId, Location)> = Vec::new();
    store.for_each_object(|id, loc| {
        if chosen.contains(&loc.pack) {
            live.push((id, loc));
        }
    })?;
    live.sort_by_key(|(_, l)| (l.pack, l.offset));
    let seqs: Vec<u64> = chosen.into_iter().collect();
    Ok(store.repack(&seqs, &live)?)
}

/// One garbage collection run over one store (see the module docs).
pub fn run(store: &Store, opts: &GcOptions, now: SystemTime) -> Result<GcReport, GcError> {
    let t = Instant::now();
    let db = GcDb::open(store.dir())?;
    let mut rep = GcReport { store: store.dir().display().to_string(), ..Default::default() };
    rep.bytes_before = store.bytes_stored()?;
    rep.trash_freed = store.empty_trash(now.checked_sub(opts.grace).unwrap_or(SystemTime::UNIX_EPOCH))?;
    // a pending batch survives restarts (shown to the store when it was
    // opened; again here for a store opened before gc.redb existed)
    if !store.has_condemned() {
        store.set_condemned(pending_condemned(store.dir()));
    }
    let pending = db.batch()?;
    // 1. mark (resuming an interrupted mark)
    if db.meta("mark_complete")?.is_some() {
        db.reset_marks()?;
        db.set_meta("mark_complete", None)?;
    } else {
        rep.resumed = db.meta("mark_started")?.is_some();
    }
    db.set_meta("mark_started", Some(b"1"))?;
    let (snaps, marked) = mark(store, &db, &store.snapshot_ids()?, opts.stop.as_deref())?;
    rep.snapshots = snaps;
    rep.marked = marked;
    // 2. sweep an earlier batch
    let mut batch = pending;
    if let Some(b) = &batch {
        match sweep_blocker(store, b, opts.grace, now) {
            Some(why) => rep.waiting = Some(why),
            None => {
                let (swept, spared) = sweep(store, &db)?;
                rep.swept += swept;
                rep.rescued += spared;
                batch = None;
            }
        }
    }
    // 3. condemn (unless an earlier batch still waits), sweeping at once
    // when nothing stands in the way
    if batch.is_none() {
        rep.condemned = condemn(store, &db, now)?;
        if let Some(b) = db.batch()? {
            match sweep_blocker(store, &b, opts.grace, now) {
                Some(why) => rep.waiting = Some(why),
                None => {
                    let (swept, spared) = sweep(store, &db)?;
                    rep.swept += swept;
                    rep.rescued += spared;
                }
            }
        }
    }
    db.set_meta("mark_complete", Some(b"1"))?;
    db.set_meta("mark_started", None)?;
    // 4. reclaim space
    rep.repack = reclaim(store, opts)?;
    rep.bytes_after = store.bytes_stored()?;
    rep.seconds = t.elapsed().as_secs_f64();
    tracing::info!(
        store = %rep.store,
        swept = rep.swept,
        condemned = rep.condemned,
        rescued = rep.rescued,
        packs_retired = rep.repack.packs_retired,
        freed = rep.bytes_before.saturating_sub(rep.bytes_after),
        "garbage collection done"
    );
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InitOptions, Sealed, Store};
    use omesh_proto::{ObjectKind, Record};
    use std::path::Path;

    fn store(dir: &Path) -> Store {
        let mut o = InitOptions::new("t");
        o.pack_bytes = 4096;
        Store::init(&dir.join("s"), o).unwrap()
    }

    /// Write a blob and a snapshot referencing `blobs` through a tree.
    fn put_blob(s: &Store, data: &[u8]) -> ObjectId {
        let Sealed { id, seal: id_seal, bytes: rec } = s.seal(ObjectKind::Blob, data, vec![]).unwrap();
        if s.claim(&id, id_seal).unwrap() {
            let mut sink = s.sink().unwrap();
            sink.add(id, ObjectKind::Blob, id_seal, &rec).unwrap();
            sink.finish().unwrap();
        }
        id
    }

    fn put_snapshot(s: &Store, blobs: &[ObjectId]) -> ObjectId {
        let Sealed { id: tid, seal: tid_seal, bytes: trec } =
            s.seal(ObjectKind::Tree, b"tree", blobs.to_vec()).unwrap();
        if s.claim(&tid, tid_seal).unwrap() {
            let mut sink = s.sink().unwrap();
            sink.add(tid, ObjectKind::Tree, tid_seal, &trec).unwrap();
            sink.finish().unwrap();
        }
        // (snapshot ids cover the plaintext only: make it unique)
        let Sealed { id: sid, bytes: srec, .. } =
            s.seal(ObjectKind::Snapshot, tid.to_hex().as_bytes(), vec![tid]).unwrap();
        s.put_snapshot_record(&sid, &srec).unwrap();
        sid
    }

    fn opts(grace: u64) -> GcOptions {
        GcOptions {
            grace: Duration::from_secs(grace),
            repack_unused: 0.01,
            max_unused: 0.0,
            max_repack_bytes: u64::MAX,
            stop: None,
        }
    }

    #[test]
    fn unreferenced_objects_go_referenced_stay() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let keep = put_blob(&s, &[1u8; 3000]);
        let drop1 = put_blob(&s, &[2u8; 3000]);
        let snap_keep = put_snapshot(&s, &[keep]);
        let snap_drop = put_snapshot(&s, &[drop1]);
        s.forget_snapshot(&snap_drop).unwrap();
        let r = run(&s, &opts(0), SystemTime::now()).unwrap();
        assert_eq!(r.swept, 2, "the blob and its tree: {r:?}");
        assert!(s.locate(&keep).unwrap().is_some());
        assert!(s.locate(&drop1).unwrap().is_none());
        assert!(r.bytes_after < r.bytes_before, "{r:?}");
        // every kept object still reads back
        s.read_record(&keep).unwrap();
        let _ = snap_keep;
    }

    #[test]
    fn a_stopped_run_removes_nothing_and_the_next_one_finishes() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let keep = put_blob(&s, &[1u8; 3000]);
        let drop1 = put_blob(&s, &[2u8; 3000]);
        put_snapshot(&s, &[keep]);
        let gone = put_snapshot(&s, &[drop1]);
        s.forget_snapshot(&gone).unwrap();
        let mut o = opts(0);
        o.stop = Some(Arc::new(AtomicBool::new(true)));
        assert!(matches!(run(&s, &o, SystemTime::now()), Err(GcError::Stopped)));
        assert!(s.locate(&drop1).unwrap().is_some(), "a stopped run swept");
        let r = run(&s, &opts(0), SystemTime::now()).unwrap();
        assert_eq!(r.swept, 2, "{r:?}");
        assert!(s.locate(&keep).unwrap().is_some());
    }

    #[test]
    fn grace_period_and_rescue_by_a_writer() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let a = put_blob(&s, &[3u8; 3000]);
        let snap = put_snapshot(&s, &[a]);
        s.forget_snapshot(&snap).unwrap();
        let t0 = SystemTime::now();
        let r = run(&s, &opts(3600), t0).unwrap();
        assert_eq!((r.swept, r.condemned), (0, 2), "{r:?}");
        assert!(r.waiting.is_some());
        // a backup deduplicates against the condemned blob: it is rescued
        assert!(!s.claim(&a, omesh_proto::Seal::default()).unwrap());
        let r = run(&s, &opts(3600), t0 + Duration::from_secs(7200)).unwrap();
        assert_eq!(r.rescued, 1, "{r:?}");
        assert!(s.locate(&a).unwrap().is_some(), "a rescued object survives the sweep");
    }

    #[test]
    fn a_condemned_batch_is_rescued_after_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let a = put_blob(&s, &[5u8; 3000]);
        let live = put_blob(&s, &[6u8; 3000]);
        put_snapshot(&s, &[live]);
        // enough condemned objects that the set spans many pages
        let mut garbage = vec![a];
        {
            let mut sink = s.sink().unwrap();
            for i in 0..3000u32 {
                let Sealed { id, seal: id_seal, bytes: rec } =
                    s.seal(ObjectKind::Blob, format!("garbage {i}").as_bytes(), vec![]).unwrap();
                if s.claim(&id, id_seal).unwrap() {
                    sink.add(id, ObjectKind::Blob, id_seal, &rec).unwrap();
                }
                garbage.push(id);
            }
            sink.finish().unwrap();
        }
        let snap = put_snapshot(&s, &garbage);
        s.forget_snapshot(&snap).unwrap();
        let t0 = SystemTime::now();
        let r = run(&s, &opts(3600), t0).unwrap();
        assert_eq!(r.condemned, 3002, "{r:?}");
        // the process restarts: the store is opened afresh
        drop(s);
        let s =
            Store::open(&d.path().join("s"), crate::store::Access::Write, crate::store::KeySource::Default).unwrap();
        // a backup in the new process deduplicates against a condemned
        // blob and a live one, and has not committed when the grace
        // period ends
        let _backup = s.session();
        assert!(!s.claim(&a, omesh_proto::Seal::default()).unwrap());
        assert!(!s.claim(&live, omesh_proto::Seal::default()).unwrap());
        // the view answers from the batch (one that could not read it
        // would count the live blob as rescued too)
        assert_eq!(s.rescued().len(), 1);
        let r = run(&s, &opts(3600), t0 + Duration::from_secs(7200)).unwrap();
        assert_eq!(r.rescued, 1, "{r:?}");
        assert_eq!(r.swept, 3001, "{r:?}");
        assert!(s.locate(&a).unwrap().is_some(), "the blob reused after the restart survives: {r:?}");
        s.read_record(&a).unwrap();
    }

    #[test]
    fn a_backup_in_flight_holds_the_sweep() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let session = s.session();
        // written by the backup in flight, not referenced by any snapshot yet
        let a = put_blob(&s, &[4u8; 3000]);
        let r = run(&s, &opts(0), SystemTime::now()).unwrap();
        assert_eq!(r.swept, 0, "{r:?}");
        assert!(r.waiting.as_deref().unwrap_or("").contains("backup"), "{r:?}");
        // the backup commits, then ends
        put_snapshot(&s, &[a]);
        drop(session);
        let r = run(&s, &opts(0), SystemTime::now()).unwrap();
        assert_eq!(r.swept, 0, "{r:?}");
        s.read_record(&a).unwrap();
    }

    #[test]
    fn repacking_keeps_every_live_object() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let mut ids = Vec::new();
        let mut sink = s.sink().unwrap();
        for i in 0..40u32 {
            let Sealed { id, seal: id_seal, bytes: rec } = s.seal(ObjectKind::Blob, &[i as u8; 150], vec![]).unwrap();
            assert!(s.claim(&id, id_seal).unwrap());
            sink.add(id, ObjectKind::Blob, id_seal, &rec).unwrap();
            ids.push(id);
        }
        sink.finish().unwrap();
        let live: Vec<ObjectId> = ids.iter().step_by(2).copied().collect();
        let dead: Vec<ObjectId> = ids.iter().skip(1).step_by(2).copied().collect();
        put_snapshot(&s, &live);
        let gone = put_snapshot(&s, &dead);
        s.forget_snapshot(&gone).unwrap();
        let packs_before = s.packs().unwrap().len();
        let r = run(&s, &opts(0), SystemTime::now()).unwrap();
        assert_eq!(r.swept, 21, "{r:?}");
        assert!(r.repack.packs_retired >= 1 && r.repack.objects > 0, "{r:?}");
        assert!(r.bytes_after < r.bytes_before, "{r:?}");
        for id in &live {
            s.read_record(id).unwrap();
        }
        for id in &dead {
            assert!(s.locate(id).unwrap().is_none());
        }
        // a second run finds nothing to do and loses nothing
        let r2 = run(&s, &opts(0), SystemTime::now()).unwrap();
        assert_eq!((r2.swept, r2.repack.packs_retired), (0, 0), "{r2:?}");
        for id in &live {
            s.read_record(id).unwrap();
        }
        assert!(s.packs().unwrap().len() <= packs_before);
    }

    #[test]
    fn refuses_on_a_damaged_tree() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let a = put_blob(&s, &[5u8; 100]);
        let snap = put_snapshot(&s, &[a]);
        let raw = s.read_snapshot_record(&snap).unwrap();
        let (_, links) = omesh_proto::record::links_of(&raw).unwrap();
        s.quarantine(&links[0], "test").unwrap();
        let e = run(&s, &opts(0), SystemTime::now()).unwrap_err();
        assert!(matches!(e, GcError::Damaged { .. }), "{e}");
        assert!(s.locate(&a).unwrap().is_some(), "nothing removed");
    }

    /// A forged record that links to itself (a peer can store one: ids are
    /// opaque without the key) does not make the mark walk forever.
    #[test]
    fn a_self_linked_record_terminates() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path());
        let x = ObjectId([0x5a; 32]);
        let (rec, seal) =
            Record::new(ObjectKind::Tree, x, vec![x, x], vec![Default::default(); 2], vec![1; 40]).encode_sealed();
        assert!(s.claim(&x, seal).unwrap());
        let mut sink = s.sink().unwrap();
        sink.add(x, ObjectKind::Tree, seal, &rec).unwrap();
        sink.finish().unwrap();
        let sid = ObjectId([0x5b; 32]);
        let srec = Record::new(ObjectKind::Snapshot, sid, vec![x], vec![seal], vec![2; 40]).encode();
        s.put_snapshot_record(&sid, &srec).unwrap();
        let r = run(&s, &opts(0), SystemTime::now()).unwrap();
        assert_eq!((r.snapshots, r.marked, r.swept), (1, 1, 0), "{r:?}");
        s.read_record(&x).unwrap();
    }
}
