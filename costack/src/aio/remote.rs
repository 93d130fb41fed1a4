//! The remote driver: the thread-safe side of a loop, its notifier and the
//! queue of bottom halves posted from other threads (QEMU's aio_notify and
//! the BH list).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::sys;

pub(crate) type RemoteBh = Box<dyn FnOnce() + Send>;

pub(crate) struct Remote {
    notifier: sys::Notifier,
    /// Set by the first notification since the loop last looked; later
    /// ones skip the notifier's write (coalescing).
    notified: AtomicBool,
    queue: Mutex<Vec<RemoteBh>>,
    closed: AtomicBool,
    /// Live [`LoopHandle`](super::LoopHandle)s: other threads that may still post work.
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

    /// A [`LoopHandle`](super::LoopHandle) was made: other threads may post
    /// work (see [`has_handles`](Self::has_handles)).
    pub(crate) fn handle_made(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// A [`LoopHandle`](super::LoopHandle) was dropped.
    pub(crate) fn handle_dropped(&self) {
        self.handles.fetch_sub(1, Ordering::Release);
    }

    /// The notifier's descriptor, which the loop watches.
    pub(crate) fn notifier_fd(&self) -> crate::sys::RawSock {
        self.notifier.fd()
    }

    /// Whether some [`LoopHandle`](super::LoopHandle) of the loop is alive.
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
