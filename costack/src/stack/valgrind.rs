//! Valgrind stack registration (`VALGRIND_STACK_REGISTER` and
//! `VALGRIND_STACK_DEREGISTER`), so that Valgrind's memcheck knows a switch
//! onto a coroutine stack is a stack switch and not a huge stack-pointer
//! move (which it would report and then track wrongly).
//!
//! A client request is Valgrind's magic no-op sequence: a few rotates of
//! rdi by a total of 128 bits (leaving it unchanged) and `xchg rbx, rbx`.
//! Run natively it does nothing and returns the default (0); under Valgrind
//! the emulator recognises it. Written here in asm because valgrind.h is a C
//! header.

use core::arch::asm;

const STACK_REGISTER: usize = 0x1501;
const STACK_DEREGISTER: usize = 0x1502;

#[inline]
fn client_request(default: usize, args: &[usize; 6]) -> usize {
    let result: usize;
    // SAFETY: the sequence only reads `args` and writes rdx; rdi is rotated
    // by 128 bits in total, so it ends unchanged; rbx is exchanged with
    // itself.
    unsafe {
        asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            in("rax") args.as_ptr(),
            inout("rdx") default => result,
            options(nostack, preserves_flags),
        );
    }
    result
}

/// Tells Valgrind that `[lo, hi)` is a stack; returns its id (0 natively).
pub(crate) fn register(lo: usize, hi: usize) -> usize {
    client_request(0, &[STACK_REGISTER, lo, hi, 0, 0, 0])
}

/// Forgets a stack registered with `register`.
pub(crate) fn deregister(id: usize) {
    client_request(0, &[STACK_DEREGISTER, id, 0, 0, 0, 0]);
}
