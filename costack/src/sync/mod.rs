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
//! Implementation: each waiter's queue node lives on its own coroutine
//! stack (see `waiter.rs`); nothing is allocated per wait. The only
//! lock-free code is CoMutex's state word (one compare-exchange to lock, one
//! `fetch_sub` to unlock); everything else runs under a plain std mutex, so
//! the module needs no loom model. CI runs its tests under Miri.

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
