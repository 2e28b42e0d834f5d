//! Issue 4: polytund as an OpenVPN *server*, with the real OpenVPN 2.6
//! client (and polytund's own client) in network namespaces: UDP and TCP,
//! tls-crypt and tls-auth, the three data ciphers; ping, pushed route, 50 MB
//! checksummed transfers both ways; two clients at once; float; explicit
//! exit notification; the shipped configs/openvpn-server*.toml.
use polytun_e2e::openvpn::{self as ovpn, Client, KeyMode, Pki, Proto};
use polytun_e2e::netns::veth_pair_net;
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
    s.ip(&["addr", "add", &format!("{}/32", ovpn::PUSHED_HOST), "dev", "lo"]);
    let pki = Pki::new(&s);
    (s, c, pki)
}

fn start_server<'a>(s: &'a Netns, pki: &Pki, proto: Proto, mode: KeyMode) -> Client<'a> {
    let server = Client::start(
        s,
        &ovpn::server_tunnel_toml(pki, "192.0.2.1", proto, mode, &ALL),
    );
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
    assert_eq!(ping(&c, SERVER_TUN, 10), 0.0, "ping loss through the tunnel");
    // the server's pushes arrived: ifconfig, route (and its gateway), DNS
    let log = c.log_of(client);
    assert!(
        log.contains("PUSH: Received control message") && log.contains("dhcp-option DNS"),
        "{log}"
    );
    let addrs = c.run_ok(&["ip", "-4", "addr"]);
    assert!(addrs.contains("198.51.100.2/24"), "{addrs}");
    assert_eq!(ping(&c, ovpn::PUSHED_HOST, 5), 0.0, "ping over the pushed route");
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
