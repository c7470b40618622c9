//! omesh wire formats: object ids, the object record (the unit a pack stores
//! and a peer transfers) and the length-prefixed frame codec for mesh
//! messages.
//!
//! This crate is pure data: serde types, encoders and decoders. It does no
//! I/O and knows nothing of tokio, files or QUIC, so every decoder here can
//! be fuzzed and property-tested in isolation. Every length read from the
//! outside is checked against a `MAX_*` constant before anything is
//! allocated.
//!
//! Compatibility rules (see `docs/protocol.md`):
//! - the protocol version lives in the ALPN string ([`ALPN`]);
//! - enum discriminants are explicit and never reused; a retired variant
//!   stays in the enum, marked as such;
//! - the object record carries its own magic and version byte.

#![forbid(unsafe_code)]

pub mod frame;
pub mod id;
pub mod msg;
pub mod record;

pub use frame::{FrameError, MAX_FRAME_BYTES};
pub use id::{IdParseError, ObjectId};
pub use record::{Attestation, ObjectKind, Record, RecordError, RecordFormat, RecordHeader, RetentionGroups, Seal};

/// ALPN protocol identifier; the trailing number is the wire protocol
/// version. A peer that speaks another version fails the TLS handshake
/// cleanly instead of misparsing frames.
pub const ALPN: &[u8] = b"omesh/2";

/// Wire protocol version carried in the handshake (mirrors [`ALPN`]).
pub const PROTOCOL_VERSION: u16 = 2;
