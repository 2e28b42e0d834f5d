//! What the data path saw of one peer's traffic, for the control task's
//! WireGuard timers (keepalive, new handshake, persistent keepalive).
//!
//! The data path records every batch here, with relaxed stores, but wakes
//! the control task at most once per [`NOTE_INTERVAL`] per direction: a
//! wake-up per packet put the control task's bookkeeping on the round trip
//! of every ping (about 35 µs of it, docs/fast-path.md "Latency"). Whenever
//! the control task runs — woken by a note, by a timer, or by the recheck
//! it arms one interval after a note — it applies what happened since it
//! last looked ([`since`]), in the order it happened and with the times it
//! happened. Only the latest event of each kind is kept, which is all the
//! timers need: a send disarms the keepalive timer and arms the
//! new-handshake timer if it is not armed, a receive does the opposite, so
//! the last event of each kind and their order decide which timer ends up
//! armed; an "arm if not armed" may come up to one interval late.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How often plain traffic wakes the control task, per peer and direction.
/// Also the most a timer derived from traffic can come late by (the
/// protocol's are 10 s and more, with up to 333 ms of jitter).
pub const NOTE_INTERVAL: Duration = Duration::from_secs(1);

/// One peer's traffic, in microseconds since the tunnel's epoch (0: none).
#[derive(Debug, Default)]
pub struct Activity {
    sent: AtomicU64,
    received: AtomicU64,
    data_received: AtomicU64,
    received_index: AtomicU32,
    tx_noted: AtomicU64,
    rx_noted: AtomicU64,
}

/// A snapshot of [`Activity`]: the latest data sent, authenticated packet
/// received (data or keepalive), data received, and the local index of the
/// keypair the latest packet arrived on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub sent: u64,
    pub received: u64,
    pub data_received: u64,
    pub index: u32,
}

/// One thing to tell the protocol's timers, at `at` µs since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Sent {
        at: u64,
    },
    Received {
        at: u64,
        index: u32,
        keepalive: bool,
    },
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

fn due(noted: &AtomicU64, now: u64) -> bool {
    let last = noted.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < micros(NOTE_INTERVAL) {
        return false;
    }
    noted.store(now, Ordering::Relaxed);
    true
}

impl Activity {
    /// Data was sent at `since_epoch`. True when the control task should be
    /// woken for it.
    pub fn sent(&self, since_epoch: Duration) -> bool {
        let now = micros(since_epoch);
        self.sent.store(now, Ordering::Relaxed);
        due(&self.tx_noted, now)
    }

    /// An authenticated packet (a keepalive if `keepalive`) arrived at
    /// `since_epoch` on the keypair with local index `index`. True when the
    /// control task should be woken for it: always for a keypair the data
    /// path has not reported before (its first packet may confirm it).
    pub fn received(&self, since_epoch: Duration, index: u32, keepalive: bool) -> bool {
        let now = micros(since_epoch);
        if !keepalive {
            self.data_received.store(now, Ordering::Relaxed);
        }
        self.received.store(now, Ordering::Relaxed);
        let new_key = self.received_index.swap(index, Ordering::Relaxed) != index;
        due(&self.rx_noted, now) || new_key
    }

    pub fn seen(&self) -> Seen {
        Seen {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            data_received: self.data_received.load(Ordering::Relaxed),
            index: self.received_index.load(Ordering::Relaxed),
        }
    }
}

/// What happened between the snapshots `applied` and `now`, oldest first.
/// A tie puts the send first: a reply is never stamped before its request,
/// while a packet sent in answer to one received is stamped later.
pub fn since(applied: &Seen, now: &Seen) -> Vec<Event> {
    let mut out = Vec::with_capacity(3);
    if now.sent > applied.sent {
        out.push(Event::Sent { at: now.sent });
    }
    if now.data_received > applied.data_received && now.data_received < now.received {
        // data, then later keepalives only: the data still arms the
        // keepalive timer, at its own time
        out.push(Event::Received {
            at: now.data_received,
            index: now.index,
            keepalive: false,
        });
    }
    if now.received > applied.received {
        out.push(Event::Received {
            at: now.received,
            index: now.index,
            keepalive: now.data_received < now.received,
        });
    }
    out.sort_by_key(|e| match *e {
        Event::Sent { at } => (at, 0),
        Event::Received { at, .. } => (at, 1),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn notes_at_most_once_per_interval_per_direction() {
        let a = Activity::default();
        assert!(a.sent(ms(1)));
        assert!(!a.sent(ms(2)));
        assert!(!a.sent(ms(999)));
        assert!(a.sent(ms(1001)));
        assert!(a.received(ms(5), 7, false));
        assert!(!a.received(ms(6), 7, true));
        // a new keypair is reported at once
        assert!(a.received(ms(7), 8, false));
        assert!(!a.received(ms(8), 8, false));
        assert!(a.received(ms(1006), 8, false));
    }

    #[test]
    fn everything_is_recorded_even_when_not_noted() {
        let a = Activity::default();
        a.sent(ms(1));
        a.sent(ms(300));
        a.received(ms(10), 7, false);
        a.received(ms(400), 7, true);
        let s = a.seen();
        assert_eq!(s.sent, 300_000);
        assert_eq!(s.received, 400_000);
        assert_eq!(s.data_received, 10_000);
        assert_eq!(s.index, 7);
    }

    #[test]
    fn since_orders_what_happened() {
        let applied = Seen {
            sent: 100,
            received: 150,
            data_received: 150,
            index: 7,
        };
        // a request sent, its reply received: the reply disarms the new-handshake timer last
        let now = Seen {
            sent: 200,
            received: 260,
            data_received: 260,
            ..applied
        };
        assert_eq!(
            since(&applied, &now),
            vec![
                Event::Sent { at: 200 },
                Event::Received {
                    at: 260,
                    index: 7,
                    keepalive: false
                }
            ]
        );
        // a request received, the answer sent: the send disarms the keepalive timer last
        let now = Seen {
            sent: 300,
            received: 250,
            data_received: 250,
            ..applied
        };
        assert_eq!(
            since(&applied, &now),
            vec![
                Event::Received {
                    at: 250,
                    index: 7,
                    keepalive: false
                },
                Event::Sent { at: 300 }
            ]
        );
        // data then a keepalive: both, the data first
        let now = Seen {
            received: 400,
            data_received: 300,
            ..applied
        };
        assert_eq!(
            since(&applied, &now),
            vec![
                Event::Received {
                    at: 300,
                    index: 7,
                    keepalive: false
                },
                Event::Received {
                    at: 400,
                    index: 7,
                    keepalive: true
                }
            ]
        );
        // only a keepalive
        let now = Seen {
            received: 400,
            ..applied
        };
        assert_eq!(
            since(&applied, &now),
            vec![Event::Received {
                at: 400,
                index: 7,
                keepalive: true
            }]
        );
        // nothing new
        assert!(since(&applied, &applied).is_empty());
        // same microsecond: the send first
        let now = Seen {
            sent: 500,
            received: 500,
            data_received: 500,
            ..applied
        };
        assert_eq!(since(&applied, &now)[0], Event::Sent { at: 500 });
    }
}
