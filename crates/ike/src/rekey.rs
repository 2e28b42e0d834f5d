//! Every rekey of polytun's IKEv2, in one place: CREATE_CHILD_SA (RFC 7296
//! §1.3) for new CHILD SAs (§1.3.1), CHILD SA rekeys with and without PFS
//! (§1.3.3), IKE SA rekeys (§1.3.2, §2.18), make-before-break, simultaneous
//! rekeys (§2.8.1, §2.8.2, §2.25), the time/command/key-expiry triggers and
//! the queue that serialises our requests through the window of 1.
//!
//! # Make-before-break (what the daemon sees)
//!
//! For every rekeyed CHILD SA, on each side, in this order:
//! 1. [`Output::InstallChildSaInbound`]: the new SA decrypts from now on;
//!    its outbound key is kept ready but unused.
//! 2. [`Output::SwitchChildSaOutbound`] (+ [`Event::ChildRekeyed`]): send
//!    on the new SA. Emitted only once the peer is known to hold the new
//!    SA's inbound key: the rekey initiator when the response arrives; the
//!    responder when the initiator deletes the old SA.
//! 3. [`Output::DeleteChildSa`] of the old SA: the initiator after the
//!    peer answered its DELETE (the peer switched before answering), the
//!    responder while processing that DELETE (the initiator switched
//!    before sending it). So neither side ever sends on an SA the other
//!    does not have, and each side always has one outbound SA per CHILD SA.
//!
//! # Collisions
//!
//! Both sides may rekey the same SA at once. Each side answers the other's
//! request normally (creating a second new SA, inbound only) and remembers
//! the nonces. When its own exchange completes it knows all four nonces:
//! the SA created by the exchange holding the lowest nonce is redundant
//! and is deleted by the side that initiated that exchange (§2.8.1); the
//! initiator of the surviving exchange switches to it and deletes the old
//! SA; the other side switches to the survivor when that DELETE arrives.
//! If one side finished its exchange before the other's request arrived,
//! it is already deleting the old SA and answers TEMPORARY_FAILURE
//! (§2.25); the other side then keeps the SA it created as responder. IKE
//! SA rekey collisions work the same way with whole IKE SAs (§2.8.2). An IKE
//! SA rekey is refused with TEMPORARY_FAILURE while any CHILD SA exchange is
//! in flight on that IKE SA and vice versa (as strongSwan does), so CHILD
//! SA state never straddles two IKE SAs.

use super::{ChildSaParams, DropReason, Endpoint, Event, IkeSa, Output, SaId, State};
use crate::config::{select_esp, select_ike, ts_subset};
use crate::crypto::{child_keymat, DhGroup, DhPrivate, EspTransform, IkeKeys};
use crate::wire::{exchange, notify, proto, Delete, Notify, Payload, TrafficSelector};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What to do when the peer stops answering (DPD, RFC 7296 §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpdAction {
    /// Remove the IKE SA and its CHILD SAs ([`Event::Failed`]).
    #[default]
    Clear,
    /// Remove it, then initiate a new IKE SA to the same peer
    /// ([`Event::Restarting`]).
    Restart,
}

/// A CHILD SA as `polytun show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSaInfo {
    pub spi_in: u32,
    pub spi_out: u32,
    pub transform: EspTransform,
    pub ts_local: Vec<TrafficSelector>,
    pub ts_remote: Vec<TrafficSelector>,
    /// Carries our outbound traffic (false: a rekey's new SA not switched
    /// to yet, or an old one being deleted).
    pub outbound: bool,
    /// A rekey or delete of this SA is in progress.
    pub rekeying: bool,
    pub created: Instant,
    /// When it is due for rekeying / hard expiry.
    pub rekey_at: Option<Instant>,
    pub expire_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChildState {
    Active,
    /// Our rekey exchange for it is in flight.
    Rekeying,
    /// Rekeyed; waiting for the peer's DELETE, then `successor` (its
    /// inbound SPI) takes over.
    Replaced {
        successor: Option<u32>,
    },
    /// We sent (or will send) a DELETE for it.
    Deleting,
}

pub(super) struct Child {
    pub(super) spi_in: u32,
    pub(super) spi_out: u32,
    transform: EspTransform,
    ts_local: Vec<TrafficSelector>,
    ts_remote: Vec<TrafficSelector>,
    outbound: bool,
    state: ChildState,
    created: Instant,
    rekey_at: Option<Instant>,
    expire_at: Option<Instant>,
}

/// A request waiting for the window.
pub(super) enum Queued {
    RekeyChild(u32),
    CreateChild(Vec<TrafficSelector>, Vec<TrafficSelector>),
    RekeyIke,
    DeleteChild(Vec<u32>),
    DeleteIke,
}

/// What an outstanding request is for.
pub(super) enum Op {
    Other,
    /// CREATE_CHILD_SA for a new CHILD SA (`old: None`) or a rekey of `old`
    /// (its inbound SPI).
    Child {
        old: Option<u32>,
        new_spi: u32,
        ni: Vec<u8>,
        dh: Option<DhPrivate>,
        ts_local: Vec<TrafficSelector>,
        ts_remote: Vec<TrafficSelector>,
        retried: bool,
    },
    RekeyIke {
        new_spi: [u8; 8],
        ni: Vec<u8>,
        dh: DhPrivate,
        retried: bool,
    },
    /// INFORMATIONAL Delete of these CHILD SAs (our inbound SPIs).
    DeleteChild(Vec<u32>),
    /// INFORMATIONAL Delete of this (replaced or redundant) IKE SA.
    DeleteIke,
}

impl Op {
    pub(super) fn is_delete(&self) -> bool {
        matches!(self, Op::DeleteChild(_) | Op::DeleteIke)
    }
}

/// The peer's exchange we answered while ours was in flight.
struct PeerExchange<T> {
    ni: Vec<u8>,
    nr: Vec<u8>,
    created: T,
}

/// Per IKE SA rekey state.
#[derive(Default)]
pub(super) struct SaRekey {
    queue: VecDeque<Queued>,
    /// Old CHILD SA (inbound SPI) → the peer's colliding rekey, for every
    /// CHILD SA whose rekey we have in flight.
    child_collisions: HashMap<u32, Option<PeerExchange<u32>>>,
    /// Our IKE SA rekey is in flight (`Some`), with the peer's colliding one.
    ike_rekey: Option<Option<PeerExchange<SaId>>>,
    /// We answered the peer's rekey of this IKE SA: this new SA takes over
    /// when the peer deletes this one.
    pub(super) successor: Option<SaId>,
    rekey_at: Option<Instant>,
    expire_at: Option<Instant>,
    /// Created by a rekey exchange and not (yet) carrying the CHILD SAs.
    pub(super) inactive: bool,
    /// Rekeyed: its CHILD SAs moved on; removed without an event.
    pub(super) replaced: bool,
}

/// Did the exchange with nonces `own` lose against `other` (§2.8.1: the
/// SA created with the lowest of the four nonces, octet by octet, goes)?
fn lost(own: [&[u8]; 2], other: [&[u8]; 2]) -> bool {
    own[0].min(own[1]) < other[0].min(other[1])
}

fn error_notify(inner: &[Payload]) -> Option<&Notify> {
    inner.iter().find_map(|p| match p {
        Payload::Notify(n) if n.is_error() => Some(n),
        _ => None,
    })
}

fn group_of(n: &Notify) -> Option<DhGroup> {
    (n.data.len() == 2)
        .then(|| DhGroup::from_id(u16::from_be_bytes([n.data[0], n.data[1]])))
        .flatten()
}

#[derive(Default)]
struct Parsed {
    sa: Option<Vec<crate::wire::Proposal>>,
    nonce: Option<Vec<u8>>,
    ke: Option<(u16, Vec<u8>)>,
    tsi: Option<Vec<TrafficSelector>>,
    tsr: Option<Vec<TrafficSelector>>,
    rekey: Option<Notify>,
}

fn parse(inner: Vec<Payload>) -> Parsed {
    let mut p = Parsed::default();
    for x in inner {
        match x {
            Payload::Sa(s) => p.sa = Some(s),
            Payload::Nonce(n) => p.nonce = Some(n),
            Payload::Ke { group, data } => p.ke = Some((group, data)),
            Payload::TsI(t) => p.tsi = Some(t),
            Payload::TsR(t) => p.tsr = Some(t),
            Payload::Notify(n) if n.ntype == notify::REKEY_SA => p.rekey = Some(n),
            _ => {}
        }
    }
    p
}

fn notify_payload(n: u16, data: Vec<u8>) -> Vec<Payload> {
    vec![Payload::Notify(Notify::new(n, data))]
}

impl Endpoint {
    // ------------------------------------------------------------ public API

    /// Rekeys the CHILD SA with this SPI (either direction's) now (KU).
    /// Returns false if there is no such CHILD SA or it is already being
    /// rekeyed or deleted.
    pub fn rekey_child(&mut self, now: Instant, spi: u32) -> bool {
        let Some((id, i)) = self.find_child(spi) else {
            return false;
        };
        let sa = self.sas.get_mut(&id).expect("found");
        let c = &mut sa.children[i];
        if c.state != ChildState::Active || !c.outbound {
            return false;
        }
        let spi_in = c.spi_in;
        if sa
            .rk
            .queue
            .iter()
            .any(|q| matches!(q, Queued::RekeyChild(s) if *s == spi_in))
        {
            return false;
        }
        c.rekey_at = None;
        sa.rk.queue.push_back(Queued::RekeyChild(spi_in));
        self.kick(now, id);
        true
    }

    /// The record engine crossed a soft limit (time, bytes or packets) of
    /// the key with this SPI (KE): rekey its CHILD SA. Same as
    /// [`Endpoint::rekey_child`]; false if it is already being rekeyed.
    pub fn on_child_key_expiring(&mut self, now: Instant, spi: u32) -> bool {
        self.rekey_child(now, spi)
    }

    /// Rekeys the IKE SA now (KU); its CHILD SAs move to the new one
    /// ([`Event::IkeRekeyed`]). False if it is not established or a rekey
    /// of it is already under way.
    pub fn rekey_ike(&mut self, now: Instant, sa: SaId) -> bool {
        let Some(s) = self.sas.get_mut(&sa) else {
            return false;
        };
        if s.state != State::Established
            || s.rk.inactive
            || s.rk.replaced
            || s.rk.ike_rekey.is_some()
            || s.rk.queue.iter().any(|q| matches!(q, Queued::RekeyIke))
        {
            return false;
        }
        s.rk.rekey_at = None;
        s.rk.queue.push_back(Queued::RekeyIke);
        self.kick(now, sa);
        true
    }

    /// Creates one more CHILD SA in this IKE SA with its own traffic
    /// selectors (CREATE_CHILD_SA, §1.3.1). It arrives as
    /// [`Output::InstallChildSa`], or [`Event::RekeyFailed`] with `child:
    /// None` if the peer refuses.
    pub fn create_child(
        &mut self,
        now: Instant,
        sa: SaId,
        ts_local: Vec<TrafficSelector>,
        ts_remote: Vec<TrafficSelector>,
    ) -> bool {
        match self.sas.get_mut(&sa) {
            Some(s) if s.state == State::Established && !s.rk.replaced => {
                s.rk.queue
                    .push_back(Queued::CreateChild(ts_local, ts_remote));
            }
            _ => return false,
        }
        self.kick(now, sa);
        true
    }

    /// Deletes the CHILD SA with this SPI (CT): [`Output::DeleteChildSa`]
    /// at once (we stop sending on it before the peer stops expecting it,
    /// §1.4.1), then an INFORMATIONAL Delete tells the peer.
    pub fn delete_child(&mut self, now: Instant, spi: u32) -> bool {
        let Some((id, i)) = self.find_child(spi) else {
            return false;
        };
        let c = &self.sas[&id].children[i];
        if c.state == ChildState::Deleting {
            return false;
        }
        let spi_in = c.spi_in;
        self.drop_child(id, spi_in);
        self.enqueue(now, id, Queued::DeleteChild(vec![spi_in]));
        true
    }

    /// The CHILD SAs of an IKE SA.
    pub fn child_sas(&self, sa: SaId) -> Vec<ChildSaInfo> {
        self.sas.get(&sa).map_or_else(Vec::new, |s| {
            s.children
                .iter()
                .map(|c| ChildSaInfo {
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    transform: c.transform,
                    ts_local: c.ts_local.clone(),
                    ts_remote: c.ts_remote.clone(),
                    outbound: c.outbound,
                    rekeying: c.state != ChildState::Active,
                    created: c.created,
                    rekey_at: c.rekey_at,
                    expire_at: c.expire_at,
                })
                .collect()
        })
    }

    /// The IKE SA's state as `swanctl --list-sas` names it: CONNECTING,
    /// ESTABLISHED, REKEYING (our rekey of it is in flight), REKEYED
    /// (replaced, deleted soon) or DELETING.
    pub fn sa_state(&self, sa: SaId) -> Option<&'static str> {
        let s = self.sas.get(&sa)?;
        Some(match s.state {
            State::InitSent | State::AuthSent | State::HalfOpen => "CONNECTING",
            State::Deleting => "DELETING",
            State::Established if s.rk.replaced || s.rk.successor.is_some() => "REKEYED",
            State::Established if s.rk.ike_rekey.is_some() => "REKEYING",
            State::Established if s.rk.inactive => "CONNECTING",
            State::Established => "ESTABLISHED",
        })
    }

    /// When this IKE SA is due for its rekey (`None`: not by time, or a
    /// rekey of it is under way).
    pub fn ike_rekey_at(&self, sa: SaId) -> Option<Instant> {
        let s = self.sas.get(&sa)?;
        if s.state != State::Established || s.rk.inactive || s.rk.replaced {
            return None;
        }
        s.rk.rekey_at
    }

    /// IKE SAs that carry CHILD SAs or can (established, not replaced by
    /// a rekey, not a rekey's redundant or not yet adopted SA).
    pub fn active_sa_ids(&self) -> Vec<SaId> {
        self.sas
            .iter()
            .filter(|(_, s)| s.state == State::Established && !s.rk.inactive && !s.rk.replaced)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Feeds an already decrypted request to an established IKE SA as if
    /// it had arrived with the next message ID. For fuzzing and property
    /// tests of the request handlers only.
    #[doc(hidden)]
    pub fn inject_request(
        &mut self,
        now: Instant,
        sa: SaId,
        exch: u8,
        inner: Vec<Payload>,
    ) -> Result<(), DropReason> {
        let Some(s) = self.sas.get(&sa) else {
            return Err(DropReason::UnknownSa);
        };
        if s.state != State::Established {
            return Err(DropReason::Unexpected);
        }
        let mid = s.expected_request_id;
        match exch {
            exchange::CREATE_CHILD_SA => self.create_child_request(now, sa, mid, inner),
            exchange::INFORMATIONAL => self.informational_request(now, sa, mid, inner),
            _ => Err(DropReason::Unexpected),
        }
    }

    // ------------------------------------------------------------ helpers

    fn find_child(&self, spi: u32) -> Option<(SaId, usize)> {
        for by_in in [true, false] {
            for (id, sa) in &self.sas {
                if let Some(i) = sa.children.iter().position(|c| {
                    if by_in {
                        c.spi_in == spi
                    } else {
                        c.spi_out == spi
                    }
                }) {
                    return Some((*id, i));
                }
            }
        }
        None
    }

    /// `t` minus a random part of `jitter` (at most half of `t`), like
    /// strongSwan's `rand_time`.
    fn jittered(&mut self, t: Duration, jitter: Duration) -> Duration {
        let max = jitter.min(t / 2).as_millis() as u64;
        let j = if max == 0 {
            0
        } else {
            self.rng.next_u64() % (max + 1)
        };
        t - Duration::from_millis(j)
    }

    /// 2 to 10 seconds: when a refused rekey is tried again.
    fn retry_delay(&mut self) -> Duration {
        Duration::from_millis(2000 + self.rng.next_u64() % 8000)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_child(
        &mut self,
        now: Instant,
        spi_in: u32,
        spi_out: u32,
        transform: EspTransform,
        ts_local: Vec<TrafficSelector>,
        ts_remote: Vec<TrafficSelector>,
        outbound: bool,
    ) -> Child {
        let l = self.config.child_lifetimes;
        let jitter = self
            .config
            .child_rekey_jitter
            .unwrap_or(self.config.rekey_jitter);
        let rekey_at = l.soft_time.map(|t| now + self.jittered(t, jitter));
        Child {
            spi_in,
            spi_out,
            transform,
            ts_local,
            ts_remote,
            outbound,
            state: ChildState::Active,
            created: now,
            rekey_at,
            expire_at: l.hard_time.map(|t| now + t),
        }
    }

    /// Starts the IKE SA's rekey and hard-lifetime clocks.
    pub(super) fn schedule_ike(&mut self, now: Instant, id: SaId) {
        let jitter = self.config.rekey_jitter;
        let rekey = self
            .config
            .ike_rekey_time
            .map(|t| now + self.jittered(t, jitter));
        let expire = self.config.ike_life_time.map(|t| now + t);
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.rk.rekey_at = rekey;
            sa.rk.expire_at = expire;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn child_params(
        &self,
        id: SaId,
        sa: &IkeSa,
        spi_in: u32,
        spi_out: u32,
        transform: EspTransform,
        keys: (crate::crypto::ChildKeys, crate::crypto::ChildKeys),
        ts_local: Vec<TrafficSelector>,
        ts_remote: Vec<TrafficSelector>,
    ) -> Box<ChildSaParams> {
        Box::new(ChildSaParams {
            ike_sa: id,
            spi_in,
            spi_out,
            transform,
            keymat_in: keys.0,
            keymat_out: keys.1,
            ts_local,
            ts_remote,
            lifetimes: self.config.child_lifetimes,
            tunnel: true,
            udp_encap: sa.encap(),
            remote: sa.remote,
        })
    }

    /// Step 2 of make-before-break for child `new` (and `old`, if it still
    /// carries traffic).
    fn switch_outbound(&mut self, id: SaId, old: Option<u32>, new: u32) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let Some(ni) = sa.children.iter().position(|c| c.spi_in == new) else {
            return;
        };
        if sa.children[ni].outbound {
            return;
        }
        sa.children[ni].outbound = true;
        let new_spi_out = sa.children[ni].spi_out;
        let mut old_pair = None;
        if let Some(o) = old {
            if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == o) {
                old_pair = c.outbound.then_some((c.spi_in, c.spi_out));
                c.outbound = false;
            }
        }
        self.outputs.push_back(Output::SwitchChildSaOutbound {
            ike_sa: id,
            old_spi_out: old_pair.map(|p| p.1),
            new_spi_in: new,
            new_spi_out,
        });
        if let Some((old_spi_in, old_spi_out)) = old_pair {
            self.outputs.push_back(Output::Event(Event::ChildRekeyed {
                sa: id,
                old_spi_in,
                old_spi_out,
                new_spi_in: new,
                new_spi_out,
            }));
        }
    }

    /// Removes a CHILD SA locally (the daemon removes both directions).
    fn drop_child(&mut self, id: SaId, spi_in: u32) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if let Some(i) = sa.children.iter().position(|c| c.spi_in == spi_in) {
            let c = sa.children.remove(i);
            self.outputs.push_back(Output::DeleteChildSa {
                ike_sa: id,
                spi_in: c.spi_in,
                spi_out: c.spi_out,
            });
        }
    }

    /// Is every CHILD SA of this IKE SA at rest (no exchange in flight or
    /// half done)? IKE SA rekeys run only then.
    fn children_at_rest(sa: &IkeSa) -> bool {
        sa.rk.child_collisions.is_empty()
            && sa
                .children
                .iter()
                .all(|c| c.state == ChildState::Active && c.outbound)
            && !matches!(
                sa.pending.as_ref().map(|p| &p.op),
                Some(Op::Child { .. } | Op::DeleteChild(_))
            )
    }

    // ------------------------------------------------------------ queue

    /// Starts queued requests while the window (of 1) is free.
    pub(super) fn kick(&mut self, now: Instant, id: SaId) {
        loop {
            let Some(sa) = self.sas.get_mut(&id) else {
                return;
            };
            if sa.pending.is_some() || sa.state != State::Established {
                return;
            }
            let Some(q) = sa.rk.queue.pop_front() else {
                return;
            };
            let busy_ike = sa.rk.ike_rekey.is_some() || sa.rk.successor.is_some() || sa.rk.inactive;
            match q {
                Queued::RekeyChild(spi) => {
                    let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == spi) else {
                        continue;
                    };
                    if c.state != ChildState::Active || !c.outbound {
                        continue;
                    }
                    if busy_ike || sa.rk.replaced {
                        // after the IKE SA rekey (the CHILD SA moves along)
                        c.rekey_at = Some(now + Duration::from_secs(1));
                        continue;
                    }
                    c.state = ChildState::Rekeying;
                    let (l, r) = (c.ts_local.clone(), c.ts_remote.clone());
                    sa.rk.child_collisions.insert(spi, None);
                    self.send_child_request(now, id, Some(spi), l, r, None, false);
                }
                Queued::CreateChild(l, r) => {
                    if busy_ike || sa.rk.replaced {
                        sa.rk.queue.push_back(Queued::CreateChild(l, r));
                        return; // wait for the IKE SA rekey to settle
                    }
                    self.send_child_request(now, id, None, l, r, None, false);
                }
                Queued::RekeyIke => {
                    if sa.rk.replaced || busy_ike {
                        continue;
                    }
                    if !Self::children_at_rest(sa) {
                        sa.rk.rekey_at = Some(now + Duration::from_secs(1));
                        continue;
                    }
                    self.send_ike_rekey(now, id, None, false);
                }
                Queued::DeleteChild(spis) => {
                    let inner = vec![Payload::Delete(Delete {
                        protocol: proto::ESP,
                        spi_size: 4,
                        spis: spis.iter().map(|s| s.to_be_bytes().to_vec()).collect(),
                    })];
                    self.send_encrypted_request(now, id, exchange::INFORMATIONAL, inner);
                    self.set_op(id, Op::DeleteChild(spis));
                }
                Queued::DeleteIke => {
                    let inner = vec![Payload::Delete(Delete {
                        protocol: proto::IKE,
                        spi_size: 0,
                        spis: vec![],
                    })];
                    self.send_encrypted_request(now, id, exchange::INFORMATIONAL, inner);
                    self.set_op(id, Op::DeleteIke);
                }
            }
        }
    }

    fn enqueue(&mut self, now: Instant, id: SaId, q: Queued) {
        if let Some(sa) = self.sas.get_mut(&id) {
            sa.rk.queue.push_back(q);
        }
        self.kick(now, id);
    }

    fn set_op(&mut self, id: SaId, op: Op) {
        if let Some(p) = self.sas.get_mut(&id).and_then(|s| s.pending.as_mut()) {
            p.op = op;
        }
    }

    // ------------------------------------------------------------ timers

    pub(super) fn rekey_deadline(&self, sa: &IkeSa) -> Option<Instant> {
        if sa.state != State::Established || sa.rk.inactive || sa.rk.replaced {
            return None;
        }
        let mut d = sa.rk.expire_at;
        let mut min = |t: Option<Instant>| {
            if let Some(t) = t {
                d = Some(d.map_or(t, |x| x.min(t)));
            }
        };
        if sa.rk.ike_rekey.is_none() && sa.rk.successor.is_none() {
            min(sa.rk.rekey_at);
        }
        for c in &sa.children {
            if c.state == ChildState::Active && c.outbound {
                min(c.rekey_at);
            }
            min(c.expire_at);
        }
        d
    }

    /// Fires due rekeys and hard expiries of this IKE SA and its CHILD SAs.
    pub(super) fn rekey_timers(&mut self, now: Instant, id: SaId) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if sa.state != State::Established || sa.rk.inactive || sa.rk.replaced {
            return;
        }
        if sa.rk.expire_at.is_some_and(|t| now >= t) {
            sa.rk.expire_at = None;
            self.close(now, id);
            return;
        }
        // CHILD SAs past their hard lifetime: switch to a successor if one
        // is ready, else they are gone
        let expired: Vec<(u32, Option<u32>)> = sa
            .children
            .iter()
            .filter(|c| c.expire_at.is_some_and(|t| now >= t))
            .map(|c| match c.state {
                ChildState::Replaced { successor } => (c.spi_in, successor),
                _ => (c.spi_in, None),
            })
            .collect();
        for (spi, successor) in expired {
            if let Some(s) = successor {
                self.switch_outbound(id, Some(spi), s);
            }
            self.drop_child(id, spi);
            self.enqueue(now, id, Queued::DeleteChild(vec![spi]));
        }
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        let due: Vec<u32> = sa
            .children
            .iter()
            .filter(|c| {
                c.state == ChildState::Active && c.outbound && c.rekey_at.is_some_and(|t| now >= t)
            })
            .map(|c| c.spi_in)
            .collect();
        for spi in due {
            self.rekey_child(now, spi);
        }
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if sa.rk.ike_rekey.is_none()
            && sa.rk.successor.is_none()
            && sa.rk.rekey_at.is_some_and(|t| now >= t)
        {
            self.rekey_ike(now, id);
        }
    }

    // ------------------------------------------------------------ CHILD SA: initiator

    #[allow(clippy::too_many_arguments)]
    fn send_child_request(
        &mut self,
        now: Instant,
        id: SaId,
        old: Option<u32>,
        ts_local: Vec<TrafficSelector>,
        ts_remote: Vec<TrafficSelector>,
        group: Option<DhGroup>,
        retried: bool,
    ) {
        let new_spi = self.new_child_spi();
        let ni = self.nonce();
        let group = group.or_else(|| {
            self.config
                .esp_proposals
                .iter()
                .find_map(|p| p.dh.first().copied())
        });
        let dh = group.map(|g| DhPrivate::generate(g, &mut *self.rng));
        let mut inner = Vec::new();
        if let Some(o) = old {
            inner.push(Payload::Notify(Notify {
                protocol: proto::ESP,
                spi: o.to_be_bytes().to_vec(),
                ntype: notify::REKEY_SA,
                data: vec![],
            }));
        }
        let props = self
            .config
            .esp_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, new_spi, dh.is_some()))
            .collect();
        inner.push(Payload::Sa(props));
        inner.push(Payload::Nonce(ni.clone()));
        if let Some(d) = &dh {
            inner.push(Payload::Ke {
                group: d.group().id(),
                data: d.public().to_vec(),
            });
        }
        inner.push(Payload::TsI(ts_local.clone()));
        inner.push(Payload::TsR(ts_remote.clone()));
        self.send_encrypted_request(now, id, exchange::CREATE_CHILD_SA, inner);
        self.set_op(
            id,
            Op::Child {
                old,
                new_spi,
                ni,
                dh,
                ts_local,
                ts_remote,
                retried,
            },
        );
    }

    pub(super) fn create_child_response(
        &mut self,
        now: Instant,
        id: SaId,
        op: Op,
        inner: Vec<Payload>,
    ) -> Result<(), DropReason> {
        match op {
            Op::Child {
                old,
                new_spi,
                ni,
                dh,
                ts_local,
                ts_remote,
                retried,
            } => {
                if let Some(n) = error_notify(&inner) {
                    let ntype = n.ntype;
                    if ntype == notify::INVALID_KE_PAYLOAD && !retried {
                        let offered = group_of(n)
                            .filter(|g| self.config.esp_proposals.iter().any(|p| p.dh.contains(g)));
                        if let Some(g) = offered {
                            self.send_child_request(
                                now,
                                id,
                                old,
                                ts_local,
                                ts_remote,
                                Some(g),
                                true,
                            );
                            return Ok(());
                        }
                    }
                    self.child_exchange_failed(now, id, old, ntype);
                    return Ok(());
                }
                self.child_response_ok(now, id, old, new_spi, ni, dh, ts_local, ts_remote, inner)
            }
            Op::RekeyIke {
                new_spi,
                ni,
                dh,
                retried,
            } => self.ike_rekey_response(now, id, new_spi, ni, dh, retried, inner),
            _ => Err(DropReason::Unexpected),
        }
    }

    fn child_exchange_failed(&mut self, now: Instant, id: SaId, old: Option<u32>, ntype: u16) {
        let retry = now + self.retry_delay();
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if let Some(o) = old {
            let peer = sa.rk.child_collisions.remove(&o).flatten();
            if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == o) {
                if c.state == ChildState::Rekeying {
                    c.state = match peer {
                        // the peer's rekey of it succeeded: wait for its DELETE
                        Some(p) => ChildState::Replaced {
                            successor: Some(p.created),
                        },
                        None => {
                            c.rekey_at = Some(retry);
                            ChildState::Active
                        }
                    };
                }
            }
        }
        self.outputs.push_back(Output::Event(Event::RekeyFailed {
            sa: id,
            child: old,
            notify: ntype,
        }));
    }

    #[allow(clippy::too_many_arguments)]
    fn child_response_ok(
        &mut self,
        now: Instant,
        id: SaId,
        old: Option<u32>,
        new_spi: u32,
        ni: Vec<u8>,
        dh: Option<DhPrivate>,
        ts_local: Vec<TrafficSelector>,
        ts_remote: Vec<TrafficSelector>,
        inner: Vec<Payload>,
    ) -> Result<(), DropReason> {
        let p = parse(inner);
        let sa = self.sas.get(&id).expect("caller checked");
        let choice = p.sa.as_ref().and_then(|esp| {
            (esp.len() == 1)
                .then(|| select_esp(&self.config.esp_proposals, esp))
                .flatten()
        });
        let ok_ts = match (&p.tsi, &p.tsr) {
            (Some(i), Some(r)) => ts_subset(i, &ts_local) && ts_subset(r, &ts_remote),
            _ => false,
        };
        let shared = match (&choice, &dh, &p.ke) {
            (Some(c), Some(d), Some((g, data)))
                if c.dh == Some(d.group()) && *g == d.group().id() =>
            {
                d.shared(data).ok().map(Some)
            }
            (Some(c), _, _) if c.dh.is_none() => Some(None),
            _ => None,
        };
        let (Some(c), Some(nr), true, Some(shared)) = (choice, p.nonce, ok_ts, shared) else {
            // unacceptable: the responder installed it, so delete it there
            self.child_exchange_failed(now, id, old, notify::NO_PROPOSAL_CHOSEN);
            let spi =
                p.sa.and_then(|s| s.first().map(|x| x.spi.clone()))
                    .unwrap_or_default();
            if let Ok(b) = <[u8; 4]>::try_from(&spi[..]) {
                // our "inbound" SPI for it would have been new_spi; the peer
                // knows the SA by that value
                let _ = b;
                self.enqueue(now, id, Queued::DeleteChild(vec![new_spi]));
            }
            return Ok(());
        };
        let algs = sa.algs.expect("keys");
        let keys = sa.keys.as_ref().expect("keys");
        let (i2r, r2i) = child_keymat(
            algs.prf,
            &keys.sk_d,
            &c.transform,
            shared.as_deref().map(|s| &s[..]),
            &ni,
            &nr,
        );
        let (tsi, tsr) = (p.tsi.expect("checked"), p.tsr.expect("checked"));
        let params = self.child_params(
            id,
            sa,
            new_spi,
            c.peer_spi,
            c.transform,
            (r2i, i2r),
            tsi.clone(),
            tsr.clone(),
        );
        let Some(old) = old else {
            // a new CHILD SA: the responder has it, use it at once
            let child = self.new_child(now, new_spi, c.peer_spi, c.transform, tsi, tsr, true);
            self.sas.get_mut(&id).expect("exists").children.push(child);
            self.outputs.push_back(Output::InstallChildSa(params));
            return Ok(());
        };
        let child = self.new_child(now, new_spi, c.peer_spi, c.transform, tsi, tsr, false);
        let sa = self.sas.get_mut(&id).expect("exists");
        sa.children.push(child);
        let peer = sa.rk.child_collisions.remove(&old).flatten();
        self.outputs.push_back(Output::InstallChildSaInbound {
            params,
            replaces: Some(old),
        });
        let won = match &peer {
            None => true,
            Some(x) => {
                let won = !lost([&ni, &nr], [&x.ni, &x.nr]);
                self.outputs.push_back(Output::Event(Event::RekeyCollision {
                    sa: id,
                    child: Some(old),
                    won,
                }));
                won
            }
        };
        let sa = self.sas.get_mut(&id).expect("exists");
        let old_exists = sa.children.iter().any(|c| c.spi_in == old);
        if won || !old_exists && peer.is_none() {
            // ours survives: switch, then delete the old SA
            self.switch_outbound(id, Some(old), new_spi);
            let sa = self.sas.get_mut(&id).expect("exists");
            if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == old) {
                c.state = ChildState::Deleting;
                self.enqueue(now, id, Queued::DeleteChild(vec![old]));
            }
        } else {
            // ours is redundant: delete it; the peer's (created when we
            // answered it) takes over when the peer deletes the old SA
            if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == new_spi) {
                c.state = ChildState::Deleting;
            }
            if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == old) {
                c.state = ChildState::Replaced {
                    successor: peer.map(|p| p.created),
                };
            }
            self.enqueue(now, id, Queued::DeleteChild(vec![new_spi]));
        }
        Ok(())
    }

    // ------------------------------------------------------------ CHILD SA: responder

    pub(super) fn create_child_request(
        &mut self,
        now: Instant,
        id: SaId,
        mid: u32,
        inner: Vec<Payload>,
    ) -> Result<(), DropReason> {
        let is_ike = inner.iter().any(|p| match p {
            Payload::Sa(props) => props.iter().any(|x| x.protocol == proto::IKE),
            _ => false,
        });
        if is_ike {
            return self.ike_rekey_request(now, id, mid, inner);
        }
        let p = parse(inner);
        let sa = self.sas.get(&id).expect("caller checked");
        let refuse = |ep: &mut Endpoint, n: u16, data: Vec<u8>| {
            ep.respond(id, exchange::CREATE_CHILD_SA, mid, notify_payload(n, data));
            Ok(())
        };
        if sa.rk.inactive
            || sa.rk.replaced
            || sa.rk.successor.is_some()
            || sa.rk.ike_rekey.is_some()
        {
            return refuse(self, notify::TEMPORARY_FAILURE, vec![]);
        }
        let (Some(props), Some(ni), Some(tsi), Some(tsr)) = (&p.sa, &p.nonce, &p.tsi, &p.tsr)
        else {
            refuse(self, notify::INVALID_SYNTAX, vec![])?;
            return Err(DropReason::Missing("SA, Nonce, TSi or TSr"));
        };
        // the SA being rekeyed: REKEY_SA carries the peer's inbound SPI
        let old = match &p.rekey {
            None => None,
            Some(n) => {
                let Ok(b) = <[u8; 4]>::try_from(&n.spi[..]) else {
                    return refuse(self, notify::INVALID_SYNTAX, vec![]);
                };
                let spi_out = u32::from_be_bytes(b);
                let Some(c) = sa.children.iter().find(|c| c.spi_out == spi_out) else {
                    return refuse(self, notify::CHILD_SA_NOT_FOUND, vec![]);
                };
                let colliding = c.state == ChildState::Rekeying
                    && matches!(sa.rk.child_collisions.get(&c.spi_in), Some(None));
                if !(c.state == ChildState::Active || colliding) || !c.outbound {
                    // already rekeyed or being deleted (§2.25)
                    return refuse(self, notify::TEMPORARY_FAILURE, vec![]);
                }
                Some(c.spi_in)
            }
        };
        let Some(mut c) = select_esp(&self.config.esp_proposals, props) else {
            return refuse(self, notify::NO_PROPOSAL_CHOSEN, vec![]);
        };
        let Some((n_local, n_remote)) = self.config.narrow(tsi, tsr) else {
            return refuse(self, notify::TS_UNACCEPTABLE, vec![]);
        };
        let mut ke_out = None;
        let shared = match c.dh {
            None => None,
            Some(g) => match &p.ke {
                Some((grp, data)) if *grp == g.id() => {
                    let d = DhPrivate::generate(g, &mut *self.rng);
                    let Ok(s) = d.shared(data) else {
                        return refuse(self, notify::INVALID_SYNTAX, vec![]);
                    };
                    ke_out = Some(d);
                    Some(s)
                }
                Some(_) => {
                    // a KE of another group: ask for the one we chose
                    return refuse(
                        self,
                        notify::INVALID_KE_PAYLOAD,
                        g.id().to_be_bytes().to_vec(),
                    );
                }
                None => {
                    // no KE payload: no PFS for this CHILD SA then
                    c.dh = None;
                    None
                }
            },
        };
        let spi_in = self.new_child_spi();
        let nr = self.nonce();
        let sa = self.sas.get(&id).expect("caller checked");
        let algs = sa.algs.expect("keys");
        let keys = sa.keys.as_ref().expect("keys");
        let (i2r, r2i) = child_keymat(
            algs.prf,
            &keys.sk_d,
            &c.transform,
            shared.as_deref().map(|s| &s[..]),
            ni,
            &nr,
        );
        let mut out = vec![
            Payload::Sa(vec![c.to_wire(spi_in)]),
            Payload::Nonce(nr.clone()),
        ];
        if let Some(d) = &ke_out {
            out.push(Payload::Ke {
                group: d.group().id(),
                data: d.public().to_vec(),
            });
        }
        out.push(Payload::TsI(n_remote.clone()));
        out.push(Payload::TsR(n_local.clone()));
        let params = self.child_params(
            id,
            sa,
            spi_in,
            c.peer_spi,
            c.transform,
            (i2r, r2i),
            n_local.clone(),
            n_remote.clone(),
        );
        self.respond(id, exchange::CREATE_CHILD_SA, mid, out);
        let child = self.new_child(
            now,
            spi_in,
            c.peer_spi,
            c.transform,
            n_local,
            n_remote,
            old.is_none(),
        );
        let sa = self.sas.get_mut(&id).expect("caller checked");
        sa.children.push(child);
        match old {
            None => self.outputs.push_back(Output::InstallChildSa(params)),
            Some(o) => {
                self.outputs.push_back(Output::InstallChildSaInbound {
                    params,
                    replaces: Some(o),
                });
                if let Some(slot) = sa.rk.child_collisions.get_mut(&o) {
                    // collision: decided when our own exchange completes
                    *slot = Some(PeerExchange {
                        ni: ni.clone(),
                        nr,
                        created: spi_in,
                    });
                } else if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == o) {
                    c.state = ChildState::Replaced {
                        successor: Some(spi_in),
                    };
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ DELETE

    /// The peer deletes the CHILD SA it receives with `spi_out`. Returns our
    /// inbound SPI to list in the answer (none if we are deleting it too,
    /// §1.4.1).
    pub(super) fn peer_deletes_child(&mut self, id: SaId, spi_out: u32) -> Option<u32> {
        let sa = self.sas.get_mut(&id)?;
        let c = sa.children.iter().find(|c| c.spi_out == spi_out)?;
        let spi_in = c.spi_in;
        let ours_too = c.state == ChildState::Deleting;
        let successor = match c.state {
            ChildState::Replaced { successor } => successor,
            ChildState::Rekeying => sa
                .rk
                .child_collisions
                .get(&spi_in)
                .and_then(|x| x.as_ref().map(|p| p.created)),
            _ => None,
        };
        if c.outbound {
            if let Some(s) = successor {
                // the peer finished its rekey: it holds `s`, move to it
                self.switch_outbound(id, Some(spi_in), s);
            }
        }
        self.drop_child(id, spi_in);
        (!ours_too).then_some(spi_in)
    }

    /// The peer answered our INFORMATIONAL Delete.
    pub(super) fn delete_response(&mut self, _now: Instant, id: SaId, op: Op) {
        match op {
            Op::DeleteChild(spis) => {
                for s in spis {
                    self.drop_child(id, s);
                }
            }
            Op::DeleteIke => {
                let ev = Event::Closed {
                    sa: id,
                    by_peer: false,
                };
                self.remove_sa(id, ev);
            }
            _ => {}
        }
    }

    /// The peer deletes IKE SA `id` (already answered). True if that ends a
    /// rekey (the CHILD SAs move to the successor; no `Closed` event).
    pub(super) fn peer_deletes_ike(&mut self, now: Instant, id: SaId) -> bool {
        let Some(sa) = self.sas.get_mut(&id) else {
            return true;
        };
        if sa.rk.inactive || sa.rk.replaced {
            // a redundant SA from a collision, or one already replaced
            let ev = Event::Closed {
                sa: id,
                by_peer: true,
            };
            if !matches!(
                sa.pending.as_ref().map(|p| &p.op),
                Some(Op::RekeyIke { .. })
            ) {
                self.remove_sa(id, ev);
            }
            return true;
        }
        let successor = sa.rk.successor.or_else(|| {
            sa.rk
                .ike_rekey
                .as_ref()
                .and_then(|x| x.as_ref().map(|p| p.created))
        });
        let Some(new) = successor.filter(|n| self.sas.contains_key(n)) else {
            return false;
        };
        self.adopt(now, id, new, false);
        let sa = self.sas.get(&id).expect("still there");
        // our own colliding rekey is still in flight: keep the old SA to
        // hear its answer (and delete what it created); else it is gone
        if !matches!(
            sa.pending.as_ref().map(|p| &p.op),
            Some(Op::RekeyIke { .. })
        ) {
            let ev = Event::Closed {
                sa: id,
                by_peer: true,
            };
            self.remove_sa(id, ev);
        }
        true
    }

    // ------------------------------------------------------------ IKE SA rekey

    fn send_ike_rekey(&mut self, now: Instant, id: SaId, group: Option<DhGroup>, retried: bool) {
        let Some(sa) = self.sas.get(&id) else {
            return;
        };
        let group = group.unwrap_or(sa.algs.expect("keys").dh);
        let new_spi = self.new_spi();
        let ni = self.nonce();
        let dh = DhPrivate::generate(group, &mut *self.rng);
        let props = self
            .config
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut w = p.to_wire(i as u8 + 1);
                w.spi = new_spi.to_vec();
                w
            })
            .collect();
        let inner = vec![
            Payload::Sa(props),
            Payload::Nonce(ni.clone()),
            Payload::Ke {
                group: group.id(),
                data: dh.public().to_vec(),
            },
        ];
        let sa = self.sas.get_mut(&id).expect("exists");
        sa.rk.ike_rekey = Some(None);
        self.send_encrypted_request(now, id, exchange::CREATE_CHILD_SA, inner);
        self.set_op(
            id,
            Op::RekeyIke {
                new_spi,
                ni,
                dh,
                retried,
            },
        );
    }

    /// The new IKE SA's keys (§2.18): SKEYSEED = prf(SK_d (old), g^ir (new)
    /// | Ni | Nr) with the old IKE SA's PRF, expanded with the new SPIs.
    #[allow(clippy::too_many_arguments)]
    fn rekeyed_sa(
        &self,
        old: &IkeSa,
        now: Instant,
        initiator: bool,
        spi_i: [u8; 8],
        spi_r: [u8; 8],
        ni: &[u8],
        nr: &[u8],
        shared: &[u8],
        choice: crate::config::IkeChoice,
        group: DhGroup,
    ) -> IkeSa {
        let old_algs = old.algs.expect("keys");
        let old_keys = old.keys.as_ref().expect("keys");
        let skeyseed = old_algs.prf.prf(&old_keys.sk_d, &[shared, ni, nr]);
        let algs = choice.algs(group);
        let keys = IkeKeys::expand(&algs, &skeyseed, ni, nr, &spi_i, &spi_r);
        IkeSa {
            initiator,
            state: State::Established,
            spi_i,
            spi_r,
            remote: old.remote,
            local_port: old.local_port,
            created: now,
            last_heard: now,
            dh: None,
            dh_group: group,
            ni: ni.to_vec(),
            nr: nr.to_vec(),
            cookie: None,
            ke_retries: 0,
            cookie_retries: 0,
            init_req: Vec::new(),
            init_resp: Vec::new(),
            choice: Some(choice),
            sk_out: Some(keys.sk(&algs, initiator)),
            sk_in: Some(keys.sk(&algs, !initiator)),
            algs: Some(algs),
            keys: Some(keys),
            nat_local: old.nat_local,
            nat_remote: old.nat_remote,
            next_request_id: 0,
            expected_request_id: 0,
            pending: None,
            last_response: None,
            iv_counter: 0,
            first_child_spi: 0,
            children: Vec::new(),
            peer_id: old.peer_id.clone(),
            rk: SaRekey {
                inactive: true,
                ..Default::default()
            },
            // RFC 7383 §2.3: the new IKE SA keeps the negotiated fragmentation
            frag: crate::fragment::FragState::inherit(&old.frag),
        }
    }

    fn ike_rekey_request(
        &mut self,
        now: Instant,
        id: SaId,
        mid: u32,
        inner: Vec<Payload>,
    ) -> Result<(), DropReason> {
        let p = parse(inner);
        let sa = self.sas.get(&id).expect("caller checked");
        let refuse = |ep: &mut Endpoint, n: u16, data: Vec<u8>| {
            ep.respond(id, exchange::CREATE_CHILD_SA, mid, notify_payload(n, data));
            Ok(())
        };
        let colliding = matches!(sa.rk.ike_rekey, Some(None));
        if sa.rk.inactive
            || sa.rk.replaced
            || sa.rk.successor.is_some()
            || (sa.rk.ike_rekey.is_some() && !colliding)
            || !Self::children_at_rest(sa)
        {
            return refuse(self, notify::TEMPORARY_FAILURE, vec![]);
        }
        let (Some(props), Some(ni), Some((ke_group, ke_data))) = (&p.sa, &p.nonce, &p.ke) else {
            refuse(self, notify::INVALID_SYNTAX, vec![])?;
            return Err(DropReason::Missing("SA, Nonce or KE"));
        };
        let Some(choice) = select_ike(&self.config.ike_proposals, props) else {
            return refuse(self, notify::NO_PROPOSAL_CHOSEN, vec![]);
        };
        let Some(peer_spi) = props
            .iter()
            .find(|x| x.num == choice.num && x.protocol == proto::IKE)
            .and_then(|x| <[u8; 8]>::try_from(&x.spi[..]).ok())
            .filter(|s| *s != [0; 8])
        else {
            return refuse(self, notify::INVALID_SYNTAX, vec![]);
        };
        let group = match DhGroup::from_id(*ke_group) {
            Some(g) if choice.dh.contains(&g) => g,
            _ => {
                let want = choice.dh[0].id().to_be_bytes().to_vec();
                return refuse(self, notify::INVALID_KE_PAYLOAD, want);
            }
        };
        let dh = DhPrivate::generate(group, &mut *self.rng);
        let Ok(shared) = dh.shared(ke_data) else {
            return refuse(self, notify::INVALID_SYNTAX, vec![]);
        };
        let spi_r = self.new_spi();
        let nr = self.nonce();
        let sa = self.sas.get(&id).expect("caller checked");
        let new = self.rekeyed_sa(
            sa,
            now,
            false,
            peer_spi,
            spi_r,
            ni,
            &nr,
            &shared,
            choice.clone(),
            group,
        );
        let mut prop = choice.to_wire(group);
        prop.spi = spi_r.to_vec();
        let out = vec![
            Payload::Sa(vec![prop]),
            Payload::Nonce(nr.clone()),
            Payload::Ke {
                group: group.id(),
                data: dh.public().to_vec(),
            },
        ];
        self.respond(id, exchange::CREATE_CHILD_SA, mid, out);
        let new_id = u64::from_be_bytes(spi_r);
        self.sas.insert(new_id, new);
        let sa = self.sas.get_mut(&id).expect("caller checked");
        if colliding {
            sa.rk.ike_rekey = Some(Some(PeerExchange {
                ni: ni.clone(),
                nr,
                created: new_id,
            }));
        } else {
            sa.rk.successor = Some(new_id);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn ike_rekey_response(
        &mut self,
        now: Instant,
        id: SaId,
        new_spi: [u8; 8],
        ni: Vec<u8>,
        dh: DhPrivate,
        retried: bool,
        inner: Vec<Payload>,
    ) -> Result<(), DropReason> {
        let fail = |ep: &mut Endpoint, ntype: u16| {
            let retry = now + ep.retry_delay();
            let Some(sa) = ep.sas.get_mut(&id) else {
                return;
            };
            let peer = sa.rk.ike_rekey.take().flatten();
            let zombie = sa.rk.replaced;
            match peer {
                Some(p) => sa.rk.successor = Some(p.created),
                None => sa.rk.rekey_at = Some(retry),
            }
            ep.outputs.push_back(Output::Event(Event::RekeyFailed {
                sa: id,
                child: None,
                notify: ntype,
            }));
            if zombie {
                let ev = Event::Closed {
                    sa: id,
                    by_peer: true,
                };
                ep.remove_sa(id, ev);
            }
        };
        if let Some(n) = error_notify(&inner) {
            let ntype = n.ntype;
            let g = group_of(n);
            let sa = self.sas.get(&id).expect("caller checked");
            let offered = g.filter(|g| self.config.ike_proposals.iter().any(|p| p.dh.contains(g)));
            if ntype == notify::INVALID_KE_PAYLOAD && !retried && !sa.rk.replaced {
                if let Some(g) = offered {
                    self.send_ike_rekey(now, id, Some(g), true);
                    return Ok(());
                }
            }
            fail(self, ntype);
            return Ok(());
        }
        let p = parse(inner);
        let choice = p.sa.as_ref().and_then(|props| {
            (props.len() == 1)
                .then(|| select_ike(&self.config.ike_proposals, props))
                .flatten()
                .filter(|c| c.dh.contains(&dh.group()))
                .map(|c| (c, props[0].spi.clone()))
        });
        let shared =
            p.ke.as_ref()
                .filter(|(g, _)| *g == dh.group().id())
                .and_then(|(_, d)| dh.shared(d).ok());
        let (Some((choice, spi)), Some(nr), Some(shared)) = (choice, p.nonce, shared) else {
            fail(self, notify::NO_PROPOSAL_CHOSEN);
            return Ok(());
        };
        let Some(spi_r) = <[u8; 8]>::try_from(&spi[..]).ok().filter(|s| *s != [0; 8]) else {
            fail(self, notify::INVALID_SYNTAX);
            return Ok(());
        };
        let sa = self.sas.get(&id).expect("caller checked");
        let new = self.rekeyed_sa(
            sa,
            now,
            true,
            new_spi,
            spi_r,
            &ni,
            &nr,
            &shared,
            choice,
            dh.group(),
        );
        let new_id = u64::from_be_bytes(new_spi);
        self.sas.insert(new_id, new);
        let sa = self.sas.get_mut(&id).expect("caller checked");
        let peer = sa.rk.ike_rekey.take().flatten();
        let zombie = sa.rk.replaced;
        let won = match &peer {
            None => true,
            Some(x) => {
                let won = !lost([&ni, &nr], [&x.ni, &x.nr]);
                self.outputs.push_back(Output::Event(Event::RekeyCollision {
                    sa: id,
                    child: None,
                    won,
                }));
                won
            }
        };
        if won && !zombie {
            self.adopt(now, id, new_id, true);
        } else {
            // ours is redundant (§2.8.2): delete it
            if let (Some(x), false) = (&peer, zombie) {
                sa.rk.successor = Some(x.created);
            }
            self.enqueue(now, new_id, Queued::DeleteIke);
        }
        if zombie {
            let ev = Event::Closed {
                sa: id,
                by_peer: true,
            };
            self.remove_sa(id, ev);
        }
        Ok(())
    }

    /// IKE SA `new` takes over from `old`: the CHILD SAs (and requests
    /// queued for them) move, `old` is marked replaced and, when we
    /// initiated the surviving exchange, deleted.
    fn adopt(&mut self, now: Instant, old: SaId, new: SaId, delete_old: bool) {
        let Some(o) = self.sas.get_mut(&old) else {
            return;
        };
        let children = std::mem::take(&mut o.children);
        let queued: Vec<Queued> =
            o.rk.queue
                .drain(..)
                .filter(|q| !matches!(q, Queued::RekeyIke | Queued::DeleteIke))
                .collect();
        o.rk.replaced = true;
        o.rk.successor = None;
        let last_heard = o.last_heard;
        let Some(n) = self.sas.get_mut(&new) else {
            return;
        };
        n.children.extend(children);
        n.rk.queue.extend(queued);
        n.rk.inactive = false;
        n.last_heard = n.last_heard.max(last_heard);
        self.outputs
            .push_back(Output::Event(Event::IkeRekeyed { old, new }));
        self.schedule_ike(now, new);
        if delete_old {
            self.enqueue(now, old, Queued::DeleteIke);
        }
        self.kick(now, new);
    }

    /// INITIAL_CONTACT (§2.4): the peer holds no other SA with us, so every
    /// other IKE SA with this identity is stale.
    pub(super) fn initial_contact(&mut self, keep: SaId, peer: &crate::wire::Identity) {
        let stale: Vec<SaId> = self
            .sas
            .iter()
            .filter(|(id, s)| {
                **id != keep && s.state == State::Established && s.peer_id.as_ref() == Some(peer)
            })
            .map(|(id, _)| *id)
            .collect();
        if !stale.is_empty() {
            self.outputs.push_back(Output::Event(Event::InitialContact {
                sa: keep,
                peer: peer.clone(),
                stale: stale.clone(),
            }));
        }
        for id in stale {
            self.remove_sa(
                id,
                Event::Closed {
                    sa: id,
                    by_peer: true,
                },
            );
        }
    }
}
