//! `PUSH_REPLY` parsing (client) and building (server).
//!
//! `PUSH_REPLY,opt arg arg,opt,...`: comma-separated options, each a
//! keyword and space-separated arguments; a long reply is split over several
//! messages ending with `push-continuation 2` (more follows) and the last
//! with `push-continuation 1`. Options polytun does not know are kept in
//! [`PushReply::unknown`] so they can be named, never silently dropped.

use crate::compress::Framing;
use crate::data::Cipher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("not a PUSH_REPLY message")]
    NotPushReply,
    #[error("bad '{option}' option: {why}")]
    Bad { option: String, why: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub network: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
}

/// `auth-token TOKEN`: what a client sends instead of its password from the
/// next key on (a server's `auth-gen-token`; renewed by later replies). A
/// credential: kept out of `Debug` and wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(..)")
    }
}

/// `route-ipv6 NETWORK/BITS [GATEWAY]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6 {
    pub network: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv6Addr>,
}

/// `ifconfig-ipv6 LOCAL/BITS [REMOTE]`: the client's address in the
/// server's IPv6 network, and the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ifconfig6 {
    pub local: Ipv6Addr,
    pub prefix: u8,
    pub remote: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushReply {
    /// `ifconfig LOCAL NETMASK_OR_REMOTE` (netmask with topology subnet,
    /// the remote end with net30/p2p).
    pub ifconfig: Option<(Ipv4Addr, Ipv4Addr)>,
    pub ifconfig_ipv6: Option<Ifconfig6>,
    pub topology: Option<String>,
    pub route_gateway: Option<Ipv4Addr>,
    pub routes: Vec<Route>,
    pub routes_ipv6: Vec<Route6>,
    /// `dhcp-option TYPE VALUE` (DNS, DOMAIN, ...).
    pub dhcp_options: Vec<(String, String)>,
    pub peer_id: Option<u32>,
    pub cipher: Option<Cipher>,
    pub ping: Option<u32>,
    pub ping_restart: Option<u32>,
    pub tun_mtu: Option<u32>,
    pub auth_token: Option<AuthToken>,
    /// `comp-lzo ...` or `compress ...`: the framing the server uses (it
    /// overrides the client's own option, as in OpenVPN).
    pub compress: Option<Framing>,
    /// `protocol-flags` (e.g. `cc-exit tls-ekm dyn-tls-crypt`) and
    /// `key-derivation tls-ekm`.
    pub protocol_flags: Vec<String>,
    pub unknown: Vec<String>,
    /// Did the last message say more follows (`push-continuation 2`)?
    pub more: bool,
}

fn ip(option: &str, s: Option<&str>) -> Result<Ipv4Addr, PushError> {
    s.and_then(|s| s.parse().ok()).ok_or(PushError::Bad {
        option: option.to_string(),
        why: "expected an IPv4 address",
    })
}

fn ip6(option: &str, s: Option<&str>) -> Result<Ipv6Addr, PushError> {
    s.and_then(|s| s.parse().ok()).ok_or(PushError::Bad {
        option: option.to_string(),
        why: "expected an IPv6 address",
    })
}

/// `ADDRESS/BITS`; a bare address is a /128, as OpenVPN takes it.
fn ip6_prefix(option: &str, s: Option<&str>) -> Result<(Ipv6Addr, u8), PushError> {
    let bad = |why| PushError::Bad {
        option: option.to_string(),
        why,
    };
    let s = s.ok_or(bad("expected an IPv6 address/prefix length"))?;
    let (a, bits) = match s.split_once('/') {
        Some((a, b)) => (
            a,
            b.parse()
                .ok()
                .filter(|b| *b <= 128)
                .ok_or(bad("prefix length is not 0-128"))?,
        ),
        None => (s, 128),
    };
    Ok((ip6(option, Some(a))?, bits))
}

fn num(option: &str, s: Option<&str>) -> Result<u32, PushError> {
    s.and_then(|s| s.parse().ok()).ok_or(PushError::Bad {
        option: option.to_string(),
        why: "expected a number",
    })
}

impl PushReply {
    /// Is data channel key derivation through the TLS exporter on?
    pub fn tls_ekm(&self) -> bool {
        self.protocol_flags.iter().any(|f| f == "tls-ekm")
    }

    /// DNS servers from `dhcp-option DNS`.
    pub fn dns(&self) -> Vec<IpAddr> {
        self.dhcp_options
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("DNS") || k.eq_ignore_ascii_case("DNS6"))
            .filter_map(|(_, v)| v.parse().ok())
            .collect()
    }

    /// Merges one `PUSH_REPLY,...` message (without its trailing NUL).
    pub fn merge(&mut self, msg: &str) -> Result<(), PushError> {
        let body = msg
            .strip_prefix("PUSH_REPLY")
            .ok_or(PushError::NotPushReply)?;
        self.more = false;
        for opt in body.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut w = opt.split_ascii_whitespace();
            let kw = w.next().unwrap_or("");
            match kw {
                "ifconfig" => {
                    let a = ip(opt, w.next())?;
                    self.ifconfig = Some((a, ip(opt, w.next())?));
                }
                "ifconfig-ipv6" => {
                    let (local, prefix) = ip6_prefix(opt, w.next())?;
                    let remote = w.next().map(|r| ip6(opt, Some(r))).transpose()?;
                    self.ifconfig_ipv6 = Some(Ifconfig6 {
                        local,
                        prefix,
                        remote,
                    });
                }
                "route-ipv6" => {
                    let (network, prefix) = ip6_prefix(opt, w.next())?;
                    let gateway = w.next().map(|g| ip6(opt, Some(g))).transpose()?;
                    self.routes_ipv6.push(Route6 {
                        network,
                        prefix,
                        gateway,
                    });
                }
                // Obsolete since OpenVPN 2.4 (every TUN carries IPv6), still pushed.
                "tun-ipv6" => {}
                "auth-token" => {
                    let t = w.next().ok_or(PushError::Bad {
                        option: kw.to_string(), // (never the token: it is a credential)
                        why: "expected a token",
                    })?;
                    self.auth_token = Some(AuthToken(zeroize::Zeroizing::new(t.to_string())));
                }
                "comp-lzo" | "compress" => {
                    self.compress =
                        Some(
                            Framing::from_option(kw, w.next()).map_err(|_| PushError::Bad {
                                option: opt.to_string(),
                                why: "unknown compression option",
                            })?,
                        );
                }
                "topology" => self.topology = w.next().map(str::to_string),
                "route-gateway" => self.route_gateway = Some(ip(opt, w.next())?),
                "route" => {
                    let network = ip(opt, w.next())?;
                    let netmask = match w.next() {
                        Some(m) => ip(opt, Some(m))?,
                        None => Ipv4Addr::BROADCAST,
                    };
                    let gateway = match w.next() {
                        Some("vpn_gateway") | None => None,
                        Some(g) => Some(ip(opt, Some(g))?),
                    };
                    self.routes.push(Route {
                        network,
                        netmask,
                        gateway,
                    });
                }
                "dhcp-option" => {
                    let k = w.next().unwrap_or("").to_string();
                    self.dhcp_options.push((k, w.collect::<Vec<_>>().join(" ")));
                }
                "peer-id" => self.peer_id = Some(num(opt, w.next())? & 0x00FF_FFFF),
                "cipher" => {
                    let c = w.next().unwrap_or("");
                    self.cipher = Some(Cipher::from_name(c).ok_or(PushError::Bad {
                        option: opt.to_string(),
                        why: "unsupported data cipher",
                    })?);
                }
                "ping" => self.ping = Some(num(opt, w.next())?),
                "ping-restart" => self.ping_restart = Some(num(opt, w.next())?),
                "tun-mtu" => self.tun_mtu = Some(num(opt, w.next())?),
                "protocol-flags" => self.protocol_flags.extend(w.map(str::to_string)),
                "key-derivation" => {
                    if w.next() == Some("tls-ekm") {
                        self.protocol_flags.push("tls-ekm".into());
                    }
                }
                "push-continuation" => self.more = w.next() == Some("2"),
                _ => self.unknown.push(opt.to_string()),
            }
        }
        Ok(())
    }

    pub fn parse(msg: &str) -> Result<Self, PushError> {
        let mut r = Self::default();
        r.merge(msg)?;
        Ok(r)
    }
}

/// Builds the server's reply: configured options, then the negotiated
/// `peer-id`, `cipher` and `protocol-flags tls-ekm`.
pub fn build_push_reply(options: &[String], peer_id: u32, cipher: Cipher) -> String {
    let mut s = String::from("PUSH_REPLY");
    for o in options {
        s.push(',');
        s.push_str(o);
    }
    s.push_str(&format!(
        ",peer-id {peer_id},cipher {},protocol-flags tls-ekm",
        cipher.name()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openvpn_style_reply() {
        let m = "PUSH_REPLY,route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 120,\
                 route 192.168.50.0 255.255.255.0,dhcp-option DNS 10.8.0.1,\
                 ifconfig 10.8.0.2 255.255.255.0,peer-id 3,cipher AES-256-GCM,\
                 protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500,explicit-exit-notify";
        let r = PushReply::parse(m).unwrap();
        assert_eq!(
            r.ifconfig,
            Some((
                "10.8.0.2".parse().unwrap(),
                "255.255.255.0".parse().unwrap()
            ))
        );
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.peer_id, Some(3));
        assert_eq!(r.cipher, Some(Cipher::Aes256Gcm));
        assert_eq!((r.ping, r.ping_restart), (Some(10), Some(120)));
        assert!(r.tls_ekm());
        assert_eq!(r.dns(), vec!["10.8.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.unknown, vec!["explicit-exit-notify".to_string()]);
        assert!(PushReply::parse("PUSH_REPLY,ifconfig 10.8.0.2").is_err());
        assert!(PushReply::parse("AUTH_FAILED").is_err());
    }

    #[test]
    fn ipv6_options() {
        // as OpenVPN 2.6 pushes them with `server-ipv6` and `push "route-ipv6 ..."`
        let m = "PUSH_REPLY,route-ipv6 2001:db8:77::/64,tun-ipv6,route-gateway 198.51.100.1,\
                 topology subnet,ifconfig-ipv6 2001:db8:1::1000/64 2001:db8:1::1,\
                 route-ipv6 2001:db8:78::1 2001:db8:1::2,ifconfig 198.51.100.2 255.255.255.0";
        let r = PushReply::parse(m).unwrap();
        assert_eq!(
            r.ifconfig_ipv6,
            Some(Ifconfig6 {
                local: "2001:db8:1::1000".parse().unwrap(),
                prefix: 64,
                remote: Some("2001:db8:1::1".parse().unwrap()),
            })
        );
        assert_eq!(
            r.routes_ipv6,
            vec![
                Route6 {
                    network: "2001:db8:77::".parse().unwrap(),
                    prefix: 64,
                    gateway: None,
                },
                Route6 {
                    network: "2001:db8:78::1".parse().unwrap(),
                    prefix: 128,
                    gateway: Some("2001:db8:1::2".parse().unwrap()),
                },
            ]
        );
        assert!(r.unknown.is_empty(), "{:?}", r.unknown);
        for bad in [
            "PUSH_REPLY,ifconfig-ipv6 2001:db8::1/129",
            "PUSH_REPLY,ifconfig-ipv6 198.51.100.2/64",
            "PUSH_REPLY,ifconfig-ipv6",
            "PUSH_REPLY,route-ipv6 2001:db8::/64 nowhere",
            "PUSH_REPLY,route-ipv6 2001:db8::/x",
        ] {
            assert!(PushReply::parse(bad).is_err(), "{bad}");
        }
    }

    /// `auth-gen-token` servers push `auth-token`: taken, and never shown.
    #[test]
    fn auth_token() {
        let r = PushReply::parse(
            "PUSH_REPLY,peer-id 0,auth-token SESS_ID_AT_c2VjcmV0,cipher AES-256-GCM",
        )
        .unwrap();
        assert_eq!(
            r.auth_token.as_ref().unwrap().0.as_str(),
            "SESS_ID_AT_c2VjcmV0"
        );
        assert!(r.unknown.is_empty(), "{:?}", r.unknown);
        assert!(!format!("{r:?}").contains("c2VjcmV0"), "token in Debug");
        let e = PushReply::parse("PUSH_REPLY,auth-token").unwrap_err();
        assert!(e.to_string().contains("auth-token"), "{e}");
    }

    #[test]
    fn continuation() {
        let mut r = PushReply::default();
        r.merge("PUSH_REPLY,route 10.0.0.0 255.0.0.0,push-continuation 2")
            .unwrap();
        assert!(r.more);
        r.merge("PUSH_REPLY,peer-id 1,push-continuation 1").unwrap();
        assert!(!r.more);
        assert_eq!((r.routes.len(), r.peer_id), (1, Some(1)));
    }

    /// `compress migrate` servers push `comp-lzo no` or `compress stub-v2`.
    #[test]
    fn compression_framing() {
        for (m, f) in [
            ("PUSH_REPLY,comp-lzo no,peer-id 0", Framing::LzoStub),
            ("PUSH_REPLY,comp-lzo,peer-id 0", Framing::Lzo),
            ("PUSH_REPLY,compress stub-v2", Framing::StubV2),
            ("PUSH_REPLY,compress", Framing::Stub),
            ("PUSH_REPLY,compress lz4", Framing::Lz4),
        ] {
            let r = PushReply::parse(m).unwrap();
            assert_eq!(r.compress, Some(f), "{m}");
            assert!(r.unknown.is_empty(), "{:?}", r.unknown);
        }
        assert_eq!(
            PushReply::parse("PUSH_REPLY,ping 1").unwrap().compress,
            None
        );
        assert!(PushReply::parse("PUSH_REPLY,compress zstd").is_err());
        assert!(PushReply::parse("PUSH_REPLY,comp-lzo maybe").is_err());
    }
}
