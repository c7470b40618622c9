//! The daemon's services: the QUIC server, the control socket, the timers
//! (schedules, sync, maintenance, scrub) and the metrics endpoint, each a
//! worker under one cancellation token whose tasks are joined at shutdown.
//!
//! - [`timers`]: when scheduled backups, sync, maintenance and scrub run;
//! - [`sync`]: mesh sync, repairing under-replicated snapshots by pulling;
//! - [`maintenance`]: forget, garbage collection and scrub over every store;
//! - [`control`]: the local control socket the CLI talks to.

pub mod audit;
pub mod control;
pub mod maintenance;
pub mod notify;
pub mod sync;
pub mod timers;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::runtime::NodeRuntime;
use omesh_net::mesh::server::{self, ServerCtx};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Longest the daemon's start waits for its greeting to the peers.
pub const GREET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A running daemon.
pub struct DaemonHandle {
    /// The runtime.
    pub rt: Arc<NodeRuntime>,
    /// Cancel to stop.
    pub cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl DaemonHandle {
    /// Re-read the configuration file (SIGHUP, `systemctl reload omesh`):
    /// `[bandwidth]` and the CRL take effect now; any other changed section
    /// is named, at warn, as needing a restart; a file that does not load
    /// changes nothing. The outcome shows in `omesh status`.
    pub async fn reload(&self) -> crate::config::ReloadReport {
        let rt = self.rt.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut rep = crate::config::ReloadReport {
                time: omesh_core::time::rfc3339(omesh_core::time::now()),
                ..Default::default()
            };
            rt.tls.refresh();
            match NodeConfig::load(&rt.cfg.path) {
                Err(e) => rep.error = Some(format!("{e}; the settings in force stay")),
                Ok(new) => {
                    let (live, restart) = rt.cfg.reload_diff(&new);
                    // (only [bandwidth] applies live)
                    if !live.is_empty() {
                        match rt.limiter.replace(&new.bandwidth) {
                            Ok(()) => rep.applied = live,
                            Err(e) => rep.error = Some(format!("[bandwidth]: {e}; the settings in force stay")),
                        }
                    }
                    rep.restart_needed = restart;
                }
            }
            *rt.reloaded.lock().unwrap_or_else(|e| e.into_inner()) = Some(rep.clone());
            rep
        })
        .await;
        let rep =
            r.unwrap_or_else(|e| crate::config::ReloadReport { error: Some(e.to_string()), ..Default::default() });
        let path = self.rt.cfg.path.display();
        match &rep.error {
            Some(e) => tracing::error!(config = %path, error = %e, "configuration not reloaded"),
            None => tracing::info!(config = %path, applied = ?rep.applied, "configuration reloaded"),
        }
        if !rep.restart_needed.is_empty() {
            tracing::warn!(config = %path, changed = ?rep.restart_needed, "these settings changed and take effect only after a restart (systemctl restart omesh)");
        }
        rep
    }

    /// Stop serving and wait for every task.
    pub async fn shutdown(mut self) {
        // long blocking jobs (a garbage collection's mark) end at their next step
        self.rt.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.rt.endpoint.close(omesh_proto::msg::close::SHUTDOWN.into(), b"node shutting down");
        self.rt.endpoint.wait_idle().await;
    }
}

/// How often the daemon looks at its CRL file: a revocation closes live
/// connections of the revoked node within this time.
pub const CRL_WATCH: std::time::Duration = std::time::Duration::from_secs(2);

/// Re-read the CRL every [`CRL_WATCH`] (connections the server holds
/// re-check their peer when it changes; cached client connections are
/// closed here).
async fn watch_crl(rt: Arc<NodeRuntime>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(CRL_WATCH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => rt.refresh_crl().await,
        }
    }
}

/// Start the daemon: QUIC server and control socket.
pub async fn start_daemon(cfg: NodeConfig) -> Result<DaemonHandle, NodeError> {
    // the same check as `omesh residency check`: refuse to start outside the boundary
    let policy = omesh_net::residency::Policy::new(&cfg.residency);
    if policy.is_active() {
        let bad: Vec<String> = omesh_net::residency::check_destinations(
            &cfg.destinations(),
            &cfg.name,
            &cfg.listen,
            cfg.metrics.listen.as_deref(),
            &policy,
        )
        .await
        .into_iter()
        .filter(|l| !l.allowed)
        .map(|l| format!("{} {} ({} -> {}): {}", l.kind, l.name, l.host, l.address, l.reason))
        .collect();
        if !bad.is_empty() {
            return Err(NodeError::Residency(format!(
                "not starting, the configuration violates the residency boundary:\n  {}",
                bad.join("\n  ")
            )));
        }
    }
    let rt = NodeRuntime::new(cfg, true).await?;
    // take the store lock now: a second writer fails at start, not later.
    // A node that has not backed up yet has no store and no key; the first
    // backup makes them (starting must not mint a key: on a replacement
    // node, the old key is imported first)
    {
        let stores = rt.stores.clone();
        tokio::task::spawn_blocking(move || stores.own_existing()).await??;
    }
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let ctx = Arc::new(ServerCtx {
        policy: rt.cfg.serve_policy(),
        transport: rt.cfg.transport.clone(),
        stores: rt.stores.clone(),
        counters: rt.counters.clone(),
        started: rt.started,
        cancel: cancel.clone(),
        inbound_check: rt.inbound_check.clone(),
        tls: rt.tls.clone(),
        peers: Default::default(),
    });
    tasks.spawn(server::serve(rt.endpoint.clone(), ctx));
    let listener = control::bind(&rt.cfg.control_socket())
        .map_err(|source| NodeError::ControlSocket { path: rt.cfg.control_socket(), source })?;
    tasks.spawn(control::serve(listener, rt.clone(), cancel.clone()));
    crate::services::timers::spawn(&rt, &mut tasks, &cancel).await?;
    tasks.spawn(watch_crl(rt.clone(), cancel.clone()));
    // greet the peers before saying ready: one that found this node down
    // (and stopped trying it for a while) tries it again at once. At most
    // GREET_TIMEOUT, so a dead peer delays the start only that long
    let _ = tokio::time::timeout(GREET_TIMEOUT, rt.probe_all()).await;
    tracing::info!(node = %rt.cfg.name, addr = %rt.local_addr(), "node running");
    Ok(DaemonHandle { rt, cancel, tasks })
}
