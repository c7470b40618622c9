//! Command-line behaviour: exit codes, JSON, warnings, keys, excludes.

use crate::common::{self, backup, init_small, omesh, restored, s, tree};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

#[test]
fn usage_errors_and_json_shapes() {
    let t = tempfile::tempdir().unwrap();
    let nostore = t.path().join("nostore");
    let r = omesh(["snapshots", "--store", s(&nostore)]).code(2);
    assert!(r.stderr.contains("not an omesh store") && r.stderr.contains("omesh init"), "{}", r.stderr);
    omesh(["backup"]).code(2);
    let store = t.path().join("store");
    let init = omesh(["init", "--store", s(&store), "--json"]).ok().json();
    assert_eq!(fs::metadata(store.join("key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(init["key_id"].as_str().unwrap().len() == 32);
    // init refuses an existing store
    omesh(["init", "--store", s(&store)]).code(2);
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"hello").unwrap();
    let b = backup(&store, &[&src]);
    for k in ["snapshot", "files", "bytes_read", "bytes_added", "seconds"] {
        assert!(b.get(k).is_some(), "backup --json lacks {k}: {b}");
    }
    let id = b["snapshot"].as_str().unwrap().to_string();
    let snaps = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list();
    assert_eq!(snaps[0]["id"], id.as_str());
    // prefix resolution, latest, not found
    let ls = omesh(["ls", "--store", s(&store), &id[..6], "--json"]).ok().json_list();
    assert!(ls.as_array().unwrap().iter().any(|e| e["path"].as_str().unwrap().ends_with("/src/f")));
    omesh(["ls", "--store", s(&store), "latest", &format!("{}", src.display())]).ok();
    omesh(["ls", "--store", s(&store), "ffffffff"]).code(2);
    let v = omesh(["verify", "--store", s(&store), "--json"]).ok().json();
    assert_eq!(v["ok"], true);
    // plain output prints the id
    let human = omesh(["backup", "--store", s(&store), s(&src)]).ok();
    assert!(human.stdout.contains("snapshot "), "{}", human.stdout);
    // help teaches
    let h = omesh(["backup", "--help"]).ok();
    assert!(h.stdout.contains("--exclude") && h.stdout.contains("Exit code 3"), "{}", h.stdout);
}

#[test]
fn unreadable_files_and_dirs_are_reported_with_exit_code_3() {
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("closed-dir")).unwrap();
    fs::write(src.join("closed-dir/inner"), b"x").unwrap();
    fs::write(src.join("readable"), b"fine").unwrap();
    fs::write(src.join("secret"), b"root only").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(src.join("closed-dir"), fs::Permissions::from_mode(0o700)).unwrap();
    let store = t.path().join("store");
    init_small(&store);
    // run the backup as an unprivileged user who owns the store
    let nobody = 65534;
    std::process::Command::new("chown").args(["-R", "65534:65534", s(&store)]).status().unwrap();
    let out = common::cmd()
        .args(["backup", "--store", s(&store), "--json", s(&src)])
        .uid(nobody)
        .gid(nobody)
        .output()
        .unwrap();
    let r: common::Run = out.into();
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("secret") && r.stderr.contains("closed-dir"), "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["warnings"].as_array().unwrap().len(), 2, "{j}");
    // the snapshot records both, never silently missing
    let ls =
        common::cmd().args(["ls", "--store", s(&store), "latest", "--json"]).uid(nobody).gid(nobody).output().unwrap();
    let ls: common::Run = ls.into();
    let ls = ls.ok().json_list();
    let entries = ls.as_array().unwrap();
    let find = |n: &str| {
        entries
            .iter()
            .find(|e| e["path"].as_str().unwrap().ends_with(n))
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing from snapshot"))
    };
    assert!(find("/src/secret")["warning"].is_string());
    assert!(find("/src/closed-dir")["warning"].is_string());
    assert!(find("/src/readable")["warning"].is_null());
}

#[test]
fn file_changing_during_read_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let busy = src.join("busy.log");
    fs::write(&busy, tree::data(8 << 20, 1)).unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let busy = busy.clone();
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(&busy).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::io::Write::write_all(&mut f, b"another log line\n").unwrap();
                n += 1;
            }
            n
        })
    };
    let r = omesh(["backup", "--store", s(&store), "--json", s(&src)]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("changed while it was being read"), "{}", r.stderr);
}

#[test]
fn excludes_and_one_file_system() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("cache/deep")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::write(src.join("keep/a.txt"), b"a").unwrap();
    fs::write(src.join("keep/b.tmp"), b"b").unwrap();
    fs::write(src.join("cache/deep/c"), b"c").unwrap();
    fs::create_dir_all(src.join("mnt")).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", s(&src.join("mnt"))])
        .status()
        .unwrap()
        .success();
    assert!(mounted, "tests run as root and can mount a tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(src.join("mnt"));
    fs::write(src.join("mnt/other-fs"), b"other").unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let cache = format!("{}/cache/**", src.display());
    let cache_dir = format!("{}/cache", src.display());
    omesh([
        "backup",
        "--store",
        s(&store),
        s(&src),
        "--exclude",
        "*.tmp",
        "--exclude",
        &cache,
        "--exclude",
        &cache_dir,
        "--one-file-system",
    ])
    .ok();
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
    let out = restored(&target, &src);
    assert!(out.join("keep/a.txt").exists());
    assert!(!out.join("keep/b.tmp").exists());
    assert!(!out.join("cache").exists());
    assert!(out.join("mnt").is_dir(), "mount point is recorded");
    assert!(!out.join("mnt/other-fs").exists(), "crossed into another file system");
    omesh(["backup", "--store", s(&store), s(&src), "--exclude", "["]).code(2);
}

#[test]
fn key_export_import_restores_on_a_new_machine() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree::make_full(&src, false);
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&src]);
    let exported = t.path().join("exported.key");
    omesh(["key", "export", "--store", s(&store), "--out", s(&exported)]).ok();
    assert_eq!(fs::metadata(&exported).unwrap().permissions().mode() & 0o777, 0o600);
    // "new machine": a copy of the store without its key
    let copy = t.path().join("copy");
    fs::create_dir_all(&copy).unwrap();
    assert!(
        std::process::Command::new("cp")
            .args(["-a", &format!("{}/.", s(&store)), s(&copy)])
            .status()
            .unwrap()
            .success()
    );
    fs::remove_file(copy.join("key")).unwrap();
    let target = t.path().join("r");
    let r = omesh(["restore", "--store", s(&copy), "latest", "--target", s(&target)]).code(2);
    assert!(r.stderr.contains("key import"), "{}", r.stderr);
    // a key of another store is refused, nothing written
    let other = t.path().join("other");
    init_small(&other);
    omesh(["key", "import", s(&other.join("key")), "--store", s(&copy)]).code(2);
    assert!(!copy.join("key").exists());
    omesh(["key", "import", s(&exported), "--store", s(&copy)]).ok();
    omesh(["restore", "--store", s(&copy), "latest", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));
}

#[test]
fn store_in_use_is_reported_as_busy() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let _held =
        omesh_core::store::Store::open(&store, omesh_core::store::Access::Write, omesh_core::store::KeySource::Default)
            .unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let r = omesh(["backup", "--store", s(&store), s(&src)]).code(5);
    // it names the holder: this test process holds the lock
    let pid = format!("pid {}", std::process::id());
    assert!(r.stderr.contains("in use by another omesh process") && r.stderr.contains(&pid), "{}", r.stderr);
    // gc through a read-only handle's path names it too
    let r = omesh(["gc", "--store", s(&store)]).code(5);
    assert!(r.stderr.contains(&pid), "{}", r.stderr);
    // readers still work beside the writer
    omesh(["snapshots", "--store", s(&store)]).ok();
}

#[test]
fn a_local_backup_that_fills_the_disk_blames_the_disk_and_leaves_a_store_that_verifies() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("disk");
    let _m = common::Mounted::tmpfs(&disk, "4m");
    let store = disk.join("store");
    init_small(&store);
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), tree::data(12 << 20, 3)).unwrap();
    let r = omesh(["backup", "--store", s(&store), s(&src)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("No space left"), "{}", r.stderr);
    // the file was readable: it is not what failed
    assert!(!r.stderr.contains("cannot read"), "{}", r.stderr);
    // the pack being written was dropped, not left half-written
    let tmp: Vec<_> = fs::read_dir(store.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();
}

#[test]
fn a_store_whose_index_needs_a_repair_on_a_full_disk_can_still_be_read_and_is_not_set_aside() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("disk");
    let _m = common::Mounted::tmpfs(&disk, "16m");
    let store = disk.join("store");
    init_small(&store);
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), tree::data(3 << 20, 1)).unwrap();
    let first = common::backup(&store, &[&src])["snapshot"].as_str().unwrap().to_string();
    // a backup killed while it has the index open leaves it needing a repair
    fs::write(src.join("b"), tree::data(1 << 20, 2)).unwrap();
    let killed = common::cmd()
        .args(["backup", "--store", s(&store), s(&src)])
        .env("OMESH_FAILPOINT", "backup.before_commit:1")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None, "the failpoint did not kill the backup");
    // and the disk is full
    let filler = disk.join("filler");
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).unwrap();
        while f.write_all(&[0u8; 65536]).is_ok() {}
    }
    let index_before = fs::read(store.join("index.redb")).unwrap();
    let list = omesh(["snapshots", "--store", s(&store), "--json"]).ok();
    assert!(list.stderr.contains("in memory"), "{}", list.stderr);
    let ids: Vec<_> =
        list.json_list().as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec![first.clone()]);
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&store), &first, "--target", s(&target)]).ok();
    assert_eq!(fs::read(common::restored(&target, &src).join("a")).unwrap(), tree::data(3 << 20, 1));
    // the readers wrote nothing and set nothing aside
    assert_eq!(fs::read(store.join("index.redb")).unwrap(), index_before, "a reader changed the index");
    let aside: Vec<_> = fs::read_dir(&store)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
        .map(|e| e.file_name())
        .collect();
    assert!(aside.is_empty(), "an intact index was set aside: {aside:?}");
    // a backup on the full disk blames the disk and sets nothing aside either
    let r = omesh(["backup", "--store", s(&store), s(&src)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("No space left"), "{}", r.stderr);
    assert!(fs::read_dir(&store).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains("damaged")));
    // with room again, the next backup repairs the index and works
    fs::remove_file(&filler).unwrap();
    common::backup(&store, &[&src]);
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();
}

#[test]
fn version_names_the_commit_the_build_and_the_formats_it_speaks() {
    let v = omesh(["version", "--json"]).ok().json();
    assert_eq!(v["command"], "version");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let commit = v["commit"].as_str().unwrap();
    // built from a git checkout in CI: the full commit id of HEAD or an ancestor
    assert!(commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()), "{commit}");
    let head = std::process::Command::new("git")
        .args(["cat-file", "-t", commit])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), "commit", "{commit} is not a commit of this repository");
    let built = v["build_time"].as_str().unwrap();
    assert!(built.starts_with("20") && built.ends_with("+00:00"), "{built}");
    assert_eq!(v["store_format"], 2);
    assert_eq!(v["protocol"], 2);
    assert_eq!(v["alpn"], "omesh/2");
    // --version says the same in one line
    let line = omesh(["--version"]).ok().stdout;
    assert!(line.contains(commit) && line.contains("store format 2") && line.contains("protocol 2"), "{line}");
}

#[test]
fn completions_and_man_pages_are_generated_from_the_command_line_definition() {
    let bash = omesh(["completions", "bash"]).ok().stdout;
    for sub in ["backup", "restore", "snapshots", "key", "version", "completions"] {
        assert!(bash.contains(sub), "bash completions miss {sub}");
    }
    assert!(omesh(["completions", "zsh"]).ok().stdout.contains("#compdef omesh"));
    assert!(omesh(["completions", "fish"]).ok().stdout.contains("complete -c omesh"));
    let r = omesh(["completions", "tcsh"]);
    assert_eq!(r.code, 2, "an unknown shell is a usage error: {}", r.stderr);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("man1");
    omesh(["man", "--dir", dir.to_str().unwrap()]).ok();
    let page = std::fs::read_to_string(dir.join("omesh-backup.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH omesh-backup 1"), "{page}");
    assert!(page.contains("exclude"), "the page documents backup's options");
    assert!(dir.join("omesh.1").exists() && dir.join("omesh-key-export.1").exists());
}

#[test]
fn backup_skips_marked_directories_cache_directories_and_the_patterns_of_an_exclude_file() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    for d in ["keep", "marked/sub", "cache", "fake-cache", "logs"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("keep/a"), b"a").unwrap();
    fs::write(src.join("marked/.nobackup"), b"").unwrap();
    fs::write(src.join("marked/sub/secret"), b"s").unwrap();
    fs::write(src.join("cache/CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55\n# cache\n").unwrap();
    fs::write(src.join("cache/blob"), b"b").unwrap();
    fs::write(src.join("fake-cache/CACHEDIR.TAG"), b"not a signature").unwrap();
    fs::write(src.join("logs/x.log"), b"l").unwrap();
    fs::write(src.join("keep/b.tmp"), b"t").unwrap();
    let list = t.path().join("excludes.txt");
    fs::write(&list, "# build output\n\n  *.log  \n/nowhere/**\n").unwrap();
    let r = omesh([
        "backup",
        "--store",
        s(&store),
        s(&src),
        "--exclude-file",
        s(&list),
        "--exclude",
        "*.tmp",
        "--exclude-if-present",
        ".nobackup",
        "--exclude-caches",
        "--json",
    ])
    .ok()
    .json();
    let snap = r["snapshot"].as_str().unwrap();
    let ls = omesh(["ls", "--store", s(&store), snap, "--json"]).ok().json_list();
    let mut paths: Vec<String> = ls
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["path"].as_str().unwrap().strip_prefix(s(&src)).map(String::from))
        .filter(|p| !p.is_empty())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/fake-cache", "/fake-cache/CACHEDIR.TAG", "/keep", "/keep/a", "/logs"], "{ls}");
    // an exclude file that is not there names itself; nothing is backed up
    let r = omesh(["backup", "--store", s(&store), s(&src), "--exclude-file", "/nonexistent/list"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--exclude-file /nonexistent/list"), "{}", r.stderr);
    let r = omesh(["backup", "--store", s(&store), s(&src), "--exclude-if-present", "a/b"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let n = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list();
    assert_eq!(n.as_array().unwrap().len(), 1);
}

#[test]
fn a_key_exported_with_a_passphrase_is_sealed_and_imports_only_with_it() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    tree::make_full(&src, false);
    backup(&store, &[&src]);
    let plain = omesh(["key", "export", "--store", s(&store)]).ok();
    assert!(plain.stderr.contains("not sealed with a passphrase"), "a plain export warns: {}", plain.stderr);
    let secret = plain.stdout.lines().find(|l| l.starts_with("secret")).unwrap().split('"').nth(1).unwrap().to_string();

    let pf = t.path().join("pass");
    fs::write(&pf, "a long site passphrase\n").unwrap();
    let sealed = t.path().join("key.sealed");
    omesh(["key", "export", "--store", s(&store), "--out", s(&sealed), "--passphrase-file", s(&pf)]).ok();
    let text = fs::read_to_string(&sealed).unwrap();
    assert!(text.contains("omesh-key-sealed-v1") && text.contains("argon2id"), "{text}");
    assert!(!text.contains(&secret), "the secret is in the sealed export");
    assert_eq!(fs::metadata(&sealed).unwrap().permissions().mode() & 0o777, 0o600);

    // the store moved to a new server without its key
    let moved = t.path().join("moved");
    fs::create_dir(&moved).unwrap();
    for e in fs::read_dir(&store).unwrap().flatten() {
        if e.file_name() != "key" {
            let st = std::process::Command::new("cp").arg("-a").arg(e.path()).arg(&moved).status().unwrap();
            assert!(st.success());
        }
    }
    let import = |env: &[(&str, &str)], extra: &[&str]| {
        let mut c = common::cmd();
        c.args(["key", "import", s(&sealed), "--store", s(&moved)]).args(extra).stdin(std::process::Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        common::Run::from(c.output().unwrap())
    };
    let r = import(&[("OMESH_KEY_PASSPHRASE", "not the passphrase")], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("does not open") && r.stderr.contains(s(&sealed)), "{}", r.stderr);
    assert!(!moved.join("key").exists(), "a refused import wrote a key");
    // no passphrase and no terminal: says how to give one
    let r = import(&[], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--passphrase-file") && r.stderr.contains("OMESH_KEY_PASSPHRASE"), "{}", r.stderr);
    // a short passphrase is refused at export
    fs::write(t.path().join("short"), "abc\n").unwrap();
    let r = omesh(["key", "export", "--store", s(&store), "--passphrase-file", s(&t.path().join("short"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    import(&[("OMESH_KEY_PASSPHRASE", "a long site passphrase")], &[]).ok();
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&moved), "latest", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));

    // on a terminal: asked twice at export (not echoed), once at import
    let sealed2 = t.path().join("key2.sealed");
    let run_tty = |line: String, input: &str| -> (bool, String) {
        let mut c = std::process::Command::new("script");
        common::clean_env(&mut c);
        let mut child = c
            .args(["-qec", &line, "/dev/null"])
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let bin = common::bin();
    let (ok, drawn) = run_tty(
        format!("{} key export --store {} --passphrase --out {}", bin.display(), s(&store), s(&sealed2)),
        "typed at the terminal\ntyped at the terminal\n",
    );
    assert!(ok && drawn.contains("Same passphrase again"), "{drawn}");
    let (ok, drawn) = run_tty(
        format!("{} key import {} --store {}", bin.display(), s(&sealed2), s(&moved)),
        "typed at the terminal\n",
    );
    assert!(ok, "{drawn}");
    assert!(drawn.contains("already holds this key"), "{drawn}");
}
