//! Two polytun `Device`s back to back with a fake clock, and a simulated
//! data path (seal/open with the keypairs the devices install).
#![allow(dead_code)]

use polytun_core::{KeyStatus, PacketBuf};
use polytun_wireguard::messages::{classify, Message};
use polytun_wireguard::{
    Device, Event, HandshakeError, Keypair, Output, PeerConfig, PeerId, StaticSecret,
};
use rand_core::OsRng;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Log {
    /// A handshake message (type 1, 2, 3) sent.
    Handshake(u8),
    /// A transport packet sent (true: keepalive).
    Data(bool),
    Event(Event),
    Roamed(SocketAddr),
    HandshakeDrop(HandshakeError),
    NeedHandshake,
}

pub struct Side {
    pub dev: Device,
    pub addr: SocketAddr,
    /// The id of the other side in this device.
    pub peer: PeerId,
    pub receivers: HashMap<u32, Arc<Keypair>>,
    pub sending: Option<Arc<Keypair>>,
    pub delivered: Vec<Vec<u8>>,
    pub log: Vec<(Duration, Log)>,
    pub under_load: bool,
    /// Drop everything this side sends.
    pub mute: bool,
}

pub struct Net {
    pub t0: Instant,
    pub now: Instant,
    pub sides: [Side; 2],
    wire: VecDeque<(usize, SocketAddr, Vec<u8>)>,
}

pub const A: usize = 0;
pub const B: usize = 1;

pub fn ip_packet(n: u8, len: usize) -> Vec<u8> {
    let mut p = vec![n; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

impl Net {
    /// A knows B's endpoint; B learns A's from the handshake.
    pub fn new(psk: Option<[u8; 32]>, keepalive_a: Option<u16>) -> Self {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let ka = StaticSecret::random_from_rng(OsRng);
        let kb = StaticSecret::random_from_rng(OsRng);
        let addr_a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let addr_b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
        let mut da = Device::new(ka, t0, wall, OsRng);
        let mut db = Device::new(kb, t0, wall, OsRng);
        let pa = da.add_peer(PeerConfig {
            public_key: db.public_key(),
            preshared_key: psk,
            endpoint: Some(addr_b),
            persistent_keepalive: keepalive_a,
        });
        let pb = db.add_peer(PeerConfig {
            public_key: da.public_key(),
            preshared_key: psk,
            endpoint: None,
            persistent_keepalive: None,
        });
        let side = |dev, addr, peer| Side {
            dev,
            addr,
            peer,
            receivers: HashMap::new(),
            sending: None,
            delivered: Vec::new(),
            log: Vec::new(),
            under_load: false,
            mute: false,
        };
        Net {
            t0,
            now: t0,
            sides: [side(da, addr_a, pa), side(db, addr_b, pb)],
            wire: VecDeque::new(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn log(&mut self, i: usize, l: Log) {
        let e = self.elapsed();
        self.sides[i].log.push((e, l));
    }

    pub fn logs(&self, i: usize) -> &[(Duration, Log)] {
        &self.sides[i].log
    }

    pub fn count(&self, i: usize, f: impl Fn(&Log) -> bool) -> usize {
        self.sides[i].log.iter().filter(|(_, l)| f(l)).count()
    }

    pub fn times(&self, i: usize, f: impl Fn(&Log) -> bool) -> Vec<Duration> {
        self.sides[i]
            .log
            .iter()
            .filter(|(_, l)| f(l))
            .map(|(t, _)| *t)
            .collect()
    }

    /// Side `i` sends an IP packet (or a keepalive if empty) to its peer.
    pub fn send(&mut self, i: usize, payload: &[u8]) {
        let now = self.now;
        let Some(kp) = self.sides[i].sending.clone() else {
            self.log(i, Log::NeedHandshake);
            let p = self.sides[i].peer;
            self.sides[i].dev.on_need_handshake(now, p);
            self.pump();
            return;
        };
        let mut buf = vec![0u8; 16 + payload.len() + 64];
        buf[16..16 + payload.len()].copy_from_slice(payload);
        let mut p = PacketBuf::new(&mut buf, 16, 16 + payload.len());
        let peer = self.sides[i].peer;
        match kp.seal(now, &mut p) {
            Ok(status) => {
                let out = p.as_slice().to_vec();
                if status == KeyStatus::Expiring {
                    self.sides[i].dev.on_key_expiring(now, peer);
                }
                self.sides[i]
                    .dev
                    .on_data_sent(now, peer, payload.is_empty());
                self.log(i, Log::Data(payload.is_empty()));
                self.put_on_wire(i, out);
            }
            Err(_) => {
                self.log(i, Log::NeedHandshake);
                self.sides[i].dev.on_need_handshake(now, peer);
            }
        }
        self.pump();
    }

    /// Seals without delivering: a packet held back in the network.
    pub fn seal_held(&mut self, i: usize, payload: &[u8]) -> Vec<u8> {
        let kp = self.sides[i].sending.clone().expect("sending key");
        let mut buf = vec![0u8; 16 + payload.len() + 64];
        buf[16..16 + payload.len()].copy_from_slice(payload);
        let mut p = PacketBuf::new(&mut buf, 16, 16 + payload.len());
        kp.seal(self.now, &mut p).unwrap();
        p.as_slice().to_vec()
    }

    fn put_on_wire(&mut self, from: usize, data: Vec<u8>) {
        if !self.sides[from].mute {
            let src = self.sides[from].addr;
            self.wire.push_back((1 - from, src, data));
        }
    }

    /// Delivers a datagram to side `to` as if from `src`; returns whether it
    /// was accepted (handshake Ok, or transport data opened).
    pub fn deliver(&mut self, to: usize, src: SocketAddr, data: &[u8]) -> bool {
        let now = self.now;
        match classify(data) {
            Ok(Message::Data(d)) => {
                let Some(kp) = self.sides[to].receivers.get(&d.receiver).cloned() else {
                    return false;
                };
                let mut buf = data.to_vec();
                let n = buf.len();
                let mut p = PacketBuf::new(&mut buf, 0, n);
                if kp.open(now, &mut p).is_err() {
                    return false;
                }
                let inner = p.as_slice().to_vec();
                self.sides[to]
                    .dev
                    .on_data_received(now, kp.local_index, src, inner.is_empty());
                if !inner.is_empty() {
                    self.sides[to].delivered.push(inner);
                }
                true
            }
            _ => {
                let under_load = self.sides[to].under_load;
                match self.sides[to]
                    .dev
                    .handle_handshake(now, src, data, under_load)
                {
                    Ok(()) => true,
                    Err(e) => {
                        self.log(to, Log::HandshakeDrop(e));
                        false
                    }
                }
            }
        }
    }

    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..2 {
                while let Some(o) = self.sides[i].dev.poll_output() {
                    progressed = true;
                    self.handle_output(i, o);
                }
            }
            while let Some((to, src, data)) = self.wire.pop_front() {
                progressed = true;
                self.deliver(to, src, &data);
            }
            if !progressed {
                break;
            }
        }
    }

    fn handle_output(&mut self, i: usize, o: Output) {
        match o {
            Output::Transmit { dst, data } => {
                assert_eq!(dst, self.sides[1 - i].addr, "sent to the wrong address");
                self.log(i, Log::Handshake(data[0]));
                self.put_on_wire(i, data);
            }
            Output::AddReceiver { keypair, .. } => {
                self.sides[i].receivers.insert(keypair.local_index, keypair);
            }
            Output::SetSending { keypair, .. } => self.sides[i].sending = keypair,
            Output::RemoveReceiver { local_index } => {
                assert!(self.sides[i].receivers.remove(&local_index).is_some());
            }
            Output::SendKeepalive { .. } => {
                if self.sides[i].sending.is_some() {
                    self.send(i, &[]);
                }
            }
            Output::EndpointChanged { endpoint, .. } => self.log(i, Log::Roamed(endpoint)),
            Output::Event(e) => self.log(i, Log::Event(e)),
        }
    }

    /// Advances the fake clock to `now + d`, firing every timer on the way.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            let next = [
                self.sides[0].dev.poll_timeout(),
                self.sides[1].dev.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for s in &mut self.sides {
                        s.dev.handle_timeout(now);
                    }
                    self.pump();
                }
                _ => break,
            }
        }
        self.now = target;
    }

    /// A sends something, the handshake runs, the packet is resent.
    pub fn connect(&mut self) {
        self.send(A, &ip_packet(1, 40));
        assert!(self.sides[A].sending.is_some(), "A has a key");
        self.send(A, &ip_packet(1, 40));
        assert!(self.sides[B].sending.is_some(), "B confirmed the key");
    }
}

pub fn is_event(e: Event) -> impl Fn(&Log) -> bool {
    move |l| *l == Log::Event(e)
}

pub fn is_initiation(l: &Log) -> bool {
    *l == Log::Handshake(1)
}
