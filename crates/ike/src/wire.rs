//! IKEv2 wire format (RFC 7296 §3): the header, the generic payload chain and
//! typed parse/serialize of every payload the state machine uses.
//!
//! Parsing never panics: every length is checked against the bytes that are
//! really there, and errors say which payload was malformed and why.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Size of the fixed IKE header.
pub const HEADER_LEN: usize = 28;
/// Size of the generic payload header.
pub const GENERIC_LEN: usize = 4;
/// Largest message we accept (RFC 7296 §2 asks for at least 1280; IKE
/// fragmentation or certificates rarely need more than this).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Exchange types (§3.1).
pub mod exchange {
    pub const IKE_SA_INIT: u8 = 34;
    pub const IKE_AUTH: u8 = 35;
    pub const CREATE_CHILD_SA: u8 = 36;
    pub const INFORMATIONAL: u8 = 37;
}

/// Header flags (§3.1).
pub mod flags {
    pub const INITIATOR: u8 = 0x08;
    pub const VERSION: u8 = 0x10;
    pub const RESPONSE: u8 = 0x20;
}

/// Payload type numbers (§3.2).
pub mod pt {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    /// Encrypted fragment (RFC 7383).
    pub const SKF: u8 = 53;
}

/// Notify message types (§3.10.1 and later RFCs).
pub mod notify {
    // errors
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    pub const INVALID_IKE_SPI: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_SYNTAX: u16 = 7;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_SPI: u16 = 11;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    pub const INTERNAL_ADDRESS_FAILURE: u16 = 36;
    pub const FAILED_CP_REQUIRED: u16 = 37;
    pub const TS_UNACCEPTABLE: u16 = 38;
    pub const INVALID_SELECTORS: u16 = 39;
    pub const TEMPORARY_FAILURE: u16 = 43;
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    // status
    pub const INITIAL_CONTACT: u16 = 16384;
    pub const SET_WINDOW_SIZE: u16 = 16385;
    pub const ADDITIONAL_TS_POSSIBLE: u16 = 16386;
    pub const IPCOMP_SUPPORTED: u16 = 16387;
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    pub const COOKIE: u16 = 16390;
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    pub const HTTP_CERT_LOOKUP_SUPPORTED: u16 = 16392;
    pub const REKEY_SA: u16 = 16393;
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;
    pub const NON_FIRST_FRAGMENTS_ALSO: u16 = 16395;
    pub const MOBIKE_SUPPORTED: u16 = 16396;
    pub const ADDITIONAL_IP4_ADDRESS: u16 = 16397;
    pub const ADDITIONAL_IP6_ADDRESS: u16 = 16398;
    pub const NO_ADDITIONAL_ADDRESSES: u16 = 16399;
    pub const UPDATE_SA_ADDRESSES: u16 = 16400;
    pub const COOKIE2: u16 = 16401;
    pub const NO_NATS_ALLOWED: u16 = 16402;
    pub const MULTIPLE_AUTH_SUPPORTED: u16 = 16404;
    pub const REDIRECT_SUPPORTED: u16 = 16406;
    pub const IKEV2_FRAGMENTATION_SUPPORTED: u16 = 16430;
    pub const SIGNATURE_HASH_ALGORITHMS: u16 = 16431;
    pub const CHILDLESS_IKEV2_SUPPORTED: u16 = 16418;
}

/// Protocol IDs (§3.3.1).
pub mod proto {
    pub const IKE: u8 = 1;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
}

/// Transform types (§3.3.2).
pub mod tt {
    pub const ENCR: u8 = 1;
    pub const PRF: u8 = 2;
    pub const INTEG: u8 = 3;
    pub const DH: u8 = 4;
    pub const ESN: u8 = 5;
}

/// Transform attribute: key length (§3.3.5, TV format).
pub const ATTR_KEY_LENGTH: u16 = 14;

/// Identification types (§3.5).
pub mod id_type {
    pub const IPV4_ADDR: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const RFC822_ADDR: u8 = 3;
    pub const IPV6_ADDR: u8 = 5;
    pub const DER_ASN1_DN: u8 = 9;
    pub const DER_ASN1_GN: u8 = 10;
    pub const KEY_ID: u8 = 11;
}

/// Authentication methods (§3.8, RFC 7427).
pub mod auth_method {
    pub const RSA_SIG: u8 = 1;
    pub const SHARED_KEY_MIC: u8 = 2;
    pub const DSS_SIG: u8 = 3;
    pub const DIGITAL_SIGNATURE: u8 = 14;
}

/// Traffic selector types (§3.13.1).
pub mod ts_type {
    pub const IPV4_ADDR_RANGE: u8 = 7;
    pub const IPV6_ADDR_RANGE: u8 = 8;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("bad length in {what}: {len}")]
    BadLength { what: &'static str, len: usize },
    #[error("unsupported IKE major version {0:#x}")]
    Version(u8),
    #[error("message length {header} does not match datagram length {actual}")]
    LengthMismatch { header: usize, actual: usize },
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("unsupported critical payload type {0}")]
    UnsupportedCritical(u8),
    #[error("invalid {what}: {why}")]
    Invalid {
        what: &'static str,
        why: &'static str,
    },
    #[error("SK payload is not the last payload")]
    SkNotLast,
    #[error("too many payloads")]
    TooManyPayloads,
}

type Result<T> = std::result::Result<T, ParseError>;

fn need(what: &'static str, buf: &[u8], n: usize) -> Result<()> {
    if buf.len() < n {
        Err(ParseError::Truncated {
            what,
            need: n,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn invalid<T>(what: &'static str, why: &'static str) -> Result<T> {
    Err(ParseError::Invalid { what, why })
}

/// The fixed IKE header (§3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub spi_i: [u8; 8],
    pub spi_r: [u8; 8],
    pub next_payload: u8,
    pub version: u8,
    pub exchange: u8,
    pub flags: u8,
    pub message_id: u32,
    pub length: u32,
}

impl Header {
    pub fn parse(buf: &[u8]) -> Result<Header> {
        need("IKE header", buf, HEADER_LEN)?;
        let mut spi_i = [0; 8];
        let mut spi_r = [0; 8];
        spi_i.copy_from_slice(&buf[0..8]);
        spi_r.copy_from_slice(&buf[8..16]);
        let h = Header {
            spi_i,
            spi_r,
            next_payload: buf[16],
            version: buf[17],
            exchange: buf[18],
            flags: buf[19],
            message_id: be32(&buf[20..24]),
            length: be32(&buf[24..28]),
        };
        if h.version >> 4 != 2 {
            return Err(ParseError::Version(h.version));
        }
        Ok(h)
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i);
        out.extend_from_slice(&self.spi_r);
        out.push(self.next_payload);
        out.push(self.version);
        out.push(self.exchange);
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }

    pub fn is_response(&self) -> bool {
        self.flags & flags::RESPONSE != 0
    }
    pub fn is_initiator(&self) -> bool {
        self.flags & flags::INITIATOR != 0
    }
}

/// One transform of a proposal (§3.3.2). `key_len` is the Key Length
/// attribute in bits, when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transform {
    pub ttype: u8,
    pub id: u16,
    pub key_len: Option<u16>,
}

/// One proposal of an SA payload (§3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub num: u8,
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

impl Proposal {
    pub fn of_type(&self, t: u8) -> impl Iterator<Item = &Transform> {
        self.transforms.iter().filter(move |x| x.ttype == t)
    }
}

/// Identification payload contents (§3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    Fqdn(String),
    Rfc822(String),
    DerDn(Vec<u8>),
    KeyId(Vec<u8>),
    /// Any other ID type, kept as raw bytes.
    Other(u8, Vec<u8>),
}

impl Identity {
    pub fn id_type(&self) -> u8 {
        match self {
            Identity::Ipv4(_) => id_type::IPV4_ADDR,
            Identity::Ipv6(_) => id_type::IPV6_ADDR,
            Identity::Fqdn(_) => id_type::FQDN,
            Identity::Rfc822(_) => id_type::RFC822_ADDR,
            Identity::DerDn(_) => id_type::DER_ASN1_DN,
            Identity::KeyId(_) => id_type::KEY_ID,
            Identity::Other(t, _) => *t,
        }
    }

    pub fn data(&self) -> Vec<u8> {
        match self {
            Identity::Ipv4(a) => a.octets().to_vec(),
            Identity::Ipv6(a) => a.octets().to_vec(),
            Identity::Fqdn(s) | Identity::Rfc822(s) => s.as_bytes().to_vec(),
            Identity::DerDn(b) | Identity::KeyId(b) | Identity::Other(_, b) => b.clone(),
        }
    }

    /// The payload body after the generic header: type, 3 reserved, data
    /// (what §2.15 calls RestOfInitIDPayload / RestOfRespIDPayload).
    pub fn body(&self) -> Vec<u8> {
        let mut v = vec![self.id_type(), 0, 0, 0];
        v.extend_from_slice(&self.data());
        v
    }

    pub fn parse_body(b: &[u8]) -> Result<Identity> {
        need("ID payload", b, 4)?;
        let (t, d) = (b[0], &b[4..]);
        Ok(match t {
            id_type::IPV4_ADDR => {
                let a: [u8; 4] = d.try_into().map_err(|_| ParseError::BadLength {
                    what: "ID_IPV4_ADDR",
                    len: d.len(),
                })?;
                Identity::Ipv4(a.into())
            }
            id_type::IPV6_ADDR => {
                let a: [u8; 16] = d.try_into().map_err(|_| ParseError::BadLength {
                    what: "ID_IPV6_ADDR",
                    len: d.len(),
                })?;
                Identity::Ipv6(a.into())
            }
            id_type::FQDN => match std::str::from_utf8(d) {
                Ok(s) => Identity::Fqdn(s.to_string()),
                Err(_) => return invalid("ID_FQDN", "not UTF-8"),
            },
            id_type::RFC822_ADDR => match std::str::from_utf8(d) {
                Ok(s) => Identity::Rfc822(s.to_string()),
                Err(_) => return invalid("ID_RFC822_ADDR", "not UTF-8"),
            },
            id_type::DER_ASN1_DN => Identity::DerDn(d.to_vec()),
            id_type::KEY_ID => Identity::KeyId(d.to_vec()),
            t => Identity::Other(t, d.to_vec()),
        })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Ipv4(a) => write!(f, "{a}"),
            Identity::Ipv6(a) => write!(f, "{a}"),
            Identity::Fqdn(s) => write!(f, "{s}"),
            Identity::Rfc822(s) => write!(f, "{s}"),
            // strongSwan's notation: C=CH, O=polytun, CN=moon
            Identity::DerDn(b) => match crate::cert::dn_to_string(b) {
                Some(s) => write!(f, "{s}"),
                None => write!(f, "dn:{}", hex(b)),
            },
            Identity::KeyId(b) => write!(f, "keyid:{}", hex(b)),
            Identity::Other(t, b) => write!(f, "id{t}:{}", hex(b)),
        }
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Notify payload (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub ntype: u16,
    pub data: Vec<u8>,
}

impl Notify {
    pub fn new(ntype: u16, data: Vec<u8>) -> Notify {
        Notify {
            protocol: 0,
            spi: Vec::new(),
            ntype,
            data,
        }
    }
    pub fn is_error(&self) -> bool {
        self.ntype < 16384
    }
}

/// Delete payload (§3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub protocol: u8,
    pub spi_size: u8,
    pub spis: Vec<Vec<u8>>,
}

/// A traffic selector (§3.13.1), IPv4 or IPv6 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// 0: any protocol.
    pub ip_proto: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: IpAddr,
    pub end: IpAddr,
}

/// Configuration attribute (§3.15.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfgAttr {
    pub atype: u16,
    pub value: Vec<u8>,
}

/// Configuration payload (§3.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPayload {
    /// 1 CFG_REQUEST, 2 CFG_REPLY, 3 CFG_SET, 4 CFG_ACK.
    pub cfg_type: u8,
    pub attrs: Vec<CfgAttr>,
}

/// A typed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Sa(Vec<Proposal>),
    Ke {
        group: u16,
        data: Vec<u8>,
    },
    IdI(Identity),
    IdR(Identity),
    Cert {
        encoding: u8,
        data: Vec<u8>,
    },
    CertReq {
        encoding: u8,
        data: Vec<u8>,
    },
    Auth {
        method: u8,
        data: Vec<u8>,
    },
    Nonce(Vec<u8>),
    Notify(Notify),
    Delete(Delete),
    VendorId(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    /// Encrypted and authenticated payload: `first_inner` is the type of
    /// the first payload inside, `body` is IV | ciphertext | ICV.
    Sk {
        first_inner: u8,
        body: Vec<u8>,
    },
    /// Encrypted fragment (RFC 7383), kept raw.
    Skf {
        first_inner: u8,
        body: Vec<u8>,
    },
    Cp(ConfigPayload),
    /// A non-critical payload of a type we do not know (skipped), or EAP.
    Unknown {
        ptype: u8,
        body: Vec<u8>,
    },
}

impl Payload {
    pub fn ptype(&self) -> u8 {
        match self {
            Payload::Sa(_) => pt::SA,
            Payload::Ke { .. } => pt::KE,
            Payload::IdI(_) => pt::IDI,
            Payload::IdR(_) => pt::IDR,
            Payload::Cert { .. } => pt::CERT,
            Payload::CertReq { .. } => pt::CERTREQ,
            Payload::Auth { .. } => pt::AUTH,
            Payload::Nonce(_) => pt::NONCE,
            Payload::Notify(_) => pt::NOTIFY,
            Payload::Delete(_) => pt::DELETE,
            Payload::VendorId(_) => pt::VENDOR,
            Payload::TsI(_) => pt::TSI,
            Payload::TsR(_) => pt::TSR,
            Payload::Sk { .. } => pt::SK,
            Payload::Skf { .. } => pt::SKF,
            Payload::Cp(_) => pt::CP,
            Payload::Unknown { ptype, .. } => *ptype,
        }
    }

    /// Parses the body of a payload of type `ptype` (after the generic header).
    pub fn parse_body(ptype: u8, b: &[u8], next: u8) -> Result<Payload> {
        Ok(match ptype {
            pt::SA => Payload::Sa(parse_sa(b)?),
            pt::KE => {
                need("KE payload", b, 4)?;
                Payload::Ke {
                    group: be16(b),
                    data: b[4..].to_vec(),
                }
            }
            pt::IDI => Payload::IdI(Identity::parse_body(b)?),
            pt::IDR => Payload::IdR(Identity::parse_body(b)?),
            pt::CERT | pt::CERTREQ => {
                need("CERT payload", b, 1)?;
                let (encoding, data) = (b[0], b[1..].to_vec());
                if ptype == pt::CERT {
                    Payload::Cert { encoding, data }
                } else {
                    Payload::CertReq { encoding, data }
                }
            }
            pt::AUTH => {
                need("AUTH payload", b, 4)?;
                Payload::Auth {
                    method: b[0],
                    data: b[4..].to_vec(),
                }
            }
            pt::NONCE => {
                if b.len() < 16 || b.len() > 256 {
                    return Err(ParseError::BadLength {
                        what: "Nonce",
                        len: b.len(),
                    });
                }
                Payload::Nonce(b.to_vec())
            }
            pt::NOTIFY => {
                need("Notify payload", b, 4)?;
                let spi_size = b[1] as usize;
                need("Notify SPI", b, 4 + spi_size)?;
                Payload::Notify(Notify {
                    protocol: b[0],
                    ntype: be16(&b[2..]),
                    spi: b[4..4 + spi_size].to_vec(),
                    data: b[4 + spi_size..].to_vec(),
                })
            }
            pt::DELETE => {
                need("Delete payload", b, 4)?;
                let (protocol, spi_size, n) = (b[0], b[1], be16(&b[2..]) as usize);
                let sz = spi_size as usize;
                let total = n.checked_mul(sz).ok_or(ParseError::BadLength {
                    what: "Delete",
                    len: n,
                })?;
                if b.len() != 4 + total || (sz == 0 && n != 0) {
                    return Err(ParseError::BadLength {
                        what: "Delete",
                        len: b.len(),
                    });
                }
                let spis = if sz == 0 {
                    Vec::new()
                } else {
                    b[4..].chunks(sz).map(|c| c.to_vec()).collect()
                };
                Payload::Delete(Delete {
                    protocol,
                    spi_size,
                    spis,
                })
            }
            pt::VENDOR => Payload::VendorId(b.to_vec()),
            pt::TSI => Payload::TsI(parse_ts(b)?),
            pt::TSR => Payload::TsR(parse_ts(b)?),
            pt::SK => Payload::Sk {
                first_inner: next,
                body: b.to_vec(),
            },
            pt::SKF => Payload::Skf {
                first_inner: next,
                body: b.to_vec(),
            },
            pt::CP => {
                need("CP payload", b, 4)?;
                let mut attrs = Vec::new();
                let mut r = &b[4..];
                while !r.is_empty() {
                    need("CP attribute", r, 4)?;
                    let atype = be16(r) & 0x7fff;
                    let len = be16(&r[2..]) as usize;
                    need("CP attribute value", r, 4 + len)?;
                    attrs.push(CfgAttr {
                        atype,
                        value: r[4..4 + len].to_vec(),
                    });
                    r = &r[4 + len..];
                }
                Payload::Cp(ConfigPayload {
                    cfg_type: b[0],
                    attrs,
                })
            }
            _ => Payload::Unknown {
                ptype,
                body: b.to_vec(),
            },
        })
    }

    /// Writes the body (without the generic header).
    pub fn write_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => write_sa(props, out),
            Payload::Ke { group, data } => {
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Cert { encoding, data } | Payload::CertReq { encoding, data } => {
                out.push(*encoding);
                out.extend_from_slice(data);
            }
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[*method, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(n) | Payload::VendorId(n) => out.extend_from_slice(n),
            Payload::Notify(n) => {
                out.push(n.protocol);
                out.push(n.spi.len() as u8);
                out.extend_from_slice(&n.ntype.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.push(d.protocol);
                out.push(d.spi_size);
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                for s in &d.spis {
                    out.extend_from_slice(s);
                }
            }
            Payload::TsI(ts) | Payload::TsR(ts) => write_ts(ts, out),
            Payload::Sk { body, .. } | Payload::Skf { body, .. } => out.extend_from_slice(body),
            Payload::Cp(cp) => {
                out.extend_from_slice(&[cp.cfg_type, 0, 0, 0]);
                for a in &cp.attrs {
                    out.extend_from_slice(&a.atype.to_be_bytes());
                    out.extend_from_slice(&(a.value.len() as u16).to_be_bytes());
                    out.extend_from_slice(&a.value);
                }
            }
            Payload::Unknown { body, .. } => out.extend_from_slice(body),
        }
    }
}

fn parse_sa(mut b: &[u8]) -> Result<Vec<Proposal>> {
    let mut props = Vec::new();
    if b.is_empty() {
        return invalid("SA payload", "no proposals");
    }
    while !b.is_empty() {
        need("proposal", b, 8)?;
        let last = b[0];
        let len = be16(&b[2..]) as usize;
        if len < 8 || len > b.len() {
            return Err(ParseError::BadLength {
                what: "proposal",
                len,
            });
        }
        let p = &b[..len];
        let (num, protocol, spi_size, ntrans) = (p[4], p[5], p[6] as usize, p[7] as usize);
        need("proposal SPI", p, 8 + spi_size)?;
        let spi = p[8..8 + spi_size].to_vec();
        let mut t = &p[8 + spi_size..];
        let mut transforms = Vec::new();
        for i in 0..ntrans {
            need("transform", t, 8)?;
            let tlast = t[0];
            let tlen = be16(&t[2..]) as usize;
            if tlen < 8 || tlen > t.len() {
                return Err(ParseError::BadLength {
                    what: "transform",
                    len: tlen,
                });
            }
            let mut key_len = None;
            let mut a = &t[8..tlen];
            while !a.is_empty() {
                need("transform attribute", a, 4)?;
                let at = be16(a);
                if at & 0x8000 != 0 {
                    if at & 0x7fff == ATTR_KEY_LENGTH {
                        key_len = Some(be16(&a[2..]));
                    }
                    a = &a[4..];
                } else {
                    let alen = be16(&a[2..]) as usize;
                    need("transform attribute value", a, 4 + alen)?;
                    a = &a[4 + alen..];
                }
            }
            transforms.push(Transform {
                ttype: t[4],
                id: be16(&t[6..]),
                key_len,
            });
            t = &t[tlen..];
            let is_last = i + 1 == ntrans;
            if (tlast == 0) != is_last {
                return invalid("transform", "last-substruc flag disagrees with count");
            }
        }
        if !t.is_empty() {
            return invalid("proposal", "trailing bytes after transforms");
        }
        props.push(Proposal {
            num,
            protocol,
            spi,
            transforms,
        });
        b = &b[len..];
        if (last == 0) != b.is_empty() {
            return invalid("proposal", "last-substruc flag disagrees with length");
        }
        if props.len() > 64 {
            return Err(ParseError::TooManyPayloads);
        }
    }
    Ok(props)
}

fn write_sa(props: &[Proposal], out: &mut Vec<u8>) {
    for (i, p) in props.iter().enumerate() {
        let start = out.len();
        out.push(if i + 1 == props.len() { 0 } else { 2 });
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        out.push(p.num);
        out.push(p.protocol);
        out.push(p.spi.len() as u8);
        out.push(p.transforms.len() as u8);
        out.extend_from_slice(&p.spi);
        for (j, t) in p.transforms.iter().enumerate() {
            out.push(if j + 1 == p.transforms.len() { 0 } else { 3 });
            out.push(0);
            let len: u16 = if t.key_len.is_some() { 12 } else { 8 };
            out.extend_from_slice(&len.to_be_bytes());
            out.push(t.ttype);
            out.push(0);
            out.extend_from_slice(&t.id.to_be_bytes());
            if let Some(k) = t.key_len {
                out.extend_from_slice(&(0x8000 | ATTR_KEY_LENGTH).to_be_bytes());
                out.extend_from_slice(&k.to_be_bytes());
            }
        }
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn parse_ts(b: &[u8]) -> Result<Vec<TrafficSelector>> {
    need("TS payload", b, 4)?;
    let n = b[0] as usize;
    let mut r = &b[4..];
    let mut v = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        need("traffic selector", r, 8)?;
        let (ty, ip_proto, len) = (r[0], r[1], be16(&r[2..]) as usize);
        if len > r.len() {
            return Err(ParseError::BadLength {
                what: "traffic selector",
                len,
            });
        }
        let s = &r[..len];
        let (start, end) = match ty {
            ts_type::IPV4_ADDR_RANGE if len == 16 => {
                let a: [u8; 4] = s[8..12].try_into().unwrap_or_default();
                let e: [u8; 4] = s[12..16].try_into().unwrap_or_default();
                (IpAddr::from(a), IpAddr::from(e))
            }
            ts_type::IPV6_ADDR_RANGE if len == 40 => {
                let a: [u8; 16] = s[8..24].try_into().unwrap_or_default();
                let e: [u8; 16] = s[24..40].try_into().unwrap_or_default();
                (IpAddr::from(a), IpAddr::from(e))
            }
            ts_type::IPV4_ADDR_RANGE | ts_type::IPV6_ADDR_RANGE => {
                return Err(ParseError::BadLength {
                    what: "traffic selector",
                    len,
                })
            }
            _ => return invalid("traffic selector", "unknown TS type"),
        };
        v.push(TrafficSelector {
            ip_proto,
            start_port: be16(&s[4..]),
            end_port: be16(&s[6..]),
            start,
            end,
        });
        r = &r[len..];
    }
    if !r.is_empty() {
        return invalid("TS payload", "trailing bytes");
    }
    Ok(v)
}

fn write_ts(ts: &[TrafficSelector], out: &mut Vec<u8>) {
    out.extend_from_slice(&[ts.len() as u8, 0, 0, 0]);
    for t in ts {
        let (ty, len) = match t.start {
            IpAddr::V4(_) => (ts_type::IPV4_ADDR_RANGE, 16u16),
            IpAddr::V6(_) => (ts_type::IPV6_ADDR_RANGE, 40u16),
        };
        out.push(ty);
        out.push(t.ip_proto);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&t.start_port.to_be_bytes());
        out.extend_from_slice(&t.end_port.to_be_bytes());
        for a in [t.start, t.end] {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
    }
}

/// Parses a payload chain starting with type `first`. Unknown non-critical
/// payloads are kept as [`Payload::Unknown`]; an unknown critical one is an
/// error ([`ParseError::UnsupportedCritical`], answer UNSUPPORTED_CRITICAL_PAYLOAD).
/// An SK/SKF payload ends the chain (its "next payload" names the inner chain).
pub fn parse_chain(first: u8, mut b: &[u8]) -> Result<Vec<Payload>> {
    let mut t = first;
    let mut v = Vec::new();
    while t != pt::NONE {
        need("generic payload header", b, GENERIC_LEN)?;
        let next = b[0];
        let critical = b[1] & 0x80 != 0;
        let len = be16(&b[2..]) as usize;
        if len < GENERIC_LEN || len > b.len() {
            return Err(ParseError::BadLength {
                what: "generic payload",
                len,
            });
        }
        let body = &b[GENERIC_LEN..len];
        let known = matches!(t, pt::SA..=pt::CP | pt::SKF);
        if !known && critical {
            return Err(ParseError::UnsupportedCritical(t));
        }
        v.push(Payload::parse_body(t, body, next)?);
        b = &b[len..];
        if t == pt::SK || t == pt::SKF {
            if !b.is_empty() {
                return Err(ParseError::SkNotLast);
            }
            return Ok(v);
        }
        t = next;
        if v.len() > 256 {
            return Err(ParseError::TooManyPayloads);
        }
    }
    if !b.is_empty() {
        return invalid("payload chain", "trailing bytes after last payload");
    }
    Ok(v)
}

/// Serializes a payload chain; returns the type of the first payload. An
/// SK payload, if any, must be last; its "next payload" is its `first_inner`.
pub fn write_chain(payloads: &[Payload], out: &mut Vec<u8>) -> u8 {
    for (i, p) in payloads.iter().enumerate() {
        let next = match p {
            Payload::Sk { first_inner, .. } | Payload::Skf { first_inner, .. } => *first_inner,
            _ => payloads.get(i + 1).map_or(pt::NONE, |n| n.ptype()),
        };
        let start = out.len();
        out.extend_from_slice(&[next, 0, 0, 0]);
        p.write_body(out);
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    payloads.first().map_or(pt::NONE, |p| p.ptype())
}

/// A parsed IKE message (outer chain; the SK payload still encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Parses a whole IKE message (without the non-ESP marker).
    pub fn parse(buf: &[u8]) -> Result<Message> {
        if buf.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge);
        }
        let header = Header::parse(buf)?;
        if header.length as usize != buf.len() {
            return Err(ParseError::LengthMismatch {
                header: header.length as usize,
                actual: buf.len(),
            });
        }
        let payloads = parse_chain(header.next_payload, &buf[HEADER_LEN..])?;
        Ok(Message { header, payloads })
    }

    /// Serializes; fixes up `next_payload` and `length` in the header.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let mut h = self.header;
        h.write(&mut out);
        h.next_payload = write_chain(&self.payloads, &mut out);
        h.length = out.len() as u32;
        out[16] = h.next_payload;
        out[24..28].copy_from_slice(&h.length.to_be_bytes());
        out
    }

    pub fn notify(&self, ntype: u16) -> Option<&Notify> {
        find_notify(&self.payloads, ntype)
    }
}

pub fn find_notify(payloads: &[Payload], ntype: u16) -> Option<&Notify> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ntype == ntype => Some(n),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_payloads() {
        let ts = TrafficSelector {
            ip_proto: 0,
            start_port: 0,
            end_port: 65535,
            start: "10.0.0.0".parse().unwrap(),
            end: "10.0.0.255".parse().unwrap(),
        };
        let ts6 = TrafficSelector {
            ip_proto: 17,
            start_port: 53,
            end_port: 53,
            start: "2001:db8::".parse().unwrap(),
            end: "2001:db8::ffff".parse().unwrap(),
        };
        let payloads = vec![
            Payload::Sa(vec![Proposal {
                num: 1,
                protocol: proto::IKE,
                spi: vec![],
                transforms: vec![
                    Transform {
                        ttype: tt::ENCR,
                        id: 20,
                        key_len: Some(256),
                    },
                    Transform {
                        ttype: tt::PRF,
                        id: 5,
                        key_len: None,
                    },
                ],
            }]),
            Payload::Ke {
                group: 31,
                data: vec![7; 32],
            },
            Payload::IdI(Identity::Fqdn("a.example".into())),
            Payload::IdR(Identity::Ipv6("2001:db8::1".parse().unwrap())),
            Payload::Cert {
                encoding: 4,
                data: vec![1, 2, 3],
            },
            Payload::CertReq {
                encoding: 4,
                data: vec![9; 20],
            },
            Payload::Auth {
                method: 2,
                data: vec![5; 32],
            },
            Payload::Nonce(vec![1; 32]),
            Payload::Notify(Notify::new(notify::COOKIE, vec![1, 2, 3])),
            Payload::Delete(Delete {
                protocol: proto::ESP,
                spi_size: 4,
                spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
            }),
            Payload::VendorId(b"polytun".to_vec()),
            Payload::TsI(vec![ts, ts6]),
            Payload::TsR(vec![ts]),
            Payload::Cp(ConfigPayload {
                cfg_type: 1,
                attrs: vec![CfgAttr {
                    atype: 1,
                    value: vec![],
                }],
            }),
            Payload::Sk {
                first_inner: pt::IDI,
                body: vec![0; 40],
            },
        ];
        let m = Message {
            header: Header {
                spi_i: [1; 8],
                spi_r: [2; 8],
                next_payload: 0,
                version: 0x20,
                exchange: exchange::IKE_AUTH,
                flags: flags::INITIATOR,
                message_id: 1,
                length: 0,
            },
            payloads,
        };
        let b = m.to_bytes();
        let p = Message::parse(&b).unwrap();
        assert_eq!(p.payloads, m.payloads);
        assert_eq!(p.header.length as usize, b.len());
    }

    #[test]
    fn critical_unknown_rejected_noncritical_skipped() {
        let mut b = vec![0u8; 28];
        b[17] = 0x20;
        b[16] = 200;
        b.extend_from_slice(&[0, 0x80, 0, 4]);
        let n = b.len() as u32;
        b[24..28].copy_from_slice(&n.to_be_bytes());
        assert_eq!(
            Message::parse(&b),
            Err(ParseError::UnsupportedCritical(200))
        );
        b[29] = 0;
        let m = Message::parse(&b).unwrap();
        assert!(matches!(m.payloads[0], Payload::Unknown { ptype: 200, .. }));
    }

    #[test]
    fn truncations_never_panic() {
        let m = Message {
            header: Header {
                spi_i: [1; 8],
                spi_r: [0; 8],
                next_payload: 0,
                version: 0x20,
                exchange: exchange::IKE_SA_INIT,
                flags: flags::INITIATOR,
                message_id: 0,
                length: 0,
            },
            payloads: vec![
                Payload::Nonce(vec![1; 32]),
                Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, vec![0; 20])),
            ],
        };
        let b = m.to_bytes();
        for n in 0..b.len() {
            let mut c = b[..n].to_vec();
            if c.len() >= 28 {
                c[24..28].copy_from_slice(&(n as u32).to_be_bytes());
            }
            assert!(Message::parse(&c).is_err());
        }
    }
}
