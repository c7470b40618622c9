//! Hostile snapshots (crafted by someone holding the key) and bad keys.

use crate::common::{init_small, omesh, s};
use omesh_core::snapshot::{Content, Extent, Node, NodeKind, SnapshotKind, SnapshotRecord, Tree};
use omesh_core::store::{Access, KeySource, Sealed, Store};
use omesh_proto::{ObjectId, ObjectKind};
use std::fs;
use std::path::Path;

fn node(name: &[u8], kind: NodeKind) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime_ns: 0,
        atime_ns: 0,
        ctime_ns: 0,
        inode: 1,
        dev: 1,
        nlink: 1,
        xattrs: vec![],
        warning: None,
        unreadable: false,
    }
}

/// Store a blob, return its id.
fn put_blob(store_dir: &Path, data: &[u8]) -> ObjectId {
    let store = Store::open(store_dir, Access::Write, KeySource::Default).unwrap();
    let mut sink = store.sink().unwrap();
    let Sealed { id, seal: id_seal, bytes: rec } = store.seal(ObjectKind::Blob, data, vec![]).unwrap();
    if store.claim(&id, id_seal).unwrap() {
        sink.add(id, ObjectKind::Blob, id_seal, &rec).unwrap();
    }
    sink.finish().unwrap();
    id
}

/// Store a tree with exactly `entries`, unvalidated (what a malicious key
/// holder could produce). File extents with the zero id point at `blob`.
fn put_tree(store_dir: &Path, entries: Vec<Node>, blob: ObjectId) -> ObjectId {
    let entries: Vec<Node> = entries
        .into_iter()
        .map(|mut n| {
            if let NodeKind::File { content: Content::Inline(e), .. } = &mut n.kind {
                for x in e.iter_mut() {
                    if let Extent::Data { id, .. } = x
                        && *id == ObjectId::ZERO
                    {
                        *id = blob;
                    }
                }
            }
            n
        })
        .collect();
    let store = Store::open(store_dir, Access::Write, KeySource::Default).unwrap();
    let mut sink = store.sink().unwrap();
    let t = Tree { entries, more: vec![] };
    // encoded without validation
    let (links, plain) = t.encode();
    let Sealed { id, seal: id_seal, bytes: rec } = store.seal(ObjectKind::Tree, &plain, links).unwrap();
    if store.claim(&id, id_seal).unwrap() {
        sink.add(id, ObjectKind::Tree, id_seal, &rec).unwrap();
    }
    sink.finish().unwrap();
    id
}

/// Write a snapshot whose root tree has exactly `entries`.
fn craft(store_dir: &Path, entries: Vec<Node>, blob: &[u8]) -> (ObjectId, ObjectId) {
    let bid = put_blob(store_dir, blob);
    let tid = put_tree(store_dir, entries, bid);
    let store = Store::open(store_dir, Access::Write, KeySource::Default).unwrap();
    let rec = SnapshotRecord {
        source: "evil".into(),
        hostname: "evil".into(),
        paths: vec!["/".into()],
        kind: SnapshotKind::Files,
        tree: tid,
        parent: None,
        start_ns: 1,
        end_ns: 2,
        files: 1,
        dirs: 0,
        others: 0,
        bytes: 4,
        bytes_read: 4,
        bytes_added: 4,
        warnings: 0,
        tags: vec![],
        program: "test".into(),
    };
    (store.write_snapshot(&rec).unwrap(), bid)
}

fn file(name: &[u8], size: u64, len: u32) -> Node {
    node(name, NodeKind::File { size, content: Content::Inline(vec![Extent::Data { id: ObjectId::ZERO, len }]) })
}

fn nothing_outside(outside: &Path) {
    assert_eq!(fs::read_dir(outside).unwrap().count(), 0, "something was written outside the target");
}

#[test]
fn traversal_names_are_refused_and_nothing_escapes() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let target = t.path().join("target");
    for bad in [&b"../outside/escape"[..], b"..", b".", b"/abs/path", b"a\0b", b"", b"sub/../../x"] {
        let (snap, _) = craft(&store, vec![file(bad, 4, 4)], b"evil");
        let r = omesh(["restore", "--store", s(&store), &snap.to_hex(), "--target", s(&target)]);
        assert_eq!(r.code, 4, "name {bad:?} was not refused: {r:?}");
        assert!(r.stderr.contains("invalid file name"), "{}", r.stderr);
        nothing_outside(&outside);
        assert_eq!(
            fs::read_dir(&target).map(|d| d.count()).unwrap_or(0),
            0,
            "restore wrote into the target for {bad:?}"
        );
    }
}

#[test]
fn symlink_then_directory_tricks_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let target = t.path().join("target");
    // the same name twice: first a symlink to outside, then a directory
    let blob = put_blob(&store, b"evil");
    let sub = put_tree(&store, vec![file(b"pwned", 4, 4)], blob);
    let entries = vec![
        node(b"x", NodeKind::Symlink { target: outside.as_os_str().as_encoded_bytes().to_vec() }),
        node(b"x", NodeKind::Dir { tree: sub }),
    ];
    let (snap, _) = craft(&store, entries, b"evil");
    let r = omesh(["restore", "--store", s(&store), &snap.to_hex(), "--target", s(&target)]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("duplicate"), "{}", r.stderr);
    nothing_outside(&outside);

    // a symlink restored by one snapshot is not followed by the next one
    let (snap1, _) = craft(
        &store,
        vec![node(b"y", NodeKind::Symlink { target: outside.as_os_str().as_encoded_bytes().to_vec() })],
        b"evil",
    );
    omesh(["restore", "--store", s(&store), &snap1.to_hex(), "--target", s(&target)]).ok();
    assert!(fs::symlink_metadata(target.join("y")).unwrap().file_type().is_symlink());
    let (snap2, _) = craft(&store, vec![node(b"y", NodeKind::Dir { tree: sub })], b"evil");
    omesh(["restore", "--store", s(&store), &snap2.to_hex(), "--target", s(&target)]).ok();
    nothing_outside(&outside);
    assert_eq!(fs::read(target.join("y/pwned")).unwrap(), b"evil");
}

#[test]
fn oversized_and_inconsistent_lengths_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let target = t.path().join("target");
    // size far beyond any file, extents that do not add up
    for n in [file(b"huge", u64::MAX, 4), file(b"mismatch", 1000, 4)] {
        let (snap, _) = craft(&store, vec![n], b"evil");
        let r = omesh(["restore", "--store", s(&store), &snap.to_hex(), "--target", s(&target)]);
        assert_eq!(r.code, 4, "{r:?}");
    }
    // an extent longer than its blob: caught at write time, file not created
    let (snap, _) = craft(&store, vec![file(b"short-blob", 100, 100)], b"evil");
    let r = omesh(["restore", "--store", s(&store), &snap.to_hex(), "--target", s(&target)]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("short-blob"), "{}", r.stderr);
    assert!(!target.join("short-blob").exists());

    // a pack record declaring a gigantic body: the index rebuild refuses it
    // without allocating, and reports the damage
    let mut rec = omesh_proto::Record::new(ObjectKind::Blob, ObjectId([3; 32]), vec![], vec![], vec![1, 2, 3]).encode();
    rec[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut pack = omesh_core::store::pack::PACK_MAGIC.to_vec();
    pack.extend_from_slice(&rec);
    let h = blake3::hash(&pack);
    let p = omesh_core::store::pack::pack_path(&store, h.as_bytes());
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, &pack).unwrap();
    let r = omesh(["repair", "index", "--store", s(&store), "--json"]).code(4).json();
    assert_eq!(r["damaged_records"], 1);
}

#[test]
fn wrong_key_gives_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    init_small(&a);
    init_small(&b);
    let r = omesh(["snapshots", "--store", s(&a), "--key-file", s(&b.join("key"))]).code(2);
    assert!(r.stderr.contains("does not belong to store"), "{}", r.stderr);
    // an open key file is refused like ssh refuses an open private key
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(a.join("key"), fs::Permissions::from_mode(0o644)).unwrap();
    let r = omesh(["snapshots", "--store", s(&a)]).code(2);
    assert!(r.stderr.contains("chmod 600"), "{}", r.stderr);
}

/// Wait (bounded) until a failpoint's `PATH.reached` marker exists.
fn wait_reached(marker: &Path) {
    let t = std::time::Instant::now();
    while !marker.exists() {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "failpoint never reached: {}", marker.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_fifo_swapped_for_a_symlink_during_restore_changes_nothing_outside() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, src.join("pipe"), rustix::fs::FileType::Fifo, 0o666.into(), 0).unwrap();
    rustix::fs::chmod(src.join("pipe"), 0o666.into()).unwrap();
    let r = omesh(["backup", "--store", s(&store), s(&src), "--json"]).ok().json();
    let snap = r["snapshot"].as_str().unwrap().to_string();
    // a file outside the target that must keep its mode
    let secret = t.path().join("secret");
    fs::write(&secret, b"s").unwrap();
    rustix::fs::chmod(&secret, 0o600.into()).unwrap();
    let target = t.path().join("target");
    let release = t.path().join("go");
    let child = crate::common::cmd()
        .args(["restore", "--store", s(&store), &snap, "--target", s(&target)])
        .env("OMESH_FAILPOINT", format!("restore.special_created:1:wait={}", release.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_reached(&t.path().join("go.reached"));
    // the attacker, who owns the directory, swaps the new fifo for a
    // symlink to the secret file
    let dir = crate::common::restored(&target, &src);
    let tmp = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(".omesh-restore-"))
        .expect("the fifo under its temporary name");
    fs::remove_file(&tmp).unwrap();
    std::os::unix::fs::symlink(&secret, &tmp).unwrap();
    fs::write(&release, b"").unwrap();
    let out: crate::common::Run = child.wait_with_output().unwrap().into();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&secret).unwrap().permissions().mode() & 0o7777, 0o600, "the outside file's mode changed");
    assert_eq!(out.code, 4, "the swapped node must be reported as not restored: {out:?}");
    assert!(out.stderr.contains("replaced"), "{}", out.stderr);
    assert!(!tmp.exists(), "the swapped-in temporary entry is left behind");
}

#[test]
fn a_file_replaced_between_listing_and_reading_is_not_stored_under_its_name() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"original content").unwrap();
    let release = t.path().join("go");
    let child = crate::common::cmd()
        .args(["backup", "--store", s(&store), s(&src), "--json"])
        .env("OMESH_FAILPOINT", format!("backup.before_open:1:wait={}", release.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_reached(&t.path().join("go.reached"));
    // listed, not opened yet: another file takes the name
    fs::write(src.join("other"), b"someone else's data").unwrap();
    fs::rename(src.join("other"), src.join("a")).unwrap();
    fs::write(&release, b"").unwrap();
    let out: crate::common::Run = child.wait_with_output().unwrap().into();
    let r = out.json();
    let warned = r["warnings"].as_array().unwrap().iter().any(|w| w["message"].as_str().unwrap().contains("replaced"));
    assert!(warned, "{r}");
    let snap = r["snapshot"].as_str().unwrap().to_string();
    let target = t.path().join("target");
    omesh(["restore", "--store", s(&store), &snap, "--target", s(&target)]);
    let restored = crate::common::restored(&target, &src).join("a");
    let got = fs::read(&restored).unwrap_or_default();
    assert!(got.is_empty(), "the replacing file's content was stored under the listed name: {got:?}");
}
