//! Running a closure that borrows from the caller's stack on the thread
//! pool. The borrow is sound because the calling coroutine does not get
//! past the call, not even by unwinding, until the closure has returned.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

use super::thread_pool;
use super::waker::Waker;

struct Shared<T> {
    result: Mutex<Option<std::thread::Result<T>>>,
    done: Condvar,
    waker: Waker,
}

/// Blocks until the job finished, if dropped early (the coroutine is
/// being unwound): only then may the memory the job borrows go away.
struct Join<'a, T>(&'a Shared<T>);

impl<T> Drop for Join<'_, T> {
    fn drop(&mut self) {
        let mut r = self.0.result.lock().unwrap_or_else(|e| e.into_inner());
        while r.is_none() {
            r = self.0.done.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Runs `f` on a worker and suspends the calling coroutine (on loop
/// `inner`) until it returns; resumes its panic.
pub(crate) fn run_borrowed<T: Send, F: FnOnce() -> T + Send>(
    inner: &std::rc::Rc<super::Inner>,
    f: F,
) -> T {
    let me = crate::current().expect("called in a coroutine");
    inner.adopt(&me);
    let shared = Arc::new(Shared {
        result: Mutex::new(None),
        done: Condvar::new(),
        waker: Waker::for_coroutine(&me),
    });
    drop(me);
    let theirs = shared.clone();
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        let r = panic::catch_unwind(AssertUnwindSafe(f));
        *theirs.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        theirs.done.notify_all();
        theirs.waker.wake();
    });
    // SAFETY: only the lifetime is changed. The job borrows data that
    // lives at least as long as this call, and this call does not return
    // or unwind before the job ran to its end: `join` blocks until the
    // result is stored, which is the job's last use of what it borrows
    // (`theirs` is an Arc, owned).
    let job: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(job) };
    let join = Join(&shared);
    thread_pool::submit(job);
    loop {
        let r = shared
            .result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match r {
            Some(r) => {
                // The result was taken: `join` would wait for it forever.
                std::mem::forget(join);
                return r.unwrap_or_else(|p| panic::resume_unwind(p));
            }
            None => crate::coroutine::park(),
        }
    }
}
