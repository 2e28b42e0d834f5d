//! Baselines: real peers against each other. They prove the harness (namespaces, peer drivers,
//! ping, checksummed transfer, roaming, wg-quick) independently of polytun.
use polytun_e2e::scenario::{pair_test, roaming_test, Initiator};
use polytun_e2e::Impl::{Boringtun, WireguardGo};

#[test]
fn wireguard_go_baseline() {
    pair_test("wggo", WireguardGo, WireguardGo, Initiator::A, false);
}

#[test]
fn wireguard_go_psk_baseline() {
    pair_test("wggopsk", WireguardGo, WireguardGo, Initiator::B, true);
}

#[test]
fn boringtun_baseline() {
    pair_test("bt", Boringtun, Boringtun, Initiator::A, false);
}

#[test]
fn wireguard_go_boringtun_psk_baseline() {
    pair_test("wggobt", WireguardGo, Boringtun, Initiator::B, true);
}

#[test]
fn roaming_wireguard_go_baseline() {
    roaming_test("roamwggo", WireguardGo, WireguardGo);
}

#[test]
fn wireguard_go_boringtun_ipv6_underlay_baseline() {
    polytun_e2e::scenario::pair_test_v6("v6gb", WireguardGo, Boringtun, Initiator::A, false);
}

#[test]
fn wireguard_go_boringtun_dual_stack_overlay_baseline() {
    polytun_e2e::scenario::dual_stack_test("ds-gb", WireguardGo, Boringtun);
}
