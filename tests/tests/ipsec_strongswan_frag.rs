//! IKE fragmentation (RFC 7383) against strongSwan 5.9: both sides are told
//! to keep IKE datagrams at 200 bytes (charon `fragment_size = 200`,
//! polytund `fragment_size = 200`), so IKE_AUTH goes out in Encrypted
//! Fragment payloads both ways. Each test checks that fragments really
//! crossed in both directions (polytun's `show` counters and charon's log),
//! that the tunnel carries ping, and — with strongSwan initiating — that an
//! IKE SA rekey (its CREATE_CHILD_SA is fragmented too) keeps working.
use polytun_e2e::ipsec::{polytun_toml, Charon, CharonOpts, IpsecSide, PolytunIpsec};
use polytun_e2e::{ping, unique_ifname, veth_pair, wait_ping, wait_until, Netns};
use serde_json::Value;
use std::time::{Duration, Instant};

const IN_A: &str = "198.51.100.1";
const IN_B: &str = "198.51.100.2";
const FRAG: usize = 200;

fn sides(a_initiates: bool) -> (IpsecSide, IpsecSide) {
    IpsecSide::psk_pair("aes256gcm16", a_initiates)
}

fn charon_opts() -> CharonOpts {
    CharonOpts {
        charon: vec![format!("fragment_size = {FRAG}")],
        // the default since 5.5.1, written out: fragment when the peer
        // announced support (`force` only changes IKEv1)
        conn: vec!["fragmentation = yes".into()],
    }
}

fn ike(p: &PolytunIpsec<'_>) -> Value {
    p.show_json()["tunnels"][0]["ike"].clone()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("ike.{k} missing in {v}"))
}

/// How often charon's log says it split / reassembled a message.
fn charon_frag_counts(c: &Charon<'_>) -> (usize, usize) {
    let log = c.log();
    (
        log.matches("splitting IKE message").count(),
        log.matches("reassembled fragmented IKE message").count(),
    )
}

fn up(
    test: &str,
    polytun_initiates: bool,
    check: impl FnOnce(&Netns, &Netns, &PolytunIpsec<'_>, &Charon<'_>),
) {
    let a = Netns::new(test);
    let b = Netns::new(test);
    let (_va, _vb) = veth_pair(&a, &b);
    let (sa, sb) = sides(polytun_initiates);
    let iface = unique_ifname("ptfr");
    let toml = format!("{}fragment_size = {FRAG}\n", polytun_toml(&iface, &sa));
    let t0 = Instant::now();
    let (p, c) = if polytun_initiates {
        let c = Charon::start_opts(&b, &sb, &charon_opts());
        let p = PolytunIpsec::start_toml(&a, &iface, &toml);
        (p, c)
    } else {
        let p = PolytunIpsec::start_toml(&a, &iface, &toml);
        let c = Charon::start_opts(&b, &sb, &charon_opts());
        c.initiate();
        (p, c)
    };
    wait_until("the IKE SA at polytun", Duration::from_secs(30), || {
        p.ike_sas().iter().any(|s| {
            s["state"] == "ESTABLISHED" && !s["children"].as_array().is_none_or(|c| c.is_empty())
        })
    });
    eprintln!("tunnel up after {:?}", t0.elapsed());
    wait_ping(&a, IN_B, Duration::from_secs(20));
    assert_eq!(ping(&a, IN_B, 5), 0.0, "ping A -> B lost packets");
    assert_eq!(ping(&b, IN_A, 5), 0.0, "ping B -> A lost packets");

    // IKE_AUTH crossed in fragments both ways
    let i = ike(&p);
    eprintln!("polytun ike counters: {i}");
    assert!(
        n(&i, "fragmented_sent") >= 1,
        "polytun sent nothing in fragments: {i}"
    );
    assert!(n(&i, "fragments_sent") >= 2, "{i}");
    assert!(
        n(&i, "reassembled") >= 1,
        "polytun reassembled nothing: {i}"
    );
    assert!(n(&i, "fragments_received") >= 2, "{i}");
    for k in ["integrity", "fragment_dropped", "malformed"] {
        assert_eq!(n(&i, k), 0, "ike.{k}: {i}\n{}", p.log());
    }
    let (split, joined) = charon_frag_counts(&c);
    assert!(split >= 1, "strongSwan did not fragment:\n{}", c.log());
    assert!(joined >= 1, "strongSwan reassembled nothing:\n{}", c.log());
    assert!(
        p.show_text().contains("IKE fragments:"),
        "{}",
        p.show_text()
    );
    check(&a, &b, &p, &c);
}

#[test]
fn polytun_initiates_strongswan_fragmented_ike_auth() {
    up("ssfr-a", true, |_, _, _, c| {
        let list = c.list_sas();
        assert!(
            list.contains("ESTABLISHED") && list.contains("INSTALLED"),
            "{list}"
        );
    });
}

#[test]
fn strongswan_initiates_fragmented_ike_auth_and_rekeys_the_ike_sa() {
    up("ssfr-b", false, |a, b, p, c| {
        let before = ike(p);
        let spis: Vec<Value> = p.ike_sas().iter().map(|s| s["spi_i"].clone()).collect();
        // CREATE_CHILD_SA with a KE payload: above 200 bytes, so fragmented
        // both ways on the IKE SA that inherited fragmentation from IKE_SA_INIT
        let o = c.swanctl(&["--rekey", "--ike", "pt"]);
        assert!(o.ok(), "swanctl --rekey: {}{}", o.stdout, o.stderr);
        wait_until(
            "the rekeyed IKE SA at polytun",
            Duration::from_secs(20),
            || {
                let sas = p.ike_sas();
                sas.len() == 1
                    && sas[0]["state"] == "ESTABLISHED"
                    && !spis.contains(&sas[0]["spi_i"])
                    && !sas[0]["children"].as_array().is_none_or(|c| c.is_empty())
            },
        );
        let after = ike(p);
        eprintln!("after the IKE SA rekey: {after}");
        assert!(
            n(&after, "reassembled") > n(&before, "reassembled"),
            "the rekey request was not fragmented: {before} -> {after}"
        );
        assert!(
            n(&after, "fragmented_sent") > n(&before, "fragmented_sent"),
            "the rekey response was not fragmented: {before} -> {after}"
        );
        assert_eq!(ping(a, IN_B, 5), 0.0, "ping A -> B after the rekey");
        assert_eq!(ping(b, IN_A, 5), 0.0, "ping B -> A after the rekey");
        let log = c.log();
        assert!(log.contains("rekeyed between"), "{log}");
    });
}
