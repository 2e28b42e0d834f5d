//! Roaming: the initiator's underlay address changes from 192.0.2.1 to 192.0.2.3 during a
//! 120 MB transfer; the transfer completes with a matching checksum and the responder follows.
use polytun_e2e::scenario::roaming_test;
use polytun_e2e::Impl::{Boringtun, Polytun, WireguardGo};

/// polytun is the responder that must follow the peer to its new address.
#[test]
fn roaming_wireguard_go_roams_polytun_follows() {
    roaming_test("roam-gp", WireguardGo, Polytun);
}

/// polytun is the side whose address changes: it must keep sending from the new one.
#[test]
fn roaming_polytun_roams_boringtun_follows() {
    roaming_test("roam-pb", Polytun, Boringtun);
}

#[test]
fn roaming_polytun_polytun() {
    roaming_test("roam-pp", Polytun, Polytun);
}
