//! CREATE_CHILD_SA, rekeys and collisions: two endpoints back to back with a
//! fake clock, datagrams delivered in random order, and a model of the
//! daemon's SA tables that checks make-before-break after every output.

use polytun_ike::config::ts_prefix;
use polytun_ike::wire::{exchange, notify, proto, Notify, Payload, Proposal, Transform};
use polytun_ike::{Config, DhGroup, DpdAction, Endpoint, Event, Identity, Output, SaId};
use rand_core::{CryptoRng, RngCore};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const A_IP: [u8; 4] = [192, 0, 2, 1];
const B_IP: [u8; 4] = [192, 0, 2, 2];

/// SplitMix64: deterministic, so a failing seed reproduces.
struct Rng(u64);
impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        for c in d.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(d);
        Ok(())
    }
}
impl CryptoRng for Rng {}

fn cfg(local: &str, remote: &str) -> Config {
    Config::psk(
        Identity::Fqdn(local.into()),
        Some(Identity::Fqdn(remote.into())),
        b"secret",
    )
}

/// What a daemon holds for one side, built only from the outputs.
#[derive(Default)]
struct Model {
    /// spi_in → inbound key
    inbound: HashMap<u32, Vec<u8>>,
    /// spi_out → outbound key, installed but not used yet
    ready: HashMap<u32, Vec<u8>>,
    /// spi_out → outbound key, carrying traffic
    active: HashMap<u32, Vec<u8>>,
    events: Vec<Event>,
}

struct Side {
    ep: Endpoint,
    ip: IpAddr,
    m: Model,
}

struct Net {
    s: [Side; 2],
    now: Instant,
    /// (to side, src, dst port, bytes)
    flight: Vec<(usize, SocketAddr, u16, Vec<u8>)>,
    rng: Rng,
    random_order: bool,
    /// number of logical CHILD SAs: each side must always send on that many
    children: usize,
    /// drop every datagram while set
    blackhole: bool,
    /// SAs are torn down on purpose (DPD, INITIAL_CONTACT): skip the
    /// make-before-break checks
    teardown: bool,
}

impl Net {
    fn new(a: Config, b: Config, seed: u64) -> Net {
        let side = |c, ip: [u8; 4], s| Side {
            ep: Endpoint::new(c, IpAddr::from(ip), Box::new(Rng(s))),
            ip: IpAddr::from(ip),
            m: Model::default(),
        };
        Net {
            s: [side(a, A_IP, seed * 2 + 1), side(b, B_IP, seed * 2 + 2)],
            now: Instant::now(),
            flight: vec![],
            rng: Rng(seed ^ 0x5eed),
            random_order: seed != 0,
            children: 0,
            blackhole: false,
            teardown: false,
        }
    }

    /// Applies one side's outputs to its model, checking make-before-break.
    fn drain(&mut self, x: usize) {
        let y = 1 - x;
        while let Some(o) = self.s[x].ep.poll_output() {
            match o {
                Output::Transmit {
                    local_port,
                    dst,
                    bytes,
                } => {
                    assert_eq!(dst.ip(), self.s[y].ip);
                    if !self.blackhole {
                        let src = SocketAddr::new(self.s[x].ip, local_port);
                        self.flight.push((y, src, dst.port(), bytes));
                    }
                }
                Output::InstallChildSa(p) => {
                    self.s[x]
                        .m
                        .inbound
                        .insert(p.spi_in, p.keymat_in.encr.to_vec());
                    self.s[x]
                        .m
                        .active
                        .insert(p.spi_out, p.keymat_out.encr.to_vec());
                }
                Output::InstallChildSaInbound { params: p, .. } => {
                    self.s[x]
                        .m
                        .inbound
                        .insert(p.spi_in, p.keymat_in.encr.to_vec());
                    self.s[x]
                        .m
                        .ready
                        .insert(p.spi_out, p.keymat_out.encr.to_vec());
                }
                Output::SwitchChildSaOutbound {
                    old_spi_out,
                    new_spi_out,
                    ..
                } => {
                    let k = self.s[x]
                        .m
                        .ready
                        .remove(&new_spi_out)
                        .expect("switch to an SA installed with InstallChildSaInbound");
                    // the heart of make-before-break: the peer decrypts it already
                    assert_eq!(
                        self.s[y].m.inbound.get(&new_spi_out),
                        Some(&k),
                        "side {x} switched to {new_spi_out:08x} before the peer had its inbound key"
                    );
                    if let Some(o) = old_spi_out {
                        assert!(self.s[x].m.active.remove(&o).is_some(), "old was active");
                    }
                    self.s[x].m.active.insert(new_spi_out, k);
                }
                Output::DeleteChildSa {
                    spi_in, spi_out, ..
                } => {
                    // nobody may still be sending to an inbound SA we remove
                    assert!(
                        self.teardown || !self.s[y].m.active.contains_key(&spi_in),
                        "side {x} deleted inbound {spi_in:08x} while the peer still sends on it"
                    );
                    self.s[x].m.inbound.remove(&spi_in);
                    self.s[x].m.ready.remove(&spi_out);
                    self.s[x].m.active.remove(&spi_out);
                }
                Output::Event(e) => self.s[x].m.events.push(e),
            }
        }
        // traffic never stops: one outbound SA per CHILD SA, at all times
        assert!(
            self.s[x].m.active.len() >= self.children,
            "side {x} lost its outbound SA: {:?}",
            self.s[x].m.active.keys().collect::<Vec<_>>()
        );
    }

    /// Delivers until both sides are quiet; in random order unless seed 0.
    fn run(&mut self) {
        for _ in 0..10_000 {
            self.drain(0);
            self.drain(1);
            if self.flight.is_empty() {
                return;
            }
            let i = if self.random_order {
                (self.rng.next_u64() % self.flight.len() as u64) as usize
            } else {
                0
            };
            let (to, src, port, bytes) = self.flight.remove(i);
            let _ = self.s[to].ep.handle(self.now, src, port, &bytes);
        }
        panic!("no quiescence");
    }

    fn connect(&mut self) {
        let r = SocketAddr::new(IpAddr::from(B_IP), 500);
        self.s[0].ep.connect(self.now, r);
        self.run();
        self.children = 1;
        self.settled();
    }

    fn tick(&mut self) {
        let t = [self.s[0].ep.poll_timeout(), self.s[1].ep.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .expect("a deadline");
        self.now = self.now.max(t);
        self.s[0].ep.handle_timeout(self.now);
        self.s[1].ep.handle_timeout(self.now);
        self.run();
    }

    /// Ticks until no rekey is in progress on either side (retries included).
    fn settle(&mut self) {
        for _ in 0..50 {
            if self.in_progress() == 0 {
                return;
            }
            self.tick();
        }
        panic!("rekeys never settled");
    }

    fn in_progress(&self) -> usize {
        (0..2)
            .map(|x| {
                let ep = &self.s[x].ep;
                ep.sa_ids().len() - 1
                    + ep.sa_ids()
                        .iter()
                        .flat_map(|s| ep.child_sas(*s))
                        .filter(|c| c.rekeying || !c.outbound)
                        .count()
                    + self.s[x].m.ready.len()
            })
            .sum()
    }

    fn sa(&self, x: usize) -> SaId {
        let ids = self.s[x].ep.active_sa_ids();
        assert_eq!(ids.len(), 1, "side {x}: one active IKE SA");
        ids[0]
    }

    /// Quiet state: no orphans anywhere, keys agree pairwise.
    fn settled(&mut self) {
        for x in 0..2 {
            let y = 1 - x;
            let m = &self.s[x].m;
            assert!(m.ready.is_empty(), "side {x}: a new SA never switched to");
            assert_eq!(m.active.len(), self.children, "side {x}: outbound SAs");
            assert_eq!(m.inbound.len(), self.children, "side {x}: inbound SAs");
            for (spi, k) in &m.active {
                assert_eq!(self.s[y].m.inbound.get(spi), Some(k), "pair of {spi:08x}");
            }
            let ep = &self.s[x].ep;
            assert_eq!(ep.sa_ids().len(), 1, "side {x}: no stale IKE SA");
            let sa = self.sa(x);
            let mut ours: Vec<u32> = ep.child_sas(sa).iter().map(|c| c.spi_in).collect();
            let mut installed: Vec<u32> = m.inbound.keys().copied().collect();
            ours.sort();
            installed.sort();
            assert_eq!(ours, installed, "side {x}: endpoint and daemon agree");
            assert!(ep.child_sas(sa).iter().all(|c| c.outbound && !c.rekeying));
            assert!(
                self.teardown
                    || !m
                        .events
                        .iter()
                        .any(|e| matches!(e, Event::Failed { .. } | Event::Closed { .. }))
            );
        }
        // the IKE SAs still talk to each other (keys agree): a liveness check
        let sa = self.sa(0);
        let before = self.s[1].ep.sa_ids();
        self.s[0].ep.send_dpd(self.now, sa);
        self.run();
        assert_eq!(self.s[1].ep.sa_ids(), before);
        assert!(self.s[0].ep.is_established(sa));
    }

    fn count(&self, x: usize, f: impl Fn(&Event) -> bool) -> usize {
        self.s[x].m.events.iter().filter(|e| f(e)).count()
    }

    fn out_spi(&self, x: usize) -> u32 {
        *self.s[x].m.active.keys().next().expect("an SA")
    }
}

fn pair(seed: u64) -> Net {
    let mut n = Net::new(
        cfg("a.example", "b.example"),
        cfg("b.example", "a.example"),
        seed,
    );
    n.connect();
    n
}

#[test]
fn child_rekey_without_pfs() {
    for seed in 0..4 {
        let mut n = pair(seed);
        let old = n.out_spi(0);
        assert!(n.s[0].ep.rekey_child(n.now, old));
        assert!(!n.s[0].ep.rekey_child(n.now, old), "already under way");
        n.run();
        n.settled();
        assert_ne!(n.out_spi(0), old);
        for x in 0..2 {
            assert_eq!(n.count(x, |e| matches!(e, Event::ChildRekeyed { .. })), 1);
        }
    }
}

#[test]
fn child_rekey_with_pfs_and_invalid_ke_retry() {
    let mut a = cfg("a.example", "b.example");
    let mut b = cfg("b.example", "a.example");
    a.esp_proposals[0].dh = vec![DhGroup::Curve25519];
    b.esp_proposals[0].dh = vec![DhGroup::Curve25519];
    let mut n = Net::new(a, b, 0);
    n.connect();
    let old_key = n.s[0].m.active.values().next().unwrap().clone();
    assert!(n.s[1].ep.rekey_child(n.now, n.out_spi(1)));
    n.run();
    n.settled();
    assert_ne!(*n.s[0].m.active.values().next().unwrap(), old_key);

    // A offers P-256 first, B only accepts Curve25519: one INVALID_KE round
    let mut a = cfg("a.example", "b.example");
    let mut b = cfg("b.example", "a.example");
    a.esp_proposals[0].dh = vec![DhGroup::Ecp256, DhGroup::Curve25519];
    b.esp_proposals[0].dh = vec![DhGroup::Curve25519];
    let mut n = Net::new(a, b, 3);
    n.connect();
    assert!(n.s[0].ep.rekey_child(n.now, n.out_spi(0)));
    n.run();
    n.settled();
    assert_eq!(n.count(0, |e| matches!(e, Event::ChildRekeyed { .. })), 1);
    assert_eq!(n.count(0, |e| matches!(e, Event::RekeyFailed { .. })), 0);
}

#[test]
fn ike_rekey_moves_children() {
    for seed in 0..4 {
        let mut n = pair(seed);
        let (old_a, old_b) = (n.sa(0), n.sa(1));
        let spis = n.out_spi(0);
        let who = (seed % 2) as usize;
        let sa = n.sa(who);
        assert!(n.s[who].ep.rekey_ike(n.now, sa));
        n.run();
        n.settled();
        assert_ne!(n.sa(0), old_a);
        assert_ne!(n.sa(1), old_b);
        assert_eq!(n.out_spi(0), spis, "CHILD SAs untouched by an IKE SA rekey");
        for x in 0..2 {
            assert_eq!(n.count(x, |e| matches!(e, Event::IkeRekeyed { .. })), 1);
        }
        // the CHILD SA rekeys on the new IKE SA (keys from its SK_d)
        assert!(n.s[0].ep.rekey_child(n.now, spis));
        n.run();
        n.settled();
        // and the new IKE SA rekeys again
        let sa = n.sa(1);
        assert!(n.s[1].ep.rekey_ike(n.now, sa));
        n.run();
        n.settled();
    }
}

/// Both sides rekey the same CHILD SA in the same instant, repeatedly, with
/// the datagrams delivered in random order.
#[test]
fn simultaneous_child_rekeys() {
    let (mut collisions, mut won, mut refused) = (0, 0, 0);
    for seed in 1..=120 {
        let mut n = pair(seed);
        for _ in 0..4 {
            let (sa, sb) = (n.out_spi(0), n.out_spi(1));
            assert!(n.s[0].ep.rekey_child(n.now, sa));
            assert!(n.s[1].ep.rekey_child(n.now, sb));
            n.run();
            n.settle();
            n.settled();
        }
        for x in 0..2 {
            collisions += n.count(x, |e| matches!(e, Event::RekeyCollision { .. }));
            won += n.count(x, |e| matches!(e, Event::RekeyCollision { won: true, .. }));
            refused += n.count(x, |e| matches!(e, Event::RekeyFailed { .. }));
        }
    }
    eprintln!("collisions seen {collisions} (won {won}), refused with TEMPORARY_FAILURE {refused}");
    assert!(collisions > 100 && refused > 10, "both paths exercised");
    assert_eq!(won * 2, collisions, "exactly one winner per collision");
}

#[test]
fn simultaneous_ike_rekeys() {
    let mut collisions = 0;
    for seed in 1..=120 {
        let mut n = pair(seed);
        for _ in 0..3 {
            let (a, b) = (n.sa(0), n.sa(1));
            assert!(n.s[0].ep.rekey_ike(n.now, a));
            assert!(n.s[1].ep.rekey_ike(n.now, b));
            n.run();
            n.settle();
            n.settled();
        }
        for x in 0..2 {
            collisions += n.count(x, |e| matches!(e, Event::RekeyCollision { .. }));
        }
    }
    eprintln!("IKE SA rekey collisions seen {collisions}");
    assert!(collisions > 50);
}

/// An IKE SA rekey from one side and a CHILD SA rekey from the other at once.
#[test]
fn simultaneous_ike_and_child_rekeys() {
    for seed in 1..=80 {
        let mut n = pair(seed);
        for r in 0..3 {
            let x = r % 2;
            let sa = n.sa(x);
            let spi = n.out_spi(1 - x);
            assert!(n.s[x].ep.rekey_ike(n.now, sa));
            assert!(n.s[1 - x].ep.rekey_child(n.now, spi));
            n.run();
            n.settle();
            n.settled();
        }
    }
}

/// Both sides with the same short lifetimes for two simulated minutes:
/// every rekey comes from the timers, collisions included.
#[test]
fn timer_driven_rekeys_for_two_minutes() {
    for seed in 1..=20 {
        let mk = |l: &str, r: &str| {
            let mut c = cfg(l, r);
            c.child_lifetimes.soft_time = Some(Duration::from_secs(15));
            c.child_lifetimes.hard_time = Some(Duration::from_secs(25));
            c.ike_rekey_time = Some(Duration::from_secs(20));
            c.ike_life_time = Some(Duration::from_secs(40));
            c.rekey_jitter = Duration::from_millis(300);
            c
        };
        let mut n = Net::new(
            mk("a.example", "b.example"),
            mk("b.example", "a.example"),
            seed,
        );
        n.connect();
        let start = n.now;
        while n.now < start + Duration::from_secs(120) {
            n.tick();
        }
        n.settle();
        n.settled();
        for x in 0..2 {
            assert!(n.count(x, |e| matches!(e, Event::ChildRekeyed { .. })) >= 4);
            assert!(n.count(x, |e| matches!(e, Event::IkeRekeyed { .. })) >= 3);
        }
    }
}

#[test]
fn key_expiring_triggers_rekey() {
    let mut n = pair(7);
    let spi_in = *n.s[1].m.inbound.keys().next().unwrap();
    assert!(n.s[1].ep.on_child_key_expiring(n.now, spi_in));
    n.run();
    n.settled();
    assert_eq!(n.count(1, |e| matches!(e, Event::ChildRekeyed { .. })), 1);
    assert!(
        !n.s[1].ep.on_child_key_expiring(n.now, spi_in),
        "old SA is gone"
    );
}

#[test]
fn more_child_sas_with_their_own_selectors_and_delete() {
    let mut a = cfg("a.example", "b.example");
    let mut b = cfg("b.example", "a.example");
    let p = |s: &str, l| ts_prefix(s.parse().unwrap(), l);
    a.local_ts = vec![p("10.1.0.0", 16), p("10.2.0.0", 16)];
    a.remote_ts = vec![p("10.9.0.0", 16)];
    b.local_ts = vec![p("10.9.0.0", 16)];
    b.remote_ts = vec![p("10.0.0.0", 8)];
    let mut n = Net::new(a, b, 5);
    n.connect();
    let sa = n.sa(0);
    assert!(n.s[0]
        .ep
        .create_child(n.now, sa, vec![p("10.2.3.0", 24)], vec![p("10.9.1.0", 24)]));
    n.run();
    n.children = 2;
    n.settled();
    let kids = n.s[1].ep.child_sas(n.sa(1));
    assert!(kids
        .iter()
        .any(|c| c.ts_remote == vec![p("10.2.3.0", 24)] && c.ts_local == vec![p("10.9.1.0", 24)]));
    // refused selectors: the IKE SA and the other CHILD SAs stay
    assert!(n.s[0].ep.create_child(
        n.now,
        sa,
        vec![p("172.16.0.0", 12)],
        vec![p("10.9.0.0", 16)]
    ));
    n.run();
    assert_eq!(
        n.count(0, |e| matches!(
            e,
            Event::RekeyFailed {
                child: None,
                notify: 38,
                ..
            }
        )),
        1
    );
    n.settled();
    // rekey the second one, from B
    let spi = kids
        .iter()
        .find(|c| c.ts_local == vec![p("10.9.1.0", 24)])
        .unwrap()
        .spi_in;
    assert!(n.s[1].ep.rekey_child(n.now, spi));
    n.run();
    n.settled();
    // B deletes one: both sides lose exactly that pair
    let spi = n.s[1].ep.child_sas(n.sa(1))[0].spi_in;
    // (a deliberate delete: the deleter stops at once, the peer when the
    // DELETE arrives; make-before-break is for rekeys)
    assert!(n.s[1].ep.delete_child(n.now, spi));
    n.children = 1;
    n.teardown = true;
    n.run();
    n.teardown = false;
    n.settled();
    assert!(!n.s[1].m.inbound.contains_key(&spi));
}

#[test]
fn initial_contact_drops_stale_sas_of_that_peer() {
    let mut n = pair(9);
    let stale = n.sa(1);
    // A restarts (new endpoint, same identity) and connects again
    n.s[0].ep = Endpoint::new(
        cfg("a.example", "b.example"),
        IpAddr::from(A_IP),
        Box::new(Rng(99)),
    );
    n.s[0].m = Model::default();
    n.children = 0;
    n.teardown = true;
    n.connect();
    assert!(!n.s[1].ep.sa_ids().contains(&stale));
    assert!(n.s[1].m.events.iter().any(|e| matches!(
        e,
        Event::Closed { sa, by_peer: true } if *sa == stale
    )));
}

#[test]
fn dpd_restart_reconnects() {
    let mut a = cfg("a.example", "b.example");
    a.dpd_interval = Some(Duration::from_secs(10));
    a.dpd_action = DpdAction::Restart;
    let mut n = Net::new(a, cfg("b.example", "a.example"), 11);
    n.connect();
    n.blackhole = true;
    n.children = 0;
    n.teardown = true;
    for _ in 0..10 {
        n.tick();
        if n.count(0, |e| matches!(e, Event::Restarting { .. })) > 0 {
            break;
        }
    }
    assert_eq!(n.count(0, |e| matches!(e, Event::Restarting { .. })), 1);
    n.blackhole = false;
    n.tick(); // the new IKE_SA_INIT's retransmission gets through
    assert_eq!(n.count(0, |e| matches!(e, Event::Established { .. })), 2);
}

// ---------------------------------------------------------------- robustness

fn esp_prop(spi: Vec<u8>, transforms: Vec<(u8, u16, Option<u16>)>) -> Proposal {
    Proposal {
        num: 1,
        protocol: proto::ESP,
        spi,
        transforms: transforms
            .into_iter()
            .map(|(ttype, id, key_len)| Transform { ttype, id, key_len })
            .collect(),
    }
}

mod fuzzish {
    use super::*;
    use proptest::prelude::*;

    fn payload() -> impl Strategy<Value = Payload> {
        let ts = any::<u8>().prop_map(|l| vec![ts_prefix("10.0.0.0".parse().unwrap(), l % 33)]);
        prop_oneof![
            (
                prop::collection::vec(any::<u8>(), 0..9),
                prop::collection::vec((1u8..6, 0u16..40, prop::option::of(0u16..300)), 0..6),
                any::<bool>(),
            )
                .prop_map(|(spi, t, ike)| {
                    let mut p = esp_prop(spi, t);
                    if ike {
                        p.protocol = proto::IKE;
                    }
                    Payload::Sa(vec![p])
                }),
            Just(Payload::Sa(vec![esp_prop(
                vec![1, 2, 3, 4],
                vec![(1, 20, Some(256)), (5, 0, None), (4, 31, None)]
            )])),
            prop::collection::vec(any::<u8>(), 16..40).prop_map(Payload::Nonce),
            (
                prop_oneof![Just(31u16), Just(19), Just(14), any::<u16>()],
                prop::collection::vec(any::<u8>(), 0..80)
            )
                .prop_map(|(group, data)| Payload::Ke { group, data }),
            ts.clone().prop_map(Payload::TsI),
            ts.prop_map(Payload::TsR),
            (prop::collection::vec(any::<u8>(), 0..6), any::<bool>()).prop_map(|(spi, real)| {
                Payload::Notify(Notify {
                    protocol: proto::ESP,
                    spi: if real { vec![] } else { spi },
                    ntype: notify::REKEY_SA,
                    data: vec![],
                })
            }),
            (
                any::<u8>(),
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..3)
            )
                .prop_map(|(p, spis)| Payload::Delete(polytun_ike::wire::Delete {
                    // not IKE: deleting the IKE SA is allowed to end it
                    protocol: [0, 2, 3, 3][p as usize % 4],
                    spi_size: 4,
                    spis
                })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Arbitrary CREATE_CHILD_SA (and INFORMATIONAL) requests to an
        /// established responder never panic, and the IKE SA and its keys
        /// stay usable.
        #[test]
        fn arbitrary_create_child_sa_requests(
            reqs in prop::collection::vec((any::<bool>(), prop::collection::vec(payload(), 0..8), any::<bool>()), 1..6)
        ) {
            let mut n = pair(0);
            let sa = n.sa(1);
            let real_spi = n.out_spi(1);
            for (info, mut inner, use_real) in reqs {
                for p in &mut inner {
                    if let Payload::Notify(no) = p {
                        if use_real && no.spi.is_empty() {
                            no.spi = real_spi.to_be_bytes().to_vec();
                        }
                    }
                }
                let exch = if info { exchange::INFORMATIONAL } else { exchange::CREATE_CHILD_SA };
                let _ = n.s[1].ep.inject_request(n.now, sa, exch, inner);
                while n.s[1].ep.poll_output().is_some() {}
            }
            prop_assert!(n.s[1].ep.is_established(sa));
            let _ = n.s[1].ep.poll_timeout();
            n.s[1].ep.handle_timeout(n.now + Duration::from_secs(10));
            while n.s[1].ep.poll_output().is_some() {}
        }
    }
}
