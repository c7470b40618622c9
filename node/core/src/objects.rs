//! Reading a snapshot's objects from wherever they are.
//!
//! Restore, `ls` and verify walk trees through [`ObjectSource`], which the
//! local store implements (in `store::read`) and the mesh and S3 clients implement too, so a
//! restore from peers runs the same code as a local one. Every `get`
//! returns verified plaintext: decrypted, authenticated and re-hashed
//! against its id.

use crate::crypto::Keys;
use crate::snapshot::{Content, Extent, ExtentList, FormatError, Node, SnapshotRecord, Tree, extent_sum};
use omesh_proto::{ObjectId, ObjectKind};
use std::sync::Arc;

/// A failed fetch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// Operator-facing message (names the object and where it came from).
    pub message: String,
    /// The object is missing or damaged everywhere this source looked (as
    /// opposed to a configuration or connectivity problem).
    pub damage: bool,
}

/// Somewhere objects of one source can be read from.
pub trait ObjectSource: Sync {
    /// Verified plaintext of `id`, which must be of `kind`, and its links.
    fn get_linked(&self, id: &ObjectId, kind: ObjectKind) -> Result<(Vec<u8>, Vec<ObjectId>), SourceError>;
    /// Verified plaintext only (blobs).
    fn get(&self, id: &ObjectId, kind: ObjectKind) -> Result<Vec<u8>, SourceError> {
        self.get_linked(id, kind).map(|x| x.0)
    }
    /// The source's keys (to recognise data already in a restore target).
    fn keys(&self) -> &Arc<Keys>;
    /// Chunk size bounds the source used.
    fn chunker_params(&self) -> crate::chunker::ChunkerParams;
    /// Decrypted snapshot record.
    fn snapshot(&self, id: &ObjectId) -> Result<SnapshotRecord, SourceError>;
    /// Bytes `id` takes where it is stored (sealed: compressed and
    /// encrypted), when this source knows without fetching it.
    fn stored_len(&self, _id: &ObjectId) -> Option<u64> {
        None
    }
}

fn fmt_err(id: ObjectId, e: FormatError) -> SourceError {
    SourceError { message: format!("object {} is malformed: {e}", id.short()), damage: true }
}

/// One tree part.
pub fn load_tree_part(src: &dyn ObjectSource, id: &ObjectId) -> Result<Tree, SourceError> {
    let (b, links) = src.get_linked(id, ObjectKind::Tree)?;
    Tree::decode(&b, &links).map_err(|e| fmt_err(*id, e))
}

/// A whole directory: all parts, sorted and unique across parts.
pub fn load_dir(src: &dyn ObjectSource, id: &ObjectId) -> Result<Vec<Node>, SourceError> {
    let head = load_tree_part(src, id)?;
    let mut entries = head.entries;
    for part in &head.more {
        let t = load_tree_part(src, part)?;
        if !t.more.is_empty() {
            return Err(fmt_err(*part, FormatError::Limit("nested tree parts")));
        }
        if let (Some(last), Some(first)) = (entries.last(), t.entries.first())
            && last.name >= first.name
        {
            return Err(fmt_err(*part, FormatError::Unsorted(first.name_lossy())));
        }
        entries.extend(t.entries);
    }
    Ok(entries)
}

/// A file's extents (resolving list objects), checked to sum to `size`.
pub fn load_extents(src: &dyn ObjectSource, content: &Content, size: u64) -> Result<Vec<Extent>, SourceError> {
    match content {
        Content::Inline(e) => Ok(e.clone()),
        Content::Lists(ids) => {
            let mut all = Vec::new();
            for id in ids {
                let (b, links) = src.get_linked(id, ObjectKind::List)?;
                all.extend(ExtentList::decode(&b, &links).map_err(|e| fmt_err(*id, e))?.extents);
            }
            let first = ids.first().copied().unwrap_or_default();
            let sum = extent_sum(&all).map_err(|e| fmt_err(first, e))?;
            if sum != size {
                return Err(fmt_err(first, FormatError::ExtentSum { name: String::new(), size, sum }));
            }
            Ok(all)
        }
    }
}
