//! Issue 4: polytund as an OpenVPN *server*, with the real OpenVPN 2.6
//! client (and polytund's own client) in network namespaces: UDP and TCP,
//! tls-crypt and tls-auth, the three data ciphers; ping, pushed route, 50 MB
//! checksummed transfers both ways; two clients at once; float; explicit
//! exit notification; the shipped configs/openvpn-server*.toml.
use polytun_e2e::netns::veth_pair_net;
use polytun_e2e::openvpn::{self as ovpn, Client, KeyMode, Pki, Proto};
use polytun_e2e::{ping, veth_pair, wait_ping, wait_until, xfer, Netns, XFER_BYTES};
use serde_json::Value;
use std::time::{Duration, Instant};

const SERVER_TUN: &str = "198.51.100.1";
const ALL: [&str; 3] = ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"];

/// polytun server in `s` (192.0.2.1), clients in `c` (192.0.2.2).
fn setup(test: &str) -> (Netns, Netns, Pki) {
    let s = Netns::new(&format!("{test}s"));
    let c = Netns::new(&format!("{test}c"));
    let _ = veth_pair(&s, &c);
    // the pushed route leads somewhere: an address in it on the server
    s.ip(&[
        "addr",
        "add",
        &format!("{}/32", ovpn::PUSHED_HOST),
        "dev",
        "lo",
    ]);
    let pki = Pki::new(&s);
    (s, c, pki)
}

fn start_server<'a>(s: &'a Netns, pki: &Pki, proto: Proto, mode: KeyMode) -> Client<'a> {
    start_server_on(s, pki, proto, mode, "192.0.2.1")
}

/// `local` "" listens on every address (dual-stack).
fn start_server_on<'a>(
    s: &'a Netns,
    pki: &Pki,
    proto: Proto,
    mode: KeyMode,
    local: &str,
) -> Client<'a> {
    let mut tunnel = ovpn::server_tunnel_toml(pki, local, proto, mode, &ALL);
    if local.is_empty() {
        tunnel = tunnel.replace("local = \"\"\n", "");
    }
    let server = Client::start(s, &tunnel);
    assert!(
        server.log().contains("OpenVPN server on"),
        "{}",
        server.log()
    );
    server
}

/// The server's clients from `polytun show --json`.
fn clients(server: &Client<'_>) -> Vec<Value> {
    server.session()["clients"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_clients(server: &Client<'_>, n: usize) -> Vec<Value> {
    wait_until(
        &format!("{n} connected client(s) in polytun show"),
        Duration::from_secs(30),
        || {
            server.assert_alive();
            let c = clients(server);
            c.len() == n && c.iter().all(|c| c["state"] == "connected")
        },
    );
    clients(server)
}

fn assert_no_auth_drops(server: &Client<'_>) {
    let drops = &server.try_show().unwrap()["tunnels"][0]["drops"];
    assert_eq!(drops["bad_mac"], 0, "{drops}");
    assert_eq!(drops["malformed"], 0, "{drops}");
    // (bad_source counts the client's IPv6 router solicitations: no IPv6 pool)
}

fn session_test(test: &str, proto: Proto, mode: KeyMode, cipher: &str) {
    let t0 = Instant::now();
    let (s, c, pki) = setup(test);
    let server = start_server(&s, &pki, proto, mode);
    // The openvpn client offers one cipher; the server (all three) follows.
    let client = ovpn::start_client(
        &c,
        &ovpn::client_conf(&pki, "192.0.2.1", proto, mode, cipher),
    );
    let cl = wait_clients(&server, 1);
    assert_eq!(cl[0]["peer_id"], 0, "{cl:?}");
    assert_eq!(cl[0]["virtual_address"], "198.51.100.2/24", "{cl:?}");
    assert_eq!(cl[0]["cipher"], cipher, "{cl:?}");
    assert_eq!(cl[0]["key_id"], 0, "{cl:?}");
    assert!(
        cl[0]["remote"].as_str().unwrap().starts_with("192.0.2.2:"),
        "{cl:?}"
    );
    wait_ping(&c, SERVER_TUN, Duration::from_secs(10));
    assert_eq!(
        ping(&c, SERVER_TUN, 10),
        0.0,
        "ping loss through the tunnel"
    );
    // the server's pushes arrived: ifconfig, route (and its gateway), DNS
    let log = c.log_of(client);
    assert!(
        log.contains("PUSH: Received control message") && log.contains("dhcp-option DNS"),
        "{log}"
    );
    let addrs = c.run_ok(&["ip", "-4", "addr"]);
    assert!(addrs.contains("198.51.100.2/24"), "{addrs}");
    assert_eq!(
        ping(&c, ovpn::PUSHED_HOST, 5),
        0.0,
        "ping over the pushed route"
    );
    // the server reaches the client too (TUN → prefix table → the client)
    assert_eq!(ping(&s, "198.51.100.2", 5), 0.0, "ping server → client");
    xfer(&s, &c, SERVER_TUN, 5201, XFER_BYTES);
    xfer(&c, &s, "198.51.100.2", 5202, XFER_BYTES);
    let cl = clients(&server);
    assert!(cl[0]["rx_bytes"].as_u64().unwrap() >= XFER_BYTES, "{cl:?}");
    assert!(cl[0]["tx_bytes"].as_u64().unwrap() >= XFER_BYTES, "{cl:?}");
    assert_no_auth_drops(&server);
    let text = server.show_text();
    assert!(
        text.contains("peer-id 0, address 198.51.100.2/24"),
        "{text}"
    );
    assert!(c.try_wait(client).is_none(), "openvpn client still running");
    eprintln!("{text}");
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
    openvpn_server_udp_tls_crypt_aes256gcm:        "osu1", Udp, TlsCrypt, "AES-256-GCM";
    openvpn_server_udp_tls_auth_aes128gcm:         "osu2", Udp, TlsAuth,  "AES-128-GCM";
    openvpn_server_udp_tls_crypt_chacha20poly1305: "osu3", Udp, TlsCrypt, "CHACHA20-POLY1305";
    openvpn_server_tcp_tls_auth_aes256gcm:         "ost1", Tcp, TlsAuth,  "AES-256-GCM";
    openvpn_server_tcp_tls_crypt_aes128gcm:        "ost2", Tcp, TlsCrypt, "AES-128-GCM";
    openvpn_server_tcp_tls_auth_chacha20poly1305:  "ost3", Tcp, TlsAuth,  "CHACHA20-POLY1305";
}

/// Two openvpn clients at once, over two underlay links: different
/// addresses and peer-ids, both carry traffic at the same time, the server
/// routes each packet to its owner.
#[test]
fn openvpn_server_two_clients() {
    let (s, c1, pki) = setup("os2");
    let c2 = Netns::new("os2d");
    let _ = veth_pair_net(&s, &c2, "203.0.113", "2001:db8:1:");
    let server = start_server_on(&s, &pki, Proto::Udp, KeyMode::TlsCrypt, "");
    let conf = |remote: &str| {
        ovpn::client_conf(&pki, remote, Proto::Udp, KeyMode::TlsCrypt, "AES-256-GCM")
    };
    ovpn::start_client(&c1, &conf("192.0.2.1"));
    // the second client's underlay is 203.0.113.0/24: without the pushed
    // route over it (that one would take its own server's address away)
    let conf2 = conf("203.0.113.1").replace("client\n", "client\npull-filter ignore \"route \"\n");
    ovpn::start_client(&c2, &conf2);
    let cl = wait_clients(&server, 2);
    let mut got: Vec<(u64, String)> = cl
        .iter()
        .map(|c| {
            (
                c["peer_id"].as_u64().unwrap(),
                c["virtual_address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (0, "198.51.100.2/24".to_string()),
            (1, "198.51.100.3/24".to_string())
        ],
        "{cl:?}"
    );
    let addr_of = |ns: &Netns| {
        let a = ns.run_ok(&["ip", "-4", "-o", "addr", "show", "dev", "tun0"]);
        if a.contains("198.51.100.2/24") {
            "198.51.100.2"
        } else {
            assert!(a.contains("198.51.100.3/24"), "{a}");
            "198.51.100.3"
        }
    };
    let (a1, a2) = (addr_of(&c1), addr_of(&c2));
    assert_ne!(a1, a2);
    wait_ping(&c1, SERVER_TUN, Duration::from_secs(10));
    wait_ping(&c2, SERVER_TUN, Duration::from_secs(10));
    assert_eq!(ping(&s, a1, 5), 0.0, "server → first client");
    assert_eq!(ping(&s, a2, 5), 0.0, "server → second client");
    // both at once, each direction
    let up1 = polytun_e2e::xfer_start(&s, &c1, SERVER_TUN, 5201, XFER_BYTES);
    let up2 = polytun_e2e::xfer_start(&s, &c2, SERVER_TUN, 5202, XFER_BYTES);
    let down1 = polytun_e2e::xfer_start(&c1, &s, a1, 5203, XFER_BYTES / 2);
    let down2 = polytun_e2e::xfer_start(&c2, &s, a2, 5204, XFER_BYTES / 2);
    for x in [up1, up2, down1, down2] {
        x.finish(Duration::from_secs(180));
    }
    assert_no_auth_drops(&server);
    eprintln!("{}", server.show_text());
}

/// Float (mobility): the client's underlay address changes during a
/// transfer; the server follows its authenticated packets to the new
/// address, the transfer completes and show names the new address.
#[test]
fn openvpn_server_float() {
    let (s, c, pki) = setup("osf");
    let server = start_server(&s, &pki, Proto::Udp, KeyMode::TlsCrypt);
    ovpn::start_client(
        &c,
        &ovpn::client_conf(
            &pki,
            "192.0.2.1",
            Proto::Udp,
            KeyMode::TlsCrypt,
            "AES-256-GCM",
        ),
    );
    wait_clients(&server, 1);
    wait_ping(&c, SERVER_TUN, Duration::from_secs(10));
    let dev = c
        .run_ok(&["ip", "-o", "-4", "addr", "show", "to", "192.0.2.2"])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    c.run_ok(&[
        "sysctl",
        "-qw",
        &format!("net.ipv4.conf.{dev}.promote_secondaries=1"),
    ]);
    let run = polytun_e2e::xfer_start(&s, &c, SERVER_TUN, 5201, 150 * 1024 * 1024);
    wait_until("the transfer under way", Duration::from_secs(20), || {
        clients(&server)[0]["rx_bytes"].as_u64().unwrap() > 5 * 1024 * 1024
    });
    assert!(!run.done(), "the transfer ended before the address change");
    c.ip(&["addr", "add", "192.0.2.3/24", "dev", &dev]);
    c.ip(&["addr", "del", "192.0.2.2/24", "dev", &dev]);
    eprintln!("floated: 192.0.2.2 -> 192.0.2.3 during the transfer");
    run.finish(Duration::from_secs(180));
    let cl = clients(&server);
    assert_eq!(cl.len(), 1, "{cl:?}");
    assert!(
        cl[0]["remote"].as_str().unwrap().starts_with("192.0.2.3:"),
        "{cl:?}"
    );
    assert!(
        server.log().contains("floated from 192.0.2.2:"),
        "float logged"
    );
    assert_eq!(ping(&c, SERVER_TUN, 5), 0.0, "ping after the float");
    assert_eq!(
        ping(&s, "198.51.100.2", 5),
        0.0,
        "server → client after the float"
    );
}

/// explicit-exit-notify: the openvpn client stopping makes polytund drop
/// it at once (not after ping-restart); a client that vanishes silently is
/// removed by ping-restart; both free their address.
#[test]
fn openvpn_server_exit_notify_and_ping_restart() {
    let (s, c, pki) = setup("ose");
    let server = Client::start(
        &s,
        &ovpn::server_tunnel_toml(&pki, "192.0.2.1", Proto::Udp, KeyMode::TlsCrypt, &ALL)
            .replace("keepalive = [10, 60]", "keepalive = [1, 3]"),
    );
    let conf = ovpn::client_conf(
        &pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        "AES-256-GCM",
    );
    let client = ovpn::start_client(&c, &conf);
    wait_clients(&server, 1);
    wait_ping(&c, SERVER_TUN, Duration::from_secs(10));
    let t = Instant::now();
    c.kill(client);
    wait_until(
        "the server to drop the client (ping-restart would take 6 s)",
        Duration::from_secs(3),
        || clients(&server).is_empty(),
    );
    eprintln!("dropped {:?} after the client's SIGTERM", t.elapsed());
    assert!(server
        .log()
        .contains("removed: the client sent explicit-exit-notify"));
    // a silent client (its packets to the server blocked): ping-restart
    let client = ovpn::start_client(&c, &conf);
    let cl = wait_clients(&server, 1);
    assert_eq!(
        cl[0]["virtual_address"], "198.51.100.2/24",
        "address freed and reused"
    );
    c.drop_udp_out(1194);
    let t = Instant::now();
    wait_until(
        "ping-restart to remove the silent client",
        Duration::from_secs(20),
        || clients(&server).is_empty(),
    );
    eprintln!("silent client removed after {:?}", t.elapsed());
    assert!(server.log().contains("(ping-restart)"));
    assert!(c.try_wait(client).is_none());
}

/// A client with the wrong tls-crypt key: its packets never create a
/// session (counted as bad_mac, logged), a correct client is served.
#[test]
fn openvpn_server_wrong_tls_crypt_key_allocates_nothing() {
    let (s, c, pki) = setup("osw");
    let server = start_server_on(&s, &pki, Proto::Udp, KeyMode::TlsCrypt, "");
    let wrong = pki.genkey("wrong.key");
    let conf = ovpn::client_conf(
        &pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        "AES-256-GCM",
    );
    let bad = c.spawn(
        "openvpn-bad-client",
        &[
            polytun_e2e::bins::tool("openvpn").to_str().unwrap(),
            "--config",
            c.write_file("bad.conf", &conf.replace(&pki.path("ta.key"), &wrong))
                .to_str()
                .unwrap(),
        ],
    );
    wait_until(
        "the server to refuse the bad key",
        Duration::from_secs(20),
        || server.log().contains("failed tls-crypt authentication"),
    );
    let show = server.try_show().unwrap();
    assert!(
        show["tunnels"][0]["drops"]["bad_mac"].as_u64().unwrap() >= 1,
        "{show}"
    );
    assert!(
        clients(&server).is_empty(),
        "no state for unauthenticated packets"
    );
    let good = Netns::new("oswg");
    let _ = veth_pair_net(&s, &good, "203.0.113", "2001:db8:1:");
    ovpn::start_client(
        &good,
        &ovpn::client_conf(
            &pki,
            "203.0.113.1",
            Proto::Udp,
            KeyMode::TlsCrypt,
            "AES-256-GCM",
        )
        .replace("client\n", "client\npull-filter ignore \"route \"\n"),
    );
    wait_clients(&server, 1);
    wait_ping(&good, SERVER_TUN, Duration::from_secs(10));
    assert!(c.try_wait(bad).is_none());
}

/// `server_ipv6`: IPv6 inside the tunnel. The openvpn client gets its
/// address from the server's IPv6 pool (OpenVPN's numbering, ::1000 first)
/// and a pushed `route-ipv6`; IPv6 flows both ways (ping, checksummed
/// transfers), the server routing it to the client by its address; and
/// polytund's own client takes the same pushes.
fn server_ipv6_test(test: &str, proto: Proto) {
    const SERVER_TUN6: &str = "2001:db8:5::1";
    const CLIENT_TUN6: &str = "2001:db8:5::1000";
    const PUSHED_HOST6: &str = "2001:db8:77::1";
    let (s, c, pki) = setup(test);
    s.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{PUSHED_HOST6}/128"),
        "dev",
        "lo",
    ]);
    // (on every address: the second client comes over a second link)
    let tunnel = ovpn::server_tunnel_toml(&pki, "", proto, KeyMode::TlsCrypt, &ALL)
        .replace("local = \"\"\n", "");
    let tunnel = ovpn::with_push(
        &tunnel,
        &[
            "route-ipv6 2001:db8:77::/64",
            "route 203.0.113.0 255.255.255.0",
            &format!("dhcp-option DNS {}", ovpn::PUSHED_DNS),
        ],
    ) + "server_ipv6 = \"2001:db8:5::/64\"\n";
    let server = Client::start(&s, &tunnel);
    assert!(
        server
            .log()
            .contains("pool 198.51.100.0/24 and 2001:db8:5::/64"),
        "{}",
        server.log()
    );
    let addrs = s.run_ok(&["ip", "-6", "addr", "show", "dev", &server.iface]);
    assert!(addrs.contains(&format!("{SERVER_TUN6}/64")), "{addrs}");
    let client = ovpn::start_client(
        &c,
        &ovpn::client_conf(&pki, "192.0.2.1", proto, KeyMode::TlsCrypt, "AES-256-GCM"),
    );
    let cl = wait_clients(&server, 1);
    assert_eq!(
        cl[0]["virtual_address_ipv6"],
        format!("{CLIENT_TUN6}/64"),
        "{cl:?}"
    );
    let addrs = c.run_ok(&["ip", "-6", "addr"]);
    assert!(addrs.contains(&format!("{CLIENT_TUN6}/64")), "{addrs}");
    let log = c.log_of(client);
    assert!(log.contains("route-ipv6 2001:db8:77::/64"), "{log}");
    wait_ping(&c, SERVER_TUN6, Duration::from_secs(10));
    assert_eq!(ping(&c, SERVER_TUN6, 10), 0.0, "IPv6 ping loss");
    assert_eq!(ping(&c, PUSHED_HOST6, 5), 0.0, "ping over the route-ipv6");
    assert_eq!(ping(&s, CLIENT_TUN6, 5), 0.0, "IPv6 ping server → client");
    assert_eq!(ping(&c, SERVER_TUN, 5), 0.0, "IPv4 alongside");
    xfer(&s, &c, SERVER_TUN6, 5201, XFER_BYTES);
    xfer(&c, &s, CLIENT_TUN6, 5202, XFER_BYTES);
    assert_no_auth_drops(&server);
    let show = server.session();
    assert_eq!(
        show["virtual_address_ipv6"],
        format!("{SERVER_TUN6}/64"),
        "{show}"
    );
    assert_eq!(show["routes"][1], "2001:db8:5::/64", "{show}");
    let text = server.show_text();
    assert!(
        text.contains(&format!("address 198.51.100.2/24, {CLIENT_TUN6}/64")),
        "{text}"
    );
    // polytund's client, the second: the pool's second address. It comes
    // over IPv6 (the pushed IPv4 route covers this link's IPv4 network).
    let c2 = Netns::new(&format!("{test}e"));
    let _ = polytun_e2e::netns::veth_pair_net(&s, &c2, "203.0.113", "2001:db8:9:");
    let tunnel = ovpn::client_tunnel_toml(
        &pki,
        "[2001:db8:9::1]",
        proto,
        KeyMode::TlsCrypt,
        &["AES-256-GCM"],
        &pki.path("ta.key"),
    );
    let ours = Client::start(&c2, &tunnel);
    ours.wait_connected(Duration::from_secs(30));
    assert_eq!(
        ours.session()["virtual_address_ipv6"],
        "2001:db8:5::1001/64",
        "{}",
        ours.session()
    );
    wait_ping(&c2, SERVER_TUN6, Duration::from_secs(10));
    assert_eq!(
        ping(&c2, PUSHED_HOST6, 5),
        0.0,
        "polytun client, route-ipv6"
    );
    assert_eq!(
        ping(&s, "2001:db8:5::1001", 5),
        0.0,
        "server → polytun client"
    );
    xfer(&s, &c2, SERVER_TUN6, 5203, XFER_BYTES / 5);
    assert_eq!(ping(&c, SERVER_TUN6, 3), 0.0, "the first client still up");
    assert!(c.try_wait(client).is_none(), "openvpn client still running");
}

#[test]
fn openvpn_server_ipv6_inside_the_tunnel_udp() {
    server_ipv6_test("os6u", Proto::Udp);
}

#[test]
fn openvpn_server_ipv6_inside_the_tunnel_tcp() {
    server_ipv6_test("os6t", Proto::Tcp);
}

/// A site behind a client (OpenVPN's iroute): the openvpn client is a
/// branch gateway with a host on its LAN (IPv4 and IPv6). The server's
/// `iroutes` for the client's certificate name route the LAN to that
/// client and accept its packets from there; a source outside them is
/// still refused.
#[test]
fn openvpn_server_iroutes_reach_a_lan_behind_the_client() {
    const LAN_HOST: &str = "203.0.113.2";
    const LAN_HOST6: &str = "2001:db8:10::2";
    let s = Netns::new("osirs");
    let c = Netns::new("osirc");
    let h = Netns::new("osirh");
    let _ = veth_pair(&s, &c);
    let _ = veth_pair_net(&c, &h, "203.0.113", "2001:db8:10:");
    h.ip(&["route", "add", "default", "via", "203.0.113.1"]);
    h.ip(&["-6", "route", "add", "default", "via", "2001:db8:10::1"]);
    // a second address on the host, in no iroute
    h.ip(&["-6", "addr", "add", "2001:db8:11::2/128", "dev", "lo"]);
    c.run_ok(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    let pki = Pki::new(&s);
    let tunnel = ovpn::with_push(
        &ovpn::server_tunnel_toml(&pki, "192.0.2.1", Proto::Udp, KeyMode::TlsCrypt, &ALL),
        &[],
    ) + "server_ipv6 = \"2001:db8:5::/64\"\n\
           iroutes = { client = [\"203.0.113.0/24\", \"2001:db8:10::/64\"] }\n";
    let server = Client::start(&s, &tunnel);
    let routes = s.run_ok(&["ip", "route", "show", "dev", &server.iface]);
    assert!(
        routes.contains("203.0.113.0/24"),
        "iroute's kernel route: {routes}"
    );
    let client = ovpn::start_client(
        &c,
        &ovpn::client_conf(
            &pki,
            "192.0.2.1",
            Proto::Udp,
            KeyMode::TlsCrypt,
            "AES-256-GCM",
        ),
    );
    let cl = wait_clients(&server, 1);
    assert_eq!(cl[0]["common_name"], "client", "{cl:?}");
    assert_eq!(cl[0]["routes"][0], "203.0.113.0/24", "{cl:?}");
    assert_eq!(cl[0]["routes"][1], "2001:db8:10::/64", "{cl:?}");
    wait_ping(&s, LAN_HOST, Duration::from_secs(10));
    assert_eq!(
        ping(&s, LAN_HOST, 10),
        0.0,
        "server → host behind the client"
    );
    assert_eq!(ping(&s, LAN_HOST6, 5), 0.0, "the same over IPv6");
    assert_eq!(
        ping(&h, SERVER_TUN, 5),
        0.0,
        "host behind the client → server"
    );
    // checksummed transfers both ways between the server and the LAN host
    xfer(&h, &s, LAN_HOST, 5201, XFER_BYTES);
    xfer(&s, &h, SERVER_TUN, 5202, XFER_BYTES);
    xfer(&h, &s, LAN_HOST6, 5203, XFER_BYTES / 5);
    let text = server.show_text();
    assert!(
        text.contains("(client): connected")
            && text.contains("routes 203.0.113.0/24, 2001:db8:10::/64"),
        "{text}"
    );
    // a source in no iroute: refused and counted, not delivered
    let drops = |srv: &Client<'_>| {
        srv.try_show().unwrap()["tunnels"][0]["drops"]["bad_source"]
            .as_u64()
            .unwrap()
    };
    let before = drops(&server);
    let spoofed = polytun_e2e::traffic::ping_from(&h, "2001:db8:11::2", "2001:db8:5::1", 5);
    assert_eq!(spoofed, 100.0, "a source outside the iroutes got an answer");
    assert!(
        drops(&server) >= before + 5,
        "bad_source {} → {}",
        before,
        drops(&server)
    );
    assert_no_auth_drops(&server);
    assert!(c.try_wait(client).is_none(), "openvpn client still running");
}

/// polytun client ↔ polytun server, over UDP and TCP; `polytun down` on
/// the server tells the UDP client, which reconnects.
fn polytun_pair(test: &str, proto: Proto) {
    let (s, c, pki) = setup(test);
    let server = start_server(&s, &pki, proto, KeyMode::TlsAuth);
    let client = Client::start(
        &c,
        &ovpn::client_tunnel_toml(
            &pki,
            "192.0.2.1",
            proto,
            KeyMode::TlsAuth,
            &["CHACHA20-POLY1305", "AES-256-GCM"],
            &pki.path("ta.key"),
        ),
    );
    client.wait_connected(Duration::from_secs(30));
    let sess = client.session();
    assert_eq!(sess["virtual_address"], "198.51.100.2/24", "{sess}");
    assert_eq!(
        sess["cipher"], "AES-256-GCM",
        "the server's preference: {sess}"
    );
    assert_eq!(sess["dns"][0], ovpn::PUSHED_DNS, "{sess}");
    wait_ping(&c, SERVER_TUN, Duration::from_secs(10));
    assert_eq!(ping(&c, SERVER_TUN, 10), 0.0);
    assert_eq!(ping(&c, ovpn::PUSHED_HOST, 5), 0.0, "pushed route");
    xfer(&s, &c, SERVER_TUN, 5201, XFER_BYTES);
    xfer(&c, &s, "198.51.100.2", 5202, XFER_BYTES);
    wait_clients(&server, 1);
    assert_no_auth_drops(&server);
    let cli = polytun_e2e::bins::polytun();
    s.run_ok(&[cli.to_str().unwrap(), "-i", &server.iface, "down"]);
    wait_until(
        "the client to notice the server's exit",
        Duration::from_secs(10),
        || client.session()["state"] != "connected",
    );
    if proto == Proto::Udp {
        assert!(
            client.log().contains("the server announced its exit"),
            "{}",
            client.log()
        );
    }
    client.assert_alive();
}

#[test]
fn openvpn_server_polytun_client_udp() {
    polytun_pair("osp1", Proto::Udp);
}

#[test]
fn openvpn_server_polytun_client_tcp() {
    polytun_pair("osp2", Proto::Tcp);
}

/// configs/openvpn-server.toml and configs/openvpn-server-conf.toml (+ the
/// OpenVPN-style openvpn-server.conf), as shipped, with this test's PKI;
/// one openvpn client follows from the first to the second (`polytun down`
/// on the first tells it to reconnect: OCC_EXIT, "remote-exit").
#[test]
fn openvpn_server_shipped_configs() {
    let (s, c, pki) = setup("osc");
    let root = polytun_e2e::bins::workspace_root().join("configs");
    std::fs::copy(
        root.join("openvpn-server.conf"),
        pki.dir.join("openvpn-server.conf"),
    )
    .unwrap();
    let cli = polytun_e2e::bins::polytun();
    let mut client = None;
    for (i, (toml, name)) in [
        ("openvpn-server.toml", "ptovpns0"),
        ("openvpn-server-conf.toml", "ptovpns1"),
    ]
    .into_iter()
    .enumerate()
    {
        let iface = polytun_e2e::unique_ifname("pts");
        let text = std::fs::read_to_string(root.join(toml)).unwrap().replace(
            &format!("name = \"{name}\""),
            &format!("name = \"{iface}\""),
        );
        let path = pki.dir.join(toml);
        std::fs::write(&path, text).unwrap();
        // (the first server has put the pushed host's address on lo already)
        let server = Client::start_with(&s, iface, path);
        let pid = *client.get_or_insert_with(|| {
            ovpn::start_client(
                &c,
                &ovpn::client_conf(
                    &pki,
                    "192.0.2.1",
                    Proto::Udp,
                    KeyMode::TlsCrypt,
                    "AES-128-GCM",
                ),
            )
        });
        let cl = wait_clients(&server, 1);
        assert_eq!(cl[0]["cipher"], "AES-128-GCM", "{toml}: {cl:?}");
        assert_eq!(
            cl[0]["virtual_address"], "198.51.100.2/24",
            "{toml}: {cl:?}"
        );
        assert_eq!(
            cl[0]["virtual_address_ipv6"], "2001:db8:5::1000/64",
            "{toml}: {cl:?}"
        );
        wait_ping(&c, SERVER_TUN, Duration::from_secs(20));
        assert_eq!(ping(&c, SERVER_TUN, 5), 0.0, "{toml}");
        wait_ping(&c, "2001:db8:5::1", Duration::from_secs(10));
        assert_eq!(ping(&c, ovpn::PUSHED_HOST, 5), 0.0, "{toml}: pushed route");
        s.run_ok(&[cli.to_str().unwrap(), "-i", &server.iface, "down"]);
        wait_until(
            "the openvpn client to restart on the server's exit",
            Duration::from_secs(10),
            || c.log_of(pid).matches("remote-exit").count() > i,
        );
        s.wait_exit(server.pid, Duration::from_secs(10));
    }
}

/// Renegotiation with the polytun *server* for over two minutes under a 5/s
/// ping, started by one side every 20 s (`by_client`: the openvpn client's
/// `reneg-sec 20`, the server's 3600; else the server's `reneg_sec = 20`,
/// jittered as OpenVPN's server does, and the client's `reneg-sec 0`; a new
/// key restarts both timers, so the shorter one always starts it): no ping
/// lost, the client never reconnects, the openvpn client sees no TLS error.
fn server_reneg_test(test: &str, by_client: bool) {
    let t0 = Instant::now();
    let (s, c, pki) = setup(test);
    let (server_sec, client_sec) = if by_client { (3600, 20) } else { (20, 0) };
    let tunnel = ovpn::server_tunnel_toml(&pki, "192.0.2.1", Proto::Udp, KeyMode::TlsCrypt, &ALL)
        + &format!("reneg_sec = {server_sec}\n");
    let server = Client::start(&s, &tunnel);
    let conf = ovpn::client_conf(
        &pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        "AES-256-GCM",
    ) + &format!("reneg-sec {client_sec}\n");
    let client = ovpn::start_client(&c, &conf);
    let cl = wait_clients(&server, 1);
    let since = cl[0]["connected_since_unix"].clone();
    wait_ping(&c, SERVER_TUN, Duration::from_secs(10));
    let loss = ping(&c, SERVER_TUN, 130 * 5);
    let log = server.log();
    let started: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("renegotiating the data channel keys: key-id"))
        .collect();
    let by_peer = started
        .iter()
        .filter(|l| l.contains("(by the peer)"))
        .count();
    let by_us = started.len() - by_peer;
    eprintln!(
        "{test}: {} renegotiations ({by_peer} by the openvpn client, {by_us} by polytun), {loss}% loss",
        started.len()
    );
    assert_eq!(loss, 0.0, "{loss}% of pings lost across renegotiations");
    let (want, what) = if by_client {
        (by_peer, "the openvpn client")
    } else {
        (by_us, "the polytun server")
    };
    assert!(want >= 5, "soft resets by {what}:\n{}", started.join("\n"));
    let cl = wait_clients(&server, 1);
    assert_eq!(cl[0]["connected_since_unix"], since, "no reconnect: {cl:?}");
    assert_ne!(cl[0]["key_id"], 0, "the client's key moved on: {cl:?}");
    assert!(cl[0]["renegotiations"].as_u64().unwrap_or(0) >= 5, "{cl:?}");
    let clog = c.log_of(client);
    assert!(
        !clog.contains("TLS Error") && !clog.contains("out of sync"),
        "the openvpn client complained:\n{clog}"
    );
    assert_no_auth_drops(&server);
    assert!(c.try_wait(client).is_none(), "openvpn client still running");
    eprintln!("{test}: passed in {:?}", t0.elapsed());
}

#[test]
fn openvpn_server_reneg_sec_20_by_openvpn_client_zero_loss() {
    server_reneg_test("osrc", true);
}

#[test]
fn openvpn_server_reneg_sec_20_by_polytun_server_zero_loss() {
    server_reneg_test("osrs", false);
}

/// Key export (SSKE) and key update (KU) on the server: `polytun export-key`
/// gives the same RFC 5705 keying material on the polytun client and the
/// polytun server (the TLS exporter of their session; OpenVPN 2.6 hands the
/// same value only to TLS_FINAL plugins), a context changes it, the data
/// channel's own label is refused, and `polytun rekey` on the server
/// renegotiates its client (soft reset, new exporter value on both sides).
#[test]
fn openvpn_server_key_export_and_rekey() {
    let (s, c, pki) = setup("oske");
    let server = start_server(&s, &pki, Proto::Udp, KeyMode::TlsCrypt);
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
    wait_clients(&server, 1);
    wait_ping(&c, SERVER_TUN, Duration::from_secs(10));
    let export = |who: &Client<'_>, extra: &[&str]| {
        let mut args = vec![
            "export-key",
            "--label",
            "EXPORTER-polytun-test",
            "--length",
            "32",
        ];
        args.extend_from_slice(extra);
        let out = who.cli(&args);
        let key = out.trim().to_string();
        assert!(
            key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()),
            "a 32-byte hex key: `{out}`"
        );
        key
    };
    let k_client = export(&client, &[]);
    let k_server = export(&server, &[]);
    assert_eq!(k_client, k_server, "both ends export the same key");
    let k_ctx = export(&client, &["--context", "x"]);
    assert_ne!(k_ctx, k_client, "a context gives another key");
    assert_eq!(k_ctx, export(&server, &["--context", "x"]));
    // the data channel keys' label is not for export
    let cli = polytun_e2e::bins::polytun();
    let o = c.run_env(
        &[
            cli.to_str().unwrap(),
            "-i",
            &client.iface,
            "export-key",
            "--label",
            "EXPORTER-OpenVPN-datakeys",
        ],
        &[],
        Duration::from_secs(10),
    );
    assert!(!o.ok(), "the datakeys label must be refused: {}", o.stdout);
    // KU from the server
    server.cli(&["rekey"]);
    wait_until(
        "the client's key-id to move on",
        Duration::from_secs(30),
        || {
            clients(&server)[0]["key_id"].as_u64().unwrap_or(0) >= 1
                && client.session()["key_id"].as_u64().unwrap_or(0) >= 1
        },
    );
    assert_eq!(ping(&c, SERVER_TUN, 10), 0.0, "traffic on the new key");
    let k2 = export(&client, &[]);
    assert_ne!(k2, k_client, "a new TLS session after renegotiation");
    assert_eq!(k2, export(&server, &[]), "both ends moved to it");
    assert!(
        server.log().contains("renegotiating on request"),
        "{}",
        server.log()
    );
}

/// Per-client pushes (`client_push`, a client-config-dir file's `push`
/// lines): the client with that certificate's common name gets them after
/// the common ones, and applies them (openvpn 2.6: the route on its TUN,
/// the DNS domain in its log); another name's are not sent.
#[test]
fn openvpn_server_pushes_per_client_options() {
    let (s, c, pki) = setup("ospc");
    let tunnel = ovpn::server_tunnel_toml(&pki, "192.0.2.1", Proto::Udp, KeyMode::TlsCrypt, &ALL)
        + "client_push = { client = [\"route 192.0.2.128 255.255.255.192\", \
           \"dhcp-option DOMAIN branch.example\"], other = [\"dhcp-option DOMAIN other.example\"] }\n";
    let server = Client::start(&s, &tunnel);
    let client = ovpn::start_client(
        &c,
        &ovpn::client_conf(
            &pki,
            "192.0.2.1",
            Proto::Udp,
            KeyMode::TlsCrypt,
            "AES-256-GCM",
        ),
    );
    wait_clients(&server, 1);
    let log = c.log_of(client);
    let reply = log
        .lines()
        .find(|l| l.contains("PUSH_REPLY"))
        .unwrap_or_else(|| panic!("no PUSH_REPLY in the client's log:\n{log}"));
    assert!(
        reply.contains("dhcp-option DOMAIN branch.example"),
        "{reply}"
    );
    assert!(!reply.contains("other.example"), "{reply}");
    // after the common options
    let common = reply.find(&format!("dhcp-option DNS {}", ovpn::PUSHED_DNS));
    assert!(common < reply.find("branch.example"), "{reply}");
    let routes = c.run_ok(&["ip", "route"]);
    assert!(routes.contains("192.0.2.128/26"), "{routes}");
    assert!(server.log().contains("pushing also route 192.0.2.128"));
    wait_ping(&c, SERVER_TUN, Duration::from_secs(10));
}
