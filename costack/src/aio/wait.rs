//! One suspended wait of a coroutine on its loop: for an fd, a timer or an
//! io_uring completion. The loop completes it and schedules the coroutine;
//! the coroutine yields until its wait is complete, so a stray wake (an
//! explicit `Coroutine::wake`, a duplicate notification) only costs a
//! re-check.

use std::cell::Cell;
use std::rc::Rc;

use super::event_loop::Inner;
use crate::coroutine::control::CoId;
use crate::coroutine::{self, Coroutine};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pending,
    Ready,
    TimedOut,
}

pub(crate) struct Wait {
    /// Names the waiter without keeping it alive: the loop does not own
    /// coroutines it did not spawn.
    co: CoId,
    outcome: Cell<Outcome>,
}

impl Wait {
    /// A wait for the calling coroutine.
    pub(crate) fn new(co: &Coroutine) -> Rc<Wait> {
        Rc::new(Wait {
            co: co.id(),
            outcome: Cell::new(Outcome::Pending),
        })
    }

    /// Completes the wait (first completion wins) and schedules the waiter.
    pub(crate) fn complete(&self, how: Outcome, inner: &Inner) {
        if self.outcome.get() != Outcome::Pending {
            return;
        }
        self.outcome.set(how);
        if let Some(co) = Coroutine::from_id(self.co) {
            inner.schedule(&co);
        }
    }

    /// Yields until the wait completes (a wait point).
    pub(crate) fn suspend(&self, what: &str) -> Outcome {
        coroutine::wait::wait_until(what, || match self.outcome.get() {
            Outcome::Pending => None,
            done => Some(done),
        })
    }
}

/// Suspends the calling coroutine, on its event loop, until `ready` gives
/// a value (`Some` of it), or until `deadline` passes (`None`). Whoever
/// makes `ready` true wakes the coroutine (an [`aio::Waker`](super::Waker),
/// a lock's grant). A wait point: a pending cancellation unwinds from here.
///
/// # Panics
/// Outside a coroutine on an event loop (a `CoFuture` included, when a
/// deadline is given: its executor has no costack timers).
pub(crate) fn wait_deadline<T>(
    what: &str,
    deadline: Option<std::time::Instant>,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    let Some(deadline) = deadline else {
        return Some(coroutine::wait::wait_until(what, ready));
    };
    if let Some(v) = ready() {
        return Some(v);
    }
    let inner = super::context(what);
    let me = crate::current().expect("checked by context()");
    inner.adopt(&me);
    let wait = Wait::new(&me);
    drop(me);
    let _timer = inner
        .timers
        .borrow_mut()
        .add(&inner, deadline, wait.clone());
    coroutine::wait::wait_until(what, || match ready() {
        Some(v) => Some(Some(v)),
        None if wait.outcome.get() == Outcome::TimedOut => Some(None),
        None => None,
    })
}
