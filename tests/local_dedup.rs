//! Deduplication: unchanged re-backups cost nothing, small edits cost a
//! small multiple of the touched bytes.

use crate::common::{backup, init_small, store_bytes, tree};
use std::fs;

fn make(root: &std::path::Path) -> u64 {
    let mut total = 0;
    for d in 0..10 {
        let dir = root.join(format!("dir{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let data = tree::data(50_000 + (f * 37) % 5000, (d * 1000 + f) as u64);
            total += data.len() as u64;
            fs::write(dir.join(format!("file{f:03}.bin")), data).unwrap();
        }
    }
    total
}

#[test]
fn unchanged_rebackup_adds_almost_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let total = make(&src);
    let store = t.path().join("store");
    init_small(&store);
    let b1 = backup(&store, &[&src]);
    let after1 = store_bytes(&store);
    let b2 = backup(&store, &[&src]);
    let after2 = store_bytes(&store);
    assert!((after2 - after1) * 1000 < total, "unchanged re-backup grew the store by {} bytes", after2 - after1);
    assert!(b2["bytes_added"].as_u64().unwrap() * 1000 < total);
    assert_eq!(b2["bytes_read"].as_u64().unwrap(), 0, "unchanged files were read again: {b2}");
    assert_eq!(b2["parent"].as_str(), b1["snapshot"].as_str());
    // without the parent fast path every file is read, and still nothing is added
    let b3 = crate::common::omesh([
        "backup",
        "--store",
        crate::common::s(&store),
        "--parent",
        "none",
        "--json",
        crate::common::s(&src),
    ])
    .ok()
    .json();
    assert_eq!(b3["bytes_read"].as_u64().unwrap(), total);
    assert!(b3["bytes_added"].as_u64().unwrap() * 1000 < total, "{b3}");
}

#[test]
fn small_edits_cost_a_small_multiple_of_touched_bytes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make(&src);
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&src]);
    let before = store_bytes(&store);
    let edit = 20_000usize;
    let mut touched = 0usize;
    // about 1% of the 1000 files: inserts that shift data, in-place
    // overwrites, appends, renames and deletes
    for (i, d) in [0, 3].iter().enumerate() {
        let p = src.join(format!("dir{d}/file010.bin"));
        let mut v = fs::read(&p).unwrap();
        v.splice(20_000..20_000, tree::data(edit, 500 + i as u64));
        fs::write(&p, v).unwrap();
        touched += edit;
    }
    for (i, d) in [1, 4].iter().enumerate() {
        let p = src.join(format!("dir{d}/file020.bin"));
        let mut v = fs::read(&p).unwrap();
        v[10_000..10_000 + edit].copy_from_slice(&tree::data(edit, 600 + i as u64));
        fs::write(&p, v).unwrap();
        touched += edit;
    }
    for (i, d) in [2, 5].iter().enumerate() {
        let p = src.join(format!("dir{d}/file030.bin"));
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, &tree::data(edit, 700 + i as u64)).unwrap();
        touched += edit;
    }
    fs::rename(src.join("dir6/file040.bin"), src.join("dir7/renamed.bin")).unwrap();
    fs::rename(src.join("dir8/file050.bin"), src.join("dir8/renamed.bin")).unwrap();
    fs::remove_file(src.join("dir9/file060.bin")).unwrap();
    fs::remove_file(src.join("dir0/file070.bin")).unwrap();
    let b = backup(&store, &[&src]);
    let grown = store_bytes(&store) - before;
    assert!(grown <= 6 * touched as u64, "store grew by {grown} bytes for {touched} touched bytes ({b})");
    assert!(grown >= touched as u64 / 2, "store grew by only {grown} bytes: new data was not stored");
}
