//! Coroutines in async Rust: a coroutine polled as a [`Future`] by any
//! executor.
//!
//! A [`CoFuture`] runs a closure on its own stack, like any coroutine, but
//! only inside its `poll`: each poll enters the coroutine with that poll's
//! [`Context`], and the coroutine's yields make `poll` return
//! [`Poll::Pending`]. Inside it, code reads like blocking code while the
//! executor stays in charge:
//!
//! - [`aio::wait_future`](crate::aio::wait_future) polls an async future
//!   with the poller's context and yields while it is pending, so tokio
//!   sockets and timers work inside (they find tokio's context, which is
//!   the thread's);
//! - [`yield_now`](crate::yield_now) yields once: the poller's waker is
//!   woken and `poll` returns `Pending`;
//! - the [`sync`](crate::sync) locks wait, and are woken through the
//!   poller's waker, also by coroutines of costack's own loops;
//! - calls that need costack's event loop (`aio::sleep`, `aio::spawn`,
//!   `aio::run_blocking`, [`net`](crate::net), [`fs`](crate::fs)) panic
//!   with a message containing `needs a costack event loop`.
//!
//! Dropping a pending `CoFuture` unwinds its coroutine (destructors run);
//! a panic inside resumes out of `poll`.
//!
//! ```
//! use costack::future::CoFuture;
//! use std::future::Future;
//! use std::task::{Context, Poll, Waker};
//!
//! // A deep recursion that would need `Box::pin` per level as async code.
//! fn depth(n: u32) -> u32 {
//!     if n == 0 {
//!         costack::yield_now(); // Pending once, at the leaf
//!         0
//!     } else {
//!         1 + depth(n - 1)
//!     }
//! }
//! let mut fut = Box::pin(CoFuture::new(|| depth(100)));
//! let mut cx = Context::from_waker(Waker::noop());
//! assert!(fut.as_mut().poll(&mut cx).is_pending());
//! assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(100));
//! ```
//!
//! # Design
//!
//! The poll's `Context` is handed to the coroutine for the duration of one
//! resume only (as wasmtime runs a fiber as a future): a coroutine that is
//! inside a future's `poll` with it may not yield, so the context can
//! never be used after the poll that lent it returned. Wakes of the
//! coroutine (a lock's grant, an [`aio::Waker`](crate::aio::Waker) from
//! another thread) wake the waker of the latest poll.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::ptr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake};

use crate::coroutine::control::Home;
use crate::coroutine::{self, Builder, Coroutine};

/// The waker of a `CoFuture`'s latest poll.
#[derive(Default)]
struct Poller {
    waker: Mutex<Option<std::task::Waker>>,
}

impl Poller {
    fn set(&self, waker: &std::task::Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *slot {
            Some(w) if w.will_wake(waker) => {}
            other => *other = Some(waker.clone()),
        }
    }
}

impl Wake for Poller {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Woken outside the lock: the executor's waker may do anything.
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The home of a `CoFuture`'s coroutine: its wakes go to the poller.
struct PollerHome(Arc<Poller>);

impl Home for PollerHome {
    fn schedule(&self, _co: Coroutine) {
        self.0.wake_by_ref();
    }

    fn task_waker(&self) -> Option<std::task::Waker> {
        Some(std::task::Waker::from(self.0.clone()))
    }
}

/// A coroutine polled as a [`Future`] (see the [module](self) docs).
///
/// Like every coroutine it is bound to its thread (`!Send`): run it on a
/// single-threaded executor (tokio's `current_thread` runtime or a
/// `LocalSet` with `spawn_local`, `futures::executor::block_on`, a
/// `LocalPool`). On a multi-threaded runtime, give each worker a local set
/// (for example `tokio_util::task::LocalPoolHandle::spawn_pinned`) and
/// start the `CoFuture` there.
///
/// ```
/// use costack::future::CoFuture;
///
/// let fut = CoFuture::new(|| {
///     let mut sum = 0;
///     for i in 0..3 {
///         sum += i;
///         costack::yield_now(); // Pending, woken at once
///     }
///     sum
/// });
/// assert_eq!(futures_lite_block_on(fut), 3);
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let mut f = std::pin::pin!(f);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop {
/// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
/// #     }
/// # }
/// ```
///
/// It is not `Send`:
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// send(costack::future::CoFuture::new(|| 1));
/// ```
pub struct CoFuture<T> {
    co: Coroutine,
    result: Rc<Cell<Option<T>>>,
    poller: Arc<Poller>,
    /// The waker the last poll was given (its data and vtable pointers),
    /// to compare without the poller's lock.
    last_waker: Option<(*const (), *const std::task::RawWakerVTable)>,
}

impl<T: 'static> CoFuture<T> {
    /// A future running `f` on a coroutine with the default stack.
    ///
    /// # Panics
    /// If no stack can be allocated; use
    /// [`with_builder`](CoFuture::with_builder) to handle that.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio;
    /// use costack::future::CoFuture;
    ///
    /// let v = block_on(CoFuture::new(|| {
    ///     // Blocking-looking code, awaiting a future through the poll's context.
    ///     aio::wait_future(async { 20 }) + 1
    /// }));
    /// assert_eq!(v, 21);
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     let mut f = std::pin::pin!(f);
    /// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// #     loop {
    /// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
    /// #     }
    /// # }
    /// ```
    pub fn new<F: FnOnce() -> T + 'static>(f: F) -> CoFuture<T> {
        match Self::with_builder(Builder::new(), f) {
            Ok(fut) => fut,
            Err(e) => panic!("costack: cannot allocate a coroutine stack: {e}"),
        }
    }

    /// A future running `f` on a coroutine made by `builder` (stack size,
    /// name).
    ///
    /// ```
    /// use costack::future::CoFuture;
    /// use costack::Builder;
    ///
    /// let fut = CoFuture::with_builder(Builder::new().name("job").stack_size(64 << 10), || {
    ///     costack::current().unwrap().name().map(str::to_owned)
    /// })
    /// .unwrap();
    /// # let _ = fut;
    /// ```
    ///
    /// # Errors
    /// If no stack can be mapped.
    pub fn with_builder<F: FnOnce() -> T + 'static>(
        builder: Builder,
        f: F,
    ) -> io::Result<CoFuture<T>> {
        let result = Rc::new(Cell::new(None));
        let slot = result.clone();
        let co = builder.create(move || slot.set(Some(f())))?;
        let poller = Arc::new(Poller::default());
        co.set_polled(Rc::new(PollerHome(poller.clone())));
        Ok(CoFuture {
            co,
            result,
            poller,
            last_waker: None,
        })
    }
}

impl<T> CoFuture<T> {
    /// The coroutine the future runs on.
    ///
    /// ```
    /// use costack::future::CoFuture;
    /// use costack::Builder;
    ///
    /// let fut = CoFuture::with_builder(Builder::new().name("job"), || 1).unwrap();
    /// assert_eq!(fut.coroutine().name(), Some("job"));
    /// assert!(!fut.coroutine().is_finished()); // nothing runs before a poll
    /// ```
    pub fn coroutine(&self) -> &Coroutine {
        &self.co
    }
}

/// Lends a poll's context to the coroutine it enters, until dropped (also
/// by a panic coming out of the coroutine).
struct LentContext<'a>(&'a Coroutine);

impl<'a> LentContext<'a> {
    fn lend(co: &'a Coroutine, cx: &mut Context<'_>) -> LentContext<'a> {
        co.lent_cx().set(ptr::from_mut(cx).cast());
        LentContext(co)
    }
}

impl Drop for LentContext<'_> {
    fn drop(&mut self) {
        self.0.lent_cx().set(ptr::null_mut());
    }
}

impl<T> Future for CoFuture<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        if let Some(v) = this.result.take() {
            return Poll::Ready(v);
        }
        assert!(
            !this.co.is_finished(),
            "costack: CoFuture polled after it completed"
        );
        // Most polls come with the same waker as the last: skip the
        // poller's lock then. Compared with what the last poll *passed*,
        // not with the poller's clone of it: a clone may carry another
        // vtable pointer (tokio's do), which `will_wake` takes as another
        // task.
        let given = (cx.waker().data(), ptr::from_ref(cx.waker().vtable()));
        if this.last_waker != Some(given) {
            this.poller.set(cx.waker());
            this.last_waker = Some(given);
        }
        this.co.take_parked();
        {
            let _lent = LentContext::lend(&this.co, cx);
            this.co.enter();
        }
        if let Some(v) = this.result.take() {
            return Poll::Ready(v);
        }
        if !this.co.take_parked() {
            // A bare yield: runnable again at once.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for CoFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoFuture").field("co", &self.co).finish()
    }
}

/// `aio::wait_future` in a coroutine a `CoFuture` polls: polls `future`
/// with the poller's context and waits (a wait point) while it is pending.
#[inline(always)]
pub(crate) fn wait_in_poll<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    coroutine::wait::wait_polled("aio::wait_future", |cx| future.as_mut().poll(cx))
}
