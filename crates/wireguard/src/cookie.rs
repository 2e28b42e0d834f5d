//! mac1, mac2 and cookie replies (whitepaper §5.4.4, §5.4.7).
//!
//! - mac1 = MAC(HASH("mac1----" ‖ receiver's public key), msg up to mac1):
//!   proves the sender knows our public key; checked before any DH.
//! - Under load the responder demands mac2 = MAC(cookie, msg up to mac2),
//!   where cookie = MAC(secret, source address) and `secret` is random and
//!   rotated every two minutes; without a valid mac2 it answers with a cookie
//!   reply: XChaCha20-Poly1305(HASH("cookie--" ‖ responder public), nonce,
//!   cookie, aad = the mac1 of the message being answered).
//! - The initiator keeps the decrypted cookie for 120 s and adds mac2 to its
//!   handshake messages while it is fresh.
//!
//! MAC comparisons are constant time.

use crate::keys::PublicKey;
use crate::messages::CookieReply;
use crate::noise::{hash, mac, LABEL_COOKIE, LABEL_MAC1};
use chacha20poly1305::aead::{Aead as _, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{CryptoRng, RngCore};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Lifetime of the responder's cookie secret and of a received cookie.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("no handshake message was sent that this cookie could answer")]
    Unexpected,
    #[error("cookie reply failed to decrypt")]
    Decrypt,
}

fn source_bytes(src: SocketAddr) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    let n = match src.ip() {
        std::net::IpAddr::V4(ip) => {
            b[..4].copy_from_slice(&ip.octets());
            4
        }
        std::net::IpAddr::V6(ip) => {
            b[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    b[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
    (b, n + 2)
}

/// Responder side: checks mac1/mac2 of messages sent to us, makes cookies.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    secret: [u8; 32],
    #[zeroize(skip)]
    secret_set: Option<Instant>,
}

impl CookieChecker {
    pub fn new(local: &PublicKey) -> Self {
        Self {
            mac1_key: hash(&[LABEL_MAC1, local.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, local.as_bytes()]),
            secret: [0; 32],
            secret_set: None,
        }
    }

    /// `msg` is the whole message; mac1 sits at `mac1_at`, mac2 right after.
    pub fn check_mac1(&self, msg: &[u8], mac1_at: usize) -> bool {
        let (Some(covered), Some(got)) = (msg.get(..mac1_at), msg.get(mac1_at..mac1_at + 16))
        else {
            return false;
        };
        mac(&self.mac1_key, &[covered]).ct_eq(got).into()
    }

    fn cookie(&self, src: SocketAddr) -> [u8; 16] {
        let (b, n) = source_bytes(src);
        mac(&self.secret, &[&b[..n]])
    }

    fn secret_fresh(&self, now: Instant) -> bool {
        self.secret_set
            .is_some_and(|t| now.saturating_duration_since(t) < COOKIE_REFRESH_TIME)
    }

    /// Is mac2 valid for a cookie we handed to `src` with the current secret?
    pub fn check_mac2(&self, now: Instant, msg: &[u8], mac1_at: usize, src: SocketAddr) -> bool {
        if !self.secret_fresh(now) {
            return false;
        }
        let mac2_at = mac1_at + 16;
        let (Some(covered), Some(got)) = (msg.get(..mac2_at), msg.get(mac2_at..mac2_at + 16))
        else {
            return false;
        };
        mac(&self.cookie(src), &[covered]).ct_eq(got).into()
    }

    /// The cookie reply to a message from `src` with sender index `receiver`
    /// and mac1 `msg_mac1`. Rotates the secret when it is two minutes old.
    pub fn create_reply(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng + ?Sized),
        receiver: u32,
        msg_mac1: &[u8; 16],
        src: SocketAddr,
    ) -> [u8; crate::messages::COOKIE_REPLY_LEN] {
        if !self.secret_fresh(now) {
            rng.fill_bytes(&mut self.secret);
            self.secret_set = Some(now);
        }
        let mut cookie = self.cookie(src);
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let aead = XChaCha20Poly1305::new(&self.cookie_key.into());
        let ct = aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &cookie,
                    aad: msg_mac1,
                },
            )
            .unwrap_or_default();
        cookie.zeroize();
        let mut enc = [0u8; 32];
        if ct.len() == 32 {
            enc.copy_from_slice(&ct);
        }
        crate::messages::write_cookie_reply(receiver, &nonce, &enc)
    }
}

/// Initiator side, per peer: adds mac1/mac2 to what we send to that peer and
/// keeps the cookie it sent us.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct CookieGenerator {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    cookie: [u8; 16],
    #[zeroize(skip)]
    cookie_set: Option<Instant>,
    last_mac1: Option<[u8; 16]>,
}

impl CookieGenerator {
    pub fn new(peer: &PublicKey) -> Self {
        Self {
            mac1_key: hash(&[LABEL_MAC1, peer.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, peer.as_bytes()]),
            cookie: [0; 16],
            cookie_set: None,
            last_mac1: None,
        }
    }

    /// Fills mac1 (and mac2 while we hold a fresh cookie) of `msg`.
    pub fn add_macs(&mut self, now: Instant, msg: &mut [u8], mac1_at: usize) {
        if msg.len() < mac1_at + 32 {
            return;
        }
        let m1 = mac(&self.mac1_key, &[&msg[..mac1_at]]);
        msg[mac1_at..mac1_at + 16].copy_from_slice(&m1);
        self.last_mac1 = Some(m1);
        let m2 = if self.has_fresh_cookie(now) {
            mac(&self.cookie, &[&msg[..mac1_at + 16]])
        } else {
            [0; 16]
        };
        msg[mac1_at + 16..mac1_at + 32].copy_from_slice(&m2);
    }

    pub fn has_fresh_cookie(&self, now: Instant) -> bool {
        self.cookie_set
            .is_some_and(|t| now.saturating_duration_since(t) < COOKIE_REFRESH_TIME)
    }

    /// Decrypts and stores the cookie of a reply to our last message.
    pub fn consume_reply(
        &mut self,
        now: Instant,
        reply: &CookieReply<'_>,
    ) -> Result<(), CookieError> {
        let aad = self.last_mac1.ok_or(CookieError::Unexpected)?;
        let aead = XChaCha20Poly1305::new(&self.cookie_key.into());
        let mut pt = aead
            .decrypt(
                XNonce::from_slice(reply.nonce),
                Payload {
                    msg: reply.encrypted_cookie,
                    aad: &aad,
                },
            )
            .map_err(|_| CookieError::Decrypt)?;
        if pt.len() != 16 {
            pt.zeroize();
            return Err(CookieError::Decrypt);
        }
        self.cookie.copy_from_slice(&pt);
        pt.zeroize();
        self.cookie_set = Some(now);
        // One reply per message sent.
        self.last_mac1 = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{classify, Message, INITIATION_LEN, INITIATION_MAC1};
    use rand_core::OsRng;

    #[test]
    fn mac1_cookie_mac2_roundtrip() {
        let responder = PublicKey::from([9u8; 32]);
        let now = Instant::now();
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut chk = CookieChecker::new(&responder);
        let mut gen = CookieGenerator::new(&responder);
        let mut msg = [0x55u8; INITIATION_LEN];
        gen.add_macs(now, &mut msg, INITIATION_MAC1);
        assert!(chk.check_mac1(&msg, INITIATION_MAC1));
        assert!(!chk.check_mac2(now, &msg, INITIATION_MAC1, src));
        let mut mac1 = [0u8; 16];
        mac1.copy_from_slice(&msg[INITIATION_MAC1..INITIATION_MAC1 + 16]);
        let reply = chk.create_reply(now, &mut OsRng, 7, &mac1, src);
        let Ok(Message::CookieReply(r)) = classify(&reply) else {
            panic!()
        };
        assert_eq!(r.receiver, 7);
        gen.consume_reply(now, &r).unwrap();
        // Replaying the same reply is refused (no message outstanding).
        assert_eq!(gen.consume_reply(now, &r), Err(CookieError::Unexpected));
        gen.add_macs(now, &mut msg, INITIATION_MAC1);
        assert!(chk.check_mac1(&msg, INITIATION_MAC1));
        assert!(chk.check_mac2(now, &msg, INITIATION_MAC1, src));
        // Another source, or a stale secret, fails mac2.
        let other: SocketAddr = "192.0.2.2:51820".parse().unwrap();
        assert!(!chk.check_mac2(now, &msg, INITIATION_MAC1, other));
        assert!(!chk.check_mac2(now + COOKIE_REFRESH_TIME, &msg, INITIATION_MAC1, src));
        // A flipped bit fails mac1.
        msg[5] ^= 1;
        assert!(!chk.check_mac1(&msg, INITIATION_MAC1));
    }
}
