//! IKE message fragmentation (RFC 7383).
//!
//! Both sides announce IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT; from
//! then on an encrypted message larger than the configured fragment size
//! goes out as several messages, each carrying one Encrypted Fragment
//! payload (SKF, type 53) that is encrypted and authenticated on its own.
//! A retransmission resends every fragment.
//!
//! The receiver checks the message ID before anything else (the caller
//! does), then the fragment numbers, then the fragment's ICV, and only then
//! stores it. Reassembly is bounded: at most [`MAX_FRAGMENTS`] fragments and
//! [`wire::MAX_MESSAGE`] bytes per message, one message per direction per
//! IKE SA. Duplicate, inconsistent and unauthenticated fragments are dropped
//! (and counted by the caller) without touching the IKE SA.

use crate::crypto::SkKeys;
use crate::wire::{self, flags, pt, Header, ParseError, HEADER_LEN, MAX_MESSAGE};
use std::net::SocketAddr;
use zeroize::Zeroizing;

/// Most fragments one message may have (strongSwan's limit as well).
pub const MAX_FRAGMENTS: u16 = 255;
/// strongSwan's `charon.fragment_size` default: the whole IP datagram.
pub const DEFAULT_FRAGMENT_SIZE: usize = 1280;
/// Below this a fragment would carry almost nothing (the config refuses it).
pub const MIN_FRAGMENT_SIZE: usize = 128;
/// Fragment Number and Total Fragments, after the generic payload header.
pub const SKF_HEADER_LEN: usize = 4;

/// The fields of an Encrypted Fragment payload body (RFC 7383 §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkfHeader {
    /// 1-based.
    pub number: u16,
    pub total: u16,
}

/// Splits an SKF payload body into its header and IV | ciphertext | ICV,
/// refusing numbers of 0 and a number above the total (§2.6).
pub fn parse_skf(body: &[u8]) -> Result<(SkfHeader, &[u8]), ParseError> {
    if body.len() < SKF_HEADER_LEN {
        return Err(ParseError::Truncated {
            what: "Encrypted Fragment payload",
            need: SKF_HEADER_LEN,
            have: body.len(),
        });
    }
    let h = SkfHeader {
        number: u16::from_be_bytes([body[0], body[1]]),
        total: u16::from_be_bytes([body[2], body[3]]),
    };
    if h.number == 0 || h.total == 0 || h.number > h.total {
        return Err(ParseError::Invalid {
            what: "Encrypted Fragment payload",
            why: "fragment number is 0 or above the total",
        });
    }
    Ok((h, &body[SKF_HEADER_LEN..]))
}

/// The largest IKE message (header included) sent in one piece to
/// `remote`: `fragment_size` is the whole IP datagram, as strongSwan counts.
pub fn max_message_len(fragment_size: usize, remote: SocketAddr, encap: bool) -> usize {
    let ip = if remote.is_ipv4() { 20 } else { 40 };
    let marker = if encap { 4 } else { 0 };
    fragment_size.saturating_sub(ip + 8 + marker).max(1)
}

fn block_len(sk: &SkKeys) -> usize {
    if sk.encr.is_aead() {
        1
    } else {
        16
    }
}

/// How many plaintext bytes fit in one fragment of at most `max_len` bytes.
fn chunk_len(sk: &SkKeys, max_len: usize) -> usize {
    let iv = sk.encr.iv_len();
    let icv = sk.overhead() - iv - 1;
    let room = max_len.saturating_sub(HEADER_LEN + wire::GENERIC_LEN + SKF_HEADER_LEN + iv + icv);
    let bs = block_len(sk);
    (room / bs * bs).saturating_sub(1)
}

/// Encrypts `plain` (an inner payload chain whose first payload has type
/// `first`) as fragments of at most `max_len` bytes each. `header` is the
/// IKE header of the whole message (SPIs, exchange, flags, message ID);
/// `next_iv` yields a fresh IV per fragment. `None`: it would take more than
/// [`MAX_FRAGMENTS`] fragments (the caller sends the message whole).
pub fn seal_fragments(
    sk: &SkKeys,
    header: &Header,
    first: u8,
    plain: &[u8],
    max_len: usize,
    next_iv: &mut dyn FnMut() -> Vec<u8>,
) -> Option<Vec<Vec<u8>>> {
    let chunk = chunk_len(sk, max_len);
    if chunk == 0 {
        return None;
    }
    let total = plain.len().div_ceil(chunk).max(1);
    let total = u16::try_from(total).ok().filter(|t| *t <= MAX_FRAGMENTS)?;
    let mut out = Vec::with_capacity(total as usize);
    let mut pieces: Vec<&[u8]> = plain.chunks(chunk).collect();
    if pieces.is_empty() {
        pieces.push(&[]);
    }
    for (i, piece) in pieces.into_iter().enumerate() {
        let number = i as u16 + 1;
        let body_len = SKF_HEADER_LEN + sk.sealed_len(piece.len());
        let len = HEADER_LEN + wire::GENERIC_LEN + body_len;
        let h = Header {
            next_payload: pt::SKF,
            length: len as u32,
            ..*header
        };
        let mut m = Vec::with_capacity(len);
        h.write(&mut m);
        // only the first fragment names the first inner payload (§2.5)
        m.push(if number == 1 { first } else { pt::NONE });
        m.push(0);
        m.extend_from_slice(&((wire::GENERIC_LEN + body_len) as u16).to_be_bytes());
        m.extend_from_slice(&number.to_be_bytes());
        m.extend_from_slice(&total.to_be_bytes());
        // the AAD is everything before the IV, fragment fields included
        let iv = next_iv();
        let sealed = sk.seal(&m, &iv, piece);
        m.extend_from_slice(&sealed);
        debug_assert_eq!(m.len(), len);
        out.push(m);
    }
    Some(out)
}

/// Why a fragment was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragDrop {
    /// Bad numbers or too many fragments announced.
    Malformed(&'static str),
    /// The ICV did not verify.
    Integrity,
    /// Already have this fragment.
    Duplicate,
    /// Fewer total fragments than before, or another exchange type.
    Inconsistent(&'static str),
    /// The reassembled message would exceed [`MAX_MESSAGE`].
    TooLarge,
}

/// One message being reassembled.
struct Reassembly {
    message_id: u32,
    exchange: u8,
    first_inner: Option<u8>,
    parts: Vec<Option<Zeroizing<Vec<u8>>>>,
    have: usize,
    size: usize,
}

impl Reassembly {
    fn new(h: &Header, total: u16) -> Reassembly {
        Reassembly {
            message_id: h.message_id,
            exchange: h.exchange,
            first_inner: None,
            parts: (0..total).map(|_| None).collect(),
            have: 0,
            size: 0,
        }
    }
}

/// A fragment was accepted.
pub enum Added {
    /// Waiting for more fragments.
    More,
    /// The whole message: the first inner payload type and the inner
    /// payload chain, decrypted.
    Complete(u8, Zeroizing<Vec<u8>>),
}

/// Per IKE SA: whether the peer takes fragments, our size, and the
/// messages being reassembled (one request and one response at a time:
/// the message-ID window is 1).
#[derive(Default)]
pub struct FragState {
    /// Fragment our messages above this IP datagram size; `None`: the peer
    /// did not announce support (or we turned it off).
    pub size: Option<usize>,
    requests: Option<Reassembly>,
    responses: Option<Reassembly>,
}

impl FragState {
    /// Fragmentation was negotiated for this IKE SA.
    pub fn enable(&mut self, fragment_size: usize) {
        self.size = Some(fragment_size);
    }

    /// The state of a new IKE SA from a rekey of `old`: the negotiated
    /// size carries over (the exchange that creates it has no notify).
    pub fn inherit(old: &FragState) -> FragState {
        FragState {
            size: old.size,
            ..Default::default()
        }
    }

    /// Verifies and stores one fragment of a message whose message ID the
    /// caller has already checked. `raw` is the whole datagram (without the
    /// non-ESP marker), `first_inner` the SKF's next-payload field and
    /// `body` its body.
    pub fn add(
        &mut self,
        sk: &SkKeys,
        raw: &[u8],
        h: &Header,
        first_inner: u8,
        body: &[u8],
    ) -> Result<Added, FragDrop> {
        let (f, sealed) = parse_skf(body).map_err(|_| FragDrop::Malformed("fragment number"))?;
        if f.total > MAX_FRAGMENTS {
            return Err(FragDrop::Malformed("too many fragments"));
        }
        let plain = open_fragment(sk, raw, sealed)?;
        let slot = if h.flags & flags::RESPONSE != 0 {
            &mut self.responses
        } else {
            &mut self.requests
        };
        match slot {
            Some(r) if r.message_id == h.message_id => {
                if r.exchange != h.exchange {
                    return Err(FragDrop::Inconsistent("exchange type changed"));
                }
                let total = r.parts.len();
                // §2.6: a larger total means the sender re-fragmented
                // (smaller pieces): start over; a smaller one is stale
                if (f.total as usize) < total {
                    return Err(FragDrop::Inconsistent("fewer total fragments than before"));
                }
                if f.total as usize > total {
                    *slot = Some(Reassembly::new(h, f.total));
                }
            }
            _ => *slot = Some(Reassembly::new(h, f.total)),
        }
        let r = slot.as_mut().expect("set above");
        let i = f.number as usize - 1;
        if r.parts[i].is_some() {
            return Err(FragDrop::Duplicate);
        }
        if r.size + plain.len() > MAX_MESSAGE {
            *slot = None;
            return Err(FragDrop::TooLarge);
        }
        if f.number == 1 {
            r.first_inner = Some(first_inner);
        }
        r.size += plain.len();
        r.parts[i] = Some(plain);
        r.have += 1;
        if r.have < r.parts.len() {
            return Ok(Added::More);
        }
        let r = slot.take().expect("set above");
        let mut whole = Zeroizing::new(Vec::with_capacity(r.size));
        for p in r.parts.into_iter().flatten() {
            whole.extend_from_slice(&p);
        }
        Ok(Added::Complete(r.first_inner.unwrap_or(pt::NONE), whole))
    }
}

/// Verifies one fragment's ICV and decrypts it. `sealed` (IV | ciphertext |
/// ICV) ends `raw`; everything before it is the AAD.
pub fn open_fragment(
    sk: &SkKeys,
    raw: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, FragDrop> {
    let aad_len = raw
        .len()
        .checked_sub(sealed.len())
        .ok_or(FragDrop::Malformed("length"))?;
    sk.open(&raw[..aad_len], sealed)
        .map_err(|_| FragDrop::Integrity)
}

/// The SKF payload of a parsed message, if it carries one (it is last).
pub fn skf_of(msg: &wire::Message) -> Option<(u8, &[u8])> {
    match msg.payloads.last() {
        Some(wire::Payload::Skf { first_inner, body }) => Some((*first_inner, body)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{EncrAlg, IntegAlg};
    use crate::wire::exchange;

    fn keys(encr: EncrAlg, integ: Option<IntegAlg>) -> SkKeys {
        SkKeys {
            encr,
            integ,
            sk_e: Zeroizing::new(vec![7; encr.keymat_len()]),
            sk_a: Zeroizing::new(vec![9; 32]),
        }
    }

    fn header(response: bool) -> Header {
        Header {
            spi_i: [1; 8],
            spi_r: [2; 8],
            next_payload: pt::SKF,
            version: 0x20,
            exchange: exchange::IKE_AUTH,
            flags: if response {
                flags::RESPONSE
            } else {
                flags::INITIATOR
            },
            message_id: 1,
            length: 0,
        }
    }

    fn frags(sk: &SkKeys, plain: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut n = 0u64;
        seal_fragments(sk, &header(false), pt::IDI, plain, max, &mut || {
            n += 1;
            if sk.encr.is_aead() {
                n.to_be_bytes().to_vec()
            } else {
                vec![n as u8; 16]
            }
        })
        .expect("fits")
    }

    fn feed(st: &mut FragState, sk: &SkKeys, m: &[u8]) -> Result<Added, FragDrop> {
        let msg = wire::Message::parse(m).expect("fragment parses");
        let (first, body) = skf_of(&msg).expect("SKF");
        st.add(sk, m, &msg.header, first, body)
    }

    #[test]
    fn split_and_reassemble_in_any_order() {
        for sk in [
            keys(EncrAlg::AES256GCM16, None),
            keys(EncrAlg::ChaCha20Poly1305, None),
            keys(EncrAlg::AES128CBC, Some(IntegAlg::HmacSha256_128)),
        ] {
            let plain: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
            let f = frags(&sk, &plain, 200);
            assert!(f.len() >= 6, "{}", f.len());
            assert!(f.iter().all(|m| m.len() <= 200));
            let mut st = FragState::default();
            let mut order: Vec<usize> = (0..f.len()).rev().collect();
            order.swap(0, 2);
            let mut done = None;
            for (k, &i) in order.iter().enumerate() {
                match feed(&mut st, &sk, &f[i]).expect("accepted") {
                    Added::More => assert!(k + 1 < order.len()),
                    Added::Complete(first, p) => done = Some((first, p)),
                }
            }
            let (first, p) = done.expect("complete");
            assert_eq!(first, pt::IDI);
            assert_eq!(&p[..], &plain[..]);
        }
    }

    #[test]
    fn bad_icv_duplicate_and_inconsistent_are_dropped() {
        let sk = keys(EncrAlg::AES256GCM16, None);
        let plain = vec![5u8; 600];
        let f = frags(&sk, &plain, 200);
        let mut st = FragState::default();
        let mut bad = f[1].clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(feed(&mut st, &sk, &bad).err(), Some(FragDrop::Integrity));
        assert!(matches!(feed(&mut st, &sk, &f[1]), Ok(Added::More)));
        assert_eq!(feed(&mut st, &sk, &f[1]).err(), Some(FragDrop::Duplicate));
        // the same message cut finer: the larger total restarts reassembly,
        // a fragment of the coarser cut is then stale
        let fine = frags(&sk, &plain, 150);
        assert!(fine.len() > f.len());
        assert!(matches!(feed(&mut st, &sk, &fine[0]), Ok(Added::More)));
        assert!(matches!(
            feed(&mut st, &sk, &f[0]),
            Err(FragDrop::Inconsistent(_))
        ));
        let mut done = false;
        for m in &fine[1..] {
            if let Added::Complete(_, p) = feed(&mut st, &sk, m).expect("accepted") {
                assert_eq!(&p[..], &plain[..]);
                done = true;
            }
        }
        assert!(done);
    }

    #[test]
    fn numbers_are_checked() {
        assert!(parse_skf(&[0, 0, 0, 1]).is_err());
        assert!(parse_skf(&[0, 2, 0, 1]).is_err());
        assert!(parse_skf(&[0, 1, 0, 0]).is_err());
        assert!(parse_skf(&[0, 1]).is_err());
        let (h, rest) = parse_skf(&[0, 1, 0, 3, 9]).unwrap();
        assert_eq!((h.number, h.total, rest), (1, 3, &[9u8][..]));
    }

    #[test]
    fn too_many_fragments_is_refused() {
        let sk = keys(EncrAlg::AES256GCM16, None);
        let plain = vec![0u8; 60_000];
        let r = seal_fragments(&sk, &header(false), pt::IDI, &plain, 128, &mut || {
            vec![0; 8]
        });
        assert!(r.is_none());
    }
}
