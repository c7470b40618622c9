//! `omesh snapshots`

use super::StoreArgs;
use super::output::{CliError, ExitCode, bytes, key_source, print_json, time};
use crate::snapshot::{SnapshotKind, SnapshotRecord};
use crate::store::{Access, Store};
use omesh_proto::ObjectId;

#[derive(clap::Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// JSON form of a snapshot.
pub fn snapshot_json(id: &ObjectId, r: &SnapshotRecord) -> serde_json::Value {
    serde_json::json!({
        "id": id.to_hex(),
        "short_id": id.short(),
        "time": chrono::DateTime::from_timestamp_nanos(r.start_ns).to_rfc3339(),
        "end_time": chrono::DateTime::from_timestamp_nanos(r.end_ns).to_rfc3339(),
        "source": r.source,
        "hostname": r.hostname,
        "paths": r.paths,
        "kind": match r.kind { SnapshotKind::Files => "files", SnapshotKind::Image => "image" },
        "parent": r.parent.map(|p| p.to_hex()),
        "tree": r.tree.to_hex(),
        "files": r.files,
        "dirs": r.dirs,
        "bytes": r.bytes,
        "bytes_added": r.bytes_added,
        "warnings": r.warnings,
        "tags": r.tags,
        "program": r.program,
    })
}

pub fn run(a: SnapshotsArgs) -> Result<ExitCode, CliError> {
    let store = Store::open(&a.store.store, Access::Read, key_source(&a.store.key_file))?;
    let (snaps, bad) = store.snapshots()?;
    for e in &bad {
        eprintln!("omesh: warning: unreadable snapshot: {e}");
    }
    if a.json {
        print_json(&snaps.iter().map(|(id, r)| snapshot_json(id, r)).collect::<Vec<_>>())?;
    } else if snaps.is_empty() {
        println!("no snapshots in {}", a.store.store.display());
    } else {
        println!("{:<10} {:<19} {:<16} {:>9} {:>10}  paths", "id", "time", "host", "files", "size");
        for (id, r) in &snaps {
            let paths = match r.kind {
                SnapshotKind::Image => format!("image {}", r.paths.join(" ")),
                SnapshotKind::Files => r.paths.join(" "),
            };
            let warn = if r.warnings > 0 { format!(" ({} warnings)", r.warnings) } else { String::new() };
            println!(
                "{:<10} {:<19} {:<16} {:>9} {:>10}  {paths}{warn}",
                id.short(),
                time(r.start_ns),
                r.hostname,
                r.files,
                bytes(r.bytes)
            );
        }
        println!("{} snapshots", snaps.len());
    }
    Ok(if bad.is_empty() { ExitCode::Ok } else { ExitCode::Damage })
}
