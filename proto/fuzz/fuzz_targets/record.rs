//! Fuzz the object record decoder: it must never panic or over-allocate,
//! and whatever it accepts must re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use omesh_proto::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok((rec, used)) = Record::decode(data) {
        assert_eq!(rec.encode(), &data[..used]);
    }
    let _ = omesh_proto::record::links_of(data);
});
