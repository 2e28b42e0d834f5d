//! The data channel: P_DATA_V2 AEAD records on core's record engine.
//!
//! `opcode|key-id (1) ‖ peer-id (3) ‖ packet-id (4) ‖ tag (16) ‖
//! ciphertext`; AAD = the first 8 bytes; nonce = packet-id (4, big endian) ‖
//! implicit IV (8, from the HMAC half of the key slot); packet-ids count
//! from 1 (OpenVPN 2.6 `openvpn_encrypt_aead`).
//!
//! Key material (tls-ekm): 256 bytes exported from TLS, laid out as
//! OpenVPN's `struct key2`: slot 0 = `cipher[64] ‖ hmac[64]`, slot 1 the
//! same. The client sends with slot 0 and the server with slot 1
//! (`init_key_contexts`: server → KEY_DIRECTION_INVERSE).

use crate::compress::{Compressor, Framing, FramingError, Unframed};
use crate::packet::{op_byte, KeyId, Opcode, DATA_TAG_LEN, DATA_V2_HEADER_LEN};
use crate::tls::EKM_LEN;
use polytun_core::aead::NONCE_LEN;
use polytun_core::replay::DEFAULT_WINDOW;
use polytun_core::{
    Aead, Algorithm, KeyStatus, Limits, OpenError, OpeningKey, PacketBuf, RecordFormat, SealError,
    SealingKey,
};
use std::time::Instant;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// OpenVPN's keepalive payload (`ping_string`): never written to the TUN.
pub const PING_MAGIC: [u8; 16] = [
    0x2a, 0x18, 0x7b, 0xf3, 0x64, 0x1e, 0xb4, 0xcb, 0x07, 0xed, 0x2d, 0x0a, 0x98, 0x1f, 0xc7, 0x48,
];

/// OpenVPN's OCC message prefix (`occ_magic`): a data packet starting with
/// it is an options-consistency message, never an IP packet.
pub const OCC_MAGIC: [u8; 16] = [
    0x28, 0x7f, 0x34, 0x6b, 0xd4, 0xef, 0x7a, 0x81, 0x2d, 0x56, 0xb8, 0xd3, 0xaf, 0xc5, 0x45, 0x9c,
];
/// The OCC opcode of `explicit-exit-notify` on UDP (`OCC_EXIT`).
pub const OCC_EXIT: u8 = 6;

/// The payload of an explicit-exit-notify data packet.
pub fn occ_exit_payload() -> [u8; 17] {
    let mut p = [0u8; 17];
    p[..16].copy_from_slice(&OCC_MAGIC);
    p[16] = OCC_EXIT;
    p
}

/// Bytes P_DATA_V2 adds to a packet.
pub const OVERHEAD: usize = DATA_V2_HEADER_LEN + DATA_TAG_LEN;

/// Packet-id at which a key asks for renegotiation (OpenVPN renegotiates
/// well before the 32-bit id wraps).
pub const SOFT_PACKET_ID: u64 = 0xFF00_0000;

/// The `data-ciphers` polytun implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    Aes256Gcm,
    Aes128Gcm,
    ChaCha20Poly1305,
}

impl Cipher {
    pub const ALL: [Cipher; 3] = [
        Cipher::Aes256Gcm,
        Cipher::Aes128Gcm,
        Cipher::ChaCha20Poly1305,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::ChaCha20Poly1305 => "CHACHA20-POLY1305",
        }
    }

    /// OpenVPN names, case-insensitive.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }

    pub fn algorithm(self) -> Algorithm {
        match self {
            Cipher::Aes256Gcm => Algorithm::Aes256Gcm,
            Cipher::Aes128Gcm => Algorithm::Aes128Gcm,
            Cipher::ChaCha20Poly1305 => Algorithm::ChaCha20Poly1305,
        }
    }

    pub fn key_len(self) -> usize {
        self.algorithm().key_len()
    }

    /// `data-ciphers` syntax: colon-separated; unknown names are returned
    /// as errors so they can be named to the user.
    pub fn parse_list(s: &str) -> Result<Vec<Cipher>, String> {
        s.split(':')
            .filter(|x| !x.is_empty())
            .map(|x| Self::from_name(x).ok_or_else(|| x.to_string()))
            .collect()
    }

    pub fn list_string(list: &[Cipher]) -> String {
        list.iter().map(|c| c.name()).collect::<Vec<_>>().join(":")
    }
}

/// One direction's key and implicit IV.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DirectionKey {
    pub key: [u8; 32],
    pub implicit_iv: [u8; 8],
}

/// Both directions' keys, derived from the exporter output.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKeys {
    pub send: DirectionKey,
    pub recv: DirectionKey,
}

impl DataKeys {
    /// Slices OpenVPN's `key2` out of the 256 exported bytes.
    pub fn from_ekm(ekm: &[u8; EKM_LEN], is_server: bool) -> Self {
        let slot = |i: usize| {
            let o = i * 128;
            let mut key = [0u8; 32];
            key.copy_from_slice(&ekm[o..o + 32]);
            let mut implicit_iv = [0u8; 8];
            implicit_iv.copy_from_slice(&ekm[o + 64..o + 72]);
            DirectionKey { key, implicit_iv }
        };
        let (s, r) = if is_server { (1, 0) } else { (0, 1) };
        Self {
            send: slot(s),
            recv: slot(r),
        }
    }
}

/// The P_DATA_V2 layout for one direction of one key.
#[derive(Clone, Copy, Debug)]
pub struct DataV2Format {
    pub key_id: KeyId,
    pub peer_id: u32,
    pub implicit_iv: [u8; 8],
}

impl RecordFormat for DataV2Format {
    fn header_len(&self) -> usize {
        DATA_V2_HEADER_LEN
    }

    fn write_header(&self, h: &mut [u8], counter: u64) {
        h[0] = op_byte(Opcode::DataV2, self.key_id);
        h[1..4].copy_from_slice(&self.peer_id.to_be_bytes()[1..]);
        h[4..8].copy_from_slice(&(counter as u32).to_be_bytes());
    }

    fn nonce(&self, counter: u64) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&(counter as u32).to_be_bytes());
        n[4..].copy_from_slice(&self.implicit_iv);
        n
    }

    fn aad(&self, header: &[u8], _counter: u64, out: &mut [u8; 32]) -> usize {
        out[..DATA_V2_HEADER_LEN].copy_from_slice(&header[..DATA_V2_HEADER_LEN]);
        DATA_V2_HEADER_LEN
    }

    fn tag_position(&self) -> polytun_core::record::TagPosition {
        polytun_core::record::TagPosition::AfterHeader
    }

    fn first_counter(&self) -> u64 {
        1
    }

    fn max_counter(&self) -> u64 {
        u32::MAX as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("not a P_DATA_V2 packet for key-id {0}")]
    NotForThisKey(KeyId),
    #[error("packet-id 0 is invalid")]
    ZeroPacketId,
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Framing(#[from] FramingError),
}

/// What an opened packet turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// An IP packet for the TUN.
    Packet(KeyStatus),
    /// OpenVPN's keepalive ping (counts as liveness, not for the TUN).
    Ping(KeyStatus),
    /// A payload the peer compressed (its framing takes it): to be
    /// decompressed ([`crate::compress::decompress`]) before the TUN.
    Compressed(Compressor, KeyStatus),
}

/// One key-id's data channel keys: what the data path uses.
#[derive(Debug)]
pub struct DataChannelKey {
    pub key_id: KeyId,
    pub cipher: Cipher,
    pub sealing: SealingKey<DataV2Format>,
    pub opening: OpeningKey<DataV2Format>,
    /// The session's compression framing, inside the AEAD.
    pub framing: Framing,
}

impl DataChannelKey {
    /// `peer_id`: the one the server assigned to this client (written by
    /// both sides; OpenVPN 2.6 servers ignore it on receive, demux by it).
    pub fn new(
        keys: &DataKeys,
        cipher: Cipher,
        key_id: KeyId,
        peer_id: u32,
        limits: Limits,
        now: Instant,
    ) -> Self {
        let n = cipher.key_len();
        let aead = |k: &[u8; 32]| Aead::new(cipher.algorithm(), &k[..n]).expect("key length");
        let limits_soft = Limits {
            soft_packets: Some(
                limits
                    .soft_packets
                    .map_or(SOFT_PACKET_ID, |p| p.min(SOFT_PACKET_ID)),
            ),
            ..limits
        };
        Self {
            key_id,
            cipher,
            sealing: SealingKey::new(
                aead(&keys.send.key),
                DataV2Format {
                    key_id,
                    peer_id,
                    implicit_iv: keys.send.implicit_iv,
                },
                limits_soft,
                now,
            ),
            opening: OpeningKey::new(
                aead(&keys.recv.key),
                DataV2Format {
                    key_id,
                    peer_id,
                    implicit_iv: keys.recv.implicit_iv,
                },
                DEFAULT_WINDOW,
                limits,
                now,
            ),
            framing: Framing::None,
        }
    }

    /// The same key with `comp-lzo`/`compress` framing.
    pub fn with_framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// Frames and seals one inner packet (or [`PING_MAGIC`]) in place;
    /// `pkt` needs the framing's [`Framing::room`] besides the record's.
    pub fn seal(&self, now: Instant, pkt: &mut PacketBuf<'_>) -> Result<KeyStatus, DataError> {
        self.framing.frame(pkt)?;
        Ok(self.sealing.seal(now, pkt)?)
    }

    /// Opens one P_DATA_V2 record in place; on success `pkt` holds the
    /// payload, its framing taken off (it may then start past the record's
    /// header and end before the datagram's end).
    pub fn open(&self, now: Instant, pkt: &mut PacketBuf<'_>) -> Result<Opened, DataError> {
        let b = pkt.as_slice();
        if b.len() < OVERHEAD || b[0] != op_byte(Opcode::DataV2, self.key_id) {
            return Err(DataError::NotForThisKey(self.key_id));
        }
        let counter = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as u64;
        if counter == 0 {
            return Err(DataError::ZeroPacketId);
        }
        let st = self.opening.open(now, pkt, counter)?;
        if let Unframed::Compressed(a) = self.framing.unframe(pkt)? {
            return Ok(Opened::Compressed(a, st));
        }
        Ok(if pkt.as_slice() == PING_MAGIC {
            Opened::Ping(st)
        } else {
            Opened::Packet(st)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polytun_core::PacketBatch;

    fn ekm() -> [u8; 256] {
        let mut e = [0u8; 256];
        for (i, x) in e.iter_mut().enumerate() {
            *x = i as u8 ^ 0x5a;
        }
        e
    }

    #[test]
    fn slicing_matches_openvpn_key2() {
        let e = ekm();
        let c = DataKeys::from_ekm(&e, false);
        assert_eq!(c.send.key[..], e[0..32]);
        assert_eq!(c.send.implicit_iv[..], e[64..72]);
        assert_eq!(c.recv.key[..], e[128..160]);
        assert_eq!(c.recv.implicit_iv[..], e[192..200]);
        let s = DataKeys::from_ekm(&e, true);
        assert_eq!(s.send.key, c.recv.key);
        assert_eq!(s.recv.implicit_iv, c.send.implicit_iv);
    }

    #[test]
    fn client_server_roundtrip_all_ciphers() {
        let now = Instant::now();
        for cipher in Cipher::ALL {
            let c = DataChannelKey::new(
                &DataKeys::from_ekm(&ekm(), false),
                cipher,
                1,
                7,
                Limits::default(),
                now,
            );
            let s = DataChannelKey::new(
                &DataKeys::from_ekm(&ekm(), true),
                cipher,
                1,
                7,
                Limits::default(),
                now,
            );
            let mut b = PacketBatch::new(4, 32, 1500, 32);
            b.push(b"\x45inner ip packet");
            b.push(&PING_MAGIC);
            for i in 0..2 {
                b.with_packet(i, |p| c.seal(now, p).unwrap());
            }
            let w = b.get(0).to_vec();
            assert_eq!(w[0], (9 << 3) | 1);
            assert_eq!(&w[1..4], &[0, 0, 7]);
            assert_eq!(&w[4..8], &1u32.to_be_bytes());
            assert_eq!(w.len(), 8 + 16 + 16);
            assert_eq!(
                b.with_packet(0, |p| s.open(now, p)).unwrap(),
                Opened::Packet(KeyStatus::Fresh)
            );
            assert_eq!(b.get(0), b"\x45inner ip packet");
            assert!(matches!(
                b.with_packet(1, |p| s.open(now, p)),
                Ok(Opened::Ping(_))
            ));
            // Replay and tampering are refused.
            let mut again = w.clone();
            let mut p = PacketBuf::new(&mut again, 0, w.len());
            assert!(s.open(now, &mut p).is_err());
            let mut t = w.clone();
            t[2] ^= 1; // peer-id is authenticated
            let mut p = PacketBuf::new(&mut t, 0, w.len());
            assert!(s.open(now, &mut p).is_err());
        }
    }

    /// A framing travels inside the AEAD: the peer sees it only after
    /// opening, keepalive pings are framed too, and a peer without the
    /// framing refuses what it cannot be (an IP packet starts 0x4_/0x6_).
    #[test]
    fn framing_inside_the_record() {
        let now = Instant::now();
        let key = |server, f| {
            DataChannelKey::new(
                &DataKeys::from_ekm(&ekm(), server),
                Cipher::ChaCha20Poly1305,
                0,
                1,
                Limits::default(),
                now,
            )
            .with_framing(f)
        };
        for f in [Framing::Lzo, Framing::Stub, Framing::Lz4V2] {
            let (c, s, plain) = (key(false, f), key(true, f), key(true, Framing::None));
            let mut b = PacketBatch::new(3, 33, 100, 1);
            b.push(b"\x45ip");
            b.push(&PING_MAGIC);
            b.push(b"\x45ip");
            for i in 0..3 {
                b.with_packet(i, |p| c.seal(now, p).unwrap());
            }
            assert_eq!(
                b.get(0).len(),
                OVERHEAD + 3 + usize::from(f != Framing::Lz4V2)
            );
            assert_eq!(
                b.with_packet(0, |p| s.open(now, p)).unwrap(),
                Opened::Packet(KeyStatus::Fresh)
            );
            assert_eq!(b.get(0), b"\x45ip", "{f:?}");
            assert!(matches!(
                b.with_packet(1, |p| s.open(now, p)),
                Ok(Opened::Ping(_))
            ));
            let r = b.with_packet(2, |p| plain.open(now, p));
            if f == Framing::Lz4V2 {
                assert!(r.is_ok(), "{r:?}"); // no byte added to an IP packet
            } else {
                assert!(matches!(r, Err(DataError::Framing(_))), "{f:?} {r:?}");
            }
        }
        // No room for the framing byte: refused, not a panic.
        let c = key(false, Framing::Lzo);
        let mut b = PacketBatch::new(1, 0, 100, 0);
        b.push(b"\x45ip");
        assert!(matches!(
            b.with_packet(0, |p| c.seal(now, p)),
            Err(DataError::Framing(FramingError::NoRoom))
        ));
    }

    /// The AEAD layout is OpenVPN's, checked with an independent AES-GCM.
    #[test]
    fn aead_layout_independent() {
        let now = Instant::now();
        let keys = DataKeys::from_ekm(&ekm(), false);
        let c = DataChannelKey::new(&keys, Cipher::Aes256Gcm, 0, 0, Limits::default(), now);
        let mut b = PacketBatch::new(1, 32, 100, 32);
        b.push(b"hello");
        b.with_packet(0, |p| c.seal(now, p).unwrap());
        let w = b.get(0).to_vec();
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&w[4..8]);
        nonce[4..].copy_from_slice(&ekm()[64..72]);
        let aead = Aead::new(Algorithm::Aes256Gcm, &ekm()[..32]).unwrap();
        let mut ct = w[24..].to_vec();
        let tag: [u8; 16] = w[8..24].try_into().unwrap();
        aead.open_detached(&nonce, &w[..8], &mut ct, &tag).unwrap();
        assert_eq!(ct, b"hello");
    }
}
