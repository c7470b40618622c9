//! `omesh dump`

use crate::args::{FilterArgs, StoreArgs};
use crate::browse::{pick, with_snapshots};
use crate::output::{CliError, ExitCode};
use omesh_core::browse;
use omesh_core::snapshot::NodeKind;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Snapshot: an id, a unique prefix, or "latest" (of the filtered ones).
    pub snapshot: String,
    /// The path as backed up (/etc/hosts, /var/lib/app). A file is written
    /// as its bytes, a directory (or /) as a tar stream.
    pub path: String,
    /// Write to this file instead of stdout (created; never overwritten).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Mesh mode: whose snapshot (default: this node's).
    #[arg(long, value_name = "NODE", requires = "config")]
    pub source: Option<String>,
}

pub fn run(a: DumpArgs) -> Result<ExitCode, CliError> {
    let mut out: Box<dyn Write + Send> = match &a.output {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map_err(|e| CliError::usage(format!("{}: {e} (dump never overwrites a file)", p.display())))?,
        ),
        None if std::io::stdout().is_terminal() => {
            return Err(CliError::usage(format!(
                "dump writes raw bytes; not to a terminal. Redirect it: `omesh dump {} {} > FILE`, `| tar -x`, or `-o FILE`",
                a.snapshot, a.path
            )));
        }
        None => Box::new(std::io::stdout()),
    };
    let filter = a.filter.filter();
    let written = with_snapshots(&a.store, a.source.as_deref(), |src, list| {
        let (_, rec) = pick(&list, &a.snapshot, &filter)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut out);
        let skipped = match browse::lookup(src, &rec.tree, &a.path)? {
            None => browse::write_tar(src, &browse::root_entries(src, &rec.tree)?, &mut w)?.skipped,
            Some(n) if matches!(n.kind, NodeKind::File { .. }) => {
                if n.unreadable {
                    return Err(CliError {
                        code: ExitCode::Damage,
                        err: anyhow::anyhow!(
                            "{}: its content could not be read at backup time; nothing written",
                            a.path
                        ),
                    });
                }
                let mut r = browse::FileReader::new(src, &n)?;
                std::io::copy(&mut r, &mut w).map_err(|e| write_err(e, &a.path))?;
                vec![]
            }
            Some(n) => {
                let name: PathBuf = browse::components(&a.path).iter().collect();
                browse::write_tar(src, &[(name, n)], &mut w)?.skipped
            }
        };
        w.flush().map_err(|e| write_err(e, &a.path))?;
        Ok(skipped)
    });
    let skipped = match written {
        Ok(s) => s,
        Err(e) => {
            // a half-written output file is not left looking complete
            if let Some(p) = &a.output {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    for p in &skipped {
        eprintln!("omesh: warning: {p} left out of the tar (a socket, or its content was unreadable at backup time)");
    }
    Ok(if skipped.is_empty() { ExitCode::Ok } else { ExitCode::Warnings })
}

fn write_err(e: std::io::Error, path: &str) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return CliError { code: ExitCode::Failed, err: anyhow::anyhow!("{path}: the reader closed the pipe") };
    }
    CliError { code: ExitCode::Damage, err: anyhow::anyhow!("{path}: {e}") }
}
