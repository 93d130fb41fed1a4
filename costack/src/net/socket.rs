//! What every socket type of this module shares: the std socket it wraps
//! (non-blocking), its registration with the loop it is used on, its
//! timeouts, and calls that wait for readiness instead of failing with
//! `WouldBlock`.

use std::io::{self, IoSlice, Read, Write};
use std::time::Instant;

use super::Timeout;
use crate::aio::budget;
#[cfg(target_os = "linux")]
use crate::aio::io::{with_socket_ring, SocketRing};
use crate::aio::io::{Direction, Registration};
use crate::sys::AsRawSock;

pub(crate) struct Socket<S> {
    // Declared first: deregisters before the socket closes.
    reg: Registration,
    io: S,
    read_timeout: Timeout,
    write_timeout: Timeout,
    /// TCP: a read that comes back short left the receive queue empty, so
    /// the next read may wait for the loop first (see
    /// [`ReadState`](crate::aio::io::ReadState)). Not so for Unix sockets.
    short_read_drains: bool,
    /// On a loop whose ring carries the socket's I/O: the last read came
    /// back short, so the receive queue is empty and the next read goes
    /// to the ring at once. Otherwise the next read tries `recv` first:
    /// data already queued (the rest of a large message) is taken without
    /// waiting for the loop's next turn.
    #[cfg(target_os = "linux")]
    ring_drained: std::sync::atomic::AtomicBool,
}

impl<S: AsRawSock> Socket<S> {
    /// Wraps `io`, which must be non-blocking already.
    pub(crate) fn new(io: S, short_read_drains: bool) -> Socket<S> {
        Socket {
            reg: Registration::default(),
            io,
            read_timeout: Timeout::default(),
            write_timeout: Timeout::default(),
            short_read_drains,
            #[cfg(target_os = "linux")]
            ring_drained: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The std socket.
    pub(crate) fn get(&self) -> &S {
        &self.io
    }

    /// The std socket, deregistered from its loop.
    pub(crate) fn into_inner(self) -> S {
        let Socket { reg, io, .. } = self;
        drop(reg);
        io
    }

    pub(crate) fn read_timeout(&self) -> &Timeout {
        &self.read_timeout
    }

    pub(crate) fn write_timeout(&self) -> &Timeout {
        &self.write_timeout
    }

    /// Runs the non-blocking `op` until it does not report `WouldBlock`,
    /// waiting for readiness for `dir` in between, within `dir`'s timeout
    /// in all.
    pub(crate) fn wait_for<T>(
        &self,
        dir: Direction,
        op: impl FnMut(&S) -> io::Result<T>,
    ) -> io::Result<T> {
        self.retry(dir, None, op)
    }

    /// As [`wait_for`](Socket::wait_for), but without a timeout (accept).
    pub(crate) fn wait_for_untimed<T>(
        &self,
        dir: Direction,
        op: impl FnMut(&S) -> io::Result<T>,
    ) -> io::Result<T> {
        self.retry(dir, Some(None), op)
    }

    /// The loop of [`wait_for`](Socket::wait_for). `deadline` is `None`
    /// until the first wait fixes it from `dir`'s timeout.
    /// Runs `op` until it does not fail with `WouldBlock`, waiting for
    /// `dir` readiness between tries. A wait point, also when `op` never
    /// blocks: a pending cancellation is delivered first, and a call that
    /// did not wait charges its loop's fair-share budget.
    fn retry<T>(
        &self,
        dir: Direction,
        mut deadline: Option<Option<Instant>>,
        mut op: impl FnMut(&S) -> io::Result<T>,
    ) -> io::Result<T> {
        crate::coroutine::cancel::checkpoint();
        let mut waited = false;
        loop {
            match op(&self.io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let d = *deadline.get_or_insert_with(|| self.deadline(dir));
                    self.reg.wait(self.io.raw_sock(), dir, d)?;
                    waited = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => {
                    if !waited {
                        budget::charge(1);
                    }
                    return r;
                }
            }
        }
    }

    /// Runs a request on the loop's ring (the io_uring backend) until it
    /// does not report `WouldBlock` (a kernel that gives `EAGAIN` back),
    /// waiting for readiness in between, within `dir`'s timeout in all.
    /// A wait point.
    #[cfg(target_os = "linux")]
    fn ring_retry(
        &self,
        dir: Direction,
        mut op: impl FnMut(Option<Instant>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        crate::coroutine::cancel::checkpoint();
        let deadline = self.deadline(dir);
        loop {
            match op(deadline) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.reg.wait(self.io.raw_sock(), dir, deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    /// A read on the loop's ring (see `ring_drained`). A wait point.
    #[cfg(target_os = "linux")]
    fn read_on_ring(&self, ring: &SocketRing<'_>, buf: &mut [u8]) -> io::Result<usize>
    where
        for<'a> &'a S: Read,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let len = buf.len();
        if self.short_read_drains && !self.ring_drained.load(Relaxed) {
            crate::coroutine::cancel::checkpoint();
            match (&self.io).read(buf) {
                Ok(n) => {
                    budget::charge(1);
                    self.ring_drained.store(n > 0 && n < len, Relaxed);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        let fd = self.io.raw_sock();
        let n = self.ring_retry(Direction::Read, |d| ring.recv(fd, buf, d))?;
        self.ring_drained
            .store(self.short_read_drains && n > 0 && n < len, Relaxed);
        Ok(n)
    }

    /// When a wait for `dir` that starts now must give up.
    fn deadline(&self, dir: Direction) -> Option<Instant> {
        self.timeout(dir).get().map(|t| Instant::now() + t)
    }

    fn timeout(&self, dir: Direction) -> &Timeout {
        match dir {
            Direction::Read => &self.read_timeout,
            Direction::Write => &self.write_timeout,
        }
    }
}

impl<S: AsRawSock> Socket<S>
where
    for<'a> &'a S: Read + Write,
{
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if !buf.is_empty() {
            let on_ring = with_socket_ring(|ring| self.read_on_ring(ring, buf));
            if let Some(r) = on_ring {
                return r;
            }
        }
        if !self.short_read_drains {
            return self.wait_for(Direction::Read, |mut io| io.read(buf));
        }
        let len = buf.len();
        let mut deadline = None;
        if len > 0 && self.reg.read_state().is_some_and(|r| r.is_drained()) {
            // The `recv` would fail: wait for the loop to see data first.
            let d = *deadline.insert(self.deadline(Direction::Read));
            self.reg.wait(self.io.raw_sock(), Direction::Read, d)?;
        }
        let n = self.retry(Direction::Read, deadline, |mut io| io.read(buf))?;
        // Short, not EOF: the socket's receive queue is empty now. (EOF
        // stays readable, and sees no further edge.)
        if n > 0 && n < len {
            if let Some(r) = self.reg.read_state() {
                r.set_drained();
            }
        }
        Ok(n)
    }

    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if !buf.is_empty() {
            let fd = self.io.raw_sock();
            let on_ring = with_socket_ring(|ring| {
                self.ring_retry(Direction::Write, |d| ring.send(fd, buf, d))
            });
            if let Some(r) = on_ring {
                return r;
            }
        }
        self.wait_for(Direction::Write, |mut io| io.write(buf))
    }

    pub(crate) fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        #[cfg(target_os = "linux")]
        if bufs.iter().any(|b| !b.is_empty()) {
            let fd = self.io.raw_sock();
            let on_ring = with_socket_ring(|ring| {
                self.ring_retry(Direction::Write, |d| ring.send_vectored(fd, bufs, d))
            });
            if let Some(r) = on_ring {
                return r;
            }
        }
        self.wait_for(Direction::Write, |mut io| io.write_vectored(bufs))
    }

    /// A vectored send of `bufs` (see [`SendSlice`](super::SendSlice)):
    /// on the loop's ring if it carries sockets, else `sendmsg` waiting for
    /// readiness. A wait point.
    #[cfg(unix)]
    pub(crate) fn send_slices(&self, bufs: &[super::SendSlice<'_>]) -> io::Result<usize> {
        use super::send_slice::{sendmsg, with_iovecs};
        let fd = self.io.raw_sock();
        with_iovecs(bufs, |iovecs| {
            #[cfg(target_os = "linux")]
            if iovecs.iter().any(|v| v.iov_len > 0) {
                let on_ring = with_socket_ring(|ring| {
                    self.ring_retry(Direction::Write, |d| {
                        // SAFETY: every `SendSlice` borrows memory, or a
                        // mapping, that stays mapped while `bufs` lives.
                        unsafe { ring.send_iovecs(fd, iovecs, d) }
                    })
                });
                if let Some(r) = on_ring {
                    return r;
                }
            }
            // SAFETY: as above.
            self.wait_for(Direction::Write, |_| unsafe { sendmsg(fd, iovecs) })
        })
    }

    /// A receive into `buf` (see [`RecvSlice`](super::RecvSlice)): on
    /// the loop's ring if it carries sockets, else `recv(2)` waiting for
    /// readiness. A wait point. (It leaves the read-side drained hint
    /// alone: a later read that finds the socket empty just waits.)
    #[cfg(unix)]
    pub(crate) fn recv_slice(&self, buf: &mut super::RecvSlice<'_>) -> io::Result<usize> {
        let (ptr, len) = buf.raw_parts();
        let fd = self.io.raw_sock();
        #[cfg(target_os = "linux")]
        if len > 0 {
            let on_ring = with_socket_ring(|ring| {
                self.ring_retry(Direction::Read, |d| {
                    // SAFETY: a `RecvSlice` is memory borrowed mutably or
                    // a range of a writable mapping, mapped while `buf`
                    // lives and accessed by no Rust code meanwhile.
                    unsafe { ring.recv_raw(fd, ptr, len, d) }
                })
            });
            if let Some(r) = on_ring {
                return r;
            }
        }
        self.wait_for(Direction::Read, |_| {
            // SAFETY: as above; `recv` writes at most `len` bytes at `ptr`.
            let n = unsafe { libc::recv(fd, ptr.cast(), len, 0) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        })
    }
}
