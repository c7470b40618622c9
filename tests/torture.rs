//! The short run of the torture suite (tools/torture/torture.py): kill
//! loops of local backups and of receiving daemons, byte flips and
//! truncations repaired by scrub, disk full on a local store and on a peer
//! (a small ext4 on a loop device, and a tmpfs), backup + forget + gc +
//! scrub at once, frozen peers, and the crash-consistency replay of a
//! recorded backup. Every experiment must have run (nonzero counts) and
//! nothing acknowledged may be lost.

use crate::common::bin;
use std::process::Command;

#[test]
fn the_short_torture_run_loses_nothing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("python3")
        .arg(root.join("tools/torture/torture.py"))
        .args(["--seed", "7", "--json", "--budget", "600", "--omesh"])
        .arg(bin())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("torture printed no JSON ({e}): {stderr}"));
    assert!(out.status.success(), "{v:#}\n{stderr}");
    assert_eq!((v["failures"].as_u64(), v["lost"].as_u64()), (Some(0), Some(0)), "{v:#}");
    let e = &v["experiments"];
    let count = |exp: &str, field: &str| e[exp][field].as_u64().unwrap_or(0);
    for (exp, field) in [
        ("local-kills", "random_kills"),
        ("local-kills", "kills_at_commit_points"),
        ("local-kills", "acknowledged"),
        ("daemon-kills", "daemon_kills"),
        ("flips", "records_flipped"),
        ("disk-full", "local_disk_full"),
        ("disk-full", "peer_disk_full"),
        ("concurrency", "rounds"),
        ("freeze", "peers_frozen"),
        ("crash-replay", "states_checked"),
        // the replay without the packs' fsyncs must be caught
        ("crash-replay", "mutant_states_failing"),
    ] {
        assert!(count(exp, field) > 0, "{exp} did nothing ({field} is 0): {v:#}");
    }
    assert_eq!(count("flips", "repaired"), count("flips", "damaged_records_found"), "{v:#}");
    // the full disks were a small ext4 on a loop device as well as a tmpfs
    assert_eq!(e["disk-full"]["file_systems"], serde_json::json!(["ext4", "tmpfs"]), "{v:#}");
}
