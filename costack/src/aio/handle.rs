//! [`LoopHandle`]: other threads' way to a loop.

use std::fmt;
use std::sync::Arc;

use super::join::{remote_pair, RemoteJoinHandle};
use super::remote::Remote;

/// A thread-safe handle to an [`EventLoop`](super::EventLoop): posts work
/// to it from any thread.
///
/// Each post is one push onto the loop's cross-thread queue; the loop's
/// notifier (an eventfd) is written only by the first post since the loop last drained
/// the queue, so a burst of posts costs one wake-up. Work posted after the
/// loop was dropped is dropped (on the posting thread).
///
/// ```
/// use costack::aio::EventLoop;
/// use std::sync::mpsc;
///
/// let lp = EventLoop::new().unwrap();
/// let handle = lp.handle();
/// let (tx, rx) = mpsc::channel();
/// let t = std::thread::spawn(move || {
///     handle.call_soon(move || tx.send(std::thread::current().id()).unwrap());
/// });
/// t.join().unwrap();
/// while lp.poll(false) {}
/// assert_eq!(rx.recv().unwrap(), std::thread::current().id());
/// ```
pub struct LoopHandle {
    remote: Arc<Remote>,
}

impl Clone for LoopHandle {
    fn clone(&self) -> Self {
        LoopHandle::new(self.remote.clone())
    }
}

impl Drop for LoopHandle {
    fn drop(&mut self) {
        self.remote.handle_dropped();
    }
}

impl LoopHandle {
    /// A handle to the loop whose remote driver is `remote` (counted: see
    /// `Remote::has_handles`).
    pub(crate) fn new(remote: Arc<Remote>) -> LoopHandle {
        remote.handle_made();
        LoopHandle { remote }
    }

    /// Runs `f` on the loop's thread, outside any coroutine, in a coming
    /// iteration of the loop (a bottom half: aio_bh_schedule_oneshot).
    /// A panic in `f` propagates out of the loop's
    /// [`poll`](super::EventLoop::poll).
    ///
    /// ```
    /// use costack::aio::EventLoop;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// let flag = Arc::new(AtomicBool::new(false));
    /// let (f, handle) = (flag.clone(), lp.handle());
    /// std::thread::spawn(move || handle.call_soon(move || f.store(true, Ordering::SeqCst)))
    ///     .join()
    ///     .unwrap();
    /// while !flag.load(Ordering::SeqCst) {
    ///     lp.poll(true);
    /// }
    /// ```
    pub fn call_soon<F: FnOnce() + Send + 'static>(&self, f: F) {
        self.remote.post(Box::new(f));
    }

    /// Runs `f` in a new coroutine spawned on the loop (as
    /// [`EventLoop::spawn`](super::EventLoop::spawn) there); the handle
    /// gives its value or its panic, from any thread. If the loop is
    /// dropped before the coroutine finishes (or starts), the join returns
    /// `Err` with a [`Cancelled`](super::Cancelled) payload. The handle's
    /// [`cancel`](RemoteJoinHandle::cancel) cancels it from any thread.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use std::time::Duration;
    ///
    /// let lp = EventLoop::new().unwrap();
    /// let h = lp.handle().spawn(|| 6 * 7);
    /// let waiter = std::thread::spawn(move || h.join().unwrap());
    /// // The loop's thread runs the coroutine while it runs its loop.
    /// lp.block_on(|| aio::sleep(Duration::from_millis(10)));
    /// assert_eq!(waiter.join().unwrap(), 42);
    /// ```
    pub fn spawn<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> RemoteJoinHandle<T> {
        let (completer, handle) = remote_pair(self.remote.clone());
        self.call_soon(move || completer.spawn(f));
        handle
    }

    /// Whether both handles name the same loop.
    ///
    /// ```
    /// use costack::aio::EventLoop;
    ///
    /// let (a, b) = (EventLoop::new().unwrap(), EventLoop::new().unwrap());
    /// assert!(a.handle().same_loop(&a.handle()));
    /// assert!(!a.handle().same_loop(&b.handle()));
    /// ```
    pub fn same_loop(&self, other: &LoopHandle) -> bool {
        Arc::ptr_eq(&self.remote, &other.remote)
    }
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle")
            .field("notifier", &self.remote.notifier_fd())
            .finish()
    }
}
