//! The chunk store: encrypted objects in append-only packs, a redb index,
//! and snapshot records.
//!
//! ```text
//! DIR/omesh-store.toml   settings and format version (marks a store)
//! DIR/key                the source key, mode 0600 (unless --key-file)
//! DIR/lock               flock held by the one writer process
//! DIR/index.redb         object index (rebuildable from packs)
//! DIR/packs/hh/<h>.pack  immutable packs named by their BLAKE3
//! DIR/snapshots/<id>     one sealed snapshot record per file
//! DIR/tmp/               packs and snapshots being written
//! DIR/gc.redb            garbage collection progress (marks, condemned)
//! DIR/trash/             packs replaced by GC, deleted one grace period later
//! DIR/quarantine/        damaged records found by scrub, kept for inspection
//! ```
//!
//! Crash consistency (argued in full in `docs/store.md`): every file is
//! written under `tmp/`, fsynced, renamed into place and its directory
//! fsynced. Packs become durable before the index learns of them, and a
//! snapshot record is written only after every pack it depends on is
//! durable. So after a crash at any instant, every snapshot present is
//! complete; a pack the index missed is re-indexed on the next writable
//! open; a half-written pack is just a stray temp file, removed on open.
//!
//! A store does its blocking work on the caller's thread: async callers use
//! `spawn_blocking`.

pub mod config;
pub mod forget;
pub mod gc;
pub mod index;
pub mod keybind;
pub mod pack;
pub mod scrub;
pub mod walk;

mod atomic;
mod error;
mod gcdb;
mod hooks;
mod open;
mod read;
mod repack;
mod sink;
mod snapshots;

pub use atomic::write_atomic;
pub use config::STORE_VERSION;
pub use error::{Result, StoreError};
pub use hooks::{CondemnedSet, Session};
pub use open::{Access, InitOptions, KeySource, Store};
pub use read::open_record;
pub use repack::RepackStats;
pub use sink::{PackSink, Sealed, WriteStats};
pub use snapshots::{SnapshotList, TagItem, TagReport};
