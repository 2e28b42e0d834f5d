//! The AEAD seam: every record layer seals and opens through [`Aead`].
//!
//! The backend is ring (BoringSSL's assembly): in the same run it sealed
//! 1400-byte packets 3x faster than the RustCrypto crates for
//! ChaCha20-Poly1305 and 3.8x for AES-256-GCM, and as fast as aws-lc-rs
//! (`cargo bench -p polytun-core --bench aead`, table in docs/aead.md).
//! ring does not wipe its key schedule on drop, so [`Aead`] keeps the key in
//! a box and overwrites it after dropping it (ring's key types hold their
//! schedules inline, with no heap pointers).

use ring::aead::{self as r, LessSafeKey, UnboundKey};
use std::fmt;
use std::mem::ManuallyDrop;
use zeroize::Zeroize;

pub const TAG_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    ChaCha20Poly1305,
    Aes128Gcm,
    Aes256Gcm,
}

impl Algorithm {
    pub fn key_len(self) -> usize {
        match self {
            Algorithm::ChaCha20Poly1305 | Algorithm::Aes256Gcm => 32,
            Algorithm::Aes128Gcm => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ChaCha20Poly1305 => "CHACHA20-POLY1305",
            Algorithm::Aes128Gcm => "AES-128-GCM",
            Algorithm::Aes256Gcm => "AES-256-GCM",
        }
    }

    fn ring(self) -> &'static r::Algorithm {
        match self {
            Algorithm::ChaCha20Poly1305 => &r::CHACHA20_POLY1305,
            Algorithm::Aes128Gcm => &r::AES_128_GCM,
            Algorithm::Aes256Gcm => &r::AES_256_GCM,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AeadError {
    #[error("key is {got} bytes, {algorithm} needs {need}")]
    KeyLength {
        algorithm: Algorithm,
        got: usize,
        need: usize,
    },
    /// Authentication failed; deliberately carries no detail.
    #[error("authentication failed")]
    Auth,
    #[error("ciphertext shorter than the tag")]
    Short,
}

/// ring's key, wiped when dropped.
struct WipedKey(Box<ManuallyDrop<LessSafeKey>>);

impl Drop for WipedKey {
    fn drop(&mut self) {
        let p: *mut ManuallyDrop<LessSafeKey> = &mut *self.0;
        // SAFETY: the key is dropped exactly once, here; afterwards its
        // bytes are plain memory owned by the box, which is overwritten
        // (volatile writes, via zeroize) before the box frees it without
        // dropping the contents again (ManuallyDrop).
        unsafe {
            ManuallyDrop::drop(&mut *p);
            std::slice::from_raw_parts_mut(p.cast::<u8>(), std::mem::size_of::<LessSafeKey>())
                .zeroize();
        }
    }
}

/// A keyed AEAD. The key schedule is wiped when this is dropped.
pub struct Aead {
    key: WipedKey,
    algorithm: Algorithm,
}

impl fmt::Debug for Aead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aead")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Aead {
    pub fn new(algorithm: Algorithm, key: &[u8]) -> Result<Self, AeadError> {
        let unbound = UnboundKey::new(algorithm.ring(), key).map_err(|_| AeadError::KeyLength {
            algorithm,
            got: key.len(),
            need: algorithm.key_len(),
        })?;
        Ok(Self {
            key: WipedKey(Box::new(ManuallyDrop::new(LessSafeKey::new(unbound)))),
            algorithm,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let n = r::Nonce::assume_unique_for_key(*nonce);
        // Sealing only fails for inputs beyond the cipher's limit (2^36
        // bytes for GCM), which no packet reaches.
        match self
            .key
            .0
            .seal_in_place_separate_tag(n, r::Aad::from(aad), buf)
        {
            Ok(tag) => {
                let mut t = [0u8; TAG_LEN];
                t.copy_from_slice(tag.as_ref());
                t
            }
            Err(_) => [0; TAG_LEN],
        }
    }

    /// Decrypts `buf` (ciphertext followed by the tag) in place and returns
    /// the plaintext length. The tag comparison is constant-time.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, AeadError> {
        let ct_len = buf.len().checked_sub(TAG_LEN).ok_or(AeadError::Short)?;
        let (ct, tag) = buf.split_at_mut(ct_len);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.open_detached(nonce, aad, ct, &t).map(|()| ct_len)
    }

    /// Decrypts `buf` in place with a tag carried elsewhere.
    pub fn open_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        let n = r::Nonce::assume_unique_for_key(*nonce);
        self.key
            .0
            .open_in_place_separate_tag(n, r::Aad::from(aad), r::Tag::from(*tag), buf, 0..)
            .map(|_| ())
            .map_err(|_| AeadError::Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha_rfc8439_vector() {
        // RFC 8439 §2.8.2
        let key: Vec<u8> = (0x80u8..=0x9f).collect();
        let nonce = [
            0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
        ];
        let aad = [
            0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
        ];
        let mut msg = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let a = Aead::new(Algorithm::ChaCha20Poly1305, &key).unwrap();
        let tag = a.seal_in_place(&nonce, &aad, &mut msg);
        assert_eq!(
            tag,
            [
                0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
                0x06, 0x91
            ]
        );
        assert_eq!(&msg[..4], &[0xd3, 0x1a, 0x8d, 0x34]);
        msg.extend_from_slice(&tag);
        let n = a.open_in_place(&nonce, &aad, &mut msg).unwrap();
        assert!(msg[..n].starts_with(b"Ladies"));
    }

    #[test]
    fn tampering_is_rejected_for_every_algorithm() {
        for alg in [
            Algorithm::ChaCha20Poly1305,
            Algorithm::Aes128Gcm,
            Algorithm::Aes256Gcm,
        ] {
            let a = Aead::new(alg, &vec![7u8; alg.key_len()]).unwrap();
            let mut buf = b"payload".to_vec();
            let tag = a.seal_in_place(&[1; 12], b"aad", &mut buf);
            buf.extend_from_slice(&tag);
            let mut bad = buf.clone();
            bad[2] ^= 1;
            assert_eq!(
                a.open_in_place(&[1; 12], b"aad", &mut bad),
                Err(AeadError::Auth)
            );
            let mut bad_aad = buf.clone();
            assert_eq!(
                a.open_in_place(&[1; 12], b"aaD", &mut bad_aad),
                Err(AeadError::Auth)
            );
            assert_eq!(a.open_in_place(&[1; 12], b"aad", &mut buf), Ok(7));
            assert_eq!(&buf[..7], b"payload");
            assert_eq!(
                a.open_in_place(&[1; 12], b"", &mut [0u8; 3]),
                Err(AeadError::Short)
            );
        }
        assert!(Aead::new(Algorithm::Aes256Gcm, &[0; 16]).is_err());
    }
}
