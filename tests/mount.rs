//! `omesh mount`: a snapshot through a real FUSE mount is the tree it was
//! (content, modes, owners, times, xattrs, hard links), a 1 GiB sparse file
//! reads right at random offsets, SIGTERM unmounts cleanly, and in mesh mode
//! a mount on a new node keeps serving while one holder is SIGKILLed.

use crate::common::{backup, init_small, s, tree};
use std::fs;
use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `omesh mount`, unmounted (SIGTERM) and waited for on drop.
struct Mount {
    child: Option<Child>,
    at: std::path::PathBuf,
}

fn mounted(at: &Path) -> bool {
    let want = fs::canonicalize(at).unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
}

impl Mount {
    /// Start `cmd` (an `omesh mount ...`) and wait for its "mounted" line.
    fn start(mut cmd: Command, at: &Path) -> Mount {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        if !line.starts_with("mounted on") {
            let o = child.wait_with_output().unwrap();
            panic!("mount failed: {line}{}", String::from_utf8_lossy(&o.stderr));
        }
        assert!(mounted(at), "{} is not a mount point", at.display());
        Mount { child: Some(child), at: at.to_path_buf() }
    }

    /// SIGTERM; the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        if mounted(&self.at) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.at).status();
        }
    }
}

#[test]
fn a_mounted_snapshot_is_the_tree_it_was_reads_a_sparse_gigabyte_anywhere_and_unmounts_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let (store, src, big) = (t.path().join("store"), t.path().join("src"), t.path().join("big"));
    init_small(&store);
    tree::make_full(&src, false);
    fs::create_dir(&big).unwrap();
    let f = fs::File::create(big.join("sparse-1GiB")).unwrap();
    f.set_len(1 << 30).unwrap();
    for (i, off) in [0u64, 300 << 20, (1 << 30) - 70_000].iter().enumerate() {
        f.write_all_at(&tree::data(70_000, i as u64), *off).unwrap();
    }
    drop(f);
    backup(&store, &[&src, &big]);

    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut c = crate::common::cmd();
    c.args(["mount", "--store", s(&store), "latest", s(&mnt), "--cache-mib", "8"]);
    let mut m = Mount::start(c, &mnt);
    tree::assert_same_content(&src, &mnt.join(src.strip_prefix("/").unwrap()));
    // random-access reads of the sparse file: data and holes where they were
    let (orig, through) = (
        fs::File::open(big.join("sparse-1GiB")).unwrap(),
        fs::File::open(mnt.join(big.strip_prefix("/").unwrap()).join("sparse-1GiB")).unwrap(),
    );
    assert_eq!(through.metadata().unwrap().len(), 1 << 30);
    let mut r = omesh_core::sample::Rng::new(5);
    let mut offsets: Vec<u64> = (0..200).map(|_| r.next_u64() % ((1 << 30) - 8192)).collect();
    offsets.extend([0, 69_990, 300 << 20, (300 << 20) + 69_999, (1 << 30) - 70_001, (1 << 30) - 4096]);
    for off in offsets {
        let (mut x, mut y) = (vec![0u8; 8192], vec![0u8; 8192]);
        let nx = orig.read_at(&mut x, off).unwrap();
        let ny = through.read_at(&mut y, off).unwrap();
        assert_eq!((nx, &x[..nx]), (ny, &y[..ny]), "at offset {off}");
    }
    drop((orig, through));
    // read-only
    assert!(fs::write(mnt.join(src.strip_prefix("/").unwrap()).join("new-file"), b"x").is_err());
    let st = m.stop();
    assert!(st.success(), "{st}");
    assert!(!mounted(&mnt), "SIGTERM left {} mounted", mnt.display());
}

#[test]
fn a_mount_of_every_snapshot_on_a_new_node_keeps_serving_when_one_holder_is_killed() {
    let t = tempfile::tempdir().unwrap();
    let (site, a, mut b, _c) = crate::common::mesh::source_two_holders_and_a_new_node(t.path());
    let src = t.path().join("src");
    tree::make_full(&src, false);
    for i in 0..8 {
        fs::write(src.join(format!("bulk-{i}")), tree::data(300_000, 40 + i)).unwrap();
    }
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let key = t.path().join("srv-a.key");
    site.omesh("srv-a", &["key", "export", "--out", s(&key)]).ok();
    drop(a);
    site.omesh("srv-e", &["key", "import", s(&key)]).ok();

    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut m = Mount::start(site.command("srv-e", &["mount", "--all", s(&mnt), "--source", "srv-a"]), &mnt);
    let latest = mnt.join("latest");
    let inside = latest.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(inside.join("bulk-0")).unwrap(), tree::data(300_000, 40));
    // one holder dies; what was not read yet still comes from the other
    b.kill();
    for i in 1..8 {
        assert_eq!(fs::read(inside.join(format!("bulk-{i}"))).unwrap(), tree::data(300_000, 40 + i), "bulk-{i}");
    }
    tree::assert_same_content(&src, &inside);
    let names: Vec<String> =
        fs::read_dir(&mnt).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "one snapshot and latest: {names:?}");
    assert!(m.stop().success());
}
