//! Blocking calls on the [thread pool](super::thread_pool), awaited by the
//! calling coroutine (QEMU's thread_pool_submit_co).

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

use super::thread_pool;
use super::waker::Waker;
use crate::coroutine::cancel;
#[cfg(target_os = "linux")]
use crate::coroutine::wait::wait_stopping;
use crate::coroutine::wait::wait_until;

/// What a job leaves for the coroutine that waits for it.
struct Job<T> {
    result: Mutex<Option<std::thread::Result<T>>>,
    /// Told when the result is stored (for a coroutine blocked unwinding).
    done: Condvar,
    waker: Waker,
}

impl<T> Job<T> {
    /// A job whose end wakes the calling coroutine.
    fn new() -> Arc<Job<T>> {
        Arc::new(Job {
            result: Mutex::new(None),
            done: Condvar::new(),
            waker: crate::aio::waker(),
        })
    }

    fn store(&self, r: std::thread::Result<T>) {
        *self.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.done.notify_all();
        self.waker.wake();
    }

    fn take(&self) -> Option<std::thread::Result<T>> {
        self.result.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Runs `f` on a worker thread of the process-wide [thread
/// pool](thread_pool) and suspends the calling coroutine until it returns
/// (thread_pool_submit_co); the loop keeps running meanwhile. Returns
/// `f`'s value; a panic in `f` is resumed in the coroutine.
///
/// A wait point: if the coroutine is cancelled (or unwound because its loop
/// was dropped) before `f` returns, it unwinds at once; `f` still runs to
/// the end on its worker and its result is dropped.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
///
/// let n = EventLoop::new().unwrap().block_on(|| {
///     // Blocking std I/O, on a worker thread: the loop runs on meanwhile.
///     aio::run_blocking(|| std::fs::read_dir(".").map(|d| d.count()).unwrap_or(0))
/// });
/// assert!(n > 0);
/// ```
#[track_caller]
pub fn run_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(f: F) -> T {
    let inner = super::context("aio::run_blocking");
    inner.adopt(&crate::current().expect("checked by context()"));
    // No work for a coroutine that is to unwind anyway.
    cancel::checkpoint();
    let job = Job::new();
    let theirs = job.clone();
    thread_pool::submit(Box::new(move || {
        theirs.store(panic::catch_unwind(AssertUnwindSafe(f)));
    }));
    match wait_until("aio::run_blocking", || job.take()) {
        Ok(v) => v,
        Err(p) => panic::resume_unwind(p),
    }
}

/// Blocks until the job finished, if dropped early (the coroutine is being
/// force-unwound): only then may the memory the job borrows go away.
#[cfg(target_os = "linux")]
struct Join<'a, T>(&'a Job<T>);

#[cfg(target_os = "linux")]
impl<T> Drop for Join<'_, T> {
    fn drop(&mut self) {
        let mut r = self.0.result.lock().unwrap_or_else(|e| e.into_inner());
        while r.is_none() {
            r = self.0.done.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Runs `f`, which may borrow from the caller's stack, on a worker, and
/// suspends the calling coroutine until it returns; resumes its panic.
///
/// The borrow is sound because the coroutine does not get past this call,
/// not even by unwinding, until `f` has returned: a cancellation waits for
/// `f` (which cannot be stopped) and then returns its result as that of a
/// completed operation, to be delivered at the next wait point; a forced
/// unwind blocks the thread until `f` is done. (Only file I/O, which is
/// Linux-only, borrows.)
#[cfg(target_os = "linux")]
pub(crate) fn run_borrowed<T: Send, F: FnOnce() -> T + Send>(what: &str, f: F) -> T {
    let job = Job::new();
    let theirs = job.clone();
    let work: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        theirs.store(panic::catch_unwind(AssertUnwindSafe(f)));
    });
    // SAFETY: only the lifetime is changed. The job borrows data that
    // lives at least as long as this call, and this call does not return
    // or unwind before the job ran to its end: the wait below only ends
    // with the result stored, which is the job's last use of what it
    // borrows (`theirs` is an Arc, owned), and `join` blocks for it on any
    // other way out.
    let work: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(work) };
    let join = Join(&job);
    thread_pool::submit(work);
    // A running job cannot be stopped: a cancellation waits for it.
    let (r, _) = wait_stopping(what, || job.take(), || {});
    // The result was taken: `join` would wait for it forever.
    std::mem::forget(join);
    r.unwrap_or_else(|p| panic::resume_unwind(p))
}
