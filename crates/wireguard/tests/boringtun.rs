//! polytun against boringtun's `noise::Tunn` (an independent implementation)
//! in one process: handshakes in both roles, with and without PSK, data and
//! keepalives both ways, cookie replies both ways.

mod common;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use common::ip_packet;
use polytun_core::PacketBuf;
use polytun_wireguard::messages::{classify, Message};
use polytun_wireguard::{
    Device, HandshakeError, Keypair, Output, PeerConfig, PeerId, StaticSecret,
};
use rand_core::OsRng;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

const BT_ADDR: &str = "192.0.2.20:51820";

struct Pair {
    dev: Device,
    peer: PeerId,
    tunn: Tunn,
    receivers: Vec<Arc<Keypair>>,
    sending: Option<Arc<Keypair>>,
    src: SocketAddr,
}

fn pair(psk: Option<[u8; 32]>, bt_limit: Option<u64>) -> Pair {
    let ours = StaticSecret::random_from_rng(OsRng);
    let theirs = boringtun::x25519::StaticSecret::random_from_rng(OsRng);
    let their_pub = boringtun::x25519::PublicKey::from(&theirs);
    let mut dev = Device::new(ours, Instant::now(), SystemTime::now(), OsRng);
    let our_pub = boringtun::x25519::PublicKey::from(dev.public_key().to_bytes());
    let src: SocketAddr = BT_ADDR.parse().unwrap();
    let peer = dev.add_peer(PeerConfig {
        public_key: polytun_wireguard::PublicKey::from(their_pub.to_bytes()),
        preshared_key: psk,
        endpoint: Some(src),
        persistent_keepalive: None,
    });
    let limiter = bt_limit.map(|l| Arc::new(RateLimiter::new(&their_pub, l)));
    let tunn = Tunn::new(theirs, our_pub, psk, None, 1, limiter);
    Pair {
        dev,
        peer,
        tunn,
        receivers: Vec::new(),
        sending: None,
        src,
    }
}

impl Pair {
    /// Drains polytun's outputs; returns transmitted datagrams.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut tx = Vec::new();
        while let Some(o) = self.dev.poll_output() {
            match o {
                Output::Transmit { dst, data } => {
                    assert_eq!(dst, self.src);
                    tx.push(data);
                }
                Output::AddReceiver { keypair, .. } => self.receivers.push(keypair),
                Output::SetSending { keypair, .. } => self.sending = keypair,
                Output::RemoveReceiver { local_index } => {
                    self.receivers.retain(|k| k.local_index != local_index)
                }
                Output::SendKeepalive { .. } => tx.push(self.seal(&[])),
                _ => {}
            }
        }
        tx
    }

    fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        let kp = self.sending.clone().expect("polytun has a sending key");
        let mut buf = vec![0u8; 16 + payload.len() + 64];
        buf[16..16 + payload.len()].copy_from_slice(payload);
        let mut p = PacketBuf::new(&mut buf, 16, 16 + payload.len());
        kp.seal(Instant::now(), &mut p).unwrap();
        self.dev
            .on_data_sent(Instant::now(), self.peer, payload.is_empty());
        p.as_slice().to_vec()
    }

    /// polytun receives a datagram from boringtun; returns the inner packet
    /// for transport data.
    fn recv(&mut self, d: &[u8], under_load: bool) -> Result<Option<Vec<u8>>, HandshakeError> {
        match classify(d).unwrap() {
            Message::Data(m) => {
                let kp = self
                    .receivers
                    .iter()
                    .find(|k| k.local_index == m.receiver)
                    .cloned()
                    .expect("receiver for boringtun's packet");
                let mut buf = d.to_vec();
                let n = buf.len();
                let mut p = PacketBuf::new(&mut buf, 0, n);
                kp.open(Instant::now(), &mut p)
                    .expect("opens boringtun's packet");
                let inner = p.as_slice().to_vec();
                self.dev.on_data_received(
                    Instant::now(),
                    kp.local_index,
                    self.src,
                    inner.is_empty(),
                );
                Ok(Some(inner))
            }
            _ => self
                .dev
                .handle_handshake(Instant::now(), self.src, d, under_load)
                .map(|_| None),
        }
    }

    /// boringtun receives a datagram from polytun.
    fn bt_recv(&mut self, d: &[u8]) -> BtOut {
        let mut out = vec![0u8; 2048];
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        match self.tunn.decapsulate(Some(ip), d, &mut out) {
            TunnResult::Done => BtOut::Done,
            TunnResult::WriteToNetwork(b) => BtOut::Net(b.to_vec()),
            TunnResult::WriteToTunnelV4(b, _) => BtOut::Tun(b.to_vec()),
            TunnResult::WriteToTunnelV6(b, _) => BtOut::Tun(b.to_vec()),
            TunnResult::Err(e) => BtOut::Err(format!("{e:?}")),
        }
    }

    fn bt_send(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 2048];
        match self.tunn.encapsulate(payload, &mut out) {
            TunnResult::WriteToNetwork(b) => b.to_vec(),
            _ => panic!("boringtun has no session"),
        }
    }

    fn data_both_ways(&mut self) {
        // boringtun -> polytun, several sizes, and a keepalive.
        for len in [20, 41, 1400] {
            let pkt = ip_packet(7, len);
            let d = self.bt_send(&pkt);
            assert_eq!(self.recv(&d, false).unwrap(), Some(pkt));
        }
        let d = self.bt_send(&[]);
        assert_eq!(self.recv(&d, false).unwrap(), Some(vec![]));
        // polytun -> boringtun.
        for len in [20, 77, 1420] {
            let pkt = ip_packet(8, len);
            let d = self.seal(&pkt);
            match self.bt_recv(&d) {
                BtOut::Tun(got) => assert_eq!(got, pkt),
                o => panic!("{o:?}"),
            }
        }
        let d = self.seal(&[]);
        assert!(
            matches!(self.bt_recv(&d), BtOut::Done),
            "keepalive accepted"
        );
    }
}

#[derive(Debug)]
enum BtOut {
    Done,
    Net(Vec<u8>),
    Tun(Vec<u8>),
    #[allow(dead_code)] // shown by Debug in failures
    Err(String),
}

fn polytun_initiates(psk: Option<[u8; 32]>) {
    let mut p = pair(psk, None);
    p.dev.on_need_handshake(Instant::now(), p.peer);
    let tx = p.drain();
    assert_eq!(tx.len(), 1);
    let resp = match p.bt_recv(&tx[0]) {
        BtOut::Net(r) => r,
        o => panic!("boringtun refused our initiation: {o:?}"),
    };
    p.recv(&resp, false).unwrap();
    let tx = p.drain();
    assert!(p.sending.as_ref().unwrap().is_initiator);
    // Our confirming keepalive.
    assert_eq!(tx.len(), 1);
    assert!(matches!(p.bt_recv(&tx[0]), BtOut::Done));
    p.data_both_ways();
}

fn boringtun_initiates(psk: Option<[u8; 32]>) {
    let mut p = pair(psk, None);
    let mut out = vec![0u8; 2048];
    let init = match p.tunn.format_handshake_initiation(&mut out, false) {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        _ => panic!(),
    };
    p.recv(&init, false).unwrap();
    let tx = p.drain();
    assert_eq!(tx.len(), 1);
    assert!(p.sending.is_none(), "responder waits for confirmation");
    let keepalive = match p.bt_recv(&tx[0]) {
        BtOut::Net(k) => k,
        o => panic!("boringtun refused our response: {o:?}"),
    };
    assert_eq!(p.recv(&keepalive, false).unwrap(), Some(vec![]));
    p.drain();
    assert!(
        p.sending.is_some(),
        "boringtun's keepalive confirmed the session"
    );
    assert!(!p.sending.as_ref().unwrap().is_initiator);
    p.data_both_ways();
}

#[test]
fn polytun_initiates_no_psk() {
    polytun_initiates(None);
}

#[test]
fn polytun_initiates_psk() {
    polytun_initiates(Some([3; 32]));
}

#[test]
fn boringtun_initiates_no_psk() {
    boringtun_initiates(None);
}

#[test]
fn boringtun_initiates_psk() {
    boringtun_initiates(Some([4; 32]));
}

#[test]
fn psk_mismatch_is_refused() {
    let mut p = pair(Some([1; 32]), None);
    p.tunn = {
        // Rebuild boringtun's side with another PSK.
        let theirs = boringtun::x25519::StaticSecret::random_from_rng(OsRng);
        let their_pub = boringtun::x25519::PublicKey::from(&theirs);
        p.dev.remove_peer(p.peer);
        p.peer = p.dev.add_peer(PeerConfig {
            public_key: polytun_wireguard::PublicKey::from(their_pub.to_bytes()),
            preshared_key: Some([1; 32]),
            endpoint: Some(p.src),
            persistent_keepalive: None,
        });
        let our_pub = boringtun::x25519::PublicKey::from(p.dev.public_key().to_bytes());
        Tunn::new(theirs, our_pub, Some([2; 32]), None, 1, None)
    };
    p.dev.on_need_handshake(Instant::now(), p.peer);
    let tx = p.drain();
    // boringtun cannot tell until its response fails at our end.
    if let BtOut::Net(resp) = p.bt_recv(&tx[0]) {
        assert_eq!(p.recv(&resp, false), Err(HandshakeError::Decrypt));
    }
    assert!(p.sending.is_none());
}

#[test]
fn polytun_cookie_reply_accepted_by_boringtun() {
    let mut p = pair(None, None);
    let mut out = vec![0u8; 2048];
    let init = match p.tunn.format_handshake_initiation(&mut out, false) {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        _ => panic!(),
    };
    assert_eq!(p.recv(&init, true), Err(HandshakeError::CookieReplySent));
    let tx = p.drain();
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].len(), 64);
    assert!(
        matches!(p.bt_recv(&tx[0]), BtOut::Done),
        "boringtun took our cookie"
    );
    let init2 = match p.tunn.format_handshake_initiation(&mut out, true) {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        _ => panic!(),
    };
    // Still under load: the mac2 made from our cookie gets it through.
    p.recv(&init2, true)
        .expect("initiation with mac2 accepted under load");
    let tx = p.drain();
    assert!(matches!(p.bt_recv(&tx[0]), BtOut::Net(_)));
}

#[test]
fn boringtun_cookie_reply_accepted_by_polytun() {
    // Limit 0: boringtun is always "under load" and demands mac2.
    let mut p = pair(None, Some(0));
    p.dev.on_need_handshake(Instant::now(), p.peer);
    let tx = p.drain();
    let cookie = match p.bt_recv(&tx[0]) {
        BtOut::Net(c) => c,
        o => panic!("{o:?}"),
    };
    assert_eq!(cookie.len(), 64);
    p.recv(&cookie, false)
        .expect("polytun took boringtun's cookie");
    // The retry (REKEY_TIMEOUT later) carries mac2.
    p.dev
        .handle_timeout(Instant::now() + std::time::Duration::from_secs(6));
    let tx = p.drain();
    assert_eq!(tx.len(), 1);
    let resp = match p.bt_recv(&tx[0]) {
        BtOut::Net(r) => r,
        o => panic!("boringtun refused our mac2: {o:?}"),
    };
    p.recv(&resp, false).unwrap();
    p.drain();
    assert!(p.sending.is_some());
}
