//! The event loop proper (QEMU's AioContext and aio_poll).
//!
//! One iteration: run due timers, bottom halves and the coroutines on the
//! run queue; wait in the reactor (not at all if that made progress, else
//! until the next timer or an fd or notification event, after busy-polling for a
//! while if [polling](EventLoop::set_poll_max) is on); dispatch the
//! events; run what they made runnable.
//!
//! Ownership: [`EventLoop`] handles share an `Owner`; when the last one
//! goes, the owner shuts the loop down, unwinding the coroutines it
//! spawned. Everything else (coroutine stacks, homes, timers) refers to the
//! shared `Inner` only, so no reference cycle keeps a dropped loop alive.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use crate::sys::RawSock;
use std::panic::{self, AssertUnwindSafe};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::busy_poll::{self, BusyPoll};
use super::handle::{LoopHandle, Remote};
use super::io::{FdEntry, Registrations, REG_BIT};
use super::reactor::{Backend, Event, Reactor};
use crate::sys;
use super::timer::Timers;
use super::uring::UringState;
use super::join::{catch_task, JoinHandle, JoinSlot};
use super::wait::Outcome;
use super::waker::{mailbox, Mailbox};
use crate::coroutine::control::{CoId, Home};
use crate::coroutine::{self, Builder, Coroutine};

/// Token of the loop's own notifier; one-shot armed fds use their number.
const TOKEN_NOTIFY: u64 = u64::MAX;
/// Token of the io_uring completion eventfd.
pub(crate) const TOKEN_URING: u64 = u64::MAX - 1;

crate::arch::logical_thread_local! {
    /// The loop that is polling on this thread (innermost, if nested).
    static CURRENT: RefCell<Option<Rc<Inner>>> = const { RefCell::new(None) };
    /// The loop the thread's mailbox notifies: the one that polled last.
    static MAILBOX_LOOP: Cell<*const Inner> = const { Cell::new(std::ptr::null()) };
    /// The thread's live loops, by id (for sockets dropped outside `poll`).
    static LOOPS: RefCell<Vec<(u64, Weak<Inner>)>> = const { RefCell::new(Vec::new()) };
}

/// Numbers loops uniquely in the process.
static NEXT_LOOP_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The live loop of this thread with id `id`.
pub(crate) fn loop_by_id(id: u64) -> Option<Rc<Inner>> {
    LOOPS
        .try_with(|l| {
            l.borrow()
                .iter()
                .find(|(i, _)| *i == id)
                .and_then(|(_, w)| w.upgrade())
        })
        .ok()
        .flatten()
}

/// The loop polling on this thread, if any.
pub(crate) fn current_inner() -> Option<Rc<Inner>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// Makes `inner` the thread's current loop until dropped.
struct CurrentGuard(Option<Rc<Inner>>);

impl CurrentGuard {
    fn enter(inner: &Rc<Inner>) -> CurrentGuard {
        if MAILBOX_LOOP.with(Cell::get) != Rc::as_ptr(inner) {
            inner.take_mailbox();
        }
        CurrentGuard(CURRENT.with(|c| c.replace(Some(inner.clone()))))
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let prev = self.0.take();
        let _ = CURRENT.try_with(|c| *c.borrow_mut() = prev);
    }
}

/// The coroutines a loop spawned and owns until they finish.
#[derive(Default)]
struct Tasks {
    slots: Vec<Option<(CoId, Coroutine)>>,
    free: Vec<usize>,
    len: usize,
}

impl Tasks {
    /// A slot for a task about to be created.
    fn reserve(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        }
    }

    fn unreserve(&mut self, index: usize) {
        self.free.push(index);
    }

    fn fill(&mut self, index: usize, co: Coroutine) {
        self.len += 1;
        self.slots[index] = Some((co.id(), co));
    }

    fn remove(&mut self, index: usize, id: CoId) -> Option<Coroutine> {
        match self.slots.get_mut(index) {
            Some(slot) if slot.as_ref().is_some_and(|(i, _)| *i == id) => {
                self.len -= 1;
                self.free.push(index);
                slot.take().map(|(_, co)| co)
            }
            _ => None,
        }
    }

    fn drain(&mut self) -> Vec<Coroutine> {
        self.free.clear();
        self.len = 0;
        self.slots.drain(..).flatten().map(|(_, co)| co).collect()
    }
}

/// A loop's state, shared by its handles, its coroutines' homes and waits.
pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) reactor: Reactor,
    pub(crate) remote: Arc<Remote>,
    mailbox: Arc<Mailbox>,
    run_queue: RefCell<VecDeque<Coroutine>>,
    bhs: RefCell<VecDeque<Box<dyn FnOnce()>>>,
    pub(crate) timers: RefCell<Timers>,
    pub(crate) fds: RefCell<HashMap<RawSock, FdEntry>>,
    pub(crate) regs: RefCell<Registrations>,
    tasks: RefCell<Tasks>,
    home: Rc<dyn Home>,
    events: RefCell<Vec<Event>>,
    pub(crate) uring: UringState,
    /// Iterations since the loop last asked the reactor; bounds how long busy
    /// coroutines can keep fd events waiting.
    busy_ticks: Cell<u32>,
    /// Adaptive polling before blocking (see [`busy_poll`]).
    busy_poll: BusyPoll,
    closed: Cell<bool>,
}

/// The home given to a loop's coroutines: wakes from outside any coroutine
/// go to the run queue.
struct LoopHome(Weak<Inner>);

impl Home for LoopHome {
    fn schedule(&self, co: Coroutine) {
        // A loop that is gone cannot run the coroutine; its waits will
        // never complete, so entering it would only make it yield again.
        if let Some(inner) = self.0.upgrade() {
            inner.schedule(&co);
        }
    }
}

impl Inner {
    /// Queues `co` to be entered by the loop's next run-queue pass
    /// (aio_co_schedule). A coroutine already queued (here, or in a wake
    /// list) is not queued twice.
    pub(crate) fn schedule(&self, co: &Coroutine) {
        // A closed loop runs only the unwinds it drives (see `shutdown`).
        if co.is_finished() || (self.closed.get() && !co.is_draining()) {
            return;
        }
        if co.is_polled() {
            // A future's coroutine runs only in its poll: wake the poller.
            return co.wake();
        }
        if !co.swap_queued(true) {
            self.run_queue.borrow_mut().push_back(co.clone());
        }
    }

    /// Makes the loop the home of `co` if it has none (QEMU sets co->ctx
    /// when a coroutine is entered from a context).
    pub(crate) fn adopt(self: &Rc<Self>, co: &Coroutine) {
        if !co.has_home() {
            co.set_home(Some(self.home.clone()));
        }
    }

    /// Spawns a task whose panic is caught at its boundary and handed to
    /// the returned handle (aio::spawn, EventLoop::spawn).
    pub(crate) fn spawn<T: 'static, F: FnOnce() -> T + 'static>(
        self: &Rc<Self>,
        f: F,
    ) -> JoinHandle<T> {
        let slot = JoinSlot::new();
        let theirs = slot.clone();
        let co = self.spawn_task(move || theirs.finish(catch_task(f)));
        JoinHandle::new(co, slot, self.clone())
    }

    /// Spawns a coroutine the loop owns until it finishes; `f` must not
    /// panic (callers catch).
    pub(crate) fn spawn_task<F: FnOnce() + 'static>(self: &Rc<Self>, f: F) -> Coroutine {
        if self.closed.get() {
            // Spawned by a destructor while the loop unwinds its
            // coroutines: the coroutine never runs (a panic here would
            // abort, being raised during unwinding). Dropped unstarted, it
            // is finished: its handle reports it cancelled.
            let co = Coroutine::new(f);
            co.cancel();
            return co;
        }
        let index = self.tasks.borrow_mut().reserve();
        let done = TaskDone {
            inner: self.clone(),
            index,
        };
        let co = match Builder::new().create(move || {
            let _done = done;
            f();
        }) {
            Ok(co) => co,
            Err(e) => {
                self.tasks.borrow_mut().unreserve(index);
                panic!("costack: cannot allocate a coroutine stack: {e}");
            }
        };
        co.set_home(Some(self.home.clone()));
        self.tasks.borrow_mut().fill(index, co.clone());
        self.schedule(&co);
        co
    }

    /// Makes cross-thread wakes of this thread's coroutines notify this
    /// loop (with several loops on a thread, the one that polls).
    fn take_mailbox(&self) {
        let remote = self.remote.clone();
        self.mailbox
            .set_notify(Some(Arc::new(move || remote.notify())));
        MAILBOX_LOOP.with(|m| m.set(self));
    }

    pub(crate) fn call_soon_local(&self, f: Box<dyn FnOnce()>) {
        self.bhs.borrow_mut().push_back(f);
    }

    /// Moves bottom halves posted by other threads to the local queue and
    /// delivers cross-thread wakes.
    fn take_remote(&self) -> bool {
        let posted = self.remote.take();
        let any = !posted.is_empty();
        if any {
            let mut bhs = self.bhs.borrow_mut();
            for f in posted {
                bhs.push_back(f);
            }
        }
        self.mailbox.deliver() | any
    }

    /// Runs what is runnable now: due timers, bottom halves, then the
    /// coroutines on the run queue. Work made runnable meanwhile waits for
    /// the next pass, so nothing starves the fd events.
    fn dispatch(&self) -> bool {
        let mut progress = false;
        if self.remote.is_notified() {
            progress |= self.take_remote();
        }
        if !self.timers.borrow().is_empty() {
            let now = Instant::now();
            loop {
                let due = self.timers.borrow_mut().pop_expired(now);
                match due {
                    Some(wait) => {
                        wait.complete(Outcome::TimedOut, self);
                        progress = true;
                    }
                    None => break,
                }
            }
            self.timers.borrow_mut().compact();
        }
        let n = self.bhs.borrow().len();
        for _ in 0..n {
            let bh = self.bhs.borrow_mut().pop_front();
            match bh {
                Some(bh) => {
                    progress = true;
                    bh();
                }
                None => break,
            }
        }
        let n = self.run_queue.borrow().len();
        for _ in 0..n {
            let co = self.run_queue.borrow_mut().pop_front();
            let Some(co) = co else { break };
            if co.is_entered() {
                // Poll was called from inside this coroutine (or one it
                // entered); it runs once it yields back to an outer pass.
                self.run_queue.borrow_mut().push_back(co);
                continue;
            }
            co.swap_queued(false);
            if !co.is_finished() {
                progress = true;
                co.enter();
            }
        }
        progress
    }

    /// Waits for fd events at most `timeout_ms` and completes the waits
    /// they satisfy.
    fn wait_events(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut events = self.events.take();
        if events.capacity() == 0 {
            events.reserve(256);
        }
        let res = self.reactor.wait(&mut events, timeout_ms);
        let mut progress = false;
        if res.is_ok() {
            for &Event { token, bits } in events.iter() {
                match token {
                    TOKEN_NOTIFY => progress |= self.take_remote(),
                    TOKEN_URING => progress |= self.uring.reap(self),
                    token if token & REG_BIT != 0 => progress |= self.reg_event(token, bits),
                    fd => progress |= self.fd_event(fd as RawSock, bits),
                }
            }
        }
        self.events.replace(events);
        res.map(|()| progress)
    }

    /// Asks the reactor again and again without waiting, until something made
    /// progress or `until` passed. Returns whether something did, and
    /// whether the thread was switched out meanwhile.
    ///
    /// Each round yields the CPU to whatever else is runnable on it: a
    /// peer on the same CPU (a client sharing it, a compiler) must not
    /// wait for our poll, and [`wait_blocking`](Inner::wait_blocking)
    /// takes the switch as a sign that polling does not pay.
    fn poll_events(&self, until: Instant) -> io::Result<(bool, bool)> {
        // Counted from the first yield on: an event found at once costs
        // no more system calls than a blocking wait would.
        let mut switches = None;
        let preempted =
            |before: Option<u64>| before.is_some_and(|n| sys::involuntary_switches() != n);
        loop {
            if self.remote.is_notified() && self.take_remote() {
                return Ok((true, preempted(switches)));
            }
            if self.wait_events(0)? {
                return Ok((true, preempted(switches)));
            }
            if Instant::now() >= until {
                return Ok((false, preempted(switches)));
            }
            if switches.is_none() {
                switches = Some(sys::involuntary_switches());
            }
            sys::yield_cpu();
        }
    }

    /// Waits for fd events until `deadline` (the next timer; `None`:
    /// forever), polling first for the current window if polling is on,
    /// and adapts the window to how long the wait took.
    fn wait_blocking(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let timeout = |now: Instant| match deadline {
            Some(d) => sys::ms_ceil(d.saturating_duration_since(now)),
            None => -1,
        };
        if !self.busy_poll.enabled() {
            return self.wait_events(timeout(Instant::now()));
        }
        let start = Instant::now();
        let window = self.busy_poll.window();
        let mut progress = false;
        let mut preempted = false;
        if !window.is_zero() {
            let until = start + window;
            // Something else wanting this CPU while we poll is probably
            // the source of the event, or load we take the CPU from.
            (progress, preempted) =
                self.poll_events(deadline.map_or(until, |d| d.min(until)))?;
        }
        if !progress {
            progress = self.wait_events(timeout(Instant::now()))?;
        }
        self.busy_poll.adjust(start.elapsed(), preempted);
        Ok(progress)
    }

    /// Whether no coroutine of this loop can ever run again: nothing is
    /// queued, and nothing is left that could wake one (a timer, a wait
    /// on a descriptor or io_uring, a bottom half, a [`Waker`] of a
    /// coroutine of this thread, a [`LoopHandle`]). Blocking then would
    /// hang the thread for good. (Wakers held by waiters of a lock count,
    /// so a deadlock between locks is not seen; a coroutine suspended with
    /// nobody to wake it, the common mistake, is.)
    ///
    /// [`Waker`]: super::Waker
    pub(crate) fn is_stuck(&self) -> bool {
        // Cheap checks first: this runs before every blocking iteration of
        // `block_on`, and the walk over registrations last.
        self.run_queue.borrow().is_empty()
            && self.bhs.borrow().is_empty()
            && self.timers.borrow().is_empty()
            && self.fds.borrow().is_empty()
            && !self.uring.busy()
            && !self.remote.is_notified()
            && !self.remote.has_handles()
            && self.thread_wakers() == 0
            && !self.regs.borrow().has_waiters()
    }

    /// How many [`Waker`](super::Waker)s of this thread's coroutines are
    /// alive: the holders of the thread's mailbox beyond the thread itself
    /// and its loops (which are all there is besides wakers).
    fn thread_wakers(&self) -> usize {
        let loops = LOOPS
            .try_with(|l| l.borrow().iter().filter(|(_, w)| w.strong_count() > 0).count())
            .unwrap_or(0);
        Arc::strong_count(&self.mailbox).saturating_sub(1 + loops)
    }

    /// Unwinds the spawned coroutines and drops all queued work.
    ///
    /// A destructor that waits while its coroutine unwinds (a lock held by
    /// another task, a sleep, a thread-pool job) suspends it; the loop then
    /// keeps running timers, fd events and cross-thread wakes, entering
    /// only such unwinding coroutines, until every unwind has finished.
    fn shutdown(&self) {
        self.closed.set(true);
        self.remote.close();
        let mut first_panic = None;
        let mut draining = Vec::new();
        loop {
            let tasks = self.tasks.borrow_mut().drain();
            let queued: Vec<Coroutine> = self.run_queue.borrow_mut().drain(..).collect();
            let bhs: Vec<_> = self.bhs.borrow_mut().drain(..).collect();
            if tasks.is_empty() && queued.is_empty() && bhs.is_empty() {
                break;
            }
            for co in &queued {
                co.swap_queued(false);
            }
            drop(queued);
            drop(bhs);
            for co in tasks {
                if let Some(p) = co.cancel() {
                    first_panic.get_or_insert(p);
                }
                if co.is_draining() {
                    draining.push(co);
                }
            }
            self.drive_unwinds(&mut draining, &mut first_panic);
        }
        if MAILBOX_LOOP.try_with(Cell::get).ok() == Some(self as *const Inner) {
            self.mailbox.set_notify(None);
            let _ = MAILBOX_LOOP.try_with(|m| m.set(std::ptr::null()));
        }
        drop(self.timers.borrow_mut().take_all());
        self.fds.borrow_mut().clear();
        self.regs.borrow_mut().clear();
        self.uring.shutdown(self);
        let id = self.id;
        let _ = LOOPS.try_with(|l| l.borrow_mut().retain(|(i, _)| *i != id));
        if let Some(p) = first_panic {
            if !std::thread::panicking() {
                panic::resume_unwind(p);
            }
        }
    }
}

impl Inner {
    /// One iteration (see [`EventLoop::poll`]).
    pub(crate) fn poll(self: &Rc<Self>, blocking: bool) -> bool {
        let inner = self;
        let _current = CurrentGuard::enter(inner);
        let mut progress = inner.dispatch();
        loop {
            let waiting = !progress && blocking;
            if progress {
                // Busy: ask the reactor only every few iterations, so coroutines
                // waking each other do not pay a syscall per switch.
                // Cross-thread posts are seen without it (`dispatch` checks
                // the notification flag).
                let ticks = inner.busy_ticks.get().wrapping_add(1);
                inner.busy_ticks.set(ticks);
                if !ticks.is_multiple_of(32) {
                    return true;
                }
            }
            inner.busy_ticks.set(0);
            let events = if waiting {
                let deadline = inner.timers.borrow_mut().next_deadline();
                inner.wait_blocking(deadline)
            } else {
                inner.wait_events(0)
            };
            match events {
                Ok(p) => progress |= p,
                Err(e) => panic!("costack: waiting for events failed: {e}"),
            }
            progress |= inner.dispatch();
            if progress || !blocking {
                return progress;
            }
        }
    }

    /// Runs the closed loop until the unwinds in `draining` have finished.
    /// Each iteration is `poll(true)`'s, but the run queue only ever holds
    /// unwinding coroutines (see `schedule`).
    fn drive_unwinds(
        &self,
        draining: &mut Vec<Coroutine>,
        first_panic: &mut Option<Box<dyn std::any::Any + Send>>,
    ) {
        loop {
            draining.retain(Coroutine::is_draining);
            if draining.is_empty() {
                return;
            }
            let step = panic::catch_unwind(AssertUnwindSafe(|| {
                if !self.dispatch() {
                    let deadline = self.timers.borrow_mut().next_deadline();
                    if let Err(e) = self.wait_blocking(deadline) {
                        panic!("costack: waiting for events failed: {e}");
                    }
                    self.dispatch();
                }
            }));
            if let Err(p) = step {
                first_panic.get_or_insert(p);
            }
        }
    }
}

/// Removes a finished (or unwound) task from its loop's task table.
struct TaskDone {
    inner: Rc<Inner>,
    index: usize,
}

impl Drop for TaskDone {
    fn drop(&mut self) {
        // Not run in a coroutine only if the task never started: then the
        // loop's shutdown drained the table already.
        if let Some(id) = coroutine::with_current(|co| co.map(Coroutine::id)) {
            let removed = self.inner.tasks.borrow_mut().remove(self.index, id);
            // Dropping our own handle here is fine: whoever entered us
            // holds another one.
            drop(removed);
        }
    }
}

struct Owner {
    inner: Rc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Destructors of unwound coroutines may call `aio` functions: they
        // find the loop (closed) rather than panic while unwinding.
        let _current = CurrentGuard::enter(&self.inner);
        self.inner.shutdown();
    }
}

/// A single-threaded event loop (QEMU's AioContext).
///
/// It runs coroutines and wakes them when the fds, timers or thread-pool
/// jobs they wait for are ready. Each thread runs its own loop; the loop
/// running [`block_on`](EventLoop::block_on) or [`poll`](EventLoop::poll)
/// is the *current* loop of its thread, the one the free functions of
/// [`aio`](crate::aio) use. Clones name the same loop.
///
/// Dropping the last clone unwinds the coroutines it spawned that have not
/// finished (their destructors run) and drops queued bottom halves.
///
/// A loop is bound to its thread (neither `Send` nor `Sync`); other threads
/// use its [`handle`](EventLoop::handle):
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// send(costack::aio::EventLoop::new().unwrap());
/// ```
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::{Duration, Instant};
///
/// let lp = EventLoop::new().unwrap();
/// let t = Instant::now();
/// let sum = lp.block_on(|| {
///     let a = aio::spawn(|| aio::sleep(Duration::from_millis(20)));
///     aio::sleep(Duration::from_millis(20)); // overlaps with `a`
///     while !a.is_finished() {
///         aio::sleep(Duration::from_millis(1));
///     }
///     1 + 1
/// });
/// assert_eq!(sum, 2);
/// assert!(t.elapsed() < Duration::from_millis(1000));
/// ```
#[derive(Clone)]
pub struct EventLoop {
    owner: Rc<Owner>,
}

impl EventLoop {
    /// Creates a loop on the backend that the environment variable
    /// `COSTACK_AIO` names (`io_uring`, `epoll` or `poll`; see
    /// [`with_backend`](EventLoop::with_backend)), or by default: epoll for
    /// descriptors, and io_uring for [`fs`](crate::fs) where the kernel
    /// allows it (probed on first use; `COSTACK_NO_IO_URING=1` turns it
    /// off), else the thread pool.
    ///
    /// ```
    /// use costack::aio::{Backend, EventLoop};
    ///
    /// let lp = EventLoop::new().unwrap();
    /// match std::env::var("COSTACK_AIO").ok().as_deref() {
    ///     Some("poll") => assert_eq!(lp.backend(), Backend::Poll),
    ///     Some("epoll") => assert_eq!(lp.backend(), Backend::Epoll),
    ///     _ => assert!(matches!(lp.backend(), Backend::IoUring | Backend::Epoll)),
    /// }
    /// ```
    ///
    /// # Errors
    /// If `COSTACK_AIO` holds anything else, or a backend that is not
    /// available here (`ErrorKind::InvalidInput`, `Unsupported`): never a
    /// silent fallback. If the loop's descriptors cannot be created (fd
    /// limits).
    pub fn new() -> io::Result<EventLoop> {
        match Self::backend_from_env()? {
            Some(backend) => Self::with_backend(backend),
            #[cfg(target_os = "linux")]
            None => Self::build(Reactor::epoll()?, UringState::new(true)),
            #[cfg(not(target_os = "linux"))]
            None => Self::with_backend(Backend::Poll),
        }
    }

    /// Creates a loop on `backend`:
    ///
    /// - [`Backend::IoUring`]: epoll for descriptors and io_uring for
    ///   [`fs`](crate::fs), which must be available;
    /// - [`Backend::Epoll`]: epoll, `fs` on the thread pool;
    /// - [`Backend::Poll`]: poll(2) (QEMU's fdmon-poll), `fs` on the
    ///   thread pool.
    ///
    /// # Errors
    /// `ErrorKind::Unsupported` if the kernel refuses io_uring (or
    /// `COSTACK_NO_IO_URING` is set) for `IoUring`; as
    /// [`new`](EventLoop::new) otherwise.
///
/// # Examples
///
/// ```
/// use costack::aio::{Backend, EventLoop};
///
/// let lp = EventLoop::with_backend(Backend::Poll).unwrap();
/// assert_eq!(lp.block_on(|| 1 + 1), 2);
/// ```
    pub fn with_backend(backend: Backend) -> io::Result<EventLoop> {
        match backend {
            #[cfg(target_os = "linux")]
            Backend::IoUring => {
                let lp = Self::build(Reactor::epoll()?, UringState::new(true))?;
                if !lp.uses_io_uring() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "costack: the io_uring backend is not available here (the kernel \
                         refused a ring or an opcode, io_uring_disabled is set, or \
                         COSTACK_NO_IO_URING is)",
                    ));
                }
                Ok(lp)
            }
            #[cfg(target_os = "linux")]
            Backend::Epoll => Self::build(Reactor::epoll()?, UringState::new(false)),
            Backend::Poll => Self::build(Reactor::poll(), UringState::new(false)),
            #[cfg(not(target_os = "linux"))]
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("costack: the {backend} backend is Linux-only; poll is this system's"),
            )),
        }
    }

    /// As [`new`](EventLoop::new), but [`fs`](crate::fs) I/O always goes
    /// to the thread pool, never to io_uring (`COSTACK_AIO=poll` still
    /// selects poll(2); anything else gives epoll).
    ///
    /// # Errors
    /// As [`new`](EventLoop::new).
///
/// # Examples
///
/// ```
/// use costack::aio::EventLoop;
///
/// let lp = EventLoop::without_io_uring().unwrap();
/// assert!(!lp.uses_io_uring());
/// ```
    pub fn without_io_uring() -> io::Result<EventLoop> {
        match Self::backend_from_env()? {
            #[cfg(target_os = "linux")]
            Some(Backend::IoUring | Backend::Epoll) | None => Self::with_backend(Backend::Epoll),
            _ => Self::with_backend(Backend::Poll),
        }
    }

    /// The backend `COSTACK_AIO` asks for, if it is set (and not empty).
    fn backend_from_env() -> io::Result<Option<Backend>> {
        let value = match std::env::var("COSTACK_AIO") {
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Ok(v) if v.is_empty() => return Ok(None),
            Ok(v) => v,
            Err(std::env::VarError::NotUnicode(v)) => v.to_string_lossy().into_owned(),
        };
        match Backend::from_name(&value) {
            Some(b) => Ok(Some(b)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("costack: COSTACK_AIO={value:?} is not one of io_uring, epoll, poll"),
            )),
        }
    }

    fn build(reactor: Reactor, uring: UringState) -> io::Result<EventLoop> {
        let notifier = match &reactor {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(_) => sys::Notifier::eventfd()?,
            Reactor::Poll(_) => sys::Notifier::new()?,
        };
        let remote = Arc::new(Remote::new(notifier));
        reactor.watch(remote.notifier.fd(), TOKEN_NOTIFY)?;
        let mailbox = mailbox();
        let id = NEXT_LOOP_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inner = Rc::new_cyclic(|weak: &Weak<Inner>| Inner {
            id,
            reactor,
            remote: remote.clone(),
            mailbox: mailbox.clone(),
            run_queue: RefCell::new(VecDeque::new()),
            bhs: RefCell::new(VecDeque::new()),
            timers: RefCell::new(Timers::default()),
            fds: RefCell::new(HashMap::new()),
            regs: RefCell::new(Registrations::default()),
            tasks: RefCell::new(Tasks::default()),
            home: Rc::new(LoopHome(weak.clone())),
            events: RefCell::new(Vec::with_capacity(256)),
            uring,
            busy_ticks: Cell::new(0),
            busy_poll: BusyPoll::new(busy_poll::default_max()),
            closed: Cell::new(false),
        });
        // Cross-thread wakes of this thread's coroutines notify this loop.
        inner.take_mailbox();
        LOOPS.with(|l| l.borrow_mut().push((id, Rc::downgrade(&inner))));
        Ok(EventLoop {
            owner: Rc::new(Owner { inner }),
        })
    }

    pub(crate) fn inner(&self) -> &Rc<Inner> {
        &self.owner.inner
    }

    /// Runs `f` in a coroutine on this loop, and the loop until `f`
    /// returns; returns its value. A panic in `f` is resumed here. A panic
    /// in a spawned coroutine is caught at its boundary (see
    /// [`JoinHandle::join`]); one in a bottom half propagates out of
    /// `block_on` (the loop stays usable).
    ///
    /// If `f` waits for something that can never happen, `block_on` waits
    /// forever, as a thread would.
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::Duration;
///
/// let lp = EventLoop::new().unwrap();
/// let v = lp.block_on(|| {
///     aio::sleep(Duration::from_millis(1)); // the loop runs meanwhile
///     "done"
/// });
/// assert_eq!(v, "done");
/// ```
    pub fn block_on<T: 'static, F: FnOnce() -> T + 'static>(&self, f: F) -> T {
        self.spawn(f)
            .run_loop_until_done()
            .unwrap_or_else(|p| panic::resume_unwind(p))
    }

    /// Spawns a coroutine running `f` on this loop; it starts in a coming
    /// iteration. The loop owns it until it finishes: dropping the returned
    /// handle detaches it, as with `std::thread::spawn`. A panic in it is
    /// caught at its boundary: [`JoinHandle::join`] returns it as `Err`;
    /// with the handle dropped, the panic hook has reported it and the loop
    /// and its other coroutines go on (one bad connection handler never
    /// takes a server down).
    ///
    /// Coroutines spawned by destructors while the loop is being dropped
    /// never run (their handles report [`CANCELLED`](super::CANCELLED)).
    ///
    /// # Panics
    /// If no coroutine stack can be allocated.
///
/// # Examples
///
/// ```
/// use costack::aio::EventLoop;
///
/// let lp = EventLoop::new().unwrap();
/// let h = lp.spawn(|| 6 * 7); // starts in a coming iteration
/// assert_eq!(h.join().unwrap(), 42); // runs the loop until it is done
/// ```
    pub fn spawn<T: 'static, F: FnOnce() -> T + 'static>(&self, f: F) -> JoinHandle<T> {
        self.inner().spawn(f)
    }

    /// Runs `f` on this loop, outside any coroutine, in a coming iteration
    /// (a bottom half); the thread-local counterpart of
    /// [`LoopHandle::call_soon`].
///
/// ```
/// use costack::aio::EventLoop;
/// use std::cell::Cell;
/// use std::rc::Rc;
///
/// let lp = EventLoop::new().unwrap();
/// let ran = Rc::new(Cell::new(false));
/// let r = ran.clone();
/// lp.call_soon(move || r.set(true));
/// while !ran.get() {
///     lp.poll(true);
/// }
/// ```
    pub fn call_soon<F: FnOnce() + 'static>(&self, f: F) {
        self.inner().call_soon_local(Box::new(f));
    }

    /// Runs one iteration of the loop (aio_poll): due timers, bottom
    /// halves, runnable coroutines, and fd events. With `blocking`, waits
    /// until at least one of those made progress; without, never waits.
    /// Returns whether anything made progress.
    ///
    /// A panic in a coroutine or bottom half propagates out of `poll`;
    /// work not yet run stays queued for the next call.
///
/// ```
/// use costack::aio::EventLoop;
///
/// let lp = EventLoop::new().unwrap();
/// assert!(!lp.poll(false)); // nothing to do: returns at once
/// let h = lp.spawn(|| ());
/// while !h.is_finished() {
///     lp.poll(true); // runs what is ready, waits when nothing is
/// }
/// ```
    pub fn poll(&self, blocking: bool) -> bool {
        self.inner().poll(blocking)
    }

    /// A thread-safe handle to post work to this loop from other threads.
///
/// ```
/// use costack::aio::EventLoop;
///
/// let lp = EventLoop::new().unwrap();
/// let handle = lp.handle(); // Send + Sync
/// let t = std::thread::spawn(move || handle.spawn(|| std::thread::current().id()));
/// let remote = t.join().unwrap();
/// lp.block_on(move || assert_eq!(remote.join().unwrap(), std::thread::current().id()));
/// ```
    pub fn handle(&self) -> LoopHandle {
        self.inner().remote.handle()
    }

    /// How many spawned coroutines have not finished yet.
///
/// ```
/// use costack::aio::EventLoop;
///
/// let lp = EventLoop::new().unwrap();
/// let h = lp.spawn(|| ());
/// assert_eq!(lp.task_count(), 1);
/// h.join().unwrap();
/// assert_eq!(lp.task_count(), 0);
/// ```
    pub fn task_count(&self) -> usize {
        self.inner().tasks.borrow().len
    }

    /// Sets how long, at most, the loop busy-polls for events before it
    /// blocks in the reactor (QEMU's `poll-max-ns`); zero turns polling
    /// off. The window it polls adapts between zero and this maximum: it
    /// grows while events come a little later than it, and drops to zero
    /// after a wait longer than the maximum (see
    /// [`set_poll_factors`](EventLoop::set_poll_factors)), so an idle
    /// loop does not spin; it also drops to zero for a few waits after
    /// the poll was preempted (something else needs this CPU) or found an
    /// event at once (the rest of a burst, better left to pile up while
    /// the thread sleeps, so it is read in fewer, larger reads).
    ///
    /// Polling trades CPU time for latency: an event that arrives while
    /// the loop polls spares the thread a sleep and a wake-up. It pays off
    /// for request/reply traffic with one request outstanding (a few tens
    /// of microseconds cover a round trip over loopback).
    ///
    /// New loops take the maximum from the environment variable
    /// `COSTACK_POLL_MAX_NS` (nanoseconds), or zero: no polling.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use std::time::Duration;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// lp.set_poll_max(Duration::from_micros(50));
    /// assert_eq!(lp.poll_max(), Duration::from_micros(50));
    /// lp.block_on(|| aio::sleep(Duration::from_millis(1)));
    /// ```
    pub fn set_poll_max(&self, max: Duration) {
        self.inner().busy_poll.set_max(max);
    }

    /// The longest the loop busy-polls before blocking (zero: it never
    /// does); see [`set_poll_max`](EventLoop::set_poll_max).
///
/// ```
/// use costack::aio::EventLoop;
/// use std::time::Duration;
///
/// let lp = EventLoop::new().unwrap();
/// lp.set_poll_max(Duration::from_micros(20));
/// assert_eq!(lp.poll_max(), Duration::from_micros(20));
/// ```
    pub fn poll_max(&self) -> Duration {
        self.inner().busy_poll.max()
    }

    /// Sets how the polling window adapts (QEMU's `poll-grow` and
    /// `poll-shrink`): after a wait that a longer window would have
    /// caught, it is multiplied by `grow` (at least 2; from zero it starts
    /// at 4 µs); after a wait longer than the maximum, divided by `shrink`
    /// (0 or 1: back to zero). The defaults are 2 and 0.
///
/// ```
/// use costack::aio::EventLoop;
/// use std::time::Duration;
///
/// let lp = EventLoop::new().unwrap();
/// lp.set_poll_max(Duration::from_micros(100));
/// lp.set_poll_factors(4, 2); // grow fast, halve after a long wait
/// ```
    pub fn set_poll_factors(&self, grow: u32, shrink: u32) {
        self.inner().busy_poll.set_factors(grow, shrink);
    }

    /// How long the loop would busy-poll if it had to wait now: the
    /// adaptive window, between zero and [`poll_max`](EventLoop::poll_max).
///
/// ```
/// use costack::aio::EventLoop;
///
/// let lp = EventLoop::new().unwrap();
/// assert!(lp.poll_window() <= lp.poll_max());
/// ```
    pub fn poll_window(&self) -> Duration {
        self.inner().busy_poll.window()
    }

    /// Whether [`fs`](crate::fs) I/O of this loop goes through io_uring
    /// (probing the kernel on first call), rather than the thread pool.
///
/// ```
/// use costack::aio::EventLoop;
///
/// let lp = EventLoop::new().unwrap();
/// println!("fs I/O through io_uring: {}", lp.uses_io_uring());
/// ```
    pub fn uses_io_uring(&self) -> bool {
        self.inner().uring.available(self.inner())
    }

    /// The backend the loop runs on (probing io_uring on first call, as
    /// [`uses_io_uring`](EventLoop::uses_io_uring)).
///
/// ```
/// use costack::aio::{Backend, EventLoop};
///
/// let lp = EventLoop::with_backend(Backend::Epoll).unwrap();
/// assert_eq!(lp.backend(), Backend::Epoll);
/// ```
    pub fn backend(&self) -> Backend {
        if !self.inner().reactor.is_epoll() {
            Backend::Poll
        } else if self.uses_io_uring() {
            Backend::IoUring
        } else {
            Backend::Epoll
        }
    }
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner();
        f.debug_struct("EventLoop")
            // Not `backend()`: formatting must not probe for io_uring.
            .field("reactor", &inner.reactor.name())
            .field("reactor_fd", &inner.reactor.raw_fd())
            .field("tasks", &inner.tasks.borrow().len)
            .field("run_queue", &inner.run_queue.borrow().len())
            .finish()
    }
}
