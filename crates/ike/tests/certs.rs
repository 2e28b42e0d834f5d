//! IKEv2 certificate authentication, two endpoints back to back with a fake
//! clock: RFC 7427 signatures with ECDSA P-256/P-384, RSA (PKCS#1 v1.5 and
//! PSS) and Ed25519 certificates made here with rcgen; chains through an
//! intermediate; and the refusals (wrong CA, expired, not yet valid,
//! identity not in the certificate, identity not the configured one, PSK
//! against certificates) each with its error and without a CHILD SA.

use polytun_ike::auth::{self, Clock, PubkeyAuth};
use polytun_ike::cert::{dn_from_str, CertError, Certificate};
use polytun_ike::key::{KeyKind, PrivateKey};
use polytun_ike::{
    AuthError, ChildSaParams, Config, Endpoint, Event, FailReason, Identity, Output,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

const A_IP: [u8; 4] = [192, 0, 2, 1];
const B_IP: [u8; 4] = [192, 0, 2, 2];
/// The fake wall clock: 2026-06-01.
const NOW_UNIX: u64 = 1_780_272_000;

fn clock() -> Clock {
    Arc::new(|| UNIX_EPOCH + Duration::from_secs(NOW_UNIX))
}

fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[derive(Clone, Copy, Debug)]
enum Alg {
    P256,
    P384,
    Rsa,
    Ed25519,
}

fn keypair(alg: Alg) -> KeyPair {
    match alg {
        Alg::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        Alg::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        Alg::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        // ring cannot generate RSA keys: a fixture made with openssl
        Alg::Rsa => {
            KeyPair::from_pem_and_sign_algo(&fixture("rsa2048-pkcs8.pem"), &rcgen::PKCS_RSA_SHA256)
                .unwrap()
        }
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CountryName, "CH");
    d.push(DnType::OrganizationName, "polytun");
    d.push(DnType::CommonName, cn);
    d
}

fn ymd(y: i32, m: u8, d: u8) -> time::OffsetDateTime {
    rcgen::date_time_ymd(y, m, d)
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(cn: &str, alg: Alg) -> Ca {
        let key = keypair(alg);
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = ymd(2024, 1, 1);
        p.not_after = ymd(2034, 1, 1);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// An intermediate CA signed by this one.
    fn intermediate(&self, cn: &str, alg: Alg) -> Ca {
        let key = keypair(alg);
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.not_before = ymd(2024, 1, 1);
        p.not_after = ymd(2034, 1, 1);
        Ca {
            cert: p.signed_by(&key, &self.cert, &self.key).unwrap(),
            key,
        }
    }

    fn der(&self) -> Certificate {
        Certificate::from_der(self.cert.der().to_vec()).unwrap()
    }
}

struct Leaf {
    cert: Certificate,
    key: PrivateKey,
}

/// An end-entity certificate `C=CH, O=polytun, CN=<cn>` with subjectAltNames
/// `<cn>.pt.test`, `<cn>@pt.test` and `ip`, valid from/until.
fn leaf(
    ca: &Ca,
    cn: &str,
    alg: Alg,
    ip: [u8; 4],
    valid: (time::OffsetDateTime, time::OffsetDateTime),
) -> Leaf {
    let key = keypair(alg);
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.subject_alt_names = vec![
        SanType::DnsName(format!("{cn}.pt.test").try_into().unwrap()),
        SanType::Rfc822Name(format!("{cn}@pt.test").try_into().unwrap()),
        SanType::IpAddress(IpAddr::from(ip)),
    ];
    p.not_before = valid.0;
    p.not_after = valid.1;
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    Leaf {
        cert: Certificate::from_der(cert.der().to_vec()).unwrap(),
        key: PrivateKey::from_pem_or_der(key.serialize_pem().as_bytes()).unwrap(),
    }
}

fn valid() -> (time::OffsetDateTime, time::OffsetDateTime) {
    (ymd(2025, 1, 1), ymd(2027, 1, 1))
}

fn pubkey(leaf: &Leaf, chain: &[Certificate], cas: &[Certificate]) -> PubkeyAuth {
    let mut certs = vec![leaf.cert.clone()];
    certs.extend_from_slice(chain);
    PubkeyAuth::new(leaf.key.clone(), certs, cas.to_vec(), clock()).unwrap()
}

fn cfg(local: Option<Identity>, remote: Option<Identity>, p: PubkeyAuth) -> Config {
    Config::pubkey(local, remote, p)
}

fn dn_id(s: &str) -> Identity {
    Identity::DerDn(dn_from_str(s).unwrap())
}

struct Side {
    ep: Endpoint,
    installed: Vec<ChildSaParams>,
    events: Vec<Event>,
}

impl Side {
    fn failed(&self) -> Option<FailReason> {
        self.events.iter().find_map(|e| match e {
            Event::Failed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
    }
    fn peer(&self) -> Option<Identity> {
        self.events.iter().find_map(|e| match e {
            Event::Established { peer, .. } => Some(peer.clone()),
            _ => None,
        })
    }
}

/// Runs a's connect to b until both are quiet; returns (a, b).
fn run(a: Config, b: Config) -> (Side, Side) {
    let now = Instant::now();
    let mk = |c: Config, ip: [u8; 4]| Side {
        ep: Endpoint::new(c, IpAddr::from(ip), Box::new(rand_core::OsRng)),
        installed: vec![],
        events: vec![],
    };
    let (mut a, mut b) = (mk(a, A_IP), mk(b, B_IP));
    a.ep.connect(now, SocketAddr::new(IpAddr::from(B_IP), 500));
    for _ in 0..50 {
        let mut moved = false;
        for dir in 0..2 {
            let (from, to, from_ip) = if dir == 0 {
                (&mut a, &mut b, A_IP)
            } else {
                (&mut b, &mut a, B_IP)
            };
            while let Some(o) = from.ep.poll_output() {
                moved = true;
                match o {
                    Output::Transmit {
                        local_port,
                        dst,
                        bytes,
                    } => {
                        let src = SocketAddr::new(IpAddr::from(from_ip), local_port);
                        let _ = to.ep.handle(now, src, dst.port(), &bytes);
                    }
                    Output::InstallChildSa(p) => from.installed.push(*p),
                    Output::Event(e) => from.events.push(e),
                    _ => {}
                }
            }
        }
        if !moved {
            return (a, b);
        }
    }
    panic!("no quiescence");
}

fn established_both(a: &Side, b: &Side) {
    assert_eq!(a.failed(), None, "initiator: {:?}", a.events);
    assert_eq!(b.failed(), None, "responder: {:?}", b.events);
    assert_eq!(a.installed.len(), 1, "initiator CHILD SA");
    assert_eq!(b.installed.len(), 1, "responder CHILD SA");
    assert_eq!(a.installed[0].spi_out, b.installed[0].spi_in);
    assert_eq!(
        *a.installed[0].keymat_out.encr,
        *b.installed[0].keymat_in.encr
    );
}

fn pair(alg_a: Alg, alg_b: Alg, ca_alg: Alg) -> (Side, Side) {
    let ca = Ca::new("polytun CA", ca_alg);
    let la = leaf(&ca, "moon", alg_a, A_IP, valid());
    let lb = leaf(&ca, "sun", alg_b, B_IP, valid());
    let cas = [ca.der()];
    let a = cfg(
        None,
        Some(dn_id("C=CH, O=polytun, CN=sun")),
        pubkey(&la, &[], &cas),
    );
    let b = cfg(
        None,
        Some(dn_id("C=CH, O=polytun, CN=moon")),
        pubkey(&lb, &[], &cas),
    );
    run(a, b)
}

#[test]
fn ecdsa_p256_certificates() {
    let (a, b) = pair(Alg::P256, Alg::P256, Alg::P256);
    established_both(&a, &b);
    assert_eq!(
        a.peer().map(|p| p.to_string()).as_deref(),
        Some("C=CH, O=polytun, CN=sun")
    );
    assert_eq!(
        b.peer().map(|p| p.to_string()).as_deref(),
        Some("C=CH, O=polytun, CN=moon")
    );
}

#[test]
fn ecdsa_p384_certificates() {
    let (a, b) = pair(Alg::P384, Alg::P384, Alg::P384);
    established_both(&a, &b);
}

#[test]
fn rsa_certificates_pkcs1_and_pss() {
    let (a, b) = pair(Alg::Rsa, Alg::Rsa, Alg::Rsa);
    established_both(&a, &b);
    // PSS on one side, PKCS#1 v1.5 on the other
    let ca = Ca::new("polytun CA", Alg::Rsa);
    let la = leaf(&ca, "moon", Alg::Rsa, A_IP, valid());
    let lb = leaf(&ca, "sun", Alg::Rsa, B_IP, valid());
    let cas = [ca.der()];
    let mut pa = pubkey(&la, &[], &cas);
    pa.rsa_pss = true;
    let (a, b) = run(cfg(None, None, pa), cfg(None, None, pubkey(&lb, &[], &cas)));
    established_both(&a, &b);
}

#[test]
fn ed25519_certificates_and_mixed_kinds() {
    let (a, b) = pair(Alg::Ed25519, Alg::Ed25519, Alg::Ed25519);
    established_both(&a, &b);
    // every kind of key against every other, under an RSA CA
    let (a, b) = pair(Alg::Ed25519, Alg::P384, Alg::Rsa);
    established_both(&a, &b);
    let (a, b) = pair(Alg::Rsa, Alg::P256, Alg::P384);
    established_both(&a, &b);
}

#[test]
fn chain_through_an_intermediate_ca() {
    let root = Ca::new("polytun root", Alg::P384);
    let sub = root.intermediate("polytun sub", Alg::P256);
    let la = leaf(&sub, "moon", Alg::P256, A_IP, valid());
    let lb = leaf(&root, "sun", Alg::P256, B_IP, valid());
    let cas = [root.der()];
    let (a, b) = run(
        cfg(None, None, pubkey(&la, &[sub.der()], &cas)),
        cfg(None, None, pubkey(&lb, &[], &cas)),
    );
    established_both(&a, &b);
    // without the intermediate, the chain is broken
    let (a, b) = run(
        cfg(None, None, pubkey(&la, &[], &cas)),
        cfg(None, None, pubkey(&lb, &[], &cas)),
    );
    assert!(
        matches!(
            b.failed(),
            Some(FailReason::Auth(AuthError::Cert(CertError::UnknownIssuer { ref issuer, .. })))
                if issuer == "C=CH, O=polytun, CN=polytun sub"
        ),
        "{:?}",
        b.failed()
    );
    no_child(&a, &b);
}

fn no_child(a: &Side, b: &Side) {
    assert!(a.installed.is_empty(), "initiator installed a CHILD SA");
    assert!(b.installed.is_empty(), "responder installed a CHILD SA");
    assert_eq!(
        a.failed(),
        Some(FailReason::PeerError(24)),
        "{:?}",
        a.events
    );
}

#[test]
fn wrong_ca_refused() {
    let ca = Ca::new("polytun CA", Alg::P256);
    let other = Ca::new("other CA", Alg::P256);
    // a CA with the same name but another key
    let twin = Ca::new("polytun CA", Alg::P256);
    let la = leaf(&ca, "moon", Alg::P256, A_IP, valid());
    let lb = leaf(&ca, "sun", Alg::P256, B_IP, valid());
    for (trusted, name) in [(other.der(), "other"), (twin.der(), "twin")] {
        let (a, b) = run(
            cfg(None, None, pubkey(&la, &[], &[ca.der()])),
            cfg(None, None, pubkey(&lb, &[], &[trusted])),
        );
        let f = b.failed();
        match name {
            "other" => assert!(
                matches!(
                    f,
                    Some(FailReason::Auth(AuthError::Cert(
                        CertError::UnknownIssuer { .. }
                    )))
                ),
                "{f:?}"
            ),
            _ => assert!(
                matches!(
                    f,
                    Some(FailReason::Auth(AuthError::Cert(
                        CertError::BadSignature { .. }
                    )))
                ),
                "{f:?}"
            ),
        }
        let msg = f.unwrap().to_string();
        assert!(msg.contains("C=CH, O=polytun, CN=moon"), "{msg}");
        no_child(&a, &b);
    }
}

#[test]
fn responder_with_untrusted_certificate_refused_by_initiator() {
    let ca = Ca::new("polytun CA", Alg::P256);
    let other = Ca::new("other CA", Alg::P256);
    let la = leaf(&ca, "moon", Alg::P256, A_IP, valid());
    let lb = leaf(&other, "sun", Alg::P256, B_IP, valid());
    let (a, b) = run(
        cfg(None, None, pubkey(&la, &[], &[ca.der()])),
        cfg(None, None, pubkey(&lb, &[], &[ca.der()])),
    );
    assert!(
        matches!(
            a.failed(),
            Some(FailReason::Auth(AuthError::Cert(
                CertError::UnknownIssuer { .. }
            )))
        ),
        "{:?}",
        a.failed()
    );
    assert!(a.installed.is_empty(), "initiator installed a CHILD SA");
    // the responder had answered; the initiator's AUTHENTICATION_FAILED
    // notify (§2.21.2) reached it
    let _ = b;
}

#[test]
fn expired_and_not_yet_valid_refused() {
    let ca = Ca::new("polytun CA", Alg::P256);
    let lb = leaf(&ca, "sun", Alg::P256, B_IP, valid());
    for (v, want_expired) in [
        ((ymd(2024, 1, 1), ymd(2026, 1, 1)), true),
        ((ymd(2026, 7, 1), ymd(2028, 1, 1)), false),
    ] {
        let la = leaf(&ca, "moon", Alg::P256, A_IP, v);
        let (a, b) = run(
            cfg(None, None, pubkey(&la, &[], &[ca.der()])),
            cfg(None, None, pubkey(&lb, &[], &[ca.der()])),
        );
        let f = b.failed();
        if want_expired {
            assert!(
                matches!(
                    f,
                    Some(FailReason::Auth(AuthError::Cert(CertError::Expired { .. })))
                ),
                "{f:?}"
            );
        } else {
            assert!(
                matches!(
                    f,
                    Some(FailReason::Auth(AuthError::Cert(
                        CertError::NotYetValid { .. }
                    )))
                ),
                "{f:?}"
            );
        }
        no_child(&a, &b);
    }
}

#[test]
fn identities_from_subject_alt_names() {
    let ca = Ca::new("polytun CA", Alg::P256);
    let la = leaf(&ca, "moon", Alg::P256, A_IP, valid());
    let lb = leaf(&ca, "sun", Alg::P256, B_IP, valid());
    let cas = [ca.der()];
    for (ida, want) in [
        (Identity::Fqdn("moon.pt.test".into()), true),
        (Identity::Fqdn("MOON.pt.test".into()), true),
        (Identity::Rfc822("moon@pt.test".into()), true),
        (Identity::Ipv4(A_IP.into()), true),
        (Identity::Fqdn("sun.pt.test".into()), false),
        (Identity::Ipv4([192, 0, 2, 9].into()), false),
        (dn_id("C=CH, O=polytun, CN=sun"), false),
    ] {
        let (a, b) = run(
            cfg(Some(ida.clone()), None, pubkey(&la, &[], &cas)),
            cfg(None, None, pubkey(&lb, &[], &cas)),
        );
        if want {
            established_both(&a, &b);
            assert_eq!(b.peer(), Some(ida));
        } else {
            assert!(
                matches!(
                    b.failed(),
                    Some(FailReason::Auth(AuthError::IdentityNotInCertificate { .. }))
                ),
                "{ida}: {:?}",
                b.failed()
            );
            no_child(&a, &b);
        }
    }
}

#[test]
fn configured_remote_identity_must_match() {
    let ca = Ca::new("polytun CA", Alg::P256);
    let la = leaf(&ca, "moon", Alg::P256, A_IP, valid());
    let lb = leaf(&ca, "sun", Alg::P256, B_IP, valid());
    let cas = [ca.der()];
    // a wildcard DN matches
    let (a, b) = run(
        cfg(None, None, pubkey(&la, &[], &cas)),
        cfg(
            None,
            Some(dn_id("C=CH, O=polytun, CN=*")),
            pubkey(&lb, &[], &cas),
        ),
    );
    established_both(&a, &b);
    // a valid certificate, but not the peer b is configured for
    let (a, b) = run(
        cfg(None, None, pubkey(&la, &[], &cas)),
        cfg(
            None,
            Some(dn_id("C=CH, O=polytun, CN=mars")),
            pubkey(&lb, &[], &cas),
        ),
    );
    assert!(
        matches!(b.failed(), Some(FailReason::IdentityRejected(_))),
        "{:?}",
        b.failed()
    );
    no_child(&a, &b);
}

#[test]
fn psk_initiator_refused_by_certificate_responder() {
    let ca = Ca::new("polytun CA", Alg::P256);
    let lb = leaf(&ca, "sun", Alg::P256, B_IP, valid());
    let (a, b) = run(
        Config::psk(
            Identity::Fqdn("moon.pt.test".into()),
            None,
            b"0123456789abcdef",
        ),
        cfg(None, None, pubkey(&lb, &[], &[ca.der()])),
    );
    assert!(
        matches!(
            b.failed(),
            Some(FailReason::Auth(AuthError::WrongMethod { got: 2, .. }))
        ),
        "{:?}",
        b.failed()
    );
    no_child(&a, &b);
}

#[test]
fn setup_refuses_a_key_of_another_certificate_and_a_non_ca() {
    let ca = Ca::new("polytun CA", Alg::P256);
    let la = leaf(&ca, "moon", Alg::P256, A_IP, valid());
    let lb = leaf(&ca, "sun", Alg::P256, B_IP, valid());
    let e = PubkeyAuth::new(
        lb.key.clone(),
        vec![la.cert.clone()],
        vec![ca.der()],
        clock(),
    );
    assert!(
        matches!(e, Err(auth::SetupError::KeyMismatch { .. })),
        "{e:?}"
    );
    let e = PubkeyAuth::new(
        la.key.clone(),
        vec![la.cert.clone()],
        vec![lb.cert.clone()],
        clock(),
    );
    assert!(matches!(e, Err(auth::SetupError::NotCa { .. })), "{e:?}");
}

#[test]
fn legacy_ecdsa_methods_without_rfc7427() {
    let ca = Ca::new("polytun CA", Alg::P256);
    for (alg, method) in [(Alg::P256, 9u8), (Alg::P384, 10)] {
        let la = leaf(&ca, "moon", alg, A_IP, valid());
        let p = pubkey(&la, &[], &[ca.der()]);
        let octets = b"signed octets".to_vec();
        let (m, data) = auth::sign(&p, &octets, None).unwrap();
        assert_eq!(m, method);
        let id = la.cert.subject_identity();
        auth::verify(&p, &id, m, &data, &octets, &[la.cert.der()]).unwrap();
        let e = auth::verify(&p, &id, m, &data, b"other octets", &[la.cert.der()]);
        assert!(matches!(e, Err(AuthError::BadSignature { .. })), "{e:?}");
    }
    // RSA and Ed25519 need RFC 7427
    let la = leaf(&ca, "moon", Alg::Ed25519, A_IP, valid());
    let p = pubkey(&la, &[], &[ca.der()]);
    assert_eq!(
        auth::sign(&p, b"x", Some(&[2])).unwrap_err(),
        AuthError::NoCommonHash(KeyKind::Ed25519)
    );
}

#[test]
fn private_keys_in_every_pem_form() {
    let p8 = PrivateKey::from_pem_or_der(fixture("rsa2048-pkcs8.pem").as_bytes()).unwrap();
    let p1 = PrivateKey::from_pem_or_der(fixture("rsa2048-pkcs1.pem").as_bytes()).unwrap();
    assert_eq!(p8.kind(), KeyKind::Rsa(2048));
    assert_eq!(p8.public_key(), p1.public_key());
    // `openssl ecparam -genkey`: EC PARAMETERS block, then SEC1
    let ec = PrivateKey::from_pem_or_der(fixture("p256-sec1.pem").as_bytes()).unwrap();
    assert_eq!(ec.kind(), KeyKind::EcdsaP256);
    let ec = PrivateKey::from_pem_or_der(fixture("p384-sec1-noparams.pem").as_bytes()).unwrap();
    assert_eq!(ec.kind(), KeyKind::EcdsaP384);
    // openssl's Ed25519 PKCS#8 v1 carries no public key
    let ed = PrivateKey::from_pem_or_der(fixture("ed25519-pkcs8.pem").as_bytes()).unwrap();
    assert_eq!(ed.kind(), KeyKind::Ed25519);
    assert_eq!(ed.public_key().len(), 32);
    assert!(PrivateKey::from_pem_or_der(
        b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
    )
    .is_err());
    assert!(PrivateKey::from_pem_or_der(b"garbage").is_err());
    // debug output never shows the key
    assert!(!format!("{p8:?}").contains("MII"));
}
