//! Batched UDP: GSO send / GRO+recvmmsg receive over loopback, IPv4 and IPv6.

mod common;

use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{run_in, Netns};
use polytun_io::{RecvMeta, Transmit, UdpSocket, UDP_RECV_BATCH};

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i * 31 + k) as u8).collect()
}

/// Receive until `want` datagrams arrived; returns (datagrams, saw a GRO-coalesced entry).
async fn recv_all(sock: &UdpSocket, want: usize, from: SocketAddr) -> (Vec<Vec<u8>>, bool) {
    let mut store = vec![vec![0u8; 65536]; UDP_RECV_BATCH];
    let mut meta = vec![RecvMeta::default(); UDP_RECV_BATCH];
    let mut out = Vec::new();
    let mut coalesced = false;
    while out.len() < want {
        let mut iov: Vec<IoSliceMut<'_>> = store.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv_batch(&mut iov, &mut meta))
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {want} datagrams", out.len()))
            .expect("recv_batch");
        for (m, b) in meta.iter().zip(&store).take(n) {
            assert_eq!(m.addr, from, "source address");
            assert!(m.dst_ip.is_some(), "destination ip (pktinfo) missing");
            assert!(m.stride > 0);
            if m.len > m.stride {
                coalesced = true;
            }
            for d in b[..m.len].chunks(m.stride) {
                out.push(d.to_vec());
            }
        }
    }
    (out, coalesced)
}

async fn batch_roundtrip(local: &str) {
    let a = UdpSocket::bind(format!("{local}:0").parse().unwrap()).expect("bind a");
    let b = UdpSocket::bind(format!("{local}:0").parse().unwrap()).expect("bind b");
    let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    assert_ne!(aa.port(), 0);
    let (rbuf, sbuf) = a.buffer_sizes().unwrap();
    assert!(
        rbuf >= 1 << 20 && sbuf >= 1 << 20,
        "socket buffers too small: {rbuf} {sbuf}"
    );
    eprintln!(
        "{local}: max_gso_segments {} gro_segments {}",
        a.max_gso_segments(),
        b.gro_segments()
    );

    // 3 rounds of: one GSO run of 40 x 1200 bytes (+ a short tail), plus 10 singles.
    let mut expect = Vec::new();
    for round in 0..3 {
        let mut run = Vec::new();
        for i in 0..40 {
            let d = payload(round * 1000 + i, 1200);
            run.extend_from_slice(&d);
            expect.push(d);
        }
        let tail = payload(round * 1000 + 40, 300);
        run.extend_from_slice(&tail);
        expect.push(tail);
        let singles: Vec<Vec<u8>> = (0..10)
            .map(|i| payload(round * 1000 + 100 + i, 20 + i * 97))
            .collect();
        let mut tx = vec![Transmit {
            destination: ba,
            ecn: None,
            contents: &run,
            segment_size: Some(1200),
            src_ip: None,
        }];
        for s in &singles {
            tx.push(Transmit {
                destination: ba,
                ecn: None,
                contents: s,
                segment_size: None,
                src_ip: None,
            });
        }
        expect.extend(singles.iter().cloned());
        a.send_batch(&tx).await.expect("send_batch");
    }
    let (got, coalesced) = recv_all(&b, expect.len(), aa).await;
    assert_eq!(got.len(), expect.len());
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert_eq!(g, e, "datagram {i}");
    }
    if a.max_gso_segments() > 1 && b.gro_segments() > 1 {
        assert!(coalesced, "GSO+GRO available but no coalesced receive seen");
    }

    // Many datagrams, small, in batches of single transmits; plus the handshake path.
    let many: Vec<Vec<u8>> = (0..2000).map(|i| payload(i, 64 + i % 50)).collect();
    for chunk in many.chunks(64) {
        let tx: Vec<Transmit<'_>> = chunk
            .iter()
            .map(|c| Transmit {
                destination: ba,
                ecn: None,
                contents: c,
                segment_size: None,
                src_ip: None,
            })
            .collect();
        a.send_batch(&tx).await.unwrap();
    }
    a.send_to(b"handshake", ba).await.unwrap();
    let (got, _) = recv_all(&b, many.len() + 1, aa).await;
    assert_eq!(&got[..many.len()], &many[..]);
    assert_eq!(got[many.len()], b"handshake");
}

#[test]
fn udp_batch_ipv4_loopback() {
    let ns = Netns::new();
    run_in(&ns, || batch_roundtrip("127.0.0.1"));
}

#[test]
fn udp_batch_ipv6_loopback() {
    let ns = Netns::new();
    run_in(&ns, || batch_roundtrip("[::1]"));
}

#[test]
fn udp_dual_stack_sends_to_ipv4() {
    let ns = Netns::new();
    run_in(&ns, || async {
        let a = UdpSocket::bind("[::]:0".parse().unwrap()).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let ba = b.local_addr().unwrap();
        a.try_send_to(b"one", ba).unwrap();
        let run: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        a.send_batch(&[Transmit {
            destination: ba,
            ecn: None,
            contents: &run,
            segment_size: Some(1000),
            src_ip: None,
        }])
        .await
        .unwrap();
        let from = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), a.local_addr().unwrap().port());
        let (got, _) = recv_all(&b, 4, from).await;
        assert_eq!(got[0], b"one");
        assert_eq!(got[1..].concat(), run);
    });
}

/// Runs of equal-size datagrams sent gathered from separate buffers (one
/// iovec each, UDP GSO): every datagram arrives whole and in order, past
/// the 64 KiB one send may carry, from a dual-stack socket to IPv4 too.
#[test]
fn udp_gathered_gso_from_separate_buffers() {
    let ns = Netns::new();
    run_in(&ns, || async {
        for (from_addr, to_addr) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::]:0", "127.0.0.1:0")] {
            let a = UdpSocket::bind(from_addr.parse().unwrap()).unwrap();
            let b = UdpSocket::bind(to_addr.parse().unwrap()).unwrap();
            let ba = b.local_addr().unwrap();
            let from =
                SocketAddr::new(IpAddr::from([127, 0, 0, 1]), a.local_addr().unwrap().port());
            // 100 x 1300 bytes (two GSO sends' worth) and a short last one
            let expect: Vec<Vec<u8>> = (0..101)
                .map(|i| payload(i, if i < 100 { 1300 } else { 200 }))
                .collect();
            let slices: Vec<std::io::IoSlice<'_>> =
                expect.iter().map(|d| std::io::IoSlice::new(d)).collect();
            a.send_gathered(ba, &slices).await.expect("send_gathered");
            let (got, coalesced) = recv_all(&b, expect.len(), from).await;
            assert_eq!(got, expect, "{from_addr} -> {to_addr}");
            if a.max_gso_segments() > 1 && b.gro_segments() > 1 {
                assert!(coalesced, "GSO+GRO available but no coalesced receive seen");
            }
            // the same datagrams back to back in one buffer (sent as one
            // iovec per stretch)
            let whole = expect.concat();
            let mut slices: Vec<std::io::IoSlice<'_>> =
                whole.chunks(1300).map(std::io::IoSlice::new).collect();
            // one datagram from elsewhere in the middle of the run
            let elsewhere = expect[50].clone();
            slices[50] = std::io::IoSlice::new(&elsewhere);
            a.send_gathered(ba, &slices).await.expect("send_gathered");
            let (got, _) = recv_all(&b, expect.len(), from).await;
            assert_eq!(got, expect, "{from_addr} -> {to_addr}, back to back");
            let slices: Vec<std::io::IoSlice<'_>> =
                expect.iter().map(|d| std::io::IoSlice::new(d)).collect();
            // a single datagram goes without a segment size
            a.send_gathered(ba, &slices[..1]).await.unwrap();
            let (got, _) = recv_all(&b, 1, from).await;
            assert_eq!(got[0], expect[0]);
        }
    });
}

/// Receives on a thread socket (polling it) until `want` datagrams from
/// `from` arrived.
fn recv_now_all(sock: &UdpSocket, want: usize, from: SocketAddr) -> Vec<Vec<u8>> {
    let mut store = vec![vec![0u8; 65536]; UDP_RECV_BATCH];
    let mut meta = vec![RecvMeta::default(); UDP_RECV_BATCH];
    let mut got: Vec<Vec<u8>> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.len() < want {
        assert!(std::time::Instant::now() < deadline, "timed out");
        let mut iov: Vec<IoSliceMut<'_>> = store.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let n = match sock.recv_batch_now(&mut iov, &mut meta) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                common::wait_readable(sock.raw_fd(), 1000);
                continue;
            }
            Err(e) => panic!("recv_batch_now: {e}"),
        };
        for (m, s) in meta.iter().zip(&store).take(n) {
            assert_eq!(m.addr, from, "source address");
            for d in s[..m.len].chunks(m.stride) {
                got.push(d.to_vec());
            }
        }
    }
    got
}

/// Sockets bound for a data-path thread work without a runtime: the `_now`
/// methods do the batched, offloaded I/O and the caller polls the
/// descriptor; the async methods refuse.
#[test]
fn udp_thread_sockets_poll_themselves() {
    let ns = Netns::new();
    common::run_in_thread(&ns, || {
        let a = UdpSocket::bind_for_thread("[::]:0".parse().unwrap()).unwrap();
        let b = UdpSocket::bind_for_thread("127.0.0.1:0".parse().unwrap()).unwrap();
        let ba = b.local_addr().unwrap();
        let mut store = vec![vec![0u8; 65536]; UDP_RECV_BATCH];
        let mut meta = vec![RecvMeta::default(); UDP_RECV_BATCH];
        let mut iov: Vec<IoSliceMut<'_>> = store.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let e = b.recv_batch_now(&mut iov, &mut meta).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        {
            let fut = b.recv_batch(&mut iov, &mut meta);
            let mut fut = std::pin::pin!(fut);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::future::Future::poll(fut.as_mut(), &mut cx) {
                std::task::Poll::Ready(Err(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported)
                }
                other => panic!("async recv_batch on a thread socket: {other:?}"),
            }
        }
        drop(iov);
        // One GSO run of 40 x 1200 bytes and a short tail, dual stack to v4.
        let mut run = Vec::new();
        let mut expect = Vec::new();
        for i in 0..41 {
            let d = payload(i, if i < 40 { 1200 } else { 300 });
            run.extend_from_slice(&d);
            expect.push(d);
        }
        a.send_batch_now(&[Transmit {
            destination: ba,
            ecn: None,
            contents: &run,
            segment_size: Some(1200),
            src_ip: None,
        }])
        .unwrap();
        let from = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), a.local_addr().unwrap().port());
        assert_eq!(recv_now_all(&b, expect.len(), from), expect);

        // The same run gathered from separate buffers.
        let slices: Vec<std::io::IoSlice<'_>> =
            expect.iter().map(|d| std::io::IoSlice::new(d)).collect();
        a.send_gathered_now(ba, &slices).unwrap();
        assert_eq!(recv_now_all(&b, expect.len(), from), expect);
    });
}
