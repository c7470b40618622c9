//! Reading: where an object is, whether it is held, its verified record
//! and plaintext. Every read is verified (check hash, then with the key
//! the AEAD tag and the keyed hash of the plaintext against the id).

use super::error::{Result, StoreError};
use super::index::Location;
use super::open::Store;
use super::pack::{self};
use crate::crypto::{Keys, Links, OpenError};
use crate::objects::{ObjectSource, SourceError};
use crate::snapshot::Node;
use omesh_proto::{ObjectId, ObjectKind, Record, Seal};
use std::fs::File;
use std::sync::Arc;

impl Store {
    /// Where an object is.
    pub fn locate(&self, id: &ObjectId) -> Result<Option<([u8; 32], Location)>> {
        if let Some(loc) = self.index.get(id).map_err(|e| self.index_err(e))? {
            let hash =
                self.index.pack_hash(loc.pack).map_err(|e| self.index_err(e))?.ok_or_else(|| StoreError::Index {
                    path: self.dir.join("index.redb"),
                    reason: format!("object {} points at unknown pack {}", id.short(), loc.pack),
                })?;
            return Ok(Some((hash, loc)));
        }
        Ok(self
            .extra
            .get(id)
            .map(|(h, e)| (*h, Location { pack: 0, offset: e.offset, len: e.len, kind: e.kind, seal: e.seal })))
    }

    /// Whether the store holds `id` (durably, or queued in this process).
    pub fn contains(&self, id: &ObjectId) -> Result<bool> {
        if self.pending.lock().expect("pending lock").contains_key(id) {
            return Ok(true);
        }
        let _g = self.gc.read_guard();
        let present = self.locate(id)?.is_some();
        if present {
            self.note_present(std::slice::from_ref(id));
        }
        Ok(present)
    }

    /// Which of `ids` are held (one index transaction).
    pub fn contains_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let _g = self.gc.read_guard();
        let locs = self.index.get_many(ids).map_err(|e| self.index_err(e))?;
        self.note_present_locs(ids, &locs);
        let pending = self.pending.lock().expect("pending lock");
        Ok(ids
            .iter()
            .zip(locs)
            .map(|(id, l)| l.is_some() || pending.contains_key(id) || self.extra.contains_key(id))
            .collect())
    }

    /// Claim `id`, sealed as `seal`, for writing: true if the caller must
    /// store it, false when it is already stored or another worker is
    /// storing it. Until it is durable, parents sealed in this process name
    /// this seal ([`Store::link_seals`]).
    pub fn claim(&self, id: &ObjectId, seal: Seal) -> Result<bool> {
        let _g = self.gc.read_guard();
        if self.locate(id)?.is_some() {
            self.note_present(std::slice::from_ref(id));
            return Ok(false);
        }
        let mut pending = self.pending.lock().expect("pending lock");
        if pending.contains_key(id) {
            return Ok(false);
        }
        pending.insert(*id, seal);
        Ok(true)
    }

    /// Give back a claim that will not be written (the write was refused).
    pub fn release_claim(&self, id: &ObjectId) {
        self.pending.lock().expect("pending lock").remove(id);
    }

    /// Bytes available to unprivileged writers on the file system that
    /// holds this store, and the file system's size.
    pub fn free_bytes(&self) -> Result<(u64, u64)> {
        super::open::free_space(&self.dir).map_err(|e| StoreError::Io {
            op: "checking free space of",
            path: self.dir.clone(),
            source: e.into(),
        })
    }

    fn note_present(&self, ids: &[ObjectId]) {
        self.gc.note_present(ids.iter().copied(), &self.dir);
    }

    fn note_present_locs(&self, ids: &[ObjectId], locs: &[Option<Location>]) {
        if self.gc.has_condemned() {
            self.gc.note_present(ids.iter().zip(locs).filter(|(_, l)| l.is_some()).map(|(i, _)| *i), &self.dir);
        }
    }

    pub(super) fn pack_file(&self, hash: &[u8; 32]) -> Result<Arc<File>> {
        if let Some(f) = self.files.read().expect("files lock").get(hash) {
            return Ok(f.clone());
        }
        let mut files = self.files.write().expect("files lock");
        if let Some(f) = files.get(hash) {
            return Ok(f.clone());
        }
        let p = pack::pack_path(&self.dir, hash);
        let f = match File::open(&p) {
            Ok(f) => f,
            // moved aside by a garbage collection after this reader looked it up
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                File::open(self.dir.join("trash").join(format!("{}.pack", hex::encode(hash))))
                    .map_err(|_| StoreError::Io { op: "opening pack", path: p.clone(), source: e })?
            }
            Err(e) => return Err(StoreError::Io { op: "opening pack", path: p, source: e }),
        };
        let f = Arc::new(f);
        if files.len() >= 256 {
            files.clear();
        }
        files.insert(*hash, f.clone());
        Ok(f)
    }

    /// Drop the open handle of pack `hash`, if any: its name now holds
    /// another file (a pack written again under the same digest, after
    /// the damaged file of that name was retired). A kept handle would go
    /// on reading the old, damaged bytes.
    pub(super) fn forget_pack_file(&self, hash: &[u8; 32]) {
        self.files.write().expect("files lock").remove(hash);
    }

    /// Raw record bytes of an object, check hash and seal verified (the
    /// seal this store computed when it stored the record).
    pub fn read_record(&self, id: &ObjectId) -> Result<Vec<u8>> {
        let (hash, loc) = self.locate(id)?.ok_or(StoreError::Missing(*id, "not in the index"))?;
        let f = self.pack_file(&hash)?;
        pack::read_record_at(&f, loc.offset, loc.len, id, &loc.seal).map_err(|r| self.corrupt(id, &hash, &loc, r))
    }

    /// The error of a record of `id` that failed to read or open.
    fn corrupt(&self, id: &ObjectId, hash: &[u8; 32], loc: &Location, reason: String) -> StoreError {
        StoreError::Corrupt {
            id: *id,
            pack: pack::pack_path(&self.dir, hash).display().to_string(),
            offset: loc.offset,
            reason,
        }
    }

    /// The header of an object's record (its first 48 bytes only: format,
    /// kind, link count), unverified.
    pub fn record_header(&self, id: &ObjectId) -> Result<omesh_proto::RecordHeader> {
        use std::os::unix::fs::FileExt;
        let (hash, loc) = self.locate(id)?.ok_or(StoreError::Missing(*id, "not in the index"))?;
        let f = self.pack_file(&hash)?;
        let mut b = [0u8; omesh_proto::record::HEADER_BYTES];
        let corrupt = |reason: String| StoreError::Corrupt {
            id: *id,
            pack: pack::pack_path(&self.dir, &hash).display().to_string(),
            offset: loc.offset,
            reason,
        };
        f.read_exact_at(&mut b, loc.offset).map_err(|e| corrupt(format!("read failed: {e}")))?;
        omesh_proto::RecordHeader::parse(&b).map_err(|e| corrupt(e.to_string()))
    }

    /// Decrypt and verify an object of the expected kind.
    pub fn get(&self, id: &ObjectId, kind: ObjectKind) -> Result<Vec<u8>> {
        self.get_linked(id, kind).map(|x| x.0)
    }

    /// Decrypt and verify an object; also return its links.
    pub fn get_linked(&self, id: &ObjectId, kind: ObjectKind) -> Result<(Vec<u8>, Vec<ObjectId>)> {
        let keys = self.keys()?.clone();
        let (hash, loc) = self.locate(id)?.ok_or(StoreError::Missing(*id, "not in the index"))?;
        let f = self.pack_file(&hash)?;
        // hashed once, while decoding, and that hash compared with the seal
        // recorded for it (read_record would hash it a second time)
        pack::read_record_bytes_at(&f, loc.offset, loc.len, id)
            .and_then(|raw| open_record_sealed(&keys, &raw, id, kind, Some(&loc.seal)))
            .map_err(|r| self.corrupt(id, &hash, &loc, r))
    }

    /// A whole directory (all tree parts), see [`crate::objects::load_dir`].
    pub fn load_dir(&self, id: &ObjectId) -> Result<Vec<Node>> {
        crate::objects::load_dir(self, id).map_err(|e| StoreError::Object(e.message, e.damage))
    }

    /// Which of `ids` are durably stored (indexed), ignoring objects still
    /// being written. This is what a peer may promise to others.
    pub fn durable_many(&self, ids: &[ObjectId]) -> Result<Vec<bool>> {
        let _g = self.gc.read_guard();
        let locs = self.index.get_many(ids).map_err(|e| self.index_err(e))?;
        self.note_present_locs(ids, &locs);
        Ok(ids.iter().zip(locs).map(|(id, l)| l.is_some() || self.extra.contains_key(id)).collect())
    }

    /// Bytes in pack files (what this store occupies).
    pub fn bytes_stored(&self) -> Result<u64> {
        Ok(self.index_packs()?.iter().map(|p| p.2).sum())
    }

    /// Visit every indexed object, in id order.
    pub fn for_each_object(&self, f: impl FnMut(ObjectId, Location)) -> Result<()> {
        self.index.for_each_object(f).map_err(|e| self.index_err(e))
    }

    /// Up to `limit` indexed objects after `after` in id order.
    pub fn objects_page(&self, after: Option<ObjectId>, limit: usize) -> Result<Vec<(ObjectId, Location)>> {
        self.index.objects_page(after, limit).map_err(|e| self.index_err(e))
    }

    /// Indexed packs: (seq, hash, size).
    pub fn packs(&self) -> Result<Vec<(u64, [u8; 32], u64)>> {
        self.index_packs()
    }
}

/// Decrypt a raw record and check it is `id` of `kind`; returns the
/// plaintext and the record's links.
pub fn open_record(
    keys: &Keys,
    raw: &[u8],
    id: &ObjectId,
    kind: ObjectKind,
) -> std::result::Result<(Vec<u8>, Vec<ObjectId>), String> {
    open_record_sealed(keys, raw, id, kind, None)
}

/// [`open_record`], and when `seal` is given, the record's seal must be it.
fn open_record_sealed(
    keys: &Keys,
    raw: &[u8],
    id: &ObjectId,
    kind: ObjectKind,
    seal: Option<&Seal>,
) -> std::result::Result<(Vec<u8>, Vec<ObjectId>), String> {
    let (rec, _, got) = Record::decode_sealed(raw).map_err(|e| e.to_string())?;
    if let Some(seal) = seal
        && got != *seal
    {
        return Err(pack::altered(seal));
    }
    if rec.id != *id {
        return Err(format!("record holds {} instead", rec.id.short()));
    }
    if rec.kind != kind {
        return Err(format!("expected a {} object, found a {}", kind.name(), rec.kind.name()));
    }
    let plain = keys.open(rec.kind, &rec.id, &Links::of(&rec), &rec.body).map_err(|e: OpenError| e.to_string())?;
    Ok((plain, rec.links))
}

impl From<StoreError> for SourceError {
    fn from(e: StoreError) -> Self {
        SourceError { damage: e.is_damage(), message: e.to_string() }
    }
}

impl ObjectSource for Store {
    fn stored_len(&self, id: &ObjectId) -> Option<u64> {
        self.locate(id).ok().flatten().map(|(_, l)| l.len as u64)
    }
    fn get_linked(&self, id: &ObjectId, kind: ObjectKind) -> Result<(Vec<u8>, Vec<ObjectId>), SourceError> {
        Ok(Store::get_linked(self, id, kind)?)
    }
    fn keys(&self) -> &Arc<Keys> {
        Store::keys(self).expect("restore checks for the key before starting")
    }
    fn chunker_params(&self) -> crate::chunker::ChunkerParams {
        self.config().chunker
    }
    fn snapshot(&self, id: &ObjectId) -> Result<crate::snapshot::SnapshotRecord, SourceError> {
        Ok(self.load_snapshot(id)?)
    }
}
