//! OpenVPN's static key file (`openvpn --genkey secret`): 2048 bits in hex
//! between `-----BEGIN OpenVPN Static key V1-----` and
//! `-----END OpenVPN Static key V1-----`, read as two key slots of
//! `cipher (64 bytes) ‖ hmac (64 bytes)` each (OpenVPN's `struct key2`).
//! Which slot sends and which receives is the key direction.

use zeroize::{Zeroize, ZeroizeOnDrop};

pub const STATIC_KEY_LEN: usize = 256;
pub const SLOT_CIPHER_LEN: usize = 64;
pub const SLOT_HMAC_LEN: usize = 64;
const BEGIN: &str = "-----BEGIN OpenVPN Static key V1-----";
const END: &str = "-----END OpenVPN Static key V1-----";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("no '{BEGIN}' line")]
    NoBegin,
    #[error("no '{END}' line")]
    NoEnd,
    #[error("non-hex character {0:?} in the key")]
    BadChar(char),
    #[error("key has {0} hex digits, expected {want}", want = STATIC_KEY_LEN * 2)]
    BadLength(usize),
}

/// OpenVPN's key direction (`key-direction`, the tls-auth direction
/// argument; fixed by role for tls-crypt and the data channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDirection {
    /// Direction 0: send with slot 0, receive with slot 1.
    Normal,
    /// Direction 1: send with slot 1, receive with slot 0.
    Inverse,
    /// No direction: slot 0 both ways.
    Bidirectional,
}

impl KeyDirection {
    /// (send slot, receive slot)
    pub fn slots(self) -> (usize, usize) {
        match self {
            KeyDirection::Normal => (0, 1),
            KeyDirection::Inverse => (1, 0),
            KeyDirection::Bidirectional => (0, 0),
        }
    }

    /// From the config value (`0`, `1`, or absent).
    pub fn from_config(v: Option<u8>) -> Option<Self> {
        match v {
            None => Some(Self::Bidirectional),
            Some(0) => Some(Self::Normal),
            Some(1) => Some(Self::Inverse),
            _ => None,
        }
    }
}

/// 2048 bits of static key material, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct StaticKey([u8; STATIC_KEY_LEN]);

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticKey(..)")
    }
}

impl StaticKey {
    pub fn from_bytes(b: [u8; STATIC_KEY_LEN]) -> Self {
        Self(b)
    }

    pub fn generate(rng: &mut impl rand_core::RngCore) -> Self {
        let mut b = [0u8; STATIC_KEY_LEN];
        rng.fill_bytes(&mut b);
        Self(b)
    }

    pub fn as_bytes(&self) -> &[u8; STATIC_KEY_LEN] {
        &self.0
    }

    /// Parses the file (or an inline `<tls-crypt>` / `<tls-auth>` block).
    /// Comment lines before the BEGIN line are allowed.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let start = text.find(BEGIN).ok_or(KeyFileError::NoBegin)? + BEGIN.len();
        let end = text[start..].find(END).ok_or(KeyFileError::NoEnd)? + start;
        let mut out = [0u8; STATIC_KEY_LEN];
        let mut n = 0usize;
        let mut hi = 0u8;
        for c in text[start..end].chars() {
            if c.is_ascii_whitespace() {
                continue;
            }
            let v = c.to_digit(16).ok_or(KeyFileError::BadChar(c))? as u8;
            if n / 2 < STATIC_KEY_LEN {
                if n & 1 == 0 {
                    hi = v;
                } else {
                    out[n / 2] = (hi << 4) | v;
                }
            }
            n += 1;
        }
        hi.zeroize();
        if n != STATIC_KEY_LEN * 2 {
            out.zeroize();
            return Err(KeyFileError::BadLength(n));
        }
        Ok(Self(out))
    }

    /// The file as `openvpn --genkey secret` writes it.
    pub fn to_file(&self) -> String {
        let mut s = String::from("#\n# 2048 bit OpenVPN static key\n#\n");
        s.push_str(BEGIN);
        s.push('\n');
        for line in self.0.chunks(16) {
            for b in line {
                s.push_str(&format!("{b:02x}"));
            }
            s.push('\n');
        }
        s.push_str(END);
        s.push('\n');
        s
    }

    /// Cipher half of a slot (0 or 1).
    pub fn cipher(&self, slot: usize) -> &[u8; SLOT_CIPHER_LEN] {
        let o = slot.min(1) * 128;
        self.0[o..o + 64].try_into().expect("64-byte slice")
    }

    /// HMAC half of a slot (0 or 1).
    pub fn hmac(&self, slot: usize) -> &[u8; SLOT_HMAC_LEN] {
        let o = slot.min(1) * 128 + 64;
        self.0[o..o + 64].try_into().expect("64-byte slice")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_slots() {
        let mut b = [0u8; 256];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        let k = StaticKey::from_bytes(b);
        let f = k.to_file();
        assert_eq!(f.lines().count(), 3 + 1 + 16 + 1);
        let k2 = StaticKey::parse(&f).unwrap();
        assert_eq!(k, k2);
        assert_eq!(k.cipher(0)[0], 0);
        assert_eq!(k.hmac(0)[0], 64);
        assert_eq!(k.cipher(1)[0], 128);
        assert_eq!(k.hmac(1)[0], 192);
    }

    #[test]
    fn errors() {
        assert_eq!(StaticKey::parse("x"), Err(KeyFileError::NoBegin));
        assert_eq!(StaticKey::parse(BEGIN), Err(KeyFileError::NoEnd));
        let short = format!("{BEGIN}\nabcd\n{END}\n");
        assert_eq!(StaticKey::parse(&short), Err(KeyFileError::BadLength(4)));
        let bad = format!("{BEGIN}\nzz\n{END}\n");
        assert_eq!(StaticKey::parse(&bad), Err(KeyFileError::BadChar('z')));
    }
}
