//! The garbage collector's own database, `DIR/gc.redb`: marks, the
//! condemned set and its batch record, so a killed run resumes and a
//! restarted store still rescues what a writer reuses.

use super::hooks::CondemnedSet;
use omesh_proto::ObjectId;
use redb::{ReadableDatabase, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) const MARKS: TableDefinition<[u8; 32], ()> = TableDefinition::new("marks");
pub(super) const MARKED_SNAPSHOTS: TableDefinition<[u8; 32], ()> = TableDefinition::new("marked_snapshots");
/// Marked objects whose links are not marked yet (the mark's frontier).
pub(super) const FRONTIER: TableDefinition<[u8; 32], ()> = TableDefinition::new("frontier");
pub(super) const CONDEMNED: TableDefinition<[u8; 32], ()> = TableDefinition::new("condemned");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The garbage collection database cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[error("garbage collection state {path}: {message}")]
pub struct GcDbError {
    /// file
    pub path: String,
    /// cause
    pub message: String,
}

pub(super) struct GcDb {
    pub(super) db: Arc<redb::Database>,
    path: String,
}

/// Open `gc.redb` files of this process. redb refuses to open a file twice
/// (even in one process) and a read transaction fails once its database is
/// closed, so a condemned view keeps its database open and a later
/// [`GcDb::open`] of the same store shares it.
static OPEN_DBS: std::sync::LazyLock<std::sync::Mutex<HashMap<PathBuf, std::sync::Weak<redb::Database>>>> =
    std::sync::LazyLock::new(Default::default);

/// The condemned set as the store sees it (one read transaction, on a
/// database kept open as long as the view lives).
struct CondemnedView {
    table: redb::ReadOnlyTable<[u8; 32], ()>,
    _db: Arc<redb::Database>,
}

/// Stand-in when the garbage collection state cannot be read at store
/// open: every reused object counts as rescued (the safe side).
struct AllCondemned;

impl CondemnedSet for AllCondemned {
    fn contains(&self, _id: &ObjectId) -> bool {
        true
    }
}

impl CondemnedSet for CondemnedView {
    fn contains(&self, id: &ObjectId) -> bool {
        // an unreadable answer counts as condemned: rescuing is the safe side
        self.table.get(id.0).map(|v| v.is_some()).unwrap_or(true)
    }
}

/// A pending condemned set.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Batch {
    pub(super) condemned_at_ns: i64,
    pub(super) instance: u64,
    pub(super) sessions: Vec<u64>,
    pub(super) objects: u64,
}

impl GcDb {
    pub(super) fn open(dir: &Path) -> Result<GcDb, GcDbError> {
        let path = dir.join("gc.redb");
        let p = path.display().to_string();
        let mut reg = OPEN_DBS.lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|_, w| w.strong_count() > 0);
        let db = match reg.get(&path).and_then(|w| w.upgrade()) {
            Some(db) => db,
            None => {
                let db = Arc::new(
                    redb::Builder::new()
                        .set_cache_size(16 << 20)
                        .create(&path)
                        .map_err(|e| GcDbError { path: p.clone(), message: e.to_string() })?,
                );
                reg.insert(path.clone(), Arc::downgrade(&db));
                db
            }
        };
        let g = GcDb { db, path: p };
        let tx = g.db.begin_write().map_err(|e| g.err(e))?;
        {
            tx.open_table(MARKS).map_err(|e| g.err(e))?;
            tx.open_table(FRONTIER).map_err(|e| g.err(e))?;
            tx.open_table(MARKED_SNAPSHOTS).map_err(|e| g.err(e))?;
            tx.open_table(CONDEMNED).map_err(|e| g.err(e))?;
            tx.open_table(META).map_err(|e| g.err(e))?;
        }
        tx.commit().map_err(|e| g.err(e))?;
        Ok(g)
    }

    pub(super) fn err(&self, e: impl std::fmt::Display) -> GcDbError {
        GcDbError { path: self.path.clone(), message: e.to_string() }
    }

    pub(super) fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, GcDbError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(META).map_err(|e| self.err(e))?;
        Ok(t.get(key).map_err(|e| self.err(e))?.map(|v| v.value().to_vec()))
    }

    pub(super) fn set_meta(&self, key: &str, value: Option<&[u8]>) -> Result<(), GcDbError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(META).map_err(|e| self.err(e))?;
            match value {
                Some(v) => {
                    t.insert(key, v).map_err(|e| self.err(e))?;
                }
                None => {
                    t.remove(key).map_err(|e| self.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub(super) fn batch(&self) -> Result<Option<Batch>, GcDbError> {
        Ok(self.meta("batch")?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Start a fresh mark (drop the previous run's marks).
    pub(super) fn reset_marks(&self) -> Result<(), GcDbError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.delete_table(MARKS).map_err(|e| self.err(e))?;
        tx.delete_table(FRONTIER).map_err(|e| self.err(e))?;
        tx.delete_table(MARKED_SNAPSHOTS).map_err(|e| self.err(e))?;
        tx.open_table(MARKS).map_err(|e| self.err(e))?;
        tx.open_table(FRONTIER).map_err(|e| self.err(e))?;
        tx.open_table(MARKED_SNAPSHOTS).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    pub(super) fn clear_condemned(&self) -> Result<(), GcDbError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.delete_table(CONDEMNED).map_err(|e| self.err(e))?;
        tx.open_table(CONDEMNED).map_err(|e| self.err(e))?;
        tx.open_table(META).map_err(|e| self.err(e))?.remove("batch").map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    pub(super) fn view(&self) -> Result<Arc<dyn CondemnedSet>, GcDbError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(CONDEMNED).map_err(|e| self.err(e))?;
        Ok(Arc::new(CondemnedView { table, _db: self.db.clone() }))
    }
}

/// The batch condemned by an earlier run of the store in `dir` (read when
/// a store is opened for writing): until it is swept, a writer that reuses
/// one of its objects rescues it. `None` when nothing is pending.
pub fn pending_condemned(dir: &Path) -> Option<Arc<dyn CondemnedSet>> {
    if !dir.join("gc.redb").exists() {
        return None;
    }
    let pending = GcDb::open(dir).and_then(|db| Ok(if db.batch()?.is_some() { Some(db.view()?) } else { None }));
    match pending {
        Ok(view) => view,
        Err(e) => {
            // writers must still rescue what they reuse: a later run may
            // read the state again and sweep
            tracing::warn!(store = %dir.display(), error = %e, "cannot read the garbage collection state; every reused object counts as rescued until the next run");
            Some(Arc::new(AllCondemned))
        }
    }
}
