//! Data already in the target: whether a file holds exactly the snapshot's
//! content, and where the chunks of an old file are (so a changed file is
//! rebuilt from them plus only what differs).

use super::state::Ctx;
use crate::snapshot::Extent;
use omesh_proto::ObjectId;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Check whether an existing file already holds exactly these extents.
pub(super) fn matches_exactly(ctx: &Ctx<'_>, f: &File, extents: &[(u64, Extent)]) -> bool {
    let keys = ctx.src.keys();
    let mut buf = Vec::new();
    for (off, e) in extents {
        match e {
            Extent::Data { id, len } => {
                buf.resize(*len as usize, 0);
                if f.read_exact_at(&mut buf, *off).is_err() || keys.object_id(&buf) != *id {
                    return false;
                }
            }
            Extent::Hole { len } => {
                let mut pos = *off;
                let end = off + len;
                // a hole reads as zeros; check in bounded pieces
                while pos < end {
                    let n = (end - pos).min(1 << 20) as usize;
                    buf.resize(n, 0);
                    if f.read_exact_at(&mut buf, pos).is_err() || buf.iter().any(|&b| b != 0) {
                        return false;
                    }
                    pos += n as u64;
                }
            }
        }
    }
    true
}

/// Map chunk id → offset for the chunks of an existing file.
pub(super) fn chunk_map(ctx: &Ctx<'_>, f: &File, size: u64, sparse: bool) -> HashMap<ObjectId, u64> {
    let mut map = HashMap::new();
    let keys = ctx.src.keys();
    let Ok(ranges) = crate::fsutil::data_ranges(f, size, sparse) else {
        return map;
    };
    for (start, len) in ranges {
        let mut off = start;
        let reader = ReadAt { f, pos: start };
        let _ = ctx.chunker.for_each_chunk(reader, len, |data| {
            map.entry(keys.object_id(&data)).or_insert(off);
            off += data.len() as u64;
            Ok(())
        });
    }
    map
}

pub(super) struct ReadAt<'a> {
    f: &'a File,
    pos: u64,
}

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
