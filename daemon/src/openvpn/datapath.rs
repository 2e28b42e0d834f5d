//! The OpenVPN data path: TUN → P_DATA_V2 seal in place (batched) → UDP
//! (GSO runs) or TCP (16-bit framing); UDP/TCP → classify → control task,
//! or open in place → TUN write batch. Keepalive pings count as liveness
//! and are never written to the TUN.
//!
//! The TUN queues, the UDP sockets and the TCP connections
//! ([`super::tcp`]) are served by the data-path threads of
//! [`crate::threads`] ([`Turns`]: an [`Outbound`] turn per readable
//! queue, an inbound turn per readable socket).

use super::state::{Link, Shared, Tables, ToControl};
use super::tcp::{Ended, TcpBuffers, TcpLink};
use crate::datapath::DropCounters;
use crate::datapath::{dst_ip, recv_udp_now, reuse, RecvList, TunArena, TunRead};
use polytun_core::{KeyStatus, OpenError, PacketBatch, PacketBuf, PrefixTable};
use polytun_io::{RecvMeta, Tun, UdpSocket, UDP_RECV_BATCH, UDP_RECV_MAX_DATAGRAMS};
use polytun_openvpn::compress::{decompress, Compressor, FramingError, Room};
use polytun_openvpn::data::{
    occ_exit_payload, DataError, Opened, OCC_EXIT, OCC_MAGIC, OVERHEAD, PING_MAGIC,
};
use polytun_openvpn::framing::encode_frame;
use polytun_openvpn::packet::{split_op_byte, Opcode};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

const TUN_BATCH: usize = polytun_io::IDEAL_BATCH_SIZE;
pub(super) const UDP_BUF: usize = 65536;
/// Which tunnel of the set carries `dst`: the one whose routes contain
/// it, else the first with a key (a client's default).
fn pick(guards: &[Option<RwLockReadGuard<'_, Tables>>], dst: std::net::IpAddr) -> Option<usize> {
    if guards.len() == 1 {
        return Some(0);
    }
    let has = |f: &dyn Fn(&Tables) -> bool| guards.iter().position(|t| t.as_deref().is_some_and(f));
    has(&|t| t.routes.lookup(dst).is_some()).or_else(|| has(&|t| t.current.is_some()))
}

/// Tells the control task a key reached a soft limit (reported once per key).
fn key_expiring(shared: &Shared, key_id: u8) {
    if shared
        .to_control
        .try_send(ToControl::KeyExpiring(key_id))
        .is_err()
    {
        DropCounters::bump(&shared.drops.rate_limited);
    }
}

/// Sends one packet (control packets, pings) without waiting.
pub fn send_now(shared: &Shared, packet: &[u8]) -> bool {
    match shared.link().as_deref() {
        Some(Link::Udp(sock)) => sock.try_send_to(packet, shared.remote()).is_ok(),
        Some(Link::Tcp(t)) => {
            let mut out = Vec::with_capacity(packet.len() + 2);
            encode_frame(packet, &mut out).is_ok() && t.send(&out)
        }
        None => false,
    }
}

/// Seals and sends OpenVPN's keepalive ping with the current key.
pub fn send_ping(shared: &Shared, now: Instant) -> bool {
    send_payload(shared, now, &PING_MAGIC)
}

/// Sends explicit-exit-notify (OCC_EXIT in a data packet; UDP only).
pub fn send_exit_notify(shared: &Shared, now: Instant) -> bool {
    send_payload(shared, now, &occ_exit_payload())
}

fn send_payload(shared: &Shared, now: Instant, payload: &[u8]) -> bool {
    let Some(key) = shared.tables().current.clone() else {
        return false;
    };
    // (a byte before and after for the compression framing)
    let mut buf = [0u8; 1 + OVERHEAD + 32 + 1];
    let at = 1 + OVERHEAD;
    buf[at..at + payload.len()].copy_from_slice(payload);
    let mut p = PacketBuf::new(&mut buf, at, at + payload.len());
    if key.seal(now, &mut p).is_err() {
        return false;
    }
    let ok = send_now(shared, p.as_slice());
    if ok {
        shared.mark_tx(now);
    }
    ok
}

/// The sessions TUN packets may go to, as one batch sees them.
#[derive(Default)]
pub struct Routing {
    pub sessions: Vec<Arc<Shared>>,
    /// A server's table: inner destination → index into `sessions`. Without
    /// it, the session whose routes contain the destination (client tunnels).
    pub by_dst: Option<PrefixTable<usize>>,
    /// What compression framing needs around a packet: a server's follows
    /// from its settings; None for client tunnels, whose framing the push
    /// decides (read from their current keys each turn).
    pub room: Option<Room>,
}

/// The room the framings of `sessions`' current keys need.
fn keys_room(sessions: &[Arc<Shared>]) -> Room {
    sessions.iter().fold(Room::default(), |r, s| {
        let k = s.tables().current.as_ref().map(|k| k.framing.room());
        k.map_or(r, |k| r.union(k))
    })
}

/// What the outbound turns route by: replaced as a whole when a session
/// comes or goes (a turn takes the current one with an `Arc` clone and
/// holds no lock while it sends).
pub type Routes = Arc<RwLock<Arc<Routing>>>;

/// Adds a client tunnel's session to an interface's routes.
pub fn add_client(routes: &Routes, shared: Arc<Shared>) {
    let mut r = routes.write().unwrap_or_else(|e| e.into_inner());
    let mut sessions = r.sessions.clone();
    sessions.push(shared);
    *r = Arc::new(Routing {
        sessions,
        by_dst: None,
        room: None,
    });
}

/// Removes a client tunnel's session from an interface's routes.
pub fn remove_client(routes: &Routes, shared: &Arc<Shared>) {
    let mut r = routes.write().unwrap_or_else(|e| e.into_inner());
    let sessions = r
        .sessions
        .iter()
        .filter(|s| !Arc::ptr_eq(s, shared))
        .cloned()
        .collect();
    *r = Arc::new(Routing {
        sessions,
        by_dst: None,
        room: None,
    });
}

/// The outbound arena: P_DATA_V2's header and its leading AEAD tag
/// (`OVERHEAD`) in front of each packet and, with a compression framing,
/// its byte in front (`FRONT`) or behind (`BACK`). Nothing more: sealed
/// full-size packets then lie back to back and leave as one iovec.
fn outbound_batch<const FRONT: usize, const BACK: usize>(mtu: usize) -> PacketBatch {
    PacketBatch::new(TUN_BATCH, OVERHEAD + FRONT, mtu, BACK)
}

fn layout(room: Room) -> fn(usize) -> PacketBatch {
    match (room.front > 0, room.back > 0) {
        (false, false) => outbound_batch::<0, 0>,
        (true, false) => outbound_batch::<1, 0>,
        (false, true) => outbound_batch::<0, 1>,
        (true, true) => outbound_batch::<1, 1>,
    }
}

/// The outbound half of the data path: TUN → session → seal in place →
/// UDP (gathered GSO sends) or TCP (framed into one write), one batch a
/// turn.
pub struct Outbound {
    arena: TunArena,
    /// (slot, session) of each sealed packet.
    sealed: Vec<(usize, usize)>,
    errors: u64,
    /// Allocations of the per-turn lists of borrows (see `datapath::reuse`).
    spare_guards: Vec<Option<RwLockReadGuard<'static, Tables>>>,
    spare_slices: Vec<IoSlice<'static>>,
    /// A batch framed for a TCP connection.
    frames: Vec<u8>,
    /// The compression framing room the arena is laid out with.
    room: Room,
}

impl Outbound {
    pub fn new(mtu: usize) -> Self {
        Outbound {
            // (OVERHEAD has the tag; 2: the TCP transport's length prefix;
            // 1: a compression framing byte)
            arena: TunArena::new(mtu, 2 + OVERHEAD + 1, layout(Room::default())),
            sealed: Vec::with_capacity(TUN_BATCH),
            errors: 0,
            spare_guards: Vec::with_capacity(crate::datapath::GUARDS),
            spare_slices: Vec::with_capacity(TUN_BATCH),
            frames: Vec::new(),
            room: Room::default(),
        }
    }

    /// Reads one batch from `tun` and sends each packet through the
    /// session `routes` picks; false when nothing was queued.
    pub fn turn(&mut self, tun: &Tun, routes: &Routes) -> bool {
        let r = routes.read().unwrap_or_else(|e| e.into_inner()).clone();
        // Laid out again before a read, never under packets read.
        let room = r.room.unwrap_or_else(|| keys_room(&r.sessions));
        if room != self.room {
            self.room = room;
            self.arena.set_layout(layout(room));
        }
        match self.arena.read(tun) {
            TunRead::Packets => {}
            TunRead::Empty => return false,
            TunRead::Retry => return true,
        }
        if r.sessions.is_empty() {
            return true;
        }
        let now = Instant::now();
        self.seal(&r, now);
        self.send(&r.sessions, now);
        crate::datapath::hand_over_lone(self.sealed.len());
        true
    }

    /// Seals every packet with its session's current key in place.
    fn seal(&mut self, r: &Routing, now: Instant) {
        let (batch, set) = (&mut self.arena.batch, &r.sessions);
        self.sealed.clear();
        // A server locks only the sessions this batch uses.
        let mut guards: Vec<Option<RwLockReadGuard<'_, Tables>>> =
            reuse(std::mem::take(&mut self.spare_guards));
        match r.by_dst {
            None => guards.extend(set.iter().map(|s| Some(s.tables()))),
            Some(_) => guards.extend(set.iter().map(|_| None)),
        }
        // The previous packet's destination and its session: a batch (a
        // super-packet's segments above all) is mostly one flow's.
        let mut last = None;
        for i in 0..batch.len() {
            let Some(dst) = dst_ip(batch.get(i)) else {
                continue;
            };
            let ti = match last {
                Some((d, ti)) if d == dst => ti,
                _ => {
                    let ti = match &r.by_dst {
                        Some(t) => t.lookup(dst).copied().filter(|&ti| ti < set.len()),
                        None => pick(&guards, dst),
                    };
                    last = Some((dst, ti));
                    ti
                }
            };
            let Some(ti) = ti else {
                continue;
            };
            let shared = &set[ti];
            let tables = guards[ti].get_or_insert_with(|| shared.tables());
            let Some(key) = tables.current.as_ref() else {
                DropCounters::bump(&shared.drops.no_session);
                continue;
            };
            let size = batch.get(i).len();
            match batch.with_packet(i, |p| key.seal(now, p)) {
                Ok(st) => {
                    if st == KeyStatus::Expiring {
                        key_expiring(shared, key.key_id);
                    }
                    shared.tx_bytes.fetch_add(size as u64, Ordering::Relaxed);
                    self.sealed.push((i, ti));
                }
                Err(_) => DropCounters::bump(&shared.drops.expired_key),
            }
        }
        self.spare_guards = reuse(guards);
    }

    /// Sends the sealed packets per session, each session's in TUN order.
    fn send(&mut self, set: &[Arc<Shared>], now: Instant) {
        // By session, then slot: each session's packets keep their order
        // (an unstable sort never allocates).
        self.sealed.sort_unstable_by_key(|&(i, ti)| (ti, i));
        let (batch, sealed) = (&self.arena.batch, &self.sealed);
        let mut run: Vec<IoSlice<'_>> = reuse(std::mem::take(&mut self.spare_slices));
        for slots in sealed.chunk_by(|a, b| a.1 == b.1) {
            let shared = &set[slots[0].1];
            let Some(link) = shared.link() else {
                DropCounters::bump(&shared.drops.no_session);
                continue;
            };
            shared.mark_tx(now);
            match &*link {
                Link::Udp(sock) => {
                    let dst = shared.remote();
                    // Each run of datagrams of one size (the last may be
                    // shorter) leaves gathered from its slots in GSO sends.
                    let mut k = 0;
                    while k < slots.len() {
                        let j =
                            crate::datapath::equal_size_run(slots, k, |&(i, _)| Some(batch.get(i)));
                        run.clear();
                        run.extend(slots[k..j].iter().map(|&(i, _)| IoSlice::new(batch.get(i))));
                        if let Err(e) = sock.send_gathered_now(dst, &run) {
                            self.errors += 1;
                            if self.errors.is_power_of_two() {
                                tracing::debug!("{}: udp send to {dst}: {e}", shared.name);
                            }
                        }
                        k = j;
                    }
                }
                Link::Tcp(t) => {
                    self.frames.clear();
                    for &(i, _) in slots {
                        let _ = encode_frame(batch.get(i), &mut self.frames);
                    }
                    if !t.send(&self.frames) {
                        DropCounters::bump(&shared.drops.other);
                    }
                }
            }
        }
        self.spare_slices = reuse(run);
    }
}

/// What one received data packet turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rx {
    /// An IP packet, queued for the TUN.
    Queued,
    /// Authenticated, nothing for the TUN (keepalive ping, empty, OCC).
    Consumed,
    /// OCC_EXIT: the peer's explicit-exit-notify.
    Exit,
    /// Not authenticated or not for a key we have (counted).
    Dropped,
}

/// One received P_DATA packet (a UDP datagram or a TCP frame) in the
/// buffer it was received or staged in, `buf[start..]`, and opened there:
/// the TUN write takes the plaintext where it lies.
pub struct Dg<'a> {
    buf: &'a mut [u8],
    start: usize,
    /// Which receive buffer `buf` is (for the TUN write).
    index: usize,
}

impl<'a> Dg<'a> {
    pub(super) fn new(buf: &'a mut [u8], start: usize, index: usize) -> Self {
        Self { buf, start, index }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Collects the packets opened in place in a batch of receive buffers and
/// writes them to the TUN device together (`datapath::write_opened`).
#[derive(Default)]
pub struct TunWriter {
    /// (buffer, base, plaintext end) of each packet, in buffer order; the
    /// plaintext starts OVERHEAD bytes after the base, which is its
    /// datagram's start, or a byte or two past it (compression framing).
    opened: Vec<(usize, usize, usize)>,
    errors: u64,
    /// The allocation of the write's list of packets (`datapath::write_opened`).
    spare: Vec<&'static mut [u8]>,
    /// Packets the peer compressed, decompressed here back to back, each
    /// after OVERHEAD bytes for the TUN write's header (allocated with the
    /// first; a session without compression never touches it).
    inflated: Vec<u8>,
    /// Where each lies in `inflated`, and where it goes among `opened`
    /// (written in that order).
    inflated_at: Vec<Inflated>,
}

/// One decompressed packet of a [`TunWriter`].
#[derive(Clone, Copy)]
struct Inflated {
    /// Its place in the writer's `opened`: written after `opened[..at]`.
    at: usize,
    start: usize,
    end: usize,
    /// The datagram it came in (`Dg`'s index and start).
    from: (usize, usize),
}

/// The most a packet decompresses to (OpenVPN's frame is the TUN MTU and
/// some; a larger result is refused, so nothing expands without bound).
const MAX_INFLATED: usize = 16 * 1024;
/// The most a turn's decompressed packets take before more are dropped.
const MAX_INFLATED_TURN: usize = 4 << 20;

impl TunWriter {
    /// A writer whose lists hold `packets` packets without growing (a
    /// batched UDP receive: [`UDP_RECV_MAX_DATAGRAMS`]).
    pub(super) fn with_capacity(packets: usize) -> Self {
        TunWriter {
            opened: Vec::with_capacity(packets),
            errors: 0,
            spare: Vec::with_capacity(packets),
            inflated: Vec::new(),
            inflated_at: Vec::new(),
        }
    }

    /// Classifies one packet from the server: data is opened in place,
    /// control packets go to the control task.
    fn handle(&mut self, shared: &Shared, tables: &Tables, d: &mut Dg<'_>, now: Instant) {
        let Some(&first) = d.bytes().first() else {
            DropCounters::bump(&shared.drops.malformed);
            return;
        };
        let Ok((op, key_id)) = split_op_byte(first) else {
            DropCounters::bump(&shared.drops.malformed);
            return;
        };
        match op {
            Opcode::DataV2 => {
                if self.open(shared, tables, key_id, d, now) == Rx::Exit {
                    let _ = shared.to_control.try_send(ToControl::ServerExit);
                }
            }
            Opcode::DataV1 => DropCounters::bump(&shared.drops.other),
            _ => {
                if shared
                    .to_control
                    .try_send(ToControl::Control(d.bytes().to_vec()))
                    .is_err()
                {
                    DropCounters::bump(&shared.drops.rate_limited);
                }
            }
        }
    }

    /// Opens one P_DATA_V2 packet of `shared`'s session (key `key_id`)
    /// where it lies and queues it for the TUN; liveness and counters are
    /// updated here.
    pub(super) fn open(
        &mut self,
        shared: &Shared,
        tables: &Tables,
        key_id: u8,
        d: &mut Dg<'_>,
        now: Instant,
    ) -> Rx {
        let Some(key) = tables.keys[usize::from(key_id & 7)].as_ref() else {
            DropCounters::bump(&shared.drops.no_session);
            return Rx::Dropped;
        };
        let end = d.buf.len();
        let mut p = PacketBuf::new(d.buf, d.start, end);
        let opened = key.open(now, &mut p);
        if let Ok(Opened::Packet(KeyStatus::Expiring) | Opened::Ping(KeyStatus::Expiring)) = opened
        {
            key_expiring(shared, key_id);
        }
        match opened {
            Ok(Opened::Packet(_)) => {
                shared.mark_rx(now);
                if p.is_empty() {
                    return Rx::Consumed;
                }
                if p.as_slice().starts_with(&OCC_MAGIC) {
                    // OCC, not an IP packet: only EXIT matters here.
                    if p.as_slice().get(16) == Some(&OCC_EXIT) {
                        return Rx::Exit;
                    }
                    return Rx::Consumed;
                }
                // The TUN write puts its header in the OVERHEAD bytes
                // before the plaintext, which a framing byte taken off
                // moved on (it never moves back).
                let Some(base) = p.start().checked_sub(OVERHEAD).filter(|b| *b >= d.start) else {
                    DropCounters::bump(&shared.drops.malformed);
                    return Rx::Dropped;
                };
                shared.rx_bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                self.opened.push((d.index, base, p.start() + p.len()));
                Rx::Queued
            }
            Ok(Opened::Ping(_)) => {
                shared.mark_rx(now);
                shared.pings_rx.fetch_add(1, Ordering::Relaxed);
                Rx::Consumed
            }
            Ok(Opened::Compressed(algo, _)) => {
                shared.mark_rx(now);
                match self.inflate(algo, p.as_slice(), (d.index, d.start)) {
                    Ok(Some(n)) => {
                        shared.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        Rx::Queued
                    }
                    Ok(None) => Rx::Consumed,
                    Err(e) => {
                        shared.framing_refused(e);
                        DropCounters::bump(&shared.drops.malformed);
                        Rx::Dropped
                    }
                }
            }
            Err(e) => {
                let c = match e {
                    DataError::Open(OpenError::Replay(_)) => &shared.drops.replayed,
                    DataError::Open(OpenError::Auth) => &shared.drops.bad_mac,
                    DataError::Open(OpenError::Expired(_)) => &shared.drops.expired_key,
                    DataError::NotForThisKey(_) => &shared.drops.no_session,
                    DataError::Framing(f) => {
                        shared.framing_refused(f);
                        &shared.drops.malformed
                    }
                    _ => &shared.drops.malformed,
                };
                DropCounters::bump(c);
                Rx::Dropped
            }
        }
    }

    /// Decompresses `input` (from datagram `from`) and queues it after the
    /// packets queued so far; its length, or None for nothing to write
    /// (an empty packet, a keepalive ping, an OCC message).
    fn inflate(
        &mut self,
        algo: Compressor,
        input: &[u8],
        from: (usize, usize),
    ) -> Result<Option<usize>, FramingError> {
        let start = self.inflated.len();
        if start > MAX_INFLATED_TURN {
            return Err(FramingError::Decompress(algo));
        }
        self.inflated.resize(start + OVERHEAD + MAX_INFLATED, 0);
        let r = decompress(algo, input, &mut self.inflated[start + OVERHEAD..]);
        let n = *r.as_ref().unwrap_or(&0);
        self.inflated.truncate(start + OVERHEAD + n);
        let packet = &self.inflated[start + OVERHEAD..];
        if r.is_err() || packet.is_empty() || packet.starts_with(&OCC_MAGIC) || packet == PING_MAGIC
        {
            self.inflated.truncate(start);
            return r.map(|_| None);
        }
        self.inflated_at.push(Inflated {
            at: self.opened.len(),
            start,
            end: start + OVERHEAD + n,
            from,
        });
        Ok(Some(n))
    }

    /// The decompressed packet queued last, if it is the last queued.
    fn last_inflated(&self) -> Option<&Inflated> {
        self.inflated_at
            .last()
            .filter(|x| x.at == self.opened.len())
    }

    /// The plaintext of the packet queued last, if it was `d`'s (to check
    /// its inner source).
    pub(super) fn last<'s>(&'s self, d: &'s Dg<'_>) -> Option<&'s [u8]> {
        if let Some(x) = self.last_inflated() {
            return (x.from == (d.index, d.start))
                .then(|| &self.inflated[x.start + OVERHEAD..x.end]);
        }
        let &(i, base, end) = self.opened.last()?;
        // (an earlier datagram's base in the same buffer lies before d's start)
        (i == d.index && base >= d.start).then(|| &d.buf[base + OVERHEAD..end])
    }

    /// Takes back the packet queued last.
    pub(super) fn unqueue(&mut self) {
        if let Some(x) = self.last_inflated().copied() {
            self.inflated_at.pop();
            self.inflated.truncate(x.start);
        } else {
            self.opened.pop();
        }
    }

    /// Writes what was queued from `bufs` to the TUN device.
    pub(super) fn flush(&mut self, tun: &Tun, bufs: &mut [Vec<u8>], shared: &Shared) {
        // Decompressed packets go between the runs written in place, in
        // the order they came.
        let mut from = 0;
        for x in &self.inflated_at {
            crate::datapath::write_opened(
                tun,
                bufs,
                &self.opened[from..x.at],
                OVERHEAD,
                &mut self.errors,
                &shared.name,
                &mut self.spare,
            );
            let mut one = [&mut self.inflated[x.start..x.end]];
            if let Err(e) = tun.send_gathered_now(&mut one, OVERHEAD) {
                self.errors += 1;
                if self.errors.is_power_of_two() {
                    tracing::debug!("{}: writing to the tun device: {e}", shared.name);
                }
            }
            from = x.at;
        }
        crate::datapath::write_opened(
            tun,
            bufs,
            &self.opened[from..],
            OVERHEAD,
            &mut self.errors,
            &shared.name,
            &mut self.spare,
        );
        crate::datapath::hand_over_lone(self.opened.len() + self.inflated_at.len());
        self.opened.clear();
        self.inflated_at.clear();
        self.inflated.clear();
    }
}

/// The datagrams of one batched receive (GRO runs split at their stride),
/// each in the buffer it was received in, with its (canonical) source.
pub(super) fn each_datagram(
    bufs: &mut [Vec<u8>],
    metas: &[RecvMeta],
    mut f: impl FnMut(&mut Dg<'_>, SocketAddr),
) {
    for (i, m) in metas.iter().enumerate() {
        let stride = if m.stride == 0 { m.len } else { m.stride };
        let len = m.len.min(UDP_BUF);
        let src = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
        for start in (0..len).step_by(stride.max(1)) {
            let end = (start + stride).min(len);
            f(&mut Dg::new(&mut bufs[i][..end], start, i), src);
        }
    }
}

/// A socket the data-path threads receive on, and whose packets they are:
/// a client tunnel's UDP socket ([`ClientSocket`]) or TCP connection
/// ([`ClientTcp`]), a server's socket or one of its connections.
pub trait Receive: Send + Sync {
    /// One inbound turn: receive one batch, hand it on, write what was
    /// opened to `tun`.
    fn receive(&self, inbound: &mut Inbound, tun: &Tun);
    /// The socket is writable again (a TCP connection with bytes queued).
    fn writable(&self) {}
}

/// A registered socket as the data-path threads know it.
pub type Receiver = Arc<dyn Receive>;
pub type Poller = crate::threads::Poller<Receiver>;
pub type DataPath = crate::threads::DataPath<Receiver>;

/// A client tunnel's UDP socket: datagrams from its server only.
pub struct ClientSocket {
    pub shared: Arc<Shared>,
    pub socket: Arc<UdpSocket>,
}

impl Receive for ClientSocket {
    fn receive(&self, inbound: &mut Inbound, tun: &Tun) {
        let shared = &*self.shared;
        inbound.udp(tun, &self.socket, shared, |w, bufs, metas, now| {
            let (tables, remote) = (shared.tables(), shared.remote());
            each_datagram(bufs, metas, |d, src| {
                if src != remote {
                    // A client talks to its server only.
                    DropCounters::bump(&shared.drops.bad_source);
                    return;
                }
                w.handle(shared, &tables, d, now);
            });
        });
    }
}

/// A client tunnel's TCP connection (number `conn`, the attempt that made it).
pub struct ClientTcp {
    pub shared: Arc<Shared>,
    pub link: Arc<TcpLink>,
    pub conn: u64,
    pub ended: Ended,
}

impl Receive for ClientTcp {
    fn receive(&self, inbound: &mut Inbound, tun: &Tun) {
        let shared = &*self.shared;
        // (once per turn, as over UDP and on the server)
        let tables = shared.tables();
        let r = inbound.tcp(tun, &self.link, shared, "the server", |w, d, now| {
            w.handle(shared, &tables, d, now)
        });
        drop(tables);
        if let Err(why) = r {
            let _ = self.ended.send((self.conn, why));
        }
    }

    fn writable(&self) {
        self.link.writable();
    }
}

/// The inbound half of the data path: a socket → classify → open in
/// place → TUN, one receive batch a turn. One per thread, for all its
/// sockets (their turns never overlap).
pub struct Inbound {
    udp_bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    w: TunWriter,
    errors: u64,
    /// The allocation of the per-turn iovec list (see `datapath::reuse`).
    recv: RecvList,
    /// Made with the first TCP connection's turn.
    tcp: Option<TcpBuffers>,
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound {
            udp_bufs: (0..UDP_RECV_BATCH).map(|_| vec![0u8; UDP_BUF]).collect(),
            metas: vec![RecvMeta::default(); UDP_RECV_BATCH],
            w: TunWriter::with_capacity(UDP_RECV_MAX_DATAGRAMS),
            errors: 0,
            recv: RecvList::new(UDP_RECV_BATCH),
            tcp: None,
        }
    }
}

impl Inbound {
    /// Receives one batch on `socket` (of `shared`'s tunnel), hands it to
    /// `handle` and writes what was opened to `tun`.
    pub fn udp(
        &mut self,
        tun: &Tun,
        socket: &UdpSocket,
        shared: &Shared,
        handle: impl FnOnce(&mut TunWriter, &mut [Vec<u8>], &[RecvMeta], Instant),
    ) {
        let Some(n) = recv_udp_now(
            socket,
            &mut self.udp_bufs,
            &mut self.metas,
            &mut self.recv,
            &mut self.errors,
            &shared.name,
        ) else {
            return;
        };
        let now = Instant::now();
        handle(&mut self.w, &mut self.udp_bufs, &self.metas[..n], now);
        self.w.flush(tun, &mut self.udp_bufs, shared);
    }

    /// One read of `link` (of `shared`'s tunnel, `peer` at the other end):
    /// each complete frame goes to `each`, what was opened to `tun`.
    /// `Err(why)` when the connection ended.
    pub fn tcp(
        &mut self,
        tun: &Tun,
        link: &TcpLink,
        shared: &Shared,
        peer: &str,
        each: impl FnMut(&mut TunWriter, &mut Dg<'_>, Instant),
    ) -> Result<(), String> {
        let bufs = self.tcp.get_or_insert_with(TcpBuffers::default);
        super::tcp::receive(link, bufs, &mut self.w, tun, shared, peer, each)
    }
}

/// What one OpenVPN data-path thread runs.
pub struct Turns {
    outbound: Outbound,
    /// One receive arena for all sockets: their turns never overlap.
    inbound: Option<Inbound>,
    routes: Routes,
}

impl Turns {
    /// The threads (`ovpn-data-N`) of an interface whose sessions are `routes`.
    pub fn spawn(tun: Arc<Tun>, routes: Routes, mtu: usize) -> std::io::Result<DataPath> {
        DataPath::spawn("ovpn", tun, move || Turns {
            outbound: Outbound::new(mtu),
            inbound: None,
            routes: routes.clone(),
        })
    }
}

impl crate::threads::Turns for Turns {
    type Receiver = Receiver;

    fn outbound(&mut self, queue: &Tun) {
        self.outbound.turn(queue, &self.routes);
    }

    fn inbound(&mut self, tun: &Tun, r: &Receiver) {
        r.receive(self.inbound.get_or_insert_with(Inbound::default), tun);
    }

    fn writable(&mut self, r: &Receiver) {
        r.writable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::test_ipv4;
    use polytun_io::TunConfig;
    use std::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// Runs `f` on a thread of its own in a network namespace of its own
    /// (a TUN device made there vanishes with it).
    fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: unshare affects this thread's network namespace only.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    /// The per-turn memo of the last destination must never seal one
    /// client's packet with another's key: a server's routes, destinations
    /// of two clients interleaved, and one with no client.
    #[test]
    fn interleaved_destinations_are_each_sealed_for_their_own_client() {
        use polytun_openvpn::data::{Cipher, DataChannelKey, DataKeys};
        let now = Instant::now();
        let remote: SocketAddr = "192.0.2.1:1194".parse().unwrap();
        let mut by_dst = polytun_core::PrefixTable::new();
        let mut sessions = Vec::new();
        for n in [1u8, 2] {
            let (to_control, _) = crate::notes::channel(8);
            let shared = Arc::new(Shared::new(format!("c{n}"), remote, to_control));
            let mut ekm = [n; polytun_openvpn::tls::EKM_LEN];
            ekm[0] ^= 0x55;
            let keys = DataKeys::from_ekm(&ekm, true);
            let key = DataChannelKey::new(
                &keys,
                Cipher::Aes256Gcm,
                0,
                u32::from(n) * 7,
                Default::default(),
                now,
            );
            let mut t = shared.tables_mut();
            t.install(Arc::new(key));
            t.send_with(0);
            drop(t);
            by_dst.insert(
                format!("198.51.100.{n}/32").parse().unwrap(),
                sessions.len(),
            );
            sessions.push(shared);
        }
        let routing = Routing {
            sessions,
            by_dst: Some(by_dst),
            room: None,
        };
        let mut outbound = Outbound::new(1400);
        let dsts = [1u8, 1, 2, 1, 7, 2, 2, 1];
        for &d in &dsts {
            assert!(outbound.arena.batch.push(&test_ipv4(9, d)));
        }
        outbound.seal(&routing, now);
        let expected: Vec<_> = (dsts.iter().enumerate())
            .filter(|&(_, &d)| d != 7)
            .map(|(i, &d)| (i, usize::from(d) - 1))
            .collect();
        assert_eq!(outbound.sealed, expected);
        // P_DATA_V2 carries the client's peer-id in bytes 1..4
        for &(i, ti) in &outbound.sealed {
            let b = outbound.arena.batch.get(i);
            let peer_id = u32::from_be_bytes([0, b[1], b[2], b[3]]);
            assert_eq!(peer_id, (ti as u32 + 1) * 7, "slot {i}");
        }
    }

    /// A control queue filled by a flood of control packets must not
    /// swallow the end of the TCP connection: the session would stay on a
    /// dead connection until its ping-restart.
    #[test]
    fn a_connection_end_is_reported_even_with_the_control_queue_full() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let remote = listener.local_addr().unwrap();
        let client = TcpStream::connect(remote).unwrap();
        let (server, _) = listener.accept().unwrap();
        in_private_netns(move || {
            let tun = Tun::create_for_thread(&TunConfig {
                name: "ptend0".into(),
                mtu: 1420,
                offload: false,
                up: false,
                queues: 1,
            })
            .unwrap();
            let poller = Arc::new(Poller::new().unwrap());
            let link = Arc::new(TcpLink::new(client, &poller).unwrap());
            let (to_control, _from_data) = crate::notes::channel(1);
            to_control.try_send(ToControl::ServerExit).unwrap();
            let shared = Arc::new(Shared::new("t".into(), remote, to_control));
            let (ended, mut reports) = mpsc::unbounded_channel();
            let receiver = ClientTcp {
                shared,
                link,
                conn: 7,
                ended,
            };
            drop(server);
            let mut inbound = Inbound::default();
            let deadline = Instant::now() + std::time::Duration::from_secs(5);
            let (conn, why) = loop {
                receiver.receive(&mut inbound, &tun);
                if let Ok(r) = reports.try_recv() {
                    break r;
                }
                assert!(
                    Instant::now() < deadline,
                    "the connection's end was never reported"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            assert_eq!(conn, 7);
            assert!(why.contains("closed the TCP connection"), "{why}");
        });
    }
}
