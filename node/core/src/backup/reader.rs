//! Readers: open each file, read and chunk it (skipping holes), send the
//! chunks to the workers, and detect files that change while read.

use super::pipeline::*;
use crate::snapshot::{Content, Extent, ExtentList, MAX_INLINE_EXTENTS, MAX_LIST_EXTENTS};
use crossbeam_channel::{Receiver, Sender};
use omesh_proto::ObjectKind;
use std::fs::{self, File, Metadata};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;

pub(super) fn reader(ctx: &Ctx<'_>, rx: Receiver<FileJob>, chunk_tx: Sender<ChunkJob>, pack_tx: Sender<PackItem>) {
    let mut scratch = Vec::new();
    for job in rx {
        let out = if ctx.failed() {
            FileOut { size: 0, content: Content::Inline(vec![]), warning: None, unreadable: true }
        } else {
            ctx.progress.reading(&job.path);
            match &job.stream {
                Some(s) => read_stream(ctx, s, &chunk_tx, &pack_tx, &mut scratch),
                None => read_file(ctx, &job, &chunk_tx, &pack_tx, &mut scratch),
            }
        };
        if job.stream.is_some() {
            // a stream's size is only known at its end
            ctx.counts.lock().expect("counts").bytes += out.size;
        }
        // a large file's buffer is not kept for the small files that follow
        if scratch.len() > 1 << 20 {
            scratch = Vec::new();
        }
        ctx.progress.files.fetch_add(1, Ordering::Relaxed);
        if job.stream.is_none() {
            // (a stream's bytes were counted as they came)
            ctx.progress.bytes.fetch_add(out.size, Ordering::Relaxed);
        }
        if job.image {
            // a block device's size is only known once opened
            ctx.counts.lock().expect("counts").bytes += out.size;
        }
        job.slot.set(out);
    }
}

pub(super) fn unreadable(ctx: &Ctx<'_>, path: &Path, e: impl std::fmt::Display) -> FileOut {
    let msg = format!("cannot read file: {e}; its content is not in this snapshot");
    // a backup that already failed (a full disk, say) stops its readers:
    // that is not the file's fault, and no snapshot is made to warn about
    if !ctx.failed() {
        ctx.warn(path, msg.clone());
    }
    FileOut { size: 0, content: Content::Inline(vec![]), warning: Some(msg), unreadable: true }
}

/// (size, mtime, ctime) identity used to detect changes during a read.
pub(super) fn stamp(m: &Metadata) -> (u64, i64, i64, i64, i64) {
    (m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

pub(super) fn read_file(
    ctx: &Ctx<'_>,
    job: &FileJob,
    chunk_tx: &Sender<ChunkJob>,
    pack_tx: &Sender<PackItem>,
    scratch: &mut Vec<u8>,
) -> FileOut {
    let mut last_err = None;
    crate::failpoint::hit("backup.before_open");
    for attempt in 0..2 {
        let mut f =
            match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME).open(&job.path) {
                Ok(f) => f,
                // O_NOATIME is refused for files we do not own
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&job.path) {
                        Ok(f) => f,
                        Err(e) => return unreadable(ctx, &job.path, e),
                    }
                }
                Err(e) => return unreadable(ctx, &job.path, e),
            };
        let before = match f.metadata() {
            Ok(m) => m,
            Err(e) => return unreadable(ctx, &job.path, e),
        };
        if let Some((dev, ino)) = job.ident
            && (before.dev(), before.ino()) != (dev, ino)
        {
            // another file now has this name: its content must not be
            // stored under the metadata the walk recorded
            return unreadable(
                ctx,
                &job.path,
                "the path was replaced by another file while the backup ran (device and inode changed); the next backup takes it",
            );
        }
        let size = if job.image && before.file_type().is_block_device() {
            match f.seek(SeekFrom::End(0)).and_then(|n| f.seek(SeekFrom::Start(0)).map(|_| n)) {
                Ok(n) => n,
                Err(e) => return unreadable(ctx, &job.path, e),
            }
        } else {
            before.size()
        };
        // large files are bandwidth- and CPU-bound: only a few are chunked
        // at once, which bounds memory to a few full read buffers
        let _token = if size > ctx.chunker.large_file_bytes() { ctx.large_files.1.recv().ok() } else { None };
        let res = chunk_file(ctx, &mut f, size, job.image, crate::fsutil::sparse_hint(&before), chunk_tx, scratch);
        if let Some(t) = _token {
            let _ = ctx.large_files.0.send(t);
        }
        let (extents, _read) = match res {
            Ok(x) => x,
            Err(e) => return unreadable(ctx, &job.path, e),
        };
        let after = f.metadata().ok();
        let changed = !job.image && after.as_ref().map(stamp) != Some(stamp(&before));
        let content = match into_content(ctx, extents, pack_tx) {
            Ok(c) => c,
            Err(e) => return unreadable(ctx, &job.path, e),
        };
        let out_size = match &content {
            Content::Inline(e) => e.iter().map(|x| x.len()).sum(),
            Content::Lists(_) => size,
        };
        if !changed {
            return FileOut { size: out_size, content, warning: None, unreadable: false };
        }
        last_err = Some(FileOut { size: out_size, content, warning: None, unreadable: false });
        if attempt == 0 {
            tracing::info!(path = %job.path.display(), "file changed while being read; reading it again");
        }
    }
    let mut out = last_err.expect("two attempts made");
    let msg = "file changed while it was being read (twice); the stored content may mix old and new data".to_string();
    ctx.warn(&job.path, msg.clone());
    out.warning = Some(msg);
    out
}

/// Chunk a stream to its end; its producer's verdict decides whether the
/// backup may go on (a failure fails the backup: no snapshot of a partial
/// dump is ever saved).
fn read_stream(
    ctx: &Ctx<'_>,
    input: &super::stream::StreamInput,
    chunk_tx: &Sender<ChunkJob>,
    pack_tx: &Sender<PackItem>,
    scratch: &mut Vec<u8>,
) -> FileOut {
    let failed = |m: String| {
        ctx.fail(super::BackupError::Stream(m));
        FileOut { size: 0, content: Content::Inline(vec![]), warning: None, unreadable: true }
    };
    let Some(mut src) = input.take() else { return failed("the stream was already read".into()) };
    let mut chunks = Chunks::new();
    // no size is known ahead: the progress counts the bytes as they come
    let read = chunks.send(ctx, scratch, &mut src, u64::MAX, false, chunk_tx, |_, n| {
        ctx.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
    });
    let extents = match chunks.answers() {
        Ok(e) => e,
        Err(e) => return failed(e.to_string()),
    };
    let size = match read {
        Ok(n) => n,
        Err(e) => return failed(format!("reading the stream {}: {e}", input.name)),
    };
    if let Err(e) = src.finish() {
        return failed(e);
    }
    match into_content(ctx, extents, pack_tx) {
        Ok(content) => FileOut { size, content, warning: None, unreadable: false },
        Err(e) => failed(e),
    }
}

pub(super) fn chunk_file(
    ctx: &Ctx<'_>,
    f: &mut File,
    size: u64,
    image: bool,
    sparse: bool,
    chunk_tx: &Sender<ChunkJob>,
    scratch: &mut Vec<u8>,
) -> std::io::Result<(Vec<Extent>, u64)> {
    let ranges = crate::fsutil::data_ranges(f, size, sparse)?;
    let mut chunks = Chunks::new();
    // the layout: Ok(n) = the n-th chunk, Err(len) = a hole of that length
    let mut layout: Vec<Result<usize, u64>> = Vec::new();
    let mut pos = 0u64;
    let mut read = 0u64;
    for (start, len) in ranges {
        if start > pos {
            layout.push(Err(start - pos));
        }
        f.seek(SeekFrom::Start(start))?;
        let n = chunks.send(ctx, scratch, &mut *f, len, image, chunk_tx, |i, _| layout.push(Ok(i)))?;
        read += n;
        pos = start + n;
        if n < len {
            break; // file shrank while reading; change detection reports it
        }
    }
    if pos < size && sparse {
        layout.push(Err(size - pos));
    }
    let mut results: Vec<Option<Extent>> = chunks.answers()?.into_iter().map(Some).collect();
    let mut extents = Vec::with_capacity(layout.len());
    for l in layout {
        let e = match l {
            Ok(i) => results[i].take().expect("every chunk answered"),
            Err(len) => Extent::Hole { len },
        };
        // merge adjacent holes
        match (extents.last_mut(), &e) {
            (Some(Extent::Hole { len: a }), Extent::Hole { len: b }) => *a += b,
            _ => extents.push(e),
        }
    }
    Ok((extents, read))
}

/// Chunks of one file or stream on their way to the workers, numbered in
/// file order; the workers answer each with its extent.
struct Chunks {
    reply_tx: Sender<(usize, Result<Extent, String>)>,
    reply_rx: Receiver<(usize, Result<Extent, String>)>,
    sent: usize,
}

impl Chunks {
    fn new() -> Self {
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        Chunks { reply_tx, reply_rx, sent: 0 }
    }

    /// Chunk what `reader` yields (up to `limit` bytes) and send each chunk
    /// to the workers, telling `each` its number and length; returns the
    /// bytes read.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        ctx: &Ctx<'_>,
        scratch: &mut Vec<u8>,
        reader: impl std::io::Read,
        limit: u64,
        zero_is_hole: bool,
        chunk_tx: &Sender<ChunkJob>,
        mut each: impl FnMut(usize, usize),
    ) -> std::io::Result<u64> {
        ctx.chunker.for_each_chunk_with(scratch, reader, limit, |data| {
            if ctx.failed() {
                return Err(std::io::Error::other("backup aborted"));
            }
            ctx.progress.bytes_read.fetch_add(data.len() as u64, Ordering::Relaxed);
            each(self.sent, data.len());
            chunk_tx
                .send(ChunkJob { data, zero_is_hole, seq: self.sent, reply: self.reply_tx.clone() })
                .map_err(|_| std::io::Error::other("chunk workers stopped"))?;
            self.sent += 1;
            Ok(())
        })
    }

    /// The extents of every chunk sent, in order (the first failure of a
    /// worker is the error).
    fn answers(self) -> std::io::Result<Vec<Extent>> {
        drop(self.reply_tx);
        let mut results: Vec<Option<Extent>> = vec![None; self.sent];
        for _ in 0..self.sent {
            let (i, r) = self.reply_rx.recv().map_err(|_| std::io::Error::other("chunk workers stopped"))?;
            results[i] = Some(r.map_err(std::io::Error::other)?);
        }
        Ok(results.into_iter().map(|e| e.expect("every chunk answered")).collect())
    }
}

/// Inline extents, or list objects for very large files.
pub(super) fn into_content(ctx: &Ctx<'_>, extents: Vec<Extent>, pack_tx: &Sender<PackItem>) -> Result<Content, String> {
    if extents.len() <= MAX_INLINE_EXTENTS {
        return Ok(Content::Inline(extents));
    }
    let mut ids = Vec::new();
    for part in extents.chunks(MAX_LIST_EXTENTS) {
        let (links, plain) = ExtentList { extents: part.to_vec() }.encode();
        ids.push(put_object(ctx, ObjectKind::List, &plain, links, pack_tx).map_err(|e| e.to_string())?);
    }
    Ok(Content::Lists(ids))
}
