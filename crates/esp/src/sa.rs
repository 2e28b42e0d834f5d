//! One ESP security association (one direction), built from IKE's KEYMAT.

use crate::aead::{AeadFormat, AEAD_HEADER_LEN, SALT_LEN};
use crate::cbc::{CbcKeys, CbcOpener, CbcSealer, CBC_HEADER_LEN, INTEG_KEY_LEN};
use crate::wire::{self, NextHeader, ICV_LEN};
use polytun_core::lifetime::Lifetime;
use polytun_core::replay::DEFAULT_WINDOW;
use polytun_core::{
    Aead, Algorithm, KeyStatus, Limits, OpenError, OpeningKey, PacketBuf, SealError, SealingKey,
};
use std::time::Instant;

/// The ESP transforms polytun speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transform {
    /// ENCR_AES_GCM_16 with a 128-bit key (RFC 4106).
    AesGcm128,
    /// ENCR_AES_GCM_16 with a 256-bit key (RFC 4106).
    AesGcm256,
    /// ENCR_CHACHA20_POLY1305 (RFC 7634).
    ChaCha20Poly1305,
    /// ENCR_AES_CBC 128 (RFC 3602) + AUTH_HMAC_SHA2_256_128 (RFC 4868).
    AesCbc128HmacSha256,
    /// ENCR_AES_CBC 256 (RFC 3602) + AUTH_HMAC_SHA2_256_128 (RFC 4868).
    AesCbc256HmacSha256,
}

impl Transform {
    pub const ALL: [Transform; 5] = [
        Transform::AesGcm128,
        Transform::AesGcm256,
        Transform::ChaCha20Poly1305,
        Transform::AesCbc128HmacSha256,
        Transform::AesCbc256HmacSha256,
    ];

    /// Length of the encryption key (without the AEAD salt).
    pub fn enc_key_len(self) -> usize {
        match self {
            Transform::AesGcm128 | Transform::AesCbc128HmacSha256 => 16,
            _ => 32,
        }
    }

    /// Length of the integrity key (0 for AEAD transforms).
    pub fn integ_key_len(self) -> usize {
        if self.is_aead() {
            0
        } else {
            INTEG_KEY_LEN
        }
    }

    /// Bytes of KEYMAT one SA (one direction) takes, in the order IKE
    /// produces them (RFC 7296 §2.17): encryption key (‖ 4-byte salt for
    /// AEAD, RFC 4106 §8.1 / RFC 7634 §2), then integrity key.
    pub fn keymat_len(self) -> usize {
        if self.is_aead() {
            self.enc_key_len() + SALT_LEN
        } else {
            self.enc_key_len() + INTEG_KEY_LEN
        }
    }

    pub fn is_aead(self) -> bool {
        matches!(
            self,
            Transform::AesGcm128 | Transform::AesGcm256 | Transform::ChaCha20Poly1305
        )
    }

    /// Cleartext header bytes: SPI, sequence number, IV.
    pub fn header_len(self) -> usize {
        if self.is_aead() {
            AEAD_HEADER_LEN
        } else {
            CBC_HEADER_LEN
        }
    }

    /// Padding alignment of the encrypted part.
    pub fn block_len(self) -> usize {
        if self.is_aead() {
            crate::aead::AEAD_BLOCK
        } else {
            crate::cbc::CBC_BLOCK
        }
    }

    /// Bytes ESP adds to a payload of `payload_len` bytes (before any UDP/IP).
    pub fn overhead(self, payload_len: usize) -> usize {
        self.header_len() + wire::trailer_len(payload_len, self.block_len()) + ICV_LEN
    }

    pub fn name(self) -> &'static str {
        match self {
            Transform::AesGcm128 => "AES_GCM_16-128",
            Transform::AesGcm256 => "AES_GCM_16-256",
            Transform::ChaCha20Poly1305 => "CHACHA20_POLY1305",
            Transform::AesCbc128HmacSha256 => "AES_CBC-128/HMAC_SHA2_256_128",
            Transform::AesCbc256HmacSha256 => "AES_CBC-256/HMAC_SHA2_256_128",
        }
    }

    fn aead_algorithm(self) -> Option<Algorithm> {
        match self {
            Transform::AesGcm128 => Some(Algorithm::Aes128Gcm),
            Transform::AesGcm256 => Some(Algorithm::Aes256Gcm),
            Transform::ChaCha20Poly1305 => Some(Algorithm::ChaCha20Poly1305),
            _ => None,
        }
    }
}

/// Headroom a packet buffer needs for any transform's ESP header.
pub const MAX_HEADER_LEN: usize = CBC_HEADER_LEN;
/// Tailroom a packet buffer needs for any transform's trailer and ICV.
pub const MAX_TRAILER_LEN: usize = crate::cbc::CBC_BLOCK + 1 + ICV_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We receive (open) with this SA; its SPI is the one we chose.
    Inbound,
    /// We send (seal) with this SA; its SPI is the one the peer chose.
    Outbound,
}

/// What an SA is built from (besides its keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaParams {
    pub spi: u32,
    pub direction: Direction,
    pub transform: Transform,
    /// Extended (64-bit) sequence numbers, RFC 4303 §2.2.1.
    pub esn: bool,
    /// Anti-replay window in packets (inbound; at least 64). Default 8192.
    pub window: u64,
    /// Soft (rekey) and hard (the SA is gone) lifetimes. Bytes count the
    /// inner packet when sealing; when opening they also count the ESP
    /// trailer (padding, pad length, next header: 2–17 bytes a packet),
    /// because core's engine accounts before ESP strips it.
    pub limits: Limits,
    /// The first sequence number sent (outbound). Always 1 in production
    /// (RFC 4303 §3.3.3); tests set it near 2^32 to cross the ESN rollover.
    pub first_seq: u64,
}

impl SaParams {
    pub fn new(spi: u32, direction: Direction, transform: Transform) -> Self {
        Self {
            spi,
            direction,
            transform,
            esn: false,
            window: DEFAULT_WINDOW,
            limits: Limits::default(),
            first_seq: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaError {
    #[error("{transform:?} needs {need} bytes of KEYMAT, got {got}")]
    KeymatLength {
        transform: Transform,
        got: usize,
        need: usize,
    },
    #[error("SPI {0} is reserved (0-255)")]
    ReservedSpi(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EspSealError {
    #[error("this SA is inbound")]
    WrongDirection,
    #[error("payload is neither IPv4 nor IPv6")]
    NotIp,
    #[error(transparent)]
    Seal(#[from] SealError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EspOpenError {
    #[error("this SA is outbound")]
    WrongDirection,
    #[error("packet shorter than the ESP header")]
    Short,
    #[error("SPI {0:#010x} is not this SA's")]
    WrongSpi(u32),
    #[error("sequence number 0 is never sent")]
    ZeroSequence,
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// An authenticated, decrypted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// What the payload (now all of the packet buffer) is. For
    /// [`NextHeader::Dummy`] the buffer is empty: drop it, it is no error.
    pub next_header: NextHeader,
    /// [`KeyStatus::Expiring`] once, when this packet crossed a soft limit.
    pub status: KeyStatus,
    /// The full (ESN-extended) sequence number of the packet.
    pub seq: u64,
}

impl Opened {
    pub fn is_dummy(&self) -> bool {
        self.next_header == NextHeader::Dummy
    }
}

enum Engine {
    AeadOut(SealingKey<AeadFormat>),
    AeadIn(OpeningKey<AeadFormat>),
    CbcOut(CbcSealer),
    CbcIn(CbcOpener),
}

/// One ESP SA: seals (outbound) or opens (inbound) tunnel-mode packets in
/// place. Shared by data-path workers through `&self`.
pub struct EspSa {
    params: SaParams,
    engine: Engine,
}

impl std::fmt::Debug for EspSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspSa")
            .field("spi", &format_args!("{:#010x}", self.params.spi))
            .field("direction", &self.params.direction)
            .field("transform", &self.params.transform)
            .field("esn", &self.params.esn)
            .finish_non_exhaustive()
    }
}

impl EspSa {
    /// Builds the SA from this direction's KEYMAT slice:
    ///
    /// | transform | KEYMAT (bytes) |
    /// | --- | --- |
    /// | AES-GCM-16-128 | key (16) ‖ salt (4) = 20 |
    /// | AES-GCM-16-256 | key (32) ‖ salt (4) = 36 |
    /// | ChaCha20-Poly1305 | key (32) ‖ salt (4) = 36 |
    /// | AES-CBC-128 + HMAC-SHA2-256-128 | enc key (16) ‖ integ key (32) = 48 |
    /// | AES-CBC-256 + HMAC-SHA2-256-128 | enc key (32) ‖ integ key (32) = 64 |
    ///
    /// IKE (RFC 7296 §2.17) draws KEYMAT for the initiator→responder SA
    /// first, then for responder→initiator, each as above.
    pub fn new(params: SaParams, keymat: &[u8], now: Instant) -> Result<Self, SaError> {
        let t = params.transform;
        if keymat.len() != t.keymat_len() {
            return Err(SaError::KeymatLength {
                transform: t,
                got: keymat.len(),
                need: t.keymat_len(),
            });
        }
        if params.spi <= 255 {
            return Err(SaError::ReservedSpi(params.spi));
        }
        let (enc, rest) = keymat.split_at(t.enc_key_len());
        let bad_len = || SaError::KeymatLength {
            transform: t,
            got: keymat.len(),
            need: t.keymat_len(),
        };
        let engine = match t.aead_algorithm() {
            Some(alg) => {
                let aead = Aead::new(alg, enc).map_err(|_| bad_len())?;
                let salt: [u8; SALT_LEN] = rest.try_into().map_err(|_| bad_len())?;
                let format = AeadFormat::new(params.spi, salt, params.esn, params.first_seq);
                match params.direction {
                    Direction::Outbound => {
                        Engine::AeadOut(SealingKey::new(aead, format, params.limits, now))
                    }
                    Direction::Inbound => Engine::AeadIn(OpeningKey::new(
                        aead,
                        format,
                        params.window,
                        params.limits,
                        now,
                    )),
                }
            }
            None => {
                let keys = CbcKeys::new(enc, rest).ok_or_else(bad_len)?;
                match params.direction {
                    Direction::Outbound => Engine::CbcOut(CbcSealer::new(
                        keys,
                        params.spi,
                        params.esn,
                        params.first_seq,
                        params.limits,
                        now,
                    )),
                    Direction::Inbound => Engine::CbcIn(CbcOpener::new(
                        keys,
                        params.esn,
                        params.window,
                        params.limits,
                        now,
                    )),
                }
            }
        };
        Ok(Self { params, engine })
    }

    pub fn spi(&self) -> u32 {
        self.params.spi
    }

    pub fn direction(&self) -> Direction {
        self.params.direction
    }

    pub fn transform(&self) -> Transform {
        self.params.transform
    }

    pub fn esn(&self) -> bool {
        self.params.esn
    }

    pub fn params(&self) -> &SaParams {
        &self.params
    }

    /// Bytes, packets and age of this SA (and its soft/hard state).
    pub fn lifetime(&self) -> &Lifetime {
        match &self.engine {
            Engine::AeadOut(k) => k.lifetime(),
            Engine::AeadIn(k) => k.lifetime(),
            Engine::CbcOut(k) => k.lifetime(),
            Engine::CbcIn(k) => k.lifetime(),
        }
    }

    /// Takes the SA out of service (deleted, or superseded after a rekey).
    pub fn retire(&self) {
        self.lifetime().retire();
    }

    /// Outbound: the sequence number the next packet will carry.
    pub fn next_seq(&self) -> Option<u64> {
        match &self.engine {
            Engine::AeadOut(k) => Some(k.next_counter()),
            Engine::CbcOut(k) => Some(k.next_counter()),
            _ => None,
        }
    }

    /// Inbound: the highest authenticated sequence number.
    pub fn newest_seq(&self) -> Option<u64> {
        match &self.engine {
            Engine::AeadIn(k) => k.newest(),
            Engine::CbcIn(k) => k.newest(),
            _ => None,
        }
    }

    /// Seals the IPv4/IPv6 packet in `pkt` in place: ESP header prepended
    /// (needs [`Transform::header_len`] bytes of headroom), padding, pad
    /// length, next header and ICV appended (up to [`MAX_TRAILER_LEN`]).
    pub fn seal(&self, now: Instant, pkt: &mut PacketBuf<'_>) -> Result<KeyStatus, EspSealError> {
        if NextHeader::of_payload(pkt.as_slice()) == NextHeader::Dummy {
            return Err(EspSealError::NotIp);
        }
        self.seal_any(now, pkt)
    }

    /// Seals a dummy packet (next header 59, RFC 4303 §2.6) with the bytes
    /// of `pkt` (overwritten with zeros) as its content: for traffic-flow
    /// confidentiality or as a liveness probe.
    pub fn seal_dummy(
        &self,
        now: Instant,
        pkt: &mut PacketBuf<'_>,
    ) -> Result<KeyStatus, EspSealError> {
        pkt.as_mut_slice().fill(0);
        self.seal_any(now, pkt)
    }

    fn seal_any(&self, now: Instant, pkt: &mut PacketBuf<'_>) -> Result<KeyStatus, EspSealError> {
        match &self.engine {
            Engine::AeadOut(k) => Ok(k.seal(now, pkt)?),
            Engine::CbcOut(k) => Ok(k.seal(now, pkt)?),
            _ => Err(EspSealError::WrongDirection),
        }
    }

    /// Opens the ESP packet in `pkt` (starting at the SPI; any UDP
    /// encapsulation already removed) in place. The sequence number is
    /// checked against the replay window before authentication and
    /// committed only after it; with ESN its high half is inferred from the
    /// window (RFC 4303 Appendix A). On success `pkt` holds the inner
    /// packet (empty for a dummy packet).
    pub fn open(&self, now: Instant, pkt: &mut PacketBuf<'_>) -> Result<Opened, EspOpenError> {
        let hdr = wire::parse_header(pkt.as_slice()).ok_or(EspOpenError::Short)?;
        if hdr.spi != self.params.spi {
            return Err(EspOpenError::WrongSpi(hdr.spi));
        }
        let (newest, window) = match &self.engine {
            Engine::AeadIn(k) => (k.newest(), k.window()),
            Engine::CbcIn(k) => (k.newest(), k.window()),
            _ => return Err(EspOpenError::WrongDirection),
        };
        let seq = if self.params.esn {
            wire::infer_esn(hdr.seq, newest, window)
        } else {
            u64::from(hdr.seq)
        };
        if seq == 0 {
            return Err(EspOpenError::ZeroSequence);
        }
        let status = match &self.engine {
            Engine::AeadIn(k) => k.open(now, pkt, seq)?,
            Engine::CbcIn(k) => k.open(now, pkt, seq)?,
            _ => return Err(EspOpenError::WrongDirection),
        };
        // The engine validated the trailer; remove it.
        let (payload_len, next_header) =
            wire::parse_trailer(pkt.as_slice()).ok_or(OpenError::Trailer)?;
        let trailer = pkt.len() - payload_len;
        pkt.trim_back(trailer);
        if next_header == NextHeader::Dummy {
            pkt.trim_back(pkt.len());
        }
        Ok(Opened {
            next_header,
            status,
            seq,
        })
    }
}
