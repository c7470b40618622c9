//! What garbage collection needs from a live store: write sessions (the
//! backups in flight), the condemned set a writer must rescue from, and
//! the lock that makes presence answers atomic with respect to a sweep.
//!
//! [`GcHooks`] is plain state with its own methods; [`super::Store`]
//! holds one and exposes these methods, so this file knows nothing of the
//! store itself.

use omesh_proto::ObjectId;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Objects condemned by a garbage collection that has not swept yet (see
/// [`super::gc`]). The store asks it whenever it tells a writer that an
/// object is present, so such an object is rescued instead of swept.
pub trait CondemnedSet: Send + Sync {
    /// Whether `id` is condemned.
    fn contains(&self, id: &ObjectId) -> bool;
}

/// The garbage-collection state of one open store.
pub struct GcHooks {
    /// Read: a presence answer or a snapshot commit; write: a sweep.
    lock: RwLock<()>,
    condemned: RwLock<Option<Arc<dyn CondemnedSet>>>,
    rescued: Mutex<HashSet<ObjectId>>,
    /// (last session id, sessions in flight)
    sessions: Mutex<(u64, BTreeSet<u64>)>,
    /// Identifies this open store (sessions of an earlier process ended
    /// with it).
    instance: u64,
    /// Bumped whenever objects leave the index (sweep, quarantine).
    removals: AtomicU64,
}

impl Default for GcHooks {
    fn default() -> Self {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random source");
        GcHooks {
            lock: RwLock::default(),
            condemned: RwLock::default(),
            rescued: Mutex::default(),
            sessions: Mutex::default(),
            instance: u64::from_le_bytes(b),
            removals: AtomicU64::new(0),
        }
    }
}

/// A write session (one backup) in flight; ends when dropped.
pub struct Session<'a> {
    hooks: &'a GcHooks,
    id: u64,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.hooks.sessions.lock().unwrap_or_else(|e| e.into_inner()).1.remove(&self.id);
    }
}

impl GcHooks {
    /// Start a write session.
    pub fn session(&self) -> Session<'_> {
        let mut g = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let id = g.0;
        g.1.insert(id);
        Session { hooks: self, id }
    }

    /// (this open store's instance, session ids in flight).
    pub fn active_sessions(&self) -> (u64, Vec<u64>) {
        let g = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        (self.instance, g.1.iter().copied().collect())
    }

    /// Whether every session in `ids` (of `instance`) has ended.
    pub fn sessions_ended(&self, instance: u64, ids: &[u64]) -> bool {
        if instance != self.instance {
            return true;
        }
        let g = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().all(|i| !g.1.contains(i))
    }

    /// Shared: a presence answer or a commit.
    pub fn read_guard(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Exclusive: a sweep.
    pub fn write_guard(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Install (or clear) the condemned set; the rescued set starts empty.
    pub fn set_condemned(&self, c: Option<Arc<dyn CondemnedSet>>) {
        *self.condemned.write().unwrap_or_else(|e| e.into_inner()) = c;
        self.rescued.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether a condemned set is installed.
    pub fn has_condemned(&self) -> bool {
        self.condemned.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Condemned objects a writer was told are present.
    pub fn rescued(&self) -> HashSet<ObjectId> {
        self.rescued.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A writer was told these objects are present: rescue any that are
    /// condemned. `dir` names the store in the log.
    pub fn note_present(&self, ids: impl Iterator<Item = ObjectId>, dir: &std::path::Path) {
        let c = self.condemned.read().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = c.as_ref() {
            let hit: Vec<ObjectId> = ids.filter(|id| c.contains(id)).collect();
            if !hit.is_empty() {
                tracing::debug!(objects = hit.len(), store = %dir.display(), "condemned objects rescued by a writer");
                self.rescued.lock().unwrap_or_else(|e| e.into_inner()).extend(hit);
            }
        }
    }

    /// Objects are leaving the index.
    pub fn note_removal(&self) {
        self.removals.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes whenever objects leave the index.
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::Acquire)
    }
}
