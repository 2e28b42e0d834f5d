//! `wg-quick up`/`down`, `wg show`, `wg showconf` and `wg syncconf` with a userspace
//! implementation chosen by `WG_QUICK_USERSPACE_IMPLEMENTATION`: polytun-wg (the product) and
//! wireguard-go (the baseline that proves this test). The peer is wireguard-go.
use polytun_e2e::scenario::{PairNet, OL_A, OL_B, PORT_A, PORT_B};
use polytun_e2e::{bins, ping, wait_ping, wait_until, Device, Impl, Keypair, Netns};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn procs_running(ns: &Netns, exe: &Path) -> Vec<u32> {
    let want = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    ns.pids()
        .into_iter()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            !zombie
                && std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|p| p == want || p.file_name() == want.file_name())
        })
        .collect()
}

fn wg_quick_test(test: &str, userspace: PathBuf) {
    let wg = bins::tool("wg");
    let wg = wg.to_str().unwrap();
    let wgq = bins::tool("wg-quick");
    let wgq = wgq.to_str().unwrap();
    let n = PairNet::new(test, false);
    // peer: wireguard-go in B, responder
    let b = Device::start(&n.b, Impl::WireguardGo, &n.cfg_b(false));

    // A: wg-quick with the userspace implementation under test; the interface name is the
    // config file's name
    let iface = polytun_e2e::unique_ifname("wq");
    let conf_text = format!(
        "[Interface]\nAddress = {OL_A}/24\nPrivateKey = {}\nListenPort = {PORT_A}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {OL_B}/32\nEndpoint = {}:{PORT_B}\n",
        n.ka.private, n.kb.public, n.vb.v4
    );
    let conf = n.a.write_file(&format!("{iface}.conf"), &conf_text);
    let conf = conf.to_str().unwrap();
    n.a.cleanup_file(format!("/var/run/wireguard/{iface}.sock"));
    let env = [(
        "WG_QUICK_USERSPACE_IMPLEMENTATION",
        userspace.to_str().unwrap(),
    )];
    let up =
        n.a.run_env(&[wgq, "up", conf], &env, Duration::from_secs(30));
    assert!(
        up.ok(),
        "wg-quick up failed ({}):\n{}\n{}",
        up.status,
        up.stdout,
        up.stderr
    );
    eprintln!("wg-quick up:\n{}", up.stderr);
    let daemons = procs_running(&n.a, &userspace);
    assert_eq!(
        daemons.len(),
        1,
        "expected one {} process in {}, found {daemons:?}",
        userspace.display(),
        n.a.name()
    );

    wait_ping(&n.a, OL_B, Duration::from_secs(20));
    let loss = ping(&n.a, OL_B, 10);
    assert_eq!(
        loss, 0.0,
        "ping through the wg-quick interface lost {loss}%"
    );

    // wg show: the peer with a handshake and traffic
    let show = n.a.run_ok(&[wg, "show", &iface]);
    assert!(
        show.contains(&n.kb.public),
        "wg show does not list the peer:\n{show}"
    );
    assert!(
        show.contains("latest handshake"),
        "wg show: no handshake:\n{show}"
    );
    let hs = n.a.run_ok(&[wg, "show", &iface, "latest-handshakes"]);
    let ts: u64 = hs
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(ts > 1_600_000_000, "latest-handshakes: {hs}");
    let (rx, _) = b.transfer();
    assert!(rx > 0, "the wireguard-go peer received nothing");

    // wg showconf reflects the configuration
    let showconf = n.a.run_ok(&[wg, "showconf", &iface]);
    for want in [
        format!("ListenPort = {PORT_A}"),
        format!("PrivateKey = {}", n.ka.private),
        format!("PublicKey = {}", n.kb.public),
        format!("Endpoint = {}:{PORT_B}", n.vb.v4),
        format!("AllowedIPs = {OL_B}/32"),
    ] {
        assert!(
            showconf.contains(&want),
            "wg showconf lacks `{want}`:\n{showconf}"
        );
    }

    // wg syncconf: add a peer, then remove it again, without disturbing the existing one
    let extra = Keypair::generate();
    let plus = n.a.write_file(
        "plus.conf",
        &format!(
            "{showconf}\n[Peer]\nPublicKey = {}\nAllowedIPs = 198.51.100.9/32\n",
            extra.public
        ),
    );
    n.a.run_ok(&[wg, "syncconf", &iface, plus.to_str().unwrap()]);
    let peers = n.a.run_ok(&[wg, "show", &iface, "peers"]);
    assert!(
        peers.contains(&extra.public) && peers.contains(&n.kb.public),
        "after syncconf (add): {peers}"
    );
    let allowed = n.a.run_ok(&[wg, "show", &iface, "allowed-ips"]);
    assert!(
        allowed.contains("198.51.100.9/32"),
        "after syncconf (add): {allowed}"
    );
    let orig = n.a.write_file("orig.conf", &showconf);
    n.a.run_ok(&[wg, "syncconf", &iface, orig.to_str().unwrap()]);
    let peers = n.a.run_ok(&[wg, "show", &iface, "peers"]);
    assert!(
        !peers.contains(&extra.public) && peers.contains(&n.kb.public),
        "after syncconf (remove): {peers}"
    );
    let loss = ping(&n.a, OL_B, 5);
    assert_eq!(
        loss, 0.0,
        "syncconf disturbed the unchanged peer: {loss}% loss"
    );

    // wg-quick down: interface gone, daemon gone, UAPI socket gone
    let down =
        n.a.run_env(&[wgq, "down", conf], &[], Duration::from_secs(30));
    assert!(
        down.ok(),
        "wg-quick down failed ({}):\n{}\n{}",
        down.status,
        down.stdout,
        down.stderr
    );
    assert!(
        !n.a.run(&["ip", "link", "show", &iface]).ok(),
        "{iface} still exists after wg-quick down"
    );
    wait_until(
        &format!("{} to exit after wg-quick down", userspace.display()),
        Duration::from_secs(10),
        || procs_running(&n.a, &userspace).is_empty(),
    );
    wait_until(
        "the UAPI socket to be removed",
        Duration::from_secs(5),
        || !Path::new(&format!("/var/run/wireguard/{iface}.sock")).exists(),
    );
}

#[test]
fn wg_quick_polytun_wg_with_wireguard_go_peer() {
    wg_quick_test("wq-p", bins::polytun_wg());
}

#[test]
fn wg_quick_wireguard_go_baseline() {
    wg_quick_test("wq-g", bins::tool("wireguard-go"));
}

/// wg-quick sets `MTU =` with `ip link` after polytun-wg has started (sized for 1420):
/// polytun-wg follows the new MTU instead of dropping the larger packets. Full-size
/// 1500-byte packets (ping -s 1472 with DF) and a checksummed TCP transfer (MSS 1460)
/// cross polytun-wg ↔ wireguard-go (the underlay veth at 9000, so nothing fragments).
#[test]
fn wg_quick_polytun_wg_follows_mtu_1500() {
    let wgq = bins::tool("wg-quick");
    let wgq = wgq.to_str().unwrap();
    let n = PairNet::new("wqmtu", false);
    for v in [&n.va, &n.vb] {
        let ns = if v.ns == n.a.name() { &n.a } else { &n.b };
        ns.ip(&["link", "set", &v.dev, "mtu", "9000"]);
    }
    let mut cb = n.cfg_b(false);
    cb.mtu = 1500;
    let _b = Device::start(&n.b, Impl::WireguardGo, &cb);
    let iface = polytun_e2e::unique_ifname("wq");
    let conf_text = format!(
        "[Interface]\nAddress = {OL_A}/24\nPrivateKey = {}\nListenPort = {PORT_A}\nMTU = 1500\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {OL_B}/32\nEndpoint = {}:{PORT_B}\n",
        n.ka.private, n.kb.public, n.vb.v4
    );
    let conf = n.a.write_file(&format!("{iface}.conf"), &conf_text);
    let conf = conf.to_str().unwrap();
    n.a.cleanup_file(format!("/var/run/wireguard/{iface}.sock"));
    let userspace = bins::polytun_wg();
    let env = [(
        "WG_QUICK_USERSPACE_IMPLEMENTATION",
        userspace.to_str().unwrap(),
    )];
    let up =
        n.a.run_env(&[wgq, "up", conf], &env, Duration::from_secs(30));
    assert!(up.ok(), "wg-quick up failed:\n{}\n{}", up.stdout, up.stderr);
    let link = n.a.run_ok(&["ip", "link", "show", &iface]);
    assert!(
        link.contains("mtu 1500"),
        "wg-quick did not set MTU 1500:\n{link}"
    );
    wait_ping(&n.a, OL_B, Duration::from_secs(20));
    // The first packet larger than the slots is the one that makes polytun-wg
    // read the new MTU; it is dropped (counted), like a packet before a PMTU update.
    let _ = polytun_e2e::ping_df(&n.a, OL_B, 1500, 1);
    let loss = polytun_e2e::ping_df(&n.a, OL_B, 1500, 5);
    assert_eq!(loss, 0.0, "1500-byte pings with DF through MTU 1500 lost");
    polytun_e2e::xfer(&n.b, &n.a, OL_B, 5201, 20 * 1024 * 1024);
    let down =
        n.a.run_env(&[wgq, "down", conf], &[], Duration::from_secs(30));
    assert!(down.ok(), "wg-quick down failed:\n{}", down.stderr);
}
