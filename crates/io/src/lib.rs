//! # polytun-io — the I/O layer of polytun's data path
//!
//! Knows packets and file descriptors, nothing of protocols. Linux only.
//!
//! * [`Tun`]: a TUN device with batched reads and writes. With
//!   [`TunConfig::offload`] the device is opened with `IFF_VNET_HDR` and
//!   `TUNSETOFFLOAD` (TSO4/TSO6, plus USO4/USO6 on Linux >= 6.2): one `read`
//!   returns a TCP (or UDP) super-packet of up to 64 KiB that is split in
//!   userspace into MTU-sized IP packets with correct headers and checksums, and
//!   [`Tun::send_batch`] coalesces segments of the same flow (GRO) into one
//!   `write`. Without offload (kernel refuses, or `offload: false`) it is a plain
//!   one-packet-per-read TUN, still drained in batches per wake-up. The offload
//!   code is `tun-rs`'s port of wireguard-go's `tun/offload_linux.go`.
//! * [`UdpSocket`]: IPv4/IPv6 UDP with `recvmmsg` + UDP GRO on receive and
//!   `UDP_SEGMENT` (GSO) on send, via `quinn-udp`; large (forced) socket buffers.
//! * netlink helpers: [`add_address`], [`add_route`], … (also as `Tun` methods).
//!
//! ## Buffers with headroom (the data-path contract)
//!
//! The caller owns all packet memory (e.g. `core`'s `PacketBatch` arena) and
//! passes `&mut [&mut [u8]]` slots plus an `offset` of headroom; nothing on the
//! data path allocates per packet.
//!
//! **Receive from TUN** — `tun.recv_batch(&mut bufs, &mut sizes, offset)`:
//! packet `i` lands in `bufs[i][offset..offset + sizes[i]]`. Give at least
//! [`IDEAL_BATCH_SIZE`] (128) slots, each `offset + mtu` bytes or more (a super-packet
//! is split over consecutive slots; it must fit entirely, so the slot count must
//! be >= 65535 / MSS). `offset` is the headroom for the outer headers (e.g. 16 for
//! a WireGuard data header; leave room for tag/tailroom after `offset + mtu` too).
//! A data-path thread reads with `tun.recv_batch_now_lazy(slots, &mut list, &mut
//! sizes, offset, once)` instead: it takes slots from the `slots` iterator only
//! as packets need them (a lone packet touches one), and `once` stops after one
//! read of the device.
//!
//! **Write to TUN** — `tun.send_batch(&mut bufs, &sizes, offset)`: packet `i` is
//! `bufs[i][offset..offset + sizes[i]]`; `offset >= MIN_SEND_OFFSET` (10, the
//! `virtio_net_hdr` is written just before the packet) — use the same headroom as
//! on receive (after decryption the inner packet starts after the outer header,
//! which is always >= 10 bytes). Bytes after the packet are used to coalesce
//! following segments: slots of `offset + 65535` bytes allow full 64 KiB GRO;
//! smaller slots work, they just coalesce less.
//!
//! **UDP** — `udp.recv_batch(&mut iovecs, &mut metas)`: up to [`UDP_RECV_BATCH`]
//! (32) entries per call; with GRO one entry may hold several datagrams of
//! `meta.stride` bytes (split them yourself: `buf[..meta.len].chunks(meta.stride)`),
//! so give 64 KiB buffers when [`UdpSocket::gro_segments`] > 1.
//! `udp.send_batch(&transmits)`: a [`Transmit`] with `segment_size: Some(s)` sends
//! `contents.len()/s` datagrams of `s` bytes (last may be shorter) to one
//! destination in one syscall (GSO); build such runs from consecutive
//! equal-size packets to the same peer.
//!
//! ## Example
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use polytun_io::{Tun, TunConfig, UdpSocket, IDEAL_BATCH_SIZE};
//! let tun = Tun::create(&TunConfig { name: "pt0".into(), mtu: 1420, offload: true, up: true, queues: 1 })?;
//! tun.add_address("198.51.100.1".parse().unwrap(), 24)?;
//! let udp = UdpSocket::bind("0.0.0.0:51820".parse().unwrap())?;
//! const OFF: usize = 32;
//! let mut arena = vec![0u8; IDEAL_BATCH_SIZE * (OFF + 65535)];
//! let mut bufs: Vec<&mut [u8]> = arena.chunks_mut(OFF + 65535).collect();
//! let mut sizes = [0usize; IDEAL_BATCH_SIZE];
//! let n = tun.recv_batch(&mut bufs, &mut sizes, OFF).await?;
//! # let _ = (n, udp); Ok(()) }
//! ```
//!
//! All `Tun`/`UdpSocket` methods take `&self`, so a reader task and a writer task
//! can share one handle through an `Arc`. They need a tokio runtime (a blocking
//! thread can drive them with a current-thread runtime's `block_on`).

#[cfg(not(target_os = "linux"))]
compile_error!("polytun-io supports Linux only");

mod coalesce;
mod netlink;
mod tun;
mod udp;

#[doc(hidden)]
pub use coalesce::fuzz_runs as fuzz_coalesce;
pub use netlink::{add_address, add_route, network_of, remove_address, remove_route, RouteOptions};
pub use quinn_udp::{EcnCodepoint, RecvMeta, Transmit};
#[doc(hidden)]
pub use tun::fuzz_split as fuzz_virtio_split;
pub use tun::{
    flow_queue, Tun, TunConfig, TunStats, IDEAL_BATCH_SIZE, MAX_PACKET_LEN, MIN_SEND_OFFSET,
    VIRTIO_NET_HDR_LEN,
};
pub use udp::{UdpSocket, SOCKET_BUFFER_BYTES, UDP_RECV_BATCH, UDP_RECV_MAX_DATAGRAMS};
