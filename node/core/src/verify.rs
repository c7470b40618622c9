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
    /// Packs in the store (with read_data: packs_read < packs_total when a
    /// subset was read).
    pub packs_total: u64,
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

/// Which packs `verify --read-data-subset` reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Subset {
    /// A random share of the packs (0 < p <= 1), at least one.
    Fraction(f64),
    /// Slice `n` of `m` (1-based): the packs whose name, as a number,
    /// is n-1 modulo m. The slices 1/m ... m/m read every pack once.
    Slice(u64, u64),
    /// Random packs until at least this many bytes are read.
    Bytes(u64),
}

impl Subset {
    /// Parse `10%`, `2/5` or a size (`500MiB`, `2G`).
    pub fn parse(s: &str) -> Result<Subset, String> {
        let bad = || {
            format!(
                "--read-data-subset {s:?}: give a percentage (10%), a slice n/m (2/5, 1 <= n <= m) or a size (500MiB)"
            )
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            return Ok(Subset::Fraction(p / 100.0));
        }
        if let Some((n, m)) = s.split_once('/') {
            let (n, m): (u64, u64) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
            if n == 0 || m == 0 || n > m {
                return Err(bad());
            }
            return Ok(Subset::Slice(n, m));
        }
        let b: bytesize::ByteSize = s.trim().parse().map_err(|_| bad())?;
        if b.as_u64() == 0 {
            return Err(bad());
        }
        Ok(Subset::Bytes(b.as_u64()))
    }

    /// The packs (with sizes) of `all` this subset reads.
    pub fn choose(&self, all: &[([u8; 32], u64)]) -> Vec<[u8; 32]> {
        let mut v: Vec<([u8; 32], u64)> = all.to_vec();
        v.sort();
        match *self {
            Subset::Slice(n, m) => v
                .into_iter()
                .filter(|(h, _)| u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % m == n - 1)
                .map(|(h, _)| h)
                .collect(),
            Subset::Fraction(p) => {
                shuffle(&mut v);
                let k = ((v.len() as f64 * p).ceil() as usize).clamp(v.len().min(1), v.len());
                v.into_iter().take(k).map(|(h, _)| h).collect()
            }
            Subset::Bytes(want) => {
                shuffle(&mut v);
                let mut got = 0u64;
                v.into_iter()
                    .take_while(|(_, size)| {
                        let more = got < want;
                        got += size;
                        more
                    })
                    .map(|(h, _)| h)
                    .collect()
            }
        }
    }
}

fn shuffle<T>(v: &mut [T]) {
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let mut r = crate::sample::Rng::new(u64::from_le_bytes(seed));
    for i in (1..v.len()).rev() {
        let j = (r.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Verify a store; `progress` is called with (bytes read so far) during
/// the data pass.
pub fn run(store: &Store, read_data: bool, progress: impl FnMut(u64)) -> Result<VerifyReport, StoreError> {
    run_subset(store, read_data.then_some(None), progress)
}

/// [`run`] with the data pass over every pack (`Some(None)`), a subset of
/// them (`Some(Some(subset))`), or none (`None`).
pub fn run_subset(
    store: &Store,
    data: Option<Option<Subset>>,
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, StoreError> {
    let mut rep = VerifyReport::default();
    let mut bad: HashMap<ObjectId, String> = HashMap::new();
    let keys = store.keys().ok().cloned();

    // packs: existence always, content with read_data
    let on_disk: HashSet<[u8; 32]> = store.pack_files()?.into_iter().collect();
    if let Some(subset) = data {
        let indexed = store.index_packs()?;
        let seqs: HashMap<[u8; 32], u64> = indexed.iter().map(|(seq, h, _)| (*h, *seq)).collect();
        let per_pack = store.objects_per_pack()?;
        let chosen: Vec<[u8; 32]> = match subset {
            None => on_disk.iter().copied().collect(),
            Some(s) => {
                // sizes from the index; a pack it does not know is looked at
                let sizes: HashMap<[u8; 32], u64> = indexed.iter().map(|(_, h, size)| (*h, *size)).collect();
                let sized: Vec<([u8; 32], u64)> = on_disk
                    .iter()
                    .map(|h| {
                        let size = sizes.get(h).copied().unwrap_or_else(|| {
                            std::fs::metadata(pack::pack_path(store.dir(), h)).map(|m| m.len()).unwrap_or(0)
                        });
                        (*h, size)
                    })
                    .collect();
                s.choose(&sized)
            }
        };
        rep.packs_total = on_disk.len() as u64;
        for hash in &chosen {
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

#[cfg(test)]
mod subset_tests {
    use super::Subset;

    fn packs(n: u8) -> Vec<([u8; 32], u64)> {
        (0..n).map(|i| ([i.wrapping_mul(37); 32], 1000 + i as u64)).collect()
    }

    #[test]
    fn subsets_parse_and_slices_cover_every_pack_exactly_once() {
        assert_eq!(Subset::parse("10%"), Ok(Subset::Fraction(0.1)));
        assert_eq!(Subset::parse("2/5"), Ok(Subset::Slice(2, 5)));
        assert_eq!(Subset::parse("1KiB"), Ok(Subset::Bytes(1024)));
        for bad in ["0%", "101%", "0/3", "4/3", "x", "0", "1/0"] {
            assert!(Subset::parse(bad).is_err(), "{bad}");
        }
        let all = packs(50);
        let mut seen: Vec<[u8; 32]> = (1..=5).flat_map(|n| Subset::Slice(n, 5).choose(&all)).collect();
        seen.sort();
        let mut want: Vec<[u8; 32]> = all.iter().map(|(h, _)| *h).collect();
        want.sort();
        assert_eq!(seen, want);
        assert_eq!(Subset::Fraction(0.1).choose(&all).len(), 5);
        assert_eq!(Subset::Fraction(0.001).choose(&all).len(), 1, "at least one pack");
        // bytes: stops once the amount is reached
        let chosen = Subset::Bytes(2500).choose(&all);
        let size: u64 = chosen.iter().map(|h| all.iter().find(|(x, _)| x == h).unwrap().1).sum();
        assert!(size >= 2500 && chosen.len() == 3, "{} packs, {size} bytes", chosen.len());
    }
}
