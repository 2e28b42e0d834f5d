//! OpenVPN tunnel settings: from `[[tunnel]]` fields of the TOML config or
//! from a standard `.ovpn` client file (`config = "client.ovpn"`).
//!
//! Everything is checked here (PEM certificates and keys parse, the static
//! key file parses, cipher names are known), so a bad value is reported
//! with its file, line and field before anything starts.

use crate::config::ConfigError;
use ipnet::IpNet;
use polytun_openvpn::compress::Framing;
use polytun_openvpn::data::Cipher;
use polytun_openvpn::keymethod::Credentials;
use polytun_openvpn::rekey::{RekeyConfig, RenegSec};
use polytun_openvpn::static_key::StaticKey;
use polytun_openvpn::tls::{CertUsage, PeerPolicy, X509NameCheck};
use polytun_openvpn::wrap::Digest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

pub const DEFAULT_PORT: u16 = 1194;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Key material as read from its file (a private key's PEM, a static
/// key): wiped on drop, and never printed: `Debug` shows only that it is
/// there (settings are logged and compared whole).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(text: Zeroizing<String>) -> Self {
        Secret(text)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Control-channel protection and its static key (file text, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMode {
    None,
    TlsCrypt(Secret),
    TlsAuth {
        key: Secret,
        direction: Option<u8>,
        digest: Digest,
    },
}

impl KeyMode {
    pub fn name(&self) -> &'static str {
        match self {
            KeyMode::None => "none",
            KeyMode::TlsCrypt(_) => "tls-crypt",
            KeyMode::TlsAuth { .. } => "tls-auth",
        }
    }
}

/// A validated OpenVPN tunnel (client, or server with [`OpenVpn::server`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenVpn {
    /// Client: the server. Server: the address and port it listens on.
    pub remote: SocketAddr,
    pub transport: Transport,
    /// CA certificates (PEM); None with `peer_fingerprints`.
    pub ca: Option<String>,
    /// Our certificate and key (PEM); a client with `credentials` may go
    /// without (a server with `verify-client-cert none`).
    pub cert: Option<String>,
    pub key: Option<Secret>,
    /// Client: `auth-user-pass`.
    pub credentials: Option<Credentials>,
    pub key_mode: KeyMode,
    pub data_ciphers: Vec<Cipher>,
    pub peer_fingerprints: Vec<[u8; 32]>,
    /// `remote-cert-tls server`, `verify-x509-name`.
    pub policy: PeerPolicy,
    pub hand_window: Duration,
    /// Client-side `ping` / `ping-restart` (the server's push overrides).
    pub ping: Option<u32>,
    pub ping_restart: Option<u32>,
    /// `reneg-sec`, `reneg-bytes`, `reneg-pkts`, `tran-window`.
    pub rekey: RekeyConfig,
    /// `comp-lzo` / `compress ALG`: the compression framing (never
    /// compression). A client's is replaced by what its server pushes.
    pub framing: Framing,
    /// `allow-compression no`: packets the peer compressed are refused
    /// even where the option names an algorithm (by default they are
    /// decompressed there, as OpenVPN 2.6 does).
    pub decompress: bool,
    /// Server: `compress migrate`, a framing per client as OpenVPN picks
    /// it (clients whose options say `comp-lzo` get `compress stub-v2`,
    /// or `comp-lzo no` if they cannot take it; others none).
    pub compress_migrate: bool,
    /// Where the settings came from (a .ovpn file), for messages.
    pub source: Option<PathBuf>,
    /// `mode = "server"`: the server's own settings.
    pub server: Option<Box<ServerSettings>>,
}

/// An OpenVPN server's settings (`mode server`, `server NET MASK`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `server`: the virtual network (topology subnet); the server takes the
    /// first address, clients get the following ones.
    pub pool: ipnet::Ipv4Net,
    /// `server-ipv6`: IPv6 inside the tunnel too. The server takes the
    /// first address; client N of the IPv4 pool gets `network + 0x1000 + N`,
    /// as OpenVPN numbers its IPv6 pool.
    pub pool6: Option<ipnet::Ipv6Net>,
    /// Networks behind a client, by its certificate's common name
    /// (OpenVPN's `iroute`/`iroute-ipv6` in a client-config-dir file): the
    /// server routes them to that client and takes them as its sources.
    pub iroutes: std::collections::BTreeMap<String, Vec<IpNet>>,
    /// Routes the server puts on its TUN: every iroute's network, and a
    /// server .conf's `route`/`route-ipv6` lines.
    pub routes: Vec<IpNet>,
    /// `push "..."` options, sent to every client before the per-client ones.
    pub push: Vec<String>,
    /// Options pushed to one client, by its certificate's common name, after
    /// the common ones (a client-config-dir file's `push` lines).
    pub client_push: std::collections::BTreeMap<String, Vec<String>>,
    pub max_clients: usize,
}

/// Options the server sets per client: `push` must not carry them.
const SERVER_SET: &[&str] = &[
    "ifconfig",
    "ifconfig-ipv6",
    "peer-id",
    "cipher",
    "protocol-flags",
    "topology",
    "route-gateway",
    "key-derivation",
    "push-continuation",
];

/// The `[[tunnel]]` fields an OpenVPN tunnel uses, as written.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawFields<'a> {
    pub role: Option<&'a str>,
    pub config: Option<&'a Path>,
    pub remote: Option<&'a str>,
    pub proto: Option<&'a str>,
    pub ca: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub auth_user_pass: Option<&'a Path>,
    pub tls_crypt: Option<&'a Path>,
    pub tls_auth: Option<&'a Path>,
    pub key_direction: Option<u8>,
    pub data_ciphers: Option<&'a [String]>,
    pub peer_fingerprint: Option<&'a [String]>,
    pub hand_window: Option<u32>,
    pub mode: Option<&'a str>,
    pub server: Option<&'a str>,
    pub server_ipv6: Option<&'a str>,
    pub iroutes: Option<&'a std::collections::BTreeMap<String, Vec<String>>>,
    pub client_push: Option<&'a std::collections::BTreeMap<String, Vec<String>>>,
    pub push: Option<&'a [String]>,
    pub keepalive: Option<&'a [u32]>,
    pub max_clients: Option<u32>,
    pub local: Option<&'a str>,
    pub listen_port: Option<u16>,
    pub reneg_sec: Option<u32>,
    pub reneg_bytes: Option<u64>,
    pub reneg_pkts: Option<u64>,
    pub tran_window: Option<u32>,
    pub remote_cert_tls: Option<&'a str>,
    pub verify_x509_name: Option<&'a str>,
    pub verify_x509_type: Option<&'a str>,
    pub compress: Option<&'a str>,
}

/// One value and where it was written: a TOML field, or a .ovpn line.
#[derive(Clone, Debug)]
enum Src {
    Toml(&'static str),
    Ovpn { line: usize, option: String },
}

/// Either a path to read or text given inline (`<ca>...</ca>`).
#[derive(Clone, Debug)]
enum Material {
    Path(PathBuf),
    Inline(String),
}

#[derive(Default)]
struct Collected {
    remote: Option<(String, Src)>,
    proto: Option<(String, Src)>,
    ca: Option<(Material, Src)>,
    cert: Option<(Material, Src)>,
    key: Option<(Material, Src)>,
    tls_crypt: Option<(Material, Src)>,
    tls_auth: Option<(Material, Src)>,
    auth_user_pass: Option<(Material, Src)>,
    key_direction: Option<(u8, Src)>,
    auth: Option<(String, Src)>,
    data_ciphers: Option<(Vec<String>, Src)>,
    fingerprints: Vec<(String, Src)>,
    hand_window: Option<u32>,
    ping: Option<u32>,
    ping_restart: Option<u32>,
    mode: Option<(String, Src)>,
    server: Option<(String, Src)>,
    server_ipv6: Option<(String, Src)>,
    /// (common name, network, where it was configured)
    iroutes: Vec<(String, IpNet, Src)>,
    /// (common name, pushed option): a client-config-dir file's `push`
    /// lines, or TOML `client_push` (checked where they were read).
    client_push: Vec<(String, String)>,
    /// A server .conf's `route` / `route-ipv6` lines.
    conf_routes: Vec<(IpNet, Src)>,
    push: Vec<(String, Src)>,
    max_clients: Option<(u32, Src)>,
    local: Option<(String, Src)>,
    lport: Option<(u16, Src)>,
    reneg_sec: Option<RenegSec>,
    reneg_bytes: Option<u64>,
    reneg_pkts: Option<u64>,
    tran_window: Option<u32>,
    remote_cert_tls: bool,
    verify_x509_name: Option<(X509NameCheck, Src)>,
    /// `Err`: `compress migrate`.
    compress: Option<(Result<Framing, ()>, Src)>,
    /// `allow-compression`: false for `no`.
    decompress: Option<bool>,
}

/// Builds the settings; `toml_err(field, message)` makes an error for a
/// TOML field; `base` is the directory relative paths are taken from.
pub fn build(
    raw: &RawFields<'_>,
    base: &Path,
    toml_err: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<OpenVpn, ConfigError> {
    let mut c = Collected::default();
    let mut source = None;
    if let Some(p) = raw.config {
        let p = abs(base, p);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| toml_err("config", format!("cannot read {}: {e}", p.display())))?;
        parse_ovpn(&p, &text, &mut c)?;
        source = Some(p);
    }
    // TOML fields (override the .ovpn file's values).
    let t = |f: &'static str| Src::Toml(f);
    let mat = |p: Option<&Path>, f: &'static str| p.map(|p| (Material::Path(abs(base, p)), t(f)));
    if let Some(r) = raw.remote {
        c.remote = Some((r.to_string(), t("remote")));
    }
    if let Some(r) = raw.proto {
        c.proto = Some((r.to_string(), t("proto")));
    }
    c.ca = mat(raw.ca, "ca").or(c.ca);
    c.cert = mat(raw.cert, "cert").or(c.cert);
    c.key = mat(raw.key, "key").or(c.key);
    c.tls_crypt = mat(raw.tls_crypt, "tls_crypt").or(c.tls_crypt);
    c.tls_auth = mat(raw.tls_auth, "tls_auth").or(c.tls_auth);
    c.auth_user_pass = mat(raw.auth_user_pass, "auth_user_pass").or(c.auth_user_pass);
    if let Some(d) = raw.key_direction {
        c.key_direction = Some((d, t("key_direction")));
    }
    if let Some(d) = raw.data_ciphers {
        c.data_ciphers = Some((d.to_vec(), t("data_ciphers")));
    }
    if let Some(f) = raw.peer_fingerprint {
        c.fingerprints = f
            .iter()
            .map(|s| (s.clone(), t("peer_fingerprint")))
            .collect();
    }
    if let Some(h) = raw.hand_window {
        c.hand_window = Some(h);
    }
    if let Some((m, f)) = raw
        .mode
        .map(|m| (m, "mode"))
        .or(raw.role.map(|r| (r, "role")))
    {
        c.mode = Some((m.to_string(), t(f)));
    }
    if let Some(v) = raw.server {
        c.server = Some((v.to_string(), t("server")));
    }
    if let Some(v) = raw.server_ipv6 {
        c.server_ipv6 = Some((v.to_string(), t("server_ipv6")));
    }
    if let Some(m) = raw.iroutes {
        c.iroutes.clear();
        for (cn, nets) in m {
            for n in nets {
                let net = network(n, Family::Any)
                    .map_err(|m| toml_err("iroutes", format!("`{cn}`: `{n}`: {m}")))?;
                c.iroutes.push((cn.clone(), net, t("iroutes")));
            }
        }
    }
    if let Some(v) = raw.push {
        c.push = v.iter().map(|p| (p.clone(), t("push"))).collect();
    }
    if let Some(m) = raw.client_push {
        c.client_push.clear();
        for (cn, opts) in m {
            for o in opts {
                check_push(o).map_err(|m| toml_err("client_push", format!("`{cn}`: {m}")))?;
                c.client_push.push((cn.clone(), o.trim().to_string()));
            }
        }
    }
    if let Some(k) = raw.keepalive {
        match k {
            [p, r] => {
                c.ping = Some(*p);
                c.ping_restart = Some(*r);
            }
            _ => {
                return Err(toml_err(
                    "keepalive",
                    "expected [PING, PING_RESTART] in seconds, e.g. [10, 60]".into(),
                ))
            }
        }
    }
    if let Some(v) = raw.max_clients {
        c.max_clients = Some((v, t("max_clients")));
    }
    if let Some(v) = raw.local {
        c.local = Some((v.to_string(), t("local")));
    }
    if let Some(v) = raw.listen_port {
        c.lport = Some((v, t("listen_port")));
    }
    if let Some(max) = raw.reneg_sec {
        c.reneg_sec = Some(RenegSec { max, min: None });
    }
    c.reneg_bytes = raw.reneg_bytes.or(c.reneg_bytes);
    c.reneg_pkts = raw.reneg_pkts.or(c.reneg_pkts);
    c.tran_window = raw.tran_window.or(c.tran_window);
    if let Some(v) = raw.compress {
        let f = match v {
            "migrate" => Err(()),
            v => Ok(Framing::from_toml(v).map_err(|m| {
                toml_err(
                    "compress",
                    format!(
                        "{m}; or \"comp-lzo\", \"comp-lzo no\" (a server also takes \"migrate\")"
                    ),
                )
            })?),
        };
        c.compress = Some((f, t("compress")));
    }
    if let Some(r) = raw.remote_cert_tls {
        if r != "server" {
            return Err(toml_err(
                "remote_cert_tls",
                format!("`{r}`: a client can only require `server`"),
            ));
        }
        c.remote_cert_tls = true;
    }
    match (raw.verify_x509_name, raw.verify_x509_type) {
        (Some(n), kind) => {
            let check = X509NameCheck::parse(n, kind).map_err(|m| {
                toml_err(
                    if kind.is_some() {
                        "verify_x509_type"
                    } else {
                        "verify_x509_name"
                    },
                    m,
                )
            })?;
            c.verify_x509_name = Some((check, t("verify_x509_name")));
        }
        (None, Some(_)) => {
            return Err(toml_err(
                "verify_x509_type",
                "set only together with verify_x509_name".into(),
            ))
        }
        (None, None) => {}
    }
    finish(c, source, base, toml_err)
}

fn abs(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn finish(
    c: Collected,
    source: Option<PathBuf>,
    base: &Path,
    toml_err: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<OpenVpn, ConfigError> {
    let err = |src: &Src, msg: String| -> ConfigError {
        match src {
            Src::Toml(f) => toml_err(f, msg),
            Src::Ovpn { line, option } => ConfigError {
                file: source.clone().unwrap_or_default(),
                line: Some(*line),
                field: option.clone(),
                message: msg,
            },
        }
    };
    let is_server = match &c.mode {
        None => false,
        Some((m, src)) => match m.as_str() {
            "client" => false,
            "server" => true,
            other => {
                return Err(err(
                    src,
                    format!("`{other}`: expected `client` or `server`"),
                ))
            }
        },
    };
    let role = if is_server { "server" } else { "client" };
    let missing = |what: &'static str, ovpn: &str| {
        toml_err(
            what,
            format!(
                "missing: an OpenVPN {role} needs `{what}` (or `{ovpn}` in the .ovpn/.conf file)"
            ),
        )
    };
    let transport = match &c.proto {
        None => Transport::Udp,
        Some((p, src)) => match p.as_str() {
            "udp" | "udp4" | "udp6" => Transport::Udp,
            "tcp" | "tcp4" | "tcp6" => Transport::Tcp,
            "tcp-client" | "tcp4-client" | "tcp6-client" if !is_server => Transport::Tcp,
            "tcp-server" | "tcp4-server" | "tcp6-server" if is_server => Transport::Tcp,
            other => {
                return Err(err(
                    src,
                    format!("`{other}`: expected `udp` or `tcp` (a {role})"),
                ))
            }
        },
    };
    let (framing, compress_migrate) = match &c.compress {
        None => (Framing::None, false),
        Some((Ok(f), _)) => (*f, false),
        Some((Err(()), _)) if is_server => (Framing::None, true),
        Some((Err(()), src)) => {
            return Err(err(
                src,
                "`compress migrate` is a server option; a client takes `comp-lzo` or \
                 `compress stub-v2`"
                    .into(),
            ))
        }
    };
    let server = if is_server {
        Some(Box::new(server_settings(&c, &err, &missing)?))
    } else if !c.client_push.is_empty() {
        return Err(toml_err("client_push", "a server setting".into()));
    } else {
        for (set, src) in [
            (
                // (`port` before `remote` in a client file stays harmless)
                c.lport
                    .as_ref()
                    .filter(|l| !matches!(&l.1, Src::Ovpn { option, .. } if option == "port"))
                    .map(|l| &l.1),
                "a client does not listen",
            ),
            (c.local.as_ref().map(|l| &l.1), "a client does not listen"),
            (c.server.as_ref().map(|l| &l.1), "a server setting"),
            (c.server_ipv6.as_ref().map(|l| &l.1), "a server setting"),
            (c.iroutes.first().map(|l| &l.2), "a server setting"),
            (
                c.conf_routes.first().map(|l| &l.1),
                "not supported in a client file (a client applies the routes the server pushes)",
            ),
            (c.push.first().map(|l| &l.1), "a server setting"),
            (c.max_clients.as_ref().map(|l| &l.1), "a server setting"),
        ] {
            if let Some(s) = set {
                return Err(err(
                    s,
                    format!("{src} (set mode = \"server\" for a server)"),
                ));
            }
        }
        None
    };
    let remote = if is_server {
        let ip = match &c.local {
            None => std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
            Some((l, src)) => l
                .parse()
                .map_err(|_| err(src, format!("`{l}` is not an IP address")))?,
        };
        SocketAddr::new(ip, c.lport.as_ref().map_or(DEFAULT_PORT, |l| l.0))
    } else {
        let (remote, rsrc) = c
            .remote
            .clone()
            .ok_or_else(|| missing("remote", "remote"))?;
        resolve(&remote).map_err(|m| err(&rsrc, m))?
    };
    let read = |m: &(Material, Src)| -> Result<Zeroizing<String>, ConfigError> {
        match &m.0 {
            Material::Inline(s) => Ok(Zeroizing::new(s.clone())),
            Material::Path(p) => std::fs::read_to_string(abs(base, p))
                .map(Zeroizing::new)
                .map_err(|e| err(&m.1, format!("cannot read {}: {e}", p.display()))),
        }
    };
    let credentials = match &c.auth_user_pass {
        None => None,
        Some(m) if is_server => {
            return Err(err(
                &m.1,
                "a client setting (a polytun server does not check usernames and passwords)".into(),
            ))
        }
        Some(m) => Some(credentials(&read(m)?).map_err(|why| err(&m.1, why))?),
    };
    // Without a certificate only with a username and password (a server
    // with `verify-client-cert none`), as OpenVPN allows.
    let (cert, key) = match (&c.cert, &c.key) {
        (None, None) if credentials.is_some() => (None, None),
        (cert_m, key_m) => {
            let cert_m = cert_m.as_ref().ok_or_else(|| missing("cert", "cert"))?;
            let cert = read(cert_m)?;
            if parse_certs(&cert).is_empty() {
                return Err(err(&cert_m.1, "no PEM certificate found".into()));
            }
            let key_m = key_m.as_ref().ok_or_else(|| missing("key", "key"))?;
            let key = read(key_m)?;
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| {
                err(
                    &key_m.1,
                    format!("no usable PEM private key (PKCS#8, SEC1 or PKCS#1): {e}"),
                )
            })?;
            (Some(cert.to_string()), Some(Secret::new(key)))
        }
    };
    let ca = match &c.ca {
        Some(m) => {
            let ca = read(m)?;
            if parse_certs(&ca).is_empty() {
                return Err(err(&m.1, "no PEM certificate found".into()));
            }
            Some(ca.to_string())
        }
        None => None,
    };
    let mut peer_fingerprints = Vec::new();
    for (f, src) in &c.fingerprints {
        peer_fingerprints.push(parse_fingerprint(f).map_err(|m| err(src, m))?);
    }
    if ca.is_none() && peer_fingerprints.is_empty() {
        return Err(missing("ca", "ca"));
    }
    let static_key = |m: &(Material, Src)| -> Result<Secret, ConfigError> {
        let text = read(m)?;
        StaticKey::parse(&text)
            .map_err(|e| err(&m.1, format!("not an OpenVPN static key: {e}")))?;
        Ok(Secret::new(text))
    };
    let digest = match &c.auth {
        None => Digest::Sha1,
        Some((a, src)) => Digest::from_name(a).ok_or_else(|| {
            err(
                src,
                format!("`{a}`: supported digests are SHA1, SHA256, SHA512"),
            )
        })?,
    };
    let key_mode = match (&c.tls_crypt, &c.tls_auth) {
        (Some(_), Some(m)) => {
            return Err(err(
                &m.1,
                "set either tls-crypt or tls-auth, not both".into(),
            ))
        }
        (Some(m), None) => KeyMode::TlsCrypt(static_key(m)?),
        (None, Some(m)) => {
            let direction = match &c.key_direction {
                Some((d, src)) if *d > 1 => {
                    return Err(err(src, format!("{d}: key direction is 0 or 1")))
                }
                Some((d, _)) => Some(*d),
                None => None,
            };
            KeyMode::TlsAuth {
                key: static_key(m)?,
                direction,
                digest,
            }
        }
        (None, None) => KeyMode::None,
    };
    let data_ciphers = match &c.data_ciphers {
        None => vec![
            Cipher::Aes256Gcm,
            Cipher::Aes128Gcm,
            Cipher::ChaCha20Poly1305,
        ],
        Some((list, src)) => {
            let mut v = Vec::new();
            for name in list
                .iter()
                .flat_map(|s| s.split(':'))
                .filter(|s| !s.is_empty())
            {
                let cph = Cipher::from_name(name).ok_or_else(|| {
                    err(
                        src,
                        format!(
                            "unknown or unsupported data cipher `{name}` (supported: {})",
                            Cipher::list_string(&Cipher::ALL)
                        ),
                    )
                })?;
                if !v.contains(&cph) {
                    v.push(cph);
                }
            }
            if v.is_empty() {
                return Err(err(src, "empty cipher list".into()));
            }
            v
        }
    };
    let hand_window = Duration::from_secs(u64::from(c.hand_window.unwrap_or(60).max(1)));
    // As OpenVPN: 0 turns a trigger off.
    let rekey = RekeyConfig {
        reneg_sec: c.reneg_sec.unwrap_or_default(),
        reneg_bytes: c.reneg_bytes.filter(|b| *b > 0),
        reneg_pkts: c.reneg_pkts.filter(|p| *p > 0),
        tran_window: Duration::from_secs(u64::from(c.tran_window.unwrap_or(3600))),
    };
    Ok(OpenVpn {
        remote,
        transport,
        ca,
        cert,
        key,
        credentials,
        key_mode,
        data_ciphers,
        peer_fingerprints,
        policy: PeerPolicy {
            remote_cert_tls: c.remote_cert_tls.then_some(CertUsage::Server),
            verify_x509_name: c.verify_x509_name.map(|(v, _)| v),
        },
        hand_window,
        ping: c.ping,
        ping_restart: c.ping_restart,
        rekey,
        framing,
        decompress: c.decompress.unwrap_or(true),
        compress_migrate,
        source,
        server,
    })
}

/// `server`, `push` and `max-clients`, checked.
fn server_settings(
    c: &Collected,
    err: &dyn Fn(&Src, String) -> ConfigError,
    missing: &dyn Fn(&'static str, &str) -> ConfigError,
) -> Result<ServerSettings, ConfigError> {
    let (net, src) = c
        .server
        .as_ref()
        .ok_or_else(|| missing("server", "server"))?;
    let bad = || {
        err(
            src,
            format!("`{net}`: expected an IPv4 network, e.g. \"198.51.100.0/24\" or \"198.51.100.0 255.255.255.0\""),
        )
    };
    let pool: ipnet::Ipv4Net = match net.split_once(' ') {
        Some((a, m)) => {
            let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
            let m: std::net::Ipv4Addr = m.trim().parse().map_err(|_| bad())?;
            ipnet::Ipv4Net::with_netmask(a, m).map_err(|_| bad())?
        }
        None => net.parse().map_err(|_| bad())?,
    };
    if pool.prefix_len() > 29 {
        return Err(err(src, format!("`{net}`: the pool needs at least a /29")));
    }
    if pool.trunc() != pool {
        return Err(err(
            src,
            format!("`{net}`: host bits set (the network is {})", pool.trunc()),
        ));
    }
    let pool6 = match &c.server_ipv6 {
        None => None,
        Some((net, src)) => {
            let p: ipnet::Ipv6Net = net.trim().parse().map_err(|_| {
                err(
                    src,
                    format!("`{net}`: expected an IPv6 network, e.g. \"2001:db8:1::/64\""),
                )
            })?;
            // OpenVPN's limits; and the pool starts at network + 0x1000
            if !(64..=112).contains(&p.prefix_len()) {
                return Err(err(
                    src,
                    format!("`{net}`: the IPv6 network must be a /64 to a /112"),
                ));
            }
            if p.trunc() != p {
                return Err(err(
                    src,
                    format!("`{net}`: host bits set (the network is {})", p.trunc()),
                ));
            }
            Some(p)
        }
    };
    let mut iroutes: std::collections::BTreeMap<String, Vec<IpNet>> = Default::default();
    let mut routes: Vec<IpNet> = Vec::new();
    for (cn, net, src) in &c.iroutes {
        let in_pool = match net {
            IpNet::V4(n) => n.contains(&pool.network()) || pool.contains(&n.network()),
            IpNet::V6(n) => {
                pool6.is_some_and(|p| n.contains(&p.network()) || p.contains(&n.network()))
            }
        };
        if in_pool {
            return Err(err(
                src,
                format!("iroute {net} for `{cn}` overlaps the server's pool"),
            ));
        }
        if let Some((other, _)) = iroutes.iter().find(|(_, v)| v.contains(net)) {
            return Err(err(
                src,
                format!("iroute {net} for `{cn}` is already `{other}`'s"),
            ));
        }
        iroutes.entry(cn.clone()).or_default().push(*net);
        routes.push(*net);
    }
    for (net, _) in &c.conf_routes {
        if !routes.contains(net) {
            routes.push(*net);
        }
    }
    let mut push = Vec::new();
    for (p, src) in &c.push {
        check_push(p).map_err(|m| err(src, m))?;
        push.push(p.trim().to_string());
    }
    let mut client_push: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (cn, p) in &c.client_push {
        client_push.entry(cn.clone()).or_default().push(p.clone());
    }
    // the server's address, the network and broadcast addresses are not for clients
    let pool_size = (1usize << (32 - pool.prefix_len())) - 3;
    let max_clients = match &c.max_clients {
        None => pool_size,
        Some((0, src)) => return Err(err(src, "must be at least 1".into())),
        Some((n, _)) => (*n as usize).min(pool_size),
    };
    Ok(ServerSettings {
        pool,
        pool6,
        iroutes,
        routes,
        push,
        client_push,
        max_clients,
    })
}

/// A `push` option a server may send: not one it sets per client.
fn check_push(p: &str) -> Result<(), String> {
    let p = p.trim();
    let kw = p.split_whitespace().next().unwrap_or("");
    if kw.is_empty() {
        return Err("empty push option".into());
    }
    if SERVER_SET.contains(&kw) {
        return Err(format!(
            "`push \"{p}\"`: `{kw}` is set by the server for each client"
        ));
    }
    Ok(())
}

pub fn parse_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bad = || format!("`{s}` is not a SHA-256 fingerprint (32 hex bytes, colon-separated)");
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Splits arguments as OpenVPN does: whitespace, or "..." / '...' quoting.
fn quoted_args(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut w = String::new();
        if c == '"' || c == '\'' {
            chars.next();
            loop {
                match chars.next() {
                    Some(x) if x == c => break,
                    Some(x) => w.push(x),
                    None => return Err(format!("unterminated {c} quote")),
                }
            }
        } else {
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() {
                    break;
                }
                w.push(x);
                chars.next();
            }
        }
        out.push(w);
    }
    Ok(out)
}

fn resolve(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if s
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        s.to_string()
    } else {
        format!("{s}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{s}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

/// Options of a client .ovpn that need no action here (polytun behaves
/// that way anyway, or they only concern OpenVPN's own process).
const HARMLESS: &[&str] = &[
    "client",
    "tls-client",
    "pull",
    "nobind",
    "persist-key",
    "persist-tun",
    "verb",
    "mute",
    "mute-replay-warnings",
    "resolv-retry",
    "auth-nocache",
    "connect-retry",
    "connect-retry-max",
    "remote-random",
    "float",
    "fast-io",
    "sndbuf",
    "rcvbuf",
    "server-poll-timeout",
    "tun-mtu",
    "mssfix",
    "explicit-exit-notify",
    "suppress-timestamps",
    "machine-readable-output",
    "setenv",
    "ignore-unknown-option",
    "data-ciphers-fallback",
    // adaptive compression: polytun never compresses
    "comp-noadapt",
    // server: clients are keyed by address/connection, never by name
    "duplicate-cn",
];

/// Which address family a network option takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `route`, `iroute`
    V4,
    /// `route-ipv6`, `iroute-ipv6`
    V6,
    /// the TOML `iroutes` lists
    Any,
}

/// An `auth-user-pass` file: the username on the first line, the
/// password on the second.
fn credentials(text: &str) -> Result<Credentials, String> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let username = lines.next().unwrap_or("").to_string();
    let password = lines.next();
    match password {
        Some(p) if !username.is_empty() => Ok(Credentials {
            username,
            password: Zeroizing::new(p.to_string()),
        }),
        _ => Err("expected the username on the first line and the password on the second".into()),
    }
}

/// A network as OpenVPN writes it: `NET [MASK]` (no mask: a host) or
/// `NET/BITS` (a bare IPv6 address: a /128). The host bits must be clear.
fn network(s: &str, family: Family) -> Result<IpNet, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let n = match words.as_slice() {
        [n] if n.contains('/') => n
            .parse::<IpNet>()
            .map_err(|_| format!("`{n}` is not a network"))?,
        [a] => IpNet::from(
            a.parse::<IpAddr>()
                .map_err(|_| format!("`{a}` is not an address"))?,
        ),
        [a, m] => {
            let a: Ipv4Addr = a
                .parse()
                .map_err(|_| format!("`{a}` is not an IPv4 address"))?;
            let m: Ipv4Addr = m.parse().map_err(|_| format!("`{m}` is not a netmask"))?;
            IpNet::V4(
                ipnet::Ipv4Net::with_netmask(a, m)
                    .map_err(|_| format!("`{m}` is not a netmask"))?,
            )
        }
        _ => return Err("expected `NETWORK [NETMASK]` or `NETWORK/BITS`".into()),
    };
    match (family, n) {
        (Family::V4, IpNet::V6(_)) => return Err(format!("`{s}`: expected an IPv4 network")),
        (Family::V6, IpNet::V4(_)) => return Err(format!("`{s}`: expected an IPv6 network")),
        _ => {}
    }
    if n.trunc() != n {
        return Err(format!(
            "`{s}`: host bits set (the network is {})",
            n.trunc()
        ));
    }
    Ok(n)
}

/// OpenVPN's `client-config-dir`: one file per client, named by its
/// certificate's common name. polytun takes `iroute`, `iroute-ipv6` and
/// `push` from them, and names any other option.
fn read_ccd(dir: &Path, at: &Src, c: &mut Collected) -> Result<(), ConfigError> {
    let fail = |file: &Path, line: Option<usize>, field: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        line,
        field: field.to_string(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        fail(
            dir,
            None,
            "client-config-dir",
            format!("cannot read the directory: {e}"),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    for f in files {
        let cn = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&f)
            .map_err(|e| fail(&f, None, "client-config-dir", format!("cannot read: {e}")))?;
        for (i, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            let (opt, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            let family = match opt {
                "iroute" => Family::V4,
                "iroute-ipv6" => Family::V6,
                "push" => {
                    let rest = rest.trim();
                    let v = rest
                        .strip_prefix('"')
                        .and_then(|r| r.strip_suffix('"'))
                        .unwrap_or(rest);
                    check_push(v).map_err(|m| fail(&f, Some(i + 1), opt, m))?;
                    c.client_push.push((cn.clone(), v.to_string()));
                    continue;
                }
                _ => {
                    return Err(fail(
                        &f,
                        Some(i + 1),
                        opt,
                        format!(
                            "`{opt}` in a client-config-dir file is not supported by polytun \
                             (it reads `iroute`, `iroute-ipv6` and `push`)"
                        ),
                    ))
                }
            };
            let net = network(rest, family).map_err(|m| fail(&f, Some(i + 1), opt, m))?;
            c.iroutes.push((cn.clone(), net, at.clone()));
        }
    }
    Ok(())
}

fn parse_ovpn(file: &Path, text: &str, c: &mut Collected) -> Result<(), ConfigError> {
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let e = |line: usize, option: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        line: Some(line),
        field: option.to_string(),
        message,
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut remotes = 0;
    while i < lines.len() {
        let ln = i + 1;
        let l = lines[i].trim();
        i += 1;
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        // Inline blocks: <ca> ... </ca>
        if let Some(tag) = l.strip_prefix('<').and_then(|r| r.strip_suffix('>')) {
            let close = format!("</{tag}>");
            let mut body = String::new();
            loop {
                let Some(b) = lines.get(i) else {
                    return Err(e(ln, tag, format!("<{tag}> block without {close}")));
                };
                i += 1;
                if b.trim() == close {
                    break;
                }
                body.push_str(b);
                body.push('\n');
            }
            let src = Src::Ovpn {
                line: ln,
                option: tag.to_string(),
            };
            let m = Some((Material::Inline(body.clone()), src.clone()));
            match tag {
                "ca" => c.ca = m,
                "cert" => c.cert = m,
                "key" => c.key = m,
                "tls-crypt" => c.tls_crypt = m,
                "tls-auth" => c.tls_auth = m,
                "auth-user-pass" => c.auth_user_pass = m,
                "peer-fingerprint" => {
                    for f in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
                        c.fingerprints.push((f.to_string(), src.clone()));
                    }
                }
                other => {
                    return Err(e(
                        ln,
                        other,
                        format!("inline <{other}> is not supported by polytun"),
                    ))
                }
            }
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        let opt = words[0].trim_start_matches("--");
        if opt == "push" {
            // push "route 203.0.113.0 255.255.255.0": the quoted rest of the line
            let rest = l[words[0].len()..].trim();
            let v = rest
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .unwrap_or(rest);
            c.push.push((
                v.to_string(),
                Src::Ovpn {
                    line: ln,
                    option: opt.to_string(),
                },
            ));
            continue;
        }
        let args = &words[1..];
        let src = Src::Ovpn {
            line: ln,
            option: opt.to_string(),
        };
        let arg = |n: usize| -> Result<&str, ConfigError> {
            args.get(n)
                .copied()
                .ok_or_else(|| e(ln, opt, format!("`{opt}` needs an argument")))
        };
        let path_or_inline = |a: &str| -> Material {
            if a == "[inline]" {
                Material::Inline(String::new()) // replaced by the block
            } else {
                Material::Path(abs(&dir, Path::new(a)))
            }
        };
        let set_mat = |slot: &mut Option<(Material, Src)>, a: &str| {
            // `ca [inline]` before its block: keep the block if it came first.
            if a == "[inline]" && slot.is_some() {
                return;
            }
            *slot = Some((path_or_inline(a), src.clone()));
        };
        let big = |n: usize| -> Result<u64, ConfigError> {
            let a = arg(n)?;
            a.parse()
                .map_err(|_| e(ln, opt, format!("`{a}` is not a number")))
        };
        let num = |n: usize| -> Result<u32, ConfigError> {
            let a = arg(n)?;
            a.parse()
                .map_err(|_| e(ln, opt, format!("`{a}` is not a number")))
        };
        match opt {
            "dev" => {
                let d = arg(0)?;
                if !d.starts_with("tun") {
                    return Err(e(
                        ln,
                        opt,
                        format!("`dev {d}`: polytun supports only `dev tun` (layer 3)"),
                    ));
                }
            }
            "dev-type" => {
                if arg(0)? != "tun" {
                    return Err(e(ln, opt, "polytun supports only `dev-type tun`".into()));
                }
            }
            "proto" => c.proto = Some((arg(0)?.to_string(), src.clone())),
            "remote" => {
                remotes += 1;
                if remotes > 1 {
                    return Err(e(
                        ln,
                        opt,
                        "more than one `remote`: polytun connects to one server per tunnel".into(),
                    ));
                }
                let host = arg(0)?;
                let port = args.get(1).copied().unwrap_or("1194");
                let hp = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                c.remote = Some((hp, src.clone()));
                if let Some(p) = args.get(2) {
                    c.proto = Some((p.to_string(), src.clone()));
                }
            }
            "port" | "lport" if opt == "lport" || c.remote.is_none() => {
                let p = arg(0)?;
                let p = p
                    .parse()
                    .map_err(|_| e(ln, opt, format!("`{p}` is not a port number")))?;
                c.lport = Some((p, src.clone()));
            }
            "port" | "rport" => {
                let p = arg(0)?;
                if let Some((r, s)) = &mut c.remote {
                    if let Some((h, _)) = r.rsplit_once(':') {
                        *r = format!("{h}:{p}");
                    }
                    *s = src.clone();
                }
            }
            "ca" => set_mat(&mut c.ca, arg(0)?),
            "cert" => set_mat(&mut c.cert, arg(0)?),
            "key" => set_mat(&mut c.key, arg(0)?),
            "tls-crypt" => set_mat(&mut c.tls_crypt, arg(0)?),
            "auth-user-pass" => {
                match args.first() {
                    Some(a) => set_mat(&mut c.auth_user_pass, a),
                    // (a `<auth-user-pass>` block may come before or after)
                    None if c.auth_user_pass.is_some() => {}
                    None => return Err(e(
                        ln,
                        opt,
                        "`auth-user-pass` without a file: polytund runs as a service and cannot \
                         ask; give a file with the username and the password on two lines \
                         (`auth-user-pass FILE`, or an <auth-user-pass> block)"
                            .into(),
                    )),
                }
            }
            // OpenVPN's interactive retry and its wait for an auth token:
            // polytund retries with back-off whatever the setting.
            "auth-retry" => {}
            "tls-auth" => {
                set_mat(&mut c.tls_auth, arg(0)?);
                if let Some(d) = args.get(1) {
                    let d = d
                        .parse()
                        .map_err(|_| e(ln, opt, format!("`{d}`: key direction is 0 or 1")))?;
                    c.key_direction = Some((d, src.clone()));
                }
            }
            "key-direction" => {
                let d = arg(0)?;
                let d = d
                    .parse()
                    .map_err(|_| e(ln, opt, format!("`{d}`: key direction is 0 or 1")))?;
                c.key_direction = Some((d, src.clone()));
            }
            "auth" => c.auth = Some((arg(0)?.to_string(), src.clone())),
            "data-ciphers" | "ncp-ciphers" => {
                c.data_ciphers = Some((vec![arg(0)?.to_string()], src.clone()))
            }
            "cipher" => {
                // Only used by OpenVPN 2.6 as a fallback for old servers;
                // accepted when it names a cipher polytun can negotiate.
                let a = arg(0)?;
                if Cipher::from_name(a).is_none() {
                    return Err(e(
                        ln,
                        opt,
                        format!(
                            "`cipher {a}`: polytun negotiates only {} (data-ciphers)",
                            Cipher::list_string(&Cipher::ALL)
                        ),
                    ));
                }
            }
            "remote-cert-tls" => {
                let want = if matches!(&c.mode, Some((m, _)) if m == "server") {
                    "client"
                } else {
                    "server"
                };
                if arg(0)? != want {
                    return Err(e(
                        ln,
                        opt,
                        format!(
                            "a {} can only require `remote-cert-tls {want}`",
                            if want == "client" { "server" } else { "client" }
                        ),
                    ));
                }
                c.remote_cert_tls = true;
            }
            "verify-x509-name" => {
                // The name may be quoted and hold spaces ('C=KG, CN=server').
                let rest = l.trim_start_matches("--").trim_start()[opt.len()..].trim();
                let a = quoted_args(rest).map_err(|m| e(ln, opt, m))?;
                if a.is_empty() || a.len() > 2 {
                    return Err(e(
                        ln,
                        opt,
                        "`verify-x509-name NAME [subject|name|name-prefix]`".into(),
                    ));
                }
                let check = X509NameCheck::parse(&a[0], a.get(1).map(String::as_str))
                    .map_err(|m| e(ln, opt, m))?;
                c.verify_x509_name = Some((check, src.clone()));
            }
            "mode" => {
                let m = arg(0)?;
                if m != "server" {
                    return Err(e(
                        ln,
                        opt,
                        format!("`mode {m}`: polytun runs `mode server` (or a client)"),
                    ));
                }
                c.mode = Some(("server".into(), src.clone()));
            }
            "tls-server" => c.mode = Some(("server".into(), src.clone())),
            "server" => {
                let net = format!("{} {}", arg(0)?, arg(1)?);
                if let Some(extra) = args.get(2) {
                    return Err(e(
                        ln,
                        opt,
                        format!("`server ... {extra}`: not supported by polytun"),
                    ));
                }
                c.mode = Some(("server".into(), src.clone()));
                c.server = Some((net, src.clone()));
            }
            "topology" => {
                if arg(0)? != "subnet" {
                    return Err(e(
                        ln,
                        opt,
                        "a polytun server supports only `topology subnet`".into(),
                    ));
                }
            }
            "max-clients" => c.max_clients = Some((num(0)?, src.clone())),
            "server-ipv6" => c.server_ipv6 = Some((arg(0)?.to_string(), src.clone())),
            // the kernel routes for the clients' networks (their iroutes)
            "route" | "route-ipv6" => {
                let family = if opt == "route" {
                    Family::V4
                } else {
                    Family::V6
                };
                let n = network(&args.join(" "), family).map_err(|m| e(ln, opt, m))?;
                c.conf_routes.push((n, src.clone()));
            }
            "client-config-dir" => read_ccd(&abs(&dir, Path::new(arg(0)?)), &src, c)?,
            "local" => c.local = Some((arg(0)?.to_string(), src.clone())),
            // TLS 1.3 / ECDHE: no finite-field DH parameters are used
            "dh" => {}
            "peer-fingerprint" => {
                let a = arg(0)?;
                if a != "[inline]" {
                    c.fingerprints.push((a.to_string(), src.clone()));
                }
            }
            "tls-version-min" => {
                let v = arg(0)?;
                if v != "1.2" && v != "1.3" {
                    return Err(e(ln, opt, format!("`{v}`: polytun speaks TLS 1.2 and 1.3")));
                }
            }
            "hand-window" => c.hand_window = Some(num(0)?),
            "reneg-sec" => {
                if args.len() > 2 {
                    return Err(e(
                        ln,
                        opt,
                        "`reneg-sec max [min]`: at most two numbers".into(),
                    ));
                }
                let max = num(0)?;
                let min = if args.len() > 1 { Some(num(1)?) } else { None };
                c.reneg_sec = Some(RenegSec { max, min });
            }
            "reneg-bytes" => c.reneg_bytes = Some(big(0)?),
            "reneg-pkts" => c.reneg_pkts = Some(big(0)?),
            "tran-window" => c.tran_window = Some(num(0)?),
            "comp-lzo" | "compress" => {
                let f = match (opt, args.first().copied()) {
                    ("compress", Some("migrate")) => Err(()),
                    (o, a) => Ok(Framing::from_option(o, a).map_err(|m| e(ln, opt, m))?),
                };
                c.compress = Some((f, src.clone()));
            }
            // polytun never compresses, whatever this says; `no` also
            // refuses what a peer compressed (asym and yes take it).
            "allow-compression" => {
                let a = arg(0)?;
                if !matches!(a, "no" | "asym" | "yes") {
                    return Err(e(
                        ln,
                        opt,
                        format!("bad allow-compression `{a}`: must be no, asym or yes"),
                    ));
                }
                c.decompress = Some(a != "no");
            }
            "ping" => c.ping = Some(num(0)?),
            "ping-restart" => c.ping_restart = Some(num(0)?),
            "keepalive" => {
                c.ping = Some(num(0)?);
                c.ping_restart = Some(num(1)?);
            }
            o if HARMLESS.contains(&o) => {}
            o => {
                return Err(e(
                    ln,
                    o,
                    format!(
                        "option `{o}` is not supported by polytun (line: `{l}`); remove it or \
                         configure the tunnel in TOML"
                    ),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terr(f: &'static str, m: String) -> ConfigError {
        ConfigError {
            file: "t.toml".into(),
            line: None,
            field: f.into(),
            message: m,
        }
    }

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUJ4vC4gpjUcsrO1YQmMY3HZ0hm4kwCgYIKoZIzj0EAwIw\nETEPMA0GA1UEAwwGcG92LWNhMB4XDTI0MDEwMTAwMDAwMFoXDTM0MDEwMTAwMDAw\nMFowETEPMA0GA1UEAwwGcG92LWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END CERTIFICATE-----\n";

    /// auth-user-pass: from a file or an inline block; no certificate
    /// needed with it; no file (polytund cannot ask) or one line is an error.
    #[test]
    fn auth_user_pass_settings() {
        let dir = std::env::temp_dir().join(format!("pt-ovpnaup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, _k) = cert_and_key(&dir);
        let pass = dir.join("pass.txt");
        std::fs::write(&pass, "alice\r\nopen sesame\r\n").unwrap();
        let p = dir.join("c.ovpn");
        let head = format!(
            "client\ndev tun\nremote 192.0.2.1 1194\nca {}\n",
            c.display()
        );
        std::fs::write(
            &p,
            format!("{head}auth-user-pass pass.txt\nauth-nocache\nauth-retry nointeract\n"),
        )
        .unwrap();
        let raw = RawFields {
            config: Some(&p),
            ..Default::default()
        };
        let o = build(&raw, &dir, &terr).unwrap();
        let cr = o.credentials.as_ref().unwrap();
        assert_eq!(
            (cr.username.as_str(), cr.password.as_str()),
            ("alice", "open sesame")
        );
        assert_eq!((o.cert.as_deref(), o.key.is_none()), (None, true));
        assert!(
            !format!("{o:?}").contains("open sesame"),
            "password in Debug"
        );
        // inline, after the option without a file
        std::fs::write(
            &p,
            format!("{head}auth-user-pass\n<auth-user-pass>\nbob\npw\n</auth-user-pass>\n"),
        )
        .unwrap();
        let e = build(&raw, &dir, &terr).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(5), "auth-user-pass"),
            "{e}"
        );
        std::fs::write(
            &p,
            format!("{head}<auth-user-pass>\nbob\npw\n</auth-user-pass>\nauth-user-pass\n"),
        )
        .unwrap();
        let o = build(&raw, &dir, &terr).unwrap();
        assert_eq!(o.credentials.unwrap().username, "bob");
        std::fs::write(&pass, "alice\n").unwrap();
        std::fs::write(&p, format!("{head}auth-user-pass pass.txt\n")).unwrap();
        let e = build(&raw, &dir, &terr).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(5), "auth-user-pass"),
            "{e}"
        );
        // without credentials a certificate is needed
        std::fs::write(&p, &head).unwrap();
        assert_eq!(build(&raw, &dir, &terr).unwrap_err().field, "cert");
        // TOML
        std::fs::write(&pass, "carol\nx\n").unwrap();
        let raw = RawFields {
            remote: Some("192.0.2.1"),
            ca: Some(&c),
            auth_user_pass: Some(&pass),
            ..Default::default()
        };
        assert_eq!(
            build(&raw, &dir, &terr)
                .unwrap()
                .credentials
                .unwrap()
                .username,
            "carol"
        );
        let e = build(
            &RawFields {
                mode: Some("server"),
                server: Some("198.51.100.0/24"),
                ..raw
            },
            &dir,
            &terr,
        )
        .unwrap_err();
        assert_eq!(e.field, "auth_user_pass", "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn ovpn_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("pt-ovpn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.ovpn");
        std::fs::write(&p, "client\ndev tun\nproto udp\nfragment 1300\n").unwrap();
        let raw = RawFields {
            config: Some(&p),
            ..Default::default()
        };
        let e = build(&raw, &dir, &terr).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(e.field, "fragment");
        assert!(e.message.contains("not supported"), "{e}");
        std::fs::write(&p, "client\ndev tun\ncomp-lzo maybe\n").unwrap();
        let e = build(&raw, &dir, &terr).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(3), "comp-lzo"), "{e}");
        assert!(e.message.contains("yes, no or adaptive"), "{e}");
        std::fs::write(&p, "client\ndev tap\n").unwrap();
        let e = build(&raw, &dir, &terr).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(2), "dev"), "{e}");
        std::fs::write(&p, "client\nremote 192.0.2.1 1194\n<ca>\n").unwrap();
        let e = build(&raw, &dir, &terr).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        std::fs::write(
            &p,
            format!("remote 192.0.2.1 1194 udp\n<cert>\n{CERT}</cert>\nkey /nonexistent/k.pem\n"),
        )
        .unwrap();
        let e = build(&raw, &dir, &terr).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(9), "key"), "{e}");
        assert!(e.message.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A throwaway self-signed P-256 certificate and key (valid PEM).
    fn cert_and_key(dir: &Path) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join("s.crt"), dir.join("s.key"));
        let o = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", "/CN=t", "-days", "1", "-keyout"])
            .arg(&k)
            .arg("-out")
            .arg(&c)
            .output()
            .expect("openssl");
        assert!(o.status.success(), "{o:?}");
        (c, k)
    }

    /// Settings are printed whole (`{:?}`): the private key and the
    /// static key never are.
    #[test]
    fn debug_prints_no_key_material() {
        let dir = std::env::temp_dir().join(format!("pt-ovpndbg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = cert_and_key(&dir);
        let sk = StaticKey::from_bytes([0xab; polytun_openvpn::static_key::STATIC_KEY_LEN]);
        let ta = dir.join("ta.key");
        std::fs::write(&ta, sk.to_file()).unwrap();
        let raw = RawFields {
            remote: Some("192.0.2.1"),
            ca: Some(&c),
            cert: Some(&c),
            key: Some(&k),
            tls_crypt: Some(&ta),
            ..Default::default()
        };
        let o = build(&raw, &dir, &terr).unwrap();
        assert!(o.key.as_deref().unwrap().contains("PRIVATE KEY"));
        let d = format!("{o:?}");
        assert!(!d.contains("PRIVATE KEY"), "{d}");
        assert!(!d.contains("abababab"), "static key in Debug: {d}");
        let tls_auth = build(
            &RawFields {
                tls_crypt: None,
                tls_auth: Some(&ta),
                ..raw
            },
            &dir,
            &terr,
        )
        .unwrap();
        assert!(!format!("{tls_auth:?}").contains("abababab"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// comp-lzo / compress in a .ovpn and `compress` in TOML (which wins);
    /// `compress migrate` only for a server; bad values name the line.
    #[test]
    fn compression_framing_settings() {
        let dir = std::env::temp_dir().join(format!("pt-ovpncomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = cert_and_key(&dir);
        let p = dir.join("c.ovpn");
        let head = format!(
            "client\ndev tun\nremote 192.0.2.1 1194\nca {}\ncert {}\nkey {}\n",
            c.display(),
            c.display(),
            k.display()
        );
        let raw = RawFields {
            config: Some(&p),
            ..Default::default()
        };
        for (lines, want) in [
            ("", Framing::None),
            ("comp-lzo\n", Framing::Lzo),
            ("comp-lzo no\ncomp-noadapt\n", Framing::LzoStub),
            ("comp-lzo\nallow-compression asym\n", Framing::Lzo),
            ("compress\n", Framing::Stub),
            ("compress lz4\n", Framing::Lz4),
            ("compress stub-v2\n", Framing::StubV2),
            ("compress lz4-v2\n", Framing::Lz4V2),
            ("compress lzo\n", Framing::Lzo),
        ] {
            std::fs::write(&p, format!("{head}{lines}")).unwrap();
            let o = build(&raw, &dir, &terr).unwrap();
            assert_eq!((o.framing, o.compress_migrate), (want, false), "{lines}");
        }
        std::fs::write(&p, format!("{head}comp-lzo\nallow-compression no\n")).unwrap();
        assert!(!build(&raw, &dir, &terr).unwrap().decompress);
        std::fs::write(&p, format!("{head}comp-lzo\n")).unwrap();
        assert!(build(&raw, &dir, &terr).unwrap().decompress);
        let toml = RawFields {
            compress: Some("stub-v2"),
            ..raw
        };
        assert_eq!(build(&toml, &dir, &terr).unwrap().framing, Framing::StubV2);
        let toml = RawFields {
            compress: Some("comp-lzo no"),
            ..raw
        };
        assert_eq!(build(&toml, &dir, &terr).unwrap().framing, Framing::LzoStub);
        for (lines, line, field) in [
            ("compress migrate\n", 7, "compress"),
            ("compress zstd\n", 7, "compress"),
            ("allow-compression maybe\n", 7, "allow-compression"),
        ] {
            std::fs::write(&p, format!("{head}{lines}")).unwrap();
            let e = build(&raw, &dir, &terr).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (Some(line), field), "{e}");
        }
        std::fs::write(&p, &head).unwrap();
        let e = build(
            &RawFields {
                compress: Some("gzip"),
                ..raw
            },
            &dir,
            &terr,
        )
        .unwrap_err();
        assert_eq!(e.field, "compress", "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn server_settings_toml_and_conf() {
        let dir = std::env::temp_dir().join(format!("pt-ovpns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = cert_and_key(&dir);
        let push = vec!["route 203.0.113.0 255.255.255.0".to_string()];
        let raw = RawFields {
            mode: Some("server"),
            server: Some("198.51.100.0/24"),
            ca: Some(&c),
            cert: Some(&c),
            key: Some(&k),
            push: Some(&push),
            proto: Some("tcp"),
            listen_port: Some(443),
            keepalive: Some(&[5, 30]),
            ..Default::default()
        };
        let o = build(&raw, &dir, &terr).unwrap();
        let srv = o.server.as_ref().unwrap();
        assert_eq!(srv.pool.to_string(), "198.51.100.0/24");
        assert_eq!(srv.pool6, None);
        assert_eq!(srv.max_clients, 253);
        assert_eq!(srv.push, push);
        let with6 = build(
            &RawFields {
                server_ipv6: Some("2001:db8:5::/64"),
                ..raw
            },
            &dir,
            &terr,
        )
        .unwrap();
        assert_eq!(
            with6.server.unwrap().pool6.map(|p| p.to_string()),
            Some("2001:db8:5::/64".into())
        );
        assert_eq!((o.transport, o.remote.port()), (Transport::Tcp, 443));
        assert_eq!((o.ping, o.ping_restart), (Some(5), Some(30)));
        let migrate = build(
            &RawFields {
                compress: Some("migrate"),
                ..raw
            },
            &dir,
            &terr,
        )
        .unwrap();
        assert_eq!(
            (migrate.framing, migrate.compress_migrate),
            (Framing::None, true)
        );
        // errors name the field
        let field = |r: RawFields<'_>| build(&r, &dir, &terr).unwrap_err().field;
        assert_eq!(
            field(RawFields {
                server: None,
                ..raw
            }),
            "server"
        );
        assert_eq!(
            field(RawFields {
                server: Some("198.51.100.1/24"),
                ..raw
            }),
            "server"
        );
        assert_eq!(
            field(RawFields {
                server: Some("nonsense"),
                ..raw
            }),
            "server"
        );
        let bad_push = vec!["ifconfig 1.2.3.4 255.0.0.0".to_string()];
        assert_eq!(
            field(RawFields {
                push: Some(&bad_push),
                ..raw
            }),
            "push"
        );
        let bad_push6 = vec!["ifconfig-ipv6 2001:db8:5::9/64 2001:db8:5::1".to_string()];
        assert_eq!(
            field(RawFields {
                push: Some(&bad_push6),
                ..raw
            }),
            "push"
        );
        for bad6 in [
            "2001:db8:5::/48",
            "2001:db8:5::/120",
            "2001:db8:5::1/64",
            "198.51.100.0/24",
            "x",
        ] {
            let e = build(
                &RawFields {
                    server_ipv6: Some(bad6),
                    ..raw
                },
                &dir,
                &terr,
            )
            .unwrap_err();
            assert_eq!(e.field, "server_ipv6", "{bad6}: {e}");
        }
        // iroutes: networks behind clients, by common name
        let mut ir = std::collections::BTreeMap::new();
        ir.insert(
            "branch1".to_string(),
            vec!["192.0.2.128/25".to_string(), "2001:db8:10::/64".to_string()],
        );
        ir.insert("branch2".to_string(), vec!["203.0.113.7".to_string()]);
        let o = build(
            &RawFields {
                iroutes: Some(&ir),
                server_ipv6: Some("2001:db8:5::/64"),
                ..raw
            },
            &dir,
            &terr,
        )
        .unwrap();
        let srv = o.server.unwrap();
        let nets = |v: &[IpNet]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            nets(&srv.iroutes["branch1"]),
            ["192.0.2.128/25", "2001:db8:10::/64"]
        );
        assert_eq!(nets(&srv.iroutes["branch2"]), ["203.0.113.7/32"]);
        assert_eq!(
            nets(&srv.routes),
            ["192.0.2.128/25", "2001:db8:10::/64", "203.0.113.7/32"]
        );
        for (cn, bad) in [
            ("b", "192.0.2.129/25"),   // host bits
            ("b", "198.51.100.64/26"), // inside the pool
            ("b", "198.51.0.0/16"),    // around the pool
            ("b", "2001:db8:5::/48"),  // around the IPv6 pool
            ("b", "nonsense"),
            ("branch2", "192.0.2.128/25"), // branch1's already (same name order)
        ] {
            let mut m = ir.clone();
            m.entry(cn.to_string()).or_default().push(bad.to_string());
            let e = build(
                &RawFields {
                    iroutes: Some(&m),
                    server_ipv6: Some("2001:db8:5::/64"),
                    ..raw
                },
                &dir,
                &terr,
            )
            .unwrap_err();
            assert_eq!(e.field, "iroutes", "{bad}: {e}");
        }
        // a client has no pool
        let e = build(
            &RawFields {
                mode: None,
                remote: Some("192.0.2.1"),
                listen_port: None,
                server: None,
                push: None,
                server_ipv6: Some("2001:db8:5::/64"),
                ..raw
            },
            &dir,
            &terr,
        )
        .unwrap_err();
        assert_eq!(e.field, "server_ipv6", "{e}");
        assert_eq!(
            field(RawFields {
                mode: Some("p2p"),
                ..raw
            }),
            "mode"
        );
        assert_eq!(
            field(RawFields {
                keepalive: Some(&[1]),
                ..raw
            }),
            "keepalive"
        );
        assert_eq!(
            field(RawFields {
                proto: Some("tcp-client"),
                ..raw
            }),
            "proto"
        );
        // a client does not listen
        let e = build(
            &RawFields {
                mode: None,
                remote: Some("192.0.2.1"),
                ..raw
            },
            &dir,
            &terr,
        )
        .unwrap_err();
        assert_eq!(e.field, "listen_port", "{e}");
        // an OpenVPN server .conf
        let conf = dir.join("server.conf");
        let text = format!(
            "port 1195\nproto tcp-server\ndev tun\nca {c}\ncert {c}\nkey {k}\ndh none\n\
             topology subnet\nserver 198.51.100.0 255.255.255.128\n\
             push \"dhcp-option DNS 198.51.100.53\"\nkeepalive 10 60\nmax-clients 7\n\
             remote-cert-tls client\nexplicit-exit-notify 1\nserver-ipv6 2001:db8:5::/112\n",
            c = c.display(),
            k = k.display()
        );
        std::fs::write(&conf, &text).unwrap();
        let from_conf = RawFields {
            config: Some(&conf),
            ..Default::default()
        };
        let o = build(&from_conf, &dir, &terr).unwrap();
        let srv = o.server.as_ref().unwrap();
        assert_eq!(srv.pool.to_string(), "198.51.100.0/25");
        assert_eq!(srv.max_clients, 7);
        assert_eq!(
            srv.pool6.map(|p| p.to_string()),
            Some("2001:db8:5::/112".into())
        );
        assert_eq!(srv.push, vec!["dhcp-option DNS 198.51.100.53".to_string()]);
        assert_eq!((o.transport, o.remote.port()), (Transport::Tcp, 1195));
        assert!(srv.iroutes.is_empty() && srv.routes.is_empty());
        // client-config-dir files (iroute, iroute-ipv6) and the server's routes
        let ccd = dir.join("ccd");
        std::fs::create_dir_all(&ccd).unwrap();
        std::fs::write(
            ccd.join("branch1"),
            "# the branch LAN\niroute 192.0.2.128 255.255.255.128\niroute-ipv6 2001:db8:10::/64\n\
             push \"dhcp-option DOMAIN branch1.example\"\n",
        )
        .unwrap();
        let with_ccd = format!(
            "{text}client-config-dir ccd\nroute 192.0.2.128 255.255.255.128\nroute 203.0.113.0 255.255.255.0\n"
        );
        std::fs::write(&conf, &with_ccd).unwrap();
        let o = build(&from_conf, &dir, &terr).unwrap();
        let srv = o.server.as_ref().unwrap();
        assert_eq!(
            nets(&srv.iroutes["branch1"]),
            ["192.0.2.128/25", "2001:db8:10::/64"]
        );
        assert_eq!(
            nets(&srv.routes),
            ["192.0.2.128/25", "2001:db8:10::/64", "203.0.113.0/24"]
        );
        assert_eq!(
            srv.client_push["branch1"],
            ["dhcp-option DOMAIN branch1.example"]
        );
        // what the server sets per client is refused there too
        std::fs::write(ccd.join("branch3"), "push \"peer-id 7\"\n").unwrap();
        let e = build(&from_conf, &dir, &terr).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(1), "push"), "{e}");
        std::fs::remove_file(ccd.join("branch3")).unwrap();
        std::fs::write(
            ccd.join("branch2"),
            "iroute 203.0.113.0 255.255.255.0\nifconfig-push 198.51.100.9 255.255.255.0\n",
        )
        .unwrap();
        let e = build(&from_conf, &dir, &terr).unwrap_err();
        assert_eq!(
            (e.file.as_path(), e.line, e.field.as_str()),
            (ccd.join("branch2").as_path(), Some(2), "ifconfig-push"),
            "{e}"
        );
        std::fs::write(ccd.join("branch2"), "iroute-ipv6 203.0.113.0/24\n").unwrap();
        let e = build(&from_conf, &dir, &terr).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(1), "iroute-ipv6"), "{e}");
        std::fs::remove_file(ccd.join("branch2")).unwrap();
        std::fs::write(
            &conf,
            format!("{with_ccd}route 203.0.113.1 255.255.255.0\n"),
        )
        .unwrap();
        let e = build(&from_conf, &dir, &terr).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(19), "route"), "{e}");
        std::fs::write(&conf, text.replace("topology subnet", "topology net30")).unwrap();
        let e = build(&from_conf, &dir, &terr).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(8), "topology"), "{e}");
        std::fs::write(&conf, text.replace("dh none", "client-to-client")).unwrap();
        let e = build(&from_conf, &dir, &terr).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(7), "client-to-client"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn reneg_and_identity_options_are_checked() {
        let dir = std::env::temp_dir().join(format!("pt-ovpn-r-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.ovpn");
        let raw = RawFields {
            config: Some(&p),
            ..Default::default()
        };
        for (text, line, field) in [
            ("client\nreneg-sec 20 x\n", 2, "reneg-sec"),
            ("client\nreneg-sec 1 2 3\n", 2, "reneg-sec"),
            ("reneg-bytes lots\n", 1, "reneg-bytes"),
            (
                "client\n\nverify-x509-name server cn\n",
                3,
                "verify-x509-name",
            ),
            ("verify-x509-name 'C=KG, CN=x\n", 1, "verify-x509-name"),
            ("remote-cert-tls client\n", 1, "remote-cert-tls"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = build(&raw, &dir, &terr).unwrap_err();
            assert_eq!(
                (e.line, e.field.as_str()),
                (Some(line), field),
                "{text}: {e}"
            );
        }
        let e = build(
            &RawFields {
                remote: Some("192.0.2.1:1194"),
                verify_x509_type: Some("name"),
                ..Default::default()
            },
            Path::new("/"),
            &terr,
        )
        .unwrap_err();
        assert_eq!(e.field, "verify_x509_type");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn toml_fields_and_values() {
        let e = build(&RawFields::default(), Path::new("/"), &terr).unwrap_err();
        assert_eq!(e.field, "remote");
        let e = build(
            &RawFields {
                remote: Some("192.0.2.1:1194"),
                proto: Some("sctp"),
                ..Default::default()
            },
            Path::new("/"),
            &terr,
        )
        .unwrap_err();
        assert_eq!(e.field, "proto");
        assert_eq!(resolve("192.0.2.1").unwrap().port(), 1194);
        assert!(parse_fingerprint("zz").is_err());
        assert_eq!(
            quoted_args("'C=KG, CN=server 1' subject").unwrap(),
            ["C=KG, CN=server 1", "subject"]
        );
        assert_eq!(quoted_args("\"srv\"   name").unwrap(), ["srv", "name"]);
        assert!(quoted_args("'open").is_err());
        assert_eq!(
            parse_fingerprint(&["ab"; 32].join(":")).unwrap(),
            [0xab; 32]
        );
    }
}
