//! IKE fragmentation (RFC 7383): two endpoints back to back with a fake
//! clock and a small fragment size, with fragments lost, reordered,
//! duplicated and forged on the way.

use polytun_ike::config::ts_prefix;
use polytun_ike::wire::{Message, Payload};
use polytun_ike::{ChildSaParams, Config, DropReason, Endpoint, Event, Identity, Output};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

const A_IP: [u8; 4] = [192, 0, 2, 1];
const B_IP: [u8; 4] = [192, 0, 2, 2];

/// Twenty /24s on each side make IKE_AUTH (and its answer) about 600 bytes.
fn cfg(local: &str, remote: &str, local_net: u8, remote_net: u8) -> Config {
    let mut c = Config::psk(
        Identity::Fqdn(local.into()),
        Some(Identity::Fqdn(remote.into())),
        b"fragment secret",
    );
    let nets = |n: u8| {
        (0..20)
            .map(|i| ts_prefix(IpAddr::from([10, n, i, 0]), 24))
            .collect::<Vec<_>>()
    };
    c.local_ts = nets(local_net);
    c.remote_ts = nets(remote_net);
    c.fragment_size = 300;
    c
}

struct Side {
    ep: Endpoint,
    ip: IpAddr,
    installed: Vec<ChildSaParams>,
    events: Vec<Event>,
    drops: Vec<DropReason>,
}

/// One datagram in flight: (to side, src, dst port, bytes).
type Dgram = (usize, SocketAddr, u16, Vec<u8>);
/// What the network does with the n-th datagram of a burst.
type Filter = Box<dyn FnMut(usize, &Dgram) -> Vec<Dgram>>;

struct Net {
    s: [Side; 2],
    now: Instant,
    /// Datagrams sent so far, by every side, in order.
    sent: Vec<Dgram>,
    /// Decides what the network does with the n-th datagram of a burst:
    /// returns the datagrams to deliver (none: lost; twice: duplicated).
    filter: Filter,
    /// Deliver each burst in reverse order.
    reverse: bool,
}

fn is_fragment(b: &[u8]) -> bool {
    Message::parse(b).is_ok_and(|m| matches!(m.payloads.last(), Some(Payload::Skf { .. })))
}

impl Net {
    fn new(a: Config, b: Config) -> Net {
        let side = |c, ip: [u8; 4]| Side {
            ep: Endpoint::new(c, IpAddr::from(ip), Box::new(rand_core::OsRng)),
            ip: IpAddr::from(ip),
            installed: vec![],
            events: vec![],
            drops: vec![],
        };
        Net {
            s: [side(a, A_IP), side(b, B_IP)],
            now: Instant::now(),
            sent: vec![],
            filter: Box::new(|_, d| vec![d.clone()]),
            reverse: false,
        }
    }

    /// Drains both sides and delivers what they sent, burst by burst,
    /// until nothing moves.
    fn run(&mut self) {
        for _ in 0..100 {
            let mut burst: Vec<Dgram> = vec![];
            for x in 0..2 {
                while let Some(o) = self.s[x].ep.poll_output() {
                    match o {
                        Output::Transmit {
                            local_port,
                            dst,
                            bytes,
                        } => {
                            assert_eq!(dst.ip(), self.s[1 - x].ip);
                            burst.push((
                                1 - x,
                                SocketAddr::new(self.s[x].ip, local_port),
                                dst.port(),
                                bytes,
                            ));
                        }
                        Output::InstallChildSa(p) => self.s[x].installed.push(*p),
                        Output::Event(e) => self.s[x].events.push(e),
                        _ => {}
                    }
                }
            }
            if burst.is_empty() {
                return;
            }
            self.sent.extend(burst.iter().cloned());
            let mut deliver: Vec<Dgram> = vec![];
            for (i, d) in burst.iter().enumerate() {
                deliver.extend((self.filter)(i, d));
            }
            if self.reverse {
                deliver.reverse();
            }
            for (to, src, port, bytes) in deliver {
                if let Err(e) = self.s[to].ep.handle(self.now, src, port, &bytes) {
                    self.s[to].drops.push(e);
                }
            }
        }
        panic!("no quiescence");
    }

    fn connect(&mut self) {
        self.s[0]
            .ep
            .connect(self.now, SocketAddr::new(IpAddr::from(B_IP), 500));
        self.run();
    }

    /// Fires the next timer (retransmissions).
    fn tick(&mut self) {
        let t = self
            .s
            .iter()
            .filter_map(|s| s.ep.poll_timeout())
            .min()
            .expect("a deadline");
        self.now = self.now.max(t);
        for s in &mut self.s {
            s.ep.handle_timeout(self.now);
        }
        self.run();
    }

    fn established(&self, x: usize) -> bool {
        self.s[x]
            .events
            .iter()
            .any(|e| matches!(e, Event::Established { .. }))
    }

    fn check_up(&self) {
        assert!(self.established(0), "A: {:?}", self.s[0].events);
        assert!(self.established(1), "B: {:?}", self.s[1].events);
        let (a, b) = (&self.s[0].installed, &self.s[1].installed);
        assert_eq!((a.len(), b.len()), (1, 1), "one CHILD SA each");
        assert_eq!(a[0].spi_out, b[0].spi_in);
        assert_eq!(*a[0].keymat_out.encr, *b[0].keymat_in.encr);
        assert_eq!(a[0].ts_local.len(), 20);
        assert_eq!(a[0].ts_local, b[0].ts_remote);
    }

    fn fragments_sent_by(&self, x: usize) -> usize {
        let ip = self.s[x].ip;
        self.sent
            .iter()
            .filter(|d| d.1.ip() == ip && is_fragment(strip(d.2, &d.3)))
            .count()
    }
}

fn strip(port: u16, b: &[u8]) -> &[u8] {
    if port == 4500 {
        &b[4..]
    } else {
        b
    }
}

fn pair() -> Net {
    Net::new(
        cfg("a.example", "b.example", 1, 2),
        cfg("b.example", "a.example", 2, 1),
    )
}

#[test]
fn ike_auth_is_fragmented_both_ways() {
    let mut n = pair();
    n.connect();
    n.check_up();
    for x in 0..2 {
        let st = n.s[x].ep.stats();
        assert_eq!(st.fragmented_sent, 1, "side {x}: {st:?}");
        assert!(st.fragments_sent >= 2, "side {x}: {st:?}");
        assert_eq!(st.reassembled, 1, "side {x}: {st:?}");
        assert_eq!(st.fragments_received, n.s[1 - x].ep.stats().fragments_sent);
        assert!(n.s[x].drops.is_empty(), "side {x}: {:?}", n.s[x].drops);
    }
    // every fragment fits the configured IP datagram size (20 + 8 + 4 marker)
    for d in &n.sent {
        if is_fragment(strip(d.2, &d.3)) {
            assert!(d.3.len() + 28 <= 300, "fragment of {} bytes", d.3.len());
        }
    }
    assert_eq!(
        n.fragments_sent_by(0) as u64,
        n.s[0].ep.stats().fragments_sent
    );
}

#[test]
fn reordered_fragments_are_reassembled() {
    let mut n = pair();
    n.reverse = true;
    n.connect();
    n.check_up();
    assert!(n.s[0].ep.stats().fragments_sent >= 2);
}

#[test]
fn lost_request_fragment_is_recovered_by_retransmission() {
    let mut n = pair();
    // lose the second fragment of the first IKE_AUTH request
    let mut lost = false;
    n.filter = Box::new(move |i, d| {
        if !lost && d.0 == 1 && i == 1 && is_fragment(strip(d.2, &d.3)) {
            lost = true;
            return vec![];
        }
        vec![d.clone()]
    });
    n.connect();
    assert!(!n.established(0));
    n.tick();
    n.check_up();
    // the retransmission resent every fragment; the ones B already had are
    // counted duplicates, and nothing else was dropped
    let b = &n.s[1];
    assert!(!b.drops.is_empty());
    assert!(
        b.drops
            .iter()
            .all(|e| *e == DropReason::Fragment("duplicate")),
        "{:?}",
        b.drops
    );
    assert_eq!(b.ep.stats().fragment_dropped, b.drops.len() as u64);
    assert_eq!(b.ep.stats().reassembled, 1);
}

#[test]
fn lost_response_fragment_is_resent_on_fragment_one_only() {
    let mut n = pair();
    let mut lost = false;
    n.filter = Box::new(move |_, d| {
        if !lost && d.0 == 0 && is_fragment(strip(d.2, &d.3)) {
            lost = true;
            return vec![];
        }
        vec![d.clone()]
    });
    n.connect();
    assert!(n.established(1) && !n.established(0));
    let resp_frags = n.s[1].ep.stats().fragments_sent;
    n.tick();
    n.check_up();
    // B answered the retransmitted request once (triggered by its fragment
    // 1, RFC 7383 §2.6.1), from its cache: every fragment again
    let b = n.s[1].ep.stats();
    assert_eq!(n.fragments_sent_by(1) as u64, 2 * resp_frags);
    assert_eq!(b.fragmented_sent, 1, "{b:?}");
    assert_eq!(b.reassembled, 1, "{b:?}");
    assert!(n.s[1].drops.is_empty(), "{:?}", n.s[1].drops);
    // A threw away the duplicates of what it already had, and the
    // fragments that came after the response was complete
    let a = &n.s[0].drops;
    assert!(!a.is_empty());
    assert!(
        a.iter().all(|e| matches!(
            e,
            DropReason::Fragment("duplicate") | DropReason::Unexpected
        )),
        "{a:?}"
    );
}

#[test]
fn forged_and_duplicated_fragments_do_not_harm_the_sa() {
    let mut n = pair();
    // each request fragment arrives twice, and a copy with a flipped ICV bit first
    n.filter = Box::new(|_, d| {
        if d.0 == 1 && is_fragment(strip(d.2, &d.3)) {
            let mut bad = d.clone();
            let l = bad.3.len();
            bad.3[l - 1] ^= 0x40;
            return vec![bad, d.clone(), d.clone()];
        }
        vec![d.clone()]
    });
    n.connect();
    n.check_up();
    let b = &n.s[1];
    let frags = n.s[0].ep.stats().fragments_sent;
    let integrity = b
        .drops
        .iter()
        .filter(|e| **e == DropReason::Integrity)
        .count() as u64;
    assert_eq!(integrity, frags, "{:?}", b.drops);
    assert_eq!(b.ep.stats().integrity, frags);
    // the duplicate of the last fragment arrives after reassembly: it is a
    // retransmitted request by then (not fragment 1: ignored)
    assert_eq!(b.ep.stats().fragment_dropped, frags - 1);
    assert_eq!(b.ep.stats().reassembled, 1);
}

#[test]
fn no_fragments_without_the_peers_support() {
    let a = cfg("a.example", "b.example", 1, 2);
    let mut b = cfg("b.example", "a.example", 2, 1);
    b.fragmentation = false;
    let mut n = Net::new(a, b);
    n.connect();
    n.check_up();
    assert_eq!(n.fragments_sent_by(0), 0);
    assert_eq!(n.fragments_sent_by(1), 0);
    assert_eq!(n.s[0].ep.stats().fragments_sent, 0);
}

#[test]
fn rekeys_after_ike_sa_rekey_still_fragment() {
    let mut n = pair();
    n.connect();
    n.check_up();
    let sa = n.s[0].ep.sa_ids()[0];
    assert!(n.s[0].ep.rekey_ike(n.now, sa));
    n.run();
    let new = n.s[0].ep.sa_ids();
    assert_eq!(new.len(), 1);
    assert_ne!(new[0], sa);
    let before = n.s[0].ep.stats().fragmented_sent;
    // a CHILD SA rekey on the new IKE SA carries all twenty selectors
    let spi = n.s[0].ep.child_sas(new[0])[0].spi_in;
    assert!(n.s[0].ep.rekey_child(n.now, spi));
    n.run();
    assert!(n.s[0].ep.stats().fragmented_sent > before);
    assert!(n.s[1].ep.stats().reassembled >= 2);
    assert!(n.s[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::ChildRekeyed { .. })));
}
