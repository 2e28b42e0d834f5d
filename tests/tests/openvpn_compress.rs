//! OpenVPN compression against the real OpenVPN 2.6: servers whose configs
//! carry `comp-lzo` or `compress` (the framing byte in front of or swapped
//! into every packet), pushed or configured on both sides, `compress
//! migrate` on either side; what a peer does compress (LZO, LZ4, LZ4 v2)
//! is decompressed, on both roles, or refused with a warning where the
//! option names a stub; a framing the client lacks is named with the
//! option to add. polytun itself never compresses.
use polytun_e2e::openvpn::{self as ovpn, Client, KeyMode, Pki, Proto};
use polytun_e2e::traffic::ping_with;
use polytun_e2e::{ping, veth_pair, wait_ping, wait_until, xfer, Netns};
use serde_json::Value;
use std::time::{Duration, Instant};

const XFER: u64 = 10_000_000;
const SERVER_TUN: &str = "198.51.100.1";
const ALL: [&str; 3] = ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"];

fn setup(test: &str) -> (Netns, Netns, Pki) {
    let s = Netns::new(&format!("{test}s"));
    let c = Netns::new(&format!("{test}c"));
    let _ = veth_pair(&s, &c);
    let pki = Pki::new(&s);
    (s, c, pki)
}

/// An openvpn 2.6 server in `s` (the standard config, then
/// `server_extra`), and the `[[tunnel]]` of a polytun client for it.
fn openvpn_server(s: &Netns, pki: &Pki, proto: Proto, server_extra: &str) -> (u32, String) {
    let conf =
        ovpn::server_conf(pki, "192.0.2.1", proto, KeyMode::TlsCrypt, "AES-256-GCM") + server_extra;
    let server = ovpn::start_server(s, &conf);
    let tunnel = ovpn::client_tunnel_toml(
        pki,
        "192.0.2.1",
        proto,
        KeyMode::TlsCrypt,
        &ALL,
        &pki.path("ta.key"),
    );
    (server, tunnel)
}

/// A polytun client with `client_extra` (TOML; with `ovpn`, also a .ovpn
/// file of these lines) against an openvpn 2.6 server with
/// `server_extra`; the session must show `framing` and carry pings and
/// checksummed transfers both ways with nothing dropped.
fn client_test(
    test: &str,
    proto: Proto,
    server_extra: &str,
    client_extra: &str,
    ovpn: Option<&str>,
    framing: &str,
) {
    let t0 = Instant::now();
    let (s, c, pki) = setup(test);
    let client_extra = match ovpn {
        Some(lines) => {
            let p = c.write_file("client.ovpn", lines);
            format!("{client_extra}config = \"{}\"\n", p.display())
        }
        None => client_extra.to_string(),
    };
    let (server, tunnel) = openvpn_server(&s, &pki, proto, server_extra);
    let client = Client::start(&c, &(tunnel + &client_extra));
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    assert_eq!(ping(&c, ovpn::SERVER_TUN, 10), 0.0, "ping loss");
    // large pings too: above OpenVPN's compression threshold (100 bytes)
    assert_eq!(
        ping_with(&c, ovpn::SERVER_TUN, 5, &["-s", "1400"]),
        0.0,
        "large ping loss"
    );
    xfer(&s, &c, ovpn::SERVER_TUN, 5201, XFER);
    xfer(&c, &s, ovpn::CLIENT_TUN, 5202, XFER);
    let sess = client.session();
    assert_eq!(sess["compression"], framing, "{sess}");
    let text = client.show_text();
    assert!(
        text.contains(&format!("compression framing: {framing}")),
        "{text}"
    );
    let drops = &client.try_show().unwrap()["tunnels"][0]["drops"];
    assert_eq!(drops["malformed"], 0, "{drops}");
    assert_eq!(drops["bad_mac"], 0, "{drops}");
    let slog = s.log_of(server);
    assert!(
        !slog.contains("Bad compression") && !slog.contains("decompression"),
        "the server refused our framing:\n{slog}"
    );
    assert!(
        !client.log().contains("not applied"),
        "pushed options left unapplied:\n{}",
        client.log()
    );
    eprintln!("{text}\n{test}: passed in {:?}", t0.elapsed());
}

/// The commonest provider config: `comp-lzo no` on the server (nothing
/// pushed: a client must have it too).
#[test]
fn openvpn_comp_lzo_no_on_both_sides() {
    client_test(
        "ocz1",
        Proto::Udp,
        "comp-lzo no\n",
        "compress = \"comp-lzo no\"\n",
        None,
        "comp-lzo no",
    );
}

/// The server pushes `compress stub-v2` to a client configured without any
/// compression option (the pushed one applies).
#[test]
fn openvpn_pushed_compress_stub_v2_over_tcp() {
    client_test(
        "ocz2",
        Proto::Tcp,
        "compress stub-v2\npush \"compress stub-v2\"\n",
        "",
        None,
        "compress stub-v2",
    );
}

/// `compress lz4` (the swap framing: the first byte moved to the end),
/// pushed; OpenVPN 2.6 sends uncompressed packets with it by default.
#[test]
fn openvpn_pushed_compress_lz4_swaps() {
    client_test(
        "ocz3",
        Proto::Udp,
        "compress lz4\npush \"compress lz4\"\n",
        "",
        None,
        "compress lz4",
    );
}

/// `compress migrate` on the openvpn server: a client whose .ovpn says
/// `comp-lzo` announces it (options string) and stub-v2 support (peer
/// info), and is pushed `compress stub-v2`.
#[test]
fn openvpn_compress_migrate_server_pushes_stub_v2() {
    client_test(
        "ocz4",
        Proto::Udp,
        "compress migrate\n",
        "",
        Some("comp-lzo\n"),
        "compress stub-v2",
    );
}

/// A server that compresses (`allow-compression yes`, as OpenVPN 2.4 and
/// 2.5 servers do with `comp-lzo`): zeros compress, so the echo replies to
/// large pings of zeros come back compressed and must be decompressed;
/// checksummed transfers both ways as well. With `allow-compression no`
/// on the client they are refused instead, counted, and the log says why.
fn compressing_server_test(test: &str, server_extra: &str, framing: &str) {
    let (s, c, pki) = setup(test);
    let extra = format!("allow-compression yes\n{server_extra}");
    let (server, tunnel) = openvpn_server(&s, &pki, Proto::Udp, &extra);
    let client = Client::start(&c, &tunnel);
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    assert_eq!(client.session()["compression"], framing);
    let zeros = ["-s", "1000", "-p", "00"];
    assert_eq!(
        ping_with(&c, ovpn::SERVER_TUN, 5, &zeros),
        0.0,
        "compressed replies lost"
    );
    xfer(&s, &c, ovpn::SERVER_TUN, 5201, XFER);
    xfer(&c, &s, ovpn::CLIENT_TUN, 5202, XFER);
    let drops = &client.try_show().unwrap()["tunnels"][0]["drops"];
    assert_eq!(drops["malformed"], 0, "{drops}");
    assert!(!s.log_of(server).contains("compression error"));
    c.kill(client.pid);

    // the same server, a client with `allow-compression no`
    let ovpn_file = c.write_file("noallow.ovpn", "allow-compression no\n");
    let tunnel = format!("{tunnel}config = \"{}\"\n", ovpn_file.display());
    let client = Client::start(&c, &tunnel);
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    let loss = ping_with(&c, ovpn::SERVER_TUN, 5, &zeros);
    assert_eq!(loss, 100.0, "compressed replies were taken");
    wait_until(
        "the warning about compressed packets",
        Duration::from_secs(15),
        || {
            client
                .log()
                .contains("packets from the server were compressed")
        },
    );
    assert!(client.log().contains("allow-compression no"));
    let drops = &client.try_show().unwrap()["tunnels"][0]["drops"];
    assert!(drops["malformed"].as_u64().unwrap() >= 5, "{drops}");
    // small packets are never compressed: the tunnel still carries them
    assert_eq!(ping(&c, ovpn::SERVER_TUN, 5), 0.0);
    client.assert_alive();
}

#[test]
fn openvpn_compressing_server_lzo_is_decompressed() {
    compressing_server_test(
        "ocz5",
        "comp-lzo yes\npush \"comp-lzo yes\"\nkeepalive 1 60\n",
        "comp-lzo",
    );
}

#[test]
fn openvpn_compressing_server_lz4_v2_is_decompressed() {
    compressing_server_test(
        "ocz9",
        "compress lz4-v2\npush \"compress lz4-v2\"\n",
        "compress lz4-v2",
    );
}

#[test]
fn openvpn_compressing_server_lz4_swap_is_decompressed() {
    compressing_server_test(
        "ocza",
        "compress lz4\npush \"compress lz4\"\n",
        "compress lz4",
    );
}

/// The server frames (`comp-lzo no`, not pushed) and the client lacks the
/// option: nothing gets through, and the log names the option to add.
#[test]
fn openvpn_missing_comp_lzo_is_named() {
    let (s, c, pki) = setup("ocz6");
    let (_server, tunnel) = openvpn_server(&s, &pki, Proto::Udp, "comp-lzo no\n");
    let client = Client::start(&c, &tunnel);
    client.wait_connected(Duration::from_secs(30));
    // (the server's keepalive pings are framed too)
    let _ = ping(&c, ovpn::SERVER_TUN, 3);
    wait_until(
        "the warning naming comp-lzo",
        Duration::from_secs(15),
        || client.log().contains("add `comp-lzo`"),
    );
    let drops = &client.try_show().unwrap()["tunnels"][0]["drops"];
    assert!(drops["malformed"].as_u64().unwrap() >= 1, "{drops}");
    client.assert_alive();
}

fn clients(server: &Client<'_>) -> Vec<Value> {
    server.session()["clients"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// polytun as the server with `compress = "migrate"`: an openvpn 2.6
/// client with `comp-lzo` gets `compress stub-v2`, one without gets no
/// framing, side by side, each shown with its own; both carry traffic.
#[test]
fn openvpn_server_compress_migrate() {
    let (s, c, pki) = setup("ocz7");
    let c2 = Netns::new("ocz7d");
    let _ = polytun_e2e::netns::veth_pair_net(&s, &c2, "203.0.113", "2001:db8:1:");
    let tunnel = ovpn::server_tunnel_toml(&pki, "", Proto::Udp, KeyMode::TlsCrypt, &ALL)
        .replace("local = \"\"\n", "")
        + "compress = \"migrate\"\n";
    let server = Client::start(&s, &tunnel);
    let with = ovpn::client_conf(
        &pki,
        "192.0.2.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        "AES-256-GCM",
    ) + "comp-lzo\n";
    let c1 = ovpn::start_client(&c, &with);
    // (its underlay is the pushed route's network: that route is ignored)
    let without = ovpn::client_conf(
        &pki,
        "203.0.113.1",
        Proto::Udp,
        KeyMode::TlsCrypt,
        "AES-256-GCM",
    )
    .replace("client\n", "client\npull-filter ignore \"route \"\n");
    let c2pid = ovpn::start_client(&c2, &without);
    wait_until("two clients", Duration::from_secs(30), || {
        clients(&server).len() == 2
    });
    let log = c.log_of(c1);
    assert!(log.contains("compress stub-v2"), "not pushed:\n{log}");
    let mut framings: Vec<String> = clients(&server)
        .iter()
        .map(|v| v["compression"].as_str().unwrap_or("none").to_string())
        .collect();
    framings.sort();
    assert_eq!(framings, ["compress stub-v2", "none"]);
    for (ns, addr) in [(&c, "198.51.100.2"), (&c2, "198.51.100.3")] {
        wait_ping(ns, SERVER_TUN, Duration::from_secs(10));
        assert_eq!(ping_with(ns, SERVER_TUN, 5, &["-s", "1400"]), 0.0);
        xfer(ns, &s, addr, 5203, XFER);
        xfer(&s, ns, SERVER_TUN, 5204, XFER);
    }
    let drops = &server.try_show().unwrap()["tunnels"][0]["drops"];
    assert_eq!(drops["malformed"], 0, "{drops}");
    assert!(c.try_wait(c1).is_none() && c2.try_wait(c2pid).is_none());
}

/// polytun as the server (`compress`, and `push` it) with an openvpn 2.6
/// client (`client_extra`): the client's session shows `framing`; large
/// pings (of zeros: a compressing client's arrive compressed, and are
/// decompressed and checked as its own) and a checksummed transfer each
/// way go through with nothing dropped.
fn server_test(test: &str, proto: Proto, compress: &str, client_extra: &str, framing: &str) {
    let (s, c, pki) = setup(test);
    let tunnel = ovpn::with_push(
        &ovpn::server_tunnel_toml(&pki, "192.0.2.1", proto, KeyMode::TlsCrypt, &ALL),
        &[compress],
    ) + &format!("compress = \"{compress}\"\n");
    let server = Client::start(&s, &tunnel);
    let conf = ovpn::client_conf(&pki, "192.0.2.1", proto, KeyMode::TlsCrypt, "AES-256-GCM")
        + client_extra;
    let client = ovpn::start_client(&c, &conf);
    wait_until("the client", Duration::from_secs(30), || {
        clients(&server).len() == 1
    });
    assert_eq!(clients(&server)[0]["compression"], framing);
    wait_ping(&c, SERVER_TUN, Duration::from_secs(10));
    assert_eq!(
        ping_with(&c, SERVER_TUN, 5, &["-s", "1000", "-p", "00"]),
        0.0
    );
    xfer(&c, &s, "198.51.100.2", 5205, XFER);
    xfer(&s, &c, SERVER_TUN, 5206, XFER);
    let drops = &server.try_show().unwrap()["tunnels"][0]["drops"];
    assert_eq!(drops["malformed"], 0, "{drops}");
    let log = c.log_of(client);
    assert!(!log.contains("Bad compression"), "{log}");
    assert!(c.try_wait(client).is_none());
}

/// A .conf saying `comp-lzo no` and pushing it: an openvpn 2.6 client
/// without the option takes the push.
#[test]
fn openvpn_server_pushes_comp_lzo_no() {
    server_test("ocz8", Proto::Tcp, "comp-lzo no", "", "comp-lzo no");
}

/// `comp-lzo yes`, pushed, and an openvpn 2.6 client that compresses
/// (`allow-compression yes`).
#[test]
fn openvpn_server_decompresses_a_compressing_client() {
    server_test(
        "oczb",
        Proto::Udp,
        "comp-lzo yes",
        "comp-lzo yes\nallow-compression yes\n",
        "comp-lzo",
    );
}
