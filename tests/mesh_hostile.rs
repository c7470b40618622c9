//! A peer with a valid site certificate attacks a real daemon, or answers
//! another node as a hostile server would. Each test ends with the victim
//! still serving and its data intact.
//!
//! The attacker is a client of the mesh protocol built here (with the
//! node's own transport and a certificate issued by the site CA), or a
//! QUIC server that holds a node's certificate and answers badly.

use crate::common::mesh::{Site, stored_snapshots};
use crate::common::{alter_keeping_check, restored, s, tree};
use omesh_net::mesh::client::{self, ClientError, PeerConn};
use omesh_net::transport::{self, TlsMaterial, TransportConfig};
use omesh_proto::msg::{ErrorCode, Hello, Request, Response, SnapshotEntry, close};
use omesh_proto::{ObjectId, ObjectKind, Record, Seal};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn material(dir: &Path) -> TlsMaterial {
    TlsMaterial::from_files(&dir.join("ca.pem"), &dir.join("node.pem"), &dir.join("node.key"), None).unwrap()
}

async fn connect(tls: &TlsMaterial, me: &str, name: &str, addr: SocketAddr) -> Result<PeerConn, String> {
    let ep = transport::endpoint("127.0.0.1:0".parse().unwrap(), tls, &TransportConfig::default(), false).unwrap();
    let config = transport::client_config(tls, &TransportConfig::default()).unwrap();
    let c =
        client::connect(&ep, &config, me, name, &[addr], Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    c.ping().await.map_err(|e| e.to_string())?;
    Ok(c)
}

/// An attacker's object id: `seed`, tagged by kind so kinds never collide.
fn test_id(seed: u64, tag: u8) -> ObjectId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&seed.to_le_bytes());
    id[31] = tag;
    ObjectId(id)
}

/// A blob record with `n` bytes of body, distinct per `seed`.
fn blob(seed: u64, n: usize) -> Record {
    Record::new(ObjectKind::Blob, test_id(seed, 0xb1), vec![], vec![], tree::data(n, seed))
}

/// `rec` as a snapshot record of `source`, signed with the certificate and
/// key in `tls` (a node can sign its own snapshots; it holds no one
/// else's key).
fn signed(tls: &TlsMaterial, source: &str, mut rec: Record) -> Vec<u8> {
    use omesh_core::crypto::SnapshotSigner;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    tls.snapshot_signer(source).unwrap().attest(&mut rec, source, created, None).unwrap();
    rec.encode()
}

/// A signed snapshot record of srv-a without links (every object it
/// needs is "present").
fn bare_snapshot(tls: &TlsMaterial, seed: u64, n: usize) -> Vec<u8> {
    signed(tls, "srv-a", Record::new(ObjectKind::Snapshot, test_id(seed, 0x5a), vec![], vec![], tree::data(n, seed)))
}

/// Peak resident memory of a process (kB), from /proc.
fn peak_rss_kb(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Bytes in a source's packs on a node (what it really stores there).
fn pack_bytes(node_data: &Path, source: &str) -> u64 {
    let mut n = 0;
    for e in walk(&node_data.join("sources").join(source).join("packs")) {
        n += e.metadata().unwrap().len();
    }
    n
}

fn walk(d: &Path) -> Vec<std::fs::DirEntry> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e);
            }
        }
    }
    out
}

/// A victim source backs up through the attacked node and restores from
/// it byte for byte.
fn victim_round_trip(site: &Site, victim: &str, holder: &str, dir: &Path) {
    let src = dir.join("victim-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), tree::data(300_000, 42)).unwrap();
    let r = site.omesh(victim, &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let snap = r["snapshot"].as_str().unwrap().to_string();
    assert!(stored_snapshots(site.node(holder), victim).contains(&snap));
    let target = dir.join("victim-restore");
    site.omesh(victim, &["restore", &snap, "--from", holder, "--target", s(&target), "--json"]).ok();
    tree::assert_same(&src, &restored(&target, &src));
}

#[test]
fn giant_headers_on_many_streams_keep_memory_bounded() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-b", "r1"), ("srv-a", "r0"), ("srv-c", "r2")]);
    // a short stall limit keeps the test quick: a stream that stops
    // sending is dropped after 3 s
    site.write_config("srv-b", &["srv-a".into(), "srv-c".into()], 1, "[transport]\nrequest_timeout_secs = 3\n");
    site.write_config("srv-c", &["srv-b".into()], 1, "");
    let b = site.start("srv-b");
    let b_addr: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let tls = material(&site.node("srv-a").dir.join("tls"));
    let before = peak_rss_kb(b.pid());
    rt().block_on(async {
        let c = connect(&tls, "srv-a", "srv-b", b_addr).await.unwrap();
        // 48 streams, each announcing a record of the largest size and
        // sending its header and 256 KiB of it
        let mut streams = Vec::new();
        for i in 0..48u64 {
            let (mut send, recv) = c.conn.open_bi().await.unwrap();
            transport::write_frame(&mut send, &Request::PutObjects { source: "srv-a".into(), count: 1 }).await.unwrap();
            let mut rec = blob(i, 16).encode();
            rec.truncate(omesh_proto::record::HEADER_BYTES);
            // body length: the largest allowed
            rec[44..48].copy_from_slice(&omesh_proto::record::MAX_BODY_BYTES.to_le_bytes());
            send.write_all(&rec).await.unwrap();
            send.write_all(&vec![7u8; 256 << 10]).await.unwrap();
            streams.push((send, recv));
        }
        // every stream ends: refused as busy or dropped for stalling
        for (send, mut recv) in streams {
            let end = tokio::time::timeout(Duration::from_secs(60), recv.read_to_end(1 << 20)).await;
            let end = end.expect("the server answered or dropped every stream");
            if let Ok(bytes) = end
                && !bytes.is_empty()
            {
                let r: Response = omesh_proto::frame::decode(&bytes, 1 << 20).unwrap();
                assert!(matches!(r, Response::Error { code: ErrorCode::Busy, .. }), "{r:?}");
            }
            drop(send);
        }
        // the node still serves this connection
        c.ping().await.unwrap();

        // connections per peer are capped
        let mut held = Vec::new();
        let mut refused = None;
        for _ in 0..6 {
            match connect(&tls, "srv-a", "srv-b", b_addr).await {
                Ok(c) => held.push(c),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        // the first connection is still open: 4 in all, the 5th refused
        assert_eq!(held.len(), omesh_net::mesh::server::MAX_CONNECTIONS_PER_PEER - 1);
        assert!(refused.is_some());
        drop(held);
    });
    let after = peak_rss_kb(b.pid());
    // 48 × 40 MiB were announced (1.9 GiB); the node holds at most its
    // 64 MiB budget per peer plus QUIC's windows
    assert!(after < before + 160 * 1024, "peak RSS went from {before} kB to {after} kB");
    victim_round_trip(&site, "srv-c", "srv-b", t.path());
}

#[test]
fn parallel_streams_and_snapshot_records_stay_within_the_quota() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-b", "r1"), ("srv-a", "r0"), ("srv-c", "r2")]);
    let quota = 1u64 << 20;
    site.write_config("srv-b", &["srv-a".into(), "srv-c".into()], 1, "");
    // srv-a's quota on srv-b: 1 MiB
    let cfg = std::fs::read_to_string(site.node("srv-b").config()).unwrap();
    let cfg = cfg.replace("name = \"srv-a\"\n", &format!("name = \"srv-a\"\nquota = {quota}\n"));
    std::fs::write(site.node("srv-b").config(), cfg).unwrap();
    site.write_config("srv-c", &["srv-b".into()], 1, "");
    let _b = site.start("srv-b");
    let b_addr: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let b_data = site.node("srv-b").data();
    let tls = material(&site.node("srv-a").dir.join("tls"));
    rt().block_on(async {
        let c = connect(&tls, "srv-a", "srv-b", b_addr).await.unwrap();
        // snapshot records count: 300 KiB records until the quota is full
        let mut committed = 0;
        let mut refused_snapshot = false;
        for i in 0..8u64 {
            match c.put_snapshot("srv-a", &bare_snapshot(&tls, i, 300 << 10)).await {
                Ok(_) => committed += 1,
                Err(ClientError::Remote { code: ErrorCode::QuotaExceeded, .. }) => {
                    refused_snapshot = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused_snapshot, "{committed} snapshot records of 300 KiB accepted under a 1 MiB quota");
        assert_eq!(committed, 3);
        // 8 parallel streams of 512 KiB each, against the ~120 KiB left
        let jobs: Vec<_> = (0..8u64)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let recs: Vec<Vec<u8>> = (0..8).map(|j| blob(i * 100 + j, 64 << 10).encode()).collect();
                    c.put_objects("srv-a", &recs).await
                })
            })
            .collect();
        let mut refused = 0;
        for j in jobs {
            match j.await.unwrap() {
                Ok(_) => {}
                Err(ClientError::Remote { code: ErrorCode::QuotaExceeded, message, .. }) => {
                    assert!(message.contains("quota"), "{message}");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 8, "streams that stored 512 KiB under a quota with 120 KiB left");
        let snaps: u64 =
            walk(&b_data.join("sources/srv-a/snapshots")).iter().map(|e| e.metadata().unwrap().len()).sum();
        let stored = pack_bytes(&b_data, "srv-a") + snaps;
        assert!(stored <= quota, "{stored} bytes stored against a quota of {quota}");
    });
    // another source is unaffected
    victim_round_trip(&site, "srv-c", "srv-b", t.path());
}

#[test]
fn listings_of_large_records_fit_and_page() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-b", "r1"), ("srv-a", "r0"), ("srv-c", "r2")]);
    site.write_config("srv-b", &["srv-a".into(), "srv-c".into()], 1, "");
    site.write_config("srv-c", &["srv-b".into()], 1, "");
    let _b = site.start("srv-b");
    let b_addr: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let tls = material(&site.node("srv-a").dir.join("tls"));
    // room for the header, the check and the attestation (chain and signature)
    let largest = omesh_proto::msg::MAX_SNAPSHOT_RECORD_BYTES - omesh_proto::record::HEADER_BYTES - 4096;
    rt().block_on(async {
        let c = connect(&tls, "srv-a", "srv-b", b_addr).await.unwrap();
        // six snapshot records of 1 MiB: more than one frame holds
        for i in 0..6u64 {
            assert!(c.put_snapshot("srv-a", &bare_snapshot(&tls, i, largest)).await.unwrap());
        }
        let mine = c.list_snapshots(Some("srv-a")).await.unwrap();
        assert_eq!(mine.len(), 6);
        // pages really are sized by bytes: the first holds fewer than six
        let (mut send, mut recv) = c.conn.open_bi().await.unwrap();
        transport::write_frame(&mut send, &Request::ListSnapshots { source: Some("srv-a".into()), after: None })
            .await
            .unwrap();
        let _ = send.finish();
        match transport::read_frame::<Response>(&mut recv, omesh_proto::MAX_FRAME_BYTES).await.unwrap() {
            Response::Snapshots { items, more } => assert!(items.len() < 6 && more, "{} items", items.len()),
            other => panic!("{other:?}"),
        }
    });
    // the node still lists and serves for everyone
    victim_round_trip(&site, "srv-c", "srv-b", t.path());
    let r = site.omesh("srv-c", &["sync", "--json"]).ok().json();
    assert!(r["snapshots"].as_u64().unwrap() >= 7, "{r}");
    rt().block_on(async {
        let c = connect(&tls, "srv-a", "srv-b", b_addr).await.unwrap();
        let all = c.list_snapshots(None).await.unwrap();
        assert_eq!(all.iter().filter(|e| e.source == "srv-a").count(), 6);
        assert_eq!(all.iter().filter(|e| e.source == "srv-c").count(), 1);
    });
}

/// How the fake peer misbehaves.
#[derive(Clone, Copy)]
enum Fake {
    /// Reads every request, never answers.
    Silent,
    /// Lists an endless series of snapshots, always saying more follow.
    EndlessPages,
}

/// A QUIC server holding `name`'s certificate: it answers the handshake,
/// then gives every request, read from its own stream, to `serve`, which
/// writes whatever answer it likes.
async fn fake_server<F, Fut>(tls: TlsMaterial, name: &'static str, addr: SocketAddr, serve: F)
where
    F: Fn(Request, quinn::SendStream) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let ep = transport::endpoint(addr, &tls, &TransportConfig::default(), true).unwrap();
    while let Some(inc) = ep.accept().await {
        let serve = serve.clone();
        tokio::spawn(async move {
            let Ok(conn) = inc.await else { return };
            let Ok((send, mut recv)) = conn.accept_bi().await else { return };
            let _ = transport::read_frame::<Request>(&mut recv, 1 << 16).await;
            let hello = Hello {
                node: name.into(),
                software: "fake".into(),
                protocol: omesh_proto::PROTOCOL_VERSION,
                capabilities: vec![],
            };
            answer(send, &Response::Hello(hello)).await;
            while let Ok((send, mut recv)) = conn.accept_bi().await {
                let serve = serve.clone();
                tokio::spawn(async move {
                    let Ok(req) = transport::read_frame::<Request>(&mut recv, 1 << 22).await else { return };
                    serve(req, send).await;
                });
            }
        });
    }
}

/// Write one answer and end the stream.
async fn answer(mut send: quinn::SendStream, r: &Response) {
    let _ = transport::write_frame(&mut send, r).await;
    let _ = send.finish();
}

fn not_found() -> Response {
    Response::Error { code: ErrorCode::NotFound, message: "no".into(), missing: vec![] }
}

/// A `Status` answer of a peer holding one source.
fn status(name: &str, source: &str, objects: u64, snapshots: u64) -> Response {
    Response::Status(omesh_proto::msg::PeerStatus {
        node: name.into(),
        software: "fake".into(),
        uptime_secs: 1,
        sources: vec![omesh_proto::msg::SourceUsage {
            source: source.into(),
            bytes: 0,
            objects,
            snapshots,
            quota_bytes: 0,
        }],
    })
}

/// A peer with `name`'s certificate that answers the handshake and then
/// misbehaves as `how` says.
async fn fake_peer(tls: TlsMaterial, name: &'static str, addr: SocketAddr, how: Fake) {
    fake_server(tls, name, addr, move |req, send| async move {
        let r = match (how, req) {
            (Fake::Silent, _) => {
                // hold the stream open, answer nothing
                let _open = send;
                std::future::pending::<()>().await;
                return;
            }
            (_, Request::Ping { nonce }) => Response::Pong { nonce },
            (Fake::EndlessPages, Request::Status) => status(name, "srv-z", 0, 0),
            (Fake::EndlessPages, Request::ListSnapshots { after, .. }) => {
                let start = after.map_or(0, |a| u64::from_be_bytes(a.0[..8].try_into().unwrap()) + 1);
                let items = (start..start + 4096)
                    .map(|i| {
                        let mut id = [0u8; 32];
                        id[..8].copy_from_slice(&i.to_be_bytes());
                        SnapshotEntry { source: "srv-z".into(), id: ObjectId(id), record: vec![1; 8], stored_ns: 0 }
                    })
                    .collect();
                Response::Snapshots { items, more: true }
            }
            _ => not_found(),
        };
        answer(send, &r).await;
    })
    .await
}

#[test]
fn a_peer_that_never_answers_or_pages_forever_cannot_hang_anyone() {
    for how in [Fake::Silent, Fake::EndlessPages] {
        let t = tempfile::tempdir().unwrap();
        let site = Site::new(t.path(), &[("srv-c", "r2"), ("srv-b", "r1"), ("srv-d", "r3")]);
        // srv-c's peers: the hostile srv-b and an honest srv-d
        site.write_config("srv-c", &["srv-b".into(), "srv-d".into()], 1, "[transport]\nrequest_timeout_secs = 2\n");
        site.write_config("srv-d", &["srv-c".into()], 1, "");
        let _d = site.start("srv-d");
        let b_addr: SocketAddr = site.node("srv-b").addr().parse().unwrap();
        let fake_tls = material(&site.node("srv-b").dir.join("tls"));
        let rt = rt();
        rt.spawn(fake_peer(fake_tls, "srv-b", b_addr, how));
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), tree::data(100_000, 3)).unwrap();
        // the backup lands on the honest peer; the hostile one is reported
        let r = site.omesh("srv-c", &["backup", s(&src), "--json"]).json();
        assert_eq!(r["protected"], true, "{r}");
        let snap = r["snapshot"].as_str().unwrap().to_string();
        assert!(stored_snapshots(site.node("srv-d"), "srv-c").contains(&snap));
        // listings and status finish, naming the peer that failed
        let sync = site.omesh("srv-c", &["sync", "--json"]).ok().json();
        assert_eq!(sync["unreachable"], serde_json::json!(["srv-b"]), "{sync}");
        let list = site.omesh("srv-c", &["snapshots", "--json"]).ok().json_list();
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        site.omesh("srv-c", &["status", "--json"]).ok();
        // and a restore goes to the honest holder
        let target = t.path().join("restore");
        site.omesh("srv-c", &["restore", &snap, "--target", s(&target), "--json"]).ok();
        tree::assert_same(&src, &restored(&target, &src));
        drop(rt);
    }
}

/// Copy the CA's current CRL to a node, as an administrator does.
fn install_crl(from: &Path, node_tls: &Path) {
    let tmp = node_tls.join(".crl.pem.new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, node_tls.join("crl.pem")).unwrap();
}

#[test]
fn revocation_closes_live_connections_and_an_old_crl_cannot_undo_it() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-b", "r1"), ("srv-a", "r0"), ("srv-c", "r2")]);
    site.write_config("srv-b", &["srv-a".into(), "srv-c".into()], 1, "");
    let _b = site.start("srv-b");
    let b_addr: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let b_tls = site.node("srv-b").dir.join("tls");
    let old_crl = t.path().join("crl-before.pem");
    std::fs::copy(site.ca.join("crl.pem"), &old_crl).unwrap();
    let a_tls = material(&site.node("srv-a").dir.join("tls"));
    let c_tls = material(&site.node("srv-c").dir.join("tls"));
    rt().block_on(async {
        let a = connect(&a_tls, "srv-a", "srv-b", b_addr).await.unwrap();
        // the administrator revokes srv-a while its connection is open
        omesh_net::ca::revoke(&site.ca, "srv-a").unwrap();
        install_crl(&site.ca.join("crl.pem"), &b_tls);
        let reason = tokio::time::timeout(Duration::from_secs(30), a.conn.closed())
            .await
            .expect("the revoked node's open connection was not closed");
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, close::UNAUTHORIZED.into()),
            other => panic!("closed for another reason: {other:?}"),
        }
        assert!(connect(&a_tls, "srv-a", "srv-b", b_addr).await.is_err(), "a revoked node connected again");
        // an older CRL copied over the new one does not un-revoke (a node
        // re-reads a changed file before it accepts a connection)
        install_crl(&old_crl, &b_tls);
        assert!(connect(&a_tls, "srv-a", "srv-b", b_addr).await.is_err(), "an old CRL un-revoked srv-a");
        // everyone else is still served
        let c = connect(&c_tls, "srv-c", "srv-b", b_addr).await.unwrap();
        c.ping().await.unwrap();
    });
    // the status shows the list in force, and warns when it is stale
    let st = site.omesh("srv-b", &["status", "--json"]).ok().json();
    assert_eq!(st["crl"]["stale"], false, "{st}");
    assert!(st["crl"]["revoked"].as_u64().unwrap() >= 1, "{st}");
    omesh_net::ca::renew_crl_until(&site.ca, time::OffsetDateTime::now_utc() - time::Duration::days(1)).unwrap();
    let number = st["crl"]["number"].as_u64().unwrap();
    install_crl(&site.ca.join("crl.pem"), &b_tls);
    let t0 = std::time::Instant::now();
    loop {
        let st = site.omesh("srv-b", &["status", "--json"]).ok().json();
        if st["crl"]["number"].as_u64().unwrap() > number {
            assert_eq!(st["crl"]["stale"], true, "{st}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the renewed CRL was never loaded: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_mesh_node_needs_a_crl_or_says_it_has_none() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-b", "r1"), ("srv-a", "r0")]);
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let cfg = site.node("srv-b").config();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let without: String = text.lines().filter(|l| !l.starts_with("crl =")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&cfg, &without).unwrap();
    let r = site.omesh("srv-b", &["status", "--json"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("[tls] crl") && r.stderr.contains("no_crl"), "{}", r.stderr);
    std::fs::write(&cfg, without.replace("[tls]\n", "[tls]\nno_crl = true\n")).unwrap();
    let st = site.omesh("srv-b", &["status", "--json"]).ok().json();
    assert!(st["crl"].is_null(), "{st}");
}

#[test]
fn a_lying_stored_time_cannot_expose_a_replica_to_retention() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1"), ("srv-c", "r2")]);
    site.write_config("srv-a", &["srv-b".into(), "srv-c".into()], 2, "");
    site.write_config("srv-b", &["srv-a".into(), "srv-c".into()], 1, "");
    site.write_config("srv-c", &["srv-a".into(), "srv-b".into()], 2, "[retention]\nlock = \"30d\"\nkeep_last = 1\n");
    let _b = site.start("srv-b");
    // two backups while srv-c is down: only srv-b holds them
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut snaps = Vec::new();
    for i in 0..2 {
        std::fs::write(src.join(format!("f{i}")), tree::data(50_000, i)).unwrap();
        let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).json();
        snaps.push(r["snapshot"].as_str().unwrap().to_string());
    }
    // srv-b (compromised: its data directory edited) reports the newest as
    // stored in 1970
    let newest = site.node("srv-b").data().join("sources/srv-a/snapshots").join(&snaps[1]);
    let f = std::fs::File::options().write(true).open(&newest).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1)).unwrap();
    drop(f);
    // srv-c repairs both from srv-b
    let _c = site.start("srv-c");
    let r = site.omesh("srv-c", &["sync", "--json"]).ok().json();
    assert_eq!(r["repaired"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(stored_snapshots(site.node("srv-c"), "srv-a").len(), 2);
    // inside srv-c's own 30-day lock, nothing of srv-a's is forgettable
    let dry = site.omesh("srv-c", &["forget", "--source", "srv-a", "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["forgotten"], 0, "a peer's lie made a locked replica forgettable: {dry}");
}

#[test]
fn self_linked_trees_are_refused_and_very_deep_trees_cannot_stall_a_holder() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-b", "r1"), ("srv-a", "r0"), ("srv-c", "r2")]);
    site.write_config("srv-b", &["srv-a".into(), "srv-c".into()], 1, "");
    site.write_config("srv-c", &["srv-b".into()], 1, "");
    let _b = site.start("srv-b");
    let b_addr: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let tls = material(&site.node("srv-a").dir.join("tls"));
    let tree_id = |i: u64| test_id(i, 0x7e);
    let tree = |i: u64, links: Vec<ObjectId>, seals: Vec<Seal>| {
        Record::new(ObjectKind::Tree, tree_id(i), links, seals, tree::data(64, i)).encode_sealed()
    };
    let snapshot = |seed: u64, root: ObjectId, seal: Seal| {
        signed(
            &tls,
            "srv-a",
            Record::new(ObjectKind::Snapshot, test_id(seed, 0x5b), vec![root], vec![seal], tree::data(64, seed)),
        )
    };
    rt().block_on(async {
        let c = connect(&tls, "srv-a", "srv-b", b_addr).await.unwrap();
        // a tree that links to itself and to a tree linking back: no seal
        // can name a record that contains it, so whatever seals it claims,
        // the holder refuses to commit a snapshot of it
        let (t1, s1) = tree(1, vec![tree_id(0)], vec![Seal([7; 32])]);
        let (t0, s0) = tree(0, vec![tree_id(0), tree_id(1)], vec![Seal([8; 32]), s1]);
        c.put_objects("srv-a", &[t0, t1]).await.unwrap();
        match c.put_snapshot("srv-a", &snapshot(1, tree_id(0), s0)).await {
            Err(ClientError::Remote { code: ErrorCode::Corrupt, message, .. }) => {
                assert!(message.contains("seal"), "{message}")
            }
            other => panic!("a cyclic graph was committed: {other:?}"),
        }
        // a chain 50,000 trees deep, sealed bottom-up
        let mut deep = Vec::new();
        let mut below: Option<(ObjectId, Seal)> = None;
        for i in (10..50_010u64).rev() {
            let (links, seals) = below.map_or((vec![], vec![]), |(id, s)| (vec![id], vec![s]));
            let (rec, seal) = tree(i, links, seals);
            deep.push(rec);
            below = Some((tree_id(i), seal));
        }
        for part in deep.chunks(10_000) {
            c.put_objects("srv-a", part).await.unwrap();
        }
        let (root, seal) = below.unwrap();
        assert!(c.put_snapshot("srv-a", &snapshot(2, root, seal)).await.unwrap());
    });
    assert_eq!(stored_snapshots(site.node("srv-b"), "srv-a").len(), 1, "only the deep chain is committed");
    // the holder's walks end: garbage collection and scrub over those stores
    let gc = site.omesh("srv-b", &["gc", "--json"]).ok().json();
    let marked: u64 = gc["stores"].as_array().unwrap().iter().map(|s| s["marked"].as_u64().unwrap_or(0)).sum();
    assert!(marked >= 50_000, "{gc}");
    site.omesh("srv-b", &["scrub", "--json"]).ok();
    // and it still serves everyone
    victim_round_trip(&site, "srv-c", "srv-b", t.path());
}

#[test]
fn a_peer_serving_a_rewritten_chunk_fails_its_holding_check_and_stops_counting() {
    use omesh_core::store::{Access, KeySource, Store};
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1")]);
    site.write_config("srv-a", &["srv-b".into()], 1, "");
    site.write_config("srv-b", &["srv-a".into()], 1, "");
    let mut b = site.start("srv-b");
    // one small file: every path from the snapshot down ends at its chunk
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), tree::data(20_000, 9)).unwrap();
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    assert_eq!(r["protected"], true, "{r}");
    let sync = site.omesh("srv-a", &["sync", "--json"]).ok().json();
    let check = &sync["holding_checks"][0];
    assert_eq!((check["peer"].as_str(), check["ok"].as_bool()), (Some("srv-b"), Some(true)), "{sync}");

    // srv-b's data directory is edited: the chunk's body changed and its
    // check hash recomputed (srv-b's own reads still notice: the seal it
    // recorded for the record no longer matches, so it stops serving it)
    b.stop();
    let a_data = site.node("srv-a").data();
    let own = Store::open(&a_data.join("sources/srv-a"), Access::Read, KeySource::File(a_data.join("keys/srv-a.key")))
        .unwrap();
    let mut blob = None;
    own.for_each_object(|id, loc| {
        if loc.kind == ObjectKind::Blob {
            blob = Some(id);
        }
    })
    .unwrap();
    let blob = blob.expect("a chunk");
    drop(own);
    let b_store = site.node("srv-b").data().join("sources/srv-a");
    let (pack, loc) = Store::open(&b_store, Access::Read, KeySource::None).unwrap().locate(&blob).unwrap().unwrap();
    let path = omesh_core::store::pack::pack_path(&b_store, &pack);
    let mut bytes = std::fs::read(&path).unwrap();
    let (start, len) = (loc.offset as usize, loc.len as usize);
    alter_keeping_check(&mut bytes[start..start + len], 1, 0x55);
    std::fs::write(&path, &bytes).unwrap();
    let _b = site.start("srv-b");

    // srv-a's check finds it
    let sync = site.omesh("srv-a", &["sync", "--json"]).ok().json();
    let check = &sync["holding_checks"][0];
    assert_eq!(check["ok"], false, "{sync}");
    assert!(check["detail"].as_str().unwrap().contains("does not return"), "{sync}");
    // srv-b no longer counts: listing, status and the next backup say so
    let snaps = site.omesh("srv-a", &["snapshots", "--json"]).ok().json_list();
    let first = &snaps[0];
    assert_eq!(first["replica_count"], 0, "{snaps}");
    assert!(first["replicas"][0]["failed_check"].is_string(), "{snaps}");
    let st = site.omesh("srv-a", &["status", "--json"]).ok().json();
    let peer = st["peers"].as_array().unwrap().iter().find(|p| p["name"] == "srv-b").unwrap().clone();
    assert_eq!(peer["holding_check"]["ok"], false, "{st}");
    std::fs::write(src.join("g"), b"more").unwrap();
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).code(6).json();
    assert_eq!(r["protected"], false, "{r}");
    assert!(r["replicas"][0]["error"].as_str().unwrap().contains("holding check"), "{r}");
}

/// What a forging peer serves: snapshot listings and object records of
/// srv-a, made up or altered by the attacker.
#[derive(Default)]
struct Forgery {
    snapshots: Vec<SnapshotEntry>,
    objects: std::collections::HashMap<ObjectId, Vec<u8>>,
}

/// A peer with `name`'s certificate that answers the mesh protocol
/// honestly in form, from `data`: whatever the attacker chose.
async fn forging_peer(tls: TlsMaterial, name: &'static str, addr: SocketAddr, data: std::sync::Arc<Forgery>) {
    fake_server(tls, name, addr, move |req, mut send| {
        let data = data.clone();
        async move {
            let r = match req {
                Request::Ping { nonce } => Response::Pong { nonce },
                Request::Status => status(name, "srv-a", data.objects.len() as u64, data.snapshots.len() as u64),
                Request::ListSnapshots { source, .. } => Response::Snapshots {
                    items: data
                        .snapshots
                        .iter()
                        .filter(|e| source.as_ref().is_none_or(|s| *s == e.source))
                        .cloned()
                        .collect(),
                    more: false,
                },
                Request::GetSnapshot { id, .. } => match data.snapshots.iter().find(|e| e.id == id) {
                    Some(e) => Response::Snapshot { record: e.record.clone() },
                    None => not_found(),
                },
                Request::Have { ids, .. } => {
                    let mut held = vec![0u8; ids.len().div_ceil(8)];
                    for (i, id) in ids.iter().enumerate() {
                        if data.objects.contains_key(id) {
                            omesh_proto::msg::bitmap_set(&mut held, i);
                        }
                    }
                    Response::Have { held }
                }
                Request::GetObjects { ids, .. } => {
                    // the answer frame, then each record after a status byte
                    let (have, missing): (Vec<ObjectId>, Vec<ObjectId>) =
                        ids.iter().partition(|i| data.objects.contains_key(i));
                    let _ = transport::write_frame(&mut send, &Response::Objects { count: have.len() as u32, missing })
                        .await;
                    for id in have {
                        let _ = send.write_all(&[1]).await;
                        let _ = send.write_all(&data.objects[&id]).await;
                    }
                    let _ = send.finish();
                    return;
                }
                _ => not_found(),
            };
            answer(send, &r).await;
        }
    })
    .await
}

/// What srv-b really holds of srv-a: its snapshot records and objects.
fn real_holdings(b_store: &Path) -> Forgery {
    use omesh_core::store::{Access, KeySource, Store};
    let st = Store::open(b_store, Access::Read, KeySource::None).unwrap();
    let mut f = Forgery::default();
    for id in st.snapshot_ids().unwrap() {
        let record = st.read_snapshot_record(&id).unwrap();
        f.snapshots.push(SnapshotEntry { source: "srv-a".into(), id, record, stored_ns: 1 });
    }
    let mut ids = Vec::new();
    st.for_each_object(|id, loc| ids.push((id, loc.kind))).unwrap();
    for (id, _) in ids {
        f.objects.insert(id, st.read_record(&id).unwrap());
    }
    f
}

/// The ids of a store's records, as its index has them.
fn held_ids(store: &Path) -> std::collections::HashSet<ObjectId> {
    use omesh_core::store::{Access, KeySource, Store};
    let mut out = std::collections::HashSet::new();
    if store.join("omesh-store.toml").exists() {
        Store::open(store, Access::Read, KeySource::None)
            .unwrap()
            .for_each_object(|id, _| {
                out.insert(id);
            })
            .unwrap();
    }
    out
}

/// srv-b, compromised, lists snapshots under srv-a's name that srv-a never
/// made: one signed with srv-b's own certificate, one unsigned, one that
/// says it is srv-b's. srv-c's sync refuses every one, stores nothing of
/// them, names srv-b, and counts it.
#[test]
fn a_forged_snapshot_under_another_source_is_never_stored() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1"), ("srv-c", "r2")]);
    site.write_config("srv-a", &["srv-c".into()], 1, "");
    site.write_config("srv-c", &["srv-a".into(), "srv-b".into()], 2, "");
    let b_tls = material(&site.node("srv-b").dir.join("tls"));
    // the forged graph: a blob and a tree that links it, properly sealed
    let (blob_rec, blob_seal) = blob(1, 4096).encode_sealed();
    let blob_id = test_id(1, 0xb1);
    let (tree_rec, tree_seal) =
        Record::new(ObjectKind::Tree, test_id(2, 0x7e), vec![blob_id], vec![blob_seal], tree::data(64, 2))
            .encode_sealed();
    let snap = |seed: u64| {
        Record::new(
            ObjectKind::Snapshot,
            test_id(seed, 0x5a),
            vec![test_id(2, 0x7e)],
            vec![tree_seal],
            tree::data(64, seed),
        )
    };
    let mut f = Forgery::default();
    f.objects.insert(blob_id, blob_rec);
    f.objects.insert(test_id(2, 0x7e), tree_rec);
    let forged = [
        // signed by srv-b's key and certificate, claiming to be srv-a's
        (test_id(10, 0x5a), signed(&b_tls, "srv-a", snap(10)), "not a site certificate of \"srv-a\""),
        // not signed at all
        (test_id(11, 0x5a), snap(11).encode(), "not signed"),
        // srv-b's own, filed under srv-a
        (test_id(12, 0x5a), signed(&b_tls, "srv-b", snap(12)), "signed as a snapshot of \"srv-b\""),
    ];
    for (id, record, _) in &forged {
        f.snapshots.push(SnapshotEntry { source: "srv-a".into(), id: *id, record: record.clone(), stored_ns: 1 });
    }
    let b_addr: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let rt = rt();
    rt.spawn(forging_peer(b_tls, "srv-b", b_addr, std::sync::Arc::new(f)));
    let _c = site.start("srv-c");
    let r = site.omesh("srv-c", &["sync", "--json"]).code(3).json();
    let failed = r["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 3, "{r}");
    for (id, _, why) in &forged {
        let f = failed.iter().find(|x| x["snapshot"] == id.to_hex()).unwrap_or_else(|| panic!("{r}"));
        let e = f["error"].as_str().unwrap();
        assert!(e.contains("srv-b") && e.contains(why), "{e}");
    }
    assert!(r["repaired"].as_array().unwrap().is_empty(), "{r}");
    // nothing of it is stored on srv-c
    let c_store = site.node("srv-c").data().join("sources/srv-a");
    assert!(stored_snapshots(site.node("srv-c"), "srv-a").is_empty());
    assert!(held_ids(&c_store).is_empty(), "objects of a forged snapshot were stored");
    // the peer is named in metrics and status
    let st = site.omesh("srv-c", &["status", "--json"]).ok().json();
    let peer = st["peers"].as_array().unwrap().iter().find(|p| p["name"] == "srv-b").unwrap().clone();
    assert!(peer["forged_records"].as_u64().unwrap() >= 3, "{st}");
    // srv-a's own data is untouched: a backup lands on srv-c and restores
    victim_round_trip(&site, "srv-a", "srv-c", t.path());
    drop(rt);
}

/// srv-b, compromised, serves srv-a's genuine snapshot but with one chunk
/// rewritten (its check hash recomputed, as anyone can). srv-c's sync
/// refuses that chunk, commits nothing, and the snapshot comes to srv-c
/// intact from srv-a once srv-a is reachable.
#[test]
fn an_altered_chunk_pulled_by_sync_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1"), ("srv-c", "r2")]);
    site.write_config("srv-a", &["srv-b".into(), "srv-c".into()], 2, "");
    site.write_config("srv-b", &["srv-a".into(), "srv-c".into()], 2, "");
    site.write_config("srv-c", &["srv-a".into(), "srv-b".into()], 2, "");
    // srv-c is down: srv-a's backup lands on srv-b only
    let mut b = site.start("srv-b");
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), tree::data(300_000, 5)).unwrap();
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).json();
    let snap = r["snapshot"].as_str().unwrap().to_string();
    b.stop();
    // srv-b is taken over: it serves what it held, one chunk altered
    let mut f = real_holdings(&site.node("srv-b").data().join("sources/srv-a"));
    let victim = *f.objects.iter().find(|(_, r)| r[4] == ObjectKind::Blob as u8).unwrap().0;
    let rec = f.objects.get_mut(&victim).unwrap();
    alter_keeping_check(rec, 1, 0x55);
    assert!(Record::decode(rec).is_ok(), "the altered record passes its check hash");
    let b_addr: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let rt = rt();
    rt.spawn(forging_peer(material(&site.node("srv-b").dir.join("tls")), "srv-b", b_addr, std::sync::Arc::new(f)));
    // srv-a runs no daemon: srv-c can only ask srv-b
    let _c = site.start("srv-c");
    let r = site.omesh("srv-c", &["sync", "--json"]).code(3).json();
    assert!(r["repaired"].as_array().unwrap().is_empty(), "{r}");
    let e = r["failed"][0]["error"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(e.contains("could not be fetched"), "{e}");
    let c_store = site.node("srv-c").data().join("sources/srv-a");
    assert!(stored_snapshots(site.node("srv-c"), "srv-a").is_empty());
    assert!(!held_ids(&c_store).contains(&victim), "the altered chunk was stored");
    let st = site.omesh("srv-c", &["status", "--json"]).ok().json();
    let peer = st["peers"].as_array().unwrap().iter().find(|p| p["name"] == "srv-b").unwrap().clone();
    assert!(peer["forged_records"].as_u64().unwrap() >= 1, "{st}");
    // with srv-a reachable, srv-c gets the genuine chunk from it
    let _a = site.start("srv-a");
    let r = site.omesh("srv-c", &["sync", "--json"]).ok().json();
    assert_eq!(r["repaired"].as_array().unwrap().len(), 1, "{r}");
    assert!(held_ids(&c_store).contains(&victim));
    site.omesh("srv-c", &["verify", "--source", "srv-a", "--json"]).ok();
    // and srv-a restores it byte-identical from srv-c
    let out = t.path().join("out");
    site.omesh("srv-a", &["restore", &snap, "--from", "srv-c", "--target", s(&out)]).ok();
    tree::assert_same(&src, &restored(&out, &src));
    drop(rt);
}

/// srv-b, compromised, lists srv-a's real snapshot with an altered record
/// (its signature no longer verifies) next to an honest holder. srv-c's
/// repair is not blocked by it: it takes the honest holder's copy, and the
/// honest holder is never blamed.
#[test]
fn a_forged_copy_of_a_real_snapshot_neither_blocks_its_repair_nor_blames_honest_holders() {
    let t = tempfile::tempdir().unwrap();
    let site = Site::new(t.path(), &[("srv-a", "r0"), ("srv-b", "r1"), ("srv-c", "r2"), ("srv-d", "r3")]);
    site.write_config("srv-a", &["srv-d".into()], 1, "");
    site.write_config("srv-d", &["srv-a".into(), "srv-c".into()], 1, "");
    site.write_config("srv-c", &["srv-a".into(), "srv-b".into(), "srv-d".into()], 3, "");
    let _d = site.start("srv-d");
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), tree::data(200_000, 8)).unwrap();
    let r = site.omesh("srv-a", &["backup", s(&src), "--json"]).ok().json();
    let snap = ObjectId::from_hex(r["snapshot"].as_str().unwrap()).unwrap();
    // srv-b lists the same snapshot, its record altered
    let mut record =
        std::fs::read(site.node("srv-d").data().join("sources/srv-a/snapshots").join(snap.to_hex())).unwrap();
    alter_keeping_check(&mut record, 1, 1);
    let mut f = Forgery::default();
    f.snapshots.push(SnapshotEntry { source: "srv-a".into(), id: snap, record, stored_ns: 1 });
    let b_addr: SocketAddr = site.node("srv-b").addr().parse().unwrap();
    let rt = rt();
    rt.spawn(forging_peer(material(&site.node("srv-b").dir.join("tls")), "srv-b", b_addr, std::sync::Arc::new(f)));
    let _c = site.start("srv-c");
    let r = site.omesh("srv-c", &["sync", "--json"]).ok().json();
    assert_eq!(r["repaired"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(stored_snapshots(site.node("srv-c"), "srv-a"), vec![snap.to_hex()]);
    site.omesh("srv-c", &["verify", "--source", "srv-a", "--json"]).ok();
    let st = site.omesh("srv-c", &["status", "--json"]).ok().json();
    let forged = |name: &str| {
        st["peers"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["forged_records"].as_u64().unwrap()
    };
    assert_eq!(forged("srv-d"), 0, "the honest holder was blamed: {st}");
    // the census keeps the first listing in srv-c's peer order (srv-a runs
    // no daemon, so srv-b's bad copy): the repair above succeeded only
    // because each holder's own copy was then asked for (nearest first;
    // srv-b is blamed only when it is asked before srv-d)
    drop(rt);
}
