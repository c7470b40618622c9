//! `omesh stats`

use crate::args::{FilterArgs, StoreArgs};
use crate::browse::{choose, with_snapshots};
use crate::output::{CliError, ExitCode, bytes, print_json, table};
use omesh_core::browse;

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only these snapshots (ids, prefixes or "latest"; default: every one the filters choose).
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Mesh mode: whose snapshots (default: this node's).
    #[arg(long, value_name = "NODE", requires = "config")]
    pub source: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: StatsArgs) -> Result<ExitCode, CliError> {
    let filter = a.filter.filter();
    let st = with_snapshots(&a.store, a.source.as_deref(), |src, list| {
        let chosen = choose(list, &a.snapshots, &filter)?;
        Ok(browse::stats(src, &chosen)?)
    })?;
    if a.json {
        print_json("stats", &st)?;
        return Ok(ExitCode::Ok);
    }
    let opt = |b: Option<u64>| b.map(bytes).unwrap_or_else(|| "(not stored here)".into());
    let ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into());
    println!("snapshots:          {}", st.snapshots);
    println!("logical size:       {}  (every snapshot's files added up)", bytes(st.logical_bytes));
    println!(
        "unique data:        {}  in {} chunks  (dedup {})",
        bytes(st.unique_data_bytes),
        st.unique_chunks,
        ratio(st.dedup_ratio)
    );
    println!("stored data:        {}  (compression {})", opt(st.stored_data_bytes), ratio(st.compression_ratio));
    println!("stored in all:      {}  (with {} tree and list objects)", opt(st.stored_bytes), st.metadata_objects);
    if st.hole_bytes > 0 {
        println!("sparse holes:       {}  (not stored)", bytes(st.hole_bytes));
    }
    let rows: Vec<Vec<String>> = st
        .per_snapshot
        .iter()
        .map(|p| {
            vec![
                p.id[..8].to_string(),
                p.time.clone(),
                p.files.to_string(),
                bytes(p.bytes),
                bytes(p.new_data_bytes),
                bytes(p.bytes_added),
            ]
        })
        .collect();
    if !rows.is_empty() {
        println!();
        let right = [false, false, true, true, true, true];
        println!("{}", table(&["id", "time", "files", "size", "new data", "stored added"], &right, &rows));
    }
    Ok(ExitCode::Ok)
}
