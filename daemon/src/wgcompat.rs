//! `polytun-wg`: polytun behind wireguard-go's command line, so `wg`,
//! `wg-quick` and anything else that drives wireguard-go drives polytun.
//! The TUN device is created bare (wg-quick adds addresses, MTU and routes);
//! the tunnel is configured through the UAPI socket.

use crate::uapi::{self, Request, UapiError};
use crate::wg::datapath::TunnelSet;
use crate::wg::datapath::Turns;
use crate::wg::tunnel::{self, TunnelCommand, TunnelOptions};
use anyhow::Context;
use polytun_io::{Tun, TunConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

pub fn socket_path(iface: &str) -> PathBuf {
    Path::new(uapi::SOCKET_DIR).join(format!("{iface}.sock"))
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Runs in the foreground until the interface is deleted or a signal arrives.
pub async fn run(iface: &str) -> anyhow::Result<()> {
    let tun = Arc::new(
        Tun::create_for_thread(&TunConfig {
            name: iface.to_string(),
            mtu: 1420,
            offload: std::env::var_os("POLYTUN_NO_OFFLOAD").is_none(),
            up: false,
            queues: 1,
        })
        .with_context(|| format!("creating TUN device {iface}"))?,
    );
    let set: TunnelSet = Arc::new(std::sync::RwLock::new(Vec::new()));
    let data_path =
        Turns::spawn(tun.clone(), set.clone(), 1420).context("starting the WireGuard data path")?;
    let handle = tunnel::spawn(
        TunnelOptions {
            name: iface.to_string(),
            private_key: None,
            listen_port: None,
            peers: Vec::new(),
            mtu: 1420,
            install_routes: false,
            poller: data_path.poller(),
        },
        tun.clone(),
    )?;
    set.write()
        .unwrap_or_else(|e| e.into_inner())
        .push(handle.shared.clone());
    let path = socket_path(iface);
    std::fs::create_dir_all(uapi::SOCKET_DIR)
        .with_context(|| format!("creating {}", uapi::SOCKET_DIR))?;
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            anyhow::bail!("{} is in use by another process", path.display());
        }
        let _ = std::fs::remove_file(&path);
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    let commands = handle.commands.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let commands = commands.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_uapi(stream, commands).await {
                    tracing::debug!("uapi client: {e}");
                }
            });
        }
    });
    tracing::info!("polytun-wg {iface}: UAPI listening on {}", path.display());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                if !interface_exists(iface) {
                    tracing::info!("interface {iface} is gone; exiting");
                    break;
                }
            }
        }
    }
    server.abort();
    drop(data_path);
    let _ = handle.commands.send(TunnelCommand::Shutdown).await;
    let _ = handle.task.await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn serve_uapi(
    stream: UnixStream,
    commands: mpsc::Sender<TunnelCommand>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    loop {
        let Some(first) = lines.next_line().await? else {
            return Ok(());
        };
        if first.is_empty() {
            continue;
        }
        let mut body = Vec::new();
        if first == "set=1" {
            loop {
                match lines.next_line().await? {
                    Some(l) if !l.is_empty() => body.push(l),
                    _ => break,
                }
            }
        } else {
            // get=1 is followed by one blank line.
            let _ = lines.next_line().await?;
        }
        let reply = match uapi::parse_request(&first, &body) {
            Ok(Request::Get) => {
                let (tx, rx) = oneshot::channel();
                let _ = commands.send(TunnelCommand::UapiGet(tx)).await;
                match rx.await {
                    Ok(state) => format!("{}errno=0\n\n", uapi::format_state(&state)),
                    Err(_) => format!("errno={}\n\n", uapi::EIO),
                }
            }
            Ok(Request::Set(set)) => {
                let (tx, rx) = oneshot::channel();
                let _ = commands.send(TunnelCommand::UapiSet(set, tx)).await;
                match rx.await {
                    Ok(Ok(())) => "errno=0\n\n".to_string(),
                    Ok(Err(e)) => {
                        tracing::warn!("uapi set: {e}");
                        format!("errno={}\n\n", e.errno)
                    }
                    Err(_) => format!("errno={}\n\n", uapi::EIO),
                }
            }
            Err(UapiError { errno, message }) => {
                tracing::warn!("uapi: {message}");
                format!("errno={errno}\n\n")
            }
        };
        w.write_all(reply.as_bytes()).await?;
        if first != "set=1" && first != "get=1" {
            return Ok(());
        }
    }
}
