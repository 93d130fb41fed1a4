//! RISC-V 64 (LP64D, Linux) switch.
//!
//! Same design as the x86_64 switch: resuming is a `jalr` through the word
//! at the bottom of the suspended context and suspending is a `ret` to the
//! resumer, so the return-address stack stays balanced. The landing code
//! pushes the resumer's `ra` on the resumer's stack, so that its frame looks
//! like a call frame to the unwinder.
//!
//! The compiler saves whatever callee-saved registers are live around the
//! `asm!` blocks (s2–s11 and fs0–fs11 are declared clobbered, the
//! caller-saved set through `clobber_abi`); `s0` (the frame pointer) and
//! `s1`, which LLVM does not let `asm!` name, are pushed by hand. `gp` and
//! `tp` are never touched. `fcsr` is not switched, as on x86_64.
//!
//! Stack of a suspended context (`sp` points at the lowest word):
//!
//! ```text
//!   link    <- top - 16: the resumer's stack pointer while we run
//!   ...        frames of the coroutine
//!   s1         saved by `suspend`
//!   s0
//!   (pad)
//!   pc      <- sp: where `resume` jumps to
//! ```
//!
//! Stack of the resumer while the context runs (`link` points here):
//!
//! ```text
//!   s1
//!   s0
//!   (pad)
//!   ra = return address into `resume`  <- [link]
//! ```
//!
//! Fixed registers across a switch: a1 = the context's saved stack pointer,
//! a2 = the link slot.

use core::arch::{asm, global_asm};
use core::cell::Cell;

use super::{Entry, Switch};

pub(crate) struct Context {
    /// Saved stack pointer while suspended.
    sp: Cell<usize>,
    /// Slot near the top of the stack holding the resumer's stack pointer.
    link: *mut usize,
}

// The first resume lands here: sp = the resumer's stack, ra = return
// address into `resume`, a2 = link slot; the entry function and its argument
// sit just below the link slot.
//
// CFI: the canonical frame address of the resumer is [link] + 32; see
// x86_64.rs for why the frame is a signal frame and why the label after the
// entry call is followed by an instruction of this function. DWARF register
// numbers: 1 = ra, 8 = s0, 9 = s1.
global_asm!(
    ".pushsection .text.costack_trampoline,\"ax\",@progbits",
    ".balign 16",
    ".type costack_trampoline,@function",
    "costack_trampoline:",
    ".cfi_startproc",
    ".cfi_signal_frame",
    "addi sp, sp, -16",
    "sd ra, 0(sp)",
    "sd sp, 0(a2)",
    "ld a0, -16(a2)",
    "ld t1, -8(a2)",
    "mv sp, a2",
    // DW_CFA_def_cfa_expression, 5 bytes: DW_OP_breg2 (sp) 0; DW_OP_deref;
    // DW_OP_plus_uconst 32.
    ".cfi_escape 0x0f, 5, 0x72, 0x00, 0x06, 0x23, 0x20",
    ".cfi_offset 1, -32",
    ".cfi_offset 8, -16",
    ".cfi_offset 9, -8",
    // No frame-pointer chain leads out of the coroutine's first frame.
    "li s0, 0",
    // Set the return address by hand and jump: a `jalr` through ra would
    // push an unmatched entry on the return-address stack.
    "lla ra, 2f",
    "jr t1",
    "2:",
    "unimp",
    ".cfi_endproc",
    ".size costack_trampoline, . - costack_trampoline",
    ".popsection",
);

extern "C" {
    fn costack_trampoline();
}

// SAFETY: `resume` and `suspend` pair a `jalr` with a `ret` across the two
// stacks as described in the module documentation; every register the
// psABI says a call preserves is either saved by hand (s0, s1) or declared
// as clobbered so the compiler saves it when live.
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
        // s0 and s1 are pushed here because asm! cannot mark them
        // clobbered; the context's `ret` comes back right after the `jalr`.
        unsafe {
            asm!(
                "addi sp, sp, -16",
                "sd s0, 0(sp)",
                "sd s1, 8(sp)",
                "ld t0, 0(a1)",
                "jalr t0",
                "ld s0, 0(sp)",
                "ld s1, 8(sp)",
                "addi sp, sp, 16",
                inout("a1") self.sp.get() => sp,
                inout("a2") self.link => _,
                out("t0") _,
                out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _,
                out("s7") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _,
                out("fs0") _, out("fs1") _, out("fs2") _, out("fs3") _, out("fs4") _,
                out("fs5") _, out("fs6") _, out("fs7") _, out("fs8") _, out("fs9") _,
                out("fs10") _, out("fs11") _,
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
        // jumps to label 2 with a1 = our stack pointer and a2 = link.
        unsafe {
            asm!(
                "addi sp, sp, -32",
                "sd s0, 16(sp)",
                "sd s1, 24(sp)",
                "lla t0, 2f",
                "sd t0, 0(sp)",
                "mv a1, sp",
                "ld sp, 0(a2)",
                "ld ra, 0(sp)",
                "addi sp, sp, 16",
                "ret",
                "2:",
                "addi sp, sp, -16",
                "sd ra, 0(sp)",
                "sd sp, 0(a2)",
                "addi sp, a1, 16",
                "ld s0, 0(sp)",
                "ld s1, 8(sp)",
                "addi sp, sp, 16",
                inout("a2") self.link => _,
                out("a1") _, out("t0") _,
                out("s2") _, out("s3") _, out("s4") _, out("s5") _, out("s6") _,
                out("s7") _, out("s8") _, out("s9") _, out("s10") _, out("s11") _,
                out("fs0") _, out("fs1") _, out("fs2") _, out("fs3") _, out("fs4") _,
                out("fs5") _, out("fs6") _, out("fs7") _, out("fs8") _, out("fs9") _,
                out("fs10") _, out("fs11") _,
                clobber_abi("C"),
            )
        };
    }

    #[inline(always)]
    unsafe fn exit(&self) -> ! {
        // SAFETY: as `suspend`, but nothing is saved: the stack is dead.
        unsafe {
            asm!(
                "ld sp, 0(a2)",
                "ld ra, 0(sp)",
                "addi sp, sp, 16",
                "li a1, 0",
                "ret",
                in("a2") self.link,
                options(noreturn),
            )
        }
    }
}
