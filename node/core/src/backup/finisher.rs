//! The finisher: builds each directory's tree object (split into parts
//! for huge directories) once all its entries are done.

use super::pipeline::*;
use crate::snapshot::{MAX_TREE_PART_ENTRIES, Node, NodeKind, Tree};
use crate::store::StoreError;
use crossbeam_channel::{Receiver, Sender};
use omesh_proto::{ObjectId, ObjectKind};

pub(super) fn finisher(ctx: &Ctx<'_>, rx: Receiver<PendingDir>, pack_tx: Sender<PackItem>) {
    for d in rx {
        let mut entries = Vec::with_capacity(d.nodes.len());
        for p in d.nodes {
            let mut node = p.node;
            match p.wait {
                Wait::Ready => {}
                Wait::Dir(s) => node.kind = NodeKind::Dir { tree: s.wait() },
                Wait::File(s) => {
                    let out = s.wait();
                    node.kind = NodeKind::File { size: out.size, content: out.content };
                    if out.warning.is_some() {
                        node.warning = out.warning;
                    }
                    node.unreadable = out.unreadable;
                }
            }
            entries.push(node);
        }
        if ctx.failed() {
            d.slot.set(ObjectId::ZERO);
            continue;
        }
        match write_tree(ctx, entries, &pack_tx) {
            Ok(id) => d.slot.set(id),
            Err(e) => {
                ctx.fail(e.into());
                d.slot.set(ObjectId::ZERO);
            }
        }
    }
}

/// Rough encoded size of a node, to split huge directories into parts.
pub(super) fn node_weight(n: &Node) -> (usize, usize) {
    let mut links = Vec::new();
    n.links(&mut links);
    let bytes =
        128 + n.name.len() + n.xattrs.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + links.len() * 40;
    (bytes, links.len())
}

/// Write a directory as one or more tree parts; returns the head's id.
pub(super) fn write_tree(
    ctx: &Ctx<'_>,
    entries: Vec<Node>,
    pack_tx: &Sender<PackItem>,
) -> Result<ObjectId, StoreError> {
    const PART_BYTES: usize = 4 * 1024 * 1024;
    const PART_LINKS: usize = 65_536;
    let mut parts: Vec<Vec<Node>> = vec![Vec::new()];
    let (mut bytes, mut links) = (0usize, 0usize);
    for n in entries {
        let (b, l) = node_weight(&n);
        let cur = parts.last().expect("non-empty");
        if !cur.is_empty() && (cur.len() >= MAX_TREE_PART_ENTRIES || bytes + b > PART_BYTES || links + l > PART_LINKS) {
            parts.push(Vec::new());
            bytes = 0;
            links = 0;
        }
        bytes += b;
        links += l;
        parts.last_mut().expect("non-empty").push(n);
    }
    let mut more = Vec::new();
    let head = parts.remove(0);
    for p in parts {
        let (links, plain) = Tree { entries: p, more: vec![] }.encode();
        more.push(put_object(ctx, ObjectKind::Tree, &plain, links, pack_tx)?);
    }
    let (links, plain) = Tree { entries: head, more }.encode();
    put_object(ctx, ObjectKind::Tree, &plain, links, pack_tx)
}
