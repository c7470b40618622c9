//! Fuzz the frame decoder with the mesh's request type: it must never panic
//! and never allocate beyond the frame limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = omesh_proto::frame::decode::<omesh_proto::msg::Request>(data, omesh_proto::MAX_FRAME_BYTES);
    let _ = omesh_proto::frame::decode::<omesh_proto::msg::Response>(data, omesh_proto::MAX_FRAME_BYTES);
});
