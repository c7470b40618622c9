//! Pack files: append-only containers of object records.
//!
//! ```text
//! pack := PACK_MAGIC (8 bytes, last byte = pack format version) record*
//! ```
//!
//! Records are self-describing (see `omesh_proto::record`), so a pack can be
//! re-indexed from its bytes alone. A pack is written under `tmp/`, fsynced,
//! renamed to `packs/<hh>/<digest>.pack` and the directory fsynced; only
//! then are its objects added to the index. A pack file therefore is either
//! complete and durable, or absent. Its name is its digest, which lets
//! anyone (a peer without the key, a scrub, an S3 upload) verify it as a
//! whole: BLAKE3 over the pack magic and, for every record, its length and
//! check hash. Every byte is covered (through the record check hashes)
//! without hashing the data a second time.

use crate::failpoint;
use omesh_proto::record::{self, HEADER_BYTES, RecordHeader};
use omesh_proto::{ObjectId, ObjectKind, Seal};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Pack magic; the last byte is the pack format version.
pub const PACK_MAGIC: [u8; 8] = *b"omeshpk\x01";

/// Where one object sits in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// Object id.
    pub id: ObjectId,
    /// Kind.
    pub kind: ObjectKind,
    /// Byte offset of the record in the pack.
    pub offset: u64,
    /// Record length.
    pub len: u32,
    /// Seal of the record (BLAKE3 of its bytes before the check).
    pub seal: Seal,
}

/// A finished, durable pack.
#[derive(Clone, Debug)]
pub struct PackInfo {
    /// BLAKE3 of the file; also its name.
    pub hash: [u8; 32],
    /// File size.
    pub size: u64,
    /// Objects in it.
    pub entries: Vec<PackEntry>,
}

/// Path of a pack inside the store.
pub fn pack_path(store: &Path, hash: &[u8; 32]) -> PathBuf {
    let h = hex::encode(hash);
    store.join("packs").join(&h[..2]).join(format!("{h}.pack"))
}

/// Parse a pack file name back into its hash.
pub fn parse_pack_name(name: &str) -> Option<[u8; 32]> {
    let h = name.strip_suffix(".pack")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).ok()?;
    Some(out)
}

/// Add one record to a pack digest: its length and its check hash.
pub fn digest_record(h: &mut blake3::Hasher, record: &[u8]) {
    h.update(&(record.len() as u64).to_le_bytes());
    h.update(&record[record.len() - record::CHECK_BYTES..]);
}

/// fsync a directory so a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes one pack under `tmp/`.
pub struct PackWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    hasher: blake3::Hasher,
    len: u64,
    entries: Vec<PackEntry>,
}

impl PackWriter {
    /// Start a pack in `tmp_dir`.
    pub fn create(tmp_dir: &Path) -> io::Result<Self> {
        let mut rnd = [0u8; 12];
        getrandom::fill(&mut rnd).map_err(|e| io::Error::other(e.to_string()))?;
        let tmp = tmp_dir.join(format!("{}.pack-tmp", hex::encode(rnd)));
        let file = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&PACK_MAGIC);
        // records of 256 KiB and more bypass the buffer (no extra copy)
        let mut w =
            PackWriter { out: BufWriter::with_capacity(256 << 10, file), tmp, hasher, len: 0, entries: Vec::new() };
        if let Err(e) = w.write_raw(&PACK_MAGIC) {
            w.discard();
            return Err(e);
        }
        Ok(w)
    }

    fn write_raw(&mut self, b: &[u8]) -> io::Result<()> {
        if let Some(e) = failpoint::io_error("pack.write") {
            // a disk that fills in the middle of a record: part of it
            // reaches the file
            let _ = self.out.write_all(&b[..b.len() / 2]);
            let _ = self.out.flush();
            return Err(e);
        }
        self.out.write_all(b)?;
        self.len += b.len() as u64;
        Ok(())
    }

    /// Append an encoded record whose seal is `seal`.
    ///
    /// After an error the pack is torn (part of the record may be in the
    /// file, and its length and digest no longer describe the bytes): the
    /// only thing left to do with it is [`PackWriter::discard`].
    pub fn append(&mut self, id: ObjectId, kind: ObjectKind, seal: Seal, record: &[u8]) -> io::Result<()> {
        let offset = self.len;
        self.write_raw(record)?;
        digest_record(&mut self.hasher, record);
        self.entries.push(PackEntry { id, kind, offset, len: record.len() as u32, seal });
        failpoint::hit("pack.append");
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no record was appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Make the pack durable under its final name in `store`.
    /// On an error before the rename the temporary file is removed; after
    /// it, the pack is in place but must not be indexed (its directory entry
    /// may not be durable), so the caller treats its objects as not written
    /// and GC removes it as an unindexed pack.
    pub fn finish(self, store: &Path) -> io::Result<PackInfo> {
        let PackWriter { out, tmp, hasher, len, entries } = self;
        let durable = (|| {
            let file = out.into_inner().map_err(|e| e.into_error())?;
            if let Some(e) = failpoint::io_error("pack.sync") {
                return Err(e);
            }
            file.sync_all()
        })();
        if let Err(e) = durable {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        failpoint::hit("pack.before_rename");
        let hash: [u8; 32] = *hasher.finalize().as_bytes();
        let dest = pack_path(store, &hash);
        let dir = dest.parent().expect("pack path has a parent");
        let placed = (|| {
            if !dir.exists() {
                fs::create_dir_all(dir)?;
                sync_dir(dir.parent().expect("packs dir"))?;
            }
            fs::rename(&tmp, &dest)
        })();
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(dir)?;
        failpoint::hit("pack.after_rename");
        Ok(PackInfo { hash, size: len, entries })
    }

    /// Abandon the pack (error path).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Builds a pack in memory (an S3 pack object): the same format and
/// digest as a [`PackWriter`] writes to disk.
pub struct PackBuilder {
    bytes: Vec<u8>,
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack (just its magic).
    pub fn new() -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&PACK_MAGIC);
        PackBuilder { bytes: PACK_MAGIC.to_vec(), hasher, entries: Vec::new() }
    }

    /// Append an encoded record whose seal is `seal`.
    pub fn append(&mut self, id: ObjectId, kind: ObjectKind, seal: Seal, record: &[u8]) {
        let offset = self.bytes.len() as u64;
        digest_record(&mut self.hasher, record);
        self.bytes.extend_from_slice(record);
        self.entries.push(PackEntry { id, kind, offset, len: record.len() as u32, seal });
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether no record was appended.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pack's bytes, its digest (its name) and its entries.
    pub fn finish(self) -> (Vec<u8>, [u8; 32], Vec<PackEntry>) {
        (self.bytes, *self.hasher.finalize().as_bytes(), self.entries)
    }
}

/// A problem found while scanning a pack.
#[derive(Debug, Clone)]
pub struct ScanProblem {
    /// Byte offset of the bad record.
    pub offset: u64,
    /// Id from the header, when the header was readable.
    pub id: Option<ObjectId>,
    /// What is wrong.
    pub reason: String,
}

/// Result of scanning a pack.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Valid records.
    pub entries: Vec<PackEntry>,
    /// Damaged regions.
    pub problems: Vec<ScanProblem>,
    /// Whether the file's content hash matches its name.
    pub hash_ok: bool,
    /// File size.
    pub size: u64,
}

/// Read a pack sequentially, verifying every record's check hash, and call
/// `f` with each valid record's entry and bytes. After a damaged record it
/// resynchronises on the next record magic whose check hash verifies, so one
/// flipped byte costs one object, not the rest of the pack.
pub fn scan(path: &Path, expected_hash: Option<&[u8; 32]>, f: impl FnMut(&PackEntry, &[u8])) -> io::Result<ScanResult> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    Ok(scan_slice(&data, expected_hash, f))
}

/// [`scan`] over a pack already in memory (an S3 pack object).
pub fn scan_slice(data: &[u8], expected_hash: Option<&[u8; 32]>, mut f: impl FnMut(&PackEntry, &[u8])) -> ScanResult {
    let mut res = ScanResult { size: data.len() as u64, ..Default::default() };
    if data.len() < PACK_MAGIC.len() || data[..PACK_MAGIC.len()] != PACK_MAGIC {
        res.problems.push(ScanProblem {
            offset: 0,
            id: None,
            reason: "not an omesh pack (bad magic or version)".into(),
        });
        return res;
    }
    let mut digest = blake3::Hasher::new();
    digest.update(&PACK_MAGIC);
    let mut pos = PACK_MAGIC.len();
    // resynchronising hashes candidate records; a hostile file full of
    // record magics claiming long records would make that quadratic, so
    // candidates may hash at most a few times the file's size in all
    let mut budget = (data.len() as u64).saturating_mul(4).saturating_add(1 << 20);
    'scan: while pos < data.len() {
        match try_record(&data[pos..]) {
            Ok((header, len, seal)) => {
                let e = PackEntry { id: header.id, kind: header.kind, offset: pos as u64, len: len as u32, seal };
                digest_record(&mut digest, &data[pos..pos + len]);
                f(&e, &data[pos..pos + len]);
                res.entries.push(e);
                pos += len;
            }
            Err(reason) => {
                let id = RecordHeader::parse(&data[pos..]).ok().map(|h| h.id);
                res.problems.push(ScanProblem { offset: pos as u64, id, reason });
                // resync: next position holding a verifiable record
                let mut next = pos + 1;
                loop {
                    match find(&data[next..], &record::MAGIC_PREFIX) {
                        Some(i) => {
                            next += i;
                            // a candidate that fits is hashed; one that does not is refused cheaply
                            let cost = RecordHeader::parse(&data[next..])
                                .map_or(0, |h| h.record_len())
                                .min((data.len() - next) as u64);
                            budget = budget.saturating_sub(cost);
                            if budget == 0 {
                                res.problems.push(ScanProblem {
                                    offset: next as u64,
                                    id: None,
                                    reason: "too damaged to resynchronise further; the rest of the pack is skipped"
                                        .into(),
                                });
                                break 'scan;
                            }
                            if try_record(&data[next..]).is_ok() {
                                break;
                            }
                            next += 1;
                        }
                        None => {
                            next = data.len();
                            break;
                        }
                    }
                }
                pos = next;
            }
        }
    }
    res.hash_ok = res.problems.is_empty() && expected_hash.map(|h| digest.finalize().as_bytes() == h).unwrap_or(true);
    res
}

fn try_record(buf: &[u8]) -> Result<(RecordHeader, usize, Seal), String> {
    let header = RecordHeader::parse(buf).map_err(|e| e.to_string())?;
    let len = header.record_len();
    if (buf.len() as u64) < len {
        return Err(format!("record truncated: needs {len} bytes, {} left in pack", buf.len()));
    }
    let seal = record::verify_check(&buf[..len as usize]).map_err(|e| e.to_string())?;
    Ok((header, len as usize, seal))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read one record's bytes at a known location and verify its check hash,
/// its id and its seal (the one this store computed when it stored the
/// record: a record altered on disk, check recomputed, is refused).
pub fn read_record_at(file: &File, offset: u64, len: u32, id: &ObjectId, seal: &Seal) -> Result<Vec<u8>, String> {
    let buf = read_record_bytes_at(file, offset, len, id)?;
    check_seal(&buf, seal)?;
    Ok(buf)
}

/// Whether `record`'s check holds and its seal is `seal` (one BLAKE3 pass).
pub fn check_seal(record: &[u8], seal: &Seal) -> Result<(), String> {
    if record::verify_check(record).map_err(|e| e.to_string())? != *seal {
        return Err(altered(seal));
    }
    Ok(())
}

/// The error of a record whose seal is not the one recorded for it.
pub fn altered(seal: &Seal) -> String {
    format!(
        "record does not match the seal this store recorded for it ({}): it was altered after it was stored",
        seal.short()
    )
}

/// The bytes of the record of `id` at `offset`, its header checked against
/// the index (length, id) but not hashed: for a caller that hashes it
/// anyway while decoding and compares the seal then ([`check_seal`] or
/// `Record::decode_sealed`).
pub fn read_record_bytes_at(file: &File, offset: u64, len: u32, id: &ObjectId) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileExt;
    if (len as usize) < HEADER_BYTES {
        return Err(format!("index entry length {len} is shorter than a record header"));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).map_err(|e| format!("read failed: {e}"))?;
    let header = RecordHeader::parse(&buf).map_err(|e| e.to_string())?;
    if header.record_len() != len as u64 {
        return Err(format!("record length {} does not match the index ({len})", header.record_len()));
    }
    if header.id != *id {
        return Err(format!("record holds object {} instead of {}", header.id.short(), id.short()));
    }
    Ok(buf)
}

impl PackWriter {
    /// Ids appended so far.
    pub fn entry_ids(&self) -> Vec<ObjectId> {
        self.entries.iter().map(|e| e.id).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_of_fake_record_headers_is_scanned_in_bounded_work() {
        // 20,000 record headers, each claiming a 900 KiB record that fits in
        // what follows it (so each would be hashed: 18 GB in all)
        let mut data = PACK_MAGIC.to_vec();
        let fake = Record::new(ObjectKind::Blob, ObjectId([3; 32]), vec![], vec![], vec![]).encode();
        let mut h = fake[..HEADER_BYTES].to_vec();
        h[44..48].copy_from_slice(&(900u32 << 10).to_le_bytes());
        for _ in 0..20_000 {
            data.extend_from_slice(&h);
        }
        data.resize(data.len() + (1 << 20), 0);
        let r = scan_slice(&data, None, |_, _| {});
        assert!(r.entries.is_empty());
        assert!(r.problems.iter().any(|p| p.reason.contains("too damaged")), "{:?}", r.problems.last());
    }
    use super::*;
    use omesh_proto::Record;

    fn record(i: u8) -> (ObjectId, Seal, Vec<u8>) {
        let id = ObjectId([i; 32]);
        let (r, seal) = Record::new(ObjectKind::Blob, id, vec![], vec![], vec![i; 100 + i as usize]).encode_sealed();
        (id, seal, r)
    }

    /// A pack built in memory and one written to disk are the same bytes
    /// under the same name, and both scan back to their entries.
    #[test]
    fn builder_and_writer_agree() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tmp")).unwrap();
        let mut w = PackWriter::create(&d.path().join("tmp")).unwrap();
        let mut b = PackBuilder::new();
        for i in 1..5 {
            let (id, seal, r) = record(i);
            w.append(id, ObjectKind::Blob, seal, &r).unwrap();
            b.append(id, ObjectKind::Blob, seal, &r);
        }
        let info = w.finish(d.path()).unwrap();
        let (bytes, digest, entries) = b.finish();
        assert_eq!(info.hash, digest);
        assert_eq!(info.entries, entries);
        assert_eq!(std::fs::read(pack_path(d.path(), &digest)).unwrap(), bytes);
        let res = scan_slice(&bytes, Some(&digest), |_, _| {});
        assert!(res.hash_ok && res.problems.is_empty());
        assert_eq!(res.entries, entries);
    }

    /// One flipped byte costs one record: the scan resynchronises on the
    /// next record and reports the damaged one with its offset.
    #[test]
    fn scan_resynchronises_after_damage() {
        let mut b = PackBuilder::new();
        for i in 1..6 {
            let (id, seal, r) = record(i);
            b.append(id, ObjectKind::Blob, seal, &r);
        }
        let (mut bytes, digest, entries) = b.finish();
        let victim = &entries[2];
        bytes[(victim.offset + 60) as usize] ^= 0x10;
        let res = scan_slice(&bytes, Some(&digest), |_, _| {});
        assert!(!res.hash_ok);
        assert_eq!(res.problems.len(), 1);
        assert_eq!(res.problems[0].offset, victim.offset);
        assert_eq!(res.entries.len(), 4);
    }

    #[test]
    fn read_record_at_checks_length_and_id() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tmp")).unwrap();
        let mut w = PackWriter::create(&d.path().join("tmp")).unwrap();
        let (id, seal, r) = record(7);
        w.append(id, ObjectKind::Blob, seal, &r).unwrap();
        let info = w.finish(d.path()).unwrap();
        let f = File::open(pack_path(d.path(), &info.hash)).unwrap();
        let e = info.entries[0];
        assert_eq!(read_record_at(&f, e.offset, e.len, &id, &seal).unwrap(), r);
        assert!(read_record_at(&f, e.offset, e.len, &ObjectId([8; 32]), &seal).unwrap_err().contains("instead of"));
        assert!(read_record_at(&f, e.offset, e.len - 1, &id, &seal).unwrap_err().contains("does not match the index"));
        assert!(read_record_at(&f, e.offset, 10, &id, &seal).is_err());
        assert!(read_record_at(&f, e.offset, e.len, &id, &Seal([1; 32])).unwrap_err().contains("altered"));
    }
}
