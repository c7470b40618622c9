//! Serialized forms of trees and extent lists. They mirror the in-memory
//! types but hold references as indices into the record's links, so each
//! referenced id is stored once (in the clear links a storing peer needs
//! anyway) instead of twice. Variant positions are the on-disk format.

use super::{Content, Extent, FormatError, Node, NodeKind};
use omesh_proto::ObjectId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Builds the link table while encoding.
#[derive(Default)]
pub(super) struct Links {
    pub ids: Vec<ObjectId>,
    map: HashMap<ObjectId, u32>,
}

impl Links {
    pub fn index(&mut self, id: &ObjectId) -> u32 {
        if let Some(i) = self.map.get(id) {
            return *i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(*id);
        self.map.insert(*id, i);
        i
    }
}

/// Resolve a link index.
pub(super) fn link(links: &[ObjectId], i: u32) -> Result<ObjectId, FormatError> {
    links.get(i as usize).copied().ok_or(FormatError::Limit("link index"))
}

#[derive(Serialize, Deserialize)]
pub(super) enum ExtentW {
    /// 0
    Data { link: u32, len: u32 },
    /// 1
    Hole { len: u64 },
}

#[derive(Serialize, Deserialize)]
pub(super) enum ContentW {
    /// 0
    Inline(Vec<ExtentW>),
    /// 1
    Lists(Vec<u32>),
}

#[derive(Serialize, Deserialize)]
pub(super) enum KindW {
    /// 0
    File { size: u64, content: ContentW },
    /// 1
    Dir { tree: u32 },
    /// 2
    Symlink { target: Vec<u8> },
    /// 3
    Fifo,
    /// 4
    CharDev { rdev: u64 },
    /// 5
    BlockDev { rdev: u64 },
    /// 6
    Socket,
}

#[derive(Serialize, Deserialize)]
pub(super) struct NodeW {
    name: Vec<u8>,
    kind: KindW,
    mode: u32,
    uid: u32,
    gid: u32,
    user: Option<String>,
    group: Option<String>,
    mtime_ns: i64,
    atime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    dev: u64,
    nlink: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    warning: Option<String>,
    unreadable: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) struct TreeW {
    pub entries: Vec<NodeW>,
    pub more: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ListW {
    pub extents: Vec<ExtentW>,
}

impl ExtentW {
    pub fn from_extent(e: &Extent, l: &mut Links) -> Self {
        match e {
            Extent::Data { id, len } => ExtentW::Data { link: l.index(id), len: *len },
            Extent::Hole { len } => ExtentW::Hole { len: *len },
        }
    }
    pub fn into_extent(self, links: &[ObjectId]) -> Result<Extent, FormatError> {
        Ok(match self {
            ExtentW::Data { link: i, len } => Extent::Data { id: link(links, i)?, len },
            ExtentW::Hole { len } => Extent::Hole { len },
        })
    }
}

impl NodeW {
    pub fn from_node(n: &Node, l: &mut Links) -> Self {
        let kind = match &n.kind {
            NodeKind::File { size, content } => KindW::File {
                size: *size,
                content: match content {
                    Content::Inline(e) => ContentW::Inline(e.iter().map(|x| ExtentW::from_extent(x, l)).collect()),
                    Content::Lists(ids) => ContentW::Lists(ids.iter().map(|i| l.index(i)).collect()),
                },
            },
            NodeKind::Dir { tree } => KindW::Dir { tree: l.index(tree) },
            NodeKind::Symlink { target } => KindW::Symlink { target: target.clone() },
            NodeKind::Fifo => KindW::Fifo,
            NodeKind::CharDev { rdev } => KindW::CharDev { rdev: *rdev },
            NodeKind::BlockDev { rdev } => KindW::BlockDev { rdev: *rdev },
            NodeKind::Socket => KindW::Socket,
        };
        NodeW {
            name: n.name.clone(),
            kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            user: n.user.clone(),
            group: n.group.clone(),
            mtime_ns: n.mtime_ns,
            atime_ns: n.atime_ns,
            ctime_ns: n.ctime_ns,
            inode: n.inode,
            dev: n.dev,
            nlink: n.nlink,
            xattrs: n.xattrs.clone(),
            warning: n.warning.clone(),
            unreadable: n.unreadable,
        }
    }

    pub fn into_node(self, links: &[ObjectId]) -> Result<Node, FormatError> {
        let kind = match self.kind {
            KindW::File { size, content } => NodeKind::File {
                size,
                content: match content {
                    ContentW::Inline(e) => {
                        Content::Inline(e.into_iter().map(|x| x.into_extent(links)).collect::<Result<_, _>>()?)
                    }
                    ContentW::Lists(ids) => {
                        Content::Lists(ids.into_iter().map(|i| link(links, i)).collect::<Result<_, _>>()?)
                    }
                },
            },
            KindW::Dir { tree } => NodeKind::Dir { tree: link(links, tree)? },
            KindW::Symlink { target } => NodeKind::Symlink { target },
            KindW::Fifo => NodeKind::Fifo,
            KindW::CharDev { rdev } => NodeKind::CharDev { rdev },
            KindW::BlockDev { rdev } => NodeKind::BlockDev { rdev },
            KindW::Socket => NodeKind::Socket,
        };
        Ok(Node {
            name: self.name,
            kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            user: self.user,
            group: self.group,
            mtime_ns: self.mtime_ns,
            atime_ns: self.atime_ns,
            ctime_ns: self.ctime_ns,
            inode: self.inode,
            dev: self.dev,
            nlink: self.nlink,
            xattrs: self.xattrs,
            warning: self.warning,
            unreadable: self.unreadable,
        })
    }
}

/// Golden variant positions (called from the module's tests).
#[cfg(test)]
pub(super) fn golden() {
    let enc = |k: &KindW| postcard::to_stdvec(k).unwrap()[0];
    assert_eq!(enc(&KindW::File { size: 0, content: ContentW::Inline(vec![]) }), 0);
    assert_eq!(enc(&KindW::Dir { tree: 0 }), 1);
    assert_eq!(enc(&KindW::Symlink { target: vec![1] }), 2);
    assert_eq!(enc(&KindW::Fifo), 3);
    assert_eq!(enc(&KindW::CharDev { rdev: 0 }), 4);
    assert_eq!(enc(&KindW::BlockDev { rdev: 0 }), 5);
    assert_eq!(enc(&KindW::Socket), 6);
    assert_eq!(postcard::to_stdvec(&ExtentW::Data { link: 0, len: 0 }).unwrap()[0], 0);
    assert_eq!(postcard::to_stdvec(&ExtentW::Hole { len: 0 }).unwrap()[0], 1);
    assert_eq!(postcard::to_stdvec(&ContentW::Inline(vec![])).unwrap()[0], 0);
    assert_eq!(postcard::to_stdvec(&ContentW::Lists(vec![])).unwrap()[0], 1);
}
