//! Snapshot object formats: directory trees, file content lists and the
//! snapshot record.
//!
//! These are the *plaintext* forms of objects; the store seals them. Each is
//! postcard-encoded behind a one-byte format version. Trees and extent
//! lists are encoded through [`wire`], which replaces every referenced id by
//! its index in the record's links. Enum variants are encoded by position:
//! new variants are only ever appended, and golden tests pin the encoding of
//! every existing one.
//!
//! This module validates what it decodes (names, sizes, extent sums) so that
//! restore can trust a decoded tree's shape, but it does no I/O.

pub mod select;
mod wire;

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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Extents inline in the tree. Variant 0.
    Inline(Vec<Extent>),
    /// Extents in list objects, in order. Variant 1.
    Lists(Vec<ObjectId>),
}

/// Kind-specific part of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// Entries, sorted by name, names unique across all parts.
    pub entries: Vec<Node>,
    /// Further parts of the same directory (only in the first part).
    pub more: Vec<ObjectId>,
}

/// A list object: a slice of a big file's extents.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Encode: the object's links (every id it references, each once, in
    /// order of first use) and its plaintext, in which references are
    /// indices into those links. Ids are stored once, in the record's clear
    /// links, instead of twice (they are incompressible).
    pub fn encode(&self) -> (Vec<ObjectId>, Vec<u8>) {
        let mut links = wire::Links::default();
        let w = wire::TreeW {
            entries: self.entries.iter().map(|n| wire::NodeW::from_node(n, &mut links)).collect(),
            more: self.more.iter().map(|id| links.index(id)).collect(),
        };
        (links.ids, encode_versioned(&w))
    }

    /// Decode and validate a tree part, given its record's links.
    pub fn decode(b: &[u8], links: &[ObjectId]) -> Result<Tree, FormatError> {
        let w: wire::TreeW = decode_versioned(b)?;
        let t = Tree {
            entries: w.entries.into_iter().map(|n| n.into_node(links)).collect::<Result<_, _>>()?,
            more: w.more.into_iter().map(|i| wire::link(links, i)).collect::<Result<_, _>>()?,
        };
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
}

impl ExtentList {
    /// Encode: (links, plaintext), as for trees.
    pub fn encode(&self) -> (Vec<ObjectId>, Vec<u8>) {
        let mut links = wire::Links::default();
        let w =
            wire::ListW { extents: self.extents.iter().map(|e| wire::ExtentW::from_extent(e, &mut links)).collect() };
        (links.ids, encode_versioned(&w))
    }
    /// Decode and validate.
    pub fn decode(b: &[u8], links: &[ObjectId]) -> Result<Self, FormatError> {
        let w: wire::ListW = decode_versioned(b)?;
        if w.extents.len() > MAX_LIST_EXTENTS {
            return Err(FormatError::Limit("list extent count"));
        }
        let l = ExtentList { extents: w.extents.into_iter().map(|e| e.into_extent(links)).collect::<Result<_, _>>()? };
        extent_sum(&l.extents)?;
        Ok(l)
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
    pub fn start_time(&self) -> crate::time::Timestamp {
        crate::time::from_ns(self.start_ns)
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

    fn round(t: &Tree) -> Result<Tree, FormatError> {
        let (links, b) = t.encode();
        Tree::decode(&b, &links)
    }

    #[test]
    fn tree_round_trip_and_validation() {
        let t = Tree {
            entries: vec![
                file("a", 5, vec![Extent::Data { id: ObjectId([1; 32]), len: 5 }]),
                file("b", 7, vec![Extent::Hole { len: 7 }]),
                file(
                    "c",
                    10,
                    vec![
                        Extent::Data { id: ObjectId([1; 32]), len: 5 },
                        Extent::Data { id: ObjectId([2; 32]), len: 5 },
                    ],
                ),
            ],
            more: vec![ObjectId([3; 32])],
        };
        assert_eq!(round(&t).unwrap(), t);
        let (links, plain) = t.encode();
        // every id once, in order of first use; none of them in the plaintext
        assert_eq!(links, vec![ObjectId([1; 32]), ObjectId([2; 32]), ObjectId([3; 32])]);
        assert!(!plain.windows(32).any(|w| w == [1u8; 32] || w == [2u8; 32]));
        // a link index out of range is refused
        assert!(matches!(Tree::decode(&plain, &links[..1]), Err(FormatError::Limit(_))));

        for bad in ["..", ".", "a/b", "", "x\0y"] {
            let t = Tree { entries: vec![file(bad, 0, vec![])], more: vec![] };
            assert!(matches!(round(&t), Err(FormatError::BadName(_))), "{bad:?} accepted");
        }
        let dup = Tree { entries: vec![file("a", 0, vec![]), file("a", 0, vec![])], more: vec![] };
        assert!(matches!(round(&dup), Err(FormatError::Unsorted(_))));
        let sum = Tree { entries: vec![file("a", 10, vec![Extent::Hole { len: 3 }])], more: vec![] };
        assert!(matches!(round(&sum), Err(FormatError::ExtentSum { .. })));
        let huge = Tree { entries: vec![file("a", u64::MAX, vec![Extent::Hole { len: u64::MAX }])], more: vec![] };
        assert!(matches!(round(&huge), Err(FormatError::Limit(_))));
        let (l, mut v) = t.encode();
        v[0] = 2;
        assert_eq!(Tree::decode(&v, &l), Err(FormatError::Version(2)));
    }

    /// Golden bytes: the variant positions below are the on-disk format.
    #[test]
    fn golden_variant_encodings() {
        wire::golden();
        assert_eq!(postcard::to_stdvec(&SnapshotKind::Files).unwrap()[0], 0);
        assert_eq!(postcard::to_stdvec(&SnapshotKind::Image).unwrap()[0], 1);
    }
}
