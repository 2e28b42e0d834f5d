//! Transport data messages on the shared record engine.
//!
//! `type 4 (u32 LE) ‖ receiver index (u32 LE) ‖ counter (u64 LE) ‖
//! ChaCha20-Poly1305(key, nonce = 0⁴ ‖ counter LE, aad = ε, padded packet)`.
//! The plaintext is zero-padded to a multiple of 16 bytes, never beyond the
//! MTU; the receiver finds the packet's real length in its IPv4/IPv6 header.
//! An empty plaintext is a keepalive.

use crate::messages::{classify, Message, DATA_HEADER_LEN, TYPE_DATA};
use crate::noise::SessionKeys;
use crate::timers::{
    REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
};
use polytun_core::aead::NONCE_LEN;
use polytun_core::replay::DEFAULT_WINDOW;
use polytun_core::{
    Aead, Algorithm, KeyStatus, Limits, OpenError, OpeningKey, PacketBuf, RecordFormat, SealError,
    SealingKey,
};
use std::time::Instant;

/// Bytes WireGuard adds to a packet at most: header, tag, padding to 16.
pub const OVERHEAD: usize = DATA_HEADER_LEN + 16 + 15;

/// The WireGuard transport record layout for one direction of one keypair.
#[derive(Debug, Clone, Copy)]
pub struct DataFormat {
    /// The receiver index written into (or expected in) the header.
    pub receiver: u32,
    /// Padding never grows a packet beyond this (0: no bound).
    pub mtu: usize,
}

/// wireguard-go's `calculatePaddingSize`.
pub fn padding_len(len: usize, mtu: usize) -> usize {
    if mtu == 0 {
        return len.next_multiple_of(16) - len;
    }
    let last = if len > mtu { len % mtu } else { len };
    let padded = last.next_multiple_of(16).min(mtu);
    padded.saturating_sub(last)
}

/// Length of the IP packet at the start of `pt` (0 for a keepalive).
pub fn inner_packet_len(pt: &[u8]) -> Option<usize> {
    if pt.is_empty() {
        return Some(0);
    }
    match pt[0] >> 4 {
        4 if pt.len() >= 20 => {
            let l = u16::from_be_bytes([pt[2], pt[3]]) as usize;
            (20..=pt.len()).contains(&l).then_some(l)
        }
        6 if pt.len() >= 40 => {
            let l = 40 + u16::from_be_bytes([pt[4], pt[5]]) as usize;
            (l <= pt.len()).then_some(l)
        }
        _ => None,
    }
}

impl RecordFormat for DataFormat {
    fn header_len(&self) -> usize {
        DATA_HEADER_LEN
    }

    fn write_header(&self, h: &mut [u8], counter: u64) {
        h[..4].copy_from_slice(&TYPE_DATA.to_le_bytes());
        h[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        h[8..16].copy_from_slice(&counter.to_le_bytes());
    }

    fn nonce(&self, counter: u64) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[4..].copy_from_slice(&counter.to_le_bytes());
        n
    }

    fn trailer_len(&self, payload_len: usize) -> usize {
        padding_len(payload_len, self.mtu)
    }

    fn strip_trailer(&self, plaintext: &[u8]) -> Option<usize> {
        inner_packet_len(plaintext)
    }

    /// The last counter a key may use is REJECT_AFTER_MESSAGES − 1.
    fn max_counter(&self) -> u64 {
        REJECT_AFTER_MESSAGES - 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("not a transport data message for this keypair")]
    NotForThisKey,
    #[error("counter beyond REJECT_AFTER_MESSAGES")]
    CounterTooLarge,
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// One session's keys: what the data path seals and opens with.
#[derive(Debug)]
pub struct Keypair {
    /// Our index: peers put it in the header of packets to us.
    pub local_index: u32,
    /// The peer's index: we put it in the header of packets we send.
    pub remote_index: u32,
    pub sealing: SealingKey<DataFormat>,
    pub opening: OpeningKey<DataFormat>,
    pub is_initiator: bool,
    pub created: Instant,
}

impl Keypair {
    /// Builds the keypair from the Noise split, with WireGuard's lifetimes:
    /// sealing soft at REKEY_AFTER_MESSAGES (and REKEY_AFTER_TIME for the
    /// initiator), hard at REJECT_AFTER_TIME / REJECT_AFTER_MESSAGES;
    /// opening hard at REJECT_AFTER_TIME.
    pub fn new(
        keys: &SessionKeys,
        local_index: u32,
        remote_index: u32,
        is_initiator: bool,
        now: Instant,
        mtu: usize,
    ) -> Self {
        let aead = |k: &[u8; 32]| {
            // A 32-byte key always fits ChaCha20-Poly1305.
            Aead::new(Algorithm::ChaCha20Poly1305, k).expect("32-byte ChaCha20-Poly1305 key")
        };
        let sealing = SealingKey::new(
            aead(&keys.send),
            DataFormat {
                receiver: remote_index,
                mtu,
            },
            Limits {
                soft_packets: Some(REKEY_AFTER_MESSAGES),
                soft_time: is_initiator.then_some(REKEY_AFTER_TIME),
                hard_time: Some(REJECT_AFTER_TIME),
                hard_packets: Some(REJECT_AFTER_MESSAGES),
                ..Default::default()
            },
            now,
        );
        let opening = OpeningKey::new(
            aead(&keys.recv),
            DataFormat {
                receiver: local_index,
                mtu,
            },
            DEFAULT_WINDOW,
            Limits {
                hard_time: Some(REJECT_AFTER_TIME),
                hard_packets: Some(REJECT_AFTER_MESSAGES),
                ..Default::default()
            },
            now,
        );
        Self {
            local_index,
            remote_index,
            sealing,
            opening,
            is_initiator,
            created: now,
        }
    }

    /// Seals the IP packet (or nothing: keepalive) in `pkt` in place.
    pub fn seal(&self, now: Instant, pkt: &mut PacketBuf<'_>) -> Result<KeyStatus, SealError> {
        self.sealing.seal(now, pkt)
    }

    /// Opens the transport message in `pkt` in place; on success `pkt` holds
    /// the inner IP packet (empty for a keepalive).
    pub fn open(&self, now: Instant, pkt: &mut PacketBuf<'_>) -> Result<KeyStatus, TransportError> {
        let counter = match classify(pkt.as_slice()) {
            Ok(Message::Data(d)) if d.receiver == self.local_index => d.counter,
            Ok(Message::Data(_)) | Ok(_) => return Err(TransportError::NotForThisKey),
            Err(_) => return Err(TransportError::Open(OpenError::Short)),
        };
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(TransportError::CounterTooLarge);
        }
        Ok(self.opening.open(now, pkt, counter)?)
    }

    /// Takes the key out of service for both directions (superseded or wiped).
    pub fn retire(&self) {
        self.sealing.lifetime().retire();
        self.opening.lifetime().retire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polytun_core::PacketBatch;
    use proptest::prelude::*;

    fn pair(now: Instant) -> (Keypair, Keypair) {
        let a = SessionKeys {
            send: [1; 32],
            recv: [2; 32],
        };
        let b = SessionKeys {
            send: [2; 32],
            recv: [1; 32],
        };
        (
            Keypair::new(&a, 10, 20, true, now, 1420),
            Keypair::new(&b, 20, 10, false, now, 1420),
        )
    }

    fn ipv4(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p
    }

    #[test]
    fn padding_rules() {
        assert_eq!(padding_len(0, 1420), 0);
        assert_eq!(padding_len(1, 1420), 15);
        assert_eq!(padding_len(1419, 1420), 1);
        assert_eq!(padding_len(1420, 1420), 0);
        assert_eq!(padding_len(1410, 1420), 10);
        assert_eq!(padding_len(1408, 1420), 0);
        assert_eq!(padding_len(17, 0), 15);
    }

    #[test]
    fn seal_open_pads_and_strips() {
        let now = Instant::now();
        let (a, b) = pair(now);
        let mut batch = PacketBatch::new(4, 16, 1500, 64);
        batch.push(&ipv4(21));
        batch.push(&[]);
        batch.with_packet(0, |p| a.seal(now, p)).unwrap();
        batch.with_packet(1, |p| a.seal(now, p)).unwrap();
        assert_eq!(batch.get(0).len(), 16 + 32 + 16);
        assert_eq!(&batch.get(0)[4..8], &20u32.to_le_bytes());
        assert_eq!(batch.get(1).len(), 32);
        let sealed = batch.get(0).to_vec();
        batch.with_packet(0, |p| b.open(now, p)).unwrap();
        assert_eq!(batch.get(0), &ipv4(21)[..]);
        batch.with_packet(1, |p| b.open(now, p)).unwrap();
        assert!(batch.get(1).is_empty());
        // Replay, wrong key, expired key.
        let mut again = sealed.clone();
        let n = again.len();
        assert!(matches!(
            b.open(now, &mut PacketBuf::new(&mut again, 0, n)),
            Err(TransportError::Open(OpenError::Replay(_)))
        ));
        let mut again = sealed.clone();
        assert_eq!(
            a.open(now, &mut PacketBuf::new(&mut again, 0, n)),
            Err(TransportError::NotForThisKey)
        );
        let later = now + REJECT_AFTER_TIME;
        let mut again = sealed;
        assert!(matches!(
            b.open(later, &mut PacketBuf::new(&mut again, 0, n)),
            Err(TransportError::Open(OpenError::Expired(_)))
        ));
    }

    #[test]
    fn initiator_soft_limit_at_rekey_after_time() {
        let now = Instant::now();
        let (a, b) = pair(now);
        let mut buf = [0u8; 128];
        let mut seal_at = |k: &Keypair, t| {
            let mut p = PacketBuf::new(&mut buf, 16, 16);
            k.seal(t, &mut p)
        };
        assert_eq!(seal_at(&a, now + REKEY_AFTER_TIME), Ok(KeyStatus::Expiring));
        assert_eq!(seal_at(&b, now + REKEY_AFTER_TIME), Ok(KeyStatus::Fresh));
        assert!(matches!(
            seal_at(&b, now + REJECT_AFTER_TIME),
            Err(SealError::Expired(_))
        ));
    }

    #[test]
    fn lifetimes_follow_section_6() {
        let now = Instant::now();
        let (a, b) = pair(now);
        let l = a.sealing.lifetime().limits();
        assert_eq!(l.soft_packets, Some(REKEY_AFTER_MESSAGES));
        assert_eq!(l.soft_time, Some(REKEY_AFTER_TIME));
        assert_eq!(l.hard_time, Some(REJECT_AFTER_TIME));
        assert_eq!(l.hard_packets, Some(REJECT_AFTER_MESSAGES));
        assert_eq!(
            b.sealing.lifetime().limits().soft_time,
            None,
            "responder never rekeys on time"
        );
        assert_eq!(
            b.opening.lifetime().limits().hard_time,
            Some(REJECT_AFTER_TIME)
        );
        assert_eq!(a.sealing.format().max_counter(), REJECT_AFTER_MESSAGES - 1);
        // A counter at REJECT_AFTER_MESSAGES is refused before decryption.
        let mut d = [0u8; 48];
        d[..4].copy_from_slice(&4u32.to_le_bytes());
        d[4..8].copy_from_slice(&20u32.to_le_bytes());
        d[8..16].copy_from_slice(&REJECT_AFTER_MESSAGES.to_le_bytes());
        assert_eq!(
            b.open(now, &mut PacketBuf::new(&mut d, 0, 48)),
            Err(TransportError::CounterTooLarge)
        );
    }

    proptest! {
        #[test]
        fn opening_garbage_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), fix in any::<bool>()) {
            let now = Instant::now();
            let (_, b) = pair(now);
            if fix && bytes.len() >= 8 {
                bytes[..4].copy_from_slice(&4u32.to_le_bytes());
                bytes[4..8].copy_from_slice(&20u32.to_le_bytes());
            }
            let n = bytes.len();
            prop_assert!(b.open(now, &mut PacketBuf::new(&mut bytes, 0, n)).is_err());
        }
    }
}
