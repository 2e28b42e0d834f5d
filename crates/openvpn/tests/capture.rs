//! Parses every packet of a real OpenVPN 2.6.14 UDP session start with
//! tls-crypt (captured on the server's veth, see fixtures/README).
//!
//! The tls-crypt key of that session was generated into a temporary folder
//! at run time and deleted, so the encrypted part of the control packets
//! cannot be unwrapped; what is checked is everything in the clear and
//! the encrypted lengths against the body layout.

use polytun_openvpn::packet::{parse_packet, Opcode, Packet, SessionId};
use polytun_openvpn::wrap::{PID_LONG_LEN, TLS_CRYPT_TAG_LEN};
use std::collections::HashMap;

const PCAP: &[u8] = include_bytes!("fixtures/openvpn-udp-tlscrypt.pcap");

/// (from client?, UDP payload) of every OpenVPN datagram.
fn datagrams() -> Vec<(bool, Vec<u8>)> {
    let magic = u32::from_le_bytes(PCAP[..4].try_into().unwrap());
    let le = magic == 0xA1B2_C3D4 || magic == 0xA1B2_3C4D;
    let rd = |b: &[u8]| {
        let a: [u8; 4] = b.try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = rd(&PCAP[20..24]);
    let mut off = 24;
    let mut out = Vec::new();
    while off + 16 <= PCAP.len() {
        let incl = rd(&PCAP[off + 8..off + 12]) as usize;
        let data = &PCAP[off + 16..off + 16 + incl];
        off += 16 + incl;
        let ip = if linktype == 1 { &data[14..] } else { data };
        assert_eq!(ip[0] >> 4, 4, "IPv4");
        assert_eq!(ip[9], 17, "UDP");
        let ihl = (ip[0] & 15) as usize * 4;
        let udp = &ip[ihl..];
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        let ulen = u16::from_be_bytes([udp[4], udp[5]]) as usize;
        assert_eq!(udp.len(), ulen, "capture not truncated");
        assert!(sport == 1194 || dport == 1194);
        out.push((dport == 1194, udp[8..].to_vec()));
    }
    out
}

#[test]
fn every_packet_of_the_real_session_parses() {
    let pkts = datagrams();
    assert_eq!(pkts.len(), 27);
    let tc_overhead = PID_LONG_LEN + TLS_CRYPT_TAG_LEN;
    let mut sids: HashMap<bool, SessionId> = HashMap::new();
    let mut wrap_pid: HashMap<bool, u32> = HashMap::new();
    let mut wrap_time: HashMap<bool, u32> = HashMap::new();
    let mut data_pid: HashMap<bool, u32> = HashMap::new();
    let mut opcodes = Vec::new();
    for (i, (from_client, p)) in pkts.iter().enumerate() {
        match parse_packet(p).unwrap_or_else(|e| panic!("packet {}: {e}", i + 1)) {
            Packet::Control {
                opcode,
                key_id,
                session_id,
                rest,
            } => {
                opcodes.push(opcode);
                assert_eq!(key_id, 0);
                // One session id per direction, for the whole session.
                assert_eq!(*sids.entry(*from_client).or_insert(session_id), session_id);
                // tls-crypt packet-id: 1, 2, 3, ... per direction; time constant-ish.
                let pid = u32::from_be_bytes(rest[..4].try_into().unwrap());
                let time = u32::from_be_bytes(rest[4..8].try_into().unwrap());
                let prev = wrap_pid.insert(*from_client, pid).unwrap_or(0);
                assert_eq!(pid, prev + 1, "packet {}", i + 1);
                let t0 = *wrap_time.entry(*from_client).or_insert(time);
                assert!(time >= t0 && time - t0 <= 2);
                // The encrypted body: ack count, acks, remote sid, msg id, payload.
                assert!(rest.len() >= tc_overhead);
                let body_len = rest.len() - tc_overhead;
                match opcode {
                    Opcode::HardResetClientV2 => {
                        assert!(*from_client);
                        // no ACK (1) + message id (4), no payload
                        assert_eq!(body_len, 5);
                    }
                    Opcode::HardResetServerV2 => {
                        assert!(!from_client);
                        // one ACK (1 + 4 + 8) + message id (4)
                        assert_eq!(body_len, 17);
                    }
                    Opcode::AckV1 => {
                        // 1 + 4n + 8, 1 <= n <= 8
                        assert_eq!((body_len - 9) % 4, 0, "packet {}", i + 1);
                        let n = (body_len - 9) / 4;
                        assert!((1..=8).contains(&n));
                    }
                    Opcode::ControlV1 => assert!(body_len > 5),
                    other => panic!("unexpected {other}"),
                }
            }
            Packet::DataV2(h) => {
                opcodes.push(Opcode::DataV2);
                assert_eq!(h.peer_id, 0);
                assert_eq!(h.key_id, 0);
                let prev = data_pid.insert(*from_client, h.packet_id).unwrap_or(0);
                assert_eq!(h.packet_id, prev + 1, "data packet-ids count from 1");
                // opcode/peer-id (4) + packet-id (4) + tag (16) + payload
                assert!(p.len() >= 24);
            }
        }
    }
    let count = |o| opcodes.iter().filter(|x| **x == o).count();
    assert_eq!(count(Opcode::HardResetClientV2), 1);
    assert_eq!(count(Opcode::HardResetServerV2), 1);
    assert_eq!(count(Opcode::ControlV1), 8);
    assert_eq!(count(Opcode::AckV1), 4);
    assert_eq!(count(Opcode::DataV2), 13);
    assert_eq!(opcodes[0], Opcode::HardResetClientV2);
    assert_eq!(opcodes[1], Opcode::HardResetServerV2);
    assert_ne!(sids[&true], sids[&false]);
}
