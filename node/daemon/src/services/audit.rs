//! Proof of holding: a peer's "I have it" counts toward `factor` only
//! while it is backed by evidence.
//!
//! In each mesh sync, this node picks one of its own snapshots that a
//! reachable peer lists, walks [`CHECK_PATHS`] random paths from the
//! snapshot's root down to a data chunk in its own store, fetches every
//! record on them from the peer and opens each with this node's key
//! (authenticated decryption, then the keyed hash of the plaintext against
//! the id). A peer that does not return them all, or returns one that does
//! not open, fails the check: until a later check passes it is not counted
//! as a replica (`snapshots`, `status`, placement of new backups) and
//! status and the metrics say so. The outcome is kept in the node state.

use crate::census::Census;
use crate::replica::{HolderKind, ReplicaTarget};
use crate::runtime::NodeRuntime;
use crate::state::HoldingCheck;
use omesh_core::store::Store;
use omesh_proto::{ObjectId, ObjectKind};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Random root-to-chunk paths checked per peer and sync.
pub const CHECK_PATHS: usize = 8;

/// Deepest path followed (trees nest once per directory level).
const MAX_DEPTH: usize = 256;

fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random source");
    (u64::from_le_bytes(b) % n.max(1) as u64) as usize
}

/// The records on `paths` random paths from snapshot `snap` down, from
/// this node's own store (blocking).
fn sample(store: &Store, snap: &ObjectId, paths: usize) -> Result<Vec<(ObjectId, ObjectKind)>, String> {
    let raw = store.read_snapshot_record(snap).map_err(|e| e.to_string())?;
    let (_, roots) = omesh_proto::record::links_of(&raw).map_err(|e| e.to_string())?;
    let mut out = BTreeSet::new();
    for _ in 0..paths {
        let mut links = roots.clone();
        for _ in 0..MAX_DEPTH {
            if links.is_empty() {
                break;
            }
            let id = links[random_below(links.len())];
            let Some((_, loc)) = store.locate(&id).map_err(|e| e.to_string())? else {
                return Err(format!("object {} of the snapshot is missing here", id.short()));
            };
            out.insert((id, loc.kind));
            if loc.kind == ObjectKind::Blob {
                break;
            }
            let rec = store.read_record(&id).map_err(|e| e.to_string())?;
            links = omesh_proto::record::links_of(&rec).map_err(|e| e.to_string())?.1;
        }
    }
    Ok(out.into_iter().collect())
}

/// Check one peer against snapshot `snap` of this node.
async fn check_one(
    rt: &Arc<NodeRuntime>,
    store: Arc<Store>,
    target: &dyn ReplicaTarget,
    snap: ObjectId,
) -> Result<HoldingCheck, String> {
    let me = rt.cfg.name.clone();
    let s = store.clone();
    let picked =
        tokio::task::spawn_blocking(move || sample(&s, &snap, CHECK_PATHS)).await.map_err(|e| e.to_string())??;
    let ids: Vec<ObjectId> = picked.iter().map(|(i, _)| *i).collect();
    let now = omesh_core::time::now_ns();
    let check = |ok: bool, records: u64, detail: String| HoldingCheck {
        time_ns: now,
        snapshot: snap.to_hex(),
        records,
        ok,
        detail,
    };
    let (recs, missing) = match target.fetch(&me, &ids, false).await {
        Ok(r) => r,
        // unreachable now: no evidence either way
        Err(e) => return Err(e.to_string()),
    };
    if !missing.is_empty() {
        return Ok(check(
            false,
            0,
            format!(
                "does not return {} of {} records of snapshot {} it lists (first: {})",
                missing.len(),
                ids.len(),
                snap.short(),
                missing[0].short()
            ),
        ));
    }
    let keys = store.keys().map_err(|e| e.to_string())?.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        let mut bad = Vec::new();
        let mut seen = 0u64;
        for raw in &recs {
            let Ok((rec, _)) = omesh_proto::Record::decode(raw) else {
                bad.push("an undecodable record".to_string());
                continue;
            };
            let Some((id, kind)) = picked.iter().find(|(i, _)| *i == rec.id) else {
                bad.push(format!("{} (not asked for)", rec.id.short()));
                continue;
            };
            seen += 1;
            if let Err(e) = omesh_core::store::open_record(&keys, raw, id, *kind) {
                bad.push(format!("{} ({e})", id.short()));
            }
        }
        (seen, bad)
    })
    .await
    .map_err(|e| e.to_string())?;
    let (seen, bad) = verdict;
    if !bad.is_empty() || seen != ids.len() as u64 {
        let what = if bad.is_empty() { format!("{} of {} records", seen, ids.len()) } else { bad.join(", ") };
        return Ok(check(
            false,
            seen,
            format!("records of snapshot {} it returned do not verify with this node's key: {what}", snap.short()),
        ));
    }
    Ok(check(true, seen, String::new()))
}

/// Check every reachable peer that lists at least one of this node's
/// snapshots; record and return the outcomes.
pub async fn check_peers(rt: &Arc<NodeRuntime>, census: &Census) -> Vec<(String, HoldingCheck)> {
    let me = rt.cfg.name.clone();
    // the own store and its snapshot ids, read once, off the async workers
    let (own, mine) = {
        let stores = rt.stores.clone();
        let r = tokio::task::spawn_blocking(move || {
            let s = stores.own_existing().ok()??.store.clone();
            let ids: std::collections::HashSet<ObjectId> = s.snapshot_ids().ok()?.into_iter().collect();
            Some((s, ids))
        });
        match r.await {
            Ok(Some(x)) => x,
            _ => return Vec::new(),
        }
    };
    if own.keys().is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (t, _) in census.reachable() {
        if t.kind() != HolderKind::Peer {
            continue;
        }
        // snapshots the peer lists that this node still has (it walks its own copy)
        let listed: Vec<ObjectId> = census
            .snapshots
            .iter()
            .filter(|((src, id), h)| src == &me && h.holders.contains_key(t.name()) && mine.contains(id))
            .map(|((_, id), _)| *id)
            .collect();
        if listed.is_empty() {
            continue;
        }
        let snap = listed[random_below(listed.len())];
        match check_one(rt, own.clone(), t.as_ref(), snap).await {
            Ok(c) => {
                if c.ok {
                    tracing::info!(peer = %t.name(), snapshot = %snap.short(), records = c.records, "holding check passed");
                } else {
                    tracing::error!(peer = %t.name(), snapshot = %snap.short(), detail = %c.detail, "holding check FAILED: the peer no longer counts as a replica until a check passes");
                }
                rt.metrics
                    .holding_check_failed
                    .get_or_create(&crate::metrics::label("peer", t.name()))
                    .set(i64::from(!c.ok));
                if let Some(st) = rt.state.clone() {
                    let (name, c2) = (t.name().to_string(), c.clone());
                    let _ = tokio::task::spawn_blocking(move || st.set_check(&name, &c2)).await;
                }
                out.push((t.name().to_string(), c));
            }
            Err(e) => tracing::warn!(peer = %t.name(), error = %e, "holding check not done"),
        }
    }
    out
}
