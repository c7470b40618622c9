//! TLS 1.3 with mutual authentication against the site CA and its CRL.
//!
//! - Both ends present a certificate issued by the site CA; both verify the
//!   other's against the CA and the CRL (rustls' webpki verifiers).
//! - Verification is always rustls' own: `WebPkiClientVerifier` on the
//!   server side, `WebPkiServerVerifier` (`with_webpki_verifier`) on the
//!   client side; omesh implements no verifier of its own.
//! - The CRL file is re-read whenever its modification time or size
//!   changes, checked (on a blocking thread) before every connection is
//!   accepted or made; the configs are rebuilt then and handed to quinn per
//!   connection, so `omesh ca revoke` takes effect without restarting a
//!   daemon.
//! - A peer's identity is the DNS name in its verified certificate, never a
//!   name it sends in a message. A client verifies that the server's
//!   certificate carries the configured peer name.
//! - 0-RTT is off on both sides (`max_early_data_size = 0`,
//!   `enable_early_data = false`): no request, and certainly nothing that
//!   writes, can be replayed.

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::Deserialize;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// `[tls]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Site CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Certificate revocation list (PEM) from `omesh ca revoke`; reloaded
    /// when it changes. Required in mesh mode unless `no_crl` says there is
    /// none.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Run without a revocation list (a revoked certificate then stays
    /// valid until it expires). Must be said explicitly.
    #[serde(default)]
    pub no_crl: bool,
}

/// What the CRL in use says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CrlStatus {
    /// The file.
    pub path: Option<PathBuf>,
    /// Its CRL number.
    pub number: Option<u64>,
    /// When its issuer promised the next one (ns since epoch).
    pub next_update_ns: Option<i64>,
    /// Certificates it revokes.
    pub revoked: usize,
}

impl CrlStatus {
    /// Whether its next update is past (`now_ns`).
    pub fn is_stale(&self, now_ns: i64) -> bool {
        self.next_update_ns.is_some_and(|t| t < now_ns)
    }
}

/// Revoked serials (with when each was revoked, seconds since the epoch)
/// and the facts of a set of CRLs.
fn crl_facts(crls: &[CertificateRevocationListDer<'static>]) -> (Revoked, Option<u64>, Option<i64>) {
    let mut revoked = HashMap::new();
    let mut number = None;
    let mut next = None;
    for c in crls {
        let Ok((_, crl)) = x509_parser::parse_x509_crl(c.as_ref()) else { continue };
        for r in crl.iter_revoked_certificates() {
            revoked.insert(r.raw_serial().to_vec(), r.revocation_date.timestamp());
        }
        if let Some(n) = crl.crl_number() {
            let bytes = n.to_bytes_be();
            if bytes.len() <= 8 {
                let mut b = [0u8; 8];
                b[8 - bytes.len()..].copy_from_slice(&bytes);
                number = Some(number.unwrap_or(0).max(u64::from_be_bytes(b)));
            }
        }
        if let Some(t) = crl.next_update() {
            let ns = t.timestamp().saturating_mul(1_000_000_000);
            next = Some(next.map_or(ns, |x: i64| x.min(ns)));
        }
    }
    (revoked, number, next)
}

/// Revoked certificate serials → when they were revoked (seconds since
/// the epoch).
pub type Revoked = HashMap<Vec<u8>, i64>;

/// TLS setup errors (name the file and what to do).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// File problem.
    #[error("{path}: {message}")]
    File {
        /// file
        path: PathBuf,
        /// what is wrong
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate is not for this node.
    #[error(
        "{path} is a certificate for {found:?} but this node is named {expected:?}; get one for {expected}: `omesh cert request` on the node and `omesh ca sign` on the CA machine (or `omesh ca issue --node {expected}`)"
    )]
    WrongName {
        /// cert file
        path: PathBuf,
        /// name in cert
        found: String,
        /// configured name
        expected: String,
    },
}

/// Days before expiry from which a node certificate counts as expiring
/// (status, metrics, notifications say to renew it).
pub const CERT_RENEW_DAYS: i64 = 30;

/// Read a node's private key: it must be private (mode 0600) and usable;
/// returns it and whether it is the key of `chain`'s certificate.
fn load_key_for(key: &Path, chain: &[CertificateDer<'static>]) -> Result<(PrivateKeyDer<'static>, bool), TlsError> {
    let meta = std::fs::metadata(key).map_err(|e| file_err(key, format!("cannot read the private key: {e}")))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(file_err(
            key,
            format!(
                "private key is accessible by group or others (mode {:o}); run `chmod 600 {}`",
                meta.permissions().mode() & 0o777,
                key.display()
            ),
        ));
    }
    let pk = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, format!("not a PEM private key: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(pk.clone_key())
        .map_err(|e| file_err(key, format!("not a usable private key: {e}")))?;
    let matches = !matches!(
        rustls::sign::CertifiedKey::new(chain.to_vec(), signing).keys_match(),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch))
    );
    Ok((pk, matches))
}

/// A certificate `omesh cert install` found fit for this node.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Installable {
    /// The node it is for.
    pub node: String,
    /// Serial (hex).
    pub serial: String,
    /// Validity end (RFC 3339).
    pub not_after: String,
    /// Whole days until then.
    pub days_left: i64,
    /// SHA-256 of the certificate DER (hex).
    pub sha256: String,
}

/// Check, before it replaces anything, that the certificate in `cert` is
/// for `node`, chains to the site CA in `ca`, is valid now for both server
/// and client authentication, and belongs to the private key in `key`.
/// Each refusal names the file and what to do.
pub fn check_installable(ca: &Path, cert: &Path, key: &Path, node: &str) -> Result<Installable, TlsError> {
    let chain = load_certs(cert)?;
    let leaf = &chain[0];
    let names = cert_names(leaf);
    if !names.iter().any(|n| n == node) {
        return Err(TlsError::WrongName { path: cert.into(), found: names.join(","), expected: node.into() });
    }
    let anchors_der = load_certs(ca)?;
    let anchors = anchors_der
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(ca, format!("not a usable CA certificate: {e}")))?;
    let ee =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| file_err(cert, format!("not a usable certificate: {e}")))?;
    let algs = provider().signature_verification_algorithms;
    let now = rustls::pki_types::UnixTime::now();
    for usage in [webpki::KeyUsage::server_auth(), webpki::KeyUsage::client_auth()] {
        ee.verify_for_usage(algs.all, &anchors, &chain[1..], now, usage, None, None).map_err(|e| {
            let why = match e {
                webpki::Error::UnknownIssuer => format!("it was not signed by the site CA in {}", ca.display()),
                webpki::Error::CertExpired { .. } => "it has expired (or this server's clock is wrong)".into(),
                webpki::Error::CertNotValidYet { .. } => "it is not valid yet (or this server's clock is wrong)".into(),
                e => format!("it does not verify: {e}"),
            };
            file_err(
                cert,
                format!("{why}; nothing was installed (sign this node's request with the site CA: `omesh ca sign`)"),
            )
        })?;
    }
    let (_, matches) = load_key_for(key, &chain)?;
    if !matches {
        return Err(file_err(
            cert,
            format!(
                "this certificate is not for the private key {} (their public keys differ): it was made from another request; \
                 sign the request `omesh cert request` made with this key, nothing was installed",
                key.display()
            ),
        ));
    }
    let (_, x) = x509_parser::parse_x509_certificate(leaf).map_err(|e| file_err(cert, format!("unreadable: {e}")))?;
    let not_after = x.validity().not_after.timestamp();
    let days_left = (not_after - time::OffsetDateTime::now_utc().unix_timestamp()) / 86400;
    Ok(Installable {
        node: node.into(),
        serial: hex::encode(x.raw_serial()),
        not_after: time::OffsetDateTime::from_unix_timestamp(not_after)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default(),
        days_left,
        sha256: crate::ca::sha256_hex(leaf),
    })
}

/// The crypto provider: ring (pure Rust + asm, no C++ toolchain needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File { path: path.into(), message: message.into() }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "contains no certificate"));
    }
    Ok(certs)
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read the CRL: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not a PEM CRL file: {e}")))
}

/// Names (DNS SANs) in a certificate.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return vec![] };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push(d.to_string());
            }
        }
    }
    out
}

/// Everything needed to build client and server TLS configs, and the
/// configs built from the current CRL.
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    crl: Option<PathBuf>,
    built: Mutex<Built>,
    /// Bumped whenever a new CRL is in force (live connections re-check
    /// their peer's certificate then).
    changes: tokio::sync::watch::Sender<u64>,
    /// SHA-256 of this node's certificate.
    pub fingerprint: String,
    /// When this node's certificate expires (Unix seconds).
    pub not_after: i64,
}

/// Configs built from one version of the CRL file.
struct Built {
    stamp: Option<(SystemTime, u64)>,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    revoked: Arc<Revoked>,
    status: CrlStatus,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsMaterial(cert {})", self.fingerprint)
    }
}

impl TlsMaterial {
    /// Load CA, certificate, key and CRL; check the certificate is for
    /// `name` and the key file is private.
    pub fn load(cfg: &TlsConfig, name: &str) -> Result<Self, TlsError> {
        let ca = load_certs(&cfg.ca)?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| file_err(&cfg.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let chain = load_certs(&cfg.cert)?;
        let names = cert_names(&chain[0]);
        if !names.iter().any(|n| n == name) {
            return Err(TlsError::WrongName { path: cfg.cert.clone(), found: names.join(","), expected: name.into() });
        }
        let (key, matches) = load_key_for(&cfg.key, &chain)?;
        // the key must be the certificate's: say so naming both files (rustls
        // alone reports an unnamed inconsistency)
        if !matches {
            return Err(file_err(
                &cfg.key,
                format!(
                    "this private key does not belong to the certificate {} (their public keys differ); \
                     install the key that was issued with that certificate (`omesh ca issue` writes both)",
                    cfg.cert.display()
                ),
            ));
        }
        let fingerprint = crate::ca::sha256_hex(&chain[0]);
        let not_after = x509_parser::parse_x509_certificate(&chain[0])
            .map(|(_, c)| c.validity().not_after.timestamp())
            .map_err(|e| file_err(&cfg.cert, format!("unreadable certificate: {e}")))?;
        let (stamp, crls) = match &cfg.crl {
            Some(p) => (stamp(p), load_crls(p)?),
            None => (None, vec![]),
        };
        let (revoked, number, next_update_ns) = crl_facts(&crls);
        let status = CrlStatus { path: cfg.crl.clone(), number, next_update_ns, revoked: revoked.len() };
        let roots = Arc::new(roots);
        let (server, client) = build_configs(&roots, &chain, &key, crls)?;
        Ok(TlsMaterial {
            roots,
            chain,
            key,
            crl: cfg.crl.clone(),
            built: Mutex::new(Built { stamp, server, client, revoked: Arc::new(revoked), status }),
            changes: tokio::sync::watch::channel(0).0,
            fingerprint,
            not_after,
        })
    }

    /// Build from explicit parts (tests: alternative certificates).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path, crl: Option<PathBuf>) -> Result<Self, TlsError> {
        let cfg = TlsConfig { ca: ca.into(), cert: cert.into(), key: key.into(), no_crl: crl.is_none(), crl };
        let chain = load_certs(cert)?;
        let name = cert_names(&chain[0]).into_iter().next().unwrap_or_default();
        Self::load(&cfg, &name)
    }

    /// This node's certificate chain.
    pub(crate) fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// This node's private key.
    pub(crate) fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The site CA as trust anchors.
    pub(crate) fn anchors(&self) -> Vec<rustls::pki_types::TrustAnchor<'static>> {
        self.roots.roots.clone()
    }

    /// Serial numbers the CRL now in force revokes.
    pub(crate) fn revoked(&self) -> Arc<Revoked> {
        self.built.lock().unwrap_or_else(|e| e.into_inner()).revoked.clone()
    }

    /// Server side: client certificates required, verified against the CA
    /// and the CRL as of the last [`TlsMaterial::refresh`].
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.built.lock().unwrap_or_else(|e| e.into_inner()).server.clone()
    }

    /// Client side: presents our certificate, verifies the server's against
    /// the CA and the CRL as of the last [`TlsMaterial::refresh`].
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.built.lock().unwrap_or_else(|e| e.into_inner()).client.clone()
    }

    /// Re-read the CRL file if its modification time or size changed, and
    /// rebuild the configs from it (blocking file I/O: async callers use
    /// [`TlsMaterial::refresh_async`]). The lock is not held while the file
    /// is read.
    pub fn refresh(&self) {
        let Some(p) = &self.crl else { return };
        let now = stamp(p);
        if now == self.built.lock().unwrap_or_else(|e| e.into_inner()).stamp {
            return;
        }
        match load_crls(p).and_then(|c| {
            let facts = crl_facts(&c);
            build_configs(&self.roots, &self.chain, &self.key, c).map(|v| (v, facts))
        }) {
            Ok(((server, client), (revoked, number, next_update_ns))) => {
                let mut b = self.built.lock().unwrap_or_else(|e| e.into_inner());
                if let (Some(old), Some(new)) = (b.status.number, number)
                    && new < old
                {
                    // an older list would un-revoke what a newer one revoked
                    tracing::error!(crl = %p.display(), number = new, in_use = old, "the CRL file holds an older revocation list than the one in use; keeping the newer one (copy the CA's current crl.pem)");
                    b.stamp = now;
                    return;
                }
                tracing::info!(crl = %p.display(), number = ?number, revoked = revoked.len(), "certificate revocation list reloaded");
                let status = CrlStatus { path: Some(p.clone()), number, next_update_ns, revoked: revoked.len() };
                *b = Built { stamp: now, server, client, revoked: Arc::new(revoked), status };
                drop(b);
                self.changes.send_modify(|g| *g += 1);
            }
            // keep enforcing the last good CRL; a half-copied file is
            // retried on the next connection
            Err(e) => tracing::error!(error = %e, "cannot reload the CRL; still using the previous one"),
        }
    }

    /// Whether the CRL in force revokes the certificate with this serial.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.built.lock().unwrap_or_else(|e| e.into_inner()).revoked.contains_key(serial)
    }

    /// The CRL in force.
    pub fn crl_status(&self) -> CrlStatus {
        self.built.lock().unwrap_or_else(|e| e.into_inner()).status.clone()
    }

    /// Changes whenever a new CRL comes into force.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// [`TlsMaterial::refresh`] on a blocking thread.
    pub async fn refresh_async(self: &Arc<Self>) {
        let t = self.clone();
        let _ = tokio::task::spawn_blocking(move || t.refresh()).await;
    }
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// Server and client configs with rustls' webpki verifiers over `roots`
/// and `crls`; TLS 1.3 only, ALPN `omesh/1`, no 0-RTT.
fn build_configs(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), TlsError> {
    let verifier_err =
        |e: rustls::server::VerifierBuilderError| TlsError::Rustls(rustls::Error::General(e.to_string()));
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls.clone())
        .build()
        .map_err(verifier_err)?;
    let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls)
        .build()
        .map_err(verifier_err)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())?;
    server.alpn_protocols = vec![omesh_proto::ALPN.to_vec()];
    server.max_early_data_size = 0;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain.to_vec(), key.clone_key())?;
    client.alpn_protocols = vec![omesh_proto::ALPN.to_vec()];
    client.enable_early_data = false;
    Ok((Arc::new(server), Arc::new(client)))
}

/// The authenticated identity of the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Node name (DNS SAN of the verified certificate).
    pub name: String,
    /// SHA-256 of its certificate.
    pub fingerprint: String,
    /// Its certificate's serial number (what a CRL names).
    pub serial: Vec<u8>,
}

/// Identity from a connection whose handshake rustls completed (so the
/// certificate chain was verified).
pub fn peer_identity(conn: &quinn::Connection) -> Option<PeerIdentity> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = certs.first()?;
    let names = cert_names(leaf);
    // a node certificate carries exactly one name
    if names.len() != 1 {
        return None;
    }
    let serial = x509_parser::parse_x509_certificate(leaf).ok()?.1.raw_serial().to_vec();
    Some(PeerIdentity { name: names.into_iter().next()?, fingerprint: crate::ca::sha256_hex(leaf), serial })
}

/// An operator's reading of why a connection was refused or closed: a TLS
/// refusal (either side's) names its cause — not this site's CA, revoked,
/// expired, not for this name — and what to do; anything else is quinn's
/// own description.
pub fn why_closed(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as C;
    match e {
        // this side refused the peer's certificate (rustls' reason)
        C::TransportError(t) if is_crypto(t.code.into()) => {
            let cause = certificate_cause(&t.reason).unwrap_or_else(|| t.reason.clone());
            format!("TLS refused here: {cause}")
        }
        // the peer refused ours: a TLS alert
        C::ConnectionClosed(c) if is_crypto(c.error_code.into()) => {
            let alert = (u64::from(c.error_code) & 0xff) as u8;
            let reason = String::from_utf8_lossy(&c.reason).to_string();
            let cause = certificate_cause(&reason).unwrap_or_else(|| match alert {
                44 => {
                    "it lists this node's certificate as revoked in its CRL: issue a new one (`omesh ca issue`)".into()
                }
                45 => {
                    "this node's certificate has expired (or the clocks disagree): issue a new one (`omesh ca issue`)"
                        .into()
                }
                48 => {
                    "this node's certificate is not signed by the CA it trusts: compare [tls] ca on both nodes".into()
                }
                42 | 43 | 46 => format!("it rejects this node's certificate (TLS alert {alert}){}", suffix(&reason)),
                116 => "it requires a client certificate".into(),
                120 => "it speaks another omesh protocol version (ALPN); run the same omesh version on both".into(),
                _ => format!("TLS alert {alert}{}", suffix(&reason)),
            });
            format!("TLS refused by the peer: {cause}")
        }
        other => other.to_string(),
    }
}

fn suffix(reason: &str) -> String {
    if reason.is_empty() { String::new() } else { format!(": {reason}") }
}

fn is_crypto(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

/// What rustls' certificate error text means, with the fix.
fn certificate_cause(reason: &str) -> Option<String> {
    let r = reason.to_ascii_lowercase();
    let why = if r.contains("unknownissuer") || r.contains("unknown issuer") {
        "the certificate is not signed by this site's CA ([tls] ca): a node of another site, or a different CA file"
    } else if r.contains("revoked") {
        "the certificate is revoked by the CRL ([tls] crl)"
    } else if r.contains("expired") {
        "the certificate has expired (or the clocks disagree): issue a new one (`omesh ca issue`)"
    } else if r.contains("notvalidforname") || r.contains("not valid for name") {
        "the certificate is not for the node name configured for that address"
    } else if r.contains("notvalidyet") || r.contains("not valid yet") {
        "the certificate is not valid yet (the clocks disagree)"
    } else if r.contains("no certificates") || r.contains("certificate required") {
        "no client certificate was presented"
    } else {
        return None;
    };
    Some(format!("{why} ({reason})"))
}
