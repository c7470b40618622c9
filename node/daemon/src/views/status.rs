//! `omesh status`: this node's peers and buckets, what it stores, whether
//! its snapshots are protected and its RPO met, and its jobs.

use super::snapshots::{ReplicaView, SnapshotView, rfc3339, snapshot_views};
use crate::census::{Census, CensusOptions, CensusScope, Local, Targets};
use crate::error::NodeError;
use crate::replica::HolderKind;
use crate::runtime::NodeRuntime;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

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
    /// Records it sent since the daemon started that were refused as
    /// forged or altered (a bad or missing signature, another source's
    /// name, a record that is not the one its parent's link names).
    #[serde(default)]
    pub forged_records: u64,
    /// Its latest proof-of-holding check, if one was made: while it has
    /// failed, the peer does not count as a replica.
    #[serde(default)]
    pub holding_check: Option<HoldingCheckView>,
}

/// A peer's latest proof-of-holding check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HoldingCheckView {
    /// When (RFC 3339).
    pub time: String,
    /// Snapshot checked.
    pub snapshot: String,
    /// Records fetched and verified.
    pub records: u64,
    /// Whether it passed.
    pub ok: bool,
    /// What was wrong.
    pub detail: String,
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
    /// Our snapshots this node still holds itself.
    pub snapshots: usize,
    /// Our snapshots found only on peers or buckets (made before this node
    /// lost them, or forgotten here): not counted in `snapshots`.
    #[serde(default)]
    pub snapshots_only_elsewhere: usize,
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
    /// The certificate revocation list in force.
    #[serde(default)]
    pub crl: Option<CrlView>,
    /// This node's certificate.
    #[serde(default)]
    pub certificate: Option<CertView>,
    /// Bandwidth limits in force now.
    #[serde(default)]
    pub bandwidth: BandwidthView,
    /// The last configuration reload (SIGHUP), if any since the start.
    #[serde(default)]
    pub reloaded: Option<crate::config::ReloadReport>,
}

/// Bandwidth limits in force now, in bytes per second (null: unlimited).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BandwidthView {
    /// The node's limit (`[bandwidth] limit` or a window's).
    pub limit: Option<u64>,
    /// Each configured peer's own limit.
    pub peers: Vec<PeerLimitView>,
}

/// One peer's bandwidth limit now.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerLimitView {
    /// Peer.
    pub peer: String,
    /// Its limit in bytes per second (null: unlimited).
    pub limit: Option<u64>,
}

/// This node's own certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertView {
    /// Its file ([tls] cert).
    pub path: String,
    /// When it expires (RFC 3339).
    pub not_after: String,
    /// Whole days until then (negative: expired).
    pub days_left: i64,
    /// Fewer than 30 days left: renew it (`omesh cert request`, `ca sign`, `cert install`).
    pub expiring: bool,
}

/// The CRL a node enforces.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CrlView {
    /// Its file.
    pub path: String,
    /// Its CRL number.
    pub number: Option<u64>,
    /// When its issuer promised the next one (RFC 3339).
    pub next_update: Option<String>,
    /// Past that time: re-sign it (`omesh ca crl`) and copy it here.
    pub stale: bool,
    /// Certificates it revokes.
    pub revoked: usize,
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
    let opts = CensusOptions {
        scope: CensusScope::Source(rt.cfg.name.clone()),
        targets: Targets::All,
        local: Local::Registry,
        records: true,
    };
    let census = Census::gather(rt, &opts).await;
    let (seen, runs, checks) = {
        let st = rt.state.clone();
        tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            Ok(match &st {
                Some(st) => (st.peers()?, st.runs()?, st.checks()?),
                None => (HashMap::new(), Default::default(), HashMap::new()),
            })
        })
        .await??
    };
    let me = rt.cfg.name.as_str();
    let usages = futures::future::join_all(census.probes.iter().map(|p| async move {
        match p.reachable() {
            Some((t, _)) => t.usage(me).await.ok(),
            None => None,
        }
    }))
    .await;
    let counters = rt.counters.to_json();
    let mut peers = Vec::new();
    let mut s3 = Vec::new();
    for (p, usage) in census.probes.iter().zip(usages) {
        let rtt_ms = p.reachable().map(|(_, d)| d.as_secs_f64() * 1000.0);
        match p.kind {
            HolderKind::S3 => s3.push(S3View {
                name: p.name.clone(),
                address: p.address.clone(),
                domain: p.domain.clone(),
                reachable: p.result.is_ok(),
                rtt_ms,
                error: p.result.as_ref().err().cloned(),
                holds_our_bytes: usage.map(|u| u.bytes),
                holds_our_snapshots: usage.map(|u| u.snapshots),
            }),
            _ => peers.push(PeerView {
                name: p.name.clone(),
                address: p.address.clone(),
                domain: p.domain.clone(),
                reachable: p.result.is_ok(),
                rtt_ms,
                last_contact: seen.get(&p.name).map(|s| rfc3339(s.last_contact_ns)),
                error: p.result.as_ref().err().cloned(),
                holds_our_bytes: usage.map(|u| u.bytes),
                holds_our_snapshots: usage.map(|u| u.snapshots),
                counters: counters.get(&p.name).cloned().unwrap_or(serde_json::json!({})),
                forged_records: counters.get(&p.name).and_then(|c| c["forged_records"].as_u64()).unwrap_or(0),
                holding_check: checks.get(&p.name).map(|c| HoldingCheckView {
                    time: rfc3339(c.time_ns),
                    snapshot: c.snapshot.clone(),
                    records: c.records,
                    ok: c.ok,
                    detail: c.detail.clone(),
                }),
            }),
        }
    }
    let stored_here = {
        let rt = rt.clone();
        tokio::task::spawn_blocking(move || local_usage(&rt)).await?
    };
    let snaps = snapshot_views(rt, me, &census).await?;
    let now = omesh_core::time::now();
    let ts = |ns: i64| (ns > 0).then(|| rfc3339(ns));
    let now_ns = omesh_core::time::ns(now);
    let age = |ns: i64| (ns > 0).then(|| ((now_ns - ns).max(0) / 1_000_000_000) as u64);
    let mut schedules = Vec::new();
    for sched in &rt.cfg.schedules {
        let sc = &sched.cfg;
        let r = runs.get(&format!("backup/{}", sc.name)).cloned().unwrap_or_default();
        let last = (r.last_start_ns > 0).then(|| omesh_core::time::from_ns(r.last_start_ns));
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
            next_run: rt.daemon.then(|| omesh_core::time::rfc3339(sched.next_run(&rt.cfg.name, last, now))),
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
        s.info.time.as_deref().and_then(omesh_core::time::parse_rfc3339).map(omesh_core::time::ns).unwrap_or(0)
    };
    // what survives losing this server: the newest snapshot with `factor`
    // replicas
    let protected_ns = snaps.iter().filter(|s| s.on_source && s.fully_replicated).map(start_ns).max();
    let last_protected_backup = protected_ns.map(rfc3339);
    let protection = snaps.iter().rfind(|s| s.on_source).map(|latest| {
        let achieved = protected_ns.and_then(age);
        let target = rt.cfg.schedules.iter().filter_map(|s| s.cfg.rpo_secs).min();
        let confirmed: Vec<&ReplicaView> =
            latest.replicas.iter().filter(|r| r.confirmed && r.failed_check.is_none()).collect();
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
        let (est, basis) = match (latest.info.bytes, total) {
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
            last_snapshot: Some(latest.info.id.clone()),
            last_backup: latest.info.time.clone(),
            last_protected_backup: last_protected_backup.clone(),
            achieved_rpo_secs: achieved,
            rpo_secs: target,
            rpo_met: target.map(|t| achieved.is_some_and(|a| a <= t)),
            replicas: latest.replica_count,
            replica_domains: domains.len(),
            factor: rt.cfg.replication.factor,
            bytes: latest.info.bytes,
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
        snapshots: snaps.iter().filter(|s| s.on_source).count(),
        snapshots_only_elsewhere: snaps.iter().filter(|s| !s.on_source).count(),
        not_fully_replicated: snaps
            .iter()
            .filter(|s| !s.fully_replicated && s.on_source)
            .map(|s| s.info.id.clone())
            .collect(),
        factor: rt.cfg.replication.factor,
        residency_refusals: rt.residency.refusals.load(std::sync::atomic::Ordering::Relaxed),
        protection,
        schedules,
        maintenance,
        crl: crl_view(rt),
        certificate: Some(cert_view(rt)),
        bandwidth: bandwidth_view(rt),
        reloaded: rt.reloaded.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    })
}

/// What each store on this node holds (its own and every replica store),
/// with the quota in force for it. Blocking: opens the stores. Shown by
/// `status` and exported as the `omesh_store_*` gauges.
pub fn local_usage(rt: &NodeRuntime) -> Vec<LocalUsage> {
    rt.stores
        .source_names()
        .into_iter()
        .filter_map(|n| {
            let s = rt.stores.get(&n, false).ok()??;
            Some(LocalUsage {
                bytes: s.store.bytes_stored().unwrap_or(0),
                snapshots: s.store.snapshot_ids().map(|v| v.len() as u64).unwrap_or(0),
                quota_bytes: rt.cfg.quota_for(&n),
                source: n,
            })
        })
        .collect()
}

fn bandwidth_view(rt: &NodeRuntime) -> BandwidthView {
    let l = &rt.limiter;
    let now = omesh_core::time::now();
    let peers = rt
        .cfg
        .peers
        .iter()
        .map(|p| PeerLimitView { peer: p.name.clone(), limit: l.rates_at(&p.name, now).1.bytes_per_sec() })
        .collect();
    BandwidthView { limit: l.rates_at("", now).0.bytes_per_sec(), peers }
}

fn cert_view(rt: &NodeRuntime) -> CertView {
    let na = rt.tls.not_after;
    let days_left = (na - omesh_core::time::now().as_second()).div_euclid(86400);
    let expiring = days_left < omesh_net::transport::tls::CERT_RENEW_DAYS;
    let path = rt.cfg.tls.cert.display().to_string();
    if expiring {
        tracing::warn!(certificate = %path, days_left, "this node's certificate expires soon; renew it: `omesh cert request`, `omesh ca sign`, `omesh cert install`");
    }
    CertView { path, not_after: omesh_core::time::rfc3339_ns(na.saturating_mul(1_000_000_000)), days_left, expiring }
}

fn crl_view(rt: &NodeRuntime) -> Option<CrlView> {
    let st = rt.tls.crl_status();
    let path = st.path.as_ref()?.display().to_string();
    let stale = st.is_stale(omesh_core::time::now_ns());
    if stale {
        tracing::warn!(crl = %path, "the certificate revocation list is past its next update; re-sign it with `omesh ca crl` and copy it here");
    }
    Some(CrlView {
        path,
        number: st.number,
        next_update: st.next_update_ns.map(omesh_core::time::rfc3339_ns),
        stale,
        revoked: st.revoked,
    })
}
