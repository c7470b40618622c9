//! The chunk store: encrypted objects in append-only packs, a redb index,
//! and snapshot records.
//!
//! ```text
//! DIR/omesh-store.toml   settings and format version (marks a store)
//! DIR/key                the source key, mode 0600 (unless --key-file)
//! DIR/lock               flock held by the one writer process
//! DIR/index.redb         object index (rebuildable from packs)
//! DIR/packs/hh/<h>.pack  immutable packs named by their BLAKE3
//! DIR/snapshots/<id>     one sealed snapshot record per file
//! DIR/tmp/               packs and snapshots being written
//! DIR/gc.redb            garbage collection progress (marks, condemned)
//! DIR/trash/             packs replaced by GC, deleted one grace period later
//! DIR/quarantine/        damaged records found by scrub, kept for inspection
//! ```
//!
//! Crash consistency (argued in full in `docs/store.md`): every file is
//! written under `tmp/`, fsynced, renamed into place and its directory
//! fsynced. Packs become durable before the index learns of them, and a
//! snapshot record is written only after every pack it depends on is
//! durable. So after a crash at any instant, every snapshot present is
//! complete; a pack the index missed is re-indexed on the next writable
//! open; a half-written pack is just a stray temp file, removed on open.
//!
//! A store does its blocking work on the caller's thread: async callers use
//! `spawn_blocking`.

pub mod config;
pub mod forget;
pub mod gc;
pub mod index;
pub mod pack;
pub mod scrub;

use crate::crypto::{Keys, OpenError, Secret};
use crate::keyfile::{KeyFile, KeyFileError};
use crate::snapshot::{FormatError, Node, SnapshotRecord};
use config::{CONFIG_FILE, STORE_VERSION, StoreConfig};
use index::{Index, Location};
use omesh_proto::{ObjectId, ObjectKind, Record};
use pack::{PackEntry, PackWriter, sync_dir};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Errors from store operations. Messages name the store, file or object
/// and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// I/O on a specific path.
    #[error("{op} {path}: {source}")]
    Io {
        /// what we were doing
        op: &'static str,
        /// file or directory
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// Not a store.
    #[error("{0} is not an omesh store (no {CONFIG_FILE}); create one with `omesh init --store {0}`")]
    NotAStore(PathBuf),
    /// Refusing to init over something.
    #[error("{0} already exists and is not empty; `omesh init` needs a new or empty directory")]
    NotEmpty(PathBuf),
    /// Unsupported format.
    #[error("store {path} has format version {found}; this omesh reads version {STORE_VERSION}")]
    Version {
        /// store
        path: PathBuf,
        /// found
        found: u32,
    },
    /// Bad config file.
    #[error("store settings {path} are invalid: {reason}")]
    Config {
        /// file
        path: PathBuf,
        /// problem
        reason: String,
    },
    /// Another process writes.
    #[error("store {path} is in use by another omesh process ({holder}); wait for it to finish or stop it")]
    Locked {
        /// store
        path: PathBuf,
        /// pid and command from the lock file
        holder: String,
    },
    /// Key file problem.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// Key does not belong to the store.
    #[error(
        "key {key_id} (from {key_path}) does not belong to store {store} (which expects key {expected}); pass the right --key-file or import it with `omesh key import`"
    )]
    WrongKey {
        /// store
        store: PathBuf,
        /// key file
        key_path: String,
        /// its id
        key_id: String,
        /// the store's key id
        expected: String,
    },
    /// Operation needs the key.
    #[error("store {0} has no key here; import the source's key with `omesh key import FILE --store {0}`")]
    NoKey(PathBuf),
    /// Index failure.
    #[error("index {path}: {reason}; `omesh repair index --store STORE` rebuilds it from the packs")]
    Index {
        /// index file
        path: PathBuf,
        /// cause
        reason: String,
    },
    /// Object not present.
    #[error("object {0} ({1}) is missing from the store")]
    Missing(ObjectId, &'static str),
    /// Object present but damaged.
    #[error("object {id} in pack {pack} at offset {offset} is damaged: {reason}")]
    Corrupt {
        /// object
        id: ObjectId,
        /// pack file
        pack: String,
        /// offset
        offset: u64,
        /// what failed
        reason: String,
    },
    /// Object decoded but violates the format.
    #[error("object {id} is malformed: {source}")]
    Format {
        /// object
        id: ObjectId,
        /// rule broken
        source: FormatError,
    },
    /// An object could not be read or decoded (message from the reader).
    #[error("{0}")]
    Object(String, bool),
    /// Snapshot spec not found.
    #[error("no snapshot matches {0:?} in store {1}; list them with `omesh snapshots`")]
    SnapshotNotFound(String, PathBuf),
    /// Snapshot prefix ambiguous.
    #[error("snapshot prefix {0:?} is ambiguous: matches {1}")]
    Ambiguous(String, String),
}

impl StoreError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io { op, path: path.to_path_buf(), source }
    }
    /// Whether this error means stored data is damaged or missing (as
    /// opposed to configuration or environment).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Missing(..)
                | StoreError::Corrupt { .. }
                | StoreError::Format { .. }
                | StoreError::Object(_, true)
        )
    }
}

/// Readable snapshots (oldest first) and the errors of unreadable ones.
pub type SnapshotList = (Vec<(ObjectId, SnapshotRecord)>, Vec<StoreError>);

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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
    /// A key already loaded.
    Secret(Secret),
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

/// What a repack did.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RepackStats {
    /// Live objects copied.
    pub objects: u64,
    /// Packs retired to `trash/`.
    pub packs_retired: u64,
    /// Their size.
    pub bytes_retired: u64,
    /// New packs written.
    pub packs_written: u64,
    /// Their size.
    pub bytes_written: u64,
}

/// Counters of what a writer added.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteStats {
    /// Objects added.
    pub objects: u64,
    /// Record bytes added (what the store grew by, before pack headers).
    pub bytes: u64,
    /// Packs written.
    pub packs: u64,
}

/// An open store.
pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    keys: Option<Arc<Keys>>,
    index: Index,
    writable: bool,
    _lock: Option<File>,
    pending: Mutex<HashSet<ObjectId>>,
    /// Objects of packs the index does not know yet (read-only opens after a
    /// crash); keyed by id → (pack hash, entry).
    extra: HashMap<ObjectId, ([u8; 32], PackEntry)>,
    files: std::sync::RwLock<HashMap<[u8; 32], Arc<File>>>,
    gc: GcHooks,
}

/// Objects condemned by a garbage collection that has not swept yet (see
/// `lifecycle::gc`). The store asks it whenever it tells a writer that an
/// object is present, so such an object is rescued instead of swept.
pub trait CondemnedSet: Send + Sync {
    /// Whether `id` is condemned.
    fn contains(&self, id: &ObjectId) -> bool;
}

/// What garbage collection needs from a live store: a lock that makes
/// "is it present?" answers atomic with respect to a sweep, the rescued
/// objects, and the write sessions (backups) in flight.
#[derive(Default)]
struct GcHooks {
    /// Read: a presence answer or a snapshot commit; write: a sweep.
    lock: RwLock<()>,
    condemned: RwLock<Option<Arc<dyn CondemnedSet>>>,
    rescued: Mutex<HashSet<ObjectId>>,
    sessions: Mutex<(u64, std::collections::BTreeSet<u64>)>,
    /// Identifies this open store (sessions of an earlier process ended
    /// with it).
    instance: u64,
    /// Bumped whenever objects leave the index (sweep, quarantine).
    removals: std::sync::atomic::AtomicU64,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random source");
    u64::from_le_bytes(b)
}

/// A write session (one backup) in flight; ends when dropped.
pub struct Session<'a> {
    store: &'a Store,
    id: u64,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.store.gc.sessions.lock().unwrap_or_else(|e| e.into_inner()).1.remove(&self.id);
    }
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
    if cfg.version != STORE_VERSION {
        return Err(StoreError::Version { path: dir.into(), found: cfg.version });
    }
    cfg.chunker.validate().map_err(|reason| StoreError::Config { path: p.clone(), reason })?;
    Ok(cfg)
}

/// Write a small file durably: temp, fsync, rename, fsync directory.
pub fn write_atomic(dir: &Path, tmp_dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    write_atomic_at(dir, tmp_dir, name, data, None)
}

/// [`write_atomic`] with a given modification time.
fn write_atomic_at(
    dir: &Path,
    tmp_dir: &Path,
    name: &str,
    data: &[u8],
    mtime: Option<std::time::SystemTime>,
) -> Result<()> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).expect("random source");
    let tmp = tmp_dir.join(format!("{name}.{}.tmp", hex::encode(rnd)));
    let dest = dir.join(name);
    let r = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        if let Some(t) = mtime {
            f.set_modified(t)?;
        }
        f.sync_all()?;
        Ok::<_, std::io::Error>(())
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io { op: "writing", path: tmp, source: e });
    }
    fs::rename(&tmp, &dest).map_err(StoreError::io("renaming into", &dest))?;
    sync_dir(dir).map_err(StoreError::io("syncing", dir))?;
    Ok(())
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
        Store::open(dir, Access::Write, KeySource::Secret(key.secret.clone()))
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
            KeySource::Secret(s) => Some((s, "the supplied key".to_string())),
            KeySource::Default => {
                let p = dir.join("key");
                if p.exists() {
                    Some((KeyFile::load(&p)?.secret, p.display().to_string()))
                } else {
                    return Err(StoreError::NoKey(dir.into()));
                }
            }
            KeySource::File(p) => Some((KeyFile::load(&p)?.secret, p.display().to_string())),
        };
        let keys = match keys {
            None => None,
            Some((secret, from)) => {
                let kid = secret.key_id();
                if !config.key_id.is_empty() && kid != config.key_id {
                    return Err(StoreError::WrongKey {
                        store: dir.into(),
                        key_path: from,
                        key_id: kid,
                        expected: config.key_id.clone(),
                    });
                }
                Some(Arc::new(Keys::derive(&secret)))
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
        let mut store = if locked {
            let mut f = lock.expect("locked implies file");
            let _ = f.set_len(0);
            let _ = write!(f, "pid {} ({})", std::process::id(), std::env::args().nth(1).unwrap_or_default());
            let index = match Index::open_rw(&index_path) {
                Ok(i) => i,
                Err(e) => {
                    let aside = dir.join(format!("index.redb.damaged-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")));
                    tracing::warn!(index = %index_path.display(), error = %e.0, moved_to = %aside.display(), "index cannot be opened; rebuilding it from the packs");
                    fs::rename(&index_path, &aside).map_err(StoreError::io("moving aside", &index_path))?;
                    Index::open_rw(&index_path)
                        .map_err(|e| StoreError::Index { path: index_path.clone(), reason: e.0 })?
                }
            };
            Store {
                dir: dir.into(),
                config,
                keys,
                index,
                writable: true,
                _lock: Some(f),
                pending: Default::default(),
                extra: HashMap::new(),
                files: Default::default(),
                gc: GcHooks { instance: random_u64(), ..Default::default() },
            }
        } else {
            let index =
                Index::open_ro(&index_path).map_err(|e| StoreError::Index { path: index_path.clone(), reason: e.0 })?;
            Store {
                dir: dir.into(),
                config,
                keys,
                index,
                writable: false,
                _lock: None,
                pending: Default::default(),
                extra: HashMap::new(),
                files: Default::default(),
                gc: GcHooks { instance: random_u64(), ..Default::default() },
            }
        };
        store.reconcile()?;
        if store.writable {
            // a garbage collection batch condemned before a restart must be
            // visible to writers from the start, or a backup reusing one of
            // its objects would not rescue it before the sweep
            gc::install_pending(&store);
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
        if self.writable {
            if let Ok(rd) = fs::read_dir(self.dir.join("tmp")) {
                for e in rd.flatten() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn index_err(&self, e: index::IndexError) -> StoreError {
        StoreError::Index { path: self.dir.join("index.redb"), reason: e.0 }
    }

    fn index_packs(&self) -> Result<Vec<(u64, [u8; 32], u64)>> {
        self.index.packs().map_err(|e| self.index_err(e))
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

    /// Throw the index away and rebuild it from the packs. Returns
    /// (packs, objects, damaged records).
    pub fn rebuild_index(self) -> Result<(Store, u64, u64, u64)> {
        if !self.writable {
            return Err(StoreError::Locked { path: self.dir.clone(), holder: "another process".into() });
        }
        let dir = self.dir.clone();
        let keys = self.keys.clone();
        let config = self.config.clone();
        let lock = self._lock;
        drop(self.index);
        let index_path = dir.join("index.redb");
        let _ = fs::remove_file(&index_path);
        let index =
            Index::open_rw(&index_path).map_err(|e| StoreError::Index { path: index_path.clone(), reason: e.0 })?;
        let store = Store {
            dir,
            config,
            keys,
            index,
            writable: true,
            _lock: lock,
            pending: Default::default(),
            extra: HashMap::new(),
            files: Default::default(),
            gc: GcHooks { instance: random_u64(), ..Default::default() },
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

    /// Where an object is.
    pub fn locate(&self, id: &ObjectId) -> Result<Option<([u8; 32], Location)>> {
        if let Some(loc) = self.index.get(id).map_err(|e| self.index_err(e))? {
            let hash =
                self.index.pack_hash(loc.pack).map_err(|e| self.index_err(e))?.ok_or_else(|| StoreError::Index {
                    path: self.dir.join("index.redb"),
                    reason: format!("object {} points at unknown pack {}", id.short(), loc.pack),
                })?;
            return Ok(Some((hash, loc)));
        }
        Ok(self.extra.get(id).map(|(h, e)| (*h, Location { pack: 0, offset: e.offset, len: e.len, kind: e.kind })))
    }

    /// Whether the store holds `id` (durably, or queued in this process).
    pub fn contains(&self, id: &ObjectId) -> Result<bool> {
        if self.pending.lock().expect("pending lock").contains(id) {
            return Ok(true);
        }
        let _g = self.gc.lock.read().unwrap_or_else(|e| e.into_inner());
        let present = self.locate(id)?.is_some();
        if present {
            self.note_present(std::slice::from_ref(id));
        }
        Ok(present)
    }

    /// Which of `ids` are held (one index transaction).
    pub fn contains_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let _g = self.gc.lock.read().unwrap_or_else(|e| e.into_inner());
        let locs = self.index.get_many(ids).map_err(|e| self.index_err(e))?;
        self.note_present_locs(ids, &locs);
        let pending = self.pending.lock().expect("pending lock");
        Ok(ids
            .iter()
            .zip(locs)
            .map(|(id, l)| l.is_some() || pending.contains(id) || self.extra.contains_key(id))
            .collect())
    }

    /// Claim `id` for writing: true if the caller must store it, false when
    /// it is already stored or another worker is storing it.
    pub fn claim(&self, id: &ObjectId) -> Result<bool> {
        let _g = self.gc.lock.read().unwrap_or_else(|e| e.into_inner());
        if self.locate(id)?.is_some() {
            self.note_present(std::slice::from_ref(id));
            return Ok(false);
        }
        Ok(self.pending.lock().expect("pending lock").insert(*id))
    }

    /// A writer was told these objects are present: rescue any that a
    /// pending garbage collection condemned.
    fn note_present(&self, ids: &[ObjectId]) {
        let c = self.gc.condemned.read().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = c.as_ref() {
            let hit: Vec<ObjectId> = ids.iter().filter(|id| c.contains(id)).copied().collect();
            if !hit.is_empty() {
                tracing::debug!(objects = hit.len(), store = %self.dir.display(), "condemned objects rescued by a writer");
                self.gc.rescued.lock().unwrap_or_else(|e| e.into_inner()).extend(hit);
            }
        }
    }

    fn note_present_locs(&self, ids: &[ObjectId], locs: &[Option<Location>]) {
        if self.gc.condemned.read().unwrap_or_else(|e| e.into_inner()).is_none() {
            return;
        }
        let present: Vec<ObjectId> = ids.iter().zip(locs).filter(|(_, l)| l.is_some()).map(|(i, _)| *i).collect();
        self.note_present(&present);
    }

    fn pack_file(&self, hash: &[u8; 32]) -> Result<Arc<File>> {
        if let Some(f) = self.files.read().expect("files lock").get(hash) {
            return Ok(f.clone());
        }
        let mut files = self.files.write().expect("files lock");
        if let Some(f) = files.get(hash) {
            return Ok(f.clone());
        }
        let p = pack::pack_path(&self.dir, hash);
        let f = match File::open(&p) {
            Ok(f) => f,
            // moved aside by a garbage collection after this reader looked it up
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                File::open(self.dir.join("trash").join(format!("{}.pack", hex::encode(hash))))
                    .map_err(|_| StoreError::Io { op: "opening pack", path: p.clone(), source: e })?
            }
            Err(e) => return Err(StoreError::Io { op: "opening pack", path: p, source: e }),
        };
        let f = Arc::new(f);
        if files.len() >= 256 {
            files.clear();
        }
        files.insert(*hash, f.clone());
        Ok(f)
    }

    /// Raw record bytes of an object, check hash verified.
    pub fn read_record(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let (hash, loc) = self.locate(id)?.ok_or(StoreError::Missing(*id, "not in the index"))?;
        let f = self.pack_file(&hash)?;
        pack::read_record_at(&f, loc.offset, loc.len, id).map_err(|reason| StoreError::Corrupt {
            id: *id,
            pack: pack::pack_path(&self.dir, &hash).display().to_string(),
            offset: loc.offset,
            reason,
        })
    }

    /// Decrypt and verify an object of the expected kind.
    pub fn get(&self, id: &ObjectId, kind: ObjectKind) -> Result<Vec<u8>> {
        self.get_linked(id, kind).map(|x| x.0)
    }

    /// Decrypt and verify an object; also return its links.
    pub fn get_linked(&self, id: &ObjectId, kind: ObjectKind) -> Result<(Vec<u8>, Vec<ObjectId>)> {
        let keys = self.keys()?.clone();
        let raw = self.read_record(id)?;
        open_record(&keys, &raw, id, kind).map_err(|reason| {
            let (pack, offset) = self
                .locate(id)
                .ok()
                .flatten()
                .map(|(h, l)| (pack::pack_path(&self.dir, &h).display().to_string(), l.offset))
                .unwrap_or_default();
            StoreError::Corrupt { id: *id, pack, offset, reason }
        })
    }

    /// A whole directory (all tree parts), see [`crate::objects::load_dir`].
    pub fn load_dir(&self, id: &ObjectId) -> Result<Vec<Node>> {
        crate::objects::load_dir(self, id).map_err(|e| StoreError::Object(e.message, e.damage))
    }

    /// Seal a plaintext into a record: (id, encoded record).
    pub fn seal(&self, kind: ObjectKind, plaintext: &[u8], links: Vec<ObjectId>) -> Result<(ObjectId, Vec<u8>)> {
        let keys = self.keys()?;
        let id = keys.id_for(kind, &links, plaintext);
        let body = keys.seal(kind, &id, &links, plaintext, self.config.packs.compression_level);
        Ok((id, Record { kind, id, links, body }.encode()))
    }

    /// A writer that appends records to packs. Only one per store at a
    /// time makes sense; it needs a writable store.
    pub fn sink(&self) -> Result<PackSink<&Store>> {
        if !self.writable {
            return Err(StoreError::Locked { path: self.dir.clone(), holder: "another process".into() });
        }
        Ok(PackSink { store: self, current: None, stats: WriteStats::default() })
    }

    /// A sink that owns a reference to the store (for long-lived writers).
    pub fn owned_sink(self: &Arc<Self>) -> Result<PackSink<Arc<Store>>> {
        if !self.writable {
            return Err(StoreError::Locked { path: self.dir.clone(), holder: "another process".into() });
        }
        Ok(PackSink { store: self.clone(), current: None, stats: WriteStats::default() })
    }

    /// Which of `ids` are durably stored (indexed), ignoring objects still
    /// being written. This is what a peer may promise to others.
    pub fn durable_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let _g = self.gc.lock.read().unwrap_or_else(|e| e.into_inner());
        let locs = self.index.get_many(ids).map_err(|e| self.index_err(e))?;
        self.note_present_locs(ids, &locs);
        Ok(ids.iter().zip(locs).map(|(id, l)| l.is_some() || self.extra.contains_key(id)).collect())
    }

    /// Bytes in pack files (what this store occupies).
    pub fn bytes_stored(&self) -> Result<u64> {
        Ok(self.index_packs()?.iter().map(|p| p.2).sum())
    }

    /// When a snapshot record was stored here (file modification time).
    pub fn snapshot_stored_ns(&self, id: &ObjectId) -> i64 {
        std::fs::metadata(self.dir.join("snapshots").join(id.to_hex()))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }

    /// Ids of all snapshots (unordered).
    pub fn snapshot_ids(&self) -> Result<Vec<ObjectId>> {
        let d = self.dir.join("snapshots");
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(StoreError::io("listing", &d))? {
            let e = e.map_err(StoreError::io("listing", &d))?;
            if let Some(id) = e.file_name().to_str().and_then(|n| ObjectId::from_hex(n).ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Raw record bytes of a snapshot (check hash verified).
    pub fn read_snapshot_record(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let p = self.dir.join("snapshots").join(id.to_hex());
        let b = fs::read(&p).map_err(StoreError::io("reading snapshot", &p))?;
        let (rec, _) = Record::decode(&b).map_err(|e| StoreError::Corrupt {
            id: *id,
            pack: p.display().to_string(),
            offset: 0,
            reason: e.to_string(),
        })?;
        if rec.id != *id || rec.kind != ObjectKind::Snapshot {
            return Err(StoreError::Corrupt {
                id: *id,
                pack: p.display().to_string(),
                offset: 0,
                reason: "file holds a different object".into(),
            });
        }
        Ok(b)
    }

    /// Decrypt a snapshot record.
    pub fn load_snapshot(&self, id: &ObjectId) -> Result<SnapshotRecord> {
        let keys = self.keys()?.clone();
        let raw = self.read_snapshot_record(id)?;
        let p = self.dir.join("snapshots").join(id.to_hex());
        let (plain, _) = open_record(&keys, &raw, id, ObjectKind::Snapshot).map_err(|reason| StoreError::Corrupt {
            id: *id,
            pack: p.display().to_string(),
            offset: 0,
            reason,
        })?;
        SnapshotRecord::decode(&plain).map_err(|source| StoreError::Format { id: *id, source })
    }

    /// All snapshots, oldest first. Unreadable ones are returned as errors
    /// in the second list so one bad file does not hide the others.
    pub fn snapshots(&self) -> Result<SnapshotList> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for id in self.snapshot_ids()? {
            match self.load_snapshot(&id) {
                Ok(r) => ok.push((id, r)),
                Err(e @ StoreError::NoKey(_)) => return Err(e),
                Err(e) => bad.push(e),
            }
        }
        ok.sort_by_key(|(id, r)| (r.start_ns, *id));
        Ok((ok, bad))
    }

    /// Resolve `latest`, a full id or a unique prefix.
    pub fn resolve_snapshot(&self, spec: &str) -> Result<ObjectId> {
        if spec == "latest" {
            let (snaps, _) = self.snapshots()?;
            return snaps
                .last()
                .map(|(id, _)| *id)
                .ok_or_else(|| StoreError::SnapshotNotFound(spec.into(), self.dir.clone()));
        }
        let spec_l = spec.to_ascii_lowercase();
        let matches: Vec<ObjectId> =
            self.snapshot_ids()?.into_iter().filter(|id| id.to_hex().starts_with(&spec_l)).collect();
        match matches.len() {
            0 => Err(StoreError::SnapshotNotFound(spec.into(), self.dir.clone())),
            1 => Ok(matches[0]),
            _ => Err(StoreError::Ambiguous(
                spec.into(),
                matches.iter().map(|m| m.short()).collect::<Vec<_>>().join(", "),
            )),
        }
    }

    /// Seal and durably write a snapshot record. Call only after every
    /// object it references is durable (after [`PackSink::finish`]).
    pub fn write_snapshot(&self, rec: &SnapshotRecord) -> Result<ObjectId> {
        let (id, bytes) = self.seal(ObjectKind::Snapshot, &rec.encode(), vec![rec.tree])?;
        self.put_snapshot_record(&id, &bytes)?;
        Ok(id)
    }

    /// Durably store an already-sealed snapshot record (replication).
    /// Never overwrites: an existing snapshot with this id is left alone.
    pub fn put_snapshot_record(&self, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        let d = self.dir.join("snapshots");
        if d.join(id.to_hex()).exists() {
            return Ok(false);
        }
        crate::failpoint::hit("snapshot.before_write");
        write_atomic(&d, &self.dir.join("tmp"), &id.to_hex(), bytes)?;
        crate::failpoint::hit("snapshot.after_write");
        Ok(true)
    }

    /// [`Store::put_snapshot_record`] with the time to record as the
    /// snapshot's (a repaired replica keeps the time the mesh first held it).
    pub fn put_snapshot_record_at(&self, id: &ObjectId, bytes: &[u8], time: std::time::SystemTime) -> Result<bool> {
        let d = self.dir.join("snapshots");
        if d.join(id.to_hex()).exists() {
            return Ok(false);
        }
        write_atomic_at(&d, &self.dir.join("tmp"), &id.to_hex(), bytes, Some(time))?;
        Ok(true)
    }

    /// Remove a snapshot record (retention decided it goes). Its objects
    /// stay until garbage collection finds them unreferenced.
    pub fn forget_snapshot(&self, id: &ObjectId) -> Result<()> {
        let d = self.dir.join("snapshots");
        let p = d.join(id.to_hex());
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::SnapshotNotFound(id.to_hex(), self.dir.clone()));
            }
            Err(e) => return Err(StoreError::Io { op: "removing", path: p, source: e }),
        }
        sync_dir(&d).map_err(StoreError::io("syncing", &d))?;
        Ok(())
    }

    /// Start a write session (one backup). A garbage collection does not
    /// sweep what it condemned while a session was in flight until that
    /// session has ended (its snapshot is then committed and marks them).
    pub fn session(&self) -> Session<'_> {
        let mut g = self.gc.sessions.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let id = g.0;
        g.1.insert(id);
        Session { store: self, id }
    }

    /// The sessions in flight: (this open store's instance, session ids).
    pub fn active_sessions(&self) -> (u64, Vec<u64>) {
        let g = self.gc.sessions.lock().unwrap_or_else(|e| e.into_inner());
        (self.gc.instance, g.1.iter().copied().collect())
    }

    /// Whether every session in `ids` (of `instance`) has ended. Sessions
    /// of an earlier process ended when it did.
    pub fn sessions_ended(&self, instance: u64, ids: &[u64]) -> bool {
        if instance != self.gc.instance {
            return true;
        }
        let g = self.gc.sessions.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().all(|i| !g.1.contains(i))
    }

    /// Hold while checking that a snapshot's objects are present and
    /// committing it: no sweep runs in between.
    pub fn commit_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gc.lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive against every presence answer and commit (a sweep).
    pub fn sweep_guard(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gc.lock.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Install the condemned set of a new garbage collection batch (the
    /// rescued set starts empty), or clear it after the sweep.
    pub fn set_condemned(&self, c: Option<Arc<dyn CondemnedSet>>) {
        *self.gc.condemned.write().unwrap_or_else(|e| e.into_inner()) = c;
        self.gc.rescued.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether a condemned set is installed.
    pub fn has_condemned(&self) -> bool {
        self.gc.condemned.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Condemned objects a writer was told are present since the condemned
    /// set was installed.
    pub fn rescued(&self) -> HashSet<ObjectId> {
        self.gc.rescued.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Visit every indexed object, in id order.
    pub fn for_each_object(&self, f: impl FnMut(ObjectId, Location)) -> Result<()> {
        self.index.for_each_object(f).map_err(|e| self.index_err(e))
    }

    /// Up to `limit` indexed objects after `after` in id order.
    pub fn objects_page(&self, after: Option<ObjectId>, limit: usize) -> Result<Vec<(ObjectId, Location)>> {
        self.index.objects_page(after, limit).map_err(|e| self.index_err(e))
    }

    /// Indexed packs: (seq, hash, size).
    pub fn packs(&self) -> Result<Vec<(u64, [u8; 32], u64)>> {
        self.index_packs()
    }

    /// Drop objects from the index (garbage collection's sweep). Their bytes
    /// stay in their packs until those are repacked.
    pub fn remove_objects(&self, ids: &[ObjectId]) -> Result<u64> {
        self.gc.removals.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.index.remove_objects(ids).map_err(|e| self.index_err(e))
    }

    /// Changes whenever objects leave the index: knowledge that a subtree
    /// is complete is only valid while this stays the same.
    pub fn removals(&self) -> u64 {
        self.gc.removals.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Copy the `live` objects of packs `seqs` into new packs, point the
    /// index at the copies and retire the old packs to `trash/` (deleted by
    /// a later [`Store::empty_trash`]). Each copy is verified as it is
    /// read. A crash at any point leaves either the old or the new location
    /// indexed; a duplicate pack is collected by the next run.
    pub fn repack(&self, seqs: &[u64], live: &[(ObjectId, Location)]) -> Result<RepackStats> {
        if !self.writable {
            return Err(StoreError::Locked { path: self.dir.clone(), holder: "another process".into() });
        }
        let packs: HashMap<u64, ([u8; 32], u64)> =
            self.index_packs()?.into_iter().map(|(seq, h, size)| (seq, (h, size))).collect();
        let tmp = self.dir.join("tmp");
        let mut infos = Vec::new();
        let mut cur: Option<PackWriter> = None;
        let mut stats = RepackStats::default();
        let res = (|| -> Result<()> {
            for (id, loc) in live {
                let (hash, _) = packs.get(&loc.pack).ok_or_else(|| StoreError::Index {
                    path: self.dir.join("index.redb"),
                    reason: format!("object {} points at unknown pack {}", id.short(), loc.pack),
                })?;
                let f = self.pack_file(hash)?;
                let rec = pack::read_record_at(&f, loc.offset, loc.len, id).map_err(|reason| StoreError::Corrupt {
                    id: *id,
                    pack: pack::pack_path(&self.dir, hash).display().to_string(),
                    offset: loc.offset,
                    reason,
                })?;
                if cur.is_none() {
                    cur = Some(PackWriter::create(&tmp).map_err(StoreError::io("creating pack in", &tmp))?);
                }
                let w = cur.as_mut().expect("just set");
                w.append(*id, loc.kind, &rec).map_err(StoreError::io("writing pack in", &tmp))?;
                stats.objects += 1;
                if w.len() >= self.config.packs.target_bytes {
                    let info = cur
                        .take()
                        .expect("set")
                        .finish(&self.dir)
                        .map_err(StoreError::io("finishing pack in", &self.dir))?;
                    infos.push(info);
                }
            }
            if let Some(w) = cur.take() {
                infos.push(w.finish(&self.dir).map_err(StoreError::io("finishing pack in", &self.dir))?);
            }
            Ok(())
        })();
        if let Err(e) = res {
            if let Some(w) = cur.take() {
                w.discard();
            }
            return Err(e);
        }
        // a rewrite identical to its original (nothing was garbage) is the
        // same pack under the same name: it must not be retired
        let new_hashes: HashSet<[u8; 32]> = infos.iter().map(|i| i.hash).collect();
        let seqs: Vec<u64> =
            seqs.iter().copied().filter(|s| packs.get(s).is_none_or(|(h, _)| !new_hashes.contains(h))).collect();
        let seqs = &seqs[..];
        let dropped = self.index.replace_packs(&infos, seqs).map_err(|e| self.index_err(e))?;
        if dropped > 0 {
            tracing::debug!(objects = dropped, "index entries of retired packs dropped");
        }
        let trash = self.dir.join("trash");
        fs::create_dir_all(&trash).map_err(StoreError::io("creating", &trash))?;
        let mut dirs = HashSet::new();
        for seq in seqs {
            let Some((hash, size)) = packs.get(seq) else { continue };
            let from = pack::pack_path(&self.dir, hash);
            let to = trash.join(format!("{}.pack", hex::encode(hash)));
            match fs::rename(&from, &to) {
                Ok(()) => {
                    // the time it was retired, for the grace period
                    if let Ok(f) = fs::OpenOptions::new().write(true).open(&to) {
                        let _ = f.set_modified(std::time::SystemTime::now());
                    }
                    stats.bytes_retired += size;
                    stats.packs_retired += 1;
                    if let Some(d) = from.parent() {
                        dirs.insert(d.to_path_buf());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { op: "retiring pack", path: from, source: e }),
            }
        }
        for d in dirs.iter().chain(std::iter::once(&trash)) {
            sync_dir(d).map_err(StoreError::io("syncing", d))?;
        }
        stats.packs_written = infos.len() as u64;
        stats.bytes_written = infos.iter().map(|i| i.size).sum();
        Ok(stats)
    }

    /// Delete retired packs moved to `trash/` before `before`. Returns the
    /// bytes freed.
    pub fn empty_trash(&self, before: std::time::SystemTime) -> Result<u64> {
        let trash = self.dir.join("trash");
        let mut freed = 0;
        let rd = match fs::read_dir(&trash) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::Io { op: "listing", path: trash, source: e }),
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.modified().map(|t| t < before).unwrap_or(false) && fs::remove_file(e.path()).is_ok() {
                freed += m.len();
            }
        }
        Ok(freed)
    }

    /// Move a damaged object aside: its bytes (as found) are copied to
    /// `quarantine/` and it leaves the index, so it can be fetched again
    /// from a replica. Returns where the bytes went.
    pub fn quarantine(&self, id: &ObjectId, reason: &str) -> Result<PathBuf> {
        use std::os::unix::fs::FileExt;
        let (hash, loc) = self.locate(id)?.ok_or(StoreError::Missing(*id, "not in the index"))?;
        let q = self.dir.join("quarantine");
        fs::create_dir_all(&q).map_err(StoreError::io("creating", &q))?;
        let dest = q.join(format!("{}.{}.{}", id.to_hex(), hex::encode(&hash[..8]), loc.offset));
        let mut buf = vec![0u8; loc.len as usize];
        if let Ok(f) = self.pack_file(&hash) {
            if f.read_exact_at(&mut buf, loc.offset).is_ok() {
                let _ = fs::write(&dest, &buf);
            }
        }
        self.gc.removals.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.index.remove_object(id).map_err(|e| self.index_err(e))?;
        tracing::error!(object = %id.short(), pack = %hex::encode(hash), offset = loc.offset, %reason, quarantined = %dest.display(), "damaged object quarantined");
        Ok(dest)
    }

    /// Write a record received from elsewhere through `sink` after checking
    /// it (check hash; with the key also decryption and id).
    pub fn import_record<S: std::ops::Deref<Target = Store>>(
        &self,
        sink: &mut PackSink<S>,
        bytes: &[u8],
    ) -> Result<bool> {
        let (rec, used) = Record::decode(bytes).map_err(|e| StoreError::Corrupt {
            id: ObjectId::ZERO,
            pack: "incoming record".into(),
            offset: 0,
            reason: e.to_string(),
        })?;
        if used != bytes.len() {
            return Err(StoreError::Corrupt {
                id: rec.id,
                pack: "incoming record".into(),
                offset: 0,
                reason: "trailing bytes".into(),
            });
        }
        if let Some(keys) = &self.keys {
            keys.open(rec.kind, &rec.id, &rec.links, &rec.body).map_err(|e| StoreError::Corrupt {
                id: rec.id,
                pack: "incoming record".into(),
                offset: 0,
                reason: e.to_string(),
            })?;
        }
        if !self.claim(&rec.id)? {
            return Ok(false);
        }
        sink.add(rec.id, rec.kind, bytes)?;
        Ok(true)
    }
}

/// Decrypt a raw record and check it is `id` of `kind`; returns the
/// plaintext and the record's links.
pub fn open_record(
    keys: &Keys,
    raw: &[u8],
    id: &ObjectId,
    kind: ObjectKind,
) -> std::result::Result<(Vec<u8>, Vec<ObjectId>), String> {
    let (rec, _) = Record::decode(raw).map_err(|e| e.to_string())?;
    if rec.id != *id {
        return Err(format!("record holds {} instead", rec.id.short()));
    }
    if rec.kind != kind {
        return Err(format!("expected a {} object, found a {}", kind.name(), rec.kind.name()));
    }
    let plain = keys.open(rec.kind, &rec.id, &rec.links, &rec.body).map_err(|e: OpenError| e.to_string())?;
    Ok((plain, rec.links))
}

/// Appends records to packs, closing each at the target size. `S` is how
/// the sink refers to its store: `&Store` in a scoped pipeline,
/// `Arc<Store>` in a long-lived writer.
pub struct PackSink<S: std::ops::Deref<Target = Store>> {
    store: S,
    current: Option<PackWriter>,
    stats: WriteStats,
}

impl<S: std::ops::Deref<Target = Store>> PackSink<S> {
    /// Append a claimed object's record.
    pub fn add(&mut self, id: ObjectId, kind: ObjectKind, record: &[u8]) -> Result<()> {
        let tmp = self.store.dir.join("tmp");
        if self.current.is_none() {
            self.current = Some(PackWriter::create(&tmp).map_err(StoreError::io("creating pack in", &tmp))?);
        }
        let w = self.current.as_mut().expect("just set");
        w.append(id, kind, record).map_err(StoreError::io("writing pack in", &tmp))?;
        self.stats.objects += 1;
        self.stats.bytes += record.len() as u64;
        if w.len() >= self.store.config.packs.target_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Close the current pack: durable on disk, then indexed.
    pub fn flush(&mut self) -> Result<()> {
        let Some(w) = self.current.take() else {
            return Ok(());
        };
        if w.is_empty() {
            w.discard();
            return Ok(());
        }
        let info =
            w.finish(&self.store.dir).map_err(StoreError::io("finishing pack in", &self.store.dir.join("packs")))?;
        self.store.index.add_pack(&info).map_err(|e| self.store.index_err(e))?;
        let mut pending = self.store.pending.lock().expect("pending lock");
        for e in &info.entries {
            pending.remove(&e.id);
        }
        self.stats.packs += 1;
        Ok(())
    }

    /// Flush and return what was added.
    pub fn finish(mut self) -> Result<WriteStats> {
        self.flush()?;
        Ok(self.stats)
    }

    /// What was added so far.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }
}

impl<S: std::ops::Deref<Target = Store>> Drop for PackSink<S> {
    fn drop(&mut self) {
        if let Some(w) = self.current.take() {
            // unfinished (error path): the objects were never indexed
            let ids: Vec<ObjectId> = w_ids(&w);
            w.discard();
            let mut pending = self.store.pending.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                pending.remove(&id);
            }
        }
    }
}

fn w_ids(w: &PackWriter) -> Vec<ObjectId> {
    w.entry_ids()
}
