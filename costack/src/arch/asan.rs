//! AddressSanitizer fiber annotations (feature `asan`, for builds with
//! `-Zsanitizer=address`): ASan must be told before and after every stack
//! switch, or it reports false stack-buffer errors and loses its
//! fake-stack (use-after-return) bookkeeping. Without the feature these
//! functions are empty and inlined away.
//!
//! Per coroutine, ASan needs a fake-stack handle and its resumer's stack
//! bounds; they live in an [`Area`] at the top of the coroutine's stack, the
//! one place that does not move.

use core::ffi::c_void;
#[cfg(feature = "asan")]
use core::ptr;

/// What ASan needs to know per coroutine.
#[repr(C)]
pub(crate) struct Area {
    fake: *mut c_void,
    caller_bottom: *const c_void,
    caller_size: usize,
    _pad: usize,
}

#[cfg(feature = "asan")]
extern "C" {
    fn __sanitizer_start_switch_fiber(save: *mut *mut c_void, bottom: *const c_void, size: usize);
    fn __sanitizer_finish_switch_fiber(
        save: *mut c_void,
        bottom_old: *mut *const c_void,
        size_old: *mut usize,
    );
}

/// Prepares a new area.
///
/// # Safety
/// `area` must be writable and outlive the coroutine.
#[inline(always)]
#[cfg_attr(not(feature = "asan"), allow(unused_variables))]
pub(crate) unsafe fn init(area: *mut Area) {
    #[cfg(feature = "asan")]
    // SAFETY: the caller's contract.
    unsafe {
        area.write(Area {
            fake: ptr::null_mut(),
            caller_bottom: ptr::null(),
            caller_size: 0,
            _pad: 0,
        })
    };
}

/// The resumer is about to switch to the stack `[bottom, bottom + size)`;
/// `fake` keeps its own fake stack meanwhile.
#[inline(always)]
#[cfg_attr(not(feature = "asan"), allow(unused_variables))]
pub(crate) unsafe fn resuming(fake: &mut *mut c_void, bottom: *const u8, size: usize) {
    #[cfg(feature = "asan")]
    // SAFETY: ASan's documented protocol; `fake` outlives the switch.
    unsafe {
        __sanitizer_start_switch_fiber(fake, bottom.cast(), size)
    };
}

/// The resumer got control back.
#[inline(always)]
#[cfg_attr(not(feature = "asan"), allow(unused_variables))]
pub(crate) unsafe fn resumed(fake: *mut c_void) {
    #[cfg(feature = "asan")]
    // SAFETY: `fake` is what `resuming` saved on this stack.
    unsafe {
        __sanitizer_finish_switch_fiber(fake, ptr::null_mut(), ptr::null_mut())
    };
}

/// The coroutine got control (first entry or after a suspend): it records
/// its resumer's stack for the way back.
///
/// # Safety
/// `area` is the running coroutine's (see `init`).
#[inline(always)]
#[cfg_attr(not(feature = "asan"), allow(unused_variables))]
pub(crate) unsafe fn landed(area: *mut Area) {
    #[cfg(feature = "asan")]
    // SAFETY: the area is ours; ASan's documented protocol.
    unsafe {
        __sanitizer_finish_switch_fiber(
            (*area).fake,
            &raw mut (*area).caller_bottom,
            &raw mut (*area).caller_size,
        )
    };
}

/// The coroutine is about to switch back to its resumer; `dying` when it
/// will never be resumed again.
///
/// # Safety
/// As `landed`.
#[inline(always)]
#[cfg_attr(not(feature = "asan"), allow(unused_variables))]
pub(crate) unsafe fn leaving(area: *mut Area, dying: bool) {
    #[cfg(feature = "asan")]
    // SAFETY: as `landed`; a null save slot tells ASan this stack is done.
    unsafe {
        let save = if dying {
            ptr::null_mut()
        } else {
            &raw mut (*area).fake
        };
        __sanitizer_start_switch_fiber(save, (*area).caller_bottom, (*area).caller_size)
    };
}

/// Called by the trampoline on a coroutine's first entry.
#[cfg(feature = "asan")]
pub(crate) unsafe extern "C" fn first_entry(area: *mut Area) {
    // SAFETY: the trampoline passes the new coroutine's area.
    unsafe { landed(area) }
}
