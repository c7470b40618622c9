//! Authentication and protocol robustness against a real daemon: every bad
//! certificate is refused with nothing served or stored; oversized and
//! malformed frames close only that connection; a source can neither
//! delete nor overwrite what it stored on a peer.

use crate::common::mesh::{Site, stored_snapshots};
use crate::common::{s, tree};
use omesh_net::mesh::client::{self, ClientError};
use omesh_net::transport::TransportConfig;
use omesh_net::transport::{self, TlsMaterial};
use omesh_proto::msg::{ErrorCode, Request, close};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn endpoint(tls: &TlsMaterial) -> quinn::Endpoint {
    transport::endpoint("127.0.0.1:0".parse().unwrap(), tls, &TransportConfig::default(), false).unwrap()
}

fn material(dir: &Path, crl: Option<&Path>) -> TlsMaterial {
    TlsMaterial::from_files(
        &dir.join("ca.pem"),
        &dir.join("node.pem"),
        &dir.join("node.key"),
        crl.map(|p| p.to_path_buf()),
    )
    .unwrap()
}

async fn try_connect(tls: &TlsMaterial, me: &str, name: &str, addr: SocketAddr) -> Result<client::PeerConn, String> {
    let ep = endpoint(tls);
    // as a node does before every connection: pick up a changed CRL
    tls.refresh();
    let config = transport::client_config(tls, &TransportConfig::default()).unwrap();
    let r = client::connect(&ep, &config, me, name, &[addr], Duration::from_secs(5)).await.map_err(|e| e.to_string());
    match r {
        Ok(c) => {
            // a handshake can complete on our side before the server rejects
            // our certificate; a request proves acceptance
            c.ping().await.map_err(|e| e.to_string())?;
            Ok(c)
        }
        Err(e) => Err(e),
    }
}

#[test]
fn authentication_matrix() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-b", "r1"), ("srv-a", "r0"), ("srv-x", "r9")]);
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let _b = site.start("srv-b");
    let b: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let a_dir = site.node("srv-a").dir.join("tls");
    let rt = rt();
    rt.block_on(async {
        // the legitimate peer works
        let ok = try_connect(&material(&a_dir, None), "srv-a", "srv-b", b).await;
        assert!(ok.is_ok(), "valid peer refused: {ok:?}");

        // 1. no client certificate
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            for c in rustls::pki_types::CertificateDer::pem_file_iter(a_dir.join("ca.pem")).unwrap() {
                r.add(c.unwrap()).unwrap();
            }
            Arc::new(r)
        };
        let mut cc = rustls::ClientConfig::builder_with_provider(transport::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cc.alpn_protocols = vec![omesh_proto::ALPN.to_vec()];
        let qc = quinn::crypto::rustls::QuicClientConfig::try_from(cc).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(qc)));
        let r = async {
            let c = ep.connect(b, "srv-b").unwrap().await.map_err(|e| e.to_string())?;
            let (mut s, mut r) = c.open_bi().await.map_err(|e| e.to_string())?;
            transport::write_frame(&mut s, &Request::Ping { nonce: 1 }).await.map_err(|e| e.to_string())?;
            transport::read_frame::<omesh_proto::msg::Response>(&mut r, 1 << 20).await.map_err(|e| e.to_string())
        }
        .await;
        assert!(r.is_err(), "connection without a client certificate was served");

        // 2. a certificate from another CA (same node name)
        let other_ca = t.path().join("other-ca");
        omesh_net::ca::init(&other_ca, "evil", 30).unwrap();
        let evil = t.path().join("evil-a");
        omesh_net::ca::issue(&other_ca, "srv-a", &evil, 30).unwrap();
        // trust our CA for the server, present the foreign certificate
        std::fs::copy(a_dir.join("ca.pem"), evil.join("ca.pem")).unwrap();
        let r = try_connect(&material(&evil, None), "srv-a", "srv-b", b).await;
        assert!(r.is_err(), "foreign-CA certificate accepted");
        // refusals name their cause on the refused side
        let why = |r: Result<client::PeerConn, String>| r.err().unwrap_or_default();
        let e = why(r);
        assert!(e.contains("TLS refused by the peer") && e.contains("not signed by"), "{e}");

        // 3. an expired certificate
        let expired = t.path().join("expired-a");
        let now = time::OffsetDateTime::now_utc();
        omesh_net::ca::issue_with_validity(
            &site.ca,
            "srv-a",
            &expired,
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
        let r = try_connect(&material(&expired, None), "srv-a", "srv-b", b).await;
        assert!(r.is_err(), "expired certificate accepted");
        let e = why(r);
        assert!(e.contains("TLS refused by the peer") && e.contains("expired"), "{e}");

        // 4. a revoked certificate: revoke, hand the CRL to srv-b, no restart
        let revoked = t.path().join("revoked-a");
        omesh_net::ca::issue(&site.ca, "srv-a", &revoked, 30).unwrap();
        assert!(try_connect(&material(&revoked, None), "srv-a", "srv-b", b).await.is_ok(), "fresh certificate refused");
        omesh_net::ca::revoke(&site.ca, "srv-a").unwrap();
        std::fs::copy(site.ca.join("crl.pem"), site.node("srv-b").dir.join("tls/crl.pem")).unwrap();
        let r = try_connect(&material(&revoked, None), "srv-a", "srv-b", b).await;
        assert!(r.is_err(), "revoked certificate accepted after the CRL was updated");
        let e = why(r);
        assert!(e.contains("TLS refused by the peer") && e.contains("revoked"), "{e}");

        // 5. a server whose name differs from the configured peer
        let x_dir = site.node("srv-x").dir.join("tls");
        let r = try_connect(&material(&x_dir, None), "srv-x", "srv-c", b).await;
        assert!(r.is_err(), "connected to srv-b while expecting srv-c");
        let e = why(r);
        assert!(e.contains("TLS refused here") && e.contains("not for the node name"), "{e}");
        // and a valid site node that is not a configured peer cannot store
        let x = try_connect(&material(&x_dir, None), "srv-x", "srv-b", b).await.expect("site member may connect");
        let rec = vec![
            omesh_proto::Record::new(
                omesh_proto::ObjectKind::Blob,
                omesh_proto::ObjectId([5; 32]),
                vec![],
                vec![],
                vec![1; 64],
            )
            .encode(),
        ];
        match x.put_objects("srv-x", &rec).await {
            Err(ClientError::Remote { code: ErrorCode::Forbidden, .. }) => {}
            other => panic!("non-peer stored data: {other:?}"),
        }
        // nor store into another node's namespace
        match x.put_objects("srv-a", &rec).await {
            Err(ClientError::Remote { code: ErrorCode::Forbidden, .. }) => {}
            other => panic!("wrote into another namespace: {other:?}"),
        }

        // 6. the client side checks the CRL too: once srv-b's certificate is
        // revoked, the same client material (no restart) refuses srv-b
        let client_crl = t.path().join("client-crl.pem");
        std::fs::copy(site.ca.join("crl.pem"), &client_crl).unwrap();
        let x_tls = material(&x_dir, Some(&client_crl));
        assert!(try_connect(&x_tls, "srv-x", "srv-b", b).await.is_ok(), "srv-b refused before its revocation");
        omesh_net::ca::revoke(&site.ca, "srv-b").unwrap();
        std::fs::copy(site.ca.join("crl.pem"), &client_crl).unwrap();
        let r = try_connect(&x_tls, "srv-x", "srv-b", b).await;
        assert!(r.is_err(), "a client accepted a revoked server certificate");
        let e = why(r);
        assert!(e.contains("TLS refused here") && e.contains("revoked by the CRL"), "{e}");
    });
    // nothing was stored for any of them
    let sources = site.node("srv-b").data().join("sources");
    let names: Vec<String> = std::fs::read_dir(&sources)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    // (srv-b itself has no store before its first backup)
    assert!(names.iter().all(|n| n == "srv-b"), "srv-b stored data for {names:?}");
}

#[test]
fn oversized_and_malformed_frames_close_only_that_connection() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-b", "r1"), ("srv-a", "r0")]);
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let _b = site.start("srv-b");
    let b: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let tls = material(&site.node("srv-a").dir.join("tls"), None);
    rt().block_on(async {
        let good = try_connect(&tls, "srv-a", "srv-b", b).await.unwrap();
        for (payload, code) in [
            ((omesh_proto::MAX_FRAME_BYTES + 1).to_le_bytes().to_vec(), close::TOO_LARGE),
            ([&5u32.to_le_bytes()[..], &[0xff, 0xff, 0xff, 0xff, 0xff]].concat(), close::PROTOCOL_VIOLATION),
        ] {
            let bad = try_connect(&tls, "srv-a", "srv-b", b).await.unwrap();
            let (mut s, mut r) = bad.conn.open_bi().await.unwrap();
            s.write_all(&payload).await.unwrap();
            let _ = s.finish();
            let mut buf = [0u8; 1];
            let _ = r.read(&mut buf).await;
            let reason = bad.conn.closed().await;
            match reason {
                quinn::ConnectionError::ApplicationClosed(a) => assert_eq!(a.error_code, code.into(), "{a:?}"),
                other => panic!("connection not closed with an application code: {other:?}"),
            }
            // the node keeps serving the other connection
            good.ping().await.expect("other connection still served");
        }
        // an oversized record inside PutObjects closes the connection too
        let bad = try_connect(&tls, "srv-a", "srv-b", b).await.unwrap();
        let (mut s, _r) = bad.conn.open_bi().await.unwrap();
        transport::write_frame(&mut s, &Request::PutObjects { source: "srv-a".into(), count: 1 }).await.unwrap();
        let mut rec = omesh_proto::Record::new(
            omesh_proto::ObjectKind::Blob,
            omesh_proto::ObjectId([1; 32]),
            vec![],
            vec![],
            vec![0; 10],
        )
        .encode();
        rec[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        s.write_all(&rec).await.unwrap();
        let _ = s.finish();
        match bad.conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(a) => assert_eq!(a.error_code, close::TOO_LARGE.into()),
            other => panic!("{other:?}"),
        }
        good.ping().await.expect("still served");
    });
}

#[test]
fn a_source_cannot_delete_or_overwrite_its_stored_snapshots() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1")]);
    site.write_config("srv-a", &["srv-b".into()], 1, "");
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let _b = site.start("srv-b");
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), tree::data(50_000, 1)).unwrap();
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    let snap = omesh_proto::ObjectId::from_hex(r["snapshot"].as_str().unwrap()).unwrap();
    let b_node = site.node("srv-b").clone();
    assert_eq!(stored_snapshots(&b_node, "srv-a"), vec![snap.to_hex()]);
    let stored_path = b_node.data().join("sources/srv-a/snapshots").join(snap.to_hex());
    let before = std::fs::read(&stored_path).unwrap();
    let tls = material(&site.node("srv-a").dir.join("tls"), None);
    let b: SocketAddr = b_node.addr().parse().unwrap();
    rt().block_on(async {
        let c = try_connect(&tls, "srv-a", "srv-b", b).await.unwrap();
        match c.delete_snapshot("srv-a", snap).await {
            Err(ClientError::Remote { code: ErrorCode::Forbidden, .. }) => {}
            other => panic!("delete was not refused: {other:?}"),
        }
        // same id, different content
        let mut forged = before.clone();
        let n = forged.len();
        let cb = omesh_proto::record::CHECK_BYTES;
        forged[n - cb - 8] ^= 1;
        let check = blake3::hash(&forged[..n - cb]);
        forged[n - cb..].copy_from_slice(&check.as_bytes()[..cb]);
        match c.put_snapshot("srv-a", &forged).await {
            Err(ClientError::Remote { code: ErrorCode::Forbidden, .. }) => {}
            other => panic!("overwrite was not refused: {other:?}"),
        }
        // re-sending the identical record is harmless
        assert!(!c.put_snapshot("srv-a", &before).await.unwrap());
    });
    assert_eq!(std::fs::read(&stored_path).unwrap(), before, "stored snapshot changed");
}

/// Enrolment in which the key never leaves the node: `cert request` makes
/// the key (0600) and a CSR, `ca sign` signs only what a node certificate
/// may say, `cert install` installs only a certificate of the site CA for
/// this node's own key; the node then serves the mesh, and renewal reuses
/// the key and keeps the previous certificate.
#[test]
fn a_node_enrolled_by_request_and_signature_keeps_its_key_and_joins_the_mesh() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r1"), ("srv-b", "r2")]);
    site.write_config("srv-a", &["srv-b".into()], 1, "");
    let port = crate::common::mesh::free_port("127.0.0.1");
    site.write_config("srv-b", &["srv-a".into()], 1, &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    // srv-b is a new server: only the site's public ca.pem and crl.pem
    let tls = site.node("srv-b").dir.join("tls");
    std::fs::remove_file(tls.join("node.key")).unwrap();
    std::fs::remove_file(tls.join("node.pem")).unwrap();
    let ca = s(&site.ca);
    let count =
        || crate::common::omesh(["ca", "list", "--dir", ca, "--json"]).ok().json()["issued"].as_array().unwrap().len();
    let before = count();

    let r = site.omesh("srv-b", &["cert", "request", "--json"]).ok().json();
    assert_eq!((r["node"].as_str(), r["key_created"].as_bool()), (Some("srv-b"), Some(true)), "{r}");
    let key = tls.join("node.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let csr_path = std::path::PathBuf::from(r["csr"].as_str().unwrap());
    let csr = std::fs::read_to_string(&csr_path).unwrap();
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST") && !csr.contains("PRIVATE KEY"), "{csr}");

    // what the CA refuses to sign, signing nothing
    let sign = |csr: &Path, extra: &[&str]| {
        let mut a = vec!["ca", "sign", "--dir", ca, s(csr), "--out"];
        let out = t.path().join("out.pem");
        let out = s(&out).to_string();
        a.push(&out);
        a.extend_from_slice(extra);
        crate::common::omesh(&a)
    };
    let r = sign(&csr_path, &["--node", "srv-a"]).code(2);
    assert!(r.stderr.contains("\"srv-b\", not \"srv-a\""), "{}", r.stderr);
    let mut tampered = csr.clone().into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let bad = t.path().join("tampered.csr");
    std::fs::write(&bad, tampered).unwrap();
    let r = sign(&bad, &[]).code(2);
    assert!(r.stderr.contains("tampered.csr"), "{}", r.stderr);
    // a request for srv-b that also asks to be srv-a
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["srv-b".to_string(), "srv-a".to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "srv-b");
    let greedy = t.path().join("greedy.csr");
    std::fs::write(&greedy, p.serialize_request(&kp).unwrap().pem().unwrap()).unwrap();
    let r = sign(&greedy, &[]).code(2);
    assert!(r.stderr.contains("also asks for") && r.stderr.contains("srv-a"), "{}", r.stderr);
    assert_eq!(count(), before, "a refused request was signed");
    assert!(!t.path().join("out.pem").exists());

    // what the node refuses to install, installing nothing
    let install = |cert: &Path| site.omesh("srv-b", &["cert", "install", s(cert)]);
    let other_ca = t.path().join("other-ca");
    omesh_net::ca::init(&other_ca, "elsewhere", 30).unwrap();
    omesh_net::ca::issue(&other_ca, "srv-b", &t.path().join("foreign"), 30).unwrap();
    let r = install(&t.path().join("foreign/node.pem")).code(2);
    assert!(r.stderr.contains("not signed by the site CA"), "{}", r.stderr);
    omesh_net::ca::issue(&site.ca, "srv-b", &t.path().join("other-key"), 30).unwrap();
    let r = install(&t.path().join("other-key/node.pem")).code(2);
    assert!(r.stderr.contains("not for the private key"), "{}", r.stderr);
    let r = install(&site.node("srv-a").dir.join("tls/node.pem")).code(2);
    assert!(r.stderr.contains("\"srv-a\"") && r.stderr.contains("srv-b"), "{}", r.stderr);
    assert!(!tls.join("node.pem").exists(), "a refused certificate was installed");

    // signed and installed, srv-b serves the mesh with its own key
    let cert = t.path().join("srv-b.pem");
    let r =
        crate::common::omesh(["ca", "sign", "--dir", ca, s(&csr_path), "--node", "srv-b", "--out", s(&cert), "--json"])
            .ok()
            .json();
    assert_eq!(r["issued"]["node"], "srv-b", "{r}");
    let r = site.omesh("srv-b", &["cert", "install", s(&cert), "--json"]).ok().json();
    assert!(r["certificate"]["days_left"].as_i64().unwrap() >= 29, "{r}");
    assert_eq!(std::fs::read(tls.join("node.pem")).unwrap(), std::fs::read(&cert).unwrap());
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_pem, "the key changed");
    let b = site.start("srv-b");
    let _a = site.start("srv-a");
    let src = t.path().join("src");
    tree::make_full(&src, false);
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    assert_eq!(stored_snapshots(site.node("srv-b"), "srv-a").len(), 1);

    let st = site.omesh("srv-b", &["status", "--json"]).ok().json();
    assert_eq!(st["certificate"]["expiring"], false, "{st}");
    assert!(st["certificate"]["days_left"].as_i64().unwrap() > 800, "{st}");
    let m = crate::lifecycle::scrape(port);
    assert_eq!(crate::lifecycle::sample(&m, "omesh_certificate_expiring"), Some(0.0), "{m}");

    // renewal (here to a short one): the same key, a new certificate, the
    // previous one kept; fewer than 30 days left shows in status and metrics
    let r = site.omesh("srv-b", &["cert", "request", "--json"]).ok().json();
    assert_eq!(r["key_created"], false, "{r}");
    let renewed = t.path().join("srv-b-2.pem");
    crate::common::omesh(["ca", "sign", "--dir", ca, s(&csr_path), "--days", "10", "--out", s(&renewed)]).ok();
    site.omesh("srv-b", &["cert", "install", s(&renewed)]).ok();
    drop(b);
    let _b = site.start("srv-b");
    let st = site.omesh("srv-b", &["status"]).ok();
    assert!(st.stdout.contains("EXPIRES") && st.stdout.contains("omesh cert request"), "{}", st.stdout);
    let m = crate::lifecycle::scrape(port);
    assert_eq!(crate::lifecycle::sample(&m, "omesh_certificate_expiring"), Some(1.0), "{m}");
    assert_eq!(std::fs::read(tls.join("node.pem.old")).unwrap(), std::fs::read(&cert).unwrap());
    assert_eq!(std::fs::read(tls.join("node.pem")).unwrap(), std::fs::read(&renewed).unwrap());
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_pem, "renewal changed the key");
    // the two signed requests, and the test's own `other-key` certificate
    assert_eq!(count(), before + 3);
}
