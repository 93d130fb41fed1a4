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

use super::cancel::{self, Interrupted, WAITING};
use super::{current_ptr, not_in_coroutine, park};

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
fn suspend(what: &str) {
    let cur = current_ptr();
    if cur.is_null() {
        not_in_coroutine(what);
    }
    // SAFETY: CURRENT is live while it runs, and this frame runs on it.
    let co = unsafe { &*cur };
    cancel::arm_deadlines(co);
    co.set_cancel_flag(WAITING, true);
    // Cleared however the suspension ends (a forced unwind included).
    struct Waiting<'a>(&'a super::control::Control);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.set_cancel_flag(WAITING, false);
        }
    }
    let _waiting = Waiting(co);
    park();
}
