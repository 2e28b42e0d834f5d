//! pt-xfer: tiny checksummed TCP transfer and UDP datagram injector for the e2e tests.
//!
//! ```text
//! pt-xfer serve ADDR:PORT [TIMEOUT_SECS]      accept one TCP connection, read to EOF,
//!                                             print `bytes=N sha256=HEX`
//! pt-xfer send ADDR:PORT BYTES SEED           send BYTES deterministic pseudo-random bytes,
//!                                             print `bytes=N sha256=HEX`
//! pt-xfer udp ADDR:PORT HEX [COUNT]           send the datagram HEX (COUNT times, default 1)
//! pt-xfer burst ADDR:PORT SIZE COUNT          send COUNT datagrams of SIZE bytes, 8 to a UDP GSO
//!                                             send, one send every 100 µs or so
//! pt-xfer badsum SRC ADDR:PORT COUNT          send COUNT UDP datagrams from address SRC whose
//!                                             checksum is wrong on purpose (raw socket)
//! pt-xfer hsflood ADDR:PORT PUBKEY COUNT       send COUNT WireGuard handshake initiations with a
//!                                             valid mac1 for responder PUBKEY (base64) and junk
//!                                             inside, as fast as possible; print what came back:
//!                                             `sent=N responses=N cookie_replies=N other=N`
//! ```
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::exit;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: pt-xfer serve ADDR:PORT [TIMEOUT_SECS] | send ADDR:PORT BYTES SEED | udp ADDR:PORT HEX [COUNT] \
         | burst ADDR:PORT SIZE COUNT | badsum SRC ADDR:PORT COUNT | hsflood ADDR:PORT PUBKEY COUNT"
    );
    exit(2)
}

fn die(msg: String) -> ! {
    eprintln!("pt-xfer: {msg}");
    exit(1)
}

/// xorshift64* stream: deterministic, fast, good enough to defeat compression/dedup.
struct Prng(u64);
impl Prng {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    if s.len() & 1 == 1 {
        die(format!("odd-length hex string ({} chars)", s.len()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| die(format!("bad hex: {e}")))
        })
        .collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| die(format!("bad address {s}: {e}")))
}

fn serve(a: SocketAddr, timeout: u64) {
    let l = TcpListener::bind(a).unwrap_or_else(|e| die(format!("bind {a}: {e}")));
    eprintln!("pt-xfer: listening on {a}");
    let (mut s, peer) = l.accept().unwrap_or_else(|e| die(format!("accept: {e}")));
    eprintln!("pt-xfer: connection from {peer}");
    s.set_read_timeout(Some(Duration::from_secs(timeout))).ok();
    let mut h = Sha256::new();
    let mut n: u64 = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => die(format!("read after {n} bytes: {e}")),
        }
    }
    let line = format!("bytes={n} sha256={}", hex(&h.finalize()));
    println!("{line}");
    // tell the sender what arrived, so it can wait for the end-to-end confirmation
    let _ = s.write_all(format!("{line}\n").as_bytes());
}

fn send(a: SocketAddr, total: u64, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("pt-xfer: connect {a}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => die(format!("connect {a}: {e}")),
        }
    };
    let start = Instant::now();
    let mut rng = Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = total;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..k]);
        h.update(&buf[..k]);
        s.write_all(&buf[..k])
            .unwrap_or_else(|e| die(format!("write after {} bytes: {e}", total - left)));
        left -= k as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
        .unwrap_or_else(|e| die(format!("shutdown: {e}")));
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "pt-xfer: sent {total} bytes in {secs:.2}s ({:.3} Gbit/s); server said: {}",
        total as f64 * 8.0 / secs / 1e9,
        reply.trim()
    );
    println!("bytes={total} sha256={}", hex(&h.finalize()));
}

fn udp(a: SocketAddr, payload: &[u8], count: u32) {
    let bind: SocketAddr = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .unwrap();
    let s = UdpSocket::bind(bind).unwrap_or_else(|e| die(format!("bind: {e}")));
    for _ in 0..count {
        s.send_to(payload, a)
            .unwrap_or_else(|e| die(format!("send_to {a}: {e}")));
        std::thread::sleep(Duration::from_millis(2));
    }
    println!("sent {count} datagram(s) of {} bytes to {a}", payload.len());
}

/// `count` datagrams of `size` bytes, 8 to a `sendmsg` with UDP_SEGMENT: the kernel hands them
/// on as one UDP GSO packet, which is what a tunnel's segmentation offload paths see.
fn burst(a: SocketAddr, size: usize, count: u64) {
    use std::os::fd::AsRawFd;
    const PER_SEND: u64 = 8;
    let bind: SocketAddr = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .unwrap();
    // not connected: the receiver's port unreachable errors would fail the next send
    let s = UdpSocket::bind(bind).unwrap_or_else(|e| die(format!("bind: {e}")));
    let seg = size as libc::c_int;
    // SAFETY: a valid descriptor and an int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&seg as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        die(format!("UDP_SEGMENT: {}", std::io::Error::last_os_error()));
    }
    let mut buf = vec![0u8; size * PER_SEND as usize];
    Prng(0x5eed_0fb0_a570_0001).fill(&mut buf);
    let mut sent = 0;
    while sent < count {
        let n = (count - sent).min(PER_SEND);
        s.send_to(&buf[..size * n as usize], a)
            .unwrap_or_else(|e| die(format!("send to {a} after {sent} datagrams: {e}")));
        sent += n;
        // a burst, but not a flood that only measures the slowest queue on the way
        std::thread::sleep(Duration::from_micros(100));
    }
    println!("sent {count} datagram(s) of {size} bytes to {a}");
}

/// One's complement sum of `data` as big-endian 16-bit words, added to `sum`.
fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

/// `count` UDP datagrams from `src` to `a` with a wrong checksum (not 0, which would mean "none"
/// over IPv4), sent through a raw socket so that no stack fixes it. A receiver that checks
/// checksums counts each in `InCsumErrors`.
fn badsum(src: std::net::IpAddr, a: SocketAddr, count: u64) {
    use std::net::IpAddr;
    let payload = b"polytun: a datagram with a wrong checksum";
    let len = 8 + payload.len();
    let mut d = vec![0u8; len];
    d[0..2].copy_from_slice(&40000u16.to_be_bytes());
    d[2..4].copy_from_slice(&a.port().to_be_bytes());
    d[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    d[8..].copy_from_slice(payload);
    // the right checksum first, so the wrong one is surely wrong
    let pseudo = match (src, a.ip()) {
        (IpAddr::V4(s), IpAddr::V4(t)) => ones_sum(ones_sum(0, &s.octets()), &t.octets()),
        (IpAddr::V6(s), IpAddr::V6(t)) => ones_sum(ones_sum(0, &s.octets()), &t.octets()),
        _ => die(format!("{src} and {a} are not of one family")),
    } + 17
        + len as u32;
    let mut sum = ones_sum(pseudo, &d);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let right = !(sum as u16);
    let wrong: u16 = if right == 0x1234 { 0x4321 } else { 0x1234 };
    d[6..8].copy_from_slice(&wrong.to_be_bytes());
    let family = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    if fd < 0 {
        die(format!(
            "raw socket: {} (needs CAP_NET_RAW)",
            std::io::Error::last_os_error()
        ));
    }
    // the raw socket's port must be 0 (IPv6 takes it as the protocol)
    let sa = |ip: IpAddr| -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match ip {
            IpAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                std::mem::size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(v6) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_addr.s6_addr = v6.octets();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    };
    let (from, from_len) = sa(src);
    // SAFETY: a valid descriptor and socket address of the given length.
    if unsafe {
        libc::bind(
            fd,
            (&from as *const libc::sockaddr_storage).cast(),
            from_len,
        )
    } != 0
    {
        die(format!("bind {src}: {}", std::io::Error::last_os_error()));
    }
    let (to, to_len) = sa(a.ip());
    for i in 0..count {
        // SAFETY: as above; `d` outlives the call.
        let r = unsafe {
            libc::sendto(
                fd,
                d.as_ptr().cast(),
                d.len(),
                0,
                (&to as *const libc::sockaddr_storage).cast(),
                to_len,
            )
        };
        if r < 0 {
            die(format!(
                "sendto {a} ({i} sent): {}",
                std::io::Error::last_os_error()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    println!("sent {count} datagram(s) with checksum {wrong:#06x} (right: {right:#06x}) to {a}");
}

/// Handshake initiations that pass the mac1 check of the responder with public key `pubkey`
/// (the first check, done before any DH), filled with pseudo-random bytes otherwise.
fn hsflood(a: SocketAddr, pubkey: &str, count: u64) {
    use base64::Engine;
    use blake2::digest::{FixedOutput, KeyInit, Update};
    use blake2::{Blake2s256, Blake2sMac, Digest};
    let pk = base64::engine::general_purpose::STANDARD
        .decode(pubkey.trim())
        .unwrap_or_else(|e| die(format!("bad public key: {e}")));
    if pk.len() != 32 {
        die(format!("public key is {} bytes, not 32", pk.len()));
    }
    let mac1_key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(&pk)
        .finalize();
    let bind: SocketAddr = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .unwrap();
    let s = UdpSocket::bind(bind).unwrap_or_else(|e| die(format!("bind: {e}")));
    s.set_nonblocking(true).unwrap();
    let mut rng = Prng(0x1234_5678_9abc_def1);
    let (mut responses, mut cookies, mut other) = (0u64, 0u64, 0u64);
    let mut rbuf = [0u8; 2048];
    let mut drain = |s: &UdpSocket| {
        while let Ok((n, _)) = s.recv_from(&mut rbuf) {
            match (rbuf[0], n) {
                (2, 92) => responses += 1,
                (3, 64) => cookies += 1,
                _ => other += 1,
            }
        }
    };
    let start = Instant::now();
    for _ in 0..count {
        let mut m = [0u8; 148];
        rng.fill(&mut m[4..116]);
        m[0] = 1;
        m[1..4].fill(0);
        let mut mac =
            <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(&mac1_key)
                .expect("mac1 key");
        mac.update(&m[..116]);
        m[116..132].copy_from_slice(&mac.finalize_fixed());
        // mac2 stays zero: no cookie yet
        loop {
            match s.send_to(&m, a) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_micros(100))
                }
                Err(e) => die(format!("send_to {a}: {e}")),
            }
        }
        drain(&s);
    }
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        drain(&s);
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "pt-xfer: flood of {count} took {:.2}s",
        start.elapsed().as_secs_f64()
    );
    println!("sent={count} responses={responses} cookie_replies={cookies} other={other}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> u64 {
        args.get(i)
            .map(|s| {
                s.parse()
                    .unwrap_or_else(|e| die(format!("bad number {s}: {e}")))
            })
            .unwrap_or_else(|| usage())
    };
    match args.first().map(String::as_str) {
        Some("serve") if args.len() >= 2 => {
            let t = if args.len() > 2 { num(2) } else { 120 };
            serve(addr(&args[1]), t)
        }
        Some("send") if args.len() == 4 => send(addr(&args[1]), num(2), num(3)),
        Some("udp") if args.len() >= 3 => {
            let c = if args.len() > 3 { num(3) as u32 } else { 1 };
            udp(addr(&args[1]), &unhex(&args[2]), c)
        }
        Some("burst") if args.len() == 4 => burst(addr(&args[1]), num(2) as usize, num(3)),
        Some("badsum") if args.len() == 4 => badsum(
            args[1]
                .parse()
                .unwrap_or_else(|e| die(format!("bad address {}: {e}", args[1]))),
            addr(&args[2]),
            num(3),
        ),
        Some("hsflood") if args.len() == 4 => hsflood(addr(&args[1]), &args[2], num(3)),
        _ => usage(),
    }
}
