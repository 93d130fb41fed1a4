//! Waiting for fd readiness (QEMU's aio_set_fd_handler, as a blocking-
//! looking call), on whichever [reactor](super::reactor) the loop has.
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
//! they live ([`Registration`]). Under epoll that is edge-triggered, and a
//! wait costs no `epoll_ctl`. Edge triggering is race-free here because
//! the loop is single-threaded: between a coroutine's `EAGAIN` and its
//! wait no `epoll_wait` runs, so an edge that came meanwhile is still
//! queued in the kernel and will wake it; an edge that comes while nobody
//! waits is dropped, and whoever reads next finds the data without
//! waiting. Under poll(2) a wait tells the reactor which direction it
//! expects, watched level-triggered until it fires. A registration is
//! removed when its socket is dropped (by a bottom half if it is dropped
//! on another thread), and each has a fresh token, so a recycled fd
//! number never inherits a stale one.
//!
//! Hang-ups and errors wake readers and writers alike, so a socket shut
//! down or reset while a coroutine waits on it ends the wait; the
//! following read or write reports EOF or the error.

use std::collections::HashMap;
use std::io;
use crate::sys::RawSock;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::event_loop::{current_inner, loop_by_id};
use super::handle::Remote;

use super::event_loop::Inner;
use super::reactor::{ANY_END, PRIORITY, READ_EVENTS, READ_HANGUP, WRITE_EVENTS};
use crate::sys;
use super::wait::{Outcome, Wait};


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

impl Direction {
    /// The poll(2) events that end a wait in this direction.
    pub(crate) fn poll_events(self) -> i16 {
        match self {
            Direction::Read => sys::POLL_READ,
            Direction::Write => sys::POLLOUT,
        }
    }
}

/// Arms `fd` one-shot for `interest`; its events carry its number.
fn arm(inner: &Inner, fd: RawSock, interest: u32) -> io::Result<()> {
    #[allow(clippy::unnecessary_cast)] // an i32 on unix, a u64 on Windows
    let token = fd as u64;
    inner.reactor.arm(fd, token, interest)
}

/// Removes a finished or abandoned wait from its fd's waiters.
struct FdGuard<'a> {
    inner: &'a Inner,
    fd: RawSock,
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
pub(crate) fn wait_fd(
    inner: &Rc<Inner>,
    fd: RawSock,
    dir: Direction,
    deadline: Option<Instant>,
) -> io::Result<()> {
    let token = inner.regs.borrow().by_fd.get(&fd).copied();
    if let Some(token) = token {
        // A socket's persistent registration: re-arming it one-shot would
        // take its events away from it. Its edges came and went before
        // this caller (who need not have seen `EAGAIN`) asked: readiness
        // that is there already must be seen now, as level-triggered
        // arming would. No reactor wait runs between this look and the
        // suspension, so an edge after it still wakes the wait.
        if sys::is_ready(fd, dir.poll_events())? {
            return Ok(());
        }
        return wait_reg(inner, token, dir, deadline);
    }
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
    match wait.suspend("aio::wait_readable") {
        Outcome::TimedOut => Err(io::ErrorKind::TimedOut.into()),
        _ => Ok(()),
    }
}

impl Inner {
    /// An event for one-shot armed `fd`: completes the waits it satisfies and
    /// re-arms the fd for the others (one-shot disarmed it).
    pub(crate) fn fd_event(&self, fd: RawSock, bits: u32) -> bool {
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

/// Token bit of persistent registrations (below the loop's own tokens,
/// which sit at the top of the range).
pub(crate) const REG_BIT: u64 = 1 << 62;

/// The waiters of one persistent registration.
struct RegEntry {
    fd: RawSock,
    waiters: FdEntry,
    /// Shared with the socket's [`Registration`].
    drained: ReadState,
}

/// A loop's persistent registrations, by token and by fd.
#[derive(Default)]
pub(crate) struct Registrations {
    by_token: HashMap<u64, RegEntry>,
    pub(crate) by_fd: HashMap<RawSock, u64>,
    next: u64,
}

impl Registrations {
    /// Whether a coroutine waits on one of the registered sockets.
    pub(crate) fn has_waiters(&self) -> bool {
        self.by_token
            .values()
            .any(|e| !e.waiters.readers.is_empty() || !e.waiters.writers.is_empty())
    }

    pub(crate) fn clear(&mut self) {
        self.by_token.clear();
        self.by_fd.clear();
    }

    fn forget(&mut self, token: u64) -> Option<RegEntry> {
        let entry = self.by_token.remove(&token)?;
        if self.by_fd.get(&entry.fd) == Some(&token) {
            self.by_fd.remove(&entry.fd);
        }
        Some(entry)
    }
}

impl Inner {
    /// Registers `fd` edge-triggered for reads and writes; returns its
    /// token. Readable edges clear `drained`.
    fn register(&self, fd: RawSock, drained: ReadState) -> io::Result<u64> {
        let token = {
            let mut regs = self.regs.borrow_mut();
            regs.next += 1;
            REG_BIT | regs.next
        };
        self.reactor.register(fd, token)?;
        // Coroutines in a one-shot wait on this fd now wait here: its
        // events carry the new token from now on.
        let waiters = self.fds.borrow_mut().remove(&fd).unwrap_or_default();
        let mut regs = self.regs.borrow_mut();
        if let Some(old) = regs.by_fd.insert(fd, token) {
            regs.by_token.remove(&old);
        }
        regs.by_token.insert(
            token,
            RegEntry {
                fd,
                waiters,
                drained,
            },
        );
        Ok(token)
    }

    /// Removes a registration; `fd` is still open.
    fn deregister(&self, token: u64) {
        let entry = self.regs.borrow_mut().forget(token);
        if let Some(entry) = entry {
            self.reactor.deregister(entry.fd, token);
            for w in entry
                .waiters
                .readers
                .iter()
                .chain(entry.waiters.writers.iter())
            {
                w.complete(Outcome::Ready, self);
            }
        }
    }

    /// An edge for a persistent registration.
    pub(crate) fn reg_event(&self, token: u64, bits: u32) -> bool {
        let woken = {
            let mut regs = self.regs.borrow_mut();
            let Some(entry) = regs.by_token.get_mut(&token) else {
                return false;
            };
            let mut woken = Vec::new();
            if bits & (READ_EVENTS | ANY_END) != 0 {
                entry.drained.readable(bits);
                woken.append(&mut entry.waiters.readers);
            }
            if bits & (WRITE_EVENTS | ANY_END) != 0 {
                woken.append(&mut entry.waiters.writers);
            }
            woken
        };
        let any = !woken.is_empty();
        for w in woken {
            w.complete(Outcome::Ready, self);
        }
        any
    }
}

/// Removes a finished or abandoned wait from its registration.
struct RegGuard<'a> {
    inner: &'a Inner,
    token: u64,
    dir: Direction,
    wait: Rc<Wait>,
}

impl Drop for RegGuard<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.inner.regs.borrow_mut().by_token.get_mut(&self.token) {
            let list = match self.dir {
                Direction::Read => &mut entry.waiters.readers,
                Direction::Write => &mut entry.waiters.writers,
            };
            list.retain(|w| !Rc::ptr_eq(w, &self.wait));
        }
    }
}

fn wait_reg(
    inner: &Rc<Inner>,
    token: u64,
    dir: Direction,
    deadline: Option<Instant>,
) -> io::Result<()> {
    let me = crate::current().expect("wait_reg runs in a coroutine");
    inner.adopt(&me);
    let wait = Wait::new(&me);
    drop(me);
    {
        let mut regs = inner.regs.borrow_mut();
        let Some(entry) = regs.by_token.get_mut(&token) else {
            // Deregistered meanwhile: let the caller retry its call.
            return Ok(());
        };
        let interest = match dir {
            Direction::Read => {
                entry.waiters.readers.push(wait.clone());
                READ_EVENTS
            }
            Direction::Write => {
                entry.waiters.writers.push(wait.clone());
                WRITE_EVENTS
            }
        };
        inner.reactor.expect(entry.fd, token, interest);
    }
    let _guard = RegGuard {
        inner,
        token,
        dir,
        wait: wait.clone(),
    };
    let _timer = deadline.map(|d| inner.timers.borrow_mut().add(inner, d, wait.clone()));
    match wait.suspend("aio::wait_readable") {
        Outcome::TimedOut => Err(io::ErrorKind::TimedOut.into()),
        _ => Ok(()),
    }
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
                Some(r) if r.loop_id == inner.id => Some(r.token),
                Some(_) => None,
                None => {
                    let drained = ReadState::default();
                    let token = inner.register(fd, drained.clone())?;
                    *reg = Some(Reg {
                        loop_id: inner.id,
                        token,
                        remote: inner.remote.clone(),
                        drained,
                    });
                    Some(token)
                }
            }
        };
        match token {
            Some(token) => wait_reg(&inner, token, dir, deadline),
            None => wait_fd(&inner, fd, dir, deadline),
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

impl Registration {
    /// The socket's [`ReadState`], if it is registered with the loop the
    /// calling coroutine runs on (elsewhere it means nothing).
    pub(crate) fn read_state(&self) -> Option<ReadState> {
        let reg = self.reg.lock().unwrap_or_else(|e| e.into_inner());
        let r = reg.as_ref()?;
        let here = crate::in_coroutine() && current_inner().is_some_and(|i| i.id == r.loop_id);
        here.then(|| r.drained.clone())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let reg = self.reg.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        let Some(reg) = reg else { return };
        match loop_by_id(reg.loop_id) {
            // The loop's own thread: remove it now, while the fd is open.
            Some(inner) => inner.deregister(reg.token),
            // Another thread: the loop forgets the token in a bottom half
            // (closing the fd removed it from epoll; poll(2) must forget
            // it before the number is reused).
            None => {
                let token = reg.token;
                reg.remote.post(Box::new(move || {
                    if let Some(inner) = current_inner() {
                        let entry = inner.regs.borrow_mut().forget(token);
                        if let Some(entry) = entry {
                            inner.reactor.forget(entry.fd, token);
                        }
                    }
                }));
            }
        }
    }
}
