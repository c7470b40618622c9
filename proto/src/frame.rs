//! Length-prefixed frames carrying postcard-encoded messages.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes of
//! postcard. The length is checked against a maximum *before* the body is
//! read or allocated, so a hostile peer cannot make a node allocate more
//! than [`MAX_FRAME_BYTES`] per stream.

use serde::{Serialize, de::DeserializeOwned};

/// Largest frame accepted for control messages. Object bytes do not travel
/// in control frames (they are streamed as records after a frame that
/// announces them), so this bound is small.
pub const MAX_FRAME_BYTES: u32 = 4 * 1024 * 1024;

/// Size of the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;

/// A frame that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix exceeds the limit for this stream.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// declared length
        len: u32,
        /// limit
        max: u32,
    },
    /// The body is not a valid postcard encoding of the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encode `msg` as a frame (length prefix + postcard). A message whose
/// encoding exceeds [`MAX_FRAME_BYTES`] is refused (`TooLarge`): senders
/// size their answers to fit, and a bug that does not
/// is an error, never a panic.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() as u64 > MAX_FRAME_BYTES as u64 {
        return Err(FrameError::TooLarge { len: u32::try_from(body.len()).unwrap_or(u32::MAX), max: MAX_FRAME_BYTES });
    }
    let mut out = Vec::with_capacity(LEN_PREFIX_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Check a length prefix against `max` and return the body length.
pub fn body_len(prefix: [u8; LEN_PREFIX_BYTES], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len as usize)
}

/// Decode a frame body (without its prefix). Trailing bytes are an error:
/// a frame carries exactly one message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes after message", rest.len())));
    }
    Ok(msg)
}

/// Decode a complete frame (prefix + body) held in memory.
pub fn decode<T: DeserializeOwned>(frame: &[u8], max: u32) -> Result<T, FrameError> {
    if frame.len() < LEN_PREFIX_BYTES {
        return Err(FrameError::Malformed("frame shorter than its length prefix".into()));
    }
    let len = body_len(frame[..4].try_into().expect("4 bytes"), max)?;
    let body = &frame[LEN_PREFIX_BYTES..];
    if body.len() != len {
        return Err(FrameError::Malformed(format!("length prefix says {len} bytes, frame has {}", body.len())));
    }
    decode_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Msg {
        a: u32,
        b: Vec<u8>,
        c: String,
    }

    #[test]
    fn golden() {
        let f = encode(&Msg { a: 1, b: vec![2, 3], c: "x".into() }).unwrap();
        assert_eq!(f, vec![6, 0, 0, 0, 1, 2, 2, 3, 1, b'x']);
    }

    #[test]
    fn an_oversized_message_is_an_error_not_a_panic() {
        let m = Msg { a: 1, b: vec![0; MAX_FRAME_BYTES as usize], c: String::new() };
        assert!(matches!(encode(&m), Err(FrameError::TooLarge { max: MAX_FRAME_BYTES, .. })));
    }

    #[test]
    fn refuses_large_prefix() {
        let mut f = encode(&Msg { a: 1, b: vec![], c: String::new() }).unwrap();
        f[..4].copy_from_slice(&(MAX_FRAME_BYTES + 1).to_le_bytes());
        assert!(matches!(decode::<Msg>(&f, MAX_FRAME_BYTES), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut f = encode(&Msg { a: 1, b: vec![], c: String::new() }).unwrap();
        f.push(0);
        let n = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&n.to_le_bytes());
        assert!(matches!(decode::<Msg>(&f, MAX_FRAME_BYTES), Err(FrameError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn round_trip(a: u32, b in proptest::collection::vec(any::<u8>(), 0..300), c in ".{0,40}") {
            let m = Msg { a, b, c };
            let f = encode(&m).unwrap();
            prop_assert_eq!(decode::<Msg>(&f, MAX_FRAME_BYTES).unwrap(), m);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<Msg>(&data, MAX_FRAME_BYTES);
        }
    }
}
