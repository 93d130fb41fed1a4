//! CoSemaphore: a counted resource for coroutines (QEMU's
//! co-shared-resource), served in FIFO order.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use super::waiter::{self, Abandon, List, Ticket, Waiter, WakeAll, GRANTED_ONE, WAITING};

/// A pool of permits that coroutines take and give back, several at a time
/// (QEMU's SharedResource: co_get_from_shres / co_put_to_shres).
///
/// [`acquire(n)`](CoSemaphore::acquire) waits until `n` permits are free.
/// Requests are served in FIFO order: a request that cannot be satisfied
/// yet holds back those behind it, so a large request is not starved by a
/// stream of small ones (unlike QEMU's, which retries every waiter).
/// A coroutine dropped while it waits leaves the queue; permits granted to
/// it as it died go back to the pool.
///
/// ```
/// use costack::sync::CoSemaphore;
///
/// let s = CoSemaphore::new(3);
/// s.acquire(2); // free permits: no waiting, works anywhere
/// assert!(!s.try_acquire(2));
/// assert!(s.try_acquire(1));
/// s.release(3);
/// assert_eq!(s.available(), 3);
/// ```
pub struct CoSemaphore {
    inner: Mutex<Inner>,
}

struct Inner {
    available: usize,
    /// Waiters, tagged with how many permits they want. Invariant (outside
    /// the lock): the first one wants more than `available`.
    list: List,
}

impl CoSemaphore {
    /// A semaphore with `permits` free permits.
    ///
    /// ```
    /// use costack::sync::CoSemaphore;
    ///
    /// static SLOTS: CoSemaphore = CoSemaphore::new(4); // const: fine in a static
    /// assert_eq!(SLOTS.available(), 4);
    /// ```
    pub const fn new(permits: usize) -> Self {
        CoSemaphore {
            inner: Mutex::new(Inner {
                available: permits,
                list: List::new(),
            }),
        }
    }

    /// Takes `n` permits, suspending the coroutine until they are free and
    /// every earlier request has been served. A request for more permits
    /// than will ever be free waits forever.
    ///
    /// # Panics
    /// If it must wait and the caller is not in a coroutine: "not in a
    /// coroutine".
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::aio::{self, EventLoop};
    /// use costack::sync::CoSemaphore;
    /// use std::rc::Rc;
    /// use std::time::Duration;
    ///
    /// EventLoop::new().unwrap().block_on(|| {
    ///     let sem = Rc::new(CoSemaphore::new(2)); // at most 2 at once
    ///     let jobs: Vec<_> = (0..6)
    ///         .map(|_| {
    ///             let sem = sem.clone();
    ///             aio::spawn(move || {
    ///                 sem.acquire(1); // waits while 2 are busy
    ///                 aio::sleep(Duration::from_millis(1));
    ///                 sem.release(1);
    ///             })
    ///         })
    ///         .collect();
    ///     jobs.into_iter().for_each(|j| j.join().unwrap());
    ///     assert_eq!(sem.available(), 2);
    /// });
    /// ```
    pub fn acquire(&self, n: usize) {
        if take(&mut waiter::lock(&self.inner), n) {
            return;
        }
        let node = Waiter::new(n, "CoSemaphore::acquire");
        let ticket = Ticket::new(self, &node);
        {
            let mut inner = waiter::lock(&self.inner);
            if take(&mut inner, n) {
                drop(inner);
                std::mem::forget(ticket);
                return;
            }
            // SAFETY: `ticket` borrows `node` and unlinks it before it dies.
            unsafe { inner.list.push_back(&node) };
        }
        ticket.wait("CoSemaphore::acquire");
    }

    /// Takes `n` permits if they are free and nobody is queued before us;
    /// never waits.
    ///
    /// ```
    /// use costack::sync::CoSemaphore;
    ///
    /// let sem = CoSemaphore::new(3);
    /// assert!(sem.try_acquire(2));
    /// assert!(!sem.try_acquire(2)); // only 1 left
    /// sem.release(2);
    /// ```
    pub fn try_acquire(&self, n: usize) -> bool {
        take(&mut waiter::lock(&self.inner), n)
    }

    /// Gives back `n` permits (they need not have been acquired: this can
    /// grow the pool), and wakes the queued requests that can now be
    /// served, in order.
    ///
    /// # Panics
    /// If the number of free permits would overflow `usize`.
    ///
    /// # Examples
    ///
    /// ```
    /// use costack::sync::CoSemaphore;
    ///
    /// let sem = CoSemaphore::new(0);
    /// sem.release(4);
    /// assert_eq!(sem.available(), 4);
    /// ```
    pub fn release(&self, n: usize) {
        let mut inner = waiter::lock(&self.inner);
        inner.available = match inner.available.checked_add(n) {
            Some(a) => a,
            None => {
                drop(inner);
                panic!("CoSemaphore::release: permit count overflow");
            }
        };
        self.wake_ready(inner);
    }

    /// The number of free permits right now.
    ///
    /// ```
    /// use costack::sync::CoSemaphore;
    ///
    /// let sem = CoSemaphore::new(8);
    /// assert!(sem.try_acquire(3));
    /// assert_eq!(sem.available(), 5);
    /// ```
    pub fn available(&self) -> usize {
        waiter::lock(&self.inner).available
    }

    fn wake_ready<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) {
        let mut wakes = WakeAll::default();
        loop {
            let want = match inner.list.front() {
                Some(front) if front.tag() <= inner.available => front.tag(),
                _ => break,
            };
            inner.available -= want;
            let wake = inner.list.grant_front(GRANTED_ONE);
            drop(inner);
            if let Some(wake) = wake {
                wakes.wake(wake);
            }
            inner = waiter::lock(&self.inner);
        }
        drop(inner);
        wakes.finish();
    }
}

/// Takes `n` permits if no waiter is ahead and enough are free.
fn take(inner: &mut Inner, n: usize) -> bool {
    let ok = inner.list.is_empty() && inner.available >= n;
    if ok {
        inner.available -= n;
    }
    ok
}

impl Abandon for CoSemaphore {
    fn abandon(&self, node: &Waiter) {
        let mut inner = waiter::lock(&self.inner);
        if inner.list.unlink(node) {
            // We may have been the request holding the others back.
            self.wake_ready(inner);
        } else if node.state() != WAITING {
            drop(inner);
            self.release(node.tag());
        }
    }
}

impl fmt::Debug for CoSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = waiter::lock(&self.inner);
        f.debug_struct("CoSemaphore")
            .field("available", &inner.available)
            .field("waiters", &!inner.list.is_empty())
            .finish()
    }
}
