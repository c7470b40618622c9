//! This node's stores (`data_dir/sources/NAME`): its own (with its key)
//! and keyless replicas of other sources, each with a shared writer for
//! incoming replicas.

use omesh_core::crypto::SnapshotSigner;
use omesh_core::keyfile::KeyFile;
use omesh_core::store::keybind::{self, KeyBinding};
use omesh_core::store::walk::{GraphWalk, Visit, infallible, resolve_local};
use omesh_core::store::{Access, InitOptions, KeySource, PackSink, Store, StoreError};
use omesh_core::units::FreeFloor;
use omesh_proto::{ObjectId, Seal};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What writes for one source may use on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Allowance {
    /// Most bytes the source may store here, records of its snapshots
    /// included (0 = no quota).
    pub quota: u64,
    /// Free space the file system must keep after the write.
    pub min_free: FreeFloor,
}

/// A write that was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteRefused {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source's quota here would be exceeded.
    #[error("the quota of {quota} bytes would be exceeded ({used} bytes stored)")]
    Quota {
        /// the quota
        quota: u64,
        /// bytes stored and being stored
        used: u64,
    },
    /// The disk would fall below its free-space floor.
    #[error("only {free} bytes are free on the disk of {}; this node keeps at least {min_free} bytes free ([storage] min_free)", path.display())]
    DiskFull {
        /// bytes free
        free: u64,
        /// the floor
        min_free: u64,
        /// the store
        path: PathBuf,
    },
    /// A write to the store failed while records of this stream were in
    /// the pack being written: that pack was dropped, so they are not
    /// stored (and must not be acknowledged).
    #[error("a write to the store at {} failed ({why}); the records of this transfer that were not yet durable were dropped and must be sent again", path.display())]
    Torn {
        /// the store
        path: PathBuf,
        /// the failure
        why: String,
        /// whether it was the disk filling up (ENOSPC)
        full: bool,
    },
}

impl WriteRefused {
    /// Whether the disk is full: a floor refusal, or ENOSPC anywhere down
    /// the chain of causes of a failed write.
    pub fn disk_full(&self) -> bool {
        match self {
            WriteRefused::DiskFull { .. } => true,
            WriteRefused::Torn { full, .. } => *full,
            WriteRefused::Store(e) => is_enospc(e),
            WriteRefused::Quota { .. } => false,
        }
    }
}

const ENOSPC: i32 = 28;

fn is_enospc(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>().is_some_and(|io| io.raw_os_error() == Some(ENOSPC)) {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The shared writer of a store and what the source uses there.
#[derive(Default)]
struct Writer {
    sink: Option<PackSink<Arc<Store>>>,
    /// Bytes the source occupies (packs, pack being written, snapshot
    /// records), as of the store's removal count it was computed at;
    /// every admitted write adds to it, so parallel streams reserve from
    /// one account.
    used: Option<(u64, u64)>,
    /// Failed writes so far, each of which dropped the pack being written
    /// with whatever other streams had put in it, and the last failure.
    torn: Torn,
}

/// The failed writes of a store's writer so far, and the last one.
#[derive(Default)]
struct Torn {
    count: u64,
    why: String,
    full: bool,
}

impl Torn {
    fn note(&mut self, e: &StoreError) {
        *self = Torn { count: self.count + 1, why: e.to_string(), full: is_enospc(e) };
    }
}

/// Where a stream of records started, to tell at its end whether a failed
/// write dropped any of them ([`SourceStore::finish_stream`]).
#[derive(Clone, Copy, Debug)]
pub struct StreamMark(u64);

/// One source's store on this node, with a shared writer for incoming
/// replicas.
pub struct SourceStore {
    /// The store.
    pub store: Arc<Store>,
    writer: Mutex<Writer>,
    /// Trees known to have their whole subtree present (speeds up
    /// completeness checks of later snapshots), valid for the store's
    /// removal count it was learned at.
    complete: Mutex<(u64, HashMap<ObjectId, Seal>)>,
}

impl SourceStore {
    fn new(store: Store) -> Self {
        SourceStore {
            store: Arc::new(store),
            writer: Mutex::new(Writer::default()),
            complete: Mutex::new((0, HashMap::new())),
        }
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit `n` more bytes under `allow` and count them as used.
    fn admit(&self, w: &mut Writer, n: u64, allow: Allowance) -> Result<(), WriteRefused> {
        if allow.quota > 0 {
            let removals = self.store.removals();
            let used = match w.used {
                Some((r, u)) if r == removals => u,
                _ => {
                    let pending = w.sink.as_ref().map_or(0, |s| s.unflushed_bytes());
                    let u = self.store.bytes_stored()? + self.store.snapshot_bytes()? + pending;
                    w.used = Some((removals, u));
                    u
                }
            };
            if used.saturating_add(n) > allow.quota {
                return Err(WriteRefused::Quota { quota: allow.quota, used });
            }
        }
        let (free, total) = self.store.free_bytes()?;
        let floor = allow.min_free.bytes(total);
        if free < n.saturating_add(floor) {
            return Err(WriteRefused::DiskFull { free, min_free: floor, path: self.store.dir().to_path_buf() });
        }
        if let Some((_, u)) = w.used.as_mut() {
            *u += n;
        }
        Ok(())
    }

    /// Append one verified record (blocking) if `allow` admits it. Returns
    /// whether it was new (a record already held costs nothing).
    pub fn write_record(
        &self,
        id: ObjectId,
        kind: omesh_proto::ObjectKind,
        seal: Seal,
        bytes: &[u8],
        allow: Allowance,
    ) -> Result<bool, WriteRefused> {
        if !self.store.claim(&id, seal)? {
            return Ok(false);
        }
        let mut g = self.writer();
        let r = (|| {
            self.admit(&mut g, bytes.len() as u64, allow)?;
            if g.sink.is_none() {
                g.sink = Some(self.store.owned_sink()?);
            }
            if let Err(e) = g.sink.as_mut().expect("set").add(id, kind, seal, bytes) {
                // the sink dropped its pack: other streams' records in it
                // went too, and their streams must not report them stored
                g.torn.note(&e);
                g.used = None;
                return Err(e.into());
            }
            Ok(())
        })();
        if r.is_err() {
            self.store.release_claim(&id);
        }
        r.map(|()| true)
    }

    /// Mark the start of a stream of records (before its first
    /// [`SourceStore::write_record`]).
    pub fn start_stream(&self) -> StreamMark {
        StreamMark(self.writer().torn.count)
    }

    /// Make a stream's records durable, and fail when a write failure since
    /// `mark` may have dropped some of them (blocking).
    pub fn finish_stream(&self, mark: StreamMark) -> Result<(), WriteRefused> {
        let _ = self.flush();
        let g = self.writer();
        if g.torn.count != mark.0 {
            let (why, full) = (g.torn.why.clone(), g.torn.full);
            return Err(WriteRefused::Torn { path: self.store.dir().to_path_buf(), why, full });
        }
        Ok(())
    }

    /// Admit a snapshot record of `n` bytes under `allow` (blocking),
    /// before it is committed.
    pub fn admit_snapshot(&self, n: u64, allow: Allowance) -> Result<(), WriteRefused> {
        let mut g = self.writer();
        self.admit(&mut g, n, allow)
    }

    /// Make everything written so far durable (blocking).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut g = self.writer();
        if let Some(s) = g.sink.as_mut()
            && let Err(e) = s.flush()
        {
            g.torn.note(&e);
            g.used = None;
            return Err(e);
        }
        Ok(())
    }

    /// Check that everything reachable from `roots` (a snapshot record's
    /// links, with their `seals`) is durably held, and is what the links
    /// name: every record held must have the seal its verified parent's
    /// link names ([`StoreError::NotNamed`] otherwise). Returns the missing
    /// ids (at most `limit`).
    pub fn missing_below(&self, roots: &[ObjectId], seals: &[Seal], limit: usize) -> Result<Vec<ObjectId>, StoreError> {
        let mut walk = GraphWalk::from_roots(roots).verifying();
        walk.expect_seals(roots, seals);
        let mut trees = Vec::new();
        let mut missing = Vec::new();
        let removals = self.store.removals();
        let known = {
            let mut c = self.complete.lock().expect("complete lock");
            if c.0 != removals {
                // objects left the store since: forget what we knew
                *c = (removals, HashMap::new());
            }
            c.1.clone()
        };
        'walk: loop {
            let batch = walk.next(4096);
            if batch.is_empty() {
                break;
            }
            for id in batch {
                let expected = walk.expected_seal(&id);
                if let Some(seal) = known.get(&id)
                    && expected.is_none_or(|e| e == *seal)
                {
                    continue;
                }
                let v = resolve_local(&self.store, &id, expected)?;
                match &v {
                    Visit::Missing => {
                        missing.push(id);
                        if missing.len() >= limit {
                            break 'walk;
                        }
                    }
                    Visit::Object { kind, .. } if *kind != omesh_proto::ObjectKind::Blob => {
                        // resolve_local checked the record against `expected`; a
                        // tree below a format-1 parent is remembered without a
                        // seal and so only ever skipped under such a parent
                        trees.push((id, expected.unwrap_or_default()))
                    }
                    _ => {}
                }
                walk.visit(&v).map_err(infallible)?;
            }
            if let Some(c) = walk.seal_conflict() {
                return Err(StoreError::Object(
                    format!("object {} is named with two different seals", c.short()),
                    true,
                ));
            }
        }
        if missing.is_empty() {
            let mut c = self.complete.lock().expect("complete lock");
            if c.0 == removals && self.store.removals() == removals {
                if c.1.len() > 1_000_000 {
                    c.1.clear();
                }
                c.1.extend(trees);
            }
        }
        Ok(missing)
    }

    /// Forget completeness knowledge (after objects were removed).
    pub fn forget_complete(&self) {
        // a walk running now must not add what it learned before this: it
        // compares the removal count it started with, which this never is
        *self.complete.lock().expect("complete lock") = (u64::MAX, HashMap::new());
    }
}

/// Where a node keeps its stores and keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLayout {
    /// This node's name (its own store is `sources/NAME`).
    pub node: String,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// zstd level for a new own store (`[backup] compression`).
    pub compression: Option<i32>,
}

impl StoreLayout {
    /// Directory of a source's store on this node.
    pub fn source_dir(&self, source: &str) -> PathBuf {
        self.data_dir.join("sources").join(source)
    }

    /// Key file of a source on this node.
    pub fn key_path(&self, source: &str) -> PathBuf {
        self.data_dir.join("keys").join(format!("{source}.key"))
    }

    /// The key id `source` is bound to here, if any (`store::keybind`).
    pub fn bound_key(&self, source: &str) -> Result<Option<String>, StoreError> {
        keybind::bound_key(&self.source_dir(source))
    }

    /// Bind `source`'s snapshots here to `key_id`, or compare them with
    /// the binding; `accept` replaces it (`store::keybind`).
    pub fn bind_key(&self, source: &str, key_id: &str, accept: bool) -> Result<KeyBinding, StoreError> {
        keybind::bind_key(&self.source_dir(source), key_id, accept)
    }
}

/// All stores of this node.
pub struct Stores {
    cfg: StoreLayout,
    /// One slot per source: the registry lock is held only to find a
    /// slot; opening a store (which re-indexes packs and can take a while)
    /// holds only that source's slot, so one slow open does not stall
    /// requests for every other source.
    map: Mutex<HashMap<String, Slot>>,
    /// Signs the snapshot records of the own store (the node identity).
    signer: Option<Arc<dyn SnapshotSigner>>,
}

type Slot = Arc<Mutex<Option<Arc<SourceStore>>>>;

impl Stores {
    /// Registry for a node's data directory.
    pub fn new(cfg: StoreLayout) -> Self {
        Stores { cfg, map: Mutex::new(HashMap::new()), signer: None }
    }

    /// A registry whose own store signs its snapshot records with `signer`
    /// (a mesh node: peers accept only signed records).
    pub fn with_signer(cfg: StoreLayout, signer: Arc<dyn SnapshotSigner>) -> Self {
        Stores { cfg, map: Mutex::new(HashMap::new()), signer: Some(signer) }
    }

    fn slot(&self, source: &str) -> Slot {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).entry(source.to_string()).or_default().clone()
    }

    /// This node's own store, created (with a new key) when absent. Only
    /// what makes a snapshot (a backup) may call this: reading commands use
    /// [`Stores::own_existing`], so they never mint a key.
    pub fn own(&self) -> Result<Arc<SourceStore>, StoreError> {
        self.own_opened(true).map(|s| s.expect("created when absent"))
    }

    /// This node's own store if it has one; `None` before its first backup
    /// (nothing is created).
    pub fn own_existing(&self) -> Result<Option<Arc<SourceStore>>, StoreError> {
        self.own_opened(false)
    }

    fn own_opened(&self, create: bool) -> Result<Option<Arc<SourceStore>>, StoreError> {
        let slot = self.slot(&self.cfg.node);
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.as_ref() {
            return Ok(Some(s.clone()));
        }
        let exists = self.cfg.source_dir(&self.cfg.node).join(omesh_core::store::config::CONFIG_FILE).exists();
        if !exists && !create {
            return Ok(None);
        }
        let store = open_own_store(&self.cfg)?;
        if let Some(signer) = &self.signer {
            store.set_signer(signer.clone());
        }
        let s = Arc::new(SourceStore::new(store));
        *g = Some(s.clone());
        Ok(Some(s))
    }

    /// A source's store; `create` makes a keyless replica store when absent.
    /// Concurrent requests for a new source wait on its slot, so they never
    /// race to open (and lock) the same store twice.
    pub fn get(&self, source: &str, create: bool) -> Result<Option<Arc<SourceStore>>, StoreError> {
        if source == self.cfg.node {
            // never a keyless replica store under the own name, and never a
            // new key for a read
            return self.own_existing();
        }
        let slot = self.slot(source);
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = g.as_ref() {
            return Ok(Some(s.clone()));
        }
        let dir = self.cfg.source_dir(source);
        let store = if dir.join(omesh_core::store::config::CONFIG_FILE).exists() {
            Store::open(&dir, Access::Write, KeySource::None)?
        } else if create {
            Store::init_replica(&dir, source)?
        } else {
            return Ok(None);
        };
        let s = Arc::new(SourceStore::new(store));
        *g = Some(s.clone());
        Ok(Some(s))
    }

    /// Where this registry's stores and keys are.
    pub fn layout(&self) -> &StoreLayout {
        &self.cfg
    }

    /// Names of all sources with a store here.
    pub fn source_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cfg.data_dir.join("sources"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| omesh_proto::msg::valid_name(n))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Open (or create) this node's own store in write mode.
pub fn open_own_store(cfg: &StoreLayout) -> Result<Store, StoreError> {
    let dir = cfg.source_dir(&cfg.node);
    let key_path = cfg.key_path(&cfg.node);
    if dir.join(omesh_core::store::config::CONFIG_FILE).exists() {
        return Store::open(&dir, Access::Write, KeySource::File(key_path));
    }
    std::fs::create_dir_all(cfg.data_dir.join("keys")).map_err(|source| StoreError::Io {
        op: "creating",
        path: cfg.data_dir.join("keys"),
        source,
    })?;
    let mut opts = InitOptions::new(&cfg.node);
    opts.key_file = Some(key_path.clone());
    if let Some(c) = cfg.compression {
        opts.compression = c;
    }
    if key_path.exists() {
        // the key survived (or was imported): a new store for the same source
        opts.existing_key = Some(KeyFile::load(&key_path)?);
    } else {
        tracing::warn!(key = %key_path.display(), "created a new key for this node's snapshots; export it with `omesh key export --config` and keep it off this server");
    }
    Store::init(&dir, opts)
}

/// Open a source's store read-only for restores and listings (beside a
/// running daemon). `None` when this node holds nothing of that source.
pub fn open_source_read(cfg: &StoreLayout, source: &str) -> Result<Option<Store>, StoreError> {
    let dir = cfg.source_dir(source);
    if !dir.join(omesh_core::store::config::CONFIG_FILE).exists() {
        return Ok(None);
    }
    let key = cfg.key_path(source);
    let ks = if key.exists() { KeySource::File(key) } else { KeySource::None };
    Store::open(&dir, Access::Read, ks).map(Some)
}
