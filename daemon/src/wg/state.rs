//! What the data path reads and the control task writes, for one WireGuard
//! tunnel. The data path takes the read lock once per batch; the control
//! task takes the write lock only when keys, endpoints or routes change.

use crate::datapath::DropCounters;
use ipnet::IpNet;
use polytun_core::{FastMap, PrefixTable};
use polytun_io::UdpSocket;
use polytun_wireguard::{Keypair, PeerId};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

/// Packets kept per peer while its handshake completes.
pub const STAGED_PER_PEER: usize = 128;

#[derive(Debug, Default)]
pub struct PeerStats {
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// The traffic WireGuard's timers follow (see [`super::activity`]).
    pub activity: super::activity::Activity,
}

pub struct PeerPath {
    pub sending: Option<Arc<Keypair>>,
    pub endpoint: Option<SocketAddr>,
    pub stats: Arc<PeerStats>,
}

#[derive(Default)]
pub struct Tables {
    /// Cryptokey routing: inner address → peer (outbound choice and
    /// inbound source check).
    pub routes: PrefixTable<PeerId>,
    pub peers: FastMap<PeerId, PeerPath>,
    /// Local index → peer and keypair to open with.
    pub receivers: FastMap<u32, (PeerId, Arc<Keypair>)>,
}

/// What the data path tells the control task.
#[derive(Debug)]
pub enum ToControl {
    /// A handshake-class datagram (initiation, response, cookie reply).
    Handshake { src: SocketAddr, data: Vec<u8> },
    /// Authenticated transport data arrived on `local_index` during a batch
    /// (at most one note per [`super::activity::NOTE_INTERVAL`], except
    /// for a new keypair or source address; the rest is in the peer's
    /// [`super::activity::Activity`]).
    Received {
        local_index: u32,
        src: SocketAddr,
        keepalive: bool,
    },
    /// Data was sent to `peer` during a batch (at most once per
    /// [`super::activity::NOTE_INTERVAL`]).
    Sent { peer: PeerId },
    /// A packet for `peer` waits in the staging queue: no sending key.
    NeedHandshake { peer: PeerId },
    /// The sending key of `peer` crossed a soft limit.
    KeyExpiring { peer: PeerId },
}

pub struct Shared {
    pub name: String,
    pub tables: RwLock<Tables>,
    pub socket: RwLock<Arc<UdpSocket>>,
    pub drops: DropCounters,
    pub to_control: crate::notes::Sender<ToControl>,
    pub staged: Mutex<HashMap<PeerId, VecDeque<Vec<u8>>>>,
    pub mtu: usize,
    /// Origin of the clock the data path records traffic with.
    pub epoch: std::time::Instant,
}

impl Shared {
    pub fn since_epoch(&self, now: std::time::Instant) -> std::time::Duration {
        now.saturating_duration_since(self.epoch)
    }

    pub fn socket(&self) -> Arc<UdpSocket> {
        self.socket
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn tables(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tables_mut(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a copy of a packet until `peer` has a key; true if it was the
    /// first one waiting (then a handshake should be asked for).
    pub fn stage(&self, peer: PeerId, packet: &[u8]) -> bool {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        let q = staged.entry(peer).or_default();
        let first = q.is_empty();
        if q.len() >= STAGED_PER_PEER {
            q.pop_front();
        }
        q.push_back(packet.to_vec());
        first
    }

    pub fn take_staged(&self, peer: PeerId) -> VecDeque<Vec<u8>> {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.remove(&peer).unwrap_or_default()
    }
}

/// Routes for `nets`, for show.
pub fn routes_of(routes: &PrefixTable<PeerId>, peer: PeerId) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = routes
        .iter()
        .filter(|(_, p)| **p == peer)
        .map(|(n, _)| n)
        .collect();
    v.sort();
    v
}
