//! The WireGuard data path allocates nothing per packet or per batch
//! (issue 5: "no per-packet allocation on the data path; prove it with a
//! counting allocator").
//!
//! Side A's polytund runs inside this test process, its threads in A's
//! namespace, under a global allocator that counts the allocations made on
//! the data-path threads (`wg-data-*`) and nowhere else; side B is a
//! polytund process. A warm-up transfer each way lets the per-turn lists
//! reach their working size; then checksummed transfers each way (A's
//! outbound turns segment and seal TSO super-packets, its inbound turns open
//! and coalesce them) must leave the count where it was. The record engine
//! alone is checked the same way by `cargo bench -p polytun-core --bench
//! record`; this covers everything around it: TUN reads and splitting, route
//! lookups, GSO sends, batched receives, GRO coalescing and gathered TUN
//! writes.

use polytun_e2e::scenario::{PairNet, OL_A, OL_B};
use polytun_e2e::{bins, wait_ping, xfer, Device, Impl};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

/// Allocations (and reallocations) made on data-path threads.
static DATA_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 0: not known yet, 1: being found out, 2: a data-path thread, 3: another.
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

fn on_data_thread() -> bool {
    ROLE.try_with(|r| match r.get() {
        2 => true,
        1 | 3 => false,
        _ => {
            // Looking at the thread's name may allocate itself (state 1
            // keeps that from recursing or being counted).
            r.set(1);
            let data = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("wg-data"));
            r.set(if data { 2 } else { 3 });
            data
        }
    })
    .unwrap_or(false)
}

fn count() {
    if on_data_thread() {
        DATA_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs polytund with the config at `path` on a thread that has entered the
/// network namespace `ns` (threads it starts inherit it), until `polytun
/// down`.
fn daemon_in(ns: &str, path: std::path::PathBuf) -> std::thread::JoinHandle<()> {
    let ns_path = format!("/run/netns/{ns}");
    std::thread::Builder::new()
        .name("polytund-a".into())
        .spawn(move || {
            let f = std::fs::File::open(&ns_path).unwrap_or_else(|e| panic!("{ns_path}: {e}"));
            // SAFETY: setns on a descriptor we own; affects this thread only.
            let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {ns_path}: {}", std::io::Error::last_os_error());
            let cfg = polytun_daemon::config::load(&path)
                .unwrap_or_else(|e| panic!("config {}: {e}", path.display()));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.interface.workers)
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = rt.block_on(polytun_daemon::service::run(&path, cfg)) {
                panic!("in-process polytund: {e:#}");
            }
        })
        .expect("spawning the daemon thread")
}

#[test]
fn wireguard_data_path_allocates_nothing_per_batch() {
    let net = PairNet::new("dpalloc", false);
    let cfg_a = net.cfg_a(true);
    let cfg_b = net.cfg_b(true);
    let _b = Device::start(&net.b, Impl::Polytun, &cfg_b);
    let path = net
        .a
        .write_file(&format!("{}.toml", cfg_a.iface), &cfg_a.to_polytun_toml());
    let a = daemon_in(net.a.name(), path);
    wait_ping(&net.a, OL_B, Duration::from_secs(20));

    // Warm-up: every per-turn list reaches the size a bulk transfer needs.
    xfer(&net.b, &net.a, OL_B, 5301, 20_000_000);
    xfer(&net.a, &net.b, OL_A, 5302, 20_000_000);
    let before = DATA_ALLOCS.load(Ordering::Relaxed);
    assert!(
        before > 0,
        "no allocation was ever counted on a wg-data thread: is the data path still on \
         threads named wg-data-*? (the count would prove nothing)"
    );

    let bytes = 100_000_000u64;
    xfer(&net.b, &net.a, OL_B, 5303, bytes);
    xfer(&net.a, &net.b, OL_A, 5304, bytes);
    let after = DATA_ALLOCS.load(Ordering::Relaxed);
    // ~1400-byte segments each way: about 145 000 packets, a few thousand
    // batches. One allocation per batch would show as thousands.
    let packets = 2 * bytes / 1400;
    eprintln!(
        "data-path allocations: {before} while starting and warming up, {} during \
         {packets} packets",
        after - before
    );
    assert_eq!(
        after - before,
        0,
        "the WireGuard data path allocated {} times while moving {packets} packets",
        after - before
    );

    let cli = bins::polytun();
    net.a
        .run_ok(&[cli.to_str().unwrap(), "-i", &cfg_a.iface, "down"]);
    a.join().expect("in-process polytund panicked");
}
