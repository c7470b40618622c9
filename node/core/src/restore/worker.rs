//! Workers: restore whole small files, or segments of large ones, writing
//! only verified bytes, and rename each into place when complete.

use super::fsops;
use super::reuse::{chunk_map, matches_exactly};
use super::state::*;
use crate::objects;
use crate::snapshot::{Extent, NodeKind};
use crossbeam_channel::{Receiver, select};
use omesh_proto::ObjectKind;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

pub(super) fn worker(ctx: &Ctx<'_>, tasks: Receiver<FileTask>, segs: Receiver<Segment>) {
    loop {
        if let Ok(s) = segs.try_recv() {
            run_segment(ctx, s);
            continue;
        }
        select! {
            recv(segs) -> s => if let Ok(s) = s { run_segment(ctx, s) },
            recv(tasks) -> t => match t {
                Ok(t) => run_task(ctx, t),
                Err(_) => {
                    while let Ok(s) = segs.try_recv() {
                        run_segment(ctx, s);
                    }
                    return;
                }
            },
        }
    }
}

pub(super) fn offsets(extents: Vec<Extent>) -> Vec<(u64, Extent)> {
    let mut off = 0;
    extents
        .into_iter()
        .map(|e| {
            let o = off;
            off += e.len();
            (o, e)
        })
        .collect()
}

pub(super) fn run_task(ctx: &Ctx<'_>, task: FileTask) {
    let NodeKind::File { size, content } = &task.node.kind else { unreachable!("only files are tasks") };
    let size = *size;
    let extents = match objects::load_extents(ctx.src, content, size) {
        Ok(e) => offsets(e),
        Err(e) => return fail_task(ctx, task, format!("not restored: {e}")),
    };
    // image onto an existing block device: write in place
    let existing_dev = if ctx.image {
        rustix::fs::statat(&task.dir.fd, &task.name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .filter(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::BlockDevice)
    } else {
        None
    };
    if existing_dev.is_some() {
        let dev = match rustix::fs::openat(
            &task.dir.fd,
            &task.name,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(e) => return fail_task(ctx, task, format!("cannot open device: {e}")),
        };
        let devsize = dev
            .metadata()
            .map(|_| ())
            .ok()
            .and_then(|_| rustix::fs::seek(&dev, rustix::fs::SeekFrom::End(0)).ok())
            .unwrap_or(0);
        if devsize < size {
            return fail_task(ctx, task, format!("device holds {devsize} bytes but the image is {size} bytes"));
        }
        return start_job(ctx, task, dev, None, false, true, None, extents);
    }
    // existing regular file (not a symlink, not shared with other names);
    // a directory this restore created holds none. A file of a hard-link
    // group is shared by design: it is kept when its link count and
    // metadata already are the snapshot's, so nothing is written to the
    // shared inode (it may have names outside the target)
    let old = if task.dir.fresh {
        None
    } else {
        fsops::open_existing_file(&task.dir.fd, &task.name).filter(|(_, st)| {
            st.st_nlink == 1
                || (task.link.is_some()
                    && st.st_nlink == task.node.nlink
                    && fsops::meta_matches(st, &task.node, ctx.chown))
        })
    };
    if let Some((f, st)) = &old
        && st.st_size as u64 == size
        && matches_exactly(ctx, f, &extents)
    {
        let r = if st.st_nlink == 1 { fsops::apply_meta_fd(f, &task.node, ctx.chown) } else { Ok(Vec::new()) };
        ctx.progress.bytes_reused.fetch_add(size, Ordering::Relaxed);
        ctx.count(|c| {
            c.0 += 1;
            c.1 += 1
        });
        ctx.progress.files.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(w) => w.into_iter().for_each(|w| ctx.warn(&task.path, w)),
            Err(e) => ctx.warn(&task.path, format!("metadata not restored: {e}")),
        }
        if let Some(g) = &task.link {
            complete_link(ctx, g, Ok((task.dir.clone(), task.name.clone())));
        }
        ctx.release(&task.dir);
        return;
    }
    let old = old.map(|(f, st)| {
        let sparse = (st.st_blocks as u64).saturating_mul(512) < st.st_size as u64;
        let map = chunk_map(ctx, &f, st.st_size as u64, sparse);
        OldFile { file: f, map }
    });
    // nothing under the name: create the final name exclusively (a
    // failure removes it again); something there: build a temporary file
    // and rename it over, so the old content stays until the new is whole
    let mode = task.node.mode & 0o777;
    let direct = if old.is_none() {
        match fsops::create_exclusive_mode(&task.dir.fd, &task.name, mode) {
            Ok(fd) => Some(File::from(fd)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => None,
            Err(e) => return fail_task(ctx, task, format!("cannot create file: {e}")),
        }
    } else {
        None
    };
    let (out, tmp, fresh) = match direct {
        Some(f) => (f, None, true),
        None => {
            let tmp = fsops::tmp_name();
            match fsops::create_exclusive(&task.dir.fd, &tmp) {
                Ok(fd) => (File::from(fd), Some(tmp), false),
                Err(e) => return fail_task(ctx, task, format!("cannot create file: {e}")),
            }
        }
    };
    // writes extend the file; only a trailing hole needs an explicit size
    if matches!(extents.last(), Some((_, Extent::Hole { .. })))
        && let Err(e) = out.set_len(size)
    {
        fsops::remove_tmp(&task.dir.fd, tmp.as_deref().unwrap_or(&task.name));
        return fail_task(ctx, task, format!("cannot size file: {e}"));
    }
    start_job(ctx, task, out, tmp, fresh, false, old, extents);
}

#[allow(clippy::too_many_arguments)]
pub(super) fn start_job(
    ctx: &Ctx<'_>,
    task: FileTask,
    out: File,
    tmp: Option<OsString>,
    fresh: bool,
    in_place: bool,
    old: Option<OldFile>,
    extents: Vec<(u64, Extent)>,
) {
    let data_count = extents.iter().filter(|(_, e)| matches!(e, Extent::Data { .. })).count();
    let segments: Vec<Vec<(u64, Extent)>> = if in_place || data_count > SEGMENT_EXTENTS {
        let mut v: Vec<Vec<(u64, Extent)>> = vec![Vec::new()];
        let mut n = 0;
        for e in extents {
            if n >= SEGMENT_EXTENTS {
                v.push(Vec::new());
                n = 0;
            }
            if matches!(e.1, Extent::Data { .. }) || in_place {
                n += 1;
            }
            v.last_mut().expect("non-empty").push(e);
        }
        v
    } else {
        vec![extents]
    };
    let job = Arc::new(FileJob { task, out, tmp, fresh, in_place, old, error: Mutex::new(None) });
    let mut iter = segments.into_iter();
    let first = iter.next().unwrap_or_default();
    for s in iter {
        let _ = ctx.seg_tx.send(Segment { job: job.clone(), extents: s });
    }
    run_segment(ctx, Segment { job, extents: first });
}

pub(super) fn run_segment(ctx: &Ctx<'_>, seg: Segment) {
    let Segment { job, extents } = seg;
    if job.error.lock().expect("job lock").is_none() {
        for (off, e) in &extents {
            if let Err(m) = write_extent(ctx, &job, *off, e) {
                let mut g = job.error.lock().expect("job lock");
                if g.is_none() {
                    *g = Some(m);
                }
                break;
            }
        }
    }
    // the segment that lets go of the job last finishes the file: exactly
    // one caller of `into_inner` gets it, however the others race (a
    // counter decremented before the reference is dropped let the last one
    // find another segment still holding it)
    if let Some(job) = Arc::into_inner(job) {
        finish_job(ctx, job);
    }
}

pub(super) fn write_extent(ctx: &Ctx<'_>, job: &FileJob, off: u64, e: &Extent) -> Result<(), String> {
    let keys = ctx.src.keys();
    match e {
        Extent::Hole { len } => {
            if job.in_place {
                // a device keeps old bytes where the image has a hole: zero
                // them unless they already are
                let mut pos = off;
                let end = off + len;
                let mut buf = Vec::new();
                while pos < end {
                    let n = (end - pos).min(1 << 20) as usize;
                    buf.resize(n, 0);
                    job.out.read_exact_at(&mut buf, pos).map_err(|e| format!("read failed at offset {pos}: {e}"))?;
                    if buf.iter().any(|&b| b != 0) {
                        buf.iter_mut().for_each(|b| *b = 0);
                        job.out.write_all_at(&buf, pos).map_err(|e| format!("write failed at offset {pos}: {e}"))?;
                        ctx.progress.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
                    } else {
                        ctx.progress.bytes_reused.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    pos += n as u64;
                }
            }
            Ok(())
        }
        Extent::Data { id, len } => {
            let len = *len as usize;
            if job.in_place {
                let mut buf = vec![0u8; len];
                if job.out.read_exact_at(&mut buf, off).is_ok() && keys.object_id(&buf) == *id {
                    ctx.progress.bytes_reused.fetch_add(len as u64, Ordering::Relaxed);
                    return Ok(());
                }
            }
            if let Some(old) = &job.old
                && let Some(&o) = old.map.get(id)
            {
                let mut buf = vec![0u8; len];
                if old.file.read_exact_at(&mut buf, o).is_ok() && keys.object_id(&buf) == *id {
                    job.out.write_all_at(&buf, off).map_err(|e| format!("write failed at offset {off}: {e}"))?;
                    ctx.progress.bytes_reused.fetch_add(len as u64, Ordering::Relaxed);
                    return Ok(());
                }
            }
            let data =
                ctx.src.get(id, ObjectKind::Blob).map_err(|e| format!("data at offset {off} not available: {e}"))?;
            if data.len() != len {
                return Err(format!("object {} has {} bytes, the file expects {len}", id.short(), data.len()));
            }
            job.out.write_all_at(&data, off).map_err(|e| format!("write failed at offset {off}: {e}"))?;
            ctx.progress.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
            Ok(())
        }
    }
}

pub(super) fn finish_job(ctx: &Ctx<'_>, job: FileJob) {
    let FileJob { task, out, tmp, fresh, in_place, error, .. } = job;
    let err = error.into_inner().expect("job lock");
    if let Some(m) = err {
        if let Some(t) = &tmp {
            fsops::remove_tmp(&task.dir.fd, t);
        }
        if fresh {
            fsops::remove_tmp(&task.dir.fd, &task.name);
        }
        drop(out);
        return fail_task(ctx, task, format!("not restored: {m}"));
    }
    let meta = if in_place {
        Ok(Vec::new())
    } else if fresh {
        let created = (task.node.mode & 0o777) & !ctx.umask;
        fsops::apply_meta_known(&out, &task.node, ctx.chown, Some((created, ctx.euid, ctx.egid)))
    } else {
        fsops::apply_meta_fd(&out, &task.node, ctx.chown)
    };
    match meta {
        Ok(w) => w.into_iter().for_each(|w| ctx.warn(&task.path, w)),
        Err(e) => ctx.warn(&task.path, format!("metadata not restored: {e}")),
    }
    if in_place && let Err(e) = out.sync_all() {
        return fail_task(ctx, task, format!("flushing the device failed: {e}"));
    }
    drop(out);
    if let Some(t) = &tmp
        && let Err(e) = fsops::replace_at(&task.dir.fd, t, &task.name)
    {
        return fail_task(ctx, task, format!("not restored: {e}"));
    }
    ctx.count(|c| c.0 += 1);
    ctx.progress.files.fetch_add(1, Ordering::Relaxed);
    if let Some(g) = &task.link {
        complete_link(ctx, g, Ok((task.dir.clone(), task.name.clone())));
    }
    ctx.release(&task.dir);
}

pub(super) fn fail_task(ctx: &Ctx<'_>, task: FileTask, msg: String) {
    ctx.error(&task.path, msg.clone());
    if let Some(g) = &task.link {
        complete_link(ctx, g, Err(format!("its first name {} failed", task.path)));
    }
    ctx.release(&task.dir);
}
