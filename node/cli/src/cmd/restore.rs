//! `omesh restore`

use crate::args::{FilterArgs, StoreArgs};
use crate::output::{CliError, ExitCode, bytes, key_source, print_json, with_progress};
use omesh_core::restore::{self, RestoreError, RestoreOptions, RestoreProgress};
use omesh_core::store::{Access, Store};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Snapshot: an id, a unique prefix, or "latest".
    pub snapshot: String,
    /// Target directory (or file/device for an image snapshot).
    #[arg(long, short = 't', value_name = "DIR")]
    pub target: PathBuf,
    /// Only restore this snapshot path and what is below it (repeatable).
    #[arg(long, short = 'i', value_name = "PATH")]
    pub include: Vec<String>,
    /// Leave out entries matching GLOB, with everything below them: a name pattern ('*.log')
    /// or a snapshot path pattern ('/var/lib/app/cache/**') (repeatable).
    #[arg(long, short = 'e', value_name = "GLOB")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Say what would be restored (files, sizes, paths) without reading data or touching the target.
    #[arg(long)]
    pub dry_run: bool,
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Mesh mode: whose snapshot (default: this node's own).
    #[arg(long, value_name = "NODE", requires = "config")]
    pub source: Option<String>,
    /// Mesh mode: where to read from: auto (local copy and every replica,
    /// peers and buckets, nearest and fastest first), local, s3 (only the
    /// buckets), or the name of one peer or S3 target.
    #[arg(long, value_name = "auto|local|s3|NAME", default_value = "auto", requires = "config")]
    pub from: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RestoreArgs) -> Result<ExitCode, CliError> {
    if a.dry_run {
        return dry_run(a);
    }
    if let Some(cfg) = a.store.config.clone() {
        return run_mesh(a, &cfg);
    }
    let store = Store::open(a.store.dir(), Access::Read, key_source(&a.store.key_file))?;
    store.keys()?;
    let id = if a.filter.filter().is_empty() {
        store.resolve_snapshot(&a.snapshot)?
    } else {
        let (list, bad) = store.snapshots()?;
        if a.snapshot == "latest" {
            store.latest_known(&bad)?;
        }
        crate::browse::pick(&list, &a.snapshot, &a.filter.filter())?.0
    };
    let opts = RestoreOptions {
        target: a.target.clone(),
        includes: a.include.clone(),
        excludes: a.exclude.clone(),
        threads: a.threads,
    };
    let progress = Arc::new(RestoreProgress::default());
    let res = run_restore(&store, &id, &opts, progress);
    finish(res, a.json, None)
}

/// `restore --dry-run`: the selection walked, nothing read or written.
fn dry_run(a: RestoreArgs) -> Result<ExitCode, CliError> {
    let opts = RestoreOptions {
        target: a.target.clone(),
        includes: a.include.clone(),
        excludes: a.exclude.clone(),
        threads: a.threads,
    };
    let filter = a.filter.filter();
    let res = crate::browse::with_snapshots(&a.store, a.source.as_deref(), |src, list| {
        let (id, _) = crate::browse::pick(&list, &a.snapshot, &filter)?;
        Ok(restore::dry_run(src, &id, &opts))
    })?;
    let d = match res {
        Ok(d) => d,
        Err(e @ RestoreError::Include(..)) => return Err(CliError { code: ExitCode::Usage, err: e.into() }),
        Err(RestoreError::Source(e)) if e.damage => return Err(CliError { code: ExitCode::Damage, err: e.into() }),
        Err(e) => return Err(CliError::failed(e.to_string())),
    };
    if a.json {
        print_json(
            "restore",
            &serde_json::json!({"dry_run": true, "target": a.target.display().to_string(), "plan": d}),
        )?;
        return Ok(ExitCode::Ok);
    }
    for p in d.paths.iter().take(20) {
        println!("would restore {p}");
    }
    if d.paths.len() > 20 {
        println!("... and {} more (--json lists every path)", d.paths.len() - 20);
    }
    for p in &d.unreadable {
        println!("would skip {p} (unreadable at backup time)");
    }
    println!(
        "dry run: would restore {} files ({}), {} directories and {} other entries into {}; nothing was read or written",
        d.files,
        bytes(d.bytes),
        d.dirs,
        d.others,
        a.target.display()
    );
    Ok(ExitCode::Ok)
}

fn run_restore(
    src: &dyn omesh_core::objects::ObjectSource,
    id: &omesh_proto::ObjectId,
    opts: &RestoreOptions,
    progress: Arc<RestoreProgress>,
) -> Result<omesh_core::restore::RestoreSummary, RestoreError> {
    let p = progress.clone();
    let started = std::time::Instant::now();
    with_progress(
        move || {
            let (done, total) = p.done_and_total();
            format!(
                "{}, {} files",
                crate::output::progress_line(done, total, false, started.elapsed()),
                p.files.load(Ordering::Relaxed)
            )
        },
        || restore::run(src, id, opts, progress.clone()),
    )
}

fn run_mesh(a: RestoreArgs, path: &std::path::Path) -> Result<ExitCode, CliError> {
    use crate::meshmode as mesh;
    use omesh_daemon::views::{From, prepare_restore};
    let cfg = mesh::load(path)?;
    let source = a.source.clone().unwrap_or_else(|| cfg.name.clone());
    let from = match a.from.as_str() {
        "auto" => From::Auto,
        "local" => From::Local,
        "s3" => From::S3,
        p => From::Peer(p.to_string()),
    };
    let rt = mesh::tokio()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let opts = RestoreOptions {
        target: a.target.clone(),
        includes: a.include.clone(),
        excludes: a.exclude.clone(),
        threads: Some(a.threads.unwrap_or((cores * 8).max(16))),
    };
    let sock = cfg.control_socket();
    let (res, usage) = rt.block_on(mesh::in_process(cfg, false, |nrt| async move {
        let filter = a.filter.filter();
        let (id, src) = prepare_restore(&nrt, &source, &a.snapshot, &filter, &from).await.map_err(mesh::node_err)?;
        let progress = Arc::new(RestoreProgress::default());
        let src = Arc::new(src);
        let s2 = src.clone();
        let res = tokio::task::spawn_blocking(move || run_restore(s2.as_ref(), &id, &opts, progress))
            .await
            .map_err(|e| CliError::failed(e.to_string()))?;
        let mut usage = serde_json::to_value(src.usage()).expect("serializes");
        let local = src.local_objects.load(Ordering::Relaxed);
        if local > 0 {
            usage.as_array_mut().expect("array").push(serde_json::json!({"peer": "local", "objects": local}));
        }
        // tell the daemon, if one runs, for its restore metrics
        if omesh_daemon::services::control::daemon_running(&sock).await {
            let (ok, bytes, seconds) = match &res {
                Ok(s) => (s.errors.is_empty(), s.bytes_written + s.bytes_reused, s.seconds),
                Err(_) => (false, 0, 0.0),
            };
            let req = omesh_daemon::services::control::ControlRequest::RestoreDone { ok, bytes, seconds };
            let _ = omesh_daemon::services::control::call(&sock, &req, |_| {}).await;
        }
        Ok::<_, CliError>((res, usage))
    }))?;
    finish(res, a.json, Some(usage))
}

fn finish(
    res: Result<omesh_core::restore::RestoreSummary, RestoreError>,
    json: bool,
    sources: Option<serde_json::Value>,
) -> Result<ExitCode, CliError> {
    let s = match res {
        Ok(s) => s,
        Err(e @ (RestoreError::Target { .. } | RestoreError::Include(..))) => {
            return Err(CliError { code: ExitCode::Usage, err: e.into() });
        }
        Err(RestoreError::Source(e)) if e.damage => {
            return Err(CliError { code: ExitCode::Damage, err: e.into() });
        }
        Err(e) => {
            return Err(CliError { code: ExitCode::Failed, err: e.into() });
        }
    };
    for w in &s.warnings {
        eprintln!("omesh: warning: {}: {}", w.path, w.message);
    }
    for e in &s.errors {
        eprintln!("omesh: error: {}: {}", e.path, e.message);
    }
    if json {
        let mut v = serde_json::to_value(&s).expect("serializes");
        if let Some(u) = &sources {
            v["sources"] = u.clone();
        }
        print_json("restore", &v)?;
    } else {
        if let Some(u) = &sources {
            for r in u.as_array().into_iter().flatten() {
                println!(
                    "  from {}: {} objects{}",
                    r["peer"].as_str().unwrap_or(""),
                    r["objects"],
                    if r["dropped"].as_bool() == Some(true) { " (dropped during the restore)" } else { "" }
                );
            }
        }
        println!(
            "restored snapshot {} to {}: {} files ({} unchanged), {} dirs, {} others; wrote {}, reused {} in {:.1}s",
            &s.snapshot[..8],
            s.target,
            s.files,
            s.files_unchanged,
            s.dirs,
            s.others,
            bytes(s.bytes_written),
            bytes(s.bytes_reused),
            s.seconds
        );
        if !s.errors.is_empty() {
            println!("{} entries could NOT be restored (see errors above)", s.errors.len());
        }
    }
    Ok(if s.errors.is_empty() { ExitCode::Ok } else { ExitCode::Damage })
}
