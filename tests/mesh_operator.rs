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
    let snaps = site.omesh("srv-a", &["snapshots", "--json"]).ok().json_list();
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
        .json_list()
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

/// The key id `omesh key export --out` reports for a node's own key.
fn exported_key(site: &Site, node: &str, out: &Path) -> String {
    let r = site.omesh(node, &["key", "export", "--out", s(out)]).ok();
    let line =
        r.stderr.lines().find(|l| l.starts_with("key ")).unwrap_or_else(|| panic!("no key id in {:?}", r.stderr));
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn a_rebuilt_node_mints_no_key_to_read_and_cannot_fork_its_history_on_peers() {
    let t = tempfile::tempdir().unwrap();
    let (site, _b) = pair(t.path());
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), "the first history").unwrap();
    let mut a = site.start("srv-a");
    let r = site.omesh("srv-a", &["backup", s(&data), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let old_key = t.path().join("srv-a-old.key");
    let old_id = exported_key(&site, "srv-a", &old_key);

    // srv-a dies; a new server gets its name and certificate, no data
    a.kill();
    let a_data = site.node("srv-a").data();
    fs::remove_dir_all(&a_data).unwrap();
    let key_path = a_data.join("keys/srv-a.key");
    // reading mints no key: in-process, then through the daemon
    for daemon in [false, true] {
        let _d = daemon.then(|| site.start("srv-a"));
        let list = site.omesh("srv-a", &["snapshots", "--json"]).ok();
        assert!(!list.stderr.contains("new key"), "{}", list.stderr);
        let snaps = list.json_list();
        assert_eq!(snaps.as_array().unwrap().len(), 1, "the old snapshot is listed from srv-b: {snaps}");
        assert!(snaps[0]["time"].is_null(), "{snaps}");
        let st = site.omesh("srv-a", &["status", "--json"]).ok();
        assert!(!st.stderr.contains("new key"), "{}", st.stderr);
        // the old snapshot is on srv-b only: not counted as this node's
        let j = st.json();
        assert_eq!((j["snapshots"].as_u64(), j["snapshots_only_elsewhere"].as_u64()), (Some(0), Some(1)), "{j}");
        assert!(!key_path.exists(), "a read command (daemon: {daemon}) created {}", key_path.display());
        assert!(!a_data.join("sources/srv-a").exists(), "a read command (daemon: {daemon}) created a store");
    }
    // exporting a key that does not exist yet says where keys come from
    let r = site.omesh("srv-a", &["key", "export"]).code(2);
    assert!(r.stderr.contains("no key yet") && r.stderr.contains("key import"), "{}", r.stderr);

    // a first backup that dies before its snapshot leaves a fresh, unused key
    let r =
        site.command("srv-a", &["backup", s(&data)]).env("OMESH_FAILPOINT", "backup.before_commit:1").output().unwrap();
    assert!(!r.status.success());
    assert!(key_path.exists(), "the killed backup made no key");
    // importing the old key replaces that one (kept aside)
    let r = site.omesh("srv-a", &["key", "import", s(&old_key)]).ok();
    assert!(r.stderr.contains("moved the unused key"), "{}", r.stderr);
    assert_eq!(fs::read(&key_path).unwrap(), fs::read(&old_key).unwrap());
    // and the history goes on under it, on srv-b too
    let mut a = site.start("srv-a");
    fs::write(data.join("f"), "the same history, later").unwrap();
    let r = site.omesh("srv-a", &["backup", s(&data), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let snaps = site.omesh("srv-a", &["snapshots", "--json"]).ok().json_list();
    let snaps = snaps.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert!(snaps.iter().all(|x| x["time"].is_string()), "every snapshot opens with the one key: {snaps:?}");

    // rebuilt again, but this time backed up under a new key: srv-b keeps
    // the history under one key and says how to go on
    a.stop();
    fs::remove_dir_all(&a_data).unwrap();
    let mut a = site.start("srv-a");
    let r = site.omesh("srv-a", &["backup", s(&data), "--json"]).code(6).json();
    let err = r["replicas"][0]["error"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(
        err.contains(&old_id) && err.contains("omesh key accept srv-a") && err.contains("omesh key import"),
        "{err}"
    );
    let b = site.node("srv-b");
    assert_eq!(crate::common::mesh::stored_snapshots(b, "srv-a").len(), 2, "srv-b took a snapshot under a second key");
    let new_id = exported_key(&site, "srv-a", &t.path().join("srv-a-new.key"));
    assert!(err.contains(&new_id), "{err}");
    // a key file naming a source that is no node name writes nothing anywhere
    let evil = t.path().join("evil.key");
    fs::write(&evil, fs::read_to_string(&old_key).unwrap().replace("srv-a", "../../srv-b")).unwrap();
    let r = site.omesh("srv-a", &["key", "import", s(&evil)]).code(2);
    assert!(r.stderr.contains("not a node name"), "{}", r.stderr);
    assert!(site.node("srv-b").data().join("sources").exists(), "srv-b's stores were touched");
    // the old key is not imported over one that made a snapshot
    a.stop();
    let before = fs::read(&key_path).unwrap();
    let r = site.omesh("srv-a", &["key", "import", s(&old_key)]).code(2);
    assert!(r.stderr.contains("made 1 snapshot") && r.stderr.contains("aside"), "{}", r.stderr);
    assert_eq!(fs::read(&key_path).unwrap(), before, "the key was changed");

    // a name that is not a node's is refused before any path is made of it
    let r = site.omesh("srv-b", &["key", "accept", "../../srv-a", &new_id]).code(2);
    assert!(r.stderr.contains("not a node name"), "{}", r.stderr);
    // srv-b's administrator accepts the new history
    let r = site.omesh("srv-b", &["key", "accept", "srv-a", &new_id]).ok();
    assert!(r.stderr.contains(&new_id) && r.stderr.contains(&old_id), "{}", r.stderr);
    let _a = site.start("srv-a");
    let r = site.omesh("srv-a", &["backup", s(&data), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    assert_eq!(crate::common::mesh::stored_snapshots(b, "srv-a").len(), 3);
}

/// The user the test daemon runs as (like the unit's `User=omesh`).
const NOBODY: &str = "65534";

fn chown_r(p: &Path, owner: &str) {
    let st = Command::new("chown").arg("-R").arg(format!("{owner}:{owner}")).arg(p).status().unwrap();
    assert!(st.success(), "chown {}", p.display());
}

/// Everything under `dir` that root owns.
fn owned_by_root(dir: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            if m.uid() == 0 {
                found.push(e.path());
            }
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    found
}

#[test]
fn a_root_cli_leaves_nothing_the_daemon_cannot_manage_and_gc_fails_until_that_is_fixed() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let site = Site::new(t.path(), &[("srv-a", "rack-0"), ("srv-b", "rack-1")]);
    let lifecycle = "[retention]\nkeep_last = 1\n[gc]\ngrace_secs = 0\nrepack_unused = 0.01\n";
    site.write_config("srv-a", &["srv-b".into()], 1, lifecycle);
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let _b = site.start("srv-b");
    let a = site.node("srv-a");
    fs::create_dir_all(a.data()).unwrap();
    chown_r(&a.dir, NOBODY);
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), (0..200_000u64).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>()).unwrap();

    // no daemon: root running the writing commands in-process is refused,
    // naming both ways that work, and writes nothing
    for args in [&["backup", s(&data)][..], &["gc"][..]] {
        let r = site.omesh("srv-a", args).code(2);
        assert!(
            r.stderr.contains("nobody")
                && r.stderr.contains("systemctl start omesh")
                && r.stderr.contains("runuser -u nobody"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert_eq!(owned_by_root(&a.data()), Vec::<std::path::PathBuf>::new());

    // the daemon runs as the data directory's owner: root's commands run in it
    let mut c = Command::new("setpriv");
    crate::common::clean_env(&mut c);
    c.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .arg(bin())
        .args(["node", "run", "--config"])
        .arg(a.config());
    let _a = Site::start_command("srv-a", c);
    site.omesh("srv-a", &["backup", s(&data)]).ok();
    fs::write(data.join("f"), (0..200_000u64).map(|i| (i * 104_729 % 253) as u8).collect::<Vec<u8>>()).unwrap();
    site.omesh("srv-a", &["backup", s(&data)]).ok();
    assert_eq!(owned_by_root(&a.data()), Vec::<std::path::PathBuf>::new());
    let f = site.omesh("srv-a", &["forget", "--json"]).ok().json();
    assert_eq!(f["forgotten"], 1, "{f}");

    // pack directories root made (as an in-process root run of an older
    // version did): gc cannot retire the first snapshot's packs, and says
    // so on every run, not once
    let store = a.data().join("sources/srv-a");
    let before = crate::common::packs(&store);
    let dirs: std::collections::BTreeSet<_> = before.iter().map(|p| p.parent().unwrap().to_path_buf()).collect();
    for d in &dirs {
        chown_r(d, "0");
    }
    for run in 0..2 {
        let r = site.omesh("srv-a", &["gc"]);
        assert_ne!(r.code, 0, "gc run {run} reported success: {}", r.stdout);
        assert!(r.stderr.contains("cannot retire") && r.stderr.contains("chown -R"), "run {run}: {}", r.stderr);
        assert_eq!(crate::common::packs(&store), before, "run {run}");
    }
    // given back to the daemon's user, the next run retires them
    for d in &dirs {
        chown_r(d, NOBODY);
    }
    site.omesh("srv-a", &["gc"]).ok();
    let after = crate::common::packs(&store);
    assert!(before.iter().any(|p| !after.contains(p)), "nothing was retired");
    let target = t.path().join("restored");
    site.omesh("srv-a", &["restore", "latest", "--target", s(&target)]).ok();
    assert_eq!(fs::read(crate::common::restored(&target, &data.join("f"))).unwrap(), fs::read(data.join("f")).unwrap());
}

/// The next datagram on systemd's notify socket (the test plays systemd).
fn notified(sock: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("no sd_notify message within the timeout");
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

#[test]
fn the_daemon_tells_systemd_when_it_serves_and_applies_bandwidth_on_sighup() {
    let t = tempfile::tempdir().unwrap();
    let (site, _b) = pair(t.path());
    let sock_path = t.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let peers = ["srv-b".to_string()];

    // a configuration error: exit 2 (the unit does not restart it), never ready
    site.write_config("srv-a", &peers, 1, "[bandwidth]\nlimit = \"fast\"\n");
    let out = site.command("srv-a", &["node", "run"]).env("NOTIFY_SOCKET", &sock_path).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(sock.recv(&mut buf).is_err(), "a daemon that did not start said it was ready");
    sock.set_nonblocking(false).unwrap();

    // ready only once it serves: the control socket answers right after
    site.write_config("srv-a", &peers, 1, "[bandwidth]\nlimit = \"80 Mbit/s\"\n");
    let mut c = site.command("srv-a", &["node", "run"]);
    c.env("NOTIFY_SOCKET", &sock_path);
    let mut a = Site::start_command("srv-a", c);
    assert_eq!(notified(&sock), "READY=1");
    let st = site.omesh("srv-a", &["status", "--json"]).ok().json();
    assert_eq!(st["daemon"], true, "{st}");
    assert_eq!(st["bandwidth"]["limit"], 10_000_000, "{st}");

    // SIGHUP: [bandwidth] applies now, another changed section is named
    site.write_config("srv-a", &peers, 1, "[bandwidth]\nlimit = \"160 Mbit/s\"\n[retention]\nkeep_last = 3\n");
    let hup = |a: &crate::common::mesh::Daemon| {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(a.pid() as i32).unwrap(),
            rustix::process::Signal::HUP,
        )
        .unwrap();
        assert_eq!(notified(&sock), "RELOADING=1");
        assert_eq!(notified(&sock), "READY=1");
    };
    let status = || site.omesh("srv-a", &["status", "--json"]).ok().json();
    hup(&a);
    let st = status();
    assert_eq!(st["bandwidth"]["limit"], 20_000_000, "{st}");
    assert_eq!(st["reloaded"]["applied"], serde_json::json!(["[bandwidth]"]), "{st}");
    assert_eq!(st["reloaded"]["restart_needed"], serde_json::json!(["[retention]"]), "{st}");
    // a file that does not load changes nothing, and says why
    let good = fs::read(site.node("srv-a").config()).unwrap();
    fs::write(site.node("srv-a").config(), "this is not toml").unwrap();
    hup(&a);
    // (the CLI reads the file too: put it back before asking)
    fs::write(site.node("srv-a").config(), good).unwrap();
    let st = status();
    assert_eq!(st["bandwidth"]["limit"], 20_000_000, "{st}");
    let e = st["reloaded"]["error"].as_str().unwrap_or_else(|| panic!("{st}"));
    assert!(e.contains(s(&site.node("srv-a").config())), "{e}");

    a.stop();
    assert_eq!(notified(&sock), "STOPPING=1");

    // no colour codes where stderr is not a terminal (journald, a pipe)
    site.write_config("srv-a", &peers, 1, "");
    let r: Run = site.command("srv-a", &["snapshots"]).env("RUST_LOG", "debug").output().unwrap().into();
    assert!(!r.stderr.is_empty() && !r.stderr.contains('\x1b'), "{:?}", r.stderr);
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
    let t = tempfile::tempdir().unwrap();
    let (site, _b) = pair(t.path());
    let (a, b) = (site.node("srv-a"), site.node("srv-b"));
    // srv-b's key beside srv-a's certificate (a copy-paste slip)
    fs::copy(b.dir.join("tls/node.key"), a.dir.join("tls/node.key")).unwrap();
    let r = site.omesh("srv-a", &["node", "run"]).code(2);
    let (key, cert) = (a.dir.join("tls/node.key"), a.dir.join("tls/node.pem"));
    assert!(
        r.stderr.contains(s(&key)) && r.stderr.contains(s(&cert)) && r.stderr.contains("does not belong"),
        "{}",
        r.stderr
    );
}

#[test]
fn status_names_why_a_peer_refuses_this_nodes_certificate() {
    let t = tempfile::tempdir().unwrap();
    let (site, _b) = pair(t.path());
    // srv-a's certificate is revoked and srv-b has the new CRL
    omesh_net::ca::revoke(&site.ca, "srv-a").unwrap();
    fs::copy(site.ca.join("crl.pem"), site.node("srv-b").dir.join("tls/crl.pem")).unwrap();
    let st = site.omesh("srv-a", &["status", "--json"]).ok().json();
    let peer = st["peers"].as_array().unwrap().iter().find(|p| p["name"] == "srv-b").cloned().unwrap();
    let text = peer.to_string();
    assert!(text.contains("TLS refused by the peer") && text.contains("revoked"), "{st}");
}

#[test]
fn a_dead_node_is_replaced_on_the_survivors_and_its_replicas_move_to_the_new_one() {
    let t = tempfile::tempdir().unwrap();
    let site =
        Site::new(t.path(), &[("srv-a", "rack-0"), ("srv-b", "rack-1"), ("srv-c", "rack-2"), ("srv-d", "rack-3")]);
    // srv-a backs up to srv-b and srv-c (factor 2); srv-d will replace srv-c
    let limit = "[[bandwidth.peer]]\nname = \"srv-c\"\nlimit = \"800 Mbit/s\"\n";
    site.write_config("srv-a", &["srv-b".into(), "srv-c".into()], 2, limit);
    site.write_config("srv-b", &["srv-a".into(), "srv-c".into()], 2, "");
    site.write_config("srv-c", &["srv-a".into(), "srv-b".into()], 2, "");
    let mut b = site.start("srv-b");
    let mut c = site.start("srv-c");
    let mut a = site.start("srv-a");
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), "before srv-c died").unwrap();
    assert_eq!(site.omesh("srv-a", &["backup", s(&data), "--json"]).ok().json()["protected"], true);

    // srv-c is gone: the first backup finds out, the next commands are not
    // held up by it (the daemon remembers it is down) and say so
    c.stop();
    fs::write(data.join("f"), "after srv-c died").unwrap();
    site.omesh("srv-a", &["backup", s(&data)]).code(6);
    let st = site.omesh("srv-a", &["status", "--json"]).ok().json();
    let dead = st["peers"].as_array().unwrap().iter().find(|p| p["name"] == "srv-c").cloned().unwrap();
    assert!(dead["error"].as_str().unwrap_or("").contains("next attempt in"), "{dead}");

    // on each survivor: srv-c becomes srv-d, at its address
    let d_addr = site.node("srv-d").addr();
    for n in ["srv-a", "srv-b"] {
        let r = site.omesh(n, &["node", "replace", "srv-c", "srv-d", "--address", &d_addr, "--domain", "rack-3"]).ok();
        assert!(r.stderr.contains("omesh ca revoke --node srv-c") && r.stderr.contains("restart"), "{}", r.stderr);
    }
    let cfg = fs::read_to_string(site.node("srv-a").config()).unwrap();
    assert!(!cfg.contains("srv-c") && cfg.contains(&d_addr), "{cfg}");
    assert!(cfg.contains("[[bandwidth.peer]]\nname = \"srv-d\""), "{cfg}");
    let r = site.omesh("srv-a", &["node", "replace", "srv-x", "srv-e"]).code(2);
    assert!(
        r.stderr.contains("no [[peer]] is named \"srv-x\"") && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read_to_string(site.node("srv-a").config()).unwrap(), cfg);

    // restarted survivors and the new node: srv-d takes over srv-c's replicas
    a.stop();
    b.stop();
    site.write_config("srv-d", &["srv-a".into(), "srv-b".into()], 2, "");
    let _b = site.start("srv-b");
    let _a = site.start("srv-a");
    let _d = site.start("srv-d");
    let r = site.omesh("srv-d", &["sync", "--json"]).ok().json();
    assert_eq!(r["repaired"].as_array().unwrap().len(), 2, "{r}");
    let snaps = site.omesh("srv-a", &["snapshots", "--json"]).ok().json_list();
    for x in snaps.as_array().unwrap() {
        assert_eq!(x["fully_replicated"], true, "{x}");
        let on: Vec<&str> = x["replicas"].as_array().unwrap().iter().map(|r| r["node"].as_str().unwrap()).collect();
        assert!(on.contains(&"srv-b") && on.contains(&"srv-d"), "{x}");
    }
}

#[test]
fn a_backup_that_fills_the_disk_is_logged_by_the_daemon_with_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let (site, _b) = pair(t.path());
    let a = site.node("srv-a");
    // srv-a's data directory on a 4 MiB file system
    let _m = crate::common::Mounted::tmpfs(&a.data(), "4m");
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("big"), crate::common::tree::data(12 << 20, 1)).unwrap();
    // the daemon's log goes to a file here (journald in production)
    let log = t.path().join("srv-a.log");
    let mut c = Command::new("sh");
    crate::common::clean_env(&mut c);
    c.arg("-c").arg("exec \"$@\" 2>>\"$LOG\"").arg("sh").arg(bin()).args(["node", "run", "--config"]).arg(a.config());
    c.env("LOG", &log);
    let _a = Site::start_command("srv-a", c);
    let r = site.omesh("srv-a", &["backup", s(&data)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("No space left"), "{}", r.stderr);
    let l = fs::read_to_string(&log).unwrap();
    assert!(
        l.contains("backup failed: the disk of the data directory is full") && l.contains("omesh gc"),
        "the daemon did not log the failed backup with advice:\n{l}"
    );
    // and does not blame the file it was reading
    assert!(!l.contains("cannot read file"), "{l}");
}

#[test]
fn a_backup_through_the_daemon_shows_what_it_sends_to_each_peer() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "rack-0"), ("srv-b", "rack-1")]);
    // a paced push (about 4 s for 40 MiB) gives the terminal several frames
    site.write_config("srv-a", &["srv-b".into()], 1, "[bandwidth]\nlimit = \"80 Mbit/s\"\n");
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let _b = site.start("srv-b");
    let _a = site.start("srv-a");
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("big"), crate::common::tree::data(40 << 20, 2)).unwrap();
    let drawn = crate::common::on_a_terminal(&format!(
        "{} backup --config {} {}",
        bin().display(),
        s(&site.node("srv-a").config()),
        s(&data)
    ));
    assert!(drawn.contains("sending it to the peers: srv-b "), "no replication phase per peer drawn: {drawn:?}");
}

#[test]
fn a_storing_peer_without_the_key_applies_retention_per_backup_set_of_its_source() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "rack-0"), ("srv-b", "rack-1")]);
    site.write_config("srv-a", &["srv-b".into()], 1, "");
    site.write_config("srv-b", &["srv-a".into()], 1, "[retention]\nkeep_last = 1\n");
    let _b = site.start("srv-b");
    let (x, y) = (t.path().join("x"), t.path().join("y"));
    fs::create_dir_all(&x).unwrap();
    fs::create_dir_all(&y).unwrap();
    for round in 0..2 {
        fs::write(x.join("f"), format!("round {round}")).unwrap();
        site.omesh("srv-a", &["backup", s(&x)]).ok();
    }
    fs::write(y.join("g"), b"ad hoc").unwrap();
    site.omesh("srv-a", &["backup", s(&y)]).ok();
    // srv-b cannot read srv-a's paths; the groups srv-a signed tell it
    // which snapshots belong together
    let dry = site.omesh("srv-b", &["forget", "--source", "srv-a", "--dry-run", "--json"]).ok().json();
    assert_eq!((dry["forgotten"].as_u64(), dry["kept"].as_u64()), (Some(1), Some(2)), "{dry}");
    let items = dry["items"].as_array().unwrap();
    assert!(items.iter().all(|i| i["group"].as_str().unwrap().len() == 32 && i["paths"].is_null()), "{dry}");
    // srv-a, with the key, groups them alike
    let own = site.omesh("srv-a", &["forget", "--dry-run", "--json"]);
    assert_eq!(own.code, 2, "srv-a has no [retention] rules: {own:?}");
    site.write_config("srv-a", &["srv-b".into()], 1, "[retention]\nkeep_last = 1\n");
    let own = site.omesh("srv-a", &["forget", "--dry-run", "--json"]).ok().json();
    // every snapshot is in the same group on both, and each group loses
    // as many (which one within a group can differ for snapshots made in
    // the same second: a replica knows their times to the second)
    let by_id = |v: &serde_json::Value| -> std::collections::BTreeMap<String, String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["id"].as_str().unwrap().into(), i["group"].as_str().unwrap().into()))
            .collect()
    };
    assert_eq!(by_id(&own), by_id(&dry), "the source and its replica group differently: {own} {dry}");
    let forgotten_per_group = |v: &serde_json::Value| -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for i in v["items"].as_array().unwrap() {
            *m.entry(i["group"].as_str().unwrap().to_string()).or_insert(0) += (i["keep"] == false) as usize;
        }
        m
    };
    assert_eq!(forgotten_per_group(&own), forgotten_per_group(&dry), "{own} {dry}");
}
