//! Checksums through two gateways, checked where nobody trusts them: site-to-site, a host on
//! each site's LAN, the hosts' traffic segmented (TSO, UDP GSO) and coalesced (GRO, USO writes)
//! by the gateways' data paths.
//!
//! A tunnel that coalesces segments writes the run to its TUN with one partial checksum that
//! the kernel completes; a host on the gateway itself trusts that without looking (the packet
//! arrives as CHECKSUM_PARTIAL), so the other tests' SHA-256 over the data cannot see a wrong
//! partial sum, nor a segment of ours whose checksum field is wrong but whose data is right.
//! Here the gateways forward to a LAN whose veth end has no checksum offload (`tx off`: the
//! gateway's kernel computes every checksum from the partial sum we left, and segments in
//! software) and the host's end no receive offload (`rx off`: the host verifies every
//! checksum in software and counts what fails in `InCsumErrors`). The test first proves that
//! the hosts do verify: datagrams with a wrong UDP checksum sent through the same path must
//! show up in the receiving host's counters.
use polytun_e2e::ipsec::{Charon, IpsecSide, PolytunIpsec};
use polytun_e2e::openvpn::{self as ovpn, Client, KeyMode, Pki, Proto};
use polytun_e2e::scenario::{PORT_A, PORT_B};
use polytun_e2e::{
    bins, ping, snmp, unique_ifname, veth_link, veth_pair, wait_until, xfer_start, DevCfg, Device,
    Impl, Keypair, Netns, PeerCfg, Veth,
};
use std::time::{Duration, Instant};

/// One site: its gateway, a host on its LAN and the host's end of the LAN's veth.
struct Site {
    name: &'static str,
    gw: Netns,
    host: Netns,
    host_lan: Veth,
}

impl Site {
    /// `lan4`/`lan6`: the gateway's and the host's addresses with their prefix lengths.
    fn new(name: &'static str, test: &str, gw: Netns, lan4: [&str; 2], lan6: [&str; 2]) -> Site {
        let host = Netns::new(test);
        let (gw_lan, host_lan) = veth_link(&gw, [lan4[0], lan6[0]], &host, [lan4[1], lan6[1]]);
        host.ip(&["route", "add", "default", "via", &gw_lan.v4]);
        host.ip(&["-6", "route", "add", "default", "via", &gw_lan.v6]);
        gw.run_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        gw.run_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let ethtool = bins::tool("ethtool");
        let ethtool = ethtool.to_str().unwrap();
        gw.run_ok(&[ethtool, "-K", &gw_lan.dev, "tx", "off"]);
        host.run_ok(&[ethtool, "-K", &host_lan.dev, "rx", "off"]);
        Site {
            name,
            gw,
            host,
            host_lan,
        }
    }
}

/// The counters that a packet with a wrong checksum, length or header moves.
const ERRORS: [&str; 8] = [
    "Ip:InHdrErrors",
    "Ip6InHdrErrors",
    "Tcp:InCsumErrors",
    "Tcp:InErrs",
    "Udp:InCsumErrors",
    "Udp:InErrors",
    "Udp6InCsumErrors",
    "Udp6InErrors",
];

fn errors(ns: &Netns) -> Vec<(&'static str, u64)> {
    let m = snmp(ns);
    ERRORS
        .iter()
        .map(|k| {
            let v = m
                .get(*k)
                .unwrap_or_else(|| panic!("no {k} in {}'s /proc/net/snmp{{,6}}", ns.name()));
            (*k, *v)
        })
        .collect()
}

/// Panics if a host counted an error since `before` was taken.
fn assert_no_new_errors(hosts: &[(&Site, &Vec<(&'static str, u64)>)]) {
    for (site, before) in hosts {
        let after = errors(&site.host);
        assert_eq!(
            &after,
            *before,
            "the host of {} ({}) counted checksum or header errors for packets that crossed the \
             tunnel",
            site.name,
            site.host.name()
        );
    }
}

/// A checksummed 20 MB TCP transfer that fails as soon as a host counts an error: a wrong
/// checksum makes TCP resend the segment, and the resent one is wrong again, so the transfer
/// would otherwise only stall.
fn transfer(
    server: &Netns,
    client: &Netns,
    addr: &str,
    port: u16,
    hosts: &[(&Site, &Vec<(&'static str, u64)>)],
) {
    let run = xfer_start(server, client, addr, port, 20 * 1024 * 1024);
    let end = Instant::now() + Duration::from_secs(60);
    while !run.done() && Instant::now() < end {
        assert_no_new_errors(hosts);
        std::thread::sleep(Duration::from_millis(100));
    }
    run.finish(Duration::from_secs(5));
}

/// tcpdump on `dev` until it has seen 3 packets of `filter` in `direction` (`in`: written
/// to the TUN by the daemon, `out`: read by it): proof that the daemon segmented or coalesced
/// there, so the test covers those paths and not only lone packets.
fn watch_super_packets(ns: &Netns, dev: &str, direction: &str, filter: &str) -> u32 {
    let td = bins::tool("tcpdump");
    let pid = ns.spawn(
        "tcpdump",
        &[
            td.to_str().unwrap(),
            "-i",
            dev,
            "-Q",
            direction,
            "-nn",
            "-l",
            "-c",
            "3",
            filter,
        ],
    );
    wait_until(
        &format!("tcpdump listening on {dev}"),
        Duration::from_secs(10),
        || ns.log_of(pid).contains("listening on"),
    );
    pid
}

fn assert_saw(ns: &Netns, pid: u32, what: &str) {
    let st = ns.wait_exit(pid, Duration::from_secs(5));
    let log = ns.log_of(pid);
    ns.kill(pid);
    assert!(
        matches!(st, Some(s) if s.success()),
        "no {what} in {}: tcpdump did not see 3 ({st:?}):\n{log}",
        ns.name()
    );
}

/// Sends `count` datagrams with a wrong UDP checksum from `from` to `to` and waits for `to`
/// to count them: the premise of the test (the hosts verify checksums in software).
fn wrong_checksums_are_counted(from: &Site, to: &Site, src: &str, dst: &str, key: &str) {
    let count = 5;
    let before = snmp(&to.host)[key];
    let x = bins::pt_xfer();
    let target = if dst.contains(':') {
        format!("[{dst}]:9")
    } else {
        format!("{dst}:9")
    };
    from.host.run_ok(&[
        x.to_str().unwrap(),
        "badsum",
        src,
        &target,
        &count.to_string(),
    ]);
    let mut now = before;
    wait_until(
        &format!(
            "the host of {} to count {count} wrong UDP checksums in {key}",
            to.name
        ),
        Duration::from_secs(10),
        || {
            now = snmp(&to.host)[key];
            now >= before + count
        },
    );
    assert_eq!(now, before + count, "{key} counted more than was sent");
}

/// Two sites: gateways joined by a veth (A 192.0.2.1, B 192.0.2.2), LAN A 203.0.113.0/25 and
/// 2001:db8:a::/64, LAN B 203.0.113.128/25 and 2001:db8:b::/64 (gateway `.1`/`::1` on each).
fn sites(test: &str) -> (Site, Site) {
    let (gwa, gwb) = (Netns::new(test), Netns::new(test));
    veth_pair(&gwa, &gwb);
    let a = Site::new(
        "site A",
        test,
        gwa,
        ["203.0.113.1/25", "203.0.113.2/25"],
        ["2001:db8:a::1/64", "2001:db8:a::2/64"],
    );
    let b = Site::new(
        "site B",
        test,
        gwb,
        ["203.0.113.129/25", "203.0.113.130/25"],
        ["2001:db8:b::1/64", "2001:db8:b::2/64"],
    );
    (a, b)
}

const LAN_A: [&str; 2] = ["203.0.113.0/25", "2001:db8:a::/64"];
const LAN_B: [&str; 2] = ["203.0.113.128/25", "2001:db8:b::/64"];

/// The checks, once the tunnel between the gateways is up. `tuns`: the TUN devices of the
/// gateways that run polytund, watched for super-packets; `v6`: the tunnel carries IPv6 too;
/// `alive` panics if a daemon died.
fn check(a: &Site, b: &Site, tuns: &[(&Site, &str)], v6: bool, alive: &dyn Fn()) {
    let (ha4, ha6) = (&a.host_lan.v4, &a.host_lan.v6);
    let (hb4, hb6) = (&b.host_lan.v4, &b.host_lan.v6);
    polytun_e2e::wait_ping(&a.host, hb4, Duration::from_secs(20));
    if v6 {
        wait_until("IPv6 from site to site", Duration::from_secs(10), || {
            ping(&a.host, hb6, 1) == 0.0
        });
    }
    let (ea, eb) = (errors(&a.host), errors(&b.host));

    // Every polytund TUN must see super-packets both ways: read from it (TSO, and UDP GSO
    // where the TUN has USO, from the LAN, which the daemon segments) and written to it
    // (coalesced). Without USO (Linux < 6.2) UDP goes as lone datagrams, checked all the same.
    let mut watches = Vec::new();
    let ethtool = bins::tool("ethtool");
    for (site, dev) in tuns {
        let features = site.gw.run_ok(&[ethtool.to_str().unwrap(), "-k", dev]);
        let on = |f: &str| features.contains(&format!("{f}: on"));
        assert!(
            on("tx-tcp-segmentation"),
            "{dev} in {} has no TSO: polytund's offload is off\n{features}",
            site.gw.name()
        );
        let mut kinds = vec![
            ("out", "tcp and greater 3000", "TCP super-packets read"),
            ("in", "tcp and greater 3000", "coalesced TCP written"),
        ];
        if on("tx-udp-segmentation") {
            kinds.push(("out", "udp and greater 2500", "UDP super-packets read"));
            kinds.push(("in", "udp and greater 2500", "coalesced UDP written"));
        } else {
            eprintln!("{dev}: no USO on this kernel; UDP is checked as lone datagrams");
        }
        for (direction, filter, what) in kinds {
            let pid = watch_super_packets(&site.gw, dev, direction, filter);
            watches.push((&site.gw, pid, what));
        }
    }

    let hosts = [(a, &ea), (b, &eb)];
    transfer(&b.host, &a.host, hb4, 5201, &hosts);
    transfer(&a.host, &b.host, ha4, 5202, &hosts);
    if v6 {
        transfer(&b.host, &a.host, hb6, 5203, &hosts);
        transfer(&a.host, &b.host, ha6, 5204, &hosts);
    }

    // UDP in GSO sends of 8: coalesced again on the far gateway's TUN (USO), segmented by its
    // kernel on the way out to the host, which checks each datagram
    let x = bins::pt_xfer();
    let x = x.to_str().unwrap();
    let count = 2000u64;
    let bursts = [
        (a, b, format!("{hb4}:9"), "Udp:NoPorts"),
        (b, a, format!("{ha4}:9"), "Udp:NoPorts"),
        (a, b, format!("[{hb6}]:9"), "Udp6NoPorts"),
        (b, a, format!("[{ha6}]:9"), "Udp6NoPorts"),
    ];
    for (from, to, dst, key) in &bursts[..if v6 { 4 } else { 2 }] {
        let (from, to, key) = (*from, *to, *key);
        let before = snmp(&to.host)[key];
        from.host
            .run_ok(&[x, "burst", dst, "1000", &count.to_string()]);
        let mut got = 0;
        wait_until(
            &format!("the host of {} to take {count} datagrams to {dst}", to.name),
            Duration::from_secs(10),
            || {
                got = snmp(&to.host)[key] - before;
                got >= count / 2
            },
        );
        eprintln!("{dst}: {got} of {count} datagrams arrived");
    }

    for (gw, pid, what) in watches {
        assert_saw(gw, pid, what);
    }
    assert_no_new_errors(&hosts);
    alive();

    // the premise: these hosts do check (a host that trusted its veth would count nothing)
    wrong_checksums_are_counted(a, b, ha4, hb4, "Udp:InCsumErrors");
    wrong_checksums_are_counted(b, a, hb4, ha4, "Udp:InCsumErrors");
    if v6 {
        wrong_checksums_are_counted(a, b, ha6, hb6, "Udp6InCsumErrors");
        wrong_checksums_are_counted(b, a, hb6, ha6, "Udp6InCsumErrors");
    }
}

/// WireGuard: gateway A runs `imp_a` and initiates, gateway B polytund.
fn wireguard(test: &str, imp_a: Impl) {
    let (a, b) = sites(test);
    let (ka, kb) = (Keypair::generate(), Keypair::generate());
    let peer = |k: &Keypair, endpoint: Option<String>, inner: &str, lan: [&str; 2]| PeerCfg {
        public_key: k.public.clone(),
        preshared_key: None,
        endpoint,
        allowed_ips: vec![inner.into(), lan[0].into(), lan[1].into()],
        persistent_keepalive: None,
    };
    let mut ca = DevCfg::new(&ka.private, PORT_A, "198.51.100.1/24");
    ca.peers.push(peer(
        &kb,
        Some(format!("192.0.2.2:{PORT_B}")),
        "198.51.100.2/32",
        LAN_B,
    ));
    let mut cb = DevCfg::new(&kb.private, PORT_B, "198.51.100.2/24");
    cb.peers.push(peer(&ka, None, "198.51.100.1/32", LAN_A));
    let db = Device::start(&b.gw, Impl::Polytun, &cb);
    let da = Device::start(&a.gw, imp_a, &ca);
    let mut tuns = vec![(&b, db.iface.as_str())];
    if imp_a.uapi() {
        // polytund routes its peers' allowed IPs itself; wg-quick would for these
        for net in LAN_B {
            a.gw.ip(&["route", "add", net, "dev", &da.iface]);
        }
    } else {
        tuns.push((&a, da.iface.as_str()));
    }
    check(&a, &b, &tuns, true, &|| {
        da.assert_alive();
        db.assert_alive();
    });
}

/// IPsec (ESP in UDP, as polytund always sends it): gateway B polytund, gateway A polytund or
/// strongSwan (kernel-libipsec); A initiates.
fn ipsec(test: &str, a_is_polytun: bool) {
    let (a, b) = sites(test);
    let (mut sa, mut sb) = IpsecSide::psk_pair("aes256gcm16", true);
    for (side, inner, lan, rinner, rlan) in [
        (&mut sa, "198.51.100.1/32", LAN_A, "198.51.100.2/32", LAN_B),
        (&mut sb, "198.51.100.2/32", LAN_B, "198.51.100.1/32", LAN_A),
    ] {
        side.local_ts = [inner, lan[0], lan[1]].join(",");
        side.remote_ts = [rinner, rlan[0], rlan[1]].join(",");
    }
    let ib = unique_ifname("ipb");
    let pb = PolytunIpsec::start(&b.gw, &ib, &sb);
    let ia = unique_ifname("ipa");
    let mut tuns = vec![(&b, ib.as_str())];
    let (pa, charon);
    if a_is_polytun {
        pa = Some(PolytunIpsec::start(&a.gw, &ia, &sa));
        charon = None;
        tuns.push((&a, ia.as_str()));
    } else {
        pa = None;
        let c = Charon::start(&a.gw, &sa);
        c.initiate();
        charon = Some(c);
    }
    check(&a, &b, &tuns, true, &|| {
        let pids = [Some((pb.ns, pb.pid)), pa.as_ref().map(|p| (p.ns, p.pid))];
        let pids = pids
            .into_iter()
            .chain([charon.as_ref().map(|c| (c.ns, c.pid))]);
        for (ns, pid) in pids.flatten() {
            if let Some(st) = ns.try_wait(pid) {
                panic!("a gateway's daemon exited ({st}):\n{}", ns.log_of(pid));
            }
        }
    });
}

/// OpenVPN (UDP, IPv4 and IPv6 inside): gateway A runs the server with LAN A pushed and LAN B
/// routed to the client (`iroute`), gateway B polytund as its client. The server is the
/// `openvpn` 2.6 one (a client-config-dir file) or polytund (`iroutes`).
fn openvpn(test: &str, server_is_polytun: bool) {
    let (a, b) = sites(test);
    let pki = Pki::new(&a.gw);
    let mut tuns = Vec::new();
    let (server, ours);
    if server_is_polytun {
        let tunnel = ovpn::with_push(
            &ovpn::server_tunnel_toml(
                &pki,
                "192.0.2.1",
                Proto::Udp,
                KeyMode::TlsCrypt,
                &["AES-256-GCM"],
            ),
            &[
                "route 203.0.113.0 255.255.255.128",
                &format!("route-ipv6 {}", LAN_A[1]),
            ],
        ) + &format!(
            "server_ipv6 = \"2001:db8:5::/64\"\niroutes = {{ client = [\"{}\", \"{}\"] }}\n",
            LAN_B[0], LAN_B[1]
        );
        ours = Some(Client::start(&a.gw, &tunnel));
        server = None;
    } else {
        let ccd = a.gw.dir().join("ccd");
        std::fs::create_dir_all(&ccd).expect("create ccd");
        // the client certificate's CN is `client`
        std::fs::write(
            ccd.join("client"),
            format!(
                "iroute 203.0.113.128 255.255.255.128\niroute-ipv6 {}\n",
                LAN_B[1]
            ),
        )
        .expect("write ccd/client");
        let conf = ovpn::server_conf(
            &pki,
            "192.0.2.1",
            Proto::Udp,
            KeyMode::TlsCrypt,
            "AES-256-GCM",
        )
        .replace(
            "push \"route 203.0.113.0 255.255.255.0\"",
            "push \"route 203.0.113.0 255.255.255.128\"",
        ) + &format!(
            "client-config-dir {}\nroute 203.0.113.128 255.255.255.128\n\
             server-ipv6 2001:db8:5::/64\npush \"route-ipv6 {}\"\nroute-ipv6 {}\n",
            ccd.display(),
            LAN_A[1],
            LAN_B[1]
        );
        server = Some(ovpn::start_server(&a.gw, &conf));
        ours = None;
    }
    let client = Client::start(
        &b.gw,
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
    tuns.push((&b, client.iface.as_str()));
    if let Some(s) = &ours {
        tuns.push((&a, s.iface.as_str()));
    }
    check(&a, &b, &tuns, true, &|| {
        client.assert_alive();
        if let Some(s) = &ours {
            s.assert_alive();
        }
        if let Some(pid) = server {
            if let Some(st) = a.gw.try_wait(pid) {
                panic!("openvpn exited ({st}):\n{}", a.gw.log_of(pid));
            }
        }
    });
}

#[test]
fn wireguard_polytun_gateways_keep_checksums_right() {
    wireguard("sck-pp", Impl::Polytun);
}

#[test]
fn wireguard_go_and_polytun_gateways_keep_checksums_right() {
    wireguard("sck-pg", Impl::WireguardGo);
}

#[test]
fn ipsec_polytun_gateways_keep_checksums_right() {
    ipsec("sck-ipp", true);
}

#[test]
fn strongswan_and_polytun_gateways_keep_checksums_right() {
    ipsec("sck-ips", false);
}

#[test]
fn openvpn_and_polytun_gateways_keep_checksums_right() {
    openvpn("sck-ov", false);
}

#[test]
fn openvpn_polytun_gateways_keep_checksums_right() {
    openvpn("sck-ovp", true);
}
