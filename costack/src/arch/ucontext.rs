//! The portable switch: glibc's `makecontext`/`swapcontext` (feature
//! `ucontext`), as QEMU's default coroutine backend.
//!
//! Slower than the assembly switch (each `swapcontext` saves and restores
//! the signal mask with a system call and every register, and its `ret`
//! lands where the predictor does not expect it), but written against a
//! documented C interface only: a reference to compare the assembly
//! backends with, and a fallback to try when one is suspected.
//!
//! Both `ucontext_t`s (the coroutine's, and its resumer's while it runs) live
//! at the top of the coroutine's own stack: they must not move after
//! `getcontext`, because glibc points `uc_mcontext.fpregs` into the struct
//! itself, and the stack is the one place that is stable and ours.
//!
//! `makecontext` starts the coroutine in a small assembly shim whose CFI
//! reads the resumer's registers out of the resumer's `ucontext_t`, so that
//! backtraces (and debuggers) continue from a coroutine into whoever entered
//! it, as with the assembly switch.

use core::arch::global_asm;
use core::mem::{offset_of, size_of};

use super::{Entry, Switch};

/// The switch state, at the top of the coroutine's stack. `caller` must be
/// the first field: the shim's CFI reads it at offset 0.
#[repr(C)]
struct Area {
    caller: libc::ucontext_t,
    co: libc::ucontext_t,
    entry: Entry,
    arg: *mut u8,
}

pub(crate) struct Context {
    area: *mut Area,
}

// The CFI below hard-codes these offsets in its DWARF expressions (as
// multi-byte ULEB128 where they exceed 127).
const GREGS: usize = offset_of!(libc::ucontext_t, uc_mcontext);
const _: () = assert!(GREGS == 40);
const _: () = assert!(GREGS + 8 * libc::REG_RSP as usize == 160);
const _: () = assert!(GREGS + 8 * libc::REG_RIP as usize == 168);
const _: () = assert!(GREGS + 8 * libc::REG_RBP as usize == 120);
const _: () = assert!(GREGS + 8 * libc::REG_RBX as usize == 128);
const _: () = assert!(offset_of!(Area, caller) == 0);

// makecontext enters here with rdi = the Area. The caller's frame, for the
// unwinder, is whatever `swapcontext` saved in `area.caller`: CFA = its
// RSP, return address = its RIP, and rbp/rbx where it saved them. The area
// pointer is kept at [rsp] so the CFI can find it. Marked a signal frame
// for the reasons given in x86_64.rs.
global_asm!(
    ".pushsection .text.costack_uc_start,\"ax\",@progbits",
    ".balign 16",
    ".type costack_uc_start,@function",
    "costack_uc_start:",
    ".cfi_startproc",
    ".cfi_signal_frame",
    "push rdi",
    // DW_CFA_def_cfa_expression: breg7 (rsp) 0; deref; plus_uconst 160; deref.
    ".cfi_escape 0x0f, 7, 0x77, 0x00, 0x06, 0x23, 0xa0, 0x01, 0x06",
    // DW_CFA_expression rip: breg7 0; deref; plus_uconst 168.
    ".cfi_escape 0x10, 0x10, 6, 0x77, 0x00, 0x06, 0x23, 0xa8, 0x01",
    // DW_CFA_expression rbp: breg7 0; deref; plus_uconst 120.
    ".cfi_escape 0x10, 0x06, 5, 0x77, 0x00, 0x06, 0x23, 0x78",
    // DW_CFA_expression rbx: breg7 0; deref; plus_uconst 128.
    ".cfi_escape 0x10, 0x03, 6, 0x77, 0x00, 0x06, 0x23, 0x80, 0x01",
    "xor ebp, ebp",
    "mov rax, [rdi + {entry}]",
    "mov rdi, [rdi + {arg}]",
    // rsp is 16-byte aligned here (makecontext leaves it at 8 mod 16 as
    // after a call; the push made it 0 mod 16), as a call requires.
    "call rax",
    "ud2",
    ".cfi_endproc",
    ".size costack_uc_start, . - costack_uc_start",
    ".popsection",
    entry = const offset_of!(Area, entry),
    arg = const offset_of!(Area, arg),
);

extern "C" {
    fn costack_uc_start();
}

// SAFETY: swapcontext saves every register the ABI says a call preserves
// and switches stacks; `resume` and `suspend` are each one swapcontext
// between the two contexts of the area.
unsafe impl Switch for Context {
    // Never inlined: the trampoline is a local symbol of this crate's
    // object, which another crate's code could not name.
    #[inline(never)]
    unsafe fn new(top: *mut u8, bottom: *mut u8, entry: Entry, arg: *mut u8) -> Self {
        let area = ((top as usize - size_of::<Area>()) & !63) as *mut Area;
        // SAFETY: the area lies at the top of the stack we are given (which
        // is far larger than it), aligned; getcontext fills in `co` before
        // makecontext points it at the rest of the stack, below the area.
        unsafe {
            (&raw mut (*area).entry).write(entry);
            (&raw mut (*area).arg).write(arg);
            let co = &raw mut (*area).co;
            if libc::getcontext(co) != 0 {
                panic!("getcontext failed: {}", std::io::Error::last_os_error());
            }
            (*co).uc_link = core::ptr::null_mut();
            (*co).uc_stack.ss_sp = bottom.cast();
            (*co).uc_stack.ss_size = area as usize - bottom as usize;
            (*co).uc_stack.ss_flags = 0;
            let start: extern "C" fn() = core::mem::transmute(costack_uc_start as *const ());
            // glibc's x86_64 makecontext passes each argument in a full
            // 64-bit register, so a pointer goes through unharmed.
            libc::makecontext(co, start, 1, area);
        }
        Context { area }
    }

    #[inline]
    unsafe fn resume(&self) {
        // SAFETY: the context is suspended or new (caller's contract); both
        // contexts live in the area, which does not move.
        let rc =
            unsafe { libc::swapcontext(&raw mut (*self.area).caller, &raw const (*self.area).co) };
        debug_assert_eq!(rc, 0);
    }

    #[inline]
    unsafe fn suspend(&self) {
        // SAFETY: we run on this context's stack; `caller` holds whoever
        // resumed us.
        let rc =
            unsafe { libc::swapcontext(&raw mut (*self.area).co, &raw const (*self.area).caller) };
        debug_assert_eq!(rc, 0);
    }

    unsafe fn exit(&self) -> ! {
        // SAFETY: as `suspend`; nothing is saved, the stack is dead.
        unsafe { libc::setcontext(&raw const (*self.area).caller) };
        unreachable!("setcontext returned")
    }
}
