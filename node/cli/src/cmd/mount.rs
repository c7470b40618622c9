//! `omesh mount`

use crate::args::{FilterArgs, StoreArgs};
use crate::fusefs::SnapshotFs;
use crate::meshmode as mesh;
use crate::output::{CliError, ExitCode, key_source};
use omesh_core::objects::ObjectSource;
use omesh_core::store::{Access, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// SNAPSHOT MOUNTPOINT, or with --all just MOUNTPOINT.
    #[arg(value_name = "SNAPSHOT MOUNTPOINT", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Mount every snapshot the filters choose, one directory each (TIME_SHORTID) and `latest`.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Mesh mode: whose snapshots (default: this node's).
    #[arg(long, value_name = "NODE", requires = "config")]
    pub source: Option<String>,
    /// Memory for chunks already read, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub cache_mib: usize,
    /// Let other users read the mount too (as the modes and owners recorded allow;
    /// needs `user_allow_other` in /etc/fuse.conf unless run as root).
    #[arg(long)]
    pub allow_other: bool,
}

pub fn run(a: MountArgs) -> Result<ExitCode, CliError> {
    let (spec, mountpoint) = match (a.all, a.args.as_slice()) {
        (true, [m]) => (None, PathBuf::from(m)),
        (false, [s, m]) => (Some(s.clone()), PathBuf::from(m)),
        (true, _) => return Err(CliError::usage("with --all give only the MOUNTPOINT")),
        (false, _) => return Err(CliError::usage("give SNAPSHOT and MOUNTPOINT (or --all MOUNTPOINT)")),
    };
    if !mountpoint.is_dir() {
        return Err(CliError::usage(format!(
            "{}: the mount point must be an existing directory",
            mountpoint.display()
        )));
    }
    // SIGINT and SIGTERM unmount: blocked here, before any thread starts,
    // and taken by one thread with sigwait
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGINT);
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.thread_block().map_err(|e| CliError::failed(format!("blocking signals: {e}")))?;
    let filter = a.filter.filter();
    let cache = a.cache_mib.max(1) << 20;
    let mount_these =
        |src: Arc<dyn ObjectSource + Send + Sync>, list: crate::browse::Snapshots| -> Result<ExitCode, CliError> {
            let fs = match &spec {
                Some(s) => {
                    let (_, rec) = crate::browse::pick(&list, s, &filter)?;
                    SnapshotFs::one(src, &rec, cache)
                }
                None => {
                    let chosen = filter.apply(list);
                    if chosen.is_empty() {
                        return Err(CliError::usage("no snapshot to mount (none, or none the filters chose)"));
                    }
                    SnapshotFs::all(src, &chosen, cache)
                }
            };
            serve(fs, &mountpoint, a.allow_other, set)
        };
    match &a.store.config {
        None => {
            let st = Store::open(a.store.dir(), Access::Read, key_source(&a.store.key_file))?;
            let (list, _) = st.snapshots()?;
            mount_these(Arc::new(st), list)
        }
        Some(path) => {
            let cfg = mesh::load(path)?;
            let source = a.source.clone().unwrap_or_else(|| cfg.name.clone());
            let rt = mesh::tokio()?;
            rt.block_on(mesh::in_process(cfg, false, |nrt| async move {
                let (list, src) = omesh_daemon::views::prepare_browse(&nrt, &source, &omesh_daemon::views::From::Auto)
                    .await
                    .map_err(mesh::node_err)?;
                tokio::task::block_in_place(|| mount_these(Arc::new(src), list))
            }))
        }
    }
}

fn serve(
    fs: SnapshotFs,
    at: &Path,
    allow_other: bool,
    signals: nix::sys::signal::SigSet,
) -> Result<ExitCode, CliError> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("omesh".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if allow_other {
        config.acl = fuser::SessionACL::All;
    }
    let mut session = fuser::Session::new(fs, at, &config).map_err(|e| {
        CliError::failed(format!(
            "mounting on {}: {e} (is fuse3 installed and /dev/fuse there? is the directory empty and not already a mount?)",
            at.display()
        ))
    })?;
    let mut unmount = session.unmount_callable();
    let shown = at.display().to_string();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            tracing::info!(signal = ?sig, "unmounting");
            if let Err(e) = unmount.unmount() {
                eprintln!("omesh: error: unmounting {shown}: {e}; run `fusermount3 -u {shown}`");
            }
        }
    });
    println!("mounted on {} (read-only); Ctrl-C, SIGTERM or `fusermount3 -u {}` unmounts", at.display(), at.display());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    session.run().map_err(|e| CliError::failed(format!("serving {}: {e}", at.display())))?;
    eprintln!("unmounted {}", at.display());
    Ok(ExitCode::Ok)
}
