//! The thread backend (feature `thread-backend`, and always under Miri):
//! each coroutine is an OS thread, and a baton (a mutex and a condition
//! variable) lets exactly one thread of a logical thread run at a time, as
//! QEMU's gthread backend did.
//!
//! Slow (two thread wake-ups per round trip), but it switches with nothing
//! but std's synchronisation, so Miri can check all of costack's unsafe
//! code above the switch. A coroutine's body sees its enterer's costack
//! state through [`logical`](super::logical) keys; its own `thread_local!`s
//! are those of its OS thread (the same ones at every resume, as promised).
//! Overflowing a coroutine's stack is reported by std as an overflow of a
//! thread named after the coroutine's thread, not by costack's handler.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::logical::{self, Root};
use super::{Entry, Switch};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// The resumer runs; the coroutine waits (or has not started).
    Resumer,
    /// The coroutine runs, for the logical thread whose root is given.
    Coroutine(*const Root),
    /// The coroutine has exited; its thread is ending.
    Exited,
}

// SAFETY: the root pointer is only dereferenced by the thread holding the
// baton (see `logical`).
unsafe impl Send for Turn {}

struct Baton {
    turn: Mutex<Turn>,
    cv: Condvar,
}

impl Baton {
    fn lock(&self) -> MutexGuard<'_, Turn> {
        self.turn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the turn and waits while `waiting_while` holds for it.
    fn pass(&self, to: Turn, waiting_while: impl FnMut(Turn) -> bool) -> Turn {
        let mut turn = self.lock();
        *turn = to;
        self.cv.notify_all();
        self.wait(turn, waiting_while)
    }

    fn wait(
        &self,
        mut turn: MutexGuard<'_, Turn>,
        mut waiting_while: impl FnMut(Turn) -> bool,
    ) -> Turn {
        while waiting_while(*turn) {
            turn = self.cv.wait(turn).unwrap_or_else(|e| e.into_inner());
        }
        *turn
    }
}

/// The payload that ends a coroutine's thread after `exit`.
struct ThreadExit;

struct Start {
    baton: Arc<Baton>,
    entry: Entry,
    arg: *mut u8,
}

// SAFETY: `arg` is the coroutine's control block, used by the coroutine's
// thread only while it holds the baton.
unsafe impl Send for Start {}

pub(crate) struct Context {
    baton: Arc<Baton>,
    thread: Cell<Option<JoinHandle<()>>>,
    entry: Entry,
    arg: *mut u8,
    stack_size: usize,
}

// SAFETY: the baton makes the resumer and the coroutine's thread run one at
// a time: `resume` returns only once the coroutine passed the turn back,
// and `suspend` only once it got it again.
unsafe impl Switch for Context {
    unsafe fn new(top: *mut u8, bottom: *mut u8, entry: Entry, arg: *mut u8) -> Self {
        Context {
            baton: Arc::new(Baton {
                turn: Mutex::new(Turn::Resumer),
                cv: Condvar::new(),
            }),
            thread: Cell::new(None),
            entry,
            arg,
            stack_size: top as usize - bottom as usize,
        }
    }

    unsafe fn resume(&self) {
        let root = logical::root().expect("costack used during thread teardown");
        let thread = self.thread.take();
        let started = thread.is_some();
        self.thread.set(thread);
        if !started {
            let start = Start {
                baton: self.baton.clone(),
                entry: self.entry,
                arg: self.arg,
            };
            let thread = std::thread::Builder::new()
                .name("costack coroutine".into())
                .stack_size(self.stack_size.max(64 << 10))
                .spawn(move || run(start))
                .expect("cannot spawn a coroutine thread");
            self.thread.set(Some(thread));
        }
        self.baton
            .pass(Turn::Coroutine(root), |t| matches!(t, Turn::Coroutine(_)));
    }

    unsafe fn suspend(&self) {
        if let Turn::Coroutine(root) = self.baton.pass(Turn::Resumer, |t| t == Turn::Resumer) {
            logical::adopt(root);
        }
    }

    unsafe fn exit(&self) -> ! {
        // Nothing on this thread's stack needs dropping any more (the
        // caller's contract): unwind it to `run`, which passes the turn
        // back. Not before: the resumer may free this context at once, and
        // `self` (and the control block `start` borrows) must be dead by
        // then.
        panic::resume_unwind(Box::new(ThreadExit))
    }
}

/// A coroutine's thread: waits for its first turn, then runs the entry.
fn run(start: Start) {
    let Start { baton, entry, arg } = start;
    match baton.wait(baton.lock(), |t| t == Turn::Resumer) {
        Turn::Coroutine(root) => logical::adopt(root),
        _ => return,
    }
    // SAFETY: `entry(arg)` is what the core asked to run on this context.
    let ended = panic::catch_unwind(AssertUnwindSafe(|| unsafe { entry(arg) }));
    if let Err(payload) = ended {
        // `start` catches every panic of the coroutine itself.
        assert!(
            payload.is::<ThreadExit>(),
            "a coroutine's base let a panic out"
        );
    }
    let mut turn = baton.lock();
    *turn = Turn::Exited;
    baton.cv.notify_all();
}

impl Drop for Context {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let exited = *self.baton.lock() == Turn::Exited;
        if exited {
            let _ = thread.join();
        }
        // Otherwise the coroutine never finished (the core unwinds every
        // suspended coroutine before dropping its context, so this does not
        // happen); its thread is left waiting rather than joined forever.
    }
}
