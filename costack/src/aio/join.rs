//! Handles to spawned coroutines: their result, or their panic, caught at
//! the coroutine's boundary as `std::thread` does.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use super::remote::Remote;
use super::turn::{current_inner, Inner};
use super::waker::{waker, Waker};
use crate::coroutine::cancel::{self, Cancelled};
use crate::coroutine::control::CoId;
use crate::coroutine::wait::wait_until;
use crate::coroutine::{self, Coroutine};

/// The `Err` payload of a join whose coroutine was cancelled (or unwound
/// because its loop was dropped) before it finished.
fn cancelled() -> Box<dyn Any + Send> {
    Box::new(Cancelled::base())
}

/// Spawns a task on `inner` whose panic is caught at its boundary and
/// handed to the returned handle (aio::spawn, EventLoop::spawn).
pub(crate) fn spawn_on<T: 'static, F: FnOnce() -> T + 'static>(
    inner: &Rc<Inner>,
    f: F,
) -> JoinHandle<T> {
    let slot = JoinSlot::new();
    let theirs = slot.clone();
    let co = inner.spawn_task(move || theirs.finish(catch_task(f)));
    JoinHandle::new(co, slot, inner.clone())
}

/// Runs a spawned coroutine's body, catching its panic or cancellation;
/// the forced unwind of a dropped coroutine goes on to the coroutine's
/// base. A task cancelled before it started does not run; one whose
/// cancellation was delivered (and caught) counts as cancelled whatever
/// it returns.
pub(crate) fn catch_task<T>(f: impl FnOnce() -> T) -> thread::Result<T> {
    if cancel::base_pending() {
        drop(f);
        return Err(cancelled());
    }
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Err(p) if coroutine::is_forced_unwind(&*p) => panic::resume_unwind(p),
        Ok(v) if cancel::base_delivered() => {
            drop(v);
            Err(cancelled())
        }
        r => r,
    }
}

/// Where a local task leaves its result for its [`JoinHandle`].
pub(crate) struct JoinSlot<T> {
    result: Cell<Option<thread::Result<T>>>,
    joiner: Cell<Option<Waker>>,
}

impl<T> JoinSlot<T> {
    pub(crate) fn new() -> Rc<JoinSlot<T>> {
        Rc::new(JoinSlot {
            result: Cell::new(None),
            joiner: Cell::new(None),
        })
    }

    /// Stores the task's result and wakes the joiner. With the handle
    /// dropped (this is the last reference) the result is dropped: a
    /// panic was reported by the panic hook when it happened.
    pub(crate) fn finish(self: Rc<Self>, result: thread::Result<T>) {
        if Rc::strong_count(&self) == 1 {
            return;
        }
        self.result.set(Some(result));
        if let Some(w) = self.joiner.take() {
            w.wake();
        }
    }
}

/// An owned permission to join a coroutine spawned on an event loop
/// ([`aio::spawn`](super::spawn), [`EventLoop::spawn`](super::EventLoop::spawn)).
///
/// Dropping the handle detaches the coroutine: the loop still runs it to
/// the end, and a panic in it is only reported by the panic hook. Like the
/// loop, the handle is bound to its thread.
///
/// It is neither `Send` nor `Sync`:
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// let lp = costack::aio::EventLoop::new().unwrap();
/// send(lp.spawn(|| ()));
/// ```
///
/// ```
/// use costack::aio::{self, EventLoop};
///
/// let lp = EventLoop::new().unwrap();
/// let sum = lp.block_on(|| {
///     let a = aio::spawn(|| 20);
///     let b = aio::spawn(|| -> u32 { panic!("bad handler") });
///     assert!(b.join().is_err()); // caught at the coroutine's boundary
///     a.join().unwrap() + 22
/// });
/// assert_eq!(sum, 42);
/// ```
pub struct JoinHandle<T> {
    co: Coroutine,
    slot: Rc<JoinSlot<T>>,
    inner: Rc<Inner>,
}

impl<T> JoinHandle<T> {
    pub(crate) fn new(co: Coroutine, slot: Rc<JoinSlot<T>>, inner: Rc<Inner>) -> Self {
        JoinHandle { co, slot, inner }
    }

    /// Waits for the coroutine to finish and returns its value, or the
    /// payload of its panic.
    ///
    /// In a coroutine this suspends the caller (the loop runs on); outside
    /// any coroutine, on the loop's thread, it runs the loop until the
    /// coroutine has finished. If the coroutine was cancelled
    /// ([`cancel`](Self::cancel)) or unwound because the loop was dropped,
    /// `join` returns `Err` with a [`Cancelled`] payload.
    ///
    /// In a coroutine this is a wait point: cancelled, the caller unwinds
    /// from here and the joined coroutine runs on, detached.
    ///
    /// # Panics
    /// If a coroutine joins itself (it would wait forever). Outside a
    /// coroutine, a panic of a bottom half the loop runs meanwhile
    /// propagates.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let ok = aio::spawn(|| 1);
    ///     let bad = aio::spawn(|| -> i32 { panic!("boom") });
    ///     assert_eq!(ok.join().unwrap(), 1); // in a coroutine: yields until done
    ///     assert!(bad.join().is_err()); // the panic, caught at its boundary
    /// });
    /// ```
    pub fn join(self) -> thread::Result<T> {
        if coroutine::in_coroutine() {
            assert!(
                crate::current().as_ref() != Some(&self.co),
                "a coroutine cannot join itself"
            );
            return wait_until("JoinHandle::join", || {
                let r = self.take();
                if r.is_none() {
                    self.slot.joiner.set(Some(waker()));
                }
                r
            });
        }
        self.run_loop_until_done()
    }

    /// Runs the loop until the coroutine has finished (`block_on`, and
    /// `join` outside a coroutine).
    pub(crate) fn run_loop_until_done(self) -> thread::Result<T> {
        loop {
            if let Some(r) = self.take() {
                return r;
            }
            if self.inner.is_stuck() {
                never_woken(&self.co);
            }
            self.inner.poll(true);
        }
    }

    /// The result, once the coroutine has finished.
    fn take(&self) -> Option<thread::Result<T>> {
        match self.slot.result.take() {
            Some(r) => Some(r),
            None if self.co.is_finished() => Some(Err(cancelled())),
            None => None,
        }
    }

    /// Whether the coroutine has finished (returned, panicked or been
    /// cancelled), so that [`join`](JoinHandle::join) would not wait.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let h = aio::spawn(|| ());
    ///     assert!(!h.is_finished()); // not started yet
    ///     aio::yield_now();
    ///     assert!(h.is_finished());
    /// });
    /// ```
    pub fn is_finished(&self) -> bool {
        self.co.is_finished()
    }

    /// Cancels the coroutine: it unwinds from the wait point it is
    /// suspended at (or reaches next), and its [`join`](Self::join) returns
    /// `Err` with a [`Cancelled`] payload, unless it finished before the
    /// cancellation was delivered. Cancelling a finished coroutine does
    /// nothing. The cancellation is sticky: if the coroutine catches the
    /// unwind and goes on, its next wait point raises it again.
    ///
    /// ```
    /// use costack::aio::{self, Cancelled, EventLoop};
    /// use std::time::Duration;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let h = aio::spawn(|| {
    ///         aio::sleep(Duration::from_secs(3600));
    ///         "woke up"
    ///     });
    ///     aio::yield_now(); // it sleeps now
    ///     h.cancel(); // it unwinds from the sleep
    ///     assert!(h.join().unwrap_err().is::<Cancelled>());
    /// });
    /// ```
    pub fn cancel(&self) {
        cancel::request(&self.co, 0);
    }

    /// The spawned coroutine.
    ///
    /// ```
    /// use costack::aio::EventLoop;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// let h = lp.spawn(|| ());
    /// assert!(!h.coroutine().is_finished());
    /// h.join().unwrap();
    /// ```
    pub fn coroutine(&self) -> &Coroutine {
        &self.co
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").field("co", &self.co).finish()
    }
}

struct RemoteState<T> {
    /// `Some` from the end of the coroutine until `join` takes it.
    result: Option<thread::Result<T>>,
    finished: bool,
    joiner: Option<Waker>,
    /// The coroutine, once its loop has spawned it.
    task: Option<CoId>,
    /// `cancel` was called (before the coroutine existed, perhaps).
    cancel: bool,
}

pub(crate) struct RemoteSlot<T> {
    state: Mutex<RemoteState<T>>,
    done: Condvar,
    /// The loop's remote driver, to post the cancellation to.
    remote: Arc<Remote>,
}

impl<T> RemoteSlot<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, RemoteState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The task side of a [`RemoteJoinHandle`]: finishing it stores the result;
/// dropping it unfinished (the loop dropped the bottom half that would
/// have spawned the coroutine, or unwound the coroutine) stores
/// a [`Cancelled`] payload.
pub(crate) struct Completer<T>(Arc<RemoteSlot<T>>);

impl<T: 'static> Completer<T> {
    /// Spawns `f` on the loop this runs on (a bottom half of it); the
    /// coroutine's end completes the handle.
    pub(crate) fn spawn<F: FnOnce() -> T + 'static>(self, f: F) {
        let inner = current_inner().expect("bottom halves run on their loop");
        let slot = self.0.clone();
        let co = inner.spawn_task(move || self.finish(catch_task(f)));
        let cancelled = {
            let mut st = slot.lock();
            st.task = Some(co.id());
            st.cancel
        };
        if cancelled {
            cancel::request(&co, 0);
        }
    }
}

impl<T> Completer<T> {
    pub(crate) fn finish(self, result: thread::Result<T>) {
        self.store(result);
    }

    fn store(&self, result: thread::Result<T>) {
        let joiner = {
            let mut st = self.0.lock();
            if st.finished {
                return;
            }
            st.finished = true;
            st.result = Some(result);
            st.joiner.take()
        };
        self.0.done.notify_all();
        if let Some(w) = joiner {
            w.wake();
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        self.store(Err(cancelled()));
    }
}

/// A handle to a coroutine spawned on a loop of another thread with
/// [`LoopHandle::spawn`](super::LoopHandle::spawn); `Send` and `Sync` when
/// the result is `Send`.
///
/// ```
/// use costack::aio::IoThread;
///
/// let io = IoThread::spawn("worker").unwrap();
/// let h = io.handle().spawn(|| {
///     costack::aio::sleep(std::time::Duration::from_millis(1));
///     std::thread::current().name().map(str::to_owned)
/// });
/// assert_eq!(h.join().unwrap().as_deref(), Some("worker"));
/// ```
pub struct RemoteJoinHandle<T> {
    slot: Arc<RemoteSlot<T>>,
}

pub(crate) fn remote_pair<T>(remote: Arc<Remote>) -> (Completer<T>, RemoteJoinHandle<T>) {
    let slot = Arc::new(RemoteSlot {
        state: Mutex::new(RemoteState {
            result: None,
            finished: false,
            joiner: None,
            task: None,
            cancel: false,
        }),
        done: Condvar::new(),
        remote,
    });
    (Completer(slot.clone()), RemoteJoinHandle { slot })
}

impl<T: Send> RemoteJoinHandle<T> {
    /// Waits for the coroutine to finish and returns its value, or the
    /// payload of its panic (a [`Cancelled`] if it was cancelled, or its
    /// loop was dropped before it finished).
    ///
    /// In a coroutine this suspends the caller (a wait point); on a plain
    /// thread it blocks the thread.
    ///
    /// ```
    /// use costack::aio::IoThread;
    ///
    /// let io = IoThread::spawn("io").unwrap();
    /// let h = io.handle().spawn(|| 40 + 2);
    /// assert_eq!(h.join().unwrap(), 42); // on a plain thread: blocks until done
    /// ```
    pub fn join(self) -> thread::Result<T> {
        if coroutine::in_coroutine() {
            return wait_until("RemoteJoinHandle::join", || {
                let mut st = self.slot.lock();
                if st.finished {
                    return Some(st.result.take().unwrap_or_else(|| Err(cancelled())));
                }
                st.joiner = Some(waker());
                None
            });
        }
        let mut st = self.slot.lock();
        while !st.finished {
            st = self.slot.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.result.take().unwrap_or_else(|| Err(cancelled()))
    }

    /// Whether the coroutine has finished (or was cancelled), so that
    /// [`join`](RemoteJoinHandle::join) would not wait.
    ///
    /// ```
    /// use costack::aio::IoThread;
    ///
    /// let io = IoThread::spawn("io").unwrap();
    /// let h = io.handle().spawn(|| ());
    /// while !h.is_finished() {
    ///     std::thread::yield_now();
    /// }
    /// h.join().unwrap();
    /// ```
    pub fn is_finished(&self) -> bool {
        self.slot.lock().finished
    }
}

impl<T> RemoteJoinHandle<T> {
    /// Cancels the coroutine, from any thread: it unwinds from the wait
    /// point it is suspended at (or reaches next) on its loop, or never
    /// starts. [`join`](Self::join) then returns `Err` with a [`Cancelled`]
    /// payload, unless it finished first. Cancelling a finished coroutine
    /// does nothing.
    ///
    /// ```
    /// use costack::aio::{self, Cancelled, IoThread};
    /// use std::time::Duration;
    ///
    /// let io = IoThread::spawn("io").unwrap();
    /// let h = io.handle().spawn(|| aio::sleep(Duration::from_secs(3600)));
    /// h.cancel(); // from this (plain) thread
    /// assert!(h.join().unwrap_err().is::<Cancelled>());
    /// ```
    pub fn cancel(&self) {
        let task = {
            let mut st = self.slot.lock();
            if st.finished {
                return;
            }
            st.cancel = true;
            st.task
        };
        // Not spawned yet: the spawn sees the flag.
        if let Some(id) = task {
            self.slot.remote.post(Box::new(move || {
                if let Some(co) = Coroutine::from_id(id) {
                    cancel::request(&co, 0);
                }
            }));
        }
    }
}

impl<T> fmt::Debug for RemoteJoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJoinHandle").finish_non_exhaustive()
    }
}

/// The loop has nothing left that could wake `co`, whose end a thread
/// waits for: say so instead of hanging.
#[cold]
fn never_woken(co: &Coroutine) -> ! {
    let name = co.name().map(|n| format!(" '{n}'")).unwrap_or_default();
    panic!(
        "costack: the event loop would wait forever: coroutine{name} is suspended and nothing \
         can wake it (no timers, descriptors, io_uring requests, bottom halves, aio::Wakers \
         or LoopHandles are left). costack::yield_now() suspends until someone wakes the \
         coroutine; to let the loop's other work run and continue, call aio::yield_now()"
    )
}
