//! `omesh diff`: what changed between two snapshots' trees.
//!
//! Directories are compared by their tree id first: an unchanged directory
//! has the same id in both (trees are content-addressed), so a diff reads
//! only the directories on the way to a change.

use super::{BrowseError, MAX_DEPTH};
use crate::objects::{self, ObjectSource};
use crate::snapshot::{Extent, Node, NodeKind};
use omesh_proto::ObjectId;
use serde::Serialize;
use std::collections::HashSet;

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the second snapshot.
    Added,
    /// Only in the first.
    Removed,
    /// In both, different (see the reasons).
    Modified,
    /// In both, of another type (a file that became a directory, ...).
    TypeChanged,
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The path as backed up.
    pub path: String,
    /// What happened.
    pub change: ChangeKind,
    /// For a modification: `content`, `mode`, `owner`, `mtime`, `xattrs`,
    /// `link_target`, `device`.
    pub reasons: Vec<&'static str>,
    /// `file`, `dir`, `symlink`, ... (of the newer side when both exist).
    pub r#type: &'static str,
    /// Size in the first snapshot (files).
    pub size_before: Option<u64>,
    /// Size in the second.
    pub size_after: Option<u64>,
}

/// Totals of a diff.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiffSummary {
    /// Paths added (any type).
    pub added: u64,
    /// Paths removed.
    pub removed: u64,
    /// Paths modified or of a changed type.
    pub modified: u64,
    /// Bytes of file data in the second snapshot that the first did not
    /// have at that path (whole added files, the new parts of changed ones).
    pub added_bytes: u64,
    /// Bytes of file data the first had at a path and the second does not.
    pub removed_bytes: u64,
}

/// The type name of a node, as `ls --json` writes it.
pub fn type_name(n: &Node) -> &'static str {
    match n.kind {
        NodeKind::File { .. } => "file",
        NodeKind::Dir { .. } => "dir",
        NodeKind::Symlink { .. } => "symlink",
        NodeKind::Fifo => "fifo",
        NodeKind::CharDev { .. } => "chardev",
        NodeKind::BlockDev { .. } => "blockdev",
        NodeKind::Socket => "socket",
    }
}

fn size(n: &Node) -> Option<u64> {
    match n.kind {
        NodeKind::File { size, .. } => Some(size),
        _ => None,
    }
}

/// Compare the trees `a` and `b` (roots of two snapshots, or two
/// directories of them) below `prefix`; changes in path order.
pub fn diff(
    src: &dyn ObjectSource,
    a: &ObjectId,
    b: &ObjectId,
    prefix: &str,
) -> Result<(Vec<Change>, DiffSummary), BrowseError> {
    let mut d = Differ { src, out: Vec::new(), sum: DiffSummary::default() };
    d.dirs(a, b, prefix, 0)?;
    Ok((d.out, d.sum))
}

struct Differ<'a> {
    src: &'a dyn ObjectSource,
    out: Vec<Change>,
    sum: DiffSummary,
}

impl Differ<'_> {
    fn dirs(&mut self, a: &ObjectId, b: &ObjectId, prefix: &str, depth: usize) -> Result<(), BrowseError> {
        if a == b {
            return Ok(());
        }
        if depth > MAX_DEPTH {
            return Err(BrowseError::TooDeep(prefix.to_string()));
        }
        let (xa, xb) = (objects::load_dir(self.src, a)?, objects::load_dir(self.src, b)?);
        let (mut ia, mut ib) = (xa.into_iter().peekable(), xb.into_iter().peekable());
        loop {
            let order = match (ia.peek(), ib.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.name.cmp(&y.name),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let n = ia.next().expect("peeked");
                    self.whole(&n, prefix, ChangeKind::Removed, depth)?;
                }
                std::cmp::Ordering::Greater => {
                    let n = ib.next().expect("peeked");
                    self.whole(&n, prefix, ChangeKind::Added, depth)?;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (ia.next().expect("peeked"), ib.next().expect("peeked"));
                    self.pair(&x, &y, prefix, depth)?;
                }
            }
        }
        Ok(())
    }

    /// A node (and everything below it) only on one side.
    fn whole(&mut self, n: &Node, prefix: &str, kind: ChangeKind, depth: usize) -> Result<(), BrowseError> {
        let path = format!("{prefix}/{}", n.name_lossy());
        let bytes = size(n).unwrap_or(0);
        let (before, after) = if kind == ChangeKind::Added { (None, size(n)) } else { (size(n), None) };
        if kind == ChangeKind::Added {
            self.sum.added += 1;
            self.sum.added_bytes += bytes;
        } else {
            self.sum.removed += 1;
            self.sum.removed_bytes += bytes;
        }
        self.out.push(Change {
            path: path.clone(),
            change: kind,
            reasons: vec![],
            r#type: type_name(n),
            size_before: before,
            size_after: after,
        });
        if let NodeKind::Dir { tree } = &n.kind {
            if depth >= MAX_DEPTH {
                return Err(BrowseError::TooDeep(path));
            }
            for c in objects::load_dir(self.src, tree)? {
                self.whole(&c, &path, kind, depth + 1)?;
            }
        }
        Ok(())
    }

    fn pair(&mut self, x: &Node, y: &Node, prefix: &str, depth: usize) -> Result<(), BrowseError> {
        let path = format!("{prefix}/{}", y.name_lossy());
        if std::mem::discriminant(&x.kind) != std::mem::discriminant(&y.kind) {
            self.sum.modified += 1;
            self.sum.removed_bytes += size(x).unwrap_or(0);
            self.sum.added_bytes += size(y).unwrap_or(0);
            self.out.push(Change {
                path: path.clone(),
                change: ChangeKind::TypeChanged,
                reasons: vec![],
                r#type: type_name(y),
                size_before: size(x),
                size_after: size(y),
            });
            // what was below a directory that is now something else is gone,
            // what is below a new directory is new
            if let NodeKind::Dir { tree } = &x.kind {
                for c in objects::load_dir(self.src, tree)? {
                    self.whole(&c, &path, ChangeKind::Removed, depth + 1)?;
                }
            }
            if let NodeKind::Dir { tree } = &y.kind {
                for c in objects::load_dir(self.src, tree)? {
                    self.whole(&c, &path, ChangeKind::Added, depth + 1)?;
                }
            }
            return Ok(());
        }
        let mut reasons = Vec::new();
        match (&x.kind, &y.kind) {
            (NodeKind::File { size: sa, content: ca }, NodeKind::File { size: sb, content: cb })
                if (sa != sb || ca != cb) =>
            {
                let ea = objects::load_extents(self.src, ca, *sa)?;
                let eb = objects::load_extents(self.src, cb, *sb)?;
                if ea != eb {
                    reasons.push("content");
                    let (added, removed) = extent_delta(&ea, &eb);
                    self.sum.added_bytes += added;
                    self.sum.removed_bytes += removed;
                }
            }
            (NodeKind::Symlink { target: ta }, NodeKind::Symlink { target: tb }) if ta != tb => {
                reasons.push("link_target")
            }
            (NodeKind::CharDev { rdev: a }, NodeKind::CharDev { rdev: b })
            | (NodeKind::BlockDev { rdev: a }, NodeKind::BlockDev { rdev: b })
                if a != b =>
            {
                reasons.push("device")
            }
            _ => {}
        }
        if x.mode != y.mode {
            reasons.push("mode");
        }
        if (x.uid, x.gid) != (y.uid, y.gid) {
            reasons.push("owner");
        }
        // a directory's mtime follows its entries, which are listed anyway
        if x.mtime_ns != y.mtime_ns && !matches!(y.kind, NodeKind::Dir { .. }) {
            reasons.push("mtime");
        }
        if x.xattrs != y.xattrs {
            reasons.push("xattrs");
        }
        if !reasons.is_empty() {
            self.sum.modified += 1;
            self.out.push(Change {
                path: path.clone(),
                change: ChangeKind::Modified,
                reasons,
                r#type: type_name(y),
                size_before: size(x),
                size_after: size(y),
            });
        }
        if let (NodeKind::Dir { tree: ta }, NodeKind::Dir { tree: tb }) = (&x.kind, &y.kind) {
            self.dirs(ta, tb, &path, depth + 1)?;
        }
        Ok(())
    }
}

/// Bytes of data extents only in `b` (added) and only in `a` (removed),
/// by blob id: the same bytes at another offset are not a change.
fn extent_delta(a: &[Extent], b: &[Extent]) -> (u64, u64) {
    let ids = |e: &[Extent]| -> HashSet<ObjectId> {
        e.iter().filter_map(|x| if let Extent::Data { id, .. } = x { Some(*id) } else { None }).collect()
    };
    let (ia, ib) = (ids(a), ids(b));
    let only = |e: &[Extent], other: &HashSet<ObjectId>| -> u64 {
        e.iter()
            .filter_map(|x| match x {
                Extent::Data { id, len } if !other.contains(id) => Some(*len as u64),
                _ => None,
            })
            .sum()
    };
    (only(b, &ia), only(a, &ib))
}
