//! The data path's threads: one per TUN queue, each blocking in its own
//! `epoll` on its queue and (the first) on every tunnel's UDP socket, and
//! running the protocol's outbound and inbound turns ([`Turns`]) itself.
//! WireGuard, ESP and OpenVPN (over UDP and TCP) run here.
//!
//! No async runtime sits on the packet path. A packet costs the thread's
//! wake-up, its syscalls and its crypto; a ping's reply leaves from the
//! thread that wrote the request to the TUN device, without a hand-off.
//! Through tokio each turn also paid the reactor's dispatch, the task's
//! wake and poll and the worker's park bookkeeping, which on these
//! machines made the round trip ~40 % longer than boringtun's (measured in
//! docs/fast-path.md, "Latency"). The control tasks stay on tokio: they
//! hear from the threads through the same bounded channels as before.
//!
//! The descriptors the threads poll must not also be registered with
//! tokio, or its reactor would wake for every packet too: the TUN device
//! comes from [`Tun::create_for_thread`] and the sockets from
//! [`polytun_io::UdpSocket::bind_for_thread`].

use polytun_core::FastMap;
use polytun_io::Tun;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One protocol's data path as a thread runs it: a turn per ready
/// descriptor, each reading one batch and doing everything for it. Made
/// on the thread that runs it (its per-turn lists may hold lock guards).
pub trait Turns {
    /// What a registered socket stands for: the tunnel (and the socket,
    /// whose descriptor this keeps open while registered).
    type Receiver: Send + 'static;
    /// `queue` (this thread's TUN queue) is readable.
    fn outbound(&mut self, queue: &Tun);
    /// `receiver`'s socket is readable; opened packets go to `tun` (the
    /// device, which picks each flow's queue).
    fn inbound(&mut self, tun: &Tun, receiver: &Self::Receiver);
    /// `receiver`'s socket is writable, after [`Poller::want_write`] (a
    /// stream with bytes it could not take at once).
    fn writable(&mut self, _receiver: &Self::Receiver) {}
}

const TUN_TOKEN: u64 = u64::MAX - 1;
const WAKE_TOKEN: u64 = u64::MAX;

/// One thread's `epoll` set: its TUN queue, the sockets registered with it,
/// and an `eventfd` that wakes it to stop.
pub struct Poller<R> {
    epoll: OwnedFd,
    wake: OwnedFd,
    stop: AtomicBool,
    /// Registered sockets by descriptor (the `epoll` token). The receiver
    /// holds the socket, which keeps the descriptor open (and so not
    /// reused) until it is deregistered.
    sockets: Mutex<FastMap<RawFd, R>>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl<R> Poller<R> {
    pub(crate) fn new() -> io::Result<Poller<R>> {
        // SAFETY: plain syscalls; the descriptors are owned from here on.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let wake = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let p = Poller {
            epoll,
            wake,
            stop: AtomicBool::new(false),
            sockets: Mutex::new(FastMap::default()),
        };
        p.add(p.wake.as_raw_fd(), WAKE_TOKEN)?;
        Ok(p)
    }

    /// Level-triggered read interest: a turn reads one batch, and what is
    /// left makes the next `epoll_wait` return at once, so the TUN queue
    /// and the sockets take turns under load.
    fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid descriptors and event.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    fn shut_down(&self) {
        self.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Starts receiving on the socket `fd` in this thread, for `receiver`
    /// (which must keep `fd` open).
    pub fn register(&self, fd: RawFd, receiver: R) -> io::Result<()> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        self.add(fd, fd as u64)?;
        sockets.insert(fd, receiver);
        Ok(())
    }

    /// Stops receiving on the socket `fd` (a no-op if it is not registered);
    /// returns once no turn uses it.
    pub fn deregister(&self, fd: RawFd) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = sockets.remove(&fd) {
            // (the descriptor is still open: entry holds the socket)
            self.mute(fd);
            drop(sockets);
            drop(entry);
        }
    }

    /// Asks for `fd`'s writability too, or stops asking. Takes no lock (a
    /// turn may call it for its own socket, a control task while a turn
    /// runs); callers serialize calls for one socket themselves.
    pub fn want_write(&self, fd: RawFd, on: bool) {
        let out = if on { libc::EPOLLOUT as u32 } else { 0 };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32 | out,
            u64: fd as u64,
        };
        // SAFETY: valid event; a descriptor no longer in the set only
        // makes the call fail (ENOENT).
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut ev) };
    }

    /// Stops polling `fd` (a stream that ended, which would stay readable)
    /// without forgetting its receiver: that is [`Poller::deregister`]'s.
    /// Takes no lock, so a turn may call it for its own socket.
    pub fn mute(&self, fd: RawFd) {
        // SAFETY: no event is passed; a descriptor no longer in the set
        // only makes the call fail (ENOENT).
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// The events ready now, as (token, events) (tests look at the interest).
    #[cfg(test)]
    pub(crate) fn ready_now(&self) -> Vec<(u64, u32)> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: `events` is valid for its length.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 8, 0) };
        events[..n.max(0) as usize]
            .iter()
            .map(|e| (e.u64, e.events))
            .collect()
    }

    /// Runs `f` with the receiver registered for `fd`, if any. The lock is
    /// held for the turn, so [`Poller::deregister`] returns only once no
    /// turn uses the socket: the caller may bind its port again at once.
    fn with_registered(&self, fd: RawFd, f: impl FnOnce(&R)) {
        let sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = sockets.get(&fd) {
            f(r);
        }
    }
}

/// The running threads of one interface's data path. Dropping it stops them.
pub struct DataPath<R> {
    pollers: Vec<Arc<Poller<R>>>,
    threads: Vec<JoinHandle<()>>,
}

impl<R: Send + 'static> DataPath<R> {
    /// One thread per queue of `tun`, named `{name}-data-{queue}`, each
    /// running the turns `make` gives it. Sockets are registered with
    /// [`DataPath::poller`].
    pub fn spawn<T: Turns<Receiver = R>>(
        name: &str,
        tun: Arc<Tun>,
        make: impl Fn() -> T + Clone + Send + 'static,
    ) -> io::Result<DataPath<R>> {
        let mut dp = DataPath {
            pollers: Vec::new(),
            threads: Vec::new(),
        };
        for q in 0..tun.queue_count() {
            let queue = match q {
                0 => tun.clone(),
                q => tun.queue(q).ok_or_else(|| {
                    io::Error::other(format!("TUN device {}: no queue {q}", tun.name()))
                })?,
            };
            let poller = Arc::new(Poller::new()?);
            poller.add(queue.raw_fd(), TUN_TOKEN)?;
            let (p, out, make) = (poller.clone(), tun.clone(), make.clone());
            let thread = std::thread::Builder::new()
                .name(format!("{name}-data-{q}"))
                .spawn(move || run(&p, &queue, &out, make()))?;
            dp.pollers.push(poller);
            dp.threads.push(thread);
        }
        Ok(dp)
    }

    /// Where tunnels register their sockets: the first queue's thread
    /// receives for all of them (the TUN write spreads flows over queues).
    pub fn poller(&self) -> Arc<Poller<R>> {
        self.pollers[0].clone()
    }
}

impl<R> Drop for DataPath<R> {
    fn drop(&mut self) {
        for p in &self.pollers {
            p.shut_down();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A thread's loop: `queue` is the TUN queue it reads, `tun` the device it
/// writes received packets to (which picks each flow's queue).
fn run<T: Turns>(poller: &Poller<T::Receiver>, queue: &Tun, tun: &Tun, mut turns: T) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
    loop {
        // SAFETY: `events` is valid for its length.
        let n = unsafe {
            libc::epoll_wait(
                poller.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!("{}: data path epoll: {e}", tun.name());
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            continue;
        }
        for ev in &events[..n as usize] {
            match ev.u64 {
                TUN_TOKEN => turns.outbound(queue),
                WAKE_TOKEN => {
                    if poller.stop.load(Ordering::Acquire) {
                        return;
                    }
                }
                fd => {
                    let (events, out) = (ev.events, libc::EPOLLOUT as u32);
                    poller.with_registered(fd as RawFd, |r| {
                        if events & out != 0 {
                            turns.writable(r);
                        }
                        // readable, or hung up / failed (the read says which)
                        if events & !out != 0 {
                            turns.inbound(tun, r);
                        }
                    });
                }
            }
        }
    }
}
