//! What `omesh snapshots --config`, `omesh status` and `omesh restore
//! --config` compute: the node's view of the mesh, from its own stores, its
//! state database and live answers from its replica targets (one census
//! per command).

pub mod residency;
pub mod restore;
pub mod snapshots;
pub mod status;

pub use residency::residency_report;
pub use restore::{From, prepare_browse, prepare_restore};
pub use snapshots::{ReplicaView, SnapshotInfo, SnapshotView, snapshots, source_keys};
pub use status::{StatusView, status};
