//! Key material and the sealing of object bodies.
//!
//! One 32-byte master secret per source. From it, with BLAKE3's key
//! derivation, come four independent keys:
//! - the **id key**: object id = keyed BLAKE3(id key, plaintext), so ids do
//!   not reveal content hashes that an outsider could compare;
//! - the **encryption key**: XChaCha20-Poly1305 with a 192-bit nonce per
//!   object derived from its id and links by a fourth key (the **nonce
//!   key**), so the same object always seals to the same bytes;
//! - the **chunker key**: a secret 256-entry gear table for FastCDC, so chunk
//!   boundaries (and therefore stored object sizes) depend on the key and
//!   cannot be used to fingerprint known files.
//!
//! Sizes are further hidden by padding every sealed payload up to a bucket
//! of 1/256 to 1/128 of its length (at least 16 bytes). This module does no I/O.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use omesh_proto::record::{RecordFormat, Seal, link_bytes};
use omesh_proto::{ObjectId, ObjectKind, Record};
use std::fmt;
use zeroize::Zeroize;

/// Length of the master secret.
pub const SECRET_BYTES: usize = 32;
/// Nonce length of XChaCha20-Poly1305.
pub const NONCE_BYTES: usize = 24;
/// Authentication tag length.
pub const TAG_BYTES: usize = 16;
/// Largest plaintext object we will ever decompress into. Chunks are at most
/// 8 MiB; trees and lists are split by the writer at 4 MiB.
pub const MAX_PLAINTEXT_BYTES: usize = 16 * 1024 * 1024;

const CTX_ID: &str = "omesh 2026-11 object id key v1";
const CTX_ENC: &str = "omesh 2026-11 object encryption key v1";
const CTX_GEAR: &str = "omesh 2026-11 chunker gear table v1";
const CTX_KEY_ID: &str = "omesh 2026-11 key fingerprint v1";
const CTX_NONCE: &str = "omesh 2026-12 object nonce key v2";
const CTX_GROUPS: &str = "omesh 2026-12 retention group key v1";

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
/// Smallest possible frame header: codec byte and two one-byte varints.
const FRAME_HEADER_MIN: usize = 3;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Errors when opening a sealed body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// Body shorter than nonce and tag.
    #[error("sealed body too short")]
    TooShort,
    /// Authentication failed: wrong key, or the bytes were altered.
    #[error("authentication failed: wrong key, or the object was altered")]
    Auth,
    /// The decrypted frame is malformed (only possible with a forged object
    /// made by a holder of the key).
    #[error("malformed object frame: {0}")]
    Frame(&'static str),
    /// Decompression failed.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The plaintext does not hash to the id in the header.
    #[error("content does not match its id")]
    IdMismatch,
}

/// The links of a record as the AEAD and the id see them: the ids and,
/// in format 2, the seal of each.
#[derive(Clone, Copy, Debug)]
pub struct Links<'a> {
    /// Record format.
    pub format: RecordFormat,
    /// Linked ids.
    pub ids: &'a [ObjectId],
    /// Their seals (format 2; empty in format 1).
    pub seals: &'a [Seal],
}

impl<'a> Links<'a> {
    /// Links of a decoded record.
    pub fn of(rec: &'a Record) -> Self {
        Links { format: rec.format, ids: &rec.links, seals: &rec.seals }
    }

    /// Format-2 links.
    pub fn v2(ids: &'a [ObjectId], seals: &'a [Seal]) -> Self {
        Links { format: RecordFormat::V2, ids, seals }
    }

    /// No links, format 2 (blobs).
    pub fn none() -> Self {
        Links { format: RecordFormat::V2, ids: &[], seals: &[] }
    }
}

/// The master secret of one source. Never printed; zeroed on drop.
#[derive(Clone)]
pub struct Secret(pub(crate) [u8; SECRET_BYTES]);

impl Secret {
    /// A new random secret from the OS.
    pub fn generate() -> Self {
        let mut b = [0u8; SECRET_BYTES];
        getrandom::fill(&mut b).expect("the operating system's random source failed");
        Secret(b)
    }

    /// From raw bytes (key import).
    pub fn from_bytes(b: [u8; SECRET_BYTES]) -> Self {
        Secret(b)
    }

    /// Raw bytes, for writing the key file only.
    pub fn expose(&self) -> &[u8; SECRET_BYTES] {
        &self.0
    }

    /// Public fingerprint of the key (16 bytes, hex), recorded in store
    /// configs so a wrong key is caught before anything is decrypted.
    pub fn key_id(&self) -> String {
        hex::encode(&blake3::derive_key(CTX_KEY_ID, &self.0)[..16])
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Most key epochs a key may have (`omesh key rotate`); a bound on the
/// work of opening an object and on what a key file may hold.
pub const MAX_EPOCHS: usize = 64;

/// The encryption keys of one key epoch.
struct Epoch {
    nonce_key: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.nonce_key.zeroize();
    }
}

/// Derived keys of one source, ready to use.
///
/// A key has one or more **epochs** (`omesh key rotate` adds one). The
/// first secret gives the id key, chunker table, group key and key id for
/// the key's whole life (so ids, dedup and retention groups do not change);
/// each epoch's secret gives its own encryption and nonce keys. Objects are
/// sealed under the newest epoch only; older epochs only open. A body names
/// no epoch: its nonce is a keyed hash under its epoch's nonce key, so the
/// opener finds the epoch whose nonce for this object equals the body's
/// (one small hash per epoch, no trial decryption) and a body that matches
/// none fails authentication. With one epoch this is format 2 exactly as
/// before rotation existed.
pub struct Keys {
    id_key: [u8; 32],
    group_key: [u8; 32],
    epochs: Vec<Epoch>,
    gear: Box<[u64; 256]>,
    key_id: String,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys(key_id={})", self.key_id)
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.id_key.zeroize();
        self.group_key.zeroize();
    }
}

fn epoch(secret: &Secret) -> Epoch {
    let mut enc_key = blake3::derive_key(CTX_ENC, &secret.0);
    let e = Epoch {
        nonce_key: blake3::derive_key(CTX_NONCE, &secret.0),
        cipher: XChaCha20Poly1305::new(Key::from_slice(&enc_key)),
    };
    enc_key.zeroize();
    e
}

impl Keys {
    /// Derive all keys from a master secret (a key of one epoch).
    pub fn derive(secret: &Secret) -> Self {
        Self::derive_epochs(secret, &[])
    }

    /// Derive the keys of a rotated key: `secret` (epoch 0) and the
    /// secrets `rotated` added by `omesh key rotate`, oldest first. At most
    /// [`MAX_EPOCHS`] epochs are used (a key file holding more is refused
    /// when it is read).
    pub fn derive_epochs(secret: &Secret, rotated: &[Secret]) -> Self {
        let id_key = blake3::derive_key(CTX_ID, &secret.0);
        let gear_seed = blake3::derive_key(CTX_GEAR, &secret.0);
        let mut xof = blake3::Hasher::new_keyed(&gear_seed).finalize_xof();
        let mut raw = [0u8; 256 * 8];
        xof.fill(&mut raw);
        let mut gear = Box::new([0u64; 256]);
        for (i, g) in gear.iter_mut().enumerate() {
            *g = u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
        let epochs = std::iter::once(secret).chain(rotated.iter().take(MAX_EPOCHS - 1)).map(epoch).collect::<Vec<_>>();
        Keys { id_key, group_key: blake3::derive_key(CTX_GROUPS, &secret.0), epochs, gear, key_id: secret.key_id() }
    }

    /// Number of epochs (1 for a key never rotated); new objects are sealed
    /// under epoch `epochs() - 1`.
    pub fn epochs(&self) -> usize {
        self.epochs.len()
    }

    fn current(&self) -> &Epoch {
        self.epochs.last().expect("a key has at least one epoch")
    }

    /// The retention groups of a snapshot with these `paths` and `tags`
    /// (order and repeats do not matter): what a holder without the key
    /// groups retention by (`[retention] group_by`).
    pub fn retention_groups(&self, paths: &[String], tags: &[String]) -> omesh_proto::RetentionGroups {
        fn set(h: &mut blake3::Hasher, items: &[String]) {
            let mut v: Vec<&String> = items.iter().collect();
            v.sort();
            v.dedup();
            h.update(&(v.len() as u64).to_le_bytes());
            for i in v {
                h.update(&(i.len() as u64).to_le_bytes());
                h.update(i.as_bytes());
            }
        }
        let id = |with_tags: bool| {
            let mut h = blake3::Hasher::new_keyed(&self.group_key);
            h.update(if with_tags { b"paths and tags" } else { b"paths" });
            set(&mut h, paths);
            if with_tags {
                set(&mut h, tags);
            }
            let mut out = [0u8; 16];
            out.copy_from_slice(&h.finalize().as_bytes()[..16]);
            out
        };
        omesh_proto::RetentionGroups { paths: id(false), paths_tags: id(true) }
    }

    /// Key fingerprint.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The secret gear table for the chunker.
    pub fn gear(&self) -> &[u64; 256] {
        &self.gear
    }

    /// Object id of a plaintext (blobs, snapshot records).
    pub fn object_id(&self, plaintext: &[u8]) -> ObjectId {
        ObjectId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// Object id of a tree or extent list, whose plaintext refers to its
    /// links by index: the id covers the links (with their seals, in
    /// version 2) too.
    pub fn object_id_linked(&self, links: &Links<'_>, plaintext: &[u8]) -> ObjectId {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(&(links.ids.len() as u64).to_le_bytes());
        h.update(&link_bytes(links.format, links.ids, links.seals));
        h.update(plaintext);
        ObjectId(*h.finalize().as_bytes())
    }

    /// The id of an object of `kind`.
    pub fn id_for(&self, kind: ObjectKind, links: &Links<'_>, plaintext: &[u8]) -> ObjectId {
        match kind {
            ObjectKind::Tree | ObjectKind::List => self.object_id_linked(links, plaintext),
            ObjectKind::Blob | ObjectKind::Snapshot => self.object_id(plaintext),
        }
    }

    /// Compress (when it pays), pad and encrypt `plaintext`, producing a
    /// record body bound to `kind`, `id` and `links`.
    ///
    /// `level` is the zstd level; 0 disables compression.
    pub fn seal(&self, kind: ObjectKind, id: &ObjectId, links: &Links<'_>, plaintext: &[u8], level: i32) -> Vec<u8> {
        assert!(plaintext.len() <= MAX_PLAINTEXT_BYTES, "object larger than MAX_PLAINTEXT_BYTES");
        let compressed = if level > 0 && plaintext.len() >= 64 && compressible(plaintext, level) {
            compress(plaintext, level).filter(|c| c.len() + plaintext.len() / 64 < plaintext.len())
        } else {
            None
        };
        let (codec, payload): (u8, &[u8]) = match &compressed {
            Some(c) => (CODEC_ZSTD, c),
            None => (CODEC_RAW, plaintext),
        };
        let mut header = Vec::with_capacity(11);
        header.push(codec);
        put_varint(&mut header, plaintext.len() as u64);
        put_varint(&mut header, payload.len() as u64);
        let padded = padded_len(header.len() + payload.len());
        let mut buf = Vec::with_capacity(NONCE_BYTES + padded + TAG_BYTES);
        let epoch = self.current();
        let nonce = nonce(epoch, kind, id, links);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(&header);
        buf.extend_from_slice(payload);
        buf.resize(NONCE_BYTES + padded, 0);
        let ad = Record::associated_data(links.format, kind, id, links.ids, links.seals);
        let tag = epoch
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut buf[NONCE_BYTES..])
            .expect("encryption of a bounded buffer cannot fail");
        buf.extend_from_slice(&tag);
        buf
    }

    /// Decrypt, unpad and decompress a record body, then check that the
    /// plaintext hashes to `id`.
    pub fn open(&self, kind: ObjectKind, id: &ObjectId, links: &Links<'_>, body: &[u8]) -> Result<Vec<u8>, OpenError> {
        if body.len() < NONCE_BYTES + TAG_BYTES + FRAME_HEADER_MIN {
            return Err(OpenError::TooShort);
        }
        let (nonce_bytes, rest) = body.split_at(NONCE_BYTES);
        let (ct, tag) = rest.split_at(rest.len() - TAG_BYTES);
        // the epoch whose nonce for this object the body carries (newest
        // first: most objects read are recent); format-1 bodies have random
        // nonces and predate rotation: they are all of the first epoch
        let epoch = if links.format == RecordFormat::V1 {
            &self.epochs[0]
        } else {
            self.epochs.iter().rev().find(|e| nonce(e, kind, id, links) == nonce_bytes).ok_or(OpenError::Auth)?
        };
        let mut buf = ct.to_vec();
        let ad = Record::associated_data(links.format, kind, id, links.ids, links.seals);
        epoch
            .cipher
            .decrypt_in_place_detached(XNonce::from_slice(nonce_bytes), &ad, &mut buf, Tag::from_slice(tag))
            .map_err(|_| OpenError::Auth)?;
        let codec = buf[0];
        let mut pos = 1;
        let raw_len = get_varint(&buf, &mut pos).ok_or(OpenError::Frame("bad plaintext length"))?;
        let payload_len = get_varint(&buf, &mut pos).ok_or(OpenError::Frame("bad payload length"))?;
        if raw_len > MAX_PLAINTEXT_BYTES as u64 {
            return Err(OpenError::Frame("declared plaintext length above the maximum"));
        }
        let (raw_len, payload_len) = (raw_len as usize, payload_len as usize);
        if payload_len > buf.len() - pos {
            return Err(OpenError::Frame("payload length beyond the body"));
        }
        let payload = &buf[pos..pos + payload_len];
        let plain = match codec {
            CODEC_RAW => {
                if payload_len != raw_len {
                    return Err(OpenError::Frame("raw payload length mismatch"));
                }
                payload.to_vec()
            }
            CODEC_ZSTD => {
                let out = decompress(payload, raw_len).map_err(|e| OpenError::Decompress(e.to_string()))?;
                if out.len() != raw_len {
                    return Err(OpenError::Frame("decompressed length mismatch"));
                }
                out
            }
            _ => return Err(OpenError::Frame("unknown codec")),
        };
        if self.id_for(kind, links, &plain) != *id {
            return Err(OpenError::IdMismatch);
        }
        Ok(plain)
    }
}

/// The nonce of an object under `epoch`: a keyed hash of what the AEAD
/// binds (kind, id, links with their seals). The id is itself a keyed hash
/// of the plaintext (and links), so two different objects never share a
/// nonce, and sealing the same object again under the same epoch gives the
/// same bytes and therefore the same seal: a holder that still keeps an
/// object the source dropped and wrote again, or that two writers stored at
/// once, holds exactly the record the new parents name. (It reveals only
/// what ids already do: which objects are equal.)
fn nonce(epoch: &Epoch, kind: ObjectKind, id: &ObjectId, links: &Links<'_>) -> [u8; NONCE_BYTES] {
    let mut h = blake3::Hasher::new_keyed(&epoch.nonce_key);
    h.update(&Record::associated_data(links.format, kind, id, links.ids, links.seals));
    let mut n = [0u8; NONCE_BYTES];
    n.copy_from_slice(&h.finalize().as_bytes()[..NONCE_BYTES]);
    n
}

thread_local! {
    // zstd contexts are expensive to create (hundreds of KiB each): one per
    // thread, reused for every object
    static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { std::cell::RefCell::new(None) };
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Cheap test before compressing a large object: compress eight 2 KiB
/// samples spread over it; if none of them shrinks, the object is
/// (almost certainly) encrypted, compressed or random data, and zstd would
/// spend its full time finding nothing.
fn compressible(data: &[u8], level: i32) -> bool {
    const SAMPLE: usize = 2048;
    const SAMPLES: usize = 8;
    if data.len() < 128 * SAMPLE {
        return true;
    }
    (0..SAMPLES).any(|i| {
        let off = (data.len() - SAMPLE) * i / (SAMPLES - 1);
        compress(&data[off..off + SAMPLE], level).is_some_and(|c| c.len() < SAMPLE * 97 / 100)
    })
}

fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        c.as_mut().expect("set").1.compress(data).ok()
    })
}

fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("set").decompress(data, capacity)
    })
}

/// Pad a framed length up to a bucket of 1/256 to 1/128 of its size (at
/// least 16 bytes), so stored sizes reveal only an approximate length while
/// costing under 0.4% (0.2% on average).
pub fn padded_len(len: usize) -> usize {
    let bucket = (len.next_power_of_two() / 256).max(16);
    len.div_ceil(bucket) * bucket
}

/// Signs snapshot records with the node's identity (the key behind its
/// site certificate). Implemented by the network layer, which holds the
/// certificate; a store without one writes unsigned snapshot records,
/// which no mesh peer accepts.
pub trait SnapshotSigner: Send + Sync {
    /// The node name the certificate carries.
    fn name(&self) -> &str;
    /// TLS signature scheme code of the signatures.
    fn scheme(&self) -> u16;
    /// The certificate chain (DER), end-entity first.
    fn chain(&self) -> Vec<Vec<u8>>;
    /// Sign `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String>;

    /// Attach a signed attestation to the snapshot record `rec`: made by
    /// `source` at `created` (seconds since the epoch), in retention
    /// `groups`.
    fn attest(
        &self,
        rec: &mut Record,
        source: &str,
        created: i64,
        groups: Option<omesh_proto::RetentionGroups>,
    ) -> Result<(), String> {
        let mut a = omesh_proto::Attestation {
            source: source.into(),
            created,
            scheme: self.scheme(),
            chain: self.chain(),
            signature: Vec::new(),
            groups,
        };
        a.signature = self.sign(&rec.attestation_message(&a))?;
        rec.attestation = a.encode();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_key_seals_under_its_newest_epoch_and_opens_every_epoch() {
        let (base, next) = (Secret::from_bytes([1; 32]), Secret::from_bytes([2; 32]));
        let old = Keys::derive(&base);
        let new = Keys::derive_epochs(&base, std::slice::from_ref(&next));
        assert_eq!(new.epochs(), 2);
        let data = b"the same content before and after the rotation".repeat(20);
        // ids, chunker and key id stay: dedup and retention groups carry on
        assert_eq!(old.object_id(&data), new.object_id(&data));
        assert_eq!(old.gear(), new.gear());
        assert_eq!(old.key_id(), new.key_id());
        assert_eq!(old.retention_groups(&["/a".into()], &[]), new.retention_groups(&["/a".into()], &[]));
        let id = old.object_id(&data);
        let before = old.seal(ObjectKind::Blob, &id, &Links::none(), &data, 3);
        let after = new.seal(ObjectKind::Blob, &id, &Links::none(), &data, 3);
        assert_ne!(before, after, "new objects are sealed under the new epoch");
        assert_eq!(new.open(ObjectKind::Blob, &id, &Links::none(), &before).unwrap(), data, "old epochs still open");
        assert_eq!(new.open(ObjectKind::Blob, &id, &Links::none(), &after).unwrap(), data);
        assert_eq!(
            old.open(ObjectKind::Blob, &id, &Links::none(), &after),
            Err(OpenError::Auth),
            "a copy of the key from before the rotation cannot read what was sealed after it"
        );
        // a body whose nonce is no epoch's for this object fails cleanly
        let mut forged = after.clone();
        forged[0] ^= 1;
        assert_eq!(new.open(ObjectKind::Blob, &id, &Links::none(), &forged), Err(OpenError::Auth));
        // sealing stays deterministic within an epoch
        assert_eq!(after, new.seal(ObjectKind::Blob, &id, &Links::none(), &data, 3));
    }

    fn keys() -> Keys {
        Keys::derive(&Secret::from_bytes([9; 32]))
    }

    #[test]
    fn seal_open_round_trip_compressible_and_not() {
        let k = keys();
        let text = b"hello world ".repeat(1000);
        let mut random = vec![0u8; 10_000];
        getrandom::fill(&mut random).unwrap();
        for data in [&text[..], &random[..], b"", b"x"] {
            let id = k.object_id(data);
            let body = k.seal(ObjectKind::Blob, &id, &Links::none(), data, 3);
            assert_eq!(k.open(ObjectKind::Blob, &id, &Links::none(), &body).unwrap(), data);
        }
        // compressible data actually shrinks
        let id = k.object_id(&text);
        assert!(k.seal(ObjectKind::Blob, &id, &Links::none(), &text, 3).len() < text.len() / 4);
        // large random data is recognised by sampling and stored as is;
        // random data with a compressible part still gets compressed
        let mut big = vec![0u8; 1 << 20];
        getrandom::fill(&mut big).unwrap();
        assert!(!compressible(&big, 3));
        big[(1 << 20) - 65536..].fill(b'a');
        assert!(compressible(&big, 3));
        let id = k.object_id(&big);
        let sealed = k.seal(ObjectKind::Blob, &id, &Links::none(), &big, 3);
        assert!(sealed.len() < big.len());
        assert_eq!(k.open(ObjectKind::Blob, &id, &Links::none(), &sealed).unwrap(), big);
    }

    #[test]
    fn binds_kind_id_links_and_key() {
        let k = keys();
        let data = b"some tree bytes";
        let (one, two, s1, s2) = ([ObjectId([1; 32])], [ObjectId([2; 32])], [Seal([1; 32])], [Seal([2; 32])]);
        let id = k.object_id_linked(&Links::v2(&one, &s1), data);
        assert_ne!(id, k.object_id_linked(&Links::v2(&two, &s1), data), "links are part of a tree's id");
        assert_ne!(id, k.object_id_linked(&Links::v2(&one, &s2), data), "and so are their seals");
        let links = Links::v2(&one, &s1);
        let body = k.seal(ObjectKind::Tree, &id, &links, data, 3);
        assert_eq!(k.open(ObjectKind::Blob, &id, &links, &body), Err(OpenError::Auth));
        assert_eq!(k.open(ObjectKind::Tree, &id, &Links::none(), &body), Err(OpenError::Auth));
        assert_eq!(k.open(ObjectKind::Tree, &ObjectId([2; 32]), &links, &body), Err(OpenError::Auth));
        let other = Keys::derive(&Secret::from_bytes([8; 32]));
        assert_eq!(other.open(ObjectKind::Tree, &id, &links, &body), Err(OpenError::Auth));
        let mut bad = body.clone();
        bad[30] ^= 1;
        assert_eq!(k.open(ObjectKind::Tree, &id, &links, &bad), Err(OpenError::Auth));
    }

    /// Sealing is deterministic per object (same bytes, same seal), and
    /// distinct objects get distinct nonces.
    #[test]
    fn sealing_the_same_object_twice_gives_the_same_bytes() {
        let k = keys();
        let data = b"the same chunk".repeat(100);
        let id = k.object_id(&data);
        let a = k.seal(ObjectKind::Blob, &id, &Links::none(), &data, 3);
        assert_eq!(a, k.seal(ObjectKind::Blob, &id, &Links::none(), &data, 3));
        let other = k.object_id(b"another chunk");
        let b = k.seal(ObjectKind::Blob, &other, &Links::none(), b"another chunk", 3);
        assert_ne!(a[..NONCE_BYTES], b[..NONCE_BYTES]);
        let c = k.seal(ObjectKind::Tree, &id, &Links::none(), &data, 3);
        assert_ne!(a[..NONCE_BYTES], c[..NONCE_BYTES], "the kind is part of the nonce");
        let other_key = Keys::derive(&Secret::from_bytes([8; 32]));
        assert_ne!(a, other_key.seal(ObjectKind::Blob, &id, &Links::none(), &data, 3));
    }

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 300, 16 << 20, u32::MAX as u64] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut p = 0;
            assert_eq!(get_varint(&b, &mut p), Some(v));
            assert_eq!(p, b.len());
        }
        assert_eq!(get_varint(&[0x80], &mut 0), None);
    }

    #[test]
    fn padding_buckets() {
        assert_eq!(padded_len(1), 16);
        assert_eq!(padded_len(64), 64);
        assert_eq!(padded_len(65), 80);
        assert_eq!(padded_len(1 << 20), 1 << 20);
        let l = (1 << 20) + 1;
        let p = padded_len(l);
        assert!(p >= l && p - l <= (1 << 21) / 256);
    }

    #[test]
    fn derived_keys_differ_and_are_stable() {
        let a = keys();
        let b = keys();
        assert_eq!(a.object_id(b"x"), b.object_id(b"x"));
        assert_eq!(a.gear()[..], b.gear()[..]);
        let c = Keys::derive(&Secret::from_bytes([1; 32]));
        assert_ne!(a.object_id(b"x"), c.object_id(b"x"));
        assert_ne!(a.gear()[0], c.gear()[0]);
        assert_ne!(format!("{:?}", Secret::from_bytes([1; 32])), "");
        assert!(!format!("{:?}", Secret::from_bytes([1; 32])).contains("01"));
    }
}
