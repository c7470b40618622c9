//! In the network-namespace lab (tools/lab): a full backup, replication to
//! a peer and the site's S3 server, and a restore onto another server move
//! zero bytes over any service link while the LNI carries everything; a
//! peer name that resolves into the service-link network is refused; an S3
//! on Outposts access point (emulated: tools/lab/outposts-emulator) is
//! addressed by its own host name, signed for s3-outposts, over the LNI.

use crate::common::garage::Garage;
use crate::common::mesh::{Site, stored_snapshots};
use crate::common::{Killed, restored, s, tree};
use std::process::Command;

struct Lab {
    prefix: String,
}

fn lab_script() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/lab/lab"))
}

impl Lab {
    fn up(servers: usize) -> Lab {
        let prefix = format!("om{}", std::process::id() % 100000);
        let st = Command::new(lab_script())
            .args(["up", "--prefix", &prefix, "--servers", &servers.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "tools/lab up failed (needs root and iproute2)");
        Lab { prefix }
    }
    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }
    /// srv-1..srv-3 on the lab's servers s1..s3 (10.20.0.11..13:7443).
    fn site(&self, dir: &std::path::Path) -> Site {
        let mut site = Site::new(dir, &[("srv-1", "rack-1"), ("srv-2", "rack-2"), ("srv-3", "rack-3")]);
        for (i, n) in site.nodes.iter_mut().enumerate() {
            n.ip = format!("10.20.0.{}", 11 + i);
            n.port = 7443;
            n.netns = Some(self.ns(&format!("s{}", i + 1)));
        }
        site
    }
    /// (rx, tx) bytes of an interface in a namespace.
    fn counters(&self, n: &str, iface: &str) -> (u64, u64) {
        let out = Command::new(lab_script()).args(["counters", "--prefix", &self.prefix, n, iface]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let v: Vec<u64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[0], v[1])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(lab_script()).args(["down", "--prefix", &self.prefix]).status();
        for i in 1..=3 {
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{}s{i}", self.prefix));
        }
    }
}

#[test]
fn backup_replication_and_restore_never_touch_the_service_link() {
    let t = tempfile::tempdir().unwrap();
    let lab = Lab::up(3);
    let mut site = lab.site(t.path());
    let g = Garage::start_in(&t.path().join("garage"), Some(&lab.ns("obj")), "10.20.0.50");
    site.env = g.env();
    let boundary = |ip: &str| {
        format!(
            "[residency]\nallowed_networks = [\"10.20.0.0/16\"]\nforbidden_networks = [\"10.99.0.0/16\"]\nbind = \"{ip}\"\n"
        )
    };
    // srv-1: factor 2 = one peer + the bucket; srv-3: the restoring server
    site.write_config("srv-1", &["srv-2".into()], 2, &format!("{}{}", boundary("10.20.0.11"), g.toml("rack-s3", "")));
    site.write_config("srv-2", &["srv-1".into(), "srv-3".into()], 1, &boundary("10.20.0.12"));
    site.write_config("srv-3", &["srv-2".into()], 1, &format!("{}{}", boundary("10.20.0.13"), g.toml("rack-s3", "")));
    for n in ["srv-1", "srv-2", "srv-3"] {
        site.omesh(n, &["residency", "check"]).ok();
    }
    // the measurement works: a packet towards the Region shows up on svc
    let probe = lab.counters("s1", "svc");
    let st = Command::new("ip")
        .args(["netns", "exec", &lab.ns("s1"), "bash", "-c", "echo probe > /dev/udp/10.99.1.1/9"])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(lab.counters("s1", "svc").1 > probe.1, "svc counters do not see traffic");
    let before: Vec<(u64, u64)> = (1..=3).map(|i| lab.counters(&format!("s{i}"), "svc")).collect();
    let lni_before = lab.counters("s1", "lni");
    let _d2 = site.start("srv-2");
    let _d1 = site.start("srv-1");
    let src = t.path().join("src");
    tree::make_full(&src, false);
    let r = site.omesh("srv-1", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let snap = r["snapshot"].as_str().unwrap().to_string();
    assert_eq!(stored_snapshots(site.node("srv-2"), "srv-1"), vec![snap.clone()]);
    // a brand-new srv-3 restores srv-1's data from srv-2 and the bucket
    let key = t.path().join("srv-1.key");
    site.omesh("srv-1", &["key", "export", "--out", s(&key)]).ok();
    site.omesh("srv-3", &["key", "import", s(&key)]).ok();
    let target = t.path().join("r");
    site.omesh("srv-3", &["restore", "latest", "--source", "srv-1", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));
    let rep = site.omesh("srv-1", &["residency", "report", "--json"]).ok().json_list();
    let dests: Vec<String> =
        rep[0]["destinations"].as_array().unwrap().iter().map(|d| d["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(dests.len(), 2, "{rep}");
    // zero bytes on every service link, the LNI carried it all
    let after: Vec<(u64, u64)> = (1..=3).map(|i| lab.counters(&format!("s{i}"), "svc")).collect();
    assert_eq!(before, after, "omesh traffic crossed a service link");
    let lni_after = lab.counters("s1", "lni");
    assert!(lni_after.1 - lni_before.1 > 1_000_000, "the LNI did not carry the replication");

    // a peer name resolving into the Region's network is refused, nothing sent
    std::fs::create_dir_all(format!("/etc/netns/{}", lab.ns("s1"))).unwrap();
    std::fs::write(format!("/etc/netns/{}/hosts", lab.ns("s1")), "10.99.1.1 region-gw\n127.0.0.1 localhost\n").unwrap();
    let cfg =
        std::fs::read_to_string(site.node("srv-1").config()).unwrap().replace("10.20.0.12:7443", "region-gw:7443");
    std::fs::write(site.node("srv-1").config(), cfg).unwrap();
    let chk = site.omesh("srv-1", &["residency", "check", "--json"]).code(2).json();
    assert!(chk.to_string().contains("forbidden network 10.99.0.0/16"), "{chk}");
    let svc = lab.counters("s1", "svc");
    drop(_d1);
    let r = site.omesh("srv-1", &["backup", s(&src), "--json"]).code(6).json();
    assert!(r.to_string().contains("forbidden network 10.99.0.0/16"), "{r}");
    assert_eq!(lab.counters("s1", "svc"), svc, "bytes went over the service link");
}

/// Send a QUIC probe of an unknown version (padded to 1200 bytes) from
/// namespace `ns` to `to`; whether anything came back within 3 s.
fn probe_from_namespace(ns: &str, to: &str) -> bool {
    let (host, port) = to.rsplit_once(':').unwrap();
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(3)\n\
         p = bytes([0xc0]) + bytes.fromhex('0a1a2a3a') + bytes([8]) + b'\\x11' * 8 + bytes([8]) + b'\\x22' * 8\n\
         s.sendto(p + bytes(1200 - len(p)), ('{host}', {port}))\n\
         try:\n    d = s.recv(2048)\n    print('answered' if len(d) > 5 and d[0] & 0x80 and d[1:5] == bytes(4) else 'other')\n\
         except socket.timeout:\n    print('silent')\n"
    );
    let out = Command::new("ip").args(["netns", "exec", ns, "python3", "-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success() && (text == "answered" || text == "silent"), "{text} {:?}", out);
    text == "answered"
}

/// Between real network namespaces: a server that an address outside
/// `allowed_networks` sends a QUIC packet to answers nothing at all (no
/// Version Negotiation, no handshake), while the same packet from an
/// allowed address is answered.
#[test]
fn a_refused_address_in_another_namespace_gets_no_answer_not_even_version_negotiation() {
    let t = tempfile::tempdir().unwrap();
    let lab = Lab::up(3);
    let site = lab.site(t.path());
    // srv-1 accepts srv-2's address only
    site.write_config(
        "srv-1",
        &["srv-2".into()],
        1,
        "[residency]\nallowed_networks = [\"10.20.0.11/32\", \"10.20.0.12/32\"]\nbind = \"10.20.0.11\"\n",
    );
    let _d1 = site.start("srv-1");
    let to = "10.20.0.11:7443";
    assert!(probe_from_namespace(&lab.ns("s2"), to), "the probe is not answered from an allowed address");
    assert!(!probe_from_namespace(&lab.ns("s3"), to), "srv-1 answered 10.20.0.13, outside its boundary");
    // and its own interface sent nothing towards srv-3 meanwhile
    let before = lab.counters("s3", "lni");
    assert!(!probe_from_namespace(&lab.ns("s3"), to));
    let after = lab.counters("s3", "lni");
    assert!(after.0 - before.0 < 200, "srv-3 received {} bytes (a reply is at least 1200)", after.0 - before.0);
    let st = site.omesh("srv-1", &["status", "--json"]).ok().json();
    assert!(st["residency_refusals"].as_u64().unwrap() >= 2, "{st}");
}

/// A test CA and a certificate for `host` it signed: (CA PEM, cert PEM, key PEM).
fn test_ca(host: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(rcgen::DnType::CommonName, "omesh test CA (outposts emulator)");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![host.to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::new(ca, ca_key);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// S3 on Outposts without an Outpost. The emulator answers HTTPS on the
/// access point's own host name in the lab's object-storage namespace with
/// a certificate of a test CA (trusted by this test's omesh processes only,
/// through `ca_bundle`), refuses anything not addressed and signed as S3 on
/// Outposts requires, and forwards the rest to Garage. A node configured
/// with `outpost_access_point` backs up through it, a new server restores
/// from it, nothing crosses a service link, and `residency check` shows the
/// real host and its address. Credentials the Outpost does not know are
/// refused by the emulator, so its checks can fail.
#[test]
fn an_outposts_access_point_is_backed_up_to_and_restored_from_by_its_own_host_name_over_the_lni() {
    use std::io::BufRead;
    let t = tempfile::tempdir().unwrap();
    let lab = Lab::up(3);
    let mut site = lab.site(t.path());
    let g = Garage::start_in(&t.path().join("garage"), Some(&lab.ns("obj")), "10.20.0.50");
    let arn = "arn:aws:s3-outposts:us-west-2:123456789012:outpost/op-0123456789abcdef0/accesspoint/omesh-backups";
    let host = "omesh-backups-123456789012.op-0123456789abcdef0.s3-outposts.us-west-2.amazonaws.com";
    let (ca, cert, key) = test_ca(host);
    let pem = |name: &str, text: &str| {
        let p = t.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (ca, cert, key) = (pem("ca.pem", &ca), pem("ap.pem", &cert), pem("ap.key", &key));
    let log = t.path().join("emulator.log");
    let emulator = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/lab/outposts-emulator"));
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("obj"), "python3"])
        .arg(&emulator)
        .args(["--listen", "10.20.0.50:443", "--host", host, "--region", "us-west-2"])
        .args(["--cert", s(&cert), "--key", s(&key), "--access-key-id", "AKIAOUTPOSTSEMULATOR"])
        .args(["--upstream", &g.endpoint, "--upstream-bucket", &g.bucket, "--upstream-region", "garage"])
        .args(["--log", s(&log)])
        .env("UPSTREAM_KEY_ID", &g.key_id)
        .env("UPSTREAM_SECRET", &g.secret)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    let _emulator = Killed(child);
    assert_eq!(ready.trim(), "listening", "the emulator did not start");
    // the servers resolve the access point's name to the Outpost's CoIP
    // endpoint on the LAN (docs/config.md: pinned in /etc/hosts)
    for ns in ["s1", "s3"] {
        std::fs::create_dir_all(format!("/etc/netns/{}", lab.ns(ns))).unwrap();
        std::fs::write(format!("/etc/netns/{}/hosts", lab.ns(ns)), format!("127.0.0.1 localhost\n10.20.0.50 {host}\n"))
            .unwrap();
    }
    // the instance's credentials for the Outpost (the emulator checks the id)
    site.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), "AKIAOUTPOSTSEMULATOR".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "emulator-secret".into()),
    ];
    let boundary = |ip: &str| {
        format!(
            "[residency]\nallowed_networks = [\"10.20.0.0/16\"]\nforbidden_networks = [\"10.99.0.0/16\"]\nbind = \"{ip}\"\n"
        )
    };
    let rack = format!(
        "[[s3]]\nname = \"rack\"\noutpost_access_point = \"{arn}\"\nprefix = \"site-1/\"\nca_bundle = \"{}\"\n",
        s(&ca)
    );
    site.write_config("srv-1", &[], 1, &format!("{}{rack}", boundary("10.20.0.11")));
    site.write_config("srv-3", &[], 1, &format!("{}{rack}", boundary("10.20.0.13")));
    let chk = site.omesh("srv-1", &["residency", "check", "--json"]).ok().json();
    let line = chk["destinations"].as_array().unwrap().iter().find(|d| d["name"] == "rack").unwrap().clone();
    assert_eq!((line["host"].as_str(), line["allowed"].as_bool()), (Some(host), Some(true)), "{chk}");
    assert_eq!(line["address"], "10.20.0.50:443", "{chk}");

    let svc: Vec<(u64, u64)> = (1..=3).map(|i| lab.counters(&format!("s{i}"), "svc")).collect();
    let _d1 = site.start("srv-1");
    let src = t.path().join("src");
    tree::make_full(&src, false);
    let r = site.omesh("srv-1", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    // a brand-new server restores from the access point alone
    let keyfile = t.path().join("srv-1.key");
    site.omesh("srv-1", &["key", "export", "--out", s(&keyfile)]).ok();
    site.omesh("srv-3", &["key", "import", s(&keyfile)]).ok();
    let target = t.path().join("r");
    site.omesh("srv-3", &["restore", "latest", "--source", "srv-1", "--target", s(&target)]).ok();
    tree::assert_same(&src, &restored(&target, &src));
    let after: Vec<(u64, u64)> = (1..=3).map(|i| lab.counters(&format!("s{i}"), "svc")).collect();
    assert_eq!(svc, after, "omesh traffic crossed a service link");
    // every request was addressed and signed as S3 on Outposts requires
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let count = |m: &str| lines.iter().filter(|l| l["method"] == m).count();
    assert!(count("PUT") > 0 && count("GET") > 0, "{lines:?}");
    let sent: u64 = lines.iter().filter(|l| l["method"] == "PUT").map(|l| l["bytes"].as_u64().unwrap()).sum();
    assert!(sent > 100_000, "the backup did not go through the access point: {sent} bytes");
    assert!(lines.iter().any(|l| l["storage_class"] == "OUTPOSTS"), "no object written as OUTPOSTS: {lines:?}");
    assert!(lines.iter().all(|l| l["verdict"] == "forwarded"), "refused: {lines:?}");

    // credentials the Outpost does not know are refused (by the emulator,
    // as the Outpost would), and omesh says what to check
    site.env[0].1 = "AKIAUNKNOWNTOOUTPOST".into();
    let target = t.path().join("r2");
    let r = site.omesh("srv-3", &["restore", "latest", "--source", "srv-1", "--target", s(&target)]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("rack") && r.stderr.contains("refused the credentials"), "{}", r.stderr);
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(), "something was restored");
    let refused = std::fs::read_to_string(&log).unwrap();
    assert!(refused.contains("access key id 'AKIAUNKNOWNTOOUTPOST'"), "{refused}");
}
