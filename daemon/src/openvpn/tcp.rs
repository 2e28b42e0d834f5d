//! OpenVPN over TCP on the data-path threads: a connection's socket sits
//! in a thread's `epoll` like a UDP socket. The thread reads it (frames
//! decoded, opened in a staging buffer, written to the TUN) and writes
//! sealed batches to it directly; bytes the socket cannot take yet wait in
//! the connection's queue and leave when the thread hears it is writable.
//! Control packets from the control task go through the same queue, so
//! the stream's frames never interleave.
//!
//! Before, each connection had a tokio reader and writer task, and every
//! packet crossed between them and the data thread (a wake-up per hop).

use super::datapath::{Dg, Poller, TunWriter};
use super::state::Shared;
use polytun_io::Tun;
use polytun_openvpn::framing::FrameDecoder;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// How a connection's end reaches its control task: (connection number,
/// why). Unbounded on purpose: a connection reports at most once (its
/// socket is muted then), so this never holds more than there are
/// connections, and the report cannot be lost to a control queue that a
/// flood of control packets has filled (the session would hang on a dead
/// connection until its ping-restart).
pub type Ended = tokio::sync::mpsc::UnboundedSender<(u64, String)>;

/// At most this many bytes wait for a congested connection; a batch that
/// would go beyond is dropped (counted), as a full UDP socket buffer would.
const MAX_QUEUED: usize = 4 << 20;
/// One read of the stream per turn (level-triggered: the rest comes next turn).
pub(super) const READ_CHUNK: usize = 65536;
/// Where frames are opened: copied out of the decoder (which keeps partial
/// frames) back to back, and written to the TUN when the next might not fit.
pub(super) const FRAME_STAGE: usize = 512 * 1024;

/// One TCP connection of OpenVPN's framed stream.
pub struct TcpLink {
    stream: TcpStream,
    /// Bytes accepted for sending but not yet taken by the socket (a frame
    /// may be cut anywhere: what is here always goes first).
    queued: Mutex<Vec<u8>>,
    decoder: Mutex<FrameDecoder>,
    /// Where the socket is registered (to ask for writability).
    poller: Weak<Poller>,
}

impl TcpLink {
    /// Takes a connected stream (made non-blocking) for `poller`'s thread;
    /// the caller registers it ([`TcpLink::fd`]) with a receiver.
    pub fn new(stream: TcpStream, poller: &Arc<Poller>) -> std::io::Result<TcpLink> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        Ok(TcpLink {
            stream,
            queued: Mutex::new(Vec::new()),
            decoder: Mutex::new(FrameDecoder::default()),
            poller: Arc::downgrade(poller),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Sends framed bytes: what the socket takes now is written at once,
    /// the rest queued for when it is writable. False when dropped: the
    /// queue is full or the connection failed (its reader reports that).
    pub fn send(&self, bytes: &[u8]) -> bool {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        let mut rest = bytes;
        if queued.is_empty() {
            match (&self.stream).write(bytes) {
                Ok(n) => rest = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
            if rest.is_empty() {
                return true;
            }
        } else if queued.len() + rest.len() > MAX_QUEUED {
            // (only whole batches are dropped: nothing of these was sent)
            return false;
        }
        let was_empty = queued.is_empty();
        queued.extend_from_slice(rest);
        if was_empty {
            // Under the queue's lock: write interest is on exactly while
            // bytes are queued.
            self.want_write(true);
        }
        true
    }

    /// The socket is writable: sends what is queued.
    pub fn writable(&self) {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent = 0;
        while sent < queued.len() {
            match (&self.stream).write(&queued[sent..]) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // the reader sees the failure and reports it
                    sent = queued.len();
                }
            }
        }
        queued.drain(..sent);
        if queued.is_empty() {
            self.want_write(false);
        }
    }

    fn want_write(&self, on: bool) {
        if let Some(p) = self.poller.upgrade() {
            p.want_write(self.fd(), on);
        }
    }

    /// Stops the thread from polling the socket (after it failed or
    /// closed: a closed socket stays readable). The control task still
    /// deregisters it.
    fn mute(&self) {
        if let Some(p) = self.poller.upgrade() {
            p.mute(self.fd());
        }
    }
}

/// What an inbound turn on a TCP connection needs besides the connection:
/// a read buffer and the staging buffer frames are opened in.
pub struct TcpBuffers {
    read: Vec<u8>,
    stage: Vec<Vec<u8>>,
}

impl Default for TcpBuffers {
    fn default() -> Self {
        TcpBuffers {
            read: vec![0u8; READ_CHUNK],
            stage: vec![vec![0u8; FRAME_STAGE]],
        }
    }
}

/// One inbound turn on `link`: one read, every complete frame handed to
/// `each` (which opens data packets in the stage, queued on `w`), then
/// written to `tun`. `Err(why)` when the connection ended (it is muted;
/// the caller tells the control task); `peer` names the other end.
pub fn receive(
    link: &TcpLink,
    bufs: &mut TcpBuffers,
    w: &mut TunWriter,
    tun: &Tun,
    shared: &Shared,
    peer: &str,
    mut each: impl FnMut(&mut TunWriter, &mut Dg<'_>, Instant),
) -> Result<(), String> {
    let n = match (&link.stream).read(&mut bufs.read) {
        Ok(0) => {
            link.mute();
            return Err(format!("{peer} closed the TCP connection"));
        }
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            return Ok(())
        }
        Err(e) => {
            link.mute();
            return Err(format!("TCP receive: {e}"));
        }
    };
    let mut dec = link.decoder.lock().unwrap_or_else(|e| e.into_inner());
    dec.push(&bufs.read[..n]);
    let now = Instant::now();
    loop {
        let mut fill = 0;
        let mut full = false;
        let mut failed = None;
        let stage = &mut bufs.stage[0];
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    let end = fill + f.len();
                    stage[fill..end].copy_from_slice(f);
                    each(w, &mut Dg::new(&mut stage[..end], fill, 0), now);
                    fill = end;
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
            // a frame is at most 65535 bytes
            if fill + 65535 > FRAME_STAGE {
                full = true;
                break;
            }
        }
        w.flush(tun, &mut bufs.stage, shared);
        if let Some(f) = failed {
            link.mute();
            return Err(format!("TCP framing: {f}"));
        }
        if !full {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openvpn::datapath::{Inbound, Receive};
    use polytun_openvpn::framing::encode_frame;
    use std::net::TcpListener;

    struct Nobody;
    impl Receive for Nobody {
        fn receive(&self, _: &mut Inbound, _: &Tun) {}
    }

    fn write_interest(p: &Poller, fd: RawFd) -> bool {
        p.ready_now()
            .iter()
            .any(|&(t, e)| t == fd as u64 && e & libc::EPOLLOUT as u32 != 0)
    }

    /// A peer that does not read: what the socket cannot take is queued
    /// (write interest on), batches beyond the bound are dropped whole;
    /// once the peer reads, writability drains the queue (interest off),
    /// batches sent meanwhile wait behind it, and the stream holds exactly
    /// the accepted frames, in order.
    #[test]
    fn a_congested_connection_queues_in_order_and_drops_whole_batches() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let poller: Arc<Poller> = Arc::new(Poller::new().unwrap());
        let link = TcpLink::new(client, &poller).unwrap();
        poller.register(link.fd(), Arc::new(Nobody)).unwrap();
        assert!(!write_interest(&poller, link.fd()));

        // Batches of 40 frames of 1400 bytes, numbered.
        let batch = |n: u32| {
            let mut out = Vec::new();
            for k in 0..40u32 {
                let mut p = vec![0u8; 1400];
                p[..4].copy_from_slice(&(n * 40 + k).to_be_bytes());
                encode_frame(&p, &mut out).unwrap();
            }
            out
        };
        let (mut accepted, mut dropped) = (Vec::new(), 0);
        let mut n = 0;
        while dropped < 3 {
            if link.send(&batch(n)) {
                accepted.push(n);
            } else {
                dropped += 1;
            }
            n += 1;
        }
        let queued = link.queued.lock().unwrap().len();
        assert!(queued > 0 && queued <= MAX_QUEUED + 40 * 1402, "{queued}");

        // Once the peer reads, the socket is writable and the thread hears it.
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            server.read_to_end(&mut all).unwrap();
            all
        });
        let t0 = Instant::now();
        while !write_interest(&poller, link.fd()) {
            assert!(
                t0.elapsed().as_secs() < 5,
                "bytes queued, socket writable, no EPOLLOUT"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Batches keep coming while the queue drains: they must wait
        // behind it, not overtake it.
        let more = n + 50;
        while n < more || !link.queued.lock().unwrap().is_empty() {
            link.writable();
            if n < more {
                if link.send(&batch(n)) {
                    accepted.push(n);
                }
                n += 1;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            !write_interest(&poller, link.fd()),
            "write interest left on"
        );
        poller.deregister(link.fd());
        drop(link);
        let all = reader.join().unwrap();

        let mut dec = FrameDecoder::default();
        dec.push(&all);
        let mut seen = Vec::new();
        while let Some(f) = dec.next_frame().unwrap() {
            assert_eq!(f.len(), 1400);
            seen.push(u32::from_be_bytes(f[..4].try_into().unwrap()));
        }
        assert_eq!(dec.buffered(), 0, "a frame was cut");
        let want: Vec<u32> = accepted
            .iter()
            .flat_map(|&b| (0..40).map(move |k| b * 40 + k))
            .collect();
        assert_eq!(seen, want);
        assert!(accepted.len() < n as usize, "nothing was dropped");
    }
}
