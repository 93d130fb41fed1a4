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

    /// Yields until the wait completes.
    pub(crate) fn suspend(&self) -> Outcome {
        while self.outcome.get() == Outcome::Pending {
            coroutine::park();
        }
        self.outcome.get()
    }
}
