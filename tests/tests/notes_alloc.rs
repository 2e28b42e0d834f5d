//! A data-path thread's note to its control task never allocates, however
//! far the control task lags (see `polytun_daemon::notes`): the queue is
//! filled and drained in bursts of every size up to its capacity, as a
//! control task that falls behind under load would, and the sending
//! thread must not allocate once. The same pattern through tokio's mpsc
//! channel allocates (its block list grows), which the control run checks,
//! so this test can tell the two apart.

use polytun_e2e::alloc::Counting;
use std::cell::Cell;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

#[global_allocator]
static ALLOC: Counting = Counting::new(|| COUNTING.try_with(Cell::get).unwrap_or(false));

const CAPACITY: usize = 1024;

/// Allocations made by the sending thread while it queues bursts of
/// 1, 2, 4 … CAPACITY notes, each burst drained by the receiver only after
/// it was sent whole. `send` runs on the counted thread, `drain` elsewhere.
fn sender_allocations(send: impl Fn(u64) -> bool + Sync, drain: impl Fn() -> usize) -> u64 {
    let before = ALLOC.count();
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
    ALLOC.count() - before
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
