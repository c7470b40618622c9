//! `omesh snapshots --config`: every snapshot of a source, where it is,
//! and whether it has `factor` replicas, from one census.

use crate::census::{Census, CensusOptions, CensusScope, Local, Targets};
use crate::error::NodeError;
use crate::replica::HolderKind;
use crate::runtime::NodeRuntime;
use crate::source::open_snapshot;
use omesh_core::crypto::Keys;
use omesh_core::keyfile::KeyFile;
use omesh_core::snapshot::{SnapshotKind, SnapshotRecord};
use omesh_proto::ObjectId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One replica of a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Node (or S3 target) name.
    pub node: String,
    /// Peer, this node (a replica it keeps) or bucket.
    pub kind: HolderKind,
    /// Failure domain.
    pub domain: String,
    /// Listed by the node just now.
    pub confirmed: bool,
    /// When we recorded its acknowledgement (RFC 3339), if we did.
    pub acknowledged: Option<String>,
    /// Why it does not count: its latest proof-of-holding check failed.
    #[serde(default)]
    pub failed_check: Option<String>,
}

/// What a snapshot is: the fields every `snapshots --json` entry has, in
/// local and mesh mode alike. Without the source's key (mesh mode) only
/// the ids and the source are known; every other field is null (empty for
/// lists).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Id.
    pub id: String,
    /// Short id.
    pub short_id: String,
    /// Start time (RFC 3339).
    pub time: Option<String>,
    /// End time (RFC 3339).
    pub end_time: Option<String>,
    /// Source node.
    pub source: String,
    /// Host name.
    pub hostname: Option<String>,
    /// Paths.
    #[serde(default)]
    pub paths: Vec<String>,
    /// "files" or "image".
    pub kind: Option<String>,
    /// Parent snapshot id.
    pub parent: Option<String>,
    /// Root tree id.
    pub tree: Option<String>,
    /// Files.
    pub files: Option<u64>,
    /// Directories.
    pub dirs: Option<u64>,
    /// Logical bytes.
    pub bytes: Option<u64>,
    /// Bytes this snapshot added to the store.
    pub bytes_added: Option<u64>,
    /// Entries that could not be read.
    pub warnings: Option<u64>,
    /// Tags (`backup --tag`, a schedule's name).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The program that made it.
    pub program: Option<String>,
}

impl SnapshotInfo {
    /// The info of snapshot `id` of `source`, with its record's details
    /// when it could be decrypted here.
    pub fn new(id: &ObjectId, source: &str, r: Option<&SnapshotRecord>) -> Self {
        let mut i =
            SnapshotInfo { id: id.to_hex(), short_id: id.short(), source: source.to_string(), ..Default::default() };
        if let Some(r) = r {
            i.time = Some(rfc3339(r.start_ns));
            i.end_time = Some(rfc3339(r.end_ns));
            i.hostname = Some(r.hostname.clone());
            i.paths = r.paths.clone();
            i.kind = Some(match r.kind {
                SnapshotKind::Files => "files".into(),
                SnapshotKind::Image => "image".into(),
            });
            i.parent = r.parent.map(|p| p.to_hex());
            i.tree = Some(r.tree.to_hex());
            i.files = Some(r.files);
            i.dirs = Some(r.dirs);
            i.bytes = Some(r.bytes);
            i.bytes_added = Some(r.bytes_added);
            i.warnings = Some(r.warnings);
            i.tags = r.tags.clone();
            i.program = Some(r.program.clone());
        }
        i
    }
}

/// One snapshot and where it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotView {
    /// What it is.
    #[serde(flatten)]
    pub info: SnapshotInfo,
    /// Replicas (not counting the source's own copy).
    pub replicas: Vec<ReplicaView>,
    /// Whether the source itself still holds it.
    pub on_source: bool,
    /// Replicas on peers.
    pub replica_count: usize,
    /// Replication factor configured here.
    pub factor: usize,
    /// replica_count >= factor.
    pub fully_replicated: bool,
}

/// An RFC 3339 time from nanoseconds since the epoch.
pub fn rfc3339(ns: i64) -> String {
    omesh_core::time::rfc3339_ns(ns)
}

/// Keys of `source` held on this node, if any (reads the key file:
/// blocking).
pub fn source_keys(rt: &NodeRuntime, source: &str) -> Option<Arc<Keys>> {
    let p = rt.cfg.key_path(source);
    KeyFile::load(&p).ok().map(|k| Arc::new(k.keys()))
}

/// `omesh snapshots --config`.
pub async fn snapshots(rt: &Arc<NodeRuntime>, source: Option<&str>) -> Result<Vec<SnapshotView>, NodeError> {
    let source = source.unwrap_or(&rt.cfg.name).to_string();
    let opts = CensusOptions {
        scope: CensusScope::Source(source.clone()),
        targets: Targets::All,
        local: Local::Registry,
        records: true,
    };
    let census = Census::gather(rt, &opts).await;
    snapshot_views(rt, &source, &census).await
}

/// The snapshots of `source` in `census`, with what this node recorded
/// of their placements.
pub async fn snapshot_views(
    rt: &Arc<NodeRuntime>,
    source: &str,
    census: &Census,
) -> Result<Vec<SnapshotView>, NodeError> {
    // the key file and the state database are read off the async workers
    let (keys, placements) = {
        let rt2 = rt.clone();
        let s = source.to_string();
        tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            let placements = match &rt2.state {
                Some(st) => st.placements(&s)?,
                None => HashMap::new(),
            };
            Ok((source_keys(&rt2, &s), placements))
        })
        .await??
    };
    let me = rt.cfg.name.as_str();
    let mut out = Vec::new();
    for ((src, id), holding) in &census.snapshots {
        if src != source {
            continue;
        }
        let details: Option<SnapshotRecord> =
            keys.as_ref().zip(holding.record.as_ref()).and_then(|(k, rec)| open_snapshot(k, id, rec).ok());
        let mut on_source = false;
        let mut replicas: BTreeMap<String, ReplicaView> = BTreeMap::new();
        for (name, h) in &holding.holders {
            if name == source {
                on_source = true;
                continue;
            }
            let kind = if name == me { HolderKind::Local } else { h.kind };
            replicas.insert(
                name.clone(),
                ReplicaView {
                    node: name.clone(),
                    kind,
                    domain: h.domain.clone(),
                    confirmed: true,
                    acknowledged: None,
                    failed_check: None,
                },
            );
        }
        for p in placements.get(&id.to_hex()).into_iter().flatten() {
            let domain = rt.cfg.peer(&p.node).map(|c| c.domain.clone()).unwrap_or_default();
            let e = replicas.entry(p.node.clone()).or_insert_with(|| ReplicaView {
                node: p.node.clone(),
                kind: p.kind,
                domain,
                confirmed: false,
                acknowledged: None,
                failed_check: None,
            });
            e.acknowledged = Some(rfc3339(p.time_ns));
        }
        for r in replicas.values_mut() {
            if let Some(c) = census.failed_checks.get(&r.node) {
                r.failed_check = Some(format!("holding check of {} failed: {}", rfc3339(c.time_ns), c.detail));
            }
        }
        // a replica counts when the node confirms it now, or (if that node
        // is unreachable) when it acknowledged it earlier
        let count = replicas
            .values()
            .filter(|r| r.failed_check.is_none())
            .filter(|r| r.confirmed || (r.acknowledged.is_some() && !census.listed.contains(&r.node)))
            .count();
        out.push(SnapshotView {
            info: SnapshotInfo::new(id, source, details.as_ref()),
            on_source,
            replica_count: count,
            factor: rt.cfg.replication.factor,
            fully_replicated: count >= rt.cfg.replication.factor,
            replicas: replicas.into_values().collect(),
        });
    }
    out.sort_by(|a, b| a.info.time.cmp(&b.info.time).then(a.info.id.cmp(&b.info.id)));
    Ok(out)
}
