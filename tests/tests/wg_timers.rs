//! WireGuard's traffic-driven timers in polytund against wireguard-go: the data path wakes the
//! control task at most once a second per direction and the control task catches up on the rest
//! (daemon/src/wg/activity.rs). A packet the data path did not report must still move the
//! timers as the protocol says, or peers start handshakes nobody needed.
use polytun_e2e::scenario::{PairNet, OL_A, OL_B};
use polytun_e2e::{bins, wait_ping, Device, Impl, Netns};
use std::time::Duration;

/// One UDP datagram from `ns` to `dst` port 9 (nothing answers: ICMP errors are dropped).
fn datagram(ns: &Netns, dst: &str) {
    let py = format!(
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x' * 100, ('{dst}', 9))"
    );
    ns.run_ok(&["python3", "-c", &py]);
}

/// wireguard-go's latest handshake with its one peer (unix seconds).
fn wg_latest_handshake(b: &Device<'_>) -> u64 {
    let wg = bins::tool("wg");
    let out =
        b.ns.run_ok(&[wg.to_str().unwrap(), "show", &b.iface, "latest-handshakes"]);
    out.split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("wg show latest-handshakes: {out}"))
}

/// polytun (A) receives data from wireguard-go (B) 0.4 s after the last packet it reported to its
/// control task, having sent data in between: the reply is not reported. WireGuard's rules: the
/// receive disarms A's new-handshake timer and arms its keepalive timer, so A sends a keepalive
/// 10 s later, which in turn stops B's new-handshake timer; no handshake. Without the catch-up,
/// A's timers would stop at its send: no keepalive, and both sides start a handshake at ~15 s.
#[test]
fn wg_timers_follow_unreported_traffic_wireguard_go() {
    let n = PairNet::new("wgtim", false);
    let b = Device::start(&n.b, Impl::WireguardGo, &n.cfg_b(true));
    let a = Device::start(&n.a, Impl::Polytun, &n.cfg_a(true));
    wait_ping(&n.a, OL_B, Duration::from_secs(20));
    let nft = bins::tool("nft");
    let nft = nft.to_str().unwrap();
    for ns in [&n.a, &n.b] {
        ns.run_ok(&[nft, "add table inet wgt"]);
        ns.run_ok(&[
            nft,
            "add chain inet wgt out { type filter hook output priority 0 ; }",
        ]);
        ns.run_ok(&[
            nft,
            "add rule inet wgt out icmp type destination-unreachable drop",
        ]);
    }
    // Let the ping's own timers run out (keepalive 10 s after the last packet).
    std::thread::sleep(Duration::from_secs(12));
    let hs_a = a.show_json()["tunnels"][0]["peers"][0]["latest_handshake_unix"].clone();
    let hs_b = wg_latest_handshake(&b);
    let (rx_b, _) = b.transfer();
    datagram(&n.b, OL_A); // reported: A's first receive in seconds
    std::thread::sleep(Duration::from_millis(300));
    datagram(&n.a, OL_B); // reported: A's first send in seconds
    std::thread::sleep(Duration::from_millis(100));
    datagram(&n.b, OL_A); // not reported: 0.4 s after the first receive
    std::thread::sleep(Duration::from_secs(18));
    let (rx_b2, _) = b.transfer();
    assert_eq!(
        wg_latest_handshake(&b),
        hs_b,
        "wireguard-go saw a new handshake: polytun's timers missed the unreported receive"
    );
    assert_eq!(
        a.show_json()["tunnels"][0]["peers"][0]["latest_handshake_unix"],
        hs_a,
        "polytun started a handshake: its new-handshake timer missed the unreported receive"
    );
    // one 100-byte datagram from A, then its keepalive
    assert!(
        rx_b2 > rx_b + 100 + 32,
        "wireguard-go received {} bytes from polytun, expected the datagram and a keepalive",
        rx_b2 - rx_b
    );
    a.assert_alive();
}
