//! The packer: appends sealed records to packs (durable before indexed).

use super::pipeline::*;
use crate::store::{PackSink, Store, WriteStats};
use crossbeam_channel::Receiver;
use std::sync::atomic::Ordering;

pub(super) fn packer(ctx: &Ctx<'_>, rx: Receiver<PackItem>) -> Option<WriteStats> {
    if ctx.dry.is_some() {
        // a dry run queues nothing; it may run on a store it cannot write
        for _ in rx {}
        return (!ctx.failed()).then(|| ctx.dry_stats());
    }
    let mut sink: PackSink<&Store> = match ctx.store.sink() {
        Ok(s) => s,
        Err(e) => {
            ctx.fail(e.into());
            for _ in rx {}
            return None;
        }
    };
    for item in rx {
        if ctx.failed() {
            continue; // drain so senders never block
        }
        if let Err(e) = sink.add(item.sealed.id, item.kind, item.sealed.seal, &item.sealed.bytes) {
            ctx.fail(e.into());
            continue;
        }
        ctx.progress.bytes_added.store(sink.stats().bytes, Ordering::Relaxed);
    }
    if ctx.failed() {
        return None;
    }
    match sink.finish() {
        Ok(st) => Some(st),
        Err(e) => {
            ctx.fail(e.into());
            None
        }
    }
}
