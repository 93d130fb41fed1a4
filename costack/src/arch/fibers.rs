//! Windows fibers (feature `fibers`): `SwitchToFiber` does the switch and
//! Windows keeps the thread information block (stack bounds, fiber data,
//! exception chain) right, at the cost of a call into kernel32 per switch.
//!
//! The fiber brings its own stack, reserved by Windows with the requested
//! size; the stack costack allocated is then only used to hold the
//! not-yet-started closure. The thread that first resumes a coroutine is
//! turned into a fiber on the way (and stays one).

use core::arch::asm;
use core::cell::Cell;
use core::ffi::c_void;
use core::ptr;

use windows_sys::Win32::System::Threading::{
    ConvertThreadToFiberEx, CreateFiberEx, DeleteFiber, IsThreadAFiber, SetThreadStackGuarantee,
    SwitchToFiber,
};

use super::{Entry, Switch};

/// Save and restore the floating-point state on each switch (MXCSR and
/// the x87 control word), as the assembly switch's callers get by the ABI.
const FIBER_FLAG_FLOAT_SWITCH: u32 = 1;

/// Stack kept back for reporting an overflow.
const OVERFLOW_ROOM: u32 = 16 << 10;

pub(crate) struct Context {
    /// The coroutine's fiber, created on the first resume (when `self` has
    /// its final address, which the fiber's start routine is given).
    fiber: Cell<*mut c_void>,
    /// Whoever resumed us, while we run.
    caller: Cell<*mut c_void>,
    reserve: usize,
    entry: Entry,
    arg: *mut u8,
}

/// The running fiber (GetCurrentFiber, a header-only function in the SDK):
/// the FiberData word of the thread information block.
#[inline(always)]
fn current_fiber() -> *mut c_void {
    let fiber: *mut c_void;
    // SAFETY: gs points at the thread's TEB on x86_64 Windows; reading
    // its NT_TIB.FiberData word has no side effects.
    unsafe {
        asm!("mov {}, gs:[0x20]", out(reg) fiber, options(nostack, readonly, preserves_flags))
    };
    fiber
}

unsafe extern "system" fn fiber_start(param: *mut c_void) {
    // SAFETY: `param` is the Context that created this fiber; it lives in
    // its control block, which outlives the fiber (see `Drop`).
    let ctx = unsafe { &*(param as *const Context) };
    // Keep room below the guard for the exception dispatcher, so that an
    // overflow reaches costack's handler instead of killing the thread
    // (the guarantee is per fiber).
    let mut guarantee: u32 = OVERFLOW_ROOM;
    // SAFETY: plain call with a valid pointer.
    unsafe { SetThreadStackGuarantee(&mut guarantee) };
    // SAFETY: entry and arg are what `new` was given for this context.
    unsafe { (ctx.entry)(ctx.arg) }
}

// SAFETY: SwitchToFiber switches stacks and saves every register a call
// preserves; `resume` switches to the coroutine's fiber, `suspend` and
// `exit` back to the resumer's.
unsafe impl Switch for Context {
    unsafe fn new(top: *mut u8, bottom: *mut u8, entry: Entry, arg: *mut u8) -> Self {
        Context {
            fiber: Cell::new(ptr::null_mut()),
            caller: Cell::new(ptr::null_mut()),
            reserve: top as usize - bottom as usize,
            entry,
            arg,
        }
    }

    unsafe fn resume(&self) {
        // SAFETY: plain kernel32 calls; converting a thread that is not a
        // fiber yet is what makes SwitchToFiber legal on it.
        unsafe {
            if IsThreadAFiber() == 0 {
                let me = ConvertThreadToFiberEx(ptr::null(), FIBER_FLAG_FLOAT_SWITCH);
                assert!(
                    !me.is_null(),
                    "ConvertThreadToFiberEx: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        if self.fiber.get().is_null() {
            // SAFETY: `self` no longer moves (it is resumed in place from
            // now on), so the fiber may keep a pointer to it.
            let fiber = unsafe {
                CreateFiberEx(
                    0,
                    self.reserve,
                    FIBER_FLAG_FLOAT_SWITCH,
                    Some(fiber_start),
                    self as *const Context as *const c_void,
                )
            };
            assert!(
                !fiber.is_null(),
                "CreateFiberEx: {}",
                std::io::Error::last_os_error()
            );
            self.fiber.set(fiber);
        }
        self.caller.set(current_fiber());
        // SAFETY: the fiber is suspended (caller's contract) and not ours.
        unsafe { SwitchToFiber(self.fiber.get()) };
    }

    unsafe fn suspend(&self) {
        // SAFETY: we run on our fiber; `caller` is the suspended resumer.
        unsafe { SwitchToFiber(self.caller.get()) };
    }

    unsafe fn exit(&self) -> ! {
        // SAFETY: as `suspend`; the fiber is deleted by `Drop` once the
        // control block is recycled, from another fiber.
        unsafe { SwitchToFiber(self.caller.get()) };
        unreachable!("a finished fiber was resumed")
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let fiber = self.fiber.get();
        if !fiber.is_null() {
            // SAFETY: the coroutine has exited (the core drops a context
            // only after its coroutine finished or never started), so no one
            // runs on the fiber, and we are not it.
            unsafe { DeleteFiber(fiber) };
        }
    }
}
