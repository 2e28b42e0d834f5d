//! The `protocol = "ipsec"` tunnel settings, named as in strongSwan's
//! swanctl.conf (`local_addrs`, `remote_addrs`, `local_id`, `remote_id`,
//! `proposals`, `esp_proposals`, `local_ts`, `remote_ts`, `rekey_time`,
//! `dpd_delay`, …) and validated into what [`polytun_ike::Config`] needs.

use ipnet::IpNet;
use polytun_ike::{
    Certificate, DhGroup, DpdAction, EncrAlg, EspProposal, Identity, IkeProposal, IntegAlg, PrfAlg,
    PrivateKey, PubkeyAuth, SetupError,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// The IPsec fields of a `[[tunnel]]` as written (borrowed from the raw config).
pub struct RawIpsec<'a> {
    pub local_addrs: &'a [String],
    pub remote_addrs: &'a [String],
    pub remote: Option<&'a str>,
    pub local_id: Option<&'a str>,
    pub remote_id: Option<&'a str>,
    pub auth: Option<&'a str>,
    pub psk: Option<&'a str>,
    pub psk_file: Option<&'a Path>,
    /// `auth = "pubkey"`: our certificate (PEM, intermediates after it),
    /// our private key (PEM), the CA certificates we trust.
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub ca: &'a [PathBuf],
    /// Relative paths are taken from here (the config file's directory).
    pub base: &'a Path,
    pub proposals: Option<&'a [String]>,
    pub esp_proposals: Option<&'a [String]>,
    pub local_ts: Option<&'a [String]>,
    pub remote_ts: Option<&'a [String]>,
    pub initiate: Option<bool>,
    pub lifetimes: super::rekey::RawLifetimes<'a>,
    pub dpd_delay: Option<&'a str>,
    pub fragment_size: Option<usize>,
    pub dpd_timeout: Option<&'a str>,
    pub dpd_action: Option<&'a str>,
    pub listen_port: Option<u16>,
    pub interface_addresses: &'a [IpNet],
}

/// A validated IPsec tunnel.
#[derive(Clone, PartialEq, Eq)]
pub struct Ipsec {
    /// Our address (bind and NAT detection); `None`: any.
    pub local_addr: Option<IpAddr>,
    /// Where the peer may be; the first one is where we initiate to.
    pub remote_addrs: Vec<IpNet>,
    pub local_id: Identity,
    /// `None`: any identity that authenticates with the PSK.
    pub remote_id: Option<Identity>,
    /// Empty with `auth = "pubkey"`.
    pub psk: Zeroizing<Vec<u8>>,
    /// `auth = "pubkey"`: certificates and key (`None`: PSK).
    pub pubkey: Option<Pubkey>,
    pub proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    pub local_ts: Vec<IpNet>,
    pub remote_ts: Vec<IpNet>,
    pub initiate: bool,
    /// When CHILD and IKE SAs are rekeyed, expire, are reauthenticated.
    pub lifetimes: super::rekey::Lifetimes,
    pub dpd_delay: Option<Duration>,
    /// IKE fragmentation (RFC 7383) above this IP datagram size
    /// (strongSwan's `charon.fragment_size`).
    pub fragment_size: usize,
    /// An unanswered liveness check (or any request) declares the peer
    /// dead after this long; `None`: after the retransmissions (~165 s).
    pub dpd_timeout: Option<Duration>,
    pub dpd_action: DpdAction,
    /// More CHILD SAs (`[[tunnel.child]]`), created with CREATE_CHILD_SA
    /// after IKE_AUTH, which carries the first one (`local_ts`/`remote_ts`).
    pub children: Vec<Child>,
    /// The IKE port (500); NAT-T is always this + 4000 when 500, else 4500.
    pub ike_port: u16,
}

/// What `auth = "pubkey"` loaded: our certificate (then intermediates),
/// our private key (zeroized on drop), the trusted CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pubkey {
    pub certs: Vec<Certificate>,
    pub key: PrivateKey,
    pub cas: Vec<Certificate>,
}

impl Ipsec {
    /// `psk` or `pubkey`, for `polytun show`.
    pub fn auth_name(&self) -> String {
        match &self.pubkey {
            None => "psk".into(),
            Some(p) => format!("pubkey ({})", p.key.kind()),
        }
    }

    /// The IKE config's identities and authentication (the caller fills
    /// in proposals, selectors and timers).
    pub fn ike_auth_config(&self) -> polytun_ike::Config {
        match &self.pubkey {
            None => {
                polytun_ike::Config::psk(self.local_id.clone(), self.remote_id.clone(), &self.psk)
            }
            Some(p) => polytun_ike::Config::pubkey(
                Some(self.local_id.clone()),
                self.remote_id.clone(),
                PubkeyAuth {
                    key: p.key.clone(),
                    certs: p.certs.clone(),
                    cas: p.cas.clone(),
                    clock: Arc::new(std::time::SystemTime::now),
                    rsa_pss: false,
                },
            ),
        }
    }
}

impl std::fmt::Debug for Ipsec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipsec")
            .field("local_addr", &self.local_addr)
            .field("remote_addrs", &self.remote_addrs)
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("psk", &"<hidden>")
            .field("local_ts", &self.local_ts)
            .field("remote_ts", &self.remote_ts)
            .field("initiate", &self.initiate)
            .finish_non_exhaustive()
    }
}

impl Ipsec {
    /// The peer address to initiate to, if the first `remote_addrs` entry is one host.
    pub fn remote_host(&self) -> Option<IpAddr> {
        self.remote_addrs
            .first()
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .map(|n| n.addr())
    }
}

/// One more CHILD SA of a tunnel (a `[[tunnel.child]]` block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub name: String,
    pub local_ts: Vec<IpNet>,
    pub remote_ts: Vec<IpNet>,
}

/// A `[[tunnel.child]]` block as written.
pub struct RawChild<'a> {
    pub name: Option<&'a str>,
    pub local_ts: Option<&'a [String]>,
    pub remote_ts: Option<&'a [String]>,
}

type Err = (&'static str, String);

/// Validates a `[[tunnel.child]]` block of tunnel `t` (index `i` among the
/// blocks): its own selectors, same proposals and lifetimes as the tunnel.
pub fn validate_child(r: &RawChild<'_>, i: usize, t: &Ipsec) -> Result<Child, Err> {
    let local_ts = match r.local_ts {
        Some(v) if !v.is_empty() => nets("local_ts", v)?,
        Some(_) => return Err(("local_ts", "empty: give at least one subnet".into())),
        None => t.local_ts.clone(),
    };
    let remote_ts = nets("remote_ts", r.remote_ts.unwrap_or_default())?;
    if remote_ts.is_empty() {
        return Err((
            "remote_ts",
            "missing: the subnets behind the peer this CHILD SA carries (e.g. [\"10.3.0.0/16\"])"
                .into(),
        ));
    }
    let all_remote = t
        .remote_ts
        .iter()
        .chain(t.children.iter().flat_map(|c| c.remote_ts.iter()));
    for n in &remote_ts {
        if let Some(o) = all_remote.clone().find(|o| o.contains(n) || n.contains(*o)) {
            return Err((
                "remote_ts",
                format!("{n} overlaps {o} of another CHILD SA of this tunnel: the data path chooses the CHILD SA by destination, so each needs its own remote subnets"),
            ));
        }
    }
    Ok(Child {
        name: r
            .name
            .map_or_else(|| format!("child{}", i + 1), str::to_string),
        local_ts,
        remote_ts,
    })
}

/// A duration: `20s`, `5m`, `1h`, `2d`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| Duration::from_secs(n * mult))
        .map_err(|_| format!("`{s}` is not a duration (e.g. \"20s\", \"5m\", \"1h\" or seconds)"))
}

/// An identity in strongSwan notation: an IP address, `@fqdn` or `fqdn`,
/// `user@domain` (RFC 822), or a distinguished name (`C=CH, O=polytun, CN=moon`).
pub fn parse_identity(s: &str) -> Result<Identity, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty identity".into());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(match ip {
            IpAddr::V4(a) => Identity::Ipv4(a),
            IpAddr::V6(a) => Identity::Ipv6(a),
        });
    }
    if s.contains('=') {
        return polytun_ike::cert::dn_from_str(s)
            .map(Identity::DerDn)
            .map_err(|e| format!("`{s}`: {e}"));
    }
    if let Some(f) = s.strip_prefix('@') {
        return if f.is_empty() {
            Err("`@` needs a name after it".into())
        } else {
            Ok(Identity::Fqdn(f.into()))
        };
    }
    if s.contains('@') {
        return Ok(Identity::Rfc822(s.into()));
    }
    if s.contains([' ', ',']) {
        return Err(format!(
            "`{s}` is not an identity: an address, FQDN, email or a DN like \"C=CH, O=polytun, CN=moon\""
        ));
    }
    Ok(Identity::Fqdn(s.into()))
}

/// A PSK in swanctl notation: `0x<hex>`, `0s<base64>` or the text itself.
pub fn parse_psk(s: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    use base64::Engine;
    let v = if let Some(h) = s.strip_prefix("0x") {
        let h = h.trim();
        if h.len() % 2 != 0 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("0x… must be followed by an even number of hex digits".into());
        }
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap_or(0))
            .collect()
    } else if let Some(b) = s.strip_prefix("0s") {
        base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|_| "0s… must be followed by base64".to_string())?
    } else {
        s.as_bytes().to_vec()
    };
    if v.len() < 8 {
        return Err(format!(
            "a {}-byte PSK is too weak; use at least 8 bytes (e.g. 0s + `head -c 32 /dev/urandom | base64`)",
            v.len()
        ));
    }
    Ok(Zeroizing::new(v))
}

fn encr_token(t: &str) -> Option<EncrAlg> {
    Some(match t {
        "aes128gcm16" | "aes128gcm128" | "aes128gcm" => EncrAlg::AES128GCM16,
        "aes256gcm16" | "aes256gcm128" | "aes256gcm" => EncrAlg::AES256GCM16,
        "chacha20poly1305" => EncrAlg::ChaCha20Poly1305,
        "aes128" | "aes" => EncrAlg::AES128CBC,
        "aes192" => EncrAlg::AesCbc { key_bits: 192 },
        "aes256" => EncrAlg::AES256CBC,
        _ => return None,
    })
}

fn integ_token(t: &str) -> Option<IntegAlg> {
    Some(match t {
        "sha256" | "sha2_256" => IntegAlg::HmacSha256_128,
        "sha384" | "sha2_384" => IntegAlg::HmacSha384_192,
        "sha512" | "sha2_512" => IntegAlg::HmacSha512_256,
        _ => return None,
    })
}

fn prf_token(t: &str) -> Option<PrfAlg> {
    Some(match t {
        "prfsha256" => PrfAlg::HmacSha256,
        "prfsha384" => PrfAlg::HmacSha384,
        "prfsha512" => PrfAlg::HmacSha512,
        _ => return None,
    })
}

fn dh_token(t: &str) -> Option<DhGroup> {
    Some(match t {
        "x25519" | "curve25519" => DhGroup::Curve25519,
        "ecp256" => DhGroup::Ecp256,
        "ecp384" => DhGroup::Ecp384,
        "modp2048" => DhGroup::Modp2048,
        _ => return None,
    })
}

fn prf_of(i: IntegAlg) -> PrfAlg {
    match i {
        IntegAlg::HmacSha256_128 => PrfAlg::HmacSha256,
        IntegAlg::HmacSha384_192 => PrfAlg::HmacSha384,
        IntegAlg::HmacSha512_256 => PrfAlg::HmacSha512,
    }
}

fn is_aead(e: EncrAlg) -> bool {
    !matches!(e, EncrAlg::AesCbc { .. })
}

/// An IKE proposal in strongSwan notation, e.g. `aes256gcm16-prfsha256-x25519`
/// or `aes256-sha256-modp2048`.
pub fn parse_ike_proposal(s: &str) -> Result<IkeProposal, String> {
    let mut p = IkeProposal {
        encr: vec![],
        integ: vec![],
        prf: vec![],
        dh: vec![],
    };
    for t in s.trim().to_ascii_lowercase().split('-') {
        if let Some(e) = encr_token(t) {
            p.encr.push(e);
        } else if let Some(i) = integ_token(t) {
            p.integ.push(i);
        } else if let Some(f) = prf_token(t) {
            p.prf.push(f);
        } else if let Some(d) = dh_token(t) {
            p.dh.push(d);
        } else {
            return Err(format!(
                "`{t}` in `{s}` is not an algorithm polytun knows (encryption: aes128gcm16, aes256gcm16, chacha20poly1305, aes128, aes256; integrity: sha256, sha384, sha512; PRF: prfsha256, prfsha384, prfsha512; groups: x25519, ecp256, ecp384, modp2048)"
            ));
        }
    }
    if p.encr.is_empty() {
        return Err(format!("`{s}` has no encryption algorithm"));
    }
    if p.dh.is_empty() {
        return Err(format!(
            "`{s}` has no key exchange group (e.g. x25519, ecp256, modp2048)"
        ));
    }
    let aead = p.encr.iter().any(|e| is_aead(*e));
    let cbc = p.encr.iter().any(|e| !is_aead(*e));
    if aead && cbc {
        return Err(format!(
            "`{s}` mixes AEAD and CBC encryption; write two proposals"
        ));
    }
    if cbc && p.integ.is_empty() {
        return Err(format!(
            "`{s}`: AES-CBC needs an integrity algorithm (e.g. sha256)"
        ));
    }
    if aead && !p.integ.is_empty() {
        return Err(format!(
            "`{s}`: an AEAD takes no integrity algorithm (write a prf instead, e.g. prfsha256)"
        ));
    }
    if p.prf.is_empty() {
        // strongSwan derives the PRF from the integrity algorithm; for an
        // AEAD without one it takes SHA-256.
        p.prf = if p.integ.is_empty() {
            vec![PrfAlg::HmacSha256]
        } else {
            p.integ.iter().map(|i| prf_of(*i)).collect()
        };
    }
    Ok(p)
}

/// An ESP proposal in strongSwan notation: `aes256gcm16`, `chacha20poly1305`,
/// `aes256-sha256`, optionally `-esn`/`-noesn` and PFS groups.
pub fn parse_esp_proposal(s: &str) -> Result<EspProposal, String> {
    let mut p = EspProposal {
        encr: vec![],
        integ: vec![],
        esn: vec![],
        dh: vec![],
    };
    for t in s.trim().to_ascii_lowercase().split('-') {
        if let Some(e) = encr_token(t) {
            if e == (EncrAlg::AesCbc { key_bits: 192 }) {
                return Err(format!("`{t}`: ESP with AES-192 is not supported (aes128, aes256, aes128gcm16, aes256gcm16, chacha20poly1305)"));
            }
            p.encr.push(e);
        } else if let Some(i) = integ_token(t) {
            if i != IntegAlg::HmacSha256_128 {
                return Err(format!(
                    "`{t}`: ESP integrity is HMAC-SHA2-256-128 only (sha256)"
                ));
            }
            p.integ.push(i);
        } else if let Some(d) = dh_token(t) {
            p.dh.push(d);
        } else if t == "esn" {
            p.esn.push(true);
        } else if t == "noesn" {
            p.esn.push(false);
        } else {
            return Err(format!(
                "`{t}` in `{s}` is not an ESP algorithm polytun knows (aes128gcm16, aes256gcm16, chacha20poly1305, aes128-sha256, aes256-sha256, esn, noesn)"
            ));
        }
    }
    if p.encr.is_empty() {
        return Err(format!("`{s}` has no encryption algorithm"));
    }
    let aead = p.encr.iter().any(|e| is_aead(*e));
    let cbc = p.encr.iter().any(|e| !is_aead(*e));
    if aead && cbc {
        return Err(format!(
            "`{s}` mixes AEAD and CBC encryption; write two proposals"
        ));
    }
    if cbc && p.integ.is_empty() {
        return Err(format!(
            "`{s}`: AES-CBC needs an integrity algorithm (sha256)"
        ));
    }
    if aead && !p.integ.is_empty() {
        return Err(format!("`{s}`: an AEAD takes no integrity algorithm"));
    }
    if p.esn.is_empty() {
        p.esn.push(false);
    }
    Ok(p)
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.trim()
        .parse::<IpNet>()
        .or_else(|_| s.trim().parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("`{s}` is not an address or network (e.g. 10.1.0.0/16)"))
}

fn nets(field: &'static str, v: &[String]) -> Result<Vec<IpNet>, Err> {
    v.iter()
        .map(|s| parse_net(s).map_err(|m| (field, m)))
        .collect()
}

fn resolve(field: &'static str, s: &str) -> Result<IpNet, Err> {
    if let Ok(n) = parse_net(s) {
        return Ok(n);
    }
    use std::net::ToSocketAddrs;
    (s.trim(), 500u16)
        .to_socket_addrs()
        .map_err(|e| (field, format!("cannot resolve `{s}`: {e}")))?
        .next()
        .map(|a| IpNet::from(a.ip()))
        .ok_or_else(|| (field, format!("`{s}` resolves to no address")))
}

fn read_psk(r: &RawIpsec<'_>) -> Result<Zeroizing<Vec<u8>>, Err> {
    Ok(match (r.psk, r.psk_file) {
        (Some(_), Some(_)) => return Err(("psk", "set either psk or psk_file, not both".into())),
        (Some(s), None) => parse_psk(s).map_err(|m| ("psk", m))?,
        (None, Some(p)) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(p)
                    .map_err(|e| ("psk_file", format!("cannot read {}: {e}", p.display())))?,
            );
            parse_psk(text.trim_end_matches(['\n', '\r']))
                .map_err(|m| ("psk_file", format!("{}: {m}", p.display())))?
        }
        (None, None) => return Err((
            "psk",
            "missing: auth = \"psk\" needs psk (\"0s<base64>\", \"0x<hex>\" or text) or psk_file; or use auth = \"pubkey\" with cert, key and ca"
                .into(),
        )),
    })
}

fn abs(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn read_file(
    field: &'static str,
    base: &Path,
    p: &Path,
) -> Result<(PathBuf, Zeroizing<Vec<u8>>), Err> {
    let p = abs(base, p);
    let data =
        std::fs::read(&p).map_err(|e| (field, format!("cannot read {}: {e}", p.display())))?;
    Ok((p, Zeroizing::new(data)))
}

/// Loads `cert`, `key` and `ca` for `auth = "pubkey"`.
fn read_pubkey(r: &RawIpsec<'_>) -> Result<Pubkey, Err> {
    let Some(cert) = r.cert else {
        return Err((
            "cert",
            "missing: auth = \"pubkey\" needs cert = \"/path/to/cert.pem\" (our certificate, PEM or DER)".into(),
        ));
    };
    let Some(key) = r.key else {
        return Err((
            "key",
            "missing: auth = \"pubkey\" needs key = \"/path/to/key.pem\" (the certificate's private key)".into(),
        ));
    };
    if r.ca.is_empty() {
        return Err((
            "ca",
            "missing: auth = \"pubkey\" needs ca = [\"/path/to/ca.pem\"] (the CA certificates the peer's certificate must chain to)".into(),
        ));
    }
    let (cpath, data) = read_file("cert", r.base, cert)?;
    let certs = Certificate::all_from_pem_or_der(&data)
        .map_err(|e| ("cert", format!("{}: {e}", cpath.display())))?;
    let (kpath, data) = read_file("key", r.base, key)?;
    let key = PrivateKey::from_pem_or_der(&data)
        .map_err(|e| ("key", format!("{}: {e}", kpath.display())))?;
    let mut cas = Vec::new();
    for c in r.ca {
        let (p, data) = read_file("ca", r.base, c)?;
        let v = Certificate::all_from_pem_or_der(&data)
            .map_err(|e| ("ca", format!("{}: {e}", p.display())))?;
        if let Some(x) = v.iter().find(|x| !x.is_ca()) {
            return Err((
                "ca",
                format!(
                    "{}: `{}` is not a CA certificate (basicConstraints cA is not set)",
                    p.display(),
                    x.subject_string()
                ),
            ));
        }
        cas.extend(v);
    }
    let auth = PubkeyAuth::new(key, certs, cas, Arc::new(std::time::SystemTime::now)).map_err(
        |e| match e {
            SetupError::KeyMismatch { .. } => ("key", format!("{}: {e}", kpath.display())),
            SetupError::NoCa | SetupError::NotCa { .. } => ("ca", e.to_string()),
            SetupError::NoCertificate | SetupError::Cert(_) => {
                ("cert", format!("{}: {e}", cpath.display()))
            }
        },
    )?;
    Ok(Pubkey {
        certs: auth.certs,
        key: auth.key,
        cas: auth.cas,
    })
}

pub fn validate(r: &RawIpsec<'_>) -> Result<Ipsec, Err> {
    let local = nets("local_addrs", r.local_addrs)?;
    if local.len() > 1 || local.iter().any(|n| n.prefix_len() != n.max_prefix_len()) {
        return Err((
            "local_addrs",
            "give one local address (e.g. [\"192.0.2.1\"]) or leave it out for any".into(),
        ));
    }
    let local_addr = local.first().map(|n| n.addr());
    let mut remote_addrs = Vec::new();
    if let Some(rm) = r.remote {
        if !r.remote_addrs.is_empty() {
            return Err((
                "remote",
                "set either remote or remote_addrs, not both".into(),
            ));
        }
        remote_addrs.push(resolve("remote", rm)?);
    }
    for a in r.remote_addrs {
        remote_addrs.push(resolve("remote_addrs", a)?);
    }
    let initiate = r.initiate.unwrap_or(true);
    let ipsec_remote_host = remote_addrs
        .first()
        .is_some_and(|n| n.prefix_len() == n.max_prefix_len());
    if initiate && !ipsec_remote_host {
        return Err((
            if r.remote.is_some() { "remote" } else { "remote_addrs" },
            "missing: an initiating tunnel (initiate = true, the default) needs the peer's address (remote = \"192.0.2.2\"); set initiate = false to only respond".into(),
        ));
    }
    let (psk, pubkey) = match r.auth.unwrap_or("psk") {
        "psk" => {
            for (f, set) in [
                ("cert", r.cert.is_some()),
                ("key", r.key.is_some()),
                ("ca", !r.ca.is_empty()),
            ] {
                if set {
                    return Err((
                        f,
                        "certificates are for auth = \"pubkey\" (this tunnel has auth = \"psk\")"
                            .into(),
                    ));
                }
            }
            (read_psk(r)?, None)
        }
        "pubkey" => {
            if r.psk.is_some() || r.psk_file.is_some() {
                return Err((
                    if r.psk.is_some() { "psk" } else { "psk_file" },
                    "a PSK with auth = \"pubkey\": choose one (auth = \"psk\" uses it)".into(),
                ));
            }
            (Zeroizing::new(Vec::new()), Some(read_pubkey(r)?))
        }
        "cert" | "certificate" | "x509" => {
            return Err((
                "auth",
                format!(
                    "`{}`: certificates are auth = \"pubkey\" (as in swanctl.conf)",
                    r.auth.unwrap_or_default()
                ),
            ))
        }
        "eap" => {
            return Err((
                "auth",
                "`eap` is not supported yet by polytun's IPsec; use \"psk\" or \"pubkey\"".into(),
            ))
        }
        other => {
            return Err((
                "auth",
                format!("unknown `{other}` (expected \"psk\" or \"pubkey\")"),
            ))
        }
    };
    let local_id = match (r.local_id, &pubkey) {
        (Some(s), _) => parse_identity(s).map_err(|m| ("local_id", m))?,
        // strongSwan's default with a certificate: its subject
        (None, Some(p)) => p.certs[0].subject_identity(),
        (None, None) => match local_addr {
            Some(a) => parse_identity(&a.to_string()).map_err(|m| ("local_id", m))?,
            None => {
                return Err((
                    "local_id",
                    "missing: set local_id (an address, FQDN or email) or local_addrs".into(),
                ))
            }
        },
    };
    if let Some(p) = &pubkey {
        if !p.certs[0].has_identity(&local_id) {
            return Err((
                "local_id",
                format!(
                    "`{local_id}` is not in the certificate `{}` (neither its subject nor a subjectAltName); leave local_id out to use the subject",
                    p.certs[0].subject_string()
                ),
            ));
        }
    }
    let remote_id = match r.remote_id {
        Some("%any") | None => None,
        Some(s) => Some(parse_identity(s).map_err(|m| ("remote_id", m))?),
    };
    let proposals = match r.proposals {
        None => vec![IkeProposal::aes256gcm_sha256_x25519()],
        Some([]) => return Err(("proposals", "empty: give at least one proposal".into())),
        Some(v) => v
            .iter()
            .map(|s| parse_ike_proposal(s).map_err(|m| ("proposals", m)))
            .collect::<Result<_, _>>()?,
    };
    let esp_proposals = match r.esp_proposals {
        None => vec![EspProposal::aes256gcm()],
        Some([]) => return Err(("esp_proposals", "empty: give at least one proposal".into())),
        Some(v) => v
            .iter()
            .map(|s| parse_esp_proposal(s).map_err(|m| ("esp_proposals", m)))
            .collect::<Result<_, _>>()?,
    };
    let local_ts = match r.local_ts {
        Some(v) => nets("local_ts", v)?,
        None => r
            .interface_addresses
            .iter()
            .map(|a| IpNet::from(a.addr()))
            .collect(),
    };
    if local_ts.is_empty() {
        return Err((
            "local_ts",
            "missing: the subnets on this side (e.g. [\"10.1.0.0/16\"]), or addresses on the interface".into(),
        ));
    }
    let remote_ts = nets("remote_ts", r.remote_ts.unwrap_or_default())?;
    if remote_ts.is_empty() {
        return Err((
            "remote_ts",
            "missing: the subnets behind the peer (e.g. [\"10.2.0.0/16\"])".into(),
        ));
    }
    let lifetimes = super::rekey::Lifetimes::validate(&r.lifetimes)?;
    let dpd_delay = match r.dpd_delay {
        Some(s) => Some(parse_duration(s).map_err(|m| ("dpd_delay", m))?).filter(|d| !d.is_zero()),
        None => None,
    };
    let fragment_size = r
        .fragment_size
        .unwrap_or(polytun_ike::fragment::DEFAULT_FRAGMENT_SIZE);
    if !(polytun_ike::fragment::MIN_FRAGMENT_SIZE..=65535).contains(&fragment_size) {
        return Err((
            "fragment_size",
            format!(
                "{fragment_size} is out of range: the largest IP datagram of an IKE fragment, {}..65535 (default {})",
                polytun_ike::fragment::MIN_FRAGMENT_SIZE,
                polytun_ike::fragment::DEFAULT_FRAGMENT_SIZE
            ),
        ));
    }
    let dpd_timeout = match r.dpd_timeout {
        Some(s) => {
            Some(parse_duration(s).map_err(|m| ("dpd_timeout", m))?).filter(|d| !d.is_zero())
        }
        None => None,
    };
    // swanctl's default is clear; an initiating tunnel (start_action =
    // start in swanctl terms) is kept up, so it restarts by default
    let dpd_action = match r.dpd_action {
        None => {
            if initiate {
                DpdAction::Restart
            } else {
                DpdAction::Clear
            }
        }
        Some("clear") | Some("none") => DpdAction::Clear,
        Some("restart") => DpdAction::Restart,
        Some("trap") => return Err((
            "dpd_action",
            "`trap` (install a trap policy and renegotiate on traffic) is not supported; use \"restart\" to renegotiate at once or \"clear\"".into(),
        )),
        Some(o) => {
            return Err((
                "dpd_action",
                format!("unknown `{o}` (expected \"clear\" or \"restart\")"),
            ))
        }
    };
    if r.listen_port.is_some_and(|p| p != 500) {
        return Err((
            "listen_port",
            "IPsec uses UDP ports 500 and 4500 (the NAT-T port is fixed by RFC 3948); leave listen_port out".into(),
        ));
    }
    Ok(Ipsec {
        local_addr,
        remote_addrs,
        local_id,
        remote_id,
        psk,
        pubkey,
        proposals,
        esp_proposals,
        local_ts,
        remote_ts,
        initiate,
        lifetimes,
        dpd_delay,
        fragment_size,
        dpd_timeout,
        dpd_action,
        children: Vec::new(),
        ike_port: 500,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_in_strongswan_notation() {
        let p = parse_ike_proposal("aes256gcm16-prfsha256-x25519").unwrap();
        assert_eq!(p, IkeProposal::aes256gcm_sha256_x25519());
        let p = parse_ike_proposal("aes256-sha256-modp2048").unwrap();
        assert_eq!(p.prf, vec![PrfAlg::HmacSha256]);
        assert!(parse_ike_proposal("aes256gcm16-prfsha256").is_err());
        assert!(parse_ike_proposal("3des-md5-modp1024").is_err());
        let e = parse_esp_proposal("chacha20poly1305").unwrap();
        assert_eq!(e.encr, vec![EncrAlg::ChaCha20Poly1305]);
        assert_eq!(e.esn, vec![false]);
        assert!(parse_esp_proposal("aes256").is_err());
        assert!(parse_esp_proposal("aes256-sha256-esn").is_ok());
    }

    #[test]
    fn identities_psks_durations() {
        assert_eq!(
            parse_identity("@a.example").unwrap(),
            Identity::Fqdn("a.example".into())
        );
        assert_eq!(
            parse_identity("192.0.2.1").unwrap(),
            Identity::Ipv4([192, 0, 2, 1].into())
        );
        assert_eq!(
            parse_identity("me@example.org").unwrap(),
            Identity::Rfc822("me@example.org".into())
        );
        assert_eq!(
            &parse_psk("0x0102030405060708").unwrap()[..],
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            &parse_psk("0sAQIDBAUGBwg=").unwrap()[..],
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert!(parse_psk("short").is_err());
        // DNs in strongSwan notation (auth = "pubkey")
        let dn = parse_identity("C=CH, O=polytun, CN=moon").unwrap();
        assert!(matches!(dn, Identity::DerDn(_)));
        assert_eq!(dn.to_string(), "C=CH, O=polytun, CN=moon");
        assert!(parse_identity("C=CH, Q=x").is_err());
        assert!(parse_identity("not an id").is_err());
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
    }
}
