//! Fair share (tokio's cooperative budget): a coroutine whose I/O calls
//! keep completing without waiting (a socket that always has data, a file
//! in the page cache) still lets its loop run now and then, so one hot
//! connection cannot starve the loop's other coroutines, its timers (a
//! `timeout`'s deadline) or a `cancel()` from a neighbour.
//!
//! Such calls charge the thread's budget (one unit per call, more for
//! large transfers); a coroutine that spends it yields once, to the back of
//! its loop's run queue. The loop refills it before each coroutine it runs.

use std::cell::Cell;

use crate::coroutine::{self, cancel, Coroutine};

/// Units a coroutine may spend between two turns of its loop.
pub(crate) const BUDGET: u32 = 128;

crate::arch::logical_thread_local! {
    static SPENT: Cell<u32> = const { Cell::new(0) };
}

/// Charges `cost` units for an I/O call that did not wait; yields to the
/// loop once the budget is spent (a wait point then).
#[inline]
pub(crate) fn charge(cost: u32) {
    let spent = SPENT.with(|s| {
        let v = s.get() + cost;
        s.set(v);
        v
    });
    if spent >= BUDGET {
        spent_all();
    }
}

#[cold]
fn spent_all() {
    refill();
    // Only coroutines of a loop yield (a home: a loop, or a CoFuture's
    // poller; the poller decides for itself); plain threads just block in
    // their calls.
    if coroutine::current_is_polled() {
        return;
    }
    if let Some(me) = crate::current() {
        yield_to_loop(me);
    }
}

/// Refills the budget: the loop is about to run a coroutine.
#[inline]
pub(crate) fn refill() {
    SPENT.with(|s| s.set(0));
}

/// Lets everything runnable on its loop run, then goes on: schedules the
/// calling coroutine `me` at the back of its loop's run queue and yields
/// (a coroutine of no loop goes on at once). A wait point: a pending
/// cancellation is delivered before and after.
pub(crate) fn yield_to_loop(me: Coroutine) {
    cancel::checkpoint();
    if me.schedule_home() {
        drop(me);
        coroutine::yield_now();
        cancel::checkpoint();
    }
}
