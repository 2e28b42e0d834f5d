//! IKEv2 cryptography: PRFs and prf+ (RFC 7296 §2.13), SKEYSEED and the
//! seven SK_* keys (§2.14), CHILD SA KEYMAT (§2.17), SK payload protection
//! (§3.14; AES-GCM-16 RFC 5282, ChaCha20-Poly1305 RFC 7634, AES-CBC with
//! HMAC-SHA2 RFC 4868), key exchange groups 14, 19, 20, 31, and PSK
//! authentication (§2.15).
//!
//! Every secret lives in a [`Secret`] (zeroized on drop); AUTH and ICV
//! comparisons are constant time.

use crate::wire::{tt, Transform};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Encoding, U2048};
use hmac::{Mac, SimpleHmac};
use rand_core::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// A secret byte string, wiped on drop.
pub type Secret = Zeroizing<Vec<u8>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("peer's key exchange value is invalid")]
    BadPublicValue,
    #[error("integrity check failed")]
    Integrity,
    #[error("ciphertext malformed (length or padding)")]
    Malformed,
}

/// Random bytes for SPIs, nonces, IVs and DH private values.
pub trait IkeRng: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> IkeRng for T {}

// ---------------------------------------------------------------- PRF

/// Pseudo-random functions (transform type 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrfAlg {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl PrfAlg {
    pub fn id(self) -> u16 {
        match self {
            PrfAlg::HmacSha256 => 5,
            PrfAlg::HmacSha384 => 6,
            PrfAlg::HmacSha512 => 7,
        }
    }
    pub fn from_id(id: u16) -> Option<PrfAlg> {
        Some(match id {
            5 => PrfAlg::HmacSha256,
            6 => PrfAlg::HmacSha384,
            7 => PrfAlg::HmacSha512,
            _ => return None,
        })
    }
    /// Output length (and preferred key length) in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            PrfAlg::HmacSha256 => 32,
            PrfAlg::HmacSha384 => 48,
            PrfAlg::HmacSha512 => 64,
        }
    }
    pub fn transform(self) -> Transform {
        Transform {
            ttype: tt::PRF,
            id: self.id(),
            key_len: None,
        }
    }

    /// prf(key, data). HMAC accepts keys of any length (§2.13).
    pub fn prf(self, key: &[u8], data: &[&[u8]]) -> Secret {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[&[u8]]) -> Secret {
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes any key length");
            for d in data {
                m.update(d);
            }
            Zeroizing::new(m.finalize().into_bytes().to_vec())
        }
        match self {
            PrfAlg::HmacSha256 => run::<SimpleHmac<sha2::Sha256>>(key, data),
            PrfAlg::HmacSha384 => run::<SimpleHmac<sha2::Sha384>>(key, data),
            PrfAlg::HmacSha512 => run::<SimpleHmac<sha2::Sha512>>(key, data),
        }
    }

    /// prf+(K, S) = T1 | T2 | ..., Tn = prf(K, Tn-1 | S | n), truncated to
    /// `len` (§2.13; at most 255 blocks).
    pub fn prf_plus(self, key: &[u8], seed: &[&[u8]], len: usize) -> Secret {
        assert!(len <= 255 * self.len(), "prf+ output too long");
        let mut out = Zeroizing::new(Vec::with_capacity(len + self.len()));
        let mut t: Secret = Zeroizing::new(Vec::new());
        let mut n = 1u8;
        while out.len() < len {
            let mut parts: Vec<&[u8]> = vec![&t];
            parts.extend_from_slice(seed);
            let c = [n];
            parts.push(&c);
            t = self.prf(key, &parts);
            out.extend_from_slice(&t);
            n = n.wrapping_add(1);
        }
        out.truncate(len);
        out
    }
}

// ---------------------------------------------------------------- INTEG

/// Integrity algorithms (transform type 3), RFC 4868.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntegAlg {
    HmacSha256_128,
    HmacSha384_192,
    HmacSha512_256,
}

impl IntegAlg {
    pub fn id(self) -> u16 {
        match self {
            IntegAlg::HmacSha256_128 => 12,
            IntegAlg::HmacSha384_192 => 13,
            IntegAlg::HmacSha512_256 => 14,
        }
    }
    pub fn from_id(id: u16) -> Option<IntegAlg> {
        Some(match id {
            12 => IntegAlg::HmacSha256_128,
            13 => IntegAlg::HmacSha384_192,
            14 => IntegAlg::HmacSha512_256,
            _ => return None,
        })
    }
    pub fn key_len(self) -> usize {
        self.prf().len()
    }
    pub fn icv_len(self) -> usize {
        self.key_len() / 2
    }
    fn prf(self) -> PrfAlg {
        match self {
            IntegAlg::HmacSha256_128 => PrfAlg::HmacSha256,
            IntegAlg::HmacSha384_192 => PrfAlg::HmacSha384,
            IntegAlg::HmacSha512_256 => PrfAlg::HmacSha512,
        }
    }
    pub fn transform(self) -> Transform {
        Transform {
            ttype: tt::INTEG,
            id: self.id(),
            key_len: None,
        }
    }
    pub fn mac(self, key: &[u8], data: &[&[u8]]) -> Secret {
        let mut m = self.prf().prf(key, data);
        m.truncate(self.icv_len());
        m
    }
}

// ---------------------------------------------------------------- ENCR

/// Encryption algorithms (transform type 1) for IKE and ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncrAlg {
    /// AES-CBC (id 12) with a 128/192/256-bit key; needs an INTEG transform.
    AesCbc { key_bits: u16 },
    /// AES-GCM with a 16-octet ICV (id 20), 128 or 256-bit key (+ 4-byte salt).
    AesGcm16 { key_bits: u16 },
    /// ChaCha20-Poly1305 (id 28), 256-bit key (+ 4-byte salt).
    ChaCha20Poly1305,
}

impl EncrAlg {
    pub const AES128GCM16: EncrAlg = EncrAlg::AesGcm16 { key_bits: 128 };
    pub const AES256GCM16: EncrAlg = EncrAlg::AesGcm16 { key_bits: 256 };
    pub const AES128CBC: EncrAlg = EncrAlg::AesCbc { key_bits: 128 };
    pub const AES256CBC: EncrAlg = EncrAlg::AesCbc { key_bits: 256 };

    pub fn id(self) -> u16 {
        match self {
            EncrAlg::AesCbc { .. } => 12,
            EncrAlg::AesGcm16 { .. } => 20,
            EncrAlg::ChaCha20Poly1305 => 28,
        }
    }
    pub fn from_transform(t: &Transform) -> Option<EncrAlg> {
        match (t.id, t.key_len) {
            (12, Some(k @ (128 | 192 | 256))) => Some(EncrAlg::AesCbc { key_bits: k }),
            (20, Some(k @ (128 | 256))) => Some(EncrAlg::AesGcm16 { key_bits: k }),
            (28, None) => Some(EncrAlg::ChaCha20Poly1305),
            _ => None,
        }
    }
    pub fn transform(self) -> Transform {
        Transform {
            ttype: tt::ENCR,
            id: self.id(),
            key_len: match self {
                EncrAlg::AesCbc { key_bits } | EncrAlg::AesGcm16 { key_bits } => Some(key_bits),
                EncrAlg::ChaCha20Poly1305 => None,
            },
        }
    }
    pub fn is_aead(self) -> bool {
        !matches!(self, EncrAlg::AesCbc { .. })
    }
    /// Key material length: key plus 4-byte salt for the AEADs (RFC 5282 §7.1, RFC 7634 §4).
    pub fn keymat_len(self) -> usize {
        match self {
            EncrAlg::AesCbc { key_bits } => key_bits as usize / 8,
            EncrAlg::AesGcm16 { key_bits } => key_bits as usize / 8 + 4,
            EncrAlg::ChaCha20Poly1305 => 36,
        }
    }
    pub fn iv_len(self) -> usize {
        if self.is_aead() {
            8
        } else {
            16
        }
    }
    fn block(self) -> usize {
        if self.is_aead() {
            1
        } else {
            16
        }
    }
}

/// The negotiated protection of SK payloads in one direction.
pub struct SkKeys {
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub sk_e: Secret,
    pub sk_a: Secret,
}

impl SkKeys {
    /// Overhead of an SK payload body beyond the plaintext (without padding).
    pub fn overhead(&self) -> usize {
        self.encr.iv_len() + 1 + self.icv_len()
    }
    /// Length of the SK payload body for `plain_len` bytes of inner payloads.
    pub fn sealed_len(&self, plain_len: usize) -> usize {
        let bs = self.encr.block();
        let padded = (plain_len + 1).div_ceil(bs) * bs;
        self.encr.iv_len() + padded + self.icv_len()
    }
    fn icv_len(&self) -> usize {
        if self.encr.is_aead() {
            16
        } else {
            self.integ.map_or(0, |i| i.icv_len())
        }
    }

    /// Encrypts `plain` into an SK payload body. `aad` is the IKE header
    /// and the SK generic payload header, already with the final lengths
    /// (RFC 5282 §5.1); `iv` is 8 bytes (AEAD, must never repeat under a
    /// key: the caller uses a counter) or 16 random bytes (CBC). For CBC
    /// the ICV covers `aad | IV | ciphertext` (§3.14).
    pub fn seal(&self, aad: &[u8], iv: &[u8], plain: &[u8]) -> Vec<u8> {
        debug_assert_eq!(iv.len(), self.encr.iv_len());
        let bs = self.encr.block();
        let padlen = (bs - (plain.len() + 1) % bs) % bs;
        let mut buf = Zeroizing::new(Vec::with_capacity(plain.len() + padlen + 1 + 16));
        buf.extend_from_slice(plain);
        buf.resize(plain.len() + padlen, 0);
        buf.push(padlen as u8);
        let mut out = Vec::with_capacity(iv.len() + buf.len() + self.icv_len());
        out.extend_from_slice(iv);
        match self.encr {
            EncrAlg::AesGcm16 { .. } | EncrAlg::ChaCha20Poly1305 => {
                let tag = aead_seal(self.encr, &self.sk_e, iv, aad, &mut buf);
                out.extend_from_slice(&buf);
                out.extend_from_slice(&tag);
            }
            EncrAlg::AesCbc { .. } => {
                cbc_encrypt(&self.sk_e, iv, &mut buf);
                out.extend_from_slice(&buf);
                let integ = self.integ.expect("CBC needs INTEG");
                let icv = integ.mac(&self.sk_a, &[aad, &out]);
                out.extend_from_slice(&icv);
            }
        }
        out
    }

    /// Verifies and decrypts an SK payload body; returns the inner payload
    /// chain bytes (padding removed).
    pub fn open(&self, aad: &[u8], body: &[u8]) -> Result<Secret, CryptoError> {
        let (ivl, icvl) = (self.encr.iv_len(), self.icv_len());
        if body.len() < ivl + 1 + icvl {
            return Err(CryptoError::Malformed);
        }
        let iv = &body[..ivl];
        let ct = &body[ivl..body.len() - icvl];
        let icv = &body[body.len() - icvl..];
        let mut buf = Zeroizing::new(ct.to_vec());
        match self.encr {
            EncrAlg::AesGcm16 { .. } | EncrAlg::ChaCha20Poly1305 => {
                aead_open(self.encr, &self.sk_e, iv, aad, &mut buf, icv)?;
            }
            EncrAlg::AesCbc { .. } => {
                let integ = self.integ.ok_or(CryptoError::Integrity)?;
                let want = integ.mac(&self.sk_a, &[aad, &body[..body.len() - icvl]]);
                if !bool::from(want.ct_eq(icv)) {
                    return Err(CryptoError::Integrity);
                }
                if !ct.len().is_multiple_of(16) {
                    return Err(CryptoError::Malformed);
                }
                cbc_decrypt(&self.sk_e, iv, &mut buf);
            }
        }
        let pad = *buf.last().ok_or(CryptoError::Malformed)? as usize;
        if pad + 1 > buf.len() {
            return Err(CryptoError::Malformed);
        }
        let n = buf.len() - pad - 1;
        buf.truncate(n);
        Ok(buf)
    }
}

fn aead_nonce(keymat: &[u8], iv: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&keymat[keymat.len() - 4..]);
    n[4..].copy_from_slice(iv);
    n
}

fn aead_seal(alg: EncrAlg, keymat: &[u8], iv: &[u8], aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
    let nonce = aead_nonce(keymat, iv);
    let key = &keymat[..keymat.len() - 4];
    let tag = match alg {
        EncrAlg::AesGcm16 { key_bits: 128 } => aes_gcm::Aes128Gcm::new_from_slice(key)
            .expect("key length")
            .encrypt_in_place_detached(&nonce.into(), aad, buf),
        EncrAlg::AesGcm16 { .. } => aes_gcm::Aes256Gcm::new_from_slice(key)
            .expect("key length")
            .encrypt_in_place_detached(&nonce.into(), aad, buf),
        _ => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
            .expect("key length")
            .encrypt_in_place_detached(&nonce.into(), aad, buf),
    };
    tag.expect("buffer fits").into()
}

fn aead_open(
    alg: EncrAlg,
    keymat: &[u8],
    iv: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), CryptoError> {
    let nonce = aead_nonce(keymat, iv);
    let key = &keymat[..keymat.len() - 4];
    let tag = aes_gcm::Tag::from_slice(tag);
    let r = match alg {
        EncrAlg::AesGcm16 { key_bits: 128 } => aes_gcm::Aes128Gcm::new_from_slice(key)
            .map_err(|_| CryptoError::Malformed)?
            .decrypt_in_place_detached(&nonce.into(), aad, buf, tag),
        EncrAlg::AesGcm16 { .. } => aes_gcm::Aes256Gcm::new_from_slice(key)
            .map_err(|_| CryptoError::Malformed)?
            .decrypt_in_place_detached(&nonce.into(), aad, buf, tag),
        _ => chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
            .map_err(|_| CryptoError::Malformed)?
            .decrypt_in_place_detached(&nonce.into(), aad, buf, tag),
    };
    r.map_err(|_| CryptoError::Integrity)
}

fn cbc_encrypt(key: &[u8], iv: &[u8], buf: &mut [u8]) {
    use cbc::cipher::{BlockEncryptMut, KeyIvInit};
    let n = buf.len();
    macro_rules! go {
        ($c:ty) => {
            cbc::Encryptor::<$c>::new_from_slices(key, iv)
                .expect("key/iv length")
                .encrypt_padded_mut::<cbc::cipher::block_padding::NoPadding>(buf, n)
                .expect("block aligned")
        };
    }
    match key.len() {
        16 => go!(aes::Aes128),
        24 => go!(aes::Aes192),
        _ => go!(aes::Aes256),
    };
}

fn cbc_decrypt(key: &[u8], iv: &[u8], buf: &mut [u8]) {
    use cbc::cipher::{BlockDecryptMut, KeyIvInit};
    macro_rules! go {
        ($c:ty) => {{
            let _ = cbc::Decryptor::<$c>::new_from_slices(key, iv)
                .expect("key/iv length")
                .decrypt_padded_mut::<cbc::cipher::block_padding::NoPadding>(buf);
        }};
    }
    match key.len() {
        16 => go!(aes::Aes128),
        24 => go!(aes::Aes192),
        _ => go!(aes::Aes256),
    }
}

// ---------------------------------------------------------------- DH

/// Key exchange groups (transform type 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// 2048-bit MODP (RFC 3526 §3).
    Modp2048,
    /// NIST P-256 (RFC 5903).
    Ecp256,
    /// NIST P-384 (RFC 5903).
    Ecp384,
    /// Curve25519 (RFC 8031).
    Curve25519,
}

impl DhGroup {
    pub fn id(self) -> u16 {
        match self {
            DhGroup::Modp2048 => 14,
            DhGroup::Ecp256 => 19,
            DhGroup::Ecp384 => 20,
            DhGroup::Curve25519 => 31,
        }
    }
    pub fn from_id(id: u16) -> Option<DhGroup> {
        Some(match id {
            14 => DhGroup::Modp2048,
            19 => DhGroup::Ecp256,
            20 => DhGroup::Ecp384,
            31 => DhGroup::Curve25519,
            _ => return None,
        })
    }
    pub fn transform(self) -> Transform {
        Transform {
            ttype: tt::DH,
            id: self.id(),
            key_len: None,
        }
    }
    /// Length of the KE payload data.
    pub fn public_len(self) -> usize {
        match self {
            DhGroup::Modp2048 => 256,
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Curve25519 => 32,
        }
    }
}

/// RFC 3526 §3, the 2048-bit MODP prime (generator 2).
const MODP2048_P: U2048 = U2048::from_be_hex(concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF"
));

enum DhSecret {
    /// MODP-2048: a 256-bit private exponent (RFC 3526 §8 asks for at least
    /// twice the group's ~112-bit strength). `crypto-bigint`'s Montgomery
    /// exponentiation runs in time independent of the exponent's value.
    Modp(Box<U2048>),
    Ecp256(p256::ecdh::EphemeralSecret),
    Ecp384(p384::ecdh::EphemeralSecret),
    X25519(x25519_dalek::StaticSecret),
}

/// One side's ephemeral key exchange value.
pub struct DhPrivate {
    group: DhGroup,
    secret: DhSecret,
    public: Vec<u8>,
}

impl Drop for DhPrivate {
    fn drop(&mut self) {
        if let DhSecret::Modp(x) = &mut self.secret {
            x.zeroize();
        }
    }
}

impl DhPrivate {
    pub fn generate(group: DhGroup, rng: &mut dyn IkeRng) -> DhPrivate {
        let (secret, public) = match group {
            DhGroup::Modp2048 => {
                let mut b = Zeroizing::new([0u8; 256]);
                rng.fill_bytes(&mut b[224..]);
                b[224] |= 0x80;
                let x = Box::new(U2048::from_be_slice(&b[..]));
                let params = DynResidueParams::new(&MODP2048_P);
                let y = DynResidue::new(&U2048::from_u8(2), params)
                    .pow(&*x)
                    .retrieve();
                (DhSecret::Modp(x), y.to_be_bytes().to_vec())
            }
            DhGroup::Ecp256 => {
                let s = p256::ecdh::EphemeralSecret::random(&mut RngAdapter(rng));
                let p = p256::EncodedPoint::from(s.public_key());
                let public = p.as_bytes()[1..].to_vec();
                (DhSecret::Ecp256(s), public)
            }
            DhGroup::Ecp384 => {
                let s = p384::ecdh::EphemeralSecret::random(&mut RngAdapter(rng));
                let p = p384::EncodedPoint::from(s.public_key());
                let public = p.as_bytes()[1..].to_vec();
                (DhSecret::Ecp384(s), public)
            }
            DhGroup::Curve25519 => {
                let mut b = Zeroizing::new([0u8; 32]);
                rng.fill_bytes(&mut b[..]);
                let s = x25519_dalek::StaticSecret::from(*b);
                let public = x25519_dalek::PublicKey::from(&s).as_bytes().to_vec();
                (DhSecret::X25519(s), public)
            }
        };
        DhPrivate {
            group,
            secret,
            public,
        }
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// KE payload data.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// g^ir from the peer's KE data, with the checks RFC 7296 §3.4 / RFC
    /// 5903 / RFC 8031 ask for (on-curve points, 1 < y < p-1, non-zero
    /// X25519 result).
    pub fn shared(&self, peer: &[u8]) -> Result<Secret, CryptoError> {
        if peer.len() != self.group.public_len() {
            return Err(CryptoError::BadPublicValue);
        }
        match &self.secret {
            DhSecret::Modp(x) => {
                let y = U2048::from_be_slice(peer);
                let pm1 = MODP2048_P.wrapping_sub(&U2048::ONE);
                if y <= U2048::ONE || y >= pm1 {
                    return Err(CryptoError::BadPublicValue);
                }
                let params = DynResidueParams::new(&MODP2048_P);
                let z = DynResidue::new(&y, params).pow(&**x).retrieve();
                Ok(Zeroizing::new(z.to_be_bytes().to_vec()))
            }
            DhSecret::Ecp256(s) => {
                let mut sec1 = vec![4u8];
                sec1.extend_from_slice(peer);
                let pk = p256::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| CryptoError::BadPublicValue)?;
                Ok(Zeroizing::new(
                    s.diffie_hellman(&pk).raw_secret_bytes().to_vec(),
                ))
            }
            DhSecret::Ecp384(s) => {
                let mut sec1 = vec![4u8];
                sec1.extend_from_slice(peer);
                let pk = p384::PublicKey::from_sec1_bytes(&sec1)
                    .map_err(|_| CryptoError::BadPublicValue)?;
                Ok(Zeroizing::new(
                    s.diffie_hellman(&pk).raw_secret_bytes().to_vec(),
                ))
            }
            DhSecret::X25519(s) => {
                let b: [u8; 32] = peer.try_into().map_err(|_| CryptoError::BadPublicValue)?;
                let z = s.diffie_hellman(&x25519_dalek::PublicKey::from(b));
                if !z.was_contributory() {
                    return Err(CryptoError::BadPublicValue);
                }
                Ok(Zeroizing::new(z.as_bytes().to_vec()))
            }
        }
    }
}

/// Adapts `&mut dyn IkeRng` to the `CryptoRngCore` the elliptic-curve crates want.
struct RngAdapter<'a>(&'a mut dyn IkeRng);
impl RngCore for RngAdapter<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        self.0.fill_bytes(d)
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(d)
    }
}
impl CryptoRng for RngAdapter<'_> {}

// ---------------------------------------------------------------- key derivation

/// The negotiated IKE SA algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IkeAlgs {
    pub encr: EncrAlg,
    /// `None` with an AEAD.
    pub integ: Option<IntegAlg>,
    pub prf: PrfAlg,
    pub dh: DhGroup,
}

/// The seven keys of an IKE SA (§2.14).
pub struct IkeKeys {
    pub sk_d: Secret,
    pub sk_ai: Secret,
    pub sk_ar: Secret,
    pub sk_ei: Secret,
    pub sk_er: Secret,
    pub sk_pi: Secret,
    pub sk_pr: Secret,
}

impl IkeKeys {
    /// SKEYSEED = prf(Ni | Nr, g^ir); {SK_d | SK_ai | SK_ar | SK_ei | SK_er
    /// | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).
    pub fn derive(
        algs: &IkeAlgs,
        shared: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: &[u8; 8],
        spi_r: &[u8; 8],
    ) -> IkeKeys {
        let mut nonces = Zeroizing::new(ni.to_vec());
        nonces.extend_from_slice(nr);
        let skeyseed = algs.prf.prf(&nonces, &[shared]);
        Self::expand(algs, &skeyseed, ni, nr, spi_i, spi_r)
    }

    /// The prf+ expansion from a SKEYSEED (shared with IKE SA rekeying,
    /// where SKEYSEED = prf(SK_d(old), g^ir(new) | Ni | Nr)).
    pub fn expand(
        algs: &IkeAlgs,
        skeyseed: &[u8],
        ni: &[u8],
        nr: &[u8],
        spi_i: &[u8; 8],
        spi_r: &[u8; 8],
    ) -> IkeKeys {
        let p = algs.prf.len();
        let a = algs.integ.map_or(0, |i| i.key_len());
        let e = algs.encr.keymat_len();
        let km = algs
            .prf
            .prf_plus(skeyseed, &[ni, nr, spi_i, spi_r], 3 * p + 2 * a + 2 * e);
        let mut off = 0;
        let mut take = |n: usize| {
            let s = Zeroizing::new(km[off..off + n].to_vec());
            off += n;
            s
        };
        IkeKeys {
            sk_d: take(p),
            sk_ai: take(a),
            sk_ar: take(a),
            sk_ei: take(e),
            sk_er: take(e),
            sk_pi: take(p),
            sk_pr: take(p),
        }
    }

    /// SK protection for messages sent by the initiator (`true`) or responder.
    pub fn sk(&self, algs: &IkeAlgs, from_initiator: bool) -> SkKeys {
        let (e, a) = if from_initiator {
            (&self.sk_ei, &self.sk_ai)
        } else {
            (&self.sk_er, &self.sk_ar)
        };
        SkKeys {
            encr: algs.encr,
            integ: algs.integ,
            sk_e: e.clone(),
            sk_a: a.clone(),
        }
    }
}

/// ESP transform of a CHILD SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EspTransform {
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    /// Extended sequence numbers.
    pub esn: bool,
}

/// Keys of one direction of a CHILD SA. For AEADs `encr` is key | 4-byte
/// salt (RFC 4106 §8.1, RFC 7634 §4); `integ` is empty.
pub struct ChildKeys {
    pub encr: Secret,
    pub integ: Secret,
}

impl std::fmt::Debug for ChildKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChildKeys {{ encr: {} bytes, integ: {} bytes }}",
            self.encr.len(),
            self.integ.len()
        )
    }
}

/// KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (§2.17); returns the keys
/// for (initiator→responder, responder→initiator): encryption key first,
/// then integrity key, in each direction.
pub fn child_keymat(
    prf: PrfAlg,
    sk_d: &[u8],
    t: &EspTransform,
    pfs_shared: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
) -> (ChildKeys, ChildKeys) {
    let e = t.encr.keymat_len();
    let a = t.integ.map_or(0, |i| i.key_len());
    let mut seed: Vec<&[u8]> = Vec::new();
    if let Some(g) = pfs_shared {
        seed.push(g);
    }
    seed.push(ni);
    seed.push(nr);
    let km = prf.prf_plus(sk_d, &seed, 2 * (e + a));
    let part = |o: usize, n: usize| Zeroizing::new(km[o..o + n].to_vec());
    (
        ChildKeys {
            encr: part(0, e),
            integ: part(e, a),
        },
        ChildKeys {
            encr: part(e + a, e),
            integ: part(2 * e + a, a),
        },
    )
}

/// The constant every exported key's seed starts with.
pub const EXPORT_PREFIX: &[u8] = b"polytun key export";

/// A key for the application derived from an IKE SA's SK_d (SSKE, RFC 8922
/// §5). polytun's documented derivation:
///
/// ```text
/// key = prf+(SK_d, "polytun key export" | L(label) | label | C(context) | context | Ni | Nr)
/// ```
///
/// truncated to `len` octets, where `prf` is the IKE SA's PRF, `L` is one
/// octet and `C` two octets (big-endian) of length, and Ni, Nr are the
/// nonces of the exchange that created the IKE SA (IKE_SA_INIT, or the
/// CREATE_CHILD_SA of its rekey). Both ends of the IKE SA compute the same
/// key; a rekeyed IKE SA (new SK_d, new nonces) exports different keys. The
/// key is independent of every IKE and ESP key, whose prf+ seeds never start
/// with this constant. `label` is 1–255 octets, `context` at most 65535,
/// `len` at most 255 PRF blocks.
pub fn export_key(
    prf: PrfAlg,
    sk_d: &[u8],
    label: &[u8],
    context: &[u8],
    ni: &[u8],
    nr: &[u8],
    len: usize,
) -> Result<Secret, ExportError> {
    if label.is_empty() || label.len() > 255 {
        return Err(ExportError::Label);
    }
    let clen = u16::try_from(context.len()).map_err(|_| ExportError::Context)?;
    if len == 0 || len > 255 * prf.len() {
        return Err(ExportError::Length(255 * prf.len()));
    }
    let l = [label.len() as u8];
    let c = clen.to_be_bytes();
    Ok(prf.prf_plus(sk_d, &[EXPORT_PREFIX, &l, label, &c, context, ni, nr], len))
}

/// Why a key cannot be exported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("the label must be 1 to 255 bytes")]
    Label,
    #[error("the context must be at most 65535 bytes")]
    Context,
    #[error("the length must be 1 to {0} bytes")]
    Length(usize),
    #[error("no established IKE SA")]
    NoSa,
}

/// PSK AUTH (§2.15): prf(prf(PSK, "Key Pad for IKEv2"), RealMessage |
/// Nonce(peer) | prf(SK_p, ID body)).
pub fn psk_auth(
    prf: PrfAlg,
    psk: &[u8],
    real_message: &[u8],
    peer_nonce: &[u8],
    sk_p: &[u8],
    id_body: &[u8],
) -> Secret {
    let maced_id = prf.prf(sk_p, &[id_body]);
    let k = prf.prf(psk, &[b"Key Pad for IKEv2"]);
    prf.prf(&k, &[real_message, peer_nonce, &maced_id])
}

/// Constant-time equality.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented SSKE derivation, computed by hand with HMAC-SHA-256:
    /// T1 = HMAC(SK_d, "polytun key export" | 0x03 "app" | 0x0002 "cx" | Ni | Nr | 0x01).
    #[test]
    fn export_key_is_the_documented_prf_plus() {
        use hmac::Mac;
        let (sk_d, ni, nr) = ([7u8; 32], [1u8; 32], [2u8; 32]);
        let k = export_key(PrfAlg::HmacSha256, &sk_d, b"app", b"cx", &ni, &nr, 40).unwrap();
        let mut m =
            <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(&sk_d).unwrap();
        m.update(b"polytun key export\x03app\x00\x02cx");
        m.update(&ni);
        m.update(&nr);
        m.update(&[1]);
        let t1 = m.finalize().into_bytes();
        assert_eq!(&k[..32], &t1[..]);
        let mut m =
            <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(&sk_d).unwrap();
        m.update(&t1);
        m.update(b"polytun key export\x03app\x00\x02cx");
        m.update(&ni);
        m.update(&nr);
        m.update(&[2]);
        assert_eq!(&k[32..], &m.finalize().into_bytes()[..8]);
    }

    #[test]
    fn dh_groups_agree() {
        let mut rng = rand_core::OsRng;
        for g in [
            DhGroup::Curve25519,
            DhGroup::Ecp256,
            DhGroup::Ecp384,
            DhGroup::Modp2048,
        ] {
            let a = DhPrivate::generate(g, &mut rng);
            let b = DhPrivate::generate(g, &mut rng);
            assert_eq!(a.public().len(), g.public_len());
            let s1 = a.shared(b.public()).unwrap();
            let s2 = b.shared(a.public()).unwrap();
            assert_eq!(*s1, *s2, "{g:?}");
            assert!(a.shared(&vec![0; g.public_len()]).is_err() || g == DhGroup::Curve25519);
        }
        let a = DhPrivate::generate(DhGroup::Curve25519, &mut rng);
        assert_eq!(a.shared(&[0; 32]), Err(CryptoError::BadPublicValue));
        let m = DhPrivate::generate(DhGroup::Modp2048, &mut rng);
        let mut one = vec![0; 256];
        one[255] = 1;
        assert_eq!(m.shared(&one), Err(CryptoError::BadPublicValue));
    }

    /// RFC 4231 test case 2 (HMAC-SHA-256, key "Jefe").
    #[test]
    fn hmac_vector() {
        let out = PrfAlg::HmacSha256.prf(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            crate::wire::hex(&out),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sk_roundtrip_all_ciphers() {
        for (encr, integ) in [
            (EncrAlg::AES128GCM16, None),
            (EncrAlg::AES256GCM16, None),
            (EncrAlg::ChaCha20Poly1305, None),
            (EncrAlg::AES128CBC, Some(IntegAlg::HmacSha256_128)),
            (EncrAlg::AES256CBC, Some(IntegAlg::HmacSha512_256)),
        ] {
            let k = SkKeys {
                encr,
                integ,
                sk_e: Zeroizing::new(vec![3; encr.keymat_len()]),
                sk_a: Zeroizing::new(vec![4; integ.map_or(0, |i| i.key_len())]),
            };
            for n in [0usize, 1, 15, 16, 17, 100] {
                let plain = vec![0x5a; n];
                let iv = vec![9; encr.iv_len()];
                let body = k.seal(b"header", &iv, &plain);
                assert_eq!(*k.open(b"header", &body).unwrap(), plain);
                assert!(k.open(b"headex", &body).is_err());
                let mut bad = body.clone();
                let l = bad.len();
                bad[l / 2] ^= 1;
                assert!(k.open(b"header", &bad).is_err());
            }
        }
    }
}
