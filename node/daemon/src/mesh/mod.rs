//! The mesh as this node uses it: the protocol pieces from `omesh-net`,
//! and restoring from several replicas ([`source`]).

pub mod source;

pub use omesh_core::policy::placement;
pub use omesh_net::mesh::stores::{open_own_store, open_source_read};
pub use omesh_net::mesh::{
    Counters, PeerCounters, SourceStore, StoreLayout, Stores, client, counters, replicate, server, stores,
};
