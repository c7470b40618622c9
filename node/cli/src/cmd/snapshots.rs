//! `omesh snapshots`

use crate::args::{FilterArgs, StoreArgs};
use crate::output::{CliError, ExitCode, bytes, key_source, print_json_list, table, time};
use omesh_core::snapshot::SnapshotKind;
use omesh_core::store::{Access, Store};
use omesh_daemon::views::SnapshotInfo;

#[derive(clap::Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Mesh mode: whose snapshots (default: this node's).
    #[arg(long, value_name = "NODE", requires = "config")]
    pub source: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SnapshotsArgs) -> Result<ExitCode, CliError> {
    if let Some(cfg) = &a.store.config {
        return run_mesh(&a, cfg);
    }
    let store = Store::open(a.store.dir(), Access::Read, key_source(&a.store.key_file))?;
    let (snaps, bad) = store.snapshots()?;
    let snaps = a.filter.filter().apply(snaps);
    for e in &bad {
        eprintln!("omesh: warning: unreadable snapshot: {e}");
    }
    if a.json {
        let list: Vec<SnapshotInfo> = snaps.iter().map(|(id, r)| SnapshotInfo::new(id, &r.source, Some(r))).collect();
        print_json_list("snapshots", "snapshots", &list)?;
    } else if snaps.is_empty() {
        println!("no snapshots in {}", a.store.dir().display());
    } else {
        let rows: Vec<Vec<String>> = snaps
            .iter()
            .map(|(id, r)| {
                let paths = match r.kind {
                    SnapshotKind::Image => format!("image {}", r.paths.join(" ")),
                    SnapshotKind::Files => r.paths.join(" "),
                };
                let warn = if r.warnings > 0 { format!(" ({} warnings)", r.warnings) } else { String::new() };
                vec![
                    id.short(),
                    time(r.start_ns),
                    r.hostname.clone(),
                    r.tags.join(","),
                    r.files.to_string(),
                    bytes(r.bytes),
                    format!("{paths}{warn}"),
                ]
            })
            .collect();
        let right = [false, false, false, false, true, true, false];
        println!("{}", table(&["id", "time", "host", "tags", "files", "size", "paths"], &right, &rows));
        println!("{} snapshots", snaps.len());
    }
    Ok(if bad.is_empty() { ExitCode::Ok } else { ExitCode::Damage })
}

fn run_mesh(a: &SnapshotsArgs, path: &std::path::Path) -> Result<ExitCode, CliError> {
    use crate::meshmode as mesh;
    use omesh_daemon::services::control::{ControlRequest, ControlResponse};
    let cfg = mesh::load(path)?;
    let source = a.source.clone();
    let resp = mesh::via_daemon_or_local(cfg, ControlRequest::Snapshots { source: source.clone() }, |rt| async move {
        omesh_daemon::views::snapshots(&rt, source.as_deref())
            .await
            .map(ControlResponse::Snapshots)
            .map_err(mesh::node_err)
    })?;
    let ControlResponse::Snapshots(mut list) = resp else { return Err(mesh::unexpected(&resp)) };
    let filter = a.filter.filter();
    list.retain(|v| filter.matches_fields(&v.info.tags, &v.info.paths, v.info.hostname.as_deref()));
    let at = |v: &omesh_daemon::views::SnapshotView| {
        v.info.time.as_deref().and_then(omesh_core::time::parse_rfc3339).map(omesh_core::time::ns)
    };
    list.sort_by_key(|v| (at(v), v.info.id.clone()));
    filter.keep_latest(&mut list);
    let v = serde_json::to_value(&list).expect("views serialize");
    if a.json {
        print_json_list("snapshots", "snapshots", &list)?;
        return Ok(ExitCode::Ok);
    }
    let items = v.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no snapshots found");
        return Ok(ExitCode::Ok);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let reps: Vec<String> = s["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{}{}",
                        r["node"].as_str().unwrap_or(""),
                        if r["confirmed"].as_bool() == Some(true) { "" } else { "(unconfirmed)" }
                    )
                })
                .collect();
            let strs = |k: &str| -> String {
                s[k].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" ")
            };
            let when = s["time"]
                .as_str()
                .and_then(omesh_core::time::parse_rfc3339)
                .map(|t| time(omesh_core::time::ns(t)))
                .unwrap_or_else(|| "(no key here)".into());
            let paths = match s["kind"].as_str() {
                Some("image") => format!("image {}", strs("paths")),
                _ => strs("paths"),
            };
            vec![
                s["short_id"].as_str().unwrap_or("").to_string(),
                when,
                s["hostname"].as_str().unwrap_or("").to_string(),
                strs("tags").replace(' ', ","),
                s["files"].as_u64().map(|f| f.to_string()).unwrap_or_default(),
                s["bytes"].as_u64().map(bytes).unwrap_or_default(),
                if s["fully_replicated"].as_bool() == Some(true) { "yes" } else { "NO" }.to_string(),
                reps.join(", "),
                paths,
            ]
        })
        .collect();
    let right = [false, false, false, false, true, true, false, false, false];
    let headers = ["id", "time", "host", "tags", "files", "size", "protected", "replicas", "paths"];
    println!("{}", table(&headers, &right, &rows));
    Ok(ExitCode::Ok)
}
