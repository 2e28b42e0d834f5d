//! Test helpers: throw-away network namespaces (`pt-io-<pid>-<n>`), entered per thread.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace deleted on drop (also when the test panics).
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "pt-io-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Move the calling thread into this namespace.
    pub fn enter(&self) {
        enter_ns(&self.name);
    }
}

/// Move the calling thread into the named namespace.
pub fn enter_ns(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    // SAFETY: valid fd of a netns file.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Run `f` on a fresh thread inside `ns` with a current-thread tokio runtime.
/// Panics in `f` propagate after the thread ends (the caller's `Netns` guard still drops).
pub fn run_in<F, Fut>(ns: &Netns, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let name = ns.name.clone();
    let h = std::thread::spawn(move || {
        enter_ns(&name);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f());
    });
    if let Err(p) = h.join() {
        std::panic::resume_unwind(p);
    }
}

/// Internet checksum (one's complement of the one's-complement sum).
pub fn csum(parts: &[&[u8]]) -> u16 {
    let mut s: u64 = 0;
    for p in parts {
        let mut it = p.chunks_exact(2);
        for c in &mut it {
            s += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [b] = it.remainder() {
            s += u64::from(*b) << 8;
        }
    }
    while s > 0xffff {
        s = (s >> 16) + (s & 0xffff);
    }
    !(s as u16)
}

/// Check an IPv4 packet: total length, header checksum, and TCP/UDP checksum.
/// Returns the IP protocol number.
pub fn check_ipv4(p: &[u8]) -> u8 {
    assert!(p.len() >= 20, "short packet {}", p.len());
    assert_eq!(p[0] >> 4, 4, "not IPv4");
    let ihl = usize::from(p[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    assert_eq!(total, p.len(), "IPv4 total length vs size");
    assert_eq!(csum(&[&p[..ihl]]), 0, "IPv4 header checksum");
    let proto = p[9];
    if proto == 6 || proto == 17 {
        let l4 = &p[ihl..];
        let len = (l4.len() as u16).to_be_bytes();
        let pseudo = [&p[12..20], &[0, proto], &len[..]].concat();
        if !(proto == 17 && l4[6] == 0 && l4[7] == 0) {
            assert_eq!(csum(&[&pseudo, l4]), 0, "L4 checksum (proto {proto})");
        }
    }
    proto
}

/// Build an IPv4/UDP packet with valid checksums into `out`, returning its length.
pub fn build_udp4(
    out: &mut [u8],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> usize {
    let total = 28 + payload.len();
    let p = &mut out[..total];
    p.fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = csum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let len = ((8 + payload.len()) as u16).to_be_bytes();
    let pseudo = [&src[..], &dst[..], &[0, 17], &len[..]].concat();
    let mut c = csum(&[&pseudo, &p[20..]]);
    if c == 0 {
        c = 0xffff;
    }
    p[26..28].copy_from_slice(&c.to_be_bytes());
    total
}

/// Check an IPv6 packet: payload length and TCP/UDP checksum (no extension headers).
pub fn check_ipv6(p: &[u8]) -> u8 {
    assert!(p.len() >= 40, "short packet {}", p.len());
    assert_eq!(p[0] >> 4, 6, "not IPv6");
    let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
    assert_eq!(plen + 40, p.len(), "IPv6 payload length vs size");
    let nh = p[6];
    if nh == 6 || nh == 17 {
        let l4 = &p[40..];
        let len = (l4.len() as u32).to_be_bytes();
        let pseudo = [&p[8..40], &len[..], &[0, 0, 0, nh]].concat();
        assert_eq!(csum(&[&pseudo, l4]), 0, "L4 checksum (next header {nh})");
    }
    nh
}

/// Run `f` on a fresh thread inside `ns`, without a runtime (as a data-path
/// thread runs). Panics in `f` propagate after the thread ends.
pub fn run_in_thread<F>(ns: &Netns, f: F)
where
    F: FnOnce() + Send + 'static,
{
    let name = ns.name.clone();
    let h = std::thread::spawn(move || {
        enter_ns(&name);
        f();
    });
    if let Err(p) = h.join() {
        std::panic::resume_unwind(p);
    }
}

/// Waits up to `ms` for `fd` to be readable (as a data-path thread's epoll does).
pub fn wait_readable(fd: std::os::fd::RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
}
