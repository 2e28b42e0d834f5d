//! IKE_AUTH authentication data (RFC 7296 §2.15): the octets each side
//! signs or MACs, PSK AUTH, and public-key AUTH with X.509 certificates —
//! RFC 7427 digital signatures (method 14, with SIGNATURE_HASH_ALGORITHMS)
//! for ECDSA P-256/P-384, RSA PKCS#1 v1.5 and PSS, Ed25519 (RFC 8420), and,
//! when verifying, the older methods 1 (RSA, SHA-1) and 9/10 (ECDSA).

use crate::cert::{self, CertError, Certificate, Hash, SigAlg};
use crate::crypto::PrfAlg;
use crate::key::{KeyError, KeyKind, PrivateKey, RsaPadding, SignScheme};
use crate::wire::{auth_method, find_notify, notify, Identity, Message, Notify, Payload};
use std::sync::Arc;
use std::time::SystemTime;

/// CERT / CERTREQ encoding "X.509 Certificate - Signature" (§3.6).
pub const CERT_X509_SIGNATURE: u8 = 4;

/// IKEv2 auth methods 9, 10 (RFC 4754: ECDSA with SHA-256 on P-256, SHA-384 on P-384).
pub const ECDSA_SHA256_P256: u8 = 9;
pub const ECDSA_SHA384_P384: u8 = 10;

/// The wall clock certificates are checked against (a fixed time in tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The hashes we accept in RFC 7427 signatures, as sent in
/// SIGNATURE_HASH_ALGORITHMS: SHA2-256, SHA2-384, SHA2-512, Identity.
pub const OUR_HASHES: [Hash; 4] = [Hash::Sha256, Hash::Sha384, Hash::Sha512, Hash::Identity];

/// Public-key authentication: our key and certificate, the CAs we trust.
#[derive(Clone)]
pub struct PubkeyAuth {
    pub key: PrivateKey,
    /// Our certificate first, then intermediates to send along.
    pub certs: Vec<Certificate>,
    /// Trust anchors for the peer's chain; CERTREQ names them.
    pub cas: Vec<Certificate>,
    pub clock: Clock,
    /// Sign with RSASSA-PSS rather than PKCS#1 v1.5 (RSA keys only).
    pub rsa_pss: bool,
}

impl std::fmt::Debug for PubkeyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubkeyAuth")
            .field("key", &self.key)
            .field("certs", &self.certs)
            .field("cas", &self.cas)
            .field("rsa_pss", &self.rsa_pss)
            .finish_non_exhaustive()
    }
}

/// Why a [`PubkeyAuth`] cannot be built from what was configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error("no certificate")]
    NoCertificate,
    #[error("no CA certificate to check the peer's certificate against")]
    NoCa,
    #[error("the private key ({key}) does not belong to the certificate `{subject}`")]
    KeyMismatch { key: KeyKind, subject: String },
    #[error("`{subject}` is not a CA certificate (basicConstraints cA is not set)")]
    NotCa { subject: String },
    #[error(transparent)]
    Cert(#[from] CertError),
}

impl PubkeyAuth {
    /// Checks that `key` belongs to `certs[0]` and that every CA is one.
    pub fn new(
        key: PrivateKey,
        certs: Vec<Certificate>,
        cas: Vec<Certificate>,
        clock: Clock,
    ) -> Result<PubkeyAuth, SetupError> {
        let ours = certs.first().ok_or(SetupError::NoCertificate)?;
        let pk = ours.public_key()?;
        if pk.bits != key.public_key() {
            return Err(SetupError::KeyMismatch {
                key: key.kind(),
                subject: ours.subject_string(),
            });
        }
        if cas.is_empty() {
            return Err(SetupError::NoCa);
        }
        if let Some(c) = cas.iter().find(|c| !c.is_ca()) {
            return Err(SetupError::NotCa {
                subject: c.subject_string(),
            });
        }
        Ok(PubkeyAuth {
            key,
            certs,
            cas,
            clock,
            rsa_pss: false,
        })
    }

    /// Our identity as the certificate states it: its subject DN.
    pub fn subject_identity(&self) -> Identity {
        self.certs[0].subject_identity()
    }

    /// CERT payloads: our certificate, then the intermediates.
    pub fn cert_payloads(&self) -> Vec<Payload> {
        self.certs
            .iter()
            .map(|c| Payload::Cert {
                encoding: CERT_X509_SIGNATURE,
                data: c.der().to_vec(),
            })
            .collect()
    }

    /// One CERTREQ naming every CA we trust by the SHA-1 of its key (§3.7).
    pub fn certreq_payload(&self) -> Payload {
        Payload::CertReq {
            encoding: CERT_X509_SIGNATURE,
            data: self.cas.iter().flat_map(|c| c.spki_sha1()).collect(),
        }
    }
}

/// Why the peer's (or our own) public-key AUTH failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the peer authenticated with method {got}, expected {want}")]
    WrongMethod { got: u8, want: &'static str },
    #[error("the peer sent no X.509 certificate (CERT payload)")]
    NoCertificate,
    #[error("peer certificate refused: {0}")]
    Cert(#[from] CertError),
    #[error("the peer's identity `{id}` is not in its certificate `{subject}` (neither the subject nor a subjectAltName)")]
    IdentityNotInCertificate { id: String, subject: String },
    #[error("unsupported signature in AUTH: {0}")]
    UnsupportedSignature(String),
    #[error("the AUTH signature does not verify with the key of `{subject}`")]
    BadSignature { subject: String },
    #[error(
        "the peer accepts no signature hash our {0} key can sign with (SIGNATURE_HASH_ALGORITHMS)"
    )]
    NoCommonHash(KeyKind),
    #[error("signing failed: {0}")]
    Sign(KeyError),
}

/// The octets a side signs or MACs (§2.15): its own first message, the
/// other side's nonce and prf(SK_p, the body of its ID payload).
pub fn signed_octets(
    prf: PrfAlg,
    real_message: &[u8],
    peer_nonce: &[u8],
    sk_p: &[u8],
    id_body: &[u8],
) -> Vec<u8> {
    let maced_id = prf.prf(sk_p, &[id_body]);
    let mut v = Vec::with_capacity(real_message.len() + peer_nonce.len() + maced_id.len());
    v.extend_from_slice(real_message);
    v.extend_from_slice(peer_nonce);
    v.extend_from_slice(&maced_id);
    v
}

/// The SIGNATURE_HASH_ALGORITHMS notify we send (RFC 7427 §4).
pub fn hash_notify() -> Payload {
    Payload::Notify(Notify::new(
        notify::SIGNATURE_HASH_ALGORITHMS,
        OUR_HASHES
            .iter()
            .flat_map(|h| h.id().to_be_bytes())
            .collect(),
    ))
}

/// The hash numbers the peer announced in its IKE_SA_INIT message
/// (`None`: no SIGNATURE_HASH_ALGORITHMS, no RFC 7427).
pub fn peer_hashes(ike_sa_init: &[u8]) -> Option<Vec<u16>> {
    let m = Message::parse(ike_sa_init).ok()?;
    let n = find_notify(&m.payloads, notify::SIGNATURE_HASH_ALGORITHMS)?;
    Some(
        n.data
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    )
}

/// Signs `octets` for our AUTH payload: (method, data).
pub fn sign(
    p: &PubkeyAuth,
    octets: &[u8],
    peer_hashes: Option<&[u16]>,
) -> Result<(u8, Vec<u8>), AuthError> {
    let kind = p.key.kind();
    let has = |h: Hash| peer_hashes.is_some_and(|v| v.contains(&h.id()));
    let (alg, scheme) = match kind {
        KeyKind::EcdsaP256 if has(Hash::Sha256) => (
            SigAlg::Ecdsa(Hash::Sha256),
            SignScheme::Ecdsa { fixed: false },
        ),
        KeyKind::EcdsaP384 if has(Hash::Sha384) => (
            SigAlg::Ecdsa(Hash::Sha384),
            SignScheme::Ecdsa { fixed: false },
        ),
        // a peer without RFC 7427: the RFC 4754 methods
        KeyKind::EcdsaP256 | KeyKind::EcdsaP384 if peer_hashes.is_none() => {
            let method = if kind == KeyKind::EcdsaP256 {
                ECDSA_SHA256_P256
            } else {
                ECDSA_SHA384_P384
            };
            let sig = p
                .key
                .sign(SignScheme::Ecdsa { fixed: true }, octets)
                .map_err(AuthError::Sign)?;
            return Ok((method, sig));
        }
        KeyKind::Rsa(_) => {
            let h = [Hash::Sha256, Hash::Sha384, Hash::Sha512]
                .into_iter()
                .find(|h| has(*h))
                .ok_or(AuthError::NoCommonHash(kind))?;
            let pad = match (h, p.rsa_pss) {
                (Hash::Sha384, false) => RsaPadding::Pkcs1Sha384,
                (Hash::Sha512, false) => RsaPadding::Pkcs1Sha512,
                (_, false) => RsaPadding::Pkcs1Sha256,
                (Hash::Sha384, true) => RsaPadding::PssSha384,
                (Hash::Sha512, true) => RsaPadding::PssSha512,
                (_, true) => RsaPadding::PssSha256,
            };
            let alg = if p.rsa_pss {
                SigAlg::RsaPss(h)
            } else {
                SigAlg::RsaPkcs1(h)
            };
            (alg, SignScheme::Rsa(pad))
        }
        KeyKind::Ed25519 if has(Hash::Identity) => (SigAlg::Ed25519, SignScheme::Ed25519),
        _ => return Err(AuthError::NoCommonHash(kind)),
    };
    let sig = p.key.sign(scheme, octets).map_err(AuthError::Sign)?;
    let alg = alg.to_der();
    let mut data = Vec::with_capacity(1 + alg.len() + sig.len());
    data.push(alg.len() as u8);
    data.extend_from_slice(&alg);
    data.extend_from_slice(&sig);
    Ok((auth_method::DIGITAL_SIGNATURE, data))
}

/// Verifies the peer's public-key AUTH: its certificate chains to one of
/// our CAs now, names `peer_id`, and its key signed `octets`.
/// `certs`: the data of the peer's X.509 CERT payloads, its own first.
pub fn verify(
    p: &PubkeyAuth,
    peer_id: &Identity,
    method: u8,
    data: &[u8],
    octets: &[u8],
    certs: &[&[u8]],
) -> Result<(), AuthError> {
    if method == auth_method::SHARED_KEY_MIC {
        return Err(AuthError::WrongMethod {
            got: method,
            want: "a signature (certificates are configured)",
        });
    }
    let Some((first, rest)) = certs.split_first() else {
        return Err(AuthError::NoCertificate);
    };
    let end = Certificate::from_der(first.to_vec())?;
    let intermediates: Vec<Certificate> = rest
        .iter()
        .filter_map(|c| Certificate::from_der(c.to_vec()).ok())
        .collect();
    cert::verify_chain(&end, &intermediates, &p.cas, (p.clock)())?;
    let subject = end.subject_string();
    if !end.has_identity(peer_id) {
        return Err(AuthError::IdentityNotInCertificate {
            id: peer_id.to_string(),
            subject,
        });
    }
    let key = end.public_key()?;
    let (alg, sig) = match method {
        auth_method::DIGITAL_SIGNATURE => {
            let Some((&n, rest)) = data.split_first() else {
                return Err(AuthError::UnsupportedSignature("empty AUTH data".into()));
            };
            let n = n as usize;
            if rest.len() < n {
                return Err(AuthError::UnsupportedSignature(
                    "AlgorithmIdentifier longer than the AUTH data".into(),
                ));
            }
            let alg = SigAlg::from_der(&rest[..n]).ok_or_else(|| {
                AuthError::UnsupportedSignature(format!(
                    "AlgorithmIdentifier {}",
                    crate::wire::hex(&rest[..n])
                ))
            })?;
            if !OUR_HASHES.contains(&alg.hash()) {
                return Err(AuthError::UnsupportedSignature(format!(
                    "{alg:?} (a hash we did not announce)"
                )));
            }
            (alg, &rest[n..])
        }
        auth_method::RSA_SIG => (SigAlg::RsaPkcs1(Hash::Sha1), data),
        ECDSA_SHA256_P256 => (SigAlg::EcdsaFixed(Hash::Sha256), data),
        ECDSA_SHA384_P384 => (SigAlg::EcdsaFixed(Hash::Sha384), data),
        m => return Err(AuthError::UnsupportedSignature(format!("auth method {m}"))),
    };
    if !alg.verify(&key, octets, sig) {
        return Err(AuthError::BadSignature { subject });
    }
    Ok(())
}
