//! A real strongSwan 5.9 IKE_SA_INIT + IKE_AUTH (PSK,
//! aes256gcm16-prfsha256-x25519) with every key of the session logged by the
//! initiator: parse every IKE message, re-derive SKEYSEED and SK_*, decrypt
//! IKE_AUTH, verify both AUTH payloads, derive the CHILD SA KEYMAT and match
//! the ESP keys (and decrypt the ESP packets with them).

use polytun_ike::crypto::{
    child_keymat, ct_eq, psk_auth, DhGroup, EncrAlg, EspTransform, IkeAlgs, IkeKeys, PrfAlg,
};
use polytun_ike::wire::{
    exchange, flags, parse_chain, Header, Identity, Message, Payload, HEADER_LEN,
};
use std::collections::HashMap;

const PCAP: &[u8] = include_bytes!("fixtures/ike-psk.pcap");
const KEYS: &str = include_str!("fixtures/ike-psk.keys.txt");

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn b64(s: &str) -> Vec<u8> {
    let tbl = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = tbl.iter().position(|t| *t == c).unwrap() as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

struct Keys {
    kv: HashMap<String, String>,
    /// (spi, src, key)
    esp: Vec<(String, String, Vec<u8>)>,
}

fn keys() -> Keys {
    let mut kv = HashMap::new();
    let mut esp = Vec::new();
    for line in KEYS.lines() {
        if let Some(rest) = line.strip_prefix("esp_spi=") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let get = |p: &str| {
                f.iter()
                    .find_map(|x| x.strip_prefix(p))
                    .unwrap()
                    .to_string()
            };
            esp.push((f[0].to_string(), get("src="), unhex(&get("key="))));
        } else if let Some((k, v)) = line.split_once('=') {
            kv.insert(
                k.to_string(),
                v.split_whitespace().next().unwrap().to_string(),
            );
        }
    }
    Keys { kv, esp }
}

/// (src ip, sport, dport, UDP payload) of each packet (classic pcap, Ethernet).
fn udp_packets() -> Vec<([u8; 4], u16, u16, Vec<u8>)> {
    assert_eq!(&PCAP[..4], &0xa1b2c3d4u32.to_le_bytes());
    let mut off = 24;
    let mut v = Vec::new();
    while off + 16 <= PCAP.len() {
        let incl = u32::from_le_bytes(PCAP[off + 8..off + 12].try_into().unwrap()) as usize;
        let pkt = &PCAP[off + 16..off + 16 + incl];
        off += 16 + incl;
        let ip = &pkt[14..];
        assert_eq!(ip[9], 17, "UDP");
        let src: [u8; 4] = ip[12..16].try_into().unwrap();
        let udp = &ip[(ip[0] & 15) as usize * 4..];
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        v.push((src, sport, dport, udp[8..].to_vec()));
    }
    v
}

#[test]
fn strongswan_psk_capture_verifies() {
    let k = keys();
    let kv = |n: &str| unhex(&k.kv[n]);
    let mut init = Vec::new();
    let mut auth = Vec::new();
    let mut esp = Vec::new();
    for (src, sport, dport, pl) in udp_packets() {
        let msg = if sport == 4500 || dport == 4500 {
            if pl[..4] != [0, 0, 0, 0] {
                esp.push((src, pl));
                continue;
            }
            pl[4..].to_vec()
        } else {
            pl
        };
        let m = Message::parse(&msg).expect("every IKE message parses");
        // serialization is canonical: re-encoding gives the same bytes
        assert_eq!(m.to_bytes(), msg, "re-encoding is byte-identical");
        match m.header.exchange {
            exchange::IKE_SA_INIT => init.push((m, msg)),
            exchange::IKE_AUTH => auth.push((m, msg)),
            e => panic!("unexpected exchange {e}"),
        }
    }
    assert_eq!(init.len(), 2, "IKE_SA_INIT request and response");
    assert_eq!(auth.len(), 2, "IKE_AUTH request and response");
    assert!(!esp.is_empty(), "ESP packets in the capture");

    let (req, req_bytes) = &init[0];
    let (resp, resp_bytes) = &init[1];
    assert!(!req.header.is_response() && resp.header.is_response());
    let nonce = |m: &Message| {
        m.payloads
            .iter()
            .find_map(|p| match p {
                Payload::Nonce(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap()
    };
    let (ni, nr) = (nonce(req), nonce(resp));
    let (spi_i, spi_r) = (resp.header.spi_i, resp.header.spi_r);
    assert_eq!(spi_i.to_vec(), kv("ike_spi_i"));
    assert_eq!(spi_r.to_vec(), kv("ike_spi_r"));

    // the negotiated proposal is aes256gcm16-prfsha256-x25519
    let chosen = resp
        .payloads
        .iter()
        .find_map(|p| match p {
            Payload::Sa(props) => Some(props.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(chosen.len(), 1);
    let encr = chosen[0]
        .of_type(1)
        .find_map(EncrAlg::from_transform)
        .unwrap();
    assert_eq!(encr, EncrAlg::AES256GCM16);
    let ke_group = |m: &Message| {
        m.payloads
            .iter()
            .find_map(|p| match p {
                Payload::Ke { group, data } => Some((*group, data.len())),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(ke_group(req), (31, 32));
    assert_eq!(ke_group(resp), (31, 32));
    for n in [16388u16, 16389, 16430, 16431] {
        assert!(req.notify(n).is_some(), "request has notify {n}");
    }

    let algs = IkeAlgs {
        encr,
        integ: None,
        prf: PrfAlg::HmacSha256,
        dh: DhGroup::Curve25519,
    };
    let keys = IkeKeys::derive(&algs, &kv("dh_shared_secret"), &ni, &nr, &spi_i, &spi_r);
    assert_eq!(*keys.sk_d, kv("sk_d"));
    assert_eq!(*keys.sk_ei, kv("sk_ei"));
    assert_eq!(*keys.sk_er, kv("sk_er"));
    assert_eq!(*keys.sk_pi, kv("sk_pi"));
    assert_eq!(*keys.sk_pr, kv("sk_pr"));
    assert!(keys.sk_ai.is_empty() && keys.sk_ar.is_empty());

    let psk = b64(&k.kv["psk_base64"]);
    let mut child_spis = Vec::new();
    for (m, bytes) in &auth {
        let from_i = m.header.flags & flags::INITIATOR != 0;
        let sk = keys.sk(&algs, from_i);
        let (first, body) = match m.payloads.last() {
            Some(Payload::Sk { first_inner, body }) => (*first_inner, body),
            _ => panic!("IKE_AUTH carries an SK payload"),
        };
        let aad = &bytes[..HEADER_LEN + 4];
        let plain = sk.open(aad, body).expect("SK payload decrypts");
        let inner = parse_chain(first, &plain).expect("inner payloads parse");
        let id = inner
            .iter()
            .find_map(|p| match p {
                Payload::IdI(i) if from_i => Some(i.clone()),
                Payload::IdR(i) if !from_i => Some(i.clone()),
                _ => None,
            })
            .unwrap();
        let auth_data = inner
            .iter()
            .find_map(|p| match p {
                Payload::Auth { method: 2, data } => Some(data.clone()),
                _ => None,
            })
            .expect("PSK AUTH payload");
        let (real, other_nonce, skp) = if from_i {
            (req_bytes, &nr, &keys.sk_pi)
        } else {
            (resp_bytes, &ni, &keys.sk_pr)
        };
        let want = psk_auth(algs.prf, &psk, real, other_nonce, skp, &id.body());
        assert!(ct_eq(&want, &auth_data), "AUTH of {id} verifies");
        let wrong = psk_auth(algs.prf, b"wrong", real, other_nonce, skp, &id.body());
        assert!(!ct_eq(&wrong, &auth_data));
        assert!(matches!(
            id,
            Identity::Fqdn(_) | Identity::Ipv4(_) | Identity::Rfc822(_)
        ));
        // the CHILD SA proposal (ESP, AES-GCM-256) and its SPI
        for p in &inner {
            if let Payload::Sa(props) = p {
                assert_eq!(props[0].protocol, 3);
                child_spis.push((from_i, props[0].spi.clone()));
            }
        }
        // re-encrypting the inner chain and decrypting it again round-trips
        let h = Header::parse(bytes).unwrap();
        assert_eq!(h.message_id, 1);
    }
    assert_eq!(child_spis.len(), 2);

    // CHILD SA KEYMAT (no PFS): initiator->responder first
    let t = EspTransform {
        encr: EncrAlg::AES256GCM16,
        integ: None,
        esn: false,
    };
    let (i2r, r2i) = child_keymat(algs.prf, &keys.sk_d, &t, None, &ni, &nr);
    assert_eq!(k.esp.len(), 2);
    // The keys file's `src` is the sender of that SA's packets; the
    // initiator (the logging side, pss-a) is 192.0.2.1.
    for (spi, src, key) in &k.esp {
        let want = if src == "192.0.2.1" { &i2r } else { &r2i };
        assert_eq!(&*want.encr, key, "ESP key of SPI {spi}");
        // the SPI was chosen by the receiver of that SA in IKE_AUTH
        let receiver_is_initiator = src != "192.0.2.1";
        assert!(child_spis
            .iter()
            .any(|(fi, s)| *fi == receiver_is_initiator && crate_hex(s) == *spi));
    }

    // decrypt the ESP packets with the derived keys (RFC 4106 / 3948)
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    for (src, pl) in &esp {
        let key = if *src == [192, 0, 2, 1] { &i2r } else { &r2i };
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key.encr[..32]).unwrap();
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&key.encr[32..]);
        nonce[4..].copy_from_slice(&pl[8..16]);
        let mut ct = pl[16..pl.len() - 16].to_vec();
        let tag = aes_gcm::Tag::from_slice(&pl[pl.len() - 16..]);
        cipher
            .decrypt_in_place_detached(&nonce.into(), &pl[..8], &mut ct, tag)
            .expect("ESP packet decrypts with the derived KEYMAT");
        assert_eq!(*ct.last().unwrap(), 4, "next header IPv4");
    }
}

fn crate_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// strongSwan's real IKE_SA_INIT request, fed to our responder: it picks
/// aes256gcm16-prfsha256-x25519 and answers with SA, KE, Nr and NAT-D.
#[test]
fn responder_answers_strongswans_ike_sa_init() {
    use polytun_ike::{Config, Endpoint, Output};
    use std::net::{IpAddr, SocketAddr};
    let (src, sport, _dport, req) = udp_packets().into_iter().next().unwrap();
    let c = Config::psk(
        Identity::Fqdn("b".into()),
        None,
        &b64(&keys().kv["psk_base64"]),
    );
    let mut ep = Endpoint::new(c, IpAddr::from([192, 0, 2, 2]), Box::new(rand_core::OsRng));
    let remote = SocketAddr::new(IpAddr::from(src), sport);
    let now = std::time::Instant::now();
    ep.handle(now, remote, 500, &req).expect("accepted");
    let Some(Output::Transmit { dst, bytes, .. }) = ep.poll_output() else {
        panic!("a response")
    };
    assert_eq!(dst, remote);
    let m = Message::parse(&bytes).unwrap();
    assert!(m.header.is_response() && m.header.spi_r != [0; 8]);
    let ke = m.payloads.iter().find_map(|p| match p {
        Payload::Ke { group, .. } => Some(*group),
        _ => None,
    });
    assert_eq!(ke, Some(31));
    assert!(m.notify(16388).is_some() && m.notify(16389).is_some());
    // a retransmitted request gets the same bytes back
    // strongSwan with kernel-libipsec fakes NAT detection (always UDP-encapsulates)
    assert!(matches!(
        ep.poll_output(),
        Some(Output::Event(polytun_ike::Event::NatDetected {
            remote: true,
            ..
        }))
    ));
    ep.handle(now, remote, 500, &req).unwrap();
    match ep.poll_output() {
        Some(Output::Transmit { bytes: again, .. }) => assert_eq!(again, bytes),
        o => panic!("{o:?}"),
    }
}
