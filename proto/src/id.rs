//! Object identifiers.
//!
//! An [`ObjectId`] is the keyed BLAKE3 hash of an object's plaintext under
//! the source's id key. Only the key holder can compute or verify it; a peer
//! or a bucket sees it as an opaque 32-byte name.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Length of an object id in bytes.
pub const ID_BYTES: usize = 32;

/// 32-byte object identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct ObjectId(pub [u8; ID_BYTES]);

/// A string that is not a valid object id (or id prefix).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdParseError {
    /// Not hexadecimal, or of the wrong length.
    #[error("'{0}' is not a hexadecimal object id (64 hex digits)")]
    NotHex(String),
}

impl ObjectId {
    /// The all-zero id, never the hash of real data; used as "none" in
    /// fixed-size layouts.
    pub const ZERO: ObjectId = ObjectId([0; ID_BYTES]);

    /// Full lowercase hex form.
    pub fn to_hex(&self) -> String {
        ::hex::encode(self.0)
    }

    /// The 8-digit short form shown to operators.
    pub fn short(&self) -> String {
        ::hex::encode(&self.0[..4])
    }

    /// Parse a full 64-digit hex id.
    pub fn from_hex(s: &str) -> Result<Self, IdParseError> {
        let mut out = [0u8; ID_BYTES];
        ::hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError::NotHex(s.to_string()))?;
        Ok(ObjectId(out))
    }

    /// Byte slice view.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.short())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::str::FromStr for ObjectId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

/// Serde as a hex string (`#[serde(with = "omesh_proto::id::hex")]`):
/// how ids appear in JSON output and text formats. The binary wire and
/// record formats keep the 32 raw bytes.
pub mod hex {
    use super::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as 64 hex digits.
    pub fn serialize<S: Serializer>(id: &ObjectId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    /// Deserialize from 64 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ObjectId::from_hex(&s).map_err(serde::de::Error::custom)
    }

    /// The same for a list of ids.
    pub mod vec {
        use super::ObjectId;
        use serde::ser::SerializeSeq;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Serialize as a list of hex strings.
        pub fn serialize<S: Serializer>(ids: &[ObjectId], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(ids.len()))?;
            for id in ids {
                seq.serialize_element(&id.to_hex())?;
            }
            seq.end()
        }

        /// Deserialize from a list of hex strings.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ObjectId>, D::Error> {
            let v = <Vec<String>>::deserialize(d)?;
            v.iter().map(|s| ObjectId::from_hex(s).map_err(serde::de::Error::custom)).collect()
        }
    }

    /// The same for an optional id (`null` when absent).
    pub mod option {
        use super::ObjectId;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Serialize as 64 hex digits or null.
        pub fn serialize<S: Serializer>(id: &Option<ObjectId>, s: S) -> Result<S::Ok, S::Error> {
            match id {
                Some(id) => s.serialize_str(&id.to_hex()),
                None => s.serialize_none(),
            }
        }

        /// Deserialize from 64 hex digits or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ObjectId>, D::Error> {
            let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
            s.map(|s| ObjectId::from_hex(&s).map_err(serde::de::Error::custom)).transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ObjectId([0xab; 32]);
        assert_eq!(ObjectId::from_hex(&id.to_hex()).unwrap(), id);
        assert_eq!(id.short(), "abababab");
        assert!(ObjectId::from_hex("abc").is_err());
        assert!(ObjectId::from_hex(&"zz".repeat(32)).is_err());
    }
}
