//! The WireGuard data path: TUN → seal → UDP, and UDP → open → TUN, in
//! batches.
//!
//! Outbound, the TUN reader writes packets into one arena whose stride is
//! the sealed size of a full-MTU packet. Sealing in place then leaves
//! consecutive full-size datagrams back to back, so a run of them to one
//! endpoint goes out as one UDP GSO send without a copy.
//!
//! Inbound, each datagram of a (GRO-coalesced) UDP read is opened in place
//! in the receive buffer, and the TUN writer gathers the packets from there:
//! runs of TCP segments of one flow leave as one super-packet (GRO) with
//! one `writev`, without a copy in userspace.

use super::state::{Shared, ToControl};
use crate::datapath::DropCounters;
use crate::datapath::{dst_ip, src_ip};
use polytun_core::record::OpenError;
use polytun_core::{KeyStatus, PacketBatch, PacketBuf};
use polytun_io::{RecvMeta, Transmit, Tun, UDP_RECV_BATCH};
use polytun_wireguard::messages::DATA_HEADER_LEN;
use polytun_wireguard::transport::TransportError;
use polytun_wireguard::{classify, Message, PeerId};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const TAG: usize = 16;
/// Headroom in front of a packet read from the TUN device: the data header.
const TUN_READ_OFFSET: usize = DATA_HEADER_LEN;
const TUN_BATCH: usize = polytun_io::IDEAL_BATCH_SIZE;
const UDP_BUF: usize = 65536;

/// The sealed size of a full-MTU packet: the outbound arena stride. (WireGuard
/// pads to 16 but never beyond the MTU, so a full packet gets no padding.)
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

/// Which tunnels an interface's TUN reader dispatches to.
pub type TunnelSet = Arc<std::sync::RwLock<Vec<Arc<Shared>>>>;

/// Reads the TUN device forever and sends each packet through the tunnel
/// and peer its destination routes to.
pub async fn tun_to_net(tun: Arc<Tun>, tunnels: TunnelSet, mtu: usize) {
    // Headroom for the data header, room for a full-MTU payload, tailroom
    // for its padding and tag: the stride is the sealed full-packet size.
    let mut batch = outbound_batch(mtu);
    debug_assert_eq!(batch.stride(), outbound_stride(mtu));
    let mut mtu = mtu;
    let mut stride = batch.stride();
    let mut sizes = vec![0usize; TUN_BATCH];
    // (slot, destination, tunnel) of each sealed packet, in slot order.
    let mut out: Vec<(usize, SocketAddr, usize)> = Vec::with_capacity(TUN_BATCH);
    let mut sent_peers: Vec<(usize, PeerId)> = Vec::new();
    let mut expiring: Vec<(usize, PeerId)> = Vec::new();
    let mut errors = 0u64;
    loop {
        if !crate::datapath::read_tun(&tun, &mut batch, &mut sizes, &mut errors).await {
            if let Some(m) = crate::datapath::raised_mtu(&tun, mtu, MAX_OVERHEAD) {
                mtu = m;
                batch = outbound_batch(mtu);
                stride = batch.stride();
            }
            continue;
        }
        let now = Instant::now();
        let set = tunnels.read().unwrap_or_else(|e| e.into_inner()).clone();
        out.clear();
        sent_peers.clear();
        expiring.clear();
        {
            let guards: Vec<_> = set.iter().map(|s| s.tables()).collect();
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
                        if status == KeyStatus::Expiring && !expiring.contains(&(ti, peer)) {
                            expiring.push((ti, peer));
                        }
                        out.push((i, endpoint, ti));
                        path.stats
                            .tx_bytes
                            .fetch_add(size as u64, Ordering::Relaxed);
                        if !sent_peers.contains(&(ti, peer))
                            && path.stats.activity.sent(shared.since_epoch(now))
                        {
                            sent_peers.push((ti, peer));
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
        }
        for &(ti, peer) in &expiring {
            let _ = set[ti].to_control.try_send(ToControl::KeyExpiring { peer });
        }
        // Runs of full-size datagrams lying back to back in the arena, to
        // one endpoint through one socket, leave as one GSO send.
        let mut k = 0;
        while k < out.len() {
            let (first, dst, ti) = out[k];
            let socket = set[ti].socket();
            // One GSO send carries at most 64 KiB of UDP payload (less the
            // IPv6 and UDP headers) and at most what the socket allows.
            let max_run = ((u16::MAX as usize - 48) / stride)
                .min(socket.max_gso_segments())
                .max(1);
            let mut j = k + 1;
            while j < out.len()
                && j - k < max_run
                && out[j].0 == out[j - 1].0 + 1
                && batch.adjacent(out[j - 1].0)
                && out[j].1 == dst
                && out[j].2 == ti
            {
                j += 1;
            }
            let last = out[j - 1].0;
            let t = Transmit {
                destination: dst,
                ecn: None,
                contents: batch.span(first, last),
                segment_size: (j - k > 1).then_some(stride),
                src_ip: None,
            };
            if let Err(e) = socket.send_batch(std::slice::from_ref(&t)).await {
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::debug!("{}: udp send to {dst}: {e}", set[ti].name);
                }
            }
            k = j;
        }
        for &(ti, peer) in &sent_peers {
            let _ = set[ti].to_control.try_send(ToControl::Sent { peer });
        }
    }
}

/// Receives this tunnel's UDP datagrams forever: transport data is opened
/// and written to the TUN device, handshake messages go to the control task.
pub async fn net_to_tun(tun: Arc<Tun>, shared: Arc<Shared>) {
    let socket = shared.socket();
    let mut udp_bufs: Vec<Vec<u8>> = (0..UDP_RECV_BATCH).map(|_| vec![0u8; UDP_BUF]).collect();
    let mut metas = vec![RecvMeta::default(); UDP_RECV_BATCH];
    // (buffer, start, end) of each datagram opened in place, in buffer order.
    let mut opened: Vec<(usize, usize, usize)> = Vec::new();
    let mut received: Vec<(u32, SocketAddr, bool)> = Vec::new();
    let mut errors = 0u64;
    loop {
        let n = {
            let mut iov: Vec<IoSliceMut<'_>> =
                udp_bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match socket.recv_batch(&mut iov, &mut metas).await {
                Ok(n) => n,
                Err(e) => {
                    errors += 1;
                    if errors.is_power_of_two() {
                        tracing::debug!("{}: udp receive: {e}", shared.name);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                }
            }
        };
        let now = Instant::now();
        let since_epoch = shared.since_epoch(now);
        received.clear();
        opened.clear();
        {
            let tables = shared.tables();
            for (i, m) in metas[..n].iter().enumerate() {
                let stride = if m.stride == 0 { m.len } else { m.stride };
                let len = m.len.min(UDP_BUF);
                // The dual-stack socket reports IPv4 peers as v4-mapped
                // IPv6; endpoints are kept in their plain form.
                let src = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
                for start in (0..len).step_by(stride.max(1)) {
                    let end = (start + stride).min(len);
                    let d = &udp_bufs[i][start..end];
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
                    let mut p = PacketBuf::new(&mut udp_bufs[i][..end], start, end);
                    if let Err(e) = kp.open(now, &mut p) {
                        DropCounters::bump(drop_counter(&shared, e));
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
                        opened.push((i, start, p.start() + p.len()));
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
                            let due =
                                path.stats
                                    .activity
                                    .received(since_epoch, receiver, keepalive);
                            due || path.endpoint != Some(src)
                        }
                        None => true,
                    };
                    match received.iter_mut().find(|r| r.0 == receiver) {
                        Some(r) => {
                            r.1 = src;
                            r.2 &= keepalive;
                        }
                        None if note => received.push((receiver, src, keepalive)),
                        None => {}
                    }
                }
            }
        }
        crate::datapath::write_opened(
            &tun,
            &mut udp_bufs,
            &opened,
            DATA_HEADER_LEN,
            &mut errors,
            &shared.name,
        )
        .await;
        for &(local_index, src, keepalive) in &received {
            let _ = shared.to_control.try_send(ToControl::Received {
                local_index,
                src,
                keepalive,
            });
        }
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
        // which is what lets runs of them leave as one GSO send.
        for mtu in [1280usize, 1420, 1421, 1500] {
            let pad = polytun_wireguard::transport::padding_len(mtu, mtu);
            assert_eq!(DATA_HEADER_LEN + mtu + pad + TAG, outbound_stride(mtu));
            assert!(outbound_stride(mtu) >= TUN_READ_OFFSET + mtu + TAG);
        }
    }
}
