//! Parses arbitrary bytes as the ESP header (RFC 4303 §2): SPI and
//! sequence number, and the SPI demux with its reserved range.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_esp::{parse_header, spi_of};

fuzz_target!(|data: &[u8]| {
    match parse_header(data) {
        Some(h) => {
            assert!(data.len() >= 8);
            assert_eq!(h.spi.to_be_bytes(), data[..4]);
            assert_eq!(h.seq.to_be_bytes(), data[4..8]);
            assert_eq!(spi_of(data), (h.spi > 255).then_some(h.spi));
        }
        None => {
            assert!(data.len() < 8);
            assert_eq!(spi_of(data), None);
        }
    }
});
