//! Restoring from the mesh: an [`ObjectSource`] that fetches each object
//! from the replicas holding it, in parallel, weighted to the nearest and
//! fastest, verifying every object and failing over when a peer dies or
//! serves bad bytes.
//!
//! Restore workers are plain threads; each `get` runs one request on the
//! tokio runtime (`Handle::block_on`). The peer for a request is the one
//! with the smallest (requests in flight + 1) × its recent request latency
//! (an exponentially weighted average, seeded with the measured RTT): a
//! peer that answers twice as fast gets about twice the requests, and one
//! that stalls stops getting new ones. Latency, not bytes per second, so
//! that object sizes do not bias the choice.

use crate::replica::ReplicaTarget;
use omesh_core::chunker::ChunkerParams;
use omesh_core::crypto::Keys;
use omesh_core::objects::{ObjectSource, SourceError};
use omesh_core::snapshot::SnapshotRecord;
use omesh_core::store::{Store, open_record};
use omesh_proto::{ObjectId, ObjectKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Corrupt objects from one peer before it is no longer asked.
const MAX_BAD_OBJECTS: u32 = 3;

/// A fetch failure, classified.
enum FetchError {
    /// The replica is unreachable: stop using it.
    Dead(String),
    /// It answered, but not with this object.
    Other(String),
}

async fn fetch_one(target: &dyn ReplicaTarget, source: &str, id: &ObjectId) -> Result<Option<Vec<u8>>, FetchError> {
    match target.fetch(source, std::slice::from_ref(id), false).await {
        Ok((mut recs, _)) if recs.len() == 1 => Ok(recs.pop()),
        Ok(_) => Ok(None),
        Err(e) if e.is_unreachable() => Err(FetchError::Dead(e.to_string())),
        Err(e) => Err(FetchError::Other(e.to_string())),
    }
}

/// One replica and its live statistics.
pub struct Replica {
    /// Holder name (peer or S3 target).
    pub name: String,
    /// The peer or bucket.
    pub target: Arc<dyn ReplicaTarget>,
    /// RTT measured at start.
    pub rtt: Duration,
    inflight: AtomicUsize,
    bytes: AtomicU64,
    latency_ns: AtomicU64,
    bad: AtomicU32,
    dead: AtomicBool,
    /// Objects fetched from it.
    pub objects: AtomicU64,
}

impl Replica {
    /// A replica on `target`, whose round-trip time was `rtt`.
    pub fn new(target: Arc<dyn ReplicaTarget>, rtt: Duration) -> Self {
        Replica {
            name: target.name().to_string(),
            target,
            rtt,
            inflight: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            latency_ns: AtomicU64::new(rtt.as_nanos().max(1) as u64),
            bad: AtomicU32::new(0),
            dead: AtomicBool::new(false),
            objects: AtomicU64::new(0),
        }
    }

    fn observe(&self, t: Duration) {
        let sample = t.as_nanos() as u64;
        let old = self.latency_ns.load(Ordering::Relaxed);
        self.latency_ns.store((old * 4 + sample) / 5, Ordering::Relaxed);
    }

    /// Whether it is still used.
    pub fn alive(&self) -> bool {
        !self.dead.load(Ordering::Relaxed)
    }
}

/// Per-replica outcome for reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaUse {
    /// Peer.
    pub peer: String,
    /// Objects fetched.
    pub objects: u64,
    /// Bytes fetched.
    pub bytes: u64,
    /// RTT (µs).
    pub rtt_us: u64,
    /// Corrupt objects it served.
    pub bad_objects: u32,
    /// Dropped during the restore (died or served bad data).
    pub dropped: bool,
}

/// Objects of one source, from a local store and/or replicas.
pub struct MeshSource {
    rt: tokio::runtime::Handle,
    source: String,
    keys: Arc<Keys>,
    chunker: ChunkerParams,
    local: Option<Arc<Store>>,
    /// Replicas in use.
    pub replicas: Vec<Arc<Replica>>,
    records: Mutex<HashMap<ObjectId, SnapshotRecord>>,
    /// Objects read from the local store.
    pub local_objects: AtomicU64,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

impl MeshSource {
    /// Build a source. `records` are decrypted snapshot records already
    /// known (from listing).
    pub fn new(
        rt: tokio::runtime::Handle,
        source: &str,
        keys: Arc<Keys>,
        chunker: ChunkerParams,
        local: Option<Arc<Store>>,
        replicas: Vec<Arc<Replica>>,
        records: HashMap<ObjectId, SnapshotRecord>,
    ) -> Self {
        MeshSource {
            rt,
            source: source.into(),
            keys,
            chunker,
            local,
            replicas,
            records: Mutex::new(records),
            local_objects: AtomicU64::new(0),
            request_timeout: Duration::from_secs(15),
        }
    }

    /// The decrypted snapshot records it knows.
    pub fn records(&self) -> Vec<(ObjectId, SnapshotRecord)> {
        self.records.lock().expect("records lock").iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(i, r)| r.alive() && !tried.contains(i))
            .map(|(i, r)| {
                (i, (r.inflight.load(Ordering::Relaxed) + 1) as f64 * r.latency_ns.load(Ordering::Relaxed) as f64)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// How each replica was used.
    pub fn usage(&self) -> Vec<ReplicaUse> {
        self.replicas
            .iter()
            .map(|r| ReplicaUse {
                peer: r.name.clone(),
                objects: r.objects.load(Ordering::Relaxed),
                bytes: r.bytes.load(Ordering::Relaxed),
                rtt_us: r.rtt.as_micros() as u64,
                bad_objects: r.bad.load(Ordering::Relaxed),
                dropped: !r.alive(),
            })
            .collect()
    }
}

impl ObjectSource for MeshSource {
    fn stored_len(&self, id: &ObjectId) -> Option<u64> {
        self.local.as_ref().and_then(|l| l.stored_len(id))
    }
    fn get_linked(&self, id: &ObjectId, kind: ObjectKind) -> Result<(Vec<u8>, Vec<ObjectId>), SourceError> {
        if let Some(l) = &self.local
            && let Ok(p) = l.get_linked(id, kind)
        {
            self.local_objects.fetch_add(1, Ordering::Relaxed);
            return Ok(p);
        }
        let mut tried = Vec::new();
        let mut reasons = Vec::new();
        while let Some(i) = self.pick(&tried) {
            tried.push(i);
            let r = &self.replicas[i];
            r.inflight.fetch_add(1, Ordering::Relaxed);
            let t = Instant::now();
            let res = self.rt.block_on(async {
                match tokio::time::timeout(self.request_timeout, fetch_one(r.target.as_ref(), &self.source, id)).await {
                    Ok(r) => r,
                    Err(_) => Err(FetchError::Dead(format!("no answer within {}s", self.request_timeout.as_secs()))),
                }
            });
            r.inflight.fetch_sub(1, Ordering::Relaxed);
            r.observe(t.elapsed());
            match res {
                Ok(Some(rec)) => match open_record(&self.keys, &rec, id, kind) {
                    Ok(plain) => {
                        r.bytes.fetch_add(rec.len() as u64, Ordering::Relaxed);
                        r.objects.fetch_add(1, Ordering::Relaxed);
                        return Ok(plain);
                    }
                    Err(why) => {
                        let n = r.bad.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(replica = %r.name, object = %id.short(), reason = %why, "replica served a corrupted object; fetching it from another replica");
                        if n >= MAX_BAD_OBJECTS {
                            tracing::error!(replica = %r.name, "replica served {n} corrupted objects; no longer using it for this restore");
                            r.dead.store(true, Ordering::Relaxed);
                        }
                        reasons.push(format!("{}: corrupted ({why})", r.name));
                    }
                },
                Ok(None) => reasons.push(format!("{}: does not hold it", r.name)),
                Err(FetchError::Dead(e)) => {
                    tracing::warn!(replica = %r.name, error = %e, "replica unreachable; continuing with the others");
                    r.dead.store(true, Ordering::Relaxed);
                    reasons.push(format!("{}: {e}", r.name));
                }
                Err(FetchError::Other(e)) => reasons.push(format!("{}: {e}", r.name)),
            }
        }
        Err(SourceError {
            message: format!(
                "object {} ({}) of {} could not be fetched from any replica: {}",
                id.short(),
                kind.name(),
                self.source,
                if reasons.is_empty() { "no replica left".into() } else { reasons.join("; ") }
            ),
            damage: true,
        })
    }

    fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    fn chunker_params(&self) -> ChunkerParams {
        self.chunker
    }

    fn snapshot(&self, id: &ObjectId) -> Result<SnapshotRecord, SourceError> {
        if let Some(r) = self.records.lock().expect("records lock").get(id) {
            return Ok(r.clone());
        }
        Err(SourceError {
            message: format!("snapshot {} of {} is not held by any reachable replica", id.short(), self.source),
            damage: false,
        })
    }
}

/// Decrypt a listed snapshot record.
pub fn open_snapshot(keys: &Keys, id: &ObjectId, record: &[u8]) -> Result<SnapshotRecord, String> {
    let (plain, _) = open_record(keys, record, id, ObjectKind::Snapshot)?;
    SnapshotRecord::decode(&plain).map_err(|e| e.to_string())
}
