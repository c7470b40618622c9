//! The object record: the self-describing unit that a pack file stores,
//! a peer transfers and an S3 pack object holds.
//!
//! Layout (all integers little-endian). Version 2 (`ORc2`) is what every
//! writer produces; version 1 (`ORc1`) is still read.
//!
//! ```text
//! offset  size   field
//! 0       4      magic  b"ORc2" (the last byte is the record format version)
//! 4       1      kind   (ObjectKind discriminant)
//! 5       3      attestation length a (u24; version 1: reserved, zero;
//!                only a snapshot record may carry one, at most 64 KiB)
//! 8       32     id     keyed BLAKE3 of the plaintext (opaque without the key)
//! 40      4      link count n   (<= MAX_LINKS)
//! 44      4      body length b  (<= MAX_BODY_BYTES)
//! 48      64*n   links: id (32) || seal (32) of every object this one
//!                references (version 1: 32*n, ids only)
//! ..      a      attestation: who made this snapshot record, signed
//!                ([`Attestation`], postcard)
//! ..      b      body: nonce || AEAD ciphertext || tag
//! ..      16     check: first 16 bytes of the seal
//! ```
//!
//! The **seal** of a record is the BLAKE3 of all its bytes before the
//! check. A version-2 link names both the child's id (which only the key
//! holder can recompute) and the child's seal (which anyone can), so a
//! storing peer without the key verifies a whole snapshot from its signed
//! record down: every record it accepts hashes to the seal its parent's
//! link names, and the parent is itself either verified that way or the
//! signed snapshot record. The links are in clear so that a storing peer
//! can walk a snapshot's object graph; they are authenticated as
//! associated data of the AEAD, so the key holder catches any change too.
//! The check lets anyone detect a torn or corrupted record without knowing
//! which parent links it.

use crate::id::{ID_BYTES, ObjectId};
use serde::{Deserialize, Serialize};

/// Version-1 record magic (read only).
pub const RECORD_MAGIC_V1: [u8; 4] = *b"ORc1";
/// Version-2 record magic; what writers produce.
pub const RECORD_MAGIC: [u8; 4] = *b"ORc2";
/// The bytes every record magic starts with (the 4th is the version).
pub const MAGIC_PREFIX: [u8; 3] = *b"ORc";
/// Size of the fixed part of the header.
pub const HEADER_BYTES: usize = 48;
/// Size of the trailing check hash (a truncated seal: it detects
/// corruption and torn writes; authenticity comes from the parent's link,
/// the signature and the AEAD).
pub const CHECK_BYTES: usize = 16;
/// Size of a seal.
pub const SEAL_BYTES: usize = 32;
/// Upper bound on links per record. Writers split trees and chunk lists
/// well below this; a decoder refuses anything above it.
pub const MAX_LINKS: u32 = 262_144;
/// Upper bound on a record body (ciphertext). Chunks are at most 8 MiB
/// before compression; trees and lists are split by the writer at 4 MiB.
pub const MAX_BODY_BYTES: u32 = 32 * 1024 * 1024;
/// Upper bound on a snapshot record's attestation.
pub const MAX_ATTESTATION_BYTES: u32 = 64 * 1024;
/// Upper bound on a whole record.
pub const MAX_RECORD_BYTES: u64 = HEADER_BYTES as u64
    + MAX_LINKS as u64 * (ID_BYTES + SEAL_BYTES) as u64
    + MAX_ATTESTATION_BYTES as u64
    + MAX_BODY_BYTES as u64
    + CHECK_BYTES as u64;

/// The BLAKE3 of a record's bytes before its check: what a version-2 link
/// names, and what anyone can recompute from the bytes alone.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Seal(pub [u8; SEAL_BYTES]);

impl Seal {
    /// The seal of a complete encoded record (check not verified).
    pub fn of_record(record: &[u8]) -> Seal {
        let n = record.len().saturating_sub(CHECK_BYTES);
        Seal(*blake3::hash(&record[..n]).as_bytes())
    }

    /// First 8 bytes in hex, for messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seal({})", self.short())
    }
}

/// Record format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordFormat {
    /// `ORc1`: links are ids only; not verifiable without the key.
    V1,
    /// `ORc2`: links carry the child's seal; snapshot records are signed.
    V2,
}

impl RecordFormat {
    /// Magic of records of this version.
    pub fn magic(self) -> [u8; 4] {
        match self {
            Self::V1 => RECORD_MAGIC_V1,
            Self::V2 => RECORD_MAGIC,
        }
    }

    /// Bytes per link.
    pub fn link_bytes(self) -> usize {
        match self {
            Self::V1 => ID_BYTES,
            Self::V2 => ID_BYTES + SEAL_BYTES,
        }
    }
}

/// What an object is. Discriminants are explicit, stable and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[repr(u8)]
pub enum ObjectKind {
    /// A chunk of file content.
    Blob = 1,
    /// A directory listing (one part of it, for very large directories).
    Tree = 2,
    /// A list of content extents of one very large file.
    List = 3,
    /// A snapshot record.
    Snapshot = 4,
}

impl ObjectKind {
    /// Decode a discriminant byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Blob),
            2 => Some(Self::Tree),
            3 => Some(Self::List),
            4 => Some(Self::Snapshot),
            _ => None,
        }
    }

    /// Lowercase name used in messages and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blob => "blob",
            Self::Tree => "tree",
            Self::List => "list",
            Self::Snapshot => "snapshot",
        }
    }
}

/// A record that cannot be decoded. Every variant says which rule failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer bytes than the header or the declared lengths need.
    #[error("record truncated: need {need} bytes, have {have}")]
    Truncated {
        /// bytes required
        need: u64,
        /// bytes available
        have: u64,
    },
    /// Magic bytes do not match (not a record, or a future format version).
    #[error("bad record magic {0:02x?} (not an omesh record, or a newer format)")]
    BadMagic([u8; 4]),
    /// Unknown kind byte.
    #[error("unknown object kind {0}")]
    BadKind(u8),
    /// Reserved bits set.
    #[error("reserved header fields are not zero")]
    Reserved,
    /// Declared link count above [`MAX_LINKS`].
    #[error("record declares {0} links, more than the maximum {MAX_LINKS}")]
    TooManyLinks(u32),
    /// Declared body above [`MAX_BODY_BYTES`].
    #[error("record declares a {0}-byte body, more than the maximum {MAX_BODY_BYTES}")]
    BodyTooLarge(u32),
    /// An attestation on a record that may not carry one, or above the limit.
    #[error(
        "record declares a {0}-byte attestation (only a snapshot record may carry one, of at most {MAX_ATTESTATION_BYTES} bytes)"
    )]
    BadAttestationLength(u32),
    /// The check hash does not match: the bytes were corrupted or torn.
    #[error("record check hash mismatch (corrupted or torn record)")]
    CheckMismatch,
}

/// The decoded fixed header of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Format version.
    pub format: RecordFormat,
    /// Object kind.
    pub kind: ObjectKind,
    /// Object id.
    pub id: ObjectId,
    /// Number of links.
    pub link_count: u32,
    /// Attestation length (version 2 snapshot records only).
    pub attestation_len: u32,
    /// Body length.
    pub body_len: u32,
}

impl RecordHeader {
    /// Parse and validate the 48-byte fixed header.
    pub fn parse(buf: &[u8]) -> Result<Self, RecordError> {
        if buf.len() < HEADER_BYTES {
            return Err(RecordError::Truncated { need: HEADER_BYTES as u64, have: buf.len() as u64 });
        }
        let magic: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
        let format = match magic {
            RECORD_MAGIC => RecordFormat::V2,
            RECORD_MAGIC_V1 => RecordFormat::V1,
            _ => return Err(RecordError::BadMagic(magic)),
        };
        let kind = ObjectKind::from_u8(buf[4]).ok_or(RecordError::BadKind(buf[4]))?;
        let attestation_len = u32::from_le_bytes([buf[5], buf[6], buf[7], 0]);
        if format == RecordFormat::V1 && attestation_len != 0 {
            return Err(RecordError::Reserved);
        }
        if attestation_len > MAX_ATTESTATION_BYTES || (attestation_len > 0 && kind != ObjectKind::Snapshot) {
            return Err(RecordError::BadAttestationLength(attestation_len));
        }
        let id = ObjectId(buf[8..40].try_into().expect("32 bytes"));
        let link_count = u32::from_le_bytes(buf[40..44].try_into().expect("4 bytes"));
        let body_len = u32::from_le_bytes(buf[44..48].try_into().expect("4 bytes"));
        if link_count > MAX_LINKS {
            return Err(RecordError::TooManyLinks(link_count));
        }
        if body_len > MAX_BODY_BYTES {
            return Err(RecordError::BodyTooLarge(body_len));
        }
        Ok(Self { format, kind, id, link_count, attestation_len, body_len })
    }

    /// Total record length implied by this header.
    pub fn record_len(&self) -> u64 {
        self.body_offset() as u64 + self.body_len as u64 + CHECK_BYTES as u64
    }

    /// Length of header plus links.
    pub fn prefix_len(&self) -> usize {
        HEADER_BYTES + self.link_count as usize * self.format.link_bytes()
    }

    /// Where the body starts (after the links and the attestation).
    pub fn body_offset(&self) -> usize {
        self.prefix_len() + self.attestation_len as usize
    }
}

/// An owned, validated record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Format version.
    pub format: RecordFormat,
    /// Object kind.
    pub kind: ObjectKind,
    /// Object id.
    pub id: ObjectId,
    /// Referenced objects.
    pub links: Vec<ObjectId>,
    /// Seals of the referenced objects, one per link (version 2; empty in
    /// version 1).
    pub seals: Vec<Seal>,
    /// Encoded [`Attestation`] (version-2 snapshot records; may be empty).
    pub attestation: Vec<u8>,
    /// Encrypted body.
    pub body: Vec<u8>,
}

/// The link bytes of a record as they are laid out in it (and covered by
/// its AEAD and, for trees and lists, its id).
pub fn link_bytes(format: RecordFormat, links: &[ObjectId], seals: &[Seal]) -> Vec<u8> {
    let mut out = Vec::with_capacity(links.len() * format.link_bytes());
    push_links(&mut out, format, links, seals);
    out
}

fn push_links(out: &mut Vec<u8>, format: RecordFormat, links: &[ObjectId], seals: &[Seal]) {
    match format {
        RecordFormat::V1 => links.iter().for_each(|l| out.extend_from_slice(&l.0)),
        RecordFormat::V2 => {
            assert_eq!(links.len(), seals.len(), "a version-2 record needs one seal per link");
            for (l, s) in links.iter().zip(seals) {
                out.extend_from_slice(&l.0);
                out.extend_from_slice(&s.0);
            }
        }
    }
}

impl Record {
    /// A version-2 record without attestation.
    pub fn new(kind: ObjectKind, id: ObjectId, links: Vec<ObjectId>, seals: Vec<Seal>, body: Vec<u8>) -> Self {
        Record { format: RecordFormat::V2, kind, id, links, seals, attestation: Vec::new(), body }
    }

    /// A version-1 record (tests and fixtures: writers produce version 2).
    pub fn v1(kind: ObjectKind, id: ObjectId, links: Vec<ObjectId>, body: Vec<u8>) -> Self {
        Record { format: RecordFormat::V1, kind, id, links, seals: Vec::new(), attestation: Vec::new(), body }
    }

    /// Serialize to the record layout, appending to `out`; returns the seal.
    ///
    /// Panics if the record violates the limits; writers construct records
    /// from their own data and must respect them.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Seal {
        assert!(self.links.len() as u64 <= MAX_LINKS as u64, "too many links");
        assert!(self.body.len() as u64 <= MAX_BODY_BYTES as u64, "body too large");
        let alen = self.attestation.len() as u32;
        assert!(
            self.format == RecordFormat::V2 && self.kind == ObjectKind::Snapshot && alen <= MAX_ATTESTATION_BYTES
                || alen == 0,
            "attestation not allowed here"
        );
        let start = out.len();
        out.reserve(
            HEADER_BYTES
                + self.links.len() * self.format.link_bytes()
                + self.attestation.len()
                + self.body.len()
                + CHECK_BYTES,
        );
        out.extend_from_slice(&self.format.magic());
        out.push(self.kind as u8);
        out.extend_from_slice(&alen.to_le_bytes()[..3]);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&(self.links.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        push_links(out, self.format, &self.links, &self.seals);
        out.extend_from_slice(&self.attestation);
        out.extend_from_slice(&self.body);
        let seal = Seal(*blake3::hash(&out[start..]).as_bytes());
        out.extend_from_slice(&seal.0[..CHECK_BYTES]);
        seal
    }

    /// Serialize to a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_sealed().0
    }

    /// Serialize to a new buffer, with the seal.
    pub fn encode_sealed(&self) -> (Vec<u8>, Seal) {
        let mut v = Vec::new();
        let seal = self.encode_into(&mut v);
        (v, seal)
    }

    /// Decode one record from the start of `buf`, verifying the check hash.
    /// Returns the record and the number of bytes it occupied.
    pub fn decode(buf: &[u8]) -> Result<(Record, usize), RecordError> {
        Self::decode_sealed(buf).map(|(r, n, _)| (r, n))
    }

    /// [`Record::decode`], also returning the record's seal.
    pub fn decode_sealed(buf: &[u8]) -> Result<(Record, usize, Seal), RecordError> {
        let header = RecordHeader::parse(buf)?;
        let total = header.record_len();
        if (buf.len() as u64) < total {
            return Err(RecordError::Truncated { need: total, have: buf.len() as u64 });
        }
        let total = total as usize;
        let seal = verify_check(&buf[..total])?;
        let (links, seals) = split_links(&header, buf);
        let prefix = header.prefix_len();
        let body_at = header.body_offset();
        let attestation = buf[prefix..body_at].to_vec();
        let body = buf[body_at..body_at + header.body_len as usize].to_vec();
        let rec = Record { format: header.format, kind: header.kind, id: header.id, links, seals, attestation, body };
        Ok((rec, total, seal))
    }

    /// Associated data that binds the header fields to the AEAD body: the
    /// format, kind, id and links (with their seals). Changing any of them
    /// makes decryption fail.
    pub fn associated_data(
        format: RecordFormat,
        kind: ObjectKind,
        id: &ObjectId,
        links: &[ObjectId],
        seals: &[Seal],
    ) -> Vec<u8> {
        let mut ad = Vec::with_capacity(5 + ID_BYTES + links.len() * format.link_bytes());
        ad.extend_from_slice(&format.magic());
        ad.push(kind as u8);
        ad.extend_from_slice(&id.0);
        push_links(&mut ad, format, links, seals);
        ad
    }
}

fn split_links(header: &RecordHeader, buf: &[u8]) -> (Vec<ObjectId>, Vec<Seal>) {
    let raw = &buf[HEADER_BYTES..header.prefix_len()];
    match header.format {
        RecordFormat::V1 => {
            (raw.chunks_exact(ID_BYTES).map(|c| ObjectId(c.try_into().expect("32 bytes"))).collect(), vec![])
        }
        RecordFormat::V2 => raw
            .chunks_exact(ID_BYTES + SEAL_BYTES)
            .map(|c| {
                (
                    ObjectId(c[..ID_BYTES].try_into().expect("32 bytes")),
                    Seal(c[ID_BYTES..].try_into().expect("32 bytes")),
                )
            })
            .unzip(),
    }
}

/// Verify the trailing check hash of a complete encoded record; returns
/// its seal.
pub fn verify_check(record: &[u8]) -> Result<Seal, RecordError> {
    if record.len() < HEADER_BYTES + CHECK_BYTES {
        return Err(RecordError::Truncated { need: (HEADER_BYTES + CHECK_BYTES) as u64, have: record.len() as u64 });
    }
    let (data, check) = record.split_at(record.len() - CHECK_BYTES);
    let seal = Seal(*blake3::hash(data).as_bytes());
    if &seal.0[..CHECK_BYTES] != check {
        return Err(RecordError::CheckMismatch);
    }
    Ok(seal)
}

/// Parse the links of a complete encoded record without copying its body.
pub fn links_of(record: &[u8]) -> Result<(RecordHeader, Vec<ObjectId>), RecordError> {
    sealed_links_of(record).map(|(h, l, _)| (h, l))
}

/// Parse the links and their seals (empty for version 1) of an encoded
/// record without copying its body.
pub fn sealed_links_of(record: &[u8]) -> Result<(RecordHeader, Vec<ObjectId>, Vec<Seal>), RecordError> {
    let header = RecordHeader::parse(record)?;
    let prefix = header.prefix_len();
    if record.len() < prefix {
        return Err(RecordError::Truncated { need: prefix as u64, have: record.len() as u64 });
    }
    let (links, seals) = split_links(&header, record);
    Ok((header, links, seals))
}

/// Upper bound on the certificates in an attestation's chain.
pub const MAX_CHAIN_CERTS: usize = 4;
/// Upper bound on one certificate (DER).
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Upper bound on a signature.
pub const MAX_SIGNATURE_BYTES: usize = 1024;
/// Upper bound on a source name.
pub const MAX_SOURCE_NAME_BYTES: usize = 253;

/// Who made a snapshot record: carried in clear in a version-2 snapshot
/// record, so that any holder, without the data key, can check that the
/// record was produced by the node whose namespace it is stored under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    /// The source (node) name; must equal the namespace the record is
    /// stored under and a DNS name of the signing certificate.
    pub source: String,
    /// When the source made the snapshot (seconds since the epoch).
    pub created: i64,
    /// TLS signature scheme code of `signature` (e.g. 0x0403,
    /// ECDSA P-256 with SHA-256).
    pub scheme: u16,
    /// The signer's certificate chain (DER), end-entity first; it must
    /// lead to the site CA.
    pub chain: Vec<Vec<u8>>,
    /// Signature over [`Attestation::message`].
    pub signature: Vec<u8>,
    /// The snapshot's retention groups, so a holder without the key can
    /// apply retention per backup set (absent in records made before
    /// omesh had them).
    pub groups: Option<RetentionGroups>,
}

/// Opaque retention-group ids of a snapshot: keyed hashes (with a key
/// derived from the source's data key) of its sorted paths, and of its
/// paths and tags. Equal ids mean the same backup set; a holder learns
/// nothing else from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RetentionGroups {
    /// Of the paths.
    pub paths: [u8; 16],
    /// Of the paths and the tags.
    pub paths_tags: [u8; 16],
}

/// The encoding of an attestation without groups (as every record before
/// groups has it, byte for byte).
#[derive(Serialize, Deserialize)]
struct Plain {
    source: String,
    created: i64,
    scheme: u16,
    chain: Vec<Vec<u8>>,
    signature: Vec<u8>,
}

/// The encoding of an attestation with groups: the plain fields, then the
/// groups.
#[derive(Serialize, Deserialize)]
struct Grouped {
    plain: Plain,
    groups: RetentionGroups,
}

/// Domain separation of attestation signatures.
pub const ATTESTATION_CONTEXT: &[u8] = b"omesh snapshot attestation v2\0";

impl Attestation {
    /// Encode (postcard).
    pub fn encode(&self) -> Vec<u8> {
        let plain = Plain {
            source: self.source.clone(),
            created: self.created,
            scheme: self.scheme,
            chain: self.chain.clone(),
            signature: self.signature.clone(),
        };
        match self.groups {
            None => postcard::to_stdvec(&plain),
            Some(groups) => postcard::to_stdvec(&Grouped { plain, groups }),
        }
        .expect("serializing to a Vec cannot fail")
    }

    /// Decode and check every limit.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() > MAX_ATTESTATION_BYTES as usize {
            return Err(format!("attestation of {} bytes is above the limit", b.len()));
        }
        let (plain, groups) = match postcard::take_from_bytes::<Grouped>(b) {
            Ok((g, [])) => (g.plain, Some(g.groups)),
            _ => {
                let (p, rest): (Plain, _) =
                    postcard::take_from_bytes(b).map_err(|e| format!("malformed attestation: {e}"))?;
                if !rest.is_empty() {
                    return Err("attestation has trailing bytes".into());
                }
                (p, None)
            }
        };
        let a = Attestation {
            source: plain.source,
            created: plain.created,
            scheme: plain.scheme,
            chain: plain.chain,
            signature: plain.signature,
            groups,
        };
        if a.source.is_empty() || a.source.len() > MAX_SOURCE_NAME_BYTES {
            return Err("attestation source name is empty or too long".into());
        }
        if a.chain.is_empty() || a.chain.len() > MAX_CHAIN_CERTS || a.chain.iter().any(|c| c.len() > MAX_CERT_BYTES) {
            return Err("attestation certificate chain is empty or above the limits".into());
        }
        if a.signature.is_empty() || a.signature.len() > MAX_SIGNATURE_BYTES {
            return Err("attestation signature is empty or too long".into());
        }
        Ok(a)
    }

    /// The bytes the source signs: the context, the record's kind, id and
    /// links with their seals, the source name, the creation time, the
    /// BLAKE3 of the sealed body and, when there are any, the retention
    /// groups. Everything of the record but the signature and chain
    /// themselves is covered.
    pub fn message(
        id: &ObjectId,
        links: &[ObjectId],
        seals: &[Seal],
        source: &str,
        created: i64,
        body: &[u8],
        groups: Option<&RetentionGroups>,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(ATTESTATION_CONTEXT.len() + 128 + links.len() * 64 + source.len());
        m.extend_from_slice(ATTESTATION_CONTEXT);
        m.push(ObjectKind::Snapshot as u8);
        m.extend_from_slice(&id.0);
        m.extend_from_slice(&(links.len() as u32).to_le_bytes());
        push_links(&mut m, RecordFormat::V2, links, seals);
        m.extend_from_slice(&(source.len() as u32).to_le_bytes());
        m.extend_from_slice(source.as_bytes());
        m.extend_from_slice(&created.to_le_bytes());
        m.extend_from_slice(blake3::hash(body).as_bytes());
        if let Some(g) = groups {
            m.extend_from_slice(b"retention groups\0");
            m.extend_from_slice(&g.paths);
            m.extend_from_slice(&g.paths_tags);
        }
        m
    }
}

impl Record {
    /// The message this snapshot record's attestation signs.
    pub fn attestation_message(&self, a: &Attestation) -> Vec<u8> {
        Attestation::message(&self.id, &self.links, &self.seals, &a.source, a.created, &self.body, a.groups.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Record {
        Record::v1(
            ObjectKind::Tree,
            ObjectId([7; 32]),
            vec![ObjectId([1; 32]), ObjectId([2; 32])],
            b"ciphertext".to_vec(),
        )
    }

    fn sample_v2() -> Record {
        Record::new(
            ObjectKind::Tree,
            ObjectId([7; 32]),
            vec![ObjectId([1; 32]), ObjectId([2; 32])],
            vec![Seal([0xa1; 32]), Seal([0xa2; 32])],
            b"ciphertext".to_vec(),
        )
    }

    /// Golden bytes: the version-1 layout must never change silently. If
    /// this test fails, you changed the on-disk and on-wire format.
    #[test]
    fn golden_header_bytes() {
        let enc = sample().encode();
        assert_eq!(&enc[0..4], b"ORc1");
        assert_eq!(enc[4], 2);
        assert_eq!(&enc[5..8], &[0, 0, 0]);
        assert_eq!(&enc[8..40], &[7u8; 32]);
        assert_eq!(&enc[40..44], &2u32.to_le_bytes());
        assert_eq!(&enc[44..48], &10u32.to_le_bytes());
        assert_eq!(&enc[48..80], &[1u8; 32]);
        assert_eq!(&enc[80..112], &[2u8; 32]);
        assert_eq!(&enc[112..122], b"ciphertext");
        assert_eq!(enc.len(), 122 + 16);
        assert_eq!(&enc[122..], &blake3::hash(&enc[..122]).as_bytes()[..16]);
    }

    /// Golden bytes of version 2: links are id || seal; a snapshot record's
    /// attestation length sits in bytes 5..8 and its bytes before the body.
    #[test]
    fn golden_header_bytes_v2() {
        let (enc, seal) = sample_v2().encode_sealed();
        assert_eq!(&enc[0..4], b"ORc2");
        assert_eq!(&enc[5..8], &[0, 0, 0]);
        assert_eq!(&enc[48..80], &[1u8; 32]);
        assert_eq!(&enc[80..112], &[0xa1u8; 32]);
        assert_eq!(&enc[112..144], &[2u8; 32]);
        assert_eq!(&enc[144..176], &[0xa2u8; 32]);
        assert_eq!(&enc[176..186], b"ciphertext");
        assert_eq!(enc.len(), 186 + 16);
        assert_eq!(seal.0, *blake3::hash(&enc[..186]).as_bytes());
        assert_eq!(&enc[186..], &seal.0[..16]);
        assert_eq!(Seal::of_record(&enc), seal);

        let mut snap = Record::new(ObjectKind::Snapshot, ObjectId([9; 32]), vec![], vec![], b"body".to_vec());
        snap.attestation = vec![0xee; 300];
        let enc = snap.encode();
        assert_eq!(&enc[5..8], &[44, 1, 0], "300 as u24 LE");
        assert_eq!(&enc[48..348], &[0xee; 300][..]);
        assert_eq!(&enc[348..352], b"body");
        let (dec, used, _) = Record::decode_sealed(&enc).unwrap();
        assert_eq!((dec, used), (snap, enc.len()));
    }

    #[test]
    fn only_snapshot_records_carry_an_attestation() {
        let mut enc = sample_v2().encode();
        enc[5] = 1;
        assert_eq!(RecordHeader::parse(&enc).unwrap_err(), RecordError::BadAttestationLength(1));
        let mut enc = sample().encode();
        enc[5] = 1;
        assert_eq!(RecordHeader::parse(&enc).unwrap_err(), RecordError::Reserved);
        let mut snap = Record::new(ObjectKind::Snapshot, ObjectId([9; 32]), vec![], vec![], vec![]).encode();
        snap[5..8].copy_from_slice(&(MAX_ATTESTATION_BYTES + 1).to_le_bytes()[..3]);
        assert_eq!(
            RecordHeader::parse(&snap).unwrap_err(),
            RecordError::BadAttestationLength(MAX_ATTESTATION_BYTES + 1)
        );
    }

    #[test]
    fn detects_corruption_anywhere() {
        for enc in [sample().encode(), sample_v2().encode()] {
            for i in 0..enc.len() {
                let mut bad = enc.clone();
                bad[i] ^= 0x40;
                assert!(Record::decode(&bad).is_err(), "flip at {i} not detected");
            }
        }
    }

    #[test]
    fn refuses_oversized_declarations_before_allocating() {
        let mut enc = sample().encode();
        enc[40..44].copy_from_slice(&(MAX_LINKS + 1).to_le_bytes());
        assert_eq!(Record::decode(&enc).unwrap_err(), RecordError::TooManyLinks(MAX_LINKS + 1));
        let mut enc = sample().encode();
        enc[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Record::decode(&enc).unwrap_err(), RecordError::BodyTooLarge(u32::MAX));
        let enc = sample().encode();
        assert!(matches!(Record::decode(&enc[..60]).unwrap_err(), RecordError::Truncated { .. }));
        let mut enc = sample().encode();
        enc[4] = 9;
        assert_eq!(Record::decode(&enc).unwrap_err(), RecordError::BadKind(9));
    }

    fn attestation() -> impl Strategy<Value = Attestation> {
        (
            "[a-z][a-z0-9-]{0,20}",
            any::<i64>(),
            any::<u16>(),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..100), 1..=MAX_CHAIN_CERTS),
            proptest::collection::vec(any::<u8>(), 1..100),
            proptest::option::of(any::<([u8; 16], [u8; 16])>()),
        )
            .prop_map(|(source, created, scheme, chain, signature, groups)| Attestation {
                source,
                created,
                scheme,
                chain,
                signature,
                groups: groups.map(|(paths, paths_tags)| RetentionGroups { paths, paths_tags }),
            })
    }

    proptest! {
        #[test]
        fn round_trip(v2 in any::<bool>(), kind in 1u8..=4, id in any::<[u8; 32]>(), nlinks in 0usize..20, body in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let kind = ObjectKind::from_u8(kind).unwrap();
            let links: Vec<ObjectId> = (0..nlinks).map(|i| ObjectId([i as u8; 32])).collect();
            let rec = if v2 {
                let seals = (0..nlinks).map(|i| Seal([!(i as u8); 32])).collect();
                Record::new(kind, ObjectId(id), links, seals, body)
            } else {
                Record::v1(kind, ObjectId(id), links, body)
            };
            let (enc, seal) = rec.encode_sealed();
            let (dec, used, seal2) = Record::decode_sealed(&enc).unwrap();
            prop_assert_eq!(used, enc.len());
            prop_assert_eq!(seal, seal2);
            let (h, l, s) = sealed_links_of(&enc).unwrap();
            prop_assert_eq!(h.link_count as usize, nlinks);
            prop_assert_eq!(&l, &dec.links);
            prop_assert_eq!(&s, &dec.seals);
            prop_assert_eq!(dec, rec);
        }

        /// A parent's link names exactly one child: any change to the
        /// child's bytes (even with its check recomputed, as a forger
        /// would) changes its seal.
        #[test]
        fn a_link_names_exactly_one_record(body in proptest::collection::vec(any::<u8>(), 1..500), flip in any::<usize>(), bit in 0u8..8) {
            let child = Record::new(ObjectKind::Blob, ObjectId([3; 32]), vec![], vec![], body);
            let (enc, seal) = child.encode_sealed();
            let mut forged = enc.clone();
            let at = flip % (enc.len() - CHECK_BYTES);
            forged[at] ^= 1 << bit;
            let n = forged.len() - CHECK_BYTES;
            let fresh = blake3::hash(&forged[..n]);
            forged[n..].copy_from_slice(&fresh.as_bytes()[..CHECK_BYTES]);
            if let Ok((_, _, s)) = Record::decode_sealed(&forged) {
                prop_assert_ne!(s, seal);
            }
        }

        #[test]
        fn attestation_round_trip(a in attestation(), id in any::<[u8; 32]>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let enc = a.encode();
            prop_assert_eq!(Attestation::decode(&enc).unwrap(), a.clone());
            let mut rec = Record::new(ObjectKind::Snapshot, ObjectId(id), vec![ObjectId([1; 32])], vec![Seal([2; 32])], body);
            rec.attestation = enc;
            let m = rec.attestation_message(&a);
            let (dec, _) = Record::decode(&rec.encode()).unwrap();
            prop_assert_eq!(dec.attestation_message(&Attestation::decode(&dec.attestation).unwrap()), m.clone());
            // the message covers the links' seals and the source
            let mut other = rec.clone();
            other.seals[0].0[0] ^= 1;
            prop_assert_ne!(other.attestation_message(&a), m.clone());
            let mut b = a.clone();
            b.source.push('x');
            prop_assert_ne!(rec.attestation_message(&b), m.clone());
            // and the groups: a holder cannot strip, add or change them
            let mut c = a.clone();
            c.groups = match a.groups {
                None => Some(RetentionGroups { paths: [0; 16], paths_tags: [0; 16] }),
                Some(mut g) => {
                    g.paths[0] ^= 1;
                    Some(g)
                }
            };
            prop_assert_ne!(rec.attestation_message(&c), m.clone());
            if a.groups.is_some() {
                let mut d = a.clone();
                d.groups = None;
                prop_assert_ne!(rec.attestation_message(&d), m);
                // and an attestation without groups encodes as it always did
                prop_assert!(d.encode().len() + 32 == a.encode().len());
            }
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Record::decode(&data);
            let _ = links_of(&data);
            let _ = sealed_links_of(&data);
            let _ = Attestation::decode(&data);
        }
    }
}
