//! OpenVPN 2.6 peers for the interop tests: a PKI made with `openssl`
//! (ECDSA P-256), the `openvpn` server in a namespace, and polytund as an
//! OpenVPN client (TOML or .ovpn config, `polytun show --json`).
use crate::{bins, wait_until, Netns};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The server's tunnel address (topology subnet: the first client gets .2).
pub const SERVER_TUN: &str = "198.51.100.1";
pub const CLIENT_TUN: &str = "198.51.100.2";
/// A network the server pushes a route for (and has an address in, on lo).
pub const PUSHED_NET: &str = "203.0.113.0/24";
pub const PUSHED_HOST: &str = "203.0.113.1";
pub const PUSHED_DNS: &str = "198.51.100.53";
pub const PORT: u16 = 1194;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    TlsCrypt,
    TlsAuth,
}

/// CA, server and client certificates and a tls-crypt/tls-auth key, in `dir`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn path(&self, f: &str) -> String {
        self.dir.join(f).to_str().unwrap().to_string()
    }

    pub fn new(ns: &Netns) -> Pki {
        let dir = ns.dir().join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        let openssl = bins::tool("openssl");
        let ossl = |args: &[&str]| {
            let o = std::process::Command::new(&openssl)
                .args(args)
                .current_dir(&pki.dir)
                .output()
                .expect("run openssl");
            assert!(
                o.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
        ossl(&[&["genpkey"][..], &ec, &["-out", "ca.key"]].concat());
        ossl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=pt-ca",
            "-days",
            "2",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        for (n, eku) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let key = format!("{n}.key");
            let csr = format!("{n}.csr");
            let crt = format!("{n}.crt");
            let ext = format!("{n}.ext");
            ossl(&[&["genpkey"][..], &ec, &["-out", &key]].concat());
            ossl(&[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={n}"),
                "-out",
                &csr,
            ]);
            std::fs::write(
                pki.dir.join(&ext),
                format!(
                    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={eku}\n"
                ),
            )
            .unwrap();
            ossl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ]);
        }
        pki.genkey("ta.key");
        pki
    }

    /// A fresh OpenVPN static key (tls-crypt / tls-auth) at `name`.
    pub fn genkey(&self, name: &str) -> String {
        let p = self.path(name);
        let o = std::process::Command::new(bins::tool("openvpn"))
            .args(["--genkey", "secret", &p])
            .output()
            .expect("run openvpn --genkey");
        assert!(o.status.success(), "openvpn --genkey: {o:?}");
        p
    }
}

/// The server config (as openvpn-pair.sh runs it) plus pushed route and DNS.
pub fn server_conf(pki: &Pki, listen: &str, proto: Proto, mode: KeyMode, cipher: &str) -> String {
    let ta = pki.path("ta.key");
    let wrap = match mode {
        KeyMode::TlsCrypt => format!("tls-crypt {ta}"),
        KeyMode::TlsAuth => format!("tls-auth {ta} 0"),
    };
    format!(
        "dev tun\nproto {}\nlocal {listen}\nport {PORT}\ntopology subnet\n\
         server 198.51.100.0 255.255.255.0\nca {}\ncert {}\nkey {}\ndh none\n{wrap}\n\
         data-ciphers {cipher}\nkeepalive 10 60\nverb 3\n\
         push \"route 203.0.113.0 255.255.255.0\"\npush \"dhcp-option DNS {PUSHED_DNS}\"\n",
        match proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp-server",
        },
        pki.path("ca.crt"),
        pki.path("server.crt"),
        pki.path("server.key"),
    )
}

/// Starts `openvpn --config` with `conf` in `ns` and waits for it to listen.
pub fn start_server(ns: &Netns, conf: &str) -> u32 {
    let bin = bins::tool("openvpn");
    let path = ns.write_file("server.conf", conf);
    // the pushed route leads somewhere: an address in it on the server
    ns.ip(&["addr", "replace", &format!("{PUSHED_HOST}/32"), "dev", "lo"]);
    let pid = ns.spawn(
        "openvpn-server",
        &[bin.to_str().unwrap(), "--config", path.to_str().unwrap()],
    );
    wait_until(
        "the openvpn server to finish its initialization",
        Duration::from_secs(20),
        || {
            if let Some(st) = ns.try_wait(pid) {
                panic!("openvpn server exited early ({st}):\n{}", ns.log_of(pid));
            }
            ns.log_of(pid).contains("Initialization Sequence Completed")
        },
    );
    pid
}

/// polytund running an OpenVPN client tunnel.
pub struct Client<'a> {
    pub ns: &'a Netns,
    pub iface: String,
    pub pid: u32,
}

/// The `[[tunnel]]` of a polytun OpenVPN client (TOML fields).
pub fn client_tunnel_toml(
    pki: &Pki,
    remote: &str,
    proto: Proto,
    mode: KeyMode,
    ciphers: &[&str],
    key_file: &str,
) -> String {
    let wrap = match mode {
        KeyMode::TlsCrypt => format!("tls_crypt = \"{key_file}\""),
        KeyMode::TlsAuth => format!("tls_auth = \"{key_file}\"\nkey_direction = 1"),
    };
    format!(
        "[[tunnel]]\nname = \"vpn\"\nprotocol = \"openvpn\"\nremote = \"{remote}:{PORT}\"\n\
         proto = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{wrap}\ndata_ciphers = [{}]\n",
        match proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        },
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
        ciphers
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl<'a> Client<'a> {
    /// Starts polytund with `[interface]` + `tunnel` (TOML) in `ns`.
    pub fn start(ns: &'a Netns, tunnel: &str) -> Client<'a> {
        let iface = crate::unique_ifname("pto");
        let conf = format!("[interface]\nname = \"{iface}\"\n\n{tunnel}");
        let path = ns.write_file(&format!("{iface}.toml"), &conf);
        Self::start_with(ns, iface, path)
    }

    pub fn start_with(ns: &'a Netns, iface: String, config: PathBuf) -> Client<'a> {
        let d = bins::polytund();
        let _ = bins::polytun();
        ns.cleanup_file(format!("/run/polytun/{iface}.sock"));
        let pid = ns.spawn_env(
            "polytund",
            &[d.to_str().unwrap(), "--config", config.to_str().unwrap()],
            &[("RUST_LOG", "debug"), ("RUST_BACKTRACE", "1")],
        );
        let c = Client { ns, iface, pid };
        wait_until("polytund to be ready", Duration::from_secs(15), || {
            c.assert_alive();
            c.log().contains("polytund: ready") && c.try_show().is_some()
        });
        c
    }

    pub fn log(&self) -> String {
        self.ns.log_of(self.pid)
    }

    pub fn assert_alive(&self) {
        if let Some(st) = self.ns.try_wait(self.pid) {
            panic!("polytund exited ({st}):\n{}", self.log());
        }
    }

    pub fn try_show(&self) -> Option<Value> {
        let cli = bins::polytun();
        let o = self.ns.run_env(
            &[cli.to_str().unwrap(), "-i", &self.iface, "show", "--json"],
            &[],
            Duration::from_secs(10),
        );
        o.ok()
            .then(|| serde_json::from_str(&o.stdout).ok())
            .flatten()
    }

    /// The first tunnel's `openvpn` section of `polytun show --json`.
    pub fn session(&self) -> Value {
        let v = self.try_show().expect("polytun show --json");
        v["tunnels"][0]["openvpn"].clone()
    }

    /// `polytun -i IFACE ARGS...`, its stdout (the command must succeed).
    pub fn cli(&self, args: &[&str]) -> String {
        let cli = bins::polytun();
        let mut all = vec![cli.to_str().unwrap(), "-i", &self.iface];
        all.extend_from_slice(args);
        self.ns.run_ok(&all)
    }

    /// `polytun show` as text.
    pub fn show_text(&self) -> String {
        let cli = bins::polytun();
        self.ns
            .run_ok(&[cli.to_str().unwrap(), "-i", &self.iface, "show"])
    }

    pub fn wait_connected(&self, timeout: Duration) {
        wait_until("the OpenVPN session to connect", timeout, || {
            self.assert_alive();
            self.session()["state"] == "connected"
        });
    }
}

/// An `openvpn` 2.6 client config for a server at `remote` (the counterpart
/// of [`server_conf`]); over UDP it announces its exit (explicit-exit-notify).
pub fn client_conf(pki: &Pki, remote: &str, proto: Proto, mode: KeyMode, cipher: &str) -> String {
    let ta = pki.path("ta.key");
    let wrap = match mode {
        KeyMode::TlsCrypt => format!("tls-crypt {ta}"),
        KeyMode::TlsAuth => format!("tls-auth {ta} 1"),
    };
    format!(
        "client\ndev tun\nproto {}\nremote {remote} {PORT}\nnobind\nca {}\ncert {}\nkey {}\n\
         {wrap}\nremote-cert-tls server\ndata-ciphers {cipher}\nverb 3\n{}",
        match proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp-client",
        },
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
        if proto == Proto::Udp {
            "explicit-exit-notify 1\n"
        } else {
            ""
        }
    )
}

/// Starts an `openvpn` client with `conf` in `ns` and waits until its
/// tunnel is up ("Initialization Sequence Completed").
pub fn start_client(ns: &Netns, conf: &str) -> u32 {
    let bin = bins::tool("openvpn");
    let path = ns.write_file("client.conf", conf);
    let pid = ns.spawn(
        "openvpn-client",
        &[bin.to_str().unwrap(), "--config", path.to_str().unwrap()],
    );
    wait_until(
        "the openvpn client to connect",
        Duration::from_secs(40),
        || {
            if let Some(st) = ns.try_wait(pid) {
                panic!("openvpn client exited early ({st}):\n{}", ns.log_of(pid));
            }
            ns.log_of(pid).contains("Initialization Sequence Completed")
        },
    );
    pid
}

/// The `[[tunnel]]` of a polytun OpenVPN server listening on `local`
/// (pool 198.51.100.0/24, pushed route [`PUSHED_NET`] and DNS
/// [`PUSHED_DNS`], `keepalive 10 60`).
pub fn server_tunnel_toml(
    pki: &Pki,
    local: &str,
    proto: Proto,
    mode: KeyMode,
    ciphers: &[&str],
) -> String {
    let ta = pki.path("ta.key");
    let wrap = match mode {
        KeyMode::TlsCrypt => format!("tls_crypt = \"{ta}\""),
        KeyMode::TlsAuth => format!("tls_auth = \"{ta}\"\nkey_direction = 0"),
    };
    format!(
        "[[tunnel]]\nname = \"vpn\"\nprotocol = \"openvpn\"\nmode = \"server\"\n\
         local = \"{local}\"\nlisten_port = {PORT}\nproto = \"{}\"\nserver = \"198.51.100.0/24\"\n\
         ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{wrap}\ndata_ciphers = [{}]\n\
         push = [\"route 203.0.113.0 255.255.255.0\", \"dhcp-option DNS {PUSHED_DNS}\"]\n\
         keepalive = [10, 60]\n",
        match proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        },
        pki.path("ca.crt"),
        pki.path("server.crt"),
        pki.path("server.key"),
        ciphers
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A server `[[tunnel]]` (from [`server_tunnel_toml`]) whose `push` list is
/// `push` instead.
pub fn with_push(tunnel: &str, push: &[&str]) -> String {
    let list = push
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    tunnel
        .lines()
        .map(|l| {
            if l.starts_with("push = ") {
                format!("push = [{list}]\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}
