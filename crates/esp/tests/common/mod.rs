#![allow(dead_code)]
use polytun_core::KeyStatus;
use polytun_core::PacketBuf;
use polytun_esp::{EspOpenError, EspSa, EspSealError, Opened, MAX_HEADER_LEN, MAX_TRAILER_LEN};
use std::time::Instant;

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Seals `payload` with headroom/tailroom around it; returns the ESP packet.
pub fn seal(
    sa: &EspSa,
    now: Instant,
    payload: &[u8],
) -> Result<(Vec<u8>, KeyStatus), EspSealError> {
    let mut buf = vec![0u8; MAX_HEADER_LEN + payload.len() + MAX_TRAILER_LEN];
    buf[MAX_HEADER_LEN..MAX_HEADER_LEN + payload.len()].copy_from_slice(payload);
    let mut p = PacketBuf::new(&mut buf, MAX_HEADER_LEN, MAX_HEADER_LEN + payload.len());
    let st = sa.seal(now, &mut p)?;
    Ok((p.as_slice().to_vec(), st))
}

/// Opens a copy of `packet`; returns the inner packet.
pub fn open(sa: &EspSa, now: Instant, packet: &[u8]) -> Result<(Vec<u8>, Opened), EspOpenError> {
    let mut buf = packet.to_vec();
    let n = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, n);
    let o = sa.open(now, &mut p)?;
    Ok((p.as_slice().to_vec(), o))
}

/// A minimal IPv4 packet of `len` bytes (>= 20) with a correct total length.
pub fn ipv4(len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// A minimal IPv6 packet of `len` bytes (>= 40).
pub fn ipv6(len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p
}
