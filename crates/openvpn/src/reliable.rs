//! The control channel's reliability layer (OpenVPN `reliable.c`), one per
//! key-id: message packet-ids from 0, a send window, retransmission with
//! exponential back-off, piggy-backed and standalone ACKs, a bounded
//! reordering buffer with duplicate suppression, and in-order delivery of
//! the messages (the TLS byte stream, cut in packets) to the layer above.

use crate::packet::{Opcode, PacketId, MAX_ACKS};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// OpenVPN `TLS_RELIABLE_N_SEND_BUFFERS`: packets in flight.
pub const SEND_WINDOW: u32 = 6;
/// OpenVPN `TLS_RELIABLE_N_REC_BUFFERS`: packets buffered out of order.
pub const RECV_WINDOW: u32 = 12;
/// First retransmission timeout (OpenVPN `tls-timeout` default).
pub const INITIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Back-off cap.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(32);
/// ACKs piggy-backed on a message (OpenVPN `CONTROL_SEND_ACK_MAX`).
pub const PIGGYBACK_ACKS: usize = 4;

#[derive(Clone, Copy, Debug)]
pub struct ReliableConfig {
    pub send_window: u32,
    pub recv_window: u32,
    pub initial_timeout: Duration,
    pub max_timeout: Duration,
}

impl Default for ReliableConfig {
    fn default() -> Self {
        Self {
            send_window: SEND_WINDOW,
            recv_window: RECV_WINDOW,
            initial_timeout: INITIAL_TIMEOUT,
            max_timeout: MAX_TIMEOUT,
        }
    }
}

#[derive(Debug)]
struct InFlight {
    id: PacketId,
    opcode: Opcode,
    payload: Vec<u8>,
    /// When to (re)send; `None`: not sent yet.
    due: Option<Instant>,
    timeout: Duration,
    sends: u32,
}

/// A packet to wrap and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub opcode: Opcode,
    pub acks: Vec<PacketId>,
    pub message_id: Option<PacketId>,
    pub payload: Vec<u8>,
    /// 0 for a first transmission.
    pub retransmission: u32,
}

/// What became of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    New,
    /// Already received (delivered or buffered): acknowledged again.
    Duplicate,
    /// Beyond the receive window: dropped without an ACK.
    OutOfWindow,
}

#[derive(Debug)]
pub struct Reliable {
    cfg: ReliableConfig,
    next_id: PacketId,
    in_flight: VecDeque<InFlight>,
    queued: VecDeque<(Opcode, Vec<u8>)>,
    expect: PacketId,
    reorder: BTreeMap<PacketId, (Opcode, Vec<u8>)>,
    delivered: VecDeque<(Opcode, Vec<u8>)>,
    acks: VecDeque<PacketId>,
    retransmissions: u64,
}

impl Default for Reliable {
    fn default() -> Self {
        Self::new(ReliableConfig::default())
    }
}

impl Reliable {
    pub fn new(cfg: ReliableConfig) -> Self {
        Self {
            cfg,
            next_id: 0,
            in_flight: VecDeque::new(),
            queued: VecDeque::new(),
            expect: 0,
            reorder: BTreeMap::new(),
            delivered: VecDeque::new(),
            acks: VecDeque::new(),
            retransmissions: 0,
        }
    }

    /// Queues a message for reliable delivery.
    pub fn send(&mut self, opcode: Opcode, payload: Vec<u8>) {
        self.queued.push_back((opcode, payload));
    }

    /// Stops sending: the key of a lame duck only acknowledges what the
    /// peer may still retransmit.
    pub fn abandon_sends(&mut self) {
        self.in_flight.clear();
        self.queued.clear();
    }

    /// Is everything sent acknowledged?
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.queued.is_empty()
    }

    /// Messages queued or in flight.
    pub fn backlog(&self) -> usize {
        self.in_flight.len() + self.queued.len()
    }

    pub fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    /// The peer acknowledged these ids.
    pub fn on_acks(&mut self, acks: &[PacketId]) {
        self.in_flight.retain(|m| !acks.contains(&m.id));
    }

    /// A message arrived with this packet-id.
    pub fn on_message(&mut self, opcode: Opcode, id: PacketId, payload: &[u8]) -> Received {
        if id < self.expect || self.reorder.contains_key(&id) {
            self.queue_ack(id);
            return Received::Duplicate;
        }
        if id - self.expect >= self.cfg.recv_window {
            return Received::OutOfWindow;
        }
        self.queue_ack(id);
        self.reorder.insert(id, (opcode, payload.to_vec()));
        while let Some(m) = self.reorder.remove(&self.expect) {
            self.delivered.push_back(m);
            self.expect += 1;
        }
        Received::New
    }

    fn queue_ack(&mut self, id: PacketId) {
        if !self.acks.contains(&id) {
            self.acks.push_back(id);
        }
    }

    /// The next message in order.
    pub fn recv(&mut self) -> Option<(Opcode, Vec<u8>)> {
        self.delivered.pop_front()
    }

    pub fn has_pending_acks(&self) -> bool {
        !self.acks.is_empty()
    }

    fn fill_window(&mut self) {
        while !self.queued.is_empty() {
            let base = self.in_flight.front().map_or(self.next_id, |m| m.id);
            if self.next_id.wrapping_sub(base) >= self.cfg.send_window {
                break;
            }
            let (opcode, payload) = self.queued.pop_front().expect("not empty");
            self.in_flight.push_back(InFlight {
                id: self.next_id,
                opcode,
                payload,
                due: None,
                timeout: self.cfg.initial_timeout,
                sends: 0,
            });
            self.next_id += 1;
        }
    }

    fn take_acks(&mut self, n: usize) -> Vec<PacketId> {
        let n = n.min(self.acks.len());
        self.acks.drain(..n).collect()
    }

    /// The next packet to send now: a due (re)transmission with piggy-backed
    /// ACKs, else a standalone P_ACK_V1 when ACKs are pending.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Outgoing> {
        self.fill_window();
        let idx = self.in_flight.iter().position(|m| m.due.is_none_or_le(now));
        if let Some(i) = idx {
            let acks = self.take_acks(PIGGYBACK_ACKS);
            let m = &mut self.in_flight[i];
            let retransmission = m.sends;
            if m.sends > 0 {
                self.retransmissions += 1;
                m.timeout = (m.timeout * 2).min(self.cfg.max_timeout);
            }
            m.sends += 1;
            m.due = Some(now + m.timeout);
            return Some(Outgoing {
                opcode: m.opcode,
                acks,
                message_id: Some(m.id),
                payload: m.payload.clone(),
                retransmission,
            });
        }
        if !self.acks.is_empty() {
            return Some(Outgoing {
                opcode: Opcode::AckV1,
                acks: self.take_acks(MAX_ACKS),
                message_id: None,
                payload: Vec::new(),
                retransmission: 0,
            });
        }
        None
    }

    /// When [`Self::poll_transmit`] has something next (ACKs: now).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight.iter().filter_map(|m| m.due).min()
    }

    /// Something can be sent right away (unsent messages or ACKs)?
    pub fn wants_transmit(&self, now: Instant) -> bool {
        !self.acks.is_empty()
            || self.in_flight.iter().any(|m| m.due.is_none_or_le(now))
            || (!self.queued.is_empty()
                && self
                    .next_id
                    .wrapping_sub(self.in_flight.front().map_or(self.next_id, |m| m.id))
                    < self.cfg.send_window)
    }
}

trait DueExt {
    fn is_none_or_le(&self, now: Instant) -> bool;
}

impl DueExt for Option<Instant> {
    fn is_none_or_le(&self, now: Instant) -> bool {
        match self {
            None => true,
            Some(t) => *t <= now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic PRNG (xorshift) for the fake link.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn chance(&mut self, pct: u64) -> bool {
            self.next() % 100 < pct
        }
    }

    /// Two endpoints over a link that loses, duplicates and reorders, with
    /// a fake clock; every message must arrive exactly once, in order.
    fn run_link(seed: u64, loss: u64, dup: u64, reorder: u64, n: usize) {
        let mut rng = Rng(seed);
        let mut a = Reliable::default();
        let mut b = Reliable::default();
        let msgs: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("message {i}").into_bytes())
            .collect();
        for m in &msgs {
            a.send(Opcode::ControlV1, m.clone());
        }
        let mut now = Instant::now();
        let mut got = Vec::new();
        let mut link_ab: Vec<Outgoing> = Vec::new();
        let mut link_ba: Vec<Outgoing> = Vec::new();
        for _round in 0..20_000 {
            while let Some(o) = a.poll_transmit(now) {
                if !rng.chance(loss) {
                    if rng.chance(dup) {
                        link_ab.push(o.clone());
                    }
                    link_ab.push(o);
                }
            }
            while let Some(o) = b.poll_transmit(now) {
                if !rng.chance(loss) {
                    link_ba.push(o);
                }
            }
            if rng.chance(reorder) {
                link_ab.reverse();
            }
            for o in link_ab.drain(..) {
                b.on_acks(&o.acks);
                if let Some(id) = o.message_id {
                    b.on_message(o.opcode, id, &o.payload);
                }
            }
            for o in link_ba.drain(..) {
                a.on_acks(&o.acks);
            }
            while let Some((_, m)) = b.recv() {
                got.push(m);
            }
            if got.len() == n && a.idle() && !b.has_pending_acks() {
                break;
            }
            now = match a.poll_timeout() {
                Some(t) if t > now => t,
                _ => now + Duration::from_millis(10),
            };
        }
        assert_eq!(got, msgs, "seed {seed}");
        assert!(a.idle(), "everything acknowledged");
    }

    #[test]
    fn perfect_link() {
        run_link(1, 0, 0, 0, 50);
    }

    #[test]
    fn lossy_duplicating_reordering_link() {
        for seed in 1..20 {
            run_link(seed * 7919, 30, 20, 50, 40);
        }
    }

    #[test]
    fn window_and_backoff() {
        let mut a = Reliable::default();
        for i in 0..10u8 {
            a.send(Opcode::ControlV1, vec![i]);
        }
        let t0 = Instant::now();
        let mut ids = Vec::new();
        while let Some(o) = a.poll_transmit(t0) {
            ids.push(o.message_id.unwrap());
        }
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5], "send window of 6");
        assert_eq!(a.poll_timeout(), Some(t0 + INITIAL_TIMEOUT));
        // Retransmit at 2 s, then 4 s later.
        let o = a.poll_transmit(t0 + INITIAL_TIMEOUT).unwrap();
        assert_eq!((o.message_id, o.retransmission), (Some(0), 1));
        while a.poll_transmit(t0 + INITIAL_TIMEOUT).is_some() {}
        assert_eq!(a.poll_timeout(), Some(t0 + INITIAL_TIMEOUT * 3));
        // ACK of 0 opens the window for 6.
        a.on_acks(&[0]);
        let o = a.poll_transmit(t0 + INITIAL_TIMEOUT).unwrap();
        assert_eq!(o.message_id, Some(6));
    }

    #[test]
    fn receiver_window_and_duplicates() {
        let mut b = Reliable::default();
        assert_eq!(
            b.on_message(Opcode::ControlV1, 12, b"x"),
            Received::OutOfWindow
        );
        assert_eq!(b.on_message(Opcode::ControlV1, 1, b"1"), Received::New);
        assert_eq!(
            b.on_message(Opcode::ControlV1, 1, b"1"),
            Received::Duplicate
        );
        assert!(b.recv().is_none());
        assert_eq!(b.on_message(Opcode::ControlV1, 0, b"0"), Received::New);
        assert_eq!(b.recv().unwrap().1, b"0");
        assert_eq!(b.recv().unwrap().1, b"1");
        assert_eq!(
            b.on_message(Opcode::ControlV1, 0, b"0"),
            Received::Duplicate
        );
        let ack = b.poll_transmit(Instant::now()).unwrap();
        assert_eq!(ack.opcode, Opcode::AckV1);
        assert_eq!(ack.acks, vec![1, 0]);
    }
}
