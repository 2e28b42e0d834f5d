//! When and how polytund rekeys an IPsec tunnel's SAs — the daemon's rekey
//! policy, in one place. The protocol work (CREATE_CHILD_SA, make-before-
//! break, collisions) is in `crates/ike/src/rekey.rs`; this module decides
//! what starts it and keeps the clocks the IKE crate does not own.
//!
//! | trigger | what happens |
//! | --- | --- |
//! | a CHILD SA reaches `rekey_time` minus up to `rand_time` | CREATE_CHILD_SA rekey of that CHILD SA, from either role (the IKE endpoint's timer, configured by [`Lifetimes::apply`]) |
//! | the record engine reports `KeyExpiring` (`rekey_bytes`, `rekey_packets`, or `rekey_time` as a backstop) | [`Endpoint::on_child_key_expiring`] of that SA ([`on_key_expiring`]) |
//! | a CHILD SA reaches `lifetime`, `life_bytes` or `life_packets` | its ESP key retires at once (packets dropped, counted); the CHILD SA is deleted ([`on_key_expired`], or the endpoint's timer for the time) |
//! | an IKE SA reaches `ike_rekey_time` minus up to `ike_rand_time` | CREATE_CHILD_SA rekey of the IKE SA (its CHILD SAs move along) |
//! | an IKE SA reaches `ike_lifetime` | it is deleted |
//! | an IKE SA reaches `reauth_time` minus up to `ike_rand_time` (off by default, as in swanctl) | reauthentication: a new IKE SA with new CHILD SAs, then the old one is deleted (make-before-break) ([`Reauth`]) |
//! | `polytun rekey` / `--child` | every CHILD SA is rekeyed |
//! | `polytun rekey --ike` | every IKE SA is rekeyed |
//! | `polytun rekey --reauth` | every IKE SA is reauthenticated |
//!
//! Jitter (`rand_time`, `ike_rand_time`, strongSwan's defaults: the gap
//! between the rekey and the hard lifetime) keeps two peers with equal
//! lifetimes from always starting the same rekey at once; when they do,
//! the collision is resolved by the IKE crate (RFC 7296 §2.8.1).

use polytun_core::Limits;
use polytun_ike::{Endpoint, SaId};
use rand_core::RngCore;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The lifetime keys of a tunnel as written (durations and sizes as text).
#[derive(Default, Clone, Copy)]
pub struct RawLifetimes<'a> {
    pub lifetime: Option<&'a str>,
    pub rekey_time: Option<&'a str>,
    pub rand_time: Option<&'a str>,
    pub rekey_bytes: Option<&'a str>,
    pub life_bytes: Option<&'a str>,
    pub rekey_packets: Option<&'a str>,
    pub life_packets: Option<&'a str>,
    pub ike_rekey_time: Option<&'a str>,
    pub ike_lifetime: Option<&'a str>,
    pub ike_rand_time: Option<&'a str>,
    pub reauth_time: Option<&'a str>,
}

/// Validated lifetimes of a tunnel's CHILD and IKE SAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifetimes {
    /// CHILD SA soft lifetime (time to rekey).
    pub rekey_time: Duration,
    /// CHILD SA hard lifetime (the SA is gone).
    pub lifetime: Duration,
    pub rand_time: Duration,
    pub rekey_bytes: Option<u64>,
    pub life_bytes: Option<u64>,
    pub rekey_packets: Option<u64>,
    pub life_packets: Option<u64>,
    /// `None`: IKE SAs are not rekeyed by time.
    pub ike_rekey_time: Option<Duration>,
    pub ike_lifetime: Option<Duration>,
    pub ike_rand_time: Duration,
    /// `None` (the default): no periodic reauthentication.
    pub reauth_time: Option<Duration>,
}

type Err = (&'static str, String);

/// `500000`, `"64M"`, `"2G"`, `"1k"` (powers of 1024, like swanctl).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a count (e.g. 500000, \"64M\", \"2G\")"))
}

fn dur(field: &'static str, v: Option<&str>) -> Result<Option<Duration>, Err> {
    v.map(|s| super::config::parse_duration(s).map_err(|m| (field, m)))
        .transpose()
}

fn size(field: &'static str, v: Option<&str>) -> Result<Option<u64>, Err> {
    Ok(v.map(|s| parse_size(s).map_err(|m| (field, m)))
        .transpose()?
        .filter(|n| *n > 0))
}

/// `soft` must come before `hard` when both are set.
fn ordered<T: PartialOrd + std::fmt::Debug>(
    field: &'static str,
    soft: Option<T>,
    hard: Option<T>,
    hard_name: &str,
) -> Result<(), Err> {
    match (soft, hard) {
        (Some(s), Some(h)) if s >= h => Err((
            field,
            format!("{s:?} must be below {hard_name} ({h:?}): the SA is rekeyed before it expires"),
        )),
        _ => Ok(()),
    }
}

impl Lifetimes {
    /// swanctl's defaults: CHILD SAs rekey at 90 % of `lifetime` (1 h),
    /// IKE SAs at 4 h with the hard limit 10 % later, jitter = the gap
    /// between rekey and hard lifetime, no reauthentication.
    pub fn validate(r: &RawLifetimes<'_>) -> Result<Lifetimes, Err> {
        let lifetime = dur("lifetime", r.lifetime)?;
        let rekey = dur("rekey_time", r.rekey_time)?;
        let (rekey_time, lifetime) = match (rekey, lifetime) {
            (Some(k), Some(l)) => (k, l),
            (Some(k), None) => (k, Duration::from_secs(3600).max(k.mul_f64(1.1))),
            (None, Some(l)) => (l.mul_f64(0.9), l),
            (None, None) => (Duration::from_secs(3240), Duration::from_secs(3600)),
        };
        if lifetime.is_zero() || rekey_time.is_zero() || rekey_time > lifetime {
            return Err((
                "rekey_time",
                format!(
                    "rekey_time ({}s) must be > 0 and at most lifetime ({}s)",
                    rekey_time.as_secs(),
                    lifetime.as_secs()
                ),
            ));
        }
        let rand_time = dur("rand_time", r.rand_time)?.unwrap_or(lifetime - rekey_time);
        let rekey_bytes = size("rekey_bytes", r.rekey_bytes)?;
        let life_bytes = size("life_bytes", r.life_bytes)?;
        ordered("rekey_bytes", rekey_bytes, life_bytes, "life_bytes")?;
        let rekey_packets = size("rekey_packets", r.rekey_packets)?;
        let life_packets = size("life_packets", r.life_packets)?;
        ordered("rekey_packets", rekey_packets, life_packets, "life_packets")?;
        let ike_rekey = dur("ike_rekey_time", r.ike_rekey_time)?;
        let ike_life = dur("ike_lifetime", r.ike_lifetime)?;
        let (ike_rekey_time, ike_lifetime) = match (ike_rekey, ike_life) {
            // "0" turns the IKE SA rekey off, as rekey_time = 0 in swanctl
            (Some(k), l) if k.is_zero() => (None, l.filter(|l| !l.is_zero())),
            (Some(k), Some(l)) => (Some(k), Some(l).filter(|l| !l.is_zero())),
            (Some(k), None) => (Some(k), Some(k.mul_f64(1.1))),
            (None, Some(l)) if l.is_zero() => (Some(Duration::from_secs(4 * 3600)), None),
            (None, Some(l)) => (
                Some(l.mul_f64(0.9).min(Duration::from_secs(4 * 3600))),
                Some(l),
            ),
            (None, None) => (
                Some(Duration::from_secs(4 * 3600)),
                Some(Duration::from_secs(4 * 3600 + 24 * 60)),
            ),
        };
        ordered(
            "ike_rekey_time",
            ike_rekey_time,
            ike_lifetime,
            "ike_lifetime",
        )?;
        let ike_rand_time = dur("ike_rand_time", r.ike_rand_time)?.unwrap_or_else(|| {
            match (ike_rekey_time, ike_lifetime) {
                (Some(k), Some(l)) => l - k,
                (Some(k), None) => k / 10,
                _ => Duration::ZERO,
            }
        });
        let reauth_time = dur("reauth_time", r.reauth_time)?.filter(|d| !d.is_zero());
        Ok(Lifetimes {
            rekey_time,
            lifetime,
            rand_time,
            rekey_bytes,
            life_bytes,
            rekey_packets,
            life_packets,
            ike_rekey_time,
            ike_lifetime,
            ike_rand_time,
            reauth_time,
        })
    }

    /// The CHILD SA limits: the soft ones make the record engine report
    /// `KeyExpiring`, the hard ones retire the key.
    pub fn child_limits(&self) -> Limits {
        Limits {
            soft_time: Some(self.rekey_time),
            hard_time: Some(self.lifetime),
            soft_bytes: self.rekey_bytes,
            hard_bytes: self.life_bytes,
            soft_packets: self.rekey_packets,
            hard_packets: self.life_packets,
        }
    }

    /// Puts the timers the IKE endpoint runs itself into its config.
    pub fn apply(&self, c: &mut polytun_ike::Config) {
        c.child_lifetimes = self.child_limits();
        c.child_rekey_jitter = Some(self.rand_time);
        c.ike_rekey_time = self.ike_rekey_time;
        c.ike_life_time = self.ike_lifetime;
        c.rekey_jitter = self.ike_rand_time;
    }

    /// The limits of one ESP SA: as configured, with the byte and packet
    /// soft limits lowered at random by up to 10 % (so that both peers do
    /// not cross them with the same packet). The time soft limit stays
    /// where it is: the endpoint's jittered timer rekeys earlier, and the
    /// record engine's report is only a backstop.
    pub fn esp_limits(&self, rng: &mut dyn RngCore) -> Limits {
        let mut l = self.child_limits();
        let mut jitter = |v: Option<u64>| {
            v.map(|n| {
                let max = n / 10;
                if max == 0 {
                    n
                } else {
                    n - rng.next_u64() % (max + 1)
                }
            })
        };
        l.soft_bytes = jitter(l.soft_bytes);
        l.soft_packets = jitter(l.soft_packets);
        l
    }
}

/// `t` minus up to `jitter` (at most half of `t`), at random.
pub fn jittered(rng: &mut dyn RngCore, t: Duration, jitter: Duration) -> Duration {
    let max = jitter.min(t / 2).as_millis() as u64;
    if max == 0 {
        return t;
    }
    t - Duration::from_millis(rng.next_u64() % (max + 1))
}

/// What `polytun rekey` asks for (swanctl's `--rekey --child` / `--ike` /
/// `--reauth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RekeyWhat {
    Child,
    Ike,
    Reauth,
}

/// The record engine crossed a soft limit of the SA with this SPI (either
/// direction): rekey its CHILD SA. False if it is unknown or its rekey is
/// already under way (the engine reports each direction once).
pub fn on_key_expiring(ep: &mut Endpoint, now: Instant, spi: u32) -> bool {
    ep.on_child_key_expiring(now, spi)
}

/// The record engine refused a packet because the SA with this SPI passed
/// a hard limit: the CHILD SA is gone (deleted locally and at the peer).
pub fn on_key_expired(ep: &mut Endpoint, now: Instant, spi: u32) -> bool {
    ep.delete_child(now, spi)
}

/// KU for CHILD SAs and IKE SAs (reauthentication is the caller's, see
/// [`Reauth`]). Returns how many rekeys started.
pub fn rekey_now(ep: &mut Endpoint, now: Instant, what: RekeyWhat) -> usize {
    let mut n = 0;
    for sa in ep.active_sa_ids() {
        match what {
            RekeyWhat::Child => {
                for c in ep.child_sas(sa) {
                    if c.outbound && !c.rekeying && ep.rekey_child(now, c.spi_in) {
                        n += 1;
                    }
                }
            }
            RekeyWhat::Ike => n += usize::from(ep.rekey_ike(now, sa)),
            RekeyWhat::Reauth => {}
        }
    }
    n
}

/// Periodic and on-demand reauthentication: the clocks and which new IKE
/// SA replaces which old one.
pub struct Reauth {
    every: Option<Duration>,
    jitter: Duration,
    /// Established IKE SA → when to reauthenticate it.
    due: HashMap<SaId, Instant>,
    /// New IKE SA being set up → the one it replaces.
    replacing: HashMap<SaId, SaId>,
}

/// A failed reauthentication is tried again this much later.
const REAUTH_RETRY: Duration = Duration::from_secs(10);

impl Reauth {
    pub fn new(l: &Lifetimes) -> Reauth {
        Reauth {
            every: l.reauth_time,
            jitter: l.ike_rand_time,
            due: HashMap::new(),
            replacing: HashMap::new(),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// When this IKE SA is reauthenticated.
    pub fn due_at(&self, sa: SaId) -> Option<Instant> {
        self.due.get(&sa).copied()
    }

    /// IKE SAs due for reauthentication (removed from the schedule).
    pub fn take_due(&mut self, now: Instant) -> Vec<SaId> {
        let due: Vec<SaId> = self
            .due
            .iter()
            .filter(|(_, t)| now >= **t)
            .map(|(s, _)| *s)
            .collect();
        for s in &due {
            self.due.remove(s);
        }
        due
    }

    /// Is a reauthentication of `old` already under way?
    pub fn in_progress(&self, old: SaId) -> bool {
        self.replacing.values().any(|o| *o == old)
    }

    /// `new` was initiated to replace `old`.
    pub fn started(&mut self, old: SaId, new: SaId) {
        self.due.remove(&old);
        self.replacing.insert(new, old);
    }

    /// `sa` is established; returns the IKE SA it replaces, to delete now.
    pub fn established(&mut self, rng: &mut dyn RngCore, now: Instant, sa: SaId) -> Option<SaId> {
        if let Some(t) = self.every {
            self.due.insert(sa, now + jittered(rng, t, self.jitter));
        }
        let old = self.replacing.remove(&sa);
        if let Some(o) = old {
            self.due.remove(&o);
        }
        old
    }

    /// `old` was rekeyed into `new` (CREATE_CHILD_SA): the schedule moves along.
    pub fn rekeyed(&mut self, old: SaId, new: SaId) {
        if let Some(t) = self.due.remove(&old) {
            self.due.insert(new, t);
        }
        for o in self.replacing.values_mut() {
            if *o == old {
                *o = new;
            }
        }
    }

    /// `sa` is gone. If it was a reauthentication that failed, the SA it
    /// was to replace is returned (it stays, and is tried again later).
    pub fn gone(&mut self, now: Instant, sa: SaId) -> Option<SaId> {
        self.due.remove(&sa);
        self.replacing.retain(|_, o| *o != sa);
        let old = self.replacing.remove(&sa)?;
        if self.every.is_some() {
            self.due.insert(old, now + REAUTH_RETRY);
        }
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawLifetimes<'static> {
        RawLifetimes::default()
    }

    #[test]
    fn swanctl_defaults() {
        let l = Lifetimes::validate(&raw()).unwrap();
        assert_eq!(l.rekey_time, Duration::from_secs(3240));
        assert_eq!(l.lifetime, Duration::from_secs(3600));
        assert_eq!(l.rand_time, Duration::from_secs(360));
        assert_eq!(l.ike_rekey_time, Some(Duration::from_secs(14400)));
        assert_eq!(l.ike_lifetime, Some(Duration::from_secs(15840)));
        assert_eq!(l.ike_rand_time, Duration::from_secs(1440));
        assert_eq!(l.reauth_time, None);
        assert_eq!(l.rekey_bytes, None);
    }

    #[test]
    fn short_lifetimes_and_sizes() {
        let l = Lifetimes::validate(&RawLifetimes {
            rekey_time: Some("15s"),
            lifetime: Some("30s"),
            rand_time: Some("3s"),
            ike_rekey_time: Some("15s"),
            rekey_bytes: Some("64M"),
            life_bytes: Some("1G"),
            rekey_packets: Some("1000"),
            reauth_time: Some("1h"),
            ..raw()
        })
        .unwrap();
        assert_eq!(l.rekey_time, Duration::from_secs(15));
        assert_eq!(l.rand_time, Duration::from_secs(3));
        assert_eq!(l.ike_lifetime, Some(Duration::from_millis(16500)));
        assert_eq!(l.rekey_bytes, Some(64 << 20));
        assert_eq!(l.life_bytes, Some(1 << 30));
        assert_eq!(l.rekey_packets, Some(1000));
        assert_eq!(l.reauth_time, Some(Duration::from_secs(3600)));
        let lim = l.child_limits();
        assert_eq!(lim.soft_time, Some(Duration::from_secs(15)));
        assert_eq!(lim.hard_bytes, Some(1 << 30));
        let mut rng = rand_core::OsRng;
        for _ in 0..100 {
            let e = l.esp_limits(&mut rng);
            let b = e.soft_bytes.unwrap();
            assert!(
                ((64 << 20) - (64 << 20) / 10..=64 << 20).contains(&b),
                "{b}"
            );
            let t = jittered(&mut rng, Duration::from_secs(15), Duration::from_secs(3));
            assert!((Duration::from_secs(12)..=Duration::from_secs(15)).contains(&t));
        }
    }

    #[test]
    fn bad_lifetimes_name_the_field() {
        let e = Lifetimes::validate(&RawLifetimes {
            rekey_time: Some("2h"),
            lifetime: Some("1h"),
            ..raw()
        })
        .unwrap_err();
        assert_eq!(e.0, "rekey_time");
        let e = Lifetimes::validate(&RawLifetimes {
            rekey_bytes: Some("2G"),
            life_bytes: Some("1G"),
            ..raw()
        })
        .unwrap_err();
        assert_eq!(e.0, "rekey_bytes");
        let e = Lifetimes::validate(&RawLifetimes {
            life_packets: Some("lots"),
            ..raw()
        })
        .unwrap_err();
        assert_eq!(e.0, "life_packets");
        assert!(e.1.contains("lots"), "{}", e.1);
        let e = Lifetimes::validate(&RawLifetimes {
            ike_rekey_time: Some("5h"),
            ike_lifetime: Some("4h"),
            ..raw()
        })
        .unwrap_err();
        assert_eq!(e.0, "ike_rekey_time");
        // 0 switches the IKE SA rekey off
        let l = Lifetimes::validate(&RawLifetimes {
            ike_rekey_time: Some("0"),
            ..raw()
        })
        .unwrap();
        assert_eq!(l.ike_rekey_time, None);
    }

    #[test]
    fn reauth_schedule_follows_the_sas() {
        let l = Lifetimes::validate(&RawLifetimes {
            reauth_time: Some("100s"),
            ike_rand_time: Some("0"),
            ..raw()
        })
        .unwrap();
        let mut r = Reauth::new(&l);
        let mut rng = rand_core::OsRng;
        let t0 = Instant::now();
        assert_eq!(r.established(&mut rng, t0, 1), None);
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(100)));
        r.rekeyed(1, 2);
        assert!(r.take_due(t0 + Duration::from_secs(99)).is_empty());
        assert_eq!(r.take_due(t0 + Duration::from_secs(100)), vec![2]);
        r.started(2, 3);
        assert!(r.in_progress(2));
        // a failed attempt leaves the old one in charge and retries
        assert_eq!(r.gone(t0, 3), Some(2));
        assert_eq!(r.deadline(), Some(t0 + REAUTH_RETRY));
        r.take_due(t0 + REAUTH_RETRY);
        r.started(2, 4);
        assert_eq!(r.established(&mut rng, t0, 4), Some(2));
        assert!(!r.in_progress(2));
    }
}
