//! `omesh find`

use crate::args::{FilterArgs, StoreArgs};
use crate::browse::{choose, with_snapshots};
use crate::output::{CliError, ExitCode, print_json_list, time};
use omesh_core::browse;
use omesh_core::snapshot::NodeKind;

#[derive(clap::Args, Debug)]
pub struct FindArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Glob patterns (`*.conf`, `/etc/ssh/*`). A pattern without `/` matches
    /// a name anywhere; with `/` it matches the whole path.
    #[arg(required = true, value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Only search these snapshots (repeatable; default: every snapshot the filters choose).
    #[arg(long = "snapshot", value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Only entries modified at or after this time (RFC 3339, or a date: 2026-11-30).
    #[arg(long, value_name = "TIME")]
    pub oldest: Option<String>,
    /// Only entries modified at or before this time.
    #[arg(long, value_name = "TIME")]
    pub newest: Option<String>,
    /// Match case-insensitively.
    #[arg(long, short = 'i')]
    pub ignore_case: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Mesh mode: whose snapshots (default: this node's).
    #[arg(long, value_name = "NODE", requires = "config")]
    pub source: Option<String>,
    /// Print as JSON (one entry per match).
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Match {
    snapshot: String,
    short_id: String,
    snapshot_time: String,
    #[serde(skip)]
    snapshot_ns: i64,
    path: String,
    r#type: &'static str,
    size: Option<u64>,
    mtime: String,
}

fn parse_time(s: &str, what: &str, end_of_day: bool) -> Result<i64, CliError> {
    if let Some(t) = omesh_core::time::parse_rfc3339(s) {
        return Ok(omesh_core::time::ns(t));
    }
    let d: jiff::civil::Date = s.parse().map_err(|_| {
        CliError::usage(format!("--{what} {s:?}: give an RFC 3339 time (2026-11-30T08:00:00Z) or a date (2026-11-30)"))
    })?;
    let t = if end_of_day { d.at(23, 59, 59, 999_999_999) } else { d.at(0, 0, 0, 0) };
    let z = t.to_zoned(jiff::tz::TimeZone::UTC).map_err(|e| CliError::usage(format!("--{what} {s:?}: {e}")))?;
    Ok(z.timestamp().as_nanosecond() as i64)
}

pub fn run(a: FindArgs) -> Result<ExitCode, CliError> {
    let oldest = a.oldest.as_deref().map(|s| parse_time(s, "oldest", false)).transpose()?;
    let newest = a.newest.as_deref().map(|s| parse_time(s, "newest", true)).transpose()?;
    let mut set = globset::GlobSetBuilder::new();
    let mut by_path = Vec::new();
    for p in &a.patterns {
        let g = globset::GlobBuilder::new(p)
            .case_insensitive(a.ignore_case)
            .literal_separator(true)
            .build()
            .map_err(|e| CliError::usage(format!("pattern {p:?}: {e}")))?;
        set.add(g);
        by_path.push(p.contains('/'));
    }
    let set = set.build().map_err(|e| CliError::usage(e.to_string()))?;
    let filter = a.filter.filter();
    let matches = with_snapshots(&a.store, a.source.as_deref(), |src, list| {
        let chosen = choose(list, &a.snapshots, &filter)?;
        let mut out = Vec::new();
        for (id, rec) in &chosen {
            browse::walk(src, &rec.tree, "", &mut |path, n| {
                let name = n.name_lossy();
                let hit =
                    set.matches(path).iter().any(|&i| by_path[i]) || set.matches(&name).iter().any(|&i| !by_path[i]);
                let in_time = oldest.is_none_or(|t| n.mtime_ns >= t) && newest.is_none_or(|t| n.mtime_ns <= t);
                if hit && in_time {
                    out.push(Match {
                        snapshot: id.to_hex(),
                        short_id: id.short(),
                        snapshot_time: omesh_core::time::rfc3339_ns(rec.start_ns),
                        snapshot_ns: rec.start_ns,
                        path: path.to_string(),
                        r#type: browse::type_name(n),
                        size: if let NodeKind::File { size, .. } = n.kind { Some(size) } else { None },
                        mtime: omesh_core::time::rfc3339_ns(n.mtime_ns),
                    });
                }
                Ok(true)
            })?;
        }
        Ok((out, chosen.len()))
    })?;
    let (matches, searched) = matches;
    if a.json {
        print_json_list("find", "matches", &matches)?;
    } else {
        let mut last = String::new();
        for m in &matches {
            if m.snapshot != last {
                println!("snapshot {} of {}:", m.short_id, time(m.snapshot_ns));
                last = m.snapshot.clone();
            }
            let size = m.size.map(|s| format!("{s:>12}")).unwrap_or_else(|| format!("{:>12}", m.r#type));
            println!("  {size}  {}  {}", m.mtime, m.path);
        }
        let snaps: std::collections::HashSet<&str> = matches.iter().map(|m| m.snapshot.as_str()).collect();
        println!("{} matches in {} of {searched} snapshots searched", matches.len(), snaps.len());
    }
    Ok(ExitCode::Ok)
}
