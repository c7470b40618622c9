//! omesh node library: everything the `omesh` binary does, as a library.
//!
//! Layers (dependencies point down):
//! - [`cli`]: argument parsing and printing only;
//! - [`backup`], [`restore`], [`verify`]: operations on a store;
//! - [`store`], [`snapshot`]: the on-disk format;
//! - [`chunker`], [`crypto`], [`keyfile`]: pure building blocks.
//!
//! Wire and record formats live in the `omesh-proto` crate.

pub mod backup;
pub mod ca;
pub mod chunker;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod failpoint;
pub mod fsutil;
pub mod keyfile;
pub mod lifecycle;
pub mod mesh;
pub mod node;
pub mod objects;
pub mod residency;
pub mod restore;
pub mod s3;
pub mod sample;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod transport;
pub mod verify;

pub use omesh_proto as proto;
