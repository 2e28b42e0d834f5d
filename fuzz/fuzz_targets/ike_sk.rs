#![no_main]
//! Opens arbitrary bytes as an SK payload (RFC 7296 §3.14) with keys of
//! every IKE cipher: the IV/ICV/padding checks never panic and nothing
//! forged authenticates.

use libfuzzer_sys::fuzz_target;
use polytun_ike::crypto::SkKeys;
use polytun_ike::wire::{pt, Payload, HEADER_LEN};
use polytun_ike::{EncrAlg, IntegAlg};
use zeroize::Zeroizing;

const ALGS: [(EncrAlg, Option<IntegAlg>); 4] = [
    (EncrAlg::AES256GCM16, None),
    (EncrAlg::ChaCha20Poly1305, None),
    (EncrAlg::AES128CBC, Some(IntegAlg::HmacSha256_128)),
    (EncrAlg::AES256CBC, Some(IntegAlg::HmacSha512_256)),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (encr, integ) = ALGS[usize::from(sel) % ALGS.len()];
    let sk = SkKeys {
        encr,
        integ,
        sk_e: Zeroizing::new(vec![0x42; encr.keymat_len()]),
        sk_a: Zeroizing::new(vec![0x24; 64]),
    };
    let split = rest.len().min(HEADER_LEN + 4);
    let (aad, body) = rest.split_at(split);
    assert!(sk.open(aad, body).is_err(), "forged SK payload authenticated");
    if let Ok(p) = Payload::parse_body(pt::SK, body, sel) {
        assert!(matches!(p, Payload::Sk { first_inner, .. } if first_inner == sel));
    }
});
