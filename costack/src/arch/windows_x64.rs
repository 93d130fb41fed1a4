//! x86_64 Windows switch: the x86_64 design (resume = `call` through the
//! suspended context, suspend = `ret`) adapted to the Microsoft x64 ABI and
//! to the thread information block.
//!
//! Windows checks stack addresses against the TIB: exception dispatch (and
//! so every panic, which unwinds with SEH) rejects frames outside
//! `[StackLimit, StackBase)`, and the system's stack-overflow detection uses
//! `DeallocationStack`. `resume` therefore pushes the resumer's three words
//! with its registers and installs the coroutine's; they are popped when the
//! coroutine suspends or exits. The exception list word (unused by Windows on
//! x64, but Wine chains its internal handler frames there and compares their
//! addresses with stack frames) starts empty in each coroutine, as in a new
//! fiber.
//!
//! Callee-saved registers differ from System V: rdi, rsi and xmm6–xmm15 are
//! preserved by a call too, so they are declared clobbered as well; rbx and
//! rbp are pushed by hand. Entry functions get their 32-byte shadow space.
//!
//! For unwinders (backtraces, debuggers), the trampoline's unwind info says
//! it pushed a machine frame (`UWOP_PUSH_MACHFRAME`): the one place an
//! unwind code may load both the return address and the stack pointer from
//! memory; below it, a saved rbp (`UWOP_PUSH_NONVOL`), since frames that
//! use rbp as frame pointer are unwound through it. Each landing in the
//! coroutine refreshes these with the resumer's return address, stack
//! pointer and rbp.
//!
//! Top of a coroutine's stack (`link` = top - 16):
//!
//! ```text
//!   link        the resumer's stack pointer while we run
//!   link - 24   machine frame RSP: the resumer's stack pointer after return
//!   link - 32   machine frame EFLAGS slot: the entry argument, until started
//!   link - 40   machine frame CS slot: the entry function, until started
//!   link - 48   machine frame RIP: the return address into `resume`
//!   link - 56   the resumer's rbp (its frame pointer, for unwinders)
//!   ...         shadow space, then the coroutine's frames
//! ```
//!
//! Resumer's stack while the coroutine runs (`[link]` points at its last
//! word): rbp, rbx, DeallocationStack, StackLimit, StackBase, ExceptionList,
//! return address.

use core::arch::{asm, global_asm};
use core::cell::Cell;

use super::{Entry, Switch};

pub(crate) struct Context {
    /// Saved stack pointer while suspended.
    sp: Cell<usize>,
    /// Slot near the top of the stack holding the resumer's stack pointer.
    link: *mut usize,
    /// The coroutine's TIB stack words: StackBase, StackLimit,
    /// DeallocationStack.
    base: usize,
    limit: usize,
    dealloc: usize,
}

// The first resume lands here: rsp = resumer's stack (return address on
// top), rdx = link slot.
global_asm!(
    ".text",
    ".p2align 4",
    ".def costack_trampoline",
    ".scl 3",
    ".type 32",
    ".endef",
    "costack_trampoline:",
    ".seh_proc costack_trampoline",
    "mov [rdx], rsp",
    "mov rax, [rsp]",
    "mov [rdx - 48], rax",
    "lea rax, [rsp + 56]",
    "mov [rdx - 24], rax",
    "mov [rdx - 56], rbp",
    "lea rsp, [rdx - 48]",
    ".seh_pushframe",
    // The resumer's rbp was stored at [rsp - 8] just above.
    "sub rsp, 8",
    ".seh_pushreg rbp",
    "sub rsp, 40",
    ".seh_stackalloc 40",
    ".seh_endprologue",
    // No frame-pointer chain leads out of the coroutine's first frame.
    "xor ebp, ebp",
    "mov rcx, [rdx - 32]",
    "mov rax, [rdx - 40]",
    // Push the return address by hand and jump: a `call` here would leave
    // an unmatched entry in the return predictor.
    "lea r8, [rip + 2f]",
    "push r8",
    "jmp rax",
    "2:",
    "ud2",
    ".seh_endproc",
);

extern "C" {
    fn costack_trampoline();
}

// SAFETY: `resume` and `suspend` pair a `call` with a `ret` across the two
// stacks; every register the x64 ABI says a call preserves is either saved
// by hand (rbx, rbp) or declared as clobbered so the compiler saves it when
// live; the TIB's stack words are the coroutine's exactly while it runs.
unsafe impl Switch for Context {
    // Never inlined: the trampoline is a local symbol of this crate's
    // object, which another crate's code could not name.
    #[inline(never)]
    unsafe fn new(top: *mut u8, bottom: *mut u8, entry: Entry, arg: *mut u8) -> Self {
        debug_assert_eq!(top as usize % 16, 0);
        // SAFETY: the caller gives us the stack; these words are at its top
        // (see the layout above).
        unsafe {
            let link = top.cast::<usize>().sub(2);
            link.write(0);
            link.sub(4).write(arg as usize);
            link.sub(5).write(entry as usize);
            // The resume address sits below the machine frame and its
            // shadow space.
            let sp = link.sub(13);
            sp.write(costack_trampoline as *const () as usize);
            Context {
                sp: Cell::new(sp as usize),
                link,
                base: top as usize,
                limit: bottom as usize,
                dealloc: bottom as usize - crate::stack::guard_size(),
            }
        }
    }

    #[inline(always)]
    unsafe fn resume(&self) {
        let sp: usize;
        // SAFETY: the context is suspended (caller's contract), so `sp`
        // points at a resume address followed by the registers it restores.
        // rbx and rbp are pushed here because asm! cannot mark them
        // clobbered; the TIB words because they are the resumer's; the
        // stack is balanced again when the context returns with `ret`.
        unsafe {
            asm!(
                "push rbp",
                "push rbx",
                "push qword ptr gs:[0x1478]",
                "push qword ptr gs:[0x10]",
                "push qword ptr gs:[0x8]",
                "push qword ptr gs:[0x0]",
                "mov qword ptr gs:[0x8], r8",
                "mov qword ptr gs:[0x10], r9",
                "mov qword ptr gs:[0x1478], r10",
                "mov qword ptr gs:[0x0], -1",
                "call [rsi]",
                "pop qword ptr gs:[0x0]",
                "pop qword ptr gs:[0x8]",
                "pop qword ptr gs:[0x10]",
                "pop qword ptr gs:[0x1478]",
                "pop rbx",
                "pop rbp",
                inout("rsi") self.sp.get() => sp,
                inout("rdx") self.link => _,
                in("r8") self.base,
                in("r9") self.limit,
                in("r10") self.dealloc,
                out("rdi") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
                out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _,
                out("xmm11") _, out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                clobber_abi("C"),
            )
        };
        self.sp.set(sp);
    }

    #[inline(always)]
    unsafe fn suspend(&self) {
        // SAFETY: we run on this context's stack, so [link] holds the
        // resumer's stack pointer with its return address on top. We leave
        // our own resume address and registers for the next `resume`, which
        // enters at label 2 with rsi = our stack pointer and rdx = link,
        // and refresh the machine frame for unwinders.
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
                "mov rax, [rsp]",
                "mov [rdx - 48], rax",
                "lea rax, [rsp + 56]",
                "mov [rdx - 24], rax",
                "mov [rdx - 56], rbp",
                "lea rsp, [rsi + 8]",
                "pop rbx",
                "pop rbp",
                inout("rdx") self.link => _,
                out("rsi") _, out("rax") _, out("rdi") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _,
                out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _,
                out("xmm11") _, out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                clobber_abi("C"),
            )
        };
    }

    #[inline(always)]
    unsafe fn exit(&self) -> ! {
        // SAFETY: as `suspend`, but nothing is saved: the stack is dead.
        unsafe {
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
