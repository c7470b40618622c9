//! `omesh diff`, `find` and `dump` on trees with known edits, in local mode
//! and in mesh mode (a brand-new node reading from the holders, one of them
//! killed), and the snapshot filters they share.

use crate::common::{backup, init_small, omesh, packs, restored, s, tree};
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

/// `dump` output of `path` in `snap` (raw bytes; the command must succeed).
fn dump(args: &[&str]) -> Vec<u8> {
    let o = crate::common::cmd().args(args).stdin(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "omesh {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// Extract a tar stream with GNU tar as an administrator would.
fn untar(bytes: &[u8], into: &Path) {
    fs::create_dir_all(into).unwrap();
    let mut c = Command::new("tar")
        .args(["-x", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-p", "-C"])
        .arg(into)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    assert!(c.wait().unwrap().success(), "tar -x failed");
}

/// The (change, path below src, reasons) of a diff's JSON.
fn changes(v: &serde_json::Value, src: &Path) -> Vec<(String, String, Vec<String>)> {
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let p = c["path"].as_str().unwrap().strip_prefix(s(src)).unwrap().to_string();
            let r = c["reasons"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
            (c["change"].as_str().unwrap().to_string(), p, r)
        })
        .collect()
}

fn strs(v: &[(&str, &str, &[&str])]) -> Vec<(String, String, Vec<String>)> {
    v.iter().map(|(c, p, r)| (c.to_string(), p.to_string(), r.iter().map(|x| x.to_string()).collect())).collect()
}

/// Known edits to a `tree::make_full` tree: content (mtime kept), mode,
/// owner, xattrs, mtime only, a symlink's target, a removal, an addition,
/// a type change.
fn edit(src: &Path) {
    let keep = |p: &Path| fs::symlink_metadata(p).unwrap();
    let m = keep(&src.join("size-300000"));
    fs::OpenOptions::new().write(true).open(src.join("size-300000")).unwrap().write_all_at(b"EDITED", 150_000).unwrap();
    tree::set_times(&src.join("size-300000"), mtime(&m));
    let m = keep(&src.join("a/secret"));
    fs::set_permissions(src.join("a/secret"), fs::Permissions::from_mode(0o640)).unwrap();
    tree::set_times(&src.join("a/secret"), mtime(&m));
    rustix::fs::setxattr(src.join("xattrs"), "user.comment", b"changed", rustix::fs::XattrFlags::empty()).unwrap();
    tree::set_times(&src.join("name with spaces"), 1_700_000_000_000_000_000);
    let m = keep(&src.join("dangling"));
    fs::remove_file(src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("/elsewhere", src.join("dangling")).unwrap();
    tree::set_times(&src.join("dangling"), mtime(&m));
    fs::remove_file(src.join("a/b/c/d/deep.txt")).unwrap();
    fs::create_dir_all(src.join("new/dir")).unwrap();
    fs::write(src.join("new/dir/added.txt"), b"added").unwrap();
    fs::remove_dir(src.join("empty-dir")).unwrap();
    fs::write(src.join("empty-dir"), b"a file now").unwrap();
}

fn mtime(m: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn expected_diff() -> Vec<(String, String, Vec<String>)> {
    strs(&[
        ("removed", "/a/b/c/d/deep.txt", &[]),
        ("modified", "/a/secret", &["mode"]),
        ("modified", "/dangling", &["link_target"]),
        ("type_changed", "/empty-dir", &[]),
        ("modified", "/name with spaces", &["mtime"]),
        ("added", "/new", &[]),
        ("added", "/new/dir", &[]),
        ("added", "/new/dir/added.txt", &[]),
        ("modified", "/size-300000", &["content"]),
        ("modified", "/xattrs", &["xattrs"]),
    ])
}

#[test]
fn diff_find_and_dump_answer_for_a_tree_with_known_edits() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    tree::make_full(&src, false);
    let first = backup(&store, &[&src])["snapshot"].as_str().unwrap().to_string();
    let before = t.path().join("before");
    untar(&dump(&["dump", "--store", s(&store), &first, s(&src)]), &before);
    edit(&src);
    let second = backup(&store, &[&src])["snapshot"].as_str().unwrap().to_string();

    // diff: every edit with its reason, nothing else
    let d = omesh(["diff", "--store", s(&store), &first, &second, "--json"]).ok().json();
    assert_eq!(d["command"], "diff");
    assert_eq!(changes(&d, &src), expected_diff(), "{d:#}");
    let sum = &d["summary"];
    assert_eq!((sum["added"].as_u64(), sum["removed"].as_u64(), sum["modified"].as_u64()), (Some(3), Some(1), Some(6)));
    // the new file's bytes and the edited chunk of size-300000 (one chunk of at most 64 KiB) are added
    let added = sum["added_bytes"].as_u64().unwrap();
    assert!(added > 10 && added <= 10 + 65_536 + "a file now".len() as u64, "{sum}");
    // below a path only; the same snapshot twice: no change
    let sub = omesh(["diff", "--store", s(&store), &first, &second, &format!("{}/a", s(&src)), "--json"]).ok().json();
    assert_eq!(
        changes(&sub, &src),
        strs(&[("removed", "/a/b/c/d/deep.txt", &[]), ("modified", "/a/secret", &["mode"])])
    );
    let none = omesh(["diff", "--store", s(&store), &second, "latest", "--json"]).ok().json();
    assert_eq!(none["changes"].as_array().unwrap().len(), 0);
    let human = omesh(["diff", "--store", s(&store), &first, &second]).ok().stdout;
    assert!(human.contains("M    ") && human.contains("/a/secret  (mode)") && human.contains("+    "), "{human}");
    let r = omesh(["diff", "--store", s(&store), &first, &second, "/no/such/dir"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("/no/such/dir") && r.stderr.contains("not in the snapshot"), "{}", r.stderr);

    // find: by name anywhere, by whole path, across snapshots, by mtime
    let f = omesh(["find", "--store", s(&store), "deep.txt", "--json"]).ok().json();
    let found: Vec<&str> = f["matches"].as_array().unwrap().iter().map(|m| m["snapshot"].as_str().unwrap()).collect();
    assert_eq!(found, vec![first.as_str()], "deep.txt was removed before the second backup: {f}");
    let pat = format!("{}/new/*/*.TXT", s(&src));
    let f = omesh(["find", "--store", s(&store), &pat, "-i", "--json"]).ok().json();
    let m = &f["matches"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{f}");
    assert_eq!(m[0]["snapshot"], second.as_str());
    assert_eq!(m[0]["path"], format!("{}/new/dir/added.txt", s(&src)));
    assert_eq!(m[0]["size"], 5);
    let f = omesh(["find", "--store", s(&store), "name with*", "--newest", "2021-01-01", "--json"]).ok().json();
    assert_eq!(f["matches"].as_array().unwrap().len(), 1, "only the first snapshot's has an mtime before 2021: {f}");
    assert_eq!(f["matches"][0]["snapshot"], first.as_str());
    let f =
        omesh(["find", "--store", s(&store), "name with*", "--oldest", "2023-11-14T22:13:20Z", "--json"]).ok().json();
    assert_eq!(f["matches"][0]["snapshot"], second.as_str());
    let r = omesh(["find", "--store", s(&store), "x", "--newest", "yesterday"]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    // dump: one file's bytes; a directory as a tar that restores everything
    let bytes = dump(&["dump", "--store", s(&store), "latest", &format!("{}/size-300000", s(&src))]);
    assert_eq!(bytes, fs::read(src.join("size-300000")).unwrap());
    let out = t.path().join("after");
    untar(&dump(&["dump", "--store", s(&store), "latest", s(&src)]), &out);
    tree::assert_same_content(&src, &out.join(src.strip_prefix("/").unwrap()));
    // the first snapshot's tar, taken before the edits, is the tree as it was
    let now = t.path().join("first-again");
    untar(&dump(&["dump", "--store", s(&store), &first, s(&src)]), &now);
    tree::assert_same_content(&before.join(src.strip_prefix("/").unwrap()), &now.join(src.strip_prefix("/").unwrap()));
    // hardlinks come back as one inode
    use std::os::unix::fs::MetadataExt;
    let o = out.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::metadata(o.join("hard1")).unwrap().ino(), fs::metadata(o.join("a/hard3")).unwrap().ino());

    // -o never overwrites; a damaged object stops the dump with exit 4 and leaves no file
    let file = t.path().join("out.bin");
    fs::write(&file, b"keep me").unwrap();
    let r = omesh(["dump", "--store", s(&store), "latest", &format!("{}/size-300000", s(&src)), "-o", s(&file)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
    for p in packs(&store) {
        let f = fs::OpenOptions::new().write(true).read(true).open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        // damage every pack past its first records, not the trees alone
        for off in (4096..len).step_by(8192) {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, off).unwrap();
            f.write_all_at(&[b[0] ^ 0x5a], off).unwrap();
        }
    }
    let damaged = t.path().join("damaged.bin");
    let r = omesh(["dump", "--store", s(&store), "latest", &format!("{}/size-300000", s(&src)), "-o", s(&damaged)]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(!damaged.exists(), "a dump that failed left {}", damaged.display());
}

#[test]
fn the_snapshot_filters_choose_what_snapshots_diff_and_find_see() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/app.conf"), b"v1").unwrap();
    let mut ids = Vec::new();
    for (tag, host, v) in [("daily", "h1", "v1"), ("daily", "h2", "v2"), ("manual", "h1", "v3")] {
        fs::write(src.join("etc/app.conf"), v).unwrap();
        let r = omesh(["backup", "--store", s(&store), s(&src), "--tag", tag, "--host", host, "--json"]).ok().json();
        ids.push(r["snapshot"].as_str().unwrap().to_string());
    }
    let snaps = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["snapshots", "--store", s(&store), "--json"];
        a.extend_from_slice(extra);
        let v = omesh(a).ok().json_list();
        v.as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(snaps(&["--tag", "daily"]), ids[..2].to_vec());
    assert_eq!(snaps(&["--host", "h1"]), vec![ids[0].clone(), ids[2].clone()]);
    assert_eq!(snaps(&["--tag", "daily", "--latest", "1"]), vec![ids[1].clone()]);
    assert_eq!(snaps(&["--path", s(&src), "--tag", "manual,daily"]), Vec::<String>::new());
    // "latest" is the newest of the chosen ones
    let d = omesh(["diff", "--store", s(&store), &ids[0], "latest", "--tag", "daily", "--json"]).ok().json();
    assert_eq!(d["b"], ids[1].as_str());
    let f = omesh(["find", "--store", s(&store), "app.conf", "--host", "h1", "--json"]).ok().json();
    let found: Vec<&str> = f["matches"].as_array().unwrap().iter().map(|m| m["snapshot"].as_str().unwrap()).collect();
    assert_eq!(found, vec![ids[0].as_str(), ids[2].as_str()]);
    let r = omesh(["dump", "--store", s(&store), "latest", &format!("{}/etc/app.conf", s(&src)), "--host", "nohost"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("among those the filters chose"), "{}", r.stderr);
    let v = dump(&["dump", "--store", s(&store), "latest", &format!("{}/etc/app.conf", s(&src)), "--tag", "daily"]);
    assert_eq!(v, b"v2");
    // ls and restore resolve "latest" among the chosen snapshots too
    let conf = format!("{}/etc", s(&src));
    let l = omesh(["ls", "--store", s(&store), "latest", &conf, "--host", "h2", "--json"]).ok().json_list();
    let f = l.as_array().unwrap().iter().find(|e| e["path"].as_str().unwrap().ends_with("/app.conf")).unwrap();
    assert_eq!(f["size"], 2, "{l}");
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target), "--tag", "daily", "--host", "h1"]).ok();
    assert_eq!(fs::read(crate::common::restored(&target, &src).join("etc/app.conf")).unwrap(), b"v1");
    let r = omesh(["restore", "--store", s(&store), "latest", "--target", s(&target), "--tag", "weekly"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn in_mesh_mode_a_new_node_diffs_finds_and_dumps_from_the_holders_while_one_is_killed() {
    let t = tempfile::tempdir().unwrap();
    let (site, a, mut b, _c) = crate::common::mesh::source_two_holders_and_a_new_node(t.path());
    let src = t.path().join("src");
    tree::make_full(&src, false);
    // a cache directory the daemon's backups skip when asked
    fs::create_dir(src.join("cache")).unwrap();
    fs::write(src.join("cache/CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55").unwrap();
    let first = site.omesh("srv-a", &["backup", s(&src), "--exclude-caches", "--json"]).ok().json();
    fs::remove_dir_all(src.join("cache")).unwrap();
    assert_eq!(first["protected"], true, "{first}");
    edit(&src);
    let second = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(second["protected"], true, "{second}");
    let (first, second) = (first["snapshot"].as_str().unwrap(), second["snapshot"].as_str().unwrap());
    // the source answers beside its running daemon
    let d = site.omesh("srv-a", &["diff", first, second, "--json"]).ok().json();
    assert_eq!(changes(&d, &src), expected_diff());

    // srv-a is lost; srv-e has its key only, and srv-b dies too (SIGKILL)
    let key = t.path().join("srv-a.key");
    site.omesh("srv-a", &["key", "export", "--out", s(&key)]).ok();
    drop(a);
    site.omesh("srv-e", &["key", "import", s(&key)]).ok();
    b.kill();
    let d = site.omesh("srv-e", &["diff", first, second, "--source", "srv-a", "--json"]).ok().json();
    assert_eq!(changes(&d, &src), expected_diff());
    let f = site.omesh("srv-e", &["find", "added.txt", "--source", "srv-a", "--json"]).ok().json();
    assert_eq!(f["matches"].as_array().unwrap().len(), 1, "{f}");
    let o =
        site.command("srv-e", &["dump", "latest", s(&src), "--source", "srv-a"]).stdin(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // stats from the holders: sizes known, stored bytes not (no local copy here)
    let st = site.omesh("srv-e", &["stats", "--source", "srv-a", "--json"]).ok().json();
    assert_eq!(st["snapshots"], 2, "{st}");
    assert!(st["unique_data_bytes"].as_u64().unwrap() > 300_000, "{st}");
    assert!(st["stored_bytes"].is_null(), "{st}");
    let out = t.path().join("untarred");
    untar(&o.stdout, &out);
    tree::assert_same_content(&src, &out.join(src.strip_prefix("/").unwrap()));
}

#[test]
fn stats_count_logical_unique_and_stored_bytes_and_what_each_snapshot_added() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("random"), tree::data(200_000, 1)).unwrap();
    fs::write(src.join("copy"), tree::data(200_000, 1)).unwrap();
    fs::write(src.join("text"), "the same line again and again\n".repeat(40_000)).unwrap();
    let text_len = fs::metadata(src.join("text")).unwrap().len();
    let first = backup(&store, &[&src])["snapshot"].as_str().unwrap().to_string();
    fs::write(src.join("new"), tree::data(100_000, 2)).unwrap();
    let second = backup(&store, &[&src])["snapshot"].as_str().unwrap().to_string();

    let v = omesh(["stats", "--store", s(&store), "--json"]).ok().json();
    assert_eq!(v["command"], "stats");
    assert_eq!(v["snapshots"], 2);
    assert_eq!(v["logical_bytes"], 2 * (400_000 + text_len) + 100_000, "{v}");
    // the copy and the second snapshot's unchanged files are stored once;
    // the repeated text shrinks to chunks of the same content
    let unique = v["unique_data_bytes"].as_u64().unwrap();
    assert!(unique >= 300_000 && unique < 300_000 + text_len, "{v}");
    let stored = v["stored_data_bytes"].as_u64().unwrap();
    assert!(stored < unique, "compressible text must store smaller: {v}");
    assert!(v["stored_bytes"].as_u64().unwrap() > stored);
    assert!(v["dedup_ratio"].as_f64().unwrap() > 2.0, "{v}");
    let per = v["per_snapshot"].as_array().unwrap();
    assert_eq!(per[0]["id"], first.as_str());
    assert_eq!(per[1]["id"], second.as_str());
    assert_eq!(per[1]["new_data_bytes"], 100_000, "only the new file's data is new: {v}");
    // one snapshot, chosen by id
    let one = omesh(["stats", "--store", s(&store), &first, "--json"]).ok().json();
    assert_eq!(one["snapshots"], 1);
    assert_eq!(one["logical_bytes"], 400_000 + text_len);
    assert_eq!(one["unique_data_bytes"].as_u64().unwrap() + 100_000, unique);
    let human = omesh(["stats", "--store", s(&store)]).ok().stdout;
    assert!(human.contains("dedup") && human.contains(&second[..8]), "{human}");
}

#[test]
fn restore_leaves_out_what_exclude_names_and_a_dry_run_says_what_it_would_restore_touching_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    tree::make_full(&src, false);
    backup(&store, &[&src]);
    let a_dir = format!("{}/a", s(&src));
    let args = |target: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "restore",
            "--store",
            s(&store),
            "latest",
            "--target",
            s(target),
            "--exclude",
            "size-*",
            "--exclude",
            &a_dir,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    // the dry run first: it must not create the target
    let dry_target = t.path().join("never-made");
    let d = omesh(args(&dry_target, &["--dry-run", "--json"])).ok().json();
    assert_eq!(d["dry_run"], true);
    assert!(!dry_target.exists(), "a dry run created its target");
    let plan = &d["plan"];
    let paths: Vec<&str> = plan["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(
        paths.iter().all(|p| !p.contains("/size-") && !p.starts_with(&format!("{a_dir}/")) && *p != a_dir),
        "{paths:?}"
    );
    assert!(paths.contains(&format!("{}/xattrs", s(&src)).as_str()), "{paths:?}");

    let target = t.path().join("r");
    let r = omesh(args(&target, &["--json"])).ok().json();
    for k in ["files", "dirs", "others"] {
        assert_eq!(r[k], plan[k], "the dry run and the restore disagree on {k}: {r} / {plan}");
    }
    let got = restored(&target, &src);
    assert!(!got.join("a").exists() && !got.join("size-1").exists());
    let mut want = tree::attrs(&src);
    want.retain(|k, _| !k.starts_with("size-") && k != "a" && !k.starts_with("a/"));
    // the hard-link group's first name (a/hard3) was left out: hard1 leads it now
    for v in want.values_mut() {
        if v.link_group.as_deref() == Some("a/hard3") {
            v.link_group = Some("hard1".into());
        }
    }
    let have = tree::attrs(&got);
    assert_eq!(want.keys().collect::<Vec<_>>(), have.keys().collect::<Vec<_>>());
    for (k, v) in &want {
        assert_eq!(Some(v), have.get(k), "{k}");
    }
    let human = omesh(args(&dry_target, &["--dry-run"])).ok().stdout;
    assert!(human.contains("dry run: would restore") && human.contains("nothing was read or written"), "{human}");
    let r = omesh(args(&dry_target, &["--exclude", "["]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!dry_target.exists());
}
