//! Waiting for time: sleeps, and waits with a deadline.

use std::time::{Duration, Instant};

use super::timer::TimerAction;
use super::wait::Outcome;
use crate::coroutine::cancel::Interrupted;
use crate::coroutine::wait::wait_until;

/// Suspends the calling coroutine for `duration` (qemu_co_sleep_ns); the
/// loop runs other work meanwhile. A wait point, even for a zero duration.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::{Duration, Instant};
///
/// let t = Instant::now();
/// EventLoop::new().unwrap().block_on(|| aio::sleep(Duration::from_millis(5)));
/// assert!(t.elapsed() >= Duration::from_millis(5));
/// ```
#[track_caller]
pub fn sleep(duration: Duration) {
    if let Err(i) = sleep_on("aio::sleep", Instant::now() + duration) {
        i.raise();
    }
}

/// Suspends the calling coroutine until `deadline`. A wait point, even for
/// a deadline that has passed.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::{Duration, Instant};
///
/// let deadline = Instant::now() + Duration::from_millis(5);
/// EventLoop::new().unwrap().block_on(move || aio::sleep_until(deadline));
/// assert!(Instant::now() >= deadline);
/// ```
#[track_caller]
pub fn sleep_until(deadline: Instant) {
    if let Err(i) = sleep_on("aio::sleep_until", deadline) {
        i.raise();
    }
}

/// Sleeps until `deadline`; a cancellation is returned, to be raised with
/// this frame's state dropped.
#[track_caller]
fn sleep_on(what: &str, deadline: Instant) -> Result<(), Interrupted> {
    let inner = super::context(what);
    let wait = super::current_wait(&inner);
    inner
        .timers()
        .suspend(&wait, what, Some(deadline))
        .map(drop)
}

/// Suspends the calling coroutine, on its event loop, until `ready` gives
/// a value (`Some` of it), or until `deadline` passes (`None`). Whoever
/// makes `ready` true wakes the coroutine (an [`aio::Waker`](super::Waker),
/// a lock's grant). A wait point: a pending cancellation unwinds from here.
///
/// # Panics
/// Outside a coroutine ("not in a coroutine"); with a deadline, outside a
/// coroutine on a costack event loop (a `CoFuture`: "needs a costack event
/// loop").
#[allow(dead_code)] // for the channels
pub(crate) fn wait_deadline<T>(
    what: &str,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    let Some(deadline) = deadline else {
        return Some(wait_until(what, ready));
    };
    if let Some(v) = ready() {
        return Some(v);
    }
    let inner = super::context(what);
    let wait = super::current_wait(&inner);
    let _timer = inner
        .timers()
        .add(deadline, TimerAction::Complete(wait.clone()));
    wait_until(what, || match ready() {
        Some(v) => Some(Some(v)),
        None if wait.outcome() == Outcome::TimedOut => Some(None),
        None => None,
    })
}
