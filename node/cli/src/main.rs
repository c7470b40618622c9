//! The `omesh` binary: parse the command line, call the library crates,
//! print. See `omesh --help`.
//!
//! No business logic lives here. Every read command has `--json`; human
//! output goes to stdout, logs and progress bars to stderr. Exit codes are
//! listed in [`ExitCode`] and in `docs/cli.md`.

mod args;
mod browse;
mod cmd;
mod demo_compare;
mod fusefs;
mod meshmode;
mod output;

use clap::{Parser, Subcommand};

pub use output::{CliError, ExitCode};

/// omesh keeps every byte of your backups on site: deduplicated, compressed,
/// encrypted snapshots, replicated across the servers of a site.
#[derive(Parser, Debug)]
#[command(
    name = "omesh",
    version,
    about,
    long_about = None,
    after_help = "Start here:\n  omesh demo                                 see the whole thing work in a minute\n  omesh init --store /srv/omesh              create a local store and its key\n  omesh backup --store /srv/omesh /var/lib/app\n  omesh snapshots --store /srv/omesh\n  omesh restore --store /srv/omesh latest --target /tmp/restore\n\nExit codes: 0 ok, 1 failed, 2 usage or configuration error, 3 warnings (backup finished\nwith unreadable files; forget kept a snapshot asked for or could not ask a peer; sync\nrepairs failed), 4 damage found (verify) or files not restored, 5 store busy,
6 snapshot saved but not yet on `factor` peers.\nLogs: RUST_LOG=debug (or --verbose) writes detailed logs to stderr."
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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new store and its encryption key.
    #[command(long_about = "Create a new store and its encryption key.\n\n\
        The key is written to DIR/key with mode 0600 unless --key-file is given. \
        Without the key nothing can be restored: export it with `omesh key export` \
        and keep a copy off this server.")]
    Init(cmd::init::InitArgs),
    /// Back up files and directories (or a block device) into a new snapshot.
    #[command(long_about = "Back up files and directories into a new snapshot.\n\n\
        Only new data is stored: files unchanged since the parent snapshot (same size, mtime, \
        ctime and inode) are not even read, and every chunk already in the store is skipped.\n\n\
        Exit code 3 means the snapshot was written but some files could not be read; they are \
        listed on stderr (and in --json) and marked in the snapshot.\n\n\
        Examples:\n  omesh backup --store /srv/omesh /etc /var/lib/app --exclude '*.tmp'\n  \
        omesh backup --store /srv/omesh --image /dev/nvme1n1\n  \
        omesh backup --store /srv/omesh --stdin-filename shop.dump --stdin-from-command -- pg_dump -Fc shop\n  \
        omesh backup --config /etc/omesh/omesh.toml --dry-run")]
    Backup(cmd::backup::BackupArgs),
    /// List snapshots.
    Snapshots(cmd::snapshots::SnapshotsArgs),
    /// List the files in a snapshot.
    Ls(cmd::ls::LsArgs),
    /// What changed between two snapshots (added, removed, modified and why).
    #[command(long_about = "What changed between two snapshots: paths added (+), removed (-), modified (M, \
        with the reasons: content, mode, owner, mtime, xattrs, link_target, device) and of another type (T), \
        and how much file data was added and removed. Unchanged directories are skipped by their tree id, \
        so a diff reads only the directories on the way to a change.\n\n\
        Examples:\n  omesh diff --store /srv/omesh 3f2a latest\n  \
        omesh diff --config /etc/omesh/omesh.toml 3f2a 9c01 /etc --json")]
    Diff(cmd::diff::DiffArgs),
    /// Find files by name or path across snapshots.
    #[command(long_about = "Find which snapshots hold a path matching a glob pattern. A pattern without \
        `/` matches a file name anywhere (`*.conf`); with `/` it matches the whole path (`/etc/ssh/*`). \
        --oldest/--newest bound the entries' modification time.\n\n\
        Examples:\n  omesh find --store /srv/omesh 'pg_hba.conf'\n  \
        omesh find --config /etc/omesh/omesh.toml '/var/lib/app/*.db' --tag daily --newest 2026-11-30")]
    Find(cmd::find::FindArgs),
    /// Browse snapshots as a read-only file system (FUSE).
    #[command(long_about = "Mount a snapshot (or --all of them) read-only with FUSE: real modes, owners, \
        times, extended attributes, symlinks, hard links and sparse holes; every read fetches and verifies \
        only the chunks it covers (from this node's store or, with --config, from the nearest holders), \
        keeping up to --cache-mib of them. Runs in the foreground; Ctrl-C, SIGTERM or `fusermount3 -u DIR` \
        unmounts cleanly.\n\n\
        Examples:\n  omesh mount --store /srv/omesh latest /mnt/snap\n  \
        omesh mount --config /etc/omesh/omesh.toml --all /mnt/omesh")]
    Mount(cmd::mount::MountArgs),
    /// Write one file of a snapshot to stdout, or a directory as a tar stream.
    #[command(long_about = "Write one file of a snapshot to stdout (or -o FILE), or a directory (or /) as a \
        tar stream with owners, modes, times, extended attributes (PAX SCHILY.xattr) and hard links. Every \
        object is verified as it is read; a damaged one stops the dump (exit 4) and -o FILE is removed.\n\n\
        Examples:\n  omesh dump --store /srv/omesh latest /etc/hosts\n  \
        omesh dump --store /srv/omesh latest /etc | tar -x --xattrs -C /tmp/r")]
    Dump(cmd::dump::DumpArgs),
    /// Sizes: logical, unique after deduplication, stored after compression, and what each snapshot added.
    #[command(long_about = "Sizes of the chosen snapshots (all of them by default): the logical size (every \
        snapshot's files added up, what restoring them all would write), the unique data left after \
        deduplication (each chunk once), what that data takes stored (compressed and encrypted; known when \
        the store holding it is local), the ratios, and per snapshot the data no older one had.\n\n\
        Examples:\n  omesh stats --store /srv/omesh\n  omesh stats --config /etc/omesh/omesh.toml latest --json")]
    Stats(cmd::stats::StatsArgs),
    /// Add, remove or replace the tags of existing snapshots (their data is not rewritten).
    #[command(long_about = "Change the tags of snapshots named by id, prefix or latest, or chosen by the \
        filters. Only the snapshot record is written again (same tree, paths, host and times), so a \
        retagged snapshot gets a new id and its data is not read or rewritten. Retention sees the new tags \
        (group_by = \"paths,tags\"), on this node and, through the record's signed retention groups, on \
        peers that hold it without the key.\n\n\
        With --config the daemon sends each new record to the peers and asks those that acknowledged it \
        to forget the old one; a peer that did not get it keeps the old record until its retention \
        removes it.\n\n\
        Examples:\n  omesh tag --store /srv/omesh latest --add keep\n  \
        omesh tag --config /etc/omesh/omesh.toml --tag nightly --remove nightly --add monthly\n  \
        omesh tag --store /srv/omesh 3f2a --set db --set audited")]
    Tag(cmd::tag::TagArgs),
    /// Restore a snapshot into a directory (or an image onto a file or device).
    #[command(long_about = "Restore a snapshot into a target directory.\n\n\
        Paths are recreated below the target as they were backed up (restoring a backup of /etc \
        into /tmp/r gives /tmp/r/etc). Every object is verified before it is written; a file whose \
        data is damaged is not created (exit code 4) rather than written wrong. Files already in \
        the target are reused: identical ones are kept, changed ones are rebuilt from their \
        matching parts plus only what differs. Nothing is ever written outside the target.\n\n\
        An image snapshot (backup --image) is restored with --target pointing at the output file \
        or block device.")]
    Restore(cmd::restore::RestoreArgs),
    /// Check the store: structure, or with --read-data every byte.
    #[command(long_about = "Check the store.\n\n\
        Without --read-data: every snapshot decrypts, every directory tree decodes, and every \
        object a snapshot needs is indexed in an existing pack. With --read-data: additionally \
        every pack is read in full and every object decrypted and re-hashed. Damage is reported \
        per snapshot with the affected paths; the exit code is 4 when anything is wrong.")]
    Verify(cmd::verify::VerifyArgs),
    /// Export or import the store's key.
    #[command(subcommand)]
    Key(cmd::key::KeyCommand),
    /// Repair a store.
    #[command(subcommand)]
    Repair(cmd::repair::RepairCommand),
    /// Site certificate authority: create it, sign, issue and revoke node certificates.
    #[command(subcommand)]
    Ca(cmd::ca::CaCommand),
    /// This node's certificate: request one (the key stays here), install it once signed.
    #[command(subcommand)]
    Cert(cmd::cert::CertCommand),
    /// Run the node daemon.
    #[command(subcommand)]
    Node(cmd::node::NodeCommand),
    /// Peers, replication state and storage of a mesh node.
    Status(cmd::status::StatusArgs),
    /// The residency boundary: check a configuration, report where data went.
    #[command(subcommand)]
    Residency(cmd::residency::ResidencyCommand),
    /// Apply the retention policy: forget snapshots it no longer keeps (see --dry-run).
    #[command(long_about = "Apply the retention policy and forget the snapshots it no longer keeps.\n\n\
        Rules follow restic's forget: --keep-last N, --keep-hourly/daily/weekly/monthly/yearly N (the \
        newest snapshot of each of the last N periods that have one) and --keep-within DURATION; a \
        snapshot is kept when any rule keeps it. Nothing younger than the retention lock is ever \
        forgotten. On a mesh node (--config) the policy is [retention] in the config, applied by \
        this node to every store it keeps (its own and its peers' replicas), and the lock cannot be \
        shortened by any other node. Forgetting removes snapshot records only; `omesh gc` then \
        reclaims the space.\n\n\
        With SNAPSHOT arguments (mesh nodes), forget those snapshots of this node and ask the peers \
        holding them to forget them too; each peer refuses inside its own retention lock.\n\n\
        Examples:\n  omesh forget --config /etc/omesh/omesh.toml --dry-run\n  \
        omesh forget --store /srv/omesh --keep-daily 7 --keep-weekly 4 --lock 3d")]
    Forget(cmd::lifecycle::ForgetArgs),
    /// Reclaim space no snapshot references (runs beside backups).
    #[command(long_about = "Garbage collection: reclaim objects no snapshot references.\n\n\
        It runs beside backups and incoming replicas without stopping them: objects are marked from \
        every snapshot, the rest condemned, and condemned objects are swept only after a grace \
        period and once every backup that was running has committed (a writer that reuses a \
        condemned object rescues it). Packs that are mostly garbage are rewritten. A run that is \
        interrupted resumes where it stopped. If a snapshot references an object that is missing or \
        damaged, nothing is removed (exit code 4): run `omesh scrub` or `omesh verify` first.")]
    Gc(cmd::lifecycle::GcArgs),
    /// Re-read and re-hash every stored object; repair damage from replicas.
    #[command(long_about = "Scrub: re-read every object and snapshot record and check its hash, at a \
        limited rate. A damaged object is moved to quarantine/ in the store and, on a mesh node, \
        fetched again from a peer holding the same source. Exit code 4 when something damaged \
        could not be repaired.")]
    Scrub(cmd::lifecycle::ScrubArgs),
    /// Repair under-replicated snapshots now by copying from peers (the daemon does it periodically).
    Sync(cmd::lifecycle::SyncArgs),
    /// Run a self-contained demonstration: a 3-node mesh on loopback, a lost server, a restore onto a new one.
    Demo(cmd::demo::DemoArgs),
    /// This binary's version, git commit, build time, and the store, object and protocol formats it speaks.
    Version(cmd::version::VersionArgs),
    /// Write a shell completion script to stdout.
    #[command(long_about = "Write a shell completion script to stdout.\n\n\
        The Debian package installs them; by hand:\n  \
        omesh completions bash > /etc/bash_completion.d/omesh\n  \
        omesh completions zsh > /usr/local/share/zsh/site-functions/_omesh\n  \
        omesh completions fish > ~/.config/fish/completions/omesh.fish")]
    Completions(cmd::version::CompletionsArgs),
    /// Write the man pages (omesh.1 and one per subcommand) into a directory.
    #[command(long_about = "Write the man pages into a directory: omesh.1 and one page per subcommand \
        (omesh-backup.1, omesh-key-export.1, ...), generated from the same definition as --help. \
        The Debian package installs them; by hand:\n  \
        omesh man --dir /usr/local/share/man/man1 && mandb -q")]
    Man(cmd::version::ManArgs),
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
    // colour only for a person at a terminal: never in journald (stderr is
    // a socket there), a pipe or a file, nor with NO_COLOR set
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        let _ = b.json().try_init();
    } else {
        let _ = b.with_target(false).try_init();
    }
}

/// Run a parsed command.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Init(a) => cmd::init::run(a),
        Command::Backup(a) => cmd::backup::run(a),
        Command::Snapshots(a) => cmd::snapshots::run(a),
        Command::Ls(a) => cmd::ls::run(a),
        Command::Restore(a) => cmd::restore::run(a),
        Command::Diff(a) => cmd::diff::run(a),
        Command::Find(a) => cmd::find::run(a),
        Command::Dump(a) => cmd::dump::run(a),
        Command::Mount(a) => cmd::mount::run(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Tag(a) => cmd::tag::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Key(c) => cmd::key::run(c),
        Command::Repair(c) => cmd::repair::run(c),
        Command::Ca(c) => cmd::ca::run(c),
        Command::Cert(c) => cmd::cert::run(c),
        Command::Node(c) => cmd::node::run(c),
        Command::Status(a) => cmd::status::run(a),
        Command::Residency(c) => cmd::residency::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Forget(a) => cmd::lifecycle::forget(a),
        Command::Gc(a) => cmd::lifecycle::gc(a),
        Command::Scrub(a) => cmd::lifecycle::scrub(a),
        Command::Sync(a) => cmd::lifecycle::sync(a),
        Command::Version(a) => cmd::version::run(a),
        Command::Completions(a) => cmd::version::completions(a, &mut command()),
        Command::Man(a) => cmd::version::man(a, command()),
    }
}

/// The command line definition, with the long version filled in.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    // clap keeps 'static strings; this is made once per process
    let v: &'static str = Box::leak(cmd::version::long_version().into_boxed_str());
    Cli::command().long_version(v)
}

fn main() -> std::process::ExitCode {
    // glibc gives every thread its own malloc arena; with a dozen pipeline
    // threads passing megabyte buffers between them, freed memory piles up
    // per arena. Four arenas keep peak memory near the live set (measured:
    // 163 MB -> 77 MB on the benchmark's first backup, same speed).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    let cli = {
        use clap::FromArgMatches;
        Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
    };
    // the demo narrates on stdout; keep its stderr to real errors
    let verbose =
        if matches!(cli.command, Command::Demo(_)) && cli.verbose == 0 && std::env::var_os("RUST_LOG").is_none() {
            // SAFETY: single-threaded at this point, before any thread starts
            unsafe { std::env::set_var("RUST_LOG", "error") };
            0
        } else {
            cli.verbose
        };
    init_logging(verbose, cli.log_json);
    match run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("omesh: error: {}", e.message());
            e.code.into()
        }
    }
}
