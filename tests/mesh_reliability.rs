//! Reliability of a receiving peer: a write that fails there (a full disk)
//! must never leave it holding, or acknowledging, a replica it cannot read.

use crate::common::mesh::{Site, stored_snapshots};
use crate::common::{Mounted, bin, restored, s, tree};
use std::fs;
use std::path::Path;

fn pair(root: &Path, b_extra: &str) -> Site {
    let site = Site::new(root, &[("srv-a", "rack-0"), ("srv-b", "rack-1")]);
    site.write_config("srv-a", &["srv-b".into()], 1, "");
    site.write_config("srv-b", &["srv-a".into()], 1, b_extra);
    site
}

/// Everything srv-b holds of srv-a reads back whole, and the latest
/// snapshot restores from srv-b alone byte for byte.
fn b_holds_a_readable_replica(site: &Site, data: &Path, target: &Path) {
    assert!(!stored_snapshots(site.node("srv-b"), "srv-a").is_empty(), "srv-b holds no snapshot of srv-a");
    site.omesh("srv-b", &["verify", "--source", "srv-a", "--read-data"]).ok();
    site.omesh("srv-a", &["restore", "latest", "--from", "srv-b", "--target", s(target)]).ok();
    tree::assert_same(data, &restored(target, data));
}

#[test]
fn a_write_that_fails_on_a_receiving_peer_drops_its_pack_and_nothing_unreadable_is_acknowledged() {
    let t = tempfile::tempdir().unwrap();
    let site = pair(t.path(), "");
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    // the write that fails at several points of srv-b's packs: the first
    // (the pack's header), one after a record, and one well inside
    for (round, n) in [1u32, 2, 6].into_iter().enumerate() {
        // new content each round, so srv-b has records to write
        for f in 0..8u64 {
            fs::write(data.join(format!("r{round}-{f}")), tree::data(1 << 20, 100 * round as u64 + f)).unwrap();
        }
        let mut b = site.start_with_env("srv-b", &[("OMESH_FAILPOINT", &format!("pack.write:{n}:enospc"))]);
        let first = site.omesh("srv-a", &["backup", "--json", s(&data)]);
        if first.code == 0 {
            // the source sent again what was dropped: then srv-b must hold it all
            assert_eq!(first.json()["protected"], true, "{}", first.stdout);
        } else {
            assert!(first.stderr.contains("srv-b"), "the failure names no peer: {}", first.stderr);
        }
        // the failed write is past: the next backup is taken whole
        let second = site.omesh("srv-a", &["backup", "--json", s(&data)]).ok().json();
        assert_eq!(second["protected"], true, "{second}");
        b.kill();
        // what srv-b acknowledged it can read, after a restart too
        let _b = site.start("srv-b");
        b_holds_a_readable_replica(&site, &data, &t.path().join(format!("restore-{round}")));
    }
}

#[test]
fn a_receiving_peer_whose_disk_fills_keeps_a_readable_replica_and_takes_the_rest_once_it_has_room() {
    let t = tempfile::tempdir().unwrap();
    // no free-space floor: the disk really fills under the writes
    let site = pair(t.path(), "[storage]\nmin_free = 0\n");
    let disk = Mounted::tmpfs(&site.node("srv-b").data(), "12m");
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    for f in 0..10u64 {
        fs::write(data.join(format!("f{f}")), tree::data(3 << 20, f)).unwrap();
    }
    let b = site.start("srv-b");
    let full = site.omesh("srv-a", &["backup", "--json", s(&data)]);
    assert_ne!(full.code, 0, "30 MiB cannot fit on srv-b's 12 MiB disk: {}", full.stdout);
    assert!(full.stderr.contains("srv-b"), "the failure names no peer: {}", full.stderr);
    // room again: the next backup completes on srv-b, and every replica
    // srv-b acknowledged (before and after) reads back
    disk.resize("256m");
    let next = site.omesh("srv-a", &["backup", "--json", s(&data)]).ok().json();
    assert_eq!(next["protected"], true, "{next}");
    drop(b);
    let _b = site.start("srv-b");
    b_holds_a_readable_replica(&site, &data, &t.path().join("restore"));
}

#[test]
fn a_peer_killed_and_restarted_takes_the_next_backup_through_the_source_daemon() {
    let t = tempfile::tempdir().unwrap();
    let site = pair(t.path(), "");
    // the source's connection would otherwise end by the idle timeout,
    // and the backup after the restart would wait for it
    site.write_config("srv-a", &["srv-b".into()], 1, "[transport]\nidle_timeout_secs = 300\n");
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), tree::data(1 << 20, 1)).unwrap();
    let mut b = site.start("srv-b");
    let log = t.path().join("srv-a.log");
    let mut c = std::process::Command::new("sh");
    crate::common::clean_env(&mut c);
    c.arg("-c").arg("exec \"$@\" 2>>\"$LOG\"").arg("sh").arg(bin()).args(["node", "run", "--config"]);
    c.arg(site.node("srv-a").config()).env("LOG", &log).env("RUST_LOG", "info");
    let _a = Site::start_command("srv-a", c);
    let r = site.omesh("srv-a", &["backup", "--json", s(&data)]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    // srv-a's daemon keeps its connection to srv-b; srv-b dies and is back
    b.kill();
    let _b = site.start("srv-b");
    for round in 0..2 {
        fs::write(data.join(format!("g{round}")), tree::data(1 << 20, 10 + round)).unwrap();
        let r = site.omesh("srv-a", &["backup", "--json", s(&data)]).ok().json();
        assert_eq!(r["protected"], true, "round {round}: {r}");
    }
    // the new srv-b ended the old connection at once (its stateless reset
    // is one srv-a can verify), rather than srv-a waiting for it to time out
    let l = fs::read_to_string(&log).unwrap();
    assert!(l.contains("the peer restarted"), "srv-a never learnt that srv-b restarted:\n{l}");
}

#[test]
fn a_peer_that_collects_garbage_during_a_push_still_gets_the_whole_snapshot_in_the_same_run() {
    let t = tempfile::tempdir().unwrap();
    // srv-b removes what no snapshot references as soon as it sees it
    let site = pair(t.path(), "[gc]\ngrace_secs = 0\n");
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    for f in 0..4u64 {
        fs::write(data.join(format!("f{f}")), tree::data(1 << 20, 40 + f)).unwrap();
    }
    let release = t.path().join("release");
    let _b = site.start_with_env(
        "srv-b",
        &[("OMESH_FAILPOINT", &format!("replica.before_commit:1:wait={}", release.display()))],
    );
    // the push stops on srv-b just before it commits the snapshot: its
    // objects are there, referenced by nothing yet
    let push =
        site.command("srv-a", &["backup", "--json", s(&data)]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let reached = t.path().join("release.reached");
    let start = std::time::Instant::now();
    while !reached.exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the push never reached srv-b's commit");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // two collections on srv-b (one finds the objects unreferenced, the
    // next removes them)
    let mut removed = 0;
    for _ in 0..2 {
        let g = site.omesh("srv-b", &["gc", "--json"]).ok().json();
        removed += g["stores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["swept"].as_u64().unwrap_or(0) + s["trash_freed"].as_u64().unwrap_or(0))
            .sum::<u64>();
    }
    assert!(removed > 0, "srv-b's collections removed nothing, so the test tests nothing");
    fs::write(&release, b"").unwrap();
    let out = push.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["protected"], true, "the source did not send again what srv-b lost: {r}");
    b_holds_a_readable_replica(&site, &data, &t.path().join("restore"));
}

#[test]
fn a_frozen_daemon_gets_an_answer_that_names_it_not_a_hang() {
    let t = tempfile::tempdir().unwrap();
    let site = pair(t.path(), "");
    let _b = site.start("srv-b");
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), tree::data(1 << 20, 5)).unwrap();
    // the daemon stops itself in the middle of a collection
    let mut a = site.start_with_env("srv-a", &[("OMESH_FAILPOINT", "gc.mark_batch:1:stop")]);
    site.omesh("srv-a", &["backup", s(&data)]).ok();
    let r = site.omesh("srv-a", &["gc"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("sent nothing for 20 s") && r.stderr.contains("control.sock"), "{}", r.stderr);
    // and a daemon already stopped when a command starts: the command does
    // not run beside it (it holds the stores), and says why
    let r = site.omesh("srv-a", &["status"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("did not answer within 5 s"), "{}", r.stderr);
    a.kill();
}

#[test]
fn a_restore_from_a_frozen_peer_names_the_peer_and_why() {
    let t = tempfile::tempdir().unwrap();
    let site = pair(t.path(), "");
    let mut b = site.start("srv-b");
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), tree::data(1 << 20, 6)).unwrap();
    site.omesh("srv-a", &["backup", s(&data)]).ok();
    let st = std::process::Command::new("kill").args(["-STOP", &b.pid().to_string()]).status().unwrap();
    assert!(st.success());
    let target = t.path().join("r");
    let r = site.omesh("srv-a", &["restore", "latest", "--from", "srv-b", "--target", s(&target)]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("no snapshots of srv-a are reachable; could not ask srv-b: "), "{}", r.stderr);
    assert!(!target.exists(), "nothing may be written");
    b.kill();
}
