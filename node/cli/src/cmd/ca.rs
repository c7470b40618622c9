//! `omesh ca init | issue | revoke | list`

use crate::output::{CliError, ExitCode, print_json};
use omesh_net::ca::{self, CaError};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum CaCommand {
    /// Create the site CA (ca.pem, ca.key with mode 0600, ca.toml, crl.pem).
    #[command(long_about = "Create the site certificate authority.\n\n\
        Every node certificate is signed by it and every connection is verified against it. \
        Keep DIR (and ca.key above all) on an administrator's machine, not on the nodes.\n\n\
        Example:\n  omesh ca init --dir /root/omesh-ca --site store-0417")]
    Init {
        /// CA directory (created).
        #[arg(long, value_name = "CA")]
        dir: PathBuf,
        /// Site name (in the CA certificate).
        #[arg(long)]
        site: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a node certificate: writes OUT/node.pem, OUT/node.key (0600) and OUT/ca.pem.
    #[command(long_about = "Issue a certificate for a node.\n\n\
        The node name goes into the certificate and must equal `name` in that node's config: \
        peers identify each other by it. Copy OUT/ to the node (e.g. /etc/omesh/).\n\n\
        Example:\n  omesh ca issue --dir /root/omesh-ca --node srv-a --out /tmp/srv-a")]
    Issue {
        /// CA directory.
        #[arg(long, value_name = "CA")]
        dir: PathBuf,
        /// Node name.
        #[arg(long)]
        node: String,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Revoke every certificate of a node and re-sign CA/crl.pem.
    #[command(long_about = "Revoke a node's certificates.\n\n\
        Re-signs CA/crl.pem. Copy it to the path set as [tls] crl on every node: running \
        daemons reload it within seconds and close the revoked node's open connections, no restart needed.")]
    Revoke {
        /// CA directory.
        #[arg(long, value_name = "CA")]
        dir: PathBuf,
        /// Node name.
        #[arg(long)]
        node: String,
    },
    /// Re-sign CA/crl.pem with a new next-update time (monthly).
    #[command(long_about = "Re-sign the certificate revocation list.\n\n\
        A CRL is valid for 30 days: nodes warn (status, metrics) once its next-update time has passed, \
        so a copy that was never refreshed is noticed. Run this at least monthly (and `omesh ca revoke` \
        re-signs it too), then copy CA/crl.pem to every node's [tls] crl path; daemons pick it up within \
        seconds.\n\n\
        Example:\n  omesh ca crl --dir /root/omesh-ca")]
    Crl {
        /// CA directory.
        #[arg(long, value_name = "CA")]
        dir: PathBuf,
    },
    /// List issued certificates.
    List {
        /// CA directory.
        #[arg(long, value_name = "CA")]
        dir: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn err(e: CaError) -> CliError {
    let code = match e {
        CaError::Io { .. } | CaError::Rcgen(_) => ExitCode::Failed,
        _ => ExitCode::Usage,
    };
    CliError { code, err: e.into() }
}

pub fn run(c: CaCommand) -> Result<ExitCode, CliError> {
    match c {
        CaCommand::Init { dir, site, days } => {
            let fp = ca::init(&dir, &site, days).map_err(err)?;
            println!("site CA for {site:?} created in {} (SHA-256 {fp})", dir.display());
            println!(
                "keep {} private; issue node certificates with `omesh ca issue --dir {} --node NAME --out DIR`",
                dir.join("ca.key").display(),
                dir.display()
            );
        }
        CaCommand::Issue { dir, node, out, days } => {
            let i = ca::issue(&dir, &node, &out, days).map_err(err)?;
            println!(
                "certificate for {node} (serial {}, valid until {}) written to {}",
                i.serial,
                i.not_after,
                out.display()
            );
        }
        CaCommand::Revoke { dir, node } => {
            let s = ca::revoke(&dir, &node).map_err(err)?;
            println!(
                "revoked {} certificate(s) of {node}; copy {} to every node's [tls] crl path",
                s.len(),
                dir.join("crl.pem").display()
            );
        }
        CaCommand::Crl { dir } => {
            let n = ca::renew_crl(&dir).map_err(err)?;
            println!(
                "re-signed {} (CRL number {n}, valid {} days); copy it to every node's [tls] crl path",
                dir.join("crl.pem").display(),
                ca::CRL_VALID_DAYS
            );
        }
        CaCommand::List { dir, json } => {
            let st = ca::list(&dir).map_err(err)?;
            if json {
                print_json("ca list", &serde_json::json!({"site": st.site, "issued": st.issued}))?;
            } else {
                println!("site {:?}", st.site);
                for i in &st.issued {
                    println!(
                        "{:<20} serial {} until {}{}",
                        i.node,
                        &i.serial,
                        i.not_after,
                        i.revoked.as_ref().map(|r| format!(" REVOKED {r}")).unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(ExitCode::Ok)
}
