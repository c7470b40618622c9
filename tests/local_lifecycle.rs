//! Retention, garbage collection and scrub on a stand-alone store: real
//! backups, real packs, a garbage collection killed with SIGKILL in the
//! middle of its mark and resumed.

use crate::common::{backup, init_small, omesh, packs, restored, s, store_bytes, tree};
use std::fs;

fn write_files(dir: &std::path::Path, n: usize, size: usize, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        fs::write(dir.join(format!("f{i:03}.bin")), tree::data(size, seed + i as u64)).unwrap();
    }
}

#[test]
fn forget_then_gc_reclaims_space_and_keeps_what_is_kept() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let src = t.path().join("src");
    // three generations: each replaces most of the data
    let mut snaps = Vec::new();
    for generation in 0..3u64 {
        let _ = fs::remove_dir_all(&src);
        write_files(&src.join("data"), 20, 60_000, generation * 1000);
        fs::write(src.join("keep.txt"), b"the same in every generation").unwrap();
        snaps.push(backup(&store, &[&src])["snapshot"].as_str().unwrap().to_string());
    }
    let before = store_bytes(&store);

    // the dry run shows what would go and why, and removes nothing
    let dry = omesh(["forget", "--store", s(&store), "--keep-last", "1", "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["forgotten"], 2, "{dry}");
    let items = dry["items"].as_array().unwrap();
    let newest = items.iter().find(|i| i["id"] == snaps[2].as_str()).unwrap();
    assert_eq!(newest["keep"], true);
    assert!(newest["reasons"][0].as_str().unwrap().contains("last 1"), "{newest}");
    let old = items.iter().find(|i| i["id"] == snaps[0].as_str()).unwrap();
    assert_eq!(old["keep"], false);
    assert_eq!(old["reasons"][0], "no rule keeps it");
    let list = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list();
    assert_eq!(list.as_array().unwrap().len(), 3, "a dry run removed something");

    // a lock keeps young snapshots whatever the rules say
    let locked = omesh(["forget", "--store", s(&store), "--keep-last", "1", "--lock", "1d", "--json"]).ok().json();
    assert_eq!(locked["forgotten"], 0, "{locked}");

    omesh(["forget", "--store", s(&store), "--keep-last", "1", "--json"]).ok();
    let list = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(store_bytes(&store), before, "forget alone removes no data");

    let r = omesh(["gc", "--store", s(&store), "--json"]).ok().json();
    let g = &r["stores"][0];
    assert!(g["swept"].as_u64().unwrap() > 0, "{r}");
    let after = store_bytes(&store);
    assert!(after < before * 2 / 3, "gc freed too little: {before} -> {after}");
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));
}

#[test]
fn a_gc_killed_during_its_mark_resumes_and_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let src = t.path().join("src");
    for generation in 0..4u64 {
        write_files(&src.join(format!("g{generation}")), 10, 40_000, generation * 100);
        backup(&store, &[&src]);
    }
    omesh(["forget", "--store", s(&store), "--keep-last", "2"]).ok();
    // killed while committing the marks of the second snapshot
    let killed: crate::common::Run = crate::common::cmd()
        .args(["gc", "--store", s(&store)])
        .env("OMESH_FAILPOINT", "gc.mark_batch:2")
        .output()
        .unwrap()
        .into();
    assert_ne!(killed.code, 0, "the failpoint did not fire: {killed:?}");
    assert!(killed.stderr.contains("failpoint gc.mark_batch:2"), "{killed:?}");
    let r = omesh(["gc", "--store", s(&store), "--json"]).ok().json();
    assert_eq!(r["stores"][0]["resumed"], true, "{r}");
    assert!(r["stores"][0]["swept"].as_u64().unwrap() > 0, "{r}");
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));
}

#[test]
fn scrub_finds_a_flipped_byte_and_gc_refuses_to_run_on_damage() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let src = t.path().join("src");
    write_files(&src, 10, 50_000, 7);
    backup(&store, &[&src]);
    let p = packs(&store).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
    let mut b = fs::read(&p).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x01;
    fs::write(&p, &b).unwrap();
    let r = omesh(["scrub", "--store", s(&store), "--json"]).code(4).json();
    let damaged = r["stores"][0]["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{r}");
    assert!(fs::metadata(damaged[0]["quarantined"].as_str().unwrap()).is_ok(), "bad bytes kept for inspection");
    // a stand-alone store has no replica: the object is now missing, and a
    // garbage collection must not guess what lies below it
    let g = omesh(["gc", "--store", s(&store)]).code(4);
    assert!(g.stderr.contains("stopped without removing anything"), "{g:?}");
    let v = omesh(["verify", "--store", s(&store), "--json"]).code(4).json();
    assert!(!v["damaged_snapshots"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn retention_counts_within_each_backup_set_and_dry_run_shows_the_groups() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let store = t.path().join("store");
    init_small(&store);
    fs::write(a.join("f"), b"one").unwrap();
    backup(&store, &[&a]);
    fs::write(a.join("f"), b"two").unwrap();
    backup(&store, &[&a]);
    // an ad-hoc backup of something else, the newest of all: it must not
    // take the `keep_last` slot of the set above
    fs::write(b.join("g"), b"11 bytes...").unwrap();
    backup(&store, &[&b]);
    let dry = omesh(["forget", "--store", s(&store), "--keep-last", "1", "--dry-run", "--json"]).ok().json();
    assert_eq!((dry["forgotten"].as_u64(), dry["kept"].as_u64()), (Some(1), Some(2)), "{dry}");
    let items = dry["items"].as_array().unwrap();
    let groups: std::collections::HashSet<&str> = items.iter().map(|i| i["group"].as_str().unwrap()).collect();
    assert_eq!(groups.len(), 2, "{dry}");
    let forgotten = items.iter().find(|i| i["keep"] == false).unwrap();
    assert_eq!(forgotten["paths"][0], s(&a), "{dry}");
    let human = omesh(["forget", "--store", s(&store), "--keep-last", "1", "--dry-run"]).ok();
    assert!(human.stdout.contains(&format!("(paths {})", s(&b))), "{}", human.stdout);
    // all together: only the newest survives
    let all = omesh(["forget", "--store", s(&store), "--keep-last", "1", "--group-by", "none", "--dry-run", "--json"])
        .ok()
        .json();
    assert_eq!(all["forgotten"], 2, "{all}");
    let bad = omesh(["forget", "--store", s(&store), "--keep-last", "1", "--group-by", "host"]).code(2);
    assert!(bad.stderr.contains("paths,tags"), "{}", bad.stderr);
    // and for real: the two newest of their sets stay
    omesh(["forget", "--store", s(&store), "--keep-last", "1", "--json"]).ok();
    assert_eq!(omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list().as_array().unwrap().len(), 2);
}

#[test]
fn after_forget_and_gc_a_store_is_within_two_percent_of_a_clean_store_of_what_it_keeps() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let src = t.path().join("src");
    // a working set where each generation rewrites a few files, drops one
    // and adds one: most packs keep most of their data, some lose a little
    write_files(&src, 60, 40_000, 0);
    backup(&store, &[&src]);
    for generation in 1..6u64 {
        for i in (generation as usize..60).step_by(7) {
            fs::write(src.join(format!("f{i:03}.bin")), tree::data(40_000, 10_000 * generation + i as u64)).unwrap();
        }
        let _ = fs::remove_file(src.join(format!("f{:03}.bin", generation * 3)));
        fs::write(src.join(format!("new{generation}.bin")), tree::data(40_000, 99_000 + generation)).unwrap();
        backup(&store, &[&src]);
    }
    omesh(["forget", "--store", s(&store), "--keep-last", "1"]).ok();
    omesh(["gc", "--store", s(&store)]).ok();
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();

    let clean = t.path().join("clean");
    init_small(&clean);
    backup(&clean, &[&src]);
    let (kept, fresh) = (store_bytes(&store), store_bytes(&clean));
    assert!(
        kept as f64 <= fresh as f64 * 1.02,
        "after forget and gc the store holds {kept} bytes of packs, a clean store of the same tree {fresh} ({:.1}% more)",
        (kept as f64 / fresh as f64 - 1.0) * 100.0
    );
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));
}
