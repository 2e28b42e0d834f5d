//! The OpenVPN data path: TUN → P_DATA_V2 seal in place (batched) → UDP
//! (GSO runs) or TCP (16-bit framing); UDP/TCP → classify → control task,
//! or open in place in 64 KiB TUN slots → TUN write batch. Keepalive pings
//! count as liveness and are never written to the TUN.

use super::state::{Link, Shared, Tables, ToControl, TunnelSet};
use crate::datapath::DropCounters;
use crate::datapath::{dst_ip, reuse};
use polytun_core::{KeyStatus, OpenError, PacketBatch, PacketBuf, PrefixTable};
use polytun_io::{RecvMeta, Tun, UDP_RECV_BATCH, UDP_RECV_MAX_DATAGRAMS};
use polytun_openvpn::data::{
    occ_exit_payload, DataError, Opened, OCC_EXIT, OCC_MAGIC, OVERHEAD, PING_MAGIC,
};
use polytun_openvpn::framing::{encode_frame, FrameDecoder};
use polytun_openvpn::packet::{split_op_byte, Opcode, DATA_TAG_LEN};
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncReadExt;

const TUN_BATCH: usize = polytun_io::IDEAL_BATCH_SIZE;
pub(super) const UDP_BUF: usize = 65536;
/// Where TCP frames are opened: they are copied out of the stream's
/// decoder (which keeps partial frames) back to back, and written from
/// here when the next frame might not fit.
const FRAME_STAGE: usize = 512 * 1024;

/// Which tunnel of the set carries `dst`: the one whose routes contain
/// it, else the first with a key (a client's default).
fn pick(
    guards: &[Option<std::sync::RwLockReadGuard<'_, Tables>>],
    dst: std::net::IpAddr,
) -> Option<usize> {
    if guards.len() == 1 {
        return Some(0);
    }
    let has = |f: &dyn Fn(&Tables) -> bool| guards.iter().position(|t| t.as_deref().is_some_and(f));
    has(&|t| t.routes.lookup(dst).is_some()).or_else(|| has(&|t| t.current.is_some()))
}

/// Sends one session's sealed packets (`slots` of `batch`, in order). Over
/// UDP each run of datagrams of one size (the last may be shorter) leaves
/// gathered from its slots in GSO sends, without a copy; over TCP they are
/// framed into one buffer for the connection's writer task.
async fn send_sealed(
    shared: &Shared,
    link: &Link,
    batch: &PacketBatch,
    slots: &[(usize, usize)],
    run: &mut Vec<IoSlice<'static>>,
) {
    match link {
        Link::Udp(sock) => {
            let destination = shared.remote();
            let mut slices: Vec<IoSlice<'_>> = reuse(std::mem::take(run));
            let mut k = 0;
            while k < slots.len() {
                let j = crate::datapath::equal_size_run(slots, k, |&(i, _)| Some(batch.get(i)));
                slices.clear();
                slices.extend(slots[k..j].iter().map(|&(i, _)| IoSlice::new(batch.get(i))));
                if let Err(e) = sock.send_gathered(destination, &slices).await {
                    tracing::debug!("{}: udp send: {e}", shared.name);
                }
                k = j;
            }
            *run = reuse(slices);
        }
        Link::Tcp(tx) => {
            let len = slots.iter().map(|&(i, _)| batch.get(i).len() + 2).sum();
            let mut out = Vec::with_capacity(len);
            for &(i, _) in slots {
                let _ = encode_frame(batch.get(i), &mut out);
            }
            if tx.send(out).await.is_err() {
                DropCounters::bump(&shared.drops.other);
            }
        }
    }
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
        Some(Link::Tcp(tx)) => {
            let mut out = Vec::with_capacity(packet.len() + 2);
            encode_frame(packet, &mut out).is_ok() && tx.try_send(out).is_ok()
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
    let mut buf = [0u8; OVERHEAD + 32 + DATA_TAG_LEN];
    buf[OVERHEAD..OVERHEAD + payload.len()].copy_from_slice(payload);
    let mut p = PacketBuf::new(&mut buf, OVERHEAD, OVERHEAD + payload.len());
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
}

/// Reads the TUN device forever and sends each packet through the OpenVPN
/// client tunnel it routes to.
pub async fn tun_to_net(tun: Arc<Tun>, tunnels: TunnelSet, mtu: usize) {
    tun_loop(tun, mtu, move || {
        Arc::new(Routing {
            sessions: tunnels.read().unwrap_or_else(|e| e.into_inner()).clone(),
            by_dst: None,
        })
    })
    .await
}

/// The outbound arena: P_DATA_V2's header and its leading AEAD tag
/// (`OVERHEAD`) in front of each packet, nothing behind.
fn outbound_batch(mtu: usize) -> PacketBatch {
    PacketBatch::new(TUN_BATCH, OVERHEAD, mtu, 0)
}

/// Reads the TUN device forever; `routing()` (called once per batch) says
/// which session carries each packet. Packets are sealed in place with
/// that session's current key and sent per session in one batch.
pub async fn tun_loop(tun: Arc<Tun>, mtu: usize, routing: impl Fn() -> Arc<Routing>) {
    let mut mtu = mtu;
    let mut batch = outbound_batch(mtu);
    let mut sizes = vec![0usize; TUN_BATCH];
    let mut sealed: Vec<(usize, usize)> = Vec::with_capacity(TUN_BATCH); // (slot, session)
    let mut run: Vec<IoSlice<'static>> = Vec::with_capacity(TUN_BATCH);
    let mut errors = 0u64;
    loop {
        if !crate::datapath::read_tun(&tun, &mut batch, &mut sizes, &mut errors).await {
            // (OVERHEAD has the tag; 2: the TCP transport's length prefix)
            let overhead = 2 + OVERHEAD;
            if let Some(m) = crate::datapath::raised_mtu(&tun, mtu, overhead) {
                mtu = m;
                batch = outbound_batch(mtu);
            }
            continue;
        }
        let now = Instant::now();
        let r = routing();
        let set = &r.sessions;
        if set.is_empty() {
            continue;
        }
        sealed.clear();
        {
            // A server locks only the sessions this batch uses.
            let mut guards: Vec<Option<std::sync::RwLockReadGuard<'_, Tables>>> = match r.by_dst {
                None => set.iter().map(|s| Some(s.tables())).collect(),
                Some(_) => set.iter().map(|_| None).collect(),
            };
            for i in 0..batch.len() {
                let Some(dst) = dst_ip(batch.get(i)) else {
                    continue;
                };
                let ti = match &r.by_dst {
                    Some(t) => t.lookup(dst).copied().filter(|&ti| ti < set.len()),
                    None => pick(&guards, dst),
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
                        sealed.push((i, ti));
                    }
                    Err(_) => DropCounters::bump(&shared.drops.expired_key),
                }
            }
        }
        // stable: each session's packets keep their order
        sealed.sort_by_key(|s| s.1);
        for slots in sealed.chunk_by(|a, b| a.1 == b.1) {
            let shared = &set[slots[0].1];
            let Some(link) = shared.link() else {
                DropCounters::bump(&shared.drops.no_session);
                continue;
            };
            shared.mark_tx(now);
            send_sealed(shared, &link, &batch, slots, &mut run).await;
        }
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
pub(super) struct Dg<'a> {
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
pub(super) struct TunWriter {
    /// (buffer, datagram start, plaintext end) of each packet, in buffer
    /// order; the plaintext starts OVERHEAD bytes into its datagram.
    opened: Vec<(usize, usize, usize)>,
    errors: u64,
    /// The allocation of the write's list of packets (`datapath::write_opened`).
    spare: Vec<&'static mut [u8]>,
}

impl TunWriter {
    /// A writer whose lists hold `packets` packets without growing (a
    /// batched UDP receive: [`UDP_RECV_MAX_DATAGRAMS`]).
    fn with_capacity(packets: usize) -> Self {
        TunWriter {
            opened: Vec::with_capacity(packets),
            errors: 0,
            spare: Vec::with_capacity(packets),
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
                if p.start() != d.start + OVERHEAD {
                    // the TUN write puts its header in the OVERHEAD bytes
                    DropCounters::bump(&shared.drops.malformed);
                    return Rx::Dropped;
                }
                shared.rx_bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                self.opened.push((d.index, d.start, p.start() + p.len()));
                Rx::Queued
            }
            Ok(Opened::Ping(_)) => {
                shared.mark_rx(now);
                shared.pings_rx.fetch_add(1, Ordering::Relaxed);
                Rx::Consumed
            }
            Err(e) => {
                let c = match e {
                    DataError::Open(OpenError::Replay(_)) => &shared.drops.replayed,
                    DataError::Open(OpenError::Auth) => &shared.drops.bad_mac,
                    DataError::Open(OpenError::Expired(_)) => &shared.drops.expired_key,
                    DataError::NotForThisKey(_) => &shared.drops.no_session,
                    _ => &shared.drops.malformed,
                };
                DropCounters::bump(c);
                Rx::Dropped
            }
        }
    }

    /// The plaintext of the packet queued last, if it was `d`'s (to check
    /// its inner source).
    pub(super) fn last<'b>(&self, d: &'b Dg<'_>) -> Option<&'b [u8]> {
        let &(i, start, end) = self.opened.last()?;
        (i == d.index && start == d.start).then(|| &d.buf[start + OVERHEAD..end])
    }

    /// Takes back the packet queued last.
    pub(super) fn unqueue(&mut self) {
        self.opened.pop();
    }

    /// Writes what was queued from `bufs` to the TUN device.
    pub(super) fn flush(&mut self, tun: &Tun, bufs: &mut [Vec<u8>], shared: &Shared) {
        crate::datapath::write_opened(
            tun,
            bufs,
            &self.opened,
            OVERHEAD,
            &mut self.errors,
            &shared.name,
            &mut self.spare,
        );
        self.opened.clear();
    }
}

/// The datagrams of one `recv_batch` (GRO runs split at their stride):
/// (buffer index, start, end, canonical source address).
fn datagrams(metas: &[RecvMeta]) -> impl Iterator<Item = (usize, usize, usize, SocketAddr)> + '_ {
    metas.iter().enumerate().flat_map(|(i, m)| {
        let stride = if m.stride == 0 { m.len } else { m.stride };
        let len = m.len.min(UDP_BUF);
        (0..len.div_ceil(stride.max(1))).map(move |s| {
            let start = s * stride;
            let src = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
            (i, start, (start + stride).min(len), src)
        })
    })
}

/// Receives the tunnel's UDP datagrams forever.
pub async fn udp_to_tun(tun: Arc<Tun>, shared: Arc<Shared>, sock: Arc<polytun_io::UdpSocket>) {
    read_datagrams(
        &sock,
        &tun,
        &shared,
        || (shared.tables(), shared.remote()),
        |w, (tables, remote), d, src, now| {
            if src != *remote {
                // A client talks to its server only.
                DropCounters::bump(&shared.drops.bad_source);
                return;
            }
            w.handle(&shared, tables, d, now);
        },
    )
    .await
}

/// Receives datagrams forever: `each` sees every datagram (GRO runs
/// split) with its source, under one `lock()` per batch, opening TUN
/// packets where they lie; the writer writes them once per batch.
pub(super) async fn read_datagrams<G>(
    sock: &polytun_io::UdpSocket,
    tun: &Tun,
    shared: &Shared,
    lock: impl Fn() -> G,
    mut each: impl FnMut(&mut TunWriter, &G, &mut Dg<'_>, SocketAddr, Instant),
) {
    let mut udp_bufs: Vec<Vec<u8>> = (0..UDP_RECV_BATCH).map(|_| vec![0u8; UDP_BUF]).collect();
    let mut metas = vec![RecvMeta::default(); UDP_RECV_BATCH];
    let mut w = TunWriter::with_capacity(UDP_RECV_MAX_DATAGRAMS);
    let mut errors = 0u64;
    loop {
        let n = {
            let mut iov: Vec<IoSliceMut<'_>> =
                udp_bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match sock.recv_batch(&mut iov, &mut metas).await {
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
        {
            let g = lock();
            for (i, start, end, src) in datagrams(&metas[..n]) {
                let mut d = Dg::new(&mut udp_bufs[i][..end], start, i);
                each(&mut w, &g, &mut d, src, now);
            }
        }
        w.flush(tun, &mut udp_bufs, shared);
    }
}

/// Reads the tunnel's TCP connection until it closes; tells the control
/// task why it ended.
pub async fn tcp_to_tun(
    tun: Arc<Tun>,
    shared: Arc<Shared>,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    conn: u64,
) {
    let why = read_frames(
        &mut rd,
        &tun,
        &shared,
        "the server",
        || shared.tables(),
        |w, tables, f, now| w.handle(&shared, tables, f, now),
    )
    .await;
    let _ = shared.to_control.send(ToControl::LinkDown(conn, why)).await;
}

/// Reads OpenVPN's framed packets from a TCP connection until it ends
/// and returns why; `each` sees every frame under one `lock()` per run,
/// opening TUN packets in the staging buffer they were copied to; the
/// writer writes them when the stream has no more or the stage is full.
pub(super) async fn read_frames<G>(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    tun: &Tun,
    shared: &Shared,
    peer: &str,
    lock: impl Fn() -> G,
    mut each: impl FnMut(&mut TunWriter, &G, &mut Dg<'_>, Instant),
) -> String {
    let mut dec = FrameDecoder::default();
    let mut buf = vec![0u8; UDP_BUF];
    let mut stage = vec![vec![0u8; FRAME_STAGE]];
    let mut w = TunWriter::default();
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => return format!("{peer} closed the TCP connection"),
            Ok(n) => n,
            Err(e) => return format!("TCP receive: {e}"),
        };
        dec.push(&buf[..n]);
        let now = Instant::now();
        let mut failed = None;
        loop {
            let mut fill = 0;
            let mut full = false;
            {
                let g = lock();
                loop {
                    match dec.next_frame() {
                        Ok(Some(f)) => {
                            let end = fill + f.len();
                            stage[0][fill..end].copy_from_slice(f);
                            let mut d = Dg::new(&mut stage[0][..end], fill, 0);
                            each(&mut w, &g, &mut d, now);
                            fill = end;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                    // a frame is at most 65535 bytes
                    if fill + 65535 > FRAME_STAGE {
                        full = true;
                        break;
                    }
                }
            }
            w.flush(tun, &mut stage, shared);
            if !full || failed.is_some() {
                break;
            }
        }
        if let Some(f) = failed {
            return format!("TCP framing: {f}");
        }
    }
}

/// Writes framed bytes to the TCP connection until the queue closes.
pub async fn tcp_writer(
    shared: Arc<Shared>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    conn: u64,
) {
    if let Some(e) = write_frames(&mut wr, &mut rx).await {
        let _ = shared.to_control.send(ToControl::LinkDown(conn, e)).await;
    }
}

/// Writes queued (framed) bytes until the queue closes or a write fails
/// (returns the error).
pub(super) async fn write_frames(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    rx: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    while let Some(b) = rx.recv().await {
        if let Err(e) = wr.write_all(&b).await {
            return Some(format!("TCP send: {e}"));
        }
    }
    None
}
