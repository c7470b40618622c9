//! Fuzz the snapshot formats (a tree, a chunk list, a snapshot record, as
//! decrypted from a record): decoding must never panic or over-allocate.
//! The first byte says how many links the record carries.
#![no_main]
use libfuzzer_sys::fuzz_target;
use omesh_core::snapshot::{ExtentList, SnapshotRecord, Tree};
use omesh_proto::ObjectId;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = (n as usize % 8).min(rest.len() / 32);
    let links: Vec<ObjectId> =
        rest[..n * 32].chunks(32).map(|c| ObjectId(c.try_into().expect("32 bytes"))).collect();
    let body = &rest[n * 32..];
    if let Ok(t) = Tree::decode(body, &links) {
        let _ = t.validate();
    }
    let _ = ExtentList::decode(body, &links);
    let _ = SnapshotRecord::decode(body);
});
