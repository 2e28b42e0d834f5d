//! polytund: config → TUN device → tunnels, the control socket, reload on
//! SIGHUP, readiness to systemd.

use crate::config::{self, Config, Protocol};
use crate::control::{self, Command, Reply, ShowReply};
use crate::ipsec::state::IpsecSet;
use crate::ipsec::tunnel::{self as ipsec_tunnel, IpsecCommand, IpsecHandle};
use crate::openvpn;
use crate::wg::datapath::TunnelSet;
use crate::wg::tunnel::{self, PeerSpec, TunnelCommand, TunnelHandle, TunnelOptions};
use anyhow::Context;
use ipnet::IpNet;
use polytun_io::{Tun, TunConfig};
use std::path::Path;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

fn wg_peers(wg: &config::WireGuard) -> Vec<PeerSpec> {
    wg.peers
        .iter()
        .map(|p| PeerSpec {
            name: p.name.clone(),
            public_key: p.public_key,
            preshared_key: p.preshared_key.clone(),
            endpoint: p.endpoint,
            allowed_ips: p.allowed_ips.clone(),
            persistent_keepalive: p.persistent_keepalive,
        })
        .collect()
}

struct Running {
    config: Config,
    tun: Arc<Tun>,
    tunnels: Vec<TunnelHandle>,
    set: TunnelSet,
    ipsec: Vec<IpsecHandle>,
    ipsec_set: IpsecSet,
    ovpn: Vec<openvpn::tunnel::TunnelHandle>,
    /// The OpenVPN client tunnels' sessions, as the data path routes to them.
    ovpn_routes: openvpn::datapath::Routes,
    /// The OpenVPN client tunnels' data-path threads (started with the
    /// first client; a server starts its own).
    ovpn_path: Option<openvpn::datapath::DataPath>,
    /// The WireGuard data-path threads (started with the first WireGuard tunnel).
    wg_path: Option<crate::wg::datapath::DataPath>,
    /// The ESP data-path threads (started with the first IPsec tunnel).
    esp_path: Option<crate::ipsec::datapath::DataPath>,
}

impl Running {
    fn spawn_tunnel(&mut self, t: &config::Tunnel) -> anyhow::Result<()> {
        let wg = match &t.protocol {
            Protocol::WireGuard(wg) => wg,
            Protocol::Ipsec(cfg) => {
                let poller = match &self.esp_path {
                    Some(dp) => dp.poller(),
                    None => {
                        let mtu = usize::from(self.config.interface.mtu);
                        let dp = crate::ipsec::datapath::Turns::spawn(
                            self.tun.clone(),
                            self.ipsec_set.clone(),
                            mtu,
                        )
                        .context("starting the ESP data path")?;
                        self.esp_path.insert(dp).poller()
                    }
                };
                let h = ipsec_tunnel::spawn(&t.name, cfg, self.tun.clone(), poller)?;
                self.ipsec_set
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(h.shared.clone());
                tracing::info!(
                    "tunnel {} (ipsec): listening on UDP ports {} and 4500, {}",
                    t.name,
                    cfg.ike_port,
                    if cfg.initiate {
                        "initiating"
                    } else {
                        "responding"
                    }
                );
                self.ipsec.push(h);
                return Ok(());
            }
            Protocol::OpenVpn(o) if o.server.is_some() => {
                // The server starts its own data-path threads (it is alone
                // on its interface).
                let mtu = usize::from(self.config.interface.mtu);
                let h = openvpn::server::spawn(&t.name, o.as_ref().clone(), self.tun.clone(), mtu)?;
                self.ovpn.push(h);
                return Ok(());
            }
            Protocol::OpenVpn(o) => {
                let poller = match &self.ovpn_path {
                    Some(dp) => dp.poller(),
                    None => {
                        let mtu = usize::from(self.config.interface.mtu);
                        let dp = openvpn::datapath::Turns::spawn(
                            self.tun.clone(),
                            self.ovpn_routes.clone(),
                            mtu,
                        )
                        .context("starting the OpenVPN data path")?;
                        self.ovpn_path.insert(dp).poller()
                    }
                };
                let h =
                    openvpn::tunnel::spawn(&t.name, o.as_ref().clone(), self.tun.clone(), poller)?;
                openvpn::datapath::add_client(&self.ovpn_routes, h.shared.clone());
                tracing::info!(
                    "tunnel {} (openvpn client): server {} over {}",
                    t.name,
                    o.remote,
                    o.transport.name()
                );
                self.ovpn.push(h);
                return Ok(());
            }
        };
        let mtu = usize::from(self.config.interface.mtu);
        let poller = match &self.wg_path {
            Some(dp) => dp.poller(),
            None => {
                let dp = crate::wg::datapath::Turns::spawn(self.tun.clone(), self.set.clone(), mtu)
                    .context("starting the WireGuard data path")?;
                self.wg_path.insert(dp).poller()
            }
        };
        let h = tunnel::spawn(
            TunnelOptions {
                name: t.name.clone(),
                private_key: Some(wg.private_key.clone()),
                listen_port: wg.listen_port,
                peers: wg_peers(wg),
                mtu,
                install_routes: true,
                poller,
            },
            self.tun.clone(),
        )?;
        self.set
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(h.shared.clone());
        tracing::info!(
            "tunnel {} (wireguard): listening on UDP port {}, {} peer(s)",
            t.name,
            h.shared.socket().local_addr().map_or(0, |a| a.port()),
            wg.peers.len()
        );
        self.tunnels.push(h);
        Ok(())
    }

    async fn stop_tunnel(&mut self, name: &str) {
        if let Some(pos) = self.ipsec.iter().position(|h| h.name == name) {
            let h = self.ipsec.remove(pos);
            self.ipsec_set
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|s| !Arc::ptr_eq(s, &h.shared));
            let _ = h.commands.send(IpsecCommand::Shutdown).await;
            let _ = h.task.await;
            return;
        }
        if let Some(pos) = self.tunnels.iter().position(|h| h.name == name) {
            let h = self.tunnels.remove(pos);
            self.set
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|s| !Arc::ptr_eq(s, &h.shared));
            let _ = h.commands.send(TunnelCommand::Shutdown).await;
            let _ = h.task.await;
        }
        if let Some(pos) = self.ovpn.iter().position(|h| h.name == name) {
            let h = self.ovpn.remove(pos);
            openvpn::datapath::remove_client(&self.ovpn_routes, &h.shared);
            let _ = h
                .commands
                .send(openvpn::tunnel::TunnelCommand::Shutdown)
                .await;
            let _ = h.task.await;
        }
    }

    async fn show(&self) -> ShowReply {
        let mut tunnels = Vec::new();
        for h in &self.tunnels {
            let (tx, rx) = oneshot::channel();
            if h.commands.send(TunnelCommand::Show(tx)).await.is_ok() {
                if let Ok(s) = rx.await {
                    tunnels.push(s);
                }
            }
        }
        for h in &self.ipsec {
            let (tx, rx) = oneshot::channel();
            if h.commands.send(IpsecCommand::Show(tx)).await.is_ok() {
                if let Ok(s) = rx.await {
                    tunnels.push(s);
                }
            }
        }
        for h in &self.ovpn {
            let (tx, rx) = oneshot::channel();
            let cmd = openvpn::tunnel::TunnelCommand::Show(tx);
            if h.commands.send(cmd).await.is_ok() {
                if let Ok(s) = rx.await {
                    tunnels.push(s);
                }
            }
        }
        ShowReply {
            interface: self.config.interface.name.clone(),
            mtu: self.config.interface.mtu,
            offload: self.tun.offload_enabled(),
            tunnels,
        }
    }

    async fn rekey(
        &self,
        tunnel: Option<String>,
        peer: Option<String>,
        what: Option<control::IpsecRekey>,
    ) -> Reply {
        use crate::ipsec::rekey::RekeyWhat;
        let what = match what {
            None | Some(control::IpsecRekey::Child) => RekeyWhat::Child,
            Some(control::IpsecRekey::Ike) => RekeyWhat::Ike,
            Some(control::IpsecRekey::Reauth) => RekeyWhat::Reauth,
        };
        let mut total = 0;
        for h in &self.ipsec {
            if tunnel.as_ref().is_some_and(|t| *t != h.name) {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let _ = h.commands.send(IpsecCommand::Rekey(what, tx)).await;
            match rx.await {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) if self.ipsec.len() == 1 => return Reply::Error { message: e },
                _ => {}
            }
        }
        for h in &self.tunnels {
            if tunnel.as_ref().is_some_and(|t| *t != h.name) {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let _ = h
                .commands
                .send(TunnelCommand::Rekey {
                    peer: peer.clone(),
                    reply: tx,
                })
                .await;
            match rx.await {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) if self.tunnels.len() == 1 => return Reply::Error { message: e },
                _ => {}
            }
        }
        for h in &self.ovpn {
            if tunnel.as_ref().is_some_and(|t| *t != h.name) {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let _ = h
                .commands
                .send(openvpn::tunnel::TunnelCommand::Rekey(tx))
                .await;
            if let Ok(Ok(n)) = rx.await {
                total += n;
            }
        }
        if total == 0 {
            Reply::Error {
                message: "no matching peer".into(),
            }
        } else if !self.ipsec.is_empty() {
            Reply::Ok {
                message: format!("{total} rekey(s) started"),
            }
        } else {
            Reply::Ok {
                message: format!("handshake started with {total} peer(s)"),
            }
        }
    }

    /// SSKE: IPsec tunnels export from their IKE SA.
    async fn export_key(
        &self,
        tunnel: Option<String>,
        label: String,
        context: String,
        len: usize,
    ) -> Reply {
        let Some(h) = only_one(&self.ipsec, |h| &h.name, tunnel.as_deref()) else {
            if self.ipsec.is_empty() {
                return self.export_key_openvpn(tunnel, label, context, len).await;
            }
            return Reply::Error {
                message: match tunnel {
                    Some(t) => format!("no IPsec tunnel `{t}` (name one tunnel)"),
                    None => "name one IPsec tunnel (--tunnel NAME)".into(),
                },
            };
        };
        let (tx, rx) = oneshot::channel();
        let cmd = IpsecCommand::ExportKey {
            label: label.into_bytes(),
            context: context.into_bytes(),
            len,
            reply: tx,
        };
        let _ = h.commands.send(cmd).await;
        match rx.await {
            Ok(Ok(k)) => Reply::Key {
                tunnel: h.name.clone(),
                source: format!("IKE SA {}_i {}_r", k.spi_i, k.spi_r),
                key_hex: hex(&k.key),
            },
            Ok(Err(message)) => Reply::Error { message },
            Err(_) => Reply::Error {
                message: format!("tunnel {} did not answer", h.name),
            },
        }
    }

    /// SSKE for OpenVPN tunnels: the TLS exporter of the session.
    async fn export_key_openvpn(
        &self,
        tunnel: Option<String>,
        label: String,
        context: String,
        len: usize,
    ) -> Reply {
        let Some(h) = only_one(&self.ovpn, |h| &h.name, tunnel.as_deref()) else {
            return Reply::Error {
                message:
                    "name one IPsec or OpenVPN tunnel (--tunnel NAME); WireGuard has no key export"
                        .into(),
            };
        };
        let (tx, rx) = oneshot::channel();
        let cmd = openvpn::tunnel::TunnelCommand::ExportKey {
            label: label.into_bytes(),
            context: context.into_bytes(),
            len,
            reply: tx,
        };
        let _ = h.commands.send(cmd).await;
        match rx.await {
            Ok(Ok(k)) => Reply::Key {
                tunnel: h.name.clone(),
                source: "TLS exporter (RFC 5705) of the newest key".into(),
                key_hex: hex(&k),
            },
            Ok(Err(message)) => Reply::Error { message },
            Err(_) => Reply::Error {
                message: format!("tunnel {} did not answer", h.name),
            },
        }
    }

    /// Applies a changed config; tunnels and peers that did not change are
    /// not touched.
    async fn reload(&mut self, new: Config) -> anyhow::Result<()> {
        let old = &self.config;
        if new.interface.name != old.interface.name {
            anyhow::bail!(
                "interface.name changed from {} to {}: restart polytund to apply",
                old.interface.name,
                new.interface.name
            );
        }
        if new.interface.mtu != old.interface.mtu {
            tracing::warn!("interface.mtu changed: takes effect after a restart");
        }
        for a in &new.interface.addresses {
            if !old.interface.addresses.contains(a) {
                add_address(&self.tun, a);
            }
        }
        for a in &old.interface.addresses {
            if !new.interface.addresses.contains(a) {
                if let Err(e) = self.tun.remove_address(a.addr(), a.prefix_len()) {
                    tracing::warn!("removing address {a}: {e}");
                }
            }
        }
        let old_tunnels = old.tunnels.clone();
        for t in &old_tunnels {
            let keep = new.tunnels.iter().find(|n| n.name == t.name);
            let same_identity = keep.is_some_and(|n| match (&n.protocol, &t.protocol) {
                (Protocol::WireGuard(a), Protocol::WireGuard(b)) => {
                    a.private_key == b.private_key && a.listen_port == b.listen_port
                }
                // IPsec and OpenVPN tunnels whose settings changed are restarted
                (a, b) => a == b,
            });
            if !same_identity {
                tracing::info!(
                    "tunnel {}: removed or changed identity, restarting it",
                    t.name
                );
                self.stop_tunnel(&t.name).await;
            }
        }
        self.config.interface = new.interface.clone();
        for t in &new.tunnels {
            let Protocol::WireGuard(wg) = &t.protocol else {
                if !self.ipsec.iter().any(|h| h.name == t.name)
                    && !self.ovpn.iter().any(|h| h.name == t.name)
                {
                    self.spawn_tunnel(t)?;
                }
                continue;
            };
            match self.tunnels.iter().find(|h| h.name == t.name) {
                Some(h) => {
                    let (tx, rx) = oneshot::channel();
                    let _ = h
                        .commands
                        .send(TunnelCommand::SetPeers(wg_peers(wg), tx))
                        .await;
                    if let Ok(Err(e)) = rx.await {
                        tracing::warn!("tunnel {}: {e}", t.name);
                    }
                }
                None => self.spawn_tunnel(t)?,
            }
        }
        self.config = new;
        Ok(())
    }
}

fn add_address(tun: &Tun, a: &IpNet) {
    if let Err(e) = tun.add_address(a.addr(), a.prefix_len()) {
        if e.raw_os_error() != Some(libc::EEXIST) {
            tracing::warn!("adding address {a} to {}: {e}", tun.name());
        }
    }
}

/// The one handle named `tunnel`, or the only handle when none is named.
fn only_one<'a, H>(hs: &'a [H], name: impl Fn(&H) -> &str, tunnel: Option<&str>) -> Option<&'a H> {
    let mut matching = hs.iter().filter(|h| tunnel.is_none_or(|t| t == name(h)));
    match (matching.next(), matching.next()) {
        (Some(h), None) => Some(h),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(state);
    }
}

/// Runs polytund with `cfg`, loaded from `path` (read again on SIGHUP),
/// until SIGTERM/SIGINT or `polytun down`.
pub async fn run(path: &Path, cfg: Config) -> anyhow::Result<()> {
    let iface = cfg.interface.clone();
    // Every protocol's data-path threads poll the device themselves
    // (crate::threads).
    let tun = Arc::new(
        Tun::create_for_thread(&TunConfig {
            name: iface.name.clone(),
            mtu: iface.mtu,
            offload: iface.offload,
            up: true,
            queues: iface.queues,
        })
        .with_context(|| format!("creating TUN device {}", iface.name))?,
    );
    for a in &iface.addresses {
        add_address(&tun, a);
    }
    tracing::info!(
        "interface {}: mtu {}, {} queue(s), offload {}",
        tun.name(),
        iface.mtu,
        iface.queues,
        match (tun.offload_enabled(), tun.udp_offload_enabled()) {
            (true, true) => "on (TCP and UDP segmentation)",
            (true, false) => "on (TCP segmentation only)",
            _ => "off",
        }
    );
    let set: TunnelSet = Arc::new(std::sync::RwLock::new(Vec::new()));
    let mut running = Running {
        config: cfg.clone(),
        tun: tun.clone(),
        tunnels: Vec::new(),
        set: set.clone(),
        ipsec: Vec::new(),
        ipsec_set: Arc::new(std::sync::RwLock::new(Vec::new())),
        ovpn: Vec::new(),
        ovpn_routes: Arc::default(),
        ovpn_path: None,
        wg_path: None,
        esp_path: None,
    };
    for t in &cfg.tunnels {
        running.spawn_tunnel(t)?;
    }
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<control::Request>(16);
    let socket_path = iface.control_socket.clone();
    let listener = control::bind(&socket_path)
        .await
        .with_context(|| format!("control socket {}", socket_path.display()))?;
    let server = tokio::spawn(control::serve_listener(listener, ctl_tx));
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!("polytund: ready (control socket {})", socket_path.display());
    loop {
        tokio::select! {
            Some((cmd, reply)) = ctl_rx.recv() => {
                let r = match cmd {
                    Command::Show => Reply::Show(running.show().await),
                    Command::Rekey { tunnel, peer, ipsec } => running.rekey(tunnel, peer, ipsec).await,
                    Command::ExportKey { tunnel, label, context, length } => {
                        running.export_key(tunnel, label, context, length).await
                    }
                    Command::Down => {
                        let _ = reply.send(Reply::Ok { message: "polytund stopping".into() });
                        // The reply is written by the connection's own task;
                        // give it the moment it needs before the runtime
                        // (and that task) ends with this function.
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        break;
                    }
                };
                let _ = reply.send(r);
            }
            _ = hup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading]);
                match config::load(path) {
                    Ok(new) => match running.reload(new).await {
                        Ok(()) => tracing::info!("reloaded {}", path.display()),
                        Err(e) => tracing::error!("reload of {} incomplete: {e:#}", path.display()),
                    },
                    Err(e) => tracing::error!("reload refused, keeping the running config: {e}"),
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("polytund: stopping");
    let names: Vec<String> = running
        .tunnels
        .iter()
        .map(|h| h.name.clone())
        .chain(running.ipsec.iter().map(|h| h.name.clone()))
        .chain(running.ovpn.iter().map(|h| h.name.clone()))
        .collect();
    for n in names {
        running.stop_tunnel(&n).await;
    }
    server.abort();
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}
