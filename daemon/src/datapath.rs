//! What every protocol's data path shares: reading a batch from the TUN
//! device and the addresses of an IP packet.

use crate::control::Drops;
use polytun_core::PacketBatch;
use polytun_io::Tun;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

/// Drop counters of a tunnel, by reason: bumped by its data path and its
/// control task, shown by `polytun show`.
#[derive(Debug, Default)]
pub struct DropCounters {
    pub malformed: AtomicU64,
    pub bad_mac: AtomicU64,
    pub replayed: AtomicU64,
    pub no_session: AtomicU64,
    pub bad_source: AtomicU64,
    pub expired_key: AtomicU64,
    pub rate_limited: AtomicU64,
    pub other: AtomicU64,
}

impl DropCounters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Drops {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Drops {
            malformed: l(&self.malformed),
            bad_mac: l(&self.bad_mac),
            replayed: l(&self.replayed),
            no_session: l(&self.no_session),
            bad_source: l(&self.bad_source),
            expired_key: l(&self.expired_key),
            rate_limited: l(&self.rate_limited),
            other: l(&self.other),
        }
    }
}

/// What one read of a batch from a data-path thread's TUN queue came to.
pub enum TunRead {
    /// Packets are in the batch.
    Packets,
    /// Nothing was queued.
    Empty,
    /// Nothing to send: the read failed (logged; after a pause when it was
    /// not for want of room), or the arena was laid out for a larger MTU.
    Retry,
}

/// The arena a data-path thread reads its TUN queue into: the protocol's
/// batch layout for the MTU (`layout`; `overhead` is what the protocol
/// adds to a packet, for [`raised_mtu`]), laid out again when the MTU grows.
pub struct TunArena {
    pub batch: PacketBatch,
    mtu: usize,
    overhead: usize,
    layout: fn(usize) -> PacketBatch,
    sizes: Vec<usize>,
    /// The allocation of the slot list (see [`reuse`]).
    spare: Vec<&'static mut [u8]>,
    errors: u64,
    /// Reads left that take one packet and stop (see [`QUICK_READS`]).
    quick: u8,
}

/// After a read that found one packet and then an empty queue, the next
/// reads take their first packet and stop, so that a lone packet (a
/// ping's) is sealed and sent before anything else happens: finding the
/// queue empty cost a cold read syscall (3–4 µs) on every ping's way out
/// (boringtun sends first and reads again after). If more is queued,
/// `epoll` returns at once for it. Then one read in full again, which also
/// says whether the queue is still quiet: a burst after a quiet spell
/// loses batching for at most this many reads.
const QUICK_READS: u8 = 4;

/// The quick reads left after a read (`once` or in full) of `n` packets
/// with `quick` left before it.
fn next_quick(quick: u8, once: bool, n: usize) -> u8 {
    match (once, n) {
        (true, _) => quick.saturating_sub(1),
        // One packet, then an empty queue (or a failed read).
        (false, 1) => QUICK_READS,
        (false, _) => 0,
    }
}

impl TunArena {
    pub fn new(mtu: usize, overhead: usize, layout: fn(usize) -> PacketBatch) -> TunArena {
        let n = polytun_io::IDEAL_BATCH_SIZE;
        TunArena {
            batch: layout(mtu),
            mtu,
            overhead,
            layout,
            sizes: vec![0usize; n],
            spare: Vec::with_capacity(n),
            errors: 0,
            quick: 0,
        }
    }

    /// Lays the arena out anew with `layout` (between batches).
    pub fn set_layout(&mut self, layout: fn(usize) -> PacketBatch) {
        self.layout = layout;
        self.batch = layout(self.mtu);
    }

    /// Reads one batch from `tun` without waiting, each packet at the
    /// batch's headroom.
    pub fn read(&mut self, tun: &Tun) -> TunRead {
        let batch = &mut self.batch;
        let offset = batch.headroom();
        let once = self.quick > 0;
        let r = {
            let mut bufs: Vec<&mut [u8]> = reuse(std::mem::take(&mut self.spare));
            let r = tun.recv_batch_now_lazy(
                batch.slot_buffers(),
                &mut bufs,
                &mut self.sizes,
                offset,
                once,
            );
            self.spare = reuse(bufs);
            r
        };
        match r {
            Ok(n) => {
                batch.set_filled(offset, &self.sizes[..n]);
                self.quick = next_quick(self.quick, once, n);
                TunRead::Packets
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => TunRead::Empty,
            Err(e) if read_failed(tun, &e, &mut self.errors) => {
                if let Some(m) = raised_mtu(tun, self.mtu, self.overhead) {
                    self.mtu = m;
                    self.batch = (self.layout)(m);
                }
                TunRead::Retry
            }
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                TunRead::Retry
            }
        }
    }
}

/// The iovec list of a data path's UDP receives (its allocation kept from
/// turn to turn) and how many buffers the next receive offers. quinn-udp
/// sets up a message header for every buffer offered, and a turn woken by
/// one datagram paid for 32 of them, cold: so a receive offers twice what
/// the one before it got (at least 2, at most all). Under load that is
/// all of them after a few turns; a ping's turn sets up 2.
pub struct RecvList {
    spare: Vec<std::io::IoSliceMut<'static>>,
    offer: usize,
}

impl RecvList {
    /// For receives into up to `max` buffers.
    pub fn new(max: usize) -> RecvList {
        RecvList {
            spare: Vec::with_capacity(max),
            offer: MIN_OFFER,
        }
    }

    /// What to offer after a receive that filled `got` of at most `max`.
    fn next_offer(got: usize, max: usize) -> usize {
        got.saturating_mul(2).clamp(MIN_OFFER, max.max(MIN_OFFER))
    }
}

/// The fewest buffers a receive offers: 2, so that a lone datagram's turn
/// sees whether another one came with it.
const MIN_OFFER: usize = 2;

/// One batched receive on `socket` without waiting, into `bufs` and
/// `metas` (as many of them as `list` offers): the number of buffers
/// filled, or None when nothing was queued (`Some(0)` after a failure,
/// logged for `name` at powers of two of `errors`, then a pause).
pub fn recv_udp_now(
    socket: &polytun_io::UdpSocket,
    bufs: &mut [Vec<u8>],
    metas: &mut [polytun_io::RecvMeta],
    list: &mut RecvList,
    errors: &mut u64,
    name: &str,
) -> Option<usize> {
    let max = bufs.len().min(metas.len());
    let offer = list.offer.min(max);
    let mut iov: Vec<std::io::IoSliceMut<'_>> = reuse(std::mem::take(&mut list.spare));
    iov.extend(
        bufs[..offer]
            .iter_mut()
            .map(|b| std::io::IoSliceMut::new(b)),
    );
    let r = socket.recv_batch_now(&mut iov, &mut metas[..offer]);
    list.spare = reuse(iov);
    match r {
        Ok(n) => {
            list.offer = RecvList::next_offer(n, max);
            Some(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => {
            *errors += 1;
            if errors.is_power_of_two() {
                tracing::debug!(
                    "{name}: udp receive on port {}: {e}",
                    socket.local_addr().map_or(0, |a| a.port())
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            Some(0)
        }
    }
}

/// Logs a failed TUN read (at powers of two of `errors`); true when a
/// packet was dropped because it did not fit the batch's slots (the MTU
/// may have grown: [`raised_mtu`]), false for an error worth a pause
/// before the next read.
pub fn read_failed(tun: &Tun, e: &std::io::Error, errors: &mut u64) -> bool {
    *errors += 1;
    if errors.is_power_of_two() {
        tracing::warn!(
            "{}: reading the tun device: {e} ({errors} errors)",
            tun.name()
        );
    }
    e.kind() == std::io::ErrorKind::InvalidInput
}

/// Tunnels (sessions) whose table guards an outbound turn holds without
/// allocating: each protocol's list of them has this room from the start,
/// since a queue's thread whose first turn comes mid-transfer must not
/// allocate then (datapath_alloc with two queues).
pub const GUARDS: usize = 16;

/// The smallest MTU an outbound arena is laid out for (IPv6's minimum).
const MIN_MTU: usize = 1280;

/// The interface's MTU when it is no longer `mtu`, the one the outbound
/// arena was laid out for: it was changed after we started (wg-quick's
/// `MTU =`, `ip link set mtu`), so packets no longer fit the slots. None
/// when it did not change, or changed to one that a UDP datagram cannot
/// carry with `overhead` more bytes (the arena stays as it is and such
/// packets keep being dropped, counted as read errors).
pub fn raised_mtu(tun: &Tun, mtu: usize, overhead: usize) -> Option<usize> {
    let max = 65535 - 8 - 40 - overhead;
    match tun.refresh_mtu() {
        Ok(m) if m != mtu && (MIN_MTU..=max).contains(&m) => {
            tracing::info!("{}: mtu changed from {mtu} to {m}", tun.name());
            Some(m)
        }
        _ => None,
    }
}

/// The end of the run of datagrams that starts at `items[start]` and may
/// leave in one gathered GSO send: `datagram` gives an item's bytes when it
/// goes where the first goes (None ends the run); every datagram but the
/// last is as long as the first, the last may be shorter.
pub fn equal_size_run<'a, T>(
    items: &[T],
    start: usize,
    datagram: impl Fn(&T) -> Option<&'a [u8]>,
) -> usize {
    let Some(seg) = items.get(start).and_then(&datagram).map(<[u8]>::len) else {
        return start + 1;
    };
    let mut j = start + 1;
    while let Some(d) = items.get(j).and_then(&datagram) {
        j += 1;
        if d.len() != seg {
            // shorter: it ends the run; longer: it starts the next one
            if d.len() > seg {
                j -= 1;
            }
            break;
        }
    }
    j
}

/// Writes the packets opened in place in the receive buffers `bufs` to the
/// TUN device, gathered where they lie ([`Tun::send_gathered_now`]; a TUN
/// write never waits): one `(buffer, start, end)` per packet, in buffer
/// order, with `headroom` bytes before the packet for the virtio header.
/// `spare` keeps the list's allocation from call to call. Errors are
/// logged at powers of two of `errors`.
pub fn write_opened(
    tun: &Tun,
    bufs: &mut [Vec<u8>],
    opened: &[(usize, usize, usize)],
    headroom: usize,
    errors: &mut u64,
    name: &str,
    spare: &mut Vec<&'static mut [u8]>,
) {
    if opened.is_empty() {
        return;
    }
    let mut packets = disjoint_slices(bufs, opened, reuse(std::mem::take(spare)));
    if let Err(e) = tun.send_gathered_now(&mut packets, headroom) {
        *errors += 1;
        if errors.is_power_of_two() {
            tracing::debug!("{name}: writing to the tun device: {e}");
        }
    }
    *spare = reuse(packets);
}

/// `bufs[i][start..end]` for each `(i, start, end)` of `ranges`, which are in
/// increasing order (of buffer, then of start) and do not overlap, appended
/// to `out` (an empty vector whose allocation is reused).
fn disjoint_slices<'a>(
    bufs: &'a mut [Vec<u8>],
    ranges: &[(usize, usize, usize)],
    mut out: Vec<&'a mut [u8]>,
) -> Vec<&'a mut [u8]> {
    let mut rest = bufs.iter_mut().enumerate();
    // The buffer being cut, what is left of it and where that starts.
    let mut cur: Option<(usize, &'a mut [u8], usize)> = None;
    for &(i, start, end) in ranges {
        while cur.as_ref().is_none_or(|c| c.0 != i) {
            match rest.next() {
                Some((k, b)) => cur = Some((k, b.as_mut_slice(), 0)),
                None => return out,
            }
        }
        let Some((_, tail, at)) = cur.as_mut() else {
            return out;
        };
        let t = std::mem::take(tail);
        let (_, from_start) = t.split_at_mut(start - *at);
        let (packet, after) = from_start.split_at_mut(end - start);
        *tail = after;
        *at = end;
        out.push(packet);
    }
    out
}

/// Gives the vCPU to whoever the turn's last syscall woke, when the turn
/// moved a lone packet: a ping's request or reply, an interactive keystroke.
/// The kernel wakes a socket's or the TUN's reader with a sync wake-up, which
/// places it on this vCPU when this thread is alone there, expecting the
/// waker to block soon; it then waits for the rest of our turn and our way
/// back into `epoll_wait` (10–20 µs here), or lands on the other vCPU, which
/// a VM must first wake from halt. Yielding lets it run at once (a no-op when
/// nothing else is runnable). A batch of more than one packet does not
/// yield: under load the next batch is usually waiting already.
/// Measured: see fast-path.md, "Handing the vCPU over".
pub fn hand_over_lone(packets: usize) {
    if packets == 1 {
        // SAFETY: a plain syscall without arguments.
        unsafe { libc::sched_yield() };
    }
}

/// An empty vector with `v`'s allocation, for elements of another type of
/// the same layout (references of another lifetime): the data paths keep
/// their per-turn lists of borrowed slices without allocating each turn.
pub fn reuse<A, B>(mut v: Vec<A>) -> Vec<B> {
    v.clear();
    // filter_map (not filter) because the element type changes; the
    // in-place collect keeps the buffer when the layouts match.
    #[allow(clippy::unnecessary_filter_map)]
    v.into_iter().filter_map(|_| None).collect()
}

pub fn dst_ip(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]))),
        6 if p.len() >= 40 => {
            let b: [u8; 16] = p[24..40].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

pub fn src_ip(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]))),
        6 if p.len() >= 40 => {
            let b: [u8; 16] = p[8..24].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Sleeps until `deadline`, or forever without one: the timer arm of each
/// control task's `select!`.
pub async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// A 100-byte IPv4/UDP packet 198.51.100.`src` → 198.51.100.`dst`, for
/// the protocols' data-path tests.
#[cfg(test)]
pub fn test_ipv4(src: u8, dst: u8) -> [u8; 100] {
    let mut ip = [0u8; 100];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&100u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 51, 100, src]);
    ip[16..20].copy_from_slice(&[198, 51, 100, dst]);
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read of one packet that found the queue empty makes the next
    /// `QUICK_READS` reads quick; then one reads in full again, and a
    /// full read of more than one packet ends the quick spell.
    #[test]
    fn reads_are_quick_after_a_lone_packet() {
        // A ping every 200 ms: full read of 1, then 4 quick ones, then full.
        let mut quick = 0;
        let mut kinds = Vec::new();
        for _ in 0..11 {
            let once = quick > 0;
            kinds.push(once);
            quick = next_quick(quick, once, 1);
        }
        let f = false;
        let t = true;
        assert_eq!(kinds, [f, t, t, t, t, f, t, t, t, t, f]);
        // A burst: a full read of many ends it at once.
        assert_eq!(next_quick(QUICK_READS, false, 40), 0);
        assert_eq!(next_quick(0, false, 0), 0);
        // A quick read of a super-packet's segments still counts down.
        assert_eq!(next_quick(2, true, 45), 1);
        assert_eq!(next_quick(0, true, 1), 0);
    }

    /// The arena's reads as a data-path thread makes them, on a real TUN
    /// device: after a lone packet the next `QUICK_READS` reads take one
    /// packet each however many are queued, then a read takes the rest.
    #[test]
    fn an_arena_reads_quickly_after_a_lone_packet() {
        std::thread::spawn(|| {
            // SAFETY: unshare affects this thread's network namespace only.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
            let tun = Tun::create_for_thread(&polytun_io::TunConfig {
                name: "ptquick0".into(),
                mtu: 1420,
                offload: true,
                up: true,
                queues: 1,
            })
            .expect("create tun");
            // No solicitations of the kernel's own between our packets.
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/ptquick0/disable_ipv6", "1");
            tun.add_address("198.51.100.1".parse().unwrap(), 24)
                .expect("add address");
            let sock = std::net::UdpSocket::bind("198.51.100.1:0").unwrap();
            let mut arena = TunArena::new(1420, 32, |mtu| PacketBatch::new(128, 16, mtu, 16));
            // Whatever the new interface queued first goes, then the arena
            // starts afresh.
            std::thread::sleep(std::time::Duration::from_millis(200));
            while let TunRead::Packets = arena.read(&tun) {}
            arena.quick = 0;
            let mut read = |send: u8| {
                for i in 0..send {
                    sock.send_to(&[i; 20], "198.51.100.2:9").unwrap();
                }
                let mut p = libc::pollfd {
                    fd: tun.raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
                match arena.read(&tun) {
                    TunRead::Packets => (arena.batch.len(), arena.quick),
                    TunRead::Empty => (0, arena.quick),
                    TunRead::Retry => panic!("tun read failed"),
                }
            };
            assert_eq!(read(1), (1, QUICK_READS), "a lone packet");
            assert_eq!(read(3), (1, QUICK_READS - 1), "quick: one of three");
            assert_eq!(read(0), (1, QUICK_READS - 2));
            assert_eq!(read(0), (1, QUICK_READS - 3));
            assert_eq!(read(2), (1, 0), "the last quick read");
            assert_eq!(read(0), (1, QUICK_READS), "in full: the one left");
            assert_eq!(read(3), (1, QUICK_READS - 1));
            assert_eq!(read(0), (1, QUICK_READS - 2));
            assert_eq!(read(0), (1, QUICK_READS - 3), "the queue is empty now");
            assert_eq!(read(4), (1, 0));
            assert_eq!(read(0), (3, 0), "in full: the three left");
        })
        .join()
        .unwrap();
    }

    /// A receive offers twice what the one before it got, at least 2 and
    /// at most all the buffers: 2 for a ping's turn, all of them after a
    /// few turns under load.
    #[test]
    fn receives_offer_twice_what_the_last_got() {
        let next = RecvList::next_offer;
        assert_eq!(RecvList::new(32).offer, 2);
        assert_eq!(next(1, 32), 2);
        assert_eq!(next(0, 32), 2);
        assert_eq!(next(2, 32), 4);
        assert_eq!(next(16, 32), 32);
        assert_eq!(next(32, 32), 32);
        assert_eq!(next(1, 1), 2, "at least 2, clamped by the caller");
        let mut offer = 2;
        let mut offers = vec![offer];
        while offer < 32 {
            offer = next(offer, 32);
            offers.push(offer);
        }
        assert_eq!(offers, [2, 4, 8, 16, 32]);
    }

    /// Runs for a gathered GSO send: one destination, every datagram as
    /// long as the first but the last, which may be shorter.
    #[test]
    fn equal_size_runs() {
        let d = [[0u8; 8]; 1];
        let b = |n: usize| &d[0][..n];
        // (length, destination)
        let runs = |items: &[(usize, u8)]| {
            let mut ends = Vec::new();
            let mut k = 0;
            while k < items.len() {
                let dst = items[k].1;
                k = equal_size_run(items, k, |&(n, t)| (t == dst).then(|| b(n)));
                ends.push(k);
            }
            ends
        };
        assert_eq!(runs(&[(8, 0), (8, 0), (8, 0)]), [3]);
        // a shorter one ends its run, a longer one starts the next
        assert_eq!(runs(&[(8, 0), (8, 0), (3, 0), (8, 0)]), [3, 4]);
        assert_eq!(runs(&[(5, 0), (5, 0), (8, 0), (8, 0)]), [2, 4]);
        // another destination starts the next
        assert_eq!(runs(&[(8, 0), (8, 1), (8, 1), (8, 0)]), [1, 3, 4]);
        assert_eq!(runs(&[(4, 0)]), [1]);
    }

    #[test]
    fn addresses_of_packets() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[192, 0, 2, 1]);
        v4[16..20].copy_from_slice(&[198, 51, 100, 2]);
        assert_eq!(src_ip(&v4), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(dst_ip(&v4), Some("198.51.100.2".parse().unwrap()));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24] = 0x20;
        v6[25] = 0x01;
        assert_eq!(dst_ip(&v6), Some("2001::".parse().unwrap()));
        assert_eq!(dst_ip(&v6[..39]), None);
        assert_eq!(dst_ip(&[0x45; 19]), None);
        assert_eq!(src_ip(&[]), None);
    }
}
