//! The ESP wire format (RFC 4303 §2): header, trailer, sequence numbers.
//!
//! ```text
//! SPI (4) | sequence number, low 32 bits (4) | IV (8 AEAD, 16 CBC)
//! | payload | padding 1,2,3,… | pad length (1) | next header (1) | ICV (16)
//! ```
//! The padding, pad length and next header are encrypted with the payload.

/// SPI + sequence number.
pub const HEADER_LEN: usize = 8;
/// Integrity check value of every transform here (GCM-16, Poly1305,
/// HMAC-SHA2-256-128).
pub const ICV_LEN: usize = 16;
/// Next header of an IPv4 inner packet (tunnel mode).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// Next header of an IPv6 inner packet (tunnel mode).
pub const NEXT_HEADER_IPV6: u8 = 41;
/// "No next header": a dummy (traffic-flow-confidentiality) packet, RFC 4303 §2.6.
pub const NEXT_HEADER_DUMMY: u8 = 59;

/// The cleartext fields every ESP packet starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EspHeader {
    pub spi: u32,
    /// The low 32 bits of the sequence number (all of it without ESN).
    pub seq: u32,
}

/// Parses the SPI and sequence number; `None` when shorter than 8 bytes.
pub fn parse_header(datagram: &[u8]) -> Option<EspHeader> {
    let spi = u32::from_be_bytes(datagram.get(0..4)?.try_into().ok()?);
    let seq = u32::from_be_bytes(datagram.get(4..8)?.try_into().ok()?);
    Some(EspHeader { spi, seq })
}

/// The SPI of an ESP packet (the demux key), `None` when too short or when
/// the SPI is in the reserved range 0–255 (RFC 4303 §2.1).
pub fn spi_of(datagram: &[u8]) -> Option<u32> {
    parse_header(datagram)
        .map(|h| h.spi)
        .filter(|&spi| spi > 255)
}

/// What an authenticated ESP packet carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHeader {
    Ipv4,
    Ipv6,
    /// Next header 59: a dummy packet; drop it silently, it is not an error.
    Dummy,
}

impl NextHeader {
    pub fn value(self) -> u8 {
        match self {
            NextHeader::Ipv4 => NEXT_HEADER_IPV4,
            NextHeader::Ipv6 => NEXT_HEADER_IPV6,
            NextHeader::Dummy => NEXT_HEADER_DUMMY,
        }
    }

    /// The next header for a tunnel-mode payload, from its IP version
    /// nibble. Anything that is not IPv4 or IPv6 (the empty payload
    /// included) is sealed as a dummy packet.
    pub fn of_payload(payload: &[u8]) -> NextHeader {
        match payload.first().map(|b| b >> 4) {
            Some(4) => NextHeader::Ipv4,
            Some(6) => NextHeader::Ipv6,
            _ => NextHeader::Dummy,
        }
    }
}

/// Bytes of padding + pad length + next header that align
/// `payload_len + trailer` to `block` (a power of two).
pub fn trailer_len(payload_len: usize, block: usize) -> usize {
    (payload_len + 2).next_multiple_of(block) - payload_len
}

/// Writes the trailer: padding 1, 2, 3, … (RFC 4303 §2.4), pad length, next header.
pub fn write_trailer(trailer: &mut [u8], next_header: u8) {
    let Some(pad) = trailer.len().checked_sub(2) else {
        return;
    };
    for (i, b) in trailer[..pad].iter_mut().enumerate() {
        *b = (i + 1) as u8;
    }
    trailer[pad] = pad as u8;
    trailer[pad + 1] = next_header;
}

/// Checks a decrypted plaintext's trailer: the padding must be 1, 2, 3, …,
/// the next header 4, 41 or 59, and an IPv4/IPv6 payload must start with
/// the matching version nibble. Returns the payload length and next header.
pub fn parse_trailer(plaintext: &[u8]) -> Option<(usize, NextHeader)> {
    let n = plaintext.len();
    let nh = *plaintext.get(n.checked_sub(1)?)?;
    let pad = *plaintext.get(n.checked_sub(2)?)? as usize;
    let payload_len = n.checked_sub(2 + pad)?;
    let padding = &plaintext[payload_len..payload_len + pad];
    if padding.iter().enumerate().any(|(i, &b)| b != (i + 1) as u8) {
        return None;
    }
    let payload = &plaintext[..payload_len];
    let version = payload.first().map(|b| b >> 4);
    let next = match nh {
        NEXT_HEADER_IPV4 if version == Some(4) => NextHeader::Ipv4,
        NEXT_HEADER_IPV6 if version == Some(6) => NextHeader::Ipv6,
        NEXT_HEADER_DUMMY => NextHeader::Dummy,
        _ => return None,
    };
    Some((payload_len, next))
}

/// The full 64-bit sequence number of a received packet (RFC 4303 §3.4.3
/// and Appendix A): the high half is inferred from the newest
/// authenticated sequence number and the window size `window`.
pub fn infer_esn(seq_lo: u32, newest: Option<u64>, window: u64) -> u64 {
    let t = newest.unwrap_or(0);
    let th = (t >> 32) as u32;
    let tl = t as u32;
    let w = window.clamp(1, 1 << 31) as u32;
    let seq_hi = if tl >= w - 1 {
        // Case A: the window lies within one 2^32 sub-space.
        if seq_lo >= tl - (w - 1) {
            th
        } else {
            // Wrapped into the next sub-space (at the very top, stay: the
            // packet fails authentication).
            th.checked_add(1).unwrap_or(th)
        }
    } else {
        // Case B: the window spans two sub-spaces.
        let bl = tl.wrapping_sub(w - 1);
        if seq_lo >= bl {
            // Late packet from the previous sub-space (none before 0).
            th.checked_sub(1).unwrap_or(th)
        } else {
            th
        }
    };
    (u64::from(seq_hi) << 32) | u64::from(seq_lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_aligns_and_round_trips() {
        for block in [4, 16] {
            for len in 0..100 {
                let t = trailer_len(len, block);
                assert_eq!((len + t) % block, 0);
                assert!((2..2 + block).contains(&t), "len {len} block {block}");
                let mut pt = vec![0x45u8; len];
                if len == 0 {
                    pt.clear();
                }
                let nh = if len == 0 { 59 } else { 4 };
                pt.resize(len + t, 0);
                write_trailer(&mut pt[len..], nh);
                let (l, next) = parse_trailer(&pt).unwrap();
                assert_eq!(l, len);
                assert_eq!(next.value(), nh);
            }
        }
        // RFC 7634 Appendix A: 84-byte packet, padding 01 02, pad length 2, NH 4.
        assert_eq!(trailer_len(84, 4), 4);
        let mut t = [0u8; 4];
        write_trailer(&mut t, 4);
        assert_eq!(t, [1, 2, 2, 4]);
    }

    #[test]
    fn trailer_checks_reject_bad_padding_and_next_header() {
        let good = [0x45, 0, 1, 2, 2, 4];
        assert_eq!(parse_trailer(&good), Some((2, NextHeader::Ipv4)));
        assert_eq!(parse_trailer(&[0x45, 0, 1, 3, 2, 4]), None, "padding 1,3");
        assert_eq!(parse_trailer(&[0x45, 0, 0, 0, 2, 4]), None, "zero padding");
        assert_eq!(
            parse_trailer(&[0x45, 0, 1, 2, 2, 17]),
            None,
            "next header 17"
        );
        assert_eq!(
            parse_trailer(&[0x45, 0, 1, 2, 2, 41]),
            None,
            "v4 packet as 41"
        );
        assert_eq!(
            parse_trailer(&[0x60, 0, 1, 2, 2, 4]),
            None,
            "v6 packet as 4"
        );
        assert_eq!(
            parse_trailer(&[0x60, 0, 1, 2, 2, 41]),
            Some((2, NextHeader::Ipv6))
        );
        assert_eq!(
            parse_trailer(&[1, 2, 9, 59]),
            None,
            "pad length beyond the packet"
        );
        assert_eq!(parse_trailer(&[0, 59]), Some((0, NextHeader::Dummy)));
        assert_eq!(parse_trailer(&[59]), None);
        assert_eq!(parse_trailer(&[]), None);
        assert_eq!(parse_trailer(&[0, 4]), None, "empty payload as IPv4");
    }

    #[test]
    fn esn_inference_follows_appendix_a() {
        let w = 1024;
        // Nothing received yet: the first sub-space.
        assert_eq!(infer_esn(1, None, w), 1);
        assert_eq!(infer_esn(u32::MAX - 5, None, w), u64::from(u32::MAX - 5));
        // Case A, just below the wrap: a small seq_lo is after the wrap.
        let t = u64::from(u32::MAX - 10);
        assert_eq!(infer_esn(u32::MAX - 11, Some(t), w), t - 1);
        assert_eq!(infer_esn(u32::MAX, Some(t), w), u64::from(u32::MAX));
        assert_eq!(infer_esn(3, Some(t), w), (1 << 32) | 3);
        // Case B, just after the wrap: a large seq_lo is a late packet from before.
        let t = (1u64 << 32) | 5;
        assert_eq!(infer_esn(u32::MAX - 3, Some(t), w), u64::from(u32::MAX - 3));
        assert_eq!(infer_esn(4, Some(t), w), (1 << 32) | 4);
        assert_eq!(infer_esn(5000, Some(t), w), (1 << 32) | 5000);
        // Deep in sub-space 7.
        let t = (7u64 << 32) | 100_000;
        assert_eq!(infer_esn(99_000, Some(t), w), (7 << 32) | 99_000);
        assert_eq!(infer_esn(10, Some(t), w), (8 << 32) | 10);
        // At the very top the high half saturates instead of wrapping.
        assert_eq!(
            infer_esn(1, Some(u64::MAX - 1), w),
            (u64::from(u32::MAX) << 32) | 1
        );
    }

    #[test]
    fn header_and_spi() {
        let d = [0x72, 0xd5, 0x69, 0x9c, 0, 0, 0, 1, 0xaa];
        assert_eq!(
            parse_header(&d),
            Some(EspHeader {
                spi: 0x72d5_699c,
                seq: 1
            })
        );
        assert_eq!(spi_of(&d), Some(0x72d5_699c));
        assert_eq!(spi_of(&d[..7]), None);
        assert_eq!(spi_of(&[0, 0, 0, 255, 0, 0, 0, 1]), None);
        assert_eq!(NextHeader::of_payload(&[]), NextHeader::Dummy);
        assert_eq!(NextHeader::of_payload(&[0x60]), NextHeader::Ipv6);
    }
}
