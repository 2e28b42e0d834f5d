//! The cross-platform WireGuard userspace API ("UAPI"), as served by
//! wireguard-go and spoken by `wg` and `wg-quick`: `get=1` and `set=1`
//! requests of `key=value` lines over a Unix socket at
//! `/var/run/wireguard/IFACE.sock`. Keys travel as lowercase hex.

use ipnet::IpNet;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// errno values as wireguard-go reports them (negated errno).
pub const EINVAL: i32 = -22;
pub const EPROTO: i32 = -71;
pub const ENOENT: i32 = -2;
pub const EADDRINUSE: i32 = -98;
pub const EIO: i32 = -5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct UapiError {
    pub errno: i32,
    pub message: String,
}

impl UapiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            errno: EINVAL,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerSet {
    pub public_key: [u8; 32],
    pub remove: bool,
    pub update_only: bool,
    /// `Some(None)`: remove the preshared key (an all-zero key on the wire).
    pub preshared_key: Option<Option<Zeroizing<[u8; 32]>>>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceSet {
    /// `Some(None)`: remove the private key (an all-zero key on the wire).
    pub private_key: Option<Option<Zeroizing<[u8; 32]>>>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get,
    Set(DeviceSet),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerState {
    pub public_key: [u8; 32],
    pub preshared_key: Option<Zeroizing<[u8; 32]>>,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    pub private_key: Option<Zeroizing<[u8; 32]>>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerState>,
}

fn hex32(s: &str) -> Result<Zeroizing<[u8; 32]>, UapiError> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return Err(UapiError::invalid(format!(
            "key must be 64 hex digits, got {}",
            b.len()
        )));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16);
        let lo = (pair[1] as char).to_digit(16);
        match (hi, lo) {
            (Some(h), Some(l)) => out[i] = (h * 16 + l) as u8,
            _ => return Err(UapiError::invalid("key is not hex")),
        }
    }
    Ok(out)
}

fn to_hex(k: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for b in k {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn optional_key(s: &str) -> Result<Option<Zeroizing<[u8; 32]>>, UapiError> {
    if s.is_empty() {
        return Ok(None);
    }
    let k = hex32(s)?;
    Ok(if k.iter().all(|&b| b == 0) {
        None
    } else {
        Some(k)
    })
}

fn parse_bool(key: &str, v: &str) -> Result<bool, UapiError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(UapiError::invalid(format!("{key}: expected true or false"))),
    }
}

/// Parses a request: its first line (`get=1` / `set=1`) and, for `set`, the
/// following lines up to (not including) the blank line that ends it.
pub fn parse_request(first: &str, lines: &[String]) -> Result<Request, UapiError> {
    match first {
        "get=1" => return Ok(Request::Get),
        "set=1" => {}
        other => {
            return Err(UapiError {
                errno: EINVAL,
                message: format!("unknown operation `{other}`"),
            })
        }
    }
    let mut dev = DeviceSet::default();
    let mut peer: Option<PeerSet> = None;
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| UapiError::invalid(format!("line without '=': {line}")))?;
        if key == "public_key" {
            if let Some(p) = peer.take() {
                dev.peers.push(p);
            }
            peer = Some(PeerSet {
                public_key: *hex32(value)?,
                ..Default::default()
            });
            continue;
        }
        match (&mut peer, key) {
            (None, "private_key") => dev.private_key = Some(optional_key(value)?),
            (None, "listen_port") => {
                dev.listen_port = Some(
                    value
                        .parse()
                        .map_err(|_| UapiError::invalid("listen_port"))?,
                )
            }
            (None, "fwmark") => {
                dev.fwmark = Some(if value.is_empty() {
                    0
                } else {
                    value.parse().map_err(|_| UapiError::invalid("fwmark"))?
                })
            }
            (None, "replace_peers") => dev.replace_peers = parse_bool(key, value)?,
            (Some(p), "remove") => p.remove = parse_bool(key, value)?,
            (Some(p), "update_only") => p.update_only = parse_bool(key, value)?,
            (Some(p), "preshared_key") => p.preshared_key = Some(optional_key(value)?),
            (Some(p), "endpoint") => {
                p.endpoint = Some(
                    value
                        .parse()
                        .map_err(|_| UapiError::invalid(format!("endpoint `{value}`")))?,
                )
            }
            (Some(p), "persistent_keepalive_interval") => {
                p.persistent_keepalive = Some(
                    value
                        .parse()
                        .map_err(|_| UapiError::invalid("persistent_keepalive_interval"))?,
                )
            }
            (Some(p), "replace_allowed_ips") => p.replace_allowed_ips = parse_bool(key, value)?,
            (Some(p), "allowed_ip") => {
                let net: IpNet = value
                    .parse()
                    .map_err(|_| UapiError::invalid(format!("allowed_ip `{value}`")))?;
                p.allowed_ips.push(net.trunc());
            }
            (Some(_), "protocol_version") => {
                if value != "1" {
                    return Err(UapiError::invalid("protocol_version must be 1"));
                }
            }
            _ => {
                return Err(UapiError::invalid(format!("unexpected key `{key}`")));
            }
        }
    }
    if let Some(p) = peer {
        dev.peers.push(p);
    }
    Ok(Request::Set(dev))
}

/// The body of a `get=1` answer, without the final `errno=0` line.
pub fn format_state(state: &DeviceState) -> String {
    let mut s = String::new();
    if let Some(k) = &state.private_key {
        let _ = writeln!(s, "private_key={}", to_hex(k));
    }
    let _ = writeln!(s, "listen_port={}", state.listen_port);
    if state.fwmark != 0 {
        let _ = writeln!(s, "fwmark={}", state.fwmark);
    }
    for p in &state.peers {
        let _ = writeln!(s, "public_key={}", to_hex(&p.public_key));
        if let Some(k) = &p.preshared_key {
            let _ = writeln!(s, "preshared_key={}", to_hex(k));
        }
        let _ = writeln!(s, "protocol_version=1");
        if let Some(e) = p.endpoint {
            let _ = writeln!(s, "endpoint={e}");
        }
        let (sec, nsec) = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let _ = writeln!(s, "last_handshake_time_sec={sec}");
        let _ = writeln!(s, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(s, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            p.persistent_keepalive
        );
        for a in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={a}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn parses_what_wg_set_sends() {
        let k = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
        let req = parse_request(
            "set=1",
            &lines(&format!(
                "private_key={k}\nlisten_port=51820\nreplace_peers=true\npublic_key={k}\npreshared_key=0000000000000000000000000000000000000000000000000000000000000000\nendpoint=[2001:db8::1]:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=198.51.100.0/24\nallowed_ip=2001:db8::/64\npublic_key={k}\nremove=true"
            )),
        )
        .unwrap();
        let Request::Set(d) = req else { panic!() };
        assert_eq!(d.listen_port, Some(51820));
        assert!(d.replace_peers);
        assert_eq!(d.peers.len(), 2);
        assert_eq!(d.peers[0].preshared_key, Some(None));
        assert_eq!(
            d.peers[0].endpoint,
            Some("[2001:db8::1]:51820".parse().unwrap())
        );
        assert_eq!(d.peers[0].allowed_ips.len(), 2);
        assert!(d.peers[1].remove);
        assert_eq!(d.private_key.unwrap().unwrap()[0], 0xe8);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_request("set=1", &lines("listen_port=x")).is_err());
        assert!(
            parse_request("set=1", &lines("remove=true")).is_err(),
            "peer key before public_key"
        );
        assert!(parse_request("set=1", &lines("public_key=abc")).is_err());
        assert!(parse_request("frob=1", &[]).is_err());
        assert_eq!(parse_request("get=1", &[]), Ok(Request::Get));
    }

    #[test]
    fn formats_like_wireguard_go() {
        let s = format_state(&DeviceState {
            private_key: Some(Zeroizing::new([1; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerState {
                public_key: [2; 32],
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                allowed_ips: vec!["198.51.100.2/32".parse().unwrap()],
                tx_bytes: 5,
                ..Default::default()
            }],
        });
        assert!(s.starts_with("private_key=0101"));
        assert!(s.contains("\npublic_key=0202"));
        assert!(s.contains("\nendpoint=192.0.2.2:51820\n"));
        assert!(s.contains("\nlast_handshake_time_sec=0\n"));
        assert!(s.contains("\ntx_bytes=5\n"));
        assert!(s.ends_with("allowed_ip=198.51.100.2/32\n"));
    }
}
