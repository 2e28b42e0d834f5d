//! Bad input on the listening port: malformed, truncated, replayed and wrong-MAC datagrams are
//! dropped and counted (`polytun show --json` → tunnels[0].drops), the daemon survives, the tunnel
//! keeps working and replayed packets do not move the peer's endpoint.
//!
//! The replayed and wrong-MAC packets are real transport-data packets of the running session,
//! captured with tcpdump on the underlay and re-sent from the peer's namespace with pt-xfer.
use polytun_e2e::pcap;
use polytun_e2e::scenario::{PairNet, OL_A, OL_B, PORT_A, PORT_B};
use polytun_e2e::{bins, ping, wait_ping, wait_until, Device, Impl, Netns};
use serde_json::Value;
use std::time::Duration;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Pseudo-random filler (deterministic).
fn junk(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn inject(ns: &Netns, target: &str, payload: &[u8], count: u32) {
    let x = bins::pt_xfer();
    ns.run_ok(&[
        x.to_str().unwrap(),
        "udp",
        target,
        &hex(payload),
        &count.to_string(),
    ]);
}

/// Capture transport-data datagrams (WireGuard type 4) sent by the peer to `port` on `dev`.
fn capture_data_packets(
    ns: &Netns,
    dev: &str,
    port: u16,
    pinger: &Netns,
    dst: &str,
) -> Vec<Vec<u8>> {
    let td = bins::tool("tcpdump");
    let file = ns.dir().join("cap.pcap");
    let filter = format!("udp and dst port {port}");
    let pid = ns.spawn(
        "tcpdump",
        &[
            td.to_str().unwrap(),
            "-i",
            dev,
            "-U",
            "-n",
            "-c",
            "20",
            "-w",
            file.to_str().unwrap(),
            &filter,
        ],
    );
    std::thread::sleep(Duration::from_millis(700)); // let tcpdump attach
    for _ in 0..10 {
        ping(pinger, dst, 10);
        if ns.try_wait(pid).is_some() {
            break;
        }
    }
    ns.kill(pid);
    let data = std::fs::read(&file).unwrap_or_default();
    let pkts: Vec<Vec<u8>> = pcap::udp_datagrams(&data)
        .into_iter()
        .map(|d| d.payload)
        .filter(|p| p.len() >= 32 && p[0] == 4)
        .collect();
    assert!(
        !pkts.is_empty(),
        "captured no WireGuard data packets ({} bytes of pcap):\n{}",
        data.len(),
        ns.log_of(pid)
    );
    pkts
}

fn counter(d: &Value, k: &str) -> u64 {
    d[k].as_u64()
        .unwrap_or_else(|| panic!("drops.{k} missing in {d}"))
}

/// The system under attack runs in A (responder, listening on PORT_A); wireguard-go in B
/// initiates and is also where the attacker's datagrams come from.
fn bad_input_test(test: &str, imp: Impl) {
    let n = PairNet::new(test, true);
    let a = Device::start(&n.a, imp, &n.cfg_a(false));
    let _b = Device::start(&n.b, Impl::WireguardGo, &n.cfg_b(true));
    wait_ping(&n.b, OL_A, Duration::from_secs(20));
    let target = format!("{}:{PORT_A}", n.va.v4);
    let counted = imp == Impl::Polytun;
    let drops = || if counted { a.drops() } else { Value::Null };

    let captured = capture_data_packets(&n.a, &n.va.dev, PORT_A, &n.b, OL_A);

    // each step: what to send, which counter must go up
    let mut steps: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "unknown message type",
            vec![junk(64, 1), vec![0xff; 148], vec![0, 0, 0, 0]],
            "malformed",
        ),
        ("1-byte datagrams", vec![vec![1], vec![4]], "malformed"),
        (
            "truncated handshake initiation/response/cookie and short data",
            vec![
                [&[1u8, 0, 0, 0][..], &junk(100, 2)].concat(),
                [&[2u8, 0, 0, 0][..], &junk(40, 3)].concat(),
                [&[3u8, 0, 0, 0][..], &junk(20, 4)].concat(),
                [&[4u8, 0, 0, 0][..], &junk(12, 5)].concat(),
                captured[0][..captured[0].len().min(31)].to_vec(),
            ],
            "malformed",
        ),
        (
            "handshake initiation with a wrong mac1",
            vec![[&[1u8, 0, 0, 0][..], &junk(144, 6)].concat()],
            "bad_mac",
        ),
        ("replayed data packets", captured.clone(), "replayed"),
    ];
    // wrong MAC on data: a captured packet with a fresh (far-ahead) counter and a flipped tag byte
    let mut forged = Vec::new();
    for (i, p) in captured.iter().take(5).enumerate() {
        let mut p = p.clone();
        p[8..16].copy_from_slice(&(1u64 << 40 | i as u64).to_le_bytes());
        let last = p.len() - 1;
        p[last] ^= 0x55;
        forged.push(p);
    }
    steps.push((
        "data packets with a wrong authentication tag",
        forged,
        "bad_mac",
    ));
    // data for a session that does not exist: a captured packet with another receiver index
    let mut orphans = Vec::new();
    for (i, p) in captured.iter().take(3).enumerate() {
        let mut p = p.clone();
        let idx = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        p[4..8].copy_from_slice(&(!idx ^ 0x5eed_0000 ^ i as u32).to_le_bytes());
        orphans.push(p);
    }
    steps.push((
        "data packets for an unknown receiver index",
        orphans,
        "no_session",
    ));

    // a zero-length datagram must not hurt (counting it is optional: it carries nothing)
    inject(&n.b, &target, &[], 3);
    a.assert_alive();

    for (what, pkts, ctr) in steps {
        let before = drops();
        for p in &pkts {
            inject(&n.b, &target, p, 3);
        }
        a.assert_alive();
        if counted {
            // every datagram was sent 3 times over a quiet veth: each one must be counted once,
            // under this counter and no other
            let sent = 3 * pkts.len() as u64;
            let want = counter(&before, ctr) + sent;
            wait_until(
                &format!("drops.{ctr} to count all {sent} {what}"),
                Duration::from_secs(5),
                || counter(&a.drops(), ctr) >= want,
            );
            std::thread::sleep(Duration::from_millis(200));
            let after = a.drops();
            assert_eq!(
                counter(&after, ctr),
                want,
                "drops.{ctr} after the {what}: {before} -> {after}"
            );
            for (k, v) in before.as_object().expect("drops is an object") {
                if k != ctr {
                    assert_eq!(
                        &after[k], v,
                        "the {what} were (also) counted as drops.{k}: {before} -> {after}"
                    );
                }
            }
            eprintln!("{what}: drops {} -> {}", before, a.drops());
        }
    }

    // the tunnel still works and the endpoint did not move to the attacker's source port
    a.assert_alive();
    let loss = ping(&n.b, OL_A, 10);
    assert_eq!(loss, 0.0, "the tunnel lost {loss}% after the bad input");
    let loss = ping(&n.a, OL_B, 5);
    assert_eq!(
        loss, 0.0,
        "the tunnel lost {loss}% after the bad input (other direction)"
    );
    let want = format!("{}:{PORT_B}", n.vb.v4);
    assert_eq!(
        a.endpoints(),
        vec![want],
        "replayed/forged packets moved the peer's endpoint"
    );
}

#[test]
fn bad_input_polytun_counts_and_survives() {
    bad_input_test("bad-p", Impl::Polytun);
}

/// The same attack against wireguard-go (no counters): proves the capture/replay machinery and
/// that the checks after the attack are fair.
#[test]
fn bad_input_wireguard_go_baseline() {
    bad_input_test("bad-g", Impl::WireguardGo);
}
