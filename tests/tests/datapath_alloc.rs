//! The WireGuard, ESP and OpenVPN (UDP) data paths allocate nothing per
//! packet or per batch (issue 5: "no per-packet allocation on the data
//! path; prove it with a counting allocator").
//!
//! Side A's polytund runs inside this test process, its threads in A's
//! namespace, under a global allocator that counts the allocations made on
//! the data-path threads (`wg-data-*`, `esp-data-*`, `ovpn-data-*`) and
//! nowhere else; side
//! B is a polytund process. A warm-up transfer each way lets the per-turn lists
//! reach their working size; then checksummed transfers each way (A's
//! outbound turns segment and seal TSO super-packets, its inbound turns open
//! and coalesce them) must leave the count where it was. The record engine
//! alone is checked the same way by `cargo bench -p polytun-core --bench
//! record`; this covers everything around it: TUN reads and splitting, route
//! lookups, GSO sends, batched receives, GRO coalescing and gathered TUN
//! writes.

use polytun_e2e::alloc::Counting;
use polytun_e2e::ipsec::{polytun_toml, IpsecSide, PolytunIpsec};
use polytun_e2e::openvpn::{self as ovpn, Client, KeyMode, Pki, Proto};
use polytun_e2e::scenario::{PairNet, OL_A, OL_B};
use polytun_e2e::{bins, unique_ifname, veth_pair, wait_ping, xfer, Device, Impl, Netns};
use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::time::Duration;

thread_local! {
    /// 0: not known yet, 1: being found out, 2: a data-path thread, 3: another.
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

/// Allocations (and reallocations) are counted on data-path threads only.
fn on_data_thread() -> bool {
    ROLE.try_with(|r| match r.get() {
        2 => true,
        1 | 3 => false,
        _ => {
            // Looking at the thread's name may allocate itself (state 1
            // keeps that from recursing or being counted).
            r.set(1);
            let data = std::thread::current().name().is_some_and(|n| {
                ["wg-data-", "esp-data-", "ovpn-data-"]
                    .iter()
                    .any(|p| n.starts_with(p))
            });
            r.set(if data { 2 } else { 3 });
            data
        }
    })
    .unwrap_or(false)
}

#[global_allocator]
static ALLOC: Counting = Counting::new(on_data_thread);

/// Runs polytund with the config at `path` on a thread that has entered the
/// network namespace `ns` (threads it starts inherit it), until `polytun
/// down`.
fn daemon_in(ns: &str, path: std::path::PathBuf) -> std::thread::JoinHandle<()> {
    let ns_path = format!("/run/netns/{ns}");
    std::thread::Builder::new()
        .name("polytund-a".into())
        .spawn(move || {
            let f = std::fs::File::open(&ns_path).unwrap_or_else(|e| panic!("{ns_path}: {e}"));
            // SAFETY: setns on a descriptor we own; affects this thread only.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {ns_path}: {}", std::io::Error::last_os_error());
            let cfg = polytun_daemon::config::load(&path)
                .unwrap_or_else(|e| panic!("config {}: {e}", path.display()));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.interface.workers)
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = rt.block_on(polytun_daemon::service::run(&path, cfg)) {
                panic!("in-process polytund: {e:#}");
            }
        })
        .expect("spawning the daemon thread")
}

/// After warm-up transfers each way, checksummed transfers of 100 MB each
/// way between `a` (the in-process daemon's namespace, inner address
/// `in_a`) and `b` (`in_b`) must add no allocation on the data-path threads.
fn assert_no_allocation(what: &str, a: &Netns, b: &Netns, in_a: &str, in_b: &str) {
    wait_ping(a, in_b, Duration::from_secs(20));
    // Warm-up: every per-turn list reaches the size a bulk transfer needs.
    xfer(b, a, in_b, 5301, 20_000_000);
    xfer(a, b, in_a, 5302, 20_000_000);
    let before = ALLOC.count();
    assert!(
        before > 0,
        "no allocation was ever counted on a data-path thread: is the {what} data path \
         still on threads named *-data-N? (the count would prove nothing)"
    );

    let bytes = 100_000_000u64;
    xfer(b, a, in_b, 5303, bytes);
    xfer(a, b, in_a, 5304, bytes);
    let after = ALLOC.count();
    // ~1400-byte segments each way: about 145 000 packets, a few thousand
    // batches. One allocation per batch would show as thousands.
    let packets = 2 * bytes / 1400;
    eprintln!(
        "{what} data-path allocations: {before} while starting and warming up, {} during \
         {packets} packets",
        after - before
    );
    assert_eq!(
        after - before,
        0,
        "the {what} data path allocated {} times while moving {packets} packets",
        after - before
    );
}

fn stop_in_process(a: &Netns, iface: &str, daemon: std::thread::JoinHandle<()>) {
    let cli = bins::polytun();
    a.run_ok(&[cli.to_str().unwrap(), "-i", iface, "down"]);
    daemon.join().expect("in-process polytund panicked");
}

#[test]
fn wireguard_data_path_allocates_nothing_per_batch() {
    let net = PairNet::new("dpalloc", false);
    let cfg_a = net.cfg_a(true);
    let cfg_b = net.cfg_b(true);
    let _b = Device::start(&net.b, Impl::Polytun, &cfg_b);
    let path = net
        .a
        .write_file(&format!("{}.toml", cfg_a.iface), &cfg_a.to_polytun_toml());
    let a = daemon_in(net.a.name(), path);
    assert_no_allocation("WireGuard", &net.a, &net.b, OL_A, OL_B);
    stop_in_process(&net.a, &cfg_a.iface, a);
}

#[test]
fn esp_data_path_allocates_nothing_per_batch() {
    const IN_A: &str = "198.51.100.1";
    const IN_B: &str = "198.51.100.2";
    let (na, nb) = (Netns::new("dpesp"), Netns::new("dpesp"));
    let (_va, _vb) = veth_pair(&na, &nb);
    let (a, b) = IpsecSide::psk_pair("aes256gcm16", true);
    let (ia, ib) = (unique_ifname("dea"), unique_ifname("deb"));
    let _pb = PolytunIpsec::start(&nb, &ib, &b);
    let path = na.write_file(&format!("{ia}.toml"), &polytun_toml(&ia, &a));
    let daemon = daemon_in(na.name(), path);
    assert_no_allocation("ESP", &na, &nb, IN_A, IN_B);
    stop_in_process(&na, &ia, daemon);
}

/// OpenVPN over UDP, AES-256-GCM, tls-crypt: the server's and the client's
/// `[[tunnel]]`, the server listening on 192.0.2.1 (the first side of a
/// `veth_pair`).
fn openvpn_tunnels(pki: &Pki) -> (String, String) {
    let server = ovpn::server_tunnel_toml(
        pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        &["AES-256-GCM"],
    );
    let client = ovpn::client_tunnel_toml(
        pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        &["AES-256-GCM"],
        &pki.path("ta.key"),
    );
    (server, client)
}

/// The server in this process, with two TUN queues (two `ovpn-data-*`
/// threads, each reading one; the socket's turns run on the first), a
/// polytund client process on the other side.
#[test]
fn openvpn_server_data_path_allocates_nothing_per_batch() {
    let (s, c) = (Netns::new("dpovs"), Netns::new("dpovc"));
    let (_vs, _vc) = veth_pair(&s, &c);
    let pki = Pki::new(&s);
    let (server, client) = openvpn_tunnels(&pki);
    let iface = unique_ifname("dos");
    let conf = format!("[interface]\nname = \"{iface}\"\nqueues = 2\n\n{server}");
    let path = s.write_file(&format!("{iface}.toml"), &conf);
    let daemon = daemon_in(s.name(), path);
    let _client = Client::start(&c, &client);
    assert_no_allocation("OpenVPN server", &s, &c, ovpn::SERVER_TUN, ovpn::CLIENT_TUN);
    stop_in_process(&s, &iface, daemon);
}

/// The client in this process, a polytund server process on the other side.
#[test]
fn openvpn_client_data_path_allocates_nothing_per_batch() {
    let (s, c) = (Netns::new("dpocs"), Netns::new("dpocc"));
    let (_vs, _vc) = veth_pair(&s, &c);
    let pki = Pki::new(&s);
    let (server, client) = openvpn_tunnels(&pki);
    let _server = Client::start(&s, &server);
    let iface = unique_ifname("doc");
    let conf = format!("[interface]\nname = \"{iface}\"\n\n{client}");
    let path = c.write_file(&format!("{iface}.toml"), &conf);
    let daemon = daemon_in(c.name(), path);
    assert_no_allocation("OpenVPN client", &c, &s, ovpn::CLIENT_TUN, ovpn::SERVER_TUN);
    stop_in_process(&c, &iface, daemon);
}
