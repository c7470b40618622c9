//! `omesh verify`

use crate::args::StoreArgs;
use crate::output::{CliError, ExitCode, bytes, key_source, print_json, with_progress};
use omesh_core::store::{Access, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Read and verify every byte of every pack.
    #[arg(long)]
    pub read_data: bool,
    /// Read and verify only part of the packs: a random percentage (10%), slice n of m (2/5:
    /// run 1/5 ... 5/5 on five days to read everything once), or a random amount (500MiB).
    #[arg(long, value_name = "P%|N/M|SIZE", conflicts_with = "read_data")]
    pub read_data_subset: Option<String>,
    /// Mesh mode: verify this S3 target's copy instead of the local store.
    #[arg(long, value_name = "NAME", requires = "config")]
    pub s3: Option<String>,
    /// Mesh mode: whose copy to verify, e.g. a peer's replica kept on this
    /// node (default: this node's own store).
    #[arg(long, value_name = "NODE", requires = "config")]
    pub source: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn run_s3(a: &VerifyArgs, path: &std::path::Path, name: &str) -> Result<omesh_core::verify::VerifyReport, CliError> {
    let cfg = crate::meshmode::load(path)?;
    let source = a.source.clone().unwrap_or_else(|| cfg.name.clone());
    let rt = crate::meshmode::tokio()?;
    rt.block_on(crate::meshmode::in_process(cfg, false, |nrt| async move {
        let t = nrt
            .s3
            .iter()
            .find(|t| t.cfg.name == name)
            .ok_or_else(|| CliError::usage(format!("--s3 {name}: no [[s3]] target of that name")))?;
        let keys = omesh_daemon::views::source_keys(&nrt, &source);
        t.verify(&source, keys, a.read_data).await.map_err(|e| CliError {
            code: if e.is_config() { ExitCode::Usage } else { ExitCode::Failed },
            err: e.into(),
        })
    }))
}

pub fn run(a: VerifyArgs) -> Result<ExitCode, CliError> {
    let subset =
        a.read_data_subset.as_deref().map(omesh_core::verify::Subset::parse).transpose().map_err(CliError::usage)?;
    if a.s3.is_some() && subset.is_some() {
        return Err(CliError::usage(
            "--read-data-subset reads part of a local store's packs; an S3 target is checked with --read-data (all of it)",
        ));
    }
    if let (Some(path), Some(name)) = (&a.store.config, &a.s3) {
        let rep = run_s3(&a, path, name)?;
        return report(&a, &rep);
    }
    let store = match &a.store.config {
        None => Store::open(a.store.dir(), Access::Read, key_source(&a.store.key_file))?,
        Some(path) => {
            let cfg = crate::meshmode::load(path)?;
            let source = a.source.clone().unwrap_or_else(|| cfg.name.clone());
            match omesh_net::mesh::stores::open_source_read(&cfg.layout(), &source)? {
                Some(s) => s,
                None if source == cfg.name => {
                    return Err(CliError::usage(format!("{} has no local store yet (nothing backed up)", cfg.name)));
                }
                None => return Err(CliError::usage(format!("{} keeps no replica of {source}", cfg.name))),
            }
        }
    };
    let read = Arc::new(AtomicU64::new(0));
    let r2 = read.clone();
    let rep = with_progress(
        move || format!("verified {}", bytes(r2.load(Ordering::Relaxed))),
        || {
            let data = if a.read_data { Some(None) } else { subset.map(Some) };
            omesh_core::verify::run_subset(&store, data, |b| read.store(b, Ordering::Relaxed))
        },
    )?;
    report(&a, &rep)
}

fn report(a: &VerifyArgs, rep: &omesh_core::verify::VerifyReport) -> Result<ExitCode, CliError> {
    if a.json {
        let mut v = serde_json::to_value(rep).map_err(|e| CliError::failed(e.to_string()))?;
        v["ok"] = serde_json::Value::Bool(rep.ok());
        print_json("verify", &v)?;
    } else {
        println!(
            "checked {} snapshots, {} directories{}",
            rep.snapshots,
            rep.trees,
            if a.read_data || a.read_data_subset.is_some() {
                format!(
                    ", read {} objects in {} of {} packs ({})",
                    rep.objects_read,
                    rep.packs_read,
                    rep.packs_total,
                    bytes(rep.bytes_read)
                )
            } else {
                String::new()
            }
        );
        for d in &rep.damaged_objects {
            println!(
                "DAMAGED object {} ({}): {}",
                if d.id.is_empty() { "?" } else { &d.id[..8.min(d.id.len())] },
                d.location,
                d.reason
            );
        }
        for s in &rep.unreadable_snapshots {
            println!("UNREADABLE snapshot {}: {}", &s.id[..8], s.reason);
        }
        for s in &rep.damaged_snapshots {
            println!("snapshot {} cannot be fully restored; affected:", &s.snapshot[..8]);
            for p in &s.paths {
                println!("  {p}");
            }
        }
        if rep.ok() {
            println!("no errors found");
        }
    }
    Ok(if rep.ok() { ExitCode::Ok } else { ExitCode::Damage })
}
