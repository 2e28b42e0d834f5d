//! OpenVPN packet classification, control bodies (ACK arrays) and DATA_V2
//! headers: never panic; what parses re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_openvpn::packet::{parse_packet, ControlBody, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Control { opcode, rest, .. }) = parse_packet(data) {
        if let Ok(body) = ControlBody::parse(opcode, rest) {
            let mut out = Vec::new();
            body.encode(&mut out);
            assert_eq!(out, rest);
        }
    }
    if let Some((&op, rest)) = data.split_first() {
        if let Some(opcode) = polytun_openvpn::packet::Opcode::from_u8(op % 12) {
            let _ = ControlBody::parse(opcode, rest);
        }
    }
});
