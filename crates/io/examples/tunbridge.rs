//! Benchmark helper: bridge two TUN devices in two network namespaces in userspace,
//! so a TCP stream between the namespaces crosses user space twice (read + write per
//! direction). Used by `bench/tun_bridge.sh` to compare TUN back ends:
//!
//!   tunbridge MODE NS_A NS_B      MODE = tunrs-offload | tunrs-plain | tuntap
//!
//! NS_A gets 198.51.100.1/24 on `ptba`, NS_B 198.51.100.2/24 on `ptbb`, MTU 1420.
//! Runs until killed.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use polytun_io::{Tun, TunConfig, IDEAL_BATCH_SIZE, MAX_PACKET_LEN};

const OFF: usize = 16;

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    // SAFETY: valid netns fd.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}");
}

async fn pump(from: Arc<Tun>, to: Arc<Tun>) {
    let mut store = vec![vec![0u8; OFF + MAX_PACKET_LEN]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut bufs: Vec<&mut [u8]> = store.iter_mut().map(|b| b.as_mut_slice()).collect();
    loop {
        let n = from
            .recv_batch(&mut bufs, &mut sizes, OFF)
            .await
            .expect("recv");
        if let Err(e) = to.send_batch(&mut bufs[..n], &sizes[..n], OFF).await {
            eprintln!("send: {e}");
        }
    }
}

fn tunrs(offload: bool, a: &str, b: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = |n: &str| TunConfig {
            name: n.into(),
            mtu: 1420,
            offload,
            up: true,
            queues: 1,
        };
        enter(a);
        let ta = Arc::new(Tun::create(&cfg("ptba")).unwrap());
        ta.add_address("198.51.100.1".parse().unwrap(), 24).unwrap();
        enter(b);
        let tb = Arc::new(Tun::create(&cfg("ptbb")).unwrap());
        tb.add_address("198.51.100.2".parse().unwrap(), 24).unwrap();
        eprintln!("ready offload={}", ta.offload_enabled());
        let x = tokio::spawn(pump(ta.clone(), tb.clone()));
        let y = tokio::spawn(pump(tb, ta));
        let _ = tokio::join!(x, y);
    });
}

fn tuntap(a: &str, b: &str) {
    let setup = |ns: &str, name: &str, addr: &str| {
        enter(ns);
        let i = tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tun).unwrap();
        for args in [
            vec!["-n", ns, "link", "set", "dev", name, "mtu", "1420", "up"],
            vec!["-n", ns, "addr", "add", addr, "dev", name],
        ] {
            assert!(std::process::Command::new("ip")
                .args(&args)
                .status()
                .unwrap()
                .success());
        }
        Arc::new(i)
    };
    let ia = setup(a, "ptba", "198.51.100.1/24");
    let ib = setup(b, "ptbb", "198.51.100.2/24");
    eprintln!("ready tun-tap");
    let run = |from: Arc<tun_tap::Iface>, to: Arc<tun_tap::Iface>| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let n = from.recv(&mut buf).unwrap();
                let _ = to.send(&buf[..n]);
            }
        })
    };
    let x = run(ia.clone(), ib.clone());
    let y = run(ib, ia);
    let _ = (x.join(), y.join());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(args.len(), 4, "usage: tunbridge MODE NS_A NS_B");
    match args[1].as_str() {
        "tunrs-offload" => tunrs(true, &args[2], &args[3]),
        "tunrs-plain" => tunrs(false, &args[2], &args[3]),
        "tuntap" => tuntap(&args[2], &args[3]),
        m => panic!("unknown mode {m}"),
    }
}
