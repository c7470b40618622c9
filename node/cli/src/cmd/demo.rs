//! `omesh demo`: the whole job in one process with no set-up.
//!
//! On loopback, with its own site CA and temporary directories: start a
//! 3-node mesh, back up node 1 with replication factor 2, back up again
//! after small edits, then lose node 1 and its nearest replica, and restore
//! node 1's data onto a brand-new node 4 (certificate, CA and the exported
//! key only) from the remaining peer, and verify it byte for byte.

use crate::output::{CliError, ExitCode, bytes};
use omesh_core::backup::{BackupOptions, Progress};
use omesh_core::restore::{self, RestoreOptions, RestoreProgress};
use omesh_daemon::config::NodeConfig;
use omesh_daemon::runtime::NodeRuntime;
use omesh_daemon::{services, views};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Size of the generated sample data in MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Keep the temporary directory for inspection.
    #[arg(long)]
    pub keep: bool,
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::failed(format!("demo: {e}"))
}

fn free_port() -> Result<u16, CliError> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(fail)?;
    Ok(s.local_addr().map_err(fail)?.port())
}

fn config(
    root: &Path,
    name: &str,
    port: u16,
    domain: &str,
    peers: &[(&str, u16, &str)],
) -> Result<NodeConfig, CliError> {
    let dir = root.join(name);
    let mut t = format!(
        "name = \"{name}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\ndomain = \"{domain}\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ncrl = \"{}\"\n[replication]\nfactor = 2\n",
        dir.join("data").display(),
        dir.join("tls/ca.pem").display(),
        dir.join("tls/node.pem").display(),
        dir.join("tls/node.key").display(),
        dir.join("tls/crl.pem").display()
    );
    for (p, port, d) in peers {
        t.push_str(&format!("[[peer]]\nname = \"{p}\"\naddress = \"127.0.0.1:{port}\"\ndomain = \"{d}\"\n"));
    }
    let path = dir.join("omesh.toml");
    std::fs::write(&path, &t).map_err(fail)?;
    NodeConfig::load(&path).map_err(fail)
}

pub fn run(a: DemoArgs) -> Result<ExitCode, CliError> {
    let tmp = tempfile::Builder::new().prefix("omesh-demo-").tempdir().map_err(fail)?;
    let root = tmp.path().to_path_buf();
    let rt = crate::meshmode::tokio()?;
    let r = rt.block_on(demo(&root, a.size_mib));
    if a.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    r
}

async fn demo(root: &Path, size_mib: u64) -> Result<ExitCode, CliError> {
    println!("omesh demo in {}", root.display());
    // 1. a site CA and four node certificates
    let ca = root.join("ca");
    omesh_net::ca::init(&ca, "demo-site", 30).map_err(fail)?;
    for n in ["node-1", "node-2", "node-3", "node-4"] {
        omesh_net::ca::issue(&ca, n, &root.join(n).join("tls"), 30).map_err(fail)?;
    }
    let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
    let all = [("node-1", ports[0], "rack-a"), ("node-2", ports[1], "rack-b"), ("node-3", ports[2], "rack-c")];
    let peers_of = |me: &str| all.iter().filter(|p| p.0 != me).copied().collect::<Vec<_>>();
    let c1 = config(root, "node-1", ports[0], "rack-a", &peers_of("node-1"))?;
    let c2 = config(root, "node-2", ports[1], "rack-b", &peers_of("node-2"))?;
    let c3 = config(root, "node-3", ports[2], "rack-c", &peers_of("node-3"))?;
    let c4 = config(root, "node-4", ports[3], "rack-d", &all)?;
    let d2 = services::start_daemon(c2).await.map_err(fail)?;
    let d3 = services::start_daemon(c3).await.map_err(fail)?;
    let d1 = services::start_daemon(c1.clone()).await.map_err(fail)?;
    println!(
        "1. site CA created; 3-node mesh running on 127.0.0.1 (node-1 rack-a, node-2 rack-b, node-3 rack-c), mutual TLS over QUIC"
    );

    // 2. sample data and a first backup with factor 2
    let data = root.join("data");
    let total = omesh_core::sample::generate(&data, size_mib * 1024 * 1024, 1).map_err(fail)?;
    let opts = BackupOptions { paths: vec![data.clone()], ..Default::default() };
    let t = Instant::now();
    let r1 = d1.rt.backup_and_replicate(opts.clone(), Arc::new(Progress::default())).await.map_err(fail)?;
    let secs = t.elapsed().as_secs_f64();
    let sent1: u64 = r1.replicas.iter().filter(|r| r.ok).map(|r| r.bytes_sent).sum();
    println!(
        "2. node-1 backed up {} of sample data as snapshot {}: read {}, stored {} ({:.1}x smaller after dedup and compression), sent {} to {} in {:.2}s",
        bytes(total),
        r1.backup.snapshot.short(),
        bytes(r1.backup.bytes_read),
        bytes(r1.backup.bytes_added),
        r1.backup.bytes_read as f64 / r1.backup.bytes_added.max(1) as f64,
        bytes(sent1),
        r1.replicas
            .iter()
            .filter(|r| r.ok)
            .map(|r| format!("{} ({}, rtt {}µs)", r.peer, r.domain, r.rtt_us))
            .collect::<Vec<_>>()
            .join(" and "),
        secs
    );
    if !r1.protected {
        return Err(fail(format!("snapshot not protected: {:?}", r1.replication_warnings)));
    }

    // 3. small edits, second backup: only new data moves
    omesh_core::sample::mutate(&data, 2).map_err(fail)?;
    let r2 = d1.rt.backup_and_replicate(opts, Arc::new(Progress::default())).await.map_err(fail)?;
    let sent2: u64 = r2.replicas.iter().filter(|r| r.ok).map(|r| r.bytes_sent).sum();
    println!(
        "3. after small edits: snapshot {} read {} ({} unchanged files skipped), added {}, sent only {} to the replicas",
        r2.backup.snapshot.short(),
        bytes(r2.backup.bytes_read),
        r2.backup.files_unchanged,
        bytes(r2.backup.bytes_added),
        bytes(sent2)
    );

    // 4. node-1 fails, and so does its nearest replica
    let key_export = root.join("node-1-exported.key");
    std::fs::copy(c1.key_path("node-1"), &key_export).map_err(fail)?;
    let nearest = r2
        .replicas
        .iter()
        .filter(|r| r.ok)
        .min_by_key(|r| r.rtt_us)
        .map(|r| r.peer.clone())
        .ok_or_else(|| fail("no replica"))?;
    d1.shutdown().await;
    let (dead, alive) = if nearest == "node-2" { (d2, d3) } else { (d3, d2) };
    let survivor = alive.rt.cfg.name.clone();
    dead.shutdown().await;
    println!("4. node-1 is gone, and so is its nearest replica {nearest}; only {survivor} holds the snapshots now");

    // 5. a brand-new node-4: certificate, CA and the exported key only
    std::fs::create_dir_all(c4.data_dir.join("keys")).map_err(fail)?;
    let k = omesh_core::keyfile::KeyFile::load(&key_export).map_err(fail)?;
    k.save(&c4.key_path("node-1")).map_err(fail)?;
    let n4 = NodeRuntime::build(c4, false, false).await.map_err(fail)?;
    let (id, src) =
        views::prepare_restore(&n4, "node-1", "latest", &Default::default(), &views::From::Auto).await.map_err(fail)?;
    let target = root.join("node-4-restore");
    let src = Arc::new(src);
    let s2 = src.clone();
    let tgt = target.clone();
    let t = Instant::now();
    let rs = tokio::task::spawn_blocking(move || {
        restore::run(
            s2.as_ref(),
            &id,
            &RestoreOptions { target: tgt, threads: Some(16), ..Default::default() },
            Arc::new(RestoreProgress::default()),
        )
    })
    .await
    .map_err(fail)?
    .map_err(fail)?;
    let secs = t.elapsed().as_secs_f64();
    let from: Vec<String> =
        src.usage().iter().filter(|u| u.objects > 0).map(|u| format!("{} ({} objects)", u.peer, u.objects)).collect();
    let restored: PathBuf = target.join(data.strip_prefix("/").unwrap_or(&data));
    let same = crate::demo_compare::dirs_equal(&data, &restored).map_err(fail)?;
    println!(
        "5. node-4 restored snapshot {} ({} files, {}) from {} in {:.2}s ({}/s): {}",
        id.short(),
        rs.files,
        bytes(rs.bytes_written),
        from.join(", "),
        secs,
        bytes((rs.bytes_written as f64 / secs.max(1e-6)) as u64),
        if same && rs.errors.is_empty() { "byte-identical to the original" } else { "MISMATCH" }
    );
    alive.shutdown().await;
    n4.endpoint.close(0u32.into(), b"done");
    Ok(if same && rs.errors.is_empty() { ExitCode::Ok } else { ExitCode::Failed })
}
