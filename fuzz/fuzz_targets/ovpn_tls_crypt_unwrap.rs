//! tls-crypt / tls-auth unwrapping of arbitrary bytes never panics and never
//! authenticates a forgery; a wrapped body survives unwrapping.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_openvpn::packet::{Opcode, SessionId};
use polytun_openvpn::static_key::{KeyDirection, StaticKey};
use polytun_openvpn::wrap::{ControlWrap, Digest};

fuzz_target!(|data: &[u8]| {
    let key = StaticKey::from_bytes([0x42; 256]);
    let mut crypt = ControlWrap::tls_crypt(&key, true);
    let mut auth = ControlWrap::tls_auth(&key, KeyDirection::Normal, Digest::Sha256);
    assert!(crypt.unwrap(data).is_err());
    assert!(auth.unwrap(data).is_err());
    let mut client = ControlWrap::tls_crypt(&key, false);
    let w = client
        .wrap(Opcode::ControlV1, 0, SessionId([1; 8]), data, 1)
        .unwrap();
    assert_eq!(crypt.unwrap(&w).unwrap().body, data);
});
