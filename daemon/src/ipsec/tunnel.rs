//! One IPsec tunnel's control task: it owns the IKE [`Endpoint`], its
//! timers, the UDP 500/4500 sockets' receivers and the kernel routes, and it
//! is the only writer of the tables the ESP data path reads.
//!
//! An initiating tunnel connects at start and again after a failure or a
//! peer's DELETE, with back-off (1 s doubling to 30 s); after a DPD timeout
//! it follows `dpd_action` (`restart`: at once, `clear`: not at all).
//! Once the IKE SA is up, the `[[tunnel.child]]` CHILD SAs are created with
//! CREATE_CHILD_SA. Rekeys (CREATE_CHILD_SA, both roles, on time, on the
//! record engine's soft limits and on `polytun rekey`) and
//! reauthentication follow the policy in [`super::rekey`].

use super::config::Ipsec;
use super::datapath::{self, Poller};
use super::rekey::{self, Reauth, RekeyWhat};
use super::state::{ChildStats, Inbound, Outbound, Shared, Tables, ToControl};
use super::{esp_keymat, esp_transform, ike_algs_name, nets_of, ts_of};
use crate::control::{ChildSaShow, IkeSaShow, IkeShow, TunnelShow};
use crate::datapath::DropCounters;
use ipnet::IpNet;
use polytun_esp::{Direction, EspSa, SaParams, Transform};
use polytun_ike::{
    ChildSaParams, DpdAction, Endpoint, Event, FailReason, Identity, IkeAlgs, Output, SaId,
};
use polytun_io::{RouteOptions, Tun, UdpSocket};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const CONTROL_QUEUE: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// NAT keepalives on 4500 (RFC 3948 §4), strongSwan's default interval.
const KEEPALIVE: Duration = Duration::from_secs(20);

pub enum IpsecCommand {
    Show(oneshot::Sender<TunnelShow>),
    /// Key update on demand (KU): rekey the CHILD SAs, the IKE SAs, or
    /// reauthenticate; replies how many were started.
    Rekey(RekeyWhat, oneshot::Sender<Result<usize, String>>),
    /// SSKE: a key exported from the (newest) IKE SA's SK_d.
    ExportKey {
        label: Vec<u8>,
        context: Vec<u8>,
        len: usize,
        reply: oneshot::Sender<Result<ExportedKey, String>>,
    },
    /// Delete every IKE SA (INFORMATIONAL Delete), then stop.
    Shutdown,
}

pub struct IpsecHandle {
    pub name: String,
    pub shared: Arc<Shared>,
    pub commands: mpsc::Sender<IpsecCommand>,
    pub task: JoinHandle<()>,
}

/// An exported key and the IKE SA it comes from.
pub struct ExportedKey {
    pub key: zeroize::Zeroizing<Vec<u8>>,
    /// The IKE SA's SPIs, hex (initiator's, responder's).
    pub spi_i: String,
    pub spi_r: String,
}

struct IkeInfo {
    initiator: bool,
    peer: Option<Identity>,
    algs: Option<IkeAlgs>,
    remote: SocketAddr,
}

struct ChildInfo {
    ike_sa: SaId,
    spi_out: u32,
    transform: Transform,
    esn: bool,
    encap: bool,
    ts_local: Vec<IpNet>,
    ts_remote: Vec<IpNet>,
    stats: Arc<ChildStats>,
    installed: Instant,
    /// Carries outbound traffic: a new CHILD SA at once, a rekey's new SA
    /// only from its switch (until then the peer may not have its key).
    outbound: bool,
}

struct Control {
    name: String,
    cfg: Ipsec,
    ep: Endpoint,
    local_ip: IpAddr,
    shared: Arc<Shared>,
    tun: Arc<Tun>,
    sas: HashMap<SaId, IkeInfo>,
    /// By inbound SPI.
    children: HashMap<u32, ChildInfo>,
    /// The IKE SA this tunnel keeps up (initiating, or restarting after DPD).
    current: Option<SaId>,
    /// Reauthentication: its clock and which new IKE SA replaces which.
    reauth: Reauth,
    /// Where the peer was last seen (a responder restarts to it after DPD).
    last_remote: Option<SocketAddr>,
    rng: rand_core::OsRng,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    next_keepalive: Instant,
    kernel_routes: Vec<IpNet>,
    tasks: Vec<JoinHandle<()>>,
    /// The data-path thread receiving on UDP 4500.
    poller: Arc<Poller>,
    stopping: bool,
}

impl Drop for Control {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.poller.deregister(self.shared.natt.raw_fd());
    }
}

/// Binds `port` on `local` (or dual-stack, or IPv4 only); `bind` is
/// [`UdpSocket::bind`] or [`UdpSocket::bind_for_thread`].
fn bind(
    local: Option<IpAddr>,
    port: u16,
    bind: fn(SocketAddr) -> std::io::Result<UdpSocket>,
) -> std::io::Result<UdpSocket> {
    match local {
        Some(ip) => bind(SocketAddr::new(ip, port)),
        None => bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
            .or_else(|_| bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))),
    }
}

/// The address this host sends from towards `remote` (for NAT detection).
fn source_towards(remote: IpAddr) -> Option<IpAddr> {
    let any: IpAddr = if remote.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    s.connect(SocketAddr::new(remote, 500)).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

fn ike_show(s: polytun_ike::IkeStats) -> IkeShow {
    IkeShow {
        fragmented_sent: s.fragmented_sent,
        fragments_sent: s.fragments_sent,
        fragments_received: s.fragments_received,
        reassembled: s.reassembled,
        malformed: s.malformed,
        integrity: s.integrity,
        bad_message_id: s.bad_message_id,
        unknown_sa: s.unknown_sa,
        unexpected: s.unexpected,
        stateless: s.stateless,
        fragment_dropped: s.fragment_dropped,
    }
}

fn ike_config(cfg: &Ipsec) -> polytun_ike::Config {
    let mut c = cfg.ike_auth_config();
    c.ike_proposals = cfg.proposals.clone();
    c.esp_proposals = cfg.esp_proposals.clone();
    c.local_ts = cfg.local_ts.iter().map(ts_of).collect();
    c.remote_ts = cfg.remote_ts.iter().map(ts_of).collect();
    cfg.lifetimes.apply(&mut c);
    // the selectors of every CHILD SA are acceptable when the peer
    // creates it (narrowed per CHILD SA); IKE_AUTH carries the first
    c.more_children = cfg
        .children
        .iter()
        .map(|ch| {
            (
                ch.local_ts.iter().map(ts_of).collect(),
                ch.remote_ts.iter().map(ts_of).collect(),
            )
        })
        .collect();
    // userspace ESP has no raw sockets: always UDP-encapsulate, as
    // strongSwan's kernel-libipsec does
    c.force_encap = true;
    c.dpd_interval = cfg.dpd_delay;
    c.fragment_size = cfg.fragment_size;
    c.dpd_timeout = cfg.dpd_timeout;
    c.dpd_action = cfg.dpd_action;
    c
}

/// Starts the tunnel's control task; its UDP 4500 socket is received on by
/// `poller`'s data-path thread (UDP 500 carries only IKE: a tokio task).
pub fn spawn(
    name: &str,
    cfg: &Ipsec,
    tun: Arc<Tun>,
    poller: Arc<Poller>,
) -> std::io::Result<IpsecHandle> {
    let err = |port: u16| {
        move |e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!("tunnel {name}: cannot listen on UDP port {port}: {e}"),
            )
        }
    };
    let ike =
        Arc::new(bind(cfg.local_addr, cfg.ike_port, UdpSocket::bind).map_err(err(cfg.ike_port))?);
    let natt = Arc::new(
        bind(
            cfg.local_addr,
            polytun_esp::NAT_T_PORT,
            UdpSocket::bind_for_thread,
        )
        .map_err(err(4500))?,
    );
    let (to_control, from_data) = crate::notes::channel(CONTROL_QUEUE);
    let shared = Arc::new(Shared {
        name: name.to_string(),
        tables: RwLock::new(Tables::default()),
        ike,
        natt,
        drops: DropCounters::default(),
        to_control,
    });
    let local_ip = cfg
        .local_addr
        .or_else(|| cfg.remote_host().and_then(source_towards))
        .unwrap_or(Ipv4Addr::UNSPECIFIED.into());
    let ep = Endpoint::new(ike_config(cfg), local_ip, Box::new(rand_core::OsRng));
    let now = Instant::now();
    let mut ctl = Control {
        name: name.to_string(),
        cfg: cfg.clone(),
        ep,
        local_ip,
        shared: shared.clone(),
        tun: tun.clone(),
        sas: HashMap::new(),
        children: HashMap::new(),
        current: None,
        reauth: Reauth::new(&cfg.lifetimes),
        last_remote: None,
        rng: rand_core::OsRng,
        reconnect_at: cfg.initiate.then_some(now),
        backoff: BACKOFF_MIN,
        next_keepalive: now + KEEPALIVE,
        kernel_routes: Vec::new(),
        tasks: vec![tokio::spawn(datapath::ike_to_control(shared.clone()))],
        poller: poller.clone(),
        stopping: false,
    };
    poller
        .register(shared.natt.raw_fd(), shared.clone())
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("tunnel {name}: cannot receive on UDP port 4500: {e}"),
            )
        })?;
    ctl.add_kernel_routes();
    let (commands, cmd_rx) = mpsc::channel(16);
    let task = tokio::spawn(async move { ctl.run(from_data, cmd_rx).await });
    Ok(IpsecHandle {
        name: name.to_string(),
        shared,
        commands,
        task,
    })
}

impl Control {
    fn deadline(&self) -> Option<Instant> {
        let mut d = self.ep.poll_timeout();
        for t in [
            self.reconnect_at,
            Some(self.next_keepalive),
            self.reauth.deadline(),
        ]
        .into_iter()
        .flatten()
        {
            d = Some(d.map_or(t, |x| x.min(t)));
        }
        d
    }

    async fn run(
        &mut self,
        mut from_data: crate::notes::Receiver<ToControl>,
        mut commands: mpsc::Receiver<IpsecCommand>,
    ) {
        loop {
            let deadline = self.deadline();
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
                cmd = commands.recv() => match cmd {
                    None | Some(IpsecCommand::Shutdown) => break,
                    Some(IpsecCommand::Show(tx)) => { let _ = tx.send(self.show()); }
                    Some(IpsecCommand::Rekey(what, tx)) => { let _ = tx.send(self.rekey(what)); }
                    Some(IpsecCommand::ExportKey { label, context, len, reply }) => {
                        let _ = reply.send(self.export_key(&label, &context, len));
                    }
                },
                _ = sleep => self.on_timer(),
            }
            self.process_outputs();
        }
        self.shutdown(&mut from_data).await;
    }

    /// CT: Delete every IKE SA and wait (up to 2 s) for the answers.
    async fn shutdown(&mut self, from_data: &mut crate::notes::Receiver<ToControl>) {
        self.stopping = true;
        self.reconnect_at = None;
        let now = Instant::now();
        for id in self.ep.sa_ids() {
            self.ep.close(now, id);
        }
        self.process_outputs();
        let end = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.ep.sa_ids().is_empty() {
            match tokio::time::timeout_at(end, from_data.recv()).await {
                Ok(Some(msg)) => self.on_data(msg),
                _ => break,
            }
            self.process_outputs();
        }
        self.shared.tables_mut().routes = Default::default();
        self.remove_kernel_routes();
        // Let the sockets go before saying stopped: a reload binds the
        // same ports again right after (an aborted task is dropped, with
        // its socket, only when the runtime gets to it).
        self.poller.deregister(self.shared.natt.raw_fd());
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        tracing::info!("tunnel {}: stopped", self.name);
    }

    fn on_data(&mut self, msg: ToControl) {
        let now = Instant::now();
        match msg {
            ToControl::Ike {
                local_port,
                src,
                data,
            } => {
                if !self.cfg.remote_addrs.is_empty()
                    && !self.cfg.remote_addrs.iter().any(|n| n.contains(&src.ip()))
                {
                    DropCounters::bump(&self.shared.drops.other);
                    tracing::debug!(
                        "tunnel {}: IKE from {src} is not in remote_addrs",
                        self.name
                    );
                    return;
                }
                if let Err(e) = self.ep.handle(now, src, local_port, &data) {
                    use polytun_ike::DropReason as D;
                    let d = &self.shared.drops;
                    let c = match e {
                        D::Malformed(_) | D::Missing(_) | D::NotIke => &d.malformed,
                        D::Integrity => &d.bad_mac,
                        D::BadMessageId => &d.replayed,
                        D::UnknownSa => &d.no_session,
                        D::Stateless(_) => &d.rate_limited,
                        D::Unexpected | D::Fragment(_) => &d.other,
                    };
                    DropCounters::bump(c);
                    tracing::debug!("tunnel {}: IKE from {src} dropped: {e}", self.name);
                }
            }
            ToControl::Traffic { ike_sa } => self.ep.on_child_traffic(now, ike_sa),
            ToControl::KeyExpiring { spi } => {
                if rekey::on_key_expiring(&mut self.ep, now, spi) {
                    tracing::info!(
                        "tunnel {}: SA {spi:08x} reached a soft limit; rekeying its CHILD SA",
                        self.name
                    );
                }
            }
            ToControl::KeyExpired { spi } => {
                if rekey::on_key_expired(&mut self.ep, now, spi) {
                    tracing::warn!(
                        "tunnel {}: SA {spi:08x} reached a hard limit before it was rekeyed; CHILD SA deleted",
                        self.name
                    );
                }
            }
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.ep.handle_timeout(now);
        if self.reconnect_at.is_some_and(|t| now >= t) {
            self.reconnect_at = None;
            self.connect(now);
        }
        for sa in self.reauth.take_due(now) {
            tracing::info!("tunnel {}: IKE SA {sa:016x} reached reauth_time", self.name);
            self.reauthenticate(sa);
        }
        if now >= self.next_keepalive {
            self.next_keepalive = now + KEEPALIVE;
            // RFC 3948 §2.3: keep NAT mappings of the 4500 flow alive
            let dsts: Vec<SocketAddr> = self.sas.values().map(|s| s.remote).collect();
            for d in dsts {
                if d.port() == polytun_esp::NAT_T_PORT {
                    let _ = self.shared.natt.try_send_to(&polytun_esp::NAT_KEEPALIVE, d);
                }
            }
        }
    }

    fn connect(&mut self, now: Instant) {
        let remote = match self.cfg.remote_host() {
            Some(host) => SocketAddr::new(host, self.cfg.ike_port),
            None => match self.last_remote {
                Some(r) => r,
                None => return,
            },
        };
        let id = self.initiate(now, remote);
        self.current = Some(id);
    }

    /// A new IKE SA to `remote` (not yet the tunnel's current one).
    fn initiate(&mut self, now: Instant, remote: SocketAddr) -> SaId {
        let id = self.ep.connect(now, remote);
        tracing::info!(
            "tunnel {}: initiating IKE SA {id:016x} to {remote}",
            self.name
        );
        self.sas.insert(
            id,
            IkeInfo {
                initiator: true,
                peer: None,
                algs: None,
                remote,
            },
        );
        id
    }

    /// KU (`polytun rekey`): CHILD SAs or IKE SAs by CREATE_CHILD_SA, or
    /// reauthentication.
    fn rekey(&mut self, what: RekeyWhat) -> Result<usize, String> {
        let now = Instant::now();
        let active = self.ep.active_sa_ids();
        if active.is_empty() {
            return Err(format!(
                "tunnel {}: no established IKE SA to rekey",
                self.name
            ));
        }
        let n = match what {
            RekeyWhat::Reauth => active
                .into_iter()
                .filter(|sa| self.reauthenticate(*sa))
                .count(),
            _ => rekey::rekey_now(&mut self.ep, now, what),
        };
        tracing::info!(
            "tunnel {}: rekey of the {} on demand: {n} started",
            self.name,
            match what {
                RekeyWhat::Child => "CHILD SAs",
                RekeyWhat::Ike => "IKE SAs",
                RekeyWhat::Reauth => "IKE SAs by reauthentication",
            }
        );
        if n == 0 {
            return Err(format!(
                "tunnel {}: nothing to rekey (a rekey is already under way)",
                self.name
            ));
        }
        Ok(n)
    }

    /// Starts a new IKE SA (with its CHILD SAs) to replace `old`; the old
    /// one is deleted once the new one is established (make-before-break).
    fn reauthenticate(&mut self, old: SaId) -> bool {
        if self.reauth.in_progress(old) || !self.ep.is_established(old) {
            return false;
        }
        let Some(remote) = self.sas.get(&old).map(|i| i.remote) else {
            return false;
        };
        let new = self.initiate(Instant::now(), remote);
        tracing::info!(
            "tunnel {}: reauthenticating IKE SA {old:016x} with a new IKE SA {new:016x}",
            self.name
        );
        self.reauth.started(old, new);
        if self.current == Some(old) {
            self.current = Some(new);
        }
        true
    }

    /// SSKE from the newest established IKE SA.
    fn export_key(&self, label: &[u8], context: &[u8], len: usize) -> Result<ExportedKey, String> {
        let now = Instant::now();
        let sa = self
            .ep
            .active_sa_ids()
            .into_iter()
            .min_by_key(|id| self.ep.age(*id, now))
            .ok_or_else(|| format!("tunnel {}: no established IKE SA", self.name))?;
        let key = self
            .ep
            .export_key(sa, label, context, len)
            .map_err(|e| format!("tunnel {}: {e}", self.name))?;
        let hex8 = |s: [u8; 8]| s.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let (i, r) = self.ep.spis(sa).unwrap_or_default();
        Ok(ExportedKey {
            key,
            spi_i: hex8(i),
            spi_r: hex8(r),
        })
    }

    /// Does this tunnel bring its IKE SA back when it is lost?
    fn keeps_up(&self) -> bool {
        self.cfg.initiate || self.cfg.dpd_action == DpdAction::Restart
    }

    fn schedule_reconnect(&mut self, why: &str) {
        if self.stopping || !self.keeps_up() {
            return;
        }
        let at = Instant::now() + self.backoff;
        tracing::info!(
            "tunnel {}: {why}; connecting again in {:?}",
            self.name,
            self.backoff
        );
        self.reconnect_at = Some(at);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn process_outputs(&mut self) {
        while let Some(o) = self.ep.poll_output() {
            match o {
                Output::Transmit {
                    local_port,
                    dst,
                    bytes,
                } => {
                    let s = if local_port == polytun_esp::NAT_T_PORT {
                        &self.shared.natt
                    } else {
                        &self.shared.ike
                    };
                    if let Err(e) = s.try_send_to(&bytes, dst) {
                        tracing::debug!("tunnel {}: IKE send to {dst}: {e}", self.name);
                    }
                }
                Output::InstallChildSa(p) => self.install_child(*p, true),
                // Make-before-break (crates/ike/src/rekey.rs): the new SA
                // decrypts at once, traffic moves to it only on the switch,
                // the old SA goes with its DeleteChildSa.
                Output::InstallChildSaInbound { params, .. } => self.install_child(*params, false),
                Output::SwitchChildSaOutbound {
                    old_spi_out,
                    new_spi_in,
                    new_spi_out,
                    ..
                } => self.switch_outbound(old_spi_out, new_spi_in, new_spi_out),
                Output::DeleteChildSa {
                    spi_in, spi_out, ..
                } => self.delete_child(spi_in, spi_out),
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Established {
                sa,
                initiator,
                peer,
                algs,
                remote,
            } => {
                tracing::info!(
                    "tunnel {}: IKE SA {sa:016x} established with '{peer}' at {remote} ({})",
                    self.name,
                    ike_algs_name(&algs)
                );
                let info = self.sas.entry(sa).or_insert(IkeInfo {
                    initiator,
                    peer: None,
                    algs: None,
                    remote,
                });
                info.peer = Some(peer);
                info.algs = Some(algs);
                info.remote = remote;
                self.last_remote = Some(remote);
                let now = Instant::now();
                if Some(sa) == self.current {
                    self.backoff = BACKOFF_MIN;
                }
                if let Some(old) = self.reauth.established(&mut self.rng, now, sa) {
                    tracing::info!(
                        "tunnel {}: reauthenticated; deleting the replaced IKE SA {old:016x}",
                        self.name
                    );
                    self.ep.close(now, old);
                }
                self.create_more_children(now, sa, initiator);
            }
            Event::Failed { sa, reason } => {
                let was_up = self.sas.get(&sa).is_some_and(|i| i.algs.is_some());
                let dead = was_up && reason == FailReason::Timeout;
                if dead {
                    tracing::warn!(
                        "tunnel {}: peer dead (DPD): IKE SA {sa:016x} got no answer; dpd_action = {}",
                        self.name,
                        match self.cfg.dpd_action {
                            DpdAction::Clear => "clear: its SAs are removed",
                            DpdAction::Restart => "restart: connecting again",
                        }
                    );
                } else {
                    tracing::warn!("tunnel {}: IKE SA {sa:016x} failed: {reason}", self.name);
                }
                self.sas.remove(&sa);
                let replaced = self.reauth.gone(Instant::now(), sa);
                if Some(sa) == self.current {
                    self.current = None;
                    if let Some(old) = replaced {
                        // a failed reauthentication leaves the old SA in charge
                        tracing::warn!(
                            "tunnel {}: reauthentication failed; IKE SA {old:016x} stays",
                            self.name
                        );
                        self.current = Some(old);
                    } else if dead && self.cfg.dpd_action == DpdAction::Clear {
                        tracing::info!("tunnel {}: tunnel cleared (dpd_action = clear)", self.name);
                    } else if dead {
                        // the endpoint restarts it at once (Event::Restarting)
                    } else {
                        self.schedule_reconnect("IKE SA failed");
                    }
                }
            }
            Event::Closed { sa, by_peer } => {
                tracing::info!(
                    "tunnel {}: IKE SA {sa:016x} closed{}",
                    self.name,
                    if by_peer { " by the peer" } else { "" }
                );
                self.sas.remove(&sa);
                self.reauth.gone(Instant::now(), sa);
                if Some(sa) == self.current {
                    self.current = None;
                    self.backoff = BACKOFF_MIN;
                    if self.cfg.initiate {
                        self.schedule_reconnect("IKE SA deleted");
                    }
                }
            }
            Event::ChildRekeyed {
                sa,
                old_spi_in,
                old_spi_out,
                new_spi_in,
                new_spi_out,
            } => tracing::info!(
                "tunnel {}: IKE SA {sa:016x}: CHILD SA rekeyed: in {old_spi_in:08x} -> {new_spi_in:08x}, out {old_spi_out:08x} -> {new_spi_out:08x}",
                self.name
            ),
            Event::IkeRekeyed { old, new } => {
                tracing::info!("tunnel {}: IKE SA {old:016x} rekeyed into {new:016x}", self.name);
                if let Some(info) = self.sas.remove(&old) {
                    self.sas.insert(new, info);
                }
                for c in self.children.values_mut() {
                    if c.ike_sa == old {
                        c.ike_sa = new;
                    }
                }
                for i in self.shared.tables_mut().inbound.values_mut() {
                    if i.ike_sa == old {
                        i.ike_sa = new;
                    }
                }
                if self.current == Some(old) {
                    self.current = Some(new);
                }
                self.reauth.rekeyed(old, new);
            }
            Event::RekeyCollision { sa, child, won } => tracing::info!(
                "tunnel {}: IKE SA {sa:016x}: rekey collision: simultaneous rekey of {} ({})",
                self.name,
                child.map_or("the IKE SA".to_string(), |c| format!("CHILD SA {c:08x}")),
                if won { "ours survives" } else { "the peer's survives" }
            ),
            Event::RekeyFailed { sa, child, notify } => tracing::warn!(
                "tunnel {}: IKE SA {sa:016x}: rekey of {} failed (notify {notify}); retrying later",
                self.name,
                child.map_or("the IKE SA".to_string(), |c| format!("CHILD SA {c:08x}"))
            ),
            Event::Restarting { old, new } => {
                tracing::warn!(
                    "tunnel {}: restarting (dpd_action = restart): IKE SA {old:016x} replaced by a new attempt {new:016x}",
                    self.name
                );
                self.sas.remove(&old);
                let remote = self.last_remote.unwrap_or_else(|| {
                    SocketAddr::new(
                        self.cfg.remote_host().unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
                        self.cfg.ike_port,
                    )
                });
                self.sas.insert(
                    new,
                    IkeInfo {
                        initiator: true,
                        peer: None,
                        algs: None,
                        remote,
                    },
                );
                self.reauth.gone(Instant::now(), old);
                // whoever started it, the restarted IKE SA is ours to keep up
                self.current = Some(new);
            }
            Event::InitialContact { sa, peer, stale } => {
                tracing::info!(
                    "tunnel {}: IKE SA {sa:016x}: '{peer}' sent INITIAL_CONTACT; deleting its {} older IKE SA(s)",
                    self.name,
                    stale.len()
                );
                // the peer restarted: its new SA takes over (no reconnect
                // when the old one's Closed event follows)
                if self.current.is_some_and(|c| stale.contains(&c)) {
                    self.current = Some(sa);
                }
                let now = Instant::now();
                for s in &stale {
                    self.reauth.gone(now, *s);
                }
            }
            Event::ChildFailed { sa, notify } => {
                tracing::warn!(
                    "tunnel {}: IKE SA {sa:016x}: the CHILD SA was refused (notify {notify})",
                    self.name
                );
            }
            Event::NatDetected { sa, local, remote } => {
                tracing::debug!(
                    "tunnel {}: IKE SA {sa:016x}: NAT detected (local {local}, remote {remote})",
                    self.name
                );
            }
        }
    }

    fn switch_outbound(&mut self, old_spi_out: Option<u32>, new_spi_in: u32, new_spi_out: u32) {
        if let Some(old) = old_spi_out {
            for c in self.children.values_mut().filter(|c| c.spi_out == old) {
                c.outbound = false;
            }
        }
        let Some(child) = self.children.get_mut(&new_spi_in) else {
            tracing::warn!(
                "tunnel {}: switch to unknown CHILD SA in {new_spi_in:08x}",
                self.name
            );
            return;
        };
        tracing::info!(
            "tunnel {}: traffic moves to CHILD SA out {new_spi_out:08x}{}",
            self.name,
            old_spi_out.map_or(String::new(), |o| format!(" (from {o:08x})"))
        );
        child.outbound = true;
        let mut t = self.shared.tables_mut();
        if let Some(old) = old_spi_out {
            t.routes.retain(|s| *s != old);
        }
        for n in &child.ts_remote {
            t.routes.insert(*n, new_spi_out);
        }
    }

    /// Installs both directions of a CHILD SA; `route` sends traffic with
    /// it at once (a new SA) or waits for the switch (a rekey).
    fn install_child(&mut self, p: ChildSaParams, route: bool) {
        let now = Instant::now();
        let Some(transform) = esp_transform(&p.transform) else {
            tracing::error!(
                "tunnel {}: negotiated ESP transform {:?} is not supported by the data path",
                self.name,
                p.transform
            );
            return;
        };
        if !p.udp_encap {
            tracing::warn!(
                "tunnel {}: CHILD SA without UDP encapsulation; sending it on 4500 anyway",
                self.name
            );
        }
        // time limits as negotiated; bytes and packets jittered per SA
        let mut limits = self.cfg.lifetimes.esp_limits(&mut self.rng);
        limits.soft_time = p.lifetimes.soft_time;
        limits.hard_time = p.lifetimes.hard_time;
        let params = |spi, direction| SaParams {
            esn: p.transform.esn,
            limits,
            ..SaParams::new(spi, direction, transform)
        };
        let inb = EspSa::new(
            params(p.spi_in, Direction::Inbound),
            &esp_keymat(&p.keymat_in),
            now,
        );
        let outb = EspSa::new(
            params(p.spi_out, Direction::Outbound),
            &esp_keymat(&p.keymat_out),
            now,
        );
        let (inb, outb) = match (inb, outb) {
            (Ok(i), Ok(o)) => (Arc::new(i), Arc::new(o)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("tunnel {}: cannot build the CHILD SA: {e}", self.name);
                return;
            }
        };
        let ts_local: Vec<IpNet> = p.ts_local.iter().flat_map(nets_of).collect();
        let ts_remote: Vec<IpNet> = p.ts_remote.iter().flat_map(nets_of).collect();
        let dst = SocketAddr::new(p.remote.ip(), polytun_esp::NAT_T_PORT);
        let dst = if p.udp_encap { p.remote } else { dst };
        let stats = Arc::new(ChildStats::default());
        tracing::info!(
            "tunnel {}: CHILD SA installed: in {:08x}, out {:08x}, {}, {:?} === {:?}",
            self.name,
            p.spi_in,
            p.spi_out,
            transform.name(),
            ts_local,
            ts_remote
        );
        {
            let mut t = self.shared.tables_mut();
            t.inbound.insert(
                p.spi_in,
                Inbound {
                    sa: inb,
                    ike_sa: p.ike_sa,
                    remote_ts: ts_remote.clone(),
                    stats: stats.clone(),
                },
            );
            t.outbound.insert(
                p.spi_out,
                Outbound {
                    sa: outb,
                    dst,
                    stats: stats.clone(),
                },
            );
            // the newest CHILD SA carries the traffic (make-before-break)
            if route {
                for n in &ts_remote {
                    t.routes.insert(*n, p.spi_out);
                }
            }
        }
        self.children.insert(
            p.spi_in,
            ChildInfo {
                ike_sa: p.ike_sa,
                spi_out: p.spi_out,
                transform,
                esn: p.transform.esn,
                encap: p.udp_encap,
                ts_local,
                ts_remote,
                stats,
                installed: now,
                outbound: route,
            },
        );
    }

    fn delete_child(&mut self, spi_in: u32, spi_out: u32) {
        tracing::info!(
            "tunnel {}: CHILD SA removed: in {spi_in:08x}, out {spi_out:08x}",
            self.name
        );
        self.children.remove(&spi_in);
        let mut t = self.shared.tables_mut();
        if let Some(i) = t.inbound.remove(&spi_in) {
            i.sa.retire();
        }
        if let Some(o) = t.outbound.remove(&spi_out) {
            o.sa.retire();
        }
        // routes that pointed at it go to the newest remaining CHILD SA
        // that carries traffic (never to a rekey's SA before its switch:
        // the peer may not hold that key yet)
        t.routes.retain(|s| *s != spi_out);
        let mut rest: Vec<&ChildInfo> = self.children.values().filter(|c| c.outbound).collect();
        rest.sort_by_key(|c| c.installed);
        for c in rest {
            for n in &c.ts_remote {
                t.routes.insert(*n, c.spi_out);
            }
        }
    }

    /// Creates the `[[tunnel.child]]` CHILD SAs in a new IKE SA we
    /// initiated (IKE_AUTH carried the first one). A reauthentication's new
    /// IKE SA gets them too; an IKE SA rekey keeps its CHILD SAs.
    fn create_more_children(&mut self, now: Instant, sa: SaId, initiator: bool) {
        if !initiator || self.cfg.children.is_empty() {
            return;
        }
        for c in self.cfg.children.clone() {
            let l = c.local_ts.iter().map(ts_of).collect();
            let r = c.remote_ts.iter().map(ts_of).collect();
            if self.ep.create_child(now, sa, l, r) {
                tracing::info!(
                    "tunnel {}: IKE SA {sa:016x}: creating CHILD SA {} ({:?} === {:?})",
                    self.name,
                    c.name,
                    c.local_ts,
                    c.remote_ts
                );
            }
        }
    }

    fn add_kernel_routes(&mut self) {
        let mut nets = self.cfg.remote_ts.clone();
        nets.extend(self.cfg.children.iter().flat_map(|c| c.remote_ts.clone()));
        for n in nets {
            match self
                .tun
                .add_route(n.addr(), n.prefix_len(), &RouteOptions::default())
            {
                Ok(()) => self.kernel_routes.push(n),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => tracing::warn!(
                    "tunnel {}: route {n} into {}: {e}",
                    self.name,
                    self.tun.name()
                ),
            }
        }
    }

    fn remove_kernel_routes(&mut self) {
        for n in std::mem::take(&mut self.kernel_routes) {
            let _ = self
                .tun
                .remove_route(n.addr(), n.prefix_len(), &RouteOptions::default());
        }
    }

    fn show(&self) -> TunnelShow {
        let now = Instant::now();
        let hex8 = |s: [u8; 8]| s.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut ids: Vec<SaId> = self.sas.keys().copied().collect();
        ids.sort_by_key(|id| std::cmp::Reverse(self.ep.age(*id, now)));
        let ike_sas = ids
            .into_iter()
            .filter_map(|id| {
                let info = self.sas.get(&id)?;
                let (spi_i, spi_r) = self.ep.spis(id)?;
                let port = if info.remote.port() == polytun_esp::NAT_T_PORT {
                    polytun_esp::NAT_T_PORT
                } else {
                    self.cfg.ike_port
                };
                let mut children: Vec<(&u32, &ChildInfo)> = self
                    .children
                    .iter()
                    .filter(|(_, c)| c.ike_sa == id)
                    .collect();
                children.sort_by_key(|(_, c)| c.installed);
                let infos = self.ep.child_sas(id);
                let info_of = |spi: u32| infos.iter().find(|c| c.spi_in == spi);
                let secs =
                    |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now).as_secs());
                Some(IkeSaShow {
                    rekey_in_secs: secs(self.ep.ike_rekey_at(id)),
                    reauth_in_secs: secs(self.reauth.due_at(id)),
                    state: self.ep.sa_state(id).unwrap_or("CONNECTING").into(),
                    initiator: info.initiator,
                    spi_i: hex8(spi_i),
                    spi_r: hex8(spi_r),
                    local: format!("{}[{port}]", self.local_ip),
                    remote: format!("{}[{}]", info.remote.ip(), info.remote.port()),
                    local_id: self.cfg.local_id.to_string(),
                    remote_id: info
                        .peer
                        .as_ref()
                        .or(self.cfg.remote_id.as_ref())
                        .map_or("%any".into(), |i| i.to_string()),
                    auth: self.cfg.auth_name(),
                    algorithms: info.algs.as_ref().map(ike_algs_name).unwrap_or_default(),
                    age_secs: self.ep.age(id, now).unwrap_or_default().as_secs(),
                    children: children
                        .into_iter()
                        .map(|(spi_in, c)| ChildSaShow {
                            spi_in: format!("{spi_in:08x}"),
                            spi_out: format!("{:08x}", c.spi_out),
                            transform: c.transform.name().into(),
                            esn: c.esn,
                            encap: c.encap,
                            rx_bytes: c.stats.rx_bytes.load(Ordering::Relaxed),
                            rx_packets: c.stats.rx_packets.load(Ordering::Relaxed),
                            tx_bytes: c.stats.tx_bytes.load(Ordering::Relaxed),
                            tx_packets: c.stats.tx_packets.load(Ordering::Relaxed),
                            local_ts: c.ts_local.iter().map(|n| n.to_string()).collect(),
                            remote_ts: c.ts_remote.iter().map(|n| n.to_string()).collect(),
                            age_secs: now.saturating_duration_since(c.installed).as_secs(),
                            rekey_in_secs: info_of(*spi_in)
                                .filter(|i| i.outbound && !i.rekeying)
                                .and_then(|i| secs(i.rekey_at)),
                            state: match info_of(*spi_in) {
                                Some(i) if i.outbound && i.rekeying => "REKEYING",
                                Some(i) if i.outbound => "INSTALLED",
                                Some(i) if i.rekeying => "REKEYED",
                                Some(_) => "INSTALLED-INBOUND",
                                None => "DELETING",
                            }
                            .into(),
                        })
                        .collect(),
                })
            })
            .collect();
        TunnelShow {
            name: self.name.clone(),
            protocol: "ipsec".into(),
            listen_port: Some(self.cfg.ike_port),
            public_key: None,
            drops: self.shared.drops.snapshot(),
            peers: Vec::new(),
            ike_sas,
            ike: Some(ike_show(self.ep.stats())),
            ..Default::default()
        }
    }
}
