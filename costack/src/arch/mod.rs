//! The context switch: one backend per architecture/OS behind [`Switch`].
//!
//! Everything above this module is portable. A backend only knows how to
//! prepare a stack so that its first resume calls an entry function, how to
//! resume a suspended context, how a running context suspends back to whoever
//! resumed it, and how it leaves for the last time. All bookkeeping (who
//! entered whom, states, wake lists, stacks, panics) lives in `coroutine`.

/// Entry point of a new context, called on the context's own stack with the
/// argument given to [`Switch::new`]. It never returns: it ends with
/// [`Switch::exit`]. "C-unwind": the thread backend's `exit` ends the
/// coroutine's thread by unwinding through it.
pub(crate) type Entry = unsafe extern "C-unwind" fn(arg: *mut u8) -> !;

/// A suspended or running execution context.
///
/// # Safety
///
/// Implementations must switch stacks exactly as documented: `resume` returns
/// only after the context called `suspend` or `exit`, and `suspend` returns
/// only after the next `resume`. Callers uphold the rest (see each method).
pub(crate) unsafe trait Switch: Sized {
    /// Prepares a context that, on its first `resume`, calls `entry(arg)` on
    /// the stack whose highest usable address is `top` (16-byte aligned) and
    /// whose lowest usable address is `bottom`.
    ///
    /// # Safety
    /// `[bottom, top)` must be writable memory that outlives the context and
    /// is used by nothing else while the context has not exited.
    unsafe fn new(top: *mut u8, bottom: *mut u8, entry: Entry, arg: *mut u8) -> Self;

    /// Runs the context until it suspends or exits.
    ///
    /// # Safety
    /// The context must be suspended (or new), and not have exited.
    unsafe fn resume(&self);

    /// Returns from a running context to whoever resumed it.
    ///
    /// # Safety
    /// Must be called on this context's own stack while it runs.
    unsafe fn suspend(&self);

    /// Leaves a running context for the last time; its stack may be reused
    /// as soon as the matching `resume` returns.
    ///
    /// # Safety
    /// As `suspend`; nothing on the stack may need dropping any more.
    unsafe fn exit(&self) -> !;
}

// The switches' assembly functions (their first-entry trampolines) are
// written once per architecture; these macros wrap a body in the directives
// of the target's object format. ELF (Linux, FreeBSD): a section of its own,
// `.type` and `.size` for debuggers and profilers. Mach-O (macOS): C symbols
// carry a leading underscore, sections are named by segment, and there is
// no `.type`/`.size` (`.p2align` for the alignment, `.private_extern` for
// hidden visibility). The CFI directives of the bodies assemble for both.
//
// `global`: visible to the whole link (generic code inlined into other
// crates names it) but hidden from other linked images; `local`: only this
// object names it.

/// Opens the assembly function `$name`: the string for a `global_asm!`.
#[cfg(not(target_vendor = "apple"))]
#[allow(unused_macros)] // unused where no assembly backend is selected
macro_rules! asm_function_begin {
    ($visibility:ident, $name:literal) => {
        concat!(
            ".pushsection .text.",
            $name,
            ",\"ax\",%progbits\n",
            ".balign 16\n",
            asm_function_visibility!($visibility, $name),
            ".type ",
            $name,
            ",%function\n",
            $name,
            ":",
        )
    };
}
#[cfg(target_vendor = "apple")]
#[allow(unused_macros)] // unused where no assembly backend is selected
macro_rules! asm_function_begin {
    ($visibility:ident, $name:literal) => {
        concat!(
            ".pushsection __TEXT,__text,regular,pure_instructions\n",
            ".p2align 4\n",
            asm_function_visibility!($visibility, $name),
            "_",
            $name,
            ":",
        )
    };
}

/// Closes what `asm_function_begin!` opened.
#[cfg(not(target_vendor = "apple"))]
#[allow(unused_macros)] // unused where no assembly backend is selected
macro_rules! asm_function_end {
    ($name:literal) => {
        concat!(".size ", $name, ", . - ", $name, "\n.popsection")
    };
}
#[cfg(target_vendor = "apple")]
#[allow(unused_macros)] // unused where no assembly backend is selected
macro_rules! asm_function_end {
    ($name:literal) => {
        ".popsection"
    };
}

/// The symbol directives of `asm_function_begin!`.
#[cfg(not(target_vendor = "apple"))]
#[allow(unused_macros)] // unused where no assembly backend is selected
macro_rules! asm_function_visibility {
    (global, $name:literal) => {
        concat!(".globl ", $name, "\n.hidden ", $name, "\n")
    };
    (local, $name:literal) => {
        ""
    };
}
#[cfg(target_vendor = "apple")]
#[allow(unused_macros)] // unused where no assembly backend is selected
macro_rules! asm_function_visibility {
    (global, $name:literal) => {
        concat!(".globl _", $name, "\n.private_extern _", $name, "\n")
    };
    (local, $name:literal) => {
        ""
    };
}

#[cfg(all(target_arch = "x86_64", unix, not(feature = "ucontext")))]
#[cfg(not(any(miri, feature = "thread-backend")))]
mod asan;
pub(crate) mod logical;
#[cfg(all(target_arch = "x86_64", unix, not(feature = "ucontext")))]
#[cfg(not(any(miri, feature = "thread-backend")))]
mod tsan;
pub(crate) use logical::logical_thread_local;

// Backend selection. The thread backend (feature `thread-backend`, or Miri,
// which cannot run the switch's assembly) overrides everything; otherwise
// features pick a non-default backend where one exists, and everything
// else gets the assembly switch of its architecture.

#[cfg(any(miri, feature = "thread-backend"))]
mod thread;
#[cfg(any(miri, feature = "thread-backend"))]
pub(crate) use thread::Context;

#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(target_arch = "x86_64", unix, not(feature = "ucontext")))]
mod x86_64;
#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(target_arch = "x86_64", unix, not(feature = "ucontext")))]
pub(crate) use x86_64::Context;

#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(
    target_arch = "aarch64",
    any(target_os = "linux", target_vendor = "apple"),
    not(feature = "ucontext")
))]
mod aarch64;
#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(
    target_arch = "aarch64",
    any(target_os = "linux", target_vendor = "apple"),
    not(feature = "ucontext")
))]
pub(crate) use aarch64::Context;

#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(
    target_arch = "riscv64",
    target_os = "linux",
    not(feature = "ucontext")
))]
mod riscv64;
#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(
    target_arch = "riscv64",
    target_os = "linux",
    not(feature = "ucontext")
))]
pub(crate) use riscv64::Context;

#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(target_arch = "x86_64", windows, not(feature = "fibers")))]
mod windows_x64;
#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(target_arch = "x86_64", windows, not(feature = "fibers")))]
pub(crate) use windows_x64::Context;

#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(target_arch = "x86_64", windows, feature = "fibers"))]
mod fibers;
#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(target_arch = "x86_64", windows, feature = "fibers"))]
pub(crate) use fibers::Context;
#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(all(feature = "fibers", not(all(target_arch = "x86_64", windows))))]
compile_error!("the `fibers` backend is for x86_64 Windows only");

#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(feature = "ucontext")]
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod ucontext;
#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(feature = "ucontext")]
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
pub(crate) use ucontext::Context;
#[cfg(not(any(miri, feature = "thread-backend")))]
#[cfg(feature = "ucontext")]
#[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
compile_error!("the `ucontext` backend is implemented for x86_64 Linux with glibc only");
