//! The protocol constants of whitepaper §6.1 (and wireguard-go's
//! `device/constants.go`). What they drive lives in [`crate::rekey`].

use std::time::Duration;

/// After this many messages on a key the initiator starts a new handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// 2^64 − 2^13 − 1: no key sends or accepts a counter this large.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The initiator of a session rekeys when sending on a key this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// No key is used once it is this old.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Handshake retries stop after this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Wait this long for a response before retrying an initiation.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Up to this much random jitter is added to REKEY_TIMEOUT.
pub const REKEY_TIMEOUT_JITTER_MAX_MS: u32 = 333;
/// Send a keepalive when data was received and nothing sent for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Retransmissions of an initiation before giving up (90 s / 5 s − 1, as wireguard-go).
pub const MAX_TIMER_HANDSHAKES: u32 =
    (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32 - 1;
/// Keys are wiped when no new session was derived for this long.
pub const ZERO_KEYS_AFTER: Duration = Duration::from_secs(3 * 180);
/// A responder refuses initiations from one peer faster than this (wireguard-go's flood check).
pub const HANDSHAKE_INITIATION_RATE: Duration = Duration::from_millis(20);
