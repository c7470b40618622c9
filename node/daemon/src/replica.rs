//! One abstraction for everything that holds replicas of a source's
//! snapshots: a peer over the mesh protocol, or an S3 bucket. Replication,
//! the holdings census, sync, heal, status and restore all talk to a
//! [`ReplicaTarget`] and never branch on which kind it is, except where the
//! protocols really differ (only peers repair, only peers forget on
//! request).

use async_trait::async_trait;
use omesh_core::store::Store;
use omesh_net::mesh::PeerCounters;
use omesh_net::mesh::client::{ClientError, PeerConn};
use omesh_net::mesh::replicate::{self, PushOptions, ReplicateError};
use omesh_proto::ObjectId;
use omesh_s3::{BucketLoc, S3Error, S3Target};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Who holds a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HolderKind {
    /// This node (its own store, or a replica it keeps).
    Local,
    /// A peer node.
    Peer,
    /// An S3 bucket.
    S3,
}

/// One snapshot a target lists.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Source (namespace).
    pub source: String,
    /// Snapshot id.
    pub id: ObjectId,
    /// When the holder stored it (ns since the epoch; 0 when it cannot tell).
    pub stored_ns: i64,
    /// The sealed record, when the listing carries it (peers do; buckets
    /// only list names: [`ReplicaTarget::record`] reads one).
    pub record: Option<Vec<u8>>,
}

/// What a listing covers.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// One source's snapshots.
    Source(&'a str),
    /// Every source's; `known` names the sources a target that cannot list
    /// namespaces (a bucket) is asked about.
    All {
        /// sources known from elsewhere
        known: &'a [String],
    },
}

/// What a target stores of one source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes.
    pub bytes: u64,
    /// Snapshots.
    pub snapshots: u64,
}

/// What one push sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Objects sent.
    pub objects: u64,
    /// Record bytes sent.
    pub bytes: u64,
}

/// A request to a target failed.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A peer refused or could not be reached.
    #[error(transparent)]
    Peer(#[from] ClientError),
    /// Pushing to a peer failed.
    #[error(transparent)]
    Push(#[from] ReplicateError),
    /// A bucket refused or could not be reached.
    #[error(transparent)]
    S3(#[from] S3Error),
}

impl TargetError {
    /// Whether the target itself is unreachable (stop asking it), as
    /// opposed to one request failing.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, TargetError::Peer(ClientError::Transport(_)) | TargetError::S3(S3Error::Unreachable { .. }))
    }
}

/// Something that holds replicas: a peer or a bucket.
#[async_trait]
pub trait ReplicaTarget: Send + Sync {
    /// Its configured name.
    fn name(&self) -> &str;
    /// Its failure domain.
    fn domain(&self) -> &str;
    /// Peer or bucket.
    fn kind(&self) -> HolderKind;
    /// Where data goes (a peer's socket address; a bucket's description).
    fn address(&self) -> String;
    /// SHA-256 of its verified certificate (empty for a bucket).
    fn cert_sha256(&self) -> &str;
    /// Round-trip time of one request.
    async fn probe(&self) -> Result<Duration, TargetError>;
    /// Push snapshot `snap` of `source` from `store`, sending only what the
    /// target lacks, counted in `counters`.
    async fn push(
        &self,
        store: Arc<Store>,
        source: &str,
        snap: ObjectId,
        opts: PushOptions,
        counters: Arc<PeerCounters>,
    ) -> Result<PushStats, TargetError>;
    /// The snapshots it holds.
    async fn list(&self, scope: Scope<'_>) -> Result<Vec<Listed>, TargetError>;
    /// One sealed snapshot record.
    async fn record(&self, source: &str, id: &ObjectId) -> Result<Vec<u8>, TargetError>;
    /// Records of `ids` (check hash verified; the caller decrypts or walks
    /// them), and the ids it does not hold. `paced`: within `[bandwidth]`
    /// (repair traffic; restores are never paced).
    async fn fetch(
        &self,
        source: &str,
        ids: &[ObjectId],
        paced: bool,
    ) -> Result<(Vec<Vec<u8>>, Vec<ObjectId>), TargetError>;
    /// What it stores of `source`.
    async fn usage(&self, source: &str) -> Result<Usage, TargetError>;
}

/// A peer as a replica target.
pub struct PeerTarget {
    conn: PeerConn,
    domain: String,
}

impl PeerTarget {
    /// A connected peer in failure domain `domain`.
    pub fn new(conn: PeerConn, domain: String) -> Self {
        PeerTarget { conn, domain }
    }

    /// The connection (requests only peers answer).
    pub fn conn(&self) -> &PeerConn {
        &self.conn
    }
}

#[async_trait]
impl ReplicaTarget for PeerTarget {
    fn name(&self) -> &str {
        &self.conn.name
    }
    fn domain(&self) -> &str {
        &self.domain
    }
    fn kind(&self) -> HolderKind {
        HolderKind::Peer
    }
    fn address(&self) -> String {
        self.conn.addr.to_string()
    }
    fn cert_sha256(&self) -> &str {
        &self.conn.identity.fingerprint
    }
    async fn probe(&self) -> Result<Duration, TargetError> {
        Ok(self.conn.ping().await?)
    }
    async fn push(
        &self,
        store: Arc<Store>,
        source: &str,
        snap: ObjectId,
        opts: PushOptions,
        counters: Arc<PeerCounters>,
    ) -> Result<PushStats, TargetError> {
        let (objects, bytes) = replicate::push_snapshot(&self.conn, store, source, snap, opts, counters).await?;
        Ok(PushStats { objects, bytes })
    }
    async fn list(&self, scope: Scope<'_>) -> Result<Vec<Listed>, TargetError> {
        let source = match scope {
            Scope::Source(s) => Some(s),
            Scope::All { .. } => None,
        };
        let items = self.conn.list_snapshots(source).await?;
        Ok(items
            .into_iter()
            .map(|e| Listed { source: e.source, id: e.id, stored_ns: e.stored_ns, record: Some(e.record) })
            .collect())
    }
    async fn record(&self, source: &str, id: &ObjectId) -> Result<Vec<u8>, TargetError> {
        Ok(self.conn.get_snapshot(source, *id).await?)
    }
    async fn fetch(
        &self,
        source: &str,
        ids: &[ObjectId],
        paced: bool,
    ) -> Result<(Vec<Vec<u8>>, Vec<ObjectId>), TargetError> {
        Ok(if paced { self.conn.fetch_objects(source, ids).await? } else { self.conn.get_objects(source, ids).await? })
    }
    async fn usage(&self, source: &str) -> Result<Usage, TargetError> {
        let st = self.conn.status().await?;
        Ok(st
            .sources
            .iter()
            .find(|u| u.source == source)
            .map(|u| Usage { bytes: u.bytes, snapshots: u.snapshots })
            .unwrap_or_default())
    }
}

/// An S3 bucket as a replica target. What the bucket holds of a source is
/// read from its index objects once per target and source (restores ask
/// for many objects).
pub struct BucketTarget {
    target: Arc<S3Target>,
    domain: String,
    held: tokio::sync::Mutex<HashMap<String, Arc<HashMap<ObjectId, BucketLoc>>>>,
}

impl BucketTarget {
    /// A configured bucket.
    pub fn new(target: Arc<S3Target>) -> Self {
        let domain = target.cfg.domain();
        BucketTarget { target, domain, held: Default::default() }
    }

    async fn held(&self, source: &str) -> Result<Arc<HashMap<ObjectId, BucketLoc>>, S3Error> {
        let mut g = self.held.lock().await;
        if let Some(h) = g.get(source) {
            return Ok(h.clone());
        }
        let (h, _) = self.target.held(source).await?;
        let h = Arc::new(h);
        g.insert(source.to_string(), h.clone());
        Ok(h)
    }
}

#[async_trait]
impl ReplicaTarget for BucketTarget {
    fn name(&self) -> &str {
        &self.target.cfg.name
    }
    fn domain(&self) -> &str {
        &self.domain
    }
    fn kind(&self) -> HolderKind {
        HolderKind::S3
    }
    fn address(&self) -> String {
        self.target.describe()
    }
    fn cert_sha256(&self) -> &str {
        ""
    }
    async fn probe(&self) -> Result<Duration, TargetError> {
        Ok(self.target.probe().await?)
    }
    async fn push(
        &self,
        store: Arc<Store>,
        source: &str,
        snap: ObjectId,
        _opts: PushOptions,
        counters: Arc<PeerCounters>,
    ) -> Result<PushStats, TargetError> {
        let st = self.target.push_snapshot(store, source, snap).await?;
        counters.bytes_sent.fetch_add(st.bytes, Ordering::Relaxed);
        counters.objects_sent.fetch_add(st.objects, Ordering::Relaxed);
        // what the bucket holds changed
        self.held.lock().await.remove(source);
        Ok(PushStats { objects: st.objects, bytes: st.bytes })
    }
    async fn list(&self, scope: Scope<'_>) -> Result<Vec<Listed>, TargetError> {
        let sources: Vec<&str> = match scope {
            Scope::Source(s) => vec![s],
            Scope::All { known } => known.iter().map(String::as_str).collect(),
        };
        let mut out = Vec::new();
        for source in sources {
            for (id, stored_ns) in self.target.snapshot_times(source).await? {
                out.push(Listed { source: source.to_string(), id, stored_ns, record: None });
            }
        }
        Ok(out)
    }
    async fn record(&self, source: &str, id: &ObjectId) -> Result<Vec<u8>, TargetError> {
        Ok(self.target.snapshot_record(source, id).await?)
    }
    async fn fetch(
        &self,
        source: &str,
        ids: &[ObjectId],
        _paced: bool,
    ) -> Result<(Vec<Vec<u8>>, Vec<ObjectId>), TargetError> {
        let held = self.held(source).await?;
        let mut records = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            match held.get(id) {
                Some(loc) => records.push(self.target.get_record(source, id, loc).await?),
                None => missing.push(*id),
            }
        }
        Ok((records, missing))
    }
    async fn usage(&self, source: &str) -> Result<Usage, TargetError> {
        let (bytes, snapshots) = self.target.usage(source).await?;
        Ok(Usage { bytes, snapshots })
    }
}

/// What happened with one target in a replication.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ReplicaReport {
    /// Peer name.
    pub peer: String,
    /// Its failure domain.
    pub domain: String,
    /// Address used.
    pub address: String,
    /// SHA-256 of its certificate.
    pub cert_sha256: String,
    /// Whether the peer committed the snapshot.
    pub ok: bool,
    /// Objects sent.
    pub objects_sent: u64,
    /// Record bytes sent.
    pub bytes_sent: u64,
    /// Seconds spent.
    pub seconds: f64,
    /// Round-trip time measured before choosing (µs).
    pub rtt_us: u64,
    /// Failure reason.
    pub error: Option<String>,
}

impl ReplicaReport {
    /// A target that could not be asked (unreachable at probe time).
    pub fn unreachable(name: &str, domain: &str, address: &str, error: String) -> Self {
        ReplicaReport {
            peer: name.to_string(),
            domain: domain.to_string(),
            address: address.to_string(),
            cert_sha256: String::new(),
            ok: false,
            objects_sent: 0,
            bytes_sent: 0,
            seconds: 0.0,
            rtt_us: 0,
            error: Some(error),
        }
    }

    /// The outcome of a push to `target`.
    pub fn of(target: &dyn ReplicaTarget, rtt: Duration, r: Result<PushStats, TargetError>, seconds: f64) -> Self {
        let (stats, error) = match r {
            Ok(st) => (st, None),
            Err(e) => (PushStats::default(), Some(e.to_string())),
        };
        ReplicaReport {
            peer: target.name().to_string(),
            domain: target.domain().to_string(),
            address: target.address(),
            cert_sha256: target.cert_sha256().to_string(),
            ok: error.is_none(),
            objects_sent: stats.objects,
            bytes_sent: stats.bytes,
            seconds,
            rtt_us: rtt.as_micros() as u64,
            error,
        }
    }
}
