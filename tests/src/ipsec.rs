//! IPsec peers for the e2e tests: strongSwan's charon (5.9, kernel-libipsec:
//! userspace ESP over its own TUN `ipsec0`, always UDP-encapsulated) and
//! polytund with `protocol = "ipsec"`.
//!
//! Each charon gets its own `strongswan.conf` (`STRONGSWAN_CONF`: explicit
//! plugin list with kernel-libipsec before kernel-netlink, a log file and a
//! VICI socket in the test directory), its own swanctl folder
//! (`SWANCTL_DIR`) and a private `/run` (bind-mounted in the mount namespace
//! `ip netns exec` creates), because its pid file is fixed at
//! `/var/run/charon.pid`. The harness kills it by PID when the namespace drops.
use crate::{bins, Netns};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const APT: &str = "apt-get install -y --no-install-recommends strongswan strongswan-swanctl charon-systemd libcharon-extra-plugins libstrongswan-extra-plugins libstrongswan-standard-plugins strongswan-pki";

/// charon's path; panics with the install command when strongSwan or its
/// kernel-libipsec plugin is missing (never skips).
pub fn charon_bin() -> PathBuf {
    let charon = PathBuf::from("/usr/lib/ipsec/charon");
    assert!(
        charon.is_file(),
        "strongSwan's charon (/usr/lib/ipsec/charon) is not installed: run `{APT}` (or `sudo scripts/install-test-deps.sh`)"
    );
    assert!(
        Path::new("/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so").is_file(),
        "strongSwan's kernel-libipsec plugin is not installed: run `{APT}`"
    );
    for p in ["gcm", "openssl", "chapoly"] {
        assert!(
            Path::new(&format!("/usr/lib/ipsec/plugins/libstrongswan-{p}.so")).is_file(),
            "strongSwan's {p} plugin is not installed: run `{APT}`"
        );
    }
    charon
}

/// A base64 PSK (32 random bytes), written `0s…` in both configs.
pub fn gen_psk() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("read /dev/urandom");
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// One side of an IPsec connection, in swanctl.conf terms.
#[derive(Clone, Debug, Default)]
pub struct IpsecSide {
    pub local_addr: String,
    pub remote_addr: String,
    pub local_id: String,
    pub remote_id: String,
    pub psk_b64: String,
    pub ike_proposal: String,
    pub esp_proposals: Vec<String>,
    /// Traffic selectors, comma-separated as swanctl takes them.
    pub local_ts: String,
    pub remote_ts: String,
    pub initiate: bool,
    /// strongSwan only: rekey the CHILD SA every this many seconds
    /// (CREATE_CHILD_SA), with one second of jitter.
    pub child_rekey_secs: Option<u32>,
    /// strongSwan only: rekey the IKE SA every this many seconds
    /// (CREATE_CHILD_SA), with up to two seconds of jitter.
    pub ike_rekey_secs: Option<u32>,
    /// strongSwan only: the `rand_time` of those rekeys (default 1 s for the
    /// CHILD SA, 2 s for the IKE SA).
    pub swan_rand_secs: Option<u32>,
    /// strongSwan only: more CHILD SA blocks inside `children { }`.
    pub swan_children_extra: String,
    /// polytun only: TOML lines added to the `[[tunnel]]` (the default
    /// `dpd_delay = "10s"` is left out when these set `dpd_delay`); may end
    /// with `[[tunnel.child]]` blocks.
    pub polytun_extra: String,
}

impl IpsecSide {
    /// The tests' usual side A: 192.0.2.1 (`a.pt.test`) to 192.0.2.2
    /// (`b.pt.test`), a fresh PSK, IKE AES-GCM-256/PRF-SHA256/X25519, ESP
    /// `esp`, inner addresses 198.51.100.1 and .2; and its [`Self::mirrored`] B.
    pub fn psk_pair(esp: &str, a_initiates: bool) -> (IpsecSide, IpsecSide) {
        let a = IpsecSide {
            local_addr: "192.0.2.1".into(),
            remote_addr: "192.0.2.2".into(),
            local_id: "a.pt.test".into(),
            remote_id: "b.pt.test".into(),
            psk_b64: gen_psk(),
            ike_proposal: "aes256gcm16-prfsha256-x25519".into(),
            esp_proposals: vec![esp.into()],
            local_ts: "198.51.100.1/32".into(),
            remote_ts: "198.51.100.2/32".into(),
            initiate: a_initiates,
            ..Default::default()
        };
        let b = a.mirrored();
        (a, b)
    }

    /// The other end of this side: addresses, identities and selectors
    /// swapped, initiating when this one does not; the rest shared.
    pub fn mirrored(&self) -> IpsecSide {
        IpsecSide {
            local_addr: self.remote_addr.clone(),
            remote_addr: self.local_addr.clone(),
            local_id: self.remote_id.clone(),
            remote_id: self.local_id.clone(),
            local_ts: self.remote_ts.clone(),
            remote_ts: self.local_ts.clone(),
            initiate: !self.initiate,
            ..self.clone()
        }
    }
}

/// The IKE and CHILD SAs one side holds, by SPI (hex as printed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaList {
    /// (state, initiator's SPI, responder's SPI)
    pub ike: Vec<(String, String, String)>,
    /// (state, inbound SPI, outbound SPI)
    pub children: Vec<(String, String, String)>,
}

impl SaList {
    /// Parses `swanctl --list-sas`.
    pub fn from_swanctl(text: &str) -> SaList {
        let mut l = SaList::default();
        let mut child: Option<(String, Option<String>)> = None;
        for line in text.lines() {
            let t = line.trim_start();
            let words: Vec<&str> = t.split([',', ' ']).filter(|w| !w.is_empty()).collect();
            if !line.starts_with(' ') && words.get(3) == Some(&"IKEv2") {
                // pt: #1, ESTABLISHED, IKEv2, 0123…_i* 4567…_r
                let spi = |suffix: &str| {
                    words
                        .iter()
                        .find_map(|w| w.trim_end_matches('*').strip_suffix(suffix))
                        .unwrap_or_default()
                        .to_string()
                };
                l.ike.push((words[2].to_string(), spi("_i"), spi("_r")));
            } else if words.get(2) == Some(&"reqid") {
                // net: #2, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:…
                child = Some((words.get(4).unwrap_or(&"").to_string(), None));
            } else if let (Some(("in", spi)), Some(c)) = (
                words.first().zip(words.get(1)).map(|(a, b)| (*a, *b)),
                child.as_mut(),
            ) {
                c.1 = Some(spi.to_string());
            } else if let (Some(("out", spi)), Some((state, Some(spi_in)))) = (
                words.first().zip(words.get(1)).map(|(a, b)| (*a, *b)),
                child.clone(),
            ) {
                l.children.push((state, spi_in, spi.to_string()));
                child = None;
            }
        }
        l
    }

    /// From `polytun show --json`'s first tunnel.
    pub fn from_polytun(show: &Value) -> SaList {
        let mut l = SaList::default();
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        for sa in show["tunnels"][0]["ike_sas"]
            .as_array()
            .into_iter()
            .flatten()
        {
            l.ike
                .push((s(&sa["state"]), s(&sa["spi_i"]), s(&sa["spi_r"])));
            for c in sa["children"].as_array().into_iter().flatten() {
                l.children
                    .push((s(&c["state"]), s(&c["spi_in"]), s(&c["spi_out"])));
            }
        }
        l
    }

    /// Do both sides hold the same settled SAs: the same IKE SAs, the same
    /// CHILD SAs (one side's inbound SPI is the other's outbound), all
    /// ESTABLISHED / INSTALLED, nothing else (no orphan on either side)?
    /// CHILD SAs strongSwan lists as DELETED are left out: after a rekey it
    /// keeps the old inbound SA for `charon.delete_rekeyed_delay` (5 s),
    /// after both sides deleted it.
    pub fn agrees_with(&self, peer: &SaList) -> Result<(), String> {
        let strip = |l: &SaList| SaList {
            ike: l.ike.clone(),
            children: l
                .children
                .iter()
                .filter(|c| c.0 != "DELETED")
                .cloned()
                .collect(),
        };
        let (this, peer) = (&strip(self), &strip(peer));
        let settled = |l: &SaList| {
            l.ike.iter().all(|s| s.0 == "ESTABLISHED")
                && l.children.iter().all(|c| c.0 == "INSTALLED")
        };
        if !settled(this) || !settled(peer) {
            return Err(format!("not settled:\n{this:?}\n{peer:?}"));
        }
        let mut ike_a: Vec<(String, String)> = this
            .ike
            .iter()
            .map(|s| (s.1.clone(), s.2.clone()))
            .collect();
        let mut ike_b: Vec<(String, String)> = peer
            .ike
            .iter()
            .map(|s| (s.1.clone(), s.2.clone()))
            .collect();
        ike_a.sort();
        ike_b.sort();
        let mut ch_a: Vec<(String, String)> = this
            .children
            .iter()
            .map(|c| (c.1.clone(), c.2.clone()))
            .collect();
        let mut ch_b: Vec<(String, String)> = peer
            .children
            .iter()
            .map(|c| (c.2.clone(), c.1.clone()))
            .collect();
        ch_a.sort();
        ch_b.sort();
        if ike_a != ike_b || ch_a != ch_b {
            return Err(format!("IKE SAs {ike_a:?} vs {ike_b:?}; CHILD SAs (in, out) {ch_a:?} vs the peer's (out, in) {ch_b:?}"));
        }
        Ok(())
    }
}

/// Polls both sides until they hold the same settled SAs (rekeys may be in
/// flight when one looks); panics with both listings after `timeout`.
pub fn wait_sas_agree(p: &PolytunIpsec<'_>, c: &Charon<'_>, timeout: Duration) -> SaList {
    let end = std::time::Instant::now() + timeout;
    loop {
        let swan_text = c.list_sas();
        let ours = SaList::from_polytun(&p.show_json());
        let theirs = SaList::from_swanctl(&swan_text);
        match ours.agrees_with(&theirs) {
            Ok(()) => return ours,
            Err(e) if std::time::Instant::now() >= end => panic!(
                "polytun and strongSwan do not agree on their SAs after {timeout:?}: {e}\nswanctl --list-sas:\n{swan_text}\npolytun show:\n{}",
                p.show_text()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Extra settings for one charon: lines added to the `charon { }` section
/// of strongswan.conf (e.g. `fragment_size = 200`) and to the connection
/// `pt { }` of swanctl.conf (e.g. `fragmentation = yes`).
#[derive(Clone, Debug, Default)]
pub struct CharonOpts {
    pub charon: Vec<String>,
    pub conn: Vec<String>,
}

/// A running charon in a namespace.
pub struct Charon<'a> {
    pub ns: &'a Netns,
    pub dir: PathBuf,
    pub pid: u32,
}

/// How a side authenticates: the side's PSK, or certificates.
#[derive(Clone, Debug)]
pub enum SideAuth {
    Psk,
    Cert(CertFiles),
}

/// One side's certificate files (PEM): its certificate, its private key,
/// the CA certificates it trusts.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Vec<PathBuf>,
}

/// Key types for test certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    Rsa2048,
    Ed25519,
}

/// A test CA made with `openssl` in `dir`: `C=CH, O=polytun, CN=<name>`,
/// issuing end-entity certificates `C=CH, O=polytun, CN=<cn>`.
pub struct Pki {
    pub dir: PathBuf,
    pub name: String,
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
}

fn openssl(args: &[&str]) {
    let o = std::process::Command::new(bins::tool("openssl"))
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn genkey(kind: KeyType, out: &Path) {
    let o = out.to_str().unwrap();
    match kind {
        KeyType::EcdsaP256 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            o,
        ]),
        KeyType::Rsa2048 => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            o,
        ]),
        KeyType::Ed25519 => openssl(&["genpkey", "-algorithm", "ed25519", "-out", o]),
    }
}

impl Pki {
    pub fn new(dir: &Path, name: &str, kind: KeyType) -> Pki {
        let dir = dir.join(format!("pki-{}", name.replace(' ', "_")));
        std::fs::create_dir_all(&dir).expect("mkdir pki");
        let ca_key = dir.join("ca.key");
        let ca_cert = dir.join("ca.pem");
        genkey(kind, &ca_key);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            ca_key.to_str().unwrap(),
            "-subj",
            &format!("/C=CH/O=polytun/CN={name}"),
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            ca_cert.to_str().unwrap(),
        ]);
        Pki {
            dir,
            name: name.into(),
            ca_cert,
            ca_key,
        }
    }

    /// The DN of an end entity `cn`, in strongSwan notation.
    pub fn dn(cn: &str) -> String {
        format!("C=CH, O=polytun, CN={cn}")
    }

    /// Issues `C=CH, O=polytun, CN=<cn>` (key `kind`) with these
    /// subjectAltNames (e.g. `DNS:moon.pt.test`, `IP:192.0.2.1`), valid for
    /// 30 days, trusting only this CA.
    pub fn issue(&self, cn: &str, sans: &[&str], kind: KeyType) -> CertFiles {
        let key = self.dir.join(format!("{cn}.key"));
        let csr = self.dir.join(format!("{cn}.csr"));
        let cert = self.dir.join(format!("{cn}.pem"));
        let ext = self.dir.join(format!("{cn}.ext"));
        genkey(kind, &key);
        let mut e = String::from("basicConstraints=CA:FALSE\n");
        if !sans.is_empty() {
            e.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(&ext, e).unwrap();
        openssl(&[
            "req",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            &format!("/C=CH/O=polytun/CN={cn}"),
            "-out",
            csr.to_str().unwrap(),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            self.ca_cert.to_str().unwrap(),
            "-CAkey",
            self.ca_key.to_str().unwrap(),
            "-set_serial",
            &rand_serial().to_string(),
            "-days",
            "30",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        CertFiles {
            cert,
            key,
            ca: vec![self.ca_cert.clone()],
        }
    }
}

fn rand_serial() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("read /dev/urandom");
    u64::from_be_bytes(b) >> 2
}

impl<'a> Charon<'a> {
    /// Writes the configs, starts charon, waits for VICI and loads the connection `pt`
    /// (child `net`). The inner address (`local_ts`) goes on `lo`.
    pub fn start(ns: &'a Netns, side: &IpsecSide) -> Charon<'a> {
        Self::start_full(ns, side, &SideAuth::Psk, &CharonOpts::default())
    }

    /// Like [`Charon::start`], authenticating with `auth`: certificates go
    /// into swanctl's x509/, x509ca/ and private/ folders.
    pub fn start_with(ns: &'a Netns, side: &IpsecSide, auth: &SideAuth) -> Charon<'a> {
        Self::start_full(ns, side, auth, &CharonOpts::default())
    }

    /// [`Charon::start`] with extra strongswan.conf / swanctl.conf lines.
    pub fn start_opts(ns: &'a Netns, side: &IpsecSide, opts: &CharonOpts) -> Charon<'a> {
        Self::start_full(ns, side, &SideAuth::Psk, opts)
    }

    /// Both: authentication and extra config lines.
    pub fn start_full(
        ns: &'a Netns,
        side: &IpsecSide,
        auth: &SideAuth,
        opts: &CharonOpts,
    ) -> Charon<'a> {
        let charon = charon_bin();
        let swanctl = bins::tool("swanctl");
        let dir = ns.dir().join("strongswan");
        for d in [
            "run",
            "swanctl/x509",
            "swanctl/x509ca",
            "swanctl/private",
            "swanctl/conf.d",
        ] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir strongswan dir");
        }
        let d = dir.display();
        let conf = format!(
            r#"charon {{
    load = random nonce openssl aes sha1 sha2 hmac gcm chapoly curve25519 kdf x509 pem pkcs1 pkcs8 pubkey kernel-libipsec kernel-netlink socket-default vici
    retransmit_tries = 3
    retransmit_timeout = 1.0{charon_extra}
    filelog {{
        charon {{
            path = {d}/charon.log
            time_format = %H:%M:%S
            default = 1
            ike = 2
            flush_line = yes
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{d}/charon.vici
        }}
    }}
}}
swanctl {{
    socket = unix://{d}/charon.vici
}}
"#,
            charon_extra = opts
                .charon
                .iter()
                .map(|l| format!("\n    {l}"))
                .collect::<String>(),
        );
        std::fs::write(dir.join("strongswan.conf"), conf).unwrap();
        let (local_auth, remote_auth, secrets) = match auth {
            SideAuth::Psk => (
                format!("auth = psk\n            id = {}", side.local_id),
                format!("auth = psk\n            id = {}", side.remote_id),
                format!(
                    "secrets {{\n    ike-pt {{\n        id-a = {}\n        id-b = {}\n        secret = 0s{}\n    }}\n}}\n",
                    side.local_id, side.remote_id, side.psk_b64
                ),
            ),
            SideAuth::Cert(f) => {
                std::fs::copy(&f.cert, dir.join("swanctl/x509/local.pem")).expect("copy cert");
                std::fs::copy(&f.key, dir.join("swanctl/private/local.pem")).expect("copy key");
                for (i, c) in f.ca.iter().enumerate() {
                    std::fs::copy(c, dir.join(format!("swanctl/x509ca/ca{i}.pem")))
                        .expect("copy ca");
                }
                (
                    format!(
                        "auth = pubkey\n            certs = local.pem\n            id = \"{}\"",
                        side.local_id
                    ),
                    format!("auth = pubkey\n            id = \"{}\"", side.remote_id),
                    String::new(),
                )
            }
        };
        let swan = format!(
            r#"connections {{
    pt {{
        version = 2
        local_addrs = {la}
        remote_addrs = {ra}
        proposals = {ike}
        mobike = no
        keyingtries = 1{conn_extra}
        local {{
            {local_auth}
        }}
        remote {{
            {remote_auth}
        }}
        children {{
            net {{
                local_ts = {lts}
                remote_ts = {rts}
                mode = tunnel
                esp_proposals = {esp}{rekey}
            }}{more}
        }}{ike_rekey}
    }}
}}
{secrets}"#,
            la = side.local_addr,
            ra = side.remote_addr,
            ike = side.ike_proposal,
            lts = side.local_ts,
            rts = side.remote_ts,
            esp = side.esp_proposals.join(","),
            conn_extra = opts
                .conn
                .iter()
                .map(|l| format!("\n        {l}"))
                .collect::<String>(),
            rekey = side.child_rekey_secs.map_or(String::new(), |r| format!(
                "\n                rekey_time = {r}s\n                life_time = {}s\n                rand_time = {}s",
                r * 4,
                side.swan_rand_secs.unwrap_or(1)
            )),
            more = side.swan_children_extra,
            ike_rekey = side.ike_rekey_secs.map_or(String::new(), |r| format!(
                "\n        rekey_time = {r}s\n        over_time = {}s\n        rand_time = {}s",
                r * 2,
                side.swan_rand_secs.unwrap_or(2)
            )),
        );
        std::fs::write(dir.join("swanctl/swanctl.conf"), swan).unwrap();
        let inner = side.local_ts.split('/').next().unwrap();
        ns.ip(&["addr", "add", &format!("{inner}/32"), "dev", "lo"]);
        let run = dir.join("run");
        let conf_path = dir.join("strongswan.conf");
        let pid = ns.spawn_env(
            "charon",
            &[
                "sh",
                "-c",
                "mount --bind \"$1\" /run && exec \"$2\"",
                "sh",
                run.to_str().unwrap(),
                charon.to_str().unwrap(),
            ],
            &[("STRONGSWAN_CONF", conf_path.to_str().unwrap())],
        );
        let c = Charon { ns, dir, pid };
        crate::wait_until("charon to answer on VICI", Duration::from_secs(15), || {
            if let Some(st) = ns.try_wait(pid) {
                panic!(
                    "charon exited early ({st}):\n{}\n{}",
                    ns.log_of(pid),
                    c.log()
                );
            }
            c.swanctl(&["--stats"]).ok()
        });
        let _ = swanctl;
        let o = c.swanctl(&["--load-all", "--noprompt"]);
        assert!(o.ok(), "swanctl --load-all: {}{}", o.stdout, o.stderr);
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    pub fn swanctl(&self, args: &[&str]) -> crate::Out {
        let swanctl = bins::tool("swanctl");
        let mut argv = vec![swanctl.to_str().unwrap()];
        argv.extend_from_slice(args);
        let conf = self.dir.join("strongswan.conf");
        let sw = self.dir.join("swanctl");
        self.ns.run_env(
            &argv,
            &[
                ("STRONGSWAN_CONF", conf.to_str().unwrap()),
                ("SWANCTL_DIR", sw.to_str().unwrap()),
            ],
            Duration::from_secs(40),
        )
    }

    /// `swanctl --initiate --child net`, panicking (with charon's log) on failure.
    pub fn initiate(&self) {
        let o = self.swanctl(&["--initiate", "--child", "net", "--timeout", "30"]);
        assert!(
            o.ok(),
            "swanctl --initiate failed:\n{}{}\ncharon log:\n{}",
            o.stdout,
            o.stderr,
            self.log()
        );
    }

    pub fn list_sas(&self) -> String {
        self.swanctl(&["--list-sas"]).stdout
    }

    /// The ESP algorithm of the installed CHILD SA, e.g. `AES_GCM_16-256`.
    pub fn child_alg(&self) -> Option<String> {
        self.list_sas().lines().find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("ESP:"))
                .map(|s| s.trim_end_matches(',').to_string())
        })
    }
}

/// polytund with an IPsec config.
pub struct PolytunIpsec<'a> {
    pub ns: &'a Netns,
    pub iface: String,
    pub pid: u32,
}

/// A comma-separated list (swanctl's form) as a TOML array of strings.
fn toml_list(list: &str) -> String {
    list.split(',')
        .map(|t| format!("\"{}\"", t.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The polytund TOML for one side (interface `iface`, inner address = the first of `local_ts`).
pub fn polytun_toml(iface: &str, side: &IpsecSide) -> String {
    polytun_toml_with(iface, side, &SideAuth::Psk)
}

/// [`polytun_toml`] authenticating with `auth` (`auth = "pubkey"`, cert, key, ca).
pub fn polytun_toml_with(iface: &str, side: &IpsecSide, auth: &SideAuth) -> String {
    let auth = match auth {
        SideAuth::Psk => format!("auth = \"psk\"\npsk = \"0s{}\"", side.psk_b64),
        SideAuth::Cert(f) => format!(
            "auth = \"pubkey\"\ncert = \"{}\"\nkey = \"{}\"\nca = [{}]",
            f.cert.display(),
            f.key.display(),
            f.ca.iter()
                .map(|c| format!("\"{}\"", c.display()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let esp: Vec<String> = side
        .esp_proposals
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect();
    format!(
        r#"[interface]
name = "{iface}"
address = ["{addr}/32"]

[[tunnel]]
name = "site"
protocol = "ipsec"
local_addrs = ["{la}"]
remote = "{ra}"
local_id = "{lid}"
remote_id = "{rid}"
{auth}
proposals = ["{ike}"]
esp_proposals = [{esp}]
local_ts = [{lts}]
remote_ts = [{rts}]
initiate = {init}
{dpd}{extra}
"#,
        addr = side.local_ts.split('/').next().unwrap(),
        la = side.local_addr,
        ra = side.remote_addr,
        lid = side.local_id,
        rid = side.remote_id,
        ike = side.ike_proposal,
        esp = esp.join(", "),
        lts = toml_list(&side.local_ts),
        rts = toml_list(&side.remote_ts),
        init = side.initiate,
        dpd = if side.polytun_extra.contains("dpd_delay") {
            ""
        } else {
            "dpd_delay = \"10s\"\n"
        },
        extra = side.polytun_extra,
    )
}

impl<'a> PolytunIpsec<'a> {
    pub fn start(ns: &'a Netns, iface: &str, side: &IpsecSide) -> PolytunIpsec<'a> {
        Self::start_toml(ns, iface, &polytun_toml(iface, side))
    }

    /// polytund with this config text; waits for `polytund: ready` and `show`.
    pub fn start_toml(ns: &'a Netns, iface: &str, toml: &str) -> PolytunIpsec<'a> {
        let d = bins::polytund();
        let _ = bins::polytun();
        let conf = ns.write_file(&format!("{iface}.toml"), toml);
        ns.cleanup_file(format!("/run/polytun/{iface}.sock"));
        let pid = ns.spawn_env(
            "polytund",
            &[d.to_str().unwrap(), "--config", conf.to_str().unwrap()],
            &[("RUST_LOG", "debug"), ("RUST_BACKTRACE", "1")],
        );
        let p = PolytunIpsec {
            ns,
            iface: iface.to_string(),
            pid,
        };
        crate::wait_until("polytund ready", Duration::from_secs(15), || {
            if let Some(st) = ns.try_wait(pid) {
                panic!("polytund exited early ({st}):\n{}", ns.log_of(pid));
            }
            ns.log_of(pid).contains("polytund: ready") && p.try_show_json().is_some()
        });
        p
    }

    pub fn try_show_json(&self) -> Option<Value> {
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

    pub fn show_json(&self) -> Value {
        self.try_show_json()
            .unwrap_or_else(|| panic!("polytun show --json failed:\n{}", self.log()))
    }

    pub fn show_text(&self) -> String {
        let cli = bins::polytun();
        self.ns
            .run_ok(&[cli.to_str().unwrap(), "-i", &self.iface, "show"])
    }

    pub fn log(&self) -> String {
        self.ns.log_of(self.pid)
    }

    /// The tunnel's IKE SAs (`tunnels[0].ike_sas`).
    pub fn ike_sas(&self) -> Vec<Value> {
        self.show_json()["tunnels"][0]["ike_sas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// (rx_bytes, tx_bytes) summed over every CHILD SA.
    pub fn child_bytes(&self) -> (u64, u64) {
        let mut r = (0, 0);
        for sa in self.ike_sas() {
            for c in sa["children"].as_array().cloned().unwrap_or_default() {
                r.0 += c["rx_bytes"].as_u64().unwrap_or(0);
                r.1 += c["tx_bytes"].as_u64().unwrap_or(0);
            }
        }
        r
    }

    /// `polytun ARGS…` (e.g. `rekey --ike`); panics when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let cli = bins::polytun();
        let mut argv = vec![cli.to_str().unwrap(), "-i", &self.iface];
        argv.extend_from_slice(args);
        self.ns.run_ok(&argv)
    }

    /// `polytun down`, then wait for polytund to exit.
    pub fn down(&self) {
        let cli = bins::polytun();
        self.ns
            .run_ok(&[cli.to_str().unwrap(), "-i", &self.iface, "down"]);
        assert!(
            self.ns
                .wait_exit(self.pid, Duration::from_secs(10))
                .is_some(),
            "polytund did not exit after `polytun down`"
        );
    }
}
