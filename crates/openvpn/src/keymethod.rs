//! Key method 2 (the first plaintext message each side sends inside TLS),
//! peer-info, cipher negotiation, and the text control messages
//! (`PUSH_REQUEST`, `PUSH_REPLY,...`), OpenVPN 2.6 `key_method_2_write/read`.
//!
//! `0u32 ‖ 2u8 ‖ key source (client: pre-master 48 + random 32 + random 32;
//! server: random 32 + random 32) ‖ options ‖ username ‖ password ‖
//! peer-info`, each string a u16 length (counting its NUL) then the bytes
//! and NUL; an empty string is a zero length. With tls-ekm the key source is
//! sent but not used.

use crate::data::Cipher;
use zeroize::Zeroizing;

pub const KEY_METHOD_2: u8 = 2;
/// OpenVPN's `TLS_OPTIONS_LEN`.
pub const MAX_OPTIONS_LEN: usize = 512;

pub const IV_PROTO_DATA_V2: u32 = 1 << 1;
pub const IV_PROTO_REQUEST_PUSH: u32 = 1 << 2;
pub const IV_PROTO_TLS_KEY_EXPORT: u32 = 1 << 3;
pub const IV_PROTO_CC_EXIT_NOTIFY: u32 = 1 << 7;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyMethodError {
    #[error("key method 2 message incomplete")]
    Incomplete,
    #[error("leading uint32 is not 0")]
    BadPrefix,
    #[error("key method {0} (only 2 is supported)")]
    BadMethod(u8),
    #[error("{0} string is not NUL-terminated UTF-8")]
    BadString(&'static str),
    #[error("options string of {0} bytes exceeds {MAX_OPTIONS_LEN}")]
    OptionsTooLong(usize),
}

/// `auth-user-pass`: what a client sends in its key method 2 messages
/// (every key, renegotiations too, as OpenVPN does without an auth-token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A key method 2 message.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMethod2 {
    pub options: String,
    pub username: String,
    pub password: Zeroizing<String>,
    pub peer_info: String,
}

impl std::fmt::Debug for KeyMethod2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMethod2")
            .field("options", &self.options)
            .field("username", &self.username)
            .field("peer_info", &self.peer_info)
            .finish_non_exhaustive()
    }
}

fn key_source_len(from_client: bool) -> usize {
    if from_client {
        48 + 32 + 32
    } else {
        32 + 32
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        out.extend_from_slice(&0u16.to_be_bytes());
    } else {
        out.extend_from_slice(&((s.len() + 1) as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
}

/// Reads one string; `None` when the buffer ends exactly here.
fn get_string<'a>(
    b: &'a [u8],
    off: &mut usize,
    what: &'static str,
) -> Result<Option<&'a str>, KeyMethodError> {
    if *off == b.len() {
        return Ok(None);
    }
    if b.len() - *off < 2 {
        return Err(KeyMethodError::Incomplete);
    }
    let n = u16::from_be_bytes([b[*off], b[*off + 1]]) as usize;
    *off += 2;
    if n == 0 {
        return Ok(Some(""));
    }
    if b.len() - *off < n {
        return Err(KeyMethodError::Incomplete);
    }
    let s = &b[*off..*off + n];
    *off += n;
    if s[n - 1] != 0 {
        return Err(KeyMethodError::BadString(what));
    }
    std::str::from_utf8(&s[..n - 1])
        .map(Some)
        .map_err(|_| KeyMethodError::BadString(what))
}

impl KeyMethod2 {
    pub fn encode<R: rand_core::RngCore + ?Sized>(
        &self,
        from_client: bool,
        rng: &mut R,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.push(KEY_METHOD_2);
        let mut src = Zeroizing::new(vec![0u8; key_source_len(from_client)]);
        rng.fill_bytes(&mut src);
        out.extend_from_slice(&src);
        put_string(&mut out, &self.options);
        put_string(&mut out, &self.username);
        put_string(&mut out, &self.password);
        put_string(&mut out, &self.peer_info);
        out
    }

    /// Parses a message at the start of `b`; returns it and its length.
    /// Username, password and peer-info may be absent at the very end.
    pub fn parse(b: &[u8], from_client: bool) -> Result<(Self, usize), KeyMethodError> {
        let ks = key_source_len(from_client);
        if b.len() < 5 + ks {
            return Err(KeyMethodError::Incomplete);
        }
        if b[..4] != [0; 4] {
            return Err(KeyMethodError::BadPrefix);
        }
        if b[4] & 0x0f != KEY_METHOD_2 {
            return Err(KeyMethodError::BadMethod(b[4]));
        }
        let mut off = 5 + ks;
        let options = get_string(b, &mut off, "options")?.ok_or(KeyMethodError::Incomplete)?;
        if options.len() >= MAX_OPTIONS_LEN {
            return Err(KeyMethodError::OptionsTooLong(options.len()));
        }
        let username = get_string(b, &mut off, "username")?.unwrap_or("");
        let password = get_string(b, &mut off, "password")?.unwrap_or("");
        let peer_info = get_string(b, &mut off, "peer-info")?.unwrap_or("");
        Ok((
            Self {
                options: options.to_string(),
                username: username.to_string(),
                password: Zeroizing::new(password.to_string()),
                peer_info: peer_info.to_string(),
            },
            off,
        ))
    }
}

/// The options string (OCC; OpenVPN 2.6 only warns on mismatch). With a
/// compression framing it carries `comp-lzo` (OpenVPN writes it for any
/// `comp-lzo`/`compress`), which a `compress migrate` server looks for to
/// push the framing it will use.
pub fn options_string(is_client: bool, udp: bool, compress: bool) -> String {
    format!(
        "V4,dev-type tun,link-mtu {},tun-mtu 1500,proto {}{},auth [null-digest],keysize 256,key-method 2,{}",
        1549 + usize::from(compress),
        if udp { "UDPv4" } else { "TCPv4_CLIENT" },
        if compress { ",comp-lzo" } else { "" },
        if is_client { "tls-client" } else { "tls-server" }
    )
}

/// A client's peer-info: what it supports.
pub fn client_peer_info(ciphers: &[Cipher]) -> String {
    let iv_proto = IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | IV_PROTO_TLS_KEY_EXPORT;
    let mut s = String::from("IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1500\n");
    if ciphers.contains(&Cipher::Aes128Gcm) && ciphers.contains(&Cipher::Aes256Gcm) {
        s.push_str("IV_NCP=2\n");
    }
    s.push_str(&format!(
        "IV_CIPHERS={}\nIV_PROTO={iv_proto}\n",
        Cipher::list_string(ciphers)
    ));
    // The compression framings a server may push (`compress migrate`
    // picks stub-v2 by the last one), as OpenVPN 2.6 announces them by
    // default: framing only, never compression.
    s.push_str("IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n");
    s
}

/// A `KEY=value` line of peer-info.
pub fn peer_info_get<'a>(peer_info: &'a str, key: &str) -> Option<&'a str> {
    peer_info
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The server's choice: its first `data-ciphers` entry the client lists in
/// IV_CIPHERS (or, from older clients, AES-256-GCM/AES-128-GCM by IV_NCP=2).
pub fn negotiate_cipher(server: &[Cipher], peer_info: &str) -> Option<Cipher> {
    let client: Vec<Cipher> = match peer_info_get(peer_info, "IV_CIPHERS") {
        Some(list) => list.split(':').filter_map(Cipher::from_name).collect(),
        None if peer_info_get(peer_info, "IV_NCP").is_some_and(|v| v >= "2") => {
            vec![Cipher::Aes256Gcm, Cipher::Aes128Gcm]
        }
        None => Vec::new(),
    };
    server.iter().copied().find(|c| client.contains(c))
}

/// Does the peer-info announce this IV_PROTO bit?
pub fn peer_has_proto(peer_info: &str, bit: u32) -> bool {
    peer_info_get(peer_info, "IV_PROTO")
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| v & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn roundtrip_and_truncation() {
        let m = KeyMethod2 {
            options: options_string(true, true, false),
            username: String::new(),
            password: Zeroizing::new(String::new()),
            peer_info: client_peer_info(&Cipher::ALL),
        };
        let b = m.encode(true, &mut OsRng);
        let (p, n) = KeyMethod2::parse(&b, true).unwrap();
        assert_eq!((p, n), (m.clone(), b.len()));
        for l in 0..b.len() {
            // A prefix is incomplete or (cut exactly after a string) shorter.
            if let Ok((_, n)) = KeyMethod2::parse(&b[..l], true) {
                assert!(n <= l);
            }
        }
        let mut bad = b.clone();
        bad[0] = 1;
        assert_eq!(
            KeyMethod2::parse(&bad, true).unwrap_err(),
            KeyMethodError::BadPrefix
        );
        bad[0] = 0;
        bad[4] = 1;
        assert_eq!(
            KeyMethod2::parse(&bad, true).unwrap_err(),
            KeyMethodError::BadMethod(1)
        );
    }

    #[test]
    fn negotiation() {
        let pi = client_peer_info(&[Cipher::ChaCha20Poly1305, Cipher::Aes128Gcm]);
        assert_eq!(negotiate_cipher(&Cipher::ALL, &pi), Some(Cipher::Aes128Gcm));
        assert_eq!(negotiate_cipher(&[Cipher::Aes256Gcm], &pi), None);
        assert!(peer_has_proto(&pi, IV_PROTO_TLS_KEY_EXPORT));
        assert_eq!(
            negotiate_cipher(&[Cipher::Aes256Gcm], "IV_NCP=2\n"),
            Some(Cipher::Aes256Gcm)
        );
    }
}
