//! Index objects: the entries of one pack in the bucket, so a node can know
//! what the bucket holds (and where) without reading packs.
//!
//! ```text
//! index = "omeshix" 0x01 || postcard(Vec<IndexEntry>) || check (16 bytes: truncated BLAKE3 of the preceding bytes)
//! ```
//!
//! Ids are keyed hashes (opaque to the bucket); kinds and sizes reveal no
//! more than the pack itself.

use omesh_proto::{ObjectId, ObjectKind};
use serde::{Deserialize, Serialize};

const MAGIC: [u8; 8] = *b"omeshix\x01";
const CHECK: usize = 16;
/// Most entries an index object may declare.
pub const MAX_ENTRIES: usize = 1 << 20;

/// One object in a pack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Object id.
    pub id: ObjectId,
    /// Kind.
    pub kind: ObjectKind,
    /// Offset in the pack.
    pub offset: u32,
    /// Record length.
    pub len: u32,
}

/// The entries of one pack.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PackIndex {
    /// Entries in pack order.
    pub entries: Vec<IndexEntry>,
}

impl PackIndex {
    /// Serialize.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_stdvec(&self.entries).expect("serializes"));
        let h = blake3::hash(&out);
        out.extend_from_slice(&h.as_bytes()[..CHECK]);
        out
    }

    /// Parse and verify.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < MAGIC.len() + CHECK || b[..MAGIC.len()] != MAGIC {
            return Err("not an omesh index object (bad magic or version)".into());
        }
        let (body, check) = b.split_at(b.len() - CHECK);
        if &blake3::hash(body).as_bytes()[..CHECK] != check {
            return Err("index object check hash mismatch".into());
        }
        let entries: Vec<IndexEntry> = postcard::from_bytes(&body[MAGIC.len()..]).map_err(|e| e.to_string())?;
        if entries.len() > MAX_ENTRIES {
            return Err("too many entries".into());
        }
        Ok(PackIndex { entries })
    }

    /// Index a pack from its own bytes, checking it matches `digest`.
    pub fn from_pack(data: &[u8], digest: &[u8; 32]) -> Result<Self, String> {
        let res = omesh_core::store::pack::scan_slice(data, Some(digest), |_, _| {});
        if !res.hash_ok {
            return Err(format!("pack does not match its name ({} damaged records)", res.problems.len()));
        }
        Ok(PackIndex {
            entries: res
                .entries
                .iter()
                .map(|e| IndexEntry { id: e.id, kind: e.kind, offset: e.offset as u32, len: e.len })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let i = PackIndex {
            entries: vec![IndexEntry { id: ObjectId([1; 32]), kind: ObjectKind::Blob, offset: 8, len: 100 }],
        };
        let b = i.encode();
        assert_eq!(PackIndex::decode(&b).unwrap(), i);
        for k in 0..b.len() {
            let mut x = b.clone();
            x[k] ^= 1;
            assert!(PackIndex::decode(&x).is_err(), "flip at {k} accepted");
        }
    }
}
