//! A running node: the daemon (`omesh node run`) and the same operations
//! run in-process by CLI commands when no daemon is running.
//!
//! [`NodeRuntime`] owns the configuration, TLS material, QUIC endpoint,
//! stores, state database and peer connections. The daemon adds the QUIC
//! server and the control socket; CLI commands talk to the daemon through
//! that socket when it runs, so the store only ever has one writer.

use crate::config::{NodeConfig, PeerConfig};
use crate::error::NodeError;
use crate::replica::{BucketTarget, HolderKind, PeerTarget, ReplicaReport, ReplicaTarget};
use crate::state::{PeerSeen, Placement, State};
use omesh_core::backup::{self, BackupOptions, BackupSummary, ParentChoice, Progress};
use omesh_core::policy::placement::{self, Candidate};
use omesh_net::mesh::client::{self, PeerConn};
use omesh_net::mesh::replicate::PushOptions;
use omesh_net::mesh::{Counters, Stores};
use omesh_net::transport::{self, TlsMaterial};
use omesh_proto::ObjectId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use omesh_net::residency::{InboundCheck, OutboundCheck};

/// Everything a node needs to act on the mesh.
pub struct NodeRuntime {
    /// Configuration.
    pub cfg: Arc<NodeConfig>,
    /// TLS material.
    pub tls: Arc<TlsMaterial>,
    /// QUIC endpoint (serving only in the daemon).
    pub endpoint: quinn::Endpoint,
    /// Stores.
    pub stores: Arc<Stores>,
    /// State database (absent in read-only CLI runs beside a daemon).
    pub state: Option<Arc<State>>,
    /// Byte counters.
    pub counters: Arc<Counters>,
    /// S3 targets.
    pub s3: Vec<Arc<omesh_s3::S3Target>>,
    /// Residency policy (refusal counters).
    pub residency: Arc<omesh_net::residency::Policy>,
    /// Start time.
    pub started: Instant,
    /// Whether this runtime is the daemon.
    pub daemon: bool,
    /// Outbound address policy.
    pub outbound_check: Option<OutboundCheck>,
    /// Inbound address policy.
    pub inbound_check: Option<InboundCheck>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set when the daemon stops: long blocking jobs end early.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Bandwidth limits (`[bandwidth]`; replaced by a reload).
    pub limiter: Arc<omesh_core::policy::bandwidth::Limiter>,
    /// When the configuration was last reloaded (SIGHUP), and what came of it.
    pub reloaded: std::sync::Mutex<Option<crate::config::ReloadReport>>,
    /// One retention + garbage collection at a time.
    pub maintenance_lock: tokio::sync::Mutex<()>,
    /// One mesh sync at a time.
    pub sync_lock: tokio::sync::Mutex<()>,
    /// One scrub at a time (the daemon's pass and `omesh scrub` would
    /// otherwise read, quarantine and rewrite the same packs together).
    pub scrub_lock: tokio::sync::Mutex<()>,
    conns: tokio::sync::Mutex<HashMap<String, PeerConn>>,
    down: std::sync::Mutex<HashMap<String, Down>>,
    backup_lock: tokio::sync::Mutex<()>,
}

/// Connecting to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Its address does not resolve.
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        /// host:port as configured
        address: String,
        /// cause
        source: std::io::Error,
    },
    /// The residency policy refuses one of its addresses.
    #[error("{0}")]
    Residency(String),
    /// TLS or QUIC.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// It did not answer a moment ago: not tried again before `retry_in`
    /// (unless it connects to this node first), so a dead peer costs every
    /// command its connect timeout once, not each time.
    #[error("{error} (at {since}; next attempt in {retry_in}s, or as soon as it connects to this node)")]
    Down {
        /// the last failure
        error: String,
        /// when it was first seen down (RFC 3339)
        since: String,
        /// seconds until the next attempt
        retry_in: u64,
    },
}

/// A peer that failed to connect: when, why, and when to try again.
#[derive(Clone, Debug)]
struct Down {
    first_ns: i64,
    last: Instant,
    until: Instant,
    failures: u32,
    error: String,
}

/// Longest wait before a down peer is tried again.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(60);

/// A peer probe result (for requests only peers answer).
pub struct PeerProbe {
    /// Configured peer.
    pub peer: PeerConfig,
    /// Connection and RTT, or why not.
    pub result: Result<(PeerConn, Duration), String>,
}

/// A replica target (peer or bucket) probed.
pub struct Probe {
    /// Configured name.
    pub name: String,
    /// Failure domain.
    pub domain: String,
    /// Peer or bucket.
    pub kind: HolderKind,
    /// Configured address (a peer's host:port, a bucket's description).
    pub address: String,
    /// The target and its round-trip time, or why it cannot be reached.
    pub result: Result<(Arc<dyn ReplicaTarget>, Duration), String>,
}

impl Probe {
    /// The target, when reachable.
    pub fn reachable(&self) -> Option<(&Arc<dyn ReplicaTarget>, Duration)> {
        self.result.as_ref().ok().map(|(t, d)| (t, *d))
    }
}

/// A kept connection ended by the peer's stateless reset: its process is new.
fn note_restarted(peer: &str) {
    tracing::info!(peer = %peer, "the peer restarted (it reset the old connection); connecting again");
}

/// Address to bind an outgoing-only endpoint to: `[residency] bind` when
/// set (all omesh traffic leaves from the LNI address), else any.
fn client_bind(cfg: &NodeConfig) -> SocketAddr {
    match cfg.residency.bind {
        Some(ip) => SocketAddr::new(ip, 0),
        None => "0.0.0.0:0".parse().expect("valid"),
    }
}

fn now_ns() -> i64 {
    omesh_core::time::now_ns()
}

impl NodeRuntime {
    /// Build a runtime. `serve`: bind the configured listen address for the
    /// daemon; otherwise an ephemeral client endpoint.
    pub async fn new(cfg: NodeConfig, serve: bool) -> Result<Arc<Self>, NodeError> {
        Self::build(cfg, serve, true).await
    }

    /// Build. `with_state` opens the state database (only one process may
    /// at a time). The residency policy of the config is enforced on every
    /// outbound and inbound connection.
    pub async fn build(cfg: NodeConfig, serve: bool, with_state: bool) -> Result<Arc<Self>, NodeError> {
        let policy = Arc::new(omesh_net::residency::Policy::new(&cfg.residency));
        let (outbound_check, inbound_check): (Option<OutboundCheck>, Option<InboundCheck>) = if policy.is_active() {
            let p1 = policy.clone();
            let p2 = policy.clone();
            (
                Some(Arc::new(move |who: &str, a: SocketAddr| p1.enforce("connection to", who, a.ip()))),
                Some(Arc::new(move |a: SocketAddr| p2.enforce("connection from", &a.to_string(), a.ip()))),
            )
        } else {
            (None, None)
        };
        let cfg = Arc::new(cfg);
        // files and databases are opened off the async workers
        let (tls, state) = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
                std::fs::create_dir_all(&cfg.data_dir)
                    .map_err(|source| NodeError::DataDir { path: cfg.data_dir.clone(), source })?;
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700));
                }
                let tls = TlsMaterial::load(&cfg.tls, &cfg.name).map_err(transport::TransportError::from)?;
                let state =
                    if with_state { Some(Arc::new(State::open(&cfg.data_dir.join("state.redb"))?)) } else { None };
                Ok((Arc::new(tls), state))
            })
            .await??
        };
        let bind = if serve {
            let addrs = client::resolve(&cfg.listen).await.map_err(|source| NodeError::Listen {
                config: cfg.path.clone(),
                setting: "listen",
                value: cfg.listen.clone(),
                resolve: true,
                source,
            })?;
            addrs[0]
        } else {
            client_bind(&cfg)
        };
        // below QUIC: datagrams from or to a refused address are dropped
        let filter: Option<transport::filter::DatagramFilter> = if policy.is_active() {
            let p = policy.clone();
            Some(Arc::new(move |a: SocketAddr| {
                let ok = p.allows(a.ip());
                if !ok {
                    p.refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                ok
            }))
        } else {
            None
        };
        let endpoint = transport::endpoint_filtered(bind, &tls, &cfg.transport, serve, filter)?;
        // always a limiter (unlimited costs one check): a reload may set limits
        let limiter = Arc::new(
            omesh_core::policy::bandwidth::Limiter::compile(&cfg.bandwidth)
                .map_err(|message| crate::config::ConfigError { path: cfg.path.clone(), message })?,
        );
        let mut s3 = Vec::new();
        for t in &cfg.s3 {
            let resolver = outbound_check.as_ref().map(|check| {
                let check = check.clone();
                let name = format!("S3 target {:?}", t.name);
                aws_smithy_runtime_api::client::dns::SharedDnsResolver::new(omesh_s3::client::CheckedResolver {
                    check: Arc::new(move |_host: &str, ip: std::net::IpAddr| check(&name, SocketAddr::new(ip, 0))),
                })
            });
            let mut target = omesh_s3::S3Target::new(t.clone(), &cfg.data_dir, resolver).await?;
            // a host that is an IP address is never resolved: check it here
            // (the host the SDK connects to, from its endpoint rules)
            let host = t.addressing().ok().map(|a| a.host);
            if let (Some(check), Some(ip)) =
                (&outbound_check, host.as_deref().and_then(|h| h.parse::<std::net::IpAddr>().ok()))
                && let Err(m) = check(&format!("S3 target {:?}", t.name), SocketAddr::new(ip, 0))
            {
                target.blocked = Some(m);
            }
            // a Region's public endpoint is not even looked up
            if outbound_check.is_some()
                && let Some(why) = host.as_deref().and_then(omesh_net::residency::public_aws_s3_refusal)
            {
                target.blocked = Some(format!("S3 target {:?}: {why}", t.name));
            }
            target.limiter = Some(limiter.clone());
            s3.push(Arc::new(target));
        }
        let signer = tls.snapshot_signer(&cfg.name).map_err(transport::TransportError::from)?;
        let stores = Arc::new(Stores::with_signer(cfg.layout(), Arc::new(signer)));
        let counters = Arc::new(Counters::default());
        let metrics = Arc::new(crate::metrics::Metrics::new(&counters));
        let peers: Vec<String> = cfg.peers.iter().map(|p| p.name.clone()).collect();
        let buckets: Vec<String> = cfg.s3.iter().map(|t| t.name.clone()).collect();
        let schedules: Vec<String> = cfg.schedules.iter().map(|s| s.cfg.name.clone()).collect();
        metrics.init_labels(&peers, &buckets, &schedules);
        Ok(Arc::new(NodeRuntime {
            cfg,
            tls,
            endpoint,
            stores,
            state,
            counters,
            metrics,
            stopping: Default::default(),
            limiter,
            reloaded: Default::default(),
            maintenance_lock: tokio::sync::Mutex::new(()),
            sync_lock: tokio::sync::Mutex::new(()),
            scrub_lock: tokio::sync::Mutex::new(()),
            s3,
            residency: policy,
            started: Instant::now(),
            daemon: serve,
            outbound_check,
            inbound_check,
            conns: tokio::sync::Mutex::new(HashMap::new()),
            down: Default::default(),
            backup_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound endpoint")
    }

    /// Re-read the CRL when it changed and close every cached connection
    /// to a peer whose certificate it now revokes.
    pub async fn refresh_crl(&self) {
        self.tls.refresh_async().await;
        let st = self.tls.crl_status();
        let now = omesh_core::time::now_ns();
        self.metrics.crl_stale.set(i64::from(st.is_stale(now)));
        self.metrics.crl_next_update.set(st.next_update_ns.map_or(0, |t| t / 1_000_000_000));
        let left = self.tls.not_after - omesh_core::time::now().as_second();
        self.metrics.cert_expiry.set(self.tls.not_after);
        self.metrics.cert_expiring.set(i64::from(left < omesh_net::transport::tls::CERT_RENEW_DAYS * 86400));
        let mut g = self.conns.lock().await;
        g.retain(|name, c| {
            if self.tls.is_revoked(&c.identity.serial) {
                tracing::warn!(peer = %name, "peer certificate revoked; closing the connection to it");
                c.conn.close(omesh_proto::msg::close::UNAUTHORIZED.into(), b"certificate revoked");
                return false;
            }
            true
        });
    }

    /// Connect (or reuse a live connection) to a configured peer. A peer
    /// that failed a moment ago is not tried again until its backoff (5 s,
    /// doubling to [`MAX_RETRY_BACKOFF`]) has passed or it connected to this
    /// node since: the answer is then immediate.
    pub async fn connect(&self, peer: &PeerConfig) -> Result<PeerConn, ConnectError> {
        if let Some(d) = self.down.lock().unwrap_or_else(|e| e.into_inner()).get(&peer.name).cloned()
            && Instant::now() < d.until
            && !self.counters.inbound_since(&peer.name, d.last)
        {
            return Err(ConnectError::Down {
                error: d.error,
                since: omesh_core::time::rfc3339_ns(d.first_ns),
                retry_in: d.until.saturating_duration_since(Instant::now()).as_secs().max(1),
            });
        }
        let r = self.connect_now(peer).await;
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match &r {
            Ok(_) => {
                down.remove(&peer.name);
            }
            Err(e @ ConnectError::Transport(_)) => {
                let now = Instant::now();
                let prev = down.get(&peer.name);
                let failures = prev.map_or(0, |d| d.failures) + 1;
                let wait = (Duration::from_secs(5) * 2u32.saturating_pow(failures - 1).min(64)).min(MAX_RETRY_BACKOFF);
                let first_ns = prev.map_or_else(omesh_core::time::now_ns, |d| d.first_ns);
                down.insert(
                    peer.name.clone(),
                    Down { first_ns, last: now, until: now + wait, failures, error: e.to_string() },
                );
            }
            Err(_) => {}
        }
        r
    }

    async fn connect_now(&self, peer: &PeerConfig) -> Result<PeerConn, ConnectError> {
        {
            let g = self.conns.lock().await;
            if let Some(c) = g.get(&peer.name) {
                match c.conn.close_reason() {
                    None if !self.tls.is_revoked(&c.identity.serial) => return Ok(c.clone()),
                    // its stateless reset arrived already (a keep-alive drew it)
                    Some(quinn::ConnectionError::Reset) => note_restarted(&peer.name),
                    _ => {}
                }
            }
        }
        let addrs = client::resolve(&peer.address)
            .await
            .map_err(|source| ConnectError::Resolve { address: peer.address.clone(), source })?;
        if let Some(check) = &self.outbound_check {
            for a in &addrs {
                check(&peer.name, *a).map_err(ConnectError::Residency)?;
            }
        }
        let timeout = Duration::from_secs(self.cfg.transport.connect_timeout_secs.max(1));
        self.tls.refresh_async().await;
        let config = transport::client_config(&self.tls, &self.cfg.transport)?;
        let mut c = client::connect(&self.endpoint, &config, &self.cfg.name, &peer.name, &addrs, timeout).await?;
        c.limiter = Some(self.limiter.clone());
        c.request_timeout = Duration::from_secs(self.cfg.transport.request_timeout_secs.max(1));
        self.conns.lock().await.insert(peer.name.clone(), c.clone());
        Ok(c)
    }

    /// Every replica target, peers then buckets, probed in parallel: the
    /// peers connected with their RTT (best of 3 pings), the buckets with
    /// one bucket check.
    pub async fn probe_targets(&self) -> Vec<Probe> {
        let peers = async {
            self.probe_all()
                .await
                .into_iter()
                .map(|p| Probe {
                    name: p.peer.name.clone(),
                    domain: p.peer.domain.clone(),
                    kind: HolderKind::Peer,
                    address: p.peer.address.clone(),
                    result: p.result.map(|(c, rtt)| {
                        (Arc::new(PeerTarget::new(c, p.peer.domain.clone())) as Arc<dyn ReplicaTarget>, rtt)
                    }),
                })
                .collect::<Vec<_>>()
        };
        let buckets = futures::future::join_all(self.s3.iter().map(|t| async move {
            let target: Arc<dyn ReplicaTarget> = Arc::new(BucketTarget::new(t.clone()));
            let result = match target.probe().await {
                Ok(rtt) => Ok((target.clone(), rtt)),
                Err(e) => Err(e.to_string()),
            };
            Probe {
                name: t.cfg.name.clone(),
                domain: t.cfg.domain(),
                kind: HolderKind::S3,
                address: t.describe(),
                result,
            }
        }));
        let (mut all, buckets) = tokio::join!(peers, buckets);
        all.extend(buckets);
        all
    }

    /// Close every connection properly before a short-lived runtime (a
    /// command run in-process) goes away: peers then free their slots at
    /// once instead of holding them until the idle timeout. Waits at most
    /// 2 s for the close to reach them.
    pub async fn close(&self) {
        self.conns.lock().await.clear();
        self.endpoint.close(omesh_proto::msg::close::SHUTDOWN.into(), b"command finished");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    /// Connect to every peer in parallel and measure RTT (best of 3 pings).
    pub async fn probe_all(&self) -> Vec<PeerProbe> {
        let futs = self.cfg.peers.iter().map(|p| async move {
            let probe = || async {
                let c = self.connect(p).await.map_err(|e| e.to_string())?;
                let mut best = Duration::MAX;
                for _ in 0..3 {
                    best = best.min(c.ping().await.map_err(|e| e.to_string())?);
                }
                Ok::<_, String>((c, best))
            };
            let mut r = probe().await;
            // a cached connection to a peer that restarted is dead without
            // knowing it yet: drop it and try once with a fresh one
            // (the lock is released before the new attempt takes it)
            let kept = if r.is_err() { self.conns.lock().await.remove(&p.name) } else { None };
            if let (Err(e), Some(old)) = (&r, kept) {
                if matches!(old.conn.close_reason(), Some(quinn::ConnectionError::Reset)) {
                    note_restarted(&p.name);
                } else {
                    tracing::debug!(peer = %p.name, error = %e, "the kept connection failed; trying a new one");
                }
                r = probe().await;
            }
            let peer = crate::metrics::label("peer", &p.name);
            self.metrics.peer_up.get_or_create(&peer).set(r.is_ok() as i64);
            if r.is_err() {
                self.metrics.peer_probe_failures.get_or_create(&peer).inc();
            }
            if let Ok((_, rtt)) = &r {
                self.metrics.peer_rtt.get_or_create(&peer).set(rtt.as_secs_f64());
            }
            if let (Ok((c, rtt)), Some(state)) = (&r, self.state.clone()) {
                let (name, rtt_us, address, cert) =
                    (p.name.clone(), rtt.as_micros() as u64, c.addr.to_string(), c.identity.fingerprint.clone());
                // the state database is written off the async workers
                let _ = tokio::task::spawn_blocking(move || {
                    let throughput_bps =
                        state.peers().ok().and_then(|m| m.get(&name).map(|s| s.throughput_bps)).unwrap_or(0);
                    let seen =
                        PeerSeen { last_contact_ns: now_ns(), rtt_us, address, cert_sha256: cert, throughput_bps };
                    state.peer_seen(&name, &seen)
                })
                .await;
            }
            PeerProbe { peer: p.clone(), result: r }
        });
        futures::future::join_all(futs).await
    }

    /// Back up into our own store, then replicate to `factor` peers.
    pub async fn backup_and_replicate(
        self: &Arc<Self>,
        opts: BackupOptions,
        progress: Arc<Progress>,
    ) -> Result<MeshBackupReport, NodeError> {
        self.backup_and_replicate_as(opts, progress, "manual").await
    }

    /// The options of a `backup --config` request: its paths (or
    /// `[backup] paths`), `[backup] exclude` plus its own, and its parent
    /// ("none", a snapshot, or the latest matching one; resolved in the
    /// store on a blocking thread).
    #[allow(clippy::too_many_arguments)]
    pub async fn backup_request_options(
        &self,
        paths: Vec<std::path::PathBuf>,
        (exclude, if_present, caches): (Vec<String>, Vec<String>, bool),
        one_file_system: bool,
        image: Option<std::path::PathBuf>,
        tags: Vec<String>,
        parent: Option<&str>,
        stream: Option<omesh_core::backup::stream::StreamInput>,
    ) -> Result<BackupOptions, NodeError> {
        let cfg = &self.cfg;
        let parent = match parent {
            None => ParentChoice::Auto,
            Some("none") => ParentChoice::None,
            Some(p) => {
                let (stores, p) = (self.stores.clone(), p.to_string());
                let id = tokio::task::spawn_blocking(move || stores.own().and_then(|s| s.store.resolve_snapshot(&p)))
                    .await
                    .map_err(NodeError::from)??;
                ParentChoice::Id(id)
            }
        };
        Ok(cfg.backup_options(paths, (exclude, if_present, caches), one_file_system, image, tags, parent, stream))
    }

    /// [`NodeRuntime::backup_and_replicate`] for a named schedule (metrics
    /// label). Two backups of this node never run at once.
    pub async fn backup_and_replicate_as(
        self: &Arc<Self>,
        opts: BackupOptions,
        progress: Arc<Progress>,
        schedule: &str,
    ) -> Result<MeshBackupReport, NodeError> {
        let t = Instant::now();
        let r = self.backup_and_replicate_inner(opts, progress).await;
        let m = &self.metrics;
        let result = match &r {
            Ok(rep) if rep.protected => "ok",
            Ok(_) => "unprotected",
            Err(_) => "failed",
        };
        m.backups.get_or_create(&crate::metrics::labels2("schedule", schedule, "result", result)).inc();
        // the daemon's log says what became of every backup it ran, for
        // whoever asked for it
        if let Err(e) = &r {
            // ENOSPC anywhere down the chain of causes
            let full = std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |c| c.source())
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .any(|io| io.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()));
            if full {
                tracing::error!(%schedule, error = %e, "backup failed: the disk of the data directory is full; no snapshot was made. What the backup had written stays in the store until a garbage collection at least [gc] grace_secs later removes it (`omesh gc --config FILE`); free space, or lower what is backed up, before the next one");
            } else {
                tracing::error!(%schedule, error = %e, "backup failed; no snapshot was made");
            }
        }
        m.backup_seconds.observe(t.elapsed().as_secs_f64());
        if let Ok(rep) = &r {
            m.backup_bytes_added.inc_by(rep.backup.bytes_added);
        }
        // a snapshot that is only on this server does not meet an RPO: it
        // dies with the server
        if r.as_ref().is_ok_and(|rep| rep.protected) {
            let now = omesh_core::time::now().as_second() as f64;
            m.backup_last_success.get_or_create(&crate::metrics::label("schedule", schedule)).set(now);
            m.last_success.get_or_create(&crate::metrics::label("job", "backup")).set(now);
        }
        r
    }

    async fn backup_and_replicate_inner(
        self: &Arc<Self>,
        opts: BackupOptions,
        progress: Arc<Progress>,
    ) -> Result<MeshBackupReport, NodeError> {
        let _one_at_a_time = self.backup_lock.lock().await;
        let own = {
            let stores = self.stores.clone();
            tokio::task::spawn_blocking(move || stores.own()).await??
        };
        let store = own.store.clone();
        let p = progress.clone();
        let summary: BackupSummary = tokio::task::spawn_blocking(move || backup::run(&store, &opts, p)).await??;
        progress.replicating.store(true, std::sync::atomic::Ordering::Relaxed);
        let snap = summary.snapshot;
        let replicas = self.replicate(snap).await;
        let factor = self.cfg.replication.factor;
        let ok: Vec<&ReplicaReport> = replicas.iter().filter(|r| r.ok).collect();
        let chosen: Vec<Candidate> = ok
            .iter()
            .map(|r| Candidate {
                name: r.peer.clone(),
                domain: r.domain.clone(),
                rtt: Some(Duration::from_micros(r.rtt_us)),
                holds: false,
            })
            .collect();
        let distinct = placement::distinct_domains(&chosen);
        let mut warnings = Vec::new();
        if ok.len() < factor {
            warnings.push(format!("snapshot is on {} of {factor} required peers: NOT fully protected yet", ok.len()));
        } else if distinct < ok.len() {
            warnings.push(format!("only {distinct} distinct failure domains among the {} replicas", ok.len()));
        }
        Ok(MeshBackupReport {
            protected: ok.len() >= factor,
            factor,
            distinct_domains: distinct,
            backup: summary,
            replicas,
            replication_warnings: warnings,
        })
    }

    /// Replicate one of our snapshots: choose targets by failure domain
    /// then RTT, push in parallel, fall back to the next ranked target on
    /// failure, and record every acknowledged placement.
    pub async fn replicate(self: &Arc<Self>, snap: ObjectId) -> Vec<ReplicaReport> {
        let probes = self.probe_targets().await;
        // who held earlier snapshots (placement is sticky), and our own
        // store, read off the async workers
        let (holders, failed, own) = {
            let (st, stores, me) = (self.state.clone(), self.stores.clone(), self.cfg.name.clone());
            let r = tokio::task::spawn_blocking(move || {
                let holders: std::collections::HashSet<String> = match &st {
                    Some(st) => {
                        st.placements(&me).unwrap_or_default().into_values().flatten().map(|p| p.node).collect()
                    }
                    None => Default::default(),
                };
                let failed: HashMap<String, crate::state::HoldingCheck> = match &st {
                    Some(st) => st.checks().unwrap_or_default().into_iter().filter(|(_, c)| !c.ok).collect(),
                    None => Default::default(),
                };
                (holders, failed, stores.own())
            })
            .await;
            match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "worker failed");
                    return Vec::new();
                }
            }
        };
        let mut reports: Vec<ReplicaReport> = Vec::new();
        let mut cands = Vec::new();
        for p in &probes {
            // a peer that failed its last holding check is not trusted with
            // a replica until a check passes
            if let Some(c) = failed.get(&p.name) {
                let why = format!(
                    "not used: its last holding check ({}) failed: {}; it counts again once a check passes (omesh sync)",
                    omesh_core::time::rfc3339_ns(c.time_ns),
                    c.detail
                );
                tracing::warn!(target = %p.name, reason = %why, "replica target skipped");
                reports.push(ReplicaReport::unreachable(&p.name, &p.domain, &p.address, why));
                self.metrics
                    .replications
                    .get_or_create(&crate::metrics::labels2("peer", &p.name, "result", "failed"))
                    .inc();
                continue;
            }
            let reachable = p.reachable();
            cands.push(Candidate {
                name: p.name.clone(),
                domain: p.domain.clone(),
                rtt: reachable.map(|r| r.1),
                holds: reachable.is_some() && holders.contains(&p.name),
            });
            if let Err(e) = &p.result {
                tracing::warn!(target = %p.name, error = %e, "replica target unreachable");
                reports.push(ReplicaReport::unreachable(&p.name, &p.domain, &p.address, e.clone()));
                // a target it could not even reach is a failed replication
                // too: an alert on result!="ok" must see a dead peer
                self.metrics
                    .replications
                    .get_or_create(&crate::metrics::labels2("peer", &p.name, "result", "unreachable"))
                    .inc();
            }
        }
        let ranked = placement::rank(&self.cfg.domain, &cands);
        let factor = self.cfg.replication.factor;
        let own = match own {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "own store unavailable");
                return reports;
            }
        };
        let opts = PushOptions {
            streams: self.cfg.replication.streams_per_peer,
            batch_bytes: self.cfg.replication.batch_bytes.0,
        };
        let mut next = 0;
        let mut ok = 0;
        while ok < factor && next < ranked.len() {
            let wave: Vec<Candidate> = ranked[next..(next + factor - ok).min(ranked.len())].to_vec();
            next += wave.len();
            let pushes = wave.into_iter().filter_map(|cand| {
                let (target, rtt) = probes.iter().find(|p| p.name == cand.name)?.reachable()?;
                let (target, store) = (target.clone(), own.store.clone());
                let counters = self.counters.peer(&cand.name);
                let source = self.cfg.name.clone();
                Some(async move {
                    let t = Instant::now();
                    let r = target.push(store, &source, snap, opts, counters).await;
                    ReplicaReport::of(target.as_ref(), rtt, r, t.elapsed().as_secs_f64())
                })
            });
            for r in futures::future::join_all(pushes).await {
                self.metrics
                    .replications
                    .get_or_create(&crate::metrics::labels2(
                        "peer",
                        &r.peer,
                        "result",
                        if r.ok { "ok" } else { "failed" },
                    ))
                    .inc();
                self.metrics.replication_seconds.observe(r.seconds);
                // a transfer long enough to say something about the link
                if r.ok
                    && r.bytes_sent >= 8 << 20
                    && r.seconds > 0.0
                    && let Some(state) = &self.state
                {
                    let _ = state.peer_throughput(&r.peer, (r.bytes_sent as f64 / r.seconds) as u64);
                }
                if r.ok {
                    ok += 1;
                    if let Some(state) = &self.state {
                        let kind = probes.iter().find(|p| p.name == r.peer).map(|p| p.kind).unwrap_or(HolderKind::Peer);
                        let _ = state.add_placement(
                            &self.cfg.name,
                            &snap.to_hex(),
                            Placement {
                                node: r.peer.clone(),
                                kind,
                                address: r.address.clone(),
                                cert_sha256: r.cert_sha256.clone(),
                                time_ns: now_ns(),
                                objects_sent: r.objects_sent,
                                bytes_sent: r.bytes_sent,
                            },
                        );
                    }
                    tracing::info!(peer = %r.peer, snapshot = %snap.short(), bytes = r.bytes_sent, "replica acknowledged");
                } else {
                    tracing::warn!(peer = %r.peer, error = ?r.error, "replication failed; trying the next target");
                }
                reports.push(r);
            }
        }
        reports
    }
}

/// Result of `omesh backup --config`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MeshBackupReport {
    /// The local backup.
    #[serde(flatten)]
    pub backup: BackupSummary,
    /// Replication attempts, one per peer tried.
    pub replicas: Vec<ReplicaReport>,
    /// Configured replication factor.
    pub factor: usize,
    /// Whether `factor` peers acknowledged the snapshot.
    pub protected: bool,
    /// Distinct failure domains among acknowledged replicas.
    pub distinct_domains: usize,
    /// Replication problems worth attention (file warnings are in
    /// `warnings`, from the backup).
    pub replication_warnings: Vec<String>,
}
