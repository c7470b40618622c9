//! Mesh sync (anti-entropy): every node periodically compares which
//! replicas of each snapshot the reachable nodes hold and repairs the
//! under-replicated ones by pulling the objects from the peers that have
//! them: not from the source, which may be offline for days.
//!
//! Who repairs is a plain function of what a node sees ([`repairers`]):
//! every node computes the same list from the same view, and only the
//! nodes on it pull, so a snapshot is not copied by everyone at once. A
//! node that sees differently (a partition) may copy one replica too many;
//! it never deletes one. Pulling is always the puller's own decision: the
//! mesh protocol still lets no node write into another's store.

use crate::census::{Census, CensusOptions, CensusScope, Local, Targets};
use crate::replica::{HolderKind, ReplicaTarget};
use crate::runtime::NodeRuntime;
pub use omesh_core::policy::repairers::{Member, repairers};
use omesh_core::policy::retention;
use omesh_core::store::walk::{GraphWalk, Visit, infallible, resolve_local};
use omesh_core::time;
use omesh_net::mesh::{SourceStore, WriteRefused};
use omesh_proto::{ObjectId, ObjectKind, Record, Seal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Ids per fetch request (bounds memory: records of up to 4 MiB each).
const FETCH_IDS: usize = 32;

/// One snapshot seen in the mesh.
#[derive(Clone, Debug)]
struct Seen {
    record: Vec<u8>,
    /// holder → when it stored it (ns)
    holders: BTreeMap<String, i64>,
}

/// A repaired replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Repaired {
    /// Source.
    pub source: String,
    /// Snapshot.
    pub snapshot: String,
    /// Peers the objects came from.
    pub from: Vec<String>,
    /// Objects fetched.
    pub objects: u64,
    /// Record bytes fetched.
    pub bytes: u64,
    /// Seconds.
    pub seconds: f64,
}

/// A failed repair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepairFailure {
    /// Source.
    pub source: String,
    /// Snapshot.
    pub snapshot: String,
    /// Why.
    pub error: String,
}

/// Result of one sync.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncReport {
    /// Snapshots seen in the mesh (all sources).
    pub snapshots: usize,
    /// Of which held by fewer than `factor` replicas or failure domains.
    pub under_replicated: usize,
    /// Repaired by this node.
    pub repaired: Vec<Repaired>,
    /// Repairs this node should have done but could not.
    pub failed: Vec<RepairFailure>,
    /// Under-replicated snapshots another node is to repair.
    pub left_to_others: usize,
    /// Under-replicated snapshots that no reachable node can add a replica
    /// of (every reachable node holds it already: a holder is down or gone).
    #[serde(default)]
    pub no_repairer: usize,
    /// Not repaired here because this node's retention would forget them.
    pub skipped_by_retention: usize,
    /// Peers not reachable.
    pub unreachable: Vec<String>,
    /// Proof-of-holding checks of the peers that list this node's
    /// snapshots (`services::audit`).
    #[serde(default)]
    pub holding_checks: Vec<HoldingCheckView>,
    /// Seconds.
    pub seconds: f64,
}

/// One peer's holding check in a sync report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HoldingCheckView {
    /// Peer.
    pub peer: String,
    /// Snapshot checked.
    pub snapshot: String,
    /// Records fetched and verified.
    pub records: u64,
    /// Every record came back and verified.
    pub ok: bool,
    /// What was wrong.
    pub detail: String,
}

/// A repair failed.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// This node's replica store failed.
    #[error(transparent)]
    Store(#[from] omesh_core::store::StoreError),
    /// A worker thread failed.
    #[error("worker task failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    /// The graph is larger than any real snapshot.
    #[error(transparent)]
    TooLarge(#[from] omesh_core::store::walk::TooLarge),
    /// The listed record is not a snapshot record with that id.
    #[error("snapshot record: {0}")]
    BadRecord(String),
    /// A record was refused as not made by its source (bad or missing
    /// signature, another source's name, not the record a link names).
    #[error("refused a forged or altered record offered by {peers}: {reason}")]
    Forged {
        /// the peers that offered it
        peers: String,
        /// what failed
        reason: String,
    },
    /// The source's quota on this node is used up.
    #[error("{source_name} is over its quota of {quota} bytes on {node}")]
    Quota {
        /// source
        source_name: String,
        /// bytes
        quota: u64,
        /// this node
        node: String,
    },
    /// This node's disk would fall below its free-space floor.
    #[error("{0}")]
    DiskFull(String),
    /// Objects no holder could supply.
    #[error("{count} objects could not be fetched from any holder (first: {})", first.short())]
    Incomplete {
        /// how many
        count: usize,
        /// the first of them
        first: ObjectId,
    },
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RepairError> + Send + 'static,
) -> Result<T, RepairError> {
    tokio::task::spawn_blocking(f).await?
}

/// Run one mesh sync from this node.
pub async fn run(rt: &Arc<NodeRuntime>) -> SyncReport {
    let t = Instant::now();
    let mut rep = SyncReport::default();
    let me = rt.cfg.name.clone();
    let opts = CensusOptions { scope: CensusScope::All, targets: Targets::All, local: Local::Registry, records: false };
    let census = Census::gather(rt, &opts).await;
    // S3 targets hold replicas too: they count towards the factor (in
    // their own failure domain) but never repair anything themselves
    let mut members = vec![Member { name: me.clone(), domain: rt.cfg.domain.clone(), reachable: true }];
    for p in &census.probes {
        members.push(Member {
            name: p.name.clone(),
            domain: p.domain.clone(),
            reachable: p.kind == HolderKind::Peer && p.result.is_ok(),
        });
    }
    rep.unreachable = census.unreachable.clone();
    rep.holding_checks = crate::services::audit::check_peers(rt, &census)
        .await
        .into_iter()
        .map(|(peer, c)| HoldingCheckView {
            peer,
            snapshot: c.snapshot,
            records: c.records,
            ok: c.ok,
            detail: c.detail,
        })
        .collect();
    // a bucket that does not date its objects does not make a snapshot
    // look older than it is
    let now_ns = time::now_ns();
    let mut seen: HashMap<(String, ObjectId), Seen> = HashMap::new();
    for (key, h) in &census.snapshots {
        let Some(record) = &h.record else { continue };
        let holders = h
            .holders
            .iter()
            .map(|(n, x)| (n.clone(), if x.kind == HolderKind::S3 && x.stored_ns <= 0 { now_ns } else { x.stored_ns }))
            .collect();
        seen.insert(key.clone(), Seen { record: record.clone(), holders });
    }
    let peers: Vec<Arc<dyn ReplicaTarget>> =
        census.reachable().into_iter().filter(|(t, _)| t.kind() == HolderKind::Peer).map(|(t, _)| t).collect();
    rep.snapshots = seen.len();
    let factor = rt.cfg.replication.factor;
    // repair in a stable order: per source, oldest first (later snapshots
    // then find most of their data present)
    let mut todo: Vec<(&(String, ObjectId), &Seen)> = seen.iter().collect();
    todo.sort_by_key(|((src, id), s)| (src.clone(), youngest_claim_ns(src, s), *id));
    // only what its source signed is a snapshot of that source here: the
    // listed records are checked once (a forged listing must not make
    // retention think a source has newer snapshots than it has)
    let verifier = rt.tls.attest_verifier();
    let wall = std::time::SystemTime::now();
    // (signatures are checked off the async workers: one per snapshot)
    let checked: HashMap<(String, ObjectId), Result<i64, String>> = {
        let v = verifier.clone();
        let items: Vec<((String, ObjectId), Vec<u8>)> =
            seen.iter().map(|(k, s)| (k.clone(), s.record.clone())).collect();
        tokio::task::spawn_blocking(move || {
            items.into_iter().map(|((src, id), r)| ((src.clone(), id), attested(&v, &src, &id, &r, wall))).collect()
        })
        .await
        .unwrap_or_default()
    };
    // the times this node's retention would judge by: its own stored time
    // for what it holds, the signed creation time (never later than now)
    // for what it would pull; never a time another node reports
    type Entry = (ObjectId, i64, Option<omesh_proto::RetentionGroups>);
    let by_source: HashMap<String, Vec<Entry>> = {
        let mut m: HashMap<String, Vec<Entry>> = HashMap::new();
        for ((src, id), s) in &seen {
            let t = match (s.holders.get(&me), checked.get(&(src.clone(), *id))) {
                (Some(own), _) => *own,
                (None, Some(Ok(created))) => created.saturating_mul(1_000_000_000).min(now_ns),
                (None, _) => continue,
            };
            // grouped as the source signed it, as this node's own retention will
            let groups = omesh_core::store::forget::attested_groups(&s.record);
            m.entry(src.clone()).or_default().push((*id, t, groups));
        }
        m
    };
    let now = time::now();
    for ((source, id), s) in todo {
        let holders: Vec<String> = s.holders.keys().cloned().collect();
        let picks = repairers(source, &holders, &members, factor);
        let replicas = holders.iter().filter(|h| *h != source).count();
        if picks.is_empty() {
            // short of replicas with no node that could add one (a holder
            // gone for good, every other node holding it already): still
            // under-replicated, and said so
            if replicas < factor {
                rep.under_replicated += 1;
                rep.no_repairer += 1;
            }
            continue;
        }
        rep.under_replicated += 1;
        if source == &me || !picks.contains(&me) {
            rep.left_to_others += 1;
            continue;
        }
        if let Err(why) = may_store(rt, source) {
            tracing::debug!(%source, reason = %why, "sync: not repairing");
            rep.left_to_others += 1;
            continue;
        }
        // do not pull what this node's retention would forget right away
        if rt.cfg.retention.has_rules() {
            let all: Vec<(ObjectId, time::Timestamp, Option<omesh_proto::RetentionGroups>)> =
                by_source.get(source).into_iter().flatten().map(|(i, ns, g)| (*i, time::from_ns(*ns), *g)).collect();
            if retention::decide_grouped(&all, &rt.cfg.retention, now).iter().any(|(_, x)| x.id == *id && !x.keep) {
                rep.skipped_by_retention += 1;
                continue;
            }
        }
        // replicas first, nearest first; the source only as a last resort:
        // repair must not depend on it
        let holding = peers.iter().filter(|t| s.holders.contains_key(t.name()));
        let from: Vec<Arc<dyn ReplicaTarget>> = holding
            .clone()
            .filter(|t| t.name() != source)
            .chain(holding.filter(|t| t.name() == source))
            .cloned()
            .collect();
        let listed_by: Vec<String> = s.holders.keys().filter(|h| **h != me).cloned().collect();
        // nothing is repaired from a record its source did not sign. The
        // census kept one peer's copy; when it is bad and others list the
        // snapshot too, each one's own copy is asked for, so one peer's bad
        // answer neither blocks the repair nor gets the honest holders blamed
        let chosen = match checked.get(&(source.clone(), *id)) {
            Some(Ok(created)) => Ok((s.record.clone(), *created)),
            Some(Err(why)) if listed_by.len() >= 2 => {
                genuine_copy(rt, &verifier, source, *id, &from).await.ok_or_else(|| why.clone())
            }
            Some(Err(why)) => {
                for p in &listed_by {
                    rt.counters.peer(p).forged_records.fetch_add(1, Ordering::Relaxed);
                }
                Err(why.clone())
            }
            None => Err("no record was listed".into()),
        };
        let result = match chosen {
            Ok((record, created)) => repair_one(rt, source, *id, &record, created, &from).await,
            Err(why) => Err(RepairError::Forged {
                peers: listed_by.join(", "),
                reason: format!("snapshot {} listed under {source}: {why}", id.short()),
            }),
        };
        match result {
            Ok(r) => {
                tracing::info!(%source, snapshot = %id.short(), objects = r.objects, bytes = r.bytes, from = ?r.from, "sync: replica repaired");
                rep.repaired.push(r);
            }
            Err(e) => {
                tracing::warn!(%source, snapshot = %id.short(), error = %e, "sync: repair failed");
                rep.failed.push(RepairFailure { source: source.clone(), snapshot: id.to_hex(), error: e.to_string() });
            }
        }
    }
    rep.seconds = t.elapsed().as_secs_f64();
    rep
}

/// Check that `record` is a snapshot record `id` of `source`, signed by it;
/// its signed creation time (seconds).
fn attested(
    verifier: &omesh_net::attest::AttestVerifier,
    source: &str,
    id: &ObjectId,
    record: &[u8],
    now: std::time::SystemTime,
) -> Result<i64, String> {
    let (rec, used) = Record::decode(record).map_err(|e| e.to_string())?;
    if used != record.len() || rec.id != *id {
        return Err("the record is not the snapshot it is listed as".into());
    }
    verifier.verify(&rec, source, now).map(|a| a.created).map_err(|e| e.to_string())
}

/// Ask each holder in `from` for its own copy of snapshot `id`'s record;
/// the first one its source signed, with its signed creation time. Every
/// holder whose copy is not is named and counted.
async fn genuine_copy(
    rt: &Arc<NodeRuntime>,
    verifier: &omesh_net::attest::AttestVerifier,
    source: &str,
    id: ObjectId,
    from: &[Arc<dyn ReplicaTarget>],
) -> Option<(Vec<u8>, i64)> {
    for t in from {
        let Ok(record) = t.record(source, &id).await else { continue };
        match attested(verifier, source, &id, &record, std::time::SystemTime::now()) {
            Ok(created) => return Some((record, created)),
            Err(e) => {
                rt.counters.peer(t.name()).forged_records.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %t.name(), %source, snapshot = %id.short(), error = %e, "a peer serves a snapshot record its source did not sign");
            }
        }
    }
    None
}

/// The youngest time any replica (not the source) reports for a snapshot,
/// used only to order repairs (oldest first). Other nodes' reports are
/// never stored as a time and never decide what retention does.
fn youngest_claim_ns(source: &str, s: &Seen) -> i64 {
    let now = time::now_ns();
    s.holders
        .iter()
        .filter(|(h, _)| h.as_str() != source)
        .map(|(_, t)| *t)
        .max()
        .or_else(|| s.holders.values().copied().max())
        .unwrap_or(now)
        .min(now)
}

/// A write the quota or the free-space floor refused, as a repair error.
fn refused(e: WriteRefused, source: &str, node: &str) -> RepairError {
    match e {
        WriteRefused::Store(e) => RepairError::from(e),
        WriteRefused::Quota { quota, .. } => {
            RepairError::Quota { source_name: source.into(), quota, node: node.into() }
        }
        e @ (WriteRefused::DiskFull { .. } | WriteRefused::Torn { .. }) => RepairError::DiskFull(e.to_string()),
    }
}

/// Whether this node keeps replicas of `source` (the same rule as for
/// pushes, `[storage] accept_from`).
fn may_store(rt: &NodeRuntime, source: &str) -> Result<(), String> {
    if !omesh_proto::msg::valid_name(source) {
        return Err("invalid source name".into());
    }
    if rt.cfg.storage.accept_from == crate::config::AcceptFrom::Peers && rt.cfg.peer(source).is_none() {
        return Err(format!("{source} is not a [[peer]] of {}", rt.cfg.name));
    }
    Ok(())
}

/// Copy snapshot `id` of `source` from the peers in `from` into this
/// node's replica store, then commit it. `record` is a snapshot record
/// whose attestation the caller checked (signed by `source`, made at
/// `created`); every record fetched below it must be the one its verified
/// parent's link names. Its stored time is its signed creation time, never
/// later than this node's receipt: retention here never takes a time
/// another peer reports.
async fn repair_one(
    rt: &Arc<NodeRuntime>,
    source: &str,
    id: ObjectId,
    record: &[u8],
    created: i64,
    from: &[Arc<dyn ReplicaTarget>],
) -> Result<Repaired, RepairError> {
    let t = Instant::now();
    let (rec, used) = Record::decode(record).map_err(|e| RepairError::BadRecord(e.to_string()))?;
    if used != record.len() || rec.kind != ObjectKind::Snapshot || rec.id != id {
        return Err(RepairError::BadRecord("the listed snapshot record is not a snapshot with that id".into()));
    }
    let store = {
        let stores = rt.stores.clone();
        let s = source.to_string();
        blocking(move || Ok(stores.get(&s, true)?.expect("created when absent"))).await?
    };
    let quota = rt.cfg.quota_for(source);
    let mut got = Fetched::default();
    // the store's graph walker over the snapshot's graph: present trees
    // are walked from local records, missing objects fetched and walked
    // from theirs
    let mut walk = GraphWalk::from_roots(&rec.links).verifying();
    walk.expect_seals(&rec.links, &rec.seals);
    loop {
        let batch = walk.next(1024);
        if batch.is_empty() {
            break;
        }
        let expect: HashMap<ObjectId, Seal> =
            batch.iter().filter_map(|i| walk.expected_seal(i).map(|s| (*i, s))).collect();
        let st = store.clone();
        let ex = expect.clone();
        let visits = blocking(move || {
            let present = st.store.contains_many(&batch)?;
            let mut out = Vec::with_capacity(batch.len());
            for (id, p) in batch.into_iter().zip(present) {
                let v = if !p {
                    Visit::Missing
                } else {
                    match resolve_local(&st.store, &id, ex.get(&id).copied())? {
                        // being written by another stream: it is there
                        Visit::Missing => Visit::Skip,
                        v => v,
                    }
                };
                out.push((id, v));
            }
            Ok(out)
        })
        .await?;
        let mut missing = Vec::new();
        for (id, v) in visits {
            if v == Visit::Missing {
                missing.push(id);
            }
            walk.visit(&v).map_err(infallible)?;
        }
        if quota > 0 {
            let st = store.clone();
            let used = blocking(move || Ok(st.store.bytes_stored()?)).await?;
            if used > quota {
                return Err(RepairError::Quota { source_name: source.into(), quota, node: rt.cfg.name.clone() });
            }
        }
        let fetched = fetch_into(rt, &store, source, &missing, &expect, from, None, &mut got).await?;
        for v in fetched {
            walk.visit(&v).map_err(infallible)?;
        }
        if let Some(c) = walk.seal_conflict() {
            return Err(RepairError::Forged {
                peers: from.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
                reason: format!("object {} is named with two different seals", c.short()),
            });
        }
    }
    let st = store.clone();
    let record = record.to_vec();
    let roots = (rec.links.clone(), rec.seals.clone());
    let time = time::signed_time_capped(created);
    let allow = rt.cfg.allowance_for(source);
    let (src, node) = (source.to_string(), rt.cfg.name.clone());
    blocking(move || {
        st.flush()?;
        let _commit = st.store.commit_guard();
        let missing = st.missing_below(&roots.0, &roots.1, 16)?;
        if !missing.is_empty() {
            return Err(RepairError::Incomplete { count: missing.len(), first: missing[0] });
        }
        st.admit_snapshot(record.len() as u64, allow).map_err(|e| refused(e, &src, &node))?;
        Ok(st.store.put_snapshot_record_at(&id, &record, time)?)
    })
    .await?;
    Ok(Repaired {
        source: source.into(),
        snapshot: id.to_hex(),
        from: got.from.into_iter().collect(),
        objects: got.objects,
        bytes: got.bytes,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// What a fetch brought.
#[derive(Default)]
pub struct Fetched {
    /// Objects written.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Peers that supplied them.
    pub from: std::collections::BTreeSet<String>,
    /// Ids obtained.
    pub ids: HashSet<ObjectId>,
}

/// Fetch `ids` of `source` from the peers in `from` (in order, each asked
/// only for what the earlier ones lacked), check each record, and write it
/// into `store`. A record whose id is in `expect` must have exactly that
/// seal (the one its verified parent's link names, or the one this store
/// recorded for a damaged copy); with `keys`, records are also decrypted
/// before they are accepted; without either, a record cannot be verified
/// and is refused. A record that fails is never written: the peer that
/// sent it is named in the log and counted (`forged_records`), and the id
/// is asked of the next holder. Returns what the fetched non-blob records
/// link. Ids nobody has stay missing (the caller's completeness check
/// reports them).
#[allow(clippy::too_many_arguments)]
pub async fn fetch_into(
    rt: &Arc<NodeRuntime>,
    store: &Arc<SourceStore>,
    source: &str,
    ids: &[ObjectId],
    expect: &HashMap<ObjectId, Seal>,
    from: &[Arc<dyn ReplicaTarget>],
    keys: Option<Arc<omesh_core::crypto::Keys>>,
    got: &mut Fetched,
) -> Result<Vec<Visit>, RepairError> {
    let mut links = Vec::new();
    let mut left: Vec<ObjectId> = ids.to_vec();
    let allow = rt.cfg.allowance_for(source);
    let (src, node) = (source.to_string(), rt.cfg.name.clone());
    for conn in from {
        if left.is_empty() {
            break;
        }
        let counters = rt.counters.peer(conn.name());
        let mut still = Vec::new();
        for chunk in left.chunks(FETCH_IDS) {
            let (recs, missing) = match conn.fetch(source, chunk, true).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(peer = %conn.name(), error = %e, "fetch failed; trying the next holder");
                    still.extend_from_slice(chunk);
                    continue;
                }
            };
            drop(missing);
            let want: HashMap<ObjectId, Option<Seal>> = chunk.iter().map(|i| (*i, expect.get(i).copied())).collect();
            let mut ok_here = HashSet::new();
            let st = store.clone();
            let k = keys.clone();
            let n_bytes: u64 = recs.iter().map(|r| r.len() as u64).sum();
            let (src, node) = (src.clone(), node.clone());
            let peer = conn.name().to_string();
            let (written, forged) = blocking(move || {
                let mut out = Vec::new();
                let mut forged = 0u64;
                for raw in recs {
                    // a record that does not decode, or was not asked for, is
                    // this peer's fault only: refused, and the ids it owes are
                    // asked of the next holder
                    let Ok((rec, used, seal)) = Record::decode_sealed(&raw) else {
                        tracing::warn!(%peer, source = %src, "refused an undecodable record from a peer");
                        forged += 1;
                        continue;
                    };
                    let Some(expected) = want.get(&rec.id).filter(|_| used == raw.len()) else {
                        tracing::warn!(%peer, source = %src, object = %rec.id.short(), "refused a record that was not asked for");
                        forged += 1;
                        continue;
                    };
                    let verdict = match (expected, &k) {
                        (Some(e), _) if *e != seal => Err(format!(
                            "object {} is not the record its parent names (seal {}, the link names {})",
                            rec.id.short(),
                            seal.short(),
                            e.short()
                        )),
                        (_, Some(k)) => k
                            .open(rec.kind, &rec.id, &omesh_core::crypto::Links::of(&rec), &rec.body)
                            .map(|_| ())
                            .map_err(|e| format!("object {}: {e}", rec.id.short())),
                        (Some(_), None) => Ok(()),
                        (None, None) => {
                            Err(format!("object {} cannot be verified here (no seal, no key)", rec.id.short()))
                        }
                    };
                    if let Err(why) = verdict {
                        // a bad copy: never written; leave the id missing, try elsewhere
                        tracing::warn!(%peer, source = %src, error = %why, "refused a record from a peer");
                        forged += 1;
                        continue;
                    }
                    st.write_record(rec.id, rec.kind, seal, &raw, allow).map_err(|e| refused(e, &src, &node))?;
                    out.push((rec.id, rec.kind, rec.links, rec.seals, raw.len() as u64));
                }
                Ok((out, forged))
            })
            .await?;
            counters.bytes_received.fetch_add(n_bytes, Ordering::Relaxed);
            counters.forged_records.fetch_add(forged, Ordering::Relaxed);
            for (id, kind, l, seals, n) in written {
                ok_here.insert(id);
                got.objects += 1;
                got.bytes += n;
                got.ids.insert(id);
                counters.objects_received.fetch_add(1, Ordering::Relaxed);
                if kind != ObjectKind::Blob {
                    links.push(Visit::Object { kind, links: l, seals });
                }
            }
            if !ok_here.is_empty() {
                got.from.insert(conn.name().to_string());
            }
            still.extend(chunk.iter().filter(|i| !ok_here.contains(i)).copied());
        }
        still.sort();
        still.dedup();
        left = still;
    }
    Ok(links)
}
