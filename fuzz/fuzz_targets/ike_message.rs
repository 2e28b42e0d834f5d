#![no_main]
//! Parse arbitrary bytes as an IKE message and as a payload chain; whatever
//! parses must re-encode and re-parse to the same value.

use libfuzzer_sys::fuzz_target;
use polytun_ike::wire::{parse_chain, write_chain, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let b = m.to_bytes();
        let again = Message::parse(&b).expect("re-encoded message parses");
        assert_eq!(again.payloads, m.payloads);
    }
    if let Some((&first, rest)) = data.split_first() {
        if let Ok(p) = parse_chain(first, rest) {
            let mut out = Vec::new();
            write_chain(&p, &mut out);
        }
    }
});
