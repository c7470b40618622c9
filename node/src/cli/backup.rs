//! `omesh backup`

use super::StoreArgs;
use super::output::{CliError, ExitCode, bytes, key_source, print_json, with_progress};
use crate::backup::{self, BackupError, BackupOptions, ParentChoice, Progress};
use crate::store::{Access, Store};
use omesh_proto::ObjectId;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Files or directories to back up.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Skip entries matching GLOB: a name pattern ('*.log') or an absolute path pattern ('/var/cache/**').
    #[arg(long, short = 'e', value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Do not cross into other file systems (mount points are recorded empty).
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Back up a block device or disk image as one file (zero blocks stored as holes).
    #[arg(long, value_name = "PATH", conflicts_with = "paths")]
    pub image: Option<PathBuf>,
    /// Tag the snapshot (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Parent snapshot for the unchanged-file fast path: an id, or "none" to read everything.
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// Record this host name instead of the machine's.
    #[arg(long)]
    pub host: Option<String>,
    /// Worker threads for hashing, compression and encryption (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Files read at once (default: 4 per core); raise on storage with deep queues.
    #[arg(long, value_name = "N")]
    pub read_concurrency: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BackupArgs) -> Result<ExitCode, CliError> {
    let store = Store::open(&a.store.store, Access::Write, key_source(&a.store.key_file))?;
    let parent = match a.parent.as_deref() {
        None => ParentChoice::Auto,
        Some("none") => ParentChoice::None,
        Some(spec) => ParentChoice::Id(store.resolve_snapshot(spec)?),
    };
    let opts = BackupOptions {
        paths: a.paths.clone(),
        image: a.image.clone(),
        excludes: a.exclude.clone(),
        one_file_system: a.one_file_system,
        parent,
        tags: a.tag.clone(),
        hostname: a.host.clone(),
        threads: a.threads,
        read_concurrency: a.read_concurrency,
    };
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let res = with_progress(
        move || {
            format!(
                "{} files, {} read, {} added",
                p.files.load(Ordering::Relaxed),
                bytes(p.bytes_read.load(Ordering::Relaxed)),
                bytes(p.bytes_added.load(Ordering::Relaxed))
            )
        },
        || backup::run(&store, &opts, progress.clone()),
    );
    let s = match res {
        Ok(s) => s,
        Err(BackupError::Store(e)) => return Err(e.into()),
        Err(e @ (BackupError::Options(_) | BackupError::Path { .. })) => {
            return Err(CliError { code: ExitCode::Usage, err: e.into() });
        }
        Err(e) => {
            return Err(CliError { code: ExitCode::Failed, err: e.into() });
        }
    };
    for w in &s.warnings {
        eprintln!("omesh: warning: {}: {}", w.path, w.message);
    }
    if a.json {
        print_json(&s)?;
    } else {
        let id = ObjectId::from_hex(&s.snapshot).map(|i| i.short()).unwrap_or_default();
        println!("snapshot {id} saved ({})", s.snapshot);
        println!(
            "  {} files, {} dirs, {} total; read {}, added {} to the store in {:.1}s",
            s.files,
            s.dirs,
            bytes(s.bytes),
            bytes(s.bytes_read),
            bytes(s.bytes_added),
            s.seconds
        );
        if s.files_unchanged > 0 {
            println!("  {} files unchanged since the parent snapshot were not read", s.files_unchanged);
        }
        if !s.warnings.is_empty() {
            println!("  {} warnings: some content could not be read (see above)", s.warnings.len());
        }
    }
    Ok(if s.warnings.is_empty() { ExitCode::Ok } else { ExitCode::Warnings })
}
