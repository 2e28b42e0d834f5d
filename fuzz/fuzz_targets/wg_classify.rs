//! WireGuard message parser: any datagram gives a message or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_wireguard::messages::{classify, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = classify(data) {
        // Parsed messages are self-consistent with the input.
        if let Message::Data(d) = m {
            assert_eq!(d.packet.len(), data.len());
        }
    }
});
