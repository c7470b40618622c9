//! The node's errors: each names what is wrong and what to do, and says
//! which class it belongs to ([`ErrorClass`]), which the CLI turns into its
//! exit code and the control socket carries to it.

use omesh_proto::ObjectId;
use std::path::PathBuf;

/// Node-level errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// TLS / network setup.
    #[error(transparent)]
    Transport(#[from] omesh_net::transport::TransportError),
    /// Store.
    #[error(transparent)]
    Store(#[from] omesh_core::store::StoreError),
    /// State database.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// Backup.
    #[error(transparent)]
    Backup(#[from] omesh_core::backup::BackupError),
    /// Restore.
    #[error(transparent)]
    Restore(#[from] omesh_core::restore::RestoreError),
    /// An S3 target cannot be set up.
    #[error(transparent)]
    S3(#[from] omesh_s3::S3Error),
    /// Residency refusal (a destination outside the allowed networks).
    #[error("residency: {0}")]
    Residency(String),
    /// The data directory cannot be created.
    #[error("cannot create data_dir {}: {source}", path.display())]
    DataDir {
        /// data_dir
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// An address the daemon must listen on cannot be used.
    #[error("{}: {setting} = {value:?}{}: {source}", config.display(), if *resolve { " cannot be resolved" } else { "" })]
    Listen {
        /// config file
        config: PathBuf,
        /// `listen` or `[metrics] listen`
        setting: &'static str,
        /// the address as configured
        value: String,
        /// resolving (rather than binding) failed
        resolve: bool,
        /// cause
        source: std::io::Error,
    },
    /// The control socket cannot be bound.
    #[error("control socket {}: {source}", path.display())]
    ControlSocket {
        /// socket path
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// This process has no state database (read-only CLI run).
    #[error("no state database")]
    NoState,
    /// No key for a source on this node.
    #[error(
        "no key for source {source_name:?} on this node ({} missing); import the exported key with `omesh key import FILE --config {}`",
        key_path.display(),
        config.display()
    )]
    NoKey {
        /// source
        source_name: String,
        /// where the key would be
        key_path: PathBuf,
        /// the node's config
        config: PathBuf,
    },
    /// `--from NAME` names no target.
    #[error("--from {name}: not a [[peer]] or [[s3]] target in {}", config.display())]
    UnknownTarget {
        /// the name given
        name: String,
        /// the node's config
        config: PathBuf,
    },
    /// No snapshot of the source is reachable at all.
    #[error("no snapshots of {source_name} are reachable{}", if unreachable.is_empty() { String::new() } else { format!("; could not ask {unreachable}") })]
    NoSnapshots {
        /// the source
        source_name: String,
        /// the targets that could not be asked, and why ("" when every
        /// target answered and none holds one)
        unreachable: String,
    },
    /// No reachable snapshot matches a spec.
    #[error("no reachable snapshot matches {0:?}; list them with `omesh snapshots --config FILE [--source NODE]`")]
    NoMatch(String),
    /// A snapshot prefix matches several (the spec, the candidates).
    #[error("snapshot prefix {0:?} is ambiguous: matches {1}; give more of the id")]
    Ambiguous(String, String),
    /// The snapshot is known but no holder can be reached.
    #[error("snapshot {} of {source_name} is not held by any reachable node", snapshot.short())]
    NotReachable {
        /// snapshot
        snapshot: ObjectId,
        /// source
        source_name: String,
    },
    /// A request the node cannot carry out as given (what to change, in
    /// words the operator can act on).
    #[error("{0}")]
    Usage(String),
    /// A retention decision could not be made for a store.
    #[error("{0}")]
    Retention(#[from] omesh_core::store::forget::RetentionError),
    /// A worker task failed (a bug: it panicked, or the runtime is
    /// shutting down).
    #[error("worker task failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// What kind of failure an error is: the CLI maps each to its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The operation failed.
    Failed,
    /// Wrong command line or configuration.
    Usage,
    /// Finished with warnings.
    Warnings,
    /// Damaged or missing data.
    Damage,
    /// The store is in use by another process.
    Busy,
}

impl NodeError {
    /// The class of this error.
    pub fn class(&self) -> ErrorClass {
        use omesh_core::store::StoreError;
        match self {
            NodeError::Config(_)
            | NodeError::Residency(_)
            | NodeError::NoKey { .. }
            | NodeError::UnknownTarget { .. }
            | NodeError::NoMatch(_)
            | NodeError::Usage(_)
            | NodeError::Ambiguous(..) => ErrorClass::Usage,
            NodeError::Store(StoreError::Locked { .. }) => ErrorClass::Busy,
            NodeError::Store(s) if s.is_damage() => ErrorClass::Damage,
            NodeError::Store(s) if s.is_usage() => ErrorClass::Usage,
            NodeError::Transport(omesh_net::transport::TransportError::Tls(_)) => ErrorClass::Usage,
            _ => ErrorClass::Failed,
        }
    }
}
