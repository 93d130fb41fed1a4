//! Stack overflow in a coroutine, on Windows: a vectored exception handler
//! recognises a fault in the running coroutine's guard (or, for fibers,
//! whose stacks Windows guards itself, a STATUS_STACK_OVERFLOW while a
//! coroutine runs), writes the same message as on Unix and ends the process.
//! Other exceptions go on to the next handler, so Rust's own message for an
//! overflowing thread stack keeps working.
//!
//! The handler runs on the faulting stack: the guard's PAGE_GUARD pages (see
//! `stack/windows.rs`) give it room.

use std::sync::Once;

use windows_sys::Win32::Foundation::{
    EXCEPTION_ACCESS_VIOLATION, EXCEPTION_GUARD_PAGE, EXCEPTION_STACK_OVERFLOW,
};
use windows_sys::Win32::Storage::FileSystem::WriteFile;
use windows_sys::Win32::System::Console::{GetStdHandle, STD_ERROR_HANDLE};
use windows_sys::Win32::System::Diagnostics::Debug::{
    AddVectoredExceptionHandler, EXCEPTION_POINTERS,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, TerminateProcess};

use crate::coroutine::current_ptr;

static INSTALL: Once = Once::new();

const EXCEPTION_CONTINUE_SEARCH: i32 = 0;

/// Makes sure overflows of coroutines are reported.
#[inline]
pub(in crate::coroutine) fn install() {
    INSTALL.call_once(|| {
        // SAFETY: registers a handler that stays valid for the process's
        // life; 1 = call it before handlers registered earlier.
        unsafe { AddVectoredExceptionHandler(1, Some(handler)) };
    });
}

unsafe extern "system" fn handler(info: *mut EXCEPTION_POINTERS) -> i32 {
    // SAFETY: the system passes a valid record for the exception at hand.
    let rec = unsafe { &*(*info).ExceptionRecord };
    let cur = current_ptr();
    if cur.is_null() {
        return EXCEPTION_CONTINUE_SEARCH;
    }
    // SAFETY: CURRENT is a live block (the fault interrupted its code);
    // reading its name and stack bounds does not allocate or lock.
    let co = unsafe { &*cur };
    let ours = match rec.ExceptionCode {
        EXCEPTION_STACK_OVERFLOW => true,
        EXCEPTION_ACCESS_VIOLATION | EXCEPTION_GUARD_PAGE if rec.NumberParameters >= 2 => {
            let addr = rec.ExceptionInformation[1];
            co.stack().is_some_and(|s| {
                let (lo, hi) = s.guard();
                (lo..hi).contains(&addr)
            })
        }
        _ => false,
    };
    if ours {
        report(co.name(), co.stack().map_or(0, |s| s.size()));
    }
    EXCEPTION_CONTINUE_SEARCH
}

/// Writes the overflow message with no allocation and ends the process.
fn report(name: Option<&str>, size: usize) -> ! {
    let mut buf = [0u8; 512];
    let len = super::message(name, size, &mut buf);
    // SAFETY: plain system calls on the process's own handles; the buffer
    // outlives the call.
    unsafe {
        let mut written = 0;
        WriteFile(
            GetStdHandle(STD_ERROR_HANDLE),
            buf.as_ptr(),
            len as u32,
            &mut written,
            std::ptr::null_mut(),
        );
        TerminateProcess(GetCurrentProcess(), EXCEPTION_STACK_OVERFLOW as u32);
    }
    // TerminateProcess on our own process does not return.
    std::process::abort()
}
