//! Backups of a stream (`--stdin`, `--stdin-from-command`) and dry runs,
//! locally and through a daemon: a failing command or a sender killed
//! mid-stream saves nothing; a dry run writes nothing and counts what the
//! real backup then adds.

use crate::common::mesh::Site;
use crate::common::{cmd, init_small, omesh, s};
use std::fs;
use std::io::Write;
use std::process::Stdio;

fn snapshot_count(r: crate::common::Run) -> usize {
    r.ok().json_list().as_array().unwrap().len()
}

/// Run `omesh ARGS` with `input` on its standard input.
fn with_stdin(mut c: std::process::Command, input: &[u8]) -> crate::common::Run {
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut w = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = w.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out.into()
}

#[test]
fn a_stream_backs_up_as_one_file_and_a_failing_command_saves_nothing_locally() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    init_small(&store);
    let data = crate::common::tree::data(3_000_000, 41);
    let file = t.path().join("dump.bin");
    fs::write(&file, &data).unwrap();

    let mut c = cmd();
    c.args(["backup", "--store", s(&store), "--stdin", "--stdin-filename", "shop.sql", "--json"]);
    let r = with_stdin(c, &data).ok().json();
    assert_eq!((r["files"].as_u64(), r["bytes"].as_u64()), (Some(1), Some(3_000_000)), "{r}");
    let out = t.path().join("back");
    omesh(["dump", "--store", s(&store), "latest", "/shop.sql", "-o", s(&out)]).ok();
    assert!(fs::read(&out).unwrap() == data, "the dumped file is the stream");
    let ls = omesh(["ls", "--store", s(&store), "latest"]).ok().stdout;
    assert!(ls.contains("shop.sql") && ls.contains("-rw-------"), "a stream is stored private (0600): {ls}");

    // the command writes most of the data, then fails: nothing is saved
    let failing = format!("cat {}; echo dump failed >&2; exit 3", s(&file));
    let r = omesh(["backup", "--store", s(&store), "--stdin-from-command", "--", "sh", "-c", &failing]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("failed") && r.stderr.contains("no snapshot was saved"), "{}", r.stderr);
    assert_eq!(snapshot_count(omesh(["snapshots", "--store", s(&store), "--json"])), 1);
    // a command that cannot start, --stdin with paths, a bad name: usage errors
    let r = omesh(["backup", "--store", s(&store), "--stdin-from-command", "--", "/nonexistent/pg_dump"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/pg_dump"), "{}", r.stderr);
    let mut c = cmd();
    c.args(["backup", "--store", s(&store), "--stdin", s(t.path())]);
    assert_eq!(with_stdin(c, b"x").code, 2);
    let mut c = cmd();
    c.args(["backup", "--store", s(&store), "--stdin", "--stdin-filename", "a/b"]);
    assert_eq!(with_stdin(c, b"x").code, 2);

    // the same command succeeding: saved, and equal to the file
    let ok = format!("cat {}", s(&file));
    let r =
        omesh(["backup", "--store", s(&store), "--json", "--stdin-from-command", "--", "sh", "-c", &ok]).ok().json();
    assert_eq!(r["bytes"].as_u64(), Some(3_000_000), "{r}");
    omesh(["dump", "--store", s(&store), "latest", "/stdin", "-o", s(&t.path().join("back2"))]).ok();
    assert!(fs::read(t.path().join("back2")).unwrap() == data);

    // the command starts only once the backup has begun, after the pre hook:
    // not at all when the pre hook fails, and after it when it succeeds
    let ran = t.path().join("command-ran");
    let r = omesh(["backup", "--store", s(&store), "--pre", "exit 3", "--stdin-from-command", "--", "touch", s(&ran)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!ran.exists(), "the command ran although the pre hook failed");
    let marker = t.path().join("pre-ran");
    let after_pre = format!("test -e {} && cat {}", s(&marker), s(&file));
    let pre = format!("touch {}", s(&marker));
    omesh(["backup", "--store", s(&store), "--pre", &pre, "--stdin-from-command", "--", "sh", "-c", &after_pre]).ok();
}

#[test]
fn a_dry_run_writes_nothing_and_counts_what_the_backup_then_adds() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    crate::common::tree::make_full(&src, false);
    fs::write(src.join("big"), crate::common::tree::data(2_000_000, 42)).unwrap();
    let before = crate::common::store_bytes(&store);
    // (the first read of a directory after it changed moves its atime,
    // which the backup records: the runs compared come after one read)
    let text = omesh(["backup", "--store", s(&store), s(&src), "-n"]).ok().stdout;
    assert!(text.contains("dry run: nothing was written"), "{text}");
    let dry = omesh(["backup", "--store", s(&store), s(&src), "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(crate::common::store_bytes(&store), before, "a dry run writes nothing");
    assert_eq!(snapshot_count(omesh(["snapshots", "--store", s(&store), "--json"])), 0);
    let real = omesh(["backup", "--store", s(&store), s(&src), "--json"]).ok().json();
    for k in ["files", "dirs", "bytes", "objects_added", "bytes_added"] {
        assert_eq!(dry[k], real[k], "{k}: the dry run said {} and the backup did {}", dry[k], real[k]);
    }
    assert!(real["bytes_added"].as_u64().unwrap() > 2_000_000);
    // after the backup, a dry run would add nothing
    let again = omesh(["backup", "--store", s(&store), s(&src), "--dry-run", "--json"]).ok().json();
    assert_eq!((again["objects_added"].as_u64(), again["bytes_added"].as_u64()), (Some(0), Some(0)), "{again}");
}

fn stored_count(site: &Site) -> usize {
    snapshot_count(site.omesh("srv-a", &["snapshots", "--json"]))
}

#[test]
fn a_stream_through_the_daemon_is_saved_only_when_its_command_succeeds_and_its_sender_finishes() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "rack-0"), ("srv-b", "rack-1")]);
    site.write_config("srv-a", &["srv-b".into()], 1, "");
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let _b = site.start("srv-b");
    let _a = site.start("srv-a");
    let data = crate::common::tree::data(5_000_000, 43);
    let file = t.path().join("dump.bin");
    fs::write(&file, &data).unwrap();

    // through the daemon: saved, replicated, and the file is the stream
    let ok = format!("cat {}", s(&file));
    let args = ["backup", "--json", "--stdin-filename", "shop.dump", "--stdin-from-command", "--", "sh", "-c", &ok];
    let r = site.omesh("srv-a", &args).ok().json();
    assert_eq!(r["bytes"].as_u64(), Some(5_000_000), "{r}");
    assert_eq!(r["protected"], true, "{r}");
    let out = t.path().join("back");
    site.omesh("srv-a", &["dump", "latest", "/shop.dump", "-o", s(&out)]).ok();
    assert!(fs::read(&out).unwrap() == data);
    assert_eq!(stored_count(&site), 1);
    // no FIFO is left beside the control socket
    let leftovers: Vec<_> = fs::read_dir(site.node("srv-a").data())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".stdin-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // the command fails after sending most of it: the daemon saves nothing
    let failing = format!("cat {}; exit 5", s(&file));
    let r = site.omesh("srv-a", &["backup", "--stdin-from-command", "--", "sh", "-c", &failing]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("exit status: 5") && r.stderr.contains("no snapshot was saved"), "{}", r.stderr);
    assert_eq!(stored_count(&site), 1);

    // the CLI is SIGKILLed in the middle of a stream: the daemon sees the
    // stream end without its end marker and saves nothing
    let mut c = site.command("srv-a", &["backup", "--stdin", "--stdin-filename", "cut.bin"]);
    let mut cli = c.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut w = cli.stdin.take().unwrap();
    w.write_all(&data[..2_000_000]).unwrap();
    w.flush().unwrap();
    cli.kill().unwrap();
    cli.wait().unwrap();
    drop(w);
    // backups of a node run one at a time: this one starts after the cut
    // one has ended
    site.omesh("srv-a", &["backup", "--stdin", "--stdin-filename", "after.bin"]).ok();
    let list = site.omesh("srv-a", &["snapshots", "--json"]).ok().stdout;
    assert!(!list.contains("/cut.bin"), "the cut stream was saved: {list}");
    assert_eq!(stored_count(&site), 2, "{list}");

    // a dry run through the config: read-only on the node's store while the
    // daemon runs, nothing saved
    let src = t.path().join("src");
    crate::common::tree::make_full(&src, false);
    site.omesh("srv-a", &["backup", s(&src), "--dry-run"]).ok();
    let dry = site.omesh("srv-a", &["backup", s(&src), "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(dry["bytes_added"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(stored_count(&site), 2);
    let real = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(dry["bytes_added"], real["bytes_added"], "{dry} {real}");
}
