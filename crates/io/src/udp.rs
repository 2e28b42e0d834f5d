//! Batched UDP: `recvmmsg` + UDP GRO on receive, UDP GSO (`UDP_SEGMENT`) on send.
//!
//! Built on [`quinn_udp::UdpSocketState`] (which does the cmsg work: `UDP_GRO`,
//! `UDP_SEGMENT`, `IP_PKTINFO`/`IPV6_RECVPKTINFO` for the local destination address)
//! and a tokio [`tokio::net::UdpSocket`] for readiness.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;

/// Socket buffer size requested (with `SO_{RCV,SND}BUFFORCE` when permitted).
pub const SOCKET_BUFFER_BYTES: usize = 7 << 20;

/// Maximum number of datagrams one [`UdpSocket::recv_batch`] call fills (`recvmmsg` batch).
pub const UDP_RECV_BATCH: usize = quinn_udp::BATCH_SIZE;

/// Most datagrams one [`UdpSocket::recv_batch`] call returns: [`UDP_RECV_BATCH`]
/// buffers, each holding at most 64 datagrams coalesced by UDP GRO (the kernel's
/// `UDP_GRO_CNT_MAX`). Per-datagram lists of this capacity never grow on the data path.
pub const UDP_RECV_MAX_DATAGRAMS: usize = UDP_RECV_BATCH * 64;

/// A UDP socket with batched, offloaded receive and send.
///
/// All methods take `&self`; one socket may be shared (e.g. in an `Arc`) by a
/// receiving task and any number of sending tasks.
#[derive(Debug)]
pub struct UdpSocket {
    io: Io,
    state: UdpSocketState,
    local: SocketAddr,
}

/// The socket as tokio drives it, or as a data-path thread that polls the
/// descriptor itself does ([`UdpSocket::bind_for_thread`]).
#[derive(Debug)]
enum Io {
    Tokio(tokio::net::UdpSocket),
    Plain(std::net::UdpSocket),
}

impl Io {
    fn tokio(&self) -> io::Result<&tokio::net::UdpSocket> {
        match self {
            Io::Tokio(s) => Ok(s),
            Io::Plain(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "udp: async I/O on a socket bound for a data-path thread",
            )),
        }
    }

    fn sock(&self) -> quinn_udp::UdpSockRef<'_> {
        match self {
            Io::Tokio(s) => s.into(),
            Io::Plain(s) => s.into(),
        }
    }

    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Io::Tokio(s) => s.as_raw_fd(),
            Io::Plain(s) => s.as_raw_fd(),
        }
    }
}

impl std::os::fd::AsFd for Io {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Io::Tokio(s) => s.as_fd(),
            Io::Plain(s) => s.as_fd(),
        }
    }
}

fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn set_force_buf(sock: &Socket, opt: libc::c_int, fallback_opt: libc::c_int, bytes: usize) {
    let val: libc::c_int = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    for o in [opt, fallback_opt] {
        // SAFETY: valid fd, pointer to a c_int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                o,
                &val as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Most iovecs one gathered send uses (more than the kernel's
/// `UDP_MAX_SEGMENTS`, 128 since Linux 6.x, 64 before).
const MAX_GATHER: usize = 128;

/// One `sendmsg` of `datagrams` to `dst`: with `UDP_SEGMENT` = `seg`
/// when there is more than one.
fn send_gso(
    fd: std::os::fd::RawFd,
    dst: &socket2::SockAddr,
    datagrams: &[io::IoSlice<'_>],
    seg: usize,
) -> io::Result<()> {
    // Datagrams lying back to back (full-size packets sealed in an arena
    // whose stride they fill) go as one iovec: the kernel copies one long
    // run faster than many short ones (TCP 4 streams measured ~10 % down
    // with an iovec per datagram).
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_GATHER];
    let mut n = 0;
    for d in datagrams {
        let base = d.as_ptr() as *mut libc::c_void;
        if n > 0 && iov[n - 1].iov_base.wrapping_byte_add(iov[n - 1].iov_len) == base {
            iov[n - 1].iov_len += d.len();
        } else if n < MAX_GATHER {
            iov[n] = libc::iovec {
                iov_base: base,
                iov_len: d.len(),
            };
            n += 1;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "udp send: too many datagrams for one send",
            ));
        }
    }
    // Room for one cmsghdr and a u16, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; every pointer set below lives
    // until sendmsg returns, and the lengths are those of the buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = dst.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = dst.len();
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    if datagrams.len() > 1 {
        // SAFETY: the control buffer holds CMSG_SPACE(2) bytes (24 on
        // 64-bit Linux, within its 32) and is aligned for cmsghdr.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
            debug_assert!(space <= std::mem::size_of_val(&control));
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
        }
    }
    // SAFETY: msg is fully initialised above.
    let r = unsafe { libc::sendmsg(fd, &msg, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// [`send_gso`], waiting with `wait` while the socket buffer is full.
fn send_gso_until_sent(
    fd: std::os::fd::RawFd,
    dst: &socket2::SockAddr,
    datagrams: &[io::IoSlice<'_>],
    seg: usize,
    wait: impl Fn() -> io::Result<()>,
) -> io::Result<()> {
    loop {
        match send_gso(fd, dst, datagrams, seg) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait()?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

impl UdpSocket {
    /// Bind a UDP socket to `addr` (port 0 picks a free port). An unspecified IPv6
    /// address (`[::]:port`) is bound dual-stack (IPv4 peers appear as v4-mapped
    /// addresses in [`RecvMeta::addr`]; IPv4 destinations may be given as plain v4).
    ///
    /// Sets large send/receive buffers (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` when running
    /// with CAP_NET_ADMIN, otherwise capped by `net.core.{r,w}mem_max`) and enables
    /// UDP GRO and packet-info cmsgs. Must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, false)
    }

    /// [`UdpSocket::bind`] for a data-path thread that polls the descriptor
    /// ([`UdpSocket::raw_fd`]) itself: only the `_now` methods and
    /// [`UdpSocket::try_send_to`] work (the async ones fail), and tokio's
    /// reactor never sees it. Needs no runtime.
    pub fn bind_for_thread(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, true)
    }

    fn bind_with(addr: SocketAddr, thread: bool) -> io::Result<Self> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| ctx(e, "udp socket"))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            // Best effort: dual stack.
            let _ = sock.set_only_v6(false);
        }
        sock.set_nonblocking(true)
            .map_err(|e| ctx(e, "udp set_nonblocking"))?;
        sock.bind(&addr.into())
            .map_err(|e| ctx(e, &format!("udp bind {addr}")))?;
        set_force_buf(
            &sock,
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            SOCKET_BUFFER_BYTES,
        );
        set_force_buf(
            &sock,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            SOCKET_BUFFER_BYTES,
        );
        let std_sock: std::net::UdpSocket = sock.into();
        let local = std_sock
            .local_addr()
            .map_err(|e| ctx(e, "udp local_addr"))?;
        let io = if thread {
            Io::Plain(std_sock)
        } else {
            Io::Tokio(
                tokio::net::UdpSocket::from_std(std_sock)
                    .map_err(|e| ctx(e, "udp register with tokio"))?,
            )
        };
        let state = UdpSocketState::new(io.sock()).map_err(|e| ctx(e, "udp socket state"))?;
        Ok(Self { io, state, local })
    }

    /// The bound local address (with the port chosen by the kernel if 0 was asked).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Largest number of segments one [`Transmit`] may carry with `segment_size`
    /// (1 when UDP GSO is unavailable). [`UdpSocket::send_batch`] splits larger
    /// transmits itself, so this is a hint for building batches.
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// How many datagrams the kernel may coalesce into one receive buffer (UDP GRO);
    /// 1 without GRO. Receive buffers should be `gro_segments() * max_datagram` bytes
    /// (64 KiB is always enough).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Current kernel socket buffer sizes `(recv, send)` in bytes.
    pub fn buffer_sizes(&self) -> io::Result<(usize, usize)> {
        let r = self.state.recv_buffer_size(self.io.sock())?;
        let s = self.state.send_buffer_size(self.io.sock())?;
        Ok((r, s))
    }

    /// Receive a batch of datagrams (one `recvmmsg`). Waits until at least one is
    /// available. Returns the number `n` of filled entries; for each `i < n`,
    /// `meta[i].len` bytes were written to `bufs[i]`, holding
    /// `ceil(len / stride)` datagrams of `meta[i].stride` bytes each (the last may be
    /// shorter) when the kernel coalesced them with UDP GRO. `meta[i].addr` is the
    /// source, `meta[i].dst_ip` the local address the datagram was sent to.
    ///
    /// `bufs.len()` and `meta.len()` must be equal; at most [`UDP_RECV_BATCH`] entries
    /// are filled per call. Cancel-safe.
    pub async fn recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        if bufs.is_empty() || bufs.len() != meta.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "udp recv_batch: bufs and meta must be non-empty and of equal length",
            ));
        }
        loop {
            let io = self.io.tokio()?;
            io.readable().await?;
            match io.try_io(Interest::READABLE, || {
                self.state.recv(self.io.sock(), bufs, meta)
            }) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(ctx(e, "udp recvmmsg")),
            }
        }
    }

    /// Non-blocking [`UdpSocket::recv_batch`]: `WouldBlock` when nothing is queued.
    pub fn try_recv_batch(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.io.tokio()?.try_io(Interest::READABLE, || {
            self.state.recv(self.io.sock(), bufs, meta)
        })
    }

    /// [`UdpSocket::recv_batch`] without waiting, for a data-path thread
    /// that polls the socket itself: `WouldBlock` when nothing is queued.
    pub fn recv_batch_now(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.state.recv(self.io.sock(), bufs, meta)
    }

    /// [`UdpSocket::send_batch`] for a data-path thread: waits in `poll` for
    /// room in the socket buffer instead of in tokio.
    pub fn send_batch_now(&self, transmits: &[Transmit<'_>]) -> io::Result<()> {
        let mut first_err = None;
        for t in transmits {
            let t = self.mapped(t);
            let r = self.segmented(&t, |part| loop {
                match self.state.try_send(self.io.sock(), part) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        crate::tun::wait_fd(self.io.as_raw_fd(), libc::POLLOUT)?
                    }
                    r => return r,
                }
            });
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(ctx(e, &format!("udp send to {}", t.destination)));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sends `datagrams` to `destination` gathered from where they lie:
    /// one `sendmsg` with an iovec per stretch of datagrams lying back to
    /// back and `UDP_SEGMENT` (GSO) set to the first one's size, as many as
    /// one GSO send may carry (the socket's segment limit, 64 KiB in all),
    /// then the next such send.
    /// Every datagram but the last must be as long as the first (the last
    /// may be shorter): a run of sealed packets of one size needs neither
    /// to lie back to back nor a copy into one buffer. One datagram per
    /// send without GSO, or when the kernel refuses it. For a data-path
    /// thread: waits in `poll` for room in the socket buffer.
    pub fn send_gathered_now(
        &self,
        destination: SocketAddr,
        datagrams: &[io::IoSlice<'_>],
    ) -> io::Result<()> {
        let Some((dst, seg, max)) = self.gathered_plan(destination, datagrams) else {
            return Ok(());
        };
        let fd = self.io.as_raw_fd();
        let wait = || crate::tun::wait_fd(fd, libc::POLLOUT);
        for chunk in datagrams.chunks(max) {
            let r = send_gso_until_sent(fd, &dst, chunk, seg, wait);
            match r {
                Err(e)
                    if chunk.len() > 1
                        && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                {
                    // The kernel refused the segmentation: one at a time.
                    for d in chunk {
                        send_gso_until_sent(fd, &dst, std::slice::from_ref(d), seg, wait)
                            .map_err(|e| ctx(e, &format!("udp send to {destination}")))?;
                    }
                }
                r => r.map_err(|e| ctx(e, &format!("udp send to {destination}")))?,
            }
        }
        Ok(())
    }

    /// [`UdpSocket::send_gathered_now`] for a socket driven by tokio:
    /// waits for room in tokio instead of in `poll`.
    pub async fn send_gathered(
        &self,
        destination: SocketAddr,
        datagrams: &[io::IoSlice<'_>],
    ) -> io::Result<()> {
        let io = self.io.tokio()?;
        let Some((dst, seg, max)) = self.gathered_plan(destination, datagrams) else {
            return Ok(());
        };
        let fd = self.io.as_raw_fd();
        for chunk in datagrams.chunks(max) {
            let mut parts: &[io::IoSlice<'_>] = chunk;
            let mut one_by_one = false;
            while !parts.is_empty() {
                let n = if one_by_one { 1 } else { parts.len() };
                io.writable().await?;
                match io.try_io(Interest::WRITABLE, || send_gso(fd, &dst, &parts[..n], seg)) {
                    Ok(()) => parts = &parts[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e)
                        if n > 1
                            && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
                    {
                        one_by_one = true
                    }
                    Err(e) => return Err(ctx(e, &format!("udp send to {destination}"))),
                }
            }
        }
        Ok(())
    }

    /// For a gathered send: the (mapped) destination, the segment size (the
    /// first datagram's) and how many datagrams one `sendmsg` may carry;
    /// None when there is nothing to send.
    fn gathered_plan(
        &self,
        destination: SocketAddr,
        datagrams: &[io::IoSlice<'_>],
    ) -> Option<(socket2::SockAddr, usize, usize)> {
        let seg = datagrams.first().map_or(0, |d| d.len());
        if seg == 0 {
            return None;
        }
        debug_assert!(
            datagrams.iter().rev().skip(1).all(|d| d.len() == seg)
                && datagrams.last().is_some_and(|d| d.len() <= seg),
            "gathered send: datagrams of unequal size"
        );
        let max = self
            .state
            .max_gso_segments()
            .min((u16::MAX as usize - 48) / seg)
            .clamp(1, MAX_GATHER);
        Some((socket2::SockAddr::from(self.map_dst(destination)), seg, max))
    }

    /// The socket's file descriptor (for a data-path thread's `epoll`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.io.as_raw_fd()
    }

    async fn send_one(&self, t: &Transmit<'_>) -> io::Result<()> {
        loop {
            let io = self.io.tokio()?;
            io.writable().await?;
            match io.try_io(Interest::WRITABLE, || {
                self.state.try_send(self.io.sock(), t)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// `t` with an IPv4 destination written v4-mapped when the socket is
    /// IPv6 (dual stack).
    fn mapped<'a>(&self, t: &Transmit<'a>) -> Transmit<'a> {
        let mut m = t.clone();
        if let SocketAddr::V4(v4) = t.destination {
            if self.local.is_ipv6() {
                m.destination = SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port());
            }
        }
        m
    }

    /// The next chunk of `rest` (datagrams of `seg` bytes) that one GSO send
    /// may carry now, and what is left after it.
    fn next_chunk<'a>(
        &self,
        t: &Transmit<'a>,
        seg: usize,
        rest: &'a [u8],
    ) -> (Transmit<'a>, &'a [u8]) {
        let max = self.state.max_gso_segments().max(1);
        let take = (seg * max).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        let mut part = t.clone();
        part.contents = chunk;
        part.segment_size = if chunk.len() > seg { Some(seg) } else { None };
        (part, tail)
    }

    /// quinn-udp turns GSO off after EIO/EINVAL: the chunk is sent again,
    /// unsegmented.
    fn gso_just_failed(&self, part: &Transmit<'_>, e: &io::Error) -> bool {
        part.segment_size.is_some()
            && matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
            && self.state.max_gso_segments() == 1
    }

    /// The GSO segment size of `t`, or None when it goes out as one datagram.
    fn segment_size(t: &Transmit<'_>) -> Option<usize> {
        t.segment_size.filter(|&s| s > 0 && s < t.contents.len())
    }

    /// Send one (mapped) transmit with `send`, splitting it into GSO-sized
    /// chunks (or single datagrams when GSO is unavailable or was just found
    /// broken by the kernel).
    fn segmented(
        &self,
        t: &Transmit<'_>,
        mut send: impl FnMut(&Transmit<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(seg) = Self::segment_size(t) else {
            let mut single = t.clone();
            single.segment_size = None;
            return send(&single);
        };
        let mut rest = t.contents;
        while !rest.is_empty() {
            let (part, tail) = self.next_chunk(t, seg, rest);
            match send(&part) {
                Ok(()) => rest = tail,
                Err(e) if self.gso_just_failed(&part, &e) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The async form of [`UdpSocket::segmented`], waiting in tokio.
    async fn send_segmented(&self, t: &Transmit<'_>) -> io::Result<()> {
        let t = &self.mapped(t);
        let Some(seg) = Self::segment_size(t) else {
            let mut single = t.clone();
            single.segment_size = None;
            return self.send_one(&single).await;
        };
        let mut rest = t.contents;
        while !rest.is_empty() {
            let (part, tail) = self.next_chunk(t, seg, rest);
            match self.send_one(&part).await {
                Ok(()) => rest = tail,
                Err(e) if self.gso_just_failed(&part, &e) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Send a batch of transmits. A transmit with `segment_size: Some(s)` carries
    /// `contents.len() / s` datagrams of `s` bytes (the last may be shorter) to one
    /// destination and goes out in one `sendmsg` with `UDP_SEGMENT` (GSO); longer runs
    /// than [`UdpSocket::max_gso_segments`] and kernels without GSO are handled by
    /// splitting. Every transmit is attempted even if an earlier one fails (an
    /// unreachable peer must not stall the others); the first error is returned.
    ///
    /// Not cancel-safe: if the future is dropped, a prefix of the batch may have been sent.
    pub async fn send_batch(&self, transmits: &[Transmit<'_>]) -> io::Result<()> {
        let mut first_err = None;
        for t in transmits {
            if let Err(e) = self.send_segmented(t).await {
                if first_err.is_none() {
                    first_err = Some(ctx(e, &format!("udp send to {}", t.destination)));
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Try to send one datagram without waiting (handshakes, cookies, keepalives):
    /// one non-blocking `sendto`, `WouldBlock` only if the socket buffer is full.
    pub fn try_send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        socket2::SockRef::from(&self.io).send_to(buf, &self.map_dst(dst).into())
    }

    /// Send one datagram, waiting for socket buffer space if needed.
    pub async fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.io
            .tokio()?
            .send_to(buf, self.map_dst(dst))
            .await
            .map_err(|e| ctx(e, &format!("udp send_to {dst}")))
    }

    fn map_dst(&self, dst: SocketAddr) -> SocketAddr {
        match dst {
            SocketAddr::V4(v4) if self.local.is_ipv6() => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            d => d,
        }
    }
}
