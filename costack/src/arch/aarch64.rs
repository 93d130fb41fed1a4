//! AArch64 switch: AAPCS64 on Linux, and Apple's arm64 ABI on macOS, which
//! differs in nothing the switch touches (x18 is reserved there, and never
//! touched here; callee-saved registers are x19–x28 and d8–d15 on both).
//! One body; `asm_function_begin!` adds the object format's directives.
//!
//! Same design as the x86_64 switch: resuming is a `blr` through the word at
//! the bottom of the suspended context and suspending is a `ret` to the
//! resumer, so the return-address predictor stays balanced. The link
//! register cannot live on the stack by itself, so the landing code pushes
//! it on the resumer's stack: the resumer's frame then looks exactly like a
//! call frame to the unwinder.
//!
//! The compiler saves whatever callee-saved registers are live around the
//! `asm!` blocks (x20–x28 and d8–d15 are declared clobbered, the rest of the
//! caller-saved set through `clobber_abi`); `x19` and the frame pointer
//! `x29`, which LLVM does not let `asm!` name, are pushed by hand. `x18` (the
//! platform register) is never touched. FPCR is not switched, as on x86_64.
//!
//! Stack of a suspended context (`sp` points at the lowest word):
//!
//! ```text
//!   link    <- top - 16: the resumer's stack pointer while we run
//!   ...        frames of the coroutine
//!   x19        saved by `suspend`
//!   x29
//!   (pad)
//!   pc      <- sp: where `resume` branches to
//! ```
//!
//! Stack of the resumer while the context runs (`link` points here):
//!
//! ```text
//!   x19
//!   x29
//!   (pad)
//!   x30 = return address into `resume`  <- [link]
//! ```
//!
//! Fixed registers across a switch: x1 = the context's saved stack pointer,
//! x2 = the link slot.

use core::arch::{asm, global_asm};
use core::cell::Cell;

use super::{Entry, Switch};

pub(crate) struct Context {
    /// Saved stack pointer while suspended.
    sp: Cell<usize>,
    /// Slot near the top of the stack holding the resumer's stack pointer.
    link: *mut usize,
}

// The first resume lands here: sp = the resumer's stack, x30 = return
// address into `resume`, x2 = link slot; the entry function and its argument
// sit just below the link slot.
//
// CFI: the canonical frame address of the resumer is [link] + 32 (it pushed
// x29/x19, then we pushed x30 and a pad); see x86_64.rs for why the frame is
// a signal frame and why the label after the entry call is followed by an
// instruction of this function.
global_asm!(
    asm_function_begin!(local, "costack_trampoline"),
    ".cfi_startproc",
    ".cfi_signal_frame",
    "str x30, [sp, #-16]!",
    "mov x3, sp",
    "str x3, [x2]",
    "ldp x0, x4, [x2, #-16]",
    "mov sp, x2",
    // DW_CFA_def_cfa_expression, 5 bytes: DW_OP_breg31 (sp) 0; DW_OP_deref;
    // DW_OP_plus_uconst 32.
    ".cfi_escape 0x0f, 5, 0x8f, 0x00, 0x06, 0x23, 0x20",
    ".cfi_offset x30, -32",
    ".cfi_offset x29, -16",
    ".cfi_offset x19, -8",
    // No frame-pointer chain leads out of the coroutine's first frame.
    "mov x29, #0",
    // Set the return address by hand and branch: a `blr` would leave an
    // unmatched entry in the return predictor.
    "adr x30, 2f",
    "br x4",
    "2:",
    "brk #0",
    ".cfi_endproc",
    asm_function_end!("costack_trampoline"),
);

extern "C" {
    fn costack_trampoline();
}

// SAFETY: `resume` and `suspend` pair a `blr` with a `ret` across the two
// stacks as described in the module documentation; every register AAPCS64
// says a call preserves is either saved by hand (x19, x29) or declared as
// clobbered so the compiler saves it when live.
unsafe impl Switch for Context {
    // Never inlined: the trampoline is a local symbol of this crate's
    // object, which another crate's code could not name.
    #[inline(never)]
    unsafe fn new(top: *mut u8, _bottom: *mut u8, entry: Entry, arg: *mut u8) -> Self {
        debug_assert_eq!(top as usize % 16, 0);
        // SAFETY: the caller gives us the stack; these words are at its top
        // (see the layout above), and `sp` stays 16-byte aligned.
        unsafe {
            let link = top.cast::<usize>().sub(2);
            link.write(0);
            link.sub(1).write(entry as usize);
            link.sub(2).write(arg as usize);
            link.sub(4).write(costack_trampoline as *const () as usize);
            Context {
                sp: Cell::new(link.sub(4) as usize),
                link,
            }
        }
    }

    #[inline(always)]
    unsafe fn resume(&self) {
        let sp: usize;
        // SAFETY: the context is suspended (caller's contract), so `sp`
        // points at a resume address followed by the registers it restores.
        // x19 and x29 are pushed here because asm! cannot mark them
        // clobbered; the context's `ret` comes back right after the `blr`.
        unsafe {
            asm!(
                "stp x29, x19, [sp, #-16]!",
                "ldr x3, [x1]",
                "blr x3",
                "ldp x29, x19, [sp], #16",
                inout("x1") self.sp.get() => sp,
                inout("x2") self.link => _,
                out("x3") _,
                out("x20") _, out("x21") _, out("x22") _, out("x23") _, out("x24") _,
                out("x25") _, out("x26") _, out("x27") _, out("x28") _,
                out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                clobber_abi("C"),
            )
        };
        self.sp.set(sp);
    }

    #[inline(always)]
    unsafe fn suspend(&self) {
        // SAFETY: we run on this context's stack, so [link] holds the
        // resumer's stack pointer with its return address on top. We leave
        // our registers and resume address for the next `resume`, which
        // branches to label 2 with x1 = our stack pointer and x2 = link.
        unsafe {
            asm!(
                "stp x29, x19, [sp, #-16]!",
                "adr x3, 2f",
                "str x3, [sp, #-16]!",
                "mov x1, sp",
                "ldr x3, [x2]",
                "mov sp, x3",
                "ldr x30, [sp], #16",
                "ret",
                "2:",
                "str x30, [sp, #-16]!",
                "mov x3, sp",
                "str x3, [x2]",
                "add sp, x1, #16",
                "ldp x29, x19, [sp], #16",
                inout("x2") self.link => _,
                out("x1") _, out("x3") _,
                out("x20") _, out("x21") _, out("x22") _, out("x23") _, out("x24") _,
                out("x25") _, out("x26") _, out("x27") _, out("x28") _,
                out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                clobber_abi("C"),
            )
        };
    }

    #[inline(always)]
    unsafe fn exit(&self) -> ! {
        // SAFETY: as `suspend`, but nothing is saved: the stack is dead.
        unsafe {
            asm!(
                "ldr x3, [x2]",
                "mov sp, x3",
                "ldr x30, [sp], #16",
                "mov x1, #0",
                "ret",
                in("x2") self.link,
                options(noreturn),
            )
        }
    }
}
