//! The sans-I/O WireGuard device: every peer's handshake state, session
//! rotation, timers, cookies and rate limiting (quinn-proto style: inputs
//! mutate the state, [`Output`]s are drained with [`Device::poll_output`],
//! the next deadline is [`Device::poll_timeout`]).
//!
//! The data path (outside this crate) owns the sockets and the packet
//! batches: it demultiplexes with [`crate::messages::classify`], opens
//! transport data with the receivers it was given ([`Output::AddReceiver`]),
//! seals with the sending keypair ([`Output::SetSending`]) and reports back
//! with [`Device::on_data_received`] / [`Device::on_data_sent`] /
//! [`Device::on_need_handshake`] / [`Device::on_key_expiring`].

use crate::cookie::CookieError;
use crate::cookie::{CookieChecker, CookieGenerator};
use crate::keys::{PresharedKey, PublicKey, StaticSecret};
use crate::messages::{classify, Message, ParseError, INITIATION_MAC1, RESPONSE_MAC1};
use crate::noise::{self, LocalStatic, NoiseError, PeerStatic};
use crate::ratelimit::RateLimiter;
use crate::rekey::{self, Action, PeerTimers};
use crate::timers::{HANDSHAKE_INITIATION_RATE, REKEY_TIMEOUT_JITTER_MAX_MS};
use crate::transport::Keypair;
use rand_core::{CryptoRng, RngCore};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A peer's handle, stable for the life of the device.
pub type PeerId = u32;

/// Default inner MTU used to bound padding.
pub const DEFAULT_MTU: usize = 1420;

#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub preshared_key: Option<[u8; 32]>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; `None` or `Some(0)`: off.
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
        }
    }
}

/// What `show` displays about a peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub persistent_keepalive: Option<u16>,
    pub has_preshared_key: bool,
    /// When the current sending keypair was created (key age).
    pub current_key_created: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An initiation was sent (`attempt` 0 for a new handshake).
    HandshakeInitiated { peer: PeerId, attempt: u32 },
    /// A session is confirmed and ready to send.
    HandshakeCompleted { peer: PeerId },
    /// No response after REKEY_ATTEMPT_TIME of retries.
    HandshakeFailed { peer: PeerId },
    /// All keys of the peer were wiped (3 × REJECT_AFTER_TIME without a new session).
    KeysCleared { peer: PeerId },
    /// The sending key reached REKEY_AFTER_TIME / REKEY_AFTER_MESSAGES (KE).
    KeyExpiring { peer: PeerId },
}

#[derive(Debug)]
pub enum Output {
    /// Send these bytes to `dst` (handshake messages, cookie replies).
    Transmit {
        dst: SocketAddr,
        data: Vec<u8>,
    },
    /// The data path may open packets addressed to `keypair.local_index` now.
    AddReceiver {
        peer: PeerId,
        keypair: Arc<Keypair>,
    },
    /// Seal the peer's packets with this keypair (`None`: no valid key; ask
    /// for a handshake with [`Device::on_need_handshake`]).
    SetSending {
        peer: PeerId,
        keypair: Option<Arc<Keypair>>,
    },
    /// Forget the receiver with this local index.
    RemoveReceiver {
        local_index: u32,
    },
    /// Seal an empty packet with the peer's sending keypair and send it.
    SendKeepalive {
        peer: PeerId,
    },
    /// The peer roamed: send its packets to `endpoint` from now on.
    EndpointChanged {
        peer: PeerId,
        endpoint: SocketAddr,
    },
    Event(Event),
}

/// Why a handshake datagram was dropped (the daemon counts these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed: {0}")]
    Malformed(#[from] ParseError),
    #[error("transport data is not a handshake message")]
    NotHandshake,
    #[error("bad mac1")]
    BadMac1,
    #[error("under load and no valid mac2: cookie reply sent")]
    CookieReplySent,
    #[error("rate limited")]
    RateLimited,
    #[error("handshake failed to decrypt or authenticate")]
    Decrypt,
    #[error("initiator's static key is not a configured peer")]
    UnknownPeer,
    #[error("peer refused by the identity validator")]
    PeerRejected,
    #[error("replayed initiation (timestamp not newer)")]
    Replay,
    #[error("initiations arriving too fast from this peer")]
    Flood,
    #[error("receiver index unknown")]
    UnknownIndex,
    #[error("no handshake in progress for this response")]
    UnexpectedResponse,
    #[error("cookie reply: {0}")]
    Cookie(#[from] CookieError),
}

impl From<NoiseError> for HandshakeError {
    fn from(_: NoiseError) -> Self {
        HandshakeError::Decrypt
    }
}

/// Randomness for keys, indices, cookies and jitter.
pub trait DeviceRng: RngCore + CryptoRng + Send {}
impl<T: RngCore + CryptoRng + Send> DeviceRng for T {}

/// The policy hook of RFC 8922 IV: may this (configured) peer connect?
pub type IdentityValidator = Box<dyn Fn(&PublicKey) -> bool + Send>;

struct Peer {
    info: PeerInfo,
    statics: PeerStatic,
    cookies: CookieGenerator,
    handshake: Option<noise::InitiatorState>,
    current: Option<Arc<Keypair>>,
    previous: Option<Arc<Keypair>>,
    next: Option<Arc<Keypair>>,
    last_timestamp: Option<[u8; 12]>,
    last_initiation_consumed: Option<Instant>,
    timers: PeerTimers,
}

pub struct Device {
    local: LocalStatic,
    checker: CookieChecker,
    peers: BTreeMap<PeerId, Peer>,
    by_key: HashMap<[u8; 32], PeerId>,
    indices: HashMap<u32, PeerId>,
    next_peer_id: PeerId,
    rng: Box<dyn DeviceRng>,
    outputs: VecDeque<Output>,
    limiter: RateLimiter,
    validator: Option<IdentityValidator>,
    epoch: Instant,
    epoch_wall: SystemTime,
    last_now: Instant,
    mtu: usize,
}

fn interval(secs: Option<u16>) -> Option<Duration> {
    secs.filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s.into()))
}

impl Device {
    /// `wall` is the wall-clock time at `now`; TAI64N timestamps are
    /// `wall + (later now − this now)`, so they never go backwards.
    pub fn new(
        private: StaticSecret,
        now: Instant,
        wall: SystemTime,
        rng: impl RngCore + CryptoRng + Send + 'static,
    ) -> Self {
        let local = LocalStatic::new(private);
        Self {
            checker: CookieChecker::new(&local.public),
            local,
            peers: BTreeMap::new(),
            by_key: HashMap::new(),
            indices: HashMap::new(),
            next_peer_id: 0,
            rng: Box::new(rng),
            outputs: VecDeque::new(),
            limiter: RateLimiter::new(),
            validator: None,
            epoch: now,
            epoch_wall: wall,
            last_now: now,
            mtu: DEFAULT_MTU,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.local.public
    }

    /// Inner MTU bounding the padding of keypairs created from now on.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    pub fn set_identity_validator(&mut self, v: Option<IdentityValidator>) {
        self.validator = v;
    }

    /// Changes our private key; every session and handshake is cleared.
    pub fn set_private_key(&mut self, private: StaticSecret, now: Instant) {
        self.touch(now);
        self.local = LocalStatic::new(private);
        self.checker = CookieChecker::new(&self.local.public);
        let ids: Vec<_> = self.peers.keys().copied().collect();
        for id in ids {
            self.clear_sessions(id);
            if let Some(p) = self.peers.get_mut(&id) {
                let psk = p.statics.psk.clone();
                p.statics = PeerStatic::new(&self.local, p.info.public_key, psk);
            }
        }
    }

    fn wall(&self, now: Instant) -> SystemTime {
        self.epoch_wall + now.saturating_duration_since(self.epoch)
    }

    fn touch(&mut self, now: Instant) {
        if now > self.last_now {
            self.last_now = now;
        }
    }

    fn jitter(&mut self) -> Duration {
        Duration::from_millis((self.rng.next_u32() % (REKEY_TIMEOUT_JITTER_MAX_MS + 1)).into())
    }

    fn alloc_index(&mut self, peer: PeerId) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if let std::collections::hash_map::Entry::Vacant(e) = self.indices.entry(i) {
                e.insert(peer);
                return i;
            }
        }
    }

    // ---- peers ----

    /// Adds a peer; a peer with the same public key is replaced.
    pub fn add_peer(&mut self, cfg: PeerConfig) -> PeerId {
        if let Some(old) = self.by_key.get(cfg.public_key.as_bytes()).copied() {
            self.remove_peer(old);
        }
        let id = self.next_peer_id;
        self.next_peer_id = self.next_peer_id.wrapping_add(1);
        let psk = PresharedKey(cfg.preshared_key.unwrap_or([0; 32]));
        let mut timers = PeerTimers::new(None);
        if cfg.endpoint.is_some() {
            timers.set_persistent_interval(interval(cfg.persistent_keepalive), self.last_now);
        } else {
            timers.persistent_interval = interval(cfg.persistent_keepalive);
        }
        let peer = Peer {
            info: PeerInfo {
                public_key: cfg.public_key,
                endpoint: cfg.endpoint,
                last_handshake: None,
                persistent_keepalive: cfg.persistent_keepalive.filter(|s| *s > 0),
                has_preshared_key: cfg.preshared_key.is_some_and(|k| k != [0; 32]),
                current_key_created: None,
            },
            statics: PeerStatic::new(&self.local, cfg.public_key, psk),
            cookies: CookieGenerator::new(&cfg.public_key),
            handshake: None,
            current: None,
            previous: None,
            next: None,
            last_timestamp: None,
            last_initiation_consumed: None,
            timers,
        };
        self.by_key.insert(*cfg.public_key.as_bytes(), id);
        self.peers.insert(id, peer);
        id
    }

    /// Removes a peer: its receivers are removed and its sending key unset.
    pub fn remove_peer(&mut self, id: PeerId) {
        if !self.peers.contains_key(&id) {
            return;
        }
        self.clear_sessions(id);
        if let Some(p) = self.peers.remove(&id) {
            self.by_key.remove(p.info.public_key.as_bytes());
        }
        self.indices.retain(|_, p| *p != id);
    }

    /// Applies a configuration change to a peer (endpoint, PSK, keepalive,
    /// and even its public key, which clears its sessions).
    pub fn update_peer(&mut self, id: PeerId, f: impl FnOnce(&mut PeerConfig)) {
        let Some(p) = self.peers.get(&id) else { return };
        let old = PeerConfig {
            public_key: p.info.public_key,
            preshared_key: p.info.has_preshared_key.then_some(p.statics.psk.0),
            endpoint: p.info.endpoint,
            persistent_keepalive: p.info.persistent_keepalive,
        };
        let mut new = old.clone();
        f(&mut new);
        if new.public_key != old.public_key {
            self.clear_sessions(id);
            self.by_key.remove(old.public_key.as_bytes());
            if let Some(other) = self.by_key.get(new.public_key.as_bytes()).copied() {
                self.remove_peer(other);
            }
            self.by_key.insert(*new.public_key.as_bytes(), id);
            if let Some(p) = self.peers.get_mut(&id) {
                p.info.public_key = new.public_key;
                p.cookies = CookieGenerator::new(&new.public_key);
                p.last_timestamp = None;
                p.statics = PeerStatic::new(&self.local, new.public_key, PresharedKey([0; 32]));
            }
        }
        self.set_preshared_key(id, new.preshared_key);
        if new.endpoint != old.endpoint {
            if let Some(e) = new.endpoint {
                self.set_endpoint(id, e);
            }
        }
        if new.persistent_keepalive != old.persistent_keepalive {
            self.set_persistent_keepalive(id, new.persistent_keepalive);
        }
    }

    pub fn set_endpoint(&mut self, id: PeerId, endpoint: SocketAddr) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.info.endpoint = Some(endpoint);
        }
    }

    /// Takes effect from the next handshake (as wireguard-go).
    pub fn set_preshared_key(&mut self, id: PeerId, psk: Option<[u8; 32]>) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.info.has_preshared_key = psk.is_some_and(|k| k != [0; 32]);
            p.statics.psk = PresharedKey(psk.unwrap_or([0; 32]));
        }
    }

    /// Setting a non-zero interval sends a keepalive (or handshake) right away.
    pub fn set_persistent_keepalive(&mut self, id: PeerId, secs: Option<u16>) {
        let now = self.last_now;
        if let Some(p) = self.peers.get_mut(&id) {
            p.info.persistent_keepalive = secs.filter(|s| *s > 0);
            p.timers.set_persistent_interval(interval(secs), now);
        }
    }

    pub fn peer_by_public_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key.as_bytes()).copied()
    }

    pub fn peers(&self) -> impl Iterator<Item = (PeerId, &PeerInfo)> {
        self.peers.iter().map(|(id, p)| (*id, &p.info))
    }

    pub fn peer(&self, id: PeerId) -> Option<&PeerInfo> {
        self.peers.get(&id).map(|p| &p.info)
    }

    /// The keypair the data path should be sealing with for `id`.
    pub fn sending_keypair(&self, id: PeerId) -> Option<&Arc<Keypair>> {
        self.peers.get(&id).and_then(|p| p.current.as_ref())
    }

    /// Which peer owns a local index (a keypair's or a pending handshake's).
    pub fn peer_of_index(&self, local_index: u32) -> Option<PeerId> {
        self.indices.get(&local_index).copied()
    }

    // ---- keypair bookkeeping ----

    fn drop_keypair(&mut self, kp: Option<Arc<Keypair>>) {
        if let Some(kp) = kp {
            kp.retire();
            self.indices.remove(&kp.local_index);
            self.outputs.push_back(Output::RemoveReceiver {
                local_index: kp.local_index,
            });
        }
    }

    fn drop_handshake(&mut self, id: PeerId) {
        if let Some(hs) = self.peers.get_mut(&id).and_then(|p| p.handshake.take()) {
            self.indices.remove(&hs.local_index);
        }
    }

    fn clear_sessions(&mut self, id: PeerId) {
        self.drop_handshake(id);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let had_current = p.current.is_some();
        let kps = [p.current.take(), p.previous.take(), p.next.take()];
        p.info.current_key_created = None;
        p.timers.clear();
        for kp in kps {
            self.drop_keypair(kp);
        }
        if had_current {
            self.outputs.push_back(Output::SetSending {
                peer: id,
                keypair: None,
            });
        }
    }

    fn set_sending(&mut self, id: PeerId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.info.current_key_created = p.current.as_ref().map(|k| k.created);
        let keypair = p.current.clone();
        self.outputs
            .push_back(Output::SetSending { peer: id, keypair });
    }

    fn roam(&mut self, id: PeerId, src: SocketAddr) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.info.endpoint != Some(src) {
            p.info.endpoint = Some(src);
            self.outputs.push_back(Output::EndpointChanged {
                peer: id,
                endpoint: src,
            });
        }
    }

    // ---- handshake messages ----

    /// A datagram of message type 1, 2 or 3 arrived from `src`. Errors are
    /// drop reasons the daemon counts. `under_load`: the daemon's handshake
    /// queue is filling up; mac2 (a cookie) is then required.
    pub fn handle_handshake(
        &mut self,
        now: Instant,
        src: SocketAddr,
        datagram: &[u8],
        under_load: bool,
    ) -> Result<(), HandshakeError> {
        self.touch(now);
        match classify(datagram)? {
            Message::Initiation(m) => {
                if !self.checker.check_mac1(m.raw, INITIATION_MAC1) {
                    return Err(HandshakeError::BadMac1);
                }
                self.check_load(
                    now,
                    src,
                    m.raw,
                    INITIATION_MAC1,
                    m.sender,
                    m.mac1,
                    under_load,
                )?;
                self.consume_initiation(now, src, &m)
            }
            Message::Response(m) => {
                if !self.checker.check_mac1(m.raw, RESPONSE_MAC1) {
                    return Err(HandshakeError::BadMac1);
                }
                self.check_load(now, src, m.raw, RESPONSE_MAC1, m.sender, m.mac1, under_load)?;
                self.consume_response(now, src, &m)
            }
            Message::CookieReply(m) => {
                let id = *self
                    .indices
                    .get(&m.receiver)
                    .ok_or(HandshakeError::UnknownIndex)?;
                let p = self
                    .peers
                    .get_mut(&id)
                    .ok_or(HandshakeError::UnknownIndex)?;
                p.cookies.consume_reply(now, &m)?;
                Ok(())
            }
            Message::Data(_) => Err(HandshakeError::NotHandshake),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_load(
        &mut self,
        now: Instant,
        src: SocketAddr,
        raw: &[u8],
        mac1_at: usize,
        sender: u32,
        mac1: &[u8; 16],
        under_load: bool,
    ) -> Result<(), HandshakeError> {
        if !under_load {
            return Ok(());
        }
        if !self.checker.check_mac2(now, raw, mac1_at, src) {
            let reply = self
                .checker
                .create_reply(now, &mut *self.rng, sender, mac1, src);
            self.outputs.push_back(Output::Transmit {
                dst: src,
                data: reply.to_vec(),
            });
            return Err(HandshakeError::CookieReplySent);
        }
        if !self.limiter.allow(now, src.ip()) {
            return Err(HandshakeError::RateLimited);
        }
        Ok(())
    }

    fn consume_initiation(
        &mut self,
        now: Instant,
        src: SocketAddr,
        m: &crate::messages::Initiation<'_>,
    ) -> Result<(), HandshakeError> {
        let half = noise::read_initiation_static(&self.local, m)?;
        let id = self
            .peer_by_public_key(&half.initiator_static)
            .ok_or(HandshakeError::UnknownPeer)?;
        if let Some(v) = &self.validator {
            if !v(&half.initiator_static) {
                return Err(HandshakeError::PeerRejected);
            }
        }
        let p = self.peers.get(&id).ok_or(HandshakeError::UnknownPeer)?;
        let read = half.finish(&p.statics)?;
        if p.last_timestamp.is_some_and(|t| read.timestamp <= t) {
            return Err(HandshakeError::Replay);
        }
        if p.last_initiation_consumed
            .is_some_and(|t| now.saturating_duration_since(t) < HANDSHAKE_INITIATION_RATE)
        {
            return Err(HandshakeError::Flood);
        }
        let local_index = self.alloc_index(id);
        let p = self.peers.get_mut(&id).ok_or(HandshakeError::UnknownPeer)?;
        let (mut resp, keys) =
            match noise::create_response(&p.statics, &read, local_index, &mut *self.rng) {
                Ok(r) => r,
                Err(e) => {
                    self.indices.remove(&local_index);
                    return Err(e.into());
                }
            };
        p.last_timestamp = Some(read.timestamp);
        p.last_initiation_consumed = Some(now);
        p.cookies.add_macs(now, &mut resp, RESPONSE_MAC1);
        let kp = Arc::new(Keypair::new(
            &keys,
            local_index,
            read.sender,
            false,
            now,
            self.mtu,
        ));
        // Responder: the new keypair waits in `next` until the initiator's
        // first data packet confirms it; the old `next` and `previous` go.
        let old_next = p.next.replace(kp.clone());
        let old_prev = p.previous.take();
        p.timers.session_derived(now);
        p.timers.authenticated_packet_traversal(now);
        p.timers.authenticated_packet_received();
        p.timers.authenticated_packet_sent();
        self.drop_keypair(old_next);
        self.drop_keypair(old_prev);
        self.outputs.push_back(Output::AddReceiver {
            peer: id,
            keypair: kp,
        });
        self.roam(id, src);
        self.outputs.push_back(Output::Transmit {
            dst: src,
            data: resp.to_vec(),
        });
        Ok(())
    }

    fn consume_response(
        &mut self,
        now: Instant,
        src: SocketAddr,
        m: &crate::messages::Response<'_>,
    ) -> Result<(), HandshakeError> {
        let id = *self
            .indices
            .get(&m.receiver)
            .ok_or(HandshakeError::UnknownIndex)?;
        let p = self
            .peers
            .get_mut(&id)
            .ok_or(HandshakeError::UnknownIndex)?;
        let st = match &p.handshake {
            Some(st) if st.local_index == m.receiver => st,
            _ => return Err(HandshakeError::UnexpectedResponse),
        };
        let keys = noise::read_response(&self.local, &p.statics, st, m)?;
        p.handshake = None; // its index now belongs to the keypair
        let kp = Arc::new(Keypair::new(
            &keys, m.receiver, m.sender, true, now, self.mtu,
        ));
        // Initiator: the new keypair is current at once.
        let mut dropped = Vec::new();
        if let Some(next) = p.next.take() {
            dropped.push(p.previous.replace(next));
            dropped.push(p.current.take());
        } else {
            dropped.push(p.previous.take());
            p.previous = p.current.take();
        }
        p.current = Some(kp.clone());
        p.timers.session_derived(now);
        p.timers.handshake_complete();
        p.timers.authenticated_packet_traversal(now);
        p.timers.authenticated_packet_received();
        p.info.last_handshake = Some(self.epoch_wall + now.saturating_duration_since(self.epoch));
        self.outputs.push_back(Output::AddReceiver {
            peer: id,
            keypair: kp,
        });
        self.set_sending(id);
        for d in dropped {
            self.drop_keypair(d);
        }
        self.roam(id, src);
        self.outputs
            .push_back(Output::Event(Event::HandshakeCompleted { peer: id }));
        // Confirm the session to the responder (the data path may send queued
        // packets instead; a keepalive costs 32 bytes).
        self.outputs.push_back(Output::SendKeepalive { peer: id });
        Ok(())
    }

    /// Sends an initiation to the peer unless one went out less than
    /// REKEY_TIMEOUT ago (or `force` for a retry).
    fn send_initiation(&mut self, now: Instant, id: PeerId, retry: bool) {
        let jitter = self.jitter();
        let Some(p) = self.peers.get(&id) else { return };
        let Some(dst) = p.info.endpoint else { return };
        if !retry && !p.timers.may_initiate(now) {
            return;
        }
        self.drop_handshake(id);
        let local_index = self.alloc_index(id);
        let ts = noise::tai64n(self.wall(now));
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Ok((mut msg, st)) =
            noise::create_initiation(&self.local, &p.statics, local_index, &ts, &mut *self.rng)
        else {
            self.indices.remove(&local_index);
            return;
        };
        p.cookies.add_macs(now, &mut msg, INITIATION_MAC1);
        p.handshake = Some(st);
        p.timers.initiation_sent(now, jitter, retry);
        p.timers.authenticated_packet_traversal(now);
        p.timers.authenticated_packet_sent();
        let attempt = p.timers.handshake_attempts;
        self.outputs.push_back(Output::Transmit {
            dst,
            data: msg.to_vec(),
        });
        self.outputs
            .push_back(Output::Event(Event::HandshakeInitiated {
                peer: id,
                attempt,
            }));
    }

    // ---- reports from the data path ----

    /// The data path authenticated a transport packet on keypair
    /// `local_index` (a keepalive if `keepalive`) from `src`.
    pub fn on_data_received(
        &mut self,
        now: Instant,
        local_index: u32,
        src: SocketAddr,
        keepalive: bool,
    ) {
        self.touch(now);
        let Some(&id) = self.indices.get(&local_index) else {
            return;
        };
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let is =
            |k: &Option<Arc<Keypair>>| k.as_ref().is_some_and(|k| k.local_index == local_index);
        if !(is(&p.current) || is(&p.previous) || is(&p.next)) {
            return; // the index of a pending handshake, not a keypair
        }
        if is(&p.next) {
            // Responder: the first packet on the new keypair confirms it.
            let old_prev = p.previous.take();
            p.previous = p.current.take();
            p.current = p.next.take();
            p.timers.handshake_complete();
            p.info.last_handshake =
                Some(self.epoch_wall + now.saturating_duration_since(self.epoch));
            self.drop_keypair(old_prev);
            self.set_sending(id);
            self.outputs
                .push_back(Output::Event(Event::HandshakeCompleted { peer: id }));
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let rekey = p
            .current
            .as_ref()
            .is_some_and(|k| rekey::should_rekey_on_receive(k, now, &p.timers));
        p.timers.authenticated_packet_traversal(now);
        p.timers.authenticated_packet_received();
        if !keepalive {
            p.timers.data_received(now);
        }
        self.roam(id, src);
        if rekey {
            if let Some(p) = self.peers.get_mut(&id) {
                p.timers.sent_last_minute_handshake = true;
            }
            self.send_initiation(now, id, false);
        }
    }

    /// The data path sent a transport packet (keepalive if `keepalive`) to `peer`.
    pub fn on_data_sent(&mut self, now: Instant, peer: PeerId, keepalive: bool) {
        self.touch(now);
        // The jitter is drawn only when the timer is armed: a draw from the
        // OS RNG is a syscall, and this runs for nearly every burst sent.
        let arm = !keepalive
            && self
                .peers
                .get(&peer)
                .is_some_and(|p| p.timers.new_handshake.is_none());
        let jitter = if arm { self.jitter() } else { Duration::ZERO };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.timers.authenticated_packet_traversal(now);
        p.timers.authenticated_packet_sent();
        if arm {
            p.timers.data_sent(now, jitter);
        }
        if p.current
            .as_ref()
            .is_some_and(|k| rekey::should_rekey_on_send(k, now))
        {
            self.send_initiation(now, peer, false);
        }
    }

    /// The data path has a packet for `peer` but no valid sending keypair.
    pub fn on_need_handshake(&mut self, now: Instant, peer: PeerId) {
        self.touch(now);
        self.send_initiation(now, peer, false);
    }

    /// A sealing key crossed its soft limit (`KeyStatus::Expiring`).
    pub fn on_key_expiring(&mut self, now: Instant, peer: PeerId) {
        self.touch(now);
        if self.peers.contains_key(&peer) {
            self.outputs
                .push_back(Output::Event(Event::KeyExpiring { peer }));
            self.send_initiation(now, peer, false);
        }
    }

    /// Key update on demand: a new handshake now, unless one was sent
    /// in the last 50 ms (the peer would drop it as a flood or replay).
    pub fn initiate_handshake(&mut self, now: Instant, peer: PeerId) {
        self.touch(now);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.timers
            .last_initiation_sent
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(50))
        {
            return;
        }
        p.timers.last_initiation_sent = None;
        self.send_initiation(now, peer, false);
    }

    // ---- time ----

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| p.timers.next_deadline())
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        self.limiter.gc(now);
        let ids: Vec<_> = self.peers.keys().copied().collect();
        for id in ids {
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            for action in p.timers.fire(now) {
                self.act(now, id, action);
            }
        }
    }

    fn act(&mut self, now: Instant, id: PeerId, action: Action) {
        match action {
            Action::Initiate { retry } => self.send_initiation(now, id, retry),
            Action::GiveUp => {
                self.drop_handshake(id);
                self.outputs
                    .push_back(Output::Event(Event::HandshakeFailed { peer: id }));
            }
            Action::Keepalive => {
                if self.sending_keypair(id).is_some() {
                    self.outputs.push_back(Output::SendKeepalive { peer: id });
                }
            }
            Action::PersistentKeepalive => {
                if self
                    .sending_keypair(id)
                    .is_some_and(|k| k.sealing.lifetime().check(now).is_ok())
                {
                    self.outputs.push_back(Output::SendKeepalive { peer: id });
                } else {
                    self.send_initiation(now, id, false);
                }
            }
            Action::ZeroKeys => {
                self.clear_sessions(id);
                self.outputs
                    .push_back(Output::Event(Event::KeysCleared { peer: id }));
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }
}
