//! omesh node library: everything the `omesh` binary does, as a library.
//!
//! Layers (dependencies point down):
//! - [`cli`]: argument parsing and printing only;
//! - [`backup`], [`restore`], [`verify`]: operations on a store;
//! - [`store`], [`snapshot`]: the on-disk format;
//! - [`chunker`], [`crypto`], [`keyfile`]: pure building blocks.
//!
//! Wire and record formats live in the `omesh-proto` crate.

pub mod cli;
pub mod config;
pub mod lifecycle;
pub mod mesh;
pub mod node;
pub mod state;

pub use omesh_core::{
    backup, chunker, crypto, failpoint, fsutil, keyfile, objects, restore, sample, snapshot, store, verify,
};
pub use omesh_net::{ca, residency, transport};
pub use omesh_proto as proto;
pub use omesh_s3 as s3;
