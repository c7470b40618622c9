//! The object record: the self-describing unit that a pack file stores, a
//! peer transfers and an S3 pack object holds.
//!
//! Layout (version 1, all integers little-endian):
//!
//! ```text
//! offset  size   field
//! 0       4      magic  b"ORc1" (the last byte is the record format version)
//! 4       1      kind   (ObjectKind discriminant)
//! 5       1      flags  (must be 0 in version 1)
//! 6       2      reserved (must be 0)
//! 8       32     id     keyed BLAKE3 of the plaintext (opaque without the key)
//! 40      4      link count n   (<= MAX_LINKS)
//! 44      4      body length b  (<= MAX_BODY_BYTES)
//! 48      32*n   links: ids of the objects this one references
//! 48+32n  b      body: nonce || AEAD ciphertext || tag
//! ...     16     check: first 16 bytes of the BLAKE3 of every preceding byte
//! ```
//!
//! The links are in clear so that a storing peer, which cannot decrypt,
//! can still walk a snapshot's object graph (to check completeness before
//! committing it, and to know what is garbage). They are authenticated as
//! associated data of the AEAD, so a peer that alters them is caught by the
//! key holder. The `check` hash lets anyone, key or not, detect a torn or
//! corrupted record: the receiver of a transfer, a scrub on a storing peer,
//! and the index rebuild all rely on it.

use crate::id::{ID_BYTES, ObjectId};
use serde::{Deserialize, Serialize};

/// Record magic; the 4th byte is the record format version.
pub const RECORD_MAGIC: [u8; 4] = *b"ORc1";
/// Size of the fixed part of the header.
pub const HEADER_BYTES: usize = 48;
/// Size of the trailing check hash (a truncated BLAKE3: it detects
/// corruption and torn writes; authenticity comes from the AEAD).
pub const CHECK_BYTES: usize = 16;
/// Upper bound on links per record. Writers split trees and chunk lists
/// well below this; a decoder refuses anything above it.
pub const MAX_LINKS: u32 = 262_144;
/// Upper bound on a record body (ciphertext). Chunks are at most 8 MiB
/// before compression; trees and lists are split by the writer at 4 MiB.
pub const MAX_BODY_BYTES: u32 = 32 * 1024 * 1024;
/// Upper bound on a whole record.
pub const MAX_RECORD_BYTES: u64 =
    HEADER_BYTES as u64 + MAX_LINKS as u64 * ID_BYTES as u64 + MAX_BODY_BYTES as u64 + CHECK_BYTES as u64;

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
    /// The check hash does not match: the bytes were corrupted or torn.
    #[error("record check hash mismatch (corrupted or torn record)")]
    CheckMismatch,
}

/// The decoded fixed header of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Object kind.
    pub kind: ObjectKind,
    /// Object id.
    pub id: ObjectId,
    /// Number of links.
    pub link_count: u32,
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
        if magic != RECORD_MAGIC {
            return Err(RecordError::BadMagic(magic));
        }
        let kind = ObjectKind::from_u8(buf[4]).ok_or(RecordError::BadKind(buf[4]))?;
        if buf[5] != 0 || buf[6] != 0 || buf[7] != 0 {
            return Err(RecordError::Reserved);
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
        Ok(Self { kind, id, link_count, body_len })
    }

    /// Total record length implied by this header.
    pub fn record_len(&self) -> u64 {
        HEADER_BYTES as u64 + self.link_count as u64 * ID_BYTES as u64 + self.body_len as u64 + CHECK_BYTES as u64
    }

    /// Length of header plus links (the part that precedes the body).
    pub fn prefix_len(&self) -> usize {
        HEADER_BYTES + self.link_count as usize * ID_BYTES
    }
}

/// An owned, validated record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Object kind.
    pub kind: ObjectKind,
    /// Object id.
    pub id: ObjectId,
    /// Referenced objects.
    pub links: Vec<ObjectId>,
    /// Encrypted body.
    pub body: Vec<u8>,
}

impl Record {
    /// Serialize to the record layout, appending to `out`.
    ///
    /// Panics if the record violates the limits; writers construct records
    /// from their own data and must respect them.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        assert!(self.links.len() as u64 <= MAX_LINKS as u64, "too many links");
        assert!(self.body.len() as u64 <= MAX_BODY_BYTES as u64, "body too large");
        let start = out.len();
        out.reserve(HEADER_BYTES + self.links.len() * ID_BYTES + self.body.len() + CHECK_BYTES);
        out.extend_from_slice(&RECORD_MAGIC);
        out.push(self.kind as u8);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&(self.links.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        for l in &self.links {
            out.extend_from_slice(&l.0);
        }
        out.extend_from_slice(&self.body);
        let check = blake3::hash(&out[start..]);
        out.extend_from_slice(&check.as_bytes()[..CHECK_BYTES]);
    }

    /// Serialize to a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decode one record from the start of `buf`, verifying the check hash.
    /// Returns the record and the number of bytes it occupied.
    pub fn decode(buf: &[u8]) -> Result<(Record, usize), RecordError> {
        let header = RecordHeader::parse(buf)?;
        let total = header.record_len();
        if (buf.len() as u64) < total {
            return Err(RecordError::Truncated { need: total, have: buf.len() as u64 });
        }
        let total = total as usize;
        verify_check(&buf[..total])?;
        let prefix = header.prefix_len();
        let links = buf[HEADER_BYTES..prefix]
            .chunks_exact(ID_BYTES)
            .map(|c| ObjectId(c.try_into().expect("32 bytes")))
            .collect();
        let body = buf[prefix..prefix + header.body_len as usize].to_vec();
        Ok((Record { kind: header.kind, id: header.id, links, body }, total))
    }

    /// Associated data that binds the header fields to the AEAD body: kind,
    /// id and links. Changing any of them makes decryption fail.
    pub fn associated_data(kind: ObjectKind, id: &ObjectId, links: &[ObjectId]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(1 + ID_BYTES * (1 + links.len()) + 4);
        ad.extend_from_slice(&RECORD_MAGIC);
        ad.push(kind as u8);
        ad.extend_from_slice(&id.0);
        for l in links {
            ad.extend_from_slice(&l.0);
        }
        ad
    }
}

/// Verify the trailing check hash of a complete encoded record.
pub fn verify_check(record: &[u8]) -> Result<(), RecordError> {
    if record.len() < HEADER_BYTES + CHECK_BYTES {
        return Err(RecordError::Truncated { need: (HEADER_BYTES + CHECK_BYTES) as u64, have: record.len() as u64 });
    }
    let (data, check) = record.split_at(record.len() - CHECK_BYTES);
    if &blake3::hash(data).as_bytes()[..CHECK_BYTES] != check {
        return Err(RecordError::CheckMismatch);
    }
    Ok(())
}

/// Parse the links of a complete encoded record without copying its body.
pub fn links_of(record: &[u8]) -> Result<(RecordHeader, Vec<ObjectId>), RecordError> {
    let header = RecordHeader::parse(record)?;
    let prefix = header.prefix_len();
    if record.len() < prefix {
        return Err(RecordError::Truncated { need: prefix as u64, have: record.len() as u64 });
    }
    let links = record[HEADER_BYTES..prefix]
        .chunks_exact(ID_BYTES)
        .map(|c| ObjectId(c.try_into().expect("32 bytes")))
        .collect();
    Ok((header, links))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Record {
        Record {
            kind: ObjectKind::Tree,
            id: ObjectId([7; 32]),
            links: vec![ObjectId([1; 32]), ObjectId([2; 32])],
            body: b"ciphertext".to_vec(),
        }
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

    #[test]
    fn detects_corruption_anywhere() {
        let enc = sample().encode();
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x40;
            assert!(Record::decode(&bad).is_err(), "flip at {i} not detected");
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

    proptest! {
        #[test]
        fn round_trip(kind in 1u8..=4, id in any::<[u8; 32]>(), nlinks in 0usize..20, body in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let rec = Record {
                kind: ObjectKind::from_u8(kind).unwrap(),
                id: ObjectId(id),
                links: (0..nlinks).map(|i| ObjectId([i as u8; 32])).collect(),
                body,
            };
            let enc = rec.encode();
            let (dec, used) = Record::decode(&enc).unwrap();
            prop_assert_eq!(used, enc.len());
            prop_assert_eq!(dec, rec);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Record::decode(&data);
            let _ = links_of(&data);
        }
    }
}
