//! Two polytun devices back to back, deterministic clock: handshakes,
//! data, rotation and every timer of whitepaper §6.

mod common;
use common::*;
use polytun_wireguard::timers::*;
use polytun_wireguard::{Event, HandshakeError};
use std::time::Duration;

const S: fn(u64) -> Duration = Duration::from_secs;

fn handshake_and_data(psk: Option<[u8; 32]>) {
    let mut n = Net::new(psk, None);
    n.connect();
    let (pa, pb) = (n.sides[A].peer, n.sides[B].peer);
    assert_eq!(
        n.count(A, is_event(Event::HandshakeCompleted { peer: pa })),
        1
    );
    assert_eq!(
        n.count(B, is_event(Event::HandshakeCompleted { peer: pb })),
        1
    );
    // B learned A's endpoint from the initiation (roaming).
    assert_eq!(
        n.sides[B].dev.peer(pb).unwrap().endpoint,
        Some(n.sides[A].addr)
    );
    assert_eq!(
        n.sides[B].dev.peer(pb).unwrap().has_preshared_key,
        psk.is_some()
    );
    n.send(B, &ip_packet(2, 100));
    n.send(A, &ip_packet(3, 1400));
    assert_eq!(
        n.sides[B].delivered,
        vec![ip_packet(1, 40), ip_packet(3, 1400)]
    );
    assert_eq!(n.sides[A].delivered, vec![ip_packet(2, 100)]);
    assert!(n.sides[A].dev.peer(pa).unwrap().last_handshake.is_some());
}

#[test]
fn handshake_and_data_without_psk() {
    handshake_and_data(None);
}

#[test]
fn handshake_and_data_with_psk() {
    handshake_and_data(Some([42; 32]));
}

#[test]
fn mismatched_psk_fails() {
    let mut n = Net::new(Some([1; 32]), None);
    let pb = n.sides[B].peer;
    n.sides[B].dev.set_preshared_key(pb, Some([2; 32]));
    n.send(A, &ip_packet(1, 40));
    assert!(n.sides[A].sending.is_none());
    assert_eq!(
        n.count(A, |l| *l == Log::HandshakeDrop(HandshakeError::Decrypt)),
        1
    );
}

#[test]
fn responder_side_initiates_too() {
    let mut n = Net::new(None, None);
    n.connect();
    // B initiates a fresh handshake (KU); keys roll on both sides.
    let old = n.sides[A].sending.clone().unwrap();
    let pb = n.sides[B].peer;
    n.advance(S(1));
    let now = n.now;
    n.sides[B].dev.initiate_handshake(now, pb);
    n.pump();
    assert!(n.sides[B].sending.as_ref().unwrap().is_initiator);
    assert!(!n.sides[A].sending.as_ref().unwrap().is_initiator);
    assert_ne!(
        n.sides[A].sending.as_ref().unwrap().local_index,
        old.local_index
    );
    n.send(A, &ip_packet(5, 60));
    n.send(B, &ip_packet(6, 60));
    assert!(n.sides[B].delivered.contains(&ip_packet(5, 60)));
    assert!(n.sides[A].delivered.contains(&ip_packet(6, 60)));
}

#[test]
fn rotation_keeps_previous_keypair_decrypting() {
    let mut n = Net::new(None, None);
    n.connect();
    let held = n.seal_held(A, &ip_packet(9, 50));
    let old_index = n.sides[A].sending.as_ref().unwrap().remote_index;
    n.advance(S(1));
    let (now, pa) = (n.now, n.sides[A].peer);
    n.sides[A].dev.initiate_handshake(now, pa);
    n.pump();
    assert_ne!(n.sides[A].sending.as_ref().unwrap().remote_index, old_index);
    let src = n.sides[A].addr;
    assert!(n.deliver(B, src, &held), "previous keypair still opens");
    assert!(n.sides[B].delivered.contains(&ip_packet(9, 50)));
    // Two more rotations: the first keypair is gone.
    let held2 = n.seal_held(A, &ip_packet(9, 50));
    for _ in 0..2 {
        n.advance(S(1));
        let now = n.now;
        n.sides[A].dev.initiate_handshake(now, pa);
        n.pump();
        n.send(A, &ip_packet(1, 40));
    }
    assert!(!n.sides[B].receivers.contains_key(&old_index));
    assert!(!n.deliver(B, src, &held2));
}

#[test]
fn replayed_and_flooding_initiations_rejected() {
    let mut n = Net::new(None, None);
    let pa = n.sides[A].peer;
    let mut inits = Vec::new();
    // Capture two initiations from A (100 ms apart), delivered by hand.
    let now = n.now;
    n.sides[A].dev.initiate_handshake(now, pa);
    n.now += Duration::from_millis(100);
    let now = n.now;
    n.sides[A].dev.initiate_handshake(now, pa);
    while let Some(o) = n.sides[A].dev.poll_output() {
        if let polytun_wireguard::Output::Transmit { data, .. } = o {
            inits.push(data);
        }
    }
    assert_eq!(inits.len(), 2);
    let src = n.sides[A].addr;
    assert!(n.deliver(B, src, &inits[0]));
    n.advance(Duration::from_millis(5));
    // Newer timestamp, but 5 ms after the previous: flood.
    assert!(!n.deliver(B, src, &inits[1]));
    n.advance(Duration::from_millis(50));
    assert!(n.deliver(B, src, &inits[1]));
    // Replays of either are refused.
    n.advance(S(1));
    assert!(!n.deliver(B, src, &inits[0]));
    assert!(!n.deliver(B, src, &inits[1]));
    let drops: Vec<_> = n.sides[B]
        .log
        .iter()
        .filter_map(|(_, l)| match l {
            Log::HandshakeDrop(e) => Some(*e),
            _ => None,
        })
        .collect();
    assert_eq!(
        drops,
        vec![
            HandshakeError::Flood,
            HandshakeError::Replay,
            HandshakeError::Replay
        ]
    );
    // A corrupted mac1 is dropped before any DH.
    let mut bad = inits[1].clone();
    bad[20] ^= 1;
    assert!(!n.deliver(B, src, &bad));
    assert_eq!(
        n.sides[B].log.last().unwrap().1,
        Log::HandshakeDrop(HandshakeError::BadMac1)
    );
}

#[test]
fn cookie_reply_under_load_then_retry_with_mac2() {
    let mut n = Net::new(None, None);
    n.sides[B].under_load = true;
    n.send(A, &ip_packet(1, 40));
    assert_eq!(
        n.count(B, |l| *l
            == Log::HandshakeDrop(HandshakeError::CookieReplySent)),
        1
    );
    assert_eq!(n.count(B, |l| *l == Log::Handshake(3)), 1);
    assert!(n.sides[A].sending.is_none());
    // The retry after REKEY_TIMEOUT carries mac2 and gets through.
    n.advance(S(6));
    assert!(n.sides[A].sending.is_some());
    assert_eq!(n.count(A, is_initiation), 2);
}

#[test]
fn rate_limited_under_load() {
    let mut n = Net::new(None, None);
    n.sides[B].under_load = true;
    n.sides[A].mute = true;
    let pa = n.sides[A].peer;
    // Get a cookie for A from B by hand.
    let now = n.now;
    n.sides[A].dev.on_need_handshake(now, pa);
    let first = match n.sides[A].dev.poll_output() {
        Some(polytun_wireguard::Output::Transmit { data, .. }) => data,
        o => panic!("{o:?}"),
    };
    while n.sides[A].dev.poll_output().is_some() {}
    let src = n.sides[A].addr;
    assert!(!n.deliver(B, src, &first));
    let reply = match n.sides[B].dev.poll_output() {
        Some(polytun_wireguard::Output::Transmit { data, .. }) => data,
        o => panic!("{o:?}"),
    };
    let srcb = n.sides[B].addr;
    assert!(n.deliver(A, srcb, &reply));
    // Ten initiations with valid mac2 at the same instant on B.
    let mut inits = Vec::new();
    for _ in 0..10 {
        n.now += Duration::from_millis(60);
        let now = n.now;
        n.sides[A].dev.initiate_handshake(now, pa);
        while let Some(o) = n.sides[A].dev.poll_output() {
            if let polytun_wireguard::Output::Transmit { data, .. } = o {
                inits.push(data);
            }
        }
    }
    assert_eq!(inits.len(), 10);
    for i in &inits {
        n.deliver(B, src, i);
    }
    let limited = n.count(B, |l| *l == Log::HandshakeDrop(HandshakeError::RateLimited));
    assert_eq!(limited, 5, "burst of 5, then limited: {:?}", n.logs(B));
    assert_eq!(
        n.count(B, |l| *l
            == Log::HandshakeDrop(HandshakeError::CookieReplySent)),
        1
    );
}

#[test]
fn rekey_after_time_while_sending() {
    let mut n = Net::new(None, None);
    n.connect();
    let pa = n.sides[A].peer;
    let first = n.sides[A].sending.as_ref().unwrap().local_index;
    for _ in 0..125 {
        n.advance(S(1));
        n.send(A, &ip_packet(1, 40));
        n.send(B, &ip_packet(2, 40));
    }
    let inits = n.times(A, is_initiation);
    assert_eq!(inits.len(), 2, "{inits:?}");
    assert!(
        inits[1] >= REKEY_AFTER_TIME && inits[1] <= REKEY_AFTER_TIME + S(1),
        "{inits:?}"
    );
    assert_eq!(n.count(A, is_event(Event::KeyExpiring { peer: pa })), 1);
    assert_ne!(n.sides[A].sending.as_ref().unwrap().local_index, first);
    // The responder never rekeys on time.
    assert_eq!(n.count(B, is_initiation), 0);
}

#[test]
fn keepalive_after_10s_of_receiving_only() {
    let mut n = Net::new(None, None);
    n.connect();
    let t = n.elapsed();
    n.send(A, &ip_packet(1, 40));
    n.advance(S(30));
    let ka = n.times(B, |l| *l == Log::Data(true));
    assert_eq!(ka, vec![t + KEEPALIVE_TIMEOUT]);
    // No handshake was needed: A heard back in time.
    assert_eq!(n.count(A, is_initiation), 1);
}

#[test]
fn new_handshake_when_sending_but_nothing_received_for_15s() {
    let mut n = Net::new(None, None);
    n.connect();
    n.advance(S(1));
    n.send(B, &ip_packet(2, 40)); // A heard from B: its 15 s timer is disarmed
    n.sides[B].mute = true;
    let t = n.elapsed();
    n.send(A, &ip_packet(1, 40));
    n.advance(S(16));
    let inits = n.times(A, is_initiation);
    assert_eq!(inits.len(), 2);
    let d = inits[1] - t;
    assert!(
        d >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
            && d <= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + Duration::from_millis(333),
        "{d:?}"
    );
}

#[test]
fn retries_every_5s_for_90s_then_gives_up() {
    let mut n = Net::new(None, None);
    n.sides[B].mute = true;
    let pa = n.sides[A].peer;
    n.send(A, &ip_packet(1, 40));
    n.advance(S(200));
    let inits = n.times(A, is_initiation);
    assert_eq!(inits.len(), 19, "{inits:?}");
    for w in inits.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= REKEY_TIMEOUT && gap <= REKEY_TIMEOUT + Duration::from_millis(333),
            "{gap:?}"
        );
    }
    assert!(inits[18] <= REKEY_ATTEMPT_TIME + S(7));
    let failed = n.times(A, is_event(Event::HandshakeFailed { peer: pa }));
    assert_eq!(failed.len(), 1);
    assert!(failed[0] > REKEY_ATTEMPT_TIME && failed[0] < REKEY_ATTEMPT_TIME + S(13));
}

#[test]
fn keys_zeroed_after_540s() {
    let mut n = Net::new(None, None);
    n.connect();
    let (pa, pb) = (n.sides[A].peer, n.sides[B].peer);
    n.advance(S(539));
    assert!(n.sides[A].sending.is_some());
    assert_eq!(n.count(A, is_event(Event::KeysCleared { peer: pa })), 0);
    n.advance(S(2));
    for (i, p) in [(A, pa), (B, pb)] {
        assert_eq!(n.count(i, is_event(Event::KeysCleared { peer: p })), 1);
        assert!(n.sides[i].sending.is_none());
        assert!(n.sides[i].receivers.is_empty());
    }
    // Sending again starts a fresh handshake.
    n.send(A, &ip_packet(1, 40));
    assert!(n.sides[A].sending.is_some());
}

#[test]
fn persistent_keepalive() {
    let mut n = Net::new(None, Some(25));
    // Configured with an endpoint: A brings the tunnel up by itself.
    n.advance(S(1));
    assert!(n.sides[A].sending.is_some());
    assert!(
        n.sides[B].sending.is_some(),
        "keepalive confirmed the session"
    );
    let before = n.count(A, |l| *l == Log::Data(true));
    n.advance(S(100));
    let ka = n.times(A, |l| *l == Log::Data(true));
    assert_eq!(ka.len() - before, 4, "{ka:?}");
    for w in ka[before..].windows(2) {
        assert_eq!(w[1] - w[0], S(25));
    }
}

#[test]
fn last_minute_handshake_when_receiving_on_old_key() {
    let mut n = Net::new(None, None);
    n.connect();
    let first = n.sides[A].sending.as_ref().unwrap().local_index;
    // Only B sends (keepalives, so A never answers): A must rekey on
    // receive once its key is REJECT_AFTER_TIME - KEEPALIVE - REKEY_TIMEOUT old.
    for _ in 0..170 {
        n.advance(S(1));
        n.send(B, &[]);
    }
    let inits = n.times(A, is_initiation);
    assert!(inits.len() >= 2, "{inits:?}");
    let t = inits[1];
    assert!(
        t >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT && t <= S(167),
        "{inits:?}"
    );
    assert_ne!(n.sides[A].sending.as_ref().unwrap().local_index, first);
}

#[test]
fn roaming_follows_authenticated_source() {
    let mut n = Net::new(None, None);
    n.connect();
    let pb = n.sides[B].peer;
    let new_addr: std::net::SocketAddr = "198.18.0.7:40000".parse().unwrap();
    n.sides[A].addr = new_addr;
    n.send(A, &ip_packet(1, 40));
    assert_eq!(n.sides[B].dev.peer(pb).unwrap().endpoint, Some(new_addr));
    assert!(n.logs(B).iter().any(|(_, l)| *l == Log::Roamed(new_addr)));
    // A forged/garbage packet from elsewhere does not move the endpoint.
    let other: std::net::SocketAddr = "203.0.113.9:1".parse().unwrap();
    let mut junk = n.seal_held(A, &ip_packet(1, 40));
    let l = junk.len();
    junk[l - 1] ^= 1;
    assert!(!n.deliver(B, other, &junk));
    assert_eq!(n.sides[B].dev.peer(pb).unwrap().endpoint, Some(new_addr));
}

#[test]
fn identity_validator_and_unknown_peers() {
    let mut n = Net::new(None, None);
    n.sides[B]
        .dev
        .set_identity_validator(Some(Box::new(|_| false)));
    n.send(A, &ip_packet(1, 40));
    assert_eq!(
        n.count(B, |l| *l
            == Log::HandshakeDrop(HandshakeError::PeerRejected)),
        1
    );
    n.sides[B].dev.set_identity_validator(None);
    let pb = n.sides[B].peer;
    n.sides[B].dev.remove_peer(pb);
    n.advance(S(6));
    assert_eq!(
        n.count(B, |l| *l == Log::HandshakeDrop(HandshakeError::UnknownPeer)),
        1
    );
}

#[test]
fn remove_peer_and_new_private_key_clear_sessions() {
    let mut n = Net::new(None, None);
    n.connect();
    let pa = n.sides[A].peer;
    n.sides[A].dev.remove_peer(pa);
    n.pump();
    assert!(n.sides[A].receivers.is_empty());
    assert!(n.sides[A].sending.is_none());
    let pb = n.sides[B].peer;
    let now = n.now;
    n.sides[B].dev.set_private_key(
        polytun_wireguard::StaticSecret::random_from_rng(rand_core::OsRng),
        now,
    );
    n.pump();
    assert!(n.sides[B].receivers.is_empty());
    assert!(n.sides[B].dev.sending_keypair(pb).is_none());
}

mod garbage {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Random datagrams (with valid type and length half the time) into a
        /// device mid-session: errors, never a panic, and the session survives.
        #[test]
        fn handshake_input_never_panics(mut d in proptest::collection::vec(any::<u8>(), 0..200), ty in 1u8..5, fix in any::<bool>(), load in any::<bool>()) {
            let mut n = Net::new(None, None);
            n.connect();
            if fix && !d.is_empty() {
                let len = [0, 148, 92, 64, 32][ty as usize];
                d.resize(len.max(4), 0);
                d[..4].copy_from_slice(&u32::from(ty).to_le_bytes());
            }
            let src = n.sides[A].addr;
            n.sides[B].under_load = load;
            prop_assert!(!n.deliver(B, src, &d));
            n.pump();
            n.sides[B].under_load = false;
            n.send(A, &ip_packet(4, 60));
            prop_assert!(n.sides[B].delivered.contains(&ip_packet(4, 60)));
        }
    }
}

#[test]
fn capabilities_declared() {
    use polytun_core::Interface::*;
    let c = polytun_wireguard::capabilities();
    for i in [Ipk, Pski, Iv, Sav, Ku, Ke, Me] {
        assert!(c.supports(i), "{i:?}");
    }
    for i in [Ct, Alg, Ext, Cm, Ad, Sske] {
        assert!(!c.supports(i), "{i:?}");
    }
}
