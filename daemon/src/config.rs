//! The daemon's configuration: TOML on disk, `POLYTUN_*` environment
//! overrides (through the `config` crate), validated into typed settings.
//!
//! Every error names the file, the line and the field, because the person
//! reading it is editing that file: `a.toml:7: tunnel[0].peer[0].public_key:
//! not valid base64`.

use base64::Engine;
use ipnet::IpNet;
use serde::Deserialize;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const DEFAULT_MTU: u16 = 1420;
/// One TUN queue unless configured (measured in docs/fast-path.md).
pub const DEFAULT_QUEUES: usize = 1;
pub const MAX_QUEUES: usize = 16;
pub const MAX_WORKERS: usize = 64;

/// One worker per two cores, at least one. (It once had to be at least one
/// per TUN queue, when the queues' readers were tokio tasks; every data
/// path now has its own threads, and tokio runs only control work.)
/// Per byte, the kernel's share of a tunnel (TCP, UDP, the NIC or veth,
/// the TUN copies) is as large as polytund's, and a worker that has to wake
/// another for each burst costs more than it gains: on 2 cores one worker
/// is measured faster in both directions and for ping (docs/fast-path.md
/// "Threads").
pub fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(1, MAX_WORKERS)
}
pub const CONTROL_DIR: &str = "/run/polytun";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---- the file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: RawInterface,
    #[serde(default)]
    tunnel: Vec<RawTunnel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: String,
    #[serde(default)]
    address: Vec<String>,
    mtu: Option<u16>,
    control_socket: Option<PathBuf>,
    offload: Option<bool>,
    queues: Option<usize>,
    workers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    name: Option<String>,
    protocol: String,
    listen_port: Option<u16>,
    private_key: Option<String>,
    private_key_file: Option<PathBuf>,
    #[serde(default)]
    peer: Vec<RawPeer>,
    // ---- IPsec (IKEv2 + ESP), strongSwan swanctl.conf names ----
    #[serde(default)]
    local_addrs: Vec<String>,
    #[serde(default)]
    remote_addrs: Vec<String>,
    remote: Option<String>,
    local_id: Option<String>,
    remote_id: Option<String>,
    auth: Option<String>,
    psk: Option<String>,
    psk_file: Option<PathBuf>,
    proposals: Option<Vec<String>>,
    esp_proposals: Option<Vec<String>>,
    local_ts: Option<Vec<String>>,
    remote_ts: Option<Vec<String>>,
    initiate: Option<bool>,
    #[serde(default, deserialize_with = "de_duration")]
    lifetime: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    rekey_time: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    dpd_delay: Option<String>,
    fragment_size: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    dpd_timeout: Option<String>,
    dpd_action: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    rand_time: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    rekey_bytes: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    life_bytes: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    rekey_packets: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    life_packets: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    ike_rekey_time: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    ike_lifetime: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    ike_rand_time: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    reauth_time: Option<String>,
    /// IPsec: more CHILD SAs (`[[tunnel.child]]`).
    #[serde(default)]
    child: Vec<RawChild>,
    // OpenVPN (protocol = "openvpn")
    role: Option<String>,
    config: Option<PathBuf>,
    proto: Option<String>,
    ca: Option<PathList>,
    cert: Option<PathBuf>,
    auth_user_pass: Option<PathBuf>,
    key: Option<PathBuf>,
    tls_crypt: Option<PathBuf>,
    tls_auth: Option<PathBuf>,
    key_direction: Option<u8>,
    data_ciphers: Option<Vec<String>>,
    peer_fingerprint: Option<Vec<String>>,
    hand_window: Option<u32>,
    reneg_sec: Option<u32>,
    reneg_bytes: Option<u64>,
    reneg_pkts: Option<u64>,
    tran_window: Option<u32>,
    remote_cert_tls: Option<String>,
    verify_x509_name: Option<String>,
    verify_x509_type: Option<String>,
    compress: Option<String>,
    // OpenVPN server (mode = "server")
    mode: Option<String>,
    server: Option<String>,
    server_ipv6: Option<String>,
    iroutes: Option<std::collections::BTreeMap<String, Vec<String>>>,
    client_push: Option<std::collections::BTreeMap<String, Vec<String>>>,
    push: Option<Vec<String>>,
    keepalive: Option<Vec<u32>>,
    max_clients: Option<u32>,
    local: Option<String>,
}

/// One path or a list of them (`ca = "a.pem"` or `ca = ["a.pem", "b.pem"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PathList {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl PathList {
    fn as_slice(&self) -> &[PathBuf] {
        match self {
            PathList::One(p) => std::slice::from_ref(p),
            PathList::Many(v) => v,
        }
    }
}

/// A duration as written: `20s`, `5m`, `1h`, `2d` or a number of seconds.
fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"20s\", \"1h\" or a number of seconds")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(V)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChild {
    name: Option<String>,
    local_ts: Option<Vec<String>>,
    remote_ts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Option<String>,
    public_key: Option<String>,
    preshared_key: Option<String>,
    preshared_key_file: Option<PathBuf>,
    endpoint: Option<String>,
    #[serde(default)]
    allowed_ips: Vec<String>,
    persistent_keepalive: Option<u16>,
}

// ---- the validated configuration ------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub interface: Interface,
    pub tunnels: Vec<Tunnel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addresses: Vec<IpNet>,
    pub mtu: u16,
    pub control_socket: PathBuf,
    pub offload: bool,
    /// TUN queues, each with its own reader (docs/fast-path.md "Threads").
    pub queues: usize,
    /// Threads running polytund's tasks, data path and control
    /// (docs/fast-path.md "Threads").
    pub workers: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub name: String,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    WireGuard(WireGuard),
    Ipsec(Box<Ipsec>),
    OpenVpn(Box<crate::openvpn::settings::OpenVpn>),
}

impl Protocol {
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::WireGuard(_) => "wireguard",
            Protocol::Ipsec(_) => "ipsec",
            Protocol::OpenVpn(_) => "openvpn",
        }
    }
}

pub use crate::ipsec::config::Ipsec;

pub type Key32 = Zeroizing<[u8; 32]>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuard {
    pub listen_port: Option<u16>,
    pub private_key: Key32,
    pub peers: Vec<WgPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    pub name: Option<String>,
    pub public_key: [u8; 32],
    pub preshared_key: Option<Key32>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

pub fn default_control_socket(interface: &str) -> PathBuf {
    Path::new(CONTROL_DIR).join(format!("{interface}.sock"))
}

/// Decodes a WireGuard-style base64 key of exactly 32 bytes.
pub fn decode_key(s: &str) -> Result<Key32, String> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| {
                "not valid base64 (expected a 32-byte key as `wg genkey` prints)".to_string()
            })?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(format!("decodes to {} bytes, a key has 32", bytes.len()));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

pub fn encode_key(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Where in the file a field is, for error messages.
struct Locator {
    doc: Option<toml_edit::Document<String>>,
    text: String,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

impl Locator {
    fn line_of_offset(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// Line of the deepest part of `path` that exists in the file; a
    /// missing key points at the header of the table that should hold it.
    fn line(&self, path: &[Seg<'_>]) -> Option<usize> {
        enum Cur<'a> {
            Item(&'a toml_edit::Item),
            Table(&'a toml_edit::Table),
        }
        let doc = self.doc.as_ref()?;
        let mut cur = Cur::Table(doc.as_table());
        let mut best: Option<(usize, bool)> = None; // (offset, is a table)
        for seg in path {
            let next = match (seg, &cur) {
                (Seg::Key(k), Cur::Table(t)) => t
                    .get_key_value(k)
                    .map(|(key, it)| (key.span().or(it.span()), false, Cur::Item(it))),
                (Seg::Key(k), Cur::Item(it)) => it
                    .as_table_like()
                    .and_then(|t| t.get_key_value(k))
                    .map(|(key, it)| (key.span().or(it.span()), false, Cur::Item(it))),
                (Seg::Index(n), Cur::Item(it)) => {
                    if let Some(aot) = it.as_array_of_tables() {
                        aot.get(*n).map(|t| (t.span(), true, Cur::Table(t)))
                    } else {
                        it.as_array()
                            .and_then(|a| a.get(*n))
                            .map(|v| (v.span(), false, Cur::Item(it)))
                    }
                }
                (Seg::Index(_), Cur::Table(_)) => None,
            };
            match next {
                Some((span, is_table, c)) => {
                    if let Some(span) = span {
                        best = Some((span.start, is_table));
                    }
                    cur = c;
                }
                None => break,
            }
        }
        let (offset, is_table) = best?;
        let mut line = self.line_of_offset(offset);
        if is_table {
            // A table's span starts at its first key; its header is above.
            let lines: Vec<&str> = self.text.lines().collect();
            while line > 1
                && !lines
                    .get(line - 1)
                    .is_some_and(|l| l.trim_start().starts_with('['))
            {
                line -= 1;
            }
        }
        Some(line)
    }
}

fn path_string(path: &[Seg<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

struct Ctx<'a> {
    file: &'a Path,
    loc: &'a Locator,
}

impl Ctx<'_> {
    fn err(&self, path: &[Seg<'_>], message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: self.loc.line(path),
            field: path_string(path),
            message: message.into(),
        }
    }
}

/// Reads and validates the config at `path`, with environment overrides.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    // Only POLYTUN_SECTION__KEY variables override the file; others such
    // as POLYTUN_LOG belong to the program, not to the config.
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.strip_prefix("POLYTUN_")
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect();
    parse(path, &text, &env)
}

/// Parses config `text` (from `file`, for messages) with `POLYTUN_*` overrides in `env`.
pub fn parse(file: &Path, text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let doc = toml_edit::Document::parse(text.to_string());
    let loc = Locator {
        doc: doc.as_ref().ok().cloned(),
        text: text.to_string(),
    };
    // Syntax and type errors first, straight from the TOML parser, which
    // knows the exact position.
    if let Err(e) = toml::from_str::<RawConfig>(text) {
        let line = e.span().map(|s| loc.line_of_offset(s.start));
        let field = e
            .span()
            .and_then(|s| field_at(&loc, s.start))
            .unwrap_or_default();
        return Err(ConfigError {
            file: file.to_path_buf(),
            line,
            field,
            message: e.message().trim().to_string(),
        });
    }
    // Then the same file through `config`, so POLYTUN_INTERFACE__MTU=1380
    // style variables override it.
    let env_source = config::Environment::default()
        .prefix("POLYTUN")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(env.iter().cloned().collect()));
    let raw: RawConfig = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(env_source)
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            field: String::new(),
            message: format!("after applying POLYTUN_* environment overrides: {e}"),
        })?;
    let ctx = Ctx { file, loc: &loc };
    validate(&ctx, raw, file)
}

/// The dotted path of the key whose line contains `offset`.
fn field_at(loc: &Locator, offset: usize) -> Option<String> {
    let line = loc.line_of_offset(offset);
    let text = loc.text.lines().nth(line - 1)?;
    let key = text.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('[') {
        return Some(key.trim_matches(|c| c == '[' || c == ']').to_string());
    }
    // Find the enclosing table header above the line.
    let header = loc
        .text
        .lines()
        .take(line - 1)
        .filter(|l| l.trim_start().starts_with('['))
        .last()
        .map(|h| h.trim().trim_matches(|c| c == '[' || c == ']').to_string());
    Some(match header {
        Some(h) => format!("{h}.{key}"),
        None => key.to_string(),
    })
}

fn read_key_field(
    ctx: &Ctx<'_>,
    path: &[Seg<'_>],
    inline: Option<&str>,
    file_path: Option<&Path>,
    file_field: &str,
) -> Result<Option<Key32>, ConfigError> {
    match (inline, file_path) {
        (Some(_), Some(_)) => {
            Err(ctx.err(path, format!("set either this or {file_field}, not both")))
        }
        (Some(s), None) => decode_key(s).map(Some).map_err(|m| ctx.err(path, m)),
        (None, Some(p)) => {
            let mut fpath: Vec<Seg<'_>> = path[..path.len() - 1].to_vec();
            fpath.push(Seg::Key(file_field));
            let text = Zeroizing::new(
                std::fs::read_to_string(p)
                    .map_err(|e| ctx.err(&fpath, format!("cannot read {}: {e}", p.display())))?,
            );
            decode_key(&text)
                .map(Some)
                .map_err(|m| ctx.err(&fpath, format!("{}: {m}", p.display())))
        }
        (None, None) => Ok(None),
    }
}

fn validate(ctx: &Ctx<'_>, raw: RawConfig, file: &Path) -> Result<Config, ConfigError> {
    let iface = &raw.interface;
    let name_path = [Seg::Key("interface"), Seg::Key("name")];
    if iface.name.is_empty() || iface.name.len() > 15 || iface.name.contains(['/', ' ', '\0']) {
        return Err(ctx.err(
            &name_path,
            "must be a Linux interface name: 1 to 15 characters, no '/' or spaces",
        ));
    }
    let mut addresses = Vec::new();
    for (i, a) in iface.address.iter().enumerate() {
        let p = [Seg::Key("interface"), Seg::Key("address"), Seg::Index(i)];
        let net: IpNet = a.parse().map_err(|_| {
            ctx.err(
                &p[..2],
                format!("`{a}` is not an address with prefix length (e.g. 198.51.100.1/24)"),
            )
        })?;
        addresses.push(net);
    }
    let mtu = iface.mtu.unwrap_or(DEFAULT_MTU);
    if !(576..=9000).contains(&mtu) {
        return Err(ctx.err(
            &[Seg::Key("interface"), Seg::Key("mtu")],
            format!("{mtu} is outside 576..=9000"),
        ));
    }
    let queues = iface.queues.unwrap_or(DEFAULT_QUEUES);
    if !(1..=MAX_QUEUES).contains(&queues) {
        return Err(ctx.err(
            &[Seg::Key("interface"), Seg::Key("queues")],
            format!("{queues} is outside 1..={MAX_QUEUES}"),
        ));
    }
    let workers = iface.workers.unwrap_or_else(default_workers);
    if !(1..=MAX_WORKERS).contains(&workers) {
        return Err(ctx.err(
            &[Seg::Key("interface"), Seg::Key("workers")],
            format!("{workers} is outside 1..={MAX_WORKERS}"),
        ));
    }
    let mut tunnels = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (ti, t) in raw.tunnel.iter().enumerate() {
        let tp = |k: &'static str| [Seg::Key("tunnel"), Seg::Index(ti), Seg::Key(k)];
        let name = t.name.clone().unwrap_or_else(|| format!("tunnel{ti}"));
        if !names.insert(name.clone()) {
            return Err(ctx.err(&tp("name"), format!("duplicate tunnel name `{name}`")));
        }
        let foreign: &[(&'static str, bool)] = match t.protocol.as_str() {
            "wireguard" => &[
                ("role", t.role.is_some()),
                ("config", t.config.is_some()),
                ("remote", t.remote.is_some()),
                ("proto", t.proto.is_some()),
                ("ca", t.ca.is_some()),
                ("cert", t.cert.is_some()),
                ("auth_user_pass", t.auth_user_pass.is_some()),
                ("key", t.key.is_some()),
                ("tls_crypt", t.tls_crypt.is_some()),
                ("tls_auth", t.tls_auth.is_some()),
                ("key_direction", t.key_direction.is_some()),
                ("data_ciphers", t.data_ciphers.is_some()),
                ("peer_fingerprint", t.peer_fingerprint.is_some()),
                ("hand_window", t.hand_window.is_some()),
                ("mode", t.mode.is_some()),
                ("server", t.server.is_some()),
                ("server_ipv6", t.server_ipv6.is_some()),
                ("iroutes", t.iroutes.is_some()),
                ("client_push", t.client_push.is_some()),
                ("push", t.push.is_some()),
                ("keepalive", t.keepalive.is_some()),
                ("max_clients", t.max_clients.is_some()),
                ("local", t.local.is_some()),
                ("reneg_sec", t.reneg_sec.is_some()),
                ("reneg_bytes", t.reneg_bytes.is_some()),
                ("reneg_pkts", t.reneg_pkts.is_some()),
                ("tran_window", t.tran_window.is_some()),
                ("remote_cert_tls", t.remote_cert_tls.is_some()),
                ("verify_x509_name", t.verify_x509_name.is_some()),
                ("verify_x509_type", t.verify_x509_type.is_some()),
                ("compress", t.compress.is_some()),
            ],
            "openvpn" => &[
                ("private_key", t.private_key.is_some()),
                ("private_key_file", t.private_key_file.is_some()),
                ("peer", !t.peer.is_empty()),
            ],
            _ => &[],
        };
        if let Some((f, _)) = foreign.iter().find(|(_, set)| *set) {
            return Err(ctx.err(
                &tp(f),
                format!("not a setting of a `{}` tunnel", t.protocol),
            ));
        }
        if let Some(first) = raw.tunnel.first().map(|f| f.protocol.as_str()) {
            if first != t.protocol {
                return Err(ctx.err(
                    &tp("protocol"),
                    format!(
                        "`{}` on an interface whose first tunnel is `{first}`: one protocol per \
                         interface (use a second config and interface)",
                        t.protocol
                    ),
                ));
            }
        }
        let protocol = match t.protocol.as_str() {
            "wireguard" => {
                let private_key = read_key_field(
                    ctx,
                    &tp("private_key"),
                    t.private_key.as_deref(),
                    t.private_key_file.as_deref(),
                    "private_key_file",
                )?
                .ok_or_else(|| {
                    ctx.err(
                        &tp("private_key"),
                        "missing: set private_key or private_key_file (`polytun genkey` makes one)",
                    )
                })?;
                let mut peers = Vec::new();
                for (pi, p) in t.peer.iter().enumerate() {
                    let pp = |k: &'static str| {
                        [
                            Seg::Key("tunnel"),
                            Seg::Index(ti),
                            Seg::Key("peer"),
                            Seg::Index(pi),
                            Seg::Key(k),
                        ]
                    };
                    let public_key = p
                        .public_key
                        .as_deref()
                        .ok_or_else(|| {
                            ctx.err(
                                &pp("public_key"),
                                "missing: every peer needs its public key",
                            )
                        })
                        .and_then(|s| decode_key(s).map_err(|m| ctx.err(&pp("public_key"), m)))?;
                    let preshared_key = read_key_field(
                        ctx,
                        &pp("preshared_key"),
                        p.preshared_key.as_deref(),
                        p.preshared_key_file.as_deref(),
                        "preshared_key_file",
                    )?;
                    let endpoint = match &p.endpoint {
                        None => None,
                        Some(e) => {
                            Some(resolve_endpoint(e).map_err(|m| ctx.err(&pp("endpoint"), m))?)
                        }
                    };
                    let mut allowed_ips = Vec::new();
                    for a in &p.allowed_ips {
                        let net: IpNet = a
                            .parse()
                            .or_else(|_| a.parse::<std::net::IpAddr>().map(IpNet::from))
                            .map_err(|_| {
                                ctx.err(
                                    &pp("allowed_ips"),
                                    format!("`{a}` is not a network (e.g. 198.51.100.2/32)"),
                                )
                            })?;
                        allowed_ips.push(net.trunc());
                    }
                    peers.push(WgPeer {
                        name: p.name.clone(),
                        public_key: *public_key,
                        preshared_key,
                        endpoint,
                        allowed_ips,
                        persistent_keepalive: p.persistent_keepalive.filter(|&k| k > 0),
                    });
                }
                let mut seen = std::collections::HashSet::new();
                for (pi, p) in peers.iter().enumerate() {
                    if !seen.insert(p.public_key) {
                        return Err(ctx.err(
                            &[
                                Seg::Key("tunnel"),
                                Seg::Index(ti),
                                Seg::Key("peer"),
                                Seg::Index(pi),
                                Seg::Key("public_key"),
                            ],
                            "the same public key appears in two peers",
                        ));
                    }
                }
                Protocol::WireGuard(WireGuard {
                    listen_port: t.listen_port,
                    private_key,
                    peers,
                })
            }
            "ipsec" | "ikev2" => {
                let raw = crate::ipsec::config::RawIpsec {
                    local_addrs: &t.local_addrs,
                    remote_addrs: &t.remote_addrs,
                    remote: t.remote.as_deref(),
                    local_id: t.local_id.as_deref(),
                    remote_id: t.remote_id.as_deref(),
                    auth: t.auth.as_deref(),
                    psk: t.psk.as_deref(),
                    psk_file: t.psk_file.as_deref(),
                    cert: t.cert.as_deref(),
                    key: t.key.as_deref(),
                    ca: t.ca.as_ref().map_or(&[][..], PathList::as_slice),
                    base: file.parent().unwrap_or(Path::new(".")),
                    proposals: t.proposals.as_deref(),
                    esp_proposals: t.esp_proposals.as_deref(),
                    local_ts: t.local_ts.as_deref(),
                    remote_ts: t.remote_ts.as_deref(),
                    initiate: t.initiate,
                    lifetimes: crate::ipsec::rekey::RawLifetimes {
                        lifetime: t.lifetime.as_deref(),
                        rekey_time: t.rekey_time.as_deref(),
                        rand_time: t.rand_time.as_deref(),
                        rekey_bytes: t.rekey_bytes.as_deref(),
                        life_bytes: t.life_bytes.as_deref(),
                        rekey_packets: t.rekey_packets.as_deref(),
                        life_packets: t.life_packets.as_deref(),
                        ike_rekey_time: t.ike_rekey_time.as_deref(),
                        ike_lifetime: t.ike_lifetime.as_deref(),
                        ike_rand_time: t.ike_rand_time.as_deref(),
                        reauth_time: t.reauth_time.as_deref(),
                    },
                    dpd_delay: t.dpd_delay.as_deref(),
                    fragment_size: t.fragment_size,
                    dpd_timeout: t.dpd_timeout.as_deref(),
                    dpd_action: t.dpd_action.as_deref(),
                    listen_port: t.listen_port,
                    interface_addresses: &addresses,
                };
                if t.private_key.is_some() || t.private_key_file.is_some() || !t.peer.is_empty() {
                    return Err(ctx.err(
                        &tp("protocol"),
                        "private_key, private_key_file and [[tunnel.peer]] are WireGuard settings; an ipsec tunnel authenticates with auth = \"psk\" and psk, or auth = \"pubkey\" with cert, key and ca",
                    ));
                }
                let mut ipsec = crate::ipsec::config::validate(&raw)
                    .map_err(|(field, msg)| ctx.err(&tp(field), msg))?;
                for (ci, c) in t.child.iter().enumerate() {
                    let raw = crate::ipsec::config::RawChild {
                        name: c.name.as_deref(),
                        local_ts: c.local_ts.as_deref(),
                        remote_ts: c.remote_ts.as_deref(),
                    };
                    let child = crate::ipsec::config::validate_child(&raw, ci, &ipsec).map_err(
                        |(field, msg)| {
                            let path = [
                                Seg::Key("tunnel"),
                                Seg::Index(ti),
                                Seg::Key("child"),
                                Seg::Index(ci),
                                Seg::Key(field),
                            ];
                            ctx.err(&path, msg)
                        },
                    )?;
                    ipsec.children.push(child);
                }
                Protocol::Ipsec(Box::new(ipsec))
            }
            "openvpn" => {
                let raw = crate::openvpn::settings::RawFields {
                    role: t.role.as_deref(),
                    config: t.config.as_deref(),
                    remote: t.remote.as_deref(),
                    proto: t.proto.as_deref(),
                    ca: match t.ca.as_ref().map(PathList::as_slice) {
                        None => None,
                        Some([one]) => Some(one.as_path()),
                        Some(_) => {
                            return Err(ctx.err(
                                &tp("ca"),
                                "an openvpn tunnel takes one ca file (put several CA certificates into it)",
                            ))
                        }
                    },
                    cert: t.cert.as_deref(),
                    auth_user_pass: t.auth_user_pass.as_deref(),
                    key: t.key.as_deref(),
                    tls_crypt: t.tls_crypt.as_deref(),
                    tls_auth: t.tls_auth.as_deref(),
                    key_direction: t.key_direction,
                    data_ciphers: t.data_ciphers.as_deref(),
                    peer_fingerprint: t.peer_fingerprint.as_deref(),
                    hand_window: t.hand_window,
                    mode: t.mode.as_deref(),
                    server: t.server.as_deref(),
                    server_ipv6: t.server_ipv6.as_deref(),
                    iroutes: t.iroutes.as_ref(),
                    client_push: t.client_push.as_ref(),
                    push: t.push.as_deref(),
                    keepalive: t.keepalive.as_deref(),
                    max_clients: t.max_clients,
                    local: t.local.as_deref(),
                    listen_port: t.listen_port,
                    reneg_sec: t.reneg_sec,
                    reneg_bytes: t.reneg_bytes,
                    reneg_pkts: t.reneg_pkts,
                    tran_window: t.tran_window,
                    remote_cert_tls: t.remote_cert_tls.as_deref(),
                    verify_x509_name: t.verify_x509_name.as_deref(),
                    verify_x509_type: t.verify_x509_type.as_deref(),
                    compress: t.compress.as_deref(),
                };
                let base = file.parent().unwrap_or(Path::new("."));
                Protocol::OpenVpn(Box::new(crate::openvpn::settings::build(
                    &raw,
                    base,
                    &|f, m| ctx.err(&tp(f), m),
                )?))
            }
            other => {
                return Err(ctx.err(
                    &tp("protocol"),
                    format!(
                        "unknown protocol `{other}` (expected `wireguard`, `ipsec` or `openvpn`)"
                    ),
                ))
            }
        };
        if let Some(first) = tunnels.first().map(|t: &Tunnel| t.protocol.name()) {
            if first != protocol.name() {
                return Err(ctx.err(
                    &tp("protocol"),
                    format!(
                        "`{}` cannot share an interface with `{first}` tunnels: one protocol per interface (use a second config and interface)",
                        protocol.name()
                    ),
                ));
            }
        }
        let ovpn_server = |p: &Protocol| matches!(p, Protocol::OpenVpn(o) if o.server.is_some());
        if ti > 0
            && (ovpn_server(&protocol)
                || tunnels
                    .first()
                    .is_some_and(|f: &Tunnel| ovpn_server(&f.protocol)))
        {
            return Err(ctx.err(
                &tp("mode"),
                "an OpenVPN server owns its interface: put it alone in its config (one TUN device per server)",
            ));
        }
        if matches!(protocol, Protocol::WireGuard(_)) {
            for (field, set) in [
                ("local_addrs", !t.local_addrs.is_empty()),
                ("remote_addrs", !t.remote_addrs.is_empty()),
                ("remote", t.remote.is_some()),
                ("psk", t.psk.is_some()),
                ("proposals", t.proposals.is_some()),
                ("esp_proposals", t.esp_proposals.is_some()),
                ("remote_ts", t.remote_ts.is_some()),
            ] {
                if set {
                    return Err(ctx.err(
                        &tp(field),
                        "an IPsec setting in a wireguard tunnel (set protocol = \"ipsec\")",
                    ));
                }
            }
        }
        tunnels.push(Tunnel { name, protocol });
    }
    Ok(Config {
        path: file.to_path_buf(),
        interface: Interface {
            name: iface.name.clone(),
            addresses,
            mtu,
            control_socket: iface
                .control_socket
                .clone()
                .unwrap_or_else(|| default_control_socket(&iface.name)),
            offload: iface.offload.unwrap_or(true),
            queues,
            workers,
        },
        tunnels,
    })
}

fn resolve_endpoint(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("`{s}` has no port (write host:port, or [v6]:port)"));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{s}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const K2: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn good() -> String {
        format!(
            r#"[interface]
name = "pt0"
address = ["198.51.100.1/24"]

[[tunnel]]
name = "wg"
protocol = "wireguard"
listen_port = 51820
private_key = "{K1}"

[[tunnel.peer]]
public_key = "{K2}"
endpoint = "192.0.2.2:51820"
allowed_ips = ["198.51.100.2/32", "203.0.113.0/24"]
persistent_keepalive = 25
"#
        )
    }

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("site.toml"), text, &[])
    }

    #[test]
    fn parses_a_good_config() {
        let c = p(&good()).unwrap();
        assert_eq!(c.interface.mtu, DEFAULT_MTU);
        assert_eq!(
            c.interface.control_socket,
            PathBuf::from("/run/polytun/pt0.sock")
        );
        let Protocol::WireGuard(wg) = &c.tunnels[0].protocol else {
            panic!("not wireguard")
        };
        assert_eq!(wg.listen_port, Some(51820));
        assert_eq!(wg.peers[0].allowed_ips.len(), 2);
        assert_eq!(
            wg.peers[0].endpoint,
            Some("192.0.2.2:51820".parse().unwrap())
        );
    }

    #[test]
    fn bad_key_names_file_line_and_field() {
        let text = good().replace(K2, "not-a-key");
        let e = p(&text).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert_eq!(e.field, "tunnel[0].peer[0].public_key");
        assert!(
            e.to_string()
                .starts_with("site.toml:12: tunnel[0].peer[0].public_key: not valid base64"),
            "{e}"
        );
    }

    #[test]
    fn bad_cidr_and_missing_field() {
        let e = p(&good().replace("203.0.113.0/24", "203.0.113.0/33")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(14), "tunnel[0].peer[0].allowed_ips"),
            "{e}"
        );
        let e = p(&good().replace(&format!("private_key = \"{K1}\"\n"), "")).unwrap_err();
        assert_eq!(e.field, "tunnel[0].private_key");
        assert!(e.message.contains("missing"), "{e}");
        assert_eq!(e.line, Some(5), "points at the [[tunnel]] header: {e}");
    }

    #[test]
    fn type_errors_and_unknown_fields_come_with_lines() {
        let e = p(&good().replace("listen_port = 51820", "listen_port = \"x\"")).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.field.contains("listen_port"), "{e}");
        let e = p(&good().replace("persistent_keepalive", "persistent_keeplive")).unwrap_err();
        assert_eq!(e.line, Some(15), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = p("[interface\nname=1").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    fn ipsec() -> String {
        r#"[interface]
name = "pt0"
address = ["198.51.100.1/32"]

[[tunnel]]
name = "site"
protocol = "ipsec"
local_addrs = ["192.0.2.1"]
remote = "192.0.2.2"
local_id = "a.example"
remote_id = "@b.example"
psk = "0sRGVtby1QU0stbm90LWZvci1yZWFsLXVzZS0yMDI2LXBvbHl0dW4="
proposals = ["aes256gcm16-prfsha256-x25519"]
esp_proposals = ["aes256gcm16", "chacha20poly1305"]
local_ts = ["198.51.100.1/32"]
remote_ts = ["198.51.100.2/32", "10.2.0.0/16"]
rekey_time = "50m"
dpd_delay = 30
"#
        .to_string()
    }

    #[test]
    fn parses_an_ipsec_tunnel() {
        let c = p(&ipsec()).unwrap();
        let Protocol::Ipsec(t) = &c.tunnels[0].protocol else {
            panic!("not ipsec")
        };
        assert!(t.initiate);
        assert_eq!(t.remote_host(), Some("192.0.2.2".parse().unwrap()));
        assert_eq!(
            t.remote_id,
            Some(polytun_ike::Identity::Fqdn("b.example".into()))
        );
        assert_eq!(t.esp_proposals.len(), 2);
        assert_eq!(t.remote_ts.len(), 2);
        assert_eq!(t.lifetimes.rekey_time, std::time::Duration::from_secs(3000));
        assert_eq!(t.dpd_delay, Some(std::time::Duration::from_secs(30)));
        assert_eq!(t.fragment_size, 1280);
    }

    #[test]
    fn ipsec_children_lifetimes_and_dpd() {
        let text = ipsec()
            + "dpd_action = \"clear\"\ndpd_timeout = \"20s\"\nike_rekey_time = \"1h\"\nrekey_bytes = \"1G\"\n\n[[tunnel.child]]\nremote_ts = [\"10.3.0.0/16\"]\n";
        let c = p(&text).unwrap();
        let Protocol::Ipsec(t) = &c.tunnels[0].protocol else {
            panic!("not ipsec")
        };
        assert_eq!(t.dpd_action, polytun_ike::DpdAction::Clear);
        assert_eq!(t.dpd_timeout, Some(std::time::Duration::from_secs(20)));
        assert_eq!(
            t.lifetimes.ike_rekey_time,
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(t.lifetimes.rekey_bytes, Some(1 << 30));
        assert_eq!(t.children.len(), 1);
        assert_eq!(t.children[0].name, "child1");
        assert_eq!(t.children[0].local_ts, t.local_ts);
        // an initiating tunnel restarts by default
        let Protocol::Ipsec(t) = &p(&ipsec()).unwrap().tunnels[0].protocol else {
            panic!("not ipsec")
        };
        assert_eq!(t.dpd_action, polytun_ike::DpdAction::Restart);
        let e = p(&(ipsec() + "\n[[tunnel.child]]\nremote_ts = [\"10.2.1.0/24\"]\n")).unwrap_err();
        assert_eq!(e.field, "tunnel[0].child[0].remote_ts", "{e}");
        assert_eq!(e.line, Some(21), "{e}");
        assert!(e.message.contains("overlaps"), "{e}");
        let e = p(&(ipsec() + "dpd_action = \"trap\"\n")).unwrap_err();
        assert_eq!(e.field, "tunnel[0].dpd_action", "{e}");
        assert!(e.message.contains("not supported"), "{e}");
        let e = p(&(ipsec() + "life_packets = \"many\"\n")).unwrap_err();
        assert_eq!(e.field, "tunnel[0].life_packets", "{e}");
    }

    #[test]
    fn ipsec_errors_name_file_line_and_field() {
        let e = p(&ipsec().replace("\"aes256gcm16\", ", "\"aes256gcm16-md5\", ")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(14), "tunnel[0].esp_proposals"),
            "{e}"
        );
        assert!(e.message.contains("md5"), "{e}");
        let e = p(&ipsec().replace("10.2.0.0/16", "10.2.0.0/99")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(16), "tunnel[0].remote_ts"),
            "{e}"
        );
        let e = p(&ipsec().replace("remote = \"192.0.2.2\"\n", "")).unwrap_err();
        assert_eq!(e.field, "tunnel[0].remote_addrs", "{e}");
        assert!(e.message.contains("initiate = false"), "{e}");
        let e = p(&ipsec().replace("rekey_time = \"50m\"", "rekey_time = \"soon\"")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(17), "tunnel[0].rekey_time"),
            "{e}"
        );
        let e = p(&ipsec().replace("psk = ", "preshared_key = ")).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        let e = p(&ipsec().replace("dpd_delay = 30", "dpd_delay = 30\nfragment_size = 64"))
            .unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(19), "tunnel[0].fragment_size"),
            "{e}"
        );
        let mixed = format!(
            "{}\n[[tunnel]]\nname = \"wg\"\nprotocol = \"wireguard\"\nprivate_key = \"{K1}\"\n",
            ipsec()
        );
        let e = p(&mixed).unwrap_err();
        assert!(e.message.contains("one protocol per interface"), "{e}");
    }

    #[test]
    fn openvpn_errors_name_line_and_field() {
        let base =
            "[interface]\nname = \"pt0\"\n\n[[tunnel]]\nname = \"vpn\"\nprotocol = \"openvpn\"\n";
        let e = p(&format!(
            "{base}remote = \"192.0.2.1:1194\"\nproto = \"sctp\"\n"
        ))
        .unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(8), "tunnel[0].proto"),
            "{e}"
        );
        let e = p(&format!("{base}remote = \"192.0.2.1\"\n")).unwrap_err();
        assert_eq!(e.field, "tunnel[0].cert", "{e}");
        assert!(e.message.contains("missing"), "{e}");
        let e = p(&format!("{base}listen_port = 1194\n")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(7), "tunnel[0].listen_port"),
            "{e}"
        );
        // one protocol per interface
        let mixed = format!(
            "{}\n[[tunnel]]\nname = \"vpn\"\nprotocol = \"openvpn\"\n",
            good()
        );
        let e = p(&mixed).unwrap_err();
        assert_eq!(e.field, "tunnel[1].protocol", "{e}");
        assert!(e.message.contains("one protocol per interface"), "{e}");
        let e = p(&good().replace("listen_port = 51820", "remote = \"x:1\"")).unwrap_err();
        assert_eq!(e.field, "tunnel[0].remote", "{e}");
    }

    #[test]
    fn environment_overrides() {
        let env = vec![("POLYTUN_INTERFACE__MTU".to_string(), "1380".to_string())];
        let c = parse(Path::new("x.toml"), &good(), &env).unwrap();
        assert_eq!(c.interface.mtu, 1380);
        let env = vec![("POLYTUN_INTERFACE__MTU".to_string(), "huge".to_string())];
        let e = parse(Path::new("x.toml"), &good(), &env).unwrap_err();
        assert!(e.message.contains("environment"), "{e}");
    }
}
