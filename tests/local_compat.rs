//! Format compatibility: a store written by format version 1 (committed
//! under tests/fixtures/store-v1, key included) must stay readable by every
//! later omesh. If this test fails, a change broke the on-disk format.

use crate::common::{omesh, s};
use std::fs;
use std::os::unix::fs::PermissionsExt;

#[test]
fn reads_a_format_v1_store() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/store-v1");
    assert!(std::process::Command::new("cp").args(["-a", fixture, s(&store)]).status().unwrap().success());
    fs::set_permissions(store.join("key"), fs::Permissions::from_mode(0o600)).unwrap();
    let snaps = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["source"], "fixture-v1");
    assert_eq!(snaps[0]["paths"][0], "/tmp/fx/data");
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
    let base = target.join("tmp/fx/data");
    assert_eq!(fs::read(base.join("hello.txt")).unwrap(), b"hello from format version 1\n");
    let expect: Vec<u8> = (0..300000u32).map(|i| ((i * 7 + 3) % 251) as u8).collect();
    assert_eq!(fs::read(base.join("sub/chunks.bin")).unwrap(), expect);
    assert_eq!(fs::read_link(base.join("link")).unwrap().to_str().unwrap(), "hello.txt");
}
