//! Handshake flood (whitepaper §5.3, RFC 8922 "SAV"): a third namespace floods the responder's
//! port with handshake initiations that carry a valid mac1 (so they pass the cheap check and
//! would cost a DH each). Under that load the responder must answer with cookie replies instead
//! of doing the work, never with a handshake response (the payload is junk), and the established
//! tunnel must keep carrying traffic during and after the flood.
use polytun_e2e::netns::veth_pair_net;
use polytun_e2e::scenario::{PairNet, OL_A, PORT_A};
use polytun_e2e::{bins, ping, wait_ping, Device, Impl, Netns};
use std::time::Duration;

const FLOOD: u64 = 20_000;

fn flood_test(test: &str, imp: Impl) {
    let n = PairNet::new(test, false);
    let a = Device::start(&n.a, imp, &n.cfg_a(false));
    let _b = Device::start(&n.b, Impl::WireguardGo, &n.cfg_b(true));
    wait_ping(&n.b, OL_A, Duration::from_secs(20));

    // the attacker has its own link to A: 203.0.113.1 -> A's 203.0.113.2
    let attacker = Netns::new(test);
    let (_x, ax) = veth_pair_net(&attacker, &n.a, "203.0.113", "2001:db8:1:");
    let target = format!("{}:{PORT_A}", ax.v4);

    let p = bins::tool("ping");
    let pinger = n.b.spawn(
        "ping-during-flood",
        &[
            p.to_str().unwrap(),
            "-c",
            "40",
            "-i",
            "0.1",
            "-W",
            "1",
            OL_A,
        ],
    );
    let x = bins::pt_xfer();
    let out = attacker.run_env(
        &[
            x.to_str().unwrap(),
            "hsflood",
            &target,
            &n.ka.public,
            &FLOOD.to_string(),
        ],
        &[],
        Duration::from_secs(120),
    );
    assert!(out.ok(), "hsflood failed: {}{}", out.stdout, out.stderr);
    eprintln!("{}{}", out.stdout, out.stderr);
    let field = |k: &str| -> u64 {
        out.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {}", out.stdout))
    };
    a.assert_alive();
    assert_eq!(
        field("responses"),
        0,
        "junk initiations got handshake responses"
    );
    assert!(
        field("cookie_replies") > 0,
        "{} initiations with a valid mac1 and no cookie reply: the responder is not under-load aware ({})",
        FLOOD,
        out.stdout.trim()
    );

    n.b.wait_exit(pinger, Duration::from_secs(30));
    let log = n.b.log_of(pinger);
    let loss: f64 = log
        .lines()
        .find_map(|l| {
            let i = l.find("% packet loss")?;
            l[..i].rsplit([' ', ',']).next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("ping output: {log}"));
    assert!(
        loss <= 25.0,
        "the established tunnel lost {loss}% during the flood:\n{log}"
    );
    let loss = ping(&n.b, OL_A, 10);
    assert_eq!(loss, 0.0, "the tunnel lost {loss}% after the flood");
}

#[test]
fn handshake_flood_polytun_sends_cookies_and_survives() {
    flood_test("hsf-p", Impl::Polytun);
}

#[test]
fn handshake_flood_wireguard_go_baseline() {
    flood_test("hsf-g", Impl::WireguardGo);
}
