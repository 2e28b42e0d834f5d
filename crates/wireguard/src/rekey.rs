//! WireGuard's rekey and timer logic (whitepaper §6), all in this one file.
//!
//! Per peer there are five timers (as wireguard-go's `device/timers.go`):
//!
//! | timer | armed when | disarmed when | on expiry |
//! |---|---|---|---|
//! | retransmit handshake | an initiation is sent: REKEY_TIMEOUT + jitter (≤ 333 ms) | a handshake completes | resend the initiation; after MAX_TIMER_HANDSHAKES retries (≈ REKEY_ATTEMPT_TIME = 90 s) give up, and arm "zero keys" if it is not armed |
//! | send keepalive | a data packet (not a keepalive) is received, if not armed: KEEPALIVE_TIMEOUT | any authenticated packet is sent | send a keepalive |
//! | new handshake | a data packet (not a keepalive) is sent, if not armed: KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter | any authenticated packet is received | start a new handshake (the peer went quiet: "data sent, nothing received for 15 s") |
//! | zero keys | a session is derived: 3 × REJECT_AFTER_TIME | | wipe every keypair and the handshake state |
//! | persistent keepalive | any authenticated packet is sent or received (and the interval is set): the interval | | send a keepalive (or a handshake without a key) |
//!
//! And the rekey conditions, checked by the device:
//! - [`should_rekey_on_send`]: after sending, when the current keypair has
//!   sent REKEY_AFTER_MESSAGES, or we initiated it and it is
//!   REKEY_AFTER_TIME old (the core record engine also reports both as
//!   `KeyStatus::Expiring` through the sealing key's soft limits);
//! - [`should_rekey_on_receive`]: after receiving, when we initiated the
//!   current keypair and it is older than REJECT_AFTER_TIME −
//!   KEEPALIVE_TIMEOUT − REKEY_TIMEOUT (165 s): one last-minute handshake so
//!   the session does not die on a peer that only receives;
//! - initiations are sent at most once per REKEY_TIMEOUT ([`PeerTimers::may_initiate`]);
//! - keys past REJECT_AFTER_TIME / REJECT_AFTER_MESSAGES are refused by the
//!   record engine's hard limits ([`crate::transport::Keypair`]).

use crate::timers::*;
use crate::transport::Keypair;
use std::time::{Duration, Instant};

/// What an expired timer asks the device to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send an initiation; `retry` keeps the attempt count.
    Initiate { retry: bool },
    /// Retries exhausted: the handshake failed.
    GiveUp,
    /// Send a keepalive on the current keypair.
    Keepalive,
    /// Persistent keepalive: a keepalive, or a handshake if there is no key.
    PersistentKeepalive,
    /// Wipe all keys of the peer.
    ZeroKeys,
}

#[derive(Debug, Default, Clone)]
pub struct PeerTimers {
    pub retransmit_handshake: Option<Instant>,
    pub send_keepalive: Option<Instant>,
    pub new_handshake: Option<Instant>,
    pub zero_key_material: Option<Instant>,
    pub persistent_keepalive: Option<Instant>,
    pub persistent_interval: Option<Duration>,
    pub handshake_attempts: u32,
    pub last_initiation_sent: Option<Instant>,
    pub sent_last_minute_handshake: bool,
}

impl PeerTimers {
    pub fn new(persistent_interval: Option<Duration>) -> Self {
        Self {
            persistent_interval,
            ..Default::default()
        }
    }

    /// Initiations go out at most once per REKEY_TIMEOUT.
    pub fn may_initiate(&self, now: Instant) -> bool {
        self.last_initiation_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= REKEY_TIMEOUT)
    }

    /// An initiation was sent (first or retry).
    pub fn initiation_sent(&mut self, now: Instant, jitter: Duration, retry: bool) {
        if !retry {
            self.handshake_attempts = 0;
        }
        self.last_initiation_sent = Some(now);
        self.retransmit_handshake = Some(now + REKEY_TIMEOUT + jitter);
    }

    /// A new keypair was derived (either role).
    pub fn session_derived(&mut self, now: Instant) {
        self.zero_key_material = Some(now + ZERO_KEYS_AFTER);
    }

    /// A handshake completed: initiator got the response, or the responder
    /// got the first data packet on its new keypair.
    pub fn handshake_complete(&mut self) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
        self.sent_last_minute_handshake = false;
    }

    pub fn authenticated_packet_received(&mut self) {
        self.new_handshake = None;
    }

    pub fn authenticated_packet_sent(&mut self) {
        self.send_keepalive = None;
    }

    pub fn authenticated_packet_traversal(&mut self, now: Instant) {
        if let Some(i) = self.persistent_interval {
            self.persistent_keepalive = Some(now + i);
        }
    }

    pub fn data_sent(&mut self, now: Instant, jitter: Duration) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter);
        }
    }

    pub fn data_received(&mut self, now: Instant) {
        if self.send_keepalive.is_none() {
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        }
    }

    pub fn set_persistent_interval(&mut self, interval: Option<Duration>, now: Instant) {
        self.persistent_interval = interval;
        // Like wireguard-go: (re)configuring it sends one right away.
        self.persistent_keepalive = interval.map(|_| now);
    }

    /// Everything stops (keys wiped or peer reset); persistent keepalive stays.
    pub fn clear(&mut self) {
        self.retransmit_handshake = None;
        self.send_keepalive = None;
        self.new_handshake = None;
        self.zero_key_material = None;
        self.handshake_attempts = 0;
        self.sent_last_minute_handshake = false;
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fires every expired timer, in wireguard-go's order of concern.
    pub fn fire(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let due = |t: &mut Option<Instant>| {
            if t.is_some_and(|d| d <= now) {
                *t = None;
                true
            } else {
                false
            }
        };
        if due(&mut self.retransmit_handshake) {
            if self.handshake_attempts > MAX_TIMER_HANDSHAKES {
                out.push(Action::GiveUp);
                if self.zero_key_material.is_none() {
                    self.zero_key_material = Some(now + ZERO_KEYS_AFTER);
                }
            } else {
                self.handshake_attempts += 1;
                out.push(Action::Initiate { retry: true });
            }
        }
        if due(&mut self.new_handshake) {
            out.push(Action::Initiate { retry: false });
        }
        if due(&mut self.send_keepalive) {
            out.push(Action::Keepalive);
        }
        if due(&mut self.persistent_keepalive) && self.persistent_interval.is_some() {
            out.push(Action::PersistentKeepalive);
        }
        if due(&mut self.zero_key_material) {
            out.push(Action::ZeroKeys);
        }
        out
    }
}

/// After sending on `kp`: time for a new handshake?
pub fn should_rekey_on_send(kp: &Keypair, now: Instant) -> bool {
    kp.sealing.next_counter() >= REKEY_AFTER_MESSAGES
        || (kp.is_initiator && now.saturating_duration_since(kp.created) >= REKEY_AFTER_TIME)
}

/// After receiving on the current keypair `kp`: time for the last-minute handshake?
pub fn should_rekey_on_receive(kp: &Keypair, now: Instant, timers: &PeerTimers) -> bool {
    !timers.sent_last_minute_handshake
        && kp.is_initiator
        && now.saturating_duration_since(kp.created)
            >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_then_give_up_after_rekey_attempt_time() {
        let t0 = Instant::now();
        let mut t = PeerTimers::new(None);
        t.initiation_sent(t0, Duration::ZERO, false);
        let mut sent = 1;
        let now = loop {
            let now = t.next_deadline().unwrap();
            let a = t.fire(now);
            if a.contains(&Action::GiveUp) {
                break now;
            }
            assert_eq!(a, vec![Action::Initiate { retry: true }]);
            t.initiation_sent(now, Duration::ZERO, true);
            sent += 1;
        };
        // 0, 5, ..., 90 s: 19 initiations, failure declared at 95 s.
        assert_eq!(sent, 19);
        assert_eq!(now - t0, REKEY_ATTEMPT_TIME + REKEY_TIMEOUT);
        assert_eq!(t.zero_key_material, Some(now + ZERO_KEYS_AFTER));
    }

    #[test]
    fn constants() {
        assert_eq!(REJECT_AFTER_MESSAGES, u64::MAX - 8192);
        assert_eq!(REJECT_AFTER_MESSAGES.wrapping_add(8192).wrapping_add(1), 0);
        assert_eq!(MAX_TIMER_HANDSHAKES, 17);
        assert_eq!(
            REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT,
            Duration::from_secs(165)
        );
    }
}
