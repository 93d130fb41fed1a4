//! Coroutine stacks, each with a guard below it, recycled through a bounded
//! per-thread [`pool`]. How they are mapped is up to the OS module: `unix`
//! carves them from large `mmap` arenas, `windows` reserves each with
//! `VirtualAlloc`.

pub(crate) mod pool;

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
mod unix;
#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
use unix as sys;

#[cfg(any(miri, feature = "thread-backend"))]
mod heap;
#[cfg(any(miri, feature = "thread-backend"))]
use heap as sys;

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
mod valgrind;

#[cfg(all(windows, not(any(miri, feature = "thread-backend"))))]
mod windows;
#[cfg(all(windows, not(any(miri, feature = "thread-backend"))))]
use windows as sys;

use std::io;

pub(crate) use sys::page_size;

/// Default stack size, as QEMU and corosensei.
pub const DEFAULT_STACK_SIZE: usize = 1 << 20;

/// Smallest stack costack hands out (requests are rounded up to it).
pub const MIN_STACK_SIZE: usize = 16 << 10;

/// A coroutine stack: `[bottom, top)` usable, a guard below `bottom`.
#[derive(Debug)]
pub(crate) struct Stack {
    bottom: *mut u8,
    size: usize,
    /// Valgrind's id for the stack (0 when not run under Valgrind).
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
    valgrind_id: usize,
}

impl Stack {
    /// Allocates a stack with at least `size` usable bytes.
    pub(crate) fn new(size: usize) -> io::Result<Stack> {
        let size = round_size(size);
        let bottom = sys::alloc(size)?;
        Ok(Stack {
            bottom,
            size,
            #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
            valgrind_id: valgrind::register(bottom as usize, bottom as usize + size),
        })
    }

    pub(crate) fn top(&self) -> *mut u8 {
        self.bottom.wrapping_add(self.size)
    }

    pub(crate) fn bottom(&self) -> *mut u8 {
        self.bottom
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Makes the stack fit for a new coroutine. Under AddressSanitizer
    /// (feature `asan`) that clears stale poison: a coroutine's first
    /// frames never return (they leave by a switch), so their redzones
    /// stay poisoned in the shadow memory and would trip the next
    /// coroutine on this stack, in this thread or, after the stack went
    /// back to the arena, another.
    #[inline(always)]
    pub(crate) fn prepare(&self) {
        #[cfg(feature = "asan")]
        {
            extern "C" {
                fn __asan_unpoison_memory_region(addr: *const u8, size: usize);
            }
            // SAFETY: the stack is ours and nothing runs on it.
            unsafe { __asan_unpoison_memory_region(self.bottom, self.size) };
        }
    }

    /// The guard: the `guard_size()` bytes right below `bottom`.
    // Only the overflow handlers ask, and the thread backend has none.
    #[cfg_attr(any(miri, feature = "thread-backend"), allow(dead_code))]
    pub(crate) fn guard(&self) -> (usize, usize) {
        let lo = self.bottom as usize - guard_size();
        (lo, self.bottom as usize)
    }

    /// How many bytes from the top of the stack have ever been touched,
    /// in whole pages: the deepest the stack got, for every coroutine that
    /// used it (a pooled stack keeps what earlier coroutines touched).
    /// Asks `mincore` for the lowest resident page, so nothing is read (a
    /// suspended coroutine's stack is not ours to read, and Valgrind would
    /// say so). `None` where that cannot be told: without `mincore`, and
    /// with the thread backend, whose coroutines run on OS thread stacks
    /// (its heap blocks' pages say only what the allocator did with them).
    pub(crate) fn high_water(&self) -> Option<usize> {
        #[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
        {
            let page = page_size();
            let mut resident = vec![0u8; self.size / page];
            // SAFETY: `[bottom, bottom + size)` is a mapping of ours, page
            // aligned; `resident` has one byte per page.
            let r = unsafe {
                libc::mincore(self.bottom.cast(), self.size, resident.as_mut_ptr().cast())
            };
            if r != 0 {
                return None;
            }
            let first = resident.iter().position(|&b| b & 1 != 0)?;
            Some(self.size - first * page)
        }
        #[cfg(not(all(unix, not(any(miri, feature = "thread-backend")))))]
        {
            None
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        #[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
        valgrind::deregister(self.valgrind_id);
        // SAFETY: the stack is ours and nothing runs on it any more. Its
        // pages go back to the system before anyone reuses it.
        unsafe { sys::free(self.bottom, self.size) }
    }
}

/// Bytes of guard below each stack.
#[cfg_attr(any(miri, feature = "thread-backend"), allow(dead_code))]
pub(crate) fn guard_size() -> usize {
    sys::GUARD_PAGES * page_size()
}

/// Gives the pages of freed stacks back to the kernel now (`pool::trim`).
pub(crate) fn release_freed() {
    #[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
    sys::release_freed();
}

/// Rounds a requested size to whole pages, at least [`MIN_STACK_SIZE`].
pub(crate) fn round_size(size: usize) -> usize {
    let page = page_size();
    debug_assert!(page.is_power_of_two());
    (size.max(MIN_STACK_SIZE) + page - 1) & !(page - 1)
}
