//! The state one backup run shares between its stages, and the items that
//! flow between them over bounded channels.

use super::exclude::Excludes;
use super::meta::NameCache;
use super::options::{BackupError, Progress, Warning};
use crate::chunker::Chunker;
use crate::snapshot::{Content, Extent, Node};
use crate::store::{Store, StoreError};
use crossbeam_channel::{Receiver, Sender};
use omesh_proto::{ObjectId, ObjectKind, Seal};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// A value produced by one thread and awaited by another.
pub(super) struct Slot<T> {
    pub(super) v: Mutex<Option<T>>,
    pub(super) cv: Condvar,
}

impl<T: Clone> Slot<T> {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Slot { v: Mutex::new(None), cv: Condvar::new() })
    }
    pub(super) fn set(&self, v: T) {
        *self.v.lock().expect("slot lock") = Some(v);
        self.cv.notify_all();
    }
    pub(super) fn wait(&self) -> T {
        let mut g = self.v.lock().expect("slot lock");
        while g.is_none() {
            g = self.cv.wait(g).expect("slot lock");
        }
        g.clone().expect("checked")
    }
}

/// What a reader produced for one file.
#[derive(Clone, Debug)]
pub(super) struct FileOut {
    pub(super) size: u64,
    pub(super) content: Content,
    pub(super) warning: Option<String>,
    pub(super) unreadable: bool,
}

pub(super) type FileSlot = Arc<Slot<FileOut>>;

pub(super) type DirSlot = Arc<Slot<ObjectId>>;

pub(super) struct FileJob {
    pub(super) path: PathBuf,
    pub(super) image: bool,
    /// (device, inode) the walk's lstat saw: the opened file must be that
    /// one, or the path was replaced in between.
    pub(super) ident: Option<(u64, u64)>,
    /// A stream to read instead of `path` (`--stdin`).
    pub(super) stream: Option<super::stream::StreamInput>,
    pub(super) slot: FileSlot,
}

pub(super) struct ChunkJob {
    pub(super) data: Vec<u8>,
    pub(super) zero_is_hole: bool,
    pub(super) seq: usize,
    pub(super) reply: Sender<(usize, Result<Extent, String>)>,
}

pub(super) struct PackItem {
    pub(super) kind: ObjectKind,
    pub(super) sealed: crate::store::Sealed,
}

pub(super) enum Wait {
    Ready,
    File(FileSlot),
    Dir(DirSlot),
}

pub(super) struct PendingNode {
    pub(super) node: Node,
    pub(super) wait: Wait,
}

pub(super) struct PendingDir {
    pub(super) nodes: Vec<PendingNode>,
    pub(super) slot: DirSlot,
}

/// Shared state of one run.
pub(super) struct Ctx<'s> {
    pub(super) store: &'s Store,
    pub(super) chunker: Chunker,
    pub(super) excludes: Excludes,
    pub(super) one_fs: bool,
    pub(super) names: NameCache,
    pub(super) progress: Arc<Progress>,
    pub(super) warnings: Mutex<Vec<Warning>>,
    pub(super) failed: AtomicBool,
    pub(super) error: Mutex<Option<BackupError>>,
    pub(super) counts: Mutex<Counts>,
    pub(super) skip_dir: Option<(u64, u64)>,
    /// Tokens: how many large files may be chunked at once.
    pub(super) large_files: (Sender<()>, Receiver<()>),
    /// A dry run: the objects it would add (id, seal and record size),
    /// kept here instead of claimed in the store, where another writer
    /// could dedup against an object that will never be written.
    pub(super) dry: Option<Mutex<HashMap<ObjectId, (Seal, u64)>>>,
}

#[derive(Default, Clone, Copy)]
pub(super) struct Counts {
    pub(super) files: u64,
    pub(super) dirs: u64,
    pub(super) others: u64,
    pub(super) bytes: u64,
    pub(super) unchanged: u64,
}

impl Ctx<'_> {
    pub(super) fn warn(&self, path: &Path, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(path = %path.display(), "{message}");
        self.warnings.lock().expect("warnings lock").push(Warning { path: path.display().to_string(), message });
    }
    pub(super) fn fail(&self, e: BackupError) {
        let mut g = self.error.lock().expect("error lock");
        if g.is_none() {
            *g = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

pub(super) fn put_object(
    ctx: &Ctx<'_>,
    kind: ObjectKind,
    plain: &[u8],
    links: Vec<ObjectId>,
    pack_tx: &Sender<PackItem>,
) -> Result<ObjectId, StoreError> {
    // the id covers the links' seals, so they are looked up first; an
    // identical subtree then has the identical id and is not sealed again
    let seals = link_seals(ctx, &links)?;
    let id = ctx.store.keys()?.id_for(kind, &crate::crypto::Links::v2(&links, &seals), plain);
    if !have(ctx, &id)? {
        let sealed = ctx.store.seal_linked(kind, plain, links, seals)?;
        debug_assert_eq!(id, sealed.id);
        queue(ctx, pack_tx, kind, sealed)?;
    }
    Ok(id)
}

/// Claim a sealed object and hand it to the packer (unless another writer
/// claimed it first).
pub(super) fn queue(
    ctx: &Ctx<'_>,
    pack_tx: &Sender<PackItem>,
    kind: ObjectKind,
    sealed: crate::store::Sealed,
) -> Result<(), StoreError> {
    if let Some(dry) = &ctx.dry {
        let mut d = dry.lock().expect("dry lock");
        if let std::collections::hash_map::Entry::Vacant(v) = d.entry(sealed.id) {
            v.insert((sealed.seal, sealed.bytes.len() as u64));
            ctx.progress.bytes_added.fetch_add(sealed.bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        return Ok(());
    }
    if ctx.store.claim(&sealed.id, sealed.seal)? {
        pack_tx.send(PackItem { kind, sealed }).map_err(|_| StoreError::Io {
            op: "queueing object for",
            path: ctx.store.dir().into(),
            source: std::io::Error::other("packer stopped"),
        })?;
    }
    Ok(())
}

/// Whether the store has `id`, or this dry run would have written it.
pub(super) fn have(ctx: &Ctx<'_>, id: &ObjectId) -> Result<bool, StoreError> {
    if let Some(d) = &ctx.dry
        && d.lock().expect("dry lock").contains_key(id)
    {
        return Ok(true);
    }
    ctx.store.contains(id)
}

/// The seals of `links`: of objects this dry run would have written, or
/// as the store knows them ([`crate::store::Store::link_seals`]).
pub(super) fn link_seals(ctx: &Ctx<'_>, links: &[ObjectId]) -> Result<Vec<Seal>, StoreError> {
    let Some(dry) = &ctx.dry else { return ctx.store.link_seals(links) };
    let d = dry.lock().expect("dry lock");
    let rest: Vec<ObjectId> = links.iter().filter(|l| !d.contains_key(l)).copied().collect();
    let mut found = ctx.store.link_seals(&rest)?.into_iter();
    Ok(links.iter().map(|l| d.get(l).map(|(s, _)| *s).unwrap_or_else(|| found.next().expect("one per link"))).collect())
}

impl Ctx<'_> {
    /// What this dry run would have added.
    pub(super) fn dry_stats(&self) -> crate::store::WriteStats {
        let d = self.dry.as_ref().map(|d| d.lock().expect("dry lock"));
        let (objects, bytes) = d.map(|d| (d.len() as u64, d.values().map(|(_, n)| n).sum())).unwrap_or((0, 0));
        crate::store::WriteStats { objects, bytes, packs: 0 }
    }
}
