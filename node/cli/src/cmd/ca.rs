//! `omesh ca init | issue | sign | revoke | crl | list`

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
    /// Sign a node's certificate signing request (from `omesh cert request`): the node keeps its key.
    #[command(long_about = "Sign a node's certificate signing request.\n\n\
        The request comes from `omesh cert request` on the node; its private key stays there. The \
        certificate gets this CA's terms for node certificates (the node name as its only name, \
        server and client authentication, --days of validity), whatever else the request asks for; \
        a request that names anything besides its node, asks to be a CA, or whose signature does \
        not verify is refused. With --node, the request must be for that node. The certificate is \
        public: send it back any way and install it with `omesh cert install`. Renewal is the same \
        (the node's request reuses its key).\n\n\
        Example:\n  omesh ca sign --dir /root/omesh-ca --node srv-a srv-a.csr --out srv-a.pem")]
    Sign {
        /// CA directory.
        #[arg(long, value_name = "CA")]
        dir: PathBuf,
        /// The request (PEM).
        csr: PathBuf,
        /// The node the request must be for.
        #[arg(long)]
        node: Option<String>,
        /// Where to write the certificate (default: NODE.pem here).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
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
        CaCommand::Sign { dir, csr, node, out, days, json } => {
            let pem = std::fs::read_to_string(&csr)
                .map_err(|e| CliError::usage(format!("{}: cannot read the request: {e}", csr.display())))?;
            let (cert, i) = ca::sign_request(&dir, &pem, node.as_deref(), days).map_err(|e| {
                err(match e {
                    CaError::Invalid(m) => CaError::Invalid(format!("{}: {m}", csr.display())),
                    e => e,
                })
            })?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.pem", i.node)));
            omesh_core::keyfile::write_atomic_mode(&out, cert.as_bytes(), 0o644)
                .map_err(|e| CliError::failed(format!("{}: {e}", out.display())))?;
            if json {
                print_json("ca sign", &serde_json::json!({"certificate": out, "issued": i}))?;
            } else {
                println!(
                    "signed a certificate for {} (serial {}, valid until {}) into {}",
                    i.node,
                    i.serial,
                    i.not_after,
                    out.display()
                );
                println!(
                    "it is public: send it to {} and run `omesh cert install --config FILE {}` there (with the site's ca.pem as [tls] ca)",
                    i.node,
                    out.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
                );
            }
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
