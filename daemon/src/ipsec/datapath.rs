//! The ESP data path: TUN → traffic selector → seal in place → UDP 4500,
//! and UDP 4500 → SPI → open in place → inner-source check → TUN, in
//! batches ([`Outbound`], [`Inbound`]), run by the data-path threads of
//! [`crate::threads`] ([`Turns`]). IKE messages and keepalives on 4500 are
//! told apart from ESP by [`classify_udp4500`]; IKE goes to the control
//! task, and UDP 500 (IKE only) is read by a tokio task.
//!
//! Outbound, the TUN reader writes packets into one arena with room for
//! any transform's header and trailer around each, and each is sealed in
//! place; a run of ESP packets of one size to one peer (the last may be
//! shorter) leaves as one UDP GSO `sendmsg` gathered from the slots
//! (`send_gathered_now`): ESP-in-UDP (RFC 3948) has no marker in front of
//! ESP, so each segment is exactly one ESP packet.
//!
//! Inbound, each datagram of a (GRO-coalesced) UDP read is opened in place
//! in the receive buffer and the TUN writer gathers the packets from there
//! (runs of TCP segments of one flow as one super-packet, no copy).

use super::state::{IpsecSet, Shared, Tables, ToControl};
use crate::datapath::DropCounters;
use crate::datapath::{dst_ip, recv_udp_now, reuse, src_ip, RecvList, TunArena, TunRead};
use polytun_core::{KeyStatus, OpenError, PacketBatch, PacketBuf};
use polytun_esp::{classify_udp4500, EspOpenError, Udp4500, MAX_HEADER_LEN, MAX_TRAILER_LEN};
use polytun_ike::SaId;
use polytun_io::{RecvMeta, Tun, MIN_SEND_OFFSET, UDP_RECV_BATCH, UDP_RECV_MAX_DATAGRAMS};
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLockReadGuard};
use std::time::{Duration, Instant};

const TUN_BATCH: usize = polytun_io::IDEAL_BATCH_SIZE;
const UDP_BUF: usize = 65536;
/// The control task hears of inbound traffic on an IKE SA (liveness, DPD)
/// at most this often: one wake-up per batch would cost more than it tells,
/// and at 100 ms every ping of a `ping` (5–10/s) woke it, which costs a
/// round trip 20–35 µs (measured for WireGuard, docs/fast-path.md
/// "Latency"). DPD waits seconds (`dpd_delay`), so liveness a second old
/// only makes a probe come up to a second early.
const TRAFFIC_NOTE_INTERVAL: Duration = Duration::from_secs(1);

/// The outbound arena for `mtu`: room for any transform's ESP header in
/// front of a packet and its padding, trailer and ICV behind.
fn outbound_batch(mtu: usize) -> PacketBatch {
    PacketBatch::new(TUN_BATCH, MAX_HEADER_LEN, mtu, MAX_TRAILER_LEN)
}

/// The outbound half of the ESP data path: TUN → traffic selector → seal
/// → UDP 4500, one batch a turn.
pub struct Outbound {
    arena: TunArena,
    /// (slot, destination, tunnel) of each sealed packet, in TUN order.
    out: Vec<(usize, SocketAddr, usize)>,
    expiring: Vec<(usize, u32)>,
    expired: Vec<(usize, u32)>,
    errors: u64,
    /// Allocations of the per-turn lists of borrows (see `datapath::reuse`).
    spare_guards: Vec<RwLockReadGuard<'static, Tables>>,
    spare_slices: Vec<IoSlice<'static>>,
}

impl Outbound {
    pub fn new(mtu: usize) -> Self {
        Outbound {
            arena: TunArena::new(mtu, MAX_HEADER_LEN + MAX_TRAILER_LEN, outbound_batch),
            out: Vec::with_capacity(TUN_BATCH),
            expiring: Vec::new(),
            expired: Vec::new(),
            errors: 0,
            spare_guards: Vec::with_capacity(crate::datapath::GUARDS),
            spare_slices: Vec::with_capacity(TUN_BATCH),
        }
    }

    /// Reads one batch from `tun` and sends each packet through the CHILD
    /// SA whose remote traffic selector holds its destination; false when
    /// nothing was queued.
    pub fn turn(&mut self, tun: &Tun, tunnels: &IpsecSet) -> bool {
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

    /// Seals every packet with a CHILD SA in place.
    fn seal(&mut self, set: &[Arc<Shared>]) {
        let now = Instant::now();
        let batch = &mut self.arena.batch;
        self.out.clear();
        self.expiring.clear();
        self.expired.clear();
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
            let (ti, spi, ob) = match last {
                Some((d, ti, spi, ob)) if d == dst => (ti, spi, ob),
                _ => {
                    let Some((ti, spi)) = guards
                        .iter()
                        .enumerate()
                        .find_map(|(ti, t)| t.routes.lookup(dst).map(|s| (ti, *s)))
                    else {
                        // no CHILD SA (yet) for this destination
                        continue;
                    };
                    let ob = guards[ti].outbound.get(&spi);
                    last = Some((dst, ti, spi, ob));
                    (ti, spi, ob)
                }
            };
            let Some(ob) = ob else {
                DropCounters::bump(&set[ti].drops.no_session);
                continue;
            };
            let size = batch.get(i).len();
            match batch.with_packet(i, |p| ob.sa.seal(now, p)) {
                Ok(status) => {
                    if status == KeyStatus::Expiring && !self.expiring.contains(&(ti, spi)) {
                        self.expiring.push((ti, spi));
                    }
                    ob.stats.tx_bytes.fetch_add(size as u64, Ordering::Relaxed);
                    ob.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                    self.out.push((i, ob.dst, ti));
                }
                Err(e) => {
                    DropCounters::bump(&set[ti].drops.expired_key);
                    if is_expired(&e) && !self.expired.contains(&(ti, spi)) {
                        self.expired.push((ti, spi));
                    }
                }
            }
        }
        self.spare_guards = reuse(guards);
        for &(ti, spi) in &self.expiring {
            let _ = set[ti].to_control.try_send(ToControl::KeyExpiring { spi });
        }
        for &(ti, spi) in &self.expired {
            let _ = set[ti].to_control.try_send(ToControl::KeyExpired { spi });
        }
    }

    /// Sends the sealed packets in TUN order: each run of packets of one
    /// size (the last may be shorter) to one peer through one socket leaves
    /// gathered from its slots, in GSO sends.
    fn send(&mut self, set: &[Arc<Shared>]) {
        let (batch, out) = (&self.arena.batch, &self.out);
        let bytes = |i: usize| batch.get(i);
        let mut run: Vec<IoSlice<'_>> = reuse(std::mem::take(&mut self.spare_slices));
        let mut k = 0;
        while k < out.len() {
            let (_, dst, ti) = out[k];
            let j = crate::datapath::equal_size_run(out, k, |&(at, d, t)| {
                (d == dst && t == ti).then(|| bytes(at))
            });
            run.clear();
            run.extend(out[k..j].iter().map(|&(at, _, _)| IoSlice::new(bytes(at))));
            if let Err(e) = set[ti].natt.send_gathered_now(dst, &run) {
                self.errors += 1;
                if self.errors.is_power_of_two() {
                    tracing::debug!("{}: udp send to {dst}: {e}", set[ti].name);
                }
            }
            k = j;
        }
        self.spare_slices = reuse(run);
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

/// The inbound half of one tunnel's ESP data path: UDP 4500 → SPI → open
/// in place → inner-source check → TUN, one receive batch a turn. IKE
/// goes to the control task, keepalives are ignored.
pub struct Inbound {
    udp_bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    /// (buffer, start, end) of each opened packet with room for the virtio
    /// header in front, in buffer order.
    opened: Vec<(usize, usize, usize)>,
    alive: Vec<SaId>,
    /// When the control task last heard of traffic on each IKE SA.
    noted: Vec<(SaId, Instant)>,
    expiring: Vec<u32>,
    expired: Vec<u32>,
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
            alive: Vec::new(),
            noted: Vec::new(),
            expiring: Vec::new(),
            expired: Vec::new(),
            errors: 0,
            recv: RecvList::new(UDP_RECV_BATCH),
            spare_packets: Vec::with_capacity(UDP_RECV_MAX_DATAGRAMS),
        }
    }
}

impl Inbound {
    /// Receives one batch on `shared`'s UDP 4500 socket, opens it and
    /// writes it to `tun`; false when nothing was queued.
    pub fn turn(&mut self, tun: &Tun, shared: &Shared) -> bool {
        let Some(n) = recv_udp_now(
            &shared.natt,
            &mut self.udp_bufs,
            &mut self.metas,
            &mut self.recv,
            &mut self.errors,
            &shared.name,
        ) else {
            return false;
        };
        let now = Instant::now();
        self.open(shared, n, now);
        crate::datapath::write_opened(
            tun,
            &mut self.udp_bufs,
            &self.opened,
            MIN_SEND_OFFSET,
            &mut self.errors,
            &shared.name,
            &mut self.spare_packets,
        );
        self.notify(shared, now);
        crate::datapath::hand_over_lone(self.opened.len());
        true
    }

    /// Opens the `n` received buffers' ESP packets in place.
    fn open(&mut self, shared: &Shared, n: usize, now: Instant) {
        self.alive.clear();
        self.expiring.clear();
        self.expired.clear();
        self.opened.clear();
        let tables = shared.tables();
        // The previous packet's SPI and its SA: a batch is mostly one SA's.
        let mut last = None;
        for (i, m) in self.metas[..n].iter().enumerate() {
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let len = m.len.min(UDP_BUF);
            let src = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
            for start in (0..len).step_by(stride.max(1)) {
                let end = (start + stride).min(len);
                let d = &self.udp_bufs[i][start..end];
                let spi = match classify_udp4500(d) {
                    Udp4500::Keepalive => continue,
                    Udp4500::Malformed => {
                        DropCounters::bump(&shared.drops.malformed);
                        continue;
                    }
                    Udp4500::Ike(_) => {
                        let msg = ToControl::Ike {
                            local_port: polytun_esp::NAT_T_PORT,
                            src,
                            data: d.to_vec(),
                        };
                        if shared.to_control.try_send(msg).is_err() {
                            DropCounters::bump(&shared.drops.rate_limited);
                        }
                        continue;
                    }
                    Udp4500::Esp { spi } => spi,
                };
                let ib = match last {
                    Some((s, ib)) if s == spi => ib,
                    _ => {
                        let Some(ib) = tables.inbound.get(&spi) else {
                            DropCounters::bump(&shared.drops.no_session);
                            continue;
                        };
                        last = Some((spi, ib));
                        ib
                    }
                };
                // Opened where it lies: the TUN write gathers the packets
                // from the receive buffers.
                let mut p = PacketBuf::new(&mut self.udp_bufs[i][..end], start, end);
                let result = match ib.sa.open(now, &mut p) {
                    Ok(o) => o,
                    Err(e) => {
                        if matches!(e, EspOpenError::Open(OpenError::Expired(_)))
                            && !self.expired.contains(&spi)
                        {
                            self.expired.push(spi);
                        }
                        count_open_error(shared, e);
                        continue;
                    }
                };
                if result.status == KeyStatus::Expiring && !self.expiring.contains(&spi) {
                    self.expiring.push(spi);
                }
                if !self.alive.contains(&ib.ike_sa) {
                    self.alive.push(ib.ike_sa);
                }
                if result.is_dummy() {
                    continue;
                }
                // the inner source must be inside the peer's selectors
                let ok = src_ip(p.as_slice())
                    .is_some_and(|s| ib.remote_ts.iter().any(|n| n.contains(&s)));
                if !ok {
                    DropCounters::bump(&shared.drops.bad_source);
                    continue;
                }
                // Every ESP header is longer than the virtio header the
                // writer puts in front of the packet.
                debug_assert!(p.start() - start >= MIN_SEND_OFFSET);
                self.opened
                    .push((i, p.start() - MIN_SEND_OFFSET, p.start() + p.len()));
                ib.stats
                    .rx_bytes
                    .fetch_add(p.len() as u64, Ordering::Relaxed);
                ib.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Tells the control task of traffic (at most every
    /// [`TRAFFIC_NOTE_INTERVAL`] per IKE SA) and of keys past their limits.
    fn notify(&mut self, shared: &Shared, now: Instant) {
        for &ike_sa in &self.alive {
            let due = match self.noted.iter_mut().find(|n| n.0 == ike_sa) {
                Some(n) if now.duration_since(n.1) < TRAFFIC_NOTE_INTERVAL => false,
                Some(n) => {
                    n.1 = now;
                    true
                }
                None => {
                    // forget IKE SAs that went quiet (rekeyed away)
                    self.noted
                        .retain(|n| now.duration_since(n.1) < 10 * TRAFFIC_NOTE_INTERVAL);
                    self.noted.push((ike_sa, now));
                    true
                }
            };
            if due {
                let _ = shared.to_control.try_send(ToControl::Traffic { ike_sa });
            }
        }
        for &spi in &self.expiring {
            let _ = shared.to_control.try_send(ToControl::KeyExpiring { spi });
        }
        for &spi in &self.expired {
            let _ = shared.to_control.try_send(ToControl::KeyExpired { spi });
        }
    }
}

/// A tunnel's UDP 4500 socket as the data-path threads know it (the
/// socket is `natt`).
pub type Poller = crate::threads::Poller<Arc<Shared>>;
pub type DataPath = crate::threads::DataPath<Arc<Shared>>;

/// What one ESP data-path thread runs.
pub struct Turns {
    outbound: Outbound,
    /// One receive arena for all tunnels: their turns never overlap.
    inbound: Option<Inbound>,
    tunnels: IpsecSet,
}

impl Turns {
    /// The threads (`esp-data-N`) of an interface whose tunnels are `tunnels`.
    pub fn spawn(tun: Arc<Tun>, tunnels: IpsecSet, mtu: usize) -> std::io::Result<DataPath> {
        DataPath::spawn("esp", tun, move || Turns {
            outbound: Outbound::new(mtu),
            inbound: None,
            tunnels: tunnels.clone(),
        })
    }
}

impl crate::threads::Turns for Turns {
    type Receiver = Arc<Shared>;

    fn outbound(&mut self, queue: &Tun) {
        self.outbound.turn(queue, &self.tunnels);
    }

    fn inbound(&mut self, tun: &Tun, shared: &Arc<Shared>) {
        self.inbound
            .get_or_insert_with(Inbound::default)
            .turn(tun, shared);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::test_ipv4;
    use crate::ipsec::state::{self, ChildStats};
    use polytun_esp::{Direction, EspSa, SaParams, Transform};
    use polytun_io::UdpSocket;
    use std::net::Ipv4Addr;
    use std::sync::RwLock;

    const T: Transform = Transform::ALL[0];

    fn sa(spi: u32, direction: Direction, now: Instant) -> Arc<EspSa> {
        let keymat = vec![spi as u8; T.keymat_len()];
        Arc::new(EspSa::new(SaParams::new(spi, direction, T), &keymat, now).unwrap())
    }

    fn shared(tables: Tables) -> Shared {
        // (the control side's queue is never read: try_send fails quietly)
        let (to_control, _) = crate::notes::channel(64);
        let udp = || Arc::new(UdpSocket::bind_for_thread("127.0.0.1:0".parse().unwrap()).unwrap());
        Shared {
            name: "t".into(),
            tables: RwLock::new(tables),
            ike: udp(),
            natt: udp(),
            drops: DropCounters::default(),
            to_control,
        }
    }

    /// Inbound traffic wakes the control task at most once a second per IKE
    /// SA: a ping at 5/s must not wake it for every packet (each wake-up
    /// lengthens the round trip), and each IKE SA still hears of its own.
    #[test]
    fn traffic_notes_come_at_most_once_a_second_per_ike_sa() {
        let t0 = Instant::now();
        let (to_control, mut notes) = crate::notes::channel(64);
        let shared = Shared {
            to_control,
            ..shared(Tables::default())
        };
        let mut inbound = Inbound::default();
        let ms = |n| t0 + Duration::from_millis(n);
        // a ping every 200 ms on IKE SA 1; IKE SA 2 joins at 400 ms
        for t in [0, 200, 400, 600, 800, 1000, 1200] {
            inbound.alive.clear();
            inbound.alive.push(1);
            if t >= 400 {
                inbound.alive.push(2);
            }
            inbound.notify(&shared, ms(t));
        }
        let heard: Vec<_> = std::iter::from_fn(|| notes.try_recv())
            .map(|m| match m {
                ToControl::Traffic { ike_sa } => ike_sa,
                _ => panic!("only traffic notes expected"),
            })
            .collect();
        // SA 1 at 0 and 1000 ms, SA 2 at 400 ms
        assert_eq!(heard, [1, 2, 1]);
    }

    /// The per-turn memo of the last destination must never seal one
    /// CHILD SA's packet under another's or send it to another's peer.
    #[test]
    fn interleaved_destinations_are_each_sealed_with_their_own_sa() {
        let now = Instant::now();
        let peer = |n: u8| SocketAddr::from((Ipv4Addr::new(192, 0, 2, n), 4500));
        let mut tables = Tables::default();
        for n in [1u8, 2] {
            let spi = 0x1000 + u32::from(n);
            let net = format!("198.51.100.{n}/32").parse().unwrap();
            tables.routes.insert(net, spi);
            let ob = state::Outbound {
                sa: sa(spi, Direction::Outbound, now),
                dst: peer(n),
                stats: Arc::new(ChildStats::default()),
            };
            tables.outbound.insert(spi, ob);
        }
        let set = [Arc::new(shared(tables))];
        let mut outbound = Outbound::new(1400);
        let dsts = [1u8, 1, 2, 1, 7, 2, 2, 1];
        for &d in &dsts {
            assert!(outbound.arena.batch.push(&test_ipv4(9, d)));
        }
        outbound.seal(&set);
        let expected: Vec<_> = (dsts.iter().enumerate())
            .filter(|&(_, &d)| d != 7)
            .map(|(i, &d)| (i, peer(d), 0))
            .collect();
        assert_eq!(outbound.out, expected);
        for &(i, _, _) in &outbound.out {
            let opener = sa(0x1000 + u32::from(dsts[i]), Direction::Inbound, now);
            let mut d = outbound.arena.batch.get(i).to_vec();
            let len = d.len();
            let mut p = PacketBuf::new(&mut d, 0, len);
            opener.open(now, &mut p).unwrap();
            assert_eq!(p.as_slice()[19], dsts[i]);
        }
    }

    /// The per-turn memo of the last SPI must never check one SA's packet
    /// against another's traffic selectors: two SAs interleaved, each
    /// spoofing the other's address right after a genuine packet from it.
    #[test]
    fn interleaved_sas_are_each_checked_against_their_own_selectors() {
        let now = Instant::now();
        let mut tables = Tables::default();
        for n in [1u8, 2] {
            let spi = 0x2000 + u32::from(n);
            let ib = state::Inbound {
                sa: sa(spi, Direction::Inbound, now),
                ike_sa: Default::default(),
                remote_ts: vec![format!("198.51.100.{n}/32").parse().unwrap()],
                stats: Arc::new(ChildStats::default()),
            };
            tables.inbound.insert(spi, ib);
        }
        let shared = shared(tables);
        let sealers = [
            sa(0x2001, Direction::Outbound, now),
            sa(0x2002, Direction::Outbound, now),
        ];
        // (SA, inner source, delivered)
        let packets = [
            (0, 1, true),
            (0, 1, true),
            (1, 2, true),
            (0, 2, false),
            (1, 1, false),
            (1, 2, true),
            (0, 1, true),
        ];
        let mut inbound = Inbound::default();
        let mut delivered = Vec::new();
        for (i, &(k, src, ok)) in packets.iter().enumerate() {
            let mut buf = vec![0u8; 512];
            buf[64..164].copy_from_slice(&test_ipv4(src, 9));
            let mut p = PacketBuf::new(&mut buf, 64, 164);
            sealers[k].seal(now, &mut p).unwrap();
            let d = p.as_slice().to_vec();
            inbound.udp_bufs[i][..d.len()].copy_from_slice(&d);
            let mut m = RecvMeta::default();
            m.addr = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 4500));
            m.len = d.len();
            m.stride = d.len();
            inbound.metas[i] = m;
            if ok {
                delivered.push(i);
            }
        }
        inbound.open(&shared, packets.len(), now);
        let opened: Vec<usize> = inbound.opened.iter().map(|&(i, _, _)| i).collect();
        assert_eq!(opened, delivered);
        assert_eq!(shared.drops.bad_source.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn every_transform_seals_in_the_arena() {
        let now = Instant::now();
        for mtu in [1280usize, 1400, 1420, 1421, 1500] {
            for t in Transform::ALL {
                let sa = EspSa::new(
                    SaParams::new(0x1234_5678, Direction::Outbound, t),
                    &vec![1u8; t.keymat_len()],
                    now,
                )
                .unwrap();
                let mut b = outbound_batch(mtu);
                // full packets and a short one, as a split TCP super-packet
                let sizes = [mtu, mtu, 100];
                let head = b.headroom();
                for slot in b.slot_buffers().take(sizes.len()) {
                    slot[head] = 0x45;
                }
                b.set_filled(head, &sizes);
                for (i, size) in sizes.into_iter().enumerate() {
                    b.with_packet(i, |p| sa.seal(now, p))
                        .unwrap_or_else(|e| panic!("{t:?} mtu {mtu}: {e:?}"));
                    assert_eq!(b.get(i).len(), size + t.overhead(size), "{t:?} mtu {mtu}");
                }
            }
        }
    }
}
