//! P_ACK_V1 bodies (the ACK parser): never panic; a parsed ACK holds 1..=8
//! packet-ids and the peer's session id, re-encodes to the same bytes, and
//! its ids can be applied to the reliability layer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_openvpn::packet::{ControlBody, Opcode, MAX_ACKS};
use polytun_openvpn::reliable::Reliable;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = ControlBody::parse(Opcode::AckV1, data) else {
        return;
    };
    assert!(!body.acks.is_empty() && body.acks.len() <= MAX_ACKS);
    assert!(body.remote_session.is_some() && body.message_id.is_none());
    assert!(body.payload.is_empty());
    let mut out = Vec::new();
    body.encode(&mut out);
    assert_eq!(out, data);
    // ACKs for ids never sent, or sent, change nothing but the send window.
    let mut r = Reliable::default();
    for i in 0..8u8 {
        r.send(Opcode::ControlV1, vec![i]);
    }
    let now = Instant::now();
    while r.poll_transmit(now).is_some() {}
    let before = r.backlog();
    r.on_acks(&body.acks);
    assert!(r.backlog() <= before);
});
