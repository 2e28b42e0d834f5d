//! Handshake rate limiting per source address, like wireguard-go's
//! `ratelimiter`: a token bucket per IPv4 address or IPv6 /64, 20 handshake
//! messages per second with a burst of 5. Memory is bounded (at most
//! [`MAX_ENTRIES`] sources; when full, new sources are refused until garbage
//! collection, which drops sources idle for a second, driven by `now`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const PACKETS_PER_SECOND: u64 = 20;
pub const PACKETS_BURSTABLE: u64 = 5;
pub const MAX_ENTRIES: usize = 1 << 16;
const PACKET_COST: u64 = 1_000_000_000 / PACKETS_PER_SECOND;
const MAX_TOKENS: u64 = PACKET_COST * PACKETS_BURSTABLE;
const GC_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    table: HashMap<[u8; 16], Bucket>,
    last_gc: Option<Instant>,
}

fn key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_ipv6_mapped().octets(),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0); // one bucket per /64
                o
            }
        },
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Drops sources idle for more than a second (at most once a second).
    pub fn gc(&mut self, now: Instant) {
        if self
            .last_gc
            .is_some_and(|t| now.saturating_duration_since(t) < GC_INTERVAL)
        {
            return;
        }
        self.last_gc = Some(now);
        self.table
            .retain(|_, b| now.saturating_duration_since(b.last) <= GC_INTERVAL);
    }

    /// May a handshake message from `ip` be processed now?
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        self.gc(now);
        let k = key(ip);
        match self.table.get_mut(&k) {
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.last).as_nanos();
                b.last = now;
                b.tokens = (b.tokens as u128 + elapsed).min(MAX_TOKENS as u128) as u64;
                if b.tokens >= PACKET_COST {
                    b.tokens -= PACKET_COST;
                    true
                } else {
                    false
                }
            }
            None => {
                if self.table.len() >= MAX_ENTRIES {
                    return false;
                }
                self.table.insert(
                    k,
                    Bucket {
                        tokens: MAX_TOKENS - PACKET_COST,
                        last: now,
                    },
                );
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut r = RateLimiter::new();
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..10).filter(|_| r.allow(t0, ip)).count();
        assert_eq!(allowed as u64, PACKETS_BURSTABLE);
        // Another source is independent.
        assert!(r.allow(t0, "192.0.2.2".parse().unwrap()));
        // 50 ms buys exactly one more.
        let t1 = t0 + Duration::from_millis(50);
        assert!(r.allow(t1, ip));
        assert!(!r.allow(t1, ip));
        // Over one second at most ~20 more (plus a burst refill).
        let mut n = 0;
        for ms in 0..1000 {
            if r.allow(t1 + Duration::from_millis(ms), ip) {
                n += 1;
            }
        }
        assert!((19..=21).contains(&n), "{n}");
    }

    #[test]
    fn ipv6_by_slash64_and_gc() {
        let mut r = RateLimiter::new();
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        for _ in 0..5 {
            assert!(r.allow(t0, a));
        }
        assert!(!r.allow(t0, b), "same /64 shares the bucket");
        assert!(r.allow(t0, "2001:db8:0:1::1".parse().unwrap()));
        assert_eq!(r.len(), 2);
        r.gc(t0 + Duration::from_secs(3));
        assert!(r.is_empty());
    }

    #[test]
    fn bounded() {
        let mut r = RateLimiter::new();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES as u32 {
            r.allow(t0, IpAddr::V4(i.into()));
        }
        assert!(!r.allow(t0, "2001:db8::1".parse().unwrap()));
        assert_eq!(r.len(), MAX_ENTRIES);
        assert!(r.allow(t0 + Duration::from_secs(2), "2001:db8::1".parse().unwrap()));
        assert_eq!(r.len(), 1);
    }
}
