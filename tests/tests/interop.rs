//! Issue 2 interop matrix: polytund against polytund, wireguard-go and boringtun-cli, each side
//! initiating (the initiator alone has the other's endpoint), with and without a preshared key.
//! Each test: handshake, 10+10 pings without loss, a 50 MB checksummed TCP transfer from the
//! initiator and 5 MB back, transfer counters and learnt endpoints checked on both sides.
use polytun_e2e::scenario::{pair_test, Initiator};
use polytun_e2e::Impl::{self, Boringtun, Polytun, WireguardGo};

macro_rules! matrix {
    ($($name:ident: $short:literal, $a:expr, $b:expr, $init:ident, $psk:expr;)*) => {$(
        #[test]
        fn $name() {
            let (a, b): (Impl, Impl) = ($a, $b);
            pair_test($short, a, b, Initiator::$init, $psk);
        }
    )*};
}

matrix! {
    // polytun in A, peer in B. Initiator::A = polytun initiates, Initiator::B = the peer does.
    polytun_polytun_a_initiates:               "pp-a",   Polytun, Polytun, A, false;
    polytun_polytun_b_initiates:               "pp-b",   Polytun, Polytun, B, false;
    polytun_polytun_a_initiates_psk:           "pp-ak",  Polytun, Polytun, A, true;
    polytun_polytun_b_initiates_psk:           "pp-bk",  Polytun, Polytun, B, true;

    polytun_initiates_wireguard_go:            "pg-a",   Polytun, WireguardGo, A, false;
    wireguard_go_initiates_polytun:            "pg-b",   Polytun, WireguardGo, B, false;
    polytun_initiates_wireguard_go_psk:        "pg-ak",  Polytun, WireguardGo, A, true;
    wireguard_go_initiates_polytun_psk:        "pg-bk",  Polytun, WireguardGo, B, true;

    polytun_initiates_boringtun:               "pb-a",   Polytun, Boringtun, A, false;
    boringtun_initiates_polytun:               "pb-b",   Polytun, Boringtun, B, false;
    polytun_initiates_boringtun_psk:           "pb-ak",  Polytun, Boringtun, A, true;
    boringtun_initiates_polytun_psk:           "pb-bk",  Polytun, Boringtun, B, true;

    // the wireguard-go drop-in, driven by `wg set` like wireguard-go itself
    polytun_wg_initiates_wireguard_go:         "pwg-a",  Impl::PolytunWg, WireguardGo, A, false;
    wireguard_go_initiates_polytun_wg_psk:     "pwg-bk", Impl::PolytunWg, WireguardGo, B, true;
    polytun_wg_initiates_boringtun_psk:        "pwb-ak", Impl::PolytunWg, Boringtun, A, true;
}

/// IPv6 underlay (endpoints `[2001:db8::N]:port`), polytun initiating towards wireguard-go and
/// boringtun initiating towards polytun.
#[test]
fn polytun_initiates_wireguard_go_ipv6_underlay() {
    polytun_e2e::scenario::pair_test_v6("pg6", Polytun, WireguardGo, Initiator::A, false);
}

#[test]
fn boringtun_initiates_polytun_ipv6_underlay_psk() {
    polytun_e2e::scenario::pair_test_v6("pb6", Polytun, Boringtun, Initiator::B, true);
}

/// IPv6 inside the tunnel (dual-stack overlay).
#[test]
fn polytun_initiates_wireguard_go_dual_stack_overlay() {
    polytun_e2e::scenario::dual_stack_test("ds-pg", Polytun, WireguardGo);
}

#[test]
fn polytun_polytun_dual_stack_overlay() {
    polytun_e2e::scenario::dual_stack_test("ds-pp", Polytun, Polytun);
}

/// `queues = 2`: the TUN device has two queues, each with its own reader; the kernel
/// spreads flows over them by hash. Eight parallel checksummed transfers from polytun
/// towards wireguard-go (so leaving through polytun's TUN queues) and two back must all
/// complete: a queue nobody read would stall every flow hashed to it.
#[test]
fn polytun_two_tun_queues_parallel_flows_to_wireguard_go() {
    use polytun_e2e::scenario::{PairNet, OL_A, OL_B};
    use polytun_e2e::{wait_ping, xfer_start, Device};
    use std::time::Duration;
    let n = PairNet::new("mq-pg", false);
    let b = Device::start(&n.b, WireguardGo, &n.cfg_b(false));
    let a = Device::start_polytund_env(&n.a, &n.cfg_a(true), &[("POLYTUN_INTERFACE__QUEUES", "2")]);
    assert!(
        n.a.log_of(a.pid).contains("2 queue(s)"),
        "polytund did not report two queues:\n{}",
        n.a.log_of(a.pid)
    );
    wait_ping(&n.a, OL_B, Duration::from_secs(20));
    let runs: Vec<_> = (0..8u16)
        .map(|i| xfer_start(&n.b, &n.a, OL_B, 5300 + i, 8 * 1024 * 1024))
        .chain((0..2u16).map(|i| xfer_start(&n.a, &n.b, OL_A, 5400 + i, 4 * 1024 * 1024)))
        .collect();
    for r in runs {
        r.finish(Duration::from_secs(120));
    }
    a.assert_alive();
    b.assert_alive();
}
