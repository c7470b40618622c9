//! What to back up and how, what a backup reports, and how it fails.

use crate::store::StoreError;
use omesh_proto::ObjectId;
use std::fs::{self};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

/// Which snapshot to use as parent for the fast path.
#[derive(Clone, Debug, Default)]
pub enum ParentChoice {
    /// Latest snapshot of the same source, host, paths and kind.
    #[default]
    Auto,
    /// No parent: read everything.
    None,
    /// This snapshot.
    Id(ObjectId),
}

/// What to back up and how.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Paths to back up (files or directories).
    pub paths: Vec<PathBuf>,
    /// Back up this block device or disk image as one file instead.
    pub image: Option<PathBuf>,
    /// Exclude patterns (see [`exclude`]).
    pub excludes: Vec<String>,
    /// Skip directories holding an entry of one of these names.
    pub exclude_if_present: Vec<String>,
    /// Skip directories holding a valid CACHEDIR.TAG.
    pub exclude_caches: bool,
    /// Commands run before and after.
    pub hooks: super::hook::Hooks,
    /// Do not descend into other file systems.
    pub one_file_system: bool,
    /// Parent for the fast path.
    pub parent: ParentChoice,
    /// Tags stored in the snapshot.
    pub tags: Vec<String>,
    /// Host name to record (default: this host's).
    pub hostname: Option<String>,
    /// Worker threads (default: available cores).
    pub threads: Option<usize>,
    /// Files read at once (default: 4 per core, 4 to 16).
    pub read_concurrency: Option<usize>,
    /// Back up this stream as one file instead of paths (`--stdin`).
    pub stdin: Option<super::stream::StreamInput>,
    /// Read and chunk everything, count what would be added, write nothing.
    pub dry_run: bool,
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files finished.
    pub files: AtomicU64,
    /// Logical bytes of finished files.
    pub bytes: AtomicU64,
    /// Bytes read from disk.
    pub bytes_read: AtomicU64,
    /// Record bytes added to the store.
    pub bytes_added: AtomicU64,
    /// Entries found by the walker.
    pub entries_seen: AtomicU64,
    /// Logical bytes this run is expected to cover (its parent snapshot's
    /// size; 0 without a parent): an estimate for a percentage.
    pub bytes_expected: AtomicU64,
    /// Set by the mesh layer once the snapshot is saved and it sends it to
    /// the peers.
    pub replicating: std::sync::atomic::AtomicBool,
    /// The file a reader opened last (for the progress line).
    pub current: std::sync::Mutex<std::path::PathBuf>,
}

impl Progress {
    /// A reader starts on `path`.
    pub fn reading(&self, path: &std::path::Path) {
        if let Ok(mut c) = self.current.try_lock() {
            c.clear();
            c.push(path);
        }
    }

    /// The file read last, if any.
    pub fn current(&self) -> String {
        self.current.lock().map(|c| c.display().to_string()).unwrap_or_default()
    }
}

/// One warning: a path and what went wrong.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Warning {
    /// Affected path.
    pub path: String,
    /// What happened.
    pub message: String,
}

/// Result of a backup.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BackupSummary {
    /// New snapshot id.
    #[serde(with = "omesh_proto::id::hex")]
    pub snapshot: ObjectId,
    /// Parent used for the fast path.
    #[serde(with = "omesh_proto::id::hex::option")]
    pub parent: Option<ObjectId>,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries.
    pub others: u64,
    /// Logical bytes of all files.
    pub bytes: u64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Bytes the store grew by.
    pub bytes_added: u64,
    /// Objects added.
    pub objects_added: u64,
    /// Files reused from the parent without reading.
    pub files_unchanged: u64,
    /// Wall time.
    pub seconds: f64,
    /// Warnings (unreadable or changed files).
    pub warnings: Vec<Warning>,
    /// A dry run: nothing was written, `snapshot` is all zeros, and
    /// `bytes_added`/`objects_added` are what a real run would add.
    #[serde(default)]
    pub dry_run: bool,
}

/// Backup failures (per-file problems are warnings, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A path given on the command line cannot be backed up.
    #[error("cannot back up {path}: {reason}")]
    Path {
        /// path
        path: PathBuf,
        /// why
        reason: String,
    },
    /// Invalid options.
    #[error("{0}")]
    Options(String),
    /// The pre hook failed (or timed out): nothing was backed up.
    #[error("{0}")]
    Hook(String),
    /// The stream to back up failed (its command exited non-zero, or it
    /// broke off): no snapshot was saved.
    #[error("{0}; no snapshot was saved")]
    Stream(String),
    /// A pipeline thread panicked (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

pub(super) type Res<T> = Result<T, BackupError>;

/// `p` made absolute against this process's working directory, with "."
/// and ".." removed lexically; the final component is not followed (a
/// symlink given as a root is backed up as the link). The one way a root
/// path becomes absolute, in a local backup and in the CLI before it asks
/// the daemon (which must never resolve a caller's path against its own
/// working directory).
pub fn absolute(p: &Path) -> Res<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| BackupError::Path { path: p.into(), reason: e.to_string() })?;
    // normalise "." and ".." lexically without following the final symlink
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    Ok(out)
}

/// Absolute, deduplicated roots; a root inside another is dropped.
pub(super) fn normalise_roots(paths: &[PathBuf]) -> Res<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = Vec::new();
    for p in paths {
        let a = absolute(p)?;
        fs::symlink_metadata(&a).map_err(|e| BackupError::Path { path: a.clone(), reason: e.to_string() })?;
        v.push(a);
    }
    v.sort();
    v.dedup();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in v {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    Ok(out)
}
