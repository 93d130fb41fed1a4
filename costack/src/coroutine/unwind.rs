//! Unwinding a coroutine that is dropped while suspended (its last handle
//! goes), and the yields it may make meanwhile.

use std::any::Any;
use std::io;
use std::panic;

use super::control::{self, Control, State, CANCELLED, DRAINING, ENTERED};
use super::{give_back_stack, run_collect, set_current};
use crate::arch::Switch;

/// The payload that unwinds a coroutine whose last handle was dropped.
/// It is caught at the coroutine's base and never escapes.
pub(super) struct ForcedUnwind;

/// The last handle to `ptr`, which has not finished, is being dropped
/// (`refs` is still 1): drops its unstarted closure or unwinds its stack,
/// then frees the block. The reference is kept meanwhile, so that a handle
/// the destructors clone and drop does not release it again (and if such
/// a clone survives, the block stays).
#[cold]
#[inline(never)]
pub(super) fn release(ptr: *const Control) {
    // SAFETY: a handle's block; not used once it may be freed (below).
    let co = unsafe { &*ptr };
    let payload = match co.state() {
        State::Ready if co.is_unstarted() => {
            drop_unstarted(co);
            None
        }
        State::Ready => unwind(co),
        State::Finished => None,
        State::Entered | State::Free => unreachable!("released while {:?}", co.state()),
    };
    let refs = co.refs.get() - 1;
    co.refs.set(refs);
    if refs == 0 {
        control::free(ptr);
    }
    if let Some(payload) = payload {
        // A destructor panicked while unwinding: report it like any panic
        // from a drop, unless we are unwinding already.
        if !std::thread::panicking() {
            panic::resume_unwind(payload);
        }
    }
}

/// Unwinds a suspended coroutine's stack: it is resumed with `CANCELLED`
/// set, so the `yield_now` it waits in resumes a forced unwind. Should it
/// catch that unwind and yield again, that yield resumes the unwind (see
/// `yield_cancelled`). Returns the first panic other than the forced
/// unwind.
fn unwind(co: &Control) -> Option<Box<dyn Any + Send>> {
    let mut payload = None;
    while co.state() == State::Ready {
        if let Some(p) = run_collect(co, ENTERED | CANCELLED) {
            payload.get_or_insert(p);
        }
    }
    co.status.set(co.status.get() & !CANCELLED);
    payload
}

pub(super) fn drop_unstarted(co: &Control) {
    // Finished first: should the closure's destructors reach this
    // coroutine through a handle, they find it finished, not enterable.
    co.status.set(State::Finished as u8);
    if let Some(drop_fn) = co.drop_closure.take() {
        // SAFETY: the coroutine never started, so the closure is still on
        // its stack and nobody else drops it (drop_closure was taken).
        unsafe { drop_fn(co.closure.get()) };
    }
    give_back_stack(co);
}

/// Whether a panic payload is the forced unwind of a dropped coroutine,
/// which must reach the coroutine's base (catchers re-raise it).
pub(crate) fn is_forced_unwind(payload: &(dyn Any + Send)) -> bool {
    payload.is::<ForcedUnwind>()
}

/// A yield of a coroutine that is being unwound because it was dropped.
///
/// - Not panicking: the coroutine caught the forced unwind and runs on;
///   the yield resumes the unwind instead of suspending.
/// - Panicking: a destructor run by the unwind waits (a contended lock, a
///   sleep, I/O). With a loop driving the unwind (`DRAINING`) it suspends
///   for real and returns, to the destructor, once the loop enters it
///   again. Without one nothing can ever resume it, and unwinding from a
///   destructor would abort with an opaque message: abort with one that
///   names the coroutine instead.
#[cold]
#[inline(never)]
pub(super) fn yield_cancelled(co: &Control) {
    if !std::thread::panicking() {
        cancelled();
    }
    if co.status.get() & DRAINING == 0 {
        yielded_while_dropped(co);
    }
    co.status.set(co.status.get() - 1);
    set_current(co.caller.get());
    trace_event!("yield", co);
    // SAFETY: we run on `co`'s stack.
    unsafe { co.context().suspend() };
}

#[cold]
fn yielded_while_dropped(co: &Control) -> ! {
    use std::io::Write;
    let name = co.name().unwrap_or("<unnamed>");
    let _ = writeln!(
        io::stderr(),
        "costack: coroutine '{name}' yielded while being dropped: a destructor \
         run by the unwind of its dropped last handle waits (a contended lock, \
         a sleep, I/O), and nothing can resume it; aborting"
    );
    std::process::abort()
}

// Inlined (but cold) so that the forced unwind starts in `yield_now`'s
// frame: one frame fewer for the unwinder's two passes to walk.
#[cold]
#[inline(always)]
pub(super) fn cancelled() -> ! {
    panic::resume_unwind(Box::new(ForcedUnwind))
}
