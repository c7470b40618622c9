//! Pushing one snapshot to one peer, sending only what it lacks.
//!
//! 1. Top-down discovery: ask which of the snapshot's root objects the peer
//!    holds; descend only into trees it lacks. An unchanged subtree is one
//!    id in one `Have` batch, so an incremental backup costs round trips
//!    proportional to what changed.
//! 2. Upload blobs (and extent lists) first, then trees from the deepest
//!    level up, in batches over several parallel streams. The peer answers
//!    each batch only when its records are verified and durable.
//! 3. Commit the snapshot record. The peer checks the whole graph is
//!    present; if discovery assumed too much (a tree present without all of
//!    its subtree, e.g. after an interrupted upload), or lost objects since
//!    (its GC, a failed write), it answers Incomplete and we fall back to a
//!    full `Have` pass over every object, up to three times.

use super::PeerCounters;
use super::client::{ClientError, PeerConn};
use omesh_core::store::walk::{GraphWalk, Visit, infallible, resolve_local};
use omesh_core::store::{Store, StoreError};
use omesh_proto::msg::ErrorCode;
use omesh_proto::{ObjectId, ObjectKind};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::task::JoinSet;

/// Replication failures.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// Network or peer refusal.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Local store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Internal.
    #[error("{0}")]
    Internal(String),
}

/// Upload tuning.
#[derive(Clone, Copy, Debug)]
pub struct PushOptions {
    /// Parallel streams.
    pub streams: usize,
    /// Target bytes per stream batch.
    pub batch_bytes: u64,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ReplicateError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReplicateError::Internal(e.to_string()))?
        .map_err(ReplicateError::Store)
}

/// Objects to send: (blobs, non-blob levels from the root down).
type Plan = (Vec<ObjectId>, Vec<Vec<ObjectId>>);

/// What `conn` lacks of the graph below `roots`: the store's graph walker,
/// one `Have` per level. With `trust_have`, a tree the peer holds is taken
/// to hold its whole subtree (an unchanged subtree costs one id); in a
/// full pass every held tree is descended into too.
async fn discover(
    conn: &PeerConn,
    store: &Arc<Store>,
    source: &str,
    roots: Vec<ObjectId>,
    trust_have: bool,
) -> Result<Plan, ReplicateError> {
    let mut blobs = Vec::new();
    let mut levels: Vec<Vec<ObjectId>> = Vec::new();
    let mut walk = GraphWalk::from_roots(&roots);
    loop {
        let frontier = walk.next(usize::MAX);
        if frontier.is_empty() {
            break;
        }
        let held = conn.have(source, &frontier).await?;
        let lacking: HashSet<ObjectId> = frontier.iter().zip(&held).filter(|(_, h)| !**h).map(|(id, _)| *id).collect();
        let descend: Vec<ObjectId> = if trust_have { lacking.iter().copied().collect() } else { frontier.clone() };
        let s = store.clone();
        let visits = blocking(move || {
            descend
                .into_iter()
                .map(|id| match resolve_local(&s, &id, None)? {
                    Visit::Missing => Err(StoreError::Missing(id, "needed for replication")),
                    v => Ok((id, v)),
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
        let mut level = Vec::new();
        for (id, v) in visits {
            if lacking.contains(&id) {
                match &v {
                    Visit::Object { kind: ObjectKind::Blob, .. } => blobs.push(id),
                    _ => level.push(id),
                }
            }
            walk.visit(&v).map_err(|e| ReplicateError::Internal(infallible(e).to_string()))?;
        }
        levels.push(level);
    }
    Ok((blobs, levels))
}

async fn upload(
    conn: &PeerConn,
    store: &Arc<Store>,
    source: &str,
    ids: Vec<ObjectId>,
    opts: PushOptions,
    counters: &Arc<PeerCounters>,
) -> Result<(u64, u64), ReplicateError> {
    let mut sent = (0u64, 0u64);
    let mut tasks: JoinSet<Result<(u64, u64), ReplicateError>> = JoinSet::new();
    let mut i = 0;
    while i < ids.len() || !tasks.is_empty() {
        while tasks.len() < opts.streams.max(1) && i < ids.len() {
            // a batch: records up to batch_bytes (read on a blocking thread)
            let s = store.clone();
            let rest: Vec<ObjectId> = ids[i..ids.len().min(i + 4096)].to_vec();
            let limit = opts.batch_bytes;
            let batch = blocking(move || {
                let mut recs = Vec::new();
                let mut bytes = 0u64;
                for id in rest {
                    let r = s.read_record(&id)?;
                    bytes += r.len() as u64;
                    recs.push(r);
                    if bytes >= limit {
                        break;
                    }
                }
                Ok(recs)
            })
            .await?;
            i += batch.len();
            let conn = conn.clone();
            let source = source.to_string();
            let counters = counters.clone();
            tasks.spawn(async move {
                let n = batch.len() as u64;
                let bytes: u64 = batch.iter().map(|r| r.len() as u64).sum();
                conn.put_objects(&source, &batch).await?;
                counters.objects_sent.fetch_add(n, Ordering::Relaxed);
                counters.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                Ok((n, bytes))
            });
        }
        if let Some(r) = tasks.join_next().await {
            let (n, b) = r.map_err(|e| ReplicateError::Internal(e.to_string()))??;
            sent.0 += n;
            sent.1 += b;
        }
    }
    Ok(sent)
}

async fn send_plan(
    conn: &PeerConn,
    store: &Arc<Store>,
    source: &str,
    plan: Plan,
    opts: PushOptions,
    counters: &Arc<PeerCounters>,
) -> Result<(u64, u64), ReplicateError> {
    let (blobs, levels) = plan;
    let mut total = upload(conn, store, source, blobs, opts, counters).await?;
    // deepest level first: a tree arrives only after everything below it
    for level in levels.into_iter().rev() {
        if level.is_empty() {
            continue;
        }
        let (n, b) = upload(conn, store, source, level, opts, counters).await?;
        total.0 += n;
        total.1 += b;
    }
    Ok(total)
}

/// Push snapshot `snap` of `source` (from `store`) to `conn`. Returns
/// (objects sent, bytes sent).
pub async fn push_snapshot(
    conn: &PeerConn,
    store: Arc<Store>,
    source: &str,
    snap: ObjectId,
    opts: PushOptions,
    counters: Arc<PeerCounters>,
) -> Result<(u64, u64), ReplicateError> {
    // the own store's key first: a peer bound to another key refuses
    // before any object is sent (a replica store has no key id)
    let key_id = store.config().key_id.clone();
    if !key_id.is_empty() {
        conn.bind_key(source, &key_id).await?;
    }
    let s = store.clone();
    let record = blocking(move || s.read_snapshot_record(&snap)).await?;
    let (_, roots) = omesh_proto::record::links_of(&record).map_err(|e| ReplicateError::Internal(e.to_string()))?;
    let plan = discover(conn, &store, source, roots.clone(), true).await?;
    let mut sent = send_plan(conn, &store, source, plan, opts, &counters).await?;
    // the peer may lack what discovery assumed (a partial subtree after an
    // interrupted upload), or lose objects between its answers and the
    // commit (its garbage collection, a failed write that dropped a pack):
    // each time, every object is checked again and what is missing sent
    let mut round = 0;
    loop {
        match conn.put_snapshot(source, &record).await {
            Ok(_) => return Ok(sent),
            Err(ClientError::Remote { code: ErrorCode::Incomplete, missing, .. }) if round < INCOMPLETE_ROUNDS => {
                round += 1;
                tracing::info!(peer = %conn.name, missing = missing.len(), round, "the peer lacks objects of the snapshot; checking every object and sending what it lacks");
                let plan = discover(conn, &store, source, roots.clone(), false).await?;
                let more = send_plan(conn, &store, source, plan, opts, &counters).await?;
                sent.0 += more.0;
                sent.1 += more.1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How many times a commit the peer answers `Incomplete` is followed by a
/// full pass and a new commit before the push fails.
const INCOMPLETE_ROUNDS: u32 = 3;
