//! Fuzz opening a record (what a restore, scrub or holding check does with
//! bytes from a peer, a bucket or a disk): decode, then authenticated
//! decryption with a fixed key. It must never panic, and nothing forged
//! opens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use omesh_core::crypto::{Keys, Secret};

fuzz_target!(|data: &[u8]| {
    let keys = Keys::derive(&Secret::from_bytes([7; 32]));
    if let Ok((rec, _)) = omesh_proto::Record::decode(data) {
        // random bytes never carry a valid tag under this key
        assert!(keys.open(rec.kind, &rec.id, &omesh_core::crypto::Links::of(&rec), &rec.body).is_err());
        assert!(omesh_core::store::open_record(&keys, data, &rec.id, rec.kind).is_err());
    }
});
