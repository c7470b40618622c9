//! Keeping the mesh healthy without anyone watching: schedules, mesh sync
//! (anti-entropy repair), retention behind a lock, garbage collection,
//! scrub and self-heal, bandwidth windows, metrics.
//!
//! - [`schedule`], [`retention`], [`sync::repairers`], [`bandwidth`]:
//!   decisions as plain functions with the time passed in.
//! - [`gc`], [`scrub`]: work on one store (blocking).
//! - [`sync`]: repairing under-replicated snapshots from peers.
//! - this module: the node-level operations (over every store this node
//!   keeps) that both the daemon's timers ([`daemon`]) and the CLI run.

use super::sync;
use crate::census::{Census, CensusOptions, CensusScope, Local, Targets};
use crate::metrics;
use crate::replica::{HolderKind, ReplicaTarget};
use omesh_core::policy::bandwidth;
use omesh_core::store::scrub::DamageKind;
use omesh_core::store::{gc, scrub};

use crate::{error::NodeError, runtime::NodeRuntime};
use omesh_core::snapshot::select::{Filter, TagChange};
use omesh_core::store::TagReport;
use omesh_core::time::{self, Timestamp};
use omesh_proto::ObjectId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::SystemTime;

// ---------------------------------------------------------------- forget

pub use omesh_core::store::forget::{
    ForgetItem, ForgetReport, PeerAnswer, forget_store, locked_until, retention_entries, snapshot_times,
};

/// `omesh forget --config`: apply `[retention]` to every store on this node
/// (or one source's), or forget the given snapshots of this node and ask
/// the peers holding them to forget them too.
///
/// With a `filter`, only this node's own snapshots that it chooses are
/// considered (the filters need the records, which only the source can
/// read); a filter with another `source` is refused.
pub async fn forget(
    rt: &Arc<NodeRuntime>,
    source: Option<String>,
    ids: Vec<String>,
    dry_run: bool,
    filter: Filter,
) -> Result<ForgetReport, NodeError> {
    // one retention or garbage collection at a time on this node
    let _one = rt.maintenance_lock.lock().await;
    let mut rep = ForgetReport { dry_run, ..Default::default() };
    let policy = rt.cfg.retention.clone();
    let now = time::now();
    if !ids.is_empty() {
        if !filter.is_empty() {
            return Err(NodeError::Usage(
                "name the snapshots to forget, or give filters for [retention] to choose among; not both".into(),
            ));
        }
        return forget_ids(rt, ids, dry_run, now).await;
    }
    let source = match (source, filter.is_empty()) {
        (s, true) => s,
        (None, false) => Some(rt.cfg.name.clone()),
        (Some(s), false) if s == rt.cfg.name => Some(s),
        (Some(s), false) => {
            return Err(NodeError::Usage(format!(
                "--tag, --path and --host choose by what the snapshot records say, and this node cannot read \
                 {s}'s records (it holds them without their key); run the filtered forget on {s}, whose \
                 retained and forgotten snapshots its peers then follow"
            )));
        }
    };
    if !policy.has_rules() {
        return Err(NodeError::Config(crate::config::ConfigError {
            path: rt.cfg.path.clone(),
            message: "[retention] has no keep_* rule, so nothing is ever forgotten; add rules (see docs/config.md) or name the snapshots to forget".into(),
        }));
    }
    let stores = rt.stores.clone();
    let rep = tokio::task::spawn_blocking(move || {
        let names = match source {
            Some(s) => vec![s],
            None => stores.source_names(),
        };
        for n in names {
            match stores.get(&n, false) {
                Ok(Some(s)) => forget_store(&n, &s.store, &policy, &filter, now, dry_run, &mut rep),
                Ok(None) => rep.errors.push(format!("no store of {n} on this node")),
                Err(e) => rep.errors.push(format!("{n}: {e}")),
            }
        }
        rep
    })
    .await?;
    if !dry_run {
        rt.metrics.forgotten.inc_by(rep.items.iter().filter(|i| i.removed).count() as u64);
    }
    Ok(rep)
}

async fn forget_ids(
    rt: &Arc<NodeRuntime>,
    specs: Vec<String>,
    dry_run: bool,
    now: Timestamp,
) -> Result<ForgetReport, NodeError> {
    let own = {
        let stores = rt.stores.clone();
        // no store yet: nothing of this node to forget (and no key minted)
        match tokio::task::spawn_blocking(move || stores.own_existing()).await?? {
            Some(s) => s,
            None => return Err(NodeError::NoMatch(specs.first().cloned().unwrap_or_default())),
        }
    };
    let (name, policy) = (rt.cfg.name.clone(), rt.cfg.retention.clone());
    let store = own.store.clone();
    // the store's own decisions, off the async workers
    let (mut rep, ids) = tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
        let mut rep = ForgetReport { dry_run, ..Default::default() };
        let mut ids = Vec::new();
        for s in &specs {
            ids.push(store.resolve_snapshot(s)?);
        }
        let entries = retention_entries(&store)?;
        for id in &ids {
            let locked = locked_until(&store, id, &policy, now)?;
            let (keep, reasons) = match locked {
                Some(until) => (true, vec![format!("retention lock until {}", time::rfc3339(until))]),
                None => (false, vec!["requested".to_string()]),
            };
            let mut removed = false;
            if !keep && !dry_run {
                store.forget_snapshot(id)?;
                removed = true;
            }
            if keep {
                rep.kept += 1;
            } else {
                rep.forgotten += 1;
            }
            let e = entries.iter().find(|x| x.0 == *id);
            rep.items.push(ForgetItem {
                source: name.clone(),
                id: id.to_hex(),
                time: e.map(|x| time::rfc3339(x.1)).unwrap_or_default(),
                group: policy.group_by.group_of(e.and_then(|x| x.2.as_ref())),
                paths: e.and_then(|x| x.3.clone()),
                keep,
                reasons,
                removed,
            });
        }
        Ok((rep, ids))
    })
    .await??;
    if dry_run {
        return Ok(rep);
    }
    rep.peers = ask_peers_to_forget(rt, &ids, None).await;
    Ok(rep)
}

/// Ask the reachable peers (`only`: just these) to forget snapshots `ids`
/// of this node; each decides by its own policy and lock. A peer that
/// holds none of them says nothing; one that could not be asked is
/// reported, so the caller can ask again when it is back.
async fn ask_peers_to_forget(
    rt: &Arc<NodeRuntime>,
    ids: &[ObjectId],
    only: Option<&std::collections::HashMap<ObjectId, Vec<String>>>,
) -> Vec<PeerAnswer> {
    let mut out = Vec::new();
    let probes = rt.probe_all().await;
    for p in &probes {
        let asked: Vec<ObjectId> = ids
            .iter()
            .filter(|id| only.is_none_or(|o| o.get(id).is_some_and(|peers| peers.contains(&p.peer.name))))
            .copied()
            .collect();
        if asked.is_empty() {
            continue;
        }
        let c = match &p.result {
            Ok((c, _)) => c,
            Err(e) => {
                // it may hold replicas: the caller must know they were not
                // asked (it can rerun forget when the peer is back)
                for id in &asked {
                    out.push(PeerAnswer {
                        peer: p.peer.name.clone(),
                        snapshot: id.to_hex(),
                        forgotten: false,
                        message: format!("not asked: unreachable ({e})"),
                    });
                }
                continue;
            }
        };
        for id in &asked {
            let r = c.delete_snapshot(&rt.cfg.name, *id).await;
            let (forgotten, message) = match r {
                Ok(()) => (true, "forgotten".to_string()),
                Err(omesh_net::mesh::client::ClientError::Remote {
                    code: omesh_proto::msg::ErrorCode::NotFound,
                    ..
                }) => {
                    continue;
                }
                Err(e) => (false, e.to_string()),
            };
            out.push(PeerAnswer { peer: c.name.clone(), snapshot: id.to_hex(), forgotten, message });
        }
    }
    out
}

// ------------------------------------------------------------------- tag

/// `omesh tag --config`: change the tags of this node's snapshots (in its
/// own store, see [`omesh_core::store::Store::tag_snapshots`]), send each
/// new record to the peers, and ask the peers that acknowledged it to
/// forget the old one. A peer that did not get the new record keeps the
/// old one (its retention ages it out), so no peer loses a replica.
pub async fn tag(
    rt: &Arc<NodeRuntime>,
    specs: Vec<String>,
    filter: Filter,
    change: TagChange,
) -> Result<TagReport, NodeError> {
    let _one = rt.maintenance_lock.lock().await;
    let own = {
        let stores = rt.stores.clone();
        match tokio::task::spawn_blocking(move || stores.own_existing()).await?? {
            Some(s) => s,
            None => return Err(NodeError::NoMatch(specs.first().cloned().unwrap_or_else(|| "(filters)".into()))),
        }
    };
    let store = own.store.clone();
    let mut rep = tokio::task::spawn_blocking(move || store.tag_snapshots(&specs, &filter, &change)).await??;
    let mut acked: std::collections::HashMap<ObjectId, Vec<String>> = Default::default();
    let mut old_ids = Vec::new();
    for item in rep.items.iter_mut() {
        let (old, Some(new)) = (item.snapshot, item.new) else { continue };
        for r in rt.replicate(new).await {
            if r.ok {
                item.replicas.push(r.peer.clone());
                acked.entry(old).or_default().push(r.peer);
            } else {
                rep.errors.push(format!(
                    "{}: the retagged snapshot {} did not reach it ({}); it keeps the old record {} until \
                     `omesh sync` sends the new one and its retention removes the old",
                    r.peer,
                    new.short(),
                    r.error.as_deref().unwrap_or("failed"),
                    old.short()
                ));
            }
        }
        old_ids.push(old);
    }
    rep.peers = ask_peers_to_forget(rt, &old_ids, Some(&acked)).await;
    Ok(rep)
}

// -------------------------------------------------------------------- gc

/// Result of `omesh gc` over the node's stores.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GcAllReport {
    /// Per store.
    pub stores: Vec<gc::GcReport>,
    /// Stores that failed, with why.
    pub errors: Vec<String>,
}

/// Garbage-collect every store on this node, one after the other.
pub async fn gc_all(rt: &Arc<NodeRuntime>) -> GcAllReport {
    let _one = rt.maintenance_lock.lock().await;
    let stores = rt.stores.clone();
    let mut opts = rt.cfg.gc.options();
    opts.stop = Some(rt.stopping.clone());
    let metrics = rt.metrics.clone();
    tokio::task::spawn_blocking(move || {
        let mut rep = GcAllReport::default();
        for n in stores.source_names() {
            let s = match stores.get(&n, false) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    rep.errors.push(format!("{n}: {e}"));
                    continue;
                }
            };
            match gc::run(&s.store, &opts, SystemTime::now()) {
                Ok(r) => {
                    metrics.gc_runs.get_or_create(&metrics::label("result", "ok")).inc();
                    metrics.gc_swept.inc_by(r.swept);
                    metrics.gc_bytes_freed.inc_by(r.bytes_before.saturating_sub(r.bytes_after));
                    metrics.gc_seconds.observe(r.seconds);
                    rep.stores.push(r);
                }
                Err(e) => {
                    metrics.gc_runs.get_or_create(&metrics::label("result", "failed")).inc();
                    tracing::error!(source = %n, error = %e, "garbage collection failed");
                    rep.errors.push(format!("{n}: {e}"));
                }
            }
        }
        rep
    })
    .await
    .unwrap_or_else(|e| GcAllReport { stores: vec![], errors: vec![e.to_string()] })
}

// ----------------------------------------------------------------- scrub

/// Result of a scrub over the node's stores.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScrubReport {
    /// Per store.
    pub stores: Vec<scrub::ScrubPass>,
    /// Damaged objects replaced with good copies from replicas.
    #[serde(with = "omesh_proto::id::hex::vec")]
    pub repaired: Vec<ObjectId>,
    /// Damaged objects no replica could supply.
    #[serde(with = "omesh_proto::id::hex::vec")]
    pub unrepaired: Vec<ObjectId>,
    /// Store-level failures.
    pub errors: Vec<String>,
    /// Seconds.
    pub seconds: f64,
}

/// Scrub every store on this node at `rate`, then fetch good copies of
/// whatever was damaged from the peers that hold the same source.
pub async fn scrub_all(
    rt: &Arc<NodeRuntime>,
    rate: bandwidth::Rate,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> ScrubReport {
    let t = std::time::Instant::now();
    let mut rep = ScrubReport::default();
    // a second scrub would read and rewrite the same packs: say so rather
    // than wait for hours without a word
    let Ok(_one) = rt.scrub_lock.try_lock() else {
        rep.errors.push("a scrub is already running on this node (the daemon's [scrub] pass or another `omesh scrub`); try again when it has finished (`omesh status` shows it)".into());
        return rep;
    };
    let names = {
        let stores = rt.stores.clone();
        tokio::task::spawn_blocking(move || stores.source_names()).await.unwrap_or_default()
    };
    for n in names {
        let opened = {
            let (stores, n) = (rt.stores.clone(), n.clone());
            tokio::task::spawn_blocking(move || stores.get(&n, false)).await
        };
        let s = match opened.unwrap_or_else(|e| Err(omesh_core::store::StoreError::Object(e.to_string(), false))) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                rep.errors.push(format!("{n}: {e}"));
                continue;
            }
        };
        let st = s.clone();
        let stop2 = stop.clone();
        let grace = rt.cfg.gc.options().grace;
        let pass = tokio::task::spawn_blocking(move || {
            let pacer = bandwidth::Pacer::new(rate);
            scrub::scrub_store(&st.store, &pacer, None, u64::MAX, grace, &|| {
                stop2.load(std::sync::atomic::Ordering::Relaxed)
            })
        })
        .await;
        let pass = match pass {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                rep.errors.push(format!("{n}: {e}"));
                continue;
            }
            Err(e) => {
                rep.errors.push(format!("{n}: {e}"));
                continue;
            }
        };
        rt.metrics.scrub_objects.inc_by(pass.objects);
        rt.metrics.scrub_bytes.inc_by(pass.bytes);
        rt.metrics.scrub_damaged.inc_by(pass.damaged.len() as u64);
        if !pass.damaged.is_empty() {
            s.forget_complete();
            let (ok, bad) = heal(rt, &n, &s, &pass.damaged).await;
            rt.metrics.scrub_repaired.inc_by(ok.len() as u64);
            rep.repaired.extend(ok);
            rep.unrepaired.extend(bad);
        }
        rep.stores.push(pass);
    }
    rep.seconds = t.elapsed().as_secs_f64();
    if !stop.load(std::sync::atomic::Ordering::Relaxed) {
        rt.metrics.scrub_seconds.observe(rep.seconds);
    }
    rep
}

/// Fetch good copies of damaged items of `source` from the peers that
/// hold the same source (one census of who holds what).
async fn heal(
    rt: &Arc<NodeRuntime>,
    source: &str,
    store: &Arc<omesh_net::mesh::SourceStore>,
    damaged: &[scrub::Damage],
) -> (Vec<ObjectId>, Vec<ObjectId>) {
    let opts = CensusOptions {
        scope: CensusScope::Source(source.to_string()),
        targets: Targets::All,
        local: Local::Skip,
        records: false,
    };
    let census = Census::gather(rt, &opts).await;
    let peers: Vec<Arc<dyn ReplicaTarget>> =
        census.reachable().into_iter().filter(|(t, _)| t.kind() == HolderKind::Peer).map(|(t, _)| t).collect();
    let keys = if source == rt.cfg.name { store.store.keys().ok().cloned() } else { None };
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let objects: Vec<ObjectId> = damaged.iter().filter(|d| d.what == DamageKind::Object).map(|d| d.id).collect();
    if !objects.is_empty() {
        let mut got = sync::Fetched::default();
        // a replacement must be exactly the record this store had (its
        // recorded seal); with the key it must also decrypt to its id
        let expect: std::collections::HashMap<ObjectId, omesh_proto::Seal> =
            damaged.iter().filter(|d| d.what == DamageKind::Object).filter_map(|d| d.seal.map(|s| (d.id, s))).collect();
        let mark = store.start_stream();
        if let Err(e) = sync::fetch_into(rt, store, source, &objects, &expect, &peers, keys.clone(), &mut got).await {
            tracing::warn!(%source, error = %e, "repair fetch failed");
        }
        let st = store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || st.finish_stream(mark)).await {
            // nothing fetched is durable for sure: none counts as replaced
            tracing::warn!(%source, error = %e, "repair write failed");
            got.ids.clear();
        }
        for id in objects {
            if got.ids.contains(&id) {
                tracing::info!(%source, object = %id.short(), from = ?got.from, "damaged object replaced from a replica");
                ok.push(id);
            } else {
                tracing::error!(%source, object = %id.short(), "no reachable replica holds a good copy of a damaged object");
                bad.push(id);
            }
        }
    }
    for d in damaged.iter().filter(|d| d.what == DamageKind::Snapshot) {
        let id = d.id;
        let holders = census.snapshots.get(&(source.to_string(), id)).map(|h| h.holders.clone()).unwrap_or_default();
        let mut done = false;
        for t in peers.iter().filter(|t| holders.contains_key(t.name())) {
            let Ok(record) = t.record(source, &id).await else { continue };
            // with the key (this node's own store), the record must decrypt
            // and hash to its id; a keyless replica checks that the source
            // signed it: either way a peer cannot plant a forged one
            let ok_rec = match &keys {
                Some(k) => crate::source::open_snapshot(k, &id, &record).is_ok(),
                None => omesh_proto::Record::decode(&record).is_ok_and(|(r, used)| {
                    used == record.len()
                        && r.id == id
                        && rt.tls.attest_verifier().verify(&r, source, SystemTime::now()).is_ok()
                }),
            };
            if !ok_rec {
                tracing::warn!(%source, snapshot = %id.short(), peer = %t.name(), "a peer's copy of a damaged snapshot record does not verify; not used");
                continue;
            }
            // the damaged file's own time stays (this node's receipt);
            // another peer's report is never taken as a time
            let st = store.clone();
            if tokio::task::spawn_blocking(move || {
                // scrub moved the damaged file to quarantine/, keeping its time
                let quarantined = st.store.dir().join("quarantine").join(format!("snapshot.{}", id.to_hex()));
                let time = std::fs::metadata(&quarantined)
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|_| SystemTime::now())
                    .min(SystemTime::now());
                st.store.put_snapshot_record_at(&id, &record, time)
            })
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
            {
                done = true;
                break;
            }
        }
        if done { ok.push(id) } else { bad.push(id) }
    }
    (ok, bad)
}

// ------------------------------------------------------------------ sync

/// Run one mesh sync and record it in the metrics.
pub async fn sync_now(rt: &Arc<NodeRuntime>) -> sync::SyncReport {
    let _one = rt.sync_lock.lock().await;
    let r = sync::run(rt).await;
    rt.metrics.sync_runs.inc();
    rt.metrics.sync_repaired.inc_by(r.repaired.len() as u64);
    rt.metrics.sync_bytes.inc_by(r.repaired.iter().map(|x| x.bytes).sum());
    rt.metrics.sync_under_replicated.set(r.under_replicated.saturating_sub(r.repaired.len()) as i64);
    rt.metrics.sync_seconds.observe(r.seconds);
    if r.failed.is_empty() {
        let now = omesh_core::time::now().as_second() as f64;
        rt.metrics.last_success.get_or_create(&crate::metrics::label("job", "sync")).set(now);
    }
    r
}
