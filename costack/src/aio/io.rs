//! Waiting for descriptors, as the rest of the crate sees it: `net`'s
//! sockets and [`aio::wait_readable`](super::wait_readable) wait here, on
//! the [readiness driver](super::readiness) of the loop they run on.
//!
//! A socket registers with the loop it is first used on, for as long as
//! it lives ([`Registration`]); other descriptors are armed one-shot per
//! wait. A socket dropped on another thread is deregistered by a bottom
//! half on its loop.

// A socket (any descriptor on unix) borrowed for a wait: `BorrowedFd` on
// unix, `BorrowedSocket` on Windows.
use std::io;
#[cfg(unix)]
use std::os::fd::BorrowedFd as BorrowedSock;
#[cfg(windows)]
use std::os::windows::io::BorrowedSocket as BorrowedSock;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) use super::readiness::{Direction, ReadState};
use super::remote::Remote;
use super::turn::{current_inner, loop_by_id, Inner};
use super::wait::{Outcome, Wait};
use crate::coroutine::cancel::Interrupted;
use crate::sys::{self, RawSock};

/// Suspends the calling coroutine until `fd` is readable (or hung up, or
/// in error: then the next read reports it).
///
/// Closing `fd` while a coroutine waits on it is a bug, as with any
/// borrowed fd: epoll forgets closed fds, so the wait might never end. Use
/// `shutdown` on sockets to make waiters return.
///
/// # Errors
/// If the fd cannot be polled (for example a regular file: `EPERM`).
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::io::{Read, Write};
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
///
/// let (mut a, mut b) = UnixStream::pair().unwrap();
/// b.set_nonblocking(true).unwrap();
/// let got = EventLoop::new().unwrap().block_on(move || {
///     let writer = aio::spawn(move || a.write_all(b"ping").unwrap());
///     aio::wait_readable(b.as_fd()).unwrap(); // yields until the data is there
///     let mut buf = [0; 4];
///     b.read_exact(&mut buf).unwrap();
///     writer.join().unwrap();
///     buf
/// });
/// assert_eq!(&got, b"ping");
/// ```
#[track_caller]
pub fn wait_readable(fd: BorrowedSock<'_>) -> std::io::Result<()> {
    let inner = super::context("aio::wait_readable");
    wait_fd(&inner, crate::sys::raw_sock(fd), Direction::Read, None)
}

/// Suspends the calling coroutine until `fd` is writable (or hung up, or
/// in error). See [`wait_readable`].
///
/// # Errors
/// If the fd cannot be polled.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::io::Write;
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
///
/// let (mut a, _b) = UnixStream::pair().unwrap();
/// a.set_nonblocking(true).unwrap();
/// EventLoop::new().unwrap().block_on(move || {
///     aio::wait_writable(a.as_fd()).unwrap(); // an empty socket buffer: at once
///     a.write_all(b"x").unwrap();
/// });
/// ```
#[track_caller]
pub fn wait_writable(fd: BorrowedSock<'_>) -> std::io::Result<()> {
    let inner = super::context("aio::wait_writable");
    wait_fd(&inner, crate::sys::raw_sock(fd), Direction::Write, None)
}

/// As [`wait_readable`], giving up with `ErrorKind::TimedOut` after
/// `timeout`.
///
/// # Errors
/// `TimedOut`, or if the fd cannot be polled.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::io::ErrorKind;
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
/// use std::time::Duration;
///
/// let (a, _b) = UnixStream::pair().unwrap();
/// let r = EventLoop::new().unwrap().block_on(move || {
///     aio::wait_readable_timeout(a.as_fd(), Duration::from_millis(5))
/// });
/// assert_eq!(r.unwrap_err().kind(), ErrorKind::TimedOut);
/// ```
#[track_caller]
pub fn wait_readable_timeout(fd: BorrowedSock<'_>, timeout: Duration) -> std::io::Result<()> {
    let inner = super::context("aio::wait_readable_timeout");
    wait_fd(
        &inner,
        crate::sys::raw_sock(fd),
        Direction::Read,
        Some(Instant::now() + timeout),
    )
}

/// As [`wait_writable`], giving up with `ErrorKind::TimedOut` after
/// `timeout`.
///
/// # Errors
/// `TimedOut`, or if the fd cannot be polled.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
/// use std::time::Duration;
///
/// let (a, _b) = UnixStream::pair().unwrap();
/// EventLoop::new().unwrap().block_on(move || {
///     aio::wait_writable_timeout(a.as_fd(), Duration::from_secs(1)).unwrap();
/// });
/// ```
#[track_caller]
pub fn wait_writable_timeout(fd: BorrowedSock<'_>, timeout: Duration) -> std::io::Result<()> {
    let inner = super::context("aio::wait_writable_timeout");
    wait_fd(
        &inner,
        crate::sys::raw_sock(fd),
        Direction::Write,
        Some(Instant::now() + timeout),
    )
}

/// Suspends the calling coroutine (on loop `inner`) until `fd` is ready
/// for `dir`, or until `deadline` (then `TimedOut`). A wait point.
pub(crate) fn wait_fd(
    inner: &Rc<Inner>,
    fd: RawSock,
    dir: Direction,
    deadline: Option<Instant>,
) -> io::Result<()> {
    // A wait point even when the fd is ready already.
    crate::coroutine::cancel::checkpoint();
    if let Some(token) = inner.readiness().registered(fd) {
        // A socket's persistent registration: re-arming it one-shot would
        // take its events away from it. Its edges came and went before
        // this caller (who need not have seen `EAGAIN`) asked: readiness
        // that is there already must be seen now, as level-triggered
        // arming would. No reactor wait runs between this look and the
        // suspension, so an edge after it still wakes the wait.
        if sys::is_ready(fd, dir.poll_events())? {
            return Ok(());
        }
        return wait_registered(inner, token, dir, deadline);
    }
    let wait = new_wait(inner);
    let guard = inner.readiness().add_one_shot(fd, dir, &wait)?;
    let outcome = inner
        .timers()
        .suspend(&wait, "aio::wait_readable", deadline);
    drop(guard);
    drop(wait);
    finish(outcome)
}

/// A wait for the calling coroutine, which belongs to `inner` from now on
/// if it belonged to no loop.
fn new_wait(inner: &Inner) -> Rc<Wait> {
    let me = crate::current().expect("descriptor waits run in a coroutine");
    inner.adopt(&me);
    Wait::new(&me)
}

/// What a wait's outcome means to an I/O call; a cancellation is raised
/// (the wait's state is dropped by now).
fn finish(outcome: Result<Outcome, Interrupted>) -> io::Result<()> {
    match outcome {
        Ok(Outcome::TimedOut) => Err(io::ErrorKind::TimedOut.into()),
        Ok(_) => Ok(()),
        Err(i) => i.raise(),
    }
}

fn wait_registered(
    inner: &Rc<Inner>,
    token: u64,
    dir: Direction,
    deadline: Option<Instant>,
) -> io::Result<()> {
    let wait = new_wait(inner);
    // Deregistered meanwhile: let the caller retry its call.
    let Some(guard) = inner.readiness().add_registered(token, dir, &wait) else {
        return Ok(());
    };
    let outcome = inner.timers().suspend(&wait, "net", deadline);
    drop(guard);
    drop(wait);
    finish(outcome)
}

/// Stream socket requests on the ring of the calling coroutine's loop (the
/// io_uring backend; see `uring_socket`): each suspends the coroutine until
/// it completes, or until its deadline (then `TimedOut`). Wait points.
#[cfg(target_os = "linux")]
pub(crate) struct SocketRing<'a> {
    uring: &'a super::uring::Uring,
    timers: &'a Rc<super::timer::Timers>,
}

#[cfg(target_os = "linux")]
impl SocketRing<'_> {
    pub(crate) fn recv(
        &self,
        fd: RawSock,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        self.uring.recv(self.timers, fd, buf, deadline)
    }

    /// # Safety
    /// As `Uring::recv_raw`: the bytes stay mapped, and to the kernel
    /// alone, for the call.
    pub(crate) unsafe fn recv_raw(
        &self,
        fd: RawSock,
        ptr: *mut u8,
        len: usize,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.uring.recv_raw(self.timers, fd, ptr, len, deadline) }
    }

    pub(crate) fn send(
        &self,
        fd: RawSock,
        buf: &[u8],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        self.uring.send(self.timers, fd, buf, deadline)
    }

    pub(crate) fn send_vectored(
        &self,
        fd: RawSock,
        bufs: &[std::io::IoSlice<'_>],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        self.uring.send_vectored(self.timers, fd, bufs, deadline)
    }

    /// # Safety
    /// As `Uring::send_iovecs`: the buffers stay mapped for the call.
    pub(crate) unsafe fn send_iovecs(
        &self,
        fd: RawSock,
        iovecs: &[libc::iovec],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.uring.send_iovecs(self.timers, fd, iovecs, deadline) }
    }
}

/// Runs `f` with the ring that carries the calling coroutine's socket
/// I/O: `None` (and `f` not run) where there is none, outside a coroutine
/// on a loop, or on a loop whose sockets wait for readiness.
#[cfg(target_os = "linux")]
#[inline]
pub(crate) fn with_socket_ring<T>(f: impl FnOnce(&SocketRing<'_>) -> T) -> Option<T> {
    if !super::uring::any_socket_ring() {
        return None;
    }
    let inner = super::io_loop("net")?;
    let uring = inner.socket_ring()?;
    // Its completions wake it through this loop from now on, as a
    // descriptor wait's would (see `new_wait`).
    inner.adopt(&crate::current()?);
    Some(f(&SocketRing {
        uring,
        timers: inner.timers(),
    }))
}

struct Reg {
    loop_id: u64,
    token: u64,
    remote: Arc<Remote>,
    drained: ReadState,
}

/// A socket's persistent registration with the loop it is used on
/// (created on its first wait there). Dropping it deregisters.
#[derive(Default)]
pub(crate) struct Registration {
    reg: Mutex<Option<Reg>>,
}

impl Registration {
    /// Waits until `fd` is ready for `dir`: on the current loop from a
    /// coroutine on one (registering with it first), else by blocking the
    /// thread in poll(2). A socket used on a second loop waits there with
    /// one-shot arming.
    pub(crate) fn wait(
        &self,
        fd: RawSock,
        dir: Direction,
        deadline: Option<Instant>,
    ) -> io::Result<()> {
        let inner = match super::io_loop("net") {
            Some(inner) => inner,
            None => return sys::poll_blocking(fd, dir.poll_events(), deadline),
        };
        let token = {
            let mut reg = self.reg.lock().unwrap_or_else(|e| e.into_inner());
            match &*reg {
                Some(r) if r.loop_id == inner.id() => Some(r.token),
                Some(_) => None,
                None => {
                    let drained = ReadState::default();
                    let token = inner.readiness().register(fd, drained.clone())?;
                    *reg = Some(Reg {
                        loop_id: inner.id(),
                        token,
                        remote: inner.remote().clone(),
                        drained,
                    });
                    Some(token)
                }
            }
        };
        match token {
            Some(token) => wait_registered(&inner, token, dir, deadline),
            None => wait_fd(&inner, fd, dir, deadline),
        }
    }

    /// The socket's [`ReadState`], if it is registered with the loop the
    /// calling coroutine runs on (elsewhere it means nothing).
    pub(crate) fn read_state(&self) -> Option<ReadState> {
        let reg = self.reg.lock().unwrap_or_else(|e| e.into_inner());
        let r = reg.as_ref()?;
        let here = crate::in_coroutine() && current_inner().is_some_and(|i| i.id() == r.loop_id);
        here.then(|| r.drained.clone())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let reg = self.reg.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        let Some(reg) = reg else { return };
        match loop_by_id(reg.loop_id) {
            // The loop's own thread: remove it now, while the fd is open.
            Some(inner) => inner.readiness().deregister(reg.token),
            // Another thread: the loop forgets the token in a bottom half
            // (closing the fd removed it from epoll; poll(2) must forget
            // it before the number is reused).
            None => {
                let token = reg.token;
                reg.remote.post(Box::new(move || {
                    if let Some(inner) = current_inner() {
                        inner.readiness().forget(token);
                    }
                }));
            }
        }
    }
}
