#![no_main]
//! Parses arbitrary bytes as the fixed IKE header (RFC 7296 §3.1); what
//! parses re-encodes to the same 28 bytes.

use libfuzzer_sys::fuzz_target;
use polytun_ike::wire::{Header, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(&out[..], &data[..HEADER_LEN]);
        assert_eq!(h.version >> 4, 2);
    }
});
