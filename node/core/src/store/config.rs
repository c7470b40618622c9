//! The store's own settings file, `omesh-store.toml`.
//!
//! Its presence marks a directory as an omesh store; its `version` is the
//! on-disk format version, checked on every open.

use crate::chunker::ChunkerParams;
use serde::{Deserialize, Serialize};

/// File name of the store config inside the store directory.
pub const CONFIG_FILE: &str = "omesh-store.toml";
/// Format tag.
pub const FORMAT: &str = "omesh-store";
/// On-disk format version this build writes (it also reads, and upgrades
/// on the first writing open, version 1).
pub const STORE_VERSION: u32 = 2;
/// Default pack size target.
pub const DEFAULT_PACK_BYTES: u64 = 16 * 1024 * 1024;
/// Default zstd level.
pub const DEFAULT_COMPRESSION: i32 = 3;

/// Contents of `omesh-store.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoreConfig {
    /// Always "omesh-store".
    pub format: String,
    /// On-disk format version.
    pub version: u32,
    /// Random id of this store.
    pub store_id: String,
    /// The source (node) whose snapshots this store holds.
    pub source: String,
    /// Fingerprint of the source key; empty for a replica store kept by a
    /// peer that does not hold the key.
    #[serde(default)]
    pub key_id: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Chunking bounds.
    pub chunker: ChunkerParams,
    /// Pack and compression settings.
    pub packs: PackSettings,
}

/// Pack and compression settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PackSettings {
    /// A pack is closed once it reaches this size.
    pub target_bytes: u64,
    /// zstd level for new objects (0 = no compression).
    pub compression_level: i32,
}

impl StoreConfig {
    /// A new config.
    pub fn new(source: &str, key_id: &str, chunker: ChunkerParams, target_bytes: u64, compression_level: i32) -> Self {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).expect("the operating system's random source failed");
        StoreConfig {
            format: FORMAT.into(),
            version: STORE_VERSION,
            store_id: hex::encode(id),
            source: source.into(),
            key_id: key_id.into(),
            created: crate::time::rfc3339(crate::time::now()),
            chunker,
            packs: PackSettings { target_bytes, compression_level },
        }
    }

    /// TOML text with an explanatory header.
    pub fn to_text(&self) -> String {
        format!(
            "# omesh store settings. Do not edit chunker sizes on a store in use (it only costs\n\
             # deduplication); the format version is checked on every open.\n{}",
            toml::to_string(self).expect("config serializes")
        )
    }
}
