//! The record engine: seal + open of one packet and of a batch, in place,
//! with a counting allocator proving the engine allocates nothing per
//! packet. `cargo bench -p polytun-core --bench record`.
//!
//! `record-1400/seal+open/<cipher>` is one 1400-byte packet sealed and
//! opened (no padding, 8-byte AAD), timed in thread CPU time: what
//! bench/record-vs-openssl.sh sets against `openssl speed -evp <cipher>
//! -bytes 1400` (user CPU time; issue 5's bar: ≥ 70 %).

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use polytun_core::aead::{Aead, Algorithm};
use polytun_core::record::{OpeningKey, RecordFormat, SealingKey};
use polytun_core::{Limits, PacketBatch};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarding to the system allocator with the caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: p was allocated by System.alloc with layout l.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// WireGuard's layout (the crate's own format lives in polytun-wireguard;
/// core must not depend on it).
struct Wg;
impl RecordFormat for Wg {
    fn header_len(&self) -> usize {
        16
    }
    fn write_header(&self, h: &mut [u8], counter: u64) {
        h[..4].copy_from_slice(&4u32.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&counter.to_le_bytes());
    }
    fn nonce(&self, counter: u64) -> [u8; 12] {
        let mut n = [0; 12];
        n[4..].copy_from_slice(&counter.to_le_bytes());
        n
    }
    fn trailer_len(&self, len: usize) -> usize {
        len.next_multiple_of(16).min(1420) - len.min(1420)
    }
}

/// An ESP-like layout without padding: SPI(4) ‖ counter(4) as header and
/// AAD, nonce from the counter. The cipher's cost and the engine's, nothing
/// else, for the comparison with `openssl speed`.
struct Bare;
impl RecordFormat for Bare {
    fn header_len(&self) -> usize {
        8
    }
    fn write_header(&self, h: &mut [u8], counter: u64) {
        h[..4].copy_from_slice(&0x1000_0001u32.to_be_bytes());
        h[4..8].copy_from_slice(&(counter as u32).to_be_bytes());
    }
    fn nonce(&self, counter: u64) -> [u8; 12] {
        let mut n = [0x5a; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        n
    }
    fn aad(&self, h: &[u8], _c: u64, out: &mut [u8; 32]) -> usize {
        out[..8].copy_from_slice(&h[..8]);
        8
    }
}

/// CPU time of the calling thread: what `openssl speed` divides by (user
/// CPU time), so the comparison holds on a machine shared with other work.
struct ThreadCpu(WallTime);

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, i: Duration) -> Duration {
        thread_cpu().saturating_sub(i)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.0.formatter()
    }
}

/// The payload size of the comparison with `openssl speed -bytes 1400`.
const SIZE: usize = 1400;

const MTU: usize = 1420;
const BATCH: usize = 64;

fn keys(alg: Algorithm) -> (SealingKey<Wg>, OpeningKey<Wg>) {
    let now = Instant::now();
    let k = vec![3u8; alg.key_len()];
    (
        SealingKey::new(Aead::new(alg, &k).unwrap(), Wg, Limits::default(), now),
        OpeningKey::new(
            Aead::new(alg, &k).unwrap(),
            Wg,
            8192,
            Limits::default(),
            now,
        ),
    )
}

fn roundtrip_batch(s: &SealingKey<Wg>, o: &OpeningKey<Wg>, batch: &mut PacketBatch, now: Instant) {
    let sizes = [MTU; BATCH];
    batch.set_filled(16, &sizes);
    for i in 0..batch.len() {
        batch.with_packet(i, |p| s.seal(now, p)).unwrap();
    }
    for i in 0..batch.len() {
        let c = u64::from_le_bytes(batch.get(i)[8..16].try_into().unwrap());
        batch.with_packet(i, |p| o.open(now, p, c)).unwrap();
    }
}

fn single(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("record-1400");
    g.throughput(Throughput::Bytes(SIZE as u64));
    for alg in [
        Algorithm::Aes128Gcm,
        Algorithm::Aes256Gcm,
        Algorithm::ChaCha20Poly1305,
    ] {
        let now = Instant::now();
        let k = vec![3u8; alg.key_len()];
        let s = SealingKey::new(Aead::new(alg, &k).unwrap(), Bare, Limits::default(), now);
        let o = OpeningKey::new(
            Aead::new(alg, &k).unwrap(),
            Bare,
            8192,
            Limits::default(),
            now,
        );
        let mut batch = PacketBatch::new(1, 8, SIZE, 16);
        let mut roundtrip = || {
            batch.set_filled(8, &[SIZE]);
            batch.with_packet(0, |p| s.seal(now, p)).unwrap();
            let c = u32::from_be_bytes(batch.get(0)[4..8].try_into().unwrap());
            batch
                .with_packet(0, |p| o.open(now, p, u64::from(c)))
                .unwrap();
        };
        roundtrip();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            roundtrip();
        }
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(allocs, 0, "the record engine allocated on the data path");
        g.bench_function(format!("seal+open/{}", alg.name()), |b| {
            b.iter(&mut roundtrip)
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    for alg in [Algorithm::ChaCha20Poly1305, Algorithm::Aes256Gcm] {
        let (s, o) = keys(alg);
        let mut batch = PacketBatch::new(BATCH, 16, MTU, 32);
        let now = Instant::now();
        // Warm up, then prove: a full batch round trip allocates nothing.
        roundtrip_batch(&s, &o, &mut batch, now);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..100 {
            roundtrip_batch(&s, &o, &mut batch, now);
        }
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "{}: allocations in 100 batches of {BATCH} x {MTU} B seal+open: {allocs}",
            alg.name()
        );
        assert_eq!(allocs, 0, "the record engine allocated on the data path");

        let mut g = c.benchmark_group(format!("record {}", alg.name()));
        g.throughput(Throughput::Bytes((BATCH * MTU) as u64));
        g.bench_function(format!("seal+open batch of {BATCH} x {MTU} B"), |b| {
            b.iter(|| roundtrip_batch(&s, &o, &mut batch, now))
        });
        g.finish();
    }
}

criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpu(WallTime));
    targets = single
}
criterion_group!(benches, bench);
criterion_main!(cpu_time, benches);
