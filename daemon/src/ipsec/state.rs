//! What the ESP data path reads and the IKE control task writes, for one
//! IPsec tunnel. The data path takes the read lock once per batch; the
//! control task takes the write lock when CHILD SAs come and go.

use crate::datapath::DropCounters;
use ipnet::IpNet;
use polytun_core::PrefixTable;
use polytun_esp::EspSa;
use polytun_ike::SaId;
use polytun_io::UdpSocket;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

/// Bytes and packets of one CHILD SA (inner packets).
#[derive(Debug, Default)]
pub struct ChildStats {
    pub rx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
}

pub struct Outbound {
    pub sa: Arc<EspSa>,
    /// The peer's NAT-T address.
    pub dst: SocketAddr,
    pub stats: Arc<ChildStats>,
}

pub struct Inbound {
    pub sa: Arc<EspSa>,
    pub ike_sa: SaId,
    /// Inner sources this SA may carry (the peer's traffic selectors).
    pub remote_ts: Vec<IpNet>,
    pub stats: Arc<ChildStats>,
}

#[derive(Default)]
pub struct Tables {
    /// Remote traffic selector → outbound SPI (the newest CHILD SA wins).
    pub routes: PrefixTable<u32>,
    pub outbound: HashMap<u32, Outbound>,
    pub inbound: HashMap<u32, Inbound>,
}

/// What the data path tells the control task.
#[derive(Debug)]
pub enum ToControl {
    /// An IKE message received on `local_port` (500, or 4500 with the
    /// non-ESP marker still in front).
    Ike {
        local_port: u16,
        src: SocketAddr,
        data: Vec<u8>,
    },
    /// Authenticated ESP arrived for this IKE SA's CHILD SAs (liveness).
    Traffic { ike_sa: SaId },
    /// An SA crossed its soft lifetime.
    KeyExpiring { spi: u32 },
    /// An SA refused a packet: it is past its hard lifetime.
    KeyExpired { spi: u32 },
}

pub struct Shared {
    pub name: String,
    pub tables: RwLock<Tables>,
    /// UDP 500.
    pub ike: Arc<UdpSocket>,
    /// UDP 4500: ESP and IKE after the NAT-T switch.
    pub natt: Arc<UdpSocket>,
    pub drops: DropCounters,
    pub to_control: crate::notes::Sender<ToControl>,
}

impl Shared {
    pub fn tables(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tables_mut(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The IPsec tunnels an interface's TUN reader dispatches to.
pub type IpsecSet = Arc<RwLock<Vec<Arc<Shared>>>>;
