//! Issue 3: polytund's IPsec (IKEv2 PSK + ESP in UDP 4500) against strongSwan 5.9 with
//! kernel-libipsec, each side initiating, ESP AES-GCM-256 and ChaCha20-Poly1305; and polytun
//! against polytun with the example site-to-site configs. Each test: the tunnel comes up, 10+10
//! pings without loss, a 50 MB checksummed TCP transfer one way and 5 MB back, SAs and byte
//! counters on both sides, and `polytun down` deletes the IKE SA at the peer (CT).
use polytun_e2e::ipsec::{gen_psk, polytun_toml, Charon, IpsecSide, PolytunIpsec};
use polytun_e2e::{ping, unique_ifname, veth_pair, wait_ping, wait_until, xfer, Netns, XFER_BYTES};
use std::time::{Duration, Instant};

const IN_A: &str = "198.51.100.1";
const IN_B: &str = "198.51.100.2";

fn sides(esp: &str, a_initiates: bool) -> (IpsecSide, IpsecSide) {
    IpsecSide::psk_pair(esp, a_initiates)
}

/// Pings both ways and the checksummed transfers (a → b 50 MB, b → a 5 MB).
fn traffic(a: &Netns, b: &Netns) {
    wait_ping(a, IN_B, Duration::from_secs(20));
    let loss = ping(a, IN_B, 10);
    assert_eq!(loss, 0.0, "ping {IN_B} from A lost {loss}%");
    let loss = ping(b, IN_A, 10);
    assert_eq!(loss, 0.0, "ping {IN_A} from B lost {loss}%");
    let t = Instant::now();
    xfer(b, a, IN_B, 5201, XFER_BYTES);
    eprintln!("50 MB A -> B through ESP in {:?}", t.elapsed());
    xfer(a, b, IN_A, 5202, 5 * 1024 * 1024);
}

fn check_polytun(p: &PolytunIpsec<'_>, want_esp: &str, initiator: bool) {
    let sas = p.ike_sas();
    let est: Vec<_> = sas.iter().filter(|s| s["state"] == "ESTABLISHED").collect();
    assert_eq!(
        est.len(),
        1,
        "polytun show: one established IKE SA expected: {sas:?}"
    );
    let sa = est[0];
    assert_eq!(sa["initiator"].as_bool(), Some(initiator), "{sa}");
    assert_eq!(
        sa["algorithms"], "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519",
        "{sa}"
    );
    let ch = sa["children"].as_array().cloned().unwrap_or_default();
    assert_eq!(ch.len(), 1, "one CHILD SA expected: {sa}");
    assert_eq!(ch[0]["transform"], want_esp, "{sa}");
    assert!(
        ch[0]["encap"].as_bool().unwrap_or(false),
        "ESP in UDP expected: {sa}"
    );
    let (rx, tx) = p.child_bytes();
    assert!(
        rx > XFER_BYTES / 20 && tx > 0,
        "CHILD SA byte counters rx={rx} tx={tx} do not show the transfer"
    );
    let text = p.show_text();
    assert!(
        text.contains("ESTABLISHED, IKEv2") && text.contains("INSTALLED, TUNNEL-in-UDP, ESP:"),
        "{text}"
    );
    eprintln!("polytun show:\n{text}");
}

fn strongswan_pair(test: &str, esp: &str, polytun_initiates: bool, want_esp: &str) {
    let a = Netns::new(test);
    let b = Netns::new(test);
    let (_va, _vb) = veth_pair(&a, &b);
    let (sa, sb) = sides(esp, polytun_initiates);
    let iface = unique_ifname("ptip");
    let t0 = Instant::now();
    let (p, c) = if polytun_initiates {
        let c = Charon::start(&b, &sb);
        let p = PolytunIpsec::start(&a, &iface, &sa);
        (p, c)
    } else {
        let p = PolytunIpsec::start(&a, &iface, &sa);
        let c = Charon::start(&b, &sb);
        c.initiate();
        (p, c)
    };
    wait_until("the IKE SA at polytun", Duration::from_secs(20), || {
        p.ike_sas().iter().any(|s| {
            s["state"] == "ESTABLISHED" && !s["children"].as_array().is_none_or(|c| c.is_empty())
        })
    });
    eprintln!("tunnel up after {:?}", t0.elapsed());
    traffic(&a, &b);
    check_polytun(&p, want_esp, polytun_initiates);
    let list = c.list_sas();
    assert!(
        list.contains("ESTABLISHED") && list.contains("INSTALLED"),
        "strongSwan: {list}"
    );
    assert_eq!(
        c.child_alg().as_deref(),
        Some(want_esp),
        "strongSwan: {list}"
    );
    // CT: polytun down deletes the IKE SA at strongSwan too
    p.down();
    wait_until(
        "strongSwan to drop the IKE SA after polytun down",
        Duration::from_secs(10),
        || !c.list_sas().contains("ESTABLISHED"),
    );
    let log = c.log();
    assert!(
        log.contains("received DELETE for IKE_SA"),
        "strongSwan log has no DELETE:\n{log}"
    );
}

#[test]
fn polytun_initiates_strongswan_psk_aes_gcm() {
    strongswan_pair("ssag-a", "aes256gcm16", true, "AES_GCM_16-256");
}

#[test]
fn strongswan_initiates_polytun_psk_aes_gcm() {
    strongswan_pair("ssag-b", "aes256gcm16", false, "AES_GCM_16-256");
}

#[test]
fn polytun_initiates_strongswan_psk_chacha20() {
    strongswan_pair("sscp-a", "chacha20poly1305", true, "CHACHA20_POLY1305");
}

#[test]
fn strongswan_initiates_polytun_psk_chacha20() {
    strongswan_pair("sscp-b", "chacha20poly1305", false, "CHACHA20_POLY1305");
}

/// AES-CBC + HMAC-SHA2-256-128: a transform with another ESP header and
/// padding than the AEADs, so polytun's outbound arena, laid out for
/// AES-GCM at start, spills the first packets and switches its layout.
#[test]
fn polytun_initiates_strongswan_psk_aes_cbc_sha256() {
    strongswan_pair(
        "sscbc-a",
        "aes256-sha256",
        true,
        "AES_CBC-256/HMAC_SHA2_256_128",
    );
}

/// SIGHUP with a changed IPsec tunnel restarts it: the old tunnel lets its
/// sockets go (UDP 4500 is received by a data-path thread, which must stop
/// polling it), the new one binds them again, brings up a new IKE SA with
/// strongSwan, and traffic flows through it.
#[test]
fn polytun_reload_restarts_a_changed_ipsec_tunnel_with_strongswan() {
    let a = Netns::new("ssreload");
    let b = Netns::new("ssreload");
    let (_va, _vb) = veth_pair(&a, &b);
    let (mut sa, sb) = sides("aes256gcm16", true);
    let iface = unique_ifname("ptrl");
    let c = Charon::start(&b, &sb);
    let p = PolytunIpsec::start(&a, &iface, &sa);
    let established = || {
        p.ike_sas()
            .iter()
            .filter(|s| s["state"] == "ESTABLISHED")
            .filter_map(|s| s["spi_i"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    wait_until("the first IKE SA", Duration::from_secs(20), || {
        !established().is_empty()
    });
    let first = established();
    wait_ping(&a, IN_B, Duration::from_secs(20));

    sa.polytun_extra = "dpd_delay = \"20s\"\n".into();
    a.write_file(&format!("{iface}.toml"), &polytun_toml(&iface, &sa));
    // SAFETY: a signal to the polytund this test started.
    unsafe { libc::kill(p.pid as i32, libc::SIGHUP) };
    wait_until(
        "a new IKE SA after the reload",
        Duration::from_secs(20),
        || {
            let now = established();
            !now.is_empty() && now.iter().all(|s| !first.contains(s))
        },
    );
    traffic(&a, &b);
    let log = p.log();
    assert!(
        log.contains("restarting it") && !log.contains("cannot listen"),
        "polytund log:\n{log}"
    );
    let list = c.list_sas();
    assert!(list.contains("ESTABLISHED"), "strongSwan: {list}");
}

/// polytun ↔ polytun over namespaces, with the example configs of `configs/` (interface names
/// and the PSK replaced so that tests can run in parallel).
#[test]
fn ipsec_polytun_polytun_example_configs() {
    let root = polytun_e2e::bins::workspace_root();
    let a = Netns::new("ipp");
    let b = Netns::new("ipp");
    let (_va, _vb) = veth_pair(&a, &b);
    let psk = format!("0s{}", gen_psk());
    let load = |f: &str, iface: &str| {
        let text = std::fs::read_to_string(root.join("configs").join(f))
            .unwrap_or_else(|e| panic!("configs/{f}: {e}"));
        assert!(
            text.contains("DEMO"),
            "configs/{f} should mark its demo PSK"
        );
        let demo_psk = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("psk = \""))
            .and_then(|r| r.split('"').next())
            .expect("psk line")
            .to_string();
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = \""))
            .and_then(|r| r.split('"').next())
            .expect("name line")
            .to_string();
        text.replace(&demo_psk, &psk)
            .replace(&format!("\"{name}\""), &format!("\"{iface}\""))
    };
    let ia = unique_ifname("ipa");
    let ib = unique_ifname("ipb");
    let cb = load("ipsec-site-b.toml", &ib);
    let ca = load("ipsec-site-a.toml", &ia);
    // site LANs from the examples live on lo
    a.ip(&["addr", "add", "203.0.113.1/25", "dev", "lo"]);
    b.ip(&["addr", "add", "203.0.113.129/25", "dev", "lo"]);
    let t0 = Instant::now();
    let pb = PolytunIpsec::start_toml(&b, &ib, &cb);
    let pa = PolytunIpsec::start_toml(&a, &ia, &ca);
    wait_ping(&a, IN_B, Duration::from_secs(20));
    eprintln!("polytun <-> polytun up after {:?}", t0.elapsed());
    traffic(&a, &b);
    // the site LANs behind each gateway
    let loss = ping(&a, "203.0.113.129", 5);
    assert_eq!(loss, 0.0, "LAN B from A lost {loss}%");
    check_polytun(&pa, "AES_GCM_16-256", true);
    check_polytun(&pb, "AES_GCM_16-256", false);
    pa.down();
    wait_until(
        "B to drop the IKE SA after A's polytun down",
        Duration::from_secs(10),
        || pb.ike_sas().is_empty(),
    );
}

/// NAT traversal: polytun (left, 192.0.2.2) behind a router that masquerades it as 203.0.113.1
/// initiates to strongSwan (right, 203.0.113.2), which accepts it from any address. IKE moves to
/// 4500 and ESP flows UDP-encapsulated through the NAT mapping both ways.
#[test]
fn polytun_behind_nat_initiates_strongswan() {
    let r = polytun_e2e::Router::new("ssnat", true);
    let (mut sa, mut sb) = sides("aes256gcm16", true);
    sa.local_addr = r.left_addr.clone();
    sa.remote_addr = r.right_addr.clone();
    sb.local_addr = r.right_addr.clone();
    sb.remote_addr = "%any".into();
    let iface = unique_ifname("ptnt");
    let c = Charon::start(&r.right, &sb);
    let p = PolytunIpsec::start(&r.left, &iface, &sa);
    traffic(&r.left, &r.right);
    let list = c.list_sas();
    // strongSwan sees the NAT's address, not polytun's
    assert!(
        list.contains("203.0.113.1[") && !list.contains("192.0.2.2["),
        "strongSwan should see polytun behind the NAT (203.0.113.1):\n{list}"
    );
    let sas = p.ike_sas();
    assert!(
        sas.iter().any(|s| s["state"] == "ESTABLISHED"
            && s["remote"].as_str().is_some_and(|r| r.ends_with("[4500]"))),
        "polytun should talk to strongSwan on 4500: {sas:?}"
    );
}

// The rekey tests (CHILD and IKE SA rekeys by either side, the soak, `polytun rekey`), DPD and
// several CHILD SAs are in ipsec_strongswan_rekey.rs.

/// `ip link set mtu` on polytun's interface after the tunnel is up: the ESP data path lays its
/// outbound arena out again for the new MTU (the first larger packet is dropped, counted, and
/// makes it read the MTU), and 1500-byte packets then cross to strongSwan with DF set, pings and
/// a TCP transfer both ways. Without it every such packet is dropped for good.
#[test]
fn ipsec_strongswan_follows_mtu_raised_with_ip_link() {
    let a = Netns::new("ssmtu");
    let b = Netns::new("ssmtu");
    let (va, vb) = veth_pair(&a, &b);
    // room for a 1500-byte packet plus ESP-in-UDP on the wire, as for jumbo frames
    a.ip(&["link", "set", &va.dev, "mtu", "9000"]);
    b.ip(&["link", "set", &vb.dev, "mtu", "9000"]);
    let (sa, sb) = sides("aes256gcm16", true);
    let iface = unique_ifname("ptmt");
    let _c = Charon::start(&b, &sb);
    let _p = PolytunIpsec::start(&a, &iface, &sa);
    wait_ping(&a, IN_B, Duration::from_secs(20));
    let link = a.run_ok(&["ip", "link", "show", &iface]);
    assert!(
        !link.contains("mtu 1500"),
        "the test needs polytun's interface below MTU 1500 at start:\n{link}"
    );
    a.ip(&["link", "set", &iface, "mtu", "1500"]);
    // The first larger packet makes the data path read the MTU (it is dropped, counted).
    let _ = polytun_e2e::ping_df(&a, IN_B, 1500, 1);
    let loss = polytun_e2e::ping_df(&a, IN_B, 1500, 5);
    assert_eq!(
        loss, 0.0,
        "1500-byte pings with DF after raising the MTU to 1500 lost"
    );
    xfer(&b, &a, IN_B, 5201, 20 * 1024 * 1024);
    xfer(&a, &b, IN_A, 5202, 5 * 1024 * 1024);
}
