//! The loop's timers: a binary min-heap of deadlines (QEMU's QEMUTimerList
//! is a sorted list; a heap keeps arming and expiring O(log n), so 100,000
//! sleepers do not make each poll O(n)).
//!
//! A cancelled timer stays in the heap until it comes up (or until
//! cancelled entries outnumber live ones, when the heap is rebuilt), so
//! cancelling is O(1).

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::Instant;

use super::wait::Wait;

struct Entry {
    deadline: Instant,
    seq: u64,
    wait: Rc<Wait>,
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

/// Cancels its timer when dropped (the wait it belongs to ended otherwise).
pub(crate) struct TimerGuard {
    cancelled: Rc<Cell<bool>>,
    timers: std::rc::Weak<super::event_loop::Inner>,
}

impl Drop for TimerGuard {
    fn drop(&mut self) {
        if !self.cancelled.replace(true) {
            if let Some(inner) = self.timers.upgrade() {
                inner.timers.borrow_mut().cancelled += 1;
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Entry>,
    seq: u64,
    cancelled: usize,
}

impl Timers {
    /// Arms a timer that completes `wait` at `deadline`.
    pub(crate) fn add(
        &mut self,
        inner: &Rc<super::event_loop::Inner>,
        deadline: Instant,
        wait: Rc<Wait>,
    ) -> TimerGuard {
        let cancelled = Rc::new(Cell::new(false));
        self.seq += 1;
        self.heap.push(Entry {
            deadline,
            seq: self.seq,
            wait,
            cancelled: cancelled.clone(),
        });
        TimerGuard {
            cancelled,
            timers: Rc::downgrade(inner),
        }
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(top) = self.heap.peek() {
            if top.cancelled.get() {
                self.heap.pop();
                self.cancelled -= 1;
            } else {
                return Some(top.deadline);
            }
        }
        None
    }

    /// Pops one timer due at `now`, marking it fired.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Rc<Wait>> {
        loop {
            let top = self.heap.peek()?;
            if top.cancelled.get() {
                self.heap.pop();
                self.cancelled -= 1;
                continue;
            }
            if top.deadline > now {
                return None;
            }
            let e = self.heap.pop().expect("peeked");
            e.cancelled.set(true); // so its guard does not count it again
            return Some(e.wait);
        }
    }

    /// Drops cancelled entries once they are the majority.
    pub(crate) fn compact(&mut self) {
        if self.cancelled > 1024 && self.cancelled * 2 > self.heap.len() {
            let heap = std::mem::take(&mut self.heap);
            self.heap = heap.into_iter().filter(|e| !e.cancelled.get()).collect();
            self.cancelled = 0;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.len() == self.cancelled
    }

    /// Removes every timer (loop shutdown); returns their waits.
    pub(crate) fn take_all(&mut self) -> Vec<Rc<Wait>> {
        self.cancelled = 0;
        let heap = std::mem::take(&mut self.heap);
        heap.into_iter()
            .map(|e| {
                e.cancelled.set(true); // so its guard does not count it
                e.wait
            })
            .collect()
    }
}
