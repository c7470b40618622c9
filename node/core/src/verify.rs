//! `omesh verify`: prove a store can restore what it claims to hold.
//!
//! Structure check (always): every snapshot decrypts, every tree reachable
//! from it decodes and validates, every object it references is indexed and
//! its pack file exists. With `read_data`, additionally every pack is read
//! end to end, every record's check hash verified, and (with the key) every
//! object decrypted and re-hashed against its id. Damage is reported per
//! snapshot with the paths of the affected files and directories, so the
//! operator knows exactly what a restore would lose.

use crate::objects::{self, ObjectSource};
use crate::snapshot::{Content, Extent, NodeKind};
use crate::store::walk::{GraphWalk, Visit, infallible, resolve_local};
use crate::store::{Store, StoreError, open_record, pack};
use omesh_proto::{ObjectId, ObjectKind};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// A damaged or missing object.
#[derive(Clone, Debug, Serialize)]
pub struct DamagedObject {
    /// Object id (hex), when known.
    pub id: String,
    /// Where (pack file and offset) or "missing".
    pub location: String,
    /// What is wrong.
    pub reason: String,
}

/// A snapshot affected by damage.
#[derive(Clone, Debug, Serialize)]
pub struct DamagedSnapshot {
    /// Snapshot id.
    pub snapshot: String,
    /// Affected paths (files whose data, or directories whose listing, is
    /// damaged or missing).
    pub paths: Vec<String>,
}

/// Verification result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Distinct trees walked.
    pub trees: u64,
    /// Packs read (with read_data).
    pub packs_read: u64,
    /// Objects read and verified (with read_data).
    pub objects_read: u64,
    /// Bytes read (with read_data).
    pub bytes_read: u64,
    /// Damaged objects.
    pub damaged_objects: Vec<DamagedObject>,
    /// Snapshots that cannot be fully restored.
    pub damaged_snapshots: Vec<DamagedSnapshot>,
    /// Snapshot records that cannot be read at all.
    pub unreadable_snapshots: Vec<DamagedObject>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.damaged_objects.is_empty() && self.damaged_snapshots.is_empty() && self.unreadable_snapshots.is_empty()
    }
}

/// Verify a store; `progress` is called with (bytes read so far) during
/// the data pass.
pub fn run(store: &Store, read_data: bool, mut progress: impl FnMut(u64)) -> Result<VerifyReport, StoreError> {
    let mut rep = VerifyReport::default();
    let mut bad: HashMap<ObjectId, String> = HashMap::new();
    let keys = store.keys().ok().cloned();

    // packs: existence always, content with read_data
    let on_disk: HashSet<[u8; 32]> = store.pack_files()?.into_iter().collect();
    if read_data {
        let seqs: HashMap<[u8; 32], u64> = store.index_packs()?.into_iter().map(|(seq, h, _)| (h, seq)).collect();
        let per_pack = store.objects_per_pack()?;
        for hash in &on_disk {
            let path = pack::pack_path(store.dir(), hash);
            let seq = seqs.get(hash).copied();
            let mut objs = 0u64;
            // offsets where a record is exactly what the index says is there
            let mut confirmed: HashSet<u64> = HashSet::new();
            let res = pack::scan(&path, Some(hash), |e, raw| {
                objs += 1;
                if let Some(seq) = seq
                    && let Ok(Some((_, l))) = store.locate(&e.id)
                    && (l.pack, l.offset, l.len, l.seal) == (seq, e.offset, e.len, e.seal)
                {
                    confirmed.insert(e.offset);
                }
                if let Some(k) = &keys
                    && let Err(reason) = open_record(k, raw, &e.id, e.kind)
                {
                    bad.insert(e.id, reason.clone());
                    rep.damaged_objects.push(DamagedObject {
                        id: e.id.to_hex(),
                        location: format!("{} at offset {}", path.display(), e.offset),
                        reason,
                    });
                }
            })
            .map_err(|source| StoreError::Io { op: "reading pack", path: path.clone(), source })?;
            for p in &res.problems {
                if let Some(id) = p.id {
                    bad.insert(id, p.reason.clone());
                }
                rep.damaged_objects.push(DamagedObject {
                    id: p.id.map(|i| i.to_hex()).unwrap_or_default(),
                    location: format!("{} at offset {}", path.display(), p.offset),
                    reason: p.reason.clone(),
                });
            }
            // every object the index places in this pack must be a valid
            // record at exactly its offset: a pack whose records shifted (a
            // torn write) scans as valid records at the wrong places
            if let Some(seq) = seq
                && (confirmed.len() as u64) < per_pack.get(&seq).copied().unwrap_or(0)
            {
                for (id, l) in store.objects_in_pack(seq)? {
                    if confirmed.contains(&l.offset) || bad.contains_key(&id) {
                        continue;
                    }
                    let reason = format!(
                        "no valid record of it where the index places it ({} bytes at offset {})",
                        l.len, l.offset
                    );
                    bad.insert(id, reason.clone());
                    rep.damaged_objects.push(DamagedObject {
                        id: id.to_hex(),
                        location: format!("{} at offset {}", path.display(), l.offset),
                        reason,
                    });
                }
            }
            if !res.hash_ok
                && res.problems.is_empty()
                && rep.damaged_objects.iter().all(|d| !d.location.starts_with(&path.display().to_string()))
            {
                rep.damaged_objects.push(DamagedObject {
                    id: String::new(),
                    location: path.display().to_string(),
                    reason: "pack content does not match its name (damaged outside any record)".into(),
                });
            }
            rep.packs_read += 1;
            rep.objects_read += objs;
            rep.bytes_read += res.size;
            progress(rep.bytes_read);
        }
    }

    // structure
    let Some(_) = keys else {
        // a replica without the key: every snapshot's whole graph must be
        // present (records carry their links in the clear)
        keyless_structure(store, &bad, &mut rep)?;
        return Ok(rep);
    };
    let mut good_trees: HashSet<ObjectId> = HashSet::new();
    let mut ids = store.snapshot_ids()?;
    ids.sort();
    for sid in ids {
        rep.snapshots += 1;
        let rec = match store.load_snapshot(&sid) {
            Ok(r) => r,
            Err(e) => {
                unreadable_snapshot(&mut rep, &sid, e);
                continue;
            }
        };
        let mut paths = Vec::new();
        walk(store, &rec.tree, "", &bad, &mut good_trees, &mut paths, &mut rep);
        if !paths.is_empty() {
            paths.sort();
            rep.damaged_snapshots.push(DamagedSnapshot { snapshot: sid.to_hex(), paths });
        }
    }
    // objects missing from the index found during the walk
    Ok(rep)
}

fn unreadable_snapshot(rep: &mut VerifyReport, sid: &ObjectId, e: StoreError) {
    rep.unreadable_snapshots.push(DamagedObject {
        id: sid.to_hex(),
        location: format!("snapshots/{}", sid.to_hex()),
        reason: e.to_string(),
    });
}

fn keyless_structure(store: &Store, bad: &HashMap<ObjectId, String>, rep: &mut VerifyReport) -> Result<(), StoreError> {
    let mut complete: HashSet<ObjectId> = HashSet::new();
    let mut ids = store.snapshot_ids()?;
    ids.sort();
    for sid in ids {
        rep.snapshots += 1;
        let raw = match store.read_snapshot_record(&sid) {
            Ok(r) => r,
            Err(e) => {
                unreadable_snapshot(rep, &sid, e);
                continue;
            }
        };
        // a verifying walk: every record must be the one its parent's link
        // names (format 2), down from the snapshot record's own links
        let (roots, seals) = omesh_proto::record::sealed_links_of(&raw).map(|x| (x.1, x.2)).unwrap_or_default();
        let mut walk = GraphWalk::from_roots(&roots).verifying();
        walk.expect_seals(&roots, &seals);
        let mut problems = Vec::new();
        loop {
            let batch = walk.next(4096);
            if batch.is_empty() {
                break;
            }
            for id in batch {
                let expected = walk.expected_seal(&id);
                if complete.contains(&id) && (expected.is_none() || store.locate(&id)?.map(|(_, l)| l.seal) == expected)
                {
                    continue;
                }
                if let Some(r) = bad.get(&id) {
                    problems.push(format!("object {} is damaged: {r}", id.short()));
                    continue;
                }
                match resolve_local(store, &id, expected) {
                    Ok(Visit::Missing) => {
                        rep.damaged_objects.push(DamagedObject {
                            id: id.to_hex(),
                            location: "missing".into(),
                            reason: "referenced but not in the store".into(),
                        });
                        problems.push(format!("object {} is missing", id.short()));
                    }
                    Ok(v @ Visit::Object { kind, .. }) => {
                        if kind != ObjectKind::Blob {
                            rep.trees += 1;
                        }
                        walk.visit(&v).map_err(infallible)?;
                    }
                    Ok(Visit::Skip) => {}
                    Err(e @ StoreError::Index { .. }) => return Err(e),
                    Err(e) => problems.push(format!("object {} is unreadable: {e}", id.short())),
                }
            }
        }
        if let Some(c) = walk.seal_conflict() {
            problems.push(format!("object {} is named with two different seals", c.short()));
        }
        let seen: Vec<ObjectId> = walk.frontier().seen().iter().copied().collect();
        if problems.is_empty() {
            complete.extend(seen);
        } else {
            rep.damaged_snapshots.push(DamagedSnapshot { snapshot: sid.to_hex(), paths: problems });
        }
    }
    Ok(())
}

fn check_ids(
    store: &Store,
    ids: &[ObjectId],
    bad: &HashMap<ObjectId, String>,
    rep: &mut VerifyReport,
) -> Option<String> {
    let present = store.contains_many(ids).ok()?;
    for (id, ok) in ids.iter().zip(present) {
        if !ok {
            if !rep.damaged_objects.iter().any(|d| d.id == id.to_hex()) {
                rep.damaged_objects.push(DamagedObject {
                    id: id.to_hex(),
                    location: "missing".into(),
                    reason: "referenced but not in the store".into(),
                });
            }
            return Some(format!("object {} is missing", id.short()));
        }
        if let Some(r) = bad.get(id) {
            return Some(format!("object {} is damaged: {r}", id.short()));
        }
    }
    None
}

/// Walk a tree; returns true when the whole subtree is intact.
fn walk(
    store: &Store,
    tree: &ObjectId,
    prefix: &str,
    bad: &HashMap<ObjectId, String>,
    good: &mut HashSet<ObjectId>,
    damaged: &mut Vec<String>,
    rep: &mut VerifyReport,
) -> bool {
    if good.contains(tree) {
        return true;
    }
    let here = if prefix.is_empty() { "/".to_string() } else { prefix.to_string() };
    if let Some(r) = bad.get(tree) {
        damaged.push(format!("{here} (directory listing damaged: {r})"));
        return false;
    }
    let nodes = match objects::load_dir(store as &dyn ObjectSource, tree) {
        Ok(n) => n,
        Err(e) => {
            if e.message.contains("missing") && !rep.damaged_objects.iter().any(|d| d.id == tree.to_hex()) {
                rep.damaged_objects.push(DamagedObject {
                    id: tree.to_hex(),
                    location: "missing".into(),
                    reason: e.message.clone(),
                });
            }
            damaged.push(format!("{here} (directory listing unreadable: {e})"));
            return false;
        }
    };
    rep.trees += 1;
    let mut ok = true;
    for n in &nodes {
        let p = format!("{prefix}/{}", n.name_lossy());
        match &n.kind {
            NodeKind::Dir { tree } if !walk(store, tree, &p, bad, good, damaged, rep) => {
                ok = false;
            }
            NodeKind::File { size, content } => {
                let problem = match content {
                    Content::Inline(ext) => {
                        let ids: Vec<ObjectId> = ext
                            .iter()
                            .filter_map(|e| if let Extent::Data { id, .. } = e { Some(*id) } else { None })
                            .collect();
                        check_ids(store, &ids, bad, rep)
                    }
                    Content::Lists(lists) => match check_ids(store, lists, bad, rep) {
                        Some(p) => Some(p),
                        None => match objects::load_extents(store as &dyn ObjectSource, content, *size) {
                            Ok(ext) => {
                                let ids: Vec<ObjectId> = ext
                                    .iter()
                                    .filter_map(|e| if let Extent::Data { id, .. } = e { Some(*id) } else { None })
                                    .collect();
                                check_ids(store, &ids, bad, rep)
                            }
                            Err(e) => Some(e.message),
                        },
                    },
                };
                if let Some(why) = problem {
                    damaged.push(format!("{p} ({why})"));
                    ok = false;
                }
            }
            _ => {}
        }
    }
    if ok {
        good.insert(*tree);
    }
    ok
}

/// Decrypt-check a single object (used by tests and `omesh cat`-like tools).
pub fn check_object(store: &Store, id: &ObjectId, kind: ObjectKind) -> Result<(), StoreError> {
    store.get(id, kind).map(|_| ())
}
