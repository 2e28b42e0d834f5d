//! Parametrised scenarios shared by the test files: the interop pair matrix and roaming.
use crate::wg::genpsk;
use crate::{
    ping, veth_pair, wait_ping, xfer, xfer_start, DevCfg, Device, Impl, Keypair, Netns, PeerCfg,
    Veth,
};
use std::time::Duration;

/// Overlay addresses of side A and B.
pub const OL_A: &str = "198.51.100.1";
pub const OL_B: &str = "198.51.100.2";
/// Listen ports (different on purpose, so a port mix-up cannot go unnoticed).
pub const PORT_A: u16 = 51820;
pub const PORT_B: u16 = 51821;

/// Two namespaces joined by a veth (A = 192.0.2.1, B = 192.0.2.2), a key pair per side and an
/// optional preshared key.
pub struct PairNet {
    pub a: Netns,
    pub b: Netns,
    pub va: Veth,
    pub vb: Veth,
    pub ka: Keypair,
    pub kb: Keypair,
    pub psk: Option<String>,
    /// Use the IPv6 underlay (2001:db8::1/2) for endpoints.
    pub v6: bool,
}

impl PairNet {
    /// `host:port` (or `[v6]:port`) of a veth end.
    pub fn endpoint(&self, v: &Veth, port: u16) -> String {
        if self.v6 {
            format!("[{}]:{port}", v.v6)
        } else {
            format!("{}:{port}", v.v4)
        }
    }

    pub fn new(test: &str, psk: bool) -> PairNet {
        let a = Netns::new(test);
        let b = Netns::new(test);
        let (va, vb) = veth_pair(&a, &b);
        PairNet {
            a,
            b,
            va,
            vb,
            ka: Keypair::generate(),
            kb: Keypair::generate(),
            psk: psk.then(genpsk),
            v6: false,
        }
    }

    /// Config of side A; with `with_endpoint` A knows B's endpoint (and can initiate).
    pub fn cfg_a(&self, with_endpoint: bool) -> DevCfg {
        let mut c = DevCfg::new(&self.ka.private, PORT_A, &format!("{OL_A}/24"));
        c.peers.push(PeerCfg {
            public_key: self.kb.public.clone(),
            preshared_key: self.psk.clone(),
            endpoint: with_endpoint.then(|| self.endpoint(&self.vb, PORT_B)),
            allowed_ips: vec![format!("{OL_B}/32")],
            persistent_keepalive: None,
        });
        c
    }

    /// Config of side B; with `with_endpoint` B knows A's endpoint (and can initiate).
    pub fn cfg_b(&self, with_endpoint: bool) -> DevCfg {
        let mut c = DevCfg::new(&self.kb.private, PORT_B, &format!("{OL_B}/24"));
        c.peers.push(PeerCfg {
            public_key: self.ka.public.clone(),
            preshared_key: self.psk.clone(),
            endpoint: with_endpoint.then(|| self.endpoint(&self.va, PORT_A)),
            allowed_ips: vec![format!("{OL_A}/32")],
            persistent_keepalive: None,
        });
        c
    }
}

/// Which side initiates: it alone has the other's endpoint and sends first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    A,
    B,
}

/// The interop check of issue 2: `imp_a` in A, `imp_b` in B, `init` initiates (the responder has
/// no endpoint for it), optional PSK. Ping (handshake, then 10 pings with 0 loss), a ≥ 50 MB
/// checksummed TCP transfer initiator → responder, 5 MB back, and counters on both sides.
pub fn pair_test(test: &str, imp_a: Impl, imp_b: Impl, init: Initiator, psk: bool) {
    pair_test_on(PairNet::new(test, psk), imp_a, imp_b, init)
}

/// [`pair_test`] over the IPv6 underlay.
pub fn pair_test_v6(test: &str, imp_a: Impl, imp_b: Impl, init: Initiator, psk: bool) {
    let mut n = PairNet::new(test, psk);
    n.v6 = true;
    pair_test_on(n, imp_a, imp_b, init)
}

fn pair_test_on(n: PairNet, imp_a: Impl, imp_b: Impl, init: Initiator) {
    let a_init = init == Initiator::A;
    // the responder first, so the initiator's first handshake finds it listening
    let (a, b) = if a_init {
        let b = Device::start(&n.b, imp_b, &n.cfg_b(false));
        let a = Device::start(&n.a, imp_a, &n.cfg_a(true));
        (a, b)
    } else {
        let a = Device::start(&n.a, imp_a, &n.cfg_a(false));
        let b = Device::start(&n.b, imp_b, &n.cfg_b(true));
        (a, b)
    };
    let (ins, ia, rns, ra) = if a_init {
        (&n.a, OL_A, &n.b, OL_B)
    } else {
        (&n.b, OL_B, &n.a, OL_A)
    };
    let _ = ia;
    wait_ping(ins, ra, Duration::from_secs(20));
    let loss = ping(ins, ra, 10);
    assert_eq!(loss, 0.0, "ping {ra} from the initiator lost {loss}%");
    let loss = ping(rns, ia, 10);
    assert_eq!(loss, 0.0, "ping {ia} from the responder lost {loss}%");

    xfer(rns, ins, ra, 5201, crate::XFER_BYTES);
    xfer(ins, rns, ia, 5202, 5 * 1024 * 1024);

    for d in [&a, &b] {
        d.assert_alive();
        let (rx, tx) = d.transfer();
        assert!(
            rx > crate::XFER_BYTES / 20 && tx > 0,
            "{} {}: transfer counters rx={rx} tx={tx} do not show the traffic",
            d.imp.label(),
            d.iface
        );
    }
    // the responder learnt the initiator's endpoint from the handshake
    let (resp, want) = if a_init {
        (&b, n.endpoint(&n.va, PORT_A))
    } else {
        (&a, n.endpoint(&n.vb, PORT_B))
    };
    let eps = resp.endpoints();
    assert!(
        eps.contains(&want),
        "responder endpoints {eps:?}, expected {want}"
    );
    for d in [&a, &b] {
        if d.imp == Impl::Polytun {
            let j = d.show_json();
            let p = &j["tunnels"][0]["peers"][0];
            assert!(
                p["latest_handshake_unix"].as_u64().unwrap_or(0) > 1_600_000_000,
                "polytun show --json: no latest_handshake_unix: {j}"
            );
            assert_eq!(j["tunnels"][0]["protocol"], "wireguard", "{j}");
            assert_eq!(
                j["tunnels"][0]["listen_port"].as_u64(),
                Some(u64::from(d.listen_port)),
                "{j}"
            );
        }
    }
}

/// Roaming: A (`imp_a`, the initiator) sends a large transfer to B; once data flows, A's underlay
/// address changes from 192.0.2.1 to 192.0.2.3; the transfer must complete with a matching
/// checksum and B must have moved its endpoint for A.
pub fn roaming_test(test: &str, imp_a: Impl, imp_b: Impl) {
    let n = PairNet::new(test, false);
    let b = Device::start(&n.b, imp_b, &n.cfg_b(false));
    let a = Device::start(&n.a, imp_a, &n.cfg_a(true));
    wait_ping(&n.a, OL_B, Duration::from_secs(20));
    // keep the new address when the primary one is deleted
    n.a.run_ok(&[
        "sysctl",
        "-qw",
        &format!("net.ipv4.conf.{}.promote_secondaries=1", n.va.dev),
    ]);
    let run = xfer_start(&n.b, &n.a, OL_B, 5201, 120 * 1024 * 1024);
    let (rx0, _) = b.transfer();
    crate::wait_until("transfer under way", Duration::from_secs(20), || {
        b.transfer().0 > rx0 + 5 * 1024 * 1024
    });
    assert!(
        !run.done(),
        "the transfer ended before the address change; make it larger"
    );
    n.a.ip(&["addr", "add", "192.0.2.3/24", "dev", &n.va.dev]);
    n.a.ip(&["addr", "del", "192.0.2.1/24", "dev", &n.va.dev]);
    eprintln!("roamed: 192.0.2.1 -> 192.0.2.3 during the transfer");
    run.finish(Duration::from_secs(180));
    let want = format!("192.0.2.3:{PORT_A}");
    crate::wait_until(
        &format!("B's endpoint for A to become {want}"),
        Duration::from_secs(5),
        || b.endpoints().contains(&want),
    );
    let loss = ping(&n.a, OL_B, 5);
    assert_eq!(loss, 0.0, "ping after roaming lost {loss}%");
    a.assert_alive();
    b.assert_alive();
}

/// Overlay IPv6 addresses of side A and B (dual-stack tunnel).
pub const OL6_A: &str = "2001:db8:100::1";
pub const OL6_B: &str = "2001:db8:100::2";

/// Dual-stack overlay: IPv6 inside the tunnel as well (addresses `2001:db8:100::N/64`, allowed
/// IPs `/128`). A initiates; ping6 and a 50 MB checksummed transfer over IPv6 inside the tunnel.
pub fn dual_stack_test(test: &str, imp_a: Impl, imp_b: Impl) {
    let n = PairNet::new(test, false);
    let mut cb = n.cfg_b(false);
    cb.address.push(format!("{OL6_B}/64"));
    cb.peers[0].allowed_ips.push(format!("{OL6_A}/128"));
    let mut ca = n.cfg_a(true);
    ca.address.push(format!("{OL6_A}/64"));
    ca.peers[0].allowed_ips.push(format!("{OL6_B}/128"));
    let _b = Device::start(&n.b, imp_b, &cb);
    let _a = Device::start(&n.a, imp_a, &ca);
    wait_ping(&n.a, OL_B, Duration::from_secs(20));
    // the TUN's IPv6 address goes through duplicate address detection first
    crate::wait_until("IPv6 inside the tunnel", Duration::from_secs(10), || {
        ping(&n.a, OL6_B, 1) == 0.0
    });
    let loss = ping(&n.a, OL6_B, 10);
    assert_eq!(loss, 0.0, "ping6 {OL6_B} through the tunnel lost {loss}%");
    xfer(&n.b, &n.a, OL6_B, 5201, crate::XFER_BYTES);
}
