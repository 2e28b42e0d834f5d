#![no_main]
//! Arbitrary Encrypted Fragment payloads (RFC 7383): the SKF header parser,
//! and a sequence of forged fragments fed to the reassembly of one IKE SA.
//! Numbers are checked, nothing forged is stored or reassembled.

use libfuzzer_sys::fuzz_target;
use polytun_ike::crypto::SkKeys;
use polytun_ike::fragment::{parse_skf, FragState};
use polytun_ike::wire::{exchange, flags, pt, Header, Message};
use polytun_ike::EncrAlg;
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, rest)) = parse_skf(data) {
        assert!(h.number >= 1 && h.number <= h.total);
        assert_eq!(rest.len() + 4, data.len());
    }
    let sk = SkKeys {
        encr: EncrAlg::AES256GCM16,
        integ: None,
        sk_e: Zeroizing::new(vec![0x42; 36]),
        sk_a: Zeroizing::new(vec![]),
    };
    let mut st = FragState::default();
    st.enable(1280);
    // each chunk (length-prefixed) is one fragment's SKF body
    let mut r = data;
    let mut i = 0u32;
    while let Some((&len, rest)) = r.split_first() {
        let n = usize::from(len).min(rest.len());
        let (body, tail) = rest.split_at(n);
        r = tail;
        i += 1;
        let header = Header {
            spi_i: [1; 8],
            spi_r: [2; 8],
            next_payload: pt::SKF,
            version: 0x20,
            exchange: exchange::IKE_AUTH,
            flags: if len & 1 == 0 { flags::INITIATOR } else { flags::RESPONSE },
            message_id: u32::from(len >> 6),
            length: 0,
        };
        let mut raw = Vec::new();
        header.write(&mut raw);
        raw.extend_from_slice(&[pt::IDI, 0]);
        raw.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        raw.extend_from_slice(body);
        let total = raw.len() as u32;
        raw[24..28].copy_from_slice(&total.to_be_bytes());
        if let Ok(m) = Message::parse(&raw) {
            assert!(matches!(m.payloads.last(), Some(polytun_ike::wire::Payload::Skf { .. })));
        }
        let res = st.add(&sk, &raw, &header, pt::IDI, body);
        assert!(res.is_err(), "forged fragment {i} accepted");
    }
});
