//! The sans-I/O IKEv2 endpoint (quinn-proto style): datagrams and `now` in,
//! [`Output`]s drained with [`Endpoint::poll_output`], the next deadline from
//! [`Endpoint::poll_timeout`], timers fired by [`Endpoint::handle_timeout`].
//!
//! One endpoint serves one tunnel's [`Config`]; it holds every IKE SA of
//! that tunnel, as initiator ([`Endpoint::connect`]) or responder (IKE_SA_INIT
//! requests from the network). Implemented: IKE_SA_INIT (proposal
//! selection, INVALID_KE_PAYLOAD retry, COOKIE, NAT detection and the move
//! to port 4500), IKE_AUTH with PSK and the first CHILD SA (traffic-selector
//! narrowing), INFORMATIONAL (DELETE of IKE and CHILD SAs, liveness checks),
//! retransmission with exponential back-off, the message-ID window of 1 and
//! replay of the cached response to a duplicate request, DPD actions and
//! INITIAL_CONTACT. CREATE_CHILD_SA (new CHILD SAs, CHILD and IKE SA
//! rekeys, collisions, the rekey timers and the request queue) lives in
//! `rekey.rs`, a child module of this one.

use crate::auth::{self, AuthError};
use crate::config::{select_esp, select_ike, ts_subset, Config, IkeChoice};
use crate::crypto::{
    child_keymat, ct_eq, psk_auth, ChildKeys, DhGroup, DhPrivate, EspTransform, ExportError,
    IkeAlgs, IkeKeys, IkeRng, Secret, SkKeys,
};
use crate::fragment::{self, Added, FragDrop, FragState};
use crate::wire::{
    self, auth_method, exchange, find_notify, flags, notify, proto, pt, Delete, Header, Identity,
    Message, Notify, ParseError, Payload, TrafficSelector, HEADER_LEN,
};
use polytun_core::Limits;
use rekey::{Child, Op, SaRekey};
use sha1::Digest;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

#[path = "rekey.rs"]
mod rekey;
pub use rekey::{ChildSaInfo, DpdAction};

/// IKE port and the NAT-T port (RFC 3948).
pub const IKE_PORT: u16 = 500;
pub const NATT_PORT: u16 = 4500;

/// An IKE SA's handle: our SPI of it.
pub type SaId = u64;

/// The policy hook of RFC 8922 IV: is this authenticated peer identity
/// acceptable? Called after the configured `remote_id` check.
pub type IdentityValidator = Box<dyn Fn(&Identity) -> bool + Send>;

/// Everything the ESP layer needs to install one CHILD SA (both directions).
#[derive(Debug)]
pub struct ChildSaParams {
    pub ike_sa: SaId,
    /// SPI of inbound ESP packets (chosen by us).
    pub spi_in: u32,
    /// SPI of outbound ESP packets (chosen by the peer).
    pub spi_out: u32,
    pub transform: EspTransform,
    /// Keys for opening inbound packets: AEAD key | 4-byte salt, or the
    /// CBC key and the HMAC key.
    pub keymat_in: ChildKeys,
    pub keymat_out: ChildKeys,
    pub ts_local: Vec<TrafficSelector>,
    pub ts_remote: Vec<TrafficSelector>,
    pub lifetimes: Limits,
    /// Tunnel mode (transport mode is not negotiated yet).
    pub tunnel: bool,
    /// ESP in UDP on port 4500 with the peer at `remote` (RFC 3948).
    pub udp_encap: bool,
    pub remote: SocketAddr,
}

/// Why an IKE SA failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// No answer after every retransmission.
    #[error("no answer from the peer")]
    Timeout,
    /// The peer sent this error notify.
    #[error("the peer answered with error notify {0}")]
    PeerError(u16),
    /// The peer's PSK AUTH did not verify.
    #[error("the peer's AUTH does not verify with the PSK")]
    AuthenticationFailed,
    /// Certificate authentication failed (ours could not be made, or the
    /// peer's certificate or signature was refused).
    #[error("authentication failed: {0}")]
    Auth(crate::auth::AuthError),
    /// The peer's identity is not the configured one or the validator refused it.
    #[error("the peer's identity `{0}` is not the configured remote_id or was refused")]
    IdentityRejected(Identity),
    /// The peer chose a proposal we did not offer, or none of theirs fits.
    #[error("no proposal chosen")]
    NoProposalChosen,
    /// The peer's KE data or the message contents were invalid.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Half-open responder SA never completed.
    #[error("half-open SA expired")]
    HalfOpenExpired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The IKE SA is authenticated (and the first CHILD SA, if any, installed).
    Established {
        sa: SaId,
        initiator: bool,
        peer: Identity,
        algs: IkeAlgs,
        remote: SocketAddr,
    },
    /// The IKE SA is gone (`InstallChildSa`s were already undone with `DeleteChildSa`).
    Failed { sa: SaId, reason: FailReason },
    /// The first CHILD SA could not be created (the IKE SA stands).
    ChildFailed { sa: SaId, notify: u16 },
    /// The IKE SA was closed by us or deleted by the peer.
    Closed { sa: SaId, by_peer: bool },
    /// NAT detected (`local`: we are behind it; `remote`: the peer is).
    NatDetected { sa: SaId, local: bool, remote: bool },
    /// A CHILD SA was rekeyed: outbound traffic moved from the old SPIs to
    /// the new ones (emitted with [`Output::SwitchChildSaOutbound`]).
    ChildRekeyed {
        sa: SaId,
        old_spi_in: u32,
        old_spi_out: u32,
        new_spi_in: u32,
        new_spi_out: u32,
    },
    /// The IKE SA `old` was rekeyed into `new` (RFC 7296 §2.18): every CHILD
    /// SA of `old` now belongs to `new`; `old` goes away without a
    /// `Closed` event.
    IkeRekeyed { old: SaId, new: SaId },
    /// Both sides rekeyed the same SA at once (§2.8.1, §2.8.2); `child` is
    /// the old CHILD SA's inbound SPI (`None`: the IKE SA). `won`: our
    /// exchange's SA survives (the other one is deleted by its creator).
    RekeyCollision {
        sa: SaId,
        child: Option<u32>,
        won: bool,
    },
    /// A rekey (`child`: old inbound SPI, `None`: the IKE SA) or a
    /// CREATE_CHILD_SA failed with this notify; it is retried later.
    RekeyFailed {
        sa: SaId,
        child: Option<u32>,
        notify: u16,
    },
    /// DPD found the peer dead and `dpd_action` is `Restart`: a new IKE SA
    /// `new` is being initiated to replace `old`.
    Restarting { old: SaId, new: SaId },
    /// The peer sent INITIAL_CONTACT in the IKE_AUTH of `sa` (RFC 7296
    /// §2.4): it holds no other SA with us, so the IKE SAs `stale` (never
    /// empty) with the same identity were deleted (their `DeleteChildSa`s and `Closed`
    /// events follow). A daemon moves its traffic and bookkeeping to `sa`.
    InitialContact {
        sa: SaId,
        peer: Identity,
        stale: Vec<SaId>,
    },
}

#[derive(Debug)]
pub enum Output {
    /// Send `bytes` from our port `local_port` (500 or 4500) to `dst`. On
    /// 4500 the bytes already start with the non-ESP marker.
    Transmit {
        local_port: u16,
        dst: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Install this CHILD SA in the ESP layer.
    InstallChildSa(Box<ChildSaParams>),
    /// Remove the CHILD SA with these SPIs.
    DeleteChildSa {
        ike_sa: SaId,
        spi_in: u32,
        spi_out: u32,
    },
    /// Make-before-break, step 1: a CHILD SA created by a rekey. Install
    /// its inbound half (`spi_in`, `keymat_in`) now, so it decrypts at once,
    /// and keep its outbound half (`spi_out`, `keymat_out`) ready but
    /// UNUSED: outbound traffic stays on the SA it replaces (`replaces`,
    /// that SA's inbound SPI) until [`Output::SwitchChildSaOutbound`].
    InstallChildSaInbound {
        params: Box<ChildSaParams>,
        replaces: Option<u32>,
    },
    /// Make-before-break, step 2: send this CHILD SA's traffic with
    /// `new_spi_out` (installed earlier by `InstallChildSaInbound`) from now
    /// on, no longer with `old_spi_out`. The old SA keeps decrypting until
    /// its [`Output::DeleteChildSa`] (step 3).
    SwitchChildSaOutbound {
        ike_sa: SaId,
        old_spi_out: Option<u32>,
        new_spi_in: u32,
        new_spi_out: u32,
    },
    Event(Event),
}

/// Why a datagram was dropped (the daemon counts these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("malformed: {0}")]
    Malformed(#[from] ParseError),
    #[error("ESP packet on port 4500 (not IKE)")]
    NotIke,
    #[error("no IKE SA with this SPI")]
    UnknownSa,
    #[error("integrity check or decryption failed")]
    Integrity,
    #[error("message ID outside the window")]
    BadMessageId,
    #[error("unexpected message in this state")]
    Unexpected,
    #[error("answered statelessly ({0})")]
    Stateless(&'static str),
    #[error("request is missing a mandatory payload ({0})")]
    Missing(&'static str),
    /// An IKE fragment (RFC 7383) that was duplicate, inconsistent with the
    /// others of its message, or not negotiated.
    #[error("IKE fragment dropped: {0}")]
    Fragment(&'static str),
}

/// What an [`Endpoint`] received, sent and dropped (for `polytun show`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IkeStats {
    /// Messages we sent in fragments, and the fragments of them (RFC 7383).
    pub fragmented_sent: u64,
    pub fragments_sent: u64,
    /// Authenticated fragments accepted, and messages reassembled from them.
    pub fragments_received: u64,
    pub reassembled: u64,
    /// Dropped datagrams, by [`DropReason`].
    pub malformed: u64,
    pub integrity: u64,
    pub bad_message_id: u64,
    pub unknown_sa: u64,
    pub unexpected: u64,
    pub stateless: u64,
    pub fragment_dropped: u64,
}

impl IkeStats {
    fn count_drop(&mut self, e: &DropReason) {
        let c = match e {
            DropReason::Malformed(_) | DropReason::NotIke | DropReason::Missing(_) => {
                &mut self.malformed
            }
            DropReason::Integrity => &mut self.integrity,
            DropReason::BadMessageId => &mut self.bad_message_id,
            DropReason::UnknownSa => &mut self.unknown_sa,
            DropReason::Unexpected => &mut self.unexpected,
            DropReason::Stateless(_) => &mut self.stateless,
            DropReason::Fragment(_) => &mut self.fragment_dropped,
        };
        *c += 1;
    }

    fn sent(&mut self, packets: &[Vec<u8>]) {
        if packets.len() > 1 {
            self.fragmented_sent += 1;
            self.fragments_sent += packets.len() as u64;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    HalfOpen,
    Established,
    /// Initiator: INFORMATIONAL Delete of the IKE SA sent.
    Deleting,
}

struct Pending {
    message_id: u32,
    /// The request's datagrams (several when fragmented, RFC 7383).
    bytes: Vec<Vec<u8>>,
    retries: u32,
    deadline: Instant,
    /// When it was first sent (for `Config::dpd_timeout`).
    sent: Instant,
    /// What the request is for (rekey state lives here until the answer).
    op: Op,
}

struct IkeSa {
    initiator: bool,
    state: State,
    spi_i: [u8; 8],
    spi_r: [u8; 8],
    remote: SocketAddr,
    local_port: u16,
    created: Instant,
    last_heard: Instant,
    // IKE_SA_INIT
    dh: Option<DhPrivate>,
    dh_group: DhGroup,
    ni: Vec<u8>,
    nr: Vec<u8>,
    cookie: Option<Vec<u8>>,
    ke_retries: u32,
    cookie_retries: u32,
    init_req: Vec<u8>,
    init_resp: Vec<u8>,
    choice: Option<IkeChoice>,
    algs: Option<IkeAlgs>,
    keys: Option<IkeKeys>,
    sk_out: Option<SkKeys>,
    sk_in: Option<SkKeys>,
    nat_local: bool,
    nat_remote: bool,
    // message IDs
    next_request_id: u32,
    expected_request_id: u32,
    pending: Option<Pending>,
    last_response: Option<(u32, Vec<Vec<u8>>)>,
    iv_counter: u64,
    // CHILD SAs
    first_child_spi: u32,
    children: Vec<Child>,
    peer_id: Option<Identity>,
    /// Rekey, CREATE_CHILD_SA and queued-exchange state (see rekey.rs).
    rk: SaRekey,
    /// IKE fragmentation (RFC 7383): negotiated size and reassembly.
    frag: FragState,
}

impl IkeSa {
    fn encap(&self) -> bool {
        self.local_port == NATT_PORT
    }
}

/// The IKE endpoint of one tunnel.
pub struct Endpoint {
    config: Config,
    local_ip: IpAddr,
    rng: Box<dyn IkeRng>,
    sas: HashMap<SaId, IkeSa>,
    /// Responder half-open SAs by (peer address, peer SPI) for duplicate IKE_SA_INIT.
    half_open: HashMap<(SocketAddr, [u8; 8]), SaId>,
    outputs: VecDeque<Output>,
    cookie_secret: Zeroizing<[u8; 32]>,
    validator: Option<IdentityValidator>,
    stats: IkeStats,
}

fn sha1(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = sha1::Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().to_vec()
}

/// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | port) (§2.23).
pub fn nat_hash(spi_i: &[u8; 8], spi_r: &[u8; 8], addr: SocketAddr) -> Vec<u8> {
    let ip = match addr.ip() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    sha1(&[spi_i, spi_r, &ip, &addr.port().to_be_bytes()])
}

impl Endpoint {
    /// `local_ip`: the address the daemon sends from (for NAT detection).
    pub fn new(config: Config, local_ip: IpAddr, mut rng: Box<dyn IkeRng>) -> Endpoint {
        let mut cookie_secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut cookie_secret[..]);
        Endpoint {
            config,
            local_ip,
            rng,
            sas: HashMap::new(),
            half_open: HashMap::new(),
            outputs: VecDeque::new(),
            cookie_secret,
            validator: None,
            stats: IkeStats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Fragments and drops so far.
    pub fn stats(&self) -> IkeStats {
        self.stats
    }

    pub fn set_identity_validator(&mut self, v: Option<IdentityValidator>) {
        self.validator = v;
    }

    /// IKE SAs currently held.
    pub fn sa_ids(&self) -> Vec<SaId> {
        self.sas.keys().copied().collect()
    }

    /// Is this IKE SA established?
    pub fn is_established(&self, sa: SaId) -> bool {
        self.sas
            .get(&sa)
            .is_some_and(|s| s.state == State::Established)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn new_spi(&mut self) -> [u8; 8] {
        loop {
            let mut s = [0u8; 8];
            self.rng.fill_bytes(&mut s);
            let id = u64::from_be_bytes(s);
            if id != 0 && !self.sas.contains_key(&id) {
                return s;
            }
        }
    }

    fn new_child_spi(&mut self) -> u32 {
        loop {
            let s = self.rng.next_u32();
            if s >= 256 {
                return s;
            }
        }
    }

    fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; 32];
        self.rng.fill_bytes(&mut n);
        n
    }

    // ------------------------------------------------------------ initiator

    /// Starts an IKE SA with the peer at `remote` (port 500, or 4500 to
    /// start encapsulated). Returns its handle.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> SaId {
        let spi_i = self.new_spi();
        let group = self.config.ike_proposals[0].dh[0];
        let dh = DhPrivate::generate(group, &mut *self.rng);
        let ni = self.nonce();
        let first_child_spi = self.new_child_spi();
        let local_port = if remote.port() == NATT_PORT {
            NATT_PORT
        } else {
            IKE_PORT
        };
        let sa = IkeSa {
            initiator: true,
            state: State::InitSent,
            spi_i,
            spi_r: [0; 8],
            remote,
            local_port,
            created: now,
            last_heard: now,
            dh: Some(dh),
            dh_group: group,
            ni,
            nr: Vec::new(),
            cookie: None,
            ke_retries: 0,
            cookie_retries: 0,
            init_req: Vec::new(),
            init_resp: Vec::new(),
            choice: None,
            algs: None,
            keys: None,
            sk_out: None,
            sk_in: None,
            nat_local: false,
            nat_remote: false,
            next_request_id: 0,
            expected_request_id: 0,
            pending: None,
            last_response: None,
            iv_counter: 0,
            first_child_spi,
            children: Vec::new(),
            peer_id: None,
            rk: SaRekey::default(),
            frag: FragState::default(),
        };
        let id = u64::from_be_bytes(spi_i);
        self.sas.insert(id, sa);
        self.send_init_request(now, id);
        id
    }

    fn send_init_request(&mut self, now: Instant, id: SaId) {
        let local = SocketAddr::new(self.local_ip, IKE_PORT);
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let mut payloads = Vec::new();
        if let Some(c) = &sa.cookie {
            payloads.push(Payload::Notify(Notify::new(notify::COOKIE, c.clone())));
        }
        let props = self
            .config
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1))
            .collect();
        payloads.push(Payload::Sa(props));
        let dh = sa.dh.as_ref().expect("initiator has DH");
        payloads.push(Payload::Ke {
            group: dh.group().id(),
            data: dh.public().to_vec(),
        });
        payloads.push(Payload::Nonce(sa.ni.clone()));
        let zero = [0u8; 8];
        payloads.push(Payload::Notify(Notify::new(
            notify::NAT_DETECTION_SOURCE_IP,
            nat_hash(&sa.spi_i, &zero, local),
        )));
        payloads.push(Payload::Notify(Notify::new(
            notify::NAT_DETECTION_DESTINATION_IP,
            nat_hash(&sa.spi_i, &zero, sa.remote),
        )));
        if self.config.pubkey.is_some() {
            payloads.push(auth::hash_notify());
        }
        if self.config.fragmentation {
            payloads.push(Payload::Notify(Notify::new(
                notify::IKEV2_FRAGMENTATION_SUPPORTED,
                vec![],
            )));
        }
        let m = Message {
            header: Header {
                spi_i: sa.spi_i,
                spi_r: [0; 8],
                next_payload: 0,
                version: 0x20,
                exchange: exchange::IKE_SA_INIT,
                flags: flags::INITIATOR,
                message_id: 0,
                length: 0,
            },
            payloads,
        };
        let bytes = m.to_bytes();
        sa.init_req = bytes.clone();
        sa.next_request_id = 1;
        Self::send_request(&self.config, &mut self.outputs, sa, now, 0, vec![bytes]);
    }

    fn send_request(
        config: &Config,
        outputs: &mut VecDeque<Output>,
        sa: &mut IkeSa,
        now: Instant,
        message_id: u32,
        bytes: Vec<Vec<u8>>,
    ) {
        transmit_all(outputs, sa, &bytes);
        sa.pending = Some(Pending {
            message_id,
            bytes,
            retries: 0,
            deadline: now + config.retransmit.timeout(0),
            sent: now,
            op: Op::Other,
        });
    }

    /// Sends an encrypted request of `exch` with `inner` payloads.
    fn send_encrypted_request(&mut self, now: Instant, id: SaId, exch: u8, inner: Vec<Payload>) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let mid = sa.next_request_id;
        sa.next_request_id += 1;
        let bytes = encrypt(&mut *self.rng, sa, exch, mid, false, &inner);
        self.stats.sent(&bytes);
        Self::send_request(&self.config, &mut self.outputs, sa, now, mid, bytes);
    }

    // ------------------------------------------------------------ input

    /// Handles one UDP payload received on our port `local_port` from
    /// `remote`. On port 4500 the datagram starts with the non-ESP marker
    /// (ESP packets are refused with [`DropReason::NotIke`]). A drop is
    /// also counted in [`Endpoint::stats`].
    pub fn handle(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_port: u16,
        datagram: &[u8],
    ) -> Result<(), DropReason> {
        let r = self.receive(now, remote, local_port, datagram);
        if let Err(e) = &r {
            self.stats.count_drop(e);
        }
        r
    }

    fn receive(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_port: u16,
        datagram: &[u8],
    ) -> Result<(), DropReason> {
        let data = if local_port == NATT_PORT {
            match datagram {
                [0, 0, 0, 0, rest @ ..] => rest,
                [0xff] => return Err(DropReason::NotIke), // NAT keepalive
                _ => return Err(DropReason::NotIke),
            }
        } else {
            datagram
        };
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(ParseError::UnsupportedCritical(t)) => {
                return Err(DropReason::Malformed(ParseError::UnsupportedCritical(t)))
            }
            Err(e) => return Err(e.into()),
        };
        let h = msg.header;
        if h.exchange == exchange::IKE_SA_INIT && !h.is_response() && h.spi_r == [0; 8] {
            return self.responder_init(now, remote, local_port, data, msg);
        }
        // the original initiator sets I in all its messages; we are the responder then
        let local = if h.is_initiator() { h.spi_r } else { h.spi_i };
        let id = u64::from_be_bytes(local);
        let Some(sa) = self.sas.get_mut(&id) else {
            return Err(DropReason::UnknownSa);
        };
        if sa.initiator == h.is_initiator() {
            return Err(DropReason::UnknownSa);
        }
        if h.is_response() {
            let Some(p) = &sa.pending else {
                return Err(DropReason::Unexpected);
            };
            if p.message_id != h.message_id {
                return Err(DropReason::BadMessageId);
            }
            if h.exchange == exchange::IKE_SA_INIT {
                if sa.state != State::InitSent {
                    return Err(DropReason::Unexpected);
                }
                return self.initiator_init_response(now, id, remote, local_port, data, msg);
            }
            let inner = match fragment::skf_of(&msg) {
                Some((first, body)) => {
                    match Self::reassemble(&mut self.stats, sa, data, &h, first, body)? {
                        Some(inner) => inner,
                        None => return Ok(()),
                    }
                }
                None => decrypt(sa, data, &msg)?,
            };
            let op = sa.pending.take().map_or(Op::Other, |p| p.op);
            sa.last_heard = now;
            let r = match (h.exchange, sa.state) {
                (exchange::IKE_AUTH, State::AuthSent) => {
                    self.initiator_auth_response(now, id, inner)
                }
                (exchange::CREATE_CHILD_SA, _) => self.create_child_response(now, id, op, inner),
                (exchange::INFORMATIONAL, _) if op.is_delete() => {
                    self.delete_response(now, id, op);
                    Ok(())
                }
                (exchange::INFORMATIONAL, State::Deleting) => {
                    self.remove_sa(
                        id,
                        Event::Closed {
                            sa: id,
                            by_peer: false,
                        },
                    );
                    Ok(())
                }
                (exchange::INFORMATIONAL, _) => Ok(()),
                _ => Err(DropReason::Unexpected),
            };
            self.kick(now, id);
            return r;
        }
        // a request
        if h.exchange == exchange::IKE_SA_INIT {
            // retransmitted IKE_SA_INIT that already carries our SPI: ignore
            return Err(DropReason::Unexpected);
        }
        if let Some((mid, resp)) = &sa.last_response {
            if *mid == h.message_id {
                // duplicate: answer from the cache (after checking integrity)
                let resp = resp.clone();
                if let Some((_, body)) = fragment::skf_of(&msg) {
                    let (f, sealed) = fragment::parse_skf(body)?;
                    let sk = sa.sk_in.as_ref().ok_or(DropReason::Unexpected)?;
                    fragment::open_fragment(sk, data, sealed).map_err(|_| DropReason::Integrity)?;
                    // RFC 7383 §2.6.1: only fragment 1 of a retransmitted
                    // request triggers the response again
                    if f.number != 1 {
                        return Ok(());
                    }
                } else {
                    decrypt(sa, data, &msg)?;
                }
                transmit_all(&mut self.outputs, sa, &resp);
                return Ok(());
            }
        }
        if h.message_id != sa.expected_request_id {
            return Err(DropReason::BadMessageId);
        }
        let inner = match fragment::skf_of(&msg) {
            Some((first, body)) => {
                match Self::reassemble(&mut self.stats, sa, data, &h, first, body)? {
                    Some(inner) => inner,
                    None => return Ok(()),
                }
            }
            None => decrypt(sa, data, &msg)?,
        };
        sa.last_heard = now;
        // follow the peer to port 4500 (and its NAT mapping) once authenticated
        if local_port == NATT_PORT && sa.local_port != NATT_PORT {
            sa.local_port = NATT_PORT;
        }
        // §2.23: follow a NATed peer's new mapping (authenticated requests
        // only); without NAT the address changes only through MOBIKE
        if sa.state == State::Established && sa.nat_remote {
            sa.remote = remote;
        }
        match (h.exchange, sa.state) {
            (exchange::IKE_AUTH, State::HalfOpen) => {
                sa.remote = remote;
                self.responder_auth(now, id, h.message_id, inner)
            }
            (exchange::INFORMATIONAL, State::Established | State::Deleting) => {
                self.informational_request(now, id, h.message_id, inner)
            }
            (exchange::CREATE_CHILD_SA, State::Established) => {
                self.create_child_request(now, id, h.message_id, inner)
            }
            _ => Err(DropReason::Unexpected),
        }
    }

    /// One authenticated fragment (RFC 7383) of the message the caller
    /// validated the message ID of: `Some(inner payloads)` once complete.
    fn reassemble(
        stats: &mut IkeStats,
        sa: &mut IkeSa,
        raw: &[u8],
        h: &Header,
        first: u8,
        body: &[u8],
    ) -> Result<Option<Vec<Payload>>, DropReason> {
        let Some(sk) = sa.sk_in.as_ref() else {
            return Err(DropReason::Unexpected);
        };
        if sa.frag.size.is_none() {
            return Err(DropReason::Fragment("fragmentation was not negotiated"));
        }
        let r = match sa.frag.add(sk, raw, h, first, body) {
            Ok(r) => r,
            Err(FragDrop::Integrity) => return Err(DropReason::Integrity),
            Err(FragDrop::Malformed(w) | FragDrop::Inconsistent(w)) => {
                return Err(DropReason::Fragment(w))
            }
            Err(FragDrop::Duplicate) => return Err(DropReason::Fragment("duplicate")),
            Err(FragDrop::TooLarge) => {
                return Err(DropReason::Fragment("reassembled message too large"))
            }
        };
        stats.fragments_received += 1;
        match r {
            Added::More => Ok(None),
            Added::Complete(first, plain) => {
                stats.reassembled += 1;
                Ok(Some(wire::parse_chain(first, &plain)?))
            }
        }
    }

    fn respond(&mut self, id: SaId, exch: u8, mid: u32, inner: Vec<Payload>) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let bytes = encrypt(&mut *self.rng, sa, exch, mid, true, &inner);
        self.stats.sent(&bytes);
        transmit_all(&mut self.outputs, sa, &bytes);
        sa.last_response = Some((mid, bytes));
        sa.expected_request_id = mid.wrapping_add(1);
    }

    // ------------------------------------------------------------ responder IKE_SA_INIT

    fn stateless_reply(&mut self, remote: SocketAddr, local_port: u16, h: &Header, n: Notify) {
        let m = Message {
            header: Header {
                spi_i: h.spi_i,
                spi_r: [0; 8],
                next_payload: 0,
                version: 0x20,
                exchange: exchange::IKE_SA_INIT,
                flags: flags::RESPONSE,
                message_id: 0,
                length: 0,
            },
            payloads: vec![Payload::Notify(n)],
        };
        let mut bytes = Vec::new();
        if local_port == NATT_PORT {
            bytes.extend_from_slice(&[0; 4]);
        }
        bytes.extend_from_slice(&m.to_bytes());
        self.outputs.push_back(Output::Transmit {
            local_port,
            dst: remote,
            bytes,
        });
    }

    fn cookie_for(&self, ni: &[u8], remote: SocketAddr, spi_i: &[u8; 8]) -> Vec<u8> {
        // <VersionIDofSecret> | SHA-256(Ni | IPi | port | SPIi | secret) (§2.6)
        let mut h = sha2::Sha256::new();
        h.update(ni);
        h.update(remote.ip().to_string().as_bytes());
        h.update(remote.port().to_be_bytes());
        h.update(spi_i);
        h.update(&self.cookie_secret[..]);
        let mut c = vec![0u8];
        c.extend_from_slice(&h.finalize());
        c
    }

    fn responder_init(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_port: u16,
        data: &[u8],
        msg: Message,
    ) -> Result<(), DropReason> {
        let h = msg.header;
        if h.message_id != 0 {
            return Err(DropReason::BadMessageId);
        }
        if let Some(id) = self.half_open.get(&(remote, h.spi_i)).copied() {
            if let Some(sa) = self.sas.get(&id) {
                if sa.init_req == data {
                    let resp = sa.init_resp.clone();
                    transmit(&mut self.outputs, sa, &resp);
                    return Ok(());
                }
            }
            return Err(DropReason::Unexpected);
        }
        let mut props = None;
        let mut ke = None;
        let mut ni = None;
        for p in &msg.payloads {
            match p {
                Payload::Sa(s) => props = Some(s),
                Payload::Ke { group, data } => ke = Some((*group, data)),
                Payload::Nonce(n) => ni = Some(n),
                _ => {}
            }
        }
        let (Some(props), Some((ke_group, ke_data)), Some(ni)) = (props, ke, ni) else {
            self.stateless_reply(
                remote,
                local_port,
                &h,
                Notify::new(notify::INVALID_SYNTAX, vec![]),
            );
            return Err(DropReason::Missing("SA, KE or Nonce"));
        };
        // SAV: cookies when too many SAs are half-open
        let half_open = self
            .sas
            .values()
            .filter(|s| s.state == State::HalfOpen)
            .count();
        if half_open >= self.config.cookie_threshold {
            let want = self.cookie_for(ni, remote, &h.spi_i);
            let ok = matches!(msg.payloads.first(), Some(Payload::Notify(n))
                if n.ntype == notify::COOKIE && ct_eq(&n.data, &want));
            if !ok {
                self.stateless_reply(remote, local_port, &h, Notify::new(notify::COOKIE, want));
                return Err(DropReason::Stateless("COOKIE"));
            }
        }
        let Some(choice) = select_ike(&self.config.ike_proposals, props) else {
            self.stateless_reply(
                remote,
                local_port,
                &h,
                Notify::new(notify::NO_PROPOSAL_CHOSEN, vec![]),
            );
            return Err(DropReason::Stateless("NO_PROPOSAL_CHOSEN"));
        };
        let group = match DhGroup::from_id(ke_group) {
            Some(g) if choice.dh.contains(&g) => g,
            _ => {
                let want = choice.dh[0].id().to_be_bytes().to_vec();
                self.stateless_reply(
                    remote,
                    local_port,
                    &h,
                    Notify::new(notify::INVALID_KE_PAYLOAD, want),
                );
                return Err(DropReason::Stateless("INVALID_KE_PAYLOAD"));
            }
        };
        let dh = DhPrivate::generate(group, &mut *self.rng);
        let Ok(shared) = dh.shared(ke_data) else {
            self.stateless_reply(
                remote,
                local_port,
                &h,
                Notify::new(notify::INVALID_SYNTAX, vec![]),
            );
            return Err(DropReason::Stateless("bad KE"));
        };
        let spi_r = self.new_spi();
        let nr = self.nonce();
        let algs = choice.algs(group);
        let keys = IkeKeys::derive(&algs, &shared, ni, &nr, &h.spi_i, &spi_r);
        let local = SocketAddr::new(self.local_ip, local_port);
        let (nat_local, nat_remote) = nat_flags(&msg.payloads, &h.spi_i, &[0; 8], local, remote);
        let frag = self.config.fragmentation
            && msg.notify(notify::IKEV2_FRAGMENTATION_SUPPORTED).is_some();
        let mut payloads = vec![
            Payload::Sa(vec![choice.to_wire(group)]),
            Payload::Ke {
                group: group.id(),
                data: dh.public().to_vec(),
            },
            Payload::Nonce(nr.clone()),
            Payload::Notify(Notify::new(
                notify::NAT_DETECTION_SOURCE_IP,
                nat_hash(&h.spi_i, &spi_r, local),
            )),
            Payload::Notify(Notify::new(
                notify::NAT_DETECTION_DESTINATION_IP,
                nat_hash(&h.spi_i, &spi_r, remote),
            )),
        ];
        if let Some(p) = &self.config.pubkey {
            // as strongSwan: name our CAs here, so the initiator sends its certificate
            payloads.insert(3, p.certreq_payload());
            payloads.push(auth::hash_notify());
        }
        if frag {
            payloads.push(Payload::Notify(Notify::new(
                notify::IKEV2_FRAGMENTATION_SUPPORTED,
                vec![],
            )));
        }
        let resp = Message {
            header: Header {
                spi_i: h.spi_i,
                spi_r,
                next_payload: 0,
                version: 0x20,
                exchange: exchange::IKE_SA_INIT,
                flags: flags::RESPONSE,
                message_id: 0,
                length: 0,
            },
            payloads,
        }
        .to_bytes();
        let mut sa = IkeSa {
            initiator: false,
            state: State::HalfOpen,
            spi_i: h.spi_i,
            spi_r,
            remote,
            local_port,
            created: now,
            last_heard: now,
            dh: None,
            dh_group: group,
            ni: ni.clone(),
            nr,
            cookie: None,
            ke_retries: 0,
            cookie_retries: 0,
            init_req: data.to_vec(),
            init_resp: resp.clone(),
            choice: Some(choice),
            sk_out: Some(keys.sk(&algs, false)),
            sk_in: Some(keys.sk(&algs, true)),
            algs: Some(algs),
            keys: Some(keys),
            nat_local,
            nat_remote,
            next_request_id: 0,
            expected_request_id: 1,
            pending: None,
            last_response: None,
            iv_counter: 0,
            first_child_spi: 0,
            children: Vec::new(),
            peer_id: None,
            rk: SaRekey::default(),
            frag: FragState::default(),
        };
        if frag {
            sa.frag.enable(self.config.fragment_size);
        }
        transmit(&mut self.outputs, &sa, &resp);
        let id = u64::from_be_bytes(spi_r);
        self.half_open.insert((remote, h.spi_i), id);
        self.sas.insert(id, sa);
        if nat_local || nat_remote {
            self.outputs.push_back(Output::Event(Event::NatDetected {
                sa: id,
                local: nat_local,
                remote: nat_remote,
            }));
        }
        Ok(())
    }

    // ------------------------------------------------------------ initiator IKE_SA_INIT response

    fn initiator_init_response(
        &mut self,
        now: Instant,
        id: SaId,
        remote: SocketAddr,
        local_port: u16,
        data: &[u8],
        msg: Message,
    ) -> Result<(), DropReason> {
        let first_contact = self.first_contact(id);
        let sa = self.sas.get_mut(&id).expect("caller checked");
        if let Some(c) = msg.notify(notify::COOKIE) {
            if sa.cookie_retries >= 3 || c.data.is_empty() || c.data.len() > 64 {
                return Err(DropReason::Unexpected);
            }
            sa.cookie_retries += 1;
            sa.cookie = Some(c.data.clone());
            self.send_init_request(now, id);
            return Ok(());
        }
        if let Some(n) = msg.notify(notify::INVALID_KE_PAYLOAD) {
            let wanted = (n.data.len() == 2)
                .then(|| DhGroup::from_id(u16::from_be_bytes([n.data[0], n.data[1]])))
                .flatten();
            let offered = self
                .config
                .ike_proposals
                .iter()
                .any(|p| wanted.is_some_and(|w| p.dh.contains(&w)));
            match wanted {
                Some(g) if offered && g != sa.dh_group && sa.ke_retries < 2 => {
                    sa.ke_retries += 1;
                    sa.dh_group = g;
                    sa.dh = Some(DhPrivate::generate(g, &mut *self.rng));
                    self.send_init_request(now, id);
                    return Ok(());
                }
                _ => {
                    self.remove_sa(
                        id,
                        Event::Failed {
                            sa: id,
                            reason: FailReason::PeerError(notify::INVALID_KE_PAYLOAD),
                        },
                    );
                    return Ok(());
                }
            }
        }
        if let Some(n) = msg.payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.is_error() => Some(n.ntype),
            _ => None,
        }) {
            self.remove_sa(
                id,
                Event::Failed {
                    sa: id,
                    reason: FailReason::PeerError(n),
                },
            );
            return Ok(());
        }
        let h = msg.header;
        let mut props = None;
        let mut ke = None;
        let mut nr = None;
        for p in &msg.payloads {
            match p {
                Payload::Sa(s) => props = Some(s),
                Payload::Ke { group, data } => ke = Some((*group, data)),
                Payload::Nonce(n) => nr = Some(n),
                _ => {}
            }
        }
        let (Some(props), Some((ke_group, ke_data)), Some(nr)) = (props, ke, nr) else {
            return Err(DropReason::Missing("SA, KE or Nonce"));
        };
        // the chosen proposal must be one of ours, with one transform of each type
        let choice = match (props.len(), select_ike(&self.config.ike_proposals, props)) {
            (1, Some(c)) if c.dh.contains(&sa.dh_group) && ke_group == sa.dh_group.id() => c,
            _ => {
                self.remove_sa(
                    id,
                    Event::Failed {
                        sa: id,
                        reason: FailReason::NoProposalChosen,
                    },
                );
                return Ok(());
            }
        };
        let dh = sa.dh.take().expect("initiator DH");
        let Ok(shared) = dh.shared(ke_data) else {
            self.remove_sa(
                id,
                Event::Failed {
                    sa: id,
                    reason: FailReason::Invalid("KE"),
                },
            );
            return Ok(());
        };
        sa.spi_r = h.spi_r;
        sa.nr = nr.clone();
        sa.init_resp = data.to_vec();
        let algs = choice.algs(sa.dh_group);
        let keys = IkeKeys::derive(&algs, &shared, &sa.ni, &sa.nr, &sa.spi_i, &sa.spi_r);
        sa.sk_out = Some(keys.sk(&algs, true));
        sa.sk_in = Some(keys.sk(&algs, false));
        sa.algs = Some(algs);
        sa.keys = Some(keys);
        sa.choice = Some(choice);
        sa.pending = None;
        sa.last_heard = now;
        let local = SocketAddr::new(self.local_ip, local_port);
        let (nat_local, nat_remote) = nat_flags(&msg.payloads, &sa.spi_i, &sa.spi_r, local, remote);
        sa.nat_local = nat_local;
        sa.nat_remote = nat_remote;
        if self.config.fragmentation && msg.notify(notify::IKEV2_FRAGMENTATION_SUPPORTED).is_some()
        {
            sa.frag.enable(self.config.fragment_size);
        }
        if nat_local || nat_remote {
            self.outputs.push_back(Output::Event(Event::NatDetected {
                sa: id,
                local: nat_local,
                remote: nat_remote,
            }));
        }
        // §2.23: move to port 4500 behind a NAT (or when forced)
        if (nat_local || nat_remote || self.config.force_encap) && sa.local_port != NATT_PORT {
            sa.local_port = NATT_PORT;
            sa.remote.set_port(NATT_PORT);
        }
        // IKE_AUTH request: IDi, [CERT+], [CERTREQ], [IDr], AUTH, ...
        let idi = self.config.local_id.clone();
        let (certs, auth) = match self.our_auth(id) {
            Ok(a) => a,
            Err(e) => {
                self.remove_sa(
                    id,
                    Event::Failed {
                        sa: id,
                        reason: FailReason::Auth(e),
                    },
                );
                return Ok(());
            }
        };
        let sa = self.sas.get_mut(&id).expect("still there");
        let mut inner = vec![Payload::IdI(idi)];
        inner.extend(certs);
        if let Some(p) = &self.config.pubkey {
            inner.push(p.certreq_payload());
        }
        if let Some(r) = &self.config.remote_id {
            inner.push(Payload::IdR(r.clone()));
        }
        inner.push(auth);
        if self.config.initial_contact && first_contact {
            inner.push(Payload::Notify(Notify::new(
                notify::INITIAL_CONTACT,
                vec![],
            )));
        }
        if !self.config.esp_proposals.is_empty() {
            let spi = sa.first_child_spi;
            let props = self
                .config
                .esp_proposals
                .iter()
                .enumerate()
                .map(|(i, p)| p.to_wire(i as u8 + 1, spi, false))
                .collect();
            inner.push(Payload::Sa(props));
            inner.push(Payload::TsI(self.config.local_ts.clone()));
            inner.push(Payload::TsR(self.config.remote_ts.clone()));
        }
        sa.state = State::AuthSent;
        self.send_encrypted_request(now, id, exchange::IKE_AUTH, inner);
        Ok(())
    }

    /// Our AUTH payload for IKE_AUTH (§2.15), and the CERT payloads to send
    /// before it: PSK MAC, or an RFC 7427 signature with our certificate.
    fn our_auth(&self, id: SaId) -> Result<(Vec<Payload>, Payload), AuthError> {
        let sa = self.sas.get(&id).expect("caller checked");
        let algs = sa.algs.expect("keys");
        let keys = sa.keys.as_ref().expect("keys");
        let (our_msg, peer_nonce, sk_p, peer_init) = if sa.initiator {
            (&sa.init_req, &sa.nr, &keys.sk_pi, &sa.init_resp)
        } else {
            (&sa.init_resp, &sa.ni, &keys.sk_pr, &sa.init_req)
        };
        let id_body = self.config.local_id.body();
        let Some(p) = &self.config.pubkey else {
            let mac = psk_auth(
                algs.prf,
                &self.config.psk,
                our_msg,
                peer_nonce,
                sk_p,
                &id_body,
            );
            return Ok((
                vec![],
                Payload::Auth {
                    method: auth_method::SHARED_KEY_MIC,
                    data: mac.to_vec(),
                },
            ));
        };
        let octets = auth::signed_octets(algs.prf, our_msg, peer_nonce, sk_p, &id_body);
        let hashes = auth::peer_hashes(peer_init);
        let (method, data) = auth::sign(p, &octets, hashes.as_deref())?;
        Ok((p.cert_payloads(), Payload::Auth { method, data }))
    }

    /// Verifies the peer's identity and AUTH payload (RFC 7296 §2.15): the
    /// peer signed (or MACed with the PSK) its own first message, our nonce
    /// and its identity keyed by its SK_p. With certificates, its chain and
    /// the identity-in-certificate match are checked too. `we_respond`: the
    /// peer is the initiator; `certs`: its X.509 CERT payloads.
    fn check_peer_auth(
        &self,
        id: SaId,
        we_respond: bool,
        peer_id: &Identity,
        method: u8,
        auth: &[u8],
        certs: &[&[u8]],
    ) -> Option<FailReason> {
        let sa = self.sas.get(&id).expect("caller checked");
        let algs = sa.algs.expect("keys");
        let keys = sa.keys.as_ref().expect("keys");
        let (peer_msg, our_nonce, sk_p) = if we_respond {
            (&sa.init_req, &sa.nr, &keys.sk_pi)
        } else {
            (&sa.init_resp, &sa.ni, &keys.sk_pr)
        };
        if !self.check_identity(peer_id) {
            return Some(FailReason::IdentityRejected(peer_id.clone()));
        }
        if let Some(p) = &self.config.pubkey {
            let octets = auth::signed_octets(algs.prf, peer_msg, our_nonce, sk_p, &peer_id.body());
            return auth::verify(p, peer_id, method, auth, &octets, certs)
                .err()
                .map(FailReason::Auth);
        }
        let want = psk_auth(
            algs.prf,
            &self.config.psk,
            peer_msg,
            our_nonce,
            sk_p,
            &peer_id.body(),
        );
        if method != auth_method::SHARED_KEY_MIC || !ct_eq(&want, auth) {
            Some(FailReason::AuthenticationFailed)
        } else {
            None
        }
    }

    /// strongSwan's rule for sending INITIAL_CONTACT: only in the first
    /// IKE_AUTH to a peer, i.e. when no other IKE SA with it is up here (a
    /// reauthentication must not make the peer drop the SAs still in use).
    fn first_contact(&self, id: SaId) -> bool {
        let Some(me) = self.sas.get(&id) else {
            return false;
        };
        !self.sas.iter().any(|(k, s)| {
            *k != id
                && matches!(s.state, State::Established | State::Deleting)
                && (s.remote.ip() == me.remote.ip()
                    || (s.peer_id.is_some() && s.peer_id == self.config.remote_id))
        })
    }

    fn check_identity(&self, id: &Identity) -> bool {
        if let Some(want) = &self.config.remote_id {
            if !crate::cert::identity_matches(want, id) {
                return false;
            }
        }
        self.validator.as_ref().is_none_or(|v| v(id))
    }

    // ------------------------------------------------------------ responder IKE_AUTH

    fn responder_auth(
        &mut self,
        now: Instant,
        id: SaId,
        mid: u32,
        inner: Vec<Payload>,
    ) -> Result<(), DropReason> {
        let mut idi = None;
        let mut auth = None;
        let mut esp = None;
        let mut tsi = None;
        let mut tsr = None;
        for p in &inner {
            match p {
                Payload::IdI(i) => idi = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data.clone())),
                Payload::Sa(s) => esp = Some(s.clone()),
                Payload::TsI(t) => tsi = Some(t.clone()),
                Payload::TsR(t) => tsr = Some(t.clone()),
                _ => {}
            }
        }
        let (Some(idi), Some((method, auth))) = (idi, auth) else {
            return Err(DropReason::Missing("IDi or AUTH"));
        };
        let certs = x509_certs(&inner);
        let mut reason = self.check_peer_auth(id, true, &idi, method, &auth, &certs);
        let mut ours = None;
        if reason.is_none() {
            match self.our_auth(id) {
                Ok(a) => ours = Some(a),
                Err(e) => reason = Some(FailReason::Auth(e)),
            }
        }
        let sa = self.sas.get(&id).expect("caller checked");
        let algs = sa.algs.expect("keys");
        let (Some((our_certs, our_auth)), None) = (ours, reason.clone()) else {
            let reason = reason.unwrap_or(FailReason::Invalid("our AUTH"));
            self.respond(
                id,
                exchange::IKE_AUTH,
                mid,
                vec![Payload::Notify(Notify::new(
                    notify::AUTHENTICATION_FAILED,
                    vec![],
                ))],
            );
            self.remove_sa(id, Event::Failed { sa: id, reason });
            return Ok(());
        };
        let idr = self.config.local_id.clone();
        let mut out = vec![Payload::IdR(idr)];
        out.extend(our_certs);
        out.push(our_auth);
        let mut child_failed = None;
        let mut install = None;
        if let (Some(esp), Some(tsi), Some(tsr)) = (esp, tsi, tsr) {
            // initiator's TSi is our remote side, its TSr our local side
            let (n_local, n_remote) = self.config.narrow(&tsi, &tsr).unwrap_or_default();
            match select_esp(&self.config.esp_proposals, &esp) {
                None => child_failed = Some(notify::NO_PROPOSAL_CHOSEN),
                Some(_) if n_remote.is_empty() || n_local.is_empty() => {
                    child_failed = Some(notify::TS_UNACCEPTABLE)
                }
                Some(mut c) => {
                    c.dh = None; // no PFS in IKE_AUTH
                    let spi_in = self.new_child_spi();
                    out.push(Payload::Sa(vec![c.to_wire(spi_in)]));
                    out.push(Payload::TsI(n_remote.clone()));
                    out.push(Payload::TsR(n_local.clone()));
                    install = Some((c, spi_in, n_local, n_remote));
                }
            }
            if let Some(n) = child_failed {
                out.push(Payload::Notify(Notify::new(n, vec![])));
            }
        }
        self.respond(id, exchange::IKE_AUTH, mid, out);
        let sa = self.sas.get_mut(&id).expect("still there");
        sa.state = State::Established;
        sa.peer_id = Some(idi.clone());
        let remote = sa.remote;
        self.half_open.retain(|_, v| *v != id);
        if find_notify(&inner, notify::INITIAL_CONTACT).is_some() {
            self.initial_contact(id, &idi);
        }
        self.schedule_ike(now, id);
        self.outputs.push_back(Output::Event(Event::Established {
            sa: id,
            initiator: false,
            peer: idi,
            algs,
            remote,
        }));
        if let Some((c, spi_in, ts_local, ts_remote)) = install {
            self.install_child(
                now,
                id,
                c.transform,
                spi_in,
                c.peer_spi,
                ts_local,
                ts_remote,
            );
        }
        if let Some(n) = child_failed {
            self.outputs
                .push_back(Output::Event(Event::ChildFailed { sa: id, notify: n }));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn install_child(
        &mut self,
        now: Instant,
        id: SaId,
        transform: EspTransform,
        spi_in: u32,
        spi_out: u32,
        ts_local: Vec<TrafficSelector>,
        ts_remote: Vec<TrafficSelector>,
    ) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let algs = sa.algs.expect("keys");
        let keys = sa.keys.as_ref().expect("keys");
        let (i2r, r2i) = child_keymat(algs.prf, &keys.sk_d, &transform, None, &sa.ni, &sa.nr);
        let (keymat_in, keymat_out) = if sa.initiator { (r2i, i2r) } else { (i2r, r2i) };
        let child = self.new_child(
            now,
            spi_in,
            spi_out,
            transform,
            ts_local.clone(),
            ts_remote.clone(),
            true,
        );
        let sa = self.sas.get_mut(&id).expect("caller checked");
        sa.children.push(child);
        self.outputs
            .push_back(Output::InstallChildSa(Box::new(ChildSaParams {
                ike_sa: id,
                spi_in,
                spi_out,
                transform,
                keymat_in,
                keymat_out,
                ts_local,
                ts_remote,
                lifetimes: self.config.child_lifetimes,
                tunnel: true,
                udp_encap: sa.encap(),
                remote: sa.remote,
            })));
    }

    // ------------------------------------------------------------ initiator IKE_AUTH response

    fn initiator_auth_response(
        &mut self,
        now: Instant,
        id: SaId,
        inner: Vec<Payload>,
    ) -> Result<(), DropReason> {
        if let Some(n) = find_notify(&inner, notify::AUTHENTICATION_FAILED) {
            let _ = n;
            self.remove_sa(
                id,
                Event::Failed {
                    sa: id,
                    reason: FailReason::PeerError(notify::AUTHENTICATION_FAILED),
                },
            );
            return Ok(());
        }
        let mut idr = None;
        let mut auth = None;
        let mut esp = None;
        let mut tsi = None;
        let mut tsr = None;
        for p in &inner {
            match p {
                Payload::IdR(i) => idr = Some(i.clone()),
                Payload::Auth { method, data } => auth = Some((*method, data.clone())),
                Payload::Sa(s) => esp = Some(s.clone()),
                Payload::TsI(t) => tsi = Some(t.clone()),
                Payload::TsR(t) => tsr = Some(t.clone()),
                _ => {}
            }
        }
        let (Some(idr), Some((method, auth))) = (idr, auth) else {
            let err = inner.iter().find_map(|p| match p {
                Payload::Notify(n) if n.is_error() => Some(n.ntype),
                _ => None,
            });
            self.remove_sa(
                id,
                Event::Failed {
                    sa: id,
                    reason: err.map_or(
                        FailReason::Invalid("IKE_AUTH response"),
                        FailReason::PeerError,
                    ),
                },
            );
            return Ok(());
        };
        let certs = x509_certs(&inner);
        let reason = self.check_peer_auth(id, false, &idr, method, &auth, &certs);
        let sa = self.sas.get(&id).expect("caller checked");
        let algs = sa.algs.expect("keys");
        if let Some(reason) = reason {
            // §2.21.2: tell the responder, once, in a new INFORMATIONAL
            let inner = vec![Payload::Notify(Notify::new(
                notify::AUTHENTICATION_FAILED,
                vec![],
            ))];
            if let Some(sa) = self.sas.get_mut(&id) {
                let mid = sa.next_request_id;
                let bytes = encrypt(
                    &mut *self.rng,
                    sa,
                    exchange::INFORMATIONAL,
                    mid,
                    false,
                    &inner,
                );
                self.stats.sent(&bytes);
                transmit_all(&mut self.outputs, sa, &bytes);
            }
            self.remove_sa(id, Event::Failed { sa: id, reason });
            return Ok(());
        }
        let first_spi = sa.first_child_spi;
        let remote = sa.remote;
        let sa = self.sas.get_mut(&id).expect("still there");
        sa.state = State::Established;
        sa.peer_id = Some(idr.clone());
        sa.last_heard = now;
        if find_notify(&inner, notify::INITIAL_CONTACT).is_some() {
            self.initial_contact(id, &idr);
        }
        self.schedule_ike(now, id);
        self.outputs.push_back(Output::Event(Event::Established {
            sa: id,
            initiator: true,
            peer: idr,
            algs,
            remote,
        }));
        if let (Some(esp), Some(tsi), Some(tsr)) = (esp, tsi, tsr) {
            let ok_ts =
                ts_subset(&tsi, &self.config.local_ts) && ts_subset(&tsr, &self.config.remote_ts);
            match select_esp(&self.config.esp_proposals, &esp) {
                Some(c) if esp.len() == 1 && ok_ts && c.dh.is_none() => {
                    self.install_child(now, id, c.transform, first_spi, c.peer_spi, tsi, tsr);
                }
                _ => {
                    // unacceptable choice: delete the CHILD SA the responder made
                    let spi = esp.first().map(|p| p.spi.clone()).unwrap_or_default();
                    self.outputs.push_back(Output::Event(Event::ChildFailed {
                        sa: id,
                        notify: notify::NO_PROPOSAL_CHOSEN,
                    }));
                    if spi.len() == 4 {
                        self.send_encrypted_request(
                            now,
                            id,
                            exchange::INFORMATIONAL,
                            vec![Payload::Delete(Delete {
                                protocol: proto::ESP,
                                spi_size: 4,
                                spis: vec![spi],
                            })],
                        );
                    }
                }
            }
        } else if !self.config.esp_proposals.is_empty() {
            let n = inner
                .iter()
                .find_map(|p| match p {
                    Payload::Notify(n) if n.is_error() => Some(n.ntype),
                    _ => None,
                })
                .unwrap_or(notify::NO_PROPOSAL_CHOSEN);
            self.outputs
                .push_back(Output::Event(Event::ChildFailed { sa: id, notify: n }));
        }
        Ok(())
    }

    // ------------------------------------------------------------ INFORMATIONAL

    fn informational_request(
        &mut self,
        now: Instant,
        id: SaId,
        mid: u32,
        inner: Vec<Payload>,
    ) -> Result<(), DropReason> {
        let mut out = Vec::new();
        let mut delete_ike = false;
        for p in &inner {
            if let Payload::Delete(d) = p {
                match d.protocol {
                    proto::IKE => delete_ike = true,
                    proto::ESP => {
                        let mut ours = Vec::new();
                        for s in &d.spis {
                            let Ok(b) = <[u8; 4]>::try_from(&s[..]) else {
                                continue;
                            };
                            // the peer's inbound SPI is our outbound one;
                            // the pair goes (after switching outbound to a
                            // successor from a rekey, if there is one)
                            if let Some(spi_in) = self.peer_deletes_child(id, u32::from_be_bytes(b))
                            {
                                ours.push(spi_in.to_be_bytes().to_vec());
                            }
                        }
                        if !ours.is_empty() {
                            out.push(Payload::Delete(Delete {
                                protocol: proto::ESP,
                                spi_size: 4,
                                spis: ours,
                            }));
                        }
                    }
                    _ => {}
                }
            }
        }
        if delete_ike {
            self.respond(id, exchange::INFORMATIONAL, mid, vec![]);
            if self.peer_deletes_ike(now, id) {
                return Ok(());
            }
            self.remove_sa(
                id,
                Event::Closed {
                    sa: id,
                    by_peer: true,
                },
            );
            return Ok(());
        }
        self.respond(id, exchange::INFORMATIONAL, mid, out);
        Ok(())
    }

    /// Closes an IKE SA (CT): sends INFORMATIONAL Delete and removes its
    /// CHILD SAs; [`Event::Closed`] follows the peer's answer (or the timeout).
    pub fn close(&mut self, now: Instant, id: SaId) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if sa.state != State::Established {
            self.remove_sa(
                id,
                Event::Closed {
                    sa: id,
                    by_peer: false,
                },
            );
            return;
        }
        sa.state = State::Deleting;
        let children: Vec<Child> = sa.children.drain(..).collect();
        for c in children {
            self.outputs.push_back(Output::DeleteChildSa {
                ike_sa: id,
                spi_in: c.spi_in,
                spi_out: c.spi_out,
            });
        }
        if sa.pending.is_some() {
            // window of 1: the delete replaces nothing; wait for the pending one
            // to finish? Simplest correct choice: drop the SA locally.
            self.remove_sa(
                id,
                Event::Closed {
                    sa: id,
                    by_peer: false,
                },
            );
            return;
        }
        self.send_encrypted_request(
            now,
            id,
            exchange::INFORMATIONAL,
            vec![Payload::Delete(Delete {
                protocol: proto::IKE,
                spi_size: 0,
                spis: vec![],
            })],
        );
    }

    /// Sends a liveness check (empty INFORMATIONAL) now, if the window is free.
    pub fn send_dpd(&mut self, now: Instant, id: SaId) {
        if self
            .sas
            .get(&id)
            .is_some_and(|s| s.state == State::Established && s.pending.is_none())
        {
            self.send_encrypted_request(now, id, exchange::INFORMATIONAL, vec![]);
        }
    }

    fn remove_sa(&mut self, id: SaId, ev: Event) {
        let mut silent = false;
        if let Some(sa) = self.sas.remove(&id) {
            // replaced by a rekey, or a redundant/not yet adopted SA from one
            silent = sa.rk.replaced || sa.rk.inactive;
            for c in sa.children {
                self.outputs.push_back(Output::DeleteChildSa {
                    ike_sa: id,
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                });
            }
        }
        self.half_open.retain(|_, v| *v != id);
        if !silent {
            self.outputs.push_back(Output::Event(ev));
        }
    }

    // ------------------------------------------------------------ timers

    /// The earliest deadline of any IKE SA (retransmission, half-open
    /// expiry, liveness check).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sas
            .values()
            .flat_map(|sa| [self.deadline(sa), self.rekey_deadline(sa)])
            .flatten()
            .min()
    }

    fn deadline(&self, sa: &IkeSa) -> Option<Instant> {
        let mut d = sa.pending.as_ref().map(|p| match self.dead_at(sa, p) {
            Some(t) => p.deadline.min(t),
            None => p.deadline,
        });
        if sa.state == State::HalfOpen {
            let t = sa.created + self.config.half_open_timeout;
            d = Some(d.map_or(t, |x| x.min(t)));
        }
        if let (State::Established, None, Some(i), false) = (
            sa.state,
            &sa.pending,
            self.config.dpd_interval,
            sa.rk.replaced || sa.rk.inactive,
        ) {
            let t = sa.last_heard + i;
            d = Some(d.map_or(t, |x| x.min(t)));
        }
        d
    }

    /// When an established SA's unanswered request makes the peer dead
    /// (`dpd_timeout`), before the retransmissions run out.
    fn dead_at(&self, sa: &IkeSa, p: &Pending) -> Option<Instant> {
        match (sa.state, self.config.dpd_timeout) {
            (State::Established, Some(t)) => Some(p.sent + t),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<SaId> = self.sas.keys().copied().collect();
        for &id in &ids {
            self.rekey_timers(now, id);
        }
        for id in ids {
            let Some(sa) = self.sas.get(&id) else {
                continue;
            };
            let dead_at = sa.pending.as_ref().and_then(|p| self.dead_at(sa, p));
            if sa.state == State::HalfOpen && now >= sa.created + self.config.half_open_timeout {
                self.remove_sa(
                    id,
                    Event::Failed {
                        sa: id,
                        reason: FailReason::HalfOpenExpired,
                    },
                );
                continue;
            }
            let Some(sa) = self.sas.get_mut(&id) else {
                continue;
            };
            if let Some(p) = &mut sa.pending {
                let dead = dead_at.is_some_and(|t| now >= t);
                if now >= p.deadline || dead {
                    if p.retries >= self.config.retransmit.tries || dead {
                        let deleting = sa.state == State::Deleting;
                        let restart = !deleting
                            && sa.state == State::Established
                            && !(sa.rk.replaced || sa.rk.inactive)
                            && self.config.dpd_action == DpdAction::Restart;
                        let remote = SocketAddr::new(
                            sa.remote.ip(),
                            if sa.encap() { NATT_PORT } else { IKE_PORT },
                        );
                        let ev = if deleting {
                            Event::Closed {
                                sa: id,
                                by_peer: false,
                            }
                        } else {
                            Event::Failed {
                                sa: id,
                                reason: FailReason::Timeout,
                            }
                        };
                        self.remove_sa(id, ev);
                        if restart {
                            let new = self.connect(now, remote);
                            self.outputs
                                .push_back(Output::Event(Event::Restarting { old: id, new }));
                        }
                        continue;
                    }
                    p.retries += 1;
                    p.deadline = now + self.config.retransmit.timeout(p.retries);
                    // every fragment again (RFC 7383 §2.5)
                    let bytes = p.bytes.clone();
                    transmit_all(&mut self.outputs, sa, &bytes);
                }
                continue;
            }
            if let (State::Established, Some(i), false) = (
                sa.state,
                self.config.dpd_interval,
                sa.rk.replaced || sa.rk.inactive,
            ) {
                if now >= sa.last_heard + i {
                    self.send_encrypted_request(now, id, exchange::INFORMATIONAL, vec![]);
                }
            }
        }
    }

    /// Received ESP traffic from the peer proves liveness (skips DPD).
    pub fn on_child_traffic(&mut self, now: Instant, id: SaId) {
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.last_heard = now;
        }
    }

    /// Exports a key from this IKE SA (SSKE), by the derivation documented
    /// at [`crate::crypto::export_key`]; both ends get the same bytes.
    pub fn export_key(
        &self,
        id: SaId,
        label: &[u8],
        context: &[u8],
        len: usize,
    ) -> Result<Secret, ExportError> {
        let sa = self
            .sas
            .get(&id)
            .filter(|s| s.state == State::Established)
            .ok_or(ExportError::NoSa)?;
        let (Some(algs), Some(keys)) = (sa.algs, sa.keys.as_ref()) else {
            return Err(ExportError::NoSa);
        };
        crate::crypto::export_key(algs.prf, &keys.sk_d, label, context, &sa.ni, &sa.nr, len)
    }

    /// The IKE SA's SPIs (initiator's, responder's), for display.
    pub fn spis(&self, id: SaId) -> Option<([u8; 8], [u8; 8])> {
        self.sas.get(&id).map(|s| (s.spi_i, s.spi_r))
    }

    /// How long this IKE SA has existed.
    pub fn age(&self, id: SaId, now: Instant) -> Option<Duration> {
        self.sas
            .get(&id)
            .map(|s| now.saturating_duration_since(s.created))
    }
}

/// The data of the X.509 CERT payloads, in order (the peer's own first).
fn x509_certs(payloads: &[Payload]) -> Vec<&[u8]> {
    payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Cert { encoding, data } if *encoding == auth::CERT_X509_SIGNATURE => {
                Some(&data[..])
            }
            _ => None,
        })
        .collect()
}

/// (we are behind a NAT, the peer is behind a NAT), from the peer's NAT_D notifies.
fn nat_flags(
    payloads: &[Payload],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    local: SocketAddr,
    remote: SocketAddr,
) -> (bool, bool) {
    let mut src = Vec::new();
    let mut dst = None;
    for p in payloads {
        if let Payload::Notify(n) = p {
            match n.ntype {
                notify::NAT_DETECTION_SOURCE_IP => src.push(n.data.clone()),
                notify::NAT_DETECTION_DESTINATION_IP => dst = Some(n.data.clone()),
                _ => {}
            }
        }
    }
    if src.is_empty() || dst.is_none() {
        return (false, false);
    }
    let remote_h = nat_hash(spi_i, spi_r, remote);
    let local_h = nat_hash(spi_i, spi_r, local);
    let nat_remote = !src.contains(&remote_h);
    let nat_local = dst.is_some_and(|d| d != local_h);
    (nat_local, nat_remote)
}

fn transmit_all(outputs: &mut VecDeque<Output>, sa: &IkeSa, msgs: &[Vec<u8>]) {
    for m in msgs {
        transmit(outputs, sa, m);
    }
}

fn transmit(outputs: &mut VecDeque<Output>, sa: &IkeSa, msg: &[u8]) {
    let mut bytes = Vec::with_capacity(msg.len() + 4);
    if sa.encap() {
        bytes.extend_from_slice(&[0; 4]);
    }
    bytes.extend_from_slice(msg);
    outputs.push_back(Output::Transmit {
        local_port: sa.local_port,
        dst: sa.remote,
        bytes,
    });
}

/// Builds an encrypted message: header | SK { inner }, or, when it is
/// larger than the fragment size negotiated with the peer, its fragments:
/// header | SKF { part } each (RFC 7383).
fn encrypt(
    rng: &mut dyn IkeRng,
    sa: &mut IkeSa,
    exch: u8,
    mid: u32,
    response: bool,
    inner: &[Payload],
) -> Vec<Vec<u8>> {
    let max_len = sa
        .frag
        .size
        .map(|s| fragment::max_message_len(s, sa.remote, sa.encap()));
    let sk = sa.sk_out.as_ref().expect("SK keys");
    let mut plain = Zeroizing::new(Vec::new());
    let first = wire::write_chain(inner, &mut plain);
    let aead = sk.encr.is_aead();
    let counter = &mut sa.iv_counter;
    let mut next_iv = || {
        if aead {
            *counter += 1;
            counter.to_be_bytes().to_vec()
        } else {
            let mut v = vec![0u8; 16];
            rng.fill_bytes(&mut v);
            v
        }
    };
    let body_len = sk.sealed_len(plain.len());
    let mut fl = if sa.initiator { flags::INITIATOR } else { 0 };
    if response {
        fl |= flags::RESPONSE;
    }
    let total = HEADER_LEN + 4 + body_len;
    let h = Header {
        spi_i: sa.spi_i,
        spi_r: sa.spi_r,
        next_payload: pt::SK,
        version: 0x20,
        exchange: exch,
        flags: fl,
        message_id: mid,
        length: total as u32,
    };
    if let Some(max) = max_len.filter(|m| total > *m) {
        if let Some(f) = fragment::seal_fragments(sk, &h, first, &plain, max, &mut next_iv) {
            return f;
        }
    }
    let mut out = Vec::with_capacity(total);
    h.write(&mut out);
    out.push(first);
    out.push(0);
    out.extend_from_slice(&((4 + body_len) as u16).to_be_bytes());
    let iv = next_iv();
    let body = sk.seal(&out, &iv, &plain);
    debug_assert_eq!(body.len(), body_len);
    out.extend_from_slice(&body);
    vec![out]
}

/// Verifies and decrypts the SK payload (the last payload) of `msg`.
fn decrypt(sa: &IkeSa, raw: &[u8], msg: &Message) -> Result<Vec<Payload>, DropReason> {
    let Some(sk) = sa.sk_in.as_ref() else {
        return Err(DropReason::Unexpected);
    };
    let Some(Payload::Sk { first_inner, body }) = msg.payloads.last() else {
        return Err(DropReason::Missing("SK"));
    };
    let aad = &raw[..raw.len() - body.len()];
    let plain = sk.open(aad, body).map_err(|_| DropReason::Integrity)?;
    Ok(wire::parse_chain(*first_inner, &plain)?)
}
