//! The ESP data path: TUN → traffic selector → seal in place → UDP 4500,
//! and UDP 4500 → SPI → open in place → inner-source check → TUN, in
//! batches. IKE messages and keepalives on 4500 are told apart from ESP by
//! [`classify_udp4500`]; IKE goes to the control task.

use super::state::{IpsecSet, Shared, ToControl};
use crate::datapath::{dst_ip, src_ip};
use crate::wg::state::DropCounters;
use polytun_core::{KeyStatus, OpenError, PacketBatch, PacketBuf};
use polytun_esp::{classify_udp4500, EspOpenError, Udp4500, MAX_HEADER_LEN, MAX_TRAILER_LEN};
use polytun_io::{RecvMeta, Transmit, Tun, UDP_RECV_BATCH};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const TUN_BATCH: usize = polytun_io::IDEAL_BATCH_SIZE;
/// Headroom in front of a packet written to the TUN device (≥ the virtio
/// header, ≥ the largest ESP header so the opened packet lands here).
const TUN_WRITE_OFFSET: usize = 32;
const UDP_BUF: usize = 65536;
const TUN_WRITE_SLOTS: usize = 128;
const TUN_WRITE_SLOT: usize = TUN_WRITE_OFFSET + 65535;

/// Reads the TUN device forever and sends each packet through the CHILD SA
/// whose remote traffic selector holds its destination.
pub async fn tun_to_net(tun: Arc<Tun>, tunnels: IpsecSet, mtu: usize) {
    let mut batch = PacketBatch::new(TUN_BATCH, MAX_HEADER_LEN, mtu, MAX_TRAILER_LEN);
    let mut sizes = vec![0usize; TUN_BATCH];
    // (slot, destination, tunnel) of each sealed packet
    let mut out: Vec<(usize, SocketAddr, usize)> = Vec::with_capacity(TUN_BATCH);
    let mut expiring: Vec<(usize, u32)> = Vec::new();
    let mut expired: Vec<(usize, u32)> = Vec::new();
    let mut errors = 0u64;
    loop {
        crate::datapath::read_tun(&tun, &mut batch, &mut sizes, &mut errors).await;
        let now = Instant::now();
        let set = tunnels.read().unwrap_or_else(|e| e.into_inner()).clone();
        out.clear();
        expiring.clear();
        expired.clear();
        {
            let guards: Vec<_> = set.iter().map(|s| s.tables()).collect();
            for i in 0..batch.len() {
                let Some(dst) = dst_ip(batch.get(i)) else {
                    continue;
                };
                let Some((ti, spi)) = guards
                    .iter()
                    .enumerate()
                    .find_map(|(ti, t)| t.routes.lookup(dst).map(|s| (ti, *s)))
                else {
                    // no CHILD SA (yet) for this destination
                    continue;
                };
                let Some(ob) = guards[ti].outbound.get(&spi) else {
                    DropCounters::bump(&set[ti].drops.no_session);
                    continue;
                };
                let size = batch.get(i).len();
                match batch.with_packet(i, |p| ob.sa.seal(now, p)) {
                    Ok(status) => {
                        if status == KeyStatus::Expiring {
                            expiring.push((ti, spi));
                        }
                        ob.stats.tx_bytes.fetch_add(size as u64, Ordering::Relaxed);
                        ob.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                        out.push((i, ob.dst, ti));
                    }
                    Err(e) => {
                        DropCounters::bump(&set[ti].drops.expired_key);
                        if is_expired(&e) && !expired.contains(&(ti, spi)) {
                            expired.push((ti, spi));
                        }
                    }
                }
            }
        }
        for &(ti, spi) in &expiring {
            let _ = set[ti].to_control.try_send(ToControl::KeyExpiring { spi });
        }
        for &(ti, spi) in &expired {
            let _ = set[ti].to_control.try_send(ToControl::KeyExpired { spi });
        }
        for (ti, shared) in set.iter().enumerate() {
            let transmits: Vec<Transmit<'_>> = out
                .iter()
                .filter(|o| o.2 == ti)
                .map(|&(i, dst, _)| Transmit {
                    destination: dst,
                    ecn: None,
                    contents: batch.get(i),
                    segment_size: None,
                    src_ip: None,
                })
                .collect();
            if transmits.is_empty() {
                continue;
            }
            if let Err(e) = shared.natt.send_batch(&transmits).await {
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::debug!("{}: udp send: {e}", shared.name);
                }
            }
        }
    }
}

/// A seal refused because the SA is past a hard limit (not for want of room).
fn is_expired(e: &polytun_esp::EspSealError) -> bool {
    matches!(
        e,
        polytun_esp::EspSealError::Seal(polytun_core::SealError::Expired(_))
    )
}

fn count_open_error(shared: &Shared, e: EspOpenError) {
    let d = &shared.drops;
    let c = match e {
        EspOpenError::Open(OpenError::Replay(_)) => &d.replayed,
        EspOpenError::Open(OpenError::Auth) => &d.bad_mac,
        EspOpenError::Open(OpenError::Expired(_)) => &d.expired_key,
        EspOpenError::WrongSpi(_) | EspOpenError::WrongDirection => &d.other,
        _ => &d.malformed,
    };
    DropCounters::bump(c);
}

/// Receives UDP 4500 forever: ESP is opened and written to the TUN device,
/// IKE goes to the control task, keepalives are ignored.
pub async fn natt_to_tun(tun: Arc<Tun>, shared: Arc<Shared>) {
    let socket = shared.natt.clone();
    let mut udp_bufs: Vec<Vec<u8>> = (0..UDP_RECV_BATCH).map(|_| vec![0u8; UDP_BUF]).collect();
    let mut metas = vec![RecvMeta::default(); UDP_RECV_BATCH];
    let mut slots = vec![0u8; TUN_WRITE_SLOTS * TUN_WRITE_SLOT];
    let mut sizes = vec![0usize; TUN_WRITE_SLOTS];
    let mut alive: Vec<u64> = Vec::new();
    let mut expiring: Vec<u32> = Vec::new();
    let mut expired: Vec<u32> = Vec::new();
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
                        tracing::debug!("{}: udp 4500 receive: {e}", shared.name);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                }
            }
        };
        let now = Instant::now();
        alive.clear();
        expiring.clear();
        expired.clear();
        let mut datagrams = metas[..n].iter().enumerate().flat_map(|(i, m)| {
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let len = m.len.min(UDP_BUF);
            (0..len.div_ceil(stride.max(1))).map(move |s| {
                let start = s * stride;
                let src = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
                (i, start, (start + stride).min(len), src)
            })
        });
        loop {
            let mut k = 0;
            let mut more = false;
            {
                let tables = shared.tables();
                for (i, start, end, src) in datagrams.by_ref() {
                    let d = &udp_bufs[i][start..end];
                    match classify_udp4500(d) {
                        Udp4500::Keepalive => {}
                        Udp4500::Malformed => DropCounters::bump(&shared.drops.malformed),
                        Udp4500::Ike(_) => {
                            let msg = ToControl::Ike {
                                local_port: polytun_esp::NAT_T_PORT,
                                src,
                                data: d.to_vec(),
                            };
                            if shared.to_control.try_send(msg).is_err() {
                                DropCounters::bump(&shared.drops.rate_limited);
                            }
                        }
                        Udp4500::Esp { spi } => {
                            let Some(ib) = tables.inbound.get(&spi) else {
                                DropCounters::bump(&shared.drops.no_session);
                                continue;
                            };
                            let slot = &mut slots[k * TUN_WRITE_SLOT..(k + 1) * TUN_WRITE_SLOT];
                            let at = TUN_WRITE_OFFSET - ib.sa.transform().header_len();
                            if d.len() > TUN_WRITE_SLOT - at {
                                DropCounters::bump(&shared.drops.malformed);
                                continue;
                            }
                            slot[at..at + d.len()].copy_from_slice(d);
                            let mut p = PacketBuf::new(slot, at, at + d.len());
                            let opened = match ib.sa.open(now, &mut p) {
                                Ok(o) => o,
                                Err(e) => {
                                    if matches!(e, EspOpenError::Open(OpenError::Expired(_)))
                                        && !expired.contains(&spi)
                                    {
                                        expired.push(spi);
                                    }
                                    count_open_error(&shared, e);
                                    continue;
                                }
                            };
                            if opened.status == KeyStatus::Expiring {
                                expiring.push(spi);
                            }
                            if !alive.contains(&ib.ike_sa) {
                                alive.push(ib.ike_sa);
                            }
                            if opened.is_dummy() {
                                continue;
                            }
                            // the inner source must be inside the peer's selectors
                            let ok = src_ip(p.as_slice())
                                .is_some_and(|s| ib.remote_ts.iter().any(|n| n.contains(&s)));
                            if !ok {
                                DropCounters::bump(&shared.drops.bad_source);
                                continue;
                            }
                            debug_assert_eq!(p.start(), TUN_WRITE_OFFSET);
                            sizes[k] = p.len();
                            ib.stats
                                .rx_bytes
                                .fetch_add(p.len() as u64, Ordering::Relaxed);
                            ib.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                            k += 1;
                            if k == TUN_WRITE_SLOTS {
                                more = true;
                                break;
                            }
                        }
                    }
                }
            }
            if k > 0 {
                let mut bufs: Vec<&mut [u8]> =
                    slots.chunks_exact_mut(TUN_WRITE_SLOT).take(k).collect();
                if let Err(e) = tun
                    .send_batch(&mut bufs, &sizes[..k], TUN_WRITE_OFFSET)
                    .await
                {
                    errors += 1;
                    if errors.is_power_of_two() {
                        tracing::debug!("{}: writing to the tun device: {e}", shared.name);
                    }
                }
            }
            if !more {
                break;
            }
        }
        for &ike_sa in &alive {
            let _ = shared.to_control.try_send(ToControl::Traffic { ike_sa });
        }
        for &spi in &expiring {
            let _ = shared.to_control.try_send(ToControl::KeyExpiring { spi });
        }
        for &spi in &expired {
            let _ = shared.to_control.try_send(ToControl::KeyExpired { spi });
        }
    }
}

/// Receives UDP 500 forever: every datagram is an IKE message for the control task.
pub async fn ike_to_control(shared: Arc<Shared>) {
    const N: usize = 8;
    let socket = shared.ike.clone();
    let mut bufs: Vec<Vec<u8>> = (0..N).map(|_| vec![0u8; UDP_BUF]).collect();
    let mut metas = vec![RecvMeta::default(); N];
    loop {
        let n = {
            let mut iov: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match socket.recv_batch(&mut iov, &mut metas).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!("{}: udp 500 receive: {e}", shared.name);
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                }
            }
        };
        for (i, m) in metas[..n].iter().enumerate() {
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let len = m.len.min(UDP_BUF);
            let src = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
            for s in 0..len.div_ceil(stride.max(1)) {
                let d = &bufs[i][s * stride..((s + 1) * stride).min(len)];
                let msg = ToControl::Ike {
                    local_port: 500,
                    src,
                    data: d.to_vec(),
                };
                if shared.to_control.try_send(msg).is_err() {
                    DropCounters::bump(&shared.drops.rate_limited);
                }
            }
        }
    }
}
