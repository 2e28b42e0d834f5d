//! Network namespaces and the processes the harness starts in them.
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A name unique among all concurrently running tests on this host: `prefix` + pid + counter in
/// hex. `prefix` is at most 4 characters, so the result fits IFNAMSIZ (≤ 15 characters).
/// Needed because `/var/run/wireguard/IFACE.sock` and `/run/polytun/IFACE.sock` are shared by
/// all namespaces.
pub fn unique_ifname(prefix: &str) -> String {
    assert!(prefix.len() <= 4, "interface prefix too long: {prefix}");
    let n = format!("{prefix}{:x}x{:x}", std::process::id(), next());
    assert!(n.len() <= 15, "interface name {n} too long");
    n
}

/// Output of a command run to completion.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

struct Proc {
    label: String,
    child: Child,
    log: PathBuf,
}

/// A network namespace named `pt-<test>-<pid>-<n>` with `lo` up. Dropping it kills (SIGTERM, then
/// SIGKILL, by PID) every process the harness started in it and any process still inside it, then
/// deletes it. If the test is panicking, the tails of all its logs are printed first.
pub struct Netns {
    name: String,
    dir: PathBuf,
    procs: Mutex<Vec<Proc>>,
    cleanup_files: Mutex<Vec<PathBuf>>,
}

impl Netns {
    /// `test` is a short name for the test (used in the namespace name and the log directory).
    pub fn new(test: &str) -> Netns {
        crate::bins::require_root();
        let name = format!("pt-{test}-{}-{}", std::process::id(), next());
        let dir = std::env::temp_dir().join("polytun-e2e").join(&name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        let ns = Netns {
            name,
            dir,
            procs: Mutex::new(Vec::new()),
            cleanup_files: Mutex::new(Vec::new()),
        };
        let ip = crate::bins::tool("ip");
        let st = Command::new(&ip)
            .args(["netns", "add", &ns.name])
            .status()
            .expect("run ip netns add");
        assert!(st.success(), "ip netns add {} failed", ns.name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This namespace's scratch/log directory (removed when the test passes, kept on failure).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write a file into [`Netns::dir`] (mode 0600) and return its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.dir.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        std::io::Write::write_all(&mut f, contents.as_bytes()).unwrap();
        p
    }

    /// Remove this file when the namespace is dropped (e.g. a stale UAPI socket).
    pub fn cleanup_file(&self, p: impl Into<PathBuf>) {
        self.cleanup_files.lock().unwrap().push(p.into());
    }

    /// `ip -n NS args...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        let ip = crate::bins::tool("ip");
        let o = Command::new(&ip)
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            o.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        assert!(!args.is_empty());
        let mut c = Command::new(crate::bins::tool("ip"));
        c.args(["netns", "exec", &self.name]).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::null());
        c
    }

    fn log_path(&self, label: &str) -> PathBuf {
        let safe: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        for i in 0.. {
            let p = self.dir.join(format!("{safe}.{i}.log"));
            if !p.exists() {
                return p;
            }
        }
        unreachable!()
    }

    /// Start `args` in the background inside the namespace; stdout+stderr go to a log file.
    /// Returns the PID (`ip netns exec` execs in place, so it is the command's own PID).
    pub fn spawn(&self, label: &str, args: &[&str]) -> u32 {
        self.spawn_env(label, args, &[])
    }

    pub fn spawn_env(&self, label: &str, args: &[&str], env: &[(&str, &str)]) -> u32 {
        let log = self.log_path(label);
        let f = File::create(&log).expect("create log");
        let child = self
            .command(args, env)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?} in {}: {e}", self.name));
        let pid = child.id();
        self.procs.lock().unwrap().push(Proc {
            label: format!("{label} (pid {pid}: {})", args.join(" ")),
            child,
            log,
        });
        pid
    }

    /// The combined stdout+stderr so far of a process started with [`Netns::spawn`].
    pub fn log_of(&self, pid: u32) -> String {
        let procs = self.procs.lock().unwrap();
        let p = procs
            .iter()
            .find(|p| p.child.id() == pid)
            .expect("unknown pid");
        fs::read_to_string(&p.log).unwrap_or_default()
    }

    /// Has the process exited? Returns its status once it has (reaping it).
    pub fn try_wait(&self, pid: u32) -> Option<ExitStatus> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .expect("unknown pid");
        p.child.try_wait().expect("try_wait")
    }

    /// Wait up to `timeout` for a spawned process to exit.
    pub fn wait_exit(&self, pid: u32, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait(pid) {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, wait up to 3 s, then SIGKILL. Only for processes this harness started.
    pub fn kill(&self, pid: u32) -> Option<ExitStatus> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .expect("unknown pid");
        terminate(&mut p.child)
    }

    /// Run a command to completion inside the namespace (killed after `timeout`).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Out {
        let out = self.log_path(&format!("run-{}", basename(args[0])));
        let err = out.with_extension("err");
        let mut child = self
            .command(args, env)
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?} in {}: {e}", self.name));
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= end {
                terminate(&mut child);
                panic!(
                    "`{}` in {} did not finish within {timeout:?}; stdout: {} stderr: {}",
                    args.join(" "),
                    self.name,
                    fs::read_to_string(&out).unwrap_or_default(),
                    fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let o = Out {
            status,
            stdout: fs::read_to_string(&out).unwrap_or_default(),
            stderr: fs::read_to_string(&err).unwrap_or_default(),
        };
        let _ = fs::remove_file(&out);
        let _ = fs::remove_file(&err);
        o
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[], Duration::from_secs(30))
    }

    /// Run and panic (with its output) unless it exits 0; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.ok(),
            "`{}` in {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            self.name,
            o.status,
            o.stdout,
            o.stderr
        );
        o.stdout
    }

    /// PIDs of every process currently inside the namespace.
    /// Drops every UDP datagram this namespace sends to `port` (an
    /// nftables table `drop_out`), until [`Netns::undrop_udp_out`].
    pub fn drop_udp_out(&self, port: u16) {
        let nft = crate::bins::tool("nft");
        let nft = nft.to_str().unwrap();
        self.run_ok(&[nft, "add table inet drop_out"]);
        self.run_ok(&[
            nft,
            "add chain inet drop_out o { type filter hook output priority 0 ; }",
        ]);
        self.run_ok(&[
            nft,
            &format!("add rule inet drop_out o udp dport {port} drop"),
        ]);
    }

    pub fn undrop_udp_out(&self) {
        let nft = crate::bins::tool("nft");
        self.run_ok(&[nft.to_str().unwrap(), "delete table inet drop_out"]);
    }

    pub fn pids(&self) -> Vec<u32> {
        let o = Command::new(crate::bins::tool("ip"))
            .args(["netns", "pids", &self.name])
            .output();
        match o {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn print_logs(&self) {
        let procs = self.procs.lock().unwrap();
        eprintln!(
            "===== netns {} failed test; logs in {}",
            self.name,
            self.dir.display()
        );
        for p in procs.iter() {
            eprintln!("----- {} : last lines of {}", p.label, p.log.display());
            eprintln!("{}", tail(&p.log, 40));
        }
    }
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

fn tail(p: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(p) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut s = String::new();
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    s.push_str(&String::from_utf8_lossy(&buf));
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a PID we started (the Child has not been reaped yet, so the PID
    // cannot have been reused).
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn terminate(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    signal(child.id(), libc::SIGTERM);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), libc::SIGKILL);
    child.wait().ok()
}

impl Drop for Netns {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            self.print_logs();
        }
        // our own children, newest first
        {
            let mut procs = self.procs.lock().unwrap();
            for p in procs.iter_mut().rev() {
                terminate(&mut p.child);
            }
        }
        // daemons that detached from a process we started (wg-quick → polytun-wg, ...): they
        // live in this uniquely named namespace, so they are ours too
        for round in 0..2 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                signal(
                    *pid,
                    if round == 0 {
                        libc::SIGTERM
                    } else {
                        libc::SIGKILL
                    },
                );
            }
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && !self.pids().is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        for f in self.cleanup_files.lock().unwrap().iter() {
            let _ = fs::remove_file(f);
        }
        if !failed && std::env::var_os("PT_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// One end of a veth pair.
#[derive(Clone, Debug)]
pub struct Veth {
    pub ns: String,
    pub dev: String,
    pub v4: String,
    pub v6: String,
}

/// Connect two namespaces with a veth pair: `a` gets 192.0.2.1/24 + 2001:db8::1/64, `b` gets
/// 192.0.2.2/24 + 2001:db8::2/64 (nodad). Returns the two ends.
pub fn veth_pair(a: &Netns, b: &Netns) -> (Veth, Veth) {
    veth_pair_net(a, b, "192.0.2", "2001:db8:")
}

/// Like [`veth_pair`] with another /24 (`"203.0.113"`) and /64 prefix (`"2001:db8:1:"`).
pub fn veth_pair_net(a: &Netns, b: &Netns, v4net: &str, v6net: &str) -> (Veth, Veth) {
    veth_link(
        a,
        [&format!("{v4net}.1/24"), &format!("{v6net}:1/64")],
        b,
        [&format!("{v4net}.2/24"), &format!("{v6net}:2/64")],
    )
}

/// Connect two namespaces with a veth pair whose ends get the given IPv4 and IPv6 addresses
/// (with prefix lengths; IPv6 without duplicate address detection). Returns the two ends.
pub fn veth_link(a: &Netns, a_addrs: [&str; 2], b: &Netns, b_addrs: [&str; 2]) -> (Veth, Veth) {
    let base = unique_ifname("pv");
    let (da, db) = (format!("{base}a"), format!("{base}b"));
    let o = Command::new(crate::bins::tool("ip"))
        .args([
            "link",
            "add",
            &da,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &db,
        ])
        .args(["netns", b.name()])
        .output()
        .expect("ip link add veth");
    assert!(
        o.status.success(),
        "veth: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let end = |ns: &Netns, dev: &String, [v4, v6]: [&str; 2]| {
        ns.ip(&["addr", "add", v4, "dev", dev]);
        ns.ip(&["addr", "add", v6, "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
        let addr = |a: &str| a.split('/').next().unwrap_or(a).to_string();
        Veth {
            ns: ns.name().to_string(),
            dev: dev.clone(),
            v4: addr(v4),
            v6: addr(v6),
        }
    };
    (end(a, &da, a_addrs), end(b, &db, b_addrs))
}

/// Three namespaces: `left` — `router` — `right`. left is 192.0.2.2 (router 192.0.2.1), right is
/// 203.0.113.2 (router 203.0.113.1); default routes point at the router, which forwards and —
/// with `nat` — masquerades left's traffic behind 203.0.113.1 (nftables).
pub struct Router {
    pub left: Netns,
    pub router: Netns,
    pub right: Netns,
    pub left_addr: String,
    pub right_addr: String,
}

impl Router {
    pub fn new(test: &str, nat: bool) -> Router {
        let left = Netns::new(test);
        let router = Netns::new(test);
        let right = Netns::new(test);
        // router is the ".1" end on both links
        let (_rl, l) = veth_pair_net(&router, &left, "192.0.2", "2001:db8:");
        let (_rr, r) = veth_pair_net(&router, &right, "203.0.113", "2001:db8:1:");
        left.ip(&["route", "add", "default", "via", "192.0.2.1"]);
        right.ip(&["route", "add", "default", "via", "203.0.113.1"]);
        left.ip(&["-6", "route", "add", "default", "via", "2001:db8::1"]);
        right.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
        router.run_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        router.run_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        if nat {
            let nft = crate::bins::tool("nft");
            let nft = nft.to_str().unwrap();
            router.run_ok(&[nft, "add table ip nat"]);
            router.run_ok(&[
                nft,
                "add chain ip nat post { type nat hook postrouting priority 100 ; }",
            ]);
            router.run_ok(&[
                nft,
                "add rule ip nat post ip saddr 192.0.2.0/24 oifname",
                &_rr.dev,
                "masquerade",
            ]);
        }
        Router {
            left_addr: l.v4,
            right_addr: r.v4,
            left,
            router,
            right,
        }
    }
}
