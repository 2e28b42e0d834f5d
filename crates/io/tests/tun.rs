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

/// Forward packets between two TUNs, checking every packet read from `from`.
async fn pump(from: Arc<Tun>, to: Arc<Tun>) {
    let mut store = vec![vec![0u8; OFF + MAX_PACKET_LEN]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    loop {
        let mut bufs = make_bufs(&mut store);
        let n = from
            .recv_batch(&mut bufs, &mut sizes, OFF)
            .await
            .expect("recv_batch");
        for i in 0..n {
            let p = &bufs[i][OFF..OFF + sizes[i]];
            assert!(sizes[i] <= from.mtu(), "segment of {} > MTU", sizes[i]);
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
        to.send_batch(&mut bufs[..n], &sizes[..n], OFF)
            .await
            .expect("send_batch");
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

/// A TCP stream between two namespaces whose only link is a userspace bridge of two
/// TUNs through this crate: super-packets are split (and checked), then coalesced.
fn tcp_bridge(offload: bool, v6: bool) {
    const TOTAL: usize = 24 << 20;
    let a = Netns::new();
    let b = Netns::new();
    let (an, bn) = (a.name.clone(), b.name.clone());
    let h = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = |name: &str| TunConfig {
                name: name.into(),
                mtu: 1420,
                offload,
                up: true,
            };
            enter_ns(&bn);
            let tb = Arc::new(Tun::create(&cfg("ptiob")).unwrap());
            tb.add_address(v4("198.51.100.2"), 24).unwrap();
            tb.add_address(v4("2001:db8:1::2"), 64).unwrap();
            let server_addr: SocketAddr = if v6 {
                "[2001:db8:1::2]:5201".parse().unwrap()
            } else {
                "198.51.100.2:5201".parse().unwrap()
            };
            let listener = std::net::TcpListener::bind(server_addr).unwrap();
            enter_ns(&an);
            let ta = Arc::new(Tun::create(&cfg("ptioa")).unwrap());
            ta.add_address(v4("198.51.100.1"), 24).unwrap();
            ta.add_address(v4("2001:db8:1::1"), 64).unwrap();
            assert_eq!(ta.offload_enabled(), offload);
            let p1 = tokio::spawn(pump(ta.clone(), tb.clone()));
            let p2 = tokio::spawn(pump(tb.clone(), ta.clone()));
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
            p1.abort();
            p2.abort();
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
    tcp_bridge(true, false);
}

#[test]
fn tcp6_through_tun_bridge_offload() {
    tcp_bridge(true, true);
}

#[test]
fn tcp_through_tun_bridge_plain() {
    tcp_bridge(false, false);
}
