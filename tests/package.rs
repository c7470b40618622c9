//! The Debian package (cargo-deb, deploy/debian), installed into a fresh
//! Debian root (mmdebstrap, made by .ci/run): the binary runs, the unit
//! verifies, postinst makes the user and directories and starts nothing, an
//! upgrade from the previous build keeps config and data, and a purge keeps
//! the data unless told; the SSM install document upgrades it; the
//! cloud-init user data installs, configures and enrols a new server.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `cargo deb` of the binary the tests run (no build: the test build is
/// there), with `version`, into `out`; the package's path.
fn build_deb(out: &Path, version: &str) -> PathBuf {
    // cargo-deb strips into one temporary file under the target directory:
    // two tests packaging at once would share it, so one at a time
    let lock_path = std::env::temp_dir().join("omesh-cargo-deb.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    // the packaging script, without its build step: it generates the
    // completions and man pages from this binary, then runs cargo deb
    let target = crate::common::bin().parent().unwrap().parent().unwrap().to_path_buf();
    let o = Command::new(workspace().join("deploy/debian/build-deb"))
        .args(["--profile", "dev", "--fast", "--deb-version", version])
        .arg("-o")
        .arg(out)
        .env("OMESH_NO_BUILD", "1")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "deploy/debian/build-deb failed (is cargo-deb installed? .ci/run installs it): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let p = out.join(format!("omesh_{version}_amd64.deb"));
    assert!(p.exists(), "{}", String::from_utf8_lossy(&o.stdout));
    p
}

/// A fresh Debian root (bookworm minbase with systemd and procps), from the
/// tarball .ci/run makes once per machine.
fn fresh_root(dir: &Path) -> PathBuf {
    let tar = std::env::var("OMESH_DEBIAN_ROOT_TAR").unwrap_or_else(|_| "/var/cache/omesh-ci/bookworm-root.tar".into());
    assert!(Path::new(&tar).exists(), "{tar} is missing: .ci/run makes it with mmdebstrap");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let st = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&root).status().unwrap();
    assert!(st.success());
    root
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn chroot(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = Command::new("chroot");
    c.arg(root).args(args).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// `systemd-analyze verify` of `unit` as installed in `root`.
fn verify_unit(root: &Path, unit: &str) {
    let o = Command::new("systemd-analyze")
        .arg(format!("--root={}", root.display()))
        .args(["verify", unit])
        .output()
        .unwrap();
    assert!(o.status.success(), "systemd-analyze verify {unit}: {}", String::from_utf8_lossy(&o.stderr));
}

fn install(root: &Path, deb: &Path) -> Out {
    let name = deb.file_name().unwrap().to_str().unwrap();
    std::fs::copy(deb, root.join("tmp").join(name)).unwrap();
    let r = chroot(root, &["dpkg", "-i", &format!("/tmp/{name}")], &[]);
    assert!(r.ok, "dpkg -i {name}: {}{}", r.stdout, r.stderr);
    r
}

#[test]
fn the_debian_package_installs_upgrades_and_purges_in_a_fresh_debian_root() {
    let t = tempfile::tempdir().unwrap();
    let debs = t.path().join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let first = build_deb(&debs, "0.1.0-1");
    let second = build_deb(&debs, "0.1.0-2");
    let root = fresh_root(t.path());

    // first install: the binary, the user, the directories; nothing started
    let r = install(&root, &first);
    assert!(r.stderr.contains("installed, not started"), "{}", r.stderr);
    let v = chroot(&root, &["omesh", "--version"], &[]);
    assert!(v.ok && v.stdout.starts_with("omesh "), "{}{}", v.stdout, v.stderr);
    // the installed completion script completes subcommands and options
    let c = chroot(
        &root,
        &[
            "bash",
            "-c",
            // bash calls the function with the command, the word and the one before
            ". /usr/share/bash-completion/completions/omesh; COMP_WORDS=(omesh res); COMP_CWORD=1; \
             _omesh omesh res omesh; echo ${COMPREPLY[@]}; COMP_WORDS=(omesh restore --targ); COMP_CWORD=2; \
             _omesh omesh --targ restore; echo ${COMPREPLY[@]}",
        ],
        &[],
    );
    assert_eq!(c.stdout, "restore residency\n--target\n", "{}", c.stderr);
    for f in ["usr/share/zsh/vendor-completions/_omesh", "usr/share/fish/vendor_completions.d/omesh.fish"] {
        assert!(root.join(f).exists(), "{f} not installed");
    }
    // a man page per command, gzipped, with the command's own description
    let man = root.join("usr/share/man/man1");
    for page in ["omesh.1.gz", "omesh-backup.1.gz", "omesh-key-export.1.gz", "omesh-version.1.gz"] {
        assert!(man.join(page).exists(), "{page} not installed");
    }
    let z = chroot(&root, &["zcat", "/usr/share/man/man1/omesh-restore.1.gz"], &[]);
    assert!(
        z.stdout.contains(".TH omesh-restore 1") && z.stdout.contains("Nothing is ever written outside"),
        "{}",
        z.stdout
    );
    let u = chroot(&root, &["getent", "passwd", "omesh"], &[]);
    assert!(u.ok && u.stdout.contains(":/var/lib/omesh:"), "{}", u.stdout);
    let st = chroot(&root, &["stat", "-c", "%U %G %a", "/var/lib/omesh", "/etc/omesh"], &[]);
    assert_eq!(st.stdout, "omesh omesh 700\nroot omesh 750\n", "{}", st.stderr);
    assert!(root.join("usr/lib/systemd/system/omesh.service").exists());
    assert!(root.join("usr/share/doc/omesh/examples/omesh.toml").exists());
    assert!(root.join("usr/share/omesh/prometheus/omesh-rules.yml").exists());
    let wants = root.join("etc/systemd/system/multi-user.target.wants/omesh.service");
    assert!(std::fs::symlink_metadata(&wants).is_err(), "a fresh install enabled the daemon");
    verify_unit(&root, "omesh.service");
    // the unit starts the packaged binary with the packaged config path
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/omesh.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/omesh node run --config /etc/omesh/omesh.toml"), "{unit}");

    // an administrator's config and a node's data survive an upgrade
    std::fs::write(root.join("etc/omesh/omesh.toml"), "name = \"srv-a\"\n").unwrap();
    std::fs::write(root.join("var/lib/omesh/marker"), "data").unwrap();
    // the upgrade through the SSM document omesh-install, as the agent runs it
    std::fs::copy(&second, root.join("tmp/omesh_0.1.0-2_amd64.deb")).unwrap();
    let script = crate::ssm::render("omesh-install.yml", &[("Package", "/tmp/omesh_0.1.0-2_amd64.deb")]).unwrap();
    let r = chroot(&root, &["sh", "-c", &script], &[]);
    assert!(r.ok, "omesh-install: {}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("omesh 0.1.0"), "{}", r.stdout);
    assert!(!r.stderr.contains("installed, not started"), "an upgrade is not a first install: {}", r.stderr);
    let s = chroot(&root, &["dpkg-query", "-W", "-f", "${Version}", "omesh"], &[]);
    assert_eq!(s.stdout, "0.1.0-2");
    assert_eq!(std::fs::read_to_string(root.join("etc/omesh/omesh.toml")).unwrap(), "name = \"srv-a\"\n");
    assert!(root.join("var/lib/omesh/marker").exists());

    // purge keeps the stores and the identity unless told
    let r = chroot(&root, &["dpkg", "--purge", "omesh"], &[]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("kept /var/lib/omesh"), "{}", r.stderr);
    assert!(!root.join("usr/bin/omesh").exists());
    assert!(root.join("var/lib/omesh/marker").exists() && root.join("etc/omesh/omesh.toml").exists());
    install(&root, &second);
    let r = chroot(&root, &["dpkg", "--purge", "omesh"], &[("OMESH_PURGE_DATA", "yes")]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(!root.join("var/lib/omesh").exists() && !root.join("etc/omesh").exists());
    assert!(!chroot(&root, &["getent", "passwd", "omesh"], &[]).ok, "the user stayed after a purge that was told");
}

/// The cloud-init user data of deploy/cloud-init: cloud-init's own schema
/// check passes, and its first boot, run in a fresh Debian root (its
/// write_files applied as cloud-init would, its runcmd run in the root),
/// installs the package, writes the node's configuration from node.env,
/// makes the key and request, and arms the unit that waits for the
/// certificate; the certificate the site CA signs then installs.
#[test]
fn the_cloud_init_user_data_installs_configures_and_enrols_a_new_server() {
    let userdata = workspace().join("deploy/cloud-init/omesh-user-data.yml");
    let o = Command::new("cloud-init").arg("schema").arg("--config-file").arg(&userdata).output();
    let o = o.unwrap_or_else(|e| panic!("cloud-init is not installed ({e}): .ci/run installs Debian's cloud-init"));
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));

    let t = tempfile::tempdir().unwrap();
    let debs = t.path().join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let deb = build_deb(&debs, "0.1.0-1");
    let root = fresh_root(t.path());
    std::fs::copy(&deb, root.join("tmp/omesh.deb")).unwrap();
    let ca = t.path().join("ca");
    omesh_net::ca::init(&ca, "store-0417", 30).unwrap();
    let env = t.path().join("node.env");
    std::fs::write(
        &env,
        "OMESH_NAME=srv-c\nOMESH_LISTEN=10.20.0.13:7443\nOMESH_DOMAIN=rack-3\n\
         OMESH_PEERS=\"srv-a=10.20.0.11:7443 srv-b=10.20.0.12:7443\"\nOMESH_FACTOR=2\n\
         OMESH_ALLOWED=\"10.20.0.0/16\"\nOMESH_FORBIDDEN=\"10.99.0.0/16\"\nOMESH_PACKAGE=/tmp/omesh.deb\n",
    )
    .unwrap();
    let o = Command::new("/usr/bin/python3")
        .arg(workspace().join("tests/fixtures/cloud_init_apply.py"))
        .arg(&root)
        .arg(&userdata)
        .arg(format!("/etc/omesh/node.env={}", env.display()))
        .arg(format!("/etc/omesh/ca.pem={}", ca.join("ca.pem").display()))
        .arg(format!("/etc/omesh/crl.pem={}", ca.join("crl.pem").display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for line in String::from_utf8(o.stdout).unwrap().lines() {
        // (no systemd runs in the root: SYSTEMD_OFFLINE makes systemctl
        // enable units by their links and say it ignores `start`)
        let r = chroot(&root, &["sh", "-c", line], &[("SYSTEMD_OFFLINE", "1")]);
        assert!(r.ok, "runcmd {line}: {}{}", r.stdout, r.stderr);
    }
    // the configuration from node.env, valid for omesh
    let toml = std::fs::read_to_string(root.join("etc/omesh/omesh.toml")).unwrap();
    for want in [
        "name = \"srv-c\"",
        "domain = \"rack-3\"",
        "address = \"10.20.0.12:7443\"",
        "allowed_networks = [\"10.20.0.0/16\"]",
    ] {
        assert!(toml.contains(want), "{want} missing:\n{toml}");
    }
    let st = chroot(&root, &["stat", "-c", "%U %a", "/etc/omesh/node.key"], &[]);
    assert_eq!(st.stdout, "omesh 600\n", "{}", st.stderr);
    let csr = std::fs::read_to_string(root.join("etc/omesh/srv-c.csr")).unwrap();
    assert!(csr.contains("CERTIFICATE REQUEST"));
    // armed: the path unit is enabled, omesh itself waits for it
    // (the links point inside the root: look at the links, not their targets)
    let link = |p: &str| std::fs::symlink_metadata(root.join(p)).is_ok();
    assert!(link("etc/systemd/system/multi-user.target.wants/omesh-enrolled.path"));
    assert!(!link("etc/systemd/system/multi-user.target.wants/omesh.service"));
    verify_unit(&root, "omesh-enrolled.path");
    // the site CA signs the request; the certificate installs on the node
    let csr_pem = std::fs::read_to_string(root.join("etc/omesh/srv-c.csr")).unwrap();
    let (cert, _) = omesh_net::ca::sign_request(&ca, &csr_pem, Some("srv-c"), 30).unwrap();
    std::fs::write(root.join("tmp/srv-c.pem"), cert).unwrap();
    let r = chroot(&root, &["omesh", "cert", "install", "--config", "/etc/omesh/omesh.toml", "/tmp/srv-c.pem"], &[]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(root.join("etc/omesh/node.pem").exists());
}
