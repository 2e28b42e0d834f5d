//! Compression framing: the byte or two OpenVPN puts in front of (or
//! swaps into) every data-channel payload when `comp-lzo` or `compress`
//! is configured, inside the AEAD.
//!
//! polytun never compresses, as OpenVPN 2.6 does not unless told
//! `allow-compression yes` (compressing secret data next to
//! attacker-chosen data leaks it: VORACLE). It speaks the framing so that
//! servers whose configs still carry `comp-lzo` or `compress` can be
//! reached: their packets arrive marked "not compressed", and ours must
//! be marked the same way or the server drops every one of them. A packet
//! the peer did compress is refused ([`FramingError::Compressed`]).
//!
//! Wire forms (OpenVPN's `comp.h`, `lzo.c`, `compstub.c`, `comp-lz4.c`):
//! - [`Framing::Lzo`] (`comp-lzo`, `compress lzo`): one byte in front,
//!   `0xFA` for an uncompressed payload (`0x66` for LZO data);
//! - [`Framing::Swap`] (`compress`, `compress stub`, `compress lz4`): the
//!   payload's first byte moves to its end and `0xFB` takes its place
//!   (`0x69` for LZ4 data), so the payload's alignment does not change;
//! - [`Framing::V2`] (`compress stub-v2`, `compress lz4-v2`): nothing,
//!   unless the payload starts with `0x50`, which is then escaped as
//!   `0x50 0x00` (IP packets never start with it: version 5).
//!
//! An empty payload is never framed.

use polytun_core::PacketBuf;

const NO_COMPRESS_BYTE: u8 = 0xFA;
const NO_COMPRESS_BYTE_SWAP: u8 = 0xFB;
const LZO_COMPRESS_BYTE: u8 = 0x66;
const LZ4_COMPRESS_BYTE: u8 = 0x69;
const V2_INDICATOR: u8 = 0x50;
const V2_UNCOMPRESSED: u8 = 0x00;
/// `COMP_ALGV2_LZ4_BYTE`, `_LZO_BYTE`, `_SNAPPY_BYTE`.
const V2_COMPRESSED: [u8; 3] = [1, 2, 3];

/// Which framing a data channel uses (one for a whole session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// No compression option anywhere: the payload as it is.
    #[default]
    None,
    Lzo,
    Swap,
    V2,
}

/// Bytes a framing may add in front of a payload and behind it (what an
/// outbound arena leaves room for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Room {
    pub front: usize,
    pub back: usize,
}

impl Room {
    /// Room for both.
    pub fn union(self, o: Room) -> Room {
        Room {
            front: self.front.max(o.front),
            back: self.back.max(o.back),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The peer compressed this payload (it has `allow-compression yes`).
    #[error(
        "the peer sent a compressed packet (header byte {0:#04x}); polytun does not decompress"
    )]
    Compressed(u8),
    /// Not this framing's header byte: the two sides' compression options
    /// differ.
    #[error("bad compression framing byte {0:#04x} (the peer's comp-lzo/compress option differs)")]
    BadHeader(u8),
    /// No headroom or tailroom for the framing byte(s): a caller bug.
    #[error("no room for the compression framing")]
    NoRoom,
}

impl Framing {
    /// From an OpenVPN option: `comp-lzo [yes|no|adaptive]` or
    /// `compress [stub|stub-v2|lzo|lz4|lz4-v2]` (`arg` is the first
    /// argument, if any). `Err` names what is wrong.
    pub fn from_option(option: &str, arg: Option<&str>) -> Result<Self, String> {
        match (option, arg) {
            ("comp-lzo", None | Some("yes" | "no" | "adaptive")) => Ok(Framing::Lzo),
            ("comp-lzo", Some(a)) => Err(format!(
                "bad comp-lzo option `{a}`: must be yes, no or adaptive"
            )),
            ("compress", None | Some("stub" | "lz4")) => Ok(Framing::Swap),
            ("compress", Some("stub-v2" | "lz4-v2")) => Ok(Framing::V2),
            ("compress", Some("lzo")) => Ok(Framing::Lzo),
            ("compress", Some("migrate")) => {
                Err("`compress migrate` is a server option".to_string())
            }
            ("compress", Some(a)) => Err(format!(
                "bad compress algorithm `{a}`: must be stub, stub-v2, lzo, lz4 or lz4-v2"
            )),
            (o, _) => Err(format!("`{o}` is not a compression option")),
        }
    }

    /// The option that selects this framing, as written in a config.
    pub fn option(self) -> &'static str {
        match self {
            Framing::None => "none",
            Framing::Lzo => "comp-lzo no",
            Framing::Swap => "compress stub",
            Framing::V2 => "compress stub-v2",
        }
    }

    /// The TOML `compress` value that selects this framing.
    pub fn toml(self) -> &'static str {
        match self {
            Framing::None => "",
            Framing::Lzo => "lzo",
            Framing::Swap => "stub",
            Framing::V2 => "stub-v2",
        }
    }

    pub fn room(self) -> Room {
        match self {
            Framing::None => Room::default(),
            // V2 needs two bytes only for a payload starting with 0x50,
            // which the TUN never hands over (IP version 5); the arena
            // leaves none and such a packet fails with NoRoom.
            Framing::V2 => Room::default(),
            Framing::Lzo => Room { front: 1, back: 0 },
            Framing::Swap => Room { front: 0, back: 1 },
        }
    }

    /// Frames `pkt` (an uncompressed payload) in place.
    pub fn frame(self, pkt: &mut PacketBuf<'_>) -> Result<(), FramingError> {
        if pkt.is_empty() {
            return Ok(());
        }
        match self {
            Framing::None => {}
            Framing::Lzo => {
                pkt.prepend(1).ok_or(FramingError::NoRoom)?[0] = NO_COMPRESS_BYTE;
            }
            Framing::Swap => {
                let head = pkt.as_slice()[0];
                pkt.append(1).ok_or(FramingError::NoRoom)?[0] = head;
                pkt.as_mut_slice()[0] = NO_COMPRESS_BYTE_SWAP;
            }
            Framing::V2 => {
                if pkt.as_slice()[0] == V2_INDICATOR {
                    pkt.prepend(2)
                        .ok_or(FramingError::NoRoom)?
                        .copy_from_slice(&[V2_INDICATOR, V2_UNCOMPRESSED]);
                }
            }
        }
        Ok(())
    }

    /// Takes the framing off an opened payload in place.
    pub fn unframe(self, pkt: &mut PacketBuf<'_>) -> Result<(), FramingError> {
        let Some(&head) = pkt.as_slice().first() else {
            return Ok(());
        };
        match self {
            // Framed by a peer whose comp-lzo/compress this side lacks: no
            // IP packet starts with these (versions 15 and 5).
            Framing::None => {
                if Self::guess(head).is_some() {
                    return Err(FramingError::BadHeader(head));
                }
            }
            Framing::Lzo => match head {
                NO_COMPRESS_BYTE => {
                    pkt.trim_front(1);
                }
                LZO_COMPRESS_BYTE => return Err(FramingError::Compressed(head)),
                b => return Err(FramingError::BadHeader(b)),
            },
            Framing::Swap => match head {
                NO_COMPRESS_BYTE_SWAP => {
                    let s = pkt.as_mut_slice();
                    let last = s.len() - 1;
                    s[0] = s[last];
                    pkt.trim_back(1);
                }
                LZ4_COMPRESS_BYTE => return Err(FramingError::Compressed(head)),
                b => return Err(FramingError::BadHeader(b)),
            },
            Framing::V2 => {
                if head == V2_INDICATOR {
                    match pkt.as_slice().get(1) {
                        Some(&V2_UNCOMPRESSED) => {
                            pkt.trim_front(2);
                        }
                        Some(b) if V2_COMPRESSED.contains(b) => {
                            return Err(FramingError::Compressed(*b))
                        }
                        Some(&b) => return Err(FramingError::BadHeader(b)),
                        // OpenVPN delivers a lone 0x50 as an empty packet.
                        None => {
                            pkt.trim_front(1);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// What a payload's first byte says when no framing was expected:
    /// the framing that would explain it (a peer whose `comp-lzo` or
    /// `compress` this side lacks), if no IP packet, keepalive ping (0x2a)
    /// or OCC message (0x28) can start with it. (The compressed markers
    /// 0x66 and 0x69 are IPv6 first bytes.)
    pub fn guess(first: u8) -> Option<Framing> {
        match first {
            NO_COMPRESS_BYTE => Some(Framing::Lzo),
            NO_COMPRESS_BYTE_SWAP => Some(Framing::Swap),
            V2_INDICATOR => Some(Framing::V2),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(f: Framing, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; payload.len() + 4];
        buf[2..2 + payload.len()].copy_from_slice(payload);
        let mut p = PacketBuf::new(&mut buf, 2, 2 + payload.len());
        f.frame(&mut p).unwrap();
        p.as_slice().to_vec()
    }

    fn unframed(f: Framing, wire: &[u8]) -> Result<Vec<u8>, FramingError> {
        let mut buf = wire.to_vec();
        let n = buf.len();
        let mut p = PacketBuf::new(&mut buf, 0, n);
        f.unframe(&mut p)?;
        Ok(p.as_slice().to_vec())
    }

    /// The bytes OpenVPN 2.6 puts on an uncompressed payload, per option.
    #[test]
    fn wire_forms_are_openvpns() {
        let ip = b"\x45\x00\x00\x1cpayload";
        let mut lzo = vec![0xFA];
        lzo.extend_from_slice(ip);
        assert_eq!(framed(Framing::Lzo, ip), lzo);
        let mut swap = vec![0xFB];
        swap.extend_from_slice(&ip[1..]);
        swap.push(0x45);
        assert_eq!(framed(Framing::Swap, ip), swap);
        assert_eq!(framed(Framing::V2, ip), ip);
        assert_eq!(framed(Framing::V2, b"\x50abc"), b"\x50\x00\x50abc");
        assert_eq!(
            unframed(Framing::V2, b"\x50\x00\x50abc").unwrap(),
            b"\x50abc"
        );
        assert_eq!(framed(Framing::None, ip), ip);
        for f in [Framing::None, Framing::Lzo, Framing::Swap, Framing::V2] {
            assert_eq!(framed(f, b""), b"", "{f:?}");
            for p in [&ip[..], b"\x60abc", b"x", b"\x2a", b"\x45\xFB"] {
                assert_eq!(unframed(f, &framed(f, p)).unwrap(), p, "{f:?} {p:?}");
            }
        }
    }

    #[test]
    fn compressed_and_foreign_headers_are_refused() {
        assert_eq!(
            unframed(Framing::Lzo, b"\x66zz"),
            Err(FramingError::Compressed(0x66))
        );
        assert_eq!(
            unframed(Framing::Lzo, b"\x45zz"),
            Err(FramingError::BadHeader(0x45))
        );
        assert_eq!(
            unframed(Framing::Swap, b"\x69zz"),
            Err(FramingError::Compressed(0x69))
        );
        assert_eq!(
            unframed(Framing::Swap, b"\xFAzz"),
            Err(FramingError::BadHeader(0xFA))
        );
        assert_eq!(
            unframed(Framing::V2, b"\x50\x01zz"),
            Err(FramingError::Compressed(1))
        );
        assert_eq!(
            unframed(Framing::V2, b"\x50\x09"),
            Err(FramingError::BadHeader(9))
        );
        assert_eq!(unframed(Framing::V2, b"\x50").unwrap(), b"");
        assert_eq!(unframed(Framing::Swap, b"\xFB").unwrap(), b"");
        assert_eq!(unframed(Framing::Lzo, b"\xFA").unwrap(), b"");
        // Framed packets with no framing configured: refused, not written
        // to the TUN as garbage; IPv4 and IPv6 pass.
        assert_eq!(
            unframed(Framing::None, b"\xFA\x45zz"),
            Err(FramingError::BadHeader(0xFA))
        );
        assert_eq!(
            unframed(Framing::None, b"\xFBzz\x45"),
            Err(FramingError::BadHeader(0xFB))
        );
        assert_eq!(unframed(Framing::None, b"\x66zz").unwrap(), b"\x66zz");
        assert_eq!(unframed(Framing::None, b"\x45zz").unwrap(), b"\x45zz");
    }

    #[test]
    fn no_room_is_an_error_not_a_panic() {
        let mut buf = *b"\x45abc";
        let mut p = PacketBuf::new(&mut buf, 0, 4);
        assert_eq!(Framing::Lzo.frame(&mut p), Err(FramingError::NoRoom));
        let mut p = PacketBuf::new(&mut buf, 0, 4);
        assert_eq!(Framing::Swap.frame(&mut p), Err(FramingError::NoRoom));
        assert_eq!(&buf, b"\x45abc");
    }

    #[test]
    fn options() {
        let f = |o, a| Framing::from_option(o, a);
        assert_eq!(f("comp-lzo", None), Ok(Framing::Lzo));
        assert_eq!(f("comp-lzo", Some("no")), Ok(Framing::Lzo));
        assert_eq!(f("comp-lzo", Some("adaptive")), Ok(Framing::Lzo));
        assert!(f("comp-lzo", Some("maybe")).is_err());
        assert_eq!(f("compress", None), Ok(Framing::Swap));
        assert_eq!(f("compress", Some("lz4")), Ok(Framing::Swap));
        assert_eq!(f("compress", Some("stub-v2")), Ok(Framing::V2));
        assert_eq!(f("compress", Some("lz4-v2")), Ok(Framing::V2));
        assert_eq!(f("compress", Some("lzo")), Ok(Framing::Lzo));
        assert!(f("compress", Some("migrate")).is_err());
        assert!(f("compress", Some("zstd")).is_err());
        for fr in [Framing::Lzo, Framing::Swap, Framing::V2] {
            let (o, a) = fr.option().split_once(' ').unwrap();
            assert_eq!(f(o, Some(a)), Ok(fr));
        }
        assert_eq!(Framing::guess(0x45), None);
        assert_eq!(Framing::guess(0x2a), None);
        assert_eq!(Framing::guess(0xFA), Some(Framing::Lzo));
        assert_eq!(Framing::guess(0x66), None);
        assert_eq!(
            Room { front: 1, back: 0 }.union(Room { front: 0, back: 1 }),
            Room { front: 1, back: 1 }
        );
    }
}
