//! TCP segment and UDP datagram coalescing for gathered TUN writes (GRO
//! without copies).
//!
//! Segments opened in place in a UDP receive buffer are written to the TUN
//! device where they lie: a run of consecutive segments of one TCP flow
//! becomes one `writev` of a `virtio_net_hdr`, the first segment (its
//! headers rewritten for the whole run) and the payloads of the others. The
//! kernel takes it as one GSO super-packet, so the receiving TCP stack sees
//! one large packet per run, as with copying GRO, but no byte is moved in
//! userspace.
//!
//! The rules are the kernel's `tcp_gro_receive` ones, made stricter where
//! that is simpler: same addresses, ports, IP fields that must not change
//! within a flow, identical TCP options (so timestamps too), the next
//! sequence number, only ACK (and PSH on the last segment) set, every
//! segment but the last of the same payload size.
//!
//! With UDP segmentation offload on the device (USO, Linux >= 6.2), runs of
//! datagrams of one UDP flow (same addresses, ports and IP fields, every
//! one but the last of the same size) are written as one
//! `VIRTIO_NET_HDR_GSO_UDP_L4` packet in the same way.
//!
//! A packet joins a run only if its own checksums hold (the IPv4 header's
//! and the TCP or UDP one), as in the kernel's GRO and wireguard-go's: the
//! run is written with one partial checksum that the kernel completes, so
//! a segment corrupted before it was sealed (on the sender's LAN, by a
//! broken NIC offload) would otherwise reach its receiver with a valid
//! checksum and be taken as data. The tunnel authenticates only its own
//! hop; the TCP checksum is the ends'. A packet whose checksum is wrong
//! is written alone and unchanged, for the receiving stack to count and
//! drop, as a router would pass it on.

use crate::tun::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
};
use crate::VIRTIO_NET_HDR_LEN;

const TCP: u8 = 6;
const UDP: u8 = 17;
const FLAG_PSH: u8 = 0x08;
const FLAG_ACK: u8 = 0x10;
/// The largest run: the kernel's GSO segment limit for one virtio write
/// is far above this; 64 keeps the iovec array small.
pub(crate) const MAX_RUN: usize = 64;
const MAX_IP_LEN: usize = 65535;

/// Where the parts of a TCP segment (or UDP datagram) are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    v6: bool,
    /// TCP or UDP.
    proto: u8,
    /// IP header length.
    ip: usize,
    /// IP + TCP (UDP) header length.
    hdr: usize,
    payload: usize,
    /// TCP's sequence number and flags (0 for UDP).
    seq: u32,
    flags: u8,
}

/// A segment that may start or join a run: TCP (or UDP when `udp`), no IP
/// options or IPv6 extension headers, not a fragment, payload; for TCP only
/// ACK/PSH set, for UDP a length field that matches the packet.
fn segment(p: &[u8], udp: bool) -> Option<Segment> {
    let (v6, ip, total, proto) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([p[6], p[7]]) & 0x3fff; // MF + offset
            if ihl != 20 || frag != 0 {
                return None;
            }
            (
                false,
                20,
                usize::from(u16::from_be_bytes([p[2], p[3]])),
                p[9],
            )
        }
        6 if p.len() >= 40 => (
            true,
            40,
            40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
            p[6],
        ),
        _ => return None,
    };
    if total != p.len() {
        return None;
    }
    if proto == UDP && udp {
        if p.len() <= ip + 8
            || usize::from(u16::from_be_bytes([p[ip + 4], p[ip + 5]])) != p.len() - ip
        {
            return None;
        }
        return Some(Segment {
            v6,
            proto,
            ip,
            hdr: ip + 8,
            payload: p.len() - ip - 8,
            seq: 0,
            flags: 0,
        });
    }
    if proto != TCP || p.len() < ip + 20 {
        return None;
    }
    let t = &p[ip..];
    let thl = usize::from(t[12] >> 4) * 4;
    let flags = t[13];
    if thl < 20
        || ip + thl > p.len()
        || flags & !(FLAG_ACK | FLAG_PSH) != 0
        || flags & FLAG_ACK == 0
    {
        return None;
    }
    let payload = p.len() - ip - thl;
    if payload == 0 {
        return None;
    }
    Some(Segment {
        v6,
        proto,
        ip,
        hdr: ip + thl,
        payload,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        flags,
    })
}

/// Whether `q` continues the flow of `p` (first segment `first`) right after
/// `p`'s payload: every header byte equal except the ones a segment changes.
fn continues(p: &[u8], ps: &Segment, q: &[u8], qs: &Segment) -> bool {
    if qs.v6 != ps.v6 || qs.proto != ps.proto || qs.hdr != ps.hdr {
        return false;
    }
    if ps.proto == TCP && qs.seq != ps.seq.wrapping_add(ps.payload as u32) {
        return false;
    }
    let ip_same = if ps.v6 {
        // version, traffic class, flow label; next header, hop limit; addresses
        p[..4] == q[..4] && p[6..40] == q[6..40]
    } else {
        // version/ihl, TOS; flags (DF); TTL, protocol; addresses (not the
        // length, the id or the header checksum)
        p[..2] == q[..2]
            && p[6] & 0xe0 == q[6] & 0xe0
            && p[8..10] == q[8..10]
            && p[12..20] == q[12..20]
    };
    let (pt, qt) = (&p[ps.ip..ps.hdr], &q[qs.ip..qs.hdr]);
    if ps.proto == UDP {
        // ports (not the length or the checksum)
        return ip_same && pt[..4] == qt[..4];
    }
    // ports; ack number, data offset; window; urgent pointer and options
    ip_same
        && pt[..4] == qt[..4]
        && pt[8..13] == qt[8..13]
        && pt[14..16] == qt[14..16]
        && pt[18..] == qt[18..]
}

/// The folded sum of `p`'s pseudo-header (addresses, protocol and an L4
/// length of `l4_len`).
fn pseudo_header(p: &[u8], s: &Segment, l4_len: usize) -> u16 {
    let addrs = if s.v6 { &p[8..40] } else { &p[12..20] };
    tun_rs::checksum(addrs, u64::from(s.proto) + l4_len as u64)
}

/// Writes the IPv4 header checksum of `p`.
fn set_ipv4_header_checksum(p: &mut [u8]) {
    p[10..12].copy_from_slice(&[0, 0]);
    let c = !tun_rs::checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Whether `p`'s own checksums hold: the IPv4 header checksum, and the TCP
/// or UDP checksum over the pseudo-header and the whole segment. A UDP
/// checksum of zero over IPv4 means "none" and holds (coalescing then gives
/// the datagrams one, which says nothing the original did not).
fn checksums_hold(p: &[u8], s: &Segment) -> bool {
    if !s.v6 && tun_rs::checksum(&p[..20], 0) != 0xffff {
        return false;
    }
    let t = s.ip;
    if s.proto == UDP && !s.v6 && p[t + 6..t + 8] == [0, 0] {
        return true;
    }
    let pseudo = pseudo_header(p, s, p.len() - t);
    tun_rs::checksum(&p[t..], u64::from(pseudo)) == 0xffff
}

/// A run of packets to write as one: `first..end` of the caller's list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub end: usize,
    /// IP + TCP (UDP) header length of every packet of the run (0: not a
    /// segment).
    pub hdr: usize,
    /// Payload bytes of the whole run.
    pub payload: usize,
    /// TCP flags of the last segment.
    pub last_flags: u8,
}

/// The run of packets that starts at `first` (at least that one packet);
/// each packet is parsed once. `packet(i)` is packet `i`'s IP packet; UDP
/// datagrams form runs only with `udp` (the device has USO).
pub(crate) fn run<'a>(
    n: usize,
    first: usize,
    udp: bool,
    packet: impl Fn(usize) -> &'a [u8],
) -> Run {
    let p = packet(first);
    let Some(s0) = segment(p, udp) else {
        return Run {
            end: first + 1,
            hdr: 0,
            payload: 0,
            last_flags: 0,
        };
    };
    let mut total = p.len();
    let (mut prev, mut ps) = (p, s0);
    let mut end = first + 1;
    while end < n && end - first < MAX_RUN {
        // After a short segment or a PSH the run is over.
        if ps.payload != s0.payload || ps.flags & FLAG_PSH != 0 {
            break;
        }
        let q = packet(end);
        let Some(qs) = segment(q, udp) else { break };
        if qs.payload > s0.payload
            || total + qs.payload > MAX_IP_LEN
            || !continues(prev, &ps, q, &qs)
        {
            break;
        }
        // Checksums are checked only where a run forms (a lone packet is
        // written as it is and the kernel checks it): the first packet's
        // once, when a second would join it.
        if (end == first + 1 && !checksums_hold(p, &s0)) || !checksums_hold(q, &qs) {
            break;
        }
        total += qs.payload;
        (prev, ps) = (q, qs);
        end += 1;
    }
    Run {
        end,
        hdr: s0.hdr,
        payload: total - s0.hdr,
        last_flags: ps.flags,
    }
}

/// Rewrite the first segment (`first`, packet `first_index`) of `run` into
/// the header of one GSO super-packet, and fill `vnet` for it. For a run of
/// one, `vnet` says "plain packet" and nothing else changes.
pub(crate) fn prepare_run(
    vnet: &mut [u8; VIRTIO_NET_HDR_LEN],
    first: &mut [u8],
    first_index: usize,
    run: &Run,
) {
    *vnet = [0; VIRTIO_NET_HDR_LEN];
    vnet[1] = VIRTIO_NET_HDR_GSO_NONE;
    if run.end - first_index < 2 {
        return;
    }
    let Some(s) = segment(first, true) else {
        return;
    };
    let (payload, last_flags) = (run.payload, run.last_flags);
    let len = s.hdr + payload;
    let t = s.ip;
    if s.v6 {
        first[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    } else {
        first[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        set_ipv4_header_checksum(first);
    }
    // CHECKSUM_PARTIAL: the checksum field holds the folded pseudo-header
    // sum and the kernel adds the transport header and payload from
    // csum_start.
    let l4_len = len - t;
    let pseudo = pseudo_header(first, &s, l4_len);
    let csum_at = if s.proto == UDP {
        // the run's UDP length (the kernel gives each datagram its own)
        first[t + 4..t + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        6
    } else {
        first[t + 13] |= last_flags & FLAG_PSH;
        16
    };
    first[t + csum_at..t + csum_at + 2].copy_from_slice(&pseudo.to_be_bytes());
    vnet[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    vnet[1] = match (s.proto, s.v6) {
        (UDP, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
        (_, true) => VIRTIO_NET_HDR_GSO_TCPV6,
        (_, false) => VIRTIO_NET_HDR_GSO_TCPV4,
    };
    vnet[2..4].copy_from_slice(&(s.hdr as u16).to_le_bytes());
    vnet[4..6].copy_from_slice(&(s.payload as u16).to_le_bytes());
    vnet[6..8].copy_from_slice(&(t as u16).to_le_bytes());
    vnet[8..10].copy_from_slice(&(csum_at as u16).to_le_bytes());
}

/// Gives `p` (parsed as `s`) valid checksums, for the fuzz target.
fn set_checksums(p: &mut [u8], s: &Segment) {
    if !s.v6 {
        set_ipv4_header_checksum(p);
    }
    let t = s.ip;
    let at = t + if s.proto == UDP { 6 } else { 16 };
    p[at..at + 2].copy_from_slice(&[0, 0]);
    let pseudo = pseudo_header(p, s, p.len() - t);
    let c = match !tun_rs::checksum(&p[t..], u64::from(pseudo)) {
        0 if s.proto == UDP => 0xffff,
        c => c,
    };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// For the fuzz target: split `packets` into runs and prepare each, as
/// `Tun::send_gathered` does, checking what the writer relies on. Three
/// packets in four get valid checksums first, so that runs form; the
/// fourth keeps the fuzzer's.
#[doc(hidden)]
pub fn fuzz_runs(packets: &mut [Vec<u8>]) {
    for (k, p) in packets.iter_mut().enumerate() {
        if let Some(s) = segment(p, true).filter(|_| k % 4 != 3) {
            set_checksums(p, &s);
        }
    }
    let n = packets.len();
    let mut i = 0;
    while i < n {
        let r = run(n, i, true, |k| &packets[k]);
        let end = r.end;
        assert!(
            end > i && end <= n && end - i <= MAX_RUN,
            "run {i}..{end} of {n}"
        );
        assert!(
            end - i == 1
                || packets[i..end]
                    .iter()
                    .all(|p| segment(p, true).is_some_and(|s| checksums_hold(p, &s))),
            "a run {i}..{end} with a wrong checksum"
        );
        let rest: usize = packets[i + 1..end].iter().map(|p| p.len() - r.hdr).sum();
        let mut vnet = [0u8; VIRTIO_NET_HDR_LEN];
        let first_len = packets[i].len();
        prepare_run(&mut vnet, &mut packets[i], i, &r);
        if end - i > 1 {
            assert_eq!(r.payload, first_len - r.hdr + rest, "payload of the run");
            assert!(
                r.hdr + r.payload <= MAX_IP_LEN,
                "run of {} bytes",
                r.hdr + r.payload
            );
            assert_ne!(vnet[1], VIRTIO_NET_HDR_GSO_NONE);
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP segment with correct checksums.
    pub(crate) fn seg4(seq: u32, payload: &[u8], flags: u8, ts: u32) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 32];
        p[0] = 0x45;
        let len = (p.len() + payload.len()) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[4..6].copy_from_slice(&seq.to_be_bytes()[2..]); // id varies
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = TCP;
        p[12..16].copy_from_slice(&[198, 51, 100, 1]);
        p[16..20].copy_from_slice(&[198, 51, 100, 2]);
        let c = !tun_rs::checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&7u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        // NOP NOP timestamps
        t[20..24].copy_from_slice(&[1, 1, 8, 10]);
        t[24..28].copy_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(payload);
        fix_tcp_checksum(&mut p);
        p
    }

    fn fix_tcp_checksum(p: &mut [u8]) {
        let tcp_len = (p.len() - 20) as u64;
        p[36..38].copy_from_slice(&[0, 0]);
        let pseudo = tun_rs::checksum(&p[12..20], u64::from(TCP) + tcp_len);
        let c = !tun_rs::checksum(&p[20..], u64::from(pseudo));
        p[36..38].copy_from_slice(&c.to_be_bytes());
    }

    fn run_of(pkts: &[Vec<u8>]) -> usize {
        run(pkts.len(), 0, true, |i| &pkts[i]).end
    }

    fn payload_of(p: &[u8]) -> &[u8] {
        &p[segment(p, true).expect("a segment").hdr..]
    }

    /// flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
    fn vnet_fields(v: &[u8; VIRTIO_NET_HDR_LEN]) -> (u8, u8, u16, u16, u16, u16) {
        let le = |i: usize| u16::from_le_bytes([v[i], v[i + 1]]);
        (v[0], v[1], le(2), le(4), le(6), le(8))
    }

    /// The packet the kernel gets for a run: the prepared first packet's
    /// `hdr` header bytes and every packet's payload; its IPv4 length and
    /// header checksum checked.
    fn super_packet(first: &[u8], hdr: usize, pkts: &[Vec<u8>]) -> Vec<u8> {
        let mut whole = first[..hdr].to_vec();
        for p in pkts {
            whole.extend_from_slice(payload_of(p));
        }
        assert_eq!(
            usize::from(u16::from_be_bytes([whole[2], whole[3]])),
            whole.len()
        );
        assert_eq!(
            tun_rs::checksum(&whole[..20], 0),
            0xffff,
            "IPv4 header checksum"
        );
        whole
    }

    #[test]
    fn consecutive_segments_of_one_flow_form_a_run() {
        let a = seg4(1000, &[1; 100], FLAG_ACK, 5);
        let b = seg4(1100, &[2; 100], FLAG_ACK, 5);
        let c = seg4(1200, &[3; 40], FLAG_ACK | FLAG_PSH, 5);
        let d = seg4(1240, &[4; 100], FLAG_ACK, 5);
        assert_eq!(run_of(&[a.clone(), b.clone(), c.clone(), d.clone()]), 3);
        // A gap in the sequence, other options (timestamp), a SYN, a larger
        // segment after a smaller one: each ends the run.
        let gap = seg4(1101, &[2; 100], FLAG_ACK, 5);
        assert_eq!(run_of(&[a.clone(), gap]), 1);
        let other_ts = seg4(1100, &[2; 100], FLAG_ACK, 6);
        assert_eq!(run_of(&[a.clone(), other_ts]), 1);
        let syn = seg4(1100, &[2; 100], FLAG_ACK | 0x02, 5);
        assert_eq!(run_of(&[a.clone(), syn]), 1);
        let short = seg4(1100, &[2; 50], FLAG_ACK, 5);
        let after_short = seg4(1150, &[2; 50], FLAG_ACK, 5);
        assert_eq!(run_of(&[a.clone(), short, after_short]), 2);
        let bigger = seg4(1100, &[2; 101], FLAG_ACK, 5);
        assert_eq!(run_of(&[a.clone(), bigger]), 1);
        // A pure ACK does not start a run.
        let ack = seg4(1000, &[], FLAG_ACK, 5);
        assert_eq!(run_of(&[ack, a]), 1);
    }

    #[test]
    fn a_run_is_capped_at_64_segments_and_64_kib() {
        let many: Vec<Vec<u8>> = (0..70)
            .map(|i| seg4(i * 100, &[0; 100], FLAG_ACK, 1))
            .collect();
        assert_eq!(run_of(&many), MAX_RUN);
        let big: Vec<Vec<u8>> = (0..60)
            .map(|i| seg4(i * 1400, &[0; 1400], FLAG_ACK, 1))
            .collect();
        let end = run_of(&big);
        assert!(
            52 + 1400 * end <= MAX_IP_LEN && 52 + 1400 * (end + 1) > MAX_IP_LEN,
            "{end}"
        );
    }

    /// The super-packet a run becomes, segmented again by the rules the
    /// kernel applies (headers of the first, payload chunks of gso_size),
    /// gives back the original segments with valid checksums.
    #[test]
    fn prepared_run_is_a_valid_gso_packet() {
        let segs: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                let flags = if i == 2 {
                    FLAG_ACK | FLAG_PSH
                } else {
                    FLAG_ACK
                };
                let len = if i == 2 { 30 } else { 100 };
                seg4(5000 + u32::from(i) * 100, &vec![i + 1; len], flags, 9)
            })
            .collect();
        let r = run(segs.len(), 0, true, |i| &segs[i]);
        assert_eq!(r.end, 3);
        assert_eq!(r.hdr, 52);
        assert_eq!(r.payload, 230);
        assert_eq!(r.last_flags, FLAG_ACK | FLAG_PSH);
        let mut first = segs[0].clone();
        let mut vnet = [0u8; VIRTIO_NET_HDR_LEN];
        prepare_run(&mut vnet, &mut first, 0, &r);
        assert_eq!(
            vnet_fields(&vnet),
            (
                VIRTIO_NET_HDR_F_NEEDS_CSUM,
                VIRTIO_NET_HDR_GSO_TCPV4,
                52,
                100,
                20,
                16
            )
        );
        let mut whole = super_packet(&first, 52, &segs);
        assert_eq!(whole[33] & FLAG_PSH, FLAG_PSH, "PSH of the last segment");
        // Completing the partial checksum (as the kernel does from
        // csum_start) gives a valid TCP checksum for the whole packet.
        let c = !tun_rs::checksum(&whole[20..], 0);
        whole[36..38].copy_from_slice(&c.to_be_bytes());
        let pseudo = tun_rs::checksum(&whole[12..20], u64::from(TCP) + (whole.len() - 20) as u64);
        assert_eq!(tun_rs::checksum(&whole[20..], u64::from(pseudo)), 0xffff);
        // A run of one is written as it is.
        let mut one = segs[0].clone();
        let r1 = run(1, 0, true, |i| &segs[i]);
        prepare_run(&mut vnet, &mut one, 0, &r1);
        assert_eq!(vnet, [0; VIRTIO_NET_HDR_LEN]);
        assert_eq!(one, segs[0]);
    }

    /// Where each run of `pkts` ends, splitting the whole list.
    fn run_ends(pkts: &[Vec<u8>]) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut i = 0;
        while i < pkts.len() {
            i = run(pkts.len(), i, true, |k| &pkts[k]).end;
            ends.push(i);
        }
        ends
    }

    /// An IPv6 TCP segment (no options) with a correct checksum.
    fn seg6(seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 20];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[6] = TCP;
        p[7] = 64;
        p[8..10].copy_from_slice(&[0x20, 0x01]);
        p[10..12].copy_from_slice(&[0x0d, 0xb8]);
        p[23] = 1;
        p[24..26].copy_from_slice(&[0x20, 0x01]);
        p[26..28].copy_from_slice(&[0x0d, 0xb8]);
        p[39] = 2;
        let t = &mut p[40..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = FLAG_ACK;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        p.extend_from_slice(payload);
        let pseudo = tun_rs::checksum(&p[8..40], u64::from(TCP) + (p.len() - 40) as u64);
        let c = !tun_rs::checksum(&p[40..], u64::from(pseudo));
        p[56..58].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// A packet joins a run only with its own checksums right: the run gets
    /// one checksum computed afresh, which would make a corrupted segment
    /// valid. The wrong one is written alone, as it came.
    #[test]
    fn a_packet_with_a_wrong_checksum_is_not_coalesced() {
        let good: Vec<Vec<u8>> = (0..5)
            .map(|i| seg4(1000 + i * 100, &[7; 100], FLAG_ACK, 5))
            .collect();
        assert_eq!(run_ends(&good), [5]);
        // A payload byte changed after the checksum was computed: in the
        // middle, first, last.
        for (bad, ends) in [(2, vec![2, 3, 5]), (0, vec![1, 5]), (4, vec![4, 5])] {
            let mut pkts = good.clone();
            pkts[bad][60] ^= 0x20;
            assert_eq!(run_ends(&pkts), ends, "TCP checksum wrong in {bad}");
        }
        // The IPv4 header checksum (the id changed, which a run ignores).
        let mut pkts = good.clone();
        pkts[1][5] ^= 1;
        assert_eq!(run_ends(&pkts), [1, 2, 5], "IPv4 header checksum");
        // IPv6 has no header checksum; its TCP one is checked all the same.
        let six: Vec<Vec<u8>> = (0..3).map(|i| seg6(i * 100, &[9; 100])).collect();
        assert_eq!(run_ends(&six), [3]);
        let mut bad6 = six.clone();
        bad6[1][70] ^= 0x01;
        assert_eq!(run_ends(&bad6), [1, 2, 3], "IPv6 TCP checksum");
        // UDP: a wrong checksum ends the run; zero over IPv4 is "none".
        let ds: Vec<Vec<u8>> = (0..3).map(|i| dgram4(9, &[3; 200], i)).collect();
        assert_eq!(run_ends(&ds), [3]);
        let mut bad_udp = ds.clone();
        bad_udp[2][100] ^= 0x04;
        assert_eq!(run_ends(&bad_udp), [2, 3], "UDP checksum");
        let mut none = ds.clone();
        for d in &mut none {
            d[26..28].copy_from_slice(&[0, 0]);
        }
        assert_eq!(run_ends(&none), [3], "UDP over IPv4 without a checksum");
    }

    /// An IPv4 UDP datagram 40000 -> `dport` with a correct checksum.
    fn dgram4(dport: u16, payload: &[u8], id: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        let len = (28 + payload.len()) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[8] = 64;
        p[9] = UDP;
        p[12..16].copy_from_slice(&[198, 51, 100, 1]);
        p[16..20].copy_from_slice(&[198, 51, 100, 2]);
        let c = !tun_rs::checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[24..26].copy_from_slice(&(len - 20).to_be_bytes());
        p.extend_from_slice(payload);
        let pseudo = tun_rs::checksum(&p[12..20], u64::from(UDP) + u64::from(len - 20));
        let c = !tun_rs::checksum(&p[20..], u64::from(pseudo));
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn udp_datagrams_of_one_flow_form_a_run_only_with_uso() {
        let a = dgram4(9, &[1; 200], 1);
        let b = dgram4(9, &[2; 200], 2);
        let c = dgram4(9, &[3; 50], 3);
        let d = dgram4(9, &[4; 200], 4);
        let all = [a.clone(), b.clone(), c.clone(), d.clone()];
        assert_eq!(run_of(&all), 3, "a short datagram ends the run");
        assert_eq!(run(all.len(), 0, false, |i| &all[i]).end, 1, "no USO");
        let other_port = dgram4(10, &[2; 200], 2);
        assert_eq!(run_of(&[a.clone(), other_port]), 1);
        let bigger = dgram4(9, &[2; 201], 2);
        assert_eq!(run_of(&[a.clone(), bigger]), 1);
        let mut bad_len = b.clone();
        bad_len[24..26].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(run_of(&[a.clone(), bad_len]), 1);
        // a TCP segment does not join a UDP run
        let tcp = seg4(1000, &[1; 200], FLAG_ACK, 5);
        assert_eq!(run_of(&[a, tcp]), 1);
    }

    /// A UDP run becomes one USO packet: the first datagram's headers for the
    /// whole run and a partial checksum that the kernel completes into a
    /// valid one.
    #[test]
    fn prepared_udp_run_is_a_valid_uso_packet() {
        let ds: Vec<Vec<u8>> = (0..3u8)
            .map(|i| dgram4(9, &vec![i + 1; if i == 2 { 70 } else { 300 }], u16::from(i)))
            .collect();
        let r = run(ds.len(), 0, true, |i| &ds[i]);
        assert_eq!((r.end, r.hdr, r.payload), (3, 28, 670));
        let mut first = ds[0].clone();
        let mut vnet = [0u8; VIRTIO_NET_HDR_LEN];
        prepare_run(&mut vnet, &mut first, 0, &r);
        assert_eq!(
            vnet_fields(&vnet),
            (
                VIRTIO_NET_HDR_F_NEEDS_CSUM,
                VIRTIO_NET_HDR_GSO_UDP_L4,
                28,
                300,
                20,
                6
            )
        );
        let mut whole = super_packet(&first, 28, &ds);
        assert_eq!(
            usize::from(u16::from_be_bytes([whole[24], whole[25]])),
            whole.len() - 20,
            "UDP length of the run"
        );
        let c = !tun_rs::checksum(&whole[20..], 0);
        whole[26..28].copy_from_slice(&c.to_be_bytes());
        let pseudo = tun_rs::checksum(&whole[12..20], u64::from(UDP) + (whole.len() - 20) as u64);
        assert_eq!(tun_rs::checksum(&whole[20..], u64::from(pseudo)), 0xffff);
    }
}
