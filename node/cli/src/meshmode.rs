//! Helpers for commands in mesh mode (`--config`): load the config, build
//! a tokio runtime, map errors to exit codes, and decide whether to go
//! through the daemon.

use crate::output::{CliError, ExitCode};
use omesh_daemon::config::NodeConfig;
use omesh_daemon::error::{ErrorClass, NodeError};
use omesh_daemon::runtime::NodeRuntime;
use omesh_daemon::services::control::{self, ControlRequest, ControlResponse, Refused};
use std::path::Path;
use std::sync::Arc;

/// Load and validate the node config (exit code 2 on error).
pub fn load(path: &Path) -> Result<NodeConfig, CliError> {
    NodeConfig::load(path).map_err(|e| CliError { code: ExitCode::Usage, err: e.into() })
}

/// A multi-threaded tokio runtime for one command.
pub fn tokio() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("starting the async runtime: {e}")))
}

/// The exit code of an error class.
pub fn exit_code(class: ErrorClass) -> ExitCode {
    match class {
        ErrorClass::Usage => ExitCode::Usage,
        ErrorClass::Warnings => ExitCode::Warnings,
        ErrorClass::Damage => ExitCode::Damage,
        ErrorClass::Busy => ExitCode::Busy,
        ErrorClass::Failed => ExitCode::Failed,
    }
}

/// Map a node error to a CLI error.
pub fn node_err(e: NodeError) -> CliError {
    CliError { code: exit_code(e.class()), err: e.into() }
}

/// Map a daemon's refusal.
pub fn reply_err(r: Refused) -> CliError {
    CliError { code: exit_code(r.class), err: anyhow::anyhow!(r.message) }
}

/// A reply of the wrong kind (a daemon of another version).
pub fn unexpected(r: &ControlResponse) -> CliError {
    CliError::failed(format!("the daemon answered with an unexpected reply ({r:?}); is it another omesh version?"))
}

/// Run `f` with an in-process runtime (no daemon running), then close its
/// connections whatever `f` returned, so peers free their slots at once.
/// `with_state` opens the node state database; commands that only read
/// pass false so they can run beside a daemon. Every in-process command
/// goes through here.
pub async fn in_process<T, F, Fut>(cfg: NodeConfig, with_state: bool, f: F) -> Result<T, CliError>
where
    F: FnOnce(Arc<NodeRuntime>) -> Fut,
    Fut: std::future::Future<Output = Result<T, CliError>>,
{
    if with_state {
        writes_as_owner(&cfg)?;
    }
    let nrt = NodeRuntime::build(cfg, false, with_state).await.map_err(node_err)?;
    let r = f(nrt.clone()).await;
    nrt.close().await;
    r
}

/// An in-process run that writes the data directory must write as its
/// owner: root writing into the daemon user's directory would leave files
/// (packs, locks, the state database) the daemon then cannot manage.
/// Refused, naming both ways that work.
fn writes_as_owner(cfg: &NodeConfig) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(&cfg.data_dir) else { return Ok(()) };
    let me = rustix::process::geteuid().as_raw();
    if me != 0 || m.uid() == 0 {
        return Ok(());
    }
    let user = nix::unistd::User::from_uid(m.uid().into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| m.uid().to_string());
    Err(CliError::usage(format!(
        "{} belongs to {user} (the user the daemon runs as) and no daemon answers on {}; run here as root, this \
         command would leave files there that the daemon cannot manage, so nothing was done. Start the daemon \
         (`systemctl start omesh`) and run the command again (it then runs in the daemon), or run it as {user}: \
         `runuser -u {user} -- omesh ...`",
        cfg.data_dir.display(),
        cfg.control_socket().display()
    )))
}

/// Ask the daemon on `sock`, if one answers there (`None`: none does).
pub async fn ask_daemon(
    sock: &Path,
    req: &ControlRequest,
    progress: impl FnMut(&control::BackupProgress),
) -> Option<Result<ControlResponse, CliError>> {
    match control::daemon_at(sock).await {
        control::DaemonAt::None => return None,
        control::DaemonAt::Answering => {}
        // it holds the stores: running in this process beside it would
        // only find them locked, or worse
        control::DaemonAt::Silent => {
            return Some(Err(CliError::busy(format!(
                "the daemon on {} accepted the connection but did not answer within {} s: it is stopped (SIGSTOP) or wedged; it still holds the stores, so this command does not run without it. Check `systemctl status omesh` and `journalctl -u omesh`; `systemctl restart omesh` if it does not recover",
                sock.display(),
                control::PING_TIMEOUT.as_secs()
            ))));
        }
    }
    Some(match control::call(sock, req, progress).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(r)) => Err(reply_err(r)),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(CliError::busy(e.to_string())),
        Err(e) => Err(CliError::failed(format!("daemon at {}: {e}", sock.display()))),
    })
}

/// Run `req` through the daemon when one answers on the node's control
/// socket (it holds the stores), otherwise run `local` in this process.
pub fn via_daemon_or_local<F, Fut>(cfg: NodeConfig, req: ControlRequest, local: F) -> Result<ControlResponse, CliError>
where
    F: FnOnce(Arc<NodeRuntime>) -> Fut,
    Fut: std::future::Future<Output = Result<ControlResponse, CliError>>,
{
    let rt = tokio()?;
    rt.block_on(async {
        match ask_daemon(&cfg.control_socket(), &req, |_| {}).await {
            Some(r) => r,
            None => in_process(cfg, true, local).await,
        }
    })
}
