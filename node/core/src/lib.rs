//! omesh core: everything that turns files into verified, encrypted,
//! deduplicated snapshots in a store and back, and the lifecycle
//! decisions over them. Synchronous code only: no async runtime, no
//! network, no S3; the crates above (`omesh-net`, `omesh-s3`,
//! `omesh-daemon`) call into it, never the other way round.
//!
//! Layers inside (each only uses the ones below it):
//! - [`backup`], [`restore`], [`verify`]: operations on a store;
//! - [`store`]: packs, index, snapshot records, garbage collection, scrub;
//! - [`objects`], [`snapshot`]: reading and the plaintext object formats;
//! - [`chunker`], [`crypto`], [`keyfile`], [`fsutil`]: building blocks;
//! - [`policy`]: decisions as plain functions (schedules, retention,
//!   bandwidth, placement, repair), with the time passed in.
//!
//! Wire and record formats live in `omesh-proto`.

pub mod addr;
pub mod backup;
pub mod browse;
pub mod chunker;
pub mod crypto;
pub mod failpoint;
pub mod fsutil;
pub mod keyfile;
pub mod objects;
pub mod policy;
pub mod restore;
pub mod sample;
pub mod snapshot;
pub mod store;
pub mod time;
pub mod units;
pub mod verify;

pub use omesh_proto as proto;
