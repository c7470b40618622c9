//! The daemon's timers: scheduled backups, mesh sync, maintenance
//! (retention, then garbage collection), scrub passes, and the metrics
//! endpoint. Every decision about *when* is made by the plain functions in
//! `omesh_core::policy::schedule`; this module only sleeps until then, runs
//! the job and records it in the node state (so a run missed while the node
//! was down is made up at start, and `omesh status` can report it). Every
//! loop is a task in the daemon's `JoinSet` and ends on its cancellation
//! token.

use super::maintenance;
use crate::error::NodeError;
use crate::runtime::NodeRuntime;
use omesh_core::backup::{BackupOptions, ParentChoice, Progress};
use omesh_core::policy::schedule::Schedule;
use omesh_core::time::{self, Timestamp};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Longest single sleep: wall-clock jumps (NTP, suspend) are noticed
/// within this.
const MAX_SLEEP: Duration = Duration::from_secs(60);

fn now_ns() -> i64 {
    time::now_ns()
}

/// How long from now until `t` (zero when it has passed).
fn until(t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(time::now())).unwrap_or(Duration::ZERO)
}

/// The last start of job `key` (from the state database, off the async
/// workers).
async fn last_start(rt: &NodeRuntime, key: &str) -> Option<Timestamp> {
    let st = rt.state.clone()?;
    let key = key.to_string();
    let r = tokio::task::spawn_blocking(move || st.runs().ok()?.remove(&key)).await.ok()??;
    (r.last_start_ns > 0).then(|| time::from_ns(r.last_start_ns))
}

/// Sleep until `sched`'s next run (re-evaluated at least every minute).
/// Returns false when cancelled.
async fn wait_for(rt: &NodeRuntime, sched: &Schedule, key: &str, cancel: &CancellationToken) -> bool {
    loop {
        let next = sched.next_run(&rt.cfg.name, last_start(rt, key).await, time::now());
        let wait = until(next);
        if wait.is_zero() {
            return true;
        }
        tracing::debug!(job = %key, next = %time::rfc3339(next), "waiting for the next run");
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
        }
    }
}

async fn record_start(rt: &NodeRuntime, key: &str) {
    let Some(st) = rt.state.clone() else { return };
    let key = key.to_string();
    let r = tokio::task::spawn_blocking(move || st.run_started(&key, now_ns())).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(error = %e, "cannot record a run");
    }
}

/// Record the end of a run: its summary (stored as JSON in the state
/// database, shown by `omesh status`) or why it failed.
async fn record_end<T: Serialize>(rt: &NodeRuntime, key: &str, r: Result<T, String>) {
    // (a scheduled backup's success is its protected snapshot, counted
    // where the backup runs)
    let job = key.split('/').next().unwrap_or(key);
    if r.is_ok() && job != "backup" {
        let now = omesh_core::time::now().as_second() as f64;
        rt.metrics.last_success.get_or_create(&crate::metrics::label("job", job)).set(now);
    }
    let Some(st) = rt.state.clone() else { return };
    let key = key.to_string();
    let r = r.map(|v| serde_json::to_value(v).expect("job summaries serialize"));
    let r = tokio::task::spawn_blocking(move || st.run_finished(&key, now_ns(), r)).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(error = %e, "cannot record a run");
    }
}

/// What a scheduled backup did.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduledBackup {
    /// The snapshot.
    #[serde(with = "omesh_proto::id::hex")]
    pub snapshot: omesh_proto::ObjectId,
    /// On `factor` replicas.
    pub protected: bool,
    /// Bytes added locally.
    pub bytes_added: u64,
    /// Seconds.
    pub seconds: f64,
    /// Targets that acknowledged it.
    pub replicas: Vec<String>,
    /// Replication problems.
    pub warnings: Vec<String>,
}

/// Run one scheduled backup (and its replication) now.
pub async fn run_scheduled_backup(rt: &Arc<NodeRuntime>, sched: &Schedule) -> Result<ScheduledBackup, NodeError> {
    let cfg = &rt.cfg;
    let paths = if sched.cfg.paths.is_empty() { cfg.backup.paths.clone() } else { sched.cfg.paths.clone() };
    let opts = BackupOptions {
        paths,
        excludes: cfg.backup.exclude.clone(),
        exclude_if_present: cfg.backup.exclude_if_present.clone(),
        exclude_caches: cfg.backup.exclude_caches,
        hooks: cfg.hooks.for_backup(sched.cfg.pre.as_ref(), sched.cfg.post.as_ref()),
        one_file_system: cfg.backup.one_file_system,
        parent: ParentChoice::Auto,
        tags: vec![format!("schedule={}", sched.cfg.name)],
        ..Default::default()
    };
    let rep = rt.backup_and_replicate_as(opts, Arc::new(Progress::default()), &sched.cfg.name).await?;
    Ok(ScheduledBackup {
        snapshot: rep.backup.snapshot,
        protected: rep.protected,
        bytes_added: rep.backup.bytes_added,
        seconds: rep.backup.seconds,
        replicas: rep.replicas.iter().filter(|r| r.ok).map(|r| r.peer.clone()).collect(),
        warnings: rep.replication_warnings,
    })
}

async fn schedule_loop(rt: Arc<NodeRuntime>, sched: Schedule, cancel: CancellationToken) {
    let key = format!("backup/{}", sched.cfg.name);
    if let Some(rpo) = sched.cfg.rpo_secs {
        rt.metrics.rpo_target.get_or_create(&crate::metrics::label("schedule", &sched.cfg.name)).set(rpo as f64);
    }
    while wait_for(&rt, &sched, &key, &cancel).await {
        tracing::info!(schedule = %sched.cfg.name, "scheduled backup starting");
        record_start(&rt, &key).await;
        let r = run_scheduled_backup(&rt, &sched).await;
        match &r {
            Ok(v) if v.protected => {
                tracing::info!(schedule = %sched.cfg.name, snapshot = %v.snapshot, "scheduled backup done")
            }
            Ok(v) => {
                tracing::warn!(schedule = %sched.cfg.name, snapshot = %v.snapshot, "scheduled backup saved but not fully replicated")
            }
            Err(e) => tracing::error!(schedule = %sched.cfg.name, error = %e, "scheduled backup failed"),
        }
        // an unprotected snapshot is a failed run for the RPO: it would be
        // lost with this server
        let r = match r {
            Ok(v) if !v.protected => Err(format!(
                "snapshot {} saved on this server only partly replicated (replicas: {:?}; {:?}): not protected, so not counted towards the RPO",
                v.snapshot, v.replicas, v.warnings
            )),
            r => r.map_err(|e| e.to_string()),
        };
        record_end(&rt, &key, r).await;
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
        record_start(&rt, "sync").await;
        let r = maintenance::sync_now(&rt).await;
        if !r.repaired.is_empty() || !r.failed.is_empty() {
            tracing::info!(
                repaired = r.repaired.len(),
                failed = r.failed.len(),
                under_replicated = r.under_replicated,
                "mesh sync done"
            );
        }
        let failed = r.failed.len();
        record_end(&rt, "sync", if failed == 0 { Ok(r) } else { Err(format!("{failed} repairs failed")) }).await;
        if every == 0 {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
    }
}

/// What a maintenance run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MaintenanceRun {
    /// Snapshots forgotten by retention.
    pub forgotten: usize,
    /// Objects swept.
    pub swept: u64,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Problems.
    pub errors: Vec<String>,
}

/// Retention on every store, then garbage collection.
pub async fn maintenance(rt: &Arc<NodeRuntime>) -> Result<MaintenanceRun, String> {
    let forget = if rt.cfg.retention.has_rules() {
        Some(maintenance::forget(rt, None, vec![], false, Default::default()).await.map_err(|e| e.to_string())?)
    } else {
        None
    };
    let gc = maintenance::gc_all(rt).await;
    let forget_errors: Vec<String> =
        forget.as_ref().map(|f| f.errors.iter().map(|e| format!("retention: {e}")).collect()).unwrap_or_default();
    for e in &forget_errors {
        tracing::error!(error = %e, "retention could not forget a snapshot");
    }
    let errors: Vec<String> = forget_errors.into_iter().chain(gc.errors.iter().cloned()).collect();
    let run = MaintenanceRun {
        forgotten: forget.as_ref().map(|f| f.items.iter().filter(|i| i.removed).count()).unwrap_or(0),
        swept: gc.stores.iter().map(|s| s.swept).sum(),
        freed_bytes: gc.stores.iter().map(|s| s.bytes_before.saturating_sub(s.bytes_after)).sum(),
        errors,
    };
    if run.errors.is_empty() { Ok(run) } else { Err(run.errors.join("; ")) }
}

async fn maintenance_loop(rt: Arc<NodeRuntime>, sched: Schedule, cancel: CancellationToken) {
    while wait_for(&rt, &sched, "maintenance", &cancel).await {
        record_start(&rt, "maintenance").await;
        let r = maintenance(&rt).await;
        if let Err(e) = &r {
            tracing::error!(error = %e, "maintenance failed");
        }
        record_end(&rt, "maintenance", r).await;
    }
}

async fn scrub_loop(rt: Arc<NodeRuntime>, cancel: CancellationToken) {
    let rate = rt.cfg.scrub.rate;
    let every = Duration::from_secs(rt.cfg.scrub.every_secs.max(60));
    // the scrub's worker threads poll this flag between pages
    let stop = Arc::new(AtomicBool::new(false));
    // the first pass of a new node starts once it has settled
    let settle = time::SignedDuration::try_from(every.min(Duration::from_secs(3600))).unwrap_or_default();
    let first = time::plus(time::now(), settle);
    loop {
        // at most one full pass per `every`
        let due = last_start(&rt, "scrub")
            .await
            .map(|t| time::plus(t, time::SignedDuration::try_from(every).unwrap_or(time::SignedDuration::MAX)))
            .unwrap_or(first);
        let wait = until(due);
        if !wait.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => continue,
            }
        }
        record_start(&rt, "scrub").await;
        let r = tokio::select! {
            r = maintenance::scrub_all(&rt, rate, stop.clone()) => r,
            _ = cancel.cancelled() => {
                // tell the pass to stop at its next page, and let it
                stop.store(true, Ordering::Relaxed);
                return;
            }
        };
        let (unrepaired, errors) = (r.unrepaired.len(), r.errors.len());
        record_end(
            &rt,
            "scrub",
            if unrepaired == 0 && errors == 0 {
                Ok(r)
            } else {
                Err(format!("{unrepaired} damaged objects could not be repaired; {errors} errors"))
            },
        )
        .await;
    }
}

/// Set the last-success gauges from the run history in the state database,
/// so a restarted daemon does not forget when its schedules last made a
/// protected snapshot (an RPO alert must not reset with the process).
async fn seed_last_success(rt: &NodeRuntime) {
    let Some(st) = rt.state.clone() else { return };
    let Ok(Ok(runs)) = tokio::task::spawn_blocking(move || st.runs()).await else { return };
    let secs = |ns: i64| (ns / 1_000_000_000) as f64;
    let mut newest_backup = 0;
    for sched in &rt.cfg.schedules {
        let name = &sched.cfg.name;
        if let Some(r) = runs.get(&format!("backup/{name}")).filter(|r| r.last_ok_ns > 0) {
            rt.metrics
                .backup_last_success
                .get_or_create(&crate::metrics::label("schedule", name))
                .set(secs(r.last_ok_ns));
            newest_backup = newest_backup.max(r.last_ok_ns);
        }
    }
    if newest_backup > 0 {
        rt.metrics.last_success.get_or_create(&crate::metrics::label("job", "backup")).set(secs(newest_backup));
    }
    for job in ["sync", "maintenance", "scrub"] {
        if let Some(r) = runs.get(job).filter(|r| r.last_ok_ns > 0) {
            rt.metrics.last_success.get_or_create(&crate::metrics::label("job", job)).set(secs(r.last_ok_ns));
        }
    }
}

/// Start every timer of the daemon (and the metrics endpoint) in `tasks`.
pub async fn spawn(
    rt: &Arc<NodeRuntime>,
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
) -> Result<(), NodeError> {
    seed_last_success(rt).await;
    for sched in &rt.cfg.schedules {
        tracing::info!(schedule = %sched.cfg.name, when = %sched.describe(), "backup schedule active");
        tasks.spawn(schedule_loop(rt.clone(), sched.clone(), cancel.clone()));
    }
    tasks.spawn(sync_loop(rt.clone(), cancel.clone()));
    if rt.cfg.notify.is_active() {
        tasks.spawn(super::notify::run(rt.clone(), cancel.clone()));
    }
    if let Some(m) = &rt.cfg.maintenance.schedule {
        tasks.spawn(maintenance_loop(rt.clone(), m.clone(), cancel.clone()));
    }
    if rt.cfg.scrub.enabled {
        tasks.spawn(scrub_loop(rt.clone(), cancel.clone()));
    }
    if let Some(listen) = &rt.cfg.metrics.listen {
        let err = |resolve: bool| {
            let (config, value) = (rt.cfg.path.clone(), listen.clone());
            move |source| NodeError::Listen { config, setting: "[metrics] listen", value, resolve, source }
        };
        let addr = omesh_net::mesh::client::resolve(listen).await.map_err(err(true))?[0];
        let l = tokio::net::TcpListener::bind(addr).await.map_err(err(false))?;
        tracing::info!(%addr, "metrics endpoint listening");
        // the gauges read at scrape time: what each store holds, and the
        // residency policy's refusals
        let r = rt.clone();
        let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let m = &r.metrics;
            for u in crate::views::status::local_usage(&r) {
                let l = crate::metrics::label("source", &u.source);
                m.store_bytes.get_or_create(&l).set(u.bytes as i64);
                m.store_quota.get_or_create(&l).set(u.quota_bytes as i64);
            }
            let refused = r.residency.refusals.load(std::sync::atomic::Ordering::Relaxed);
            m.residency_refusals.inc_by(refused.saturating_sub(m.residency_refusals.get()));
        });
        tasks.spawn(crate::metrics::serve(l, rt.metrics.clone(), refresh, rt.inbound_check.clone(), cancel.clone()));
    }
    Ok(())
}
