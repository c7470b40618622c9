//! Round trips through a local store: bytes and attributes.

use crate::common::{self, backup, init_small, omesh, restored, s, tree};
use std::fs;

#[test]
fn full_tree_round_trips_bytes_and_attributes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree::make_full(&src, true);
    let store = t.path().join("store");
    init_small(&store);
    let b = backup(&store, &[&src]);
    assert!(b["files"].as_u64().unwrap() >= 20);
    // the 5 GiB sparse file is read by its data extents only
    assert!(b["bytes_read"].as_u64().unwrap() < 100 << 20, "sparse file read in full: {b}");
    let target = t.path().join("restore");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
    let out = restored(&target, &src);
    tree::assert_same(&src, &out);
    let a = tree::attrs(&out);
    assert!(a["sparse-5GiB"].sparse, "5 GiB sparse file restored dense");
    assert!(a["sparse-small"].sparse);
    assert_eq!(a["hard2"].link_group.as_deref(), Some("a/hard3"));
}

#[test]
fn include_restores_only_the_selected_subtree() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree::make_full(&src, false);
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&src]);
    let target = t.path().join("r");
    let inc = format!("{}/a/b", src.display());
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target), "--include", &inc]).ok();
    let out = restored(&target, &src);
    assert_eq!(fs::read(out.join("a/b/c/d/deep.txt")).unwrap(), b"deep");
    assert!(!out.join("a/secret").exists());
    assert!(!out.join("size-1").exists());

    // an include that names nothing in the snapshot (a typo, a file below a
    // file) is an error before anything is written, not an empty success
    let elsewhere = t.path().join("r2");
    for bad in [format!("{}/a/typo", src.display()), format!("{}/size-1/below", src.display())] {
        let r =
            omesh(["restore", "--store", s(&store), "latest", "--target", s(&elsewhere), "--include", &bad]).code(2);
        assert!(r.stderr.contains(&bad) && r.stderr.contains("no such path"), "{}", r.stderr);
        assert!(!elsewhere.exists(), "a failed restore created its target");
    }
}

#[test]
fn several_roots_and_restore_into_older_version_reuses_data() {
    let t = tempfile::tempdir().unwrap();
    let one = t.path().join("one");
    let two = t.path().join("two");
    fs::create_dir_all(&one).unwrap();
    fs::create_dir_all(&two).unwrap();
    let big = tree::data(3 << 20, 5);
    fs::write(one.join("big"), &big).unwrap();
    fs::write(two.join("small"), b"small").unwrap();
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&one, &two]);
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
    tree::assert_same(&one, &restored(&target, &one));
    tree::assert_same(&two, &restored(&target, &two));

    // change a little of the big file, back up again, restore over the old copy
    let mut big2 = big.clone();
    big2.splice(1_000_000..1_000_000, b"inserted".iter().copied());
    big2[2_500_000] ^= 0xff;
    fs::write(one.join("big"), &big2).unwrap();
    backup(&store, &[&one, &two]);
    let r = omesh(["restore", "--store", s(&store), "latest", "--target", s(&target), "--json"]).ok().json();
    tree::assert_same(&one, &restored(&target, &one));
    let written = r["bytes_written"].as_u64().unwrap();
    let reused = r["bytes_reused"].as_u64().unwrap();
    assert!(written < 300_000, "restore decoded {written} bytes for a small change");
    assert!(reused > 2_900_000, "restore reused only {reused} bytes");
    assert_eq!(r["files_unchanged"].as_u64().unwrap(), 1, "the unchanged small file is kept: {r}");
}

#[test]
fn restore_into_target_with_symlink_in_the_way_replaces_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"payload").unwrap();
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&src]);
    let outside = t.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let target = t.path().join("r");
    let base = restored(&target, &src);
    fs::create_dir_all(&base).unwrap();
    // an attacker (or a stale restore) left d -> outside in the target
    std::os::unix::fs::symlink(&outside, base.join("d")).unwrap();
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "restore wrote through a symlink");
    assert!(fs::symlink_metadata(base.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(base.join("d/f")).unwrap(), b"payload");
    let _ = common::bin();
}

#[test]
fn a_restore_into_its_own_result_keeps_a_hard_link_group_as_it_is() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f0"), vec![7u8; 100_000]).unwrap();
    for i in 1..13 {
        fs::hard_link(src.join("d/f0"), src.join(format!("d/f{i}"))).unwrap();
    }
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&src]);
    let target = t.path().join("r");
    let restore = || omesh(["restore", "--store", s(&store), "latest", "--target", s(&target), "--json"]).ok().json();
    restore();
    let out = restored(&target, &src).join("d");
    let before = fs::metadata(out.join("f0")).unwrap();
    assert_eq!(before.nlink(), 13);
    let r = restore();
    assert_eq!(r["bytes_written"], 0, "the group was written again: {r}");
    for i in 0..13 {
        let m = fs::metadata(out.join(format!("f{i}"))).unwrap();
        assert_eq!((m.ino(), m.nlink()), (before.ino(), 13), "f{i}");
        assert_eq!((m.ctime(), m.ctime_nsec()), (before.ctime(), before.ctime_nsec()), "f{i} was relinked or changed");
    }
    // an inode shared with a name outside the group is not reused
    fs::hard_link(out.join("f0"), t.path().join("outside")).unwrap();
    let r = restore();
    assert!(r["bytes_written"].as_u64().unwrap() >= 100_000, "{r}");
    assert_eq!(fs::metadata(t.path().join("outside")).unwrap().nlink(), 1, "the outside name still shares the inode");
    assert_eq!(fs::metadata(out.join("f5")).unwrap().nlink(), 13);
}

#[test]
fn restore_progress_on_a_terminal_shows_percent_eta_and_the_whole_total_from_the_start() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..120u8 {
        fs::write(src.join(format!("file-{i:03}")), tree::data(1 << 20, i as u64)).unwrap();
    }
    let store = t.path().join("store");
    init_small(&store);
    // the backup names the file it is reading
    let drawn = common::on_a_terminal(&format!("{} backup --store {} {}", common::bin().display(), s(&store), s(&src)));
    assert!(drawn.contains("file-"), "no current file drawn: {drawn:?}");
    let target = t.path().join("r");
    let drawn = common::on_a_terminal(&format!(
        "{} restore --store {} latest --target {}",
        common::bin().display(),
        s(&store),
        s(&target)
    ));
    // every frame: "P% DONE of TOTAL, RATE/s, ETA M:SS, N files"
    let frames: Vec<&str> = drawn.split("% ").skip(1).collect();
    assert!(!frames.is_empty() && drawn.contains("ETA "), "no progress drawn: {drawn:?}");
    let totals: std::collections::BTreeSet<&str> =
        frames.iter().filter_map(|f| f.split(" of ").nth(1)?.split(',').next()).collect();
    assert_eq!(totals.len(), 1, "the total changed while restoring: {totals:?}");
    assert_eq!(*totals.iter().next().unwrap(), "120.0 MiB", "{drawn:?}");
}
