//! Control-channel protection: none, `tls-auth` and `tls-crypt`.
//!
//! tls-auth (OpenVPN `swap_hmac` layout):
//! `op ‖ sid ‖ HMAC ‖ packet-id ‖ time ‖ body`, the HMAC computed over
//! `packet-id ‖ time ‖ op ‖ sid ‖ body` with the HMAC half of the sending
//! slot of the static key (first digest-size bytes).
//!
//! tls-crypt (`tls_crypt_wrap`): `op ‖ sid ‖ packet-id ‖ time ‖ tag(32) ‖
//! AES-256-CTR(body)`, where tag = HMAC-SHA256(`op ‖ sid ‖ packet-id ‖ time ‖
//! body`) and the CTR IV is the first 16 bytes of the tag. The server sends
//! with slot 0 and the client with slot 1 (`tls_crypt_init_key`).
//!
//! Both carry a packet-id with a timestamp; [`ControlWrap::unwrap`] checks it
//! against a replay window (OpenVPN's long-form packet-id rules: time may not
//! go back; within one time, ids are windowed) and only after authentication
//! commits it. Tags are compared in constant time.

use crate::packet::{
    be32, need, op_byte, split_op_byte, KeyId, Opcode, ParseError, SessionId, CONTROL_HEADER_LEN,
    SESSION_ID_LEN,
};
use crate::static_key::{KeyDirection, StaticKey};
use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use polytun_core::replay::{ReplayError, ReplayWindow};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Replay window of the control channel wrapping (OpenVPN `replay-window` default).
pub const CONTROL_REPLAY_WINDOW: u64 = 64;
pub const TLS_CRYPT_TAG_LEN: usize = 32;
/// packet-id + time.
pub const PID_LONG_LEN: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    Sha1,
    Sha256,
    Sha512,
}

impl Digest {
    pub fn output_len(self) -> usize {
        match self {
            Digest::Sha1 => 20,
            Digest::Sha256 => 32,
            Digest::Sha512 => 64,
        }
    }

    /// From OpenVPN's `auth` option value.
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().replace('-', "").as_str() {
            "SHA1" => Some(Digest::Sha1),
            "SHA256" => Some(Digest::Sha256),
            "SHA512" => Some(Digest::Sha512),
            _ => None,
        }
    }

    fn mac(self, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        let k = &key[..self.output_len()];
        Zeroizing::new(match self {
            Digest::Sha1 => run::<Hmac<sha1::Sha1>>(k, parts),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(k, parts),
            Digest::Sha512 => run::<Hmac<sha2::Sha512>>(k, parts),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    #[error("malformed control packet: {0}")]
    Parse(#[from] ParseError),
    #[error("{0} is not a control packet")]
    NotControl(Opcode),
    #[error("{mode}: HMAC/tag verification failed (wrong key or direction?)")]
    BadAuth { mode: &'static str },
    #[error("{mode}: packet-id {id} at time {time}: {why}")]
    Replay {
        mode: &'static str,
        id: u32,
        time: u32,
        why: ReplayWhy,
    },
    #[error("control packet-id space exhausted")]
    PacketIdExhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayWhy {
    #[error("packet-id 0 is invalid")]
    Zero,
    #[error("time went backwards (newest {0})")]
    TimeBacktrack(u32),
    #[error(transparent)]
    Window(#[from] ReplayError),
}

/// OpenVPN's long-form packet-id replay state.
#[derive(Debug, Clone)]
struct WrapReplay {
    time: Option<u32>,
    window: ReplayWindow,
}

impl WrapReplay {
    fn new() -> Self {
        Self {
            time: None,
            window: ReplayWindow::new(CONTROL_REPLAY_WINDOW),
        }
    }

    fn check(&self, id: u32, time: u32) -> Result<(), ReplayWhy> {
        if id == 0 {
            return Err(ReplayWhy::Zero);
        }
        match self.time {
            None => Ok(()),
            Some(t) if time > t => Ok(()),
            Some(t) if time < t => Err(ReplayWhy::TimeBacktrack(t)),
            Some(_) => Ok(self.window.check(id.into())?),
        }
    }

    fn commit(&mut self, id: u32, time: u32) {
        if !matches!(self.time, Some(t) if time <= t) {
            self.time = Some(time);
            self.window = ReplayWindow::new(CONTROL_REPLAY_WINDOW);
        }
        let _ = self.window.update(id.into());
    }
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct CryptKeys {
    send_cipher: [u8; 32],
    send_hmac: [u8; 32],
    recv_cipher: [u8; 32],
    recv_hmac: [u8; 32],
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct AuthKeys {
    send: [u8; 64],
    recv: [u8; 64],
}

enum Mode {
    None,
    Auth(Digest, AuthKeys),
    Crypt(CryptKeys),
}

/// An unwrapped control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwrapped {
    pub opcode: Opcode,
    pub key_id: KeyId,
    pub session_id: SessionId,
    /// The wrapping's (packet-id, time), when the mode has one.
    pub wrap_id: Option<(u32, u32)>,
    /// The control body (see [`crate::packet::ControlBody`]).
    pub body: Vec<u8>,
}

/// One side's control-channel protection with its send counter and replay
/// window.
pub struct ControlWrap {
    mode: Mode,
    next_pid: u32,
    replay: WrapReplay,
}

impl std::fmt::Debug for ControlWrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlWrap")
            .field("mode", &self.mode_name())
            .field("next_pid", &self.next_pid)
            .finish()
    }
}

impl ControlWrap {
    pub fn none() -> Self {
        Self::with(Mode::None)
    }

    /// `tls-auth KEY DIR` with `auth DIGEST`.
    pub fn tls_auth(key: &StaticKey, direction: KeyDirection, digest: Digest) -> Self {
        let (s, r) = direction.slots();
        Self::with(Mode::Auth(
            digest,
            AuthKeys {
                send: *key.hmac(s),
                recv: *key.hmac(r),
            },
        ))
    }

    /// `tls-crypt KEY`; the direction follows the role.
    pub fn tls_crypt(key: &StaticKey, is_server: bool) -> Self {
        let (s, r) = if is_server {
            KeyDirection::Normal.slots()
        } else {
            KeyDirection::Inverse.slots()
        };
        let k32 = |b: &[u8; 64]| -> [u8; 32] { b[..32].try_into().expect("32 of 64") };
        Self::with(Mode::Crypt(CryptKeys {
            send_cipher: k32(key.cipher(s)),
            send_hmac: k32(key.hmac(s)),
            recv_cipher: k32(key.cipher(r)),
            recv_hmac: k32(key.hmac(r)),
        }))
    }

    fn with(mode: Mode) -> Self {
        Self {
            mode,
            next_pid: 1,
            replay: WrapReplay::new(),
        }
    }

    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::None => "none",
            Mode::Auth(..) => "tls-auth",
            Mode::Crypt(_) => "tls-crypt",
        }
    }

    /// Bytes the wrapping adds after the session id.
    pub fn overhead(&self) -> usize {
        match &self.mode {
            Mode::None => 0,
            Mode::Auth(d, _) => d.output_len() + PID_LONG_LEN,
            Mode::Crypt(_) => PID_LONG_LEN + TLS_CRYPT_TAG_LEN,
        }
    }

    /// Protects one control packet. `unix_time` is the wall clock in seconds.
    pub fn wrap(
        &mut self,
        opcode: Opcode,
        key_id: KeyId,
        session_id: SessionId,
        body: &[u8],
        unix_time: u32,
    ) -> Result<Vec<u8>, WrapError> {
        if !opcode.is_control() {
            return Err(WrapError::NotControl(opcode));
        }
        let op = [op_byte(opcode, key_id)];
        let mut out = Vec::with_capacity(CONTROL_HEADER_LEN + self.overhead() + body.len());
        out.extend_from_slice(&op);
        out.extend_from_slice(&session_id.0);
        if matches!(self.mode, Mode::None) {
            out.extend_from_slice(body);
            return Ok(out);
        }
        let pid = self.next_pid;
        self.next_pid = pid.checked_add(1).ok_or(WrapError::PacketIdExhausted)?;
        let mut pidt = [0u8; PID_LONG_LEN];
        pidt[..4].copy_from_slice(&pid.to_be_bytes());
        pidt[4..].copy_from_slice(&unix_time.to_be_bytes());
        match &self.mode {
            Mode::None => unreachable!("handled above"),
            Mode::Auth(d, k) => {
                let mac = d.mac(&k.send, &[&pidt, &op, &session_id.0, body]);
                out.extend_from_slice(&mac);
                out.extend_from_slice(&pidt);
                out.extend_from_slice(body);
            }
            Mode::Crypt(k) => {
                out.extend_from_slice(&pidt);
                let tag = Digest::Sha256.mac(&k.send_hmac, &[&out, body]);
                out.extend_from_slice(&tag);
                let start = out.len();
                out.extend_from_slice(body);
                let mut c = Aes256Ctr::new((&k.send_cipher).into(), tag[..16].into());
                c.apply_keystream(&mut out[start..]);
            }
        }
        Ok(out)
    }

    /// Verifies and unwraps one control packet, updating the replay window.
    pub fn unwrap(&mut self, packet: &[u8]) -> Result<Unwrapped, WrapError> {
        let u = self.unwrap_stateless(packet)?;
        if let Some((id, time)) = u.wrap_id {
            self.replay.commit(id, time);
        }
        Ok(u)
    }

    /// Verifies, unwraps and checks the replay window without changing it
    /// (a server's look at a first packet before it creates any state).
    pub fn unwrap_stateless(&self, packet: &[u8]) -> Result<Unwrapped, WrapError> {
        need("control header", packet, CONTROL_HEADER_LEN)?;
        let (opcode, key_id) = split_op_byte(packet[0])?;
        if !opcode.is_control() {
            return Err(WrapError::NotControl(opcode));
        }
        let mut sid = [0u8; SESSION_ID_LEN];
        sid.copy_from_slice(&packet[1..CONTROL_HEADER_LEN]);
        let session_id = SessionId(sid);
        let rest = &packet[CONTROL_HEADER_LEN..];
        let mode = self.mode_name();
        let replay = |id: u32, time: u32| {
            self.replay
                .check(id, time)
                .map_err(|why| WrapError::Replay {
                    mode,
                    id,
                    time,
                    why,
                })
        };
        let (wrap_id, body) = match &self.mode {
            Mode::None => (None, rest.to_vec()),
            Mode::Auth(d, k) => {
                let hl = d.output_len();
                need("tls-auth HMAC + packet-id", rest, hl + PID_LONG_LEN)?;
                let (mac, after) = rest.split_at(hl);
                let pidt = &after[..PID_LONG_LEN];
                let body = &after[PID_LONG_LEN..];
                let (id, time) = (be32(&pidt[..4]), be32(&pidt[4..]));
                replay(id, time)?;
                let want = d.mac(&k.recv, &[pidt, &packet[..1], &sid, body]);
                if !bool::from(want.ct_eq(mac)) {
                    return Err(WrapError::BadAuth { mode });
                }
                (Some((id, time)), body.to_vec())
            }
            Mode::Crypt(k) => {
                need(
                    "tls-crypt packet-id + tag",
                    rest,
                    PID_LONG_LEN + TLS_CRYPT_TAG_LEN,
                )?;
                let pidt = &rest[..PID_LONG_LEN];
                let tag = &rest[PID_LONG_LEN..PID_LONG_LEN + TLS_CRYPT_TAG_LEN];
                let (id, time) = (be32(&pidt[..4]), be32(&pidt[4..]));
                replay(id, time)?;
                let mut body = rest[PID_LONG_LEN + TLS_CRYPT_TAG_LEN..].to_vec();
                let mut c = Aes256Ctr::new((&k.recv_cipher).into(), tag[..16].into());
                c.apply_keystream(&mut body);
                let hdr_len = CONTROL_HEADER_LEN + PID_LONG_LEN;
                let want = Digest::Sha256.mac(&k.recv_hmac, &[&packet[..hdr_len], &body]);
                if !bool::from(want.ct_eq(tag)) {
                    body.zeroize();
                    return Err(WrapError::BadAuth { mode });
                }
                (Some((id, time)), body)
            }
        };
        Ok(Unwrapped {
            opcode,
            key_id,
            session_id,
            wrap_id,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StaticKey {
        let mut b = [0u8; 256];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i * 7 + 3) as u8;
        }
        StaticKey::from_bytes(b)
    }

    fn pairs() -> Vec<(ControlWrap, ControlWrap)> {
        let k = key();
        let mut v = vec![(ControlWrap::none(), ControlWrap::none())];
        for d in [Digest::Sha1, Digest::Sha256, Digest::Sha512] {
            v.push((
                ControlWrap::tls_auth(&k, KeyDirection::Normal, d),
                ControlWrap::tls_auth(&k, KeyDirection::Inverse, d),
            ));
            v.push((
                ControlWrap::tls_auth(&k, KeyDirection::Bidirectional, d),
                ControlWrap::tls_auth(&k, KeyDirection::Bidirectional, d),
            ));
        }
        v.push((
            ControlWrap::tls_crypt(&k, true),
            ControlWrap::tls_crypt(&k, false),
        ));
        v
    }

    #[test]
    fn roundtrip_tamper_replay() {
        for (mut a, mut b) in pairs() {
            let sid = SessionId([5; 8]);
            let body = b"\x00\x00\x00\x00\x00hello";
            let w = a.wrap(Opcode::ControlV1, 2, sid, body, 1000).unwrap();
            assert_eq!(w.len(), 9 + a.overhead() + body.len());
            let u = b.unwrap(&w).unwrap();
            assert_eq!(u.opcode, Opcode::ControlV1);
            assert_eq!(u.key_id, 2);
            assert_eq!(u.session_id, sid);
            assert_eq!(u.body, body);
            // Back the other way.
            let w2 = b.wrap(Opcode::AckV1, 0, sid, body, 1000).unwrap();
            assert_eq!(a.unwrap(&w2).unwrap().body, body);
            if a.mode_name() == "none" {
                continue;
            }
            assert!(matches!(b.unwrap(&w), Err(WrapError::Replay { .. })));
            for i in 0..w.len() {
                let mut t = w.clone();
                t[i] ^= 1;
                let mut fresh = match (a.mode_name(), &b.mode) {
                    (_, Mode::Auth(d, k)) => ControlWrap::with(Mode::Auth(
                        *d,
                        AuthKeys {
                            send: k.send,
                            recv: k.recv,
                        },
                    )),
                    (_, Mode::Crypt(_)) => ControlWrap::tls_crypt(&key(), false),
                    _ => unreachable!(),
                };
                assert!(fresh.unwrap(&t).is_err(), "{} byte {i}", a.mode_name());
            }
            // Time going back is refused; forward resets the window.
            let old = a.wrap(Opcode::ControlV1, 0, sid, body, 999).unwrap();
            assert!(matches!(
                b.unwrap(&old),
                Err(WrapError::Replay {
                    why: ReplayWhy::TimeBacktrack(1000),
                    ..
                })
            ));
            let newer = a.wrap(Opcode::ControlV1, 0, sid, body, 1001).unwrap();
            assert!(b.unwrap(&newer).is_ok());
        }
    }

    #[test]
    fn wrong_direction_fails() {
        let k = key();
        let mut a = ControlWrap::tls_crypt(&k, true);
        let b = ControlWrap::tls_crypt(&k, true);
        let w = a
            .wrap(Opcode::ControlV1, 0, SessionId::default(), b"x", 1)
            .unwrap();
        assert!(matches!(
            b.unwrap_stateless(&w),
            Err(WrapError::BadAuth { .. })
        ));
        let mut a = ControlWrap::tls_auth(&k, KeyDirection::Normal, Digest::Sha1);
        let b = ControlWrap::tls_auth(&k, KeyDirection::Normal, Digest::Sha1);
        let w = a
            .wrap(Opcode::ControlV1, 0, SessionId::default(), b"x", 1)
            .unwrap();
        assert!(b.unwrap_stateless(&w).is_err());
    }

    /// tls-crypt layout matches OpenVPN's: tag over the cleartext header and
    /// plaintext, CTR IV = tag[..16]; computed independently here.
    #[test]
    fn tls_crypt_layout() {
        let k = key();
        let mut server = ControlWrap::tls_crypt(&k, true);
        let sid = SessionId([1, 2, 3, 4, 5, 6, 7, 8]);
        let body = [0u8, 0, 0, 0, 0];
        let w = server
            .wrap(Opcode::HardResetServerV2, 0, sid, &body, 0x5f00_0000)
            .unwrap();
        assert_eq!(w.len(), 49 + 5);
        assert_eq!(&w[9..13], &1u32.to_be_bytes());
        assert_eq!(&w[13..17], &0x5f00_0000u32.to_be_bytes());
        // Server sends with slot 0.
        let tag = Digest::Sha256.mac(&k.hmac(0)[..32], &[&w[..17], &body]);
        assert_eq!(&w[17..49], &tag[..]);
        let mut ct = body;
        let mut c = Aes256Ctr::new(k.cipher(0)[..32].into(), tag[..16].into());
        c.apply_keystream(&mut ct);
        assert_eq!(&w[49..], &ct);
    }
}
