//! What the loop's drivers complete: one suspended wait of a coroutine, for
//! an fd, a timer or an io_uring completion.
//!
//! A driver completes the wait (the first completion wins) and wakes the
//! coroutine through its home, which schedules it on its loop, so this
//! module knows no loop. The coroutine waits at a wait point
//! ([`coroutine::wait`](crate::coroutine::wait)): it re-checks the outcome
//! on every wake, so a stray wake only costs a check, and a cancellation
//! unwinds it from there.

use std::cell::Cell;
use std::rc::Rc;

use crate::coroutine::cancel::Interrupted;
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
    /// A wait for `co` (the calling coroutine).
    pub(crate) fn new(co: &Coroutine) -> Rc<Wait> {
        Rc::new(Wait {
            co: co.id(),
            outcome: Cell::new(Outcome::Pending),
        })
    }

    /// Completes the wait (first completion wins) and wakes the waiter.
    pub(crate) fn complete(&self, how: Outcome) {
        if self.outcome.get() != Outcome::Pending {
            return;
        }
        self.outcome.set(how);
        if let Some(co) = Coroutine::from_id(self.co) {
            co.wake();
        }
    }

    pub(crate) fn outcome(&self) -> Outcome {
        self.outcome.get()
    }

    /// Suspends until the wait completes (a wait point): a deliverable
    /// cancellation comes back as `Err`, to be raised by the caller once
    /// its state is dropped (see [`Interrupted`]). For a deadline, see
    /// `Timers::suspend`.
    pub(crate) fn suspend(&self, what: &str) -> Result<Outcome, Interrupted> {
        coroutine::wait::try_wait_until(what, || match self.outcome.get() {
            Outcome::Pending => None,
            done => Some(done),
        })
    }
}
