//! Writing objects: sealing plaintext into records, claiming ids so two
//! writers never store one object twice, and appending records to packs
//! that become durable before the index learns of them.

use super::error::{Result, StoreError};
use super::open::Store;
use super::pack::PackWriter;
use crate::crypto::Links;
use omesh_proto::{ObjectId, ObjectKind, Record, Seal};
use std::sync::Arc;

/// A sealed record ready to be written: its id, its seal and its bytes.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// Object id.
    pub id: ObjectId,
    /// Seal (BLAKE3 of the record before its check).
    pub seal: Seal,
    /// The encoded record.
    pub bytes: Vec<u8>,
}

/// Counters of what a writer added.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteStats {
    /// Objects added.
    pub objects: u64,
    /// Record bytes added (what the store grew by, before pack headers).
    pub bytes: u64,
    /// Packs written.
    pub packs: u64,
}

impl Store {
    /// The seals of `links`, as a parent's format-2 record names them: of
    /// objects this process is writing, or as indexed. A link to an object
    /// that is not stored is an error (a record must not name a seal that
    /// no record has).
    pub fn link_seals(&self, links: &[ObjectId]) -> Result<Vec<Seal>> {
        let mut out: Vec<Option<Seal>> = {
            let pending = self.pending.lock().expect("pending lock");
            links.iter().map(|l| pending.get(l).copied()).collect()
        };
        let unknown: Vec<ObjectId> = links.iter().zip(&out).filter(|(_, s)| s.is_none()).map(|(l, _)| *l).collect();
        if !unknown.is_empty() {
            let locs = self.index.get_many(&unknown).map_err(|e| self.index_err(e))?;
            let mut found = unknown
                .iter()
                .zip(locs)
                .map(|(id, l)| l.map(|l| l.seal).or_else(|| self.extra.get(id).map(|(_, e)| e.seal)));
            for s in out.iter_mut().filter(|s| s.is_none()) {
                *s = found.next().flatten();
            }
        }
        links
            .iter()
            .zip(out)
            .map(|(l, s)| s.ok_or(StoreError::Missing(*l, "linked object is not stored here, so its seal is unknown")))
            .collect()
    }

    /// Seal a plaintext into a format-2 record, looking up the seals of its
    /// links ([`Store::link_seals`]).
    pub fn seal(&self, kind: ObjectKind, plaintext: &[u8], links: Vec<ObjectId>) -> Result<Sealed> {
        let seals = self.link_seals(&links)?;
        self.seal_linked(kind, plaintext, links, seals)
    }

    /// Seal a plaintext into a format-2 record with these links and seals.
    pub fn seal_linked(
        &self,
        kind: ObjectKind,
        plaintext: &[u8],
        links: Vec<ObjectId>,
        seals: Vec<Seal>,
    ) -> Result<Sealed> {
        let rec = self.sealed_record(kind, plaintext, links, seals)?;
        let (bytes, seal) = rec.encode_sealed();
        Ok(Sealed { id: rec.id, seal, bytes })
    }

    /// The format-2 record of a plaintext, not encoded yet (a snapshot
    /// record gets its attestation first).
    pub(super) fn sealed_record(
        &self,
        kind: ObjectKind,
        plaintext: &[u8],
        links: Vec<ObjectId>,
        seals: Vec<Seal>,
    ) -> Result<Record> {
        let keys = self.keys()?;
        let l = Links::v2(&links, &seals);
        let id = keys.id_for(kind, &l, plaintext);
        let body = keys.seal(kind, &id, &l, plaintext, self.config.packs.compression_level);
        Ok(Record::new(kind, id, links, seals, body))
    }

    /// A writer that appends records to packs. Only one per store at a
    /// time makes sense; it needs a writable store.
    pub fn sink(&self) -> Result<PackSink<&Store>> {
        if !self.writable {
            return Err(self.locked());
        }
        Ok(PackSink { store: self, current: None, stats: WriteStats::default() })
    }

    /// A sink that owns a reference to the store (for long-lived writers).
    pub fn owned_sink(self: &Arc<Self>) -> Result<PackSink<Arc<Store>>> {
        if !self.writable {
            return Err(self.locked());
        }
        Ok(PackSink { store: self.clone(), current: None, stats: WriteStats::default() })
    }

    /// Write a record received from elsewhere through `sink` after checking
    /// it (check hash; with the key also decryption and id).
    pub fn import_record<S: std::ops::Deref<Target = Store>>(
        &self,
        sink: &mut PackSink<S>,
        bytes: &[u8],
    ) -> Result<bool> {
        let (rec, used, seal) = Record::decode_sealed(bytes).map_err(|e| StoreError::Corrupt {
            id: ObjectId::ZERO,
            pack: "incoming record".into(),
            offset: 0,
            reason: e.to_string(),
        })?;
        if used != bytes.len() {
            return Err(StoreError::Corrupt {
                id: rec.id,
                pack: "incoming record".into(),
                offset: 0,
                reason: "trailing bytes".into(),
            });
        }
        if let Some(keys) = &self.keys {
            keys.open(rec.kind, &rec.id, &Links::of(&rec), &rec.body).map_err(|e| StoreError::Corrupt {
                id: rec.id,
                pack: "incoming record".into(),
                offset: 0,
                reason: e.to_string(),
            })?;
        }
        if !self.claim(&rec.id, seal)? {
            return Ok(false);
        }
        sink.add(rec.id, rec.kind, seal, bytes)?;
        Ok(true)
    }
}

/// Appends records to packs, closing each at the target size. `S` is how
/// the sink refers to its store: `&Store` in a scoped pipeline,
/// `Arc<Store>` in a long-lived writer.
pub struct PackSink<S: std::ops::Deref<Target = Store>> {
    store: S,
    current: Option<PackWriter>,
    stats: WriteStats,
}

impl<S: std::ops::Deref<Target = Store>> PackSink<S> {
    /// Append a claimed object's record, whose seal is `seal`.
    pub fn add(&mut self, id: ObjectId, kind: ObjectKind, seal: Seal, record: &[u8]) -> Result<()> {
        let tmp = self.store.dir.join("tmp");
        if self.current.is_none() {
            self.current = Some(PackWriter::create(&tmp).map_err(StoreError::io("creating pack in", &tmp))?);
        }
        let w = self.current.as_mut().expect("just set");
        if let Err(e) = w.append(id, kind, seal, record) {
            // the pack is torn: nothing in it may ever be indexed. Its
            // objects are given back (not durable, so never promised to a
            // peer); a later add starts a new pack
            self.abandon();
            return Err(StoreError::io("writing pack in", &tmp)(e));
        }
        self.stats.objects += 1;
        self.stats.bytes += record.len() as u64;
        if w.len() >= self.store.config.packs.target_bytes {
            self.flush()?;
        }
        Ok(())
    }

    /// Close the current pack: durable on disk, then indexed.
    pub fn flush(&mut self) -> Result<()> {
        let Some(w) = self.current.take() else {
            return Ok(());
        };
        if w.is_empty() {
            w.discard();
            return Ok(());
        }
        let ids = w.entry_ids();
        let indexed = match w.finish(&self.store.dir) {
            Ok(info) => {
                self.store.forget_pack_file(&info.hash);
                self.store.index.add_pack(&info).map_err(|e| self.store.index_err(e))
            }
            Err(e) => Err(StoreError::io("finishing pack in", &self.store.dir.join("packs"))(e)),
        };
        // indexed or not, these objects are no longer being written: on an
        // error they are not stored, and a later write must store them again
        self.release(&ids);
        indexed?;
        self.stats.packs += 1;
        Ok(())
    }

    /// Drop the pack being written, giving back its objects' claims.
    fn abandon(&mut self) {
        if let Some(w) = self.current.take() {
            let ids = w.entry_ids();
            w.discard();
            self.release(&ids);
        }
    }

    fn release(&self, ids: &[ObjectId]) {
        let mut pending = self.store.pending.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            pending.remove(id);
        }
    }

    /// Flush and return what was added.
    pub fn finish(mut self) -> Result<WriteStats> {
        self.flush()?;
        Ok(self.stats)
    }

    /// Bytes in the pack being written (not indexed yet).
    pub fn unflushed_bytes(&self) -> u64 {
        self.current.as_ref().map_or(0, |w| w.len())
    }

    /// What was added so far.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }
}

impl<S: std::ops::Deref<Target = Store>> Drop for PackSink<S> {
    fn drop(&mut self) {
        // unfinished (error path): the objects were never indexed
        self.abandon();
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{InitOptions, Sealed, Store, StoreError};
    use omesh_proto::{ObjectKind, Record};

    fn init(d: &std::path::Path) -> Store {
        Store::init(&d.join("s"), InitOptions::new("t")).unwrap()
    }

    #[test]
    fn an_object_is_claimed_once_and_pending_until_durable() {
        let d = tempfile::tempdir().unwrap();
        let s = init(d.path());
        let Sealed { id, seal, bytes: rec } = s.seal(ObjectKind::Blob, b"x", vec![]).unwrap();
        assert!(s.claim(&id, seal).unwrap());
        assert!(!s.claim(&id, seal).unwrap(), "a second writer must not store it again");
        assert_eq!(s.link_seals(&[id]).unwrap(), vec![seal], "a parent sealed now names it");
        assert!(s.contains(&id).unwrap(), "a writer is told a pending object is there");
        assert_eq!(s.durable_many(&[id]).unwrap(), vec![false], "but a peer is not promised it yet");
        let mut sink = s.sink().unwrap();
        sink.add(id, ObjectKind::Blob, seal, &rec).unwrap();
        let st = sink.finish().unwrap();
        assert_eq!((st.objects, st.packs), (1, 1));
        assert_eq!(s.durable_many(&[id]).unwrap(), vec![true]);
        assert_eq!(s.get(&id, ObjectKind::Blob).unwrap(), b"x");
        assert_eq!(s.link_seals(&[id]).unwrap(), vec![seal], "and so does one sealed after it is indexed");
        let tree = s.seal(ObjectKind::Tree, b"t", vec![id]).unwrap();
        let (rec, _) = Record::decode(&tree.bytes).unwrap();
        assert_eq!(rec.seals, vec![seal]);
        assert!(s.link_seals(&[omesh_proto::ObjectId([5; 32])]).is_err(), "an unknown link has no seal");
    }

    #[test]
    fn a_sink_dropped_unfinished_leaves_nothing_and_releases_its_claims() {
        let d = tempfile::tempdir().unwrap();
        let s = init(d.path());
        let Sealed { id, seal, bytes: rec } = s.seal(ObjectKind::Blob, b"y", vec![]).unwrap();
        assert!(s.claim(&id, seal).unwrap());
        let mut sink = s.sink().unwrap();
        sink.add(id, ObjectKind::Blob, seal, &rec).unwrap();
        drop(sink);
        assert!(!s.contains(&id).unwrap());
        assert!(s.claim(&id, seal).unwrap(), "the next writer stores it");
        assert_eq!(std::fs::read_dir(s.dir().join("tmp")).unwrap().count(), 0, "the partial pack is gone");
    }

    #[test]
    fn imported_records_are_checked_before_they_are_written() {
        let d = tempfile::tempdir().unwrap();
        let s = init(d.path());
        let Sealed { id, bytes: rec, .. } = s.seal(ObjectKind::Blob, b"z", vec![]).unwrap();
        let mut sink = s.sink().unwrap();
        let mut trailing = rec.clone();
        trailing.push(0);
        assert!(matches!(s.import_record(&mut sink, &trailing), Err(StoreError::Corrupt { .. })));
        // right frame and check hash, but not sealed with this store's key
        let forged = Record::new(ObjectKind::Blob, id, vec![], vec![], vec![7; 64]).encode();
        assert!(matches!(s.import_record(&mut sink, &forged), Err(StoreError::Corrupt { .. })));
        assert!(s.import_record(&mut sink, &rec).unwrap());
        assert!(!s.import_record(&mut sink, &rec).unwrap(), "already claimed");
        sink.finish().unwrap();
        assert_eq!(s.object_count().unwrap(), 1);
    }
}
