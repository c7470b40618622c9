//! `omesh stats`: how big the chosen snapshots are, how much they share,
//! and what they take where they are stored.
//!
//! Each directory tree is read once however many snapshots share it
//! (trees are content-addressed), and each blob is counted once.

use super::{BrowseError, MAX_DEPTH};
use crate::objects::{self, ObjectSource};
use crate::snapshot::{Extent, NodeKind, SnapshotRecord};
use omesh_proto::ObjectId;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// One snapshot's part.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotStats {
    /// Snapshot id.
    pub id: String,
    /// Start time (RFC 3339).
    pub time: String,
    /// Logical bytes of its files.
    pub bytes: u64,
    /// Files.
    pub files: u64,
    /// Bytes of file data no older chosen snapshot had (by chunk).
    pub new_data_bytes: u64,
    /// What the store grew by when it was taken (its record).
    pub bytes_added: u64,
}

/// Totals over the chosen snapshots.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// Snapshots counted.
    pub snapshots: u64,
    /// Logical bytes: the sum of every snapshot's file sizes (what restoring
    /// them all would write).
    pub logical_bytes: u64,
    /// Distinct file data (each chunk once): what deduplication leaves.
    pub unique_data_bytes: u64,
    /// Distinct data chunks.
    pub unique_chunks: u64,
    /// Holes (sparse ranges) in the files, counted once per file version.
    pub hole_bytes: u64,
    /// Trees and content lists (metadata objects), distinct.
    pub metadata_objects: u64,
    /// Bytes the distinct chunks take stored (compressed, encrypted), when
    /// the store holding them is local; null otherwise.
    pub stored_data_bytes: Option<u64>,
    /// Bytes every distinct object (chunks, trees, lists) takes stored.
    pub stored_bytes: Option<u64>,
    /// logical_bytes / unique_data_bytes.
    pub dedup_ratio: Option<f64>,
    /// unique_data_bytes / stored_data_bytes.
    pub compression_ratio: Option<f64>,
    /// Per snapshot, oldest first.
    pub per_snapshot: Vec<SnapshotStats>,
}

/// Stats of `snaps` (oldest first) read through `src`.
pub fn stats(src: &dyn ObjectSource, snaps: &[(ObjectId, SnapshotRecord)]) -> Result<Stats, BrowseError> {
    let mut seen_trees: HashSet<ObjectId> = HashSet::new();
    let mut meta: HashSet<ObjectId> = HashSet::new();
    let mut chunks: HashMap<ObjectId, u32> = HashMap::new();
    let mut holes = 0u64;
    // bytes of the distinct chunks so far
    let mut unique = 0u64;
    let mut per = Vec::new();
    for (id, rec) in snaps {
        let before = unique;
        let mut stack = vec![(rec.tree, 0usize)];
        while let Some((tree, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(BrowseError::TooDeep(format!("snapshot {}", id.short())));
            }
            if !seen_trees.insert(tree) {
                continue;
            }
            let head = objects::load_tree_part(src, &tree)?;
            meta.insert(tree);
            meta.extend(head.more.iter().copied());
            for n in objects::load_dir(src, &tree)? {
                match &n.kind {
                    NodeKind::Dir { tree } => stack.push((*tree, depth + 1)),
                    NodeKind::File { size, content } => {
                        if let crate::snapshot::Content::Lists(ids) = content {
                            meta.extend(ids.iter().copied());
                        }
                        for e in objects::load_extents(src, content, *size)? {
                            match e {
                                Extent::Data { id, len } => {
                                    if chunks.insert(id, len).is_none() {
                                        unique += len as u64;
                                    }
                                }
                                Extent::Hole { len } => holes += len,
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        per.push(SnapshotStats {
            id: id.to_hex(),
            time: crate::time::rfc3339_ns(rec.start_ns),
            bytes: rec.bytes,
            files: rec.files,
            new_data_bytes: unique - before,
            bytes_added: rec.bytes_added,
        });
    }
    let logical: u64 = snaps.iter().map(|(_, r)| r.bytes).sum();
    let sum_stored = |ids: &mut dyn Iterator<Item = &ObjectId>| -> Option<u64> {
        ids.map(|id| src.stored_len(id)).sum::<Option<u64>>()
    };
    let stored_data = sum_stored(&mut chunks.keys());
    let stored = stored_data.zip(sum_stored(&mut meta.iter())).map(|(a, b)| a + b);
    let ratio = |a: u64, b: Option<u64>| b.filter(|b| *b > 0).map(|b| a as f64 / b as f64);
    Ok(Stats {
        snapshots: snaps.len() as u64,
        logical_bytes: logical,
        unique_data_bytes: unique,
        unique_chunks: chunks.len() as u64,
        hole_bytes: holes,
        metadata_objects: meta.len() as u64,
        stored_data_bytes: stored_data,
        stored_bytes: stored,
        dedup_ratio: ratio(logical, Some(unique)),
        compression_ratio: ratio(unique, stored_data),
        per_snapshot: per,
    })
}
