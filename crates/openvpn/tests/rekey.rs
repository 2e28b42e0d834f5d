//! Renegotiation, in one process with a fake clock: a polytun client
//! Session and a polytun server Session back to back over a simulated link
//! (latency with jitter, so packets reorder; optional loss of control
//! packets), each side with a small data path that keeps keys by key-id
//! and applies InstallKey / SendKey / RetireKey. Data flows both ways all
//! the time; every data packet sent must be opened by the other side.

use polytun_core::{KeyStatus, Limits, PacketBuf};
use polytun_openvpn::data::{Cipher, DataChannelKey, Opened, OVERHEAD};
use polytun_openvpn::packet::{split_op_byte, KeyId, Opcode};
use polytun_openvpn::rekey::{RekeyConfig, RekeyReason, RenegSec};
use polytun_openvpn::reliable::ReliableConfig;
use polytun_openvpn::session::{Event, Output, Role, Session, SessionConfig, DEFAULT_CONTROL_MTU};
use polytun_openvpn::static_key::StaticKey;
use polytun_openvpn::tls::{self, PeerVerification, TlsIdentity};
use polytun_openvpn::wrap::ControlWrap;
use rand_core::OsRng;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const STEP: Duration = Duration::from_millis(5);
const PAYLOAD: usize = 100;

type Cert = (CertificateDer<'static>, PrivateKeyDer<'static>);

fn pki() -> (CertificateDer<'static>, Cert, Cert) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let leaf = |eku| {
        let k = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["leaf".into()]).unwrap();
        p.extended_key_usages = vec![eku];
        let c = p.signed_by(&k, &ca, &ca_key).unwrap();
        (
            c.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der())),
        )
    };
    (
        ca.der().clone(),
        leaf(ExtendedKeyUsagePurpose::ServerAuth),
        leaf(ExtendedKeyUsagePurpose::ClientAuth),
    )
}

fn config(role: Role, wrap: ControlWrap) -> SessionConfig {
    SessionConfig {
        role,
        wrap,
        ciphers: vec![Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305],
        udp: true,
        control_mtu: DEFAULT_CONTROL_MTU,
        reliable: ReliableConfig::default(),
        data_limits: Limits::default(),
        credentials: None,
        framing: Default::default(),
        compress_migrate: false,
        decompress: true,
        auth_token: None,
    }
}

fn sessions(now: Instant) -> (Session, Session) {
    let (ca, server, client) = pki();
    let ident = |(c, k): &Cert| TlsIdentity {
        cert_chain: vec![c.clone()],
        key: Some(k.clone_key()),
        verify: PeerVerification::Ca(vec![ca.clone()]),
        allow_tls12: false,
    };
    let key = StaticKey::generate(&mut OsRng);
    let c = Session::new(
        config(
            Role::Client(tls::client_config(&ident(&client)).unwrap()),
            ControlWrap::tls_crypt(&key, false),
        ),
        now,
        SystemTime::now(),
        OsRng,
    );
    let s = Session::new(
        config(
            Role::Server {
                config: tls::server_config(&ident(&server)).unwrap(),
                push: vec!["ping 10".into()],
                peer_id: 3,
            },
            ControlWrap::tls_crypt(&key, true),
        ),
        now,
        SystemTime::now(),
        OsRng,
    );
    (c, s)
}

/// One side: its session and a data path keyed by key-id.
struct Side {
    s: Session,
    keys: [Option<Arc<DataChannelKey>>; 8],
    send: Option<Arc<DataChannelKey>>,
    events: Vec<Event>,
    send_keys: Vec<KeyId>,
    retired: Vec<KeyId>,
    sent: u64,
    received: u64,
    open_failures: Vec<String>,
    expiring: Vec<KeyId>,
    next_seq: u64,
    last_seq_by_key: Vec<KeyId>,
}

impl Side {
    fn new(s: Session) -> Self {
        Self {
            s,
            keys: Default::default(),
            send: None,
            events: vec![],
            send_keys: vec![],
            retired: vec![],
            sent: 0,
            received: 0,
            open_failures: vec![],
            expiring: vec![],
            next_seq: 0,
            last_seq_by_key: vec![],
        }
    }

    /// Applies the session's outputs; returns the control packets to send.
    fn outputs(&mut self) -> Vec<Vec<u8>> {
        let mut tx = vec![];
        while let Some(o) = self.s.poll_output() {
            match o {
                Output::Transmit(p) => tx.push(p),
                Output::InstallKey(k) => {
                    let id = usize::from(k.key_id);
                    self.keys[id] = Some(k);
                }
                Output::SendKey(id) => {
                    let k = self.keys[usize::from(id)].clone();
                    assert!(k.is_some(), "SendKey({id}) before InstallKey");
                    self.send = k;
                    self.send_keys.push(id);
                }
                Output::RetireKey(id) => {
                    assert!(
                        self.send.as_ref().is_none_or(|k| k.key_id != id),
                        "retiring the send key {id}"
                    );
                    self.keys[usize::from(id)] = None;
                    self.retired.push(id);
                }
                Output::Event(e) => self.events.push(e),
            }
        }
        tx
    }

    fn seal(&mut self, now: Instant) -> Option<Vec<u8>> {
        let key = self.send.clone()?;
        let mut buf = vec![0u8; OVERHEAD + PAYLOAD + 32];
        buf[OVERHEAD] = 0x45;
        buf[OVERHEAD + 1..OVERHEAD + 9].copy_from_slice(&self.next_seq.to_be_bytes());
        let mut p = PacketBuf::new(&mut buf, OVERHEAD, OVERHEAD + PAYLOAD);
        let st = key.seal(now, &mut p).expect("seal");
        if st == KeyStatus::Expiring {
            self.expiring.push(key.key_id);
            self.s.key_expiring(now, key.key_id);
        }
        let out = p.as_slice().to_vec();
        self.next_seq += 1;
        self.sent += 1;
        Some(out)
    }

    fn open(&mut self, now: Instant, mut d: Vec<u8>) {
        let (_, key_id) = split_op_byte(d[0]).unwrap();
        let Some(key) = self.keys[usize::from(key_id)].clone() else {
            self.open_failures
                .push(format!("no key for key-id {key_id} at {now:?}"));
            return;
        };
        let n = d.len();
        let mut p = PacketBuf::new(&mut d, 0, n);
        match key.open(now, &mut p) {
            Ok(Opened::Packet(st)) => {
                assert_eq!(p.len(), PAYLOAD);
                self.received += 1;
                self.last_seq_by_key.push(key_id);
                if st == KeyStatus::Expiring {
                    self.expiring.push(key_id);
                    self.s.key_expiring(now, key_id);
                }
            }
            r => self.open_failures.push(format!("key-id {key_id}: {r:?}")),
        }
    }
}

/// A packet on the simulated link.
struct InFlight {
    at: Instant,
    to_server: bool,
    bytes: Vec<u8>,
}

struct Sim {
    now: Instant,
    c: Side,
    s: Side,
    link: VecDeque<InFlight>,
    rng: u64,
    /// Per cent of control packets lost.
    control_loss: u64,
    /// Maximum one-way latency (uniform 1 ms ..= this); packets reorder.
    max_latency_ms: u64,
    /// A data packet each way every this many steps (0: none).
    data_every: u32,
    steps: u64,
}

impl Sim {
    fn new() -> Self {
        let now = Instant::now();
        let (c, s) = sessions(now);
        Self {
            now,
            c: Side::new(c),
            s: Side::new(s),
            link: VecDeque::new(),
            rng: 0x1234_5678_9abc_def1,
            control_loss: 0,
            max_latency_ms: 20,
            data_every: 4,
            steps: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn put(&mut self, to_server: bool, bytes: Vec<u8>, control: bool) {
        if control && self.rand() % 100 < self.control_loss {
            return;
        }
        let lat = 1 + self.rand() % self.max_latency_ms.max(1);
        let at = self.now + Duration::from_millis(lat);
        self.link.push_back(InFlight {
            at,
            to_server,
            bytes,
        });
    }

    fn exchange_outputs(&mut self) {
        for p in self.c.outputs() {
            self.put(true, p, true);
        }
        for p in self.s.outputs() {
            self.put(false, p, true);
        }
    }

    fn step(&mut self, send_data: bool) {
        self.now += STEP;
        self.steps += 1;
        let now = self.now;
        // Deliver what is due (in arrival-time order: reordering).
        let mut due: Vec<InFlight> = vec![];
        let mut keep = VecDeque::new();
        for f in self.link.drain(..) {
            if f.at <= now {
                due.push(f);
            } else {
                keep.push_back(f);
            }
        }
        self.link = keep;
        due.sort_by_key(|f| f.at);
        for f in due {
            let side = if f.to_server {
                &mut self.s
            } else {
                &mut self.c
            };
            let (op, _) = split_op_byte(f.bytes[0]).unwrap();
            if op == Opcode::DataV2 {
                side.open(now, f.bytes);
            } else {
                let _ = side.s.handle_packet(now, &f.bytes);
            }
        }
        for side in [&mut self.c, &mut self.s] {
            if side.s.poll_timeout().is_some_and(|t| t <= now) {
                side.s.handle_timeout(now);
            }
        }
        self.exchange_outputs();
        if send_data && self.data_every > 0 && self.steps.is_multiple_of(u64::from(self.data_every))
        {
            if let Some(p) = self.c.seal(now) {
                self.put(true, p, false);
            }
            if let Some(p) = self.s.seal(now) {
                self.put(false, p, false);
            }
            self.exchange_outputs();
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(true);
        }
    }

    fn connect(&mut self) {
        self.exchange_outputs();
        let end = self.now + Duration::from_secs(30);
        while !(self.c.s.is_active() && self.s.s.is_active()) {
            assert!(self.now < end, "no connection: {:?}", self.c.events);
            self.step(false);
        }
        // Let the last control packets settle.
        for _ in 0..20 {
            self.step(false);
        }
    }

    /// Stops data, delivers everything in flight, checks zero loss.
    fn drain_and_check_no_loss(&mut self) {
        for _ in 0..100 {
            self.step(false);
        }
        assert!(self.link.is_empty());
        for (name, tx, rx) in [("client", &self.c, &self.s), ("server", &self.s, &self.c)] {
            assert!(
                rx.open_failures.is_empty(),
                "{name} → peer: {} failures, first {:?}",
                rx.open_failures.len(),
                rx.open_failures.first()
            );
            assert_eq!(tx.sent, rx.received, "{name} → peer: packets lost");
            assert!(tx.sent > 0);
        }
        for side in [&self.c, &self.s] {
            assert!(
                !side.events.iter().any(|e| matches!(e, Event::Failed(_))),
                "{:?}",
                side.events
            );
        }
    }
}

fn rekey(reneg_sec: u32) -> RekeyConfig {
    RekeyConfig {
        reneg_sec: RenegSec {
            max: reneg_sec,
            min: None,
        },
        ..Default::default()
    }
}

fn renegotiations(side: &Side, reason: Option<RekeyReason>) -> Vec<KeyId> {
    side.events
        .iter()
        .filter_map(|e| match e {
            Event::Renegotiating { key_id, reason: r } if reason.is_none_or(|x| x == *r) => {
                Some(*key_id)
            }
            _ => None,
        })
        .collect()
}

/// Every side switched through consecutive key-ids 0,1,2,..., never back,
/// and retired every key but the last two.
fn check_key_progression(side: &Side, min_switches: usize) {
    let ids = &side.send_keys;
    assert!(ids.len() > min_switches, "send keys {ids:?}");
    for w in ids.windows(2) {
        assert_eq!(
            polytun_openvpn::rekey::next_key_id(w[0]),
            w[1],
            "send keys {ids:?}"
        );
    }
    let installed = side.keys.iter().filter(|k| k.is_some()).count();
    assert!(installed <= 2, "{installed} keys still installed");
    assert!(
        side.retired.len() + 2 >= ids.len(),
        "retired {:?} of {ids:?}",
        side.retired
    );
}

#[test]
fn server_reneg_sec_two_minutes_zero_loss() {
    let mut sim = Sim::new();
    let now = sim.now;
    sim.c.s.set_rekey(now, rekey(0));
    sim.s.s.set_rekey(now, rekey(20));
    sim.connect();
    sim.run(Duration::from_secs(130));
    sim.drain_and_check_no_loss();
    let by_server = renegotiations(&sim.s, Some(RekeyReason::Seconds));
    assert!(by_server.len() >= 6, "{by_server:?}");
    assert!(renegotiations(&sim.c, Some(RekeyReason::Seconds)).is_empty());
    assert_eq!(
        renegotiations(&sim.c, Some(RekeyReason::Peer)).len(),
        by_server.len()
    );
    check_key_progression(&sim.c, 6);
    check_key_progression(&sim.s, 6);
    // The server's effective reneg-sec is 18..=20 s (10 % jitter).
    let info = sim.s.s.key_info(sim.now);
    assert!(info.next_renegotiation.unwrap() <= Duration::from_secs(20));
    assert!(sim.s.s.effective_reneg_sec().unwrap() >= Duration::from_secs(18));
    assert_eq!(sim.c.s.key_info(sim.now).next_renegotiation, None);
}

#[test]
fn client_reneg_sec_two_minutes_zero_loss() {
    let mut sim = Sim::new();
    let now = sim.now;
    sim.c.s.set_rekey(now, rekey(20));
    sim.s.s.set_rekey(now, rekey(0));
    assert_eq!(
        sim.c.s.effective_reneg_sec(),
        Some(Duration::from_secs(20)),
        "a client without min uses reneg-sec exactly"
    );
    sim.connect();
    sim.run(Duration::from_secs(170));
    sim.drain_and_check_no_loss();
    let by_client = renegotiations(&sim.c, Some(RekeyReason::Seconds));
    assert!(by_client.len() >= 6, "{by_client:?}");
    assert_eq!(
        by_client.len(),
        renegotiations(&sim.s, Some(RekeyReason::Peer)).len()
    );
    check_key_progression(&sim.c, 6);
    check_key_progression(&sim.s, 6);
    // Key-ids went past 7 and started again at 1.
    assert!(sim.c.send_keys.windows(2).any(|w| w == [7, 1]));
    assert!(!sim.c.send_keys[1..].contains(&0));
}

#[test]
fn reneg_bytes_and_pkts_lossy_control_zero_loss() {
    // 100-byte packets, 50/s each way: 10 kB/s over both directions.
    let bytes = RekeyConfig {
        reneg_bytes: Some(60_000),
        ..rekey(0)
    };
    let pkts = RekeyConfig {
        reneg_pkts: Some(600),
        ..rekey(0)
    };
    for (client, server, side_is_client, reason) in [
        (bytes, rekey(0), true, RekeyReason::Bytes),
        (rekey(0), pkts, false, RekeyReason::Packets),
    ] {
        let mut sim = Sim::new();
        sim.control_loss = 15;
        sim.max_latency_ms = 40;
        let now = sim.now;
        sim.c.s.set_rekey(now, client);
        sim.s.s.set_rekey(now, server);
        sim.connect();
        sim.run(Duration::from_secs(80));
        sim.drain_and_check_no_loss();
        let side = if side_is_client { &sim.c } else { &sim.s };
        let n = renegotiations(side, Some(reason)).len()
            + renegotiations(side, Some(RekeyReason::DataLimit)).len();
        assert!(n >= 5, "{reason}: {n} renegotiations");
        assert!(!renegotiations(side, Some(reason)).is_empty());
        check_key_progression(&sim.c, 4);
        check_key_progression(&sim.s, 4);
    }
}

#[test]
fn on_command_from_each_side_and_collision() {
    let mut sim = Sim::new();
    let now = sim.now;
    sim.c.s.set_rekey(now, rekey(0));
    sim.s.s.set_rekey(now, rekey(0));
    sim.connect();
    sim.run(Duration::from_secs(2));
    let k = sim.c.s.renegotiate(sim.now).unwrap();
    assert_eq!(k, 1);
    // A second request while the first is under way is refused.
    assert!(sim.c.s.renegotiate(sim.now).is_err());
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.c.s.key_info(sim.now).send_key_id, Some(1));
    assert_eq!(sim.s.s.renegotiate(sim.now).unwrap(), 2);
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.s.s.key_info(sim.now).send_key_id, Some(2));
    // Collision: both at the same instant; each takes the other's soft
    // reset as the answer.
    let now = sim.now;
    assert_eq!(sim.c.s.renegotiate(now).unwrap(), 3);
    assert_eq!(sim.s.s.renegotiate(now).unwrap(), 3);
    sim.run(Duration::from_secs(10));
    for side in [&sim.c, &sim.s] {
        let info = side.s.key_info(sim.now);
        assert_eq!(info.send_key_id, Some(3), "{info:?}");
        assert_eq!(info.lame_duck_key_id, Some(2), "{info:?}");
        assert!(!info.renegotiating);
    }
    sim.drain_and_check_no_loss();
    assert_eq!(sim.c.send_keys, [0, 1, 2, 3]);
    assert_eq!(sim.s.send_keys, [0, 1, 2, 3]);
    assert_eq!(sim.c.retired, [0, 1]);
}

#[test]
fn lame_duck_retired_early_or_at_tran_window() {
    // Traffic both ways on the new key: retired once hand-window passed and
    // the old key fell silent, long before tran-window.
    let mut sim = Sim::new();
    let now = sim.now;
    sim.c.s.set_rekey(now, rekey(0));
    sim.s.s.set_rekey(now, rekey(0));
    sim.connect();
    sim.c.s.renegotiate(sim.now).unwrap();
    sim.run(Duration::from_secs(50));
    assert_eq!(sim.c.s.key_info(sim.now).lame_duck_key_id, Some(0));
    sim.run(Duration::from_secs(20));
    for side in [&sim.c, &sim.s] {
        assert_eq!(side.s.key_info(sim.now).lame_duck_key_id, None);
        assert_eq!(side.retired, [0]);
    }
    sim.drain_and_check_no_loss();

    // No traffic: the lame duck lives exactly tran-window.
    let mut sim = Sim::new();
    sim.data_every = 0;
    let now = sim.now;
    let cfg = RekeyConfig {
        tran_window: Duration::from_secs(30),
        ..rekey(0)
    };
    sim.c.s.set_rekey(now, cfg.clone());
    sim.s.s.set_rekey(now, cfg);
    sim.connect();
    let t0 = sim.now;
    sim.s.s.renegotiate(t0).unwrap();
    sim.run(Duration::from_secs(29));
    assert!(sim.c.retired.is_empty() && sim.s.retired.is_empty());
    // Without traffic the client switched after its delay, the server at once.
    assert_eq!(sim.c.s.key_info(sim.now).send_key_id, Some(1));
    assert_eq!(sim.s.s.key_info(sim.now).send_key_id, Some(1));
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.c.retired, [0]);
    assert_eq!(sim.s.retired, [0]);
}

#[test]
fn renegotiation_that_stalls_fails_after_hand_window() {
    let mut sim = Sim::new();
    let now = sim.now;
    sim.c.s.set_rekey(now, rekey(0));
    sim.s.s.set_rekey(now, rekey(0));
    sim.connect();
    sim.c.s.set_hand_window(sim.now, Duration::from_secs(10));
    sim.c.s.renegotiate(sim.now).unwrap();
    sim.control_loss = 100;
    sim.run(Duration::from_secs(11));
    assert!(
        matches!(sim.c.events.last(), Some(Event::Failed(m)) if m.contains("key-id 1") && m.contains("hand-window")),
        "{:?}",
        sim.c.events.last()
    );
    // Until then the old key carried the traffic.
    assert!(sim.s.open_failures.is_empty() && sim.c.open_failures.is_empty());
}

#[test]
fn data_path_key_expiring_starts_renegotiation() {
    let mut sim = Sim::new();
    let now = sim.now;
    sim.c.s.set_rekey(now, rekey(0));
    sim.s.s.set_rekey(now, rekey(0));
    sim.connect();
    sim.run(Duration::from_secs(2));
    // The data path reports KeyExpiring for the current key-id.
    sim.c.s.key_expiring(sim.now, 0);
    sim.run(Duration::from_secs(10));
    assert_eq!(
        renegotiations(&sim.c, Some(RekeyReason::DataLimit)),
        vec![1]
    );
    // An old key's report is ignored.
    sim.c.s.key_expiring(sim.now, 0);
    sim.run(Duration::from_secs(1));
    assert_eq!(renegotiations(&sim.c, None), vec![1]);
    sim.drain_and_check_no_loss();
}
