//! One module per command (or command family).

pub mod backup;
pub mod ca;
pub mod cert;
pub mod demo;
pub mod diff;
pub mod dump;
pub mod find;
pub mod init;
pub mod key;
pub mod lifecycle;
pub mod ls;
pub mod mount;
pub mod node;
pub mod repair;
pub mod residency;
pub mod restore;
pub mod snapshots;
pub mod stats;
pub mod status;
pub mod tag;
pub mod verify;
pub mod version;
