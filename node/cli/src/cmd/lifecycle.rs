//! `omesh forget`, `omesh gc`, `omesh scrub`, `omesh sync`: the
//! maintenance the daemon runs on its own timers, on demand.

use crate::args::StoreArgs;
use crate::meshmode as mesh;
use crate::output::{CliError, ExitCode, bytes, key_source, print_json, with_progress};
use omesh_core::policy::bandwidth::{self, Rate};
use omesh_core::policy::retention::{GroupBy, RetentionDuration, RetentionPolicy};
use omesh_core::store::scrub::DamageKind;
use omesh_core::store::{Access, Store};
use omesh_core::store::{gc, scrub};
use omesh_daemon::services::control::{ControlRequest, ControlResponse};
use omesh_daemon::services::maintenance::{self as lifecycle, ForgetReport, ScrubReport};

#[derive(clap::Args, Debug)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this source's store (mesh mode; default: every store on the node).
    #[arg(long, requires = "config")]
    pub source: Option<String>,
    /// Show what would be forgotten and why, remove nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Keep the N most recent snapshots (local stores; mesh nodes use [retention]).
    #[arg(long, value_name = "N", conflicts_with = "config")]
    pub keep_last: Option<u32>,
    /// Keep the last snapshot of each of the last N hours.
    #[arg(long, value_name = "N", conflicts_with = "config")]
    pub keep_hourly: Option<u32>,
    /// Keep the last snapshot of each of the last N days.
    #[arg(long, value_name = "N", conflicts_with = "config")]
    pub keep_daily: Option<u32>,
    /// Keep the last snapshot of each of the last N weeks.
    #[arg(long, value_name = "N", conflicts_with = "config")]
    pub keep_weekly: Option<u32>,
    /// Keep the last snapshot of each of the last N months.
    #[arg(long, value_name = "N", conflicts_with = "config")]
    pub keep_monthly: Option<u32>,
    /// Keep the last snapshot of each of the last N years.
    #[arg(long, value_name = "N", conflicts_with = "config")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot within this duration of the newest (e.g. 14d).
    #[arg(long, value_name = "DURATION", conflicts_with = "config")]
    pub keep_within: Option<String>,
    /// Never forget snapshots younger than this (e.g. 30d).
    #[arg(long, value_name = "DURATION", conflicts_with = "config")]
    pub lock: Option<String>,
    /// Apply the rules to each group of snapshots apart: "paths" (each
    /// backup set by its paths, the default), "paths,tags" or "none" (all
    /// together). Mesh nodes use [retention] group_by.
    #[arg(long, value_name = "paths|paths,tags|none", conflicts_with = "config", value_parser = GroupBy::parse)]
    pub group_by: Option<GroupBy>,
    /// Forget these snapshots of this node (and ask its peers to, which they
    /// refuse inside their retention lock) instead of applying the policy.
    #[arg(value_name = "SNAPSHOT", requires = "config")]
    pub snapshots: Vec<String>,
    /// Only the snapshots these filters choose are considered (--latest is not a retention rule: use --keep-last).
    #[command(flatten)]
    pub filter: crate::args::FilterArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Seconds condemned objects wait before they are swept (local stores;
    /// default 0 there, since this command holds the store's only write lock).
    #[arg(long, value_name = "SECS", conflicts_with = "config")]
    pub grace: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ScrubArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Read rate, e.g. "50 MiB/s" or "unlimited" (default: [scrub] rate, or unlimited for local stores).
    #[arg(long, value_name = "RATE")]
    pub rate: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    /// Node configuration file.
    #[arg(long, short = 'c', env = "OMESH_CONFIG", value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn open_write(a: &StoreArgs) -> Result<Store, CliError> {
    Ok(Store::open(a.dir(), Access::Write, key_source(&a.key_file))?)
}

fn duration(flag: &str, s: &Option<String>) -> Result<Option<RetentionDuration>, CliError> {
    s.as_deref().map(RetentionDuration::parse).transpose().map_err(|e| CliError::usage(format!("{flag}: {e}")))
}

pub fn forget(a: ForgetArgs) -> Result<ExitCode, CliError> {
    if a.filter.latest.is_some() {
        return Err(CliError::usage(
            "forget takes --tag, --path and --host to choose what retention considers; --latest is not a \
             retention rule (use --keep-last N)",
        ));
    }
    let filter = a.filter.filter();
    let rep: ForgetReport = match &a.store.config {
        Some(path) => {
            let cfg = mesh::load(path)?;
            let req = ControlRequest::Forget {
                source: a.source.clone(),
                ids: a.snapshots.clone(),
                dry_run: a.dry_run,
                filter: filter.clone(),
            };
            let r = mesh::via_daemon_or_local(cfg, req, |rt| async move {
                lifecycle::forget(&rt, a.source.clone(), a.snapshots.clone(), a.dry_run, filter)
                    .await
                    .map(ControlResponse::Forget)
                    .map_err(mesh::node_err)
            })?;
            match r {
                ControlResponse::Forget(r) => r,
                other => return Err(mesh::unexpected(&other)),
            }
        }
        None => {
            let policy = RetentionPolicy {
                keep_last: a.keep_last,
                keep_hourly: a.keep_hourly,
                keep_daily: a.keep_daily,
                keep_weekly: a.keep_weekly,
                keep_monthly: a.keep_monthly,
                keep_yearly: a.keep_yearly,
                keep_within: duration("--keep-within", &a.keep_within)?,
                lock: duration("--lock", &a.lock)?,
                honor_source_deletes: false,
                group_by: a.group_by.unwrap_or_default(),
            };
            if !policy.has_rules() {
                return Err(CliError::usage(
                    "give at least one --keep-* rule (e.g. --keep-daily 7 --keep-weekly 4); without rules nothing is forgotten",
                ));
            }
            let store = open_write(&a.store)?;
            let mut rep = ForgetReport { dry_run: a.dry_run, ..Default::default() };
            let source = store.config().source.clone();
            lifecycle::forget_store(&source, &store, &policy, &filter, omesh_core::time::now(), a.dry_run, &mut rep);
            rep
        }
    };
    if a.json {
        print_json("forget", &rep)?;
    } else {
        let mut items = rep.items.clone();
        items.sort_by(|x, y| (&x.source, &x.group, &x.time).cmp(&(&y.source, &y.group, &y.time)));
        let mut last: Option<(&str, &str)> = None;
        for i in &items {
            // a heading per group, as the rules counted within it
            if last != Some((&i.source, &i.group)) {
                let what = match (i.group.as_str(), &i.paths) {
                    ("all", _) => "all snapshots".to_string(),
                    ("ungrouped", _) => "snapshots made before retention groups".to_string(),
                    (g, Some(p)) => format!("group {} (paths {})", &g[..8.min(g.len())], p.join(" ")),
                    (g, None) => format!("group {} (paths not readable here)", &g[..8.min(g.len())]),
                };
                println!("{} {what}:", i.source);
                last = Some((&i.source, &i.group));
            }
            let verdict = match (i.keep, i.removed, rep.dry_run) {
                (true, _, _) => "keep  ",
                (false, true, _) => "forgot",
                (false, false, true) => "forget",
                (false, false, false) => "FAILED",
            };
            println!("  {verdict} {} {}  {}", &i.id[..8], i.time, i.reasons.join(", "));
        }
        for p in &rep.peers {
            println!(
                "peer {}: snapshot {} {}",
                p.peer,
                &p.snapshot[..8],
                if p.forgotten { "forgotten".to_string() } else { format!("kept: {}", p.message) }
            );
        }
        for e in &rep.errors {
            eprintln!("omesh: {e}");
        }
        println!(
            "{} {} snapshots, kept {}{}",
            if rep.dry_run { "would forget" } else { "forgot" },
            rep.forgotten,
            rep.kept,
            if rep.dry_run {
                " (dry run: nothing removed)"
            } else {
                "; run `omesh gc` (or wait for maintenance) to reclaim space"
            }
        );
    }
    Ok(if !rep.errors.is_empty() {
        ExitCode::Failed
    } else if rep.peers.iter().any(|p| !p.forgotten)
        || rep.items.iter().any(|i| i.keep && i.reasons.iter().any(|r| r.starts_with("retention lock until")))
    {
        // something asked for was kept (a lock); the caller should know
        ExitCode::Warnings
    } else {
        ExitCode::Ok
    })
}

pub fn gc(a: GcArgs) -> Result<ExitCode, CliError> {
    let rep: lifecycle::GcAllReport = match &a.store.config {
        Some(path) => {
            let cfg = mesh::load(path)?;
            let r = mesh::via_daemon_or_local(cfg, ControlRequest::Gc, |rt| async move {
                Ok(ControlResponse::Gc(lifecycle::gc_all(&rt).await))
            })?;
            match r {
                ControlResponse::Gc(r) => r,
                other => return Err(mesh::unexpected(&other)),
            }
        }
        None => {
            let store = open_write(&a.store)?;
            let opts =
                gc::GcOptions { grace: std::time::Duration::from_secs(a.grace.unwrap_or(0)), ..Default::default() };
            let r = with_progress(
                || "collecting garbage".to_string(),
                || gc::run(&store, &opts, std::time::SystemTime::now()),
            );
            match r {
                Ok(r) => lifecycle::GcAllReport { stores: vec![r], errors: vec![] },
                Err(e @ gc::GcError::Damaged { .. }) => return Err(CliError { code: ExitCode::Damage, err: e.into() }),
                Err(e) => return Err(CliError { code: ExitCode::Failed, err: e.into() }),
            }
        }
    };
    if a.json {
        print_json("gc", &rep)?;
    } else {
        for s in &rep.stores {
            println!(
                "{}: {} snapshots marked, {} objects swept{}, {} condemned; {} -> {} ({} packs retired, {} rewritten) in {:.1}s",
                s.store,
                s.snapshots,
                s.swept,
                if s.rescued > 0 { format!(" ({} rescued by writers)", s.rescued) } else { String::new() },
                s.condemned,
                bytes(s.bytes_before),
                bytes(s.bytes_after),
                s.repack.packs_retired,
                s.repack.packs_written,
                s.seconds
            );
            if let Some(w) = &s.waiting {
                println!("  waiting: {w}");
            }
        }
        for e in &rep.errors {
            eprintln!("omesh: {e}");
        }
    }
    Ok(if rep.errors.iter().any(|e| e.contains("stopped without removing anything")) {
        ExitCode::Damage
    } else if !rep.errors.is_empty() {
        ExitCode::Failed
    } else {
        ExitCode::Ok
    })
}

pub fn scrub(a: ScrubArgs) -> Result<ExitCode, CliError> {
    let rate = |default: Rate| match &a.rate {
        Some(r) => Rate::parse(r).map_err(|e| CliError::usage(format!("--rate: {e}"))),
        None => Ok(default),
    };
    let rep: ScrubReport = match &a.store.config {
        Some(path) => {
            let cfg = mesh::load(path)?;
            let r = rate(cfg.scrub.rate)?;
            let resp =
                mesh::via_daemon_or_local(cfg, ControlRequest::Scrub { rate: r.bytes_per_sec() }, |rt| async move {
                    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    Ok(ControlResponse::Scrub(lifecycle::scrub_all(&rt, r, stop).await))
                })?;
            match resp {
                ControlResponse::Scrub(r) => r,
                other => return Err(mesh::unexpected(&other)),
            }
        }
        None => {
            let r = rate(Rate::UNLIMITED)?;
            let store = open_write(&a.store)?;
            // another process may still be reading a pack scrub retires
            let grace = gc::GcOptions::default().grace;
            let pass = with_progress(
                || "scrubbing".to_string(),
                || scrub::scrub_store(&store, &bandwidth::Pacer::new(r), None, u64::MAX, grace, &|| false),
            )?;
            let unrepaired = pass.damaged.iter().map(|d| d.id).collect();
            ScrubReport { seconds: pass.seconds, stores: vec![pass], unrepaired, ..Default::default() }
        }
    };
    if a.json {
        print_json("scrub", &rep)?;
    } else {
        for s in &rep.stores {
            println!(
                "{}: {} objects ({}) and {} snapshot records checked, {} damaged",
                s.store,
                s.objects,
                bytes(s.bytes),
                s.snapshots,
                s.damaged.len()
            );
            for d in &s.damaged {
                let what = match d.what {
                    DamageKind::Object => "object",
                    DamageKind::Snapshot => "snapshot",
                };
                println!("  DAMAGED {what} {}: {} (bytes kept in {})", d.id.short(), d.reason, d.quarantined);
            }
        }
        for id in &rep.repaired {
            println!("  repaired {} from a replica", id.short());
        }
        for id in &rep.unrepaired {
            println!("  NOT REPAIRED {}: no reachable replica has a good copy", id.short());
        }
        for e in &rep.errors {
            eprintln!("omesh: {e}");
        }
    }
    Ok(if !rep.unrepaired.is_empty() {
        ExitCode::Damage
    } else if !rep.errors.is_empty() {
        ExitCode::Failed
    } else {
        ExitCode::Ok
    })
}

pub fn sync(a: SyncArgs) -> Result<ExitCode, CliError> {
    let cfg = mesh::load(&a.config)?;
    let resp = mesh::via_daemon_or_local(cfg, ControlRequest::Sync, |rt| async move {
        Ok(ControlResponse::Sync(lifecycle::sync_now(&rt).await))
    })?;
    let ControlResponse::Sync(r) = resp else { return Err(mesh::unexpected(&resp)) };
    if a.json {
        print_json("sync", &r)?;
    } else {
        println!(
            "{} snapshots in the mesh, {} under-replicated; repaired {} here, {} left to other nodes",
            r.snapshots,
            r.under_replicated,
            r.repaired.len(),
            r.left_to_others
        );
        if r.no_repairer > 0 {
            println!(
                "  {} under-replicated snapshots have no node that could add a replica: every reachable node holds them; bring the missing peer back, or replace it (deploy/restore-runbook.md)",
                r.no_repairer
            );
        }
        for x in &r.repaired {
            println!(
                "  repaired {} of {}: {} objects, {} from {}",
                &x.snapshot[..8],
                x.source,
                x.objects,
                bytes(x.bytes),
                x.from.join(", ")
            );
        }
        for f in &r.failed {
            println!("  FAILED {} of {}: {}", &f.snapshot[..8], f.source, f.error);
        }
        for u in &r.unreachable {
            println!("  unreachable: {u}");
        }
        for c in &r.holding_checks {
            if c.ok {
                println!("  holding check of {}: {} records of {} verified", c.peer, c.records, &c.snapshot[..8]);
            } else {
                println!("  holding check of {} FAILED: {} (it no longer counts as a replica)", c.peer, c.detail);
            }
        }
    }
    Ok(if r.failed.is_empty() { ExitCode::Ok } else { ExitCode::Warnings })
}
