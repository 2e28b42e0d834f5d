//! ESP with AES-CBC (RFC 3602) and HMAC-SHA2-256-128 (RFC 4868), for peers
//! that offer no AEAD.
//!
//! Core's record engine is AEAD-only (one nonce, a prefix AAD, one tag), and
//! this transform fits it badly: its 16-byte IV must be unpredictable and
//! travels in the header, and with ESN the high sequence bits are appended
//! *after* the ciphertext for the ICV (RFC 4303 §2.2.1). So it lives here,
//! in the same shape as core's [`polytun_core::SealingKey`] /
//! [`polytun_core::OpeningKey`]: seal/open in place on a [`PacketBuf`],
//! core's [`ReplayWindow`] (checked before, committed after authentication)
//! and core's [`Lifetime`].
//!
//! ```text
//! SPI | seq_lo | IV (16) | AES-CBC(payload | padding | pad len | next header) | ICV (16)
//! ICV = HMAC-SHA256(integ key, SPI | seq_lo | IV | ciphertext [| seq_hi with ESN])[..16]
//! IV  = AES_K'(seq (8, big endian) | 0^8), K' = HMAC-SHA256(enc key, "polytun ESP AES-CBC IV")
//! ```
//! The IV is the encryption of a counter under a key derived from (and
//! distinct from) the encryption key: unpredictable to anyone without the
//! key, as RFC 3602 §3 requires, deterministic (sans-I/O, no RNG needed),
//! and the NIST SP 800-38A Appendix C construction.

use crate::wire::{self, NextHeader, HEADER_LEN, ICV_LEN};
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes256, Block};
use hmac::{Hmac, Mac};
use polytun_core::lifetime::Lifetime;
use polytun_core::replay::ReplayWindow;
use polytun_core::{KeyStatus, Limits, OpenError, PacketBuf, SealError};
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// CBC IV bytes (the AES block).
pub const CBC_IV_LEN: usize = 16;
/// Header of a CBC ESP packet: SPI, sequence number, IV.
pub const CBC_HEADER_LEN: usize = HEADER_LEN + CBC_IV_LEN;
/// AES block: the ciphertext is a whole number of these.
pub const CBC_BLOCK: usize = 16;
/// HMAC-SHA2-256-128 key bytes (RFC 4868 §2.1.1: the full 256 bits).
pub const INTEG_KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

enum Cipher {
    Aes128(Box<Aes128>),
    Aes256(Box<Aes256>),
}

impl Cipher {
    fn new(key: &[u8]) -> Option<Self> {
        match key.len() {
            16 => Aes128::new_from_slice(key)
                .ok()
                .map(|c| Cipher::Aes128(Box::new(c))),
            32 => Aes256::new_from_slice(key)
                .ok()
                .map(|c| Cipher::Aes256(Box::new(c))),
            _ => None,
        }
    }

    fn encrypt(&self, b: &mut Block) {
        match self {
            Cipher::Aes128(c) => c.encrypt_block(b),
            Cipher::Aes256(c) => c.encrypt_block(b),
        }
    }

    fn decrypt(&self, b: &mut Block) {
        match self {
            Cipher::Aes128(c) => c.decrypt_block(b),
            Cipher::Aes256(c) => c.decrypt_block(b),
        }
    }
}

/// The keys of one CBC+HMAC SA. The AES key schedules are zeroized on drop
/// (`aes/zeroize`), the HMAC key is held in a zeroizing buffer (the HMAC
/// state is rebuilt per packet so no long-lived copy of it exists).
pub struct CbcKeys {
    enc: Cipher,
    iv_gen: Aes256,
    integ: Zeroizing<[u8; INTEG_KEY_LEN]>,
}

impl std::fmt::Debug for CbcKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CbcKeys").finish_non_exhaustive()
    }
}

impl CbcKeys {
    /// `enc_key` is 16 or 32 bytes (AES-128/256), `integ_key` 32 bytes.
    pub fn new(enc_key: &[u8], integ_key: &[u8]) -> Option<Self> {
        let enc = Cipher::new(enc_key)?;
        let integ: [u8; INTEG_KEY_LEN] = integ_key.try_into().ok()?;
        let mut kdf = <HmacSha256 as Mac>::new_from_slice(enc_key).ok()?;
        kdf.update(b"polytun ESP AES-CBC IV");
        let iv_key = Zeroizing::new(<[u8; 32]>::from(kdf.finalize().into_bytes()));
        let iv_gen = Aes256::new_from_slice(&iv_key[..]).ok()?;
        Some(Self {
            enc,
            iv_gen,
            integ: Zeroizing::new(integ),
        })
    }

    fn iv(&self, seq: u64) -> [u8; CBC_IV_LEN] {
        let mut b = Block::default();
        b[..8].copy_from_slice(&seq.to_be_bytes());
        self.iv_gen.encrypt_block(&mut b);
        b.into()
    }

    /// ICV over `authenticated` (SPI ‖ seq ‖ IV ‖ ciphertext) ‖ seq_hi (ESN).
    fn icv(&self, authenticated: &[u8], seq_hi: Option<u32>) -> [u8; ICV_LEN] {
        // A 32-byte key is always a valid HMAC key.
        let mut mac = match <HmacSha256 as Mac>::new_from_slice(&self.integ[..]) {
            Ok(m) => m,
            Err(_) => return [0; ICV_LEN],
        };
        mac.update(authenticated);
        if let Some(hi) = seq_hi {
            mac.update(&hi.to_be_bytes());
        }
        let full = mac.finalize().into_bytes();
        let mut icv = [0u8; ICV_LEN];
        icv.copy_from_slice(&full[..ICV_LEN]);
        icv
    }

    fn cbc_encrypt(&self, iv: &[u8; CBC_IV_LEN], data: &mut [u8]) {
        let mut prev = *iv;
        for chunk in data.chunks_exact_mut(CBC_BLOCK) {
            for (c, p) in chunk.iter_mut().zip(prev.iter()) {
                *c ^= p;
            }
            let b = Block::from_mut_slice(chunk);
            self.enc.encrypt(b);
            prev.copy_from_slice(chunk);
        }
    }

    fn cbc_decrypt(&self, iv: &[u8; CBC_IV_LEN], data: &mut [u8]) {
        // Back to front, so each block's predecessor is still ciphertext.
        let n = data.len() / CBC_BLOCK;
        for i in (0..n).rev() {
            let mut prev = [0u8; CBC_BLOCK];
            if i == 0 {
                prev = *iv;
            } else {
                prev.copy_from_slice(&data[(i - 1) * CBC_BLOCK..i * CBC_BLOCK]);
            }
            let chunk = &mut data[i * CBC_BLOCK..(i + 1) * CBC_BLOCK];
            self.enc.decrypt(Block::from_mut_slice(chunk));
            for (c, p) in chunk.iter_mut().zip(prev.iter()) {
                *c ^= p;
            }
        }
    }
}

fn seq_hi(esn: bool, seq: u64) -> Option<u32> {
    esn.then_some((seq >> 32) as u32)
}

/// The sending half of a CBC+HMAC SA.
#[derive(Debug)]
pub struct CbcSealer {
    keys: CbcKeys,
    spi: u32,
    esn: bool,
    counter: AtomicU64,
    lifetime: Lifetime,
}

impl CbcSealer {
    pub fn new(
        keys: CbcKeys,
        spi: u32,
        esn: bool,
        first_seq: u64,
        limits: Limits,
        now: Instant,
    ) -> Self {
        Self {
            keys,
            spi,
            esn,
            counter: AtomicU64::new(first_seq),
            lifetime: Lifetime::new(limits, now),
        }
    }

    pub fn lifetime(&self) -> &Lifetime {
        &self.lifetime
    }

    pub fn next_counter(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    fn max_counter(&self) -> u64 {
        if self.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        }
    }

    /// Seals the packet in place (header prepended, trailer and ICV appended).
    pub fn seal(&self, now: Instant, pkt: &mut PacketBuf<'_>) -> Result<KeyStatus, SealError> {
        self.lifetime.check(now)?;
        let payload_len = pkt.len();
        let trailer_len = wire::trailer_len(payload_len, CBC_BLOCK);
        if pkt.headroom() < CBC_HEADER_LEN || pkt.tailroom() < trailer_len + ICV_LEN {
            return Err(SealError::NoRoom);
        }
        let seq = self.counter.fetch_add(1, Ordering::Relaxed);
        if seq > self.max_counter() {
            self.lifetime.retire();
            return Err(SealError::CounterExhausted);
        }
        let nh = NextHeader::of_payload(pkt.as_slice()).value();
        wire::write_trailer(pkt.append(trailer_len).ok_or(SealError::NoRoom)?, nh);
        let iv = self.keys.iv(seq);
        self.keys.cbc_encrypt(&iv, pkt.as_mut_slice());
        let hdr = pkt.prepend(CBC_HEADER_LEN).ok_or(SealError::NoRoom)?;
        hdr[..4].copy_from_slice(&self.spi.to_be_bytes());
        hdr[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        hdr[8..].copy_from_slice(&iv);
        let icv = self.keys.icv(pkt.as_slice(), seq_hi(self.esn, seq));
        pkt.append(ICV_LEN)
            .ok_or(SealError::NoRoom)?
            .copy_from_slice(&icv);
        Ok(self.lifetime.account(now, payload_len))
    }
}

/// The receiving half of a CBC+HMAC SA.
#[derive(Debug)]
pub struct CbcOpener {
    keys: CbcKeys,
    esn: bool,
    replay: Mutex<ReplayWindow>,
    lifetime: Lifetime,
}

impl CbcOpener {
    pub fn new(keys: CbcKeys, esn: bool, window: u64, limits: Limits, now: Instant) -> Self {
        Self {
            keys,
            esn,
            replay: Mutex::new(ReplayWindow::new(window)),
            lifetime: Lifetime::new(limits, now),
        }
    }

    pub fn lifetime(&self) -> &Lifetime {
        &self.lifetime
    }

    fn replay(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn newest(&self) -> Option<u64> {
        self.replay().newest()
    }

    pub fn window(&self) -> u64 {
        self.replay().window()
    }

    /// Opens the packet in `pkt` (header … ICV) whose 64-bit sequence number
    /// is `seq`. On success `pkt` holds the plaintext with its trailer
    /// (validated), like core's `OpeningKey` with ESP's format.
    pub fn open(
        &self,
        now: Instant,
        pkt: &mut PacketBuf<'_>,
        seq: u64,
    ) -> Result<KeyStatus, OpenError> {
        self.lifetime.check(now)?;
        let len = pkt.len();
        let ct_len = len
            .checked_sub(CBC_HEADER_LEN + ICV_LEN)
            .ok_or(OpenError::Short)?;
        if ct_len == 0 || ct_len % CBC_BLOCK != 0 {
            return Err(OpenError::Short);
        }
        self.replay().check(seq)?;
        let (authenticated, icv) = pkt.as_slice().split_at(len - ICV_LEN);
        let want = self.keys.icv(authenticated, seq_hi(self.esn, seq));
        if !bool::from(want.ct_eq(icv)) {
            return Err(OpenError::Auth);
        }
        let mut iv = [0u8; CBC_IV_LEN];
        iv.copy_from_slice(&pkt.as_slice()[HEADER_LEN..CBC_HEADER_LEN]);
        pkt.trim_back(ICV_LEN);
        pkt.trim_front(CBC_HEADER_LEN);
        self.keys.cbc_decrypt(&iv, pkt.as_mut_slice());
        // Only an authenticated packet may move the window.
        self.replay().update(seq)?;
        wire::parse_trailer(pkt.as_slice()).ok_or(OpenError::Trailer)?;
        Ok(self.lifetime.account(now, pkt.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3602 §4 case #2 (AES-128-CBC, two blocks).
    #[test]
    fn aes_cbc_rfc3602_case2() {
        let key = hex("c286696d887c9aa0611bbb3e2025a45a");
        let iv: [u8; 16] = hex("562e17996d093d28ddb3ba695a2e6f58").try_into().unwrap();
        let pt = hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
        let ct = hex("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1");
        let k = CbcKeys::new(&key, &[0; 32]).unwrap();
        let mut buf = pt.clone();
        k.cbc_encrypt(&iv, &mut buf);
        assert_eq!(buf, ct);
        k.cbc_decrypt(&iv, &mut buf);
        assert_eq!(buf, pt);
    }

    /// RFC 4868 §2.7.2.1, Test Case AUTH256-2 (HMAC-SHA-256-128).
    #[test]
    fn hmac_sha256_128_rfc4868() {
        let key = b"JefeJefeJefeJefeJefeJefeJefeJefe";
        let k = CbcKeys::new(&[0; 16], key).unwrap();
        let icv = k.icv(b"what do ya want for nothing?", None);
        assert_eq!(icv.to_vec(), hex("167f928588c5cc2eef8e3093caa0e87c"));
        // seq_hi is appended after the data (RFC 4303 §2.2.1).
        let with_hi = k.icv(b"what do ya want for nothing?", Some(0x0102_0304));
        let mut concat = b"what do ya want for nothing?".to_vec();
        concat.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(with_hi, k.icv(&concat, None));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
