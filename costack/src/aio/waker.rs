//! Cross-thread wake-ups.
//!
//! Each thread has a mailbox: a queue of coroutine ids that other threads
//! want woken, plus a hook the thread's event loop installs to be told
//! that mail arrived. A [`Waker`] names one coroutine by id (it does not
//! keep the coroutine alive) and the mailbox of its thread; waking from the
//! coroutine's own thread wakes it directly.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::coroutine::control::CoId;
use crate::coroutine::{self, Coroutine};

/// Wakes one coroutine, from any thread (aio_co_wake across threads).
///
/// On the coroutine's own thread, [`wake`](Waker::wake) is
/// [`Coroutine::wake`]. From another thread, the wake is queued for the
/// coroutine's thread and its event loop is notified; it is delivered when
/// that loop next polls. Waking a coroutine that finished meanwhile does
/// nothing. Wakes are coalesced like [`Coroutine::wake`]'s.
///
/// ```
/// use costack::aio::{self, EventLoop};
///
/// let on = EventLoop::new().unwrap().block_on(|| {
///     let waker = aio::waker(); // for this coroutine; Send + Sync
///     let t = std::thread::spawn(move || {
///         std::thread::sleep(std::time::Duration::from_millis(5));
///         waker.wake(); // from another thread: the loop enters it again
///     });
///     costack::yield_now(); // suspended until woken
///     t.join().unwrap();
///     std::thread::current().id()
/// });
/// assert_eq!(on, std::thread::current().id()); // it never moved
/// ```
#[derive(Clone)]
pub struct Waker {
    mailbox: Arc<Mailbox>,
    id: CoId,
    /// For a coroutine polled as a future ([`CoFuture`](crate::future::CoFuture)):
    /// its poller's waker, which other threads wake instead of posting to a
    /// mailbox that no costack loop may be reading.
    poller: Option<std::task::Waker>,
}

impl Waker {
    /// A waker for `co`, which must belong to the calling thread (it does,
    /// since `Coroutine` is not `Send`).
    pub(crate) fn for_coroutine(co: &Coroutine) -> Waker {
        Waker {
            mailbox: mailbox(),
            id: co.id(),
            poller: co.task_waker(),
        }
    }

    /// Wakes the coroutine (see the type's documentation).
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let w = aio::waker();
    ///     std::thread::spawn(move || w.wake()); // from anywhere
    ///     costack::yield_now(); // until then
    /// });
    /// ```
    pub fn wake(&self) {
        if self.mailbox.is_local() {
            if let Some(co) = Coroutine::from_id(self.id) {
                co.wake();
            }
        } else if let Some(poller) = &self.poller {
            poller.wake_by_ref();
        } else {
            self.mailbox.post(self.id);
        }
    }

    /// Whether both wakers wake the same coroutine.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let mine = aio::waker();
    ///     let other = aio::spawn(aio::waker).join().unwrap();
    ///     assert!(mine.will_wake(&aio::waker()));
    ///     assert!(!mine.will_wake(&other));
    /// });
    /// ```
    pub fn will_wake(&self, other: &Waker) -> bool {
        Arc::ptr_eq(&self.mailbox, &other.mailbox) && self.id == other.id
    }
}

impl fmt::Debug for Waker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waker").field("id", &self.id).finish()
    }
}

/// A waker for the calling coroutine.
///
/// # Panics
/// Outside a coroutine: "not in a coroutine".
///
/// # Examples
///
/// ```
/// use costack::aio::{self, EventLoop};
///
/// EventLoop::new().unwrap().block_on(|| {
///     let a = aio::waker();
///     let b = aio::waker();
///     assert!(a.will_wake(&b)); // both name this coroutine
/// });
/// ```
pub fn waker() -> Waker {
    coroutine::with_current(|co| match co {
        Some(co) => Waker::for_coroutine(co),
        None => coroutine::not_in_coroutine("aio::waker"),
    })
}

/// A thread's queue of wakes posted by other threads.
///
/// The mailbox also stands for its (logical) thread: a waker is local when
/// the calling thread's mailbox is the waker's. Under the thread backend a
/// coroutine body runs on an OS thread of its own, so `ThreadId`s would
/// call the coroutine's own thread foreign.
pub(crate) struct Mailbox {
    queue: Mutex<Vec<CoId>>,
    notify: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

crate::arch::logical_thread_local! {
    static MAILBOX: Arc<Mailbox> = Arc::new(Mailbox {
        queue: Mutex::new(Vec::new()),
        notify: Mutex::new(None),
    });
}

/// The calling thread's mailbox.
pub(crate) fn mailbox() -> Arc<Mailbox> {
    MAILBOX.with(Arc::clone)
}

impl Mailbox {
    /// Whether this is the calling thread's mailbox. (A mailbox lives as
    /// long as a waker holds it, so its address names one thread.) False
    /// once the thread's thread-locals are gone: mail posted then is never
    /// read, which is right for a thread that is exiting.
    pub(crate) fn is_local(&self) -> bool {
        MAILBOX
            .try_with(|m| std::ptr::eq(Arc::as_ptr(m), self))
            .unwrap_or(false)
    }

    fn post(&self, id: CoId) {
        let first = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push(id);
            q.len() == 1
        };
        // Later posts before the owner drains ride on the first notification.
        if first {
            let notify = self
                .notify
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(notify) = notify {
                notify();
            }
        }
    }

    /// Installs what tells the owner thread's event loop that mail arrived
    /// (`None` to remove it). Mail already queued notifies at once.
    pub(crate) fn set_notify(&self, notify: Option<Arc<dyn Fn() + Send + Sync>>) {
        *self.notify.lock().unwrap_or_else(|e| e.into_inner()) = notify.clone();
        let pending = !self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if let (true, Some(notify)) = (pending, notify) {
            notify();
        }
    }

    /// Delivers the queued wakes; call on the owner thread. Returns whether
    /// there were any.
    pub(crate) fn deliver(&self) -> bool {
        debug_assert!(self.is_local());
        let ids = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let any = !ids.is_empty();
        for id in ids {
            if let Some(co) = Coroutine::from_id(id) {
                co.wake();
            }
        }
        any
    }
}

impl Waker {
    /// Whether the waker's coroutine belongs to the calling thread.
    pub(crate) fn is_local(&self) -> bool {
        self.mailbox.is_local()
    }

    /// The waker's coroutine, if it is alive on the calling thread. `None`
    /// for another thread's (or a finished) coroutine.
    pub(crate) fn local_coroutine(&self) -> Option<Coroutine> {
        if self.mailbox.is_local() {
            Coroutine::from_id(self.id)
        } else {
            None
        }
    }

    /// Whether the waker names the coroutine running right now.
    pub(crate) fn is_current(&self) -> bool {
        self.mailbox.is_local()
            && coroutine::with_current(|co| co.is_some_and(|co| co.id() == self.id))
    }
}
