//! Taking objects out of a store: sweeping them from the index, rewriting
//! packs with only their live records, retiring packs to `trash/`, and
//! quarantining damaged records.

use super::error::{Result, StoreError};
use super::index::Location;
use super::open::Store;
use super::pack::{self, PackWriter, sync_dir};
use omesh_proto::ObjectId;
use std::collections::{HashMap, HashSet};
use std::fs::{self};
use std::path::{Path, PathBuf};

/// What a repack did.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RepackStats {
    /// Live objects copied.
    pub objects: u64,
    /// Packs retired to `trash/`.
    pub packs_retired: u64,
    /// Their size.
    pub bytes_retired: u64,
    /// New packs written.
    pub packs_written: u64,
    /// Their size.
    pub bytes_written: u64,
}

impl Store {
    /// Drop objects from the index (garbage collection's sweep). Their bytes
    /// stay in their packs until those are repacked.
    pub fn remove_objects(&self, ids: &[ObjectId]) -> Result<u64> {
        self.gc.note_removal();
        self.index.remove_objects(ids).map_err(|e| self.index_err(e))
    }

    /// Copy the `live` objects of packs `seqs` into new packs, point the
    /// index at the copies and retire the old packs to `trash/` (deleted by
    /// a later [`Store::empty_trash`]). Each copy is verified as it is
    /// read. A crash at any point leaves either the old or the new location
    /// indexed; a duplicate pack is collected by the next run.
    pub fn repack(&self, seqs: &[u64], live: &[(ObjectId, Location)]) -> Result<RepackStats> {
        if !self.writable {
            return Err(self.locked());
        }
        let packs: HashMap<u64, ([u8; 32], u64)> =
            self.index_packs()?.into_iter().map(|(seq, h, size)| (seq, (h, size))).collect();
        // every pack to retire must be movable before anything changes: a
        // pack this process cannot move (its directory belongs to another
        // user) would otherwise leave the index and stay on disk, forgotten.
        // Checked before anything is written, so every run refuses the same
        // way until the cause is fixed
        let mut dirs: Vec<PathBuf> = seqs
            .iter()
            .filter_map(|s| packs.get(s))
            .filter_map(|(hash, _)| pack::pack_path(&self.dir, hash).parent().map(Path::to_path_buf))
            .collect();
        dirs.push(self.dir.join("trash"));
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            self.check_writable(d, "garbage collection cannot retire the packs in it")?;
        }
        let tmp = self.dir.join("tmp");
        let mut infos = Vec::new();
        let mut cur: Option<PackWriter> = None;
        let mut stats = RepackStats::default();
        let res = (|| -> Result<()> {
            for (id, loc) in live {
                let (hash, _) = packs.get(&loc.pack).ok_or_else(|| StoreError::Index {
                    path: self.dir.join("index.redb"),
                    reason: format!("object {} points at unknown pack {}", id.short(), loc.pack),
                })?;
                let f = self.pack_file(hash)?;
                let rec = pack::read_record_at(&f, loc.offset, loc.len, id, &loc.seal).map_err(|reason| {
                    StoreError::Corrupt {
                        id: *id,
                        pack: pack::pack_path(&self.dir, hash).display().to_string(),
                        offset: loc.offset,
                        reason,
                    }
                })?;
                if cur.is_none() {
                    cur = Some(PackWriter::create(&tmp).map_err(StoreError::io("creating pack in", &tmp))?);
                }
                let w = cur.as_mut().expect("just set");
                w.append(*id, loc.kind, loc.seal, &rec).map_err(StoreError::io("writing pack in", &tmp))?;
                stats.objects += 1;
                if w.len() >= self.config.packs.target_bytes {
                    let info = cur
                        .take()
                        .expect("set")
                        .finish(&self.dir)
                        .map_err(StoreError::io("finishing pack in", &self.dir))?;
                    infos.push(info);
                }
            }
            if let Some(w) = cur.take() {
                infos.push(w.finish(&self.dir).map_err(StoreError::io("finishing pack in", &self.dir))?);
            }
            Ok(())
        })();
        if let Err(e) = res {
            if let Some(w) = cur.take() {
                w.discard();
            }
            return Err(e);
        }
        // a rewrite identical to its original (nothing was garbage) is the
        // same pack under the same name: it must not be retired
        let new_hashes: HashSet<[u8; 32]> = infos.iter().map(|i| i.hash).collect();
        let seqs: Vec<u64> =
            seqs.iter().copied().filter(|s| packs.get(s).is_none_or(|(h, _)| !new_hashes.contains(h))).collect();
        let seqs = &seqs[..];
        for i in &infos {
            self.forget_pack_file(&i.hash);
        }
        let dropped = self.index.replace_packs(&infos, seqs).map_err(|e| self.index_err(e))?;
        if dropped > 0 {
            tracing::debug!(objects = dropped, "index entries of retired packs dropped");
        }
        let trash = self.dir.join("trash");
        fs::create_dir_all(&trash).map_err(StoreError::io("creating", &trash))?;
        let mut dirs = HashSet::new();
        for seq in seqs {
            let Some((hash, size)) = packs.get(seq) else { continue };
            let from = pack::pack_path(&self.dir, hash);
            let to = trash.join(format!("{}.pack", hex::encode(hash)));
            self.forget_pack_file(hash);
            match fs::rename(&from, &to) {
                Ok(()) => {
                    // the time it was retired, for the grace period
                    if let Ok(f) = fs::OpenOptions::new().write(true).open(&to) {
                        let _ = f.set_modified(std::time::SystemTime::now());
                    }
                    stats.bytes_retired += size;
                    stats.packs_retired += 1;
                    if let Some(d) = from.parent() {
                        dirs.insert(d.to_path_buf());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io { op: "retiring pack", path: from, source: e }),
            }
        }
        for d in dirs.iter().chain(std::iter::once(&trash)) {
            sync_dir(d).map_err(StoreError::io("syncing", d))?;
        }
        stats.packs_written = infos.len() as u64;
        stats.bytes_written = infos.iter().map(|i| i.size).sum();
        Ok(stats)
    }

    /// Refuse with [`StoreError::NotWritable`] when this process cannot
    /// create or remove entries in `dir` (fine when it does not exist).
    pub(crate) fn check_writable(&self, dir: &Path, what: &'static str) -> Result<()> {
        use rustix::fs::{Access, AtFlags, CWD, accessat};
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = fs::metadata(dir) else { return Ok(()) };
        if accessat(CWD, dir, Access::WRITE_OK | Access::EXEC_OK, AtFlags::EACCESS).is_ok() {
            return Ok(());
        }
        Err(StoreError::NotWritable {
            path: dir.to_path_buf(),
            store: self.dir.clone(),
            owner: m.uid(),
            me: rustix::process::geteuid().as_raw(),
            what,
        })
    }

    /// Delete retired packs moved to `trash/` before `before`. Returns the
    /// bytes freed. A retired pack that cannot be deleted is an error (every
    /// run, until the cause is fixed), never silently kept.
    pub fn empty_trash(&self, before: std::time::SystemTime) -> Result<u64> {
        let trash = self.dir.join("trash");
        let mut freed = 0;
        let rd = match fs::read_dir(&trash) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::Io { op: "listing", path: trash, source: e }),
        };
        self.check_writable(&trash, "garbage collection cannot delete the retired packs in it")?;
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if !m.modified().map(|t| t < before).unwrap_or(false) {
                continue;
            }
            match fs::remove_file(e.path()) {
                Ok(()) => freed += m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { op: "deleting retired pack", path: e.path(), source }),
            }
        }
        Ok(freed)
    }

    /// Move a damaged object aside: its bytes (as found) are copied to
    /// `quarantine/` and it leaves the index, so it can be fetched again
    /// from a replica. Returns where the bytes went.
    pub fn quarantine(&self, id: &ObjectId, reason: &str) -> Result<PathBuf> {
        use std::os::unix::fs::FileExt;
        let (hash, loc) = self.locate(id)?.ok_or(StoreError::Missing(*id, "not in the index"))?;
        let q = self.dir.join("quarantine");
        fs::create_dir_all(&q).map_err(StoreError::io("creating", &q))?;
        let dest = q.join(format!("{}.{}.{}", id.to_hex(), hex::encode(&hash[..8]), loc.offset));
        let mut buf = vec![0u8; loc.len as usize];
        if let Ok(f) = self.pack_file(&hash)
            && f.read_exact_at(&mut buf, loc.offset).is_ok()
        {
            let _ = fs::write(&dest, &buf);
        }
        self.gc.note_removal();
        self.index.remove_object(id).map_err(|e| self.index_err(e))?;
        tracing::error!(object = %id.short(), pack = %hex::encode(hash), offset = loc.offset, %reason, quarantined = %dest.display(), "damaged object quarantined");
        Ok(dest)
    }
}
