//! X.509 certificates for IKEv2 (RFC 7296 §3.6/§3.7, the RFC 4945 profile):
//! reading PEM/DER, the chain check against the configured CA certificates
//! (signatures, validity at a given time, basicConstraints, keyUsage,
//! unknown critical extensions), the match between a peer's IKE identity and
//! its certificate, CERTREQ key ids, and distinguished names in strongSwan's
//! notation (`C=CH, O=polytun, CN=moon`).
//!
//! Why x509-parser (and not rustls-webpki or x509-cert): IKE needs the raw
//! DER of the subject (ID_DER_ASN1_DN), of the SubjectPublicKeyInfo (the
//! SHA-1 of CERTREQ) and of the TBSCertificate (to verify with ring), and
//! needs to match DNs, RFC 822 names and addresses to identities; x509-parser
//! hands out all of those raw slices and every extension parsed. webpki
//! verifies chains well but only for TLS server/client usage (it wants an
//! EKU when one is present and cannot match DN or e-mail identities), and
//! `pki`-made certificates often carry no EKU at all. Signatures are checked
//! with ring, the workspace's crypto, never by the parser.

use crate::key::{der, KeyKind, OID_EC_PUBLIC_KEY, OID_ED25519, OID_P256, OID_P384, OID_RSA};
use crate::wire::Identity;
use ring::signature;
use sha1::Digest;
use std::time::{SystemTime, UNIX_EPOCH};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// Longest chain accepted (end entity + intermediates + anchor).
const MAX_DEPTH: usize = 8;

/// Why a certificate or chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("malformed certificate: {0}")]
    Malformed(String),
    #[error("certificate `{subject}` expired at {not_after}")]
    Expired { subject: String, not_after: String },
    #[error("certificate `{subject}` is not valid before {not_before}")]
    NotYetValid { subject: String, not_before: String },
    #[error("certificate `{subject}` is issued by `{issuer}`, which is neither a configured CA nor an intermediate the peer sent")]
    UnknownIssuer { subject: String, issuer: String },
    #[error("the signature on certificate `{subject}` does not verify with the key of `{issuer}`")]
    BadSignature { subject: String, issuer: String },
    #[error("`{subject}` issues certificates but is not a CA (basicConstraints cA is not set)")]
    NotCa { subject: String },
    #[error("`{subject}`: chain longer than its basicConstraints pathLenConstraint allows")]
    PathLen { subject: String },
    #[error("`{subject}`: keyUsage does not allow {usage}")]
    KeyUsage {
        subject: String,
        usage: &'static str,
    },
    #[error("`{subject}` has an unsupported critical extension {oid}")]
    UnsupportedCritical { subject: String, oid: String },
    #[error("`{subject}`: unsupported algorithm: {what}")]
    UnsupportedAlgorithm { subject: String, what: String },
    #[error("certificate chain longer than {MAX_DEPTH}")]
    ChainTooLong,
}

/// One certificate (its DER; parsed when used).
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Certificate({})", self.subject_string())
    }
}

/// A public key: its kind and the subjectPublicKey bits (an uncompressed
/// EC point, an RSAPublicKey DER, or 32 Ed25519 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: KeyKind,
    pub bits: Vec<u8>,
}

fn malformed(e: impl std::fmt::Display) -> CertError {
    CertError::Malformed(e.to_string())
}

impl Certificate {
    pub fn from_der(der: Vec<u8>) -> Result<Certificate, CertError> {
        let c = Certificate { der };
        {
            let x = c.parsed()?;
            public_key(&x)?;
        }
        Ok(c)
    }

    /// Every certificate in PEM text (`CERTIFICATE` blocks, in order), or
    /// one DER certificate.
    pub fn all_from_pem_or_der(data: &[u8]) -> Result<Vec<Certificate>, CertError> {
        if !data.windows(11).any(|w| w == b"-----BEGIN ") {
            return Ok(vec![Certificate::from_der(data.to_vec())?]);
        }
        let blocks = pem::parse_many(data).map_err(|e| malformed(format!("PEM: {e}")))?;
        let certs: Vec<Certificate> = blocks
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE" || b.tag() == "X509 CERTIFICATE")
            .map(|b| Certificate::from_der(b.into_contents()))
            .collect::<Result<_, _>>()?;
        if certs.is_empty() {
            return Err(malformed("no CERTIFICATE block in the PEM text"));
        }
        Ok(certs)
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    fn parsed(&self) -> Result<X509Certificate<'_>, CertError> {
        match X509Certificate::from_der(&self.der) {
            Ok(([], c)) => Ok(c),
            Ok(_) => Err(malformed("trailing bytes after the certificate")),
            Err(e) => Err(malformed(e)),
        }
    }

    /// The subject as an ID_DER_ASN1_DN identity (its exact DER).
    pub fn subject_identity(&self) -> Identity {
        Identity::DerDn(
            self.parsed()
                .map(|c| c.subject().as_raw().to_vec())
                .unwrap_or_default(),
        )
    }

    /// The subject in strongSwan notation.
    pub fn subject_string(&self) -> String {
        self.parsed()
            .map(|c| name_to_string(c.subject()))
            .unwrap_or_else(|_| "<malformed>".into())
    }

    pub fn public_key(&self) -> Result<PublicKey, CertError> {
        public_key(&self.parsed()?)
    }

    /// SHA-1 of the DER SubjectPublicKeyInfo: the CA's key id in CERTREQ (§3.7).
    pub fn spki_sha1(&self) -> [u8; 20] {
        let spki = self
            .parsed()
            .map(|c| c.public_key().raw.to_vec())
            .unwrap_or_default();
        sha1::Sha1::digest(&spki).into()
    }

    /// Is basicConstraints cA set?
    pub fn is_ca(&self) -> bool {
        self.parsed()
            .is_ok_and(|c| matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca))
    }

    /// Does this certificate name `id` (subject DN, or a subjectAltName of
    /// the identity's type)? KEY_ID and other types never match.
    pub fn has_identity(&self, id: &Identity) -> bool {
        let Ok(c) = self.parsed() else {
            return false;
        };
        let sans: Vec<GeneralName<'_>> = match c.subject_alternative_name() {
            Ok(Some(s)) => s.value.general_names.clone(),
            _ => vec![],
        };
        match id {
            Identity::DerDn(dn) => {
                dn_eq(c.subject().as_raw(), dn)
                    || sans.iter().any(|g| {
                        matches!(g, GeneralName::DirectoryName(n) if dn_eq(n.as_raw(), dn))
                    })
            }
            Identity::Fqdn(f) => sans.iter().any(|g| {
                matches!(g, GeneralName::DNSName(d) if d.trim_end_matches('.').eq_ignore_ascii_case(f.trim_end_matches('.')))
            }),
            Identity::Rfc822(m) => {
                sans.iter()
                    .any(|g| matches!(g, GeneralName::RFC822Name(e) if e.eq_ignore_ascii_case(m)))
                    || c.subject()
                        .iter_email()
                        .any(|e| e.as_str().is_ok_and(|e| e.eq_ignore_ascii_case(m)))
            }
            Identity::Ipv4(a) => sans
                .iter()
                .any(|g| matches!(g, GeneralName::IPAddress(b) if *b == a.octets())),
            Identity::Ipv6(a) => sans
                .iter()
                .any(|g| matches!(g, GeneralName::IPAddress(b) if *b == a.octets())),
            _ => false,
        }
    }
}

fn public_key(c: &X509Certificate<'_>) -> Result<PublicKey, CertError> {
    let spki = c.public_key();
    let subject = || name_to_string(c.subject());
    let bits = spki.subject_public_key.data.to_vec();
    let params = spki
        .algorithm
        .parameters
        .as_ref()
        .map(|p| p.data.to_vec())
        .unwrap_or_default();
    let kind = match spki.algorithm.algorithm.as_bytes() {
        OID_EC_PUBLIC_KEY => match &params[..] {
            OID_P256 => KeyKind::EcdsaP256,
            OID_P384 => KeyKind::EcdsaP384,
            _ => {
                return Err(CertError::UnsupportedAlgorithm {
                    subject: subject(),
                    what: "EC curve (P-256 and P-384 are supported)".into(),
                })
            }
        },
        OID_RSA => {
            let n = der::expect(der::SEQUENCE, &bits)
                .and_then(|(s, _)| der::expect(der::INTEGER, s))
                .map(|(n, _)| n)
                .ok_or_else(|| malformed("RSA public key"))?;
            let n = n.strip_prefix(&[0]).unwrap_or(n);
            KeyKind::Rsa(n.len() * 8)
        }
        OID_ED25519 => KeyKind::Ed25519,
        _ => {
            return Err(CertError::UnsupportedAlgorithm {
                subject: subject(),
                what: format!("public key {}", spki.algorithm.algorithm),
            })
        }
    };
    Ok(PublicKey { kind, bits })
}

// ------------------------------------------------------------ signatures

/// Hash functions of signatures, with their RFC 7427 numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
    /// No hash (Ed25519 signs the message itself, RFC 8420).
    Identity,
}

impl Hash {
    /// The SIGNATURE_HASH_ALGORITHMS number (RFC 7427 §4, RFC 8420).
    pub fn id(self) -> u16 {
        match self {
            Hash::Sha1 => 1,
            Hash::Sha256 => 2,
            Hash::Sha384 => 3,
            Hash::Sha512 => 4,
            Hash::Identity => 5,
        }
    }

    fn from_oid(oid: &[u8]) -> Option<Hash> {
        Some(match oid {
            [0x2b, 0x0e, 0x03, 0x02, 0x1a] => Hash::Sha1,
            [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01] => Hash::Sha256,
            [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02] => Hash::Sha384,
            [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03] => Hash::Sha512,
            _ => return None,
        })
    }
}

/// A signature algorithm (of a certificate, or of an RFC 7427 AUTH payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigAlg {
    RsaPkcs1(Hash),
    /// RSASSA-PSS with MGF1 of the same hash and a salt of the hash's length.
    RsaPss(Hash),
    /// ECDSA, DER-encoded (r, s).
    Ecdsa(Hash),
    /// ECDSA, r | s of fixed size (IKEv2 auth methods 9/10).
    EcdsaFixed(Hash),
    Ed25519,
}

const PKCS1: [u8; 8] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
const ECDSA_SIG: [u8; 6] = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
const OID_MGF1: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];

impl SigAlg {
    /// Parses a DER AlgorithmIdentifier; `None`: not one we verify.
    pub fn from_der(alg: &[u8]) -> Option<SigAlg> {
        let (seq, rest) = der::expect(der::SEQUENCE, alg)?;
        if !rest.is_empty() {
            return None;
        }
        let (oid, params) = der::expect(der::OID, seq)?;
        if let Some(n) = oid.strip_prefix(&PKCS1[..]) {
            return match n {
                [5] => Some(SigAlg::RsaPkcs1(Hash::Sha1)),
                [11] => Some(SigAlg::RsaPkcs1(Hash::Sha256)),
                [12] => Some(SigAlg::RsaPkcs1(Hash::Sha384)),
                [13] => Some(SigAlg::RsaPkcs1(Hash::Sha512)),
                [10] => pss_params(params).map(SigAlg::RsaPss),
                _ => None,
            };
        }
        if let Some(n) = oid.strip_prefix(&ECDSA_SIG[..]) {
            return match n {
                [1] => Some(SigAlg::Ecdsa(Hash::Sha1)),
                [3, 2] => Some(SigAlg::Ecdsa(Hash::Sha256)),
                [3, 3] => Some(SigAlg::Ecdsa(Hash::Sha384)),
                [3, 4] => Some(SigAlg::Ecdsa(Hash::Sha512)),
                _ => None,
            };
        }
        (oid == OID_ED25519).then_some(SigAlg::Ed25519)
    }

    /// The DER AlgorithmIdentifier (the RFC 7427 Appendix A encodings).
    pub fn to_der(self) -> Vec<u8> {
        fn hash_oid(h: Hash) -> &'static [u8] {
            match h {
                Hash::Sha384 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02],
                Hash::Sha512 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03],
                _ => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01],
            }
        }
        fn alg_id(oid: &[u8], null: bool, out: &mut Vec<u8>) {
            let mut v = Vec::new();
            der::write(der::OID, oid, &mut v);
            if null {
                v.extend_from_slice(&[0x05, 0x00]);
            }
            der::write(der::SEQUENCE, &v, out);
        }
        let mut out = Vec::new();
        match self {
            SigAlg::RsaPkcs1(h) => {
                let n = match h {
                    Hash::Sha1 => 5,
                    Hash::Sha384 => 12,
                    Hash::Sha512 => 13,
                    _ => 11,
                };
                let mut oid = PKCS1.to_vec();
                oid.push(n);
                alg_id(&oid, true, &mut out);
            }
            SigAlg::RsaPss(h) => {
                let mut hash = Vec::new();
                alg_id(hash_oid(h), true, &mut hash);
                let mut mgf = Vec::new();
                der::write(der::OID, &OID_MGF1, &mut mgf);
                mgf.extend_from_slice(&hash);
                let mut mgf_id = Vec::new();
                der::write(der::SEQUENCE, &mgf, &mut mgf_id);
                let salt = match h {
                    Hash::Sha384 => 48u8,
                    Hash::Sha512 => 64,
                    _ => 32,
                };
                let mut params = Vec::new();
                der::write(0xa0, &hash, &mut params);
                der::write(0xa1, &mgf_id, &mut params);
                der::write(0xa2, &[der::INTEGER, 1, salt], &mut params);
                // trailerField 1 is the DEFAULT, but RFC 7427 Appendix A spells it out
                der::write(0xa3, &[der::INTEGER, 1, 1], &mut params);
                let mut v = Vec::new();
                let mut oid = PKCS1.to_vec();
                oid.push(10);
                der::write(der::OID, &oid, &mut v);
                der::write(der::SEQUENCE, &params, &mut v);
                der::write(der::SEQUENCE, &v, &mut out);
            }
            SigAlg::Ecdsa(h) | SigAlg::EcdsaFixed(h) => {
                let mut oid = ECDSA_SIG.to_vec();
                oid.extend_from_slice(match h {
                    Hash::Sha1 => &[1][..],
                    Hash::Sha384 => &[3, 3],
                    Hash::Sha512 => &[3, 4],
                    _ => &[3, 2],
                });
                alg_id(&oid, false, &mut out);
            }
            SigAlg::Ed25519 => alg_id(OID_ED25519, false, &mut out),
        }
        out
    }

    /// The hash, for SIGNATURE_HASH_ALGORITHMS.
    pub fn hash(self) -> Hash {
        match self {
            SigAlg::RsaPkcs1(h) | SigAlg::RsaPss(h) | SigAlg::Ecdsa(h) | SigAlg::EcdsaFixed(h) => h,
            SigAlg::Ed25519 => Hash::Identity,
        }
    }

    /// Verifies `sig` over `msg` with `key`; `false` also when the pair of
    /// algorithm and key is not one ring supports.
    pub fn verify(self, key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
        use signature as s;
        let alg: &'static dyn s::VerificationAlgorithm = match (self, key.kind) {
            (SigAlg::RsaPkcs1(h), KeyKind::Rsa(_)) => match h {
                Hash::Sha1 => &s::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                Hash::Sha256 => &s::RSA_PKCS1_2048_8192_SHA256,
                Hash::Sha384 => &s::RSA_PKCS1_2048_8192_SHA384,
                Hash::Sha512 => &s::RSA_PKCS1_2048_8192_SHA512,
                Hash::Identity => return false,
            },
            (SigAlg::RsaPss(h), KeyKind::Rsa(_)) => match h {
                Hash::Sha256 => &s::RSA_PSS_2048_8192_SHA256,
                Hash::Sha384 => &s::RSA_PSS_2048_8192_SHA384,
                Hash::Sha512 => &s::RSA_PSS_2048_8192_SHA512,
                _ => return false,
            },
            (SigAlg::Ecdsa(h), KeyKind::EcdsaP256) => match h {
                Hash::Sha256 => &s::ECDSA_P256_SHA256_ASN1,
                Hash::Sha384 => &s::ECDSA_P256_SHA384_ASN1,
                _ => return false,
            },
            (SigAlg::Ecdsa(h), KeyKind::EcdsaP384) => match h {
                Hash::Sha256 => &s::ECDSA_P384_SHA256_ASN1,
                Hash::Sha384 => &s::ECDSA_P384_SHA384_ASN1,
                _ => return false,
            },
            (SigAlg::EcdsaFixed(Hash::Sha256), KeyKind::EcdsaP256) => &s::ECDSA_P256_SHA256_FIXED,
            (SigAlg::EcdsaFixed(Hash::Sha384), KeyKind::EcdsaP384) => &s::ECDSA_P384_SHA384_FIXED,
            (SigAlg::Ed25519, KeyKind::Ed25519) => &s::ED25519,
            _ => return false,
        };
        s::UnparsedPublicKey::new(alg, &key.bits)
            .verify(msg, sig)
            .is_ok()
    }
}

/// RSASSA-PSS-params (RFC 4055): the hash, if MGF1 uses the same hash and
/// the salt is as long as the hash (what ring verifies).
fn pss_params(p: &[u8]) -> Option<Hash> {
    let (mut seq, _) = der::expect(der::SEQUENCE, p)?;
    let (mut hash, mut mgf_hash, mut salt) = (Hash::Sha1, Hash::Sha1, 20u32);
    let alg_hash = |v: &[u8]| {
        let (a, _) = der::expect(der::SEQUENCE, v)?;
        let (oid, _) = der::expect(der::OID, a)?;
        Some((oid.to_vec(), a.to_vec()))
    };
    while let Some((tag, v, rest)) = der::tlv(seq) {
        match tag {
            0xa0 => hash = Hash::from_oid(&alg_hash(v)?.0)?,
            0xa1 => {
                let (oid, a) = alg_hash(v)?;
                if oid != OID_MGF1 {
                    return None;
                }
                let (_, params) = der::expect(der::OID, &a)?;
                mgf_hash = Hash::from_oid(&alg_hash(params)?.0)?;
            }
            0xa2 => {
                let (i, _) = der::expect(der::INTEGER, v)?;
                if i.is_empty() || i.len() > 2 {
                    return None;
                }
                salt = i.iter().fold(0, |a, &x| (a << 8) | x as u32);
            }
            0xa3 => {
                if der::expect(der::INTEGER, v)?.0 != [1] {
                    return None;
                }
            }
            _ => return None,
        }
        seq = rest;
    }
    let want = match hash {
        Hash::Sha256 => 32,
        Hash::Sha384 => 48,
        Hash::Sha512 => 64,
        _ => return None,
    };
    (mgf_hash == hash && salt == want).then_some(hash)
}

/// The signatureAlgorithm DER of a certificate (second element of the outer SEQUENCE).
fn cert_sig_alg(der: &[u8]) -> Option<&[u8]> {
    let (outer, _) = der::expect(der::SEQUENCE, der)?;
    let (_, rest) = der::split(outer)?;
    let (alg, _) = der::split(rest)?;
    Some(alg)
}

// ------------------------------------------------------------ chain

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn check_cert(c: &X509Certificate<'_>, now: i64, is_issuer: bool) -> Result<(), CertError> {
    let subject = || name_to_string(c.subject());
    let v = c.validity();
    if now < v.not_before.timestamp() {
        return Err(CertError::NotYetValid {
            subject: subject(),
            not_before: v.not_before.to_string(),
        });
    }
    if now > v.not_after.timestamp() {
        return Err(CertError::Expired {
            subject: subject(),
            not_after: v.not_after.to_string(),
        });
    }
    for ext in c.extensions() {
        if ext.critical {
            if let ParsedExtension::UnsupportedExtension { oid } = ext.parsed_extension() {
                return Err(CertError::UnsupportedCritical {
                    subject: subject(),
                    oid: oid.to_id_string(),
                });
            }
            // parsed but not enforced here: refusing beats ignoring them
            if matches!(
                ext.parsed_extension(),
                ParsedExtension::NameConstraints(_)
                    | ParsedExtension::PolicyConstraints(_)
                    | ParsedExtension::PolicyMappings(_)
                    | ParsedExtension::InhibitAnyPolicy(_)
            ) {
                return Err(CertError::UnsupportedCritical {
                    subject: subject(),
                    oid: ext.oid.to_id_string(),
                });
            }
            if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
                return Err(malformed(format!(
                    "critical extension {}: {error}",
                    ext.oid
                )));
            }
        }
    }
    match c.key_usage() {
        Ok(Some(ku)) if is_issuer && !ku.value.key_cert_sign() => {
            return Err(CertError::KeyUsage {
                subject: subject(),
                usage: "keyCertSign",
            })
        }
        Ok(Some(ku))
            if !is_issuer && !ku.value.digital_signature() && !ku.value.non_repudiation() =>
        {
            return Err(CertError::KeyUsage {
                subject: subject(),
                usage: "digitalSignature",
            })
        }
        Err(e) => return Err(malformed(e)),
        _ => {}
    }
    Ok(())
}

/// Checks that `end` chains to one of `cas` at time `now`, through
/// `intermediates` (certificates the peer sent besides its own).
pub fn verify_chain(
    end: &Certificate,
    intermediates: &[Certificate],
    cas: &[Certificate],
    now: SystemTime,
) -> Result<(), CertError> {
    let now = unix_secs(now);
    check_cert(&end.parsed()?, now, false)?;
    let mut cur = end.clone();
    // intermediates below the next issuer (for pathLenConstraint)
    let mut below = 0u32;
    for _ in 0..MAX_DEPTH {
        let next = {
            let c = cur.parsed()?;
            let subject = name_to_string(c.subject());
            let sig_alg = cert_sig_alg(&cur.der)
                .and_then(SigAlg::from_der)
                .filter(|a| a.hash() != Hash::Sha1)
                .ok_or_else(|| CertError::UnsupportedAlgorithm {
                    subject: subject.clone(),
                    what: format!("signature {}", c.signature_algorithm.algorithm),
                })?;
            let tbs = c.tbs_certificate.as_ref();
            let sig = &c.signature_value.data;
            let mut bad_sig = None;
            let mut found = None;
            // trust anchors first, then what the peer sent
            let cands = cas
                .iter()
                .map(|x| (true, x))
                .chain(intermediates.iter().map(|x| (false, x)));
            for (anchor, cand) in cands {
                let Ok(ic) = cand.parsed() else { continue };
                if !dn_eq(ic.subject().as_raw(), c.issuer().as_raw()) {
                    continue;
                }
                let isub = name_to_string(ic.subject());
                if !public_key(&ic).is_ok_and(|k| sig_alg.verify(&k, tbs, sig)) {
                    bad_sig.get_or_insert(CertError::BadSignature {
                        subject: subject.clone(),
                        issuer: isub,
                    });
                    continue;
                }
                check_cert(&ic, now, true)?;
                match ic.basic_constraints().map_err(malformed)? {
                    Some(bc) if bc.value.ca => {
                        if bc.value.path_len_constraint.is_some_and(|l| below > l) {
                            return Err(CertError::PathLen { subject: isub });
                        }
                    }
                    _ => return Err(CertError::NotCa { subject: isub }),
                }
                if anchor {
                    return Ok(());
                }
                found = Some(cand.clone());
                break;
            }
            match found {
                Some(n) => n,
                None => {
                    return Err(bad_sig.unwrap_or_else(|| CertError::UnknownIssuer {
                        subject,
                        issuer: name_to_string(c.issuer()),
                    }))
                }
            }
        };
        cur = next;
        below += 1;
    }
    Err(CertError::ChainTooLong)
}

// ------------------------------------------------------------ names

/// (short name, OID bytes) of the DN attributes strongSwan knows by name.
const ATTRS: &[(&str, &[u8])] = &[
    ("C", &[0x55, 0x04, 0x06]),
    ("ST", &[0x55, 0x04, 0x08]),
    ("L", &[0x55, 0x04, 0x07]),
    ("O", &[0x55, 0x04, 0x0a]),
    ("OU", &[0x55, 0x04, 0x0b]),
    ("CN", &[0x55, 0x04, 0x03]),
    ("SN", &[0x55, 0x04, 0x04]),
    ("serialNumber", &[0x55, 0x04, 0x05]),
    ("T", &[0x55, 0x04, 0x0c]),
    ("G", &[0x55, 0x04, 0x2a]),
    ("I", &[0x55, 0x04, 0x2b]),
    ("dnQualifier", &[0x55, 0x04, 0x2e]),
    ("pseudonym", &[0x55, 0x04, 0x41]),
    ("E", &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
    (
        "DC",
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
    ),
    (
        "UID",
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
    ),
];
/// Other spellings strongSwan and openssl accept.
const ALIASES: &[(&str, &str)] = &[
    ("S", "ST"),
    ("N", "CN"),
    ("GN", "G"),
    ("title", "T"),
    ("Email", "E"),
    ("emailAddress", "E"),
    ("email", "E"),
];

fn is_printable(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b))
}

/// Encodes a DN in strongSwan notation (`C=CH, O=polytun, CN=moon`; `,`
/// or `/` between attributes, `\,` for a literal comma) as DER, one
/// attribute per RDN, PrintableString where it fits, else UTF8String
/// (IA5String for E and DC), as strongSwan does.
pub fn dn_from_str(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let (body, sep) = match s.strip_prefix('/') {
        Some(b) => (b, '/'),
        None => (s, ','),
    };
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut esc = false;
    for ch in body.chars() {
        if esc {
            cur.push(ch);
            esc = false;
        } else if ch == '\\' {
            esc = true;
        } else if ch == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    parts.push(cur);
    let mut rdns = Vec::new();
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let Some((k, v)) = p.split_once('=') else {
            return Err(format!("`{p}` in the DN is not key=value"));
        };
        let (k, v) = (k.trim(), v.trim());
        let name = ALIASES
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(k))
            .map_or(k, |(_, n)| n);
        let Some((name, oid)) = ATTRS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
            return Err(format!(
                "unknown DN attribute `{k}` (known: C, ST, L, O, OU, CN, SN, serialNumber, T, G, I, E, DC, UID)"
            ));
        };
        if v.is_empty() {
            return Err(format!("empty value for `{k}` in the DN"));
        }
        let tag = match *name {
            "E" | "DC" if v.is_ascii() => 0x16,
            _ if is_printable(v) => 0x13,
            _ => 0x0c,
        };
        let mut atv = Vec::new();
        der::write(der::OID, oid, &mut atv);
        der::write(tag, v.as_bytes(), &mut atv);
        let mut seq = Vec::new();
        der::write(der::SEQUENCE, &atv, &mut seq);
        der::write(0x31, &seq, &mut rdns);
    }
    if rdns.is_empty() {
        return Err("empty distinguished name".into());
    }
    let mut out = Vec::new();
    der::write(der::SEQUENCE, &rdns, &mut out);
    Ok(out)
}

fn attr_name(oid: &[u8]) -> Option<&'static str> {
    ATTRS.iter().find(|(_, o)| *o == oid).map(|(n, _)| *n)
}

fn name_to_string(n: &X509Name<'_>) -> String {
    let mut parts = Vec::new();
    for rdn in n.iter_rdn() {
        for a in rdn.iter() {
            let k = attr_name(a.attr_type().as_bytes())
                .map(str::to_string)
                .unwrap_or_else(|| a.attr_type().to_id_string());
            let v = match a.as_str() {
                Ok(s) => s.replace(',', "\\,"),
                Err(_) => format!("#{}", crate::wire::hex(a.as_slice())),
            };
            parts.push(format!("{k}={v}"));
        }
    }
    parts.join(", ")
}

/// A DER DN in strongSwan notation; `None` if it does not parse.
pub fn dn_to_string(der: &[u8]) -> Option<String> {
    match X509Name::from_der(der) {
        Ok(([], n)) => Some(name_to_string(&n)),
        _ => None,
    }
}

/// Compares two DER DNs attribute by attribute: same types in the same
/// order, string values equal ignoring ASCII case and the string type
/// (PrintableString vs UTF8String), as RFC 5280 §7.1 and strongSwan do;
/// `*` as a whole value in `pattern` matches any value.
fn dn_cmp(pattern: &[u8], dn: &[u8], wildcards: bool) -> bool {
    if pattern == dn {
        return true;
    }
    let (Ok((_, a)), Ok((_, b))) = (X509Name::from_der(pattern), X509Name::from_der(dn)) else {
        return false;
    };
    let av: Vec<_> = a.iter_attributes().collect();
    let bv: Vec<_> = b.iter_attributes().collect();
    av.len() == bv.len()
        && a.iter_rdn().count() == b.iter_rdn().count()
        && av.iter().zip(&bv).all(|(x, y)| {
            x.attr_type() == y.attr_type()
                && match (x.as_str(), y.as_str()) {
                    (Ok("*"), _) if wildcards => true,
                    (Ok(p), Ok(q)) => p.trim().eq_ignore_ascii_case(q.trim()),
                    _ => x.as_slice() == y.as_slice(),
                }
        })
}

/// Are these two DER DNs the same name?
pub fn dn_eq(a: &[u8], b: &[u8]) -> bool {
    dn_cmp(a, b, false)
}

/// Does the peer's identity match the configured one? DNs compare as names
/// (with `*` values as wildcards), FQDNs and RFC 822 names ignoring case,
/// the rest byte for byte.
pub fn identity_matches(configured: &Identity, peer: &Identity) -> bool {
    match (configured, peer) {
        (Identity::DerDn(c), Identity::DerDn(p)) => dn_cmp(c, p, true),
        (Identity::Fqdn(c), Identity::Fqdn(p)) => c
            .trim_end_matches('.')
            .eq_ignore_ascii_case(p.trim_end_matches('.')),
        (Identity::Rfc822(c), Identity::Rfc822(p)) => c.eq_ignore_ascii_case(p),
        (c, p) => c == p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_strings_roundtrip_and_compare() {
        let d = dn_from_str("C=CH, O=polytun, CN=moon").unwrap();
        assert_eq!(dn_to_string(&d).unwrap(), "C=CH, O=polytun, CN=moon");
        let d2 = dn_from_str("/C=ch/O=Polytun/CN=MOON").unwrap();
        assert!(dn_eq(&d, &d2));
        let other = dn_from_str("C=CH, O=polytun, CN=sun").unwrap();
        assert!(!dn_eq(&d, &other));
        let wild = dn_from_str("C=CH, O=polytun, CN=*").unwrap();
        assert!(identity_matches(
            &Identity::DerDn(wild.clone()),
            &Identity::DerDn(d.clone())
        ));
        assert!(!dn_eq(&wild, &d));
        let longer = dn_from_str("C=CH, O=polytun, OU=x, CN=moon").unwrap();
        assert!(!dn_eq(&d, &longer));
        assert!(dn_from_str("X=1").is_err());
        assert!(dn_from_str("CN").is_err());
        let e = dn_from_str("CN=a\\, b, E=a@b.c").unwrap();
        assert_eq!(dn_to_string(&e).unwrap(), "CN=a\\, b, E=a@b.c");
    }

    #[test]
    fn sig_alg_encodings_match_rfc7427() {
        // RFC 7427 Appendix A
        let ecdsa256 = [
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
        ];
        assert_eq!(SigAlg::Ecdsa(Hash::Sha256).to_der(), ecdsa256);
        let rsa256 = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05,
            0x00,
        ];
        assert_eq!(SigAlg::RsaPkcs1(Hash::Sha256).to_der(), rsa256);
        let pss256: [u8; 72] = [
            0x30, 0x46, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30,
            0x39, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04,
            0x02, 0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
            0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
            0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x20, 0xa3, 0x03, 0x02,
            0x01, 0x01,
        ];
        assert_eq!(SigAlg::RsaPss(Hash::Sha256).to_der(), pss256);
        let ed = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
        assert_eq!(SigAlg::Ed25519.to_der(), ed);
        for a in [
            SigAlg::Ecdsa(Hash::Sha256),
            SigAlg::Ecdsa(Hash::Sha384),
            SigAlg::Ecdsa(Hash::Sha512),
            SigAlg::RsaPkcs1(Hash::Sha256),
            SigAlg::RsaPkcs1(Hash::Sha384),
            SigAlg::RsaPkcs1(Hash::Sha512),
            SigAlg::RsaPss(Hash::Sha256),
            SigAlg::RsaPss(Hash::Sha384),
            SigAlg::RsaPss(Hash::Sha512),
            SigAlg::Ed25519,
        ] {
            assert_eq!(SigAlg::from_der(&a.to_der()), Some(a), "{a:?}");
        }
        // truncations never panic
        for n in 0..pss256.len() {
            let _ = SigAlg::from_der(&pss256[..n]);
        }
    }
}
