//! Coroutine locks and queues (QEMU's qemu-coroutine-lock.c and
//! co-shared-resource).
//!
//! Waiting means suspending the calling coroutine: it happens only inside
//! a coroutine, and waiting anywhere else panics with "not in a
//! coroutine". Taking a free lock never yields, so uncontended operations
//! work anywhere. All types are `Send + Sync` (the locks when their data
//! allows, as std's) and serve coroutines of several threads: a waiter on
//! another thread is woken through its thread's event loop
//! ([`aio::Waker`](crate::aio::Waker)).
//!
//! Common rules:
//! - Waiters are served in FIFO order, with direct hand-off: whoever
//!   releases grants the lock (or permits) to the first waiter before
//!   waking it, so a newcomer cannot take it in between.
//! - Wakes follow [`Coroutine::wake`](crate::Coroutine::wake): from a
//!   running coroutine the woken waiter runs after it yields; from outside
//!   any coroutine, at once.
//! - No poisoning: a guard dropped by a panic (or by dropping its
//!   coroutine) releases normally.
//! - A coroutine dropped while it waits (its stack is unwound) leaves the
//!   queue; if it had just been granted what it waited for, the grant goes
//!   to the next waiter, so nobody misses a wake-up.
//!
//! Cost: a waiter's queue entry lives on its own coroutine's stack, so
//! waiting allocates nothing; an uncontended `CoMutex` lock is one
//! compare-exchange and its unlock one atomic subtraction, about what
//! `std::sync::Mutex` costs.
//!
//! ```
//! use costack::aio::{self, EventLoop};
//! use costack::sync::{CoQueue, CoMutex};
//! use std::rc::Rc;
//!
//! // A one-slot mailbox: a CoMutex for the data, a CoQueue to wait on it.
//! let slot = Rc::new((CoMutex::new(None::<u32>), CoQueue::new()));
//! let got = EventLoop::new().unwrap().block_on(move || {
//!     let s = slot.clone();
//!     let consumer = aio::spawn(move || {
//!         let mut g = s.0.lock();
//!         while g.is_none() {
//!             g = s.1.wait_with(g); // unlocks while waiting
//!         }
//!         g.take().unwrap()
//!     });
//!     aio::yield_now(); // the consumer waits now
//!     *slot.0.lock() = Some(7);
//!     slot.1.restart_next();
//!     consumer.join().unwrap()
//! });
//! assert_eq!(got, 7);
//! ```

mod mutex;
mod queue;
mod rwlock;
mod semaphore;
mod waiter;

#[cfg(test)]
mod tests;

pub use mutex::{CoMutex, CoMutexGuard};
pub use queue::CoQueue;
pub use rwlock::{CoRwLock, CoRwLockReadGuard, CoRwLockWriteGuard};
pub use semaphore::CoSemaphore;
