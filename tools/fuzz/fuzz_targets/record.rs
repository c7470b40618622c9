//! Fuzz the object record decoder (both formats) and the snapshot
//! attestation it may carry: they must never panic or over-allocate,
//! whatever is accepted must re-encode to the same bytes, and the seal
//! returned is the BLAKE3 of the bytes before the check.
#![no_main]
use libfuzzer_sys::fuzz_target;
use omesh_proto::record::{Attestation, Seal, sealed_links_of};
use omesh_proto::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok((rec, used, seal)) = Record::decode_sealed(data) {
        assert_eq!(rec.encode(), &data[..used]);
        assert_eq!(seal, Seal::of_record(&data[..used]));
        if let Ok(a) = Attestation::decode(&rec.attestation) {
            assert_eq!(Attestation::decode(&a.encode()).unwrap(), a);
            let _ = rec.attestation_message(&a);
        }
    }
    let _ = omesh_proto::record::links_of(data);
    let _ = sealed_links_of(data);
    let _ = Attestation::decode(data);
});
