//! Scrub: re-read and re-hash what a store holds, at a limited rate, so
//! silent damage (a flipped bit, a bad sector) is found while other
//! replicas still have good copies.
//!
//! Every indexed object is read and its check hash verified (keyless, so it
//! works on replicas of other sources; with the key it is also decrypted).
//! Every snapshot record is decoded and checked. A bad object is
//! quarantined: its bytes are copied to `quarantine/` and it leaves the
//! index, so a good copy can be fetched from another replica and written
//! again (see `the node's scrub heal`). The pass walks the index in id
//! order by pages, so memory stays flat and a pass can continue where the
//! previous one stopped.

use crate::policy::bandwidth::{Pacer, Rate};
use crate::store::{Store, StoreError};
use omesh_proto::ObjectId;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// `[scrub]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubConfig {
    /// Run scrub passes in the daemon.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Read rate ("16 MiB/s"; "unlimited").
    #[serde(default = "d_scrub_rate")]
    pub rate: Rate,
    /// Start a full pass at most this often (seconds; default a week).
    #[serde(default = "d_scrub_every")]
    pub every_secs: u64,
}

fn d_scrub_rate() -> Rate {
    Rate(Some(16 << 20))
}
fn d_scrub_every() -> u64 {
    7 * 86400
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig { enabled: true, rate: d_scrub_rate(), every_secs: d_scrub_every() }
    }
}

fn d_true() -> bool {
    true
}

/// Objects per index page.
const PAGE: usize = 1024;

/// What a damaged item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DamageKind {
    /// An object record in a pack.
    Object,
    /// A snapshot record.
    Snapshot,
}

/// One damaged item.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Damage {
    /// Object or snapshot id.
    #[serde(with = "omesh_proto::id::hex")]
    pub id: ObjectId,
    /// Object or snapshot record.
    pub what: DamageKind,
    /// What is wrong.
    pub reason: String,
    /// Where the bad bytes were moved.
    pub quarantined: String,
    /// The seal this store recorded for the object when it stored it: a
    /// replacement from a peer must have exactly this seal (a holder
    /// without the key cannot check it any other way).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_seal")]
    pub seal: Option<omesh_proto::Seal>,
}

mod opt_seal {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<omesh_proto::Seal>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_str(&hex::encode(x.0)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<omesh_proto::Seal>, D::Error> {
        let t: Option<String> = Option::deserialize(d)?;
        t.map(|t| {
            let mut b = [0u8; 32];
            hex::decode_to_slice(&t, &mut b).map_err(serde::de::Error::custom)?;
            Ok(omesh_proto::Seal(b))
        })
        .transpose()
    }
}

/// Result of scrubbing one store.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScrubPass {
    /// Store directory.
    pub store: String,
    /// Objects read.
    pub objects: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Snapshot records checked.
    pub snapshots: u64,
    /// Damage found (and quarantined).
    pub damaged: Vec<Damage>,
    /// Whether the pass reached the end of the index (false: stopped by
    /// `budget`; `cursor` says where to continue).
    pub complete: bool,
    /// Packs rewritten without their damaged records.
    pub packs_rewritten: u64,
    /// Bytes of retired packs deleted from `trash/` (those retired longer
    /// ago than the grace period, by this scrub or an earlier one or GC).
    #[serde(default)]
    pub trash_freed: u64,
    /// Continue after this id.
    #[serde(skip)]
    pub cursor: Option<ObjectId>,
    /// Seconds.
    pub seconds: f64,
}

/// Scrub `store` from `cursor` on, reading at most `budget` bytes (a full
/// pass with `u64::MAX`), paced by `pacer`. `stop` is polled between pages.
/// The damaged packs it rewrites go to `trash/` like GC's; it deletes what
/// has been there longer than `trash_grace` (GC's grace period), so
/// repeated repairs do not fill the disk between two GC runs.
pub fn scrub_store(
    store: &Store,
    pacer: &Pacer,
    cursor: Option<ObjectId>,
    budget: u64,
    trash_grace: std::time::Duration,
    stop: &dyn Fn() -> bool,
) -> Result<ScrubPass, StoreError> {
    let t = Instant::now();
    crate::failpoint::hit("scrub.store");
    let mut pass = ScrubPass { store: store.dir().display().to_string(), ..Default::default() };
    let have_key = store.keys().is_ok();
    if cursor.is_none() {
        for sid in store.snapshot_ids()? {
            pass.snapshots += 1;
            if let Err(e) = store.read_snapshot_record(&sid)
                && e.is_damage()
            {
                let q = quarantine_snapshot(store, &sid);
                pass.damaged.push(Damage {
                    id: sid,
                    what: DamageKind::Snapshot,
                    reason: e.to_string(),
                    quarantined: q,
                    seal: None,
                });
            }
        }
    }
    let mut after = cursor;
    let mut damaged_packs = std::collections::HashSet::new();
    loop {
        if stop() {
            break;
        }
        let page = store.objects_page(after, PAGE)?;
        let Some(last) = page.last() else {
            pass.complete = true;
            after = None;
            break;
        };
        after = Some(last.0);
        for (id, loc) in page {
            pacer.pace_blocking(loc.len as u64);
            pass.objects += 1;
            pass.bytes += loc.len as u64;
            // with the key, every record is opened too (one hash for the
            // check and the seal); without it, check and seal only
            let res =
                if have_key { store.get_linked(&id, loc.kind).map(|_| ()) } else { store.read_record(&id).map(|_| ()) };
            match res {
                Ok(()) => {}
                // gone since the page was read (swept): fine
                Err(StoreError::Missing(..)) => {}
                Err(e) if e.is_damage() => {
                    damaged_packs.insert(loc.pack);
                    let q = store.quarantine(&id, &e.to_string()).map(|p| p.display().to_string()).unwrap_or_default();
                    pass.damaged.push(Damage {
                        id,
                        what: DamageKind::Object,
                        reason: e.to_string(),
                        quarantined: q,
                        seal: Some(loc.seal),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        if pass.bytes >= budget {
            break;
        }
    }
    // rewrite each damaged pack with only its good records, so the bad
    // bytes leave the store (they are kept in quarantine/)
    if !damaged_packs.is_empty() {
        let mut live = Vec::new();
        store.for_each_object(|id, loc| {
            if damaged_packs.contains(&loc.pack) {
                live.push((id, loc));
            }
        })?;
        live.sort_by_key(|(_, l)| (l.pack, l.offset));
        let seqs: Vec<u64> = damaged_packs.into_iter().collect();
        match store.repack(&seqs, &live) {
            Ok(r) => pass.packs_rewritten = r.packs_retired,
            Err(e) => {
                tracing::warn!(store = %pass.store, error = %e, "could not rewrite a damaged pack; it stays until the next scrub")
            }
        }
    }
    let before = std::time::SystemTime::now().checked_sub(trash_grace).unwrap_or(std::time::UNIX_EPOCH);
    match store.empty_trash(before) {
        Ok(n) => pass.trash_freed = n,
        Err(e) => tracing::warn!(store = %pass.store, error = %e, "could not delete retired packs from trash/"),
    }
    pass.cursor = after;
    pass.seconds = t.elapsed().as_secs_f64();
    Ok(pass)
}

fn quarantine_snapshot(store: &Store, id: &ObjectId) -> String {
    let from = store.dir().join("snapshots").join(id.to_hex());
    let qdir = store.dir().join("quarantine");
    let to = qdir.join(format!("snapshot.{}", id.to_hex()));
    let _ = std::fs::create_dir_all(&qdir);
    match std::fs::rename(&from, &to) {
        Ok(()) => {
            tracing::error!(snapshot = %id.short(), quarantined = %to.display(), "damaged snapshot record quarantined");
            to.display().to_string()
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InitOptions, Sealed};
    use omesh_proto::ObjectKind;

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    #[test]
    fn finds_and_quarantines_a_flipped_byte() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(&d.path().join("s"), InitOptions::new("t")).unwrap();
        let mut ids = Vec::new();
        let mut sink = s.sink().unwrap();
        for i in 0..10u8 {
            let Sealed { id, seal: id_seal, bytes: rec } = s.seal(ObjectKind::Blob, &[i; 5000], vec![]).unwrap();
            assert!(s.claim(&id, id_seal).unwrap());
            sink.add(id, ObjectKind::Blob, id_seal, &rec).unwrap();
            ids.push(id);
        }
        sink.finish().unwrap();
        let (hash, loc) = s.locate(&ids[3]).unwrap().unwrap();
        let p = crate::store::pack::pack_path(s.dir(), &hash);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[(loc.offset + loc.len as u64 / 2) as usize] ^= 0x40;
        std::fs::write(&p, &bytes).unwrap();
        let pass = scrub_store(&s, &Pacer::new(Rate::UNLIMITED), None, u64::MAX, HOUR, &|| false).unwrap();
        assert!(pass.complete);
        assert_eq!(pass.objects, 10);
        assert_eq!(pass.damaged.len(), 1, "{pass:?}");
        assert_eq!(pass.damaged[0].id, ids[3]);
        assert!(s.locate(&ids[3]).unwrap().is_none(), "quarantined objects leave the index");
        assert!(std::path::Path::new(&pass.damaged[0].quarantined).exists());
        assert_eq!(pass.packs_rewritten, 1);
        assert!(!p.exists(), "the damaged pack left packs/");
        for (i, id) in ids.iter().enumerate() {
            if i != 3 {
                s.read_record(id).unwrap();
            }
        }
        // the damaged pack waits in trash/ for the grace period
        let trashed = d.path().join("s").join("trash").join(p.file_name().unwrap());
        assert!(trashed.exists(), "retired to trash/");
        assert_eq!(pass.trash_freed, 0);
        // the next pass is clean
        let pass = scrub_store(&s, &Pacer::new(Rate::UNLIMITED), None, u64::MAX, HOUR, &|| false).unwrap();
        assert!(pass.damaged.is_empty());
        assert_eq!(pass.objects, 9);
        assert!(trashed.exists(), "still within the grace period");
        // and a pass after the grace period deletes it
        let size = std::fs::metadata(&trashed).unwrap().len();
        std::fs::File::options()
            .write(true)
            .open(&trashed)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - 2 * HOUR)
            .unwrap();
        let pass = scrub_store(&s, &Pacer::new(Rate::UNLIMITED), None, u64::MAX, HOUR, &|| false).unwrap();
        assert!(!trashed.exists(), "deleted after the grace period");
        assert_eq!(pass.trash_freed, size);
    }

    /// The torture suite's flips found this: a pack holding one record,
    /// damaged, is retired whole; the repair writes the same record again
    /// into a pack with the same digest, so the same file name. The store
    /// must read the new file, not the damaged one through a handle it
    /// kept open from before.
    #[test]
    fn a_repaired_record_in_a_pack_of_the_damaged_ones_name_is_read_from_the_new_file() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(&d.path().join("s"), InitOptions::new("t")).unwrap();
        let Sealed { id, seal, bytes: rec } = s.seal(ObjectKind::Tree, &[7u8; 3000], vec![]).unwrap();
        let store_it = |s: &Store| {
            assert!(s.claim(&id, seal).unwrap());
            let mut sink = s.sink().unwrap();
            sink.add(id, ObjectKind::Tree, seal, &rec).unwrap();
            sink.finish().unwrap();
        };
        store_it(&s);
        // read once: the store now has the pack open
        s.read_record(&id).unwrap();
        let (hash, loc) = s.locate(&id).unwrap().unwrap();
        let p = crate::store::pack::pack_path(s.dir(), &hash);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[(loc.offset + loc.len as u64 / 2) as usize] ^= 0x01;
        std::fs::write(&p, &bytes).unwrap();
        let pass = scrub_store(&s, &Pacer::new(Rate::UNLIMITED), None, u64::MAX, HOUR, &|| false).unwrap();
        assert_eq!(pass.damaged.len(), 1, "{pass:?}");
        assert!(!p.exists(), "the damaged pack left packs/");
        // the repair: the same record, so the same pack under the same name
        store_it(&s);
        assert_eq!(s.locate(&id).unwrap().unwrap().0, hash, "the test needs the same pack name");
        assert_eq!(s.read_record(&id).unwrap(), rec, "read from the new pack, not the retired damaged file");
        let pass = scrub_store(&s, &Pacer::new(Rate::UNLIMITED), None, u64::MAX, HOUR, &|| false).unwrap();
        assert!(pass.damaged.is_empty(), "{pass:?}");
    }

    #[test]
    fn a_budget_splits_a_pass_and_the_cursor_resumes_it() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(&d.path().join("s"), InitOptions::new("t")).unwrap();
        let mut sink = s.sink().unwrap();
        for i in 0..3000u32 {
            let Sealed { id, seal: id_seal, bytes: rec } = s.seal(ObjectKind::Blob, &i.to_le_bytes(), vec![]).unwrap();
            assert!(s.claim(&id, id_seal).unwrap());
            sink.add(id, ObjectKind::Blob, id_seal, &rec).unwrap();
        }
        sink.finish().unwrap();
        let a = scrub_store(&s, &Pacer::new(Rate::UNLIMITED), None, 1, HOUR, &|| false).unwrap();
        assert!(!a.complete);
        assert_eq!(a.objects, PAGE as u64);
        let b = scrub_store(&s, &Pacer::new(Rate::UNLIMITED), a.cursor, u64::MAX, HOUR, &|| false).unwrap();
        assert!(b.complete);
        assert_eq!(a.objects + b.objects, 3000);
    }
}
