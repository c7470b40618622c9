//! The mesh with real daemons: placement, incremental replication,
//! restore onto a brand-new node, and restores that survive a replica
//! being killed or serving corrupted data.

use crate::common::mesh::{Site, stored_snapshots};
use crate::common::{restored, s, tree};
use std::fs;
use std::path::{Path, PathBuf};

fn data(root: &std::path::Path, files: usize, size: usize, seed: u64) {
    fs::create_dir_all(root).unwrap();
    for i in 0..files {
        fs::write(root.join(format!("f{i:04}.bin")), tree::data(size, seed + i as u64)).unwrap();
    }
}

#[test]
fn factor_two_lands_on_two_domains_second_backup_sends_only_new_and_fresh_node_restores() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(
        t.path(),
        &[("srv-a", "rack-0"), ("srv-b", "rack-1"), ("srv-c", "rack-1"), ("srv-d", "rack-2"), ("srv-e", "rack-3")],
    );
    // srv-e is the brand-new server: its peers are b, c, d; nobody lists it
    site.write_config("srv-e", &["srv-b".into(), "srv-c".into(), "srv-d".into()], 2, "");
    for n in ["srv-a", "srv-b", "srv-c", "srv-d"] {
        site.write_config(
            n,
            &["srv-a", "srv-b", "srv-c", "srv-d"]
                .iter()
                .filter(|p| **p != n)
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
            2,
            "",
        );
    }
    let _b = site.start("srv-b");
    let _c = site.start("srv-c");
    let _d = site.start("srv-d");
    let _a = site.start("srv-a");
    let src = t.path().join("src");
    tree::make_full(&src, false);
    data(&src.join("bulk"), 40, 200_000, 1);

    // through srv-a's daemon (control socket)
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let ok: Vec<&serde_json::Value> = r["replicas"].as_array().unwrap().iter().filter(|x| x["ok"] == true).collect();
    assert_eq!(ok.len(), 2, "{r}");
    let domains: std::collections::HashSet<&str> = ok.iter().map(|x| x["domain"].as_str().unwrap()).collect();
    assert_eq!(domains.len(), 2, "replicas share a failure domain: {r}");
    assert!(domains.contains("rack-2"), "srv-d (the only rack-2 peer) must hold a replica: {r}");
    let snap = r["snapshot"].as_str().unwrap().to_string();
    let holders: Vec<&str> = ["srv-b", "srv-c", "srv-d"]
        .into_iter()
        .filter(|n| stored_snapshots(site.node(n), "srv-a").contains(&snap))
        .collect();
    assert_eq!(holders.len(), 2, "snapshot stored on {holders:?}");
    let first_sent: u64 = ok.iter().map(|x| x["bytes_sent"].as_u64().unwrap()).sum();

    // the listing shows where replicas are and that it is fully replicated
    let list = site.omesh("srv-a", &["snapshots", "--json"]).ok().json_list();
    let entry = list.as_array().unwrap().iter().find(|e| e["id"] == snap.as_str()).unwrap().clone();
    assert_eq!(entry["fully_replicated"], true, "{entry}");
    assert_eq!(entry["replica_count"], 2, "{entry}");

    // second backup after a small change sends only the new objects
    fs::write(src.join("bulk/new.bin"), tree::data(300_000, 99)).unwrap();
    let r2 = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    let ok2: Vec<&serde_json::Value> = r2["replicas"].as_array().unwrap().iter().filter(|x| x["ok"] == true).collect();
    assert_eq!(ok2.len(), 2);
    for x in &ok2 {
        let sent = x["bytes_sent"].as_u64().unwrap();
        assert!(sent < 400_000, "second backup sent {sent} bytes to {} for a 300 kB change", x["peer"]);
        assert!(sent > 300_000 * 9 / 10, "new data was not sent to {}: {sent}", x["peer"]);
    }
    let second_sent: u64 = ok2.iter().map(|x| x["bytes_sent"].as_u64().unwrap()).sum();
    assert!(second_sent * 10 < first_sent);
    // the node's own counters agree with what the backups reported
    let st = site.omesh("srv-a", &["status", "--json"]).ok().json();
    for x in &ok2 {
        let peer = x["peer"].as_str().unwrap();
        let p = st["peers"].as_array().unwrap().iter().find(|p| p["name"] == peer).unwrap();
        let counted = p["counters"]["bytes_sent"].as_u64().unwrap();
        let reported: u64 = [&r, &r2]
            .iter()
            .flat_map(|rr| rr["replicas"].as_array().unwrap().iter())
            .filter(|y| y["peer"] == peer)
            .map(|y| y["bytes_sent"].as_u64().unwrap())
            .sum();
        assert_eq!(counted, reported, "daemon counters for {peer}");
        assert!(p["holds_our_bytes"].as_u64().unwrap() > 0);
    }

    // srv-a is lost; brand-new srv-e has only its certificate, the CA and the exported key
    let exported = t.path().join("srv-a.key");
    site.omesh("srv-a", &["key", "export", "--out", s(&exported)]).ok();
    drop(_a);
    site.omesh("srv-e", &["key", "import", s(&exported)]).ok();
    let target = t.path().join("restore-on-e");
    let rr =
        site.omesh("srv-e", &["restore", "latest", "--source", "srv-a", "--target", s(&target), "--json"]).ok().json();
    tree::assert_same(&src, &restored(&target, &src));
    let used: Vec<&str> = rr["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["objects"].as_u64().unwrap_or(0) > 0)
        .map(|u| u["peer"].as_str().unwrap())
        .collect();
    assert!(
        !used.is_empty() && used.iter().all(|u| holders.contains(u) || ok2.iter().any(|x| x["peer"] == *u)),
        "{rr}"
    );
}

/// n1's generated data backed up with factor 2 to n2 and n3 (their daemons
/// stopped again); n4, a new node peering with n2 and n3, holds n1's
/// exported key. Returns the site and the source directory.
fn replicated_to_two(root: &Path, files: usize, size: usize, seed: u64) -> (Site, PathBuf) {
    let site = Site::new(root, &[("n1", "r1"), ("n2", "r2"), ("n3", "r3"), ("n4", "r4")]);
    for n in ["n1", "n2", "n3"] {
        let peers: Vec<String> = ["n1", "n2", "n3"].iter().filter(|p| **p != n).map(|p| p.to_string()).collect();
        site.write_config(n, &peers, 2, "");
    }
    site.write_config("n4", &["n2".into(), "n3".into()], 1, "");
    let src = root.join("src");
    data(&src, files, size, seed);
    {
        let _n2 = site.start("n2");
        let _n3 = site.start("n3");
        // no daemon on n1: the CLI runs the backup in-process
        let r = site.omesh("n1", &["backup", s(&src), "--json"]).ok().json();
        assert_eq!(r["protected"], true, "{r}");
    }
    let exported = root.join("n1.key");
    site.omesh("n1", &["key", "export", "--out", s(&exported)]).ok();
    site.omesh("n4", &["key", "import", s(&exported)]).ok();
    (site, src)
}

#[test]
fn restore_completes_when_a_replica_is_sigkilled_midway() {
    let t = tempfile::tempdir().unwrap();
    let (site, src) = replicated_to_two(t.path(), 120, 150_000, 7);
    // n2 kills itself (SIGKILL) after serving 10 objects
    let mut n2 = site.start_with_env("n2", &[("OMESH_FAILPOINT", "serve.object:10")]);
    let _n3 = site.start("n3");
    let target = t.path().join("r");
    let rr = site.omesh("n4", &["restore", "latest", "--source", "n1", "--target", s(&target), "--json"]).ok().json();
    use std::os::unix::process::ExitStatusExt;
    let status = n2.try_wait().expect("n2 served at least 10 objects and killed itself mid-restore");
    assert_eq!(status.signal(), Some(9));
    tree::assert_same(&src, &restored(&target, &src));
    let usage = rr["sources"].as_array().unwrap();
    let u2 = usage.iter().find(|u| u["peer"] == "n2").unwrap();
    let u3 = usage.iter().find(|u| u["peer"] == "n3").unwrap();
    assert_eq!(u2["dropped"], true, "{rr}");
    assert!(u2["objects"].as_u64().unwrap() >= 1 && u3["objects"].as_u64().unwrap() >= 1, "both replicas served: {rr}");
}

#[test]
fn a_peer_serving_corrupted_objects_is_detected_and_failed_over() {
    let t = tempfile::tempdir().unwrap();
    let (site, src) = replicated_to_two(t.path(), 60, 100_000, 3);
    // n2 turns malicious: every blob it stores is altered, with a valid
    // check hash (and, below, a re-made index), so only the key holder can tell
    let mut altered = 0;
    for p in crate::common::packs(&site.node("n2").data().join("sources/n1")) {
        let mut bytes = fs::read(&p).unwrap();
        let res = omesh_core::store::pack::scan(&p, None, |_, _| {}).unwrap();
        for e in res.entries.iter().filter(|e| e.kind == omesh_proto::ObjectKind::Blob) {
            let (o, l) = (e.offset as usize, e.len as usize);
            crate::common::alter_keeping_check(&mut bytes[o..o + l], 8, 0x01); // inside the sealed body
            altered += 1;
        }
        fs::write(&p, bytes).unwrap();
    }
    assert!(altered >= 60);
    // n2 recorded each record's seal when it stored it, and would refuse to
    // serve what no longer matches; the attacker throws that index away,
    // so n2 re-indexes the altered records as they are now
    fs::remove_file(site.node("n2").data().join("sources/n1/index.redb")).unwrap();
    let _n2 = site.start("n2");
    let _n3 = site.start("n3");
    // only the malicious peer: fails loudly, writes no wrong byte
    let bad = t.path().join("bad");
    let r = site.omesh("n4", &["restore", "latest", "--source", "n1", "--from", "n2", "--target", s(&bad)]);
    assert_eq!(r.code, 4, "{r:?}");
    let written: Vec<_> = fs::read_dir(restored(&bad, &src)).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(written.is_empty(), "corrupted files were written: {written:?}");
    // both replicas: detected, failed over, identical result
    let target = t.path().join("good");
    let rr = site.omesh("n4", &["restore", "latest", "--source", "n1", "--target", s(&target), "--json"]).ok().json();
    tree::assert_same(&src, &restored(&target, &src));
    let u2 = rr["sources"].as_array().unwrap().iter().find(|u| u["peer"] == "n2").unwrap().clone();
    let bad = u2["bad_objects"].as_u64().unwrap();
    assert!(bad >= 1, "corruption from n2 was not detected: {rr}");
    // after 3 corrupted objects a peer is no longer asked
    assert_eq!(u2["dropped"], bad >= 3, "{rr}");
}
