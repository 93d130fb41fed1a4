//! How many connections may negotiate at once, and which to drop when a
//! newcomer needs room: only connections that are stalled.
//!
//! A socket that never negotiates (or trickles a byte at a time) must not
//! lock real clients out, so the connections negotiating at once are
//! bounded (`--max-handshakes`). Dropping the oldest to make room, as this
//! server once did, also drops real clients that are simply slow to get
//! through a crowd (1,000 connecting at once). So a newcomer beyond the
//! bound is admitted only once room is made by a negotiation ending or by
//! dropping a *stalled* connection: one with nothing unread in its receive
//! queue (else the server is behind, not the client) whose peer sent
//! nothing for [`STALLED_AFTER`] (TCP's `tcpi_last_data_recv`; for other
//! sockets, the time since it began negotiating). Meanwhile the newcomer,
//! and those behind it in the listen backlog, wait.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use costack::channel::{bounded, Receiver, Sender};

/// How long a negotiating peer may stay silent before it counts as
/// stalled (and may be dropped for a newcomer).
pub const STALLED_AFTER: Duration = Duration::from_millis(500);

/// How often a waiting newcomer looks again for stalled connections
/// when no negotiation ended meanwhile.
const RECHECK: Duration = Duration::from_millis(50);

struct Entry {
    id: u64,
    fd: RawFd,
    since: Instant,
    /// Shut down to make room: it leaves when its coroutine sees it.
    dropped: bool,
}

/// The connections negotiating now, oldest first.
pub struct Negotiations {
    queue: Mutex<VecDeque<Entry>>,
    next_id: Mutex<u64>,
    /// A token whenever a negotiation ends (a waiting newcomer looks
    /// again).
    ended: (Sender<()>, Receiver<()>),
}

impl Default for Negotiations {
    fn default() -> Self {
        Negotiations {
            queue: Mutex::new(VecDeque::new()),
            next_id: Mutex::new(0),
            ended: bounded(1),
        }
    }
}

impl Negotiations {
    /// Registers a connection negotiating on socket `fd`; returns its id.
    pub fn begin(&self, fd: RawFd) -> u64 {
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Entry {
                id,
                fd,
                since: Instant::now(),
                dropped: false,
            });
        id
    }

    /// The connection `id` is done negotiating (either way). Its socket
    /// must still be open: it leaves the queue before it closes.
    pub fn end(&self, id: u64) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = q.iter().position(|e| e.id == id) {
            q.remove(i);
        }
        drop(q);
        let _ = self.ended.0.try_send(());
    }

    /// Drops stalled connections (oldest first) until one more fits in
    /// `max`, as far as there are stalled ones; returns how many it
    /// dropped and whether there is room now.
    pub fn make_room(&self, max: usize) -> (usize, bool) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let live = q.iter().filter(|e| !e.dropped).count();
        let mut excess = (live + 1).saturating_sub(max.max(1));
        let mut dropped = 0;
        for e in q.iter_mut().filter(|e| !e.dropped) {
            if excess == 0 {
                break;
            }
            if is_stalled(e.fd, e.since) {
                // SAFETY: the socket of a connection still negotiating: it
                // leaves the queue (under this lock) before it closes.
                unsafe { libc::shutdown(e.fd, libc::SHUT_RDWR) };
                e.dropped = true;
                excess -= 1;
                dropped += 1;
            }
        }
        (dropped, excess == 0)
    }

    /// Waits (suspending the calling coroutine) until one more connection
    /// fits in `max`, dropping stalled ones as they become stalled;
    /// returns how many it dropped.
    pub fn wait_for_room(&self, max: usize) -> usize {
        let mut total = 0;
        loop {
            let (dropped, room) = self.make_room(max);
            total += dropped;
            if room {
                return total;
            }
            let _ = self.ended.1.recv_timeout(RECHECK);
        }
    }

    /// How many connections are negotiating (dropped ones included until
    /// they leave).
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether the peer on `fd`, negotiating since `since`, is stalled (see
/// the module docs).
fn is_stalled(fd: RawFd, since: Instant) -> bool {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; `fd` is an open socket (see
    // `make_room`).
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) } == 0 && unread > 0 {
        return false;
    }
    // SAFETY: tcp_info is plain old data: all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let tcp = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    } == 0;
    if tcp {
        u128::from(info.tcpi_last_data_recv) >= STALLED_AFTER.as_millis()
    } else {
        since.elapsed() >= STALLED_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (s, c)
    }

    #[test]
    fn only_stalled_connections_make_room() {
        let n = Negotiations::default();
        let (old, _old_peer) = pair();
        let (busy, mut busy_peer) = pair();
        let a = n.begin(old.as_raw_fd());
        let b = n.begin(busy.as_raw_fd());
        // Nobody is stalled yet: no room for a third under 2.
        assert_eq!(n.make_room(2), (0, false));
        std::thread::sleep(STALLED_AFTER + Duration::from_millis(100));
        // `busy` has unread input (the server is behind): not stalled.
        busy_peer.write_all(b"IHAVEOPT").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(n.make_room(2), (1, true), "the silent one goes");
        let mut buf = [0u8; 1];
        use std::io::Read;
        assert_eq!((&old).read(&mut buf).unwrap(), 0, "shut down");
        // Dropped ones do not count again, nor are they dropped twice.
        assert_eq!(n.make_room(2), (0, true));
        n.end(a);
        n.end(b);
        assert!(n.is_empty());
    }
}
