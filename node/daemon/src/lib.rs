//! The omesh node: its configuration, state database and runtime, the
//! daemon's services (schedules, sync, maintenance, scrub, the control
//! socket, metrics), and the views the CLI prints (snapshots, status,
//! restore preparation). It composes `omesh-core`, `omesh-net` and
//! `omesh-s3`; the `omesh` binary sits on top.

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
