//! Issue 4, identity validation (RFC 8922 IV) against the real OpenVPN 2.6
//! server: `remote-cert-tls server` and `verify-x509-name` accept the right
//! server; a wrong CA, a wrong peer-fingerprint and a wrong
//! verify-x509-name each fail the handshake with a log line naming the
//! reason, while a correctly configured client on the same server keeps
//! working; `peer-fingerprint` with self-signed certificates on both sides
//! works.
use polytun_e2e::openvpn::{self as ovpn, Client, KeyMode, Pki, Proto};
use polytun_e2e::{bins, ping, veth_pair, wait_ping, wait_until, Netns};
use std::path::Path;
use std::time::Duration;

fn setup(test: &str) -> (Netns, Netns, Pki) {
    let s = Netns::new(&format!("{test}s"));
    let c = Netns::new(&format!("{test}c"));
    let _ = veth_pair(&s, &c);
    let pki = Pki::new(&s);
    (s, c, pki)
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let o = std::process::Command::new(bins::tool("openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A self-signed ECDSA P-256 certificate `NAME.crt` / `NAME.key` in `dir`;
/// returns its SHA-256 fingerprint as `AB:CD:...`.
fn self_signed(dir: &Path, name: &str) -> String {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "2",
        ],
    );
    let out = openssl(
        dir,
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            &format!("{name}.crt"),
        ],
    );
    out.trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .to_string()
}

fn tunnel(pki: &Pki) -> String {
    ovpn::client_tunnel_toml(
        pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        &["AES-256-GCM"],
        &pki.path("ta.key"),
    )
}

/// Waits for polytund's handshake failure and returns that log line.
fn failure_line(client: &Client<'_>) -> String {
    wait_until(
        "polytund to report the failed handshake",
        Duration::from_secs(30),
        || client.log().contains("OpenVPN handshake failed"),
    );
    client
        .log()
        .lines()
        .find(|l| l.contains("OpenVPN handshake failed"))
        .unwrap()
        .to_string()
}

#[test]
fn openvpn_wrong_ca_fingerprint_or_x509_name_fail_cleanly() {
    let (s, c, pki) = setup("ovid");
    let server = ovpn::start_server(
        &s,
        &ovpn::server_conf(
            &pki,
            "192.0.2.1",
            Proto::Udp,
            KeyMode::TlsCrypt,
            "AES-256-GCM",
        ),
    );
    // The correct client checks the server as strictly as it can.
    let good = Client::start(
        &c,
        &(tunnel(&pki)
            + "remote_cert_tls = \"server\"\nverify_x509_name = \"CN=server\"\n\
               verify_x509_type = \"subject\"\n"),
    );
    good.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    let since = good.session()["connected_since_unix"].clone();

    // A CA that did not issue the server's certificate.
    self_signed(&pki.dir, "other-ca");
    let wrong_ca = tunnel(&pki).replace(&pki.path("ca.crt"), &pki.path("other-ca.crt"));
    // A fingerprint instead of the CA, but not the server's.
    let wrong_fp = tunnel(&pki).replace(
        &format!("ca = \"{}\"\n", pki.path("ca.crt")),
        &format!("peer_fingerprint = [\"{}\"]\n", ["5A"; 32].join(":")),
    );
    // The right CA, another server name.
    let wrong_name =
        tunnel(&pki) + "verify_x509_name = \"vpn.example\"\nverify_x509_type = \"name\"\n";
    let mut bad = Vec::new();
    for (conf, reason) in [
        (wrong_ca, "not issued by the configured CA"),
        (wrong_fp, "peer-fingerprint"),
        (wrong_name, "verify-x509-name"),
    ] {
        let client = Client::start(&c, &conf);
        let line = failure_line(&client);
        eprintln!("{reason}: {line}");
        assert!(line.contains(reason), "expected `{reason}` in: {line}");
        assert!(line.contains("certificate"), "{line}");
        let sess = client.session();
        assert_ne!(sess["state"], "connected", "{sess}");
        bad.push(client);
    }
    assert!(
        bad[1].log().contains("SHA-256 fingerprint"),
        "the fingerprint seen is named"
    );
    assert!(
        bad[2].log().contains("CN=server"),
        "the subject seen is named"
    );
    // Nothing else disturbed.
    assert_eq!(ping(&c, ovpn::SERVER_TUN, 10), 0.0);
    let sess = good.session();
    assert_eq!(sess["state"], "connected", "{sess}");
    assert_eq!(sess["connected_since_unix"], since, "{sess}");
    for b in &bad {
        b.assert_alive();
    }
    good.assert_alive();
    assert!(s.try_wait(server).is_none(), "openvpn server still running");
}

/// Self-signed certificates on both sides, each pinned by the other's
/// `peer-fingerprint` (OpenVPN 2.6's PKI-less mode).
#[test]
fn openvpn_peer_fingerprint_self_signed() {
    let (s, c, pki) = setup("ovfp");
    let sfp = self_signed(&pki.dir, "fp-server");
    let cfp = self_signed(&pki.dir, "fp-client");
    let conf = format!(
        "dev tun\nproto udp\nlocal 192.0.2.1\nport {}\ntopology subnet\n\
         server 198.51.100.0 255.255.255.0\ncert {}\nkey {}\ndh none\n\
         <peer-fingerprint>\n{cfp}\n</peer-fingerprint>\ntls-crypt {}\n\
         data-ciphers AES-256-GCM\nkeepalive 10 60\nverb 3\n",
        ovpn::PORT,
        pki.path("fp-server.crt"),
        pki.path("fp-server.key"),
        pki.path("ta.key"),
    );
    let server = ovpn::start_server(&s, &conf);
    // Two fingerprints configured (a key rollover), one of them the server's.
    let toml = format!(
        "[[tunnel]]\nname = \"vpn\"\nprotocol = \"openvpn\"\nremote = \"192.0.2.1:{}\"\n\
         proto = \"udp\"\ncert = \"{}\"\nkey = \"{}\"\ntls_crypt = \"{}\"\n\
         peer_fingerprint = [\"{}\", \"{sfp}\"]\n",
        ovpn::PORT,
        pki.path("fp-client.crt"),
        pki.path("fp-client.key"),
        pki.path("ta.key"),
        ["01"; 32].join(":"),
    );
    let client = Client::start(&c, &toml);
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    assert_eq!(ping(&c, ovpn::SERVER_TUN, 10), 0.0);
    assert!(s.try_wait(server).is_none());
}
