//! The AWS Systems Manager documents of deploy/ssm, run as the SSM agent
//! would run them (parameters defaulted, validated against their
//! allowedPattern, substituted; the runCommand lines as one sh script)
//! against a local three-node site: a new node enrols (CSR out, certificate
//! in), a backup is taken, status is read as JSON, a snapshot is restored.

use crate::common::mesh::Site;
use crate::common::{bin, clean_env, restored, s, tree};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn doc(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/ssm")).join(name)
}

/// Render document `name` with `params` (tests/fixtures/ssm_render.py):
/// Ok(script) or Err(stderr) when a parameter is refused.
pub(crate) fn render(name: &str, params: &[(&str, &str)]) -> Result<String, String> {
    // Debian's python3 (.ci/run installs python3-yaml for it)
    let out = Command::new("/usr/bin/python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/ssm_render.py"))
        .arg(doc(name))
        .args(params.iter().map(|(k, v)| format!("{k}={v}")))
        .output()
        .unwrap();
    if out.status.code() == Some(3) {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout).unwrap())
}

/// Run a rendered document as the agent does (`sh`, which is dash on
/// Debian; omesh on PATH).
fn run(name: &str, params: &[(&str, &str)]) -> (String, String) {
    let script = render(name, params).unwrap();
    let dir = bin().parent().unwrap().to_path_buf();
    let mut c = Command::new("sh");
    clean_env(&mut c);
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = c.arg("-c").arg(&script).env("PATH", path).stdin(Stdio::null()).output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{name} failed ({}):\n{script}\nstdout: {o}\nstderr: {e}", out.status);
    (o, e)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn the_ssm_documents_enrol_a_node_back_up_report_and_restore_on_a_three_node_site() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r1"), ("srv-b", "r2"), ("srv-c", "r3")]);
    let cfg = |n: &str| s(&site.node(n).config()).to_string();
    // srv-c is new: it has only the site's public ca.pem and crl.pem
    let tls = site.node("srv-c").dir.join("tls");
    std::fs::remove_file(tls.join("node.key")).unwrap();
    std::fs::remove_file(tls.join("node.pem")).unwrap();

    // enrolment: the request comes out in the command output, public
    let (csr, _) = run("omesh-enroll-request.yml", &[("ConfigPath", &cfg("srv-c"))]);
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----") && !csr.contains("PRIVATE"), "{csr}");
    let csr_file = t.path().join("srv-c.csr");
    std::fs::write(&csr_file, &csr).unwrap();
    let cert_file = t.path().join("srv-c.pem");
    crate::common::omesh(["ca", "sign", "--dir", s(&site.ca), "--node", "srv-c", s(&csr_file), "--out", s(&cert_file)])
        .ok();
    let cert = std::fs::read_to_string(&cert_file).unwrap();
    let (out, _) = run(
        "omesh-enroll-install.yml",
        &[("ConfigPath", &cfg("srv-c")), ("Certificate", cert.trim_end()), ("Restart", "no")],
    );
    assert_eq!(json(&out)["certificate"]["node"], "srv-c", "{out}");
    assert_eq!(std::fs::read_to_string(tls.join("node.pem")).unwrap().trim_end(), cert.trim_end());

    let _b = site.start("srv-b");
    let _c = site.start("srv-c");
    let _a = site.start("srv-a");
    let src = t.path().join("src");
    tree::make_full(&src, false);
    let (out, _) = run("omesh-backup-now.yml", &[("ConfigPath", &cfg("srv-a")), ("Paths", s(&src))]);
    let rep = json(&out);
    assert_eq!(rep["protected"], true, "{rep}");

    let (out, _) = run("omesh-status.yml", &[("ConfigPath", &cfg("srv-a"))]);
    let st = json(&out);
    let peers: Vec<&str> = st["peers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(peers.contains(&"srv-c") && peers.contains(&"srv-b"), "{st}");
    assert!(st["peers"].as_array().unwrap().iter().all(|p| p["reachable"] == true), "{st}");

    let target = t.path().join("r");
    let snap = rep["snapshot"].as_str().unwrap();
    run("omesh-restore.yml", &[("ConfigPath", &cfg("srv-a")), ("Snapshot", snap), ("Target", s(&target))]);
    tree::assert_same(&src, &restored(&target, &src));

    // a parameter that would inject shell is refused before anything runs
    let e = render("omesh-restore.yml", &[("ConfigPath", &cfg("srv-a")), ("Target", "/tmp/r; rm -rf /")]).unwrap_err();
    assert!(e.contains("Target"), "{e}");
    let e = render("omesh-backup-now.yml", &[("Paths", "/srv $(reboot)")]).unwrap_err();
    assert!(e.contains("Paths"), "{e}");
    let e = render(
        "omesh-enroll-install.yml",
        &[("Certificate", "-----BEGIN CERTIFICATE-----\n'; reboot; '\n-----END CERTIFICATE-----")],
    )
    .unwrap_err();
    assert!(e.contains("Certificate"), "{e}");
}
