//! An OpenVPN server tunnel (`mode = "server"`): many clients on one TUN
//! device and one UDP socket or TCP listener.
//!
//! - Control: one [`Session`] per client, keyed by its source address (UDP)
//!   or its connection (TCP). Only a HARD_RESET_CLIENT_V2 that passes the
//!   tls-crypt / tls-auth check ([`ControlWrap::unwrap_stateless`]) creates
//!   state; everything else from an unknown address is a counted drop.
//! - Each client gets a peer-id (its P_DATA_V2 packets carry it: inbound
//!   data is demultiplexed by it) and an address from the `server` pool
//!   (topology subnet), pushed with the configured options.
//! - Outbound: the TUN reader routes by inner destination (a prefix table of
//!   the clients' addresses) to the client's session.
//! - Float (ME): an authenticated data or control packet of a client from a
//!   new UDP address moves the client there.
//! - explicit-exit-notify (CT) removes a client at once; `ping-restart`
//!   removes silent ones; both free the address and the peer-id.

use super::datapath::{self, Dg, Routes, Routing, Rx, TunWriter};
use super::settings::{OpenVpn, ServerSettings, Transport};
use super::state::{Link, Shared, ToControl};
use super::tcp::{Ended, TcpLink};
use super::tunnel::{control_wrap, tls_identity, TunnelCommand, TunnelHandle};
use crate::control::{Drops, OpenVpnShow, TunnelShow};
use crate::datapath::DropCounters;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use polytun_core::{Limits, PrefixTable};
use polytun_io::{RouteOptions, Tun, UdpSocket};
use polytun_openvpn::compress::{Framing, Room};
use polytun_openvpn::packet::{split_op_byte, Opcode, SessionId, SESSION_ID_LEN};
use polytun_openvpn::reliable::ReliableConfig;
use polytun_openvpn::session::{
    Event, Output, Role, Session, SessionConfig, SessionError, DEFAULT_CONTROL_MTU,
};
use polytun_openvpn::tls;
use polytun_openvpn::wrap::ControlWrap;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const CONTROL_QUEUE: usize = 4096;
const TICK: Duration = Duration::from_secs(1);
/// `keepalive 10 60` when the config sets none: a server must notice
/// clients that vanish without an exit notification.
const DEFAULT_PING: u32 = 10;
const DEFAULT_PING_RESTART: u32 = 60;
/// TCP connections without a session yet, beyond the client limit.
const SPARE_CONNECTIONS: usize = 16;

/// What the server's data path tells its control task.
enum Msg {
    /// A control packet from `from` (UDP), or on TCP connection `conn`.
    Control {
        from: SocketAddr,
        conn: Option<u64>,
        packet: Vec<u8>,
    },
    /// OCC_EXIT (explicit-exit-notify) from this peer-id.
    Exit(u32),
    /// An authenticated data packet of this peer-id came from a new address.
    Float(u32, SocketAddr),
    /// TCP connection number `conn` from `addr`, not yet polled.
    Accepted {
        conn: u64,
        addr: SocketAddr,
        tcp: Arc<TcpLink>,
    },
}

/// What the inbound data path reads: clients by peer-id (replaced as a
/// whole when a client comes or goes, as the outbound [`Routes`] are).
#[derive(Default)]
struct Tables {
    by_peer_id: HashMap<u32, Arc<Shared>>,
}

type ServerTables = Arc<RwLock<Tables>>;

fn read(t: &ServerTables) -> std::sync::RwLockReadGuard<'_, Tables> {
    t.read().unwrap_or_else(|e| e.into_inner())
}

fn tls_config(s: &OpenVpn) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(tls::server_config(&tls_identity(s)?)?)
}

/// Starts the server: its socket or listener, its data-path threads
/// (`ovpn-data-N`, which read the TUN device: a server is alone on it)
/// and its control task.
pub fn spawn(
    name: &str,
    settings: OpenVpn,
    tun: Arc<Tun>,
    mtu: usize,
) -> anyhow::Result<TunnelHandle> {
    let srv = settings
        .server
        .as_deref()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("tunnel {name}: not a server"))?;
    let tls = tls_config(&settings)
        .map_err(|e| anyhow::anyhow!("tunnel {name}: certificate or key unusable: {e}"))?;
    // Clients report through the server's own channel; this one is unused.
    let (unused, _) = crate::notes::channel::<ToControl>(1);
    let tunnel = Arc::new(Shared::new(
        name.to_string(),
        settings.remote,
        unused.clone(),
    ));
    let tables: ServerTables = Arc::default();
    let routes: Routes = Arc::default();
    let data_path = datapath::Turns::spawn(tun.clone(), routes.clone(), mtu)
        .map_err(|e| anyhow::anyhow!("tunnel {name}: starting the data path: {e}"))?;
    let (tx, rx) = crate::notes::channel(CONTROL_QUEUE);
    let mut tasks = Vec::new();
    let mut udp_link = None;
    let listen = settings.remote;
    match settings.transport {
        Transport::Udp => {
            let sock = Arc::new(
                UdpSocket::bind_for_thread(listen)
                    .map_err(|e| anyhow::anyhow!("tunnel {name}: UDP {listen}: {e}"))?,
            );
            udp_link = Some(Arc::new(Link::Udp(sock.clone())));
            let receiver = Arc::new(ServerSocket {
                tunnel: tunnel.clone(),
                tables: tables.clone(),
                socket: sock.clone(),
                tx: tx.clone(),
            });
            data_path
                .poller()
                .register(sock.raw_fd(), receiver)
                .map_err(|e| anyhow::anyhow!("tunnel {name}: UDP {listen}: {e}"))?;
        }
        Transport::Tcp => {
            let std = std::net::TcpListener::bind(listen)
                .map_err(|e| anyhow::anyhow!("tunnel {name}: TCP {listen}: {e}"))?;
            std.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(std)?;
            tasks.push(tokio::spawn(tcp_accept(
                listener,
                tunnel.clone(),
                data_path.poller(),
                tx.clone(),
            )));
        }
    }
    // The server's own address in the pool (topology subnet).
    let gw = first_host(&srv.pool);
    let added_address = match tun.add_address(gw.into(), srv.pool.prefix_len()) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => anyhow::bail!("tunnel {name}: address {gw}/{}: {e}", srv.pool.prefix_len()),
    };
    let added_address6 = match srv.pool6 {
        None => false,
        Some(p6) => match tun.add_address(first_host6(&p6).into(), p6.prefix_len()) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => {
                if added_address {
                    let _ = tun.remove_address(gw.into(), srv.pool.prefix_len());
                }
                anyhow::bail!(
                    "tunnel {name}: address {}/{}: {e}",
                    first_host6(&p6),
                    p6.prefix_len()
                )
            }
        },
    };
    // The clients' networks (iroutes) lead into the TUN.
    let mut added_routes = Vec::new();
    for n in &srv.routes {
        let opts = RouteOptions {
            replace: true,
            ..RouteOptions::default()
        };
        match tun.add_route(n.addr(), n.prefix_len(), &opts) {
            Ok(()) => added_routes.push(*n),
            Err(e) => tracing::warn!("tunnel {name}: route {n}: {e}"),
        }
    }
    let ping = settings.ping.unwrap_or(DEFAULT_PING);
    let ping_restart = settings.ping_restart.unwrap_or(DEFAULT_PING_RESTART);
    let (commands, cmd_rx) = mpsc::channel(16);
    let (ended, ended_rx) = mpsc::unbounded_channel();
    let mut ctl = Server {
        name: name.to_string(),
        check: control_wrap(&settings, true),
        settings,
        srv,
        tls,
        tun,
        tunnel: tunnel.clone(),
        tables,
        routes,
        poller: data_path.poller(),
        data_path: Some(data_path),
        tx: tx.clone(),
        ended,
        udp_link,
        unused,
        peers: BTreeMap::new(),
        by_addr: HashMap::new(),
        conns: HashMap::new(),
        ping,
        ping_restart,
        next_tick: Instant::now() + TICK,
        added_address,
        added_address6,
        added_routes,
        refused: 0,
        tasks,
    };
    let task = tokio::spawn(async move { ctl.run(rx, ended_rx, cmd_rx).await });
    Ok(TunnelHandle {
        name: name.to_string(),
        shared: tunnel,
        commands,
        task,
    })
}

fn first_host(pool: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pool.network()) + 1)
}

fn first_host6(pool: &Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(pool.network()) + 1)
}

/// The IPv6 address of the client that holds `vaddr` (OpenVPN's numbering:
/// the IPv6 pool starts at network + 0x1000 and follows the IPv4 one).
fn client_addr6(pool: &Ipv4Net, pool6: &Ipv6Net, vaddr: Ipv4Addr) -> Option<Ipv6Addr> {
    let n = u32::from(vaddr).checked_sub(u32::from(pool.network()) + 2)?;
    let a = Ipv6Addr::from(u128::from(pool6.network()) + 0x1000 + u128::from(n));
    pool6.contains(&a).then_some(a)
}

/// The networks behind `p` (`iroutes` for its certificate's common name).
fn iroutes<'a>(srv: &'a ServerSettings, p: &Peer) -> &'a [IpNet] {
    p.common_name
        .as_ref()
        .and_then(|cn| srv.iroutes.get(cn))
        .map_or(&[], Vec::as_slice)
}

/// One client.
struct Peer {
    peer_id: u32,
    /// UDP: where it sends from now; TCP: the connection's peer.
    addr: SocketAddr,
    conn: Option<u64>,
    session: Session,
    shared: Arc<Shared>,
    vaddr: Ipv4Addr,
    /// With `server-ipv6`.
    vaddr6: Option<Ipv6Addr>,
    /// From its certificate, once TLS is up; keys its iroutes.
    common_name: Option<String>,
    connected_since: Option<SystemTime>,
    tls_version: Option<String>,
    /// Framing refusals counted at the last warning about them.
    framing_warned: u64,
}

struct Conn {
    link: Arc<Link>,
    /// Where it is polled (deregistered, and so closed, when dropped).
    registration: (Arc<datapath::Poller>, std::os::fd::RawFd),
    since: Instant,
    peer: Option<u32>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.registration.0.deregister(self.registration.1);
    }
}

/// What the compression framings a server may use with its clients need
/// around a packet: its own `comp-lzo`/`compress`, one it pushes to all or
/// to some (`client_push`), and with `compress migrate` comp-lzo's byte in
/// front (stub-v2 needs none).
fn framing_room(s: &OpenVpn) -> Room {
    let srv = s.server.as_deref();
    room_of(s.framing, s.compress_migrate, srv)
}

fn room_of(own: Framing, migrate: bool, srv: Option<&ServerSettings>) -> Room {
    let pushed = srv
        .into_iter()
        .flat_map(|srv| srv.push.iter().chain(srv.client_push.values().flatten()))
        .filter_map(|o| {
            let mut w = o.split_ascii_whitespace();
            Framing::from_option(w.next()?, w.next()).ok()
        });
    let migrate = migrate.then_some(Framing::LzoStub);
    std::iter::once(own)
        .chain(pushed)
        .chain(migrate)
        .fold(Room::default(), |r, f| r.union(f.room()))
}

struct Server {
    name: String,
    settings: OpenVpn,
    srv: ServerSettings,
    tls: Arc<rustls::ServerConfig>,
    tun: Arc<Tun>,
    /// Tunnel-level drop counters (packets of no client).
    tunnel: Arc<Shared>,
    tables: ServerTables,
    routes: Routes,
    /// The data-path threads' poll set for sockets (the UDP socket, TCP
    /// connections).
    poller: Arc<datapath::Poller>,
    /// What the data path reports through (for connections registered here).
    tx: crate::notes::Sender<Msg>,
    /// Where its connections' receivers report their end.
    ended: Ended,
    /// The threads that read the TUN device and the UDP socket (taken and
    /// joined when the server stops, so a reload can bind the port again).
    data_path: Option<datapath::DataPath>,
    udp_link: Option<Arc<Link>>,
    unused: crate::notes::Sender<ToControl>,
    /// Checks a first packet without keeping any state.
    check: ControlWrap,
    peers: BTreeMap<u32, Peer>,
    by_addr: HashMap<SocketAddr, u32>,
    conns: HashMap<u64, Conn>,
    /// Pushed `ping` / `ping-restart`; the server waits twice as long.
    ping: u32,
    ping_restart: u32,
    next_tick: Instant,
    added_address: bool,
    /// The server's IPv6 address (`server-ipv6`) was added by us.
    added_address6: bool,
    /// The TUN routes of `srv.routes` that we added.
    added_routes: Vec<IpNet>,
    /// Unauthenticated or refused first packets (for rate-limited logs).
    refused: u64,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Server {
    async fn run(
        &mut self,
        mut from_data: crate::notes::Receiver<Msg>,
        mut ended: mpsc::UnboundedReceiver<(u64, String)>,
        mut commands: mpsc::Receiver<TunnelCommand>,
    ) {
        tracing::info!(
            "tunnel {}: OpenVPN server on {} {} ({}), pool {}{}, up to {} clients",
            self.name,
            self.settings.transport.name(),
            self.settings.remote,
            self.settings.key_mode.name(),
            self.srv.pool,
            self.srv
                .pool6
                .map(|p| format!(" and {p}"))
                .unwrap_or_default(),
            self.srv.max_clients
        );
        loop {
            let deadline = self
                .peers
                .values()
                .filter_map(|p| p.session.poll_timeout())
                .chain([self.next_tick])
                .min();
            let sleep = crate::datapath::sleep_until(deadline);
            tokio::select! {
                msg = from_data.recv() => {
                    let Some(msg) = msg else { break };
                    self.on_msg(msg);
                    while let Some(msg) = from_data.try_recv() {
                        self.on_msg(msg);
                    }
                }
                Some((conn, why)) = ended.recv() => {
                    // What the connection carried before it ended goes
                    // first, as on one shared queue.
                    while let Some(msg) = from_data.try_recv() {
                        self.on_msg(msg);
                    }
                    self.link_down(conn, why);
                }
                cmd = commands.recv() => match cmd {
                    None | Some(TunnelCommand::Shutdown) => break,
                    Some(TunnelCommand::Show(tx)) => { let _ = tx.send(self.show()); }
                    Some(TunnelCommand::Rekey(tx)) => { let _ = tx.send(self.rekey()); }
                    Some(TunnelCommand::ExportKey { label, context, len, reply }) => {
                        let _ = reply.send(self.export_key(&label, &context, len));
                    }
                },
                _ = sleep => self.on_timer(),
            }
        }
        self.shutdown();
    }

    fn on_msg(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Control { from, conn, packet } => self.on_control(now, from, conn, &packet),
            Msg::Exit(pid) => {
                self.remove(pid, "the client sent explicit-exit-notify");
            }
            Msg::Float(pid, to) => self.floated(pid, to),
            Msg::Accepted { conn, addr, tcp } => {
                if self.conns.len() >= self.srv.max_clients + SPARE_CONNECTIONS {
                    self.refuse(format!(
                        "TCP connection from {addr} closed: too many connections"
                    ));
                    return; // dropping `tcp` closes it
                }
                let link = Arc::new(Link::Tcp(tcp.clone()));
                let fd = tcp.fd();
                // Polled only from here: a HARD_RESET read before the
                // control task knew the connection would find no link to
                // answer on (the client's retransmission then opened a
                // second session).
                let receiver = Arc::new(ServerTcp {
                    tunnel: self.tunnel.clone(),
                    tables: self.tables.clone(),
                    tx: self.tx.clone(),
                    ended: self.ended.clone(),
                    tcp,
                    link: link.clone(),
                    conn,
                    addr,
                });
                if let Err(e) = self.poller.register(fd, receiver) {
                    tracing::warn!("tunnel {}: TCP connection from {addr}: {e}", self.name);
                    return;
                }
                tracing::debug!("tunnel {}: TCP connection {conn} from {addr}", self.name);
                let c = Conn {
                    link,
                    registration: (self.poller.clone(), fd),
                    since: now,
                    peer: None,
                };
                self.conns.insert(conn, c);
            }
        }
    }

    fn link_down(&mut self, conn: u64, why: String) {
        if let Some(c) = self.conns.remove(&conn) {
            match c.peer {
                Some(pid) => self.remove(pid, &why),
                None => tracing::debug!("tunnel {}: TCP connection {conn}: {why}", self.name),
            }
        }
    }

    /// Logs refused or unauthenticated first packets at powers of two.
    fn refuse(&mut self, why: String) {
        self.refused += 1;
        if self.refused.is_power_of_two() {
            tracing::warn!("tunnel {}: {why} ({} so far)", self.name, self.refused);
        }
    }

    fn on_control(&mut self, now: Instant, from: SocketAddr, conn: Option<u64>, packet: &[u8]) {
        let tunnel = self.tunnel.clone();
        let drops = &tunnel.drops;
        let Some(Ok((op, _))) = packet.first().map(|b| split_op_byte(*b)) else {
            DropCounters::bump(&drops.malformed);
            return;
        };
        let Some(sid) = packet.get(1..1 + SESSION_ID_LEN) else {
            DropCounters::bump(&drops.malformed);
            return;
        };
        let sid = SessionId(sid.try_into().expect("8 bytes"));
        let known = match conn {
            Some(c) => self.conns.get(&c).and_then(|c| c.peer),
            None => self.by_addr.get(&from).copied(),
        };
        if let Some(pid) = known {
            let restarted = op == Opcode::HardResetClientV2
                && self.peers[&pid]
                    .session
                    .remote_session_id()
                    .is_some_and(|r| r != sid);
            if !restarted {
                self.feed(pid, now, packet);
                return;
            }
            // The client started over: the new session replaces the old
            // one, but only once its first packet authenticates.
            if let Err(e) = self.check.unwrap_stateless(packet) {
                DropCounters::bump(&drops.bad_mac);
                self.refuse(format!("new session from {from} refused: {e}"));
                return;
            }
            self.remove(pid, "the client started a new session");
        } else if conn.is_none() {
            // A client's session from a new address: it floats once the
            // packet authenticates in its session.
            let owner = self
                .peers
                .values()
                .find(|p| p.conn.is_none() && p.session.remote_session_id() == Some(sid))
                .map(|p| p.peer_id);
            if let Some(pid) = owner {
                if self.feed(pid, now, packet) {
                    if let Some(p) = self.peers.get(&pid) {
                        p.shared.set_remote(from);
                    }
                    self.floated(pid, from);
                }
                return;
            }
        }
        if op != Opcode::HardResetClientV2 {
            DropCounters::bump(&drops.no_session);
            tracing::debug!(
                "tunnel {}: {} from {from} without a session dropped",
                self.name,
                op.name()
            );
            return;
        }
        if conn.is_some_and(|c| !self.conns.contains_key(&c)) {
            // The connection is already gone (closed or refused).
            DropCounters::bump(&drops.no_session);
            return;
        }
        if let Err(e) = self.check.unwrap_stateless(packet) {
            DropCounters::bump(&drops.bad_mac);
            self.refuse(format!(
                "control packet from {from} failed {} authentication: {e}",
                self.settings.key_mode.name()
            ));
            return;
        }
        self.new_peer(now, from, conn, packet);
    }

    fn new_peer(&mut self, now: Instant, from: SocketAddr, conn: Option<u64>, packet: &[u8]) {
        if self.peers.len() >= self.srv.max_clients {
            DropCounters::bump(&self.tunnel.drops.rate_limited);
            self.refuse(format!(
                "client {from} refused: max_clients ({}) reached",
                self.srv.max_clients
            ));
            return;
        }
        let Some(vaddr) = self.free_address() else {
            DropCounters::bump(&self.tunnel.drops.rate_limited);
            self.refuse(format!(
                "client {from} refused: address pool {} exhausted",
                self.srv.pool
            ));
            return;
        };
        let peer_id = (0..).find(|i| !self.peers.contains_key(i)).expect("ids");
        let link = match conn {
            None => self.udp_link.clone(),
            Some(c) => self.conns.get(&c).map(|c| c.link.clone()),
        };
        let shared = Arc::new(Shared::new(
            format!("{}[{peer_id}]", self.name),
            from,
            self.unused.clone(),
        ));
        shared.set_link(link);
        let vaddr6 = self
            .srv
            .pool6
            .and_then(|p6| client_addr6(&self.srv.pool, &p6, vaddr));
        {
            // what the client may send from (the inbound turn checks it)
            let mut t = shared.tables_mut();
            t.routes.insert(IpNet::from(IpAddr::V4(vaddr)), ());
            if let Some(a) = vaddr6 {
                t.routes.insert(IpNet::from(IpAddr::V6(a)), ());
            }
        }
        let cfg = SessionConfig {
            role: Role::Server {
                config: self.tls.clone(),
                push: self.push_for(vaddr, vaddr6),
                peer_id,
            },
            wrap: control_wrap(&self.settings, true),
            ciphers: self.settings.data_ciphers.clone(),
            udp: self.settings.transport == Transport::Udp,
            control_mtu: DEFAULT_CONTROL_MTU,
            reliable: ReliableConfig::default(),
            data_limits: Limits::default(),
            credentials: None,
            framing: self.settings.framing,
            compress_migrate: self.settings.compress_migrate,
            decompress: self.settings.decompress,
            auth_token: None,
        };
        let mut session = Session::new(cfg, now, SystemTime::now(), rand_core::OsRng);
        session.set_hand_window(now, self.settings.hand_window);
        // reneg-sec / reneg-bytes / reneg-pkts / tran-window per client
        // (crates/openvpn/src/rekey.rs; a server jitters reneg-sec as OpenVPN does)
        session.set_rekey(now, self.settings.rekey.clone());
        tracing::info!(
            "tunnel {}: new session from {from}: peer-id {peer_id}, address {vaddr}{}",
            self.name,
            vaddr6.map(|a| format!(", IPv6 {a}")).unwrap_or_default()
        );
        self.peers.insert(
            peer_id,
            Peer {
                peer_id,
                addr: from,
                conn,
                session,
                shared,
                vaddr,
                vaddr6,
                common_name: None,
                connected_since: None,
                framing_warned: 0,
                tls_version: None,
            },
        );
        match conn {
            None => {
                self.by_addr.insert(from, peer_id);
            }
            Some(c) => {
                if let Some(c) = self.conns.get_mut(&c) {
                    c.peer = Some(peer_id);
                }
            }
        }
        self.publish();
        if !self.feed(peer_id, now, packet) {
            self.remove(peer_id, "its first packet was refused");
        }
    }

    /// The lowest pool address no client holds (the first is the server's).
    fn free_address(&self) -> Option<Ipv4Addr> {
        let net = u32::from(self.srv.pool.network());
        let last = u32::from(self.srv.pool.broadcast());
        (net + 2..last)
            .map(Ipv4Addr::from)
            .find(|a| !self.peers.values().any(|p| p.vaddr == *a))
    }

    /// What this client is told: OpenVPN's order, configured options first.
    fn push_for(&self, vaddr: Ipv4Addr, vaddr6: Option<Ipv6Addr>) -> Vec<String> {
        let mut v = self.srv.push.clone();
        if let (Some(a), Some(p6)) = (vaddr6, self.srv.pool6) {
            v.push(format!(
                "ifconfig-ipv6 {a}/{} {}",
                p6.prefix_len(),
                first_host6(&p6)
            ));
        }
        v.push(format!("route-gateway {}", first_host(&self.srv.pool)));
        v.push("topology subnet".into());
        v.push(format!("ping {}", self.ping));
        v.push(format!("ping-restart {}", self.ping_restart));
        v.push(format!("ifconfig {vaddr} {}", self.srv.pool.netmask()));
        v
    }

    /// One control packet into a client's session; false if refused.
    fn feed(&mut self, pid: u32, now: Instant, packet: &[u8]) -> bool {
        let Some(p) = self.peers.get_mut(&pid) else {
            return false;
        };
        let ok = match p.session.handle_packet(now, packet) {
            Ok(()) => true,
            Err(SessionError::Wrap(e)) => {
                DropCounters::bump(&p.shared.drops.bad_mac);
                tracing::debug!(
                    "tunnel {}: control packet from {} dropped: {e}",
                    self.name,
                    p.addr
                );
                false
            }
            Err(e) => {
                DropCounters::bump(&p.shared.drops.other);
                tracing::debug!(
                    "tunnel {}: control packet from {} dropped: {e}",
                    self.name,
                    p.addr
                );
                false
            }
        };
        self.process(pid);
        ok
    }

    fn process(&mut self, pid: u32) {
        let Some(p) = self.peers.get_mut(&pid) else {
            return;
        };
        let mut events = Vec::new();
        let mut republish = false;
        while let Some(o) = p.session.poll_output() {
            match o {
                Output::Transmit(b) => {
                    datapath::send_now(&p.shared, &b);
                }
                Output::InstallKey(k) => p.shared.tables_mut().install(k),
                Output::SendKey(id) => p.shared.tables_mut().send_with(id),
                Output::RetireKey(id) => p.shared.tables_mut().retire(id),
                Output::Event(e) => events.push(e),
            }
        }
        for e in events {
            match e {
                Event::TlsEstablished {
                    version,
                    common_name,
                } => {
                    tracing::debug!("tunnel {}: TLS with {} ({version})", self.name, p.addr);
                    p.tls_version = Some(version);
                    // Its networks (iroutes) are known by name, once the
                    // certificate has been checked.
                    p.common_name = common_name;
                    let more = p
                        .common_name
                        .as_ref()
                        .and_then(|cn| self.srv.client_push.get(cn));
                    if let Some(more) = more {
                        if p.session.push_more(more) {
                            tracing::info!(
                                "tunnel {}: client {} ({}): pushing also {}",
                                self.name,
                                p.addr,
                                p.common_name.as_deref().unwrap_or_default(),
                                more.join(", ")
                            );
                        }
                    }
                    let nets = iroutes(&self.srv, p);
                    if !nets.is_empty() {
                        let mut t = p.shared.tables_mut();
                        for n in nets {
                            t.routes.insert(*n, ());
                        }
                        drop(t);
                        tracing::info!(
                            "tunnel {}: client {} ({}) routes {}",
                            self.name,
                            p.addr,
                            p.common_name.as_deref().unwrap_or_default(),
                            nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                        );
                        republish = true;
                    }
                }
                Event::Connected { push } => {
                    let now = Instant::now();
                    p.shared.mark_rx(now);
                    p.shared.mark_tx(now);
                    p.connected_since = Some(SystemTime::now());
                    tracing::info!(
                        "tunnel {}: client {} connected: peer-id {}, address {}, cipher {}",
                        self.name,
                        p.addr,
                        p.peer_id,
                        p.vaddr,
                        push.cipher.map_or("?", |c| c.name())
                    );
                }
                Event::Renegotiating { key_id, reason } => tracing::info!(
                    "tunnel {}: client {}: renegotiating the data channel keys: key-id {key_id} ({reason})",
                    self.name,
                    p.addr
                ),
                Event::Rekeyed { key_id } => tracing::info!(
                    "tunnel {}: client {}: sending with key-id {key_id} (renegotiated)",
                    self.name,
                    p.addr
                ),
                Event::Failed(why) => {
                    let why = format!("handshake failed: {why}");
                    self.remove(pid, &why);
                    return;
                }
            }
        }
        if republish {
            self.publish();
        }
    }

    /// `polytun rekey`: every connected client renegotiates (soft reset).
    fn rekey(&mut self) -> Result<usize, String> {
        let now = Instant::now();
        let ids: Vec<u32> = self
            .peers
            .values()
            .filter(|p| p.connected_since.is_some())
            .map(|p| p.peer_id)
            .collect();
        let mut n = 0;
        for pid in ids {
            let Some(p) = self.peers.get_mut(&pid) else {
                continue;
            };
            match p.session.renegotiate(now) {
                Ok(k) => {
                    tracing::info!(
                        "tunnel {}: client {}: renegotiating on request (key-id {k})",
                        self.name,
                        p.addr
                    );
                    n += 1;
                }
                Err(e) => tracing::info!("tunnel {}: client {}: {e}", self.name, p.addr),
            }
            self.process(pid);
        }
        if n == 0 {
            return Err(format!(
                "tunnel {}: no connected client to renegotiate",
                self.name
            ));
        }
        Ok(n)
    }

    /// SSKE on a server: from the one connected client's session (with
    /// several, which one would be ambiguous).
    fn export_key(&self, label: &[u8], context: &[u8], len: usize) -> Result<Vec<u8>, String> {
        let mut connected = self.peers.values().filter(|p| p.connected_since.is_some());
        match (connected.next(), connected.next()) {
            (Some(p), None) => {
                super::tunnel::export_key(&self.name, Some(&p.session), label, context, len)
            }
            (None, _) => Err(format!("tunnel {}: no connected client", self.name)),
            (Some(_), Some(_)) => Err(format!(
                "tunnel {}: several clients are connected; key export needs exactly one",
                self.name
            )),
        }
    }

    fn floated(&mut self, pid: u32, to: SocketAddr) {
        let Some(p) = self.peers.get_mut(&pid) else {
            return;
        };
        if p.conn.is_some() || p.addr == to {
            return;
        }
        let from = std::mem::replace(&mut p.addr, to);
        if self.by_addr.get(&from) == Some(&pid) {
            self.by_addr.remove(&from);
        }
        self.by_addr.insert(to, pid);
        tracing::info!(
            "tunnel {}: client peer-id {pid} ({}) floated from {from} to {to}",
            self.name,
            p.vaddr
        );
    }

    fn remove(&mut self, pid: u32, why: &str) {
        let Some(p) = self.peers.remove(&pid) else {
            return;
        };
        if self.by_addr.get(&p.addr) == Some(&pid) {
            self.by_addr.remove(&p.addr);
        }
        if let Some(c) = p.conn {
            self.conns.remove(&c); // closes the connection
        }
        {
            let mut t = p.shared.tables_mut();
            t.current = None;
            t.keys = Default::default();
        }
        p.shared.set_link(None);
        self.publish();
        tracing::info!(
            "tunnel {}: client {} (peer-id {pid}, {}) removed: {why}",
            self.name,
            p.addr,
            p.vaddr
        );
    }

    /// Makes the current clients visible to the data path.
    fn publish(&self) {
        let mut by_dst = PrefixTable::new();
        let mut sessions = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.values().enumerate() {
            by_dst.insert(IpNet::from(IpAddr::V4(p.vaddr)), i);
            if let Some(a) = p.vaddr6 {
                by_dst.insert(IpNet::from(IpAddr::V6(a)), i);
            }
            for n in iroutes(&self.srv, p) {
                by_dst.insert(*n, i);
            }
            sessions.push(p.shared.clone());
        }
        let t = Tables {
            by_peer_id: self
                .peers
                .iter()
                .map(|(id, p)| (*id, p.shared.clone()))
                .collect(),
        };
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = t;
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Routing {
            sessions,
            by_dst: Some(by_dst),
            room: Some(framing_room(&self.settings)),
        });
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .peers
            .values()
            .filter(|p| p.session.poll_timeout().is_some_and(|d| d <= now))
            .map(|p| p.peer_id)
            .collect();
        for pid in due {
            if let Some(p) = self.peers.get_mut(&pid) {
                p.session.handle_timeout(now);
            }
            self.process(pid);
        }
        if now >= self.next_tick {
            // a fixed schedule: packets waking the loop do not postpone it
            self.next_tick = now + TICK;
            self.keepalive(now);
        }
    }

    /// `ping` to every connected client that heard nothing from us for that
    /// long; `ping-restart` (twice the pushed value, as OpenVPN's server
    /// does) removes clients that went silent; TCP connections that never
    /// started a session are closed after hand-window.
    fn keepalive(&mut self, now: Instant) {
        let ping = Duration::from_secs(self.ping.into());
        let restart = Duration::from_secs(u64::from(self.ping_restart) * 2);
        let mut dead = Vec::new();
        for p in self.peers.values_mut() {
            if p.connected_since.is_none() {
                continue;
            }
            if let Some(w) =
                super::tunnel::framing_warning(&p.shared, &mut p.framing_warned, "client")
            {
                tracing::warn!("{}: {w}", p.shared.name);
            }
            if self.ping > 0 && now.saturating_duration_since(p.shared.last_tx()) >= ping {
                datapath::send_ping(&p.shared, now);
            }
            if self.ping_restart > 0 && now.saturating_duration_since(p.shared.last_rx()) > restart
            {
                dead.push(p.peer_id);
            }
        }
        for pid in dead {
            let why = format!(
                "no packet for {} s (ping-restart)",
                u64::from(self.ping_restart) * 2
            );
            self.remove(pid, &why);
        }
        let hand = self.settings.hand_window;
        self.conns
            .retain(|_, c| c.peer.is_some() || now.saturating_duration_since(c.since) < hand);
    }

    /// `polytun down`: UDP clients are told (explicit-exit-notify), TCP
    /// connections are closed.
    fn shutdown(&mut self) {
        let now = Instant::now();
        let mut told = 0;
        if self.settings.transport == Transport::Udp {
            for p in self.peers.values().filter(|p| p.connected_since.is_some()) {
                let sent = (0..2)
                    .filter(|_| datapath::send_exit_notify(&p.shared, now))
                    .count();
                told += usize::from(sent > 0);
            }
        }
        tracing::info!(
            "tunnel {}: stopping, {} client(s){}",
            self.name,
            self.peers.len(),
            if told > 0 {
                format!(", explicit-exit-notify sent to {told}")
            } else {
                String::new()
            }
        );
        self.peers.clear();
        self.conns.clear();
        self.publish();
        // Joins the threads; the socket closes with its registration.
        self.data_path = None;
        self.udp_link = None;
        if self.added_address {
            let gw = first_host(&self.srv.pool);
            let _ = self
                .tun
                .remove_address(gw.into(), self.srv.pool.prefix_len());
        }
        for n in self.added_routes.drain(..) {
            let _ = self
                .tun
                .remove_route(n.addr(), n.prefix_len(), &RouteOptions::default());
        }
        if let (true, Some(p6)) = (self.added_address6, self.srv.pool6) {
            let _ = self
                .tun
                .remove_address(first_host6(&p6).into(), p6.prefix_len());
        }
    }

    fn show(&self) -> TunnelShow {
        let transport = self.settings.transport.name().to_string();
        let wrap = self.settings.key_mode.name().to_string();
        let since = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        let now = Instant::now();
        let mut drops = self.tunnel.drops.snapshot();
        let clients = self
            .peers
            .values()
            .map(|p| {
                add_drops(&mut drops, &p.shared.drops.snapshot());
                let key = p.shared.tables().current.clone();
                let keys = p.session.key_info(now);
                OpenVpnShow {
                    role: "client".into(),
                    remote: p.addr.to_string(),
                    transport: transport.clone(),
                    control_wrap: wrap.clone(),
                    state: if p.connected_since.is_some() {
                        "connected"
                    } else {
                        "connecting"
                    }
                    .into(),
                    tls_version: p.tls_version.clone(),
                    peer_id: Some(p.peer_id),
                    virtual_address: Some(format!("{}/{}", p.vaddr, self.srv.pool.prefix_len())),
                    virtual_address_ipv6: p
                        .vaddr6
                        .zip(self.srv.pool6)
                        .map(|(a, p6)| format!("{a}/{}", p6.prefix_len())),
                    common_name: p.common_name.clone(),
                    routes: iroutes(&self.srv, p)
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    cipher: key.as_ref().map(|k| k.cipher.name().to_string()),
                    compression: key
                        .as_ref()
                        .and_then(|k| super::tunnel::framing_name(k.framing)),
                    key_id: key.as_ref().map(|k| k.key_id),
                    lame_duck_key_id: keys.lame_duck_key_id,
                    next_renegotiation_secs: keys.next_renegotiation.map(|d| d.as_secs()),
                    renegotiations: keys.renegotiations,
                    rx_bytes: p.shared.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.shared.tx_bytes.load(Ordering::Relaxed),
                    pings_received: p.shared.pings_rx.load(Ordering::Relaxed),
                    connected_since_unix: since(p.connected_since),
                    ..Default::default()
                }
            })
            .collect::<Vec<_>>();
        let ovpn = OpenVpnShow {
            role: "server".into(),
            remote: self.settings.remote.to_string(),
            transport,
            control_wrap: wrap,
            state: format!("listening, {} client(s)", clients.len()),
            virtual_address: Some(format!(
                "{}/{}",
                first_host(&self.srv.pool),
                self.srv.pool.prefix_len()
            )),
            virtual_address_ipv6: self
                .srv
                .pool6
                .map(|p6| format!("{}/{}", first_host6(&p6), p6.prefix_len())),
            routes: std::iter::once(self.srv.pool.to_string())
                .chain(self.srv.pool6.map(|p6| p6.to_string()))
                .chain(self.srv.routes.iter().map(ToString::to_string))
                .collect(),
            clients,
            ..Default::default()
        };
        TunnelShow {
            name: self.name.clone(),
            protocol: "openvpn".into(),
            listen_port: Some(self.settings.remote.port()),
            drops,
            openvpn: Some(ovpn),
            ..Default::default()
        }
    }
}

fn add_drops(a: &mut Drops, b: &Drops) {
    a.malformed += b.malformed;
    a.bad_mac += b.bad_mac;
    a.replayed += b.replayed;
    a.no_session += b.no_session;
    a.bad_source += b.bad_source;
    a.expired_key += b.expired_key;
    a.rate_limited += b.rate_limited;
    a.other += b.other;
}

/// Where a packet came from: a UDP address, or TCP connection `.0` (whose
/// client may only use its own link).
type Origin<'a> = (SocketAddr, Option<(u64, &'a Arc<Link>)>);

/// What the previous data packet of a turn led to: a batch is mostly one
/// client's, so most packets skip the peer-id lookup, the client's table
/// lock, the origin check and the source lookup. Valid for one turn, under
/// one read of the server's [`Tables`].
struct Last<'t> {
    pid: u32,
    client: &'t Arc<Shared>,
    tables: std::sync::RwLockReadGuard<'t, super::state::Tables>,
    /// The origin an authenticated packet of this client came from (UDP:
    /// its remote is that; TCP: the connection is its link).
    origin: Option<SocketAddr>,
    /// The inner source the previous packet had, one of the client's own.
    source: Option<IpAddr>,
}

/// One packet from a client: data is opened with the key of the peer-id it
/// names (after which the inner source must be that client's address),
/// control packets go to the control task. `last` carries what the turn's
/// previous data packet looked up.
#[allow(clippy::too_many_arguments)]
fn handle<'t>(
    w: &mut TunWriter,
    tunnel: &Shared,
    t: &'t Tables,
    last: &mut Option<Last<'t>>,
    tx: &crate::notes::Sender<Msg>,
    d: &mut Dg<'_>,
    (from, conn): Origin<'_>,
    now: Instant,
) {
    let drops = &tunnel.drops;
    let Some(Ok((op, key_id))) = d.bytes().first().map(|b| split_op_byte(*b)) else {
        DropCounters::bump(&drops.malformed);
        return;
    };
    match op {
        Opcode::DataV2 => {
            let Some(id) = d.bytes().get(1..4) else {
                DropCounters::bump(&drops.malformed);
                return;
            };
            let pid = u32::from_be_bytes([0, id[0], id[1], id[2]]);
            let l = match last {
                Some(l) if l.pid == pid => l,
                _ => {
                    let Some(client) = t.by_peer_id.get(&pid) else {
                        DropCounters::bump(&drops.no_session);
                        return;
                    };
                    last.insert(Last {
                        pid,
                        client,
                        tables: client.tables(),
                        origin: None,
                        source: None,
                    })
                }
            };
            let client = l.client;
            if let Some((_, link)) = conn {
                if l.origin != Some(from) {
                    if !client.link().is_some_and(|l| Arc::ptr_eq(&l, link)) {
                        DropCounters::bump(&client.drops.bad_source);
                        return;
                    }
                    l.origin = Some(from);
                }
            }
            let r = w.open(client, &l.tables, key_id, d, now);
            if r == Rx::Queued {
                let own = match w.last(d).and_then(crate::datapath::src_ip) {
                    Some(s) if l.source == Some(s) => true,
                    Some(s) if l.tables.routes.lookup(s).is_some() => {
                        l.source = Some(s);
                        true
                    }
                    _ => false,
                };
                if !own {
                    // not its own address: no client speaks for another
                    w.unqueue();
                    DropCounters::bump(&client.drops.bad_source);
                    return;
                }
            }
            if r == Rx::Dropped {
                return;
            }
            if conn.is_none() && l.origin != Some(from) {
                if client.remote() != from {
                    client.set_remote(from);
                    let _ = tx.try_send(Msg::Float(pid, from));
                }
                l.origin = Some(from);
            }
            if r == Rx::Exit {
                let _ = tx.try_send(Msg::Exit(pid));
            }
        }
        Opcode::DataV1 => DropCounters::bump(&drops.other),
        _ => {
            let msg = Msg::Control {
                from,
                conn: conn.map(|c| c.0),
                packet: d.bytes().to_vec(),
            };
            if tx.try_send(msg).is_err() {
                DropCounters::bump(&drops.rate_limited);
            }
        }
    }
}

/// The server's UDP socket as the data-path threads know it.
struct ServerSocket {
    tunnel: Arc<Shared>,
    tables: ServerTables,
    socket: Arc<UdpSocket>,
    tx: crate::notes::Sender<Msg>,
}

impl datapath::Receive for ServerSocket {
    fn receive(&self, inbound: &mut datapath::Inbound, tun: &Tun) {
        inbound.udp(tun, &self.socket, &self.tunnel, |w, bufs, metas, now| {
            let t = read(&self.tables);
            let mut last = None;
            datapath::each_datagram(bufs, metas, |d, src| {
                handle(
                    w,
                    &self.tunnel,
                    &t,
                    &mut last,
                    &self.tx,
                    d,
                    (src, None),
                    now,
                )
            });
        });
    }
}

/// Accepts TCP connections forever; each goes to the control task, which
/// registers it with the data-path threads (`poller`) if it keeps it.
async fn tcp_accept(
    listener: tokio::net::TcpListener,
    tunnel: Arc<Shared>,
    poller: Arc<datapath::Poller>,
    tx: crate::notes::Sender<Msg>,
) {
    let mut conn = 0u64;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("{}: TCP accept: {e}", tunnel.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        conn += 1;
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let tcp = match stream.into_std().and_then(|s| TcpLink::new(s, &poller)) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::debug!("{}: TCP connection from {addr}: {e}", tunnel.name);
                continue;
            }
        };
        if tx.send(Msg::Accepted { conn, addr, tcp }).await.is_err() {
            return;
        }
    }
}

/// One client's TCP connection as the data-path threads know it.
struct ServerTcp {
    tunnel: Arc<Shared>,
    tables: ServerTables,
    tx: crate::notes::Sender<Msg>,
    ended: Ended,
    tcp: Arc<TcpLink>,
    /// The same connection as the clients' sessions hold it.
    link: Arc<Link>,
    conn: u64,
    addr: SocketAddr,
}

impl datapath::Receive for ServerTcp {
    fn receive(&self, inbound: &mut datapath::Inbound, tun: &Tun) {
        let t = read(&self.tables);
        let mut last = None;
        let origin = (self.addr, Some((self.conn, &self.link)));
        let r = inbound.tcp(tun, &self.tcp, &self.tunnel, "the client", |w, d, now| {
            handle(w, &self.tunnel, &t, &mut last, &self.tx, d, origin, now)
        });
        if let Err(why) = r {
            let _ = self.ended.send((self.conn, why));
        }
    }

    fn writable(&self) {
        self.tcp.writable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::test_ipv4;
    use polytun_core::PacketBuf;
    use polytun_openvpn::data::{Cipher, DataChannelKey, DataKeys, OVERHEAD};
    use polytun_openvpn::packet::DATA_TAG_LEN;

    /// The outbound arena leaves room for every framing the server may
    /// use: its own, pushed to all, pushed to one client, migrate's.
    #[test]
    fn framing_room_covers_every_pushed_framing() {
        let srv = |push: &[&str], client: &[&str]| ServerSettings {
            pool: "198.51.100.0/24".parse().unwrap(),
            pool6: None,
            iroutes: Default::default(),
            routes: vec![],
            push: push.iter().map(|p| p.to_string()).collect(),
            client_push: [(
                "branch1".to_string(),
                client.iter().map(|p| p.to_string()).collect(),
            )]
            .into(),
            max_clients: 10,
        };
        let room = |front, back| Room { front, back };
        let none = srv(&["route 203.0.113.0 255.255.255.0"], &[]);
        assert_eq!(room_of(Framing::None, false, Some(&none)), room(0, 0));
        assert_eq!(room_of(Framing::Lzo, false, Some(&none)), room(1, 0));
        assert_eq!(room_of(Framing::None, true, Some(&none)), room(1, 0));
        let pushed = srv(&["compress lz4"], &[]);
        assert_eq!(room_of(Framing::None, false, Some(&pushed)), room(0, 1));
        let per_client = srv(&[], &["comp-lzo no"]);
        assert_eq!(room_of(Framing::Stub, false, Some(&per_client)), room(1, 1));
        let v2 = srv(&["compress stub-v2"], &[]);
        assert_eq!(room_of(Framing::None, false, Some(&v2)), room(0, 0));
    }

    /// OpenVPN's numbering (`server-ipv6`): the server ::1, the client
    /// holding the IPv4 pool's first client address ::1000, and so on; none
    /// past the IPv6 network's end.
    #[test]
    fn ipv6_addresses_follow_the_ipv4_pool() {
        let pool: Ipv4Net = "198.51.100.0/24".parse().unwrap();
        let p64: Ipv6Net = "2001:db8:5::/64".parse().unwrap();
        assert_eq!(
            first_host6(&p64),
            "2001:db8:5::1".parse::<Ipv6Addr>().unwrap()
        );
        let a = |v: &str, p6: &Ipv6Net| client_addr6(&pool, p6, v.parse().unwrap());
        assert_eq!(
            a("198.51.100.2", &p64),
            Some("2001:db8:5::1000".parse().unwrap())
        );
        assert_eq!(
            a("198.51.100.254", &p64),
            Some("2001:db8:5::10fc".parse().unwrap())
        );
        assert_eq!(a("198.51.100.1", &p64), None, "the server's own");
        let wide: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let p112: Ipv6Net = "2001:db8:5::/112".parse().unwrap();
        let b = |v: &str| client_addr6(&wide, &p112, v.parse().unwrap());
        assert_eq!(b("10.0.240.1"), Some("2001:db8:5::ffff".parse().unwrap()));
        assert_eq!(b("10.0.240.2"), None, "past the /112");
    }

    /// Client `n`'s peer-id, address and the server's session for it (key
    /// installed, its virtual address 198.51.100.`n` as its route), with
    /// the client's own key to seal with.
    fn client(n: u8, now: Instant) -> (u32, SocketAddr, Arc<Shared>, DataChannelKey) {
        let pid = u32::from(n) * 7;
        let addr: SocketAddr = format!("192.0.2.{n}:1194").parse().unwrap();
        let mut ekm = [n; polytun_openvpn::tls::EKM_LEN];
        ekm[0] ^= 0x55;
        let key = |server| {
            let keys = DataKeys::from_ekm(&ekm, server);
            DataChannelKey::new(&keys, Cipher::Aes256Gcm, 0, pid, Default::default(), now)
        };
        let (to_control, _) = crate::notes::channel(8);
        let shared = Arc::new(Shared::new(format!("c{n}"), addr, to_control));
        let mut t = shared.tables_mut();
        t.install(Arc::new(key(true)));
        t.routes
            .insert(format!("198.51.100.{n}/32").parse().unwrap(), ());
        drop(t);
        (pid, addr, shared, key(false))
    }

    /// A P_DATA_V2 datagram sealed with `key`, inner source 198.51.100.`src`.
    fn sealed(key: &DataChannelKey, src: u8, now: Instant) -> Vec<u8> {
        let ip = test_ipv4(src, 9);
        let mut buf = vec![0u8; OVERHEAD + ip.len() + DATA_TAG_LEN];
        buf[OVERHEAD..OVERHEAD + ip.len()].copy_from_slice(&ip);
        let mut p = PacketBuf::new(&mut buf, OVERHEAD, OVERHEAD + ip.len());
        key.seal(now, &mut p).unwrap();
        p.as_slice().to_vec()
    }

    /// The per-turn memo of the last peer-id must never open one client's
    /// packet as another's, nor let a client speak for another's address
    /// right after a genuine packet, nor skip the floating of a client that
    /// moved: two clients' datagrams interleaved in one turn.
    #[test]
    fn interleaved_clients_are_each_checked_as_themselves() {
        let now = Instant::now();
        let (p1, a1, c1, k1) = client(1, now);
        let (p2, a2, c2, k2) = client(2, now);
        let tables = Tables {
            by_peer_id: HashMap::from([(p1, c1.clone()), (p2, c2.clone())]),
        };
        let moved: SocketAddr = "192.0.2.77:40000".parse().unwrap();
        let mut forged = sealed(&k2, 2, now);
        forged[1..4].copy_from_slice(&p1.to_be_bytes()[1..]);
        let mut corrupt = sealed(&k1, 1, now);
        *corrupt.last_mut().unwrap() ^= 1;
        let mut unknown = sealed(&k1, 1, now);
        unknown[1..4].copy_from_slice(&[0, 0, 99]);
        // (datagram, where it came from, whether it reaches the TUN)
        let turn = [
            (sealed(&k1, 1, now), a1, true),
            (sealed(&k2, 2, now), a2, true),
            (sealed(&k2, 1, now), a2, false), // client 2 as client 1's address
            (sealed(&k1, 1, now), a1, true),
            (sealed(&k1, 2, now), a1, false), // client 1 as client 2's address
            (forged, a2, false),              // client 2's packet under client 1's peer-id
            (corrupt, a1, false),
            (unknown, a1, false),
            (sealed(&k2, 2, now), a2, true),
            (sealed(&k1, 1, now), a1, true),
            (sealed(&k1, 1, now), moved, true), // client 1 floats
            (sealed(&k1, 1, now), moved, true),
        ];
        let tunnel = Shared::new("server".into(), a1, crate::notes::channel(8).0);
        let (tx, mut rx) = crate::notes::channel(16);
        let mut w = TunWriter::with_capacity(16);
        let mut last = None;
        for (i, (dg, from, reaches)) in turn.into_iter().enumerate() {
            let mut buf = dg;
            let mut d = Dg::new(&mut buf, 0, i);
            handle(
                &mut w,
                &tunnel,
                &tables,
                &mut last,
                &tx,
                &mut d,
                (from, None),
                now,
            );
            assert_eq!(w.last(&d).is_some(), reaches, "datagram {i}");
        }
        drop(last);
        let bad = |c: &Shared| c.drops.bad_source.load(Ordering::Relaxed);
        assert_eq!((bad(&c1), bad(&c2)), (1, 1));
        // the forged packet and the corrupted one
        assert_eq!(c1.drops.bad_mac.load(Ordering::Relaxed), 2);
        assert_eq!(tunnel.drops.no_session.load(Ordering::Relaxed), 1);
        assert_eq!(c1.remote(), moved);
        assert_eq!(c2.remote(), a2);
        let floats: Vec<_> = std::iter::from_fn(|| rx.try_recv())
            .filter_map(|m| match m {
                Msg::Float(pid, a) => Some((pid, a)),
                _ => None,
            })
            .collect();
        assert_eq!(floats, [(p1, moved)]);
    }

    /// Over TCP a client's packets must come over its own connection: the
    /// memo checks the link once per run of one client's packets, never
    /// once for all, and never before a failed check.
    #[test]
    fn a_client_speaks_only_over_its_own_connection() {
        let now = Instant::now();
        let (p1, a1, c1, k1) = client(1, now);
        let (p2, _, c2, k2) = client(2, now);
        let tables = Tables {
            by_peer_id: HashMap::from([(p1, c1.clone()), (p2, c2.clone())]),
        };
        let poller = Arc::new(datapath::Poller::new().unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut links = Vec::new();
        let mut ends = Vec::new();
        for c in [&c1, &c2] {
            let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            ends.push(listener.accept().unwrap().0);
            let link = Arc::new(Link::Tcp(Arc::new(TcpLink::new(stream, &poller).unwrap())));
            c.set_link(Some(link.clone()));
            links.push(link);
        }
        // all over client 1's connection: (sealed by, reaches the TUN)
        let turn = [
            (&k1, true),
            (&k2, false),
            (&k2, false),
            (&k1, true),
            (&k2, false),
        ];
        let tunnel = Shared::new("server".into(), a1, crate::notes::channel(8).0);
        let (tx, _rx) = crate::notes::channel(16);
        let mut w = TunWriter::with_capacity(16);
        let mut last = None;
        let origin = (a1, Some((1, &links[0])));
        for (i, (key, reaches)) in turn.into_iter().enumerate() {
            let src = if std::ptr::eq(key, &k1) { 1 } else { 2 };
            let mut buf = sealed(key, src, now);
            let mut d = Dg::new(&mut buf, 0, i);
            handle(
                &mut w, &tunnel, &tables, &mut last, &tx, &mut d, origin, now,
            );
            assert_eq!(w.last(&d).is_some(), reaches, "packet {i}");
        }
        drop(last);
        let bad = |c: &Shared| c.drops.bad_source.load(Ordering::Relaxed);
        assert_eq!((bad(&c1), bad(&c2)), (0, 3));
    }
}
