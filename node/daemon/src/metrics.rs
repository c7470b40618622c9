//! Prometheus metrics: counters and durations for backup, replication,
//! restore, scrub, garbage collection and sync, served as OpenMetrics text
//! on `[metrics] listen` (`GET /metrics`).
//!
//! The endpoint is plain HTTP on an address the operator chooses (a
//! management network or loopback); it serves numbers and names only,
//! never data or keys, and the residency policy's inbound check applies
//! to it like to every other connection, except a scraper on this host
//! (a loopback client address).

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// A label set.
pub type Labels = Vec<(String, String)>;

/// One label.
pub fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// Two labels.
pub fn labels2(k1: &str, v1: &str, k2: &str, v2: &str) -> Labels {
    vec![(k1.to_string(), v1.to_string()), (k2.to_string(), v2.to_string())]
}

fn seconds() -> Histogram {
    // 0.25 s .. ~2.3 h
    Histogram::new(exponential_buckets(0.25, 2.0, 16))
}

/// Everything the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Backup runs by schedule and result (ok, unprotected, failed).
    pub backups: Family<Labels, Counter>,
    /// Backup duration (including replication).
    pub backup_seconds: Histogram,
    /// Bytes added to the local store by backups.
    pub backup_bytes_added: Counter,
    /// Unix time of the last successful backup, per schedule.
    pub backup_last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Configured RPO per schedule (seconds).
    pub rpo_target: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Replica pushes by peer and result.
    pub replications: Family<Labels, Counter>,
    /// Push duration.
    pub replication_seconds: Histogram,
    /// Restores reported by `omesh restore`, by result.
    pub restores: Family<Labels, Counter>,
    /// Restore duration.
    pub restore_seconds: Histogram,
    /// Bytes restored.
    pub restore_bytes: Counter,
    /// Objects re-hashed by scrub.
    pub scrub_objects: Counter,
    /// Bytes re-hashed by scrub.
    pub scrub_bytes: Counter,
    /// Damaged objects found.
    pub scrub_damaged: Counter,
    /// Damaged objects replaced from a replica.
    pub scrub_repaired: Counter,
    /// Duration of complete scrub passes.
    pub scrub_seconds: Histogram,
    /// Garbage collection runs by result.
    pub gc_runs: Family<Labels, Counter>,
    /// Objects swept.
    pub gc_swept: Counter,
    /// Bytes freed (store size before minus after).
    pub gc_bytes_freed: Counter,
    /// Duration.
    pub gc_seconds: Histogram,
    /// Sync runs.
    pub sync_runs: Counter,
    /// Replicas repaired by this node.
    pub sync_repaired: Counter,
    /// Bytes pulled for repairs.
    pub sync_bytes: Counter,
    /// Under-replicated snapshots seen by the last sync.
    pub sync_under_replicated: Gauge,
    /// Duration.
    pub sync_seconds: Histogram,
    /// Snapshots forgotten by retention.
    pub forgotten: Counter,
    /// 1 when the CRL in force is past its next update.
    pub crl_stale: Gauge,
    /// 1 for a peer whose latest holding check failed.
    pub holding_check_failed: Family<Labels, Gauge>,
    /// The CRL's next update (seconds since the epoch; 0 without a CRL).
    pub crl_next_update: Gauge,
    /// When this node's certificate expires (Unix seconds).
    pub cert_expiry: Gauge,
    /// 1 when it expires in fewer than 30 days.
    pub cert_expiring: Gauge,
    /// 1 when a peer answered the last probe.
    pub peer_up: Family<Labels, Gauge>,
    /// Probes of each peer that failed.
    pub peer_probe_failures: Family<Labels, Counter>,
    /// Notifications by result (sent, retried, failed, suppressed).
    pub notifications: Family<Labels, Counter>,
    /// Round-trip time to a peer at its last probe, seconds.
    pub peer_rtt: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Bytes stored per source.
    pub store_bytes: Family<Labels, Gauge>,
    /// Quota per source (0 = none).
    pub store_quota: Family<Labels, Gauge>,
    /// Residency refusals (from the policy's counter).
    pub residency_refusals: Counter,
    /// Last success per job, seconds since the epoch.
    pub last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    process_rss: Gauge,
    process_cpu: Gauge<f64, AtomicU64>,
    process_fds: Gauge,
    process_start: Gauge<f64, AtomicU64>,
    process_registry: Registry,
}

impl Metrics {
    /// Create every label set an alert may ask for, at zero, so that the
    /// first failure is an increase (`increase(x{result!="ok"}[1d])` sees
    /// nothing of a series that appears with its first increment).
    pub fn init_labels(&self, peers: &[String], buckets: &[String], schedules: &[String]) {
        for t in peers.iter().chain(buckets) {
            for result in ["ok", "failed", "unreachable"] {
                let _ = self.replications.get_or_create(&labels2("peer", t, "result", result));
            }
        }
        // peers are probed (buckets are not): up is 0 until the first probe
        // answers, and "down" is up == 0 with a failed probe
        for t in peers {
            let _ = self.peer_up.get_or_create(&label("peer", t));
            let _ = self.peer_probe_failures.get_or_create(&label("peer", t));
            // 0 until a check fails: the alert rule's series exists from the start
            let _ = self.holding_check_failed.get_or_create(&label("peer", t));
        }
        for s in schedules.iter().map(String::as_str).chain(["manual"]) {
            for result in ["ok", "unprotected", "failed"] {
                let _ = self.backups.get_or_create(&labels2("schedule", s, "result", result));
            }
        }
        for result in ["ok", "failed"] {
            let _ = self.gc_runs.get_or_create(&label("result", result));
        }
        for job in ["backup", "sync", "maintenance", "scrub"] {
            let _ = self.last_success.get_or_create(&label("job", job));
        }
        for result in ["sent", "retried", "failed", "suppressed"] {
            let _ = self.notifications.get_or_create(&label("result", result));
        }
    }

    /// Create and register everything, including the per-peer byte
    /// counters of `counters`.
    pub fn new(counters: &omesh_net::mesh::Counters) -> Metrics {
        let mut r = Registry::with_prefix("omesh");
        let m = Metrics {
            backups: Family::default(),
            backup_seconds: seconds(),
            backup_bytes_added: Counter::default(),
            backup_last_success: Family::default(),
            rpo_target: Family::default(),
            replications: Family::default(),
            replication_seconds: seconds(),
            restores: Family::default(),
            restore_seconds: seconds(),
            restore_bytes: Counter::default(),
            scrub_objects: Counter::default(),
            scrub_bytes: Counter::default(),
            scrub_damaged: Counter::default(),
            scrub_repaired: Counter::default(),
            scrub_seconds: seconds(),
            gc_runs: Family::default(),
            gc_swept: Counter::default(),
            gc_bytes_freed: Counter::default(),
            gc_seconds: seconds(),
            sync_runs: Counter::default(),
            sync_repaired: Counter::default(),
            sync_bytes: Counter::default(),
            sync_under_replicated: Gauge::default(),
            sync_seconds: seconds(),
            forgotten: Counter::default(),
            crl_stale: Gauge::default(),
            holding_check_failed: Family::default(),
            crl_next_update: Gauge::default(),
            cert_expiry: Gauge::default(),
            cert_expiring: Gauge::default(),
            peer_probe_failures: Family::default(),
            notifications: Family::default(),
            peer_up: Family::default(),
            peer_rtt: Family::default(),
            store_bytes: Family::default(),
            store_quota: Family::default(),
            residency_refusals: Counter::default(),
            last_success: Family::default(),
            process_rss: Gauge::default(),
            process_cpu: Gauge::default(),
            process_fds: Gauge::default(),
            process_start: Gauge::default(),
            registry: Registry::default(),
            process_registry: Registry::default(),
        };
        r.register("backups", "Backup runs by schedule and result", m.backups.clone());
        r.register("backup_duration_seconds", "Backup duration including replication", m.backup_seconds.clone());
        r.register("backup_added_bytes", "Bytes added to the local store by backups", m.backup_bytes_added.clone());
        r.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the last backup per schedule whose snapshot reached factor replicas",
            m.backup_last_success.clone(),
        );
        r.register("rpo_target_seconds", "Configured recovery point objective per schedule", m.rpo_target.clone());
        r.register("replications", "Replica pushes by peer and result", m.replications.clone());
        r.register("replication_duration_seconds", "Duration of one replica push", m.replication_seconds.clone());
        r.register("restores", "Restores reported by omesh restore, by result", m.restores.clone());
        r.register("restore_duration_seconds", "Restore duration", m.restore_seconds.clone());
        r.register("restore_bytes", "Bytes restored", m.restore_bytes.clone());
        r.register("scrub_objects", "Objects re-read and re-hashed by scrub", m.scrub_objects.clone());
        r.register("scrub_bytes", "Bytes re-read by scrub", m.scrub_bytes.clone());
        r.register("scrub_damaged_objects", "Damaged objects found by scrub", m.scrub_damaged.clone());
        r.register("scrub_repaired_objects", "Damaged objects replaced from a replica", m.scrub_repaired.clone());
        r.register("scrub_pass_duration_seconds", "Duration of scrub passes", m.scrub_seconds.clone());
        r.register("gc_runs", "Garbage collection runs by result", m.gc_runs.clone());
        r.register("gc_swept_objects", "Objects removed by garbage collection", m.gc_swept.clone());
        r.register("gc_freed_bytes", "Store bytes freed by garbage collection", m.gc_bytes_freed.clone());
        r.register("gc_duration_seconds", "Garbage collection duration", m.gc_seconds.clone());
        r.register("sync_runs", "Mesh sync runs", m.sync_runs.clone());
        r.register("sync_repaired_replicas", "Replicas repaired by this node", m.sync_repaired.clone());
        r.register("sync_pulled_bytes", "Bytes pulled from peers for repairs", m.sync_bytes.clone());
        r.register(
            "sync_under_replicated_snapshots",
            "Under-replicated snapshots seen by the last sync",
            m.sync_under_replicated.clone(),
        );
        r.register("sync_duration_seconds", "Mesh sync duration", m.sync_seconds.clone());
        r.register("forgotten_snapshots", "Snapshots forgotten by retention", m.forgotten.clone());
        r.register(
            "peer_holding_check_failed",
            "1 while a peer's latest proof-of-holding check failed (it does not count as a replica)",
            m.holding_check_failed.clone(),
        );
        r.register("crl_stale", "1 when the certificate revocation list is past its next update", m.crl_stale.clone());
        r.register(
            "crl_next_update_timestamp_seconds",
            "Next update of the certificate revocation list in force",
            m.crl_next_update.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When this node's TLS certificate expires",
            m.cert_expiry.clone(),
        );
        r.register(
            "certificate_expiring",
            "1 when this node's TLS certificate expires in fewer than 30 days (renew it: omesh cert request)",
            m.cert_expiring.clone(),
        );
        r.register("peer_up", "1 when the peer answered this node's last probe, 0 when it did not", m.peer_up.clone());
        r.register("peer_probe_failures", "Probes of the peer that got no answer", m.peer_probe_failures.clone());
        r.register(
            "notifications",
            "Notifications ([notify]) by result: sent, retried, failed, suppressed (rate limit)",
            m.notifications.clone(),
        );
        r.register("peer_rtt_seconds", "Round-trip time to the peer at its last probe", m.peer_rtt.clone());
        r.register(
            "store_bytes",
            "Bytes stored on this node per source (its own store and replicas)",
            m.store_bytes.clone(),
        );
        r.register("store_quota_bytes", "Quota per source on this node (0 = none)", m.store_quota.clone());
        r.register(
            "residency_refusals",
            "Connections and destinations refused by the residency boundary",
            m.residency_refusals.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "When each job (backup with its replicas, sync, maintenance, scrub) last succeeded; 0 = never",
            m.last_success.clone(),
        );
        let build: Family<Labels, Gauge> = Family::default();
        build.get_or_create(&label("version", env!("CARGO_PKG_VERSION"))).set(1);
        r.register("build_info", "The omesh version running (value 1)", build);
        counters.register(&mut r);
        // process metrics under their conventional names (no omesh_ prefix)
        let mut root = Registry::default();
        root.register("process_resident_memory_bytes", "Resident memory", m.process_rss.clone());
        root.register("process_cpu_seconds", "User and system CPU time", m.process_cpu.clone());
        root.register("process_open_fds", "Open file descriptors", m.process_fds.clone());
        root.register("process_start_time_seconds", "Start time since the epoch", m.process_start.clone());
        Metrics { registry: r, process_registry: root, ..m }
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        self.process_now();
        let mut s = String::new();
        let _ = encode_registry(&mut s, &self.registry);
        let _ = encode_registry(&mut s, &self.process_registry);
        let _ = encode_eof(&mut s);
        s
    }

    /// Read this process's memory, CPU time, descriptors and start time.
    fn process_now(&self) {
        let tick = rustix::param::clock_ticks_per_second() as f64;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(rest) = stat.rsplit_once(") ").map(|x| x.1)
        {
            // fields after the command: state is field 3; utime 14, stime
            // 15, starttime 22, rss 24 (in pages)
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            self.process_cpu.set((num(14) + num(15)) / tick);
            self.process_rss.set((num(24) * rustix::param::page_size() as f64) as i64);
            // the start time never changes: read the boot time once
            if self.process_start.get() == 0.0
                && let Some(boot) = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                    s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))
                })
            {
                self.process_start.set(boot + num(22) / tick);
            }
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            self.process_fds.set(d.count() as i64);
        }
    }
}

/// Most scrapes served at once (a scraper opens one or two connections).
const MAX_METRICS_CONNECTIONS: usize = 16;

/// Serve `GET /metrics` on `listener` until cancelled. `inbound` is the
/// residency policy's check on the client's address. Connections are
/// tasks of this worker (at most [`MAX_METRICS_CONNECTIONS`] at once),
/// aborted and joined when it stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Arc<dyn Fn() + Send + Sync>,
    inbound: Option<omesh_net::residency::InboundCheck>,
    cancel: tokio_util::sync::CancellationToken,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint accept failed");
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        // a scraper on this host (loopback) never crosses a network
        if let Some(check) = inbound.as_ref().filter(|_| !peer.ip().to_canonical().is_loopback())
            && let Err(why) = check(peer)
        {
            tracing::warn!(%peer, reason = %why, "refused a metrics connection");
            continue;
        }
        if conns.len() >= MAX_METRICS_CONNECTIONS {
            tracing::warn!(%peer, "too many metrics connections at once; refused");
            continue;
        }
        let (m, refresh) = (metrics.clone(), refresh.clone());
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (m, refresh) = (m.clone(), refresh.clone());
                async move {
                    let resp = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                        // the gauges read at scrape time, off the async workers
                        let text = tokio::task::spawn_blocking(move || {
                            refresh();
                            m.render()
                        })
                        .await
                        .unwrap_or_default();
                        hyper::Response::builder()
                            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                            .body(Full::new(Bytes::from(text)))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"omesh serves only GET /metrics here\n")))
                    };
                    Ok::<_, std::convert::Infallible>(resp.expect("valid response"))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}
