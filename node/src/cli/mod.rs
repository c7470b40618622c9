//! The `omesh` command line: parse, call the library, print.
//!
//! No business logic lives here. Every read command has `--json`; human
//! output goes to stdout, logs and progress bars to stderr. Exit codes are
//! listed in [`ExitCode`] and in `docs/cli.md`.

mod backup;
mod demo;
mod init;
mod key;
mod ls;
mod output;
mod repair;
mod restore;
mod snapshots;
mod verify;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

pub use output::{CliError, ExitCode};

/// omesh keeps every byte of your backups on site: deduplicated, compressed,
/// encrypted snapshots, replicated across the servers of a site.
#[derive(Parser, Debug)]
#[command(
    name = "omesh",
    version,
    about,
    long_about = None,
    after_help = "Start here:\n  omesh demo                                 see the whole thing work in a minute\n  omesh init --store /srv/omesh              create a local store and its key\n  omesh backup --store /srv/omesh /var/lib/app\n  omesh snapshots --store /srv/omesh\n  omesh restore --store /srv/omesh latest --target /tmp/restore\n\nExit codes: 0 ok, 1 failed, 2 usage or configuration error, 3 backup finished with\nunreadable files, 4 damage found (verify) or files not restored, 5 store busy.\nLogs: RUST_LOG=debug (or --verbose) writes detailed logs to stderr."
)]
pub struct Cli {
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Write logs as JSON lines (for journald / log shippers).
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the store and key are.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Store directory.
    #[arg(long, short = 's', env = "OMESH_STORE", value_name = "DIR")]
    pub store: PathBuf,
    /// Key file, when it is not DIR/key.
    #[arg(long, env = "OMESH_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new store and its encryption key.
    #[command(long_about = "Create a new store and its encryption key.\n\n\
        The key is written to DIR/key with mode 0600 unless --key-file is given. \
        Without the key nothing can be restored: export it with `omesh key export` \
        and keep a copy off this server.")]
    Init(init::InitArgs),
    /// Back up files and directories (or a block device) into a new snapshot.
    Backup(backup::BackupArgs),
    /// List snapshots.
    Snapshots(snapshots::SnapshotsArgs),
    /// List the files in a snapshot.
    Ls(ls::LsArgs),
    /// Restore a snapshot into a directory (or an image onto a file or device).
    Restore(restore::RestoreArgs),
    /// Check the store: structure, or with --read-data every byte.
    Verify(verify::VerifyArgs),
    /// Export or import the store's key.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Repair a store.
    #[command(subcommand)]
    Repair(repair::RepairCommand),
    /// Run a self-contained demonstration in a temporary directory.
    Demo(demo::DemoArgs),
}

/// Set up logging: warnings by default, more with -v or RUST_LOG.
pub fn init_logging(verbose: u8, json: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = b.json().try_init();
    } else {
        let _ = b.with_target(false).try_init();
    }
}

/// Run a parsed command.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Init(a) => init::run(a),
        Command::Backup(a) => backup::run(a),
        Command::Snapshots(a) => snapshots::run(a),
        Command::Ls(a) => ls::run(a),
        Command::Restore(a) => restore::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Key(c) => key::run(c),
        Command::Repair(c) => repair::run(c),
        Command::Demo(a) => demo::run(a),
    }
}

/// Entry point used by the binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_json);
    match run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("omesh: error: {}", e.message());
            e.code.into()
        }
    }
}
