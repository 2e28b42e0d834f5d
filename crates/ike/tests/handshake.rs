//! Two endpoints back to back in one process with a fake clock.

use polytun_ike::config::{any_v4, ts_prefix};
use polytun_ike::{
    ChildSaParams, Config, DhGroup, EncrAlg, Endpoint, EspProposal, Event, FailReason, Identity,
    IkeProposal, IntegAlg, Output, PrfAlg,
};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const A_IP: [u8; 4] = [192, 0, 2, 1];
const B_IP: [u8; 4] = [192, 0, 2, 2];

fn cfg(local: &str, remote: &str, psk: &[u8]) -> Config {
    Config::psk(
        Identity::Fqdn(local.into()),
        Some(Identity::Fqdn(remote.into())),
        psk,
    )
}

struct Side {
    ep: Endpoint,
    /// the address the *other* side sees for us
    seen_ip: IpAddr,
    installed: Vec<ChildSaParams>,
    deleted: Vec<(u32, u32)>,
    events: Vec<Event>,
    sent: Vec<(u16, SocketAddr, Vec<u8>)>,
}

impl Side {
    fn new(c: Config, ip: [u8; 4]) -> Side {
        Side {
            ep: Endpoint::new(c, IpAddr::from(ip), Box::new(rand_core::OsRng)),
            seen_ip: IpAddr::from(ip),
            installed: vec![],
            deleted: vec![],
            events: vec![],
            sent: vec![],
        }
    }
    fn established(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Established { .. }))
    }
    fn failed(&self) -> Option<FailReason> {
        self.events.iter().find_map(|e| match e {
            Event::Failed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
    }
}

struct Net {
    a: Side,
    b: Side,
    now: Instant,
    /// drop the n-th datagram (0-based, counted over both directions)
    drop: Vec<usize>,
    duplicate: Vec<usize>,
    count: usize,
}

impl Net {
    fn new(a: Config, b: Config) -> Net {
        Net {
            a: Side::new(a, A_IP),
            b: Side::new(b, B_IP),
            now: Instant::now(),
            drop: vec![],
            duplicate: vec![],
            count: 0,
        }
    }

    /// Delivers everything until both sides are quiet.
    fn run(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            for dir in 0..2 {
                let (from, to) = if dir == 0 {
                    (&mut self.a, &mut self.b)
                } else {
                    (&mut self.b, &mut self.a)
                };
                let mut out = vec![];
                while let Some(o) = from.ep.poll_output() {
                    out.push(o);
                }
                for o in out {
                    moved = true;
                    match o {
                        Output::Transmit {
                            local_port,
                            dst,
                            bytes,
                        } => {
                            assert_eq!(dst.ip(), to.ep_ip(), "sent to the peer");
                            from.sent.push((local_port, dst, bytes.clone()));
                            let n = self.count;
                            self.count += 1;
                            if self.drop.contains(&n) {
                                continue;
                            }
                            let src = SocketAddr::new(from.seen_ip, local_port);
                            let times = if self.duplicate.contains(&n) { 2 } else { 1 };
                            for _ in 0..times {
                                let _ = to.ep.handle(self.now, src, dst.port(), &bytes);
                            }
                        }
                        Output::InstallChildSa(p) => from.installed.push(*p),
                        Output::DeleteChildSa {
                            spi_in, spi_out, ..
                        } => from.deleted.push((spi_in, spi_out)),
                        Output::Event(e) => from.events.push(e),
                        // rekey outputs (make-before-break): not used here
                        _ => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn connect(&mut self) {
        self.a
            .ep
            .connect(self.now, SocketAddr::new(IpAddr::from(B_IP), 500));
        self.run();
    }

    /// Advances the fake clock to the next deadline and fires it.
    fn tick(&mut self) {
        let t = [self.a.ep.poll_timeout(), self.b.ep.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .expect("a deadline");
        self.now = self.now.max(t);
        self.a.ep.handle_timeout(self.now);
        self.b.ep.handle_timeout(self.now);
        self.run();
    }
}

trait Ip {
    fn ep_ip(&self) -> IpAddr;
}
impl Ip for Side {
    fn ep_ip(&self) -> IpAddr {
        self.seen_ip
    }
}

fn check_child_pair(n: &Net) {
    assert_eq!(n.a.installed.len(), 1, "initiator installed one CHILD SA");
    assert_eq!(n.b.installed.len(), 1, "responder installed one CHILD SA");
    let (a, b) = (&n.a.installed[0], &n.b.installed[0]);
    assert_eq!(a.spi_out, b.spi_in);
    assert_eq!(a.spi_in, b.spi_out);
    assert_eq!(a.transform, b.transform);
    assert_eq!(*a.keymat_out.encr, *b.keymat_in.encr);
    assert_eq!(*a.keymat_in.encr, *b.keymat_out.encr);
    assert_eq!(*a.keymat_out.integ, *b.keymat_in.integ);
    assert_ne!(*a.keymat_in.encr, *a.keymat_out.encr);
    assert_eq!(a.keymat_out.encr.len(), a.transform.encr.keymat_len());
    assert_eq!(a.ts_local, b.ts_remote);
    assert_eq!(a.ts_remote, b.ts_local);
}

fn matrix(encr: EncrAlg, integ: Option<IntegAlg>, prf: PrfAlg, dh: DhGroup) {
    let p = IkeProposal {
        encr: vec![encr],
        integ: integ.into_iter().collect(),
        prf: vec![prf],
        dh: vec![dh],
    };
    let e = EspProposal {
        encr: vec![encr],
        integ: integ.into_iter().collect(),
        esn: vec![true, false],
        dh: vec![],
    };
    let mut a = cfg("a.example", "b.example", b"secret");
    let mut b = cfg("b.example", "a.example", b"secret");
    a.ike_proposals = vec![p.clone()];
    b.ike_proposals = vec![p];
    a.esp_proposals = vec![e.clone()];
    b.esp_proposals = vec![e];
    let mut n = Net::new(a, b);
    n.connect();
    assert!(n.a.established(), "{encr:?}/{dh:?}: {:?}", n.a.events);
    assert!(n.b.established(), "{encr:?}/{dh:?}: {:?}", n.b.events);
    check_child_pair(&n);
    assert!(n.a.installed[0].transform.esn);
    match &n.a.events[0] {
        Event::Established { algs, peer, .. } => {
            assert_eq!(algs.dh, dh);
            assert_eq!(algs.encr, encr);
            assert_eq!(*peer, Identity::Fqdn("b.example".into()));
        }
        e => panic!("{e:?}"),
    }
    // no NAT: stays on port 500, four datagrams
    assert_eq!(n.count, 4);
    assert!(!n.a.installed[0].udp_encap);
}

#[test]
fn every_group() {
    for dh in [
        DhGroup::Curve25519,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Modp2048,
    ] {
        matrix(EncrAlg::AES256GCM16, None, PrfAlg::HmacSha256, dh);
    }
}

#[test]
fn every_cipher_and_prf() {
    for (encr, integ, prf) in [
        (EncrAlg::AES128GCM16, None, PrfAlg::HmacSha256),
        (EncrAlg::AES256GCM16, None, PrfAlg::HmacSha384),
        (EncrAlg::ChaCha20Poly1305, None, PrfAlg::HmacSha512),
        (
            EncrAlg::AES128CBC,
            Some(IntegAlg::HmacSha256_128),
            PrfAlg::HmacSha256,
        ),
        (
            EncrAlg::AES256CBC,
            Some(IntegAlg::HmacSha256_128),
            PrfAlg::HmacSha384,
        ),
        (
            EncrAlg::AES256CBC,
            Some(IntegAlg::HmacSha512_256),
            PrfAlg::HmacSha512,
        ),
    ] {
        matrix(encr, integ, prf, DhGroup::Curve25519);
    }
}

#[test]
fn wrong_psk_fails_with_authentication_failed() {
    let mut n = Net::new(
        cfg("a.example", "b.example", b"secret"),
        cfg("b.example", "a.example", b"other"),
    );
    n.connect();
    assert_eq!(n.b.failed(), Some(FailReason::AuthenticationFailed));
    assert_eq!(n.a.failed(), Some(FailReason::PeerError(24)));
    assert!(n.a.installed.is_empty() && n.b.installed.is_empty());
    assert!(n.a.ep.sa_ids().is_empty() && n.b.ep.sa_ids().is_empty());
}

#[test]
fn wrong_identity_is_rejected() {
    let mut n = Net::new(
        cfg("a.example", "b.example", b"secret"),
        cfg("b.example", "c.example", b"secret"),
    );
    n.connect();
    assert!(matches!(
        n.b.failed(),
        Some(FailReason::IdentityRejected(_))
    ));
    assert_eq!(n.a.failed(), Some(FailReason::PeerError(24)));

    // the validator hook (IV)
    let mut b = cfg("b.example", "x", b"secret");
    b.remote_id = None;
    let mut n = Net::new(cfg("a.example", "b.example", b"secret"), b);
    n.b.ep.set_identity_validator(Some(Box::new(
        |id| matches!(id, Identity::Fqdn(s) if s.ends_with(".example")),
    )));
    n.connect();
    assert!(n.a.established() && n.b.established());
}

#[test]
fn traffic_selectors_are_narrowed() {
    let mut a = cfg("a.example", "b.example", b"k");
    let mut b = cfg("b.example", "a.example", b"k");
    a.local_ts = vec![ts_prefix("10.0.0.0".parse().unwrap(), 8)];
    a.remote_ts = vec![any_v4()];
    b.local_ts = vec![ts_prefix("192.168.1.0".parse().unwrap(), 24)];
    b.remote_ts = vec![ts_prefix("10.1.0.0".parse().unwrap(), 16)];
    let mut n = Net::new(a, b);
    n.connect();
    check_child_pair(&n);
    let ai = &n.a.installed[0];
    assert_eq!(
        ai.ts_local,
        vec![ts_prefix("10.1.0.0".parse().unwrap(), 16)]
    );
    assert_eq!(
        ai.ts_remote,
        vec![ts_prefix("192.168.1.0".parse().unwrap(), 24)]
    );

    // disjoint: IKE SA up, CHILD SA refused with TS_UNACCEPTABLE
    let mut a = cfg("a.example", "b.example", b"k");
    let mut b = cfg("b.example", "a.example", b"k");
    a.local_ts = vec![ts_prefix("10.0.0.0".parse().unwrap(), 8)];
    b.remote_ts = vec![ts_prefix("172.16.0.0".parse().unwrap(), 12)];
    let mut n = Net::new(a, b);
    n.connect();
    assert!(n.a.established() && n.b.established());
    assert!(n.a.installed.is_empty() && n.b.installed.is_empty());
    assert!(n
        .a
        .events
        .iter()
        .any(|e| matches!(e, Event::ChildFailed { notify: 38, .. })));
}

#[test]
fn invalid_ke_payload_retry_with_the_group_the_responder_wants() {
    let mut a = cfg("a.example", "b.example", b"k");
    let mut b = cfg("b.example", "a.example", b"k");
    a.ike_proposals[0].dh = vec![DhGroup::Curve25519, DhGroup::Ecp256];
    b.ike_proposals[0].dh = vec![DhGroup::Ecp256];
    let mut n = Net::new(a, b);
    n.connect();
    assert!(n.a.established() && n.b.established());
    assert_eq!(n.count, 6, "INVALID_KE_PAYLOAD round trip, then 4 messages");
    match &n.b.events[0] {
        Event::Established { algs, .. } => assert_eq!(algs.dh, DhGroup::Ecp256),
        e => panic!("{e:?}"),
    }
}

#[test]
fn responder_chooses_by_its_preference() {
    let chacha = IkeProposal {
        encr: vec![EncrAlg::ChaCha20Poly1305],
        integ: vec![],
        prf: vec![PrfAlg::HmacSha512],
        dh: vec![DhGroup::Curve25519],
    };
    let mut a = cfg("a.example", "b.example", b"k");
    let mut b = cfg("b.example", "a.example", b"k");
    a.ike_proposals = vec![IkeProposal::aes256gcm_sha256_x25519(), chacha.clone()];
    b.ike_proposals = vec![chacha, IkeProposal::aes256gcm_sha256_x25519()];
    let mut n = Net::new(a, b);
    n.connect();
    match &n.a.events[0] {
        Event::Established { algs, .. } => assert_eq!(algs.encr, EncrAlg::ChaCha20Poly1305),
        e => panic!("{e:?}"),
    }
    // nothing in common
    let mut a = cfg("a.example", "b.example", b"k");
    a.ike_proposals[0].encr = vec![EncrAlg::AES128GCM16];
    let mut n = Net::new(a, cfg("b.example", "a.example", b"k"));
    n.connect();
    assert_eq!(n.a.failed(), Some(FailReason::PeerError(14)));
}

#[test]
fn cookie_when_half_open_threshold_passed() {
    let mut b = cfg("b.example", "a.example", b"k");
    b.cookie_threshold = 0;
    let mut n = Net::new(cfg("a.example", "b.example", b"k"), b);
    n.connect();
    assert!(n.a.established() && n.b.established());
    assert_eq!(n.count, 6, "COOKIE round trip, then 4 messages");
    check_child_pair(&n);
}

#[test]
fn retransmit_on_loss() {
    // lose the IKE_SA_INIT request, then the IKE_AUTH response
    let mut n = Net::new(
        cfg("a.example", "b.example", b"k"),
        cfg("b.example", "a.example", b"k"),
    );
    n.drop = vec![0, 4];
    n.connect();
    assert!(!n.a.established());
    let t0 = n.now;
    n.tick();
    assert_eq!(
        n.now - t0,
        Duration::from_secs(4),
        "first retransmission after 4 s"
    );
    assert!(n.b.established() && !n.a.established());
    n.tick(); // IKE_AUTH retransmitted, answered from the responder's cache
    assert!(n.a.established());
    check_child_pair(&n);
    assert_eq!(
        n.b.events
            .iter()
            .filter(|e| matches!(e, Event::Established { .. }))
            .count(),
        1
    );
}

#[test]
fn duplicate_request_is_answered_from_cache() {
    let mut n = Net::new(
        cfg("a.example", "b.example", b"k"),
        cfg("b.example", "a.example", b"k"),
    );
    // IKE_SA_INIT (datagram 0) and IKE_AUTH (datagram 3, after the two
    // copies of the IKE_SA_INIT response) requests arrive twice
    n.duplicate = vec![0, 3];
    n.connect();
    assert!(n.a.established() && n.b.established());
    assert_eq!(n.b.installed.len(), 1);
    // the responder sent each response twice, byte-identical
    assert_eq!(n.b.sent.len(), 4);
    assert_eq!(n.b.sent[0].2, n.b.sent[1].2);
    assert_eq!(n.b.sent[2].2, n.b.sent[3].2);
    check_child_pair(&n);
}

#[test]
fn gives_up_after_retransmissions() {
    let mut n = Net::new(
        cfg("a.example", "b.example", b"k"),
        cfg("b.example", "a.example", b"k"),
    );
    n.drop = (0..100).collect();
    n.connect();
    for _ in 0..6 {
        n.tick();
    }
    assert_eq!(n.a.failed(), Some(FailReason::Timeout));
    assert_eq!(n.a.sent.len(), 6, "1 + 5 retransmissions");
    assert!(n.a.ep.poll_timeout().is_none() || n.b.ep.poll_timeout().is_some());
}

#[test]
fn nat_detected_moves_to_4500() {
    let mut n = Net::new(
        cfg("a.example", "b.example", b"k"),
        cfg("b.example", "a.example", b"k"),
    );
    // A believes it is 10.0.0.1; the responder sees 192.0.2.1 (source NAT)
    n.a = Side::new(cfg("a.example", "b.example", b"k"), [10, 0, 0, 1]);
    n.a.seen_ip = IpAddr::from(A_IP);
    n.connect();
    assert!(n.a.established() && n.b.established());
    assert!(n.a.events.iter().any(|e| matches!(
        e,
        Event::NatDetected {
            local: true,
            remote: false,
            ..
        }
    )));
    assert!(n.b.events.iter().any(|e| matches!(
        e,
        Event::NatDetected {
            local: false,
            remote: true,
            ..
        }
    )));
    // IKE_AUTH went over 4500 with the non-ESP marker
    let (port, dst, bytes) = &n.a.sent[1];
    assert_eq!((*port, dst.port()), (4500, 4500));
    assert_eq!(&bytes[..4], &[0, 0, 0, 0]);
    assert!(n.a.installed[0].udp_encap && n.b.installed[0].udp_encap);
    assert_eq!(n.b.installed[0].remote.port(), 4500);
}

#[test]
fn forced_encapsulation() {
    let mut a = cfg("a.example", "b.example", b"k");
    a.force_encap = true;
    let mut n = Net::new(a, cfg("b.example", "a.example", b"k"));
    n.connect();
    assert!(n.a.installed[0].udp_encap && n.b.installed[0].udp_encap);
}

#[test]
fn close_deletes_both_sides() {
    let mut n = Net::new(
        cfg("a.example", "b.example", b"k"),
        cfg("b.example", "a.example", b"k"),
    );
    n.connect();
    let sa = n.a.ep.sa_ids()[0];
    n.a.ep.close(n.now, sa);
    n.run();
    assert!(n
        .a
        .events
        .iter()
        .any(|e| matches!(e, Event::Closed { by_peer: false, .. })));
    assert!(n
        .b
        .events
        .iter()
        .any(|e| matches!(e, Event::Closed { by_peer: true, .. })));
    assert_eq!(n.a.deleted.len(), 1);
    assert_eq!(n.b.deleted.len(), 1);
    assert!(n.a.ep.sa_ids().is_empty() && n.b.ep.sa_ids().is_empty());
}

#[test]
fn dpd_detects_dead_peer() {
    let mut a = cfg("a.example", "b.example", b"k");
    a.dpd_interval = Some(Duration::from_secs(30));
    let mut n = Net::new(a, cfg("b.example", "a.example", b"k"));
    n.connect();
    n.tick(); // liveness check answered
    assert!(n.a.failed().is_none());
    assert!(n.a.ep.is_established(n.a.ep.sa_ids()[0]));
    n.drop = (0..1000).collect();
    for _ in 0..8 {
        n.tick();
        if n.a.failed().is_some() {
            break;
        }
    }
    assert_eq!(n.a.failed(), Some(FailReason::Timeout));
    assert_eq!(n.a.deleted.len(), 1, "CHILD SA removed");
}

#[test]
fn garbage_is_dropped_without_harm() {
    let mut n = Net::new(
        cfg("a.example", "b.example", b"k"),
        cfg("b.example", "a.example", b"k"),
    );
    n.connect();
    let src = SocketAddr::new(IpAddr::from(A_IP), 500);
    // replay of the IKE_AUTH request with a flipped bit: integrity failure
    let mut m = n.a.sent[1].2.clone();
    let l = m.len();
    m[l - 3] ^= 1;
    assert!(n.b.ep.handle(n.now, src, 500, &m).is_err());
    for len in 0..60 {
        let _ = n.b.ep.handle(n.now, src, 500, &vec![0x20; len]);
        let _ = n.b.ep.handle(n.now, src, 4500, &vec![0; len]);
    }
    n.run();
    assert!(n.b.ep.is_established(n.b.ep.sa_ids()[0]));
}

/// `dpd_timeout` declares the peer dead long before the retransmissions
/// (4 s × 1.8ⁿ, ~165 s in all) run out.
#[test]
fn dpd_timeout_bounds_the_detection() {
    let mut a = cfg("a.example", "b.example", b"k");
    a.dpd_interval = Some(Duration::from_secs(5));
    a.dpd_timeout = Some(Duration::from_secs(12));
    let mut n = Net::new(a, cfg("b.example", "a.example", b"k"));
    n.connect();
    let t0 = n.now;
    n.drop = (0..1000).collect();
    for _ in 0..10 {
        n.tick();
        if n.a.failed().is_some() {
            break;
        }
    }
    assert_eq!(n.a.failed(), Some(FailReason::Timeout));
    let took = n.now - t0;
    assert!(
        took <= Duration::from_secs(5 + 12),
        "peer declared dead after {took:?}, not within dpd_delay + dpd_timeout"
    );
    assert!(took >= Duration::from_secs(12), "too early: {took:?}");
}

/// SSKE: both ends of an IKE SA export the same key; label, context and
/// length each change it; bad arguments are refused.
#[test]
fn exported_keys_agree_and_depend_on_label_and_context() {
    let mut n = Net::new(
        cfg("a.example", "b.example", b"k"),
        cfg("b.example", "a.example", b"k"),
    );
    n.connect();
    let (sa_a, sa_b) = (n.a.ep.sa_ids()[0], n.b.ep.sa_ids()[0]);
    let ka = n.a.ep.export_key(sa_a, b"app", b"ctx", 32).unwrap();
    let kb = n.b.ep.export_key(sa_b, b"app", b"ctx", 32).unwrap();
    assert_eq!(*ka, *kb);
    assert_eq!(ka.len(), 32);
    let other_label = n.a.ep.export_key(sa_a, b"app2", b"ctx", 32).unwrap();
    let other_ctx = n.a.ep.export_key(sa_a, b"app", b"", 32).unwrap();
    let longer = n.a.ep.export_key(sa_a, b"app", b"ctx", 64).unwrap();
    assert_ne!(*ka, *other_label);
    assert_ne!(*ka, *other_ctx);
    assert_eq!(&longer[..32], &ka[..], "prf+ output is a stream");
    use polytun_ike::ExportError;
    assert_eq!(
        n.a.ep.export_key(sa_a, b"", b"", 32).unwrap_err(),
        ExportError::Label
    );
    assert!(matches!(
        n.a.ep.export_key(sa_a, b"x", b"", 100_000).unwrap_err(),
        ExportError::Length(_)
    ));
    assert_eq!(
        n.a.ep.export_key(12345, b"x", b"", 32).unwrap_err(),
        ExportError::NoSa
    );
}
