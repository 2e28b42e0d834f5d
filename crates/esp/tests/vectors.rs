//! Known answers: RFC 7634 Appendix A, and a real strongSwan 5.9 session
//! (tests/fixtures/ike-psk.pcap + ike-psk.keys.txt, AES-GCM-16-256 over
//! UDP 4500) decrypted in both directions with KEYMAT derived from SK_d.
mod common;

use common::{hex, open};
use hmac::{Hmac, Mac};
use polytun_core::replay::ReplayError;
use polytun_core::OpenError;
use polytun_esp::{
    classify_udp4500, Direction, EspOpenError, EspSa, NextHeader, SaParams, Transform, Udp4500,
};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::Instant;

/// RFC 7634 Appendix A: ESP with ChaCha20-Poly1305, SPI 0x01020304, seq 5.
#[test]
fn rfc7634_appendix_a() {
    let keymat = hex("80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f
         90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f a0 a1 a2 a3");
    let inner = hex("45 00 00 54 a6 f2 00 00 40 01 e7 78 c6 33 64 05
         c0 00 02 05 08 00 5b 7a 3a 08 00 00 55 3b ec 10
         00 07 36 27 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13
         14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 20 21 22 23
         24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 30 31 32 33
         34 35 36 37");
    let esp = hex("01 02 03 04 00 00 00 05 10 11 12 13 14 15 16 17
         24 03 94 28 b9 7f 41 7e 3c 13 75 3a 4f 05 08 7b
         67 c3 52 e6 a7 fa b1 b9 82 d4 66 ef 40 7a e5 c6
         14 ee 80 99 d5 28 44 eb 61 aa 95 df ab 4c 02 f7
         2a a7 1e 7c 4c 4f 64 c9 be fe 2f ac c6 38 e8 f3
         cb ec 16 3f ac 46 9b 50 27 73 f6 fb 94 e6 64 da
         91 65 b8 28 29 f6 41 e0
         76 aa a8 26 6b 7f b0 f7 b1 1b 36 99 07 e1 ad 43");
    let now = Instant::now();
    let sa = EspSa::new(
        SaParams::new(0x0102_0304, Direction::Inbound, Transform::ChaCha20Poly1305),
        &keymat,
        now,
    )
    .unwrap();
    let (got, o) = open(&sa, now, &esp).unwrap();
    assert_eq!(got, inner);
    assert_eq!(o.seq, 5);
    assert_eq!(o.next_header, NextHeader::Ipv4);
    // Our sender pads the same way (01 02, pad length 2): same length.
    assert_eq!(
        Transform::ChaCha20Poly1305.overhead(inner.len()),
        esp.len() - inner.len()
    );
    let mut bad = esp.clone();
    bad[100] ^= 1;
    let sa2 = EspSa::new(
        SaParams::new(0x0102_0304, Direction::Inbound, Transform::ChaCha20Poly1305),
        &keymat,
        now,
    )
    .unwrap();
    assert_eq!(
        open(&sa2, now, &bad).unwrap_err(),
        EspOpenError::Open(OpenError::Auth)
    );
}

// ---- the strongSwan capture ----

const PCAP: &[u8] = include_bytes!("fixtures/ike-psk.pcap");
const KEYS: &str = include_str!("fixtures/ike-psk.keys.txt");

struct Datagram {
    src: [u8; 4],
    dst: [u8; 4],
    dport: u16,
    payload: Vec<u8>,
}

fn u16be(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Classic pcap (either byte order), Ethernet or Linux cooked (SLL) link
/// layer, IPv4, UDP.
fn udp_datagrams(pcap: &[u8]) -> Vec<Datagram> {
    let magic = u32::from_le_bytes(pcap[..4].try_into().unwrap());
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => panic!("not a classic pcap: {m:#x}"),
    };
    let rd32 = |b: &[u8]| {
        let a: [u8; 4] = b[..4].try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = rd32(&pcap[20..24]);
    let link_len = match linktype {
        1 => 14,   // Ethernet
        113 => 16, // Linux cooked v1
        t => panic!("unsupported link type {t}"),
    };
    let mut out = vec![];
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = rd32(&pcap[off + 8..off + 12]) as usize;
        let pkt = &pcap[off + 16..off + 16 + incl];
        off += 16 + incl;
        let ethertype = u16be(&pkt[link_len - 2..link_len]);
        if ethertype != 0x0800 {
            continue;
        }
        let ip = &pkt[link_len..];
        let ihl = usize::from(ip[0] & 15) * 4;
        let total = usize::from(u16be(&ip[2..4]));
        if ip[9] != 17 {
            continue;
        }
        let udp = &ip[ihl..total];
        out.push(Datagram {
            src: ip[12..16].try_into().unwrap(),
            dst: ip[16..20].try_into().unwrap(),
            dport: u16be(&udp[2..4]),
            payload: udp[8..usize::from(u16be(&udp[4..6]))].to_vec(),
        });
    }
    out
}

fn keys_file() -> BTreeMap<String, String> {
    KEYS.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.split_whitespace().next()?.to_string()))
        })
        .collect()
}

/// (spi, src, key) of the `esp_spi=` lines.
fn esp_keys() -> Vec<(u32, String, Vec<u8>)> {
    KEYS.lines()
        .filter(|l| l.starts_with("esp_spi="))
        .map(|l| {
            let f: BTreeMap<_, _> = l
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect();
            (
                u32::from_str_radix(f["esp_spi"], 16).unwrap(),
                f["src"].to_string(),
                hex(f["key"]),
            )
        })
        .collect()
}

fn prf(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// prf+ (RFC 7296 §2.13).
fn prf_plus(key: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![];
    let mut t = vec![];
    let mut i = 1u8;
    while out.len() < len {
        let mut input = t.clone();
        input.extend_from_slice(seed);
        input.push(i);
        t = prf(key, &input);
        out.extend_from_slice(&t);
        i += 1;
    }
    out.truncate(len);
    out
}

/// The Nonce payload (type 40) of an IKE_SA_INIT message (cleartext).
fn ike_nonce(msg: &[u8]) -> Vec<u8> {
    assert_eq!(msg[18], 34, "IKE_SA_INIT");
    let mut next = msg[16];
    let mut rest = &msg[28..];
    while next != 0 {
        let len = usize::from(u16be(&rest[2..4]));
        if next == 40 {
            return rest[4..len].to_vec();
        }
        next = rest[0];
        rest = &rest[len..];
    }
    panic!("no nonce payload");
}

fn ip_checksum_ok(b: &[u8]) -> bool {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn strongswan_capture_decrypts_both_directions() {
    let dgrams = udp_datagrams(PCAP);
    let kv = keys_file();

    // IKE_SA_INIT on port 500 (no marker): initiator's request first.
    let inits: Vec<&Datagram> = dgrams
        .iter()
        .filter(|d| d.dport == 500 && d.payload.len() > 28 && d.payload[18] == 34)
        .collect();
    assert_eq!(inits.len(), 2);
    let (req, resp) = (&inits[0], &inits[1]);
    assert_eq!(hex(&kv["ike_spi_i"]), &req.payload[..8]);
    assert_eq!(hex(&kv["ike_spi_r"]), &resp.payload[8..16]);
    let initiator = req.src;
    let mut ni_nr = ike_nonce(&req.payload);
    ni_nr.extend(ike_nonce(&resp.payload));

    // KEYMAT = prf+(SK_d, Ni | Nr) (RFC 7296 §2.17, no PFS): the
    // initiator→responder SA first, then responder→initiator, 36 bytes each
    // for AES-GCM-16-256 (key ‖ salt).
    let t = Transform::AesGcm256;
    let keymat = prf_plus(&hex(&kv["sk_d"]), &ni_nr, 2 * t.keymat_len());
    let (i_to_r, r_to_i) = keymat.split_at(t.keymat_len());
    let now = Instant::now();
    let mut sas = BTreeMap::new();
    for (spi, src, key) in esp_keys() {
        let from_initiator = src == initiator.map(|b| b.to_string()).join(".");
        let derived = if from_initiator { i_to_r } else { r_to_i };
        assert_eq!(derived, &key[..], "derived KEYMAT matches the keys file");
        let sa = EspSa::new(SaParams::new(spi, Direction::Inbound, t), derived, now).unwrap();
        sas.insert(spi, (sa, from_initiator));
    }
    assert_eq!(sas.len(), 2);

    // Every ESP datagram on 4500, classified and opened.
    let mut opened = BTreeMap::<u32, Vec<u64>>::new();
    let mut ike_on_4500 = 0;
    for d in dgrams.iter().filter(|d| d.dport == 4500) {
        let spi = match classify_udp4500(&d.payload) {
            Udp4500::Esp { spi } => spi,
            Udp4500::Ike(msg) => {
                assert_eq!(&msg[..8], &hex(&kv["ike_spi_i"])[..]);
                ike_on_4500 += 1;
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        let (sa, from_initiator) = &sas[&spi];
        let (inner, o) = open(sa, now, &d.payload).expect("captured ESP opens");
        assert_eq!(o.next_header, NextHeader::Ipv4);
        // A valid IPv4 header with a correct checksum, length and ICMP echo.
        assert_eq!(inner[0], 0x45);
        assert_eq!(usize::from(u16be(&inner[2..4])), inner.len());
        assert!(ip_checksum_ok(&inner[..20]), "IPv4 header checksum");
        assert_eq!(inner[9], 1, "ICMP");
        let icmp = &inner[20..];
        assert!(ip_checksum_ok(icmp), "ICMP checksum");
        // Echo requests travel one way, replies the other.
        let echo_type = icmp[0];
        assert!(echo_type == 8 || echo_type == 0);
        assert_eq!(
            echo_type == 8,
            *from_initiator,
            "requests from the initiator"
        );
        // The outer addresses are the gateways, the inner ones are not.
        assert_ne!(&inner[12..16], &d.src);
        assert_ne!(&inner[16..20], &d.dst);
        // strongSwan's IV is seq XOR a random value, not seq: the receiver
        // must take the nonce from the packet (core's open_nonce).
        assert_ne!(&d.payload[8..16], &o.seq.to_be_bytes());
        opened.entry(spi).or_default().push(o.seq);
        // Replaying the captured packet is refused.
        assert!(matches!(
            open(sa, now, &d.payload),
            Err(EspOpenError::Open(OpenError::Replay(
                ReplayError::Duplicate(_)
            )))
        ));
    }
    assert_eq!(ike_on_4500, 2, "IKE_AUTH request and response");
    assert_eq!(opened.len(), 2, "both directions");
    for seqs in opened.values() {
        assert!(seqs.len() >= 3);
        assert_eq!(*seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
}
