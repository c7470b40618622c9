//! The mesh protocol's two sides and the stores behind them.
//!
//! - [`stores`]: this node's per-source stores (`data_dir/sources/NAME`):
//!   its own (with its key) and keyless replicas of other sources.
//! - [`server`]: request handlers, one QUIC stream per request, and the
//!   authorization decisions.
//! - [`client`]: a connection to one peer and the requests it can make.
//! - [`replicate`]: pushing one snapshot to one peer, sending only what it
//!   lacks.
//! - [`counters`]: bytes and objects per peer.

pub mod client;
pub mod counters;
pub mod replicate;
pub mod server;
pub mod stores;

pub use counters::{Counters, PeerCounters};
pub use omesh_core::store::keybind::KeyBinding;
pub use stores::{Allowance, SourceStore, StoreLayout, Stores, WriteRefused};
