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
//!   O(log n), cancelling is O(1).
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
//! | `COSTACK_AIO` | descriptors | [`fs`](crate::fs) I/O | where |
//! |---|---|---|---|
//! | unset | epoll | io_uring if the kernel allows it, else the thread pool | Linux default |
//! | `io_uring` | epoll | io_uring (an error from [`EventLoop::new`] if unavailable) | Linux |
//! | `epoll` | epoll | thread pool | Linux |
//! | `poll` | poll(2) (`WSAPoll` on Windows) | thread pool | everywhere; the default (and only) backend off Linux |
//!
//! Any other value makes [`EventLoop::new`] fail: a backend is never
//! swapped for another silently. [`EventLoop::with_backend`] picks one in
//! code, and [`EventLoop::backend`] tells which a loop runs on. The whole
//! event-loop suite runs on each of the three in CI.

// Cross-thread wakes are portable (the locks use them everywhere); the
// event loop needs epoll or poll(2) (WSAPoll on Windows).
mod waker;
pub use waker::{waker, Waker};
// Kept for crate-internal users of the mailbox (the loop takes its own).
#[allow(unused_imports)]
pub(crate) use waker::{mailbox, Mailbox};

/// Applies `#[cfg(any(unix, windows))]` to each item: the systems the
/// event loop runs on.
macro_rules! with_loop {
    ($($item:item)*) => {
        $( #[cfg(any(unix, windows))] #[cfg_attr(docsrs, doc(cfg(any(unix, windows))))] $item )*
    };
}

with_loop! {

// Borrowed buffers handed to the thread pool: `fs` (Linux) needs them.
#[cfg(target_os = "linux")]
mod borrowed;
mod busy_poll;
mod event_loop;
mod reactor;
mod future;
mod handle;
mod iothread;
mod join;
pub(crate) mod io;
pub mod thread_pool;
mod timer;
#[cfg(target_os = "linux")]
pub(crate) mod uring;
/// Where there is no io_uring: a loop never has a ring, and `fs` I/O goes
/// to the thread pool.
#[cfg(not(target_os = "linux"))]
pub(crate) mod uring {
    use super::Inner;

    pub(crate) struct UringState;

    impl UringState {
        pub(crate) fn new(_allowed: bool) -> UringState {
            UringState
        }
        pub(crate) fn available(&self, _inner: &Inner) -> bool {
            false
        }
        pub(crate) fn reap(&self, _inner: &Inner) -> bool {
            false
        }
        pub(crate) fn shutdown(&self, _inner: &Inner) {}
        pub(crate) fn busy(&self) -> bool {
            false
        }
    }
}
mod wait;

// A socket (any descriptor on unix) borrowed for a wait: `BorrowedFd` on
// unix, `BorrowedSocket` on Windows.
#[cfg(unix)]
use std::os::fd::BorrowedFd as BorrowedSock;
#[cfg(windows)]
use std::os::windows::io::BorrowedSocket as BorrowedSock;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
pub(crate) use borrowed::run_borrowed;
pub use event_loop::EventLoop;
pub use reactor::Backend;
pub(crate) use event_loop::{current_inner, Inner};
pub use handle::LoopHandle;
pub use iothread::IoThread;
pub use join::{JoinHandle, RemoteJoinHandle, CANCELLED};
pub(crate) use wait::wait_deadline;
pub use crate::coroutine::cancel::Cancelled;

use crate::coroutine;
use io::Direction;
use wait::Wait;

/// The current loop, for a free function called from a coroutine on it.
#[track_caller]
pub(crate) fn context(what: &str) -> Rc<Inner> {
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
#[track_caller]
pub(crate) fn io_loop(what: &str) -> Option<Rc<Inner>> {
    if !crate::in_coroutine() {
        return None;
    }
    if coroutine::current_is_polled() {
        needs_event_loop(what);
    }
    current_inner()
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
#[track_caller]
pub fn spawn<T: 'static, F: FnOnce() -> T + 'static>(f: F) -> JoinHandle<T> {
    context("aio::spawn").spawn(f)
}

use crate::Coroutine;

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
#[track_caller]
pub fn schedule(co: &Coroutine) {
    context("aio::schedule").schedule(co)
}

/// Lets every other coroutine that is runnable on the current loop run
/// first, then continues: [`schedule`]s the caller and yields. (A bare
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
#[track_caller]
pub fn yield_now() {
    if coroutine::current_is_polled() {
        // A CoFuture: a bare yield wakes its poller, which polls it again
        // after the executor's other work.
        return crate::yield_now();
    }
    let inner = context("aio::yield_now");
    let Some(me) = crate::current() else {
        panic!("aio::yield_now called when not in a coroutine on an event loop");
    };
    inner.schedule(&me);
    crate::yield_now();
}

/// Suspends the calling coroutine for `duration` (qemu_co_sleep_ns); the
/// loop runs other work meanwhile.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::{Duration, Instant};
///
/// let t = Instant::now();
/// EventLoop::new().unwrap().block_on(|| aio::sleep(Duration::from_millis(5)));
/// assert!(t.elapsed() >= Duration::from_millis(5));
/// ```
#[track_caller]
pub fn sleep(duration: Duration) {
    let inner = context("aio::sleep");
    sleep_until_on(&inner, Instant::now() + duration);
}

/// Suspends the calling coroutine until `deadline`.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::time::{Duration, Instant};
///
/// let deadline = Instant::now() + Duration::from_millis(5);
/// EventLoop::new().unwrap().block_on(move || aio::sleep_until(deadline));
/// assert!(Instant::now() >= deadline);
/// ```
#[track_caller]
pub fn sleep_until(deadline: Instant) {
    let inner = context("aio::sleep_until");
    sleep_until_on(&inner, deadline);
}

fn sleep_until_on(inner: &Rc<Inner>, deadline: Instant) {
    let me = crate::current().expect("checked by context()");
    inner.adopt(&me);
    let wait = Wait::new(&me);
    drop(me);
    let _timer = inner.timers.borrow_mut().add(inner, deadline, wait.clone());
    wait.suspend("aio::sleep");
}

/// Suspends the calling coroutine until `fd` is readable (or hung up, or
/// in error: then the next read reports it).
///
/// Closing `fd` while a coroutine waits on it is a bug, as with any
/// borrowed fd: epoll forgets closed fds, so the wait might never end. Use
/// `shutdown` on sockets to make waiters return.
///
/// # Errors
/// If the fd cannot be polled (for example a regular file: `EPERM`).
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::io::{Read, Write};
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
///
/// let (mut a, mut b) = UnixStream::pair().unwrap();
/// b.set_nonblocking(true).unwrap();
/// let got = EventLoop::new().unwrap().block_on(move || {
///     let writer = aio::spawn(move || a.write_all(b"ping").unwrap());
///     aio::wait_readable(b.as_fd()).unwrap(); // yields until the data is there
///     let mut buf = [0; 4];
///     b.read_exact(&mut buf).unwrap();
///     writer.join().unwrap();
///     buf
/// });
/// assert_eq!(&got, b"ping");
/// ```
#[track_caller]
pub fn wait_readable(fd: BorrowedSock<'_>) -> std::io::Result<()> {
    let inner = context("aio::wait_readable");
    io::wait_fd(&inner, crate::sys::raw_sock(fd), Direction::Read, None)
}

/// Suspends the calling coroutine until `fd` is writable (or hung up, or
/// in error). See [`wait_readable`].
///
/// # Errors
/// If the fd cannot be polled.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::io::Write;
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
///
/// let (mut a, _b) = UnixStream::pair().unwrap();
/// a.set_nonblocking(true).unwrap();
/// EventLoop::new().unwrap().block_on(move || {
///     aio::wait_writable(a.as_fd()).unwrap(); // an empty socket buffer: at once
///     a.write_all(b"x").unwrap();
/// });
/// ```
#[track_caller]
pub fn wait_writable(fd: BorrowedSock<'_>) -> std::io::Result<()> {
    let inner = context("aio::wait_writable");
    io::wait_fd(&inner, crate::sys::raw_sock(fd), Direction::Write, None)
}

/// As [`wait_readable`], giving up with `ErrorKind::TimedOut` after
/// `timeout`.
///
/// # Errors
/// `TimedOut`, or if the fd cannot be polled.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::io::ErrorKind;
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
/// use std::time::Duration;
///
/// let (a, _b) = UnixStream::pair().unwrap();
/// let r = EventLoop::new().unwrap().block_on(move || {
///     aio::wait_readable_timeout(a.as_fd(), Duration::from_millis(5))
/// });
/// assert_eq!(r.unwrap_err().kind(), ErrorKind::TimedOut);
/// ```
#[track_caller]
pub fn wait_readable_timeout(fd: BorrowedSock<'_>, timeout: Duration) -> std::io::Result<()> {
    let inner = context("aio::wait_readable_timeout");
    io::wait_fd(
        &inner,
        crate::sys::raw_sock(fd),
        Direction::Read,
        Some(Instant::now() + timeout),
    )
}

/// As [`wait_writable`], giving up with `ErrorKind::TimedOut` after
/// `timeout`.
///
/// # Errors
/// `TimedOut`, or if the fd cannot be polled.
///
/// # Panics
/// When not in a coroutine on an event loop: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixStream;
/// use std::time::Duration;
///
/// let (a, _b) = UnixStream::pair().unwrap();
/// EventLoop::new().unwrap().block_on(move || {
///     aio::wait_writable_timeout(a.as_fd(), Duration::from_secs(1)).unwrap();
/// });
/// ```
#[track_caller]
pub fn wait_writable_timeout(fd: BorrowedSock<'_>, timeout: Duration) -> std::io::Result<()> {
    let inner = context("aio::wait_writable_timeout");
    io::wait_fd(
        &inner,
        crate::sys::raw_sock(fd),
        Direction::Write,
        Some(Instant::now() + timeout),
    )
}

struct Job<T> {
    result: Mutex<Option<std::thread::Result<T>>>,
    waker: Waker,
}

/// Runs `f` on a worker thread of the process-wide [thread
/// pool](thread_pool) and suspends the calling coroutine until it returns
/// (thread_pool_submit_co); the loop keeps running meanwhile. Returns
/// `f`'s value; a panic in `f` is resumed in the coroutine.
///
/// If the coroutine is unwound before `f` returns (its loop was dropped),
/// `f` still runs to the end on its worker and its result is dropped.
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
    let inner = context("aio::run_blocking");
    let me = crate::current().expect("checked by context()");
    inner.adopt(&me);
    let job = Arc::new(Job {
        result: Mutex::new(None),
        waker: Waker::for_coroutine(&me),
    });
    drop(me);
    let theirs = job.clone();
    thread_pool::submit(Box::new(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        *theirs.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        theirs.waker.wake();
    }));
    loop {
        let done = job.result.lock().unwrap_or_else(|e| e.into_inner()).take();
        match done {
            Some(Ok(v)) => return v,
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => crate::coroutine::park(),
        }
    }
}

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
