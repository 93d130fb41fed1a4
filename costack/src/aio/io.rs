//! Waiting for fd readiness (QEMU's aio_set_fd_handler, as a blocking-
//! looking call).
//!
//! Registrations are level-triggered and one-shot (`EPOLLONESHOT`): each
//! wait arms the fd for what its waiters want, and the first event disarms
//! it. Level-triggered arming reports readiness that exists already, so
//! there is no lost-wakeup window between the `EAGAIN` a caller saw and the
//! arming; one-shot means an fd nobody waits on never wakes the loop, and
//! the loop keeps no state for idle fds: an fd the caller closes between
//! two waits leaves nothing stale behind (the next wait re-adds it).
//!
//! Hang-ups and errors (`EPOLLHUP`, `EPOLLERR`, `EPOLLRDHUP`) wake readers
//! and writers alike, so a socket shut down or reset while a coroutine
//! waits on it ends the wait; the following read or write reports EOF or
//! the error.

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

use super::event_loop::Inner;
use super::sys;
use super::wait::{Outcome, Wait};

const READ_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLPRI) as u32;
const WRITE_EVENTS: u32 = libc::EPOLLOUT as u32;
const ANY_END: u32 = (libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// The coroutines waiting on one fd.
#[derive(Default)]
pub(crate) struct FdEntry {
    readers: Vec<Rc<Wait>>,
    writers: Vec<Rc<Wait>>,
}

impl FdEntry {
    fn interest(&self) -> u32 {
        let mut ev = 0;
        if !self.readers.is_empty() {
            ev |= READ_EVENTS;
        }
        if !self.writers.is_empty() {
            ev |= WRITE_EVENTS;
        }
        ev
    }
}

/// Which readiness a wait is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

/// Arms `fd` for `interest`, adding it to the epoll set if needed.
fn arm(inner: &Inner, fd: RawFd, interest: u32) -> io::Result<()> {
    let ev = interest | libc::EPOLLONESHOT as u32;
    match sys::epoll_ctl(&inner.epoll, libc::EPOLL_CTL_MOD, fd, ev, fd as u64) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            sys::epoll_ctl(&inner.epoll, libc::EPOLL_CTL_ADD, fd, ev, fd as u64)
        }
        r => r,
    }
}

/// Removes a finished or abandoned wait from its fd's waiters.
struct FdGuard<'a> {
    inner: &'a Inner,
    fd: RawFd,
    dir: Direction,
    wait: Rc<Wait>,
}

impl Drop for FdGuard<'_> {
    fn drop(&mut self) {
        let mut fds = self.inner.fds.borrow_mut();
        if let Some(entry) = fds.get_mut(&self.fd) {
            let list = match self.dir {
                Direction::Read => &mut entry.readers,
                Direction::Write => &mut entry.writers,
            };
            list.retain(|w| !Rc::ptr_eq(w, &self.wait));
            if entry.readers.is_empty() && entry.writers.is_empty() {
                fds.remove(&self.fd);
            }
        }
    }
}

/// Suspends the calling coroutine (on loop `inner`) until `fd` is ready
/// for `dir`, or until `deadline` (then `TimedOut`).
pub(crate) fn wait_fd(inner: &Rc<Inner>, fd: RawFd, dir: Direction, deadline: Option<Instant>) -> io::Result<()> {
    let me = crate::current().expect("wait_fd runs in a coroutine");
    inner.adopt(&me);
    let wait = Wait::new(&me);
    drop(me);
    let interest = {
        let mut fds = inner.fds.borrow_mut();
        let entry = fds.entry(fd).or_default();
        match dir {
            Direction::Read => entry.readers.push(wait.clone()),
            Direction::Write => entry.writers.push(wait.clone()),
        }
        entry.interest()
    };
    let _guard = FdGuard {
        inner,
        fd,
        dir,
        wait: wait.clone(),
    };
    arm(inner, fd, interest)?;
    let _timer = deadline.map(|d| inner.timers.borrow_mut().add(inner, d, wait.clone()));
    match wait.suspend() {
        Outcome::TimedOut => Err(io::ErrorKind::TimedOut.into()),
        _ => Ok(()),
    }
}

impl Inner {
    /// An epoll event for `fd`: completes the waits it satisfies and
    /// re-arms the fd for the others (one-shot disarmed it).
    pub(crate) fn fd_event(&self, fd: RawFd, bits: u32) -> bool {
        let (woken, rearm) = {
            let mut fds = self.fds.borrow_mut();
            let Some(entry) = fds.get_mut(&fd) else {
                return false;
            };
            let mut woken = Vec::new();
            if bits & (READ_EVENTS | ANY_END) != 0 {
                woken.append(&mut entry.readers);
            }
            if bits & (WRITE_EVENTS | ANY_END) != 0 {
                woken.append(&mut entry.writers);
            }
            let rearm = entry.interest();
            if rearm == 0 {
                fds.remove(&fd);
            }
            (woken, rearm)
        };
        if rearm != 0 {
            // Should this fail (the fd was closed meanwhile), the waiters
            // left are woken to find out from their own call.
            if arm(self, fd, rearm).is_err() {
                let rest = self.fds.borrow_mut().remove(&fd).unwrap_or_default();
                for w in rest.readers.iter().chain(rest.writers.iter()) {
                    w.complete(Outcome::Ready, self);
                }
            }
        }
        let any = !woken.is_empty();
        for w in woken {
            w.complete(Outcome::Ready, self);
        }
        any
    }
}
