//! Helpers for commands in mesh mode (`--config`): load the config, build
//! a tokio runtime, and decide whether to go through the daemon.

use crate::output::{CliError, ExitCode};
use omesh_daemon::config::NodeConfig;
use omesh_daemon::error::{self as node_error, NodeError};
use omesh_daemon::runtime::NodeRuntime;
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

/// Map a node error to a CLI error.
pub fn node_err(e: NodeError) -> CliError {
    let code = match node_error::exit_code(&e) {
        2 => ExitCode::Usage,
        4 => ExitCode::Damage,
        5 => ExitCode::Busy,
        _ => ExitCode::Failed,
    };
    CliError { code, err: e.into() }
}

/// Map a daemon error reply.
pub fn reply_err(code: u8, message: String) -> CliError {
    let code = match code {
        2 => ExitCode::Usage,
        3 => ExitCode::Warnings,
        4 => ExitCode::Damage,
        5 => ExitCode::Busy,
        _ => ExitCode::Failed,
    };
    CliError { code, err: anyhow::anyhow!(message) }
}

/// An in-process runtime (no daemon running). `with_state` opens the node
/// state database; commands that only read pass false so they can run
/// beside a daemon.
pub async fn runtime(cfg: NodeConfig, with_state: bool) -> Result<Arc<NodeRuntime>, CliError> {
    NodeRuntime::build(cfg, false, with_state).await.map_err(node_err)
}

/// Run `req` through the daemon when one answers on the node's control
/// socket (it holds the stores), otherwise run `local` in this process.
pub fn via_daemon_or_local<F, Fut>(
    cfg: NodeConfig,
    req: omesh_daemon::services::control::ControlRequest,
    local: F,
) -> Result<serde_json::Value, CliError>
where
    F: FnOnce(Arc<NodeRuntime>) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, CliError>>,
{
    use omesh_daemon::services::control;
    let rt = tokio()?;
    rt.block_on(async {
        let sock = cfg.control_socket();
        if control::daemon_running(&sock).await {
            match control::call(&sock, &req, |_| {}).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err((c, m))) => Err(reply_err(c, m)),
                Err(e) => Err(CliError::failed(format!("daemon at {}: {e}", sock.display()))),
            }
        } else {
            let nrt = runtime(cfg, true).await?;
            local(nrt).await
        }
    })
}
