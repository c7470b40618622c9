//! The site certificate authority: `omesh ca init | issue | revoke`.
//!
//! ```text
//! CA/ca.pem     CA certificate (copy to every node)
//! CA/ca.key     CA private key, mode 0600: keep it off the nodes
//! CA/ca.toml    issued certificates (node, serial, validity, fingerprint, revocation)
//! CA/crl.pem    certificate revocation list, re-signed on every revoke
//! ```
//!
//! Node certificates carry the node name as CN and as their only DNS SAN;
//! a peer's identity is that name, read from its verified certificate. The
//! CA is constrained to path length 0 (it can only sign node certificates).

use omesh_core::keyfile::write_private_atomic;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// CA errors, naming files and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// file
        path: PathBuf,
        /// cause
        source: std::io::Error,
    },
    /// A CA already exists.
    #[error("{0} already holds a CA (ca.pem); refusing to overwrite it")]
    Exists(PathBuf),
    /// Not a CA directory.
    #[error(
        "{0} is not an omesh CA directory (no ca.pem/ca.key); create one with `omesh ca init --dir {0} --site NAME`"
    )]
    NotACa(PathBuf),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// State file damaged.
    #[error("{path}: {message}")]
    State {
        /// file
        path: PathBuf,
        /// problem
        message: String,
    },
}

type Result<T> = std::result::Result<T, CaError>;

/// One issued certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Issued {
    /// Node name.
    pub node: String,
    /// Serial (hex).
    pub serial: String,
    /// Validity start (RFC 3339).
    pub not_before: String,
    /// Validity end (RFC 3339).
    pub not_after: String,
    /// SHA-256 of the certificate DER (hex).
    pub sha256: String,
    /// Revocation time, if revoked.
    #[serde(default)]
    pub revoked: Option<String>,
}

/// `ca.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct CaState {
    /// Site name.
    pub site: String,
    /// Next CRL number.
    pub crl_number: u64,
    /// Issued certificates.
    #[serde(default)]
    pub issued: Vec<Issued>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_path_buf(), source }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// SHA-256 of DER bytes, hex.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("random source");
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&b)
}

fn load_state(dir: &Path) -> Result<CaState> {
    let p = dir.join("ca.toml");
    let t = fs::read_to_string(&p).map_err(io(&p))?;
    toml::from_str(&t).map_err(|e| CaError::State { path: p, message: e.to_string() })
}

fn save_state(dir: &Path, s: &CaState) -> Result<()> {
    let p = dir.join("ca.toml");
    let text =
        format!("# omesh site CA state: certificates issued and revoked\n{}", toml::to_string(s).expect("serializes"));
    write_private_atomic(&p, text.as_bytes()).map_err(io(&p))
}

fn load_ca(dir: &Path) -> Result<(String, KeyPair)> {
    let cert = dir.join("ca.pem");
    let key = dir.join("ca.key");
    if !cert.exists() || !key.exists() {
        return Err(CaError::NotACa(dir.into()));
    }
    let mode = fs::metadata(&key).map_err(io(&key))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CaError::Invalid(format!(
            "{} is readable by group or others (mode {:o}); the CA key signs every node of the site: run `chmod 600 {}`",
            key.display(),
            mode & 0o777,
            key.display()
        )));
    }
    let pem = fs::read_to_string(&cert).map_err(io(&cert))?;
    let kp = KeyPair::from_pem(&fs::read_to_string(&key).map_err(io(&key))?)?;
    Ok((pem, kp))
}

/// Create a CA for `site` valid `days` days. Writes ca.pem, ca.key, ca.toml
/// and an empty crl.pem.
pub fn init(dir: &Path, site: &str, days: u32) -> Result<String> {
    if dir.join("ca.pem").exists() {
        return Err(CaError::Exists(dir.into()));
    }
    if site.is_empty() || site.len() > 128 {
        return Err(CaError::Invalid("--site needs a name of 1-128 characters".into()));
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let kp = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("omesh site CA {site}"));
    dn.push(DnType::OrganizationName, site);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days as i64);
    p.serial_number = Some(random_serial());
    p.key_identifier_method = KeyIdMethod::Sha256;
    let cert = p.self_signed(&kp)?;
    write_private_atomic(&dir.join("ca.key"), kp.serialize_pem().as_bytes()).map_err(io(&dir.join("ca.key")))?;
    fs::write(dir.join("ca.pem"), cert.pem()).map_err(io(&dir.join("ca.pem")))?;
    let state = CaState { site: site.into(), crl_number: 1, issued: vec![] };
    save_state(dir, &state)?;
    write_crl(dir, &cert.pem(), &kp, &state)?;
    Ok(sha256_hex(cert.der()))
}

/// Issue a certificate for `node` valid `days` days into `out`.
pub fn issue(dir: &Path, node: &str, out: &Path, days: u32) -> Result<Issued> {
    let now = OffsetDateTime::now_utc();
    issue_with_validity(dir, node, out, now - Duration::hours(1), now + Duration::days(days as i64))
}

/// Issue with an explicit validity window (tests use it for expired
/// certificates).
pub fn issue_with_validity(
    dir: &Path,
    node: &str,
    out: &Path,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Issued> {
    if !omesh_proto::msg::valid_name(node) {
        return Err(CaError::Invalid(format!(
            "node name {node:?} is invalid: use 1-64 letters, digits, '.', '-', '_' (it must match `name` in the node's config)"
        )));
    }
    let (ca_pem, ca_key) = load_ca(dir)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let kp = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    p.distinguished_name = dn;
    p.subject_alt_names =
        vec![SanType::DnsName(node.try_into().map_err(|_| CaError::Invalid(format!("{node:?} is not a DNS name")))?)];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = not_before;
    p.not_after = not_after;
    let serial = random_serial();
    p.serial_number = Some(serial.clone());
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    let cert = p.signed_by(&kp, &issuer)?;
    fs::create_dir_all(out).map_err(io(out))?;
    fs::write(out.join("node.pem"), cert.pem()).map_err(io(&out.join("node.pem")))?;
    write_private_atomic(&out.join("node.key"), kp.serialize_pem().as_bytes()).map_err(io(&out.join("node.key")))?;
    fs::write(out.join("ca.pem"), &ca_pem).map_err(io(&out.join("ca.pem")))?;
    if dir.join("crl.pem").exists() {
        let _ = fs::copy(dir.join("crl.pem"), out.join("crl.pem"));
    }
    let issued = Issued {
        node: node.into(),
        serial: hex::encode(serial.to_bytes()),
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        sha256: sha256_hex(cert.der()),
        revoked: None,
    };
    let mut state = load_state(dir)?;
    state.issued.push(issued.clone());
    save_state(dir, &state)?;
    Ok(issued)
}

/// Revoke every certificate of `node` and re-sign the CRL. Returns the
/// serials revoked by this call.
pub fn revoke(dir: &Path, node: &str) -> Result<Vec<String>> {
    let (ca_pem, ca_key) = load_ca(dir)?;
    let mut state = load_state(dir)?;
    let now = rfc3339(OffsetDateTime::now_utc());
    let mut revoked = Vec::new();
    for i in state.issued.iter_mut().filter(|i| i.node == node && i.revoked.is_none()) {
        i.revoked = Some(now.clone());
        revoked.push(i.serial.clone());
    }
    if revoked.is_empty() && !state.issued.iter().any(|i| i.node == node) {
        return Err(CaError::Invalid(format!(
            "no certificate was issued to {node:?} by this CA (see {})",
            dir.join("ca.toml").display()
        )));
    }
    state.crl_number += 1;
    save_state(dir, &state)?;
    write_crl(dir, &ca_pem, &ca_key, &state)?;
    Ok(revoked)
}

/// Days a CRL is valid: nodes warn when its next update has passed, so the
/// CA re-signs it (`omesh ca crl`) at least this often, and a stale copy is
/// noticed.
pub const CRL_VALID_DAYS: i64 = 30;

/// Re-sign the CRL (same revocations, a higher CRL number, a new next
/// update `CRL_VALID_DAYS` from now). Returns the new CRL number.
pub fn renew_crl(dir: &Path) -> Result<u64> {
    renew_crl_until(dir, OffsetDateTime::now_utc() + Duration::days(CRL_VALID_DAYS))
}

/// [`renew_crl`] with an explicit next update (tests: a stale list).
pub fn renew_crl_until(dir: &Path, next_update: OffsetDateTime) -> Result<u64> {
    let (ca_pem, ca_key) = load_ca(dir)?;
    let mut state = load_state(dir)?;
    state.crl_number += 1;
    save_state(dir, &state)?;
    write_crl_until(dir, &ca_pem, &ca_key, &state, next_update)?;
    Ok(state.crl_number)
}

fn write_crl(dir: &Path, ca_pem: &str, ca_key: &KeyPair, state: &CaState) -> Result<()> {
    write_crl_until(dir, ca_pem, ca_key, state, OffsetDateTime::now_utc() + Duration::days(CRL_VALID_DAYS))
}

fn write_crl_until(
    dir: &Path,
    ca_pem: &str,
    ca_key: &KeyPair,
    state: &CaState,
    next_update: OffsetDateTime,
) -> Result<()> {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)?;
    let now = OffsetDateTime::now_utc();
    let revoked_certs = state
        .issued
        .iter()
        .filter_map(|i| {
            let when = i.revoked.as_ref()?;
            let t = OffsetDateTime::parse(when, &time::format_description::well_known::Rfc3339).unwrap_or(now);
            Some(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&hex::decode(&i.serial).ok()?),
                revocation_time: t,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
        })
        .collect();
    let params = CertificateRevocationListParams {
        // (a list that is stale already, for tests, starts before it ends)
        this_update: (now - Duration::minutes(5)).min(next_update - Duration::minutes(1)),
        next_update,
        crl_number: SerialNumber::from_slice(&state.crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    let pem = crl.pem()?;
    let p = dir.join("crl.pem");
    let tmp = dir.join(".crl.pem.tmp");
    fs::write(&tmp, pem).map_err(io(&tmp))?;
    fs::rename(&tmp, &p).map_err(io(&p))?;
    Ok(())
}

/// Issued certificates (for `omesh ca list`).
pub fn list(dir: &Path) -> Result<CaState> {
    load_ca(dir)?;
    load_state(dir)
}
