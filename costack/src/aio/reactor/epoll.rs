//! The epoll reactor (Linux).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::Event;
use crate::sys;

/// Miri's epoll is edge-triggered only. The loop's own descriptors are
/// drained whenever they fire, and adding or modifying an entry reports
/// readiness that is there already, so edges serve under Miri; the real
/// loop keeps level triggering where it has it.
#[cfg(miri)]
const MIRI_EDGE: u32 = libc::EPOLLET as u32;
#[cfg(not(miri))]
const MIRI_EDGE: u32 = 0;

pub(crate) struct Epoll {
    fd: OwnedFd,
    /// The kernel's event buffer, reused by every wait.
    events: RefCell<Vec<libc::epoll_event>>,
}

impl Epoll {
    pub(super) fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            fd: sys::epoll_create()?,
            events: RefCell::new(Vec::with_capacity(256)),
        })
    }

    pub(super) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(super) fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        sys::epoll_ctl(
            &self.fd,
            libc::EPOLL_CTL_ADD,
            fd,
            libc::EPOLLIN as u32 | MIRI_EDGE,
            token,
        )
    }

    pub(super) fn arm(&self, fd: RawFd, token: u64, interest: u32) -> io::Result<()> {
        let ev = interest | libc::EPOLLONESHOT as u32 | MIRI_EDGE;
        match sys::epoll_ctl(&self.fd, libc::EPOLL_CTL_MOD, fd, ev, token) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                sys::epoll_ctl(&self.fd, libc::EPOLL_CTL_ADD, fd, ev, token)
            }
            r => r,
        }
    }

    pub(super) fn register(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let ev = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        match sys::epoll_ctl(&self.fd, libc::EPOLL_CTL_ADD, fd, ev, token) {
            // Left armed or disarmed by a one-shot wait: take it over.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                sys::epoll_ctl(&self.fd, libc::EPOLL_CTL_MOD, fd, ev, token)
            }
            r => r,
        }
    }

    pub(super) fn deregister(&self, fd: RawFd) {
        let _ = sys::epoll_ctl(&self.fd, libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    pub(super) fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let mut events = self.events.borrow_mut();
        sys::epoll_wait(&self.fd, &mut events, timeout)?;
        // The portable bits are epoll's on Linux: a plain copy.
        out.extend(events.iter().map(|ev| Event {
            token: ev.u64,
            bits: ev.events,
        }));
        Ok(())
    }
}
