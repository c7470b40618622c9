//! Chunk workers: hash, deduplicate, compress and seal each chunk.

use super::pipeline::*;
use crate::snapshot::Extent;
use crate::store::StoreError;
use crossbeam_channel::{Receiver, Sender};
use omesh_proto::ObjectKind;

pub(super) fn chunk_worker(ctx: &Ctx<'_>, rx: Receiver<ChunkJob>, pack_tx: Sender<PackItem>) {
    let keys = match ctx.store.keys() {
        Ok(k) => k.clone(),
        Err(e) => {
            ctx.fail(e.into());
            for j in rx {
                let _ = j.reply.send((j.seq, Err("no key".into())));
            }
            return;
        }
    };
    for job in rx {
        let len = job.data.len() as u32;
        if job.zero_is_hole && job.data.iter().all(|&b| b == 0) {
            let _ = job.reply.send((job.seq, Ok(Extent::Hole { len: len as u64 })));
            continue;
        }
        let id = keys.object_id(&job.data);
        let r = (|| -> Result<(), StoreError> {
            if !have(ctx, &id)? {
                let sealed = ctx.store.seal_linked(ObjectKind::Blob, &job.data, Vec::new(), Vec::new())?;
                queue(ctx, &pack_tx, ObjectKind::Blob, sealed)?;
            }
            Ok(())
        })();
        let reply = match r {
            Ok(()) => Ok(Extent::Data { id, len }),
            Err(e) => {
                let m = e.to_string();
                ctx.fail(e.into());
                Err(m)
            }
        };
        let _ = job.reply.send((job.seq, reply));
    }
}
