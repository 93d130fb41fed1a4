//! The thread-safe side of a loop: its notifier and the queue of bottom
//! halves posted from other threads (QEMU's aio_notify and the BH list).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::join::{catch_task, remote_pair, RemoteJoinHandle};
use crate::sys;

type RemoteBh = Box<dyn FnOnce() + Send>;

pub(crate) struct Remote {
    pub(crate) notifier: sys::Notifier,
    /// Set by the first notification since the loop last looked; later
    /// ones skip the notifier's write (coalescing).
    notified: AtomicBool,
    queue: Mutex<Vec<RemoteBh>>,
    closed: AtomicBool,
    /// Live [`LoopHandle`]s: other threads that may still post work.
    handles: AtomicUsize,
}

impl Remote {
    pub(crate) fn new(notifier: sys::Notifier) -> Remote {
        Remote {
            notifier,
            notified: AtomicBool::new(false),
            queue: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            handles: AtomicUsize::new(0),
        }
    }

    /// A handle for other threads (counted: see [`has_handles`]).
    ///
    /// [`has_handles`]: Remote::has_handles
    pub(crate) fn handle(self: &Arc<Self>) -> LoopHandle {
        self.handles.fetch_add(1, Ordering::Relaxed);
        LoopHandle {
            remote: self.clone(),
        }
    }

    /// Whether some [`LoopHandle`] of the loop is alive.
    pub(crate) fn has_handles(&self) -> bool {
        self.handles.load(Ordering::Acquire) > 0
    }

    /// Wakes the loop (aio_notify): one notifier write per batch.
    pub(crate) fn notify(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.notifier.notify();
        }
    }

    /// Whether a notification is pending; a cheap check the loop makes
    /// every iteration so it need not wait for epoll to report it.
    pub(crate) fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Consumes the pending notification and returns the posted bottom
    /// halves. The flag is cleared before the queue is read, so a post
    /// racing with us either is taken now or notifies again.
    pub(crate) fn take(&self) -> Vec<RemoteBh> {
        self.notified.store(false, Ordering::SeqCst);
        self.notifier.drain();
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn post(&self, f: RemoteBh) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push(f);
        self.notify();
    }

    /// The loop is gone: later posts are dropped, queued ones too.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        drop(dropped);
    }
}

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
    pub(crate) remote: Arc<Remote>,
}

impl Clone for LoopHandle {
    fn clone(&self) -> Self {
        self.remote.handle()
    }
}

impl Drop for LoopHandle {
    fn drop(&mut self) {
        self.remote.handles.fetch_sub(1, Ordering::Release);
    }
}

impl LoopHandle {
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
    /// `Err(`[`CANCELLED`](super::CANCELLED)`)`.
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
        let (completer, handle) = remote_pair();
        self.call_soon(move || {
            let inner =
                super::event_loop::current_inner().expect("bottom halves run on their loop");
            inner.spawn_task(move || completer.finish(catch_task(f)));
        });
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
            .field("notifier", &self.remote.notifier.fd())
            .finish()
    }
}
