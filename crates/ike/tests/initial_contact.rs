//! INITIAL_CONTACT (RFC 7296 §2.4) in process: endpoints wired by address
//! with a fake clock. The first IKE_AUTH to a peer carries it; the receiver
//! deletes the other IKE SAs (and their CHILD SAs) of that identity and
//! says so with `Event::InitialContact`; a reauthentication while the old
//! SA is up does not carry it; other identities are left alone.

use polytun_ike::{Config, Endpoint, Event, Identity, Output, SaId};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

const A_IP: [u8; 4] = [192, 0, 2, 1];
const B_IP: [u8; 4] = [192, 0, 2, 2];
const C_IP: [u8; 4] = [192, 0, 2, 3];

fn cfg(local: &str, remote: Option<&str>) -> Config {
    Config::psk(
        Identity::Fqdn(local.into()),
        remote.map(|r| Identity::Fqdn(r.into())),
        b"initial contact secret",
    )
}

struct Side {
    ep: Endpoint,
    ip: IpAddr,
    events: Vec<Event>,
    /// (spi_in, spi_out) of CHILD SAs installed and not deleted.
    children: Vec<(u32, u32)>,
}

struct Net {
    s: Vec<Side>,
    now: Instant,
}

impl Net {
    fn new(sides: Vec<(Config, [u8; 4])>) -> Net {
        Net {
            s: sides
                .into_iter()
                .map(|(c, ip)| Side {
                    ep: Endpoint::new(c, IpAddr::from(ip), Box::new(rand_core::OsRng)),
                    ip: IpAddr::from(ip),
                    events: vec![],
                    children: vec![],
                })
                .collect(),
            now: Instant::now(),
        }
    }

    fn run(&mut self) {
        for _ in 0..100 {
            let mut flight = vec![];
            for x in 0..self.s.len() {
                while let Some(o) = self.s[x].ep.poll_output() {
                    match o {
                        Output::Transmit {
                            local_port,
                            dst,
                            bytes,
                        } => flight.push((SocketAddr::new(self.s[x].ip, local_port), dst, bytes)),
                        Output::InstallChildSa(p) => self.s[x].children.push((p.spi_in, p.spi_out)),
                        Output::DeleteChildSa {
                            spi_in, spi_out, ..
                        } => self.s[x].children.retain(|c| *c != (spi_in, spi_out)),
                        Output::Event(e) => self.s[x].events.push(e),
                        _ => {}
                    }
                }
            }
            if flight.is_empty() {
                return;
            }
            for (src, dst, bytes) in flight {
                let to = self
                    .s
                    .iter()
                    .position(|s| s.ip == dst.ip())
                    .expect("known address");
                let _ = self.s[to].ep.handle(self.now, src, dst.port(), &bytes);
            }
        }
        panic!("no quiescence");
    }

    fn connect(&mut self, x: usize, to: [u8; 4]) -> SaId {
        let id = self.s[x]
            .ep
            .connect(self.now, SocketAddr::new(IpAddr::from(to), 500));
        self.run();
        assert!(self.s[x].ep.is_established(id), "{:?}", self.s[x].events);
        id
    }

    fn contacts(&self, x: usize) -> Vec<(SaId, Identity, Vec<SaId>)> {
        self.s[x]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::InitialContact { sa, peer, stale } => {
                    Some((*sa, peer.clone(), stale.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// B's IKE SA whose initiator SPI is `spi_i` (the initiator's handle).
    fn b_sa_of(&self, b: usize, initiator_sa: SaId) -> SaId {
        self.s[b]
            .ep
            .sa_ids()
            .into_iter()
            .find(|id| {
                self.s[b]
                    .ep
                    .spis(*id)
                    .is_some_and(|(i, _)| u64::from_be_bytes(i) == initiator_sa)
            })
            .expect("B holds the SA")
    }
}

#[test]
fn a_restarted_peer_replaces_its_stale_sas() {
    let mut n = Net::new(vec![
        (cfg("a.example", Some("b.example")), A_IP),
        (cfg("b.example", Some("a.example")), B_IP),
    ]);
    let first = n.connect(0, B_IP);
    let stale = n.b_sa_of(1, first);
    // the first contact's INITIAL_CONTACT found nothing to delete
    assert!(n.contacts(1).is_empty());
    assert_eq!(n.s[1].children.len(), 1);
    let old_child = n.s[1].children[0];

    // A restarts: a new endpoint that knows nothing of the old SA
    n.s[0].ep = Endpoint::new(
        cfg("a.example", Some("b.example")),
        IpAddr::from(A_IP),
        Box::new(rand_core::OsRng),
    );
    let second = n.connect(0, B_IP);
    let fresh = n.b_sa_of(1, second);
    assert_eq!(
        n.contacts(1),
        vec![(fresh, Identity::Fqdn("a.example".into()), vec![stale])]
    );
    assert_eq!(n.s[1].ep.sa_ids(), vec![fresh]);
    assert!(n.s[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::Closed { sa, by_peer: true } if *sa == stale)));
    // the stale CHILD SA went with it; the new one stays
    assert!(!n.s[1].children.contains(&old_child));
    assert_eq!(n.s[1].children.len(), 1);
}

#[test]
fn reauthentication_does_not_send_initial_contact() {
    let mut n = Net::new(vec![
        (cfg("a.example", Some("b.example")), A_IP),
        (cfg("b.example", Some("a.example")), B_IP),
    ]);
    let first = n.connect(0, B_IP);
    // a second IKE SA while the first is up (make-before-break reauth)
    let second = n.connect(0, B_IP);
    assert!(n.contacts(1).is_empty(), "{:?}", n.contacts(1));
    let mut b_sas = n.s[1].ep.sa_ids();
    b_sas.sort();
    let mut want = vec![n.b_sa_of(1, first), n.b_sa_of(1, second)];
    want.sort();
    assert_eq!(b_sas, want, "B must keep both SAs");
    assert_eq!(n.s[1].children.len(), 2);
    // A restarts: its next IKE_AUTH is a first contact again, and both
    // old SAs go at B
    n.s[0].ep = Endpoint::new(
        cfg("a.example", Some("b.example")),
        IpAddr::from(A_IP),
        Box::new(rand_core::OsRng),
    );
    let third = n.connect(0, B_IP);
    let c = n.contacts(1);
    assert_eq!(c.len(), 1, "{c:?}");
    let mut stale = c[0].2.clone();
    stale.sort();
    assert_eq!(stale, want);
    assert_eq!(n.s[1].ep.sa_ids(), vec![n.b_sa_of(1, third)]);
    assert_eq!(n.s[1].children.len(), 1);
}

#[test]
fn other_identities_are_left_alone() {
    // B answers anyone with the PSK (remote_id %any)
    let mut n = Net::new(vec![
        (cfg("a.example", Some("b.example")), A_IP),
        (cfg("b.example", None), B_IP),
        (cfg("c.example", Some("b.example")), C_IP),
    ]);
    let a1 = n.connect(0, B_IP);
    let c1 = n.connect(2, B_IP);
    let (a1b, c1b) = (n.b_sa_of(1, a1), n.b_sa_of(1, c1));
    // A restarts and reconnects: only A's old SA goes
    n.s[0].ep = Endpoint::new(
        cfg("a.example", Some("b.example")),
        IpAddr::from(A_IP),
        Box::new(rand_core::OsRng),
    );
    let a2 = n.connect(0, B_IP);
    let a2b = n.b_sa_of(1, a2);
    let mut held = n.s[1].ep.sa_ids();
    held.sort();
    let mut want = vec![c1b, a2b];
    want.sort();
    assert_eq!(held, want);
    assert!(n
        .contacts(1)
        .contains(&(a2b, Identity::Fqdn("a.example".into()), vec![a1b])));

    // B now initiates to C while it still holds c1b with C's address: no
    // first contact, so C keeps the SA it initiated earlier
    let b2 = n.s[1]
        .ep
        .connect(n.now, SocketAddr::new(IpAddr::from(C_IP), 500));
    n.run();
    assert!(n.s[1].ep.is_established(b2));
    assert!(n.s[2].ep.sa_ids().contains(&c1), "{:?}", n.s[2].events);
    assert!(n.contacts(2).is_empty());
}
