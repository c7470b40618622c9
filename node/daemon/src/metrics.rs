//! Prometheus metrics: counters and durations for backup, replication,
//! restore, scrub, garbage collection and sync, served as OpenMetrics text
//! on `[metrics] listen` (`GET /metrics`).
//!
//! The endpoint is plain HTTP on an address the operator chooses (a
//! management network or loopback); it serves numbers and names only,
//! never data or keys, and the residency policy's inbound check applies
//! to it like to every other connection, except a scraper on this host
//! (a loopback client address).

use prometheus_client::encoding::text::encode;
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
}

impl Metrics {
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
            registry: Registry::default(),
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
        counters.register(&mut r);
        Metrics { registry: r, ..m }
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
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
        let m = metrics.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let m = m.clone();
                async move {
                    let resp = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                        hyper::Response::builder()
                            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                            .body(Full::new(Bytes::from(m.render())))
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
