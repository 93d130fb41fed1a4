//! The event loop (QEMU's AioContext): fd readiness, timers, bottom halves,
//! a thread pool, and cross-thread wakes.
//!
//! An [`EventLoop`] runs coroutines on one thread. Code in those
//! coroutines calls the free functions of this module ([`sleep`],
//! [`wait_readable`], [`run_blocking`], [`wait_future`], ...), which look
//! blocking but suspend the coroutine and let the loop run others until
//! the awaited event. Other threads reach a loop through its
//! [`LoopHandle`] or an [`aio::Waker`](Waker); coroutines never move
//! between threads.
//!
//! ```
//! use costack::aio::{self, EventLoop};
//! use std::time::Duration;
//!
//! let lp = EventLoop::new().unwrap();
//! let answer = lp.block_on(|| {
//!     let v = aio::run_blocking(|| 6 * 7); // on a worker thread
//!     aio::sleep(Duration::from_millis(1));
//!     v
//! });
//! assert_eq!(answer, 42);
//! ```
//!
//! The free functions must be called in a coroutine running on an event
//! loop (one that loop entered, or one entered while the loop polls);
//! elsewhere they panic with a message containing `not in a coroutine`.
//!
//! # Design (after QEMU's AioContext)
//!
//! - **Completion** (the io_uring backend): stream sockets' reads and
//!   writes are io_uring requests, queued while the coroutines run and
//!   submitted in one `io_uring_enter` per loop turn; completions are read
//!   from the shared ring, and signal the eventfd the loop sleeps on only
//!   while it sleeps (or has file requests in flight).
//! - **Readiness**: one reactor per loop, behind a small internal
//!   interface with one implementation per OS call, chosen per loop
//!   ([`Backend`], `COSTACK_AIO`): epoll, or poll(2) (QEMU's fdmon-poll,
//!   the one every unix has). Sockets of [`net`](crate::net) register once
//!   (edge-triggered under epoll, so waiting costs no system call; under
//!   poll(2) only the directions someone waits for are watched); other
//!   fds ([`wait_readable`]) are armed level-triggered and one-shot per
//!   wait, so nothing is left behind for fds the caller closes later.
//! - **Cross-thread notification**: one eventfd per loop. [`LoopHandle`]
//!   posts and cross-thread [`Waker`] wakes go to a queue and write the
//!   eventfd only if no notification is pending (coalesced); the loop
//!   checks an atomic flag every iteration and drains the queue.
//! - **Timers**: a binary heap of deadlines; arming and firing are
//!   O(log n), cancelling is O(1). On Linux the loop sleeps to the
//!   nanosecond (`epoll_pwait2`), and its thread's timer slack is set to
//!   1 ns before its first sub-millisecond deadline (as QEMU does), so a
//!   timer is not up to 50 µs late.
//! - **Wait points**: every call here that may suspend goes through one
//!   wait primitive (`coroutine::wait`), where cancellation is delivered;
//!   [`timeout`], [`scope`], [`shield`] and [`JoinHandle::cancel`] build on
//!   it (see [Cancellation](crate#cancellation-and-deadlines) in the
//!   crate docs). I/O that completes without waiting charges a per-loop
//!   budget (fair share), so a busy coroutine still lets the loop run.
//! - **Bottom halves**: [`LoopHandle::call_soon`] (from any thread) and
//!   [`EventLoop::call_soon`] (same thread) run closures outside any
//!   coroutine, in order.
//! - **Run queue**: [`schedule`], spawned coroutines and wakes from outside
//!   any coroutine enter coroutines from the loop, once per iteration for
//!   what was queued before it started (aio_co_schedule); [`yield_now`]
//!   goes to its back. Wakes from inside a coroutine bypass the loop (see
//!   [`Coroutine::wake`]).
//! - **Blocking work**: [`run_blocking`] on a bounded
//!   [`thread_pool`]; file I/O in [`fs`](crate::fs) on io_uring when the
//!   kernel has it (its completion eventfd is watched by the reactor), else
//!   on the thread pool.
//!
//! An iteration ([`EventLoop::poll`]) runs due timers, bottom halves and
//! the run queue; then asks the reactor for events (not waiting if that made
//! progress, and only every 32nd busy iteration, so coroutines that keep
//! each other busy do not pay a system call per switch) and runs what they
//! made ready. With [polling](EventLoop::set_poll_max) on, a loop about to
//! block first asks the reactor without waiting for an adaptive window of up to
//! tens of microseconds (QEMU's `poll-max-ns`), which spares request/reply
//! traffic a sleep and a wake-up per message.
//!
//! # Backends
//!
//! | `COSTACK_AIO` | descriptors | stream sockets' reads and writes | [`fs`](crate::fs) I/O | where |
//! |---|---|---|---|---|
//! | unset | epoll | readiness (epoll) | io_uring if the kernel allows it, else the thread pool | Linux default |
//! | `io_uring` | epoll | io_uring (Linux 5.6) | io_uring (an error from [`EventLoop::new`] if unavailable) | Linux |
//! | `epoll` | epoll | readiness (epoll) | thread pool | Linux |
//! | `poll` | poll(2) (`WSAPoll` on Windows) | readiness (poll(2)) | thread pool | everywhere; the default (and only) backend off Linux |
//!
//! On the io_uring backend, accept, connect, datagrams, `peek` and
//! [`wait_readable`] still wait for readiness on epoll.
//!
//! Any other value makes [`EventLoop::new`] fail: a backend is never
//! swapped for another silently. [`EventLoop::with_backend`] picks one in
//! code, and [`EventLoop::backend`] tells which a loop runs on. The whole
//! event-loop suite runs on each of the three in CI.

// Cross-thread wakes are portable (the locks use them everywhere); the
// event loop needs epoll or poll(2) (WSAPoll on Windows). Each module of
// the loop is declared on its own, so rustfmt sees them all.
mod waker;
#[allow(unused_imports)] // the crate's tests reach the mailbox
pub(crate) use waker::{mailbox, Mailbox};
pub use waker::{waker, Waker};

// Wait points and what builds on them.
#[cfg(any(unix, windows))]
mod blocking;
#[cfg(any(unix, windows))]
pub(crate) mod budget;
#[cfg(any(unix, windows))]
mod cancel;
#[cfg(any(unix, windows))]
mod future;
#[cfg(any(unix, windows))]
mod join;
#[cfg(any(unix, windows))]
mod scope;
#[cfg(any(unix, windows))]
mod time;
#[cfg(any(unix, windows))]
mod wait;

// The loop and its drivers.
#[cfg(any(unix, windows))]
mod busy_poll;
#[cfg(any(unix, windows))]
mod event_loop;
#[cfg(any(unix, windows))]
mod handle;
#[cfg(any(unix, windows))]
mod iothread;
#[cfg(any(unix, windows))]
mod reactor;
#[cfg(any(unix, windows))]
mod readiness;
#[cfg(any(unix, windows))]
mod remote;
#[cfg(any(unix, windows))]
mod tasks;
#[cfg(any(unix, windows))]
pub mod thread_pool;
#[cfg(any(unix, windows))]
mod timer;
#[cfg(any(unix, windows))]
mod turn;
#[cfg(target_os = "linux")]
mod uring;
#[cfg(all(any(unix, windows), not(target_os = "linux")))]
#[path = "uring_none.rs"]
mod uring;

// What `net` and `fs` reach the loop through.
#[cfg(target_os = "linux")]
pub(crate) mod file_io;
#[cfg(target_os = "linux")]
pub(crate) mod inline;
#[cfg(any(unix, windows))]
pub(crate) mod io;

#[cfg(any(unix, windows))]
pub use self::{
    blocking::run_blocking,
    cancel::{shield, timeout, timeout_at, Elapsed},
    event_loop::EventLoop,
    handle::LoopHandle,
    io::{wait_readable, wait_readable_timeout, wait_writable, wait_writable_timeout},
    iothread::IoThread,
    join::{JoinHandle, RemoteJoinHandle},
    reactor::Backend,
    scope::{scope, Scope, ScopedJoinHandle},
    time::{sleep, sleep_until},
};
pub use crate::coroutine::cancel::Cancelled;
#[cfg(any(unix, windows))]
#[allow(unused_imports)] // for the channels
pub(crate) use time::wait_deadline;

use std::rc::Rc;

use crate::coroutine;
use crate::Coroutine;

/// The current loop, for a free function called from a coroutine on it.
#[cfg(any(unix, windows))]
#[track_caller]
pub(crate) fn context(what: &str) -> Rc<turn::Inner> {
    if !crate::in_coroutine() {
        coroutine::not_in_coroutine(what);
    }
    match io_loop(what) {
        Some(inner) => inner,
        None => panic!("{what} called when not in a coroutine on an event loop"),
    }
}

/// The loop that I/O of the calling code waits on: the current loop, from
/// a coroutine on it; `None` elsewhere (plain threads block instead).
///
/// # Panics
/// In a [`CoFuture`](crate::future::CoFuture)'s coroutine, which its
/// executor drives: blocking that thread would stall the executor.
#[cfg(any(unix, windows))]
#[track_caller]
pub(crate) fn io_loop(what: &str) -> Option<Rc<turn::Inner>> {
    if !crate::in_coroutine() {
        return None;
    }
    if coroutine::current_is_polled() {
        needs_event_loop(what);
    }
    turn::current_inner()
}

/// Whether a loop is polling on this thread (a coroutine running now runs
/// on it).
#[cfg(any(unix, windows))]
#[inline]
pub(crate) fn has_loop() -> bool {
    turn::has_current()
}

/// Checks what [`context`] checks, without taking a handle to the loop.
#[cfg(any(unix, windows))]
#[track_caller]
#[inline]
pub(crate) fn require_loop(what: &str) {
    if !crate::in_coroutine() {
        coroutine::not_in_coroutine(what);
    }
    if coroutine::current_is_polled() {
        needs_event_loop(what);
    }
    if !turn::has_current() {
        panic!("{what} called when not in a coroutine on an event loop");
    }
}

#[cold]
#[track_caller]
fn needs_event_loop(what: &str) -> ! {
    panic!(
        "{what} needs a costack event loop: it was called in a CoFuture, which its \
         executor polls (use the executor's own I/O and timers there, through \
         aio::wait_future)"
    )
}

/// A wait for the calling coroutine on `inner`, which the coroutine
/// belongs to from now on if it belonged to no loop (QEMU sets co->ctx
/// when a coroutine is entered from a context).
#[cfg(any(unix, windows))]
pub(crate) fn current_wait(inner: &turn::Inner) -> Rc<wait::Wait> {
    let me = crate::current().expect("waits on a loop run in a coroutine");
    inner.adopt(&me);
    wait::Wait::new(&me)
}

/// Spawns a coroutine running `f` on the current loop (see
/// [`EventLoop::spawn`]); its handle gives its value or its panic.
///
/// ```
/// use costack::aio::{self, EventLoop};
///
/// let total = EventLoop::new().unwrap().block_on(|| {
///     let parts: Vec<_> = (1..=4).map(|i| aio::spawn(move || i * 10)).collect();
///     parts.into_iter().map(|h| h.join().unwrap()).sum::<i32>()
/// });
/// assert_eq!(total, 100);
/// ```
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
#[cfg(any(unix, windows))]
#[track_caller]
pub fn spawn<T: 'static, F: FnOnce() -> T + 'static>(f: F) -> JoinHandle<T> {
    join::spawn_on(&context("aio::spawn"), f)
}

/// Schedules `co` to be entered by the current loop in its next iteration
/// (aio_co_schedule). Scheduling the calling coroutine and then yielding
/// lets everything else that is runnable go first. A coroutine already
/// scheduled is not scheduled twice.
///
/// ```
/// use costack::aio::{self, EventLoop};
///
/// EventLoop::new().unwrap().block_on(|| {
///     aio::schedule(&costack::current().unwrap());
///     costack::yield_now(); // resumed by the loop
/// });
/// ```
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
#[cfg(any(unix, windows))]
#[track_caller]
pub fn schedule(co: &Coroutine) {
    context("aio::schedule").schedule(co)
}

/// Lets every other coroutine that is runnable on the current loop run
/// first, then continues (a wait point, so a pending cancellation is
/// delivered here): [`schedule`]s the caller and yields. (A bare
/// [`crate::yield_now`] in a loop coroutine instead waits until something
/// wakes it.) Useful to gather the work of one loop pass, as costack-nbd
/// does to send the replies finished together in one `writev`.
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::cell::RefCell;
/// use std::rc::Rc;
///
/// let order = Rc::new(RefCell::new(Vec::new()));
/// let log = order.clone();
/// EventLoop::new().unwrap().block_on(move || {
///     let spawned = log.clone();
///     aio::spawn(move || spawned.borrow_mut().push("spawned"));
///     aio::yield_now();
///     log.borrow_mut().push("resumed");
/// });
/// assert_eq!(*order.borrow(), ["spawned", "resumed"]);
/// ```
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
#[cfg(any(unix, windows))]
#[track_caller]
pub fn yield_now() {
    if coroutine::current_is_polled() {
        // A CoFuture: a bare yield wakes its poller, which polls it again
        // after the executor's other work.
        return crate::yield_now();
    }
    let inner = context("aio::yield_now");
    let me = crate::current().expect("checked by context()");
    inner.adopt(&me);
    budget::yield_to_loop(me);
}

/// Drives a `std::future::Future` to completion from the calling
/// coroutine, yielding to the loop while it is pending.
///
/// The future's `std::task::Waker` may be woken from any thread; it
/// re-enters the coroutine on its own loop. This runs futures that need no
/// particular runtime (channels, `futures` combinators, hand-written
/// futures) as they are.
///
/// # Tokio futures on costack's loop
///
/// Futures bound to a runtime's reactor (tokio sockets, timers,
/// `JoinHandle`s) are woken only while that runtime's driver runs, and
/// that driver must not be this thread, which costack's loop occupies.
/// The patterns that work keep a **multi-thread** tokio runtime, whose
/// workers drive the reactor: enter its handle on the loop's thread for as
/// long as the loop runs (below), or hand the future to it with
/// `handle.spawn(future)` and wait for the returned `JoinHandle`, which
/// needs no runtime context at all (`examples/tokio_interop.rs` shows
/// both):
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::Duration;
///
/// let rt = tokio::runtime::Builder::new_multi_thread()
///     .worker_threads(1)
///     .enable_time()
///     .build()
///     .unwrap();
/// let _entered = rt.enter(); // tokio's context for this thread
/// let v = EventLoop::new().unwrap().block_on(|| {
///     aio::wait_future(async {
///         tokio::time::sleep(Duration::from_millis(1)).await;
///         42
///     })
/// });
/// assert_eq!(v, 42);
/// ```
///
/// A tokio `current_thread` runtime entered on the loop's thread can never
/// run while the loop does, so its futures would wait forever. With the
/// crate's `tokio` feature, `wait_future` detects that runtime and panics
/// with a message saying so instead of hanging; without the feature it is
/// up to you. (To run coroutine code *on* a `current_thread` runtime, turn
/// it around: poll it there as a [`CoFuture`](crate::future::CoFuture).)
///
/// Waiting for an async value computed elsewhere (another thread, another
/// runtime) needs only a future woken from there, such as a channel's
/// receiver:
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::sync::{Arc, Mutex};
/// use std::task::{Context, Poll, Waker};
///
/// // A one-shot value set by another thread.
/// #[derive(Default)]
/// struct Shared { value: Option<u32>, waker: Option<Waker> }
/// struct Recv(Arc<Mutex<Shared>>);
/// impl Future for Recv {
///     type Output = u32;
///     fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
///         let mut s = self.0.lock().unwrap();
///         match s.value.take() {
///             Some(v) => Poll::Ready(v),
///             None => { s.waker = Some(cx.waker().clone()); Poll::Pending }
///         }
///     }
/// }
///
/// let shared = Arc::new(Mutex::new(Shared::default()));
/// let theirs = shared.clone();
/// let t = std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_millis(10));
///     let mut s = theirs.lock().unwrap();
///     s.value = Some(7);
///     if let Some(w) = s.waker.take() { w.wake() }
/// });
/// let v = EventLoop::new().unwrap().block_on(move || aio::wait_future(Recv(shared)));
/// assert_eq!(v, 7);
/// t.join().unwrap();
/// ```
///
/// In a [`CoFuture`](crate::future::CoFuture)'s coroutine it polls
/// `future` with the context of the CoFuture's own poll instead, so the
/// future's wakes go to that poller; the future's `poll` must not wait on
/// costack then (it would panic).
///
/// # Panics
/// When not in a coroutine on an event loop (or a CoFuture): "not in a
/// coroutine". With the `tokio` feature, when the future is pending on an
/// event loop whose thread has a tokio `current_thread` runtime entered
/// (it could never wake the coroutine): "tokio current_thread".
#[track_caller]
#[inline]
pub fn wait_future<F: std::future::Future>(future: F) -> F::Output {
    if crate::coroutine::current_is_polled() {
        return crate::future::wait_in_poll(future);
    }
    #[cfg(any(unix, windows))]
    {
        let inner = context("aio::wait_future");
        future::block_on_future(&inner, future)
    }
    #[cfg(not(any(unix, windows)))]
    {
        drop(future);
        if !crate::in_coroutine() {
            crate::coroutine::not_in_coroutine("aio::wait_future");
        }
        panic!(
            "aio::wait_future outside a CoFuture needs a costack event loop, which \
             runs on unix systems and Windows only"
        )
    }
}
