//! TUN integration tests: run as root; each test uses its own network namespace(s).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::{build_udp4, check_ipv4, check_ipv6, enter_ns, run_in, Netns};
use polytun_io::{RouteOptions, Tun, TunConfig, IDEAL_BATCH_SIZE, MAX_PACKET_LEN};

const OFF: usize = 16;

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn make_bufs(store: &mut [Vec<u8>]) -> Vec<&mut [u8]> {
    store.iter_mut().map(|b| b.as_mut_slice()).collect()
}

/// Read from `tun` until `want` IPv4/UDP packets to `dport` were seen; returns their
/// payloads in order and the largest batch size seen.
async fn read_udp(tun: &Tun, dport: u16, want: usize) -> (Vec<Vec<u8>>, usize) {
    let mut store = vec![vec![0u8; OFF + 2048]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut got = Vec::new();
    let mut max_batch = 0;
    while got.len() < want {
        let mut bufs = make_bufs(&mut store);
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tun.recv_batch(&mut bufs, &mut sizes, OFF),
        )
        .await
        .expect("timed out reading the tun")
        .expect("recv_batch");
        assert!((1..=IDEAL_BATCH_SIZE).contains(&n));
        max_batch = max_batch.max(n);
        for i in 0..n {
            let p = &bufs[i][OFF..OFF + sizes[i]];
            assert!(sizes[i] <= tun.mtu(), "packet larger than MTU");
            if p[0] >> 4 != 4 || p[9] != 17 {
                continue; // e.g. IPv6 router solicitations
            }
            check_ipv4(p);
            let d = u16::from_be_bytes([p[22], p[23]]);
            if d == dport {
                got.push(p[28..].to_vec());
            }
        }
    }
    (got, max_batch)
}

async fn read_and_write(offload: bool) {
    let tun = Tun::create(&TunConfig {
        name: "ptio0".into(),
        mtu: 1420,
        offload,
        up: true,
        queues: 1,
    })
    .expect("create tun");
    assert_eq!(tun.name(), "ptio0");
    assert_eq!(tun.mtu(), 1420);
    assert_eq!(tun.offload_enabled(), offload, "offload state");
    tun.add_address(v4("198.51.100.1"), 24)
        .expect("add address");
    assert!(
        tun.add_address(v4("198.51.100.1"), 24).is_err(),
        "duplicate address must fail"
    );

    // --- read: datagrams sent to the peer address come out of the tun, in batches
    let sock = std::net::UdpSocket::bind("198.51.100.1:0").unwrap();
    let lport = sock.local_addr().unwrap().port();
    for i in 0..20usize {
        sock.send_to(&vec![i as u8; 100 + i * 10], "198.51.100.2:9999")
            .unwrap();
    }
    let (got, max_batch) = read_udp(&tun, 9999, 20).await;
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &vec![i as u8; 100 + i * 10], "payload {i}");
    }
    assert!(
        max_batch > 1,
        "20 queued datagrams were never read as a batch"
    );

    // --- routes: a prefix routed into the tun, then removed
    let r = RouteOptions::default();
    tun.add_route(v4("203.0.113.77"), 24, &r)
        .expect("add route");
    sock.send_to(b"routed", "203.0.113.5:9998").unwrap();
    let (got, _) = read_udp(&tun, 9998, 1).await;
    assert_eq!(got[0], b"routed");
    tun.remove_route(v4("203.0.113.0"), 24, &r)
        .expect("remove route");
    assert!(
        sock.send_to(b"x", "203.0.113.5:9998").is_err(),
        "route still there"
    );

    // --- write: a batch of packets from the peer to our socket is delivered
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut store = vec![vec![0u8; OFF + MAX_PACKET_LEN]; 24];
    let mut sizes = vec![0usize; 24];
    for (i, b) in store.iter_mut().enumerate() {
        // 16 equal-size datagrams (coalescable with USO), then 8 of varying size
        let len = if i < 16 { 200 } else { 50 + i };
        sizes[i] = build_udp4(
            &mut b[OFF..],
            [198, 51, 100, 2],
            [198, 51, 100, 1],
            7777,
            lport,
            &vec![i as u8; len],
        );
    }
    let mut bufs = make_bufs(&mut store);
    tun.send_batch(&mut bufs, &sizes, OFF)
        .await
        .expect("send_batch");
    let mut buf = [0u8; 2048];
    for i in 0..24usize {
        let (n, from) = sock
            .recv_from(&mut buf)
            .expect("datagram written to the tun not delivered");
        assert_eq!(
            from,
            SocketAddr::new(Ipv4Addr::new(198, 51, 100, 2).into(), 7777)
        );
        let len = if i < 16 { 200 } else { 50 + i };
        assert_eq!(&buf[..n], &vec![i as u8; len][..], "datagram {i}");
    }
    let st = tun.stats();
    assert_eq!(st.tx_packets, 24);
    assert!(st.rx_packets >= 21);
    assert_eq!(st.rx_dropped, 0);

    // --- argument checks
    let mut bufs = make_bufs(&mut store);
    assert!(
        tun.send_batch(&mut bufs[..1], &sizes[..1], 4)
            .await
            .is_err(),
        "offset < 10"
    );
}

#[test]
fn tun_plain_read_batch_and_write() {
    let ns = Netns::new();
    run_in(&ns, || read_and_write(false));
}

#[test]
fn tun_offload_read_batch_and_write() {
    let ns = Netns::new();
    run_in(&ns, || read_and_write(true));
}

/// A data-path thread's lazy read takes a buffer from the arena per packet
/// it reads (plus the one it reads into when the queue turns out empty),
/// not the arena's whole list; `once` reads one packet of those queued.
fn lazy_reads(offload: bool) {
    let tun = Tun::create_for_thread(&TunConfig {
        name: "ptlazy0".into(),
        mtu: 1420,
        offload,
        up: true,
        queues: 1,
    })
    .expect("create tun");
    // No IPv6 of the kernel's own (solicitations) between our packets.
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/ptlazy0/disable_ipv6", "1");
    tun.add_address(v4("198.51.100.1"), 24)
        .expect("add address");
    let sock = std::net::UdpSocket::bind("198.51.100.1:0").unwrap();
    let mut store = vec![vec![0u8; OFF + MAX_PACKET_LEN]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    // What reads of the queue give, as UDP payloads to port 9999 (the
    // kernel may queue IPv6 solicitations of its own in between).
    let mut read = |once: bool| -> (Vec<Vec<u8>>, usize, usize) {
        let mut list = Vec::new();
        let slots = store.iter_mut().map(|b| b.as_mut_slice());
        match tun.recv_batch_now_lazy(slots, &mut list, &mut sizes, OFF, once) {
            Ok(n) => {
                let mut got = Vec::new();
                for (b, &len) in list.iter().zip(&sizes).take(n) {
                    let p = &b[OFF..OFF + len];
                    if p[0] >> 4 == 4 && p[9] == 17 && p[22..24] == 9999u16.to_be_bytes() {
                        got.push(p[28..].to_vec());
                    }
                }
                (got, n, list.len())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => (Vec::new(), 0, list.len()),
            Err(e) => panic!("recv_batch_now_lazy: {e}"),
        }
    };
    // Let the kernel's own packets of a new interface go first.
    std::thread::sleep(Duration::from_millis(300));
    while read(false).1 > 0 {}
    for i in 0..3u8 {
        sock.send_to(&[i; 40], "198.51.100.2:9999").unwrap();
    }
    common::wait_readable(tun.raw_fd(), 1000);
    let (got, n, taken) = read(true);
    assert_eq!((got, n, taken), (vec![vec![0u8; 40]], 1, 1), "a read once");
    let (got, n, taken) = read(false);
    assert_eq!(got, vec![vec![1u8; 40], vec![2u8; 40]], "the rest");
    assert_eq!(taken, n + 1, "{n} packets took {taken} buffers");
    assert_eq!(read(true).1, 0, "nothing is left");
}

#[test]
fn tun_lazy_reads_offload() {
    let ns = Netns::new();
    common::run_in_thread(&ns, || lazy_reads(true));
}

#[test]
fn tun_lazy_reads_plain() {
    let ns = Netns::new();
    common::run_in_thread(&ns, || lazy_reads(false));
}

/// Forward packets between two TUNs, checking every packet read from `from`;
/// written with `send_gathered` (in place) when `gathered`, else `send_batch`.
/// How a bridge moves packets from one TUN to the other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bridge {
    /// `recv_batch` / `send_batch` on tokio (tun-rs's copying GRO).
    Batch,
    /// `recv_batch` / `send_gathered` on tokio (written where they lie).
    Gathered,
    /// Devices made for a data-path thread: `recv_batch_now` /
    /// `send_gathered_now` in a plain thread that polls the descriptor.
    Thread,
}

/// Checks the IP packets a TUN read handed over (split from super-packets).
fn check_read(from: &Tun, bufs: &[&mut [u8]], sizes: &[usize]) {
    for (b, &s) in bufs.iter().zip(sizes) {
        let p = &b[OFF..OFF + s];
        assert!(s <= from.mtu(), "segment of {s} > MTU");
        match p[0] >> 4 {
            4 => {
                check_ipv4(p);
            }
            6 => {
                check_ipv6(p);
            }
            v => panic!("IP version {v} read from tun"),
        }
    }
}

async fn pump(from: Arc<Tun>, to: Arc<Tun>, gathered: bool) {
    let mut store = vec![vec![0u8; OFF + MAX_PACKET_LEN]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    loop {
        let mut bufs = make_bufs(&mut store);
        let n = from
            .recv_batch(&mut bufs, &mut sizes, OFF)
            .await
            .expect("recv_batch");
        check_read(&from, &bufs[..n], &sizes[..n]);
        if gathered {
            let mut packets: Vec<&mut [u8]> = bufs
                .iter_mut()
                .zip(&sizes)
                .take(n)
                .map(|(b, &s)| &mut b[..OFF + s])
                .collect();
            to.send_gathered(&mut packets, OFF)
                .await
                .expect("send_gathered");
        } else {
            to.send_batch(&mut bufs[..n], &sizes[..n], OFF)
                .await
                .expect("send_batch");
        }
    }
}

/// [`pump`] as a data-path thread runs it: no runtime, `poll` on the
/// descriptor, the `_now` methods; until `stop`.
///
/// Reads alternate between the eager and the lazy form, and every third
/// lazy one reads `once`, so super-packets go through each.
fn thread_pump(from: Arc<Tun>, to: Arc<Tun>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut store = vec![vec![0u8; OFF + MAX_PACKET_LEN]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut round = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        round += 1;
        let mut bufs: Vec<&mut [u8]> = Vec::with_capacity(IDEAL_BATCH_SIZE);
        let r = if round.is_multiple_of(2) {
            bufs = make_bufs(&mut store);
            from.recv_batch_now(&mut bufs, &mut sizes, OFF)
        } else {
            let slots = store.iter_mut().map(|b| b.as_mut_slice());
            from.recv_batch_now_lazy(slots, &mut bufs, &mut sizes, OFF, round.is_multiple_of(3))
        };
        let n = match r {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                common::wait_readable(from.raw_fd(), 100);
                continue;
            }
            Err(e) => panic!("recv_batch_now: {e}"),
        };
        check_read(&from, &bufs[..n], &sizes[..n]);
        let mut packets: Vec<&mut [u8]> = bufs
            .iter_mut()
            .zip(&sizes)
            .take(n)
            .map(|(b, &s)| &mut b[..OFF + s])
            .collect();
        to.send_gathered_now(&mut packets, OFF)
            .expect("send_gathered_now");
    }
}

/// A running pump of a bridge test.
enum Pump {
    Task(tokio::task::JoinHandle<()>),
    Thread(
        std::thread::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicBool>,
    ),
}

impl Pump {
    fn start(from: &Arc<Tun>, to: &Arc<Tun>, mode: Bridge) -> Pump {
        let (from, to) = (from.clone(), to.clone());
        match mode {
            Bridge::Thread => {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let s = stop.clone();
                Pump::Thread(std::thread::spawn(move || thread_pump(from, to, s)), stop)
            }
            m => Pump::Task(tokio::spawn(pump(from, to, m == Bridge::Gathered))),
        }
    }

    fn is_finished(&self) -> bool {
        match self {
            Pump::Task(t) => t.is_finished(),
            Pump::Thread(t, _) => t.is_finished(),
        }
    }

    fn stop(self) {
        match self {
            Pump::Task(t) => t.abort(),
            Pump::Thread(t, stop) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = t.join();
            }
        }
    }
}

/// rx_packets of `dev` in the calling thread's namespace.
fn kernel_rx_packets(dev: &str) -> u64 {
    let t = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    let line = t
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{dev}:")))
        .expect("device in /proc/net/dev");
    let fields: Vec<&str> = line.split(':').nth(1).unwrap().split_whitespace().collect();
    fields[1].parse().unwrap()
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 11)) as u8
}

/// The runtime a bridge test's thread runs its namespaces' I/O on.
fn bridge_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A TUN device of a bridge in `mode`.
fn bridge_tun(cfg: &TunConfig, mode: Bridge) -> Arc<Tun> {
    Arc::new(match mode {
        Bridge::Thread => {
            let t = Tun::create_for_thread(cfg).unwrap();
            // Nothing of tokio's on it: the async methods refuse.
            let r = async_recv_error(&t);
            assert_eq!(r.kind(), std::io::ErrorKind::Unsupported);
            t
        }
        _ => Tun::create(cfg).unwrap(),
    })
}

/// The error of an async `recv_batch` on `t` (which must fail at once).
fn async_recv_error(t: &Tun) -> std::io::Error {
    let mut store = vec![vec![0u8; OFF + 2048]; 4];
    let mut sizes = vec![0usize; 4];
    let mut bufs = make_bufs(&mut store);
    let fut = t.recv_batch(&mut bufs, &mut sizes, OFF);
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(fut.as_mut(), &mut cx) {
        std::task::Poll::Ready(Err(e)) => e,
        other => panic!("async recv_batch on a thread device: {other:?}"),
    }
}

/// One single-queue TUN of a bridge, MTU 1420.
fn bridge_cfg(name: &str, offload: bool) -> TunConfig {
    TunConfig {
        name: name.into(),
        mtu: 1420,
        offload,
        up: true,
        queues: 1,
    }
}

/// A TCP stream between two namespaces whose only link is a userspace bridge of two
/// TUNs through this crate: super-packets are split (and checked), then coalesced.
fn tcp_bridge(offload: bool, v6: bool, mode: Bridge) {
    const TOTAL: usize = 24 << 20;
    let a = Netns::new();
    let b = Netns::new();
    let (an, bn) = (a.name.clone(), b.name.clone());
    let h = std::thread::spawn(move || {
        bridge_runtime().block_on(async move {
            let cfg = |name: &str| bridge_cfg(name, offload);
            enter_ns(&bn);
            let tb = bridge_tun(&cfg("ptiob"), mode);
            tb.add_address(v4("198.51.100.2"), 24).unwrap();
            tb.add_address(v4("2001:db8:1::2"), 64).unwrap();
            let server_addr: SocketAddr = if v6 {
                "[2001:db8:1::2]:5201".parse().unwrap()
            } else {
                "198.51.100.2:5201".parse().unwrap()
            };
            let listener = std::net::TcpListener::bind(server_addr).unwrap();
            enter_ns(&an);
            let ta = bridge_tun(&cfg("ptioa"), mode);
            ta.add_address(v4("198.51.100.1"), 24).unwrap();
            ta.add_address(v4("2001:db8:1::1"), 64).unwrap();
            assert_eq!(ta.offload_enabled(), offload);
            let p1 = Pump::start(&ta, &tb, mode);
            let p2 = Pump::start(&tb, &ta, mode);
            let server = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = vec![0u8; 1 << 16];
                let mut at = 0usize;
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    for (k, &x) in buf[..n].iter().enumerate() {
                        assert_eq!(x, pattern(at + k), "stream byte {} corrupted", at + k);
                    }
                    at += n;
                }
                s.write_all(&at.to_be_bytes()).unwrap();
                at
            });
            let client = std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(server_addr).unwrap();
                let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
                for chunk in data.chunks(256 << 10) {
                    c.write_all(chunk).unwrap();
                }
                c.shutdown(std::net::Shutdown::Write).unwrap();
                let mut r = [0u8; 8];
                c.read_exact(&mut r).unwrap();
                usize::from_be_bytes(r)
            });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !client.is_finished() {
                assert!(!p1.is_finished() && !p2.is_finished(), "pump died");
                assert!(tokio::time::Instant::now() < deadline, "transfer timed out");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let acked = client.join().unwrap();
            let received = server.join().unwrap();
            assert_eq!(received, TOTAL);
            assert_eq!(acked, TOTAL);
            let sa = ta.stats();
            let sb = tb.stats();
            eprintln!("a {sa:?}\nb {sb:?}");
            if offload {
                assert!(
                    sa.rx_gso_reads > 0,
                    "no TSO super-packet read from the sender's tun"
                );
                assert!(
                    sa.rx_packets > 2 * sa.rx_reads,
                    "offload gave no more than ~1 packet per read"
                );
            }
            assert_eq!(sa.rx_dropped + sb.rx_dropped, 0);
            // Kernel's view of the receiving tun: with GRO, far fewer (coalesced) writes
            // than packets handed to send_batch.
            enter_ns(&bn);
            let kernel_rx = kernel_rx_packets("ptiob");
            eprintln!(
                "ptiob kernel rx_packets {kernel_rx}, send_batch packets {}",
                sb.tx_packets
            );
            if offload {
                assert!(
                    kernel_rx * 2 < sb.tx_packets,
                    "GRO did not coalesce: {kernel_rx} writes for {} packets",
                    sb.tx_packets
                );
            } else {
                assert!(kernel_rx >= sb.tx_packets);
            }
            p1.stop();
            p2.stop();
        });
    });
    let r = h.join();
    drop((a, b));
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn tcp_through_tun_bridge_offload() {
    tcp_bridge(true, false, Bridge::Batch);
}

/// The same stream through devices made for a data-path thread, pumped by
/// plain threads with the `_now` methods (WireGuard's data path).
#[test]
fn tcp_through_tun_bridge_threads() {
    tcp_bridge(true, false, Bridge::Thread);
}

#[test]
fn tcp6_through_tun_bridge_threads_plain() {
    tcp_bridge(false, true, Bridge::Thread);
}

/// The same stream with the receiving side's writes gathered in place
/// (`send_gathered`): coalesced by the writev path, bytes intact.
#[test]
fn tcp_through_tun_bridge_gathered_writes() {
    tcp_bridge(true, false, Bridge::Gathered);
}

#[test]
fn tcp6_through_tun_bridge_gathered_writes() {
    tcp_bridge(true, true, Bridge::Gathered);
}

#[test]
fn tcp_through_tun_bridge_gathered_writes_plain() {
    tcp_bridge(false, false, Bridge::Gathered);
}

#[test]
fn tcp6_through_tun_bridge_offload() {
    tcp_bridge(true, true, Bridge::Batch);
}

#[test]
fn tcp_through_tun_bridge_plain() {
    tcp_bridge(false, false, Bridge::Batch);
}

/// UDP datagrams between two namespaces through the TUN bridge, written
/// with `send_gathered`: with USO on the device, runs of one flow's
/// datagrams go to the kernel as single UDP GSO packets (far fewer writes
/// than datagrams), and the receiver gets every datagram intact.
#[test]
fn udp_through_tun_bridge_gathered_writes_uso() {
    const COUNT: usize = 20_000;
    const SIZE: usize = 1200;
    let a = Netns::new();
    let b = Netns::new();
    let (an, bn) = (a.name.clone(), b.name.clone());
    let h = std::thread::spawn(move || {
        bridge_runtime().block_on(async move {
            let cfg = |name: &str| bridge_cfg(name, true);
            enter_ns(&bn);
            let tb = Arc::new(Tun::create(&cfg("ptiub")).unwrap());
            tb.add_address(v4("198.51.100.2"), 24).unwrap();
            assert!(
                tb.udp_offload_enabled(),
                "the kernel did not take USO on the TUN device (Linux >= 6.2 needed)"
            );
            let rx =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            rx.set_recv_buffer_size(32 << 20).unwrap();
            rx.bind(&"198.51.100.2:5301".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            let rx: std::net::UdpSocket = rx.into();
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            enter_ns(&an);
            let ta = Arc::new(Tun::create(&cfg("ptiua")).unwrap());
            ta.add_address(v4("198.51.100.1"), 24).unwrap();
            let p1 = tokio::spawn(pump(ta.clone(), tb.clone(), true));
            let receiver = std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut got = 0usize;
                while let Ok(n) = rx.recv(&mut buf) {
                    assert_eq!(n, SIZE, "datagram size");
                    let seq = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                    for (k, &x) in buf[4..n].iter().enumerate() {
                        assert_eq!(
                            x,
                            pattern(seq * SIZE + k),
                            "datagram {seq} byte {k} corrupted"
                        );
                    }
                    got += 1;
                }
                got
            });
            let sender = std::thread::spawn(move || {
                let tx = std::net::UdpSocket::bind("198.51.100.1:0").unwrap();
                let mut d = vec![0u8; SIZE];
                for seq in 0..COUNT {
                    d[..4].copy_from_slice(&(seq as u32).to_be_bytes());
                    for (k, x) in d[4..].iter_mut().enumerate() {
                        *x = pattern(seq * SIZE + k);
                    }
                    tx.send_to(&d, "198.51.100.2:5301").unwrap();
                    // Paced so that the (unoptimised) pump keeps up on a
                    // loaded 2-core machine: the sending TUN's queue
                    // (500 packets) drops what it does not read in time.
                    if seq % 32 == 31 {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
            });
            while !receiver.is_finished() {
                assert!(!p1.is_finished(), "pump died");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sender.join().unwrap();
            let got = receiver.join().unwrap();
            let sb = tb.stats();
            enter_ns(&bn);
            let kernel_rx = kernel_rx_packets("ptiub");
            eprintln!(
                "{got} of {COUNT} datagrams; ptiub kernel rx_packets {kernel_rx} for {} written",
                sb.tx_packets
            );
            assert!(
                got * 10 >= COUNT * 8,
                "only {got} of {COUNT} datagrams arrived"
            );
            assert!(
                kernel_rx * 4 < sb.tx_packets,
                "UDP runs not coalesced: {kernel_rx} writes for {} datagrams",
                sb.tx_packets
            );
            p1.abort();
        });
    });
    let r = h.join();
    drop((a, b));
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// Reads both queues until `want` UDP packets to or from `port` were seen: (queue, payload) in
/// the order each queue returned them.
async fn read_queues(qs: [&Tun; 2], port: u16, want: usize) -> Vec<(usize, Vec<u8>)> {
    let mut got = Vec::new();
    let mut store = vec![vec![0u8; OFF + 2048]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {} of {want} packets",
            got.len()
        );
        for (qi, q) in qs.into_iter().enumerate() {
            let mut bufs = make_bufs(&mut store);
            let Ok(Ok(n)) = tokio::time::timeout(
                Duration::from_millis(20),
                q.recv_batch(&mut bufs, &mut sizes, OFF),
            )
            .await
            else {
                continue;
            };
            for i in 0..n {
                let p = &bufs[i][OFF..OFF + sizes[i]];
                let ports = [
                    u16::from_be_bytes([p[20], p[21]]),
                    u16::from_be_bytes([p[22], p[23]]),
                ];
                if p[0] >> 4 == 4 && p[9] == 17 && ports.contains(&port) {
                    got.push((qi, p.to_vec()));
                }
            }
        }
    }
    got
}

fn two_queues(name: &str) -> (Tun, Arc<Tun>) {
    let q0 = Tun::create(&TunConfig {
        name: name.into(),
        mtu: 1420,
        offload: true,
        up: true,
        queues: 2,
    })
    .expect("create multi-queue tun");
    assert_eq!(q0.queue_count(), 2);
    let q1 = q0.queue(1).expect("queue 1");
    assert!(q0.queue(0).is_none() && q0.queue(2).is_none());
    q0.add_address(v4("198.51.100.1"), 24).expect("address");
    (q0, q1)
}

/// Two queues, flows from local sockets: the kernel spreads them by hash; reading both
/// queues sees every packet once, each flow entirely on one queue and in order.
async fn multi_queue_spreads_flows() {
    let (q0, q1) = two_queues("ptmq0");
    const FLOWS: usize = 16;
    const PER_FLOW: usize = 8;
    let socks: Vec<_> = (0..FLOWS)
        .map(|_| std::net::UdpSocket::bind("198.51.100.1:0").unwrap())
        .collect();
    for seq in 0..PER_FLOW {
        for (f, s) in socks.iter().enumerate() {
            s.send_to(&[f as u8, seq as u8], "198.51.100.2:9999")
                .unwrap();
        }
    }
    let got = read_queues([&q0, &q1], 9999, FLOWS * PER_FLOW).await;
    assert!(
        (0..2).all(|q| got.iter().any(|g| g.0 == q)),
        "{FLOWS} flows all went to one queue"
    );
    for f in 0..FLOWS as u8 {
        let of_flow: Vec<&(usize, Vec<u8>)> = got.iter().filter(|g| g.1[28] == f).collect();
        assert!(
            of_flow.iter().all(|g| g.0 == of_flow[0].0),
            "flow {f} split over queues"
        );
        let seqs: Vec<u8> = of_flow.iter().map(|g| g.1[29]).collect();
        assert_eq!(seqs, (0..PER_FLOW as u8).collect::<Vec<_>>(), "flow {f}");
    }
    // Counters are the device's, whichever queue read.
    assert!(q1.stats().rx_packets >= (FLOWS * PER_FLOW) as u64);
    assert_eq!(q0.stats(), q1.stats());
}

/// Writes steer flows: a packet written through queue 0's `send_batch` goes to the
/// queue `flow_queue` names, and the kernel then sends that flow's answers out of the
/// same queue — so one reader sees both directions of a flow, and flows spread.
async fn multi_queue_write_steers_flows() {
    let (q0, q1) = two_queues("ptmq1");
    const FLOWS: usize = 16;
    let socks: Vec<_> = (0..FLOWS)
        .map(|_| std::net::UdpSocket::bind("198.51.100.1:0").unwrap())
        .collect();
    let mut store = vec![vec![0u8; OFF + MAX_PACKET_LEN]; FLOWS];
    let mut sizes = vec![0usize; FLOWS];
    let mut want_queue = Vec::new();
    for (i, (b, s)) in store.iter_mut().zip(&socks).enumerate() {
        let lport = s.local_addr().unwrap().port();
        sizes[i] = build_udp4(
            &mut b[OFF..],
            [198, 51, 100, 2],
            [198, 51, 100, 1],
            9998,
            lport,
            &[i as u8],
        );
        want_queue.push(polytun_io::flow_queue(&b[OFF..OFF + sizes[i]], 2));
    }
    assert!(
        want_queue.contains(&0) && want_queue.contains(&1),
        "flow_queue put {FLOWS} flows on one queue: {want_queue:?}"
    );
    let mut bufs = make_bufs(&mut store);
    q0.send_batch(&mut bufs, &sizes, OFF).await.expect("write");
    for (i, s) in socks.iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 16];
        let (n, from) = s
            .recv_from(&mut b)
            .expect("the written packet was delivered");
        assert_eq!((&b[..n], from.port()), (&[i as u8][..], 9998));
        s.send_to(&[i as u8, 0xaa], from).unwrap();
    }
    let got = read_queues([&q0, &q1], 9998, FLOWS).await;
    for (q, p) in got {
        let i = usize::from(p[28]);
        assert_eq!(
            q, want_queue[i],
            "the answer of flow {i} left from queue {q}"
        );
    }
}

#[test]
fn tun_multi_queue_spreads_flows_in_order() {
    let ns = Netns::new();
    run_in(&ns, multi_queue_spreads_flows);
}

#[test]
fn tun_multi_queue_write_steers_each_flow_to_its_queue() {
    let ns = Netns::new();
    run_in(&ns, multi_queue_write_steers_flows);
}

#[test]
fn flow_queue_is_symmetric_and_spreads() {
    let mut a = vec![0u8; 64];
    let mut b = vec![0u8; 64];
    let mut seen = [0usize; 4];
    for port in 1000..1400u16 {
        let n = build_udp4(&mut a, [198, 51, 100, 1], [203, 0, 113, 9], port, 443, b"x");
        let m = build_udp4(&mut b, [203, 0, 113, 9], [198, 51, 100, 1], 443, port, b"x");
        let q = polytun_io::flow_queue(&a[..n], 4);
        assert_eq!(q, polytun_io::flow_queue(&b[..m], 4), "port {port}");
        seen[q] += 1;
    }
    assert!(seen.iter().all(|&c| c > 50), "uneven spread {seen:?}");
    assert_eq!(polytun_io::flow_queue(&a[..10], 4), 0, "truncated packet");
    assert_eq!(polytun_io::flow_queue(&a, 1), 0);
}

#[test]
fn tun_single_queue_has_no_other_queues() {
    let ns = Netns::new();
    run_in(&ns, || async {
        let t = Tun::create(&TunConfig {
            name: "ptsq0".into(),
            ..TunConfig::default()
        })
        .expect("create tun");
        assert_eq!(t.queue_count(), 1);
        assert!(t.queue(1).is_none());
    });
}

/// `proto`'s (`"Tcp"`, `"Udp"`) counter `name` in /proc/net/snmp of the
/// calling thread's namespace.
fn snmp(proto: &str, name: &str) -> u64 {
    let t = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let mut lines = t.lines().filter(|l| l.starts_with(&format!("{proto}:")));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("{proto} {name} in /proc/net/snmp"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// An IPv4 TCP segment 198.51.100.2:40000 -> 198.51.100.1:9 (ACK, no
/// options) at `seq`, with valid checksums.
fn tcp4_segment(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[198, 51, 100, 2]);
    p[16..20].copy_from_slice(&[198, 51, 100, 1]);
    let c = common::csum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&1u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x10;
    p[34..36].copy_from_slice(&1024u16.to_be_bytes());
    p.extend_from_slice(payload);
    let len = ((p.len() - 20) as u16).to_be_bytes();
    let pseudo = [&p[12..20], &[0, 6], &len[..]].concat();
    let c = common::csum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// Gathered writes coalesce only packets whose own checksums hold: a
/// segment or datagram corrupted before it was sealed reaches the kernel
/// alone and unchanged, and the kernel counts it and drops it, instead of
/// getting a valid checksum as part of a run (which would deliver the
/// corrupted bytes as data). The good ones around it still form runs.
fn gathered_writes_keep_wrong_checksums() {
    let tun = Tun::create_for_thread(&bridge_cfg("ptcsum0", true)).expect("create tun");
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/ptcsum0/disable_ipv6", "1");
    tun.add_address(v4("198.51.100.1"), 24)
        .expect("add address");
    assert!(
        tun.udp_offload_enabled(),
        "USO on the device (Linux >= 6.2)"
    );
    let sock = std::net::UdpSocket::bind("198.51.100.1:9999").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let write = |pkts: &[Vec<u8>]| {
        let mut store: Vec<Vec<u8>> = pkts.iter().map(|p| [&[0u8; OFF][..], p].concat()).collect();
        let mut bufs = make_bufs(&mut store);
        tun.send_gathered_now(&mut bufs, OFF)
            .expect("gathered write");
    };
    let corrupt = |p: &mut Vec<u8>| {
        let last = p.len() - 1;
        p[last] ^= 0x5a;
    };

    // TCP: good, good, bad, good, good, bad.
    let mut segs: Vec<Vec<u8>> = (0..6u32)
        .map(|i| tcp4_segment(1 + i * 1000, &[i as u8 + 1; 1000]))
        .collect();
    corrupt(&mut segs[2]);
    corrupt(&mut segs[5]);
    let (errors, rx) = (snmp("Tcp", "InCsumErrors"), kernel_rx_packets("ptcsum0"));
    write(&segs);
    assert_eq!(
        snmp("Tcp", "InCsumErrors") - errors,
        2,
        "the kernel saw both wrong TCP checksums"
    );
    assert_eq!(
        kernel_rx_packets("ptcsum0") - rx,
        4,
        "written as [0 1] [2] [3 4] [5]"
    );

    // UDP: good, good, bad, good, good; the socket gets the four good ones.
    let mut dgrams: Vec<Vec<u8>> = (0..5u8)
        .map(|i| {
            let mut b = vec![0u8; 28 + 600];
            let n = build_udp4(
                &mut b,
                [198, 51, 100, 2],
                [198, 51, 100, 1],
                40000,
                9999,
                &[i; 600],
            );
            b.truncate(n);
            b
        })
        .collect();
    corrupt(&mut dgrams[2]);
    let (errors, rx) = (snmp("Udp", "InCsumErrors"), kernel_rx_packets("ptcsum0"));
    write(&dgrams);
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..4 {
        let n = sock.recv(&mut buf).expect("a good datagram");
        got.push(buf[..n].to_vec());
    }
    let want: Vec<Vec<u8>> = [0u8, 1, 3, 4].iter().map(|&i| vec![i; 600]).collect();
    assert_eq!(got, want, "the good datagrams, intact and in order");
    assert_eq!(
        snmp("Udp", "InCsumErrors") - errors,
        1,
        "the kernel saw the wrong UDP checksum"
    );
    assert_eq!(
        kernel_rx_packets("ptcsum0") - rx,
        3,
        "written as [0 1] [2] [3 4]"
    );
}

#[test]
fn tun_gathered_writes_keep_wrong_checksums() {
    let ns = Netns::new();
    common::run_in_thread(&ns, gathered_writes_keep_wrong_checksums);
}
