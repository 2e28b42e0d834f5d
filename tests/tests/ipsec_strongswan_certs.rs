//! Issue 3: polytund's IPsec with X.509 certificates (RFC 7427 signature
//! authentication, CERT/CERTREQ, DN identities) against strongSwan 5.9 with
//! kernel-libipsec, each side initiating; ECDSA P-256 with ESP AES-GCM-256
//! and ChaCha20-Poly1305 (ping + 50 MB checksummed transfer), RSA and
//! Ed25519; a certificate from the wrong CA refused with a clear log line;
//! the example cert configs polytun ↔ polytun; config errors naming
//! file:line:field. Certificates are made at test time with `openssl`.
use polytun_e2e::ipsec::{
    gen_psk, CertFiles, Charon, IpsecSide, KeyType, Pki, PolytunIpsec, SideAuth,
};
use polytun_e2e::{ping, unique_ifname, veth_pair, wait_ping, wait_until, xfer, Netns, XFER_BYTES};
use std::time::{Duration, Instant};

const IN_A: &str = "198.51.100.1";
const IN_B: &str = "198.51.100.2";
const A_ADDR: &str = "192.0.2.1";
const B_ADDR: &str = "192.0.2.2";

/// Sides with DN identities (`CN=moon` is A, `CN=sun` is B).
fn sides(esp: &str, a_initiates: bool) -> (IpsecSide, IpsecSide) {
    let a = IpsecSide {
        local_addr: A_ADDR.into(),
        remote_addr: B_ADDR.into(),
        local_id: Pki::dn("moon"),
        remote_id: Pki::dn("sun"),
        psk_b64: gen_psk(),
        ike_proposal: "aes256gcm16-prfsha256-x25519".into(),
        esp_proposals: vec![esp.into()],
        local_ts: format!("{IN_A}/32"),
        remote_ts: format!("{IN_B}/32"),
        initiate: a_initiates,
        child_rekey_secs: None,
        ..Default::default()
    };
    let b = a.mirrored();
    (a, b)
}

/// A CA and the two sides' certificates under it.
fn pki(ns: &Netns, kind: KeyType) -> (CertFiles, CertFiles) {
    let ca = Pki::new(ns.dir(), "polytun CA", kind);
    let a = ca.issue("moon", &["DNS:moon.pt.test", &format!("IP:{A_ADDR}")], kind);
    let b = ca.issue("sun", &["DNS:sun.pt.test", &format!("IP:{B_ADDR}")], kind);
    (a, b)
}

fn wait_child(p: &PolytunIpsec<'_>, c: &Charon<'_>) {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(30);
    loop {
        if p.ike_sas().iter().any(|s| {
            s["state"] == "ESTABLISHED" && !s["children"].as_array().is_none_or(|c| c.is_empty())
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no IKE SA with certificates at polytun after 30 s\npolytund log:\n{}\ncharon log:\n{}",
            p.log(),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pings both ways and a checksummed transfer A → B of `bytes`.
fn traffic(a: &Netns, b: &Netns, bytes: u64) {
    wait_ping(a, IN_B, Duration::from_secs(20));
    let loss = ping(a, IN_B, 10);
    assert_eq!(loss, 0.0, "ping {IN_B} from A lost {loss}%");
    let loss = ping(b, IN_A, 10);
    assert_eq!(loss, 0.0, "ping {IN_A} from B lost {loss}%");
    let t = Instant::now();
    xfer(b, a, IN_B, 5201, bytes);
    eprintln!("{} MB A -> B through ESP in {:?}", bytes >> 20, t.elapsed());
}

/// polytun (A) ↔ strongSwan (B) with certificates of `kind`.
fn strongswan_cert_pair(
    test: &str,
    kind: KeyType,
    esp: &str,
    polytun_initiates: bool,
    want_esp: &str,
    bytes: u64,
) {
    let a = Netns::new(test);
    let b = Netns::new(test);
    let (_va, _vb) = veth_pair(&a, &b);
    let (sa, sb) = sides(esp, polytun_initiates);
    let (ca, cb) = pki(&a, kind);
    let iface = unique_ifname("ptcr");
    let t0 = Instant::now();
    let toml = polytun_e2e::ipsec::polytun_toml_with(&iface, &sa, &SideAuth::Cert(ca));
    let (p, c) = if polytun_initiates {
        let c = Charon::start_with(&b, &sb, &SideAuth::Cert(cb));
        let p = PolytunIpsec::start_toml(&a, &iface, &toml);
        (p, c)
    } else {
        let p = PolytunIpsec::start_toml(&a, &iface, &toml);
        let c = Charon::start_with(&b, &sb, &SideAuth::Cert(cb));
        c.initiate();
        (p, c)
    };
    wait_child(&p, &c);
    eprintln!(
        "tunnel with {kind:?} certificates up after {:?}",
        t0.elapsed()
    );
    traffic(&a, &b, bytes);
    // polytun: the peer's identity is its certificate's DN, auth is pubkey
    let sas = p.ike_sas();
    let sa = sas
        .iter()
        .find(|s| s["state"] == "ESTABLISHED")
        .expect("established IKE SA");
    assert_eq!(sa["remote_id"], Pki::dn("sun"), "{sa}");
    assert_eq!(sa["local_id"], Pki::dn("moon"), "{sa}");
    assert!(
        sa["auth"].as_str().is_some_and(|a| a.starts_with("pubkey")),
        "{sa}"
    );
    assert_eq!(sa["children"][0]["transform"], want_esp, "{sa}");
    let (rx, tx) = p.child_bytes();
    assert!(
        tx > bytes && rx > 0,
        "CHILD SA byte counters rx={rx} tx={tx} do not show the transfer"
    );
    // strongSwan: authenticated by our certificate with an RFC 7427 signature
    let list = c.list_sas();
    assert!(
        list.contains("ESTABLISHED") && list.contains("INSTALLED"),
        "strongSwan: {list}"
    );
    assert!(
        list.contains("CN=moon"),
        "strongSwan should name polytun by its certificate's DN:\n{list}"
    );
    assert_eq!(
        c.child_alg().as_deref(),
        Some(want_esp),
        "strongSwan: {list}"
    );
    let log = c.log();
    assert!(
        log.contains("authentication of 'C=CH, O=polytun, CN=moon' with RFC 7427 signature scheme successful")
            || log.contains("authentication of 'C=CH, O=polytun, CN=moon' with") && log.contains("successful"),
        "strongSwan log has no successful authentication of polytun:\n{log}"
    );
    eprintln!("polytun show:\n{}", p.show_text());
}

#[test]
fn polytun_initiates_strongswan_cert_ecdsa_aes_gcm() {
    strongswan_cert_pair(
        "sscea",
        KeyType::EcdsaP256,
        "aes256gcm16",
        true,
        "AES_GCM_16-256",
        XFER_BYTES,
    );
}

#[test]
fn strongswan_initiates_polytun_cert_ecdsa_aes_gcm() {
    strongswan_cert_pair(
        "ssceb",
        KeyType::EcdsaP256,
        "aes256gcm16",
        false,
        "AES_GCM_16-256",
        XFER_BYTES,
    );
}

#[test]
fn polytun_initiates_strongswan_cert_ecdsa_chacha20() {
    strongswan_cert_pair(
        "sscca",
        KeyType::EcdsaP256,
        "chacha20poly1305",
        true,
        "CHACHA20_POLY1305",
        XFER_BYTES,
    );
}

#[test]
fn strongswan_initiates_polytun_cert_ecdsa_chacha20() {
    strongswan_cert_pair(
        "ssccb",
        KeyType::EcdsaP256,
        "chacha20poly1305",
        false,
        "CHACHA20_POLY1305",
        XFER_BYTES,
    );
}

#[test]
fn polytun_initiates_strongswan_cert_rsa() {
    strongswan_cert_pair(
        "sscra",
        KeyType::Rsa2048,
        "aes256gcm16",
        true,
        "AES_GCM_16-256",
        5 << 20,
    );
}

#[test]
fn strongswan_initiates_polytun_cert_rsa() {
    strongswan_cert_pair(
        "sscrb",
        KeyType::Rsa2048,
        "aes256gcm16",
        false,
        "AES_GCM_16-256",
        5 << 20,
    );
}

#[test]
fn polytun_initiates_strongswan_cert_ed25519() {
    strongswan_cert_pair(
        "sscda",
        KeyType::Ed25519,
        "aes256gcm16",
        true,
        "AES_GCM_16-256",
        5 << 20,
    );
}

#[test]
fn strongswan_initiates_polytun_cert_ed25519() {
    strongswan_cert_pair(
        "sscdb",
        KeyType::Ed25519,
        "aes256gcm16",
        false,
        "AES_GCM_16-256",
        5 << 20,
    );
}

/// strongSwan presents a certificate from a CA polytun does not trust:
/// polytun refuses it, answers AUTHENTICATION_FAILED, logs why, and no SA
/// comes up on either side.
#[test]
fn strongswan_cert_from_wrong_ca_refused_by_polytun() {
    let a = Netns::new("sscw");
    let b = Netns::new("sscw");
    let (_va, _vb) = veth_pair(&a, &b);
    let (sa, sb) = sides("aes256gcm16", false);
    let good = Pki::new(a.dir(), "polytun CA", KeyType::EcdsaP256);
    let rogue = Pki::new(b.dir(), "rogue CA", KeyType::EcdsaP256);
    let ca = good.issue("moon", &[], KeyType::EcdsaP256);
    let mut cb = rogue.issue("sun", &[], KeyType::EcdsaP256);
    // strongSwan trusts both, so only polytun's check can stop it
    cb.ca.push(good.ca_cert.clone());
    let iface = unique_ifname("ptcw");
    let toml = polytun_e2e::ipsec::polytun_toml_with(&iface, &sa, &SideAuth::Cert(ca));
    let p = PolytunIpsec::start_toml(&a, &iface, &toml);
    let c = Charon::start_with(&b, &sb, &SideAuth::Cert(cb));
    let o = c.swanctl(&["--initiate", "--child", "net", "--timeout", "20"]);
    assert!(!o.ok(), "strongSwan's initiate should fail:\n{}", o.stdout);
    let want = "is issued by `C=CH, O=polytun, CN=rogue CA`, which is neither a configured CA";
    wait_until(
        "polytun to log the refused certificate",
        Duration::from_secs(10),
        || p.log().contains(want),
    );
    let log = p.log();
    let line = log.lines().find(|l| l.contains(want)).unwrap_or_default();
    assert!(
        line.contains("authentication failed") && line.contains("C=CH, O=polytun, CN=sun"),
        "the log line should say what failed and for whom: {line}"
    );
    eprintln!("polytund: {line}");
    assert!(
        c.log().contains("AUTHENTICATION_FAILED"),
        "strongSwan should have received AUTHENTICATION_FAILED:\n{}",
        c.log()
    );
    assert!(
        p.ike_sas().iter().all(|s| s["state"] != "ESTABLISHED"),
        "{:?}",
        p.ike_sas()
    );
    assert!(!c.list_sas().contains("ESTABLISHED"), "{}", c.list_sas());
    let loss = ping(&a, IN_B, 2);
    assert_eq!(loss, 100.0, "no tunnel may carry traffic");
}

/// polytun ↔ polytun over namespaces with the example configs
/// `configs/ipsec-cert-site-{a,b}.toml`: their certificate paths point at
/// certificates made here, interface names are made unique.
#[test]
fn ipsec_polytun_polytun_cert_example_configs() {
    let root = polytun_e2e::bins::workspace_root();
    let a = Netns::new("ipc");
    let b = Netns::new("ipc");
    let (_va, _vb) = veth_pair(&a, &b);
    let ca = Pki::new(a.dir(), "polytun CA", KeyType::EcdsaP256);
    let fa = ca.issue("moon", &["DNS:moon.pt.test"], KeyType::EcdsaP256);
    let fb = ca.issue("sun", &["DNS:sun.pt.test"], KeyType::EcdsaP256);
    let load = |f: &str, iface: &str, files: &CertFiles| {
        let text = std::fs::read_to_string(root.join("configs").join(f))
            .unwrap_or_else(|e| panic!("configs/{f}: {e}"));
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = \""))
            .and_then(|r| r.split('"').next())
            .expect("name line")
            .to_string();
        let mut out = String::new();
        for l in text.lines() {
            let t = l.trim_start();
            let l = if t.starts_with("cert = ") {
                format!("cert = \"{}\"", files.cert.display())
            } else if t.starts_with("key = ") {
                format!("key = \"{}\"", files.key.display())
            } else if t.starts_with("ca = ") {
                format!("ca = [\"{}\"]", files.ca[0].display())
            } else {
                l.replace(&format!("\"{name}\""), &format!("\"{iface}\""))
            };
            out.push_str(&l);
            out.push('\n');
        }
        out
    };
    let ia = unique_ifname("ica");
    let ib = unique_ifname("icb");
    let cb = load("ipsec-cert-site-b.toml", &ib, &fb);
    let cfg_a = load("ipsec-cert-site-a.toml", &ia, &fa);
    a.ip(&["addr", "add", "203.0.113.1/25", "dev", "lo"]);
    b.ip(&["addr", "add", "203.0.113.129/25", "dev", "lo"]);
    let pb = PolytunIpsec::start_toml(&b, &ib, &cb);
    let pa = PolytunIpsec::start_toml(&a, &ia, &cfg_a);
    wait_ping(&a, IN_B, Duration::from_secs(20));
    traffic(&a, &b, 5 << 20);
    let loss = ping(&a, "203.0.113.129", 5);
    assert_eq!(loss, 0.0, "LAN B from A lost {loss}%");
    let sa = pa.ike_sas();
    assert_eq!(sa[0]["remote_id"], Pki::dn("sun"), "{sa:?}");
    let sb = pb.ike_sas();
    assert_eq!(sb[0]["remote_id"], Pki::dn("moon"), "{sb:?}");
    let text = pa.show_text();
    assert!(
        text.contains("authentication: pubkey (ECDSA P-256)"),
        "{text}"
    );
    eprintln!("{text}");
}

/// Bad certificate settings stop polytund with `FILE:LINE: FIELD: problem`.
#[test]
fn ipsec_cert_config_errors() {
    let ns = Netns::new("icfg");
    let ca = Pki::new(ns.dir(), "polytun CA", KeyType::EcdsaP256);
    let moon = ca.issue("moon", &["DNS:moon.pt.test"], KeyType::EcdsaP256);
    let sun = ca.issue("sun", &[], KeyType::EcdsaP256);
    let (sa, _) = sides("aes256gcm16", true);
    let good = polytun_e2e::ipsec::polytun_toml_with("ptcfg0", &sa, &SideAuth::Cert(moon.clone()));
    let line_of = |text: &str, key: &str| {
        text.lines()
            .position(|l| l.starts_with(key))
            .map(|i| i + 1)
            .expect("key line")
    };
    let cases: Vec<(String, &str, Vec<String>)> = vec![
        (
            good.replace(
                &moon.key.display().to_string(),
                &sun.key.display().to_string(),
            ),
            "key = ",
            vec![
                "tunnel[0].key".into(),
                "does not belong to the certificate".into(),
                "CN=moon".into(),
            ],
        ),
        (
            good.replace(&moon.cert.display().to_string(), "/nonexistent/cert.pem"),
            "cert = ",
            vec![
                "tunnel[0].cert".into(),
                "cannot read /nonexistent/cert.pem".into(),
            ],
        ),
        (
            good.replace(
                &moon.ca[0].display().to_string(),
                &moon.cert.display().to_string(),
            ),
            "ca = ",
            vec!["tunnel[0].ca".into(), "is not a CA certificate".into()],
        ),
        (
            good.replace(
                "local_id = \"C=CH, O=polytun, CN=moon\"",
                "local_id = \"@mars.pt.test\"",
            ),
            "local_id = ",
            vec![
                "tunnel[0].local_id".into(),
                "is not in the certificate".into(),
            ],
        ),
        (
            good.replace(
                "remote_id = \"C=CH, O=polytun, CN=sun\"",
                "remote_id = \"C=CH, X=1\"",
            ),
            "remote_id = ",
            vec![
                "tunnel[0].remote_id".into(),
                "unknown DN attribute `X`".into(),
            ],
        ),
        (
            good.replace("auth = \"pubkey\"", "auth = \"psk\""),
            "cert = ",
            vec!["tunnel[0].cert".into(), "auth = \\\"pubkey\\\"".into()],
        ),
    ];
    for (i, (text, key, must)) in cases.iter().enumerate() {
        let line = line_of(text, key);
        let path = ns.write_file(&format!("bad{i}.toml"), text);
        let d = polytun_e2e::bins::polytund();
        let o = ns.run(&[
            d.to_str().unwrap(),
            "--config",
            path.to_str().unwrap(),
            "--check",
        ]);
        let err = format!("{}{}", o.stdout, o.stderr);
        assert!(!o.ok(), "case {i} should fail:\n{text}");
        let loc = format!("{}:{line}:", path.display());
        assert!(err.contains(&loc), "case {i}: `{loc}` missing in: {err}");
        for m in must {
            let m = m.replace("\\\"", "\"");
            assert!(err.contains(&m), "case {i}: `{m}` missing in: {err}");
        }
    }
}
