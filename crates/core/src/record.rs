//! The shared record engine: "header + counter + AEAD(payload)".
//!
//! ESP, WireGuard transport data and OpenVPN DATA_V2 differ only in their
//! header layout, nonce and AAD rules, trailer (padding) and where the tag
//! sits. A protocol describes those with [`RecordFormat`]; [`SealingKey`] and
//! [`OpeningKey`] do the rest in place on a [`PacketBuf`]: counter, nonce,
//! AEAD, replay window, lifetime accounting. Keys are used through `&self` so
//! several data-path workers can share one key behind an `Arc`.

use crate::aead::{Aead, AeadError, NONCE_LEN, TAG_LEN};
use crate::batch::PacketBuf;
use crate::lifetime::{Expired, KeyStatus, Lifetime, Limits};
use crate::replay::{ReplayError, ReplayWindow};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Where a record carries its authentication tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagPosition {
    /// `header | ciphertext | tag` (ESP, WireGuard).
    AfterCiphertext,
    /// `header | tag | ciphertext` (OpenVPN DATA_V2 AEAD).
    AfterHeader,
}

/// A protocol's record layout.
pub trait RecordFormat: Send + Sync {
    /// Bytes of cleartext header before the ciphertext (a leading tag comes
    /// after them and is not counted here).
    fn header_len(&self) -> usize;

    /// Writes the header for the record with this counter.
    fn write_header(&self, header: &mut [u8], counter: u64);

    /// Nonce for this counter.
    fn nonce(&self, counter: u64) -> [u8; NONCE_LEN];

    /// Nonce for opening a received record. Defaults to [`Self::nonce`];
    /// formats that carry an explicit IV chosen by the peer (ESP: RFC 4106,
    /// RFC 7634) build it from the received `header` instead.
    fn open_nonce(&self, _header: &[u8], counter: u64) -> [u8; NONCE_LEN] {
        self.nonce(counter)
    }

    /// Associated data for this record into `out`; returns its length.
    fn aad(&self, _header: &[u8], _counter: u64, _out: &mut [u8; 32]) -> usize {
        0
    }

    fn tag_position(&self) -> TagPosition {
        TagPosition::AfterCiphertext
    }

    /// Bytes appended to the plaintext before sealing (padding, trailer).
    fn trailer_len(&self, _payload_len: usize) -> usize {
        0
    }

    /// Fills the trailer (zero padding unless overridden).
    fn write_trailer(&self, trailer: &mut [u8], _payload: &[u8]) {
        trailer.fill(0);
    }

    /// After decryption: the payload's length once the trailer is removed,
    /// or `None` when the trailer is malformed.
    fn strip_trailer(&self, plaintext: &[u8]) -> Option<usize> {
        Some(plaintext.len())
    }

    /// The first counter value a new key sends with.
    fn first_counter(&self) -> u64 {
        0
    }

    /// The counter may not exceed this (the record's wire field width).
    fn max_counter(&self) -> u64 {
        u64::MAX
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no headroom or tailroom left in the packet buffer")]
    NoRoom,
    #[error(transparent)]
    Expired(#[from] Expired),
    #[error("send counter exhausted")]
    CounterExhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("record too short")]
    Short,
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("authentication failed")]
    Auth,
    #[error("bad trailer/padding")]
    Trailer,
    #[error(transparent)]
    Expired(#[from] Expired),
}

impl From<AeadError> for OpenError {
    fn from(e: AeadError) -> Self {
        match e {
            AeadError::Short => OpenError::Short,
            _ => OpenError::Auth,
        }
    }
}

/// The sending half of a record key.
#[derive(Debug)]
pub struct SealingKey<F> {
    aead: Aead,
    format: F,
    counter: AtomicU64,
    lifetime: Lifetime,
}

impl<F: RecordFormat> SealingKey<F> {
    pub fn new(aead: Aead, format: F, limits: Limits, now: Instant) -> Self {
        let first = format.first_counter();
        Self {
            aead,
            format,
            counter: AtomicU64::new(first),
            lifetime: Lifetime::new(limits, now),
        }
    }

    pub fn format(&self) -> &F {
        &self.format
    }

    pub fn lifetime(&self) -> &Lifetime {
        &self.lifetime
    }

    /// The counter the next record will carry.
    pub fn next_counter(&self) -> u64 {
        self.counter.load(Ordering::Relaxed)
    }

    /// Seals the packet in place: trailer and tag appended, header prepended.
    pub fn seal(&self, now: Instant, pkt: &mut PacketBuf<'_>) -> Result<KeyStatus, SealError> {
        self.lifetime.check(now)?;
        let header_len = self.format.header_len();
        let trailer_len = self.format.trailer_len(pkt.len());
        // The tag takes room on the side it goes to, and only there: a
        // leading tag needs no tailroom (so OpenVPN's sealed full packets
        // fill a slot without tailroom and lie back to back for GSO).
        let (head_tag, tail_tag) = match self.format.tag_position() {
            TagPosition::AfterCiphertext => (0, TAG_LEN),
            TagPosition::AfterHeader => (TAG_LEN, 0),
        };
        if pkt.headroom() < header_len + head_tag || pkt.tailroom() < trailer_len + tail_tag {
            return Err(SealError::NoRoom);
        }
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        if counter > self.format.max_counter() {
            self.lifetime.retire();
            return Err(SealError::CounterExhausted);
        }
        let payload_len = pkt.len();
        if trailer_len > 0 {
            let start = pkt.start();
            let end = pkt.end();
            let _ = pkt.append(trailer_len);
            let (payload, trailer) = pkt.as_mut_slice().split_at_mut(end - start);
            self.format.write_trailer(trailer, payload);
        }
        let nonce = self.format.nonce(counter);
        let mut hdr = [0u8; 64];
        let hdr = &mut hdr[..header_len.min(64)];
        self.format.write_header(hdr, counter);
        let mut aad = [0u8; 32];
        let aad_len = self.format.aad(hdr, counter, &mut aad);
        let tag = self
            .aead
            .seal_in_place(&nonce, &aad[..aad_len], pkt.as_mut_slice());
        match self.format.tag_position() {
            TagPosition::AfterCiphertext => {
                pkt.append(TAG_LEN)
                    .ok_or(SealError::NoRoom)?
                    .copy_from_slice(&tag);
                pkt.prepend(header_len)
                    .ok_or(SealError::NoRoom)?
                    .copy_from_slice(hdr);
            }
            TagPosition::AfterHeader => {
                pkt.prepend(TAG_LEN)
                    .ok_or(SealError::NoRoom)?
                    .copy_from_slice(&tag);
                pkt.prepend(header_len)
                    .ok_or(SealError::NoRoom)?
                    .copy_from_slice(hdr);
            }
        }
        Ok(self.lifetime.account(now, payload_len))
    }
}

/// The receiving half of a record key.
#[derive(Debug)]
pub struct OpeningKey<F> {
    aead: Aead,
    format: F,
    replay: Mutex<ReplayWindow>,
    lifetime: Lifetime,
}

impl<F: RecordFormat> OpeningKey<F> {
    pub fn new(aead: Aead, format: F, window: u64, limits: Limits, now: Instant) -> Self {
        Self {
            aead,
            format,
            replay: Mutex::new(ReplayWindow::new(window)),
            lifetime: Lifetime::new(limits, now),
        }
    }

    pub fn format(&self) -> &F {
        &self.format
    }

    pub fn lifetime(&self) -> &Lifetime {
        &self.lifetime
    }

    /// Highest counter authenticated so far (ESP infers the high half of an
    /// extended sequence number from it, RFC 4303 Appendix A).
    pub fn newest(&self) -> Option<u64> {
        self.replay().newest()
    }

    /// Size of the anti-replay window in counters.
    pub fn window(&self) -> u64 {
        self.replay().window()
    }

    fn replay(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        // A poisoned lock only means another worker panicked mid-update of
        // a bitmap; the bitmap is still a valid (conservative) window.
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the record in `pkt` (header, ciphertext, tag) whose header
    /// carried `counter` (already extended to 64 bits by the protocol).
    /// On success `pkt` holds only the payload.
    pub fn open(
        &self,
        now: Instant,
        pkt: &mut PacketBuf<'_>,
        counter: u64,
    ) -> Result<KeyStatus, OpenError> {
        self.lifetime.check(now)?;
        let header_len = self.format.header_len();
        if pkt.len() < header_len + TAG_LEN {
            return Err(OpenError::Short);
        }
        self.replay().check(counter)?;
        let mut hdr = [0u8; 64];
        let hl = header_len.min(64);
        hdr[..hl].copy_from_slice(&pkt.as_slice()[..hl]);
        let mut aad = [0u8; 32];
        let aad_len = self.format.aad(&hdr[..hl], counter, &mut aad);
        let nonce = self.format.open_nonce(&hdr[..hl], counter);
        match self.format.tag_position() {
            TagPosition::AfterCiphertext => {
                pkt.trim_front(header_len);
                let n = self
                    .aead
                    .open_in_place(&nonce, &aad[..aad_len], pkt.as_mut_slice())?;
                pkt.trim_back(pkt.len() - n);
            }
            TagPosition::AfterHeader => {
                pkt.trim_front(header_len);
                let mut tag = [0u8; TAG_LEN];
                tag.copy_from_slice(&pkt.as_slice()[..TAG_LEN]);
                pkt.trim_front(TAG_LEN);
                self.aead
                    .open_detached(&nonce, &aad[..aad_len], pkt.as_mut_slice(), &tag)?;
            }
        }
        // Only an authenticated record may move the window.
        self.replay().update(counter)?;
        let payload_len = self
            .format
            .strip_trailer(pkt.as_slice())
            .ok_or(OpenError::Trailer)?;
        pkt.trim_back(pkt.len() - payload_len);
        Ok(self.lifetime.account(now, payload_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aead::Algorithm;
    use crate::batch::PacketBatch;

    /// A WireGuard-like format: type(4) receiver(4) counter(8), pad to 16.
    struct TestFormat(TagPosition);
    impl RecordFormat for TestFormat {
        fn header_len(&self) -> usize {
            16
        }
        fn write_header(&self, h: &mut [u8], counter: u64) {
            h[..4].copy_from_slice(&4u32.to_le_bytes());
            h[4..8].copy_from_slice(&7u32.to_le_bytes());
            h[8..16].copy_from_slice(&counter.to_le_bytes());
        }
        fn nonce(&self, counter: u64) -> [u8; 12] {
            let mut n = [0; 12];
            n[4..].copy_from_slice(&counter.to_le_bytes());
            n
        }
        fn aad(&self, h: &[u8], _c: u64, out: &mut [u8; 32]) -> usize {
            out[..8].copy_from_slice(&h[..8]);
            8
        }
        fn tag_position(&self) -> TagPosition {
            self.0
        }
        fn trailer_len(&self, len: usize) -> usize {
            len.next_multiple_of(16) - len
        }
    }

    fn counter_of(b: &[u8]) -> u64 {
        u64::from_le_bytes(b[8..16].try_into().unwrap())
    }

    #[test]
    fn seal_open_roundtrip_both_tag_positions() {
        for pos in [TagPosition::AfterCiphertext, TagPosition::AfterHeader] {
            let now = Instant::now();
            let key = [9u8; 32];
            let s = SealingKey::new(
                Aead::new(Algorithm::ChaCha20Poly1305, &key).unwrap(),
                TestFormat(pos),
                Limits::default(),
                now,
            );
            let o = OpeningKey::new(
                Aead::new(Algorithm::ChaCha20Poly1305, &key).unwrap(),
                TestFormat(pos),
                8192,
                Limits::default(),
                now,
            );
            let mut b = PacketBatch::new(4, 32, 1500, 32);
            b.push(b"first packet");
            b.push(b"second");
            for i in 0..2 {
                b.with_packet(i, |p| s.seal(now, p).unwrap());
            }
            assert_eq!(b.get(0).len(), 16 + 16 + 16);
            let sealed = b.get(1).to_vec();
            // Open in reverse order, then replay one.
            for i in [1, 0] {
                let c = counter_of(b.get(i));
                b.with_packet(i, |p| o.open(now, p, c).unwrap());
            }
            assert_eq!(b.get(0), &b"first packet\0\0\0\0"[..]);
            let mut again = sealed.clone();
            let mut p = PacketBuf::new(&mut again, 0, sealed.len());
            assert_eq!(
                o.open(now, &mut p, 1),
                Err(OpenError::Replay(ReplayError::Duplicate(1)))
            );
            // A forged record must not move the window.
            let mut forged = sealed.clone();
            forged[8..16].copy_from_slice(&5000u64.to_le_bytes());
            let mut p = PacketBuf::new(&mut forged, 0, sealed.len());
            assert_eq!(o.open(now, &mut p, 5000), Err(OpenError::Auth));
            assert!(o.replay().check(2).is_ok());
        }
    }

    /// A format with an explicit IV in the header: the receiver must build
    /// its nonce from the header, not from its own idea of the counter.
    struct ExplicitIv;
    impl RecordFormat for ExplicitIv {
        fn header_len(&self) -> usize {
            16
        }
        fn write_header(&self, h: &mut [u8], counter: u64) {
            h[..8].copy_from_slice(&counter.to_be_bytes());
            // The "IV" the sender chose: counter xor a constant.
            h[8..16].copy_from_slice(&(counter ^ 0x5a5a_5a5a).to_be_bytes());
        }
        fn nonce(&self, counter: u64) -> [u8; 12] {
            let mut n = [0; 12];
            n[4..].copy_from_slice(&(counter ^ 0x5a5a_5a5a).to_be_bytes());
            n
        }
        fn open_nonce(&self, h: &[u8], _counter: u64) -> [u8; 12] {
            let mut n = [0; 12];
            n[4..].copy_from_slice(&h[8..16]);
            n
        }
    }

    #[test]
    fn open_nonce_comes_from_the_header_and_newest_tracks_the_window() {
        let now = Instant::now();
        let s = SealingKey::new(
            Aead::new(Algorithm::Aes128Gcm, &[3; 16]).unwrap(),
            ExplicitIv,
            Limits::default(),
            now,
        );
        let o = OpeningKey::new(
            Aead::new(Algorithm::Aes128Gcm, &[3; 16]).unwrap(),
            ExplicitIv,
            1024,
            Limits::default(),
            now,
        );
        assert_eq!(o.newest(), None);
        assert_eq!(o.window(), 1024);
        let mut buf = [0u8; 64];
        let mut p = PacketBuf::new(&mut buf, 16, 20);
        s.seal(now, &mut p).unwrap();
        s.seal(now, &mut PacketBuf::new(&mut [0u8; 64], 16, 20))
            .unwrap();
        let mut p = PacketBuf::new(&mut buf, 0, 36);
        assert_eq!(o.open(now, &mut p, 0), Ok(KeyStatus::Fresh));
        assert_eq!(o.newest(), Some(0));
        // A changed IV (header) must break authentication.
        let mut s2 = [0u8; 64];
        let mut p = PacketBuf::new(&mut s2, 16, 20);
        s.seal(now, &mut p).unwrap();
        s2[15] ^= 1;
        let mut p = PacketBuf::new(&mut s2, 0, 36);
        assert_eq!(o.open(now, &mut p, 2), Err(OpenError::Auth));
        assert_eq!(o.newest(), Some(0));
    }

    #[test]
    fn hard_limit_refuses_and_soft_limit_reports_once() {
        let now = Instant::now();
        let s = SealingKey::new(
            Aead::new(Algorithm::Aes256Gcm, &[1; 32]).unwrap(),
            TestFormat(TagPosition::AfterCiphertext),
            Limits {
                soft_packets: Some(2),
                hard_packets: Some(3),
                ..Default::default()
            },
            now,
        );
        let mut b = PacketBatch::new(4, 32, 64, 32);
        let statuses: Vec<_> = (0..4)
            .map(|i| {
                b.push(b"x");
                b.with_packet(i, |p| s.seal(now, p))
            })
            .collect();
        assert_eq!(statuses[0], Ok(KeyStatus::Fresh));
        assert_eq!(statuses[1], Ok(KeyStatus::Expiring));
        assert_eq!(statuses[2], Ok(KeyStatus::Fresh));
        assert!(matches!(statuses[3], Err(SealError::Expired(_))));
    }

    #[test]
    fn no_room_is_an_error_not_a_panic() {
        let now = Instant::now();
        let s = SealingKey::new(
            Aead::new(Algorithm::Aes128Gcm, &[1; 16]).unwrap(),
            TestFormat(TagPosition::AfterCiphertext),
            Limits::default(),
            now,
        );
        let mut buf = [0u8; 40];
        let mut p = PacketBuf::new(&mut buf, 4, 20);
        assert_eq!(s.seal(now, &mut p), Err(SealError::NoRoom));
    }

    /// A leading tag needs its room in front, none behind: refused before
    /// anything is encrypted or a counter spent when the front is short,
    /// sealed (and opened) with no tailroom at all.
    #[test]
    fn leading_tag_needs_headroom_not_tailroom() {
        let now = Instant::now();
        let key = [3u8; 32];
        let s = SealingKey::new(
            Aead::new(Algorithm::Aes256Gcm, &key).unwrap(),
            TestFormat(TagPosition::AfterHeader),
            Limits::default(),
            now,
        );
        let o = OpeningKey::new(
            Aead::new(Algorithm::Aes256Gcm, &key).unwrap(),
            TestFormat(TagPosition::AfterHeader),
            8192,
            Limits::default(),
            now,
        );
        let payload = *b"0123456789abcdef";
        // header (16) but not the tag in front
        let mut buf = [0u8; 16 + 16];
        buf[16..].copy_from_slice(&payload);
        let before = s.next_counter();
        let mut p = PacketBuf::new(&mut buf, 16, 32);
        assert_eq!(s.seal(now, &mut p), Err(SealError::NoRoom));
        assert_eq!(s.next_counter(), before, "a refused seal spent a counter");
        assert_eq!(buf[16..], payload, "a refused seal encrypted the payload");
        // header and tag in front, nothing behind
        let mut buf = [0u8; 16 + 16 + 16];
        buf[32..].copy_from_slice(&payload);
        let mut p = PacketBuf::new(&mut buf, 32, 48);
        s.seal(now, &mut p).unwrap();
        assert_eq!((p.start(), p.end()), (0, 48));
        let c = counter_of(p.as_slice());
        o.open(now, &mut p, c).unwrap();
        assert_eq!(p.as_slice(), payload);
    }
}
