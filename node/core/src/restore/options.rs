//! What to restore where, what a restore reports, and how it fails before
//! writing anything.

use crate::backup::Warning;
use crate::objects::SourceError;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
/// What to restore where.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Target directory (files snapshots) or file/device (image snapshots).
    pub target: PathBuf,
    /// Restore only these snapshot paths (and what is below them).
    pub includes: Vec<String>,
    /// Leave out entries matching these patterns (as `backup --exclude`:
    /// a name anywhere, or a whole path when it has '/'), with all below.
    pub excludes: Vec<String>,
    /// Worker threads (default: available cores, at least 4 for I/O overlap).
    pub threads: Option<usize>,
}

/// Live counters.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Files completed.
    pub files: AtomicU64,
    /// Bytes written from fetched objects.
    pub bytes_written: AtomicU64,
    /// Bytes kept or copied from data already in the target.
    pub bytes_reused: AtomicU64,
    /// Total logical bytes planned (grows while planning; each hard-link
    /// group once).
    pub bytes_planned: AtomicU64,
    /// Logical bytes of the whole snapshot, known from its record at the
    /// start (0 when includes select part of it): the total to show before
    /// planning is done.
    pub bytes_total: AtomicU64,
    /// Set when planning is done: `bytes_planned` is then the whole total.
    pub planned_all: std::sync::atomic::AtomicBool,
}

impl RestoreProgress {
    /// (bytes done, bytes to do in all): right from the start (the
    /// snapshot's size) and exact once planning is done.
    pub fn done_and_total(&self) -> (u64, u64) {
        let done = self.bytes_written.load(Ordering::Relaxed) + self.bytes_reused.load(Ordering::Relaxed);
        let planned = self.bytes_planned.load(Ordering::Relaxed);
        let total = if self.planned_all.load(Ordering::Relaxed) {
            planned
        } else {
            planned.max(self.bytes_total.load(Ordering::Relaxed))
        };
        (done, total.max(done))
    }
}

/// Outcome of a restore.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreSummary {
    /// Snapshot id.
    pub snapshot: String,
    /// Target.
    pub target: String,
    /// Files restored or kept.
    pub files: u64,
    /// Files already identical in the target (only metadata applied).
    pub files_unchanged: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, fifos, devices, hardlinks.
    pub others: u64,
    /// Bytes written from fetched objects.
    pub bytes_written: u64,
    /// Bytes reused from the target.
    pub bytes_reused: u64,
    /// Seconds.
    pub seconds: f64,
    /// Entries that could not be restored. Non-empty means failure.
    pub errors: Vec<Warning>,
    /// Non-fatal problems (metadata that could not be applied).
    pub warnings: Vec<Warning>,
}

/// Errors that stop a restore before it writes anything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// Target problem.
    #[error("restore target {path}: {reason}")]
    Target {
        /// target
        path: PathBuf,
        /// what is wrong
        reason: String,
    },
    /// An include path is not valid.
    #[error("--include {0:?}: {1}")]
    Include(String, String),
    /// The snapshot or its trees cannot be read.
    #[error("{0}")]
    Source(#[from] SourceError),
    /// Internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}
