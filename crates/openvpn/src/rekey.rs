//! Renegotiation (soft reset) of the data channel keys: key update on
//! demand (KU) and key expiration by time, bytes or packets (KE), from
//! either side, as OpenVPN 2.6 does it (`ssl.c`: `key_state_soft_reset`,
//! `tls_process`, `lame_duck_must_die`).
//!
//! - A soft reset starts a new key-id (1..7, cycling; 0 is only the first
//!   key) on the *same* control channel: same session ids, same
//!   tls-auth/tls-crypt wrapping, but a fresh reliability layer, a fresh
//!   TLS session and key method 2 again; the data keys come from the new
//!   TLS session's exporter (tls-ekm), with the cipher and peer-id of the
//!   first key.
//! - The side that starts sends P_CONTROL_SOFT_RESET_V1 with the new
//!   key-id; the other answers with its own. Each side's TLS starts when
//!   the peer's reset arrives. Both may start at once (collision): each
//!   then takes the other's reset as the answer.
//! - The new key is installed for receiving as soon as the TLS handshake
//!   ends (the peer may use it from the moment it derived it). Sending
//!   switches once key method 2 went both ways and all our messages are
//!   acknowledged (OpenVPN's S_ACTIVE); a client waits further until the
//!   server sends with the new key or [`SWITCH_DELAY`] passed, because an
//!   OpenVPN server derives its key only when our ACK of its key method 2
//!   arrived, and that ACK may be lost.
//! - The old key becomes the lame duck: still open for packets in flight.
//!   It is retired at the next soft reset, `tran-window` after the soft
//!   reset started, or earlier once the new key carried traffic both ways,
//!   the old one was silent for [`LAME_DUCK_LINGER`] and `hand-window`
//!   passed (an OpenVPN peer may keep sending with the old key until its
//!   new key's deferred-authentication window, at most `hand-window`,
//!   ends).
//! - Triggers: `reneg-sec` from when the key became active, with OpenVPN's
//!   jitter ([`RenegSec::effective`]); `reneg-bytes` / `reneg-pkts` over
//!   both directions; the packet-id nearing its wrap; the record engine's
//!   `KeyExpiring` ([`Session::key_expiring`]); a command
//!   ([`Session::renegotiate`]); the peer's soft reset.

use crate::data::SOFT_PACKET_ID;
use crate::packet::{KeyId, Opcode};
use crate::session::{Event, KeyState, Output, Session};
use polytun_core::Limits;
use rand_core::RngCore;
use std::time::{Duration, Instant};

/// How long a client keeps sending with the old key after the new one is
/// ready, unless the server already sends with the new one.
pub const SWITCH_DELAY: Duration = Duration::from_secs(5);
/// How long the lame duck must have been silent before it may be retired
/// early (packets still in flight or queued).
pub const LAME_DUCK_LINGER: Duration = Duration::from_secs(5);
/// Traffic counters are looked at this often while something waits on them.
pub const COUNTER_CHECK: Duration = Duration::from_secs(1);
/// OpenVPN's `tran-window` default.
pub const TRAN_WINDOW: Duration = Duration::from_secs(3600);

/// The key-id after `k`: 1..7 cycling, never 0 again.
pub fn next_key_id(k: KeyId) -> KeyId {
    match (k + 1) & 7 {
        0 => 1,
        n => n,
    }
}

/// `reneg-sec max [min]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenegSec {
    /// 0: no renegotiation by time.
    pub max: u32,
    pub min: Option<u32>,
}

impl Default for RenegSec {
    fn default() -> Self {
        Self {
            max: 3600,
            min: None,
        }
    }
}

impl RenegSec {
    /// The period one session uses (OpenVPN `do_init_crypto_tls`): with
    /// `min`, uniformly in (min, max]; without, a server takes up to 10 %
    /// off `max` and a client uses `max` exactly.
    pub fn effective(self, is_server: bool, rng: &mut dyn RngCore) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let span = match self.min {
            Some(min) => self.max.saturating_sub(min).max(1),
            None if is_server => (self.max / 10).max(1),
            None => 1,
        };
        let secs = self.max - rng.next_u32() % span;
        (secs > 0).then(|| Duration::from_secs(secs.into()))
    }
}

/// What renegotiates and how long the old key lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyConfig {
    pub reneg_sec: RenegSec,
    /// `reneg-bytes`: payload bytes of a key, both directions together.
    pub reneg_bytes: Option<u64>,
    /// `reneg-pkts`: packets of a key, both directions together.
    pub reneg_pkts: Option<u64>,
    /// `tran-window`: the longest the lame duck is kept.
    pub tran_window: Duration,
}

impl Default for RekeyConfig {
    fn default() -> Self {
        Self {
            reneg_sec: RenegSec::default(),
            reneg_bytes: None,
            reneg_pkts: None,
            tran_window: TRAN_WINDOW,
        }
    }
}

impl RekeyConfig {
    /// The record engine's limits of a new data key: reaching `reneg-bytes`
    /// or `reneg-pkts` in one direction makes the data path report
    /// `KeyExpiring` at once (the session's own check adds both
    /// directions, at most [`COUNTER_CHECK`] late).
    pub fn data_limits(&self, base: Limits) -> Limits {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Limits {
            soft_bytes: min(base.soft_bytes, self.reneg_bytes),
            soft_packets: min(base.soft_packets, self.reneg_pkts),
            ..base
        }
    }
}

/// Why a renegotiation started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RekeyReason {
    /// `reneg-sec` elapsed.
    Seconds,
    /// `reneg-bytes` reached.
    Bytes,
    /// `reneg-pkts` reached.
    Packets,
    /// The send packet-id nears its 32-bit wrap.
    PacketIdWrap,
    /// The data path reported `KeyExpiring` for the key.
    DataLimit,
    /// Asked for (`polytun rekey`).
    Command,
    /// The peer sent P_CONTROL_SOFT_RESET_V1.
    Peer,
}

impl std::fmt::Display for RekeyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RekeyReason::Seconds => "reneg-sec",
            RekeyReason::Bytes => "reneg-bytes",
            RekeyReason::Packets => "reneg-pkts",
            RekeyReason::PacketIdWrap => "packet-id near wrap",
            RekeyReason::DataLimit => "key limit reached",
            RekeyReason::Command => "on request",
            RekeyReason::Peer => "by the peer",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RekeyError {
    #[error("the session is not connected")]
    NotConnected,
    #[error("a renegotiation (key-id {0}) is already under way")]
    InProgress(KeyId),
}

/// The keys of a session, for `show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key-id outbound packets use.
    pub send_key_id: Option<KeyId>,
    /// The newest key-id (under negotiation while `renegotiating`).
    pub primary_key_id: KeyId,
    pub lame_duck_key_id: Option<KeyId>,
    pub renegotiating: bool,
    /// Until `reneg-sec` starts the next renegotiation from this side.
    pub next_renegotiation: Option<Duration>,
    /// Soft resets so far (either side).
    pub renegotiations: u64,
}

/// The previous key after a soft reset (OpenVPN's KS_LAME_DUCK).
pub(crate) struct LameDuck {
    pub(crate) ks: KeyState,
    started: Instant,
    must_die: Instant,
    /// Packets opened with it at the last look, and when that changed.
    rx_seen: u64,
    rx_changed: Instant,
}

impl LameDuck {
    fn rx_packets(&self) -> u64 {
        self.ks
            .data
            .as_ref()
            .map_or(0, |d| d.opening.lifetime().packets())
    }
}

/// Timers of the renegotiation logic.
pub(crate) struct RekeyTimers {
    /// This session's `reneg-sec` after jitter.
    reneg_sec: Option<Duration>,
    reneg_at: Option<Instant>,
    switch_at: Option<Instant>,
    next_check: Option<Instant>,
    renegotiations: u64,
}

impl RekeyTimers {
    pub(crate) fn new(cfg: &RekeyConfig, is_server: bool, rng: &mut dyn RngCore) -> Self {
        Self {
            reneg_sec: cfg.reneg_sec.effective(is_server, rng),
            reneg_at: None,
            switch_at: None,
            next_check: None,
            renegotiations: 0,
        }
    }

    /// The primary key became active at `now`: `reneg-sec` counts from here.
    pub(crate) fn key_ready(&mut self, now: Instant) {
        self.reneg_at = self.reneg_sec.map(|d| now + d);
    }
}

fn retire(outputs: &mut std::collections::VecDeque<Output>, l: LameDuck) {
    if let Some(d) = &l.ks.data {
        // Anything still holding it can no longer use it.
        d.sealing.lifetime().retire();
        d.opening.lifetime().retire();
    }
    outputs.push_back(Output::RetireKey(l.ks.key_id));
}

impl Session {
    /// Sets `reneg-sec` / `reneg-bytes` / `reneg-pkts` / `tran-window`
    /// (OpenVPN's defaults otherwise: `reneg-sec 3600`, `tran-window
    /// 3600`). Keys derived later get the byte and packet limits; the
    /// running key's `reneg-sec` restarts from `now`.
    pub fn set_rekey(&mut self, now: Instant, cfg: RekeyConfig) {
        let is_server = !self.is_client();
        let renegotiations = self.timers.renegotiations;
        self.timers = RekeyTimers::new(&cfg, is_server, &mut *self.rng);
        self.timers.renegotiations = renegotiations;
        self.rekey = cfg;
        if self.primary.ready_at.is_some() {
            self.timers.key_ready(now);
        }
    }

    pub fn rekey_config(&self) -> &RekeyConfig {
        &self.rekey
    }

    /// This session's `reneg-sec` after jitter (None: off).
    pub fn effective_reneg_sec(&self) -> Option<Duration> {
        self.timers.reneg_sec
    }

    /// Starts a renegotiation now (KU): returns the new key-id.
    pub fn renegotiate(&mut self, now: Instant) -> Result<KeyId, RekeyError> {
        if !self.is_active() {
            return Err(RekeyError::NotConnected);
        }
        if self.primary.ready_at.is_none() {
            return Err(RekeyError::InProgress(self.primary.key_id));
        }
        let k = self.begin_soft_reset(now, RekeyReason::Command, true);
        self.flush(now);
        Ok(k)
    }

    /// The data path saw `KeyStatus::Expiring` for `key_id` (KE): the
    /// current key renegotiates; an older one is ignored.
    pub fn key_expiring(&mut self, now: Instant, key_id: KeyId) {
        if self.is_active() && key_id == self.primary.key_id && self.primary.ready_at.is_some() {
            self.begin_soft_reset(now, RekeyReason::DataLimit, true);
            self.flush(now);
        }
    }

    pub fn key_info(&self, now: Instant) -> KeyInfo {
        let lame = self.lame.as_ref().map(|l| &l.ks);
        let send_key_id = if self.primary.sending {
            Some(self.primary.key_id)
        } else {
            lame.filter(|k| k.sending).map(|k| k.key_id)
        };
        let renegotiating = self.primary.key_id != 0 && self.primary.ready_at.is_none();
        KeyInfo {
            send_key_id,
            primary_key_id: self.primary.key_id,
            lame_duck_key_id: lame.map(|k| k.key_id),
            renegotiating,
            next_renegotiation: (!renegotiating)
                .then_some(self.timers.reneg_at)
                .flatten()
                .map(|t| t.saturating_duration_since(now)),
            renegotiations: self.timers.renegotiations,
        }
    }

    /// A control packet for a key-id that is neither the primary nor the
    /// lame duck: the peer's soft reset for the next key-id starts a
    /// renegotiation, once the primary key is through key method 2 (as
    /// OpenVPN wants it at least S_GENERATED_KEYS).
    pub(crate) fn accept_soft_reset(
        &mut self,
        now: Instant,
        opcode: Opcode,
        key_id: KeyId,
    ) -> bool {
        if opcode != Opcode::SoftResetV1
            || key_id != self.next_key_id
            || !self.is_active()
            || !self.primary.exchanged()
        {
            return false;
        }
        self.begin_soft_reset(now, RekeyReason::Peer, false);
        true
    }

    /// OpenVPN `key_state_soft_reset`: the primary becomes the lame duck
    /// (the previous lame duck is retired) and a new primary starts.
    pub(crate) fn begin_soft_reset(
        &mut self,
        now: Instant,
        reason: RekeyReason,
        local: bool,
    ) -> KeyId {
        let key_id = self.next_key_id;
        self.next_key_id = next_key_id(key_id);
        if self.primary.data.is_some() && !self.primary.sending {
            // The lame duck we still send with goes away below, and the peer
            // has this key (it finished key method 2 with us).
            self.switch_send();
        }
        if let Some(old) = self.lame.take() {
            retire(&mut self.outputs, old);
        }
        let fresh = KeyState::new(key_id, self.cfg.reliable, now + self.hand_window);
        let mut old = std::mem::replace(&mut self.primary, fresh);
        // Its control channel is over: only retransmissions of the peer's
        // last messages are still acknowledged.
        old.reliable.abandon_sends();
        let rx_seen = old
            .data
            .as_ref()
            .map_or(0, |d| d.opening.lifetime().packets());
        self.lame = Some(LameDuck {
            ks: old,
            started: now,
            must_die: now + self.rekey.tran_window,
            rx_seen,
            rx_changed: now,
        });
        self.timers.reneg_at = None;
        self.timers.switch_at = None;
        self.timers.renegotiations += 1;
        if local {
            self.primary.reliable.send(Opcode::SoftResetV1, Vec::new());
            self.primary.reset_sent = true;
        }
        self.outputs
            .push_back(Output::Event(Event::Renegotiating { key_id, reason }));
        self.schedule_check(now);
        key_id
    }

    fn switch_send(&mut self) {
        self.primary.sending = true;
        if let Some(l) = self.lame.as_mut() {
            l.ks.sending = false;
        }
        self.timers.switch_at = None;
        self.outputs.push_back(Output::SendKey(self.primary.key_id));
        if self.primary.key_id != 0 {
            self.outputs.push_back(Output::Event(Event::Rekeyed {
                key_id: self.primary.key_id,
            }));
        }
    }

    /// After control packets: is the new key active, may we send with it?
    pub(crate) fn rekey_progress(&mut self, now: Instant) {
        if self.is_failed() {
            return;
        }
        let p = &mut self.primary;
        if p.key_id != 0 && p.ready_at.is_none() && p.exchanged() && p.reliable.idle() {
            p.ready_at = Some(now);
            self.timers.key_ready(now);
            self.timers.switch_at = Some(if self.is_client() {
                now + SWITCH_DELAY
            } else {
                // The client derived its key before acknowledging ours.
                now
            });
        }
        if self.primary.ready_at.is_some() && !self.primary.sending {
            let peer_sends = self
                .primary
                .data
                .as_ref()
                .is_some_and(|d| d.opening.lifetime().packets() > 0);
            if peer_sends || self.timers.switch_at.is_some_and(|t| now >= t) {
                self.switch_send();
            }
        }
        self.schedule_check(now);
    }

    /// Timers and counters: renegotiation triggers, the send switch, the
    /// lame duck's end.
    pub(crate) fn rekey_timeout(&mut self, now: Instant) {
        self.rekey_progress(now);
        if let Some(l) = self.lame.as_mut() {
            let rx = l.rx_packets();
            if rx != l.rx_seen {
                l.rx_seen = rx;
                l.rx_changed = now;
            }
            let both_ways = self.primary.sending
                && self.primary.data.as_ref().is_some_and(|d| {
                    d.sealing.lifetime().packets() > 0 && d.opening.lifetime().packets() > 0
                });
            let early = both_ways
                && now >= l.started + self.hand_window
                && now >= l.rx_changed + LAME_DUCK_LINGER;
            if now >= l.must_die || early {
                let l = self.lame.take().expect("checked");
                retire(&mut self.outputs, l);
            }
        }
        if let Some(reason) = self.due(now) {
            self.begin_soft_reset(now, reason, true);
        }
        self.schedule_check(now);
    }

    /// Should this side start a renegotiation now (OpenVPN `tls_process`)?
    fn due(&self, now: Instant) -> Option<RekeyReason> {
        if !self.is_active() || self.primary.ready_at.is_none() {
            return None;
        }
        let k = self.primary.data.as_ref()?;
        let (s, o) = (k.sealing.lifetime(), k.opening.lifetime());
        if self.timers.reneg_at.is_some_and(|t| now >= t) {
            Some(RekeyReason::Seconds)
        } else if self
            .rekey
            .reneg_bytes
            .is_some_and(|b| s.bytes() + o.bytes() >= b)
        {
            Some(RekeyReason::Bytes)
        } else if self
            .rekey
            .reneg_pkts
            .is_some_and(|p| s.packets() + o.packets() >= p)
        {
            Some(RekeyReason::Packets)
        } else if k.sealing.next_counter() >= SOFT_PACKET_ID {
            Some(RekeyReason::PacketIdWrap)
        } else {
            None
        }
    }

    /// Something waits on traffic counters (which tell no deadline).
    fn needs_polling(&self) -> bool {
        let ready = self.primary.ready_at.is_some();
        self.lame.is_some()
            || (ready && !self.primary.sending)
            || (ready && (self.rekey.reneg_bytes.is_some() || self.rekey.reneg_pkts.is_some()))
    }

    fn schedule_check(&mut self, now: Instant) {
        if !self.needs_polling() {
            self.timers.next_check = None;
        } else if self.timers.next_check.is_none_or(|t| t <= now) {
            self.timers.next_check = Some(now + COUNTER_CHECK);
        }
    }

    pub(crate) fn rekey_deadline(&self) -> Option<Instant> {
        if !self.is_active() {
            return None;
        }
        let ready = self.primary.ready_at.is_some();
        [
            self.timers.reneg_at.filter(|_| ready),
            self.timers.switch_at.filter(|_| !self.primary.sending),
            self.lame.as_ref().map(|l| l.must_die),
            self.timers.next_check,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u32);
    impl RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            self.0
        }
        fn next_u64(&mut self) -> u64 {
            self.0.into()
        }
        fn fill_bytes(&mut self, d: &mut [u8]) {
            d.fill(0)
        }
        fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
            d.fill(0);
            Ok(())
        }
    }

    #[test]
    fn key_ids_cycle_without_zero() {
        let mut k = 0;
        let mut seen = vec![];
        for _ in 0..15 {
            k = next_key_id(k);
            seen.push(k);
        }
        assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 1]);
    }

    #[test]
    fn reneg_sec_jitter_as_openvpn() {
        let s = |max, min| RenegSec { max, min };
        let secs = |r: RenegSec, server, x| r.effective(server, &mut Fixed(x)).map(|d| d.as_secs());
        // Client without min: exactly max.
        assert_eq!(secs(s(20, None), false, 7), Some(20));
        assert_eq!(secs(s(3600, None), false, 12345), Some(3600));
        // Server without min: up to 10 % off.
        assert_eq!(secs(s(3600, None), true, 359), Some(3241));
        assert_eq!(secs(s(3600, None), true, 360), Some(3600));
        assert_eq!(secs(s(20, None), true, 1), Some(19));
        // With min: in (min, max] on both sides.
        assert_eq!(secs(s(3600, Some(3000)), false, 599), Some(3001));
        assert_eq!(secs(s(3600, Some(3000)), true, 600), Some(3600));
        // Off.
        assert_eq!(secs(s(0, None), true, 5), None);
        assert_eq!(secs(s(0, Some(10)), false, 5), None);
    }

    #[test]
    fn data_limits_take_the_smaller() {
        let c = RekeyConfig {
            reneg_bytes: Some(1000),
            reneg_pkts: None,
            ..Default::default()
        };
        let l = c.data_limits(Limits {
            soft_packets: Some(50),
            soft_bytes: Some(5000),
            ..Default::default()
        });
        assert_eq!((l.soft_bytes, l.soft_packets), (Some(1000), Some(50)));
    }
}
