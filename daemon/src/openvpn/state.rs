//! What an OpenVPN tunnel's data path reads and its control task writes.
//! The data path takes the read lock once per batch; the control task
//! takes the write lock only when keys or routes change.

use crate::datapath::DropCounters;
use ipnet::IpNet;
use polytun_core::PrefixTable;
use polytun_io::UdpSocket;
use polytun_openvpn::compress::FramingError;
use polytun_openvpn::data::DataChannelKey;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Key-ids are 3 bits.
pub const KEY_SLOTS: usize = 8;

#[derive(Default)]
pub struct Tables {
    /// The key outbound packets are sealed with.
    pub current: Option<Arc<DataChannelKey>>,
    /// Keys inbound packets are opened with, by key-id.
    pub keys: [Option<Arc<DataChannelKey>>; KEY_SLOTS],
    /// Inner destinations this tunnel carries (pushed routes, the virtual
    /// subnet): picks the tunnel when one interface has several.
    pub routes: PrefixTable<()>,
}

impl Tables {
    /// A new receive key (the lame duck and the new key side by side
    /// during a renegotiation).
    pub fn install(&mut self, k: Arc<DataChannelKey>) {
        let slot = usize::from(k.key_id & 7);
        self.keys[slot] = Some(k);
    }

    /// Outbound packets move to key `id`.
    pub fn send_with(&mut self, id: u8) {
        self.current = self.keys[usize::from(id & 7)].clone();
    }

    /// Key `id` is gone for both directions.
    pub fn retire(&mut self, id: u8) {
        self.keys[usize::from(id & 7)] = None;
        if self.current.as_ref().is_some_and(|k| k.key_id == id) {
            self.current = None;
        }
    }
}

/// How outbound packets leave: a UDP socket, or a TCP connection (framed).
pub enum Link {
    Udp(Arc<UdpSocket>),
    Tcp(Arc<super::tcp::TcpLink>),
}

/// What the data path tells the control task.
#[derive(Debug)]
pub enum ToControl {
    /// A control-channel packet from the server.
    Control(Vec<u8>),
    /// The server sent OCC_EXIT (its explicit-exit-notify).
    ServerExit,
    /// The record engine reported a soft limit (reneg-bytes / reneg-pkts /
    /// packet-id wrap) for this key-id.
    KeyExpiring(u8),
}

pub struct Shared {
    pub name: String,
    /// Where packets go: the server (client role) or the client, which
    /// may float to a new address (server role).
    remote: RwLock<SocketAddr>,
    pub tables: RwLock<Tables>,
    pub link: RwLock<Option<Arc<Link>>>,
    pub drops: DropCounters,
    /// Keepalive pings received (not written to the TUN).
    pub pings_rx: AtomicU64,
    pub to_control: crate::notes::Sender<ToControl>,
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last authenticated data packet in
    /// and of the last data packet out (keepalive timers).
    last_rx: AtomicU64,
    last_tx: AtomicU64,
    /// Packets refused for their compression framing (counted as
    /// malformed too) and the last refusal, for the control task's warning
    /// (taken only for a refused packet).
    framing_refusals: Mutex<(u64, Option<FramingError>)>,
}

impl Shared {
    pub fn new(
        name: String,
        remote: SocketAddr,
        to_control: crate::notes::Sender<ToControl>,
    ) -> Self {
        Self {
            name,
            remote: RwLock::new(remote),
            tables: RwLock::new(Tables::default()),
            link: RwLock::new(None),
            drops: DropCounters::default(),
            pings_rx: AtomicU64::new(0),
            to_control,
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            epoch: Instant::now(),
            last_rx: AtomicU64::new(0),
            last_tx: AtomicU64::new(0),
            framing_refusals: Mutex::new((0, None)),
        }
    }

    pub fn tables(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tables_mut(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn remote(&self) -> SocketAddr {
        *self.remote.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_remote(&self, a: SocketAddr) {
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = a;
    }

    pub fn link(&self) -> Option<Arc<Link>> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_link(&self, l: Option<Arc<Link>>) {
        *self.link.write().unwrap_or_else(|e| e.into_inner()) = l;
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub fn mark_rx(&self, now: Instant) {
        self.last_rx.store(self.ms(now), Ordering::Relaxed);
    }

    pub fn mark_tx(&self, now: Instant) {
        self.last_tx.store(self.ms(now), Ordering::Relaxed);
    }

    pub fn last_rx(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_rx.load(Ordering::Relaxed))
    }

    pub fn last_tx(&self) -> Instant {
        self.epoch + std::time::Duration::from_millis(self.last_tx.load(Ordering::Relaxed))
    }

    /// The data path refused a packet for its compression framing.
    pub fn framing_refused(&self, e: FramingError) {
        let mut r = self
            .framing_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *r = (r.0 + 1, Some(e));
    }

    /// How many packets were refused for their framing, and the last
    /// refusal (None before the first).
    pub fn framing_refusals(&self) -> (u64, Option<FramingError>) {
        *self
            .framing_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Routes carried by this tunnel, for show.
    pub fn route_list(&self) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = self.tables().routes.iter().map(|(n, _)| n).collect();
        v.sort();
        v
    }
}

/// The OpenVPN tunnels of an interface (the TUN reader dispatches to them).
pub type TunnelSet = Arc<RwLock<Vec<Arc<Shared>>>>;
