//! Mesh messages (protocol version 1).
//!
//! One request per bidirectional QUIC stream: the client writes one
//! [`Request`] frame (and, for `PutObjects`, the records it announces), the
//! server answers with one [`Response`] frame (and, for `GetObjects`, the
//! records). The first stream of a connection carries the `Hello` exchange.
//!
//! Enum variants are encoded by position (postcard varint). The number in
//! parentheses in each variant's doc is its wire discriminant: variants are only ever
//! appended, never reordered or reused; a retired variant stays, marked
//! retired. A golden test pins every discriminant.
//!
//! Identity is never taken from a message: the server uses the name in the
//! client's verified certificate. `source` fields name a namespace on the
//! storing peer; writes are accepted only into the writer's own namespace.

use crate::id::ObjectId;
use serde::{Deserialize, Serialize};

/// Most ids in one `Have` request (2 MiB of ids).
pub const MAX_HAVE_IDS: usize = 65_536;
/// Most ids in one `GetObjects` request.
pub const MAX_GET_IDS: usize = 4096;
/// Most records announced by one `PutObjects`.
pub const MAX_PUT_RECORDS: u32 = 65_536;
/// Longest node or source name (bytes).
pub const MAX_NAME_BYTES: usize = 64;
/// Largest sealed snapshot record accepted.
pub const MAX_SNAPSHOT_RECORD_BYTES: usize = 1024 * 1024;
/// Most snapshots listed in one `Snapshots` response.
pub const MAX_LIST_SNAPSHOTS: usize = 4096;
/// Longest error message carried.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most bytes of entries in one `Snapshots` page: a page always fits a
/// frame, whatever the records' sizes (each at most
/// [`MAX_SNAPSHOT_RECORD_BYTES`]).
pub const MAX_LIST_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Most sources in one `Status` answer.
pub const MAX_STATUS_SOURCES: usize = 16_384;
/// Largest `Hello` frame.
pub const MAX_HELLO_FRAME_BYTES: u32 = 16 * 1024;

impl SnapshotEntry {
    /// An upper bound of this entry's encoded size (postcard: varint
    /// lengths of at most 10 bytes, a 32-byte id, a varint time).
    pub fn encoded_len_bound(&self) -> usize {
        10 + self.source.len() + 32 + 10 + self.record.len() + 10
    }
}

/// QUIC application close codes (connection level).
pub mod close {
    /// Orderly close.
    pub const NORMAL: u32 = 0;
    /// A frame or record broke the protocol (malformed, wrong order).
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// A frame or record exceeded its size limit.
    pub const TOO_LARGE: u32 = 2;
    /// The peer's certificate name is not allowed here.
    pub const UNAUTHORIZED: u32 = 3;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 4;
    /// Handshake missing or incompatible.
    pub const HANDSHAKE: u32 = 5;
    /// The peer already has as many connections open here as it may.
    pub const TOO_MANY: u32 = 6;
}

/// Optional features a node offers. Unknown values are ignored, so new
/// capabilities can be added without a protocol version change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability(pub u16);

impl Capability {
    /// Stores replicas for other sources.
    pub const STORE: Capability = Capability(1);
    /// Serves objects for restores.
    pub const SERVE: Capability = Capability(2);
    /// Binds each source it stores to one data key (`BindKey`).
    pub const KEY_BINDING: Capability = Capability(3);
}

/// Most bytes of a key id in `BindKey` (a key id is 32 hex digits).
pub const MAX_KEY_ID_BYTES: usize = 64;

/// A key id as `BindKey` and a `bound-key` file carry it: 1 to
/// [`MAX_KEY_ID_BYTES`] hex digits.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_KEY_ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Handshake, both directions, on the first stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's node name (informational: identity is the certificate).
    pub node: String,
    /// Software name and version, e.g. "omesh 0.1.0".
    pub software: String,
    /// Protocol version (1).
    pub protocol: u16,
    /// Offered capabilities.
    pub capabilities: Vec<Capability>,
}

/// A request. The doc number of each variant is its wire discriminant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// (0) Handshake.
    Hello(Hello),
    /// (1) Liveness and round-trip time.
    Ping {
        /// echoed back
        nonce: u64,
    },
    /// (2) Which of these objects of `source` do you hold durably?
    Have {
        /// namespace
        source: String,
        /// up to MAX_HAVE_IDS ids
        ids: Vec<ObjectId>,
    },
    /// (3) Store `count` records for `source` (the sender's own namespace).
    /// The records follow this frame on the same stream, back to back; the
    /// response comes after all of them are verified and durable.
    PutObjects {
        /// namespace (must be the sender's certificate name)
        source: String,
        /// records that follow
        count: u32,
    },
    /// (4) Commit a snapshot record. Accepted only when every object it
    /// references (transitively) is durable on this peer; never overwrites.
    PutSnapshot {
        /// namespace (must be the sender's certificate name)
        source: String,
        /// the sealed snapshot record (an encoded object record)
        record: Vec<u8>,
    },
    /// (5) List snapshots held, for one source or all. Pages are sized by
    /// bytes ([`MAX_LIST_PAGE_BYTES`]) and count ([`MAX_LIST_SNAPSHOTS`]).
    /// Paging (`after`) needs a `source`: an all-sources listing is one
    /// page only, and a client lists every source from `Status` one by one.
    ListSnapshots {
        /// namespace filter
        source: Option<String>,
        /// continue after this id (pagination within `source`)
        after: Option<ObjectId>,
    },
    /// (6) Send these objects of `source`.
    GetObjects {
        /// namespace
        source: String,
        /// up to MAX_GET_IDS ids
        ids: Vec<ObjectId>,
    },
    /// (7) Send one snapshot record.
    GetSnapshot {
        /// namespace
        source: String,
        /// snapshot id
        id: ObjectId,
    },
    /// (8) Ask the storing peer to forget one of the sender's snapshots.
    /// Refused unless the peer's own configuration honours source deletes
    /// and the snapshot is older than the peer's retention lock: expiry is
    /// the storing peer's decision, so a compromised source cannot erase its
    /// recent history on other nodes.
    DeleteSnapshot {
        /// namespace
        source: String,
        /// snapshot id
        id: ObjectId,
    },
    /// (9) Storage and health summary.
    Status,
    /// (10) The snapshots `source` (the sender's own namespace) is about to
    /// push are made under data key `key_id`. A peer that offers
    /// [`Capability::KEY_BINDING`] records the first key id a source names
    /// and refuses any other (`Forbidden`) until its administrator accepts
    /// the new one (`omesh key accept`), so one source's history never
    /// silently gains a second key. Sent before any object of a push.
    BindKey {
        /// namespace (must be the sender's certificate name)
        source: String,
        /// the source store's key id
        key_id: String,
    },
}

/// Machine-readable error kinds. Doc numbers are wire discriminants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// (0) Malformed or out-of-limits request.
    BadRequest,
    /// (1) The requested snapshot or source is not here.
    NotFound,
    /// (2) Not allowed (writing another node's namespace, deleting, overwriting).
    Forbidden,
    /// (3) The source's quota on this peer would be exceeded.
    QuotaExceeded,
    /// (4) A snapshot references objects this peer does not hold (`missing`).
    Incomplete,
    /// (5) A record failed verification.
    Corrupt,
    /// (6) Temporary condition; retry later.
    Busy,
    /// (7) Storage or internal failure on the peer.
    Internal,
}

impl ErrorCode {
    /// Whether retrying the same request later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Busy | ErrorCode::Internal | ErrorCode::Incomplete)
    }
}

/// One stored snapshot as listed by a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// Namespace (source node).
    pub source: String,
    /// Snapshot id.
    pub id: ObjectId,
    /// The sealed record (decryptable by the source key holder).
    pub record: Vec<u8>,
    /// When this peer committed it (ns since epoch).
    pub stored_ns: i64,
}

/// Usage of one source's namespace on a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceUsage {
    /// Namespace.
    pub source: String,
    /// Bytes in packs.
    pub bytes: u64,
    /// Objects.
    pub objects: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// Quota (0 = none).
    pub quota_bytes: u64,
}

/// A peer's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Node name.
    pub node: String,
    /// Software version.
    pub software: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Stored namespaces.
    pub sources: Vec<SourceUsage>,
}

/// A response. The doc number of each variant is its wire discriminant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// (0) Handshake answer.
    Hello(Hello),
    /// (1) Answer to Ping.
    Pong {
        /// the request's nonce
        nonce: u64,
    },
    /// (2) Bitmap: bit i (LSB first in byte i/8) set = the i-th id is held.
    Have {
        /// bitmap
        held: Vec<u8>,
    },
    /// (3) All announced records verified and durable.
    Stored {
        /// records received
        objects: u32,
        /// of which were new here
        new_objects: u32,
        /// record bytes received
        bytes: u64,
    },
    /// (4) Snapshot committed (or already present: `new` false).
    SnapshotCommitted {
        /// snapshot id
        id: ObjectId,
        /// whether this call stored it
        new: bool,
    },
    /// (5) Snapshot list (one page).
    Snapshots {
        /// entries, ordered by (source, id)
        items: Vec<SnapshotEntry>,
        /// more pages follow
        more: bool,
    },
    /// (6) `count` entries follow on the stream, one per held id in request
    /// order: a status byte (1 = an encoded record follows, 0 = the object
    /// turned out unreadable on this peer); `missing` lists requested ids
    /// this peer does not hold.
    Objects {
        /// records that follow
        count: u32,
        /// ids not held
        missing: Vec<ObjectId>,
    },
    /// (7) A snapshot record.
    Snapshot {
        /// sealed record
        record: Vec<u8>,
    },
    /// (8) Status.
    Status(PeerStatus),
    /// (9) The request failed.
    Error {
        /// kind
        code: ErrorCode,
        /// operator-facing message
        message: String,
        /// for Incomplete: objects missing (at most MAX_HAVE_IDS)
        missing: Vec<ObjectId>,
    },
    /// (10) A `DeleteSnapshot` was honoured: the snapshot is forgotten.
    Forgotten {
        /// snapshot id
        id: ObjectId,
    },
    /// (11) `BindKey` holds: the source's snapshots here are under this key.
    KeyBound {
        /// the key id the source is bound to here
        key_id: String,
        /// whether this request made the binding (a first push here)
        new: bool,
    },
}

/// Bitmap helpers for `Have`.
pub fn bitmap_set(bits: &mut Vec<u8>, i: usize) {
    if bits.len() <= i / 8 {
        bits.resize(i / 8 + 1, 0);
    }
    bits[i / 8] |= 1 << (i % 8);
}

/// Test bit `i`.
pub fn bitmap_get(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Check a node or source name: 1-64 bytes of `[A-Za-z0-9._-]`, not
/// starting with '.' or '-' (it becomes a directory name and a certificate
/// DNS name).
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME_BYTES
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !n.starts_with('.')
        && !n.starts_with('-')
}

impl Request {
    /// Check list sizes and names against the protocol limits.
    pub fn validate(&self) -> Result<(), String> {
        let name = |n: &str| if valid_name(n) { Ok(()) } else { Err(format!("invalid source name {n:?}")) };
        match self {
            Request::Hello(h) => h.validate()?,
            Request::Have { source, ids } => {
                name(source)?;
                if ids.len() > MAX_HAVE_IDS {
                    return Err(format!("{} ids in one Have (max {MAX_HAVE_IDS})", ids.len()));
                }
            }
            Request::PutObjects { source, count } => {
                name(source)?;
                if *count > MAX_PUT_RECORDS {
                    return Err(format!("{count} records in one PutObjects (max {MAX_PUT_RECORDS})"));
                }
            }
            Request::PutSnapshot { source, record } => {
                name(source)?;
                if record.len() > MAX_SNAPSHOT_RECORD_BYTES {
                    return Err("snapshot record too large".into());
                }
            }
            Request::ListSnapshots { source, after } => match source {
                Some(s) => name(s)?,
                None if after.is_some() => {
                    return Err("paging (after) needs a source: list each source of Status one by one".into());
                }
                None => {}
            },
            Request::GetObjects { source, ids } => {
                name(source)?;
                if ids.len() > MAX_GET_IDS {
                    return Err(format!("{} ids in one GetObjects (max {MAX_GET_IDS})", ids.len()));
                }
            }
            Request::GetSnapshot { source, .. } | Request::DeleteSnapshot { source, .. } => name(source)?,
            Request::BindKey { source, key_id } => {
                name(source)?;
                if !valid_key_id(key_id) {
                    return Err("a key id is 1 to 64 hex digits".into());
                }
            }
            Request::Ping { .. } | Request::Status => {}
        }
        Ok(())
    }
}

impl Hello {
    /// Check field lengths.
    pub fn validate(&self) -> Result<(), String> {
        if self.node.len() > MAX_NAME_BYTES || self.software.len() > 256 || self.capabilities.len() > 64 {
            return Err("hello fields too long".into());
        }
        Ok(())
    }
}

impl Response {
    /// Check list sizes, record sizes and names against the protocol
    /// limits (a client checks every answer before it uses it).
    pub fn validate(&self) -> Result<(), String> {
        let name = |n: &str| if valid_name(n) { Ok(()) } else { Err(format!("invalid source name {n:?}")) };
        match self {
            Response::Hello(h) => h.validate()?,
            Response::Have { held } => {
                if held.len() > MAX_HAVE_IDS.div_ceil(8) {
                    return Err("Have bitmap longer than any request".into());
                }
            }
            Response::Snapshots { items, .. } => {
                if items.len() > MAX_LIST_SNAPSHOTS {
                    return Err(format!("{} snapshots in one page (max {MAX_LIST_SNAPSHOTS})", items.len()));
                }
                for e in items {
                    name(&e.source)?;
                    if e.record.len() > MAX_SNAPSHOT_RECORD_BYTES {
                        return Err(format!(
                            "snapshot record of {} bytes (max {MAX_SNAPSHOT_RECORD_BYTES})",
                            e.record.len()
                        ));
                    }
                }
            }
            Response::Objects { missing, .. } => {
                if missing.len() > MAX_GET_IDS {
                    return Err("more missing ids than any request holds".into());
                }
            }
            Response::Snapshot { record } => {
                if record.len() > MAX_SNAPSHOT_RECORD_BYTES {
                    return Err(format!("snapshot record of {} bytes (max {MAX_SNAPSHOT_RECORD_BYTES})", record.len()));
                }
            }
            Response::Status(st) => {
                if st.node.len() > MAX_NAME_BYTES || st.software.len() > 256 || st.sources.len() > MAX_STATUS_SOURCES {
                    return Err("status fields too long".into());
                }
                for u in &st.sources {
                    name(&u.source)?;
                }
            }
            Response::Error { message, missing, .. } => {
                if message.len() > MAX_MESSAGE_BYTES || missing.len() > MAX_HAVE_IDS {
                    return Err("error answer too long".into());
                }
            }
            Response::Pong { .. }
            | Response::Stored { .. }
            | Response::SnapshotCommitted { .. }
            | Response::Forgotten { .. } => {}
            Response::KeyBound { key_id, .. } => {
                if key_id.len() > MAX_KEY_ID_BYTES {
                    return Err("key id too long".into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn disc<T: Serialize>(v: &T) -> u8 {
        postcard::to_stdvec(v).unwrap()[0]
    }

    /// Golden discriminants: these numbers are the wire format.
    #[test]
    fn golden_discriminants() {
        let h = Hello { node: "a".into(), software: "s".into(), protocol: 1, capabilities: vec![Capability::STORE] };
        let s = || "src".to_string();
        let id = ObjectId([1; 32]);
        let reqs = [
            (Request::Hello(h.clone()), 0),
            (Request::Ping { nonce: 1 }, 1),
            (Request::Have { source: s(), ids: vec![] }, 2),
            (Request::PutObjects { source: s(), count: 0 }, 3),
            (Request::PutSnapshot { source: s(), record: vec![] }, 4),
            (Request::ListSnapshots { source: None, after: None }, 5),
            (Request::GetObjects { source: s(), ids: vec![] }, 6),
            (Request::GetSnapshot { source: s(), id }, 7),
            (Request::DeleteSnapshot { source: s(), id }, 8),
            (Request::Status, 9),
            (Request::BindKey { source: s(), key_id: "ab".into() }, 10),
        ];
        for (r, d) in reqs {
            assert_eq!(disc(&r), d, "{r:?}");
        }
        let resps = [
            (Response::Hello(h), 0),
            (Response::Pong { nonce: 0 }, 1),
            (Response::Have { held: vec![] }, 2),
            (Response::Stored { objects: 0, new_objects: 0, bytes: 0 }, 3),
            (Response::SnapshotCommitted { id, new: true }, 4),
            (Response::Snapshots { items: vec![], more: false }, 5),
            (Response::Objects { count: 0, missing: vec![] }, 6),
            (Response::Snapshot { record: vec![] }, 7),
            (
                Response::Status(PeerStatus {
                    node: "a".into(),
                    software: "s".into(),
                    uptime_secs: 0,
                    sources: vec![],
                }),
                8,
            ),
            (Response::Error { code: ErrorCode::Forbidden, message: String::new(), missing: vec![] }, 9),
            (Response::Forgotten { id }, 10),
            (Response::KeyBound { key_id: "ab".into(), new: true }, 11),
        ];
        for (r, d) in resps {
            assert_eq!(disc(&r), d, "{r:?}");
        }
        let codes = [
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::Forbidden,
            ErrorCode::QuotaExceeded,
            ErrorCode::Incomplete,
            ErrorCode::Corrupt,
            ErrorCode::Busy,
            ErrorCode::Internal,
        ];
        for (i, c) in codes.iter().enumerate() {
            assert_eq!(disc(c) as usize, i);
        }
        // a whole frame, byte for byte
        assert_eq!(frame::encode(&Request::Ping { nonce: 5 }).unwrap(), vec![2, 0, 0, 0, 1, 5]);
    }

    #[test]
    fn bitmap() {
        let mut b = Vec::new();
        bitmap_set(&mut b, 0);
        bitmap_set(&mut b, 9);
        assert!(bitmap_get(&b, 0) && bitmap_get(&b, 9) && !bitmap_get(&b, 1) && !bitmap_get(&b, 100));
    }

    #[test]
    fn validation() {
        assert!(valid_name("srv-a.rack_1"));
        for bad in ["", "../x", "a/b", ".hidden", "-x", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        let big = Request::Have { source: "a".into(), ids: vec![ObjectId::ZERO; MAX_HAVE_IDS + 1] };
        assert!(big.validate().is_err());
        assert!(Request::PutObjects { source: "../etc".into(), count: 1 }.validate().is_err());
        // paging needs a source
        let id = Some(ObjectId::ZERO);
        assert!(Request::ListSnapshots { source: None, after: id }.validate().is_err());
        assert!(Request::ListSnapshots { source: Some("a".into()), after: id }.validate().is_ok());
        // answers are checked too
        let entry = |source: &str, n: usize| SnapshotEntry {
            source: source.into(),
            id: ObjectId::ZERO,
            record: vec![0; n],
            stored_ns: 0,
        };
        let page = |e| Response::Snapshots { items: vec![e], more: false };
        assert!(page(entry("a", 10)).validate().is_ok());
        assert!(page(entry("../a", 10)).validate().is_err());
        assert!(page(entry("a", MAX_SNAPSHOT_RECORD_BYTES + 1)).validate().is_err());
    }

    #[test]
    fn a_full_page_of_the_largest_records_fits_a_frame() {
        let e = SnapshotEntry {
            source: "x".repeat(MAX_NAME_BYTES),
            id: ObjectId::ZERO,
            record: vec![0xff; MAX_SNAPSHOT_RECORD_BYTES],
            stored_ns: i64::MIN,
        };
        let bound = e.encoded_len_bound();
        let n = MAX_LIST_PAGE_BYTES / bound;
        assert!(n >= 2);
        let r = Response::Snapshots { items: vec![e; n], more: true };
        let f = frame::encode(&r).unwrap();
        assert!(f.len() - frame::LEN_PREFIX_BYTES <= n * bound + 8);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = frame::decode::<Request>(&data, frame::MAX_FRAME_BYTES);
            let _ = frame::decode::<Response>(&data, frame::MAX_FRAME_BYTES);
        }
    }
}
