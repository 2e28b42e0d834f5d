//! One control-channel session (client or server side of one peer), sans
//! I/O: packets and `now` in ([`Session::handle_packet`],
//! [`Session::handle_timeout`]); packets to send, data keys to install,
//! switch to and retire, and events out ([`Session::poll_output`]); the next
//! deadline from [`Session::poll_timeout`].
//!
//! Flow of the first key (key-id 0): hard reset (client V2 / server V2) →
//! TLS over P_CONTROL_V1 → key method 2 both ways → client `PUSH_REQUEST`
//! → server `PUSH_REPLY` (cipher, peer-id, `protocol-flags tls-ekm`) → both
//! derive DATA_V2 keys from the TLS exporter and emit
//! [`Output::InstallKey`] then [`Output::SendKey`].
//!
//! Later keys (key-id 1..7, cycling) come from soft resets on the same
//! control channel: see [`crate::rekey`], where renegotiation lives.
//! Each key-id has its own [`KeyState`]: its reliability layer (message
//! ids from 0), its TLS session and its key method 2 exchange; the session
//! id and the tls-auth/tls-crypt wrapping (and its replay window) are the
//! session's, shared by all keys.

use crate::compress::Framing;
use crate::data::{Cipher, DataChannelKey, DataKeys};
use crate::keymethod::{self, KeyMethod2};
use crate::packet::{ControlBody, KeyId, Opcode, SessionId, CONTROL_HEADER_LEN, MAX_ACKS};
use crate::push::{build_push_reply, PushReply};
use crate::rekey::{LameDuck, RekeyConfig, RekeyReason, RekeyTimers};
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
    /// Client: `auth-user-pass`.
    pub credentials: Option<keymethod::Credentials>,
    /// `comp-lzo`/`compress`: the data channel's compression framing (a
    /// client's is replaced by what the server pushes).
    pub framing: Framing,
    /// Server: `compress migrate` (see [`migrate_push`]).
    pub compress_migrate: bool,
    /// False with `allow-compression no`: compressed payloads are refused
    /// even where the framing in use names an algorithm.
    pub decompress: bool,
    /// Client: a server's auth-token from an earlier session, sent for the
    /// password from the first key on (a reconnect then needs no new
    /// one-time password, as with OpenVPN).
    pub auth_token: Option<crate::push::AuthToken>,
}

/// `compress migrate`: a client whose options string says `comp-lzo`
/// (any `comp-lzo`/`compress` in its config) is pushed the framing-only
/// option it can take, which the server then uses with it too; others
/// get nothing (OpenVPN's `multi_client_connect_compress_migrate`).
pub fn migrate_push(peer_options: &str, peer_info: &str) -> Option<&'static str> {
    if !peer_options.contains(",comp-lzo,") {
        return None;
    }
    Some(
        if keymethod::peer_info_get(peer_info, "IV_COMP_STUBv2") == Some("1") {
            "compress stub-v2"
        } else {
            "comp-lzo no"
        },
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TlsEstablished {
        version: String,
        /// The peer certificate's common name (a server keys per-client
        /// settings such as iroutes by it, as OpenVPN's client-config-dir).
        common_name: Option<String>,
    },
    /// Client: the push reply arrived and the data keys are installed.
    /// Server: the reply was sent and the data keys are installed.
    Connected {
        push: Box<PushReply>,
    },
    /// A soft reset for `key_id` began (KU / KE).
    Renegotiating {
        key_id: KeyId,
        reason: RekeyReason,
    },
    /// Outbound packets now use the renegotiated `key_id`.
    Rekeyed {
        key_id: KeyId,
    },
    Failed(String),
}

pub enum Output {
    Transmit(Vec<u8>),
    /// Open inbound packets of this key's key-id with it from now on (the
    /// keys of other key-ids stay).
    InstallKey(Arc<DataChannelKey>),
    /// Seal outbound packets with this (installed) key-id from now on.
    SendKey(KeyId),
    /// Forget this key-id: nothing is opened or sealed with it any more
    /// (its [`DataChannelKey`] is already marked retired).
    RetireKey(KeyId),
    Event(Event),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Transmit(b) => write!(f, "Transmit({} bytes)", b.len()),
            Output::InstallKey(k) => write!(f, "InstallKey(key-id {})", k.key_id),
            Output::SendKey(k) => write!(f, "SendKey(key-id {k})"),
            Output::RetireKey(k) => write!(f, "RetireKey(key-id {k})"),
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
    #[error("{opcode} for key-id {key_id}, which is not in use (local key-id {local})")]
    KeyIdOutOfSync {
        opcode: Opcode,
        key_id: KeyId,
        local: KeyId,
    },
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

/// The control channel of one key-id (OpenVPN's `key_state`).
pub(crate) struct KeyState {
    pub(crate) key_id: KeyId,
    pub(crate) reliable: Reliable,
    pub(crate) tls: Option<Tls>,
    plaintext: Vec<u8>,
    tls_done: bool,
    km2_sent: bool,
    pub(crate) peer_km2: Option<KeyMethod2>,
    /// Our reset (hard or soft) is queued.
    pub(crate) reset_sent: bool,
    /// The peer's reset arrived.
    peer_reset: bool,
    /// hand-window: the key must be ready by then.
    pub(crate) deadline: Instant,
    /// The data channel key, once derived (installed for receiving).
    pub(crate) data: Option<Arc<DataChannelKey>>,
    /// Key method 2 done both ways and all our messages acknowledged
    /// (OpenVPN's S_ACTIVE): reneg-sec counts from here.
    pub(crate) ready_at: Option<Instant>,
    /// Outbound packets use this key.
    pub(crate) sending: bool,
}

impl KeyState {
    pub(crate) fn new(key_id: KeyId, cfg: ReliableConfig, deadline: Instant) -> Self {
        Self {
            key_id,
            reliable: Reliable::new(cfg),
            tls: None,
            plaintext: Vec::new(),
            tls_done: false,
            km2_sent: false,
            peer_km2: None,
            reset_sent: false,
            peer_reset: false,
            deadline,
            data: None,
            ready_at: None,
            sending: false,
        }
    }

    /// Key method 2 went both ways (OpenVPN accepts a soft reset from here).
    pub(crate) fn exchanged(&self) -> bool {
        self.km2_sent && self.peer_km2.is_some() && self.data.is_some()
    }
}

pub struct Session {
    pub(crate) cfg: SessionConfig,
    pub(crate) rng: Box<dyn RngCoreSend>,
    local_sid: SessionId,
    remote_sid: Option<SessionId>,
    /// The newest key-id (OpenVPN's KS_PRIMARY).
    pub(crate) primary: KeyState,
    /// The previous key, kept for packets still in flight (KS_LAME_DUCK).
    pub(crate) lame: Option<LameDuck>,
    /// The key-id the next soft reset uses (1..7, never 0 again).
    pub(crate) next_key_id: KeyId,
    phase: Phase,
    push: PushReply,
    /// Negotiated for key-id 0; every later key uses the same.
    pub(crate) cipher: Option<Cipher>,
    pub(crate) peer_id: u32,
    /// SHA-256 of the peer's certificate at key-id 0: a renegotiation must
    /// present the same one (OpenVPN refuses a changed certificate too).
    peer_cert: Option<[u8; 32]>,
    pub(crate) hand_window: Duration,
    pub(crate) rekey: RekeyConfig,
    pub(crate) timers: RekeyTimers,
    pub(crate) outputs: VecDeque<Output>,
    epoch: Instant,
    epoch_unix: u64,
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
        let is_server = matches!(cfg.role, Role::Server { .. });
        let mut rng: Box<dyn RngCoreSend> = Box::new(rng);
        let rekey = RekeyConfig::default();
        let timers = RekeyTimers::new(&rekey, is_server, &mut *rng);
        let auth_token = cfg.auth_token.clone();
        let mut s = Self {
            primary: KeyState::new(0, cfg.reliable, now + HAND_WINDOW),
            cfg,
            rng,
            local_sid,
            remote_sid: None,
            lame: None,
            next_key_id: 1,
            phase: Phase::Reset,
            push: PushReply {
                auth_token,
                ..PushReply::default()
            },
            cipher: None,
            peer_id: crate::packet::NO_PEER_ID,
            peer_cert: None,
            hand_window: HAND_WINDOW,
            rekey,
            timers,
            outputs: VecDeque::new(),
            epoch: now,
            epoch_unix: wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        if s.is_client() {
            s.primary
                .reliable
                .send(Opcode::HardResetClientV2, Vec::new());
            s.primary.reset_sent = true;
            s.flush(now);
        }
        s
    }

    pub(crate) fn is_client(&self) -> bool {
        matches!(self.cfg.role, Role::Client(_))
    }

    pub fn local_session_id(&self) -> SessionId {
        self.local_sid
    }

    pub fn remote_session_id(&self) -> Option<SessionId> {
        self.remote_sid
    }

    /// The first key is up (stays true across renegotiations).
    /// Server: options for this client's push reply besides the
    /// configured ones (known once its certificate is: per-client pushes
    /// by common name). Too late once the reply went out: false then.
    pub fn push_more(&mut self, options: &[String]) -> bool {
        if self.phase == Phase::Active {
            return false;
        }
        match &mut self.cfg.role {
            Role::Server { push, .. } => {
                push.extend(options.iter().cloned());
                true
            }
            Role::Client(_) => false,
        }
    }

    /// The data channel's compression framing, the same for every key: a
    /// pushed comp-lzo/compress over the configured one, as in OpenVPN
    /// (the push is settled before key-id 0 is derived).
    fn framing(&self) -> Framing {
        let f = self.push.compress.unwrap_or(self.cfg.framing);
        if self.cfg.decompress {
            f
        } else {
            f.stub()
        }
    }

    /// Client: the server's auth-token as it stands now (renewals
    /// included), to carry into the next session.
    pub fn auth_token(&self) -> Option<&crate::push::AuthToken> {
        self.push.auth_token.as_ref()
    }

    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    pub fn is_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    /// The TLS connection of the newest key whose handshake is complete
    /// (for `keying-material-exporter`, SSKE).
    pub fn tls(&self) -> Option<&Tls> {
        let done = |t: &&Tls| !t.is_handshaking();
        self.primary.tls.as_ref().filter(done).or_else(|| {
            self.lame
                .as_ref()
                .and_then(|l| l.ks.tls.as_ref())
                .filter(done)
        })
    }

    /// Sets `hand-window`: each key's handshake must complete within
    /// `window` from its start (default [`HAND_WINDOW`]); for a handshake
    /// under way the deadline is `now + window`.
    pub fn set_hand_window(&mut self, now: Instant, window: Duration) {
        self.hand_window = window;
        if self.phase != Phase::Failed && self.primary.ready_at.is_none() {
            self.primary.deadline = now + window;
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Failed {
            return None;
        }
        let hand = (self.primary.ready_at.is_none()).then_some(self.primary.deadline);
        [
            self.primary.reliable.poll_timeout(),
            self.lame
                .as_ref()
                .and_then(|l| l.ks.reliable.poll_timeout()),
            hand,
            self.rekey_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Failed {
            return;
        }
        if self.primary.ready_at.is_none() && now >= self.primary.deadline {
            if self.primary.key_id == 0 {
                self.fail("TLS key negotiation failed to occur within hand-window".into());
            } else {
                self.fail(format!(
                    "TLS key renegotiation (key-id {}) failed to complete within hand-window",
                    self.primary.key_id
                ));
            }
            return;
        }
        self.rekey_timeout(now);
        self.flush(now);
    }

    pub(crate) fn fail(&mut self, why: String) {
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
                if !ok || u.key_id != 0 {
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
        if u.key_id != self.primary.key_id {
            if let Some(l) = self.lame.as_mut().filter(|l| l.ks.key_id == u.key_id) {
                // Acknowledged: the peer may still retransmit its last
                // message of the old key. Read only for a renewed
                // auth-token, which an OpenVPN server may send on the old
                // key's channel just before it resets.
                l.ks.reliable.on_acks(&body.acks);
                if let Some(id) = body.message_id {
                    l.ks.reliable.on_message(u.opcode, id, body.payload);
                }
                while let Some((op, payload)) = l.ks.reliable.recv() {
                    if let (Opcode::ControlV1, Some(tls)) = (op, l.ks.tls.as_mut()) {
                        if tls.feed(&payload).is_ok() {
                            let _ = tls.read_plaintext(&mut l.ks.plaintext);
                        }
                    }
                }
                while let Some(nul) = l.ks.plaintext.iter().position(|b| *b == 0) {
                    let msg: Vec<u8> = l.ks.plaintext.drain(..=nul).collect();
                    if let Some(t) = renewed_token(&String::from_utf8_lossy(&msg[..nul])) {
                        self.push.auth_token = Some(t);
                    }
                }
                self.flush(now);
                return Ok(());
            }
            if !self.accept_soft_reset(now, u.opcode, u.key_id) {
                return Err(SessionError::KeyIdOutOfSync {
                    opcode: u.opcode,
                    key_id: u.key_id,
                    local: self.primary.key_id,
                });
            }
        }
        self.primary.reliable.on_acks(&body.acks);
        if let Some(id) = body.message_id {
            self.primary.reliable.on_message(u.opcode, id, body.payload);
        }
        let r = self.process(now);
        if let Err(e) = &r {
            let why = if self.primary.key_id == 0 {
                e.to_string()
            } else {
                format!("renegotiation of key-id {}: {e}", self.primary.key_id)
            };
            self.fail(why);
        }
        // ACKs leave before a send switch: an OpenVPN server derives the new
        // key only when our ACK of its key method 2 arrives.
        self.flush(now);
        self.rekey_progress(now);
        self.flush(now);
        r
    }

    fn new_tls(&self) -> Result<Tls, SessionError> {
        Ok(match &self.cfg.role {
            Role::Client(config) => Tls::client(config.clone())?,
            Role::Server { config, .. } => Tls::server(config.clone())?,
        })
    }

    /// The peer's reset for the primary key arrived: answer with ours if
    /// not sent yet, and start its TLS session.
    fn on_peer_reset(&mut self, answer: Opcode) -> Result<(), SessionError> {
        if self.primary.peer_reset {
            return Ok(());
        }
        self.primary.peer_reset = true;
        if !self.primary.reset_sent {
            self.primary.reliable.send(answer, Vec::new());
            self.primary.reset_sent = true;
        }
        self.primary.tls = Some(self.new_tls()?);
        if self.primary.key_id == 0 {
            self.phase = Phase::Tls;
        }
        Ok(())
    }

    fn process(&mut self, now: Instant) -> Result<(), SessionError> {
        let first = self.primary.key_id == 0;
        while let Some((op, payload)) = self.primary.reliable.recv() {
            match op {
                Opcode::HardResetClientV2 if first && !self.is_client() => {
                    self.on_peer_reset(Opcode::HardResetServerV2)?
                }
                Opcode::HardResetServerV2 if first && self.is_client() => {
                    self.on_peer_reset(Opcode::HardResetServerV2)?
                }
                Opcode::SoftResetV1 if !first => self.on_peer_reset(Opcode::SoftResetV1)?,
                Opcode::ControlV1 => {
                    let tls = self
                        .primary
                        .tls
                        .as_mut()
                        .ok_or(SessionError::Unexpected(op))?;
                    tls.feed(&payload)?;
                }
                other => return Err(SessionError::Unexpected(other)),
            }
        }
        self.drive_tls(now)
    }

    fn drive_tls(&mut self, now: Instant) -> Result<(), SessionError> {
        let Some(tls) = self.primary.tls.as_mut() else {
            return Ok(());
        };
        if !self.primary.tls_done && !tls.is_handshaking() {
            self.primary.tls_done = true;
            self.tls_established(now)?;
        }
        if self.primary.tls_done && !self.primary.km2_sent {
            let is_client = self.is_client();
            // With a server's auth-token, the token stands for the password
            // (a one-time password is not asked again at a renegotiation).
            let (username, password) = match (&self.cfg.credentials, is_client) {
                (Some(c), true) => (
                    c.username.clone(),
                    self.push
                        .auth_token
                        .as_ref()
                        .map_or_else(|| c.password.clone(), |t| t.0.clone()),
                ),
                _ => (String::new(), Zeroizing::new(String::new())),
            };
            let km = KeyMethod2 {
                options: keymethod::options_string(
                    is_client,
                    self.cfg.udp,
                    self.cfg.framing != Framing::None,
                ),
                username,
                password,
                peer_info: if is_client {
                    keymethod::client_peer_info(&self.cfg.ciphers)
                } else {
                    String::new()
                },
            };
            let encoded = km.encode(is_client, &mut *self.rng);
            let tls = self.primary.tls.as_mut().expect("checked");
            tls.write_plaintext(&encoded)?;
            self.primary.km2_sent = true;
        }
        let tls = self.primary.tls.as_mut().expect("checked");
        tls.read_plaintext(&mut self.primary.plaintext)?;
        self.process_plaintext(now)?;
        self.send_tls_records()
    }

    /// The primary key's TLS handshake completed.
    fn tls_established(&mut self, now: Instant) -> Result<(), SessionError> {
        let tls = self.primary.tls.as_ref().expect("called with TLS");
        let cert = tls.peer_certificate().map(|c| crate::tls::fingerprint(c));
        if self.primary.key_id == 0 {
            self.peer_cert = cert;
            self.phase = Phase::KeyExchange;
            let version = tls.version().unwrap_or_default();
            let common_name = tls
                .peer_certificate()
                .and_then(|c| crate::tls::cert_names(c).ok())
                .and_then(|n| n.common_name);
            self.outputs.push_back(Output::Event(Event::TlsEstablished {
                version,
                common_name,
            }));
            return Ok(());
        }
        if cert.is_none() || cert != self.peer_cert {
            return Err(SessionError::Failed(
                "the peer presented a different certificate than at the session's start".into(),
            ));
        }
        // The peer may send with the new key as soon as it has derived it:
        // be ready to open it before anything else happens.
        let cipher = self
            .cipher
            .ok_or(SessionError::Failed("no data cipher".into()))?;
        self.derive_key(now, cipher)
    }

    fn derive_key(&mut self, now: Instant, cipher: Cipher) -> Result<(), SessionError> {
        let tls = self
            .primary
            .tls
            .as_ref()
            .ok_or(SessionError::Failed("no TLS".into()))?;
        let ekm = tls.export_data_keys()?;
        let keys = DataKeys::from_ekm(&ekm, !self.is_client());
        let key = Arc::new(
            DataChannelKey::new(
                &keys,
                cipher,
                self.primary.key_id,
                self.peer_id,
                self.rekey.data_limits(self.cfg.data_limits),
                now,
            )
            .with_framing(self.framing()),
        );
        self.primary.data = Some(key.clone());
        self.outputs.push_back(Output::InstallKey(key));
        Ok(())
    }

    fn process_plaintext(&mut self, now: Instant) -> Result<(), SessionError> {
        if self.primary.peer_km2.is_none() && !self.primary.plaintext.is_empty() {
            match KeyMethod2::parse(&self.primary.plaintext, !self.is_client()) {
                Ok((km, n)) => {
                    self.primary.plaintext.drain(..n);
                    self.primary.peer_km2 = Some(km);
                    if self.primary.key_id == 0 {
                        self.phase = Phase::Push;
                        if self.is_client() {
                            self.send_text("PUSH_REQUEST")?;
                        }
                    }
                }
                Err(keymethod::KeyMethodError::Incomplete) => return Ok(()),
                Err(e) => return Err(SessionError::Failed(e.to_string())),
            }
        }
        while let Some(nul) = self.primary.plaintext.iter().position(|b| *b == 0) {
            let msg: Vec<u8> = self.primary.plaintext.drain(..=nul).collect();
            let msg = String::from_utf8_lossy(&msg[..nul]).into_owned();
            self.control_message(now, &msg)?;
        }
        Ok(())
    }

    fn send_text(&mut self, msg: &str) -> Result<(), SessionError> {
        let mut b = msg.as_bytes().to_vec();
        b.push(0);
        self.primary
            .tls
            .as_mut()
            .ok_or(SessionError::Failed("no TLS".into()))?
            .write_plaintext(&b)?;
        Ok(())
    }

    fn control_message(&mut self, now: Instant, msg: &str) -> Result<(), SessionError> {
        let peer_info = self
            .primary
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
            let (mut push, peer_id) = (push.clone(), *peer_id);
            if self.cfg.compress_migrate {
                let options = self.primary.peer_km2.as_ref().map(|k| k.options.as_str());
                if let Some(o) = migrate_push(options.unwrap_or(""), &peer_info) {
                    push.push(o.to_string());
                }
            }
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
            self.install_first(now, cipher, peer_id)?;
        } else if msg.starts_with("PUSH_REPLY") && self.is_client() {
            if self.phase == Phase::Active {
                // A repeated reply, or one after a renegotiation: only a
                // renewed auth-token is taken from it.
                if let Some(t) = renewed_token(msg) {
                    self.push.auth_token = Some(t);
                }
                return Ok(());
            }
            self.push
                .merge(msg)
                .map_err(|e| SessionError::Failed(e.to_string()))?;
            if self.push.more {
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
            self.install_first(now, cipher, peer_id)?;
        } else if msg.starts_with("AUTH_FAILED") {
            return Err(SessionError::Failed(msg.to_string()));
        }
        Ok(())
    }

    /// Key-id 0: receive and send with it at once (the push exchange
    /// already told the peer everything it needs).
    fn install_first(
        &mut self,
        now: Instant,
        cipher: Cipher,
        peer_id: u32,
    ) -> Result<(), SessionError> {
        self.cipher = Some(cipher);
        self.peer_id = peer_id;
        self.derive_key(now, cipher)?;
        self.outputs.push_back(Output::SendKey(self.primary.key_id));
        self.primary.sending = true;
        self.primary.ready_at = Some(now);
        self.timers.key_ready(now);
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
        if let Some(tls) = self.primary.tls.as_mut() {
            let records = tls.take_records()?;
            for c in records.chunks(max) {
                self.primary.reliable.send(Opcode::ControlV1, c.to_vec());
            }
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self, now: Instant) {
        let time = self.unix_time(now);
        let remote = self.remote_sid.unwrap_or_default();
        let lame = self.lame.as_mut().map(|l| &mut l.ks);
        for ks in std::iter::once(&mut self.primary).chain(lame) {
            while let Some(o) = ks.reliable.poll_transmit(now) {
                let body = ControlBody {
                    remote_session: (!o.acks.is_empty()).then_some(remote),
                    acks: o.acks,
                    message_id: o.message_id,
                    payload: &o.payload,
                };
                let mut b = Vec::with_capacity(body.encoded_len());
                body.encode(&mut b);
                match self
                    .cfg
                    .wrap
                    .wrap(o.opcode, ks.key_id, self.local_sid, &b, time)
                {
                    Ok(p) => self.outputs.push_back(Output::Transmit(p)),
                    Err(e) => {
                        self.phase = Phase::Failed;
                        self.outputs
                            .push_back(Output::Event(Event::Failed(e.to_string())));
                        return;
                    }
                }
            }
        }
    }
}

/// The auth-token of a later `PUSH_REPLY` (a server renewing it), if any.
fn renewed_token(msg: &str) -> Option<crate::push::AuthToken> {
    if !msg.starts_with("PUSH_REPLY") {
        return None;
    }
    PushReply::parse(msg).ok()?.auth_token
}
