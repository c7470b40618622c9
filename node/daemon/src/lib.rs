//! The omesh node: its configuration, state database and runtime, the
//! daemon's services (schedules, sync, maintenance, scrub, the control
//! socket, metrics), and the views the CLI prints (snapshots, status,
//! restore preparation). It composes `omesh-core`, `omesh-net` and
//! `omesh-s3`; the `omesh` binary sits on top.

pub mod census;
pub mod config;
pub mod error;
pub mod metrics;
pub mod replica;
pub mod runtime;
pub mod services;
pub mod source;
pub mod state;
pub mod views;
