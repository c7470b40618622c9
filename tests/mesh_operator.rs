//! What a site administrator does with a running daemon: the daemon
//! must do what the caller means or refuse, and say why.

use crate::common::mesh::Site;
use crate::common::{Run, bin, s};
use std::fs;
use std::path::Path;
use std::process::Command;

/// A two-node site (srv-a backs up to srv-b, factor 1) with srv-b running.
fn pair(root: &Path) -> (Site, crate::common::mesh::Daemon) {
    let site = Site::new(root, &[("srv-a", "rack-0"), ("srv-b", "rack-1")]);
    site.write_config("srv-a", &["srv-b".into()], 1, "");
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let b = site.start("srv-b");
    (site, b)
}

fn run_in(site: &Site, dir: &Path, args: &[&str]) -> Run {
    site.command("srv-a", args).current_dir(dir).output().unwrap().into()
}

#[test]
fn a_relative_path_is_the_callers_not_the_daemons() {
    let t = tempfile::tempdir().unwrap();
    let (site, _b) = pair(t.path());
    // the same relative name exists in the daemon's working directory and
    // in the caller's, with different contents
    let (daemon_cwd, caller_cwd) = (t.path().join("daemon-cwd"), t.path().join("caller-cwd"));
    for (d, who) in [(&daemon_cwd, "the daemon's"), (&caller_cwd, "the caller's")] {
        fs::create_dir_all(d.join("probe")).unwrap();
        fs::write(d.join("probe/who"), who).unwrap();
    }
    let mut c = site.command("srv-a", &["node", "run"]);
    c.current_dir(&daemon_cwd);
    let _a = Site::start_command("srv-a", c);

    let r = run_in(&site, &caller_cwd, &["backup", "probe", "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let target = t.path().join("restored");
    site.omesh("srv-a", &["restore", r["snapshot"].as_str().unwrap(), "--target", s(&target)]).ok();
    let caller_probe = fs::canonicalize(&caller_cwd).unwrap().join("probe/who");
    let got = fs::read_to_string(crate::common::restored(&target, &caller_probe)).unwrap();
    assert_eq!(got, "the caller's");
    let daemon_probe = fs::canonicalize(&daemon_cwd).unwrap().join("probe");
    assert!(!crate::common::restored(&target, &daemon_probe).exists(), "the daemon's ./probe was backed up");

    // a missing relative path is reported where the caller looked for it
    let r = run_in(&site, &caller_cwd, &["backup", "nothing-here"]).code(2);
    let want = caller_cwd.join("nothing-here");
    assert!(r.stderr.contains(s(&want)), "error does not name {}: {}", want.display(), r.stderr);
}

#[test]
fn a_path_the_daemon_sees_differently_is_refused_and_nothing_is_stored() {
    let t = tempfile::tempdir().unwrap();
    let (site, _b) = pair(t.path());
    // the caller's `hidden/` has a file; the daemon runs in its own mount
    // namespace with an empty tmpfs over `hidden/` (what systemd's
    // PrivateTmp= does to /tmp)
    let hidden = t.path().join("hidden");
    fs::create_dir_all(&hidden).unwrap();
    fs::write(hidden.join("secret"), "only the caller sees this").unwrap();
    let visible = t.path().join("visible");
    fs::create_dir_all(&visible).unwrap();
    fs::write(visible.join("f"), "both see this").unwrap();
    let mut c = Command::new("unshare");
    crate::common::clean_env(&mut c);
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t tmpfs omesh-test \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(&hidden)
        .arg(bin())
        .args(["node", "run", "--config"])
        .arg(site.node("srv-a").config());
    let _a = Site::start_command("srv-a", c);

    let r = site.omesh("srv-a", &["backup", s(&hidden.join("secret"))]).code(2);
    assert!(r.stderr.contains(s(&hidden.join("secret"))) && r.stderr.contains("the daemon cannot"), "{}", r.stderr);
    assert!(r.stderr.contains("mount namespace"), "the error does not say why: {}", r.stderr);
    let r = site.omesh("srv-a", &["backup", s(&hidden), s(&visible)]).code(2);
    assert!(r.stderr.contains(s(&hidden)) && r.stderr.contains("different file"), "{}", r.stderr);
    let snaps = site.omesh("srv-a", &["snapshots", "--json"]).ok().json();
    assert_eq!(snaps.as_array().map(Vec::len), Some(0), "a refused backup stored a snapshot: {snaps}");

    // the daemon still serves what it does see
    let r = site.omesh("srv-a", &["backup", s(&visible), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
}

#[test]
fn mesh_mode_usage_errors_exit_2_and_say_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let (site, _b) = pair(t.path());
    let _a = site.start("srv-a");
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "data").unwrap();
    site.omesh("srv-a", &["backup", s(&src)]).ok();
    site.omesh("srv-a", &["backup", s(&src), "--parent", "none"]).ok();
    let target = t.path().join("restored");

    // an unknown snapshot, as in local mode
    let r = site.omesh("srv-a", &["restore", "0123456789abcdef", "--target", s(&target)]).code(2);
    assert!(r.stderr.contains("0123456789abcdef") && r.stderr.contains("omesh snapshots"), "{}", r.stderr);
    // a prefix of both snapshots lists them
    let ids: Vec<String> = site
        .omesh("srv-a", &["snapshots", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["short_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    let r = site.omesh("srv-a", &["restore", "", "--target", s(&target)]).code(2);
    assert!(r.stderr.contains("ambiguous") && ids.iter().all(|id| r.stderr.contains(id)), "{ids:?}: {}", r.stderr);
    // srv-b holds srv-a's replica but not its key
    let r = site.omesh("srv-b", &["restore", "latest", "--source", "srv-a", "--target", s(&target)]).code(2);
    assert!(r.stderr.contains("omesh key import"), "{}", r.stderr);
    assert!(!target.exists(), "a refused restore wrote into its target");
}
