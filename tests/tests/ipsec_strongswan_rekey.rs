//! Issue 3: rekeys, DPD and several CHILD SAs between polytund and strongSwan 5.9
//! (kernel-libipsec), under a steady ping: CHILD and IKE SA rekeys (CREATE_CHILD_SA) started
//! by strongSwan, by polytun (either role, by time and by `polytun rekey`), and by both at once
//! with ~15 s lifetimes for over two minutes; reauthentication; DPD with `restart` and `clear`
//! against a peer black-holed with nftables; two CHILD SAs in one IKE SA. Every test ends with
//! `swanctl --list-sas` and `polytun show --json` agreeing on the IKE and CHILD SA SPIs, with
//! nothing orphaned on either side.
use polytun_e2e::ipsec::{wait_sas_agree, Charon, IpsecSide, PolytunIpsec, SaList};
use polytun_e2e::traffic::{ping_result, spawn_ping};
use polytun_e2e::{ping, unique_ifname, veth_pair, wait_ping, wait_until, Netns};
use std::time::{Duration, Instant};

const IN_B: &str = "198.51.100.2";

/// A (polytun, 192.0.2.1) and B (strongSwan, 192.0.2.2).
fn sides(esp: &str, polytun_initiates: bool) -> (IpsecSide, IpsecSide) {
    IpsecSide::psk_pair(esp, polytun_initiates)
}

/// Starts both sides (the initiator last) and waits for a working tunnel.
fn up<'a>(
    a: &'a Netns,
    b: &'a Netns,
    sa: &IpsecSide,
    sb: &IpsecSide,
) -> (PolytunIpsec<'a>, Charon<'a>) {
    let iface = unique_ifname("ptrk");
    let (p, c) = if sa.initiate {
        let c = Charon::start(b, sb);
        (PolytunIpsec::start(a, &iface, sa), c)
    } else {
        let p = PolytunIpsec::start(a, &iface, sa);
        let c = Charon::start(b, sb);
        c.initiate();
        (p, c)
    };
    wait_until("the IKE SA at polytun", Duration::from_secs(30), || {
        p.ike_sas().iter().any(|s| {
            s["state"] == "ESTABLISHED" && !s["children"].as_array().is_none_or(|c| c.is_empty())
        })
    });
    wait_ping(a, IN_B, Duration::from_secs(20));
    (p, c)
}

/// Counts in polytund's log: (CHILD SA rekeys, IKE SA rekeys, collisions).
fn rekey_counts(p: &PolytunIpsec<'_>) -> (usize, usize, usize) {
    let log = p.log();
    (
        log.matches("CHILD SA rekeyed").count(),
        log.matches(" rekeyed into ").count(),
        log.matches("rekey collision").count(),
    )
}

/// Pings A → B `count` times at 5/s in the background while `during` runs;
/// asserts that none was lost.
fn pinging(a: &Netns, count: u32, what: &str, during: impl FnOnce()) {
    let pid = spawn_ping(a, IN_B, count);
    during();
    let (sent, received) = ping_result(a, pid, Duration::from_secs(60 + u64::from(count)));
    assert_eq!(sent, count, "ping sent {sent} of {count}");
    assert_eq!(
        received,
        sent,
        "{} of {sent} pings lost {what}: {:?}",
        sent - received,
        polytun_e2e::traffic::ping_losses(a, pid)
    );
}

/// strongSwan rekeys the CHILD SA (CREATE_CHILD_SA) every ~5 s, polytun
/// answers; make-before-break must keep a steady ping lossless, and neither
/// side may keep an orphaned SA.
fn strongswan_rekeys_child(test: &str, esp: &str) {
    let a = Netns::new(test);
    let b = Netns::new(test);
    let (_va, _vb) = veth_pair(&a, &b);
    let (sa, mut sb) = sides(esp, false);
    sb.child_rekey_secs = Some(5);
    let (p, c) = up(&a, &b, &sa, &sb);
    // 25 s of pings, 5 per second: four or five rekeys happen meanwhile.
    pinging(&a, 125, "across strongSwan's CHILD SA rekeys", || {});
    let (rekeys, _, _) = rekey_counts(&p);
    assert!(
        rekeys >= 2,
        "strongSwan should have rekeyed the CHILD SA several times; polytun saw {rekeys}:\n{}",
        c.log()
    );
    let l = wait_sas_agree(&p, &c, Duration::from_secs(20));
    assert_eq!(l.children.len(), 1, "{l:?}");
    eprintln!("{rekeys} CHILD SA rekeys by strongSwan, no ping lost");
}

#[test]
fn strongswan_rekeys_child_sa_polytun_follows() {
    strongswan_rekeys_child("ssrk", "aes256gcm16");
}

#[test]
fn strongswan_rekeys_child_sa_with_pfs_polytun_follows() {
    strongswan_rekeys_child("ssrkp", "aes256gcm16-x25519");
}

/// strongSwan (initiator) rekeys both its CHILD SA (~6 s) and its IKE SA (~10 s); polytun
/// (responder, default lifetimes) follows each without losing a ping.
#[test]
fn strongswan_rekeys_child_and_ike_sa_polytun_follows() {
    let a = Netns::new("ssrki");
    let b = Netns::new("ssrki");
    let (_va, _vb) = veth_pair(&a, &b);
    let (sa, mut sb) = sides("aes256gcm16", false);
    sb.child_rekey_secs = Some(6);
    sb.ike_rekey_secs = Some(10);
    let (p, c) = up(&a, &b, &sa, &sb);
    pinging(
        &a,
        175,
        "across strongSwan's CHILD and IKE SA rekeys",
        || {},
    );
    let (child, ike, coll) = rekey_counts(&p);
    assert!(
        child >= 3 && ike >= 2,
        "strongSwan should have rekeyed the CHILD SA (saw {child}) and the IKE SA (saw {ike}) several times:\n{}",
        c.log()
    );
    wait_sas_agree(&p, &c, Duration::from_secs(20));
    eprintln!("strongSwan rekeyed: {child} CHILD SA, {ike} IKE SA rekeys, {coll} collisions");
}

/// polytun rekeys by time from the responder role: its CHILD SA every ~6 s (rekey_time) and its
/// IKE SA every ~10 s (ike_rekey_time), with CREATE_CHILD_SA; strongSwan (no rekeys of its own
/// within the test) follows; no ping lost.
#[test]
fn polytun_responder_rekeys_child_and_ike_sa_strongswan_follows() {
    let a = Netns::new("ptrki");
    let b = Netns::new("ptrki");
    let (_va, _vb) = veth_pair(&a, &b);
    let (mut sa, sb) = sides("aes256gcm16-x25519", false);
    sa.polytun_extra = r#"rekey_time = "6s"
lifetime = "30s"
rand_time = "1s"
ike_rekey_time = "10s"
ike_lifetime = "40s"
ike_rand_time = "1s"
"#
    .into();
    let (p, c) = up(&a, &b, &sa, &sb);
    pinging(&a, 175, "across polytun's CHILD and IKE SA rekeys", || {});
    let (child, ike, coll) = rekey_counts(&p);
    assert!(
        child >= 3 && ike >= 2,
        "polytun should have rekeyed the CHILD SA (saw {child}) and the IKE SA (saw {ike}):\n{}",
        p.log()
    );
    let log = c.log();
    assert!(
        log.contains("received CREATE_CHILD_SA request") || log.contains("CREATE_CHILD_SA"),
        "strongSwan's log shows no CREATE_CHILD_SA:\n{log}"
    );
    wait_sas_agree(&p, &c, Duration::from_secs(20));
    eprintln!(
        "polytun (responder) rekeyed: {child} CHILD SA, {ike} IKE SA rekeys, {coll} collisions"
    );
}

/// KU: `polytun rekey` (CHILD SAs), `polytun rekey --ike` and `polytun rekey --reauth` against
/// strongSwan under a steady ping: each gives new SPIs on both sides, nothing is lost and
/// nothing orphaned.
#[test]
fn polytun_rekey_commands_with_strongswan() {
    let a = Netns::new("ssku");
    let b = Netns::new("ssku");
    let (_va, _vb) = veth_pair(&a, &b);
    let (sa, sb) = sides("aes256gcm16", true);
    let (p, c) = up(&a, &b, &sa, &sb);
    let l0 = wait_sas_agree(&p, &c, Duration::from_secs(20));
    pinging(
        &a,
        100,
        "across polytun rekey, rekey --ike and rekey --reauth",
        || {
            let out = p.cli(&["rekey"]);
            eprintln!("polytun rekey: {out}");
            wait_until("a new CHILD SA", Duration::from_secs(10), || {
                let l = SaList::from_polytun(&p.show_json());
                l.children.len() == 1
                    && l.children[0] != l0.children[0]
                    && l.children[0].0 == "INSTALLED"
            });
            let l1 = wait_sas_agree(&p, &c, Duration::from_secs(10));
            assert_eq!(l1.ike, l0.ike, "a CHILD SA rekey keeps the IKE SA");
            let out = p.cli(&["rekey", "--ike"]);
            eprintln!("polytun rekey --ike: {out}");
            wait_until("a new IKE SA", Duration::from_secs(10), || {
                let l = SaList::from_polytun(&p.show_json());
                l.ike.len() == 1 && l.ike[0] != l1.ike[0]
            });
            let l2 = wait_sas_agree(&p, &c, Duration::from_secs(10));
            assert_eq!(
                l2.children, l1.children,
                "an IKE SA rekey keeps the CHILD SA"
            );
            let out = p.cli(&["rekey", "--reauth"]);
            eprintln!("polytun rekey --reauth: {out}");
            wait_until("a reauthenticated IKE SA", Duration::from_secs(15), || {
                let l = SaList::from_polytun(&p.show_json());
                l.ike.len() == 1 && l.ike[0] != l2.ike[0] && l.children.len() == 1
            });
            let l3 = wait_sas_agree(&p, &c, Duration::from_secs(15));
            assert_ne!(
                l3.children, l2.children,
                "reauthentication makes a new CHILD SA"
            );
        },
    );
    let (child, ike, _) = rekey_counts(&p);
    assert!(child >= 1 && ike >= 1, "{child} {ike}");
    assert!(p
        .log()
        .contains("reauthenticated; deleting the replaced IKE SA"));
}

/// The soak: both sides rekey their CHILD SA and their IKE SA every ~15 s (with jitter) for
/// over two minutes under 5 pings per second. Zero pings lost; collisions (both sides rekeying
/// the same SA at once) are counted; at the end both sides list the same SAs, none orphaned.
#[test]
fn strongswan_and_polytun_both_rekey_every_15s_for_two_minutes() {
    let a = Netns::new("sssoak");
    let b = Netns::new("sssoak");
    let (_va, _vb) = veth_pair(&a, &b);
    let (mut sa, mut sb) = sides("aes256gcm16-x25519", true);
    sa.polytun_extra = r#"rekey_time = "15s"
lifetime = "60s"
rand_time = "2s"
ike_rekey_time = "15s"
ike_lifetime = "45s"
ike_rand_time = "2s"
"#
    .into();
    sb.child_rekey_secs = Some(15);
    sb.ike_rekey_secs = Some(15);
    let (p, c) = up(&a, &b, &sa, &sb);
    let t0 = Instant::now();
    // 650 pings at 5/s: 130 s
    pinging(&a, 650, "in the two-minute rekey soak", || {});
    let took = t0.elapsed();
    let (child, ike, coll) = rekey_counts(&p);
    let swan = c.log();
    let swan_coll = swan.matches("collision").count();
    eprintln!(
        "soak of {took:?}: polytun saw {child} CHILD SA and {ike} IKE SA rekeys, {coll} collisions (strongSwan logged {swan_coll} lines about collisions)"
    );
    assert!(took >= Duration::from_secs(120), "{took:?}");
    assert!(
        child >= 8 && ike >= 8,
        "both sides rekeying every ~15 s for 2 minutes: {child} CHILD and {ike} IKE SA rekeys"
    );
    let l = wait_sas_agree(&p, &c, Duration::from_secs(30));
    assert_eq!((l.ike.len(), l.children.len()), (1, 1), "{l:?}");
}

/// Collisions on purpose: both sides rekey their CHILD SA every 10 s and their IKE SA every
/// 12 s without any jitter, so both start the same rekey within a millisecond or so of each
/// other (RFC 7296 §2.8.1, §2.8.2, and an IKE SA rekey meeting a CHILD SA rekey). For over a
/// minute under 5 pings per second: zero pings lost, and both sides agree on the SAs at the end.
#[test]
fn strongswan_and_polytun_rekey_at_the_same_instant() {
    let a = Netns::new("sscoll");
    let b = Netns::new("sscoll");
    let (_va, _vb) = veth_pair(&a, &b);
    let (mut sa, mut sb) = sides("aes256gcm16", true);
    sa.polytun_extra = r#"rekey_time = "10s"
lifetime = "40s"
rand_time = "0s"
ike_rekey_time = "12s"
ike_lifetime = "36s"
ike_rand_time = "0s"
"#
    .into();
    sb.child_rekey_secs = Some(10);
    sb.ike_rekey_secs = Some(12);
    sb.swan_rand_secs = Some(0);
    let (p, c) = up(&a, &b, &sa, &sb);
    pinging(
        &a,
        350,
        "while both sides rekey at the same instants",
        || {},
    );
    let (child, ike, coll) = rekey_counts(&p);
    eprintln!(
        "no jitter for 70 s: polytun saw {child} CHILD SA and {ike} IKE SA rekeys, {coll} collisions, {} rekeys refused/retried",
        p.log().matches("failed (notify").count()
    );
    assert!(child >= 4 && ike >= 3, "{child} CHILD, {ike} IKE SA rekeys");
    let l = wait_sas_agree(&p, &c, Duration::from_secs(30));
    assert_eq!((l.ike.len(), l.children.len()), (1, 1), "{l:?}");
}

/// nftables in `ns`: drop every IKE/NAT-T datagram in and out (a black hole).
fn blackhole(ns: &Netns, on: bool) {
    let nft = polytun_e2e::bins::tool("nft");
    let nft = nft.to_str().unwrap();
    if on {
        ns.run_ok(&[nft, "add", "table", "inet", "bh"]);
        for chain in ["input", "output"] {
            ns.run_ok(&[
                nft,
                &format!("add chain inet bh {chain} {{ type filter hook {chain} priority 0; }}"),
            ]);
            ns.run_ok(&[
                nft,
                &format!("add rule inet bh {chain} udp dport {{ 500, 4500 }} drop"),
            ]);
            ns.run_ok(&[
                nft,
                &format!("add rule inet bh {chain} udp sport {{ 500, 4500 }} drop"),
            ]);
        }
    } else {
        ns.run_ok(&[nft, "delete", "table", "inet", "bh"]);
    }
}

/// DPD: polytun (initiator, dpd_delay 2 s, dpd_timeout 8 s) against strongSwan; strongSwan is
/// black-holed with nftables; polytun declares the peer dead within dpd_delay + dpd_timeout
/// (+ slack for the loaded machine), in its log and in `polytun show`. Then the block is lifted.
fn dpd(test: &str, action: &str) {
    let a = Netns::new(test);
    let b = Netns::new(test);
    let (_va, _vb) = veth_pair(&a, &b);
    let (mut sa, sb) = sides("aes256gcm16", true);
    sa.polytun_extra =
        format!("dpd_delay = \"2s\"\ndpd_timeout = \"8s\"\ndpd_action = \"{action}\"\n");
    let (p, c) = up(&a, &b, &sa, &sb);
    let before = wait_sas_agree(&p, &c, Duration::from_secs(20));
    blackhole(&b, true);
    let t0 = Instant::now();
    wait_until(
        "polytun to declare the peer dead",
        Duration::from_secs(30),
        || p.log().contains("peer dead (DPD)"),
    );
    let took = t0.elapsed();
    eprintln!("peer declared dead after {took:?} (dpd_delay 2 s + dpd_timeout 8 s)");
    assert!(
        took <= Duration::from_secs(2 + 8 + 5),
        "DPD took {took:?}, expected about dpd_delay + dpd_timeout = 10 s"
    );
    let show = SaList::from_polytun(&p.show_json());
    assert!(
        !show
            .ike
            .iter()
            .any(|s| before.ike.iter().any(|o| o.1 == s.1))
            && show.children.is_empty(),
        "the dead IKE SA and its CHILD SA should be gone from polytun show: {show:?}"
    );
    blackhole(&b, false);
    match action {
        "restart" => {
            wait_until(
                "the tunnel to be re-established after the block",
                Duration::from_secs(90),
                || {
                    let l = SaList::from_polytun(&p.show_json());
                    l.ike.iter().any(|s| s.0 == "ESTABLISHED") && !l.children.is_empty()
                },
            );
            wait_ping(&a, IN_B, Duration::from_secs(20));
            let loss = ping(&a, IN_B, 10);
            assert_eq!(loss, 0.0, "after the restart {loss}% lost");
            // strongSwan dropped its stale IKE SA (INITIAL_CONTACT), so both agree
            let l = wait_sas_agree(&p, &c, Duration::from_secs(20));
            assert_ne!(l.ike, before.ike);
        }
        _ => {
            std::thread::sleep(Duration::from_secs(10));
            let l = SaList::from_polytun(&p.show_json());
            assert!(
                l.ike.is_empty() && l.children.is_empty(),
                "dpd_action = clear: nothing should come back: {l:?}"
            );
            let loss = ping(&a, IN_B, 3);
            assert_eq!(loss, 100.0, "the tunnel should be gone");
            assert!(p.log().contains("tunnel cleared (dpd_action = clear)"));
        }
    }
}

#[test]
fn dpd_restart_strongswan_blackholed_then_back() {
    dpd("ssdpdr", "restart");
}

#[test]
fn dpd_clear_strongswan_blackholed() {
    dpd("ssdpdc", "clear");
}

const IN_A2: &str = "198.51.100.11";
const IN_B2: &str = "198.51.100.12";

/// `ping -I src -c count dst` (0.2 s apart); the loss in percent.
fn ping_from(ns: &Netns, src: &str, dst: &str, count: u32) -> f64 {
    let p = polytun_e2e::bins::tool("ping");
    let c = count.to_string();
    let o = ns.run_env(
        &[
            p.to_str().unwrap(),
            "-I",
            src,
            "-c",
            &c,
            "-i",
            "0.2",
            "-W",
            "2",
            "-q",
            dst,
        ],
        &[],
        Duration::from_secs(20 + u64::from(count)),
    );
    let text = format!("{}{}", o.stdout, o.stderr);
    text.lines()
        .find_map(|l| {
            let i = l.find("% packet loss")?;
            l[..i].rsplit([' ', ',']).next()?.parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("cannot parse ping output: {text}"))
}

/// Two CHILD SAs in one IKE SA: 198.51.100.1 ↔ .2 (IKE_AUTH) and 198.51.100.11 ↔ .12
/// (`[[tunnel.child]]` at polytun, a second `children` block at strongSwan, created with
/// CREATE_CHILD_SA). Each destination goes through its own CHILD SA; `polytun rekey` rekeys
/// both; both sides agree on every SPI.
fn two_children(test: &str, polytun_initiates: bool) {
    let a = Netns::new(test);
    let b = Netns::new(test);
    let (_va, _vb) = veth_pair(&a, &b);
    let (mut sa, mut sb) = sides("aes256gcm16", polytun_initiates);
    sa.polytun_extra = format!(
        "\n[[tunnel.child]]\nname = \"second\"\nlocal_ts = [\"{IN_A2}/32\"]\nremote_ts = [\"{IN_B2}/32\"]\n"
    );
    sb.swan_children_extra = format!(
        "\n            net2 {{\n                local_ts = {IN_B2}/32\n                remote_ts = {IN_A2}/32\n                mode = tunnel\n                esp_proposals = aes256gcm16\n            }}"
    );
    a.ip(&["addr", "add", &format!("{IN_A2}/32"), "dev", "lo"]);
    b.ip(&["addr", "add", &format!("{IN_B2}/32"), "dev", "lo"]);
    let (p, c) = up(&a, &b, &sa, &sb);
    if !polytun_initiates {
        let o = c.swanctl(&["--initiate", "--child", "net2", "--timeout", "30"]);
        assert!(
            o.ok(),
            "swanctl --initiate --child net2: {}{}\n{}",
            o.stdout,
            o.stderr,
            c.log()
        );
    }
    wait_until("two CHILD SAs at polytun", Duration::from_secs(20), || {
        SaList::from_polytun(&p.show_json()).children.len() == 2
    });
    let l = wait_sas_agree(&p, &c, Duration::from_secs(20));
    assert_eq!((l.ike.len(), l.children.len()), (1, 2), "{l:?}");
    let loss = ping_from(&a, IN_A2, IN_B2, 10);
    assert_eq!(loss, 0.0, "through the second CHILD SA: {loss}% lost");
    let loss = ping(&a, IN_B, 10);
    assert_eq!(loss, 0.0, "through the first CHILD SA: {loss}% lost");
    // each destination used its own CHILD SA
    let sas = p.ike_sas();
    let children = sas[0]["children"].as_array().cloned().unwrap_or_default();
    for (dst, ts) in [(IN_B, "198.51.100.2/32"), (IN_B2, "198.51.100.12/32")] {
        let c = children
            .iter()
            .find(|c| c["remote_ts"][0] == ts)
            .unwrap_or_else(|| panic!("no CHILD SA for {ts}: {children:?}"));
        assert!(
            c["tx_packets"].as_u64().unwrap_or(0) >= 10
                && c["rx_packets"].as_u64().unwrap_or(0) >= 10,
            "pings to {dst} should have gone through the CHILD SA for {ts}: {c}"
        );
    }
    // KU on both CHILD SAs at once, under traffic to both
    let pid = spawn_ping(&a, IN_B, 50);
    let out = p.cli(&["rekey"]);
    assert!(out.contains("2 rekey"), "polytun rekey: {out}");
    let loss = ping_from(&a, IN_A2, IN_B2, 25);
    let (sent, received) = ping_result(&a, pid, Duration::from_secs(60));
    assert_eq!(
        (loss, received),
        (0.0, sent),
        "pings lost across the rekey of both CHILD SAs"
    );
    let l2 = wait_sas_agree(&p, &c, Duration::from_secs(20));
    assert_eq!(l2.children.len(), 2, "{l2:?}");
    assert!(
        l2.children.iter().all(|c| !l.children.contains(c)),
        "both CHILD SAs should be new: {l:?} -> {l2:?}"
    );
    assert_eq!(rekey_counts(&p).0, 2);
}

#[test]
fn two_child_sas_polytun_initiates_strongswan() {
    two_children("ss2ca", true);
}

#[test]
fn two_child_sas_strongswan_initiates_polytun() {
    two_children("ss2cb", false);
}
