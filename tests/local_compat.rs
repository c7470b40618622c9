//! Format compatibility: a store written by format version 1 (committed
//! under tests/fixtures/store-v1, key included) must stay readable by every
//! later omesh. If this test fails, a change broke the on-disk format.

use crate::common::{omesh, s};
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// A copy of the format-1 fixture store in `dir` (key mode 0600).
fn fixture_copy(dir: &std::path::Path) -> std::path::PathBuf {
    let store = dir.join("store");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/store-v1");
    assert!(std::process::Command::new("cp").args(["-a", fixture, s(&store)]).status().unwrap().success());
    fs::set_permissions(store.join("key"), fs::Permissions::from_mode(0o600)).unwrap();
    store
}

#[test]
fn reads_a_format_v1_store() {
    let t = tempfile::tempdir().unwrap();
    let store = fixture_copy(t.path());
    let snaps = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list();
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

/// A format-1 store moves to format 2 on its first writing open: the next
/// backup writes format-2 records (reusing the format-1 chunks), the old
/// snapshot stays readable, and both verify, with the key and without.
#[test]
fn a_format_v1_store_upgrades_on_its_next_backup() {
    let t = tempfile::tempdir().unwrap();
    let store = fixture_copy(t.path());
    // the same content as the fixture's, and one new file
    let data = t.path().join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    let chunks: Vec<u8> = (0..300000u32).map(|i| ((i * 7 + 3) % 251) as u8).collect();
    fs::write(data.join("sub/chunks.bin"), &chunks).unwrap();
    fs::write(data.join("new.txt"), b"written after the upgrade\n").unwrap();
    let r = omesh(["backup", "--store", s(&store), s(&data), "--json"]).ok().json();
    let new = r["snapshot"].as_str().unwrap().to_string();
    assert!(fs::read_to_string(store.join("omesh-store.toml")).unwrap().contains("version = 2"));
    let magic = |id: &str| fs::read(store.join("snapshots").join(id)).unwrap()[..4].to_vec();
    assert_eq!(magic(&new), b"ORc2");
    let old: Vec<String> = fs::read_dir(store.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| *n != new)
        .collect();
    assert_eq!(old.len(), 1);
    assert_eq!(magic(&old[0]), b"ORc1");
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();
    // without the key: every format-2 record is checked against its
    // parent's link, down from the new snapshot record
    {
        use omesh_core::store::{Access, KeySource, Store};
        let keyless = Store::open(&store, Access::Read, KeySource::None).unwrap();
        let v = omesh_core::verify::run(&keyless, false, |_| {}).unwrap();
        assert_eq!(v.snapshots, 2, "{v:?}");
        assert!(v.damaged_snapshots.is_empty() && v.damaged_objects.is_empty(), "{v:?}");
    }
    for (id, file) in [(new.as_str(), "sub/chunks.bin"), (old[0].as_str(), "sub/chunks.bin")] {
        let target = t.path().join(format!("r-{id}"));
        omesh(["restore", "--store", s(&store), id, "--target", s(&target)]).ok();
        let base = if id == new { target.join(data.strip_prefix("/").unwrap()) } else { target.join("tmp/fx/data") };
        assert_eq!(fs::read(base.join(file)).unwrap(), chunks);
    }
}
