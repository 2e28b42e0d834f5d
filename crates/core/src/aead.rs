//! The AEAD seam: every record layer seals and opens through [`Aead`].
//!
//! One place chooses the implementation (RustCrypto today, with `zeroize`
//! so expanded keys are wiped on drop); the throughput issue compares
//! backends by benchmark behind this same API.

use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use std::fmt;

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

enum Cipher {
    ChaCha(Box<ChaCha20Poly1305>),
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

/// A keyed AEAD. The key schedule is zeroized when this is dropped.
pub struct Aead {
    cipher: Cipher,
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
        let bad = || AeadError::KeyLength {
            algorithm,
            got: key.len(),
            need: algorithm.key_len(),
        };
        let cipher = match algorithm {
            Algorithm::ChaCha20Poly1305 => Cipher::ChaCha(Box::new(
                ChaCha20Poly1305::new_from_slice(key).map_err(|_| bad())?,
            )),
            Algorithm::Aes128Gcm => {
                Cipher::Aes128(Box::new(Aes128Gcm::new_from_slice(key).map_err(|_| bad())?))
            }
            Algorithm::Aes256Gcm => {
                Cipher::Aes256(Box::new(Aes256Gcm::new_from_slice(key).map_err(|_| bad())?))
            }
        };
        Ok(Self { cipher, algorithm })
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
        let n = nonce.into();
        // Encryption only fails for plaintexts beyond the cipher's limit
        // (2^36 bytes for GCM), which no packet reaches.
        let tag = match &self.cipher {
            Cipher::ChaCha(c) => c.encrypt_in_place_detached(n, aad, buf),
            Cipher::Aes128(c) => c.encrypt_in_place_detached(n, aad, buf),
            Cipher::Aes256(c) => c.encrypt_in_place_detached(n, aad, buf),
        };
        match tag {
            Ok(t) => t.into(),
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
        let n = nonce.into();
        let tag = (&*tag).into();
        let r = match &self.cipher {
            Cipher::ChaCha(c) => c.decrypt_in_place_detached(n, aad, ct, tag),
            Cipher::Aes128(c) => c.decrypt_in_place_detached(n, aad, ct, tag),
            Cipher::Aes256(c) => c.decrypt_in_place_detached(n, aad, ct, tag),
        };
        r.map(|()| ct_len).map_err(|_| AeadError::Auth)
    }

    /// Decrypts `buf` in place with a tag carried elsewhere.
    pub fn open_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        let n = nonce.into();
        let tag = tag.into();
        let r = match &self.cipher {
            Cipher::ChaCha(c) => c.decrypt_in_place_detached(n, aad, buf, tag),
            Cipher::Aes128(c) => c.decrypt_in_place_detached(n, aad, buf, tag),
            Cipher::Aes256(c) => c.decrypt_in_place_detached(n, aad, buf, tag),
        };
        r.map_err(|_| AeadError::Auth)
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
