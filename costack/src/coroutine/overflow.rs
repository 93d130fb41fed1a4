//! Stack overflow in a coroutine: a SIGSEGV handler on an alternate signal
//! stack recognises a fault in the running coroutine's guard page, says so
//! on stderr (with the coroutine's name and stack size) and aborts. Any
//! other fault goes to the handler that was installed before ours, so Rust's
//! own "has overflowed its stack" message for threads keeps working.
//!
//! macOS reports a touch of a `PROT_NONE` page as SIGBUS, and FreeBSD may
//! too (`machdep.prot_fault_translation`), so there the same handler also
//! takes SIGBUS, as Rust's own guard does; the fault address comes from
//! libc's `si_addr()` accessor on every system.
//!
//! On Windows a vectored exception handler does the same
//! (`overflow_windows.rs`).

#[cfg(all(windows, not(any(miri, feature = "thread-backend"))))]
#[path = "overflow_windows.rs"]
mod windows;
#[cfg(all(windows, not(any(miri, feature = "thread-backend"))))]
pub(super) use windows::install;

/// The thread backend runs coroutines on threads that std guards and
/// reports itself.
#[cfg(any(miri, feature = "thread-backend"))]
#[inline]
pub(super) fn install() {}

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
use std::cell::Cell;
#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
use std::mem::MaybeUninit;
#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
use std::ptr;
#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
use std::sync::Once;

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
use super::current_ptr;

/// The signals a guard-page fault raises.
#[cfg(all(target_os = "linux", not(any(miri, feature = "thread-backend"))))]
const FAULT_SIGNALS: [libc::c_int; 1] = [libc::SIGSEGV];
#[cfg(all(
    unix,
    not(target_os = "linux"),
    not(any(miri, feature = "thread-backend"))
))]
const FAULT_SIGNALS: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
/// The dispositions of [`FAULT_SIGNALS`] before ours, in that order;
/// written once, before our handler is installed, and read only by the
/// handler afterwards.
struct Previous(std::cell::UnsafeCell<[MaybeUninit<libc::sigaction>; FAULT_SIGNALS.len()]>);
#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
// SAFETY: written once inside `Once::call_once` before the handler that
// reads it exists; never written again.
unsafe impl Sync for Previous {}
#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
static PREVIOUS: Previous = Previous(std::cell::UnsafeCell::new(
    [const { MaybeUninit::zeroed() }; FAULT_SIGNALS.len()],
));
#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
static INSTALL: Once = Once::new();

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
const ALT_STACK_SIZE: usize = 64 << 10;

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
/// A signal stack this thread had none of, mapped by us.
struct AltStack {
    base: *mut libc::c_void,
}

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
impl Drop for AltStack {
    fn drop(&mut self) {
        let disable = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: ALT_STACK_SIZE,
        };
        // SAFETY: we installed this stack on this thread; disable it before
        // unmapping it so no signal can land on freed memory.
        unsafe {
            libc::sigaltstack(&disable, ptr::null_mut());
            libc::munmap(self.base, ALT_STACK_SIZE);
        }
    }
}

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
thread_local! {
    static CHECKED: Cell<bool> = const { Cell::new(false) };
    static OWN_ALT_STACK: Cell<Option<AltStack>> = const { Cell::new(None) };
}

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
/// Makes sure overflows of this thread's coroutines are reported.
#[inline]
pub(super) fn install() {
    if CHECKED.with(|c| c.replace(true)) {
        return;
    }
    INSTALL.call_once(|| {
        // SAFETY: sigaction with a valid handler and a zeroed, then filled,
        // struct; each PREVIOUS slot is written (through a raw pointer: the
        // handler may already read an earlier slot) before the handler can
        // run for its signal. MaybeUninit<T> has the layout of T.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let previous = PREVIOUS.0.get().cast::<libc::sigaction>();
            for (i, &sig) in FAULT_SIGNALS.iter().enumerate() {
                libc::sigaction(sig, &action, previous.add(i));
            }
        }
    });
    ensure_alt_stack();
}

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
/// A handler for a stack overflow must itself run on another stack.
/// Threads started by Rust's std have one; others get ours.
fn ensure_alt_stack() {
    // SAFETY: `stack_t` is plain data (integers and a pointer), for which
    // all zeroes is a valid value.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: with a null new stack, sigaltstack only writes the current
    // one into `current`, a valid, writable `stack_t`.
    unsafe { libc::sigaltstack(ptr::null(), &mut current) };
    if current.ss_flags & libc::SS_DISABLE == 0 {
        return;
    }
    // SAFETY: a fresh private mapping.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            ALT_STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return; // Overflows are then reported as plain SIGSEGV.
    }
    let stack = libc::stack_t {
        ss_sp: base,
        ss_flags: 0,
        ss_size: ALT_STACK_SIZE,
    };
    // SAFETY: `stack` describes the mapping above, owned by this thread
    // until `AltStack::drop` disables and unmaps it.
    unsafe { libc::sigaltstack(&stack, ptr::null_mut()) };
    let _ = OWN_ALT_STACK.try_with(|s| s.set(Some(AltStack { base })));
}

#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ucontext: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let cur = current_ptr();
    if !cur.is_null() {
        // SAFETY: CURRENT is a live block (the fault interrupted its code);
        // reading its name and stack bounds does not allocate or lock.
        let co = unsafe { &*cur };
        if let Some(stack) = co.stack() {
            let (lo, hi) = stack.guard();
            if (lo..hi).contains(&addr) {
                report(co.name(), stack.size());
            }
        }
    }
    // Not ours: hand the fault to the previous handler of this signal.
    // The handler is installed for FAULT_SIGNALS only, so `sig` is found.
    let slot = FAULT_SIGNALS.iter().position(|&s| s == sig).unwrap_or(0);
    let slots = PREVIOUS.0.get().cast::<MaybeUninit<libc::sigaction>>();
    // SAFETY: this signal's slot was filled in before this handler was
    // installed for it, and is never written again; only that slot is
    // borrowed.
    let prev = unsafe { (*slots.add(slot)).assume_init_ref() };
    let h = prev.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        // Restore the default and return: the faulting access runs again
        // and the kernel kills the process with the signal as usual.
        // SAFETY: resetting a disposition is async-signal-safe.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, ptr::null_mut());
        }
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed as a 3-argument one.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, ucontext);
    } else {
        // SAFETY: the previous handler was installed as a 1-argument one.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
}

/// Writes the overflow message with no allocation and aborts.
#[cfg(all(unix, not(any(miri, feature = "thread-backend"))))]
fn report(name: Option<&str>, size: usize) -> ! {
    let mut buf = [0u8; 512];
    let len = message(name, size, &mut buf);
    // SAFETY: write and abort are async-signal-safe.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::abort();
    }
}

/// Formats the overflow message into `buf` without allocating; returns its
/// length.
#[cfg_attr(any(miri, feature = "thread-backend"), allow(dead_code))]
fn message(name: Option<&str>, size: usize, buf: &mut [u8; 512]) -> usize {
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(b"\ncostack: stack overflow in coroutine '");
    put(name.unwrap_or("<unnamed>").as_bytes());
    put(b"' (stack size ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = size;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(&digits[i..]);
    put(b" bytes); aborting\n");
    len
}
