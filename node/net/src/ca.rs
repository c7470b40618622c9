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

/// Refuse a private key file that group or others can read, saying why it
/// matters (`why`) and how to fix it.
fn check_private(key: &Path, why: &str) -> Result<()> {
    let mode = fs::metadata(key).map_err(io(key))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CaError::Invalid(format!(
            "{} is readable by group or others (mode {:o}); {why}: run `chmod 600 {}`",
            key.display(),
            mode & 0o777,
            key.display()
        )));
    }
    Ok(())
}

fn load_ca(dir: &Path) -> Result<(String, KeyPair)> {
    let cert = dir.join("ca.pem");
    let key = dir.join("ca.key");
    if !cert.exists() || !key.exists() {
        return Err(CaError::NotACa(dir.into()));
    }
    check_private(&key, "the CA key signs every node of the site")?;
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
    check_node_name(node)?;
    let (ca_pem, ca_key) = load_ca(dir)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let kp = KeyPair::generate()?;
    let (p, serial) = node_params(node, not_before, not_after)?;
    let cert = p.signed_by(&kp, &issuer)?;
    fs::create_dir_all(out).map_err(io(out))?;
    fs::write(out.join("node.pem"), cert.pem()).map_err(io(&out.join("node.pem")))?;
    write_private_atomic(&out.join("node.key"), kp.serialize_pem().as_bytes()).map_err(io(&out.join("node.key")))?;
    fs::write(out.join("ca.pem"), &ca_pem).map_err(io(&out.join("ca.pem")))?;
    if dir.join("crl.pem").exists() {
        let _ = fs::copy(dir.join("crl.pem"), out.join("crl.pem"));
    }
    record(dir, node, &serial, not_before, not_after, cert.der())
}

fn check_node_name(node: &str) -> Result<()> {
    if omesh_proto::msg::valid_name(node) {
        return Ok(());
    }
    Err(CaError::Invalid(format!(
        "node name {node:?} is invalid: use 1-64 letters, digits, '.', '-', '_' (it must match `name` in the node's config)"
    )))
}

/// A node's name as its CN and its only DNS SAN (what its requests ask
/// for and its certificates carry).
fn node_identity(node: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    p.distinguished_name = dn;
    p.subject_alt_names =
        vec![SanType::DnsName(node.try_into().map_err(|_| CaError::Invalid(format!("{node:?} is not a DNS name")))?)];
    Ok(p)
}

/// What every node certificate says: the node name as CN and as its only
/// DNS SAN, server and client authentication, never a CA.
fn node_params(
    node: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(CertificateParams, SerialNumber)> {
    let mut p = node_identity(node)?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = not_before;
    p.not_after = not_after;
    let serial = random_serial();
    p.serial_number = Some(serial.clone());
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    Ok((p, serial))
}

/// Add an issued certificate to `ca.toml`.
fn record(
    dir: &Path,
    node: &str,
    serial: &SerialNumber,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    der: &[u8],
) -> Result<Issued> {
    let issued = Issued {
        node: node.into(),
        serial: hex::encode(serial.to_bytes()),
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        sha256: sha256_hex(der),
        revoked: None,
    };
    let mut state = load_state(dir)?;
    state.issued.push(issued.clone());
    save_state(dir, &state)?;
    Ok(issued)
}

/// A node's certificate signing request, made on the node: its private key
/// never leaves it.
#[derive(Debug)]
pub struct Request {
    /// The CSR (PEM, "CERTIFICATE REQUEST"): public, may travel any way.
    pub csr_pem: String,
    /// Whether the key was created now (false: the existing key, a renewal).
    pub key_created: bool,
}

/// Make a CSR for `node` with the private key at `key`: the existing key
/// when there is one (it must be private, mode 0600), else a new ECDSA
/// P-256 key written there with mode 0600.
pub fn request(key: &Path, node: &str) -> Result<Request> {
    check_node_name(node)?;
    let (kp, key_created) = if key.exists() {
        check_private(key, "a node key must be private")?;
        let pem = fs::read_to_string(key).map_err(io(key))?;
        let kp = KeyPair::from_pem(&pem).map_err(|e| {
            CaError::Invalid(format!(
                "{}: not a PEM private key this CA can use ({e}); move it aside to make a new one",
                key.display()
            ))
        })?;
        (kp, false)
    } else {
        let kp = KeyPair::generate()?;
        if let Some(d) = key.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(d).map_err(io(d))?;
        }
        write_private_atomic(key, kp.serialize_pem().as_bytes()).map_err(io(key))?;
        (kp, true)
    };
    let csr_pem = node_identity(node)?.serialize_request(&kp)?.pem()?;
    Ok(Request { csr_pem, key_created })
}

/// Sign a node's CSR (`omesh ca sign`): the certificate gets this CA's
/// node-certificate terms, whatever else the request asked for. The node
/// is the request's CN; `expect` (the operator's `--node`), when given,
/// must be it. A request whose signature does not verify, that names
/// anything besides its node, or asks to be a CA, is refused. Returns the
/// certificate (PEM) and its record.
pub fn sign_request(dir: &Path, csr_pem: &str, expect: Option<&str>, days: u32) -> Result<(String, Issued)> {
    use rcgen::CertificateSigningRequestParams;
    let req = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        CaError::Invalid(match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                "the request's signature does not verify: it was altered, or not made with the key it carries; make a new one on the node (`omesh cert request`)".to_string()
            }
            rcgen::Error::UnsupportedExtension => {
                "the request asks for an extension a node certificate does not have; make it with `omesh cert request`".to_string()
            }
            e => format!("not a certificate signing request (PEM \"CERTIFICATE REQUEST\") this CA can read: {e}"),
        })
    })?;
    let cn = req.params.distinguished_name.get(&DnType::CommonName).and_then(dn_text);
    let Some(node) = cn else {
        return Err(CaError::Invalid(
            "the request names no node (no CN); make it with `omesh cert request` on the node".into(),
        ));
    };
    check_node_name(&node)?;
    if let Some(want) = expect
        && want != node
    {
        return Err(CaError::Invalid(format!(
            "the request is for node {node:?}, not {want:?}; nothing was signed (check which server sent it)"
        )));
    }
    let others: Vec<String> = req
        .params
        .subject_alt_names
        .iter()
        .filter(|n| !matches!(n, SanType::DnsName(d) if d.as_str() == node))
        .map(|n| format!("{n:?}"))
        .collect();
    if !others.is_empty() {
        return Err(CaError::Invalid(format!(
            "the request for {node:?} also asks for {}; a node certificate carries only its node name, so nothing was signed",
            others.join(", ")
        )));
    }
    if matches!(req.params.is_ca, IsCa::Ca(_)) {
        return Err(CaError::Invalid(format!("the request for {node:?} asks to be a CA; nothing was signed")));
    }
    let alg = req.public_key.algorithm();
    let usable =
        [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519, &rcgen::PKCS_RSA_SHA256];
    if !usable.contains(&alg) {
        return Err(CaError::Invalid(format!(
            "the request for {node:?} uses a key algorithm nodes cannot use ({alg:?}); make it with `omesh cert request` (ECDSA P-256)"
        )));
    }
    let (ca_pem, ca_key) = load_ca(dir)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let now = OffsetDateTime::now_utc();
    let (not_before, not_after) = (now - Duration::hours(1), now + Duration::days(days as i64));
    let (params, serial) = node_params(&node, not_before, not_after)?;
    let cert = CertificateSigningRequestParams { params, public_key: req.public_key }.signed_by(&issuer)?;
    let issued = record(dir, &node, &serial, not_before, not_after, cert.der())?;
    Ok((cert.pem(), issued))
}

fn dn_text(v: &rcgen::DnValue) -> Option<String> {
    use rcgen::DnValue;
    match v {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn a_request_is_signed_with_the_node_terms_and_a_ca_request_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        init(&ca, "t", 30).unwrap();
        let key = d.path().join("n/node.key");
        let r = request(&key, "srv-a").unwrap();
        assert!(r.key_created);
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let (pem, issued) = sign_request(&ca, &r.csr_pem, Some("srv-a"), 10).unwrap();
        assert_eq!(issued.node, "srv-a");
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(crate::transport::tls::cert_names(&der), vec!["srv-a".to_string()]);
        // the same key again: a renewal
        let again = request(&key, "srv-a").unwrap();
        assert!(!again.key_created);
        // a request to be a CA
        let kp = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["srv-b".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "srv-b");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let e = sign_request(&ca, &p.serialize_request(&kp).unwrap().pem().unwrap(), None, 10).unwrap_err();
        assert!(e.to_string().contains("asks to be a CA"), "{e}");
        // a key readable by others is not used
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = request(&key, "srv-a").unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
