//! `omesh key rotate`: data written after a rotation is sealed under a new
//! epoch that a copy of the key from before cannot open, every snapshot
//! from before and after restores with the current key, on a copy of the
//! store and on a brand-new node restoring from the holders.

use crate::common::tree;
use crate::common::{init_small, omesh, restored, s};
use std::fs;
use std::path::Path;

fn snapshot_of(r: &serde_json::Value) -> String {
    r["snapshot"].as_str().unwrap().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp").args(["-a", s(from), s(to)]).status().unwrap();
    assert!(st.success());
}

/// Copy a store directory (without its key) to `to`.
fn copy_store(from: &Path, to: &Path) {
    copy_dir(from, to);
    let _ = fs::remove_file(to.join("key"));
}

#[test]
fn after_a_rotation_old_and_new_snapshots_restore_and_an_old_copy_of_the_key_reads_only_the_old() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("before"), tree::data(300_000, 61)).unwrap();
    let a = snapshot_of(&omesh(["backup", "--store", s(&store), s(&src), "--json"]).ok().json());
    let frozen_a = t.path().join("tree-a");
    copy_dir(&src, &frozen_a);
    let old_key = t.path().join("old.key");
    omesh(["key", "export", "--store", s(&store), "--out", s(&old_key)]).ok();

    let r = omesh(["key", "rotate", "--store", s(&store), "--json"]).ok();
    let v = r.json();
    assert_eq!((v["epoch"].as_u64(), v["epochs"].as_u64()), (Some(1), Some(2)), "{v}");
    assert!(r.stderr.contains("export the key again"), "{}", r.stderr);
    let old_id = fs::read_to_string(&old_key).unwrap();
    assert!(old_id.contains(v["key_id"].as_str().unwrap()), "the key id does not change");

    fs::write(src.join("after"), tree::data(300_000, 62)).unwrap();
    let b = omesh(["backup", "--store", s(&store), s(&src), "--json"]).ok().json();
    assert!(b["bytes_added"].as_u64().unwrap() > 300_000, "{b}");
    let b = snapshot_of(&b);
    // every object, of both epochs, verifies with the current key
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();
    let new_key = t.path().join("new.key");
    let pass = t.path().join("pass");
    fs::write(&pass, "a long enough passphrase\n").unwrap();
    omesh(["key", "export", "--store", s(&store), "--out", s(&new_key), "--passphrase-file", s(&pass)]).ok();

    // a copy of the store with the current key: both snapshots restore
    let copy = t.path().join("copy");
    copy_store(&store, &copy);
    omesh(["key", "import", s(&new_key), "--store", s(&copy), "--passphrase-file", s(&pass)]).ok();
    for (id, want) in [(&a, &frozen_a), (&b, &src)] {
        let target = t.path().join(format!("r-{}", &id[..8]));
        omesh(["restore", "--store", s(&copy), id, "--target", s(&target)]).ok();
        tree::assert_same_content(want, &restored(&target, &src));
    }

    // a copy with the key from before the rotation: the old snapshot
    // restores, the new one cannot be read, and `latest` is not guessed
    let stale = t.path().join("stale");
    copy_store(&store, &stale);
    omesh(["key", "import", s(&old_key), "--store", s(&stale)]).ok();
    let target = t.path().join("r-stale-a");
    omesh(["restore", "--store", s(&stale), &a, "--target", s(&target)]).ok();
    tree::assert_same_content(&frozen_a, &restored(&target, &src));
    let r = omesh(["restore", "--store", s(&stale), &b, "--target", s(&t.path().join("r-stale-b"))]);
    assert_ne!(r.code, 0, "data sealed after the rotation opened with the old key");
    let r = omesh(["restore", "--store", s(&stale), "latest", "--target", s(&t.path().join("r-stale-l"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot be decided") && r.stderr.contains("rotation"), "{}", r.stderr);
    // importing the newer export over the stale key upgrades it
    let r = omesh(["key", "import", s(&new_key), "--store", s(&stale), "--passphrase-file", s(&pass)]).ok();
    assert!(r.stderr.contains("from 1 to 2 epochs"), "{}", r.stderr);
    omesh(["restore", "--store", s(&stale), "latest", "--target", s(&t.path().join("r-stale-b2"))]).ok();
}

#[test]
fn a_node_rotates_with_its_daemon_stopped_and_a_new_node_restores_from_before_and_after() {
    let t = tempfile::tempdir().unwrap();
    let (site, a, _b, _c) = crate::common::mesh::source_two_holders_and_a_new_node(t.path());
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("before"), tree::data(400_000, 63)).unwrap();
    let first = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(first["protected"], true, "{first}");
    let frozen = t.path().join("tree-first");
    copy_dir(&src, &frozen);

    let old_key = t.path().join("srv-a.old.key");
    site.omesh("srv-a", &["key", "export", "--out", s(&old_key)]).ok();

    // the running daemon holds the key: rotation is refused, nothing changes
    let key_path = site.node("srv-a").data().join("keys/srv-a.key");
    let before = fs::read(&key_path).unwrap();
    let r = site.omesh("srv-a", &["key", "rotate"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("stop it"), "{}", r.stderr);
    assert_eq!(fs::read(&key_path).unwrap(), before);
    drop(a);
    site.omesh("srv-a", &["key", "rotate"]).ok();
    let _a = site.start("srv-a");
    fs::write(src.join("after"), tree::data(400_000, 64)).unwrap();
    let second = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(second["protected"], true, "{second}");

    // a brand-new node with the export from before the rotation: it does
    // not guess which snapshot is the latest
    site.omesh("srv-e", &["key", "import", s(&old_key)]).ok();
    let r = site.omesh("srv-e", &["restore", "latest", "--source", "srv-a", "--target", s(&t.path().join("r-l"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot be decided") && r.stderr.contains("rotation"), "{}", r.stderr);
    // with the export made after it (an upgrade of the same key), it
    // restores both from the holders
    let key = t.path().join("srv-a.key");
    site.omesh("srv-a", &["key", "export", "--out", s(&key)]).ok();
    let r = site.omesh("srv-e", &["key", "import", s(&key)]).ok();
    assert!(r.stderr.contains("from 1 to 2 epochs"), "{}", r.stderr);
    for (snap, want) in [(&first, &frozen), (&second, &src)] {
        let id = snap["snapshot"].as_str().unwrap();
        let target = t.path().join(format!("r-{}", &id[..8]));
        site.omesh("srv-e", &["restore", id, "--source", "srv-a", "--target", s(&target)]).ok();
        tree::assert_same_content(want, &restored(&target, &src));
    }
}
