//! The loop proper (QEMU's AioContext and aio_poll): its state and one turn.
//!
//! One turn: run due timers, bottom halves and the coroutines on the run
//! queue; wait in the readiness driver (not at all if that made progress,
//! else until the next timer or an fd or notification event, after
//! busy-polling for a while if [polling](super::EventLoop::set_poll_max) is
//! on); dispatch the events; run what they made runnable.
//!
//! The drivers own their state: readiness (the reactor and the waits on
//! descriptors), timers, the io_uring ring, the remote queue. They
//! complete waits, which wake their coroutines through the coroutines'
//! home ([`LoopHome`]), the loop's run queue; none of them knows the loop.
//!
//! Ownership: `EventLoop` handles share an owner; when the last one goes,
//! the owner shuts the loop down, unwinding the coroutines it spawned.
//! Everything else (coroutine homes, timers, handles) refers to the shared
//! [`Inner`] or its drivers only, so no reference cycle keeps a dropped loop
//! alive.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget;
use super::busy_poll::{self, BusyPoll};
use super::reactor::Reactor;
use super::readiness::{Readiness, TOKEN_NOTIFY, TOKEN_URING};
use super::remote::Remote;
use super::tasks::Tasks;
use super::timer::Timers;
use super::uring::Uring;
use super::waker::{mailbox, Mailbox};
use crate::coroutine::control::Home;
use crate::coroutine::{self, cancel, Builder, Coroutine};
use crate::sys;

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

/// Whether a loop is polling on this thread (no handle taken).
pub(crate) fn has_current() -> bool {
    CURRENT.try_with(|c| c.borrow().is_some()).unwrap_or(false)
}

/// Makes `inner` the thread's current loop until dropped.
pub(crate) struct CurrentGuard(Option<Rc<Inner>>);

impl CurrentGuard {
    pub(crate) fn enter(inner: &Rc<Inner>) -> CurrentGuard {
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

/// A loop's state, shared by its handles and its coroutines' homes.
pub(crate) struct Inner {
    id: u64,
    readiness: Readiness,
    remote: Arc<Remote>,
    mailbox: Arc<Mailbox>,
    run_queue: RefCell<VecDeque<Coroutine>>,
    bhs: RefCell<VecDeque<Box<dyn FnOnce()>>>,
    timers: Rc<Timers>,
    tasks: RefCell<Tasks>,
    home: Rc<dyn Home>,
    uring: Uring,
    /// Iterations since the loop last asked the reactor; bounds how long busy
    /// coroutines can keep fd events waiting.
    busy_ticks: Cell<u32>,
    /// Adaptive polling before blocking (see [`busy_poll`]).
    busy_poll: BusyPoll,
    closed: Cell<bool>,
}

/// The home given to a loop's coroutines: wakes from outside any coroutine
/// (a driver completing a wait, another thread's wake) go to the run queue.
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
    /// A loop waiting for descriptors on `reactor`, with `uring` for file
    /// I/O; registered as one of the thread's loops.
    pub(crate) fn new(reactor: Reactor, uring: Uring) -> io::Result<Rc<Inner>> {
        let notifier = match &reactor {
            #[cfg(target_os = "linux")]
            Reactor::Epoll(_) => sys::Notifier::eventfd()?,
            Reactor::Poll(_) => sys::Notifier::new()?,
        };
        let remote = Arc::new(Remote::new(notifier));
        let readiness = Readiness::new(reactor);
        readiness.watch(remote.notifier_fd(), TOKEN_NOTIFY)?;
        let id = NEXT_LOOP_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let inner = Rc::new_cyclic(|weak: &Weak<Inner>| Inner {
            id,
            readiness,
            remote,
            mailbox: mailbox(),
            run_queue: RefCell::new(VecDeque::new()),
            bhs: RefCell::new(VecDeque::new()),
            timers: Rc::new(Timers::default()),
            tasks: RefCell::new(Tasks::default()),
            home: Rc::new(LoopHome(weak.clone())),
            uring,
            busy_ticks: Cell::new(0),
            busy_poll: BusyPoll::new(busy_poll::default_max()),
            closed: Cell::new(false),
        });
        // Cross-thread wakes of this thread's coroutines notify this loop.
        inner.take_mailbox();
        LOOPS.with(|l| l.borrow_mut().push((id, Rc::downgrade(&inner))));
        Ok(inner)
    }

    /// The loop's number, unique in the process.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub(crate) fn timers(&self) -> &Rc<Timers> {
        &self.timers
    }

    pub(crate) fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    pub(crate) fn busy_poll(&self) -> &BusyPoll {
        &self.busy_poll
    }

    /// Whether file I/O can go through io_uring (creating the ring on
    /// first call).
    pub(crate) fn uring(&self) -> Option<&Uring> {
        self.uring.available(&self.readiness).then_some(&self.uring)
    }

    /// The ring, if stream sockets' reads and writes go through it (the
    /// io_uring backend).
    #[cfg(target_os = "linux")]
    pub(crate) fn socket_ring(&self) -> Option<&Uring> {
        self.uring
            .carries_sockets(&self.readiness)
            .then_some(&self.uring)
    }

    /// Whether fallocate requests can go through io_uring.
    #[cfg(target_os = "linux")]
    pub(crate) fn uring_fallocate(&self) -> bool {
        self.uring.has_fallocate(&self.readiness)
    }

    /// Spawned coroutines not finished yet.
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.borrow().len()
    }

    pub(crate) fn run_queue_len(&self) -> usize {
        self.run_queue.borrow().len()
    }

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
    pub(crate) fn adopt(&self, co: &Coroutine) {
        if !co.has_home() {
            co.set_home(Some(self.home.clone()));
        }
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
        cancel::retry_deferred();
        if !self.timers.is_empty() {
            progress |= self.timers.fire_expired(Instant::now());
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
                budget::refill();
                co.enter();
            }
        }
        // The pass's socket requests go to the kernel together.
        progress | self.uring.flush()
    }

    /// Waits for fd events at most `timeout` (`None`: until one comes) and
    /// completes the waits they satisfy.
    fn wait_events(&self, timeout: Option<Duration>) -> io::Result<bool> {
        self.readiness.wait(timeout, |token| match token {
            TOKEN_NOTIFY => self.take_remote(),
            TOKEN_URING => self.uring.reap(),
            _ => false,
        })
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
            if self.wait_events(Some(Duration::ZERO))? || self.uring.flush() {
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
        let timeout = |now: Instant| deadline.map(|d| d.saturating_duration_since(now));
        if !self.busy_poll.enabled() {
            return self.sleep(timeout(Instant::now()));
        }
        let start = Instant::now();
        let window = self.busy_poll.window();
        let mut progress = false;
        let mut preempted = false;
        if !window.is_zero() {
            let until = start + window;
            // Something else wanting this CPU while we poll is probably
            // the source of the event, or load we take the CPU from.
            (progress, preempted) = self.poll_events(deadline.map_or(until, |d| d.min(until)))?;
        }
        if !progress {
            progress = self.sleep(timeout(Instant::now()))?;
        }
        self.busy_poll.adjust(start.elapsed(), preempted);
        Ok(progress)
    }

    /// Waits for fd events at most `timeout` (`None`: until one comes).
    /// Socket requests on the ring signal the eventfd the loop sleeps on
    /// only meanwhile: a loop that runs or polls reads their completions
    /// from the ring itself, and spares the eventfd's wake-ups.
    fn sleep(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.uring.sleeping(true) {
            // Socket requests completed since the last look: no sleep.
            self.uring.sleeping(false);
            return Ok(self.uring.flush());
        }
        let woke = self.wait_events(timeout);
        self.uring.sleeping(false);
        woke
    }

    /// Whether no coroutine of this loop can ever run again: nothing is
    /// queued, and nothing is left that could wake one (a timer, a wait
    /// on a descriptor or io_uring, a bottom half, an
    /// [`aio::Waker`](super::Waker) of a coroutine of this thread, a
    /// [`LoopHandle`](super::LoopHandle)). Blocking then would hang the
    /// thread for good. (Wakers held by waiters of a lock count, so a
    /// deadlock between locks is not seen; a coroutine suspended with
    /// nobody to wake it, the common mistake, is.)
    pub(crate) fn is_stuck(&self) -> bool {
        // Cheap checks first: this runs before every blocking iteration of
        // `block_on`, and the walk over registrations last.
        self.run_queue.borrow().is_empty()
            && self.bhs.borrow().is_empty()
            && self.timers.is_empty()
            && !self.uring.busy()
            && !self.remote.is_notified()
            && !self.remote.has_handles()
            && self.thread_wakers() == 0
            && self.readiness.is_idle()
    }

    /// How many [`aio::Waker`](super::Waker)s of this thread's coroutines
    /// are alive: the holders of the thread's mailbox beyond the thread
    /// itself and its loops (which are all there is besides wakers).
    fn thread_wakers(&self) -> usize {
        let loops = LOOPS
            .try_with(|l| {
                l.borrow()
                    .iter()
                    .filter(|(_, w)| w.strong_count() > 0)
                    .count()
            })
            .unwrap_or(0);
        Arc::strong_count(&self.mailbox).saturating_sub(1 + loops)
    }

    /// One iteration (see [`EventLoop::poll`](super::EventLoop::poll)).
    pub(crate) fn poll(self: &Rc<Self>, blocking: bool) -> bool {
        let _current = CurrentGuard::enter(self);
        let mut progress = self.dispatch();
        loop {
            let waiting = !progress && blocking;
            if progress {
                // Busy: ask the reactor only every few iterations, so coroutines
                // waking each other do not pay a syscall per switch.
                // Cross-thread posts are seen without it (`dispatch` checks
                // the notification flag).
                let ticks = self.busy_ticks.get().wrapping_add(1);
                self.busy_ticks.set(ticks);
                if !ticks.is_multiple_of(32) {
                    return true;
                }
            }
            self.busy_ticks.set(0);
            let events = if waiting {
                self.wait_blocking(self.timers.next_deadline())
            } else {
                self.wait_events(Some(Duration::ZERO))
            };
            match events {
                Ok(p) => progress |= p,
                Err(e) => panic!("costack: waiting for events failed: {e}"),
            }
            progress |= self.dispatch();
            if progress || !blocking {
                return progress;
            }
        }
    }

    /// Unwinds the spawned coroutines and drops all queued work.
    ///
    /// A destructor that waits while its coroutine unwinds (a lock held by
    /// another task, a sleep, a thread-pool job) suspends it; the loop then
    /// keeps running timers, fd events and cross-thread wakes, entering
    /// only such unwinding coroutines, until every unwind has finished.
    pub(crate) fn shutdown(&self) {
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
        self.timers.clear();
        self.readiness.clear();
        self.uring.shutdown();
        let id = self.id;
        let _ = LOOPS.try_with(|l| l.borrow_mut().retain(|(i, _)| *i != id));
        if let Some(p) = first_panic {
            if !std::thread::panicking() {
                panic::resume_unwind(p);
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
                    if let Err(e) = self.wait_blocking(self.timers.next_deadline()) {
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
