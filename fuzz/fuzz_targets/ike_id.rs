#![no_main]
//! Parses arbitrary bytes as an Identification payload body (RFC 7296 §3.5):
//! IPv4/IPv6 lengths, UTF-8 names; what parses re-encodes to the same bytes.

use libfuzzer_sys::fuzz_target;
use polytun_ike::wire::{pt, Identity, Payload};

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = Identity::parse_body(data) {
        let body = id.body();
        assert_eq!(&body[4..], &data[4..]);
        assert_eq!(body[0], data[0]);
        assert_eq!(Identity::parse_body(&body), Ok(id.clone()));
        let _ = id.to_string();
    }
    for t in [pt::IDI, pt::IDR] {
        let _ = Payload::parse_body(t, data, pt::NONE);
    }
});
