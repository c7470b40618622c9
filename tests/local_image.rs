//! Whole-volume backups (`--image`): zero blocks become holes, restore to a
//! file stays sparse, restore onto a block device writes only what differs.

use crate::common::{init_small, omesh, s, tree};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// A 32 MiB "disk": random data regions separated by real (written) zeros.
fn make_image(p: &Path) -> Vec<u8> {
    let mut img = vec![0u8; (32 * MIB) as usize];
    for (i, start) in [0u64, 5, 11, 20, 31].iter().enumerate() {
        let d = tree::data(MIB as usize, 40 + i as u64);
        img[(start * MIB) as usize..((start + 1) * MIB) as usize].copy_from_slice(&d);
    }
    fs::write(p, &img).unwrap();
    img
}

struct Loop(String);
impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show", s(file)])
            .output()
            .expect("losetup is installed (util-linux)");
        assert!(out.status.success(), "losetup failed: {}", String::from_utf8_lossy(&out.stderr));
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn image_file_round_trip_sparse_and_incremental() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("disk.img");
    let img = make_image(&src);
    let store = t.path().join("store");
    init_small(&store);
    let b = omesh(["backup", "--store", s(&store), "--image", s(&src), "--json"]).ok().json();
    assert_eq!(b["bytes"].as_u64().unwrap(), 32 * MIB);
    assert!(b["bytes_added"].as_u64().unwrap() < 6 * MIB, "zero blocks were stored: {b}");
    let snaps = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list();
    assert_eq!(snaps[0]["kind"], "image");

    let out = t.path().join("restored.img");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&out)]).ok();
    assert_eq!(fs::read(&out).unwrap(), img);
    let m = fs::metadata(&out).unwrap();
    assert!(m.blocks() * 512 < 12 * MIB, "restored image is not sparse ({} bytes allocated)", m.blocks() * 512);

    // change 4 KiB in the source, back up, restore over the previous copy
    let f = fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&[0xAB; 4096], 11 * MIB + 12345).unwrap();
    drop(f);
    omesh(["backup", "--store", s(&store), "--image", s(&src)]).ok();
    let r = omesh(["restore", "--store", s(&store), "latest", "--target", s(&out), "--json"]).ok().json();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&src).unwrap());
    assert!(r["bytes_written"].as_u64().unwrap() < 300_000, "{r}");
}

#[test]
fn block_device_backup_and_in_place_restore() {
    let t = tempfile::tempdir().unwrap();
    let src_file = t.path().join("disk.img");
    let img = make_image(&src_file);
    let src_dev = Loop::attach(&src_file);
    let store = t.path().join("store");
    init_small(&store);
    let b = omesh(["backup", "--store", s(&store), "--image", &src_dev.0, "--json"]).ok().json();
    assert_eq!(b["bytes"].as_u64().unwrap(), 32 * MIB);

    // a "replacement disk" full of garbage, restored in place
    let dst_file = t.path().join("new-disk.img");
    fs::write(&dst_file, tree::data((32 * MIB) as usize, 999)).unwrap();
    let dst_dev = Loop::attach(&dst_file);
    let r = omesh(["restore", "--store", s(&store), "latest", "--target", &dst_dev.0, "--json"]).ok().json();
    assert!(r["bytes_written"].as_u64().unwrap() >= 32 * MIB - MIB, "{r}");
    let mut got = vec![0u8; img.len()];
    fs::File::open(&dst_dev.0).unwrap().read_exact_at(&mut got, 0).unwrap();
    assert!(got == img, "device content differs from the image");
    // restoring again writes nothing: everything already matches
    let r = omesh(["restore", "--store", s(&store), "latest", "--target", &dst_dev.0, "--json"]).ok().json();
    assert_eq!(r["bytes_written"].as_u64().unwrap(), 0, "{r}");
}
