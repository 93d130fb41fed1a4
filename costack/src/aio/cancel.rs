//! Deadlines and shields: [`timeout`], [`timeout_at`] and [`shield`].
//!
//! A timeout is a cancel scope with a deadline: when it passes, the
//! coroutine is cancelled up to that scope, so the body unwinds from its
//! wait point to `timeout`, which returns [`Elapsed`]. The scope's timer is
//! armed only when the body first suspends (see
//! `coroutine::cancel::DeadlineLink`): a body that never waits costs a
//! clock read and no timer.

use std::cell::Cell;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;
use std::time::{Duration, Instant};

use super::timer::{TimerAction, TimerGuard};
use super::turn::current_inner;
use crate::coroutine::cancel::{Cancelled, DeadlineLink, ScopeGuard, ShieldGuard};
use crate::coroutine::control::CoId;

/// The error of a [`timeout`] whose deadline passed before its closure
/// returned.
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::Duration;
///
/// EventLoop::new().unwrap().block_on(|| {
///     let r = aio::timeout(Duration::from_millis(1), || aio::sleep(Duration::from_secs(60)));
///     let e = r.unwrap_err();
///     assert_eq!(e.to_string(), "deadline has elapsed");
/// });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elapsed(());

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// Runs `f` in the calling coroutine, giving up once `duration` has
/// passed: `f` is cancelled at the wait point it is suspended at (or
/// reaches next) and unwinds to here, and `timeout` returns
/// `Err(Elapsed)`. If `f` returns first (also past the deadline, when it
/// reached no wait point), its value is returned and the timer is gone.
///
/// Timeouts nest and compose with [`JoinHandle::cancel`](super::JoinHandle::cancel):
/// each cancellation unwinds to its own scope, so an outer deadline or a
/// `cancel()` passes through inner timeouts, and a panic passes through
/// unchanged. A coroutine whose I/O never has to wait still reaches its
/// deadline: its loop's fair share makes it yield now and then.
///
/// # Panics
/// When not in a coroutine on a costack event loop (a `CoFuture`
/// included): "needs a costack event loop".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::Duration;
///
/// EventLoop::new().unwrap().block_on(|| {
///     let quick = aio::timeout(Duration::from_secs(1), || 6 * 7);
///     assert_eq!(quick, Ok(42));
///     let slow = aio::timeout(Duration::from_millis(5), || aio::sleep(Duration::from_secs(60)));
///     assert!(slow.is_err());
/// });
/// ```
#[track_caller]
pub fn timeout<T, F: FnOnce() -> T>(duration: Duration, f: F) -> Result<T, Elapsed> {
    timeout_at(Instant::now() + duration, f)
}

/// As [`timeout`], with a deadline instead of a duration.
///
/// # Panics
/// When not in a coroutine on a costack event loop: "needs a costack event
/// loop".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::{Duration, Instant};
///
/// EventLoop::new().unwrap().block_on(|| {
///     let deadline = Instant::now() + Duration::from_millis(5);
///     // Several steps, one deadline for all of them.
///     let r = aio::timeout_at(deadline, || {
///         aio::sleep(Duration::from_millis(1));
///         aio::sleep(Duration::from_secs(60));
///     });
///     assert!(r.is_err());
/// });
/// ```
#[track_caller]
pub fn timeout_at<T, F: FnOnce() -> T>(deadline: Instant, f: F) -> Result<T, Elapsed> {
    super::require_loop("aio::timeout");
    let scope = ScopeGuard::open("aio::timeout");
    let co = crate::coroutine::with_current(|c| c.expect("checked by require_loop").id());
    let result = {
        let timed = pin!(Deadline {
            link: DeadlineLink::new(arm_deadline),
            deadline,
            co,
            scope: scope.depth(),
            timer: Cell::new(None),
        });
        let owner: *const Deadline = &*timed;
        // SAFETY: pinned, `timed` stays at its address until it drops at
        // the end of this block, and its destructor unlinks it.
        unsafe { timed.link.link(owner.cast()) };
        panic::catch_unwind(AssertUnwindSafe(f))
    };
    let depth = scope.depth();
    drop(scope);
    match result {
        Ok(v) => Ok(v),
        Err(p)
            if p.downcast_ref::<Cancelled>()
                .is_some_and(|c| c.scope() == depth) =>
        {
            Err(Elapsed(()))
        }
        Err(p) => panic::resume_unwind(p),
    }
}

/// A timeout's deadline, linked into its coroutine while the scope is open.
struct Deadline {
    link: DeadlineLink,
    deadline: Instant,
    co: CoId,
    scope: u32,
    timer: Cell<Option<TimerGuard>>,
}

/// Arms a timeout's timer: its coroutine is about to suspend, on the loop
/// polling this thread.
///
/// # Safety
/// `owner` must point at a live [`Deadline`].
unsafe fn arm_deadline(owner: *const ()) {
    // SAFETY: our caller passes the `Deadline` its link was linked with,
    // alive while linked.
    let d = unsafe { &*owner.cast::<Deadline>() };
    let Some(inner) = current_inner() else {
        return; // no loop to wait on: nothing to time
    };
    let action = TimerAction::Cancel {
        co: d.co,
        scope: d.scope,
    };
    d.timer.set(Some(inner.timers().add(d.deadline, action)));
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.link.unlink();
    }
}

/// Runs `f` shielded from cancellation: its wait points deliver none, so
/// cleanup that must wait (a flush, a lock, a goodbye message) runs to the
/// end. A cancellation that comes meanwhile stays pending and is delivered
/// at the first wait point after `f`. Works anywhere; outside a coroutine
/// it just runs `f`.
///
/// (Wait points never deliver while a coroutine unwinds, either:
/// destructors need no shield.)
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::Duration;
///
/// EventLoop::new().unwrap().block_on(|| {
///     let r = aio::timeout(Duration::from_millis(1), || {
///         // Not cut short by the deadline:
///         aio::shield(|| aio::sleep(Duration::from_millis(20)));
///         "finished the cleanup"
///     });
///     // f returned before reaching another wait point: its value counts.
///     assert_eq!(r, Ok("finished the cleanup"));
/// });
/// ```
pub fn shield<T, F: FnOnce() -> T>(f: F) -> T {
    let _shield = ShieldGuard::new();
    f()
}
