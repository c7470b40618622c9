//! Creating and opening a store: its settings, key, lock, index, and the
//! reconciliation of the index with the packs on disk.

use super::atomic::write_atomic;
use super::config::{self, CONFIG_FILE, STORE_VERSION, StoreConfig};
use super::error::{Result, StoreError};
use super::hooks::{CondemnedSet, GcHooks, Session};
use super::index::{self, Index, Location, OpenRwError};
use super::pack::{self, PackEntry, sync_dir};
use crate::crypto::Keys;
use crate::keyfile::KeyFile;
use omesh_proto::ObjectId;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A reader opens the store without writing when less than this is free.
const READ_ONLY_BELOW: u64 = 64 << 20;

/// Bytes available to unprivileged writers on the file system holding
/// `dir`, and its size.
pub(super) fn free_space(dir: &Path) -> rustix::io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(dir)?;
    Ok((st.f_bavail.saturating_mul(st.f_frsize), st.f_blocks.saturating_mul(st.f_frsize)))
}

fn nearly_full(dir: &Path) -> bool {
    free_space(dir).is_ok_and(|(free, _)| free < READ_ONLY_BELOW)
}

/// How a store is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reading only; may run beside a writer in another process.
    Read,
    /// This process writes; others may only read.
    Write,
}

/// Where the key comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// `DIR/key`.
    Default,
    /// An explicit key file.
    File(PathBuf),
    /// A key already loaded (with every epoch it has).
    Key(Box<KeyFile>),
    /// No key: a replica store on a peer (can hold and move objects, cannot
    /// read them).
    None,
}

/// Options for creating a store.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Source name recorded in the store and key.
    pub source: String,
    /// Key file location; default `DIR/key`.
    pub key_file: Option<PathBuf>,
    /// Use this existing key instead of generating one (a new store for a
    /// source whose key already exists, e.g. after a disk replacement).
    pub existing_key: Option<KeyFile>,
    /// Chunk sizes.
    pub chunker: crate::chunker::ChunkerParams,
    /// Pack size target.
    pub pack_bytes: u64,
    /// zstd level.
    pub compression: i32,
}

impl InitOptions {
    /// Defaults for a source name.
    pub fn new(source: &str) -> Self {
        InitOptions {
            source: source.into(),
            key_file: None,
            existing_key: None,
            chunker: Default::default(),
            pack_bytes: config::DEFAULT_PACK_BYTES,
            compression: config::DEFAULT_COMPRESSION,
        }
    }
}

/// An open store.
pub struct Store {
    pub(super) dir: PathBuf,
    pub(super) config: StoreConfig,
    pub(super) keys: Option<Arc<Keys>>,
    pub(super) index: Index,
    pub(super) writable: bool,
    pub(super) _lock: Option<File>,
    pub(super) pending: Mutex<HashMap<ObjectId, omesh_proto::Seal>>,
    /// Signs the snapshot records written here (the node's identity).
    pub(super) signer: std::sync::RwLock<Option<Arc<dyn crate::crypto::SnapshotSigner>>>,
    /// Objects of packs the index does not know yet (read-only opens after a
    /// crash); keyed by id → (pack hash, entry).
    pub(super) extra: HashMap<ObjectId, ([u8; 32], PackEntry)>,
    pub(super) files: std::sync::RwLock<HashMap<[u8; 32], Arc<File>>>,
    pub(super) gc: GcHooks,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.dir.display())
    }
}

fn read_config(dir: &Path) -> Result<StoreConfig> {
    let p = dir.join(CONFIG_FILE);
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotAStore(dir.into()));
        }
        Err(e) => {
            return Err(StoreError::Io { op: "reading", path: p, source: e });
        }
    };
    let cfg: StoreConfig =
        toml::from_str(&text).map_err(|e| StoreError::Config { path: p.clone(), reason: e.to_string() })?;
    if cfg.format != config::FORMAT {
        return Err(StoreError::Config {
            path: p,
            reason: format!("format is {:?}, expected {:?}", cfg.format, config::FORMAT),
        });
    }
    if !(1..=STORE_VERSION).contains(&cfg.version) {
        return Err(StoreError::Version { path: dir.into(), found: cfg.version });
    }
    cfg.chunker.validate().map_err(|reason| StoreError::Config { path: p.clone(), reason })?;
    Ok(cfg)
}

impl Store {
    /// Create a new store and its key. Returns the open store.
    pub fn init(dir: &Path, opts: InitOptions) -> Result<Store> {
        opts.chunker.validate().map_err(|reason| StoreError::Config { path: dir.join(CONFIG_FILE), reason })?;
        if dir.exists() {
            let mut it = fs::read_dir(dir).map_err(StoreError::io("listing", dir))?;
            if it.next().is_some() {
                return Err(StoreError::NotEmpty(dir.into()));
            }
        }
        fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        for sub in ["packs", "snapshots", "tmp"] {
            fs::create_dir_all(dir.join(sub)).map_err(StoreError::io("creating", &dir.join(sub)))?;
        }
        let key = opts.existing_key.clone().unwrap_or_else(|| KeyFile::generate(&opts.source));
        let key_path = opts.key_file.clone().unwrap_or_else(|| dir.join("key"));
        if opts.existing_key.is_none() || !key_path.exists() {
            key.save(&key_path)?;
        }
        let cfg = StoreConfig::new(&opts.source, &key.key_id(), opts.chunker, opts.pack_bytes, opts.compression);
        write_atomic(dir, &dir.join("tmp"), CONFIG_FILE, cfg.to_text().as_bytes())?;
        let _ = sync_dir(dir.parent().unwrap_or(Path::new("/")));
        Store::open(dir, Access::Write, KeySource::Key(Box::new(key.clone())))
    }

    /// Create a keyless replica store for `source` (held by a peer).
    pub fn init_replica(dir: &Path, source: &str) -> Result<Store> {
        fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        if !dir.join(CONFIG_FILE).exists() {
            for sub in ["packs", "snapshots", "tmp"] {
                fs::create_dir_all(dir.join(sub)).map_err(StoreError::io("creating", &dir.join(sub)))?;
            }
            let cfg = StoreConfig::new(source, "", Default::default(), config::DEFAULT_PACK_BYTES, 0);
            write_atomic(dir, &dir.join("tmp"), CONFIG_FILE, cfg.to_text().as_bytes())?;
        }
        Store::open(dir, Access::Write, KeySource::None)
    }

    /// Open an existing store.
    pub fn open(dir: &Path, access: Access, key: KeySource) -> Result<Store> {
        let config = read_config(dir)?;
        let keys = match key {
            KeySource::None => None,
            KeySource::Key(k) => Some((*k, "the supplied key".to_string())),
            KeySource::Default => {
                let p = dir.join("key");
                if p.exists() {
                    Some((KeyFile::load(&p)?, p.display().to_string()))
                } else {
                    return Err(StoreError::NoKey(dir.into()));
                }
            }
            KeySource::File(p) => Some((KeyFile::load(&p)?, p.display().to_string())),
        };
        let keys = match keys {
            None => None,
            Some((key, from)) => {
                let kid = key.key_id();
                if !config.key_id.is_empty() && kid != config.key_id {
                    return Err(StoreError::WrongKey {
                        store: dir.into(),
                        key_path: from,
                        key_id: kid,
                        expected: config.key_id.clone(),
                    });
                }
                Some(Arc::new(key.keys()))
            }
        };
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path);
        let lock = match lock {
            Ok(f) => Some(f),
            // a read-only medium or directory: readers can still proceed
            Err(_) if access == Access::Read => None,
            Err(e) => {
                return Err(StoreError::Io { op: "opening", path: lock_path, source: e });
            }
        };
        let locked = match &lock {
            Some(f) => rustix::fs::flock(f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok(),
            None => false,
        };
        if access == Access::Write && !locked {
            let holder = fs::read_to_string(&lock_path).unwrap_or_default().trim().to_string();
            return Err(StoreError::Locked {
                path: dir.into(),
                holder: if holder.is_empty() { "unknown".into() } else { holder },
            });
        }
        let index_path = dir.join("index.redb");
        // a reader on a (nearly) full disk never writes: a repair or a
        // reconcile it would persist could fail half-way for want of space
        let mut disk_refused = access == Access::Read && locked && nearly_full(dir);
        if disk_refused {
            tracing::warn!(store = %dir.display(), "less than {} MiB free on the store's disk: reading it without writing", READ_ONLY_BELOW >> 20);
        }
        let writable = match lock {
            Some(mut f) if locked && !disk_refused => {
                let _ = f.set_len(0);
                let _ = write!(f, "pid {} ({})", std::process::id(), std::env::args().nth(1).unwrap_or_default());
                match Index::open_rw(&index_path) {
                    Ok(i) => Some((i, f)),
                    // the disk refused (full, failing): the index is left as
                    // it is; a reader reads it read-only, a writer says why
                    Err(OpenRwError::Io(source)) if access == Access::Read => {
                        tracing::warn!(index = %index_path.display(), error = %source, "the index cannot be written (is the disk full?); reading it without writing");
                        disk_refused = true;
                        None
                    }
                    Err(OpenRwError::Io(source)) => {
                        return Err(StoreError::Io { op: "opening the index", path: index_path, source });
                    }
                    Err(OpenRwError::Unusable(e)) => {
                        let aside =
                            dir.join(format!("index.redb.damaged-{}", crate::time::now().strftime("%Y%m%dT%H%M%S")));
                        tracing::warn!(index = %index_path.display(), error = %e.0, moved_to = %aside.display(), "index cannot be opened; rebuilding it from the packs");
                        fs::rename(&index_path, &aside).map_err(StoreError::io("moving aside", &index_path))?;
                        let i = Index::open_rw(&index_path)
                            .map_err(|e| StoreError::Index { path: index_path.clone(), reason: e.to_string() })?;
                        Some((i, f))
                    }
                }
            }
            _ => None,
        };
        let mut store = match writable {
            Some((index, f)) => Store {
                dir: dir.into(),
                config,
                keys,
                index,
                writable: true,
                _lock: Some(f),
                pending: Default::default(),
                signer: Default::default(),
                extra: HashMap::new(),
                files: Default::default(),
                gc: GcHooks::default(),
            },
            None => {
                let index = match Index::open_ro(&index_path) {
                    Ok(i) => i,
                    // a write that failed on the full disk left the index
                    // needing a repair, which cannot be written now: read
                    // the packs into an index in memory instead
                    Err(e) if disk_refused => {
                        tracing::warn!(index = %index_path.display(), error = %e.0, "the index needs a repair that cannot be written while the disk is (nearly) full; reading every pack into an index in memory instead (slow on a big store); free space and the next backup repairs it");
                        Index::in_memory().map_err(|e| StoreError::Index { path: index_path.clone(), reason: e.0 })?
                    }
                    Err(e) => return Err(StoreError::Index { path: index_path.clone(), reason: e.0 }),
                };
                Store {
                    dir: dir.into(),
                    config,
                    keys,
                    index,
                    writable: false,
                    _lock: None,
                    pending: Default::default(),
                    signer: Default::default(),
                    extra: HashMap::new(),
                    files: Default::default(),
                    gc: GcHooks::default(),
                }
            }
        };
        store.reconcile()?;
        if store.writable && store.config.version < STORE_VERSION {
            // format 1 → 2: the index now has every record's seal (reconcile
            // re-indexed the packs), new records are format 2; old records
            // stay as they are and are still read
            let mut cfg = store.config.clone();
            cfg.version = STORE_VERSION;
            write_atomic(dir, &dir.join("tmp"), CONFIG_FILE, cfg.to_text().as_bytes())?;
            tracing::info!(store = %dir.display(), "store upgraded from format 1 to format 2");
            store.config = cfg;
        }
        if store.writable {
            // a garbage collection batch condemned before a restart must be
            // visible to writers from the start, or a backup reusing one of
            // its objects would not rescue it before the sweep
            store.gc.set_condemned(super::gcdb::pending_condemned(&store.dir));
        }
        Ok(store)
    }

    /// Bring the index in line with the packs on disk: index packs it does
    /// not know, drop packs that vanished, clear stale temp files.
    fn reconcile(&mut self) -> Result<()> {
        let on_disk = self.pack_files()?;
        let indexed = self.index_packs()?;
        let known: HashSet<[u8; 32]> = indexed.iter().map(|p| p.1).collect();
        for hash in on_disk.iter().filter(|h| !known.contains(*h)) {
            let path = pack::pack_path(&self.dir, hash);
            let res = pack::scan(&path, Some(hash), |_, _| {}).map_err(StoreError::io("scanning", &path))?;
            if !res.problems.is_empty() || !res.hash_ok {
                tracing::warn!(pack = %path.display(), problems = res.problems.len(), "unindexed pack is damaged; indexing its valid records");
            }
            if self.writable {
                tracing::info!(pack = %path.display(), objects = res.entries.len(), "indexing pack left unindexed by an interrupted run");
                self.index.add_pack_entries(hash, res.size, &res.entries).map_err(|e| self.index_err(e))?;
            } else {
                for en in res.entries {
                    self.extra.entry(en.id).or_insert((*hash, en));
                }
            }
        }
        let disk: HashSet<[u8; 32]> = on_disk.into_iter().collect();
        for (seq, hash, _) in indexed.iter().filter(|p| !disk.contains(&p.1)) {
            if self.writable {
                let n = self.index.remove_pack(*seq).map_err(|e| self.index_err(e))?;
                tracing::error!(pack = %hex::encode(hash), objects = n, store = %self.dir.display(), "pack file is missing: its objects are gone from this store; run `omesh verify` to see which snapshots are affected");
            }
        }
        if self.writable
            && let Ok(rd) = fs::read_dir(self.dir.join("tmp"))
        {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    pub(super) fn index_err(&self, e: index::IndexError) -> StoreError {
        StoreError::Index { path: self.dir.join("index.redb"), reason: e.0 }
    }

    /// The packs the index knows: (sequence number, hash, size).
    pub fn index_packs(&self) -> Result<Vec<(u64, [u8; 32], u64)>> {
        self.index.packs().map_err(|e| self.index_err(e))
    }

    /// How many objects the index places in each pack (by sequence number).
    pub fn objects_per_pack(&self) -> Result<HashMap<u64, u64>> {
        let mut out = HashMap::new();
        self.index.for_each_object(|_, l| *out.entry(l.pack).or_insert(0) += 1).map_err(|e| self.index_err(e))?;
        Ok(out)
    }

    /// Every object the index places in pack `seq`, with its location.
    pub fn objects_in_pack(&self, seq: u64) -> Result<Vec<(ObjectId, Location)>> {
        let mut out = Vec::new();
        self.index
            .for_each_object(|id, l| {
                if l.pack == seq {
                    out.push((id, l))
                }
            })
            .map_err(|e| self.index_err(e))?;
        Ok(out)
    }

    /// Hashes of all pack files on disk.
    pub fn pack_files(&self) -> Result<Vec<[u8; 32]>> {
        let root = self.dir.join("packs");
        let mut out = Vec::new();
        let rd = fs::read_dir(&root).map_err(StoreError::io("listing", &root))?;
        for sub in rd {
            let sub = sub.map_err(StoreError::io("listing", &root))?;
            if !sub.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            for f in fs::read_dir(sub.path()).map_err(StoreError::io("listing", &sub.path()))? {
                let f = f.map_err(StoreError::io("listing", &sub.path()))?;
                if let Some(h) = f.file_name().to_str().and_then(pack::parse_pack_name) {
                    out.push(h);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The error for a write to a store this handle opened read-only:
    /// whoever holds the write lock, as its lock file names it (pid and
    /// command), so an operator knows what to wait for or stop.
    pub(crate) fn locked(&self) -> StoreError {
        let holder = fs::read_to_string(self.dir.join("lock")).unwrap_or_default().trim().to_string();
        StoreError::Locked {
            path: self.dir.clone(),
            holder: if holder.is_empty() { "another process, or opened read-only".into() } else { holder },
        }
    }

    /// Throw the index away and rebuild it from the packs. Returns
    /// (packs, objects, damaged records).
    pub fn rebuild_index(self) -> Result<(Store, u64, u64, u64)> {
        if !self.writable {
            return Err(self.locked());
        }
        let dir = self.dir.clone();
        let keys = self.keys.clone();
        let config = self.config.clone();
        let lock = self._lock;
        drop(self.index);
        let index_path = dir.join("index.redb");
        let _ = fs::remove_file(&index_path);
        let index = Index::open_rw(&index_path)
            .map_err(|e| StoreError::Index { path: index_path.clone(), reason: e.to_string() })?;
        let store = Store {
            dir,
            config,
            keys,
            index,
            writable: true,
            _lock: lock,
            pending: Default::default(),
            signer: Default::default(),
            extra: HashMap::new(),
            files: Default::default(),
            gc: GcHooks::default(),
        };
        let (mut packs, mut objects, mut damaged) = (0, 0, 0);
        for hash in store.pack_files()? {
            let path = pack::pack_path(&store.dir, &hash);
            let res = pack::scan(&path, Some(&hash), |_, _| {}).map_err(StoreError::io("scanning", &path))?;
            for p in &res.problems {
                tracing::error!(pack = %path.display(), offset = p.offset, reason = %p.reason, "damaged record skipped");
            }
            damaged += res.problems.len() as u64;
            objects += res.entries.len() as u64;
            packs += 1;
            store.index.add_pack_entries(&hash, res.size, &res.entries).map_err(|e| store.index_err(e))?;
        }
        Ok((store, packs, objects, damaged))
    }

    /// Compact the index file (only with exclusive use of the store).
    pub fn compact_index(&mut self) -> Result<()> {
        let p = self.dir.join("index.redb");
        self.index.compact().map_err(|e| StoreError::Index { path: p, reason: e.0 })?;
        Ok(())
    }

    /// Store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Whether this handle may write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The source's keys, or a clear error when this store has none.
    pub fn keys(&self) -> Result<&Arc<Keys>> {
        self.keys.as_ref().ok_or_else(|| StoreError::NoKey(self.dir.clone()))
    }

    /// Number of indexed objects.
    pub fn object_count(&self) -> Result<u64> {
        self.index.object_count().map_err(|e| self.index_err(e))
    }

    /// Start a write session (one backup). A garbage collection does not
    /// sweep what it condemned while a session was in flight until that
    /// session has ended (its snapshot is then committed and marks them).
    pub fn session(&self) -> Session<'_> {
        self.gc.session()
    }

    /// The sessions in flight: (this open store's instance, session ids).
    pub fn active_sessions(&self) -> (u64, Vec<u64>) {
        self.gc.active_sessions()
    }

    /// Whether every session in `ids` (of `instance`) has ended. Sessions
    /// of an earlier process ended when it did.
    pub fn sessions_ended(&self, instance: u64, ids: &[u64]) -> bool {
        self.gc.sessions_ended(instance, ids)
    }

    /// Hold while checking that a snapshot's objects are present and
    /// committing it: no sweep runs in between.
    pub fn commit_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gc.read_guard()
    }

    /// Exclusive against every presence answer and commit (a sweep).
    pub fn sweep_guard(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gc.write_guard()
    }

    /// Install the condemned set of a new garbage collection batch (the
    /// rescued set starts empty), or clear it after the sweep.
    pub fn set_condemned(&self, c: Option<Arc<dyn CondemnedSet>>) {
        self.gc.set_condemned(c)
    }

    /// Whether a condemned set is installed.
    pub fn has_condemned(&self) -> bool {
        self.gc.has_condemned()
    }

    /// Condemned objects a writer was told are present since the condemned
    /// set was installed.
    pub fn rescued(&self) -> HashSet<ObjectId> {
        self.gc.rescued()
    }

    /// Changes whenever objects leave the index: knowledge that a subtree
    /// is complete is only valid while this stays the same.
    pub fn removals(&self) -> u64 {
        self.gc.removals()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Sealed;
    use crate::store::pack::PackWriter;
    use omesh_proto::ObjectKind;

    fn init(d: &Path) -> Store {
        Store::init(&d.join("s"), InitOptions::new("t")).unwrap()
    }

    #[test]
    fn one_writer_and_readers_beside_it() {
        let d = tempfile::tempdir().unwrap();
        let s = init(d.path());
        let dir = d.path().join("s");
        let e = Store::open(&dir, Access::Write, KeySource::Default).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("pid"), "the lock names its holder: {e}");
        let r = Store::open(&dir, Access::Read, KeySource::Default).unwrap();
        assert!(!r.is_writable());
        drop(s);
        Store::open(&dir, Access::Write, KeySource::Default).unwrap();
    }

    #[test]
    fn a_wrong_key_is_refused_naming_both() {
        let d = tempfile::tempdir().unwrap();
        let s = init(d.path());
        let expected = s.config().key_id.clone();
        drop(s);
        let other = crate::keyfile::KeyFile::generate("t");
        let e = Store::open(&d.path().join("s"), Access::Read, KeySource::Key(Box::new(other.clone()))).unwrap_err();
        assert!(matches!(e, StoreError::WrongKey { .. }), "{e}");
        assert!(e.to_string().contains(&expected) && e.to_string().contains(&other.key_id()), "{e}");
        let e = Store::open(&d.path().join("nothing"), Access::Read, KeySource::Default).unwrap_err();
        assert!(matches!(e, StoreError::NotAStore(_)), "{e}");
    }

    /// A crash between a pack's rename and its index commit leaves a pack
    /// the index does not know: a reader still finds its objects, a writer
    /// indexes it; stray temporary files are removed.
    #[test]
    fn packs_the_index_missed_are_found_and_indexed() {
        let d = tempfile::tempdir().unwrap();
        let s = init(d.path());
        let Sealed { id, seal: id_seal, bytes: rec } = s.seal(ObjectKind::Blob, b"orphan", vec![]).unwrap();
        let dir = d.path().join("s");
        drop(s);
        let mut w = PackWriter::create(&dir.join("tmp")).unwrap();
        w.append(id, ObjectKind::Blob, id_seal, &rec).unwrap();
        w.finish(&dir).unwrap();
        std::fs::write(dir.join("tmp/stray.pack-tmp"), b"half a pack").unwrap();
        let r = Store::open(&dir, Access::Read, KeySource::Default).unwrap();
        assert_eq!(r.get(&id, ObjectKind::Blob).unwrap(), b"orphan");
        drop(r);
        let s = Store::open(&dir, Access::Write, KeySource::Default).unwrap();
        assert_eq!(s.object_count().unwrap(), 1);
        assert!(!dir.join("tmp/stray.pack-tmp").exists());
    }

    #[test]
    fn init_refuses_a_directory_in_use() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"").unwrap();
        assert!(matches!(Store::init(d.path(), InitOptions::new("t")), Err(StoreError::NotEmpty(_))));
    }
}
