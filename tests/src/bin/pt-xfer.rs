//! pt-xfer: tiny checksummed TCP transfer and UDP datagram injector for the e2e tests.
//!
//! ```text
//! pt-xfer serve ADDR:PORT [TIMEOUT_SECS]      accept one TCP connection, read to EOF,
//!                                             print `bytes=N sha256=HEX`
//! pt-xfer send ADDR:PORT BYTES SEED           send BYTES deterministic pseudo-random bytes,
//!                                             print `bytes=N sha256=HEX`
//! pt-xfer udp ADDR:PORT HEX [COUNT]           send the datagram HEX (COUNT times, default 1)
//! ```
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::exit;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: pt-xfer serve ADDR:PORT [TIMEOUT_SECS] | send ADDR:PORT BYTES SEED | udp ADDR:PORT HEX [COUNT]"
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
        _ => usage(),
    }
}
