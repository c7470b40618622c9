//! The mesh: serving and storing other nodes' replicas, pushing our
//! snapshots to peers, and restoring from them.
//!
//! - [`Stores`]: this node's per-source stores (`data_dir/sources/NAME`):
//!   our own (with its key) and keyless replicas of other sources.
//! - [`server`]: request handlers, one QUIC stream per request.
//! - [`client`]: a connection to one peer and the requests it can make.
//! - [`placement`]: which peers get a snapshot (pure decision logic).
//! - [`replicate`]: pushing a snapshot to one peer.
//! - [`source`]: an `ObjectSource` that fetches from several peers.

pub mod client;
pub mod replicate;
pub mod server;
pub mod source;

pub use omesh_core::policy::placement;

use crate::config::NodeConfig;
use crate::keyfile::KeyFile;
use crate::store::{Access, InitOptions, KeySource, PackSink, Store, StoreError};
use omesh_proto::ObjectId;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// One source's store on this node, with a shared writer for incoming
/// replicas.
pub struct SourceStore {
    /// The store.
    pub store: Arc<Store>,
    sink: Mutex<Option<PackSink<Arc<Store>>>>,
    /// Trees known to have their whole subtree present (speeds up
    /// completeness checks of later snapshots), valid for the store's
    /// removal count it was learned at.
    complete: Mutex<(u64, HashSet<ObjectId>)>,
}

impl SourceStore {
    fn new(store: Store) -> Self {
        SourceStore { store: Arc::new(store), sink: Mutex::new(None), complete: Mutex::new((0, HashSet::new())) }
    }

    /// Append one verified record (blocking). Returns whether it was new.
    pub fn write_record(&self, id: ObjectId, kind: omesh_proto::ObjectKind, bytes: &[u8]) -> Result<bool, StoreError> {
        if !self.store.claim(&id)? {
            return Ok(false);
        }
        let mut g = self.sink.lock().expect("sink lock");
        if g.is_none() {
            *g = Some(self.store.owned_sink()?);
        }
        g.as_mut().expect("set").add(id, kind, bytes)?;
        Ok(true)
    }

    /// Make everything written so far durable (blocking).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut g = self.sink.lock().expect("sink lock");
        if let Some(s) = g.as_mut() {
            s.flush()?;
        }
        Ok(())
    }

    /// Check that everything reachable from `roots` is durably held;
    /// returns the missing ids (at most `limit`).
    pub fn missing_below(&self, roots: &[ObjectId], limit: usize) -> Result<Vec<ObjectId>, StoreError> {
        let mut stack: Vec<ObjectId> = roots.to_vec();
        let mut seen: HashSet<ObjectId> = HashSet::new();
        let mut trees = Vec::new();
        let mut missing = Vec::new();
        let removals = self.store.removals();
        let known = {
            let mut c = self.complete.lock().expect("complete lock");
            if c.0 != removals {
                // objects left the store since: forget what we knew
                *c = (removals, HashSet::new());
            }
            c.1.clone()
        };
        while let Some(id) = stack.pop() {
            if !seen.insert(id) || known.contains(&id) {
                continue;
            }
            match self.store.locate(&id)? {
                None => {
                    missing.push(id);
                    if missing.len() >= limit {
                        break;
                    }
                }
                Some((_, loc)) if loc.kind != omesh_proto::ObjectKind::Blob => {
                    let raw = self.store.read_record(&id)?;
                    let (_, links) = omesh_proto::record::links_of(&raw).map_err(|e| StoreError::Corrupt {
                        id,
                        pack: String::new(),
                        offset: loc.offset,
                        reason: e.to_string(),
                    })?;
                    trees.push(id);
                    stack.extend(links);
                }
                Some(_) => {}
            }
        }
        if missing.is_empty() {
            let mut c = self.complete.lock().expect("complete lock");
            if c.0 == removals {
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
        self.complete.lock().expect("complete lock").1.clear();
    }
}

/// A monotonically increasing counter, also exported to Prometheus.
#[derive(Clone, Debug, Default)]
pub struct Count(prometheus_client::metrics::counter::Counter);

impl Count {
    /// Add `n`; returns the previous value.
    pub fn fetch_add(&self, n: u64, _: Ordering) -> u64 {
        self.0.inc_by(n)
    }
    /// Current value.
    pub fn load(&self, _: Ordering) -> u64 {
        self.0.get()
    }
}

type PeerFamily = prometheus_client::metrics::family::Family<
    crate::lifecycle::metrics::Labels,
    prometheus_client::metrics::counter::Counter,
>;

/// Byte counters per peer since start.
#[derive(Default)]
pub struct Counters {
    map: Mutex<HashMap<String, Arc<PeerCounters>>>,
    /// bytes sent, bytes received, objects sent, objects received, bytes served
    families: [PeerFamily; 5],
}

/// Counters for one peer.
#[derive(Default, Debug)]
pub struct PeerCounters {
    /// Record bytes we sent to it.
    pub bytes_sent: Count,
    /// Record bytes we received from it.
    pub bytes_received: Count,
    /// Objects sent.
    pub objects_sent: Count,
    /// Objects received.
    pub objects_received: Count,
    /// Bytes we served it (restores and repairs).
    pub bytes_served: Count,
}

impl Counters {
    /// Counters of `peer`.
    pub fn peer(&self, peer: &str) -> Arc<PeerCounters> {
        let mut m = self.map.lock().expect("counters lock");
        if let Some(c) = m.get(peer) {
            return c.clone();
        }
        let l = crate::lifecycle::metrics::label("peer", peer);
        let f = |i: usize| Count(self.families[i].get_or_create(&l).clone());
        let c = Arc::new(PeerCounters {
            bytes_sent: f(0),
            bytes_received: f(1),
            objects_sent: f(2),
            objects_received: f(3),
            bytes_served: f(4),
        });
        m.insert(peer.to_string(), c.clone());
        c
    }

    /// Export to Prometheus.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        let names = [
            ("peer_sent_bytes", "Record bytes sent to each peer (replication)"),
            ("peer_received_bytes", "Record bytes received from each peer (replicas stored, repairs pulled)"),
            ("peer_sent_objects", "Objects sent to each peer"),
            ("peer_received_objects", "Objects received from each peer"),
            ("peer_served_bytes", "Bytes served to each peer (restores and repairs)"),
        ];
        for (i, (n, h)) in names.iter().enumerate() {
            r.register(*n, *h, self.families[i].clone());
        }
    }
    /// Snapshot of all counters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let m = self.map.lock().expect("counters lock");
        let mut out = serde_json::Map::new();
        for (k, v) in m.iter() {
            out.insert(
                k.clone(),
                serde_json::json!({
                    "bytes_sent": v.bytes_sent.load(Ordering::Relaxed),
                    "bytes_received": v.bytes_received.load(Ordering::Relaxed),
                    "objects_sent": v.objects_sent.load(Ordering::Relaxed),
                    "objects_received": v.objects_received.load(Ordering::Relaxed),
                    "bytes_served": v.bytes_served.load(Ordering::Relaxed),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// All stores of this node.
pub struct Stores {
    cfg: Arc<NodeConfig>,
    map: Mutex<HashMap<String, Arc<SourceStore>>>,
}

impl Stores {
    /// Registry for a node's data directory.
    pub fn new(cfg: Arc<NodeConfig>) -> Self {
        Stores { cfg, map: Mutex::new(HashMap::new()) }
    }

    /// This node's own store, created (with a new key) on first use.
    pub fn own(&self) -> Result<Arc<SourceStore>, StoreError> {
        let mut map = self.map.lock().expect("stores lock");
        if let Some(s) = map.get(&self.cfg.name) {
            return Ok(s.clone());
        }
        let store = open_own_store(&self.cfg)?;
        let s = Arc::new(SourceStore::new(store));
        map.insert(self.cfg.name.clone(), s.clone());
        Ok(s)
    }

    /// A source's store; `create` makes a keyless replica store when absent.
    /// Opening happens under the registry lock, so concurrent requests for
    /// a new source never race to open (and lock) the same store twice.
    pub fn get(&self, source: &str, create: bool) -> Result<Option<Arc<SourceStore>>, StoreError> {
        if source == self.cfg.name {
            return self.own().map(Some);
        }
        let mut map = self.map.lock().expect("stores lock");
        if let Some(s) = map.get(source) {
            return Ok(Some(s.clone()));
        }
        let dir = self.cfg.source_dir(source);
        let store = if dir.join(crate::store::config::CONFIG_FILE).exists() {
            Store::open(&dir, Access::Write, KeySource::None)?
        } else if create {
            Store::init_replica(&dir, source)?
        } else {
            return Ok(None);
        };
        let s = Arc::new(SourceStore::new(store));
        map.insert(source.to_string(), s.clone());
        Ok(Some(s))
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
pub fn open_own_store(cfg: &NodeConfig) -> Result<Store, StoreError> {
    let dir = cfg.source_dir(&cfg.name);
    let key_path = cfg.key_path(&cfg.name);
    if dir.join(crate::store::config::CONFIG_FILE).exists() {
        return Store::open(&dir, Access::Write, KeySource::File(key_path));
    }
    std::fs::create_dir_all(cfg.data_dir.join("keys")).map_err(|source| StoreError::Io {
        op: "creating",
        path: cfg.data_dir.join("keys"),
        source,
    })?;
    let mut opts = InitOptions::new(&cfg.name);
    opts.key_file = Some(key_path.clone());
    if let Some(c) = cfg.backup.compression {
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
pub fn open_source_read(cfg: &NodeConfig, source: &str) -> Result<Option<Store>, StoreError> {
    let dir = cfg.source_dir(source);
    if !dir.join(crate::store::config::CONFIG_FILE).exists() {
        return Ok(None);
    }
    let key = cfg.key_path(source);
    let ks = if key.exists() { KeySource::File(key) } else { KeySource::None };
    Store::open(&dir, Access::Read, ks).map(Some)
}
