//! ESP with an AEAD (AES-GCM-16, RFC 4106; ChaCha20-Poly1305, RFC 7634) as
//! a [`RecordFormat`] of core's record engine.
//!
//! ```text
//! SPI | seq_lo | IV (8) | AEAD(payload | padding | pad len | next header) | ICV (16)
//! nonce = salt (4) | IV (8)
//! AAD   = SPI | seq_lo            (32-bit sequence numbers)
//!       = SPI | seq_hi | seq_lo   (extended sequence numbers)
//! ```
//! The sender uses its 64-bit sequence number as the IV, as strongSwan and
//! Linux do: unique per key, which is all GCM and ChaCha20 need. The
//! receiver takes the IV from the packet (peers may choose it differently).

use crate::wire::{self, NextHeader, HEADER_LEN};
use polytun_core::aead::NONCE_LEN;
use polytun_core::RecordFormat;
use zeroize::Zeroize;

/// Explicit IV bytes of the AEAD transforms.
pub const IV_LEN: usize = 8;
/// Header of an AEAD ESP packet: SPI, sequence number, IV.
pub const AEAD_HEADER_LEN: usize = HEADER_LEN + IV_LEN;
/// Salt bytes at the end of the KEYMAT of every AEAD transform.
pub const SALT_LEN: usize = 4;
/// AEAD transforms pad to 4-byte alignment only (RFC 4106 §3.2, RFC 7634 §2).
pub const AEAD_BLOCK: usize = 4;

/// The record layout of one AEAD ESP SA (one direction).
#[derive(Debug)]
pub struct AeadFormat {
    spi: u32,
    salt: [u8; SALT_LEN],
    esn: bool,
    first_seq: u64,
}

impl AeadFormat {
    pub fn new(spi: u32, salt: [u8; SALT_LEN], esn: bool, first_seq: u64) -> Self {
        Self {
            spi,
            salt,
            esn,
            first_seq,
        }
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub fn esn(&self) -> bool {
        self.esn
    }
}

impl Drop for AeadFormat {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

/// AAD of an ESP packet: SPI ‖ seq_lo, or SPI ‖ seq_hi ‖ seq_lo with ESN.
pub(crate) fn esp_aad(spi: u32, seq: u64, esn: bool, out: &mut [u8]) -> usize {
    out[..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        out[4..12].copy_from_slice(&seq.to_be_bytes());
        12
    } else {
        out[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        8
    }
}

impl RecordFormat for AeadFormat {
    fn header_len(&self) -> usize {
        AEAD_HEADER_LEN
    }

    fn write_header(&self, h: &mut [u8], counter: u64) {
        h[..4].copy_from_slice(&self.spi.to_be_bytes());
        h[4..8].copy_from_slice(&(counter as u32).to_be_bytes());
        h[8..16].copy_from_slice(&counter.to_be_bytes());
    }

    fn nonce(&self, counter: u64) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(&counter.to_be_bytes());
        n
    }

    /// The receiver's nonce: salt ‖ the IV the peer put in the packet.
    fn open_nonce(&self, header: &[u8], _counter: u64) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&self.salt);
        if let Some(iv) = header.get(HEADER_LEN..AEAD_HEADER_LEN) {
            n[4..].copy_from_slice(iv);
        }
        n
    }

    fn aad(&self, _header: &[u8], counter: u64, out: &mut [u8; 32]) -> usize {
        esp_aad(self.spi, counter, self.esn, out)
    }

    fn trailer_len(&self, payload_len: usize) -> usize {
        wire::trailer_len(payload_len, AEAD_BLOCK)
    }

    fn write_trailer(&self, trailer: &mut [u8], payload: &[u8]) {
        wire::write_trailer(trailer, NextHeader::of_payload(payload).value());
    }

    /// Validates padding and next header; the trailer itself is removed by
    /// [`crate::EspSa::open`], which needs the next header.
    fn strip_trailer(&self, plaintext: &[u8]) -> Option<usize> {
        wire::parse_trailer(plaintext).map(|_| plaintext.len())
    }

    /// Sequence numbers start at 1 (RFC 4303 §3.3.3).
    fn first_counter(&self) -> u64 {
        self.first_seq
    }

    /// No wrap: 2^32 − 1 without ESN, 2^64 − 1 with.
    fn max_counter(&self) -> u64 {
        if self.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        }
    }
}
