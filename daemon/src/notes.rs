//! The queue that carries the data path's notes (traffic seen, keys
//! expiring, handshake packets) to a tunnel's control task.
//!
//! tokio's mpsc channel keeps its slots in a linked list of 32-slot blocks
//! and allocates a block whenever a send finds no spare one: at the first
//! crossing into a second block, whenever the receiver lags further behind
//! than it ever did, and after it freed blocks it could not hand back. The
//! sender is then a data-path thread. Traffic notes come about once a second
//! per direction, so the first crossing can come at any time; in a slow run
//! datapath_alloc caught it (one allocation in 142 857 packets, on the
//! WireGuard and the ESP threads). Here the slots are allocated once, with
//! the channel, and a send never allocates: std's bounded channel holds the
//! notes, a tokio `Notify` wakes the control task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::Notify;

/// What both ends share besides the queue itself.
struct Signal {
    wake: Notify,
    /// Notes sent and not yet received (std's receiver cannot tell).
    queued: AtomicUsize,
}

/// A queue of at most `capacity` notes (at least one).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (queue, rx) = mpsc::sync_channel(capacity.max(1));
    let signal = Arc::new(Signal {
        wake: Notify::new(),
        queued: AtomicUsize::new(0),
    });
    (
        Sender {
            queue: Some(queue),
            signal: signal.clone(),
        },
        Receiver { queue: rx, signal },
    )
}

pub struct Sender<T> {
    /// `None` only while dropping, so that the receiver, woken, sees the
    /// queue closed once this was the last sender.
    queue: Option<mpsc::SyncSender<T>>,
    signal: Arc<Signal>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            queue: self.queue.clone(),
            signal: self.signal.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("notes::Sender")
            .field("queued", &self.signal.queued.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T> Sender<T> {
    /// Queues `note` without blocking or allocating; gives it back when the
    /// queue is full or the control task is gone.
    pub fn try_send(&self, note: T) -> Result<(), T> {
        self.push(note).map_err(|e| match e {
            mpsc::TrySendError::Full(note) | mpsc::TrySendError::Disconnected(note) => note,
        })
    }

    /// Queues `note`, waiting for room (for the senders that are tasks,
    /// not data-path threads); gives it back when the control task is gone.
    pub async fn send(&self, mut note: T) -> Result<(), T> {
        loop {
            match self.push(note) {
                Ok(()) => return Ok(()),
                Err(mpsc::TrySendError::Disconnected(back)) => return Err(back),
                // Full: a control task that far behind drains it within
                // milliseconds; not worth a second wake-up on every receive.
                Err(mpsc::TrySendError::Full(back)) => note = back,
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    fn push(&self, note: T) -> Result<(), mpsc::TrySendError<T>> {
        let Some(queue) = &self.queue else {
            return Err(mpsc::TrySendError::Disconnected(note));
        };
        // Counted before it can be received, so the count never wraps.
        self.signal.queued.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(note) {
            Ok(()) => {
                self.signal.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                self.signal.queued.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        drop(self.queue.take());
        self.signal.wake.notify_one();
    }
}

pub struct Receiver<T> {
    queue: mpsc::Receiver<T>,
    signal: Arc<Signal>,
}

impl<T> Receiver<T> {
    /// The next note; `None` once every sender is gone and the queue is
    /// empty. Cancel-safe: a note is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.queue.try_recv() {
                Ok(note) => {
                    self.signal.queued.fetch_sub(1, Ordering::Relaxed);
                    return Some(note);
                }
                Err(mpsc::TryRecvError::Disconnected) => return None,
                // A send after this check leaves a permit for `notified`.
                Err(mpsc::TryRecvError::Empty) => self.signal.wake.notified().await,
            }
        }
    }

    /// The next note if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let note = self.queue.try_recv().ok()?;
        self.signal.queued.fetch_sub(1, Ordering::Relaxed);
        Some(note)
    }

    /// How many notes are queued.
    pub fn len(&self) -> usize {
        self.signal.queued.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn notes_arrive_in_order_and_a_full_queue_gives_the_note_back() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(3));
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), None);
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_note_from_another_thread() {
        let (tx, mut rx) = channel(8);
        let (done, wait_done) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.try_send(7u32).unwrap();
            // kept until the note was received: the wake-up is the send's,
            // not the drop's
            let _ = wait_done.recv();
        });
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(got, Ok(Some(7)));
        done.send(()).unwrap();
        t.join().unwrap();
    }

    #[tokio::test]
    async fn recv_ends_when_the_last_sender_is_dropped() {
        let (tx, mut rx) = channel::<u8>(4);
        let tx2 = tx.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(tx);
            std::thread::sleep(Duration::from_millis(30));
            drop(tx2);
        });
        let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(got, Ok(None));
        t.join().unwrap();
    }

    #[tokio::test]
    async fn send_waits_for_room_and_fails_once_the_receiver_is_gone() {
        let (tx, mut rx) = channel(1);
        tx.try_send(1).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(rx.recv().await, Some(2));
        drop(rx);
        assert_eq!(tx.send(3).await, Err(3));
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_no_note() {
        let (tx, mut rx) = channel(4);
        // select! drops the pending recv when the timer fires first
        let r = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert!(r.is_err());
        tx.try_send(5).unwrap();
        assert_eq!(rx.recv().await, Some(5));
    }
}
