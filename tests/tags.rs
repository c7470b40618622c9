//! `omesh tag` and the filters of `omesh forget`: a retag writes only a
//! new snapshot record, and tags and filters change what retention keeps,
//! locally and on a peer that stores the snapshots without their key.

use crate::common::mesh::{Site, stored_snapshots};
use crate::common::{init_small, omesh, packs, s};
use std::fs;

fn ids_with_tags(list: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(String, Vec<String>)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let tags = x["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
            (x["id"].as_str().unwrap().to_string(), tags)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_retag_rewrites_only_the_record_and_filters_choose_what_forget_considers() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), crate::common::tree::data(400_000, 51)).unwrap();
    let mut ids = Vec::new();
    for (i, tag) in ["nightly", "nightly", "manual"].iter().enumerate() {
        fs::write(src.join("n"), format!("{i}")).unwrap();
        let r = omesh(["backup", "--store", s(&store), s(&src), "--tag", tag, "--json"]).ok().json();
        ids.push(r["snapshot"].as_str().unwrap().to_string());
    }
    let packs_before = packs(&store);

    // add a tag to the first: a new id, the same tree, no data written
    let r = omesh(["tag", "--store", s(&store), &ids[0][..12], "--add", "keep", "--json"]).ok().json();
    let item = &r["items"][0];
    assert_eq!(item["snapshot"], ids[0].as_str());
    let first = item["new"].as_str().unwrap().to_string();
    assert_ne!(first, ids[0]);
    assert_eq!(item["tags"], serde_json::json!(["nightly", "keep"]));
    let list = omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list();
    let got = ids_with_tags(&list);
    assert_eq!(got.len(), 3, "{list}");
    assert!(!got.iter().any(|(id, _)| *id == ids[0]), "the old record is gone");
    assert!(got.contains(&(first.clone(), vec!["nightly".into(), "keep".into()])));
    assert_eq!(packs(&store), packs_before, "no pack written: only the snapshot record changed");
    let ls = omesh(["ls", "--store", s(&store), &first, "--json"]).ok().stdout;
    assert!(ls.contains(&format!("\"{}/f\"", s(&src))), "the retagged snapshot reads as before: {ls}");
    // the same change again changes nothing
    let r = omesh(["tag", "--store", s(&store), &first, "--add", "keep", "--json"]).ok().json();
    assert_eq!((r["changed"].as_u64(), &r["items"][0]["new"]), (Some(0), &serde_json::Value::Null));
    // bad changes are usage errors
    assert_eq!(omesh(["tag", "--store", s(&store), "latest", "--add", "a,b"]).code, 2);
    assert_eq!(omesh(["tag", "--store", s(&store), "--add", "x"]).code, 2);
    assert_eq!(omesh(["tag", "--store", s(&store), "latest"]).code, 2);

    // forget with a filter considers only the chosen ones: keep-last 1 of
    // the nightly ones forgets the older nightly and leaves manual alone
    let r = omesh(["forget", "--store", s(&store), "--keep-last", "1", "--tag", "nightly", "--json"]).ok().json();
    assert_eq!((r["forgotten"].as_u64(), r["kept"].as_u64()), (Some(1), Some(1)), "{r}");
    let left: Vec<String> = ids_with_tags(&omesh(["snapshots", "--store", s(&store), "--json"]).ok().json_list())
        .into_iter()
        .map(|x| x.0)
        .collect();
    assert!(left.contains(&ids[2]) && left.contains(&ids[1]) && !left.contains(&first), "{left:?}");

    // tags decide the groups: with group_by paths,tags each tag set keeps
    // its own last; retagged into one set, only the newest stays
    let r = omesh(["forget", "--store", s(&store), "--keep-last", "1", "--group-by", "paths,tags", "-n", "--json"])
        .ok()
        .json();
    assert_eq!(r["forgotten"].as_u64(), Some(0), "{r}");
    omesh(["tag", "--store", s(&store), "--tag", "manual", "--set", "nightly"]).ok();
    let r =
        omesh(["forget", "--store", s(&store), "--keep-last", "1", "--group-by", "paths,tags", "--json"]).ok().json();
    assert_eq!((r["forgotten"].as_u64(), r["kept"].as_u64()), (Some(1), Some(1)), "{r}");
}

#[test]
fn a_retag_reaches_the_storing_peer_whose_retention_then_groups_by_the_new_tags() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "rack-0"), ("srv-b", "rack-1")]);
    let retention = "[retention]\nkeep_last = 1\ngroup_by = \"paths,tags\"\nhonor_source_deletes = true\n";
    site.write_config("srv-a", &["srv-b".into()], 1, "[retention]\nkeep_last = 5\n");
    site.write_config("srv-b", &["srv-a".into()], 1, retention);
    let _b = site.start("srv-b");
    let _a = site.start("srv-a");
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    for (i, tag) in ["db", "web"].iter().enumerate() {
        fs::write(src.join("f"), format!("version {i}")).unwrap();
        let r = site.omesh("srv-a", &["backup", s(&src), "--tag", tag, "--json"]).ok().json();
        assert_eq!(r["protected"], true, "{r}");
        ids.push(r["snapshot"].as_str().unwrap().to_string());
    }
    let b = site.node("srv-b");
    let mut both = ids.clone();
    both.sort();
    assert_eq!(stored_snapshots(b, "srv-a"), both);
    // srv-b cannot read the records: it groups by the signed groups, and
    // two tag sets are two groups, each keeping its last
    let r = site.omesh("srv-b", &["forget", "--json"]).ok().json();
    assert_eq!(r["forgotten"].as_u64(), Some(0), "{r}");
    // a filter on another source's snapshots cannot be judged there
    let r = site.omesh("srv-b", &["forget", "--source", "srv-a", "--tag", "db"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot read"), "{}", r.stderr);

    // retag the db snapshot as web on srv-a: srv-b gets the new record and
    // forgets the old one
    let r = site.omesh("srv-a", &["tag", "--tag", "db", "--set", "web", "--json"]).ok().json();
    let new = r["items"][0]["new"].as_str().unwrap().to_string();
    assert_eq!(r["items"][0]["replicas"], serde_json::json!(["srv-b"]), "{r}");
    assert!(r["peers"].as_array().unwrap().iter().all(|p| p["forgotten"] == true), "{r}");
    let mut now = vec![new.clone(), ids[1].clone()];
    now.sort();
    assert_eq!(stored_snapshots(b, "srv-a"), now, "srv-b holds the new record, not the old");
    // now both are in one group there: retention keeps only one (the
    // newer; a holder counts signed whole seconds, and both backups may
    // have started in the same second, so which one is not asserted)
    let r = site.omesh("srv-b", &["forget", "--json"]).ok().json();
    assert_eq!(r["forgotten"].as_u64(), Some(1), "{r}");
    let kept = stored_snapshots(b, "srv-a");
    assert!(kept.len() == 1 && now.contains(&kept[0]), "{kept:?}");
    // on the source, a filtered forget considers only its snapshots the
    // filter chooses
    site.omesh("srv-a", &["backup", s(&src), "--tag", "other"]).ok();
    let r = site.omesh("srv-a", &["forget", "--tag", "web", "--dry-run", "--json"]).ok().json();
    let mut seen: Vec<String> =
        r["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    seen.sort();
    assert_eq!(seen, now, "{r}");
}
