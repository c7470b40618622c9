//! The state one restore shares between the planner and the workers:
//! open directories (released bottom-up so each directory's metadata is
//! applied after its contents), hardlink groups, file jobs and segments.

use super::fsops;
use super::options::RestoreProgress;
use crate::backup::Warning;
use crate::chunker::Chunker;
use crate::objects::ObjectSource;
use crate::snapshot::{Extent, Node};
use crossbeam_channel::Sender;
use omesh_proto::ObjectId;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Data extents per segment of a large file.
pub(super) const SEGMENT_EXTENTS: usize = 8;

pub(super) struct DirState {
    pub(super) fd: OwnedFd,
    /// Created by this restore: known to hold nothing we did not put there.
    pub(super) fresh: bool,
    pub(super) node: Option<Node>,
    pub(super) path: String,
    pub(super) pending: AtomicUsize,
    pub(super) parent: Option<Arc<DirState>>,
}

pub(super) enum LinkState {
    Waiting(Vec<LinkReq>),
    Ready(Arc<DirState>, OsString),
    Failed(String),
}

pub(super) struct LinkGroup {
    pub(super) state: Mutex<LinkState>,
}

pub(super) struct LinkReq {
    pub(super) dir: Arc<DirState>,
    pub(super) name: OsString,
    pub(super) path: String,
}

pub(super) struct FileTask {
    pub(super) dir: Arc<DirState>,
    pub(super) name: OsString,
    pub(super) node: Node,
    pub(super) path: String,
    pub(super) link: Option<Arc<LinkGroup>>,
}

/// A file being written in segments.
pub(super) struct FileJob {
    pub(super) task: FileTask,
    pub(super) out: File,
    /// Temporary name to rename over the final one when done.
    pub(super) tmp: Option<OsString>,
    /// Created directly under the final name (nothing was there): removed
    /// again if anything fails.
    pub(super) fresh: bool,
    pub(super) in_place: bool,
    pub(super) old: Option<OldFile>,
    pub(super) error: Mutex<Option<String>>,
}

pub(super) struct OldFile {
    pub(super) file: File,
    /// chunk id → offset of a matching chunk in the old file
    pub(super) map: HashMap<ObjectId, u64>,
}

pub(super) struct Segment {
    pub(super) job: Arc<FileJob>,
    pub(super) extents: Vec<(u64, Extent)>,
}

pub(super) struct Ctx<'a> {
    pub(super) src: &'a dyn ObjectSource,
    pub(super) image: bool,
    pub(super) umask: u32,
    pub(super) euid: u32,
    pub(super) egid: u32,
    pub(super) chunker: Chunker,
    pub(super) chown: bool,
    pub(super) progress: Arc<RestoreProgress>,
    pub(super) errors: Mutex<Vec<Warning>>,
    pub(super) warnings: Mutex<Vec<Warning>>,
    pub(super) counts: Mutex<(u64, u64, u64, u64)>, // files, unchanged, dirs, others
    pub(super) seg_tx: Sender<Segment>,
}

impl Ctx<'_> {
    pub(super) fn error(&self, path: &str, msg: impl Into<String>) {
        let message = msg.into();
        tracing::error!(path, "{message}");
        self.errors.lock().expect("errors lock").push(Warning { path: path.into(), message });
    }
    pub(super) fn warn(&self, path: &str, msg: impl Into<String>) {
        let message = msg.into();
        tracing::warn!(path, "{message}");
        self.warnings.lock().expect("warnings lock").push(Warning { path: path.into(), message });
    }
    pub(super) fn count(&self, f: impl FnOnce(&mut (u64, u64, u64, u64))) {
        f(&mut self.counts.lock().expect("counts lock"))
    }

    /// One child of `d` is finished; when all are, apply the directory's
    /// own metadata (after its contents, which would change its mtime) and
    /// tell its parent.
    pub(super) fn release(&self, d: &Arc<DirState>) {
        if d.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(n) = &d.node {
                match fsops::apply_meta_fd(&d.fd, n, self.chown) {
                    Ok(w) => w.into_iter().for_each(|w| self.warn(&d.path, w)),
                    Err(e) => self.warn(&d.path, format!("directory metadata not restored: {e}")),
                }
            }
            if let Some(p) = &d.parent {
                self.release(p);
            }
        }
    }
}

pub(super) fn add_link(ctx: &Ctx<'_>, g: &Arc<LinkGroup>, req: LinkReq) {
    let mut st = g.state.lock().expect("link lock");
    match &mut *st {
        LinkState::Waiting(v) => v.push(req),
        LinkState::Ready(d, n) => {
            let (d, n) = (d.clone(), n.clone());
            drop(st);
            do_link(ctx, &d, &n, req);
        }
        LinkState::Failed(m) => {
            let m = m.clone();
            drop(st);
            ctx.error(&req.path, format!("hard link not restored: {m}"));
            ctx.release(&req.dir);
        }
    }
}

pub(super) fn complete_link(ctx: &Ctx<'_>, g: &Arc<LinkGroup>, result: Result<(Arc<DirState>, OsString), String>) {
    let waiting = {
        let mut st = g.state.lock().expect("link lock");
        let new = match &result {
            Ok((d, n)) => LinkState::Ready(d.clone(), n.clone()),
            Err(m) => LinkState::Failed(m.clone()),
        };
        match std::mem::replace(&mut *st, new) {
            LinkState::Waiting(v) => v,
            _ => Vec::new(),
        }
    };
    for req in waiting {
        match &result {
            Ok((d, n)) => do_link(ctx, d, n, req),
            Err(m) => {
                ctx.error(&req.path, format!("hard link not restored: {m}"));
                ctx.release(&req.dir);
            }
        }
    }
}

pub(super) fn do_link(ctx: &Ctx<'_>, pdir: &Arc<DirState>, pname: &OsStr, req: LinkReq) {
    // already that link (a restore into its earlier result): nothing to do
    if fsops::same_file(&pdir.fd, pname, &req.dir.fd, &req.name) {
        ctx.release(&req.dir);
        return;
    }
    let tmp = fsops::tmp_name();
    let r = rustix::fs::linkat(&pdir.fd, pname, &req.dir.fd, &tmp, rustix::fs::AtFlags::empty())
        .map_err(std::io::Error::from)
        .and_then(|_| fsops::replace_at(&req.dir.fd, &tmp, &req.name));
    if let Err(e) = r {
        ctx.error(&req.path, format!("hard link not restored: {e}"));
    }
    ctx.release(&req.dir);
}
