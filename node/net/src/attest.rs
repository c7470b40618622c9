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
//! A record signed by a certificate the CRL in force revokes is accepted only
//! when its signed creation time is before the revocation (the node's
//! history stays replicable after its certificate is replaced and revoked;
//! what a leaked key could still back-date concerns only that node's own
//! namespace, as anything that node signed did).

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
    revoked: Arc<crate::transport::tls::Revoked>,
}

impl AttestVerifier {
    /// A verifier that trusts `anchors` (the site CA) only.
    pub fn new(anchors: Vec<TrustAnchor<'static>>) -> Self {
        AttestVerifier { anchors: Arc::new(anchors), revoked: Default::default() }
    }

    /// Also refuse what certificates with these serial numbers (the CRL's)
    /// signed as made at or after their revocation.
    pub fn with_revoked(mut self, revoked: Arc<crate::transport::tls::Revoked>) -> Self {
        self.revoked = revoked;
        self
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
        // a revoked certificate vouches only for what it signed before it
        // was revoked
        let serial = x509_parser::parse_x509_certificate(&a.chain[0]).map(|(_, c)| c.raw_serial().to_vec());
        if let Some(at) = serial.ok().and_then(|s| self.revoked.get(&s).copied())
            && a.created >= at
        {
            return Err(cert_err(format!(
                "the certificate was revoked at {at} (seconds since the epoch), before the signed time"
            )));
        }
        let ee_der = CertificateDer::from(a.chain[0].as_slice());
        let ee = webpki::EndEntityCert::try_from(&ee_der).map_err(|e| cert_err(format!("unreadable: {e}")))?;
        let intermediates: Vec<CertificateDer<'_>> =
            a.chain[1..].iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        let algs = crate::transport::tls::provider().signature_verification_algorithms;
        let at = UnixTime::since_unix_epoch(Duration::from_secs(a.created.max(0) as u64));
        ee.verify_for_usage(algs.all, &self.anchors, &intermediates, at, webpki::KeyUsage::client_auth(), None, None)
            .map_err(|e| cert_err(format!("does not verify against the site CA at the signed time: {e}")))?;
        // the same rule as a connection's identity: exactly one name, the source's
        if crate::transport::tls::cert_names(&a.chain[0]) != [namespace] {
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

impl crate::transport::TlsMaterial {
    /// Signs this node's snapshot records with its certificate's key.
    pub fn snapshot_signer(&self, name: &str) -> Result<NodeSigner, crate::transport::tls::TlsError> {
        NodeSigner::new(name, self.chain(), self.key())
            .map_err(|e| crate::transport::tls::TlsError::Rustls(rustls::Error::General(e)))
    }

    /// Checks other nodes' snapshot records against the site CA and the
    /// certificates the CRL now in force revokes.
    pub fn attest_verifier(&self) -> AttestVerifier {
        AttestVerifier::new(self.anchors()).with_revoked(self.revoked())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TlsMaterial;
    use omesh_proto::{ObjectId, Seal};
    use std::path::Path;

    fn node(ca: &Path, name: &str, crl: bool) -> TlsMaterial {
        let out = ca.parent().unwrap().join(name);
        if !out.join("node.pem").exists() {
            crate::ca::issue(ca, name, &out, 30).unwrap();
        }
        let crl = crl.then(|| ca.join("crl.pem"));
        TlsMaterial::from_files(&ca.join("ca.pem"), &out.join("node.pem"), &out.join("node.key"), crl).unwrap()
    }

    fn signed(tls: &TlsMaterial, signer_name: &str, source: &str, created: i64) -> Record {
        let mut rec = Record::new(
            ObjectKind::Snapshot,
            ObjectId([4; 32]),
            vec![ObjectId([5; 32])],
            vec![Seal([6; 32])],
            vec![7; 90],
        );
        tls.snapshot_signer(signer_name).unwrap().attest(&mut rec, source, created, None).unwrap();
        rec
    }

    fn now_s() -> i64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    #[test]
    fn a_record_verifies_only_for_its_source_unaltered_and_unrevoked() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        crate::ca::init(&ca, "test-site", 365).unwrap();
        let a = node(&ca, "srv-a", false);
        let b = node(&ca, "srv-b", false);
        let now = SystemTime::now();
        let v = a.attest_verifier();
        let good = signed(&a, "srv-a", "srv-a", now_s() - 60);
        assert_eq!(v.verify(&good, "srv-a", now).unwrap().created, now_s() - 60);
        // round trip through the record bytes
        let (dec, _) = Record::decode(&good.encode()).unwrap();
        v.verify(&dec, "srv-a", now).unwrap();
        // offered under another namespace
        assert!(matches!(v.verify(&good, "srv-b", now), Err(AttestError::WrongSource { .. })));
        // srv-b signs a record that says it is srv-a's
        let forged = signed(&b, "srv-b", "srv-a", now_s());
        assert!(
            matches!(v.verify(&forged, "srv-a", now), Err(AttestError::Certificate { .. })),
            "{:?}",
            v.verify(&forged, "srv-a", now)
        );
        // any change to what is signed: a link's seal, the body
        let mut t = good.clone();
        t.seals[0].0[0] ^= 1;
        assert_eq!(v.verify(&t, "srv-a", now), Err(AttestError::BadSignature));
        let mut t = good.clone();
        t.body[0] ^= 1;
        assert_eq!(v.verify(&t, "srv-a", now), Err(AttestError::BadSignature));
        // unsigned, format 1, in the future, from another site
        let mut t = good.clone();
        t.attestation.clear();
        assert_eq!(v.verify(&t, "srv-a", now), Err(AttestError::Unsigned));
        let v1 = Record::v1(ObjectKind::Snapshot, ObjectId([4; 32]), vec![], vec![1; 40]);
        assert_eq!(v.verify(&v1, "srv-a", now), Err(AttestError::Format1));
        let future = signed(&a, "srv-a", "srv-a", now_s() + 3600);
        assert!(matches!(v.verify(&future, "srv-a", now), Err(AttestError::Future(_))));
        std::fs::create_dir_all(d.path().join("other")).unwrap();
        let other = d.path().join("other/ca");
        crate::ca::init(&other, "other-site", 365).unwrap();
        let stranger = node(&other, "srv-a", false);
        let foreign = signed(&stranger, "srv-a", "srv-a", now_s());
        assert!(matches!(v.verify(&foreign, "srv-a", now), Err(AttestError::Certificate { .. })));
        // once srv-a's certificate is revoked, what it signed before stays
        // valid, what it signs as made since is refused
        let before = signed(&a, "srv-a", "srv-a", now_s() - 30);
        crate::ca::revoke(&ca, "srv-a").unwrap();
        let c = node(&ca, "srv-c", true);
        c.attest_verifier().verify(&before, "srv-a", now).unwrap();
        let after = signed(&a, "srv-a", "srv-a", now_s() + 5);
        match c.attest_verifier().verify(&after, "srv-a", now + std::time::Duration::from_secs(10)) {
            Err(AttestError::Certificate { why, .. }) => assert!(why.contains("revoked"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
