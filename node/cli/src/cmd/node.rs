//! `omesh node run`

use crate::meshmode as mesh;
use crate::output::{CliError, ExitCode};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Run the node daemon: serve peers, store their replicas, accept CLI
    /// commands on the control socket. Stops cleanly on SIGTERM or SIGINT.
    #[command(long_about = "Run the node daemon.\n\n\
        Listens on `listen` (QUIC, mutual TLS against the site CA), stores replicas for its peers \
        in DATA_DIR/sources/, and serves restores. CLI commands given the same --config talk to \
        it through DATA_DIR/control.sock. deploy/omesh.service runs it under systemd.")]
    Run {
        /// Node configuration file (docs/config.md).
        #[arg(long, short = 'c', env = "OMESH_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
}

pub fn run(c: NodeCommand) -> Result<ExitCode, CliError> {
    match c {
        NodeCommand::Run { config } => {
            let cfg = mesh::load(&config)?;
            let rt = mesh::tokio()?;
            rt.block_on(async move {
                let d = omesh_daemon::services::start_daemon(cfg).await.map_err(mesh::node_err)?;
                use tokio::signal::unix::{SignalKind, signal};
                let sig = |k| signal(k).map_err(|e| CliError::failed(format!("installing a signal handler: {e}")));
                let (mut term, mut hup) = (sig(SignalKind::terminate())?, sig(SignalKind::hangup())?);
                println!("omesh node {} listening on {}", d.rt.cfg.name, d.rt.local_addr());
                // ready for systemd (Type=notify) only now: serving, control
                // socket up; a config error exits before, with code 2
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        _ = term.recv() => break,
                        _ = hup.recv() => {
                            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                            d.reload().await;
                            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                        }
                    }
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                tracing::info!("shutting down");
                d.shutdown().await;
                Ok(ExitCode::Ok)
            })
        }
    }
}
