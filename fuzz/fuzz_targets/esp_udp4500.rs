//! Classifying arbitrary datagrams received on UDP port 4500 (RFC 3948).
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_esp::{classify_udp4500, spi_of, Udp4500, NAT_KEEPALIVE, NON_ESP_MARKER};

fuzz_target!(|data: &[u8]| {
    match classify_udp4500(data) {
        Udp4500::Esp { spi } => assert_eq!(spi_of(data), Some(spi)),
        Udp4500::Ike(msg) => {
            assert_eq!(&data[..4], &NON_ESP_MARKER);
            assert_eq!(msg, &data[4..]);
        }
        Udp4500::Keepalive => assert_eq!(data, &NAT_KEEPALIVE),
        Udp4500::Malformed => {}
    }
});
