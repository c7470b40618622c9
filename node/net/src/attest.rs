//! Snapshot attestations: a source signs each snapshot record it makes
//! with its node identity (the private key behind its site certificate),
//! and any holder, without the data key, checks before it stores, lists or
//! serves a snapshot that the source it is filed under really made it.
//!
//! Signing uses rustls' own key loading and signers; checking uses
//! rustls-webpki (the verifier rustls uses for every TLS handshake): the
//! certificate chain must lead to the site CA (the only trust anchor), the
//! end-entity certificate must carry the source's name as a DNS name and
//! allow client authentication, and the signature must verify under its
//! key. The chain is checked at the snapshot's signed creation time, so
//! snapshots outlive the certificate that signed them; a creation time in
//! the future is refused.
//!
//! Revocation is not consulted here: a revoked node cannot connect, so it
//! cannot deliver new records, and the snapshots it signed before it was
//! revoked stay restorable.

use omesh_core::crypto::SnapshotSigner;
use omesh_proto::{Attestation, ObjectKind, Record, RecordFormat};
use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Most a signed creation time may lie in the future (clock skew).
pub const MAX_FUTURE: Duration = Duration::from_secs(600);

/// Why a snapshot record is not accepted as made by its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// Not a snapshot record.
    #[error("not a snapshot record")]
    NotSnapshot,
    /// A format-1 record: no signature to check.
    #[error("a format-1 snapshot record carries no signature; only format-2 records are accepted from the mesh")]
    Format1,
    /// No attestation at all.
    #[error("the snapshot record is not signed (written by a node without a site certificate)")]
    Unsigned,
    /// The attestation cannot be decoded.
    #[error("{0}")]
    Malformed(String),
    /// Signed for another source than the namespace it is offered under.
    #[error("the record is signed as a snapshot of {signed:?}, not of {namespace:?}")]
    WrongSource {
        /// name in the attestation
        signed: String,
        /// namespace it was offered under
        namespace: String,
    },
    /// The certificate does not lead to the site CA, or is not for the source.
    #[error("the signing certificate is not a site certificate of {source_name:?}: {why}")]
    Certificate {
        /// source
        source_name: String,
        /// what failed
        why: String,
    },
    /// The signature does not verify.
    #[error("the signature does not verify: the record was forged or altered")]
    BadSignature,
    /// Signed creation time too far ahead.
    #[error("the signed creation time is {0} s in the future")]
    Future(i64),
}

/// What a verified attestation vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attested {
    /// The source that made the snapshot.
    pub source: String,
    /// Its signed creation time (seconds since the epoch).
    pub created: i64,
}

/// Checks attestations against the site CA.
#[derive(Clone, Debug)]
pub struct AttestVerifier {
    anchors: Arc<Vec<TrustAnchor<'static>>>,
}

impl AttestVerifier {
    /// A verifier that trusts `anchors` (the site CA) only.
    pub fn new(anchors: Vec<TrustAnchor<'static>>) -> Self {
        AttestVerifier { anchors: Arc::new(anchors) }
    }

    /// Check that `rec`, offered as a snapshot of `namespace`, was made
    /// and signed by that source.
    pub fn verify(&self, rec: &Record, namespace: &str, now: SystemTime) -> Result<Attested, AttestError> {
        if rec.kind != ObjectKind::Snapshot {
            return Err(AttestError::NotSnapshot);
        }
        if rec.format == RecordFormat::V1 {
            return Err(AttestError::Format1);
        }
        if rec.attestation.is_empty() {
            return Err(AttestError::Unsigned);
        }
        let a = Attestation::decode(&rec.attestation).map_err(AttestError::Malformed)?;
        if a.source != namespace {
            return Err(AttestError::WrongSource { signed: a.source, namespace: namespace.into() });
        }
        let now_s = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        if a.created > now_s + MAX_FUTURE.as_secs() as i64 {
            return Err(AttestError::Future(a.created - now_s));
        }
        let cert_err = |why: String| AttestError::Certificate { source_name: namespace.into(), why };
        let ee_der = CertificateDer::from(a.chain[0].as_slice());
        let ee = webpki::EndEntityCert::try_from(&ee_der).map_err(|e| cert_err(format!("unreadable: {e}")))?;
        let intermediates: Vec<CertificateDer<'_>> =
            a.chain[1..].iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        let algs = crate::transport::tls::provider().signature_verification_algorithms;
        let at = UnixTime::since_unix_epoch(Duration::from_secs(a.created.max(0) as u64));
        ee.verify_for_usage(algs.all, &self.anchors, &intermediates, at, webpki::KeyUsage::client_auth(), None, None)
            .map_err(|e| cert_err(format!("does not verify against the site CA at the signed time: {e}")))?;
        if !crate::transport::tls::cert_names(&a.chain[0]).iter().any(|n| n == namespace) {
            return Err(cert_err("it does not carry the source's name".into()));
        }
        let scheme = SignatureScheme::from(a.scheme);
        let candidates = algs
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, a)| *a)
            .ok_or_else(|| AttestError::Malformed(format!("unsupported signature scheme {scheme:?}")))?;
        let msg = rec.attestation_message(&a);
        if !candidates.iter().any(|alg| ee.verify_signature(*alg, &msg, &a.signature).is_ok()) {
            return Err(AttestError::BadSignature);
        }
        Ok(Attested { source: a.source, created: a.created })
    }
}

/// Signs snapshot records with a node's site certificate and key.
pub struct NodeSigner {
    name: String,
    chain: Vec<Vec<u8>>,
    signer: Box<dyn rustls::sign::Signer>,
}

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeSigner({})", self.name)
    }
}

impl NodeSigner {
    /// A signer for `name` from its certificate chain and private key.
    pub fn new(name: &str, chain: &[CertificateDer<'static>], key: &PrivateKeyDer<'static>) -> Result<Self, String> {
        let provider = crate::transport::tls::provider();
        let key = provider.key_provider.load_private_key(key.clone_key()).map_err(|e| format!("node key: {e}"))?;
        let signer = key
            .choose_scheme(&[
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::ECDSA_NISTP384_SHA384,
                SignatureScheme::ED25519,
                SignatureScheme::RSA_PSS_SHA256,
            ])
            .ok_or("the node key supports none of the signature schemes omesh uses")?;
        Ok(NodeSigner { name: name.into(), chain: chain.iter().map(|c| c.to_vec()).collect(), signer })
    }
}

impl SnapshotSigner for NodeSigner {
    fn name(&self) -> &str {
        &self.name
    }
    fn scheme(&self) -> u16 {
        u16::from(self.signer.scheme())
    }
    fn chain(&self) -> Vec<Vec<u8>> {
        self.chain.clone()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.signer.sign(message).map_err(|e| e.to_string())
    }
}
