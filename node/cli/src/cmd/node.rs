//! `omesh node run`, `omesh node replace`

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
    /// On a surviving node: replace a dead peer by its replacement in this node's configuration.
    #[command(
        long_about = "Replace peer OLD by NEW in this node's configuration (run it on every survivor).\n\n        Rewrites the [[peer]] named OLD (and a [[bandwidth.peer]] of that name) to NEW, with NEW's \
        --address and --domain, keeping the rest of the file and its comments; the file is checked \
        before it replaces the old one. OLD's snapshots stay where they are (a restore onto NEW \
        needs them). Then: restart the daemon (peers change at a restart), and `omesh sync` puts \
        the replicas OLD held onto NEW. On the CA machine, revoke OLD's certificate \
        (`omesh ca revoke --node OLD`) and copy crl.pem to every node. \
        deploy/restore-runbook.md has the whole flow. NEW may equal OLD (a new server under the \
        old name, at a new address)."
    )]
    Replace {
        /// The dead peer's name.
        old: String,
        /// Its replacement's name.
        new: String,
        /// The replacement's address (host:port); default: OLD's.
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// The replacement's failure domain; default: OLD's.
        #[arg(long)]
        domain: Option<String>,
        /// This node's configuration (rewritten in place).
        #[arg(long, short = 'c', env = "OMESH_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
}

/// Rewrite `text` (a node configuration): peer `old` becomes `new`.
fn replace_peer(
    text: &str,
    old: &str,
    new: &str,
    address: Option<&str>,
    domain: Option<&str>,
) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    if doc.get("name").and_then(|n| n.as_str()) == Some(new) {
        return Err(format!("{new} is this node's own name"));
    }
    let names = |doc: &toml_edit::DocumentMut, key: &str| -> Vec<String> {
        doc.get(key)
            .and_then(|p| p.as_array_of_tables())
            .map(|a| a.iter().filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(String::from)).collect())
            .unwrap_or_default()
    };
    let peers = names(&doc, "peer");
    if !peers.iter().any(|n| n == old) {
        return Err(format!("no [[peer]] is named {old:?} (peers here: {})", peers.join(", ")));
    }
    if new != old && peers.iter().any(|n| n == new) {
        return Err(format!("{new:?} is a [[peer]] already"));
    }
    let Some(list) = doc.get_mut("peer").and_then(|p| p.as_array_of_tables_mut()) else {
        return Err("no [[peer]] tables".into());
    };
    for t in list.iter_mut() {
        if t.get("name").and_then(|n| n.as_str()) == Some(old) {
            t["name"] = toml_edit::value(new);
            if let Some(a) = address {
                t["address"] = toml_edit::value(a);
            }
            if let Some(d) = domain {
                t["domain"] = toml_edit::value(d);
            }
        }
    }
    if let Some(list) =
        doc.get_mut("bandwidth").and_then(|b| b.get_mut("peer")).and_then(|p| p.as_array_of_tables_mut())
    {
        for t in list.iter_mut() {
            if t.get("name").and_then(|n| n.as_str()) == Some(old) {
                t["name"] = toml_edit::value(new);
            }
        }
    }
    Ok(doc.to_string())
}

fn replace(
    old: &str,
    new: &str,
    address: Option<&str>,
    domain: Option<&str>,
    config: &std::path::Path,
) -> Result<ExitCode, CliError> {
    let usage = |m: String| CliError::usage(format!("{}: {m}; nothing was changed", config.display()));
    if !omesh_proto::msg::valid_name(new) {
        return Err(usage(format!("{new:?} is not a node name (1-64 letters, digits, '.', '-', '_')")));
    }
    let text = std::fs::read_to_string(config).map_err(|e| usage(format!("cannot read it: {e}")))?;
    let out = replace_peer(&text, old, new, address, domain).map_err(usage)?;
    // the new file must load before it replaces the old one
    let dir = config.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| CliError::failed(format!("creating a file beside {}: {e}", config.display())))?;
    std::io::Write::write_all(&mut tmp, out.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| CliError::failed(format!("writing beside {}: {e}", config.display())))?;
    if let Ok(m) = std::fs::metadata(config) {
        let _ = std::fs::set_permissions(tmp.path(), m.permissions());
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::chown(tmp.path(), Some(m.uid()), Some(m.gid()));
    }
    omesh_daemon::config::NodeConfig::load(tmp.path()).map_err(|e| usage(e.to_string()))?;
    tmp.persist(config).map_err(|e| CliError::failed(format!("replacing {}: {e}", config.display())))?;
    eprintln!(
        "{}: peer {old} is now {new}{}. Next:\n  \
         1. restart this node's daemon (systemctl restart omesh): peers change at a restart;\n  \
         2. once {new} runs, `omesh sync --config {}` puts the replicas {old} held onto {new};\n  \
         3. on the CA machine, `omesh ca revoke --node {old}` (unless {new} is {old}) and copy crl.pem to every node.",
        config.display(),
        address.map(|a| format!(" at {a}")).unwrap_or_default(),
        config.display()
    );
    Ok(ExitCode::Ok)
}

pub fn run(c: NodeCommand) -> Result<ExitCode, CliError> {
    match c {
        NodeCommand::Replace { old, new, address, domain, config } => {
            replace(&old, &new, address.as_deref(), domain.as_deref(), &config)
        }
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

#[cfg(test)]
mod tests {
    #[test]
    fn replacing_a_peer_keeps_the_rest_of_the_file() {
        let text = "name = \"a\"\n# the dead one\n[[peer]]\nname = \"c\"\naddress = \"10.0.0.3:7443\"\ndomain = \"r2\"\n\n[[peer]]\nname = \"b\"\naddress = \"10.0.0.2:7443\"\n\n[[bandwidth.peer]]\nname = \"c\"\nlimit = \"10 Mbit/s\"\n";
        let out = super::replace_peer(text, "c", "d", Some("10.0.0.4:7443"), None).unwrap();
        assert!(out.contains("# the dead one"), "{out}");
        assert!(out.contains("name = \"d\"\naddress = \"10.0.0.4:7443\"\ndomain = \"r2\""), "{out}");
        assert!(!out.contains("\"c\""), "{out}");
        assert!(out.contains("name = \"b\""), "{out}");
        assert!(super::replace_peer(text, "x", "d", None, None).unwrap_err().contains("no [[peer]] is named \"x\""));
        assert!(super::replace_peer(text, "c", "b", None, None).unwrap_err().contains("already"));
        assert!(super::replace_peer(text, "c", "a", None, None).unwrap_err().contains("own name"));
    }
}
