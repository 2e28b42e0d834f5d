//! One control-channel session (client or server side of one peer), sans
//! I/O: packets and `now` in ([`Session::handle_packet`],
//! [`Session::handle_timeout`]); packets to send, data keys to install and
//! events out ([`Session::poll_output`]); the next deadline from
//! [`Session::poll_timeout`].
//!
//! Flow: hard reset (client V2 / server V2) → TLS over P_CONTROL_V1 →
//! key method 2 both ways → client `PUSH_REQUEST` → server `PUSH_REPLY`
//! (cipher, peer-id, `protocol-flags tls-ekm`) → both derive DATA_V2 keys
//! from the TLS exporter and emit [`Output::InstallKey`].
//!
//! Only key-id 0 is handled here; soft-reset renegotiation is not built yet.

use crate::data::{Cipher, DataChannelKey, DataKeys};
use crate::keymethod::{self, KeyMethod2};
use crate::packet::{ControlBody, KeyId, Opcode, SessionId, CONTROL_HEADER_LEN, MAX_ACKS};
use crate::push::{build_push_reply, PushReply};
use crate::reliable::{Reliable, ReliableConfig};
use crate::tls::{Tls, TlsError};
use crate::wrap::{ControlWrap, WrapError};
use polytun_core::Limits;
use rand_core::{CryptoRng, RngCore};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// OpenVPN's default `tls-mtu`: largest control packet.
pub const DEFAULT_CONTROL_MTU: usize = 1250;
/// OpenVPN's default `hand-window`.
pub const HAND_WINDOW: Duration = Duration::from_secs(60);

pub enum Role {
    Client(Arc<rustls::ClientConfig>),
    Server {
        config: Arc<rustls::ServerConfig>,
        /// Options pushed to this client (`push "..."` lines).
        push: Vec<String>,
        /// The peer-id assigned to this client.
        peer_id: u32,
    },
}

pub struct SessionConfig {
    pub role: Role,
    pub wrap: ControlWrap,
    /// `data-ciphers`, in preference order.
    pub ciphers: Vec<Cipher>,
    pub udp: bool,
    pub control_mtu: usize,
    pub reliable: ReliableConfig,
    pub data_limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TlsEstablished {
        version: String,
    },
    /// Client: the push reply arrived and the data keys are installed.
    /// Server: the reply was sent and the data keys are installed.
    Connected {
        push: Box<PushReply>,
    },
    Failed(String),
}

pub enum Output {
    Transmit(Vec<u8>),
    /// The data path may seal and open with this key now.
    InstallKey(Arc<DataChannelKey>),
    Event(Event),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Transmit(b) => write!(f, "Transmit({} bytes)", b.len()),
            Output::InstallKey(k) => write!(f, "InstallKey(key-id {})", k.key_id),
            Output::Event(e) => write!(f, "Event({e:?})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Wrap(#[from] WrapError),
    #[error("malformed control body: {0}")]
    Parse(#[from] crate::packet::ParseError),
    #[error("packet for another session ({0})")]
    WrongSession(SessionId),
    #[error("{0} unexpected here")]
    Unexpected(Opcode),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("session failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Reset,
    Tls,
    KeyExchange,
    Push,
    Active,
    Failed,
}

pub struct Session {
    cfg: SessionConfig,
    rng: Box<dyn RngCoreSend>,
    local_sid: SessionId,
    remote_sid: Option<SessionId>,
    key_id: KeyId,
    reliable: Reliable,
    tls: Option<Tls>,
    phase: Phase,
    plaintext: Vec<u8>,
    km2_sent: bool,
    peer_km2: Option<KeyMethod2>,
    push: PushReply,
    outputs: VecDeque<Output>,
    epoch: Instant,
    epoch_unix: u64,
    deadline: Instant,
}

pub trait RngCoreSend: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> RngCoreSend for T {}

impl Session {
    pub fn new(
        cfg: SessionConfig,
        now: Instant,
        wall: SystemTime,
        mut rng: impl RngCore + CryptoRng + Send + 'static,
    ) -> Self {
        let local_sid = SessionId::random(&mut rng);
        let mut s = Self {
            reliable: Reliable::new(cfg.reliable),
            cfg,
            rng: Box::new(rng),
            local_sid,
            remote_sid: None,
            key_id: 0,
            tls: None,
            phase: Phase::Reset,
            plaintext: Vec::new(),
            km2_sent: false,
            peer_km2: None,
            push: PushReply::default(),
            outputs: VecDeque::new(),
            epoch: now,
            epoch_unix: wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            deadline: now + HAND_WINDOW,
        };
        if s.is_client() {
            s.reliable.send(Opcode::HardResetClientV2, Vec::new());
            s.flush(now);
        }
        s
    }

    fn is_client(&self) -> bool {
        matches!(self.cfg.role, Role::Client(_))
    }

    pub fn local_session_id(&self) -> SessionId {
        self.local_sid
    }

    pub fn remote_session_id(&self) -> Option<SessionId> {
        self.remote_sid
    }

    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    /// The TLS connection (for `keying-material-exporter`, SSKE).
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// Sets `hand-window`: the handshake must complete within `window`
    /// from `now` (default [`HAND_WINDOW`] from the session's start).
    pub fn set_hand_window(&mut self, now: Instant, window: Duration) {
        if self.phase != Phase::Active && self.phase != Phase::Failed {
            self.deadline = now + window;
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Failed {
            return None;
        }
        let hand = (self.phase != Phase::Active).then_some(self.deadline);
        [self.reliable.poll_timeout(), hand]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase != Phase::Active && self.phase != Phase::Failed && now >= self.deadline {
            self.fail("TLS key negotiation failed to occur within hand-window".into());
            return;
        }
        self.flush(now);
    }

    fn fail(&mut self, why: String) {
        self.phase = Phase::Failed;
        self.outputs.push_back(Output::Event(Event::Failed(why)));
    }

    fn unix_time(&self, now: Instant) -> u32 {
        (self.epoch_unix + now.saturating_duration_since(self.epoch).as_secs()) as u32
    }

    /// A control packet from the peer (the data path routes by opcode).
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), SessionError> {
        if self.phase == Phase::Failed {
            return Ok(());
        }
        let u = self.cfg.wrap.unwrap(packet)?;
        let body = ControlBody::parse(u.opcode, &u.body)?;
        match self.remote_sid {
            Some(r) if r != u.session_id => return Err(SessionError::WrongSession(u.session_id)),
            Some(_) => {}
            None => {
                let ok = if self.is_client() {
                    u.opcode == Opcode::HardResetServerV2
                } else {
                    u.opcode == Opcode::HardResetClientV2
                };
                if !ok {
                    return Err(SessionError::Unexpected(u.opcode));
                }
                self.remote_sid = Some(u.session_id);
            }
        }
        if let Some(rs) = body.remote_session {
            if rs != self.local_sid {
                return Err(SessionError::WrongSession(rs));
            }
        }
        if u.key_id != self.key_id {
            return Err(SessionError::Unexpected(u.opcode));
        }
        self.reliable.on_acks(&body.acks);
        if let Some(id) = body.message_id {
            self.reliable.on_message(u.opcode, id, body.payload);
        }
        let r = self.process(now);
        if let Err(e) = &r {
            self.fail(e.to_string());
        }
        self.flush(now);
        r
    }

    fn process(&mut self, now: Instant) -> Result<(), SessionError> {
        while let Some((op, payload)) = self.reliable.recv() {
            match op {
                Opcode::HardResetClientV2 if !self.is_client() => {
                    if let Role::Server { config, .. } = &self.cfg.role {
                        self.tls = Some(Tls::server(config.clone())?);
                    }
                    self.reliable.send(Opcode::HardResetServerV2, Vec::new());
                    self.phase = Phase::Tls;
                }
                Opcode::HardResetServerV2 if self.is_client() => {
                    if let Role::Client(config) = &self.cfg.role {
                        self.tls = Some(Tls::client(config.clone())?);
                    }
                    self.phase = Phase::Tls;
                }
                Opcode::ControlV1 => {
                    let tls = self.tls.as_mut().ok_or(SessionError::Unexpected(op))?;
                    tls.feed(&payload)?;
                }
                other => return Err(SessionError::Unexpected(other)),
            }
        }
        self.drive_tls(now)
    }

    fn drive_tls(&mut self, now: Instant) -> Result<(), SessionError> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        if self.phase == Phase::Tls && !tls.is_handshaking() {
            self.phase = Phase::KeyExchange;
            let version = tls.version().unwrap_or_default();
            self.outputs
                .push_back(Output::Event(Event::TlsEstablished { version }));
        }
        if !tls.is_handshaking() && !self.km2_sent {
            let is_client = self.is_client();
            let km = KeyMethod2 {
                options: keymethod::options_string(is_client, self.cfg.udp),
                username: String::new(),
                password: Zeroizing::new(String::new()),
                peer_info: if is_client {
                    keymethod::client_peer_info(&self.cfg.ciphers)
                } else {
                    String::new()
                },
            };
            let tls = self.tls.as_mut().expect("checked");
            tls.write_plaintext(&km.encode(is_client, &mut *self.rng))?;
            self.km2_sent = true;
        }
        let tls = self.tls.as_mut().expect("checked");
        tls.read_plaintext(&mut self.plaintext)?;
        self.process_plaintext(now)?;
        self.send_tls_records()
    }

    fn process_plaintext(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.peer_km2.is_none() && !self.plaintext.is_empty() {
            match KeyMethod2::parse(&self.plaintext, !self.is_client()) {
                Ok((km, n)) => {
                    self.plaintext.drain(..n);
                    self.peer_km2 = Some(km);
                    self.phase = Phase::Push;
                    if self.is_client() {
                        self.send_text("PUSH_REQUEST")?;
                    }
                }
                Err(keymethod::KeyMethodError::Incomplete) => return Ok(()),
                Err(e) => return Err(SessionError::Failed(e.to_string())),
            }
        }
        while let Some(nul) = self.plaintext.iter().position(|b| *b == 0) {
            let msg: Vec<u8> = self.plaintext.drain(..=nul).collect();
            let msg = String::from_utf8_lossy(&msg[..nul]).into_owned();
            self.control_message(now, &msg)?;
        }
        Ok(())
    }

    fn send_text(&mut self, msg: &str) -> Result<(), SessionError> {
        let mut b = msg.as_bytes().to_vec();
        b.push(0);
        self.tls
            .as_mut()
            .ok_or(SessionError::Failed("no TLS".into()))?
            .write_plaintext(&b)?;
        Ok(())
    }

    fn control_message(&mut self, now: Instant, msg: &str) -> Result<(), SessionError> {
        let peer_info = self
            .peer_km2
            .as_ref()
            .map(|k| k.peer_info.clone())
            .unwrap_or_default();
        if msg == "PUSH_REQUEST" && !self.is_client() {
            if self.phase == Phase::Active {
                return Ok(()); // repeated request: the reply was already sent
            }
            let Role::Server { push, peer_id, .. } = &self.cfg.role else {
                unreachable!("server role checked")
            };
            let (push, peer_id) = (push.clone(), *peer_id);
            let cipher = keymethod::negotiate_cipher(&self.cfg.ciphers, &peer_info)
                .ok_or_else(|| SessionError::Failed("no common data cipher".into()))?;
            if !keymethod::peer_has_proto(&peer_info, keymethod::IV_PROTO_TLS_KEY_EXPORT) {
                return Err(SessionError::Failed(
                    "peer does not support TLS key export (tls-ekm)".into(),
                ));
            }
            let reply = build_push_reply(&push, peer_id, cipher);
            self.send_text(&reply)?;
            self.push =
                PushReply::parse(&reply).map_err(|e| SessionError::Failed(e.to_string()))?;
            self.install(now, cipher, peer_id)?;
        } else if msg.starts_with("PUSH_REPLY") && self.is_client() {
            self.push
                .merge(msg)
                .map_err(|e| SessionError::Failed(e.to_string()))?;
            if self.push.more || self.phase == Phase::Active {
                return Ok(());
            }
            let cipher = self
                .push
                .cipher
                .ok_or_else(|| SessionError::Failed("server pushed no cipher".into()))?;
            if !self.push.tls_ekm() {
                return Err(SessionError::Failed(
                    "server did not enable tls-ekm (OpenVPN PRF key derivation is not supported)"
                        .into(),
                ));
            }
            let peer_id = self.push.peer_id.unwrap_or(crate::packet::NO_PEER_ID);
            self.install(now, cipher, peer_id)?;
        } else if msg.starts_with("AUTH_FAILED") {
            return Err(SessionError::Failed(msg.to_string()));
        }
        Ok(())
    }

    fn install(&mut self, now: Instant, cipher: Cipher, peer_id: u32) -> Result<(), SessionError> {
        let tls = self
            .tls
            .as_ref()
            .ok_or(SessionError::Failed("no TLS".into()))?;
        let ekm = tls.export_data_keys()?;
        let keys = DataKeys::from_ekm(&ekm, !self.is_client());
        let key = DataChannelKey::new(
            &keys,
            cipher,
            self.key_id,
            peer_id,
            self.cfg.data_limits,
            now,
        );
        self.outputs.push_back(Output::InstallKey(Arc::new(key)));
        self.phase = Phase::Active;
        self.outputs.push_back(Output::Event(Event::Connected {
            push: Box::new(self.push.clone()),
        }));
        Ok(())
    }

    /// Largest TLS chunk per P_CONTROL_V1 (room for the wrapping and
    /// piggy-backed ACKs).
    fn max_chunk(&self) -> usize {
        let fixed = CONTROL_HEADER_LEN + self.cfg.wrap.overhead() + 1 + 4 * MAX_ACKS + 8 + 4;
        self.cfg.control_mtu.saturating_sub(fixed).max(64)
    }

    fn send_tls_records(&mut self) -> Result<(), SessionError> {
        let max = self.max_chunk();
        if let Some(tls) = self.tls.as_mut() {
            let records = tls.take_records()?;
            for c in records.chunks(max) {
                self.reliable.send(Opcode::ControlV1, c.to_vec());
            }
        }
        Ok(())
    }

    fn flush(&mut self, now: Instant) {
        let time = self.unix_time(now);
        while let Some(o) = self.reliable.poll_transmit(now) {
            let body = ControlBody {
                remote_session: (!o.acks.is_empty()).then(|| self.remote_sid.unwrap_or_default()),
                acks: o.acks,
                message_id: o.message_id,
                payload: &o.payload,
            };
            let mut b = Vec::with_capacity(body.encoded_len());
            body.encode(&mut b);
            match self
                .cfg
                .wrap
                .wrap(o.opcode, self.key_id, self.local_sid, &b, time)
            {
                Ok(p) => self.outputs.push_back(Output::Transmit(p)),
                Err(e) => {
                    self.fail(e.to_string());
                    return;
                }
            }
        }
    }
}
