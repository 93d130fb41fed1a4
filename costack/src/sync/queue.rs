//! CoQueue: a FIFO of waiting coroutines (QEMU's CoQueue), the condition
//! variable of coroutines.

use std::fmt;
use std::sync::Mutex;

use super::mutex::CoMutexGuard;
use super::waiter::{self, Abandon, List, Ticket, Waiter, WakeAll, GRANTED_ALL, GRANTED_ONE};

/// A FIFO queue of suspended coroutines (QEMU's CoQueue).
///
/// [`wait`](CoQueue::wait) suspends the calling coroutine until another
/// coroutine (or thread) restarts it; [`wait_with`](CoQueue::wait_with)
/// releases a [`CoMutex`](super::CoMutex) while waiting, like a condition
/// variable. Restarting follows [`Coroutine::wake`](crate::Coroutine::wake):
/// from a running coroutine, the restarted ones run after it yields.
///
/// A waiter is restarted only by this queue, never by a stray wake. A
/// waiter whose coroutine is dropped leaves the queue; one restarted by
/// [`restart_next`](CoQueue::restart_next) that dies before it ran passes
/// the restart on to the next waiter, so no restart is lost.
///
/// ```
/// use costack::sync::CoQueue;
/// use costack::Coroutine;
/// use std::cell::Cell;
/// use std::rc::Rc;
///
/// let q = Rc::new(CoQueue::new());
/// let done = Rc::new(Cell::new(false));
/// let (q2, d2) = (q.clone(), done.clone());
/// let co = Coroutine::new(move || {
///     q2.wait();
///     d2.set(true);
/// });
/// co.enter();
/// assert!(!q.is_empty() && !done.get());
/// assert!(q.enter_next()); // outside a coroutine: runs it right away
/// assert!(done.get() && q.is_empty());
/// ```
pub struct CoQueue {
    inner: Mutex<Inner>,
}

struct Inner {
    list: List,
    /// The sequence number of the next waiter: `restart_all` restarts only
    /// those queued before it was called.
    next_seq: usize,
}

impl CoQueue {
    /// An empty queue.
    ///
    /// ```
    /// use costack::sync::CoQueue;
    ///
    /// let q = CoQueue::new();
    /// assert!(!q.restart_next()); // nobody waits yet
    /// ```
    pub const fn new() -> CoQueue {
        CoQueue {
            inner: Mutex::new(Inner {
                list: List::new(),
                next_seq: 0,
            }),
        }
    }

    /// Suspends the calling coroutine until it is restarted
    /// (qemu_co_queue_wait with no lock).
    ///
    /// # Panics
    /// Outside a coroutine: "not in a coroutine".
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use costack::sync::CoQueue;
    /// use std::rc::Rc;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let q = Rc::new(CoQueue::new());
    ///     let q2 = q.clone();
    ///     let waiter = aio::spawn(move || q2.wait()); // until restarted
    ///     aio::yield_now();
    ///     assert!(!q.is_empty());
    ///     q.restart_next();
    ///     waiter.join().unwrap();
    /// });
    /// ```
    pub fn wait(&self) {
        let node = Waiter::new(0, "CoQueue::wait");
        let ticket = Ticket::new(self, &node);
        self.push(&node);
        ticket.wait("CoQueue::wait");
    }

    /// Releases `guard`'s mutex, waits until restarted, then locks the
    /// mutex again and returns the new guard (qemu_co_queue_wait with a
    /// lock). The caller is queued before the mutex is released, so a
    /// restart issued by the next lock holder cannot be missed.
    ///
    /// # Panics
    /// Outside a coroutine: "not in a coroutine" (the guard is dropped,
    /// so the mutex is released).
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use costack::sync::{CoMutex, CoQueue};
    /// use std::rc::Rc;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let state = Rc::new((CoMutex::new(false), CoQueue::new()));
    ///     let s = state.clone();
    ///     let waiter = aio::spawn(move || {
    ///         let mut ready = s.0.lock();
    ///         while !*ready {
    ///             ready = s.1.wait_with(ready); // unlocks, waits, locks again
    ///         }
    ///     });
    ///     aio::yield_now();
    ///     *state.0.lock() = true; // free: the waiter let go of it
    ///     state.1.restart_next();
    ///     waiter.join().unwrap();
    /// });
    /// ```
    pub fn wait_with<'a, T: ?Sized>(&self, guard: CoMutexGuard<'a, T>) -> CoMutexGuard<'a, T> {
        let mutex = guard.mutex;
        let node = Waiter::new(0, "CoQueue::wait_with");
        let ticket = Ticket::new(self, &node);
        self.push(&node);
        drop(guard);
        ticket.wait("CoQueue::wait_with");
        mutex.lock()
    }

    fn push(&self, node: &Waiter) {
        let mut inner = waiter::lock(&self.inner);
        node.set_tag(inner.next_seq);
        inner.next_seq = inner.next_seq.wrapping_add(1);
        // SAFETY: callers hold a ticket borrowing `node`, which unlinks it
        // before it dies.
        unsafe { inner.list.push_back(node) };
    }

    /// Restarts the first waiter, if any; returns whether there was one
    /// (qemu_co_queue_next). Inside a coroutine the waiter runs after the
    /// caller yields; outside, at once (or on its event loop).
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use costack::sync::CoQueue;
    /// use std::rc::Rc;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let q = Rc::new(CoQueue::new());
    ///     assert!(!q.restart_next()); // nobody waits
    ///     let q2 = q.clone();
    ///     let w = aio::spawn(move || q2.wait());
    ///     aio::yield_now();
    ///     assert!(q.restart_next());
    ///     w.join().unwrap();
    /// });
    /// ```
    pub fn restart_next(&self) -> bool {
        let wake = waiter::lock(&self.inner).list.grant_front(GRANTED_ONE);
        wake.map(|w| w.wake()).is_some()
    }

    /// Restarts every coroutine waiting now, in order
    /// (qemu_co_queue_restart_all). Coroutines that start waiting
    /// meanwhile (a restarted one waiting again) stay queued.
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use costack::sync::CoQueue;
    /// use std::rc::Rc;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let q = Rc::new(CoQueue::new());
    ///     let waiters: Vec<_> = (0..3).map(|_| { let q = q.clone(); aio::spawn(move || q.wait()) }).collect();
    ///     aio::yield_now();
    ///     q.restart_all();
    ///     waiters.into_iter().for_each(|w| w.join().unwrap());
    ///     assert!(q.is_empty());
    /// });
    /// ```
    pub fn restart_all(&self) {
        let end = waiter::lock(&self.inner).next_seq;
        let mut wakes = WakeAll::default();
        loop {
            let wake = {
                let mut inner = waiter::lock(&self.inner);
                match inner.list.front() {
                    // Sequence numbers may wrap: compare by distance.
                    Some(w) if (end.wrapping_sub(w.tag()) as isize) > 0 => {
                        inner.list.grant_front(GRANTED_ALL)
                    }
                    _ => None,
                }
            };
            match wake {
                Some(w) => wakes.wake(w),
                None => return wakes.finish(),
            }
        }
    }

    /// Restarts the first waiter, if any, entering it at once when called
    /// outside any coroutine on the waiter's thread, even if it belongs to
    /// an event loop (qemu_co_enter_next). Inside a coroutine, or for a
    /// waiter of another thread, it is woken like
    /// [`restart_next`](CoQueue::restart_next). Returns whether there was
    /// a waiter.
    ///
    /// ```
    /// use costack::sync::CoQueue;
    /// use costack::Coroutine;
    /// use std::cell::Cell;
    /// use std::rc::Rc;
    ///
    /// let q = Rc::new(CoQueue::new());
    /// let woke = Rc::new(Cell::new(false));
    /// let (q2, w2) = (q.clone(), woke.clone());
    /// let waiter = Coroutine::new(move || { q2.wait(); w2.set(true); });
    /// waiter.enter(); // now waiting on the queue
    /// assert!(q.enter_next()); // outside a coroutine: entered right here
    /// assert!(woke.get());
    /// ```
    pub fn enter_next(&self) -> bool {
        let wake = waiter::lock(&self.inner).list.grant_front(GRANTED_ONE);
        wake.map(|w| w.enter()).is_some()
    }

    /// Whether no coroutine waits (qemu_co_queue_empty).
    ///
    /// ```
    /// use costack::sync::CoQueue;
    ///
    /// assert!(CoQueue::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        waiter::lock(&self.inner).list.is_empty()
    }
}

impl Abandon for CoQueue {
    fn abandon(&self, node: &Waiter) {
        let mut inner = waiter::lock(&self.inner);
        if !inner.list.unlink(node) && node.state() == GRANTED_ONE {
            // Restarted but dying before it ran: restart someone else.
            drop(inner);
            self.restart_next();
        }
    }
}

impl Default for CoQueue {
    fn default() -> Self {
        CoQueue::new()
    }
}

impl fmt::Debug for CoQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoQueue")
            .field("is_empty", &self.is_empty())
            .finish()
    }
}
