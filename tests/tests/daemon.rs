//! polytund and the polytun CLI beyond the interop matrix: key tools, capabilities, show,
//! SIGHUP reload, environment overrides, routes for allowed IPs, clean shutdown.
use polytun_e2e::scenario::{PairNet, OL_A, OL_B};
use polytun_e2e::{bins, ping, wait_ping, wait_until, Device, Impl, Keypair, PeerCfg};
use std::process::{Command, Stdio};
use std::time::Duration;

fn cli(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut c = Command::new(bins::polytun())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run polytun");
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(c.stdin.take());
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "polytun {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn wg_pubkey(private: &str) -> String {
    use std::io::Write;
    let mut c = Command::new(bins::tool("wg"))
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    String::from_utf8(c.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn polytun_cli_keys_match_wg_tools() {
    let sk = cli(&["genkey"], None);
    assert_eq!(sk.len(), 44, "genkey: not base64 of 32 bytes: {sk}");
    assert_eq!(
        cli(&["pubkey"], Some(&sk)),
        wg_pubkey(&sk),
        "polytun pubkey != wg pubkey"
    );
    let kp = Keypair::generate();
    assert_eq!(cli(&["pubkey"], Some(&kp.private)), kp.public);
    let psk = cli(&["genpsk"], None);
    assert_eq!(psk.len(), 44, "genpsk: {psk}");
    assert_ne!(psk, cli(&["genpsk"], None), "genpsk repeats itself");
}

#[test]
fn polytun_capabilities_lists_rfc8922_interfaces() {
    let out = cli(&["capabilities"], None);
    for k in [
        "IPK", "ALG", "EXT", "CM", "AD", "PSKI", "IV", "SAV", "CT", "KU", "SSKE", "KE", "ME",
    ] {
        assert!(
            out.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == k),
            "capabilities lacks {k}:\n{out}"
        );
    }
    assert!(
        out.to_lowercase().contains("wireguard"),
        "capabilities lacks wireguard:\n{out}"
    );
}

/// polytund (A, responder) with wireguard-go (B, initiator); returns after the first ping.
fn up(n: &PairNet) -> (Device<'_>, Device<'_>) {
    let a = Device::start(&n.a, Impl::Polytun, &n.cfg_a(false));
    let b = Device::start(&n.b, Impl::WireguardGo, &n.cfg_b(true));
    wait_ping(&n.b, OL_A, Duration::from_secs(20));
    (a, b)
}

#[test]
fn polytund_show_with_wireguard_go() {
    let n = PairNet::new("show", false);
    let (a, _b) = up(&n);
    assert!(
        n.a.log_of(a.pid).contains("polytund: ready"),
        "no `polytund: ready` line:\n{}",
        n.a.log_of(a.pid)
    );
    let j = a.show_json();
    assert_eq!(j["interface"], a.iface.as_str(), "{j}");
    let t = &j["tunnels"][0];
    assert_eq!(t["public_key"], n.ka.public.as_str(), "{j}");
    let p = &t["peers"][0];
    assert_eq!(p["public_key"], n.kb.public.as_str(), "{j}");
    assert_eq!(p["allowed_ips"][0], format!("{OL_B}/32").as_str(), "{j}");
    assert!(
        p["rx_bytes"].as_u64().unwrap_or(0) > 0 && p["tx_bytes"].as_u64().unwrap_or(0) > 0,
        "{j}"
    );
    assert!(p["key_age_secs"].as_u64().is_some(), "{j}");
    for k in [
        "malformed",
        "bad_mac",
        "replayed",
        "no_session",
        "bad_source",
        "expired_key",
        "other",
    ] {
        assert!(t["drops"][k].as_u64().is_some(), "drops.{k} missing: {j}");
    }
    // the human-readable form, like `wg show`
    let polytun = bins::polytun();
    let human =
        n.a.run_ok(&[polytun.to_str().unwrap(), "-i", &a.iface, "show"]);
    for want in [
        a.iface.as_str(),
        n.kb.public.as_str(),
        "latest handshake",
        "transfer",
        "allowed ips",
        "endpoint",
    ] {
        assert!(
            human.contains(want),
            "`polytun show` lacks `{want}`:\n{human}"
        );
    }
    // and via --socket
    let sock = format!("/run/polytun/{}.sock", a.iface);
    let o = n.a.run_ok(&[
        polytun.to_str().unwrap(),
        "--socket",
        &sock,
        "show",
        "--json",
    ]);
    assert!(o.contains(&n.kb.public), "show --socket {sock}: {o}");
}

#[test]
fn polytund_sighup_adds_and_removes_peers_without_disturbing_others() {
    let n = PairNet::new("hup", false);
    let (a, _b) = up(&n);
    let hs0 = a.show_json()["tunnels"][0]["peers"][0]["latest_handshake_unix"].clone();
    let mut cfg = n.cfg_a(false);
    cfg.iface = a.iface.clone();
    let extra = Keypair::generate();
    cfg.peers.push(PeerCfg {
        public_key: extra.public.clone(),
        allowed_ips: vec!["198.51.100.9/32".into()],
        ..Default::default()
    });
    a.rewrite_config(&cfg);
    a.reload();
    wait_until(
        "the added peer to show up after SIGHUP",
        Duration::from_secs(10),
        || {
            a.show_json()["tunnels"][0]["peers"]
                .as_array()
                .map(Vec::len)
                == Some(2)
        },
    );
    assert_eq!(
        ping(&n.b, OL_A, 10),
        0.0,
        "reload disturbed the existing peer"
    );
    cfg.peers.pop();
    a.rewrite_config(&cfg);
    a.reload();
    wait_until(
        "the removed peer to disappear after SIGHUP",
        Duration::from_secs(10),
        || {
            a.show_json()["tunnels"][0]["peers"]
                .as_array()
                .map(Vec::len)
                == Some(1)
        },
    );
    assert_eq!(
        ping(&n.b, OL_A, 10),
        0.0,
        "reload disturbed the existing peer"
    );
    let hs1 = a.show_json()["tunnels"][0]["peers"][0]["latest_handshake_unix"].clone();
    assert_eq!(
        hs0, hs1,
        "the unchanged peer re-handshook: its session was torn down by the reload"
    );
    a.assert_alive();
}

#[test]
fn polytund_env_override_mtu() {
    let n = PairNet::new("envmtu", false);
    let a =
        Device::start_polytund_env(&n.a, &n.cfg_a(false), &[("POLYTUN_INTERFACE__MTU", "1380")]);
    let link = n.a.run_ok(&["ip", "link", "show", &a.iface]);
    assert!(
        link.contains("mtu 1380"),
        "POLYTUN_INTERFACE__MTU=1380 not applied:\n{link}"
    );
}

/// polytund's task threads (tokio workers) whose comm is `tokio-rt-worker`.
fn worker_threads(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("polytund's /proc");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "tokio-rt-worker")
        .count()
}

/// `[interface] workers` sizes the runtime; without it, one worker per two
/// cores (at least one): docs/fast-path.md "Threads".
#[test]
fn polytund_workers_sets_the_thread_count() {
    let n = PairNet::new("workers", false);
    let a = Device::start_polytund_env(
        &n.a,
        &n.cfg_a(false),
        &[("POLYTUN_INTERFACE__WORKERS", "3")],
    );
    assert_eq!(worker_threads(a.pid), 3, "workers = 3 not applied");
    let b = Device::start(&n.b, Impl::Polytun, &n.cfg_b(true));
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    assert_eq!(
        worker_threads(b.pid),
        (cores / 2).max(1),
        "default workers on {cores} cores"
    );
    // And the tunnel works with either.
    wait_ping(&n.b, OL_A, Duration::from_secs(20));
}

/// Routes for a peer's allowed IPs go into the TUN (site-to-site: a subnet behind the peer).
#[test]
fn polytund_routes_remote_subnet_to_wireguard_go() {
    let n = PairNet::new("route", false);
    let mut ca = n.cfg_a(true);
    ca.peers[0].allowed_ips.push("203.0.113.0/24".into());
    let a = Device::start(&n.a, Impl::Polytun, &ca);
    let _b = Device::start(&n.b, Impl::WireguardGo, &n.cfg_b(false));
    n.b.ip(&["addr", "add", "203.0.113.1/32", "dev", "lo"]);
    let routes = n.a.run_ok(&["ip", "route", "show", "203.0.113.0/24"]);
    assert!(
        routes.contains(&format!("dev {}", a.iface)),
        "no route for 203.0.113.0/24 into the TUN:\n{routes}"
    );
    wait_ping(&n.a, "203.0.113.1", Duration::from_secs(20));
    assert_eq!(ping(&n.a, "203.0.113.1", 10), 0.0);
    assert_eq!(ping(&n.a, OL_B, 5), 0.0);
}

#[test]
fn polytund_sigterm_cleans_up() {
    let n = PairNet::new("term", false);
    let (a, _b) = up(&n);
    let sock = format!("/run/polytun/{}.sock", a.iface);
    assert!(
        std::path::Path::new(&sock).exists(),
        "no control socket at {sock}"
    );
    let st = n.a.kill(a.pid).expect("polytund exit status");
    assert!(
        st.success(),
        "polytund exited with {st} on SIGTERM:\n{}",
        n.a.log_of(a.pid)
    );
    assert!(
        !n.a.run(&["ip", "link", "show", &a.iface]).ok(),
        "TUN {} left behind",
        a.iface
    );
    assert!(
        !std::path::Path::new(&sock).exists(),
        "control socket {sock} left behind"
    );
}

#[test]
fn polytun_down_stops_the_tunnel() {
    let n = PairNet::new("down", false);
    let (a, _b) = up(&n);
    let polytun = bins::polytun();
    n.a.run_ok(&[polytun.to_str().unwrap(), "-i", &a.iface, "down"]);
    // `down` takes the tunnel down; traffic stops
    wait_until(
        "traffic to stop after `polytun down`",
        Duration::from_secs(10),
        || ping(&n.b, OL_A, 2) == 100.0,
    );
}
