//! `omesh diff`

use crate::args::{FilterArgs, StoreArgs};
use crate::browse::{pick, with_snapshots};
use crate::output::{CliError, ExitCode, bytes, print_json};
use omesh_core::browse::{self, Change, ChangeKind, DiffSummary};

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The older snapshot: an id, a unique prefix, or "latest" (of the filtered ones).
    pub a: String,
    /// The newer snapshot.
    pub b: String,
    /// Only compare below this path (as backed up, e.g. /etc).
    pub path: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Mesh mode: whose snapshots (default: this node's).
    #[arg(long, value_name = "NODE", requires = "config")]
    pub source: Option<String>,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct DiffView {
    a: String,
    b: String,
    path: String,
    changes: Vec<Change>,
    summary: DiffSummary,
}

pub fn run(a: DiffArgs) -> Result<ExitCode, CliError> {
    let filter = a.filter.filter();
    let path = a.path.clone().unwrap_or_else(|| "/".into());
    let view = with_snapshots(&a.store, a.source.as_deref(), |src, list| {
        let (ia, ra) = pick(&list, &a.a, &filter)?;
        let (ib, rb) = pick(&list, &a.b, &filter)?;
        let tree = |root, which: &str| -> Result<omesh_proto::ObjectId, CliError> {
            match browse::lookup(src, root, &path)? {
                None => Ok(*root),
                Some(n) => match n.kind {
                    omesh_core::snapshot::NodeKind::Dir { tree } => Ok(tree),
                    _ => Err(CliError::usage(format!("{path} is not a directory in snapshot {which}"))),
                },
            }
        };
        let prefix = format!("/{}", browse::components(&path).join("/"));
        let prefix = if prefix == "/" { String::new() } else { prefix };
        let (changes, summary) = browse::diff(src, &tree(&ra.tree, &a.a)?, &tree(&rb.tree, &a.b)?, &prefix)?;
        Ok(DiffView { a: ia.to_hex(), b: ib.to_hex(), path: path.clone(), changes, summary })
    })?;
    if a.json {
        print_json("diff", &view)?;
        return Ok(ExitCode::Ok);
    }
    for c in &view.changes {
        let (mark, why) = match c.change {
            ChangeKind::Added => ("+", String::new()),
            ChangeKind::Removed => ("-", String::new()),
            ChangeKind::Modified => ("M", format!("  ({})", c.reasons.join(", "))),
            ChangeKind::TypeChanged => ("T", format!("  (now a {})", c.r#type)),
        };
        let slash = if c.r#type == "dir" { "/" } else { "" };
        println!("{mark}    {}{slash}{why}", c.path);
    }
    let s = &view.summary;
    println!(
        "\n{} added, {} removed, {} modified; data added {}, removed {}",
        s.added,
        s.removed,
        s.modified,
        bytes(s.added_bytes),
        bytes(s.removed_bytes)
    );
    Ok(ExitCode::Ok)
}
