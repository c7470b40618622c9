//! `omesh residency check | report`

use crate::meshmode as mesh;
use crate::output::{CliError, ExitCode, bytes, print_json, print_json_list};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum ResidencyCommand {
    /// Show where every peer and S3 endpoint resolves, which source address
    /// and interface the kernel would use, and whether the boundary allows it.
    #[command(long_about = "Check the residency boundary of a node's configuration.\n\n\
        For every peer and S3 endpoint: each resolved address, the source address and interface \
        the kernel would route through, and the verdict against [residency] allowed_networks, \
        forbidden_networks and bind. Exit code 2 on any violation. The daemon runs the same \
        check at start and refuses to start on a violation.")]
    Check {
        /// Node configuration.
        #[arg(long, short = 'c', env = "OMESH_CONFIG", value_name = "FILE")]
        config: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every destination that received data, per snapshot: the
    /// auditor's document.
    #[command(long_about = "Report where every snapshot was replicated.\n\n\
        From the node's own records: per snapshot, every destination that acknowledged a replica \
        (peer name, certificate SHA-256 and address; or S3 endpoint and bucket), when, and how \
        many bytes were sent.")]
    Report {
        /// Node configuration.
        #[arg(long, short = 'c', env = "OMESH_CONFIG", value_name = "FILE")]
        config: PathBuf,
        /// Only replicas placed at or after this date (YYYY-MM-DD or RFC 3339).
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_since(s: &str) -> Result<i64, CliError> {
    let range = || CliError::usage(format!("--since {s:?}: date out of range (1678-2261)"));
    let t = match omesh_core::time::parse_rfc3339(s) {
        Some(t) => t,
        None => {
            let d: jiff::civil::Date =
                s.parse().map_err(|_| CliError::usage(format!("--since {s:?}: use YYYY-MM-DD or an RFC 3339 time")))?;
            d.to_zoned(jiff::tz::TimeZone::UTC).map_err(|_| range())?.timestamp()
        }
    };
    i64::try_from(t.as_nanosecond()).map_err(|_| range())
}

pub fn run(c: ResidencyCommand) -> Result<ExitCode, CliError> {
    match c {
        ResidencyCommand::Check { config, json } => {
            let cfg = mesh::load(&config)?;
            let policy = omesh_net::residency::Policy::new(&cfg.residency);
            let rt = mesh::tokio()?;
            let lines = rt.block_on(omesh_net::residency::check_destinations(
                &cfg.destinations(),
                &cfg.name,
                &cfg.listen,
                cfg.metrics.listen.as_deref(),
                &policy,
            ));
            let ok = lines.iter().all(|l| l.allowed);
            if json {
                print_json(
                    "residency check",
                    &serde_json::json!({"ok": ok, "policy_active": policy.is_active(), "destinations": lines}),
                )?;
            } else {
                if !policy.is_active() {
                    println!("no [residency] section: nothing restricts where omesh connects");
                }
                println!("{:<7} {:<14} {:<28} {:<16} {:<10} verdict", "kind", "name", "address", "source", "interface");
                for l in &lines {
                    println!(
                        "{:<7} {:<14} {:<28} {:<16} {:<10} {} {}",
                        l.kind,
                        l.name,
                        if l.address.is_empty() { &l.host } else { &l.address },
                        l.source_address.as_deref().unwrap_or("-"),
                        l.interface.as_deref().unwrap_or("-"),
                        if l.allowed { "ALLOWED" } else { "REFUSED" },
                        l.reason
                    );
                }
            }
            Ok(if ok { ExitCode::Ok } else { ExitCode::Usage })
        }
        ResidencyCommand::Report { config, since, json } => {
            use omesh_daemon::services::control::{ControlRequest, ControlResponse};
            let cfg = mesh::load(&config)?;
            let since_ns = since.as_deref().map(parse_since).transpose()?.unwrap_or(i64::MIN);
            let rt = mesh::tokio()?;
            let rows = rt.block_on(async {
                let req = ControlRequest::ResidencyReport { since_ns };
                match mesh::ask_daemon(&cfg.control_socket(), &req, |_| {}).await {
                    Some(Ok(ControlResponse::ResidencyReport(rows))) => Ok(rows),
                    Some(Ok(other)) => Err(mesh::unexpected(&other)),
                    Some(Err(e)) => Err(e),
                    None => {
                        let (path, name) = (cfg.data_dir.join("state.redb"), cfg.name.clone());
                        tokio::task::spawn_blocking(move || {
                            let state =
                                omesh_daemon::state::State::open(&path).map_err(|e| CliError::failed(e.to_string()))?;
                            omesh_daemon::views::residency_report(&state, &name, since_ns).map_err(mesh::node_err)
                        })
                        .await
                        .map_err(|e| CliError::failed(e.to_string()))?
                    }
                }
            })?;
            if json {
                print_json_list("residency report", "snapshots", &rows)?;
            } else {
                println!("replicas of {}'s snapshots, from its own records:", cfg.name);
                for r in &rows {
                    println!("snapshot {}", &r.snapshot[..8.min(r.snapshot.len())]);
                    for d in &r.destinations {
                        let kind = serde_json::to_value(d.kind)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default();
                        println!(
                            "  {} {:<5} {:<14} {:<40}   sent {}  cert {}",
                            d.time,
                            kind,
                            d.node,
                            d.address,
                            bytes(d.bytes_sent),
                            if d.cert_sha256.is_empty() { "-" } else { &d.cert_sha256[..16.min(d.cert_sha256.len())] },
                        );
                    }
                }
            }
            Ok(ExitCode::Ok)
        }
    }
}
