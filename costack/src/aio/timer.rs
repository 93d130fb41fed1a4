//! The loop's timers: a binary min-heap of deadlines (QEMU's QEMUTimerList
//! is a sorted list; a heap keeps arming and expiring O(log n), so 100,000
//! sleepers do not make each poll O(n)).
//!
//! A timer either completes a [`Wait`] (a sleep, a wait with a deadline)
//! or cancels a coroutine's scope (an `aio::timeout` that expired). A
//! cancelled timer stays in the heap until it comes up (or until cancelled
//! entries outnumber live ones, when the heap is rebuilt), so cancelling is
//! O(1).

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::rc::{Rc, Weak};
use std::time::Instant;

use super::wait::{Outcome, Wait};
use crate::coroutine::cancel::{self, Interrupted};
use crate::coroutine::control::CoId;
use crate::Coroutine;

/// What a timer does when it fires.
pub(crate) enum TimerAction {
    /// Completes the wait with [`Outcome::TimedOut`].
    Complete(Rc<Wait>),
    /// Requests the cancellation of coroutine `co`'s scope `scope`.
    Cancel { co: CoId, scope: u32 },
}

impl TimerAction {
    fn fire(self) {
        match self {
            TimerAction::Complete(wait) => wait.complete(Outcome::TimedOut),
            TimerAction::Cancel { co, scope } => {
                if let Some(co) = Coroutine::from_id(co) {
                    cancel::request(&co, scope);
                }
            }
        }
    }
}

struct Entry {
    deadline: Instant,
    seq: u64,
    action: TimerAction,
    cancelled: Rc<Cell<bool>>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first;
    // `seq` keeps timers with equal deadlines in arming order.
    fn cmp(&self, other: &Entry) -> Ordering {
        other
            .deadline
            .cmp(&self.deadline)
            .then(other.seq.cmp(&self.seq))
    }
}

/// Cancels its timer when dropped (what it was for ended otherwise).
pub(crate) struct TimerGuard {
    cancelled: Rc<Cell<bool>>,
    timers: Weak<Timers>,
}

impl Drop for TimerGuard {
    fn drop(&mut self) {
        if !self.cancelled.replace(true) {
            if let Some(timers) = self.timers.upgrade() {
                timers.cancelled.set(timers.cancelled.get() + 1);
            }
        }
    }
}

/// One loop's timers.
#[derive(Default)]
pub(crate) struct Timers {
    heap: RefCell<BinaryHeap<Entry>>,
    seq: Cell<u64>,
    /// Cancelled entries still in the heap.
    cancelled: Cell<usize>,
}

impl Timers {
    /// Arms a timer that does `action` at `deadline`, until the guard drops.
    pub(crate) fn add(self: &Rc<Self>, deadline: Instant, action: TimerAction) -> TimerGuard {
        let cancelled = Rc::new(Cell::new(false));
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        self.heap.borrow_mut().push(Entry {
            deadline,
            seq,
            action,
            cancelled: cancelled.clone(),
        });
        TimerGuard {
            cancelled,
            timers: Rc::downgrade(self),
        }
    }

    /// Pops cancelled entries off the top.
    fn drop_cancelled_top(&self, heap: &mut BinaryHeap<Entry>) {
        while heap.peek().is_some_and(|top| top.cancelled.get()) {
            heap.pop();
            self.cancelled.set(self.cancelled.get() - 1);
        }
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let mut heap = self.heap.borrow_mut();
        self.drop_cancelled_top(&mut heap);
        heap.peek().map(|top| top.deadline)
    }

    /// Fires the timers due at `now`, in deadline order; returns whether
    /// any fired.
    pub(crate) fn fire_expired(&self, now: Instant) -> bool {
        let mut fired = false;
        loop {
            let due = {
                let mut heap = self.heap.borrow_mut();
                self.drop_cancelled_top(&mut heap);
                match heap.peek() {
                    Some(top) if top.deadline <= now => heap.pop(),
                    _ => None,
                }
            };
            let Some(e) = due else { break };
            e.cancelled.set(true); // so its guard does not count it again
            fired = true;
            // Outside the borrow: the action may arm timers.
            e.action.fire();
        }
        self.compact();
        fired
    }

    /// Drops cancelled entries once they are the majority.
    fn compact(&self) {
        let cancelled = self.cancelled.get();
        let mut heap = self.heap.borrow_mut();
        if cancelled > 1024 && cancelled * 2 > heap.len() {
            let old = std::mem::take(&mut *heap);
            *heap = old.into_iter().filter(|e| !e.cancelled.get()).collect();
            self.cancelled.set(0);
        }
    }

    /// Suspends the calling coroutine until `wait` completes, or until
    /// `deadline` passes (then `TimedOut`); see [`Wait::suspend`].
    pub(crate) fn suspend(
        self: &Rc<Self>,
        wait: &Rc<Wait>,
        what: &str,
        deadline: Option<Instant>,
    ) -> Result<Outcome, Interrupted> {
        let _timer = deadline.map(|d| self.add(d, TimerAction::Complete(wait.clone())));
        wait.suspend(what)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.borrow().len() == self.cancelled.get()
    }

    /// Removes every timer without firing it (loop shutdown).
    pub(crate) fn clear(&self) {
        self.cancelled.set(0);
        let heap = std::mem::take(&mut *self.heap.borrow_mut());
        for e in &heap {
            e.cancelled.set(true); // so its guard does not count it
        }
        drop(heap);
    }
}
