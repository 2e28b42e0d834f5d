//! One OpenVPN client tunnel's control task: it owns the protocol
//! [`Session`], its timers, the link (UDP socket or TCP connection), the
//! reconnect back-off and the pushed settings applied to the TUN; it is the
//! only writer of the tables the data path reads.

use super::datapath;
use super::settings::{parse_certs, KeyMode, OpenVpn, Transport};
use super::state::{Link, Shared, ToControl};
use super::tcp::{Ended, TcpLink};
use crate::control::{OpenVpnShow, TunnelShow};
use ipnet::IpNet;
use polytun_core::Limits;
use polytun_io::{RouteOptions, Tun, UdpSocket};
use polytun_openvpn::compress::{Framing, FramingError};
use polytun_openvpn::push::PushReply;
use polytun_openvpn::reliable::ReliableConfig;
use polytun_openvpn::session::{
    Event, Output, Role, Session, SessionConfig, SessionError, DEFAULT_CONTROL_MTU,
};
use polytun_openvpn::static_key::{KeyDirection, StaticKey};
use polytun_openvpn::tls::{self, PeerVerification, TlsIdentity};
use polytun_openvpn::wrap::ControlWrap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const CONTROL_QUEUE: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_secs(1);

pub enum TunnelCommand {
    Show(oneshot::Sender<TunnelShow>),
    /// Renegotiates the data channel keys (soft reset) when connected,
    /// else starts a new session at once.
    Rekey(oneshot::Sender<Result<usize, String>>),
    /// SSKE: keying material from the TLS exporter of the newest key
    /// (OpenVPN's `keying-material-exporter`).
    ExportKey {
        label: Vec<u8>,
        context: Vec<u8>,
        len: usize,
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
    Shutdown,
}

pub struct TunnelHandle {
    pub name: String,
    pub shared: Arc<Shared>,
    pub commands: mpsc::Sender<TunnelCommand>,
    pub task: JoinHandle<()>,
}

/// The client's UDP socket, for the data-path threads.
fn bind_udp() -> std::io::Result<UdpSocket> {
    UdpSocket::bind_for_thread(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0))
        .or_else(|_| UdpSocket::bind_for_thread(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)))
}

/// Our certificate and key (if any) and how the peer is checked, from
/// the settings (client and server alike).
pub(super) fn tls_identity(s: &OpenVpn) -> anyhow::Result<TlsIdentity> {
    let verify = match &s.ca {
        Some(ca) => PeerVerification::Ca(parse_certs(ca)),
        None => PeerVerification::Fingerprints(s.peer_fingerprints.clone()),
    };
    let id = TlsIdentity {
        cert_chain: s.cert.as_deref().map(parse_certs).unwrap_or_default(),
        key: s
            .key
            .as_ref()
            .map(|k| PrivateKeyDer::from_pem_slice(k.as_bytes()))
            .transpose()?,
        verify,
        allow_tls12: true,
    };
    Ok(id)
}

/// The rustls client configuration of these settings.
fn tls_config(s: &OpenVpn) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(tls::client_config_with_policy(
        &tls_identity(s)?,
        &s.policy,
    )?)
}

pub(super) fn control_wrap(s: &OpenVpn, is_server: bool) -> ControlWrap {
    // Validated when the config was loaded.
    match &s.key_mode {
        KeyMode::None => ControlWrap::none(),
        KeyMode::TlsCrypt(k) => ControlWrap::tls_crypt(
            &StaticKey::parse(k).expect("validated static key"),
            is_server,
        ),
        KeyMode::TlsAuth {
            key,
            direction,
            digest,
        } => ControlWrap::tls_auth(
            &StaticKey::parse(key).expect("validated static key"),
            KeyDirection::from_config(*direction).expect("validated direction"),
            *digest,
        ),
    }
}

/// Starts a client tunnel: its control task, and over UDP its socket,
/// registered with the interface's data-path threads (`poller`).
pub fn spawn(
    name: &str,
    settings: OpenVpn,
    tun: Arc<Tun>,
    poller: Arc<datapath::Poller>,
) -> anyhow::Result<TunnelHandle> {
    let tls = tls_config(&settings)
        .map_err(|e| anyhow::anyhow!("tunnel {name}: certificate or key unusable: {e}"))?;
    let (to_control, from_data) = crate::notes::channel(CONTROL_QUEUE);
    let shared = Arc::new(Shared::new(name.to_string(), settings.remote, to_control));
    let mut registered = None;
    if settings.transport == Transport::Udp {
        let sock =
            Arc::new(bind_udp().map_err(|e| anyhow::anyhow!("tunnel {name}: UDP socket: {e}"))?);
        shared.set_link(Some(Arc::new(Link::Udp(sock.clone()))));
        let fd = sock.raw_fd();
        let receiver = Arc::new(datapath::ClientSocket {
            shared: shared.clone(),
            socket: sock,
        });
        poller
            .register(fd, receiver)
            .map_err(|e| anyhow::anyhow!("tunnel {name}: UDP socket: {e}"))?;
        registered = Some(fd);
    }
    let (commands, cmd_rx) = mpsc::channel(16);
    let (ended, ended_rx) = mpsc::unbounded_channel();
    let mut ctl = Control {
        name: name.to_string(),
        settings,
        tls,
        tun,
        shared: shared.clone(),
        session: None,
        state: State::Idle,
        backoff: BACKOFF_MIN,
        reconnect_at: Some(Instant::now()),
        attempts: 0,
        next_tick: Instant::now(),
        answered: false,
        wrap_errors: 0,
        push: None,
        applied_addrs: Vec::new(),
        applied_routes: Vec::new(),
        tls_version: None,
        connected_since: None,
        last_error: None,
        framing_warned: 0,
        auth_token: None,
        token_sent: false,
        poller,
        registered,
        tcp_registered: None,
        ended,
    };
    let task = tokio::spawn(async move { ctl.run(from_data, ended_rx, cmd_rx).await });
    Ok(TunnelHandle {
        name: name.to_string(),
        shared,
        commands,
        task,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    Connected,
}

struct Control {
    name: String,
    settings: OpenVpn,
    tls: Arc<rustls::ClientConfig>,
    tun: Arc<Tun>,
    shared: Arc<Shared>,
    session: Option<Session>,
    state: State,
    backoff: Duration,
    reconnect_at: Option<Instant>,
    attempts: u64,
    /// When `ping` / `ping-restart` are checked next.
    next_tick: Instant,
    /// Did the server send anything we could authenticate this attempt?
    answered: bool,
    wrap_errors: u64,
    push: Option<PushReply>,
    applied_addrs: Vec<(IpAddr, u8)>,
    applied_routes: Vec<(IpAddr, u8)>,
    tls_version: Option<String>,
    connected_since: Option<SystemTime>,
    last_error: Option<String>,
    /// Framing refusals counted at the last warning about them.
    framing_warned: u64,
    /// The server's last auth-token, kept across sessions (never logged).
    auth_token: Option<polytun_openvpn::push::AuthToken>,
    /// Did this session's first key send the token for the password?
    token_sent: bool,
    poller: Arc<datapath::Poller>,
    /// The UDP socket registered with the data-path threads.
    registered: Option<std::os::fd::RawFd>,
    /// The TCP connection registered with them.
    tcp_registered: Option<std::os::fd::RawFd>,
    /// Where its receiver reports the connection's end.
    ended: Ended,
}

impl Drop for Control {
    fn drop(&mut self) {
        for fd in [self.registered.take(), self.tcp_registered.take()]
            .into_iter()
            .flatten()
        {
            self.poller.deregister(fd);
        }
    }
}

fn mask_prefix(m: Ipv4Addr) -> u8 {
    u32::from(m).leading_ones() as u8
}

impl Control {
    async fn run(
        &mut self,
        mut from_data: crate::notes::Receiver<ToControl>,
        mut ended: mpsc::UnboundedReceiver<(u64, String)>,
        mut commands: mpsc::Receiver<TunnelCommand>,
    ) {
        loop {
            let deadline = [
                self.session.as_ref().and_then(Session::poll_timeout),
                self.reconnect_at,
                (self.state == State::Connected).then_some(self.next_tick),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = crate::datapath::sleep_until(deadline);
            tokio::select! {
                msg = from_data.recv() => {
                    let Some(msg) = msg else { break };
                    self.on_data(msg);
                    while let Some(msg) = from_data.try_recv() {
                        self.on_data(msg);
                        self.process_outputs();
                    }
                }
                Some((conn, why)) = ended.recv() => {
                    // What the connection carried before it ended goes
                    // first (a TLS alert, say), as on one shared queue.
                    while let Some(msg) = from_data.try_recv() {
                        self.on_data(msg);
                        self.process_outputs();
                    }
                    self.link_down(conn, why);
                }
                cmd = commands.recv() => match cmd {
                    None | Some(TunnelCommand::Shutdown) => break,
                    Some(TunnelCommand::Show(tx)) => { let _ = tx.send(self.show()); }
                    Some(TunnelCommand::Rekey(tx)) => { let _ = tx.send(self.rekey()); }
                    Some(TunnelCommand::ExportKey { label, context, len, reply }) => {
                        let r = export_key(&self.name, self.session.as_ref(), &label, &context, len);
                        let _ = reply.send(r);
                    }
                },
                _ = sleep => self.on_timer().await,
            }
            self.process_outputs();
        }
        if self.state == State::Connected && self.settings.transport == Transport::Udp {
            // explicit-exit-notify: the server drops this client at once
            // instead of waiting for its ping-restart.
            let now = Instant::now();
            let sent = (0..2)
                .filter(|_| datapath::send_exit_notify(&self.shared, now))
                .count();
            tracing::info!("tunnel {}: sent explicit-exit-notify ({sent}x)", self.name);
        }
        self.teardown();
        if let Some(fd) = self.registered.take() {
            self.poller.deregister(fd);
        }
        tracing::info!("tunnel {}: stopped", self.name);
    }

    /// `polytun rekey`: a soft reset on a connected session (KU).
    fn rekey(&mut self) -> Result<usize, String> {
        let now = Instant::now();
        match self.session.as_mut() {
            Some(s) if self.state == State::Connected => match s.renegotiate(now) {
                Ok(k) => {
                    tracing::info!(
                        "tunnel {}: renegotiating the data channel keys on request (key-id {k})",
                        self.name
                    );
                    Ok(1)
                }
                Err(e) => Err(format!("tunnel {}: {e}", self.name)),
            },
            _ => {
                tracing::info!("tunnel {}: new session on request (hard reset)", self.name);
                self.restart("restarted on request".into(), Duration::ZERO);
                Ok(1)
            }
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.reconnect_at.is_some_and(|t| now >= t) {
            self.reconnect_at = None;
            self.connect(now).await;
            return;
        }
        if let Some(s) = self.session.as_mut() {
            s.handle_timeout(now);
        }
        if self.state == State::Connected && now >= self.next_tick {
            // A fixed schedule: commands and packets waking the loop must
            // not push the keepalive check away.
            self.next_tick = now + TICK;
            self.keepalive(now);
        }
    }

    /// `ping`: send a keepalive when nothing went out for that long;
    /// `ping-restart`: reconnect when nothing came in for that long.
    fn keepalive(&mut self, now: Instant) {
        let push = self.push.as_ref();
        let ping = push.and_then(|p| p.ping).or(self.settings.ping);
        let restart = push
            .and_then(|p| p.ping_restart)
            .or(self.settings.ping_restart);
        if let Some(p) = ping.filter(|p| *p > 0) {
            if now.saturating_duration_since(self.shared.last_tx()) >= Duration::from_secs(p.into())
            {
                datapath::send_ping(&self.shared, now);
            }
        }
        if let Some(w) = framing_warning(&self.shared, &mut self.framing_warned, "server") {
            tracing::warn!("tunnel {}: {w}", self.name);
        }
        tracing::trace!(
            "tunnel {}: keepalive: last rx {:?} ago, last tx {:?} ago",
            self.name,
            now.saturating_duration_since(self.shared.last_rx()),
            now.saturating_duration_since(self.shared.last_tx())
        );
        if let Some(r) = restart.filter(|r| *r > 0) {
            if now.saturating_duration_since(self.shared.last_rx()) > Duration::from_secs(r.into())
            {
                self.restart(
                    format!("no packet from the server for {r} s (ping-restart)"),
                    BACKOFF_MIN,
                );
            }
        }
    }

    async fn connect(&mut self, now: Instant) {
        self.attempts += 1;
        self.answered = false;
        self.wrap_errors = 0;
        if self.settings.transport == Transport::Tcp {
            let remote = self.settings.remote;
            match tokio::time::timeout(TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(remote))
                .await
            {
                Ok(Ok(stream)) => {
                    // The connection is the data-path threads' from here on.
                    let link = match stream
                        .into_std()
                        .and_then(|s| TcpLink::new(s, &self.poller))
                    {
                        Ok(l) => Arc::new(l),
                        Err(e) => return self.failed(format!("TCP connection to {remote}: {e}")),
                    };
                    let fd = link.fd();
                    self.shared
                        .set_link(Some(Arc::new(Link::Tcp(link.clone()))));
                    let receiver = Arc::new(datapath::ClientTcp {
                        shared: self.shared.clone(),
                        link,
                        conn: self.attempts,
                        ended: self.ended.clone(),
                    });
                    if let Err(e) = self.poller.register(fd, receiver) {
                        self.shared.set_link(None);
                        return self.failed(format!("TCP connection to {remote}: {e}"));
                    }
                    self.tcp_registered = Some(fd);
                }
                Ok(Err(e)) => return self.failed(format!("TCP connect to {remote}: {e}")),
                Err(_) => return self.failed(format!("TCP connect to {remote}: timed out")),
            }
        }
        tracing::info!(
            "tunnel {}: connecting to {} over {} ({}, attempt {})",
            self.name,
            self.settings.remote,
            self.settings.transport.name(),
            self.settings.key_mode.name(),
            self.attempts
        );
        // A token from the last session stands for the password (the
        // server may have taken a one-time one); without credentials the
        // server asked for none.
        let token = self
            .auth_token
            .clone()
            .filter(|_| self.settings.credentials.is_some());
        self.token_sent = token.is_some();
        let cfg = SessionConfig {
            role: Role::Client(self.tls.clone()),
            wrap: control_wrap(&self.settings, false),
            ciphers: self.settings.data_ciphers.clone(),
            udp: self.settings.transport == Transport::Udp,
            control_mtu: DEFAULT_CONTROL_MTU,
            reliable: ReliableConfig::default(),
            data_limits: Limits::default(),
            credentials: self.settings.credentials.clone(),
            framing: self.settings.framing,
            compress_migrate: false,
            decompress: self.settings.decompress,
            auth_token: token,
        };
        let mut s = Session::new(cfg, now, SystemTime::now(), rand_core::OsRng);
        s.set_hand_window(now, self.settings.hand_window);
        s.set_rekey(now, self.settings.rekey.clone());
        self.session = Some(s);
        self.state = State::Connecting;
    }

    fn on_data(&mut self, msg: ToControl) {
        match msg {
            ToControl::Control(p) => {
                let now = Instant::now();
                let Some(s) = self.session.as_mut() else {
                    return;
                };
                match s.handle_packet(now, &p) {
                    Ok(()) => self.answered = true,
                    Err(SessionError::Wrap(e)) => {
                        crate::datapath::DropCounters::bump(&self.shared.drops.bad_mac);
                        self.wrap_errors += 1;
                        if self.wrap_errors == 1 {
                            tracing::warn!(
                                "tunnel {}: control packet from {} failed {} authentication: {e} \
                                 (wrong key or key direction?)",
                                self.name,
                                self.settings.remote,
                                self.settings.key_mode.name()
                            );
                        }
                    }
                    Err(e) => {
                        crate::datapath::DropCounters::bump(&self.shared.drops.other);
                        tracing::debug!("tunnel {}: control packet dropped: {e}", self.name);
                    }
                }
            }
            ToControl::ServerExit => {
                if self.state == State::Connected {
                    self.restart(
                        "the server announced its exit (explicit-exit-notify)".into(),
                        BACKOFF_MIN,
                    );
                }
            }
            ToControl::KeyExpiring(key_id) => {
                if let Some(s) = self.session.as_mut() {
                    s.key_expiring(Instant::now(), key_id);
                }
            }
        }
    }

    /// TCP connection number `conn` closed or failed.
    fn link_down(&mut self, conn: u64, why: String) {
        // (a late report from an earlier connection is stale)
        if conn == self.attempts && self.state != State::Idle {
            self.restart(why, BACKOFF_MIN);
        }
    }

    fn process_outputs(&mut self) {
        let mut events = Vec::new();
        if let Some(s) = self.session.as_mut() {
            while let Some(o) = s.poll_output() {
                match o {
                    Output::Transmit(b) => {
                        datapath::send_now(&self.shared, &b);
                    }
                    // Receive keys by key-id (the lame duck and the new key
                    // side by side during a renegotiation); one send key.
                    Output::InstallKey(k) => self.shared.tables_mut().install(k),
                    Output::SendKey(id) => self.shared.tables_mut().send_with(id),
                    Output::RetireKey(id) => {
                        self.shared.tables_mut().retire(id);
                        tracing::debug!("tunnel {}: key-id {id} retired", self.name);
                    }
                    Output::Event(e) => events.push(e),
                }
            }
        }
        for e in events {
            match e {
                Event::TlsEstablished { version, .. } => {
                    tracing::info!(
                        "tunnel {}: TLS established with {} ({version})",
                        self.name,
                        self.settings.remote
                    );
                    self.tls_version = Some(version);
                }
                Event::Connected { push } => self.connected(*push),
                Event::Renegotiating { key_id, reason } => tracing::info!(
                    "tunnel {}: renegotiating the data channel keys: key-id {key_id} ({reason})",
                    self.name
                ),
                Event::Rekeyed { key_id } => tracing::info!(
                    "tunnel {}: sending with key-id {key_id} (renegotiated)",
                    self.name
                ),
                Event::Failed(why) if why.contains("AUTH_FAILED") && self.token_sent => {
                    // Expired or from a restarted server: OpenVPN then
                    // forgets the token and asks with the password again.
                    tracing::warn!(
                        "tunnel {}: the server refused the auth-token from the last session \
                         ({why}); retrying at once with the username and password",
                        self.name
                    );
                    self.teardown();
                    self.auth_token = None;
                    self.token_sent = false;
                    self.reconnect_at = Some(Instant::now());
                }
                Event::Failed(why) => {
                    let why = if why.contains("AUTH_FAILED") {
                        let hint = if self.settings.credentials.is_some() {
                            "check the username and password in auth_user_pass"
                        } else {
                            "if it wants a username and password, give them with auth_user_pass"
                        };
                        format!("the server refused the authentication: {why} ({hint})")
                    } else if !self.answered {
                        format!(
                            "{why} (no valid answer from the server: check remote, proto and the \
                             {} key)",
                            self.settings.key_mode.name()
                        )
                    } else {
                        why
                    };
                    self.failed(format!("OpenVPN handshake failed: {why}"));
                }
            }
        }
    }

    fn connected(&mut self, push: PushReply) {
        let now = Instant::now();
        self.state = State::Connected;
        self.backoff = BACKOFF_MIN;
        self.connected_since = Some(SystemTime::now());
        self.last_error = None;
        self.shared.mark_rx(now);
        self.shared.mark_tx(now);
        self.apply(&push);
        let cipher = push.cipher.map_or("?", |c| c.name());
        tracing::info!(
            "tunnel {}: connected to {}: address {}{}, cipher {cipher}, peer-id {}, {} route(s), DNS [{}]",
            self.name,
            self.settings.remote,
            self.virtual_address(&push).unwrap_or_else(|| "none".into()),
            Self::virtual_address_ipv6(&push)
                .map(|a| format!(", IPv6 {a}"))
                .unwrap_or_default(),
            push.peer_id.map_or("none".to_string(), |p| p.to_string()),
            push.routes.len() + push.routes_ipv6.len(),
            push.dns()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !push.unknown.is_empty() {
            tracing::warn!(
                "tunnel {}: pushed options not applied by polytun: {}",
                self.name,
                push.unknown.join(", ")
            );
        }
        self.push = Some(push);
    }

    fn virtual_address(&self, push: &PushReply) -> Option<String> {
        let (local, b) = push.ifconfig?;
        Some(if Self::is_subnet(push) {
            format!("{local}/{}", mask_prefix(b))
        } else {
            format!("{local} peer {b}")
        })
    }

    fn virtual_address_ipv6(push: &PushReply) -> Option<String> {
        let v6 = push.ifconfig_ipv6?;
        Some(format!("{}/{}", v6.local, v6.prefix))
    }

    fn is_subnet(push: &PushReply) -> bool {
        match push.topology.as_deref() {
            Some("subnet") => true,
            Some(_) => false,
            None => push.ifconfig.is_some_and(|(_, b)| b.octets()[0] == 255),
        }
    }

    /// ifconfig (topology subnet: address/mask; net30/p2p: address + a
    /// route to the remote end) and routes, into the TUN.
    fn apply(&mut self, push: &PushReply) {
        let mut routes: Vec<(IpAddr, u8)> = Vec::new();
        if let Some((local, b)) = push.ifconfig {
            let (addr, prefix) = if Self::is_subnet(push) {
                (local, mask_prefix(b))
            } else {
                routes.push((b.into(), 32));
                (local, 32)
            };
            match self.tun.add_address(addr.into(), prefix) {
                Ok(()) => self.applied_addrs.push((addr.into(), prefix)),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => tracing::warn!("tunnel {}: address {addr}/{prefix}: {e}", self.name),
            }
            if let Ok(n) = IpNet::new(addr.into(), prefix) {
                self.shared.tables_mut().routes.insert(n.trunc(), ());
            }
        }
        // ifconfig-ipv6: the address and its network on the TUN, whatever
        // the IPv4 topology (OpenVPN's client does `ip -6 addr add` too).
        if let Some(v6) = push.ifconfig_ipv6 {
            let (addr, prefix) = (IpAddr::V6(v6.local), v6.prefix);
            match self.tun.add_address(addr, prefix) {
                Ok(()) => self.applied_addrs.push((addr, prefix)),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => tracing::warn!("tunnel {}: address {addr}/{prefix}: {e}", self.name),
            }
            if let Ok(n) = IpNet::new(addr, prefix) {
                self.shared.tables_mut().routes.insert(n.trunc(), ());
            }
        }
        for r in &push.routes {
            routes.push((r.network.into(), mask_prefix(r.netmask)));
        }
        // A route-ipv6 gateway names the next hop inside the server's
        // network; on a TUN (no link layer) the device is the next hop.
        for r in &push.routes_ipv6 {
            routes.push((r.network.into(), r.prefix));
        }
        for (dst, prefix) in routes {
            let opts = RouteOptions {
                replace: true,
                ..RouteOptions::default()
            };
            match self.tun.add_route(dst, prefix, &opts) {
                Ok(()) => self.applied_routes.push((dst, prefix)),
                Err(e) => tracing::warn!("tunnel {}: route {dst}/{prefix}: {e}", self.name),
            }
            if let Ok(n) = IpNet::new(dst, prefix) {
                self.shared.tables_mut().routes.insert(n.trunc(), ());
            }
        }
    }

    fn unapply(&mut self) {
        let opts = RouteOptions::default();
        for (dst, prefix) in self.applied_routes.drain(..) {
            let _ = self.tun.remove_route(dst, prefix, &opts);
        }
        for (a, prefix) in self.applied_addrs.drain(..) {
            let _ = self.tun.remove_address(a, prefix);
        }
        let mut t = self.shared.tables_mut();
        t.current = None;
        t.keys = Default::default();
        t.routes = Default::default();
    }

    /// Ends the current session and link; the tables are emptied.
    fn teardown(&mut self) {
        if let Some(t) = self.session.as_ref().and_then(|s| s.auth_token()) {
            self.auth_token = Some(t.clone());
        }
        self.session = None;
        self.push = None;
        self.connected_since = None;
        self.state = State::Idle;
        self.unapply();
        if self.settings.transport == Transport::Tcp {
            self.shared.set_link(None);
            // (closes the connection: the registration holds its last reference)
            if let Some(fd) = self.tcp_registered.take() {
                self.poller.deregister(fd);
            }
        }
    }

    fn failed(&mut self, why: String) {
        let wait = self.backoff;
        tracing::error!(
            "tunnel {}: {why}; retrying in {} s",
            self.name,
            wait.as_secs()
        );
        self.last_error = Some(why);
        self.teardown();
        self.reconnect_at = Some(Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn restart(&mut self, why: String, wait: Duration) {
        tracing::warn!("tunnel {}: {why}: reconnecting", self.name);
        self.last_error = Some(why);
        self.teardown();
        self.reconnect_at = Some(Instant::now() + wait);
    }

    fn show(&self) -> TunnelShow {
        let push = self.push.as_ref();
        let key = self.shared.tables().current.clone();
        let keys = self.session.as_ref().map(|s| s.key_info(Instant::now()));
        let state = match self.state {
            State::Idle => "waiting to reconnect",
            State::Connecting => "connecting",
            State::Connected => "connected",
        };
        let ovpn = OpenVpnShow {
            role: "client".into(),
            remote: self.settings.remote.to_string(),
            transport: self.settings.transport.name().into(),
            control_wrap: self.settings.key_mode.name().into(),
            state: state.into(),
            tls_version: self.tls_version.clone(),
            peer_id: push.and_then(|p| p.peer_id),
            virtual_address: push.and_then(|p| self.virtual_address(p)),
            virtual_address_ipv6: push.and_then(Self::virtual_address_ipv6),
            cipher: key.as_ref().map(|k| k.cipher.name().to_string()),
            compression: key.as_ref().and_then(|k| framing_name(k.framing)),
            key_id: key.as_ref().map(|k| k.key_id),
            lame_duck_key_id: keys.as_ref().and_then(|k| k.lame_duck_key_id),
            next_renegotiation_secs: keys
                .as_ref()
                .and_then(|k| k.next_renegotiation)
                .map(|d| d.as_secs()),
            renegotiations: keys.as_ref().map_or(0, |k| k.renegotiations),
            routes: self
                .shared
                .route_list()
                .iter()
                .map(ToString::to_string)
                .collect(),
            dns: push
                .map(|p| p.dns().iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            rx_bytes: self
                .shared
                .rx_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            tx_bytes: self
                .shared
                .tx_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            pings_received: self
                .shared
                .pings_rx
                .load(std::sync::atomic::Ordering::Relaxed),
            connected_since_unix: self
                .connected_since
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            last_error: self.last_error.clone(),
            ..Default::default()
        };
        TunnelShow {
            name: self.name.clone(),
            protocol: "openvpn".into(),
            listen_port: None,
            public_key: None,
            drops: self.shared.drops.snapshot(),
            peers: Vec::new(),
            openvpn: Some(ovpn),
            ..Default::default()
        }
    }
}

/// SSKE for an OpenVPN session: RFC 5705 keying material from the TLS
/// exporter of its newest key, `len` bytes for `label` (OpenVPN requires
/// labels starting with "EXPORTER"; a label of the data channel's own,
/// EXPORTER-OpenVPN-datakeys, is refused so its keys cannot leak).
pub(crate) fn export_key(
    name: &str,
    session: Option<&Session>,
    label: &[u8],
    context: &[u8],
    len: usize,
) -> Result<Vec<u8>, String> {
    if label == polytun_openvpn::tls::EKM_LABEL {
        return Err("that label derives the data channel keys: choose another".into());
    }
    if !(1..=1024).contains(&len) {
        return Err(format!("length {len}: 1..1024 bytes"));
    }
    let tls = session
        .and_then(|s| s.tls())
        .ok_or_else(|| format!("tunnel {name}: no established TLS session to export from"))?;
    let ctx = (!context.is_empty()).then_some(context);
    tls.export_with_context(label, ctx, len)
        .map(|k| k.to_vec())
        .map_err(|e| format!("tunnel {name}: key export: {e}"))
}

/// `show`'s name of a framing (None: no framing).
pub(super) fn framing_name(f: Framing) -> Option<String> {
    (f != Framing::None).then(|| f.option().to_string())
}

/// A warning when more packets from `peer` were refused for their
/// compression framing since the last one (then at each doubling, so a
/// steady stream of them does not flood the log).
pub(super) fn framing_warning(shared: &Shared, warned: &mut u64, peer: &str) -> Option<String> {
    let (n, last) = shared.framing_refusals();
    let e = last?;
    if n <= *warned || (*warned > 0 && n < 2 * *warned) {
        return None;
    }
    *warned = n;
    let ours = shared
        .tables()
        .current
        .as_ref()
        .map_or(Framing::None, |k| k.framing);
    Some(match e {
        FramingError::Compressed(b) => format!(
            "{n} packets from the {peer} were compressed (header byte {b:#04x}), which this \
             tunnel's `{}` does not take: the {peer} should not compress (`allow-compression \
             no` there), or name the algorithm here (`comp-lzo`, `compress lz4`, `compress \
             lz4-v2`, without `allow-compression no`)",
            ours.option()
        ),
        FramingError::Decompress(a) => {
            format!("{n} packets from the {peer} were {a:?} data that did not decompress")
        }
        FramingError::BadHeader(b) => match Framing::guess(b) {
            Some(f) if ours == Framing::None => format!(
                "{n} packets from the {peer} carried compression framing (first byte {b:#04x}) \
                 that this tunnel was not configured for: the {peer} has comp-lzo or compress; \
                 add `{}` to the .ovpn or .conf (in TOML: compress = \"{}\")",
                f.option(),
                f.toml()
            ),
            _ => format!(
                "{n} packets from the {peer} lacked this tunnel's `{}` framing (first byte \
                 {b:#04x}): the two sides' comp-lzo/compress options differ",
                ours.option()
            ),
        },
        FramingError::NoRoom => format!("{n} packets had no room for the compression framing"),
    })
}
