//! Retention applied to one store: the time each snapshot counts as, the
//! verdicts of a policy, the retention lock, and the decision on a
//! source's request to forget one of its snapshots stored here.

use super::{Store, StoreError};
use crate::policy::retention;
use crate::snapshot::select::Filter;
use crate::time::{self, Timestamp};
use omesh_proto::ObjectId;
use serde::{Deserialize, Serialize};

/// One snapshot's retention verdict.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForgetItem {
    /// Source.
    pub source: String,
    /// Snapshot id.
    pub id: String,
    /// The time the policy used (RFC 3339).
    pub time: String,
    /// The retention group it was decided in ("all" with `group_by =
    /// "none"`, "ungrouped" for a record older than groups, else the
    /// group's id).
    pub group: String,
    /// The paths of the group, when this node can read them (its key).
    pub paths: Option<Vec<String>>,
    /// Kept?
    pub keep: bool,
    /// Why.
    pub reasons: Vec<String>,
    /// Removed in this run (false in a dry run).
    pub removed: bool,
}

/// Result of `omesh forget`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ForgetReport {
    /// Nothing was removed.
    pub dry_run: bool,
    /// Every snapshot considered.
    pub items: Vec<ForgetItem>,
    /// Removed (or, in a dry run, that would be).
    pub forgotten: usize,
    /// Kept.
    pub kept: usize,
    /// Problems (per store or snapshot).
    pub errors: Vec<String>,
    /// Answers of peers asked to forget snapshots (explicit ids only).
    pub peers: Vec<PeerAnswer>,
}

/// A peer's answer to a delete request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerAnswer {
    /// Peer.
    pub peer: String,
    /// Snapshot.
    pub snapshot: String,
    /// Forgotten there?
    pub forgotten: bool,
    /// Its message.
    pub message: String,
}

/// The time retention uses for each snapshot of a store: the snapshot's
/// own start time when this node has the key (its own store), otherwise
/// the time the snapshot was stored here (for a repaired replica, the time
/// it was committed here).
pub fn snapshot_times(store: &Store) -> Result<Vec<(ObjectId, Timestamp)>, StoreError> {
    let mut out = Vec::new();
    let keyed = store.keys().is_ok();
    for id in store.snapshot_ids()? {
        let ns = if keyed {
            match store.load_snapshot(&id) {
                Ok(r) => r.start_ns,
                Err(_) => store.snapshot_stored_ns(&id),
            }
        } else {
            store.snapshot_stored_ns(&id)
        };
        out.push((id, time::from_ns(ns)));
    }
    Ok(out)
}

/// A snapshot as retention sees it: its id, its time
/// ([`snapshot_times`]), its retention groups, and its paths when this
/// store can read them.
pub type RetentionEntry = (ObjectId, Timestamp, Option<omesh_proto::RetentionGroups>, Option<Vec<String>>);

/// Every snapshot of a store as retention sees it. With the key, the groups
/// are computed from the snapshot's paths and tags; without it (a replica),
/// they are those its source signed into the record's attestation (checked
/// when the record was committed here), so the source and every replica
/// group alike.
pub fn retention_entries(store: &Store) -> Result<Vec<RetentionEntry>, StoreError> {
    chosen_entries(store, &Filter::default())
}

/// [`retention_entries`] of the snapshots `filter` chooses by their
/// records, each record read once (its time, as [`snapshot_times`] has it,
/// comes from the same read). A filter needs the key: the caller refuses a
/// keyless store first.
fn chosen_entries(store: &Store, filter: &Filter) -> Result<Vec<RetentionEntry>, StoreError> {
    let keys = store.keys().ok().cloned();
    let mut out = Vec::new();
    for id in store.snapshot_ids()? {
        let stored = || time::from_ns(store.snapshot_stored_ns(&id));
        out.push(match &keys {
            Some(k) => match store.load_snapshot(&id) {
                Ok(r) if !filter.matches(&r) => continue,
                Ok(r) => (id, time::from_ns(r.start_ns), Some(k.retention_groups(&r.paths, &r.tags)), Some(r.paths)),
                // an unreadable record passes no filter
                Err(_) if !filter.is_empty() => continue,
                Err(_) => (id, stored(), None, None),
            },
            None => (id, stored(), store.read_snapshot_record(&id).ok().and_then(|b| attested_groups(&b)), None),
        });
    }
    Ok(out)
}

/// The retention groups a snapshot record's attestation carries.
pub fn attested_groups(record: &[u8]) -> Option<omesh_proto::RetentionGroups> {
    let (rec, _) = omesh_proto::Record::decode(record).ok()?;
    omesh_proto::Attestation::decode(&rec.attestation).ok()?.groups
}

/// Apply `policy` to one store, each group of snapshots apart
/// ([`retention::RetentionPolicy::group_by`]; every replica groups as the
/// source does, see [`retention_entries`]).
///
/// With a `filter` (`--tag`, `--path`, `--host`), only the snapshots it
/// chooses are considered (the others are neither kept nor forgotten by
/// this run); filters need the records, so a store without the key is
/// skipped with an error rather than judged on what it cannot read.
pub fn forget_store(
    source: &str,
    store: &Store,
    policy: &retention::RetentionPolicy,
    filter: &Filter,
    now: Timestamp,
    dry_run: bool,
    rep: &mut ForgetReport,
) {
    if !filter.is_empty() && store.keys().is_err() {
        rep.errors.push(format!(
            "{source}: --tag, --path and --host need the snapshots' key, which this node does not hold for \
             {source}; none of its snapshots were considered (run the filtered forget on {source} itself)"
        ));
        return;
    }
    let entries = match chosen_entries(store, filter) {
        Ok(t) => t,
        Err(e) => {
            rep.errors.push(format!("{source}: {e}"));
            return;
        }
    };
    let grouped: Vec<_> = entries.iter().map(|(id, t, g, _)| (*id, *t, *g)).collect();
    let paths: std::collections::HashMap<ObjectId, Vec<String>> =
        entries.into_iter().filter_map(|(id, _, _, p)| p.map(|p| (id, p))).collect();
    let decisions = retention::decide_grouped(&grouped, policy, now);
    for (group, d) in decisions {
        let mut removed = false;
        if !d.keep {
            rep.forgotten += 1;
            if !dry_run {
                match store.forget_snapshot(&d.id) {
                    Ok(()) => {
                        removed = true;
                        tracing::info!(%source, snapshot = %d.id.short(), %group, reasons = ?d.reasons, "snapshot forgotten by retention");
                    }
                    Err(e) => rep.errors.push(format!("{source} {}: {e}", d.id.short())),
                }
            }
        } else {
            rep.kept += 1;
        }
        rep.items.push(ForgetItem {
            source: source.to_string(),
            id: d.id.to_hex(),
            time: time::rfc3339(d.time),
            group,
            paths: paths.get(&d.id).cloned(),
            keep: d.keep,
            reasons: d.reasons,
            removed,
        });
    }
}

/// Whether snapshot `id` of `store` is still inside the retention lock
/// (measured like [`snapshot_times`]); returns the lock's end when it is.
pub fn locked_until(
    store: &Store,
    id: &ObjectId,
    policy: &retention::RetentionPolicy,
    now: Timestamp,
) -> Result<Option<Timestamp>, RetentionError> {
    let Some(lock) = policy.lock.as_ref().map(|l| l.value()) else { return Ok(None) };
    let times = snapshot_times(store)?;
    let t = times.iter().find(|(i, _)| i == id).map(|x| x.1).ok_or(RetentionError::NoSnapshot(*id))?;
    Ok(if now.duration_since(t) < lock { Some(time::plus(t, lock)) } else { None })
}

/// Retention could not be decided for a store.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// It holds no such snapshot.
    #[error("no snapshot {}", .0.short())]
    NoSnapshot(ObjectId),
}

/// Why a `DeleteSnapshot` request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeleteRefusal {
    /// Not allowed here (not the source, deletes not honoured, inside the lock).
    #[error("{0}")]
    Forbidden(String),
    /// This node holds no such snapshot.
    #[error("{0}")]
    NotFound(String),
    /// The store could not be read or written.
    #[error("{0}")]
    Internal(String),
}

/// The server side of `DeleteSnapshot` on node `node`: honour it only when
/// this node's `[retention] honor_source_deletes` is set, the requester is
/// the source itself, and the snapshot is older than this node's retention
/// lock.
pub fn handle_delete_request(
    node: &str,
    policy: &retention::RetentionPolicy,
    store: &Store,
    requester: &str,
    source: &str,
    id: &ObjectId,
    now: Timestamp,
) -> Result<(), DeleteRefusal> {
    if requester != source {
        return Err(DeleteRefusal::Forbidden(format!("{requester} may not ask to forget snapshots of {source}")));
    }
    if !policy.honor_source_deletes {
        return Err(DeleteRefusal::Forbidden(format!(
            "{node} never deletes stored snapshots on request (its [retention] honor_source_deletes is off); expiry is its own retention decision (snapshot {} of {source} kept)",
            id.short()
        )));
    }
    if !store.snapshot_ids().map_err(|e| DeleteRefusal::Internal(e.to_string()))?.contains(id) {
        return Err(DeleteRefusal::NotFound(format!("{node} holds no snapshot {} of {source}", id.short())));
    }
    match locked_until(store, id, policy, now) {
        Err(e) => Err(DeleteRefusal::Internal(e.to_string())),
        Ok(Some(until)) => Err(DeleteRefusal::Forbidden(format!(
            "snapshot {} of {source} is inside {node}'s retention lock until {}; it is kept",
            id.short(),
            time::rfc3339(until)
        ))),
        Ok(None) => store.forget_snapshot(id).map_err(|e| DeleteRefusal::Internal(e.to_string())),
    }
}
