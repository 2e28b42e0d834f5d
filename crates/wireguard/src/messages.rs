//! WireGuard wire formats, strictly length-checked, parsed without copying.
//!
//! The first four bytes are the message type as a little-endian u32 (type
//! byte plus three zero reserved bytes, as wireguard-go reads them).
//! [`classify`] is the data path's demultiplexer: transport data yields the
//! receiver index and counter borrowed from the datagram; the three handshake
//! messages go to the control task ([`crate::Device::handle_handshake`]).

pub const TYPE_INITIATION: u32 = 1;
pub const TYPE_RESPONSE: u32 = 2;
pub const TYPE_COOKIE_REPLY: u32 = 3;
pub const TYPE_DATA: u32 = 4;

pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
/// Transport header: type, receiver index, counter.
pub const DATA_HEADER_LEN: usize = 16;
/// Header plus the AEAD tag of an empty (keepalive) payload.
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + 16;

/// Offsets of mac1 and mac2 (the bytes before mac1 are what mac1 covers).
pub const INITIATION_MAC1: usize = 116;
pub const INITIATION_MAC2: usize = 132;
pub const RESPONSE_MAC1: usize = 60;
pub const RESPONSE_MAC2: usize = 76;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("datagram shorter than 4 bytes")]
    Empty,
    #[error("unknown message type {0:#x}")]
    UnknownType(u32),
    #[error("wrong length {len} for message type {ty}")]
    BadLength { ty: u32, len: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initiation<'a> {
    pub sender: u32,
    pub ephemeral: &'a [u8; 32],
    pub encrypted_static: &'a [u8; 48],
    pub encrypted_timestamp: &'a [u8; 28],
    pub mac1: &'a [u8; 16],
    pub mac2: &'a [u8; 16],
    /// The whole message (mac1 covers `raw[..INITIATION_MAC1]`).
    pub raw: &'a [u8; INITIATION_LEN],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    pub sender: u32,
    pub receiver: u32,
    pub ephemeral: &'a [u8; 32],
    pub encrypted_nothing: &'a [u8; 16],
    pub mac1: &'a [u8; 16],
    pub mac2: &'a [u8; 16],
    pub raw: &'a [u8; RESPONSE_LEN],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieReply<'a> {
    pub receiver: u32,
    pub nonce: &'a [u8; 24],
    pub encrypted_cookie: &'a [u8; 32],
}

/// A transport data message, borrowed: header fields plus the whole datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data<'a> {
    pub receiver: u32,
    pub counter: u64,
    /// The whole datagram (header, ciphertext, tag).
    pub packet: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Initiation(Initiation<'a>),
    Response(Response<'a>),
    CookieReply(CookieReply<'a>),
    Data(Data<'a>),
}

impl Message<'_> {
    pub fn is_handshake(&self) -> bool {
        !matches!(self, Message::Data(_))
    }
}

fn arr<const N: usize>(b: &[u8], at: usize) -> &[u8; N] {
    // Callers checked the total length first; a short slice here is a bug in
    // this module, so fall back to a static zero array rather than panic.
    b.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .unwrap_or(&[0u8; N])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(*arr::<4>(b, at))
}

/// Classifies and parses one datagram.
pub fn classify(d: &[u8]) -> Result<Message<'_>, ParseError> {
    if d.len() < 4 {
        return Err(ParseError::Empty);
    }
    let ty = u32_at(d, 0);
    let want = match ty {
        TYPE_INITIATION => Some(INITIATION_LEN),
        TYPE_RESPONSE => Some(RESPONSE_LEN),
        TYPE_COOKIE_REPLY => Some(COOKIE_REPLY_LEN),
        TYPE_DATA => None,
        _ => return Err(ParseError::UnknownType(ty)),
    };
    match want {
        Some(n) if d.len() != n => return Err(ParseError::BadLength { ty, len: d.len() }),
        None if d.len() < DATA_MIN_LEN => return Err(ParseError::BadLength { ty, len: d.len() }),
        _ => {}
    }
    Ok(match ty {
        TYPE_INITIATION => Message::Initiation(Initiation {
            sender: u32_at(d, 4),
            ephemeral: arr(d, 8),
            encrypted_static: arr(d, 40),
            encrypted_timestamp: arr(d, 88),
            mac1: arr(d, INITIATION_MAC1),
            mac2: arr(d, INITIATION_MAC2),
            raw: arr(d, 0),
        }),
        TYPE_RESPONSE => Message::Response(Response {
            sender: u32_at(d, 4),
            receiver: u32_at(d, 8),
            ephemeral: arr(d, 12),
            encrypted_nothing: arr(d, 44),
            mac1: arr(d, RESPONSE_MAC1),
            mac2: arr(d, RESPONSE_MAC2),
            raw: arr(d, 0),
        }),
        TYPE_COOKIE_REPLY => Message::CookieReply(CookieReply {
            receiver: u32_at(d, 4),
            nonce: arr(d, 8),
            encrypted_cookie: arr(d, 32),
        }),
        _ => Message::Data(Data {
            receiver: u32_at(d, 4),
            counter: u64::from_le_bytes(*arr::<8>(d, 8)),
            packet: d,
        }),
    })
}

/// Writes an initiation without macs (they are filled in by [`crate::cookie`]).
pub fn write_initiation(
    sender: u32,
    ephemeral: &[u8; 32],
    encrypted_static: &[u8; 48],
    encrypted_timestamp: &[u8; 28],
) -> [u8; INITIATION_LEN] {
    let mut m = [0u8; INITIATION_LEN];
    m[..4].copy_from_slice(&TYPE_INITIATION.to_le_bytes());
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    m[8..40].copy_from_slice(ephemeral);
    m[40..88].copy_from_slice(encrypted_static);
    m[88..116].copy_from_slice(encrypted_timestamp);
    m
}

pub fn write_response(
    sender: u32,
    receiver: u32,
    ephemeral: &[u8; 32],
    encrypted_nothing: &[u8; 16],
) -> [u8; RESPONSE_LEN] {
    let mut m = [0u8; RESPONSE_LEN];
    m[..4].copy_from_slice(&TYPE_RESPONSE.to_le_bytes());
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    m[8..12].copy_from_slice(&receiver.to_le_bytes());
    m[12..44].copy_from_slice(ephemeral);
    m[44..60].copy_from_slice(encrypted_nothing);
    m
}

pub fn write_cookie_reply(
    receiver: u32,
    nonce: &[u8; 24],
    encrypted_cookie: &[u8; 32],
) -> [u8; COOKIE_REPLY_LEN] {
    let mut m = [0u8; COOKIE_REPLY_LEN];
    m[..4].copy_from_slice(&TYPE_COOKIE_REPLY.to_le_bytes());
    m[4..8].copy_from_slice(&receiver.to_le_bytes());
    m[8..32].copy_from_slice(nonce);
    m[32..64].copy_from_slice(encrypted_cookie);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lengths_are_strict() {
        let i = write_initiation(7, &[1; 32], &[2; 48], &[3; 28]);
        match classify(&i).unwrap() {
            Message::Initiation(m) => {
                assert_eq!(m.sender, 7);
                assert_eq!(m.ephemeral, &[1; 32]);
                assert_eq!(m.encrypted_timestamp, &[3; 28]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&i[..147]),
            Err(ParseError::BadLength { ty: 1, len: 147 })
        ));
        let mut long = i.to_vec();
        long.push(0);
        assert!(classify(&long).is_err());
        let r = write_response(1, 2, &[4; 32], &[5; 16]);
        assert!(
            matches!(classify(&r), Ok(Message::Response(m)) if m.receiver == 2 && m.sender == 1)
        );
        assert!(classify(&r[..91]).is_err());
        let c = write_cookie_reply(9, &[6; 24], &[7; 32]);
        assert!(matches!(classify(&c), Ok(Message::CookieReply(m)) if m.receiver == 9));
        assert!(classify(&c[..63]).is_err());
        // Reserved bytes must be zero.
        let mut bad = i;
        bad[1] = 1;
        assert!(matches!(classify(&bad), Err(ParseError::UnknownType(_))));
        assert_eq!(classify(&[1, 0]), Err(ParseError::Empty));
    }

    #[test]
    fn data_header() {
        let mut d = [0u8; 32];
        d[0] = 4;
        d[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        d[8..16].copy_from_slice(&42u64.to_le_bytes());
        match classify(&d).unwrap() {
            Message::Data(m) => {
                assert_eq!(
                    (m.receiver, m.counter, m.packet.len()),
                    (0xdead_beef, 42, 32)
                );
                assert!(std::ptr::eq(m.packet, &d[..]));
            }
            other => panic!("{other:?}"),
        }
        assert!(classify(&d[..31]).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), ty in 0u8..6) {
            let _ = classify(&bytes);
            let mut b = bytes.clone();
            if b.len() >= 4 { b[0] = ty; b[1] = 0; b[2] = 0; b[3] = 0; }
            let _ = classify(&b);
        }
    }
}
