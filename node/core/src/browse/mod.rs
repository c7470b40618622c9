//! Reading a snapshot without restoring it: walk its trees, compare two of
//! them, read one file's bytes, write a directory as a tar stream.
//! `omesh diff`, `find`, `dump` and `stats` are built on this, in local and
//! mesh mode alike (everything goes through [`ObjectSource`], so every
//! object read is verified).
//!
//! Every walk terminates: trees are content-addressed (a tree cannot
//! contain its own id), and depth is bounded by [`MAX_DEPTH`] besides, so
//! a hostile store cannot send a walk down forever.

mod diff;
mod stats;
mod tar;

pub use diff::{Change, ChangeKind, DiffSummary, diff, type_name};
pub use stats::{SnapshotStats, Stats, stats};
pub use tar::{TarSummary, root_entries, write_tar};

use crate::objects::{self, ObjectSource, SourceError};
use crate::snapshot::{Extent, Node, NodeKind};
use omesh_proto::{ObjectId, ObjectKind};

/// Deepest directory nesting a walk follows (a path of 4096 bytes has at
/// most 2048 components).
pub const MAX_DEPTH: usize = 2048;

/// A failed walk: an object that could not be read, a path that is not in
/// the snapshot, or a tree deeper than [`MAX_DEPTH`].
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// Reading an object failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The path is not in the snapshot.
    #[error("{0} is not in the snapshot (`omesh ls SNAPSHOT` lists what is)")]
    NotFound(String),
    /// A directory nests deeper than any real file system.
    #[error("{0}: directories nest deeper than {MAX_DEPTH} levels; the snapshot is malformed")]
    TooDeep(String),
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
}

impl BrowseError {
    /// The snapshot's objects are missing or damaged (exit code 4).
    pub fn is_damage(&self) -> bool {
        matches!(self, BrowseError::Source(e) if e.damage) || matches!(self, BrowseError::TooDeep(_))
    }
}

/// The components of a snapshot path ("/etc/ssh" → ["etc", "ssh"]).
pub fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").collect()
}

/// The node at `path` below the root tree (`None` for the root itself).
pub fn lookup(src: &dyn ObjectSource, root: &ObjectId, path: &str) -> Result<Option<Node>, BrowseError> {
    let comps = components(path);
    let mut tree = *root;
    let mut found = None;
    for (i, c) in comps.iter().enumerate() {
        let nodes = objects::load_dir(src, &tree)?;
        let n = nodes.into_iter().find(|n| n.name == c.as_bytes()).ok_or_else(|| {
            let (full, missing) = (comps.join("/"), comps[..=i].join("/"));
            BrowseError::NotFound(if full == missing {
                format!("/{full}")
            } else {
                format!("/{full} (there is no /{missing})")
            })
        })?;
        if i + 1 < comps.len() {
            match &n.kind {
                NodeKind::Dir { tree: t } => tree = *t,
                _ => return Err(BrowseError::NotFound(format!("/{}", comps.join("/")))),
            }
        }
        found = Some(n);
    }
    Ok(found)
}

/// Visit every node below `tree` depth first, in name order, with its path
/// (`prefix` + "/" + name). `visit` returns whether to descend into a
/// directory.
pub fn walk(
    src: &dyn ObjectSource,
    tree: &ObjectId,
    prefix: &str,
    visit: &mut dyn FnMut(&str, &Node) -> Result<bool, BrowseError>,
) -> Result<(), BrowseError> {
    walk_at(src, tree, prefix, 0, visit)
}

fn walk_at(
    src: &dyn ObjectSource,
    tree: &ObjectId,
    prefix: &str,
    depth: usize,
    visit: &mut dyn FnMut(&str, &Node) -> Result<bool, BrowseError>,
) -> Result<(), BrowseError> {
    if depth > MAX_DEPTH {
        return Err(BrowseError::TooDeep(prefix.to_string()));
    }
    for n in objects::load_dir(src, tree)? {
        let p = format!("{prefix}/{}", n.name_lossy());
        if visit(&p, &n)?
            && let NodeKind::Dir { tree } = &n.kind
        {
            walk_at(src, tree, &p, depth + 1, visit)?;
        }
    }
    Ok(())
}

/// A regular file's bytes, read in order, each blob fetched (and verified)
/// only when it is reached; holes read as zeros.
pub struct FileReader<'a> {
    src: &'a dyn ObjectSource,
    extents: std::vec::IntoIter<Extent>,
    /// The current extent's bytes (a blob) or the zeros left of a hole.
    buf: Vec<u8>,
    pos: usize,
    hole_left: u64,
}

impl<'a> FileReader<'a> {
    /// A reader of `node`, which must be a regular file.
    pub fn new(src: &'a dyn ObjectSource, node: &Node) -> Result<Self, BrowseError> {
        let NodeKind::File { size, content } = &node.kind else {
            return Err(BrowseError::NotFound(format!("{} (not a regular file)", node.name_lossy())));
        };
        let extents = objects::load_extents(src, content, *size)?;
        Ok(FileReader { src, extents: extents.into_iter(), buf: Vec::new(), pos: 0, hole_left: 0 })
    }
}

impl std::io::Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.hole_left > 0 {
                let n = (out.len() as u64).min(self.hole_left) as usize;
                out[..n].fill(0);
                self.hole_left -= n as u64;
                return Ok(n);
            }
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.extents.next() {
                None => return Ok(0),
                Some(Extent::Hole { len }) => self.hole_left = len,
                Some(Extent::Data { id, len }) => {
                    let b = self.src.get(&id, ObjectKind::Blob).map_err(std::io::Error::other)?;
                    if b.len() != len as usize {
                        return Err(std::io::Error::other(format!(
                            "blob {} holds {} bytes where the file's list says {len}; the snapshot is damaged",
                            id.short(),
                            b.len()
                        )));
                    }
                    self.buf = b;
                    self.pos = 0;
                }
            }
        }
    }
}
