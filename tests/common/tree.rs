//! Building rich test trees and comparing them.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::path::Path;

/// Deterministic bytes.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut r = omesh_core::sample::Rng::new(seed);
    r.bytes(n)
}

/// Set mtime and atime with nanoseconds, without following symlinks.
pub fn set_times(p: &Path, mtime_ns: i64) {
    let ts = rustix::fs::Timestamps {
        last_access: omesh_core::fsutil::timespec(mtime_ns - 1_000_000_007),
        last_modification: omesh_core::fsutil::timespec(mtime_ns),
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// A POSIX ACL xattr value: user::rw-, user:1000:rw-, group::r--, mask::rw-, other::r--.
pub fn acl_blob() -> Vec<u8> {
    let mut v = vec![2, 0, 0, 0];
    for (tag, perm, id) in
        [(1u16, 6u16, u32::MAX), (2, 6, 1000), (4, 4, u32::MAX), (0x10, 6, u32::MAX), (0x20, 4, u32::MAX)]
    {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// Build a tree with every kind of entry omesh must round-trip. Chunk
/// sizes assumed: min 4096, avg 16384, max 65536 (see `init_small`).
pub fn make_full(root: &Path, with_big_sparse: bool) {
    fs::create_dir_all(root).unwrap();
    // empty file and chunk-boundary sizes
    // (min-1, min, avg, max-1, max, max+1: each exercises a cut-point edge)
    fs::write(root.join("empty"), b"").unwrap();
    for (i, n) in [1usize, 4095, 4096, 16384, 65535, 65536, 65537, 300_000].iter().enumerate() {
        fs::write(root.join(format!("size-{n}")), data(*n, i as u64 + 10)).unwrap();
    }
    // names
    fs::write(root.join("name with spaces"), b"spaces").unwrap();
    fs::write(root.join("üñíçødé-日本語-файл"), b"unicode").unwrap();
    fs::write(root.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9")), b"non-utf8 name").unwrap();
    // nested dirs, an empty dir, odd permissions
    fs::create_dir_all(root.join("a/b/c/d")).unwrap();
    fs::write(root.join("a/b/c/d/deep.txt"), b"deep").unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    fs::write(root.join("a/secret"), b"0600").unwrap();
    fs::set_permissions(root.join("a/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("a/noperm"), b"0000").unwrap();
    fs::set_permissions(root.join("a/noperm"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::write(root.join("a/setuid"), b"suid").unwrap();
    fs::set_permissions(root.join("a/setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(root.join("readonly-dir")).unwrap();
    fs::write(root.join("readonly-dir/inside"), b"inside a 0555 dir").unwrap();
    // symlinks, dangling too
    symlink("size-1", root.join("link-to-file")).unwrap();
    symlink("a/b", root.join("link-to-dir")).unwrap();
    symlink("/nonexistent/dangling/target", root.join("dangling")).unwrap();
    // hardlinks (3 names, one in another directory)
    fs::write(root.join("hard1"), data(20_000, 99)).unwrap();
    fs::hard_link(root.join("hard1"), root.join("hard2")).unwrap();
    fs::hard_link(root.join("hard1"), root.join("a/hard3")).unwrap();
    // fifo and device nodes (root only)
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    if rustix::process::geteuid().is_root() {
        let dev = rustix::fs::makedev(1, 3);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("chardev"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            dev,
        )
        .unwrap();
        let dev = rustix::fs::makedev(7, 200);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("blockdev"),
            rustix::fs::FileType::BlockDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            dev,
        )
        .unwrap();
        // ownership
        fs::write(root.join("owned"), b"owned by 1234:5678").unwrap();
        rustix::fs::chown(
            root.join("owned"),
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(5678)),
        )
        .unwrap();
    }
    // extended attributes: user, POSIX ACL, security label
    let x = root.join("xattrs");
    fs::write(&x, b"with xattrs").unwrap();
    rustix::fs::setxattr(&x, "user.comment", b"hello", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(&x, "user.binary", &[0u8, 1, 2, 255], rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(&x, "system.posix_acl_access", &acl_blob(), rustix::fs::XattrFlags::empty()).unwrap();
    if rustix::process::geteuid().is_root() {
        rustix::fs::setxattr(
            &x,
            "security.selinux",
            b"system_u:object_r:omesh_test_t:s0\0",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    rustix::fs::setxattr(root.join("a"), "user.dirattr", b"on a directory", rustix::fs::XattrFlags::empty()).unwrap();
    // sparse files: holes kept
    let sp = fs::File::create(root.join("sparse-small")).unwrap();
    sp.set_len(10 * 1024 * 1024).unwrap();
    sp.write_all_at(&data(5000, 7), 3 * 1024 * 1024).unwrap();
    if with_big_sparse {
        // multi-GiB sparse file with data at the start, middle and end
        let big = fs::File::create(root.join("sparse-5GiB")).unwrap();
        let len = 5u64 << 30;
        big.set_len(len).unwrap();
        big.write_all_at(&data(100_000, 1), 0).unwrap();
        big.write_all_at(&data(100_000, 2), len / 2).unwrap();
        big.write_all_at(&data(100_000, 3), len - 100_000).unwrap();
    }
    // mtimes with nanoseconds, set last (children first)
    let mut t = 1_600_000_000_123_456_789i64;
    let mut paths: Vec<_> = walk(root).into_iter().map(|(p, _)| p).collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in paths {
        t += 1_000_000_001;
        set_times(&root.join(&p), t);
    }
    fs::set_permissions(root.join("readonly-dir"), fs::Permissions::from_mode(0o555)).unwrap();
    set_times(&root.join("readonly-dir"), 1_500_000_000_000_000_001);
}

/// Every entry below root (relative path, lstat).
pub fn walk(root: &Path) -> Vec<(std::path::PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), m));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Everything about one entry that a restore must reproduce.
#[derive(Debug, PartialEq, Eq)]
pub struct Attrs {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub content: Option<String>,
    pub target: Option<Vec<u8>>,
    pub rdev: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// index of the first path sharing this inode (hardlink structure)
    pub link_group: Option<String>,
    /// file is sparse (allocates less than a tenth of its size)
    pub sparse: bool,
}

/// Collect attributes of every entry under root (excluding root itself).
pub fn attrs(root: &Path) -> BTreeMap<String, Attrs> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    for (rel, m) in walk(root) {
        let p = root.join(&rel);
        let key = String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned();
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else {
            "other"
        };
        let content = if ft.is_file() {
            // hash the data ranges with their offsets: equal content *and*
            // equal hole layout, without reading gigabytes of holes
            let f = fs::File::open(&p).unwrap();
            let mut h = blake3::Hasher::new();
            for (off, len) in
                omesh_core::fsutil::data_ranges(&f, m.size(), omesh_core::fsutil::sparse_hint(&m)).unwrap()
            {
                h.update(&off.to_le_bytes());
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, off).unwrap();
                h.update(&buf);
            }
            Some(h.finalize().to_hex().to_string())
        } else {
            None
        };
        let target =
            if ft.is_symlink() { Some(fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()) } else { None };
        let mut xattrs = Vec::new();
        if !ft.is_symlink() {
            let mut buf = vec![0u8; 65536];
            let n = rustix::fs::llistxattr(&p, &mut buf[..]).unwrap_or(0);
            for name in buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
                let mut v = vec![0u8; 65536];
                let k = rustix::fs::lgetxattr(&p, std::ffi::OsStr::from_bytes(name), &mut v[..]).unwrap();
                v.truncate(k);
                xattrs.push((name.to_vec(), v));
            }
            xattrs.sort();
        }
        let link_group = if ft.is_file() && m.nlink() > 1 {
            Some(inodes.entry(m.ino()).or_insert_with(|| key.clone()).clone())
        } else {
            None
        };
        out.insert(
            key,
            Attrs {
                kind: kind.into(),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_file() { m.size() } else { 0 },
                mtime_ns: if ft.is_symlink() || ft.is_file() || ft.is_dir() || ft.is_fifo() {
                    m.mtime() * 1_000_000_000 + m.mtime_nsec()
                } else {
                    0
                },
                content,
                target,
                rdev: m.rdev(),
                xattrs,
                link_group,
                sparse: ft.is_file() && m.size() > 1 << 20 && m.blocks() * 512 < m.size() / 10,
            },
        );
    }
    out
}

/// Assert two trees are identical, with a readable diff.
#[track_caller]
pub fn assert_same(a: &Path, b: &Path) {
    let x = attrs(a);
    let y = attrs(b);
    let ka: Vec<_> = x.keys().collect();
    let kb: Vec<_> = y.keys().collect();
    assert_eq!(ka, kb, "entry names differ between {} and {}", a.display(), b.display());
    for (k, va) in &x {
        let vb = &y[k];
        assert_eq!(va, vb, "entry {k} differs");
    }
}

/// [`assert_same`] for a copy that keeps no holes (a tar extraction, a
/// FUSE mount): file content compared as bytes, sparseness not compared.
pub fn assert_same_content(a: &Path, b: &Path) {
    let norm = |root: &Path| -> BTreeMap<String, Attrs> {
        let mut m = attrs(root);
        for (rel, md) in walk(root) {
            if md.is_file() {
                let v = m.get_mut(&*String::from_utf8_lossy(rel.as_os_str().as_bytes())).unwrap();
                v.content = Some(blake3::hash(&fs::read(root.join(&rel)).unwrap()).to_hex().to_string());
                v.sparse = false;
            }
        }
        m
    };
    let (x, y) = (norm(a), norm(b));
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{} and {}", a.display(), b.display());
    for (k, v) in &x {
        assert_eq!(Some(v), y.get(k), "{k} differs in {}", b.display());
    }
}
