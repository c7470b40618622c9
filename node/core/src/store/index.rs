//! The object index: object id → (pack, offset, length, kind, seal), in redb.
//!
//! The index is a cache of what the packs say: it can always be rebuilt by
//! scanning them (`omesh repair index`), and a store opened for writing
//! adds any pack the index does not know (a crash between a pack's rename
//! and its index commit leaves exactly that). Memory stays flat as the
//! store grows: lookups go through redb's page cache, capped at
//! [`CACHE_BYTES`].

use super::pack::{PackEntry, PackInfo};
use omesh_proto::{ObjectId, ObjectKind, Seal};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// redb page cache limit.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// id → (pack seq, offset, len, kind, seal). 32-bit pack numbers and
/// offsets keep an entry at 77 bytes (packs are at most 1 GiB). The seal is
/// computed by this store from the bytes it wrote or received.
const OBJECTS: TableDefinition<[u8; 32], Entry> = TableDefinition::new("objects.v2");
/// The table of format-1 indexes (no seals): its presence makes a writing
/// open rebuild the index from the packs.
const OBJECTS_V1: &str = "objects";
type Entry = (u32, u32, u32, u8, [u8; 32]);
/// pack seq → (pack hash, size)
const PACKS: TableDefinition<u64, ([u8; 32], u64)> = TableDefinition::new("packs");
/// pack hash → pack seq
const PACK_BY_HASH: TableDefinition<[u8; 32], u64> = TableDefinition::new("pack_by_hash");
/// meta: "next_pack_seq"
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Location of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Pack sequence number (index-local).
    pub pack: u64,
    /// Offset in the pack.
    pub offset: u64,
    /// Record length.
    pub len: u32,
    /// Object kind.
    pub kind: ObjectKind,
    /// Seal of the record (BLAKE3 of its bytes before the check).
    pub seal: Seal,
}

/// Index errors carry redb's message; the store adds the path.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IndexError(pub String);

fn e<E: std::fmt::Display>(x: E) -> IndexError {
    IndexError(x.to_string())
}

/// Why the index could not be opened for writing.
#[derive(Debug, thiserror::Error)]
pub enum OpenRwError {
    /// The operating system refused a read or a write (disk full, failing,
    /// no permission): the index itself may well be intact.
    #[error("{0}")]
    Io(std::io::Error),
    /// The file is not a usable index (damaged, or a format this version
    /// cannot read).
    #[error("{0}")]
    Unusable(IndexError),
}

fn rw_err<E: Into<redb::Error>>(x: E) -> OpenRwError {
    match x.into() {
        // the operating system refused (ENOSPC, EDQUOT, EIO, EACCES…); redb
        // reports what it found in the file as I/O errors too, but without
        // an OS error number (a wrong magic number, a short file)
        redb::Error::Io(io) if io.raw_os_error().is_some() => OpenRwError::Io(io),
        redb::Error::PreviousIo => OpenRwError::Io(std::io::Error::other("an earlier write to the index failed")),
        other => OpenRwError::Unusable(IndexError(other.to_string())),
    }
}

fn loc((pack, offset, len, kind, seal): Entry) -> Location {
    Location {
        pack: pack as u64,
        offset: offset as u64,
        len,
        kind: ObjectKind::from_u8(kind).unwrap_or(ObjectKind::Blob),
        seal: Seal(seal),
    }
}

fn entry(seq: u64, en: &PackEntry) -> Result<Entry, IndexError> {
    Ok((u32::try_from(seq).map_err(e)?, u32::try_from(en.offset).map_err(e)?, en.len, en.kind as u8, en.seal.0))
}

enum Db {
    Rw(redb::Database),
    Ro(redb::ReadOnlyDatabase),
}

type ObjectsTable = redb::ReadOnlyTable<[u8; 32], Entry>;
type PacksTable = redb::ReadOnlyTable<u64, ([u8; 32], u64)>;

/// Read-only tables of one read transaction, shared by all lookups until
/// this process commits again. redb takes file locks for every read
/// transaction in multi-process mode; opening one per object lookup made
/// restores and dedup checks syscall-bound.
struct Snapshot {
    generation: u64,
    objects: Arc<ObjectsTable>,
    packs: Arc<PacksTable>,
}

/// Open index.
pub struct Index {
    db: Db,
    generation: std::sync::atomic::AtomicU64,
    cached: std::sync::RwLock<Option<Snapshot>>,
}

fn create_tables(db: &redb::Database) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        tx.open_table(OBJECTS)?;
        tx.open_table(PACKS)?;
        tx.open_table(PACK_BY_HASH)?;
        tx.open_table(META)?;
    }
    tx.commit()?;
    Ok(())
}

impl Index {
    /// Open (or create) for writing; this process becomes the only writer.
    /// An error says whether the disk refused ([`OpenRwError::Io`]: leave
    /// the file alone) or the file is unusable.
    pub fn open_rw(path: &Path) -> Result<Self, OpenRwError> {
        let mut b = redb::Builder::new();
        b.set_cache_size(CACHE_BYTES).set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
        let db = b.create(path).map_err(rw_err)?;
        {
            use redb::TableHandle;
            let tx = db.begin_write().map_err(rw_err)?;
            let tables: Vec<_> = tx.list_tables().map_err(rw_err)?.collect();
            if tables.iter().any(|t| t.name() == OBJECTS_V1) {
                // a format-1 index has no seals: start empty, and the
                // store's reconcile indexes every pack again, seals included
                tracing::info!(index = %path.display(), "index from format 1: rebuilding it from the packs, with seals");
                for t in tables {
                    tx.delete_table(t).map_err(rw_err)?;
                }
            }
            tx.commit().map_err(rw_err)?;
        }
        create_tables(&db).map_err(rw_err)?;
        Ok(Index { db: Db::Rw(db), generation: Default::default(), cached: Default::default() })
    }

    /// An empty index in memory: a reader fills it from the packs (the
    /// store's reconcile) when the file cannot be used as it is.
    pub fn in_memory() -> Result<Self, IndexError> {
        let db = redb::Builder::new().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(e)?;
        create_tables(&db).map_err(e)?;
        Ok(Index { db: Db::Rw(db), generation: Default::default(), cached: Default::default() })
    }

    /// Open read-only alongside a writer in another process.
    pub fn open_ro(path: &Path) -> Result<Self, IndexError> {
        let mut b = redb::Builder::new();
        b.set_cache_size(CACHE_BYTES).set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
        let db = b.open_read_only(path).map_err(e)?;
        let current = {
            use redb::TableHandle;
            db.begin_read().map_err(e)?.list_tables().map_err(e)?.any(|t| t.name() == OBJECTS.name())
        };
        if !current {
            // a format-1 index, never opened for writing by this version:
            // read through an empty index in memory, so that the store
            // indexes its packs in memory (as for packs left unindexed)
            return Self::in_memory();
        }
        Ok(Index { db: Db::Ro(db), generation: Default::default(), cached: Default::default() })
    }

    /// The current shared tables (re-opened after a commit of ours).
    fn tables(&self) -> Result<(Arc<ObjectsTable>, Arc<PacksTable>), IndexError> {
        let g = self.generation.load(Ordering::Acquire);
        if let Some(s) = self.cached.read().expect("index cache lock").as_ref()
            && s.generation == g
        {
            return Ok((s.objects.clone(), s.packs.clone()));
        }
        let tx = self.read()?;
        let objects = Arc::new(tx.open_table(OBJECTS).map_err(e)?);
        let packs = Arc::new(tx.open_table(PACKS).map_err(e)?);
        *self.cached.write().expect("index cache lock") =
            Some(Snapshot { generation: g, objects: objects.clone(), packs: packs.clone() });
        Ok((objects, packs))
    }

    fn committed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        // drop the old read transaction now, so redb can reuse its pages
        *self.cached.write().expect("index cache lock") = None;
    }

    fn read(&self) -> Result<redb::ReadTransaction, IndexError> {
        match &self.db {
            Db::Rw(d) => d.begin_read().map_err(e),
            Db::Ro(d) => d.begin_read().map_err(e),
        }
    }

    fn rw(&self) -> Result<&redb::Database, IndexError> {
        match &self.db {
            Db::Rw(d) => Ok(d),
            Db::Ro(_) => Err(IndexError("index opened read-only".into())),
        }
    }

    /// Look up an object.
    pub fn get(&self, id: &ObjectId) -> Result<Option<Location>, IndexError> {
        let (t, _) = self.tables()?;
        Ok(t.get(id.0).map_err(e)?.map(|v| loc(v.value())))
    }

    /// Look up many objects.
    pub fn get_many(&self, ids: &[ObjectId]) -> Result<Vec<Option<Location>>, IndexError> {
        let (t, _) = self.tables()?;
        ids.iter().map(|id| Ok(t.get(id.0).map_err(e)?.map(|v| loc(v.value())))).collect()
    }

    /// Hash of a pack by sequence number.
    pub fn pack_hash(&self, seq: u64) -> Result<Option<[u8; 32]>, IndexError> {
        let (_, p) = self.tables()?;
        Ok(p.get(seq).map_err(e)?.map(|v| v.value().0))
    }

    /// All packs: (seq, hash, size).
    pub fn packs(&self) -> Result<Vec<(u64, [u8; 32], u64)>, IndexError> {
        let tx = self.read()?;
        let t = tx.open_table(PACKS).map_err(e)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(e)? {
            let (k, v) = r.map_err(e)?;
            let (h, s) = v.value();
            out.push((k.value(), h, s));
        }
        Ok(out)
    }

    /// Number of objects.
    pub fn object_count(&self) -> Result<u64, IndexError> {
        let tx = self.read()?;
        let t = tx.open_table(OBJECTS).map_err(e)?;
        t.len().map_err(e)
    }

    /// Visit every object (for verify and GC), in id order.
    pub fn for_each_object(&self, mut f: impl FnMut(ObjectId, Location)) -> Result<(), IndexError> {
        let tx = self.read()?;
        let t = tx.open_table(OBJECTS).map_err(e)?;
        for r in t.iter().map_err(e)? {
            let (k, v) = r.map_err(e)?;
            f(ObjectId(k.value()), loc(v.value()));
        }
        Ok(())
    }

    /// Up to `limit` objects with ids after `after`, in id order (a cursor
    /// that does not hold a read transaction between pages).
    pub fn objects_page(&self, after: Option<ObjectId>, limit: usize) -> Result<Vec<(ObjectId, Location)>, IndexError> {
        let tx = self.read()?;
        let t = tx.open_table(OBJECTS).map_err(e)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        let iter = match after {
            Some(a) => t.range((std::ops::Bound::Excluded(a.0), std::ops::Bound::Unbounded)).map_err(e)?,
            None => t.range::<[u8; 32]>(..).map_err(e)?,
        };
        for r in iter {
            let (k, v) = r.map_err(e)?;
            out.push((ObjectId(k.value()), loc(v.value())));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Record a durable pack and its objects in one transaction. Objects
    /// already indexed keep their first location. Returns the pack's seq.
    pub fn add_pack(&self, info: &PackInfo) -> Result<u64, IndexError> {
        self.add_pack_entries(&info.hash, info.size, &info.entries)
    }

    /// As [`Index::add_pack`], from parts.
    pub fn add_pack_entries(&self, hash: &[u8; 32], size: u64, entries: &[PackEntry]) -> Result<u64, IndexError> {
        let db = self.rw()?;
        let tx = db.begin_write().map_err(e)?;
        let seq;
        {
            let mut by_hash = tx.open_table(PACK_BY_HASH).map_err(e)?;
            if let Some(s) = by_hash.get(*hash).map_err(e)? {
                return Ok(s.value());
            }
            let mut meta = tx.open_table(META).map_err(e)?;
            seq = meta.get("next_pack_seq").map_err(e)?.map(|v| v.value()).unwrap_or(1);
            meta.insert("next_pack_seq", seq + 1).map_err(e)?;
            by_hash.insert(*hash, seq).map_err(e)?;
            let mut packs = tx.open_table(PACKS).map_err(e)?;
            packs.insert(seq, (*hash, size)).map_err(e)?;
            let mut objs = tx.open_table(OBJECTS).map_err(e)?;
            for en in entries {
                if objs.get(en.id.0).map_err(e)?.is_none() {
                    objs.insert(en.id.0, entry(seq, en)?).map_err(e)?;
                }
            }
        }
        tx.commit().map_err(e)?;
        self.committed();
        crate::failpoint::hit("index.after_commit");
        Ok(seq)
    }

    /// Forget a pack and every object located in it (the pack file is gone
    /// or being removed). Returns the number of objects dropped.
    pub fn remove_pack(&self, seq: u64) -> Result<u64, IndexError> {
        let db = self.rw()?;
        let tx = db.begin_write().map_err(e)?;
        let mut dropped = 0;
        {
            let mut packs = tx.open_table(PACKS).map_err(e)?;
            let hash = packs.remove(seq).map_err(e)?.map(|v| v.value().0);
            if let Some(h) = hash {
                tx.open_table(PACK_BY_HASH).map_err(e)?.remove(h).map_err(e)?;
            }
            let mut objs = tx.open_table(OBJECTS).map_err(e)?;
            let doomed: Vec<[u8; 32]> = objs
                .iter()
                .map_err(e)?
                .filter_map(|r| r.ok())
                .filter(|(_, v)| v.value().0 as u64 == seq)
                .map(|(k, _)| k.value())
                .collect();
            for k in doomed {
                objs.remove(k).map_err(e)?;
                dropped += 1;
            }
        }
        tx.commit().map_err(e)?;
        self.committed();
        Ok(dropped)
    }

    /// Rewrite the index file compactly (after a run added many entries).
    /// Needs exclusive use: no other handle of this process may read.
    pub fn compact(&mut self) -> Result<bool, IndexError> {
        *self.cached.write().expect("index cache lock") = None;
        match &mut self.db {
            Db::Rw(d) => d.compact().map_err(e),
            Db::Ro(_) => Ok(false),
        }
    }

    /// Drop objects' entries (garbage collection). Returns how many were
    /// indexed.
    pub fn remove_objects(&self, ids: &[ObjectId]) -> Result<u64, IndexError> {
        let db = self.rw()?;
        let tx = db.begin_write().map_err(e)?;
        let mut n = 0;
        {
            let mut objs = tx.open_table(OBJECTS).map_err(e)?;
            for id in ids {
                if objs.remove(id.0).map_err(e)?.is_some() {
                    n += 1;
                }
            }
        }
        tx.commit().map_err(e)?;
        self.committed();
        Ok(n)
    }

    /// In one transaction: index the `new` packs, moving to them every
    /// object they hold that is currently located in one of the `old`
    /// packs, then forget the `old` packs and anything still located in
    /// them. Returns the number of entries dropped that way.
    pub fn replace_packs(&self, new: &[PackInfo], old: &[u64]) -> Result<u64, IndexError> {
        let db = self.rw()?;
        let tx = db.begin_write().map_err(e)?;
        let old_set: std::collections::HashSet<u64> = old.iter().copied().collect();
        let mut dropped = 0;
        {
            let mut by_hash = tx.open_table(PACK_BY_HASH).map_err(e)?;
            let mut meta = tx.open_table(META).map_err(e)?;
            let mut packs = tx.open_table(PACKS).map_err(e)?;
            let mut objs = tx.open_table(OBJECTS).map_err(e)?;
            for info in new {
                let existing = by_hash.get(info.hash).map_err(e)?.map(|v| v.value());
                let seq = match existing {
                    Some(s) => s,
                    None => {
                        let s = meta.get("next_pack_seq").map_err(e)?.map(|v| v.value()).unwrap_or(1);
                        meta.insert("next_pack_seq", s + 1).map_err(e)?;
                        by_hash.insert(info.hash, s).map_err(e)?;
                        packs.insert(s, (info.hash, info.size)).map_err(e)?;
                        s
                    }
                };
                for en in &info.entries {
                    let cur = objs.get(en.id.0).map_err(e)?.map(|v| v.value());
                    if cur.is_some_and(|v| old_set.contains(&(v.0 as u64))) {
                        objs.insert(en.id.0, entry(seq, en)?).map_err(e)?;
                    }
                }
            }
            for seq in old {
                if let Some(h) = packs.remove(*seq).map_err(e)?.map(|v| v.value().0) {
                    by_hash.remove(h).map_err(e)?;
                }
            }
            if !old_set.is_empty() {
                let doomed: Vec<[u8; 32]> = objs
                    .iter()
                    .map_err(e)?
                    .filter_map(|r| r.ok())
                    .filter(|(_, v)| old_set.contains(&(v.value().0 as u64)))
                    .map(|(k, _)| k.value())
                    .collect();
                for k in doomed {
                    objs.remove(k).map_err(e)?;
                    dropped += 1;
                }
            }
        }
        tx.commit().map_err(e)?;
        self.committed();
        Ok(dropped)
    }

    /// Drop one object's entry (quarantine of a damaged object).
    pub fn remove_object(&self, id: &ObjectId) -> Result<(), IndexError> {
        let db = self.rw()?;
        let tx = db.begin_write().map_err(e)?;
        tx.open_table(OBJECTS).map_err(e)?.remove(id.0).map_err(e)?;
        tx.commit().map_err(e)?;
        self.committed();
        Ok(())
    }
}
