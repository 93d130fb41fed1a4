//! Stacks for the thread backend: plain heap blocks. A coroutine's body runs
//! on its own OS thread there (guarded by std), so the block only holds the
//! not-yet-started closure; and under Miri, which this backend serves, no
//! `mmap`/`madvise` tricks are available.

use std::alloc::{self as heap, Layout};
use std::io;

/// No guard: nothing runs on these stacks.
#[allow(dead_code)] // read only through `guard_size`, which nothing asks here
pub(super) const GUARD_PAGES: usize = 0;

pub(crate) fn page_size() -> usize {
    4096
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, page_size()).expect("stack size overflows a Layout")
}

/// Allocates a stack of `size` usable bytes (whole pages); returns its
/// bottom.
pub(super) fn alloc(size: usize) -> io::Result<*mut u8> {
    // SAFETY: the layout has a non-zero size (at least MIN_STACK_SIZE).
    let p = unsafe { heap::alloc(layout(size)) };
    if p.is_null() {
        return Err(io::ErrorKind::OutOfMemory.into());
    }
    Ok(p)
}

/// Frees a stack from `alloc`.
///
/// # Safety
/// Nothing may use the stack any more.
pub(super) unsafe fn free(bottom: *mut u8, size: usize) {
    // SAFETY: `bottom` came from `alloc` with this size (caller's contract).
    unsafe { heap::dealloc(bottom, layout(size)) }
}
