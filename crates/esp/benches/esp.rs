//! ESP seal + open through [`EspSa`], per transform, on a batch laid out as
//! the daemon's outbound arena (room for any transform's header and trailer
//! around each packet), with a counting allocator proving that neither
//! direction allocates per packet, and a check that sealed full packets all
//! have one size (what lets a run leave as one gathered UDP GSO send).
//! `cargo bench -p polytun-esp --bench esp`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use polytun_core::PacketBatch;
use polytun_esp::{Direction, EspSa, SaParams, Transform, MAX_HEADER_LEN, MAX_TRAILER_LEN};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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

const MTU: usize = 1420;
const BATCH: usize = 64;

fn sas(t: Transform) -> (EspSa, EspSa) {
    let now = Instant::now();
    let keymat = vec![7u8; t.keymat_len()];
    let p = |d| SaParams::new(0x1000_0001, d, t);
    (
        EspSa::new(p(Direction::Outbound), &keymat, now).unwrap(),
        EspSa::new(p(Direction::Inbound), &keymat, now).unwrap(),
    )
}

/// The daemon's outbound arena: room for any transform's ESP header in
/// front and trailer and ICV behind.
fn arena() -> PacketBatch {
    let mut b = PacketBatch::new(BATCH, MAX_HEADER_LEN, MTU, MAX_TRAILER_LEN);
    for slot in b.slot_buffers() {
        slot[MAX_HEADER_LEN] = 0x45; // an IPv4 packet
    }
    b
}

fn seal_batch(s: &EspSa, b: &mut PacketBatch, now: Instant) {
    b.set_filled(MAX_HEADER_LEN, &[MTU; BATCH]);
    for i in 0..b.len() {
        b.with_packet(i, |p| s.seal(now, p)).unwrap();
    }
}

fn open_batch(o: &EspSa, b: &mut PacketBatch, now: Instant) {
    for i in 0..b.len() {
        let opened = b.with_packet(i, |p| o.open(now, p)).unwrap();
        assert!(!opened.is_dummy());
    }
}

fn bench(c: &mut Criterion) {
    for t in Transform::ALL {
        let (s, o) = sas(t);
        let mut b = arena();
        let now = Instant::now();
        seal_batch(&s, &mut b, now);
        for i in 0..BATCH {
            assert_eq!(
                b.get(i).len(),
                MTU + t.overhead(MTU),
                "{}: sealed full packets of unequal size",
                t.name()
            );
        }
        open_batch(&o, &mut b, now);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..100 {
            seal_batch(&s, &mut b, now);
            open_batch(&o, &mut b, now);
        }
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "{}: allocations in 100 batches of {BATCH} x {MTU} B seal+open: {allocs}",
            t.name()
        );
        assert_eq!(allocs, 0, "{}: ESP allocated on the data path", t.name());

        let mut g = c.benchmark_group(format!("esp {}", t.name()));
        g.throughput(Throughput::Bytes((BATCH * MTU) as u64));
        g.bench_function(format!("seal+open batch of {BATCH} x {MTU} B"), |bn| {
            bn.iter(|| {
                seal_batch(&s, &mut b, now);
                open_batch(&o, &mut b, now);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
