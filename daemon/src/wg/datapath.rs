//! The WireGuard data path: TUN → seal → UDP ([`Outbound`]) and UDP →
//! open → TUN ([`Inbound`]), one batch per turn; the data-path threads of
//! [`crate::threads`] run the turns ([`Turns`]).
//!
//! Outbound, the TUN reader writes packets into one arena (headroom for
//! the data header, tailroom for padding and tag) and each is sealed in
//! place; a run of datagrams of one size to one endpoint (the last may be
//! shorter) leaves as one UDP GSO `sendmsg` gathered from the slots
//! ([`UdpSocket::send_gathered_now`]), without a copy.
//!
//! Inbound, each datagram of a (GRO-coalesced) UDP read is opened in place
//! in the receive buffer, and the TUN writer gathers the packets from there:
//! runs of TCP segments of one flow leave as one super-packet (GRO) with
//! one `writev`, without a copy in userspace.

use super::state::{Shared, Tables, ToControl};
use crate::datapath::DropCounters;
use crate::datapath::{dst_ip, recv_udp_now, reuse, src_ip, RecvList, TunArena, TunRead};
use polytun_core::record::OpenError;
use polytun_core::{KeyStatus, PacketBatch, PacketBuf};
use polytun_io::{RecvMeta, Tun, UdpSocket, UDP_RECV_BATCH, UDP_RECV_MAX_DATAGRAMS};
use polytun_wireguard::messages::DATA_HEADER_LEN;
use polytun_wireguard::transport::TransportError;
use polytun_wireguard::{classify, Message, PeerId};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLockReadGuard};
use std::time::Instant;

const TAG: usize = 16;
/// Headroom in front of a packet read from the TUN device: the data header.
const TUN_READ_OFFSET: usize = DATA_HEADER_LEN;
const TUN_BATCH: usize = polytun_io::IDEAL_BATCH_SIZE;
const UDP_BUF: usize = 65536;

/// The sealed size of a full-MTU packet: the outbound arena stride, so that
/// sealed full packets lie back to back and a gathered send passes a run of
/// them as one iovec. (WireGuard pads to 16 but never beyond the MTU, so a
/// full packet gets no padding.)
pub fn outbound_stride(mtu: usize) -> usize {
    DATA_HEADER_LEN + mtu + polytun_wireguard::transport::padding_len(mtu, mtu) + TAG
}

/// What a sealed packet adds at most: data header, padding, tag.
const MAX_OVERHEAD: usize = DATA_HEADER_LEN + 15 + TAG;

/// The outbound arena for `mtu`: headroom for the data header, room for a
/// full-MTU payload, tailroom for its padding and tag.
fn outbound_batch(mtu: usize) -> PacketBatch {
    PacketBatch::new(
        TUN_BATCH,
        TUN_READ_OFFSET,
        mtu,
        polytun_wireguard::transport::padding_len(mtu, mtu) + TAG,
    )
}

/// Which tunnels an interface's TUN readers dispatch to.
pub type TunnelSet = Arc<std::sync::RwLock<Vec<Arc<Shared>>>>;

/// The outbound half of the data path: TUN → seal → UDP, one batch a turn.
pub struct Outbound {
    arena: TunArena,
    /// (slot, destination, tunnel) of each sealed packet, in slot order.
    out: Vec<(usize, SocketAddr, usize)>,
    sent_peers: Vec<(usize, PeerId)>,
    expiring: Vec<(usize, PeerId)>,
    errors: u64,
    /// Allocations of the per-turn lists of borrows (see `datapath::reuse`).
    spare_guards: Vec<RwLockReadGuard<'static, Tables>>,
    spare_slices: Vec<IoSlice<'static>>,
}

impl Outbound {
    pub fn new(mtu: usize) -> Self {
        let arena = TunArena::new(mtu, MAX_OVERHEAD, outbound_batch);
        debug_assert_eq!(arena.batch.stride(), outbound_stride(mtu));
        Outbound {
            arena,
            out: Vec::with_capacity(TUN_BATCH),
            sent_peers: Vec::new(),
            expiring: Vec::new(),
            errors: 0,
            spare_guards: Vec::with_capacity(crate::datapath::GUARDS),
            spare_slices: Vec::with_capacity(TUN_BATCH),
        }
    }

    /// Reads one batch from `tun` and sends it; false when nothing was queued.
    pub fn turn(&mut self, tun: &Tun, tunnels: &TunnelSet) -> bool {
        match self.arena.read(tun) {
            TunRead::Packets => {}
            TunRead::Empty => return false,
            TunRead::Retry => return true,
        }
        let set = tunnels.read().unwrap_or_else(|e| e.into_inner());
        self.seal(&set);
        self.send(&set);
        drop(set);
        crate::datapath::hand_over_lone(self.out.len());
        true
    }

    /// Seals every routable packet of the batch in place.
    fn seal(&mut self, set: &[Arc<Shared>]) {
        let now = Instant::now();
        let batch = &mut self.arena.batch;
        self.out.clear();
        self.sent_peers.clear();
        self.expiring.clear();
        let mut guards: Vec<RwLockReadGuard<'_, Tables>> =
            reuse(std::mem::take(&mut self.spare_guards));
        guards.extend(set.iter().map(|s| s.tables()));
        // The previous packet's destination and what it led to: a batch
        // (a super-packet's segments above all) is mostly one flow's.
        let mut last = None;
        for i in 0..batch.len() {
            let Some(dst) = dst_ip(batch.get(i)) else {
                continue;
            };
            let (ti, peer, path, since) = match last {
                Some((d, ti, peer, path, since)) if d == dst => (ti, peer, path, since),
                _ => {
                    let Some((ti, peer)) = guards
                        .iter()
                        .enumerate()
                        .find_map(|(ti, t)| t.routes.lookup(dst).map(|p| (ti, *p)))
                    else {
                        // No peer for this destination: like wg, drop silently.
                        continue;
                    };
                    let path = guards[ti].peers.get(&peer);
                    let since = set[ti].since_epoch(now);
                    last = Some((dst, ti, peer, path, since));
                    (ti, peer, path, since)
                }
            };
            let shared = &set[ti];
            let Some(path) = path else {
                continue;
            };
            let (Some(kp), Some(endpoint)) = (path.sending.as_ref(), path.endpoint) else {
                if shared.stage(peer, batch.get(i)) {
                    let _ = shared
                        .to_control
                        .try_send(ToControl::NeedHandshake { peer });
                }
                continue;
            };
            let size = batch.get(i).len();
            match batch.with_packet(i, |p| kp.seal(now, p)) {
                Ok(status) => {
                    if status == KeyStatus::Expiring && !self.expiring.contains(&(ti, peer)) {
                        self.expiring.push((ti, peer));
                    }
                    self.out.push((i, endpoint, ti));
                    path.stats
                        .tx_bytes
                        .fetch_add(size as u64, Ordering::Relaxed);
                    if !self.sent_peers.contains(&(ti, peer)) && path.stats.activity.sent(since) {
                        self.sent_peers.push((ti, peer));
                    }
                }
                Err(_) => {
                    // Expired or exhausted: never send under it; keep the
                    // packet and ask for a new key.
                    DropCounters::bump(&shared.drops.expired_key);
                    if shared.stage(peer, batch.get(i)) {
                        let _ = shared
                            .to_control
                            .try_send(ToControl::NeedHandshake { peer });
                    }
                }
            }
        }
        self.spare_guards = reuse(guards);
        for &(ti, peer) in &self.expiring {
            let _ = set[ti].to_control.try_send(ToControl::KeyExpiring { peer });
        }
    }

    /// Sends what [`Outbound::seal`] sealed: each run of datagrams of one
    /// size (the last may be shorter) to one endpoint through one socket
    /// leaves gathered from its slots, in GSO sends.
    fn send(&mut self, set: &[Arc<Shared>]) {
        let (out, batch) = (&self.out, &self.arena.batch);
        let mut run: Vec<IoSlice<'_>> = reuse(std::mem::take(&mut self.spare_slices));
        let mut k = 0;
        while k < out.len() {
            let (_, dst, ti) = out[k];
            let j = crate::datapath::equal_size_run(out, k, |&(i, d, t)| {
                (d == dst && t == ti).then(|| batch.get(i))
            });
            run.clear();
            run.extend(
                out[k..j]
                    .iter()
                    .map(|&(i, _, _)| IoSlice::new(batch.get(i))),
            );
            if let Err(e) = set[ti].socket().send_gathered_now(dst, &run) {
                self.errors += 1;
                if self.errors.is_power_of_two() {
                    tracing::debug!("{}: udp send to {dst}: {e}", set[ti].name);
                }
            }
            k = j;
        }
        self.spare_slices = reuse(run);
        for &(ti, peer) in &self.sent_peers {
            let _ = set[ti].to_control.try_send(ToControl::Sent { peer });
        }
    }
}

/// The inbound half of one tunnel's data path: UDP → open → TUN, one
/// receive batch a turn.
pub struct Inbound {
    udp_bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    /// (buffer, start, end) of each datagram opened in place, in buffer order.
    opened: Vec<(usize, usize, usize)>,
    received: Vec<(u32, SocketAddr, bool)>,
    errors: u64,
    /// Allocations of the per-turn lists of borrows (see `datapath::reuse`).
    recv: RecvList,
    spare_packets: Vec<&'static mut [u8]>,
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound {
            udp_bufs: (0..UDP_RECV_BATCH).map(|_| vec![0u8; UDP_BUF]).collect(),
            metas: vec![RecvMeta::default(); UDP_RECV_BATCH],
            opened: Vec::with_capacity(UDP_RECV_MAX_DATAGRAMS),
            received: Vec::new(),
            errors: 0,
            recv: RecvList::new(UDP_RECV_BATCH),
            spare_packets: Vec::with_capacity(UDP_RECV_MAX_DATAGRAMS),
        }
    }
}

impl Inbound {
    /// Receives one batch from `socket` (the tunnel's), opens it and writes
    /// it to `tun`; false when nothing was queued.
    pub fn turn(&mut self, tun: &Tun, shared: &Shared, socket: &UdpSocket) -> bool {
        let Some(n) = recv_udp_now(
            socket,
            &mut self.udp_bufs,
            &mut self.metas,
            &mut self.recv,
            &mut self.errors,
            &shared.name,
        ) else {
            return false;
        };
        self.open(shared, n);
        crate::datapath::write_opened(
            tun,
            &mut self.udp_bufs,
            &self.opened,
            DATA_HEADER_LEN,
            &mut self.errors,
            &shared.name,
            &mut self.spare_packets,
        );
        for &(local_index, src, keepalive) in &self.received {
            let _ = shared.to_control.try_send(ToControl::Received {
                local_index,
                src,
                keepalive,
            });
        }
        crate::datapath::hand_over_lone(self.opened.len());
        true
    }

    /// Opens the `n` received buffers' datagrams in place.
    fn open(&mut self, shared: &Shared, n: usize) {
        let now = Instant::now();
        let since_epoch = shared.since_epoch(now);
        self.received.clear();
        self.opened.clear();
        let tables = shared.tables();
        // The previous datagram's receiver index and what it led to: a
        // batch is mostly one peer's, so most datagrams skip both lookups.
        let mut last = None;
        let mut last_source = None;
        for (i, m) in self.metas[..n].iter().enumerate() {
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let len = m.len.min(UDP_BUF);
            // The dual-stack socket reports IPv4 peers as v4-mapped
            // IPv6; endpoints are kept in their plain form.
            let src = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
            for start in (0..len).step_by(stride.max(1)) {
                let end = (start + stride).min(len);
                let d = &self.udp_bufs[i][start..end];
                let receiver = match classify(d) {
                    Err(_) => {
                        DropCounters::bump(&shared.drops.malformed);
                        continue;
                    }
                    Ok(Message::Data(data)) => data.receiver,
                    Ok(_) => {
                        let handshake = ToControl::Handshake {
                            src,
                            data: d.to_vec(),
                        };
                        if shared.to_control.try_send(handshake).is_err() {
                            DropCounters::bump(&shared.drops.rate_limited);
                        }
                        continue;
                    }
                };
                let (peer, kp, path) = match last {
                    Some((r, peer, kp, path)) if r == receiver => (peer, kp, path),
                    _ => {
                        let Some((peer, kp)) = tables.receivers.get(&receiver) else {
                            DropCounters::bump(&shared.drops.no_session);
                            continue;
                        };
                        let path = tables.peers.get(peer);
                        last = Some((receiver, *peer, kp, path));
                        (*peer, kp, path)
                    }
                };
                // Opened where it lies: the TUN write gathers the packets
                // from the receive buffers.
                let mut p = PacketBuf::new(&mut self.udp_bufs[i][..end], start, end);
                if let Err(e) = kp.open(now, &mut p) {
                    DropCounters::bump(drop_counter(shared, e));
                    continue;
                }
                let keepalive = p.is_empty();
                if !keepalive {
                    // Cryptokey routing: the inner source must be one of
                    // this peer's allowed IPs.
                    let ok = match src_ip(p.as_slice()) {
                        Some(s) if last_source == Some((s, peer)) => true,
                        Some(s) if tables.routes.lookup(s) == Some(&peer) => {
                            last_source = Some((s, peer));
                            true
                        }
                        _ => false,
                    };
                    if !ok {
                        DropCounters::bump(&shared.drops.bad_source);
                        continue;
                    }
                    debug_assert_eq!(p.start(), start + DATA_HEADER_LEN);
                    self.opened.push((i, start, p.start() + p.len()));
                    if let Some(path) = path {
                        path.stats
                            .rx_bytes
                            .fetch_add(p.len() as u64, Ordering::Relaxed);
                    }
                }
                // Roaming and a keypair's first packet are told at once;
                // plain traffic at most every activity::NOTE_INTERVAL.
                let note = match path {
                    Some(path) => {
                        let due = path
                            .stats
                            .activity
                            .received(since_epoch, receiver, keepalive);
                        due || path.endpoint != Some(src)
                    }
                    None => true,
                };
                match self.received.iter_mut().find(|r| r.0 == receiver) {
                    Some(r) => {
                        r.1 = src;
                        r.2 &= keepalive;
                    }
                    None if note => self.received.push((receiver, src, keepalive)),
                    None => {}
                }
            }
        }
    }
}

/// A tunnel's socket as the data-path threads know it.
pub type Receiver = (Arc<Shared>, Arc<UdpSocket>);
pub type Poller = crate::threads::Poller<Receiver>;
pub type DataPath = crate::threads::DataPath<Receiver>;

/// What one WireGuard data-path thread runs.
pub struct Turns {
    outbound: Outbound,
    /// One receive arena for all tunnels: their turns never overlap.
    inbound: Option<Inbound>,
    tunnels: TunnelSet,
}

impl Turns {
    /// The threads (`wg-data-N`) of an interface whose tunnels are `tunnels`.
    pub fn spawn(tun: Arc<Tun>, tunnels: TunnelSet, mtu: usize) -> std::io::Result<DataPath> {
        DataPath::spawn("wg", tun, move || Turns {
            outbound: Outbound::new(mtu),
            inbound: None,
            tunnels: tunnels.clone(),
        })
    }
}

impl crate::threads::Turns for Turns {
    type Receiver = Receiver;

    fn outbound(&mut self, queue: &Tun) {
        self.outbound.turn(queue, &self.tunnels);
    }

    fn inbound(&mut self, tun: &Tun, (shared, socket): &Receiver) {
        self.inbound
            .get_or_insert_with(Inbound::default)
            .turn(tun, shared, socket);
    }
}

/// The drop counter for a datagram that did not open.
fn drop_counter(shared: &Shared, e: TransportError) -> &std::sync::atomic::AtomicU64 {
    match e {
        TransportError::Open(OpenError::Replay(_)) => &shared.drops.replayed,
        TransportError::Open(OpenError::Auth) => &shared.drops.bad_mac,
        TransportError::Open(OpenError::Expired(_)) => &shared.drops.expired_key,
        TransportError::Open(_) | TransportError::CounterTooLarge => &shared.drops.malformed,
        TransportError::NotForThisKey => &shared.drops.other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::test_ipv4;
    use crate::wg::state::PeerPath;
    use polytun_wireguard::noise::SessionKeys;
    use polytun_wireguard::transport::Keypair;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;
    use std::sync::{Mutex, RwLock};

    const MTU: usize = 1420;

    /// Our keypair with peer `n` and the peer's half of it.
    fn keypairs(n: u8, now: Instant) -> (Arc<Keypair>, Keypair) {
        let (a, b) = ([n; 32], [n + 100; 32]);
        let ours = SessionKeys { send: a, recv: b };
        let theirs = SessionKeys { send: b, recv: a };
        let local = 100 + u32::from(n);
        let remote = 200 + u32::from(n);
        let ours = Keypair::new(&ours, local, remote, false, now, MTU);
        (
            Arc::new(ours),
            Keypair::new(&theirs, remote, local, true, now, MTU),
        )
    }

    /// An IPv4 packet from 198.51.100.`src` of 100 bytes, sealed by `kp`.
    fn sealed(kp: &Keypair, src: u8, now: Instant) -> Vec<u8> {
        let mut buf = vec![0u8; DATA_HEADER_LEN + 100 + 32];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + 100].copy_from_slice(&test_ipv4(src, 9));
        let mut p = PacketBuf::new(&mut buf, DATA_HEADER_LEN, DATA_HEADER_LEN + 100);
        kp.seal(now, &mut p).unwrap();
        let (start, end) = (p.start(), p.end());
        buf[start..end].to_vec()
    }

    fn shared(tables: Tables, epoch: Instant) -> Shared {
        // (the control side's queue is never read: try_send fails quietly)
        let (to_control, _) = crate::notes::channel(64);
        let socket = UdpSocket::bind_for_thread("127.0.0.1:0".parse().unwrap()).unwrap();
        Shared {
            name: "t".into(),
            tables: RwLock::new(tables),
            socket: RwLock::new(Arc::new(socket)),
            drops: DropCounters::default(),
            to_control,
            staged: Mutex::new(HashMap::new()),
            mtu: MTU,
            epoch,
        }
    }

    /// The per-turn memo of the last destination must never send one
    /// peer's packet under another's key or to another's endpoint:
    /// destinations of two peers interleaved, and one with no peer.
    #[test]
    fn interleaved_destinations_are_each_sealed_for_their_own_peer() {
        let now = Instant::now();
        let (ours1, theirs1) = keypairs(1, now);
        let (ours2, theirs2) = keypairs(2, now);
        let endpoint = |n: u8| SocketAddr::from((Ipv4Addr::new(192, 0, 2, n), 51820));
        let mut tables = Tables::default();
        for (peer, kp) in [(1, &ours1), (2, &ours2)] {
            let net = format!("198.51.100.{peer}/32").parse().unwrap();
            tables.routes.insert(net, peer);
            let path = PeerPath {
                sending: Some(kp.clone()),
                endpoint: Some(endpoint(peer as u8)),
                stats: Default::default(),
            };
            tables.peers.insert(peer, path);
        }
        let set = [Arc::new(shared(tables, now))];
        let mut outbound = Outbound::new(MTU);
        let dsts = [1u8, 1, 2, 1, 7, 2, 2, 1];
        for &d in &dsts {
            assert!(outbound.arena.batch.push(&test_ipv4(9, d)));
        }
        outbound.seal(&set);
        let expected: Vec<_> = (dsts.iter().enumerate())
            .filter(|&(_, &d)| d != 7)
            .map(|(i, &d)| (i, endpoint(d), 0))
            .collect();
        assert_eq!(outbound.out, expected);
        // each opens with its own peer's key, to the packet that was sealed
        for &(i, _, _) in &outbound.out {
            let theirs = if dsts[i] == 1 { &theirs1 } else { &theirs2 };
            let mut d = outbound.arena.batch.get(i).to_vec();
            let len = d.len();
            let mut p = PacketBuf::new(&mut d, 0, len);
            theirs.open(now, &mut p).unwrap();
            assert_eq!(p.as_slice()[19], dsts[i]);
        }
    }

    /// The per-turn memos (the last receiver index, the last source
    /// checked) must never let one peer's packet pass on what was looked up
    /// for another: datagrams of two peers interleaved, each spoofing the
    /// other's address right after a genuine packet from that address.
    #[test]
    fn interleaved_peers_are_each_checked_against_their_own_allowed_ips() {
        let now = Instant::now();
        let (ours1, theirs1) = keypairs(1, now);
        let (ours2, theirs2) = keypairs(2, now);
        let mut tables = Tables::default();
        for (peer, kp) in [(1, &ours1), (2, &ours2)] {
            let net = format!("198.51.100.{peer}/32").parse().unwrap();
            tables.routes.insert(net, peer);
            tables.receivers.insert(kp.local_index, (peer, kp.clone()));
            let path = PeerPath {
                sending: None,
                endpoint: None,
                stats: Default::default(),
            };
            tables.peers.insert(peer, path);
        }
        let shared = shared(tables, now);
        let mut bad_mac = sealed(&theirs1, 1, now);
        *bad_mac.last_mut().unwrap() ^= 1;
        // (datagrams, whether each is delivered)
        let bufs: Vec<(Vec<Vec<u8>>, Vec<bool>)> = vec![
            (vec![sealed(&theirs1, 1, now)], vec![true]),
            (vec![sealed(&theirs1, 1, now)], vec![true]),
            (vec![sealed(&theirs2, 2, now)], vec![true]),
            (vec![sealed(&theirs1, 2, now)], vec![false]),
            // one GRO buffer: peer 2 spoofing peer 1, then genuine
            (
                vec![sealed(&theirs2, 1, now), sealed(&theirs2, 2, now)],
                vec![false, true],
            ),
            (vec![bad_mac], vec![false]),
            (vec![sealed(&theirs1, 1, now)], vec![true]),
        ];
        let mut inbound = Inbound::default();
        let mut expected = Vec::new();
        for (i, (datagrams, delivered)) in bufs.iter().enumerate() {
            let mut len = 0;
            for (d, &ok) in datagrams.iter().zip(delivered) {
                inbound.udp_bufs[i][len..len + d.len()].copy_from_slice(d);
                if ok {
                    expected.push((i, len, len + DATA_HEADER_LEN + 100));
                }
                len += d.len();
            }
            let mut m = RecvMeta::default();
            m.addr = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 51820));
            m.len = len;
            m.stride = datagrams[0].len();
            inbound.metas[i] = m;
        }
        inbound.open(&shared, bufs.len());
        assert_eq!(inbound.opened, expected);
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(count(&shared.drops.bad_source), 2);
        assert_eq!(count(&shared.drops.bad_mac), 1);
    }

    #[test]
    fn stride_fits_a_sealed_full_packet() {
        assert_eq!(outbound_stride(1420), 16 + 1420 + 16);
        assert_eq!(outbound_stride(1280), 16 + 1280 + 16);
        // Sealing a full packet in a slot of that stride fills it exactly,
        // so runs of them lie back to back and leave as one iovec.
        for mtu in [1280usize, 1420, 1421, 1500] {
            let pad = polytun_wireguard::transport::padding_len(mtu, mtu);
            assert_eq!(DATA_HEADER_LEN + mtu + pad + TAG, outbound_stride(mtu));
            assert!(outbound_stride(mtu) >= TUN_READ_OFFSET + mtu + TAG);
        }
    }
}
