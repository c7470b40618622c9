//! `omesh backup`

use crate::args::StoreArgs;
use crate::meshmode as mesh;
use crate::output::{CliError, ExitCode, bytes, key_source, print_json, with_progress};
use omesh_core::backup::stream::{CommandStream, PlainStream, StreamInput, StreamSource};
use omesh_core::backup::{self, BackupError, BackupOptions, BackupSummary, ParentChoice, Progress};
use omesh_core::store::{Access, Store};
use omesh_daemon::runtime::MeshBackupReport;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Files or directories to back up (with --stdin-from-command: the command and its arguments, after `--`).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Back up standard input as one file (named by --stdin-filename), e.g. `pg_dump db | omesh backup --stdin`.
    #[arg(long, conflicts_with_all = ["image", "stdin_from_command"])]
    pub stdin: bool,
    /// Run the command given after `--` and back up its standard output as one file; if the command
    /// fails, no snapshot is saved (e.g. `--stdin-from-command -- pg_dump -Fc shop`).
    #[arg(long, conflicts_with = "image")]
    pub stdin_from_command: bool,
    /// The file name of the stream in the snapshot (with --stdin or --stdin-from-command).
    #[arg(long, value_name = "NAME", default_value = "stdin")]
    pub stdin_filename: String,
    /// Read and chunk everything and report what a backup would add; write nothing, run no hooks.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Skip entries matching GLOB: a name pattern ('*.log') or an absolute path pattern ('/var/cache/**').
    #[arg(long, short = 'e', value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Read more --exclude patterns from FILE (one per line; blank lines and # comments skipped).
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Skip every directory that holds an entry named NAME (e.g. .nobackup), with all below it.
    #[arg(long, value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// Skip cache directories: those holding a CACHEDIR.TAG with the standard signature (bford.info/cachedir).
    #[arg(long)]
    pub exclude_caches: bool,
    /// Run this shell command first; if it fails or times out, nothing is backed up
    /// (e.g. `psql -c "select pg_backup_start('omesh')"`, `fsfreeze --freeze /data`).
    #[arg(long, value_name = "CMD")]
    pub pre: Option<String>,
    /// Run this shell command after the backup, whatever happened (OMESH_RESULT says what).
    #[arg(long, value_name = "CMD")]
    pub post: Option<String>,
    /// Time limit of each hook (e.g. 90s, 10m); a hook still running then is killed.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub hook_timeout: String,
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

impl BackupArgs {
    /// The paths to back up: none with --stdin-from-command, whose
    /// positional words are the command.
    fn backup_paths(&self) -> &[PathBuf] {
        if self.stdin_from_command { &[] } else { &self.paths }
    }

    /// The stream as the backup's input, named by --stdin-filename.
    fn stream_input(&self, stream: Option<Box<dyn StreamSource>>) -> Result<Option<StreamInput>, CliError> {
        stream.map(|s| StreamInput::new(&self.stdin_filename, s)).transpose().map_err(CliError::usage)
    }
}

pub fn run(mut a: BackupArgs) -> Result<ExitCode, CliError> {
    for f in &a.exclude_file {
        a.exclude.extend(omesh_core::backup::exclude::read_exclude_file(f).map_err(CliError::usage)?);
    }
    let hooks = omesh_core::backup::hook::Hooks {
        pre: a.pre.clone(),
        post: a.post.clone(),
        timeout: omesh_core::policy::retention::parse_duration(&a.hook_timeout)
            .ok()
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                CliError::usage(format!("--hook-timeout {:?}: give a duration such as 90s or 10m", a.hook_timeout))
            })?,
    };
    let stream = stream_source(&a)?;
    if let Some(cfg) = a.store.config.clone() {
        if a.dry_run {
            return run_mesh_dry(a, &cfg, stream);
        }
        return run_mesh(a, &cfg, hooks, stream);
    }
    let access = if a.dry_run { Access::Read } else { Access::Write };
    let mut store = Store::open(a.store.dir(), access, key_source(&a.store.key_file))?;
    let parent = parent_choice(&store, a.parent.as_deref())?;
    let opts = BackupOptions {
        stdin: a.stream_input(stream)?,
        dry_run: a.dry_run,
        paths: a.backup_paths().to_vec(),
        image: a.image.clone(),
        excludes: a.exclude.clone(),
        exclude_if_present: a.exclude_if_present.clone(),
        exclude_caches: a.exclude_caches,
        hooks,
        one_file_system: a.one_file_system,
        parent,
        tags: a.tag.clone(),
        hostname: a.host.clone(),
        threads: a.threads,
        read_concurrency: a.read_concurrency,
    };
    local(&a, &mut store, &opts)
}

/// Run a backup into a store open here (local mode, and a dry run in mesh
/// mode) and print what it did.
fn local(a: &BackupArgs, store: &mut Store, opts: &BackupOptions) -> Result<ExitCode, CliError> {
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let started = std::time::Instant::now();
    let res = with_progress(
        move || {
            format!(
                "{}, {} files, {} added  {}",
                crate::output::progress_line(
                    p.bytes.load(Ordering::Relaxed),
                    p.bytes_expected.load(Ordering::Relaxed),
                    true,
                    started.elapsed()
                ),
                p.files.load(Ordering::Relaxed),
                bytes(p.bytes_added.load(Ordering::Relaxed)),
                crate::output::tail(&p.current(), 40)
            )
        },
        || backup::run(store, opts, progress.clone()),
    );
    let s = match res {
        Ok(s) => s,
        Err(BackupError::Store(e)) => return Err(e.into()),
        Err(e @ (BackupError::Options(_) | BackupError::Path { .. })) => {
            return Err(CliError { code: ExitCode::Usage, err: e.into() });
        }
        Err(e) => return Err(CliError { code: ExitCode::Failed, err: e.into() }),
    };
    for w in &s.warnings {
        eprintln!("omesh: warning: {}: {}", w.path, w.message);
    }
    // the index grew by this run's objects: keep its file compact
    if !s.dry_run
        && let Err(e) = store.compact_index()
    {
        tracing::warn!(error = %e, "index compaction skipped");
    }
    if a.json {
        print_json("backup", &s)?;
    } else {
        print_summary(&s);
    }
    Ok(if s.warnings.is_empty() { ExitCode::Ok } else { ExitCode::Warnings })
}

/// The stream to back up (`--stdin`, `--stdin-from-command`), if any.
fn stream_source(a: &BackupArgs) -> Result<Option<Box<dyn StreamSource>>, CliError> {
    use std::io::IsTerminal;
    if !a.stdin && !a.stdin_from_command {
        if a.stdin_filename != "stdin" {
            return Err(CliError::usage("--stdin-filename names the stream of --stdin or --stdin-from-command"));
        }
        return Ok(None);
    }
    if a.stdin {
        if !a.paths.is_empty() {
            return Err(CliError::usage(
                "--stdin backs up standard input only; give no paths (or use --stdin-from-command -- CMD ARGS)",
            ));
        }
        if std::io::stdin().is_terminal() {
            return Err(CliError::usage(
                "--stdin: standard input is a terminal; pipe the data in (e.g. `pg_dump shop | omesh backup --stdin`)",
            ));
        }
        return Ok(Some(Box::new(PlainStream(std::io::stdin()))));
    }
    let argv: Vec<std::ffi::OsString> = a.paths.iter().map(|p| p.clone().into_os_string()).collect();
    if argv.is_empty() {
        return Err(CliError::usage("--stdin-from-command needs the command after `--` (e.g. -- pg_dump -Fc shop)"));
    }
    Ok(Some(Box::new(CommandStream::new(&argv).map_err(CliError::usage)?)))
}

fn print_summary(s: &BackupSummary) {
    let (head, would, unchanged) = if s.dry_run {
        ("dry run: nothing was written and no snapshot was saved".to_string(), "a backup would add", "would not be")
    } else {
        (format!("snapshot {} saved ({})", s.snapshot.short(), s.snapshot), "added", "were not")
    };
    println!("{head}");
    println!(
        "  {} files, {} dirs, {} total; read {}, {would} {} in {} objects ({:.1}s)",
        s.files,
        s.dirs,
        bytes(s.bytes),
        bytes(s.bytes_read),
        bytes(s.bytes_added),
        s.objects_added,
        s.seconds
    );
    if s.files_unchanged > 0 {
        println!("  {} files unchanged since the parent snapshot {unchanged} read", s.files_unchanged);
    }
    if !s.warnings.is_empty() {
        println!("  {} warnings: some content could not be read (see above)", s.warnings.len());
    }
}

/// The `--parent` choice, resolved in `store`.
fn parent_choice(store: &Store, spec: Option<&str>) -> Result<ParentChoice, CliError> {
    Ok(match spec {
        None => ParentChoice::Auto,
        Some("none") => ParentChoice::None,
        Some(spec) => ParentChoice::Id(store.resolve_snapshot(spec)?),
    })
}

/// A dry run in mesh mode: this node's store, opened here read-only (the
/// daemon keeps it), with the options the daemon would use.
fn run_mesh_dry(
    a: BackupArgs,
    path: &std::path::Path,
    stream: Option<Box<dyn StreamSource>>,
) -> Result<ExitCode, CliError> {
    let cfg = mesh::load(path)?;
    let mut store = Store::open(
        &cfg.source_dir(&cfg.name),
        Access::Read,
        omesh_core::store::KeySource::File(cfg.key_path(&cfg.name)),
    )?;
    let parent = parent_choice(&store, a.parent.as_deref())?;
    let mut opts = cfg.backup_options(
        a.backup_paths().to_vec(),
        (a.exclude.clone(), a.exclude_if_present.clone(), a.exclude_caches),
        a.one_file_system,
        a.image.clone(),
        a.tag.clone(),
        parent,
        a.stream_input(stream)?,
    );
    opts.dry_run = true;
    local(&a, &mut store, &opts)
}

/// A FIFO beside the control socket through which the CLI sends a stream
/// to the daemon; removed when dropped.
struct StreamFifo(PathBuf);

impl StreamFifo {
    fn make(cfg: &omesh_daemon::config::NodeConfig) -> Result<Self, CliError> {
        let sock = cfg.control_socket();
        let dir = sock.parent().unwrap_or(std::path::Path::new("/"));
        // mknod refuses an existing name, so the name only has to be unique
        let p = dir.join(format!(".stdin-{}-{}.fifo", std::process::id(), omesh_core::time::now_ns()));
        rustix::fs::mknodat(rustix::fs::CWD, &p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0)
            .map_err(|e| {
                CliError::failed(format!(
                    "cannot make the FIFO {} to send the stream to the daemon: {e}; run as the user that can write \
                     beside the control socket",
                    p.display()
                ))
            })?;
        let fifo = StreamFifo(p);
        // as root beside a daemon that runs as its own user: the FIFO gets
        // the directory's owner, or the daemon could not open it
        omesh_core::fsutil::own_like_parent(&fifo.0).map_err(|e| {
            CliError::failed(format!("giving the FIFO {} its directory's owner: {e}", fifo.0.display()))
        })?;
        Ok(fifo)
    }
}

impl Drop for StreamFifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run_mesh(
    a: BackupArgs,
    path: &std::path::Path,
    hooks: omesh_core::backup::hook::Hooks,
    stream: Option<Box<dyn StreamSource>>,
) -> Result<ExitCode, CliError> {
    use omesh_daemon::services::control::{ControlRequest, ControlResponse, SeenPath, StreamRequest};
    let cfg = mesh::load(path)?;
    if a.host.is_some() || a.threads.is_some() || a.read_concurrency.is_some() {
        return Err(CliError::usage("--host, --threads and --read-concurrency apply to --store backups only"));
    }
    // the daemon has its own working directory (and maybe its own /tmp):
    // it gets absolute paths and the file each names here
    let seen = |p: &PathBuf| SeenPath::here(p).map_err(|e| CliError { code: ExitCode::Usage, err: e.into() });
    let paths = a.backup_paths().iter().map(seen).collect::<Result<Vec<_>, _>>()?;
    let image = a.image.as_ref().map(seen).transpose()?;
    // a stream goes to the daemon through a FIFO, framed with its verdict
    // (the command's exit status): a failed or cut-off stream saves nothing
    let fifo = stream.as_ref().map(|_| StreamFifo::make(&cfg)).transpose()?;
    let stdin = match &fifo {
        Some(f) => Some(StreamRequest { fifo: seen(&f.0)?, name: a.stdin_filename.clone() }),
        None => None,
    };
    if let (Some(f), Some(mut src)) = (&fifo, stream) {
        let p = f.0.clone();
        std::thread::spawn(move || {
            // blocks until the daemon opens its end; the process ends
            // (and with it this thread) if the daemon refuses first
            let sent = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|mut w| backup::stream::write_framed(&mut *src, &mut w));
            if let Err(e) = sent {
                tracing::warn!(error = %e, "sending the stream to the daemon stopped");
            }
        });
    }
    let rt = mesh::tokio()?;
    let req = ControlRequest::Backup {
        paths,
        exclude: a.exclude.clone(),
        exclude_if_present: a.exclude_if_present.clone(),
        exclude_caches: a.exclude_caches,
        one_file_system: a.one_file_system,
        image,
        tags: a.tag.clone(),
        parent: a.parent.clone(),
        stdin,
    };
    // command-line hooks run here, as the caller, around what the daemon
    // does (the config's [hooks] run in the daemon)
    use omesh_core::backup::hook;
    let env = hook::HookEnv {
        source: cfg.name.clone(),
        paths: a.paths.iter().chain(a.image.iter()).map(|p| p.display().to_string()).collect(),
        ..Default::default()
    };
    if let Some(pre) = &hooks.pre {
        hook::run("pre", pre, hooks.timeout, &env)
            .map_err(|e| CliError::failed(format!("{e}; nothing was backed up")))?;
    }
    let res: Result<MeshBackupReport, CliError> = rt.block_on(async {
        let pb = progress_bar();
        let started = std::time::Instant::now();
        let asked = mesh::ask_daemon(&cfg.control_socket(), &req, |p| {
            if let Some(pb) = &pb {
                pb.set_message(if p.replicating {
                    let to: Vec<String> = p.sent.iter().map(|(n, b)| format!("{n} {}", bytes(*b))).collect();
                    format!(
                        "snapshot saved ({} files); sending it to the peers{}",
                        p.files,
                        if to.is_empty() { "...".to_string() } else { format!(": {}", to.join(", ")) }
                    )
                } else {
                    format!(
                        "{}, {} files, {} added  {}",
                        crate::output::progress_line(p.bytes, p.bytes_expected, true, started.elapsed()),
                        p.files,
                        bytes(p.bytes_added),
                        crate::output::tail(&p.current, 40)
                    )
                });
                pb.tick();
            }
        })
        .await;
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
        match asked {
            Some(Ok(ControlResponse::Backup(rep))) => Ok(*rep),
            Some(Ok(other)) => Err(mesh::unexpected(&other)),
            Some(Err(e)) => Err(e),
            None => {
                mesh::in_process(cfg.clone(), true, |nrt| async move {
                    let opts = req
                        .backup_options(&nrt)
                        .await
                        // a bad --parent is a usage error, as in local mode
                        .map_err(|e| match e {
                            omesh_daemon::error::NodeError::Store(e) => CliError::from(e),
                            e => mesh::node_err(e),
                        })?;
                    nrt.backup_and_replicate(opts, Arc::new(Progress::default())).await.map_err(mesh::node_err)
                })
                .await
            }
        }
    });
    let mut rep = match (&hooks.post, res) {
        (None, r) => r?,
        (Some(post), r) => {
            let env = env.after(
                r.as_ref().map(|rep| (&rep.backup.snapshot, !rep.backup.warnings.is_empty())).map_err(|e| e.message()),
            );
            let ran = hook::run("post", post, hooks.timeout, &env);
            let mut rep = r?;
            if let Err(e) = ran {
                rep.backup.warnings.push(omesh_core::backup::Warning { path: "(post hook)".into(), message: e });
            }
            rep
        }
    };
    let rep = &mut rep;
    for w in &rep.backup.warnings {
        eprintln!("omesh: warning: {}: {}", w.path, w.message);
    }
    for w in &rep.replication_warnings {
        eprintln!("omesh: warning: {w}");
    }
    if a.json {
        print_json("backup", &rep)?;
    } else {
        print_summary(&rep.backup);
        for r in &rep.replicas {
            if r.ok {
                println!(
                    "  replica on {} ({}, domain {:?}): sent {} in {} objects, {:.1}s",
                    r.peer,
                    r.address,
                    r.domain,
                    bytes(r.bytes_sent),
                    r.objects_sent,
                    r.seconds
                );
            } else {
                println!("  NOT on {}: {}", r.peer, r.error.as_deref().unwrap_or("failed"));
            }
        }
        println!(
            "  {}",
            if rep.protected {
                format!("protected: on {} peers in {} failure domains", rep.factor, rep.distinct_domains)
            } else {
                format!(
                    "NOT PROTECTED: fewer than {} peers hold this snapshot; it stays local until they do",
                    rep.factor
                )
            }
        );
    }
    Ok(if !rep.protected {
        ExitCode::Unprotected
    } else if !rep.backup.warnings.is_empty() {
        ExitCode::Warnings
    } else {
        ExitCode::Ok
    })
}

fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !crate::output::interactive() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("template"));
    Some(pb)
}
