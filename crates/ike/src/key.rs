//! Private keys for IKEv2 signature authentication: read from PEM or DER as
//! `pki --gen` and openssl write them (PKCS#8 `PRIVATE KEY`, SEC1
//! `EC PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`), kept zeroized, and turned
//! into a ring key pair only for the moment of signing.
//!
//! Why the key material is kept as bytes and not as a ring key pair: ring's
//! key pairs do not wipe their memory on drop, while `Zeroizing` does; an
//! IKE SA signs once per IKE_AUTH, so re-creating the key pair then costs
//! little and leaves the long-lived copy wiped on drop.

use ring::signature::{self, KeyPair};
use zeroize::Zeroizing;

/// Why a private key could not be loaded or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM or DER private key: {0}")]
    Format(String),
    #[error("unsupported key type: {0}")]
    Unsupported(String),
    #[error("the key is invalid: {0}")]
    Invalid(String),
    #[error("the private key does not belong to the certificate")]
    CertMismatch,
}

/// The kinds of keys IKE signature authentication supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    /// RSA, modulus size in bits.
    Rsa(usize),
    Ed25519,
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::EcdsaP256 => write!(f, "ECDSA P-256"),
            KeyKind::EcdsaP384 => write!(f, "ECDSA P-384"),
            KeyKind::Rsa(b) => write!(f, "RSA-{b}"),
            KeyKind::Ed25519 => write!(f, "Ed25519"),
        }
    }
}

/// A private key (zeroized on drop).
#[derive(Clone)]
pub struct PrivateKey {
    kind: KeyKind,
    /// ECDSA: the private scalar; RSA: the PKCS#1 RSAPrivateKey DER;
    /// Ed25519: the 32-byte seed.
    secret: Zeroizing<Vec<u8>>,
    /// ECDSA: the uncompressed point; RSA: the RSAPublicKey DER; Ed25519: 32 bytes.
    /// (The same bytes as a certificate's subjectPublicKey BIT STRING.)
    public: Vec<u8>,
}

/// Equal when the public halves are (which determine the private ones);
/// never compares secret bytes.
impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.public == other.public
    }
}
impl Eq for PrivateKey {}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({}, <redacted>)", self.kind)
    }
}

pub(crate) const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
pub(crate) const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub(crate) const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
pub(crate) const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
pub(crate) const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// A minimal DER reader: enough for PKCS#8, SEC1 and PKCS#1 wrappers.
pub(crate) mod der {
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;

    /// Reads one TLV; returns (tag, value, rest). Definite lengths only.
    pub fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&l0, b) = b.split_first()?;
        let (len, b) = if l0 < 0x80 {
            (l0 as usize, b)
        } else {
            let n = (l0 & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
            (len, &b[n..])
        };
        if b.len() < len {
            return None;
        }
        Some((tag, &b[..len], &b[len..]))
    }

    /// Splits off the first whole TLV: (its bytes, the rest).
    pub fn split(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let (_, _, rest) = tlv(b)?;
        Some((&b[..b.len() - rest.len()], rest))
    }

    /// Reads a TLV that must have `tag`.
    pub fn expect(tag: u8, b: &[u8]) -> Option<(&[u8], &[u8])> {
        match tlv(b)? {
            (t, v, rest) if t == tag => Some((v, rest)),
            _ => None,
        }
    }

    /// Writes a TLV.
    pub fn write(tag: u8, value: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        let n = value.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = (n as u32).to_be_bytes();
            let skip = bytes.iter().take_while(|&&x| x == 0).count();
            out.push(0x80 | (4 - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(value);
    }
}

fn fmt_err(what: &str) -> KeyError {
    KeyError::Format(what.to_string())
}

impl PrivateKey {
    /// Reads a key from PEM text (the first private-key block) or raw DER.
    pub fn from_pem_or_der(data: &[u8]) -> Result<PrivateKey, KeyError> {
        let is_pem = data.windows(11).any(|w| w == b"-----BEGIN ");
        if !is_pem {
            return Self::from_der_any(data);
        }
        let blocks = pem::parse_many(data).map_err(|e| KeyError::Format(format!("PEM: {e}")))?;
        for b in blocks {
            let tag = b.tag().to_string();
            // the decoded key lives only in a buffer that is wiped on drop
            let der = Zeroizing::new(b.into_contents());
            match tag.as_str() {
                "PRIVATE KEY" => return Self::from_pkcs8(&der),
                "EC PRIVATE KEY" => return Self::from_sec1(&der, None),
                "RSA PRIVATE KEY" => return Self::from_pkcs1(&der),
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(KeyError::Unsupported(
                        "encrypted private keys (decrypt it first, e.g. `openssl pkey -in key.pem -out plain.pem`)".into(),
                    ))
                }
                _ => continue,
            }
        }
        Err(fmt_err(
            "no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block",
        ))
    }

    fn from_der_any(der: &[u8]) -> Result<PrivateKey, KeyError> {
        Self::from_pkcs8(der)
            .or_else(|_| Self::from_sec1(der, None))
            .or_else(|_| Self::from_pkcs1(der))
            .map_err(|_| fmt_err("DER is neither PKCS#8, SEC1 nor PKCS#1"))
    }

    /// PKCS#8 PrivateKeyInfo / OneAsymmetricKey (RFC 5208, RFC 5958).
    pub fn from_pkcs8(der: &[u8]) -> Result<PrivateKey, KeyError> {
        let bad = || fmt_err("malformed PKCS#8");
        let (seq, _) = der::expect(der::SEQUENCE, der).ok_or_else(bad)?;
        let (_version, rest) = der::expect(der::INTEGER, seq).ok_or_else(bad)?;
        let (alg, rest) = der::expect(der::SEQUENCE, rest).ok_or_else(bad)?;
        let (key, _) = der::expect(der::OCTET_STRING, rest).ok_or_else(bad)?;
        let (oid, params) = der::expect(der::OID, alg).ok_or_else(bad)?;
        match oid {
            OID_EC_PUBLIC_KEY => {
                let curve = der::expect(der::OID, params).map(|x| x.0);
                Self::from_sec1(key, curve)
            }
            OID_RSA => Self::from_pkcs1(key),
            OID_ED25519 => {
                let (seed, _) = der::expect(der::OCTET_STRING, key).ok_or_else(bad)?;
                let kp = signature::Ed25519KeyPair::from_seed_unchecked(seed)
                    .map_err(|e| KeyError::Invalid(format!("Ed25519: {e}")))?;
                Ok(PrivateKey {
                    kind: KeyKind::Ed25519,
                    secret: Zeroizing::new(seed.to_vec()),
                    public: kp.public_key().as_ref().to_vec(),
                })
            }
            _ => Err(KeyError::Unsupported(
                "PKCS#8 key algorithm (ECDSA P-256/P-384, RSA and Ed25519 are supported)".into(),
            )),
        }
    }

    /// SEC1 ECPrivateKey (RFC 5915); `curve` from the PKCS#8 wrapper, if any.
    pub fn from_sec1(der: &[u8], curve: Option<&[u8]>) -> Result<PrivateKey, KeyError> {
        let bad = || fmt_err("malformed SEC1 EC private key");
        let (seq, _) = der::expect(der::SEQUENCE, der).ok_or_else(bad)?;
        let (_version, rest) = der::expect(der::INTEGER, seq).ok_or_else(bad)?;
        let (scalar, mut rest) = der::expect(der::OCTET_STRING, rest).ok_or_else(bad)?;
        let mut curve = curve.map(|c| c.to_vec());
        let mut public = None;
        while let Some((tag, v, r)) = der::tlv(rest) {
            match tag {
                0xa0 => curve = der::expect(der::OID, v).map(|x| x.0.to_vec()),
                0xa1 => {
                    if let Some((bits, _)) = der::expect(der::BIT_STRING, v) {
                        public = bits.split_first().map(|(_, p)| p.to_vec());
                    }
                }
                _ => {}
            }
            rest = r;
        }
        let (kind, alg, len): (_, &'static signature::EcdsaSigningAlgorithm, _) =
            match curve.as_deref() {
                Some(OID_P256) => (
                    KeyKind::EcdsaP256,
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    32,
                ),
                Some(OID_P384) => (
                    KeyKind::EcdsaP384,
                    &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                    48,
                ),
                Some(_) => {
                    return Err(KeyError::Unsupported(
                        "EC curve (P-256 and P-384 are supported)".into(),
                    ))
                }
                None => return Err(fmt_err("EC private key without a curve")),
            };
        // left-pad a short scalar (some encoders drop leading zeros)
        if scalar.len() > len {
            return Err(KeyError::Invalid("EC scalar too long".into()));
        }
        let mut s = Zeroizing::new(vec![0u8; len - scalar.len()]);
        s.extend_from_slice(scalar);
        let public = match public {
            Some(p) => p,
            None => ec_public(kind, &s)?,
        };
        // ring checks that the scalar and the point belong together
        signature::EcdsaKeyPair::from_private_key_and_public_key(
            alg,
            &s,
            &public,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| KeyError::Invalid(format!("{kind}: {e}")))?;
        Ok(PrivateKey {
            kind,
            secret: s,
            public,
        })
    }

    /// PKCS#1 RSAPrivateKey (RFC 8017).
    pub fn from_pkcs1(der: &[u8]) -> Result<PrivateKey, KeyError> {
        let kp = signature::RsaKeyPair::from_der(der)
            .map_err(|e| KeyError::Invalid(format!("RSA: {e}")))?;
        let bits = kp.public().modulus_len() * 8;
        Ok(PrivateKey {
            kind: KeyKind::Rsa(bits),
            secret: Zeroizing::new(der.to_vec()),
            public: kp.public_key().as_ref().to_vec(),
        })
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The public key, in the form of a certificate's subjectPublicKey.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// Signs `msg` with `scheme`.
    pub(crate) fn sign(&self, scheme: SignScheme, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let err = |e: ring::error::Unspecified| KeyError::Invalid(format!("signing: {e}"));
        match (self.kind, scheme) {
            (KeyKind::EcdsaP256 | KeyKind::EcdsaP384, SignScheme::Ecdsa { fixed }) => {
                let alg = match (self.kind, fixed) {
                    (KeyKind::EcdsaP256, false) => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    (KeyKind::EcdsaP256, true) => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    (_, false) => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                    (_, true) => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                };
                let kp = signature::EcdsaKeyPair::from_private_key_and_public_key(
                    alg,
                    &self.secret,
                    &self.public,
                    &rng,
                )
                .map_err(|e| KeyError::Invalid(format!("{e}")))?;
                Ok(kp.sign(&rng, msg).map_err(err)?.as_ref().to_vec())
            }
            (KeyKind::Rsa(_), SignScheme::Rsa(pad)) => {
                let kp = signature::RsaKeyPair::from_der(&self.secret)
                    .map_err(|e| KeyError::Invalid(format!("{e}")))?;
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(pad.ring(), &rng, msg, &mut sig).map_err(err)?;
                Ok(sig)
            }
            (KeyKind::Ed25519, SignScheme::Ed25519) => {
                let kp = signature::Ed25519KeyPair::from_seed_unchecked(&self.secret)
                    .map_err(|e| KeyError::Invalid(format!("{e}")))?;
                Ok(kp.sign(msg).as_ref().to_vec())
            }
            (k, s) => Err(KeyError::Invalid(format!(
                "cannot sign {s:?} with a {k} key"
            ))),
        }
    }
}

/// RSA signature paddings ring can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaPadding {
    Pkcs1Sha256,
    Pkcs1Sha384,
    Pkcs1Sha512,
    PssSha256,
    PssSha384,
    PssSha512,
}

impl RsaPadding {
    fn ring(self) -> &'static dyn signature::RsaEncoding {
        match self {
            RsaPadding::Pkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
            RsaPadding::Pkcs1Sha384 => &signature::RSA_PKCS1_SHA384,
            RsaPadding::Pkcs1Sha512 => &signature::RSA_PKCS1_SHA512,
            RsaPadding::PssSha256 => &signature::RSA_PSS_SHA256,
            RsaPadding::PssSha384 => &signature::RSA_PSS_SHA384,
            RsaPadding::PssSha512 => &signature::RSA_PSS_SHA512,
        }
    }
}

/// How a signature is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignScheme {
    /// ECDSA with the curve's hash (SHA-256 for P-256, SHA-384 for P-384);
    /// `fixed`: r | s (IKEv2 methods 9/10), else DER (RFC 7427).
    Ecdsa {
        fixed: bool,
    },
    Rsa(RsaPadding),
    Ed25519,
}

/// The uncompressed public point of an EC private scalar.
fn ec_public(kind: KeyKind, scalar: &[u8]) -> Result<Vec<u8>, KeyError> {
    let bad = |_| KeyError::Invalid("EC scalar out of range".into());
    Ok(match kind {
        KeyKind::EcdsaP256 => {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            let sk = p256::SecretKey::from_slice(scalar).map_err(bad)?;
            sk.public_key().to_encoded_point(false).as_bytes().to_vec()
        }
        _ => {
            use p384::elliptic_curve::sec1::ToEncodedPoint;
            let sk = p384::SecretKey::from_slice(scalar).map_err(bad)?;
            sk.public_key().to_encoded_point(false).as_bytes().to_vec()
        }
    })
}
