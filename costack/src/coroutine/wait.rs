//! The wait point: the one way costack's blocking-looking calls suspend a
//! coroutine (locks, queues, joins, timers, descriptors, io_uring,
//! thread-pool jobs, futures, channels).
//!
//! A wait is a condition and a suspension: whoever ends the wait makes the
//! condition true, then wakes the coroutine; the coroutine re-checks on
//! every wake, so stray wakes cost a check. Between the check and the
//! suspension a wait point delivers a pending cancellation (see
//! [`cancel`](super::cancel)) and arms the timers of deadline scopes that
//! have none yet. The condition is checked before the cancellation, so a
//! wait whose operation completed returns normally; the cancellation then
//! comes at the next wait point.

use std::ptr;
use std::task::{Context, Poll};

use super::cancel::{self, Interrupted, WAITING};
use super::control::{Control, IN_POLL};
use super::{current_ptr, not_in_coroutine, park_running};

/// Suspends the calling coroutine until `ready` returns a value, and
/// returns it. A pending cancellation unwinds from here (see the module
/// docs).
///
/// # Panics
/// Outside a coroutine, if `ready` has no value: "`what` called when not
/// in a coroutine".
#[inline]
pub(crate) fn wait_until<T>(what: &str, ready: impl FnMut() -> Option<T>) -> T {
    match try_wait_until(what, ready) {
        Ok(v) => v,
        Err(i) => i.raise(),
    }
}

/// As [`wait_until`], but a deliverable cancellation is returned, for the
/// caller to raise once it has dropped its own state: cheaper to unwind
/// (see [`Interrupted`]).
#[inline]
pub(crate) fn try_wait_until<T>(
    what: &str,
    mut ready: impl FnMut() -> Option<T>,
) -> Result<T, Interrupted> {
    loop {
        if let Some(v) = ready() {
            return Ok(v);
        }
        if let Some(i) = cancel::interrupted() {
            return Err(i);
        }
        suspend(what);
    }
}

/// As [`wait_until`], for an operation that must be stopped, and its end
/// awaited, before its caller may unwind (an I/O request that writes into
/// the caller's buffer): when a cancellation is pending and may be
/// delivered, `stop` is called once and the wait goes on until `ready`.
/// Returns the value and whether `stop` was called; the caller then
/// returns a completed operation's result normally, or calls
/// [`cancel::checkpoint`] to unwind from a stopped one.
pub(crate) fn wait_stopping<T>(
    what: &str,
    mut ready: impl FnMut() -> Option<T>,
    mut stop: impl FnMut(),
) -> (T, bool) {
    let mut stopped = false;
    loop {
        if let Some(v) = ready() {
            return (v, stopped);
        }
        if !stopped && cancel::deliverable() {
            stopped = true;
            stop();
            continue;
        }
        suspend(what);
    }
}

/// One suspension at a wait point (see the module docs); the caller has
/// checked for a cancellation to deliver.
#[inline(always)]
fn suspend(what: &str) {
    let cur = current_ptr();
    if cur.is_null() {
        not_in_coroutine(what);
    }
    // SAFETY: CURRENT is live while it runs, and this frame runs on it.
    suspend_running(unsafe { &*cur });
}

/// [`suspend`] of `co`, the running coroutine: arms the deadlines of its
/// scopes that have no timer yet, and parks it marked as waiting.
#[inline(always)]
fn suspend_running(co: &Control) {
    cancel::arm_deadlines(co);
    co.set_cancel_flag(WAITING, true);
    let _waiting = Waiting(co);
    park_running(co);
}

/// Clears a coroutine's WAITING flag however its suspension ends (a forced
/// unwind included).
struct Waiting<'a>(&'a Control);

impl Drop for Waiting<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.0.set_cancel_flag(WAITING, false);
    }
}

/// The wait of `aio::wait_future` in a coroutine that a `CoFuture` polls:
/// `poll` is called with the `Context` the current poll lent the coroutine
/// (see `future.rs`) until it is ready; in between the coroutine suspends,
/// and `CoFuture::poll` returns `Pending`. The same wait point as
/// [`wait_until`]: readiness first, then a deliverable cancellation, then
/// a parked suspension.
///
/// Everything here is inlined into the caller, down to the switch, so that
/// a resumed coroutine goes on in its caller's frame: with no frames of
/// ours to return from after the switch and none to call before the next
/// one, the CPU's return predictor, which the switch's `call`/`ret` pair
/// keeps for the poller's stack, is not thrown out of step on every await.
#[inline(always)]
pub(crate) fn wait_polled<T>(what: &str, mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
    let cur = current_ptr();
    if cur.is_null() {
        not_in_coroutine(what);
    }
    // SAFETY: CURRENT is live while it runs, and this frame runs on it, so
    // the block outlives the function.
    let co = unsafe { &*cur };
    loop {
        // Taken while in use: a nested wait inside `poll` finds no context
        // (and may not yield anyway: IN_POLL).
        let lent = co.lent_cx.replace(ptr::null_mut());
        if !lent.is_null() {
            let _lent = LentToPoll::take(co, lent);
            // SAFETY: the context was lent by the `CoFuture::poll` that
            // entered this coroutine, which is suspended in `enter` below
            // us and does not touch it until we yield or finish. We cannot
            // yield while IN_POLL is set (yield_now panics instead), so the
            // poll, and with it the context, outlives this borrow; and the
            // pointer was taken out of the slot, so no other borrow of it
            // exists meanwhile.
            let cx = unsafe { &mut *lent.cast::<Context<'_>>() };
            if let Poll::Ready(v) = poll(cx) {
                return v;
            }
            // Pending: it registered the poller's waker.
        }
        // Entered outside a poll (no context): only a re-check.
        if let Some(i) = cancel::interrupted() {
            i.raise();
        }
        suspend_running(co);
    }
}

/// A lent context taken out of the slot for one `Future::poll`: the
/// coroutine may not yield meanwhile (IN_POLL), and the context goes back
/// into the slot for the rest of the `CoFuture`'s poll when this drops
/// (also by a panic out of the future).
struct LentToPoll<'a> {
    co: &'a Control,
    lent: *mut (),
}

impl<'a> LentToPoll<'a> {
    #[inline(always)]
    fn take(co: &'a Control, lent: *mut ()) -> LentToPoll<'a> {
        co.status.set(co.status.get() | IN_POLL);
        LentToPoll { co, lent }
    }
}

impl Drop for LentToPoll<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.co.lent_cx.set(self.lent);
        self.co.status.set(self.co.status.get() & !IN_POLL);
    }
}
