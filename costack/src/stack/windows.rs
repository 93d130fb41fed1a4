//! Windows stacks: one `VirtualAlloc` reservation each.
//!
//! Layout, from the reservation's base up:
//!
//! ```text
//!   1 page             reserved, never committed: any access faults
//!   GUARD_PAGES - 1    committed with PAGE_GUARD: the first touch raises
//!                      STATUS_GUARD_PAGE_VIOLATION and leaves the page
//!                      writable, so the exception dispatcher (which runs on
//!                      the faulting stack) has room to report the overflow
//!   size               committed, read-write: the usable stack
//! ```
//!
//! The whole usable range is committed up front, so that no stack probe or
//! kernel stack-growth logic is needed (Windows only grows the stack of a
//! thread or fiber it made itself).

use std::io;
use std::ptr;

use windows_sys::Win32::System::Memory::{
    VirtualAlloc, VirtualFree, MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, PAGE_GUARD, PAGE_READWRITE,
};
use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};

/// Guard pages below each stack (one inaccessible, the rest PAGE_GUARD).
pub(super) const GUARD_PAGES: usize = 4;

pub(crate) fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: SYSTEM_INFO is plain data (integers and pointers), for
        // which all-zero bytes are a valid value.
        let mut info: SYSTEM_INFO = unsafe { std::mem::zeroed() };
        // SAFETY: GetSystemInfo only writes the struct it is given, which is
        // a valid, exclusively borrowed SYSTEM_INFO.
        unsafe { GetSystemInfo(&mut info) };
        info.dwPageSize as usize
    })
}

/// Reserves and commits a stack of `size` usable bytes; returns its bottom.
pub(super) fn alloc(size: usize) -> io::Result<*mut u8> {
    let page = page_size();
    let guard = GUARD_PAGES * page;
    // SAFETY: a fresh reservation; no existing memory is affected.
    let base = unsafe { VirtualAlloc(ptr::null(), size + guard, MEM_RESERVE, PAGE_READWRITE) };
    if base.is_null() {
        return Err(io::Error::last_os_error());
    }
    let base = base.cast::<u8>();
    // SAFETY: both ranges lie inside the reservation just made.
    let ok = unsafe {
        !VirtualAlloc(
            base.add(page).cast(),
            guard - page,
            MEM_COMMIT,
            PAGE_READWRITE | PAGE_GUARD,
        )
        .is_null()
            && !VirtualAlloc(base.add(guard).cast(), size, MEM_COMMIT, PAGE_READWRITE).is_null()
    };
    if !ok {
        let err = io::Error::last_os_error();
        // SAFETY: the reservation is ours and unused.
        unsafe { VirtualFree(base.cast(), 0, MEM_RELEASE) };
        return Err(err);
    }
    Ok(base.wrapping_add(guard))
}

/// Releases a stack from `alloc`, pages and address space.
///
/// # Safety
/// Nothing may use the stack any more.
pub(super) unsafe fn free(bottom: *mut u8, _size: usize) {
    let base = bottom.wrapping_sub(GUARD_PAGES * page_size());
    // SAFETY: `base` is the start of the reservation `alloc` made; nothing
    // uses it (caller's contract).
    unsafe { VirtualFree(base.cast(), 0, MEM_RELEASE) };
}
