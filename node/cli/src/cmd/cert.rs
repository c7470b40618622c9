//! `omesh cert request | install`: enrolment in which the node's private
//! key never leaves the node. The request (CSR) and the certificate are
//! public and may travel any way (SSM, e-mail, USB); `omesh ca sign` on the
//! administrator's machine turns one into the other.

use crate::meshmode;
use crate::output::{CliError, ExitCode, print_json};
use omesh_net::ca;
use omesh_net::transport::tls;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum CertCommand {
    /// On the node: make its private key (if it has none) and a certificate signing request.
    #[command(long_about = "Make this node's certificate signing request (CSR).\n\n\
        The private key is [tls] key of the config: created there (mode 0600, owned like the data \
        directory) when it does not exist, reused when it does (a renewal). The request carries the \
        node's name (`name` of the config) and its public key only; copy it to the administrator's \
        machine any way you like, sign it there with `omesh ca sign`, bring the certificate back and \
        install it with `omesh cert install`. The key never leaves this server.\n\n\
        Example:\n  omesh cert request --config /etc/omesh/omesh.toml\n  \
        # -> /etc/omesh/srv-a.csr: omesh ca sign --dir /root/omesh-ca srv-a.csr --out srv-a.pem")]
    Request {
        /// Node config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Where to write the request (default: NAME.csr beside [tls] key).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// On the node: install a signed certificate as [tls] cert, after checking it.
    #[command(long_about = "Install the certificate `omesh ca sign` made from this node's request.\n\n\
        Checked first, and nothing is replaced unless every check passes: it is for this node's \
        name, it is signed by the site CA ([tls] ca), it is valid now for server and client \
        authentication, and it belongs to this node's private key ([tls] key). The previous \
        certificate is kept as FILE.old. A running daemon uses the new certificate after \
        `systemctl restart omesh`.\n\n\
        Example:\n  omesh cert install --config /etc/omesh/omesh.toml srv-a.pem")]
    Install {
        /// Node config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The signed certificate (PEM).
        cert: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: CertCommand) -> Result<ExitCode, CliError> {
    match c {
        CertCommand::Request { config, out, json } => request(&config, out, json),
        CertCommand::Install { config, cert, json } => install(&config, &cert, json),
    }
}

fn ca_err(e: ca::CaError) -> CliError {
    let code = match e {
        ca::CaError::Io { .. } | ca::CaError::Rcgen(_) => ExitCode::Failed,
        _ => ExitCode::Usage,
    };
    CliError { code, err: e.into() }
}

fn request(config: &Path, out: Option<PathBuf>, json: bool) -> Result<ExitCode, CliError> {
    let cfg = meshmode::load(config)?;
    let key = &cfg.tls.key;
    let r = ca::request(key, &cfg.name).map_err(ca_err)?;
    if r.key_created {
        give_to_daemon_user(key, &cfg.data_dir);
    }
    let out = out.unwrap_or_else(|| key.with_file_name(format!("{}.csr", cfg.name)));
    write_public(&out, r.csr_pem.as_bytes())?;
    if json {
        print_json(
            "cert request",
            &serde_json::json!({"node": cfg.name, "csr": out, "key": key, "key_created": r.key_created}),
        )?;
    } else {
        println!("{} private key {}", if r.key_created { "created the" } else { "kept the existing" }, key.display());
        println!("wrote the certificate signing request for {} to {}", cfg.name, out.display());
        println!(
            "next: copy it to the CA machine, `omesh ca sign --dir CA {} --out {}.pem`, bring the certificate back and \
             `omesh cert install --config {} {}.pem`",
            out.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            cfg.name,
            config.display(),
            cfg.name
        );
    }
    Ok(ExitCode::Ok)
}

/// A key made by root for a daemon that runs as the data directory's
/// owner must be that owner's, or the daemon cannot read it.
fn give_to_daemon_user(key: &Path, data_dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return;
    }
    match std::fs::metadata(data_dir) {
        Ok(m) if m.uid() != 0 => {
            if let Err(e) = std::os::unix::fs::chown(key, Some(m.uid()), Some(m.gid())) {
                eprintln!("omesh: warning: could not give {} to uid {}: {e}", key.display(), m.uid());
            }
        }
        _ => eprintln!(
            "omesh: note: {} is root's; if the daemon runs as another user, `chown USER {}` (its data directory {} does not say which)",
            key.display(),
            key.display(),
            data_dir.display()
        ),
    }
}

/// Write a public file atomically and durably (mode 0644).
fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    omesh_core::keyfile::write_atomic_mode(path, bytes, 0o644)
        .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))
}

fn install(config: &Path, cert: &Path, json: bool) -> Result<ExitCode, CliError> {
    let cfg = meshmode::load(config)?;
    let ok = tls::check_installable(&cfg.tls.ca, cert, &cfg.tls.key, &cfg.name)
        .map_err(|e| CliError { code: ExitCode::Usage, err: e.into() })?;
    let bytes = std::fs::read(cert).map_err(|e| CliError::failed(format!("{}: {e}", cert.display())))?;
    let dest = &cfg.tls.cert;
    let old = dest.with_file_name(format!(
        "{}.old",
        dest.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    if dest.exists() {
        std::fs::copy(dest, &old).map_err(|e| CliError::failed(format!("keeping {}: {e}", old.display())))?;
    }
    write_public(dest, &bytes)?;
    if json {
        print_json("cert install", &serde_json::json!({"installed": dest, "certificate": ok}))?;
    } else {
        println!(
            "installed the certificate of {} (serial {}, valid until {}, {} days) as {}",
            ok.node,
            ok.serial,
            ok.not_after,
            ok.days_left,
            dest.display()
        );
        println!("a running daemon uses it after `systemctl restart omesh`");
    }
    Ok(ExitCode::Ok)
}
