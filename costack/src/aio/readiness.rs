//! The readiness driver: a loop's [reactor](super::reactor) and the waits
//! on descriptors it serves (QEMU's aio_set_fd_handler, for coroutines).
//!
//! Plain fds are armed level-triggered and one-shot: each wait arms the fd
//! for what its waiters want, and the first event disarms it.
//! Level-triggered arming reports readiness that exists already, so there
//! is no lost-wakeup window between the `EAGAIN` a caller saw and the
//! arming; one-shot means an fd nobody waits on never wakes the loop, and
//! the loop keeps no state for idle fds: an fd the caller closes between
//! two waits leaves nothing stale behind (the next wait re-adds it).
//!
//! Sockets of [`net`](crate::net) register once instead, for as long as
//! they live. Under epoll that is edge-triggered, and a wait costs no
//! `epoll_ctl`. Edge triggering is race-free here because the loop is
//! single-threaded: between a coroutine's `EAGAIN` and its wait no
//! `epoll_wait` runs, so an edge that came meanwhile is still queued in the
//! kernel and will wake it; an edge that comes while nobody waits is
//! dropped, and whoever reads next finds the data without waiting. Under
//! poll(2) a wait tells the reactor which direction it expects, watched
//! level-triggered until it fires. Each registration has a fresh token, so
//! a recycled fd number never inherits a stale one.
//!
//! Hang-ups and errors wake readers and writers alike, so a socket shut
//! down or reset while a coroutine waits on it ends the wait; the
//! following read or write reports EOF or the error.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::reactor::{Event, Reactor, ANY_END, PRIORITY, READ_EVENTS, READ_HANGUP, WRITE_EVENTS};
use super::wait::{Outcome, Wait};
use crate::sys::{self, RawSock};

/// Token bit of persistent registrations (below the loop's own tokens,
/// which sit at the top of the range).
const REG_BIT: u64 = 1 << 62;
/// Tokens of the loop's own descriptors, handed to [`Readiness::wait`]'s
/// `special`: its cross-thread notifier, and io_uring's eventfd.
pub(crate) const TOKEN_NOTIFY: u64 = u64::MAX;
pub(crate) const TOKEN_URING: u64 = u64::MAX - 1;
const FIRST_LOOP_TOKEN: u64 = TOKEN_URING;

/// Which readiness a wait is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

impl Direction {
    /// The poll(2) events that end a wait in this direction.
    pub(crate) fn poll_events(self) -> i16 {
        match self {
            Direction::Read => sys::POLL_READ,
            Direction::Write => sys::POLLOUT,
        }
    }

    fn interest(self) -> u32 {
        match self {
            Direction::Read => READ_EVENTS,
            Direction::Write => WRITE_EVENTS,
        }
    }
}

/// The coroutines waiting on one fd (or registration).
#[derive(Default)]
struct Waiters {
    readers: Vec<Rc<Wait>>,
    writers: Vec<Rc<Wait>>,
}

impl Waiters {
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

    fn is_empty(&self) -> bool {
        self.readers.is_empty() && self.writers.is_empty()
    }

    fn list(&mut self, dir: Direction) -> &mut Vec<Rc<Wait>> {
        match dir {
            Direction::Read => &mut self.readers,
            Direction::Write => &mut self.writers,
        }
    }

    /// Takes the waits an event with `bits` satisfies.
    fn take_woken(&mut self, bits: u32) -> Vec<Rc<Wait>> {
        let mut woken = Vec::new();
        if bits & (READ_EVENTS | ANY_END) != 0 {
            woken.append(&mut self.readers);
        }
        if bits & (WRITE_EVENTS | ANY_END) != 0 {
            woken.append(&mut self.writers);
        }
        woken
    }

    fn remove(&mut self, dir: Direction, wait: &Rc<Wait>) {
        self.list(dir).retain(|w| !Rc::ptr_eq(w, wait));
    }
}

/// The waiters of one persistent registration.
struct RegEntry {
    fd: RawSock,
    waiters: Waiters,
    /// Shared with the socket's registration.
    drained: ReadState,
}

/// One loop's readiness driver.
pub(crate) struct Readiness {
    reactor: Reactor,
    /// One-shot waits, by fd.
    fds: RefCell<HashMap<RawSock, Waiters>>,
    /// Persistent registrations, by token and by fd.
    regs: RefCell<HashMap<u64, RegEntry>>,
    by_fd: RefCell<HashMap<RawSock, u64>>,
    next_token: std::cell::Cell<u64>,
    events: RefCell<Vec<Event>>,
}

impl Readiness {
    pub(crate) fn new(reactor: Reactor) -> Readiness {
        Readiness {
            reactor,
            fds: RefCell::default(),
            regs: RefCell::default(),
            by_fd: RefCell::default(),
            next_token: std::cell::Cell::new(0),
            events: RefCell::new(Vec::with_capacity(256)),
        }
    }

    pub(crate) fn is_epoll(&self) -> bool {
        self.reactor.is_epoll()
    }

    pub(crate) fn name(&self) -> &'static str {
        self.reactor.name()
    }

    pub(crate) fn raw_fd(&self) -> Option<RawSock> {
        self.reactor.raw_fd()
    }

    /// Watches one of the loop's own descriptors (readable for good);
    /// its events go to the `special` callback of [`wait`](Self::wait).
    pub(crate) fn watch(&self, fd: RawSock, token: u64) -> io::Result<()> {
        self.reactor.watch(fd, token)
    }

    /// Adds `wait` to the one-shot waiters of `fd` for `dir`, and arms the
    /// fd; the guard removes it again.
    pub(crate) fn add_one_shot(
        &self,
        fd: RawSock,
        dir: Direction,
        wait: &Rc<Wait>,
    ) -> io::Result<FdGuard<'_>> {
        let interest = {
            let mut fds = self.fds.borrow_mut();
            let entry = fds.entry(fd).or_default();
            entry.list(dir).push(wait.clone());
            entry.interest()
        };
        let guard = FdGuard {
            readiness: self,
            fd,
            dir,
            wait: wait.clone(),
        };
        self.arm(fd, interest)?;
        Ok(guard)
    }

    /// Arms `fd` one-shot for `interest`; its events carry its number.
    fn arm(&self, fd: RawSock, interest: u32) -> io::Result<()> {
        #[allow(clippy::unnecessary_cast)] // an i32 on unix, a u64 on Windows
        let token = fd as u64;
        self.reactor.arm(fd, token, interest)
    }

    /// The token of `fd`'s registration, if it has one.
    pub(crate) fn registered(&self, fd: RawSock) -> Option<u64> {
        self.by_fd.borrow().get(&fd).copied()
    }

    /// Registers `fd` edge-triggered for reads and writes; returns its
    /// token. Readable edges clear `drained`.
    pub(crate) fn register(&self, fd: RawSock, drained: ReadState) -> io::Result<u64> {
        let token = REG_BIT | (self.next_token.get() + 1);
        self.next_token.set(token & !REG_BIT);
        self.reactor.register(fd, token)?;
        // Coroutines in a one-shot wait on this fd now wait here: its
        // events carry the new token from now on.
        let waiters = self.fds.borrow_mut().remove(&fd).unwrap_or_default();
        if let Some(old) = self.by_fd.borrow_mut().insert(fd, token) {
            self.regs.borrow_mut().remove(&old);
        }
        self.regs.borrow_mut().insert(
            token,
            RegEntry {
                fd,
                waiters,
                drained,
            },
        );
        Ok(token)
    }

    /// Adds `wait` to the waiters of registration `token` for `dir`;
    /// `None` if it was deregistered meanwhile (the caller retries its
    /// call).
    pub(crate) fn add_registered(
        &self,
        token: u64,
        dir: Direction,
        wait: &Rc<Wait>,
    ) -> Option<RegGuard<'_>> {
        let mut regs = self.regs.borrow_mut();
        let entry = regs.get_mut(&token)?;
        entry.waiters.list(dir).push(wait.clone());
        self.reactor.expect(entry.fd, token, dir.interest());
        Some(RegGuard {
            readiness: self,
            token,
            dir,
            wait: wait.clone(),
        })
    }

    fn forget_token(&self, token: u64) -> Option<RegEntry> {
        let entry = self.regs.borrow_mut().remove(&token)?;
        let mut by_fd = self.by_fd.borrow_mut();
        if by_fd.get(&entry.fd) == Some(&token) {
            by_fd.remove(&entry.fd);
        }
        Some(entry)
    }

    /// Removes a registration whose fd is still open; its waiters are woken
    /// to find out from their own calls.
    pub(crate) fn deregister(&self, token: u64) {
        if let Some(mut entry) = self.forget_token(token) {
            self.reactor.deregister(entry.fd, token);
            for w in entry.waiters.take_woken(READ_EVENTS | WRITE_EVENTS) {
                w.complete(Outcome::Ready);
            }
        }
    }

    /// Forgets a registration whose fd was closed on another thread (epoll
    /// dropped it; poll(2) must forget it before the number is reused).
    pub(crate) fn forget(&self, token: u64) {
        if let Some(entry) = self.forget_token(token) {
            self.reactor.forget(entry.fd, token);
        }
    }

    /// Waits for events at most `timeout` (`None`: no limit) and completes
    /// the waits they satisfy; the events of the loop's own descriptors
    /// go to `special`. Returns whether anything made progress.
    pub(crate) fn wait(
        &self,
        timeout: Option<std::time::Duration>,
        mut special: impl FnMut(u64) -> bool,
    ) -> io::Result<bool> {
        let mut events = self.events.take();
        if events.capacity() == 0 {
            events.reserve(256);
        }
        let res = self.reactor.wait(&mut events, timeout);
        let mut progress = false;
        if res.is_ok() {
            for &Event { token, bits } in events.iter() {
                progress |= if token >= FIRST_LOOP_TOKEN {
                    special(token)
                } else if token & REG_BIT != 0 {
                    self.reg_event(token, bits)
                } else {
                    self.fd_event(token as RawSock, bits)
                };
            }
        }
        self.events.replace(events);
        res.map(|()| progress)
    }

    /// An event for one-shot armed `fd`: completes the waits it satisfies
    /// and re-arms the fd for the others (one-shot disarmed it).
    fn fd_event(&self, fd: RawSock, bits: u32) -> bool {
        let (woken, rearm) = {
            let mut fds = self.fds.borrow_mut();
            let Some(entry) = fds.get_mut(&fd) else {
                return false;
            };
            let woken = entry.take_woken(bits);
            let rearm = entry.interest();
            if rearm == 0 {
                fds.remove(&fd);
            }
            (woken, rearm)
        };
        // Should re-arming fail (the fd was closed meanwhile), the waiters
        // left are woken to find out from their own call.
        if rearm != 0 && self.arm(fd, rearm).is_err() {
            let rest = self.fds.borrow_mut().remove(&fd).unwrap_or_default();
            for w in rest.readers.iter().chain(rest.writers.iter()) {
                w.complete(Outcome::Ready);
            }
        }
        let any = !woken.is_empty();
        for w in woken {
            w.complete(Outcome::Ready);
        }
        any
    }

    /// An edge for a persistent registration.
    fn reg_event(&self, token: u64, bits: u32) -> bool {
        let woken = {
            let mut regs = self.regs.borrow_mut();
            let Some(entry) = regs.get_mut(&token) else {
                return false;
            };
            if bits & (READ_EVENTS | ANY_END) != 0 {
                entry.drained.readable(bits);
            }
            entry.waiters.take_woken(bits)
        };
        let any = !woken.is_empty();
        for w in woken {
            w.complete(Outcome::Ready);
        }
        any
    }

    /// Whether no coroutine waits for a descriptor.
    pub(crate) fn is_idle(&self) -> bool {
        self.fds.borrow().is_empty() && self.regs.borrow().values().all(|e| e.waiters.is_empty())
    }

    /// Forgets every wait and registration (loop shutdown).
    pub(crate) fn clear(&self) {
        self.fds.borrow_mut().clear();
        self.regs.borrow_mut().clear();
        self.by_fd.borrow_mut().clear();
    }
}

/// Removes a finished or abandoned one-shot wait from its fd's waiters.
pub(crate) struct FdGuard<'a> {
    readiness: &'a Readiness,
    fd: RawSock,
    dir: Direction,
    wait: Rc<Wait>,
}

impl Drop for FdGuard<'_> {
    fn drop(&mut self) {
        let mut fds = self.readiness.fds.borrow_mut();
        if let Some(entry) = fds.get_mut(&self.fd) {
            entry.remove(self.dir, &self.wait);
            if entry.is_empty() {
                fds.remove(&self.fd);
            }
        }
    }
}

/// Removes a finished or abandoned wait from its registration.
pub(crate) struct RegGuard<'a> {
    readiness: &'a Readiness,
    token: u64,
    dir: Direction,
    wait: Rc<Wait>,
}

impl Drop for RegGuard<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.readiness.regs.borrow_mut().get_mut(&self.token) {
            entry.waiters.remove(self.dir, &self.wait);
        }
    }
}

/// A socket's read readiness as its loop last saw it (mio/tokio style),
/// so that a reader can skip the `recv` known to fail with `EAGAIN`:
/// *drained* once a read came back short, *ready* again when the loop
/// sees a readable edge, and *ended* for good once the loop saw a hang-up,
/// half-close, error or urgent data (end of stream and errors stay
/// readable without further edges; a read stops short at TCP's urgent
/// mark with data left behind it).
///
/// Only for TCP, whose `recv` comes back short only when the receive
/// queue is empty (or at the urgent mark). A Unix stream `recv` also stops
/// after a message that carried descriptors or other credentials, with
/// data left and no edge to come, so Unix sockets do not use it.
///
/// No wakeup is lost: the state becomes drained right after the short
/// read, and no reactor wait runs in between (the loop is
/// single-threaded), so data arriving after the read raises an edge that
/// the loop harvests later (under poll(2), the drained reader's next wait
/// finds the data level-triggered). An end that came before the read is in the
/// bits of an event harvested before it (the reactor reports the state at
/// harvest time), so the socket is already ended and never drained. A
/// stale edge for data read already only costs one `EAGAIN`.
#[derive(Clone, Default)]
pub(crate) struct ReadState(Arc<AtomicU8>);

const READY: u8 = 0;
const DRAINED: u8 = 1;
const ENDED: u8 = 2;

impl ReadState {
    /// Whether the last read found the socket drained, and no edge came
    /// since.
    pub(crate) fn is_drained(&self) -> bool {
        self.0.load(Ordering::Relaxed) == DRAINED
    }

    /// A read came back short: wait for an edge before the next.
    pub(crate) fn set_drained(&self) {
        let _ = self
            .0
            .compare_exchange(READY, DRAINED, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The loop saw a readable edge with these event bits.
    fn readable(&self, bits: u32) {
        if bits & (READ_HANGUP | PRIORITY | ANY_END) != 0 {
            self.0.store(ENDED, Ordering::Relaxed);
        } else {
            let _ = self
                .0
                .compare_exchange(DRAINED, READY, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}
