//! A flipped byte in a pack: verify names the damage, restore refuses to
//! write wrong bytes and restores everything else.

use crate::common::{alter_keeping_check, backup, init_small, omesh, packs, restored, s, tree};
use omesh_core::store::pack;
use std::fs;
use std::path::PathBuf;

/// The first blob record in the store's packs: its pack file and entry.
fn first_blob(store: &std::path::Path) -> (PathBuf, pack::PackEntry) {
    packs(store)
        .into_iter()
        .find_map(|p| {
            let res = pack::scan(&p, None, |_, _| {}).unwrap();
            res.entries.iter().find(|e| e.kind == omesh_proto::ObjectKind::Blob).map(|e| (p.clone(), *e))
        })
        .expect("a blob record")
}

#[test]
fn flipped_byte_is_reported_and_never_restored() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("file{i:02}")), tree::data(30_000, i)).unwrap();
    }
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&src]);
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();

    // find a blob record and flip one byte in its body
    let (pack_path, entry) = first_blob(&store);
    let mut bytes = fs::read(&pack_path).unwrap();
    let at = entry.offset as usize + entry.len as usize / 2;
    bytes[at] ^= 0x20;
    fs::write(&pack_path, &bytes).unwrap();

    // structure check does not read data; read-data finds it and names the file
    let v = omesh(["verify", "--store", s(&store), "--read-data", "--json"]).code(4).json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["damaged_objects"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["damaged_objects"][0]["id"].as_str().unwrap(), entry.id.to_hex());
    let paths = v["damaged_snapshots"][0]["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 1, "{v}");
    let damaged_path = paths[0].as_str().unwrap().split(' ').next().unwrap().to_string();
    let human = omesh(["verify", "--store", s(&store), "--read-data"]).code(4);
    assert!(human.stdout.contains(&damaged_path), "{}", human.stdout);

    // restore: the damaged file fails loudly and is not created; the rest is intact
    let target = t.path().join("r");
    let r = omesh(["restore", "--store", s(&store), "latest", "--target", s(&target), "--json"]).code(4);
    assert!(r.stderr.contains(&damaged_path), "error does not name the file: {}", r.stderr);
    let out = restored(&target, &src);
    let name = std::path::Path::new(&damaged_path).file_name().unwrap();
    assert!(!out.join(name).exists(), "damaged file was written");
    let leftovers: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".omesh"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    for i in 0..20 {
        let n = format!("file{i:02}");
        if n != name.to_string_lossy() {
            assert_eq!(fs::read(out.join(&n)).unwrap(), tree::data(30_000, i), "{n} restored wrong");
        }
    }
    // restoring over an existing good copy keeps it (no wrong bytes written)
    fs::write(out.join(name), b"previous content").unwrap();
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).code(4);
    assert_eq!(fs::read(out.join(name)).unwrap(), b"previous content");
}

#[test]
fn damaged_index_is_rebuilt_from_packs() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), tree::data(200_000, 1)).unwrap();
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&src]);
    // destroy the index entirely
    fs::write(store.join("index.redb"), b"garbage").unwrap();
    let target = t.path().join("r");
    omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));
    let r = omesh(["repair", "index", "--store", s(&store), "--json"]).ok().json();
    assert!(r["objects"].as_u64().unwrap() > 5);
    omesh(["verify", "--store", s(&store), "--read-data"]).ok();
}

/// A record altered on disk with its check hash recomputed (as anyone can)
/// passes the check but not the seal the index recorded: restore refuses
/// it and says it was altered, before trying to decrypt it.
#[test]
fn a_record_altered_with_a_recomputed_check_is_refused_by_its_seal() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), tree::data(30_000, 1)).unwrap();
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&src]);
    let (pack_path, entry) = first_blob(&store);
    let mut bytes = fs::read(&pack_path).unwrap();
    let (start, len) = (entry.offset as usize, entry.len as usize);
    alter_keeping_check(&mut bytes[start..start + len], 1, 0x55);
    fs::write(&pack_path, &bytes).unwrap();

    let target = t.path().join("r");
    let r = omesh(["restore", "--store", s(&store), "latest", "--target", s(&target)]).code(4);
    assert!(r.stderr.contains("altered after it was stored"), "{}", r.stderr);
    assert!(!restored(&target, &src).join("f").exists(), "an altered chunk was restored");
}

#[test]
fn a_pack_whose_records_shifted_counts_every_object_it_can_no_longer_read() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        fs::write(src.join(format!("file{i:02}")), tree::data(30_000, 100 + i)).unwrap();
    }
    let store = t.path().join("store");
    init_small(&store);
    backup(&store, &[&src]);
    // a torn write: bytes that belong to no record right after a pack's
    // header, so every record of that pack is whole but sits past where the
    // index places it
    let (pack_path, _) = first_blob(&store);
    let records = pack::scan(&pack_path, None, |_, _| {}).unwrap().entries.len();
    assert!(records > 3, "a pack of {records} records tests little");
    let mut bytes = fs::read(&pack_path).unwrap();
    bytes.splice(pack::PACK_MAGIC.len()..pack::PACK_MAGIC.len(), *b"torn");
    fs::write(&pack_path, &bytes).unwrap();
    let v = omesh(["verify", "--store", s(&store), "--read-data", "--json"]).code(4).json();
    let damaged = v["damaged_objects"].as_array().unwrap();
    let ids: std::collections::HashSet<&str> =
        damaged.iter().filter_map(|d| d["id"].as_str()).filter(|i| !i.is_empty()).collect();
    assert_eq!(ids.len(), records, "every record of the pack is unreadable where the index says: {v}");
    let reason =
        damaged.iter().find(|d| !d["id"].as_str().unwrap_or("").is_empty()).unwrap()["reason"].as_str().unwrap();
    assert!(reason.contains("where the index places it"), "{reason}");
}

#[test]
fn verify_read_data_subset_reads_part_of_the_packs_and_its_slices_find_damage_in_exactly_one() {
    use crate::common::{backup, init_small, omesh, packs, s, tree};
    use std::os::unix::fs::FileExt;
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        std::fs::write(src.join(format!("f{i}")), tree::data(200_000, i)).unwrap();
    }
    backup(&store, &[&src]);
    let all = packs(&store);
    assert!(all.len() >= 6, "{} packs", all.len());
    // damage a data pack in the middle of a record: one the structure
    // check alone does not notice (no tree or list in it)
    let flip = |p: &std::path::Path| {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 5000).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], 5000).unwrap();
    };
    let victim = all
        .iter()
        .find(|p| {
            flip(p);
            let structure_ok = omesh(["verify", "--store", s(&store)]).code == 0;
            if !structure_ok {
                flip(p);
            }
            structure_ok
        })
        .expect("a pack of file data only");

    let mut read = 0;
    let mut damaged_in = Vec::new();
    for n in 1..=3 {
        let r = omesh(["verify", "--store", s(&store), "--read-data-subset", &format!("{n}/3"), "--json"]);
        let v = r.json();
        assert_eq!(v["packs_total"], all.len() as u64);
        read += v["packs_read"].as_u64().unwrap();
        if r.code == 4 {
            damaged_in.push(n);
            assert!(v["damaged_objects"].to_string().contains(victim.file_name().unwrap().to_str().unwrap()), "{v}");
        } else {
            assert_eq!(r.code, 0, "{}", r.stderr);
        }
    }
    assert_eq!(read, all.len() as u64, "the three slices read every pack once");
    assert_eq!(damaged_in.len(), 1, "the damaged pack is in exactly one slice: {damaged_in:?}");
    let v = omesh(["verify", "--store", s(&store), "--read-data-subset", "100%", "--json"]).code(4).json();
    assert_eq!(v["packs_read"], all.len() as u64);
    let v = omesh(["verify", "--store", s(&store), "--read-data-subset", "1B", "--json"]).json();
    assert_eq!(v["packs_read"], 1, "a size reads packs until it is reached: {v}");
    let r = omesh(["verify", "--store", s(&store), "--read-data-subset", "7/3"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--read-data-subset \"7/3\""), "{}", r.stderr);
}
