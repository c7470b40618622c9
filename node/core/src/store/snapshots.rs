//! Snapshot records: one sealed record per file under `snapshots/`,
//! written atomically and only after everything they reference is durable.

use super::atomic::write_new_at;
use super::error::{Result, StoreError};
use super::open::Store;
use super::pack::sync_dir;
use super::read::open_record;
use crate::crypto::SnapshotSigner;
use crate::snapshot::SnapshotRecord;
use omesh_proto::{ObjectId, ObjectKind, Record};
use std::fs::{self};
use std::io::Read as _;
use std::sync::Arc;

/// Readable snapshots (oldest first) and the errors of unreadable ones.
pub type SnapshotList = (Vec<(ObjectId, SnapshotRecord)>, Vec<StoreError>);

impl Store {
    /// When a snapshot record was stored here (file modification time).
    pub fn snapshot_stored_ns(&self, id: &ObjectId) -> i64 {
        std::fs::metadata(self.dir.join("snapshots").join(id.to_hex()))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }

    /// Ids of all snapshots (unordered).
    pub fn snapshot_ids(&self) -> Result<Vec<ObjectId>> {
        let d = self.dir.join("snapshots");
        let mut out = Vec::new();
        for e in fs::read_dir(&d).map_err(StoreError::io("listing", &d))? {
            let e = e.map_err(StoreError::io("listing", &d))?;
            if let Some(id) = e.file_name().to_str().and_then(|n| ObjectId::from_hex(n).ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Bytes of all snapshot records (they count toward a source's quota).
    pub fn snapshot_bytes(&self) -> Result<u64> {
        let d = self.dir.join("snapshots");
        let mut n = 0u64;
        for e in fs::read_dir(&d).map_err(StoreError::io("listing", &d))? {
            let e = e.map_err(StoreError::io("listing", &d))?;
            n += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(n)
    }

    /// Raw record bytes of a snapshot (check hash verified). A file larger
    /// than any valid snapshot record is refused before it is read.
    pub fn read_snapshot_record(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let p = self.dir.join("snapshots").join(id.to_hex());
        let mut f = fs::File::open(&p).map_err(StoreError::io("reading snapshot", &p))?;
        let len = f.metadata().map_err(StoreError::io("reading snapshot", &p))?.len();
        if len > omesh_proto::msg::MAX_SNAPSHOT_RECORD_BYTES as u64 {
            return Err(StoreError::Corrupt {
                id: *id,
                pack: p.display().to_string(),
                offset: 0,
                reason: format!(
                    "{len} bytes, more than any snapshot record ({})",
                    omesh_proto::msg::MAX_SNAPSHOT_RECORD_BYTES
                ),
            });
        }
        let mut b = Vec::with_capacity(len as usize);
        (&mut f).take(len).read_to_end(&mut b).map_err(StoreError::io("reading snapshot", &p))?;
        let (rec, _) = Record::decode(&b).map_err(|e| StoreError::Corrupt {
            id: *id,
            pack: p.display().to_string(),
            offset: 0,
            reason: e.to_string(),
        })?;
        if rec.id != *id || rec.kind != ObjectKind::Snapshot {
            return Err(StoreError::Corrupt {
                id: *id,
                pack: p.display().to_string(),
                offset: 0,
                reason: "file holds a different object".into(),
            });
        }
        Ok(b)
    }

    /// Decrypt a snapshot record.
    pub fn load_snapshot(&self, id: &ObjectId) -> Result<SnapshotRecord> {
        let keys = self.keys()?.clone();
        let raw = self.read_snapshot_record(id)?;
        let p = self.dir.join("snapshots").join(id.to_hex());
        let (plain, _) = open_record(&keys, &raw, id, ObjectKind::Snapshot).map_err(|reason| StoreError::Corrupt {
            id: *id,
            pack: p.display().to_string(),
            offset: 0,
            reason,
        })?;
        SnapshotRecord::decode(&plain).map_err(|source| StoreError::Format { id: *id, source })
    }

    /// All snapshots, oldest first. Unreadable ones are returned as errors
    /// in the second list so one bad file does not hide the others.
    pub fn snapshots(&self) -> Result<SnapshotList> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for id in self.snapshot_ids()? {
            match self.load_snapshot(&id) {
                Ok(r) => ok.push((id, r)),
                Err(e @ StoreError::NoKey(_)) => return Err(e),
                Err(e) => bad.push(e),
            }
        }
        ok.sort_by_key(|(id, r)| (r.start_ns, *id));
        Ok((ok, bad))
    }

    /// Resolve `latest`, a full id or a unique prefix.
    pub fn resolve_snapshot(&self, spec: &str) -> Result<ObjectId> {
        if spec == "latest" {
            let (snaps, bad) = self.snapshots()?;
            self.latest_known(&bad)?;
            return snaps
                .last()
                .map(|(id, _)| *id)
                .ok_or_else(|| StoreError::SnapshotNotFound(spec.into(), self.dir.clone()));
        }
        let spec_l = spec.to_ascii_lowercase();
        let matches: Vec<ObjectId> =
            self.snapshot_ids()?.into_iter().filter(|id| id.to_hex().starts_with(&spec_l)).collect();
        match matches.len() {
            0 => Err(StoreError::SnapshotNotFound(spec.into(), self.dir.clone())),
            1 => Ok(matches[0]),
            _ => Err(StoreError::Ambiguous(
                spec.into(),
                matches.iter().map(|m| m.short()).collect::<Vec<_>>().join(", "),
            )),
        }
    }

    /// `latest` can be decided only when every record could be read
    /// (`bad`: the unreadable ones of [`Store::snapshots`]).
    pub fn latest_known(&self, bad: &[StoreError]) -> Result<()> {
        match bad.first() {
            None => Ok(()),
            Some(e) => {
                Err(StoreError::LatestUnknown { store: self.dir.clone(), count: bad.len(), first: e.to_string() })
            }
        }
    }

    /// Seal and durably write a snapshot record, signed when the store has
    /// a signer ([`Store::set_signer`]). Call only after every object it
    /// references is durable (after [`PackSink::finish`]).
    pub fn write_snapshot(&self, rec: &SnapshotRecord) -> Result<ObjectId> {
        let links = vec![rec.tree];
        let seals = self.link_seals(&links)?;
        let mut record = self.sealed_record(ObjectKind::Snapshot, &rec.encode(), links, seals)?;
        let id = record.id;
        if let Some(signer) = self.signer() {
            let source = &self.config.source;
            if signer.name() != source {
                return Err(StoreError::Sign(format!(
                    "this node's certificate names {:?}, but store {} holds the snapshots of {source:?}",
                    signer.name(),
                    self.dir.display()
                )));
            }
            let groups = self.keys()?.retention_groups(&rec.paths, &rec.tags);
            signer
                .attest(&mut record, source, rec.start_ns.div_euclid(1_000_000_000), Some(groups))
                .map_err(StoreError::Sign)?;
        }
        self.put_snapshot_record(&id, &record.encode())?;
        Ok(id)
    }

    /// `omesh tag`: change the tags of the snapshots `specs` name among
    /// those `filter` chooses (every chosen one without specs; one of the
    /// two is needed) without touching their data. Each changed record is
    /// written again with the new tags (same tree, times, paths and host, so
    /// a new id, and new retention groups in its attestation), and the old
    /// record is removed once the new one is durable.
    pub fn tag_snapshots(
        &self,
        specs: &[String],
        filter: &crate::snapshot::select::Filter,
        change: &crate::snapshot::select::TagChange,
    ) -> Result<TagReport> {
        change.validate().map_err(StoreError::Invalid)?;
        if specs.is_empty() && filter.is_empty() {
            return Err(StoreError::Invalid(
                "name the snapshots to tag (ids, prefixes or latest), or choose them with --tag/--path/--host/--latest"
                    .into(),
            ));
        }
        let (list, bad) = self.snapshots()?;
        if specs.iter().any(|s| s == "latest") {
            self.latest_known(&bad)?;
        }
        let chosen = crate::snapshot::select::choose(list, specs, filter)?;
        let mut rep = TagReport::default();
        for (id, mut rec) in chosen {
            let tags = change.apply(&rec.tags);
            let new = if tags == rec.tags {
                None
            } else {
                rec.tags = tags;
                let new = self.write_snapshot(&rec)?;
                self.forget_snapshot(&id)?;
                rep.changed += 1;
                Some(new)
            };
            rep.items.push(TagItem { snapshot: id, new, tags: rec.tags, replicas: Vec::new() });
        }
        Ok(rep)
    }

    /// Sign the snapshot records this store writes from now on.
    pub fn set_signer(&self, signer: Arc<dyn SnapshotSigner>) {
        *self.signer.write().expect("signer lock") = Some(signer);
    }

    fn signer(&self) -> Option<Arc<dyn SnapshotSigner>> {
        self.signer.read().expect("signer lock").clone()
    }

    /// Durably store an already-sealed snapshot record (replication).
    /// Never overwrites: an existing snapshot with this id is left alone.
    pub fn put_snapshot_record(&self, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        let d = self.dir.join("snapshots");
        if d.join(id.to_hex()).exists() {
            return Ok(false);
        }
        crate::failpoint::hit("snapshot.before_write");
        let new = write_new_at(&d, &self.dir.join("tmp"), &id.to_hex(), bytes, None)?;
        crate::failpoint::hit("snapshot.after_write");
        Ok(new)
    }

    /// [`Store::put_snapshot_record`] with the time to record as the
    /// snapshot's (a snapshot record healed by scrub keeps the time of the
    /// damaged file it replaces).
    pub fn put_snapshot_record_at(&self, id: &ObjectId, bytes: &[u8], time: std::time::SystemTime) -> Result<bool> {
        let d = self.dir.join("snapshots");
        if d.join(id.to_hex()).exists() {
            return Ok(false);
        }
        // a concurrent commit of the same id cannot replace this one (or its time)
        write_new_at(&d, &self.dir.join("tmp"), &id.to_hex(), bytes, Some(time))
    }

    /// Remove a snapshot record (retention decided it goes). Its objects
    /// stay until garbage collection finds them unreferenced.
    pub fn forget_snapshot(&self, id: &ObjectId) -> Result<()> {
        let d = self.dir.join("snapshots");
        let p = d.join(id.to_hex());
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::SnapshotNotFound(id.to_hex(), self.dir.clone()));
            }
            Err(e) => return Err(StoreError::Io { op: "removing", path: p, source: e }),
        }
        sync_dir(&d).map_err(StoreError::io("syncing", &d))?;
        Ok(())
    }
}

/// Result of `omesh tag`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TagReport {
    /// Every snapshot chosen.
    pub items: Vec<TagItem>,
    /// How many got new tags (and so a new id).
    pub changed: usize,
    /// Answers of the peers asked to forget the old records (mesh mode).
    pub peers: Vec<super::forget::PeerAnswer>,
    /// Problems that did not stop the change (mesh mode: a peer not
    /// reached).
    pub errors: Vec<String>,
}

/// One snapshot of `omesh tag`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TagItem {
    /// Its id before.
    #[serde(with = "omesh_proto::id::hex")]
    pub snapshot: ObjectId,
    /// Its new id, or null when its tags did not change.
    #[serde(with = "omesh_proto::id::hex::option")]
    pub new: Option<ObjectId>,
    /// Its tags now.
    pub tags: Vec<String>,
    /// Peers that acknowledged the new record (mesh mode).
    pub replicas: Vec<String>,
}
