//! Fuzz the mesh message set as a peer sends it: decoding and the
//! protocol-limit checks that follow it must never panic, and whatever
//! decodes re-encodes to a frame that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use omesh_proto::frame;
use omesh_proto::msg::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = frame::decode::<Request>(data, omesh_proto::MAX_FRAME_BYTES) {
        let _ = r.validate();
        let again = frame::encode(&r).expect("a decoded frame fits a frame");
        assert_eq!(frame::decode::<Request>(&again, omesh_proto::MAX_FRAME_BYTES).unwrap(), r);
    }
    if let Ok(r) = frame::decode::<Response>(data, omesh_proto::MAX_FRAME_BYTES) {
        let _ = r.validate();
        let again = frame::encode(&r).expect("a decoded frame fits a frame");
        assert_eq!(frame::decode::<Response>(&again, omesh_proto::MAX_FRAME_BYTES).unwrap(), r);
    }
});
