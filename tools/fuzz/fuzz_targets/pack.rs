//! Fuzz the pack scanner that rebuilds an index from a pack file (a disk
//! that may hold anything): it must never panic, and every record it
//! accepts must lie inside the data and decode on its own.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = omesh_core::store::pack::scan_slice(data, None, |e, rec| {
        assert_eq!(rec.len(), e.len as usize);
        assert!(omesh_proto::Record::decode(rec).is_ok());
        assert_eq!(e.seal, omesh_proto::Seal::of_record(rec));
    });
    for e in &r.entries {
        assert!(e.offset + e.len as u64 <= data.len() as u64);
    }
});
