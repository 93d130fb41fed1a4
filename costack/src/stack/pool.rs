//! The per-thread coroutine pool (QEMU's coroutine pool): a finished
//! coroutine's control block keeps its stack for the next coroutine of the
//! same stack size, so create+enter+finish does not ask the kernel for
//! anything. The pool is bounded by [`POOL_BYTES`] of stack per thread.
//! Beyond that, stacks go back to the process's stack arenas, which keep
//! the pages of the most recently freed stacks of each size (up to 32,768
//! of them) for the next ones, so a burst of coroutines after another
//! runs on pages already faulted in; older ones are given back to the
//! kernel. [`trim`] empties both.

pub use crate::coroutine::control::POOL_BYTES;

/// Gives every stack pooled by the calling thread back to the kernel, and
/// the pages of every freed stack the process's arenas keep for reuse.
///
/// Pooled and recently freed stacks keep the pages their coroutines
/// touched; a program that ran many coroutines (or deep ones) once and
/// will not again can call this to release that memory. Later coroutines
/// simply allocate afresh.
///
/// ```
/// use costack::{pool, Coroutine};
///
/// Coroutine::new(|| ()).enter(); // its finished stack goes to the pool
/// pool::trim();
/// assert_eq!(pool::pooled(), 0);
/// ```
pub fn trim() {
    crate::coroutine::control::trim_pool();
}

/// How many stacks the calling thread's pool holds.
///
/// ```
/// use costack::{pool, Coroutine};
///
/// pool::trim();
/// Coroutine::new(|| ()).enter();
/// assert!(pool::pooled() >= 1); // kept for the next coroutine
/// ```
pub fn pooled() -> usize {
    crate::coroutine::control::pooled()
}
