//! polytun-wg — polytun with wireguard-go's command line, for `wg-quick`
//! (`WG_QUICK_USERSPACE_IMPLEMENTATION=polytun-wg`) and `wg`.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!("Usage: polytun-wg [-f/--foreground] INTERFACE-NAME");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut foreground = std::env::var("WG_PROCESS_FOREGROUND").is_ok_and(|v| v == "1");
    let mut iface = None;
    for a in &args {
        match a.as_str() {
            "--version" | "-v" => {
                println!(
                    "polytun-wg v{} (wireguard-go compatible userspace implementation)\n\nUserspace WireGuard daemon for Linux, part of polytun.",
                    env!("CARGO_PKG_VERSION")
                );
                return ExitCode::SUCCESS;
            }
            "-f" | "--foreground" => foreground = true,
            s if s.starts_with('-') => return usage(),
            s => {
                if iface.replace(s.to_string()).is_some() {
                    return usage();
                }
            }
        }
    }
    let Some(iface) = iface else { return usage() };
    if iface.is_empty() || iface.len() > 15 || iface.contains('/') {
        eprintln!("polytun-wg: invalid interface name `{iface}`");
        return ExitCode::from(1);
    }
    if !foreground {
        return detach(&iface);
    }
    polytun_daemon::logging::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(polytun_daemon::config::default_workers())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polytun-wg: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(polytun_daemon::wgcompat::run(&iface)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polytun-wg: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Like wireguard-go: start a foreground copy of ourselves in a new session
/// and return once its UAPI socket answers (or it failed).
fn detach(iface: &str) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("polytun-wg: {e}");
            return ExitCode::from(1);
        }
    };
    let log = std::env::var_os("POLYTUN_WG_LOG").and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let mut cmd = Command::new(exe);
    cmd.arg("--foreground")
        .arg(iface)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match log {
        Some(f) => cmd.stderr(f),
        None => cmd.stderr(Stdio::null()),
    };
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and only detaches the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("polytun-wg: starting the daemon: {e}");
            return ExitCode::from(1);
        }
    };
    let path = polytun_daemon::wgcompat::socket_path(iface);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("polytun-wg: the daemon exited during startup ({status}); run with --foreground to see why");
            return ExitCode::from(1);
        }
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "polytun-wg: the daemon did not open {} within 10 s",
        path.display()
    );
    ExitCode::from(1)
}
