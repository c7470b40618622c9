//! Backup hooks: a failing or hanging pre hook saves nothing, a post hook
//! always runs and is told what happened, locally, on the command line of a
//! mesh backup, and from the daemon's [hooks].

use crate::common::mesh::Site;
use crate::common::{init_small, omesh, s};
use std::fs;
use std::path::Path;

fn snapshots(store: &Path) -> usize {
    omesh(["snapshots", "--store", s(store), "--json"]).ok().json_list().as_array().unwrap().len()
}

/// A post hook that writes what it was told to `out`.
fn recorder(out: &Path) -> String {
    format!(
        "printf '%s|%s|%s|%s|%s' \"$OMESH_HOOK\" \"$OMESH_RESULT\" \"$OMESH_SNAPSHOT\" \"$OMESH_PATHS\" \"$OMESH_ERROR\" > {}",
        out.display()
    )
}

#[test]
fn a_failing_or_hanging_pre_hook_saves_nothing_and_a_post_hook_always_runs_told_what_happened() {
    let t = tempfile::tempdir().unwrap();
    let (store, src) = (t.path().join("store"), t.path().join("src"));
    init_small(&store);
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let told = t.path().join("told");

    // the pre hook fails: nothing is read or saved, the post hook still runs
    let r = omesh([
        "backup",
        "--store",
        s(&store),
        s(&src),
        "--pre",
        "echo database not ready >&2; exit 7",
        "--post",
        &recorder(&told),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("pre hook")
            && r.stderr.contains("database not ready")
            && r.stderr.contains("nothing was backed up"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshots(&store), 0);
    assert!(!told.exists(), "a backup that never started has no post hook");

    // a hanging pre hook is killed at the limit, with what it started
    let pid_file = t.path().join("pid");
    let r = omesh([
        "backup",
        "--store",
        s(&store),
        s(&src),
        "--hook-timeout",
        "1s",
        "--pre",
        &format!("sleep 600 & echo $! > {}; wait", pid_file.display()),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("did not finish within 1 s"), "{}", r.stderr);
    assert_eq!(snapshots(&store), 0);
    let pid: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z "),
        "the hook's child {pid} outlived the limit"
    );

    // both succeed: the post hook is told the snapshot and the paths
    let marker = t.path().join("pre-ran");
    let r = omesh([
        "backup",
        "--store",
        s(&store),
        s(&src),
        "--json",
        "--pre",
        &format!("touch {}", marker.display()),
        "--post",
        &recorder(&told),
    ])
    .ok()
    .json();
    assert!(marker.exists());
    let snap = r["snapshot"].as_str().unwrap();
    assert_eq!(fs::read_to_string(&told).unwrap(), format!("post|success|{snap}|{}|", s(&src)));

    // the backup fails: the post hook runs, told so
    let r = omesh(["backup", "--store", s(&store), "/nonexistent/path", "--post", &recorder(&told)]);
    assert_ne!(r.code, 0);
    let said = fs::read_to_string(&told).unwrap();
    assert!(said.starts_with("post|failed||/nonexistent/path|") && said.contains("/nonexistent/path"), "{said}");

    // the post hook fails: the snapshot is saved, with a warning (exit 3)
    let r = omesh(["backup", "--store", s(&store), s(&src), "--post", "exit 9"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("post hook") && r.stderr.contains("exit status: 9"), "{}", r.stderr);
    assert_eq!(snapshots(&store), 2);
    let r = omesh(["backup", "--store", s(&store), s(&src), "--hook-timeout", "soon", "--pre", "true"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn the_daemon_runs_its_configured_hooks_and_the_command_line_runs_its_own_around_a_mesh_backup() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "rack-0"), ("srv-b", "rack-1")]);
    let (told, daemon_pre) = (t.path().join("told-by-daemon"), t.path().join("daemon-pre"));
    let hooks = format!(
        "[hooks]\npre = \"touch {}\"\npost = \"{}\"\ntimeout_secs = 60\n",
        daemon_pre.display(),
        recorder(&told).replace('\\', "\\\\").replace('"', "\\\"")
    );
    site.write_config("srv-a", &["srv-b".into()], 1, &hooks);
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let _b = site.start("srv-b");
    let _a = site.start("srv-a");
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let cli_told = t.path().join("told-to-cli");
    let r = site.omesh("srv-a", &["backup", s(&src), "--json", "--post", &recorder(&cli_told)]).ok().json();
    let snap = r["snapshot"].as_str().unwrap();
    assert!(daemon_pre.exists(), "the daemon did not run [hooks] pre");
    assert_eq!(fs::read_to_string(&told).unwrap(), format!("post|success|{snap}|{}|", s(&src)));
    assert_eq!(fs::read_to_string(&cli_told).unwrap(), format!("post|success|{snap}|{}|", s(&src)));

    // the command line's failing pre hook: the daemon is not even asked
    fs::remove_file(&daemon_pre).unwrap();
    let r = site.omesh("srv-a", &["backup", s(&src), "--pre", "exit 4"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!daemon_pre.exists());
    let list = site.omesh("srv-a", &["snapshots", "--json"]).ok().json_list();
    assert_eq!(list.as_array().unwrap().len(), 1);
}
