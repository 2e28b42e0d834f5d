//! WireGuard devices in a namespace: wireguard-go, boringtun-cli and polytun-wg are configured
//! through the cross-platform UAPI with `wg set`; polytund through its TOML config (contract).
use crate::{bins, Netns};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Which implementation runs a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// `wireguard-go -f IFACE` + `wg set`
    WireguardGo,
    /// `boringtun-cli -f --disable-drop-privileges IFACE` + `wg set`
    Boringtun,
    /// `polytun-wg -f IFACE` + `wg set` (the wireguard-go drop-in)
    PolytunWg,
    /// `polytund --config FILE`
    Polytun,
}

impl Impl {
    pub fn label(self) -> &'static str {
        match self {
            Impl::WireguardGo => "wireguard-go",
            Impl::Boringtun => "boringtun",
            Impl::PolytunWg => "polytun-wg",
            Impl::Polytun => "polytund",
        }
    }
    /// Configured through the UAPI socket by `wg set` (everything but polytund).
    pub fn uapi(self) -> bool {
        self != Impl::Polytun
    }
}

#[derive(Clone, Debug)]
pub struct Keypair {
    pub private: String,
    pub public: String,
}

fn wg_tool(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new(bins::tool("wg"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wg");
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(c.stdin.take());
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "wg {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

impl Keypair {
    /// A fresh key pair (`wg genkey | wg pubkey`).
    pub fn generate() -> Keypair {
        let private = wg_tool(&["genkey"], None);
        let public = wg_tool(&["pubkey"], Some(&private));
        Keypair { private, public }
    }
}

/// A fresh preshared key (`wg genpsk`).
pub fn genpsk() -> String {
    wg_tool(&["genpsk"], None)
}

#[derive(Clone, Debug, Default)]
pub struct PeerCfg {
    pub public_key: String,
    pub preshared_key: Option<String>,
    /// `None` → responder only (learns the endpoint from the handshake)
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub persistent_keepalive: Option<u16>,
}

#[derive(Clone, Debug)]
pub struct DevCfg {
    /// Unique per host (see [`crate::unique_ifname`]).
    pub iface: String,
    pub private_key: String,
    pub listen_port: u16,
    /// Overlay addresses with prefix, e.g. `198.51.100.1/24`.
    pub address: Vec<String>,
    pub mtu: u32,
    pub peers: Vec<PeerCfg>,
}

impl DevCfg {
    pub fn new(private_key: &str, listen_port: u16, address: &str) -> DevCfg {
        DevCfg {
            iface: crate::unique_ifname("wg"),
            private_key: private_key.to_string(),
            listen_port,
            address: vec![address.to_string()],
            mtu: 1420,
            peers: Vec::new(),
        }
    }

    /// The polytund TOML for this device (contract: `[interface]`, `[[tunnel]]`, `[[tunnel.peer]]`).
    pub fn to_polytun_toml(&self) -> String {
        let q = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!(
            "[interface]\nname = \"{}\"\naddress = [{}]\nmtu = {}\n\n[[tunnel]]\nname = \"wg\"\nprotocol = \"wireguard\"\nlisten_port = {}\nprivate_key = \"{}\"\n",
            self.iface,
            q(&self.address),
            self.mtu,
            self.listen_port,
            self.private_key
        );
        for (i, p) in self.peers.iter().enumerate() {
            s.push_str(&format!(
                "\n[[tunnel.peer]]\nname = \"peer{i}\"\npublic_key = \"{}\"\nallowed_ips = [{}]\n",
                p.public_key,
                q(&p.allowed_ips)
            ));
            if let Some(k) = &p.preshared_key {
                s.push_str(&format!("preshared_key = \"{k}\"\n"));
            }
            if let Some(e) = &p.endpoint {
                s.push_str(&format!("endpoint = \"{e}\"\n"));
            }
            if let Some(k) = p.persistent_keepalive {
                s.push_str(&format!("persistent_keepalive = {k}\n"));
            }
        }
        s
    }
}

/// A running WireGuard device. Its process is owned by the [`Netns`] (killed when it drops).
pub struct Device<'a> {
    pub ns: &'a Netns,
    pub imp: Impl,
    pub iface: String,
    pub pid: u32,
    pub listen_port: u16,
    /// polytund's config file (Polytun only)
    pub config: Option<PathBuf>,
}

fn uapi_sock(iface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{iface}.sock"))
}

impl<'a> Device<'a> {
    /// Start `imp` in `ns` with `cfg`, wait until it is up and configured.
    pub fn start(ns: &'a Netns, imp: Impl, cfg: &DevCfg) -> Device<'a> {
        if imp.uapi() {
            Self::start_uapi(ns, imp, cfg)
        } else {
            Self::start_polytund(ns, cfg)
        }
    }

    fn start_uapi(ns: &'a Netns, imp: Impl, cfg: &DevCfg) -> Device<'a> {
        let bin = match imp {
            Impl::WireguardGo => bins::tool("wireguard-go"),
            Impl::Boringtun => bins::tool("boringtun-cli"),
            Impl::PolytunWg => bins::polytun_wg(),
            Impl::Polytun => unreachable!(),
        };
        let wg = bins::tool("wg");
        let bin = bin.to_str().unwrap().to_string();
        let mut argv: Vec<&str> = vec![&bin, "-f"];
        if imp == Impl::Boringtun {
            argv.extend(["--disable-drop-privileges", "--threads", "2"]);
        }
        argv.push(&cfg.iface);
        ns.cleanup_file(uapi_sock(&cfg.iface));
        // boringtun/wireguard-go log more with this; harmless for the others
        let pid = ns.spawn_env(imp.label(), &argv, &[("LOG_LEVEL", "verbose")]);
        crate::wait_until(
            &format!("{} UAPI socket for {}", imp.label(), cfg.iface),
            Duration::from_secs(10),
            || {
                if let Some(st) = ns.try_wait(pid) {
                    panic!("{} exited early ({st}):\n{}", imp.label(), ns.log_of(pid));
                }
                uapi_sock(&cfg.iface).exists() && ns.run(&["ip", "link", "show", &cfg.iface]).ok()
            },
        );
        let dev = Device {
            ns,
            imp,
            iface: cfg.iface.clone(),
            pid,
            listen_port: cfg.listen_port,
            config: None,
        };
        let keyf = ns.write_file(&format!("{}.key", cfg.iface), &cfg.private_key);
        let port = cfg.listen_port.to_string();
        let wgs = wg.to_str().unwrap();
        let mut args: Vec<String> = vec![
            wgs.into(),
            "set".into(),
            cfg.iface.clone(),
            "private-key".into(),
            keyf.to_str().unwrap().into(),
            "listen-port".into(),
            port,
        ];
        for (i, p) in cfg.peers.iter().enumerate() {
            args.extend(["peer".into(), p.public_key.clone()]);
            if let Some(k) = &p.preshared_key {
                let f = ns.write_file(&format!("{}.psk{i}", cfg.iface), k);
                args.extend(["preshared-key".into(), f.to_str().unwrap().into()]);
            }
            if let Some(e) = &p.endpoint {
                args.extend(["endpoint".into(), e.clone()]);
            }
            if let Some(k) = p.persistent_keepalive {
                args.extend(["persistent-keepalive".into(), k.to_string()]);
            }
            args.extend(["allowed-ips".into(), p.allowed_ips.join(",")]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        ns.run_ok(&argv);
        for a in &cfg.address {
            ns.ip(&["addr", "add", a, "dev", &cfg.iface]);
        }
        ns.ip(&["link", "set", &cfg.iface, "mtu", &cfg.mtu.to_string(), "up"]);
        dev
    }

    /// polytund with extra environment variables (e.g. `POLYTUN_INTERFACE__MTU`).
    pub fn start_polytund_env(ns: &'a Netns, cfg: &DevCfg, env: &[(&str, &str)]) -> Device<'a> {
        Self::start_polytund_inner(ns, cfg, env)
    }

    fn start_polytund(ns: &'a Netns, cfg: &DevCfg) -> Device<'a> {
        Self::start_polytund_inner(ns, cfg, &[])
    }

    fn start_polytund_inner(ns: &'a Netns, cfg: &DevCfg, extra_env: &[(&str, &str)]) -> Device<'a> {
        let d = bins::polytund();
        let _ = bins::polytun();
        let conf = ns.write_file(&format!("{}.toml", cfg.iface), &cfg.to_polytun_toml());
        ns.cleanup_file(format!("/run/polytun/{}.sock", cfg.iface));
        let pid = ns.spawn_env(
            "polytund",
            &[d.to_str().unwrap(), "--config", conf.to_str().unwrap()],
            &[
                &[("RUST_LOG", "debug"), ("RUST_BACKTRACE", "1")][..],
                extra_env,
            ]
            .concat(),
        );
        let dev = Device {
            ns,
            imp: Impl::Polytun,
            iface: cfg.iface.clone(),
            pid,
            listen_port: cfg.listen_port,
            config: Some(conf),
        };
        crate::wait_until(
            &format!(
                "polytund {} to log `polytund: ready` and answer `polytun show --json`",
                cfg.iface
            ),
            Duration::from_secs(15),
            || {
                if let Some(st) = ns.try_wait(pid) {
                    panic!("polytund exited early ({st}):\n{}", ns.log_of(pid));
                }
                // contract: `polytund: ready` once the device is up and listening
                ns.log_of(pid).contains("polytund: ready") && dev.try_show_json().is_some()
            },
        );
        dev
    }

    /// `polytun -i IFACE show --json` parsed, or None if it fails.
    pub fn try_show_json(&self) -> Option<Value> {
        let cli = bins::polytun();
        let o = self.ns.run_env(
            &[cli.to_str().unwrap(), "-i", &self.iface, "show", "--json"],
            &[],
            Duration::from_secs(10),
        );
        if !o.ok() {
            return None;
        }
        serde_json::from_str(&o.stdout).ok()
    }

    /// `polytun -i IFACE show --json` (polytund only), panicking with the output on failure.
    pub fn show_json(&self) -> Value {
        assert_eq!(self.imp, Impl::Polytun, "show --json is polytund's");
        let cli = bins::polytun();
        let out = self
            .ns
            .run_ok(&[cli.to_str().unwrap(), "-i", &self.iface, "show", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("polytun show --json: {e}: {out}"))
    }

    /// Drop counters of the (first) WireGuard tunnel (polytund only).
    pub fn drops(&self) -> Value {
        let j = self.show_json();
        j["tunnels"][0]["drops"].clone()
    }

    /// Sum of (rx_bytes, tx_bytes) over all peers, from `wg show IFACE transfer` or
    /// `polytun show --json`.
    pub fn transfer(&self) -> (u64, u64) {
        if self.imp.uapi() {
            let wg = bins::tool("wg");
            let out = self
                .ns
                .run_ok(&[wg.to_str().unwrap(), "show", &self.iface, "transfer"]);
            out.lines().fold((0, 0), |(r, t), l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                (r + n(1), t + n(2))
            })
        } else {
            let j = self.show_json();
            let peers = j["tunnels"][0]["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            peers.iter().fold((0, 0), |(r, t), p| {
                (
                    r + p["rx_bytes"].as_u64().unwrap_or(0),
                    t + p["tx_bytes"].as_u64().unwrap_or(0),
                )
            })
        }
    }

    /// Endpoint(s) this device currently has for its peers.
    pub fn endpoints(&self) -> Vec<String> {
        if self.imp.uapi() {
            let wg = bins::tool("wg");
            let out = self
                .ns
                .run_ok(&[wg.to_str().unwrap(), "show", &self.iface, "endpoints"]);
            out.lines()
                .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
                .collect()
        } else {
            let j = self.show_json();
            j["tunnels"][0]["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p["endpoint"].as_str().map(String::from))
                .collect()
        }
    }

    /// Rewrite polytund's config file (polytund only); send SIGHUP with [`Device::reload`].
    pub fn rewrite_config(&self, cfg: &DevCfg) {
        let p = self.config.as_ref().expect("polytund device");
        std::fs::write(p, cfg.to_polytun_toml()).unwrap();
    }

    /// SIGHUP the daemon (config reload).
    pub fn reload(&self) {
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGHUP);
        }
    }

    /// Assert the daemon process is still running.
    pub fn assert_alive(&self) {
        if let Some(st) = self.ns.try_wait(self.pid) {
            panic!(
                "{} {} died ({st}):\n{}",
                self.imp.label(),
                self.iface,
                self.ns.log_of(self.pid)
            );
        }
    }
}
