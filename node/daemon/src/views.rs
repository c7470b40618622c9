//! What `omesh snapshots --config`, `omesh status` and `omesh restore
//! --config` compute: the node's view of the mesh, from its own stores, its
//! state database and live answers from peers.

use crate::error::NodeError;
use crate::runtime::NodeRuntime;
use crate::source::{MeshSource, Replica, open_snapshot};
use omesh_core::keyfile::KeyFile;
use omesh_core::snapshot::{SnapshotKind, SnapshotRecord};
use omesh_core::store::Store;
use omesh_proto::ObjectId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// One replica of a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Node (or S3 target) name.
    pub node: String,
    /// "peer", "local" or "s3".
    pub kind: String,
    /// Failure domain.
    pub domain: String,
    /// Listed by the node just now.
    pub confirmed: bool,
    /// When we recorded its acknowledgement (RFC 3339), if we did.
    pub acknowledged: Option<String>,
}

/// One snapshot and where it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotView {
    /// Id.
    pub id: String,
    /// Short id.
    pub short_id: String,
    /// Source node.
    pub source: String,
    /// Start time (RFC 3339), when the key is here.
    pub time: Option<String>,
    /// Host name.
    pub hostname: Option<String>,
    /// Paths.
    pub paths: Vec<String>,
    /// "files" or "image".
    pub kind: Option<String>,
    /// Files.
    pub files: Option<u64>,
    /// Logical bytes.
    pub bytes: Option<u64>,
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

fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339()
}

/// Keys of `source` held on this node, if any.
pub fn source_keys(rt: &NodeRuntime, source: &str) -> Option<Arc<omesh_core::crypto::Keys>> {
    let p = rt.cfg.key_path(source);
    KeyFile::load(&p).ok().map(|k| Arc::new(omesh_core::crypto::Keys::derive(&k.secret)))
}

/// What the reachable peers hold of a source.
pub struct LiveListing {
    /// id → (record, holders).
    pub snapshots: HashMap<ObjectId, (Vec<u8>, Vec<String>)>,
    /// Every configured peer's probe.
    pub probes: Vec<crate::runtime::Probe>,
    /// Peers whose listing succeeded (what they do not list, they do not hold).
    pub listed: std::collections::HashSet<String>,
}

/// Listing from every reachable peer.
pub async fn live_listing(rt: &NodeRuntime, source: &str) -> LiveListing {
    let probes = rt.probe_all().await;
    let lists = crate::runtime::futures_join_all(
        probes.iter().filter_map(|p| p.result.as_ref().ok().map(|(c, _)| (p.peer.name.clone(), c.clone()))).map(
            |(name, c)| {
                let source = source.to_string();
                async move { (name, c.list_snapshots(Some(&source)).await) }
            },
        ),
    )
    .await;
    let mut out: HashMap<ObjectId, (Vec<u8>, Vec<String>)> = HashMap::new();
    let mut listed = std::collections::HashSet::new();
    for (name, l) in lists {
        match l {
            Ok(items) => {
                listed.insert(name.clone());
                for e in items {
                    let ent = out.entry(e.id).or_insert_with(|| (e.record.clone(), vec![]));
                    ent.1.push(name.clone());
                }
            }
            Err(e) => tracing::warn!(peer = %name, error = %e, "cannot list snapshots"),
        }
    }
    LiveListing { snapshots: out, probes, listed }
}

/// `omesh snapshots --config`.
pub async fn snapshots(rt: &Arc<NodeRuntime>, source: Option<&str>) -> Result<Vec<SnapshotView>, NodeError> {
    let source = source.unwrap_or(&rt.cfg.name).to_string();
    let keys = source_keys(rt, &source);
    // local copy (own store, or a replica this node keeps), read off the
    // async workers
    let local: Vec<(ObjectId, Option<Vec<u8>>)> = {
        let stores = rt.stores.clone();
        let s = source.clone();
        tokio::task::spawn_blocking(move || -> Result<_, omesh_core::store::StoreError> {
            let Some(l) = stores.get(&s, false)? else { return Ok(vec![]) };
            Ok(l.store.snapshot_ids()?.into_iter().map(|id| (id, l.store.read_snapshot_record(&id).ok())).collect())
        })
        .await
        .map_err(|e| NodeError::Other(e.to_string()))??
    };
    let mut records: BTreeMap<ObjectId, Vec<u8>> = BTreeMap::new();
    let mut on_source = std::collections::HashSet::new();
    let mut local_replica = std::collections::HashSet::new();
    for (id, record) in local {
        if let Some(r) = record {
            records.insert(id, r);
        }
        if source == rt.cfg.name {
            on_source.insert(id);
        } else {
            local_replica.insert(id);
        }
    }
    let listing = live_listing(rt, &source).await;
    let mut live = listing.snapshots;
    // who listed now: what they do not list, they do not hold (whatever
    // they acknowledged earlier)
    let mut answered = listing.listed;
    answered.insert(rt.cfg.name.clone());
    let mut s3_holders: HashMap<ObjectId, Vec<(String, String)>> = HashMap::new();
    for t in &rt.s3 {
        match t.snapshot_times(&source).await {
            Ok(list) => {
                answered.insert(t.cfg.name.clone());
                for (id, _) in list {
                    // read a record only when no one else supplied it
                    if !records.contains_key(&id) && !live.contains_key(&id) {
                        match t.snapshot_record(&source, &id).await {
                            Ok(rec) => {
                                live.insert(id, (rec, vec![]));
                            }
                            Err(e) => {
                                tracing::warn!(target = %t.cfg.name, snapshot = %id.short(), error = %e, "cannot read a snapshot record from the bucket");
                                continue;
                            }
                        }
                    }
                    s3_holders.entry(id).or_default().push((t.cfg.name.clone(), t.cfg.domain()));
                }
            }
            Err(e) => tracing::warn!(target = %t.cfg.name, error = %e, "cannot list the bucket"),
        }
    }
    for (id, (rec, _)) in &live {
        records.entry(*id).or_insert_with(|| rec.clone());
    }
    let placements = match &rt.state {
        Some(st) => st.placements(&source)?,
        None => HashMap::new(),
    };
    let domains: HashMap<&str, &str> = rt.cfg.peers.iter().map(|p| (p.name.as_str(), p.domain.as_str())).collect();
    let mut out = Vec::new();
    for (id, rec) in records {
        let details: Option<SnapshotRecord> = keys.as_ref().and_then(|k| open_snapshot(k, &id, &rec).ok());
        let mut replicas: BTreeMap<String, ReplicaView> = BTreeMap::new();
        if let Some((_, holders)) = live.get(&id) {
            for h in holders {
                if *h == source {
                    on_source.insert(id);
                    continue;
                }
                replicas.insert(
                    h.clone(),
                    ReplicaView {
                        node: h.clone(),
                        kind: "peer".into(),
                        domain: domains.get(h.as_str()).unwrap_or(&"").to_string(),
                        confirmed: true,
                        acknowledged: None,
                    },
                );
            }
        }
        for (name, domain) in s3_holders.get(&id).into_iter().flatten() {
            replicas.insert(
                name.clone(),
                ReplicaView {
                    node: name.clone(),
                    kind: "s3".into(),
                    domain: domain.clone(),
                    confirmed: true,
                    acknowledged: None,
                },
            );
        }
        if local_replica.contains(&id) {
            replicas.insert(
                rt.cfg.name.clone(),
                ReplicaView {
                    node: rt.cfg.name.clone(),
                    kind: "local".into(),
                    domain: rt.cfg.domain.clone(),
                    confirmed: true,
                    acknowledged: None,
                },
            );
        }
        for p in placements.get(&id.to_hex()).into_iter().flatten() {
            let e = replicas.entry(p.node.clone()).or_insert_with(|| ReplicaView {
                node: p.node.clone(),
                kind: p.kind.clone(),
                domain: domains.get(p.node.as_str()).unwrap_or(&"").to_string(),
                confirmed: false,
                acknowledged: None,
            });
            e.acknowledged = Some(rfc3339(p.time_ns));
        }
        // a replica counts when the node confirms it now, or (if that node
        // is unreachable) when it acknowledged it earlier
        let count = replicas
            .values()
            .filter(|r| r.confirmed || (r.acknowledged.is_some() && !answered.contains(&r.node)))
            .count();
        out.push(SnapshotView {
            id: id.to_hex(),
            short_id: id.short(),
            source: source.clone(),
            time: details.as_ref().map(|d| rfc3339(d.start_ns)),
            hostname: details.as_ref().map(|d| d.hostname.clone()),
            paths: details.as_ref().map(|d| d.paths.clone()).unwrap_or_default(),
            kind: details.as_ref().map(|d| match d.kind {
                SnapshotKind::Files => "files".to_string(),
                SnapshotKind::Image => "image".to_string(),
            }),
            files: details.as_ref().map(|d| d.files),
            bytes: details.as_ref().map(|d| d.bytes),
            on_source: on_source.contains(&id),
            replica_count: count,
            factor: rt.cfg.replication.factor,
            fully_replicated: count >= rt.cfg.replication.factor,
            replicas: replicas.into_values().collect(),
        });
    }
    out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// One peer in `omesh status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    /// Name.
    pub name: String,
    /// Configured address.
    pub address: String,
    /// Failure domain.
    pub domain: String,
    /// Reachable now.
    pub reachable: bool,
    /// RTT in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Last successful contact (RFC 3339).
    pub last_contact: Option<String>,
    /// Why unreachable.
    pub error: Option<String>,
    /// Bytes of our snapshots it stores (its answer).
    pub holds_our_bytes: Option<u64>,
    /// Our snapshots it stores.
    pub holds_our_snapshots: Option<u64>,
    /// Byte counters since the daemon started.
    pub counters: serde_json::Value,
}

/// An S3 target in `omesh status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct S3View {
    /// Target name.
    pub name: String,
    /// Endpoint and bucket.
    pub address: String,
    /// Failure domain.
    pub domain: String,
    /// Answering now.
    pub reachable: bool,
    /// Round trip of a bucket check (ms).
    pub rtt_ms: Option<f64>,
    /// Why not reachable.
    pub error: Option<String>,
    /// Bytes of our packs in the bucket.
    pub holds_our_bytes: Option<u64>,
    /// Our snapshots in the bucket.
    pub holds_our_snapshots: Option<u64>,
}

/// Usage of one source's store on this node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalUsage {
    /// Source.
    pub source: String,
    /// Bytes.
    pub bytes: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// Quota (0 = none).
    pub quota_bytes: u64,
}

/// `omesh status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    /// This node.
    pub node: String,
    /// Failure domain.
    pub domain: String,
    /// Running as a daemon (answered through the control socket).
    pub daemon: bool,
    /// Daemon uptime.
    pub uptime_secs: u64,
    /// Peers.
    pub peers: Vec<PeerView>,
    /// S3 targets.
    pub s3: Vec<S3View>,
    /// Stores on this node.
    pub stored_here: Vec<LocalUsage>,
    /// Our snapshots.
    pub snapshots: usize,
    /// Our snapshots with fewer than `factor` replicas.
    pub not_fully_replicated: Vec<String>,
    /// Replication factor.
    pub factor: usize,
    /// Connections refused by the residency policy since start.
    #[serde(default)]
    pub residency_refusals: u64,
    /// This node's protection: last backup, achieved RPO, replicas,
    /// estimated restore time.
    #[serde(default)]
    pub protection: Option<ProtectionView>,
    /// Backup schedules.
    #[serde(default)]
    pub schedules: Vec<ScheduleView>,
    /// Sync, maintenance and scrub runs.
    #[serde(default)]
    pub maintenance: Vec<RunView>,
}

/// This node's own data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProtectionView {
    /// Latest snapshot (id).
    pub last_snapshot: Option<String>,
    /// Its time (RFC 3339).
    pub last_backup: Option<String>,
    /// Start of the newest snapshot with `factor` replicas (RFC 3339).
    pub last_protected_backup: Option<String>,
    /// Seconds since then: the data loss if this server failed now.
    pub achieved_rpo_secs: Option<u64>,
    /// The tightest RPO configured on a schedule.
    pub rpo_secs: Option<u64>,
    /// achieved <= configured.
    pub rpo_met: Option<bool>,
    /// Replicas of the latest snapshot.
    pub replicas: usize,
    /// Their failure domains.
    pub replica_domains: usize,
    /// Configured factor.
    pub factor: usize,
    /// Logical size of the latest snapshot.
    pub bytes: Option<u64>,
    /// Estimated time to restore it onto a new server from its replicas.
    pub est_restore_secs: Option<f64>,
    /// How the estimate was made.
    pub est_restore_basis: String,
}

/// One backup schedule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduleView {
    /// Name.
    pub name: String,
    /// When it runs.
    pub when: String,
    /// Configured RPO.
    pub rpo_secs: Option<u64>,
    /// Last start (RFC 3339).
    pub last_run: Option<String>,
    /// Last success.
    pub last_success: Option<String>,
    /// Seconds since the last success.
    pub achieved_rpo_secs: Option<u64>,
    /// Achieved <= configured.
    pub rpo_met: Option<bool>,
    /// Error of the last run.
    pub last_error: Option<String>,
    /// Next run (RFC 3339).
    pub next_run: Option<String>,
}

/// A background job's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunView {
    /// "sync", "maintenance", "scrub".
    pub job: String,
    /// Last start.
    pub last_run: Option<String>,
    /// Last success.
    pub last_success: Option<String>,
    /// Error of the last run.
    pub last_error: Option<String>,
    /// Summary of the last successful run.
    pub detail: serde_json::Value,
}

/// Compute the status.
pub async fn status(rt: &Arc<NodeRuntime>) -> Result<StatusView, NodeError> {
    let probes = rt.probe_all().await;
    let seen = match &rt.state {
        Some(st) => st.peers()?,
        None => HashMap::new(),
    };
    let statuses = crate::runtime::futures_join_all(probes.iter().map(|p| async move {
        match &p.result {
            Ok((c, _)) => c.status().await.ok(),
            Err(_) => None,
        }
    }))
    .await;
    let mut peers = Vec::new();
    for (p, st) in probes.iter().zip(statuses) {
        let ours = st.as_ref().and_then(|s| s.sources.iter().find(|u| u.source == rt.cfg.name).cloned());
        let counters = rt.counters.to_json().get(&p.peer.name).cloned().unwrap_or(serde_json::json!({}));
        peers.push(PeerView {
            name: p.peer.name.clone(),
            address: p.peer.address.clone(),
            domain: p.peer.domain.clone(),
            reachable: p.result.is_ok(),
            rtt_ms: p.result.as_ref().ok().map(|(_, d)| d.as_secs_f64() * 1000.0),
            last_contact: seen.get(&p.peer.name).map(|s| rfc3339(s.last_contact_ns)),
            error: p.result.as_ref().err().cloned(),
            holds_our_bytes: ours.as_ref().map(|u| u.bytes),
            holds_our_snapshots: ours.as_ref().map(|u| u.snapshots),
            counters,
        });
    }
    let mut s3 = Vec::new();
    for t in &rt.s3 {
        let probe = t.probe().await;
        let usage = if probe.is_ok() { t.usage(&rt.cfg.name).await.ok() } else { None };
        s3.push(S3View {
            name: t.cfg.name.clone(),
            address: t.describe(),
            domain: t.cfg.domain(),
            reachable: probe.is_ok(),
            rtt_ms: probe.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0),
            error: probe.err().map(|e| e.to_string()),
            holds_our_bytes: usage.map(|u| u.0),
            holds_our_snapshots: usage.map(|u| u.1),
        });
    }
    let stores = rt.stores.clone();
    let cfg = rt.cfg.clone();
    let stored_here = tokio::task::spawn_blocking(move || {
        stores
            .source_names()
            .into_iter()
            .filter_map(|n| {
                let s = stores.get(&n, false).ok()??;
                Some(LocalUsage {
                    bytes: s.store.bytes_stored().unwrap_or(0),
                    snapshots: s.store.snapshot_ids().map(|v| v.len() as u64).unwrap_or(0),
                    quota_bytes: cfg.quota_for(&n),
                    source: n,
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| NodeError::Other(e.to_string()))?;
    let snaps = snapshots(rt, None).await?;
    let now = chrono::Utc::now();
    let runs = match &rt.state {
        Some(st) => st.runs()?,
        None => Default::default(),
    };
    let ts = |ns: i64| (ns > 0).then(|| rfc3339(ns));
    let age = |ns: i64| (ns > 0).then(|| ((now.timestamp_nanos_opt().unwrap_or(0) - ns).max(0) / 1_000_000_000) as u64);
    let mut schedules = Vec::new();
    for sc in &rt.cfg.schedules {
        let Ok(sched) = omesh_core::policy::schedule::Schedule::new(sc.clone()) else { continue };
        let r = runs.get(&format!("backup/{}", sc.name)).cloned().unwrap_or_default();
        let last = (r.last_start_ns > 0).then(|| chrono::DateTime::from_timestamp_nanos(r.last_start_ns));
        let achieved = age(r.last_ok_ns);
        schedules.push(ScheduleView {
            name: sc.name.clone(),
            when: sched.describe(),
            rpo_secs: sc.rpo_secs,
            last_run: ts(r.last_start_ns),
            last_success: ts(r.last_ok_ns),
            achieved_rpo_secs: achieved,
            rpo_met: sc.rpo_secs.map(|t| achieved.is_some_and(|a| a <= t)),
            last_error: r.last_error.clone(),
            next_run: rt.daemon.then(|| sched.next_run(&rt.cfg.name, last, now).to_rfc3339()),
        });
    }
    let maintenance = ["sync", "maintenance", "scrub"]
        .iter()
        .filter_map(|k| {
            runs.get(*k).map(|r| RunView {
                job: k.to_string(),
                last_run: ts(r.last_start_ns),
                last_success: ts(r.last_ok_ns),
                last_error: r.last_error.clone(),
                detail: r.detail.clone(),
            })
        })
        .collect();
    let start_ns = |s: &SnapshotView| {
        s.time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| t.timestamp_nanos_opt())
            .unwrap_or(0)
    };
    // what survives losing this server: the newest snapshot with `factor`
    // replicas
    let protected_ns = snaps.iter().filter(|s| s.on_source && s.fully_replicated).map(start_ns).max();
    let last_protected_backup = protected_ns.map(rfc3339);
    let protection = snaps.iter().rfind(|s| s.on_source).map(|latest| {
        let achieved = protected_ns.and_then(age);
        let target = rt.cfg.schedules.iter().filter_map(|s| s.rpo_secs).min();
        let confirmed: Vec<&ReplicaView> = latest.replicas.iter().filter(|r| r.confirmed).collect();
        // an empty label is a failure domain of its own for each node
        let domains: std::collections::HashSet<String> = confirmed
            .iter()
            .map(|r| if r.domain.is_empty() { format!("\0node:{}", r.node) } else { r.domain.clone() })
            .collect();
        // a restore pulls from the replicas in parallel: the two fastest
        // links measured to them bound it
        let mut rates: Vec<(String, u64)> = confirmed
            .iter()
            .filter_map(|r| {
                seen.get(&r.node).filter(|s| s.throughput_bps > 0).map(|s| (r.node.clone(), s.throughput_bps))
            })
            .collect();
        rates.sort_by_key(|r| std::cmp::Reverse(r.1));
        rates.truncate(2);
        let total: u64 = rates.iter().map(|r| r.1).sum();
        let (est, basis) = match (latest.bytes, total) {
            (Some(b), t) if t > 0 => (
                Some(b as f64 / t as f64),
                format!(
                    "{} MB at {:.0} MB/s measured to {}",
                    b / 1_000_000,
                    t as f64 / 1e6,
                    rates.iter().map(|r| r.0.as_str()).collect::<Vec<_>>().join(" + ")
                ),
            ),
            (None, _) => (None, "snapshot size unknown here (no key)".into()),
            _ => (None, "no transfer to a replica measured yet".into()),
        };
        ProtectionView {
            last_snapshot: Some(latest.id.clone()),
            last_backup: latest.time.clone(),
            last_protected_backup: last_protected_backup.clone(),
            achieved_rpo_secs: achieved,
            rpo_secs: target,
            rpo_met: target.map(|t| achieved.is_some_and(|a| a <= t)),
            replicas: latest.replica_count,
            replica_domains: domains.len(),
            factor: rt.cfg.replication.factor,
            bytes: latest.bytes,
            est_restore_secs: est,
            est_restore_basis: basis,
        }
    });
    Ok(StatusView {
        node: rt.cfg.name.clone(),
        domain: rt.cfg.domain.clone(),
        daemon: rt.daemon,
        uptime_secs: rt.started.elapsed().as_secs(),
        peers,
        s3,
        stored_here,
        snapshots: snaps.len(),
        not_fully_replicated: snaps
            .iter()
            .filter(|s| !s.fully_replicated && s.on_source)
            .map(|s| s.id.clone())
            .collect(),
        factor: rt.cfg.replication.factor,
        residency_refusals: rt.residency.refusals.load(std::sync::atomic::Ordering::Relaxed),
        protection,
        schedules,
        maintenance,
    })
}

/// Where a mesh restore reads from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum From {
    /// The local store if it holds the snapshot, plus every replica.
    Auto,
    /// Only this node's local stores.
    Local,
    /// Only the S3 targets.
    S3,
    /// Only this peer or S3 target.
    Peer(String),
}

/// Find snapshot `spec` of `source` and build a source that reads it from
/// the local store and/or the replicas holding it.
pub async fn prepare_restore(
    rt: &Arc<NodeRuntime>,
    source: &str,
    spec: &str,
    from: &From,
) -> Result<(ObjectId, MeshSource), NodeError> {
    let keys = source_keys(rt, source).ok_or_else(|| {
        NodeError::Other(format!(
            "no key for source {source:?} on this node ({} missing); import the exported key with `omesh key import FILE --config {}`",
            rt.cfg.key_path(source).display(),
            rt.cfg.path.display()
        ))
    })?;
    if let From::Peer(p) = from {
        if rt.cfg.peer(p).is_none() && rt.cfg.s3_target(p).is_none() {
            return Err(NodeError::Other(format!(
                "--from {p}: not a [[peer]] or [[s3]] target in {}",
                rt.cfg.path.display()
            )));
        }
    }
    let local: Option<Arc<Store>> = if matches!(from, From::Peer(_) | From::S3) {
        None
    } else {
        let cfg = rt.cfg.clone();
        let s = source.to_string();
        tokio::task::spawn_blocking(move || omesh_net::mesh::stores::open_source_read(&cfg.layout(), &s))
            .await
            .map_err(|e| NodeError::Other(e.to_string()))??
            .map(Arc::new)
    };
    let mut records: HashMap<ObjectId, SnapshotRecord> = HashMap::new();
    let mut local_ids = std::collections::HashSet::new();
    if let Some(l) = &local {
        for id in l.snapshot_ids()? {
            if let Ok(r) = l.read_snapshot_record(&id) {
                if let Ok(d) = open_snapshot(&keys, &id, &r) {
                    records.insert(id, d);
                    local_ids.insert(id);
                }
            }
        }
    }
    let mut holders: HashMap<ObjectId, Vec<String>> = HashMap::new();
    let mut probes_ok: HashMap<String, (omesh_net::mesh::client::PeerConn, Duration)> = HashMap::new();
    let peers_wanted = match from {
        From::Local | From::S3 => false,
        From::Peer(p) => rt.cfg.peer(p).is_some(),
        From::Auto => true,
    };
    if peers_wanted {
        let LiveListing { snapshots: live, probes, .. } = live_listing(rt, source).await;
        for p in probes {
            if let Ok((c, d)) = p.result {
                probes_ok.insert(p.peer.name.clone(), (c, d));
            }
        }
        for (id, (rec, hs)) in live {
            let hs: Vec<String> = hs
                .into_iter()
                .filter(|h| match from {
                    From::Peer(p) => h == p,
                    _ => true,
                })
                .collect();
            if hs.is_empty() {
                continue;
            }
            match open_snapshot(&keys, &id, &rec) {
                Ok(d) => {
                    records.entry(id).or_insert(d);
                    holders.insert(id, hs);
                }
                Err(e) => {
                    tracing::warn!(snapshot = %id.short(), error = %e, "a peer lists a snapshot record that does not decrypt with this key; ignored")
                }
            }
        }
    }
    // buckets: their snapshots, and (lazily below) their object index
    let mut bucket_snaps: HashMap<String, std::collections::HashSet<ObjectId>> = HashMap::new();
    for t in &rt.s3 {
        let wanted = match from {
            From::Auto | From::S3 => true,
            From::Peer(p) => *p == t.cfg.name,
            From::Local => false,
        };
        if !wanted {
            continue;
        }
        match t.list_snapshots(source).await {
            Ok(list) => {
                for (id, rec) in list {
                    if let Ok(d) = open_snapshot(&keys, &id, &rec) {
                        records.entry(id).or_insert(d);
                        bucket_snaps.entry(t.cfg.name.clone()).or_default().insert(id);
                    }
                }
            }
            Err(e) => tracing::warn!(target = %t.cfg.name, error = %e, "bucket not usable for this restore"),
        }
    }
    let id = resolve(&records, spec).map_err(NodeError::Other)?;
    let mut replicas = Vec::new();
    for t in &rt.s3 {
        if bucket_snaps.get(&t.cfg.name).is_some_and(|s| s.contains(&id)) {
            let rtt = t.probe().await.unwrap_or(Duration::from_millis(5));
            match t.held(source).await {
                Ok((held, _)) => replicas.push(Arc::new(Replica::with(
                    t.cfg.name.clone(),
                    crate::source::Remote::S3 { target: t.clone(), held: Arc::new(held) },
                    rtt,
                ))),
                Err(e) => tracing::warn!(target = %t.cfg.name, error = %e, "cannot read the bucket's index"),
            }
        }
    }
    for h in holders.get(&id).cloned().unwrap_or_default() {
        if let Some((c, rtt)) = probes_ok.get(&h) {
            replicas.push(Arc::new(Replica::new(c.clone(), *rtt)));
        }
    }
    let local = local.filter(|_| local_ids.contains(&id));
    if replicas.is_empty() && local.is_none() {
        return Err(NodeError::Other(format!("snapshot {} of {source} is not held by any reachable node", id.short())));
    }
    let chunker = local.as_ref().map(|l| l.config().chunker).unwrap_or_default();
    let mut src = MeshSource::new(tokio::runtime::Handle::current(), source, keys, chunker, local, replicas, records);
    src.request_timeout = Duration::from_secs(rt.cfg.transport.request_timeout_secs.max(1));
    Ok((id, src))
}

fn resolve(records: &HashMap<ObjectId, SnapshotRecord>, spec: &str) -> Result<ObjectId, String> {
    if records.is_empty() {
        return Err("no snapshots of this source are reachable".into());
    }
    if spec == "latest" {
        return Ok(*records.iter().max_by_key(|(id, r)| (r.start_ns, **id)).expect("non-empty").0);
    }
    let s = spec.to_ascii_lowercase();
    let m: Vec<&ObjectId> = records.keys().filter(|id| id.to_hex().starts_with(&s)).collect();
    match m.len() {
        0 => Err(format!("no reachable snapshot matches {spec:?}")),
        1 => Ok(*m[0]),
        _ => Err(format!("snapshot prefix {spec:?} is ambiguous")),
    }
}

/// `omesh residency report`: per snapshot of this node, every destination
/// that acknowledged a replica, from the node's own records.
pub fn residency_report(
    state: &crate::state::State,
    source: &str,
    since_ns: i64,
) -> Result<Vec<serde_json::Value>, NodeError> {
    let mut all: Vec<(String, Vec<crate::state::Placement>)> = state.placements(source)?.into_iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rows = Vec::new();
    for (snap, ps) in all {
        let ps: Vec<_> = ps.into_iter().filter(|p| p.time_ns >= since_ns).collect();
        if ps.is_empty() {
            continue;
        }
        rows.push(serde_json::json!({
            "source": source,
            "snapshot": snap,
            "destinations": ps.iter().map(|p| serde_json::json!({
                "node": p.node, "kind": p.kind, "address": p.address, "cert_sha256": p.cert_sha256,
                "time": rfc3339(p.time_ns),
                "objects_sent": p.objects_sent, "bytes_sent": p.bytes_sent,
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(rows)
}
