//! The mesh keeping itself healthy, with real daemons: repair of a peer
//! that was down during the nightly run (and of one whose disk was
//! replaced) without the source, deletion refused inside the retention
//! lock, garbage collection during a backup, scrub repairing a flipped byte
//! from a replica, a bandwidth limit, scheduled backups and the metrics
//! endpoint.

use crate::common::mesh::{Site, free_port, stored_snapshots};
use crate::common::{cmd, restored, s, tree};
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn data(root: &Path, files: usize, size: usize, seed: u64) {
    fs::create_dir_all(root).unwrap();
    for i in 0..files {
        fs::write(root.join(format!("f{i:03}.bin")), tree::data(size, seed + i as u64)).unwrap();
    }
}

fn all_peers(site: &Site, me: &str, names: &[&str]) -> Vec<String> {
    let _ = site;
    names.iter().filter(|n| **n != me).map(|n| n.to_string()).collect()
}

/// Wait for a condition (polling, with a deadline), not for a fixed time.
#[track_caller]
/// Nodes a and b in two failure domains, each the other's only peer,
/// factor 1 (configured, not started).
fn pair(root: &Path) -> Site {
    let site = Site::new(root, &[("a", "r0"), ("b", "r1")]);
    site.write_config("a", &["b".into()], 1, "");
    site.write_config("b", &["a".into()], 1, "");
    site
}

pub(crate) fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_peer_down_at_night_is_repaired_from_peers_without_the_source() {
    let t = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c", "d"];
    let site = Site::new(t.path(), &[("a", "r0"), ("b", "r1"), ("c", "r2"), ("d", "r3")]);
    // a dead peer costs a connect timeout per probe: keep it short here
    let quick = "[transport]\nconnect_timeout_secs = 1\n";
    for n in names {
        site.write_config(n, &all_peers(&site, n, &names), 3, quick);
    }
    // c is down during the nightly run
    let _b = site.start("b");
    let _d = site.start("d");
    let mut a = site.start("a");
    let src = t.path().join("src");
    data(&src, 12, 150_000, 1);
    let r = site.omesh("a", &["backup", s(&src), "--json"]).code(6).json();
    assert_eq!(r["protected"], false, "only two of three peers were up: {r}");
    let snap = r["snapshot"].as_str().unwrap().to_string();
    for n in ["b", "d"] {
        assert!(stored_snapshots(site.node(n), "a").contains(&snap), "{n} should hold it");
    }
    // the source is gone for days: killed, never restarted in this test
    a.kill();
    // c comes back; its sync at start (and this explicit one) repair the
    // missing third replica from b and d
    site.write_config(
        "c",
        &all_peers(&site, "c", &names),
        3,
        &format!("{quick}[sync]\nat_start = true\ninterval_secs = 0\n"),
    );
    let _c = site.start("c");
    let rep = site.omesh("c", &["sync", "--json"]).ok().json();
    assert!(rep["unreachable"].as_array().unwrap().iter().any(|u| u == "a"), "{rep}");
    assert!(stored_snapshots(site.node("c"), "a").contains(&snap), "c did not repair its replica: {rep}");
    site.omesh("c", &["verify", "--source", "a", "--read-data"]).ok();
    // the status of b and d shows what they served to c
    let st = site.omesh("b", &["status", "--json"]).ok().json();
    let to_c = st["peers"].as_array().unwrap().iter().find(|p| p["name"] == "c").unwrap();
    let served_b = to_c["counters"]["bytes_served"].as_u64().unwrap_or(0);
    let st = site.omesh("d", &["status", "--json"]).ok().json();
    let to_c = st["peers"].as_array().unwrap().iter().find(|p| p["name"] == "c").unwrap();
    let served_d = to_c["counters"]["bytes_served"].as_u64().unwrap_or(0);
    assert!(served_b + served_d > 12 * 150_000 / 2, "c's replica did not come from b and d: {served_b} + {served_d}");

    // d's disk is replaced: its replica is gone; d repairs it from b and c
    drop(_d);
    fs::remove_dir_all(site.node("d").data().join("sources")).unwrap();
    let _d = site.start("d");
    let rep = site.omesh("d", &["sync", "--json"]).ok().json();
    assert_eq!(rep["repaired"].as_array().unwrap().len(), 1, "{rep}");
    let from: Vec<&str> = rep["repaired"][0]["from"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(!from.contains(&"a"), "repaired from the source: {rep}");
    site.omesh("d", &["verify", "--source", "a", "--read-data"]).ok();
    // fully replicated: another sync anywhere has nothing to do
    let again = site.omesh("b", &["sync", "--json"]).ok().json();
    assert_eq!(again["under_replicated"], 0, "{again}");

    // a brand-new server restores from the repaired replicas alone
    let exported = t.path().join("a.key");
    cmd().args(["key", "export", "--config", s(&site.node("a").config()), "--out", s(&exported)]).output().unwrap();
    site.omesh("c", &["key", "import", s(&exported)]).ok();
    let target = t.path().join("r");
    site.omesh("c", &["restore", "latest", "--source", "a", "--from", "d", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));
}

#[test]
fn a_delete_requested_by_the_source_is_refused_inside_the_retention_lock() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("a", "r0"), ("b", "r1"), ("c", "r2")]);
    site.write_config("a", &["b".into(), "c".into()], 2, "");
    // both honour source deletes; b under a 30-day lock, c without a lock
    site.write_config("b", &["a".into()], 1, "[retention]\nlock = \"30d\"\nhonor_source_deletes = true\n");
    site.write_config("c", &["a".into()], 1, "[retention]\nhonor_source_deletes = true\n");
    let mut b_daemon = site.start("b");
    let _c = site.start("c");
    let src = t.path().join("src");
    data(&src, 3, 50_000, 5);
    let r = site.omesh("a", &["backup", s(&src), "--json"]).ok().json();
    let snap = r["snapshot"].as_str().unwrap().to_string();
    let f = site.omesh("a", &["forget", &snap[..12], "--json"]).code(3).json();
    assert_eq!(f["items"][0]["removed"], true, "{f}");
    assert!(f["items"][0]["time"].as_str().unwrap().starts_with("20"), "the forgotten snapshot's time: {f}");
    let answers = f["peers"].as_array().unwrap();
    let b = answers.iter().find(|p| p["peer"] == "b").unwrap();
    assert_eq!(b["forgotten"], false, "{f}");
    assert!(b["message"].as_str().unwrap().contains("retention lock"), "{f}");
    let c = answers.iter().find(|p| p["peer"] == "c").unwrap();
    assert_eq!(c["forgotten"], true, "{f}");
    assert!(stored_snapshots(site.node("b"), "a").contains(&snap), "b deleted inside its lock");
    assert!(!stored_snapshots(site.node("c"), "a").contains(&snap));
    // b's own retention cannot forget it either, whatever its rules say
    site.write_config(
        "b",
        &["a".into()],
        1,
        "[retention]\nlock = \"30d\"\nkeep_last = 1\nhonor_source_deletes = true\n",
    );
    b_daemon.kill();
    let mut b_daemon = site.start("b");
    let dry = site.omesh("b", &["forget", "--source", "a", "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["forgotten"], 0, "{dry}");
    // a peer that is down cannot be asked: the answer says so (exit 3)
    fs::write(src.join("more.bin"), b"more").unwrap();
    let r = site.omesh("a", &["backup", s(&src), "--json"]).ok().json();
    let snap2 = r["snapshot"].as_str().unwrap().to_string();
    b_daemon.kill();
    let f = site.omesh("a", &["forget", &snap2[..12], "--json"]).code(3).json();
    let b = f["peers"].as_array().unwrap().iter().find(|p| p["peer"] == "b").cloned().unwrap();
    assert_eq!(b["forgotten"], false, "{f}");
    assert!(b["message"].as_str().unwrap().contains("unreachable"), "{f}");
    // c has no keep_* rule: `forget` without snapshots is a configuration error
    let out = site.omesh("c", &["forget"]).code(2);
    assert!(out.stderr.contains("[retention] has no keep_* rule"), "{}", out.stderr);
}

#[test]
fn gc_while_a_backup_runs_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("a", "r0"), ("b", "r1")]);
    let lifecycle = "[retention]\nkeep_last = 1\n[gc]\ngrace_secs = 0\nrepack_unused = 0.01\n";
    site.write_config("a", &["b".into()], 1, lifecycle);
    site.write_config("b", &["a".into()], 1, lifecycle);
    let _b = site.start("b");
    let release = t.path().join("release");
    let mut a =
        site.start_with_env("a", &[("OMESH_FAILPOINT", &format!("backup.before_commit:3:wait={}", release.display()))]);
    let src = t.path().join("src");
    data(&src.join("v1"), 10, 100_000, 1);
    data(&src.join("shared"), 5, 100_000, 500);
    site.omesh("a", &["backup", s(&src), "--json"]).ok();
    // generation 2 drops v1; generation 1 is forgotten everywhere
    let v1_copy = t.path().join("v1-copy");
    fs::rename(src.join("v1"), &v1_copy).unwrap();
    data(&src.join("v2"), 10, 100_000, 100);
    site.omesh("a", &["backup", s(&src), "--json"]).ok();
    for n in ["a", "b"] {
        let f = site.omesh(n, &["forget", "--json"]).ok().json();
        assert_eq!(f["forgotten"], 1, "{n}: {f}");
    }
    // generation 3 brings half of v1 back (its objects are garbage now) and
    // adds new data; its backup stops just before committing
    fs::create_dir_all(src.join("v1")).unwrap();
    for i in 0..5 {
        let n = format!("f{i:03}.bin");
        fs::copy(v1_copy.join(&n), src.join("v1").join(&n)).unwrap();
    }
    data(&src.join("v3"), 5, 100_000, 200);
    let mut third = site.command("a", &["backup", "--json"]);
    let third = third.arg(s(&src)).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let reached = t.path().join("release.reached");
    wait_until("the third backup to reach its commit", Duration::from_secs(60), || reached.exists());
    // garbage collection on both nodes while that backup is in flight
    let g = site.omesh("a", &["gc", "--json"]).ok().json();
    let ga = &g["stores"][0];
    assert!(ga["condemned"].as_u64().unwrap() > 0, "{g}");
    assert!(ga["waiting"].as_str().unwrap_or("").contains("backup"), "the sweep must wait for the backup: {g}");
    let gb = site.omesh("b", &["gc", "--json"]).ok().json();
    assert!(gb["stores"][0]["swept"].as_u64().unwrap() > 0, "{gb}");
    fs::write(&release, b"").unwrap();
    let out = third.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let r3: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r3["protected"], true, "{r3}");
    // now the sweep goes ahead; then everything is checked byte by byte
    let g2 = site.omesh("a", &["gc", "--json"]).ok().json();
    assert!(g2["stores"][0]["swept"].as_u64().unwrap() > 0, "{g2}");
    site.omesh("b", &["gc", "--json"]).ok();
    site.omesh("a", &["verify", "--read-data"]).ok();
    site.omesh("b", &["verify", "--source", "a", "--read-data"]).ok();
    for from in ["local", "b"] {
        let target = t.path().join(format!("r-{from}"));
        site.omesh("a", &["restore", "latest", "--from", from, "--target", s(&target)]).ok();
        tree::assert_same(&src, &restored(&target, &src));
    }
    a.kill();
}

#[test]
fn scrub_repairs_a_flipped_byte_from_a_replica() {
    let t = tempfile::tempdir().unwrap();
    let site = pair(t.path());
    let _b = site.start("b");
    let _a = site.start("a");
    let src = t.path().join("src");
    data(&src, 8, 200_000, 3);
    site.omesh("a", &["backup", s(&src)]).ok();
    let flip = |store: &Path| {
        let mut ps: Vec<std::path::PathBuf> = Vec::new();
        for d in fs::read_dir(store.join("packs")).unwrap().flatten() {
            ps.extend(fs::read_dir(d.path()).unwrap().flatten().map(|e| e.path()));
        }
        let p = ps.into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap();
        let mut b = fs::read(&p).unwrap();
        let at = b.len() / 3;
        b[at] ^= 0x10;
        fs::write(&p, &b).unwrap();
    };
    // on b's replica of a (no key there: the record check finds it)
    flip(&site.node("b").data().join("sources/a"));
    let r = site.omesh("b", &["scrub", "--rate", "unlimited", "--json"]).ok().json();
    let damaged: usize = r["stores"].as_array().unwrap().iter().map(|s| s["damaged"].as_array().unwrap().len()).sum();
    assert_eq!(damaged, 1, "{r}");
    assert_eq!(r["repaired"].as_array().unwrap().len(), 1, "{r}");
    site.omesh("b", &["verify", "--source", "a", "--read-data"]).ok();
    // on a's own store (repaired from b, checked with the key)
    flip(&site.node("a").data().join("sources/a"));
    let r = site.omesh("a", &["scrub", "--rate", "unlimited", "--json"]).ok().json();
    assert_eq!(r["repaired"].as_array().unwrap().len(), 1, "{r}");
    site.omesh("a", &["verify", "--read-data"]).ok();
    let target = t.path().join("r");
    site.omesh("a", &["restore", "latest", "--from", "local", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));
    // the repair lasts: the next pass finds nothing
    let r = site.omesh("a", &["scrub", "--rate", "unlimited", "--json"]).ok().json();
    let damaged: usize = r["stores"].as_array().unwrap().iter().map(|s| s["damaged"].as_array().unwrap().len()).sum();
    assert_eq!(damaged, 0, "{r}");
}

#[test]
fn a_bandwidth_limit_holds_within_ten_percent() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("a", "r0"), ("b", "r1")]);
    // 16 Mbit/s = 2 MB/s, for replication traffic
    site.write_config("a", &["b".into()], 1, "[bandwidth]\nlimit = \"16 Mbit/s\"\n");
    site.write_config("b", &["a".into()], 1, "");
    let _b = site.start("b");
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // incompressible, 8 MB: about four seconds at the limit
    fs::write(src.join("random.bin"), tree::data(8_000_000, 42)).unwrap();
    let t0 = Instant::now();
    let r = site.omesh("a", &["backup", s(&src), "--json"]).ok().json();
    let wall = t0.elapsed().as_secs_f64();
    let rep = r["replicas"].as_array().unwrap().iter().find(|x| x["ok"] == true).unwrap().clone();
    let bytes = rep["bytes_sent"].as_f64().unwrap();
    let secs = rep["seconds"].as_f64().unwrap();
    let rate = bytes / secs;
    assert!(bytes > 7_900_000.0, "{rep}");
    assert!((1.8e6..=2.2e6).contains(&rate), "replication ran at {rate:.0} B/s, limit 2e6 ± 10%: {rep}");
    // measured from outside too: the whole command cannot beat the limit
    assert!(bytes / wall <= 2.2e6, "{bytes} bytes in {wall}s");
}

#[test]
fn a_scheduled_backup_runs_and_status_and_metrics_report_it() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("a", "r0"), ("b", "r1")]);
    let src = t.path().join("src");
    data(&src, 4, 100_000, 9);
    let port = free_port("127.0.0.1");
    // an interval schedule that has never run runs at start
    site.write_config(
        "a",
        &["b".into()],
        1,
        &format!(
            "[[schedule]]\nname = \"often\"\ninterval_secs = 3600\nrpo_secs = 7200\npaths = [\"{}\"]\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            s(&src)
        ),
    );
    site.write_config("b", &["a".into()], 1, "");
    let _b = site.start("b");
    let _a = site.start("a");
    let mut st = serde_json::Value::Null;
    wait_until("the scheduled backup", Duration::from_secs(60), || {
        st = site.omesh("a", &["status", "--json"]).ok().json();
        st["schedules"][0]["last_success"].is_string()
    });
    let sc = &st["schedules"][0];
    assert_eq!(sc["name"], "often");
    assert_eq!(sc["rpo_met"], true, "{st}");
    assert!(sc["next_run"].is_string(), "{st}");
    let p = &st["protection"];
    assert_eq!(p["replicas"], 1, "{st}");
    assert_eq!(p["rpo_met"], true, "{st}");
    assert!(p["achieved_rpo_secs"].as_u64().unwrap() < 600, "{st}");
    // the snapshot is tagged with its schedule
    let list = site.omesh("a", &["snapshots", "--json"]).ok().json_list();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Prometheus endpoint
    let metrics = scrape(port);
    assert!(metrics.contains("omesh_backups_total{schedule=\"often\",result=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("omesh_backup_duration_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("omesh_rpo_target_seconds{schedule=\"often\"} 7200"), "{metrics}");
    let sent = metrics
        .lines()
        .find(|l| l.starts_with("omesh_peer_sent_bytes_total{peer=\"b\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(sent > 400_000, "{metrics}");
    for m in [
        "omesh_gc_swept_objects_total",
        "omesh_scrub_objects_total",
        "omesh_sync_runs_total",
        "omesh_restore_duration_seconds",
    ] {
        assert!(metrics.contains(m), "{m} missing:\n{metrics}");
    }
}

#[test]
fn a_snapshot_left_on_the_server_alone_does_not_meet_the_rpo() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("a", "r0"), ("b", "r1")]);
    let src = t.path().join("src");
    data(&src, 2, 100_000, 21);
    site.write_config(
        "a",
        &["b".into()],
        1,
        &format!("[[schedule]]\nname = \"often\"\ninterval_secs = 3600\nrpo_secs = 7200\npaths = [\"{}\"]\n", s(&src)),
    );
    site.write_config("b", &["a".into()], 1, "");
    // b is down: the scheduled backup saves the snapshot here only
    let mut a = site.start("a");
    let mut st = serde_json::Value::Null;
    wait_until("the scheduled backup", Duration::from_secs(60), || {
        st = site.omesh("a", &["status", "--json"]).ok().json();
        st["schedules"][0]["last_error"].is_string()
    });
    let sc = &st["schedules"][0];
    assert!(sc["last_success"].is_null(), "{st}");
    assert!(sc["last_error"].as_str().unwrap().contains("not protected"), "{st}");
    assert_eq!(sc["rpo_met"], false, "{st}");
    let p = &st["protection"];
    assert!(p["last_backup"].is_string(), "{st}");
    assert!(p["last_protected_backup"].is_null() && p["achieved_rpo_secs"].is_null(), "{st}");
    assert_eq!(p["rpo_met"], false, "{st}");
    a.kill();

    // b comes up and takes a manual backup's replica; then b loses it
    let _b = site.start("b");
    let r = site.omesh("a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let snap = r["snapshot"].as_str().unwrap().to_string();
    let st = site.omesh("a", &["status", "--json"]).ok().json();
    assert!(st["protection"]["achieved_rpo_secs"].as_u64().is_some(), "{st}");
    assert_eq!(st["protection"]["replica_domains"], 1, "{st}");
    drop(_b);
    fs::remove_dir_all(site.node("b").data().join("sources").join("a")).unwrap();
    let _b = site.start("b");
    // b answers and does not list it: the acknowledgement no longer counts
    let list = site.omesh("a", &["snapshots", "--json"]).ok().json_list();
    let e = list.as_array().unwrap().iter().find(|x| x["id"] == snap.as_str()).unwrap().clone();
    assert_eq!(e["replica_count"], 0, "{e}");
    assert_eq!(e["fully_replicated"], false, "{e}");
}

#[test]
fn a_damaged_snapshot_record_is_healed_only_from_a_copy_that_verifies() {
    let t = tempfile::tempdir().unwrap();
    let site = pair(t.path());
    let _b = site.start("b");
    let _a = site.start("a");
    let src = t.path().join("src");
    data(&src, 2, 50_000, 31);
    let r = site.omesh("a", &["backup", s(&src), "--json"]).ok().json();
    let snap = r["snapshot"].as_str().unwrap().to_string();
    let own = site.node("a").data().join("sources/a/snapshots").join(&snap);
    let replica = site.node("b").data().join("sources/a/snapshots").join(&snap);
    let damage = |p: &Path| {
        let mut b = fs::read(p).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x01;
        fs::write(p, &b).unwrap();
    };
    // 1. b's copy is good: the record comes back from it
    damage(&own);
    let r = site.omesh("a", &["scrub", "--rate", "unlimited", "--json"]).ok().json();
    assert!(r["repaired"].as_array().unwrap().iter().any(|x| x == snap.as_str()), "{r}");
    site.omesh("a", &["verify", "--read-data"]).ok();
    // 2. b serves a forged record: well framed, right id, but not sealed
    // with a's key. a refuses it and reports the damage (exit 4)
    let good = fs::read(&replica).unwrap();
    let (mut rec, _) = omesh_proto::Record::decode(&good).unwrap();
    for x in rec.body.iter_mut() {
        *x = x.wrapping_add(1);
    }
    fs::write(&replica, rec.encode()).unwrap();
    damage(&own);
    let r = site.omesh("a", &["scrub", "--rate", "unlimited", "--json"]).code(4).json();
    assert!(r["unrepaired"].as_array().unwrap().iter().any(|x| x == snap.as_str()), "{r}");
    assert!(!own.exists(), "a forged record was installed in a's own store");
}

#[test]
fn a_second_scrub_says_one_is_running_instead_of_waiting() {
    let t = tempfile::tempdir().unwrap();
    let site = pair(t.path());
    let _b = site.start("b");
    let src = t.path().join("src");
    data(&src, 2, 50_000, 41);
    site.omesh("a", &["backup", s(&src)]).ok();
    // a's daemon holds its first scrub at the start of the first store
    let release = t.path().join("release");
    let _a = site.start_with_env("a", &[("OMESH_FAILPOINT", &format!("scrub.store:1:wait={}", release.display()))]);
    let config = site.node("a").config();
    let mut first = cmd()
        .args(["scrub", "--config", s(&config), "--rate", "unlimited", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reached = t.path().join("release.reached");
    wait_until("the first scrub to start", Duration::from_secs(30), || reached.exists());
    let out = site.omesh("a", &["scrub", "--rate", "unlimited", "--json"]).code(1);
    assert!(
        out.stdout.contains("already running") || out.stderr.contains("already running"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    // the first one finishes normally once released
    fs::write(&release, b"").unwrap();
    let status = first.wait().unwrap();
    assert!(status.success(), "the first scrub failed: {status}");
}

/// `GET /metrics` on 127.0.0.1:`port`.
pub(crate) fn scrape(port: u16) -> String {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    assert!(s.starts_with("HTTP/1.1 200"), "{s}");
    s
}

/// The value of the sample `name` (with its labels, as written) in `text`.
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_dead_peer_shows_in_the_metrics_and_in_sync_from_the_first_failure() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("a", "r0"), ("b", "r1"), ("c", "r2")]);
    let src = t.path().join("src");
    data(&src, 2, 100_000, 3);
    let port = free_port("127.0.0.1");
    // factor 2 over b and c; c is dead (never started)
    site.write_config("a", &["b".into(), "c".into()], 2, &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    site.write_config("b", &["a".into(), "c".into()], 2, "");
    let _b = site.start("b");
    let _a = site.start("a");

    // before anything happened, every series an alert asks for is there
    let m = scrape(port);
    for series in [
        "omesh_replications_total{peer=\"c\",result=\"ok\"}",
        "omesh_replications_total{peer=\"c\",result=\"failed\"}",
        "omesh_replications_total{peer=\"c\",result=\"unreachable\"}",
        "omesh_backups_total{schedule=\"manual\",result=\"unprotected\"}",
        "omesh_gc_runs_total{result=\"failed\"}",
        "omesh_last_success_timestamp_seconds{job=\"sync\"}",
    ] {
        assert_eq!(sample(&m, series), Some(0.0), "{series} missing or not 0:\n{m}");
    }
    let version = format!("omesh_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&m, &version), Some(1.0), "{m}");
    assert!(sample(&m, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6, "{m}");
    assert!(sample(&m, "process_open_fds").unwrap_or(0.0) > 3.0, "{m}");

    // three backups: each one a failed replication to c
    for _ in 0..3 {
        site.omesh("a", &["backup", s(&src)]).code(6);
    }
    let m = scrape(port);
    assert_eq!(sample(&m, "omesh_replications_total{peer=\"c\",result=\"unreachable\"}"), Some(3.0), "{m}");
    assert_eq!(sample(&m, "omesh_replications_total{peer=\"b\",result=\"ok\"}"), Some(3.0), "{m}");
    assert_eq!(sample(&m, "omesh_peer_up{peer=\"c\"}"), Some(0.0), "{m}");
    assert_eq!(sample(&m, "omesh_peer_up{peer=\"b\"}"), Some(1.0), "{m}");
    assert!(sample(&m, "omesh_peer_rtt_seconds{peer=\"b\"}").unwrap_or(0.0) > 0.0, "{m}");
    assert!(sample(&m, "omesh_store_bytes{source=\"a\"}").unwrap_or(0.0) > 100_000.0, "{m}");
    // nothing protected: the backup job has not succeeded
    assert_eq!(sample(&m, "omesh_last_success_timestamp_seconds{job=\"backup\"}"), Some(0.0), "{m}");

    // b holds a's snapshots and no reachable node can add the second
    // replica: sync says they are under-replicated, and why nothing is done
    let r = site.omesh("b", &["sync", "--json"]).ok().json();
    assert_eq!(r["under_replicated"], 3, "{r}");
    assert_eq!(r["no_repairer"], 3, "{r}");
}
