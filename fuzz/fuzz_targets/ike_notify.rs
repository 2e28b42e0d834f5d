#![no_main]
//! Parses arbitrary bytes as the body of the Notify payload with its SPI (§3.10); whatever parses must
//! re-encode to bytes that parse to the same value.

use libfuzzer_sys::fuzz_target;
use polytun_ike::wire::{pt, Payload};

fuzz_target!(|data: &[u8]| {
    for ptype in [pt::NOTIFY] {
        if let Ok(p) = Payload::parse_body(ptype, data, pt::NONE) {
            assert_eq!(p.ptype(), ptype);
            let mut out = Vec::new();
            p.write_body(&mut out);
            let again = Payload::parse_body(ptype, &out, pt::NONE).expect("re-encoded payload parses");
            assert_eq!(again, p);
        }
    }
});
