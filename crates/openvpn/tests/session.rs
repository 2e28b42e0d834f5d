//! Client ↔ server in one process with a fake clock: hard reset, TLS 1.3
//! over the reliability layer and tls-crypt/tls-auth, key method 2,
//! push-request/reply, tls-ekm data keys, then DATA_V2 both ways.

use polytun_core::{Limits, PacketBatch};
use polytun_openvpn::data::{Cipher, Opened};
use polytun_openvpn::reliable::ReliableConfig;
use polytun_openvpn::session::{Event, Output, Role, Session, SessionConfig, DEFAULT_CONTROL_MTU};
use polytun_openvpn::static_key::{KeyDirection, StaticKey};
use polytun_openvpn::tls::{self, PeerVerification, TlsIdentity};
use polytun_openvpn::wrap::{ControlWrap, Digest};
use rand_core::OsRng;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

struct Pki {
    ca: CertificateDer<'static>,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    client: (CertificateDer<'static>, PrivateKeyDer<'static>),
}

fn pki() -> Pki {
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
    Pki {
        ca: ca.der().clone(),
        server: leaf(ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf(ExtendedKeyUsagePurpose::ClientAuth),
    }
}

fn ident(
    (cert, key): &(CertificateDer<'static>, PrivateKeyDer<'static>),
    verify: PeerVerification,
) -> TlsIdentity {
    TlsIdentity {
        cert_chain: vec![cert.clone()],
        key: Some(key.clone_key()),
        verify,
        allow_tls12: false,
    }
}

fn config(role: Role, wrap: ControlWrap, ciphers: Vec<Cipher>) -> SessionConfig {
    SessionConfig {
        role,
        wrap,
        ciphers,
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

struct Run {
    client_events: Vec<Event>,
    server_events: Vec<Event>,
    client_key: Option<Arc<polytun_openvpn::data::DataChannelKey>>,
    server_key: Option<Arc<polytun_openvpn::data::DataChannelKey>>,
}

/// Pumps both sessions; `drop_every` drops every n-th datagram (0: none).
fn pump(mut c: Session, mut s: Session, drop_every: usize, start: Instant) -> Run {
    let mut now = start;
    let mut run = Run {
        client_events: vec![],
        server_events: vec![],
        client_key: None,
        server_key: None,
    };
    let mut n = 0usize;
    for _ in 0..2000 {
        let mut to_s = vec![];
        let mut to_c = vec![];
        while let Some(o) = c.poll_output() {
            match o {
                Output::Transmit(p) => to_s.push(p),
                Output::InstallKey(k) => run.client_key = Some(k),
                Output::SendKey(_) | Output::RetireKey(_) => {}
                Output::Event(e) => run.client_events.push(e),
            }
        }
        while let Some(o) = s.poll_output() {
            match o {
                Output::Transmit(p) => to_c.push(p),
                Output::InstallKey(k) => run.server_key = Some(k),
                Output::SendKey(_) | Output::RetireKey(_) => {}
                Output::Event(e) => run.server_events.push(e),
            }
        }
        if to_s.is_empty() && to_c.is_empty() {
            if c.is_active() && s.is_active() {
                break;
            }
            let next = [c.poll_timeout(), s.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) => now = now.max(t),
                None => break,
            }
            c.handle_timeout(now);
            s.handle_timeout(now);
            continue;
        }
        for p in to_s {
            n += 1;
            if drop_every == 0 || !n.is_multiple_of(drop_every) {
                let _ = s.handle_packet(now, &p);
            }
        }
        for p in to_c {
            n += 1;
            if drop_every == 0 || !n.is_multiple_of(drop_every) {
                let _ = c.handle_packet(now, &p);
            }
        }
        now += Duration::from_millis(1);
    }
    run
}

#[allow(clippy::too_many_arguments)]
fn sessions(
    pki: &Pki,
    cwrap: ControlWrap,
    swrap: ControlWrap,
    cverify: PeerVerification,
    sverify: PeerVerification,
    cc: Vec<Cipher>,
    sc: Vec<Cipher>,
    now: Instant,
) -> (Session, Session) {
    let ccfg = tls::client_config(&ident(&pki.client, cverify)).unwrap();
    let scfg = tls::server_config(&ident(&pki.server, sverify)).unwrap();
    let c = Session::new(
        config(Role::Client(ccfg), cwrap, cc),
        now,
        SystemTime::now(),
        OsRng,
    );
    let s = Session::new(
        config(
            Role::Server {
                config: scfg,
                push: vec![
                    "topology subnet".into(),
                    "ifconfig 10.8.0.2 255.255.255.0".into(),
                    "route 192.168.7.0 255.255.255.0".into(),
                    "dhcp-option DNS 10.8.0.1".into(),
                    "ping 10".into(),
                    "ping-restart 60".into(),
                ],
                peer_id: 5,
            },
            swrap,
            sc,
        ),
        now,
        SystemTime::now(),
        OsRng,
    );
    (c, s)
}

fn check_data(run: &Run, cipher: Cipher) {
    let ck = run.client_key.as_ref().expect("client key");
    let sk = run.server_key.as_ref().expect("server key");
    assert_eq!(ck.cipher, cipher);
    let now = Instant::now();
    let mut b = PacketBatch::new(2, 32, 1500, 32);
    b.push(b"\x45 client to server");
    b.with_packet(0, |p| ck.seal(now, p).unwrap());
    assert_eq!(&b.get(0)[1..4], &[0, 0, 5], "peer-id 5 on the wire");
    assert!(matches!(
        b.with_packet(0, |p| sk.open(now, p)),
        Ok(Opened::Packet(_))
    ));
    assert_eq!(b.get(0), b"\x45 client to server");
    b.push(b"\x45 server to client");
    b.with_packet(1, |p| sk.seal(now, p).unwrap());
    assert!(matches!(
        b.with_packet(1, |p| ck.open(now, p)),
        Ok(Opened::Packet(_))
    ));
}

#[test]
fn tls_crypt_ca_all_ciphers() {
    let pki = pki();
    let key = StaticKey::generate(&mut OsRng);
    for cipher in Cipher::ALL {
        let now = Instant::now();
        let (c, s) = sessions(
            &pki,
            ControlWrap::tls_crypt(&key, false),
            ControlWrap::tls_crypt(&key, true),
            PeerVerification::Ca(vec![pki.ca.clone()]),
            PeerVerification::Ca(vec![pki.ca.clone()]),
            Cipher::ALL.to_vec(),
            vec![cipher],
            now,
        );
        let run = pump(c, s, 0, now);
        assert!(
            run.client_events
                .iter()
                .any(|e| matches!(e, Event::Connected { .. })),
            "{:?} {:?}",
            run.client_events,
            run.server_events
        );
        let push = run
            .client_events
            .iter()
            .find_map(|e| match e {
                Event::Connected { push } => Some(push.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(push.peer_id, Some(5));
        assert_eq!(push.routes.len(), 1);
        assert_eq!(push.ping_restart, Some(60));
        check_data(&run, cipher);
    }
}

#[test]
fn tls_auth_fingerprint_lossy() {
    let pki = pki();
    let key = StaticKey::generate(&mut OsRng);
    let now = Instant::now();
    let (c, s) = sessions(
        &pki,
        ControlWrap::tls_auth(&key, KeyDirection::Inverse, Digest::Sha256),
        ControlWrap::tls_auth(&key, KeyDirection::Normal, Digest::Sha256),
        PeerVerification::Fingerprints(vec![tls::fingerprint(&pki.server.0)]),
        PeerVerification::Fingerprints(vec![tls::fingerprint(&pki.client.0)]),
        Cipher::ALL.to_vec(),
        Cipher::ALL.to_vec(),
        now,
    );
    // Every 3rd datagram lost: retransmission must carry the handshake.
    let run = pump(c, s, 3, now);
    check_data(&run, Cipher::Aes256Gcm);
}

#[test]
fn wrong_fingerprint_or_wrong_key_fails() {
    let pki = pki();
    let key = StaticKey::generate(&mut OsRng);
    let now = Instant::now();
    let (c, s) = sessions(
        &pki,
        ControlWrap::tls_crypt(&key, false),
        ControlWrap::tls_crypt(&key, true),
        PeerVerification::Fingerprints(vec![[0; 32]]),
        PeerVerification::Ca(vec![pki.ca.clone()]),
        Cipher::ALL.to_vec(),
        Cipher::ALL.to_vec(),
        now,
    );
    let run = pump(c, s, 0, now);
    assert!(run.client_key.is_none() && run.server_key.is_none());
    assert!(run
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Failed(_))));
    // A wrong tls-crypt key: nothing gets through, hand-window expires.
    let other = StaticKey::generate(&mut OsRng);
    let (c, s) = sessions(
        &pki,
        ControlWrap::tls_crypt(&other, false),
        ControlWrap::tls_crypt(&key, true),
        PeerVerification::Ca(vec![pki.ca.clone()]),
        PeerVerification::Ca(vec![pki.ca.clone()]),
        Cipher::ALL.to_vec(),
        Cipher::ALL.to_vec(),
        now,
    );
    let run = pump(c, s, 0, now);
    assert!(run.client_key.is_none());
    assert!(
        matches!(run.client_events.last(), Some(Event::Failed(m)) if m.contains("hand-window"))
    );
}

/// Compression framing: the server's pushed option wins over the client's
/// own; `compress migrate` pushes stub-v2 to a client whose options string
/// says comp-lzo (and nothing to one without); both ends then frame alike.
#[test]
fn compression_framing_pushed_and_migrated() {
    use polytun_openvpn::compress::Framing;
    let pki = pki();
    let key = StaticKey::generate(&mut OsRng);
    // (client's own, server's push, server migrates) → both sides' framing
    let cases = [
        (Framing::None, None, false, Framing::None),
        (Framing::Lzo, None, false, Framing::Lzo),
        (
            Framing::None,
            Some("compress stub-v2"),
            false,
            Framing::StubV2,
        ),
        (Framing::Lzo, Some("compress lz4"), false, Framing::Lz4),
        (Framing::Lzo, None, true, Framing::StubV2),
        (Framing::Stub, None, true, Framing::StubV2),
        (Framing::None, None, true, Framing::None),
    ];
    for (own, push, migrate, want) in cases {
        let now = Instant::now();
        let ccfg = tls::client_config(&ident(
            &pki.client,
            PeerVerification::Ca(vec![pki.ca.clone()]),
        ))
        .unwrap();
        let scfg = tls::server_config(&ident(
            &pki.server,
            PeerVerification::Ca(vec![pki.ca.clone()]),
        ))
        .unwrap();
        let mut cc = config(
            Role::Client(ccfg),
            ControlWrap::tls_crypt(&key, false),
            Cipher::ALL.to_vec(),
        );
        cc.framing = own;
        let mut sc = config(
            Role::Server {
                config: scfg,
                push: push.into_iter().map(str::to_string).collect(),
                peer_id: 5,
            },
            ControlWrap::tls_crypt(&key, true),
            Cipher::ALL.to_vec(),
        );
        // the server's own option is what it would frame with unpushed
        sc.framing = own;
        sc.compress_migrate = migrate;
        let c = Session::new(cc, now, SystemTime::now(), OsRng);
        let s = Session::new(sc, now, SystemTime::now(), OsRng);
        let run = pump(c, s, 0, now);
        let case = format!("{own:?} {push:?} {migrate}");
        let (ck, sk) = (run.client_key.as_ref(), run.server_key.as_ref());
        assert_eq!(ck.map(|k| k.framing), Some(want), "{case}");
        assert_eq!(sk.map(|k| k.framing), Some(want), "{case}");
        check_data(&run, Cipher::Aes256Gcm);
    }
}
