//! OpenVPN wire formats: the opcode/key-id byte, control packets (hard and
//! soft resets, P_CONTROL_V1, P_ACK_V1) and the P_DATA_V2 header.
//!
//! A control packet on the wire is
//! `opcode|key-id (1) ‖ session id (8) ‖ <wrapping> ‖ body`, where the
//! wrapping depends on the control-channel protection (nothing, tls-auth's
//! HMAC + packet-id + time, tls-crypt's packet-id + time + tag + encryption,
//! see [`crate::wrap`]) and the body, once unwrapped, is
//! `ack count (1) ‖ acked packet-ids (4 each) ‖ [remote session id (8) if
//! any ack] ‖ [message packet-id (4) unless P_ACK_V1] ‖ payload`.
//!
//! Parsing is strict: every length is checked, nothing panics, errors say
//! what was being read.

use std::fmt;

/// Longest ACK array OpenVPN accepts (`RELIABLE_ACK_SIZE`).
pub const MAX_ACKS: usize = 8;
/// Bytes of a session id.
pub const SESSION_ID_LEN: usize = 8;
/// opcode/key-id byte + session id.
pub const CONTROL_HEADER_LEN: usize = 1 + SESSION_ID_LEN;
/// P_DATA_V2 AEAD header: opcode/key-id, peer-id (3), packet-id (4).
pub const DATA_V2_HEADER_LEN: usize = 8;
/// AEAD tag on the data channel.
pub const DATA_TAG_LEN: usize = 16;
/// "No peer-id" value of the 24-bit field.
pub const NO_PEER_ID: u32 = 0x00FF_FFFF;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    HardResetClientV1 = 1,
    HardResetServerV1 = 2,
    SoftResetV1 = 3,
    ControlV1 = 4,
    AckV1 = 5,
    DataV1 = 6,
    HardResetClientV2 = 7,
    HardResetServerV2 = 8,
    DataV2 = 9,
    HardResetClientV3 = 10,
    ControlWkcV1 = 11,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::HardResetClientV1,
            2 => Self::HardResetServerV1,
            3 => Self::SoftResetV1,
            4 => Self::ControlV1,
            5 => Self::AckV1,
            6 => Self::DataV1,
            7 => Self::HardResetClientV2,
            8 => Self::HardResetServerV2,
            9 => Self::DataV2,
            10 => Self::HardResetClientV3,
            11 => Self::ControlWkcV1,
            _ => return None,
        })
    }

    pub fn is_data(self) -> bool {
        matches!(self, Self::DataV1 | Self::DataV2)
    }

    pub fn is_control(self) -> bool {
        !self.is_data()
    }

    /// Does a packet with this opcode carry a message packet-id (i.e. go
    /// through the reliability layer)? Everything but ACKs and data.
    pub fn is_reliable(self) -> bool {
        self.is_control() && self != Self::AckV1
    }

    /// The key-method-1 opcodes OpenVPN 2.6 no longer accepts.
    pub fn is_obsolete(self) -> bool {
        matches!(self, Self::HardResetClientV1 | Self::HardResetServerV1)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::HardResetClientV1 => "P_CONTROL_HARD_RESET_CLIENT_V1",
            Self::HardResetServerV1 => "P_CONTROL_HARD_RESET_SERVER_V1",
            Self::SoftResetV1 => "P_CONTROL_SOFT_RESET_V1",
            Self::ControlV1 => "P_CONTROL_V1",
            Self::AckV1 => "P_ACK_V1",
            Self::DataV1 => "P_DATA_V1",
            Self::HardResetClientV2 => "P_CONTROL_HARD_RESET_CLIENT_V2",
            Self::HardResetServerV2 => "P_CONTROL_HARD_RESET_SERVER_V2",
            Self::DataV2 => "P_DATA_V2",
            Self::HardResetClientV3 => "P_CONTROL_HARD_RESET_CLIENT_V3",
            Self::ControlWkcV1 => "P_CONTROL_WKC_V1",
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The 3-bit key-id of the opcode byte.
pub type KeyId = u8;

/// The first byte of every packet.
pub fn op_byte(op: Opcode, key_id: KeyId) -> u8 {
    ((op as u8) << 3) | (key_id & 7)
}

/// Splits the first byte into opcode and key-id.
pub fn split_op_byte(b: u8) -> Result<(Opcode, KeyId), ParseError> {
    let op = Opcode::from_u8(b >> 3).ok_or(ParseError::UnknownOpcode(b >> 3))?;
    Ok((op, b & 7))
}

/// A 64-bit control-channel session id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SessionId(pub [u8; SESSION_ID_LEN]);

impl SessionId {
    pub fn random(rng: &mut impl rand_core::RngCore) -> Self {
        let mut b = [0u8; SESSION_ID_LEN];
        rng.fill_bytes(&mut b);
        Self(b)
    }
    pub fn is_zero(&self) -> bool {
        self.0 == [0; SESSION_ID_LEN]
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Message or wrapping packet-id.
pub type PacketId = u32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty packet")]
    Empty,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    #[error("{what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("ACK array of {0} entries (at most {MAX_ACKS})")]
    TooManyAcks(usize),
    #[error("P_ACK_V1 without any acknowledged packet-id")]
    EmptyAck,
    #[error("{0} trailing bytes after P_ACK_V1")]
    TrailingAck(usize),
    #[error("{0} is not a control packet")]
    NotControl(Opcode),
    #[error("{0} is not supported (key method 1 / static key mode)")]
    Unsupported(Opcode),
}

pub(crate) fn need(what: &'static str, have: &[u8], n: usize) -> Result<(), ParseError> {
    if have.len() < n {
        Err(ParseError::Truncated {
            what,
            need: n,
            have: have.len(),
        })
    } else {
        Ok(())
    }
}

pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A packet as the data path classifies it: by its first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A control packet; `rest` is everything after the session id (the
    /// wrapping and the possibly encrypted body).
    Control {
        opcode: Opcode,
        key_id: KeyId,
        session_id: SessionId,
        rest: &'a [u8],
    },
    /// A P_DATA_V2 packet (AEAD layout).
    DataV2(DataV2Header),
}

/// The cleartext header of a P_DATA_V2 AEAD packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataV2Header {
    pub key_id: KeyId,
    pub peer_id: u32,
    pub packet_id: PacketId,
}

impl DataV2Header {
    pub fn parse(p: &[u8]) -> Result<Self, ParseError> {
        need("P_DATA_V2 header+tag", p, DATA_V2_HEADER_LEN + DATA_TAG_LEN)?;
        let (op, key_id) = split_op_byte(p[0])?;
        if op != Opcode::DataV2 {
            return Err(ParseError::NotControl(op));
        }
        Ok(Self {
            key_id,
            peer_id: u32::from_be_bytes([0, p[1], p[2], p[3]]),
            packet_id: be32(&p[4..8]),
        })
    }

    pub fn write(&self, out: &mut [u8]) {
        out[0] = op_byte(Opcode::DataV2, self.key_id);
        out[1..4].copy_from_slice(&self.peer_id.to_be_bytes()[1..]);
        out[4..8].copy_from_slice(&self.packet_id.to_be_bytes());
    }
}

/// Classifies one datagram (or one TCP frame).
pub fn parse_packet(p: &[u8]) -> Result<Packet<'_>, ParseError> {
    let first = *p.first().ok_or(ParseError::Empty)?;
    let (opcode, key_id) = split_op_byte(first)?;
    match opcode {
        Opcode::DataV2 => Ok(Packet::DataV2(DataV2Header::parse(p)?)),
        Opcode::DataV1 | Opcode::HardResetClientV1 | Opcode::HardResetServerV1 => {
            Err(ParseError::Unsupported(opcode))
        }
        _ => {
            need("control header", p, CONTROL_HEADER_LEN)?;
            let mut sid = [0u8; SESSION_ID_LEN];
            sid.copy_from_slice(&p[1..CONTROL_HEADER_LEN]);
            Ok(Packet::Control {
                opcode,
                key_id,
                session_id: SessionId(sid),
                rest: &p[CONTROL_HEADER_LEN..],
            })
        }
    }
}

/// The unwrapped body of a control packet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlBody<'a> {
    /// Packet-ids acknowledged to the peer.
    pub acks: Vec<PacketId>,
    /// The peer's session id, present iff `acks` is not empty.
    pub remote_session: Option<SessionId>,
    /// This message's packet-id (absent in P_ACK_V1).
    pub message_id: Option<PacketId>,
    pub payload: &'a [u8],
}

impl<'a> ControlBody<'a> {
    pub fn parse(opcode: Opcode, b: &'a [u8]) -> Result<Self, ParseError> {
        if !opcode.is_control() {
            return Err(ParseError::NotControl(opcode));
        }
        need("ACK count", b, 1)?;
        let n = b[0] as usize;
        if n > MAX_ACKS {
            return Err(ParseError::TooManyAcks(n));
        }
        let mut off = 1;
        need("ACK array", &b[off..], n * 4)?;
        let acks = b[off..off + n * 4].chunks_exact(4).map(be32).collect();
        off += n * 4;
        let remote_session = if n > 0 {
            need("remote session id", &b[off..], SESSION_ID_LEN)?;
            let mut s = [0u8; SESSION_ID_LEN];
            s.copy_from_slice(&b[off..off + SESSION_ID_LEN]);
            off += SESSION_ID_LEN;
            Some(SessionId(s))
        } else {
            None
        };
        let message_id = if opcode == Opcode::AckV1 {
            if n == 0 {
                return Err(ParseError::EmptyAck);
            }
            if off != b.len() {
                return Err(ParseError::TrailingAck(b.len() - off));
            }
            None
        } else {
            need("message packet-id", &b[off..], 4)?;
            let id = be32(&b[off..off + 4]);
            off += 4;
            Some(id)
        };
        Ok(Self {
            acks,
            remote_session,
            message_id,
            payload: &b[off..],
        })
    }

    /// Appends the encoded body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(self.acks.len() <= MAX_ACKS);
        let n = self.acks.len().min(MAX_ACKS);
        out.push(n as u8);
        for a in &self.acks[..n] {
            out.extend_from_slice(&a.to_be_bytes());
        }
        if n > 0 {
            out.extend_from_slice(&self.remote_session.unwrap_or_default().0);
        }
        if let Some(id) = self.message_id {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
    }

    pub fn encoded_len(&self) -> usize {
        let n = self.acks.len();
        1 + 4 * n
            + if n > 0 { SESSION_ID_LEN } else { 0 }
            + if self.message_id.is_some() { 4 } else { 0 }
            + self.payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_byte_roundtrip() {
        for v in 1..=11u8 {
            let op = Opcode::from_u8(v).unwrap();
            for k in 0..8 {
                assert_eq!(split_op_byte(op_byte(op, k)).unwrap(), (op, k));
            }
        }
        assert_eq!(split_op_byte(0), Err(ParseError::UnknownOpcode(0)));
        assert_eq!(split_op_byte(12 << 3), Err(ParseError::UnknownOpcode(12)));
    }

    #[test]
    fn body_roundtrip_and_errors() {
        let b = ControlBody {
            acks: vec![1, 2],
            remote_session: Some(SessionId([7; 8])),
            message_id: Some(5),
            payload: b"tls bytes",
        };
        let mut out = Vec::new();
        b.encode(&mut out);
        assert_eq!(out.len(), b.encoded_len());
        assert_eq!(ControlBody::parse(Opcode::ControlV1, &out).unwrap(), b);
        // Truncations are errors, never panics.
        for l in 0..out.len() - b.payload.len() {
            assert!(ControlBody::parse(Opcode::ControlV1, &out[..l]).is_err());
        }
        let ack = ControlBody {
            acks: vec![9],
            remote_session: Some(SessionId([1; 8])),
            message_id: None,
            payload: b"",
        };
        let mut out = Vec::new();
        ack.encode(&mut out);
        assert_eq!(ControlBody::parse(Opcode::AckV1, &out).unwrap(), ack);
        out.push(0);
        assert_eq!(
            ControlBody::parse(Opcode::AckV1, &out),
            Err(ParseError::TrailingAck(1))
        );
        assert_eq!(
            ControlBody::parse(Opcode::AckV1, &[0]),
            Err(ParseError::EmptyAck)
        );
        assert_eq!(
            ControlBody::parse(Opcode::ControlV1, &[9]),
            Err(ParseError::TooManyAcks(9))
        );
    }

    #[test]
    fn data_v2_header() {
        let h = DataV2Header {
            key_id: 3,
            peer_id: 0xABCDEF,
            packet_id: 42,
        };
        let mut p = [0u8; 24];
        h.write(&mut p);
        assert_eq!(p[0], (9 << 3) | 3);
        assert_eq!(parse_packet(&p).unwrap(), Packet::DataV2(h));
        assert!(parse_packet(&p[..23]).is_err());
    }
}
