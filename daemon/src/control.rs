//! The control socket: one JSON request per line, one JSON reply per line,
//! over a Unix socket only root can open (`/run/polytun/IFACE.sock`).
//! `polytun` is its client; `polytun show --json` prints the reply as is.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Show,
    /// Key update on demand (KU): a new handshake with `peer` (name or
    /// public key), or with every peer.
    Rekey {
        #[serde(default)]
        tunnel: Option<String>,
        #[serde(default)]
        peer: Option<String>,
        /// IPsec: what to rekey (swanctl's `--rekey --child/--ike/--reauth`);
        /// `None`: the CHILD SAs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ipsec: Option<IpsecRekey>,
    },
    /// Shared-secret key export (SSKE) from a tunnel's current key.
    ExportKey {
        #[serde(default)]
        tunnel: Option<String>,
        label: String,
        #[serde(default)]
        context: String,
        length: usize,
    },
    /// Stops the daemon (connection termination for every tunnel).
    Down,
}

/// What `polytun rekey` rekeys in an IPsec tunnel.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IpsecRekey {
    /// Every CHILD SA (CREATE_CHILD_SA).
    Child,
    /// Every IKE SA (CREATE_CHILD_SA; the CHILD SAs move along).
    Ike,
    /// Every IKE SA by reauthentication (a new IKE_SA_INIT + IKE_AUTH).
    Reauth,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Drops {
    pub malformed: u64,
    pub bad_mac: u64,
    pub replayed: u64,
    pub no_session: u64,
    pub bad_source: u64,
    pub expired_key: u64,
    pub rate_limited: u64,
    pub other: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PeerShow {
    pub name: Option<String>,
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub latest_handshake_unix: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub key_age_secs: Option<u64>,
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TunnelShow {
    pub name: String,
    pub protocol: String,
    pub listen_port: Option<u16>,
    pub public_key: Option<String>,
    pub drops: Drops,
    pub peers: Vec<PeerShow>,
    /// IPsec: the IKE SAs with their CHILD SAs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ike_sas: Vec<IkeSaShow>,
    /// An OpenVPN tunnel's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openvpn: Option<OpenVpnShow>,
    /// IPsec: IKE messages dropped (also counted in `drops`) and IKE
    /// fragmentation (RFC 7383).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ike: Option<IkeShow>,
}

/// An IPsec tunnel's IKE counters, as `polytun show` lists them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct IkeShow {
    pub fragmented_sent: u64,
    pub fragments_sent: u64,
    pub fragments_received: u64,
    pub reassembled: u64,
    pub malformed: u64,
    pub integrity: u64,
    pub bad_message_id: u64,
    pub unknown_sa: u64,
    pub unexpected: u64,
    pub stateless: u64,
    pub fragment_dropped: u64,
}

/// One OpenVPN session, as `polytun show` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct OpenVpnShow {
    pub role: String,
    pub remote: String,
    pub transport: String,
    pub control_wrap: String,
    pub state: String,
    pub tls_version: Option<String>,
    pub peer_id: Option<u32>,
    pub virtual_address: Option<String>,
    /// From `ifconfig-ipv6` (a client), or the pool's (a server's client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_address_ipv6: Option<String>,
    /// A server's client: its certificate's common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    pub cipher: Option<String>,
    /// The compression framing in use (`comp-lzo no`, `compress stub`,
    /// `compress stub-v2`), if any: framing only, never compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    pub key_id: Option<u8>,
    /// The previous key-id, still open for packets in flight.
    #[serde(default)]
    pub lame_duck_key_id: Option<u8>,
    /// Until this side renegotiates by `reneg-sec`.
    #[serde(default)]
    pub next_renegotiation_secs: Option<u64>,
    /// Soft resets so far in this session (either side).
    #[serde(default)]
    pub renegotiations: u64,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub pings_received: u64,
    pub connected_since_unix: Option<u64>,
    pub last_error: Option<String>,
    /// A server's clients, one entry each (role "client").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<OpenVpnShow>,
}

/// The session's virtual addresses, IPv4 first: "A", "A, B" or none.
fn addresses(v: &OpenVpnShow) -> Option<String> {
    let a: Vec<&str> = [&v.virtual_address, &v.virtual_address_ipv6]
        .into_iter()
        .filter_map(|a| a.as_deref())
        .collect();
    (!a.is_empty()).then(|| a.join(", "))
}

fn render_openvpn(o: &mut String, v: &OpenVpnShow, now_unix: u64) {
    use std::fmt::Write;
    let _ = writeln!(
        o,
        "\nsession: {} {} over {} ({})",
        v.role, v.remote, v.transport, v.control_wrap
    );
    let _ = writeln!(o, "  state: {}", v.state);
    if let Some(t) = v.connected_since_unix {
        let _ = writeln!(o, "  connected: {} ago", ago(now_unix.saturating_sub(t)));
    }
    if let Some(t) = &v.tls_version {
        let _ = writeln!(o, "  tls: {t}");
    }
    if let Some(a) = addresses(v) {
        let _ = writeln!(o, "  virtual address: {a}");
    }
    if let Some(p) = v.peer_id {
        let _ = writeln!(o, "  peer-id: {p}");
    }
    if let (Some(c), Some(k)) = (&v.cipher, v.key_id) {
        let lame = v
            .lame_duck_key_id
            .map(|l| format!(" (lame duck {l})"))
            .unwrap_or_default();
        let _ = writeln!(o, "  cipher: {c}, key-id {k}{lame}");
        if let Some(f) = &v.compression {
            let _ = writeln!(o, "  compression framing: {f} (nothing is compressed)");
        }
        let next = v
            .next_renegotiation_secs
            .map(|s| format!(", next in {}", ago(s)))
            .unwrap_or_default();
        let _ = writeln!(o, "  renegotiations: {}{next}", v.renegotiations);
    }
    if !v.routes.is_empty() {
        let _ = writeln!(o, "  routes: {}", v.routes.join(", "));
    }
    if !v.dns.is_empty() {
        let _ = writeln!(
            o,
            "  pushed DNS: {} (not applied to the host)",
            v.dns.join(", ")
        );
    }
    let _ = writeln!(
        o,
        "  transfer: {} received, {} sent, {} keepalive pings received",
        human_bytes(v.rx_bytes),
        human_bytes(v.tx_bytes),
        v.pings_received
    );
    if let Some(e) = &v.last_error {
        let _ = writeln!(o, "  last error: {e}");
    }
    for c in &v.clients {
        let _ = writeln!(
            o,
            "  client {}{}: {}, peer-id {}, address {}{}, {} key-id {}, {} received, {} sent{}",
            c.remote,
            c.common_name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            c.state,
            c.peer_id.map_or("-".into(), |p| p.to_string()),
            addresses(c).as_deref().unwrap_or("-"),
            if c.routes.is_empty() {
                String::new()
            } else {
                format!(", routes {}", c.routes.join(", "))
            },
            c.cipher.as_deref().unwrap_or("-"),
            c.key_id.map_or("-".into(), |k| k.to_string()),
            human_bytes(c.rx_bytes),
            human_bytes(c.tx_bytes),
            c.connected_since_unix
                .map(|t| format!(", connected {} ago", ago(now_unix.saturating_sub(t))))
                .unwrap_or_default()
        );
    }
}

/// One IKE SA, as `swanctl --list-sas` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct IkeSaShow {
    /// ESTABLISHED, CONNECTING, …
    pub state: String,
    pub initiator: bool,
    /// Hex, 16 digits each.
    pub spi_i: String,
    pub spi_r: String,
    pub local: String,
    pub remote: String,
    pub local_id: String,
    pub remote_id: String,
    /// How both sides authenticate: `psk` or `pubkey (ECDSA P-256)`.
    #[serde(default)]
    pub auth: String,
    /// E.g. AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519.
    pub algorithms: String,
    pub age_secs: u64,
    /// Seconds until the IKE SA is rekeyed (CREATE_CHILD_SA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekey_in_secs: Option<u64>,
    /// Seconds until the IKE SA is reauthenticated (`reauth_time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reauth_in_secs: Option<u64>,
    pub children: Vec<ChildSaShow>,
}

/// One CHILD SA (both directions).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ChildSaShow {
    /// Hex, 8 digits.
    pub spi_in: String,
    pub spi_out: String,
    /// E.g. AES_GCM_16-256.
    pub transform: String,
    pub esn: bool,
    pub encap: bool,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub age_secs: u64,
    /// Seconds until the soft lifetime (rekey) is reached.
    pub rekey_in_secs: Option<u64>,
    /// INSTALLED (carries traffic), REKEYING (our rekey of it is under way),
    /// REKEYED (replaced, deleted soon), INSTALLED-INBOUND (a rekey's new
    /// SA, traffic not moved to it yet).
    #[serde(default)]
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ShowReply {
    pub interface: String,
    pub mtu: u16,
    pub offload: bool,
    pub tunnels: Vec<TunnelShow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Show(ShowReply),
    Ok {
        message: String,
    },
    Error {
        message: String,
    },
    /// An exported key (hex) and where it comes from.
    Key {
        tunnel: String,
        /// E.g. the IKE SA's SPIs.
        source: String,
        key_hex: String,
    },
}

/// A command from a client and where its reply goes.
pub type Request = (Command, oneshot::Sender<Reply>);

/// Binds the control socket (replacing a stale one, refusing a live one)
/// and forwards every request into `tx`.
pub async fn serve(path: PathBuf, tx: mpsc::Sender<Request>) -> std::io::Result<()> {
    let listener = bind(&path).await?;
    serve_listener(listener, tx).await
}

/// Serves an already bound control socket.
pub async fn serve_listener(
    listener: UnixListener,
    tx: mpsc::Sender<Request>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tx).await {
                tracing::debug!("control client: {e}");
            }
        });
    }
}

pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another running polytund", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<Request>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Command>(&line) {
            Ok(cmd) => {
                let (rtx, rrx) = oneshot::channel();
                if tx.send((cmd, rtx)).await.is_err() {
                    Reply::Error {
                        message: "daemon is shutting down".into(),
                    }
                } else {
                    rrx.await.unwrap_or(Reply::Error {
                        message: "command dropped".into(),
                    })
                }
            }
            Err(e) => Reply::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

/// Sends one command and waits for its reply (the CLI side).
pub async fn request(path: &Path, cmd: &Command) -> std::io::Result<Reply> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot connect to {}: {e} (is polytund running?)",
                path.display()
            ),
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_string(cmd).map_err(std::io::Error::other)?;
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    let reply = lines
        .next_line()
        .await?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no reply"))?;
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

fn ago(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    for (n, unit) in [(d, "day"), (h, "hour"), (m, "minute"), (s, "second")] {
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        "Now".into()
    } else {
        parts.join(", ")
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// `polytun show` as a person reads it, in the manner of `wg show`.
pub fn render_show(s: &ShowReply, now_unix: u64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "interface: {}", s.interface);
    let _ = writeln!(
        o,
        "  mtu: {}{}",
        s.mtu,
        if s.offload { " (offload on)" } else { "" }
    );
    for t in &s.tunnels {
        let _ = writeln!(o, "\ntunnel: {} ({})", t.name, t.protocol);
        if let Some(k) = &t.public_key {
            let _ = writeln!(o, "  public key: {k}");
        }
        if let Some(p) = t.listen_port {
            let _ = writeln!(o, "  listening port: {p}");
        }
        let d = &t.drops;
        let _ = writeln!(
            o,
            "  dropped: {} malformed, {} bad mac, {} replayed, {} no session, {} bad source, {} expired key, {} rate limited, {} other",
            d.malformed, d.bad_mac, d.replayed, d.no_session, d.bad_source, d.expired_key, d.rate_limited, d.other
        );
        if let Some(i) = &t.ike {
            let _ = writeln!(
                o,
                "  IKE dropped: {} malformed, {} bad ICV, {} bad message ID, {} unknown SA, {} unexpected, {} fragments; stateless answers: {}",
                i.malformed, i.integrity, i.bad_message_id, i.unknown_sa, i.unexpected, i.fragment_dropped, i.stateless
            );
            let _ = writeln!(
                o,
                "  IKE fragments: {} sent ({} messages), {} received ({} messages reassembled)",
                i.fragments_sent, i.fragmented_sent, i.fragments_received, i.reassembled
            );
        }
        for sa in &t.ike_sas {
            render_ike_sa(&mut o, &t.name, sa);
        }
        if let Some(v) = &t.openvpn {
            render_openvpn(&mut o, v, now_unix);
        }
        for p in &t.peers {
            let _ = write!(o, "\npeer: {}", p.public_key);
            if let Some(n) = &p.name {
                let _ = write!(o, " ({n})");
            }
            o.push('\n');
            if p.preshared_key {
                let _ = writeln!(o, "  preshared key: (hidden)");
            }
            if let Some(e) = &p.endpoint {
                let _ = writeln!(o, "  endpoint: {e}");
            }
            let ips = if p.allowed_ips.is_empty() {
                "(none)".to_string()
            } else {
                p.allowed_ips.join(", ")
            };
            let _ = writeln!(o, "  allowed ips: {ips}");
            if let Some(h) = p.latest_handshake_unix {
                let _ = writeln!(
                    o,
                    "  latest handshake: {} ago",
                    ago(now_unix.saturating_sub(h))
                );
            }
            if p.rx_bytes > 0 || p.tx_bytes > 0 {
                let _ = writeln!(
                    o,
                    "  transfer: {} received, {} sent",
                    human_bytes(p.rx_bytes),
                    human_bytes(p.tx_bytes)
                );
            }
            if let Some(a) = p.key_age_secs {
                let _ = writeln!(o, "  key age: {}", ago(a));
            }
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(o, "  persistent keepalive: every {}", ago(u64::from(k)));
            }
        }
    }
    o
}

/// An IKE SA and its CHILD SAs in the manner of `swanctl --list-sas`.
fn render_ike_sa(o: &mut String, name: &str, sa: &IkeSaShow) {
    use std::fmt::Write;
    let (mi, mr) = if sa.initiator { ("*", "") } else { ("", "*") };
    let _ = writeln!(
        o,
        "\n{name}: {}, IKEv2, {}_i{mi} {}_r{mr}",
        sa.state, sa.spi_i, sa.spi_r
    );
    let _ = writeln!(o, "  local  '{}' @ {}", sa.local_id, sa.local);
    let _ = writeln!(o, "  remote '{}' @ {}", sa.remote_id, sa.remote);
    if !sa.auth.is_empty() {
        let _ = writeln!(o, "  authentication: {}", sa.auth);
    }
    if !sa.algorithms.is_empty() {
        let _ = writeln!(o, "  {}", sa.algorithms);
    }
    let _ = write!(o, "  established {}s ago", sa.age_secs);
    if let Some(r) = sa.rekey_in_secs {
        let _ = write!(o, ", rekeying in {r}s");
    }
    if let Some(r) = sa.reauth_in_secs {
        let _ = write!(o, ", reauth in {r}s");
    }
    o.push('\n');
    for c in &sa.children {
        let _ = writeln!(
            o,
            "  {name}: {}, TUNNEL{}, ESP:{}{}",
            if c.state.is_empty() {
                "INSTALLED"
            } else {
                &c.state
            },
            if c.encap { "-in-UDP" } else { "" },
            c.transform,
            if c.esn { "/ESN" } else { "" }
        );
        let _ = write!(o, "    installed {}s ago", c.age_secs);
        if let Some(r) = c.rekey_in_secs {
            let _ = write!(o, ", rekeying in {r}s");
        }
        o.push('\n');
        let _ = writeln!(
            o,
            "    in  {}, {:>9} bytes, {:>6} packets",
            c.spi_in, c.rx_bytes, c.rx_packets
        );
        let _ = writeln!(
            o,
            "    out {}, {:>9} bytes, {:>6} packets",
            c.spi_out, c.tx_bytes, c.tx_packets
        );
        let _ = writeln!(o, "    local  {}", c.local_ts.join(" "));
        let _ = writeln!(o, "    remote {}", c.remote_ts.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_wire_format() {
        assert_eq!(
            serde_json::to_string(&Command::Show).unwrap(),
            r#"{"cmd":"show"}"#
        );
        let c: Command = serde_json::from_str(r#"{"cmd":"rekey","peer":"b"}"#).unwrap();
        assert_eq!(
            c,
            Command::Rekey {
                tunnel: None,
                peer: Some("b".into()),
                ipsec: None,
            }
        );
        let c: Command =
            serde_json::from_str(r#"{"cmd":"rekey","ipsec":"ike","tunnel":"site"}"#).unwrap();
        assert_eq!(
            c,
            Command::Rekey {
                tunnel: Some("site".into()),
                peer: None,
                ipsec: Some(IpsecRekey::Ike),
            }
        );
        let c: Command =
            serde_json::from_str(r#"{"cmd":"export_key","label":"x","length":32}"#).unwrap();
        assert_eq!(
            c,
            Command::ExportKey {
                tunnel: None,
                label: "x".into(),
                context: String::new(),
                length: 32,
            }
        );
    }

    #[test]
    fn show_renders_like_wg() {
        let s = ShowReply {
            interface: "pt0".into(),
            mtu: 1420,
            offload: true,
            tunnels: vec![TunnelShow {
                name: "wg".into(),
                protocol: "wireguard".into(),
                listen_port: Some(51820),
                peers: vec![PeerShow {
                    public_key: "KEY".into(),
                    latest_handshake_unix: Some(100),
                    rx_bytes: 2048,
                    tx_bytes: 10,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let out = render_show(&s, 165);
        assert!(out.contains("listening port: 51820"));
        assert!(
            out.contains("latest handshake: 1 minute, 5 seconds ago"),
            "{out}"
        );
        assert!(
            out.contains("transfer: 2.00 KiB received, 10 B sent"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn roundtrip_over_a_socket() {
        let dir = std::env::temp_dir().join(format!("pt-ctl-{}", std::process::id()));
        let path = dir.join("x.sock");
        let (tx, mut rx) = mpsc::channel::<Request>(4);
        let p2 = path.clone();
        tokio::spawn(async move { serve(p2, tx).await });
        tokio::spawn(async move {
            while let Some((cmd, reply)) = rx.recv().await {
                let _ = reply.send(Reply::Ok {
                    message: format!("{cmd:?}"),
                });
            }
        });
        for _ in 0..50 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let r = request(&path, &Command::Down).await.unwrap();
        assert_eq!(
            r,
            Reply::Ok {
                message: "Down".into()
            }
        );
        assert!(bind(&path).await.is_err(), "a live socket is not replaced");
        let _ = std::fs::remove_dir_all(dir);
    }
}
