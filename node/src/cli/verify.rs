//! `omesh verify`

use super::StoreArgs;
use super::output::{CliError, ExitCode, bytes, key_source, print_json, with_progress};
use crate::store::{Access, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Read and verify every byte of every pack.
    #[arg(long)]
    pub read_data: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: VerifyArgs) -> Result<ExitCode, CliError> {
    let store = match &a.store.config {
        None => Store::open(a.store.dir(), Access::Read, key_source(&a.store.key_file))?,
        Some(path) => {
            let cfg = super::mesh::load(path)?;
            match crate::mesh::open_source_read(&cfg, &cfg.name)? {
                Some(s) => s,
                None => {
                    return Err(CliError::usage(format!("{} has no local store yet (nothing backed up)", cfg.name)));
                }
            }
        }
    };
    let read = Arc::new(AtomicU64::new(0));
    let r2 = read.clone();
    let rep = with_progress(
        move || format!("verified {}", bytes(r2.load(Ordering::Relaxed))),
        || crate::verify::run(&store, a.read_data, |b| read.store(b, Ordering::Relaxed)),
    )?;
    if a.json {
        let mut v = serde_json::to_value(&rep).map_err(|e| CliError::failed(e.to_string()))?;
        v["ok"] = serde_json::Value::Bool(rep.ok());
        print_json(&v)?;
    } else {
        println!(
            "checked {} snapshots, {} directories{}",
            rep.snapshots,
            rep.trees,
            if a.read_data {
                format!(", read {} objects in {} packs ({})", rep.objects_read, rep.packs_read, bytes(rep.bytes_read))
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
