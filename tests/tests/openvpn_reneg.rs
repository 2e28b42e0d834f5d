//! Issue 4, renegotiation: polytund as an OpenVPN client against the real
//! OpenVPN 2.6 server renegotiates the data channel keys (soft reset,
//! key-ids 1..7) every 20 s for over two minutes under a steady ping (5/s),
//! started by the openvpn server (`reneg-sec 20`) or by polytun
//! (`reneg_sec = 20`): no ping is lost, the key-id advances each time, no
//! packet arrives for a key polytun no longer has, and nobody reconnects.
//! `polytun rekey` starts one on demand.
use polytun_e2e::openvpn::{self as ovpn, Client, KeyMode, Pki, Proto};
use polytun_e2e::{bins, ping, veth_pair, wait_ping, wait_until, Netns};
use std::time::{Duration, Instant};

fn setup(test: &str) -> (Netns, Netns, Pki) {
    let s = Netns::new(&format!("{test}s"));
    let c = Netns::new(&format!("{test}c"));
    let _ = veth_pair(&s, &c);
    let pki = Pki::new(&s);
    (s, c, pki)
}

/// The key-ids polytund switched its sending to, in order (from its log).
fn send_key_ids(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("sending with key-id ").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Pings for `secs` seconds at 5/s while the keys renegotiate; checks
/// zero loss and at least `min` renegotiations started by `by`.
#[allow(clippy::too_many_arguments)]
fn reneg_test(
    test: &str,
    proto: Proto,
    server_reneg: &str,
    client_reneg: u32,
    by: &str,
    secs: u32,
    min: usize,
) {
    let t0 = Instant::now();
    let (s, c, pki) = setup(test);
    let conf = ovpn::server_conf(&pki, "192.0.2.1", proto, KeyMode::TlsCrypt, "AES-256-GCM")
        + &format!("reneg-sec {server_reneg}\n");
    let server = ovpn::start_server(&s, &conf);
    let mut tunnel = ovpn::client_tunnel_toml(
        &pki,
        "192.0.2.1",
        proto,
        KeyMode::TlsCrypt,
        &["AES-256-GCM"],
        &pki.path("ta.key"),
    );
    tunnel.push_str(&format!("reneg_sec = {client_reneg}\n"));
    let client = Client::start(&c, &tunnel);
    client.wait_connected(Duration::from_secs(30));
    wait_ping(&c, ovpn::SERVER_TUN, Duration::from_secs(10));
    let since = client.session()["connected_since_unix"].clone();
    // (a packet racing the initial push reply may find no key yet: only
    // what happens from here on counts)
    let drops0 = client.try_show().unwrap()["tunnels"][0]["drops"].clone();
    eprintln!("{test}: drops after connecting: {drops0}");
    let loss = ping(&c, ovpn::SERVER_TUN, secs * 5);
    let log = client.log();
    let started = log
        .lines()
        .filter(|l| l.contains("renegotiating the data channel keys: key-id"))
        .collect::<Vec<_>>();
    let by_expected = started.iter().filter(|l| l.contains(by)).count();
    let ids = send_key_ids(&log);
    eprintln!(
        "{test}: {} renegotiations ({by_expected} {by}), send key-ids {ids:?}, {loss}% loss",
        started.len()
    );
    assert_eq!(
        loss,
        0.0,
        "{loss}% of pings lost across {} renegotiations",
        started.len()
    );
    assert!(
        by_expected >= min,
        "expected at least {min} renegotiations {by}, saw:\n{}",
        started.join("\n")
    );
    // Consecutive key-ids 1, 2, ..., 7, 1, ... (never 0 again).
    assert!(ids.len() >= min, "send key-ids {ids:?}");
    let mut expect = 1;
    for id in &ids {
        assert_eq!(*id, expect, "send key-ids {ids:?}");
        expect = if expect == 7 { 1 } else { expect + 1 };
    }
    let sess = client.session();
    assert_eq!(sess["state"], "connected", "{sess}");
    assert_eq!(sess["connected_since_unix"], since, "no reconnect: {sess}");
    assert!(
        sess["renegotiations"].as_u64().unwrap() >= min as u64,
        "{sess}"
    );
    assert_eq!(sess["key_id"], *ids.last().unwrap(), "{sess}");
    assert!(!log.contains("reconnecting"), "no reconnect in the log");
    let drops = &client.try_show().unwrap()["tunnels"][0]["drops"];
    assert_eq!(
        drops["no_session"], drops0["no_session"],
        "a packet for a retired key: {drops}"
    );
    assert_eq!(drops["bad_mac"], 0, "{drops}");
    assert_eq!(drops["expired_key"], 0, "{drops}");
    let slog = s.log_of(server);
    assert!(
        !slog.contains("out of sync") && !slog.contains("TLS Error"),
        "the openvpn server complained:\n{slog}"
    );
    if by == "(by the peer)" {
        assert!(
            slog.matches("TLS: soft reset").count() >= min,
            "the server's own soft resets:\n{slog}"
        );
    }
    let text = client.show_text();
    assert!(text.contains("renegotiations:"), "{text}");
    eprintln!("{text}");
    assert!(s.try_wait(server).is_none(), "openvpn server still running");
    eprintln!("{test}: passed in {:?}", t0.elapsed());
}

/// The openvpn server renegotiates every ~19-20 s (`reneg-sec 20`, its 10 %
/// jitter); polytun's own reneg-sec is an hour.
#[test]
fn openvpn_server_reneg_sec_20_udp_zero_loss() {
    reneg_test("ovrs", Proto::Udp, "20", 3600, "(by the peer)", 130, 5);
}

/// polytun renegotiates every 20 s (a client uses reneg-sec exactly); the
/// server never does (`reneg-sec 0`).
#[test]
fn openvpn_client_reneg_sec_20_udp_zero_loss() {
    reneg_test("ovrc", Proto::Udp, "0", 20, "(reneg-sec)", 130, 5);
}

/// The same over TCP (one stream carries control and data).
#[test]
fn openvpn_server_reneg_sec_20_tcp_zero_loss() {
    reneg_test("ovrt", Proto::Tcp, "20", 3600, "(by the peer)", 130, 5);
}

/// `polytun rekey` renegotiates (soft reset), it does not reconnect.
#[test]
fn openvpn_polytun_rekey_renegotiates() {
    let (s, c, pki) = setup("ovrk");
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
    let since = client.session()["connected_since_unix"].clone();
    let cli = bins::polytun();
    for want in 1..=2u64 {
        let out = c.run_ok(&[cli.to_str().unwrap(), "-i", &client.iface, "rekey"]);
        assert!(out.contains("started"), "{out}");
        // Pings meanwhile keep data flowing both ways: the switch happens
        // as soon as the server sends with the new key.
        assert_eq!(ping(&c, ovpn::SERVER_TUN, 40), 0.0);
        wait_until(
            "the new key to carry the traffic",
            Duration::from_secs(30),
            || client.session()["key_id"] == want,
        );
    }
    let sess = client.session();
    assert_eq!(sess["connected_since_unix"], since, "{sess}");
    assert_eq!(sess["renegotiations"], 2, "{sess}");
    assert_eq!(sess["lame_duck_key_id"], 1, "{sess}");
    assert!(client.log().contains("(on request)"));
    assert!(s.try_wait(server).is_none());
}
