//! Properties a switch backend must keep beyond the core API: debuggers and
//! backtraces see through a coroutine into whoever entered it.

use std::cell::RefCell;
use std::rc::Rc;

use costack::Coroutine;

/// Enters `co`; not inlined, and not a tail call, so that it is a frame of
/// its own that a backtrace taken in the coroutine can only show if the
/// unwinder crossed the switch. (A closure's own name contains the function
/// that defines it, so that name proves nothing.)
#[inline(never)]
fn enter_from_a_separate_frame(co: &Coroutine) {
    co.enter();
    std::hint::black_box(());
}

#[test]
#[cfg_attr(
    any(miri, feature = "thread-backend", feature = "fibers"),
    ignore = "this backend runs coroutines on a stack the unwinder cannot leave"
)]
fn backtrace_crosses_into_the_enterer() {
    let bt = Rc::new(RefCell::new(String::new()));
    let b = bt.clone();
    let co = Coroutine::new(move || {
        *b.borrow_mut() = std::backtrace::Backtrace::force_capture().to_string();
    });
    enter_from_a_separate_frame(&co);
    let bt = bt.borrow();
    assert!(
        bt.contains("enter_from_a_separate_frame"),
        "backtrace:\n{bt}"
    );
    assert!(
        bt.contains("backtrace_crosses_into_the_enterer"),
        "backtrace:\n{bt}"
    );
}
