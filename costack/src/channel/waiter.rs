//! Blocked operations: the [`Waiter`] that one blocked `send`, `recv` or
//! `select` owns, the lists a channel keeps them in, and how a waiter
//! waits (a thread parks; a coroutine suspends at a wait point).
//!
//! The protocol, after Go's `select` and crossbeam's contexts:
//!
//! - A waiter registers an entry (the operation it waits for) in one list
//!   per channel it waits on, then waits until its `selected` word is no
//!   longer [`WAITING`].
//! - Whoever ends the wait claims the word with one compare-and-swap: a
//!   channel that has become ready stores the operation's id, a
//!   disconnection [`DISCONNECTED`], the waiter itself [`ABORTED`] (timed
//!   out, or saw the channel become ready while registering) or
//!   [`CANCELLED`] (its coroutine is being cancelled). Exactly one claim
//!   wins, so a select ends through exactly one of its operations.
//! - The winner wakes the waiter after releasing every lock. Waiters live
//!   in an `Arc`, so a claimer may wake one that has already returned.
//! - The waiter then unregisters from every list, and completes or retries
//!   the claimed operation. For buffered channels a claim is only a
//!   notification ("try again"); a rendezvous channel's claim carries the
//!   hand-off (see `zero.rs`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::PoisonError;
use std::time::Instant;

use super::sync::{self, Arc, AtomicBool, AtomicUsize, Mutex, MutexGuard, Ordering, Thread};
use crate::coroutine::cancel;

/// Nobody has claimed the waiter yet.
pub(crate) const WAITING: usize = 0;
/// The waiter withdrew: its deadline passed, or a channel it registered on
/// turned out to be ready already.
pub(crate) const ABORTED: usize = 1;
/// A channel it waits on was disconnected.
pub(crate) const DISCONNECTED: usize = 2;
/// The waiter's coroutine took delivery of a cancellation.
pub(crate) const CANCELLED: usize = 3;
/// Operation ids start here: a select's arm `k` is `FIRST_OPER + k`.
pub(crate) const FIRST_OPER: usize = 4;

/// How to wake a waiter.
enum Wake {
    Thread(Thread),
    Coroutine(crate::aio::Waker),
}

/// One blocked operation or select.
pub(crate) struct Waiter {
    selected: AtomicUsize,
    wake: Wake,
}

thread_local! {
    /// A waiter kept for reuse, so a thread that blocks often does not
    /// allocate each time.
    static SPARE: Cell<Option<Arc<Waiter>>> = const { Cell::new(None) };
}

impl Waiter {
    /// A waiter for the calling coroutine (or thread, outside any).
    pub(crate) fn new() -> Arc<Waiter> {
        let in_coroutine = crate::in_coroutine();
        // (Loom's threads share one OS thread, hence its thread-locals.)
        let spare = if cfg!(costack_loom) {
            None
        } else {
            SPARE.try_with(Cell::take).ok().flatten()
        };
        if let Some(mut spare) = spare {
            // Only reused when nobody else (a list, a late claimer) holds it.
            if let Some(w) = Arc::get_mut(&mut spare) {
                w.selected.store(WAITING, Ordering::Relaxed);
                let same = match &w.wake {
                    Wake::Coroutine(cw) => in_coroutine && cw.is_current(),
                    Wake::Thread(_) => !in_coroutine,
                };
                if !same {
                    w.wake = Self::current_wake(in_coroutine);
                }
                return spare;
            }
        }
        let wake = Self::current_wake(in_coroutine);
        Arc::new(Waiter {
            selected: AtomicUsize::new(WAITING),
            wake,
        })
    }

    fn current_wake(in_coroutine: bool) -> Wake {
        if in_coroutine {
            Wake::Coroutine(crate::aio::waker())
        } else {
            Wake::Thread(sync::current())
        }
    }

    /// Gives a waiter back for reuse once its wait is over.
    pub(crate) fn recycle(this: Arc<Waiter>) {
        if !cfg!(costack_loom) && Arc::strong_count(&this) == 1 {
            let _ = SPARE.try_with(|s| s.set(Some(this)));
        }
    }

    /// Claims the waiter with `sel`; on failure returns who claimed it.
    #[inline]
    pub(crate) fn try_select(&self, sel: usize) -> Result<(), usize> {
        self.selected
            .compare_exchange(WAITING, sel, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }

    /// Claims the waiter with `sel` and returns `sel`, or returns who
    /// claimed it first.
    #[inline]
    pub(crate) fn claim_or_current(&self, sel: usize) -> usize {
        match self.try_select(sel) {
            Ok(()) => sel,
            Err(s) => s,
        }
    }

    #[inline]
    pub(crate) fn selected(&self) -> usize {
        self.selected.load(Ordering::Acquire)
    }

    /// Wakes the waiter. Call with no lock held: a coroutine of this
    /// thread may be entered at once.
    pub(crate) fn wake(&self) {
        match &self.wake {
            Wake::Thread(t) => t.unpark(),
            Wake::Coroutine(w) => w.wake(),
        }
    }

    /// Whether this waiter is a coroutine's.
    pub(crate) fn is_coroutine(&self) -> bool {
        matches!(self.wake, Wake::Coroutine(_))
    }

    /// Waits until the waiter is claimed; at `deadline` (or on a
    /// deliverable cancellation) it claims itself with [`ABORTED`] (or
    /// [`CANCELLED`]) unless someone else claimed it first. Returns the
    /// winning claim.
    pub(crate) fn wait(&self, what: &str, deadline: Option<Instant>) -> usize {
        wait_for(
            self,
            what,
            deadline,
            || match self.selected() {
                WAITING => None,
                s => Some(s),
            },
            |why| Some(self.claim_or_current(why)),
        )
    }
}

/// Why a wait gives up.
pub(crate) type GiveUp = usize; // ABORTED (deadline) or CANCELLED

/// The general wait: blocks the thread or suspends the coroutine that
/// owns `waiter` until `poll` gives a value. When `deadline` passes, or a
/// cancellation may be delivered to the coroutine, `give_up` is asked to
/// withdraw ([`ABORTED`] or [`CANCELLED`]): it returns the wait's value
/// (its withdrawal, or a completion it found), or `None` when it cannot
/// withdraw yet (a hand-off is under way), and the wait goes on without a
/// deadline. A caller that gets a cancellation back cleans up and then
/// calls [`deliver_cancellation`]. Callers keep a drop guard that
/// withdraws too, for coroutines unwound without a cancellation (their
/// loop dropped) and for panics.
pub(crate) fn wait_for<R>(
    waiter: &Waiter,
    what: &str,
    deadline: Option<Instant>,
    mut poll: impl FnMut() -> Option<R>,
    mut give_up: impl FnMut(GiveUp) -> Option<R>,
) -> R {
    if !waiter.is_coroutine() {
        return park_for(deadline, poll, give_up);
    }
    let ready = coroutine_ready(&mut poll, &mut give_up);
    if let Some(v) = crate::aio::wait_deadline(what, deadline, ready) {
        return v;
    }
    // The deadline passed.
    if let Some(v) = give_up(ABORTED) {
        return v;
    }
    let ready = coroutine_ready(&mut poll, &mut give_up);
    crate::coroutine::wait::wait_until(what, ready)
}

/// The readiness check of a coroutine's wait: `poll`, and before the wait
/// point could unwind, a withdrawal. A claim that races with the
/// cancellation is then either lost by the claimer (the operation has no
/// effect) or completes normally (the cancellation comes at the next wait
/// point). `give_up(CANCELLED)` should always withdraw; if it returns
/// `None` the wait point unwinds and the caller's drop guard cleans up.
fn coroutine_ready<'a, R>(
    poll: &'a mut impl FnMut() -> Option<R>,
    give_up: &'a mut impl FnMut(GiveUp) -> Option<R>,
) -> impl FnMut() -> Option<R> + 'a {
    move || {
        if let Some(v) = poll() {
            return Some(v);
        }
        if cancel::deliverable() {
            return give_up(CANCELLED);
        }
        None
    }
}

/// [`wait_for`] on a plain thread: park, with a timeout when there is a
/// deadline. Unparks may be spurious; the loop re-polls.
fn park_for<R>(
    mut deadline: Option<Instant>,
    mut poll: impl FnMut() -> Option<R>,
    mut give_up: impl FnMut(GiveUp) -> Option<R>,
) -> R {
    // A hand-off from another thread often lands within microseconds:
    // spin a little before paying for a park and an unpark.
    let mut backoff = Backoff::new();
    while !backoff.is_completed() {
        if let Some(v) = poll() {
            return v;
        }
        backoff.snooze();
    }
    loop {
        if let Some(v) = poll() {
            return v;
        }
        match deadline {
            None => sync::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    if let Some(v) = give_up(ABORTED) {
                        return v;
                    }
                    deadline = None;
                    continue;
                }
                sync::park_timeout(d - now);
            }
        }
    }
}

/// Raises the calling coroutine's pending cancellation, after a wait that
/// returned [`CANCELLED`] has cleaned up.
pub(crate) fn deliver_cancellation() {
    cancel::checkpoint();
}

/// Blocks the caller until `deadline` (for ever if `None`): a coroutine
/// sleeps on its loop's timers, a thread sleeps. A wait point.
pub(crate) fn sleep_until(what: &str, deadline: Option<Instant>) {
    if crate::in_coroutine() {
        let _ = crate::aio::wait_deadline(what, deadline, || None::<()>);
        return;
    }
    loop {
        match deadline {
            None => sync::sleep(std::time::Duration::from_secs(1000)),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return;
                }
                sync::sleep(d - now);
            }
        }
    }
}

/// Lets another party finish a step it has started (a sender writing a
/// slot it reserved). Threads spin and then yield the CPU. A coroutine
/// yields to its loop, since the other party may be a coroutine of the
/// same thread that cannot run while this one spins.
pub(crate) struct Backoff {
    step: u32,
}

/// Steps of [`Backoff`] that spin (2^step times), then yield, before a
/// waiter blocks. (The loom model spins once and blocks soon, to keep its
/// search small.)
const SPIN_LIMIT: u32 = if cfg!(costack_loom) { 0 } else { 6 };
const YIELD_LIMIT: u32 = if cfg!(costack_loom) { 1 } else { 10 };

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { step: 0 }
    }

    /// A short spin (a compare-and-swap lost to another thread).
    #[inline]
    pub(crate) fn spin(&mut self) {
        for _ in 0..1u32 << self.step.min(SPIN_LIMIT) {
            sync::spin_loop();
        }
        if self.step <= SPIN_LIMIT {
            self.step += 1;
        }
    }

    /// Waits for another party: spins a little, then yields.
    pub(crate) fn snooze(&mut self) {
        if self.step <= SPIN_LIMIT {
            for _ in 0..1u32 << self.step {
                sync::spin_loop();
            }
            self.step += 1;
            return;
        }
        self.step += 1;
        if crate::in_coroutine() {
            let on_loop = crate::coroutine::current_is_polled() || crate::aio::has_loop();
            if on_loop {
                crate::aio::yield_now();
                return;
            }
        }
        sync::yield_now();
    }

    /// Whether spinning before blocking is worth it no longer. Coroutines
    /// never spin before blocking: the peer they wait for may be a
    /// coroutine of their own thread.
    pub(crate) fn is_completed(&self) -> bool {
        self.step > YIELD_LIMIT
    }
}

/// One registration of a waiter in a channel's list.
pub(crate) struct Entry<P> {
    pub(crate) oper: usize,
    pub(crate) waiter: Arc<Waiter>,
    pub(crate) packet: P,
}

/// A channel side's waiting operations (FIFO) and observers (`Select::ready`).
pub(crate) struct WaitList<P> {
    entries: VecDeque<Entry<P>>,
    observers: Vec<Entry<()>>,
}

impl<P> WaitList<P> {
    pub(crate) const fn new() -> Self {
        WaitList {
            entries: VecDeque::new(),
            observers: Vec::new(),
        }
    }

    pub(crate) fn register(&mut self, oper: usize, waiter: &Arc<Waiter>, packet: P) {
        self.entries.push_back(Entry {
            oper,
            waiter: waiter.clone(),
            packet,
        });
    }

    /// Removes `waiter`'s entry for `oper`, if it is still there.
    pub(crate) fn unregister(&mut self, oper: usize, waiter: &Arc<Waiter>) -> Option<Entry<P>> {
        let i = self
            .entries
            .iter()
            .position(|e| e.oper == oper && Arc::ptr_eq(&e.waiter, waiter))?;
        self.entries.remove(i)
    }

    /// Claims the first waiter that is still waiting (for its operation)
    /// and removes its entry. Entries of waiters claimed elsewhere stay
    /// until their owners unregister them.
    pub(crate) fn try_select(&mut self) -> Option<Entry<P>> {
        let i = self
            .entries
            .iter()
            .position(|e| e.waiter.try_select(e.oper).is_ok())?;
        self.entries.remove(i)
    }

    /// Whether some waiter other than `except` is still waiting.
    pub(crate) fn can_select(&self, except: Option<&Arc<Waiter>>) -> bool {
        self.entries.iter().any(|e| {
            e.waiter.selected() == WAITING && except.is_none_or(|x| !Arc::ptr_eq(x, &e.waiter))
        })
    }

    pub(crate) fn has_entries(&self) -> bool {
        !self.entries.is_empty() || !self.observers.is_empty()
    }

    pub(crate) fn watch(&mut self, oper: usize, waiter: &Arc<Waiter>) {
        self.observers.push(Entry {
            oper,
            waiter: waiter.clone(),
            packet: (),
        });
    }

    pub(crate) fn unwatch(&mut self, oper: usize, waiter: &Arc<Waiter>) {
        self.observers
            .retain(|e| !(e.oper == oper && Arc::ptr_eq(&e.waiter, waiter)));
    }

    /// Claims every observer (an operation of theirs became ready); the
    /// caller wakes the returned waiters after unlocking.
    pub(crate) fn take_observers(&mut self, wakes: &mut Vec<Arc<Waiter>>) {
        if self.observers.is_empty() {
            return;
        }
        for e in self.observers.drain(..) {
            if e.waiter.try_select(e.oper).is_ok() {
                wakes.push(e.waiter);
            }
        }
    }

    /// Claims every waiter and observer with [`DISCONNECTED`].
    pub(crate) fn disconnect(&mut self, wakes: &mut Vec<Arc<Waiter>>) {
        for e in &self.entries {
            if e.waiter.try_select(DISCONNECTED).is_ok() {
                wakes.push(e.waiter.clone());
            }
        }
        for e in self.observers.drain(..) {
            if e.waiter.try_select(DISCONNECTED).is_ok() {
                wakes.push(e.waiter);
            }
        }
    }
}

/// Locks a channel's mutex; nothing panics while one is held, so a poison
/// can only be a bug here and is ignored.
#[inline]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The waiters of one side of a buffered channel, with a flag that lets
/// the other side skip the lock when nobody waits.
pub(crate) struct SyncWaitList {
    list: Mutex<WaitList<()>>,
    is_empty: AtomicBool,
}

impl SyncWaitList {
    pub(crate) fn new() -> Self {
        SyncWaitList {
            list: Mutex::new(WaitList::new()),
            is_empty: AtomicBool::new(true),
        }
    }

    /// Registers `waiter` for `oper`. The caller must check its channel
    /// again afterwards (and abort if it became ready): the SeqCst store
    /// here and the notifier's SeqCst load make sure one of the two sees
    /// the other.
    pub(crate) fn register(&self, oper: usize, waiter: &Arc<Waiter>) {
        let mut l = lock(&self.list);
        l.register(oper, waiter, ());
        self.is_empty.store(false, Ordering::SeqCst);
    }

    pub(crate) fn unregister(&self, oper: usize, waiter: &Arc<Waiter>) {
        let mut l = lock(&self.list);
        l.unregister(oper, waiter);
        self.is_empty.store(!l.has_entries(), Ordering::SeqCst);
    }

    pub(crate) fn watch(&self, oper: usize, waiter: &Arc<Waiter>) {
        let mut l = lock(&self.list);
        l.watch(oper, waiter);
        self.is_empty.store(false, Ordering::SeqCst);
    }

    pub(crate) fn unwatch(&self, oper: usize, waiter: &Arc<Waiter>) {
        let mut l = lock(&self.list);
        l.unwatch(oper, waiter);
        self.is_empty.store(!l.has_entries(), Ordering::SeqCst);
    }

    /// The channel became ready for this side: wakes one waiter and every
    /// observer.
    ///
    /// The caller's change to the channel must be a SeqCst operation (the
    /// ring's position CAS) or made under a lock the registering side
    /// takes after registering (the queue's): then either this load sees
    /// the registration, or the registering side's check sees the change.
    #[inline]
    pub(crate) fn notify(&self) {
        if !self.is_empty.load(Ordering::SeqCst) {
            self.notify_slow();
        }
    }

    #[cold]
    fn notify_slow(&self) {
        // No allocation for the usual case: one waiter, no observers.
        let mut observers = Vec::new();
        let woken = {
            let mut l = lock(&self.list);
            let e = l.try_select();
            l.take_observers(&mut observers);
            self.is_empty.store(!l.has_entries(), Ordering::SeqCst);
            e
        };
        if let Some(e) = woken {
            e.waiter.wake();
        }
        for w in observers {
            w.wake();
        }
    }

    /// Passes on a notification that reached a waiter that is gone: wakes
    /// another waiter (observers were told already).
    pub(crate) fn notify_one_more(&self) {
        let woken = {
            let mut l = lock(&self.list);
            let e = l.try_select();
            self.is_empty.store(!l.has_entries(), Ordering::SeqCst);
            e
        };
        if let Some(e) = woken {
            e.waiter.wake();
        }
    }

    /// Wakes every waiter and observer with [`DISCONNECTED`].
    pub(crate) fn disconnect(&self) {
        let mut wakes = Vec::new();
        {
            let mut l = lock(&self.list);
            l.disconnect(&mut wakes);
            self.is_empty.store(!l.has_entries(), Ordering::SeqCst);
        }
        for w in wakes {
            w.wake();
        }
    }
}
