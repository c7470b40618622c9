//! The daemon's timers: scheduled backups, mesh sync, maintenance
//! (retention, then garbage collection), scrub passes, and the metrics
//! endpoint. Every decision about *when* is made by the plain functions in
//! `omesh_core::policy::schedule`; this module only sleeps until then, runs the job
//! and records it in the node state (so a run missed while the node was
//! down is made up at start, and `omesh status` can report it).

use crate::{error::NodeError, runtime::NodeRuntime};
use chrono::Utc;
use omesh_core::backup::{BackupOptions, ParentChoice, Progress};
use omesh_core::policy::schedule::Schedule;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Longest single sleep: wall-clock jumps (NTP, suspend) are noticed
/// within this.
const MAX_SLEEP: Duration = Duration::from_secs(60);

fn now_ns() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

fn last_start(rt: &NodeRuntime, key: &str) -> Option<chrono::DateTime<Utc>> {
    let r = rt.state.as_ref()?.runs().ok()?.remove(key)?;
    (r.last_start_ns > 0).then(|| chrono::DateTime::from_timestamp_nanos(r.last_start_ns))
}

/// Sleep until `sched`'s next run (re-evaluated at least every minute).
/// Returns false when cancelled.
async fn wait_for(rt: &NodeRuntime, sched: &Schedule, key: &str, cancel: &CancellationToken) -> bool {
    loop {
        let now = Utc::now();
        let next = sched.next_run(&rt.cfg.name, last_start(rt, key), now);
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            return true;
        }
        tracing::debug!(job = %key, next = %next.to_rfc3339(), "waiting for the next run");
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
        }
    }
}

fn record_start(rt: &NodeRuntime, key: &str) {
    if let Some(st) = &rt.state {
        if let Err(e) = st.run_started(key, now_ns()) {
            tracing::warn!(error = %e, "cannot record a run");
        }
    }
}

fn record_end(rt: &NodeRuntime, key: &str, r: Result<serde_json::Value, String>) {
    if let Some(st) = &rt.state {
        if let Err(e) = st.run_finished(key, now_ns(), r) {
            tracing::warn!(error = %e, "cannot record a run");
        }
    }
}

/// Run one scheduled backup (and its replication) now.
pub async fn run_scheduled_backup(rt: &Arc<NodeRuntime>, sched: &Schedule) -> Result<serde_json::Value, NodeError> {
    let cfg = &rt.cfg;
    let paths = if sched.cfg.paths.is_empty() { cfg.backup.paths.clone() } else { sched.cfg.paths.clone() };
    let opts = BackupOptions {
        paths,
        excludes: cfg.backup.exclude.clone(),
        one_file_system: cfg.backup.one_file_system,
        parent: ParentChoice::Auto,
        tags: vec![format!("schedule={}", sched.cfg.name)],
        ..Default::default()
    };
    let rep = rt.backup_and_replicate_as(opts, Arc::new(Progress::default()), &sched.cfg.name).await?;
    Ok(serde_json::json!({
        "snapshot": rep.backup.snapshot,
        "protected": rep.protected,
        "bytes_added": rep.backup.bytes_added,
        "seconds": rep.backup.seconds,
        "replicas": rep.replicas.iter().filter(|r| r.ok).map(|r| r.peer.clone()).collect::<Vec<_>>(),
        "warnings": rep.replication_warnings,
    }))
}

async fn schedule_loop(rt: Arc<NodeRuntime>, sched: Schedule, cancel: CancellationToken) {
    let key = format!("backup/{}", sched.cfg.name);
    if let Some(rpo) = sched.cfg.rpo_secs {
        rt.metrics.rpo_target.get_or_create(&crate::metrics::label("schedule", &sched.cfg.name)).set(rpo as f64);
    }
    while wait_for(&rt, &sched, &key, &cancel).await {
        tracing::info!(schedule = %sched.cfg.name, "scheduled backup starting");
        record_start(&rt, &key);
        let r = run_scheduled_backup(&rt, &sched).await;
        match &r {
            Ok(v) if v["protected"] == serde_json::Value::Bool(true) => {
                tracing::info!(schedule = %sched.cfg.name, snapshot = %v["snapshot"], "scheduled backup done")
            }
            Ok(v) => {
                tracing::warn!(schedule = %sched.cfg.name, snapshot = %v["snapshot"], "scheduled backup saved but not fully replicated")
            }
            Err(e) => tracing::error!(schedule = %sched.cfg.name, error = %e, "scheduled backup failed"),
        }
        // an unprotected snapshot is a failed run for the RPO: it would be
        // lost with this server
        let r = match r {
            Ok(v) if v["protected"] != serde_json::Value::Bool(true) => Err(format!(
                "snapshot {} saved on this server only partly replicated (replicas: {}; {}): not protected, so not counted towards the RPO",
                v["snapshot"].as_str().unwrap_or("?"),
                v["replicas"],
                v["warnings"]
            )),
            r => r.map_err(|e| e.to_string()),
        };
        record_end(&rt, &key, r);
    }
}

async fn sync_loop(rt: Arc<NodeRuntime>, cancel: CancellationToken) {
    let every = rt.cfg.sync.interval_secs;
    if !rt.cfg.sync.at_start {
        if every == 0 {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
    }
    loop {
        record_start(&rt, "sync");
        let r = super::maintenance::sync_now(&rt).await;
        if !r.repaired.is_empty() || !r.failed.is_empty() {
            tracing::info!(
                repaired = r.repaired.len(),
                failed = r.failed.len(),
                under_replicated = r.under_replicated,
                "mesh sync done"
            );
        }
        let v = serde_json::to_value(&r).expect("serializes");
        record_end(
            &rt,
            "sync",
            if r.failed.is_empty() { Ok(v) } else { Err(format!("{} repairs failed", r.failed.len())) },
        );
        if every == 0 {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
    }
}

/// Retention on every store, then garbage collection.
pub async fn maintenance(rt: &Arc<NodeRuntime>) -> Result<serde_json::Value, String> {
    let forget = if rt.cfg.retention.has_rules() {
        // (not while `omesh forget` or another maintenance runs; gc_all
        // takes the lock itself)
        let _one = rt.maintenance_lock.lock().await;
        Some(super::maintenance::forget(rt, None, vec![], false).await.map_err(|e| e.to_string())?)
    } else {
        None
    };
    let gc = super::maintenance::gc_all(rt).await;
    let forget_errors: Vec<String> =
        forget.as_ref().map(|f| f.errors.iter().map(|e| format!("retention: {e}")).collect()).unwrap_or_default();
    for e in &forget_errors {
        tracing::error!(error = %e, "retention could not forget a snapshot");
    }
    let errors: Vec<String> = forget_errors.into_iter().chain(gc.errors.iter().cloned()).collect();
    let v = serde_json::json!({
        "forgotten": forget.as_ref().map(|f| f.items.iter().filter(|i| i.removed).count()).unwrap_or(0),
        "swept": gc.stores.iter().map(|s| s.swept).sum::<u64>(),
        "freed_bytes": gc.stores.iter().map(|s| s.bytes_before.saturating_sub(s.bytes_after)).sum::<u64>(),
        "errors": errors,
    });
    if errors.is_empty() { Ok(v) } else { Err(errors.join("; ")) }
}

async fn maintenance_loop(rt: Arc<NodeRuntime>, sched: Schedule, cancel: CancellationToken) {
    while wait_for(&rt, &sched, "maintenance", &cancel).await {
        record_start(&rt, "maintenance");
        let r = maintenance(&rt).await;
        if let Err(e) = &r {
            tracing::error!(error = %e, "maintenance failed");
        }
        record_end(&rt, "maintenance", r);
    }
}

async fn scrub_loop(rt: Arc<NodeRuntime>, cancel: CancellationToken) {
    let rate = omesh_core::policy::bandwidth::parse_rate(&rt.cfg.scrub.rate).unwrap_or(Some(16 << 20));
    let every = Duration::from_secs(rt.cfg.scrub.every_secs.max(60));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    // the first pass of a new node starts once it has settled
    let first = Utc::now() + chrono::Duration::from_std(every.min(Duration::from_secs(3600))).expect("small");
    loop {
        // at most one full pass per `every`
        let due = last_start(&rt, "scrub")
            .map(|t| t + chrono::Duration::from_std(every).unwrap_or(chrono::Duration::days(7)))
            .unwrap_or(first);
        let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => continue,
            }
        }
        record_start(&rt, "scrub");
        let r = super::maintenance::scrub_all(&rt, rate, stop.clone()).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let v = serde_json::to_value(&r).expect("serializes");
        record_end(
            &rt,
            "scrub",
            if r.unrepaired.is_empty() && r.errors.is_empty() {
                Ok(v)
            } else {
                Err(format!("{} damaged objects could not be repaired; {} errors", r.unrepaired.len(), r.errors.len()))
            },
        );
    }
}

/// Start every timer of the daemon (and the metrics endpoint).
pub async fn spawn(
    rt: &Arc<NodeRuntime>,
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
) -> Result<(), NodeError> {
    for sc in &rt.cfg.schedules {
        let sched = Schedule::new(sc.clone()).map_err(NodeError::Other)?;
        tracing::info!(schedule = %sc.name, when = %sched.describe(), "backup schedule active");
        tasks.spawn(schedule_loop(rt.clone(), sched, cancel.clone()));
    }
    tasks.spawn(sync_loop(rt.clone(), cancel.clone()));
    if let Some(m) = rt.cfg.maintenance.schedule().map_err(NodeError::Other)? {
        tasks.spawn(maintenance_loop(rt.clone(), m, cancel.clone()));
    }
    if rt.cfg.scrub.enabled {
        tasks.spawn(scrub_loop(rt.clone(), cancel.clone()));
    }
    if let Some(listen) = &rt.cfg.metrics.listen {
        let addr = omesh_net::mesh::client::resolve(listen)
            .await
            .map_err(|e| NodeError::Other(format!("{}: [metrics] listen = {listen:?}: {e}", rt.cfg.path.display())))?
            [0];
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| NodeError::Other(format!("{}: [metrics] listen = {listen:?}: {e}", rt.cfg.path.display())))?;
        tracing::info!(%addr, "metrics endpoint listening");
        tasks.spawn(crate::metrics::serve(l, rt.metrics.clone(), rt.inbound_check.clone(), cancel.clone()));
    }
    Ok(())
}
