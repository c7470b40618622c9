//! `omesh tag`

use crate::args::{FilterArgs, StoreArgs};
use crate::meshmode as mesh;
use crate::output::{CliError, ExitCode, key_source, print_json};
use omesh_core::snapshot::select::TagChange;
use omesh_core::store::{Access, Store, TagReport};
use omesh_daemon::services::control::{ControlRequest, ControlResponse};
use omesh_daemon::services::maintenance;

#[derive(clap::Args, Debug)]
pub struct TagArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The snapshots to change (ids, prefixes or "latest"; default: every one the filters choose).
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Add this tag (repeatable).
    #[arg(long, value_name = "TAG")]
    pub add: Vec<String>,
    /// Remove this tag (repeatable).
    #[arg(long, value_name = "TAG")]
    pub remove: Vec<String>,
    /// Replace all tags with these (repeatable; `--set ''` alone removes every tag).
    #[arg(long, value_name = "TAG", conflicts_with_all = ["add", "remove"])]
    pub set: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TagArgs) -> Result<ExitCode, CliError> {
    let set: Vec<String> = a.set.iter().filter(|t| !t.is_empty()).cloned().collect();
    let change = TagChange { set: (!a.set.is_empty()).then_some(set), add: a.add.clone(), remove: a.remove.clone() };
    let filter = a.filter.filter();
    let rep: TagReport = match &a.store.config {
        Some(path) => {
            let cfg = mesh::load(path)?;
            let req = ControlRequest::Tag { ids: a.snapshots.clone(), filter: filter.clone(), change: change.clone() };
            let r = mesh::via_daemon_or_local(cfg, req, |rt| async move {
                maintenance::tag(&rt, a.snapshots.clone(), filter, change)
                    .await
                    .map(ControlResponse::Tag)
                    .map_err(mesh::node_err)
            })?;
            match r {
                ControlResponse::Tag(r) => r,
                other => return Err(mesh::unexpected(&other)),
            }
        }
        None => {
            let store = Store::open(a.store.dir(), Access::Write, key_source(&a.store.key_file))?;
            store.tag_snapshots(&a.snapshots, &filter, &change)?
        }
    };
    for e in &rep.errors {
        eprintln!("omesh: warning: {e}");
    }
    if a.json {
        print_json("tag", &rep)?;
    } else {
        for i in &rep.items {
            let tags = if i.tags.is_empty() { "(no tags)".to_string() } else { i.tags.join(",") };
            match &i.new {
                Some(n) => println!("{} -> {}  tags {tags}", i.snapshot.short(), n.short()),
                None => println!("{} unchanged  tags {tags}", i.snapshot.short()),
            }
        }
        println!(
            "{} of {} snapshots retagged (a retagged snapshot gets a new id; its data is not rewritten)",
            rep.changed,
            rep.items.len()
        );
        for p in &rep.peers {
            println!("  {} {}: {}", p.peer, &p.snapshot[..8], p.message);
        }
    }
    Ok(if rep.errors.is_empty() && rep.peers.iter().all(|p| p.forgotten) { ExitCode::Ok } else { ExitCode::Warnings })
}
