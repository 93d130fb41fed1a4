//! The coroutine core: create, enter, yield, wake (QEMU's
//! qemu-coroutine.c), on top of the `arch` switch and the stack pool.
//!
//! Invariants:
//! - A block on the active chain (state `Entered`) is referenced by whoever
//!   entered it (`enter` borrows a handle), so it cannot be released while
//!   it runs.
//! - `CURRENT` is the innermost entered coroutine of this thread (null on
//!   the thread's own stack). `resume` makes the coroutine current and
//!   remembers the one below in its `caller`; the coroutine makes its
//!   caller current again when it yields, so the enterer touches no
//!   thread-local after a yield. When it finishes, the enterer does (in
//!   `finished`), before anything else runs.
//! - A block in a wake list holds one reference, taken by `wake`; its
//!   list's owner has the `WAKES` flag set.
//! - A finished coroutine has given its stack back before `enter` returns.

mod builder;
pub(crate) mod cancel;
pub(crate) mod control;
mod info;
mod overflow;
mod unwind;
pub(crate) mod wait;

use builder::create;
pub use builder::Builder;
pub(crate) use info::live_coroutines;
pub use info::CoroutineInfo;
pub(crate) use unwind::is_forced_unwind;
use unwind::{cancelled, drop_unstarted, release, yield_cancelled};

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic;
use std::ptr::{self, NonNull};

use crate::arch::Switch;
use crate::stack::DEFAULT_STACK_SIZE;
use control::{
    CoId, Control, State, WakeList, CANCELLED, DRAINING, ENTERED, IN_POLL, PANICKED, READY,
};

crate::arch::logical_thread_local! {
    /// The innermost entered coroutine of this thread.
    static CURRENT: Cell<*const Control> = const { Cell::new(ptr::null()) };
}

#[inline]
pub(crate) fn current_ptr() -> *const Control {
    // A const-initialised Cell without destructor is always accessible,
    // even while the thread tears down its thread-locals.
    CURRENT.with(|c| c.get())
}

#[inline(always)]
fn set_current(co: *const Control) {
    CURRENT.with(|c| c.set(co))
}

/// A handle to a stackful coroutine.
///
/// A coroutine runs a closure on its own stack. [`enter`](Coroutine::enter)
/// runs it until it calls [`yield_now`] or returns; the next `enter` resumes
/// it right after the `yield_now`. Handles are cheap to clone and compare
/// equal when they name the same coroutine.
///
/// Coroutines are bound to the thread that created them (`Coroutine` is
/// neither `Send` nor `Sync`); wake one from another thread with an
/// [`aio::Waker`](crate::aio::Waker).
///
/// Dropping the last handle to a suspended coroutine unwinds its stack (its
/// destructors run) right away. If the coroutine catches that unwind with
/// `catch_unwind`, it may run on, but every further [`yield_now`] resumes
/// the unwind at once instead of suspending; if it returns normally it is
/// simply finished.
///
/// # Aborts
///
/// - A destructor that waits while its coroutine is unwound because its
///   last handle was dropped (a contended [`CoMutex`](crate::sync::CoMutex),
///   a sleep, I/O) can never be resumed: nothing holds the coroutine any
///   more. The process aborts with a message on stderr containing
///   `yielded while being dropped` and the coroutine's name. (Coroutines
///   still on an [`EventLoop`](crate::aio::EventLoop) when it is dropped are
///   unwound by the loop instead, which keeps running until such waits
///   complete.)
/// - Overflowing the coroutine's stack aborts with `stack overflow in
///   coroutine '<name>'` on stderr.
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
///
/// let steps = Rc::new(Cell::new(0));
/// let s = steps.clone();
/// let co = costack::Coroutine::new(move || {
///     s.set(1);
///     costack::yield_now();
///     s.set(2);
/// });
/// co.enter();
/// assert_eq!(steps.get(), 1);
/// co.enter();
/// assert_eq!(steps.get(), 2);
/// assert!(co.is_finished());
/// ```
pub struct Coroutine {
    ctl: NonNull<Control>,
    _not_send: PhantomData<*const ()>,
}

impl Coroutine {
    /// Creates a coroutine that will run `f` with the default 1 MiB stack.
    /// Nothing runs until [`enter`](Coroutine::enter).
    ///
    /// # Panics
    /// If no stack can be allocated; use [`Builder::create`] to handle that.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::Coroutine;
    ///
    /// let co = Coroutine::new(|| println!("runs on its own stack"));
    /// assert!(!co.is_finished()); // created, not started
    /// co.enter();
    /// assert!(co.is_finished());
    /// ```
    pub fn new<F: FnOnce() + 'static>(f: F) -> Coroutine {
        match create(DEFAULT_STACK_SIZE, None, f) {
            Ok(co) => co,
            Err(e) => panic!("costack: cannot allocate a coroutine stack: {e}"),
        }
    }

    /// A builder to set the stack size or name of a new coroutine.
    ///
    /// ```
    /// use costack::Coroutine;
    ///
    /// let co = Coroutine::builder().name("worker").stack_size(64 << 10).create(|| ()).unwrap();
    /// assert_eq!(co.name(), Some("worker"));
    /// ```
    pub fn builder() -> Builder {
        Builder::new()
    }

    #[inline]
    fn ctl(&self) -> &Control {
        // SAFETY: a handle holds a reference, so the block is live.
        unsafe { self.ctl.as_ref() }
    }

    /// Takes a new reference to a live block.
    fn from_ptr(co: *const Control) -> Coroutine {
        // SAFETY: callers pass a live block (see the module invariants).
        let c = unsafe { &*co };
        c.refs.set(c.refs.get() + 1);
        Coroutine {
            ctl: NonNull::from(c),
            _not_send: PhantomData,
        }
    }

    /// Adopts the reference a wake list held.
    fn adopt(co: *const Control) -> Coroutine {
        Coroutine {
            // SAFETY: list members are non-null live blocks.
            ctl: unsafe { NonNull::new_unchecked(co as *mut Control) },
            _not_send: PhantomData,
        }
    }

    /// Runs the coroutine until it yields or finishes (qemu_coroutine_enter).
    ///
    /// Coroutines it woke while running are entered next, before `enter`
    /// returns. A panic in the coroutine finishes it and continues here,
    /// with the same payload.
    ///
    /// # Panics
    /// If the coroutine is entered already (running, or waiting for a
    /// coroutine it entered): "re-entered recursively"; if it has finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::{yield_now, Coroutine};
    /// use std::cell::Cell;
    /// use std::rc::Rc;
    ///
    /// let steps = Rc::new(Cell::new(0));
    /// let s = steps.clone();
    /// let co = Coroutine::new(move || {
    ///     s.set(1);
    ///     yield_now(); // back to the caller of enter
    ///     s.set(2);
    /// });
    /// co.enter();
    /// assert_eq!(steps.get(), 1);
    /// co.enter();
    /// assert_eq!(steps.get(), 2);
    /// assert!(co.is_finished());
    /// ```
    #[inline]
    pub fn enter(&self) {
        let co = self.ctl();
        if co.status.get() != READY {
            return enter_flagged(co);
        }
        run(co, ENTERED);
    }

    /// Enters the coroutine unless it is entered already or finished;
    /// returns whether it entered (qemu_coroutine_enter_if_inactive).
    ///
    /// ```
    /// use costack::{yield_now, Coroutine};
    ///
    /// let co = Coroutine::new(yield_now);
    /// assert!(co.enter_if_inactive()); // ran until it yielded
    /// assert!(co.enter_if_inactive()); // ran to the end
    /// assert!(!co.enter_if_inactive()); // finished: nothing to do
    /// ```
    pub fn enter_if_inactive(&self) -> bool {
        match self.ctl().resume_status() {
            Some(status) => {
                run(self.ctl(), status);
                true
            }
            None => false,
        }
    }

    /// Whether the coroutine is on the active chain: running, or having
    /// entered another coroutine that has not yielded back yet
    /// (qemu_coroutine_entered).
    ///
    /// ```
    /// use costack::{current, yield_now, Coroutine};
    ///
    /// let co = Coroutine::new(|| {
    ///     assert!(current().unwrap().is_entered()); // running
    ///     yield_now();
    /// });
    /// co.enter();
    /// assert!(!co.is_entered()); // suspended
    /// ```
    pub fn is_entered(&self) -> bool {
        self.ctl().state() == State::Entered
    }

    /// Whether the coroutine has returned or panicked.
    ///
    /// ```
    /// use costack::Coroutine;
    ///
    /// let co = Coroutine::new(|| ());
    /// assert!(!co.is_finished());
    /// co.enter();
    /// assert!(co.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        self.ctl().state() == State::Finished
    }

    /// Wakes the coroutine (aio_co_wake).
    ///
    /// - Inside a coroutine, the target is queued and entered right after
    ///   the current coroutine yields or finishes, so chains of wakes do not
    ///   grow the stack. Waking the current coroutine itself makes it run
    ///   again right after it yields.
    /// - Outside any coroutine, a coroutine that belongs to an event loop is
    ///   scheduled on it; any other is entered at once.
    ///
    /// - A coroutine that is entered (an ancestor of the caller, which
    ///   entered the caller directly or through others) is queued the same
    ///   way: it runs once it has yielded, right after the yield.
    ///
    /// Waking a finished coroutine, or one already queued, does nothing;
    /// `wake` never panics for the target's state.
    ///
    /// ```
    /// use costack::{current, yield_now, Coroutine};
    /// use std::cell::Cell;
    /// use std::rc::Rc;
    ///
    /// let rounds = Rc::new(Cell::new(0));
    /// let r = rounds.clone();
    /// let outer = Coroutine::new(move || {
    ///     let me = current().unwrap();
    ///     // A coroutine we enter wakes us, its entered ancestor: we run
    ///     // again right after our next yield.
    ///     Coroutine::new(move || me.wake()).enter();
    ///     r.set(1);
    ///     yield_now();
    ///     r.set(2);
    /// });
    /// outer.enter();
    /// assert_eq!(rounds.get(), 2);
    /// ```
    pub fn wake(&self) {
        let co = self.ctl();
        if co.state() == State::Finished || co.queued.get() {
            return;
        }
        if co.polled.get() {
            // Only its future's poll may enter it: tell the poller.
            if let Some(home) = co.home() {
                home.schedule(self.clone());
            }
            return;
        }
        let cur = current_ptr();
        if !cur.is_null() {
            co.queued.set(true);
            co.refs.set(co.refs.get() + 1);
            // SAFETY: CURRENT is a live entered block.
            unsafe { (*cur).push_wake(co) };
            return;
        }
        // Outside any coroutine nothing is entered, so `co` is Ready.
        match co.home() {
            Some(home) => home.schedule(self.clone()),
            None => {
                self.enter_if_inactive();
            }
        }
    }

    /// The name given by [`Builder::name`].
    ///
    /// ```
    /// use costack::{Builder, Coroutine};
    ///
    /// assert_eq!(Coroutine::new(|| ()).name(), None);
    /// let named = Builder::new().name("reader").create(|| ()).unwrap();
    /// assert_eq!(named.name(), Some("reader"));
    /// ```
    pub fn name(&self) -> Option<&str> {
        self.ctl().name()
    }

    /// The usable size of the coroutine's stack (0 once finished).
    ///
    /// ```
    /// use costack::Builder;
    ///
    /// let co = Builder::new().stack_size(100 << 10).create(|| ()).unwrap();
    /// assert!(co.stack_size() >= 100 << 10); // rounded up to whole pages
    /// ```
    pub fn stack_size(&self) -> usize {
        let co = self.ctl();
        if co.state() == State::Finished {
            // Its stack may linger until the last handle drops, but it is
            // no longer the coroutine's.
            return 0;
        }
        co.stack().map_or(0, |s| s.size())
    }

    pub(crate) fn id(&self) -> CoId {
        CoId {
            index: self.ctl().index,
            generation: self.ctl().generation.get(),
        }
    }

    /// The coroutine `id` names, if it is alive on this thread.
    pub(crate) fn from_id(id: CoId) -> Option<Coroutine> {
        control::lookup(id).map(Coroutine::from_ptr)
    }

    pub(crate) fn set_home(&self, home: Option<std::rc::Rc<dyn control::Home>>) {
        self.ctl().set_home(home);
    }

    /// Sets the flag that says the coroutine sits in a wake list or an
    /// event loop's run queue, returning its old value. A loop's run queue
    /// shares the wake lists' flag so that waking a coroutine that is
    /// already scheduled coalesces, as it does for wake lists.
    pub(crate) fn swap_queued(&self, queued: bool) -> bool {
        self.ctl().queued.replace(queued)
    }

    pub(crate) fn has_home(&self) -> bool {
        self.ctl().has_home()
    }

    /// Makes the coroutine one that only a future's poll enters (see
    /// `Control::polled`), with `home` told of its wakes.
    pub(crate) fn set_polled(&self, home: std::rc::Rc<dyn control::Home>) {
        let co = self.ctl();
        co.set_home(Some(home));
        co.polled.set(true);
    }

    /// The slot where a `CoFuture`'s poll lends its `Context` to this
    /// coroutine (see `future.rs`).
    pub(crate) fn lent_cx(&self) -> &Cell<*mut ()> {
        &self.ctl().lent_cx
    }

    /// Hands the coroutine to its home (its event loop's run queue), even
    /// from inside a coroutine, where [`wake`](Coroutine::wake) would queue
    /// it behind the running one instead; returns whether it has a home.
    pub(crate) fn schedule_home(&self) -> bool {
        match self.ctl().home() {
            Some(home) => {
                home.schedule(self.clone());
                true
            }
            None => false,
        }
    }

    /// Whether only a future's poll enters the coroutine.
    pub(crate) fn is_polled(&self) -> bool {
        self.ctl().polled.get()
    }

    /// For a polled coroutine: the `std::task::Waker` of its poller.
    pub(crate) fn task_waker(&self) -> Option<std::task::Waker> {
        if !self.is_polled() {
            return None;
        }
        self.ctl().home().and_then(|h| h.task_waker())
    }

    /// Whether the coroutine's last suspension was a [`park_running`], and clears
    /// the note.
    pub(crate) fn take_parked(&self) -> bool {
        self.ctl().parked.replace(false)
    }

    /// Starts unwinding a suspended coroutine's stack now, as dropping its
    /// last handle would, even though other handles exist: for event loops
    /// that own coroutines. The loop drives the unwind: a destructor that
    /// waits suspends the coroutine, and waking it (through its home)
    /// resumes the destructor; see [`is_draining`](Coroutine::is_draining).
    /// Returns the panic of a destructor, if any.
    pub(crate) fn cancel(&self) -> Option<Box<dyn Any + Send>> {
        let co = self.ctl();
        match co.state() {
            State::Ready if co.is_unstarted() => {
                drop_unstarted(co);
                None
            }
            State::Ready if co.status.get() == READY => {
                run_collect(co, ENTERED | CANCELLED | DRAINING)
            }
            _ => None,
        }
    }

    /// Whether a loop's [`cancel`](Coroutine::cancel) is still unwinding
    /// the coroutine: a destructor of it waits.
    pub(crate) fn is_draining(&self) -> bool {
        let co = self.ctl();
        co.state() == State::Ready && co.status.get() & DRAINING != 0
    }
}

impl Clone for Coroutine {
    fn clone(&self) -> Coroutine {
        Coroutine::from_ptr(self.ctl())
    }
}

impl Drop for Coroutine {
    #[inline]
    fn drop(&mut self) {
        let co = self.ctl();
        let refs = co.refs.get();
        if refs != 1 {
            co.refs.set(refs - 1);
        } else if co.state() == State::Finished {
            // The common end of a coroutine's life: straight back to the
            // pool (a free block's count is not read; `alloc` sets it).
            control::free(self.ctl.as_ptr());
        } else {
            release(self.ctl.as_ptr());
        }
    }
}

impl PartialEq for Coroutine {
    fn eq(&self, other: &Coroutine) -> bool {
        self.ctl == other.ctl
    }
}

impl Eq for Coroutine {}

impl std::hash::Hash for Coroutine {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.ctl.hash(state)
    }
}

impl fmt::Debug for Coroutine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let co = self.ctl();
        f.debug_struct("Coroutine")
            .field("name", &co.name())
            .field("state", &co.state())
            .finish()
    }
}

/// Switches into `co` (Ready) until it yields or finishes; `status` is
/// `ENTERED`, plus `CANCELLED` to unwind it.
#[inline(always)]
fn resume(co: &Control, status: u8) {
    co.caller.set(CURRENT.with(|c| c.replace(co)));
    co.status.set(status);
    trace_event!("enter", co);
    // SAFETY: `co` was Ready (callers check), so its context may be
    // resumed; it stays live because our caller holds a reference.
    unsafe { co.context().resume() };
}

/// A coroutine that was just resumed has finished: makes its caller
/// current again, and returns its panic, if any.
#[inline]
fn finished(co: &Control) -> Option<Box<dyn Any + Send>> {
    set_current(co.caller.get());
    give_back_stack(co);
    if co.status.get() & PANICKED != 0 {
        co.panic.take()
    } else {
        None
    }
}

/// A finished coroutine's stack goes back to the pool with its control
/// block when the last handle drops, which is usually right away; if other
/// handles linger (a `JoinHandle`), the stack is pooled now on its own
/// instead of being pinned by a finished coroutine.
#[inline]
fn give_back_stack(co: &Control) {
    if co.refs.get() > 1 {
        drop_stack(co);
    }
}

#[cold]
fn drop_stack(co: &Control) {
    if let Some(stack) = co.take_stack() {
        control::pool_stack(stack);
    }
}

/// `enter` of a coroutine whose status is not plain Ready: one being
/// unwound by its loop (entered with its flags kept), or a misuse.
#[cold]
#[inline(never)]
fn enter_flagged(co: &Control) {
    match co.resume_status() {
        Some(status) => run(co, status),
        None => cannot_enter(co.state()),
    }
}

#[cold]
#[inline(never)]
fn cannot_enter(state: State) -> ! {
    match state {
        State::Entered => panic!("coroutine re-entered recursively"),
        State::Finished => panic!("cannot enter a coroutine that has finished"),
        // Ready with a flag: only while its own enterer is still busy
        // with it (running its wakes, or unwinding it).
        _ => panic!("coroutine re-entered recursively (while {state:?})"),
    }
}

/// Enters `first` with `status` (`ENTERED`, plus the flags of an unwind in
/// progress), then every coroutine woken meanwhile, in order; resumes the
/// first panic once all of them have run.
#[inline(always)]
fn run(first: &Control, status: u8) {
    resume(first, status);
    // One compare: Ready without flags is the plain yield.
    let status = first.status.get();
    if status != READY {
        if status == State::Finished as u8 {
            // A plain return: no panic, no wakes (the common end of a
            // coroutine's life, so kept inline).
            set_current(first.caller.get());
            give_back_stack(first);
        } else {
            after_run(first);
        }
    }
}

#[inline(never)]
fn after_run(first: &Control) {
    if let Some(payload) = after_resume(first) {
        panic::resume_unwind(payload);
    }
}

/// As `run`, but returns the first panic instead of resuming it.
fn run_collect(first: &Control, status: u8) -> Option<Box<dyn Any + Send>> {
    resume(first, status);
    after_resume(first)
}

/// After `first` yielded or finished: gives back a finished coroutine's
/// stack, runs the coroutines it woke; returns the first panic.
fn after_resume(first: &Control) -> Option<Box<dyn Any + Send>> {
    let mut panicked = None;
    if first.state() == State::Finished {
        panicked = finished(first);
    }
    if first.has_wakes() {
        run_woken(first, &mut panicked);
    }
    panicked
}

#[inline(never)]
fn run_woken(first: &Control, panicked: &mut Option<Box<dyn Any + Send>>) {
    let pending = WakeList::new();
    first.take_wakes(&pending);
    while let Some(next) = pending.pop() {
        let next = Coroutine::adopt(next);
        let co = next.ctl();
        co.queued.set(false);
        match (co.state(), co.resume_status()) {
            (State::Ready, Some(status)) => resume(co, status),
            (State::Finished, _) => continue,
            (State::Entered | State::Ready, _) => {
                // An ancestor of ours was woken (or a coroutine its own
                // enterer is still busy with); entering it would be
                // recursive. Queue it for our own caller instead: it runs
                // once it has yielded.
                requeue(co);
                continue;
            }
            (State::Free, _) => unreachable!(),
        }
        co.take_wakes(&pending);
        if co.state() == State::Finished {
            if let Some(p) = finished(co) {
                panicked.get_or_insert(p);
            }
        }
    }
}

/// Hands a woken-but-entered coroutine to the current coroutine's wake list.
fn requeue(co: &Control) {
    let cur = current_ptr();
    // An entered coroutine is on the active chain, and the chain below the
    // coroutine that just yielded is ours: there is a current coroutine.
    assert!(
        !cur.is_null(),
        "costack: woken coroutine is entered, but no coroutine is current"
    );
    co.queued.set(true);
    co.refs.set(co.refs.get() + 1);
    // SAFETY: CURRENT is live.
    unsafe { (*cur).push_wake(co) };
}

/// Suspends the current coroutine and returns to whoever entered it
/// (qemu_coroutine_yield).
///
/// # Panics
/// Outside a coroutine: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::{yield_now, Coroutine};
///
/// let co = Coroutine::new(|| {
///     for _ in 0..3 {
///         yield_now(); // suspends; the next enter continues here
///     }
/// });
/// for _ in 0..4 {
///     co.enter();
/// }
/// assert!(co.is_finished());
/// ```
#[inline]
pub fn yield_now() {
    let cur = current_ptr();
    if cur.is_null() {
        not_in_coroutine("yield_now");
    }
    // SAFETY: CURRENT is live while it runs.
    yield_running(unsafe { &*cur });
}

/// [`yield_now`] of `co`, the running coroutine, inlined where a wait
/// point wants the switch in its own frame (see `wait::wait_polled`).
#[inline(always)]
pub(crate) fn yield_running(co: &Control) {
    debug_assert_eq!(co.state(), State::Entered);
    let status = co.status.get();
    if status & (CANCELLED | IN_POLL) != 0 {
        return yield_flagged(co);
    }
    // Entered becomes Ready; the flags stay for the enterer.
    co.status.set(status - 1);
    set_current(co.caller.get());
    trace_event!("yield", co);
    // SAFETY: we run on `co`'s stack.
    unsafe { co.context().suspend() };
    if co.status.get() & CANCELLED != 0 {
        cancelled();
    }
}

/// Suspends `co`, the running coroutine, in a wait that whoever ends it
/// will wake it for (a lock's grant, a timer, I/O, a job): `yield_now` for
/// costack's own waits. A future polling the coroutine wakes its executor
/// after a bare `yield_now`, not after a park.
#[inline(always)]
pub(crate) fn park_running(co: &Control) {
    co.parked.set(true);
    yield_running(co);
}

/// A yield of a coroutine with a flag that forbids a plain one.
#[cold]
#[inline(never)]
fn yield_flagged(co: &Control) {
    if co.status.get() & IN_POLL != 0 {
        panic!(
            "costack: a coroutine cannot wait inside Future::poll: the future given to \
             aio::wait_future in a CoFuture must not yield, lock or sleep in its poll"
        );
    }
    yield_cancelled(co)
}

/// Whether the running coroutine is one a future's poll drives.
#[inline]
pub(crate) fn current_is_polled() -> bool {
    let cur = current_ptr();
    // SAFETY: CURRENT is live while it runs.
    !cur.is_null() && unsafe { (*cur).polled.get() }
}

#[cold]
#[inline(never)]
#[track_caller]
pub(crate) fn not_in_coroutine(what: &str) -> ! {
    panic!("{what} called when not in a coroutine")
}

/// The running coroutine, or `None` on a thread's own stack
/// (qemu_coroutine_self).
///
/// ```
/// use costack::{current, Coroutine};
///
/// assert!(current().is_none()); // the thread's own stack
/// let co = Coroutine::new(|| assert!(current().is_some()));
/// co.enter();
/// ```
pub fn current() -> Option<Coroutine> {
    let cur = current_ptr();
    (!cur.is_null()).then(|| Coroutine::from_ptr(cur))
}

/// Whether the caller runs in a coroutine (qemu_in_coroutine).
///
/// ```
/// use costack::{in_coroutine, Coroutine};
///
/// assert!(!in_coroutine());
/// Coroutine::new(|| assert!(in_coroutine())).enter();
/// ```
#[inline]
pub fn in_coroutine() -> bool {
    !current_ptr().is_null()
}

/// Runs `f` with the current coroutine's control block, if any.
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&Coroutine>) -> R) -> R {
    let cur = current_ptr();
    if cur.is_null() {
        return f(None);
    }
    // Borrow without touching the count: CURRENT is live while we run.
    let co = ManuallyDrop::new(Coroutine {
        // SAFETY: non-null, checked above.
        ctl: unsafe { NonNull::new_unchecked(cur as *mut Control) },
        _not_send: PhantomData,
    });
    f(Some(&co))
}
