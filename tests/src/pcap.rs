//! Minimal reader for classic pcap files written by `tcpdump -w` (Ethernet or Linux cooked),
//! returning UDP payloads, so tests can replay real captured datagrams.

/// A captured UDP datagram.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub src: std::net::IpAddr,
    pub sport: u16,
    pub dst: std::net::IpAddr,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// Parse a pcap file and return every IPv4/IPv6 UDP datagram in it.
pub fn udp_datagrams(data: &[u8]) -> Vec<Datagram> {
    let mut out = Vec::new();
    if data.len() < 24 {
        return out;
    }
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        _ => return out,
    };
    let u32at = |b: &[u8], i: usize| {
        let a: [u8; 4] = b[i..i + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = u32at(data, 20);
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32at(data, off + 8) as usize;
        let pkt = &data[off + 16..(off + 16 + incl).min(data.len())];
        off += 16 + incl;
        let (l3, ethertype) = match linktype {
            1 if pkt.len() >= 14 => (&pkt[14..], u16::from_be_bytes([pkt[12], pkt[13]])),
            113 if pkt.len() >= 16 => (&pkt[16..], u16::from_be_bytes([pkt[14], pkt[15]])),
            _ => continue,
        };
        if let Some(d) = parse_ip(l3, ethertype) {
            out.push(d);
        }
    }
    out
}

fn parse_ip(p: &[u8], ethertype: u16) -> Option<Datagram> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let (src, dst, udp) = match ethertype {
        0x0800 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            if p.len() < ihl + 8 || p[9] != 17 {
                return None;
            }
            let s: [u8; 4] = p[12..16].try_into().ok()?;
            let d: [u8; 4] = p[16..20].try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(s)),
                IpAddr::V4(Ipv4Addr::from(d)),
                &p[ihl..],
            )
        }
        0x86dd => {
            if p.len() < 48 || p[6] != 17 {
                return None;
            }
            let s: [u8; 16] = p[8..24].try_into().ok()?;
            let d: [u8; 16] = p[24..40].try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                &p[40..],
            )
        }
        _ => return None,
    };
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let end = len.clamp(8, udp.len());
    Some(Datagram {
        src,
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dst,
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp[8..end].to_vec(),
    })
}
