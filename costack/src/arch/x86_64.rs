//! x86_64 System V switch (Linux, FreeBSD, macOS: one body, the object
//! format's directives from `asm_function_begin!`).
//!
//! Resuming is a `call` through the word at the top of the suspended stack and
//! suspending is a `ret` on the resumer's stack, so the CPU's return-address
//! predictor stays balanced: a round trip costs one predicted indirect call
//! and one predicted return, not two mispredicted returns as with a
//! `swapcontext`-style switch function.
//!
//! The compiler saves whatever callee-saved registers are live around the
//! `asm!` blocks (they declare r12–r15 and every caller-saved register as
//! clobbered); only `rbx` and `rbp`, which LLVM does not let `asm!` name,
//! are pushed by hand. The MXCSR and x87 control words are not switched:
//! like corosensei and QEMU, costack assumes code does not change them
//! across a yield.
//!
//! Stack of a suspended context (`sp` points at the lowest word):
//!
//! ```text
//!   asan    <- top - 32: AddressSanitizer's per-coroutine words (asan.rs)
//!   link    <- top - 48: the resumer's stack pointer while we run
//!   ...        frames of the coroutine
//!   rbp        saved by `suspend`
//!   rbx
//!   rip     <- sp: where `resume` jumps to
//! ```
//!
//! Stack of the resumer while the context runs (`link` points here):
//!
//! ```text
//!   rbp
//!   rbx
//!   return address into `resume`  <- [link]
//! ```

use core::arch::{asm, global_asm};
use core::cell::Cell;

use super::{Entry, Switch};

pub(crate) struct Context {
    /// Saved stack pointer while suspended.
    sp: Cell<usize>,
    /// Slot near the top of the stack holding the resumer's stack pointer.
    link: *mut usize,
    /// The usable stack, for AddressSanitizer.
    #[cfg(feature = "asan")]
    bottom: *const u8,
    #[cfg(feature = "asan")]
    size: usize,
    /// ThreadSanitizer's fiber (empty without the `tsan` feature).
    tsan: super::tsan::Fiber,
}

impl Context {
    /// The usable stack, for AddressSanitizer (nothing without it).
    #[inline(always)]
    fn bounds(&self) -> (*const u8, usize) {
        #[cfg(feature = "asan")]
        return (self.bottom, self.size);
        #[cfg(not(feature = "asan"))]
        (core::ptr::null(), 0)
    }

    /// AddressSanitizer's words, above the link slot.
    #[inline(always)]
    fn asan(&self) -> *mut super::asan::Area {
        self.link.wrapping_add(2).cast()
    }
}

// The first resume lands here (through the word at the initial stack
// pointer). Registers: rsp = resumer's stack (return address on top),
// rdx = link slot. The entry function and its argument sit just below the
// link slot.
//
// The CFI describes the resumer's frame, so that backtraces and the unwinder
// continue from a coroutine into whoever entered it: the canonical frame
// address is the resumer's stack pointer before it pushed rbp, rbx and the
// return address, that is [link] + 24. The frame is marked as a signal frame
// because gdb otherwise rejects a caller frame at a lower address; an unwinder
// then looks up the return address itself (not the byte before it), so the
// return label is followed by an instruction inside this function.
macro_rules! trampoline {
    ($($operands:tt)*) => {
global_asm!(
    // Global (generic code in other crates refers to it), but hidden: it is
    // never called through a PLT.
    asm_function_begin!(global, "costack_trampoline"),
    ".cfi_startproc",
    ".cfi_signal_frame",
    "mov [rdx], rsp",
    "mov rdi, [rdx - 16]",
    "mov rax, [rdx - 8]",
    "mov rsp, rdx",
    // DW_CFA_def_cfa_expression, 5 bytes: DW_OP_breg7 (rsp) 0; DW_OP_deref;
    // DW_OP_plus_uconst 24.
    ".cfi_escape 0x0f, 5, 0x77, 0x00, 0x06, 0x23, 0x18",
    ".cfi_offset rip, -24",
    ".cfi_offset rbx, -16",
    ".cfi_offset rbp, -8",
    asan_first_entry!(),
    // No frame-pointer chain leads out of the coroutine's first frame.
    "xor ebp, ebp",
    // Push the return address by hand and jump: a `call` here would leave
    // an unmatched entry in the return predictor.
    "lea rcx, [rip + 2f]",
    "push rcx",
    "jmp rax",
    "2:",
    "ud2",
    ".cfi_endproc",
    asm_function_end!("costack_trampoline"),
    $($operands)*
);
    };
}

// With AddressSanitizer, tell it that we arrived on this stack. The call's
// frame goes below the link slot, so entry and argument are kept in
// registers the call preserves.
#[cfg(feature = "asan")]
macro_rules! asan_first_entry {
    () => {
        "mov r12, rdi\nmov r13, rax\nlea rdi, [rdx + 16]\ncall {first_entry}\nmov rdi, r12\nmov rax, r13"
    };
}
#[cfg(feature = "asan")]
trampoline!(first_entry = sym super::asan::first_entry);

#[cfg(not(feature = "asan"))]
macro_rules! asan_first_entry {
    () => {
        ""
    };
}
#[cfg(not(feature = "asan"))]
trampoline!();

extern "C" {
    fn costack_trampoline();
}

// SAFETY: `resume` and `suspend` pair a `call` with a `ret` across the two
// stacks as described in the module documentation; every register the ABI
// says a call preserves is either saved by hand (rbx, rbp) or declared as
// clobbered so the compiler saves it when live.
unsafe impl Switch for Context {
    // Inlined into `create` (it is on the path of every new coroutine),
    // but not under the sanitizers: there an inlined copy in an
    // instrumented caller left backtraces unable to leave the coroutine
    // (found by tests/backends.rs; not understood further).
    #[cfg_attr(not(any(feature = "asan", feature = "tsan")), inline)]
    #[cfg_attr(any(feature = "asan", feature = "tsan"), inline(never))]
    #[cfg_attr(not(feature = "asan"), allow(unused_variables))]
    unsafe fn new(top: *mut u8, bottom: *mut u8, entry: Entry, arg: *mut u8) -> Self {
        debug_assert_eq!(top as usize % 16, 0);
        // SAFETY: the caller gives us the stack; these words are at its top
        // (see the layout above).
        unsafe {
            super::asan::init(top.cast::<usize>().sub(4).cast());
            let link = top.cast::<usize>().sub(6);
            link.write(0);
            link.sub(1).write(entry as usize);
            link.sub(2).write(arg as usize);
            link.sub(3).write(costack_trampoline as *const () as usize);
            Context {
                sp: Cell::new(link.sub(3) as usize),
                link,
                #[cfg(feature = "asan")]
                bottom,
                #[cfg(feature = "asan")]
                size: top as usize - bottom as usize,
                tsan: super::tsan::Fiber::new(),
            }
        }
    }

    #[inline(always)]
    unsafe fn resume(&self) {
        let sp: usize;
        let mut fake = core::ptr::null_mut();
        let (bottom, size) = self.bounds();
        // SAFETY: announces the switch below to ASan (no-op without it).
        unsafe { super::asan::resuming(&mut fake, bottom, size) };
        self.tsan.resuming();
        // SAFETY: the context is suspended (caller's contract), so `sp`
        // points at a resume address followed by the registers it restores.
        // rbx and rbp are pushed here because asm! cannot mark them clobbered;
        // the stack is balanced again when the context returns with `ret`.
        unsafe {
            asm!(
                "push rbp",
                "push rbx",
                "call [rsi]",
                "pop rbx",
                "pop rbp",
                inout("rsi") self.sp.get() => sp,
                inout("rdx") self.link => _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
                clobber_abi("sysv64"),
            )
        };
        self.sp.set(sp);
        // SAFETY: we are back on our own stack.
        unsafe { super::asan::resumed(fake) };
    }

    #[inline(always)]
    unsafe fn suspend(&self) {
        // SAFETY: we run on this context's stack; its area is ours.
        unsafe { super::asan::leaving(self.asan(), false) };
        self.tsan.leaving();
        // SAFETY: we run on this context's stack, so [link] holds the
        // resumer's stack pointer with its return address on top. We leave
        // our own resume address and registers for the next `resume`, which
        // enters at label 2 with rsi = our stack pointer and rdx = link.
        unsafe {
            asm!(
                "push rbp",
                "push rbx",
                "lea rax, [rip + 2f]",
                "push rax",
                "mov rsi, rsp",
                "mov rsp, [rdx]",
                "ret",
                "2:",
                "mov [rdx], rsp",
                "lea rsp, [rsi + 8]",
                "pop rbx",
                "pop rbp",
                inout("rdx") self.link => _,
                out("rsi") _, out("rax") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
                clobber_abi("sysv64"),
            )
        };
        // SAFETY: resumed on our own stack again.
        unsafe { super::asan::landed(self.asan()) };
    }

    #[inline(always)]
    unsafe fn exit(&self) -> ! {
        // SAFETY: as `suspend`, but nothing is saved: the stack is dead.
        unsafe {
            super::asan::leaving(self.asan(), true);
            self.tsan.leaving();
            asm!(
                "mov rsp, [rdx]",
                "xor esi, esi",
                "ret",
                in("rdx") self.link,
                options(noreturn),
            )
        }
    }
}
