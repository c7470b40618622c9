//! `omesh restore`

use super::StoreArgs;
use super::output::{CliError, ExitCode, bytes, key_source, print_json, with_progress};
use crate::restore::{self, RestoreError, RestoreOptions, RestoreProgress};
use crate::store::{Access, Store};
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
    /// Worker threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RestoreArgs) -> Result<ExitCode, CliError> {
    let store = Store::open(&a.store.store, Access::Read, key_source(&a.store.key_file))?;
    store.keys()?;
    let id = store.resolve_snapshot(&a.snapshot)?;
    let opts = RestoreOptions { target: a.target.clone(), includes: a.include.clone(), threads: a.threads };
    let progress = Arc::new(RestoreProgress::default());
    let p = progress.clone();
    let res = with_progress(
        move || {
            let done = p.bytes_written.load(Ordering::Relaxed) + p.bytes_reused.load(Ordering::Relaxed);
            format!(
                "{} files, {} of {}",
                p.files.load(Ordering::Relaxed),
                bytes(done),
                bytes(p.bytes_planned.load(Ordering::Relaxed))
            )
        },
        || restore::run(&store, &id, &opts, progress.clone()),
    );
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
    if a.json {
        print_json(&s)?;
    } else {
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
