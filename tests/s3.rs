//! The S3 target against a real Garage server: round trip, incremental
//! uploads, a killed upload that resumes, clear errors, and a server that
//! dies in the middle of a backup.

use crate::common::garage::Garage;
use crate::common::mesh::Site;
use crate::common::{restored, s, tree};
use std::fs;
use std::os::unix::process::ExitStatusExt;

fn data(root: &std::path::Path, files: usize, size: usize, seed: u64) {
    fs::create_dir_all(root).unwrap();
    for i in 0..files {
        fs::write(root.join(format!("f{i:04}.bin")), tree::data(size, seed + i as u64)).unwrap();
    }
}

/// srv-a backs up to the bucket only (factor 1); srv-new restores.
fn setup(t: &std::path::Path, g: &Garage, extra: &str) -> Site {
    let mut site = Site::new(t, &[("srv-a", "r0"), ("srv-new", "r9")]);
    site.write_config("srv-a", &[], 1, &g.toml("rack", extra));
    site.write_config("srv-new", &[], 1, &g.toml("rack", extra));
    site.env = g.env();
    site
}

#[test]
fn round_trip_incremental_and_restore_on_a_new_node() {
    let t = tempfile::tempdir().unwrap();
    let g = Garage::start(&t.path().join("garage"));
    let site = setup(t.path(), &g, "");
    let src = t.path().join("src");
    tree::make_full(&src, false);
    data(&src.join("bulk"), 30, 300_000, 1);
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    assert_eq!(r["replicas"][0]["peer"], "rack");
    let (objs1, bytes1) = g.usage("site-1/srv-a/");
    assert!(objs1 >= 3 && bytes1 > 9_000_000, "bucket holds {objs1} objects, {bytes1} bytes");

    // a second backup uploads only the new data
    fs::write(src.join("bulk/new.bin"), tree::data(500_000, 77)).unwrap();
    let r2 = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    let sent = r2["replicas"][0]["bytes_sent"].as_u64().unwrap();
    let (objs2, bytes2) = g.usage("site-1/srv-a/");
    assert!(sent > 450_000 && sent < 700_000, "second upload sent {sent} bytes: {r2}");
    assert!(bytes2 - bytes1 < 800_000, "bucket grew by {} bytes for a 500 kB change", bytes2 - bytes1);
    assert_eq!(objs2 - objs1, 3, "one pack, its index and the snapshot were added");

    // listing shows the bucket as a replica; verify reads it back
    let list = site.omesh("srv-a", &["snapshots", "--json"]).ok().json_list();
    let last = list.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["replicas"][0]["kind"], "s3", "{last}");
    assert_eq!(last["fully_replicated"], true);
    site.omesh("srv-a", &["verify", "--s3", "rack", "--read-data"]).ok();

    // a brand-new node restores from the bucket
    let exported = t.path().join("a.key");
    site.omesh("srv-a", &["key", "export", "--out", s(&exported)]).ok();
    site.omesh("srv-new", &["key", "import", s(&exported)]).ok();
    let target = t.path().join("r");
    let rr = site
        .omesh("srv-new", &["restore", "latest", "--source", "srv-a", "--from", "s3", "--target", s(&target), "--json"])
        .ok()
        .json();
    tree::assert_same(&src, &restored(&target, &src));
    assert_eq!(rr["sources"][0]["peer"], "rack");
}

#[test]
fn a_killed_upload_resumes_sending_only_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let g = Garage::start(&t.path().join("garage"));
    let site = setup(t.path(), &g, "pack_size = \"1 MiB\"\nparallel_uploads = 1");
    let src = t.path().join("src");
    data(&src, 40, 250_000, 5);
    // SIGKILLed right after the third pack reached the bucket
    let out = site
        .command("srv-a", &["backup", s(&src), "--json"])
        .env("OMESH_FAILPOINT", "s3.pack_uploaded:3")
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, partial) = g.usage("site-1/srv-a/packs/");
    assert!(partial > 2_000_000, "packs before the kill: {partial}");
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]);
    // the local snapshot was already written by the killed run: this run
    // replicates the new (identical) snapshot and only the missing packs
    let r = r.ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let sent = r["replicas"][0]["bytes_sent"].as_u64().unwrap();
    let (_, total) = g.usage("site-1/srv-a/packs/");
    assert!(
        sent + partial <= total + 1_100_000,
        "resumed upload re-sent data: sent {sent}, had {partial}, total {total}"
    );
    site.omesh("srv-a", &["verify", "--s3", "rack", "--read-data"]).ok();
}

#[test]
fn errors_name_the_target_and_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let mut g = Garage::start(&t.path().join("garage"));
    let mut site = setup(t.path(), &g, "");
    let src = t.path().join("src");
    data(&src, 3, 10_000, 9);
    // wrong credentials
    site.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "GKwrongwrongwrong".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "0".repeat(64)),
    ];
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).code(6);
    let e = r.json()["replicas"][0]["error"].as_str().unwrap().to_string();
    assert!(e.contains("\"rack\"") && e.contains("credentials"), "{e}");
    // missing bucket
    site.env = g.env();
    site.write_config(
        "srv-a",
        &[],
        1,
        &g.toml("rack", "").replace("bucket = \"backups\"", "bucket = \"no-such-bucket\""),
    );
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).code(6);
    let e = r.json()["replicas"][0]["error"].as_str().unwrap().to_string();
    assert!(e.contains("does not exist"), "{e}");
    // unreachable endpoint
    site.write_config("srv-a", &[], 1, &g.toml("rack", ""));
    g.kill();
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).code(6);
    let e = r.json()["replicas"][0]["error"].as_str().unwrap().to_string();
    assert!(e.contains("unreachable"), "{e}");
    let st = site.omesh("srv-a", &["status", "--json"]).ok().json();
    assert_eq!(st["s3"][0]["reachable"], false, "{st}");
    // back up: the snapshots that were not protected get there
    g.restart();
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true);
}

#[test]
fn server_stopped_during_a_backup_then_a_later_run_succeeds() {
    let t = tempfile::tempdir().unwrap();
    let mut g = Garage::start(&t.path().join("garage"));
    let site = setup(t.path(), &g, "pack_size = \"1 MiB\"\nparallel_uploads = 1");
    let src = t.path().join("src");
    data(&src, 30, 250_000, 11);
    // omesh freezes itself right after the first pack is uploaded
    let child = site
        .command("srv-a", &["backup", s(&src), "--json"])
        .env("OMESH_FAILPOINT", "s3.pack_uploaded:1:stop")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let st = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::UNTRACED).unwrap().unwrap();
    assert!(st.1.stopped(), "omesh did not reach the failpoint");
    // the S3 server dies while omesh is in the middle of the upload
    g.kill();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["replicas"][0]["error"].as_str().unwrap().contains("unreachable"), "{j}");
    // later, with the server back
    g.restart();
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    site.omesh("srv-a", &["verify", "--s3", "rack", "--read-data"]).ok();
}

#[test]
fn uploads_to_a_bucket_keep_to_the_bandwidth_limit() {
    let t = tempfile::tempdir().unwrap();
    let g = Garage::start(&t.path().join("garage"));
    let mut site = Site::new(t.path(), &[("srv-a", "r0")]);
    // 16 Mbit/s = 2 MB/s
    site.write_config("srv-a", &[], 1, &format!("{}[bandwidth]\nlimit = \"16 Mbit/s\"\n", g.toml("rack", "")));
    site.env = g.env();
    let src = t.path().join("src");
    // incompressible, 6 MB: about three seconds at the limit
    data(&src, 3, 2_000_000, 5);
    let t0 = std::time::Instant::now();
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    let wall = t0.elapsed().as_secs_f64();
    let rep = &r["replicas"][0];
    assert_eq!(rep["ok"], true, "{r}");
    let bytes = rep["bytes_sent"].as_f64().unwrap();
    assert!(bytes > 5_900_000.0, "{rep}");
    let rate = bytes / rep["seconds"].as_f64().unwrap();
    assert!(rate <= 2.2e6, "the upload ran at {rate:.0} B/s, limit 2e6: {rep}");
    assert!(bytes / wall <= 2.2e6, "{bytes} bytes in {wall}s");
}

#[test]
fn mesh_sync_counts_the_bucket_as_a_replica() {
    let t = tempfile::tempdir().unwrap();
    let g = Garage::start(&t.path().join("garage"));
    let mut site = Site::new(t.path(), &[("a", "r0"), ("b", "r1"), ("c", "r2")]);
    let bucket = g.toml("rack", "");
    // factor 2: a's snapshots go to b and to the bucket
    site.write_config("a", &["b".into()], 2, &bucket);
    site.write_config("b", &["a".into(), "c".into()], 2, &bucket);
    site.write_config("c", &["a".into(), "b".into()], 2, &bucket);
    site.env = g.env();
    let _b = site.start("b");
    let src = t.path().join("src");
    data(&src, 4, 200_000, 11);
    let r = site.omesh("a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let mut to: Vec<&str> = r["replicas"].as_array().unwrap().iter().map(|x| x["peer"].as_str().unwrap()).collect();
    to.sort();
    assert_eq!(to, ["b", "rack"], "{r}");
    // c sees two replicas in two failure domains: nothing to repair
    let rep = site.omesh("c", &["sync", "--json"]).ok().json();
    assert_eq!(rep["under_replicated"], 0, "{rep}");
    assert!(rep["repaired"].as_array().unwrap().is_empty(), "{rep}");
}
