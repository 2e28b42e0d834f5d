//! The TUN device: batched reads (GSO super-packets split in userspace) and batched
//! writes (GRO coalescing), on top of `tun-rs` (a port of wireguard-go's
//! `tun/offload_linux.go`).

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tun_rs::{
    AsyncDevice, DeviceBuilder, DeviceImpl, ExpandBuffer, GROTable, SyncDevice, VirtioNetHdr,
};

use crate::coalesce;
use crate::netlink::{self, RouteOptions};
use std::io::IoSlice;

/// Length of the `virtio_net_hdr` the kernel prepends/expects when offload is on.
pub const VIRTIO_NET_HDR_LEN: usize = tun_rs::VIRTIO_NET_HDR_LEN;

/// Minimum headroom (`offset`) for [`Tun::send_batch`]: the `virtio_net_hdr` is
/// written into the `VIRTIO_NET_HDR_LEN` bytes just before each packet.
pub const MIN_SEND_OFFSET: usize = VIRTIO_NET_HDR_LEN;

/// Largest IP packet (and largest GSO super-packet / GRO coalesced packet).
pub const MAX_PACKET_LEN: usize = 65535;

/// Recommended number of buffers per batch (same as wireguard-go's `IdealBatchSize`).
/// One TSO super-packet of 64 KiB at MSS 536 splits into at most 123 segments, so a
/// batch of this size can always take one whole super-packet.
pub const IDEAL_BATCH_SIZE: usize = tun_rs::IDEAL_BATCH_SIZE;

pub(crate) const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub(crate) const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub(crate) const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub(crate) const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
pub(crate) const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// How to create a [`Tun`].
#[derive(Clone, Debug)]
pub struct TunConfig {
    /// Interface name; empty lets the kernel choose (`tun0`, …).
    pub name: String,
    /// Interface MTU (the size of the IP packets that leave the tunnel).
    pub mtu: u16,
    /// Ask for `IFF_VNET_HDR` + TSO/USO offload. Falls back to plain TUN if the kernel
    /// refuses; check [`Tun::offload_enabled`].
    pub offload: bool,
    /// Bring the link up after creation.
    pub up: bool,
    /// Queues (`IFF_MULTI_QUEUE` when > 1): [`Tun::new_queue`] opens the others. The
    /// kernel spreads the packets it hands to the device over the queues by flow hash,
    /// so each flow stays in order on one queue.
    pub queues: usize,
}

impl Default for TunConfig {
    fn default() -> Self {
        TunConfig {
            name: String::new(),
            mtu: 1420,
            offload: true,
            up: true,
            queues: 1,
        }
    }
}

struct RxState {
    /// Raw read buffer: virtio header + up to 64 KiB super-packet.
    scratch: Box<[u8]>,
    /// Length of a raw read held over to the next call (0 = none).
    pending: usize,
}

/// The buffers a batched read fills, handed out as the batch grows.
trait Slots<'a> {
    /// The buffers from index `n` on: at least `k` of them when there are
    /// that many, fewer (maybe none) when there are not.
    fn slots_at(&mut self, n: usize, k: usize) -> &mut [&'a mut [u8]];
}

/// A list made in full by the caller.
impl<'a> Slots<'a> for [&'a mut [u8]] {
    fn slots_at(&mut self, n: usize, _k: usize) -> &mut [&'a mut [u8]] {
        self.get_mut(n..).unwrap_or_default()
    }
}

/// A list made as it is needed, from an iterator over the arena's slots.
struct Lazy<'l, 'a, I> {
    list: &'l mut Vec<&'a mut [u8]>,
    rest: I,
}

impl<'a, I: Iterator<Item = &'a mut [u8]>> Slots<'a> for Lazy<'_, 'a, I> {
    fn slots_at(&mut self, n: usize, k: usize) -> &mut [&'a mut [u8]] {
        let want = n.saturating_add(k);
        while self.list.len() < want {
            match self.rest.next() {
                Some(b) => self.list.push(b),
                None => break,
            }
        }
        self.list.get_mut(n..).unwrap_or_default()
    }
}

struct TxState {
    gro: GROTable,
    /// Reused allocation for the per-call buffer wrappers (always empty between calls).
    wrappers: Vec<SliceBuf<'static>>,
}

/// A TUN device with batched, offloaded I/O. All methods take `&self`: one task may
/// read while another writes (reads and writes are each serialised internally).
pub struct Tun {
    dev: Dev,
    name: String,
    ifindex: u32,
    offload: bool,
    udp_offload: bool,
    /// A std mutex, not tokio's: no reader holds it across an `.await`, and
    /// releasing tokio's goes through its semaphore's wait list, which a
    /// data-path thread paid on every read.
    rx: std::sync::Mutex<RxState>,
    tx: tokio::sync::Mutex<TxState>,
    /// Shared by all queues of the device.
    counters: Arc<Counters>,
    /// Queues 1.. of a multi-queue device (queue 0 is this one); empty on the others.
    queues: Vec<Arc<Tun>>,
}

/// The device as tokio drives it, or as a data-path thread that polls the
/// descriptor itself does ([`Tun::create_for_thread`]): a descriptor in
/// tokio's reactor wakes it for every packet, even when no task waits.
enum Dev {
    Tokio(AsyncDevice),
    Plain(SyncDevice),
}

impl std::ops::Deref for Dev {
    type Target = DeviceImpl;
    fn deref(&self) -> &DeviceImpl {
        match self {
            Dev::Tokio(d) => d,
            Dev::Plain(d) => d,
        }
    }
}

impl Dev {
    fn tokio(&self) -> io::Result<&AsyncDevice> {
        match self {
            Dev::Tokio(d) => Ok(d),
            Dev::Plain(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "tun: async I/O on a device created for a data-path thread",
            )),
        }
    }

    fn try_clone(&self) -> io::Result<Dev> {
        Ok(match self {
            Dev::Tokio(d) => Dev::Tokio(d.try_clone()?),
            Dev::Plain(d) => {
                let c = d.try_clone()?;
                c.set_nonblocking(true)?;
                Dev::Plain(c)
            }
        })
    }
}

#[derive(Default)]
struct Counters {
    mtu: AtomicUsize,
    rx_dropped: AtomicU64,
    rx_reads: AtomicU64,
    rx_packets: AtomicU64,
    rx_gso_reads: AtomicU64,
    tx_packets: AtomicU64,
}

/// Counters of a [`Tun`] (monotonic since creation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunStats {
    /// `read` syscalls that returned a packet.
    pub rx_reads: u64,
    /// IP packets handed to the caller (after splitting super-packets).
    pub rx_packets: u64,
    /// Reads that returned a GSO super-packet (offload only).
    pub rx_gso_reads: u64,
    /// Packets dropped on receive (malformed, or too large for the caller's buffers).
    pub rx_dropped: u64,
    /// IP packets given to [`Tun::send_batch`] (before GRO coalescing).
    pub tx_packets: u64,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("ifindex", &self.ifindex)
            .field("mtu", &self.mtu())
            .field("offload", &self.offload)
            .field("udp_offload", &self.udp_offload)
            .finish()
    }
}

fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn build(cfg: &TunConfig, offload: bool, thread: bool) -> io::Result<Dev> {
    let mut b = DeviceBuilder::new()
        .mtu(cfg.mtu)
        .offload(offload)
        .multi_queue(cfg.queues > 1);
    if !cfg.name.is_empty() {
        b = b.name(cfg.name.clone());
    }
    if thread {
        let d = b.build_sync()?;
        d.set_nonblocking(true)?;
        Ok(Dev::Plain(d))
    } else {
        Ok(Dev::Tokio(b.build_async()?))
    }
}

impl Tun {
    /// Create the TUN device (requires CAP_NET_ADMIN and a tokio runtime).
    pub fn create(cfg: &TunConfig) -> io::Result<Tun> {
        Tun::create_with(cfg, false)
    }

    /// Create the TUN device for a data-path thread that polls its queues'
    /// descriptors ([`Tun::raw_fd`]) itself: only the `_now` methods do
    /// I/O on it (the async ones fail), and tokio's reactor never sees it.
    pub fn create_for_thread(cfg: &TunConfig) -> io::Result<Tun> {
        Tun::create_with(cfg, true)
    }

    fn create_with(cfg: &TunConfig, thread: bool) -> io::Result<Tun> {
        let what = format!("create tun {:?}", cfg.name);
        let dev = if cfg.offload {
            match build(cfg, true, thread) {
                Ok(d) => d,
                // e.g. kernel without IFF_VNET_HDR/TUNSETOFFLOAD: plain TUN.
                Err(_) => build(cfg, false, thread).map_err(|e| ctx(e, &what))?,
            }
        } else {
            build(cfg, false, thread).map_err(|e| ctx(e, &what))?
        };
        let name = dev.name().map_err(|e| ctx(e, "tun name"))?;
        let ifindex = dev.if_index().map_err(|e| ctx(e, "tun ifindex"))?;
        let mtu = dev.mtu().map_err(|e| ctx(e, "tun mtu"))?;
        let counters = Arc::new(Counters::default());
        counters.mtu.store(usize::from(mtu), Ordering::Relaxed);
        let mut tun = Tun::wrap(dev, name, ifindex, counters);
        for q in 1..cfg.queues {
            let dev = tun
                .dev
                .try_clone()
                .map_err(|e| ctx(e, &format!("open queue {q} of tun {}", tun.name)))?;
            let t = Tun::wrap(dev, tun.name.clone(), tun.ifindex, tun.counters.clone());
            tun.queues.push(Arc::new(t));
        }
        if cfg.up {
            tun.set_up(true)?;
        }
        Ok(tun)
    }

    fn wrap(dev: Dev, name: String, ifindex: u32, counters: Arc<Counters>) -> Tun {
        Tun {
            offload: dev.tcp_gso(),
            udp_offload: dev.udp_gso(),
            dev,
            name,
            ifindex,
            rx: std::sync::Mutex::new(RxState {
                scratch: vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET_LEN].into_boxed_slice(),
                pending: 0,
            }),
            tx: tokio::sync::Mutex::new(TxState {
                gro: GROTable::new(),
                wrappers: Vec::with_capacity(IDEAL_BATCH_SIZE),
            }),
            counters,
            queues: Vec::new(),
        }
    }

    /// Number of queues (`TunConfig::queues`), this one included.
    pub fn queue_count(&self) -> usize {
        1 + self.queues.len()
    }

    /// Queue `i` (1 ≤ i < [`Tun::queue_count`]) of a multi-queue device, for its own
    /// reader. Counters are shared with the other queues. Writes are best made
    /// through queue 0's [`Tun::send_batch`], which steers each flow to its queue.
    pub fn queue(&self, i: usize) -> Option<Arc<Tun>> {
        i.checked_sub(1).and_then(|i| self.queues.get(i)).cloned()
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The MTU last set through this handle (or read at creation).
    pub fn mtu(&self) -> usize {
        self.counters.mtu.load(Ordering::Relaxed)
    }

    /// Whether `IFF_VNET_HDR` + TCP segmentation offload is active.
    pub fn offload_enabled(&self) -> bool {
        self.offload
    }

    /// Whether UDP segmentation offload (USO, Linux >= 6.2) is active as well.
    pub fn udp_offload_enabled(&self) -> bool {
        self.udp_offload
    }

    /// Packets read from the device and dropped because they were malformed or did not
    /// fit the caller's buffers.
    pub fn rx_dropped(&self) -> u64 {
        self.counters.rx_dropped.load(Ordering::Relaxed)
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> TunStats {
        TunStats {
            rx_reads: self.counters.rx_reads.load(Ordering::Relaxed),
            rx_packets: self.counters.rx_packets.load(Ordering::Relaxed),
            rx_gso_reads: self.counters.rx_gso_reads.load(Ordering::Relaxed),
            rx_dropped: self.counters.rx_dropped.load(Ordering::Relaxed),
            tx_packets: self.counters.tx_packets.load(Ordering::Relaxed),
        }
    }

    /// Reads the interface MTU from the kernel (it may have been changed with
    /// `ip link`, as wg-quick does after starting its userspace daemon) and
    /// remembers it as [`Tun::mtu`].
    pub fn refresh_mtu(&self) -> io::Result<usize> {
        let mtu = usize::from(
            self.dev
                .mtu()
                .map_err(|e| ctx(e, &format!("read mtu of {}", self.name)))?,
        );
        self.counters.mtu.store(mtu, Ordering::Relaxed);
        Ok(mtu)
    }

    /// Set the interface MTU.
    pub fn set_mtu(&self, mtu: u16) -> io::Result<()> {
        self.dev
            .set_mtu(mtu)
            .map_err(|e| ctx(e, &format!("set mtu {mtu} on {}", self.name)))?;
        self.counters.mtu.store(usize::from(mtu), Ordering::Relaxed);
        Ok(())
    }

    /// Bring the link up (or down).
    pub fn set_up(&self, up: bool) -> io::Result<()> {
        self.dev.enabled(up).map_err(|e| {
            ctx(
                e,
                &format!("set link {} {}", self.name, if up { "up" } else { "down" }),
            )
        })
    }

    /// Add `ip/prefix` to the device (netlink `RTM_NEWADDR`; adds the connected route).
    pub fn add_address(&self, ip: IpAddr, prefix: u8) -> io::Result<()> {
        netlink::add_address(self.ifindex, ip, prefix)
    }

    /// Remove `ip/prefix` from the device.
    pub fn remove_address(&self, ip: IpAddr, prefix: u8) -> io::Result<()> {
        netlink::remove_address(self.ifindex, ip, prefix)
    }

    /// Route `dst/prefix` into the device (netlink `RTM_NEWROUTE`, scope link).
    pub fn add_route(&self, dst: IpAddr, prefix: u8, opts: &RouteOptions) -> io::Result<()> {
        netlink::add_route(self.ifindex, dst, prefix, opts)
    }

    /// Remove the route `dst/prefix` via the device.
    pub fn remove_route(&self, dst: IpAddr, prefix: u8, opts: &RouteOptions) -> io::Result<()> {
        netlink::remove_route(self.ifindex, dst, prefix, opts)
    }

    /// Read one or more IP packets. Waits until at least one is available, then drains
    /// what is queued without waiting, until `bufs` is full.
    ///
    /// Packet `i` is written to `bufs[i][offset..offset + sizes[i]]`; `offset` bytes of
    /// headroom are left untouched for the caller's outer headers. A GSO super-packet
    /// (offload on) is split into MTU-sized packets with correct IP/TCP/UDP headers and
    /// checksums across consecutive `bufs`. Returns the number of packets.
    ///
    /// Requirements: `sizes.len() >= bufs.len()`; each `bufs[i].len() >= offset + mtu`;
    /// with offload on, `bufs.len()` must hold the largest super-packet the kernel may
    /// hand over, i.e. `ceil(65535 / MSS)` — use [`IDEAL_BATCH_SIZE`] (128). A packet
    /// that does not fit the remaining buffers is kept for the next call; one that can
    /// never fit is dropped (counted in [`Tun::rx_dropped`]) with an error.
    ///
    /// Cancel-safe: a packet read from the kernel is never lost by dropping the future.
    pub async fn recv_batch(
        &self,
        bufs: &mut [&mut [u8]],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        check_recv_args(bufs, sizes)?;
        loop {
            if self.lock_rx().pending == 0 {
                self.dev
                    .tokio()?
                    .readable()
                    .await
                    .map_err(|e| ctx(e, &format!("read from tun {}", self.name)))?;
            }
            // tun-rs's try_recv clears tokio's readiness on WouldBlock, so
            // the next readable() waits for the kernel again (also when
            // another reader took what woke this one).
            let dev = self.dev.tokio()?;
            let mut rx = self.lock_rx();
            match self.fill_batch(&mut rx, bufs, sizes, offset, false, |b| dev.try_recv(b)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// [`Tun::recv_batch`] without waiting, for a data-path thread that polls
    /// the device itself ([`Tun::create_for_thread`]; it reads the
    /// descriptor directly): `WouldBlock` when nothing is queued.
    pub fn recv_batch_now(
        &self,
        bufs: &mut [&mut [u8]],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        check_recv_args(bufs, sizes)?;
        let Some(mut rx) = self.try_lock_rx() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let fd = self.raw_fd();
        self.fill_batch(&mut rx, bufs, sizes, offset, false, |b| read_fd(fd, b))
    }

    /// [`Tun::recv_batch_now`] taking its buffers from `slots` only as the
    /// packets read need them, pushed onto `list` (cleared first; keep it
    /// from call to call for its allocation): `list[i]` holds packet `i`.
    /// A read of one small packet takes one buffer, where the eager form
    /// wants the arena's whole list of 128 built first (most of a cold
    /// turn's own work before a ping's packet is sealed).
    ///
    /// `once`: read the device once (one packet, or one super-packet's
    /// segments) instead of until it is empty, for a caller that expects
    /// nothing more queued and would rather send this packet now than
    /// first learn so from a read that finds the queue empty.
    pub fn recv_batch_now_lazy<'a>(
        &self,
        slots: impl Iterator<Item = &'a mut [u8]>,
        list: &mut Vec<&'a mut [u8]>,
        sizes: &mut [usize],
        offset: usize,
        once: bool,
    ) -> io::Result<usize> {
        list.clear();
        if sizes.is_empty() {
            return Err(invalid("tun recv_batch: need non-empty sizes".into()));
        }
        let Some(mut rx) = self.try_lock_rx() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let fd = self.raw_fd();
        let mut lazy = Lazy { list, rest: slots };
        self.fill_batch(&mut rx, &mut lazy, sizes, offset, once, |b| read_fd(fd, b))
    }

    /// The read state. A panic while it was held (release builds abort
    /// instead) leaves a scratch buffer and a length that are both valid,
    /// so a poisoned lock is taken as it is.
    fn lock_rx(&self) -> std::sync::MutexGuard<'_, RxState> {
        self.rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The read state, unless another reader holds it.
    fn try_lock_rx(&self) -> Option<std::sync::MutexGuard<'_, RxState>> {
        match self.rx.try_lock() {
            Ok(rx) => Some(rx),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Fills `bufs` from what `read` returns (one raw device read per call,
    /// `WouldBlock` when the queue is empty): the first packet's error is
    /// returned, a later one ends the batch (and resurfaces next time).
    fn fill_batch<'a, S: Slots<'a> + ?Sized>(
        &self,
        rx: &mut RxState,
        bufs: &mut S,
        sizes: &mut [usize],
        offset: usize,
        once: bool,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if !self.offload {
            let sizes = if once { &mut sizes[..1] } else { sizes };
            return self.fill_plain(bufs, sizes, offset, read);
        }
        let mut n = 0;
        while n < sizes.len() && !bufs.slots_at(n, 1).is_empty() {
            if rx.pending == 0 {
                match read(&mut rx.scratch) {
                    Ok(len) => {
                        rx.pending = len;
                        self.counters.rx_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    // WouldBlock: drained. Other errors resurface on the next call.
                    Err(_) if n > 0 => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                    Err(e) => return Err(ctx(e, &format!("read from tun {}", self.name))),
                }
            }
            let len = rx.pending;
            let mut split = |want: usize| {
                let out = bufs.slots_at(n, want.min(sizes.len() - n));
                let m = out.len().min(sizes.len() - n);
                let r = split_virtio(
                    &mut rx.scratch[..len],
                    &mut out[..m],
                    &mut sizes[n..n + m],
                    offset,
                );
                (r, m)
            };
            // One buffer first: most reads are one packet. A super-packet
            // says how many it needs, and is split again once they are had
            // (split_virtio asks before it changes anything).
            let (mut r, mut m) = split(1);
            if let Ok(Split::NeedBufs(k)) = r {
                if k > m {
                    (r, m) = split(k);
                }
            }
            match r {
                Ok(Split::Done(k)) => {
                    rx.pending = 0;
                    n += k;
                    if k > 1 || rx.scratch[1] != VIRTIO_NET_HDR_GSO_NONE {
                        self.counters.rx_gso_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    if once {
                        break;
                    }
                }
                Ok(Split::NeedBufs(_)) if n > 0 => break, // keep pending for the next call
                Ok(Split::NeedBufs(k)) => {
                    rx.pending = 0;
                    self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                    return Err(invalid(format!(
                        "tun recv_batch: super-packet needs {k} buffers, got {m}"
                    )));
                }
                Err(_) if n > 0 => break, // reported (and dropped) by the next call
                Err(e) => {
                    rx.pending = 0;
                    self.counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
                    return Err(ctx(e, &format!("tun {} virtio packet dropped", self.name)));
                }
            }
        }
        self.counters
            .rx_packets
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn fill_plain<'a, S: Slots<'a> + ?Sized>(
        &self,
        bufs: &mut S,
        sizes: &mut [usize],
        offset: usize,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut n = 0;
        while n < sizes.len() {
            let Some(b) = bufs.slots_at(n, 1).first_mut() else {
                break;
            };
            let Some(b) = b.get_mut(offset..) else {
                if n == 0 {
                    return Err(invalid(format!(
                        "tun recv_batch: offset {offset} beyond buffer"
                    )));
                }
                break;
            };
            match read(b) {
                Ok(len) => {
                    sizes[n] = len;
                    n += 1;
                }
                Err(_) if n > 0 => break, // WouldBlock, or an error the next call reports
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => return Err(ctx(e, &format!("read from tun {}", self.name))),
            }
        }
        self.counters
            .rx_reads
            .fetch_add(n as u64, Ordering::Relaxed);
        self.counters
            .rx_packets
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Write IP packets: packet `i` is `bufs[i][offset..offset + sizes[i]]`.
    ///
    /// With offload on, consecutive TCP segments (and UDP datagrams with USO) of the
    /// same flow are coalesced (GRO) into one super-packet written with one `write`;
    /// coalescing appends payload into the first packet's buffer, so the bytes of
    /// `bufs[i]` after `offset + sizes[i]` are scratch space (give buffers of
    /// `offset + 65535` bytes for full coalescing; smaller buffers only coalesce less).
    /// The `virtio_net_hdr` is written into `bufs[i][offset - 10..offset]`, so
    /// `offset >= MIN_SEND_OFFSET` (10) is required (always pass it, offload or not).
    /// The contents of `bufs` are unspecified afterwards.
    ///
    /// Every packet is attempted; the last error (if any) is returned.
    /// Not cancel-safe: dropping the future may leave a prefix of the batch written.
    pub async fn send_batch(
        &self,
        bufs: &mut [&mut [u8]],
        sizes: &[usize],
        offset: usize,
    ) -> io::Result<()> {
        if sizes.len() < bufs.len() {
            return Err(invalid(format!(
                "tun send_batch: sizes.len() {} < bufs.len() {}",
                sizes.len(),
                bufs.len()
            )));
        }
        if offset < MIN_SEND_OFFSET {
            return Err(invalid(format!(
                "tun send_batch: offset {offset} < {MIN_SEND_OFFSET} (virtio_net_hdr headroom)"
            )));
        }
        for (i, (b, &s)) in bufs.iter().zip(sizes).enumerate() {
            if s == 0 || offset + s > b.len() {
                return Err(invalid(format!(
                    "tun send_batch: packet {i}: size {s} at offset {offset} does not fit buffer of {}",
                    b.len()
                )));
            }
        }
        if bufs.is_empty() {
            return Ok(());
        }
        if self.queues.is_empty() {
            return self.send_on_this_queue(bufs, sizes, offset).await;
        }
        // The kernel sends a flow's packets out of the queue its last packet
        // from userspace came in on (tun's flow table), so writing each flow
        // to the queue of its symmetric hash makes both directions of a flow
        // stay on one queue, and flows spread over the readers.
        let n = self.queue_count();
        let mut parts: Vec<(Vec<&mut [u8]>, Vec<usize>)> =
            (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        for (b, &s) in bufs.iter_mut().zip(sizes) {
            let q = flow_queue(&b[offset..offset + s], n);
            parts[q].0.push(std::mem::take(b));
            parts[q].1.push(s);
        }
        let mut result = Ok(());
        for (q, (mut b, s)) in parts.into_iter().enumerate() {
            if b.is_empty() {
                continue;
            }
            let r = match q {
                0 => self.send_on_this_queue(&mut b, &s, offset).await,
                _ => {
                    self.queues[q - 1]
                        .send_on_this_queue(&mut b, &s, offset)
                        .await
                }
            };
            if r.is_err() {
                result = r;
            }
        }
        result
    }

    async fn send_on_this_queue(
        &self,
        bufs: &mut [&mut [u8]],
        sizes: &[usize],
        offset: usize,
    ) -> io::Result<()> {
        let mut tx = self.tx.lock().await;
        let TxState { gro, wrappers } = &mut *tx;
        let mut w: Vec<SliceBuf<'_>> = recycle(std::mem::take(wrappers));
        for (b, &s) in bufs.iter_mut().zip(sizes) {
            w.push(SliceBuf {
                buf: b,
                len: offset + s,
            });
        }
        self.counters
            .tx_packets
            .fetch_add(w.len() as u64, Ordering::Relaxed);
        let r = match self.dev.tokio() {
            Ok(dev) => dev.send_multiple(gro, &mut w, offset).await,
            Err(e) => Err(e),
        };
        *wrappers = recycle(w);
        r.map(|_| ())
            .map_err(|e| ctx(e, &format!("write to tun {}", self.name)))
    }

    /// Write IP packets where they lie, without copying them: packet `i` is
    /// `bufs[i][headroom..]`, and the `virtio_net_hdr` goes into the
    /// `headroom` bytes before it (`headroom >= MIN_SEND_OFFSET`).
    ///
    /// With offload on, each run of consecutive segments of one TCP flow is
    /// written as one GSO super-packet with one `writev` (the first packet's
    /// headers are rewritten for the run; see `coalesce`), so the receiving
    /// stack gets large packets as with [`Tun::send_batch`] but no payload
    /// is moved in userspace. Everything else is written one packet per
    /// `write`. With several queues each run goes to its flow's queue.
    ///
    /// Every packet is attempted; the last error (if any) is returned.
    pub async fn send_gathered(&self, bufs: &mut [&mut [u8]], headroom: usize) -> io::Result<()> {
        // A TUN write hands the packet to the kernel's receive path and does
        // not wait for room, so there is nothing to await.
        self.send_gathered_now(bufs, headroom)
    }

    /// [`Tun::send_gathered`] for a data-path thread: writes the file
    /// descriptor directly (waiting in `poll` in the unlikely case the
    /// device reports it full).
    pub fn send_gathered_now(&self, bufs: &mut [&mut [u8]], headroom: usize) -> io::Result<()> {
        if headroom < MIN_SEND_OFFSET {
            return Err(invalid(format!(
                "tun send_gathered: headroom {headroom} < {MIN_SEND_OFFSET} (virtio_net_hdr)"
            )));
        }
        if let Some(i) = bufs.iter().position(|b| b.len() <= headroom) {
            return Err(invalid(format!(
                "tun send_gathered: packet {i} is empty or shorter than the headroom"
            )));
        }
        let n = bufs.len();
        let mut result = Ok(());
        // One iovec array for the whole call (a run borrows it in turn).
        // The thread's iovec array, kept from call to call (no allocation
        // per write on a data-path thread).
        let mut spare: Vec<IoSlice<'static>> = IOV.with(|v| std::mem::take(&mut *v.borrow_mut()));
        let mut i = 0;
        while i < n {
            let run = if self.offload {
                coalesce::run(n, i, self.udp_offload, |k| &bufs[k][headroom..])
            } else {
                coalesce::Run {
                    end: i + 1,
                    hdr: 0,
                    payload: 0,
                    last_flags: 0,
                }
            };
            let end = run.end;
            let queue = match flow_queue(&bufs[i][headroom..], self.queue_count()) {
                0 => self,
                q => &*self.queues[q - 1],
            };
            let Some((first, rest)) = bufs[i..end].split_first_mut() else {
                break;
            };
            let mut iov: Vec<IoSlice<'_>> = recycle_iov(std::mem::take(&mut spare));
            if self.offload {
                let mut vnet = [0u8; VIRTIO_NET_HDR_LEN];
                coalesce::prepare_run(&mut vnet, &mut first[headroom..], i, &run);
                first[headroom - VIRTIO_NET_HDR_LEN..headroom].copy_from_slice(&vnet);
                iov.push(IoSlice::new(&first[headroom - VIRTIO_NET_HDR_LEN..]));
            } else {
                iov.push(IoSlice::new(&first[headroom..]));
            }
            // Every segment of a run has the first one's header length.
            iov.extend(rest.iter().map(|b| IoSlice::new(&b[headroom + run.hdr..])));
            self.counters
                .tx_packets
                .fetch_add((end - i) as u64, Ordering::Relaxed);
            if let Err(e) = write_fd(queue.raw_fd(), &iov) {
                result = Err(ctx(e, &format!("write to tun {}", self.name)));
            }
            spare = recycle_iov(iov);
            i = end;
        }
        IOV.with(|v| *v.borrow_mut() = spare);
        result
    }

    /// The file descriptor of this queue (for a data-path thread's `epoll`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.dev.as_raw_fd()
    }

    /// The underlying `tun-rs` device (escape hatch, e.g. for readiness);
    /// None for a device created for a data-path thread.
    pub fn device(&self) -> Option<&AsyncDevice> {
        self.dev.tokio().ok()
    }
}

/// The queue (of `queues`) for an IP packet's flow: a hash of its addresses and,
/// for TCP, UDP and SCTP, ports, the same for both directions of the flow.
/// Anything unparsable goes to queue 0.
pub fn flow_queue(packet: &[u8], queues: usize) -> usize {
    if queues <= 1 {
        return 0;
    }
    let (src, dst, proto, l4): (&[u8], &[u8], u8, usize) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            // Fragments after the first carry no ports.
            let frag = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff != 0;
            let l4 = if frag { usize::MAX } else { ihl };
            (&packet[12..16], &packet[16..20], packet[9], l4)
        }
        Some(6) if packet.len() >= 40 => (&packet[8..24], &packet[24..40], packet[6], 40),
        _ => return 0,
    };
    let word = |b: &[u8]| {
        b.chunks(4).fold(0u32, |h, c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            h ^ u32::from_be_bytes(w)
        })
    };
    // XOR is symmetric: (a, b) and (b, a) give the same value.
    let mut h = word(src) ^ word(dst) ^ u32::from(proto);
    if matches!(proto, 6 | 17 | 132) {
        if let Some(p) = packet.get(l4..l4.saturating_add(4)) {
            h ^= u32::from(u16::from_be_bytes([p[0], p[1]]) ^ u16::from_be_bytes([p[2], p[3]]));
        }
    }
    // Fibonacci hashing spreads the XOR over the high bits.
    let h = h.wrapping_mul(0x9e37_79b9);
    ((u64::from(h) * queues as u64) >> 32) as usize
}

/// [`recycle`] for iovec arrays.
/// What `recv_batch` and `recv_batch_now` need of their arguments.
fn check_recv_args(bufs: &[&mut [u8]], sizes: &[usize]) -> io::Result<()> {
    if bufs.is_empty() || sizes.len() < bufs.len() {
        return Err(invalid(format!(
            "tun recv_batch: need non-empty bufs and sizes.len() >= bufs.len() (got {} and {})",
            bufs.len(),
            sizes.len()
        )));
    }
    Ok(())
}

/// One `read` of a non-blocking descriptor.
fn read_fd(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the whole call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One `writev` of a whole packet, waiting for room if the descriptor is
/// non-blocking and full.
fn write_fd(fd: std::os::fd::RawFd, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call.
        let n = unsafe { libc::writev(fd, iov.as_ptr().cast(), iov.len() as libc::c_int) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => wait_fd(fd, libc::POLLOUT)?,
            _ => return Err(e),
        }
    }
}

/// Waits (up to a second, then the caller retries) until `fd` has `events`.
pub(crate) fn wait_fd(fd: std::os::fd::RawFd, events: libc::c_short) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 1000) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

thread_local! {
    static IOV: std::cell::RefCell<Vec<IoSlice<'static>>> =
        std::cell::RefCell::new(Vec::with_capacity(coalesce::MAX_RUN));
}

fn recycle_iov<'a, 'b>(mut v: Vec<IoSlice<'a>>) -> Vec<IoSlice<'b>> {
    v.clear();
    #[allow(clippy::unnecessary_filter_map)]
    v.into_iter().filter_map(|_| None).collect()
}

/// Reuse a `Vec`'s allocation for a different lifetime (empty vectors only; the
/// in-place `collect` specialisation keeps the buffer).
fn recycle<'a, 'b>(mut v: Vec<SliceBuf<'a>>) -> Vec<SliceBuf<'b>> {
    v.clear();
    // filter_map (not filter) because the element type changes lifetime.
    #[allow(clippy::unnecessary_filter_map)]
    v.into_iter().filter_map(|_| None).collect()
}

/// A caller buffer seen as a growable packet: `buf[..len]` is the content,
/// `buf.len()` the capacity (what GRO may grow the packet into).
struct SliceBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl AsRef<[u8]> for SliceBuf<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl AsMut<[u8]> for SliceBuf<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl ExpandBuffer for SliceBuf<'_> {
    fn buf_capacity(&self) -> usize {
        self.buf.len()
    }

    fn buf_resize(&mut self, new_len: usize, value: u8) {
        // tun-rs checks buf_capacity() before growing; clamp defensively.
        let new_len = new_len.min(self.buf.len());
        if new_len > self.len {
            self.buf[self.len..new_len].fill(value);
        }
        self.len = new_len;
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        let n = src.len().min(self.buf.len() - self.len);
        debug_assert_eq!(n, src.len(), "GRO grew a packet beyond its buffer");
        self.buf[self.len..self.len + n].copy_from_slice(&src[..n]);
        self.len += n;
    }
}

/// Outcome of splitting one raw virtio read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Split {
    /// `k` packets were written.
    Done(usize),
    /// The packet needs `k` output buffers; fewer were given. Nothing was written.
    NeedBufs(usize),
}

/// Split one raw read (`virtio_net_hdr` + packet) into `out` (see wireguard-go
/// `handleVirtioRead`). Validates the header against the packet; computes the
/// checksum for `NEEDS_CSUM` non-GSO packets.
pub(crate) fn split_virtio(
    input: &mut [u8],
    out: &mut [&mut [u8]],
    sizes: &mut [usize],
    offset: usize,
) -> io::Result<Split> {
    if input.len() <= VIRTIO_NET_HDR_LEN {
        return Err(invalid(format!(
            "virtio read of {} bytes has no packet",
            input.len()
        )));
    }
    let mut hdr = VirtioNetHdr::decode(&input[..VIRTIO_NET_HDR_LEN])?;
    let pkt = &mut input[VIRTIO_NET_HDR_LEN..];
    let len = pkt.len();
    if out.is_empty() {
        return Ok(Split::NeedBufs(1));
    }
    if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE {
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            if at + 2 > len || start > at {
                return Err(invalid(format!(
                    "virtio csum_start {start} + csum_offset {} beyond packet of {len}",
                    hdr.csum_offset
                )));
            }
            let initial = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
            pkt[at] = 0;
            pkt[at + 1] = 0;
            let c = tun_rs::checksum(&pkt[start..], u64::from(initial));
            pkt[at..at + 2].copy_from_slice(&(!c).to_be_bytes());
        }
        let dst = out[0].get_mut(offset..offset + len).ok_or_else(|| {
            invalid(format!(
                "packet of {len} bytes does not fit buffer at offset {offset}"
            ))
        })?;
        dst.copy_from_slice(pkt);
        sizes[0] = len;
        return Ok(Split::Done(1));
    }
    if hdr.gso_size == 0 {
        return Err(invalid("virtio gso_size 0".into()));
    }
    let is_v6 = match pkt[0] >> 4 {
        4 => false,
        6 => true,
        v => return Err(invalid(format!("GSO packet with IP version {v}"))),
    };
    let is_tcp = match hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => true,
        VIRTIO_NET_HDR_GSO_UDP_L4 => false,
        t => return Err(invalid(format!("unsupported virtio gso_type {t}"))),
    };
    // Do not trust hdr_len (it can cover the whole first packet on the FORWARD path);
    // recompute it from csum_start (= IP header length) + transport header length.
    let cs = usize::from(hdr.csum_start);
    let th_len = if is_tcp {
        if len <= cs + 12 {
            return Err(invalid("GSO TCP packet too short".into()));
        }
        let l = usize::from(pkt[cs + 12] >> 4) * 4;
        if !(20..=60).contains(&l) {
            return Err(invalid(format!("TCP header length {l}")));
        }
        l
    } else {
        8
    };
    let hdr_len = cs + th_len;
    if hdr_len > len {
        return Err(invalid(format!(
            "GSO header length {hdr_len} > packet length {len}"
        )));
    }
    hdr.hdr_len = hdr_len as u16;
    let payload = len - hdr_len;
    let gso = usize::from(hdr.gso_size);
    let segments = payload.div_ceil(gso).max(1);
    if segments > out.len() {
        return Ok(Split::NeedBufs(segments));
    }
    let n = out.len();
    let k = tun_rs::gso_split(pkt, hdr, out, &mut sizes[..n], offset, is_v6)?;
    if k == 0 {
        // A super-packet of headers only: nothing to send; the caller
        // counts it dropped like any other refused read.
        return Err(invalid(format!(
            "GSO packet of {len} bytes has no payload after {hdr_len} bytes of headers"
        )));
    }
    Ok(Split::Done(k))
}

/// For the fuzz target: split one raw TUN read (`virtio_net_hdr` + packet,
/// as the kernel hands it over, or as a forwarded packet leaves it) into
/// `bufs` buffers of `slot` bytes at `offset`, as `Tun::recv_batch` does,
/// and check what the reader relies on.
#[doc(hidden)]
pub fn fuzz_split(raw: &mut [u8], bufs: usize, slot: usize, offset: usize) {
    let mut store = vec![vec![0u8; slot]; bufs];
    let mut out: Vec<&mut [u8]> = store.iter_mut().map(|b| b.as_mut_slice()).collect();
    let mut sizes = vec![0usize; bufs];
    match split_virtio(raw, &mut out, &mut sizes, offset) {
        Ok(Split::Done(k)) => {
            assert!(k >= 1 && k <= bufs, "{k} packets from {bufs} buffers");
            for &n in &sizes[..k] {
                assert!(
                    n > 0 && offset + n <= slot,
                    "packet of {n} at {offset} in {slot}"
                );
            }
        }
        Ok(Split::NeedBufs(n)) => assert!(n > bufs, "asked for {n} of {bufs} buffers"),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csum(data: &[u8], initial: u32) -> u16 {
        let mut s = initial;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            s += u32::from(w);
        }
        while s > 0xffff {
            s = (s >> 16) + (s & 0xffff);
        }
        !(s as u16)
    }

    /// Build an IPv4/TCP super-packet with `payload` bytes and the partial (pseudo
    /// header) checksum in the TCP checksum field, as the kernel hands it over.
    fn tcp4_super(payload: usize, gso: u16) -> Vec<u8> {
        let total = 20 + 20 + payload;
        let mut p = vec![0u8; VIRTIO_NET_HDR_LEN + total];
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 40,
            gso_size: gso,
            csum_start: 20,
            csum_offset: 16,
        };
        h.encode(&mut p[..VIRTIO_NET_HDR_LEN]).unwrap();
        let ip = &mut p[VIRTIO_NET_HDR_LEN..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[198, 51, 100, 1]);
        ip[16..20].copy_from_slice(&[198, 51, 100, 2]);
        let c = csum(&ip[..20], 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let t = &mut ip[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&1000u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x18; // PSH|ACK
        for (i, b) in t[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        // pseudo-header partial sum (not complemented), over the full length
        let mut ph = Vec::new();
        ph.extend_from_slice(&[198, 51, 100, 1, 198, 51, 100, 2, 0, 6]);
        ph.extend_from_slice(&((20 + payload) as u16).to_be_bytes());
        let partial = !csum(&ph, 0);
        t[16..18].copy_from_slice(&partial.to_be_bytes());
        p
    }

    fn verify_tcp4(pkt: &[u8]) {
        assert_eq!(pkt[0], 0x45);
        let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
        assert_eq!(total, pkt.len(), "IP total length");
        assert_eq!(csum(&pkt[..20], 0), 0, "IPv4 header checksum");
        let mut ph = Vec::new();
        ph.extend_from_slice(&pkt[12..20]);
        ph.extend_from_slice(&[0, 6]);
        ph.extend_from_slice(&((total - 20) as u16).to_be_bytes());
        ph.extend_from_slice(&pkt[20..]);
        assert_eq!(csum(&ph, 0), 0, "TCP checksum");
    }

    /// The lazy list takes slots from its iterator only up to what is
    /// asked, and gives fewer when there are no more.
    #[test]
    fn lazy_slots_are_taken_as_asked() {
        let mut store = [[0u8; 4]; 5];
        let mut pulled = 0;
        let mut list = Vec::new();
        let rest = store.iter_mut().map(|b| {
            pulled += 1;
            b.as_mut_slice()
        });
        let mut lazy = Lazy {
            list: &mut list,
            rest,
        };
        assert_eq!(lazy.slots_at(0, 1).len(), 1);
        assert_eq!(lazy.slots_at(0, 1).len(), 1, "nothing more taken");
        assert_eq!(lazy.slots_at(1, 1).len(), 1);
        assert_eq!(lazy.slots_at(1, 3).len(), 3);
        assert_eq!(lazy.slots_at(2, 10).len(), 3, "only 5 slots");
        assert_eq!(lazy.slots_at(5, 1).len(), 0);
        assert_eq!(lazy.slots_at(7, 1).len(), 0);
        assert_eq!((pulled, list.len()), (5, 5));
        // The eager list gives everything from n on.
        let mut store = [[0u8; 4]; 3];
        let mut all: Vec<&mut [u8]> = store.iter_mut().map(|b| b.as_mut_slice()).collect();
        assert_eq!(all.slots_at(1, 1).len(), 2);
        assert_eq!(all.slots_at(4, 1).len(), 0);
    }

    #[test]
    fn split_tcp4_super_packet() {
        let mut raw = tcp4_super(5000, 1400);
        let mut store = vec![vec![0u8; 16 + 1500]; 8];
        let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|b| b.as_mut_slice()).collect();
        let mut sizes = [0usize; 8];
        let r = split_virtio(&mut raw, &mut bufs, &mut sizes, 16).unwrap();
        assert_eq!(r, Split::Done(4));
        assert_eq!(&sizes[..4], &[1440, 1440, 1440, 40 + 800]);
        let mut seq = 1000u32;
        let mut byte = 0usize;
        for i in 0..4 {
            let p = &bufs[i][16..16 + sizes[i]];
            verify_tcp4(p);
            assert_eq!(u32::from_be_bytes([p[24], p[25], p[26], p[27]]), seq);
            for &b in &p[40..] {
                assert_eq!(b, byte as u8);
                byte += 1;
            }
            seq += (sizes[i] - 40) as u32;
            // PSH only on the last segment
            assert_eq!(p[33] & 0x08 != 0, i == 3, "PSH flag on segment {i}");
        }
        assert_eq!(byte, 5000);
    }

    #[test]
    fn split_needs_more_bufs() {
        let mut raw = tcp4_super(5000, 1000);
        let mut store = vec![vec![0u8; 1500]; 3];
        let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|b| b.as_mut_slice()).collect();
        let mut sizes = [0usize; 3];
        assert_eq!(
            split_virtio(&mut raw, &mut bufs, &mut sizes, 0).unwrap(),
            Split::NeedBufs(5)
        );
    }

    #[test]
    fn split_none_with_csum() {
        // A single (non-GSO) TCP packet with NEEDS_CSUM: checksum must be completed.
        let mut raw = tcp4_super(100, 1400);
        raw[1] = VIRTIO_NET_HDR_GSO_NONE;
        let mut store = vec![vec![0u8; 1500]; 1];
        let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|b| b.as_mut_slice()).collect();
        let mut sizes = [0usize; 1];
        assert_eq!(
            split_virtio(&mut raw, &mut bufs, &mut sizes, 4).unwrap(),
            Split::Done(1)
        );
        verify_tcp4(&bufs[0][4..4 + sizes[0]]);
    }

    #[test]
    fn split_rejects_garbage() {
        let mut store = vec![vec![0u8; 1500]; 4];
        let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|b| b.as_mut_slice()).collect();
        let mut sizes = [0usize; 4];
        let mut short = vec![0u8; 5];
        assert!(split_virtio(&mut short, &mut bufs, &mut sizes, 0).is_err());
        let mut bad = tcp4_super(3000, 1000);
        bad[VIRTIO_NET_HDR_LEN] = 0x75; // IP version 7
        assert!(split_virtio(&mut bad, &mut bufs, &mut sizes, 0).is_err());
        let mut bad = tcp4_super(3000, 0);
        assert!(split_virtio(&mut bad, &mut bufs, &mut sizes, 0).is_err());
        let mut bad = tcp4_super(3000, 1000);
        bad[VIRTIO_NET_HDR_LEN + 20 + 12] = 0x10; // TCP data offset 4 bytes
        assert!(split_virtio(&mut bad, &mut bufs, &mut sizes, 0).is_err());
        // Headers only (found by the io_virtio_split fuzz target): it used to
        // come out as zero packets, a drop nobody counted.
        let mut bare = tcp4_super(3000, 1000);
        bare.truncate(VIRTIO_NET_HDR_LEN + 40);
        assert!(split_virtio(&mut bare, &mut bufs, &mut sizes, 0).is_err());
    }

    #[test]
    fn slicebuf_grows_within_capacity() {
        let mut backing = [0u8; 16];
        let mut b = SliceBuf {
            buf: &mut backing,
            len: 4,
        };
        assert_eq!(b.buf_capacity(), 16);
        b.buf_extend_from_slice(&[1, 2, 3]);
        assert_eq!(b.as_ref().len(), 7);
        b.buf_resize(10, 9);
        assert_eq!(&b.as_ref()[7..], &[9, 9, 9]);
        b.buf_resize(2, 0);
        assert_eq!(b.as_ref().len(), 2);
    }

    #[test]
    fn recycle_keeps_allocation() {
        let v: Vec<SliceBuf<'static>> = Vec::with_capacity(64);
        let cap = v.capacity();
        let w: Vec<SliceBuf<'_>> = recycle(v);
        assert_eq!(w.capacity(), cap);
    }
}
