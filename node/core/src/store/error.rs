//! Store errors: each names the store, file or object and says what to do.

use super::config::{CONFIG_FILE, STORE_VERSION};
use crate::keyfile::KeyFileError;
use crate::snapshot::FormatError;
use omesh_proto::ObjectId;
use std::path::{Path, PathBuf};

/// Errors from store operations. Messages name the store, file or object
/// and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// I/O on a specific path.
    #[error("{op} {path}: {source}")]
    Io {
        /// what we were doing
        op: &'static str,
        /// file or directory
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// Not a store.
    #[error("{0} is not an omesh store (no {CONFIG_FILE}); create one with `omesh init --store {0}`")]
    NotAStore(PathBuf),
    /// Refusing to init over something.
    #[error("{0} already exists and is not empty; `omesh init` needs a new or empty directory")]
    NotEmpty(PathBuf),
    /// Unsupported format.
    #[error("store {path} has format version {found}; this omesh reads versions 1 to {STORE_VERSION}")]
    Version {
        /// store
        path: PathBuf,
        /// found
        found: u32,
    },
    /// Bad config file.
    #[error("store settings {path} are invalid: {reason}")]
    Config {
        /// file
        path: PathBuf,
        /// problem
        reason: String,
    },
    /// Another process writes.
    #[error("store {path} is in use by another omesh process ({holder}); wait for it to finish or stop it")]
    Locked {
        /// store
        path: PathBuf,
        /// pid and command from the lock file
        holder: String,
    },
    /// Key file problem.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// Key does not belong to the store.
    #[error(
        "key {key_id} (from {key_path}) does not belong to store {store} (which expects key {expected}); pass the right --key-file or import it with `omesh key import`"
    )]
    WrongKey {
        /// store
        store: PathBuf,
        /// key file
        key_path: String,
        /// its id
        key_id: String,
        /// the store's key id
        expected: String,
    },
    /// Operation needs the key.
    #[error("store {0} has no key here; import the source's key with `omesh key import FILE --store {0}`")]
    NoKey(PathBuf),
    /// Index failure.
    #[error("index {path}: {reason}; `omesh repair index --store STORE` rebuilds it from the packs")]
    Index {
        /// index file
        path: PathBuf,
        /// cause
        reason: String,
    },
    /// Object not present.
    #[error("object {0} ({1}) is missing from the store")]
    Missing(ObjectId, &'static str),
    /// Object present but damaged.
    #[error("object {id} in pack {pack} at offset {offset} is damaged: {reason}")]
    Corrupt {
        /// object
        id: ObjectId,
        /// pack file
        pack: String,
        /// offset
        offset: u64,
        /// what failed
        reason: String,
    },
    /// Object decoded but violates the format.
    #[error("object {id} is malformed: {source}")]
    Format {
        /// object
        id: ObjectId,
        /// rule broken
        source: FormatError,
    },
    /// An object could not be read or decoded (message from the reader).
    #[error("{0}")]
    Object(String, bool),
    /// The record held under an id is not the one a verified parent names.
    #[error(
        "object {id} held here is not the record its parent names (seal {found}, the link names {expected}): it was forged or altered"
    )]
    NotNamed {
        /// object
        id: ObjectId,
        /// seal the parent names (short)
        expected: String,
        /// seal of the record held (short)
        found: String,
    },
    /// The snapshot record could not be signed.
    #[error("cannot sign the snapshot record: {0}")]
    Sign(String),
    /// Snapshot spec not found.
    #[error("no snapshot matches {0:?} in store {1}; list them with `omesh snapshots`")]
    SnapshotNotFound(String, PathBuf),
    /// Snapshot prefix ambiguous.
    #[error("snapshot prefix {0:?} is ambiguous: matches {1}")]
    Ambiguous(String, String),
    /// `latest` asked while some snapshot records cannot be read: the
    /// newest readable one may not be the latest.
    #[error(
        "`latest` cannot be decided in store {}: {count} snapshot record(s) cannot be read with this key (first: \
         {first}); a key exported before a key rotation cannot read what was written after it, so export the key \
         again from the current key file, or name the snapshot by id (`omesh snapshots` lists what can be read)",
        store.display()
    )]
    LatestUnknown {
        /// store
        store: PathBuf,
        /// unreadable records
        count: usize,
        /// the first one's error
        first: String,
    },
    /// A request that cannot be carried out as given (what to change).
    #[error("{0}")]
    Invalid(String),
    /// A SNAPSHOT argument among filtered snapshots names none or several.
    #[error(transparent)]
    Select(#[from] crate::snapshot::select::SelectError),
    /// A directory of the store this process cannot write.
    #[error(
        "{} belongs to uid {owner} and this process (uid {me}) cannot write it, so {what}; \
         it was probably made by an omesh command run in-process as another user (root with the daemon stopped). \
         Give the store back to the user the daemon runs as (`chown -R USER: {}`) and run the command again",
        path.display(),
        store.display()
    )]
    NotWritable {
        /// the directory
        path: PathBuf,
        /// the store
        store: PathBuf,
        /// its owner
        owner: u32,
        /// this process's effective uid
        me: u32,
        /// what cannot be done
        what: &'static str,
    },
}

impl StoreError {
    pub(super) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io { op, path: path.to_path_buf(), source }
    }
    /// Whether this error means stored data is damaged or missing (as
    /// opposed to configuration or environment).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::Missing(..)
                | StoreError::Corrupt { .. }
                | StoreError::Format { .. }
                | StoreError::Object(_, true)
        )
    }
    /// Whether this error is the caller's to fix (a wrong path, key,
    /// setting or snapshot name): exit code 2 in every mode.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            StoreError::NotAStore(_)
                | StoreError::NotEmpty(_)
                | StoreError::Version { .. }
                | StoreError::Config { .. }
                | StoreError::KeyFile(_)
                | StoreError::WrongKey { .. }
                | StoreError::NoKey(_)
                | StoreError::SnapshotNotFound(..)
                | StoreError::Ambiguous(..)
                | StoreError::Select(_)
                | StoreError::Invalid(_)
                | StoreError::LatestUnknown { .. }
        )
    }
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
