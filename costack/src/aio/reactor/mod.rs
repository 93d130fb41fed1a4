//! Where a loop waits for descriptors (QEMU's fdmon-epoll and fdmon-poll):
//! one small interface over the OS's readiness calls, chosen per loop.
//!
//! The rest of the loop speaks only this interface. Every watched fd
//! carries a *token*, handed back with its events, and an event is a token
//! with portable readiness [bits](READABLE). Descriptors are watched three
//! ways:
//!
//! - [`watch`](Reactor::watch): the loop's own notification fds, readable
//!   for good;
//! - [`arm`](Reactor::arm): level-triggered and one-shot, for callers of
//!   `aio::wait_readable`/`wait_writable` (each wait arms, the first event
//!   disarms);
//! - [`register`](Reactor::register): a socket's registration for its
//!   lifetime. epoll watches it edge-triggered in both directions, so a
//!   wait costs no system call; poll(2) has no edges, so there a wait
//!   says what it [expects](Reactor::expect) and the reactor watches that
//!   direction until it fires.

#[cfg(target_os = "linux")]
mod epoll;
mod poll;

use crate::sys::RawSock;
use std::fmt;
use std::io;
use std::time::Duration;

/// Readiness bits of an [`Event`]. On Linux they are epoll's own, so
/// epoll's events need no translation.
#[cfg(target_os = "linux")]
mod bits {
    pub(crate) const READABLE: u32 = libc::EPOLLIN as u32;
    pub(crate) const WRITABLE: u32 = libc::EPOLLOUT as u32;
    pub(crate) const PRIORITY: u32 = libc::EPOLLPRI as u32;
    pub(crate) const HANGUP: u32 = libc::EPOLLHUP as u32;
    pub(crate) const ERROR: u32 = libc::EPOLLERR as u32;
    pub(crate) const READ_HANGUP: u32 = libc::EPOLLRDHUP as u32;
}
#[cfg(not(target_os = "linux"))]
mod bits {
    pub(crate) const READABLE: u32 = 1;
    pub(crate) const WRITABLE: u32 = 2;
    pub(crate) const PRIORITY: u32 = 4;
    pub(crate) const HANGUP: u32 = 8;
    pub(crate) const ERROR: u32 = 16;
    pub(crate) const READ_HANGUP: u32 = 32;
}
pub(crate) use bits::*;

/// What wakes readers: data, urgent data, or the peer's half-close.
pub(crate) const READ_EVENTS: u32 = READABLE | READ_HANGUP | PRIORITY;
/// What wakes writers.
pub(crate) const WRITE_EVENTS: u32 = WRITABLE;
/// What wakes readers and writers alike: hang-up and error.
pub(crate) const ANY_END: u32 = HANGUP | ERROR;

/// One readiness event: the token the fd was watched with, and its bits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    pub(crate) token: u64,
    pub(crate) bits: u32,
}

/// Which readiness API a loop waits in (see the [`aio`](super) docs).
///
/// ```
/// use costack::aio::{Backend, EventLoop};
///
/// let lp = EventLoop::with_backend(Backend::Poll).unwrap();
/// assert_eq!(lp.backend(), Backend::Poll);
/// assert_eq!(Backend::Poll.to_string(), "poll"); // as COSTACK_AIO names it
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// io_uring for stream sockets' reads and writes (TCP and Unix
    /// streams) and for [`fs`](crate::fs) I/O; epoll for the rest.
    IoUring,
    /// epoll for descriptors; `fs` I/O on the thread pool (or on io_uring,
    /// in a loop from [`EventLoop::new`](super::EventLoop::new) with
    /// `COSTACK_AIO` unset, where the kernel allows it).
    Epoll,
    /// poll(2) for descriptors (QEMU's fdmon-poll; `WSAPoll` for sockets on
    /// Windows); `fs` I/O on the thread pool. The backend of every system
    /// but Linux.
    Poll,
}

impl Backend {
    /// The name `COSTACK_AIO` takes for it.
    ///
    /// ```
    /// use costack::aio::Backend;
    ///
    /// assert_eq!(Backend::IoUring.name(), "io_uring");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
            Backend::Poll => "poll",
        }
    }

    /// Parses a `COSTACK_AIO` value.
    pub(crate) fn from_name(name: &str) -> Option<Backend> {
        [Backend::IoUring, Backend::Epoll, Backend::Poll]
            .into_iter()
            .find(|b| b.name() == name)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The readiness API of one loop. An enum rather than a trait object: the
/// loop calls it on every wait, and a match inlines where a vtable call
/// would not.
pub(crate) enum Reactor {
    #[cfg(target_os = "linux")]
    Epoll(epoll::Epoll),
    Poll(poll::Poll),
}

impl Reactor {
    /// epoll (Linux).
    #[cfg(target_os = "linux")]
    pub(crate) fn epoll() -> io::Result<Reactor> {
        epoll::Epoll::new().map(Reactor::Epoll)
    }

    /// poll(2) (every unix).
    pub(crate) fn poll() -> Reactor {
        Reactor::Poll(poll::Poll::default())
    }

    /// Whether events of registered fds come as edges whether or not
    /// anyone waits (epoll), so [`expect`](Reactor::expect) is not needed.
    pub(crate) fn is_epoll(&self) -> bool {
        #[cfg(target_os = "linux")]
        return matches!(self, Reactor::Epoll(_));
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Watches `fd` for reads for good, level-triggered.
    pub(crate) fn watch(&self, fd: RawSock, token: u64) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(e) => e.watch(fd, token),
            Reactor::Poll(p) => p.watch(fd, token),
        }
    }

    /// Arms `fd` level-triggered and one-shot for `interest`
    /// ([`READ_EVENTS`]/[`WRITE_EVENTS`]), replacing what it was armed or
    /// registered for.
    pub(crate) fn arm(&self, fd: RawSock, token: u64, interest: u32) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(e) => e.arm(fd, token, interest),
            Reactor::Poll(p) => p.arm(fd, token, interest),
        }
    }

    /// Registers `fd` for reads and writes for as long as it lives (until
    /// [`deregister`](Reactor::deregister)), replacing what it was armed
    /// for.
    pub(crate) fn register(&self, fd: RawSock, token: u64) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(e) => e.register(fd, token),
            Reactor::Poll(p) => p.register(fd, token),
        }
    }

    /// A coroutine is about to wait on registered `fd` for `interest`.
    #[inline]
    pub(crate) fn expect(&self, fd: RawSock, token: u64, interest: u32) {
        match self {
            // Edges come anyway.
            #[cfg(target_os = "linux")]
            Reactor::Epoll(_) => {}
            Reactor::Poll(p) => p.expect(fd, token, interest),
        }
    }

    /// Stops watching registered `fd`, which is still open.
    pub(crate) fn deregister(&self, fd: RawSock, token: u64) {
        match self {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(e) => e.deregister(fd),
            Reactor::Poll(p) => p.forget(fd, token),
        }
    }

    /// Forgets registered `fd`, closed on another thread: epoll dropped it
    /// with its last descriptor; poll(2) must not ask about it again (the
    /// number may be reused).
    pub(crate) fn forget(&self, fd: RawSock, token: u64) {
        match self {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(_) => {}
            Reactor::Poll(p) => p.forget(fd, token),
        }
    }

    /// Waits at most `timeout` (`None`: forever) for events and stores them
    /// in `out` (cleared first). An interrupted wait returns no events.
    pub(crate) fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        out.clear();
        match self {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(e) => e.wait(out, timeout),
            Reactor::Poll(p) => p.wait(out, timeout),
        }
    }

    /// The readiness call it makes, for `Debug` output.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(_) => "epoll",
            #[cfg(unix)]
            Reactor::Poll(_) => "poll",
            #[cfg(windows)]
            Reactor::Poll(_) => "WSAPoll",
        }
    }

    /// The fd to show in `Debug` output, if the reactor has one.
    pub(crate) fn raw_fd(&self) -> Option<RawSock> {
        match self {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(e) => Some(e.raw_fd()),
            Reactor::Poll(_) => None,
        }
    }
}
