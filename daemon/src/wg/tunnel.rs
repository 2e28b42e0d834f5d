//! One WireGuard tunnel's control task: it owns the protocol [`Device`],
//! every timer, the peer configuration and the UDP socket's lifecycle, and
//! it is the only writer of the tables the data path reads.

use super::activity::{self, Seen, NOTE_INTERVAL};
use super::datapath::Poller;
use super::state::{routes_of, PeerPath, PeerStats, Shared, Tables, ToControl};
use crate::control::{PeerShow, TunnelShow};
use crate::datapath::DropCounters;
use crate::uapi::{DeviceSet, DeviceState, PeerState, UapiError};
use ipnet::IpNet;
use polytun_core::PacketBuf;
use polytun_io::{RouteOptions, Tun, UdpSocket};
use polytun_wireguard::{keys, Device, Event, Output, PeerConfig, PeerId, PublicKey, StaticSecret};
use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// Handshake messages queued beyond this mark mean "under load": the
/// device answers new initiations with cookie replies (WireGuard's SAV).
const UNDER_LOAD_QUEUE: usize = 128;
const CONTROL_QUEUE: usize = 4096;

/// A peer as configured (from the config file or the UAPI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: Option<String>,
    pub public_key: [u8; 32],
    pub preshared_key: Option<Zeroizing<[u8; 32]>>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

/// Commands the supervisor, the control socket and the UAPI send a tunnel.
pub enum TunnelCommand {
    Show(oneshot::Sender<TunnelShow>),
    Rekey {
        peer: Option<String>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    UapiGet(oneshot::Sender<DeviceState>),
    UapiSet(DeviceSet, oneshot::Sender<Result<(), UapiError>>),
    /// Make the peer set equal to this one, leaving unchanged peers alone.
    SetPeers(Vec<PeerSpec>, oneshot::Sender<Result<(), String>>),
    Shutdown,
}

pub struct TunnelOptions {
    pub name: String,
    pub private_key: Option<Zeroizing<[u8; 32]>>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerSpec>,
    pub mtu: usize,
    /// Install kernel routes for allowed IPs (polytund does; under wg-quick,
    /// wg-quick does).
    pub install_routes: bool,
    /// The data-path thread that receives this tunnel's datagrams.
    pub poller: Arc<Poller>,
}

/// A running tunnel: its shared data-path state and its command channel.
pub struct TunnelHandle {
    pub name: String,
    pub shared: Arc<Shared>,
    pub commands: mpsc::Sender<TunnelCommand>,
    pub task: JoinHandle<()>,
}

/// The tunnel's socket, polled by the data-path thread (crate::threads).
fn bind(port: u16) -> std::io::Result<UdpSocket> {
    UdpSocket::bind_for_thread(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)).or_else(|_| {
        UdpSocket::bind_for_thread(SocketAddr::new(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            port,
        ))
    })
}

pub fn spawn(opts: TunnelOptions, tun: Arc<Tun>) -> std::io::Result<TunnelHandle> {
    let socket = bind(opts.listen_port.unwrap_or(0)).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "tunnel {}: cannot listen on UDP port {}: {e}",
                opts.name,
                opts.listen_port.unwrap_or(0)
            ),
        )
    })?;
    let (to_control, from_data) = crate::notes::channel(CONTROL_QUEUE);
    let shared = Arc::new(Shared {
        name: opts.name.clone(),
        tables: RwLock::new(Tables::default()),
        socket: RwLock::new(Arc::new(socket)),
        drops: DropCounters::default(),
        to_control,
        staged: Mutex::new(HashMap::new()),
        mtu: opts.mtu,
        epoch: Instant::now(),
    });
    let (commands, cmd_rx) = mpsc::channel(64);
    let now = Instant::now();
    let has_key = opts.private_key.is_some();
    let secret = match &opts.private_key {
        Some(k) => StaticSecret::from(**k),
        None => keys::generate_secret(&mut rand_core::OsRng),
    };
    let mut device = Device::new(secret, now, SystemTime::now(), rand_core::OsRng);
    device.set_mtu(opts.mtu);
    let mut ctl = Control {
        name: opts.name.clone(),
        device,
        has_key,
        private_key: opts.private_key,
        shared: shared.clone(),
        tun: tun.clone(),
        peers: HashMap::new(),
        install_routes: opts.install_routes,
        fwmark: 0,
        poller: opts.poller,
        receiving: None,
        recheck: None,
    };
    ctl.restart_receiver();
    if let Err(e) = ctl.set_peers(opts.peers) {
        tracing::warn!("tunnel {}: {e}", ctl.name);
    }
    let name = opts.name.clone();
    let task = tokio::spawn(async move { ctl.run(from_data, cmd_rx).await });
    Ok(TunnelHandle {
        name,
        shared,
        commands,
        task,
    })
}

struct PeerMeta {
    spec: PeerSpec,
    stats: Arc<PeerStats>,
    /// The data path's traffic as last applied to the device's timers.
    applied: Seen,
}

struct Control {
    name: String,
    device: Device,
    has_key: bool,
    private_key: Option<Zeroizing<[u8; 32]>>,
    shared: Arc<Shared>,
    tun: Arc<Tun>,
    peers: HashMap<PeerId, PeerMeta>,
    install_routes: bool,
    fwmark: u32,
    poller: Arc<Poller>,
    /// The socket registered with the data-path thread.
    receiving: Option<Arc<UdpSocket>>,
    /// When to look at the peers' traffic again for what the data path did
    /// not report (armed by a note, kept while traffic goes on).
    recheck: Option<Instant>,
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(s) = self.receiving.take() {
            self.poller.deregister(s.raw_fd());
        }
    }
}

fn short(k: &[u8; 32]) -> String {
    keys::encode_base64(k)
}

impl Control {
    async fn run(
        &mut self,
        mut from_data: crate::notes::Receiver<ToControl>,
        mut commands: mpsc::Receiver<TunnelCommand>,
    ) {
        loop {
            let deadline = match (self.device.poll_timeout(), self.recheck) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = crate::datapath::sleep_until(deadline);
            tokio::select! {
                msg = from_data.recv() => {
                    let Some(msg) = msg else { break };
                    let under_load = from_data.len() > UNDER_LOAD_QUEUE;
                    self.on_data_message(msg, under_load);
                    // Drain what queued up meanwhile, without waiting.
                    let mut budget = 256;
                    while budget > 0 {
                        let Some(msg) = from_data.try_recv() else { break };
                        let under_load = from_data.len() > UNDER_LOAD_QUEUE;
                        self.on_data_message(msg, under_load);
                        self.process_outputs();
                        budget -= 1;
                    }
                }
                cmd = commands.recv() => {
                    match cmd {
                        None | Some(TunnelCommand::Shutdown) => break,
                        Some(cmd) => self.on_command(cmd),
                    }
                }
                _ = sleep => self.on_timer(Instant::now()),
            }
            self.process_outputs();
        }
        self.remove_all_routes();
        tracing::info!("tunnel {}: stopped", self.name);
    }

    fn on_data_message(&mut self, msg: ToControl, under_load: bool) {
        let now = Instant::now();
        match msg {
            ToControl::Handshake { src, data } => {
                if !self.has_key {
                    DropCounters::bump(&self.shared.drops.other);
                    return;
                }
                if let Err(e) = self.device.handle_handshake(now, src, &data, under_load) {
                    use polytun_wireguard::HandshakeError as H;
                    let d = &self.shared.drops;
                    let c = match e {
                        H::Malformed(_) | H::NotHandshake => &d.malformed,
                        H::BadMac1 | H::Decrypt | H::Cookie(_) => &d.bad_mac,
                        H::Replay | H::Flood => &d.replayed,
                        H::RateLimited | H::CookieReplySent => &d.rate_limited,
                        H::UnknownIndex | H::UnexpectedResponse => &d.no_session,
                        H::UnknownPeer | H::PeerRejected => &d.other,
                    };
                    DropCounters::bump(c);
                    tracing::debug!("tunnel {}: handshake from {src} dropped: {e}", self.name);
                }
            }
            ToControl::Received {
                local_index,
                src,
                keepalive,
            } => match self
                .device
                .peer_of_index(local_index)
                .filter(|p| self.peers.contains_key(p))
            {
                Some(peer) => {
                    self.catch_up(peer, Some(src));
                    // Applied before this note was read (by a recheck), with
                    // the old address: apply the new one now.
                    if self
                        .device
                        .peer(peer)
                        .is_some_and(|p| p.endpoint != Some(src))
                    {
                        self.device
                            .on_data_received(now, local_index, src, keepalive);
                    }
                    self.recheck.get_or_insert(now + NOTE_INTERVAL);
                }
                _ => self
                    .device
                    .on_data_received(now, local_index, src, keepalive),
            },
            ToControl::Sent { peer } => {
                self.catch_up(peer, None);
                self.recheck.get_or_insert(now + NOTE_INTERVAL);
            }
            ToControl::NeedHandshake { peer } => {
                if self.has_key {
                    self.device.on_need_handshake(now, peer)
                }
            }
            ToControl::KeyExpiring { peer } => self.device.on_key_expiring(now, peer),
        }
    }

    /// A timer is due, or the recheck: the timers first learn the traffic
    /// the data path did not report.
    fn on_timer(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        let mut applied = false;
        for id in ids {
            applied |= self.catch_up(id, None);
        }
        if self.recheck.is_some_and(|r| r <= now) {
            // Traffic went on since the last look: look again, so that what
            // follows the last note is not missed.
            self.recheck = applied.then(|| now + NOTE_INTERVAL);
        }
        self.device.handle_timeout(now);
    }

    /// Tells the device's timers what the data path saw of `peer` since the
    /// last look, in the order and at the times it happened
    /// ([`activity::since`]); packets received came from `src` (a note's),
    /// else from the peer's endpoint. True if there was anything.
    fn catch_up(&mut self, peer: PeerId, src: Option<SocketAddr>) -> bool {
        let Some(m) = self.peers.get_mut(&peer) else {
            return false;
        };
        let seen = m.stats.activity.seen();
        let events = activity::since(&m.applied, &seen);
        m.applied = seen;
        let src = src.or_else(|| self.device.peer(peer).and_then(|p| p.endpoint));
        let at = |us: u64| self.shared.epoch + Duration::from_micros(us);
        for e in &events {
            match *e {
                activity::Event::Sent { at: t } => self.device.on_data_sent(at(t), peer, false),
                activity::Event::Received {
                    at: t,
                    index,
                    keepalive,
                } => {
                    if let Some(src) = src {
                        self.device.on_data_received(at(t), index, src, keepalive);
                    }
                }
            }
        }
        !events.is_empty()
    }

    fn process_outputs(&mut self) {
        while let Some(out) = self.device.poll_output() {
            match out {
                Output::Transmit { dst, data } => {
                    if let Err(e) = self.shared.socket().try_send_to(&data, dst) {
                        tracing::debug!("tunnel {}: send to {dst}: {e}", self.name);
                    }
                }
                Output::AddReceiver { peer, keypair } => {
                    self.shared
                        .tables_mut()
                        .receivers
                        .insert(keypair.local_index, (peer, keypair));
                }
                Output::RemoveReceiver { local_index } => {
                    self.shared.tables_mut().receivers.remove(&local_index);
                }
                Output::SetSending { peer, keypair } => {
                    let ready = keypair.is_some();
                    if let Some(p) = self.shared.tables_mut().peers.get_mut(&peer) {
                        p.sending = keypair;
                    }
                    if ready {
                        self.flush_staged(peer);
                    }
                }
                Output::SendKeepalive { peer } => self.send_keepalive(peer),
                Output::EndpointChanged { peer, endpoint } => {
                    if let Some(p) = self.shared.tables_mut().peers.get_mut(&peer) {
                        match p.endpoint {
                            Some(old) if old != endpoint => tracing::info!(
                                "tunnel {}: peer {} roamed from {old} to {endpoint}",
                                self.name,
                                self.peer_label(peer)
                            ),
                            None => tracing::info!(
                                "tunnel {}: peer {} is at {endpoint}",
                                self.name,
                                self.peer_label(peer)
                            ),
                            _ => {}
                        }
                        p.endpoint = Some(endpoint);
                    }
                    if let Some(m) = self.peers.get_mut(&peer) {
                        m.spec.endpoint = Some(endpoint);
                    }
                }
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    fn peer_label(&self, peer: PeerId) -> String {
        match self.peers.get(&peer) {
            Some(m) => m
                .spec
                .name
                .clone()
                .unwrap_or_else(|| short(&m.spec.public_key)),
            None => format!("#{peer}"),
        }
    }

    fn on_event(&self, e: Event) {
        match e {
            Event::HandshakeCompleted { peer } => {
                tracing::info!(
                    "tunnel {}: handshake with {} completed",
                    self.name,
                    self.peer_label(peer)
                )
            }
            Event::HandshakeFailed { peer } => tracing::warn!(
                "tunnel {}: no handshake with {} after 90 s of attempts",
                self.name,
                self.peer_label(peer)
            ),
            Event::KeysCleared { peer } => {
                tracing::info!(
                    "tunnel {}: keys of {} expired and wiped",
                    self.name,
                    self.peer_label(peer)
                )
            }
            Event::KeyExpiring { peer } => {
                tracing::debug!(
                    "tunnel {}: key of {} expiring, rekeying",
                    self.name,
                    self.peer_label(peer)
                )
            }
            Event::HandshakeInitiated { peer, attempt } => tracing::debug!(
                "tunnel {}: handshake initiation to {} (attempt {attempt})",
                self.name,
                self.peer_label(peer)
            ),
        }
    }

    /// Seals and sends `packets` for `peer` with its current key.
    fn send_now(&self, peer: PeerId, packets: impl IntoIterator<Item = Vec<u8>>) -> usize {
        let (kp, endpoint, stats) = {
            let t = self.shared.tables();
            let Some(p) = t.peers.get(&peer) else {
                return 0;
            };
            let (Some(kp), Some(ep)) = (p.sending.clone(), p.endpoint) else {
                return 0;
            };
            (kp, ep, p.stats.clone())
        };
        let socket = self.shared.socket();
        let now = Instant::now();
        let mut sent = 0;
        let mut buf = vec![0u8; 16 + 65535 + 64];
        for pkt in packets {
            if 16 + pkt.len() + 32 > buf.len() {
                continue;
            }
            buf[16..16 + pkt.len()].copy_from_slice(&pkt);
            let mut p = PacketBuf::new(&mut buf, 16, 16 + pkt.len());
            if kp.seal(now, &mut p).is_err() {
                DropCounters::bump(&self.shared.drops.expired_key);
                continue;
            }
            if socket.try_send_to(p.as_slice(), endpoint).is_ok() {
                stats
                    .tx_bytes
                    .fetch_add(pkt.len() as u64, Ordering::Relaxed);
                sent += 1;
            }
        }
        sent
    }

    fn flush_staged(&mut self, peer: PeerId) {
        let staged = self.shared.take_staged(peer);
        if !staged.is_empty() && self.send_now(peer, staged) > 0 {
            self.device.on_data_sent(Instant::now(), peer, false);
        }
    }

    fn send_keepalive(&mut self, peer: PeerId) {
        if self.send_now(peer, [Vec::new()]) > 0 {
            self.device.on_data_sent(Instant::now(), peer, true);
        }
    }

    /// Has the data-path thread receive on the tunnel's current socket
    /// (and no longer on the one before).
    fn restart_receiver(&mut self) {
        if let Some(s) = self.receiving.take() {
            self.poller.deregister(s.raw_fd());
        }
        let socket = self.shared.socket();
        match self
            .poller
            .register(socket.raw_fd(), (self.shared.clone(), socket.clone()))
        {
            Ok(()) => self.receiving = Some(socket),
            Err(e) => tracing::error!("tunnel {}: cannot receive: {e}", self.name),
        }
    }

    fn listen_port(&self) -> u16 {
        self.shared.socket().local_addr().map_or(0, |a| a.port())
    }

    fn set_listen_port(&mut self, port: u16) -> std::io::Result<()> {
        if port != 0 && port == self.listen_port() {
            return Ok(());
        }
        let socket = bind(port)?;
        set_fwmark(&socket, self.fwmark);
        *self
            .shared
            .socket
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(socket);
        self.restart_receiver();
        Ok(())
    }

    fn route(&self, net: &IpNet, add: bool) {
        if !self.install_routes {
            return;
        }
        let opts = RouteOptions::default();
        let r = if add {
            self.tun.add_route(net.network(), net.prefix_len(), &opts)
        } else {
            self.tun
                .remove_route(net.network(), net.prefix_len(), &opts)
        };
        if let Err(e) = r {
            // An existing identical route (e.g. the connected route of an
            // interface address) is fine.
            if add && e.raw_os_error() != Some(libc::EEXIST) {
                tracing::warn!(
                    "tunnel {}: route {net} via {}: {e}",
                    self.name,
                    self.tun.name()
                );
            }
        }
    }

    fn remove_all_routes(&mut self) {
        let nets: Vec<IpNet> = self
            .peers
            .values()
            .flat_map(|m| m.spec.allowed_ips.clone())
            .collect();
        for n in nets {
            self.route(&n, false);
        }
    }

    /// Adds or updates one peer to match `spec`.
    fn upsert_peer(&mut self, spec: PeerSpec) -> PeerId {
        let pk = PublicKey::from(spec.public_key);
        let psk = spec.preshared_key.as_ref().map(|k| **k);
        let id = match self.device.peer_by_public_key(&pk) {
            Some(id) => {
                let old = self.peers.get(&id).map(|m| m.spec.clone());
                if old.as_ref() == Some(&spec) {
                    return id;
                }
                self.device.update_peer(id, |c| {
                    c.preshared_key = psk;
                    c.persistent_keepalive = spec.persistent_keepalive;
                    if let Some(e) = spec.endpoint {
                        c.endpoint = Some(e);
                    }
                });
                if let Some(old) = old {
                    for n in &old.allowed_ips {
                        if !spec.allowed_ips.contains(n) {
                            self.shared.tables_mut().routes.remove(n);
                            self.route(n, false);
                        }
                    }
                }
                id
            }
            None => {
                let mut cfg = PeerConfig::new(pk);
                cfg.preshared_key = psk;
                cfg.endpoint = spec.endpoint;
                cfg.persistent_keepalive = spec.persistent_keepalive;
                let id = self.device.add_peer(cfg);
                let stats = Arc::new(PeerStats::default());
                self.shared.tables_mut().peers.insert(
                    id,
                    PeerPath {
                        sending: None,
                        endpoint: spec.endpoint,
                        stats: stats.clone(),
                    },
                );
                self.peers.insert(
                    id,
                    PeerMeta {
                        spec: spec.clone(),
                        stats,
                        applied: Seen::default(),
                    },
                );
                id
            }
        };
        {
            let mut t = self.shared.tables_mut();
            if let Some(p) = t.peers.get_mut(&id) {
                if spec.endpoint.is_some() {
                    p.endpoint = spec.endpoint;
                }
            }
            for n in &spec.allowed_ips {
                t.routes.insert(*n, id);
            }
        }
        // An allowed IP belongs to one peer only: take it from the others.
        for (other, m) in self.peers.iter_mut() {
            if *other != id {
                m.spec.allowed_ips.retain(|n| !spec.allowed_ips.contains(n));
            }
        }
        for n in &spec.allowed_ips {
            self.route(n, true);
        }
        let endpoint = spec
            .endpoint
            .or(self.peers.get(&id).and_then(|m| m.spec.endpoint));
        if let Some(m) = self.peers.get_mut(&id) {
            m.spec = PeerSpec { endpoint, ..spec };
        }
        id
    }

    fn remove_peer(&mut self, id: PeerId) {
        self.device.remove_peer(id);
        self.process_outputs();
        if let Some(m) = self.peers.remove(&id) {
            for n in &m.spec.allowed_ips {
                self.route(n, false);
            }
        }
        let mut t = self.shared.tables_mut();
        t.peers.remove(&id);
        t.routes.retain(|p| *p != id);
        t.receivers.retain(|_, (p, _)| *p != id);
        drop(t);
        self.shared.take_staged(id);
    }

    fn set_peers(&mut self, specs: Vec<PeerSpec>) -> Result<(), String> {
        let wanted: Vec<[u8; 32]> = specs.iter().map(|s| s.public_key).collect();
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, m)| !wanted.contains(&m.spec.public_key))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            tracing::info!(
                "tunnel {}: removing peer {}",
                self.name,
                self.peer_label(id)
            );
            self.remove_peer(id);
        }
        for s in specs {
            self.upsert_peer(s);
        }
        Ok(())
    }

    fn set_private_key(&mut self, key: Option<Zeroizing<[u8; 32]>>) {
        if key == self.private_key {
            return;
        }
        let now = Instant::now();
        match &key {
            Some(k) => self.device.set_private_key(StaticSecret::from(**k), now),
            None => self
                .device
                .set_private_key(keys::generate_secret(&mut rand_core::OsRng), now),
        }
        self.has_key = key.is_some();
        self.private_key = key;
        // Sessions under the old identity are gone.
        let mut t = self.shared.tables_mut();
        t.receivers.clear();
        for p in t.peers.values_mut() {
            p.sending = None;
        }
    }

    fn on_command(&mut self, cmd: TunnelCommand) {
        match cmd {
            TunnelCommand::Show(reply) => {
                let _ = reply.send(self.show());
            }
            TunnelCommand::Rekey { peer, reply } => {
                let now = Instant::now();
                let ids: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, m)| match &peer {
                        None => true,
                        Some(p) => {
                            m.spec.name.as_deref() == Some(p.as_str())
                                || short(&m.spec.public_key) == *p
                        }
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in &ids {
                    self.device.initiate_handshake(now, *id);
                }
                let _ = reply.send(if ids.is_empty() && peer.is_some() {
                    Err(format!(
                        "no peer {} in tunnel {}",
                        peer.unwrap_or_default(),
                        self.name
                    ))
                } else {
                    Ok(ids.len())
                });
            }
            TunnelCommand::UapiGet(reply) => {
                let _ = reply.send(self.uapi_state());
            }
            TunnelCommand::UapiSet(set, reply) => {
                let _ = reply.send(self.uapi_set(set));
            }
            TunnelCommand::SetPeers(specs, reply) => {
                let _ = reply.send(self.set_peers(specs));
            }
            TunnelCommand::Shutdown => {}
        }
    }

    fn show(&self) -> TunnelShow {
        let now = Instant::now();
        let t = self.shared.tables();
        let mut peers: Vec<PeerShow> = self
            .peers
            .iter()
            .map(|(id, m)| {
                let info = self.device.peer(*id);
                let endpoint = t.peers.get(id).and_then(|p| p.endpoint);
                PeerShow {
                    name: m.spec.name.clone(),
                    public_key: short(&m.spec.public_key),
                    endpoint: endpoint.map(|e| e.to_string()),
                    allowed_ips: routes_of(&t.routes, *id)
                        .iter()
                        .map(|n| n.to_string())
                        .collect(),
                    latest_handshake_unix: info
                        .and_then(|i| i.last_handshake)
                        .and_then(|h| h.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    rx_bytes: m.stats.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: m.stats.tx_bytes.load(Ordering::Relaxed),
                    key_age_secs: info
                        .and_then(|i| i.current_key_created)
                        .map(|c| now.saturating_duration_since(c).as_secs()),
                    persistent_keepalive: m.spec.persistent_keepalive,
                    preshared_key: m.spec.preshared_key.is_some(),
                }
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name).then(a.public_key.cmp(&b.public_key)));
        TunnelShow {
            name: self.name.clone(),
            protocol: "wireguard".into(),
            listen_port: Some(self.listen_port()),
            public_key: self
                .has_key
                .then(|| keys::encode_base64(self.device.public_key().as_bytes())),
            drops: self.shared.drops.snapshot(),
            peers,
            ..Default::default()
        }
    }

    fn uapi_state(&self) -> DeviceState {
        let t = self.shared.tables();
        let mut peers: Vec<PeerState> = self
            .peers
            .iter()
            .map(|(id, m)| {
                let info = self.device.peer(*id);
                PeerState {
                    public_key: m.spec.public_key,
                    preshared_key: m.spec.preshared_key.clone(),
                    endpoint: t.peers.get(id).and_then(|p| p.endpoint),
                    last_handshake: info.and_then(|i| i.last_handshake),
                    rx_bytes: m.stats.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: m.stats.tx_bytes.load(Ordering::Relaxed),
                    persistent_keepalive: m.spec.persistent_keepalive.unwrap_or(0),
                    allowed_ips: routes_of(&t.routes, *id),
                }
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        DeviceState {
            private_key: self.private_key.clone(),
            listen_port: self.listen_port(),
            fwmark: self.fwmark,
            peers,
        }
    }

    fn uapi_set(&mut self, set: DeviceSet) -> Result<(), UapiError> {
        if let Some(k) = set.private_key {
            self.set_private_key(k);
        }
        if let Some(port) = set.listen_port {
            self.set_listen_port(port).map_err(|e| UapiError {
                errno: crate::uapi::EADDRINUSE,
                message: format!("listen_port {port}: {e}"),
            })?;
        }
        if let Some(mark) = set.fwmark {
            self.fwmark = mark;
            set_fwmark(&self.shared.socket(), mark);
        }
        if set.replace_peers {
            let all: Vec<PeerId> = self.peers.keys().copied().collect();
            for id in all {
                self.remove_peer(id);
            }
        }
        for p in set.peers {
            let pk = PublicKey::from(p.public_key);
            let existing = self.device.peer_by_public_key(&pk);
            if p.remove {
                if let Some(id) = existing {
                    self.remove_peer(id);
                }
                continue;
            }
            if p.update_only && existing.is_none() {
                continue;
            }
            let mut spec = existing
                .and_then(|id| self.peers.get(&id))
                .map(|m| m.spec.clone())
                .unwrap_or(PeerSpec {
                    name: None,
                    public_key: p.public_key,
                    preshared_key: None,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    persistent_keepalive: None,
                });
            if let Some(psk) = p.preshared_key {
                spec.preshared_key = psk;
            }
            if let Some(e) = p.endpoint {
                spec.endpoint = Some(e);
            }
            let keepalive_turned_on = matches!(p.persistent_keepalive, Some(k) if k > 0)
                && spec.persistent_keepalive.is_none();
            if let Some(k) = p.persistent_keepalive {
                spec.persistent_keepalive = (k > 0).then_some(k);
            }
            if p.replace_allowed_ips {
                // upsert_peer diffs old against new, so an unchanged set
                // leaves the data path's routes untouched.
                spec.allowed_ips.clear();
            }
            for n in p.allowed_ips {
                if !spec.allowed_ips.contains(&n) {
                    spec.allowed_ips.push(n);
                }
            }
            let id = self.upsert_peer(spec);
            if keepalive_turned_on && self.has_key {
                // Like wireguard-go: a keepalive right away, which starts a
                // handshake when there is no session yet.
                self.device.on_need_handshake(Instant::now(), id);
            }
        }
        self.process_outputs();
        Ok(())
    }
}

fn set_fwmark(socket: &UdpSocket, mark: u32) {
    let fd = socket.raw_fd();
    // SAFETY: setsockopt on a socket we own, with a pointer to a live u32.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            &mark as *const u32 as *const libc::c_void,
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::warn!("SO_MARK {mark}: {}", std::io::Error::last_os_error());
    }
}
