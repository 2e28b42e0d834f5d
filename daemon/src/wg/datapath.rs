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
use crate::datapath::{dst_ip, recv_udp_now, reuse, src_ip, TunArena, TunRead};
use polytun_core::record::OpenError;
use polytun_core::{KeyStatus, PacketBatch, PacketBuf};
use polytun_io::{RecvMeta, Tun, UdpSocket, UDP_RECV_BATCH, UDP_RECV_MAX_DATAGRAMS};
use polytun_wireguard::messages::DATA_HEADER_LEN;
use polytun_wireguard::transport::TransportError;
use polytun_wireguard::{classify, Message, PeerId};
use std::io::{IoSlice, IoSliceMut};
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
            spare_guards: Vec::new(),
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
        for i in 0..batch.len() {
            let Some(dst) = dst_ip(batch.get(i)) else {
                continue;
            };
            let Some((ti, peer)) = guards
                .iter()
                .enumerate()
                .find_map(|(ti, t)| t.routes.lookup(dst).map(|p| (ti, *p)))
            else {
                // No peer for this destination: like wg, drop silently.
                continue;
            };
            let shared = &set[ti];
            let Some(path) = guards[ti].peers.get(&peer) else {
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
                    if !self.sent_peers.contains(&(ti, peer))
                        && path.stats.activity.sent(shared.since_epoch(now))
                    {
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
    spare_iov: Vec<IoSliceMut<'static>>,
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
            spare_iov: Vec::with_capacity(UDP_RECV_BATCH),
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
            &mut self.spare_iov,
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
        true
    }

    /// Opens the `n` received buffers' datagrams in place.
    fn open(&mut self, shared: &Shared, n: usize) {
        let now = Instant::now();
        let since_epoch = shared.since_epoch(now);
        self.received.clear();
        self.opened.clear();
        let tables = shared.tables();
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
                let Some((peer, kp)) = tables.receivers.get(&receiver) else {
                    DropCounters::bump(&shared.drops.no_session);
                    continue;
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
                    let ok = src_ip(p.as_slice())
                        .and_then(|s| tables.routes.lookup(s))
                        .is_some_and(|owner| owner == peer);
                    if !ok {
                        DropCounters::bump(&shared.drops.bad_source);
                        continue;
                    }
                    debug_assert_eq!(p.start(), start + DATA_HEADER_LEN);
                    self.opened.push((i, start, p.start() + p.len()));
                    if let Some(path) = tables.peers.get(peer) {
                        path.stats
                            .rx_bytes
                            .fetch_add(p.len() as u64, Ordering::Relaxed);
                    }
                }
                // Roaming and a keypair's first packet are told at once;
                // plain traffic at most every activity::NOTE_INTERVAL.
                let note = match tables.peers.get(peer) {
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
