//! The local control socket (`data_dir/control.sock`, mode 0600, in a 0700
//! directory). While the daemon runs, CLI commands that write to the store
//! or read the node state go through it, so there is never a second writer.
//!
//! Protocol: one JSON request line ([`ControlRequest`]); the daemon answers
//! with zero or more progress lines and then one typed result or one error
//! ([`ControlReply`]), each one line of JSON. Only root or the daemon's own
//! user may connect (checked with SO_PEERCRED). Both ends are the same
//! `omesh` binary, so the JSON is an internal format, not an API.

use super::maintenance::{self, GcAllReport, ScrubReport};
use super::sync::SyncReport;
use crate::error::{ErrorClass, NodeError};
use crate::runtime::{MeshBackupReport, NodeRuntime};
use crate::views::residency::ResidencyRow;
use crate::views::{self, SnapshotView, StatusView};
use omesh_core::backup::Progress;
use omesh_core::policy::bandwidth::Rate;
use omesh_core::store::forget::ForgetReport;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long the CLI waits for the daemon to answer a liveness check.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// While it works on a request the daemon sends a line at least this often
/// (progress, or [`ControlReply::Alive`]).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A daemon that sends nothing for this long in the middle of a request is
/// taken as frozen: the CLI stops waiting and says so.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(20);

/// A request to the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Liveness.
    Ping,
    /// Back up and replicate.
    Backup {
        /// paths (empty: `[backup] paths` from the config), as the CLI
        /// sees them
        paths: Vec<SeenPath>,
        /// excludes (added to the config's)
        exclude: Vec<String>,
        /// skip directories holding one of these names (added to the config's)
        #[serde(default)]
        exclude_if_present: Vec<String>,
        /// skip cache directories (or the config's setting)
        #[serde(default)]
        exclude_caches: bool,
        /// one file system
        one_file_system: bool,
        /// image device, as the CLI sees it
        image: Option<SeenPath>,
        /// tags
        tags: Vec<String>,
        /// parent: none, id, or auto
        parent: Option<String>,
        /// back up a stream the CLI sends through a FIFO instead of paths
        #[serde(default)]
        stdin: Option<StreamRequest>,
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
        /// only this node's snapshots these filters choose
        #[serde(default)]
        filter: omesh_core::snapshot::select::Filter,
    },
    /// Change tags of this node's snapshots.
    Tag {
        /// snapshots (none: every one the filter chooses)
        ids: Vec<String>,
        /// filters
        filter: omesh_core::snapshot::select::Filter,
        /// the change
        change: omesh_core::snapshot::select::TagChange,
    },
    /// Garbage-collect every store.
    Gc,
    /// Scrub every store and repair from replicas.
    Scrub {
        /// read rate in bytes per second (`None`: unlimited), already
        /// parsed by the CLI
        rate: Option<u64>,
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

/// A path named on the CLI's command line, made absolute in the CLI's
/// working directory, with the (device, inode) the CLI's lstat of it gave.
/// The daemon backs up what the caller means or nothing: it resolves no
/// path against its own working directory and refuses a path whose lstat
/// differs there (a daemon in another mount namespace, e.g. systemd's
/// `PrivateTmp=`, sees another /tmp).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenPath {
    /// absolute path
    pub path: PathBuf,
    /// st_dev of the CLI's lstat
    pub dev: u64,
    /// st_ino of the CLI's lstat
    pub ino: u64,
}

impl SeenPath {
    /// `p` as this process sees it: made absolute like a local backup's
    /// root, then lstat'ed (an error names the path).
    pub fn here(p: &Path) -> Result<SeenPath, omesh_core::backup::BackupError> {
        use std::os::unix::fs::MetadataExt;
        let path = omesh_core::backup::absolute(p)?;
        let m = std::fs::symlink_metadata(&path)
            .map_err(|e| omesh_core::backup::BackupError::Path { path: path.clone(), reason: e.to_string() })?;
        Ok(SeenPath { path, dev: m.dev(), ino: m.ino() })
    }

    /// The path, if this process (the daemon) sees the same file there as
    /// the caller did; otherwise why not and what to do.
    pub fn as_the_caller_sees(&self) -> Result<PathBuf, String> {
        use std::os::unix::fs::MetadataExt;
        let p = self.path.display();
        if self.path.is_relative() {
            return Err(format!(
                "{p}: a relative path reached the daemon, which resolves nothing against its own working directory; \
                 use the omesh CLI of the daemon's version (it sends absolute paths)"
            ));
        }
        let namespace = "the daemon runs in another mount namespace (systemd PrivateTmp=, ProtectHome= or \
                         ReadOnlyPaths= in its unit, or a container); back up a path the daemon can see, or stop \
                         the daemon and run this backup in-process";
        match std::fs::symlink_metadata(&self.path) {
            Err(e) => Err(format!("{p}: you can see it but the daemon cannot ({e}): {namespace}")),
            Ok(m) if (m.dev(), m.ino()) != (self.dev, self.ino) => {
                Err(format!("{p}: the daemon sees a different file there than you do: {namespace}"))
            }
            Ok(_) => Ok(self.path.clone()),
        }
    }
}

impl ControlRequest {
    /// The options of a `Backup` request, for the daemon and for the CLI's
    /// in-process run alike: the caller's paths (and stream FIFO) as this
    /// process sees them, the stream opened, `--parent` resolved in this
    /// node's store, the config's settings joined
    /// ([`crate::config::NodeConfig::backup_options`]).
    pub async fn backup_options(self, rt: &Arc<NodeRuntime>) -> Result<omesh_core::backup::BackupOptions, NodeError> {
        let ControlRequest::Backup {
            paths,
            exclude,
            exclude_if_present,
            exclude_caches,
            one_file_system,
            image,
            tags,
            parent,
            stdin,
        } = self
        else {
            return Err(NodeError::Usage(format!("{self:?} is not a backup request")));
        };
        let (paths, image, stream) = tokio::task::spawn_blocking(move || {
            let paths = paths.iter().map(SeenPath::as_the_caller_sees).collect::<Result<Vec<_>, _>>()?;
            let image = image.as_ref().map(SeenPath::as_the_caller_sees).transpose()?;
            Ok::<_, String>((paths, image, stdin.as_ref().map(StreamRequest::open).transpose()?))
        })
        .await?
        .map_err(NodeError::Usage)?;
        rt.backup_request_options(
            paths,
            (exclude, exclude_if_present, exclude_caches),
            one_file_system,
            image,
            tags,
            parent.as_deref(),
            stream,
        )
        .await
    }
}

/// A stream to back up (`omesh backup --stdin` through the daemon): the
/// CLI writes it, framed ([`omesh_core::backup::stream::write_framed`]),
/// into a FIFO it made beside the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRequest {
    /// the FIFO, as the CLI sees it
    pub fifo: SeenPath,
    /// file name of the stream in the snapshot
    pub name: String,
}

impl StreamRequest {
    /// The stream, read from the FIFO (checked to be the one the caller
    /// made, and a FIFO); each read waits at most
    /// [`omesh_core::backup::stream::STREAM_IDLE`].
    pub fn open(&self) -> Result<omesh_core::backup::stream::StreamInput, String> {
        use omesh_core::backup::stream::{Fifo, FramedReader, STREAM_IDLE, StreamInput};
        let path = self.fifo.as_the_caller_sees()?;
        let fifo = Fifo::open(&path, STREAM_IDLE).map_err(|e| format!("{}: {e}", path.display()))?;
        StreamInput::new(&self.name, Box::new(FramedReader::new(fifo)))
    }
}

/// Backup progress counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackupProgress {
    /// Files done.
    pub files: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes added to the store.
    pub bytes_added: u64,
    /// Logical bytes of the files done.
    #[serde(default)]
    pub bytes: u64,
    /// What the run is expected to cover (its parent's size; 0 unknown).
    #[serde(default)]
    pub bytes_expected: u64,
    /// The snapshot is saved and being sent to the peers.
    #[serde(default)]
    pub replicating: bool,
    /// Record bytes this backup has sent so far, per peer or bucket.
    #[serde(default)]
    pub sent: Vec<(String, u64)>,
    /// The file being read.
    #[serde(default)]
    pub current: String,
}

/// The result of a request, one variant per request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", content = "result", rename_all = "snake_case")]
pub enum ControlResponse {
    /// `Ping`.
    Pong {
        /// node name
        node: String,
    },
    /// `Backup`.
    Backup(Box<MeshBackupReport>),
    /// `Snapshots`.
    Snapshots(Vec<SnapshotView>),
    /// `Status`.
    Status(Box<StatusView>),
    /// `ResidencyReport`.
    ResidencyReport(Vec<ResidencyRow>),
    /// `Forget`.
    Forget(ForgetReport),
    /// `Tag`.
    Tag(omesh_core::store::TagReport),
    /// `Gc`.
    Gc(GcAllReport),
    /// `Scrub`.
    Scrub(ScrubReport),
    /// `Sync`.
    Sync(SyncReport),
    /// `RestoreDone`.
    RestoreDone,
}

/// A line from the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReply {
    /// Progress counters of a backup.
    Progress(BackupProgress),
    /// Still working (sent every [`HEARTBEAT`] while there is nothing else
    /// to say).
    Alive,
    /// Final result.
    Done(ControlResponse),
    /// Failure, with its class (the CLI's exit code).
    Error {
        /// class
        class: ErrorClass,
        /// message
        message: String,
    },
}

/// A failed request, as the CLI receives it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// Class (the exit code).
    pub class: ErrorClass,
    /// The daemon's message.
    pub message: String,
}

impl From<NodeError> for Refused {
    fn from(e: NodeError) -> Self {
        Refused { class: e.class(), message: e.to_string() }
    }
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

/// Serve control connections until cancelled; every connection's task is
/// joined (after cancellation, aborted) before this returns.
pub async fn serve(listener: UnixListener, rt: Arc<NodeRuntime>, cancel: CancellationToken) {
    let mut tasks = JoinSet::new();
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
                    tasks.spawn(handle(s, rt.clone(), cancel.clone()));
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
    let mut line = serde_json::to_vec(r).expect("control replies serialize");
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(s: UnixStream, rt: Arc<NodeRuntime>, cancel: CancellationToken) {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let req: ControlRequest = match lines.next_line().await {
        Ok(Some(l)) => match serde_json::from_str(&l) {
            Ok(r) => r,
            Err(e) => {
                let m = format!("bad control request: {e}");
                let _ = send(&mut w, &ControlReply::Error { class: ErrorClass::Usage, message: m }).await;
                return;
            }
        },
        _ => return,
    };
    // the work, with its progress and a heartbeat going out meanwhile: the
    // CLI can tell a daemon that works from one that is frozen
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BackupProgress>(4);
    let work = answer(req, &rt, tx, &cancel);
    tokio::pin!(work);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            Some(p) = rx.recv() => {
                // the CLI may have gone away; the work continues
                let _ = send(&mut w, &ControlReply::Progress(p)).await;
                beat.reset();
            }
            _ = beat.tick() => {
                let _ = send(&mut w, &ControlReply::Alive).await;
            }
        }
    };
    let reply = match result {
        Ok(r) => ControlReply::Done(r),
        Err(e) => ControlReply::Error { class: e.class, message: e.message },
    };
    let _ = send(&mut w, &reply).await;
}

async fn answer(
    req: ControlRequest,
    rt: &Arc<NodeRuntime>,
    progress_out: tokio::sync::mpsc::Sender<BackupProgress>,
    cancel: &CancellationToken,
) -> Result<ControlResponse, Refused> {
    Ok(match req {
        ControlRequest::Ping => ControlResponse::Pong { node: rt.cfg.name.clone() },
        req @ ControlRequest::Backup { .. } => {
            let opts = req.backup_options(rt).await.map_err(|e| match e {
                e @ NodeError::Worker(_) => Refused::from(e),
                e => Refused { class: ErrorClass::Usage, message: e.to_string() },
            })?;
            let progress = Arc::new(Progress::default());
            // the backup runs as a task of its own: a CLI that goes away
            // does not stop it (it is joined here either way)
            let mut job = JoinSet::new();
            {
                let (rt, p) = (rt.clone(), progress.clone());
                job.spawn(async move { rt.backup_and_replicate(opts, p).await });
            }
            // record bytes each target had been sent before: the progress
            // shows what this backup sends to each
            let targets: Vec<String> =
                rt.cfg.peers.iter().map(|p| p.name.clone()).chain(rt.cfg.s3.iter().map(|t| t.name.clone())).collect();
            let sent = |n: &str| rt.counters.peer(n).bytes_sent.load(Ordering::Relaxed);
            let before: Vec<u64> = targets.iter().map(|n| sent(n)).collect();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    res = job.join_next() => {
                        let res = res.expect("one job");
                        break ControlResponse::Backup(Box::new(res.map_err(NodeError::from)??));
                    }
                    _ = tick.tick() => {
                        let p = BackupProgress {
                            files: progress.files.load(Ordering::Relaxed),
                            bytes_read: progress.bytes_read.load(Ordering::Relaxed),
                            bytes_added: progress.bytes_added.load(Ordering::Relaxed),
                            bytes: progress.bytes.load(Ordering::Relaxed),
                            bytes_expected: progress.bytes_expected.load(Ordering::Relaxed),
                            replicating: progress.replicating.load(Ordering::Relaxed),
                            sent: targets
                                .iter()
                                .zip(&before)
                                .map(|(n, b)| (n.clone(), sent(n).saturating_sub(*b)))
                                .filter(|(_, x)| *x > 0)
                                .collect(),
                            current: progress.current(),
                        };
                        // a frame the writer has no room for is skipped
                        let _ = progress_out.try_send(p);
                    }
                    _ = cancel.cancelled() => {
                        return Err(Refused { class: ErrorClass::Failed, message: "the daemon is shutting down".into() });
                    }
                }
            }
        }
        ControlRequest::Snapshots { source } => {
            ControlResponse::Snapshots(views::snapshots(rt, source.as_deref()).await?)
        }
        ControlRequest::ResidencyReport { since_ns } => {
            let st = rt.state.clone().ok_or(NodeError::NoState)?;
            let me = rt.cfg.name.clone();
            let rows = tokio::task::spawn_blocking(move || views::residency_report(&st, &me, since_ns))
                .await
                .map_err(NodeError::from)??;
            ControlResponse::ResidencyReport(rows)
        }
        ControlRequest::Forget { source, ids, dry_run, filter } => {
            ControlResponse::Forget(maintenance::forget(rt, source, ids, dry_run, filter).await?)
        }
        ControlRequest::Tag { ids, filter, change } => {
            ControlResponse::Tag(maintenance::tag(rt, ids, filter, change).await?)
        }
        ControlRequest::Gc => ControlResponse::Gc(maintenance::gc_all(rt).await),
        ControlRequest::Scrub { rate } => {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            ControlResponse::Scrub(maintenance::scrub_all(rt, Rate(rate), stop).await)
        }
        ControlRequest::Sync => ControlResponse::Sync(maintenance::sync_now(rt).await),
        ControlRequest::RestoreDone { ok, bytes, seconds } => {
            let m = &rt.metrics;
            m.restores.get_or_create(&crate::metrics::label("result", if ok { "ok" } else { "failed" })).inc();
            m.restore_seconds.observe(seconds);
            m.restore_bytes.inc_by(bytes);
            ControlResponse::RestoreDone
        }
        ControlRequest::Status => ControlResponse::Status(Box::new(views::status(rt).await?)),
    })
}

/// Whether a daemon is there on `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonAt {
    /// None: no socket, or nothing listening on it.
    None,
    /// One answered a ping.
    Answering,
    /// Something accepted the connection but did not answer within
    /// [`PING_TIMEOUT`]: a stopped (SIGSTOP) or wedged daemon, which still
    /// holds the stores.
    Silent,
}

/// Whether a daemon answers on `path` (within [`PING_TIMEOUT`]).
pub async fn daemon_at(path: &Path) -> DaemonAt {
    if !path.exists() {
        return DaemonAt::None;
    }
    match tokio::time::timeout(PING_TIMEOUT, call(path, &ControlRequest::Ping, |_| {})).await {
        Ok(Ok(Ok(ControlResponse::Pong { .. }))) => DaemonAt::Answering,
        Err(_) => DaemonAt::Silent,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => DaemonAt::Silent,
        Ok(_) => DaemonAt::None,
    }
}

/// Whether a daemon answers on `path` (within [`PING_TIMEOUT`]).
pub async fn daemon_running(path: &Path) -> bool {
    daemon_at(path).await == DaemonAt::Answering
}

/// Send a request and wait for its result; `progress` sees progress lines.
/// Outer error: cannot talk to the daemon, or it went silent for
/// [`SILENCE_LIMIT`] (`TimedOut`); inner error: it refused.
pub async fn call(
    path: &Path,
    req: &ControlRequest,
    mut progress: impl FnMut(&BackupProgress),
) -> std::io::Result<Result<ControlResponse, Refused>> {
    let silent = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the daemon on {} sent nothing for {} s: it is stopped or wedged (`systemctl status omesh`, `journalctl -u omesh`); what it was asked may still finish there",
                path.display(),
                SILENCE_LIMIT.as_secs()
            ),
        )
    };
    let s = tokio::time::timeout(SILENCE_LIMIT, UnixStream::connect(path)).await.map_err(|_| silent())??;
    let (r, mut w) = s.into_split();
    let mut line = serde_json::to_vec(req).expect("control requests serialize");
    line.push(b'\n');
    tokio::time::timeout(SILENCE_LIMIT, w.write_all(&line)).await.map_err(|_| silent())??;
    let mut lines = BufReader::new(r).lines();
    while let Some(l) = tokio::time::timeout(SILENCE_LIMIT, lines.next_line()).await.map_err(|_| silent())?? {
        match serde_json::from_str::<ControlReply>(&l) {
            Ok(ControlReply::Progress(p)) => progress(&p),
            Ok(ControlReply::Alive) => {}
            Ok(ControlReply::Done(v)) => return Ok(Ok(v)),
            Ok(ControlReply::Error { class, message }) => return Ok(Err(Refused { class, message })),
            Err(e) => return Err(std::io::Error::other(format!("bad reply from daemon: {e}"))),
        }
    }
    Err(std::io::Error::other("daemon closed the control connection without an answer"))
}
