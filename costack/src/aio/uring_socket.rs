//! Stream sockets on the ring (the io_uring backend).
//!
//! Reads and writes are completion requests. They are queued while the
//! loop's coroutines run, and the loop hands each turn's batch to the
//! kernel in one `io_uring_enter` ([`Uring::flush`]): a turn that serves
//! many connections costs one system call, where readiness costs a
//! `recv` and a `send` per request. Completions are read from the shared
//! ring without a system call; the ring's eventfd is signalled only while
//! the loop sleeps, or has file requests in flight ([`Uring::sleeping`]).
//!
//! The ring is set up for cooperative task running where the kernel has
//! it (5.19): a read whose data arrives while the loop runs does not
//! interrupt the thread; it completes at the turn's `io_uring_enter`. A
//! sleeping loop is still woken.
//!
//! The buffers are the caller's, borrowed for the call, and a request is
//! never abandoned (as in the parent module): cancelled or timed out, it
//! is cancelled in the kernel and awaited (a read that got data first
//! returns it); unwound otherwise, the unwinding blocks until the kernel
//! gives it back.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};

use super::{Uring, ENTRIES};
use crate::aio::readiness::Readiness;
use crate::aio::timer::{TimerAction, Timers};
use crate::aio::wait::{Outcome, Wait};
use crate::coroutine::{self, cancel};

/// The opcodes a ring that carries sockets needs (Linux 5.6).
pub(super) const OPCODES: [u8; 4] = [
    opcode::Recv::CODE,
    opcode::Send::CODE,
    opcode::SendMsg::CODE,
    opcode::AsyncCancel::CODE,
];

/// Completion queue size: a read in flight per connection, and a turn's
/// writes on top. (The kernel keeps what overflows, but it costs.)
const CQ_ENTRIES: u32 = 8192;

/// `sendmsg`'s limit on buffers (`UIO_MAXIOV`); more is `EMSGSIZE`.
const MAX_IOV: usize = 1024;

/// Loops in the process whose sockets were asked onto a ring (the
/// io_uring backend). While there are none, which is the default, socket
/// calls skip looking for their loop's ring: one load instead of a
/// thread-local lookup and a reference count per call.
static SOCKET_RINGS: AtomicUsize = AtomicUsize::new(0);

/// Whether some loop's sockets may be on a ring. A loop created on the
/// calling thread is seen (program order); one of another thread may be,
/// which only costs the full look.
#[inline]
pub(crate) fn any_socket_ring() -> bool {
    SOCKET_RINGS.load(Ordering::Relaxed) != 0
}

/// A loop's place in [`SOCKET_RINGS`], for its life.
pub(super) struct Counted(());

impl Counted {
    pub(super) fn new() -> Counted {
        SOCKET_RINGS.fetch_add(1, Ordering::Relaxed);
        Counted(())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        SOCKET_RINGS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A ring for a loop whose sockets use it.
pub(super) fn new_ring() -> io::Result<IoUring> {
    let ring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(CQ_ENTRIES)
        .build(ENTRIES);
    match ring {
        // Before 5.19: completions interrupt the thread instead.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(CQ_ENTRIES).build(ENTRIES)
        }
        r => r,
    }
}

impl Uring {
    /// Whether stream sockets' reads and writes go through the ring
    /// (creating it on first call).
    pub(crate) fn carries_sockets(&self, readiness: &Readiness) -> bool {
        self.want_sockets && self.available(readiness)
    }

    /// Hands the requests queued since the last flush to the kernel (one
    /// `io_uring_enter`, which also runs the completions the kernel left
    /// for this thread), then reaps what completed. Returns whether
    /// anything did. A loop calls it after every pass over its coroutines.
    pub(crate) fn flush(&self) -> bool {
        let woken = {
            let mut ring = self.ring.borrow_mut();
            let Some(ring) = ring.as_mut().filter(|r| r.sockets) else {
                return false;
            };
            let queued = {
                let sq = ring.ring.submission();
                !sq.is_empty() || sq.taskrun()
            };
            if queued {
                if let Err(e) = ring.submit() {
                    // The requests stay queued, and their coroutines
                    // suspended: going on would hang them silently.
                    panic!("costack: submitting to io_uring failed: {e}");
                }
            }
            if ring.ring.completion().is_empty() {
                return false;
            }
            ring.reap()
        };
        let any = !woken.is_empty();
        for w in woken {
            w.complete(Outcome::Ready);
        }
        any
    }

    /// The loop is about to sleep (`asleep`), or woke: completions signal
    /// the eventfd the loop sleeps on only in between. Returns whether
    /// completions are there already (the loop must not sleep then).
    pub(crate) fn sleeping(&self, asleep: bool) -> bool {
        let mut ring = self.ring.borrow_mut();
        let Some(ring) = ring.as_mut().filter(|r| r.sockets) else {
            return false;
        };
        if !asleep {
            // Not while file requests are in flight: an io-wq thread may
            // complete one, and nothing orders its flag read after our
            // enabling write below; completions of socket requests are
            // posted by this thread (task work), in program order.
            if ring.files == 0 {
                ring.ring.completion().disable_eventfd();
            }
            return false;
        }
        ring.ring.completion().enable_eventfd();
        // A completion this thread posted before now is in the ring: look.
        fence(Ordering::SeqCst);
        !ring.ring.completion().is_empty() || ring.ring.submission().taskrun()
    }

    /// Runs a socket request, queued for the loop's next
    /// [`flush`](Uring::flush), and returns its result, suspending the
    /// calling coroutine until it completes. A wait point: cancelled, or
    /// past `deadline` (then `TimedOut`), the request is cancelled in the
    /// kernel and awaited first.
    ///
    /// # Safety
    /// The memory `entry` refers to must stay valid until this returns;
    /// this function does not return, even by unwinding, before the kernel
    /// is done with the request. The caller checked
    /// [`carries_sockets`](Uring::carries_sockets).
    unsafe fn run_queued(
        &self,
        timers: &Rc<Timers>,
        what: &str,
        entry: squeue::Entry,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        let me = crate::current().expect("socket requests are made from coroutines");
        let wait = Wait::new(&me);
        // A deadline completes a wait of its own, which wakes the
        // coroutine to cancel the request.
        let expired = deadline.map(|_| Wait::new(&me));
        drop(me);
        // SAFETY: forwarded from our caller; the loop's next flush submits
        // the request.
        let guard = unsafe { self.queue_op(&wait, entry, false) }?;
        let index = guard.index;
        let _timer = deadline
            .zip(expired.clone())
            .map(|(d, w)| timers.add(d, TimerAction::Complete(w)));
        let mut timed_out = false;
        let (_, stopped) = coroutine::wait::wait_stopping(
            what,
            || {
                if wait.outcome() != Outcome::Pending {
                    return Some(());
                }
                let expired = expired.as_ref();
                if !timed_out && expired.is_some_and(|w| w.outcome() == Outcome::TimedOut) {
                    timed_out = true;
                    self.cancel_op(index);
                }
                None
            },
            || self.cancel_op(index),
        );
        let result = guard.finish();
        if result == -libc::ECANCELED {
            if stopped {
                // Given back unperformed: the cancellation unwinds here.
                cancel::checkpoint();
            }
            if timed_out {
                return Err(io::ErrorKind::TimedOut.into());
            }
        }
        if result < 0 {
            Err(io::Error::from_raw_os_error(-result))
        } else {
            Ok(result as usize)
        }
    }

    /// `recv(2)` into `buf` through the ring (see
    /// [`run_queued`](Uring::run_queued)).
    pub(crate) fn recv(
        &self,
        timers: &Rc<Timers>,
        fd: RawFd,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        // SAFETY: `buf` is borrowed mutably for the call, which does not
        // return before the kernel is done with it.
        unsafe { self.recv_raw(timers, fd, buf.as_mut_ptr(), buf.len(), deadline) }
    }

    /// `recv(2)` into the `len` bytes at `ptr` through the ring.
    ///
    /// # Safety
    /// The bytes must stay mapped and writable for the call, and no Rust
    /// code may access them meanwhile (a page that faults, such as a
    /// truncated file's, ends the receive with `EFAULT`).
    pub(crate) unsafe fn recv_raw(
        &self,
        timers: &Rc<Timers>,
        fd: RawFd,
        ptr: *mut u8,
        len: usize,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        let len = len.min(u32::MAX as usize) as u32;
        let entry = opcode::Recv::new(types::Fd(fd), ptr, len).build();
        // SAFETY: the caller keeps the bytes to the kernel; the call does
        // not return before the kernel is done with them.
        unsafe { self.run_queued(timers, "net read", entry, deadline) }
    }

    /// `send(2)` of `buf` through the ring (`MSG_NOSIGNAL`, as std's
    /// sockets: a closed peer is `EPIPE`, not a signal).
    pub(crate) fn send(
        &self,
        timers: &Rc<Timers>,
        fd: RawFd,
        buf: &[u8],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        let len = buf.len().min(u32::MAX as usize) as u32;
        let entry = opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: as in `recv`; the kernel only reads `buf`.
        unsafe { self.run_queued(timers, "net write", entry, deadline) }
    }

    /// `sendmsg(2)` of `bufs` through the ring (at most `UIO_MAXIOV` of
    /// them; a write may be short anyway).
    pub(crate) fn send_vectored(
        &self,
        timers: &Rc<Timers>,
        fd: RawFd,
        bufs: &[IoSlice<'_>],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on unix (std
        // documents it), and each points to `iov_len` bytes borrowed for
        // the call.
        let iovecs =
            unsafe { std::slice::from_raw_parts(bufs.as_ptr().cast::<libc::iovec>(), bufs.len()) };
        // SAFETY: as just argued.
        unsafe { self.send_iovecs(timers, fd, iovecs, deadline) }
    }

    /// `sendmsg(2)` of the buffers `iovecs` describe (at most `UIO_MAXIOV`
    /// of them).
    ///
    /// # Safety
    /// Each `iovec` must describe memory that stays mapped for the call:
    /// the kernel only reads it (a page that faults, such as a truncated
    /// file's, ends the send with `EFAULT`).
    pub(crate) unsafe fn send_iovecs(
        &self,
        timers: &Rc<Timers>,
        fd: RawFd,
        iovecs: &[libc::iovec],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        let iovecs = &iovecs[..iovecs.len().min(MAX_IOV)];
        let msg = crate::sys::msghdr(iovecs);
        let entry = opcode::SendMsg::new(types::Fd(fd), &msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        // SAFETY: `msg` lives on this frame and the buffers are the
        // caller's to keep mapped; the call does not return before the
        // kernel is done with them.
        unsafe { self.run_queued(timers, "net write", entry, deadline) }
    }
}
