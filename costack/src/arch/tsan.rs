//! ThreadSanitizer fiber annotations (feature `tsan`, for builds with
//! `-Zsanitizer=thread`): TSan keeps a shadow call stack and vector clock
//! per fiber, so each coroutine gets a TSan fiber, and every switch says
//! where it goes. Without the feature, [`Fiber`] is empty and its methods
//! are inlined away.

#[cfg(feature = "tsan")]
use core::cell::Cell;
#[cfg(feature = "tsan")]
use core::ffi::c_void;

#[cfg(feature = "tsan")]
extern "C" {
    fn __tsan_get_current_fiber() -> *mut c_void;
    fn __tsan_create_fiber(flags: u32) -> *mut c_void;
    fn __tsan_destroy_fiber(fiber: *mut c_void);
    fn __tsan_switch_to_fiber(fiber: *mut c_void, flags: u32);
}

/// A coroutine's TSan fiber, and its resumer's while it runs.
pub(crate) struct Fiber {
    #[cfg(feature = "tsan")]
    own: *mut c_void,
    #[cfg(feature = "tsan")]
    caller: Cell<*mut c_void>,
}

impl Fiber {
    pub(crate) fn new() -> Fiber {
        Fiber {
            #[cfg(feature = "tsan")]
            // SAFETY: plain TSan runtime call; 0 = no flags.
            own: unsafe { __tsan_create_fiber(0) },
            #[cfg(feature = "tsan")]
            caller: Cell::new(core::ptr::null_mut()),
        }
    }

    /// Right before the resumer switches to the coroutine.
    #[inline(always)]
    pub(crate) fn resuming(&self) {
        #[cfg(feature = "tsan")]
        // SAFETY: TSan's documented protocol; flag 0 makes the switch a
        // synchronisation point, as it is.
        unsafe {
            self.caller.set(__tsan_get_current_fiber());
            __tsan_switch_to_fiber(self.own, 0);
        }
    }

    /// Right before the coroutine switches back to its resumer.
    #[inline(always)]
    pub(crate) fn leaving(&self) {
        #[cfg(feature = "tsan")]
        // SAFETY: as `resuming`; `caller` is the fiber that resumed us.
        unsafe {
            __tsan_switch_to_fiber(self.caller.get(), 0)
        };
    }
}

#[cfg(feature = "tsan")]
impl Drop for Fiber {
    fn drop(&mut self) {
        // SAFETY: the coroutine has exited or never started (contexts are
        // dropped only then), so nobody runs on the fiber.
        unsafe { __tsan_destroy_fiber(self.own) };
    }
}
