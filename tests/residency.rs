//! The residency boundary on loopback: refusals name the destination,
//! address and rule, nothing is sent, the daemon refuses to start outside
//! the boundary, inbound connections from outside are refused, and the audit
//! report lists exactly where data went.

use crate::common::mesh::{Site, stored_snapshots};
use crate::common::{s, tree};
use std::fs;

fn src(root: &std::path::Path) -> std::path::PathBuf {
    let p = root.join("src");
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("f"), tree::data(200_000, 3)).unwrap();
    p
}

#[test]
fn peer_outside_allowed_networks_is_refused_and_nothing_is_sent() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1")]);
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    site.write_config("srv-a", &["srv-b".into()], 1, "[residency]\nallowed_networks = [\"10.20.0.0/16\"]\n");
    let _b = site.start("srv-b");
    let chk = site.omesh("srv-a", &["residency", "check", "--json"]).code(2).json();
    let peer = chk["destinations"].as_array().unwrap().iter().find(|d| d["name"] == "srv-b").unwrap().clone();
    assert_eq!(peer["allowed"], false);
    assert!(peer["reason"].as_str().unwrap().contains("outside the allowed networks [10.20.0.0/16]"), "{peer}");
    let r = site.omesh("srv-a", &["backup", s(&src(t.path())), "--json"]).code(6).json();
    let e = r["replicas"][0]["error"].as_str().unwrap();
    assert!(e.contains("srv-b") && e.contains(&site.node("srv-b").ip) && e.contains("allowed_networks"), "{e}");
    assert!(stored_snapshots(site.node("srv-b"), "srv-a").is_empty());
    assert!(!site.node("srv-b").data().join("sources/srv-a").exists(), "srv-b received data");
    // the daemon refuses to start on a violation
    let out = site.command("srv-a", &["node", "run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("violates the residency boundary"));
}

#[test]
fn a_hostname_resolving_into_a_forbidden_network_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1")]);
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let b = site.node("srv-b").clone();
    let _b = site.start("srv-b");
    // srv-b reached as "localhost": resolves to 127.0.0.1 (and ::1), forbidden
    site.write_config(
        "srv-a",
        &["srv-b".into()],
        1,
        "[residency]\nforbidden_networks = [\"127.0.0.0/8\", \"::1/128\"]\n",
    );
    let cfg =
        fs::read_to_string(site.node("srv-a").config()).unwrap().replace(&b.addr(), &format!("localhost:{}", b.port));
    fs::write(site.node("srv-a").config(), cfg).unwrap();
    let chk = site.omesh("srv-a", &["residency", "check", "--json"]).code(2).json();
    let lines: Vec<_> =
        chk["destinations"].as_array().unwrap().iter().filter(|d| d["name"] == "srv-b").cloned().collect();
    assert!(!lines.is_empty() && lines.iter().all(|l| l["allowed"] == false), "{chk}");
    assert!(lines.iter().any(|l| l["reason"].as_str().unwrap().contains("forbidden network 127.0.0.0/8")), "{chk}");
    let r = site.omesh("srv-a", &["backup", s(&src(t.path())), "--json"]).code(6).json();
    let e = r["replicas"][0]["error"].as_str().unwrap();
    assert!(e.contains("forbidden network"), "{e}");
    assert!(!b.data().join("sources/srv-a").exists(), "srv-b received data");
}

#[test]
fn inbound_from_a_forbidden_address_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1")]);
    site.write_config("srv-a", &["srv-b".into()], 1, "");
    // srv-b accepts connections only from the two nodes' configured
    // addresses; srv-a's client endpoint connects from 127.0.0.1
    let (a, b) = (site.node("srv-a").ip.clone(), site.node("srv-b").ip.clone());
    let metrics_port = crate::common::mesh::free_port("127.0.0.1");
    site.write_config(
        "srv-b",
        &["srv-a".into()],
        1,
        &format!(
            "[residency]\nallowed_networks = [\"{a}/32\", \"{b}/32\"]\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ),
    );
    let _b = site.start("srv-b");
    let r = site.omesh("srv-a", &["backup", s(&src(t.path())), "--json"]).code(6).json();
    assert_eq!(r["replicas"][0]["ok"], false, "{r}");
    assert!(!site.node("srv-b").data().join("sources/srv-a").exists(), "srv-b stored data from a refused address");
    let st = site.omesh("srv-b", &["status", "--json"]).ok().json();
    assert!(st["residency_refusals"].as_u64().unwrap() >= 1, "{st}");
    // ...but a metrics scraper on the same host (loopback) is served
    let mut c = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    use std::io::{Read, Write};
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut m = String::new();
    c.read_to_string(&mut m).unwrap();
    assert!(m.starts_with("HTTP/1.1 200") && m.contains("omesh_"), "{m}");
}

#[test]
fn audit_report_lists_exactly_the_destinations_that_received_data() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1"), ("srv-c", "r2"), ("srv-d", "r3")]);
    for n in ["srv-b", "srv-c", "srv-d"] {
        site.write_config(n, &["srv-a".into()], 1, "");
    }
    site.write_config("srv-a", &["srv-b".into(), "srv-c".into(), "srv-d".into()], 2, "");
    let _b = site.start("srv-b");
    let _c = site.start("srv-c");
    // srv-d is down: it must not appear
    let r = site.omesh("srv-a", &["backup", s(&src(t.path())), "--json"]).ok().json();
    let snap = r["snapshot"].as_str().unwrap().to_string();
    let rep = site.omesh("srv-a", &["residency", "report", "--json"]).ok().json_list();
    let entry = rep.as_array().unwrap().iter().find(|e| e["snapshot"] == snap.as_str()).unwrap().clone();
    let mut got: Vec<(String, String, String)> = entry["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["node"].as_str().unwrap().into(),
                d["address"].as_str().unwrap().into(),
                d["cert_sha256"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    let mut want = Vec::new();
    for n in ["srv-b", "srv-c"] {
        let pem = fs::read_to_string(site.node(n).dir.join("tls/node.pem")).unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer| c.to_vec())
            .unwrap();
        want.push((n.to_string(), site.node(n).addr(), omesh_net::ca::sha256_hex(&der)));
    }
    assert_eq!(got, want);
    // and the snapshot is indeed exactly there
    for n in ["srv-b", "srv-c"] {
        assert_eq!(stored_snapshots(site.node(n), "srv-a"), vec![snap.clone()]);
    }
    assert!(stored_snapshots(site.node("srv-d"), "srv-a").is_empty());
    // --since after the backup lists nothing
    let rep = site.omesh("srv-a", &["residency", "report", "--since", "2200-01-01", "--json"]).ok().json_list();
    assert!(rep.as_array().unwrap().is_empty());
}

/// A QUIC long-header packet of an unknown version, padded to the 1200
/// bytes a server needs before it answers with Version Negotiation.
fn version_probe() -> Vec<u8> {
    let mut p = vec![0xc0];
    p.extend_from_slice(&0x0a1a_2a3au32.to_be_bytes());
    p.push(8);
    p.extend_from_slice(&[0x11; 8]);
    p.push(8);
    p.extend_from_slice(&[0x22; 8]);
    p.resize(1200, 0);
    p
}

/// Whether `to` answers the probe sent from `from` (within 3 s).
fn answers_probe(from: &str, to: &str) -> bool {
    let s = std::net::UdpSocket::bind(format!("{from}:0")).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(3))).unwrap();
    s.send_to(&version_probe(), to).unwrap();
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        // a Version Negotiation packet: long header, version 0
        Ok((n, _)) => n > 5 && buf[0] & 0x80 != 0 && buf[1..5] == [0, 0, 0, 0],
        Err(_) => false,
    }
}

#[test]
fn nothing_at_all_is_sent_to_a_refused_address_not_even_version_negotiation() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1")]);
    let (a, b) = (site.node("srv-a").ip.clone(), site.node("srv-b").ip.clone());
    site.write_config(
        "srv-b",
        &["srv-a".into()],
        1,
        &format!("[residency]\nallowed_networks = [\"{a}/32\", \"{b}/32\"]\n"),
    );
    let _b = site.start("srv-b");
    let b_addr = site.node("srv-b").addr();
    // from an allowed address the same probe is answered: it is a valid probe
    assert!(answers_probe(&a, &b_addr), "srv-b did not answer a version probe from an allowed address");
    // from 127.0.0.1, outside the boundary: no answer at all
    assert!(!answers_probe("127.0.0.1", &b_addr), "srv-b answered a refused address");
    let st = site.omesh("srv-b", &["status", "--json"]).ok().json();
    assert!(st["residency_refusals"].as_u64().unwrap() >= 1, "{st}");
}

#[test]
fn residency_check_covers_the_metrics_listener() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1")]);
    let (a, b) = (site.node("srv-a").ip.clone(), site.node("srv-b").ip.clone());
    let policy = format!("[residency]\nallowed_networks = [\"{a}/32\", \"{b}/32\"]\n");
    for (listen, allowed) in [("0.0.0.0:9464", false), ("127.0.0.1:9464", true), (&*format!("{a}:9464"), true)] {
        site.write_config("srv-a", &["srv-b".into()], 1, &format!("{policy}[metrics]\nlisten = \"{listen}\"\n"));
        let r = site.omesh("srv-a", &["residency", "check", "--json"]);
        let j = r.json();
        let line = j["destinations"].as_array().unwrap().iter().find(|l| l["kind"] == "metrics").cloned();
        let line = line.unwrap_or_else(|| panic!("no metrics line for {listen}: {j}"));
        assert_eq!(line["allowed"], allowed, "{listen}: {line}");
        assert_eq!(r.code, if allowed { 0 } else { 2 }, "{listen}: {j}");
    }
}

/// `omesh residency check --config` for srv-a in a mount namespace whose
/// /etc/hosts is `hosts` (name resolution as the server would see it).
fn check_with_hosts(site: &Site, root: &std::path::Path, hosts: &str) -> crate::common::Run {
    let file = root.join("hosts");
    fs::write(&file, hosts).unwrap();
    let mut c = std::process::Command::new("unshare");
    crate::common::clean_env(&mut c);
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"")
        .arg("sh")
        .arg(&file)
        .arg(crate::common::bin())
        .args(["residency", "check", "--json", "--config"])
        .arg(site.node("srv-a").config());
    c.output().unwrap().into()
}

#[test]
fn an_outposts_access_point_is_checked_at_the_host_the_sdk_connects_to() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0")]);
    let arn = "arn:aws:s3-outposts:eu-central-1:123456789012:outpost/op-0123456789abcdef0/accesspoint/omesh";
    let host = "omesh-123456789012.op-0123456789abcdef0.s3-outposts.eu-central-1.amazonaws.com";
    let s3 = format!("[[s3]]\nname = \"rack\"\nbucket = \"{arn}\"\nregion = \"eu-central-1\"\n");
    let policy = "[residency]\nallowed_networks = [\"127.0.0.0/8\"]\n";
    site.write_config("srv-a", &[], 1, &format!("{policy}{s3}"));
    // the access point's name resolving to a CoIP-like address on site: allowed
    let r = check_with_hosts(&site, t.path(), &format!("127.0.0.80 {host}\n"));
    let chk = r.ok().json();
    let line = chk["destinations"].as_array().unwrap().iter().find(|d| d["name"] == "rack").unwrap().clone();
    assert_eq!((line["host"].as_str(), line["allowed"].as_bool()), (Some(host), Some(true)), "{chk}");
    assert_eq!(line["address"], "127.0.0.80:443", "{chk}");
    // resolving outside the boundary: refused, naming the real host
    let r = check_with_hosts(&site, t.path(), &format!("10.99.0.7 {host}\n"));
    let chk = r.code(2).json();
    let line = chk["destinations"].as_array().unwrap().iter().find(|d| d["name"] == "rack").unwrap().clone();
    assert_eq!((line["host"].as_str(), line["allowed"].as_bool()), (Some(host), Some(false)), "{chk}");
    assert!(line["reason"].as_str().unwrap().contains("outside the allowed networks"), "{chk}");

    // what the SDK's rules would get wrong is refused when the file loads
    site.write_config("srv-a", &[], 1, &format!("{policy}{s3}endpoint = \"https://10.0.9.20\"\n"));
    let r = site.omesh("srv-a", &["residency", "check"]).code(2);
    assert!(
        r.stderr.contains("endpoint") && r.stderr.contains("10.0.9.20") && r.stderr.contains("remove endpoint"),
        "{}",
        r.stderr
    );
    site.write_config("srv-a", &[], 1, &format!("{policy}{s3}path_style = true\n"));
    let r = site.omesh("srv-a", &["residency", "check"]).code(2);
    assert!(r.stderr.contains("path_style") && r.stderr.contains("rack"), "{}", r.stderr);

    // a plain bucket without endpoint is the Region's public endpoint:
    // refused without a DNS lookup, by the check and by a backup
    site.write_config(
        "srv-a",
        &[],
        1,
        &format!("{policy}[[s3]]\nname = \"rack\"\nbucket = \"omesh\"\nregion = \"eu-central-1\"\n"),
    );
    let chk = site.omesh("srv-a", &["residency", "check", "--json"]).code(2).json();
    let line = chk["destinations"].as_array().unwrap().iter().find(|d| d["name"] == "rack").unwrap().clone();
    assert_eq!(line["host"], "omesh.s3.eu-central-1.amazonaws.com", "{chk}");
    assert!(line["reason"].as_str().unwrap().contains("public AWS S3 endpoint"), "{chk}");
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), crate::common::tree::data(5000, 3)).unwrap();
    let r = site.omesh("srv-a", &["backup", crate::common::s(&src)]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("public AWS S3 endpoint") && r.stderr.contains("rack"), "{}", r.stderr);
}

/// A `[notify]` webhook is a destination like a peer: `residency check`
/// lists it, and an address outside the boundary is refused.
#[test]
fn a_notification_webhook_outside_the_boundary_is_refused_by_the_check() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0")]);
    let policy = "[residency]\nallowed_networks = [\"127.0.0.0/8\"]\n";
    let hooks = "[[notify.webhook]]\nurl = \"http://127.0.0.9:8080/in\"\n[[notify.webhook]]\nurl = \"http://10.99.0.9:8080/out\"\n";
    site.write_config("srv-a", &[], 1, &format!("{policy}[[s3]]\nname = \"rack\"\nendpoint = \"http://127.0.0.8:3900\"\nbucket = \"b\"\nregion = \"r\"\npath_style = true\n{hooks}"));
    let chk = site.omesh("srv-a", &["residency", "check", "--json"]).code(2).json();
    let line = |url: &str| {
        chk["destinations"].as_array().unwrap().iter().find(|d| d["kind"] == "notify" && d["name"] == url).cloned()
    };
    let inside = line("http://127.0.0.9:8080/in").unwrap_or_else(|| panic!("{chk}"));
    assert_eq!(
        (inside["address"].as_str(), inside["allowed"].as_bool()),
        (Some("127.0.0.9:8080"), Some(true)),
        "{chk}"
    );
    let outside = line("http://10.99.0.9:8080/out").unwrap_or_else(|| panic!("{chk}"));
    assert_eq!(outside["allowed"], false, "{chk}");
    assert!(outside["reason"].as_str().unwrap().contains("outside the allowed networks"), "{chk}");
}
