//! Key lifetimes in time, bytes and packets.
//!
//! Crossing a soft limit yields [`KeyStatus::Expiring`] exactly once (the
//! control task rekeys); crossing a hard limit makes the key refuse to seal or
//! open anything, so no packet ever travels under an expired key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub soft_time: Option<Duration>,
    pub hard_time: Option<Duration>,
    pub soft_bytes: Option<u64>,
    pub hard_bytes: Option<u64>,
    pub soft_packets: Option<u64>,
    pub hard_packets: Option<u64>,
}

/// What the engine tells the caller after using a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    Fresh,
    /// A soft limit was crossed by this very packet; reported once per key.
    Expiring,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("key passed its hard lifetime ({0})")]
pub struct Expired(pub &'static str);

/// Usage of one key; shared by the data-path workers through `&self`.
#[derive(Debug)]
pub struct Lifetime {
    created: Instant,
    limits: Limits,
    bytes: AtomicU64,
    packets: AtomicU64,
    soft_reported: AtomicBool,
    expired: AtomicBool,
}

impl Lifetime {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            created: now,
            limits,
            bytes: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            soft_reported: AtomicBool::new(false),
            expired: AtomicBool::new(false),
        }
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.created)
    }

    /// Is the key past a hard limit (without using it)?
    pub fn check(&self, now: Instant) -> Result<(), Expired> {
        if self.expired.load(Ordering::Relaxed) {
            return Err(Expired("retired"));
        }
        let l = &self.limits;
        if l.hard_time.is_some_and(|t| self.age(now) >= t) {
            return Err(Expired("time"));
        }
        if l.hard_packets.is_some_and(|p| self.packets() >= p) {
            return Err(Expired("packets"));
        }
        if l.hard_bytes.is_some_and(|b| self.bytes() >= b) {
            return Err(Expired("bytes"));
        }
        Ok(())
    }

    /// Counts one packet of `bytes` and reports whether a soft limit was just crossed.
    pub fn account(&self, now: Instant, bytes: usize) -> KeyStatus {
        let packets = self.packets.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.bytes.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        let l = &self.limits;
        let soft = l.soft_packets.is_some_and(|p| packets >= p)
            || l.soft_bytes.is_some_and(|b| total >= b)
            || l.soft_time.is_some_and(|t| self.age(now) >= t);
        if soft && !self.soft_reported.swap(true, Ordering::Relaxed) {
            KeyStatus::Expiring
        } else {
            KeyStatus::Fresh
        }
    }

    /// Is a soft limit crossed (time-based ones included) without using the key?
    pub fn soft_expired(&self, now: Instant) -> bool {
        let l = &self.limits;
        l.soft_packets.is_some_and(|p| self.packets() >= p)
            || l.soft_bytes.is_some_and(|b| self.bytes() >= b)
            || l.soft_time.is_some_and(|t| self.age(now) >= t)
    }

    /// Retires the key now (control task: superseded, or deleted by the peer).
    pub fn retire(&self) {
        self.expired.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_once_then_hard() {
        let now = Instant::now();
        let l = Lifetime::new(
            Limits {
                soft_packets: Some(3),
                hard_packets: Some(5),
                ..Default::default()
            },
            now,
        );
        assert_eq!(l.account(now, 10), KeyStatus::Fresh);
        assert_eq!(l.account(now, 10), KeyStatus::Fresh);
        assert_eq!(l.account(now, 10), KeyStatus::Expiring);
        assert_eq!(l.account(now, 10), KeyStatus::Fresh);
        assert!(l.check(now).is_ok());
        l.account(now, 10);
        assert_eq!(l.check(now), Err(Expired("packets")));
        assert_eq!(l.bytes(), 50);
    }

    #[test]
    fn time_limits() {
        let t0 = Instant::now();
        let l = Lifetime::new(
            Limits {
                soft_time: Some(Duration::from_secs(120)),
                hard_time: Some(Duration::from_secs(180)),
                ..Default::default()
            },
            t0,
        );
        assert_eq!(
            l.account(t0 + Duration::from_secs(119), 1),
            KeyStatus::Fresh
        );
        assert_eq!(
            l.account(t0 + Duration::from_secs(120), 1),
            KeyStatus::Expiring
        );
        assert!(l.check(t0 + Duration::from_secs(179)).is_ok());
        assert_eq!(l.check(t0 + Duration::from_secs(180)), Err(Expired("time")));
        l.retire();
        assert!(l.check(t0).is_err());
    }
}
