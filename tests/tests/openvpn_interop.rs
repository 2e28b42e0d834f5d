//! Issue 4: polytund as an OpenVPN client against the real OpenVPN 2.6
//! server, in network namespaces: UDP and TCP, tls-crypt and tls-auth, the
//! three data ciphers; ping, a 50 MB checksummed TCP transfer, pushed route
//! and DNS applied and shown; a wrong tls-crypt key fails cleanly.
use polytun_e2e::openvpn::{self as ovpn, Client, KeyMode, Pki, Proto};
use polytun_e2e::{ping, veth_pair, wait_ping, xfer, Netns, XFER_BYTES};
use std::time::{Duration, Instant};

/// Server in `s`, polytun client in `c`, connected over a veth pair.
fn setup(test: &str) -> (Netns, Netns, Pki) {
    let s = Netns::new(&format!("{test}s"));
    let c = Netns::new(&format!("{test}c"));
    let _ = veth_pair(&s, &c);
    let pki = Pki::new(&s);
    (s, c, pki)
}

fn session_test(test: &str, proto: Proto, mode: KeyMode, cipher: &str) {
    let t0 = Instant::now();
    let (s, c, pki) = setup(test);
    let server = ovpn::start_server(
        &s,
        &ovpn::server_conf(&pki, "192.0.2.1", proto, mode, cipher),
    );
    // The client offers all three; the server's data-ciphers picks.
    let tunnel = ovpn::client_tunnel_toml(
        &pki,
        "192.0.2.1",
        proto,
        mode,
        &["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"],
        &pki.path("ta.key"),
    );
    let client = Client::start(&c, &tunnel);
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    assert_eq!(
        ping(&c, ovpn::SERVER_TUN, 10),
        0.0,
        "ping loss through the tunnel"
    );
    // pushed route: in the client's routing table, and it leads to the server
    let routes = c.run_ok(&["ip", "route", "show", "dev", &client.iface]);
    assert!(
        routes.contains(ovpn::PUSHED_NET),
        "pushed route {} missing from {}: {routes}",
        ovpn::PUSHED_NET,
        client.iface
    );
    assert_eq!(
        ping(&c, ovpn::PUSHED_HOST, 5),
        0.0,
        "ping over the pushed route"
    );
    let sess = client.session();
    assert_eq!(sess["cipher"], cipher, "{sess}");
    assert_eq!(
        sess["virtual_address"],
        format!("{}/24", ovpn::CLIENT_TUN),
        "{sess}"
    );
    assert_eq!(sess["dns"][0], ovpn::PUSHED_DNS, "pushed DNS: {sess}");
    assert!(sess["peer_id"].is_u64(), "{sess}");
    assert_eq!(sess["key_id"], 0, "{sess}");
    assert!(
        client
            .log()
            .contains(&format!("DNS [{}]", ovpn::PUSHED_DNS)),
        "pushed DNS logged"
    );
    xfer(&s, &c, ovpn::SERVER_TUN, 5201, XFER_BYTES);
    let sess = client.session();
    assert!(sess["tx_bytes"].as_u64().unwrap() >= XFER_BYTES, "{sess}");
    let text = client.show_text();
    assert!(
        text.contains(&format!("cipher: {cipher}, key-id 0")),
        "{text}"
    );
    assert!(text.contains("peer-id:"), "{text}");
    let drops = &client.try_show().unwrap()["tunnels"][0]["drops"];
    assert_eq!(drops["bad_mac"], 0, "{drops}");
    assert_eq!(drops["malformed"], 0, "{drops}");
    assert!(s.try_wait(server).is_none(), "openvpn server still running");
    eprintln!("{text}");
    for l in client.log().lines().filter(|l| l.contains("tunnel vpn")) {
        eprintln!("polytund: {l}");
    }
    eprintln!("{test}: passed in {:?}", t0.elapsed());
}

macro_rules! matrix {
    ($($name:ident: $short:literal, $proto:ident, $mode:ident, $cipher:literal;)*) => {$(
        #[test]
        fn $name() {
            session_test($short, Proto::$proto, KeyMode::$mode, $cipher);
        }
    )*};
}

matrix! {
    openvpn_udp_tls_crypt_aes256gcm:         "ovu1", Udp, TlsCrypt, "AES-256-GCM";
    openvpn_udp_tls_auth_aes256gcm:          "ovu2", Udp, TlsAuth,  "AES-256-GCM";
    openvpn_udp_tls_crypt_chacha20poly1305:  "ovu3", Udp, TlsCrypt, "CHACHA20-POLY1305";
    openvpn_udp_tls_auth_aes128gcm:          "ovu4", Udp, TlsAuth,  "AES-128-GCM";
    openvpn_tcp_tls_crypt_aes256gcm:         "ovt1", Tcp, TlsCrypt, "AES-256-GCM";
    openvpn_tcp_tls_auth_chacha20poly1305:   "ovt2", Tcp, TlsAuth,  "CHACHA20-POLY1305";
}

/// IPv6 inside the tunnel: the server has `server-ipv6` and pushes
/// `ifconfig-ipv6` and a `route-ipv6`; polytund puts the address and the
/// route on its TUN and carries IPv6 both ways (ping, a checksummed TCP
/// transfer), IPv4 alongside.
fn ipv6_inside_test(test: &str, proto: Proto) {
    const SERVER_TUN6: &str = "2001:db8:1::1";
    const CLIENT_TUN6: &str = "2001:db8:1::1000";
    const PUSHED_NET6: &str = "2001:db8:77::/64";
    const PUSHED_HOST6: &str = "2001:db8:77::1";
    let (s, c, pki) = setup(test);
    let conf = ovpn::server_conf(&pki, "192.0.2.1", proto, KeyMode::TlsCrypt, "AES-256-GCM")
        + "server-ipv6 2001:db8:1::/64\npush \"route-ipv6 2001:db8:77::/64\"\n";
    s.ip(&[
        "-6",
        "addr",
        "replace",
        &format!("{PUSHED_HOST6}/128"),
        "dev",
        "lo",
    ]);
    let server = ovpn::start_server(&s, &conf);
    let tunnel = ovpn::client_tunnel_toml(
        &pki,
        "192.0.2.1",
        proto,
        KeyMode::TlsCrypt,
        &["AES-256-GCM"],
        &pki.path("ta.key"),
    );
    let client = Client::start(&c, &tunnel);
    client.wait_connected(Duration::from_secs(30));
    let addrs = c.run_ok(&["ip", "-6", "addr", "show", "dev", &client.iface]);
    assert!(
        addrs.contains(&format!("{CLIENT_TUN6}/64")),
        "pushed ifconfig-ipv6 not on {}: {addrs}",
        client.iface
    );
    let routes = c.run_ok(&["ip", "-6", "route", "show", "dev", &client.iface]);
    assert!(
        routes.contains(PUSHED_NET6),
        "pushed route-ipv6 {PUSHED_NET6} missing from {}: {routes}",
        client.iface
    );
    wait_ping(&c, SERVER_TUN6, Duration::from_secs(10));
    assert_eq!(ping(&c, SERVER_TUN6, 10), 0.0, "IPv6 ping loss");
    assert_eq!(ping(&c, PUSHED_HOST6, 5), 0.0, "ping over the route-ipv6");
    assert_eq!(ping(&c, ovpn::SERVER_TUN, 5), 0.0, "IPv4 alongside");
    let sess = client.session();
    assert_eq!(
        sess["virtual_address_ipv6"],
        format!("{CLIENT_TUN6}/64"),
        "{sess}"
    );
    let text = client.show_text();
    assert!(
        text.contains(&format!(
            "virtual address: {}/24, {CLIENT_TUN6}/64",
            ovpn::CLIENT_TUN
        )),
        "{text}"
    );
    assert!(
        client.log().contains(&format!("IPv6 {CLIENT_TUN6}/64")),
        "connected line names the IPv6 address"
    );
    // both directions: the server's side sends too (pt-xfer serves on the client)
    xfer(&s, &c, SERVER_TUN6, 5201, XFER_BYTES);
    xfer(&c, &s, CLIENT_TUN6, 5202, XFER_BYTES / 5);
    let drops = &client.try_show().unwrap()["tunnels"][0]["drops"];
    assert_eq!(drops["malformed"], 0, "{drops}");
    assert_eq!(drops["bad_mac"], 0, "{drops}");
    assert!(
        !client.log().contains("not applied"),
        "every pushed option applied:\n{}",
        client.log()
    );
    assert!(s.try_wait(server).is_none(), "openvpn server still running");
}

#[test]
fn openvpn_udp_ipv6_inside_the_tunnel() {
    ipv6_inside_test("ov6u", Proto::Udp);
}

#[test]
fn openvpn_tcp_ipv6_inside_the_tunnel() {
    ipv6_inside_test("ov6t", Proto::Tcp);
}

/// auth-user-pass: the server checks a username and password with a script
/// (`auth-user-pass-verify ... via-file`) and asks for no client
/// certificate it needs (`verify-client-cert optional`). polytund sends them
/// from a file, here without a certificate at all; a wrong password is
/// refused with a clear line, and the failing client keeps retrying without
/// disturbing the good one.
#[test]
fn openvpn_auth_user_pass() {
    use std::os::unix::fs::PermissionsExt;
    let (s, c, pki) = setup("ovap");
    let script = s.write_file(
        "check-user.sh",
        "#!/bin/sh\n[ \"$(sed -n 1p \"$1\")\" = alice ] && [ \"$(sed -n 2p \"$1\")\" = 'open sesame' ]\n",
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = ovpn::server_conf(
        &pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        "AES-256-GCM",
    ) + &format!(
        "script-security 2\nauth-user-pass-verify {} via-file\nverify-client-cert optional\n",
        script.display()
    );
    let server = ovpn::start_server(&s, &conf);
    let base = ovpn::client_tunnel_toml(
        &pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        &["AES-256-GCM"],
        &pki.path("ta.key"),
    );
    let good_file = c.write_file("good.pass", "alice\nopen sesame\n");
    let no_cert: String = base
        .lines()
        .filter(|l| !l.starts_with("cert = ") && !l.starts_with("key = "))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &format!("auth_user_pass = \"{}\"\n", good_file.display());
    let good = Client::start(&c, &no_cert);
    good.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    assert_eq!(
        ping(&c, ovpn::SERVER_TUN, 5),
        0.0,
        "ping loss through the tunnel"
    );
    assert!(
        s.log_of(server).contains("alice"),
        "the server saw the username:\n{}",
        s.log_of(server)
    );
    // A renegotiation sends them again, and the server checks them again.
    let checks = |log: String| log.matches("alice").count();
    let before = checks(s.log_of(server));
    let cli = polytun_e2e::bins::polytun();
    c.run_ok(&[cli.to_str().unwrap(), "-i", &good.iface, "rekey"]);
    assert_eq!(
        ping(&c, ovpn::SERVER_TUN, 10),
        0.0,
        "ping through the renegotiation"
    );
    polytun_e2e::wait_until(
        "the renegotiated key to carry the traffic",
        Duration::from_secs(30),
        || good.session()["key_id"] == 1,
    );
    assert!(
        checks(s.log_of(server)) > before,
        "the server saw the username again"
    );
    // a certificate, but the wrong password
    let bad_file = c.write_file("bad.pass", "alice\nwrong\n");
    let bad = Client::start(
        &c,
        &format!(
            "{base}auth_user_pass = \"{}\"\nhand_window = 10\n",
            bad_file.display()
        ),
    );
    polytun_e2e::wait_until(
        "polytund to report the refused password",
        Duration::from_secs(30),
        || bad.log().contains("refused the authentication"),
    );
    let line = bad
        .log()
        .lines()
        .find(|l| l.contains("refused the authentication"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("AUTH_FAILED") && line.contains("auth_user_pass"),
        "{line}"
    );
    assert!(
        !line.contains("open sesame") && !line.contains("wrong"),
        "no password in the log: {line}"
    );
    bad.assert_alive();
    assert_ne!(bad.session()["state"], "connected");
    assert_eq!(
        ping(&c, ovpn::SERVER_TUN, 3),
        0.0,
        "the good client is undisturbed"
    );
}

/// An openvpn 2.6 server (`auth-gen-token` and `extra`) whose check
/// takes user alice's password 123456 under `rule` (shell, `$u` the file
/// that governs it, e.g. "[ -e $u ] && exit 1" and a `touch $u` after),
/// and a polytun client with that password: (server, client, `$u`).
fn otp_pair<'a>(
    s: &'a Netns,
    c: &'a Netns,
    pki: &Pki,
    rule: (&str, &str),
    extra: &str,
) -> (u32, Client<'a>, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let u = s.dir().join("otp-state");
    let (before, after) = rule;
    let script = s.write_file(
        "check-otp.sh",
        &format!(
            "#!/bin/sh\nu={u}\n{before}\n[ \"$(sed -n 1p \"$1\")\" = alice ] && \
             [ \"$(sed -n 2p \"$1\")\" = 123456 ] && {after}\n",
            u = u.display()
        ),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = ovpn::server_conf(
        pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        "AES-256-GCM",
    ) + &format!(
        "script-security 2\nauth-user-pass-verify {} via-file\n{extra}",
        script.display()
    );
    let server = ovpn::start_server(s, &conf);
    let otp = c.write_file("otp.pass", "alice\n123456\n");
    let tunnel = ovpn::client_tunnel_toml(
        pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        &["AES-256-GCM"],
        &pki.path("ta.key"),
    ) + &format!("auth_user_pass = \"{}\"\n", otp.display());
    let client = Client::start(c, &tunnel);
    client.wait_connected(Duration::from_secs(30));
    (server, client, u)
}

/// A one-time password and the server's auth-token (`auth-gen-token`, valid
/// for two renewal periods of 60 s): the server's check accepts the
/// password once, so its two renegotiations succeed only because polytund
/// sends the pushed token in its place. The token never reaches polytund's
/// log (before, the not-applied warning printed it whole).
#[test]
fn openvpn_auth_token_stands_in_for_a_one_time_password() {
    let (s, c, pki) = setup("ovat");
    // the password is taken once: then `$u` exists
    let (server, client, used) = otp_pair(
        &s,
        &c,
        &pki,
        ("[ -e $u ] && exit 1", "touch $u"),
        "auth-gen-token 600 60\nhand-window 3\nreneg-sec 6\n",
    );
    assert!(used.exists(), "the one-time password was used");
    let since = client.session()["connected_since_unix"].clone();
    polytun_e2e::wait_until(
        "two renegotiations with the token",
        Duration::from_secs(40),
        || client.session()["key_id"].as_u64().unwrap_or(0) >= 2,
    );
    assert_eq!(
        ping(&c, ovpn::SERVER_TUN, 5),
        0.0,
        "ping after the renegotiations"
    );
    let sess = client.session();
    assert_eq!(sess["connected_since_unix"], since, "no reconnect: {sess}");
    assert!(
        !client.log().contains("SESS_ID"),
        "the token reached the log:\n{}",
        client.log()
    );
    assert!(!client.log().contains("AUTH_FAILED"), "{}", client.log());
    assert!(s.try_wait(server).is_none());
}

/// The token outlives its session, as with OpenVPN: after a reconnect
/// (its packets to the server blocked until ping-restart) polytund sends
/// the last session's token, so the one-time password is not needed again.
/// A token the server no longer takes (it restarted: a new token secret)
/// makes polytund fall back to the password at once.
#[test]
fn openvpn_auth_token_carries_over_a_reconnect() {
    let (s, c, pki) = setup("ovar");
    // the password is taken once per `$u` file
    std::fs::write(s.dir().join("otp-state"), "").unwrap();
    let (mut server, client, allow) = otp_pair(
        &s,
        &c,
        &pki,
        ("[ -e $u ] || exit 1", "rm $u"),
        "auth-gen-token 600\nkeepalive 1 4\n",
    );
    assert!(!allow.exists(), "the one-time password was used");
    let first = client.session()["connected_since_unix"].clone();
    // silence until the pushed ping-restart (4 s) ends the session
    c.drop_udp_out(1194);
    polytun_e2e::wait_until("ping-restart", Duration::from_secs(15), || {
        client.log().contains("ping-restart")
    });
    c.undrop_udp_out();
    polytun_e2e::wait_until(
        "a new session, by the token",
        Duration::from_secs(30),
        || {
            let s = client.session();
            s["state"] == "connected" && s["connected_since_unix"] != first
        },
    );
    assert_eq!(
        ping(&c, ovpn::SERVER_TUN, 3),
        0.0,
        "ping after the reconnect"
    );
    assert!(!client.log().contains("AUTH_FAILED"), "{}", client.log());

    // a restarted server knows no earlier token: the password again
    s.kill(server);
    std::fs::write(&allow, "").unwrap();
    // (the config start_server wrote)
    let conf = std::fs::read_to_string(s.dir().join("server.conf")).unwrap();
    server = ovpn::start_server(&s, &conf);
    polytun_e2e::wait_until(
        "the fallback to the password",
        Duration::from_secs(40),
        || {
            client.log().contains("refused the auth-token")
                && client.session()["state"] == "connected"
        },
    );
    assert!(!allow.exists(), "the password was sent again");
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    assert!(!client.log().contains("SESS_ID"), "token in the log");
    assert!(s.try_wait(server).is_none());
}

/// configs/openvpn-client.toml + .ovpn, as shipped, with this test's PKI.
#[test]
fn openvpn_ovpn_file_client() {
    let (s, c, pki) = setup("ovf");
    ovpn::start_server(
        &s,
        &ovpn::server_conf(
            &pki,
            "192.0.2.1",
            Proto::Udp,
            KeyMode::TlsCrypt,
            "CHACHA20-POLY1305",
        ),
    );
    let root = polytun_e2e::bins::workspace_root().join("configs");
    let ovpn_text = std::fs::read_to_string(root.join("openvpn-client.ovpn")).unwrap();
    let ta = std::fs::read_to_string(pki.dir.join("ta.key")).unwrap();
    let ovpn_text = ovpn_text.replace(
        "# the server's `openvpn --genkey secret ta.key` goes here\n",
        &ta,
    );
    std::fs::write(pki.dir.join("openvpn-client.ovpn"), ovpn_text).unwrap();
    let toml = std::fs::read_to_string(root.join("openvpn-client.toml")).unwrap();
    let iface = polytun_e2e::unique_ifname("pto");
    let toml = toml.replace("name = \"ptovpn0\"", &format!("name = \"{iface}\""));
    let path = pki.dir.join("openvpn-client.toml");
    std::fs::write(&path, toml).unwrap();
    let client = Client::start_with(&c, iface, path);
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    assert_eq!(ping(&c, ovpn::SERVER_TUN, 10), 0.0);
    assert_eq!(client.session()["cipher"], "CHACHA20-POLY1305");
}

/// A wrong tls-crypt key: the server drops every packet, polytun gives up
/// after its hand-window with a clear log line, keeps retrying, and the
/// server goes on serving a correct client.
#[test]
fn openvpn_wrong_tls_crypt_key_fails_cleanly() {
    let (s, c, pki) = setup("ovw");
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
    let wrong = pki.genkey("wrong.key");
    let mut tunnel = ovpn::client_tunnel_toml(
        &pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        &["AES-256-GCM"],
        &wrong,
    );
    tunnel.push_str("hand_window = 4\n");
    let bad = Client::start(&c, &tunnel);
    polytun_e2e::wait_until(
        "polytund to report the failed handshake",
        Duration::from_secs(20),
        || bad.log().contains("OpenVPN handshake failed"),
    );
    let line = bad
        .log()
        .lines()
        .find(|l| l.contains("OpenVPN handshake failed"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("hand-window") && line.contains("tls-crypt key"),
        "{line}"
    );
    bad.assert_alive();
    let sess = bad.session();
    assert_ne!(sess["state"], "connected", "{sess}");
    assert!(
        sess["last_error"]
            .as_str()
            .unwrap()
            .contains("handshake failed"),
        "{sess}"
    );
    assert!(
        s.log_of(server).contains("tls-crypt unwrapping failed"),
        "the server saw the bad key"
    );
    // Nothing else disturbed: the server serves a correct client (a second
    // polytund next to the failing one), the failing one keeps running.
    let good = Client::start(
        &c,
        &ovpn::client_tunnel_toml(
            &pki,
            "192.0.2.1",
            Proto::Udp,
            KeyMode::TlsCrypt,
            &["AES-256-GCM"],
            &pki.path("ta.key"),
        ),
    );
    good.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    assert_eq!(ping(&c, ovpn::SERVER_TUN, 5), 0.0);
    bad.assert_alive();
    assert!(s.try_wait(server).is_none(), "openvpn server still running");
}

/// Keepalive both ways (an idle session survives the server's short
/// ping-restart; the server's pings are counted, not written to the TUN),
/// then the server restarts: UDP notices by ping-restart, TCP by the closed
/// connection; both reconnect and carry traffic again.
fn reconnect_test(test: &str, proto: Proto) {
    let (s, c, pki) = setup(test);
    let conf = ovpn::server_conf(&pki, "192.0.2.1", proto, KeyMode::TlsCrypt, "AES-256-GCM")
        .replace("keepalive 10 60", "keepalive 1 4");
    let server = ovpn::start_server(&s, &conf);
    let client = Client::start(
        &c,
        &ovpn::client_tunnel_toml(
            &pki,
            "192.0.2.1",
            proto,
            KeyMode::TlsCrypt,
            &["AES-256-GCM"],
            &pki.path("ta.key"),
        ),
    );
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    let since = client.session()["connected_since_unix"].clone();
    // idle for longer than the server's ping-restart (2 x 4 s)
    std::thread::sleep(Duration::from_secs(10));
    let sess = client.session();
    assert_eq!(sess["state"], "connected", "{sess}");
    assert_eq!(
        sess["connected_since_unix"], since,
        "no reconnect while idle: {sess}"
    );
    assert!(sess["pings_received"].as_u64().unwrap() >= 3, "{sess}");
    assert!(
        !s.log_of(server).contains("Inactivity timeout"),
        "the server kept the idle client (our pings)"
    );
    assert_eq!(ping(&c, ovpn::SERVER_TUN, 5), 0.0);
    s.kill(server);
    let server2 = ovpn::start_server(&s, &conf);
    polytun_e2e::wait_until(
        "polytund to notice and reconnect",
        Duration::from_secs(40),
        || {
            let v = client.session();
            v["state"] == "connected" && v["connected_since_unix"] != since
        },
    );
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    assert_eq!(ping(&c, ovpn::SERVER_TUN, 5), 0.0);
    assert!(client.log().contains("reconnecting"), "reason logged");
    client.assert_alive();
    assert!(s.try_wait(server2).is_none());
}

#[test]
fn openvpn_udp_keepalive_and_reconnect() {
    reconnect_test("ovr1", Proto::Udp);
}

#[test]
fn openvpn_tcp_keepalive_and_reconnect() {
    reconnect_test("ovr2", Proto::Tcp);
}

/// polytund stopping over UDP sends explicit-exit-notify: the server drops
/// the client at once (not after its ping-restart).
#[test]
fn openvpn_explicit_exit_notify_drops_client_at_once() {
    let (s, c, pki) = setup("ove");
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
    let client = Client::start(
        &c,
        &ovpn::client_tunnel_toml(
            &pki,
            "192.0.2.1",
            Proto::Udp,
            KeyMode::TlsCrypt,
            &["AES-256-GCM"],
            &pki.path("ta.key"),
        ),
    );
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    let t = Instant::now();
    c.kill(client.pid);
    polytun_e2e::wait_until(
        "the server to drop the client (keepalive would take 60 s)",
        Duration::from_secs(5),
        || s.log_of(server).contains("remote-exit"),
    );
    let log = s.log_of(server);
    let line = log.lines().find(|l| l.contains("remote-exit")).unwrap();
    eprintln!(
        "server dropped the client {:?} after SIGTERM: {line}",
        t.elapsed()
    );
    assert!(client.log().contains("sent explicit-exit-notify (2x)"));
}

/// `ip link set mtu` on the client's interface while connected (polytun starts at 1420; the
/// server's tun-mtu is 1500): the OpenVPN data path lays its outbound arena out again for the new
/// MTU (the first larger packet is dropped, counted, and makes it read the MTU), and 1500-byte
/// packets then reach the openvpn server with DF set, pings and a TCP transfer both ways.
#[test]
fn openvpn_client_follows_mtu_raised_with_ip_link() {
    let s = Netns::new("ovmtus");
    let c = Netns::new("ovmtuc");
    let (vs, vc) = veth_pair(&s, &c);
    s.ip(&["link", "set", &vs.dev, "mtu", "9000"]);
    c.ip(&["link", "set", &vc.dev, "mtu", "9000"]);
    let pki = Pki::new(&s);
    let mode = KeyMode::TlsCrypt;
    let server = ovpn::start_server(
        &s,
        &ovpn::server_conf(&pki, "192.0.2.1", Proto::Udp, mode, "AES-256-GCM"),
    );
    let tunnel = ovpn::client_tunnel_toml(
        &pki,
        "192.0.2.1",
        Proto::Udp,
        mode,
        &["AES-256-GCM"],
        &pki.path("ta.key"),
    );
    let client = Client::start(&c, &tunnel);
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    let link = c.run_ok(&["ip", "link", "show", &client.iface]);
    assert!(
        !link.contains("mtu 1500"),
        "the test needs polytun's interface below MTU 1500 at start:\n{link}"
    );
    c.ip(&["link", "set", &client.iface, "mtu", "1500"]);
    // The first larger packet makes the data path read the MTU (it is dropped, counted).
    let _ = polytun_e2e::ping_df(&c, ovpn::SERVER_TUN, 1500, 1);
    let loss = polytun_e2e::ping_df(&c, ovpn::SERVER_TUN, 1500, 5);
    assert_eq!(
        loss, 0.0,
        "1500-byte pings with DF after raising the MTU to 1500 lost"
    );
    xfer(&s, &c, ovpn::SERVER_TUN, 5201, 20 * 1024 * 1024);
    xfer(&c, &s, ovpn::CLIENT_TUN, 5202, 5 * 1024 * 1024);
    assert!(
        client.log().contains("mtu changed from 1420 to 1500"),
        "the change is logged"
    );
    client.assert_alive();
    assert!(s.try_wait(server).is_none(), "openvpn server still running");
}
