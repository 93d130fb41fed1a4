//! A bounded per-thread pool of stacks, so that create+enter+finish reuses
//! a stack instead of asking the kernel (QEMU's coroutine pool).
//!
//! Pooled stacks keep their touched pages, which is what makes reuse cheap.
//! A stack that does not fit in the pool goes back to the arenas with its
//! pages discarded, and [`trim`] empties the thread's pool the same way.

use std::cell::RefCell;
use std::io;

use super::Stack;

/// Most stacks one thread keeps for reuse.
pub const POOL_CAPACITY: usize = 128;

struct Pool {
    stacks: Vec<Stack>,
}

crate::arch::logical_thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { stacks: Vec::new() }) };
}

/// A stack of `size` usable bytes (already rounded), from the pool if one
/// of that size is there.
pub(crate) fn take(size: usize) -> io::Result<Stack> {
    let pooled = POOL
        .try_with(|pool| {
            let mut pool = pool.borrow_mut();
            // The newest stack is the warmest; most threads use one size.
            match pool.stacks.last() {
                Some(s) if s.size() == size => pool.stacks.pop(),
                Some(_) => {
                    let i = pool.stacks.iter().rposition(|s| s.size() == size)?;
                    Some(pool.stacks.swap_remove(i))
                }
                None => None,
            }
        })
        .ok()
        .flatten();
    match pooled {
        Some(stack) => Ok(stack),
        None => Stack::new(size),
    }
}

/// Returns a stack nobody runs on any more.
pub(crate) fn give(stack: Stack) {
    let rejected = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.stacks.len() < POOL_CAPACITY {
            pool.stacks.push(stack);
            None
        } else {
            Some(stack)
        }
    });
    // A full pool, or a thread past its thread-locals: `Stack::drop` gives
    // the memory back.
    drop(rejected);
}

/// Returns every stack pooled by the calling thread to the kernel.
///
/// Pooled stacks keep the pages their coroutines touched; a thread that ran
/// many deep coroutines once and will not again can call this to release
/// that memory. Later coroutines simply allocate afresh.
pub fn trim() {
    let stacks = POOL
        .try_with(|pool| std::mem::take(&mut pool.borrow_mut().stacks))
        .unwrap_or_default();
    drop(stacks);
}

/// How many stacks the calling thread's pool holds.
pub fn pooled() -> usize {
    POOL.try_with(|pool| pool.borrow().stacks.len())
        .unwrap_or(0)
}
