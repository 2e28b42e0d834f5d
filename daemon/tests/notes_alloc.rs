//! A data-path thread's note to its control task never allocates, however
//! far the control task lags (see `polytun_daemon::notes`): the queue is
//! filled and drained in bursts of every size up to its capacity, as a
//! control task that falls behind under load would, and the sending
//! thread must not allocate once. The same pattern through tokio's mpsc
//! channel allocates (its block list grows), which the control run checks,
//! so this test can tell the two apart.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static COUNTED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        COUNTED.fetch_add(1, Ordering::Relaxed);
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

const CAPACITY: usize = 1024;

/// Allocations made by the sending thread while it queues bursts of
/// 1, 2, 4 … CAPACITY notes, each burst drained by the receiver only after
/// it was sent whole. `send` runs on the counted thread, `drain` elsewhere.
fn sender_allocations(send: impl Fn(u64) -> bool + Sync, drain: impl Fn() -> usize) -> u64 {
    let before = COUNTED.load(Ordering::Relaxed);
    let mut burst = 1;
    while burst <= CAPACITY {
        std::thread::scope(|s| {
            s.spawn(|| {
                COUNTING.with(|c| c.set(true));
                for i in 0..burst {
                    assert!(send(i as u64), "note {i} of a burst of {burst} was refused");
                }
                COUNTING.with(|c| c.set(false));
            });
        });
        assert_eq!(drain(), burst);
        burst *= 2;
    }
    COUNTED.load(Ordering::Relaxed) - before
}

#[test]
fn a_lagging_control_task_makes_a_note_allocate_only_with_tokio_mpsc() {
    let (tx, rx) = polytun_daemon::notes::channel::<u64>(CAPACITY);
    let rx = std::sync::Mutex::new(rx);
    let drain = || {
        let mut rx = rx.lock().unwrap();
        std::iter::from_fn(|| rx.try_recv()).count()
    };
    let ours = sender_allocations(|n| tx.try_send(n).is_ok(), drain);

    // The control run: the same bursts through tokio's channel.
    let (ttx, trx) = tokio::sync::mpsc::channel::<u64>(CAPACITY);
    let trx = std::sync::Mutex::new(trx);
    let tdrain = || {
        let mut rx = trx.lock().unwrap();
        std::iter::from_fn(|| rx.try_recv().ok()).count()
    };
    let tokio = sender_allocations(|n| ttx.try_send(n).is_ok(), tdrain);

    eprintln!("sender allocations: notes {ours}, tokio mpsc {tokio}");
    assert!(
        tokio > 0,
        "tokio's mpsc did not allocate either: this pattern no longer shows the difference"
    );
    assert_eq!(
        ours, 0,
        "a note allocated {ours} times on the sending thread"
    );
}
