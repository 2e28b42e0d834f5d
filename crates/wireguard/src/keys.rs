//! Keys: x25519 static and ephemeral keys, preshared keys, and WireGuard's
//! base64 text form (exactly 32 bytes, standard alphabet with padding, as
//! `wg genkey` prints them).
//!
//! Secrets are wiped on drop: [`StaticSecret`] by x25519-dalek's `zeroize`
//! feature, [`PresharedKey`] by its own `ZeroizeOnDrop`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use x25519_dalek::{PublicKey, StaticSecret};

pub const KEY_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not valid base64 (expected 32 bytes)")]
    Base64,
}

/// A 32-byte preshared key (Noise "psk2"); all zero when none is configured.
#[derive(Clone, Default, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

impl PresharedKey {
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut k = [0u8; KEY_LEN];
        rng.fill_bytes(&mut k);
        Self(k)
    }
}

/// Decodes a wg-format base64 key into 32 bytes.
pub fn decode_base64(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let mut out = [0u8; KEY_LEN];
    let mut buf = [0u8; 48];
    let n = STANDARD
        .decode_slice(text.trim().as_bytes(), &mut buf)
        .map_err(|_| KeyError::Base64)?;
    if n != KEY_LEN {
        buf.zeroize();
        return Err(KeyError::Base64);
    }
    out.copy_from_slice(&buf[..KEY_LEN]);
    buf.zeroize();
    Ok(out)
}

/// Encodes 32 key bytes in wg's base64 form (44 characters).
pub fn encode_base64(key: &[u8; KEY_LEN]) -> String {
    STANDARD.encode(key)
}

pub fn public_from_base64(text: &str) -> Result<PublicKey, KeyError> {
    decode_base64(text).map(PublicKey::from)
}

pub fn secret_from_base64(text: &str) -> Result<StaticSecret, KeyError> {
    let mut b = decode_base64(text)?;
    let s = StaticSecret::from(b);
    b.zeroize();
    Ok(s)
}

pub fn psk_from_base64(text: &str) -> Result<PresharedKey, KeyError> {
    decode_base64(text).map(PresharedKey)
}

/// A new private key (clamped by x25519 when used, as `wg genkey`).
pub fn generate_secret(rng: &mut (impl RngCore + CryptoRng)) -> StaticSecret {
    StaticSecret::random_from_rng(rng)
}

pub fn public_key(secret: &StaticSecret) -> PublicKey {
    PublicKey::from(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip_and_strict_length() {
        let s = generate_secret(&mut rand_core::OsRng);
        let text = encode_base64(&s.to_bytes());
        assert_eq!(text.len(), 44);
        let back = secret_from_base64(&text).unwrap();
        assert_eq!(public_key(&back), public_key(&s));
        assert!(decode_base64("AAAA").is_err());
        assert!(decode_base64(&STANDARD.encode([0u8; 33])).is_err());
        assert!(decode_base64("not base64 !!").is_err());
    }

    #[test]
    fn known_public_key() {
        // RFC 7748 §6.1 test vector (Alice).
        let sk: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let pk = public_key(&StaticSecret::from(sk));
        assert_eq!(pk.as_bytes()[..4], [0x85, 0x20, 0xf0, 0x09]);
    }
}
