//! Snapshot object formats: directory trees, file content lists and the
//! snapshot record.
//!
//! These are the *plaintext* forms of objects; the store seals them. Each is
//! postcard-encoded behind a one-byte format version. Enum variants are
//! encoded by position: new variants are only ever appended, and the golden
//! test below pins the encoding of every existing one.
//!
//! This module validates what it decodes (names, sizes, extent sums) so that
//! restore can trust a decoded tree's shape, but it does no I/O.

use omesh_proto::ObjectId;
use serde::{Deserialize, Serialize};

/// Format version byte in front of every tree, list and snapshot plaintext.
pub const FORMAT_V1: u8 = 1;

/// Inline extents per file before the writer moves them into list objects.
pub const MAX_INLINE_EXTENTS: usize = 4096;
/// Extents per list object.
pub const MAX_LIST_EXTENTS: usize = 16_384;
/// Entries per tree part before the writer starts a new part.
pub const MAX_TREE_PART_ENTRIES: usize = 8192;
/// Longest file name accepted (Linux NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest symlink target accepted (Linux PATH_MAX).
pub const MAX_LINK_TARGET_BYTES: usize = 4096;
/// Largest file size accepted in a tree (2^62: far above any real file,
/// small enough that sums cannot overflow).
pub const MAX_FILE_BYTES: u64 = 1 << 62;
/// Extended attributes per node.
pub const MAX_XATTRS: usize = 1024;
/// Size of one extended attribute value (Linux XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE_BYTES: usize = 65536;

/// One extent of file content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Extent {
    /// Bytes stored as a blob object. Encoded as variant 0.
    Data {
        /// blob id
        id: ObjectId,
        /// plaintext length
        len: u32,
    },
    /// A hole (reads as zeros, restored sparse). Encoded as variant 1.
    Hole {
        /// length in bytes
        len: u64,
    },
}

impl Extent {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Extent::Data { len, .. } => *len as u64,
            Extent::Hole { len } => *len,
        }
    }
    /// Whether the extent is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a file's extents are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Extents inline in the tree. Variant 0.
    Inline(Vec<Extent>),
    /// Extents in list objects, in order. Variant 1.
    Lists(Vec<ObjectId>),
}

/// Kind-specific part of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// Regular file. Variant 0.
    File {
        /// logical size
        size: u64,
        /// content
        content: Content,
    },
    /// Directory. Variant 1.
    Dir {
        /// the directory's tree object (first part)
        tree: ObjectId,
    },
    /// Symbolic link (possibly dangling). Variant 2.
    Symlink {
        /// raw target bytes
        target: Vec<u8>,
    },
    /// Named pipe. Variant 3.
    Fifo,
    /// Character device. Variant 4.
    CharDev {
        /// device number
        rdev: u64,
    },
    /// Block device. Variant 5.
    BlockDev {
        /// device number
        rdev: u64,
    },
    /// Unix socket (recorded, restored as nothing: sockets cannot be
    /// recreated meaningfully). Variant 6.
    Socket,
}

/// One directory entry with its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name (raw bytes, no '/').
    pub name: Vec<u8>,
    /// Type and content.
    pub kind: NodeKind,
    /// Permission and special bits (st_mode & 0o7777).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Owner name at backup time, if known.
    pub user: Option<String>,
    /// Group name at backup time, if known.
    pub group: Option<String>,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Access time, nanoseconds since the epoch.
    pub atime_ns: i64,
    /// Status change time (for the parent fast path; not restorable).
    pub ctime_ns: i64,
    /// Inode number at backup time (fast path, hardlink groups).
    pub inode: u64,
    /// Device id at backup time (hardlink groups).
    pub dev: u64,
    /// Link count at backup time.
    pub nlink: u64,
    /// Extended attributes (includes POSIX ACLs and SELinux labels), sorted.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Set when the node was stored imperfectly: unreadable directory,
    /// file changed while being read, xattrs not readable. Operators see it
    /// in `omesh ls`.
    pub warning: Option<String>,
    /// The content (file) or listing (directory) could not be read at
    /// backup time. Restore skips such files with a report, and restores
    /// such directories empty with a report.
    pub unreadable: bool,
}

/// One part of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries, sorted by name, names unique across all parts.
    pub entries: Vec<Node>,
    /// Further parts of the same directory (only in the first part).
    pub more: Vec<ObjectId>,
}

/// A list object: a slice of a big file's extents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentList {
    /// Extents in file order.
    pub extents: Vec<Extent>,
}

/// What a snapshot captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotKind {
    /// Files and directories. Variant 0.
    Files,
    /// One block device or disk image, stored as a single file named
    /// `image` in the root tree. Variant 1.
    Image,
}

/// The snapshot record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Source (node) name that made the snapshot.
    pub source: String,
    /// Host name at backup time.
    pub hostname: String,
    /// Backed-up paths as given (absolute).
    pub paths: Vec<String>,
    /// Files or image.
    pub kind: SnapshotKind,
    /// Root tree.
    pub tree: ObjectId,
    /// Parent snapshot used for the fast path, if any.
    pub parent: Option<ObjectId>,
    /// Start time, nanoseconds since the epoch.
    pub start_ns: i64,
    /// End time, nanoseconds since the epoch.
    pub end_ns: i64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Other nodes (symlinks, devices, fifos).
    pub others: u64,
    /// Logical bytes of all files.
    pub bytes: u64,
    /// Bytes actually read from disk in this run.
    pub bytes_read: u64,
    /// Stored bytes newly added to the store in this run.
    pub bytes_added: u64,
    /// Warnings during the backup (unreadable or changed files).
    pub warnings: u64,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// omesh version that wrote it.
    pub program: String,
}

/// A decoded object that violates the format rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Wrong version byte.
    #[error("unsupported object format version {0} (this omesh reads version {FORMAT_V1})")]
    Version(u8),
    /// postcard could not decode it.
    #[error("undecodable object: {0}")]
    Decode(String),
    /// A name that could escape a directory or is otherwise invalid.
    #[error("invalid file name {0:?}: names must be 1-255 bytes without '/' or NUL and not '.' or '..'")]
    BadName(String),
    /// Names out of order or duplicated.
    #[error("directory entries are not strictly sorted or contain a duplicate name {0:?}")]
    Unsorted(String),
    /// Inline extents do not add up to the file size.
    #[error("file {name:?}: extents add up to {sum} bytes but the size is {size}")]
    ExtentSum {
        /// file name
        name: String,
        /// declared size
        size: u64,
        /// extent sum
        sum: u64,
    },
    /// A size or count above the hard limits.
    #[error("{0} exceeds its limit")]
    Limit(&'static str),
}

fn encode_versioned<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    out.extend(postcard::to_stdvec(v).expect("serialising owned data cannot fail"));
    out
}

fn decode_versioned<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, FormatError> {
    match b.first() {
        Some(&FORMAT_V1) => {}
        Some(&v) => return Err(FormatError::Version(v)),
        None => return Err(FormatError::Decode("empty object".into())),
    }
    let (v, rest) = postcard::take_from_bytes(&b[1..]).map_err(|e| FormatError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FormatError::Decode(format!("{} trailing bytes", rest.len())));
    }
    Ok(v)
}

/// Check a single file name.
pub fn validate_name(name: &[u8]) -> Result<(), FormatError> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name == b"."
        || name == b".."
        || name.contains(&b'/')
        || name.contains(&0)
    {
        return Err(FormatError::BadName(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(())
}

impl Node {
    /// Name for messages.
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Validate the node's own fields.
    pub fn validate(&self) -> Result<(), FormatError> {
        validate_name(&self.name)?;
        if self.xattrs.len() > MAX_XATTRS {
            return Err(FormatError::Limit("extended attribute count"));
        }
        if self
            .xattrs
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > MAX_NAME_BYTES || k.contains(&0) || v.len() > MAX_XATTR_VALUE_BYTES)
        {
            return Err(FormatError::Limit("extended attribute name or value size"));
        }
        match &self.kind {
            NodeKind::File { size, content } => {
                if *size > MAX_FILE_BYTES {
                    return Err(FormatError::Limit("file size"));
                }
                if let Content::Inline(ext) = content {
                    if ext.len() > MAX_INLINE_EXTENTS {
                        return Err(FormatError::Limit("inline extent count"));
                    }
                    let sum = extent_sum(ext)?;
                    if sum != *size {
                        return Err(FormatError::ExtentSum { name: self.name_lossy(), size: *size, sum });
                    }
                }
            }
            NodeKind::Symlink { target }
                if (target.is_empty() || target.len() > MAX_LINK_TARGET_BYTES || target.contains(&0)) =>
            {
                return Err(FormatError::Limit("symlink target length"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Ids this node references directly (for record links).
    pub fn links(&self, out: &mut Vec<ObjectId>) {
        match &self.kind {
            NodeKind::File { content: Content::Inline(ext), .. } => {
                for e in ext {
                    if let Extent::Data { id, .. } = e {
                        out.push(*id);
                    }
                }
            }
            NodeKind::File { content: Content::Lists(l), .. } => out.extend_from_slice(l),
            NodeKind::Dir { tree } => out.push(*tree),
            _ => {}
        }
    }
}

/// Sum of extent lengths, refusing overflow and oversize.
pub fn extent_sum(ext: &[Extent]) -> Result<u64, FormatError> {
    let mut sum: u64 = 0;
    for e in ext {
        sum = sum.checked_add(e.len()).filter(|s| *s <= MAX_FILE_BYTES).ok_or(FormatError::Limit("file size"))?;
    }
    Ok(sum)
}

impl Tree {
    /// Plaintext encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Decode and validate a tree part.
    pub fn decode(b: &[u8]) -> Result<Tree, FormatError> {
        let t: Tree = decode_versioned(b)?;
        t.validate()?;
        Ok(t)
    }

    /// Validate names, order and per-node limits.
    pub fn validate(&self) -> Result<(), FormatError> {
        if self.entries.len() > MAX_TREE_PART_ENTRIES * 4 {
            return Err(FormatError::Limit("tree part entry count"));
        }
        for (i, n) in self.entries.iter().enumerate() {
            n.validate()?;
            if i > 0 && self.entries[i - 1].name >= n.name {
                return Err(FormatError::Unsorted(n.name_lossy()));
            }
        }
        Ok(())
    }

    /// Links of this part: every id its nodes reference plus further parts.
    pub fn links(&self) -> Vec<ObjectId> {
        let mut out = Vec::new();
        for n in &self.entries {
            n.links(&mut out);
        }
        out.extend_from_slice(&self.more);
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl ExtentList {
    /// Plaintext encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }
    /// Decode and validate.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let l: ExtentList = decode_versioned(b)?;
        if l.extents.len() > MAX_LIST_EXTENTS {
            return Err(FormatError::Limit("list extent count"));
        }
        extent_sum(&l.extents)?;
        Ok(l)
    }
    /// Blob ids referenced.
    pub fn links(&self) -> Vec<ObjectId> {
        let mut v: Vec<ObjectId> = self
            .extents
            .iter()
            .filter_map(|e| match e {
                Extent::Data { id, .. } => Some(*id),
                Extent::Hole { .. } => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl SnapshotRecord {
    /// Plaintext encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }
    /// Decode.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        decode_versioned(b)
    }
    /// Start time as a date.
    pub fn start_time(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_nanos(self.start_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64, ext: Vec<Extent>) -> Node {
        Node {
            name: name.as_bytes().to_vec(),
            kind: NodeKind::File { size, content: Content::Inline(ext) },
            mode: 0o644,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime_ns: 1,
            atime_ns: 1,
            ctime_ns: 1,
            inode: 1,
            dev: 1,
            nlink: 1,
            xattrs: vec![],
            warning: None,
            unreadable: false,
        }
    }

    #[test]
    fn tree_round_trip_and_validation() {
        let t = Tree {
            entries: vec![
                file("a", 5, vec![Extent::Data { id: ObjectId([1; 32]), len: 5 }]),
                file("b", 7, vec![Extent::Hole { len: 7 }]),
            ],
            more: vec![],
        };
        assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
        assert_eq!(t.links(), vec![ObjectId([1; 32])]);

        for bad in ["..", ".", "a/b", "", "x\0y"] {
            let t = Tree { entries: vec![file(bad, 0, vec![])], more: vec![] };
            assert!(matches!(Tree::decode(&t.encode()), Err(FormatError::BadName(_))), "{bad:?} accepted");
        }
        let dup = Tree { entries: vec![file("a", 0, vec![]), file("a", 0, vec![])], more: vec![] };
        assert!(matches!(Tree::decode(&dup.encode()), Err(FormatError::Unsorted(_))));
        let sum = Tree { entries: vec![file("a", 10, vec![Extent::Hole { len: 3 }])], more: vec![] };
        assert!(matches!(Tree::decode(&sum.encode()), Err(FormatError::ExtentSum { .. })));
        let huge = Tree { entries: vec![file("a", u64::MAX, vec![Extent::Hole { len: u64::MAX }])], more: vec![] };
        assert!(matches!(Tree::decode(&huge.encode()), Err(FormatError::Limit(_))));
        let mut v = t.encode();
        v[0] = 2;
        assert_eq!(Tree::decode(&v), Err(FormatError::Version(2)));
    }

    /// Golden bytes: the variant positions below are the on-disk format.
    #[test]
    fn golden_variant_encodings() {
        let enc = |k: &NodeKind| postcard::to_stdvec(k).unwrap()[0];
        assert_eq!(enc(&NodeKind::File { size: 0, content: Content::Inline(vec![]) }), 0);
        assert_eq!(enc(&NodeKind::Dir { tree: ObjectId::ZERO }), 1);
        assert_eq!(enc(&NodeKind::Symlink { target: vec![1] }), 2);
        assert_eq!(enc(&NodeKind::Fifo), 3);
        assert_eq!(enc(&NodeKind::CharDev { rdev: 0 }), 4);
        assert_eq!(enc(&NodeKind::BlockDev { rdev: 0 }), 5);
        assert_eq!(enc(&NodeKind::Socket), 6);
        assert_eq!(postcard::to_stdvec(&Extent::Data { id: ObjectId::ZERO, len: 0 }).unwrap()[0], 0);
        assert_eq!(postcard::to_stdvec(&Extent::Hole { len: 0 }).unwrap()[0], 1);
        assert_eq!(postcard::to_stdvec(&Content::Inline(vec![])).unwrap()[0], 0);
        assert_eq!(postcard::to_stdvec(&Content::Lists(vec![])).unwrap()[0], 1);
        assert_eq!(postcard::to_stdvec(&SnapshotKind::Files).unwrap()[0], 0);
        assert_eq!(postcard::to_stdvec(&SnapshotKind::Image).unwrap()[0], 1);
    }
}
