//! The local control socket (`data_dir/control.sock`, mode 0600, in a 0700
//! directory). While the daemon runs, CLI commands that write to the store
//! or read the node state go through it, so there is never a second writer.
//!
//! Protocol: one JSON request line; the daemon answers with zero or more
//! `{"progress": ...}` lines and then one `{"result": ...}` or
//! `{"error": {"code": N, "message": "..."}}` line. Only root or the
//! daemon's own user may connect (checked with SO_PEERCRED).

use crate::error::NodeError;
use crate::runtime::NodeRuntime;
use omesh_core::backup::Progress;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// A request to the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Liveness.
    Ping,
    /// Back up and replicate.
    Backup {
        /// paths (empty: `[backup] paths` from the config)
        paths: Vec<PathBuf>,
        /// excludes (added to the config's)
        exclude: Vec<String>,
        /// one file system
        one_file_system: bool,
        /// image device
        image: Option<PathBuf>,
        /// tags
        tags: Vec<String>,
        /// parent: none, id, or auto
        parent: Option<String>,
    },
    /// Snapshot listing with replica state.
    Snapshots {
        /// source (default: this node)
        source: Option<String>,
    },
    /// Node status.
    Status,
    /// Residency audit report.
    ResidencyReport {
        /// only placements at or after (ns)
        since_ns: i64,
    },
    /// Apply retention (or forget given snapshots of this node).
    Forget {
        /// one source's store only
        source: Option<String>,
        /// explicit snapshots of this node
        ids: Vec<String>,
        /// only show what would go
        dry_run: bool,
    },
    /// Garbage-collect every store.
    Gc,
    /// Scrub every store and repair from replicas.
    Scrub {
        /// read rate ("unlimited", "50 MiB/s"); default `[scrub] rate`
        rate: Option<String>,
    },
    /// Mesh sync now.
    Sync,
    /// A restore finished (for the metrics).
    RestoreDone {
        /// succeeded
        ok: bool,
        /// bytes restored
        bytes: u64,
        /// seconds
        seconds: f64,
    },
}

/// A line from the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReply {
    /// Progress counters.
    Progress(serde_json::Value),
    /// Final result.
    Result(serde_json::Value),
    /// Failure with the CLI exit code it maps to.
    Error {
        /// exit code
        code: u8,
        /// message
        message: String,
    },
}

/// Bind the socket (removing a stale one) with owner-only permissions.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::other("another daemon is already running with this data_dir"));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serve control connections until cancelled.
pub async fn serve(listener: UnixListener, rt: Arc<NodeRuntime>, cancel: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    let me = rustix::process::geteuid().as_raw();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => match a {
                Ok((s, _)) => {
                    let allowed = s.peer_cred().map(|c| c.uid() == 0 || c.uid() == me).unwrap_or(false);
                    if !allowed {
                        tracing::warn!("refused a control connection from another user");
                        continue;
                    }
                    tasks.spawn(handle(s, rt.clone()));
                }
                Err(e) => {
                    tracing::error!(error = %e, "control socket accept failed");
                    break;
                }
            },
        }
        while tasks.try_join_next().is_some() {}
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let _ = std::fs::remove_file(rt.cfg.control_socket());
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &ControlReply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).expect("serializes");
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(s: UnixStream, rt: Arc<NodeRuntime>) {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let req: ControlRequest = match lines.next_line().await {
        Ok(Some(l)) => match serde_json::from_str(&l) {
            Ok(r) => r,
            Err(e) => {
                let _ =
                    send(&mut w, &ControlReply::Error { code: 2, message: format!("bad control request: {e}") }).await;
                return;
            }
        },
        _ => return,
    };
    let reply = match req {
        ControlRequest::Ping => ControlReply::Result(serde_json::json!({"node": rt.cfg.name})),
        ControlRequest::Backup { paths, exclude, one_file_system, image, tags, parent } => {
            let opts = match rt.backup_request_options(paths, exclude, one_file_system, image, tags, parent.as_deref())
            {
                Ok(o) => o,
                Err(e) => {
                    let _ = send(&mut w, &ControlReply::Error { code: 2, message: e.to_string() }).await;
                    return;
                }
            };
            let progress = Arc::new(Progress::default());
            let job = {
                let rt = rt.clone();
                let p = progress.clone();
                tokio::spawn(async move { rt.backup_and_replicate(opts, p).await })
            };
            tokio::pin!(job);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    res = &mut job => {
                        break match res {
                            Ok(Ok(rep)) => ControlReply::Result(serde_json::to_value(&rep).expect("serializes")),
                            Ok(Err(e)) => ControlReply::Error { code: crate::error::exit_code(&e), message: e.to_string() },
                            Err(e) => ControlReply::Error { code: 1, message: format!("backup task failed: {e}") },
                        };
                    }
                    _ = tick.tick() => {
                        let v = serde_json::json!({
                            "files": progress.files.load(Ordering::Relaxed),
                            "bytes_read": progress.bytes_read.load(Ordering::Relaxed),
                            "bytes_added": progress.bytes_added.load(Ordering::Relaxed),
                        });
                        if send(&mut w, &ControlReply::Progress(v)).await.is_err() {
                            // the CLI went away; the backup continues
                        }
                    }
                }
            }
        }
        ControlRequest::Snapshots { source } => match crate::views::snapshots(&rt, source.as_deref()).await {
            Ok(v) => ControlReply::Result(serde_json::to_value(v).expect("serializes")),
            Err(e) => ControlReply::Error { code: crate::error::exit_code(&e), message: e.to_string() },
        },
        ControlRequest::ResidencyReport { since_ns } => match rt
            .state
            .as_ref()
            .ok_or_else(|| NodeError::Other("no state database".into()))
            .and_then(|st| crate::views::residency_report(st, &rt.cfg.name, since_ns))
        {
            Ok(v) => ControlReply::Result(serde_json::to_value(v).expect("serializes")),
            Err(e) => ControlReply::Error { code: crate::error::exit_code(&e), message: e.to_string() },
        },
        ControlRequest::Forget { source, ids, dry_run } => {
            let _one = rt.maintenance_lock.lock().await;
            match crate::services::maintenance::forget(&rt, source, ids, dry_run).await {
                Ok(v) => ControlReply::Result(serde_json::to_value(v).expect("serializes")),
                Err(e) => ControlReply::Error { code: crate::error::exit_code(&e), message: e.to_string() },
            }
        }
        ControlRequest::Gc => ControlReply::Result(
            serde_json::to_value(crate::services::maintenance::gc_all(&rt).await).expect("serializes"),
        ),
        ControlRequest::Scrub { rate } => {
            let rate = match omesh_core::policy::bandwidth::parse_rate(rate.as_deref().unwrap_or(&rt.cfg.scrub.rate)) {
                Ok(r) => r,
                Err(e) => {
                    let _ = send(&mut w, &ControlReply::Error { code: 2, message: format!("--rate: {e}") }).await;
                    return;
                }
            };
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let r = crate::services::maintenance::scrub_all(&rt, rate, stop).await;
            ControlReply::Result(serde_json::to_value(r).expect("serializes"))
        }
        ControlRequest::Sync => ControlReply::Result(
            serde_json::to_value(crate::services::maintenance::sync_now(&rt).await).expect("serializes"),
        ),
        ControlRequest::RestoreDone { ok, bytes, seconds } => {
            let m = &rt.metrics;
            m.restores.get_or_create(&crate::metrics::label("result", if ok { "ok" } else { "failed" })).inc();
            m.restore_seconds.observe(seconds);
            m.restore_bytes.inc_by(bytes);
            ControlReply::Result(serde_json::json!({}))
        }
        ControlRequest::Status => match crate::views::status(&rt).await {
            Ok(v) => ControlReply::Result(serde_json::to_value(v).expect("serializes")),
            Err(e) => ControlReply::Error { code: crate::error::exit_code(&e), message: e.to_string() },
        },
    };
    let _ = send(&mut w, &reply).await;
}

/// Whether a daemon answers on `path`.
pub async fn daemon_running(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    matches!(call(path, &ControlRequest::Ping, |_| {}).await, Ok(Ok(_)))
}

/// Send a request and wait for the result; `progress` sees progress lines.
/// Outer error: cannot talk to the daemon; inner error: (exit code, message).
pub async fn call(
    path: &Path,
    req: &ControlRequest,
    mut progress: impl FnMut(&serde_json::Value),
) -> std::io::Result<Result<serde_json::Value, (u8, String)>> {
    let s = UnixStream::connect(path).await?;
    let (r, mut w) = s.into_split();
    let mut line = serde_json::to_vec(req).expect("serializes");
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut lines = BufReader::new(r).lines();
    while let Some(l) = lines.next_line().await? {
        match serde_json::from_str::<ControlReply>(&l) {
            Ok(ControlReply::Progress(v)) => progress(&v),
            Ok(ControlReply::Result(v)) => return Ok(Ok(v)),
            Ok(ControlReply::Error { code, message }) => return Ok(Err((code, message))),
            Err(e) => return Err(std::io::Error::other(format!("bad reply from daemon: {e}"))),
        }
    }
    Err(std::io::Error::other("daemon closed the control connection without an answer"))
}
