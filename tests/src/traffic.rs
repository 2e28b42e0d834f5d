//! Polling, ping and checksummed transfers.
use crate::{bins, Netns};
use std::time::{Duration, Instant};

/// Bytes moved by the standard checksummed transfer (≥ 50 MB, issue 2).
pub const XFER_BYTES: u64 = 50 * 1024 * 1024;

/// Poll `cond` every 100 ms until it is true; panic naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `ping -c count -i 0.2` from `ns` to `addr` in the background
/// (5 per second); read its result with [`ping_result`].
pub fn spawn_ping(ns: &Netns, addr: &str, count: u32) -> u32 {
    let p = bins::tool("ping");
    let c = count.to_string();
    ns.spawn(
        "ping",
        &[
            p.to_str().unwrap(),
            "-c",
            &c,
            "-i",
            "0.2",
            "-W",
            "2",
            "-D",
            "-O",
            addr,
        ],
    )
}

/// The lines of a finished [`spawn_ping`] about pings that got no answer
/// (with their timestamps).
pub fn ping_losses(ns: &Netns, pid: u32) -> Vec<String> {
    ns.log_of(pid)
        .lines()
        .filter(|l| l.contains("no answer yet"))
        .map(str::to_string)
        .collect()
}

/// Waits for a ping started by [`spawn_ping`]; returns (sent, received).
pub fn ping_result(ns: &Netns, pid: u32, timeout: Duration) -> (u32, u32) {
    ns.wait_exit(pid, timeout)
        .unwrap_or_else(|| panic!("ping did not finish within {timeout:?}"));
    let text = ns.log_of(pid);
    text.lines()
        .find_map(|l| {
            let (sent, rest) = l.split_once(" packets transmitted, ")?;
            let recv = rest.split(' ').next()?;
            Some((sent.trim().parse().ok()?, recv.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("cannot parse ping output: {text}"))
}

/// `ping -c count` from `ns` to `addr` (0.2 s interval, 1 s wait); returns the loss in percent.
pub fn ping(ns: &Netns, addr: &str, count: u32) -> f64 {
    ping_with(ns, addr, count, &[])
}

/// Like [`ping`] with IPv4 packets of `size` bytes and DF set (`-M do`): the
/// packet loss in percent.
pub fn ping_df(ns: &Netns, addr: &str, size: usize, count: u32) -> f64 {
    let payload = (size - 28).to_string();
    ping_with(ns, addr, count, &["-s", &payload, "-M", "do"])
}

/// Like [`ping`] from the source address `src` (`-I`): the packet loss in percent.
pub fn ping_from(ns: &Netns, src: &str, addr: &str, count: u32) -> f64 {
    ping_with(ns, addr, count, &["-I", src])
}

/// `ping` with `extra` options (before the address): the packet loss in percent.
pub fn ping_with(ns: &Netns, addr: &str, count: u32, extra: &[&str]) -> f64 {
    let p = bins::tool("ping");
    let c = count.to_string();
    let mut args = vec![p.to_str().unwrap(), "-c", &c, "-i", "0.2", "-W", "1", "-q"];
    args.extend_from_slice(extra);
    args.push(addr);
    let o = ns.run_env(&args, &[], Duration::from_secs(10 + u64::from(count)));
    let text = format!("{}{}", o.stdout, o.stderr);
    text.lines()
        .find_map(|l| {
            let i = l.find("% packet loss")?;
            l[..i].rsplit([' ', ',']).next()?.parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("cannot parse ping output: {text}"))
}

/// Ping once a second until a reply comes back (the first packets trigger the handshake).
pub fn wait_ping(ns: &Netns, addr: &str, timeout: Duration) {
    let p = bins::tool("ping");
    let end = Instant::now() + timeout;
    loop {
        let o = ns.run_env(
            &[p.to_str().unwrap(), "-c", "1", "-W", "1", "-q", addr],
            &[],
            Duration::from_secs(5),
        );
        if o.ok() {
            return;
        }
        assert!(
            Instant::now() < end,
            "no ping reply from {addr} in {} within {timeout:?}: {}{}",
            ns.name(),
            o.stdout,
            o.stderr
        );
    }
}

/// A transfer in progress (see [`xfer_start`]).
pub struct XferRun<'a> {
    server_ns: &'a Netns,
    client_ns: &'a Netns,
    server: u32,
    client: u32,
    bytes: u64,
}

fn result_line(log: &str) -> Option<(u64, String)> {
    let l = log.lines().find(|l| l.starts_with("bytes="))?;
    let mut it = l.split_whitespace();
    let n = it.next()?.strip_prefix("bytes=")?.parse().ok()?;
    let h = it.next()?.strip_prefix("sha256=")?.to_string();
    Some((n, h))
}

/// Start `pt-xfer serve addr:port` in `server_ns` and `pt-xfer send` of `bytes` in `client_ns`.
pub fn xfer_start<'a>(
    server_ns: &'a Netns,
    client_ns: &'a Netns,
    addr: &str,
    port: u16,
    bytes: u64,
) -> XferRun<'a> {
    let x = bins::pt_xfer();
    let x = x.to_str().unwrap();
    let target = if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    };
    let bind = if addr.contains(':') {
        format!("[::]:{port}")
    } else {
        format!("0.0.0.0:{port}")
    };
    let server = server_ns.spawn("xfer-serve", &[x, "serve", &bind, "60"]);
    // the sender retries connecting for 20 s, so no readiness race
    let seed = u64::from(std::process::id()) ^ bytes;
    let client = client_ns.spawn(
        "xfer-send",
        &[x, "send", &target, &bytes.to_string(), &seed.to_string()],
    );
    XferRun {
        server_ns,
        client_ns,
        server,
        client,
        bytes,
    }
}

impl XferRun<'_> {
    /// Has the sender finished?
    pub fn done(&self) -> bool {
        self.client_ns.try_wait(self.client).is_some()
    }

    /// Wait for both ends and assert that every byte arrived with a matching sha256.
    pub fn finish(self, timeout: Duration) {
        let st = self.client_ns.wait_exit(self.client, timeout);
        let clog = self.client_ns.log_of(self.client);
        assert!(
            matches!(st, Some(s) if s.success()),
            "pt-xfer send did not complete within {timeout:?} ({st:?}):\n{clog}"
        );
        let st = self
            .server_ns
            .wait_exit(self.server, Duration::from_secs(10));
        let slog = self.server_ns.log_of(self.server);
        assert!(
            matches!(st, Some(s) if s.success()),
            "pt-xfer serve did not complete ({st:?}):\n{slog}"
        );
        let (cn, ch) =
            result_line(&clog).unwrap_or_else(|| panic!("no result from sender:\n{clog}"));
        let (sn, sh) =
            result_line(&slog).unwrap_or_else(|| panic!("no result from server:\n{slog}"));
        assert_eq!(cn, self.bytes, "sender sent a different amount");
        assert_eq!(
            sn, self.bytes,
            "server received {sn} of {} bytes",
            self.bytes
        );
        assert_eq!(sh, ch, "sha256 mismatch: data corrupted in the tunnel");
        eprintln!(
            "transfer ok: {} bytes, sha256 {sh}; {}",
            sn,
            clog.lines().find(|l| l.contains("Gbit/s")).unwrap_or("")
        );
    }
}

/// A complete checksummed TCP transfer of `bytes` from `client_ns` to `addr:port` (a listener
/// started in `server_ns`), asserting byte count and sha256 on both ends.
pub fn xfer(server_ns: &Netns, client_ns: &Netns, addr: &str, port: u16, bytes: u64) {
    xfer_start(server_ns, client_ns, addr, port, bytes).finish(Duration::from_secs(120));
}

/// The network namespace's SNMP counters: `/proc/net/snmp` as `"Udp:InCsumErrors"` and the
/// like, `/proc/net/snmp6` under its own names (`"Udp6InCsumErrors"`).
pub fn snmp(ns: &Netns) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    let v4 = ns.run_ok(&["cat", "/proc/net/snmp"]);
    let lines: Vec<&str> = v4.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((group, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                m.insert(format!("{group}:{n}"), v);
            }
        }
    }
    for l in ns.run_ok(&["cat", "/proc/net/snmp6"]).lines() {
        if let Some((n, v)) = l.split_once(char::is_whitespace) {
            if let Ok(v) = v.trim().parse() {
                m.insert(n.to_string(), v);
            }
        }
    }
    m
}
