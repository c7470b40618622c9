//! The node's errors: each names what is wrong and what to do.

/// Node-level errors (each names what is wrong and what to do).
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
    /// Residency refusal (a destination outside the allowed networks).
    #[error("residency: {0}")]
    Residency(String),
    /// Anything else, with its explanation.
    #[error("{0}")]
    Other(String),
}

/// CLI exit code for a node error.
pub fn exit_code(e: &NodeError) -> u8 {
    match e {
        NodeError::Config(_) => 2,
        NodeError::Store(omesh_core::store::StoreError::Locked { .. }) => 5,
        NodeError::Store(s) if s.is_damage() => 4,
        NodeError::Store(
            omesh_core::store::StoreError::NoKey(_)
            | omesh_core::store::StoreError::WrongKey { .. }
            | omesh_core::store::StoreError::KeyFile(_),
        ) => 2,
        NodeError::Residency(_) => 2,
        NodeError::Transport(omesh_net::transport::TransportError::Tls(_)) => 2,
        _ => 1,
    }
}
