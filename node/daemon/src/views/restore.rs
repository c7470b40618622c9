//! Preparing a restore through the mesh: find the snapshot in one census
//! and build a source that reads it from the local store and/or every
//! replica holding it.

use crate::census::{Census, CensusOptions, CensusScope, Local, Targets};
use crate::error::NodeError;
use crate::replica::HolderKind;
use crate::runtime::NodeRuntime;
use crate::source::{MeshSource, Replica, open_snapshot};
use omesh_core::snapshot::SnapshotRecord;
use omesh_core::snapshot::select::{self, Filter, SelectError};
use omesh_proto::ObjectId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
    filter: &Filter,
    from: &From,
) -> Result<(ObjectId, MeshSource), NodeError> {
    let (ids, src) = prepare_source(rt, source, from, |records, unreadable| {
        if spec == "latest"
            && let Some(first) = unreadable
        {
            // the newest readable one might not be the latest
            return Err(NodeError::Usage(format!(
                "`latest` cannot be decided for {source}: snapshot {} (and maybe others) does not decrypt with \
                 this node's key of {source} ({}); a key exported before a key rotation cannot read what was \
                 written after it: import the current export (`omesh key import`), or name the snapshot by id",
                first.short(),
                rt.cfg.key_path(source).display()
            )));
        }
        let chosen = filter.apply(records.iter().map(|(i, r)| (*i, r.clone())).collect());
        select::resolve(&chosen, spec, !filter.is_empty()).map(|id| vec![id]).map_err(|e| match e {
            SelectError::NoMatch { spec, filtered } => {
                NodeError::NoMatch(if filtered.is_empty() { spec } else { format!("{spec} (with the filters given)") })
            }
            SelectError::Ambiguous { spec, candidates } => NodeError::Ambiguous(spec, candidates),
        })
    })
    .await?;
    Ok((ids[0], src))
}

/// Every snapshot of `source` this node can decrypt, and a source that
/// reads them from the local store and/or every replica holding any of
/// them (`diff`, `find`, `dump`, `stats` pick among them).
pub async fn prepare_browse(
    rt: &Arc<NodeRuntime>,
    source: &str,
    from: &From,
) -> Result<(Vec<(ObjectId, SnapshotRecord)>, MeshSource), NodeError> {
    let (_, src) = prepare_source(rt, source, from, |records, _| Ok(records.keys().copied().collect())).await?;
    let mut list = src.records();
    list.sort_by_key(|(id, r)| (r.start_ns, *id));
    Ok((list, src))
}

/// The census part of [`prepare_restore`] and [`prepare_browse`]: the
/// snapshots `pick` chooses among the decryptable ones (told the first
/// record that does not decrypt, if any), and a source over the replicas
/// holding any of them.
async fn prepare_source(
    rt: &Arc<NodeRuntime>,
    source: &str,
    from: &From,
    pick: impl FnOnce(&HashMap<ObjectId, SnapshotRecord>, Option<ObjectId>) -> Result<Vec<ObjectId>, NodeError>,
) -> Result<(Vec<ObjectId>, MeshSource), NodeError> {
    let keys = {
        let (rt2, s) = (rt.clone(), source.to_string());
        tokio::task::spawn_blocking(move || super::snapshots::source_keys(&rt2, &s)).await?
    };
    let keys = keys.ok_or_else(|| NodeError::NoKey {
        source_name: source.to_string(),
        key_path: rt.cfg.key_path(source),
        config: rt.cfg.path.clone(),
    })?;
    if let From::Peer(p) = from
        && rt.cfg.peer(p).is_none()
        && rt.cfg.s3_target(p).is_none()
    {
        return Err(NodeError::UnknownTarget { name: p.clone(), config: rt.cfg.path.clone() });
    }
    let opts = CensusOptions {
        scope: CensusScope::Source(source.to_string()),
        targets: match from {
            From::Auto => Targets::All,
            From::Local => Targets::None,
            From::S3 => Targets::Buckets,
            From::Peer(p) => Targets::Only(p.clone()),
        },
        local: match from {
            From::Auto | From::Local => Local::ReadOnly,
            From::S3 | From::Peer(_) => Local::Skip,
        },
        records: true,
    };
    let census = Census::gather(rt, &opts).await;
    let me = rt.cfg.name.as_str();
    let mut records: HashMap<ObjectId, SnapshotRecord> = HashMap::new();
    let mut unreadable = None;
    for ((_, id), h) in &census.snapshots {
        let Some(rec) = &h.record else { continue };
        match open_snapshot(&keys, id, rec) {
            Ok(d) => {
                records.insert(*id, d);
            }
            Err(e) => {
                unreadable.get_or_insert(*id);
                tracing::warn!(snapshot = %id.short(), error = %e, "a listed snapshot record does not decrypt with this key; ignored")
            }
        }
    }
    if records.is_empty() {
        return Err(NodeError::NoSnapshots {
            source_name: source.to_string(),
            unreachable: census.unreachable_summary(),
        });
    }
    let ids = pick(&records, unreadable)?;
    let mut replicas: Vec<Arc<Replica>> = Vec::new();
    let mut local_holds = false;
    for id in &ids {
        let holders = census.snapshots.get(&(source.to_string(), *id)).map(|h| &h.holders);
        for (name, h) in holders.into_iter().flatten() {
            if name == me && h.kind == HolderKind::Local {
                local_holds = true;
            } else if !replicas.iter().any(|r| r.name == *name)
                && let Some((t, rtt)) = census.target(name)
            {
                replicas.push(Arc::new(Replica::new(t, rtt)));
            }
        }
    }
    let local = census.local_store.clone().filter(|_| local_holds);
    if replicas.is_empty() && local.is_none() {
        let snapshot = ids.first().copied().unwrap_or_default();
        return Err(NodeError::NotReachable { snapshot, source_name: source.to_string() });
    }
    let chunker = local.as_ref().map(|l| l.config().chunker).unwrap_or_default();
    let mut src = MeshSource::new(tokio::runtime::Handle::current(), source, keys, chunker, local, replicas, records);
    src.request_timeout = Duration::from_secs(rt.cfg.transport.request_timeout_secs.max(1));
    Ok((ids, src))
}
